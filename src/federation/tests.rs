//! The federation state machine on a virtual clock: relay cores with sans-IO clients
//! (`core::testkit`), federations, and an in-memory bus standing for NATS (core NATS is
//! at-most-once, in order per publisher: the bus delivers in order and can lose messages).
//! The real thing, with nats-server processes, is tests/federation.rs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::wire::{self, Header, Msg};
use super::*;
use crate::client::{ClientSession, Event};
use crate::config::{Config, Distribution, GroupConfig};
use crate::core::testkit::{Net, addr};
use crate::core::{RosterDigest, member_digest};

const HB: Duration = Duration::from_secs(1);

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn key(n: u8) -> FernetKey {
    FernetKey::from_bytes(&[n; 32])
}

struct Node {
    net: Net,
    fed: Federation,
    /// The NATS link: publishes and deliveries pass only while it is up.
    up: bool,
}

/// Relays on one virtual clock, linked by an in-memory bus.
struct World {
    nodes: Vec<Node>,
    now: Instant,
    /// (publisher, payload) not yet delivered.
    bus: Vec<(usize, Vec<u8>)>,
    /// Every payload published, by publisher (for replays).
    log: Vec<(usize, Vec<u8>)>,
    /// Drop the next n publishes of this node (lost on the way).
    lose: Option<(usize, usize)>,
}

impl World {
    fn new() -> World {
        World {
            nodes: Vec::new(),
            now: Instant::now(),
            bus: Vec::new(),
            log: Vec::new(),
            lose: None,
        }
    }

    fn add_with(&mut self, id: u8, cluster_key: FernetKey, mut cfg: Config) -> usize {
        cfg.relay_id = Some(id);
        let mut net = Net::new(cfg);
        net.now = self.now;
        let fc = FederationConfig {
            heartbeat: HB,
            ..FederationConfig::new(
                id,
                "test",
                cluster_key,
                vec!["127.0.0.1:4222".parse().unwrap()],
            )
        };
        let rng = Rng::from_seed([id; 32]);
        let mut fed = Federation::new(&fc, rng, self.now, unix_micros()).expect("config");
        fed.link_up(self.now, "127.0.0.1:4222".parse().unwrap());
        self.nodes.push(Node { net, fed, up: true });
        self.nodes.len() - 1
    }

    fn add(&mut self, id: u8) -> usize {
        self.add_with(id, key(7), Config::default())
    }

    fn client(&mut self, node: usize, port: u16) -> (ClientSession, u32) {
        self.nodes[node].net.now = self.now;
        self.nodes[node].net.client(port)
    }

    /// A publish of node `i`: logged, then on the bus unless it is to be lost.
    fn emit(&mut self, i: usize, p: Vec<u8>) {
        self.log.push((i, p.clone()));
        match &mut self.lose {
            Some((who, left)) if *who == i && *left > 0 => *left -= 1,
            _ => self.bus.push((i, p)),
        }
    }

    /// Let every relay publish, deliver, repeat until nothing moves.
    fn settle(&mut self) {
        for _ in 0..20 {
            let now = self.now;
            let mut out = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                n.net.now = now;
                let up = n.up;
                n.fed.flush(now, &mut n.net.core, &mut |_, p| {
                    if up {
                        out.push((i, p.to_vec()));
                    }
                    Ok(())
                });
            }
            for (i, p) in out {
                self.emit(i, p);
            }
            if self.bus.is_empty() {
                return;
            }
            for (from, p) in std::mem::take(&mut self.bus) {
                for (j, n) in self.nodes.iter_mut().enumerate() {
                    if j != from && n.up {
                        n.fed.handle_message(now, &p, &mut n.net.core);
                    }
                }
            }
        }
        panic!("the bus does not settle");
    }

    /// Advance the clock in steps of at most 100 ms, running every timer.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(100)).min(end);
            let now = self.now;
            let mut out = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                n.net.now = now;
                n.net.core.handle_timeout(now);
                let up = n.up;
                n.fed.handle_timeout(now, &mut n.net.core, &mut |_, p| {
                    if up {
                        out.push((i, p.to_vec()));
                    }
                    Ok(())
                });
            }
            for (i, p) in out {
                self.emit(i, p);
            }
            self.settle();
        }
    }

    fn events(&mut self, node: usize, port: u16, c: &mut ClientSession) -> Vec<Event> {
        self.nodes[node].net.now = self.now;
        self.nodes[node].net.core.handle_timeout(self.now); // drain notice backlogs
        self.nodes[node].net.deliver(addr(port), c);
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn stats(&self, node: usize) -> &crate::core::Stats {
        self.nodes[node].net.core.stats()
    }
}

fn messages(ev: &[Event]) -> Vec<(u32, Vec<u8>)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Message { sender, data, .. } => Some((*sender, data.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_message_reaches_the_clients_of_the_other_relays_once_with_a_cluster_unique_id() {
    let mut w = World::new();
    let (a, b, c) = (w.add(1), w.add(2), w.add(3));
    let (mut a1, ida) = w.client(a, 5001);
    let (mut b1, idb) = w.client(b, 5002);
    let (mut c1, idc) = w.client(c, 5003);
    w.settle();
    assert_eq!(
        (ida >> 24, idb >> 24, idc >> 24),
        (1, 2, 3),
        "relay id in the high byte"
    );
    // Everyone heard of everyone.
    let ev = w.events(a, 5001, &mut a1);
    for id in [idb, idc] {
        assert!(ev.contains(&Event::Join { id, name: None }), "{ev:?}");
    }
    a1.send(w.now, b"hello").unwrap();
    w.nodes[a].net.send(addr(5001), &mut a1);
    w.settle();
    let got_b = messages(&w.events(b, 5002, &mut b1));
    let got_c = messages(&w.events(c, 5003, &mut c1));
    assert_eq!(got_b, vec![(ida, b"hello".to_vec())]);
    assert_eq!(got_c, vec![(ida, b"hello".to_vec())]);
    assert!(
        messages(&w.events(a, 5001, &mut a1)).is_empty(),
        "not back to the sender"
    );
    assert_eq!(w.stats(a).federation_data_out, 1);
    assert_eq!(w.stats(b).remote_messages_in, 1);
    assert_eq!(w.stats(b).remote_deliveries, 1);

    // A replayed payload (an attacker with NATS access, or a duplicate) is dropped, and a
    // relay's own message coming back is too.
    let data_payload = w
        .log
        .iter()
        .rfind(|(from, _)| *from == a)
        .map(|(_, p)| p.clone())
        .unwrap();
    let now = w.now;
    let n = &mut w.nodes[b];
    n.fed.handle_message(now, &data_payload, &mut n.net.core);
    let n = &mut w.nodes[a];
    n.fed.handle_message(now, &data_payload, &mut n.net.core);
    assert!(messages(&w.events(b, 5002, &mut b1)).is_empty());
    assert_eq!(w.stats(b).federation_duplicates, 1);
    assert_eq!(w.stats(a).federation_own, 1);
    // Nobody re-published a remote message: each relay published only its own.
    for (i, _) in &w.log {
        assert!(*i < 3);
    }
    let data_out: u64 = (0..3).map(|i| w.stats(i).federation_data_out).sum();
    assert_eq!(data_out, 1);
}

#[test]
fn a_version_3_newcomer_lists_the_clients_of_other_relays_and_leaves_are_announced() {
    let mut w = World::new();
    let (a, b) = (w.add(1), w.add(2));
    let (_a1, ida) = w.client(a, 5001);
    w.settle();
    let (mut b1, _) = w.client(b, 5002);
    let ev = w.events(b, 5002, &mut b1);
    assert!(
        ev.contains(&Event::Present {
            id: ida,
            name: None
        }),
        "MEMBERS lists the remote client: {ev:?}"
    );
    assert_eq!(w.nodes[b].net.core.remote_clients().len(), 1);
    w.nodes[a]
        .net
        .core
        .kick(w.now, crate::core::KickTarget::Id(ida));
    w.settle();
    let ev = w.events(b, 5002, &mut b1);
    assert!(ev.contains(&Event::Leave { id: ida, reason: 3 }), "{ev:?}");
    assert_eq!(w.nodes[b].net.core.remote_clients().len(), 0);
    assert_eq!(w.stats(b).remote_leaves, 1);
}

#[test]
fn a_silent_relay_is_lost_after_three_heartbeats_and_comes_back_with_its_roster() {
    let mut w = World::new();
    let (a, b) = (w.add(1), w.add(2));
    let (mut a1, _) = w.client(a, 5001);
    let (_b1, idb) = w.client(b, 5002);
    w.settle();
    w.advance(Duration::from_millis(1500));
    w.events(a, 5001, &mut a1);
    let peers = w.nodes[a].fed.peers(&w.nodes[a].net.core);
    assert_eq!(peers.len(), 1);
    assert_eq!(
        (peers[0].id, peers[0].state, peers[0].members),
        (2, PeerState::Up, 1)
    );
    // b's link breaks: nothing of it arrives.
    w.nodes[b].up = false;
    let t0 = w.now;
    w.nodes[b].fed.link_down(t0);
    let mut lost_at = None;
    while w.now < t0 + 5 * HB {
        w.advance(Duration::from_millis(100));
        let ev = w.events(a, 5001, &mut a1);
        if ev.contains(&Event::Leave { id: idb, reason: 6 }) {
            lost_at = Some(w.now);
            break;
        }
    }
    let lost_at = lost_at.expect("b's client announced as left, reason 6");
    let after = lost_at - t0;
    assert!(
        after > 2 * HB && after <= 3 * HB + Duration::from_millis(100),
        "{after:?}"
    );
    let peers = w.nodes[a].fed.peers(&w.nodes[a].net.core);
    assert_eq!(peers[0].state, PeerState::Lost);
    assert_eq!(w.stats(a).federation_peers_lost, 1);
    // b, cut off from NATS for three intervals since its link broke, stops queueing and
    // asks for a discard once.
    assert!(!w.nodes[b].fed.is_cut_off());
    w.advance(3 * HB - (w.now - t0) + Duration::from_millis(100));
    assert!(w.nodes[b].fed.is_cut_off());
    assert!(w.nodes[b].fed.take_discard());
    assert!(!w.nodes[b].fed.take_discard());
    // Back: its roster is requested and applied, the client announced again.
    w.nodes[b].up = true;
    let now = w.now;
    w.nodes[b]
        .fed
        .link_up(now, "127.0.0.1:4223".parse().unwrap());
    w.advance(Duration::from_millis(200));
    let ev = w.events(a, 5001, &mut a1);
    assert!(
        ev.contains(&Event::Join {
            id: idb,
            name: None
        }),
        "{ev:?}"
    );
    let peers = w.nodes[a].fed.peers(&w.nodes[a].net.core);
    assert_eq!((peers[0].state, peers[0].members), (PeerState::Up, 1));
}

#[test]
fn lost_messages_are_counted_as_gaps_and_the_roster_is_resynchronised() {
    let mut w = World::new();
    let (a, b) = (w.add(1), w.add(2));
    let (mut a1, _) = w.client(a, 5001);
    w.settle();
    w.advance(Duration::from_millis(1100)); // heartbeats: both up
    // b's next two publishes (the JOIN of its new client, then a message) are lost.
    w.lose = Some((b, 2));
    let (mut b1, idb) = w.client(b, 5002);
    b1.send(w.now, b"lost").unwrap();
    w.nodes[b].net.send(addr(5002), &mut b1);
    w.settle();
    assert!(!w.nodes[a].net.core.has_remote(idb));
    // The next heartbeat shows the gap (and the digest differs): a roster request, a roster.
    w.advance(Duration::from_millis(1100));
    assert_eq!(w.stats(a).federation_gaps, 2);
    assert!(w.stats(a).federation_roster_requests >= 1);
    assert!(w.stats(a).federation_resyncs >= 1);
    assert!(w.nodes[a].net.core.has_remote(idb));
    let ev = w.events(a, 5001, &mut a1);
    assert!(
        ev.contains(&Event::Join {
            id: idb,
            name: None
        }),
        "{ev:?}"
    );
    assert!(
        messages(&ev).is_empty(),
        "a lost message stays lost (NATS core is at-most-once)"
    );
    assert_eq!(
        w.nodes[a].net.core.remote_digest(2),
        w.nodes[b].net.core.local_digest()
    );
}

#[test]
fn a_restarted_relay_is_a_new_incarnation_whose_old_clients_left() {
    let mut w = World::new();
    let (a, b) = (w.add(1), w.add(2));
    let (mut a1, _) = w.client(a, 5001);
    let (_b1, idb) = w.client(b, 5002);
    w.settle();
    w.events(a, 5001, &mut a1);
    // Relay 2 restarts: a new core (no clients) and a new federation, later incarnation.
    w.nodes.remove(b);
    let b = w.add(2);
    let (_b2, idb2) = w.client(b, 5003);
    w.settle();
    let ev = w.events(a, 5001, &mut a1);
    assert!(ev.contains(&Event::Leave { id: idb, reason: 6 }), "{ev:?}");
    assert!(
        ev.contains(&Event::Join {
            id: idb2,
            name: None
        }),
        "{ev:?}"
    );
    assert_eq!(idb, idb2, "the new incarnation starts its ids again");
    assert_eq!(w.stats(a).federation_peers_lost, 1);
    // The old incarnation's messages are refused from now on.
    let old = w.log.iter().find(|(i, _)| *i == 1).map(|(_, p)| p.clone());
    let now = w.now;
    let n = &mut w.nodes[a];
    let stale = n.net.core.stats().federation_stale;
    if let Some(p) = old {
        n.fed.handle_message(now, &p, &mut n.net.core);
        assert_eq!(n.net.core.stats().federation_stale, stale + 1);
    }
}

#[test]
fn a_wrong_cluster_key_is_counted_and_ignored() {
    let mut w = World::new();
    let a = w.add(1);
    let c = w.add_with(3, key(8), Config::default());
    let (mut a1, _) = w.client(a, 5001);
    let (mut c1, _) = w.client(c, 5003);
    c1.send(w.now, b"from the wrong cluster").unwrap();
    w.nodes[c].net.send(addr(5003), &mut c1);
    w.advance(Duration::from_millis(1500));
    assert!(w.stats(a).federation_bad_seal >= 2, "{:?}", w.stats(a));
    assert!(w.stats(c).federation_bad_seal >= 2);
    assert_eq!(w.stats(a).federation_received, 0);
    assert!(w.nodes[a].fed.peers(&w.nodes[a].net.core).is_empty());
    assert!(messages(&w.events(a, 5001, &mut a1)).is_empty());
    assert_eq!(w.nodes[a].net.core.remote_client_count(), 0);
}

#[test]
fn bye_announces_the_clients_as_left_at_once() {
    let mut w = World::new();
    let (a, b) = (w.add(1), w.add(2));
    let (mut a1, _) = w.client(a, 5001);
    let (_b1, idb) = w.client(b, 5002);
    w.settle();
    w.events(a, 5001, &mut a1);
    let now = w.now;
    let n = &mut w.nodes[b];
    n.net.core.shutdown(now);
    let mut out = Vec::new();
    n.fed.shutdown(now, &mut n.net.core, &mut |_, p| {
        out.push(p.to_vec());
        Ok(())
    });
    for p in out {
        let n = &mut w.nodes[a];
        n.fed.handle_message(now, &p, &mut n.net.core);
    }
    let ev = w.events(a, 5001, &mut a1);
    assert!(ev.contains(&Event::Leave { id: idb, reason: 5 }), "{ev:?}");
    let peers = w.nodes[a].fed.peers(&w.nodes[a].net.core);
    assert_eq!(peers[0].state, PeerState::Gone);
}

#[test]
fn group_mode_relays_remote_messages_once_on_the_group() {
    let mut w = World::new();
    let a = w.add(1);
    let ingest = "239.255.9.9:7000".parse().unwrap();
    let cfg = Config {
        distribution: Distribution::Group(GroupConfig::for_ingest(ingest)),
        ..Config::default()
    };
    let b = w.add_with(2, key(7), cfg);
    let (mut a1, ida) = w.client(a, 5001);
    let (mut b1, _) = w.client(b, 5002);
    let (mut b2, _) = w.client(b, 5003);
    w.settle();
    // Let b's members install the group key (their KEY_ACKs go back to the relay).
    for _ in 0..3 {
        for (port, c) in [(5002, &mut b1), (5003, &mut b2)] {
            w.events(b, port, c);
            w.nodes[b].net.send(addr(port), c);
        }
    }
    w.events(a, 5001, &mut a1);
    let before = w.stats(b).group_datagrams;
    a1.send(w.now, b"to the group").unwrap();
    w.nodes[a].net.send(addr(5001), &mut a1);
    w.settle();
    assert_eq!(
        w.stats(b).group_datagrams,
        before + 1,
        "one datagram for both members"
    );
    assert_eq!(w.stats(b).remote_deliveries, 2);
    let _ = ida;
}

#[test]
fn a_roster_in_many_parts_is_applied_whole_and_a_broken_one_is_not() {
    let mut w = World::new();
    let a = w.add(1);
    let (mut a1, _) = w.client(a, 5001);
    // Relay 9 is played by hand: 8000 clients, so its roster takes several parts.
    let ids: Vec<u32> = (1..=8000).map(|n| 0x0900_0000 | n).collect();
    let mut total = RosterDigest::default();
    let mut bytes = Vec::new();
    let mut cuts = vec![0];
    for id in &ids {
        total.members += 1;
        total.digest ^= member_digest(*id, None);
        if bytes.len() - cuts[cuts.len() - 1] >= wire::ROSTER_PART_BYTES {
            cuts.push(bytes.len());
        }
        wire::put_entry(&mut bytes, *id, None);
    }
    cuts.push(bytes.len());
    let parts = (cuts.len() - 1) as u16;
    assert!(parts >= 3);
    let incarnation = unix_micros();
    let mut rng = Rng::from_seed([9; 32]);
    let seal = |seq: u64, msg: &Msg<'_>, rng: &mut Rng| {
        let mut plain = Vec::new();
        let h = Header {
            origin: 9,
            incarnation,
            seq,
        };
        wire::write(&mut plain, &h, msg);
        let mut tok = Vec::new();
        let unix = unix_micros() / 1_000_000;
        fernet::encrypt_raw_into(&key(7), &rng.iv(), unix, &plain, &mut tok);
        tok
    };
    let feed = |w: &mut World, p: Vec<u8>| {
        let now = w.now;
        let n = &mut w.nodes[a];
        n.fed.handle_message(now, &p, &mut n.net.core);
    };
    // Parts 0 and 2 without 1 (seq 2 missing): a gap, nothing applied.
    let part = |k: u16, snapshot: u64| Msg::Roster {
        snapshot,
        part: k,
        parts,
        total,
        entries: wire::roster_entries(&bytes[cuts[usize::from(k)]..cuts[usize::from(k) + 1]]),
    };
    let p0 = seal(1, &part(0, 1), &mut rng);
    let p2 = seal(3, &part(2, 1), &mut rng);
    feed(&mut w, p0);
    feed(&mut w, p2);
    assert_eq!(w.nodes[a].net.core.remote_client_count(), 0);
    assert_eq!(w.stats(a).federation_gaps, 1);
    // A whole snapshot from seq 10 on.
    for k in 0..parts {
        let p = seal(10 + u64::from(k), &part(k, 10), &mut rng);
        feed(&mut w, p);
    }
    assert_eq!(w.nodes[a].net.core.remote_client_count(), 8000);
    assert_eq!(w.nodes[a].net.core.remote_digest(9), total);
    let peers = w.nodes[a].fed.peers(&w.nodes[a].net.core);
    assert_eq!((peers[0].id, peers[0].state), (9, PeerState::Up));
    // Every join reaches a1, spread over turns by the notice budget.
    let mut joins = 0;
    for _ in 0..10 {
        w.now += Duration::from_millis(1);
        joins += w
            .events(a, 5001, &mut a1)
            .iter()
            .filter(|e| matches!(e, Event::Join { .. }))
            .count();
    }
    assert_eq!(joins, 8000);
}

#[test]
fn peers_heard_in_any_order_are_listed_counted_and_watched_in_id_order() {
    // Peers are walked through the list of known ids, not the 256 slots: whatever order
    // they appear in, `peers` lists them by id, `status` counts them, heartbeats report
    // them and a silent one is lost while the others stay up.
    let mut w = World::new();
    let me = w.add(1);
    let others: Vec<usize> = [200, 3, 77, 9].iter().map(|&id| w.add(id)).collect();
    let (mut c1, _) = w.client(me, 5001);
    let (mut c3, _) = w.client(others[1], 5003);
    w.settle();
    w.advance(Duration::from_millis(1500));
    let ids = |w: &World| -> Vec<(u8, PeerState)> {
        let n = &w.nodes[me];
        n.fed
            .peers(&n.net.core)
            .iter()
            .map(|p| (p.id, p.state))
            .collect()
    };
    assert_eq!(
        ids(&w),
        [3, 9, 77, 200].map(|id| (id, PeerState::Up)).to_vec()
    );
    let st = w.nodes[me].fed.status(0);
    assert_eq!((st.peers_up, st.peers_known), (4, 4));
    // Relay 1's heartbeats report the DATA it received from each peer.
    c3.send(w.now, b"hi").unwrap();
    w.nodes[others[1]].net.send(addr(5003), &mut c3);
    w.settle();
    assert_eq!(messages(&w.events(me, 5001, &mut c1)).len(), 1);
    w.advance(HB + Duration::from_millis(100));
    let n = &w.nodes[others[1]];
    let view = n.fed.peers(&n.net.core);
    let of_me = view.iter().find(|p| p.id == 1).expect("relay 1 known to 3");
    assert_eq!(of_me.msgs_out, 1, "relay 1's heartbeat lists relay 3");
    // Relay 77 falls silent: lost within three heartbeats, the others stay up.
    w.nodes[others[2]].up = false;
    w.advance(3 * HB + Duration::from_millis(200));
    assert_eq!(
        ids(&w),
        vec![
            (3, PeerState::Up),
            (9, PeerState::Up),
            (77, PeerState::Lost),
            (200, PeerState::Up)
        ]
    );
    let st = w.nodes[me].fed.status(0);
    assert_eq!((st.peers_up, st.peers_known), (3, 4));
    assert_eq!(w.stats(me).federation_peers_lost, 1);
}
