//! The one table of counter and drop-reason names.
//!
//! Every counter the relay keeps and every reason it drops an input for is defined here, once,
//! with its name and a one-line help text. `stats` and `metrics` on the control port, the
//! drop log lines and the tables in docs/ (checked by a test) all read these tables, so a
//! name cannot be spelled two ways.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::proto::reassembly::FragmentError;
use crate::wire::WireError;

/// Whether a figure only grows (a Prometheus `counter`) or goes up and down (a `gauge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows; exposed with a `_total` suffix.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A named figure: the `stats` line name, its `metrics` kind and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// snake_case name (`stats` prints it as is; `metrics` as `mcrelay_<name>[_total]`).
    pub name: &'static str,
    /// One line for `# HELP`.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
}

impl Metric {
    /// The Prometheus family name: `mcrelay_<name>`, plus `_total` for counters. A
    /// `_microseconds` figure is exposed in the base unit, as `_seconds`
    /// ([`Metric::prometheus_value`]).
    pub fn prometheus_name(&self) -> String {
        let name = match self.name.strip_suffix("_microseconds") {
            Some(base) => format!("{base}_seconds"),
            None => self.name.to_string(),
        };
        match self.kind {
            MetricKind::Counter => format!("mcrelay_{name}_total"),
            MetricKind::Gauge => format!("mcrelay_{name}"),
        }
    }

    /// The value `v` as Prometheus shows it: microseconds in seconds, the rest as it is.
    pub fn prometheus_value(&self, v: u64) -> String {
        if self.name.ends_with("_microseconds") {
            format!("{}.{:06}", v / 1_000_000, v % 1_000_000)
        } else {
            v.to_string()
        }
    }
}

macro_rules! counters {
    ($( $field:ident, $kind:ident, $help:literal; )*) => {
        /// Everything the relay counted. Plain integers: one owner, no atomics.
        #[derive(Debug, Clone, Default)]
        pub struct Stats {
            $( #[doc = $help] pub $field: u64, )*
            drops: [u64; DropReason::ALL.len()],
        }

        impl Stats {
            /// The counters' names, kinds and help texts, in `stats` order.
            pub const COUNTERS: &'static [Metric] = &[
                $( Metric { name: stringify!($field), help: $help, kind: MetricKind::$kind }, )*
            ];

            /// Every counter with its value, in [`Stats::COUNTERS`] order.
            pub fn counters(&self) -> impl Iterator<Item = (&'static Metric, u64)> + '_ {
                Self::COUNTERS.iter().zip([$( self.$field, )*])
            }
        }
    };
}

counters! {
    datagrams_in, Counter, "Datagrams received on the multicast group.";
    bytes_in, Counter, "Bytes received on the multicast group.";
    datagrams_out, Counter, "Datagrams sent.";
    bytes_out, Counter, "Bytes sent.";
    messages_in, Counter, "Client messages accepted for relaying.";
    deliveries, Counter, "Message copies sent to recipients (a message to N-1 peers counts N-1).";
    handshakes_ok, Counter, "Registrations completed (WELCOME sent).";
    handshakes_failed, Counter, "Registrations refused after their cookie was checked.";
    rsa_microseconds, Counter, "Wall time spent in RSA decryptions, in microseconds (Prometheus: seconds; measured by the driver).";
    cookies_sent, Counter, "COOKIE answers sent to HELLOs.";
    keepalives, Counter, "Keep-alives answered.";
    fragments_in, Counter, "Fragments received from clients.";
    fragments_out, Counter, "Fragments sent.";
    reassembled, Counter, "Fragmented messages reassembled whole.";
    joins, Counter, "Sessions started.";
    leaves, Counter, "Sessions ended, for any reason.";
    timeouts, Counter, "Sessions ended because the client fell silent.";
    kicks, Counter, "Sessions ended by an operator.";
    peak_clients, Gauge, "Most clients registered at once since start.";
    group_datagrams, Counter, "Datagrams sent to the distribution group (group mode).";
    rekeys, Counter, "Group epochs started: fresh keys and ratchet steps (group mode).";
    key_deliveries, Counter, "GROUP_KEY messages sent, first deliveries and retries (group mode).";
    key_pulls, Counter, "Key pulls answered (group mode).";
    no_session_notices, Counter, "NO_SESSION notices sent to addresses without a session.";
    remote_messages_in, Counter, "Messages of clients of other relays received for local members (federation).";
    remote_deliveries, Counter, "Copies of those sent to local members (federation).";
    remote_joins, Counter, "Clients of other relays announced here as joined (federation).";
    remote_leaves, Counter, "Clients of other relays announced here as left, for any reason (federation).";
    federation_published, Counter, "Messages published to the federation: data, presence, heartbeats, rosters.";
    federation_data_out, Counter, "Local client messages published to the federation.";
    federation_publish_dropped, Counter, "Publishes not made: too large for the server, or the relay was cut off from NATS for three heartbeats.";
    federation_received, Counter, "Federation messages accepted (sealed under the cluster key, fresh, in order).";
    federation_bad_seal, Counter, "Federation messages that do not open under the cluster key (another key, or forged).";
    federation_malformed, Counter, "Federation messages that opened but do not parse.";
    federation_stale, Counter, "Federation messages outside the clock window, or from an older incarnation of their relay.";
    federation_duplicates, Counter, "Federation messages already received (the per-relay replay window).";
    federation_own, Counter, "Federation messages carrying this relay's own id (an echo, or another relay with the same id).";
    federation_gaps, Counter, "Federation sequence numbers skipped: messages of other relays lost on the way.";
    federation_peers_lost, Counter, "Peer relays declared lost (three heartbeats missed) or found restarted.";
    federation_roster_requests, Counter, "Roster requests published (after a gap, a digest mismatch or a reconnect).";
    federation_resyncs, Counter, "Roster snapshots of other relays applied.";
    federation_over_cap, Counter, "Remote joins refused: more clients of other relays than the caps allow.";
    nats_connects, Counter, "NATS handshakes completed (federation).";
    nats_disconnects, Counter, "NATS links that ended (federation).";
}

macro_rules! drop_reasons {
    ($( $variant:ident => $name:literal, $help:literal; )*) => {
        /// Why an input was dropped. Each reason is a counter (`stats` `drop.<name>`,
        /// `metrics` `mcrelay_drops_total{reason="<name>"}`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum DropReason { $( #[doc = $help] $variant, )* }

        impl DropReason {
            /// Every reason, in `stats` order.
            pub const ALL: &'static [DropReason] = &[ $( DropReason::$variant, )* ];
            /// (name, help) of every reason, in the same order.
            const TABLE: &'static [(&'static str, &'static str)] = &[ $( ($name, $help), )* ];
        }
    };
}

drop_reasons! {
    Oversized => "oversized", "datagram larger than 1200 bytes";
    Truncated => "malformed_truncated", "TLV header or value truncated";
    UnknownType => "malformed_unknown_type", "unknown TLV type";
    BadValue => "malformed_value", "TLV value of the wrong length or shape";
    TrailingData => "malformed_trailing_data", "bytes after the message";
    BadSequence => "malformed_sequence", "TLVs do not form a valid message";
    Empty => "malformed_empty", "empty datagram or plaintext";
    UnexpectedType => "unexpected_type", "a relay-to-client message sent to the relay";
    UnsupportedVersion => "unsupported_version", "HELLO offered no version we speak";
    BadCookie => "bad_cookie", "cookie with a wrong MAC (forged or for another address)";
    ExpiredCookie => "expired_cookie", "cookie too old";
    CookieReused => "cookie_reused", "REGISTER cookie already used";
    HandshakeBudget => "handshake_budget", "REGISTER over the RSA budget (per source or global)";
    HandshakeQueueFull => "handshake_queue_full", "REGISTER queue full";
    BadRegistration => "bad_registration", "OAEP decryption failed or the key is invalid";
    NotAdmitted => "not_admitted", "admission token missing or wrong";
    RelayFull => "relay_full", "max clients reached";
    SourceFull => "source_full", "max clients from one source address (IPv6: /64) reached";
    UnknownSender => "unknown_sender", "sealed message or fragment from an address with no session";
    BadToken => "bad_token", "Fernet token failed (HMAC, format or padding)";
    TokenExpired => "token_expired", "Fernet timestamp older than the TTL";
    TokenFromFuture => "token_from_future", "Fernet timestamp too far in the future";
    Replay => "replay", "sequence number already seen or older than the window";
    FragmentInvalid => "fragment_invalid", "fragment inconsistent with its reassembly";
    FragmentDuplicate => "fragment_duplicate", "fragment index already held";
    FragmentLimit => "fragment_limit", "reassembly memory cap reached";
    ReassemblyTimeout => "reassembly_timeout", "reassembly not complete in time";
    ReassemblyEvicted => "reassembly_evicted", "reassembly evicted for a newer one of its owner, or for a smaller holder (global cap full)";
    SendQueueFull => "send_queue_full", "outgoing queue full";
    SendFailed => "send_failed", "the kernel refused an outgoing datagram";
}

impl DropReason {
    /// Counter name (snake_case).
    pub fn name(self) -> &'static str {
        Self::TABLE[self as usize].0
    }

    /// One-line explanation.
    pub fn help(self) -> &'static str {
        Self::TABLE[self as usize].1
    }

    /// The reason a rejected fragment is counted under.
    pub fn from_fragment(e: &FragmentError) -> DropReason {
        match e {
            FragmentError::Duplicate => DropReason::FragmentDuplicate,
            FragmentError::OwnerLimit | FragmentError::GlobalLimit => DropReason::FragmentLimit,
            FragmentError::BadCount
            | FragmentError::IndexOutOfRange
            | FragmentError::BadChunkLength
            | FragmentError::Inconsistent => DropReason::FragmentInvalid,
        }
    }

    /// The reason a wire-format error is counted under.
    pub fn from_wire(e: &WireError) -> DropReason {
        match e {
            WireError::TruncatedHeader | WireError::TruncatedValue { .. } => DropReason::Truncated,
            WireError::UnknownType(_) => DropReason::UnknownType,
            WireError::BadValue { .. } => DropReason::BadValue,
            WireError::TrailingData => DropReason::TrailingData,
            WireError::BadSequence => DropReason::BadSequence,
            WireError::Empty => DropReason::Empty,
        }
    }
}

impl Stats {
    /// Count one dropped input.
    pub fn count_drop(&mut self, d: DropReason) {
        self.count_drops(d, 1);
    }
    /// Add `d` of wall time spent on RSA decryptions (`rsa_microseconds`).
    pub fn count_rsa_time(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.rsa_microseconds = self.rsa_microseconds.saturating_add(us);
    }

    /// Count `n` dropped inputs.
    pub fn count_drops(&mut self, d: DropReason, n: u64) {
        self.drops[d as usize] += n;
    }
    /// How many inputs were dropped for `d`.
    pub fn drops(&self, d: DropReason) -> u64 {
        self.drops[d as usize]
    }
    /// Dropped inputs, all reasons.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// The counters plus the rate-limited drop log: what every part of the core reports to.
#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) stats: Stats,
    log: DropLog,
}

impl Telemetry {
    pub(crate) fn new(now: Instant) -> Self {
        Telemetry {
            stats: Stats::default(),
            log: DropLog {
                window: now,
                lines: 0,
                suppressed: 0,
            },
        }
    }

    /// Count an input from `from` dropped for `d`, and log it (rate-limited).
    pub(crate) fn dropped(&mut self, now: Instant, from: SocketAddr, d: DropReason) {
        self.stats.count_drop(d);
        if self.log.allow(now) {
            warn!("dropped datagram from {from}: {} ({})", d.name(), d.help());
        } else {
            debug!("dropped datagram from {from}: {}", d.name());
        }
    }
}

/// Rate-limited warnings for drops: at most `PER_SEC` lines a second, then a summary; the
/// rest go to the debug level.
#[derive(Debug)]
struct DropLog {
    window: Instant,
    lines: u32,
    suppressed: u64,
}

impl DropLog {
    const PER_SEC: u32 = 10;

    fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                warn!(
                    "{} more dropped datagrams not logged (see `stats`)",
                    self.suppressed
                );
            }
            self.window = now;
            self.lines = 0;
            self.suppressed = 0;
        }
        if self.lines < Self::PER_SEC {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The gauges `stats` and `metrics` show besides the counters, in order.
pub const GAUGES: &[Metric] = &[
    Metric {
        name: "uptime_seconds",
        help: "Seconds since the relay started.",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "clients",
        help: "Registered clients now.",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "reassembly_bytes",
        help: "Bytes held by incomplete reassemblies.",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "reassemblies_in_flight",
        help: "Incomplete reassemblies.",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "pending_registrations",
        help: "Validated REGISTERs waiting for their RSA decryption.",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "send_queue_bytes",
        help: "Bytes of datagrams waiting for the socket.",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "group_mode",
        help: "1 in group mode, 0 in unicast mode.",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "group_epoch",
        help: "The current group key epoch (group mode).",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "group_pending_acks",
        help: "Version-3 members that have not acknowledged the current group key.",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "notice_backlog",
        help: "JOIN and LEAVE notices still being sent (a burst is spread over loop turns).",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "remote_clients",
        help: "Clients of other relays known here now (federation).",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "federation_peers_up",
        help: "Peer relays heard from within their last three heartbeats (federation).",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "nats_connected",
        help: "1 while the NATS link is up (federation).",
        kind: MetricKind::Gauge,
    },
    Metric {
        name: "nats_pending_bytes",
        help: "Bytes of publishes waiting for the NATS link (federation; bounded).",
        kind: MetricKind::Gauge,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn snake(n: &str) -> bool {
        !n.is_empty() && n.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|d| d.name()).collect();
        names.extend(Stats::COUNTERS.iter().map(|m| m.name));
        assert!(names.iter().all(|n| snake(n)), "{names:?}");
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn drops_are_counted_per_reason() {
        let mut s = Stats::default();
        s.count_drop(DropReason::Replay);
        s.count_drops(DropReason::Replay, 2);
        s.count_drop(DropReason::Oversized);
        assert_eq!(s.drops(DropReason::Replay), 3);
        assert_eq!(s.total_drops(), 4);
    }

    #[test]
    fn counters_follow_the_table() {
        let s = Stats {
            deliveries: 7,
            peak_clients: 3,
            ..Stats::default()
        };
        let v: Vec<_> = s.counters().map(|(m, v)| (m.name, v)).collect();
        assert_eq!(v.len(), Stats::COUNTERS.len());
        assert!(v.contains(&("deliveries", 7)));
        let peak = Stats::COUNTERS.iter().find(|m| m.name == "peak_clients");
        assert_eq!(peak.map(|m| m.kind), Some(MetricKind::Gauge));
        assert_eq!(
            Stats::COUNTERS[0].prometheus_name(),
            "mcrelay_datagrams_in_total"
        );
    }

    #[test]
    fn drop_log_is_rate_limited_but_counts_everything() {
        let t0 = Instant::now();
        let mut t = Telemetry::new(t0);
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..25 {
            t.dropped(t0, from, DropReason::BadToken);
        }
        assert_eq!(t.stats.drops(DropReason::BadToken), 25);
        assert_eq!(t.log.suppressed, 15);
        t.dropped(t0 + Duration::from_secs(1), from, DropReason::BadToken);
        assert_eq!(t.log.suppressed, 0);
        assert_eq!(t.log.lines, 1);
    }
}
