//! Is the session still there? Keep-alives when nothing was sent or heard for an interval,
//! the relay's timeout, and the probe that checks a NO_SESSION before it is believed.

use std::time::{Duration, Instant};

use super::super::LostReason;

/// How long a NO_SESSION's claim is checked (a keep-alive probe) before it is believed.
pub const PROBE: Duration = Duration::from_secs(1);

/// What is due on a registered session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Nothing yet.
    Nothing,
    /// Send a KEEPALIVE.
    Keepalive,
    /// The session is gone.
    Lost(LostReason),
}

/// The times that say whether the relay still holds our session.
#[derive(Debug)]
pub(super) struct Liveness {
    keepalive: Duration,
    timeout: Duration,
    last_sent: Instant,
    /// The last authenticated channel token from the relay.
    last_heard: Instant,
    /// The last KEEPALIVE sent because nothing was heard (a client that only sends still
    /// gets an answer in its channel now and then).
    last_asked: Instant,
    /// A NO_SESSION is being checked until then.
    probe: Option<Instant>,
    /// When the last probe started: one a second at most, whoever sends NO_SESSIONs.
    last_probe: Option<Instant>,
}

impl Liveness {
    /// Defaults (10 s keep-alive, 30 s timeout) until WELCOME says otherwise.
    pub(super) fn new(now: Instant) -> Self {
        Liveness {
            keepalive: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            last_sent: now,
            last_heard: now,
            last_asked: now,
            probe: None,
            last_probe: None,
        }
    }

    /// WELCOME: the relay's keep-alive interval and timeout (floors: 100 ms, 200 ms).
    pub(super) fn welcomed(&mut self, now: Instant, keepalive_ms: u32, timeout_ms: u32) {
        self.keepalive = Duration::from_millis(u64::from(keepalive_ms.max(100)));
        self.timeout = Duration::from_millis(u64::from(timeout_ms.max(200)));
        self.last_heard = now;
    }

    /// Something went to the relay.
    pub(super) fn sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// An authenticated, fresh token came in our channel: any doubt is cleared.
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.probe = None;
    }

    /// NO_SESSION: start a probe (the caller sends a KEEPALIVE), unless one runs or one
    /// started within [`PROBE`].
    pub(super) fn start_probe(&mut self, now: Instant) -> bool {
        let recent = self.last_probe.is_some_and(|t| now < t + PROBE);
        if self.probe.is_some() || recent {
            return false;
        }
        self.last_probe = Some(now);
        self.probe = Some(now + PROBE.min(self.timeout / 2));
        true
    }

    /// A probe is running.
    #[cfg(test)]
    pub(super) fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// The session is over: no probe runs.
    pub(super) fn end_probe(&mut self) {
        self.probe = None;
    }

    /// A KEEPALIVE is due when nothing was sent for a keep-alive interval, or when nothing
    /// was heard in our channel (and none was asked for) for one: a client that only sends,
    /// or only reads the distribution group, still hears from the relay (protocol.md §7.1).
    fn keepalive_due(&self) -> Instant {
        let quiet = self.last_heard.max(self.last_asked);
        self.last_sent.min(quiet) + self.keepalive
    }

    /// When [`check`](Self::check) next has work.
    pub(super) fn next(&self) -> Instant {
        let t = self.keepalive_due().min(self.last_heard + self.timeout);
        self.probe.map_or(t, |p| t.min(p))
    }

    /// What is due at `now`: a probe unanswered or the relay silent for its timeout end
    /// the session; else perhaps a KEEPALIVE (noted as asked for).
    pub(super) fn check(&mut self, now: Instant) -> Due {
        if self.probe.is_some_and(|p| now >= p) {
            Due::Lost(LostReason::NoSession)
        } else if now >= self.last_heard + self.timeout {
            Due::Lost(LostReason::Silence)
        } else if now >= self.keepalive_due() {
            self.last_asked = now;
            Due::Keepalive
        } else {
            Due::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn keepalive_after_an_interval_without_sending() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        l.welcomed(t0, 2000, 6000);
        assert_eq!(l.next(), t0 + secs(2));
        assert_eq!(l.check(t0 + secs(1)), Due::Nothing);
        l.sent(t0 + secs(1));
        l.heard(t0 + secs(1));
        assert_eq!(l.check(t0 + secs(2)), Due::Nothing, "sent and heard at 1 s");
        assert_eq!(l.check(t0 + secs(3)), Due::Keepalive);
    }

    #[test]
    fn a_client_that_only_sends_still_asks_to_hear_from_the_relay() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        l.welcomed(t0, 2000, 6000);
        for s in 1..=4 {
            l.sent(t0 + secs(s));
        }
        assert_eq!(
            l.check(t0 + secs(2)),
            Due::Keepalive,
            "nothing heard for 2 s"
        );
        assert_eq!(l.check(t0 + secs(3)), Due::Nothing, "asked at 2 s");
        assert_eq!(l.check(t0 + secs(4)), Due::Keepalive);
    }

    #[test]
    fn silence_for_the_timeout_is_a_lost_session() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        l.welcomed(t0, 2000, 6000);
        assert_eq!(l.check(t0 + secs(6)), Due::Lost(LostReason::Silence));
        l.heard(t0 + secs(6));
        assert_ne!(l.check(t0 + secs(7)), Due::Lost(LostReason::Silence));
    }

    #[test]
    fn a_probe_is_rate_limited_and_cleared_by_an_answer() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        l.welcomed(t0, 10_000, 30_000);
        assert!(l.start_probe(t0));
        assert!(l.probing());
        assert!(!l.start_probe(t0), "one at a time");
        assert_eq!(l.next(), t0 + PROBE);
        l.heard(t0 + Duration::from_millis(500));
        assert!(!l.probing());
        assert!(
            !l.start_probe(t0 + Duration::from_millis(900)),
            "one a second"
        );
        assert!(l.start_probe(t0 + PROBE));
        assert_eq!(l.check(t0 + PROBE * 2), Due::Lost(LostReason::NoSession));
        l.end_probe();
        assert!(!l.probing());
    }

    #[test]
    fn a_short_timeout_bounds_the_probe_and_floors_apply() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        l.welcomed(t0, 1, 1);
        assert!(l.start_probe(t0));
        assert_eq!(
            l.next(),
            t0 + Duration::from_millis(100),
            "half the 200 ms floor"
        );
    }
}
