//! Micro benchmark of the multi-buffer kernels in `mcrelay::crypto::multi` against the
//! RustCrypto path that `crypto::fernet` uses today, in one process.
//!
//! `cargo run --release --features internals --example multi_micro -- [--iters 200000] [--reps 5]`
//!
//! Workloads, per stream (one stream = one recipient), each stream with its own key:
//! * AES-128-CBC of a 144-byte payload (9 blocks), key expansion included: the `cbc` crate's
//!   `Encryptor::<aes::Aes128Enc>::new` per call (as `fernet.rs` does with hardware AES) vs
//!   `cbc_encrypt_n` with N = 4 and 2, and `cbc_encrypt`.
//! * HMAC-SHA256 of a 153-byte message: the `hmac` crate with a cloned keyed state (as
//!   `fernet.rs` does) vs `hmac_n` with N = 4 and 2, and `hmac`.
//!
//! Every variant copies the plaintext into its buffer first, as the relay does.
//!
//! Two modes, because a tight loop of *independent* single-stream calls lets the out-of-order
//! core overlap consecutive calls' chains by itself (which the relay, with base64, syscalls
//! and bookkeeping between recipients, gets much less of):
//! * `indep`: every call's inputs are fixed; nothing links consecutive calls.
//! * `chained`: each call's input depends on the previous call's output (CBC: IV = previous
//!   last ciphertext block; HMAC: message starts with the previous tag), so consecutive
//!   calls cannot overlap and each pays its full latency.
//!
//! The variants of one row group are timed in turn within each repetition (so drift of the
//! clock or noise from neighbours hits them alike); each figure is the median over the
//! repetitions of `--iters` iterations, in ns per stream, after one untimed warm-up round.

use std::hint::black_box;
use std::time::Instant;

use aes::Aes128Enc;
use aes::cipher::array::Array;
use aes::cipher::{BlockModeEncrypt, KeyInit, KeyIvInit};
use hmac::{Hmac, Mac};
use mcrelay::crypto::multi;
use sha2::Sha256;

const CBC_LEN: usize = 144;
const MAC_LEN: usize = 153;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One timed variant: `f` processes `STREAMS` (4) streams per call.
struct Case<'a> {
    name: &'static str,
    f: Box<dyn FnMut() + 'a>,
}

/// Streams per call of every case (the x2 and single variants loop to cover four).
const STREAMS: usize = 4;

/// Times the cases of one group in turn, `reps` times (plus a warm-up round), and prints
/// each one's median in ns per stream, with the ratio to the first case (the reference).
fn run_group(title: &str, iters: usize, reps: usize, cases: &mut [Case<'_>]) {
    let mut ns = vec![Vec::with_capacity(reps); cases.len()];
    for rep in 0..=reps {
        for (c, case) in cases.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..iters {
                (case.f)();
            }
            if rep > 0 {
                ns[c].push(t.elapsed().as_nanos() as f64 / (iters * STREAMS) as f64);
            }
        }
    }
    let medians: Vec<f64> = ns
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    println!("{title}");
    for (case, &m) in cases.iter().zip(&medians) {
        println!(
            "  {:<22} {:>7.1} ns/stream  {:>5.2}x",
            case.name,
            m,
            medians[0] / m
        );
    }
}

/// Deterministic filler (splitmix64).
fn fill(seed: u64, out: &mut [u8]) {
    let mut s = seed;
    for b in out.iter_mut() {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *b = (z ^ (z >> 31)) as u8;
    }
}

/// The reference CBC: key expansion and encryption through the RustCrypto crates.
fn ref_cbc(key: &[u8; 16], iv: &[u8; 16], buf: &mut [u8]) {
    let mut enc = cbc::Encryptor::<Aes128Enc>::new(&Array::from(*key), &Array::from(*iv));
    let (blocks, _) = Array::slice_as_chunks_mut(buf);
    for block in blocks {
        enc.encrypt_block(block);
    }
}

fn last_block(buf: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b.copy_from_slice(&buf[buf.len() - 16..]);
    b
}

fn cbc_cases<'a>(
    keys: &'a [[u8; 16]; 4],
    ivs: &'a [[u8; 16]; 4],
    plain: &'a [[u8; CBC_LEN]; 4],
    chained: bool,
) -> Vec<Case<'a>> {
    let mut cases = Vec::new();

    let (mut buf, mut iv) = ([0u8; CBC_LEN], ivs[0]);
    cases.push(Case {
        name: "reference (cbc crate)",
        f: Box::new(move || {
            for i in 0..4 {
                buf.copy_from_slice(black_box(&plain[i]));
                let v = if chained { iv } else { ivs[i] };
                ref_cbc(black_box(&keys[i]), &v, &mut buf);
                iv = last_block(&buf);
                black_box(&buf);
            }
        }),
    });

    let (mut bufs, mut iv4) = ([[0u8; CBC_LEN]; 4], *ivs);
    cases.push(Case {
        name: "cbc_encrypt_n, N=4",
        f: Box::new(move || {
            for i in 0..4 {
                bufs[i].copy_from_slice(black_box(&plain[i]));
            }
            let v = if chained { iv4 } else { *ivs };
            let [b0, b1, b2, b3] = &mut bufs;
            multi::cbc_encrypt_n(black_box(keys).each_ref(), v.each_ref(), [b0, b1, b2, b3]);
            iv4 = bufs.each_ref().map(|b| last_block(b));
            black_box(&bufs);
        }),
    });

    let (mut b0, mut b1, mut iv2) = ([0u8; CBC_LEN], [0u8; CBC_LEN], [ivs[0], ivs[1]]);
    cases.push(Case {
        name: "cbc_encrypt_n, N=2 (x2)",
        f: Box::new(move || {
            for [p, q] in [[0, 1], [2, 3]] {
                b0.copy_from_slice(black_box(&plain[p]));
                b1.copy_from_slice(black_box(&plain[q]));
                let v = if chained { iv2 } else { [ivs[p], ivs[q]] };
                let k = black_box(keys);
                multi::cbc_encrypt_n([&k[p], &k[q]], [&v[0], &v[1]], [&mut b0, &mut b1]);
                iv2 = [last_block(&b0), last_block(&b1)];
                black_box((&b0, &b1));
            }
        }),
    });

    let (mut buf, mut iv) = ([0u8; CBC_LEN], ivs[0]);
    cases.push(Case {
        name: "cbc_encrypt (x4)",
        f: Box::new(move || {
            for i in 0..4 {
                buf.copy_from_slice(black_box(&plain[i]));
                let v = if chained { iv } else { ivs[i] };
                multi::cbc_encrypt(black_box(&keys[i]), &v, &mut buf);
                iv = last_block(&buf);
                black_box(&buf);
            }
        }),
    });
    cases
}

fn hmac_cases<'a>(
    ref_macs: &'a [Hmac<Sha256>; 4],
    mac_keys: &'a [multi::HmacKey; 4],
    msgs: &'a [[u8; MAC_LEN]; 4],
    chained: bool,
) -> Vec<Case<'a>> {
    let mut cases = Vec::new();
    // In chained mode, each message starts with the tag computed just before it.
    let (mut m, mut prev) = (*msgs, [0u8; 32]);
    cases.push(Case {
        name: "reference (hmac crate)",
        f: Box::new(move || {
            for i in 0..4 {
                if chained {
                    m[i][..32].copy_from_slice(&prev);
                }
                let mut mac = ref_macs[i].clone();
                mac.update(black_box(&m[i]));
                prev = mac.finalize().into_bytes().into();
                black_box(prev);
            }
        }),
    });

    let (mut m, mut prev) = (*msgs, [[0u8; 32]; 4]);
    cases.push(Case {
        name: "hmac_n, N=4",
        f: Box::new(move || {
            if chained {
                for i in 0..4 {
                    m[i][..32].copy_from_slice(&prev[i]);
                }
            }
            prev = multi::hmac_n(
                mac_keys.each_ref(),
                black_box(&m).each_ref().map(|x| &x[..]),
            );
            black_box(prev);
        }),
    });

    let (mut m, mut prev) = (*msgs, [[0u8; 32]; 2]);
    cases.push(Case {
        name: "hmac_n, N=2 (x2)",
        f: Box::new(move || {
            for [p, q] in [[0, 1], [2, 3]] {
                if chained {
                    m[p][..32].copy_from_slice(&prev[0]);
                    m[q][..32].copy_from_slice(&prev[1]);
                }
                let mm = black_box(&m);
                prev = multi::hmac_n([&mac_keys[p], &mac_keys[q]], [&mm[p], &mm[q]]);
                black_box(prev);
            }
        }),
    });

    let (mut m, mut prev) = (*msgs, [0u8; 32]);
    cases.push(Case {
        name: "hmac (x4)",
        f: Box::new(move || {
            for i in 0..4 {
                if chained {
                    m[i][..32].copy_from_slice(&prev);
                }
                prev = multi::hmac(&mac_keys[i], black_box(&m[i]));
                black_box(prev);
            }
        }),
    });
    cases
}

fn main() {
    if !multi::available() {
        eprintln!("multi_micro: this CPU lacks AES-NI/SHA-NI/SSE4.1; nothing to measure");
        return;
    }
    let iters = arg("--iters", 200_000);
    let reps = arg("--reps", 5).max(1);

    let mut keys = [[0u8; 16]; 4];
    let mut ivs = [[0u8; 16]; 4];
    let mut plain = [[0u8; CBC_LEN]; 4];
    let mut msgs = [[0u8; MAC_LEN]; 4];
    let mut mac_keys_raw = [[0u8; 16]; 4];
    for i in 0..4 {
        let s = i as u64 * 100;
        fill(s + 1, &mut keys[i]);
        fill(s + 2, &mut ivs[i]);
        fill(s + 3, &mut plain[i]);
        fill(s + 4, &mut msgs[i]);
        fill(s + 5, &mut mac_keys_raw[i]);
    }
    let ref_macs: [Hmac<Sha256>; 4] = core::array::from_fn(|i| {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&mac_keys_raw[i]).expect("any key length")
    });
    let mac_keys: [multi::HmacKey; 4] =
        core::array::from_fn(|i| multi::HmacKey::new(&mac_keys_raw[i]));

    println!(
        "{iters} iterations x 4 streams per repetition; median of {reps}; ns per stream; \
         ratio = reference / variant"
    );
    for chained in [false, true] {
        let mode = if chained { "chained" } else { "indep" };
        run_group(
            &format!("AES-128-CBC {CBC_LEN} B incl. key expansion [{mode}]"),
            iters,
            reps,
            &mut cbc_cases(&keys, &ivs, &plain, chained),
        );
    }
    for chained in [false, true] {
        let mode = if chained { "chained" } else { "indep" };
        run_group(
            &format!("HMAC-SHA256 {MAC_LEN} B [{mode}]"),
            iters,
            reps,
            &mut hmac_cases(&ref_macs, &mac_keys, &msgs, chained),
        );
    }
}
