//! Control connections: a TCP listener and a slab of line-oriented connections.
//!
//! This module only moves bytes: it splits input into lines, hands each to the connection's
//! [`Operator`] (which decides and formats everything) and writes the replies back. It never
//! blocks the loop, and no connection can hold it:
//!
//! - **Bounded work per turn.** A connection is read at most [`READ_PER_CONN`] bytes and
//!   [`LINES_PER_CONN`] lines per readiness event, all connections together at most
//!   [`READ_PER_TURN`] bytes and [`LINES_PER_TURN`] lines between two `handle_timeout`s.
//!   mio is edge-triggered, so a connection stopped before `WouldBlock` is remembered
//!   (`pending`) and continued from [`ControlServer::handle_timeout`]; meanwhile
//!   [`ControlServer::wants_more`] makes the relay's `poll_timeout` return at once.
//! - **Back-pressure.** A line is only run while the connection's queued output is under
//!   [`PAUSE_AT`]; above it, its input stays in our read buffer and the kernel until the
//!   operator reads, so replies are never built only to be discarded. Output per connection
//!   is therefore at most `PAUSE_AT` plus one reply (a reply past [`OUTPUT_CAP`] closes that
//!   connection only).
//! - **Deadlines.** With a token, a connection must authenticate within
//!   `NetConfig::control_auth_timeout`; any connection that sends no command for
//!   `control_idle_timeout` (and does not stream the log) is closed. The [`Operator`] computes
//!   its deadline from the `now` it is given; [`ControlServer::next_deadline`] is the earliest,
//!   for the relay's `poll_timeout`.
//! - **Room for an operator.** When every slot is taken, a newcomer evicts the oldest
//!   connection that has not authenticated; it is refused only when every slot holds an
//!   authenticated operator. At most [`ACCEPTS_PER_TURN`] connections are accepted per turn.
//! - **No endless lines.** A line over `MAX_LINE` is discarded up to its newline and answered
//!   with an error; a connection that sends [`MAX_UNTERMINATED`] bytes without any newline is
//!   closed.
//! - Log lines that do not fit are dropped and counted (the operator is told how many).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use log::warn;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::logtap::LogLine;
use crate::config::NetConfig;
use crate::control::ControlCounters;
use crate::control::{Context, ControlState, MAX_LINE, Operator, Reply, Timeouts};
use crate::core::RelayCore;
use crate::federation::Federation;

/// Output a connection may have queued before log lines are dropped.
pub(crate) const LOG_BUDGET: usize = 64 * 1024;
/// Queued output at which a connection's input is no longer read (until it drains).
pub(crate) const PAUSE_AT: usize = 64 * 1024;
/// Output a connection may have queued at all; a reply past it closes the connection.
pub(crate) const OUTPUT_CAP: usize = 1024 * 1024;
/// Bytes read from one connection per readiness event or continuation.
pub(crate) const READ_PER_CONN: usize = 16 * 1024;
/// Lines run for one connection per readiness event or continuation.
pub(crate) const LINES_PER_CONN: usize = 16;
/// Bytes read from all control connections between two `handle_timeout`s.
pub(crate) const READ_PER_TURN: usize = 64 * 1024;
/// Lines run on all control connections between two `handle_timeout`s.
pub(crate) const LINES_PER_TURN: usize = 32;
/// Bytes without a newline after which a connection is closed.
pub(crate) const MAX_UNTERMINATED: usize = 64 * 1024;
/// Kernel send buffer of a control connection (bounds memory held for a stalled operator).
pub(crate) const SEND_BUFFER: usize = 64 * 1024;
/// Kernel receive buffer of a control connection: commands are short, and what an attacker
/// can park in the kernel (and make the relay free when it closes the connection) is bounded.
pub(crate) const RECV_BUFFER: usize = 64 * 1024;
/// Connections accepted per listener event or continuation.
pub(crate) const ACCEPTS_PER_TURN: usize = 16;
/// One `read` from a connection.
const READ_CHUNK: usize = 4096;

/// What is left of this turn's control work.
#[derive(Debug, Clone, Copy)]
struct Budget {
    bytes: usize,
    lines: usize,
}

impl Budget {
    const TURN: Budget = Budget {
        bytes: READ_PER_TURN,
        lines: LINES_PER_TURN,
    };

    fn spent(&self) -> bool {
        self.bytes == 0 || self.lines == 0
    }
}

struct Conn {
    stream: TcpStream,
    op: Operator,
    /// Order of admission (the oldest unauthenticated connection is evicted first).
    seq: u64,
    /// Bytes read from the socket, `rbuf[rpos..rlen]` not yet split into lines.
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
    /// The line being received (at most MAX_LINE bytes).
    inbuf: Vec<u8>,
    /// The current line is over MAX_LINE: its bytes are dropped up to its newline.
    discarding: bool,
    /// Bytes received since the last newline.
    line_len: usize,
    out: Vec<u8>,
    out_pos: usize,
    logs_dropped: u64,
    /// Input may be waiting (in `rbuf` or the kernel) that no readiness event will announce.
    pending: bool,
    /// Reading is paused because the output is over PAUSE_AT (counted once per pause).
    paused: bool,
    eof: bool,
    close_after_flush: bool,
    /// Write what the kernel takes now, then close (abuse, deadlines).
    closing: bool,
    dead: bool,
    writable_interest: bool,
}

impl Conn {
    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Input is waiting and nothing stops us from taking it.
    fn wants_service(&self) -> bool {
        self.pending
            && !self.dead
            && !self.closing
            && self.op.is_accepting()
            && self.queued() < PAUSE_AT
    }

    fn push_reply(&mut self, reply: &Reply) {
        match reply {
            Ok(body) => {
                self.out.extend_from_slice(body.as_bytes());
                self.out.extend_from_slice(b"OK\n");
            }
            Err(e) => {
                self.out.extend_from_slice(b"ERR ");
                self.out.extend_from_slice(e.replace('\n', " ").as_bytes());
                self.out.push(b'\n');
            }
        }
    }

    /// Run one complete input line (without its `\n`).
    fn line(&mut self, cx: &mut Context<'_>) {
        if self.discarding {
            self.discarding = false;
            let e: Reply = Err(format!("line longer than {MAX_LINE} bytes"));
            if self.op.is_accepting() {
                self.push_reply(&e);
            }
            return;
        }
        let line = String::from_utf8_lossy(&self.inbuf);
        let line = line.trim_end_matches('\r');
        if let Some(reply) = self.op.run_line(line, cx) {
            self.push_reply(&reply);
        }
        if !self.op.is_accepting() {
            self.close_after_flush = true;
        }
    }

    /// Read and run lines within this event's allowance and what is left of the turn's.
    /// Stops at `WouldBlock` (nothing pending), or early with `pending` set.
    fn serve(&mut self, cx: &mut Context<'_>, turn: &mut Budget) {
        let (mut bytes, mut lines) = (0, 0);
        loop {
            if self.dead || self.closing || !self.op.is_accepting() {
                self.pending = false;
                return;
            }
            if self.rpos < self.rlen {
                // The output cap is checked before each reply is built, not after.
                if self.queued() >= PAUSE_AT {
                    if !self.paused {
                        self.paused = true;
                        cx.control.counters.control_read_paused += 1;
                    }
                    self.pending = true;
                    return;
                }
                if lines >= LINES_PER_CONN || turn.lines == 0 {
                    self.pending = true;
                    return;
                }
                if self.split_line(cx) {
                    lines += 1;
                    turn.lines -= 1;
                }
                continue;
            }
            if self.eof {
                self.pending = false;
                return;
            }
            if bytes >= READ_PER_CONN || turn.bytes == 0 {
                self.pending = true;
                return;
            }
            match self.stream.read(&mut self.rbuf) {
                Ok(0) => {
                    // The operator finished sending (it may have only half-closed, as
                    // `nc -N` does): answer what it sent, then close.
                    self.eof = true;
                    self.close_after_flush = true;
                }
                Ok(n) => {
                    (self.rpos, self.rlen) = (0, n);
                    bytes += n;
                    turn.bytes = turn.bytes.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
    }

    /// Take bytes from `rbuf` up to the next newline; run the line if it is complete.
    /// Returns whether a line ran.
    fn split_line(&mut self, cx: &mut Context<'_>) -> bool {
        let chunk = &self.rbuf[self.rpos..self.rlen];
        let newline = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        if !self.discarding {
            if self.inbuf.len() + part.len() > MAX_LINE {
                self.discarding = true;
                self.inbuf.clear();
            } else {
                self.inbuf.extend_from_slice(part);
            }
        }
        self.line_len += part.len();
        self.rpos += part.len();
        if newline.is_some() {
            self.rpos += 1;
            self.line(cx);
            self.inbuf.clear();
            self.line_len = 0;
            return true;
        }
        if self.line_len >= MAX_UNTERMINATED {
            let e: Reply = Err(format!("no newline in {MAX_UNTERMINATED} bytes; closing"));
            self.push_reply(&e);
            self.closing = true;
            cx.control.counters.control_overlong_closed += 1;
            cx.control.notice(
                cx.now,
                format_args!(
                    "control: {} sent {MAX_UNTERMINATED} bytes without a newline; closing it",
                    self.op.peer()
                ),
            );
        }
        false
    }
}

/// The control listener and its connections.
pub(crate) struct ControlServer {
    listener: TcpListener,
    conns: Slab<Conn>,
    max_conns: usize,
    token_base: usize,
    auth_token: Option<String>,
    local_addr: SocketAddr,
    /// Counters and rate-limited notices, lent to every command.
    state: ControlState,
    /// What is left of this turn's control work.
    turn: Budget,
    /// Where the next continuation starts (round robin over pending connections).
    cursor: usize,
    /// The last accept stopped at ACCEPTS_PER_TURN, not WouldBlock.
    accept_pending: bool,
    /// Admissions so far (each connection's `seq`).
    admitted: u64,
}

impl ControlServer {
    /// The control port's own figures (`stats`, `metrics`, the monitor's `/metrics`).
    pub(super) fn counters(&self) -> &ControlCounters {
        &self.state.counters
    }

    pub(crate) fn new(
        registry: &Registry,
        addr: SocketAddr,
        listener_token: Token,
        token_base: usize,
        net: &NetConfig,
        now: Instant,
    ) -> io::Result<Self> {
        let mut listener = TcpListener::bind(addr)?;
        // Accepted connections inherit it, and advertise a window to match from the start.
        let _ = socket2::SockRef::from(&listener).set_recv_buffer_size(RECV_BUFFER);
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(ControlServer {
            listener,
            conns: Slab::with_capacity(net.max_control),
            max_conns: net.max_control,
            token_base,
            auth_token: net.control_token.clone(),
            local_addr,
            state: ControlState::new(Timeouts::of(net), now),
            turn: Budget::TURN,
            cursor: 0,
            accept_pending: false,
            admitted: 0,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn conn_token(&self, key: usize) -> Token {
        Token(self.token_base + key)
    }

    /// The connection behind `t`, if it is one of ours and still open.
    pub(crate) fn owns_conn(&self, t: Token) -> Option<usize> {
        let k = t.0.checked_sub(self.token_base)?;
        (k < self.max_conns && self.conns.contains(k)).then_some(k)
    }

    /// Accept pending connections, at most ACCEPTS_PER_TURN (the rest in the next turn).
    pub(crate) fn accept(&mut self, registry: &Registry, now: Instant) {
        self.accept_pending = false;
        let mut accepted = 0;
        while accepted < ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    accepted += 1;
                    self.admit(registry, stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("control: accept failed: {e}");
                    return;
                }
            }
        }
        self.accept_pending = true;
    }

    /// A free slot for a newcomer from `peer`: there is one, or the oldest unauthenticated
    /// connection gives up its own (connections already closing go first, silently).
    fn make_room(&mut self, registry: &Registry, peer: SocketAddr, now: Instant) -> bool {
        if self.conns.len() < self.max_conns {
            return true;
        }
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.dead || c.closing || !c.op.is_authenticated())
            .min_by_key(|(_, c)| (!(c.dead || c.closing), c.seq))
            .map(|(k, _)| k);
        let Some(key) = victim else {
            self.state.counters.control_refused += 1;
            self.state.notice(
                now,
                format_args!(
                    "control: refusing {peer}: {} authenticated operators connected \
                     (--max-control)",
                    self.max_conns
                ),
            );
            return false;
        };
        let mut c = self.conns.remove(key);
        if !(c.dead || c.closing) {
            self.state.counters.control_evicted += 1;
            self.state.notice(
                now,
                format_args!(
                    "control: all {} slots taken; evicting {} (not authenticated) for {peer}",
                    self.max_conns,
                    c.op.peer()
                ),
            );
            // Its last words after what it has queued (the greeting, perhaps): one write.
            let e: Reply = Err(
                "evicted: every control slot is taken and this connection has not authenticated"
                    .into(),
            );
            c.push_reply(&e);
            let _ = c.stream.write(&c.out[c.out_pos..]);
        }
        let _ = registry.deregister(&mut c.stream);
        true
    }

    fn admit(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        peer: SocketAddr,
        now: Instant,
    ) {
        if !self.make_room(registry, peer, now) {
            let _ = stream.write(b"ERR too many control connections\n");
            return;
        }
        // Bound what the kernel holds for a stalled operator too, not only our queue.
        let sock = socket2::SockRef::from(&stream);
        let _ = sock.set_send_buffer_size(SEND_BUFFER);
        let _ = sock.set_recv_buffer_size(RECV_BUFFER);
        let entry = self.conns.vacant_entry();
        let token = Token(self.token_base + entry.key());
        if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
            warn!("control: cannot register {peer}: {e}");
            return;
        }
        self.state
            .connection_note(now, format_args!("control: operator connected from {peer}"));
        let op = Operator::new(peer, self.auth_token.is_some(), now);
        let mut out = Vec::new();
        out.extend_from_slice(op.greeting().as_bytes());
        self.admitted += 1;
        entry.insert(Conn {
            stream,
            op,
            seq: self.admitted,
            rbuf: vec![0; READ_CHUNK].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
            inbuf: Vec::new(),
            discarding: false,
            line_len: 0,
            out,
            out_pos: 0,
            logs_dropped: 0,
            pending: false,
            paused: false,
            eof: false,
            close_after_flush: false,
            closing: false,
            dead: false,
            writable_interest: false,
        });
    }

    /// Serve connection `key` after a readiness event, within the per-connection and
    /// per-turn budgets. Returns whether an operator asked the relay to shut down.
    pub(crate) fn read(
        &mut self,
        key: usize,
        core: &mut RelayCore,
        federation: Option<&Federation>,
        net: &NetConfig,
        now: Instant,
    ) -> bool {
        let ControlServer {
            conns,
            state,
            turn,
            auth_token,
            local_addr,
            ..
        } = self;
        let Some(c) = conns.get_mut(key) else {
            return false;
        };
        let mut cx = Context {
            core,
            federation,
            net,
            control_addr: Some(*local_addr),
            token: auth_token.as_deref(),
            now,
            shutdown_requested: false,
            control: state,
        };
        c.serve(&mut cx, turn);
        cx.shutdown_requested
    }

    /// Is there work that no readiness event will announce (connections or input left
    /// waiting at a budget)? The relay's `poll_timeout` is then "now".
    pub(crate) fn wants_more(&self) -> bool {
        self.accept_pending || self.conns.iter().any(|(_, c)| c.wants_service())
    }

    /// The earliest authentication or idle deadline of a connection.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let t = self.state.timeouts();
        self.conns
            .iter()
            .filter(|(_, c)| !(c.dead || c.closing))
            .filter_map(|(_, c)| c.op.deadline(&t))
            .min()
    }

    /// A new turn: close connections past their deadline, accept what is left in the
    /// backlog, continue the connections that stopped at a budget (round robin). Returns
    /// whether an operator asked the relay to shut down.
    pub(crate) fn handle_timeout(
        &mut self,
        registry: &Registry,
        core: &mut RelayCore,
        federation: Option<&Federation>,
        net: &NetConfig,
        now: Instant,
    ) -> bool {
        self.turn = Budget::TURN;
        for (_, c) in self.conns.iter_mut() {
            if c.dead || c.closing {
                continue;
            }
            if let Some(last) = c.op.expire(now, &mut self.state) {
                c.push_reply(&last);
                c.closing = true;
            }
        }
        if self.accept_pending {
            self.accept(registry, now);
        }
        let mut shutdown = false;
        let cap = self.conns.capacity();
        let start = self.cursor;
        for i in 0..cap {
            if self.turn.spent() {
                break;
            }
            let key = (start + i) % cap;
            if self.conns.get(key).is_some_and(Conn::wants_service) {
                shutdown |= self.read(key, core, federation, net, now);
                self.cursor = key + 1;
            }
        }
        shutdown
    }

    /// The operators, for the log level they want.
    pub(crate) fn operators(&self) -> impl Iterator<Item = &Operator> + '_ {
        self.conns.iter().map(|(_, c)| &c.op)
    }

    /// Queue a line on every connection (e.g. the last words at shutdown).
    pub(crate) fn broadcast_line(&mut self, line: &str) {
        for (_, c) in self.conns.iter_mut() {
            c.out.extend_from_slice(line.as_bytes());
            c.out.push(b'\n');
        }
    }

    /// Offer log lines to every operator who turned the log on.
    pub(crate) fn push_logs(&mut self, lines: &[LogLine], dropped_upstream: u64) {
        for (_, c) in self.conns.iter_mut() {
            let Some(level) = c.op.log_level() else {
                continue;
            };
            c.logs_dropped += dropped_upstream;
            for l in lines {
                if l.level > level {
                    continue;
                }
                if c.queued() + l.text.len() + 16 > LOG_BUDGET {
                    c.logs_dropped += 1;
                    continue;
                }
                if c.logs_dropped > 0 {
                    let note = format!(
                        "LOG WARN {} log lines dropped (slow reader)\n",
                        c.logs_dropped
                    );
                    c.out.extend_from_slice(note.as_bytes());
                    c.logs_dropped = 0;
                }
                c.out.extend_from_slice(b"LOG ");
                c.out.extend_from_slice(l.text.as_bytes());
                c.out.push(b'\n');
            }
        }
    }

    /// Write queued output; close dead connections. Problems close the connection concerned
    /// and are logged.
    pub(crate) fn flush(&mut self, registry: &Registry, now: Instant) {
        let mut queued = 0;
        // Slab keys are dense below `capacity`: no list to allocate on every loop turn.
        for key in 0..self.conns.capacity() {
            let token = self.conn_token(key);
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            flush_conn(c, registry, token);
            if c.closing {
                c.dead = true;
            }
            if c.dead {
                let mut c = self.conns.remove(key);
                let _ = registry.deregister(&mut c.stream);
                let peer = c.op.peer();
                let msg = format_args!("control: operator {peer} disconnected");
                self.state.connection_note(now, msg);
            } else {
                queued += c.queued();
            }
        }
        let n = &mut self.state.counters;
        n.control_connections = self.conns.len() as u64;
        n.control_output_bytes = queued as u64;
    }

    /// Flush what can be flushed and close everything.
    pub(crate) fn close_all(&mut self, registry: &Registry, now: Instant) {
        for (_, c) in self.conns.iter_mut() {
            c.close_after_flush = true;
        }
        self.flush(registry, now);
        for mut c in self.conns.drain() {
            let _ = registry.deregister(&mut c.stream);
        }
        let _ = registry.deregister(&mut self.listener);
    }

    /// Bytes queued for output on all connections.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.conns.iter().map(|(_, c)| c.queued()).sum()
    }
}

fn flush_conn(c: &mut Conn, registry: &Registry, token: Token) {
    if c.queued() > OUTPUT_CAP {
        warn!(
            "control: {} is not reading; its reply does not fit, closing it",
            c.op.peer()
        );
        c.dead = true;
    }
    while !c.dead && c.out_pos < c.out.len() {
        match c.stream.write(&c.out[c.out_pos..]) {
            Ok(0) => c.dead = true,
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => c.dead = true,
        }
    }
    if c.out_pos == c.out.len() {
        c.out.clear();
        c.out_pos = 0;
        // One large reply (`clients` of many clients) need not stay allocated.
        if c.out.capacity() > 2 * PAUSE_AT {
            c.out = Vec::new();
        }
        if c.close_after_flush {
            c.dead = true;
        }
    } else if c.out_pos > 64 * 1024 {
        c.out.drain(..c.out_pos);
        c.out_pos = 0;
    }
    if c.queued() < PAUSE_AT {
        // Reading resumes from `handle_timeout` (`pending` is still set): no readiness
        // event will come for input that is already waiting.
        c.paused = false;
    }
    let want_write = c.out_pos < c.out.len();
    if !c.dead && want_write != c.writable_interest {
        let interest = if want_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if registry.reregister(&mut c.stream, token, interest).is_err() {
            c.dead = true;
        } else {
            c.writable_interest = want_write;
        }
    }
}
