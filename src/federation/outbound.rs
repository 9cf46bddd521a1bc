//! What this relay publishes: each message sealed under the cluster key with the next
//! sequence number of this incarnation, and the three kinds of publish built from the core's
//! state (its local record, a heartbeat, a roster in parts).

use std::time::{Duration, Instant};

use log::{debug, warn};

use super::Publish;
use super::wire::{self, Header, Msg};
use crate::core::{LocalRecord, RelayCore, RosterDigest, local_records};
use crate::crypto::fernet::{self, FernetKey};
use crate::crypto::rng::Rng;

/// The wall clock as the federation reads it: Unix seconds at `start`, moved on by the
/// monotonic clock (Fernet timestamps, both ways).
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub(super) start: Instant,
    pub(super) unix_at_start: u64,
}

impl Clock {
    /// Unix seconds at `now`.
    pub(super) fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.start).as_secs()
    }
}

/// At most this many warnings a second (the rest go to debug).
#[derive(Debug)]
pub(super) struct LogLimit {
    window: Instant,
    lines: u32,
}

impl LogLimit {
    pub(super) fn new(now: Instant) -> LogLimit {
        LogLimit {
            window: now,
            lines: 0,
        }
    }

    pub(super) fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.lines = 0;
        }
        self.lines += 1;
        self.lines <= 10
    }
}

/// The publishing side: this relay's identity on the wire, its sequence numbers and buffers.
pub(super) struct Outbound {
    id: u8,
    incarnation: u64,
    key: FernetKey,
    subject: String,
    /// The last sequence number published.
    seq: u64,
    rng: Rng,
    clock: Clock,
    plain: Vec<u8>,
    token: Vec<u8>,
    scratch: Vec<u8>,
    log: LogLimit,
}

impl Outbound {
    pub(super) fn new(
        id: u8,
        incarnation: u64,
        key: FernetKey,
        subject: String,
        rng: Rng,
        clock: Clock,
    ) -> Outbound {
        Outbound {
            id,
            incarnation,
            key,
            subject,
            seq: 0,
            rng,
            clock,
            plain: Vec::with_capacity(2048),
            token: Vec::with_capacity(2048),
            scratch: Vec::new(),
            log: LogLimit::new(clock.start),
        }
    }

    /// The subject this relay publishes to.
    pub(super) fn subject(&self) -> &str {
        &self.subject
    }

    /// The last sequence number published.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// Seal and publish one message; false (and counted) when the NATS client refused it.
    pub(super) fn send(
        &mut self,
        now: Instant,
        core: &mut RelayCore,
        publish: &mut Publish<'_>,
        msg: &Msg<'_>,
    ) -> bool {
        let h = Header {
            origin: self.id,
            incarnation: self.incarnation,
            seq: self.seq + 1,
        };
        self.plain.clear();
        wire::write(&mut self.plain, &h, msg);
        self.token.clear();
        let iv = self.rng.iv();
        let unix = self.clock.unix(now);
        fernet::encrypt_raw_into(&self.key, &iv, unix, &self.plain, &mut self.token);
        match publish(&self.subject, &self.token) {
            Ok(()) => {
                self.seq = h.seq;
                core.stats_mut().federation_published += 1;
                true
            }
            Err(e) => {
                core.stats_mut().federation_publish_dropped += 1;
                if self.log.allow(now) {
                    warn!("federation: publish refused: {e}");
                }
                false
            }
        }
    }

    /// The core's local record (joins, leaves, relayed messages), one publish each; when
    /// `cut_off`, nothing (peers have declared us lost; our roster follows the reconnect).
    pub(super) fn record(
        &mut self,
        now: Instant,
        record: &[u8],
        cut_off: bool,
        core: &mut RelayCore,
        publish: &mut Publish<'_>,
    ) {
        for rec in local_records(record) {
            let msg = match rec {
                LocalRecord::Message { sender, name, data } => Msg::Data {
                    sender,
                    name: name.and_then(|n| std::str::from_utf8(n).ok()),
                    data,
                },
                LocalRecord::Join { id, name } => Msg::Join {
                    client: id,
                    name: name.and_then(|n| std::str::from_utf8(n).ok()),
                },
                LocalRecord::Leave { id, reason } => Msg::Leave { client: id, reason },
                LocalRecord::Shutdown => continue,
            };
            let data = matches!(msg, Msg::Data { .. });
            if cut_off {
                if data {
                    core.stats_mut().federation_publish_dropped += 1;
                }
                continue;
            }
            if self.send(now, core, publish, &msg) && data {
                core.stats_mut().federation_data_out += 1;
            }
        }
    }

    /// A heartbeat: our interval, our roster's digest, and for each live peer (`received`:
    /// id and messages received from it this incarnation, at most 255) what we got of it.
    pub(super) fn heartbeat(
        &mut self,
        now: Instant,
        interval: Duration,
        received: impl Iterator<Item = (u8, u64)>,
        core: &mut RelayCore,
        publish: &mut Publish<'_>,
    ) {
        let mut pairs = std::mem::take(&mut self.scratch);
        pairs.clear();
        for (id, n) in received.take(255) {
            pairs.push(id);
            pairs.extend_from_slice(&n.to_be_bytes());
        }
        let msg = Msg::Heartbeat {
            interval_ms: interval.as_millis().min(u128::from(u32::MAX)) as u32,
            roster: core.local_digest(),
            received: wire::heartbeat_pairs(&pairs),
        };
        self.send(now, core, publish, &msg);
        self.scratch = pairs;
    }

    /// Our roster, in parts of at most [`wire::ROSTER_PART_BYTES`] of entries.
    pub(super) fn roster(&mut self, now: Instant, core: &mut RelayCore, publish: &mut Publish<'_>) {
        let total: RosterDigest = core.local_digest();
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        let mut cuts = vec![0usize];
        for (id, name) in core.local_roster() {
            if bytes.len() - cuts[cuts.len() - 1] >= wire::ROSTER_PART_BYTES {
                cuts.push(bytes.len());
            }
            wire::put_entry(&mut bytes, id, name);
        }
        cuts.push(bytes.len());
        let parts = (cuts.len() - 1).min(usize::from(wire::MAX_ROSTER_PARTS)) as u16;
        let snapshot = self.seq + 1;
        debug!(
            "federation: publishing our roster ({} members, {parts} parts)",
            total.members
        );
        for part in 0..parts {
            let (a, b) = (cuts[usize::from(part)], cuts[usize::from(part) + 1]);
            let msg = Msg::Roster {
                snapshot,
                part,
                parts,
                total,
                entries: wire::roster_entries(&bytes[a..b]),
            };
            if !self.send(now, core, publish, &msg) {
                // A refused part breaks the snapshot's numbering; peers will ask again.
                break;
            }
        }
        self.scratch = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::testkit::Net;
    use crate::nats::NatsError;

    fn outbound(now: Instant) -> Outbound {
        let clock = Clock {
            start: now,
            unix_at_start: 1_700_000_000,
        };
        let key = FernetKey::from_bytes(&[7; 32]);
        let rng = Rng::from_seed([3; 32]);
        Outbound::new(9, 42, key, "mcrelay.c.9".into(), rng, clock)
    }

    /// Opens and parses what was published.
    fn open(token: &[u8]) -> (u64, Header, Vec<u8>) {
        let key = FernetKey::from_bytes(&[7; 32]);
        let mut plain = Vec::new();
        let ts = fernet::decrypt_raw_into(&key, token, &mut plain).expect("opens");
        let (h, _) = wire::parse(&plain).expect("parses");
        (ts, h, plain)
    }

    #[test]
    fn each_publish_is_sealed_with_the_next_sequence_number_and_the_clock() {
        let mut net = Net::new(Config::default());
        let now = net.now;
        let mut out = outbound(now);
        let mut sent: Vec<(String, Vec<u8>)> = Vec::new();
        let mut publish = |s: &str, p: &[u8]| -> Result<(), NatsError> {
            sent.push((s.to_string(), p.to_vec()));
            Ok(())
        };
        let later = now + Duration::from_secs(5);
        assert!(out.send(now, &mut net.core, &mut publish, &Msg::Bye));
        assert!(out.send(later, &mut net.core, &mut publish, &Msg::Sync { target: 3 }));
        assert_eq!(out.seq(), 2);
        assert_eq!(sent.len(), 2);
        for (i, (subject, token)) in sent.iter().enumerate() {
            assert_eq!(subject, "mcrelay.c.9");
            let (ts, h, _) = open(token);
            assert_eq!((h.origin, h.incarnation, h.seq), (9, 42, i as u64 + 1));
            assert_eq!(ts, 1_700_000_000 + 5 * i as u64);
        }
        assert_eq!(net.core.stats().federation_published, 2);
    }

    #[test]
    fn a_refused_publish_is_counted_and_does_not_use_up_a_sequence_number() {
        let mut net = Net::new(Config::default());
        let now = net.now;
        let mut out = outbound(now);
        let mut refuse = |_: &str, _: &[u8]| -> Result<(), NatsError> {
            Err(NatsError::QueueFull { frame: 1, max: 0 })
        };
        assert!(!out.send(now, &mut net.core, &mut refuse, &Msg::Bye));
        assert_eq!(out.seq(), 0);
        assert_eq!(net.core.stats().federation_publish_dropped, 1);
        let mut sent = Vec::new();
        let mut publish = |_: &str, p: &[u8]| -> Result<(), NatsError> {
            sent.push(p.to_vec());
            Ok(())
        };
        assert!(out.send(now, &mut net.core, &mut publish, &Msg::Bye));
        assert_eq!(open(&sent[0]).1.seq, 1, "no gap for peers to count");
    }

    #[test]
    fn a_heartbeat_lists_at_most_255_peers_and_what_was_received_of_each() {
        let mut net = Net::new(Config::default());
        let now = net.now;
        let mut out = outbound(now);
        let mut sent = Vec::new();
        let mut publish = |_: &str, p: &[u8]| -> Result<(), NatsError> {
            sent.push(p.to_vec());
            Ok(())
        };
        let peers = (1..=300u32).map(|i| ((i % 256) as u8, u64::from(i) * 10));
        let hb = Duration::from_millis(1500);
        out.heartbeat(now, hb, peers, &mut net.core, &mut publish);
        let (_, _, plain) = open(&sent[0]);
        let Ok((
            _,
            Msg::Heartbeat {
                interval_ms,
                received,
                ..
            },
        )) = wire::parse(&plain)
        else {
            panic!("not a heartbeat");
        };
        assert_eq!(interval_ms, 1500);
        assert_eq!(received.get(7), Some(70));
        assert_eq!(received.get(255), Some(2550));
        assert_eq!(received.iter().count(), 255);
    }
}
