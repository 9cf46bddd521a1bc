//! The group key schedule of protocol version 3 (protocol.md §12): epochs, the one-way
//! ratchet, and the rule that finds the key for an epoch.
//!
//! An epoch's key is 32 bytes (a Fernet key: signing ‖ encryption). A *fresh* epoch gets a
//! random key, delivered in each member's own channel; a *ratchet* epoch derives its key from
//! the previous one, so members who hold epoch `e` compute `e + 1` themselves:
//!
//! ```text
//! K(e+1) = HMAC-SHA256(key = K(e), "mcrelay group ratchet" ‖ u32be(e + 1))
//! ```
//!
//! The ratchet is one-way: a newcomer given `K(e+1)` cannot compute `K(e)`, so it cannot read
//! what it recorded before joining.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use crate::crypto::fernet::FernetKey;

/// The label the ratchet hashes in front of the epoch.
pub const RATCHET_LABEL: &[u8] = b"mcrelay group ratchet";

/// The key of epoch `next`, derived from the raw key of epoch `next - 1`.
pub fn ratchet(raw: &[u8; 32], next: u32) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(raw).expect("HMAC takes any key length");
    m.update(RATCHET_LABEL);
    m.update(&next.to_be_bytes());
    m.finalize().into_bytes().into()
}

/// A group key: its epoch, raw bytes (for the ratchet and for delivery) and the Fernet key.
pub struct EpochKey {
    /// The epoch.
    pub epoch: u32,
    raw: [u8; 32],
    key: FernetKey,
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochKey {{ epoch: {}, .. }}", self.epoch)
    }
}

impl Drop for EpochKey {
    fn drop(&mut self) {
        self.raw.zeroize();
    }
}

impl EpochKey {
    /// The key `raw` for `epoch`.
    pub fn new(epoch: u32, raw: &[u8; 32]) -> Self {
        EpochKey {
            epoch,
            raw: *raw,
            key: FernetKey::from_bytes(raw),
        }
    }

    /// The next epoch's key, by the ratchet.
    pub fn ratcheted(&self) -> Self {
        let next = self.epoch.wrapping_add(1);
        let mut raw = ratchet(&self.raw, next);
        let k = EpochKey::new(next, &raw);
        raw.zeroize();
        k
    }

    /// The raw 32 bytes (what GROUP_KEY carries).
    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }

    /// The Fernet key.
    pub fn fernet(&self) -> &FernetKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratchet_is_deterministic_and_moves_the_epoch() {
        let k1 = EpochKey::new(1, &[7; 32]);
        let k2 = k1.ratcheted();
        assert_eq!(k2.epoch, 2);
        assert_eq!(k2.raw(), &ratchet(&[7; 32], 2));
        assert_ne!(k2.raw(), k1.raw());
        assert_eq!(k1.ratcheted().raw(), k2.raw());
        // A different epoch number gives a different key from the same parent.
        assert_ne!(ratchet(&[7; 32], 3), ratchet(&[7; 32], 2));
    }

    #[test]
    fn ratchet_vector() {
        // protocol.md §13: K(2) from K(1) = bytes(range(32)).
        let raw: [u8; 32] = std::array::from_fn(|i| i as u8);
        let k2 = ratchet(&raw, 2);
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&raw).unwrap();
        m.update(b"mcrelay group ratchet\x00\x00\x00\x02");
        let want: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(k2, want);
    }
}
