//! The client state machine against a scripted server and a virtual clock.

use std::time::Duration;

use crate::nats::proto::{DEFAULT_MAX_PAYLOAD, ProtoError};

use super::*;

const INFO: &[u8] =
    b"INFO {\"server_id\":\"S\",\"version\":\"2.9.10\",\"proto\":1,\"max_payload\":1048576} \r\n";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn cfg(ports: &[u16]) -> NatsConfig {
    NatsConfig {
        servers: ports.iter().map(|&p| addr(p)).collect(),
        name: "t".into(),
        ..NatsConfig::default()
    }
}

struct T {
    c: NatsClient,
    now: Instant,
    msgs: Vec<(String, u64, Option<String>, Vec<u8>)>,
}

impl T {
    fn new(cfg: NatsConfig) -> T {
        Self::seeded(cfg, 7)
    }

    fn seeded(cfg: NatsConfig, seed: u64) -> T {
        let now = Instant::now();
        T {
            c: NatsClient::new(cfg, now, seed).unwrap(),
            now,
            msgs: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.c.handle_timeout(self.now);
    }

    fn input(&mut self, bytes: &[u8]) {
        let msgs = &mut self.msgs;
        self.c.handle_input(self.now, bytes, &mut |m| {
            msgs.push((
                m.subject.to_string(),
                m.sid,
                m.reply.map(str::to_string),
                m.payload.to_vec(),
            ))
        });
    }

    /// Everything the client wants written, as if the socket took it all.
    fn take_out(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let t = self.c.transmit().to_vec();
            if t.is_empty() {
                return all;
            }
            self.c.advance_transmit(t.len());
            all.extend_from_slice(&t);
        }
    }

    fn out_text(&mut self) -> String {
        String::from_utf8(self.take_out()).unwrap()
    }

    /// Wait for the next attempt (if it is not due yet), connect.
    fn connect(&mut self) -> SocketAddr {
        if self.c.state() == NatsState::Waiting {
            self.now = self.now.max(self.c.poll_timeout().unwrap());
        }
        let s = self.c.poll_connect(self.now).expect("an attempt is due");
        self.c.handle_connected(self.now);
        s
    }

    /// TCP up, INFO, PONG: returns the server and the handshake bytes.
    fn handshake_with(&mut self, info: &[u8]) -> (SocketAddr, String) {
        let s = self.connect();
        self.input(info);
        let hs = self.out_text();
        self.input(b"PONG\r\n");
        assert_eq!(self.c.state(), NatsState::Connected);
        (s, hs)
    }

    fn handshake(&mut self) -> SocketAddr {
        self.handshake_with(INFO).0
    }

    fn events(&mut self) -> Vec<NatsEvent> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }

    /// The host closes the socket when asked, and reports it.
    fn close_if_asked(&mut self) -> bool {
        if self.c.wants_close() {
            self.c.handle_disconnected(self.now);
            true
        } else {
            false
        }
    }

    /// How long until the next attempt is due (the client must be waiting).
    fn wait_until_attempt(&self) -> Duration {
        assert_eq!(self.c.state(), NatsState::Waiting);
        self.c.poll_timeout().unwrap().duration_since(self.now)
    }
}

const CONNECT: &str = "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"echo\":false,\"protocol\":1,\"lang\":\"rust\",\"version\":\"";

#[test]
fn handshake_order_and_exact_bytes() {
    let mut t = T::new(cfg(&[4222]));
    assert_eq!(t.c.subscribe("a.b").unwrap(), 1);
    assert_eq!(t.c.subscribe_queue("c.>", "q").unwrap(), 2);
    t.c.publish("early", b"x").unwrap();
    assert_eq!(t.c.state(), NatsState::Waiting);
    assert_eq!(t.c.poll_connect(t.now), Some(addr(4222)));
    assert_eq!(t.c.poll_connect(t.now), None, "one attempt at a time");
    assert_eq!(t.c.state(), NatsState::Connecting);
    t.c.handle_connected(t.now);
    assert_eq!(t.c.state(), NatsState::Handshaking);
    assert!(t.c.transmit().is_empty(), "nothing before INFO");
    t.input(INFO);
    let expected = format!(
        "{CONNECT}{}\",\"name\":\"t\"}}\r\nSUB a.b 1\r\nSUB c.> q 2\r\nPING\r\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(t.out_text(), expected);
    // Publishes wait for the PONG (a failed auth must not eat them).
    t.c.publish("during", b"yy").unwrap();
    assert_eq!(t.out_text(), "");
    assert_eq!(t.c.pending_messages(), 2);
    assert_eq!(t.c.connected_server(), None);
    t.input(b"PONG\r\n");
    assert_eq!(t.c.state(), NatsState::Connected);
    assert_eq!(t.c.connected_server(), Some(addr(4222)));
    assert_eq!(
        t.events(),
        vec![NatsEvent::Connected { server: addr(4222) }]
    );
    assert_eq!(t.out_text(), "PUB early 1\r\nx\r\nPUB during 2\r\nyy\r\n");
    assert_eq!(t.c.pending_messages(), 0);
    t.c.publish_with_reply("now", "INBOX.1", b"z").unwrap();
    assert_eq!(t.out_text(), "PUB now INBOX.1 1\r\nz\r\n");
    assert_eq!(t.c.stats().msgs_out, 3);
    assert_eq!(t.c.stats().bytes_out, 4);
    assert_eq!(t.c.server_info().unwrap().version, "2.9.10");
}

#[test]
fn credentials_in_connect() {
    let mut c = cfg(&[1]);
    c.auth = NatsAuth::UserPassword {
        user: "alice".into(),
        password: "p\"w".into(),
    };
    let mut t = T::new(c);
    let (_, hs) = t.handshake_with(INFO);
    assert!(
        hs.contains(",\"name\":\"t\",\"user\":\"alice\",\"pass\":\"p\\\"w\"}\r\n"),
        "{hs}"
    );
    let mut c = cfg(&[1]);
    c.auth = NatsAuth::Token("tok3n".into());
    let mut t = T::new(c);
    t.connect();
    t.input(INFO);
    // Mid-handshake the transmit buffer holds the token: Debug must not show it.
    assert!(
        !format!("{:?}", t.c).contains("tok3n"),
        "Debug leaks the token"
    );
    let hs = t.out_text();
    assert!(hs.contains(",\"auth_token\":\"tok3n\"}\r\n"), "{hs}");
}

#[test]
fn server_ping_is_answered_in_every_state() {
    let mut t = T::new(cfg(&[1]));
    t.connect();
    t.input(b"PING\r\n");
    assert_eq!(t.out_text(), "PONG\r\n");
    t.input(INFO);
    t.take_out();
    t.input(b"PING\r\nPONG\r\nPING\r\n");
    assert_eq!(t.out_text(), "PONG\r\nPONG\r\n");
    assert_eq!(t.c.stats().pings_answered, 3);
    assert_eq!(t.c.state(), NatsState::Connected);
}

#[test]
fn two_missed_pongs_are_a_dead_link() {
    let mut c = cfg(&[1, 2]);
    c.ping_interval = Duration::from_secs(10);
    let mut t = T::new(c);
    t.handshake();
    t.events();
    assert_eq!(t.c.poll_timeout(), Some(t.now + Duration::from_secs(10)));
    t.advance(Duration::from_millis(9_999));
    assert_eq!(t.out_text(), "", "not early");
    t.advance(Duration::from_millis(1));
    assert_eq!(t.out_text(), "PING\r\n");
    // Answered: the count starts again.
    t.input(b"PONG\r\n");
    t.advance(Duration::from_secs(10));
    assert_eq!(t.out_text(), "PING\r\n");
    assert_eq!(t.c.stats().pongs_missed, 0);
    t.advance(Duration::from_secs(10));
    assert_eq!(t.out_text(), "PING\r\n");
    assert_eq!(t.c.stats().pongs_missed, 1);
    assert!(!t.c.wants_close());
    t.advance(Duration::from_secs(10));
    assert_eq!(t.out_text(), "", "no third PING");
    assert!(t.c.wants_close());
    assert_eq!(t.c.state(), NatsState::Closing);
    assert_eq!(t.c.poll_timeout(), None);
    assert_eq!(t.c.stats().pongs_missed, 2);
    assert_eq!(t.c.stats().stale_connections, 1);
    assert!(t.close_if_asked());
    assert_eq!(
        t.events(),
        vec![NatsEvent::Disconnected {
            server: addr(1),
            reason: DisconnectReason::StaleConnection
        }]
    );
    // A link that was up: the next server at once.
    assert_eq!(t.c.poll_connect(t.now), Some(addr(2)));
}

#[test]
fn connect_timeout_covers_tcp_and_handshake() {
    let mut c = cfg(&[1]);
    c.connect_timeout = Duration::from_secs(2);
    let mut t = T::new(c);
    t.c.poll_connect(t.now).unwrap();
    t.advance(Duration::from_millis(1999));
    assert!(!t.c.wants_close());
    t.advance(Duration::from_millis(1));
    assert!(t.close_if_asked());
    assert_eq!(
        t.events(),
        vec![NatsEvent::ConnectFailed {
            server: addr(1),
            reason: DisconnectReason::ConnectTimeout
        }]
    );
    // Same for a server that sends INFO but never PONG.
    t.advance(t.wait_until_attempt());
    t.connect();
    t.input(INFO);
    t.advance(Duration::from_secs(2));
    assert!(t.close_if_asked());
    assert_eq!(t.c.stats().connect_failures, 2);
}

#[test]
fn reconnect_schedule_backs_off_with_jitter_across_all_servers() {
    let mut c = cfg(&[1, 2, 3]);
    c.reconnect_base = Duration::from_millis(100);
    c.reconnect_max = Duration::from_millis(1600);
    let base = c.reconnect_base;
    let max = c.reconnect_max;
    let mut t = T::new(c);
    let mut order = Vec::new();
    // First attempt at once.
    order.push(t.c.poll_connect(t.now).unwrap());
    for failure in 1..=10u32 {
        t.c.handle_disconnected(t.now);
        let wait = t.wait_until_attempt();
        let cap = (base * 2u32.pow(failure - 1)).min(max);
        assert!(
            wait >= cap / 2 && wait <= cap,
            "failure {failure}: waited {wait:?}, cap {cap:?}"
        );
        // Not early.
        t.now += wait - Duration::from_nanos(1);
        assert_eq!(t.c.poll_connect(t.now), None);
        t.now += Duration::from_nanos(1);
        order.push(t.c.poll_connect(t.now).unwrap());
    }
    let ports: Vec<u16> = order.iter().map(|a| a.port()).collect();
    assert_eq!(ports, [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]);
    assert_eq!(t.c.stats().connect_failures, 10);
    // A link that drops right after its handshake is one more failure (no spinning on a
    // server that accepts and drops).
    t.c.handle_connected(t.now);
    t.input(INFO);
    t.input(b"PONG\r\n");
    t.now += STABLE_LINK - Duration::from_millis(1);
    t.c.handle_disconnected(t.now);
    let wait = t.wait_until_attempt();
    assert!(wait >= max / 2 && wait <= max, "{wait:?}");
    // A link that stayed up resets the back-off: the next server at once, then from base.
    t.now += wait;
    assert_eq!(t.c.poll_connect(t.now), Some(addr(3)));
    t.c.handle_connected(t.now);
    t.input(INFO);
    t.input(b"PONG\r\n");
    t.now += STABLE_LINK;
    t.c.handle_disconnected(t.now);
    assert_eq!(t.c.poll_connect(t.now), Some(addr(1)));
    t.c.handle_disconnected(t.now);
    let wait = t.wait_until_attempt();
    assert!(wait >= base / 2 && wait <= base, "{wait:?}");
}

#[test]
fn jitter_spreads_clients() {
    let waits: std::collections::BTreeSet<Duration> = (0..20)
        .map(|seed| {
            let mut t = T::seeded(cfg(&[1, 2]), seed);
            t.c.poll_connect(t.now).unwrap();
            t.c.handle_disconnected(t.now);
            assert_eq!(t.c.poll_connect(t.now), None);
            t.wait_until_attempt()
        })
        .collect();
    assert!(waits.len() > 15, "seeds give the same delays: {waits:?}");
}

#[test]
fn connect_urls_are_merged_deduplicated_and_names_skipped() {
    let mut t = T::new(cfg(&[4222]));
    t.handshake_with(
        b"INFO {\"connect_urls\":[\"127.0.0.1:4222\",\"127.0.0.1:4223\",\"nats.example:4222\",\
          \"127.0.0.1:4223\",\"[::1]:4224\",\"0.0.0.0:4225\"]}\r\n",
    );
    let servers: Vec<SocketAddr> = t.c.servers().collect();
    assert_eq!(
        servers,
        vec![addr(4222), addr(4223), "[::1]:4224".parse().unwrap()]
    );
    assert_eq!(t.c.stats().discovered_servers, 2);
    assert_eq!(t.c.stats().skipped_urls, 2);
    let ev = t.events();
    assert!(
        ev.contains(&NatsEvent::DiscoveredServers { added: 2 }),
        "{ev:?}"
    );
    // An async INFO with a known list adds nothing; a new server is added.
    t.input(b"INFO {\"connect_urls\":[\"127.0.0.1:4223\"]}\r\n");
    assert!(t.events().is_empty());
    t.input(b"INFO {\"connect_urls\":[\"127.0.0.1:4226\"]}\r\n");
    assert_eq!(t.events(), vec![NatsEvent::DiscoveredServers { added: 1 }]);
    assert_eq!(t.c.servers().count(), 4);
    // Discovered servers are part of the rotation.
    for want in [4223, 4224, 4226, 4222] {
        t.c.handle_disconnected(t.now);
        let s = t.c.poll_connect(t.now).or_else(|| {
            t.now = t.c.poll_timeout().unwrap();
            t.c.poll_connect(t.now)
        });
        assert_eq!(s.map(|s| s.port()), Some(want));
        t.c.handle_connected(t.now);
        t.input(INFO);
        t.input(b"PONG\r\n");
    }
    // The list is bounded.
    let many: Vec<String> = (0..200)
        .map(|i| format!("\"127.0.{}.{}:1\"", i / 200, i % 200 + 1))
        .collect();
    t.input(format!("INFO {{\"connect_urls\":[{}]}}\r\n", many.join(",")).as_bytes());
    assert_eq!(t.c.servers().count(), MAX_SERVERS);
    // With discovery off, nothing is added.
    let mut c = cfg(&[4222]);
    c.discover = false;
    let mut t = T::new(c);
    t.handshake_with(b"INFO {\"connect_urls\":[\"127.0.0.1:4223\"]}\r\n");
    assert_eq!(t.c.servers().count(), 1);
}

#[test]
fn lame_duck_moves_to_another_server_after_jitter_and_drain() {
    let mut c = cfg(&[1, 2]);
    c.lame_duck_jitter = Duration::from_secs(3);
    let mut t = T::new(c);
    t.handshake();
    t.events();
    t.input(b"INFO {\"ldm\":true,\"connect_urls\":[\"127.0.0.1:2\"]}\r\n");
    assert_eq!(t.events(), vec![NatsEvent::LameDuck { server: addr(1) }]);
    assert_eq!(t.c.stats().lame_duck, 1);
    let due = t.c.poll_timeout().unwrap();
    assert!(due <= t.now + Duration::from_secs(3));
    // Still up before the jittered moment; publishes still flow to it.
    t.c.publish("x", b"1").unwrap();
    assert!(!t.c.wants_close());
    // A second notice does not move the deadline.
    t.input(b"INFO {\"ldm\":true}\r\n");
    assert_eq!(t.c.poll_timeout().unwrap(), due);
    t.now = due;
    t.c.handle_timeout(t.now);
    // Output still pending: drain it to the old server first; new publishes wait.
    assert!(!t.c.wants_close());
    t.c.publish("y", b"2").unwrap();
    assert_eq!(t.c.pending_messages(), 1);
    assert_eq!(t.out_text(), "PUB x 1\r\n1\r\n");
    assert!(t.close_if_asked());
    assert_eq!(
        t.events(),
        vec![NatsEvent::Disconnected {
            server: addr(1),
            reason: DisconnectReason::LameDuck
        }]
    );
    assert_eq!(
        t.c.poll_connect(t.now),
        Some(addr(2)),
        "another server, at once"
    );
    t.c.handle_connected(t.now);
    t.input(INFO);
    t.take_out();
    t.input(b"PONG\r\n");
    assert_eq!(t.out_text(), "PUB y 1\r\n2\r\n");
}

#[test]
fn lame_duck_drain_is_bounded() {
    let mut c = cfg(&[1, 2]);
    c.lame_duck_jitter = Duration::ZERO;
    let mut t = T::new(c);
    t.handshake();
    t.c.publish("x", b"1").unwrap();
    t.input(b"INFO {\"ldm\":true}\r\n");
    t.advance(Duration::ZERO);
    assert!(!t.c.wants_close());
    t.advance(LAME_DUCK_DRAIN);
    assert!(t.c.wants_close(), "the socket never drained: leave anyway");
    // A server already in lame duck during the handshake is left at once.
    t.close_if_asked();
    t.connect();
    t.input(b"INFO {\"ldm\":true}\r\n");
    assert!(t.c.wants_close());
}

#[test]
fn fatal_and_non_fatal_errors() {
    let mut t = T::new(cfg(&[1, 2]));
    let mut server = t.handshake();
    t.events();
    for keep in [
        "-ERR 'Permissions Violation for Publish to foo'\r\n",
        "-ERR 'Permissions Violation for Subscription to bar'\r\n",
        "-ERR 'Invalid Subject'\r\n",
        "-err 'invalid publish subject'\r\n",
    ] {
        t.input(keep.as_bytes());
        assert_eq!(t.c.state(), NatsState::Connected, "{keep}");
    }
    let ev = t.events();
    assert_eq!(ev.len(), 4);
    assert!(
        matches!(&ev[0], NatsEvent::ServerError { message, fatal: false, .. }
        if message == "Permissions Violation for Publish to foo")
    );
    for fatal in [
        "Unknown Protocol Operation",
        "Authorization Violation",
        "Authorization Timeout",
        "Stale Connection",
        "Maximum Payload Violation",
        "Maximum Connections Exceeded",
        "Slow Consumer",
        "Parser Error",
        "Secure Connection - TLS Required",
        "Something New",
    ] {
        t.input(format!("-ERR '{fatal}'\r\n").as_bytes());
        assert!(t.c.wants_close(), "{fatal}");
        // Input after a fatal error is ignored.
        t.input(b"MSG a 1 1\r\nx\r\n");
        assert!(t.msgs.is_empty());
        t.c.handle_disconnected(t.now);
        let ev = t.events();
        assert!(
            ev.contains(&NatsEvent::Disconnected {
                server,
                reason: DisconnectReason::ServerError(fatal.into())
            }),
            "{ev:?}"
        );
        server = t.handshake();
        t.events();
    }
    assert_eq!(t.c.stats().server_errors, 14);
    assert_eq!(t.c.stats().fatal_server_errors, 10);
}

#[test]
fn auth_failure_is_reported_and_backs_off() {
    let mut t = T::new(cfg(&[1]));
    t.connect();
    t.input(INFO);
    t.take_out();
    t.input(b"-ERR 'Authorization Violation'\r\n");
    assert!(t.close_if_asked());
    let ev = t.events();
    assert_eq!(
        ev,
        vec![
            NatsEvent::ServerError {
                server: addr(1),
                message: "Authorization Violation".into(),
                fatal: true
            },
            NatsEvent::ConnectFailed {
                server: addr(1),
                reason: DisconnectReason::ServerError("Authorization Violation".into())
            }
        ]
    );
    assert!(t.wait_until_attempt() >= Duration::from_millis(50));
}

#[test]
fn tls_required_is_given_up() {
    let mut t = T::new(cfg(&[1]));
    t.connect();
    t.input(b"INFO {\"tls_required\":true}\r\n");
    assert_eq!(t.out_text(), "", "no CONNECT in clear text");
    assert!(t.close_if_asked());
    assert!(t.events().contains(&NatsEvent::ConnectFailed {
        server: addr(1),
        reason: DisconnectReason::TlsRequired
    }));
}

#[test]
fn max_payload_is_honoured() {
    let mut t = T::new(cfg(&[1]));
    // Queued before any INFO under the default limit...
    t.c.publish("big", &[0; 2000]).unwrap();
    t.c.publish("small", &[0; 10]).unwrap();
    assert_eq!(
        t.c.publish("huge", &vec![0; DEFAULT_MAX_PAYLOAD + 1]),
        Err(NatsError::PayloadTooLarge {
            len: DEFAULT_MAX_PAYLOAD + 1,
            max: DEFAULT_MAX_PAYLOAD
        })
    );
    // ...then a server with a smaller one: the big one is dropped at flush.
    t.handshake_with(b"INFO {\"max_payload\":1000}\r\n");
    assert_eq!(t.c.max_payload(), 1000);
    let out = t.take_out();
    assert!(out.starts_with(b"PUB small 10\r\n"), "{out:?}");
    assert_eq!(t.c.stats().dropped_max_payload, 2);
    assert_eq!(
        t.c.publish("x", &[0; 1001]),
        Err(NatsError::PayloadTooLarge {
            len: 1001,
            max: 1000
        })
    );
    assert_eq!(t.c.stats().dropped_max_payload, 3);
    t.c.publish("x", &[0; 1000]).unwrap();
    // Inbound: a MSG over max_payload is a protocol error.
    let sid = t.c.subscribe("in").unwrap();
    t.input(format!("MSG in {sid} 1001\r\n").as_bytes());
    assert!(t.c.wants_close());
    assert_eq!(t.c.stats().protocol_errors, 1);
}

#[test]
fn disconnected_queue_is_bounded_and_drops_the_oldest() {
    let mut c = cfg(&[1]);
    c.max_pending_bytes = 1000;
    let mut t = T::new(c);
    let payload = [b'p'; 80];
    // "PUB s.NN 80\r\n" (13) + 80 + 2 = 95 bytes each.
    for i in 0..30 {
        t.c.publish(&format!("s.{i:02}"), &payload).unwrap();
        assert!(t.c.pending_bytes() <= 1000);
    }
    assert_eq!(t.c.pending_messages(), 10);
    assert_eq!(t.c.pending_bytes(), 950);
    assert_eq!(t.c.stats().dropped_queue_full, 20);
    // Flushed after the handshake: the newest ten, in order.
    t.handshake();
    let out = t.out_text();
    let subjects: Vec<&str> = out
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("PUB "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let want: Vec<String> = (20..30).map(|i| format!("s.{i:02}")).collect();
    assert_eq!(subjects, want);
    assert_eq!(t.c.pending_bytes(), 0);
}

#[test]
fn a_message_larger_than_the_queue_is_queued_alone() {
    let mut c = cfg(&[1]);
    c.max_pending_bytes = 1000;
    let mut t = T::new(c);
    t.c.publish("a", &[1; 80]).unwrap();
    t.c.publish("big", &[0; 990]).unwrap();
    assert_eq!(t.c.pending_messages(), 1);
    assert_eq!(t.c.pending_bytes(), 1005);
    assert_eq!(t.c.stats().dropped_queue_full, 1);
    t.c.publish("b", &[2; 80]).unwrap();
    assert_eq!(t.c.pending_messages(), 1, "the big one made room");
    assert_eq!(t.c.pending_bytes(), 92);
    // No queue at all.
    let mut c = cfg(&[1]);
    c.max_pending_bytes = 0;
    let mut t = T::new(c);
    assert_eq!(
        t.c.publish("a", b"x"),
        Err(NatsError::QueueFull { frame: 12, max: 0 })
    );
    assert_eq!(t.c.stats().dropped_queue_full, 1);
}

#[test]
fn a_server_that_does_not_read_cannot_grow_memory() {
    let mut c = cfg(&[1]);
    c.max_pending_bytes = 10_000;
    c.max_transmit_bytes = 4096;
    let mut t = T::new(c);
    t.handshake();
    for _ in 0..1000 {
        t.c.publish("s", &[1; 100]).unwrap();
        assert!(t.c.transmit().len() <= 4096);
        assert!(t.c.pending_bytes() <= 10_000);
    }
    assert!(t.c.stats().dropped_queue_full > 800);
    // Writing some lets queued publishes follow, in order.
    let before = t.c.stats().msgs_out;
    t.c.advance_transmit(2048);
    assert!(t.c.stats().msgs_out > before);
    assert!(t.c.transmit().len() <= 4096);
    // A server that floods PINGs and never reads our PONGs is given up on.
    let pings = PING_FLOOD.repeat(10_000);
    for _ in 0..1000 {
        t.input(&pings);
        assert!(t.c.transmit().len() <= t.c.transmit_limit());
        if t.c.wants_close() {
            break;
        }
    }
    assert!(t.c.wants_close());
    assert_eq!(t.c.stats().output_overflows, 1);
    t.c.handle_disconnected(t.now);
    assert!(t.c.transmit().is_empty());
    assert!(t.c.stats().lost_transmit_bytes > 0);
}

const PING_FLOOD: &[u8] = b"PING\r\n";

#[test]
fn resubscribe_after_every_reconnect() {
    let mut t = T::new(cfg(&[1, 2]));
    let a = t.c.subscribe("a").unwrap();
    let b = t.c.subscribe("b.*").unwrap();
    let (_, hs) = t.handshake_with(INFO);
    assert!(hs.contains(&format!("SUB a {a}\r\nSUB b.* {b}\r\nPING\r\n")));
    // While up: SUB and UNSUB go out at once.
    let c = t.c.subscribe("c").unwrap();
    assert_eq!(t.out_text(), format!("SUB c {c}\r\n"));
    t.c.unsubscribe(a);
    assert_eq!(t.out_text(), format!("UNSUB {a}\r\n"));
    t.c.unsubscribe(a);
    t.c.unsubscribe(999);
    assert_eq!(t.out_text(), "", "unknown sids are ignored");
    for _ in 0..3 {
        t.c.handle_disconnected(t.now);
        let (_, hs) = t.handshake_with(INFO);
        assert!(
            hs.ends_with(&format!("SUB b.* {b}\r\nSUB c {c}\r\nPING\r\n")),
            "{hs}"
        );
        assert!(!hs.contains(&format!("SUB a {a}")));
    }
    assert_eq!(t.c.stats().reconnects, 3);
    assert_eq!(t.c.subscriptions().count(), 2);
    assert!(matches!(
        t.c.subscribe("bad subject"),
        Err(NatsError::InvalidSubject(_))
    ));
    assert!(matches!(
        t.c.subscribe("a.>.b"),
        Err(NatsError::InvalidSubject(_))
    ));
    assert!(matches!(
        t.c.publish("a.*", b""),
        Err(NatsError::InvalidSubject(_))
    ));
    for i in t.c.subscriptions().count()..MAX_SUBSCRIPTIONS {
        t.c.subscribe(&format!("n.{i}")).unwrap();
    }
    assert_eq!(
        t.c.subscribe("one.more"),
        Err(NatsError::TooManySubscriptions)
    );
}

#[test]
fn messages_are_delivered_and_odd_ones_counted() {
    let mut t = T::new(cfg(&[1]));
    let sid = t.c.subscribe("a.>").unwrap();
    t.connect();
    // MSG before INFO makes no sense.
    t.input(b"MSG a.b 1 1\r\nx\r\n");
    assert!(t.close_if_asked());
    assert!(t.msgs.is_empty());
    t.advance(t.wait_until_attempt());
    t.handshake();
    t.input(format!("MSG a.b {sid} 5\r\nhello\r\nMSG a.c {sid} INBOX.9 0\r\n\r\n").as_bytes());
    t.input(b"MSG a.d 99 1\r\nx\r\n");
    t.input(format!("HMSG a.e {sid} 12 13\r\nNATS/1.0\r\n\r\nx\r\n").as_bytes());
    assert_eq!(
        t.msgs,
        vec![
            ("a.b".into(), sid, None, b"hello".to_vec()),
            ("a.c".into(), sid, Some("INBOX.9".into()), vec![]),
        ]
    );
    let s = t.c.stats();
    assert_eq!((s.msgs_in, s.bytes_in), (2, 5));
    assert_eq!(s.dropped_unknown_sid, 1);
    assert_eq!(s.dropped_hmsg, 1);
    assert_eq!(t.c.state(), NatsState::Connected);
    // Non-UTF-8 subject: dropped, counted, link kept.
    let mut raw = b"MSG a.".to_vec();
    raw.push(0xff);
    raw.extend_from_slice(format!(" {sid} 1\r\nx\r\n").as_bytes());
    t.input(&raw);
    assert_eq!(t.c.stats().dropped_bad_subject, 1);
    assert_eq!(t.c.state(), NatsState::Connected);
    // Garbage: protocol error, link closed.
    t.input(b"BOGUS\r\n");
    assert!(t.close_if_asked());
    assert!(matches!(
        &t.events()[..],
        [
            ..,
            NatsEvent::Disconnected {
                reason: DisconnectReason::Protocol(ProtoError::UnknownOp),
                ..
            }
        ]
    ));
}

#[test]
fn input_split_anywhere_gives_the_same_result() {
    let mut stream = INFO.to_vec();
    stream.extend_from_slice(b"PONG\r\nPING\r\nMSG a 1 3\r\nabc\r\nMSG a 1 INBOX 4\r\nwxyz\r\n");
    let run = |chunks: &[&[u8]]| {
        let mut t = T::new(cfg(&[1]));
        t.c.subscribe("a").unwrap();
        t.connect();
        for c in chunks {
            t.input(c);
        }
        (t.msgs.clone(), t.out_text(), t.c.state())
    };
    let whole = run(&[&stream]);
    assert_eq!(whole.0.len(), 2);
    assert_eq!(whole.2, NatsState::Connected);
    for i in 0..=stream.len() {
        assert_eq!(run(&[&stream[..i], &stream[i..]]), whole, "split at {i}");
    }
}

#[test]
fn close_is_final() {
    let mut t = T::new(cfg(&[1]));
    t.handshake();
    t.events();
    t.c.close();
    assert!(t.close_if_asked());
    assert_eq!(t.c.state(), NatsState::Closed);
    assert_eq!(
        t.events(),
        vec![NatsEvent::Disconnected {
            server: addr(1),
            reason: DisconnectReason::Closed
        }]
    );
    assert_eq!(t.c.poll_connect(t.now + Duration::from_secs(100)), None);
    assert_eq!(t.c.poll_timeout(), None);
    assert_eq!(t.c.publish("a", b""), Err(NatsError::Closed));
    assert_eq!(t.c.subscribe("a"), Err(NatsError::Closed));
    // Closing while waiting: closed at once.
    let mut t = T::new(cfg(&[1]));
    t.c.close();
    assert_eq!(t.c.state(), NatsState::Closed);
}

#[test]
fn timers_are_harmless_early_and_repeated() {
    let mut t = T::new(cfg(&[1]));
    t.handshake();
    t.events();
    let due = t.c.poll_timeout().unwrap();
    for _ in 0..100 {
        t.c.handle_timeout(t.now);
        t.c.handle_timeout(due - Duration::from_millis(1));
    }
    assert_eq!(t.out_text(), "");
    assert_eq!(t.c.poll_timeout(), Some(due));
    t.c.handle_timeout(due);
    t.c.handle_timeout(due);
    assert_eq!(t.out_text(), "PING\r\n", "one PING per interval");
}

#[test]
fn stale_calls_are_ignored() {
    let mut t = T::new(cfg(&[1]));
    t.c.handle_connected(t.now);
    t.c.handle_disconnected(t.now);
    t.input(INFO);
    assert_eq!(t.c.state(), NatsState::Waiting);
    assert!(t.c.transmit().is_empty());
    assert_eq!(t.c.stats().connect_failures, 0);
    t.c.advance_transmit(1000);
    assert!(t.events().is_empty());
}

#[test]
fn events_are_bounded() {
    let mut t = T::new(cfg(&[1]));
    t.handshake();
    for _ in 0..(2 * MAX_EVENTS) {
        t.input(b"-ERR 'Permissions Violation for Publish to x'\r\n");
    }
    assert_eq!(t.events().len(), MAX_EVENTS);
    assert_eq!(t.c.stats().events_dropped, MAX_EVENTS as u64 + 1);
}

#[test]
fn config_errors_name_the_field() {
    let field = |f: &dyn Fn(&mut NatsConfig)| {
        let mut c = cfg(&[1]);
        f(&mut c);
        c.validate().err().map(|e| e.field)
    };
    assert_eq!(field(&|_| {}), None);
    assert_eq!(field(&|c| c.servers.clear()), Some("servers"));
    assert_eq!(field(&|c| c.servers.push(addr(1))), Some("servers"));
    assert_eq!(field(&|c| c.servers.push(addr(0))), Some("servers"));
    assert_eq!(
        field(&|c| c.servers = (1..=65).map(addr).collect()),
        Some("servers")
    );
    assert_eq!(field(&|c| c.name = "n".repeat(300)), Some("name"));
    assert_eq!(
        field(&|c| c.auth = NatsAuth::Token(String::new())),
        Some("auth")
    );
    assert_eq!(
        field(&|c| c.auth = NatsAuth::UserPassword {
            user: String::new(),
            password: "p".into()
        }),
        Some("auth")
    );
    assert_eq!(
        field(&|c| c.ping_interval = Duration::ZERO),
        Some("ping_interval")
    );
    assert_eq!(
        field(&|c| c.connect_timeout = Duration::ZERO),
        Some("connect_timeout")
    );
    assert_eq!(
        field(&|c| c.reconnect_base = Duration::ZERO),
        Some("reconnect_base")
    );
    assert_eq!(
        field(&|c| c.reconnect_max = Duration::from_millis(1)),
        Some("reconnect_max")
    );
    assert_eq!(field(&|c| c.max_pings_out = 0), Some("max_pings_out"));
    assert_eq!(
        field(&|c| c.max_transmit_bytes = 10),
        Some("max_transmit_bytes")
    );
    assert_eq!(
        field(&|c| c.max_pending_bytes = 2 << 30),
        Some("max_pending_bytes")
    );
    let e = NatsClient::new(cfg(&[]), Instant::now(), 0).unwrap_err();
    assert_eq!(e.to_string(), "nats config: servers is empty");
}
