//! The relay core driven by arbitrary operation sequences.
//!
//! A `RelayCore` with a fixed 2048-bit key (`fuzz/relay_key.pem`), a seeded RNG, a fake clock
//! and a small, input-chosen configuration. Operations: raw datagrams from a small set of
//! source addresses, time, `process_registrations`, `handle_timeout`, and real
//! `ClientSession`s (handshake, messages, keep-alives, disconnects) so that later arbitrary
//! input reaches registered sessions, plus tokens sealed with a client's key around arbitrary
//! plaintext, harness-made REGISTERs around arbitrary plaintext, replays and held send queues.
//!
//! Checked after every step: no panic; `client_count <= max_clients`; reassembly bytes within
//! the cap and nothing in flight for ended sessions; pending registrations within the cap;
//! every queued datagram <= 1200 bytes and well-formed. After every unauthenticated datagram
//! (raw bytes, or a replay of a datagram already delivered): no session changed (id, address,
//! liveness, counters), nothing was sent to any other address, and (unless it was a
//! KEY_REQUEST, whose cookie validates the address) the replies are <= 3x its size.
#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcrelay::client::{ClientSession, Event};
use mcrelay::core::{Config, KickTarget, RelayCore};
use mcrelay::crypto::fernet::{self, FernetKey};
use mcrelay::crypto::key::{self, ServerKey};
use mcrelay::crypto::rng::Rng;
use mcrelay::proto::reassembly::Limits;
use mcrelay::wire::{
    self, Body, COOKIE_LEN, FRAGMENT_CHUNK, MAX_DATAGRAM, Outer, outer, put_fragment, put_tlv,
};

/// Where relay datagrams "come from" in this sans-IO harness (clients lock onto it).
const RELAY: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 254),
    9,
));

const KEY_PEM: &str = include_str!("../relay_key.pem");
/// The distribution group in group mode: every harness client "listens" there.
const DIST_GROUP: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(239, 255, 77, 78), 5008);
const ADDRS: [&str; 6] = [
    "127.0.0.1:4000",
    "127.0.0.1:4001",
    "127.0.0.2:4000",
    "10.1.2.3:5000",
    "[::1]:4000",
    "[fe80::1%3]:4000",
];
/// RSA decryptions allowed per input (about 2 ms each).
const RSA_PER_INPUT: usize = 6;
const ADMITTED: [(&str, &str); 2] = [("alice", "s3cret"), ("bob", "hunter2")];

fn addr(i: u8) -> SocketAddr {
    static A: OnceLock<Vec<SocketAddr>> = OnceLock::new();
    A.get_or_init(|| ADDRS.iter().map(|s| s.parse().unwrap()).collect())
        [usize::from(i) % ADDRS.len()]
}
fn slot_of(a: SocketAddr) -> Option<usize> {
    (0..ADDRS.len() as u8)
        .find(|&i| addr(i) == a)
        .map(usize::from)
}
fn base() -> (Instant, u64) {
    static B: OnceLock<(Instant, u64)> = OnceLock::new();
    *B.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        (Instant::now(), unix)
    })
}

#[derive(Arbitrary, Debug)]
struct Setup {
    max_clients: u8,
    reasm_messages: u8,
    reasm_owner_frags: u8,
    reasm_total_frags: u16,
    reasm_timeout_s: u8,
    client_timeout_s: u8,
    keepalive_s: u8,
    token_ttl_s: u8,
    skew_s: u8,
    hs_per_sec: u8,
    hs_per_src: u8,
    max_pending: u8,
    cookie_lifetime_s: u8,
    cookie_rotation_s: u8,
    send_queue_kib: u8,
    admission: bool,
    /// Group mode (distribution to `DIST_GROUP`) instead of unicast.
    group: bool,
    seed: u8,
}

#[derive(Arbitrary, Debug)]
enum Frag {
    /// One SEALED datagram if it fits, else fragments in order.
    Natural,
    /// Fragments with this msg_id, shuffled by `order`, `drop` (mod count) left out when
    /// `skip`, one duplicated when `dup`.
    Split {
        msg_id: u32,
        order: u32,
        drop: u8,
        skip: bool,
        dup: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum InnerBody {
    Data(Vec<u8>),
    BigData { len: u16, byte: u8 },
    Keepalive,
    Disconnect,
    KeepaliveAck,
    Shutdown,
    Welcome { id: u32 },
    Message { sender: u32, data: Vec<u8> },
    Join { id: u32 },
    Leave { id: u32, reason: u8 },
    Closed { reason: u8 },
    KeyAck { epoch: u32 },
    KeyPull { epoch: u32 },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Arbitrary bytes from one of the addresses (spoofed or not).
    Raw {
        src: u8,
        data: Vec<u8>,
    },
    /// A structurally valid outer message with arbitrary fields (raw, unauthenticated).
    RawFragment {
        src: u8,
        msg_id: u32,
        index: u8,
        count: u8,
        len: u16,
    },
    Advance {
        ms: u32,
    },
    AdvanceSecs {
        s: u8,
    },
    Timeout,
    /// Jump to the core's `poll_timeout` and run the timers.
    ToDeadline,
    Process {
        max: u8,
    },
    /// A fresh `ClientSession` at `src`, run through the whole handshake.
    Connect {
        src: u8,
        wrong_token: bool,
        name: bool,
    },
    /// A fresh `ClientSession` at `src`; only its HELLO goes out (finish with `Pump`).
    Start {
        src: u8,
    },
    /// Exchange everything queued between clients and the relay, once.
    Pump,
    Send {
        c: u8,
        data: Vec<u8>,
    },
    SendBig {
        c: u8,
        len: u16,
        byte: u8,
    },
    Keepalive {
        c: u8,
    },
    Disconnect {
        c: u8,
    },
    ClientTimeout {
        c: u8,
    },
    /// A token under the key registered at `c`, around an arbitrary plaintext.
    Seal {
        c: u8,
        seq: u64,
        body: InnerBody,
        ts_off: i16,
        frag: Frag,
    },
    /// A replay of a captured client datagram, from its own address or `other`.
    Replay {
        idx: u16,
        other: Option<u8>,
    },
    /// HELLO from `src`; the harness keeps the cookie.
    Hello {
        src: u8,
    },
    KeyRequest {
        src: u8,
        stale: bool,
    },
    /// REGISTER with the cookie kept for `src` around an OAEP-encrypted key + suffix.
    Register {
        src: u8,
        key: u8,
        suffix: Vec<u8>,
        admit: Option<(u8, bool)>,
    },
    /// REGISTER with the kept cookie and an arbitrary ciphertext.
    RegisterRaw {
        src: u8,
        ct: Vec<u8>,
        modulus: bool,
    },
    Kick {
        id: u8,
        by_addr: bool,
    },
    Shutdown,
    /// Stop draining the send queue after each step.
    Hold,
    /// Drain: `sent` sent, `failed` failed; then drain after each step again.
    Drain {
        sent: u8,
        failed: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    id: u32,
    addr: SocketAddr,
    last_seen: Instant,
    msgs_in: u64,
    bytes_in: u64,
    msgs_out: u64,
    bytes_out: u64,
}

struct H {
    core: RelayCore,
    cfg: Config,
    now: Instant,
    unix0: u64,
    start: Instant,
    clients: Vec<Option<ClientSession>>,
    /// The Fernet key last registered by the harness at each address.
    keys: Vec<Option<FernetKey>>,
    cookies: Vec<Option<[u8; COOKIE_LEN]>>,
    public: (rsa::PublicKey, [u8; 32]),
    captured: Vec<(usize, Vec<u8>)>,
    delivered: HashSet<Vec<u8>>,
    seeds: u32,
    rng: Rng,
    rsa_left: usize,
    hold: bool,
    admission: bool,
}

impl H {
    fn snap(&self) -> Vec<Snap> {
        let mut v: Vec<Snap> = self
            .core
            .clients()
            .map(|c| Snap {
                id: c.id,
                addr: c.addr,
                last_seen: c.last_seen,
                msgs_in: c.msgs_in,
                bytes_in: c.bytes_in,
                msgs_out: c.msgs_out,
                bytes_out: c.bytes_out,
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    fn queued(&self) -> usize {
        self.core.transmits().count()
    }

    fn check(&self) {
        let cfg = &self.cfg;
        assert!(
            self.core.client_count() <= cfg.max_clients,
            "max_clients exceeded"
        );
        assert!(
            self.core.reassembly_bytes() <= cfg.reassembly.total_bytes,
            "reassembly cap"
        );
        assert!(
            self.core.reassemblies_in_flight()
                <= self.core.client_count() * cfg.reassembly.per_owner_messages,
            "reassemblies in flight for ended sessions"
        );
        assert!(self.core.pending_registrations() <= cfg.max_pending_registrations);
        let mut bytes = 0;
        for (_, d) in self.core.transmits() {
            assert!(
                d.len() <= MAX_DATAGRAM,
                "oversized datagram queued: {}",
                d.len()
            );
            assert!(Outer::parse(d).is_ok(), "malformed datagram queued");
            bytes += d.len();
        }
        assert!(bytes <= cfg.max_send_queue, "send queue over its cap");
    }

    /// Route the first `n` queued datagrams (to clients, cookies to the harness).
    fn route(&mut self, n: usize) {
        let out: Vec<(SocketAddr, Vec<u8>)> = self
            .core
            .transmits()
            .take(n)
            .map(|(a, d)| (a, d.to_vec()))
            .collect();
        for (to, d) in out {
            if to == SocketAddr::V4(DIST_GROUP) {
                // Group mode: every client on the distribution group reads it.
                for c in self.clients.iter_mut().flatten() {
                    c.handle_datagram(self.now, RELAY, &d);
                    let own = c.id();
                    while let Some(ev) = c.poll_event() {
                        if let Event::Message { sender, .. } = ev {
                            assert_ne!(Some(sender), own, "own message delivered to its sender");
                        }
                    }
                }
                continue;
            }
            let Some(slot) = slot_of(to) else {
                panic!("datagram to an address nobody used: {to}");
            };
            if let Ok(Outer::Cookie { cookie, .. }) = Outer::parse(&d) {
                self.cookies[slot] = Some(*cookie);
            }
            if let Some(c) = &mut self.clients[slot] {
                c.handle_datagram(self.now, RELAY, &d);
                let own = c.id();
                while let Some(ev) = c.poll_event() {
                    if let Event::Message { sender, .. } = ev {
                        assert_ne!(Some(sender), own, "own message relayed back");
                    }
                }
            }
        }
    }

    fn end_step(&mut self) {
        self.check();
        if !self.hold {
            let n = self.queued();
            self.route(n);
            self.core.advance_transmits(n, 0);
            assert!(!self.core.has_transmits());
        }
    }

    fn unix(&self) -> u64 {
        self.unix0 + self.now.saturating_duration_since(self.start).as_secs()
    }

    /// Feed one datagram from `slot`. `legit`: it comes from the harness's own clients or
    /// harness-made handshakes, on its first delivery. Otherwise the unauthenticated rules hold.
    fn deliver(&mut self, slot: usize, d: &[u8], legit: bool) {
        let replay = self.delivered.contains(d);
        let checked = !legit || replay;
        let before = checked.then(|| (self.snap(), self.queued()));
        let q0 = self.queued();
        self.core.handle_datagram(self.now, addr(slot as u8), d);
        if legit {
            self.delivered.insert(d.to_vec());
        }
        if let Some((snap, _)) = before {
            assert_eq!(
                snap,
                self.snap(),
                "an unauthenticated datagram changed a session"
            );
            let from = addr(slot as u8);
            let mut to_from = 0;
            for (to, r) in self.core.transmits().skip(q0) {
                assert_eq!(
                    to, from,
                    "an unauthenticated datagram caused traffic elsewhere"
                );
                to_from += r.len();
            }
            let key_request = matches!(Outer::parse(d), Ok(Outer::KeyRequest { .. }));
            if !key_request {
                assert!(
                    to_from <= 3 * d.len(),
                    "amplification: {} bytes answered with {to_from}",
                    d.len()
                );
            }
        }
    }

    /// Deliver everything client `slot` has queued.
    fn flush_client(&mut self, slot: usize) {
        let mut ds = Vec::new();
        if let Some(c) = &mut self.clients[slot] {
            while let Some(d) = c.poll_transmit() {
                ds.push(d);
            }
        }
        for d in ds {
            if self.captured.len() < 512 {
                self.captured.push((slot, d.clone()));
            }
            self.deliver(slot, &d, true);
        }
    }

    fn process(&mut self, max: usize) {
        let n = self
            .core
            .process_registrations(self.now, max.min(self.rsa_left));
        self.rsa_left -= n;
    }

    fn pump(&mut self) {
        for s in 0..ADDRS.len() {
            self.flush_client(s);
        }
        self.process(usize::MAX);
        self.check();
        let n = self.queued();
        self.route(n);
        self.core.advance_transmits(n, 0);
    }

    fn new_client(&mut self, slot: usize, admission: Option<(String, String)>) {
        self.seeds += 1;
        let mut seed = [0xC1u8; 32];
        seed[..4].copy_from_slice(&self.seeds.to_be_bytes());
        let mut r = Rng::from_seed(seed);
        let mut raw = [0u8; 32];
        r.fill(&mut raw);
        // ClientSession draws its key first from the same stream.
        self.keys[slot] = Some(FernetKey::from_bytes(&raw));
        self.clients[slot] = Some(ClientSession::new(
            Rng::from_seed(seed),
            None,
            admission,
            self.now,
        ));
    }

    fn client(&mut self, c: u8) -> Option<(usize, &mut ClientSession)> {
        let slot = usize::from(c) % ADDRS.len();
        self.clients[slot].as_mut().map(|s| (slot, s))
    }

    fn seal(&mut self, c: u8, seq: u64, body: InnerBody, ts_off: i16, frag: Frag) {
        let slot = usize::from(c) % ADDRS.len();
        let Some(key) = self.keys[slot].clone() else {
            return;
        };
        let mut plain = Vec::new();
        let b = match &body {
            InnerBody::Data(d) => Some(Body::Data(d)),
            InnerBody::BigData { .. } | InnerBody::Raw(_) => None,
            InnerBody::Keepalive => Some(Body::Keepalive),
            InnerBody::Disconnect => Some(Body::Disconnect),
            InnerBody::KeepaliveAck => Some(Body::KeepaliveAck),
            InnerBody::Shutdown => Some(Body::Shutdown),
            InnerBody::Welcome { id } => Some(Body::Welcome {
                id: *id,
                keepalive_ms: 1,
                timeout_ms: 2,
                name: None,
                dist: None,
            }),
            InnerBody::Message { sender, data } => Some(Body::Message {
                sender: *sender,
                name: None,
                data,
            }),
            InnerBody::Join { id } => Some(Body::Join {
                id: *id,
                name: Some(b"x"),
            }),
            InnerBody::Leave { id, reason } => Some(Body::Leave {
                id: *id,
                reason: *reason,
            }),
            InnerBody::Closed { reason } => Some(Body::Closed { reason: *reason }),
            InnerBody::KeyAck { epoch } => Some(Body::KeyAck { epoch: *epoch }),
            InnerBody::KeyPull { epoch } => Some(Body::KeyPull { epoch: *epoch }),
        };
        match (&body, b) {
            (_, Some(b)) => wire::write_inner(&mut plain, seq, &b),
            (InnerBody::BigData { len, byte }, None) => {
                let data = vec![*byte; usize::from(*len)];
                wire::write_inner(&mut plain, seq, &Body::Data(&data));
            }
            (InnerBody::Raw(r), None) => plain.extend_from_slice(r),
            _ => unreachable!(),
        }
        let ts = self.unix().saturating_add_signed(i64::from(ts_off));
        let iv = self.rng.iv();
        let mut token = Vec::new();
        // Both token forms: version 2 sessions (ClientSession) take binary, version 1 ones
        // (the harness's own REGISTERs) text; the other form must be refused cleanly.
        fernet::seal_into(seq & 1 == 0, &key, &iv, ts, &plain, &mut token);
        let count = token.len().div_ceil(FRAGMENT_CHUNK);
        let mut ds: Vec<Vec<u8>> = Vec::new();
        match frag {
            Frag::Natural if wire::TLV_HEADER + token.len() <= MAX_DATAGRAM => {
                let mut d = Vec::new();
                put_tlv(&mut d, outer::SEALED, &token);
                ds.push(d);
            }
            Frag::Natural => {
                for (i, ch) in token.chunks(FRAGMENT_CHUNK).enumerate() {
                    let mut d = Vec::new();
                    put_fragment(&mut d, 0x8000_0000 | self.seeds, i as u16, count as u16, ch);
                    ds.push(d);
                }
            }
            Frag::Split {
                msg_id,
                order,
                drop,
                skip,
                dup,
            } => {
                if count > u16::MAX as usize {
                    return;
                }
                let chunks: Vec<&[u8]> = token.chunks(FRAGMENT_CHUNK).collect();
                let mut idx: Vec<usize> = (0..chunks.len()).collect();
                let mut s = u64::from(order) | 1;
                for i in (1..idx.len()).rev() {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    idx.swap(i, (s % (i as u64 + 1)) as usize);
                }
                if skip && !idx.is_empty() {
                    idx.remove(usize::from(drop) % idx.len());
                }
                if dup && !idx.is_empty() {
                    let i = idx[usize::from(drop) % idx.len()];
                    idx.push(i);
                }
                for i in idx {
                    let mut d = Vec::new();
                    put_fragment(&mut d, msg_id, i as u16, count as u16, chunks[i]);
                    ds.push(d);
                }
            }
        }
        for d in ds {
            if self.captured.len() < 512 {
                self.captured.push((slot, d.clone()));
            }
            self.deliver(slot, &d, true);
        }
    }
}

/// Parsing the PEM (and the key's precomputation) costs more than a typical input: do it
/// once and hand each input a clone (`ServerKey` itself is not `Clone`).
fn server_key() -> ServerKey {
    static K: OnceLock<rsa::PrivateKey> = OnceLock::new();
    let private = K.get_or_init(|| {
        use rsa::pkcs8::DecodePrivateKey;
        // The same check the relay does on startup.
        ServerKey::from_pkcs8_pem(KEY_PEM).expect("fuzz/relay_key.pem");
        rsa::PrivateKey::from_pkcs8_pem(KEY_PEM).expect("fuzz/relay_key.pem")
    });
    ServerKey::from_private(private.clone()).expect("2048-bit key")
}

fn config(s: &Setup) -> Config {
    let c = FRAGMENT_CHUNK;
    Config {
        client_timeout: Duration::from_secs(u64::from(s.client_timeout_s % 61)),
        keepalive_interval: Duration::from_secs(u64::from(s.keepalive_s % 31)),
        max_clients: usize::from(s.max_clients % 5),
        max_clients_per_source: usize::from(s.max_clients / 5 % 5),
        reassembly: Limits {
            per_owner_messages: usize::from(s.reasm_messages % 5),
            per_owner_bytes: usize::from(s.reasm_owner_frags) * c,
            total_bytes: usize::from(s.reasm_total_frags % 600) * c,
            timeout: Duration::from_secs(u64::from(s.reasm_timeout_s % 11)),
        },
        token_ttl: Duration::from_secs(u64::from(s.token_ttl_s % 181)),
        max_clock_skew: Duration::from_secs(u64::from(s.skew_s % 91)),
        handshakes_per_sec: u32::from(s.hs_per_sec % 41),
        handshake_cpu_percent: s.hs_per_sec % 101,
        handshakes_per_source_per_sec: u32::from(s.hs_per_src % 21),
        max_pending_registrations: usize::from(s.max_pending % 9),
        cookie_lifetime: Duration::from_secs(u64::from(s.cookie_lifetime_s % 61)),
        cookie_rotation: Duration::from_secs(u64::from(s.cookie_rotation_s % 121)),
        max_send_queue: (usize::from(s.send_queue_kib) + 1) * 1024,
        admission: s.admission.then(|| {
            ADMITTED
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect()
        }),
        distribution: if s.group {
            let mut g = mcrelay::GroupConfig::for_ingest(std::net::SocketAddrV4::new(
                *DIST_GROUP.ip(),
                DIST_GROUP.port() - 1,
            ));
            g.rotate_messages = u64::from(s.seed % 7) + 1; // ratchets and fresh keys often
            mcrelay::Distribution::Group(g)
        } else {
            mcrelay::Distribution::Unicast
        },
        relay_id: None,
    }
}

fuzz_target!(|input: Input| {
    let (t0, unix0) = base();
    let cfg = config(&input.setup);
    let key = server_key();
    let public = key::public_key_from_pem(key.public_pem().as_bytes()).expect("own public key");
    // Arbitrary settings: the ones `Config::validate` refuses must be refused, never run.
    let Ok(core) = RelayCore::new(
        cfg.clone(),
        key,
        Rng::from_seed([input.setup.seed; 32]),
        t0,
        unix0,
    ) else {
        assert!(cfg.validate().is_err());
        return;
    };
    let mut h = H {
        core,
        cfg,
        now: t0,
        unix0,
        start: t0,
        clients: (0..ADDRS.len()).map(|_| None).collect(),
        keys: vec![None; ADDRS.len()],
        cookies: vec![None; ADDRS.len()],
        public,
        captured: Vec::new(),
        delivered: HashSet::new(),
        seeds: 0,
        rng: Rng::from_seed([0x5E; 32]),
        rsa_left: RSA_PER_INPUT,
        hold: false,
        admission: input.setup.admission,
    };
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Raw { src, data } => {
                let slot = usize::from(src) % ADDRS.len();
                h.deliver(slot, &data, false);
            }
            Op::RawFragment {
                src,
                msg_id,
                index,
                count,
                len,
            } => {
                let slot = usize::from(src) % ADDRS.len();
                let mut d = Vec::new();
                let len = usize::from(len) % (FRAGMENT_CHUNK + 1);
                put_fragment(
                    &mut d,
                    msg_id,
                    u16::from(index),
                    u16::from(count),
                    &vec![b'A'; len],
                );
                h.deliver(slot, &d, false);
            }
            Op::Advance { ms } => h.now += Duration::from_millis(u64::from(ms % 300_000)),
            Op::AdvanceSecs { s } => h.now += Duration::from_secs(u64::from(s)),
            Op::Timeout => h.core.handle_timeout(h.now),
            Op::ToDeadline => {
                if let Some(t) = h.core.poll_timeout() {
                    h.now = h.now.max(t);
                }
                h.core.handle_timeout(h.now);
            }
            Op::Process { max } => h.process(usize::from(max % 4)),
            Op::Connect {
                src,
                wrong_token,
                name,
            } => {
                let slot = usize::from(src) % ADDRS.len();
                let adm = (h.admission || name).then(|| {
                    let (n, t) = ADMITTED[usize::from(name)];
                    (
                        n.to_string(),
                        if wrong_token {
                            "nope".to_string()
                        } else {
                            t.to_string()
                        },
                    )
                });
                h.new_client(slot, adm);
                for _ in 0..4 {
                    h.pump();
                    let c = h.clients[slot].as_ref().expect("client");
                    if c.id().is_some() || c.is_closed() {
                        break;
                    }
                }
            }
            Op::Start { src } => {
                let slot = usize::from(src) % ADDRS.len();
                h.new_client(slot, None);
                h.flush_client(slot);
            }
            Op::Pump => h.pump(),
            Op::Send { c, data } => {
                let now = h.now;
                if let Some((slot, cl)) = h.client(c) {
                    let _ = cl.send(now, &data);
                    h.flush_client(slot);
                }
            }
            Op::SendBig { c, len, byte } => {
                let now = h.now;
                if let Some((slot, cl)) = h.client(c) {
                    let _ = cl.send(now, &vec![byte; usize::from(len)]);
                    h.flush_client(slot);
                }
            }
            Op::Keepalive { c } => {
                let now = h.now;
                if let Some((slot, cl)) = h.client(c) {
                    cl.send_keepalive(now);
                    h.flush_client(slot);
                }
            }
            Op::Disconnect { c } => {
                let now = h.now;
                if let Some((slot, cl)) = h.client(c) {
                    cl.disconnect(now);
                    h.flush_client(slot);
                }
            }
            Op::ClientTimeout { c } => {
                let now = h.now;
                if let Some((slot, cl)) = h.client(c) {
                    cl.handle_timeout(now);
                    h.flush_client(slot);
                }
            }
            Op::Seal {
                c,
                seq,
                body,
                ts_off,
                frag,
            } => h.seal(c, seq, body, ts_off, frag),
            Op::Replay { idx, other } => {
                if !h.captured.is_empty() {
                    let (slot, d) = h.captured[usize::from(idx) % h.captured.len()].clone();
                    let slot = other.map_or(slot, |o| usize::from(o) % ADDRS.len());
                    let legit = !h.delivered.contains(&d) && other.is_none();
                    h.deliver(slot, &d, legit);
                }
            }
            Op::Hello { src } => {
                let slot = usize::from(src) % ADDRS.len();
                let mut d = Vec::new();
                Outer::Hello { min: 1, max: 1 }.write(&mut d);
                h.deliver(slot, &d, true);
                // Route now so the cookie is kept even when the queue is held.
                let n = h.queued();
                h.route(n);
            }
            Op::KeyRequest { src, stale } => {
                let slot = usize::from(src) % ADDRS.len();
                let cookie = if stale {
                    Some([0u8; COOKIE_LEN])
                } else {
                    h.cookies[slot]
                };
                if let Some(cookie) = cookie {
                    let mut d = Vec::new();
                    Outer::KeyRequest { cookie: &cookie }.write(&mut d);
                    h.deliver(slot, &d, true);
                }
            }
            Op::Register {
                src,
                key,
                suffix,
                admit,
            } => {
                let slot = usize::from(src) % ADDRS.len();
                let Some(cookie) = h.cookies[slot] else {
                    continue;
                };
                let k = FernetKey::from_bytes(&[key; 32]);
                let mut plain = k.to_base64().to_vec();
                if let Some((who, right)) = admit {
                    let (n, t) = ADMITTED[usize::from(who) % 2];
                    plain.extend_from_slice(
                        format!("\n{n} {}", if right { t } else { "x" }).as_bytes(),
                    );
                }
                plain.extend_from_slice(&suffix);
                let Ok(ct) = key::oaep_encrypt(&h.public.0, &plain) else {
                    continue;
                };
                let mut d = Vec::new();
                Outer::Register {
                    cookie: &cookie,
                    ciphertext: &ct,
                }
                .write(&mut d);
                h.keys[slot] = Some(k);
                h.deliver(slot, &d, true);
            }
            Op::RegisterRaw {
                src,
                mut ct,
                modulus,
            } => {
                let slot = usize::from(src) % ADDRS.len();
                let Some(cookie) = h.cookies[slot] else {
                    continue;
                };
                if modulus {
                    ct.resize(256, 0);
                }
                let mut d = Vec::new();
                wire::put_tlv_header(&mut d, outer::REGISTER, COOKIE_LEN + ct.len());
                d.extend_from_slice(&cookie);
                d.extend_from_slice(&ct);
                if d.len() > MAX_DATAGRAM {
                    continue;
                }
                h.deliver(slot, &d, true);
            }
            Op::Kick { id, by_addr } => {
                let t = if by_addr {
                    KickTarget::Addr(addr(id))
                } else {
                    KickTarget::Id(u32::from(id % 8))
                };
                let _ = h.core.kick(h.now, t);
            }
            Op::Shutdown => h.core.shutdown(h.now),
            Op::Hold => h.hold = true,
            Op::Drain { sent, failed } => {
                let q = h.queued();
                let sent = usize::from(sent).min(q);
                h.route(sent);
                h.core.advance_transmits(sent, usize::from(failed));
                h.hold = false;
            }
        }
        h.end_step();
    }
    // Rendering what the control port shows must not panic either.
    let mut s = String::new();
    mcrelay::control::format_stats(&mut s, &h.core, h.now);
    mcrelay::control::format_metrics(&mut s, &h.core, h.now);
    mcrelay::control::format_clients(&mut s, h.core.clients(), h.now);
});
