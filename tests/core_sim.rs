//! The relay core driven without sockets: simulated clients (the real `ClientSession`) and a
//! virtual clock, so a 30 s timeout takes microseconds, and seeded random simulations check
//! invariants over thousands of steps.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcrelay::client::{ClientSession, Event};
use mcrelay::crypto::rng::Rng;
use mcrelay::{Config, DropReason, RelayCore};

/// Where relay datagrams "come from" in this sans-IO harness (clients lock onto it).
const RELAY: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 254),
    9,
));

struct SimClient {
    addr: SocketAddr,
    session: ClientSession,
    events: Vec<Event>,
    /// Datagrams this client sent (for replay attacks).
    sent: Vec<Vec<u8>>,
}

struct Sim {
    core: RelayCore,
    now: Instant,
    clients: Vec<SimClient>,
    rng: Rng,
    next_port: u16,
    /// Where relay datagrams come from: [`RELAY`], until a restart moves it.
    relay_from: SocketAddr,
    /// Clients whose datagrams are lost on the way (asleep, or a broken uplink).
    muted: HashSet<usize>,
}

impl Sim {
    fn new(cfg: Config, seed: u8) -> Sim {
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let core = RelayCore::new(
            cfg,
            common::server_key(),
            Rng::from_seed([seed; 32]),
            now,
            unix,
        )
        .expect("valid config");
        Sim {
            core,
            now,
            clients: Vec::new(),
            rng: Rng::from_seed([seed ^ 0x55; 32]),
            next_port: 40000,
            relay_from: RELAY,
            muted: HashSet::new(),
        }
    }

    /// The relay process is replaced by a new one (same key and group): no sessions, and
    /// its replies come from a new address.
    fn restart_relay(&mut self, cfg: Config) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.core = RelayCore::new(
            cfg,
            common::server_key(),
            Rng::from_seed([0x99; 32]),
            self.now,
            unix,
        )
        .expect("valid config");
        self.relay_from = SocketAddr::from(([127, 0, 0, 254], self.relay_from.port() + 1));
    }

    fn add_client(&mut self) -> usize {
        let mut seed = [0u8; 32];
        self.rng.fill(&mut seed);
        self.next_port += 1;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.next_port));
        let session = ClientSession::new(Rng::from_seed(seed), None, None, self.now);
        self.clients.push(SimClient {
            addr,
            session,
            events: Vec::new(),
            sent: Vec::new(),
        });
        self.pump();
        self.clients.len() - 1
    }

    /// A client that speaks only protocol version 1 (as tests/interop/pyclient.py does).
    fn add_v1_client(&mut self, port: u16) -> usize {
        self.add_client_up_to(1, port)
    }

    /// A client that offers at most protocol version `max`.
    fn add_client_up_to(&mut self, max: u16, port: u16) -> usize {
        let mut seed = [0u8; 32];
        self.rng.fill(&mut seed);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut session = ClientSession::new(Rng::from_seed(seed), None, None, self.now);
        session.set_max_version(max, self.now);
        self.clients.push(SimClient {
            addr,
            session,
            events: Vec::new(),
            sent: Vec::new(),
        });
        self.pump();
        self.clients.len() - 1
    }

    /// Move every queued datagram until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for (i, c) in self.clients.iter_mut().enumerate() {
                while let Some(d) = c.session.poll_transmit() {
                    if self.muted.contains(&i) {
                        continue;
                    }
                    self.core.handle_datagram(self.now, c.addr, &d);
                    c.sent.push(d);
                    moved = true;
                }
            }
            self.core.process_registrations(self.now, usize::MAX);
            let out: Vec<(SocketAddr, Vec<u8>)> = self
                .core
                .transmits()
                .map(|(a, b)| (a, b.to_vec()))
                .collect();
            self.core.advance_transmits(out.len(), 0);
            for (to, bytes) in out {
                moved = true;
                if let Some(c) = self.clients.iter_mut().find(|c| c.addr == to) {
                    c.session.handle_datagram(self.now, self.relay_from, &bytes);
                    while let Some(e) = c.session.poll_event() {
                        c.events.push(e);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Advance the virtual clock; `alive` clients run their own timers (keep-alives).
    fn advance(&mut self, d: Duration, alive: &[usize]) {
        let step = Duration::from_millis(250);
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + step).min(end);
            for &i in alive {
                self.clients[i].session.handle_timeout(self.now);
            }
            self.core.handle_timeout(self.now);
            self.pump();
        }
    }

    fn id(&self, i: usize) -> u32 {
        self.clients[i].session.id().expect("registered")
    }

    fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.clients[i].events)
    }
}

#[test]
fn thirty_second_timeout_in_virtual_time() {
    let mut sim = Sim::new(Config::default(), 1);
    let (a, b) = (sim.add_client(), sim.add_client());
    let a_id = sim.id(a);
    sim.take_events(b);
    // 29 s of silence from `a`: still there. `b` keeps itself alive.
    sim.advance(Duration::from_secs(29), &[b]);
    assert_eq!(sim.core.client_count(), 2);
    assert!(sim.take_events(b).is_empty());
    sim.advance(Duration::from_secs(2), &[b]);
    assert_eq!(sim.core.client_count(), 1);
    assert_eq!(
        sim.take_events(b),
        vec![Event::Leave {
            id: a_id,
            reason: 2
        }]
    );
    assert_eq!(sim.core.stats().timeouts, 1);
    // Keep-alives keep `b` for ten minutes.
    sim.advance(Duration::from_secs(600), &[b]);
    assert_eq!(sim.core.client_count(), 1);
    assert!(
        sim.core.stats().keepalives >= 59,
        "{}",
        sim.core.stats().keepalives
    );
}

#[test]
fn replayed_datagrams_are_relayed_once_and_do_not_refresh_liveness() {
    let mut sim = Sim::new(Config::default(), 2);
    let (a, b) = (sim.add_client(), sim.add_client());
    sim.take_events(a);
    sim.clients[a].session.send(sim.now, b"once").unwrap();
    sim.pump();
    let msg = sim.clients[a].sent.last().unwrap().clone();
    for _ in 0..5 {
        sim.core.handle_datagram(sim.now, sim.clients[a].addr, &msg);
    }
    sim.pump();
    let got: Vec<_> = sim
        .take_events(b)
        .into_iter()
        .filter(|e| matches!(e, Event::Message { .. }))
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(sim.core.stats().drops(DropReason::Replay), 5);
    // Replaying `a`'s keep-alive every 10 s does not keep it alive.
    sim.clients[a].session.send_keepalive(sim.now);
    sim.pump();
    let ka = sim.clients[a].sent.last().unwrap().clone();
    for _ in 0..4 {
        sim.advance(Duration::from_secs(10), &[b]);
        sim.core.handle_datagram(sim.now, sim.clients[a].addr, &ka);
    }
    sim.pump();
    assert_eq!(
        sim.core.client_count(),
        1,
        "a timed out despite replayed keep-alives"
    );
}

#[test]
fn incomplete_reassemblies_expire_after_five_seconds() {
    let mut sim = Sim::new(Config::default(), 3);
    let (a, _b) = (sim.add_client(), sim.add_client());
    sim.clients[a]
        .session
        .send(sim.now, &[7u8; 10_000])
        .unwrap();
    // Deliver all but the last fragment.
    let mut frags = Vec::new();
    while let Some(d) = sim.clients[a].session.poll_transmit() {
        frags.push(d);
    }
    assert!(frags.len() > 2);
    for f in &frags[..frags.len() - 1] {
        sim.core.handle_datagram(sim.now, sim.clients[a].addr, f);
    }
    assert_eq!(sim.core.reassemblies_in_flight(), 1);
    assert!(sim.core.reassembly_bytes() > 0);
    sim.advance(Duration::from_secs(6), &[0, 1]);
    assert_eq!(sim.core.reassemblies_in_flight(), 0);
    assert_eq!(sim.core.reassembly_bytes(), 0);
    assert_eq!(sim.core.stats().drops(DropReason::ReassemblyTimeout), 1);
    // The late last fragment starts a new reassembly that never completes: nothing relayed.
    assert_eq!(sim.core.stats().messages_in, 0);
}

/// Seeded random simulation: clients join, chat, go silent, disconnect, rejoin, while time
/// passes. Invariants: every message reaches every other client registered before it was
/// sent and still registered at the end exactly once, never its sender; nothing is left of
/// a client after it leaves.
#[test]
fn seeded_simulation_keeps_its_invariants() {
    for seed in 10..13u8 {
        let cfg = Config {
            client_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            ..Config::default()
        };
        let mut sim = Sim::new(cfg, seed);
        for _ in 0..4 {
            sim.add_client();
        }
        let mut counter = 0u64;
        let mut sent_by: HashMap<u64, u32> = HashMap::new();
        let mut received: HashMap<usize, HashSet<u64>> = HashMap::new();
        let mut expect: Vec<(u64, Vec<usize>)> = Vec::new();
        for _step in 0..300 {
            let r = sim.rng.next_u64();
            let i = (r % sim.clients.len() as u64) as usize;
            match (r >> 8) % 10 {
                0..=5 => {
                    if sim.clients[i].session.id().is_some() {
                        counter += 1;
                        let size = if (r >> 16).is_multiple_of(8) {
                            3000
                        } else {
                            20
                        };
                        let mut body = counter.to_be_bytes().to_vec();
                        body.resize(size, 0xab);
                        sim.clients[i].session.send(sim.now, &body).unwrap();
                        sent_by.insert(counter, sim.id(i));
                        let expected: Vec<usize> = (0..sim.clients.len())
                            .filter(|&k| k != i && sim.clients[k].session.id().is_some())
                            .collect();
                        expect.push((counter, expected));
                    }
                }
                6 => {
                    if sim.clients[i].session.id().is_some() {
                        sim.clients[i].session.disconnect(sim.now);
                    }
                }
                7 => {
                    if sim.clients.len() < 8 {
                        sim.add_client();
                    }
                }
                _ => {
                    let alive: Vec<usize> = (0..sim.clients.len()).filter(|&k| k != i).collect();
                    sim.advance(Duration::from_millis(700), &alive);
                }
            }
            sim.pump();
            for k in 0..sim.clients.len() {
                let my_id = sim.clients[k].session.id();
                for e in sim.take_events(k) {
                    if let Event::Message { sender, data, .. } = e {
                        let n = u64::from_be_bytes(data[..8].try_into().unwrap());
                        assert_eq!(
                            sent_by.get(&n),
                            Some(&sender),
                            "seed {seed}: wrong sender for {n}"
                        );
                        assert_ne!(Some(sender), my_id, "seed {seed}: echoed to its sender");
                        assert!(
                            received.entry(k).or_default().insert(n),
                            "seed {seed}: {n} delivered twice to {k}"
                        );
                    }
                }
            }
            // Completeness: everyone registered when a message was sent, and still
            // registered now, has it (delivery here is lossless and immediate).
            for (n, who) in expect.drain(..) {
                for k in who {
                    if sim.clients[k].session.id().is_some() {
                        assert!(
                            received.get(&k).is_some_and(|r| r.contains(&n)),
                            "seed {seed}: {n} missing at {k}"
                        );
                    }
                }
            }
            // Nothing kept for clients that are gone.
            let live = sim
                .clients
                .iter()
                .filter(|c| c.session.id().is_some())
                .count();
            assert!(sim.core.client_count() <= live + 1, "seed {seed}");
            if sim.core.client_count() == 0 {
                assert_eq!(sim.core.reassembly_bytes(), 0);
            }
        }
        assert!(sim.core.stats().deliveries > 0);
        assert_eq!(sim.core.stats().drops(DropReason::Replay), 0);
        assert_eq!(sim.core.stats().drops(DropReason::BadToken), 0);
    }
}

#[test]
fn shutdown_frees_reassemblies_and_tells_everyone() {
    let mut sim = Sim::new(Config::default(), 4);
    let (a, b) = (sim.add_client(), sim.add_client());
    sim.clients[a].session.send(sim.now, &[1u8; 5000]).unwrap();
    let first = sim.clients[a].session.poll_transmit().unwrap();
    sim.core
        .handle_datagram(sim.now, sim.clients[a].addr, &first);
    assert!(sim.core.reassembly_bytes() > 0);
    sim.core.shutdown(sim.now);
    while sim.clients[a].session.poll_transmit().is_some() {}
    sim.pump();
    assert_eq!(sim.core.client_count(), 0);
    assert_eq!(sim.core.reassembly_bytes(), 0);
    assert_eq!(sim.core.reassemblies_in_flight(), 0);
    for i in [a, b] {
        assert!(sim.take_events(i).contains(&Event::Shutdown));
    }
}

/// Version 1 (base64 tokens), version 2 (binary tokens) and version 3 clients share one
/// relay: each gets every message in its own form, and binary datagrams are smaller.
#[test]
fn versions_1_2_and_3_share_a_relay() {
    let mut sim = Sim::new(Config::default(), 5);
    let v2 = sim.add_client_up_to(2, 45001);
    let v1 = sim.add_v1_client(45000);
    let v3 = sim.add_client();
    assert_eq!(sim.clients[v1].session.version(), 1);
    assert_eq!(sim.clients[v2].session.version(), 2);
    assert_eq!(sim.clients[v3].session.version(), 3);
    sim.take_events(v1);
    sim.take_events(v2);
    sim.take_events(v3);
    for from in [v1, v2, v3] {
        let body = vec![b'x'; 100];
        sim.clients[from].session.send(sim.now, &body).unwrap();
        sim.pump();
        for to in [v1, v2, v3] {
            let got: Vec<_> = sim
                .take_events(to)
                .into_iter()
                .filter(|e| matches!(e, Event::Message { .. }))
                .collect();
            let want = if to == from {
                vec![]
            } else {
                vec![Event::Message {
                    sender: sim.id(from),
                    name: None,
                    data: body.clone(),
                }]
            };
            assert_eq!(got, want, "{from} -> {to}");
        }
    }
    // The same 100-byte message: 252 bytes as base64 text, 189 in binary.
    let v1_len = sim.clients[v1].sent.last().unwrap().len();
    let v2_len = sim.clients[v2].sent.last().unwrap().len();
    let v3_len = sim.clients[v3].sent.last().unwrap().len();
    assert_eq!((v1_len, v2_len, v3_len), (4 + 248, 4 + 185, 4 + 185));
    assert_eq!(sim.core.stats().drops(DropReason::BadToken), 0);
}

/// Fan-out seals version-2 recipients four at a time (`fernet::finish_raw_x4`) and the rest
/// one by one. With 12 v2 and 2 v1 recipients in slab order v2×5, v1, v2×5, v1, v2×3 every
/// shape occurs: full batches, a v1 recipient between batch members, leftovers of 1–3, and
/// fragmented messages (never batched). Every recipient must decrypt every message exactly,
/// each in its own token form.
#[test]
fn batched_fan_out_reaches_every_recipient_exactly() {
    // All 15 register from 127.0.0.1 at the same virtual instant.
    let cfg = Config {
        handshakes_per_source_per_sec: 100,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg, 9);
    let mut v1s = Vec::new();
    for i in 0..15 {
        if i == 5 || i == 11 {
            v1s.push(sim.add_v1_client(46000 + i));
        } else {
            sim.add_client();
        }
    }
    assert_eq!(sim.core.client_count(), 15);
    for &i in &v1s {
        assert_eq!(sim.clients[i].session.version(), 1);
    }
    for i in 0..15 {
        sim.take_events(i);
    }
    // Senders: the first and the last client, a middle one, a v1 one; sizes: empty, one
    // byte, one block, the benchmark's 100 bytes, 1,000 bytes, and a fragmented 3,000.
    for (round, from) in [0usize, 7, 5, 14].into_iter().enumerate() {
        for size in [0usize, 1, 16, 100, 1000, 3000] {
            let body: Vec<u8> = (0..size).map(|j| (j * 31 + round) as u8).collect();
            sim.clients[from].session.send(sim.now, &body).unwrap();
            sim.pump();
            for to in 0..15 {
                let got = sim.take_events(to);
                if to == from {
                    assert!(got.is_empty(), "{from} got its own message back: {got:?}");
                    continue;
                }
                assert_eq!(
                    got,
                    vec![Event::Message {
                        sender: sim.id(from),
                        name: None,
                        data: body.clone()
                    }],
                    "{from} -> {to}, {size} bytes"
                );
            }
        }
    }
    assert_eq!(sim.core.stats().drops(DropReason::BadToken), 0);
    assert_eq!(sim.core.stats().total_drops(), 0);
}

/// Events of client `i` since the last call, without the messages.
fn lost_and_ready(sim: &mut Sim, i: usize) -> Vec<String> {
    sim.take_events(i)
        .into_iter()
        .filter_map(|e| match e {
            Event::Lost { reason } => Some(format!("lost {}", reason.word())),
            Event::Ready { .. } => Some("ready".to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn after_a_relay_restart_clients_notice_at_once_and_register_again() {
    // Finding 9 (issue 12): the new relay answers NO_SESSION from a new address; the client
    // checks it with one keep-alive (to the group, so the new relay answers it too) and, after
    // the one-second probe, registers again: long before its 30 s silence rule.
    let mut sim = Sim::new(Config::default(), 21);
    let (a, b) = (sim.add_client(), sim.add_client());
    sim.take_events(a);
    sim.take_events(b);
    sim.restart_relay(Config::default());
    let t0 = sim.now;
    sim.clients[a].session.send(sim.now, b"anyone?").unwrap();
    sim.pump();
    sim.advance(Duration::from_millis(1500), &[a, b]);
    assert_eq!(lost_and_ready(&mut sim, a), ["lost no-session", "ready"]);
    println!("a registered again {:?} after the restart", sim.now - t0);
    assert_eq!(sim.core.client_count(), 1, "a, in the new relay");
    // b said nothing; its keep-alive (10 s) meets the new relay the same way.
    sim.advance(Duration::from_secs(11), &[a, b]);
    assert_eq!(lost_and_ready(&mut sim, b), ["lost no-session", "ready"]);
    assert_eq!(sim.core.client_count(), 2);
    assert!(
        sim.now - t0 < Duration::from_secs(13),
        "well before the 30 s timeout"
    );
    // And they talk again, through the new relay.
    sim.clients[a].session.send(sim.now, b"back").unwrap();
    sim.pump();
    let got: Vec<_> = sim
        .take_events(b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(got, [b"back".to_vec()]);
}

#[test]
fn a_laptop_asleep_for_a_minute_comes_back_by_itself() {
    let mut sim = Sim::new(Config::default(), 22);
    let (a, b) = (sim.add_client(), sim.add_client());
    let old_a = sim.id(a);
    sim.take_events(a);
    // a sleeps: no timers, nothing sent or received. The relay times it out.
    sim.advance(Duration::from_secs(60), &[b]);
    assert_eq!(sim.core.client_count(), 1);
    // It wakes: its first timer check finds a minute of silence and registers again.
    sim.advance(Duration::from_millis(500), &[a, b]);
    assert_eq!(lost_and_ready(&mut sim, a), ["lost silence", "ready"]);
    assert_ne!(sim.id(a), old_a);
    assert_eq!(sim.core.client_count(), 2);
}

#[test]
fn a_client_that_only_sends_is_not_declared_lost() {
    // protocol.md §7.1: a KEEPALIVE is also due when nothing was heard in the channel for a
    // keep-alive interval, so a client that talks more often than that still hears the relay.
    let mut sim = Sim::new(Config::default(), 23);
    let a = sim.add_client();
    sim.take_events(a);
    for i in 0..140 {
        sim.clients[a]
            .session
            .send(sim.now, format!("{i}").as_bytes())
            .unwrap();
        sim.pump();
        sim.advance(Duration::from_millis(500), &[a]);
    }
    assert_eq!(
        lost_and_ready(&mut sim, a),
        Vec::<String>::new(),
        "70 s alone"
    );
    assert_eq!(sim.core.client_count(), 1);
}

#[test]
fn forged_no_session_notices_cost_one_probe_a_second_and_change_nothing() {
    let mut sim = Sim::new(Config::default(), 24);
    let a = sim.add_client();
    sim.take_events(a);
    let mut forged = Vec::new();
    mcrelay::wire::Outer::NoSession.write(&mut forged);
    let stranger = SocketAddr::from(([127, 0, 0, 77], 4242));
    let keepalives_before = sim.core.stats().keepalives;
    for _ in 0..40 {
        for _ in 0..25 {
            sim.clients[a]
                .session
                .handle_datagram(sim.now, stranger, &forged);
        }
        sim.pump();
        sim.advance(Duration::from_millis(250), &[a]);
    }
    let probes = sim.core.stats().keepalives - keepalives_before;
    println!("1,000 forged NO_SESSIONs in 10 s: {probes} keep-alives");
    assert!((9..=12).contains(&probes), "{probes} probes in 10 s");
    assert_eq!(lost_and_ready(&mut sim, a), Vec::<String>::new());
}
