//! What the client tells the host: events ([`NatsEvent`], kept in a bounded [`EventQueue`]
//! until polled), its state, its counters and the borrowed message handed to the callback.

use std::collections::VecDeque;
use std::net::SocketAddr;

#[cfg(doc)]
use super::NatsClient;
use super::errors::DisconnectReason;

/// Events kept for [`NatsClient::poll_event`]; older ones are dropped (counted) beyond it.
pub const MAX_EVENTS: usize = 64;

/// Something the host may want to know or log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsEvent {
    /// Handshake complete (PONG received): subscriptions are active, queued publishes flow.
    Connected {
        /// The server.
        server: SocketAddr,
    },
    /// An attempt failed before the handshake completed.
    ConnectFailed {
        /// The server.
        server: SocketAddr,
        /// Why.
        reason: DisconnectReason,
    },
    /// An established link ended.
    Disconnected {
        /// The server.
        server: SocketAddr,
        /// Why.
        reason: DisconnectReason,
    },
    /// The server announced lame-duck mode; the client will move to another server.
    LameDuck {
        /// The server.
        server: SocketAddr,
    },
    /// The server sent `-ERR`.
    ServerError {
        /// The server.
        server: SocketAddr,
        /// Its message (quotes removed).
        message: String,
        /// The client closes the link for it.
        fatal: bool,
    },
    /// `connect_urls` added servers to the list.
    DiscoveredServers {
        /// How many were new.
        added: usize,
    },
}

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsState {
    /// No link; waiting for the next attempt ([`NatsClient::poll_connect`]).
    Waiting,
    /// TCP connect in progress.
    Connecting,
    /// TCP up; INFO, CONNECT, PING/PONG in progress.
    Handshaking,
    /// Link up.
    Connected,
    /// The client wants the host to close the socket ([`NatsClient::wants_close`]).
    Closing,
    /// [`NatsClient::close`] completed: nothing more will happen.
    Closed,
}

/// Counters. Monotonic; never reset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsStats {
    /// Messages delivered to the host.
    pub msgs_in: u64,
    /// Payload bytes delivered to the host.
    pub bytes_in: u64,
    /// Publishes handed to the transmit buffer.
    pub msgs_out: u64,
    /// Payload bytes of those.
    pub bytes_out: u64,
    /// Connection attempts started.
    pub connect_attempts: u64,
    /// Attempts that ended before the handshake completed.
    pub connect_failures: u64,
    /// Handshakes completed.
    pub connects: u64,
    /// Handshakes completed after the first.
    pub reconnects: u64,
    /// Established links that ended.
    pub disconnects: u64,
    /// Our PINGs sent (handshake PINGs included).
    pub pings_sent: u64,
    /// PONGs received.
    pub pongs_received: u64,
    /// Ping ticks that found the previous PING unanswered.
    pub pongs_missed: u64,
    /// Links declared dead for unanswered PINGs.
    pub stale_connections: u64,
    /// Server PINGs answered.
    pub pings_answered: u64,
    /// Queued publishes dropped to make room (oldest first), or refused for want of a queue.
    pub dropped_queue_full: u64,
    /// Publishes refused or dropped for exceeding the server's `max_payload`.
    pub dropped_max_payload: u64,
    /// Messages for a subscription we no longer have.
    pub dropped_unknown_sid: u64,
    /// Messages whose subject or reply is not UTF-8.
    pub dropped_bad_subject: u64,
    /// HMSG deliveries (headers were not asked for).
    pub dropped_hmsg: u64,
    /// Transmit bytes not yet written when a link ended.
    pub lost_transmit_bytes: u64,
    /// `-ERR` received.
    pub server_errors: u64,
    /// `-ERR` that closed the link.
    pub fatal_server_errors: u64,
    /// Protocol or INFO errors.
    pub protocol_errors: u64,
    /// Links closed because the server stopped reading.
    pub output_overflows: u64,
    /// Servers added from `connect_urls`.
    pub discovered_servers: u64,
    /// `connect_urls` entries that were not IP literals (counted per INFO).
    pub skipped_urls: u64,
    /// Discovered servers not added because the list was full.
    pub servers_over_cap: u64,
    /// Lame-duck notices.
    pub lame_duck: u64,
    /// Events dropped because the host did not poll them.
    pub events_dropped: u64,
}

/// A message delivered to the host; everything borrows the input (or the parser's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatsMsg<'a> {
    /// The subject it was published to.
    pub subject: &'a str,
    /// Our subscription id ([`NatsClient::subscribe`]).
    pub sid: u64,
    /// The publisher's reply subject.
    pub reply: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
}

/// The events the host has not polled yet: at most [`MAX_EVENTS`], the oldest dropped first.
#[derive(Debug, Default)]
pub(super) struct EventQueue {
    events: VecDeque<NatsEvent>,
}

impl EventQueue {
    /// Queue `e`; `true` when the oldest event was dropped to make room.
    pub(super) fn push(&mut self, e: NatsEvent) -> bool {
        let dropped = self.events.len() >= MAX_EVENTS;
        if dropped {
            self.events.pop_front();
        }
        self.events.push_back(e);
        dropped
    }

    /// The oldest event.
    pub(super) fn pop(&mut self) -> Option<NatsEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lame(port: u16) -> NatsEvent {
        NatsEvent::LameDuck {
            server: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn keeps_the_newest_and_says_when_it_dropped() {
        let mut q = EventQueue::default();
        for p in 0..MAX_EVENTS as u16 {
            assert!(!q.push(lame(p)));
        }
        assert!(q.push(lame(1000)));
        assert!(q.push(lame(1001)));
        assert_eq!(q.pop(), Some(lame(2)), "the two oldest went");
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest.len(), MAX_EVENTS - 1);
        assert_eq!(rest.last(), Some(&lame(1001)));
        assert_eq!(q.pop(), None);
    }
}
