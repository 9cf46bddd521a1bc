//! One monitor connection's state: its stream, parser, output queue and clocks.

use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use super::config::MonitorConfig;
use super::http::Parser;
use super::server::LINGER;

/// What the host owes a connection: the answer to the request it was given.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) head_only: bool,
    pub(super) keep_alive: bool,
}

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) generation: u32,
    pub(super) parser: Parser,
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    pub(super) awaiting: Option<Pending>,
    /// Reading stopped before WouldBlock (budget, full parser, output cap): data may wait in
    /// the kernel with no readiness edge to come.
    pub(super) read_more: bool,
    /// Ask for a resumption (read more, take more requests) at the next `handle_timeout`.
    pub(super) resume: bool,
    /// The client closed its sending side.
    pub(super) eof: bool,
    /// No further request: close once the output is written.
    pub(super) closing: bool,
    /// Our sending side is shut; leftover input is discarded until EOF or the deadline.
    pub(super) lingering: bool,
    pub(super) dead: bool,
    /// In the ready queue.
    pub(super) queued: bool,
    pub(super) budget: u32,
    /// When the request head being received began (the connection, for the first request).
    pub(super) head_since: Option<Instant>,
    /// When the connection last became idle (accepted, or a response queued).
    pub(super) idle_since: Instant,
    /// When output last made progress, or was queued onto an empty buffer.
    pub(super) write_since: Instant,
    pub(super) linger_since: Instant,
    pub(super) auth_failures: u32,
}

impl Conn {
    pub(super) fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// May this connection's next request be taken now?
    pub(super) fn can_take(&self, cap: usize) -> bool {
        !self.dead
            && !self.closing
            && !self.lingering
            && self.awaiting.is_none()
            && self.pending_out() < cap
    }

    pub(super) fn deadline(&self, cfg: &MonitorConfig) -> Instant {
        if self.lingering {
            self.linger_since + LINGER
        } else if self.pending_out() > 0 {
            self.write_since + cfg.idle_timeout
        } else if self.awaiting.is_some() {
            self.idle_since + cfg.idle_timeout
        } else if let Some(t) = self.head_since {
            t + cfg.request_timeout
        } else {
            self.idle_since + cfg.idle_timeout
        }
    }

    /// Prepare to append a response: start the write clock if the queue was empty.
    pub(super) fn begin_output(&mut self, now: Instant) -> &mut Vec<u8> {
        if self.pending_out() == 0 {
            self.write_since = now;
        }
        &mut self.out
    }
}
