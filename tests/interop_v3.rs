//! Interop with an independent version-3 client: `tests/interop/v3client.py`, written from
//! docs/protocol.md alone, runs against the real `mcrelay serve` binary (unicast and group
//! mode) beside the reference client (`mcrelay client`) and a version-2 Python client; and
//! `tests/interop/minimal_client.py`, the example of docs/clients.md, does the same.
//!
//! These tests need `python3` with the `cryptography` package (the README's test command
//! installs it); they fail, never skip, without it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Control, unique_endpoint};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_mcrelay");
const V3: &str = "tests/interop/v3client.py";
const MINIMAL: &str = "tests/interop/minimal_client.py";
/// How long any one expected line may take.
const WAIT: Duration = Duration::from_secs(15);
/// The relay's timers in these tests (WELCOME tells the clients): loss is noticed in ~4 s.
const TIMERS: [&str; 4] = ["--client-timeout", "4s", "--keepalive", "1s"];

fn python_with_cryptography() {
    static OK: OnceLock<()> = OnceLock::new();
    OK.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import cryptography"])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "these tests need python3 with the `cryptography` package: \
                 run `python3 -m pip install 'cryptography>=41'` (bash .ci/test does)"
            ),
        }
    });
}

/// One relay key for the whole test binary: (PKCS#8 PEM, fingerprint hex), made by
/// `mcrelay keygen` (each relay gets a copy in a file of its own, removed once it started).
fn relay_key() -> &'static (String, String) {
    static KEY: OnceLock<(String, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let path = temp_path("keygen.pem");
        let out = Command::new(BIN)
            .args(["keygen", "--key-file", path.to_str().unwrap()])
            .output()
            .expect("mcrelay keygen");
        assert!(out.status.success(), "keygen: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let fp = text
            .split_whitespace()
            .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or_else(|| panic!("no fingerprint in keygen output {text:?}"))
            .to_string();
        let pem = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        (pem, fp)
    })
}

fn fingerprint() -> &'static str {
    &relay_key().1
}

/// A fresh path in the temporary directory, unique to this process and call.
fn temp_path(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "mcrelay-interop-v3-{}-{n}-{what}",
        std::process::id()
    ))
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sha16(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The v3client's `sendfile n` pattern (byte i = 'a' + i % 26).
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Lines of a child's pipe, collected by a thread.
fn collect(pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
}

/// The real relay, `mcrelay serve`, as a child process.
struct Relay {
    child: Child,
    group: Ipv4Addr,
    port: u16,
    control: SocketAddr,
    args: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    fn start(extra: &[&str]) -> Relay {
        let (group, port) = unique_endpoint();
        Relay::start_on(group, port, extra.iter().map(|s| s.to_string()).collect())
    }

    /// A relay on this group and port (a restart keeps both, and the key).
    fn start_on(group: Ipv4Addr, port: u16, args: Vec<String>) -> Relay {
        let control: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let key_file = temp_path("relay.pem");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .and_then(|mut f| f.write_all(relay_key().0.as_bytes()))
            .expect("write the relay key");
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--group", &group.to_string(), "--port", &port.to_string()])
            .args(["--iface", "127.0.0.1", "--ttl", "0", "--log-level", "warn"])
            .args(["--control", &control.to_string()])
            .args(["--key-file", key_file.to_str().unwrap()])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mcrelay serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        collect(child.stderr.take().unwrap(), log.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(control).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("relay exited: {st}; log: {:?}", log.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "relay did not open its control port"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&key_file);
        Relay {
            child,
            group,
            port,
            control,
            args,
            log,
        }
    }

    fn ctl(&self, cmd: &str) -> Vec<String> {
        Control::connect(self.control).cmd(cmd)
    }

    /// `stats` as a map.
    fn stats(&self) -> std::collections::HashMap<String, u64> {
        Control::connect(self.control).stats_map()
    }

    /// A crash: SIGKILL, the clients are told nothing.
    fn kill(mut self) -> (Ipv4Addr, u16, Vec<String>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.group, self.port, std::mem::take(&mut self.args))
    }

    /// The operator's `shutdown`: the clients get SHUTDOWN; waits for the process to end.
    fn shutdown(mut self) -> (Ipv4Addr, u16, Vec<String>) {
        assert_eq!(self.ctl("shutdown").last().unwrap(), "OK");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "relay did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        (self.group, self.port, std::mem::take(&mut self.args))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("relay log: {:#?}", self.log.lock().unwrap());
        }
    }
}

/// A client process whose stdout lines are events.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every line read so far, in order.
    seen: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stderr.take().unwrap(), stderr.clone());
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The independent client (`extra`: e.g. `--max-version 2`, `--name N --token T`).
    fn py(relay: &Relay, name: &str, extra: &[&str]) -> Proc {
        python_with_cryptography();
        let mut cmd = Command::new("python3");
        cmd.arg(V3)
            .args(["--group", &relay.group.to_string()])
            .args(["--port", &relay.port.to_string()])
            .args(["--iface", "127.0.0.1", "--ttl", "0", "--pin", fingerprint()])
            .arg("--verbose")
            .args(extra);
        Proc::spawn(name, cmd)
    }

    /// The reference client, `mcrelay client`.
    fn reference(relay: &Relay, name: &str, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.arg("client")
            .args(["--group", &relay.group.to_string()])
            .args(["--port", &relay.port.to_string()])
            .args(["--iface", "127.0.0.1", "--ttl", "0"])
            .args([
                "--server-fingerprint",
                fingerprint(),
                "--known-relays",
                "off",
            ])
            .args(extra);
        Proc::spawn(name, cmd)
    }

    fn fail(&self, what: &str) -> ! {
        let cut = |l: &String| l.chars().take(160).collect::<String>();
        let err = self.stderr.lock().unwrap();
        let tail: Vec<String> = err[err.len().saturating_sub(40)..]
            .iter()
            .map(cut)
            .collect();
        let out: Vec<String> = self.seen.iter().map(cut).collect();
        panic!(
            "{}: {what}\nstdout so far: {out:#?}\nstderr (tail): {tail:#?}",
            self.name
        );
    }

    /// The next line matching `pred` (others are kept in `seen` and skipped).
    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("no line {what} within {WAIT:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("stdout closed while waiting for {what}"))
                }
            }
        }
    }

    fn expect_eq(&mut self, line: &str) {
        self.expect(&format!("{line:?}"), |l| l == line);
    }

    /// `line`, unless it was already read (skipped while waiting for something else).
    fn saw_or_expect(&mut self, line: &str) {
        if !self.seen.iter().any(|l| l == line) {
            self.expect_eq(line);
        }
    }

    fn expect_prefix(&mut self, prefix: &str) -> String {
        self.expect(&format!("starting {prefix:?}"), |l| l.starts_with(prefix))
    }

    /// `ready <id> ...`: the id.
    fn ready(&mut self) -> u32 {
        let l = self.expect_prefix("ready ");
        l.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// Read whatever arrives for `d`.
    fn drain(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l);
        }
    }

    fn send(&mut self, line: &str) {
        let name = self.name.clone();
        let stdin = self.stdin.as_mut().expect("stdin open");
        if writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .is_err()
        {
            self.fail(&format!("{name} took no more input"));
        }
    }

    /// The v3client's `stats` line as key/value pairs.
    fn stats(&mut self) -> std::collections::HashMap<String, String> {
        self.send("stats");
        let l = self.expect_prefix("stats ");
        l.split(' ')
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn stat(&mut self, k: &str) -> u64 {
        self.stats()[k].parse().unwrap()
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                self.fail("did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines after the first one equal to `marker`.
    fn after(&self, marker: &str) -> Vec<String> {
        let i = self.seen.iter().position(|l| l == marker).unwrap();
        self.seen[i + 1..].to_vec()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // MCRELAY_INTEROP_DUMP=1 shows what every client printed (and logged, with =2).
        if let Ok(v) = std::env::var("MCRELAY_INTEROP_DUMP") {
            let cut = |l: &String| l.chars().take(160).collect::<String>();
            let out: Vec<String> = self.seen.iter().map(cut).collect();
            eprintln!("== {} stdout: {out:#?}", self.name);
            if v == "2" {
                let err: Vec<String> = self.stderr.lock().unwrap().iter().map(cut).collect();
                eprintln!("== {} stderr: {err:#?}", self.name);
            }
        }
    }
}

/// What a Python client prints for a message.
fn msg_line(sender: u32, data: &[u8], name: Option<&str>) -> String {
    let mut l = format!("msg {sender} {} {}", data.len(), sha16(data));
    if let Some(n) = name {
        l.push(' ');
        l.push_str(n);
    }
    l
}

/// What the reference client prints for a message (text without escapes).
fn ref_msg(sender: u32, text: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("msg {sender}@{n} {text}"),
        None => format!("msg {sender} {text}"),
    }
}

/// The relay dropped nothing that a correct client sends (REJECTed handshakes aside).
fn assert_clean(relay: &Relay) {
    let st = relay.stats();
    for k in [
        "drop.malformed_truncated",
        "drop.malformed_unknown_type",
        "drop.malformed_value",
        "drop.malformed_trailing_data",
        "drop.malformed_sequence",
        "drop.malformed_empty",
        "drop.unexpected_type",
        "drop.bad_token",
        "drop.replay",
        "drop.fragment_invalid",
        "drop.fragment_duplicate",
        "drop.reassembly_timeout",
    ] {
        assert_eq!(st[k], 0, "{k}: {st:?}");
    }
}

/// Every `msg` line of a client once only (once-only delivery, §12.5).
fn assert_no_duplicate_messages(p: &Proc) {
    let mut msgs: Vec<&String> = p.seen.iter().filter(|l| l.starts_with("msg ")).collect();
    let n = msgs.len();
    msgs.sort();
    msgs.dedup();
    assert_eq!(
        msgs.len(),
        n,
        "{}: a message delivered twice: {:#?}",
        p.name,
        p.seen
    );
}

#[test]
fn vectors_computed_by_the_python_client_equal_protocol_md() {
    python_with_cryptography();
    let out = Command::new("python3")
        .args([V3, "--vectors"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = String::from_utf8(out.stdout).unwrap();
    let doc = std::fs::read_to_string("docs/protocol.md").unwrap();
    let block: Vec<&str> = doc
        .split("```vectors\n")
        .nth(1)
        .expect("a vectors block in protocol.md")
        .split("```")
        .next()
        .unwrap()
        .lines()
        .collect();
    let ours: Vec<&str> = ours.lines().collect();
    for (i, (d, o)) in block.iter().zip(&ours).enumerate() {
        assert_eq!(d, o, "line {} of the vectors block", i + 1);
    }
    assert_eq!(block.len(), ours.len(), "number of vector lines");
    // The version-3 lines are all there (this list is what the brief calls version 3).
    for name in [
        "hello_v3 ",
        "cookie_v3 ",
        "no_session ",
        "welcome_v3.datagram_v3 ",
        "welcome_group.datagram_v3 ",
        "members.datagram_v3 ",
        "group_key.datagram_v3 ",
        "key_ack.datagram_v3 ",
        "key_pull.datagram_v3 ",
        "relayed_copy.datagram_v3 ",
        "frag_piece.datagram_v3 ",
        "group_hi.datagram ",
        "group_key_2 ",
        "group_key_3 ",
    ] {
        assert!(ours.iter().any(|l| l.starts_with(name)), "{name}missing");
    }
}

#[test]
fn unicast_mode_python_v3_and_v2_clients_beside_the_reference_client() {
    let clients = temp_path("clients");
    std::fs::write(
        &clients,
        "alice pw-a\nbob pw-b\ndave pw-d\nref pw-r\nerin pw-e\n",
    )
    .unwrap();
    let mut args: Vec<&str> = TIMERS.to_vec();
    args.extend(["--clients-file", clients.to_str().unwrap()]);
    let relay = Relay::start(&args);

    // Admission: a wrong token earns REJECT(6) three times, then the client gives up.
    let mut x = Proc::py(&relay, "mallory", &["--name", "alice", "--token", "nope"]);
    x.expect_prefix("error handshake: REJECT 6");
    assert_eq!(x.wait_exit(Duration::from_secs(5)).code(), Some(2));

    let mut a = Proc::py(&relay, "A", &["--name", "alice", "--token", "pw-a"]);
    let a_id = a.ready();
    let line = a.seen.last().unwrap();
    assert!(
        line.ends_with(&format!(" 3 {} alice", fingerprint())),
        "{line}"
    );
    a.expect_eq("members 0");
    let mut b = Proc::py(&relay, "B", &["--name", "bob", "--token", "pw-b"]);
    let b_id = b.ready();
    b.expect_eq(&format!("present {a_id} alice"));
    b.expect_eq("members 1");
    a.expect_eq(&format!("join {b_id} bob"));
    let mut d = Proc::py(
        &relay,
        "D",
        &["--name", "dave", "--token", "pw-d", "--max-version", "2"],
    );
    let d_id = d.ready();
    let line = d.seen.last().unwrap();
    assert!(line.contains(" 2 "), "D speaks version 2: {line}");
    for p in [&mut a, &mut b] {
        p.expect_eq(&format!("join {d_id} dave"));
    }
    let mut r = Proc::reference(&relay, "R", &["--name", "ref", "--token", "pw-r"]);
    let r_id = r.ready();
    for (id, n) in [(a_id, "alice"), (b_id, "bob"), (d_id, "dave")] {
        r.saw_or_expect(&format!("present {id}@{n}")); // in no documented order
    }
    for p in [&mut a, &mut b, &mut d] {
        p.expect_eq(&format!("join {r_id} ref"));
    }

    // A version-1 client (base64 text tokens) joins last.
    let mut e = Proc::py(
        &relay,
        "E",
        &["--name", "erin", "--token", "pw-e", "--max-version", "1"],
    );
    let e_id = e.ready();
    let line = e.seen.last().unwrap();
    assert!(line.contains(" 1 "), "E speaks version 1: {line}");
    for p in [&mut a, &mut b, &mut d] {
        p.expect_eq(&format!("join {e_id} erin"));
    }
    r.expect_eq(&format!("join {e_id}@erin"));

    // Short messages both ways, across versions.
    a.send("send hello from alice");
    let hello = b"hello from alice";
    b.expect_eq(&msg_line(a_id, hello, Some("alice")));
    d.expect_eq(&msg_line(a_id, hello, Some("alice")));
    r.expect_eq(&ref_msg(a_id, "hello from alice", Some("alice")));
    r.send("hello from ref");
    for p in [&mut a, &mut b, &mut d] {
        p.expect_eq(&msg_line(r_id, b"hello from ref", Some("ref")));
    }
    d.send("send hello from a v2 client");
    for p in [&mut a, &mut b] {
        p.expect_eq(&msg_line(d_id, b"hello from a v2 client", Some("dave")));
    }
    r.expect_eq(&ref_msg(d_id, "hello from a v2 client", Some("dave")));

    // 60 KB both ways: sealed FRAG pieces (v3) and binary FRAGMENTs (v2) each way.
    let big = pattern(60_000);
    let big_text = String::from_utf8(big.clone()).unwrap();
    a.send("sendfile 60000");
    b.expect_eq(&msg_line(a_id, &big, Some("alice")));
    d.expect_eq(&msg_line(a_id, &big, Some("alice")));
    r.expect_eq(&ref_msg(a_id, &big_text, Some("alice")));
    r.send(&big_text);
    for p in [&mut a, &mut b, &mut d] {
        p.expect_eq(&msg_line(r_id, &big, Some("ref")));
    }
    d.send("sendfile 60000");
    a.expect_eq(&msg_line(d_id, &big, Some("dave")));
    r.expect_eq(&ref_msg(d_id, &big_text, Some("dave")));
    // Version 1: the 60 KB message as base64 FRAGMENTs, both ways.
    e.expect_eq(&msg_line(a_id, &big, Some("alice")));
    e.send("sendfile 60000");
    a.expect_eq(&msg_line(e_id, &big, Some("erin")));
    r.expect_eq(&ref_msg(e_id, &big_text, Some("erin")));
    e.send("quit");
    e.expect_eq("closed 1");
    assert!(e.wait_exit(Duration::from_secs(5)).success());
    a.expect_eq(&format!("leave {e_id} 1"));

    // A kick: the kicked one is told CLOSED(3), the others LEAVE(id, 3).
    assert_eq!(
        relay.ctl(&format!("kick {b_id}")),
        [format!("kicked {b_id}"), "OK".into()]
    );
    b.expect_eq("closed 3");
    a.expect_eq(&format!("leave {b_id} 3"));
    d.expect_eq(&format!("leave {b_id} 3"));
    r.expect_eq(&format!("leave {b_id} kicked"));
    a.send("send after the kick");
    d.expect_eq(&msg_line(a_id, b"after the kick", Some("alice")));
    b.drain(Duration::from_millis(300));
    assert!(
        !b.after("closed 3").iter().any(|l| l.starts_with("msg ")),
        "{:?}",
        b.seen
    );
    assert_clean(&relay);

    // A failing uplink: A still hears everything, the relay hears nothing from A and times it
    // out. When A speaks again the relay answers NO_SESSION (from the reply address A knows);
    // A checks it with a KEEPALIVE, gets no answer within 1 s, and registers again.
    a.send("mute");
    let gone = format!("leave {a_id} timeout");
    let deadline = Instant::now() + WAIT;
    while !r.seen.contains(&gone) {
        assert!(Instant::now() < deadline, "the relay never timed A out");
        d.send("send tick");
        r.drain(Duration::from_millis(250));
    }
    d.expect_eq(&format!("leave {a_id} 2"));
    a.send("unmute");
    a.expect_eq("lost no-session");
    let a_id = a.ready();
    r.expect_eq(&format!("join {a_id}@alice"));
    d.expect_eq(&format!("join {a_id} alice"));
    assert!(relay.stats()["no_session_notices"] >= 1);

    // An operator restart: SHUTDOWN, then a new relay on the same group and port. The Python
    // clients register again (the reference client ends at SHUTDOWN).
    let (g, p, args) = relay.shutdown();
    for q in [&mut a, &mut d] {
        q.expect_eq("shutdown");
        q.expect_eq("lost shutdown");
    }
    r.expect_eq("shutdown");
    let relay = Relay::start_on(g, p, args);
    let a_id = a.ready();
    let d_id = d.ready();
    a.send("send after the restart");
    d.expect_eq(&msg_line(a_id, b"after the restart", Some("alice")));

    // A crash: nothing is told; the clients notice the silence and register again.
    let (g, p, args) = relay.kill();
    let relay = Relay::start_on(g, p, args);
    let t0 = Instant::now();
    a.expect_prefix("lost ");
    d.expect_prefix("lost ");
    let a_id2 = a.ready();
    let d_id2 = d.ready();
    assert!(t0.elapsed() < Duration::from_secs(10));
    d.send("send v2 after the crash");
    a.expect_eq(&msg_line(d_id2, b"v2 after the crash", Some("dave")));
    let _ = (a_id2, d_id);

    // Quit: DISCONNECT, CLOSED(1), exit 0.
    a.send("quit");
    a.expect_eq("closed 1");
    assert!(a.wait_exit(Duration::from_secs(5)).success());
    d.expect_eq(&format!("leave {a_id2} 1"));
    drop(relay);
    let _ = std::fs::remove_file(&clients);
}

#[test]
fn group_mode_python_clients_epochs_kick_rekey_and_restart() {
    let mut args: Vec<&str> = TIMERS.to_vec();
    args.extend(["--distribution", "group"]);
    let relay = Relay::start(&args);
    let dist = format!("{}:{}", relay.group, relay.port + 1);
    let group_line = |l: &str| l.starts_with(&format!("group {dist} "));
    let epoch_of = |l: &str| -> u32 { l.rsplit(' ').next().unwrap().parse().unwrap() };

    let mut a = Proc::py(&relay, "A", &[]);
    let a_id = a.ready();
    a.expect_eq("members 0");
    let e = epoch_of(&a.expect("a group line", group_line));
    assert!(e >= 1);
    let mut b = Proc::py(&relay, "B", &[]);
    let b_id = b.ready();
    b.expect_eq(&format!("present {a_id}"));
    b.expect("a group line", group_line);
    let mut c = Proc::py(&relay, "C", &[]);
    let c_id = c.ready();
    c.expect("a group line", group_line);
    let mut d = Proc::py(&relay, "D", &["--max-version", "2"]);
    let d_id = d.ready();
    let mut r = Proc::reference(&relay, "R", &[]);
    let r_id = r.ready();
    a.expect_eq(&format!("join {b_id}"));
    a.expect_eq(&format!("join {c_id}"));
    b.expect_eq(&format!("join {c_id}"));
    for id in [d_id, r_id] {
        for p in [&mut a, &mut b, &mut c] {
            p.expect_eq(&format!("join {id}"));
        }
    }

    // Short and 60 KB messages both ways; each delivered once although a member may get an
    // item twice (on the group and in its channel while a key travels).
    let big = pattern(60_000);
    let big_text = String::from_utf8(big.clone()).unwrap();
    for i in 0..3 {
        let text = format!("short {i} from A");
        a.send(&format!("send {text}"));
        for p in [&mut b, &mut c, &mut d] {
            p.expect_eq(&msg_line(a_id, text.as_bytes(), None));
        }
        r.expect_eq(&ref_msg(a_id, &text, None));
    }
    a.send("sendfile 60000");
    for p in [&mut b, &mut c, &mut d] {
        p.expect_eq(&msg_line(a_id, &big, None));
    }
    r.expect_eq(&ref_msg(a_id, &big_text, None));
    r.send("from the reference");
    r.send(&big_text);
    for p in [&mut a, &mut b, &mut c, &mut d] {
        p.expect_eq(&msg_line(r_id, b"from the reference", None));
        p.expect_eq(&msg_line(r_id, &big, None));
    }
    d.send("sendfile 60000");
    for p in [&mut a, &mut b, &mut c] {
        p.expect_eq(&msg_line(d_id, &big, None));
    }
    r.expect_eq(&ref_msg(d_id, &big_text, None));
    let st = a.stats();
    assert!(st["group_open"].parse::<u64>().unwrap() > 50, "{st:?}");
    // Nobody waits for a KEY_ACK: members do not acknowledge the epochs they ratchet to.
    assert_eq!(relay.stats()["group_pending_acks"], 0);

    // A datagram on the distribution group from anyone but the relay is dropped unread.
    let forger = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    forger.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    forger.set_multicast_ttl_v4(0).unwrap();
    forger.set_multicast_loop_v4(true).unwrap();
    let mut fake = vec![0x00, 0x09, 0x00, 0x59, 0, 0, 0, 9];
    fake.extend([0x80; 0x55]);
    let to: SocketAddr = dist.parse().unwrap();
    forger.send_to(&fake, &to.into()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.stat("group_foreign") == 0 {
        assert!(Instant::now() < deadline, "A never saw the forged datagram");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Kick C: it is told CLOSED(3); the others see LEAVE(C, 3) and move to a fresh epoch.
    // C still hears the group, but cannot read the fresh epoch and prints no message.
    let before = c.stats();
    let epoch_before = a.stats()["epoch"].parse::<u32>().unwrap();
    assert_eq!(
        relay.ctl(&format!("kick {c_id}")),
        [format!("kicked {c_id}"), "OK".into()]
    );
    c.expect_eq("closed 3");
    for p in [&mut a, &mut b, &mut d] {
        p.expect_eq(&format!("leave {c_id} 3"));
    }
    r.expect_eq(&format!("leave {c_id} kicked"));
    let fresh = epoch_of(&a.expect("a fresh epoch", |l| {
        group_line(l) && epoch_of(l) > epoch_before
    }));
    for i in 0..3 {
        let text = format!("after the kick {i}");
        a.send(&format!("send {text}"));
        b.expect_eq(&msg_line(a_id, text.as_bytes(), None));
        d.expect_eq(&msg_line(a_id, text.as_bytes(), None));
        r.expect_eq(&ref_msg(a_id, &text, None));
    }
    c.drain(Duration::from_millis(300));
    let after = c.stats();
    let n =
        |m: &std::collections::HashMap<String, String>, k: &str| -> u64 { m[k].parse().unwrap() };
    assert!(
        n(&after, "group_rx") > n(&before, "group_rx"),
        "{before:?} {after:?}"
    );
    assert!(
        n(&after, "group_sealed") > n(&before, "group_sealed"),
        "{after:?}"
    );
    assert_eq!(after["state"], "closed");
    assert!(
        n(&after, "epoch") < fresh as u64,
        "C learnt the fresh key: {after:?}"
    );
    assert!(
        !c.after("closed 3").iter().any(|l| l.starts_with("msg ")),
        "{:?}",
        c.seen
    );

    // The operator's rekey: a fresh epoch, messages keep arriving. B loses the first three
    // deliveries of the new key: it reads A's messages from the copies in its channel, pulls
    // the key when it sees the new epoch on the group, and reads the group again.
    b.send("ignore-keys 3");
    let _ = b.stats(); // the hook is in place
    let reply = relay.ctl("rekey");
    assert_eq!(reply.len(), 2, "{reply:?}");
    let epoch: u32 = reply[0].strip_prefix("epoch ").unwrap().parse().unwrap();
    assert!(epoch > fresh);
    a.expect_eq(&format!("group {dist} {epoch}"));
    for i in 0..5 {
        let text = format!("after the rekey {i}");
        a.send(&format!("send {text}"));
        b.expect_eq(&msg_line(a_id, text.as_bytes(), None));
        d.expect_eq(&msg_line(a_id, text.as_bytes(), None));
        r.expect_eq(&ref_msg(a_id, &text, None));
        std::thread::sleep(Duration::from_millis(150));
    }
    b.saw_or_expect(&format!("group {dist} {epoch}"));
    let installed = Instant::now(); // by A long before, by B just now
    assert!(b.stat("key_pulls") >= 1, "B never pulled the key");
    assert!(
        relay.stats()["key_pulls"] >= 1,
        "the relay answered no key pull"
    );
    r.send("reference after the rekey");
    for p in [&mut a, &mut b, &mut d] {
        p.expect_eq(&msg_line(r_id, b"reference after the rekey", None));
    }
    assert_clean(&relay);
    for p in [&a, &b, &c, &d] {
        assert_no_duplicate_messages(p);
    }
    // The grace period: the previous epoch's key is erased grace_ms (2 s) after the new one.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(installed.elapsed()));
    for p in [&mut a, &mut b] {
        assert_eq!(p.stats()["keys"], epoch.to_string(), "{}", p.name);
    }

    // A crash and a new relay on the same group and port: the members notice the silence,
    // register again, learn the new reply address and read the group again.
    let (g, p, args) = relay.kill();
    let relay = Relay::start_on(g, p, args);
    for q in [&mut a, &mut b, &mut d] {
        q.expect_prefix("lost ");
    }
    r.expect_prefix("lost ");
    let a_id = a.ready();
    a.expect("a group line", group_line);
    let b_id = b.ready();
    b.expect("a group line", group_line);
    let _ = d.ready();
    let r_id = r.ready();
    a.send("send after the crash");
    b.expect_eq(&msg_line(a_id, b"after the crash", None));
    r.expect_eq(&ref_msg(a_id, "after the crash", None));
    r.send("reference after the crash");
    a.expect_eq(&msg_line(r_id, b"reference after the crash", None));
    b.expect_eq(&msg_line(r_id, b"reference after the crash", None));
    let _ = b_id;
    for p in [&a, &b, &d] {
        assert_no_duplicate_messages(p);
    }
    drop(relay);
}

#[test]
fn the_minimal_client_of_clients_md_works_and_is_the_file() {
    python_with_cryptography();
    let doc = std::fs::read_to_string("docs/clients.md").unwrap();
    let file = std::fs::read_to_string(MINIMAL).unwrap();
    let block = doc
        .split("```python\n")
        .nth(1)
        .expect("a python block in docs/clients.md")
        .split("\n```")
        .next()
        .unwrap();
    assert_eq!(
        format!("{block}\n"),
        file,
        "docs/clients.md's example and {MINIMAL} differ"
    );

    let relay = Relay::start(&[]);
    let mut r = Proc::reference(&relay, "R", &[]);
    let r_id = r.ready();
    let mut cmd = Command::new("python3");
    cmd.arg(MINIMAL)
        .args([relay.group.to_string(), relay.port.to_string()])
        .arg(fingerprint());
    let mut m = Proc::spawn("minimal", cmd);
    let m_id = m.ready();
    m.expect_eq(&format!("present {r_id}"));
    r.expect_eq(&format!("join {m_id}"));
    m.send("hello from the minimal client");
    r.expect_eq(&ref_msg(m_id, "hello from the minimal client", None));
    r.send("hello minimal");
    m.expect_eq(&format!("msg {r_id} hello minimal"));
    let big = String::from_utf8(pattern(20_000)).unwrap();
    r.send(&big);
    m.expect_eq(&format!("msg {r_id} {big}"));
    drop(m.stdin.take());
    m.expect_eq("closed 1");
    assert!(m.wait_exit(Duration::from_secs(5)).success());
    r.expect_eq(&format!("leave {m_id} disconnect"));
}

#[test]
fn relay_full_backs_off_then_gives_up_and_a_place_frees() {
    let relay = Relay::start(&["--max-clients", "1"]);
    let mut a = Proc::py(&relay, "A", &[]);
    a.ready();
    // REJECT(5): back off 1, 2, 4 s (a REJECT(5) during a back-off is ignored) until the
    // 3.5 s deadline: three HELLOs at most, where the plain schedule would make four.
    let mut x = Proc::py(&relay, "X", &["--timeout", "3.5"]);
    x.expect_prefix("error handshake: no WELCOME");
    assert_eq!(x.wait_exit(Duration::from_secs(3)).code(), Some(2));
    let full = relay.stats()["drop.relay_full"];
    assert!((2..=3).contains(&full), "drop.relay_full {full}");
    a.send("quit");
    a.expect_eq("closed 1");
    let mut y = Proc::py(&relay, "Y", &[]);
    y.ready();
    y.expect_eq("members 0");
}
