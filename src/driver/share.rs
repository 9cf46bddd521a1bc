//! The share of the loop's wall time that RSA may take (issue 12, finding 5).
//!
//! A REGISTER's RSA-OAEP decryption costs milliseconds (2.3 ms for a 2048-bit key, optimized)
//! while relaying a message costs microseconds. A count budget alone (`handshakes_per_sec`)
//! lets attackers with many source addresses and valid cookies spend ~46 % of the thread on
//! RSA. So the driver measures each decryption and keeps a credit of wall time that grows at
//! `percent` of the time passing and is capped at [`BURST`]: a decryption runs only while the
//! credit is positive, and only one per loop turn, after the group socket has been drained.

use std::time::{Duration, Instant};

/// The most credit that builds up while idle: a few decryptions back to back after a quiet
/// spell, never a long run.
pub(crate) const BURST: Duration = Duration::from_millis(10);

/// Wall-time credit for RSA.
#[derive(Debug)]
pub(crate) struct RsaShare {
    percent: u32,
    /// Nanoseconds; negative after a decryption longer than the credit it had.
    credit: i64,
    last: Instant,
    /// Every decryption's measured time, summed.
    spent: Duration,
}

impl RsaShare {
    /// `percent` of wall time (1..=100), starting with a full [`BURST`].
    pub(crate) fn new(percent: u8, now: Instant) -> Self {
        RsaShare {
            percent: u32::from(percent.clamp(1, 100)),
            credit: nanos(BURST),
            last: now,
            spent: Duration::ZERO,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let earned = nanos(dt).saturating_mul(i64::from(self.percent)) / 100;
        self.credit = self.credit.saturating_add(earned).min(nanos(BURST));
    }

    /// May a decryption start at `now`?
    pub(crate) fn may_run(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.credit > 0
    }

    /// A decryption took `d`.
    pub(crate) fn spend(&mut self, d: Duration) {
        self.credit = self.credit.saturating_sub(nanos(d));
        self.spent += d;
    }

    /// When the credit is positive again (now, if it is).
    pub(crate) fn ready_at(&self) -> Instant {
        if self.credit > 0 {
            return self.last;
        }
        // credit + (t - last) * percent / 100 > 0
        let wait = (-self.credit + 1).saturating_mul(100) / i64::from(self.percent);
        self.last + Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
    }

    /// Wall time spent decrypting so far.
    pub(crate) fn spent(&self) -> Duration {
        self.spent
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_full_burst_then_the_share_of_the_time_that_passes() {
        let t0 = Instant::now();
        let mut s = RsaShare::new(25, t0);
        // 10 ms of credit: four 2.5 ms decryptions at once, then none.
        for _ in 0..4 {
            assert!(s.may_run(t0));
            s.spend(MS * 5 / 2);
        }
        assert!(!s.may_run(t0));
        assert_eq!(s.ready_at(), t0 + Duration::from_nanos(4));
        // Then 2.5 ms of RSA per 10 ms of wall time: 25 %.
        let mut t = t0;
        let mut ran = 0;
        for _ in 0..1000 {
            t += MS;
            if s.may_run(t) {
                s.spend(MS * 5 / 2);
                ran += 1;
            }
        }
        assert_eq!(ran, 100, "25 % of 1 s in 2.5 ms decryptions");
        assert_eq!(s.spent(), MS * 5 / 2 * (4 + 100));
    }

    #[test]
    fn an_overrun_is_paid_back_before_the_next_one() {
        let t0 = Instant::now();
        let mut s = RsaShare::new(50, t0);
        assert!(s.may_run(t0));
        s.spend(MS * 30); // a decryption preempted for 30 ms: 20 ms in debt
        assert!(!s.may_run(t0 + MS * 39));
        assert!(s.ready_at() > t0 + MS * 39 && s.ready_at() <= t0 + MS * 41);
        assert!(s.may_run(t0 + MS * 41));
    }

    #[test]
    fn idle_time_does_not_build_more_than_a_burst() {
        let t0 = Instant::now();
        let mut s = RsaShare::new(100, t0);
        assert!(s.may_run(t0 + Duration::from_secs(3600)));
        s.spend(BURST);
        assert!(!s.may_run(t0 + Duration::from_secs(3600)));
        // Time never runs backwards for the credit.
        assert!(!s.may_run(t0));
    }
}
