//! Hashed timer wheel (single level, tick-granular, no cancel).
//!
//! The wheel divides time since `start` into ticks of a fixed `tick` length and
//! keeps one bucket (a reusable `Vec`) per slot; an item due at tick `t` lives in
//! bucket `t % slots` together with its absolute tick, so items more than one
//! rotation away simply stay in their bucket until the wheel reaches their tick.
//!
//! Rounding: a deadline is rounded **up** to the next tick boundary and an item
//! is only handed out once `now` has reached that boundary, so items never fire
//! early; they fire at most one tick (plus the caller's polling latency) late.
//!
//! # No cancel: generation numbers
//!
//! There is deliberately no `cancel`/`reschedule`. Callers put a generation
//! number (or the deadline itself) into `T` and keep the authoritative value in
//! their own state; when an item expires they compare and silently drop stale
//! ones:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use mcrelay::core::timer::TimerWheel;
//!
//! struct Session { timer_gen: u64 }
//! let t0 = Instant::now();
//! let mut wheel = TimerWheel::new(t0, Duration::from_millis(10), 512);
//! let mut s = Session { timer_gen: 0 };
//!
//! // (Re)arming = bump the generation and insert a new entry.
//! s.timer_gen += 1;
//! wheel.insert(t0 + Duration::from_secs(1), (7u32 /*session*/, s.timer_gen));
//! s.timer_gen += 1; // re-armed: the entry above is now stale
//! wheel.insert(t0 + Duration::from_secs(2), (7u32, s.timer_gen));
//!
//! let mut due = Vec::new();
//! wheel.expire(t0 + Duration::from_secs(3), &mut due);
//! let live: Vec<_> = due.iter().filter(|(_, g)| *g == s.timer_gen).collect();
//! assert_eq!(live.len(), 1);
//! ```
//!
//! Stale entries cost memory until their (old) deadline passes, which is
//! bounded by how often callers re-arm.
//!
//! # Cost
//!
//! * `insert`: O(1) amortized (push into a bucket).
//! * `expire`: O(1) when called before the next tick; otherwise it visits the
//!   buckets of the elapsed ticks, but never more than `slots` buckets, plus the
//!   items in them. When something fired, the cached minimum is recomputed by a
//!   scan of at most one rotation (stops at the first bucket holding an item due
//!   at exactly that tick).
//! * `next_deadline`: O(1) (cached exact minimum).

use std::time::{Duration, Instant};

/// Largest number of slots accepted; larger requests are clamped.
pub(crate) const MAX_SLOTS: usize = 1 << 20;

/// A hashed timer wheel; see the module documentation.
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    start: Instant,
    /// Tick length in nanoseconds (>= 1).
    tick_ns: u128,
    /// `slots - 1`; `slots` is a power of two.
    mask: u64,
    buckets: Vec<Vec<(u64, T)>>,
    /// Items whose tick was already processed when they were inserted.
    overdue: Vec<T>,
    /// Every tick `< cursor` has been processed: buckets hold only ticks `>= cursor`.
    cursor: u64,
    len: usize,
    /// Exact minimum tick over all stored items (overdue included).
    min_tick: Option<u64>,
}

impl<T> TimerWheel<T> {
    /// Creates a wheel whose tick 0 is `start`.
    ///
    /// `tick` is the granularity (a zero tick is treated as 1 ns); `slots` is
    /// the number of buckets, rounded up to a power of two and clamped to
    /// `1..=MAX_SLOTS`.
    pub(crate) fn new(start: Instant, tick: Duration, slots: usize) -> Self {
        let slots = slots
            .clamp(1, MAX_SLOTS)
            .checked_next_power_of_two()
            .unwrap_or(MAX_SLOTS);
        let mut buckets = Vec::with_capacity(slots);
        buckets.resize_with(slots, Vec::new);
        Self {
            start,
            tick_ns: tick.as_nanos().max(1),
            mask: (slots as u64).wrapping_sub(1),
            buckets,
            overdue: Vec::new(),
            cursor: 0,
            len: 0,
            min_tick: None,
        }
    }

    /// Number of buckets (a power of two).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.buckets.len()
    }

    /// Number of stored items (stale generations included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True when no item is stored.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tick of a deadline, rounded up (the first tick boundary `>= deadline`).
    fn deadline_tick(&self, deadline: Instant) -> u64 {
        let ns = deadline.saturating_duration_since(self.start).as_nanos();
        let t = ns.div_ceil(self.tick_ns);
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// Last tick boundary `<= now`, or `None` when `now` is before `start`.
    fn now_tick(&self, now: Instant) -> Option<u64> {
        let ns = now.checked_duration_since(self.start)?.as_nanos();
        Some(u64::try_from(ns / self.tick_ns).unwrap_or(u64::MAX))
    }

    fn tick_instant(&self, tick: u64) -> Option<Instant> {
        let ns = u128::from(tick).checked_mul(self.tick_ns)?;
        let secs = u64::try_from(ns / 1_000_000_000).ok()?;
        // The remainder is < 1e9 and fits in u32.
        let nanos = u32::try_from(ns % 1_000_000_000).ok()?;
        self.start.checked_add(Duration::new(secs, nanos))
    }

    fn bucket_index(&self, tick: u64) -> usize {
        // `mask < slots <= MAX_SLOTS`, so the masked value fits in usize.
        (tick & self.mask) as usize
    }

    /// Schedules `item` at `deadline`, rounded up to the next tick. Deadlines
    /// that are already past fire at the next [`expire`](Self::expire). O(1).
    pub(crate) fn insert(&mut self, deadline: Instant, item: T) {
        let tick = self.deadline_tick(deadline);
        if tick < self.cursor {
            // Already processed tick: the item is due now.
            self.overdue.push(item);
        } else {
            let idx = self.bucket_index(tick);
            if let Some(bucket) = self.buckets.get_mut(idx) {
                bucket.push((tick, item));
            } else {
                // Unreachable (idx <= mask); keep the item rather than panic.
                self.overdue.push(item);
            }
        }
        self.len += 1;
        self.min_tick = Some(self.min_tick.map_or(tick, |m| m.min(tick)));
    }

    /// Appends to `out` every item whose deadline is `<= now` and advances
    /// the wheel. Items come out in no particular order.
    ///
    /// Cheap when nothing is due; when called very late it visits each bucket
    /// at most once. A `now` earlier than a previous call's is harmless.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        let mut fired = self.overdue.len();
        out.append(&mut self.overdue);

        if let Some(nt) = self.now_tick(now)
            && nt >= self.cursor
        {
            let span = nt - self.cursor; // number of ticks to process, minus one
            if span >= self.mask {
                // A full rotation (or more) elapsed: every bucket once.
                for bucket in &mut self.buckets {
                    fired += drain_due(bucket, nt, out);
                }
            } else {
                for t in self.cursor..=nt {
                    let idx = (t & self.mask) as usize;
                    if let Some(bucket) = self.buckets.get_mut(idx) {
                        fired += drain_due(bucket, nt, out);
                    }
                }
            }
            self.cursor = nt.saturating_add(1);
        }

        if fired > 0 {
            self.len = self.len.saturating_sub(fired);
            self.recompute_min();
        }
    }

    /// Recomputes the exact minimum tick. Invariant on entry: `overdue` is
    /// empty and buckets only hold ticks `>= cursor`.
    fn recompute_min(&mut self) {
        if self.len == 0 {
            self.min_tick = None;
            return;
        }
        if !self.overdue.is_empty() {
            // Not reached from `expire` (which drains it); stay correct anyway.
            self.min_tick = Some(self.cursor.saturating_sub(1));
            return;
        }
        let mut seen_min: Option<u64> = None;
        let mut t = self.cursor;
        for _ in 0..self.buckets.len() {
            let idx = (t & self.mask) as usize;
            if let Some(bucket) = self.buckets.get(idx) {
                for &(tick, _) in bucket {
                    if tick == t {
                        // Every tick in [cursor, t) had its bucket checked
                        // already, so nothing is due earlier than `t`.
                        self.min_tick = Some(t);
                        return;
                    }
                    seen_min = Some(seen_min.map_or(tick, |m| m.min(tick)));
                }
            }
            t = t.wrapping_add(1);
        }
        // Nothing within one rotation: we saw every item.
        self.min_tick = seen_min;
    }

    /// Earliest instant at which some item may be due, for a poll timeout.
    /// Tick-rounded (the deadline rounded up to its tick), so it is never
    /// earlier than a stored item's real deadline by more than a tick and
    /// never later than the instant at which `expire` would release it.
    /// Returns a past instant when overdue items are waiting. O(1).
    ///
    /// `None` when empty (or, degenerately, when the instant is not
    /// representable).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.tick_instant(self.min_tick?)
    }
}

/// Moves items with tick `<= nt` from `bucket` to `out`; returns how many.
fn drain_due<T>(bucket: &mut Vec<(u64, T)>, nt: u64, out: &mut Vec<T>) -> usize {
    if bucket.is_empty() {
        return 0;
    }
    let before = out.len();
    out.extend(
        bucket
            .extract_if(.., |(tick, _)| *tick <= nt)
            .map(|(_, item)| item),
    );
    out.len() - before
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    fn wheel(slots: usize) -> (Instant, TimerWheel<u32>) {
        let t0 = Instant::now();
        (t0, TimerWheel::new(t0, ms(10), slots))
    }

    fn expire_sorted<T: Ord>(w: &mut TimerWheel<T>, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        w.expire(now, &mut out);
        out.sort();
        out
    }

    #[test]
    fn empty_wheel() {
        let (t0, mut w) = wheel(8);
        assert!(w.is_empty());
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_deadline(), None);
        assert!(expire_sorted(&mut w, t0 + Duration::from_secs(100)).is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn slots_rounded_to_power_of_two() {
        let t0 = Instant::now();
        assert_eq!(TimerWheel::<()>::new(t0, ms(1), 0).slots(), 1);
        assert_eq!(TimerWheel::<()>::new(t0, ms(1), 1).slots(), 1);
        assert_eq!(TimerWheel::<()>::new(t0, ms(1), 5).slots(), 8);
        assert_eq!(TimerWheel::<()>::new(t0, ms(1), 512).slots(), 512);
        assert_eq!(
            TimerWheel::<()>::new(t0, ms(1), usize::MAX).slots(),
            MAX_SLOTS
        );
    }

    #[test]
    fn never_fires_early_and_rounds_up() {
        let (t0, mut w) = wheel(8);
        w.insert(t0 + ms(15), 1); // rounds up to tick 2 (20 ms)
        assert_eq!(w.next_deadline(), Some(t0 + ms(20)));
        assert!(expire_sorted(&mut w, t0 + ms(14)).is_empty());
        assert!(expire_sorted(&mut w, t0 + ms(15)).is_empty()); // tick 1 only
        assert!(expire_sorted(&mut w, t0 + ms(19)).is_empty());
        assert_eq!(w.len(), 1);
        assert_eq!(expire_sorted(&mut w, t0 + ms(20)), vec![1]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn exact_tick_deadline_fires_on_the_tick() {
        let (t0, mut w) = wheel(8);
        w.insert(t0 + ms(30), 3);
        assert_eq!(w.next_deadline(), Some(t0 + ms(30)));
        assert!(expire_sorted(&mut w, t0 + ms(29)).is_empty());
        assert_eq!(expire_sorted(&mut w, t0 + ms(30)), vec![3]);
    }

    #[test]
    fn past_deadlines_fire_at_next_expire() {
        let (t0, mut w) = wheel(8);
        w.expire(t0 + ms(1000), &mut Vec::new()); // cursor advanced to tick 101
        w.insert(t0, 1); // long past
        w.insert(t0 + ms(995), 2); // tick 100, already processed
        w.insert(t0, 3);
        assert_eq!(w.len(), 3);
        let nd = w.next_deadline().expect("pending");
        assert!(nd <= t0 + ms(1000));
        // Same `now` as the previous call: still released.
        assert_eq!(expire_sorted(&mut w, t0 + ms(1000)), vec![1, 2, 3]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadline_before_start() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut w = TimerWheel::new(t0, ms(10), 8);
        w.insert(t0 - Duration::from_secs(5), 9);
        // `now` before start: tick 0 not reached yet, nothing fires.
        assert!(expire_sorted(&mut w, t0 - Duration::from_secs(1)).is_empty());
        assert_eq!(expire_sorted(&mut w, t0), vec![9]);
    }

    #[test]
    fn multi_rotation_items_wait() {
        let (t0, mut w) = wheel(4); // rotation = 40 ms
        w.insert(t0 + ms(10), 1); // tick 1
        w.insert(t0 + ms(50), 2); // tick 5, same bucket as 1
        w.insert(t0 + ms(90), 3); // tick 9, same bucket
        assert_eq!(expire_sorted(&mut w, t0 + ms(10)), vec![1]);
        assert_eq!(w.next_deadline(), Some(t0 + ms(50)));
        assert!(expire_sorted(&mut w, t0 + ms(49)).is_empty());
        assert_eq!(expire_sorted(&mut w, t0 + ms(50)), vec![2]);
        assert_eq!(w.next_deadline(), Some(t0 + ms(90)));
        assert_eq!(expire_sorted(&mut w, t0 + ms(95)), vec![3]);
        assert!(w.is_empty());
    }

    #[test]
    fn very_late_expire_jumps_many_rotations() {
        let (t0, mut w) = wheel(8);
        for i in 0..100u32 {
            w.insert(t0 + ms(u64::from(i) * 7), i);
        }
        w.insert(t0 + Duration::from_secs(3600), 1000);
        let got = expire_sorted(&mut w, t0 + Duration::from_secs(60));
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(w.len(), 1);
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(3600)));
        assert!(expire_sorted(&mut w, t0 + Duration::from_secs(3599)).is_empty());
        assert_eq!(
            expire_sorted(&mut w, t0 + Duration::from_secs(3600)),
            vec![1000]
        );
    }

    #[test]
    fn huge_jump_visits_each_bucket_once() {
        // 1 ns ticks: an hour is 3.6e12 ticks. Walking tick by tick would not
        // finish; the wheel must cap the walk at one rotation.
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, Duration::from_nanos(1), 512);
        w.insert(t0 + Duration::from_secs(1), 1u32);
        w.insert(t0 + Duration::from_secs(7200), 2u32);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_secs(3600), &mut out);
        assert_eq!(out, vec![1]);
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(7200)));
        out.clear();
        w.expire(t0 + Duration::from_secs(7200), &mut out);
        assert_eq!(out, vec![2]);
    }

    #[test]
    fn spurious_and_backwards_calls_are_harmless() {
        let (t0, mut w) = wheel(8);
        w.insert(t0 + ms(100), 1);
        for x in [0u64, 5, 50, 20, 99, 3] {
            assert!(expire_sorted(&mut w, t0 + ms(x)).is_empty());
        }
        assert_eq!(w.next_deadline(), Some(t0 + ms(100)));
        assert_eq!(expire_sorted(&mut w, t0 + ms(100)), vec![1]);
    }

    #[test]
    fn next_deadline_tracks_minimum_after_partial_expiry() {
        let (t0, mut w) = wheel(16);
        w.insert(t0 + ms(300), 3);
        w.insert(t0 + ms(100), 1);
        w.insert(t0 + ms(200), 2);
        assert_eq!(w.next_deadline(), Some(t0 + ms(100)));
        assert_eq!(expire_sorted(&mut w, t0 + ms(150)), vec![1]);
        assert_eq!(w.next_deadline(), Some(t0 + ms(200)));
        w.insert(t0 + ms(160), 4);
        assert_eq!(w.next_deadline(), Some(t0 + ms(160)));
    }

    #[test]
    fn zero_tick_does_not_panic() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, Duration::ZERO, 4);
        w.insert(t0 + Duration::from_nanos(5), 1u8);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_nanos(4), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + Duration::from_nanos(5), &mut out);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn generation_pattern() {
        let (t0, mut w) = wheel(8);
        let mut generation = 0u32;
        for i in 0..5 {
            generation += 1;
            w.insert(t0 + ms((10 + i) * 10), generation);
        }
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 5);
        assert_eq!(out.iter().filter(|g| **g == generation).count(), 1);
    }

    #[test]
    fn buckets_are_reused() {
        let (t0, mut w) = wheel(4);
        let mut out = Vec::new();
        for round in 0..50u64 {
            for i in 0..8u32 {
                w.insert(t0 + ms(round * 40 + u64::from(i) * 5), i);
            }
            out.clear();
            w.expire(t0 + ms(round * 40 + 40), &mut out);
            assert_eq!(out.len(), 8);
        }
        let cap: usize = w.buckets.iter().map(Vec::capacity).sum();
        assert!(cap <= 32, "bucket capacity grew to {cap}");
    }

    proptest! {
        /// Random inserts interleaved with random (monotone) expire calls:
        /// each item fires exactly once, never before its deadline, and no
        /// later than the first expire at/after its tick-rounded deadline;
        /// next_deadline is a valid lower bound.
        #[test]
        fn prop_fires_once_on_time(
            slots in 1usize..32,
            tick_ms in 1u64..20,
            ops in proptest::collection::vec((any::<bool>(), 0u64..5000), 1..200),
        ) {
            let t0 = Instant::now();
            let tick = Duration::from_millis(tick_ms);
            let mut w = TimerWheel::new(t0, tick, slots);
            let mut now_ms = 0u64;
            let mut pending: Vec<(u32, u64)> = Vec::new(); // (id, deadline ms)
            let mut next_id = 0u32;
            let mut out = Vec::new();
            for (is_insert, v) in ops {
                if is_insert {
                    // Deadline anywhere from the past to far in the future.
                    let d = (now_ms + v).saturating_sub(500);
                    w.insert(t0 + Duration::from_millis(d), next_id);
                    pending.push((next_id, d));
                    next_id += 1;
                } else {
                    now_ms += v / 4;
                    let now = t0 + Duration::from_millis(now_ms);
                    // next_deadline is exactly the earliest tick-rounded deadline.
                    let expect = pending
                        .iter()
                        .map(|p| t0 + Duration::from_millis(p.1.div_ceil(tick_ms) * tick_ms))
                        .min();
                    prop_assert_eq!(w.next_deadline(), expect);
                    out.clear();
                    w.expire(now, &mut out);
                    for id in &out {
                        let pos = pending.iter().position(|p| p.0 == *id);
                        prop_assert!(pos.is_some(), "fired twice or unknown");
                        let (_, d) = pending.swap_remove(pos.unwrap_or(0));
                        prop_assert!(d <= now_ms, "fired early: {} > {}", d, now_ms);
                    }
                    // Everything whose rounded deadline passed must have fired.
                    for &(_, d) in &pending {
                        let rounded = d.div_ceil(tick_ms) * tick_ms;
                        prop_assert!(rounded > now_ms, "late: {} <= {}", rounded, now_ms);
                    }
                    prop_assert_eq!(w.len(), pending.len());
                }
            }
        }
    }
}
