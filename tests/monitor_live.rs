//! The relay's HTTP monitor, wired into the relay: a real Prometheus scrapes it on loopback;
//! each route's status, content type and body shape; the bearer token; the refusal of a
//! non-loopback address without one; 503 once a stop is requested; the bounds (`?limit=`,
//! requests per turn).
//!
//! The Prometheus test needs `prometheus` (Debian package `prometheus`, which `.ci/test`
//! installs) and fails without it; `promtool` comes with it.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mcrelay::client::Event;
use mcrelay::driver::monitor::{CLIENTS_LIMIT, METRICS_CONTENT_TYPE, REQUESTS_PER_TURN};
use mcrelay::{Config, Error, MonitorSettings, NetConfig, Relay};
use mio::{Events, Poll, Token, Waker};

// ------------------------------------------------------------------ a tiny JSON reader

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(s: &str) -> Json {
        let b = s.as_bytes();
        let mut i = 0;
        let v = value(b, &mut i).unwrap_or_else(|| panic!("invalid JSON at byte {i}: {s}"));
        ws(b, &mut i);
        assert_eq!(i, b.len(), "trailing bytes after JSON: {s}");
        v
    }

    fn get(&self, k: &str) -> &Json {
        match self {
            Json::Obj(kv) => kv
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no key {k:?} in {self:?}")),
            _ => panic!("not an object: {self:?}"),
        }
    }

    fn has(&self, k: &str) -> bool {
        matches!(self, Json::Obj(kv) if kv.iter().any(|(key, _)| key == k))
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Json::Obj(kv) => kv.iter().map(|(k, _)| k.as_str()).collect(),
            _ => panic!("not an object: {self:?}"),
        }
    }

    fn u64(&self) -> u64 {
        match self {
            Json::Num(n) => n.parse().unwrap_or_else(|_| panic!("not an integer: {n}")),
            _ => panic!("not a number: {self:?}"),
        }
    }

    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            _ => panic!("not a string: {self:?}"),
        }
    }

    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => panic!("not an array: {self:?}"),
        }
    }
}

fn ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b" \t\r\n".contains(&b[*i]) {
        *i += 1;
    }
}

fn value(b: &[u8], i: &mut usize) -> Option<Json> {
    ws(b, i);
    let lit = |i: &mut usize, word: &str, v: Json| {
        b[*i..].starts_with(word.as_bytes()).then(|| {
            *i += word.len();
            v
        })
    };
    match *b.get(*i)? {
        b'n' => lit(i, "null", Json::Null),
        b't' => lit(i, "true", Json::Bool(true)),
        b'f' => lit(i, "false", Json::Bool(false)),
        b'"' => string(b, i).map(Json::Str),
        b'[' => {
            *i += 1;
            let mut v = Vec::new();
            ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
                return Some(Json::Arr(v));
            }
            loop {
                v.push(value(b, i)?);
                ws(b, i);
                match b.get(*i)? {
                    b',' => *i += 1,
                    b']' => {
                        *i += 1;
                        return Some(Json::Arr(v));
                    }
                    _ => return None,
                }
            }
        }
        b'{' => {
            *i += 1;
            let mut kv = Vec::new();
            ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
                return Some(Json::Obj(kv));
            }
            loop {
                ws(b, i);
                let k = string(b, i)?;
                ws(b, i);
                (b.get(*i)? == &b':').then_some(())?;
                *i += 1;
                let v = value(b, i)?;
                assert!(!kv.iter().any(|(key, _)| *key == k), "duplicate key {k}");
                kv.push((k, v));
                ws(b, i);
                match b.get(*i)? {
                    b',' => *i += 1,
                    b'}' => {
                        *i += 1;
                        return Some(Json::Obj(kv));
                    }
                    _ => return None,
                }
            }
        }
        c if c == b'-' || c.is_ascii_digit() => {
            let start = *i;
            *i += 1;
            while *i < b.len() && (b[*i].is_ascii_digit() || b"+-.eE".contains(&b[*i])) {
                *i += 1;
            }
            Some(Json::Num(
                String::from_utf8_lossy(&b[start..*i]).into_owned(),
            ))
        }
        _ => None,
    }
}

fn string(b: &[u8], i: &mut usize) -> Option<String> {
    (b.get(*i)? == &b'"').then_some(())?;
    *i += 1;
    let mut out = Vec::new();
    loop {
        match *b.get(*i)? {
            b'"' => {
                *i += 1;
                return String::from_utf8(out).ok();
            }
            b'\\' => {
                let e = *b.get(*i + 1)?;
                *i += 2;
                match e {
                    b'"' | b'\\' | b'/' => out.push(e),
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'u' => {
                        let hex = std::str::from_utf8(b.get(*i..*i + 4)?).ok()?;
                        let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                        *i += 4;
                        out.extend_from_slice(c.to_string().as_bytes());
                    }
                    _ => return None,
                }
            }
            c if c < 0x20 => return None,
            c => {
                out.push(c);
                *i += 1;
            }
        }
    }
}

// ------------------------------------------------------------------ a tiny HTTP client

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Json {
        Json::parse(&self.body)
    }
}

/// One request on its own connection (`Connection: close`), read to EOF.
fn request(addr: SocketAddr, method: &str, target: &str, extra: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    let text = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, target: &str) -> Reply {
    request(addr, "GET", target, "")
}

// ------------------------------------------------------------------ helpers

fn monitor_on(token: Option<&str>, per_client: bool) -> impl FnOnce(&mut NetConfig) {
    let token = token.map(str::to_string);
    move |net| {
        net.monitor = Some(MonitorSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            token,
            per_client_metrics: per_client,
            ..MonitorSettings::default()
        })
    }
}

/// A relay with the monitor on and `n` clients that all saw each other join.
fn relay_with_clients(
    n: usize,
    token: Option<&str>,
    per_client: bool,
) -> (TestRelay, Vec<mcrelay::client::Client>) {
    let relay = TestRelay::start_with(Config::default(), monitor_on(token, per_client));
    let mut clients: Vec<_> = (0..n).map(|_| relay.client()).collect();
    let last = clients[n - 1].id();
    for c in &mut clients[..n - 1] {
        let joined = wait_for(c, T, |e| matches!(e, Event::Join { id, .. } if *id == last));
        assert!(joined.is_some(), "client {} never saw {last} join", c.id());
    }
    (relay, clients)
}

/// The family names of an exposition text (`# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

fn sample(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ------------------------------------------------------------------ Prometheus

/// A real Prometheus on 127.0.0.1, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let bin = std::env::var("MCRELAY_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let found = Command::new(&bin).arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{bin} is not installed: this test needs a real Prometheus \
             (apt-get install prometheus; .ci/test installs it)"
        );
        let dir = std::env::temp_dir().join(format!(
            "mcrelay-prometheus-{}-{}",
            std::process::id(),
            target.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: mcrelay\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // The port is free when asked; another process could take it before Prometheus
        // binds it, so a start that exits at once is tried again on another port.
        for _ in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut child = Command::new(&bin)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
                .spawn()
                .expect("spawn prometheus");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(addr).is_ok() && get(addr, "/-/ready").status == 200 {
                    return Prometheus { child, addr, dir };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        panic!("prometheus did not start: {log}");
    }

    /// `GET /api/v1/...`, `"status":"success"` asserted; the `data` member.
    fn api(&self, target: &str) -> Json {
        let r = get(self.addr, target);
        assert_eq!(r.status, 200, "{target}: {}", r.body);
        let j = r.json();
        assert_eq!(j.get("status").str(), "success", "{target}: {}", r.body);
        j.get("data").clone()
    }

    /// Wait until `f` returns `Some`, or panic with `what` and Prometheus's log.
    fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
                panic!("timed out waiting for {what}; prometheus log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The value of an instant query's first sample.
    fn query(&self, expr: &str) -> Option<String> {
        let data = self.api(&format!("/api/v1/query?query={expr}"));
        let first = data.get("result").arr().first()?.clone();
        Some(first.get("value").arr()[1].str().to_string())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_real_prometheus_scrapes_the_relay() {
    let t0 = Instant::now();
    let (relay, mut clients) = relay_with_clients(2, None, false);
    clients[0].send(b"hello, prometheus").unwrap();
    let target = relay.monitor.expect("monitor on");
    let prom = Prometheus::start(target);
    let health = prom.wait("the target to be up", Duration::from_secs(30), || {
        let data = prom.api("/api/v1/targets");
        let t = data.get("activeTargets").arr().first()?.clone();
        assert_eq!(t.get("scrapeUrl").str(), format!("http://{target}/metrics"));
        (t.get("health").str() == "up").then_some(t)
    });
    assert_eq!(health.get("lastError").str(), "");
    let clients_now = prom.wait("mcrelay_clients", Duration::from_secs(15), || {
        prom.query("mcrelay_clients")
    });
    assert_eq!(clients_now, "2", "mcrelay_clients as Prometheus stored it");
    // The histograms arrive as Prometheus histograms: two handshakes, one message.
    let count = prom.wait("the handshake histogram", Duration::from_secs(15), || {
        prom.query("mcrelay_handshake_duration_seconds_count")
    });
    assert_eq!(count, "2");
    let q = "histogram_quantile(0.5,mcrelay_message_size_bytes_bucket)";
    let median = prom.wait(
        "the message size histogram",
        Duration::from_secs(15),
        || prom.query(q),
    );
    let median: f64 = median.parse().unwrap();
    assert!(
        (0.0..=64.0).contains(&median),
        "17-byte message in le=64: {median}"
    );
    drop(prom);
    drop(clients);
    relay.stop();
    eprintln!(
        "a_real_prometheus_scrapes_the_relay: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------ routes

#[test]
fn each_route_answers_with_its_status_type_and_shape() {
    let (relay, mut clients) = relay_with_clients(2, None, true);
    let msg = [b'x'; 300];
    clients[0].send(&msg).unwrap();
    let from = clients[0].id();
    let got = wait_for(
        &mut clients[1],
        T,
        |e| matches!(e, Event::Message { sender, .. } if *sender == from),
    );
    assert!(got.is_some(), "the message was relayed");
    let m = relay.monitor.unwrap();
    let mut ctl = relay.control();

    // /metrics: the families of `ctl metrics`, plus the per-client ones; promtool accepts it.
    let r = get(m, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some(METRICS_CONTENT_TYPE));
    assert_eq!(
        r.header("Content-Length").and_then(|l| l.parse().ok()),
        Some(r.body.len())
    );
    let ctl_metrics = ctl.cmd("metrics");
    let ctl_text: String = ctl_metrics[..ctl_metrics.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let mut want = families(&ctl_text);
    for f in [
        "mcrelay_client_messages_in_total",
        "mcrelay_client_bytes_in_total",
        "mcrelay_client_messages_out_total",
        "mcrelay_client_bytes_out_total",
    ] {
        want.insert(f.to_string());
    }
    assert_eq!(families(&r.body), want, "/metrics vs ctl metrics");
    assert!(
        r.body
            .contains("# TYPE mcrelay_handshake_duration_seconds histogram")
    );
    assert_eq!(sample(&r.body, "mcrelay_clients").as_deref(), Some("2"));
    assert_eq!(
        sample(&r.body, "mcrelay_handshake_duration_seconds_count").as_deref(),
        Some("2")
    );
    assert_eq!(
        sample(&r.body, "mcrelay_message_size_bytes_bucket{le=\"256\"}").as_deref(),
        Some("0")
    );
    assert_eq!(
        sample(&r.body, "mcrelay_message_size_bytes_bucket{le=\"512\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(&r.body, "mcrelay_message_size_bytes_sum").as_deref(),
        Some("300")
    );
    assert_eq!(
        sample(
            &r.body,
            &format!("mcrelay_client_messages_in_total{{client=\"{from}\"}}")
        )
        .as_deref(),
        Some("1")
    );
    promtool_check_metrics(&r.body);

    // HEAD: the same headers, no body.
    let h = request(m, "HEAD", "/metrics", "");
    assert_eq!(h.status, 200);
    assert_eq!(h.header("Content-Type"), Some(METRICS_CONTENT_TYPE));
    assert!(
        h.header("Content-Length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 1000
    );
    assert_eq!(h.body, "");

    // /healthz.
    let r = get(m, "/healthz");
    assert_eq!(
        (r.status, r.header("Content-Type")),
        (200, Some("application/json"))
    );
    let j = r.json();
    assert_eq!(j.get("status").str(), "ok");
    assert_eq!(j.get("clients").u64(), 2);
    assert!(!j.has("nats"), "no federation, no nats key");
    for k in ["max_clients", "pending_registrations", "uptime_seconds"] {
        j.get(k).u64();
    }

    // /stats: every figure of `ctl stats`, drops as an object by reason.
    let r = get(m, "/stats");
    assert_eq!(
        (r.status, r.header("Content-Type")),
        (200, Some("application/json"))
    );
    let j = r.json();
    let stats = ctl.cmd("stats");
    let mut names = 0;
    for line in &stats[..stats.len() - 1] {
        let (name, _) = line.split_once(' ').unwrap();
        match name.strip_prefix("drop.") {
            Some(reason) => j.get("drops").get(reason).u64(),
            None => j.get(name).u64(),
        };
        names += 1;
    }
    assert!(names > 40, "{stats:?}");
    assert_eq!(j.get("clients").u64(), 2);
    assert_eq!(j.get("handshakes_ok").u64(), 2);
    assert_eq!(j.get("messages_in").u64(), 1);
    assert_eq!(j.get("mode").str(), "unicast");
    let drops = j.get("drops");
    let sum: u64 = drops.keys().iter().map(|k| drops.get(k).u64()).sum();
    assert_eq!(sum, j.get("drops_total").u64());
    let hs = j.get("histograms").get("handshake_duration");
    assert_eq!(hs.get("unit").str(), "microseconds");
    assert_eq!(hs.get("count").u64(), 2);
    let buckets = hs.get("buckets").arr();
    assert_eq!(buckets.first().unwrap().get("le").u64(), 500);
    assert_eq!(buckets.last().unwrap().get("le").u64(), 1_000_000);
    let sizes = j.get("histograms").get("message_size");
    assert_eq!((sizes.get("count").u64(), sizes.get("sum").u64()), (1, 300));

    // /clients: by id, every field of `ctl clients`.
    let r = get(m, "/clients");
    assert_eq!(
        (r.status, r.header("Content-Type")),
        (200, Some("application/json"))
    );
    let j = r.json();
    assert_eq!(j.get("total").u64(), 2);
    assert_eq!(j.get("limit").u64(), CLIENTS_LIMIT as u64);
    let list = j.get("clients").arr();
    let ids: Vec<u64> = list.iter().map(|c| c.get("id").u64()).collect();
    let mut want: Vec<u64> = clients.iter().map(|c| u64::from(c.id())).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    for c in list {
        assert_eq!(
            c.keys(),
            [
                "id",
                "addr",
                "name",
                "since_s",
                "last_seen_ms",
                "msgs_in",
                "bytes_in",
                "msgs_out",
                "bytes_out"
            ]
        );
        assert!(c.get("addr").str().starts_with("127.0.0.1:"));
        assert_eq!(c.get("name"), &Json::Null);
    }
    let sender = list
        .iter()
        .find(|c| c.get("id").u64() == u64::from(from))
        .unwrap();
    assert_eq!(sender.get("msgs_in").u64(), 1);
    let bad = get(m, "/clients?limit=ten");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json().get("error").str(), "limit: not a number");

    // The examples in docs/monitoring.md have the shapes the relay serves.
    let doc_example = |heading: &str| {
        let doc = std::fs::read_to_string("docs/monitoring.md").unwrap();
        let at = doc.find(heading).unwrap_or_else(|| panic!("no {heading}"));
        let block = doc[at..].split("```json\n").nth(1).unwrap();
        Json::parse(block.split("```").next().unwrap())
    };
    let healthz = get(m, "/healthz").json();
    assert_eq!(doc_example("### `/healthz`").keys(), healthz.keys());
    let live = get(m, "/clients").json();
    let doc = doc_example("### `/clients`");
    assert_eq!(doc.keys(), live.keys());
    let entry = |j: &Json| j.get("clients").arr()[0].keys().join(",");
    assert_eq!(entry(&doc), entry(&live));
    // /stats: abridged in the doc ("..."), every key it shows is served.
    fn shown_keys_exist(doc: &Json, live: &Json, path: &str) {
        if let Json::Obj(kv) = doc {
            for (k, v) in kv.iter().filter(|(k, _)| k != "...") {
                assert!(live.has(k), "docs/monitoring.md /stats shows {path}.{k}");
                shown_keys_exist(v, live.get(k), &format!("{path}.{k}"));
            }
        }
    }
    shown_keys_exist(&doc_example("### `/stats`"), &get(m, "/stats").json(), "");

    // Anything else: 404; methods other than GET and HEAD: 405.
    for path in ["/", "/metrics/", "/Metrics", "/healthz.json", "/stats%20"] {
        let r = get(m, path);
        assert_eq!((r.status, r.body.as_str()), (404, "not found\n"), "{path}");
    }
    assert_eq!(request(m, "POST", "/metrics", "").status, 405);
    drop(clients);
    relay.stop();
}

/// `promtool check metrics` (from the `prometheus` package, as the scrape test needs).
fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn clients_are_listed_within_the_limit() {
    let (relay, clients) = relay_with_clients(3, None, false);
    let m = relay.monitor.unwrap();
    let mut ids: Vec<u64> = clients.iter().map(|c| u64::from(c.id())).collect();
    ids.sort_unstable();
    let page = |q: &str| {
        let j = get(m, &format!("/clients{q}")).json();
        let got: Vec<u64> = j
            .get("clients")
            .arr()
            .iter()
            .map(|c| c.get("id").u64())
            .collect();
        (j.get("total").u64(), j.get("limit").u64(), got)
    };
    assert_eq!(page("?limit=1"), (3, 1, vec![ids[0]]));
    assert_eq!(page("?limit=1&offset=1"), (3, 1, vec![ids[1]]));
    assert_eq!(page("?offset=2&limit=5"), (3, 5, vec![ids[2]]));
    assert_eq!(page("?offset=3"), (3, CLIENTS_LIMIT as u64, vec![]));
    assert_eq!(page("?limit=0"), (3, 0, vec![]));
    assert_eq!(
        page("?limit=100000"),
        (3, CLIENTS_LIMIT as u64, ids.clone())
    );
    let one = get(m, "/clients?limit=1").body.len();
    let all = get(m, "/clients").body.len();
    assert!(one < 300 && all > 2 * one, "{one} vs {all} bytes");
    drop(clients);
    relay.stop();
}

// ------------------------------------------------------------------ auth and start-up

#[test]
fn a_bearer_token_is_required_when_set() {
    let relay = TestRelay::start_with(Config::default(), monitor_on(Some("s3cret.T0ken"), false));
    let m = relay.monitor.unwrap();
    for extra in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Basic czNjcmV0\r\n",
    ] {
        let r = request(m, "GET", "/metrics", extra);
        assert_eq!(r.status, 401, "{extra:?}");
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some("Bearer realm=\"mcrelay\"")
        );
        assert!(!r.body.contains("mcrelay_"), "nothing leaks: {}", r.body);
    }
    for path in ["/metrics", "/healthz", "/stats", "/clients"] {
        let r = request(m, "GET", path, "Authorization: Bearer s3cret.T0ken\r\n");
        assert_eq!(r.status, 200, "{path}");
    }
    relay.stop();
}

#[test]
fn a_non_loopback_monitor_without_a_token_is_refused_at_start() {
    let poll = Poll::new().unwrap();
    let (group, port) = unique_endpoint();
    let net = NetConfig {
        group,
        port,
        control: None,
        monitor: Some(MonitorSettings {
            listen: "0.0.0.0:0".parse().unwrap(),
            ..MonitorSettings::default()
        }),
        ..NetConfig::default()
    };
    let err = Relay::builder(server_key())
        .net(net.clone())
        .build(poll.registry(), Token(1), Instant::now())
        .expect_err("refused");
    match err {
        Error::Config(e) => {
            assert_eq!(e.field, "monitor.listen");
            assert!(e.problem.contains("without a token"), "{e}");
        }
        other => panic!("not a config error: {other}"),
    }
    // The CLI names the flag and exits 64 before generating a key or binding anything.
    let out = Command::new(env!("CARGO_BIN_EXE_mcrelay"))
        .args(["serve", "--monitor", "0.0.0.0:5009", "--control", "off"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--monitor: refusing"), "{err}");
    // With a token it starts, and its tokens follow the control connections'.
    let net = NetConfig {
        monitor: Some(MonitorSettings {
            listen: "0.0.0.0:0".parse().unwrap(),
            token: Some("t0ken".into()),
            max_conns: 3,
            ..MonitorSettings::default()
        }),
        ..net
    };
    assert_eq!(Relay::tokens_needed(&net), 3 + net.max_control + 1 + 3);
    let mut relay = Relay::builder(server_key())
        .net(net.clone())
        .build(poll.registry(), Token(1), Instant::now())
        .expect("starts with a token");
    assert_eq!(relay.tokens().len, Relay::tokens_needed(&net));
    assert!(relay.monitor_addr().is_some());
    relay.shutdown(poll.registry(), Instant::now());
}

// ------------------------------------------------------------------ stopping

/// A host loop that keeps running after a stop is requested, until told to shut down.
struct Host {
    monitor: SocketAddr,
    control: SocketAddr,
    waker: Arc<Waker>,
    shutdown: Arc<AtomicBool>,
    stop_seen: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Host {
    fn start() -> Host {
        let (group, port) = unique_endpoint();
        let net = NetConfig {
            group,
            port,
            control: Some("127.0.0.1:0".parse().unwrap()),
            monitor: Some(MonitorSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..MonitorSettings::default()
            }),
            ..NetConfig::default()
        };
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::new(AtomicBool::new(false));
        let (sd, seen) = (shutdown.clone(), stop_seen.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
            let mut relay = Relay::builder(server_key())
                .net(net)
                .build(poll.registry(), Token(10), Instant::now())
                .unwrap();
            let addrs = (relay.monitor_addr().unwrap(), relay.control_addr().unwrap());
            tx.send((addrs, waker)).unwrap();
            let mut events = Events::with_capacity(64);
            while !sd.load(Ordering::SeqCst) {
                seen.store(relay.stop_requested(), Ordering::SeqCst);
                // A stop was asked for: keep serving (as a host draining for a while would),
                // without spinning on the "come back at once" of a pending stop.
                let timeout = relay
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .map(|d| d.max(Duration::from_millis(5)));
                poll.poll(&mut events, timeout).unwrap();
                let now = Instant::now();
                for ev in events.iter() {
                    relay.handle_event(poll.registry(), ev, now);
                }
                relay.handle_timeout(poll.registry(), Instant::now());
            }
            relay.shutdown(poll.registry(), Instant::now());
        });
        let ((monitor, control), waker) = rx.recv().unwrap();
        Host {
            monitor,
            control,
            waker,
            shutdown,
            stop_seen,
            thread: Some(thread),
        }
    }

    fn shut_down(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[test]
fn healthz_turns_503_once_a_stop_is_requested_and_the_port_closes_at_shutdown() {
    let mut host = Host::start();
    let m = host.monitor;
    let r = get(m, "/healthz");
    assert_eq!((r.status, r.json().get("status").str()), (200, "ok"));
    // A kept-alive connection opened before the stop.
    let mut kept = TcpStream::connect(m).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(kept, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = kept.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));

    let mut ctl = Control::connect(host.control);
    assert_eq!(ctl.cmd("shutdown").last().map(String::as_str), Some("OK"));
    let deadline = Instant::now() + T;
    while !host.stop_seen.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the stop was never requested");
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = get(m, "/healthz");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert_eq!(r.json(), Json::parse(r#"{"status":"stopping"}"#));
    // Metrics still answer while stopping (a last scrape).
    assert_eq!(get(m, "/metrics").status, 200);

    host.shut_down();
    // The kept connection is closed (EOF, not a hang) and the port no longer accepts.
    let n = kept.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(TcpStream::connect(m).is_err(), "the listener is closed");
}

// ------------------------------------------------------------------ bounded work

#[test]
fn the_relay_answers_a_bounded_number_of_requests_per_call() {
    // One thread drives the relay and reads the client side after each call into it: what
    // one call answered is what the socket holds then.
    let mut poll = Poll::new().unwrap();
    let (group, port) = unique_endpoint();
    let net = NetConfig {
        group,
        port,
        control: None,
        monitor: Some(MonitorSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..MonitorSettings::default()
        }),
        ..NetConfig::default()
    };
    let mut relay = Relay::builder(server_key())
        .net(net)
        .build(poll.registry(), Token(1), Instant::now())
        .unwrap();
    let mut c = TcpStream::connect(relay.monitor_addr().unwrap()).unwrap();
    const N: usize = 40;
    let pipelined = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(N);
    c.write_all(pipelined.as_bytes()).unwrap();
    c.set_nonblocking(true).unwrap();
    let mut received = String::new();
    let mut answered = 0;
    let mut max_per_call = 0;
    let mut calls = 0;
    let mut read_answers = |received: &mut String| {
        std::thread::sleep(Duration::from_millis(2));
        let mut buf = [0u8; 65536];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            received.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        received.matches("HTTP/1.1 200 OK").count()
    };
    let mut events = Events::with_capacity(64);
    let deadline = Instant::now() + T;
    while answered < N {
        assert!(Instant::now() < deadline, "only {answered} of {N} answered");
        poll.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        for ev in events.iter() {
            relay.handle_event(poll.registry(), ev, Instant::now());
            let now = read_answers(&mut received);
            max_per_call = max_per_call.max(now - answered);
            answered = now;
            calls += 1;
        }
        relay.handle_timeout(poll.registry(), Instant::now());
        let now = read_answers(&mut received);
        max_per_call = max_per_call.max(now - answered);
        answered = now;
        calls += 1;
    }
    assert_eq!(answered, N);
    eprintln!("{N} pipelined requests answered in {calls} calls, at most {max_per_call} per call");
    assert!(
        max_per_call <= REQUESTS_PER_TURN,
        "{max_per_call} answers in one call"
    );
    assert!(calls >= N / REQUESTS_PER_TURN, "{calls} calls");
    relay.shutdown(poll.registry(), Instant::now());
}
