//! What the relay tells its host: joins, leaves, traffic, a requested shutdown.
//!
//! The host drains [`RelayEvent`]s with `poll_event` whenever it likes (or never). The queue
//! is bounded: when it is full the oldest event is dropped and counted, so a host that never
//! looks costs nothing but a few hundred bytes. Traffic is not one event per message: the
//! counts since the previous [`RelayEvent::Relayed`] are coalesced into one.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::wire::LeaveReason;

/// Something that happened in the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayEvent {
    /// A client registered.
    Joined {
        /// Its id.
        id: u32,
        /// Its address.
        addr: SocketAddr,
        /// Its admission name (with an admission list).
        name: Option<String>,
    },
    /// A client's session ended (disconnect, timeout, kick, replaced, shutdown).
    Left {
        /// Its id.
        id: u32,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        reason: LeaveReason,
    },
    /// Messages were relayed since the previous `Relayed` event.
    Relayed {
        /// Client messages accepted.
        messages: u64,
        /// Copies queued for recipients.
        deliveries: u64,
    },
    /// Federation: a client of another relay joined.
    RemoteJoined {
        /// Its id.
        id: u32,
        /// Its relay.
        relay: u8,
        /// Its admission name.
        name: Option<String>,
    },
    /// Federation: a client of another relay left (or its relay was lost).
    RemoteLeft {
        /// Its id.
        id: u32,
        /// Its relay.
        relay: u8,
        /// Why.
        reason: LeaveReason,
    },
    /// An operator asked for a shutdown (control port `shutdown`): the host should call the
    /// relay's `shutdown`.
    ShutdownRequested,
}

/// Most events held for the host.
pub(crate) const EVENT_QUEUE: usize = 1024;

/// The bounded event queue.
#[derive(Debug, Default)]
pub(crate) struct Events {
    queue: VecDeque<RelayEvent>,
    dropped: u64,
    /// (messages, deliveries) already reported.
    reported: (u64, u64),
}

impl Events {
    pub(crate) fn push(&mut self, ev: RelayEvent) {
        if self.queue.len() >= EVENT_QUEUE {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(ev);
    }

    /// The next event; when the queue is empty, the traffic since the last report (if any),
    /// given the current totals.
    pub(crate) fn poll(&mut self, messages: u64, deliveries: u64) -> Option<RelayEvent> {
        if let Some(ev) = self.queue.pop_front() {
            return Some(ev);
        }
        let (m, d) = self.reported;
        if messages == m && deliveries == d {
            return None;
        }
        self.reported = (messages, deliveries);
        Some(RelayEvent::Relayed {
            messages: messages - m,
            deliveries: deliveries - d,
        })
    }

    /// Events lost because the host did not drain the queue.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_is_coalesced_after_the_queued_events() {
        let mut e = Events::default();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        e.push(RelayEvent::Joined {
            id: 1,
            addr,
            name: None,
        });
        assert!(matches!(
            e.poll(5, 20),
            Some(RelayEvent::Joined { id: 1, .. })
        ));
        assert_eq!(
            e.poll(5, 20),
            Some(RelayEvent::Relayed {
                messages: 5,
                deliveries: 20
            })
        );
        assert_eq!(e.poll(5, 20), None);
        assert_eq!(
            e.poll(6, 23),
            Some(RelayEvent::Relayed {
                messages: 1,
                deliveries: 3
            })
        );
    }

    #[test]
    fn the_queue_is_bounded_and_drops_the_oldest() {
        let mut e = Events::default();
        for id in 0..EVENT_QUEUE as u32 + 10 {
            e.push(RelayEvent::Left {
                id,
                addr: "127.0.0.1:1".parse().unwrap(),
                reason: LeaveReason::Timeout,
            });
        }
        assert_eq!(e.dropped(), 10);
        assert!(matches!(
            e.poll(0, 0),
            Some(RelayEvent::Left { id: 10, .. })
        ));
    }
}
