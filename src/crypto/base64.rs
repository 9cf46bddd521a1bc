//! URL-safe base64 ("base64url", RFC 4648 §5), table driven and allocation free.
//!
//! * [`encode`] appends the `=`-padded encoding of its input to a `Vec<u8>`;
//!   [`encode_to_slice`] writes it into a caller-provided buffer.
//! * [`decode`] appends the decoded bytes to a `Vec<u8>`; [`decode_to_slice`]
//!   writes them into a caller-provided buffer.
//!
//! The decoder is strict: it accepts the input either with exactly the right
//! `=` padding or with no padding at all, and rejects every character outside
//! the url-safe alphabet (including whitespace, `+` and `/`), any other padding,
//! a length that no encoding can have, and non-canonical encodings (unused
//! trailing bits that are not zero). So every byte string has exactly two
//! accepted encodings (padded and unpadded), which matters when tokens are
//! compared or used as keys.
//!
//! When decoding fails, the output `Vec` is left as it was.

use core::fmt;

/// The url-safe alphabet.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Marks a byte that is not in the alphabet.
const INVALID: u8 = 0xFF;

/// Reverse table: byte -> 6-bit value, or [`INVALID`].
const DECODE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Encoding of every 12-bit value as two characters (8 KiB): one lookup per
/// two output characters.
const PAIRS: [[u8; 2]; 4096] = {
    let mut t = [[0u8; 2]; 4096];
    let mut i = 0;
    while i < 4096 {
        t[i] = [ALPHABET[i >> 6], ALPHABET[i & 63]];
        i += 1;
    }
    t
};

/// Set in a [`SHIFTED`] entry for a byte outside the alphabet; above the 24
/// data bits, so OR-ing entries keeps it.
const BAD: u32 = 1 << 24;

/// `SHIFTED[k][c]`: the 6-bit value of `c` moved to its place in a 24-bit
/// group when `c` is the k-th character of a quad, or [`BAD`] (4 KiB).
const SHIFTED: [[u32; 256]; 4] = {
    let mut t = [[BAD; 256]; 4];
    let mut c = 0;
    while c < 256 {
        let v = DECODE[c];
        if v != INVALID {
            let v = v as u32;
            t[0][c] = v << 18;
            t[1][c] = v << 12;
            t[2][c] = v << 6;
            t[3][c] = v;
        }
        c += 1;
    }
    t
};

/// Why a base64url input was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base64Error {
    /// A byte outside the url-safe alphabet (or a misplaced `=`).
    InvalidCharacter,
    /// A length no encoding can have (one character past a multiple of 4).
    InvalidLength,
    /// `=` padding present but not exactly what the length requires.
    InvalidPadding,
    /// The unused low bits of the last character are not zero.
    NonCanonical,
    /// The output slice given to [`decode_to_slice`] is too small.
    OutputTooSmall,
}

impl fmt::Display for Base64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Base64Error::InvalidCharacter => "invalid base64url character",
            Base64Error::InvalidLength => "invalid base64url length",
            Base64Error::InvalidPadding => "invalid base64url padding",
            Base64Error::NonCanonical => "non-canonical base64url (trailing bits set)",
            Base64Error::OutputTooSmall => "output buffer too small for decoded base64url",
        })
    }
}

impl std::error::Error for Base64Error {}

/// Length of the padded encoding of `n` bytes: `4 * ceil(n / 3)`.
///
/// # Panics
/// On overflow (only for `n` close to `usize::MAX`).
#[inline]
#[must_use]
pub const fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

#[inline(always)]
fn enc3(b0: u8, b1: u8, b2: u8) -> [u8; 4] {
    let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
    [
        ALPHABET[(n >> 18) as usize & 63],
        ALPHABET[(n >> 12) as usize & 63],
        ALPHABET[(n >> 6) as usize & 63],
        ALPHABET[n as usize & 63],
    ]
}

/// Writes the padded encoding of `input` to the start of `out`, which must be
/// exactly `encoded_len(input.len())` bytes long.
fn encode_exact(input: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), encoded_len(input.len()));
    // Main loop: 6 bytes -> 8 characters with four pair lookups.
    let wide_len = input.len() / 6 * 6;
    let (wide_in, narrow_in) = input.split_at(wide_len);
    let (wide_out, narrow_out) = out.split_at_mut(wide_len / 3 * 4);
    for (i, o) in wide_in.chunks_exact(6).zip(wide_out.chunks_exact_mut(8)) {
        let n = u64::from_be_bytes([i[0], i[1], i[2], i[3], i[4], i[5], 0, 0]);
        let p0 = PAIRS[(n >> 52) as usize];
        let p1 = PAIRS[(n >> 40) as usize & 0xFFF];
        let p2 = PAIRS[(n >> 28) as usize & 0xFFF];
        let p3 = PAIRS[(n >> 16) as usize & 0xFFF];
        o.copy_from_slice(&[p0[0], p0[1], p1[0], p1[1], p2[0], p2[1], p3[0], p3[1]]);
    }
    // At most one more whole group, then the partial one.
    let in_chunks = narrow_in.chunks_exact(3);
    let rem = in_chunks.remainder();
    let mut out_chunks = narrow_out.chunks_exact_mut(4);
    for (i, o) in in_chunks.zip(&mut out_chunks) {
        o.copy_from_slice(&enc3(i[0], i[1], i[2]));
    }
    if let Some(o) = out_chunks.next() {
        match *rem {
            [b0] => {
                let q = enc3(b0, 0, 0);
                o.copy_from_slice(&[q[0], q[1], b'=', b'=']);
            }
            [b0, b1] => {
                let q = enc3(b0, b1, 0);
                o.copy_from_slice(&[q[0], q[1], q[2], b'=']);
            }
            _ => unreachable!("remainder of chunks_exact(3) with an output chunk left"),
        }
    }
}

/// Appends the `=`-padded base64url encoding of `input` to `out`.
///
/// Does not allocate when `out` has `encoded_len(input.len())` spare capacity.
/// Encoding in pieces whose lengths are multiples of 3 gives the same result
/// as encoding the concatenation at once.
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + encoded_len(input.len()), 0);
    encode_exact(input, &mut out[start..]);
}

/// Writes the `=`-padded base64url encoding of `input` to the start of `out`
/// and returns its length, or `None` if `out` is shorter than
/// `encoded_len(input.len())`.
pub fn encode_to_slice(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let n = encoded_len(input.len());
    encode_exact(input, out.get_mut(..n)?);
    Some(n)
}

/// Validates the length and padding of `input`; returns the unpadded part
/// and the number of bytes it decodes to.
fn split_padding(input: &[u8]) -> Result<(&[u8], usize), Base64Error> {
    let mut body = input;
    if let Some(stripped) = body.strip_suffix(b"==") {
        body = stripped;
    } else if let Some(stripped) = body.strip_suffix(b"=") {
        body = stripped;
    }
    let pad = input.len() - body.len();
    if pad != 0 {
        // Padded input: whole quads only, and the padding must be exactly what
        // the last quad needs (`xx==` or `xxx=`).
        let needed = match body.len() % 4 {
            2 => 2,
            3 => 1,
            _ => 0,
        };
        if !input.len().is_multiple_of(4) || pad != needed {
            return Err(Base64Error::InvalidPadding);
        }
    }
    let out_len = match body.len() % 4 {
        0 => body.len() / 4 * 3,
        2 => body.len() / 4 * 3 + 1,
        3 => body.len() / 4 * 3 + 2,
        _ => return Err(Base64Error::InvalidLength),
    };
    Ok((body, out_len))
}

/// Number of bytes `input` decodes to, checking its length and padding (not
/// its characters).
///
/// # Errors
/// [`Base64Error::InvalidLength`] or [`Base64Error::InvalidPadding`].
#[cfg(test)]
pub fn decoded_len(input: &[u8]) -> Result<usize, Base64Error> {
    split_padding(input).map(|(_, n)| n)
}

/// Decodes the unpadded `body` into `out`, which is exactly as long as its
/// decoding.
fn decode_exact(body: &[u8], out: &mut [u8]) -> Result<(), Base64Error> {
    // Main loop, branch free: invalid characters are collected in `bad` and
    // reported once at the end (the output is discarded on error anyway).
    let in_chunks = body.chunks_exact(4);
    let rem = in_chunks.remainder();
    let mut out_chunks = out.chunks_exact_mut(3);
    let mut bad = 0u32;
    for (i, o) in in_chunks.zip(&mut out_chunks) {
        let n = SHIFTED[0][i[0] as usize]
            | SHIFTED[1][i[1] as usize]
            | SHIFTED[2][i[2] as usize]
            | SHIFTED[3][i[3] as usize];
        bad |= n;
        o.copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    if bad & BAD != 0 {
        return Err(Base64Error::InvalidCharacter);
    }
    let tail = out_chunks.into_remainder();
    match *rem {
        [] => {}
        [c0, c1] => {
            let (a, b) = (DECODE[c0 as usize], DECODE[c1 as usize]);
            if (a | b) & 0xC0 != 0 {
                return Err(Base64Error::InvalidCharacter);
            }
            if b & 0x0F != 0 {
                return Err(Base64Error::NonCanonical);
            }
            tail[0] = (a << 2) | (b >> 4);
        }
        [c0, c1, c2] => {
            let (a, b, c) = (
                DECODE[c0 as usize],
                DECODE[c1 as usize],
                DECODE[c2 as usize],
            );
            if (a | b | c) & 0xC0 != 0 {
                return Err(Base64Error::InvalidCharacter);
            }
            if c & 0x03 != 0 {
                return Err(Base64Error::NonCanonical);
            }
            tail[0] = (a << 2) | (b >> 4);
            tail[1] = (b << 4) | (c >> 2);
        }
        _ => return Err(Base64Error::InvalidLength),
    }
    Ok(())
}

/// Decodes base64url `input` (padded or unpadded) and appends the bytes to `out`.
///
/// Does not allocate when `out` has enough spare capacity (at most
/// `input.len() / 4 * 3 + 2` bytes). On error `out` is unchanged.
///
/// # Errors
/// See [`Base64Error`].
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), Base64Error> {
    let (body, n) = split_padding(input)?;
    let start = out.len();
    out.resize(start + n, 0);
    let res = decode_exact(body, &mut out[start..]);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

/// Decodes base64url `input` (padded or unpadded) into the start of `out` and
/// returns the number of bytes written.
///
/// # Errors
/// See [`Base64Error`]; [`Base64Error::OutputTooSmall`] if `out` is too short.
pub fn decode_to_slice(input: &[u8], out: &mut [u8]) -> Result<usize, Base64Error> {
    let (body, n) = split_padding(input)?;
    let dst = out.get_mut(..n).ok_or(Base64Error::OutputTooSmall)?;
    decode_exact(body, dst)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bit-by-bit reference encoder (no tables, no chunking tricks).
    fn reference_encode(input: &[u8], pad: bool) -> Vec<u8> {
        let mut bits: Vec<u8> = Vec::new();
        for &b in input {
            for i in (0..8).rev() {
                bits.push((b >> i) & 1);
            }
        }
        let mut out = Vec::new();
        for six in bits.chunks(6) {
            let mut v = 0u8;
            for i in 0..6 {
                v = (v << 1) | six.get(i).copied().unwrap_or(0);
            }
            let c = match v {
                0..=25 => b'A' + v,
                26..=51 => b'a' + (v - 26),
                52..=61 => b'0' + (v - 52),
                62 => b'-',
                _ => b'_',
            };
            out.push(c);
        }
        if pad {
            while out.len() % 4 != 0 {
                out.push(b'=');
            }
        }
        out
    }

    fn dec(s: &[u8]) -> Result<Vec<u8>, Base64Error> {
        let mut v = Vec::new();
        decode(s, &mut v).map(|()| v)
    }

    #[test]
    fn rfc4648_vectors() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"f", b"Zg=="),
            (b"fo", b"Zm8="),
            (b"foo", b"Zm9v"),
            (b"foob", b"Zm9vYg=="),
            (b"fooba", b"Zm9vYmE="),
            (b"foobar", b"Zm9vYmFy"),
        ];
        for &(raw, enc) in cases {
            let mut out = b"prefix".to_vec();
            encode(raw, &mut out);
            assert_eq!(&out[6..], enc);
            assert_eq!(&out[..6], b"prefix");
            assert_eq!(dec(enc).unwrap(), raw);
            let unpadded = enc
                .strip_suffix(b"==")
                .or(enc.strip_suffix(b"="))
                .unwrap_or(enc);
            assert_eq!(dec(unpadded).unwrap(), raw);
        }
    }

    #[test]
    fn url_safe_alphabet() {
        let mut out = Vec::new();
        encode(&[0xfb, 0xff, 0xbf], &mut out);
        assert_eq!(out, b"-_-_");
        assert_eq!(dec(b"-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(dec(b"+/+/"), Err(Base64Error::InvalidCharacter));
    }

    #[test]
    fn rejects_bad_input() {
        use Base64Error::*;
        assert_eq!(dec(b"Z"), Err(InvalidLength));
        assert_eq!(dec(b"Zm9vZ"), Err(InvalidLength));
        assert_eq!(dec(b"Z==="), Err(InvalidCharacter));
        assert_eq!(dec(b"Zg="), Err(InvalidPadding));
        assert_eq!(dec(b"Zm8=="), Err(InvalidPadding));
        assert_eq!(dec(b"Zm9v="), Err(InvalidPadding));
        assert_eq!(dec(b"Zm9v=="), Err(InvalidPadding));
        assert_eq!(dec(b"===="), Err(InvalidCharacter));
        assert_eq!(dec(b"Zm=v"), Err(InvalidCharacter));
        assert_eq!(dec(b"Zg==Zg=="), Err(InvalidCharacter));
        assert_eq!(dec(b"Zm9v\n"), Err(InvalidLength));
        assert_eq!(dec(b"Zm 9"), Err(InvalidCharacter));
        assert_eq!(dec(b"Zm9\0"), Err(InvalidCharacter));
        assert_eq!(dec(b"Zh=="), Err(NonCanonical));
        assert_eq!(dec(b"Zh"), Err(NonCanonical));
        assert_eq!(dec(b"Zm9="), Err(NonCanonical));
        assert_eq!(dec(b"Zm-"), Err(NonCanonical));
        assert_eq!(dec(b"Zm\xff="), Err(InvalidCharacter));
        assert_eq!(dec(b"Zm8=trailing"), Err(InvalidCharacter));
    }

    #[test]
    fn every_invalid_byte_is_rejected_in_every_position() {
        for b in 0..=255u8 {
            if ALPHABET.contains(&b) {
                continue;
            }
            for pos in 0..8 {
                let mut s = *b"Zm9vYmFy";
                s[pos] = b;
                assert!(dec(&s).is_err(), "byte {b:#x} at {pos}");
            }
        }
    }

    #[test]
    fn error_leaves_output_unchanged() {
        let mut out = b"keep".to_vec();
        assert!(decode(b"Zm9vYm!y", &mut out).is_err());
        assert_eq!(out, b"keep");
    }

    #[test]
    fn slice_variants() {
        let mut buf = [0u8; 8];
        assert_eq!(encode_to_slice(b"fooba", &mut buf), Some(8));
        assert_eq!(&buf, b"Zm9vYmE=");
        assert_eq!(encode_to_slice(b"foobar!", &mut buf), None);
        let mut raw = [0u8; 6];
        assert_eq!(decode_to_slice(b"Zm9vYmE=", &mut raw), Ok(5));
        assert_eq!(&raw[..5], b"fooba");
        assert_eq!(
            decode_to_slice(b"Zm9vYmFyYg", &mut raw),
            Err(Base64Error::OutputTooSmall)
        );
        assert_eq!(decoded_len(b"Zm9vYmE"), Ok(5));
        assert_eq!(decoded_len(b"Zm9vYmE="), Ok(5));
    }

    #[test]
    fn steady_state_does_not_reallocate() {
        let mut out = Vec::with_capacity(encoded_len(300));
        let p = out.as_ptr();
        encode(&[7u8; 300], &mut out);
        assert_eq!(out.as_ptr(), p);
        let mut back = Vec::with_capacity(300);
        let p = back.as_ptr();
        decode(&out, &mut back).unwrap();
        assert_eq!(back.as_ptr(), p);
        assert_eq!(back, [7u8; 300]);
    }

    proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            encode(&data, &mut out);
            prop_assert_eq!(&out, &reference_encode(&data, true));
            prop_assert_eq!(out.len(), encoded_len(data.len()));
            prop_assert_eq!(dec(&out).unwrap(), data.clone());
            prop_assert_eq!(dec(&reference_encode(&data, false)).unwrap(), data);
        }

        #[test]
        fn piecewise_encoding_in_multiples_of_3(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..100,
        ) {
            let cut = (cut * 3).min(data.len() / 3 * 3);
            let mut whole = Vec::new();
            encode(&data, &mut whole);
            let mut parts = Vec::new();
            encode(&data[..cut], &mut parts);
            encode(&data[cut..], &mut parts);
            prop_assert_eq!(whole, parts);
        }

        /// Any string the decoder accepts re-encodes to itself (canonicity).
        #[test]
        fn accepted_inputs_are_canonical(s in "[A-Za-z0-9_=-]{0,12}") {
            if let Ok(raw) = dec(s.as_bytes()) {
                let padded = reference_encode(&raw, true);
                let unpadded = reference_encode(&raw, false);
                prop_assert!(s.as_bytes() == padded.as_slice() || s.as_bytes() == unpadded.as_slice());
            }
        }
    }
}
