//! Our base64url codec (src/crypto/base64.rs) against `base64ct`, the constant-time codec
//! already linked through the RSA/PEM stack: medians of 4 rounds, ns per call, for the raw
//! token sizes of a version-1 relayed message (117 and 153 bytes) and of a large fragment.
//! docs/architecture.md records why the relay keeps its own codec.
//!
//! Run: `cargo run --release --features internals --example base64_micro`

use base64ct::{Base64Url, Encoding};
use mcrelay::crypto::base64;
use std::hint::black_box;
use std::time::Instant;

fn main() {
    for size in [117usize, 153, 1100] {
        let raw: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        let n = 2_000_000 / (size / 100).max(1);
        let mut out = Vec::with_capacity(4096);
        let mut dec = Vec::with_capacity(4096);
        let mut enc_buf = vec![0u8; base64::encoded_len(size)];
        let mut dec_buf = vec![0u8; size + 3];
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..5 {
            let t = Instant::now();
            for _ in 0..n {
                out.clear();
                base64::encode(black_box(&raw), &mut out);
            }
            let ours_enc = t.elapsed().as_nanos() as f64 / n as f64;
            let t = Instant::now();
            for _ in 0..n {
                let s = Base64Url::encode(black_box(&raw), &mut enc_buf).unwrap();
                black_box(s);
            }
            let ct_enc = t.elapsed().as_nanos() as f64 / n as f64;
            let text = out.clone();
            let t = Instant::now();
            for _ in 0..n {
                dec.clear();
                base64::decode(black_box(&text), &mut dec).unwrap();
            }
            let ours_dec = t.elapsed().as_nanos() as f64 / n as f64;
            let t = Instant::now();
            for _ in 0..n {
                let d = Base64Url::decode(black_box(&text), &mut dec_buf).unwrap();
                black_box(d);
            }
            let ct_dec = t.elapsed().as_nanos() as f64 / n as f64;
            if round > 0 {
                ours.push((ours_enc, ours_dec));
                theirs.push((ct_enc, ct_dec));
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let (mut oe, mut od): (Vec<f64>, Vec<f64>) = ours.iter().cloned().unzip();
        let (mut te, mut td): (Vec<f64>, Vec<f64>) = theirs.iter().cloned().unzip();
        println!(
            "{size:5} B raw: encode ours {:6.0} ns base64ct {:6.0} ns ({:.2}x) | decode ours {:6.0} ns base64ct {:6.0} ns ({:.2}x)",
            med(&mut oe),
            med(&mut te),
            med(&mut te) / med(&mut oe),
            med(&mut od),
            med(&mut td),
            med(&mut td) / med(&mut od)
        );
    }
}
