//! Fragments coming in, of both shapes (version 1–2 FRAGMENT datagrams, version-3 FRAG pieces):
//! the [`Reassembler`], whether its expiry timer is armed, and the buffer a completed body is
//! handed out in.
//!
//! The relay core owns one [`Fragments`]; it asks it to take each piece and is told, in one
//! [`Piece`], what to do next: nothing yet (and maybe arm the timer), hand a completed body on,
//! or drop the piece for a reason. The counters of the fragment path (`fragments_in`,
//! `reassembled`, evictions, timeouts) are kept here, so the core's code is only the routing.

#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use super::stats::{DropReason, Stats};
use crate::proto::reassembly::{Limits, Reassembler, Shape};

/// What became of one piece.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece {
    /// Stored; the message is still incomplete. `arm`: insert the expiry timer at this instant
    /// (only when none is armed yet).
    Waiting { arm: Option<Instant> },
    /// The piece completed its message: the whole body, in a buffer to hand back with
    /// [`Fragments::recycle`] once used.
    Complete(Vec<u8>),
    /// Refused; nothing changed.
    Dropped(DropReason),
}

/// The fragment path's state.
#[derive(Debug)]
pub(super) struct Fragments {
    reassembly: Reassembler,
    timer_armed: bool,
    /// A completed body, copied out of the reassembler so the core may change it while the body
    /// is being handled (kept between messages: no allocation per message).
    done: Vec<u8>,
}

impl Fragments {
    pub(super) fn new(limits: Limits) -> Self {
        Fragments {
            reassembly: Reassembler::new(limits),
            timer_armed: false,
            done: Vec::with_capacity(2048),
        }
    }

    /// Take one piece of `owner`'s message `msg_id`: `index` of `count`, cut to `shape`.
    pub(super) fn insert(
        &mut self,
        now: Instant,
        owner: u32,
        (msg_id, index, count): (u32, u16, u16),
        chunk: &[u8],
        shape: Shape,
        stats: &mut Stats,
    ) -> Piece {
        stats.fragments_in += 1;
        let r = self
            .reassembly
            .insert_shaped(now, owner, (msg_id, index, count), chunk, shape);
        let piece = match r {
            Ok(None) => Piece::Waiting { arm: self.arm(now) },
            Ok(Some(body)) => {
                stats.reassembled += 1;
                let mut done = std::mem::take(&mut self.done);
                done.clear();
                done.extend_from_slice(body);
                Piece::Complete(done)
            }
            Err(e) => Piece::Dropped(DropReason::from_fragment(&e)),
        };
        let evicted = self.reassembly.take_evicted();
        stats.count_drops(DropReason::ReassemblyEvicted, evicted);
        piece
    }

    /// Give back the buffer of a [`Piece::Complete`].
    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        self.done = buf;
    }

    fn arm(&mut self, now: Instant) -> Option<Instant> {
        if self.timer_armed {
            return None;
        }
        self.timer_armed = true;
        Some(now + self.reassembly.limits().timeout)
    }

    /// The expiry timer fired: drop what timed out (counted). Returns when to fire again, if
    /// anything is still incomplete (else the timer is disarmed).
    pub(super) fn expire(&mut self, now: Instant, stats: &mut Stats) -> Option<Instant> {
        let n = self.reassembly.expire(now);
        stats.count_drops(DropReason::ReassemblyTimeout, n as u64);
        let next = self.reassembly.next_expiry();
        self.timer_armed = next.is_some();
        next
    }

    /// Forget everything `owner` had in flight (its session ended).
    pub(super) fn remove_owner(&mut self, owner: u32) {
        self.reassembly.remove_owner(owner);
    }

    /// Bytes held by incomplete reassemblies.
    pub(super) fn bytes(&self) -> usize {
        self.reassembly.bytes_in_use()
    }

    /// Incomplete reassemblies.
    pub(super) fn in_flight(&self) -> usize {
        self.reassembly.in_flight()
    }

    /// How long an incomplete message may wait.
    #[cfg(test)]
    fn timeout(&self) -> Duration {
        self.reassembly.limits().timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four-byte chunks, up to eight.
    const S: Shape = Shape {
        chunk: 4,
        max_count: 8,
    };

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(5),
            ..Limits::default()
        }
    }

    #[test]
    fn a_message_completes_once_counted_and_its_buffer_is_reused() {
        let (mut f, mut stats, t0) = (Fragments::new(limits()), Stats::default(), Instant::now());
        let first = f.insert(t0, 7, (1, 0, 2), b"abcd", S, &mut stats);
        assert_eq!(
            first,
            Piece::Waiting {
                arm: Some(t0 + f.timeout())
            }
        );
        // A second incomplete message does not arm the timer again.
        let other = f.insert(t0, 7, (2, 0, 2), b"wxyz", S, &mut stats);
        assert_eq!(other, Piece::Waiting { arm: None });
        let Piece::Complete(body) = f.insert(t0, 7, (1, 1, 2), b"ef", S, &mut stats) else {
            panic!("the second piece completes the message");
        };
        assert_eq!(body, b"abcdef");
        let ptr = body.as_ptr();
        f.recycle(body);
        f.insert(t0, 8, (1, 0, 2), b"1234", S, &mut stats);
        let Piece::Complete(again) = f.insert(t0, 8, (1, 1, 2), b"5", S, &mut stats) else {
            panic!("complete");
        };
        assert_eq!(again, b"12345");
        assert_eq!(again.as_ptr(), ptr, "the same buffer, no new allocation");
        assert_eq!((stats.fragments_in, stats.reassembled), (5, 2));
        assert_eq!(f.in_flight(), 1);
    }

    #[test]
    fn bad_pieces_are_dropped_with_their_reason_and_change_nothing() {
        let (mut f, mut stats, t0) = (Fragments::new(limits()), Stats::default(), Instant::now());
        f.insert(t0, 1, (9, 0, 3), b"abcd", S, &mut stats);
        let before = (f.bytes(), f.in_flight());
        let out = f.insert(t0, 1, (9, 5, 3), b"abc", S, &mut stats);
        assert!(matches!(out, Piece::Dropped(_)), "{out:?}");
        let out = f.insert(t0, 1, (9, 0, 1), b"abc", S, &mut stats);
        assert!(matches!(out, Piece::Dropped(_)), "{out:?}");
        assert_eq!((f.bytes(), f.in_flight()), before);
    }

    #[test]
    fn expiry_drops_what_timed_out_counts_it_and_disarms_when_nothing_is_left() {
        let (mut f, mut stats, t0) = (Fragments::new(limits()), Stats::default(), Instant::now());
        f.insert(t0, 1, (1, 0, 2), b"aaaa", S, &mut stats);
        let t1 = t0 + Duration::from_secs(2);
        f.insert(t1, 2, (1, 0, 2), b"bbbb", S, &mut stats);
        // At t0+5 s the first one expires; the second is due at t1+5 s.
        assert_eq!(
            f.expire(t0 + f.timeout(), &mut stats),
            Some(t1 + f.timeout())
        );
        assert_eq!(f.in_flight(), 1);
        assert_eq!(f.expire(t1 + f.timeout(), &mut stats), None);
        assert_eq!((f.in_flight(), f.bytes()), (0, 0));
        assert_eq!(stats.drops(DropReason::ReassemblyTimeout), 2);
        // Disarmed: the next incomplete message arms it again.
        let t2 = t1 + Duration::from_secs(10);
        let again = f.insert(t2, 3, (1, 0, 2), b"cccc", S, &mut stats);
        assert_eq!(
            again,
            Piece::Waiting {
                arm: Some(t2 + f.timeout())
            }
        );
        f.remove_owner(3);
        assert_eq!(f.in_flight(), 0);
    }
}
