//! One direction pair of a session's sealed channel (protocol.md §4–§5): the Fernet key, the
//! negotiated token form, the sending sequence number and fragment id, and the receiving
//! replay window.
//!
//! The relay and the client run the same rules: a token is opened (HMAC checked, decrypted)
//! without touching the window; only when its plaintext parsed is its sequence number
//! [`accepted`](Channel::accept), so a forged or malformed token can never move the window.

use crate::crypto::fernet::{self, FernetError, FernetKey};
use crate::crypto::rng::Rng;
use crate::proto::replay::ReplayWindow;

/// A session's channel state. One per session, on each side.
#[derive(Debug)]
pub struct Channel {
    /// Protocol version: 1 carries tokens as base64 text, 2 and 3 in binary.
    version: u16,
    key: FernetKey,
    rx: ReplayWindow,
    tx_seq: u64,
    last_msg_id: u32,
}

impl Channel {
    /// A fresh channel under `key` for protocol `version`.
    pub fn new(version: u16, key: FernetKey, rng: &mut Rng) -> Channel {
        Channel {
            version,
            key,
            rx: ReplayWindow::new(),
            tx_seq: 0,
            last_msg_id: rng.next_u64() as u32,
        }
    }

    /// The protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Change the version (a re-registration with the same key may negotiate another).
    pub fn set_version(&mut self, version: u16) {
        self.version = version;
    }

    /// Do tokens travel in binary (version 2 and later) rather than as base64 text?
    pub fn binary(&self) -> bool {
        self.version >= 2
    }

    /// The channel key.
    pub fn key(&self) -> &FernetKey {
        &self.key
    }

    /// Verify and decrypt `token` into `plain` (appended); returns the token's timestamp.
    /// The replay window is not touched: call [`Channel::accept`] once the plaintext parsed.
    ///
    /// # Errors
    /// As [`fernet::open_into`].
    pub fn open(
        &self,
        token: &[u8],
        scratch: &mut Vec<u8>,
        plain: &mut Vec<u8>,
    ) -> Result<u64, FernetError> {
        fernet::open_into(self.binary(), &self.key, token, scratch, plain)
    }

    /// Mark `seq` as received; false if it is a replay (or 0, or too old).
    pub fn accept(&mut self, seq: u64) -> bool {
        self.rx.mark(seq)
    }

    /// The sequence number for the next token sent.
    pub fn next_seq(&mut self) -> u64 {
        self.tx_seq += 1;
        self.tx_seq
    }

    /// The fragment id for the next fragmented message sent: random each time (never the
    /// previous one), so that a spoofer who saw one cannot aim a FRAGMENT at the next.
    pub fn next_msg_id(&mut self, rng: &mut Rng) -> u32 {
        let mut id = rng.next_u64() as u32;
        if id == self.last_msg_id {
            id = id.wrapping_add(1);
        }
        self.last_msg_id = id;
        id
    }

    /// Length of the token this channel makes of a `plain_len`-byte plaintext.
    pub fn token_len(&self, plain_len: usize) -> usize {
        fernet::sealed_len(self.binary(), plain_len)
    }

    /// Seal `plain` into a token appended to `out`.
    pub fn seal_into(&self, iv: &[u8; 16], unix: u64, plain: &[u8], out: &mut Vec<u8>) {
        fernet::seal_into(self.binary(), &self.key, iv, unix, plain, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(version: u16) -> (Channel, Channel) {
        let mut rng = Rng::from_seed([7; 32]);
        let key = FernetKey::from_bytes(&[3; 32]);
        (
            Channel::new(version, key.clone(), &mut rng),
            Channel::new(version, key, &mut rng),
        )
    }

    #[test]
    fn seals_and_opens_in_both_forms() {
        for version in [1, 2] {
            let (a, b) = pair(version);
            let mut token = Vec::new();
            a.seal_into(&[9; 16], 1_700_000_000, b"hello", &mut token);
            assert_eq!(token.len(), a.token_len(5));
            assert_eq!(token.first() == Some(&0x80), version == 2);
            let (mut scratch, mut plain) = (Vec::new(), Vec::new());
            assert_eq!(b.open(&token, &mut scratch, &mut plain), Ok(1_700_000_000));
            assert_eq!(plain, b"hello");
        }
    }

    #[test]
    fn the_window_moves_only_on_accept() {
        let (mut a, mut b) = pair(2);
        let s1 = a.next_seq();
        let s2 = a.next_seq();
        assert_eq!((s1, s2), (1, 2));
        assert!(b.accept(s2));
        assert!(b.accept(s1));
        assert!(!b.accept(s1), "replay");
        assert!(!b.accept(0), "zero is never valid");
    }

    #[test]
    fn a_wrong_key_fails_without_output() {
        let (a, _) = pair(2);
        let mut rng = Rng::from_seed([1; 32]);
        let other = Channel::new(2, FernetKey::from_bytes(&[4; 32]), &mut rng);
        let mut token = Vec::new();
        a.seal_into(&[0; 16], 1, b"x", &mut token);
        let (mut scratch, mut plain) = (Vec::new(), Vec::new());
        assert!(other.open(&token, &mut scratch, &mut plain).is_err());
        assert!(plain.is_empty());
    }

    #[test]
    fn fragment_ids_are_not_guessable_from_the_previous_one() {
        let mut rng = Rng::from_seed([9; 32]);
        let mut c = Channel::new(2, FernetKey::from_bytes(&[0; 32]), &mut rng);
        let ids: Vec<u32> = (0..64).map(|_| c.next_msg_id(&mut rng)).collect();
        let steps_of_one = ids
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert_eq!(steps_of_one, 0);
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len());
    }
}
