//! Handshake budget: token buckets limiting RSA work, globally and per source.
//!
//! [`TokenBucket`] uses exact integer arithmetic: one token is 10^9 units and
//! the bucket gains `rate_per_sec` units per elapsed nanosecond, so there is
//! no rounding drift however often it is polled. It starts full.
//!
//! [`HandshakeBudget`] combines one global bucket with a fixed table of
//! [`PER_SOURCE_SLOTS`] per-source buckets indexed by a keyed hash of the
//! source address. Collisions share a bucket (bounded memory, no per-source
//! allocation; an attacker cannot aim collisions without the key).
//!
//! Source normalization: an IPv4 address (or IPv4-mapped IPv6 address) is
//! one source; an IPv6 address is keyed by its /64 prefix, since whoever
//! holds a /64 can use any address in it for free.

use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::net::IpAddr;
use std::time::Instant;

/// Units per token (refill adds `rate_per_sec` units per nanosecond).
const UNITS_PER_TOKEN: u64 = 1_000_000_000;

/// Number of per-source buckets in a [`HandshakeBudget`] (power of two).
pub(crate) const PER_SOURCE_SLOTS: usize = 1024;

/// A token bucket with `rate_per_sec` refill and `burst` capacity.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate_per_sec: u32,
    burst: u32,
    /// Current fill, in units (`<= burst * UNITS_PER_TOKEN`).
    units: u64,
    /// Instant up to which refill has been credited.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `burst == 0` never grants anything; `rate_per_sec == 0`
    /// grants the initial burst only.
    pub(crate) fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let mut b = Self {
            rate_per_sec,
            burst,
            units: 0,
            last: now,
        };
        b.units = b.capacity();
        b
    }

    /// Refill rate in tokens per second.
    #[cfg(test)]
    pub(crate) fn rate_per_sec(&self) -> u32 {
        self.rate_per_sec
    }

    /// Capacity in tokens.
    #[cfg(test)]
    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    /// Whole tokens available at `now` (refills as a side effect).
    #[cfg(test)]
    pub(crate) fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        u32::try_from(self.units / UNITS_PER_TOKEN).unwrap_or(u32::MAX)
    }

    /// Takes one token if available at `now`.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.take_refilled()
    }

    fn capacity(&self) -> u64 {
        // u32::MAX * 10^9 < u64::MAX.
        u64::from(self.burst) * UNITS_PER_TOKEN
    }

    /// Credits the time since the last refill. A `now` earlier than a
    /// previous one credits nothing (and does not move `last` back).
    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.last) else {
            return;
        };
        let add = elapsed
            .as_nanos()
            .saturating_mul(u128::from(self.rate_per_sec));
        let cap = self.capacity();
        let room = u128::from(cap - self.units.min(cap));
        // `add.min(room) <= cap`, which fits in u64.
        let add = u64::try_from(add.min(room)).unwrap_or(0);
        self.units = (self.units + add).min(cap);
        self.last = now;
    }

    fn has_token(&self) -> bool {
        self.units >= UNITS_PER_TOKEN
    }

    fn take_refilled(&mut self) -> bool {
        if self.has_token() {
            self.units -= UNITS_PER_TOKEN;
            true
        } else {
            false
        }
    }
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BudgetError {
    /// The relay-wide budget is exhausted.
    Global,
    /// This source (or one sharing its bucket) exceeded its rate.
    PerSource,
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetError::Global => "global handshake budget exhausted",
            BudgetError::PerSource => "per-source handshake rate exceeded",
        })
    }
}

impl std::error::Error for BudgetError {}

/// Global + per-source handshake budget; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeBudget {
    global: TokenBucket,
    sources: Box<[TokenBucket]>,
    hash_key: u64,
}

impl HandshakeBudget {
    /// Buckets refill at the given rates with a burst of one second's worth
    /// (at least 1), and start full. `hash_key` should be random per process
    /// (it keys the source → bucket mapping).
    pub(crate) fn new(
        global_per_sec: u32,
        per_source_per_sec: u32,
        now: Instant,
        hash_key: u64,
    ) -> Self {
        let source = TokenBucket::new(per_source_per_sec, per_source_per_sec.max(1), now);
        Self {
            global: TokenBucket::new(global_per_sec, global_per_sec.max(1), now),
            sources: vec![source; PER_SOURCE_SLOTS].into_boxed_slice(),
            hash_key,
        }
    }

    /// Spends one handshake for `ip`. The per-source bucket is checked
    /// first; only if it has a token is the global bucket consulted, so a
    /// flooding source can take at most its own rate out of the global
    /// budget. If the global bucket refuses, the source's token is **not**
    /// consumed (a well-behaved source is not penalized for others' load).
    pub(crate) fn try_spend(&mut self, ip: IpAddr, now: Instant) -> Result<(), BudgetError> {
        let slot = self.slot(ip);
        let Some(src) = self.sources.get_mut(slot) else {
            return Err(BudgetError::PerSource); // unreachable: slot is masked
        };
        src.refill(now);
        if !src.has_token() {
            return Err(BudgetError::PerSource);
        }
        if !self.global.try_take(now) {
            return Err(BudgetError::Global);
        }
        src.take_refilled();
        Ok(())
    }

    /// As [`HandshakeBudget::try_spend`], for a registration that takes the queue place of
    /// another (which already paid the global budget): only `ip`'s own bucket is charged.
    pub(crate) fn try_spend_replacing(
        &mut self,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(), BudgetError> {
        let slot = self.slot(ip);
        let taken = self
            .sources
            .get_mut(slot)
            .is_some_and(|src| src.try_take(now));
        if taken {
            Ok(())
        } else {
            Err(BudgetError::PerSource)
        }
    }

    /// Index of `ip`'s per-source bucket.
    fn slot(&self, ip: IpAddr) -> usize {
        let mut h = DefaultHasher::new();
        h.write_u64(self.hash_key);
        match source_key(ip) {
            SourceKey::V4(b) => {
                h.write_u8(4);
                h.write(&b);
            }
            SourceKey::V6Prefix(b) => {
                h.write_u8(6);
                h.write(&b);
            }
        }
        h.write_u64(self.hash_key.rotate_left(32));
        // Masked to < PER_SOURCE_SLOTS, so the cast is lossless.
        (h.finish() & (PER_SOURCE_SLOTS as u64 - 1)) as usize
    }
}

const _: () = assert!(PER_SOURCE_SLOTS.is_power_of_two());

/// What counts as one source: an IPv4 address, or an IPv6 /64 (one host's share of a LAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

/// The source `ip` belongs to.
pub(crate) fn source_key(ip: IpAddr) -> SourceKey {
    match ip {
        IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SourceKey::V4(v4.octets()),
            None => {
                let o = v6.octets();
                SourceKey::V6Prefix([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn bucket_starts_full_and_drains() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!(b.available(t0), 5);
        for _ in 0..5 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0));
        assert_eq!(b.rate_per_sec(), 10);
        assert_eq!(b.burst(), 5);
    }

    #[test]
    fn bucket_refills_exactly() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 3, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0));
        }
        // 1/3 s per token: 333 ms is not enough, 334 ms is.
        assert!(!b.try_take(t0 + ms(333)));
        assert!(b.try_take(t0 + ms(334)));
        assert!(!b.try_take(t0 + ms(334)));
        // Many tiny polls lose nothing to rounding.
        let mut t = t0 + ms(334);
        let mut got = 0;
        for _ in 0..1000 {
            t += Duration::from_micros(1000);
            if b.try_take(t) {
                got += 1;
            }
        }
        // 1 s more at 3/s (plus 0.002 tokens of credit left over).
        assert_eq!(got, 3);
    }

    #[test]
    fn bucket_caps_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 2, t0);
        assert!(b.try_take(t0));
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 2);
        let far = t0 + Duration::from_secs(100 * 365 * 86400);
        assert_eq!(b.available(far), 2);
    }

    #[test]
    fn bucket_time_backwards() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1, 1, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - Duration::from_secs(5)));
        // Going back did not reset `last`: still needs 1 s after t0.
        assert!(!b.try_take(t0 + ms(999)));
        assert!(b.try_take(t0 + ms(1000)));
    }

    #[test]
    fn bucket_degenerate_parameters() {
        let t0 = Instant::now();
        let mut never = TokenBucket::new(1000, 0, t0);
        assert!(!never.try_take(t0));
        assert!(!never.try_take(t0 + Duration::from_secs(10)));

        let mut once = TokenBucket::new(0, 1, t0);
        assert!(once.try_take(t0));
        assert!(!once.try_take(t0 + Duration::from_secs(1_000_000)));

        let mut max = TokenBucket::new(u32::MAX, u32::MAX, t0);
        assert_eq!(max.available(t0), u32::MAX);
        assert!(max.try_take(t0));
        assert_eq!(max.available(t0 + Duration::from_secs(1_000_000)), u32::MAX);
    }

    #[test]
    fn burst_is_one_second_at_least_one() {
        let t0 = Instant::now();
        let b = HandshakeBudget::new(100, 5, t0, 1);
        assert_eq!(b.global.burst(), 100);
        assert_eq!(b.sources[0].burst(), 5);
        let b = HandshakeBudget::new(0, 0, t0, 1);
        assert_eq!(b.global.burst(), 1);
        assert_eq!(b.sources[0].burst(), 1);
    }

    #[test]
    fn flooding_source_cannot_drain_global() {
        let t0 = Instant::now();
        let mut b = HandshakeBudget::new(10, 3, t0, 42);
        let attacker = v4(203, 0, 113, 7);
        let mut ok = 0;
        for _ in 0..10_000 {
            match b.try_spend(attacker, t0) {
                Ok(()) => ok += 1,
                Err(e) => assert_eq!(e, BudgetError::PerSource),
            }
        }
        assert_eq!(ok, 3);
        assert_eq!(b.global.available(t0), 7);
        // Another source (in another slot) still gets through.
        let other = (1..=255u8)
            .map(|i| v4(198, 51, 100, i))
            .find(|ip| b.slot(*ip) != b.slot(attacker))
            .expect("some address in another slot");
        assert_eq!(b.try_spend(other, t0), Ok(()));
    }

    #[test]
    fn global_exhaustion_and_no_charge_on_global_refusal() {
        let t0 = Instant::now();
        let mut b = HandshakeBudget::new(4, 2, t0, 7);
        let mut slots = HashSet::new();
        let ips: Vec<IpAddr> = (0..=255u8)
            .map(|i| v4(10, 0, 0, i))
            .filter(|ip| slots.insert(b.slot(*ip)))
            .take(10)
            .collect();
        assert_eq!(ips.len(), 10);
        let results: Vec<_> = ips.iter().map(|ip| b.try_spend(*ip, t0)).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
        assert!(results[4..].iter().all(|r| *r == Err(BudgetError::Global)));
        // Refused sources kept their own tokens.
        for ip in &ips[4..] {
            let slot = b.slot(*ip);
            assert_eq!(b.sources[slot].available(t0), 2);
        }
        // Global refills at 4/s: 250 ms buys one more handshake.
        assert_eq!(b.try_spend(ips[5], t0 + ms(249)), Err(BudgetError::Global));
        assert_eq!(b.try_spend(ips[5], t0 + ms(250)), Ok(()));
    }

    #[test]
    fn per_source_refills() {
        let t0 = Instant::now();
        let mut b = HandshakeBudget::new(1000, 2, t0, 9);
        let ip = v4(192, 0, 2, 1);
        assert_eq!(b.try_spend(ip, t0), Ok(()));
        assert_eq!(b.try_spend(ip, t0), Ok(()));
        assert_eq!(b.try_spend(ip, t0), Err(BudgetError::PerSource));
        assert_eq!(b.try_spend(ip, t0 + ms(499)), Err(BudgetError::PerSource));
        assert_eq!(b.try_spend(ip, t0 + ms(500)), Ok(()));
    }

    #[test]
    fn source_normalization() {
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("addr");
        assert_eq!(source_key(mapped), source_key(v4(192, 0, 2, 1)));
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("addr");
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().expect("addr");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("addr");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        // A v4 address and a v6 prefix with the same leading bytes differ.
        let v6 = IpAddr::V6(Ipv6Addr::new(0xc000, 0x0201, 0, 0, 0, 0, 0, 1));
        let budget = HandshakeBudget::new(1, 1, Instant::now(), 3);
        assert_eq!(budget.slot(a), budget.slot(b));
        assert_eq!(budget.slot(mapped), budget.slot(v4(192, 0, 2, 1)));
        assert_ne!(source_key(v6), source_key(v4(192, 0, 2, 1)));
    }

    #[test]
    fn slot_mapping_depends_on_key_and_spreads() {
        let t0 = Instant::now();
        let a = HandshakeBudget::new(1, 1, t0, 1);
        let b = HandshakeBudget::new(1, 1, t0, 2);
        let ips: Vec<IpAddr> = (0..=255u8).map(|i| v4(10, 1, 2, i)).collect();
        let sa: Vec<usize> = ips.iter().map(|ip| a.slot(*ip)).collect();
        let sb: Vec<usize> = ips.iter().map(|ip| b.slot(*ip)).collect();
        assert_ne!(sa, sb);
        // Deterministic per key.
        assert_eq!(sa, ips.iter().map(|ip| a.slot(*ip)).collect::<Vec<_>>());
        // 256 addresses over 1024 slots: expect ~226 distinct; demand a spread.
        let distinct: HashSet<_> = sa.iter().collect();
        assert!(
            distinct.len() > 180,
            "only {} distinct slots",
            distinct.len()
        );
    }

    #[test]
    fn colliding_sources_share_a_bucket() {
        let t0 = Instant::now();
        let mut b = HandshakeBudget::new(1000, 1, t0, 5);
        let first = v4(172, 16, 0, 0);
        let target = b.slot(first);
        let twin = (1..=u16::MAX)
            .map(|i| v4(172, 16, (i >> 8) as u8, i as u8))
            .find(|ip| b.slot(*ip) == target)
            .expect("a collision among 65535 addresses");
        assert_eq!(b.try_spend(first, t0), Ok(()));
        assert_eq!(b.try_spend(twin, t0), Err(BudgetError::PerSource));
    }

    #[test]
    fn display() {
        assert_ne!(
            BudgetError::Global.to_string(),
            BudgetError::PerSource.to_string()
        );
    }

    /// Most tokens a bucket may grant over `elapsed` since it was full.
    fn bound(rate: u32, burst: u32, elapsed: Duration) -> u128 {
        u128::from(burst) + elapsed.as_nanos() * u128::from(rate) / 1_000_000_000
    }

    proptest! {
        /// Over any schedule, a bucket grants at most burst + rate * elapsed,
        /// and after waiting 1/rate with an empty bucket it grants again.
        #[test]
        fn prop_bucket_bound_and_liveness(
            rate in 1u32..1000,
            burst in 1u32..50,
            steps in proptest::collection::vec((0u64..50_000_000, 0u8..4), 1..300),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let mut now = t0;
            let mut granted = 0u128;
            for (dt_ns, takes) in steps {
                now += Duration::from_nanos(dt_ns);
                for _ in 0..takes {
                    if b.try_take(now) {
                        granted += 1;
                    }
                }
                prop_assert!(granted <= bound(rate, burst, now - t0));
            }
            while b.try_take(now) {
                granted += 1;
            }
            prop_assert!(granted <= bound(rate, burst, now - t0));
            let wait = Duration::from_nanos(1_000_000_000u64.div_ceil(u64::from(rate)));
            prop_assert!(b.try_take(now + wait));
        }

        /// Budget: global grants bounded by the global bucket, every slot's
        /// grants bounded by its per-source bucket.
        #[test]
        fn prop_budget_bounds(
            global in 0u32..50,
            per_source in 0u32..10,
            key in any::<u64>(),
            steps in proptest::collection::vec((0u64..20, 0u8..8), 1..400),
        ) {
            let t0 = Instant::now();
            let mut b = HandshakeBudget::new(global, per_source, t0, key);
            let mut now = t0;
            let mut total = 0u128;
            let mut per_slot = vec![0u128; PER_SOURCE_SLOTS];
            for (dt_ms, src) in steps {
                now += ms(dt_ms);
                let ip = v4(10, 0, 0, src);
                let slot = b.slot(ip);
                if b.try_spend(ip, now).is_ok() {
                    total += 1;
                    per_slot[slot] += 1;
                }
                prop_assert!(total <= bound(global, global.max(1), now - t0));
                prop_assert!(per_slot[slot] <= bound(per_source, per_source.max(1), now - t0));
            }
        }
    }
}
