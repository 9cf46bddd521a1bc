//! Multi-buffer AES-128-CBC and HMAC-SHA256 kernels (x86_64, AES-NI and SHA-NI).
//!
//! The relay re-encrypts every message once per recipient, each under its own Fernet key. Per
//! recipient the work is two *serial* chains: AES-128-CBC (every block's ten `AESENC`s depend
//! on the previous block's ciphertext) and SHA-256 (every compression depends on the previous
//! state). A single chain therefore runs at the instructions' *latency* and leaves most of the
//! AES and SHA units idle. All recipients of one message have the same plaintext length, so
//! their chains have exactly the same shape: this module runs several of them side by side,
//! one instruction of each chain after the other, and the out-of-order core overlaps them.
//!
//! * [`cbc_encrypt_n`] (and [`cbc_encrypt`] for one stream):
//!   AES-128-CBC of `N` independent streams of equal length, in place, including the
//!   key expansion.
//! * [`hmac_n`] (and [`hmac()`] for one message): HMAC-SHA256 of `N` equal-length messages,
//!   each under its own [`HmacKey`] (a key with its ipad and opad blocks already compressed).
//!
//! All variants are one generic kernel over the number of streams `N` (the stream loops are
//! over constant-length arrays, fully unrolled by the compiler).
//!
//! # Performance
//!
//! `examples/multi_micro.rs`, on a 2-vCPU Sapphire Rapids-class Xeon (KVM), per stream
//! against the RustCrypto path of `fernet.rs`: AES-128-CBC of 144 bytes with key expansion
//! ~170 ns → ~50 ns with x4 (~3.0–3.6×), ~65 ns with x2; HMAC-SHA256 of 153 bytes ~270 ns
//! → ~160 ns with x4 (~1.5–1.7×), ~180 ns with x2. The HMAC gain is capped by the hardware,
//! not the interleaving: there `SHA256RNDS2` has ~4 cycles latency but only ~3 cycles
//! reciprocal throughput, so at most ~1.35× over one chain is available, and x2 already gets
//! most of it. The AES key schedule uses `AESENCLAST`, not `AESKEYGENASSIST` (see
//! `expand_step`): the latter is not pipelined there (~14 cycles each).
//!
//! # Why interleaving is safe
//!
//! The streams share no state: each one has its own key schedule, its own chaining value and
//! its own buffer, and the kernels are the ordinary single-stream algorithms with the loop
//! over the streams moved innermost. Stream `i` only ever reads `keys[i]`, `ivs[i]` (or
//! `keys[i]`'s SHA-256 states) and `bufs[i]` / `msgs[i]`, so the result for each stream is
//! bit-for-bit the single-stream result; the tests check every stream against the RustCrypto
//! crates with a *different* key per stream, so any mixing of streams would fail them.
//!
//! # Constant time
//!
//! AES-NI and SHA-NI have data-independent timing, and the kernels contain no branch or
//! memory index that depends on key or data: the only branches are on the (public) lengths.
//!
//! # Availability
//!
//! The kernels need `aes`, `sse2`, `ssse3`, `sse4.1` and `sha` (checked once at run time by
//! [`available`]). Every entry point **panics** when [`available`] is false, including on
//! other architectures, where the module compiles but [`available`] always returns false:
//! callers keep their portable path (the `aes`/`cbc`/`hmac` crates) and take this one only
//! when [`available`] says so. [`HmacKey::new`] is portable and works everywhere.

#![allow(unsafe_code)]

use core::fmt;
use zeroize::Zeroize;

/// True when the CPU has everything the kernels need: AES-NI, SHA-NI, SSE2, SSSE3 and
/// SSE4.1. Detected once and cached; always false on architectures other than x86_64.
#[must_use]
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::atomic::{AtomicU8, Ordering};
        // 0: not yet detected, 1: missing, 2: present. Racing first calls both detect and
        // store the same value.
        static CACHE: AtomicU8 = AtomicU8::new(0);
        match CACHE.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let yes = std::is_x86_feature_detected!("aes")
                    && std::is_x86_feature_detected!("sha")
                    && std::is_x86_feature_detected!("sse2")
                    && std::is_x86_feature_detected!("ssse3")
                    && std::is_x86_feature_detected!("sse4.1");
                CACHE.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Panics unless the kernels can run here.
#[inline]
#[track_caller]
fn assert_available() {
    assert!(
        available(),
        "crypto::multi kernels need AES-NI, SHA-NI and SSE4.1 (check multi::available())"
    );
}

// ---------------------------------------------------------------------------------------------
// AES-128-CBC
// ---------------------------------------------------------------------------------------------

/// [`cbc_encrypt_n`] for a single stream (AES-NI key expansion and CBC, no interleaving).
///
/// # Panics
/// If `buf.len()` is not a multiple of 16, or if [`available`] is false.
pub fn cbc_encrypt(key: &[u8; 16], iv: &[u8; 16], buf: &mut [u8]) {
    cbc_encrypt_n([key], [iv], [buf]);
}

/// AES-128-CBC encryption of `N` independent streams, in place, without padding (the relay
/// uses `N = 4`).
///
/// Stream `i` encrypts `bufs[i]` under `keys[i]` with IV `ivs[i]`; the result is exactly what
/// `cbc::Encryptor::<aes::Aes128Enc>` produces for that stream alone. The key expansions and
/// the CBC chains are interleaved instruction by instruction, so the ~3–4 cycle latency of
/// each `AESENC` is filled with the other streams' rounds. Where `AESENC` has 3 cycles
/// latency and two per cycle throughput (Intel since Ice Lake, AMD since Zen 3) four streams
/// cannot fill the AES units and eight can: on 1,200-byte payloads `N = 8` was ~1.4× faster
/// per stream than `N = 4` here (Sapphire Rapids-class Xeon), on 144-byte ones no faster (the
/// key expansions dominate).
///
/// # Panics
/// If the buffers do not all have the same length, if that length is not a multiple of 16,
/// or if [`available`] is false.
#[track_caller]
pub fn cbc_encrypt_n<const N: usize>(
    keys: [&[u8; 16]; N],
    ivs: [&[u8; 16]; N],
    bufs: [&mut [u8]; N],
) {
    let len = bufs[0].len();
    assert!(
        bufs.iter().all(|b| b.len() == len),
        "cbc_encrypt: streams of unequal length"
    );
    assert!(
        len.is_multiple_of(16),
        "cbc_encrypt: length {len} is not a multiple of 16"
    );
    assert_available();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `assert_available` just checked that the CPU has every feature `cbc_n` enables.
    unsafe {
        x86::cbc_n(keys, ivs, bufs);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Unreachable: `assert_available` panicked.
        let _ = (keys, ivs, bufs);
    }
}

// ---------------------------------------------------------------------------------------------
// HMAC-SHA256
// ---------------------------------------------------------------------------------------------

/// SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// An HMAC-SHA256 key with its two pad blocks already compressed: the SHA-256 state after
/// `key ⊕ ipad` (inner) and after `key ⊕ opad` (outer). 64 bytes, `Copy`-cheap to clone.
///
/// `Debug` prints no key material.
#[derive(Clone)]
pub struct HmacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl Drop for HmacKey {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey { .. }")
    }
}

impl HmacKey {
    /// The key `key` (any length; keys longer than 64 bytes are first hashed, as RFC 2104
    /// says; Fernet uses 16). Portable (the `sha2` crate's compression function), not hot.
    #[must_use]
    pub fn new(key: &[u8]) -> HmacKey {
        use sha2::Digest;
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&sha2::Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut pad = [0u8; 64];
        let mut state = |byte: u8| {
            for (p, k) in pad.iter_mut().zip(&block) {
                *p = k ^ byte;
            }
            let mut st = H0;
            sha2::block_api::compress256(&mut st, core::slice::from_ref(&pad));
            st
        };
        let inner = state(0x36);
        let outer = state(0x5c);
        block.zeroize();
        pad.zeroize();
        HmacKey { inner, outer }
    }
}

/// Single-stream HMAC-SHA256 with SHA-NI.
///
/// # Panics
/// If [`available`] is false.
#[must_use]
pub fn hmac(key: &HmacKey, msg: &[u8]) -> [u8; 32] {
    let [tag] = hmac_n([key], [msg]);
    tag
}

/// HMAC-SHA256 of `N` messages of equal length, each under its own key (the relay uses
/// `N = 4`); the SHA-256 chains (inner hash, then the one-block outer hash) are interleaved
/// with SHA-NI. `result[i]` is HMAC-SHA256(`keys[i]`, `msgs[i]`).
///
/// # Panics
/// If the messages differ in length, or if [`available`] is false.
#[must_use]
#[track_caller]
pub fn hmac_n<const N: usize>(keys: [&HmacKey; N], msgs: [&[u8]; N]) -> [[u8; 32]; N] {
    let len = msgs[0].len();
    assert!(
        msgs.iter().all(|m| m.len() == len),
        "hmac: messages of unequal length"
    );
    assert_available();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `assert_available` just checked that the CPU has every feature `hmac_n` enables.
    unsafe {
        x86::hmac_n(keys, msgs)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Unreachable: `assert_available` panicked.
        let _ = keys.map(|k| (k.inner, k.outer));
        [[0u8; 32]; N]
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The kernels. Every function here is `#[target_feature]`; the public wrappers call them
    //! only after [`super::available`] confirmed the features. Intrinsics are safe to call in
    //! these functions; the only `unsafe` left is the unaligned loads and stores, in
    //! [`load`] and [`store`], from and to references of exactly 16 bytes.

    use super::HmacKey;
    use core::arch::x86_64::*;

    /// 16 bytes from memory (no alignment needed).
    #[inline]
    #[target_feature(enable = "sse2")]
    fn load(bytes: &[u8; 16]) -> __m128i {
        // SAFETY: `bytes` is a valid, readable 16-byte object; `loadu` has no alignment
        // requirement.
        unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
    }

    /// 16 bytes to memory (no alignment needed).
    #[inline]
    #[target_feature(enable = "sse2")]
    fn store(bytes: &mut [u8; 16], v: __m128i) {
        // SAFETY: `bytes` is a valid, writable, exclusively borrowed 16-byte object; `storeu`
        // has no alignment requirement.
        unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), v) }
    }

    /// Bytes `16 * j .. 16 * j + 16` of a 64-byte block.
    #[inline]
    fn quarter(block: &[u8; 64], j: usize) -> &[u8; 16] {
        let (quarters, _) = block.as_chunks::<16>();
        &quarters[j]
    }

    // ---- AES-128 ----------------------------------------------------------------------------

    /// One step of the AES-128 key schedule (FIPS 197, 5.2): from round key `k`, the next
    /// one, with round constant `rcon`.
    ///
    /// `SubWord(RotWord(w3)) ⊕ Rcon` is computed with `AESENCLAST` rather than
    /// `AESKEYGENASSIST`: `PSHUFB` puts `RotWord(w3)` into all four columns, where
    /// `ShiftRows` is the identity, so `AESENCLAST` with round key `rcon` in every column
    /// yields `SubWord(RotWord(w3)) ⊕ rcon` in every column. (Same trick as BoringSSL's
    /// `aes_hw_set_encrypt_key_alt`.) On the CPUs measured here `AESKEYGENASSIST` is
    /// microcoded, ~14 cycles and not pipelined, which made the key expansion of four
    /// streams cost as much as their encryption; `AESENCLAST` is pipelined like `AESENC`.
    /// The result is XORed into the prefix-XOR of `k`'s four words.
    #[inline]
    #[target_feature(enable = "aes,sse2,ssse3")]
    fn expand_step(k: __m128i, rcon: i32) -> __m128i {
        // Bytes 13, 14, 15, 12 (RotWord of word 3) in every column.
        let rot_word3 = _mm_set1_epi32(0x0c0f_0e0d);
        let t = _mm_aesenclast_si128(_mm_shuffle_epi8(k, rot_word3), _mm_set1_epi32(rcon));
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        let k = _mm_xor_si128(k, _mm_slli_si128::<8>(k));
        _mm_xor_si128(k, t)
    }

    /// The next round key of each of `N` schedules.
    #[inline]
    #[target_feature(enable = "aes,sse2,ssse3")]
    fn expand_all<const N: usize>(prev: &[__m128i; N], rcon: i32) -> [__m128i; N] {
        let mut next = *prev;
        for i in 0..N {
            next[i] = expand_step(prev[i], rcon);
        }
        next
    }

    /// The eleven AES-128 round keys of each of `N` keys, round-major: `rk[r][i]` is round
    /// key `r` of key `i`. The schedules are computed round by round across the keys, so the
    /// `N` dependency chains overlap. (Written out round by round so that every index is a
    /// constant: no zero-initialised array, no loop-carried table lookups.)
    #[inline]
    #[target_feature(enable = "aes,sse2,ssse3")]
    fn expand_keys<const N: usize>(keys: [&[u8; 16]; N]) -> [[__m128i; N]; 11] {
        let mut r0 = [_mm_setzero_si128(); N];
        for i in 0..N {
            r0[i] = load(keys[i]);
        }
        let r1 = expand_all(&r0, 0x01);
        let r2 = expand_all(&r1, 0x02);
        let r3 = expand_all(&r2, 0x04);
        let r4 = expand_all(&r3, 0x08);
        let r5 = expand_all(&r4, 0x10);
        let r6 = expand_all(&r5, 0x20);
        let r7 = expand_all(&r6, 0x40);
        let r8 = expand_all(&r7, 0x80);
        let r9 = expand_all(&r8, 0x1b);
        let r10 = expand_all(&r9, 0x36);
        [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10]
    }

    /// AES-128-CBC encryption of `N` equal-length streams in place (the caller checked that
    /// the lengths are equal multiples of 16).
    ///
    /// For each block index, each stream's block is XORed with that stream's previous
    /// ciphertext (or IV), then the ten rounds run with the stream loop innermost: round `r`
    /// of stream 0, of stream 1, …, so consecutive `AESENC`s are independent.
    #[target_feature(enable = "aes,sse2,ssse3")]
    pub(super) fn cbc_n<const N: usize>(
        keys: [&[u8; 16]; N],
        ivs: [&[u8; 16]; N],
        bufs: [&mut [u8]; N],
    ) {
        let rk = expand_keys(keys);
        // The chaining value of each stream: the IV, then the last ciphertext block.
        let mut x = [_mm_setzero_si128(); N];
        for i in 0..N {
            x[i] = load(ivs[i]);
        }
        let n = bufs[0].len() / 16;
        for j in 0..n {
            for i in 0..N {
                let block = &bufs[i].as_chunks::<16>().0[j];
                // Plaintext ⊕ round key 0 is off the chain; one XOR with the chaining value.
                x[i] = _mm_xor_si128(x[i], _mm_xor_si128(load(block), rk[0][i]));
            }
            for round in &rk[1..10] {
                for i in 0..N {
                    x[i] = _mm_aesenc_si128(x[i], round[i]);
                }
            }
            for i in 0..N {
                x[i] = _mm_aesenclast_si128(x[i], rk[10][i]);
                store(&mut bufs[i].as_chunks_mut::<16>().0[j], x[i]);
            }
        }
    }

    // ---- SHA-256 ----------------------------------------------------------------------------

    /// SHA-256 round constants (FIPS 180-4, 4.2.2), four per 128-bit vector.
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// `pshufb` mask reversing the bytes of each 32-bit word (SHA-256 is big-endian).
    #[inline]
    #[target_feature(enable = "sse2")]
    fn bswap32_mask() -> __m128i {
        _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203)
    }

    /// A SHA-256 state in the register layout `SHA256RNDS2` wants: `[F, E, B, A]` and
    /// `[H, G, D, C]` (lane 3 first).
    #[derive(Clone, Copy)]
    struct State {
        abef: __m128i,
        cdgh: __m128i,
    }

    /// The eight state words `[A..H]` into SHA-NI layout.
    #[inline]
    #[target_feature(enable = "sse2,ssse3,sse4.1")]
    fn to_state(h: &[u32; 8]) -> State {
        let dcba = _mm_set_epi32(h[3] as i32, h[2] as i32, h[1] as i32, h[0] as i32);
        let hgfe = _mm_set_epi32(h[7] as i32, h[6] as i32, h[5] as i32, h[4] as i32);
        let cdab = _mm_shuffle_epi32::<0xb1>(dcba);
        let efgh = _mm_shuffle_epi32::<0x1b>(hgfe);
        State {
            abef: _mm_alignr_epi8::<8>(cdab, efgh),
            cdgh: _mm_blend_epi16::<0xf0>(efgh, cdab),
        }
    }

    /// SHA-NI layout back to `[D, C, B, A]` and `[H, G, F, E]` (lane 0 = A, resp. E): the
    /// digest's eight words in order, as the message words of a block that starts with it.
    #[inline]
    #[target_feature(enable = "sse2,ssse3,sse4.1")]
    fn from_state(s: State) -> [__m128i; 2] {
        let feba = _mm_shuffle_epi32::<0x1b>(s.abef);
        let dchg = _mm_shuffle_epi32::<0xb1>(s.cdgh);
        [
            _mm_blend_epi16::<0xf0>(feba, dchg),
            _mm_alignr_epi8::<8>(dchg, feba),
        ]
    }

    /// A 64-byte block as its sixteen big-endian message words, four per vector.
    #[inline]
    #[target_feature(enable = "sse2,ssse3")]
    fn load_block(block: &[u8; 64]) -> [__m128i; 4] {
        let mask = bswap32_mask();
        [
            _mm_shuffle_epi8(load(quarter(block, 0)), mask),
            _mm_shuffle_epi8(load(quarter(block, 1)), mask),
            _mm_shuffle_epi8(load(quarter(block, 2)), mask),
            _mm_shuffle_epi8(load(quarter(block, 3)), mask),
        ]
    }

    /// One SHA-256 compression in each of `N` states, message words `w[i]` into state `i`.
    ///
    /// The 16 groups of four rounds run group by group with the stream loop innermost, so
    /// the `N` chains of dependent `SHA256RNDS2` overlap; the message schedule (`SHA256MSG1`,
    /// `SHA256MSG2`) of each stream is independent of its rounds and fills the gaps too.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn compress<const N: usize>(st: &mut [State; N], mut w: [[__m128i; 4]; N]) {
        let saved = *st;
        // Rounds 4g .. 4g + 4 with message words w[_][j] (fully unrolled by the macro, so
        // every index is a constant and the words stay in registers). The five-argument form
        // first computes W[4g .. 4g + 4] into w[_][j] from the previous sixteen words
        // (FIPS 180-4, 6.2.2 step 1), held in w[_][j], w[_][j1], w[_][j2], w[_][j3].
        macro_rules! quad {
            ($g:literal, $j:literal, $j1:literal, $j2:literal, $j3:literal) => {
                for i in 0..N {
                    let w = &mut w[i];
                    let t = _mm_add_epi32(
                        _mm_sha256msg1_epu32(w[$j], w[$j1]),
                        _mm_alignr_epi8::<4>(w[$j3], w[$j2]),
                    );
                    w[$j] = _mm_sha256msg2_epu32(t, w[$j3]);
                }
                quad!($g, $j);
            };
            ($g:literal, $j:literal) => {
                let k = _mm_set_epi32(
                    K[4 * $g + 3] as i32,
                    K[4 * $g + 2] as i32,
                    K[4 * $g + 1] as i32,
                    K[4 * $g] as i32,
                );
                for i in 0..N {
                    let wk = _mm_add_epi32(w[i][$j], k);
                    let s = &mut st[i];
                    s.cdgh = _mm_sha256rnds2_epu32(s.cdgh, s.abef, wk);
                    let wk_hi = _mm_shuffle_epi32::<0x0e>(wk);
                    s.abef = _mm_sha256rnds2_epu32(s.abef, s.cdgh, wk_hi);
                }
            };
        }
        quad!(0, 0);
        quad!(1, 1);
        quad!(2, 2);
        quad!(3, 3);
        quad!(4, 0, 1, 2, 3);
        quad!(5, 1, 2, 3, 0);
        quad!(6, 2, 3, 0, 1);
        quad!(7, 3, 0, 1, 2);
        quad!(8, 0, 1, 2, 3);
        quad!(9, 1, 2, 3, 0);
        quad!(10, 2, 3, 0, 1);
        quad!(11, 3, 0, 1, 2);
        quad!(12, 0, 1, 2, 3);
        quad!(13, 1, 2, 3, 0);
        quad!(14, 2, 3, 0, 1);
        quad!(15, 3, 0, 1, 2);
        for i in 0..N {
            st[i].abef = _mm_add_epi32(st[i].abef, saved[i].abef);
            st[i].cdgh = _mm_add_epi32(st[i].cdgh, saved[i].cdgh);
        }
    }

    /// HMAC-SHA256 of `N` equal-length messages (the caller checked the lengths).
    ///
    /// Inner hash: from each key's inner state, the message's whole blocks straight from
    /// the message, then one or two padded tail blocks built on the stack (`0x80`, zeros, the
    /// 64-bit bit length of ipad block + message). Outer hash: one block, the inner digest
    /// followed by its padding (length 96 bytes = 768 bits), built directly in registers.
    /// Every step runs all `N` streams together; equal lengths mean equal block counts.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn hmac_n<const N: usize>(keys: [&HmacKey; N], msgs: [&[u8]; N]) -> [[u8; 32]; N] {
        let len = msgs[0].len();
        let mut st = [State {
            abef: _mm_setzero_si128(),
            cdgh: _mm_setzero_si128(),
        }; N];
        for i in 0..N {
            st[i] = to_state(&keys[i].inner);
        }

        for b in 0..len / 64 {
            let mut w = [[_mm_setzero_si128(); 4]; N];
            for i in 0..N {
                w[i] = load_block(&msgs[i].as_chunks::<64>().0[b]);
            }
            compress(&mut st, w);
        }

        // Tail: the last len % 64 bytes, 0x80, zeros, then the bit length in the last 8 bytes
        // of the first block that has room for it.
        let rem = len % 64;
        let tail_len = if rem < 56 { 64 } else { 128 };
        let bits = (64 + len as u64) * 8;
        let mut tail = [[0u8; 128]; N];
        for i in 0..N {
            tail[i][..rem].copy_from_slice(&msgs[i][len - rem..]);
            tail[i][rem] = 0x80;
            tail[i][tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
        }
        for b in 0..tail_len / 64 {
            let mut w = [[_mm_setzero_si128(); 4]; N];
            for i in 0..N {
                w[i] = load_block(&tail[i].as_chunks::<64>().0[b]);
            }
            compress(&mut st, w);
        }

        // Outer hash: digest ‖ 0x80 ‖ zeros ‖ u64 BE (64 + 32) * 8, as message words.
        let pad0 = _mm_set_epi32(0, 0, 0, 0x8000_0000_u32 as i32);
        let pad1 = _mm_set_epi32(768, 0, 0, 0);
        let mut w = [[_mm_setzero_si128(); 4]; N];
        for i in 0..N {
            let [d0, d1] = from_state(st[i]);
            w[i] = [d0, d1, pad0, pad1];
        }
        for i in 0..N {
            st[i] = to_state(&keys[i].outer);
        }
        compress(&mut st, w);

        let mask = bswap32_mask();
        let mut tags = [[0u8; 32]; N];
        for i in 0..N {
            let [d0, d1] = from_state(st[i]);
            let (halves, _) = tags[i].as_chunks_mut::<16>();
            store(&mut halves[0], _mm_shuffle_epi8(d0, mask));
            store(&mut halves[1], _mm_shuffle_epi8(d1, mask));
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::Aes128Enc;
    use aes::cipher::array::Array;
    use aes::cipher::{BlockModeEncrypt, KeyIvInit};
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    /// splitmix64: a small deterministic generator for test inputs.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn fill(&mut self, out: &mut [u8]) {
            for chunk in out.chunks_mut(8) {
                let r = self.next().to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
        }
        fn bytes<const L: usize>(&mut self) -> [u8; L] {
            let mut b = [0u8; L];
            self.fill(&mut b);
            b
        }
        fn vec(&mut self, n: usize) -> Vec<u8> {
            let mut v = vec![0u8; n];
            self.fill(&mut v);
            v
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn skip() -> bool {
        if !available() {
            eprintln!("crypto::multi: AES-NI/SHA-NI not available here; skipping");
            return true;
        }
        false
    }

    fn ref_cbc(key: &[u8; 16], iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        let mut enc = cbc::Encryptor::<Aes128Enc>::new(&Array::from(*key), &Array::from(*iv));
        let (blocks, rest) = Array::slice_as_chunks_mut(&mut out);
        assert!(rest.is_empty());
        for block in blocks {
            enc.encrypt_block(block);
        }
        out
    }

    fn ref_hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(key)
            .expect("HMAC takes any key length");
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    /// Runs the x4, x2 and single CBC kernels on `len`-byte streams with distinct random keys,
    /// IVs and plaintexts, and checks every stream against the `cbc` crate.
    fn check_cbc(g: &mut Gen, len: usize) {
        let keys: [[u8; 16]; 8] = core::array::from_fn(|_| g.bytes());
        let ivs: [[u8; 16]; 8] = core::array::from_fn(|_| g.bytes());
        let plain: [Vec<u8>; 8] = core::array::from_fn(|_| g.vec(len));
        let want: [Vec<u8>; 8] = core::array::from_fn(|i| ref_cbc(&keys[i], &ivs[i], &plain[i]));

        let mut bufs = plain.clone();
        let [b0, b1, b2, b3, ..] = &mut bufs;
        cbc_encrypt_n(
            [&keys[0], &keys[1], &keys[2], &keys[3]],
            [&ivs[0], &ivs[1], &ivs[2], &ivs[3]],
            [b0.as_mut_slice(), b1, b2, b3],
        );
        for i in 0..4 {
            assert_eq!(bufs[i], want[i], "x4 stream {i}, len {len}");
        }

        let mut bufs = plain.clone();
        let [b0, b1, b2, b3, b4, b5, b6, b7] = &mut bufs;
        cbc_encrypt_n(
            keys.each_ref(),
            ivs.each_ref(),
            [b0.as_mut_slice(), b1, b2, b3, b4, b5, b6, b7],
        );
        for i in 0..8 {
            assert_eq!(bufs[i], want[i], "x8 stream {i}, len {len}");
        }

        let mut bufs = plain.clone();
        let [b0, b1, ..] = &mut bufs;
        cbc_encrypt_n(
            [&keys[2], &keys[0]],
            [&ivs[2], &ivs[0]],
            [b0.as_mut_slice(), b1],
        );
        assert_eq!(
            bufs[0],
            ref_cbc(&keys[2], &ivs[2], &plain[0]),
            "x2 stream 0, len {len}"
        );
        assert_eq!(
            bufs[1],
            ref_cbc(&keys[0], &ivs[0], &plain[1]),
            "x2 stream 1, len {len}"
        );

        let mut buf = plain[3].clone();
        cbc_encrypt(&keys[3], &ivs[3], &mut buf);
        assert_eq!(buf, want[3], "single, len {len}");
    }

    #[test]
    fn cbc_matches_reference() {
        if skip() {
            return;
        }
        let mut g = Gen(0x5eed_0001);
        for len in [0, 16, 32, 128, 144, 1200, 4096] {
            check_cbc(&mut g, len);
        }
        for _ in 0..300 {
            let len = 16 * g.below(100) as usize;
            check_cbc(&mut g, len);
        }
    }

    #[test]
    fn cbc_fips197_key_schedule() {
        if skip() {
            return;
        }
        // FIPS 197 appendix C.1: AES-128 of 00112233…ff under 000102…0f; with a zero IV,
        // one CBC block is one plain AES block.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let mut buf: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
        cbc_encrypt(&key, &[0; 16], &mut buf);
        let want = [
            0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4,
            0xc5, 0x5a,
        ];
        assert_eq!(buf, want);
    }

    #[test]
    #[should_panic(expected = "unequal length")]
    fn cbc_x4_rejects_unequal_lengths() {
        // Panics on the length check, before (and regardless of) the CPU check.
        let k = [0u8; 16];
        let (mut a, mut b, mut c, mut d) = ([0u8; 32], [0u8; 32], [0u8; 16], [0u8; 32]);
        cbc_encrypt_n([&k; 4], [&k; 4], [&mut a, &mut b, &mut c, &mut d]);
    }

    #[test]
    #[should_panic(expected = "not a multiple of 16")]
    fn cbc_x4_rejects_partial_blocks() {
        let k = [0u8; 16];
        let (mut a, mut b, mut c, mut d) = ([0u8; 20], [0u8; 20], [0u8; 20], [0u8; 20]);
        cbc_encrypt_n([&k; 4], [&k; 4], [&mut a, &mut b, &mut c, &mut d]);
    }

    #[test]
    #[should_panic(expected = "unequal length")]
    fn hmac_n_rejects_unequal_lengths() {
        let k = HmacKey::new(b"k");
        let _ = hmac_n([&k, &k], [b"abc", b"abcd"]);
    }

    /// Runs the x2, x4 and single HMAC kernels on `len`-byte messages with distinct random
    /// keys of `key_len` bytes, and checks every stream against the `hmac` crate.
    fn check_hmac(g: &mut Gen, len: usize, key_len: usize) {
        let raw: [Vec<u8>; 4] = core::array::from_fn(|_| g.vec(key_len));
        let keys: [HmacKey; 4] = core::array::from_fn(|i| HmacKey::new(&raw[i]));
        let msgs: [Vec<u8>; 4] = core::array::from_fn(|_| g.vec(len));
        let want: [[u8; 32]; 4] = core::array::from_fn(|i| ref_hmac(&raw[i], &msgs[i]));

        let got = hmac_n([&keys[0], &keys[1]], [&msgs[0], &msgs[1]]);
        assert_eq!(got, [want[0], want[1]], "x2, len {len}, key {key_len}");
        let got = hmac_n([&keys[3], &keys[2]], [&msgs[3], &msgs[2]]);
        assert_eq!(
            got,
            [want[3], want[2]],
            "x2 swapped, len {len}, key {key_len}"
        );
        let got = hmac_n(keys.each_ref(), msgs.each_ref().map(|m| m.as_slice()));
        assert_eq!(got, want, "x4, len {len}, key {key_len}");
        for i in 0..4 {
            assert_eq!(hmac(&keys[i], &msgs[i]), want[i], "single, len {len}");
        }
    }

    #[test]
    fn hmac_matches_reference() {
        if skip() {
            return;
        }
        let mut g = Gen(0x5eed_0002);
        for len in [0, 1, 55, 56, 63, 64, 119, 120, 153, 1000, 70_000] {
            check_hmac(&mut g, len, 16);
        }
        for len in 0..=200 {
            check_hmac(&mut g, len, 16);
        }
        for _ in 0..200 {
            let len = g.below(2000) as usize;
            let key_len = g.below(150) as usize;
            check_hmac(&mut g, len, key_len);
        }
        for key_len in [0, 1, 32, 63, 64, 65, 200] {
            check_hmac(&mut g, 100, key_len);
        }
    }

    #[test]
    fn hmac_rfc4231_case_2() {
        if skip() {
            return;
        }
        let key = HmacKey::new(b"Jefe");
        let tag = hmac(&key, b"what do ya want for nothing?");
        let want = [
            0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
            0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
            0x64, 0xec, 0x38, 0x43,
        ];
        assert_eq!(tag, want);
        // The same through the interleaved kernel, next to another key.
        let other = HmacKey::new(b"not Jefe");
        let [a, _] = hmac_n([&key, &other], [b"what do ya want for nothing?"; 2]);
        assert_eq!(a, want);
    }

    #[test]
    fn hmac_key_debug_hides_the_key() {
        let k = HmacKey::new(b"secret key bytes");
        assert_eq!(format!("{k:?}"), "HmacKey { .. }");
    }
}
