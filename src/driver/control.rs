//! Control connections: a TCP listener and a slab of line-oriented operator sessions.
//!
//! Never blocks the loop: reads and writes are non-blocking, input lines and output are
//! bounded per connection, log lines that do not fit are dropped and counted (the operator is
//! told how many), and a reply that cannot fit closes that connection only.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use subtle::ConstantTimeEq;

use super::logtap::LogLine;
use crate::control::{self, Command, MAX_LINE};

/// Output a connection may have queued before log lines are dropped.
pub const LOG_BUDGET: usize = 64 * 1024;
/// Output a connection may have queued at all; a reply past it closes the connection.
pub const OUTPUT_CAP: usize = 1024 * 1024;
/// Command lines taken from one connection in one read (it reads until WouldBlock).
pub const MAX_REQUESTS_PER_READ: usize = 4096;
/// Kernel send buffer of a control connection (bounds memory held for a stalled operator).
pub const SEND_BUFFER: usize = 64 * 1024;
/// Failed `auth` attempts before the connection is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

pub(crate) struct Conn {
    stream: TcpStream,
    pub(crate) peer: SocketAddr,
    inbuf: Vec<u8>,
    discarding: bool,
    out: Vec<u8>,
    out_pos: usize,
    pub(crate) authed: bool,
    log_on: bool,
    log_level: log::LevelFilter,
    logs_dropped: u64,
    auth_failures: u32,
    close_after_flush: bool,
    /// False after `quit` or an auth lockout: later commands in the same input are ignored.
    accepting: bool,
    dead: bool,
    writable_interest: bool,
}

/// What a connection asked the relay to do.
pub(crate) enum Request {
    Command(usize, Command),
}

pub(crate) struct ControlServer {
    listener: TcpListener,
    pub(crate) conns: Slab<Conn>,
    max_conns: usize,
    token_base: usize,
    auth_token: Option<String>,
    pub(crate) local_addr: SocketAddr,
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

    pub(crate) fn conn_token(&self, key: usize) -> Token {
        Token(self.token_base + key)
    }

    pub(crate) fn owns_conn(&self, t: Token) -> Option<usize> {
        let k = t.0.checked_sub(self.token_base)?;
        (k < self.max_conns && self.conns.contains(k)).then_some(k)
    }

    /// Accept every pending connection (up to the cap; extra ones get one line and close).
    pub(crate) fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= self.max_conns {
                        warn!(
                            "control: refusing {peer}: {} operators connected (--max-control)",
                            self.max_conns
                        );
                        let _ = stream.write(b"ERR too many control connections\n");
                        continue;
                    }
                    // Bound what the kernel holds for a stalled operator too, not only our queue.
                    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
                    let entry = self.conns.vacant_entry();
                    let token = Token(self.token_base + entry.key());
                    if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
                        warn!("control: cannot register {peer}: {e}");
                        continue;
                    }
                    info!("control: operator connected from {peer}");
                    let authed = self.auth_token.is_none();
                    let mut conn = Conn {
                        stream,
                        peer,
                        inbuf: Vec::new(),
                        discarding: false,
                        out: Vec::new(),
                        out_pos: 0,
                        authed,
                        log_on: false,
                        log_level: log::LevelFilter::Info,
                        logs_dropped: 0,
                        auth_failures: 0,
                        close_after_flush: false,
                        accepting: true,
                        dead: false,
                        writable_interest: false,
                    };
                    let greeting = if authed {
                        "mcrelay control; type help\nOK\n"
                    } else {
                        "mcrelay control; authenticate with: auth <token>\nOK\n"
                    };
                    conn.out.extend_from_slice(greeting.as_bytes());
                    entry.insert(conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("control: accept failed: {e}");
                    break;
                }
            }
        }
    }

    /// Read what a connection sent (until WouldBlock); complete lines become requests.
    pub(crate) fn read(&mut self, key: usize, requests: &mut Vec<Request>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut buf = [0u8; 4096];
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
                            if c.discarding {
                                c.discarding = false;
                                reply(c, &Err(format!("line longer than {MAX_LINE} bytes")), "");
                            } else {
                                let line = String::from_utf8_lossy(&c.inbuf)
                                    .trim_end_matches('\r')
                                    .to_string();
                                match control::parse(&line) {
                                    Ok(cmd) => requests.push(Request::Command(key, cmd)),
                                    Err(e) => reply(c, &Err(e), ""),
                                }
                            }
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
                    let flooding = requests.len() > MAX_REQUESTS_PER_READ;
                    if flooding || c.out.len() - c.out_pos > OUTPUT_CAP {
                        warn!(
                            "control: {} sends faster than it reads replies; closing it",
                            c.peer
                        );
                        c.dead = true;
                        requests.retain(|r| !matches!(r, Request::Command(k, _) if *k == key));
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

    /// Check an `auth` attempt; returns the reply.
    pub(crate) fn auth(&mut self, key: usize, token: &str) -> Result<String, String> {
        let Some(c) = self.conns.get_mut(key) else {
            return Err("gone".into());
        };
        let Some(want) = &self.auth_token else {
            c.authed = true;
            return Ok("no token configured\n".into());
        };
        // Attempts pipelined after the last allowed failure (same read) are refused unchecked:
        // the connection is already closing.
        if c.auth_failures >= MAX_AUTH_FAILURES {
            return Err("authentication failed".into());
        }
        if bool::from(want.as_bytes().ct_eq(token.as_bytes())) {
            c.authed = true;
            info!("control: {} authenticated", c.peer);
            Ok(String::new())
        } else {
            c.auth_failures += 1;
            warn!(
                "control: failed auth from {} ({} of {MAX_AUTH_FAILURES})",
                c.peer, c.auth_failures
            );
            if c.auth_failures >= MAX_AUTH_FAILURES {
                warn!(
                    "control: closing {} after {MAX_AUTH_FAILURES} failed auth attempts",
                    c.peer
                );
                c.close_after_flush = true;
                c.accepting = false;
            }
            Err("authentication failed".into())
        }
    }

    pub(crate) fn set_log(
        &mut self,
        key: usize,
        on: Option<bool>,
        level: Option<log::LevelFilter>,
    ) {
        if let Some(c) = self.conns.get_mut(key) {
            if let Some(on) = on {
                c.log_on = on;
            }
            if let Some(l) = level {
                c.log_level = l;
            }
        }
    }

    pub(crate) fn close_after_flush(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            c.close_after_flush = true;
            c.accepting = false;
        }
    }

    /// Queue a reply (body lines + terminator) on one connection.
    /// Does this connection still take commands (not after `quit` or an auth lockout)?
    pub(crate) fn accepts(&self, key: usize) -> bool {
        self.conns.get(key).is_some_and(|c| c.accepting)
    }

    /// The most verbose level any authenticated operator streams (Off when none).
    pub(crate) fn max_log_level(&self) -> log::LevelFilter {
        self.conns
            .iter()
            .filter(|(_, c)| c.log_on && c.authed)
            .map(|(_, c)| c.log_level)
            .max()
            .unwrap_or(log::LevelFilter::Off)
    }

    pub(crate) fn reply(&mut self, key: usize, result: &Result<String, String>) {
        if let Some(c) = self.conns.get_mut(key) {
            reply(c, result, "");
        }
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
            if !c.log_on || !c.authed {
                continue;
            }
            if dropped_upstream > 0 {
                c.logs_dropped += dropped_upstream;
            }
            for l in lines {
                if l.level > c.log_level {
                    continue;
                }
                let pending = c.out.len() - c.out_pos;
                if pending + l.text.len() + 16 > LOG_BUDGET {
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

    /// Write queued output; close dead connections. Returns nothing: problems close the
    /// connection concerned and are logged.
    pub(crate) fn flush(&mut self, registry: &Registry) {
        // Slab keys are dense below `capacity`: no list to allocate on every loop turn.
        for key in 0..self.conns.capacity() {
            let token = self.conn_token(key);
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.out.len() - c.out_pos > OUTPUT_CAP {
                warn!(
                    "control: {} is not reading; its reply does not fit, closing it",
                    c.peer
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
            if c.dead {
                let mut c = self.conns.remove(key);
                let _ = registry.deregister(&mut c.stream);
                info!("control: operator {} disconnected", c.peer);
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

    /// Bytes queued for output on each connection (tests, stats).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.conns
            .iter()
            .map(|(_, c)| c.out.len() - c.out_pos)
            .sum()
    }
}

fn reply(c: &mut Conn, result: &Result<String, String>, _prefix: &str) {
    match result {
        Ok(body) => {
            c.out.extend_from_slice(body.as_bytes());
            c.out.extend_from_slice(b"OK\n");
        }
        Err(e) => {
            c.out.extend_from_slice(b"ERR ");
            c.out.extend_from_slice(e.replace('\n', " ").as_bytes());
            c.out.push(b'\n');
        }
    }
}
