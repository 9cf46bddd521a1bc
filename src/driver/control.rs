//! Control connections: a TCP listener and a slab of line-oriented connections.
//!
//! This module only moves bytes: it splits input into lines, hands each to the connection's
//! [`Operator`] (which decides and formats everything) and writes the replies back. It never
//! blocks the loop: reads and writes are non-blocking, input lines and output are bounded per
//! connection, log lines that do not fit are dropped and counted (the operator is told how
//! many), and a reply that cannot fit closes that connection only.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::logtap::LogLine;
use crate::control::{Context, MAX_LINE, Operator, Reply};

/// Output a connection may have queued before log lines are dropped.
pub(crate) const LOG_BUDGET: usize = 64 * 1024;
/// Output a connection may have queued at all; a reply past it closes the connection.
pub(crate) const OUTPUT_CAP: usize = 1024 * 1024;
/// Command lines taken from one connection in one read (it reads until WouldBlock).
pub(crate) const MAX_REQUESTS_PER_READ: usize = 4096;
/// Kernel send buffer of a control connection (bounds memory held for a stalled operator).
pub(crate) const SEND_BUFFER: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    op: Operator,
    inbuf: Vec<u8>,
    discarding: bool,
    out: Vec<u8>,
    out_pos: usize,
    logs_dropped: u64,
    close_after_flush: bool,
    dead: bool,
    writable_interest: bool,
}

impl Conn {
    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
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
}

/// The control listener and its connections.
pub(crate) struct ControlServer {
    listener: TcpListener,
    conns: Slab<Conn>,
    max_conns: usize,
    token_base: usize,
    auth_token: Option<String>,
    local_addr: SocketAddr,
}

impl ControlServer {
    pub(crate) fn new(
        registry: &Registry,
        addr: SocketAddr,
        listener_token: Token,
        token_base: usize,
        max_conns: usize,
        auth_token: Option<String>,
    ) -> io::Result<Self> {
        let mut listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(ControlServer {
            listener,
            conns: Slab::with_capacity(max_conns),
            max_conns,
            token_base,
            auth_token,
            local_addr,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.auth_token.as_deref()
    }

    fn conn_token(&self, key: usize) -> Token {
        Token(self.token_base + key)
    }

    /// The connection behind `t`, if it is one of ours and still open.
    pub(crate) fn owns_conn(&self, t: Token) -> Option<usize> {
        let k = t.0.checked_sub(self.token_base)?;
        (k < self.max_conns && self.conns.contains(k)).then_some(k)
    }

    /// Accept every pending connection (up to the cap; extra ones get one line and close).
    pub(crate) fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(registry, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("control: accept failed: {e}");
                    break;
                }
            }
        }
    }

    fn admit(&mut self, registry: &Registry, mut stream: TcpStream, peer: SocketAddr) {
        if self.conns.len() >= self.max_conns {
            warn!(
                "control: refusing {peer}: {} operators connected (--max-control)",
                self.max_conns
            );
            let _ = stream.write(b"ERR too many control connections\n");
            return;
        }
        // Bound what the kernel holds for a stalled operator too, not only our queue.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let entry = self.conns.vacant_entry();
        let token = Token(self.token_base + entry.key());
        if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
            warn!("control: cannot register {peer}: {e}");
            return;
        }
        info!("control: operator connected from {peer}");
        let op = Operator::new(peer, self.auth_token.is_some());
        let mut out = Vec::new();
        out.extend_from_slice(op.greeting().as_bytes());
        entry.insert(Conn {
            stream,
            op,
            inbuf: Vec::new(),
            discarding: false,
            out,
            out_pos: 0,
            logs_dropped: 0,
            close_after_flush: false,
            dead: false,
            writable_interest: false,
        });
    }

    /// Read what a connection sent (until WouldBlock) and run every complete line.
    pub(crate) fn read(&mut self, key: usize, cx: &mut Context<'_>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut lines = 0;
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    // The operator finished sending (it may have only half-closed, as
                    // `nc -N` does): answer what it sent, then close.
                    c.close_after_flush = true;
                    break;
                }
                Ok(n) => {
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            lines += 1;
                            c.line(cx);
                            c.inbuf.clear();
                        } else if c.inbuf.len() >= MAX_LINE {
                            c.discarding = true;
                            c.inbuf.clear();
                        } else if !c.discarding {
                            c.inbuf.push(b);
                        }
                    }
                    // No early break to take turns: mio is edge-triggered, so stopping before
                    // WouldBlock would strand the rest of the input until the operator sends
                    // more. An operator who sends faster than this loop can read is flooding:
                    // it is closed, like one whose replies pass OUTPUT_CAP.
                    if lines > MAX_REQUESTS_PER_READ || c.queued() > OUTPUT_CAP {
                        warn!(
                            "control: {} sends faster than it reads replies; closing it",
                            c.op.peer()
                        );
                        c.dead = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.dead = true;
                    break;
                }
            }
        }
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
    pub(crate) fn flush(&mut self, registry: &Registry) {
        // Slab keys are dense below `capacity`: no list to allocate on every loop turn.
        for key in 0..self.conns.capacity() {
            let token = self.conn_token(key);
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            flush_conn(c, registry, token);
            if c.dead {
                let mut c = self.conns.remove(key);
                let _ = registry.deregister(&mut c.stream);
                info!("control: operator {} disconnected", c.op.peer());
            }
        }
    }

    /// Flush what can be flushed and close everything.
    pub(crate) fn close_all(&mut self, registry: &Registry) {
        for (_, c) in self.conns.iter_mut() {
            c.close_after_flush = true;
        }
        self.flush(registry);
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
        if c.close_after_flush {
            c.dead = true;
        }
    } else if c.out_pos > 64 * 1024 {
        c.out.drain(..c.out_pos);
        c.out_pos = 0;
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
