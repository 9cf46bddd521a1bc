//! The client session's rules against a forging network: REJECT back-off, a key that is not
//! the pinned one, its own LEAVE on the group, group keys after the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::core::testkit;

const RELAY: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 254),
    9,
));

fn reject(code: u16) -> Vec<u8> {
    let mut d = Vec::new();
    Outer::Reject {
        code,
        reason: b"relay full",
    }
    .write(&mut d);
    d
}

fn fresh(now: Instant) -> ClientSession {
    let mut c = ClientSession::new(Rng::from_seed([7; 32]), None, None, now);
    while c.poll_transmit().is_some() {}
    c
}

#[test]
fn reject_5_backs_off_1_2_4_8_8_seconds_and_the_hello_schedule_resumes_between() {
    let t0 = Instant::now();
    let mut c = fresh(t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..5 {
        c.handle_datagram(now, RELAY, &reject(5));
        let until = c.poll_timeout().expect("a retry is scheduled");
        waits.push((until - now).as_secs());
        // A forged REJECT(5) during the back-off neither restarts nor extends it.
        c.handle_datagram(now + Duration::from_millis(100), RELAY, &reject(5));
        assert_eq!(c.poll_timeout(), Some(until));
        now = until;
        c.handle_timeout(now);
        assert!(
            c.poll_transmit().is_some(),
            "a HELLO when the back-off ends"
        );
    }
    assert_eq!(waits, [1, 2, 4, 8, 8]);
    assert!(c.stats().rejects_ignored >= 5);
    assert!(!c.is_closed());
}

#[test]
fn a_restart_reject_or_a_late_cookie_does_not_cut_a_back_off_short() {
    let t0 = Instant::now();
    let mut c = fresh(t0);
    c.handle_datagram(t0, RELAY, &reject(5));
    let until = c.poll_timeout().unwrap();
    c.handle_datagram(t0 + Duration::from_millis(300), RELAY, &reject(2));
    assert!(
        c.poll_transmit().is_none(),
        "REJECT(2) restarted the handshake"
    );
    assert_eq!(c.poll_timeout(), Some(until));
}

#[test]
fn a_key_other_than_the_pinned_one_ends_the_attempt_not_the_client() {
    let mut net = testkit::Net::new(crate::Config::default());
    let me = testkit::addr(4100);
    // HELLO -> COOKIE -> KEY_REQUEST -> PUBLIC_KEY (the relay's: not the pin).
    let mut c = ClientSession::new(Rng::from_seed([8; 32]), Some([0xab; 32]), None, net.now);
    for _ in 0..3 {
        net.send(me, &mut c);
        net.deliver(me, &mut c);
    }
    assert!(!c.is_closed(), "one unexpected key closed the client");
    assert!(c.take_error().is_none());
    assert_eq!(c.stats().bad_keys, 1);
    assert!(matches!(
        c.key_mismatch(),
        Some(ClientError::FingerprintMismatch { .. })
    ));
    assert_eq!(
        c.relay_addr(),
        None,
        "the next attempt learns the address anew"
    );
    assert_eq!(c.id(), None);
}

#[test]
fn its_own_leave_on_the_group_is_checked_with_a_probe_not_reported() {
    let mut net = testkit::Net::new(crate::Config::default());
    let (mut c, id) = net.client(4200);
    let now = net.now;
    while c.poll_event().is_some() {}
    while c.poll_transmit().is_some() {}
    c.on_item(now, None, Body::Leave { id, reason: 2 });
    assert!(c.poll_event().is_none(), "its own LEAVE was reported");
    assert!(c.poll_transmit().is_some(), "no probe was sent");
    assert!(c.liveness.probing());
}
