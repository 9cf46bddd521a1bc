//! Sessions: who is registered, by slot, address and id, and when each was last heard from.
//!
//! [`Sessions`] owns the slab and the address index and keeps them consistent; nothing else
//! may insert or remove. Slots are dense below [`Sessions::capacity`], so fan-out iterates
//! them without allocating.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;

use super::ratelimit::{SourceKey, source_key};
use super::stats::DropReason;
use crate::crypto::fernet::{self, FernetError};
use crate::proto::channel::Channel;
use crate::wire::{self, Body, Sealed};

/// One registered client.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: u32,
    /// Order of admission, never reused (ids may wrap; this does not).
    pub(crate) serial: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) channel: Channel,
    pub(crate) name: Option<String>,
    pub(crate) since: Instant,
    pub(crate) last_seen: Instant,
    pub(crate) msgs_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) msgs_out: u64,
    pub(crate) bytes_out: u64,
}

/// What the control port and the host see of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Client id (unique during one run of the relay).
    pub id: u32,
    /// Its source address.
    pub addr: SocketAddr,
    /// Its admission name, with `--clients-file`.
    pub name: Option<String>,
    /// When it registered.
    pub since: Instant,
    /// When it was last heard from.
    pub last_seen: Instant,
    /// Messages received from it.
    pub msgs_in: u64,
    /// Bytes of those messages on the wire.
    pub bytes_in: u64,
    /// Tokens sent to it.
    pub msgs_out: u64,
    /// Bytes of those tokens on the wire.
    pub bytes_out: u64,
}

/// What a client's token must satisfy besides its key: the Fernet timestamp against the relay's
/// clock (`unix`), at most `ttl` seconds old and `skew` seconds ahead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenRules {
    pub(crate) unix: u64,
    pub(crate) ttl: Option<u64>,
    pub(crate) skew: u64,
}

impl Session {
    /// Open and check one token from this client: its key, its timestamp (`rules`), the inner
    /// format, what a client may send in its version, and the replay window. Only a token that
    /// passes every check moves the window and counts as hearing from the client at `now`.
    /// The plaintext lands in `plain` (cleared first); the body borrows it.
    ///
    /// # Errors
    /// Why the token was dropped; nothing about the session changed.
    pub(crate) fn accept<'p>(
        &mut self,
        now: Instant,
        token: &[u8],
        rules: TokenRules,
        scratch: &mut Vec<u8>,
        plain: &'p mut Vec<u8>,
    ) -> Result<Sealed<'p>, DropReason> {
        plain.clear();
        let ts = self
            .channel
            .open(token, scratch, plain)
            .map_err(|_| DropReason::BadToken)?;
        fernet::check_timestamp(ts, rules.unix, rules.ttl, rules.skew).map_err(|e| match e {
            FernetError::FromFuture => DropReason::TokenFromFuture,
            _ => DropReason::TokenExpired,
        })?;
        let sealed = wire::parse_sealed(plain).map_err(|e| DropReason::from_wire(&e))?;
        if sealed.gseq.is_some() || !sealed.body.in_version(self.channel.version()) {
            // Clients never number group items; version 1 and 2 know no version-3 TLV.
            return Err(DropReason::UnknownType);
        }
        let allowed = matches!(
            sealed.body,
            Body::Data(_)
                | Body::Keepalive
                | Body::Disconnect
                | Body::Frag { .. }
                | Body::KeyAck { .. }
                | Body::KeyPull { .. }
        );
        if !allowed {
            return Err(DropReason::UnexpectedType);
        }
        // Authenticated: only now may the window move and liveness refresh.
        if !self.channel.accept(sealed.seq) {
            return Err(DropReason::Replay);
        }
        self.last_seen = now;
        Ok(sealed)
    }

    pub(crate) fn info(&self) -> ClientInfo {
        ClientInfo {
            id: self.id,
            addr: self.addr,
            name: self.name.clone(),
            since: self.since,
            last_seen: self.last_seen,
            msgs_in: self.msgs_in,
            bytes_in: self.bytes_in,
            msgs_out: self.msgs_out,
            bytes_out: self.bytes_out,
        }
    }
}

/// Result of a liveness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// The slot is empty or holds another session now: nothing to do.
    Gone,
    /// Silent for the whole timeout.
    Expired,
    /// Heard from recently: check again at this instant.
    AliveUntil(Instant),
}

/// The session table.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    slab: Slab<Session>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Sessions per source (IPv4 address, IPv6 /64).
    per_source: HashMap<SourceKey, usize>,
    next_id: u32,
    next_serial: u64,
    /// Federation: the relay id in the high byte of every id (0: a single relay, whole u32).
    prefix: u32,
    /// The id counter wrapped once: from then on an id still in use is skipped.
    wrapped: bool,
}

/// Bits of a federated relay's client ids that count; the relay id is above them.
pub(crate) const LOCAL_ID_BITS: u32 = 24;
const LOCAL_ID_MASK: u32 = (1 << LOCAL_ID_BITS) - 1;

impl Sessions {
    pub(crate) fn new() -> Self {
        Sessions {
            slab: Slab::new(),
            by_addr: HashMap::new(),
            per_source: HashMap::new(),
            next_id: 1,
            next_serial: 0,
            prefix: 0,
            wrapped: false,
        }
    }

    /// The table of a relay with `relay_id` (federation): ids are `relay_id << 24 | n`, `n`
    /// from 1 to 2^24 - 1, then wrapping (0 skipped, ids in use skipped).
    pub(crate) fn with_relay_id(relay_id: Option<u8>) -> Self {
        let mut s = Self::new();
        s.prefix = relay_id.map_or(0, |r| u32::from(r) << LOCAL_ID_BITS);
        s
    }

    /// The next id to give out: never 0, never one in use.
    fn allocate_id(&mut self) -> u32 {
        // At most len() + 1 candidates are in use or skipped before a free one.
        for _ in 0..=self.slab.len() {
            let n = self.next_id;
            let next = if self.prefix == 0 {
                n.wrapping_add(1).max(1)
            } else {
                (n.wrapping_add(1) & LOCAL_ID_MASK).max(1)
            };
            self.wrapped |= next <= n;
            self.next_id = next;
            let id = self.prefix | n;
            if !self.wrapped || !self.slab.iter().any(|(_, s)| s.id == id) {
                return id;
            }
        }
        self.prefix | self.next_id // unreachable: the table holds fewer than 2^24 - 1 ids
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    /// Every occupied slot is below this.
    /// The serial the next admitted session will get: every current session's is below it.
    pub(crate) fn next_serial(&self) -> u64 {
        self.next_serial
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    pub(crate) fn get(&self, slot: usize) -> Option<&Session> {
        self.slab.get(slot)
    }

    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<&mut Session> {
        self.slab.get_mut(slot)
    }

    /// Sessions from the source `addr` belongs to.
    pub(crate) fn count_from(&self, addr: &SocketAddr) -> usize {
        self.per_source
            .get(&source_key(addr.ip()))
            .copied()
            .unwrap_or(0)
    }

    /// Why a new session from `addr` may not be added now, if it may not: at `per_source`
    /// sessions from its source (checked first) or at `max` in all.
    pub(crate) fn refusal(
        &self,
        addr: &SocketAddr,
        max: usize,
        per_source: usize,
    ) -> Option<(DropReason, &'static str)> {
        if self.count_from(addr) >= per_source {
            Some((
                DropReason::SourceFull,
                "too many sessions from this address",
            ))
        } else if self.len() >= max {
            Some((DropReason::RelayFull, "relay full"))
        } else {
            None
        }
    }

    pub(crate) fn slot_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.by_addr.get(addr).copied()
    }

    /// The slot of client `id` (a scan: operator actions only).
    pub(crate) fn slot_of_id(&self, id: u32) -> Option<usize> {
        self.slab.iter().find(|(_, s)| s.id == id).map(|(k, _)| k)
    }

    /// The slot of the session admitted under `name` (a scan: registrations only).
    pub(crate) fn slot_of_name(&self, name: &str) -> Option<usize> {
        self.slab
            .iter()
            .find(|(_, s)| s.name.as_deref() == Some(name))
            .map(|(k, _)| k)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Session)> + '_ {
        self.slab.iter()
    }

    /// Register a new session at `addr` (which must have none); returns its slot. Ids start
    /// at 1, grow by one and are never reused while the relay runs (0 is skipped on wrap).
    pub(crate) fn insert(
        &mut self,
        addr: SocketAddr,
        channel: Channel,
        name: Option<String>,
        now: Instant,
    ) -> usize {
        debug_assert!(!self.by_addr.contains_key(&addr));
        let id = self.allocate_id();
        let serial = self.next_serial;
        self.next_serial += 1;
        let slot = self.slab.insert(Session {
            id,
            serial,
            addr,
            channel,
            name,
            since: now,
            last_seen: now,
            msgs_in: 0,
            bytes_in: 0,
            msgs_out: 0,
            bytes_out: 0,
        });
        self.by_addr.insert(addr, slot);
        *self.per_source.entry(source_key(addr.ip())).or_default() += 1;
        slot
    }

    /// Remove the session in `slot`, if any.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<Session> {
        let s = self.slab.try_remove(slot)?;
        self.by_addr.remove(&s.addr);
        let key = source_key(s.addr.ip());
        if let Some(n) = self.per_source.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&key);
            }
        }
        Some(s)
    }

    /// Forget every session (shutdown), returning their ids.
    pub(crate) fn clear(&mut self) -> Vec<u32> {
        let ids = self.slab.iter().map(|(_, s)| s.id).collect();
        self.slab.clear();
        self.by_addr.clear();
        self.per_source.clear();
        ids
    }

    /// Is the session in `slot` (if it is still `id`) past its `timeout`?
    pub(crate) fn liveness(
        &self,
        slot: usize,
        id: u32,
        now: Instant,
        timeout: Duration,
    ) -> Liveness {
        match self.slab.get(slot).filter(|s| s.id == id) {
            None => Liveness::Gone,
            Some(s) if s.last_seen + timeout <= now => Liveness::Expired,
            Some(s) => Liveness::AliveUntil(s.last_seen + timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::fernet::FernetKey;
    use crate::crypto::rng::Rng;

    fn channel() -> Channel {
        Channel::new(
            2,
            FernetKey::from_bytes(&[1; 32]),
            &mut Rng::from_seed([2; 32]),
        )
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A token the client of [`channel`] would send: `SEQ, body`, stamped `unix`.
    fn token(seq: u64, body: &Body<'_>, unix: u64) -> Vec<u8> {
        let mut plain = Vec::new();
        wire::write_inner(&mut plain, seq, body);
        let mut out = Vec::new();
        channel().seal_into(&[9; 16], unix, &plain, &mut out);
        out
    }

    #[test]
    fn a_token_is_accepted_once_and_only_when_every_check_passes() {
        let t0 = Instant::now();
        let mut sessions = Sessions::new();
        let slot = sessions.insert(addr(1), channel(), None, t0);
        let s = sessions.get_mut(slot).expect("inserted");
        let rules = TokenRules {
            unix: 1_000_000,
            ttl: Some(60),
            skew: 10,
        };
        let (mut scratch, mut plain) = (Vec::new(), Vec::new());
        let mut accept = |s: &mut Session, at: Instant, tok: &[u8]| {
            s.accept(at, tok, rules, &mut scratch, &mut plain)
                .map(|sealed| (sealed.seq, format!("{:?}", sealed.body)))
        };
        let t1 = t0 + Duration::from_secs(1);
        let good = token(1, &Body::Data(b"hi"), 1_000_000);
        assert_eq!(
            accept(s, t1, &good),
            Ok((1, format!("{:?}", Body::Data(b"hi"))))
        );
        assert_eq!(s.last_seen, t1, "heard from");
        let t2 = t0 + Duration::from_secs(2);
        let refused = [
            (good.clone(), DropReason::Replay),
            (b"not a token".to_vec(), DropReason::BadToken),
            (
                token(2, &Body::Keepalive, 1_000_000 - 61),
                DropReason::TokenExpired,
            ),
            (
                token(3, &Body::Keepalive, 1_000_000 + 11),
                DropReason::TokenFromFuture,
            ),
            (
                token(4, &Body::KeepaliveAck, 1_000_000),
                DropReason::UnexpectedType,
            ),
            // A version-2 session knows no version-3 TLV.
            (
                token(5, &Body::KeyPull { epoch: 1 }, 1_000_000),
                DropReason::UnknownType,
            ),
        ];
        for (tok, why) in refused {
            assert_eq!(accept(s, t2, &tok), Err(why));
        }
        assert_eq!(
            s.last_seen, t1,
            "nothing refused counts as hearing from the client"
        );
        // The refused seqs 2..=5 did not move the window: they are still fresh.
        let later = token(2, &Body::Keepalive, 1_000_000);
        assert_eq!(accept(s, t2, &later).map(|x| x.0), Ok(2));
    }

    #[test]
    fn slots_addresses_and_ids_stay_consistent() {
        let now = Instant::now();
        let mut s = Sessions::new();
        let a = s.insert(addr(1), channel(), None, now);
        let b = s.insert(addr(2), channel(), Some("bob".into()), now);
        assert_eq!(s.len(), 2);
        assert_eq!(s.slot_of(&addr(2)), Some(b));
        assert_eq!(s.get(a).map(|x| x.id), Some(1));
        assert_eq!(s.slot_of_id(2), Some(b));
        let gone = s.remove(a).map(|x| x.id);
        assert_eq!(gone, Some(1));
        assert_eq!(s.slot_of(&addr(1)), None);
        assert!(s.remove(a).is_none(), "removing twice is harmless");
        // The slot is reused, the id is not.
        let c = s.insert(addr(3), channel(), None, now);
        assert_eq!(c, a);
        assert_eq!(s.get(c).map(|x| x.id), Some(3));
        assert_eq!(s.count_from(&addr(7)), 2, "both on 127.0.0.1");
        assert_eq!(s.refusal(&addr(7), 3, 3), None);
        assert_eq!(
            s.refusal(&addr(7), 3, 2).map(|r| r.0),
            Some(DropReason::SourceFull)
        );
        assert_eq!(
            s.refusal(&addr(7), 2, 3).map(|r| r.0),
            Some(DropReason::RelayFull)
        );
        assert_eq!(s.clear(), vec![3, 2]);
        assert_eq!(s.len(), 0);
        assert_eq!(s.count_from(&addr(7)), 0);
        assert_eq!(s.slot_of(&addr(2)), None);
    }

    #[test]
    fn ids_skip_zero_on_wrap() {
        let now = Instant::now();
        let mut s = Sessions::new();
        s.next_id = u32::MAX;
        let a = s.insert(addr(1), channel(), None, now);
        let b = s.insert(addr(2), channel(), None, now);
        assert_eq!(s.get(a).map(|x| x.id), Some(u32::MAX));
        assert_eq!(s.get(b).map(|x| x.id), Some(1));
    }

    #[test]
    fn a_federated_relay_puts_its_id_in_the_high_byte_and_skips_ids_in_use_after_a_wrap() {
        let now = Instant::now();
        let mut s = Sessions::with_relay_id(Some(7));
        let a = s.insert(addr(1), channel(), None, now);
        assert_eq!(s.get(a).map(|x| x.id), Some(0x0700_0001));
        s.next_id = LOCAL_ID_MASK;
        let b = s.insert(addr(2), channel(), None, now);
        assert_eq!(s.get(b).map(|x| x.id), Some(0x07ff_ffff));
        // Wrapped: 1 is still in use (slot a), so the next is 2.
        let c = s.insert(addr(3), channel(), None, now);
        assert_eq!(s.get(c).map(|x| x.id), Some(0x0700_0002));
        s.remove(a);
        s.next_id = 1;
        let d = s.insert(addr(4), channel(), None, now);
        assert_eq!(s.get(d).map(|x| x.id), Some(0x0700_0001), "free again");
        let e = s.insert(addr(5), channel(), None, now);
        assert_eq!(s.get(e).map(|x| x.id), Some(0x0700_0003), "2 is in use");
    }

    #[test]
    fn liveness_follows_last_seen_and_ignores_stale_slots() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        let mut s = Sessions::new();
        let a = s.insert(addr(1), channel(), None, t0);
        assert_eq!(
            s.liveness(a, 1, t0 + Duration::from_secs(10), timeout),
            Liveness::AliveUntil(t0 + timeout)
        );
        if let Some(x) = s.get_mut(a) {
            x.last_seen = t0 + Duration::from_secs(20);
        }
        assert_eq!(
            s.liveness(a, 1, t0 + timeout, timeout),
            Liveness::AliveUntil(t0 + Duration::from_secs(50))
        );
        assert_eq!(
            s.liveness(a, 1, t0 + Duration::from_secs(50), timeout),
            Liveness::Expired
        );
        assert_eq!(s.liveness(a, 99, t0, timeout), Liveness::Gone);
        s.remove(a);
        assert_eq!(s.liveness(a, 1, t0, timeout), Liveness::Gone);
    }
}
