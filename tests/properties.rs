//! Property tests over the entry points the fuzz targets (fuzz/) drive, small and fast enough
//! for CI: the wire codec, the reassembler's caps, the relay core under arbitrary datagram
//! sequences (with real clients registered), and the control-line parser.
//!
//! The relay key is the fuzzing key, fuzz/relay_key.pem (tests run with cwd = crate root).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcrelay::client::ClientSession;
use mcrelay::control::parse;
use mcrelay::core::{Config, KickTarget, RelayCore};
use mcrelay::crypto::fernet::{self, FernetKey};
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;
use mcrelay::proto::reassembly::{FragmentError, Limits, Reassembler};
use mcrelay::wire::{
    self, FRAGMENT_CHUNK, MAX_DATAGRAM, MAX_FRAGMENTS, Outer, parse_inner, put_fragment, put_tlv,
    write_inner,
};
use proptest::prelude::*;

/// Where relay datagrams "come from" in this sans-IO harness (clients lock onto it).
const RELAY: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 254),
    9,
));

fn key_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| std::fs::read_to_string("fuzz/relay_key.pem").expect("fuzz/relay_key.pem"))
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The ingest group of the simulated relay in group mode (distribution: port + 1).
const DIST_INGEST: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(239, 255, 77, 77), 5007);

// ---------------------------------------------------------------- wire

/// Bytes that often look like a TLV: a known type, a length that matches or nearly does.
fn tlvish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        (
            // Every outer type of versions 1 to 3 (to NO_SESSION), every inner one (to GSEQ).
            prop_oneof![1u16..=0x000a, 0x0101u16..=0x0113, any::<u16>()],
            proptest::collection::vec(any::<u8>(), 0..300),
            -2i32..=2,
        )
            .prop_map(|(t, v, skew)| {
                let mut b = Vec::new();
                let len = (v.len() as i32 + skew).clamp(0, 0xffff) as usize;
                b.extend_from_slice(&t.to_be_bytes());
                b.extend_from_slice(&(len as u16).to_be_bytes());
                b.extend_from_slice(&v);
                b
            }),
        // A sealed plaintext: SEQ, then one or two TLVs.
        (
            any::<u64>(),
            proptest::collection::vec(
                (
                    0x0101u16..=0x0113,
                    proptest::collection::vec(any::<u8>(), 0..16)
                ),
                1..4
            ),
        )
            .prop_map(|(seq, tlvs)| {
                let mut b = Vec::new();
                put_tlv(&mut b, 0x0101, &seq.to_be_bytes());
                for (t, v) in tlvs {
                    put_tlv(&mut b, t, &v);
                }
                b
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wire_roundtrips_and_never_panics(data in tlvish()) {
        if let Ok(m) = Outer::parse(&data) {
            let mut b = Vec::new();
            m.write(&mut b);
            prop_assert_eq!(Outer::parse(&b), Ok(m));
            if !matches!(m, Outer::Hello { .. }) {
                prop_assert_eq!(&b, &data);
            }
        }
        if let Ok((seq, body)) = parse_inner(&data) {
            let mut b = Vec::new();
            write_inner(&mut b, seq, &body);
            prop_assert_eq!(parse_inner(&b), Ok((seq, body)));
            prop_assert_eq!(&b, &data);
        }
        // Version 3's reading (GSEQ, FRAG, GROUP_KEY, KEY_ACK, KEY_PULL, MEMBERS, DIST):
        // whatever parses re-encodes to the same bytes.
        if let Ok(s) = wire::parse_sealed(&data) {
            let mut b = Vec::new();
            wire::write_sealed(&mut b, s.seq, s.gseq, &s.body);
            prop_assert_eq!(&b, &data);
        }
    }
}

// ---------------------------------------------------------------- reassembly

#[derive(Debug, Clone)]
enum ROp {
    Insert {
        owner: u32,
        msg_id: u32,
        index: u16,
        count: u16,
        len: usize,
    },
    Message {
        owner: u32,
        msg_id: u32,
        count: u16,
        last_len: usize,
        reverse: bool,
    },
    Advance(u64),
    Expire,
    RemoveOwner(u32),
}

fn rop() -> impl Strategy<Value = ROp> {
    let c = FRAGMENT_CHUNK;
    prop_oneof![
        4 => (0u32..3, 0u32..4, 0u16..80, 0u16..80, prop_oneof![Just(c), 0..c + 2]).prop_map(
            |(owner, msg_id, index, count, len)| ROp::Insert { owner, msg_id, index, count, len }
        ),
        2 => (0u32..3, 0u32..4, 2u16..=MAX_FRAGMENTS as u16, 1..=c, any::<bool>()).prop_map(
            |(owner, msg_id, count, last_len, reverse)| ROp::Message {
                owner, msg_id, count, last_len, reverse
            }
        ),
        1 => (0u64..4000).prop_map(ROp::Advance),
        1 => Just(ROp::Expire),
        1 => (0u32..3).prop_map(ROp::RemoveOwner),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn reassembler_caps_hold(
        per_owner_messages in 0usize..5,
        per_owner_frags in 0usize..200,
        total_frags in 0usize..300,
        timeout_ms in 0u64..3000,
        ops in proptest::collection::vec(rop(), 0..40),
    ) {
        let c = FRAGMENT_CHUNK;
        let limits = Limits {
            per_owner_messages,
            per_owner_bytes: per_owner_frags * c,
            total_bytes: total_frags * c,
            timeout: Duration::from_millis(timeout_ms),
        };
        let mut r = Reassembler::new(limits);
        let mut now = Instant::now();
        let check = |r: &Reassembler| -> Result<(), TestCaseError> {
            prop_assert!(r.bytes_in_use() <= limits.total_bytes);
            let mut sum = 0;
            for o in 0..3 {
                prop_assert!(r.owner_bytes(o) <= limits.per_owner_bytes);
                sum += r.owner_bytes(o);
            }
            prop_assert_eq!(sum, r.bytes_in_use());
            prop_assert!(r.in_flight() <= 3 * limits.per_owner_messages);
            Ok(())
        };
        for op in ops {
            match op {
                ROp::Insert { owner, msg_id, index, count, len } => {
                    let before = (r.bytes_in_use(), r.in_flight());
                    let chunk = vec![index as u8; len];
                    match r.insert(now, owner, msg_id, index, count, &chunk) {
                        Err(_) => prop_assert_eq!((r.bytes_in_use(), r.in_flight()), before),
                        Ok(Some(tok)) => {
                            prop_assert!(tok.len() > (usize::from(count) - 1) * c);
                            prop_assert!(tok.len() <= usize::from(count) * c);
                        }
                        Ok(None) => {}
                    }
                }
                ROp::Message { owner, msg_id, count, last_len, reverse } => {
                    let mut idx: Vec<u16> = (0..count).collect();
                    if reverse {
                        idx.reverse();
                    }
                    let mut done = None;
                    for i in idx {
                        let len = if i == count - 1 { last_len } else { c };
                        let chunk = vec![i as u8; len];
                        match r.insert(now, owner, msg_id, i, count, &chunk) {
                            Ok(Some(tok)) => done = Some(tok.to_vec()),
                            Ok(None) => {}
                            Err(
                                FragmentError::OwnerLimit
                                | FragmentError::GlobalLimit
                                | FragmentError::Inconsistent
                                | FragmentError::Duplicate,
                            ) => {}
                            Err(e) => prop_assert!(false, "valid fragment refused: {e:?}"),
                        }
                        check(&r)?;
                    }
                    if let Some(tok) = done {
                        // Completed by this op: either our own fragments, or (with an earlier
                        // partial of the same msg_id and count) a mix; the length rule holds.
                        prop_assert!(tok.len() > (usize::from(count) - 1) * c);
                        prop_assert!(tok.len() <= usize::from(count) * c);
                    }
                }
                ROp::Advance(ms) => now += Duration::from_millis(ms),
                ROp::Expire => {
                    r.expire(now);
                    if let Some(t) = r.next_expiry() {
                        prop_assert!(t > now);
                    }
                }
                ROp::RemoveOwner(o) => {
                    r.remove_owner(o);
                    prop_assert_eq!(r.owner_bytes(o), 0);
                }
            }
            check(&r)?;
        }
    }
}

// ---------------------------------------------------------------- relay core

const ADDRS: [&str; 4] = [
    "127.0.0.1:4000",
    "127.0.0.1:4001",
    "10.1.2.3:5000",
    "[::1]:4000",
];

#[derive(Debug, Clone)]
enum Step {
    /// Arbitrary bytes from address `src`.
    Raw(usize, Vec<u8>),
    /// A token sealed with client `c`'s key around an arbitrary plaintext.
    Sealed(usize, Vec<u8>),
    /// A real message from client `c` (fragmented when long).
    Send(usize, usize),
    Advance(u64),
    Timeout,
    Process(usize),
    Kick(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..ADDRS.len(), tlvish()).prop_map(|(s, d)| Step::Raw(s, d)),
        2 => (0..2usize, tlvish()).prop_map(|(c, p)| Step::Sealed(c, p)),
        2 => (0..2usize, prop_oneof![0usize..100, 1000usize..5000]).prop_map(|(c, n)| Step::Send(c, n)),
        1 => (0u64..40_000).prop_map(Step::Advance),
        1 => Just(Step::Timeout),
        1 => (0usize..3).prop_map(Step::Process),
        1 => (0u32..5).prop_map(Step::Kick),
    ]
}

#[derive(Debug, PartialEq)]
struct Snap(Vec<(u32, SocketAddr, Instant, u64, u64, u64)>);

fn snap(core: &RelayCore) -> Snap {
    let mut v: Vec<_> = core
        .clients()
        .map(|c| (c.id, c.addr, c.last_seen, c.msgs_in, c.bytes_in, c.msgs_out))
        .collect();
    v.sort();
    Snap(v)
}

struct World {
    core: RelayCore,
    cfg: Config,
    addrs: Vec<SocketAddr>,
    clients: Vec<(ClientSession, FernetKey)>,
    now: Instant,
    start: Instant,
    unix0: u64,
    rng: Rng,
}

impl World {
    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert!(self.core.client_count() <= self.cfg.max_clients);
        prop_assert!(self.core.reassembly_bytes() <= self.cfg.reassembly.total_bytes);
        prop_assert!(
            self.core.reassemblies_in_flight()
                <= self.core.client_count() * self.cfg.reassembly.per_owner_messages
        );
        for (_, d) in self.core.transmits() {
            prop_assert!(d.len() <= MAX_DATAGRAM);
            prop_assert!(Outer::parse(d).is_ok());
        }
        Ok(())
    }

    /// Send everything queued: to the clients that live at the address, the rest is lost.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        self.check()?;
        let out: Vec<(SocketAddr, Vec<u8>)> = self
            .core
            .transmits()
            .map(|(a, d)| (a, d.to_vec()))
            .collect();
        for (to, d) in &out {
            if let SocketAddr::V4(g) = to
                && g.ip().is_multicast()
            {
                // Group mode: every client reads the distribution group.
                for (c, _) in &mut self.clients {
                    c.handle_datagram(self.now, RELAY, d);
                    while c.poll_event().is_some() {}
                }
                continue;
            }
            if let Some(i) = self.addrs.iter().position(|a| a == to)
                && let Some((c, _)) = self.clients.get_mut(i)
            {
                c.handle_datagram(self.now, RELAY, d);
                while c.poll_event().is_some() {}
            }
        }
        self.core.advance_transmits(out.len(), 0);
        Ok(())
    }

    fn flush_client(&mut self, i: usize) {
        while let Some(d) = self.clients[i].0.poll_transmit() {
            self.core.handle_datagram(self.now, self.addrs[i], &d);
        }
    }

    fn connect(&mut self, i: usize) -> Result<(), TestCaseError> {
        let seed = [0x40 + i as u8; 32];
        let mut r = Rng::from_seed(seed);
        let mut raw = [0u8; 32];
        r.fill(&mut raw);
        let mut session = ClientSession::new(Rng::from_seed(seed), None, None, self.now);
        // Even clients speak version 2 (FRAGMENTs reach the reassembler), odd ones version 3
        // (sealed pieces), so both paths meet arbitrary input.
        if i.is_multiple_of(2) {
            session.set_max_version(2, self.now);
        }
        self.clients.push((session, FernetKey::from_bytes(&raw)));
        for _ in 0..4 {
            self.flush_client(i);
            self.core.process_registrations(self.now, 4);
            self.drain()?;
        }
        prop_assert!(
            self.clients[i].0.id().is_some(),
            "handshake did not complete"
        );
        Ok(())
    }

    /// An unauthenticated datagram: no session changes, nothing sent elsewhere, <= 3x reply.
    fn raw(&mut self, src: usize, d: &[u8]) -> Result<(), TestCaseError> {
        let before = snap(&self.core);
        let q0 = self.core.transmits().count();
        let from = self.addrs[src];
        self.core.handle_datagram(self.now, from, d);
        prop_assert_eq!(&before, &snap(&self.core));
        let mut bytes = 0;
        for (to, r) in self.core.transmits().skip(q0) {
            prop_assert_eq!(to, from);
            bytes += r.len();
        }
        if !matches!(Outer::parse(d), Ok(Outer::KeyRequest { .. })) {
            prop_assert!(
                bytes <= 3 * d.len(),
                "{} bytes answered with {}",
                d.len(),
                bytes
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn relay_core_survives_arbitrary_datagrams(
        max_clients in 2usize..4,
        per_owner_messages in 1usize..4,
        total_frags in 0usize..40,
        seed in any::<u8>(),
        group in any::<bool>(),
        steps in proptest::collection::vec(step(), 0..24),
    ) {
        let distribution = if group {
            mcrelay::Distribution::Group(mcrelay::GroupConfig::for_ingest(DIST_INGEST))
        } else {
            mcrelay::Distribution::Unicast
        };
        let cfg = Config {
            distribution,
            max_clients,
            reassembly: Limits {
                per_owner_messages,
                per_owner_bytes: 8 * FRAGMENT_CHUNK,
                total_bytes: total_frags * FRAGMENT_CHUNK,
                timeout: Duration::from_secs(2),
            },
            ..Config::default()
        };
        let unix0 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let now = Instant::now();
        let key = ServerKey::from_pkcs8_pem(key_pem()).expect("fuzz/relay_key.pem");
        let mut w = World {
            core: RelayCore::new(cfg.clone(), key, Rng::from_seed([seed; 32]), now, unix0)
    .expect("valid config"),
            cfg,
            addrs: ADDRS.iter().map(|a| a.parse().unwrap()).collect(),
            clients: Vec::new(),
            now,
            start: now,
            unix0,
            rng: Rng::from_seed([seed ^ 0x55; 32]),
        };
        w.connect(0)?;
        w.connect(1)?;
        for s in steps {
            match s {
                Step::Raw(src, d) => w.raw(src, &d)?,
                Step::Sealed(c, plain) => {
                    let unix = w.unix0 + w.now.duration_since(w.start).as_secs();
                    let mut token = Vec::new();
                    // The registered clients speak version 2: binary tokens.
                    fernet::encrypt_raw_into(&w.clients[c].1, &w.rng.iv(), unix, &plain, &mut token);
                    let mut d = Vec::new();
                    if wire::TLV_HEADER + token.len() <= MAX_DATAGRAM {
                        put_tlv(&mut d, wire::outer::SEALED, &token);
                        w.core.handle_datagram(w.now, w.addrs[c], &d);
                    } else {
                        let n = token.len().div_ceil(FRAGMENT_CHUNK) as u16;
                        for (i, ch) in token.chunks(FRAGMENT_CHUNK).enumerate() {
                            d.clear();
                            put_fragment(&mut d, 0xfff0, i as u16, n, ch);
                            w.core.handle_datagram(w.now, w.addrs[c], &d);
                        }
                    }
                }
                Step::Send(c, n) => {
                    let _ = w.clients[c].0.send(w.now, &vec![b'm'; n]);
                    w.flush_client(c);
                }
                Step::Advance(ms) => w.now += Duration::from_millis(ms),
                Step::Timeout => w.core.handle_timeout(w.now),
                Step::Process(n) => {
                    w.core.process_registrations(w.now, n);
                }
                Step::Kick(id) => {
                    let _ = w.core.kick(w.now, KickTarget::Id(id));
                }
            }
            w.drain()?;
        }
    }
}

// ---------------------------------------------------------------- control

fn control_line() -> impl Strategy<Value = String> {
    let words = prop_oneof![
        Just("help"),
        Just("auth"),
        Just("stats"),
        Just("INFO"),
        Just("clients"),
        Just("kick"),
        Just("metrics"),
        Just("config"),
        Just("shutdown"),
        Just("exit"),
        Just("quit"),
        Just("ping"),
        Just("log"),
        Just("level"),
        Just("on"),
        Just("off"),
        Just("debug"),
        Just("7"),
        Just("127.0.0.1:4000"),
        Just("[::1]:9"),
        Just("x"),
    ];
    prop_oneof![
        any::<String>(),
        (
            proptest::collection::vec(words, 0..4),
            prop_oneof![Just(" "), Just("\t"), Just("  ")]
        )
            .prop_map(|(w, sep)| w.join(sep)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn control_parse_never_panics_and_rerenders(line in control_line()) {
        match parse(&line) {
            Ok(cmd) => {
                let text = cmd.to_string();
                prop_assert_eq!(parse(&text), Ok(cmd));
            }
            Err(e) => prop_assert!(!e.is_empty() && !e.contains('\n')),
        }
    }
}

#[test]
fn relay_key_is_the_committed_fuzzing_key() {
    let k = ServerKey::from_pkcs8_pem(key_pem()).expect("fuzz/relay_key.pem parses");
    assert_eq!(k.modulus_len(), 256);
}

/// `RelayCore::shutdown` frees the sessions' in-flight reassemblies, as every other way a
/// session ends does (it did not: found while writing the relay fuzz target's invariant
/// "nothing in flight for ended sessions").
#[test]
fn shutdown_frees_reassemblies() {
    let unix0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let now = Instant::now();
    let cfg = Config::default();
    let key = ServerKey::from_pkcs8_pem(key_pem()).unwrap();
    let mut w = World {
        core: RelayCore::new(cfg.clone(), key, Rng::from_seed([1; 32]), now, unix0)
            .expect("valid config"),
        cfg,
        addrs: ADDRS.iter().map(|a| a.parse().unwrap()).collect(),
        clients: Vec::new(),
        now,
        start: now,
        unix0,
        rng: Rng::from_seed([2; 32]),
    };
    w.connect(0).unwrap();
    // The first fragment of a two-fragment message: one reassembly in flight.
    let mut d = Vec::new();
    put_fragment(&mut d, 7, 0, 2, &[b'A'; FRAGMENT_CHUNK]);
    w.core.handle_datagram(w.now, w.addrs[0], &d);
    assert_eq!(w.core.reassemblies_in_flight(), 1);
    w.core.shutdown(w.now);
    assert_eq!(w.core.client_count(), 0);
    assert_eq!(
        w.core.reassemblies_in_flight(),
        0,
        "reassemblies of forgotten sessions"
    );
    assert_eq!(w.core.reassembly_bytes(), 0);
}
