//! The monitor's HTTP server on 127.0.0.1, driven from a real mio Poll on a thread with a
//! trivial router, against std `TcpStream` clients (and curl, when installed); plus property
//! tests of the request parser.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mcrelay::monitor::http::Parser;
use mcrelay::monitor::json::JsonWriter;
use mcrelay::monitor::{
    Limits, Method, MonitorConfig, MonitorServer, MonitorStats, ParseError, Request, Response,
    Version,
};
use mio::{Events, Poll};
use proptest::prelude::*;

const BIG: usize = 20 * 1024;
const METRICS: &str = "# HELP test_up Always 1.\n# TYPE test_up gauge\ntest_up 1\n";

/// What the loop saw, for the assertions on bounds.
#[derive(Debug, Default, Clone)]
struct Probe {
    turns: u64,
    served: u64,
    connections: usize,
    max_conn_queued: usize,
    max_buffered: usize,
    stats: MonitorStats,
}

struct Server {
    addr: SocketAddr,
    cfg: MonitorConfig,
    stop: Arc<AtomicBool>,
    probe: Arc<Mutex<Probe>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn probe(&self) -> Probe {
        self.probe.lock().unwrap().clone()
    }

    /// Wait until `f(probe)` holds (or panic after `limit`).
    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&Probe) -> bool) -> Probe {
        let start = Instant::now();
        loop {
            let p = self.probe();
            if f(&p) {
                return p;
            }
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}: {p:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn route(req: &Request, body: &mut String) -> (u16, &'static str) {
    body.clear();
    match req.path.as_str() {
        "/healthz" => {
            body.push_str("ok\n");
            (200, "text/plain; charset=utf-8")
        }
        "/metrics" => {
            body.push_str(METRICS);
            (200, "text/plain; version=0.0.4; charset=utf-8")
        }
        "/big" => {
            body.extend(std::iter::repeat_n('x', BIG));
            (200, "text/plain")
        }
        "/json" => {
            let mut w = JsonWriter::new(body);
            w.begin_object();
            w.field_str("path", &req.path);
            w.key("query");
            match &req.query {
                Some(q) => w.string(q),
                None => w.null(),
            }
            w.end_object();
            (200, "application/json")
        }
        _ => {
            body.push_str("not found\n");
            (404, "text/plain; charset=utf-8")
        }
    }
}

fn base_cfg() -> MonitorConfig {
    MonitorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..MonitorConfig::default()
    }
}

/// The host loop of the docs (poll, events, requests, handle_timeout) on its own thread.
fn start(cfg: MonitorConfig) -> Server {
    let mut poll = Poll::new().unwrap();
    let mut mon = MonitorServer::new(poll.registry(), cfg.clone(), 7, Instant::now()).unwrap();
    let addr = mon.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = Arc::new(Mutex::new(Probe::default()));
    let (stop2, probe2) = (stop.clone(), probe.clone());
    let thread = std::thread::spawn(move || {
        let mut events = Events::with_capacity(64);
        let mut body = String::new();
        while !stop2.load(Ordering::Relaxed) {
            let cap = Duration::from_millis(20);
            let timeout = mon.poll_timeout().map_or(cap, |t| {
                t.saturating_duration_since(Instant::now()).min(cap)
            });
            poll.poll(&mut events, Some(timeout)).unwrap();
            let now = Instant::now();
            for ev in events.iter() {
                assert!(mon.owns(ev.token()), "foreign token {:?}", ev.token());
                mon.handle_event(poll.registry(), ev, now);
            }
            let mut served = 0;
            while let Some((id, req)) = mon.poll_request() {
                assert!(matches!(req.method, Method::Get | Method::Head));
                let (status, content_type) = route(&req, &mut body);
                let resp = Response {
                    status,
                    content_type,
                    body: body.as_bytes(),
                };
                mon.respond(id, &resp);
                served += 1;
            }
            mon.handle_timeout(poll.registry(), Instant::now());
            let mut p = probe2.lock().unwrap();
            p.turns += 1;
            p.served += served;
            p.connections = mon.connections();
            p.max_conn_queued = p.max_conn_queued.max(mon.max_queued_bytes());
            p.max_buffered = p.max_buffered.max(mon.buffered_bytes());
            p.stats = mon.stats();
        }
        mon.close_all(poll.registry());
    });
    Server {
        addr,
        cfg,
        stop,
        probe,
        thread: Some(thread),
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(s)
}

/// Read one response (`head`: the request was HEAD, no body follows); None at EOF.
fn read_resp(r: &mut BufReader<TcpStream>, head: bool) -> Option<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {line:?}");
    let status = parts.next().unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        assert!(line.ends_with("\r\n"), "header line {line:?}");
        let (n, v) = l.split_once(": ").unwrap();
        headers.push((n.to_string(), v.to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = resp
        .header("Content-Length")
        .map_or(0, |v| v.parse().unwrap());
    if !head {
        resp.body.resize(len, 0);
        r.read_exact(&mut resp.body).unwrap();
    }
    Some(resp)
}

/// The connection is closed by the server (EOF or reset, nothing more to read).
fn assert_closed(r: &mut BufReader<TcpStream>) {
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "unexpected bytes {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

fn send(r: &mut BufReader<TcpStream>, bytes: &[u8]) {
    r.get_mut().write_all(bytes).unwrap();
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

fn exchange(addr: SocketAddr, raw: &[u8]) -> (Resp, BufReader<TcpStream>) {
    let mut c = connect(addr);
    send(&mut c, raw);
    let r = read_resp(&mut c, false).expect("a response");
    (r, c)
}

#[test]
fn keep_alive_and_pipelining() {
    let s = start(base_cfg());
    let mut c = connect(s.addr);
    // Three requests in one write, answered in order on one connection.
    let pipelined = format!(
        "{}HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n{}",
        get("/healthz"),
        get("/nope")
    );
    send(&mut c, pipelined.as_bytes());
    let a = read_resp(&mut c, false).unwrap();
    assert_eq!((a.status, a.text()), (200, "ok\n"));
    assert_eq!(a.header("Connection"), Some("keep-alive"));
    assert_eq!(a.header("Cache-Control"), Some("no-store"));
    let b = read_resp(&mut c, true).unwrap();
    assert_eq!(b.status, 200);
    assert_eq!(
        b.header("Content-Length"),
        Some(METRICS.len().to_string().as_str())
    );
    assert_eq!(
        b.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let n = read_resp(&mut c, false).unwrap();
    assert_eq!(n.status, 404);
    // Kept alive: later requests on the same connection, one split across writes.
    send(&mut c, b"GET /json?a=\"1\" HTTP/1.1\r\nHo");
    std::thread::sleep(Duration::from_millis(30));
    send(&mut c, b"st: t\r\n\r\n");
    let j = read_resp(&mut c, false).unwrap();
    assert_eq!(j.text(), r#"{"path":"/json","query":"a=\"1\""}"#);
    assert_eq!(j.header("Content-Type"), Some("application/json"));
    // Connection: close ends it after the response.
    send(
        &mut c,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let last = read_resp(&mut c, false).unwrap();
    assert_eq!(last.header("Connection"), Some("close"));
    assert_closed(&mut c);
    // HTTP/1.0: closed by default, kept with keep-alive.
    let (r, mut c) = exchange(s.addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert_closed(&mut c);
    let (r, mut c) = exchange(
        s.addr,
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    send(&mut c, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(read_resp(&mut c, false).unwrap().status, 200);
    assert_closed(&mut c);
    assert_eq!(s.probe().stats.bad_requests, 0);
}

#[test]
fn status_codes_and_closing_on_errors() {
    let s = start(base_cfg());
    let long = format!("/{}", "a".repeat(s.cfg.limits.max_target));
    let many: String = (0..=s.cfg.limits.max_headers)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect();
    let cases: Vec<(String, u16, bool)> = vec![
        (get("/nope"), 404, true),
        (
            "POST /healthz HTTP/1.1\r\nHost: t\r\n\r\n".into(),
            405,
            true,
        ),
        (
            "DELETE / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".into(),
            405,
            false,
        ),
        ("hello\r\n\r\n".into(), 400, false),
        ("GET / HTTP/1.1\r\n\r\n".into(), 400, false),
        (
            format!("GET {long} HTTP/1.1\r\nHost: t\r\n\r\n"),
            414,
            false,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n"),
            431,
            false,
        ),
        ("GET / HTTP/2.0\r\nHost: t\r\n\r\n".into(), 505, false),
        (
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".into(),
            413,
            false,
        ),
        (
            "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            413,
            false,
        ),
    ];
    for (raw, status, kept) in &cases {
        let (r, mut c) = exchange(s.addr, raw.as_bytes());
        assert_eq!(r.status, *status, "{raw:?}");
        if *status == 405 {
            assert_eq!(r.header("Allow"), Some("GET, HEAD"));
        }
        let conn = r.header("Connection").unwrap();
        assert_eq!(conn == "keep-alive", *kept, "{raw:?}: Connection: {conn}");
        if *kept {
            send(&mut c, get("/healthz").as_bytes());
            assert_eq!(read_resp(&mut c, false).unwrap().status, 200);
        } else {
            assert_closed(&mut c);
        }
    }
    // A head larger than the buffer, sent in one go: 431, and the close is clean (the
    // unread rest is drained, not reset) so the client reads the response.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "v".repeat(64 * 1024)
    );
    let (r, mut c) = exchange(s.addr, huge.as_bytes());
    assert_eq!(r.status, 431);
    assert_closed(&mut c);
    // The probe is taken at the end of the loop turn, maybe after the client read the close.
    let p = s.wait_for("the counters", Duration::from_secs(5), |p| {
        p.stats.bad_requests >= 8 && p.stats.bad_methods >= 2
    });
    assert_eq!(p.stats.bad_requests, 8, "{p:?}");
    assert_eq!(p.stats.bad_methods, 2, "{p:?}");
}

#[test]
fn bearer_token_is_required() {
    let s = start(MonitorConfig {
        token: Some("s3cret-T0ken".into()),
        ..base_cfg()
    });
    let (r, _c) = exchange(s.addr, get("/healthz").as_bytes());
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Bearer realm=\"mcrelay\"")
    );
    // Right token: served; the 405 comes only after authentication.
    let mut c = connect(s.addr);
    let auth = |m: &str, t: &str| {
        format!("{m} /healthz HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n")
    };
    send(&mut c, auth("GET", "s3cret-T0ken").as_bytes());
    assert_eq!(read_resp(&mut c, false).unwrap().status, 200);
    send(&mut c, auth("POST", "s3cret-T0ken").as_bytes());
    assert_eq!(read_resp(&mut c, false).unwrap().status, 405);
    send(&mut c, auth("POST", "wrong").as_bytes());
    assert_eq!(read_resp(&mut c, false).unwrap().status, 401);
    // Three failures on one connection close it.
    let mut c = connect(s.addr);
    for i in 1..=3 {
        send(&mut c, auth("GET", "s3cret-T0ke").as_bytes());
        let r = read_resp(&mut c, false).unwrap();
        assert_eq!(r.status, 401);
        let want = if i < 3 { "keep-alive" } else { "close" };
        assert_eq!(r.header("Connection"), Some(want));
    }
    assert_closed(&mut c);
    let p = s.wait_for("the counter", Duration::from_secs(5), |p| {
        p.stats.unauthorized >= 5
    });
    assert_eq!(p.stats.unauthorized, 5);
}

#[test]
fn connection_cap_answers_503() {
    let s = start(MonitorConfig {
        max_conns: 2,
        ..base_cfg()
    });
    let mut a = connect(s.addr);
    let _b = connect(s.addr);
    s.wait_for("two connections", Duration::from_secs(5), |p| {
        p.connections == 2
    });
    let mut extra = connect(s.addr);
    let r = read_resp(&mut extra, false).unwrap();
    assert_eq!((r.status, r.header("Connection")), (503, Some("close")));
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert_closed(&mut extra);
    let p = s.wait_for("the counter", Duration::from_secs(5), |p| {
        p.stats.refused >= 1
    });
    assert_eq!(p.stats.refused, 1);
    // The admitted ones still work; when one leaves, a new one is admitted.
    send(&mut a, get("/healthz").as_bytes());
    assert_eq!(read_resp(&mut a, false).unwrap().status, 200);
    drop(a);
    s.wait_for("one connection", Duration::from_secs(5), |p| {
        p.connections == 1
    });
    let (r, _c) = exchange(s.addr, get("/healthz").as_bytes());
    assert_eq!(r.status, 200);
}

#[test]
fn deadlines_close_stalled_and_idle_connections() {
    let s = start(MonitorConfig {
        request_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..base_cfg()
    });
    // Half a request, then nothing: 408 at the request deadline, then closed.
    let t = Instant::now();
    let mut half = connect(s.addr);
    send(&mut half, b"GET /healthz HTTP/1.1\r\nHo");
    let r = read_resp(&mut half, false).unwrap();
    let waited = t.elapsed();
    assert_eq!((r.status, r.header("Connection")), (408, Some("close")));
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_closed(&mut half);
    // A connection that never sends is closed silently at the request deadline.
    let t = Instant::now();
    let mut mute = connect(s.addr);
    assert_closed(&mut mute);
    assert!(
        t.elapsed() >= Duration::from_millis(280),
        "{:?}",
        t.elapsed()
    );
    // A kept-alive connection idle past idle_timeout is closed silently.
    let (r, mut idle) = exchange(s.addr, get("/healthz").as_bytes());
    assert_eq!(r.status, 200);
    let t = Instant::now();
    assert_closed(&mut idle);
    let idle_for = t.elapsed();
    assert!(
        idle_for >= Duration::from_millis(550) && idle_for < Duration::from_secs(3),
        "{idle_for:?}"
    );
    s.wait_for("no connections", Duration::from_secs(5), |p| {
        p.connections == 0
    });
    assert_eq!(s.probe().stats.timeouts, 1);
}

#[test]
fn a_pipeliner_that_never_reads_stays_within_the_output_cap() {
    let s = start(MonitorConfig {
        output_cap: 32 * 1024,
        idle_timeout: Duration::from_secs(2),
        ..base_cfg()
    });
    let mut flood = connect(s.addr);
    flood
        .get_ref()
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let request = get("/big");
    let batch = request.repeat(100);
    // Thousands of requests for a 20 KiB body each; the client never reads. Its writes
    // block (then time out) once the server stops reading it.
    let writer = std::thread::spawn(move || {
        let mut sent = 0usize;
        for _ in 0..50 {
            if flood.get_mut().write_all(batch.as_bytes()).is_err() {
                break;
            }
            sent += 100;
        }
        (flood, sent)
    });
    s.wait_for(
        "the output cap to be reached",
        Duration::from_secs(10),
        |p| p.max_conn_queued >= s.cfg.output_cap,
    );
    // Meanwhile another client is served at once.
    for _ in 0..5 {
        let t = Instant::now();
        let (r, _c) = exchange(s.addr, get("/healthz").as_bytes());
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    let (flood, sent) = writer.join().unwrap();
    assert!(
        sent >= 100,
        "the flooder could not even send its first batch"
    );
    // Bounded: queued output never passed the cap by more than one response, and buffered
    // input never passed one head buffer per connection.
    let p = s.probe();
    let one_response = BIG + 512;
    assert!(p.max_conn_queued < s.cfg.output_cap + one_response, "{p:?}");
    assert!(
        p.max_buffered <= s.cfg.max_conns * s.cfg.limits.max_head,
        "{p:?}"
    );
    assert!(
        p.served < (sent as u64),
        "served {} of {sent}: not back-pressured",
        p.served
    );
    // The flooder is closed once it has not read for idle_timeout.
    let p = s.wait_for("the flooder to be closed", Duration::from_secs(10), |p| {
        p.connections == 0
    });
    assert!(p.stats.timeouts >= 1, "{p:?}");
    drop(flood);
}

#[test]
fn a_trickler_neither_freezes_the_loop_nor_extends_its_deadline() {
    let s = start(MonitorConfig {
        request_timeout: Duration::from_millis(800),
        ..base_cfg()
    });
    let start = Instant::now();
    let mut trickle = connect(s.addr);
    trickle.get_ref().set_nodelay(true).unwrap();
    let mut reader = BufReader::new(trickle.get_ref().try_clone().unwrap());
    let t = std::thread::spawn(move || {
        // One byte every 10 ms, never a newline, until the server closes.
        let _ = trickle.get_mut().write_all(b"GET /");
        for _ in 0..500 {
            if trickle.get_mut().write_all(b"a").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // Another client is served promptly, again and again, while the trickle goes on.
    let mut c = connect(s.addr);
    for _ in 0..20 {
        let t = Instant::now();
        send(&mut c, get("/metrics").as_bytes());
        assert_eq!(read_resp(&mut c, false).unwrap().status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The trickler gets 408 at its deadline, counted from its first byte, not its last.
    let r = read_resp(&mut reader, false).unwrap();
    assert_eq!(r.status, 408);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    t.join().unwrap();
    // A flood of bytes without a newline is refused as soon as it cannot be a request line.
    let mut flood = connect(s.addr);
    let junk = vec![b'a'; 256 * 1024];
    let _ = flood.get_mut().write_all(b"GET /");
    let _ = flood.get_mut().write(&junk); // may be cut short by the close
    let r = read_resp(&mut flood, false).unwrap();
    assert_eq!(r.status, 414);
    send(&mut c, get("/healthz").as_bytes());
    assert_eq!(read_resp(&mut c, false).unwrap().status, 200);
}

#[test]
fn half_close_still_gets_its_answers() {
    let s = start(base_cfg());
    let mut c = connect(s.addr);
    send(
        &mut c,
        format!("{}{}", get("/healthz"), get("/metrics")).as_bytes(),
    );
    c.get_ref().shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_resp(&mut c, false).unwrap().status, 200);
    assert_eq!(read_resp(&mut c, false).unwrap().text(), METRICS);
    assert_closed(&mut c);
}

#[test]
fn curl_as_a_real_client() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl not installed: skipped");
        return;
    }
    let s = start(MonitorConfig {
        token: Some("tok".into()),
        ..base_cfg()
    });
    let base = format!("http://{}", s.addr);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--fail-with-body",
            "--max-time",
            "10",
            "--oauth2-bearer",
            "tok",
        ])
        .arg(format!("{base}/healthz"))
        .arg(format!("{base}/metrics"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, format!("ok\n{METRICS}"));
    // Two URLs, one connection.
    assert!(stderr.contains("Re-using existing connection"), "{stderr}");
    // HEAD, and 404 / 401 as curl sees them.
    let head = std::process::Command::new("curl")
        .args(["-sS", "-I", "--oauth2-bearer", "tok"])
        .arg(format!("{base}/metrics"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", METRICS.len())),
        "{head}"
    );
    for (args, code) in [(vec!["--oauth2-bearer", "tok"], "404"), (vec![], "401")] {
        let o = std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .arg(format!("{base}/nope"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), code);
    }
}

// ----------------------------------------------------------------------- parser properties

fn outcomes(input: &[u8], chunks: &[usize], limits: Limits) -> (Vec<String>, usize) {
    let mut p = Parser::new(limits);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut max_buffered = 0;
    let mut sizes = chunks.iter().cycle();
    while pos < input.len() && !p.failed() {
        let n = (*sizes.next().unwrap_or(&input.len())).max(1);
        let end = (pos + n).min(input.len());
        let taken = p.push(&input[pos..end]);
        pos += taken;
        max_buffered = max_buffered.max(p.buffered());
        while let Some(r) = p.next_request() {
            out.push(format!("{r:?}"));
        }
        if taken == 0 && p.room() == 0 && !p.failed() {
            panic!("parser full without a request or an error");
        }
    }
    (out, max_buffered)
}

#[derive(Debug, Clone)]
struct Gen {
    method: &'static str,
    path: String,
    query: Option<String>,
    http10: bool,
    close: bool,
    keep_alive: bool,
    bearer: Option<String>,
    extra: Vec<(String, String)>,
    lf_only: Vec<bool>,
}

fn gen_request() -> impl Strategy<Value = Gen> {
    (
        prop::sample::select(vec!["GET", "HEAD", "POST", "X-Y"]),
        "/[a-zA-Z0-9._~%!$&'()*+,;=:@-]{0,24}",
        proptest::option::of("[a-z0-9=&/?]{0,12}"),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of("[A-Za-z0-9._~+/-]{1,20}={0,2}"),
        proptest::collection::vec(("X-[A-Za-z0-9-]{1,10}", "[ -~]{0,20}"), 0..4),
        proptest::collection::vec(any::<bool>(), 8),
    )
        .prop_map(
            |(method, path, query, http10, close, keep_alive, bearer, extra, lf_only)| Gen {
                method,
                path,
                query,
                http10,
                close,
                keep_alive,
                bearer,
                extra,
                lf_only,
            },
        )
}

fn render(g: &Gen) -> String {
    let mut lines = vec![format!(
        "{} {}{} HTTP/1.{}",
        g.method,
        g.path,
        g.query
            .as_ref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default(),
        if g.http10 { 0 } else { 1 }
    )];
    if !g.http10 {
        lines.push("Host: example".into());
    }
    if g.close {
        lines.push("Connection: close".into());
    } else if g.keep_alive {
        lines.push("connection: Keep-Alive".into());
    }
    if let Some(b) = &g.bearer {
        lines.push(format!("Authorization: Bearer {b}"));
    }
    for (n, v) in &g.extra {
        lines.push(format!("{n}:{v}"));
    }
    lines.push(String::new());
    let mut s = String::new();
    for (i, l) in lines.iter().enumerate() {
        s.push_str(l);
        s.push_str(if g.lf_only[i % g.lf_only.len()] {
            "\n"
        } else {
            "\r\n"
        });
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes, arbitrary chunking: no panic, the same outcomes whatever the chunks,
    /// the buffer within max_head, nothing after an error.
    #[test]
    fn any_bytes_any_chunks(
        prefix in proptest::option::of(Just(b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec())),
        body in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\n'), Just(b'\r'), Just(b' '), Just(b':')], 0..600),
        chunks in proptest::collection::vec(1usize..40, 1..8),
    ) {
        let mut input = prefix.unwrap_or_default();
        input.extend_from_slice(&body);
        let limits = Limits { max_target: 64, max_head: 256, max_headers: 8 };
        let (whole, _) = outcomes(&input, &[input.len().max(1)], limits);
        let (chunked, max_buffered) = outcomes(&input, &chunks, limits);
        prop_assert_eq!(&whole, &chunked);
        prop_assert!(max_buffered <= limits.max_head);
        let errors = whole.iter().filter(|o| o.starts_with("Err")).count();
        prop_assert!(errors <= 1);
        if errors == 1 {
            prop_assert!(whole.last().unwrap().starts_with("Err"));
        }
    }

    /// Generated pipelines of valid heads, split anywhere, parse back to what was rendered.
    #[test]
    fn generated_requests_round_trip(
        reqs in proptest::collection::vec(gen_request(), 1..6),
        chunks in proptest::collection::vec(1usize..64, 1..6),
    ) {
        let input: String = reqs.iter().map(render).collect();
        let mut p = Parser::new(Limits::default());
        let mut got: Vec<Result<Request, ParseError>> = Vec::new();
        let bytes = input.as_bytes();
        let (mut pos, mut sizes) = (0, chunks.iter().cycle());
        while pos < bytes.len() {
            let end = (pos + sizes.next().unwrap()).min(bytes.len());
            pos += p.push(&bytes[pos..end]);
            while let Some(r) = p.next_request() {
                got.push(r);
            }
        }
        prop_assert_eq!(got.len(), reqs.len());
        prop_assert_eq!(p.buffered(), 0);
        for (g, r) in reqs.iter().zip(&got) {
            let r = r.as_ref().unwrap();
            let method = match g.method { "GET" => Method::Get, "HEAD" => Method::Head, _ => Method::Other };
            prop_assert_eq!(r.method, method);
            prop_assert_eq!(&r.path, &g.path);
            prop_assert_eq!(&r.query, &g.query);
            prop_assert_eq!(&r.bearer, &g.bearer);
            prop_assert_eq!(r.version, if g.http10 { Version::Http10 } else { Version::Http11 });
            let ka = !g.close && (!g.http10 || g.keep_alive);
            prop_assert_eq!(r.keep_alive, ka);
        }
    }
}
