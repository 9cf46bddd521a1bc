//! Test helpers for the crate's unit tests: a relay core with the committed test key, and
//! sans-IO clients registered through it by moving datagrams by hand.

use std::net::SocketAddr;
use std::time::Instant;

use super::RelayCore;
use crate::client::{ClientSession, Event};
use crate::config::Config;
use crate::crypto::key::ServerKey;
use crate::crypto::rng::Rng;

/// The committed 2048-bit test key (fuzz/relay_key.pem): no key generation in unit tests.
pub(crate) fn key() -> ServerKey {
    ServerKey::from_pkcs8_pem(include_str!("../../fuzz/relay_key.pem")).expect("test key")
}

/// A relay core with `cfg`, seeded deterministically.
pub(crate) fn core(cfg: Config, now: Instant) -> RelayCore {
    RelayCore::new(cfg, key(), Rng::from_seed([1; 32]), now, 1_700_000_000).expect("valid config")
}

/// `127.0.0.1:port`.
pub(crate) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Move everything the core queued for `to` into `c`; drop the rest. Returns how many.
pub(crate) fn deliver(
    core: &mut RelayCore,
    now: Instant,
    to: SocketAddr,
    c: &mut ClientSession,
) -> usize {
    let out: Vec<_> = core
        .transmits()
        .filter(|(a, _)| *a == to)
        .map(|(_, d)| d.to_vec())
        .collect();
    let n = core.transmits().count();
    core.advance_transmits(n, 0);
    for d in &out {
        c.handle_datagram(now, d);
    }
    out.len()
}

/// Send what `c` queued to the core as coming from `from`.
pub(crate) fn send(core: &mut RelayCore, now: Instant, from: SocketAddr, c: &mut ClientSession) {
    while let Some(d) = c.poll_transmit() {
        core.handle_datagram(now, from, &d);
    }
}

/// A client at `127.0.0.1:port`, registered; returns it and its id.
pub(crate) fn client(core: &mut RelayCore, now: Instant, port: u16) -> (ClientSession, u32) {
    let a = addr(port);
    let mut c = ClientSession::new(Rng::from_seed([port as u8; 32]), None, None, now);
    for _ in 0..8 {
        send(core, now, a, &mut c);
        core.process_registrations(now, 8);
        deliver(core, now, a, &mut c);
        if let Some(id) = c.id() {
            while c
                .poll_event()
                .is_some_and(|e| !matches!(e, Event::Ready { .. }))
            {}
            return (c, id);
        }
    }
    panic!("client at port {port} did not register");
}
