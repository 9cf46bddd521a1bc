//! End-to-end over real loopback multicast sockets: the relay's core promises.

mod common;

use std::time::Duration;

use common::*;
use mcrelay::client::Event;
use mcrelay::core::Config;

#[test]
fn three_clients_exchange_messages() {
    let relay = TestRelay::start(Config::default());
    let mut a = relay.client();
    let mut b = relay.client();
    assert!(
        wait_for(&mut a, T, |e| *e
            == Event::Join {
                id: b.id(),
                name: None
            })
        .is_some()
    );
    let mut c = relay.client();
    for x in [&mut a, &mut b] {
        let cid = c.id();
        assert!(
            wait_for(x, T, |e| *e
                == Event::Join {
                    id: cid,
                    name: None
                })
            .is_some()
        );
    }
    assert!(a.id() != b.id() && b.id() != c.id() && a.id() != c.id());

    a.send(b"hello from a").unwrap();
    for x in [&mut b, &mut c] {
        assert_eq!(
            x.recv_message(T).unwrap(),
            Some((a.id(), b"hello from a".to_vec()))
        );
    }
    b.send(b"and b").unwrap();
    c.send(b"and c").unwrap();
    let got_a: Vec<_> = (0..2)
        .map(|_| a.recv_message(T).unwrap().unwrap())
        .collect();
    assert!(got_a.contains(&(b.id(), b"and b".to_vec())));
    assert!(got_a.contains(&(c.id(), b"and c".to_vec())));
    assert_eq!(
        b.recv_message(T).unwrap(),
        Some((c.id(), b"and c".to_vec()))
    );
    assert_eq!(
        c.recv_message(T).unwrap(),
        Some((b.id(), b"and b".to_vec()))
    );
    // The sender never gets its own message back.
    assert_eq!(a.recv_message(Duration::from_millis(300)).unwrap(), None);
    assert_eq!(b.recv_message(Duration::from_millis(100)).unwrap(), None);
    let stats = relay.stop();
    assert_eq!(stats.messages_in, 3);
    assert_eq!(stats.deliveries, 6);
    assert_eq!(stats.handshakes_ok, 3);
}

#[test]
fn a_60_kib_message_arrives_whole_at_every_other_client() {
    let relay = TestRelay::start(Config::default());
    let mut a = relay.client();
    let mut b = relay.client();
    let mut c = relay.client();
    let big: Vec<u8> = (0..60 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    a.send(&big).unwrap();
    for x in [&mut b, &mut c] {
        let (from, data) = x.recv_message(T).unwrap().expect("big message");
        assert_eq!(from, a.id());
        assert_eq!(data.len(), big.len());
        assert!(data == big);
    }
    // And the other way round, through the relay's fragmenter and the client's reassembler.
    b.send(&big[..50_000]).unwrap();
    assert_eq!(
        a.recv_message(T).unwrap().unwrap().1,
        big[..50_000].to_vec()
    );
    let stats = relay.stop();
    assert!(stats.reassembled >= 2, "{stats:?}");
    assert!(stats.fragments_out > 100, "{stats:?}");
}

#[test]
fn silent_client_times_out_and_others_are_told() {
    let cfg = Config {
        client_timeout: Duration::from_millis(400),
        keepalive_interval: Duration::from_millis(100),
        ..Config::default()
    };
    let relay = TestRelay::start(cfg);
    let silent = relay.client();
    let silent_id = silent.id();
    let mut b = relay.client();
    // `silent` never calls recv_event again, so it sends no keep-alives; `b` does.
    let ev = wait_for(&mut b, Duration::from_secs(5), |e| {
        matches!(e, Event::Leave { .. })
    });
    assert_eq!(
        ev,
        Some(Event::Leave {
            id: silent_id,
            reason: 2
        })
    );
    // b, which kept alive, is still served: a newcomer's message reaches it.
    let mut c = relay.client();
    c.send(b"still here?").unwrap();
    assert_eq!(
        b.recv_message(T).unwrap(),
        Some((c.id(), b"still here?".to_vec()))
    );
    drop(silent);
    let stats = relay.stop();
    assert_eq!(stats.timeouts, 1);
}

#[test]
fn disconnect_is_acknowledged_and_announced() {
    let relay = TestRelay::start(Config::default());
    let mut a = relay.client();
    let mut b = relay.client();
    let bid = b.id();
    assert!(
        wait_for(&mut a, T, |e| *e
            == Event::Join {
                id: bid,
                name: None
            })
        .is_some()
    );
    b.disconnect().unwrap();
    assert_eq!(
        wait_for(&mut b, T, |e| matches!(e, Event::Closed { .. })),
        Some(Event::Closed { reason: 1 })
    );
    assert_eq!(
        wait_for(&mut a, T, |e| matches!(e, Event::Leave { .. })),
        Some(Event::Leave { id: bid, reason: 1 })
    );
    let mut ctl = relay.control();
    assert_eq!(ctl.stat("clients"), 1);
}

#[test]
fn exit_on_the_control_port_stops_the_relay_and_notifies_clients() {
    let relay = TestRelay::start(Config::default());
    let mut a = relay.client();
    let mut b = relay.client();
    let mut ctl = relay.control();
    let reply = ctl.cmd("exit");
    assert_eq!(reply.last().unwrap(), "OK");
    for x in [&mut a, &mut b] {
        assert_eq!(
            wait_for(x, T, |e| *e == Event::Shutdown),
            Some(Event::Shutdown)
        );
    }
    let stats = relay.join();
    assert_eq!(stats.handshakes_ok, 2);
}

#[test]
fn admission_tokens_admit_known_clients_and_name_them() {
    use mcrelay::client::{Client, ClientError};
    let list = [("alice", "tok-a"), ("bob", "tok-b")]
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let relay = TestRelay::start(Config {
        admission: Some(list),
        ..Config::default()
    });
    let mut cfg = relay.client_config();
    cfg.admission = Some(("alice".into(), "tok-a".into()));
    let mut alice = Client::connect(&cfg, T).unwrap();
    cfg.admission = Some(("bob".into(), "tok-b".into()));
    let mut bob = Client::connect(&cfg, T).unwrap();
    let bob_id = bob.id();
    assert!(
        wait_for(&mut alice, T, |e| *e
            == Event::Join {
                id: bob_id,
                name: Some("bob".into())
            })
        .is_some()
    );
    alice.send(b"hi bob").unwrap();
    let got = wait_for(&mut bob, T, |e| matches!(e, Event::Message { .. }));
    assert_eq!(
        got,
        Some(Event::Message {
            sender: alice.id(),
            name: Some("alice".into()),
            data: b"hi bob".to_vec()
        })
    );
    // Wrong token, unknown name, no credentials: refused with code 6, nobody else disturbed.
    for adm in [Some(("alice", "wrong")), Some(("eve", "tok-a")), None] {
        cfg.admission = adm.map(|(n, t)| (n.to_string(), t.to_string()));
        match Client::connect(&cfg, T) {
            Err(ClientError::Rejected { code: 6, .. }) => {}
            Err(e) => panic!("{adm:?}: unexpected error {e}"),
            Ok(_) => panic!("{adm:?} was admitted"),
        }
    }
    let mut ctl = relay.control();
    let clients = ctl.cmd("clients");
    assert!(
        clients.iter().any(|l| l.contains("name=alice")),
        "{clients:?}"
    );
    assert!(
        clients.iter().any(|l| l.contains("name=bob")),
        "{clients:?}"
    );
    // REJECT is unauthenticated: each refused client believes it only after FATAL_REJECTS.
    let tries = u64::from(mcrelay::client::FATAL_REJECTS);
    assert_eq!(ctl.stat("drop.not_admitted"), 3 * tries);
    assert_eq!(ctl.stat("clients"), 2);
}

/// One session per admission name (protocol.md §9): the same name registering again, from
/// another address, replaces the older session: it is told CLOSED(4), the others LEAVE(4).
#[test]
fn a_name_registering_again_replaces_its_older_session() {
    use mcrelay::client::Client;
    let list = [("alice", "tok-a"), ("bob", "tok-b")]
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let relay = TestRelay::start(Config {
        admission: Some(list),
        ..Config::default()
    });
    let mut cfg = relay.client_config();
    cfg.admission = Some(("bob".into(), "tok-b".into()));
    let mut bob = Client::connect(&cfg, T).unwrap();
    cfg.admission = Some(("alice".into(), "tok-a".into()));
    let mut first = Client::connect(&cfg, T).unwrap();
    let old = first.id();
    let mut second = Client::connect(&cfg, T).unwrap();
    assert_ne!(second.id(), old);
    assert!(
        wait_for(&mut first, T, |e| *e == Event::Closed { reason: 4 }).is_some(),
        "the older alice is told it was replaced"
    );
    assert!(
        wait_for(&mut bob, T, |e| *e == Event::Leave { id: old, reason: 4 }).is_some(),
        "bob sees the older alice leave, replaced"
    );
    second.send(b"still alice").unwrap();
    let got = wait_for(&mut bob, T, |e| matches!(e, Event::Message { .. }));
    assert!(matches!(got, Some(Event::Message { name: Some(n), .. }) if n == "alice"));
    assert_eq!(relay.control().stat("clients"), 2);
}

/// The same at `max_clients`: a full relay with admission names still lets a name replace its
/// own older session (a restarted device must not be locked out by its ghost); a name without
/// a session is still refused as full.
#[test]
fn a_full_relay_lets_a_name_replace_its_own_session() {
    use mcrelay::client::Client;
    let list = [("alice", "tok-a"), ("bob", "tok-b"), ("carol", "tok-c")]
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let relay = TestRelay::start(Config {
        admission: Some(list),
        max_clients: 2,
        ..Config::default()
    });
    let mut cfg = relay.client_config();
    cfg.admission = Some(("bob".into(), "tok-b".into()));
    let mut bob = Client::connect(&cfg, T).unwrap();
    cfg.admission = Some(("alice".into(), "tok-a".into()));
    let first = Client::connect(&cfg, T).unwrap();
    let old = first.id();
    let second = Client::connect(&cfg, T).expect("alice replaces her own session when full");
    assert_ne!(second.id(), old);
    assert!(
        wait_for(&mut bob, T, |e| *e == Event::Leave { id: old, reason: 4 }).is_some(),
        "bob sees the older alice leave, replaced"
    );
    cfg.admission = Some(("carol".into(), "tok-c".into()));
    let carol = Client::connect(&cfg, Duration::from_millis(2500));
    assert!(carol.is_err(), "a third name got into a full relay");
    let mut ctl = relay.control();
    assert_eq!(ctl.stat("clients"), 2);
    assert!(ctl.stat("drop.relay_full") >= 1);
}
