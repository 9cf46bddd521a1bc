//! Federation: `federation::wire::parse` on arbitrary plaintexts, and a `Federation` with its
//! `RelayCore` under arbitrary sequences of NATS payloads — raw bytes (they must not open),
//! arbitrary plaintexts sealed under the cluster key (they reach the parser), well-formed
//! messages of arbitrary peers, incarnations and sequence numbers, replays of what was
//! received or published —, time steps, link ups and downs, and local clients (real
//! `ClientSession`s registered through the core) that send messages and leave.
//!
//! Checked: no panic; whatever parses re-encodes to the same bytes (one encoding per
//! message); after every step the remote members within their caps, each carrying its
//! relay's id in its high byte and none this relay's own, a deadline always given, every
//! publish a valid sealed message of this relay with strictly increasing sequence numbers,
//! and nothing published that was received (a relay never re-publishes).
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcrelay::client::ClientSession;
use mcrelay::core::{MAX_REMOTE_MEMBERS, RelayCore, RosterDigest, relay_of};
use mcrelay::crypto::fernet::{self, FernetKey};
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;
use mcrelay::federation::wire::{self, Header, Msg};
use mcrelay::federation::{Federation, FederationConfig};
use mcrelay::{Config, Distribution, GroupConfig};

const KEY_PEM: &str = include_str!("../relay_key.pem");
const ME: u8 = 1;
const NAMES: &[Option<&str>] = &[None, Some("ann"), Some("bob.2"), Some("x_y-z")];

fn server_key() -> ServerKey {
    static K: OnceLock<rsa::PrivateKey> = OnceLock::new();
    let private = K.get_or_init(|| {
        use rsa::pkcs8::DecodePrivateKey;
        rsa::PrivateKey::from_pkcs8_pem(KEY_PEM).expect("fuzz/relay_key.pem")
    });
    ServerKey::from_private(private.clone()).expect("2048-bit key")
}

fn base() -> (Instant, u64) {
    static B: OnceLock<(Instant, u64)> = OnceLock::new();
    *B.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        (Instant::now(), unix)
    })
}

fn cluster_key() -> FernetKey {
    FernetKey::from_bytes(&[7; 32])
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Data { name: u8, len: u16 },
    Join { name: u8 },
    Leave { reason: u8 },
    Heartbeat { interval_ms: u16, members: u8, digest: u64, pairs: Vec<(u8, u16)> },
    Roster { part: u8, parts: u8, members: u8, digest: u64, clients: Vec<(u16, u8)> },
    Sync { target: u8 },
    Bye,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A payload as it may come from NATS: mostly it does not open.
    Raw(Vec<u8>),
    /// Any plaintext, sealed with the cluster key, at a clock offset.
    Sealed { plain: Vec<u8>, ts_off: i16 },
    /// A well-formed message of peer `origin`.
    Msg {
        origin: u8,
        incarnation: u8,
        seq: u16,
        client: u16,
        kind: Kind,
    },
    /// One of the payloads received or published so far, again.
    Replay(u8),
    Advance(u16),
    Timeout,
    LinkUp,
    LinkDown,
    /// Register a local client (at most two per input: RSA).
    Client,
    /// A local client sends `len` bytes.
    Send { client: u8, len: u16 },
    /// A local client leaves.
    Leave { client: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    group_mode: bool,
    ops: Vec<Op>,
}

struct H {
    core: RelayCore,
    fed: Federation,
    now: Instant,
    unix0_us: u64,
    start: Instant,
    up: bool,
    received: Vec<Vec<u8>>,
    published: Vec<Vec<u8>>,
    last_seq: u64,
    clients: Vec<(SocketAddr, ClientSession)>,
    rsa_left: usize,
    rng: Rng,
}

fn seal(plain: &[u8], unix: u64, rng: &mut Rng) -> Vec<u8> {
    let mut t = Vec::new();
    fernet::encrypt_raw_into(&cluster_key(), &rng.iv(), unix, plain, &mut t);
    t
}

impl H {
    fn unix(&self) -> u64 {
        self.unix0_us / 1_000_000 + self.now.saturating_duration_since(self.start).as_secs()
    }

    fn deliver(&mut self, payload: Vec<u8>) {
        self.fed.handle_message(self.now, &payload, &mut self.core);
        self.received.push(payload);
        if self.received.len() > 64 {
            self.received.remove(0);
        }
    }

    fn flush(&mut self, timeout: bool) {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut publish = |subject: &str, p: &[u8]| {
            assert_eq!(subject, "mcrelay.fuzz.1");
            out.push(p.to_vec());
            Ok(())
        };
        if timeout {
            self.fed.handle_timeout(self.now, &mut self.core, &mut publish);
        } else {
            self.fed.flush(self.now, &mut self.core, &mut publish);
        }
        let _ = self.fed.take_discard();
        for p in out {
            let mut plain = Vec::new();
            fernet::decrypt_raw_into(&cluster_key(), &p, &mut plain).expect("our own seal");
            let (h, _) = wire::parse(&plain).expect("we publish what we parse");
            assert_eq!(h.origin, ME);
            assert!(h.seq > self.last_seq, "sequence numbers grow");
            self.last_seq = h.seq;
            assert!(!self.received.contains(&p), "never re-published");
            self.published.push(p);
            if self.published.len() > 64 {
                self.published.remove(0);
            }
        }
        // What the core queued for its clients goes out (and to them).
        let n = self.core.transmits().count();
        let sent: Vec<(SocketAddr, Vec<u8>)> =
            self.core.transmits().map(|(a, d)| (a, d.to_vec())).collect();
        self.core.advance_transmits(n, 0);
        for (to, d) in sent {
            for (a, c) in &mut self.clients {
                if *a == to {
                    c.handle_datagram(self.now, SocketAddr::from(([127, 0, 0, 254], 9)), &d);
                }
            }
        }
        for (_, c) in &mut self.clients {
            while c.poll_event().is_some() {}
        }
    }

    fn from_clients(&mut self) {
        for (a, c) in &mut self.clients {
            while let Some(d) = c.poll_transmit() {
                self.core.handle_datagram(self.now, *a, &d);
            }
        }
        self.core.process_registrations(self.now, 2);
    }

    fn check(&self) {
        assert!(self.core.remote_client_count() <= MAX_REMOTE_MEMBERS);
        for c in self.core.remote_clients() {
            assert_eq!(relay_of(c.id), c.relay);
            assert_ne!(c.relay, ME);
            assert_ne!(c.relay, 0);
        }
        assert!(self.fed.poll_timeout().is_some());
        let peers = self.fed.peers(&self.core);
        assert!(peers.iter().all(|p| p.id != ME && p.id != 0));
    }
}

fn message<'a>(
    origin: u8,
    client: u16,
    kind: &Kind,
    seq: u64,
    bytes: &'a mut Vec<u8>,
) -> Option<Msg<'a>> {
    let origin = origin.max(2);
    let id = u32::from(origin) << 24 | u32::from(client).max(1);
    let name = |n: u8| NAMES[usize::from(n) % NAMES.len()];
    bytes.clear();
    Some(match kind {
        Kind::Data { name: n, len } => {
            bytes.resize(usize::from(*len) % 70_000, 0x5a);
            Msg::Data {
                sender: id,
                name: name(*n),
                data: bytes,
            }
        }
        Kind::Join { name: n } => Msg::Join {
            client: id,
            name: name(*n),
        },
        Kind::Leave { reason } => Msg::Leave {
            client: id,
            reason: *reason,
        },
        Kind::Heartbeat {
            interval_ms,
            members,
            digest,
            pairs,
        } => {
            for (r, n) in pairs.iter().take(8) {
                bytes.push(*r);
                bytes.extend_from_slice(&u64::from(*n).to_be_bytes());
            }
            Msg::Heartbeat {
                interval_ms: u32::from(*interval_ms),
                roster: RosterDigest {
                    members: u32::from(*members),
                    digest: *digest,
                },
                received: wire::heartbeat_pairs(bytes),
            }
        }
        Kind::Roster {
            part,
            parts,
            members,
            digest,
            clients,
        } => {
            for (c, n) in clients.iter().take(64) {
                let id = u32::from(origin) << 24 | u32::from(*c).max(1);
                wire::put_entry(bytes, id, name(*n));
            }
            let parts = u16::from(*parts % 4).max(1);
            let part = u16::from(*part) % parts;
            Msg::Roster {
                snapshot: seq.checked_sub(u64::from(part))?,
                part,
                parts,
                total: RosterDigest {
                    members: u32::from(*members),
                    digest: *digest,
                },
                entries: wire::roster_entries(bytes),
            }
        }
        Kind::Sync { target } => Msg::Sync { target: *target },
        Kind::Bye => Msg::Bye,
    })
}

fuzz_target!(|input: Input| {
    // The parser alone, on every sealed plaintext below: exact, one encoding per message.
    let (t0, unix0_us) = base();
    let cfg = Config {
        relay_id: Some(ME),
        distribution: if input.group_mode {
            Distribution::Group(GroupConfig::for_ingest("239.255.1.1:7000".parse().unwrap()))
        } else {
            Distribution::Unicast
        },
        ..Config::default()
    };
    let core = RelayCore::new(cfg, server_key(), Rng::from_seed([3; 32]), t0, unix0_us / 1_000_000)
        .expect("valid config");
    let fc = FederationConfig {
        heartbeat: Duration::from_millis(200),
        ..FederationConfig::new(ME, "fuzz", cluster_key(), vec!["127.0.0.1:4222".parse().unwrap()])
    };
    let fed = Federation::new(&fc, Rng::from_seed([4; 32]), t0, unix0_us).expect("valid config");
    let mut h = H {
        core,
        fed,
        now: t0,
        unix0_us,
        start: t0,
        up: false,
        received: Vec::new(),
        published: Vec::new(),
        last_seq: 0,
        clients: Vec::new(),
        rsa_left: 2,
        rng: Rng::from_seed([5; 32]),
    };
    let mut scratch = Vec::new();
    for op in input.ops.into_iter().take(96) {
        match op {
            Op::Raw(b) => h.deliver(b),
            Op::Sealed { plain, ts_off } => {
                if let Ok((hd, m)) = wire::parse(&plain) {
                    let mut again = Vec::new();
                    wire::write(&mut again, &hd, &m);
                    assert_eq!(again, plain, "one encoding per message");
                }
                let unix = h.unix().saturating_add_signed(i64::from(ts_off));
                let p = seal(&plain, unix, &mut h.rng);
                h.deliver(p);
            }
            Op::Msg { origin, incarnation, seq, client, kind } => {
                let seq = u64::from(seq).max(1);
                let Some(m) = message(origin, client, &kind, seq, &mut scratch) else {
                    continue;
                };
                let hd = Header {
                    origin: origin.max(2),
                    incarnation: unix0_us + u64::from(incarnation % 4),
                    seq,
                };
                let mut plain = Vec::new();
                wire::write(&mut plain, &hd, &m);
                let parsed = wire::parse(&plain);
                if let Ok((hh, mm)) = parsed {
                    assert_eq!((hh, mm), (hd, m));
                }
                let p = seal(&plain, h.unix(), &mut h.rng);
                h.deliver(p);
            }
            Op::Replay(i) => {
                let pool: Vec<Vec<u8>> = h.received.iter().chain(&h.published).cloned().collect();
                if !pool.is_empty() {
                    let p = pool[usize::from(i) % pool.len()].clone();
                    h.fed.handle_message(h.now, &p, &mut h.core);
                }
            }
            Op::Advance(ms) => {
                h.now += Duration::from_millis(u64::from(ms));
                h.core.handle_timeout(h.now);
            }
            Op::Timeout => h.flush(true),
            Op::LinkUp => {
                h.up = true;
                h.fed.link_up(h.now, "127.0.0.1:4222".parse().unwrap());
            }
            Op::LinkDown => {
                h.up = false;
                h.fed.link_down(h.now);
            }
            Op::Client => {
                if h.rsa_left == 0 {
                    continue;
                }
                h.rsa_left -= 1;
                let port = 6000 + h.clients.len() as u16;
                let a = SocketAddr::from(([127, 0, 0, 1], port));
                let c = ClientSession::new(Rng::from_seed([port as u8; 32]), None, None, h.now);
                h.clients.push((a, c));
                for _ in 0..6 {
                    h.from_clients();
                    h.flush(false);
                }
            }
            Op::Send { client, len } => {
                if h.clients.is_empty() {
                    continue;
                }
                let i = usize::from(client) % h.clients.len();
                let data = vec![0x33; usize::from(len) % 70_000];
                let now = h.now;
                let _ = h.clients[i].1.send(now, &data);
                h.from_clients();
            }
            Op::Leave { client } => {
                if h.clients.is_empty() {
                    continue;
                }
                let i = usize::from(client) % h.clients.len();
                let now = h.now;
                h.clients[i].1.disconnect(now);
                h.from_clients();
            }
        }
        h.flush(false);
        h.check();
    }
});
