//! The real `mcrelay` binary on loopback: help, usage errors, serve + ctl + client, signals,
//! sd_notify. Everything stays on 127.0.0.1 with TTL 0.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::{key_pem, unique_endpoint};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mcrelay"));
    // Nothing from the caller's environment leaks into the flags under test.
    for (k, _) in std::env::vars() {
        if k.starts_with("MCRELAY_") || k == "RUST_LOG" || k == "NOTIFY_SOCKET" {
            c.env_remove(k);
        }
    }
    c
}

fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mcrelay")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tmpdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("mcrelay-cli-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The shared test key in a 0600 file (no RSA generation per serve).
fn key_file(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("relay.pem");
    std::fs::write(&p, key_pem()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Lines of a child's stream, delivered through a channel by a thread.
fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait for a line satisfying `pred`; returns it (and panics with what was seen otherwise).
fn expect_line(rx: &Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = vec![];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return l,
            Ok(l) => seen.push(l),
            Err(_) => break,
        }
    }
    panic!("no {what}; saw {seen:?}");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Serve {
    child: Child,
    stderr: Receiver<String>,
    group: String,
    port: String,
    control: String,
    fingerprint: String,
    _dir: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serve(extra_env: &[(&str, &str)]) -> Serve {
    let dir = tmpdir("serve");
    let (group, port) = unique_endpoint();
    let control = format!("127.0.0.1:{}", free_port());
    let mut cmd = bin();
    cmd.args([
        "serve",
        "--group",
        &group.to_string(),
        "--port",
        &port.to_string(),
        "--iface",
        "127.0.0.1",
    ])
    .args([
        "--control",
        &control,
        "--key-file",
        key_file(&dir).to_str().unwrap(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn serve");
    let stderr = lines_of(child.stderr.take().unwrap());
    let line = expect_line(&stderr, "fingerprint log line", |l| {
        l.contains("relay key fingerprint")
    });
    let fingerprint = line.rsplit(' ').next().unwrap().to_string();
    assert_eq!(fingerprint.len(), 64, "{line}");
    // `2026-11-26T11:46:25.949Z INFO  [mcrelay] ...` (docs/operations.md, "Logs").
    let (ts, rest) = line.split_at(24);
    let shape: String = ts
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999Z", "{line}");
    assert!(rest.starts_with(" INFO  [mcrelay"), "{line}");
    Serve {
        child,
        stderr,
        group: group.to_string(),
        port: port.to_string(),
        control,
        fingerprint,
        _dir: dir,
    }
}

impl Serve {
    fn ctl(&self, words: &[&str]) -> Output {
        bin()
            .args(["ctl", "--control", &self.control])
            .args(words)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn client(&self) -> (Child, ChildStdin, Receiver<String>) {
        let mut child = bin()
            .args([
                "client",
                "--group",
                &self.group,
                "--port",
                &self.port,
                "--iface",
                "127.0.0.1",
                "--ttl",
                "0",
            ])
            .args([
                "--known-relays",
                "off",
                "--server-fingerprint",
                &self.fingerprint,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn client");
        let stdin = child.stdin.take().unwrap();
        let out = lines_of(child.stdout.take().unwrap());
        (child, stdin, out)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_mentions_every_flag() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let main = text(&out.stdout);
    for c in ["serve", "client", "ctl", "keygen"] {
        assert!(main.contains(c), "main help lacks {c}");
    }
    let cases: &[(&str, &[&str])] = &[
        (
            "serve",
            &[
                "--group",
                "MCRELAY_GROUP",
                "--port",
                "--iface",
                "--control",
                "MCRELAY_CONTROL",
                "--control-token-file",
                "MCRELAY_CONTROL_TOKEN",
                "--max-control",
                "--key-file",
                "--key-bits",
                "--client-timeout",
                "MCRELAY_CLIENT_TIMEOUT",
                "--keepalive",
                "--max-clients",
                "--reassembly-timeout",
                "--reassembly-per-client",
                "--reassembly-client-bytes",
                "--reassembly-total-bytes",
                "--token-ttl",
                "--max-clock-skew",
                "--handshakes-per-sec",
                "--handshakes-per-source",
                "--clients-file",
                "--log-level",
            ],
        ),
        (
            "client",
            &[
                "--group",
                "--port",
                "--iface",
                "--ttl",
                "--server-fingerprint",
                "--known-relays",
                "--name",
                "--token",
                "--timeout",
                "--log-level",
            ],
        ),
        (
            "ctl",
            &[
                "--control",
                "--token-file",
                "MCRELAY_CONTROL_TOKEN",
                "--follow",
                "--level",
            ],
        ),
        ("keygen", &["--key-file", "--key-bits"]),
    ];
    for (cmd, flags) in cases {
        let out = run(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help: {out:?}");
        let help = text(&out.stdout);
        for f in *flags {
            assert!(help.contains(f), "`{cmd} --help` does not mention {f}");
        }
    }
}

#[test]
fn bad_flags_exit_64_with_a_one_line_reason() {
    for args in [
        &["serve", "--port", "notaport"][..],
        &["serve", "--bogus"],
        &["serve", "--client-timeout", "soon"],
        &["ctl", "--control", "nowhere"],
        // No name lookups: only address literals and localhost.
        &["ctl", "--control", "relay.example:5008"],
        &["serve", "--client-timeout", "1e3"],
        // Refused before any work (no key is generated first): issue 13.
        &["serve", "--group", "10.0.0.1"],
        &["serve", "--key-bits", "1024"],
        &["serve", "--port", "0"],
        &["serve", "--handshake-cpu-percent", "0"],
        &["serve", "--max-clients-per-source", "0"],
        &["frobnicate"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line, got {err:?}"
        );
        assert!(err.starts_with("mcrelay"), "{args:?}: {err:?}");
    }
    let err = text(&run(&["serve", "--port", "notaport"]).stderr);
    assert!(err.contains("--port"), "{err}");
    let err = text(&run(&["serve", "--bogus"]).stderr);
    assert!(err.contains("--bogus"), "{err}");
    for (flag, value) in [
        ("--group", "10.0.0.1"),
        ("--key-bits", "1024"),
        ("--port", "0"),
    ] {
        let out = run(&["serve", flag, value, "--control", "off"]);
        let err = text(&out.stderr);
        assert!(err.contains(flag), "{flag}: {err}");
        assert!(
            !err.contains("generat"),
            "{flag}: work started first: {err}"
        );
    }
}

#[test]
fn a_client_with_no_relay_says_what_it_waits_for_and_gives_up_with_status_2() {
    let port = free_port().to_string();
    let t0 = Instant::now();
    let out = bin()
        .args([
            "client",
            "--port",
            &port,
            "--ttl",
            "0",
            "--known-relays",
            "off",
        ])
        .args(["--timeout", "4s"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    println!("after {:?}: {err}", t0.elapsed());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(err.contains("waiting"), "no waiting message: {err}");
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.contains("no answer from a relay")),
        "last line names the reason: {err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn ctl_exit_codes() {
    let s = serve(&[]);
    let out = s.ctl(&["stats"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("clients ")),
        "{stdout}"
    );
    assert!(
        !stdout.lines().any(|l| l == "OK"),
        "the terminator is not printed: {stdout}"
    );

    let out = s.ctl(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("ERR unknown command"), "{out:?}");

    let out = s.ctl(&["kick", "4242"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // `localhost:PORT` is 127.0.0.1:PORT, without a name lookup.
    let port = s.control.rsplit(':').next().unwrap();
    let out = bin()
        .args(["ctl", "--control", &format!("localhost:{port}"), "ping"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // A port nobody listens on.
    let closed = format!("127.0.0.1:{}", free_port());
    let out = bin()
        .args(["ctl", "--control", &closed, "stats"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("cannot connect"), "{out:?}");
}

#[test]
fn two_clients_chat_then_sigterm_stops_everyone_with_status_0() {
    let mut s = serve(&[]);
    let (mut c1, mut in1, out1) = s.client();
    let r1 = expect_line(&out1, "client 1 ready", |l| l.starts_with("ready "));
    assert!(r1.ends_with(&s.fingerprint), "{r1}");
    let id1 = r1.split(' ').nth(1).unwrap().to_string();
    let (mut c2, mut in2, out2) = s.client();
    let r2 = expect_line(&out2, "client 2 ready", |l| l.starts_with("ready "));
    let id2 = r2.split(' ').nth(1).unwrap().to_string();
    expect_line(&out1, "join of client 2", |l| l == format!("join {id2}"));

    writeln!(in1, "hello over the relay").unwrap();
    in1.flush().unwrap();
    expect_line(&out2, "the message", |l| {
        l == format!("msg {id1} hello over the relay")
    });
    writeln!(in2, "tab\there").unwrap();
    expect_line(&out1, "the reply", |l| l == format!("msg {id2} tab\\there"));

    // SIGTERM to serve: graceful.
    let rc = unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    assert_eq!(
        wait_exit(&mut s.child, Duration::from_secs(5)).code(),
        Some(0)
    );
    expect_line(&s.stderr, "a signal log line", |l| {
        l.contains("signal") && l.contains("shutting down")
    });
    for (c, out) in [(&mut c1, &out1), (&mut c2, &out2)] {
        expect_line(out, "shutdown notice", |l| l == "shutdown");
        assert_eq!(wait_exit(c, Duration::from_secs(5)).code(), Some(0));
    }
    drop((in1, in2));
}

#[test]
fn ctl_shutdown_stops_serve_with_status_0_and_sd_notify_is_told() {
    let dir = tmpdir("notify");
    let sock_path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut s = serve(&[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 datagram");
    assert_eq!(&buf[..n], b"READY=1");
    // READY means ready: the control port answers right away.
    let (mut c1, _in1, out1) = s.client();
    expect_line(&out1, "client ready", |l| l.starts_with("ready "));

    let out = s.ctl(&["shutdown"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("shutting down"), "{out:?}");
    let n = sock.recv(&mut buf).expect("STOPPING=1 datagram");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(
        wait_exit(&mut s.child, Duration::from_secs(5)).code(),
        Some(0)
    );
    expect_line(&out1, "shutdown notice", |l| l == "shutdown");
    assert_eq!(wait_exit(&mut c1, Duration::from_secs(5)).code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn control_on_a_non_loopback_address_needs_a_token() {
    let dir = tmpdir("open");
    let (group, port) = unique_endpoint();
    let control = format!("0.0.0.0:{}", free_port());
    let out = bin()
        .args([
            "serve",
            "--group",
            &group.to_string(),
            "--port",
            &port.to_string(),
            "--iface",
            "127.0.0.1",
        ])
        .args([
            "--control",
            &control,
            "--key-file",
            key_file(&dir).to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("without a token") && err.contains("MCRELAY_CONTROL_TOKEN"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_remembers_a_relay_key_and_refuses_a_changed_one() {
    let dir = tmpdir("known");
    let known = dir.join("known_relays");
    let first = serve(&[]);
    let client = |group: &str, port: &str| {
        bin()
            .args([
                "client",
                "--group",
                group,
                "--port",
                port,
                "--iface",
                "127.0.0.1",
                "--ttl",
                "0",
            ])
            .args(["--known-relays", known.to_str().unwrap(), "--timeout", "5s"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // First contact: trusted, printed, remembered; stdin EOF ends the session cleanly.
    let out = client(&first.group, &first.port);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ready "),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains(&first.fingerprint),
        "{}",
        text(&out.stderr)
    );
    let remembered = std::fs::read_to_string(&known).unwrap();
    assert_eq!(
        remembered.trim(),
        format!("{}:{} {}", first.group, first.port, first.fingerprint)
    );
    // Same relay again: accepted silently.
    let out = client(&first.group, &first.port);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (group, port) = (first.group.clone(), first.port.clone());
    drop(first);

    // Another key at the same group and port: refused with exit status 3.
    let control = format!("127.0.0.1:{}", free_port());
    let mut other = bin()
        .args([
            "serve",
            "--group",
            &group,
            "--port",
            &port,
            "--iface",
            "127.0.0.1",
            "--control",
            &control,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines_of(other.stderr.take().unwrap());
    expect_line(&stderr, "fingerprint log line", |l| {
        l.contains("relay key fingerprint")
    });
    let out = client(&group, &port);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("ready"));
    let _ = other.kill();
    let _ = other.wait();
}

#[test]
fn serve_outlives_its_log_reader() {
    use std::io::BufRead;
    let dir = tmpdir("stderr");
    let (group, port) = unique_endpoint();
    let control = format!("127.0.0.1:{}", free_port());
    let mut child = bin()
        .args([
            "serve",
            "--group",
            &group.to_string(),
            "--port",
            &port.to_string(),
        ])
        .args(["--iface", "127.0.0.1", "--control", &control])
        .args(["--key-file", key_file(&dir).to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("relay key fingerprint") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "serve ended early");
    }
    // The log reader goes away (a closed pipe, as when a log collector dies).
    drop(err);
    // Each control connection logs lines that now have nowhere to go.
    for _ in 0..3 {
        let out = bin()
            .args(["ctl", "--control", &control, "stats"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "relay died with its log reader: {}",
            text(&out.stderr)
        );
    }
    let out = bin()
        .args(["ctl", "--control", &control, "shutdown"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}
