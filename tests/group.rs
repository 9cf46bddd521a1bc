//! Group mode on loopback multicast through the real driver (TTL 0, interface 127.0.0.1):
//! members exchange messages sent once to the distribution group; a kicked member still
//! receives the group's datagrams and cannot open them; version-1 clients keep working.

mod common;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use common::*;
use mcrelay::Config;
use mcrelay::client::{Client, Event, group_socket};
use mcrelay::wire::Outer;

fn group_addr(relay: &TestRelay) -> SocketAddrV4 {
    SocketAddrV4::new(relay.group, relay.port + 1)
}

/// Every member hears everyone else's message exactly once.
fn round(cs: &mut [Client], tag: &str) {
    let ids: Vec<u32> = cs.iter().map(Client::id).collect();
    for (i, c) in cs.iter_mut().enumerate() {
        c.send(format!("{tag} from {i}").as_bytes()).unwrap();
    }
    for (i, c) in cs.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < ids.len() - 1 {
            match c.recv_message(T).unwrap() {
                Some(m) => got.push(m),
                None => panic!("member {i} got only {got:?}"),
            }
        }
        got.sort();
        let mut want: Vec<(u32, Vec<u8>)> = (0..ids.len())
            .filter(|&j| j != i)
            .map(|j| (ids[j], format!("{tag} from {j}").into_bytes()))
            .collect();
        want.sort();
        assert_eq!(got, want, "member {i}");
        assert_eq!(c.recv_message(Duration::from_millis(50)).unwrap(), None);
    }
}

/// Let every member read what is waiting (key deliveries, the member list) and answer it.
fn settle(cs: &mut [Client]) {
    for _ in 0..3 {
        for c in cs.iter_mut() {
            while c.recv_event(Duration::from_millis(30)).unwrap().is_some() {}
        }
    }
}

fn members(relay: &TestRelay, n: usize) -> Vec<Client> {
    let mut cs: Vec<Client> = Vec::new();
    for _ in 0..n {
        let c = relay.client();
        let id = c.id();
        for o in cs.iter_mut() {
            assert!(
                wait_for(o, T, |e| matches!(e, Event::Join { id: j, .. } if *j == id)).is_some()
            );
        }
        cs.push(c);
    }
    cs
}

#[test]
fn five_members_chat_over_the_distribution_group() {
    let relay = TestRelay::start_group(Config::default());
    let mut cs = members(&relay, 5);
    let mut ctl = relay.control();
    assert_eq!(ctl.stat("group_mode"), 1);
    // Let every key acknowledgement land, then each message is one group datagram.
    settle(&mut cs);
    assert_eq!(ctl.stat("group_pending_acks"), 0);
    let g0 = ctl.stat("group_datagrams");
    let out0 = ctl.stat("datagrams_out");
    round(&mut cs, "hello");
    assert_eq!(ctl.stat("group_datagrams") - g0, 5);
    assert_eq!(ctl.stat("datagrams_out") - out0, 5, "nothing but the five");
    // A 60 KiB message too, as sealed pieces on the group.
    let big: Vec<u8> = (0..60 * 1024u32).map(|i| (i % 253) as u8).collect();
    let id0 = cs[0].id();
    cs[0].send(&big).unwrap();
    for c in &mut cs[1..] {
        assert_eq!(c.recv_message(T).unwrap(), Some((id0, big.clone())));
    }
}

#[test]
fn a_kicked_member_receives_the_group_but_cannot_read_it() {
    let relay = TestRelay::start_group(Config::default());
    let mut cs = members(&relay, 4);
    settle(&mut cs);
    round(&mut cs, "before");
    // An eavesdropper's socket on the distribution group, as the kicked member keeps.
    let ear = group_socket(group_addr(&relay), std::net::Ipv4Addr::LOCALHOST).unwrap();
    ear.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let victim = cs.pop().unwrap();
    let vid = victim.id();
    let mut ctl = relay.control();
    let epoch = ctl.stat("group_epoch");
    assert_eq!(ctl.cmd(&format!("kick {vid}"))[0], format!("kicked {vid}"));
    for c in cs.iter_mut() {
        assert!(wait_for(c, T, |e| matches!(e, Event::Leave { id, .. } if *id == vid)).is_some());
    }
    // The first round after the kick travels as unicast copies while the new key is being
    // acknowledged; the second on the group.
    round(&mut cs, "after");
    settle(&mut cs);
    assert_eq!(ctl.stat("group_pending_acks"), 0);
    round(&mut cs, "later");
    assert!(
        ctl.stat("group_epoch") > epoch,
        "a fresh epoch after the kick"
    );
    // The datagrams reached the group (the ear got them) under an epoch newer than any the
    // victim was given.
    let mut buf = [0u8; 2048];
    let mut newer = 0;
    let t0 = Instant::now();
    while let Ok((n, _)) = ear.recv_from(&mut buf) {
        if let Ok(Outer::Group { epoch: e, .. }) = Outer::parse(&buf[..n])
            && u64::from(e) > epoch
        {
            newer += 1;
        }
        if t0.elapsed() > T {
            break;
        }
    }
    assert!(newer >= 3, "{newer} group datagrams of the new epoch seen");
    let mut v = victim;
    let held = v.session().group_epoch();
    assert!(held.is_some_and(|e| u64::from(e) <= epoch), "{held:?}");
    drop(v);
}

#[test]
fn version_1_clients_and_group_members_side_by_side() {
    let relay = TestRelay::start_group(Config::default());
    let mut cs = members(&relay, 2);
    let old = relay.client_up_to(1);
    let oid = old.id();
    for c in cs.iter_mut() {
        assert!(wait_for(c, T, |e| matches!(e, Event::Join { id, .. } if *id == oid)).is_some());
    }
    cs.push(old);
    settle(&mut cs);
    round(&mut cs, "mixed");
    assert_eq!(cs[2].session().version(), 1);
    assert!(cs[2].session().group_addr().is_none());
    let mut ctl = relay.control();
    assert_eq!(ctl.cmd("rekey").last().unwrap(), "OK");
    round(&mut cs, "rekeyed");
    settle(&mut cs);
    round(&mut cs, "on the new key");
}
