//! Reply bodies: `help`, `stats`, `clients`, `metrics`, `config`. Every figure comes from the
//! core's tables ([`Stats::COUNTERS`](crate::core::Stats::COUNTERS),
//! [`GAUGES`](crate::core::GAUGES), [`DropReason::ALL`]) and the control port's own
//! ([`CONTROL_COUNTERS`](super::CONTROL_COUNTERS)), so `stats` and `metrics` always show the
//! same set under the same names.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::command::HELP;
use super::exec::ControlCounters;
use crate::config::NetConfig;
use crate::core::{ClientInfo, DropReason, Metric, MetricKind, RelayCore, RemoteClient};
use crate::federation::Federation;

/// `help`: usage, padding, description.
pub fn format_help(out: &mut String) {
    for (usage, what) in HELP {
        let _ = writeln!(out, "{usage:<42} {what}");
    }
}

fn secs_since(now: Instant, then: Instant) -> u64 {
    now.saturating_duration_since(then).as_secs()
}

/// Seconds with one decimal (truncated), from integers: `12.3`.
struct Tenths(Duration);

impl std::fmt::Display for Tenths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0.as_secs(), self.0.subsec_millis() / 100)
    }
}

/// Every figure of `stats`/`metrics`: gauges, then counters.
fn figures(core: &RelayCore, now: Instant) -> impl Iterator<Item = (&'static Metric, u64)> + '_ {
    core.gauges(now).chain(core.stats().counters())
}

/// `stats`: `name value` lines.
pub fn format_stats(out: &mut String, core: &RelayCore, now: Instant) {
    for (m, v) in figures(core, now) {
        let _ = writeln!(out, "{} {v}", m.name);
    }
    let s = core.stats();
    let _ = writeln!(out, "drops_total {}", s.total_drops());
    for d in DropReason::ALL {
        let _ = writeln!(out, "drop.{} {}", d.name(), s.drops(*d));
    }
}

/// `clients`: one line per client.
pub fn format_clients(out: &mut String, clients: impl Iterator<Item = ClientInfo>, now: Instant) {
    for c in clients {
        let _ = writeln!(
            out,
            "id={} addr={} name={} since={}s last_seen={}s msgs_in={} bytes_in={} msgs_out={} bytes_out={}",
            c.id,
            c.addr,
            c.name.as_deref().unwrap_or("-"),
            secs_since(now, c.since),
            Tenths(now.saturating_duration_since(c.last_seen)),
            c.msgs_in,
            c.bytes_in,
            c.msgs_out,
            c.bytes_out
        );
    }
}

/// `clients`, continued: one line per client of another relay (federation).
pub fn format_remote_clients(out: &mut String, clients: &[RemoteClient], now: Instant) {
    for c in clients {
        let _ = writeln!(
            out,
            "id={} relay={} name={} since={}s",
            c.id,
            c.relay,
            c.name.as_deref().unwrap_or("-"),
            secs_since(now, c.since),
        );
    }
}

/// `peers`: this relay and its NATS link, then one line per other relay.
pub fn format_peers(out: &mut String, fed: &Federation, core: &RelayCore, now: Instant) {
    let (up, server) = fed.link();
    let status = core.federation_status().unwrap_or_default();
    let _ = writeln!(
        out,
        "relay={} incarnation={} nats={} server={} pending_bytes={} msgs_out={} heartbeat={}ms",
        fed.relay_id(),
        fed.incarnation(),
        if up {
            "connected"
        } else if fed.is_cut_off() {
            "cut_off"
        } else {
            "down"
        },
        server.map_or("-".to_string(), |s| s.to_string()),
        status.nats_pending_bytes,
        core.stats().federation_data_out,
        fed.heartbeat().as_millis(),
    );
    for p in fed.peers(core) {
        let ago = |t: Instant| format!("{}s", Tenths(now.saturating_duration_since(t)));
        let _ = writeln!(
            out,
            "peer={} state={} incarnation={} last_heard={} last_heartbeat={} members={} \
             advertised={} msgs_in={} msgs_out={} deliveries={} gaps={} duplicates={} resyncs={}",
            p.id,
            p.state.word(),
            p.incarnation,
            ago(p.last_heard),
            p.last_heartbeat.map_or("-".to_string(), ago),
            p.members,
            p.advertised,
            p.msgs_in,
            p.msgs_out,
            p.deliveries,
            p.gaps,
            p.duplicates,
            p.resyncs,
        );
    }
}

/// `metrics`: Prometheus text exposition format 0.0.4.
pub fn format_metrics(out: &mut String, core: &RelayCore, now: Instant) {
    for (m, v) in figures(core, now) {
        write_metric(out, m, v);
    }
    let s = core.stats();
    let _ = writeln!(
        out,
        "# HELP mcrelay_drops_total Datagrams dropped, by reason."
    );
    let _ = writeln!(out, "# TYPE mcrelay_drops_total counter");
    for d in DropReason::ALL {
        let _ = writeln!(
            out,
            "mcrelay_drops_total{{reason=\"{}\"}} {}",
            d.name(),
            s.drops(*d)
        );
    }
    // Histograms (core/histogram.rs): handshake duration, message size.
    for h in core.histograms().iter() {
        h.write_prometheus(out);
    }
}

/// One figure with its `# HELP` and `# TYPE` lines.
fn write_metric(out: &mut String, m: &Metric, v: u64) {
    let name = m.prometheus_name();
    let kind = match m.kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
    };
    let _ = writeln!(out, "# HELP {name} {}", m.help);
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {}", m.prometheus_value(v));
}

/// `config`: the effective settings, never a secret.
pub fn format_config(
    out: &mut String,
    core: &RelayCore,
    net: &NetConfig,
    control: Option<SocketAddr>,
) {
    let c = core.config();
    let on_off = |b: bool| if b { "on" } else { "off" };
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{name} {value}");
    };
    line("group", &net.group);
    line("port", &net.port);
    line("iface", &net.iface);
    let control = control.map_or("off".to_string(), |a| a.to_string());
    line("control", &control);
    line("max_control", &net.max_control);
    line("control_auth", &on_off(net.control_token.is_some()));
    line(
        "control_auth_timeout_ms",
        &net.control_auth_timeout.as_millis(),
    );
    line(
        "control_idle_timeout_ms",
        &net.control_idle_timeout.as_millis(),
    );
    line("distribution", &core.mode());
    if let crate::config::Distribution::Group(g) = &c.distribution {
        line("distribution_group", &g.addr);
        line("ttl", &net.ttl);
        line("rekey_on_join", &on_off(g.rekey_on_join));
        line("group_grace_ms", &g.grace.as_millis());
        line("rekey_messages", &g.rotate_messages);
        line("rekey_age_s", &g.rotate_age.as_secs());
    }
    line("key_bits", &(core.key().modulus_len() * 8));
    line("key_fingerprint", &core.key().fingerprint_hex());
    line("client_timeout_ms", &c.client_timeout.as_millis());
    line("keepalive_interval_ms", &c.keepalive_interval.as_millis());
    line("max_clients", &c.max_clients);
    line("max_clients_per_source", &c.max_clients_per_source);
    let r = &c.reassembly;
    line("reassembly_timeout_ms", &r.timeout.as_millis());
    line("reassembly_per_client_messages", &r.per_owner_messages);
    line("reassembly_per_client_bytes", &r.per_owner_bytes);
    line("reassembly_total_bytes", &r.total_bytes);
    line("token_ttl_s", &c.token_ttl.as_secs());
    line("max_clock_skew_s", &c.max_clock_skew.as_secs());
    line("handshakes_per_sec", &c.handshakes_per_sec);
    line(
        "handshakes_per_source_per_sec",
        &c.handshakes_per_source_per_sec,
    );
    line("handshake_cpu_percent", &c.handshake_cpu_percent);
    line("max_pending_handshakes", &c.max_pending_registrations);
    line("cookie_lifetime_ms", &c.cookie_lifetime.as_millis());
    line("send_queue_bytes", &c.max_send_queue);
    let admission = c
        .admission
        .as_ref()
        .map_or("off".to_string(), |a| format!("on ({} names)", a.len()));
    line("admission", &admission);
    if let Some(f) = &net.federation {
        line("relay_id", &f.relay_id);
        line("cluster", &f.cluster);
        let servers: Vec<String> = f.nats.servers.iter().map(|s| s.to_string()).collect();
        line("nats", &servers.join(","));
        let auth = match &f.nats.auth {
            crate::nats::NatsAuth::None => "off",
            crate::nats::NatsAuth::Token(_) => "token",
            crate::nats::NatsAuth::UserPassword { .. } => "user",
        };
        line("nats_auth", &auth);
        line("federation_heartbeat_ms", &f.heartbeat.as_millis());
    }
}

/// The control port's figures as `stats` lines (after the core's).
pub fn format_control_stats(out: &mut String, counters: &ControlCounters) {
    for (m, v) in counters.figures() {
        let _ = writeln!(out, "{} {v}", m.name);
    }
}

/// The control port's figures in Prometheus text format (after the core's).
pub fn format_control_metrics(out: &mut String, counters: &ControlCounters) {
    for (m, v) in counters.figures() {
        write_metric(out, m, v);
    }
}
