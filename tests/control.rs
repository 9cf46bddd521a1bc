//! The control port against a live in-process relay on loopback (docs/control.md).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mcrelay::client::Event;
use mcrelay::core::Config;

fn assert_ok(reply: &[String]) {
    assert_eq!(
        reply.last().map(String::as_str),
        Some("OK"),
        "reply: {reply:?}"
    );
}

fn assert_err(reply: &[String], contains: &str) {
    let last = reply.last().expect("a terminator");
    assert!(
        last.starts_with("ERR ") && last.contains(contains),
        "expected ERR ..{contains}.., got {reply:?}"
    );
    assert_eq!(
        reply.len(),
        1,
        "an error is the terminator alone: {reply:?}"
    );
}

/// Read until the peer closes the connection (or 5 s pass); returns whether it closed.
fn closes(r: &mut BufReader<TcpStream>) -> bool {
    let deadline = Instant::now() + T;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn two_operators_help_and_errors_keep_the_connection_usable() {
    let relay = TestRelay::start(Config::default());
    let mut a = relay.control();
    let mut b = relay.control();
    // Interleaved: both connected at once, each gets its own replies.
    writeln!(a.w, "ping").unwrap();
    writeln!(b.w, "stats").unwrap();
    assert_ok(&a.read_reply());
    let s = b.read_reply();
    assert_ok(&s);
    assert!(s.iter().any(|l| l.starts_with("clients ")), "{s:?}");

    let help = a.cmd("help");
    assert_ok(&help);
    for cmd in [
        "help", "auth", "stats", "clients", "kick", "metrics", "config", "log", "ping", "shutdown",
        "quit",
    ] {
        assert!(
            help.iter()
                .any(|l| l.split_whitespace().next() == Some(cmd)),
            "help lacks {cmd}: {help:?}"
        );
    }

    assert_err(&a.cmd("frobnicate"), "unknown command");
    assert_err(&a.cmd("kick"), "usage");
    assert_err(&a.cmd("kick 1 2"), "usage");
    assert_err(&a.cmd("stats now"), "usage");
    assert_err(&a.cmd("kick bob"), "not a client id");
    assert_err(&a.cmd("log level loud"), "unknown log level");
    assert_err(&a.cmd(""), "empty");
    // 1024 bytes is still a line (an unknown command); 1025 is too long.
    assert_err(&a.cmd(&"x".repeat(1024)), "unknown command");
    let long = a.cmd(&"y".repeat(5000));
    assert_err(&long, "line longer than 1024 bytes");
    assert_ok(&a.cmd("ping"));
    assert_ok(&b.cmd("ping"));
    // quit closes this connection only.
    assert_ok(&b.cmd("quit"));
    assert!(closes(&mut b.r));
    assert_ok(&a.cmd("stats"));
}

#[test]
fn operators_beyond_max_control_are_refused_politely() {
    let relay = TestRelay::start_with(Config::default(), |net| net.max_control = 2);
    let mut a = relay.control();
    let _b = relay.control();
    let s = TcpStream::connect(relay.control).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "ERR too many control connections\n");
    assert!(closes(&mut r));
    assert_ok(&a.cmd("ping"));
}

#[test]
fn log_lines_are_marked_and_off_until_asked() {
    let relay = TestRelay::start(Config::default());
    let mut quiet = relay.control();
    let mut loud = relay.control();
    assert_ok(&loud.cmd("log on"));
    // Each new operator is an info line; the tap is shared by parallel tests, so retry.
    let deadline = Instant::now() + T;
    let mut seen = None;
    while seen.is_none() && Instant::now() < deadline {
        drop(relay.control());
        writeln!(loud.w, "ping").unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            loud.r.read_line(&mut line).unwrap();
            if line.starts_with("LOG ") && line.contains("operator connected") {
                seen = Some(line.clone());
            }
            if line == "OK\n" {
                break;
            }
        }
    }
    let seen = seen.expect("a LOG line");
    assert!(seen.contains(" INFO "), "{seen:?}");
    // The quiet operator got replies only.
    writeln!(quiet.w, "ping").unwrap();
    let mut line = String::new();
    quiet.r.read_line(&mut line).unwrap();
    assert_eq!(line, "OK\n");
    assert_ok(&loud.cmd("log off"));
}

#[test]
fn pipelined_commands_then_half_close_are_all_answered() {
    let relay = TestRelay::start(Config::default());
    let mut s = TcpStream::connect(relay.control).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut script = String::new();
    for _ in 0..200 {
        script.push_str("ping\n");
    }
    script.push_str("stats\n");
    s.write_all(script.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    // Greeting OK + 200 pings + stats.
    assert_eq!(all.lines().filter(|l| *l == "OK").count(), 202, "{all}");
    assert!(all.lines().any(|l| l.starts_with("deliveries ")), "{all}");
}

fn token_relay(token: &str) -> TestRelay {
    let t = token.to_string();
    TestRelay::start_with(Config::default(), move |net| net.control_token = Some(t))
}

fn raw_connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>, Vec<String>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut c = Control {
        w: s.try_clone().unwrap(),
        r: BufReader::new(s),
    };
    let greeting = c.read_reply();
    (c.w, c.r, greeting)
}

#[test]
fn auth_is_required_and_enforced() {
    let relay = token_relay("s3cret-token");
    let (w, r, greeting) = raw_connect(relay.control);
    assert!(greeting[0].contains("auth <token>"), "{greeting:?}");
    let mut c = Control { w, r };
    assert_err(&c.cmd("stats"), "authentication required");
    assert_err(&c.cmd("shutdown"), "authentication required");
    assert_err(&c.cmd("log on"), "authentication required");
    assert_ok(&c.cmd("help"));
    assert_ok(&c.cmd("ping"));
    assert_err(&c.cmd("auth nope"), "authentication failed");
    assert_ok(&c.cmd("auth s3cret-token"));
    let s = c.cmd("stats");
    assert_ok(&s);
    assert!(s.iter().any(|l| l.starts_with("deliveries ")));
    // The token never shows in config.
    let cfg = c.cmd("config");
    assert!(cfg.iter().any(|l| l == "control_auth on"), "{cfg:?}");
    assert!(!cfg.iter().any(|l| l.contains("s3cret")), "{cfg:?}");

    // Three wrong attempts close the connection.
    let (w, r, _) = raw_connect(relay.control);
    let mut c = Control { w, r };
    for _ in 0..3 {
        assert_err(&c.cmd("auth wrong"), "authentication failed");
    }
    assert!(closes(&mut c.r), "closed after 3 failures");

    // Pipelined attempts in one write do not get past the limit either.
    let (mut w, r, _) = raw_connect(relay.control);
    w.write_all(b"auth a\nauth b\nauth c\nauth s3cret-token\nstats\n")
        .unwrap();
    let mut c = Control { w, r };
    for _ in 0..3 {
        assert_err(&c.read_reply(), "authentication failed");
    }
    // After the lockout the rest of the input is ignored and the connection closes.
    let mut rest = String::new();
    let _ = c.r.read_to_string(&mut rest);
    assert!(
        !rest.contains("OK") && !rest.contains("uptime"),
        "after 3 failures nothing runs: {rest:?}"
    );
}

#[test]
fn reply_shapes_stats_clients_metrics_config() {
    let relay = TestRelay::start(Config::default());
    let mut a = relay.client();
    let b = relay.client();
    let bid = b.id();
    assert!(
        wait_for(&mut a, T, |e| *e
            == Event::Join {
                id: bid,
                name: None
            })
        .is_some()
    );
    let mut c = relay.control();

    let stats = c.cmd("stats");
    assert_ok(&stats);
    let body = &stats[..stats.len() - 1];
    for l in body {
        let parts: Vec<&str> = l.split(' ').collect();
        assert_eq!(parts.len(), 2, "`name value`: {l:?}");
        assert!(parts[1].parse::<u64>().is_ok(), "integer value: {l:?}");
    }
    let has = |name: &str| body.iter().any(|l| l.split(' ').next() == Some(name));
    for name in [
        "uptime_seconds",
        "clients",
        "peak_clients",
        "deliveries",
        "handshakes_ok",
        "drops_total",
        "drop.replay",
    ] {
        assert!(has(name), "stats lacks {name}: {body:?}");
    }
    assert_eq!(c.stat("clients"), 2);
    assert_eq!(c.stat("handshakes_ok"), 2);

    let clients = c.cmd("clients");
    assert_ok(&clients);
    assert_eq!(clients.len(), 3, "{clients:?}");
    for (l, id) in clients.iter().zip([a.id(), bid]) {
        assert!(l.starts_with(&format!("id={id} addr=127.0.0.1:")), "{l:?}");
        for key in [
            "name=",
            "since=",
            "last_seen=",
            "msgs_in=",
            "bytes_in=",
            "msgs_out=",
            "bytes_out=",
        ] {
            assert!(l.contains(key), "{l:?} lacks {key}");
        }
    }

    let metrics = c.cmd("metrics");
    assert_ok(&metrics);
    let m = &metrics[..metrics.len() - 1];
    assert!(
        m.iter().any(|l| l == "# TYPE mcrelay_clients gauge"),
        "{m:?}"
    );
    assert!(m.iter().any(|l| l == "mcrelay_clients 2"), "{m:?}");
    assert!(m.iter().any(|l| l == "# TYPE mcrelay_drops_total counter"));
    assert!(
        m.iter()
            .any(|l| l.starts_with("mcrelay_drops_total{reason=\"replay\"} "))
    );
    for l in m {
        if l.starts_with('#') {
            assert!(
                l.starts_with("# HELP mcrelay_") || l.starts_with("# TYPE mcrelay_"),
                "{l:?}"
            );
        } else {
            let (name, v) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("mcrelay_"), "{l:?}");
            assert!(v.parse::<f64>().is_ok(), "{l:?}");
        }
    }

    let cfg = c.cmd("config");
    assert_ok(&cfg);
    assert!(cfg.contains(&format!("group {}", relay.group)), "{cfg:?}");
    assert!(cfg.contains(&format!("port {}", relay.port)), "{cfg:?}");
    assert!(cfg.iter().any(|l| l == "control_auth off"));
}

#[test]
fn kick_by_id_and_by_address() {
    let relay = TestRelay::start(Config::default());
    let mut a = relay.client();
    let mut b = relay.client();
    let mut c = relay.client();
    let (bid, cid) = (b.id(), c.id());
    assert!(
        wait_for(&mut a, T, |e| *e
            == Event::Join {
                id: cid,
                name: None
            })
        .is_some()
    );
    let mut ctl = relay.control();

    let r = ctl.cmd(&format!("kick {bid}"));
    assert_eq!(r, vec![format!("kicked {bid}"), "OK".to_string()]);
    assert_eq!(
        wait_for(&mut b, T, |e| matches!(e, Event::Closed { .. })),
        Some(Event::Closed { reason: 3 })
    );
    for x in [&mut a, &mut c] {
        assert_eq!(
            wait_for(x, T, |e| matches!(e, Event::Leave { .. })),
            Some(Event::Leave { id: bid, reason: 3 })
        );
    }

    // By address, as `clients` shows it.
    let list = ctl.cmd("clients");
    let line = list
        .iter()
        .find(|l| l.starts_with(&format!("id={cid} ")))
        .expect("c listed");
    let addr = line
        .split(' ')
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .to_string();
    let r = ctl.cmd(&format!("kick {addr}"));
    assert_eq!(r, vec![format!("kicked {cid}"), "OK".to_string()]);
    assert_eq!(
        wait_for(&mut c, T, |e| matches!(e, Event::Closed { .. })),
        Some(Event::Closed { reason: 3 })
    );
    assert_eq!(
        wait_for(&mut a, T, |e| matches!(e, Event::Leave { .. })),
        Some(Event::Leave { id: cid, reason: 3 })
    );

    assert_err(&ctl.cmd("kick 999999"), "no such client");
    assert_err(&ctl.cmd(&format!("kick {bid}")), "no such client");
    assert_err(&ctl.cmd("kick 127.0.0.1:1"), "no such client");
    assert_eq!(ctl.stat("clients"), 1);
}

/// A stalled operator with the debug log on, while a garbage flood makes the relay log one
/// debug line per datagram and two clients exchange 2,000 messages.
///
/// What is asserted, and why it cannot pass trivially:
/// - every message arrives (the loop was never blocked by the stalled connection);
/// - a second, reading operator sees far more log output than the stalled one can ever hold:
///   after the flood, everything the stalled connection can still deliver (the relay's queue
///   plus both kernel buffers) is drained and must stay under a bound — the 64 KiB log budget
///   plus the socket buffers — while the reader got several times that;
/// - the stalled operator is then told how many lines were dropped for it.
#[test]
fn stalled_operator_with_debug_log_does_not_hurt_delivery_and_stays_bounded() {
    let relay = TestRelay::start(Config::default());
    let mut a = relay.client();
    let mut b = relay.client();
    let bid = b.id();
    assert!(
        wait_for(&mut a, T, |e| *e
            == Event::Join {
                id: bid,
                name: None
            })
        .is_some()
    );

    // The stalled operator: a small receive buffer, `log level debug`, then it stops reading.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&relay.control.into()).unwrap();
    let rcvbuf = sock.recv_buffer_size().unwrap();
    let stalled: TcpStream = sock.into();
    stalled.set_read_timeout(Some(T)).unwrap();
    let mut stalled = Control {
        w: stalled.try_clone().unwrap(),
        r: BufReader::new(stalled),
    };
    stalled.read_reply();
    assert_ok(&stalled.cmd("log level debug"));

    // The reading operator, on its own thread, counts the log bytes it receives.
    let mut reader = relay.control();
    assert_ok(&reader.cmd("log level debug"));
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, mut rr) = (stop.clone(), reader.r);
    rr.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let reader_bytes = Arc::new(AtomicUsize::new(0));
    let rb = reader_bytes.clone();
    let reading = std::thread::spawn(move || {
        let mut line = String::new();
        while !stop2.load(Ordering::SeqCst) {
            line.clear();
            match rr.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) if line.starts_with("LOG ") => {
                    rb.fetch_add(line.len(), Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });

    // The flood: undecodable datagrams to the group, each one a debug line in the relay.
    let flood_stop = Arc::new(AtomicBool::new(false));
    let (fs2, group) = (flood_stop.clone(), relay.group_addr());
    let flooder = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&s)
            .set_multicast_if_v4(&std::net::Ipv4Addr::LOCALHOST)
            .unwrap();
        s.set_multicast_ttl_v4(0).unwrap();
        let junk = [0xEEu8; 40];
        let mut n = 0u64;
        while !fs2.load(Ordering::SeqCst) {
            let _ = s.send_to(&junk, group);
            n += 1;
            if n.is_multiple_of(64) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        n
    });

    // 2,000 messages, a to b and b to a, each checked on arrival (lock-step windows of 50).
    let mut got_b = 0;
    let mut got_a = 0;
    for round in 0..20 {
        for i in 0..50 {
            a.send(format!("a{round}-{i}").as_bytes()).unwrap();
            b.send(format!("b{round}-{i}").as_bytes()).unwrap();
        }
        for i in 0..50 {
            let (from, data) = b.recv_message(T).unwrap().expect("b receives");
            assert_eq!((from, data), (a.id(), format!("a{round}-{i}").into_bytes()));
            got_b += 1;
            let (from, data) = a.recv_message(T).unwrap().expect("a receives");
            assert_eq!((from, data), (bid, format!("b{round}-{i}").into_bytes()));
            got_a += 1;
        }
    }
    assert_eq!((got_a, got_b), (1000, 1000));
    // Keep flooding until the log volume is well beyond what the stalled connection could
    // hold if the relay bounds it: the kernel's share (the relay's send buffer autotunes up to
    // tcp_wmem's maximum, plus our receive buffer) and the relay's share (64 KiB log budget;
    // we allow the whole 1 MiB OUTPUT_CAP).
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20);
    let bound = wmem_max + 2 * rcvbuf + (1 << 20);
    let deadline = Instant::now() + Duration::from_secs(12);
    while reader_bytes.load(Ordering::SeqCst) < 2 * bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let datagrams = {
        flood_stop.store(true, Ordering::SeqCst);
        flooder.join().unwrap()
    };
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    reading.join().unwrap();
    let reader_bytes = reader_bytes.load(Ordering::SeqCst);

    // Everything the stalled connection can still give us, without blocking on more.
    stalled
        .r
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut drained = stalled.r.buffer().len();
    stalled.r.consume(drained);
    let mut buf = vec![0u8; 65536];
    loop {
        match stalled.r.get_mut().read(&mut buf) {
            Ok(0) => panic!("the stalled operator was disconnected; it should only lose log lines"),
            Ok(n) => drained += n,
            Err(_) => break,
        }
    }
    eprintln!(
        "flood: {datagrams} datagrams; reader got {reader_bytes} log bytes; stalled drained {drained}"
    );
    assert!(
        drained < bound,
        "stalled backlog {drained} bytes exceeds {bound}"
    );
    assert!(
        reader_bytes > bound + drained,
        "the flood ({reader_bytes} B) must dwarf the stalled backlog ({drained} B)"
    );

    // Now reading again, the stalled operator is told what it missed, and still works.
    stalled.r.get_ref().set_read_timeout(Some(T)).unwrap();
    writeln!(stalled.w, "ping").unwrap();
    let mut told = false;
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stalled.r.read_line(&mut line).unwrap() > 0, "closed");
        if line.contains("log lines dropped") {
            told = true;
        }
        if line.trim_end() == "OK" && told {
            break;
        }
        if line.trim_end() == "OK" {
            // ping answered before a new log line arrived: make one.
            relay.control();
            writeln!(stalled.w, "ping").unwrap();
        }
    }
    assert!(told);
    assert_ok(&stalled.cmd("log off"));
    assert_eq!(reader.w.write(b"quit\n").unwrap(), 5);
    let stats = relay.stop();
    assert_eq!(stats.deliveries, 2000);
}

// ------------------------------------------------------------------ the docs' example session

/// Wildcard rule for comparing a reply line with the docs: in both, every whitespace-separated
/// word (or the value after `name=`) made of 32 or more hex digits becomes `<hex>`, then every
/// run of decimal digits becomes `#`; the results must be equal. So numbers, addresses, ids,
/// durations and fingerprints may differ; names, keys, order and punctuation may not. A doc
/// line `...` matches any number of reply lines (used to shorten long replies).
fn normalize(line: &str) -> String {
    let words: Vec<String> = line
        .split(' ')
        .map(|w| {
            let (k, v) = match w.split_once('=') {
                Some((k, v)) => (format!("{k}="), v),
                None => (String::new(), w),
            };
            if v.len() >= 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                format!("{k}<hex>")
            } else {
                w.to_string()
            }
        })
        .collect();
    let mut out = String::new();
    let mut in_digits = false;
    for ch in words.join(" ").chars() {
        if ch.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(ch);
            in_digits = false;
        }
    }
    out
}

struct Step {
    command: Option<String>,
    expect: Vec<String>,
}

/// The fenced block that starts with ```` ```session ```` in docs/control.md: `> ` lines are
/// what the operator types, the lines after each (up to the next `> `) are the relay's reply.
/// The lines before the first `> ` are the greeting.
fn doc_session() -> Vec<Step> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/control.md"))
        .expect("docs/control.md");
    let mut lines = doc.lines().skip_while(|l| l.trim() != "```session").skip(1);
    let mut steps = vec![Step {
        command: None,
        expect: vec![],
    }];
    for l in lines.by_ref() {
        if l.trim() == "```" {
            break;
        }
        if let Some(cmd) = l.strip_prefix("> ") {
            steps.push(Step {
                command: Some(cmd.to_string()),
                expect: vec![],
            });
        } else {
            steps.last_mut().unwrap().expect.push(l.to_string());
        }
    }
    assert!(steps.len() > 5, "docs/control.md has a ```session block");
    steps
}

fn matches(expect: &[String], got: &[String]) -> bool {
    match expect.split_first() {
        None => got.is_empty(),
        Some((e, rest)) if e == "..." => (0..=got.len()).any(|skip| matches(rest, &got[skip..])),
        Some((e, rest)) => {
            got.first().is_some_and(|g| normalize(e) == normalize(g)) && matches(rest, &got[1..])
        }
    }
}

#[test]
fn the_docs_example_session_matches_a_live_relay() {
    let steps = doc_session();
    // The session authenticates with the token it shows.
    let token = steps
        .iter()
        .find_map(|s| s.command.as_deref().and_then(|c| c.strip_prefix("auth ")))
        .expect("the session shows auth")
        .to_string();
    let relay = token_relay(&token);
    // Two clients are connected, as in the session.
    let mut a = relay.client();
    let b = relay.client();
    let bid = b.id();
    assert!(
        wait_for(&mut a, T, |e| *e
            == Event::Join {
                id: bid,
                name: None
            })
        .is_some()
    );
    a.send(b"hello").unwrap();

    let s = TcpStream::connect(relay.control).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut c = Control {
        w: s.try_clone().unwrap(),
        r: BufReader::new(s),
    };
    let mut transcript = String::new();
    let mut failures = vec![];
    for step in &steps {
        let reply = match &step.command {
            None => c.read_reply(),
            Some(cmd) => {
                // `kick <id>` names the second client, whatever id it got here.
                let cmd = match cmd.strip_prefix("kick ") {
                    Some(_) => format!("kick {bid}"),
                    None => cmd.clone(),
                };
                transcript.push_str(&format!("> {cmd}\n"));
                c.cmd(&cmd)
            }
        };
        for l in &reply {
            transcript.push_str(l);
            transcript.push('\n');
        }
        if !matches(&step.expect, &reply) {
            failures.push(format!(
                "after {:?}:\n  doc:  {:?}\n  live: {:?}",
                step.command, step.expect, reply
            ));
        }
    }
    if std::env::var_os("MCRELAY_PRINT_SESSION").is_some() {
        eprintln!("{transcript}");
    }
    assert!(
        failures.is_empty(),
        "docs/control.md session differs from the relay:\n{}",
        failures.join("\n")
    );
}

#[test]
fn normalize_rule() {
    assert_eq!(
        normalize("id=3 addr=127.0.0.1:40312 since=12s"),
        "id=# addr=#.#.#.#:# since=#s"
    );
    assert_eq!(
        normalize(&format!("key_fingerprint {}", "ab12".repeat(16))),
        "key_fingerprint <hex>"
    );
    assert_ne!(normalize("clients 2"), normalize("client 2"));
}

#[test]
fn shutdown_tells_clients_and_every_operator() {
    let relay = TestRelay::start(Config::default());
    let mut a = relay.client();
    let mut other = relay.control();
    let mut c = relay.control();
    assert_eq!(
        c.cmd("shutdown"),
        vec!["shutting down".to_string(), "OK".to_string()]
    );
    assert_eq!(
        wait_for(&mut a, T, |e| *e == Event::Shutdown),
        Some(Event::Shutdown)
    );
    for op in [&mut c, &mut other] {
        let mut rest = String::new();
        op.r.read_to_string(&mut rest).unwrap();
        assert!(
            rest.lines().any(|l| l == "LOG INFO relay stopped"),
            "{rest:?}"
        );
    }
    relay.join();
}
