//! Fixed-bucket histograms the core fills as it works: integer counts, no allocation, no
//! clock (the host's `now` is all it sees).
//!
//! - [`HANDSHAKE_DURATION`]: from a REGISTER's arrival to its WELCOME being queued (the time
//!   it waited for the RSA budget and queue, plus its decryption when the host stamps the end,
//!   see [`Histograms::stamp_registration`]);
//! - [`MESSAGE_SIZE`]: the size of each message accepted for relaying (its plaintext, after
//!   reassembly).
//!
//! `metrics` prints them in the Prometheus histogram form (`_bucket{le=...}` cumulative,
//! `_sum`, `_count`), the monitor's `/stats` as JSON.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What a histogram's integer values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Durations, recorded in microseconds and exposed in seconds (`_seconds`).
    Seconds,
    /// Sizes in bytes (`_bytes`).
    Bytes,
}

/// A histogram's name, help text and bucket bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSpec {
    /// snake_case name with its unit (`metrics` prints it as `mcrelay_<name>`).
    pub name: &'static str,
    /// One line for `# HELP`.
    pub help: &'static str,
    /// The unit of the values.
    pub unit: Unit,
    /// Upper bounds (inclusive, ascending) of the finite buckets, in microseconds for
    /// [`Unit::Seconds`], bytes for [`Unit::Bytes`]; `+Inf` follows.
    pub bounds: &'static [u64],
}

/// Most finite buckets a histogram may have.
pub const MAX_BUCKETS: usize = 16;

/// REGISTER arrival to WELCOME, 0.5 ms to 1 s.
pub const HANDSHAKE_DURATION: HistogramSpec = HistogramSpec {
    name: "handshake_duration_seconds",
    help: "Time from a REGISTER's arrival to its WELCOME: RSA queue wait plus decryption.",
    unit: Unit::Seconds,
    bounds: &[
        500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    ],
};

/// Relayed message sizes, 64 B to 64 KiB.
pub const MESSAGE_SIZE: HistogramSpec = HistogramSpec {
    name: "message_size_bytes",
    help: "Size of each message accepted for relaying (plaintext, after reassembly).",
    unit: Unit::Bytes,
    bounds: &[
        64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536,
    ],
};

/// Every histogram, in `metrics` order.
pub const HISTOGRAMS: &[&HistogramSpec] = &[&HANDSHAKE_DURATION, &MESSAGE_SIZE];

/// One histogram: a count per bucket (not cumulative), the sum of the values observed.
#[derive(Debug, Clone)]
pub struct Histogram {
    spec: &'static HistogramSpec,
    /// `counts[i]`: values in `(bounds[i-1], bounds[i]]`; the last used slot is `+Inf`.
    counts: [u64; MAX_BUCKETS + 1],
    sum: u64,
}

impl Histogram {
    /// An empty histogram with `spec`'s buckets.
    pub const fn new(spec: &'static HistogramSpec) -> Histogram {
        assert!(spec.bounds.len() <= MAX_BUCKETS);
        Histogram {
            spec,
            counts: [0; MAX_BUCKETS + 1],
            sum: 0,
        }
    }

    /// Its name, help and bounds.
    pub fn spec(&self) -> &'static HistogramSpec {
        self.spec
    }

    fn bucket(&self, v: u64) -> usize {
        self.spec.bounds.partition_point(|&b| b < v)
    }

    /// Count one value (µs for durations).
    pub(crate) fn observe(&mut self, v: u64) {
        let i = self.bucket(v);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(v);
    }

    /// Replace an observed value `old` by `new` (a later, better measurement of the same
    /// event): the count stays, the sum and the bucket follow.
    fn revise(&mut self, old: u64, new: u64) {
        let (i, j) = (self.bucket(old), self.bucket(new));
        if self.counts[i] > 0 {
            self.counts[i] -= 1;
            self.counts[j] += 1;
            self.sum = self.sum.saturating_sub(old).saturating_add(new);
        }
    }

    /// Values observed.
    pub fn count(&self) -> u64 {
        self.counts[..=self.spec.bounds.len()].iter().sum()
    }

    /// Sum of the values observed (µs for durations).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// `(bound, values ≤ bound)` for each finite bucket, cumulative as Prometheus has them.
    pub fn cumulative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut acc = 0;
        self.spec
            .bounds
            .iter()
            .zip(self.counts)
            .map(move |(&b, c)| {
                acc += c;
                (b, acc)
            })
    }

    /// Append the Prometheus text form: `# HELP`, `# TYPE histogram`, the cumulative
    /// `_bucket{le="..."}` lines with `+Inf`, `_sum` and `_count`.
    pub fn write_prometheus(&self, out: &mut String) {
        let name = self.spec.name;
        let _ = writeln!(out, "# HELP mcrelay_{name} {}", self.spec.help);
        let _ = writeln!(out, "# TYPE mcrelay_{name} histogram");
        for (b, n) in self.cumulative() {
            let _ = write!(out, "mcrelay_{name}_bucket{{le=\"");
            write_value(out, self.spec.unit, b);
            let _ = writeln!(out, "\"}} {n}");
        }
        let count = self.count();
        let _ = writeln!(out, "mcrelay_{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = write!(out, "mcrelay_{name}_sum ");
        write_value(out, self.spec.unit, self.sum);
        let _ = writeln!(out, "\nmcrelay_{name}_count {count}");
    }
}

/// A duration in whole microseconds (saturating).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Write `v` in the unit's exposed form: bytes as they are, microseconds as seconds with up
/// to six decimals and no trailing zeros (`500` → `0.0005`, `1000000` → `1`). Integers only,
/// so a bound is printed exactly.
pub fn write_value(out: &mut String, unit: Unit, v: u64) {
    match unit {
        Unit::Bytes => {
            let _ = write!(out, "{v}");
        }
        Unit::Seconds => {
            let (s, us) = (v / 1_000_000, v % 1_000_000);
            if us == 0 {
                let _ = write!(out, "{s}");
            } else {
                let frac = format!("{us:06}");
                let _ = write!(out, "{s}.{}", frac.trim_end_matches('0'));
            }
        }
    }
}

/// The core's histograms ([`RelayCore::histograms`](crate::RelayCore::histograms)).
#[derive(Debug, Clone)]
pub struct Histograms {
    /// [`HANDSHAKE_DURATION`].
    pub handshake_duration: Histogram,
    /// [`MESSAGE_SIZE`].
    pub message_size: Histogram,
    /// The registration completed last: its arrival and the value observed for it, until the
    /// host stamps its end.
    last_registration: Option<(Instant, u64)>,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            handshake_duration: Histogram::new(&HANDSHAKE_DURATION),
            message_size: Histogram::new(&MESSAGE_SIZE),
            last_registration: None,
        }
    }
}

impl Histograms {
    /// Every histogram, in [`HISTOGRAMS`] order.
    pub fn iter(&self) -> impl Iterator<Item = &Histogram> {
        [&self.handshake_duration, &self.message_size].into_iter()
    }

    /// A registration that arrived at `arrived` completed (its WELCOME is queued) in a call
    /// the host made with `now`. Observed at once as `now - arrived`: the queue wait.
    pub(crate) fn registered(&mut self, now: Instant, arrived: Instant) {
        let v = micros(now.saturating_duration_since(arrived));
        self.handshake_duration.observe(v);
        self.last_registration = Some((arrived, v));
    }

    /// The host's clock right after `process_registrations` returned: the registration that
    /// completed last in it is revised to end at `now`, so that its decryption is counted
    /// too. A host that processes one registration per call and stamps after each (the
    /// driver does) measures arrival to WELCOME; without stamps, the histogram measures the
    /// wait before the decryption. Call it before anything reads the histogram, so that no
    /// reader sees a bucket count go down.
    pub fn stamp_registration(&mut self, now: Instant) {
        if let Some((arrived, v)) = self.last_registration.take() {
            let w = micros(now.saturating_duration_since(arrived)).max(v);
            self.handshake_duration.revise(v, w);
        }
    }

    /// A message of `len` bytes was accepted for relaying.
    pub(crate) fn relayed(&mut self, len: usize) {
        self.message_size.observe(len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_bucket_whose_bound_is_not_below_them() {
        let mut h = Histogram::new(&MESSAGE_SIZE);
        for v in [0, 64, 65, 128, 65_536, 65_537, u64::MAX] {
            h.observe(v);
        }
        let cum: Vec<(u64, u64)> = h.cumulative().collect();
        assert_eq!(cum[0], (64, 2)); // 0 and 64: le is inclusive
        assert_eq!(cum[1], (128, 4)); // 65 and 128
        assert_eq!(cum[10], (65_536, 5));
        assert_eq!(h.count(), 7); // two above the last bound: +Inf only
        assert_eq!(h.sum(), u64::MAX, "the sum saturates");
    }

    #[test]
    fn bounds_are_ascending_and_fit() {
        for s in HISTOGRAMS {
            assert!(
                !s.bounds.is_empty() && s.bounds.len() <= MAX_BUCKETS,
                "{}",
                s.name
            );
            assert!(s.bounds.windows(2).all(|w| w[0] < w[1]), "{}", s.name);
            let suffix = match s.unit {
                Unit::Seconds => "_seconds",
                Unit::Bytes => "_bytes",
            };
            assert!(s.name.ends_with(suffix), "{}", s.name);
        }
        assert_eq!(HANDSHAKE_DURATION.bounds.first(), Some(&500));
        assert_eq!(HANDSHAKE_DURATION.bounds.last(), Some(&1_000_000));
        assert_eq!(MESSAGE_SIZE.bounds.first(), Some(&64));
        assert_eq!(MESSAGE_SIZE.bounds.last(), Some(&65_536));
    }

    #[test]
    fn seconds_are_printed_exactly() {
        let p = |v| {
            let mut s = String::new();
            write_value(&mut s, Unit::Seconds, v);
            s
        };
        assert_eq!(p(500), "0.0005");
        assert_eq!(p(2_500), "0.0025");
        assert_eq!(p(1_000_000), "1");
        assert_eq!(p(1_234_567), "1.234567");
        assert_eq!(p(0), "0");
        assert_eq!(p(10), "0.00001");
    }

    #[test]
    fn prometheus_text() {
        let mut h = Histogram::new(&HANDSHAKE_DURATION);
        h.observe(micros(Duration::from_micros(700)));
        h.observe(micros(Duration::from_secs(3)));
        let mut out = String::new();
        h.write_prometheus(&mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "# HELP mcrelay_handshake_duration_seconds {}",
                HANDSHAKE_DURATION.help
            )
        );
        assert_eq!(
            lines[1],
            "# TYPE mcrelay_handshake_duration_seconds histogram"
        );
        assert_eq!(
            lines[2],
            "mcrelay_handshake_duration_seconds_bucket{le=\"0.0005\"} 0"
        );
        assert_eq!(
            lines[3],
            "mcrelay_handshake_duration_seconds_bucket{le=\"0.001\"} 1"
        );
        assert_eq!(
            lines[12],
            "mcrelay_handshake_duration_seconds_bucket{le=\"1\"} 1"
        );
        assert_eq!(
            lines[13],
            "mcrelay_handshake_duration_seconds_bucket{le=\"+Inf\"} 2"
        );
        assert_eq!(lines[14], "mcrelay_handshake_duration_seconds_sum 3.0007");
        assert_eq!(lines[15], "mcrelay_handshake_duration_seconds_count 2");
        assert_eq!(lines.len(), 16);
    }

    #[test]
    fn a_stamp_revises_the_last_registration_only() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut hs = Histograms::default();
        // Arrived at t0, processed at t0 + 0.2 ms: provisionally in the 0.5 ms bucket.
        hs.registered(t0 + Duration::from_micros(200), t0);
        let h = &hs.handshake_duration;
        assert_eq!((h.count(), h.sum()), (1, 200));
        // Its decryption ended at t0 + 3 ms: moved to the 5 ms bucket, still one value.
        hs.stamp_registration(t0 + ms(3));
        let h = &hs.handshake_duration;
        assert_eq!((h.count(), h.sum()), (1, 3_000));
        let cum: Vec<(u64, u64)> = h.cumulative().collect();
        assert_eq!(&cum[..4], &[(500, 0), (1_000, 0), (2_500, 0), (5_000, 1)]);
        // A second stamp, or a stamp with nothing to stamp, changes nothing.
        hs.stamp_registration(t0 + ms(900));
        assert_eq!(hs.handshake_duration.sum(), 3_000);
        // Without a stamp the queue wait stays; a stamp earlier than the call is ignored.
        hs.registered(t0 + ms(10), t0 + ms(4));
        hs.stamp_registration(t0 + ms(5));
        let h = &hs.handshake_duration;
        assert_eq!((h.count(), h.sum()), (2, 9_000));
        hs.relayed(100);
        assert_eq!(hs.message_size.count(), 1);
        assert_eq!(hs.iter().count(), HISTOGRAMS.len());
    }
}
