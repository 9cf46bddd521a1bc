//! Where and when to connect: the server list (configured, then discovered) with the one in
//! use, and the reconnect back-off with the client's seeded jitter.

use std::net::SocketAddr;
use std::time::Duration;

/// Most servers (configured plus discovered) the client keeps.
pub const MAX_SERVERS: usize = 64;

/// What merging a server's `connect_urls` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Merged {
    /// Servers added to the list.
    pub(super) added: usize,
    /// Entries with an unspecified address or port 0.
    pub(super) skipped: usize,
    /// New servers left out because the list was full.
    pub(super) over_cap: usize,
}

/// The servers the client may try, in order, and the one in use (or tried last).
#[derive(Debug)]
pub(super) struct ServerList {
    servers: Vec<SocketAddr>,
    /// Index into `servers` of the server in use, or tried last.
    current: usize,
}

impl ServerList {
    /// The configured servers (validated: non-empty, at most [`MAX_SERVERS`], no duplicate).
    pub(super) fn new(configured: &[SocketAddr]) -> Self {
        ServerList {
            servers: configured.to_vec(),
            current: 0,
        }
    }

    /// The server for the next attempt: the current one, or the first after the last.
    pub(super) fn pick(&mut self) -> Option<SocketAddr> {
        if self.current >= self.servers.len() {
            self.current = 0;
        }
        self.servers.get(self.current).copied()
    }

    /// The server in use, or tried last.
    pub(super) fn current(&self) -> Option<SocketAddr> {
        self.servers.get(self.current).copied()
    }

    /// The next attempt goes to the next server.
    pub(super) fn advance(&mut self) {
        if !self.servers.is_empty() {
            self.current = (self.current + 1) % self.servers.len();
        }
    }

    /// Add the servers of `urls` that are new and usable, up to [`MAX_SERVERS`].
    pub(super) fn merge(&mut self, urls: &[SocketAddr]) -> Merged {
        let mut m = Merged::default();
        for &a in urls {
            if a.ip().is_unspecified() || a.port() == 0 {
                m.skipped += 1;
                continue;
            }
            if self.servers.contains(&a) {
                continue;
            }
            if self.servers.len() >= MAX_SERVERS {
                m.over_cap += 1;
                continue;
            }
            self.servers.push(a);
            m.added += 1;
        }
        m
    }

    /// Every server, configured first.
    pub(super) fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.servers.iter().copied()
    }

    /// How many.
    pub(super) fn len(&self) -> usize {
        self.servers.len()
    }
}

/// Consecutive failed attempts and the delay they earn before the next one. Its seeded
/// generator is the client's one source of jitter (the lame-duck delay draws from it too).
#[derive(Debug)]
pub(super) struct Backoff {
    base: Duration,
    max: Duration,
    /// Consecutive failed attempts (a link shorter than `STABLE_LINK` counts as one).
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// Delays from `base` doubling up to `max` (validated: `0 < base <= max <= a day`).
    pub(super) fn new(base: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            base,
            max,
            failures: 0,
            rng: seed,
        }
    }

    /// A link that was up ended well: no delay is owed.
    pub(super) fn reset(&mut self) {
        self.failures = 0;
    }

    /// One more failure: the delay before the next attempt. "Equal jitter": uniform in
    /// `[cap/2, cap]` with `cap = min(max, base * 2^(failures-1))`.
    pub(super) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(30);
        let cap = self.base.saturating_mul(1u32 << shift).min(self.max);
        let half = cap / 2;
        half + self.jitter(cap - half)
    }

    /// A uniform duration in `[0, max]`.
    pub(super) fn jitter(&mut self, max: Duration) -> Duration {
        let n = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        match n.checked_add(1) {
            Some(m) => Duration::from_nanos(next_u64(&mut self.rng) % m),
            None => Duration::from_nanos(next_u64(&mut self.rng)),
        }
    }
}

/// splitmix64.
fn next_u64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn picks_in_order_and_wraps() {
        let mut s = ServerList::new(&[addr(1), addr(2)]);
        assert_eq!(s.pick(), Some(addr(1)));
        assert_eq!(s.current(), Some(addr(1)));
        s.advance();
        assert_eq!(s.pick(), Some(addr(2)));
        s.advance();
        assert_eq!(s.pick(), Some(addr(1)));
        assert_eq!(ServerList::new(&[]).pick(), None);
    }

    #[test]
    fn merge_skips_unusable_known_and_over_cap() {
        let mut s = ServerList::new(&[addr(1)]);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 4222));
        let m = s.merge(&[addr(1), addr(2), unspecified, addr(0), addr(2)]);
        assert_eq!(
            m,
            Merged {
                added: 1,
                skipped: 2,
                over_cap: 0
            }
        );
        assert_eq!(s.iter().collect::<Vec<_>>(), [addr(1), addr(2)]);
        let many: Vec<_> = (10..10 + MAX_SERVERS as u16).map(addr).collect();
        let m = s.merge(&many);
        assert_eq!(m.added, MAX_SERVERS - 2);
        assert_eq!(m.over_cap, 2);
        assert_eq!(s.len(), MAX_SERVERS);
    }

    #[test]
    fn merged_servers_are_tried_after_the_configured_ones() {
        let mut s = ServerList::new(&[addr(1)]);
        s.merge(&[addr(2)]);
        s.advance();
        assert_eq!(s.pick(), Some(addr(2)));
    }

    #[test]
    fn backoff_doubles_within_equal_jitter_up_to_the_ceiling() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let mut b = Backoff::new(base, max, 9);
        let caps = [100, 200, 400, 800, 1000, 1000, 1000];
        for cap in caps {
            let cap = Duration::from_millis(cap);
            let d = b.failed();
            assert!(
                d >= cap / 2 && d <= cap,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.failed() <= base);
        // Thousands of failures neither overflow nor pass the ceiling.
        for _ in 0..5000 {
            assert!(b.failed() <= max);
        }
    }

    #[test]
    fn jitter_is_seeded_and_bounded() {
        let draw = |seed| {
            let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(1), seed);
            (0..8)
                .map(|_| b.jitter(Duration::from_secs(2)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        assert!(draw(3).iter().all(|d| *d <= Duration::from_secs(2)));
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(1), 4);
        assert_eq!(b.jitter(Duration::ZERO), Duration::ZERO);
        let _ = b.jitter(Duration::MAX);
    }
}
