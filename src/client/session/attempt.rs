//! When the handshake is tried again, and what a REJECT may do to it: the retransmission
//! schedule (0.5 s doubling to 8 s, jittered), the REJECT(5) back-off (1, 2, 4, 8 s), the
//! restart rate limit for cookie REJECTs and the count that makes other REJECTs believed.

use std::time::{Duration, Instant};

use crate::crypto::rng::Rng;
use crate::wire::RejectCode;

/// First handshake retransmission; doubled (with jitter) on each retry, up to [`MAX_RETRY`].
pub const RETRY: Duration = Duration::from_millis(500);
/// Longest wait between two handshake attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(8);
/// REJECTs that would end the handshake (codes 1, 4, 6, 7) are believed after this many:
/// one unauthenticated datagram must not make a client give up.
pub const FATAL_REJECTS: u32 = 3;
/// The first REJECT(5) back-off; each next one doubles, up to [`MAX_RETRY`].
pub const BACKOFF: Duration = Duration::from_secs(1);
/// A restart from HELLO on a cookie REJECT (2, 3) at most this often.
const MIN_RESTART: Duration = Duration::from_millis(250);

/// What a REJECT asks of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RejectStep {
    /// Nothing: a restart came too soon, or a back-off is running.
    Ignored,
    /// Send a HELLO now (cookie REJECTs 2, 3).
    Restart,
    /// Back to HELLO, sent when [`Attempt::due`]: after the back-off (5) or on the
    /// retransmission schedule (the others, until believed).
    Wait,
    /// [`FATAL_REJECTS`] of them: the handshake ends.
    Fatal,
}

/// The handshake's timers and REJECT counts, from the first HELLO to WELCOME.
#[derive(Debug)]
pub(super) struct Attempt {
    /// The next handshake retransmission.
    next_retry: Instant,
    /// The current retransmission delay.
    retry: Duration,
    /// A REJECT(5) back-off runs until then.
    backoff_until: Option<Instant>,
    /// The next REJECT(5) back-off: 1, 2, 4, 8, 8 s ... within one registration.
    backoff: Duration,
    last_restart: Option<Instant>,
    fatal_rejects: u32,
}

impl Attempt {
    /// Nothing sent yet: a HELLO is due at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Attempt {
            next_retry: now,
            retry: RETRY,
            backoff_until: None,
            backoff: BACKOFF,
            last_restart: None,
            fatal_rejects: 0,
        }
    }

    /// A HELLO went out: the next after the current delay ±25 % (so that many clients do
    /// not retry in step), and the delay doubles up to [`MAX_RETRY`].
    pub(super) fn hello_sent(&mut self, now: Instant, rng: &mut Rng) {
        // Integers only: the binary carries no floating point.
        let per_mille = 750 + (rng.next_u64() % 500) as u32;
        self.next_retry = now + self.retry * per_mille / 1000;
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    /// The retransmission schedule starts again from [`RETRY`].
    pub(super) fn restart_schedule(&mut self) {
        self.retry = RETRY;
    }

    /// When the next HELLO is due.
    pub(super) fn next_retry(&self) -> Instant {
        self.next_retry
    }

    /// Is the next HELLO due?
    pub(super) fn due(&self, now: Instant) -> bool {
        now >= self.next_retry
    }

    /// Is a REJECT(5) back-off running? Then no REJECT or late COOKIE starts an attempt.
    pub(super) fn backing_off(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|t| now < t)
    }

    /// REJECT is unauthenticated (protocol.md §3): it may restart the handshake, never more
    /// often than the schedule allows, and ends it only after [`FATAL_REJECTS`].
    pub(super) fn on_reject(&mut self, now: Instant, code: u16) -> RejectStep {
        match RejectCode::from_u16(code) {
            Some(RejectCode::BadCookie | RejectCode::CookieReused) => {
                let recent = self.last_restart.is_some_and(|t| now < t + MIN_RESTART);
                if recent || self.backing_off(now) {
                    return RejectStep::Ignored;
                }
                self.last_restart = Some(now);
                RejectStep::Restart
            }
            Some(RejectCode::RelayFull) => {
                if self.backing_off(now) {
                    return RejectStep::Ignored; // a REJECT does not restart a back-off
                }
                // Its own steps: the HELLO schedule resumes after it.
                self.next_retry = now + self.backoff;
                self.backoff_until = Some(self.next_retry);
                self.backoff = (self.backoff * 2).min(MAX_RETRY);
                RejectStep::Wait
            }
            _ => {
                self.fatal_rejects += 1;
                if self.fatal_rejects >= FATAL_REJECTS {
                    RejectStep::Fatal
                } else {
                    RejectStep::Wait // keep trying, on the retry schedule
                }
            }
        }
    }

    /// WELCOME: the registration stands; every count and delay starts afresh.
    pub(super) fn registered(&mut self) {
        self.retry = RETRY;
        self.backoff_until = None;
        self.backoff = BACKOFF;
        self.fatal_rejects = 0;
    }

    /// The session was lost: a new registration, with fresh delays.
    pub(super) fn lost(&mut self) {
        self.retry = RETRY;
        self.backoff = BACKOFF;
        self.backoff_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn hello_retries_double_to_8_s_with_a_quarter_jitter() {
        let t0 = Instant::now();
        let mut rng = Rng::from_seed([1; 32]);
        let mut a = Attempt::new(t0);
        assert!(a.due(t0));
        let mut now = t0;
        for nominal in [500, 1000, 2000, 4000, 8000, 8000, 8000] {
            a.hello_sent(now, &mut rng);
            let wait = a.next_retry() - now;
            assert!(
                wait >= ms(nominal * 3 / 4) && wait < ms(nominal * 5 / 4),
                "{wait:?} for {nominal} ms"
            );
            assert!(!a.due(now));
            now = a.next_retry();
            assert!(a.due(now));
        }
        a.restart_schedule();
        a.hello_sent(now, &mut rng);
        assert!(a.next_retry() - now < ms(625));
    }

    #[test]
    fn relay_full_backs_off_1_2_4_8_8_and_is_not_restarted_by_rejects() {
        let t0 = Instant::now();
        let mut a = Attempt::new(t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            assert_eq!(a.on_reject(now, 5), RejectStep::Wait);
            let until = a.next_retry();
            waits.push((until - now).as_secs());
            assert!(a.backing_off(now));
            for code in [5, 2, 3] {
                assert_eq!(a.on_reject(now + ms(100), code), RejectStep::Ignored);
            }
            assert_eq!(a.next_retry(), until);
            now = until;
            assert!(!a.backing_off(now));
        }
        assert_eq!(waits, [1, 2, 4, 8, 8]);
        a.registered();
        assert_eq!(a.on_reject(now, 5), RejectStep::Wait);
        assert_eq!(a.next_retry() - now, BACKOFF, "WELCOME resets the back-off");
        a.lost();
        assert!(!a.backing_off(now), "a lost session starts afresh");
    }

    #[test]
    fn cookie_rejects_restart_at_most_every_250_ms() {
        let t0 = Instant::now();
        let mut a = Attempt::new(t0);
        assert_eq!(a.on_reject(t0, 2), RejectStep::Restart);
        assert_eq!(a.on_reject(t0 + ms(249), 3), RejectStep::Ignored);
        assert_eq!(a.on_reject(t0 + ms(250), 3), RejectStep::Restart);
    }

    #[test]
    fn other_rejects_are_believed_on_the_third() {
        let t0 = Instant::now();
        let mut a = Attempt::new(t0);
        assert_eq!(a.on_reject(t0, 1), RejectStep::Wait);
        assert_eq!(a.on_reject(t0, 4), RejectStep::Wait);
        a.registered();
        assert_eq!(
            a.on_reject(t0, 7),
            RejectStep::Wait,
            "WELCOME resets the count"
        );
        assert_eq!(a.on_reject(t0, 999), RejectStep::Wait);
        assert_eq!(a.on_reject(t0, 6), RejectStep::Fatal);
    }
}
