//! Test helpers for the crate's unit tests: a relay core with the committed test key, and
//! sans-IO clients registered through it by moving datagrams by hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::RelayCore;
use crate::client::{ClientSession, Event};
use crate::config::Config;
use crate::crypto::key::ServerKey;
use crate::crypto::rng::Rng;

/// Where relay datagrams "come from" in this sans-IO harness (clients lock onto it).
const RELAY: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 254),
    9,
));

/// The committed 2048-bit test key (fuzz/relay_key.pem): no key generation in unit tests.
pub(crate) fn key() -> ServerKey {
    ServerKey::from_pkcs8_pem(include_str!("../../fuzz/relay_key.pem")).expect("test key")
}

/// A relay core with `cfg`, seeded deterministically. Its wall clock is the real one, as the
/// clients' (`ClientSession` stamps tokens with the system time).
pub(crate) fn core(cfg: Config, now: Instant) -> RelayCore {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    RelayCore::new(cfg, key(), Rng::from_seed([1; 32]), now, unix).expect("valid config")
}

/// `127.0.0.1:port`.
pub(crate) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A relay core and the datagrams it sent, by destination, waiting to be delivered.
pub(crate) struct Net {
    pub(crate) core: RelayCore,
    pub(crate) now: Instant,
    mail: HashMap<SocketAddr, Vec<Vec<u8>>>,
}

impl Net {
    pub(crate) fn new(cfg: Config) -> Net {
        let now = Instant::now();
        Net {
            core: core(cfg, now),
            now,
            mail: HashMap::new(),
        }
    }

    /// Move what the core queued into the mailboxes.
    pub(crate) fn flush(&mut self) {
        for (to, d) in self.core.transmits() {
            self.mail.entry(to).or_default().push(d.to_vec());
        }
        let n = self.core.transmits().count();
        self.core.advance_transmits(n, 0);
    }

    /// Everything sent to `to` so far, taken out of its mailbox.
    pub(crate) fn take(&mut self, to: SocketAddr) -> Vec<Vec<u8>> {
        self.flush();
        self.mail.remove(&to).unwrap_or_default()
    }

    /// Deliver `to`'s mail to `c`; returns how many datagrams.
    pub(crate) fn deliver(&mut self, to: SocketAddr, c: &mut ClientSession) -> usize {
        let mail = self.take(to);
        for d in &mail {
            c.handle_datagram(self.now, RELAY, d);
        }
        mail.len()
    }

    /// Send what `c` queued to the core as coming from `from`.
    pub(crate) fn send(&mut self, from: SocketAddr, c: &mut ClientSession) {
        while let Some(d) = c.poll_transmit() {
            self.core.handle_datagram(self.now, from, &d);
        }
    }

    /// A client at `127.0.0.1:port`, registered (its Ready event consumed); and its id.
    pub(crate) fn client(&mut self, port: u16) -> (ClientSession, u32) {
        let a = addr(port);
        let mut c = ClientSession::new(Rng::from_seed([port as u8; 32]), None, None, self.now);
        for _ in 0..8 {
            self.send(a, &mut c);
            self.core.process_registrations(self.now, 8);
            self.deliver(a, &mut c);
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
}
