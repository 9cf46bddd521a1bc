//! A member's side of group mode (protocol.md §12): the keys it holds, the epochs it follows,
//! and the windows that make every group item arrive once, whichever path it took.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::crypto::fernet;
use crate::proto::group::EpochKey;
use crate::proto::replay::ReplayWindow;

/// How far ahead of its key a member follows the ratchet by itself.
pub(crate) const MAX_RATCHET_STEPS: u32 = 8;
/// Key pulls are sent at most this often.
pub(crate) const PULL_INTERVAL: Duration = Duration::from_millis(500);

/// What a member holds of group mode.
#[derive(Debug)]
pub(crate) struct GroupView {
    /// The distribution group to receive on.
    pub(crate) addr: SocketAddrV4,
    grace: Duration,
    current: Option<EpochKey>,
    /// The previous epoch's key and when it is erased.
    previous: Option<(EpochKey, Instant)>,
    /// Replay window over group token sequence numbers.
    tokens: ReplayWindow,
    /// Group items delivered (by item number), whichever path brought them.
    items: ReplayWindow,
    last_pull: Option<Instant>,
}

/// What [`GroupView::open`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// Decrypted into the plaintext buffer.
    Plain,
    /// A key we do not hold: pull it (`Some(epoch)`, rate-limited) or wait (`None`).
    NoKey(Option<u32>),
    /// Forged, damaged, or a key we no longer keep.
    Bad,
}

impl GroupView {
    pub(crate) fn new(addr: SocketAddrV4, grace: Duration) -> Self {
        GroupView {
            addr,
            grace,
            current: None,
            previous: None,
            tokens: ReplayWindow::new(),
            items: ReplayWindow::new(),
            last_pull: None,
        }
    }

    /// The epoch of the key held, if any.
    pub(crate) fn epoch(&self) -> Option<u32> {
        self.current.as_ref().map(|k| k.epoch)
    }

    /// Install the key a GROUP_KEY delivered; returns whether it was new (an older epoch's
    /// key is ignored).
    pub(crate) fn install(&mut self, now: Instant, epoch: u32, raw: &[u8; 32]) -> bool {
        match self.epoch() {
            Some(e) if epoch <= e => false,
            _ => {
                self.rotate_in(now, EpochKey::new(epoch, raw));
                true
            }
        }
    }

    fn rotate_in(&mut self, now: Instant, key: EpochKey) {
        if let Some(old) = self.current.replace(key) {
            self.previous = Some((old, now + self.grace));
        }
    }

    /// Erase the previous key once its grace period is over.
    pub(crate) fn expire(&mut self, now: Instant) {
        if self.previous.as_ref().is_some_and(|(_, at)| now >= *at) {
            self.previous = None;
        }
    }

    /// When [`GroupView::expire`] has work.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.previous.as_ref().map(|(_, at)| *at)
    }

    /// Open a GROUP token of `epoch` into `plain`: with the current key, the previous one
    /// within its grace period, or the current one ratcheted forward (then installed).
    pub(crate) fn open(
        &mut self,
        now: Instant,
        epoch: u32,
        token: &[u8],
        plain: &mut Vec<u8>,
    ) -> Opened {
        self.expire(now);
        let try_key = |k: &EpochKey, plain: &mut Vec<u8>| {
            plain.clear();
            fernet::decrypt_raw_into(k.fernet(), token, plain).is_ok()
        };
        if let Some(k) = self.current.as_ref().filter(|k| k.epoch == epoch) {
            return if try_key(k, plain) {
                Opened::Plain
            } else {
                Opened::Bad
            };
        }
        if let Some((k, _)) = self.previous.as_ref().filter(|(k, _)| k.epoch == epoch) {
            return if try_key(k, plain) {
                Opened::Plain
            } else {
                Opened::Bad
            };
        }
        // Between the previous epoch and the current one (several quick changes): a ratchet
        // of the previous key, read during its grace period, never installed.
        if let (Some((p, _)), Some(cur)) = (self.previous.as_ref(), self.current.as_ref())
            && p.epoch < epoch
            && epoch < cur.epoch
            && epoch - p.epoch <= MAX_RATCHET_STEPS
        {
            let mut k = p.ratcheted();
            while k.epoch != epoch {
                k = k.ratcheted();
            }
            return if try_key(&k, plain) {
                Opened::Plain
            } else {
                Opened::Bad // a fresh epoch we were never given, and now never will be
            };
        }
        let Some(cur) = self.current.as_ref() else {
            return Opened::NoKey(self.pull(now, epoch));
        };
        let ahead = epoch.wrapping_sub(cur.epoch);
        if ahead == 0 || ahead > MAX_RATCHET_STEPS || epoch < cur.epoch {
            return if epoch > cur.epoch {
                Opened::NoKey(self.pull(now, epoch))
            } else {
                Opened::Bad // older than anything we keep
            };
        }
        let mut k = cur.ratcheted();
        while k.epoch != epoch {
            k = k.ratcheted();
        }
        if try_key(&k, plain) {
            self.rotate_in(now, k);
            Opened::Plain
        } else {
            // Not the ratchet: a fresh key we have not been given (yet).
            Opened::NoKey(self.pull(now, epoch))
        }
    }

    /// Whether to send a KEY_PULL for `epoch` now (at most one per [`PULL_INTERVAL`]).
    fn pull(&mut self, now: Instant, epoch: u32) -> Option<u32> {
        if self.last_pull.is_some_and(|t| now < t + PULL_INTERVAL) {
            return None;
        }
        self.last_pull = Some(now);
        Some(epoch)
    }

    /// A group token's sequence number, once (anti-replay for the group path).
    pub(crate) fn accept_token(&mut self, seq: u64) -> bool {
        self.tokens.mark(seq)
    }

    /// A group item's number, once: false if it was already delivered by the other path.
    pub(crate) fn accept_item(&mut self, item: u64) -> bool {
        self.items.mark(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::rng::Rng;

    fn seal(key: &EpochKey, plain: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        let iv = Rng::from_seed([3; 32]).iv();
        fernet::encrypt_raw_into(key.fernet(), &iv, 1, plain, &mut t);
        t
    }

    fn view() -> GroupView {
        let addr = SocketAddrV4::new(std::net::Ipv4Addr::new(239, 1, 2, 3), 5008);
        GroupView::new(addr, Duration::from_secs(2))
    }

    #[test]
    fn current_previous_within_grace_and_the_ratchet() {
        let t0 = Instant::now();
        let mut g = view();
        let mut plain = Vec::new();
        let k1 = EpochKey::new(1, &[1; 32]);
        assert!(g.install(t0, 1, k1.raw()));
        assert!(
            !g.install(t0, 1, k1.raw()),
            "the same epoch again is not new"
        );
        assert_eq!(g.open(t0, 1, &seal(&k1, b"a"), &mut plain), Opened::Plain);
        assert_eq!(plain, b"a");
        // Two joins later: the ratchet, followed by the member itself.
        let k3 = k1.ratcheted().ratcheted();
        assert_eq!(g.open(t0, 3, &seal(&k3, b"b"), &mut plain), Opened::Plain);
        assert_eq!(g.epoch(), Some(3));
        // The previous key (epoch 1, replaced by 3) still opens within the grace period...
        assert_eq!(g.open(t0, 1, &seal(&k1, b"c"), &mut plain), Opened::Plain);
        // ... and not after it.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(g.open(later, 1, &seal(&k1, b"d"), &mut plain), Opened::Bad);
    }

    #[test]
    fn a_fresh_key_not_yet_delivered_is_pulled_rate_limited() {
        let t0 = Instant::now();
        let mut g = view();
        let mut plain = Vec::new();
        let k1 = EpochKey::new(1, &[1; 32]);
        let fresh = EpochKey::new(2, &[9; 32]);
        let t = seal(&fresh, b"x");
        assert_eq!(g.open(t0, 2, &t, &mut plain), Opened::NoKey(Some(2)));
        g.install(t0, 1, k1.raw());
        assert_eq!(
            g.open(t0, 2, &t, &mut plain),
            Opened::NoKey(None),
            "rate-limited"
        );
        let t1 = t0 + PULL_INTERVAL;
        assert_eq!(g.open(t1, 2, &t, &mut plain), Opened::NoKey(Some(2)));
        assert!(g.install(t1, 2, fresh.raw()));
        assert_eq!(g.open(t1, 2, &t, &mut plain), Opened::Plain);
        // A forged token under the current epoch fails.
        let mut bad = t.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(g.open(t1, 2, &bad, &mut plain), Opened::Bad);
    }

    #[test]
    fn an_epoch_between_the_previous_and_the_current_is_read_by_ratchet() {
        // Holding K(1), then a fresh K(4) installed: a datagram of epoch 2 (a ratchet of 1)
        // still in flight opens during the grace period, and installs nothing.
        let t0 = Instant::now();
        let mut g = view();
        let mut plain = Vec::new();
        let k1 = EpochKey::new(1, &[1; 32]);
        g.install(t0, 1, k1.raw());
        g.install(t0, 4, EpochKey::new(4, &[4; 32]).raw());
        let k2 = k1.ratcheted();
        assert_eq!(
            g.open(t0, 2, &seal(&k2, b"late"), &mut plain),
            Opened::Plain
        );
        assert_eq!(plain, b"late");
        assert_eq!(g.epoch(), Some(4));
        // Epoch 3 was fresh (not a ratchet of 1): gone for good, not pulled.
        let fresh3 = EpochKey::new(3, &[3; 32]);
        assert_eq!(g.open(t0, 3, &seal(&fresh3, b"x"), &mut plain), Opened::Bad);
        // After the grace period, nothing before epoch 4.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(g.open(later, 2, &seal(&k2, b"y"), &mut plain), Opened::Bad);
    }

    #[test]
    fn items_arrive_once_whichever_path() {
        let mut g = view();
        assert!(g.accept_item(10));
        assert!(!g.accept_item(10));
        assert!(g.accept_token(5));
        assert!(!g.accept_token(5));
    }
}
