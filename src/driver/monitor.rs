//! The relay's HTTP monitor: a [`MonitorServer`] on the relay's token range and the routes of
//! docs/monitoring.md. Every figure comes from the formatters and tables the control port
//! uses (`format_metrics`, `RelayCore::gauges`, `Stats::counters`, `DropReason::ALL`, the
//! core's histograms), so `/metrics` and `ctl metrics` cannot differ.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use log::info;
use mio::event::Event;
use mio::{Registry, Token};

use crate::config::MonitorSettings;
use crate::control::{ControlCounters, format_control_metrics, format_metrics};
use crate::core::histogram::Unit;
use crate::core::{ClientInfo, DropReason, RelayCore};
use crate::error::Error;
use crate::monitor::json::JsonWriter;
use crate::monitor::{MonitorConfig, MonitorError, MonitorServer, Request, Response};

/// Monitor requests the relay answers per event or timeout it handles, at
/// most; the rest wait for the next turn (the server then asks to be called back at once).
pub const REQUESTS_PER_TURN: usize = 16;
/// Clients listed by one `/clients` response: the default and the largest `?limit=`.
pub const CLIENTS_LIMIT: usize = 1024;
/// `Content-Type` of `/metrics`: the Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The monitor: the server, its settings and the buffers responses are built in.
pub(super) struct Monitor {
    server: MonitorServer,
    per_client: bool,
    /// Response bodies are built here, one at a time (kept across requests).
    body: String,
    /// `/clients` sorts a snapshot here (kept across requests, emptied after each).
    clients: Vec<ClientInfo>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Monitor({})", self.server.local_addr())
    }
}

impl Monitor {
    /// Tokens the monitor needs with these settings: the listener and one per connection.
    pub(super) fn tokens_needed(s: &MonitorSettings) -> usize {
        MonitorServer::tokens_needed(s.max_conns)
    }

    /// Bind and register at `token_base` (settings already validated by `NetConfig`).
    pub(super) fn open(
        registry: &Registry,
        s: &MonitorSettings,
        token_base: usize,
        now: Instant,
    ) -> Result<Monitor, Error> {
        let cfg = MonitorConfig {
            listen: s.listen,
            token: s.token.clone(),
            max_conns: s.max_conns,
            ..MonitorConfig::default()
        };
        let server = MonitorServer::new(registry, cfg, token_base, now).map_err(|e| match e {
            MonitorError::Io { source, .. } => Error::Io {
                what: "bind the monitor port",
                source,
            },
            other => Error::Config(crate::config::ConfigError::new(
                "monitor",
                other.to_string(),
            )),
        })?;
        info!(
            "monitor listening on http://{}/ (metrics, healthz, stats, clients){}",
            server.local_addr(),
            if s.token.is_some() {
                ", bearer token required"
            } else {
                ""
            }
        );
        Ok(Monitor {
            server,
            per_client: s.per_client_metrics,
            body: String::new(),
            clients: Vec::new(),
        })
    }

    pub(super) fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub(super) fn owns(&self, t: Token) -> bool {
        self.server.owns(t)
    }

    pub(super) fn handle_event(&mut self, registry: &Registry, ev: &Event, now: Instant) {
        self.server.handle_event(registry, ev, now);
    }

    pub(super) fn handle_ready(
        &mut self,
        registry: &Registry,
        token: Token,
        readable: bool,
        writable: bool,
        now: Instant,
    ) {
        self.server
            .handle_ready(registry, token, readable, writable, now);
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.server.poll_timeout()
    }

    pub(super) fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        self.server.handle_timeout(registry, now);
    }

    /// Answer at most [`REQUESTS_PER_TURN`] waiting requests. `stopping`: a stop was
    /// requested or is under way (`/healthz` says 503).
    pub(super) fn serve(
        &mut self,
        core: &RelayCore,
        control: Option<&ControlCounters>,
        stopping: bool,
        now: Instant,
    ) {
        for _ in 0..REQUESTS_PER_TURN {
            let Some((id, req)) = self.server.poll_request() else {
                return;
            };
            self.body.clear();
            let (status, content_type) = route(
                &req,
                core,
                control,
                stopping,
                now,
                self.per_client,
                &mut self.body,
                &mut self.clients,
            );
            let resp = Response {
                status,
                content_type,
                body: self.body.as_bytes(),
            };
            self.server.respond(id, &resp);
        }
        // A /metrics body of many clients is not kept on an idle relay.
        if self.body.capacity() > 64 * 1024 {
            self.body = String::new();
        }
    }

    /// Write what can be written, close every connection and the listener.
    pub(super) fn close_all(&mut self, registry: &Registry) {
        self.server.close_all(registry);
    }
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Build the body of `req` into `body`; returns the status and content type.
#[allow(clippy::too_many_arguments)]
fn route(
    req: &Request,
    core: &RelayCore,
    control: Option<&ControlCounters>,
    stopping: bool,
    now: Instant,
    per_client: bool,
    body: &mut String,
    clients: &mut Vec<ClientInfo>,
) -> (u16, &'static str) {
    match req.path.as_str() {
        "/metrics" => {
            format_metrics(body, core, now);
            if let Some(c) = control {
                format_control_metrics(body, c);
            }
            if per_client {
                client_metrics(body, core);
            }
            (200, METRICS_CONTENT_TYPE)
        }
        "/healthz" => (healthz(body, core, stopping, now), JSON),
        "/stats" => {
            stats_json(body, core, control, now);
            (200, JSON)
        }
        "/clients" => match ClientsQuery::parse(req.query.as_deref()) {
            Ok(q) => {
                clients_json(body, core, now, q, clients);
                (200, JSON)
            }
            Err(why) => {
                let mut w = JsonWriter::new(body);
                w.begin_object();
                w.field_str("error", why);
                w.end_object();
                (400, JSON)
            }
        },
        _ => {
            body.push_str("not found\n");
            (404, TEXT)
        }
    }
}

/// `/healthz`: 200 `{"status":"ok",...}` while serving, 503 `{"status":"stopping"}` once a
/// stop is requested.
fn healthz(body: &mut String, core: &RelayCore, stopping: bool, now: Instant) -> u16 {
    let mut w = JsonWriter::new(body);
    w.begin_object();
    if stopping || core.is_shut_down() {
        w.field_str("status", "stopping");
        w.end_object();
        return 503;
    }
    w.field_str("status", "ok");
    w.field_u64("clients", core.client_count() as u64);
    w.field_u64("max_clients", core.config().max_clients as u64);
    w.field_u64("pending_registrations", core.pending_registrations() as u64);
    let uptime = core.gauges(now).next().map_or(0, |(_, v)| v);
    w.field_u64("uptime_seconds", uptime);
    // Federation: its NATS link state, only when federation is on.
    if let Some(f) = core.federation_status() {
        w.key("nats");
        w.begin_object();
        w.field_bool("connected", f.nats_connected);
        w.key("server");
        match f.nats_server {
            Some(s) => w.string(&s.to_string()),
            None => w.null(),
        }
        w.field_u64("pending_bytes", f.nats_pending_bytes);
        w.field_u64("peers_up", f.peers_up);
        w.field_u64("peers_known", f.peers_known);
        w.field_u64("remote_clients", core.remote_client_count() as u64);
        w.end_object();
    }
    w.end_object();
    200
}

/// `/stats`: every figure of `ctl stats` as one JSON object (modelled on NATS `/varz`).
fn stats_json(
    body: &mut String,
    core: &RelayCore,
    control: Option<&ControlCounters>,
    now: Instant,
) {
    let mut w = JsonWriter::new(body);
    w.begin_object();
    w.field_str("version", env!("CARGO_PKG_VERSION"));
    w.field_str("mode", core.mode());
    for (m, v) in core.gauges(now).chain(core.stats().counters()) {
        w.field_u64(m.name, v);
    }
    for (m, v) in control.into_iter().flat_map(ControlCounters::figures) {
        w.field_u64(m.name, v);
    }
    let s = core.stats();
    w.field_u64("drops_total", s.total_drops());
    w.key("drops");
    w.begin_object();
    for d in DropReason::ALL {
        w.field_u64(d.name(), s.drops(*d));
    }
    w.end_object();
    w.key("histograms");
    w.begin_object();
    for h in core.histograms().iter() {
        let spec = h.spec();
        let (name, unit) = match spec.unit {
            Unit::Seconds => (spec.name.trim_end_matches("_seconds"), "microseconds"),
            Unit::Bytes => (spec.name.trim_end_matches("_bytes"), "bytes"),
        };
        w.key(name);
        w.begin_object();
        w.field_str("unit", unit);
        w.field_u64("count", h.count());
        w.field_u64("sum", h.sum());
        w.key("buckets");
        w.begin_array();
        for (le, n) in h.cumulative() {
            w.begin_object();
            w.field_u64("le", le);
            w.field_u64("count", n);
            w.end_object();
        }
        w.end_array();
        w.end_object();
    }
    w.end_object();
    w.end_object();
}

/// `?limit=N&offset=M` of `/clients`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientsQuery {
    limit: usize,
    offset: usize,
}

impl ClientsQuery {
    fn parse(query: Option<&str>) -> Result<ClientsQuery, &'static str> {
        let mut q = ClientsQuery {
            limit: CLIENTS_LIMIT,
            offset: 0,
        };
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let num = || v.parse::<usize>();
            match k {
                "limit" => q.limit = num().map_err(|_| "limit: not a number")?.min(CLIENTS_LIMIT),
                "offset" => q.offset = num().map_err(|_| "offset: not a number")?,
                _ => {} // unknown parameters are ignored, as NATS does
            }
        }
        Ok(q)
    }
}

/// `/clients`: `{"total":N,"offset":O,"limit":L,"clients":[...]}` by id (modelled on NATS
/// `/connz`); at most `limit` entries, so one request cannot build an unbounded body.
fn clients_json(
    body: &mut String,
    core: &RelayCore,
    now: Instant,
    q: ClientsQuery,
    snapshot: &mut Vec<ClientInfo>,
) {
    snapshot.clear();
    snapshot.extend(core.clients());
    snapshot.sort_unstable_by_key(|c| c.id);
    let mut w = JsonWriter::new(body);
    w.begin_object();
    w.field_u64("total", snapshot.len() as u64);
    w.field_u64("offset", q.offset as u64);
    w.field_u64("limit", q.limit as u64);
    w.key("clients");
    w.begin_array();
    let mut addr = String::new();
    for c in snapshot.iter().skip(q.offset).take(q.limit) {
        w.begin_object();
        w.field_u64("id", u64::from(c.id));
        addr.clear();
        let _ = write!(addr, "{}", c.addr);
        w.field_str("addr", &addr);
        w.key("name");
        match &c.name {
            Some(n) => w.string(n),
            None => w.null(),
        }
        w.field_u64("since_s", now.saturating_duration_since(c.since).as_secs());
        let seen = now.saturating_duration_since(c.last_seen).as_millis();
        w.field_u64("last_seen_ms", u64::try_from(seen).unwrap_or(u64::MAX));
        w.field_u64("msgs_in", c.msgs_in);
        w.field_u64("bytes_in", c.bytes_in);
        w.field_u64("msgs_out", c.msgs_out);
        w.field_u64("bytes_out", c.bytes_out);
        w.end_object();
    }
    w.end_array();
    w.end_object();
    snapshot.clear();
}

/// The per-client families of `--metrics-per-client`, name and help.
pub const CLIENT_METRICS: &[(&str, &str)] = &[
    (
        "mcrelay_client_messages_in_total",
        "Messages received from the client.",
    ),
    (
        "mcrelay_client_bytes_in_total",
        "Bytes of the messages received from the client, on the wire.",
    ),
    (
        "mcrelay_client_messages_out_total",
        "Tokens sent to the client.",
    ),
    (
        "mcrelay_client_bytes_out_total",
        "Bytes of the tokens sent to the client, on the wire.",
    ),
];

/// Per-client counters, `client="<id>"`: one series per client and family.
fn client_metrics(out: &mut String, core: &RelayCore) {
    for (i, (name, help)) in CLIENT_METRICS.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for c in core.clients() {
            let v = [c.msgs_in, c.bytes_in, c.msgs_out, c.bytes_out][i];
            let _ = writeln!(out, "{name}{{client=\"{}\"}} {v}", c.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_query() {
        let p = |q: Option<&str>| ClientsQuery::parse(q);
        let d = ClientsQuery {
            limit: CLIENTS_LIMIT,
            offset: 0,
        };
        assert_eq!(p(None), Ok(d));
        assert_eq!(p(Some("")), Ok(d));
        assert_eq!(
            p(Some("limit=1&offset=2&x=y&flag")),
            Ok(ClientsQuery {
                limit: 1,
                offset: 2
            })
        );
        assert_eq!(p(Some("limit=999999")).map(|q| q.limit), Ok(CLIENTS_LIMIT));
        assert_eq!(p(Some("limit=0")).map(|q| q.limit), Ok(0));
        assert!(p(Some("limit=-1")).is_err());
        assert!(p(Some("limit=")).is_err());
        assert!(p(Some("offset=z")).is_err());
        assert!(p(Some("offset=99999999999999999999999")).is_err());
    }
}
