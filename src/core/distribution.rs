//! How a message reaches the other members: the seam between the core and a distribution
//! strategy.
//!
//! The core decides *what* to send (a relayed message, a join or leave notice, shutdown) and
//! *when*; a [`Strategy`] decides *how*. [`Unicast`] seals the message again for every
//! recipient under that recipient's own key and sends it to it alone; `Group`
//! (`core/group.rs`) sends it once to a multicast group under a group key and uses the same
//! per-recipient path ([`seal_to`]) for members that cannot read the group. The core calls the
//! same hooks either way and never asks which mode it is in.

use std::fmt;
use std::time::Instant;

use super::outbox::{Outbox, Sealed};
use super::session::{Session, Sessions};
use super::stats::Telemetry;
use crate::crypto::fernet;
use crate::crypto::rng::Rng;
use crate::wire::{self, Body, Dist};

/// What a strategy may touch while it distributes one thing.
pub(crate) struct Cx<'a> {
    /// The current time.
    pub(crate) now: Instant,
    pub(crate) sessions: &'a mut Sessions,
    pub(crate) out: &'a mut Outbox,
    pub(crate) rng: &'a mut Rng,
    pub(crate) tel: &'a mut Telemetry,
    /// Wall clock (Unix seconds) for token timestamps.
    pub(crate) unix: u64,
    /// Reusable plaintext buffer.
    pub(crate) plain: &'a mut Vec<u8>,
}

/// A distribution strategy. Every method is called with the session table already updated
/// (a joiner is in it, a leaver is gone). The defaults are what a strategy without group
/// state does: nothing.
pub(crate) trait Strategy: fmt::Debug {
    /// The mode's name, as `config` shows it.
    fn mode(&self) -> &'static str;

    /// What a version-3 WELCOME tells the member (DIST).
    fn dist(&self) -> Dist;

    /// Deliver the message `data` of the client in slot `from` to every other member, tagged
    /// with the sender's id and name. Returns how many members it was delivered to.
    fn relay(&mut self, cx: &mut Cx<'_>, from: usize, data: &[u8]) -> u64;

    /// Federation: deliver the message `data` of client `sender` of another relay (no
    /// session here) to every member. Returns how many members it was delivered to.
    fn relay_remote(
        &mut self,
        cx: &mut Cx<'_>,
        sender: u32,
        name: Option<&[u8]>,
        data: &[u8],
    ) -> u64;

    /// Tell every member but `except` about a change: JOIN, LEAVE or SHUTDOWN.
    fn announce(&mut self, cx: &mut Cx<'_>, except: Option<usize>, body: &Body<'_>);

    /// A member joined (slot `slot`), or registered again with its key (`again`: its WELCOME
    /// was lost); called after its WELCOME was queued.
    fn joined(&mut self, _cx: &mut Cx<'_>, _slot: usize, _again: bool) {}

    /// Member `id`, in slot `slot`, left (it is no longer in the table).
    fn left(&mut self, _cx: &mut Cx<'_>, _slot: usize, _id: u32) {}

    /// The member in `slot` acknowledged the group key of `epoch` (KEY_ACK).
    fn key_ack(&mut self, _cx: &mut Cx<'_>, _slot: usize, _epoch: u32) {}

    /// The member in `slot` saw `epoch` and holds no key for it (KEY_PULL).
    fn key_pull(&mut self, _cx: &mut Cx<'_>, _slot: usize, _epoch: u32) {}

    /// An operator asked for a new key now. False if the mode has none.
    fn rekey(&mut self, _cx: &mut Cx<'_>) -> bool {
        false
    }

    /// When [`Strategy::handle_timeout`] has work.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Run what is due (key retries, a rekey after leaves, rotation). Harmless early.
    fn handle_timeout(&mut self, _cx: &mut Cx<'_>) {}

    /// The current epoch (0 without group keys).
    fn epoch(&self) -> u32 {
        0
    }

    /// Members that have not acknowledged the current key yet.
    fn pending_acks(&self) -> usize {
        0
    }

    /// Notices (JOIN, LEAVE) not yet sent to every recipient.
    fn backlog(&self) -> usize {
        0
    }
}

/// Notice copies (JOIN, LEAVE) one turn may seal; the rest wait for the next turn. A turn is
/// one `now`: the driver takes a fresh instant per loop turn (issue 12, finding 6: a burst of
/// joins or leaves in a full relay is O(N) per notice and must not hold the loop).
pub(crate) const NOTICE_SEALS_PER_TURN: usize = 1024;

/// Per-recipient fan-out: one sealed copy per member, each under its own key.
#[derive(Debug, Default)]
pub(crate) struct Unicast {
    /// Notices not yet sealed for every recipient, oldest first: a recipient always sees
    /// them in the order they happened.
    backlog: std::collections::VecDeque<Notice>,
    /// The turn `budget` belongs to.
    turn: Option<Instant>,
    /// Notice copies this turn may still seal.
    budget: usize,
}

/// A JOIN or LEAVE on its way to the members that were there when it happened.
#[derive(Debug)]
struct Notice {
    /// The inner plaintext (the same for every recipient).
    plain: Vec<u8>,
    /// Recipients: sessions admitted before this serial...
    cutoff: u64,
    /// ...but this one (the joiner).
    except: Option<u64>,
    /// The next slot to look at.
    next_slot: usize,
}

impl Unicast {
    /// Seal what the turn's budget allows, oldest notice first.
    fn drain(&mut self, cx: &mut Cx<'_>) {
        if self.turn != Some(cx.now) {
            self.turn = Some(cx.now);
            self.budget = NOTICE_SEALS_PER_TURN;
        }
        while self.budget > 0 {
            let Some(n) = self.backlog.front_mut() else {
                return;
            };
            cx.plain.clear();
            cx.plain.extend_from_slice(&n.plain);
            let (cutoff, except) = (n.cutoff, n.except);
            let mut budget = self.budget;
            let (_, next) = seal_some(cx, n.next_slot, &mut budget, |_, s| {
                s.serial < cutoff && Some(s.serial) != except
            });
            self.budget = budget;
            n.next_slot = next;
            if next >= cx.sessions.capacity() {
                self.backlog.pop_front();
            }
        }
    }
}

impl Strategy for Unicast {
    fn mode(&self) -> &'static str {
        "unicast"
    }

    fn dist(&self) -> Dist {
        Dist::Unicast
    }

    fn relay(&mut self, cx: &mut Cx<'_>, from: usize, data: &[u8]) -> u64 {
        let Some(sender) = cx.sessions.get(from) else {
            return 0;
        };
        cx.plain.clear();
        // Disjoint borrows: no copy of the sender's name per message.
        let body = Body::Message {
            sender: sender.id,
            name: sender.name.as_deref().map(str::as_bytes),
            data,
        };
        wire::write_inner(cx.plain, 0, &body);
        seal_to_all(cx, Some(from))
    }

    fn relay_remote(
        &mut self,
        cx: &mut Cx<'_>,
        sender: u32,
        name: Option<&[u8]>,
        data: &[u8],
    ) -> u64 {
        cx.plain.clear();
        let body = Body::Message { sender, name, data };
        wire::write_inner(cx.plain, 0, &body);
        seal_to_all(cx, None)
    }

    fn announce(&mut self, cx: &mut Cx<'_>, except: Option<usize>, body: &Body<'_>) {
        if matches!(body, Body::Shutdown) {
            // Last words go to everyone now; what was still queued no longer matters.
            self.backlog.clear();
            cx.plain.clear();
            wire::write_inner(cx.plain, 0, body);
            seal_to_all(cx, except);
            return;
        }
        let mut plain = Vec::new();
        wire::write_inner(&mut plain, 0, body);
        self.backlog.push_back(Notice {
            plain,
            cutoff: cx.sessions.next_serial(),
            except: except
                .and_then(|slot| cx.sessions.get(slot))
                .map(|s| s.serial),
            next_slot: 0,
        });
        self.drain(cx);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // Due at once: the next turn continues the backlog.
        self.backlog.front().and(self.turn)
    }

    fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        self.turn = None; // a timeout call is a turn of its own
        self.drain(cx);
    }

    fn backlog(&self) -> usize {
        self.backlog.len()
    }
}

/// Seal `cx.plain` for every session but `except`; returns how many were queued.
pub(crate) fn seal_to_all(cx: &mut Cx<'_>, except: Option<usize>) -> u64 {
    seal_to(cx, |slot, _| Some(slot) != except)
}

/// Seal `cx.plain` for every session `pick` accepts; returns how many were queued. Iterates
/// slab slots (dense below the capacity) so nothing is allocated.
///
/// Binary (version 2 and 3) recipients of a single-datagram token go in batches of four: each
/// token is laid out in the outbox first (header, plaintext, room for the tag), then four are
/// encrypted and signed together ([`fernet::finish_raw_x4`]), the rest one by one.
pub(crate) fn seal_to(cx: &mut Cx<'_>, pick: impl FnMut(usize, &Session) -> bool) -> u64 {
    let mut unlimited = usize::MAX;
    seal_some(cx, 0, &mut unlimited, pick).0
}

/// [`seal_to`] from slot `start` on, for at most `budget` recipients (decremented). Returns
/// how many were queued and the slot to continue from (the capacity when every slot was seen).
fn seal_some(
    cx: &mut Cx<'_>,
    start: usize,
    budget: &mut usize,
    mut pick: impl FnMut(usize, &Session) -> bool,
) -> (u64, usize) {
    let raw_len = fernet::raw_token_len(cx.plain.len());
    let mut batch = [(0usize, 0usize); 4]; // (slot, token offset in the outbox)
    let mut held = 0;
    let mut queued = 0;
    let mut next = cx.sessions.capacity();
    for slot in start..cx.sessions.capacity() {
        if *budget == 0 {
            next = slot;
            break;
        }
        let Some(s) = cx.sessions.get_mut(slot) else {
            continue;
        };
        if !pick(slot, s) {
            continue;
        }
        *budget -= 1;
        match cx
            .out
            .seal(s, cx.plain, cx.rng, cx.unix, true, &mut cx.tel.stats)
        {
            Sealed::Dropped => {}
            Sealed::Done => queued += 1,
            Sealed::Pending(at) => {
                queued += 1;
                batch[held] = (slot, at);
                held += 1;
                if held == 4 {
                    finish_batch(cx.sessions, cx.out, &batch, raw_len);
                    held = 0;
                }
            }
        }
    }
    for &(slot, at) in &batch[..held] {
        if let Some(s) = cx.sessions.get(slot) {
            fernet::finish_raw(s.channel.key(), cx.out.token_mut(at, raw_len));
        }
    }
    (queued, next)
}

/// Encrypt and sign four pending tokens (outbox offsets ascending).
fn finish_batch(
    sessions: &Sessions,
    out: &mut Outbox,
    batch: &[(usize, usize); 4],
    raw_len: usize,
) {
    let [(s0, a0), (s1, a1), (s2, a2), (s3, a3)] = *batch;
    let key = |slot: usize| sessions.get(slot).map(|s| s.channel.key());
    let (Some(k0), Some(k1), Some(k2), Some(k3)) = (key(s0), key(s1), key(s2), key(s3)) else {
        return; // unreachable: the slots were sealed for just now
    };
    let buf = out.tail_mut(a0);
    let (t0, rest) = buf.split_at_mut(a1 - a0);
    let (t1, rest) = rest.split_at_mut(a2 - a1);
    let (t2, t3) = rest.split_at_mut(a3 - a2);
    fernet::finish_raw_x4(
        [k0, k1, k2, k3],
        [
            &mut t0[..raw_len],
            &mut t1[..raw_len],
            &mut t2[..raw_len],
            &mut t3[..raw_len],
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::fernet::FernetKey;
    use crate::proto::channel::Channel;
    use crate::wire::Outer;
    use std::net::SocketAddr;
    use std::time::Instant;

    struct World {
        sessions: Sessions,
        out: Outbox,
        rng: Rng,
        tel: Telemetry,
        plain: Vec<u8>,
        keys: Vec<FernetKey>,
    }

    /// `v1` version-1 members and `v2` version-2 members, each with its own key.
    fn world(v1: usize, v2: usize) -> World {
        let now = Instant::now();
        let mut rng = Rng::from_seed([4; 32]);
        let mut sessions = Sessions::new();
        let mut keys = Vec::new();
        for i in 0..v1 + v2 {
            let mut bytes = [1u8; 32];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let key = FernetKey::from_bytes(&bytes);
            keys.push(key.clone());
            let version = if i < v1 { 1 } else { 2 };
            let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
            sessions.insert(addr, Channel::new(version, key, &mut rng), None, now);
        }
        World {
            sessions,
            out: Outbox::new(1 << 20),
            rng,
            tel: Telemetry::new(now),
            plain: Vec::new(),
            keys,
        }
    }

    impl World {
        fn cx(&mut self) -> Cx<'_> {
            Cx {
                now: Instant::now(),
                sessions: &mut self.sessions,
                out: &mut self.out,
                rng: &mut self.rng,
                tel: &mut self.tel,
                unix: 1_700_000_000,
                plain: &mut self.plain,
            }
        }

        /// Like [`World::opened`], leaving out the datagrams to 127.0.0.2 (added members whose
        /// keys the world does not know).
        fn opened_v2_only(&self) -> Vec<(u16, Vec<u8>)> {
            assert!(
                self.out
                    .transmits()
                    .all(|(to, _)| to.ip() == std::net::Ipv4Addr::LOCALHOST),
                "a notice reached a member admitted after it"
            );
            self.opened()
        }

        /// Every queued datagram opened with its recipient's key: (port, body bytes).
        fn opened(&self) -> Vec<(u16, Vec<u8>)> {
            self.out
                .transmits()
                .map(|(to, d)| {
                    let i = usize::from(to.port() - 1000);
                    let Ok(Outer::Sealed { token }) = Outer::parse(d) else {
                        panic!("not sealed");
                    };
                    let (mut scratch, mut plain) = (Vec::new(), Vec::new());
                    let binary = token.first() == Some(&0x80);
                    fernet::open_into(binary, &self.keys[i], token, &mut scratch, &mut plain)
                        .expect("opens under the recipient's key");
                    match wire::parse_inner(&plain) {
                        Ok((_, Body::Message { data, .. })) => (to.port(), data.to_vec()),
                        Ok((_, b)) => (to.port(), format!("{b:?}").into_bytes()),
                        Err(e) => panic!("bad plaintext: {e}"),
                    }
                })
                .collect()
        }
    }

    #[test]
    fn every_member_but_the_sender_gets_one_copy_under_its_own_key() {
        // 2 version-1 members and 11 version-2 members: two batches of four and three alone.
        let mut w = world(2, 11);
        let n = Unicast::default().relay(&mut w.cx(), 0, b"hi");
        assert_eq!(n, 12);
        let got = w.opened();
        assert_eq!(got.len(), 12);
        assert!(
            got.iter()
                .all(|(port, body)| *port != 1000 && body == b"hi")
        );
        let mut ports: Vec<_> = got.iter().map(|(p, _)| *p).collect();
        ports.dedup();
        assert_eq!(ports.len(), 12);
    }

    #[test]
    fn announcements_reach_everyone_but_the_exception() {
        let mut w = world(1, 3);
        Unicast::default().announce(&mut w.cx(), None, &Body::Shutdown);
        assert_eq!(w.opened().len(), 4);
        let mut w = world(1, 3);
        let join = Body::Join { id: 4, name: None };
        Unicast::default().announce(&mut w.cx(), Some(3), &join);
        let got = w.opened();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(port, _)| *port != 1003));
    }

    #[test]
    fn a_notice_burst_is_spread_over_turns_in_order_and_only_to_members_of_its_time() {
        let n = NOTICE_SEALS_PER_TURN + NOTICE_SEALS_PER_TURN / 2 + 1;
        let mut w = world(0, n);
        let mut u = Unicast::default();
        let t0 = Instant::now();
        let mut cx = w.cx();
        cx.now = t0;
        u.announce(&mut cx, Some(0), &Body::Join { id: 1, name: None });
        u.announce(&mut cx, None, &Body::Leave { id: 2, reason: 0 });
        assert_eq!(
            w.out.transmits().count(),
            NOTICE_SEALS_PER_TURN,
            "one turn's worth"
        );
        assert_eq!(u.backlog(), 2);
        assert_eq!(u.poll_timeout(), Some(t0), "due at once");
        // A member admitted now was told by its MEMBERS list: neither notice is for it.
        let late = SocketAddr::from(([127, 0, 0, 2], 1000));
        let key = FernetKey::from_bytes(&[0xee; 32]);
        let rng = &mut w.rng;
        w.sessions.insert(late, Channel::new(2, key, rng), None, t0);
        let mut turns = 1;
        while u.backlog() > 0 {
            let mut cx = w.cx();
            cx.now = t0;
            u.handle_timeout(&mut cx);
            turns += 1;
            assert!(turns < 10);
        }
        assert_eq!(u.poll_timeout(), None);
        let got = w.opened_v2_only();
        // (n - 1) JOINs (not to the joiner) and n LEAVEs, each member's JOIN before its LEAVE.
        assert_eq!(got.len(), 2 * n - 1);
        assert_eq!(turns, 2 * n / NOTICE_SEALS_PER_TURN + 1);
        let mut seen = std::collections::HashMap::new();
        for (port, body) in &got {
            let v = seen.entry(*port).or_insert_with(Vec::new);
            v.push(String::from_utf8_lossy(body).starts_with("Join"));
        }
        assert_eq!(seen[&1000], vec![false], "the joiner hears only the LEAVE");
        assert!(
            seen.iter()
                .all(|(p, v)| *p == 1000 || *v == vec![true, false])
        );
    }

    #[test]
    fn shutdown_goes_out_at_once_and_drops_the_backlog() {
        let mut w = world(0, NOTICE_SEALS_PER_TURN + 10);
        let mut u = Unicast::default();
        let mut cx = w.cx();
        u.announce(&mut cx, None, &Body::Leave { id: 9, reason: 0 });
        assert_eq!(u.backlog(), 1);
        u.announce(&mut cx, None, &Body::Shutdown);
        assert_eq!(u.backlog(), 0);
        assert_eq!(
            w.out.transmits().count(),
            2 * NOTICE_SEALS_PER_TURN + 10,
            "the budget does not hold back the last words"
        );
    }

    #[test]
    fn a_missing_sender_relays_nothing() {
        let mut w = world(0, 2);
        assert_eq!(Unicast::default().relay(&mut w.cx(), 7, b"x"), 0);
        assert!(!w.out.has_transmits());
        assert_eq!(Unicast::default().mode(), "unicast");
    }
}
