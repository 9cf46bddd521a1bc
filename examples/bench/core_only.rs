//! `--core-only M`: the profiler driver. No sockets: N `ClientSession`s registered with a
//! `RelayCore` by hand, M sealed messages pre-built, then `relay_messages()` (the only
//! function to collect, e.g. `--toggle-collect='*relay_messages*'`) feeds them to
//! `handle_datagram` and drains `transmits`. In group mode (`--distribution group`) the
//! datagrams the core sends to the distribution group are handed to every member, as the
//! network would, and every member has acknowledged its key before the profiled part.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcrelay::client::ClientSession;
use mcrelay::core::RelayCore;
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;
use mcrelay::{Distribution, GroupConfig};

use crate::server::bench_config;
use crate::{Opts, Sys};

/// Where relay datagrams "come from" in this sans-IO harness (clients lock onto it).
const RELAY: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 254),
    9,
));

struct Peer {
    addr: SocketAddr,
    s: ClientSession,
}

/// Move datagrams between the core and the clients until nothing moves; datagrams to
/// `group` go to every member that knows the group.
fn pump(core: &mut RelayCore, peers: &mut [Peer], group: Option<SocketAddr>, now: Instant) {
    loop {
        let mut moved = false;
        for p in peers.iter_mut() {
            while let Some(d) = p.s.poll_transmit() {
                core.handle_datagram(now, p.addr, &d);
                moved = true;
            }
        }
        core.process_registrations(now, 1024);
        let out: Vec<(SocketAddr, Vec<u8>)> =
            core.transmits().map(|(a, d)| (a, d.to_vec())).collect();
        core.advance_transmits(out.len(), 0);
        for (to, d) in out {
            if Some(to) == group {
                for p in peers.iter_mut().filter(|p| p.s.group_addr().is_some()) {
                    p.s.handle_datagram(now, RELAY, &d);
                    while p.s.poll_event().is_some() {}
                }
                moved = true;
            } else if let Some(p) = peers.iter_mut().find(|p| p.addr == to) {
                p.s.handle_datagram(now, RELAY, &d);
                while p.s.poll_event().is_some() {}
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

/// The profiled part: `sealed` datagrams from one client through the core, output dropped.
/// With `timers`, each message is also followed by the driver's per-turn calls
/// (`poll_timeout`, `handle_timeout`), as in `mcrelay serve` at low rates.
#[inline(never)]
fn relay_messages(
    core: &mut RelayCore,
    from: SocketAddr,
    sealed: &[Vec<u8>],
    start: Instant,
    timers: bool,
) -> u64 {
    let mut out = 0u64;
    for (i, d) in sealed.iter().enumerate() {
        let now = start + Duration::from_micros(i as u64);
        if timers {
            std::hint::black_box(core.poll_timeout());
            core.handle_timeout(now);
        }
        core.handle_datagram(now, from, d);
        let n = core.transmits().count();
        out += n as u64;
        core.advance_transmits(n, 0);
    }
    out
}

/// Native per-call costs of the pieces of one delivery's encryption, for a body of `size`
/// bytes (plaintext = SEQ + SENDER + DATA TLVs, as the relay seals it).
pub fn micro(size: usize) {
    use aes::cipher::{BlockModeEncrypt, KeyIvInit};
    use hmac::{KeyInit, Mac};
    use mcrelay::crypto::{base64, fernet};
    const N: u32 = 200_000;
    let plain = vec![7u8; size + 24];
    let token = fernet::token_len(plain.len());
    let raw = token / 4 * 3; // ~ the raw token, the HMAC input + tag
    let ct_len = (plain.len() / 16 + 1) * 16;
    let time = |name: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..N {
            f();
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(N);
        println!("micro: {name:<44} {ns:>7.0} ns");
        ns
    };
    let key = fernet::FernetKey::from_bytes(&[3u8; 32]);
    let mut out = Vec::with_capacity(4096);
    let mut rng = Rng::from_seed([1; 32]);
    time(
        &format!("fernet::encrypt_into ({} B plaintext)", plain.len()),
        &mut || {
            out.clear();
            let iv = rng.iv();
            fernet::encrypt_into(&key, &iv, 1, std::hint::black_box(&plain), &mut out);
        },
    );
    let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[1u8; 16]).unwrap();
    let input = vec![5u8; raw - 32];
    time(
        &format!("HMAC-SHA256, keyed state cloned ({} B)", input.len()),
        &mut || {
            let mut m = mac.clone();
            m.update(std::hint::black_box(&input));
            std::hint::black_box(m.finalize().into_bytes());
        },
    );
    let mut buf = vec![0u8; ct_len];
    time(
        &format!("AES-128-CBC encrypt ({ct_len} B, key schedule + IV init)"),
        &mut || {
            let mut enc =
                cbc::Encryptor::<aes::Aes128Enc>::new(&[1u8; 16].into(), &[2u8; 16].into());
            let (blocks, _) = aes::cipher::array::Array::slice_as_chunks_mut(&mut buf);
            enc.encrypt_blocks(blocks);
            std::hint::black_box(&buf);
        },
    );
    let rawbuf = vec![9u8; raw];
    time(
        &format!("base64url encode ({raw} B -> {token} B)"),
        &mut || {
            out.clear();
            base64::encode(std::hint::black_box(&rawbuf), &mut out);
        },
    );
    time("Rng::iv", &mut || {
        std::hint::black_box(rng.iv());
    });
    // What the relay runs per version-2 recipient: a binary token laid out, then finished
    // alone or four at a time (per token).
    let keys: Vec<fernet::FernetKey> = (0..4u8)
        .map(|k| fernet::FernetKey::from_bytes(&[k; 32]))
        .collect();
    let len = fernet::raw_token_len(plain.len());
    time(
        &format!(
            "fernet::finish_raw, one token ({len} B, {})",
            if mcrelay::crypto::multi::available() {
                "SHA/AES-NI kernels"
            } else {
                "RustCrypto"
            }
        ),
        &mut || {
            out.clear();
            let iv = rng.iv();
            fernet::prepare_raw(&iv, 1, std::hint::black_box(&plain), &mut out);
            fernet::finish_raw(&keys[0], &mut out);
        },
    );
    let ns4 = time("fernet::finish_raw_x4, four tokens", &mut || {
        out.clear();
        for _ in 0..4 {
            let iv = rng.iv();
            fernet::prepare_raw(&iv, 1, std::hint::black_box(&plain), &mut out);
        }
        let (a, rest) = out.split_at_mut(len);
        let (b, rest) = rest.split_at_mut(len);
        let (c, d) = rest.split_at_mut(len);
        fernet::finish_raw_x4([&keys[0], &keys[1], &keys[2], &keys[3]], [a, b, c, d]);
    });
    println!("micro: {:<44} {:>7.0} ns", "  = per token", ns4 / 4.0);
}

/// What the driver calls once per loop turn, alone: `poll_timeout` + `handle_timeout`.
#[inline(never)]
fn relay_messages_timers_only(core: &mut RelayCore, start: Instant, turns: u32) -> f64 {
    let t = Instant::now();
    for i in 0..turns {
        std::hint::black_box(core.poll_timeout());
        core.handle_timeout(start + Duration::from_micros(u64::from(i)));
    }
    t.elapsed().as_secs_f64() / f64::from(turns)
}

pub fn core_only(o: &Opts, messages: u32) {
    let key = match std::env::var_os("MCRELAY_BENCH_KEY") {
        Some(p) => ServerKey::from_pkcs8_pem(&std::fs::read_to_string(p).unwrap()).unwrap(),
        None => ServerKey::generate(2048).unwrap(),
    };
    let start = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let group_mode = o.systems.contains(&Sys::Group);
    let mut cfg = bench_config(o.clients, o.max_clients);
    let ingest = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(239, 255, 9, 9), 6000);
    let group = group_mode.then(|| {
        let g = GroupConfig::for_ingest(ingest);
        let to = SocketAddr::V4(g.addr);
        cfg.distribution = Distribution::Group(g);
        to
    });
    let mut core =
        RelayCore::new(cfg, key, Rng::from_seed([7; 32]), start, unix).expect("valid config");
    let mut peers: Vec<Peer> = (0..o.clients)
        .map(|i| Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 20000 + i as u16)),
            s: ClientSession::new(Rng::from_seed([i as u8; 32]), None, None, start),
        })
        .collect();
    // In groups, within the relay's queue of pending registrations. In group mode the
    // members already in follow along (they read the group: the ratchet on every join).
    for chunk in 0..o.clients.div_ceil(32) {
        let end = ((chunk + 1) * 32).min(o.clients);
        let first = if group_mode { 0 } else { chunk * 32 };
        pump(&mut core, &mut peers[first..end], group, start);
    }
    assert_eq!(core.client_count(), o.clients, "all registered");
    if group_mode {
        pump(&mut core, &mut peers, group, start);
        assert_eq!(core.pending_acks(), 0, "every member acknowledged its key");
    }
    // Seal every message first (client work, outside the profiled function).
    let mut body = vec![0u8; o.size];
    let sealed: Vec<Vec<u8>> = (0..messages)
        .map(|i| {
            body[..4].copy_from_slice(&i.to_le_bytes());
            peers[0].s.send(start, &body).unwrap();
            peers[0].s.poll_transmit().unwrap()
        })
        .collect();
    let t = Instant::now();
    let out = relay_messages(&mut core, peers[0].addr, &sealed, start, o.core_timers);
    let secs = t.elapsed().as_secs_f64();
    let turn = relay_messages_timers_only(&mut core, start, 100_000);
    micro(o.size);
    let deliveries = u64::from(messages) * (o.clients as u64 - 1);
    println!(
        "core-only: {messages} messages x {} recipients = {out} datagrams in {secs:.3} s: {:.3} us per delivery, {:.3} us per message (one thread, no syscalls{}{})",
        o.clients - 1,
        secs / deliveries as f64 * 1e6,
        secs / f64::from(messages) * 1e6,
        if group_mode { ", group mode" } else { "" },
        if o.core_timers {
            ", with the driver's timer calls per message"
        } else {
            ""
        },
    );
    println!(
        "core-only: poll_timeout + handle_timeout, once per loop turn in the driver: {:.3} us per turn ({} members)",
        turn * 1e6,
        o.clients
    );
}
