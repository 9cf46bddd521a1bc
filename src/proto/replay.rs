//! Anti-replay sliding window (RFC 6479 ring-of-blocks variant).
//!
//! The window keeps a 1024-bit bitmap made of 16 `u64` blocks used as a ring:
//! sequence number `s` lives in block `(s / 64) % 16`, bit `s % 64`. When the
//! highest seen sequence number advances into a new block, only the blocks
//! that were skipped over are zeroed (at most 16 words), instead of shifting
//! the whole bitmap as in RFC 4303.
//!
//! # Semantics
//!
//! Let `top` be the highest sequence number accepted so far (0 initially).
//! A sequence number `seq` is **accepted** iff
//!
//! * `seq != 0` (0 is never valid; senders start at 1), and
//! * `seq > top` (new; any forward jump, even far beyond the window), or
//! * `top - seq < WINDOW` and `seq` has not been accepted before.
//!
//! Everything else (duplicates, and anything `WINDOW` or more behind `top`)
//! is rejected. `WINDOW` is `(16 - 1) * 64 = 960`: as in RFC 6479 one block of
//! the ring is the partially-filled "current" block, so the guaranteed window
//! is one block less than the bitmap.
//!
//! # Usage
//!
//! [`check`](ReplayWindow::check) is side-effect free: call it on the cleartext
//! header *before* spending effort on authentication, then call
//! [`mark`](ReplayWindow::mark) only once the message authenticated. Never mark
//! unauthenticated sequence numbers: an attacker could otherwise push `top`
//! forward and make the window reject the genuine traffic.

/// Number of `u64` blocks in the ring (power of two).
const BLOCKS: usize = 16;
const BLOCK_BITS: u64 = 64;
/// Bits in the bitmap.
pub const BITMAP_BITS: u64 = BLOCKS as u64 * BLOCK_BITS;
/// How far behind the highest accepted sequence number a message may be and
/// still be accepted (exclusive): `top - seq < WINDOW`.
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// RFC 6479 anti-replay window; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    bitmap: [u64; BLOCKS],
    top: u64,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

fn block_of(seq: u64) -> usize {
    // Masked to < BLOCKS, so the cast is lossless.
    ((seq / BLOCK_BITS) % BLOCKS as u64) as usize
}

fn bit_of(seq: u64) -> u64 {
    1u64 << (seq % BLOCK_BITS)
}

impl ReplayWindow {
    /// An empty window: every `seq >= 1` is acceptable.
    pub const fn new() -> Self {
        Self {
            bitmap: [0; BLOCKS],
            top: 0,
        }
    }

    /// Highest sequence number accepted so far (0 if none).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Would `seq` be accepted? Does not modify the window.
    pub fn check(&self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.top {
            return true;
        }
        if self.top - seq >= WINDOW {
            return false;
        }
        self.bitmap[block_of(seq)] & bit_of(seq) == 0
    }

    /// Accepts and records `seq`; returns `false` (and changes nothing) if
    /// [`check`](Self::check) would reject it.
    pub fn mark(&mut self, seq: u64) -> bool {
        if !self.check(seq) {
            return false;
        }
        if seq > self.top {
            let new_block = seq / BLOCK_BITS;
            let cur_block = self.top / BLOCK_BITS;
            // Zero the blocks we move into (never the current one), at most
            // the whole ring.
            let advance = (new_block - cur_block).min(BLOCKS as u64);
            for i in 1..=advance {
                // cur_block <= u64::MAX / 64, so this cannot overflow.
                self.bitmap[((cur_block + i) % BLOCKS as u64) as usize] = 0;
            }
            self.top = seq;
        }
        self.bitmap[block_of(seq)] |= bit_of(seq);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Reference model: the exact accept rule over the full history.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
        top: u64,
    }

    impl Model {
        fn check(&self, seq: u64) -> bool {
            seq != 0 && (seq > self.top || (self.top - seq < WINDOW && !self.seen.contains(&seq)))
        }
        fn mark(&mut self, seq: u64) -> bool {
            if !self.check(seq) {
                return false;
            }
            self.seen.insert(seq);
            self.top = self.top.max(seq);
            true
        }
    }

    #[test]
    fn constants() {
        assert_eq!(BITMAP_BITS, 1024);
        assert_eq!(WINDOW, 960);
    }

    #[test]
    fn zero_is_never_accepted() {
        let mut w = ReplayWindow::new();
        assert!(!w.check(0));
        assert!(!w.mark(0));
        assert!(w.mark(5));
        assert!(!w.check(0));
        assert!(!w.mark(0));
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        for s in 1..=5000 {
            assert!(w.check(s));
            assert!(w.mark(s), "seq {s}");
            assert!(!w.check(s));
            assert!(!w.mark(s), "dup {s}");
        }
        assert_eq!(w.top(), 5000);
    }

    #[test]
    fn check_does_not_modify() {
        let mut w = ReplayWindow::new();
        w.mark(100);
        let before = w.clone();
        for s in [0, 1, 99, 100, 101, 10_000, u64::MAX] {
            let _ = w.check(s);
        }
        assert_eq!(w, before);
    }

    #[test]
    fn reorder_within_window() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(1000));
        // Everything in (1000 - WINDOW, 1000) is still fresh.
        for s in (1000 - WINDOW + 1..1000).rev() {
            assert!(w.mark(s), "seq {s}");
        }
        for s in 1000 - WINDOW + 1..=1000 {
            assert!(!w.check(s), "dup {s}");
        }
    }

    #[test]
    fn window_edge() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(10_000));
        assert!(w.check(10_000 - WINDOW + 1));
        assert!(!w.check(10_000 - WINDOW));
        assert!(!w.mark(10_000 - WINDOW));
        assert!(!w.check(1));
    }

    #[test]
    fn rejected_mark_changes_nothing() {
        let mut w = ReplayWindow::new();
        w.mark(5000);
        w.mark(4990);
        let before = w.clone();
        assert!(!w.mark(4990));
        assert!(!w.mark(1));
        assert!(!w.mark(0));
        assert_eq!(w, before);
    }

    #[test]
    fn big_jump_clears_stale_bits() {
        let mut w = ReplayWindow::new();
        for s in 1..=1024 {
            w.mark(s);
        }
        // Jump exactly one ring ahead: same block positions, bits must be cleared.
        let jump = 1024 + BITMAP_BITS;
        assert!(w.mark(jump));
        for s in jump - WINDOW + 1..jump {
            assert!(w.check(s), "seq {s} wrongly considered seen");
        }
        // Huge jump.
        assert!(w.mark(1 << 40));
        assert!(w.check((1 << 40) - 1));
        assert!(!w.check(jump));
    }

    #[test]
    fn jump_within_ring_keeps_recent_bits() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(100));
        assert!(w.mark(100 + 500));
        assert!(!w.check(100));
        assert!(w.check(101));
    }

    #[test]
    fn u64_extremes() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(u64::MAX - 1));
        assert!(w.mark(u64::MAX));
        assert!(!w.check(u64::MAX));
        assert!(!w.mark(u64::MAX - 1));
        assert!(w.mark(u64::MAX - 2));
        assert!(w.check(u64::MAX - WINDOW + 1));
        assert!(!w.check(u64::MAX - WINDOW));
        assert!(!w.check(1));
        assert_eq!(w.top(), u64::MAX);

        let mut w = ReplayWindow::new();
        assert!(w.mark(1));
        assert!(w.mark(u64::MAX));
        assert!(!w.check(1));
    }

    proptest! {
        #[test]
        fn prop_matches_model(
            start in prop_oneof![Just(0u64), any::<u64>(), Just(u64::MAX - 3000)],
            steps in proptest::collection::vec(
                prop_oneof![
                    // mostly near the top, some big jumps
                    8 => -1100i64..1100,
                    1 => -100_000i64..100_000,
                ],
                1..400,
            ),
        ) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            let mut cur = start;
            for d in steps {
                cur = cur.saturating_add_signed(d);
                prop_assert_eq!(w.check(cur), m.check(cur), "check {}", cur);
                prop_assert_eq!(w.mark(cur), m.mark(cur), "mark {}", cur);
                prop_assert_eq!(w.top(), m.top);
            }
        }
    }
}
