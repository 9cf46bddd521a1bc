//! Group mode in virtual time, without sockets (protocol.md §12): a relay core and version-3
//! members; datagrams the relay sends to the distribution group are handed to every member
//! that "joined" it, as the network would. Joins, leaves, kicks, lost key deliveries, key
//! pulls, the grace period, many leaves in one tick, and version-1 members beside them.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcrelay::client::{ClientSession, Event};
use mcrelay::core::RelayCore;
use mcrelay::{Config, Distribution, GroupConfig, KickTarget, Rng, ServerKey};

const RELAY: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 254), 9));
const INGEST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 9, 9), 6000);

fn key() -> ServerKey {
    ServerKey::from_pkcs8_pem(include_str!("../fuzz/relay_key.pem")).unwrap()
}

struct Member {
    addr: SocketAddr,
    s: ClientSession,
    events: Vec<Event>,
    /// Receives the distribution group.
    on_group: bool,
    /// Is still in the session table (a kicked or timed-out member keeps listening).
    alive: bool,
    /// Drop every datagram sent to its own address (not the group's) while set.
    deaf: bool,
    /// Hold what it sends (no acks reach the relay) while set.
    mute: bool,
    held: Vec<Vec<u8>>,
}

struct Sim {
    core: RelayCore,
    now: Instant,
    group: SocketAddr,
    m: Vec<Member>,
    /// Every group datagram the relay sent, in order.
    group_log: Vec<Vec<u8>>,
}

fn group_cfg(rekey_on_join: bool) -> Config {
    let mut g = GroupConfig::for_ingest(INGEST);
    g.rekey_on_join = rekey_on_join;
    Config {
        distribution: Distribution::Group(g),
        handshakes_per_source_per_sec: 1000,
        handshakes_per_sec: 1000,
        client_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(1),
        ..Config::default()
    }
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let Distribution::Group(g) = &cfg.distribution else {
            panic!("group mode");
        };
        let group = SocketAddr::V4(g.addr);
        let core = RelayCore::new(cfg, key(), Rng::from_seed([1; 32]), now, unix).unwrap();
        Sim {
            core,
            now,
            group,
            m: Vec::new(),
            group_log: Vec::new(),
        }
    }

    fn add(&mut self, max_version: u16) -> usize {
        let i = self.m.len();
        let addr = SocketAddr::from(([127, 0, 0, 1], 30000 + i as u16));
        let mut s = ClientSession::new(Rng::from_seed([i as u8 + 7; 32]), None, None, self.now);
        s.set_max_version(max_version, self.now);
        self.m.push(Member {
            addr,
            s,
            events: Vec::new(),
            on_group: false,
            alive: true,
            deaf: false,
            mute: false,
            held: Vec::new(),
        });
        self.pump();
        assert!(self.m[i].s.id().is_some(), "member {i} registered");
        i
    }

    /// Move every datagram until nothing moves.
    fn pump(&mut self) {
        for _ in 0..64 {
            let mut moved = false;
            for i in 0..self.m.len() {
                while let Some(d) = self.m[i].s.poll_transmit() {
                    moved = true;
                    if self.m[i].mute {
                        self.m[i].held.push(d);
                    } else {
                        let from = self.m[i].addr;
                        self.core.handle_datagram(self.now, from, &d);
                    }
                }
            }
            self.core.process_registrations(self.now, usize::MAX);
            let out: Vec<(SocketAddr, Vec<u8>)> = self
                .core
                .transmits()
                .map(|(a, d)| (a, d.to_vec()))
                .collect();
            let n = out.len();
            self.core.advance_transmits(n, 0);
            for (to, d) in out {
                moved = true;
                if to == self.group {
                    self.group_log.push(d.clone());
                    for m in self.m.iter_mut().filter(|m| m.on_group) {
                        m.s.handle_datagram(self.now, RELAY, &d);
                    }
                } else if let Some(m) = self.m.iter_mut().find(|m| m.addr == to && !m.deaf) {
                    m.s.handle_datagram(self.now, RELAY, &d);
                }
            }
            for m in &mut self.m {
                m.on_group = m.s.group_addr().is_some() || m.on_group;
                while let Some(e) = m.s.poll_event() {
                    m.events.push(e);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the simulation does not settle");
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(50)).min(end);
            self.core.handle_timeout(self.now);
            for m in self.m.iter_mut().filter(|m| m.alive) {
                m.s.handle_timeout(self.now);
            }
            self.pump();
        }
    }

    fn say(&mut self, i: usize, text: &str) {
        self.m[i].s.send(self.now, text.as_bytes()).unwrap();
        self.pump();
    }

    fn messages(&mut self, i: usize) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        self.m[i].events.retain(|e| match e {
            Event::Message { sender, data, .. } => {
                out.push((*sender, String::from_utf8_lossy(data).into_owned()));
                false
            }
            _ => true,
        });
        out
    }

    fn id(&self, i: usize) -> u32 {
        self.m[i].s.id().unwrap()
    }
}

#[test]
fn five_members_get_every_message_once_from_one_datagram_each() {
    let mut sim = Sim::new(group_cfg(true));
    for _ in 0..5 {
        sim.add(3);
    }
    sim.advance(Duration::from_millis(100)); // keys acknowledged
    assert_eq!(sim.core.pending_acks(), 0);
    let before = sim.core.stats().group_datagrams;
    let sent_before = sim.core.stats().datagrams_out;
    for i in 0..5 {
        sim.messages(i);
    }
    for i in 0..5 {
        sim.say(i, &format!("hello from {i}"));
    }
    let s = sim.core.stats();
    assert_eq!(s.group_datagrams - before, 5, "one datagram per message");
    assert_eq!(s.datagrams_out - sent_before, 5, "and nothing else");
    for i in 0..5 {
        let got: HashSet<_> = sim.messages(i).into_iter().collect();
        let want: HashSet<_> = (0..5)
            .filter(|&j| j != i)
            .map(|j| (sim.id(j), format!("hello from {j}")))
            .collect();
        assert_eq!(got, want, "member {i}");
    }
}

#[test]
fn a_kicked_member_receives_the_datagrams_but_cannot_read_them() {
    let mut sim = Sim::new(group_cfg(true));
    for _ in 0..5 {
        sim.add(3);
    }
    sim.advance(Duration::from_millis(100));
    let epoch = sim.core.epoch();
    let victim = 4;
    let vid = sim.id(victim);
    // The victim never hears that it was kicked (as a member bent on listening in would
    // ignore it): it keeps its keys and the group.
    sim.m[victim].deaf = true;
    assert_eq!(sim.core.kick(sim.now, KickTarget::Id(vid)), Some(vid));
    sim.m[victim].alive = false;
    sim.pump();
    sim.advance(Duration::from_millis(100));
    assert_eq!(sim.core.epoch(), epoch + 1, "a fresh epoch after the kick");
    sim.messages(victim);
    let no_key = sim.m[victim].s.stats().group_no_key;
    let seen = sim.group_log.len();
    for i in 0..4 {
        sim.say(i, &format!("secret {i}"));
    }
    // It got every group datagram sent after the kick ...
    assert_eq!(sim.group_log.len() - seen, 4);
    // ... and could open none of them.
    assert!(sim.m[victim].s.stats().group_no_key >= no_key + 4);
    assert!(sim.messages(victim).is_empty());
    for i in 0..4 {
        assert_eq!(sim.messages(i).len(), 3, "member {i}");
    }
}

#[test]
fn messages_sent_during_a_rekey_reach_every_remaining_member() {
    let mut sim = Sim::new(group_cfg(true));
    for _ in 0..6 {
        sim.add(3);
    }
    sim.advance(Duration::from_millis(100));
    for i in 0..6 {
        sim.messages(i);
    }
    // Member 5 leaves; its key acknowledgements are held, so the new key is "in flight"
    // for everyone while 0..5 chat.
    let id5 = sim.id(5);
    sim.core.kick(sim.now, KickTarget::Id(id5));
    sim.m[5].alive = false;
    for i in 0..5 {
        sim.m[i].mute = true;
    }
    sim.core.handle_timeout(sim.now); // the fresh key goes out
    sim.pump();
    for i in 0..5 {
        // Their messages go out from now on, but the ACKs of the new key stay held.
        sim.m[i].mute = false;
    }
    assert!(
        sim.core.pending_acks() > 0,
        "the new key is not acknowledged yet"
    );
    for i in 0..5 {
        sim.say(i, &format!("during {i}"));
    }
    // Release the held acknowledgements; chat again on the group.
    for i in 0..5 {
        let from = sim.m[i].addr;
        for d in std::mem::take(&mut sim.m[i].held) {
            sim.core.handle_datagram(sim.now, from, &d);
        }
    }
    sim.pump();
    assert_eq!(sim.core.pending_acks(), 0);
    for i in 0..5 {
        sim.say(i, &format!("after {i}"));
    }
    for i in 0..5 {
        let got = sim.messages(i);
        assert_eq!(got.len(), 8, "member {i} got {got:?}");
        let unique: HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), 8, "no duplicates for member {i}");
    }
}

#[test]
fn a_member_that_never_got_the_new_key_recovers_by_a_key_pull() {
    let mut sim = Sim::new(group_cfg(true));
    for _ in 0..4 {
        sim.add(3);
    }
    sim.advance(Duration::from_millis(100));
    for i in 0..4 {
        sim.messages(i);
    }
    // Member 2 leaves (a fresh key); member 3 loses everything sent to it meanwhile,
    // the new key among it.
    let id2 = sim.id(2);
    sim.core.kick(sim.now, KickTarget::Id(id2));
    sim.m[2].alive = false;
    sim.m[3].deaf = true;
    sim.say(0, "first");
    sim.m[3].deaf = false;
    assert_ne!(sim.m[3].s.group_epoch(), Some(sim.core.epoch()));
    // The next message goes out on the group under the new epoch (0 and 1 hold it): member
    // 3 sees an epoch it has no key for and pulls it, before any retry is due.
    let pulls = sim.core.stats().key_pulls;
    sim.say(1, "second");
    assert!(
        sim.core.stats().key_pulls > pulls,
        "a key pull was answered"
    );
    assert_eq!(sim.m[3].s.group_epoch(), Some(sim.core.epoch()));
    // It got the message once (the unicast copy an unacknowledged member gets, and not the
    // group datagram as well).
    assert_eq!(sim.messages(3), vec![(sim.id(1), "second".to_string())]);
    assert_eq!(sim.core.pending_acks(), 0);
    sim.say(0, "third");
    assert_eq!(sim.messages(3), vec![(sim.id(0), "third".to_string())]);
}

#[test]
fn twenty_members_leaving_in_one_tick_make_one_epoch() {
    let mut sim = Sim::new(group_cfg(false));
    for _ in 0..24 {
        sim.add(3);
    }
    sim.advance(Duration::from_millis(100));
    let epoch = sim.core.epoch();
    let rekeys = sim.core.stats().rekeys;
    // Members 4..24 fall silent together and time out in the same timer tick.
    for i in 4..24 {
        sim.m[i].alive = false;
    }
    sim.advance(Duration::from_secs(6));
    assert_eq!(sim.core.client_count(), 4);
    assert_eq!(sim.core.epoch(), epoch + 1, "one new epoch, not twenty");
    assert_eq!(sim.core.stats().rekeys, rekeys + 1);
    for i in 0..4 {
        sim.messages(i);
    }
    sim.say(0, "still here");
    for i in 1..4 {
        assert_eq!(sim.messages(i).len(), 1);
    }
}

#[test]
fn the_previous_epoch_is_readable_for_the_grace_period_only() {
    let mut sim = Sim::new(group_cfg(true));
    for _ in 0..3 {
        sim.add(3);
    }
    sim.advance(Duration::from_millis(100));
    // Two group datagrams of the current epoch that member 2 gets late ("in the network").
    sim.m[2].on_group = false;
    sim.say(0, "late");
    let late = sim.group_log.last().unwrap().clone();
    sim.say(0, "later");
    let later = sim.group_log.last().unwrap().clone();
    sim.m[2].on_group = true;
    for i in 0..3 {
        sim.messages(i);
    }
    // An operator's rekey, acknowledged by everyone.
    assert!(sim.core.rekey(sim.now));
    sim.pump();
    assert_eq!(sim.core.pending_acks(), 0);
    // Within the grace period (2 s) member 2 still reads the old epoch ...
    sim.advance(Duration::from_millis(500));
    sim.m[2].s.handle_datagram(sim.now, RELAY, &late);
    sim.pump();
    assert_eq!(sim.messages(2), vec![(sim.id(0), "late".to_string())]);
    // ... and after it the old key is erased.
    sim.advance(Duration::from_secs(2));
    let bad = sim.m[2].s.stats().bad;
    sim.m[2].s.handle_datagram(sim.now, RELAY, &later);
    sim.pump();
    assert!(sim.messages(2).is_empty());
    assert_eq!(sim.m[2].s.stats().bad, bad + 1);
}

#[test]
fn a_newcomer_cannot_read_what_was_sent_before_it_joined() {
    let mut sim = Sim::new(group_cfg(true));
    for _ in 0..3 {
        sim.add(3);
    }
    sim.advance(Duration::from_millis(100));
    sim.say(0, "before you came");
    let recorded = sim.group_log.last().unwrap().clone();
    let n = sim.add(3);
    sim.advance(Duration::from_millis(100));
    sim.messages(n);
    sim.m[n].s.handle_datagram(sim.now, RELAY, &recorded);
    sim.pump();
    assert!(sim.messages(n).is_empty(), "the ratchet is one-way");
    // Existing members advanced without a key message; everyone reads the next one.
    sim.say(1, "welcome");
    assert_eq!(sim.messages(n), vec![(sim.id(1), "welcome".to_string())]);
    assert_eq!(
        sim.messages(2).last().map(|m| m.1.clone()),
        Some("welcome".into())
    );
}

#[test]
fn version_1_members_get_unicast_copies_beside_the_group() {
    let mut sim = Sim::new(group_cfg(true));
    let a = sim.add(3);
    let b = sim.add(3);
    let old = sim.add(1);
    sim.advance(Duration::from_millis(100));
    for i in [a, b, old] {
        sim.messages(i);
    }
    assert!(sim.m[old].s.group_addr().is_none());
    let g0 = sim.core.stats().group_datagrams;
    let out0 = sim.core.stats().datagrams_out;
    sim.say(a, "to all");
    assert_eq!(sim.core.stats().group_datagrams - g0, 1);
    assert_eq!(
        sim.core.stats().datagrams_out - out0,
        2,
        "one on the group, one copy"
    );
    assert_eq!(sim.messages(b), vec![(sim.id(a), "to all".into())]);
    assert_eq!(sim.messages(old), vec![(sim.id(a), "to all".into())]);
    sim.say(old, "from the past");
    assert_eq!(sim.messages(a), vec![(sim.id(old), "from the past".into())]);
    assert_eq!(sim.messages(b), vec![(sim.id(old), "from the past".into())]);
}

#[test]
fn large_messages_travel_as_sealed_pieces_on_the_group() {
    let mut sim = Sim::new(group_cfg(true));
    for _ in 0..3 {
        sim.add(3);
    }
    sim.advance(Duration::from_millis(100));
    for i in 0..3 {
        sim.messages(i);
    }
    let big: String = (0..60_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let g0 = sim.core.stats().group_datagrams;
    sim.say(0, &big);
    let pieces = sim.core.stats().group_datagrams - g0;
    assert!(pieces > 50, "{pieces} pieces");
    for i in [1, 2] {
        assert_eq!(sim.messages(i), vec![(sim.id(0), big.clone())]);
    }
    // Members get the member list when they join (both modes): the third saw two.
    let present = sim.m[2]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Present { .. }))
        .count();
    assert_eq!(present, 2);
}
