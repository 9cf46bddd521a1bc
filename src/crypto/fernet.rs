//! In-house Fernet codec (<https://github.com/fernet/spec>, version 0x80).
//!
//! ```text
//! token = base64url(0x80 ‖ timestamp: u64 BE ‖ IV[16] ‖ AES-128-CBC-PKCS7(plaintext) ‖ HMAC-SHA256[32])
//! key   = signing key[16] ‖ encryption key[16]
//! ```
//!
//! The HMAC, under the signing key, covers every byte before it.
//!
//! Unlike the `fernet` crate this codec takes the IV and timestamp from the
//! caller, writes into caller-owned buffers and keeps the AES key schedules
//! and the keyed HMAC state in [`FernetKey`], because the relay re-encrypts
//! every message once per recipient:
//!
//! * [`encrypt_into`] streams the token through a small stack buffer
//!   (CBC block → HMAC → base64) straight into `out`: no heap allocation once
//!   `out` has [`token_len`] spare capacity, and no intermediate copy of the
//!   whole token.
//! * [`decrypt_into`] base64-decodes into a reusable `scratch` buffer,
//!   verifies the HMAC in constant time *before* decrypting anything, then
//!   decrypts straight from `scratch` into `out`.
//!
//! Timestamp policy is separate: [`decrypt_into`] returns the (authenticated)
//! timestamp and [`check_timestamp`] applies TTL and clock-skew limits.

use super::base64;
use super::multi;
use super::rng::Rng;
use aes::cipher::array::Array;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, InnerIvInit, KeyInit};
use aes::{Aes128Dec, Aes128Enc};
use core::fmt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Version byte of the only Fernet version this codec speaks.
pub const VERSION: u8 = 0x80;
/// Bytes before the ciphertext: version, timestamp, IV.
const HEADER_LEN: usize = 1 + 8 + 16;
/// Length of the HMAC-SHA256 tag.
const MAC_LEN: usize = 32;
/// Smallest decoded token: header, one ciphertext block, tag.
const MIN_RAW_LEN: usize = HEADER_LEN + 16 + MAC_LEN;
/// Length of a base64url-encoded key with padding.
pub const KEY_B64_LEN: usize = 44;

type HmacSha256 = Hmac<Sha256>;

/// Why a key or token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FernetError {
    /// The token or key is not valid base64url.
    BadBase64,
    /// The decoded token is shorter than the smallest possible token.
    TooShort,
    /// The version byte is not 0x80.
    BadVersion,
    /// The HMAC does not match (wrong key, or the token was altered).
    BadHmac,
    /// The authenticated plaintext has invalid PKCS#7 padding.
    BadPadding,
    /// The ciphertext is not a whole number of 16-byte blocks.
    BadLength,
    /// The token is older than its time-to-live.
    Expired,
    /// The token's timestamp is further in the future than the allowed skew.
    FromFuture,
    /// The key is not the base64url encoding of 32 bytes.
    BadKey,
}

impl fmt::Display for FernetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FernetError::BadBase64 => "fernet token is not valid base64url",
            FernetError::TooShort => "fernet token too short",
            FernetError::BadVersion => "unsupported fernet version",
            FernetError::BadHmac => "fernet token HMAC mismatch",
            FernetError::BadPadding => "fernet plaintext has bad padding",
            FernetError::BadLength => "fernet ciphertext is not a multiple of the block size",
            FernetError::Expired => "fernet token expired",
            FernetError::FromFuture => "fernet token timestamp is in the future",
            FernetError::BadKey => "fernet key is not 32 bytes of base64url",
        })
    }
}

impl std::error::Error for FernetError {}

/// A Fernet key with its keyed HMAC state precomputed, and its AES key schedule too where
/// AES is done in software.
///
/// Memory vs time, per client of the relay: the `aes` crate's schedule takes ~700 bytes (its
/// software fallback's fixsliced form, reserved even when AES-NI or ARMv8 AES is used), while
/// expanding a key with the AES instructions costs ~20 ns. So with hardware AES the schedule
/// is expanded per token (~1% of a delivery) and not kept; without it, the encryption schedule
/// is kept (expansion in software is slow). The decryption schedule is always derived per
/// token: the relay encrypts once per recipient but decrypts once per message.
///
/// `Debug` prints no key material.
#[derive(Clone)]
pub struct FernetKey {
    signing: [u8; 16],
    encryption: [u8; 16],
    /// HMAC-SHA256 with the inner and outer pads already absorbed.
    mac: HmacSha256,
    /// The same, as two raw SHA-256 states for the multi-buffer kernels (64 bytes).
    mac_x: multi::HmacKey,
    /// `None` with hardware AES: expand per token.
    enc: Option<Box<Aes128Enc>>,
}

/// Does this CPU do AES in hardware (as the `aes` crate will detect)?
fn hardware_aes() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("sse2")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl FernetKey {
    /// The AES encryption schedule: kept, or expanded now.
    fn enc_schedule(&self) -> std::borrow::Cow<'_, Aes128Enc> {
        match &self.enc {
            Some(k) => std::borrow::Cow::Borrowed(k),
            None => std::borrow::Cow::Owned(Aes128Enc::new(&Array::from(self.encryption))),
        }
    }
}

impl Drop for FernetKey {
    /// The raw key halves are erased here; the HMAC state and the AES schedule erase
    /// themselves (the `zeroize` features of `hmac`/`sha2` and `aes`), the multi-buffer HMAC
    /// state in its own `Drop`.
    fn drop(&mut self) {
        self.signing.zeroize();
        self.encryption.zeroize();
    }
}

/// In constant time ([`FernetKey::ct_eq`]).
impl PartialEq for FernetKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}

impl Eq for FernetKey {}

impl fmt::Debug for FernetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FernetKey { .. }")
    }
}

impl FernetKey {
    /// Key from its 32 raw bytes: signing key ‖ encryption key.
    #[must_use]
    pub fn from_bytes(bytes: &[u8; 32]) -> FernetKey {
        let mut signing = [0u8; 16];
        let mut encryption = [0u8; 16];
        signing.copy_from_slice(&bytes[..16]);
        encryption.copy_from_slice(&bytes[16..]);
        let mac = <HmacSha256 as KeyInit>::new_from_slice(&signing)
            .expect("HMAC accepts keys of any length");
        let enc = (!hardware_aes()).then(|| Box::new(Aes128Enc::new(&Array::from(encryption))));
        FernetKey {
            signing,
            encryption,
            mac_x: multi::HmacKey::new(&signing),
            mac,
            enc,
        }
    }

    /// Key from the standard 44-character base64url form (or the same 43
    /// characters without the trailing `=`).
    ///
    /// # Errors
    /// [`FernetError::BadKey`] for any other input.
    pub fn from_base64(text: &[u8]) -> Result<FernetKey, FernetError> {
        if text.len() != KEY_B64_LEN && text.len() != KEY_B64_LEN - 1 {
            return Err(FernetError::BadKey);
        }
        let mut raw = [0u8; 33];
        match base64::decode_to_slice(text, &mut raw) {
            Ok(32) => {
                let key = FernetKey::from_bytes(raw[..32].try_into().expect("32 bytes"));
                raw.zeroize();
                Ok(key)
            }
            _ => Err(FernetError::BadKey),
        }
    }

    /// A new random key.
    pub fn generate(rng: &mut Rng) -> FernetKey {
        let mut raw = [0u8; 32];
        rng.fill(&mut raw);
        let key = FernetKey::from_bytes(&raw);
        raw.zeroize();
        key
    }

    /// The raw 32 bytes: signing key ‖ encryption key.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut raw = [0u8; 32];
        raw[..16].copy_from_slice(&self.signing);
        raw[16..].copy_from_slice(&self.encryption);
        raw
    }

    /// The standard 44-character padded base64url form.
    #[must_use]
    pub fn to_base64(&self) -> [u8; KEY_B64_LEN] {
        let mut raw = self.to_bytes();
        let mut out = [0u8; KEY_B64_LEN];
        base64::encode_to_slice(&raw, &mut out).expect("44 bytes hold 32 encoded");
        raw.zeroize();
        out
    }

    /// Constant-time equality of the key material.
    #[must_use]
    pub fn ct_eq(&self, other: &FernetKey) -> bool {
        (self.signing.ct_eq(&other.signing) & self.encryption.ct_eq(&other.encryption)).into()
    }
}

/// Length of the decoded token for a plaintext of `plaintext_len` bytes.
#[inline]
const fn raw_len(plaintext_len: usize) -> usize {
    HEADER_LEN + (plaintext_len / 16 + 1) * 16 + MAC_LEN
}

/// Exact length of the base64url token for a plaintext of `plaintext_len` bytes.
#[inline]
#[must_use]
pub const fn token_len(plaintext_len: usize) -> usize {
    base64::encoded_len(raw_len(plaintext_len))
}

/// Exact length of the binary token (no base64) for a plaintext of `plaintext_len` bytes.
#[must_use]
pub const fn raw_token_len(plaintext_len: usize) -> usize {
    raw_len(plaintext_len)
}

/// Encrypts `plaintext` into a Fernet token in its binary form (version ‖ timestamp ‖ IV ‖
/// ciphertext ‖ HMAC, exactly [`raw_token_len`] bytes) appended to `out`: what
/// [`encrypt_into`] produces before base64. Encrypts in place in `out`; allocates nothing when
/// `out` has the capacity.
pub fn encrypt_raw_into(
    key: &FernetKey,
    iv: &[u8; 16],
    timestamp: u64,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    prepare_raw(iv, timestamp, plaintext, out);
    finish_raw(key, &mut out[start..]);
}

/// First half of [`encrypt_raw_into`], for sealing one message for many keys in batches:
/// appends the binary token with its CBC part still in clear (plaintext and PKCS#7 padding)
/// and room for the tag, and returns its length ([`raw_token_len`]). [`finish_raw`] or
/// [`finish_raw_x4`] then encrypt and sign it in place. Allocates nothing when `out` has the
/// capacity.
pub fn prepare_raw(iv: &[u8; 16], timestamp: u64, plaintext: &[u8], out: &mut Vec<u8>) -> usize {
    let len = raw_len(plaintext.len());
    out.reserve(len);
    let start = out.len();
    out.push(VERSION);
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(iv);
    out.extend_from_slice(plaintext);
    let pad = 16 - plaintext.len() % 16;
    out.resize(out.len() + pad + MAC_LEN, pad as u8);
    debug_assert_eq!(out.len() - start, len);
    len
}

/// Encrypts and signs, in place, a token laid out by [`prepare_raw`] (the whole token: its
/// IV is read from the header). With AES-NI and SHA-NI (`multi::available`) through the
/// single-stream kernels of `crypto::multi`, otherwise the RustCrypto crates.
pub fn finish_raw(key: &FernetKey, token: &mut [u8]) {
    let (signed, tag) = token.split_at_mut(token.len() - MAC_LEN);
    let iv = token_iv(signed);
    if multi::available() {
        multi::cbc_encrypt(&key.encryption, &iv, &mut signed[HEADER_LEN..]);
        tag.copy_from_slice(&multi::hmac(&key.mac_x, signed));
    } else {
        finish_portable(key, &iv, signed, tag);
    }
}

/// The IV in a token's header (after version and timestamp).
fn token_iv(token: &[u8]) -> [u8; 16] {
    token[9..HEADER_LEN].try_into().expect("16 bytes")
}

/// [`finish_raw`] on the RustCrypto crates, for CPUs (and architectures) without the kernels.
fn finish_portable(key: &FernetKey, iv: &[u8; 16], signed: &mut [u8], tag: &mut [u8]) {
    let enc = key.enc_schedule();
    let mut cbc = cbc::Encryptor::<&Aes128Enc>::inner_iv_init(&enc, &Array::from(*iv));
    let (blocks, _) = Array::slice_as_chunks_mut(&mut signed[HEADER_LEN..]);
    cbc.encrypt_blocks(blocks);
    let mut mac = key.mac.clone();
    mac.update(signed);
    tag.copy_from_slice(&mac.finalize().into_bytes());
}

/// [`finish_raw`] for four tokens of the same length under four keys. With AES-NI and SHA-NI
/// the four CBC chains and the four HMACs run interleaved (`multi::cbc_encrypt_n`,
/// `multi::hmac_n`): each is a chain of dependent instructions, so one alone leaves most
/// of the CPU's AES and SHA throughput unused.
///
/// # Panics
/// If the tokens differ in length.
pub fn finish_raw_x4(keys: [&FernetKey; 4], tokens: [&mut [u8]; 4]) {
    let len = tokens[0].len();
    assert!(
        tokens.iter().all(|t| t.len() == len),
        "finish_raw_x4: tokens of one length"
    );
    if !multi::available() {
        for (key, token) in keys.into_iter().zip(tokens) {
            finish_raw(key, token);
        }
        return;
    }
    let [t0, t1, t2, t3] = tokens;
    let (s0, g0) = t0.split_at_mut(len - MAC_LEN);
    let (s1, g1) = t1.split_at_mut(len - MAC_LEN);
    let (s2, g2) = t2.split_at_mut(len - MAC_LEN);
    let (s3, g3) = t3.split_at_mut(len - MAC_LEN);
    let ivs = [token_iv(s0), token_iv(s1), token_iv(s2), token_iv(s3)];
    multi::cbc_encrypt_n(
        [
            &keys[0].encryption,
            &keys[1].encryption,
            &keys[2].encryption,
            &keys[3].encryption,
        ],
        [&ivs[0], &ivs[1], &ivs[2], &ivs[3]],
        [
            &mut s0[HEADER_LEN..],
            &mut s1[HEADER_LEN..],
            &mut s2[HEADER_LEN..],
            &mut s3[HEADER_LEN..],
        ],
    );
    let tags = multi::hmac_n(
        [
            &keys[0].mac_x,
            &keys[1].mac_x,
            &keys[2].mac_x,
            &keys[3].mac_x,
        ],
        [s0, s1, s2, s3],
    );
    for (g, tag) in [g0, g1, g2, g3].into_iter().zip(&tags) {
        g.copy_from_slice(tag);
    }
}

/// Size of the stack buffer that [`encrypt_into`] streams through: a
/// multiple of 48 (both the AES block and the base64 quantum) plus room for
/// the header and the final block and tag.
const STAGE_LEN: usize = 48 * 32 + 96;

/// Bytes waiting to be base64-encoded; always flushed in multiples of 3, so
/// the encoding is the same as encoding the whole token at once.
struct Stage {
    buf: [u8; STAGE_LEN],
    len: usize,
}

impl Stage {
    /// Encodes all whole 3-byte groups and keeps the 0–2 bytes left over.
    #[inline]
    fn flush(&mut self, out: &mut Vec<u8>) {
        let n = self.len / 3 * 3;
        base64::encode(&self.buf[..n], out);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

/// Encrypts `plaintext` into a Fernet token and appends it (base64url, with
/// padding, exactly [`token_len`]`(plaintext.len())` bytes) to `out`.
///
/// `iv` must be fresh and unpredictable for every token (use
/// [`Rng::iv`]); `timestamp` is seconds since the Unix epoch.
///
/// Allocates nothing when `out` already has the spare capacity.
pub fn encrypt_into(
    key: &FernetKey,
    iv: &[u8; 16],
    timestamp: u64,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(token_len(plaintext.len()));
    let mut mac = key.mac.clone();
    let enc = key.enc_schedule();
    let mut cbc = cbc::Encryptor::<&Aes128Enc>::inner_iv_init(&enc, &Array::from(*iv));
    let mut st = Stage {
        buf: [0u8; STAGE_LEN],
        len: HEADER_LEN,
    };
    st.buf[0] = VERSION;
    st.buf[1..9].copy_from_slice(&timestamp.to_be_bytes());
    st.buf[9..HEADER_LEN].copy_from_slice(iv);
    mac.update(&st.buf[..HEADER_LEN]);

    let (full, tail) = plaintext.split_at(plaintext.len() / 16 * 16);
    let (mut blocks, _) = Array::slice_as_chunks(full);
    while !blocks.is_empty() {
        // After a flush at most 2 bytes remain (25 before the first one),
        // so there is always room for at least 95 blocks here.
        let room = (STAGE_LEN - st.len) / 16;
        let (now, later) = blocks.split_at(room.min(blocks.len()));
        let dst = &mut st.buf[st.len..st.len + now.len() * 16];
        let (dst_blocks, _) = Array::slice_as_chunks_mut(dst);
        cbc.encrypt_blocks_b2b(now, dst_blocks)
            .expect("input and output block counts are equal");
        mac.update(dst);
        st.len += dst.len();
        st.flush(out);
        blocks = later;
    }

    // Last block: the 0–15 leftover bytes plus PKCS#7 padding (1–16 bytes).
    let pad = 16 - tail.len();
    let last = &mut st.buf[st.len..st.len + 16];
    last[..tail.len()].copy_from_slice(tail);
    last[tail.len()..].fill(pad as u8);
    let last: &mut [u8; 16] = last.try_into().expect("16 bytes");
    cbc.encrypt_block(last.into());
    mac.update(&last[..]);
    st.len += 16;

    let tag = mac.finalize().into_bytes();
    st.buf[st.len..st.len + MAC_LEN].copy_from_slice(&tag);
    st.len += MAC_LEN;
    base64::encode(&st.buf[..st.len], out);
}

/// Verifies and decrypts a Fernet token, appending the plaintext to `out`
/// and returning the token's timestamp (check it with [`check_timestamp`]).
///
/// `scratch` is cleared and used for the decoded token; pass the same one
/// every time and nothing is allocated in the steady state (it needs about
/// `token.len() * 3 / 4` bytes; `out` needs the ciphertext length). The
/// HMAC is checked in constant time before any decryption. On error `out`
/// is left as it was.
///
/// # Errors
/// [`FernetError::BadBase64`], [`FernetError::BadVersion`],
/// [`FernetError::TooShort`], [`FernetError::BadLength`],
/// [`FernetError::BadHmac`] or [`FernetError::BadPadding`].
pub fn decrypt_into(
    key: &FernetKey,
    token: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<u64, FernetError> {
    scratch.clear();
    base64::decode(token, scratch).map_err(|_| FernetError::BadBase64)?;
    decrypt_raw_into(key, scratch, out)
}

/// [`decrypt_into`] for a token in its binary form (the bytes the base64 text encodes), as
/// protocol version 2 carries it. Same checks, same order; nothing allocated when `out` has
/// the capacity.
///
/// # Errors
/// As [`decrypt_into`], without [`FernetError::BadBase64`].
pub fn decrypt_raw_into(
    key: &FernetKey,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> Result<u64, FernetError> {
    match raw.first() {
        None => return Err(FernetError::TooShort),
        Some(&VERSION) => {}
        Some(_) => return Err(FernetError::BadVersion),
    }
    // Header and tag must be there; then the ciphertext must be whole blocks,
    // and at least one (PKCS#7 always adds one).
    if raw.len() < HEADER_LEN + MAC_LEN {
        return Err(FernetError::TooShort);
    }
    if !(raw.len() - HEADER_LEN - MAC_LEN).is_multiple_of(16) {
        return Err(FernetError::BadLength);
    }
    if raw.len() < MIN_RAW_LEN {
        return Err(FernetError::TooShort);
    }
    let (signed, tag) = raw.split_at(raw.len() - MAC_LEN);
    let mut mac = key.mac.clone();
    mac.update(signed);
    let expected = mac.finalize().into_bytes();
    if !bool::from(expected.as_slice().ct_eq(tag)) {
        return Err(FernetError::BadHmac);
    }

    let timestamp = u64::from_be_bytes(signed[1..9].try_into().expect("8 bytes"));
    let iv = token_iv(signed);
    let ciphertext = &signed[HEADER_LEN..];
    let (ct_blocks, _) = Array::slice_as_chunks(ciphertext);

    let start = out.len();
    out.resize(start + ciphertext.len(), 0);
    let (pt_blocks, _) = Array::slice_as_chunks_mut(&mut out[start..]);
    let dec = Aes128Dec::from(key.enc_schedule().into_owned());
    cbc::Decryptor::<&Aes128Dec>::inner_iv_init(&dec, &Array::from(iv))
        .decrypt_blocks_b2b(ct_blocks, pt_blocks)
        .expect("input and output block counts are equal");

    // The ciphertext is authentic, so checking the padding cannot be used
    // as a padding oracle; it only catches a sender that padded wrongly.
    let pad = out[out.len() - 1];
    let pad_ok = (1..=16).contains(&pad)
        && out[out.len() - usize::from(pad)..]
            .iter()
            .all(|&b| b == pad);
    if !pad_ok {
        out.truncate(start);
        return Err(FernetError::BadPadding);
    }
    out.truncate(out.len() - usize::from(pad));
    Ok(timestamp)
}

/// Applies the timestamp policy to a token's timestamp `ts` (seconds since
/// the Unix epoch) at time `now`.
///
/// # Errors
/// [`FernetError::Expired`] if `ttl` is given and `ts + ttl < now`;
/// [`FernetError::FromFuture`] if `ts > now + max_skew`.
pub fn check_timestamp(
    ts: u64,
    now: u64,
    ttl: Option<u64>,
    max_skew: u64,
) -> Result<(), FernetError> {
    if ts > now.saturating_add(max_skew) {
        return Err(FernetError::FromFuture);
    }
    if let Some(ttl) = ttl
        && ts.saturating_add(ttl) < now
    {
        return Err(FernetError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> FernetKey {
        let mut raw = [0u8; 32];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = n.wrapping_mul(31).wrapping_add(i as u8);
        }
        FernetKey::from_bytes(&raw)
    }

    fn enc(k: &FernetKey, iv: [u8; 16], ts: u64, pt: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encrypt_into(k, &iv, ts, pt, &mut out);
        out
    }

    fn dec(k: &FernetKey, tok: &[u8]) -> Result<(u64, Vec<u8>), FernetError> {
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        decrypt_into(k, tok, &mut scratch, &mut out).map(|ts| (ts, out))
    }

    /// Straightforward reference: build the raw token in a Vec, then encode.
    fn reference_encrypt(k: &FernetKey, iv: [u8; 16], ts: u64, pt: &[u8]) -> Vec<u8> {
        let mut raw = vec![VERSION];
        raw.extend_from_slice(&ts.to_be_bytes());
        raw.extend_from_slice(&iv);
        let mut padded = pt.to_vec();
        let pad = 16 - pt.len() % 16;
        padded.extend(std::iter::repeat_n(pad as u8, pad));
        let mut prev = iv;
        let aes = aes::Aes128::new(&Array::from(k.encryption));
        for chunk in padded.chunks(16) {
            let mut b = [0u8; 16];
            for i in 0..16 {
                b[i] = chunk[i] ^ prev[i];
            }
            let mut blk = Array::from(b);
            aes::cipher::BlockCipherEncrypt::encrypt_block(&aes, &mut blk);
            prev = blk.into();
            raw.extend_from_slice(&prev);
        }
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&k.signing).unwrap();
        mac.update(&raw);
        raw.extend_from_slice(&mac.finalize().into_bytes());
        let mut out = Vec::new();
        base64::encode(&raw, &mut out);
        out
    }

    fn raw_of(tok: &[u8]) -> Vec<u8> {
        let mut raw = Vec::new();
        base64::decode(tok, &mut raw).unwrap();
        raw
    }

    fn b64(raw: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        base64::encode(raw, &mut t);
        t
    }

    /// Re-signs a modified raw token so that only the intended check fails.
    fn resign(k: &FernetKey, raw: &mut Vec<u8>) {
        raw.truncate(raw.len() - MAC_LEN);
        let mut mac = k.mac.clone();
        mac.update(raw);
        raw.extend_from_slice(&mac.finalize().into_bytes());
    }

    #[test]
    fn token_len_is_exact() {
        let k = key(1);
        for n in 0..200 {
            let pt = vec![0xA5; n];
            assert_eq!(enc(&k, [0; 16], 0, &pt).len(), token_len(n), "n={n}");
        }
        assert_eq!(token_len(5), 100); // the spec vector's "hello" token
    }

    #[test]
    fn appends_and_keeps_prefix() {
        let k = key(2);
        let mut out = b"prefix:".to_vec();
        encrypt_into(&k, &[1; 16], 7, b"abc", &mut out);
        assert_eq!(&out[..7], b"prefix:");
        let mut plain = b"p".to_vec();
        let mut scratch = Vec::new();
        assert_eq!(decrypt_into(&k, &out[7..], &mut scratch, &mut plain), Ok(7));
        assert_eq!(plain, b"pabc");
    }

    #[test]
    fn no_allocation_with_capacity() {
        let k = key(3);
        let pt = vec![0x5A; 5000];
        let mut out = Vec::with_capacity(token_len(pt.len()));
        let p = out.as_ptr();
        encrypt_into(&k, &[9; 16], 1, &pt, &mut out);
        assert_eq!(out.as_ptr(), p);
        assert_eq!(out.capacity(), token_len(pt.len()));
        let mut scratch = Vec::with_capacity(out.len());
        let mut plain = Vec::with_capacity(pt.len() + 16);
        let (ps, pp) = (scratch.as_ptr(), plain.as_ptr());
        decrypt_into(&k, &out, &mut scratch, &mut plain).unwrap();
        assert_eq!((scratch.as_ptr(), plain.as_ptr()), (ps, pp));
        assert_eq!(plain, pt);
    }

    #[test]
    fn key_base64_forms() {
        let k = key(4);
        let text = k.to_base64();
        assert_eq!(text[43], b'=');
        let back = FernetKey::from_base64(&text).unwrap();
        assert!(back.ct_eq(&k));
        let back = FernetKey::from_base64(&text[..43]).unwrap();
        assert!(back.ct_eq(&k));
        assert!(!key(5).ct_eq(&k));
        assert_eq!(back.to_bytes(), k.to_bytes());
        for bad in [
            &text[..42],
            &text[..40],
            b"",
            b"cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4==",
            b"cw/0x689RpI+jtRR7oE8h/eQsKImvJapLeSbXpwF4e4=",
            b"cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e5=",
            b" w_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=",
        ] {
            assert_eq!(
                FernetKey::from_base64(bad).unwrap_err(),
                FernetError::BadKey
            );
        }
    }

    #[test]
    fn debug_hides_key() {
        let k = FernetKey::from_bytes(&[0xAB; 32]);
        let s = format!("{k:?}");
        assert!(!s.to_lowercase().contains("ab"), "{s}");
        assert!(!s.contains("171"), "{s}");
        let b64 = String::from_utf8(k.to_base64().to_vec()).unwrap();
        assert!(!s.contains(&b64[..8]));
    }

    #[test]
    fn rejects_malformed_tokens() {
        let k = key(6);
        let tok = enc(&k, [3; 16], 1000, b"hello world, this is two blocks");
        let raw = raw_of(&tok);

        assert_eq!(dec(&k, b"").unwrap_err(), FernetError::TooShort);
        assert_eq!(dec(&k, b"!!!!").unwrap_err(), FernetError::BadBase64);
        let mut t = tok.clone();
        t.push(b'A');
        assert_eq!(dec(&k, &t).unwrap_err(), FernetError::BadBase64);

        let mut r = raw.clone();
        r[0] = 0x81;
        resign(&k, &mut r);
        assert_eq!(dec(&k, &b64(&r)).unwrap_err(), FernetError::BadVersion);

        assert_eq!(
            dec(&k, &b64(&raw[..HEADER_LEN + MAC_LEN - 1])).unwrap_err(),
            FernetError::TooShort
        );
        // Header and tag but no ciphertext block at all.
        let mut r = raw[..HEADER_LEN + MAC_LEN].to_vec();
        resign(&k, &mut r);
        assert_eq!(dec(&k, &b64(&r)).unwrap_err(), FernetError::TooShort);
        assert_eq!(
            dec(&k, &b64(&raw[..MIN_RAW_LEN - 1])).unwrap_err(),
            FernetError::BadLength
        );

        let mut r = raw.clone();
        r.insert(HEADER_LEN, 0);
        resign(&k, &mut r);
        assert_eq!(dec(&k, &b64(&r)).unwrap_err(), FernetError::BadLength);

        // Every single-bit flip anywhere in the token is caught by the MAC.
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut r = raw.clone();
                r[i] ^= 1 << bit;
                let e = dec(&k, &b64(&r)).unwrap_err();
                if i == 0 {
                    assert_eq!(e, FernetError::BadVersion);
                } else {
                    assert_eq!(e, FernetError::BadHmac, "byte {i} bit {bit}");
                }
            }
        }

        // Wrong key: only the signing half differs -> BadHmac.
        let mut other = k.to_bytes();
        other[0] ^= 1;
        assert_eq!(
            dec(&FernetKey::from_bytes(&other), &tok).unwrap_err(),
            FernetError::BadHmac
        );
        // Same signing key, different encryption key: authentic, but the
        // padding comes out wrong (almost surely) or the plaintext differs.
        let mut other = k.to_bytes();
        other[31] ^= 1;
        match dec(&FernetKey::from_bytes(&other), &tok) {
            Err(e) => assert_eq!(e, FernetError::BadPadding),
            Ok((_, pt)) => assert_ne!(pt, b"hello world, this is two blocks"),
        }
    }

    #[test]
    fn rejects_bad_padding_and_leaves_out_unchanged() {
        let k = key(7);
        // Build authentic tokens whose plaintext padding is invalid.
        for bad_last in [0u8, 17, 0xFF, 2] {
            let mut block = [b'x'; 16];
            block[15] = bad_last;
            if bad_last == 2 {
                block[14] = 3; // claims 2 bytes of padding but they differ
            }
            // Encrypt "block" with no padding: CBC by hand via a 0-padded token.
            let mut raw = vec![VERSION];
            raw.extend_from_slice(&5u64.to_be_bytes());
            raw.extend_from_slice(&[0u8; 16]);
            let mut blk = Array::from(block);
            aes::cipher::BlockCipherEncrypt::encrypt_block(&*k.enc_schedule(), &mut blk);
            raw.extend_from_slice(&blk);
            raw.extend_from_slice(&[0u8; 32]);
            resign(&k, &mut raw);
            let mut out = b"keep".to_vec();
            let mut scratch = Vec::new();
            assert_eq!(
                decrypt_into(&k, &b64(&raw), &mut scratch, &mut out),
                Err(FernetError::BadPadding),
                "last byte {bad_last}"
            );
            assert_eq!(out, b"keep");
        }
    }

    #[test]
    fn accepts_unpadded_token() {
        let k = key(8);
        let tok = enc(&k, [4; 16], 99, b"hello");
        let unpadded: Vec<u8> = tok.iter().copied().filter(|&c| c != b'=').collect();
        assert_ne!(unpadded.len(), tok.len());
        assert_eq!(dec(&k, &unpadded).unwrap(), (99, b"hello".to_vec()));
    }

    #[test]
    fn timestamp_policy() {
        use FernetError::*;
        assert_eq!(check_timestamp(100, 100, Some(0), 0), Ok(()));
        assert_eq!(check_timestamp(100, 160, Some(60), 0), Ok(()));
        assert_eq!(check_timestamp(100, 161, Some(60), 0), Err(Expired));
        assert_eq!(check_timestamp(100, 1_000_000, None, 0), Ok(()));
        assert_eq!(check_timestamp(160, 100, None, 60), Ok(()));
        assert_eq!(check_timestamp(161, 100, None, 60), Err(FromFuture));
        assert_eq!(check_timestamp(161, 100, Some(60), 60), Err(FromFuture));
        assert_eq!(
            check_timestamp(u64::MAX, u64::MAX, Some(u64::MAX), u64::MAX),
            Ok(())
        );
        assert_eq!(
            check_timestamp(0, u64::MAX, Some(u64::MAX - 1), 0),
            Err(Expired)
        );
        assert_eq!(
            check_timestamp(u64::MAX, 0, None, u64::MAX - 1),
            Err(FromFuture)
        );
    }

    #[test]
    fn errors_display() {
        let all = [
            FernetError::BadBase64,
            FernetError::TooShort,
            FernetError::BadVersion,
            FernetError::BadHmac,
            FernetError::BadPadding,
            FernetError::BadLength,
            FernetError::Expired,
            FernetError::FromFuture,
            FernetError::BadKey,
        ];
        let texts: std::collections::HashSet<String> = all.iter().map(|e| e.to_string()).collect();
        assert_eq!(texts.len(), all.len());
    }

    #[test]
    fn generated_keys_and_ivs_work() {
        let mut rng = Rng::from_seed([5; 32]);
        let k = FernetKey::generate(&mut rng);
        let k2 = FernetKey::generate(&mut rng);
        assert!(!k.ct_eq(&k2));
        let iv = rng.iv();
        let tok = enc(&k, iv, 1, b"x");
        assert_eq!(dec(&k, &tok).unwrap(), (1, b"x".to_vec()));
    }

    proptest! {
        #[test]
        fn round_trip_matches_reference(
            seed in any::<u8>(),
            iv in any::<[u8; 16]>(),
            ts in any::<u64>(),
            pt in proptest::collection::vec(any::<u8>(), 0..4000),
        ) {
            let k = key(seed);
            let tok = enc(&k, iv, ts, &pt);
            prop_assert_eq!(&tok, &reference_encrypt(&k, iv, ts, &pt));
            prop_assert_eq!(tok.len(), token_len(pt.len()));
            prop_assert_eq!(dec(&k, &tok).unwrap(), (ts, pt));
        }

        #[test]
        fn buffers_are_reusable(msgs in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 1..10)) {
            let k = key(9);
            let (mut tok, mut scratch, mut plain) = (Vec::new(), Vec::new(), Vec::new());
            for (i, m) in msgs.iter().enumerate() {
                tok.clear();
                plain.clear();
                encrypt_into(&k, &[i as u8; 16], i as u64, m, &mut tok);
                prop_assert_eq!(decrypt_into(&k, &tok, &mut scratch, &mut plain), Ok(i as u64));
                prop_assert_eq!(&plain, m);
            }
        }
    }
}

#[cfg(test)]
mod raw_tests {
    use super::*;

    #[test]
    fn raw_form_is_the_decoded_text_form() {
        let key = FernetKey::from_bytes(&[7u8; 32]);
        let iv = [3u8; 16];
        for n in [0usize, 1, 15, 16, 17, 100, 1000, 4096] {
            let plain: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut text = Vec::new();
            encrypt_into(&key, &iv, 1_700_000_000, &plain, &mut text);
            let mut raw = b"prefix".to_vec();
            encrypt_raw_into(&key, &iv, 1_700_000_000, &plain, &mut raw);
            assert_eq!(raw.len() - 6, raw_token_len(n));
            let mut decoded = Vec::new();
            base64::decode(&text, &mut decoded).unwrap();
            assert_eq!(&raw[6..], &decoded[..], "n = {n}");
            let mut back = Vec::new();
            assert_eq!(
                decrypt_raw_into(&key, &raw[6..], &mut back),
                Ok(1_700_000_000)
            );
            assert_eq!(back, plain);
            // Any flipped bit is caught by the HMAC (or the version check).
            let mut bad = raw[6..].to_vec();
            let at = n % bad.len();
            bad[at] ^= 1;
            assert!(decrypt_raw_into(&key, &bad, &mut Vec::new()).is_err());
        }
    }

    /// The portable path (taken where the kernels are not available) makes the same tokens.
    #[test]
    fn portable_finish_equals_the_text_path() {
        let key = FernetKey::from_bytes(&[9u8; 32]);
        for n in [0usize, 1, 16, 124, 1000] {
            let plain: Vec<u8> = (0..n).map(|i| (i * 3) as u8).collect();
            let mut raw = Vec::new();
            prepare_raw(&[5; 16], 1_700_000_000, &plain, &mut raw);
            let (signed, tag) = raw.split_at_mut(raw_token_len(n) - MAC_LEN);
            finish_portable(&key, &[5; 16], signed, tag);
            let mut text = Vec::new();
            encrypt_into(&key, &[5; 16], 1_700_000_000, &plain, &mut text);
            let mut expected = Vec::new();
            base64::decode(&text, &mut expected).unwrap();
            assert_eq!(raw, expected, "n = {n}");
        }
    }

    /// Four tokens finished together are byte for byte what the text path (RustCrypto `aes`
    /// and `hmac`, never the multi-buffer kernels) makes for each key and IV, at every
    /// length shape: empty, partial and whole blocks, the benchmark's 124 bytes, a datagram.
    #[test]
    fn four_at_once_equals_one_by_one() {
        let keys: Vec<FernetKey> = (0..4u8)
            .map(|k| FernetKey::from_bytes(&[k.wrapping_mul(37).wrapping_add(1); 32]))
            .collect();
        for n in [0usize, 1, 15, 16, 17, 124, 1000, 1130] {
            let plain: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let mut buf = b"xyz".to_vec();
            let mut starts = Vec::new();
            for k in 0..4u8 {
                starts.push(buf.len());
                let len = prepare_raw(&[k; 16], 1_700_000_000 + u64::from(k), &plain, &mut buf);
                assert_eq!(len, raw_token_len(n));
                buf.extend_from_slice(b"--"); // unrelated bytes between tokens stay untouched
            }
            let len = raw_token_len(n);
            let (head, rest) = buf.split_at_mut(starts[1]);
            let (t1, rest) = rest.split_at_mut(starts[2] - starts[1]);
            let (t2, t3) = rest.split_at_mut(starts[3] - starts[2]);
            finish_raw_x4(
                [&keys[0], &keys[1], &keys[2], &keys[3]],
                [
                    &mut head[3..3 + len],
                    &mut t1[..len],
                    &mut t2[..len],
                    &mut t3[..len],
                ],
            );
            assert_eq!(&buf[..3], b"xyz");
            for (k, &at) in starts.iter().enumerate() {
                let mut text = Vec::new();
                let ts = 1_700_000_000 + k as u64;
                encrypt_into(&keys[k], &[k as u8; 16], ts, &plain, &mut text);
                let mut expected = Vec::new();
                base64::decode(&text, &mut expected).unwrap();
                assert_eq!(&buf[at..at + len], &expected[..], "n = {n}, token {k}");
                assert_eq!(&buf[at + len..at + len + 2], b"--");
            }
        }
    }
}

/// Token length in the form a protocol version carries: binary (version 2) or base64 text
/// (version 1).
#[must_use]
pub const fn sealed_len(binary: bool, plaintext_len: usize) -> usize {
    if binary {
        raw_token_len(plaintext_len)
    } else {
        token_len(plaintext_len)
    }
}

/// [`encrypt_raw_into`] or [`encrypt_into`], by form.
pub fn seal_into(
    binary: bool,
    key: &FernetKey,
    iv: &[u8; 16],
    timestamp: u64,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    if binary {
        encrypt_raw_into(key, iv, timestamp, plaintext, out);
    } else {
        encrypt_into(key, iv, timestamp, plaintext, out);
    }
}

/// [`decrypt_raw_into`] or [`decrypt_into`], by form.
///
/// # Errors
/// As those.
pub fn open_into(
    binary: bool,
    key: &FernetKey,
    token: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<u64, FernetError> {
    if binary {
        decrypt_raw_into(key, token, out)
    } else {
        decrypt_into(key, token, scratch, out)
    }
}
