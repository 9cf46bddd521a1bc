//! The monitor's mio side: a TCP listener and a slab of HTTP/1.1 connections on the host's
//! [`Registry`], with the discipline of the control port (`driver/control.rs`): never blocks,
//! bounds every buffer, closes only the connection that misbehaves.
//!
//! It does not know the relay. It yields parsed requests ([`MonitorServer::poll_request`])
//! and the host answers each one ([`MonitorServer::respond`]). It enforces the rules that do
//! not depend on the path: the bearer token (401), the method (405), the parse errors
//! (400/413/414/431/505), the connection cap (503) and the deadlines (408 or a silent close).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use sha2::{Digest, Sha256};
use slab::Slab;
use subtle::ConstantTimeEq;

use super::config::{MonitorConfig, MonitorError};
use super::conn::{Conn, Pending};
use super::http::{Method, Parser, Request, Response, write_error, write_response};

/// Bytes read from one connection per activation (a readable event or a resumption), at most.
pub const READ_BUDGET: usize = 16 * 1024;
/// Requests taken from one connection per activation, at most.
pub const REQUESTS_PER_ACTIVATION: u32 = 32;
/// Connections accepted per listener event, at most.
pub const ACCEPTS_PER_EVENT: usize = 32;
/// Kernel send buffer of a monitor connection (bounds what the kernel holds for a stalled
/// client, beside the output cap).
pub const SEND_BUFFER: usize = 64 * 1024;
/// After the last response of a closing connection, how long its leftover input is read and
/// discarded (so that closing does not reset the connection before the client read the
/// response).
pub const LINGER: Duration = Duration::from_secs(2);
/// Failed bearer tokens on one connection before it is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// One connection, as seen by the host: valid until the connection closes (a stale id is
/// ignored, even if its slot was reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    key: usize,
    generation: u32,
}

/// Counters of the monitor itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MonitorStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused with 503 (the cap).
    pub refused: u64,
    /// Request heads received (complete or refused).
    pub requests: u64,
    /// Requests refused by the parser (400, 413, 414, 431, 505).
    pub bad_requests: u64,
    /// Requests without the right bearer token (401).
    pub unauthorized: u64,
    /// Requests with a method other than GET and HEAD (405).
    pub bad_methods: u64,
    /// Connections closed at a deadline with a request half sent (408) or output unread.
    pub timeouts: u64,
}

/// An HTTP/1.1 server for monitoring, driven by a host's mio loop.
///
/// Tokens: `[token_base, token_base + MonitorServer::tokens_needed(max_conns))`: the listener
/// at `token_base`, connection slot `k` at `token_base + 1 + k`. The call order for one turn
/// of the host's loop:
///
/// 1. `poll` with a timeout no later than [`MonitorServer::poll_timeout`];
/// 2. each event whose token [`MonitorServer::owns`]: [`MonitorServer::handle_event`];
/// 3. `while let Some((id, req)) = poll_request()`: route `req`, then
///    [`MonitorServer::respond`]`(id, &response)` (before asking for the next request);
/// 4. [`MonitorServer::handle_timeout`] (every turn, or at least when `poll_timeout` is due;
///    harmless when early): deadlines, resumed reads, closing.
pub struct MonitorServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    cfg: MonitorConfig,
    token_digest: Option<[u8; 32]>,
    token_base: usize,
    conns: Slab<Conn>,
    ready: VecDeque<usize>,
    next_generation: u32,
    /// The listener stopped before WouldBlock.
    accept_more: bool,
    /// Some connection is dead and waits to be deregistered.
    reap_pending: bool,
    /// The last `now` the host gave.
    now: Instant,
    /// An instant in the past: "call me back at once".
    epoch: Instant,
    stats: MonitorStats,
}

impl MonitorServer {
    /// Tokens needed for `max_conns` connections: the listener and one per connection.
    pub fn tokens_needed(max_conns: usize) -> usize {
        1 + max_conns
    }

    /// Check `cfg`, bind the listener and register it with `registry` at `token_base`.
    pub fn new(
        registry: &Registry,
        cfg: MonitorConfig,
        token_base: usize,
        now: Instant,
    ) -> Result<MonitorServer, MonitorError> {
        let bad = |field: &'static str, reason: &str| MonitorError::Config {
            field,
            reason: reason.to_string(),
        };
        if cfg.max_conns == 0 || cfg.max_conns > 1024 {
            return Err(bad("max_conns", "must be 1..=1024"));
        }
        if token_base
            .checked_add(Self::tokens_needed(cfg.max_conns))
            .is_none()
        {
            return Err(bad("token_base", "the token range overflows"));
        }
        if let Some(t) = &cfg.token
            && (t.is_empty()
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)))
        {
            return Err(bad(
                "token",
                "must be non-empty and made of A-Z a-z 0-9 - . _ ~ + / = (token68)",
            ));
        }
        if !cfg.listen.ip().is_loopback() && cfg.token.is_none() {
            return Err(MonitorError::NonLoopbackWithoutToken { listen: cfg.listen });
        }
        if cfg.request_timeout.is_zero() {
            return Err(bad("request_timeout", "must be positive"));
        }
        if cfg.idle_timeout.is_zero() {
            return Err(bad("idle_timeout", "must be positive"));
        }
        if cfg.output_cap == 0 {
            return Err(bad("output_cap", "must be positive"));
        }
        let l = cfg.limits;
        if l.max_target == 0 || l.max_headers == 0 || l.max_head < 64 {
            return Err(bad(
                "limits",
                "max_target and max_headers must be positive, max_head at least 64",
            ));
        }
        let io_err = |what| move |source| MonitorError::Io { what, source };
        let mut listener = TcpListener::bind(cfg.listen).map_err(io_err("bind"))?;
        let local_addr = listener.local_addr().map_err(io_err("local_addr"))?;
        registry
            .register(&mut listener, Token(token_base), Interest::READABLE)
            .map_err(io_err("register"))?;
        let token_digest = cfg.token.as_ref().map(|t| digest(t.as_bytes()));
        Ok(MonitorServer {
            listener,
            local_addr,
            token_digest,
            token_base,
            conns: Slab::with_capacity(cfg.max_conns),
            ready: VecDeque::with_capacity(cfg.max_conns),
            cfg,
            next_generation: 0,
            accept_more: false,
            reap_pending: false,
            now,
            epoch: now,
            stats: MonitorStats::default(),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Is `token` one of ours? Checks both bounds.
    pub fn owns(&self, token: Token) -> bool {
        token
            .0
            .checked_sub(self.token_base)
            .is_some_and(|i| i < Self::tokens_needed(self.cfg.max_conns))
    }

    fn conn_key(&self, token: Token) -> Option<usize> {
        let k = token.0.checked_sub(self.token_base + 1)?;
        (k < self.cfg.max_conns && self.conns.contains(k)).then_some(k)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Output queued, all connections.
    pub fn queued_bytes(&self) -> usize {
        self.conns.iter().map(|(_, c)| c.pending_out()).sum()
    }

    /// Output queued on the connection that has the most.
    pub fn max_queued_bytes(&self) -> usize {
        self.conns
            .iter()
            .map(|(_, c)| c.pending_out())
            .max()
            .unwrap_or(0)
    }

    /// Input buffered (received, not yet parsed into requests), all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.iter().map(|(_, c)| c.parser.buffered()).sum()
    }

    /// The peer of a connection that is still open.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.conns
            .get(id.key)
            .filter(|c| c.generation == id.generation)
            .map(|c| c.peer)
    }

    /// The server's counters.
    pub fn stats(&self) -> MonitorStats {
        self.stats
    }

    /// Handle one readiness event for one of our tokens (others, stale and spurious events
    /// are ignored).
    pub fn handle_event(&mut self, registry: &Registry, event: &Event, now: Instant) {
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_error();
        self.handle_ready(registry, event.token(), readable, writable, now);
    }

    /// Same as [`MonitorServer::handle_event`], from plain flags.
    pub fn handle_ready(
        &mut self,
        registry: &Registry,
        token: Token,
        readable: bool,
        writable: bool,
        now: Instant,
    ) {
        self.now = now;
        if token == Token(self.token_base) {
            self.accept(registry);
            return;
        }
        let Some(key) = self.conn_key(token) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(key) {
            c.budget = REQUESTS_PER_ACTIVATION;
        }
        if writable {
            self.write_out(key);
        }
        if readable {
            self.read(key);
        }
        self.schedule(key);
        self.reap(registry);
    }

    fn accept(&mut self, registry: &Registry) {
        self.accept_more = false;
        for _ in 0..ACCEPTS_PER_EVENT {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(registry, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the backlog waits for the next connection's edge
                    // rather than spinning.
                    warn!("monitor: accept failed: {e}");
                    return;
                }
            }
        }
        self.accept_more = true;
    }

    fn admit(&mut self, registry: &Registry, mut stream: TcpStream, peer: SocketAddr) {
        if self.conns.len() >= self.cfg.max_conns {
            self.stats.refused += 1;
            warn!(
                "monitor: refusing {peer}: {} connections open (the cap)",
                self.cfg.max_conns
            );
            refuse(stream);
            return;
        }
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let token = Token(self.token_base + 1 + key);
        if let Err(e) =
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            warn!("monitor: cannot register {peer}: {e}");
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let now = self.now;
        entry.insert(Conn {
            stream,
            peer,
            generation: self.next_generation,
            parser: Parser::new(self.cfg.limits),
            out: Vec::new(),
            out_pos: 0,
            awaiting: None,
            read_more: false,
            resume: false,
            eof: false,
            closing: false,
            lingering: false,
            dead: false,
            queued: false,
            budget: REQUESTS_PER_ACTIVATION,
            head_since: Some(now),
            idle_since: now,
            write_since: now,
            linger_since: now,
            auth_failures: 0,
        });
        self.stats.accepted += 1;
        debug!("monitor: connection from {peer}");
    }

    /// Read what a connection sent, within the budget; stop early on a full parser or a
    /// full output queue (back-pressure) and remember to resume.
    fn read(&mut self, key: usize) {
        let now = self.now;
        let cap = self.cfg.output_cap;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.dead || c.eof || (c.closing && !c.lingering) {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut budget = READ_BUDGET;
        c.read_more = false;
        loop {
            let room = if c.lingering {
                buf.len().min(budget)
            } else if c.pending_out() >= cap {
                0
            } else {
                c.parser.room().min(buf.len()).min(budget)
            };
            if room == 0 {
                c.read_more = true;
                c.resume = true;
                break;
            }
            match c.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    c.eof = true;
                    if c.lingering {
                        c.dead = true;
                    }
                    break;
                }
                Ok(n) => {
                    budget -= n;
                    if !c.lingering {
                        c.parser.push(&buf[..n]);
                        if c.head_since.is_none() && c.parser.has_partial() {
                            c.head_since = Some(now);
                        }
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
        if c.dead {
            self.reap_pending = true;
        }
    }

    /// Put a connection in the ready queue if it may have a request to give.
    fn schedule(&mut self, key: usize) {
        let cap = self.cfg.output_cap;
        if let Some(c) = self.conns.get_mut(key)
            && !c.queued
            && c.can_take(cap)
        {
            c.queued = true;
            self.ready.push_back(key);
        }
    }

    /// The next request for the host to answer with [`MonitorServer::respond`], in the order
    /// each connection sent them. A connection gives its next request only once the previous
    /// one was answered and while its queued output is below the cap; requests refused by the
    /// generic rules (parse errors, 401, 405) are answered here and never returned.
    #[must_use]
    pub fn poll_request(&mut self) -> Option<(ConnId, Request)> {
        while let Some(key) = self.ready.pop_front() {
            if let Some(c) = self.conns.get_mut(key) {
                c.queued = false;
            }
            if let Some(r) = self.take_request(key) {
                return Some(r);
            }
        }
        None
    }

    fn take_request(&mut self, key: usize) -> Option<(ConnId, Request)> {
        let now = self.now;
        loop {
            let c = self.conns.get_mut(key)?;
            if !c.can_take(self.cfg.output_cap) {
                return None;
            }
            if c.budget == 0 {
                c.resume = true;
                return None;
            }
            let Some(result) = c.parser.next_request() else {
                if c.eof {
                    // The client is done sending (a half-close, or a half request at EOF).
                    c.closing = true;
                    self.write_out(key);
                } else if c.read_more {
                    c.resume = true;
                }
                return None;
            };
            c.budget -= 1;
            c.head_since = c.parser.has_partial().then_some(now);
            c.idle_since = now;
            self.stats.requests += 1;
            let req = match result {
                Err(e) => {
                    self.stats.bad_requests += 1;
                    debug!("monitor: {} sent a bad request: {e}", c.peer);
                    write_error(c.begin_output(now), &e, false);
                    c.closing = true;
                    self.write_out(key);
                    return None;
                }
                Ok(req) => req,
            };
            let head_only = req.method == Method::Head;
            if let Some(want) = &self.token_digest
                && !authorized(want, req.bearer.as_deref())
            {
                self.stats.unauthorized += 1;
                c.auth_failures += 1;
                warn!(
                    "monitor: request from {} without the right bearer token ({} of {MAX_AUTH_FAILURES})",
                    c.peer, c.auth_failures
                );
                let keep = req.keep_alive && c.auth_failures < MAX_AUTH_FAILURES;
                let resp = Response::text(401, "a bearer token is required\n");
                write_response(c.begin_output(now), &resp, head_only, keep);
                c.closing |= !keep;
                self.write_out(key);
                continue;
            }
            if req.method == Method::Other {
                self.stats.bad_methods += 1;
                let resp = Response::text(405, "only GET and HEAD\n");
                write_response(c.begin_output(now), &resp, false, req.keep_alive);
                c.closing |= !req.keep_alive;
                self.write_out(key);
                continue;
            }
            c.awaiting = Some(Pending {
                head_only,
                keep_alive: req.keep_alive,
            });
            let id = ConnId {
                key,
                generation: c.generation,
            };
            return Some((id, req));
        }
    }

    /// Answer the request last given for `id` (a HEAD request gets the headers only). A
    /// stale id, or an id with no request to answer, is ignored.
    pub fn respond(&mut self, id: ConnId, response: &Response<'_>) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(id.key) else {
            return;
        };
        if c.generation != id.generation {
            return;
        }
        let Some(p) = c.awaiting.take() else {
            return;
        };
        write_response(c.begin_output(now), response, p.head_only, p.keep_alive);
        c.closing |= !p.keep_alive;
        c.idle_since = now;
        self.write_out(id.key);
        self.schedule(id.key);
    }

    /// Write queued output (until WouldBlock); shut a finished closing connection's sending
    /// side and start lingering.
    fn write_out(&mut self, key: usize) {
        let now = self.now;
        let cap = self.cfg.output_cap;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let was_full = c.pending_out() >= cap;
        while !c.dead && c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => c.dead = true,
                Ok(n) => {
                    c.out_pos += n;
                    c.write_since = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => c.dead = true,
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
            // A large response (a long /clients) leaves no large buffer behind on an idle
            // keep-alive connection.
            if c.out.capacity() > cap {
                c.out = Vec::new();
            }
            if c.closing && !c.lingering && !c.dead {
                if c.eof {
                    c.dead = true;
                } else {
                    // Shut our side, then drain what the client still sends, so that the
                    // close is a FIN and not a reset that could destroy the response.
                    let _ = c.stream.shutdown(Shutdown::Write);
                    c.lingering = true;
                    c.linger_since = now;
                    c.read_more = true;
                    c.resume = true;
                }
            }
        } else if c.out_pos >= 64 * 1024 {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        if c.dead {
            self.reap_pending = true;
        } else if was_full && c.pending_out() < cap {
            // Back-pressure released: resume reading and answering.
            c.resume = true;
        }
    }

    /// When [`MonitorServer::handle_timeout`] is due: the earliest deadline, or an instant in
    /// the past when work was left for later (a read or accept stopped at its budget, a
    /// connection to close).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let cap = self.cfg.output_cap;
        if self.accept_more || self.reap_pending || !self.ready.is_empty() {
            return Some(self.epoch);
        }
        let mut next: Option<Instant> = None;
        for (_, c) in self.conns.iter() {
            if c.resume && (c.lingering || c.can_take(cap)) {
                return Some(self.epoch);
            }
            let d = c.deadline(&self.cfg);
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        next
    }

    /// Close connections past their deadline, resume connections that stopped before
    /// WouldBlock, accept what the listener left, deregister closed connections. Harmless
    /// when called early.
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        self.now = now;
        if self.accept_more {
            self.accept(registry);
        }
        let cap = self.cfg.output_cap;
        // Slab keys are dense below `capacity`: no list to allocate on every loop turn.
        for key in 0..self.conns.capacity() {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.dead {
                continue;
            }
            if c.deadline(&self.cfg) <= now {
                self.expire(key);
            } else if c.resume && (c.lingering || c.can_take(cap)) {
                c.resume = false;
                c.budget = REQUESTS_PER_ACTIVATION;
                if c.read_more {
                    self.read(key);
                }
                self.schedule(key);
            }
        }
        self.reap(registry);
    }

    fn expire(&mut self, key: usize) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.lingering || c.closing || c.pending_out() > 0 || c.awaiting.is_some() {
            if !c.lingering {
                self.stats.timeouts += 1;
                debug!("monitor: {} stopped reading; closing it", c.peer);
            }
            c.dead = true;
            self.reap_pending = true;
        } else if c.parser.has_partial() {
            self.stats.timeouts += 1;
            debug!("monitor: {} did not finish its request in time", c.peer);
            let resp = Response::text(408, "request not received in time\n");
            write_response(c.begin_output(now), &resp, false, false);
            c.closing = true;
            self.write_out(key);
        } else {
            c.dead = true;
            self.reap_pending = true;
        }
    }

    /// Deregister and drop dead connections.
    fn reap(&mut self, registry: &Registry) {
        if !self.reap_pending {
            return;
        }
        self.reap_pending = false;
        for key in 0..self.conns.capacity() {
            if self.conns.get(key).is_some_and(|c| c.dead) {
                let mut c = self.conns.remove(key);
                let _ = registry.deregister(&mut c.stream);
                if c.queued {
                    self.ready.retain(|&k| k != key);
                }
                debug!("monitor: {} disconnected", c.peer);
            }
        }
    }

    /// Write what can be written without waiting, then close every connection and the
    /// listener (the host's shutdown).
    pub fn close_all(&mut self, registry: &Registry) {
        for key in 0..self.conns.capacity() {
            self.write_out(key);
        }
        for mut c in self.conns.drain() {
            let _ = registry.deregister(&mut c.stream);
        }
        self.ready.clear();
        let _ = registry.deregister(&mut self.listener);
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Constant time, and independent of the presented token's length: both sides are hashed.
fn authorized(want: &[u8; 32], presented: Option<&str>) -> bool {
    let got = digest(presented.unwrap_or("").as_bytes());
    presented.is_some() & bool::from(want.ct_eq(&got))
}

/// Answer a connection over the cap with 503 and close it without a reset: shut our side,
/// drain what already arrived.
fn refuse(mut stream: TcpStream) {
    let mut out = Vec::with_capacity(256);
    write_response(
        &mut out,
        &Response::text(503, "too many monitor connections\n"),
        false,
        false,
    );
    let _ = stream.write(&out);
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 1024];
    let _ = stream.read(&mut sink);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> mio::Poll {
        mio::Poll::new().unwrap()
    }

    #[test]
    fn config_is_checked_with_the_field_named() {
        let poll = registry();
        let now = Instant::now();
        let try_cfg = |cfg: MonitorConfig| MonitorServer::new(poll.registry(), cfg, 100, now);
        let loopback0 = SocketAddr::from(([127, 0, 0, 1], 0));
        let base = MonitorConfig {
            listen: loopback0,
            ..MonitorConfig::default()
        };
        let e = try_cfg(MonitorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            ..base.clone()
        })
        .err()
        .unwrap();
        assert!(matches!(e, MonitorError::NonLoopbackWithoutToken { .. }));
        assert_eq!(e.field(), Some("listen"));
        assert!(e.to_string().contains("non-loopback 0.0.0.0:0"), "{e}");
        for (cfg, field) in [
            (
                MonitorConfig {
                    max_conns: 0,
                    ..base.clone()
                },
                "max_conns",
            ),
            (
                MonitorConfig {
                    token: Some(String::new()),
                    ..base.clone()
                },
                "token",
            ),
            (
                MonitorConfig {
                    token: Some("a b".into()),
                    ..base.clone()
                },
                "token",
            ),
            (
                MonitorConfig {
                    request_timeout: Duration::ZERO,
                    ..base.clone()
                },
                "request_timeout",
            ),
            (
                MonitorConfig {
                    idle_timeout: Duration::ZERO,
                    ..base.clone()
                },
                "idle_timeout",
            ),
            (
                MonitorConfig {
                    output_cap: 0,
                    ..base.clone()
                },
                "output_cap",
            ),
        ] {
            assert_eq!(try_cfg(cfg).err().unwrap().field(), Some(field));
        }
        // A token makes any address acceptable; ::1 is loopback.
        let ok = try_cfg(MonitorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            token: Some("s3cret".into()),
            ..base.clone()
        });
        assert!(ok.is_ok());
        let v6 = try_cfg(MonitorConfig {
            listen: "[::1]:0".parse().unwrap(),
            ..base.clone()
        });
        assert!(v6.is_ok() || matches!(v6, Err(MonitorError::Io { .. })));
    }

    #[test]
    fn token_range_bounds() {
        let poll = registry();
        let cfg = MonitorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_conns: 3,
            ..MonitorConfig::default()
        };
        let m = MonitorServer::new(poll.registry(), cfg, 10, Instant::now()).unwrap();
        assert_eq!(MonitorServer::tokens_needed(3), 4);
        assert!(!m.owns(Token(9)));
        assert!((10..14).all(|t| m.owns(Token(t))));
        assert!(!m.owns(Token(14)));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn bearer_comparison() {
        let want = digest(b"s3cret");
        assert!(authorized(&want, Some("s3cret")));
        assert!(!authorized(&want, Some("s3cre")));
        assert!(!authorized(&want, Some("s3cretx")));
        assert!(!authorized(&want, None));
        assert!(!authorized(&digest(b""), None));
    }
}
