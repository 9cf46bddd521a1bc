//! The group strategy's counters against its member table, and `poll_timeout` against the
//! full scan it skips in the steady state.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::*;
use crate::core::outbox::Outbox;
use crate::core::session::Sessions;
use crate::core::stats::Telemetry;
use crate::crypto::fernet::FernetKey;
use crate::proto::channel::Channel;

struct World {
    group: Group,
    sessions: Sessions,
    out: Outbox,
    rng: Rng,
    tel: Telemetry,
    plain: Vec<u8>,
    now: Instant,
    next_port: u16,
}

impl World {
    fn new() -> World {
        let now = Instant::now();
        let mut rng = Rng::from_seed([9; 32]);
        let cfg = GroupConfig::for_ingest(SocketAddrV4::new(Ipv4Addr::new(239, 255, 1, 1), 5000));
        World {
            group: Group::new(cfg, &mut rng, now),
            sessions: Sessions::new(),
            out: Outbox::new(1 << 22),
            rng,
            tel: Telemetry::new(now),
            plain: Vec::new(),
            now,
            next_port: 1000,
        }
    }

    /// Run `f` on the strategy with a context, then drop what it queued (nobody reads it).
    fn with<T>(&mut self, f: impl FnOnce(&mut Group, &mut Cx<'_>) -> T) -> T {
        let mut cx = Cx {
            now: self.now,
            sessions: &mut self.sessions,
            out: &mut self.out,
            rng: &mut self.rng,
            tel: &mut self.tel,
            unix: 1_700_000_000,
            plain: &mut self.plain,
        };
        let r = f(&mut self.group, &mut cx);
        let n = self.out.transmits().count();
        self.out.advance(n, 0, &mut self.tel.stats);
        r
    }

    /// A new session of protocol `version` in the table, and the strategy told; its slot.
    fn join(&mut self, version: u16) -> usize {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.next_port));
        self.next_port += 1;
        let key = FernetKey::from_bytes(&[self.next_port as u8; 32]);
        let ch = Channel::new(version, key, &mut self.rng);
        let slot = self.sessions.insert(addr, ch, None, self.now);
        self.with(|g, cx| g.joined(cx, slot, false));
        slot
    }

    /// The session in `slot` leaves (out of the table first, as the core does).
    fn leave(&mut self, slot: usize) {
        if let Some(s) = self.sessions.remove(slot) {
            self.with(|g, cx| g.left(cx, slot, s.id));
        }
    }

    fn ack(&mut self, slot: usize, epoch: u32) {
        self.with(|g, cx| g.key_ack(cx, slot, epoch));
    }

    fn slots(&self) -> Vec<usize> {
        self.sessions.iter().map(|(slot, _)| slot).collect()
    }

    /// Every member acknowledges the current epoch.
    fn ack_all(&mut self) {
        let epoch = self.group.key.epoch;
        for slot in self.slots() {
            self.ack(slot, epoch);
        }
    }
}

/// The counters equal a count of the member table, and `poll_timeout` equals the answer of
/// the full scan (what it computed on every call before the early return).
fn check(g: &Group, what: &str) {
    let members = || g.members.iter().flatten();
    let pending = members().filter(|m| m.capable && !m.current).count();
    let readers = members().filter(|m| m.capable && m.current).count();
    let legacy = members().filter(|m| !m.capable).count();
    assert_eq!(
        (g.pending, g.readers, g.legacy),
        (pending, readers, legacy),
        "(pending, readers, legacy) after {what}"
    );
    assert_eq!(g.pending_acks(), pending, "after {what}");
    let rotate = g.epoch_started + g.cfg.rotate_age;
    let scan = if g.fresh_due {
        g.epoch_started
    } else {
        members()
            .filter(|m| m.capable && !m.current)
            .map(|m| m.next_send)
            .min()
            .map_or(rotate, |r| r.min(rotate))
    };
    assert_eq!(g.poll_timeout(), Some(scan), "poll_timeout after {what}");
}

#[test]
fn in_the_steady_state_the_next_timeout_is_the_rotation() {
    let mut w = World::new();
    let slots: Vec<usize> = (0..5).map(|_| w.join(3)).collect();
    w.join(2);
    check(&w.group, "joins");
    assert_eq!(w.group.pending_acks(), 5);
    // Waiting members: the earliest key retry, before the rotation.
    let retry = w.group.poll_timeout().expect("a deadline");
    assert!(retry < w.group.epoch_started + w.group.cfg.rotate_age);
    w.ack_all();
    check(&w.group, "every ack");
    assert_eq!(w.group.pending_acks(), 0);
    assert_eq!(
        w.group.poll_timeout(),
        Some(w.group.epoch_started + w.group.cfg.rotate_age),
        "nothing pending: only the epoch's age is due"
    );
    // A message (a ratchet every rotate_messages) keeps it so.
    w.with(|g, cx| g.relay(cx, slots[0], b"hi"));
    check(&w.group, "a message");
    assert_eq!(w.group.pending_acks(), 0);
    // A pull makes its member pending again, and its retry the next deadline.
    w.now += Duration::from_secs(1);
    let epoch = w.group.key.epoch;
    w.with(|g, cx| g.key_pull(cx, slots[1], epoch));
    check(&w.group, "a pull");
    assert_eq!(w.group.pending_acks(), 1);
    let m = w.group.members[slots[1]].expect("member");
    assert_eq!(w.group.poll_timeout(), Some(m.next_send));
    w.ack(slots[1], epoch);
    check(&w.group, "its ack");
    assert_eq!(w.group.pending_acks(), 0);
    // A leave: a fresh epoch is due at once, then every remaining member is pending.
    w.leave(slots[2]);
    check(&w.group, "a leave");
    assert_eq!(w.group.poll_timeout(), Some(w.group.epoch_started));
    w.with(|g, cx| g.handle_timeout(cx));
    check(&w.group, "the fresh epoch");
    assert_eq!(w.group.pending_acks(), 4);
    w.ack_all();
    check(&w.group, "the acks of the fresh epoch");
    assert_eq!(w.group.pending_acks(), 0);
}

#[test]
fn the_counters_follow_every_change_of_a_member() {
    // A deterministic walk over every hook that changes a member, checked after each step.
    let mut w = World::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut seen = [0u32; 12];
    for step in 0..4000 {
        let slots = w.slots();
        let pick = |r: usize| slots.get(r % slots.len().max(1)).copied();
        let op = rand(12);
        let r = rand(1 << 16);
        seen[op] += 1;
        let epoch = w.group.key.epoch;
        match op {
            0 | 1 if slots.len() < 24 => {
                w.join(3);
            }
            2 if slots.len() < 24 => {
                w.join(if r % 2 == 0 { 1 } else { 2 });
            }
            3 | 4 => {
                if let Some(s) = pick(r) {
                    w.ack(s, epoch);
                }
            }
            5 => {
                // Acks of other epochs: the previous fresh family, older, or not yet sent.
                if let Some(s) = pick(r) {
                    let e = [
                        w.group.base,
                        w.group.base.wrapping_sub(1),
                        epoch.wrapping_add(1),
                    ][r % 3];
                    w.ack(s, e);
                }
            }
            6 => {
                if let Some(s) = pick(r) {
                    w.now += PULL_INTERVAL * (r % 2) as u32;
                    w.with(|g, cx| g.key_pull(cx, s, epoch));
                }
            }
            7 => {
                if let Some(s) = pick(r) {
                    w.leave(s);
                }
            }
            8 => {
                // Registered again: its WELCOME was lost (same session), or its slot was
                // taken by a new session the strategy was not told had left.
                if let Some(s) = pick(r) {
                    if r % 2 == 0 {
                        w.with(|g, cx| g.joined(cx, s, true));
                    } else {
                        w.sessions.remove(s);
                        let slot = w.join(3);
                        assert!(w.group.members[slot].is_some());
                    }
                }
            }
            9 => {
                w.with(|g, cx| g.rekey(cx));
            }
            10 => {
                if let Some(s) = pick(r) {
                    w.with(|g, cx| g.relay(cx, s, b"x"));
                } else {
                    w.with(|g, cx| g.announce(cx, None, &Body::Shutdown));
                }
            }
            _ => {
                w.now += w.group.cfg.key_resend * (r % 8) as u32;
                if r % 64 == 0 {
                    w.now += w.group.cfg.rotate_age;
                }
                w.with(|g, cx| g.handle_timeout(cx));
            }
        }
        check(&w.group, &format!("step {step} (op {op})"));
    }
    assert!(
        seen.iter().all(|&n| n > 100),
        "every operation ran: {seen:?}"
    );
    // And it ends as it should: every member acknowledged means nothing pending.
    w.with(|g, cx| g.handle_timeout(cx));
    w.ack_all();
    check(&w.group, "the last acks");
    assert_eq!(w.group.pending_acks(), 0);
}
