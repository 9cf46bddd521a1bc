//! A fast userspace CSPRNG for Fernet IVs, keys and nonces.
//!
//! # Construction
//!
//! AES-256 in counter mode with *fast key erasure* (the construction of
//! Bernstein's "Fast-key-erasure random-number generators", also used by
//! OpenBSD's `arc4random` and the Linux kernel's RNG):
//!
//! 1. With the current 256-bit key `K`, encrypt the counter blocks
//!    `0, 1, …, 63` (1 KiB of keystream).
//! 2. The first 32 bytes of that keystream become the next key `K'`; `K`
//!    is dropped. The remaining 992 bytes are handed out as output, and
//!    every byte is overwritten with zero as soon as it has been handed out.
//! 3. Repeat when the buffer is used up.
//!
//! Because the key is replaced after every refill and used output is wiped,
//! an attacker who later reads the generator's memory can neither predict
//! nor reconstruct earlier output (backtracking resistance). Reusing the
//! counter values 0..63 under each fresh key is fine: every key is used for
//! exactly one batch.
//!
//! A generator made by [`Rng::from_os`] is seeded with 32 bytes from the
//! operating system (`getrandom`) and, every 2^20 blocks (16 MiB of output),
//! XORs 32 fresh OS bytes into its key, so that a compromise of its state
//! does not last forever. (If that OS call ever fails, the generator keeps
//! running on its current, still secure, state and tries again after the
//! next 2^20 blocks.) [`Rng::from_seed`] gives a deterministic generator
//! that never reseeds, for tests and simulations only.
//!
//! # Why this is good enough for Fernet IVs
//!
//! AES-CBC needs every IV to be *unpredictable* to anyone who does not hold
//! the key (a predictable IV enables chosen-plaintext attacks such as the
//! one behind BEAST); it does not need "true" randomness. The output of a
//! CSPRNG seeded with 256 bits of OS entropy is, by definition,
//! computationally indistinguishable from uniform random bytes, so it is
//! unpredictable, and with 128-bit IVs a collision is expected only after
//! about 2^64 tokens. AES-256-CTR is a standard PRF-based generator (compare
//! NIST SP 800-90A CTR_DRBG), and with AES-NI it is far cheaper than one
//! system call per IV.
//!
//! The type is deliberately not `Clone`: two copies would emit the same
//! stream, i.e. repeated IVs and keys.

use aes::Aes256Enc;
use aes::cipher::array::Array;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use core::fmt;
use zeroize::Zeroize;

/// Blocks of keystream produced per refill.
const BATCH_BLOCKS: usize = 64;
/// Bytes of keystream produced per refill.
const BATCH: usize = BATCH_BLOCKS * 16;
/// Bytes of each refill that become the next key.
const KEY_LEN: usize = 32;
/// Reseed from the OS after this many blocks (for [`Rng::from_os`] only).
pub const RESEED_INTERVAL_BLOCKS: u64 = 1 << 20;

/// AES-256-CTR fast-key-erasure CSPRNG. See the [module docs](self).
pub struct Rng {
    cipher: Aes256Enc,
    /// Keystream; bytes before `pos` have been used and zeroed.
    buf: [u8; BATCH],
    pos: usize,
    /// Blocks generated since the last (re)seed.
    blocks: u64,
    /// Whether to reseed from the OS every [`RESEED_INTERVAL_BLOCKS`].
    os_reseed: bool,
}

impl Drop for Rng {
    /// The AES-256 schedule erases itself (`aes`'s `zeroize` feature); the unused keystream
    /// is erased here.
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl fmt::Debug for Rng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rng")
            .field("os_reseed", &self.os_reseed)
            .finish_non_exhaustive()
    }
}

impl Rng {
    /// A generator seeded from the operating system, reseeding itself from
    /// the OS every [`RESEED_INTERVAL_BLOCKS`] blocks.
    ///
    /// # Errors
    /// When the OS has no randomness to give.
    pub fn from_os() -> Result<Rng, getrandom::Error> {
        let mut seed = [0u8; KEY_LEN];
        getrandom::fill(&mut seed)?;
        let mut rng = Rng::from_seed(seed);
        seed.zeroize();
        rng.os_reseed = true;
        Ok(rng)
    }

    /// A deterministic generator: the same seed always gives the same
    /// stream. It never reseeds. For tests and simulations; use
    /// [`Rng::from_os`] for anything secret.
    #[must_use]
    pub fn from_seed(seed: [u8; 32]) -> Rng {
        Rng {
            cipher: Aes256Enc::new(&Array::from(seed)),
            buf: [0u8; BATCH],
            pos: BATCH,
            blocks: 0,
            os_reseed: false,
        }
    }

    /// Produces the next batch of keystream and rotates the key.
    fn refill(&mut self) {
        let (blocks, _) = Array::slice_as_chunks_mut(&mut self.buf);
        for (i, b) in blocks.iter_mut().enumerate() {
            b.fill(0); // a counter block, not a secret
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        self.cipher.encrypt_blocks(blocks);
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&self.buf[..KEY_LEN]);
        self.buf[..KEY_LEN].zeroize();
        self.blocks += BATCH_BLOCKS as u64;
        if self.os_reseed && self.blocks >= RESEED_INTERVAL_BLOCKS {
            let mut fresh = [0u8; KEY_LEN];
            if getrandom::fill(&mut fresh).is_ok() {
                for (k, f) in key.iter_mut().zip(&fresh) {
                    *k ^= *f;
                }
                fresh.zeroize();
            }
            self.blocks = 0;
        }
        self.cipher = Aes256Enc::new(&Array::from(key));
        key.zeroize();
        self.pos = KEY_LEN;
    }

    /// Fills `dest` with random bytes.
    pub fn fill(&mut self, dest: &mut [u8]) {
        let mut dest = dest;
        while !dest.is_empty() {
            if self.pos == BATCH {
                self.refill();
            }
            let n = dest.len().min(BATCH - self.pos);
            let (now, later) = dest.split_at_mut(n);
            let src = &mut self.buf[self.pos..self.pos + n];
            now.copy_from_slice(src);
            // Erase what was handed out (fast key erasure). `buf` lives on in `self`, so a
            // plain fill cannot be optimised away; this is the hot path (one IV per token).
            src.fill(0);
            self.pos += n;
            dest = later;
        }
    }

    /// A fresh random 16-byte IV.
    pub fn iv(&mut self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        self.fill(&mut iv);
        iv
    }

    /// A random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use super::*;
    use aes::Aes256;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn deterministic_for_a_seed() {
        let mut a = Rng::from_seed([1; 32]);
        let mut b = Rng::from_seed([1; 32]);
        let mut c = Rng::from_seed([2; 32]);
        let (mut x, mut y, mut z) = ([0u8; 5000], [0u8; 5000], [0u8; 5000]);
        a.fill(&mut x);
        b.fill(&mut y);
        c.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
    }

    /// Known answer derived directly from the construction with the `aes` crate.
    #[test]
    fn known_answer_first_two_batches() {
        let seed = [0x42u8; 32];
        let keystream = |key: [u8; 32]| {
            let c = Aes256::new(&Array::from(key));
            let mut out = Vec::new();
            for i in 0..BATCH_BLOCKS as u64 {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&i.to_le_bytes());
                let mut blk = Array::from(b);
                c.encrypt_block(&mut blk);
                out.extend_from_slice(&blk);
            }
            out
        };
        let ks1 = keystream(seed);
        let ks2 = keystream(ks1[..32].try_into().unwrap());
        let mut expect = ks1[32..].to_vec();
        expect.extend_from_slice(&ks2[32..]);
        let mut rng = Rng::from_seed(seed);
        let mut got = vec![0u8; expect.len()];
        rng.fill(&mut got);
        assert_eq!(got, expect);
    }

    #[test]
    fn used_output_is_wiped() {
        let mut rng = Rng::from_seed([3; 32]);
        let _ = rng.iv();
        assert!(rng.buf[..rng.pos].iter().all(|&b| b == 0));
        assert!(rng.buf[rng.pos..].iter().any(|&b| b != 0));
    }

    #[test]
    fn os_generators_differ() {
        let mut a = Rng::from_os().unwrap();
        let mut b = Rng::from_os().unwrap();
        assert_ne!(a.iv(), b.iv());
        assert!(format!("{a:?}").starts_with("Rng"));
    }

    #[test]
    fn ivs_do_not_repeat_and_bits_are_balanced() {
        let mut rng = Rng::from_os().unwrap();
        let mut seen = HashSet::new();
        let mut ones = 0u64;
        let n = 100_000;
        for _ in 0..n {
            let iv = rng.iv();
            ones += iv.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
            assert!(seen.insert(iv));
        }
        let bits = n * 128;
        // Mean bits/2, sd sqrt(bits)/2 ~ 1789: allow 6 sd.
        assert!(ones.abs_diff(bits / 2) < 11_000, "ones={ones} bits={bits}");
        let x = rng.next_u64();
        let y = rng.next_u64();
        assert_ne!(x, y);
    }

    #[test]
    fn reseeds_after_interval() {
        let mut plain = Rng::from_seed([9; 32]);
        let mut reseeding = Rng::from_seed([9; 32]);
        reseeding.os_reseed = true;
        let mut a = vec![0u8; 1 << 16];
        let mut b = vec![0u8; 1 << 16];
        // Just short of the interval: streams identical.
        let before = (RESEED_INTERVAL_BLOCKS as usize - BATCH_BLOCKS) / BATCH_BLOCKS;
        for _ in 0..before {
            plain.fill(&mut a[..BATCH - KEY_LEN]);
            reseeding.fill(&mut b[..BATCH - KEY_LEN]);
        }
        assert_eq!(a, b);
        assert_eq!(
            reseeding.blocks,
            RESEED_INTERVAL_BLOCKS - BATCH_BLOCKS as u64
        );
        // The batch that crosses the interval mixes OS randomness into the key.
        plain.fill(&mut a[..BATCH - KEY_LEN]);
        reseeding.fill(&mut b[..BATCH - KEY_LEN]);
        assert_eq!(
            a, b,
            "the crossing batch itself still comes from the old key"
        );
        assert_eq!(reseeding.blocks, 0);
        plain.fill(&mut a);
        reseeding.fill(&mut b);
        assert_ne!(a, b);
    }

    proptest! {
        /// Reading the stream in arbitrary pieces gives the same bytes.
        #[test]
        fn chunking_does_not_change_stream(
            seed in any::<[u8; 32]>(),
            cuts in proptest::collection::vec(0usize..700, 0..20),
        ) {
            let total: usize = cuts.iter().sum();
            let mut whole = vec![0u8; total];
            Rng::from_seed(seed).fill(&mut whole);
            let mut rng = Rng::from_seed(seed);
            let mut pieces = Vec::with_capacity(total);
            for c in cuts {
                let mut p = vec![0u8; c];
                rng.fill(&mut p);
                pieces.extend_from_slice(&p);
            }
            prop_assert_eq!(whole, pieces);
        }
    }
}
