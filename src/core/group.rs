//! Group mode (protocol.md §12): each message is sealed once, under the current epoch's group
//! key, and sent once to the distribution group; the network (on loopback: the kernel) does
//! the fan-out. Keys are delivered in each member's own channel, acknowledged and retried.
//!
//! Lifecycle of an epoch (docs/architecture.md has the picture):
//! * **fresh** — after a member that held a key left (leave, timeout, kick, replaced), or an
//!   operator's `rekey`: a random key, a new epoch, delivered to every remaining version-3
//!   member before anything is sealed under it. Many leaves before the next message or timer
//!   tick make one epoch. Until a member acknowledges, it gets its copies by the unicast path,
//!   so nothing is lost while the key travels.
//! * **ratchet** — on a join (unless `rekey_on_join` is off), and every `rotate_messages`
//!   tokens or `rotate_age`: `K(e+1) = HMAC(K(e), label ‖ e+1)`. Members that hold any epoch
//!   since the last fresh one derive it themselves; only a newcomer gets a message.
//!
//! Version 1 and 2 members never hold the group key: they get every message as a
//! per-recipient copy, exactly as in unicast mode, and their leaving needs no new key.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info};

use super::distribution::{Cx, Strategy, seal_to};
use crate::config::GroupConfig;
use crate::crypto::rng::Rng;
use crate::proto::group::EpochKey;
use crate::wire::{self, Body, Dist};

/// Longest wait between two deliveries of a key to a member that does not acknowledge.
const MAX_RESEND: Duration = Duration::from_secs(2);
/// A member's key pulls are answered at most this often.
const PULL_INTERVAL: Duration = Duration::from_millis(250);

/// What the group strategy knows of one member (by session slot).
#[derive(Debug, Clone, Copy)]
struct Member {
    id: u32,
    /// Speaks version 3: can hold the group key.
    capable: bool,
    /// Holds a key from which the current one derives (an epoch since the last fresh one).
    current: bool,
    /// Next delivery of the current key while `!current`; next pull answered otherwise.
    next_send: Instant,
    /// Deliveries of the current key so far (for the back-off).
    sends: u32,
    /// When its last key pull was answered.
    pulled: Option<Instant>,
}

/// The group distribution strategy.
#[derive(Debug)]
pub(crate) struct Group {
    cfg: GroupConfig,
    to: SocketAddr,
    key: EpochKey,
    /// The last fresh epoch: a member holding any epoch from it on can ratchet to `key`.
    base: u32,
    /// Sequence number of the last group token sent.
    gseq: u64,
    members: Vec<Option<Member>>,
    /// Capable members that hold the current key (read the group).
    readers: usize,
    /// Capable members that do not hold the current key: exactly those `poll_timeout` and
    /// `handle_timeout` look for, so both skip their scan when it is 0. Kept by every change
    /// of a member's `capable`/`current` (joined, left, key_ack, key_pull, fresh).
    pending: usize,
    /// Version 1 and 2 members (always served by the unicast path).
    legacy: usize,
    /// A member that held a key left: a fresh key is due before the next message.
    fresh_due: bool,
    epoch_started: Instant,
    tokens_in_epoch: u64,
    /// When the last fresh rekey began, until every member acknowledged it.
    rekey_started: Option<Instant>,
    /// The sender's name while its message is distributed (the sessions are borrowed
    /// mutably meanwhile): reused, so that a named sender costs no allocation per message.
    name: Vec<u8>,
}

impl Group {
    pub(crate) fn new(cfg: GroupConfig, rng: &mut Rng, now: Instant) -> Self {
        let mut raw = [0u8; 32];
        rng.fill(&mut raw);
        let key = EpochKey::new(1, &raw);
        zeroize::Zeroize::zeroize(&mut raw);
        Group {
            to: SocketAddr::V4(cfg.addr),
            cfg,
            key,
            base: 1,
            gseq: 0,
            members: Vec::new(),
            readers: 0,
            pending: 0,
            legacy: 0,
            fresh_due: false,
            epoch_started: now,
            tokens_in_epoch: 0,
            rekey_started: None,
            name: Vec::new(),
        }
    }

    /// Take `m` out of the counters.
    fn uncount(&mut self, m: Member) {
        match (m.capable, m.current) {
            (false, _) => self.legacy = self.legacy.saturating_sub(1),
            (true, false) => self.pending = self.pending.saturating_sub(1),
            (true, true) => self.readers = self.readers.saturating_sub(1),
        }
    }

    fn member(&mut self, slot: usize) -> Option<&mut Member> {
        self.members.get_mut(slot).and_then(Option::as_mut)
    }

    /// Deliver the current key to the member in `slot` (its channel) and schedule the retry.
    fn send_key(&mut self, cx: &mut Cx<'_>, slot: usize) {
        let (epoch, raw) = (self.key.epoch, *self.key.raw());
        let Some(m) = self.members.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let back_off = self.cfg.key_resend * 2u32.saturating_pow(m.sends.min(8));
        m.next_send = cx.now + back_off.min(MAX_RESEND);
        m.sends += 1;
        let Some(s) = cx.sessions.get_mut(slot) else {
            return;
        };
        cx.plain.clear();
        wire::write_inner(cx.plain, 0, &Body::GroupKey { epoch, key: &raw });
        let stats = &mut cx.tel.stats;
        cx.out.seal(s, cx.plain, cx.rng, cx.unix, false, stats);
        stats.key_deliveries += 1;
    }

    /// Start a fresh epoch: a random key every remaining member must be given.
    fn fresh(&mut self, cx: &mut Cx<'_>) {
        let mut raw = [0u8; 32];
        cx.rng.fill(&mut raw);
        self.key = EpochKey::new(self.key.epoch.wrapping_add(1), &raw);
        zeroize::Zeroize::zeroize(&mut raw);
        self.base = self.key.epoch;
        self.fresh_due = false;
        self.started_epoch(cx);
        self.pending += self.readers;
        self.readers = 0;
        for slot in 0..self.members.len() {
            if let Some(m) = self.member(slot).filter(|m| m.capable) {
                m.current = false;
                m.sends = 0;
                self.send_key(cx, slot);
            }
        }
        self.rekey_started = (self.pending > 0).then_some(cx.now);
        info!(
            "group: fresh key, epoch {} ({} members to tell)",
            self.key.epoch, self.pending
        );
    }

    /// Start a ratchet epoch: members holding the current key derive the next one.
    fn ratchet(&mut self, cx: &mut Cx<'_>) {
        self.key = self.key.ratcheted();
        self.started_epoch(cx);
        debug!("group: ratchet to epoch {}", self.key.epoch);
    }

    fn started_epoch(&mut self, cx: &mut Cx<'_>) {
        self.epoch_started = cx.now;
        self.tokens_in_epoch = 0;
        cx.tel.stats.rekeys += 1;
    }

    /// Before sealing anything new: a fresh key if one is due, a ratchet if the epoch is old
    /// or used up.
    fn ready_key(&mut self, cx: &mut Cx<'_>) {
        if self.fresh_due {
            self.fresh(cx);
        } else if self.tokens_in_epoch >= self.cfg.rotate_messages
            || cx.now >= self.epoch_started + self.cfg.rotate_age
        {
            self.ratchet(cx);
        }
    }

    /// Send the group item whose body (the TLVs after SEQ) is in `cx.plain` once to the
    /// group, if anyone reads it there; returns its group sequence number.
    fn send_on_group(&mut self, cx: &mut Cx<'_>) -> u64 {
        let first = self.gseq;
        let mut next = first;
        let item = if self.readers > 0 {
            let g = cx.out.seal_group(
                self.to,
                &self.key,
                cx.plain,
                || {
                    next += 1;
                    next
                },
                (cx.rng, cx.unix),
                &mut cx.tel.stats,
            );
            g.unwrap_or(next)
        } else {
            next + 1
        };
        self.gseq = item.max(next);
        self.tokens_in_epoch += self.gseq - first;
        item
    }

    /// The unicast copies of a group item: `old` (no GSEQ) for version 1 and 2 members,
    /// `with GSEQ` for version-3 members that do not hold the current key. `body` is the item.
    fn send_to_the_rest(
        &mut self,
        cx: &mut Cx<'_>,
        except: Option<usize>,
        item: u64,
        body: &Body<'_>,
    ) -> u64 {
        let members = &self.members;
        let wants = |slot: usize, v3: bool| {
            Some(slot) != except
                && match members.get(slot).copied().flatten() {
                    Some(m) => m.capable == v3 && !(m.capable && m.current),
                    None => !v3, // not known to us yet: the old way
                }
        };
        let mut n = 0;
        if self.legacy > 0 {
            cx.plain.clear();
            wire::write_inner(cx.plain, 0, body);
            n += seal_to(cx, |slot, s| s.channel.version() < 3 && wants(slot, false));
        }
        if self.pending > 0 {
            // GSEQ numbers group items, so that a member reading both paths keeps one copy.
            let gseq = (!matches!(body, Body::Shutdown)).then_some(item);
            cx.plain.clear();
            wire::write_sealed(cx.plain, 0, gseq, body);
            n += seal_to(cx, |slot, s| s.channel.version() >= 3 && wants(slot, true));
        }
        n
    }

    /// One group item to everyone but `except`: once on the group, and per member to those
    /// that cannot read it there. Returns the members reached.
    fn distribute(&mut self, cx: &mut Cx<'_>, except: Option<usize>, body: &Body<'_>) -> u64 {
        cx.plain.clear();
        wire::write_body(cx.plain, None, body);
        let readers = self.readers as u64;
        let reached_on_group = match except.and_then(|s| self.members.get(s).copied().flatten()) {
            Some(m) if m.capable && m.current => readers.saturating_sub(1),
            _ => readers,
        };
        let item = self.send_on_group(cx);
        reached_on_group + self.send_to_the_rest(cx, except, item, body)
    }
}

impl Strategy for Group {
    fn mode(&self) -> &'static str {
        "group"
    }

    fn dist(&self) -> Dist {
        Dist::Group {
            addr: self.cfg.addr,
            grace_ms: self.cfg.grace.as_millis().min(u128::from(u32::MAX)) as u32,
        }
    }

    fn relay(&mut self, cx: &mut Cx<'_>, from: usize, data: &[u8]) -> u64 {
        self.ready_key(cx);
        let Some(sender) = cx.sessions.get(from) else {
            return 0;
        };
        let mut name = std::mem::take(&mut self.name);
        name.clear();
        if let Some(n) = &sender.name {
            name.extend_from_slice(n.as_bytes());
        }
        let body = Body::Message {
            sender: sender.id,
            name: sender.name.is_some().then_some(name.as_slice()),
            data,
        };
        let n = self.distribute(cx, Some(from), &body);
        self.name = name;
        n
    }

    fn relay_remote(
        &mut self,
        cx: &mut Cx<'_>,
        sender: u32,
        name: Option<&[u8]>,
        data: &[u8],
    ) -> u64 {
        self.ready_key(cx);
        let body = Body::Message { sender, name, data };
        self.distribute(cx, None, &body)
    }

    fn announce(&mut self, cx: &mut Cx<'_>, except: Option<usize>, body: &Body<'_>) {
        // A LEAVE may go out under the epoch the leaver held: it tells it nothing it does not
        // know, and a burst of leaves then makes one fresh epoch, not one each.
        if !matches!(body, Body::Leave { .. }) {
            self.ready_key(cx);
        }
        self.distribute(cx, except, body);
    }

    fn joined(&mut self, cx: &mut Cx<'_>, slot: usize, again: bool) {
        let Some(s) = cx.sessions.get(slot) else {
            return;
        };
        let (id, capable) = (s.id, s.channel.version() >= 3);
        if self.members.len() <= slot {
            self.members.resize(slot + 1, None);
        }
        if again && self.members[slot].is_some_and(|m| m.id == id && m.capable == capable) {
            // Its WELCOME was lost; so may its key have been.
            if capable && self.member(slot).is_some_and(|m| !m.current) {
                self.send_key(cx, slot);
            }
            return;
        }
        if let Some(old) = self.members[slot].take() {
            self.uncount(old);
        }
        self.members[slot] = Some(Member {
            id,
            capable,
            current: false,
            next_send: cx.now,
            sends: 0,
            pulled: None,
        });
        if !capable {
            self.legacy += 1;
            return;
        }
        self.pending += 1;
        if self.fresh_due {
            self.fresh(cx); // the newcomer is told with everyone else
            return;
        }
        if self.cfg.rekey_on_join && self.readers > 0 {
            self.ratchet(cx);
        }
        self.send_key(cx, slot);
    }

    fn left(&mut self, _cx: &mut Cx<'_>, slot: usize, id: u32) {
        let Some(m) = self
            .members
            .get(slot)
            .copied()
            .flatten()
            .filter(|m| m.id == id)
        else {
            return;
        };
        self.members[slot] = None;
        self.uncount(m);
        // Whoever may have received a key must not read what follows.
        if m.capable {
            self.fresh_due = true;
        }
    }

    fn key_ack(&mut self, cx: &mut Cx<'_>, slot: usize, epoch: u32) {
        let (base, cur) = (self.base, self.key.epoch);
        let Some(m) = self.member(slot).filter(|m| m.capable) else {
            return;
        };
        if m.current || epoch < base || epoch > cur {
            return; // an old key's ack, or a duplicate
        }
        m.current = true;
        m.sends = 0;
        m.next_send = cx.now;
        self.pending = self.pending.saturating_sub(1);
        self.readers += 1;
        if self.pending == 0
            && let Some(t) = self.rekey_started.take()
        {
            info!(
                "group: every member holds epoch {} ({} ms after the rekey)",
                cur,
                cx.now.saturating_duration_since(t).as_millis()
            );
        }
    }

    fn key_pull(&mut self, cx: &mut Cx<'_>, slot: usize, _epoch: u32) {
        let Some(m) = self.member(slot).filter(|m| m.capable) else {
            return;
        };
        if m.pulled.is_some_and(|t| cx.now < t + PULL_INTERVAL) {
            return; // answered recently
        }
        m.pulled = Some(cx.now);
        if m.current {
            // It holds a key of ours but lost track: give it the current one again.
            m.current = false;
            m.sends = 0;
            self.pending += 1;
            self.readers = self.readers.saturating_sub(1);
        }
        cx.tel.stats.key_pulls += 1;
        self.send_key(cx, slot);
    }

    fn rekey(&mut self, cx: &mut Cx<'_>) -> bool {
        self.fresh(cx);
        true
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.fresh_due {
            return Some(self.epoch_started); // in the past: due now
        }
        let rotate = self.epoch_started + self.cfg.rotate_age;
        if self.pending == 0 {
            // The steady state: no member waits for a key, so there is no retry to find. The
            // driver asks once per loop turn; the scan below costs O(members).
            return Some(rotate);
        }
        let retry = self
            .members
            .iter()
            .flatten()
            .filter(|m| m.capable && !m.current)
            .map(|m| m.next_send)
            .min();
        Some(retry.map_or(rotate, |r| r.min(rotate)))
    }

    fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        if self.fresh_due {
            self.fresh(cx);
        } else if cx.now >= self.epoch_started + self.cfg.rotate_age {
            self.ratchet(cx);
        }
        if self.pending == 0 {
            return;
        }
        for slot in 0..self.members.len() {
            let due = self
                .members
                .get(slot)
                .copied()
                .flatten()
                .is_some_and(|m| m.capable && !m.current && m.next_send <= cx.now);
            if due {
                self.send_key(cx, slot);
            }
        }
    }

    fn epoch(&self) -> u32 {
        self.key.epoch
    }

    fn pending_acks(&self) -> usize {
        self.pending
    }
}

#[cfg(test)]
mod tests;
