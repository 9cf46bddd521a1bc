//! The NATS client (`mcrelay::nats`) against real `nats-server` processes on loopback, driven
//! through `NatsLink` from a real mio `Poll`.
//!
//! These tests need `nats-server` on PATH and fail (they do not skip) without it; `.ci/test`
//! installs it.

#[path = "common/nats_cluster.rs"]
mod nats_cluster;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mcrelay::nats::{
    DisconnectReason, NatsAuth, NatsClient, NatsConfig, NatsEvent, NatsLink, NatsState,
};
use mio::{Events, Poll, Token};
use nats_cluster::{Cluster, NatsServer, ServerAuth};

/// One client in the test loop, with what it received.
struct Peer {
    link: NatsLink,
    inbox: Vec<(String, Vec<u8>)>,
    events: Vec<NatsEvent>,
    /// Timers not run: a paused client does not reconnect.
    paused: bool,
}

/// A tiny host: one Poll, a few links, one token each.
struct Net {
    poll: Poll,
    events: Events,
    peers: Vec<Peer>,
}

fn config(servers: &[SocketAddr]) -> NatsConfig {
    NatsConfig {
        servers: servers.to_vec(),
        name: "mcrelay-test".into(),
        ping_interval: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        reconnect_base: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
        lame_duck_jitter: Duration::from_millis(300),
        ..NatsConfig::default()
    }
}

impl Net {
    fn new() -> Net {
        Net {
            poll: Poll::new().expect("poll"),
            events: Events::with_capacity(64),
            peers: Vec::new(),
        }
    }

    fn add(&mut self, cfg: NatsConfig) -> usize {
        let i = self.peers.len();
        let now = Instant::now();
        let client = NatsClient::new(cfg, now, 1000 + i as u64).expect("config");
        self.peers.push(Peer {
            link: NatsLink::new(client, Token(100 + i), now),
            inbox: Vec::new(),
            events: Vec::new(),
            paused: false,
        });
        i
    }

    fn client(&mut self, i: usize) -> &mut NatsClient {
        self.peers[i].link.client_mut()
    }

    /// Publish through the link (writes through when its buffer is full).
    fn publish(&mut self, i: usize, subject: &str, payload: &[u8]) {
        let r = self.peers[i]
            .link
            .publish(self.poll.registry(), Instant::now(), subject, payload);
        r.expect("publish");
    }

    fn turn(&mut self, max_wait: Duration) {
        let now = Instant::now();
        let next = self
            .peers
            .iter()
            .filter(|p| !p.paused)
            .filter_map(|p| p.link.poll_timeout())
            .min();
        let wait = next
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(max_wait)
            .min(max_wait);
        match self.poll.poll(&mut self.events, Some(wait)) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.events.clear(),
            r => r.expect("poll"),
        }
        let now = Instant::now();
        let registry = self.poll.registry();
        for ev in self.events.iter() {
            for p in self.peers.iter_mut().filter(|p| p.link.owns(ev.token())) {
                let inbox = &mut p.inbox;
                p.link.handle_event(registry, ev, now, &mut |m| {
                    inbox.push((m.subject.to_string(), m.payload.to_vec()))
                });
            }
        }
        for p in self.peers.iter_mut().filter(|p| !p.paused) {
            if p.link.poll_timeout().is_some_and(|t| t <= now) {
                let inbox = &mut p.inbox;
                p.link.handle_timeout(registry, now, &mut |m| {
                    inbox.push((m.subject.to_string(), m.payload.to_vec()))
                });
            }
        }
        for p in &mut self.peers {
            while let Some(e) = p.link.client_mut().poll_event() {
                p.events.push(e);
            }
        }
    }

    /// Run the loop until `done` holds; panics after `timeout` with `what`.
    fn run_until(&mut self, timeout: Duration, what: &str, mut done: impl FnMut(&mut Net) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() > deadline {
                let states: Vec<String> = self
                    .peers
                    .iter()
                    .map(|p| format!("{:?} {:?}", p.link.client().state(), p.events))
                    .collect();
                panic!(
                    "timed out ({timeout:?}) waiting for {what}\n{}",
                    states.join("\n")
                );
            }
            self.turn(Duration::from_millis(20));
        }
    }

    /// Run the loop for `d`.
    fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.turn(Duration::from_millis(10));
        }
    }

    fn connected(&self, i: usize) -> bool {
        self.peers[i].link.client().state() == NatsState::Connected
    }

    fn wait_connected(&mut self, who: &[usize]) {
        self.run_until(Duration::from_secs(5), "clients to connect", |n| {
            who.iter().all(|&i| n.connected(i))
        });
    }

    /// Publish `probe` payloads from `from` every 50 ms until `to` got one (a subscription's
    /// interest crosses routes asynchronously), then forget the probes.
    fn wait_flow(&mut self, from: usize, to: usize, subject: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.peers[to].inbox.iter().any(|(_, p)| p == b"probe") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no message flow from {from} to {to}"
            );
            self.client(from)
                .publish(subject, b"probe")
                .expect("publish");
            self.run_for(Duration::from_millis(50));
        }
        // Let in-flight probes land, then start clean.
        self.run_for(Duration::from_millis(100));
        self.peers[to].inbox.clear();
    }

    fn shutdown(&mut self) {
        let now = Instant::now();
        for p in &mut self.peers {
            p.link.shutdown(self.poll.registry(), now);
        }
    }
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn two_clients_round_trip_exact_bytes() {
    let server = NatsServer::start(ServerAuth::None);
    let mut net = Net::new();
    let a = net.add(config(&[server.addr()]));
    let b = net.add(config(&[server.addr()]));
    let sid = net.client(b).subscribe("rt.>").unwrap();
    // echo:false: a client never gets its own publishes back.
    net.client(a).subscribe("rt.>").unwrap();
    net.wait_connected(&[a, b]);
    assert_eq!(
        net.peers[a].link.client().server_info().unwrap().version,
        "2.9.10"
    );

    let payloads: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"hello".to_vec(),
        b"\r\nMSG fake 1 3\r\nabc\r\n\r\n".to_vec(),
        payload(60 * 1024, 7),
        (0..=255u8).collect(),
        payload(1 << 20, 3), // exactly max_payload
    ];
    for (i, p) in payloads.iter().enumerate() {
        net.publish(a, &format!("rt.{i}"), p);
    }
    for i in 0..1000u32 {
        net.publish(a, "rt.many", &i.to_be_bytes());
    }
    let want = payloads.len() + 1000;
    net.run_until(Duration::from_secs(10), "all messages", |n| {
        n.peers[b].inbox.len() >= want
    });
    let inbox = &net.peers[b].inbox;
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(inbox[i].0, format!("rt.{i}"));
        assert!(inbox[i].1 == *p, "payload {i} differs ({} bytes)", p.len());
    }
    for i in 0..1000u32 {
        assert_eq!(
            inbox[payloads.len() + i as usize].1,
            i.to_be_bytes(),
            "order"
        );
    }
    assert!(net.peers[a].inbox.is_empty(), "own messages echoed");
    let sb = net.peers[b].link.client().stats().clone();
    assert_eq!(sb.msgs_in, want as u64);
    let sa = net.client(a).stats().clone();
    assert_eq!(sa.msgs_out, want as u64);
    assert_eq!(sa.dropped_queue_full, 0);
    // Over max_payload: refused before anything is sent.
    assert!(
        net.client(a)
            .publish("rt.big", &payload((1 << 20) + 1, 0))
            .is_err()
    );

    // Spurious readiness, for its own token and the other's, changes nothing.
    let now = Instant::now();
    for p in &mut net.peers {
        for tok in [Token(100), Token(101), Token(7)] {
            for (r, w) in [(true, false), (false, true), (true, true), (false, false)] {
                p.link
                    .handle_ready(net.poll.registry(), tok, r, w, now, &mut |_| {});
            }
        }
    }
    net.client(a).publish("rt.after", b"still up").unwrap();
    net.run_until(
        Duration::from_secs(5),
        "a message after spurious events",
        |n| n.peers[b].inbox.last().is_some_and(|m| m.1 == b"still up"),
    );
    assert!(net.connected(a) && net.connected(b));
    // Unsubscribed: nothing more arrives.
    net.client(b).unsubscribe(sid);
    net.run_for(Duration::from_millis(100));
    let before = net.peers[b].inbox.len();
    net.client(a).publish("rt.gone", b"x").unwrap();
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.peers[b].inbox.len(), before);
    net.shutdown();
    assert_eq!(net.peers[a].link.client().state(), NatsState::Closed);
}

fn auth_case(server_auth: ServerAuth, good: NatsAuth, bad: NatsAuth) {
    let server = NatsServer::start(server_auth);
    let mut net = Net::new();
    let mut cfg = config(&[server.addr()]);
    cfg.auth = good;
    let ok_pub = net.add(cfg.clone());
    let ok_sub = net.add(cfg.clone());
    cfg.auth = bad;
    let denied = net.add(cfg);
    net.client(ok_sub).subscribe("auth.t").unwrap();
    net.wait_connected(&[ok_pub, ok_sub]);
    assert!(
        net.peers[ok_pub]
            .link
            .client()
            .server_info()
            .unwrap()
            .auth_required
    );
    net.client(ok_pub).publish("auth.t", b"secret ok").unwrap();
    net.run_until(Duration::from_secs(5), "the authenticated message", |n| {
        !n.peers[ok_sub].inbox.is_empty()
    });
    // The wrong credentials are reported quickly, not a hang, and never connect.
    net.run_until(Duration::from_secs(3), "the auth failure", |n| {
        n.peers[denied].events.iter().any(|e| {
            matches!(e, NatsEvent::ConnectFailed {
                reason: DisconnectReason::ServerError(m), ..
            } if m == "Authorization Violation")
        })
    });
    assert!(net.peers[denied].events.iter().any(|e| matches!(e,
        NatsEvent::ServerError { message, fatal: true, .. } if message == "Authorization Violation")));
    assert!(
        !net.peers[denied]
            .events
            .iter()
            .any(|e| matches!(e, NatsEvent::Connected { .. }))
    );
    // It keeps retrying with back-off, not in a tight loop.
    let attempts = net.peers[denied].link.client().stats().connect_attempts;
    net.run_for(Duration::from_millis(500));
    let more = net.peers[denied].link.client().stats().connect_attempts - attempts;
    assert!(more <= 4, "{more} attempts in 500 ms");
    net.shutdown();
}

#[test]
fn token_auth() {
    auth_case(
        ServerAuth::Token("s3cr3t-t0ken".into()),
        NatsAuth::Token("s3cr3t-t0ken".into()),
        NatsAuth::Token("wrong".into()),
    );
}

#[test]
fn user_password_auth() {
    auth_case(
        ServerAuth::User("relay".into(), "pa\"ss".into()),
        NatsAuth::UserPassword {
            user: "relay".into(),
            password: "pa\"ss".into(),
        },
        NatsAuth::UserPassword {
            user: "relay".into(),
            password: "nope".into(),
        },
    );
}

#[test]
fn cluster_flow_and_failover_after_sigkill() {
    let mut cluster = Cluster::start(3);
    let addrs = cluster.addrs();
    let mut net = Net::new();
    let a = net.add(config(&[addrs[0]]));
    let b = net.add(config(&[addrs[1], addrs[2], addrs[0]]));
    net.client(b).subscribe("fed.>").unwrap();
    net.wait_connected(&[a, b]);
    assert_eq!(
        net.peers[a].link.client().connected_server(),
        Some(addrs[0])
    );
    assert_eq!(
        net.peers[b].link.client().connected_server(),
        Some(addrs[1])
    );
    net.wait_flow(a, b, "fed.probe");
    for i in 0..100u32 {
        net.client(a).publish("fed.x", &i.to_be_bytes()).unwrap();
    }
    net.run_until(
        Duration::from_secs(5),
        "100 messages across the route",
        |n| n.peers[b].inbox.len() >= 100,
    );
    let got: Vec<u32> = net.peers[b]
        .inbox
        .iter()
        .map(|(_, p)| u32::from_be_bytes(p[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());

    // SIGKILL the node B is on: B reconnects elsewhere within 2 s and re-subscribes.
    net.peers[b].events.clear();
    cluster.nodes[1].kill();
    let killed = Instant::now();
    net.run_until(Duration::from_secs(2), "B to reconnect within 2 s", |n| {
        n.peers[b]
            .events
            .iter()
            .any(|e| matches!(e, NatsEvent::Connected { .. }))
    });
    let took = killed.elapsed();
    let now_on = net.peers[b].link.client().connected_server().unwrap();
    assert_ne!(now_on, addrs[1]);
    assert!(net.peers[b].events.iter().any(|e| matches!(e,
        NatsEvent::Disconnected { server, .. } if *server == addrs[1])));
    assert_eq!(net.peers[b].link.client().stats().reconnects, 1);
    eprintln!("reconnected to {now_on} {took:?} after SIGKILL");
    net.peers[b].inbox.clear();
    net.wait_flow(a, b, "fed.probe");
    net.client(a)
        .publish("fed.after", b"after failover")
        .unwrap();
    net.run_until(Duration::from_secs(5), "a message after failover", |n| {
        n.peers[b].inbox.iter().any(|m| m.1 == b"after failover")
    });
    assert!(net.connected(a), "A was not affected");
    net.shutdown();
}

#[test]
fn discovered_connect_urls_are_used() {
    let mut cluster = Cluster::start(3);
    let addrs = cluster.addrs();
    let mut net = Net::new();
    // Only node 3 is configured.
    let c = net.add(config(&[addrs[2]]));
    net.wait_connected(&[c]);
    net.run_until(Duration::from_secs(5), "the cluster's servers", |n| {
        let known: Vec<SocketAddr> = n.peers[c].link.client().servers().collect();
        addrs.iter().all(|a| known.contains(a))
    });
    assert!(
        net.peers[c]
            .events
            .iter()
            .any(|e| matches!(e, NatsEvent::DiscoveredServers { added: 2 }))
    );
    assert_eq!(net.peers[c].link.client().stats().discovered_servers, 2);
    cluster.nodes[2].kill();
    let t = Instant::now();
    net.run_until(Duration::from_secs(2), "a discovered server", |n| {
        n.connected(c) && n.peers[c].link.client().connected_server() != Some(addrs[2])
    });
    let on = net.peers[c].link.client().connected_server().unwrap();
    assert!(on == addrs[0] || on == addrs[1]);
    eprintln!("moved to discovered {on} in {:?}", t.elapsed());
    net.shutdown();
}

#[test]
fn total_outage_queues_bounded_then_flow_resumes() {
    let mut cluster = Cluster::start(3);
    let addrs = cluster.addrs();
    let mut net = Net::new();
    let mut pcfg = config(&addrs);
    pcfg.max_pending_bytes = 64 * 1024;
    let p = net.add(pcfg);
    let s = net.add(config(&[addrs[1], addrs[2], addrs[0]]));
    net.client(s).subscribe("out.>").unwrap();
    net.wait_connected(&[p, s]);
    net.wait_flow(p, s, "out.probe");

    for node in &mut cluster.nodes {
        node.kill();
    }
    net.run_until(Duration::from_secs(3), "both to notice", |n| {
        !n.connected(p) && !n.connected(s)
    });
    // Publish 1 MiB while nothing is up: the queue keeps the newest 64 KiB.
    let body = [b'q'; 1000];
    for i in 0..1000u32 {
        let mut m = i.to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        net.client(p).publish("out.q", &m).unwrap();
        assert!(net.peers[p].link.client().pending_bytes() <= 64 * 1024);
    }
    // Keep retrying for a while: memory stays bounded, attempts back off.
    net.run_for(Duration::from_millis(800));
    let pc = net.peers[p].link.client();
    let queued = pc.pending_messages();
    assert!(pc.pending_bytes() <= 64 * 1024);
    assert!(pc.transmit().is_empty());
    assert!(pc.input_buffer_capacity() <= 2 * 1024 * 1024);
    assert_eq!(pc.stats().dropped_queue_full, 1000 - queued as u64);
    assert!(queued > 50 && queued < 70, "{queued} queued");
    assert!(pc.stats().connect_failures >= 3);
    assert!(pc.stats().connect_attempts < 40, "{:?}", pc.stats());

    // Restart one node; let the subscriber get there first (the publisher is held).
    net.peers[p].paused = true;
    cluster.nodes[0].restart();
    net.run_until(
        Duration::from_secs(5),
        "the subscriber back on node 1",
        |n| n.connected(s),
    );
    net.peers[s].inbox.clear();
    net.peers[p].paused = false;
    net.run_until(Duration::from_secs(5), "the queued messages", |n| {
        n.peers[s].inbox.len() >= queued
    });
    // Exactly the newest `queued` messages, in order.
    let got: Vec<u32> = net.peers[s]
        .inbox
        .iter()
        .map(|(_, m)| u32::from_be_bytes(m[..4].try_into().unwrap()))
        .collect();
    let want: Vec<u32> = (1000 - queued as u32..1000).collect();
    assert_eq!(got, want);
    assert_eq!(net.peers[p].link.client().pending_bytes(), 0);
    // And live traffic flows again.
    net.client(p).publish("out.live", b"live").unwrap();
    net.run_until(Duration::from_secs(5), "live traffic", |n| {
        n.peers[s].inbox.iter().any(|m| m.1 == b"live")
    });
    net.shutdown();
}

#[test]
fn lame_duck_server_is_left_for_another() {
    let cluster = Cluster::start(2);
    let addrs = cluster.addrs();
    let mut net = Net::new();
    let l = net.add(config(&[addrs[0], addrs[1]]));
    let m = net.add(config(&[addrs[1]]));
    net.client(l).subscribe("ldm.t").unwrap();
    net.wait_connected(&[l, m]);
    assert_eq!(
        net.peers[l].link.client().connected_server(),
        Some(addrs[0])
    );
    net.peers[l].events.clear();
    cluster.nodes[0].lame_duck();
    let t = Instant::now();
    // The server would close its clients only after its 10 s grace period: the client
    // leaves on its own, within its 300 ms jitter.
    net.run_until(Duration::from_secs(3), "the move off the lame duck", |n| {
        n.connected(l) && n.peers[l].link.client().connected_server() == Some(addrs[1])
    });
    eprintln!("left the lame duck in {:?}", t.elapsed());
    let ev = &net.peers[l].events;
    assert!(
        ev.contains(&NatsEvent::LameDuck { server: addrs[0] }),
        "{ev:?}"
    );
    assert!(ev.contains(&NatsEvent::Disconnected {
        server: addrs[0],
        reason: DisconnectReason::LameDuck
    }));
    // Subscriptions came along.
    net.wait_flow(m, l, "ldm.t");
    net.shutdown();
}
