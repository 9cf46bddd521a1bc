//! Federation benchmark (docs/performance.md, "Federation"): relays as `mcrelay serve`
//! processes federated over `nats-server` on loopback ports, clients of the library in this
//! process (multicast on interface 127.0.0.1, TTL 0). Every measurement is repeated
//! `--trials` times (default 5) and reported per trial and as medians; the baselines are
//! measured in the same trials, in a rotating order.
//!
//! 1. **Latency added by the NATS hop.** A sender and a receiver on relay A, a receiver on
//!    relay B. Per trial, the maximal rate is searched (1 s bursts, doubling from 2,000/s,
//!    then three bisections; a rate passes when *both receivers decrypted* ≥ 99.5 % of what
//!    was sent within 300 ms of the last send, and the sender kept up); then, at half that
//!    rate, every message's latency (send → decrypted receipt) at both receivers: A's is the
//!    relay alone (the baseline), B's adds A → NATS → B. Also reported: the per-message
//!    difference (B's receipt − A's receipt of the same message), the same at a low rate
//!    (`--low-rate`, 1,000/s), and NATS alone: a plain publisher and subscriber on the same
//!    nats-server(s), payloads of the size the relay publishes, at the same rates.
//! 2. **Relay CPU per delivery, remote vs local.** Relay B (federated) with `--receivers`
//!    clients, and a stand-alone relay C (no `--nats`) with as many. Per trial, in rotation:
//!    B's own client sends (local messages, which B also publishes), a client of relay A
//!    sends (remote messages), C's own client sends. The relay's CPU time (the sum over its
//!    threads of `/proc/<pid>/task/<tid>/schedstat`, nanoseconds) divided by its messages
//!    and by its deliveries (its `deliveries` + `remote_deliveries`).
//! 3. **Scale-out.** `--clients` clients, `--senders` of them sending: all on one
//!    stand-alone relay, or half on each of two federated relays. Per trial, for each: a run
//!    at `--scale-rate` messages/s in all (each relay's CPU per message and per delivery,
//!    nats-server's, deliveries/s received, latency), then a search for the maximal rate
//!    (every receiver gets ≥ 99 %), whose deliveries/s the receivers counted.
//!
//! ```sh
//! cargo build --release --example federation --bin mcrelay
//! nice -n -10 target/x86_64-unknown-linux-gnu/release/examples/federation \
//!     [--trials 5] [--secs 3] [--receivers 20] [--clients 40] [--senders 4] \
//!     [--size 100] [--low-rate 1000] [--cpu-rate 2000] [--scale-rate 1000] \
//!     [--nats-nodes 1|2] [--only latency,cpu,scale] [--bin PATH/mcrelay]
//! ```
//!
//! `--only perf --perf-dir DIR` records where the time goes instead ([`perf_mode`]).
//!
//! With `--nats-nodes 2` relays A and B use two routed nats-servers (two NATS hops). The
//! relay binary defaults to `mcrelay` next to this example's directory.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mcrelay::client::{Client, ClientConfig, Event};
use mcrelay::crypto::fernet::FernetKey;
use mcrelay::crypto::key::ServerKey;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

// ---------------------------------------------------------------- options

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Opts {
    trials: usize,
    secs: f64,
    receivers: usize,
    clients: usize,
    senders: usize,
    size: usize,
    low_rate: u64,
    cpu_rate: u64,
    scale_rate: u64,
    nodes: usize,
    only: Vec<String>,
    bin: PathBuf,
}

impl Opts {
    fn parse() -> Opts {
        let default_bin = std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("mcrelay")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/target/x86_64-unknown-linux-gnu/release/mcrelay"
                ))
            });
        let only: String = arg("--only", "latency,cpu,scale".to_string());
        Opts {
            trials: arg("--trials", 5usize).max(1),
            secs: arg("--secs", 3.0),
            receivers: arg("--receivers", 20usize).max(1),
            clients: arg("--clients", 40usize).max(4),
            senders: arg("--senders", 4usize).max(2),
            size: arg("--size", 100usize).max(16),
            low_rate: arg("--low-rate", 1000u64).max(10),
            cpu_rate: arg("--cpu-rate", 2000u64).max(10),
            scale_rate: arg("--scale-rate", 1000u64).max(10),
            nodes: arg("--nats-nodes", 1usize).clamp(1, 2),
            only: only.split(',').map(str::to_string).collect(),
            bin: arg("--bin", default_bin),
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.only.iter().any(|o| o == part)
    }
}

// ---------------------------------------------------------------- clock, processes

/// The clock every message carries: nanoseconds since the benchmark started.
fn now_ns() -> u64 {
    static T: OnceLock<Instant> = OnceLock::new();
    T.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// CPU time of every thread of `pid`, nanoseconds (`/proc/<pid>/task/*/schedstat`, first
/// field: time on a CPU). This kernel has no IRQ-time accounting, so softirq work done in a
/// thread's syscalls (loopback delivery of what it sends) is part of it.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn machine_line() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let psi = std::fs::read_to_string("/proc/pressure/cpu").unwrap_or_default();
    format!(
        "load average {} | cpu pressure {} | client sessions lost so far: {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" "),
        psi.lines().next().unwrap_or("-"),
        LOST.load(Ordering::Relaxed)
    )
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nats_server_bin() -> PathBuf {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

struct Nats {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` nats-servers, routed to each other when more than one.
fn start_nats(dir: &Path, n: usize) -> Vec<Nats> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let mut out = Vec::new();
    for (i, (p, c)) in ports.iter().enumerate() {
        let mut conf = format!("server_name: \"bench{i}\"\nlisten: \"127.0.0.1:{p}\"\n");
        if n > 1 {
            let routes: Vec<String> = ports
                .iter()
                .filter(|(q, _)| q != p)
                .map(|(_, r)| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect();
            conf += &format!(
                "cluster {{ name: bench, listen: \"127.0.0.1:{c}\", routes: [{}] }}\n",
                routes.join(",")
            );
        }
        let path = dir.join(format!("n{i}.conf"));
        std::fs::write(&path, conf).expect("write nats config");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        out.push(Nats {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], *p)),
        });
    }
    for n in &out {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(n.addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if n > 1 {
        std::thread::sleep(Duration::from_millis(1500)); // routes
    }
    out
}

struct RelayProc {
    child: Child,
    group: Ipv4Addr,
    port: u16,
    control: SocketAddr,
    fingerprint: [u8; 32],
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayProc {
    /// Relay `id` (its group is 239.255.91.`id`+k; federated as relay `id` with `nats`).
    fn start(bin: &Path, dir: &Path, id: u8, nats: Option<SocketAddr>, fp: [u8; 32]) -> Self {
        let group = Ipv4Addr::new(239, 255, 91, id + (std::process::id() % 100) as u8);
        let port = free_port();
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--group", &group.to_string()])
            .args(["--port", &port.to_string(), "--iface", "127.0.0.1"])
            .args(["--ttl", "0", "--control", &control.to_string()])
            .arg("--key-file")
            .arg(dir.join("relay.pem"))
            .args(["--max-clients", "4096", "--max-clients-per-source", "4096"])
            .args([
                "--handshakes-per-source",
                "1000",
                "--handshakes-per-sec",
                "1000",
            ])
            .args(["--log-level", "warn"]);
        if let Some(n) = nats {
            cmd.args(["--nats", &n.to_string(), "--relay-id", &id.to_string()])
                .args(["--cluster", "bench", "--cluster-key-file"])
                .arg(dir.join("cluster.key"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mcrelay serve (cargo build --release --bin mcrelay, or --bin PATH)");
        let r = RelayProc {
            child,
            group,
            port,
            control,
            fingerprint: fp,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(control).is_err() {
            assert!(Instant::now() < deadline, "relay did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ctl(&self, line: &str) -> Vec<String> {
        let s = TcpStream::connect(self.control).expect("control");
        let mut w = s.try_clone().expect("clone");
        let mut r = BufReader::new(s);
        let mut l = String::new();
        r.read_line(&mut l).ok();
        r.read_line(&mut l).ok();
        writeln!(w, "{line}").ok();
        let mut out = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                return out;
            }
            let l = l.trim_end().to_string();
            if l == "OK" || l.starts_with("ERR") {
                return out;
            }
            out.push(l);
        }
    }

    fn stats(&self) -> HashMap<String, u64> {
        self.ctl("stats")
            .iter()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    fn client(&self) -> Client {
        let cfg = ClientConfig {
            group: self.group,
            port: self.port,
            iface: Ipv4Addr::LOCALHOST,
            ttl: 0,
            pin: Some(self.fingerprint),
            admission: None,
        };
        Client::connect(&cfg, Duration::from_secs(30)).expect("client connects")
    }

    fn wait_peers(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let up = self
                .ctl("peers")
                .iter()
                .filter(|l| l.contains("state=up"))
                .count();
            if up >= n {
                return;
            }
            assert!(Instant::now() < deadline, "peers not up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A relay's counters and CPU at one instant (stats read before the CPU at the start of a
/// window and after it at the end, so the control command is not in the window).
#[derive(Clone, Copy, Default)]
struct Snap {
    cpu: u64,
    messages: u64,
    deliveries: u64,
    published: u64,
}

fn snap_before(r: &RelayProc) -> Snap {
    let mut s = snap_stats(r);
    s.cpu = cpu_ns(r.pid());
    s
}

fn snap_after(r: &RelayProc) -> Snap {
    let cpu = cpu_ns(r.pid());
    Snap {
        cpu,
        ..snap_stats(r)
    }
}

fn snap_stats(r: &RelayProc) -> Snap {
    let s = r.stats();
    let g = |k: &str| s.get(k).copied().unwrap_or(0);
    Snap {
        cpu: 0,
        messages: g("messages_in") + g("remote_messages_in"),
        deliveries: g("deliveries") + g("remote_deliveries"),
        published: g("federation_data_out"),
    }
}

fn delta(a: Snap, b: Snap) -> Snap {
    Snap {
        cpu: b.cpu.saturating_sub(a.cpu),
        messages: b.messages.saturating_sub(a.messages),
        deliveries: b.deliveries.saturating_sub(a.deliveries),
        published: b.published.saturating_sub(a.published),
    }
}

// ---------------------------------------------------------------- message bodies

/// Trial ids: every run of a sender has its own, so stragglers of one never count in another.
fn next_trial() -> u32 {
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

fn stamp(body: &mut [u8], trial: u32, seq: u32) {
    body[..4].copy_from_slice(&trial.to_be_bytes());
    body[4..8].copy_from_slice(&seq.to_be_bytes());
    body[8..16].copy_from_slice(&now_ns().to_be_bytes());
}

fn unstamp(data: &[u8]) -> Option<(u32, u32, u64)> {
    let t = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
    let s = u32::from_be_bytes(data.get(4..8)?.try_into().ok()?);
    let ns = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
    Some((t, s, ns))
}

/// One decrypted receipt.
#[derive(Clone, Copy)]
struct Rec {
    trial: u32,
    seq: u32,
    sent: u64,
    recv: u64,
}

// ---------------------------------------------------------------- receivers

/// Sessions lost (a client's `Lost` event, or a send refused): any makes a run suspect.
static LOST: AtomicU32 = AtomicU32::new(0);

/// Drive one client's session from its socket: read, decrypt, answer timers.
fn service(c: &mut Client, buf: &mut [u8], mut each: impl FnMut(Event)) {
    let mut on = |e: Event| {
        if matches!(e, Event::Lost { .. }) {
            LOST.fetch_add(1, Ordering::Relaxed);
        }
        each(e)
    };
    while let Ok((n, from)) = c.socket().recv_from(buf) {
        c.session().handle_datagram(Instant::now(), from, &buf[..n]);
        while let Some(e) = c.session().poll_event() {
            on(e);
        }
    }
    let now = Instant::now();
    if c.session().poll_timeout().is_some_and(|t| t <= now) {
        c.session().handle_timeout(now);
        while let Some(e) = c.session().poll_event() {
            on(e);
        }
    }
    let _ = c.flush();
}

/// Many receiving clients on one thread and one mio `Poll` (as a load generator does, not a
/// thread per client): each client's socket, its session's decryption, its keep-alives.
struct Receivers {
    stop: Arc<AtomicBool>,
    recs: Arc<Mutex<Vec<Rec>>>,
    handle: Option<JoinHandle<()>>,
    count: usize,
}

impl Receivers {
    fn spawn(mut clients: Vec<Client>) -> Receivers {
        let stop = Arc::new(AtomicBool::new(false));
        let recs = Arc::new(Mutex::new(Vec::new()));
        let count = clients.len();
        let (stop2, recs2) = (stop.clone(), recs.clone());
        let handle = std::thread::spawn(move || {
            let mut poll = Poll::new().expect("poll");
            for (i, c) in clients.iter_mut().enumerate() {
                assert!(c.session().group_addr().is_none(), "unicast mode only");
                let fd = c.socket().as_raw_fd();
                poll.registry()
                    .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
                    .expect("register");
            }
            let mut events = Events::with_capacity(1024);
            let mut buf = vec![0u8; 65536];
            let mut local = Vec::with_capacity(4096);
            let mut last_tend = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                let _ = poll.poll(&mut events, Some(Duration::from_millis(20)));
                let ready: Vec<usize> = events.iter().map(|e| e.token().0).collect();
                let mut on = |e: Event| {
                    if let Event::Message { data, .. } = e
                        && let Some((trial, seq, sent)) = unstamp(&data)
                    {
                        local.push(Rec {
                            trial,
                            seq,
                            sent,
                            recv: now_ns(),
                        });
                    }
                };
                for i in ready {
                    service(&mut clients[i], &mut buf, &mut on);
                }
                if last_tend.elapsed() > Duration::from_millis(200) {
                    last_tend = Instant::now();
                    for c in clients.iter_mut() {
                        service(c, &mut buf, &mut on);
                    }
                }
                if !local.is_empty() {
                    recs2.lock().expect("recs").append(&mut local);
                }
            }
        });
        Receivers {
            stop,
            recs,
            handle: Some(handle),
            count,
        }
    }

    fn take(&self) -> Vec<Rec> {
        std::mem::take(&mut *self.recs.lock().expect("recs"))
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------- senders

/// Sending clients on their own thread, round robin; between runs the thread keeps their
/// sessions alive (a sender silent for the relay's client timeout would be dropped).
struct Senders {
    cmd: Option<mpsc::Sender<(u64, f64, usize)>>,
    done: mpsc::Receiver<(u32, u64)>,
    handle: Option<JoinHandle<()>>,
}

fn tend(clients: &mut [Client], buf: &mut [u8]) {
    for c in clients {
        service(c, buf, |_| {});
    }
}

impl Senders {
    fn new(mut clients: Vec<Client>) -> Senders {
        let (cmd, cmd_rx) = mpsc::channel::<(u64, f64, usize)>();
        let (done_tx, done) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack (1 ns),
            // so that its sleeps end when asked.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
            }
            let mut buf = vec![0u8; 65536];
            loop {
                match cmd_rx.recv_timeout(Duration::from_millis(100)) {
                    Ok((rate, secs, size)) => {
                        let r = send_run(&mut clients, &mut buf, rate, secs, size);
                        if done_tx.send(r).is_err() {
                            return;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => tend(&mut clients, &mut buf),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        Senders {
            cmd: Some(cmd),
            done,
            handle: Some(handle),
        }
    }

    /// `rate` messages a second of `size` bytes for `secs`, paced by the clock; returns the
    /// trial id and how many were handed to the socket.
    fn run(&mut self, rate: u64, secs: f64, size: usize) -> (u32, u64) {
        if let Some(c) = &self.cmd {
            c.send((rate, secs, size)).expect("sender thread");
        }
        self.done.recv().expect("sender thread")
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        self.cmd = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn send_run(
    clients: &mut [Client],
    buf: &mut [u8],
    rate: u64,
    secs: f64,
    size: usize,
) -> (u32, u64) {
    let trial = next_trial();
    let start = Instant::now();
    let gap = 1.0 / rate as f64;
    let total = (rate as f64 * secs).round() as u64;
    let mut body = vec![0u8; size];
    let mut n = 0u64;
    let mut last_tend = start;
    while n < total {
        let due = start + Duration::from_secs_f64(gap * n as f64);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        if last_tend.elapsed() > Duration::from_millis(5) {
            last_tend = Instant::now();
            tend(clients, buf);
        }
        // Everything due now goes out (a late wake-up sends a burst, as a timer would).
        while n < total && start + Duration::from_secs_f64(gap * n as f64) <= Instant::now() {
            let k = n as usize % clients.len();
            stamp(&mut body, trial, n as u32);
            if clients[k].send(&body).is_err() {
                LOST.fetch_add(1, Ordering::Relaxed);
                return (trial, n);
            }
            n += 1;
        }
    }
    tend(clients, buf);
    (trial, n)
}

// ---------------------------------------------------------------- NATS alone

/// A plain publisher and a subscriber thread on nats-server, no relay: what the broker's hop
/// costs by itself (`PUB` of one payload per `write`, as the relay's link does).
struct RawNats {
    publ: TcpStream,
    recs: Arc<Mutex<Vec<Rec>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

fn nats_connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("nats connect");
    s.set_nodelay(true).ok();
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut info = String::new();
    r.read_line(&mut info).expect("INFO");
    s.write_all(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"protocol\":1,\
          \"name\":\"bench\"}\r\nPING\r\n",
    )
    .expect("CONNECT");
    let mut pong = String::new();
    r.read_line(&mut pong).expect("PONG");
    assert!(pong.starts_with("PONG"), "nats: {pong}");
    s
}

impl RawNats {
    fn start(publ: SocketAddr, sub: SocketAddr) -> RawNats {
        let mut s = nats_connect(sub);
        s.write_all(b"SUB bench.raw 1\r\nPING\r\n").expect("SUB");
        let recs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (recs2, stop2) = (recs.clone(), stop.clone());
        s.set_read_timeout(Some(Duration::from_millis(20))).ok();
        let handle = std::thread::spawn(move || {
            let mut w = s.try_clone().expect("clone");
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
            let mut chunk = vec![0u8; 256 * 1024];
            while !stop2.load(Ordering::Relaxed) {
                match s.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => continue,
                }
                let now = now_ns();
                let mut at = 0;
                let mut got = Vec::new();
                while let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    let line = &buf[at..at + eol];
                    if let Some(rest) = line.strip_prefix(b"MSG ") {
                        let len: usize = std::str::from_utf8(rest)
                            .ok()
                            .and_then(|r| r.rsplit(' ').next()?.parse().ok())
                            .unwrap_or(0);
                        let start = at + eol + 2;
                        if buf.len() < start + len + 2 {
                            break; // the payload is not all here yet
                        }
                        if let Some((trial, seq, sent)) = unstamp(&buf[start..start + len]) {
                            got.push(Rec {
                                trial,
                                seq,
                                sent,
                                recv: now,
                            });
                        }
                        at = start + len + 2;
                    } else {
                        if line == b"PING" {
                            let _ = w.write_all(b"PONG\r\n");
                        }
                        at += eol + 2;
                    }
                }
                buf.drain(..at);
                if !got.is_empty() {
                    recs2.lock().expect("recs").append(&mut got);
                }
            }
        });
        let mut r = RawNats {
            publ: nats_connect(publ),
            recs,
            stop,
            handle: Some(handle),
        };
        // Interest must reach the publisher's server (routes): probe until one arrives.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            r.run(100, 0.05, 32);
            std::thread::sleep(Duration::from_millis(100));
            if !r.take().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "raw NATS subscription never saw a message"
            );
        }
        r
    }

    fn run(&mut self, rate: u64, secs: f64, size: usize) -> (u32, u64) {
        let trial = next_trial();
        let start = Instant::now();
        let gap = 1.0 / rate as f64;
        let total = (rate as f64 * secs).round() as u64;
        let mut body = vec![0u8; size];
        let mut frame = Vec::with_capacity(size + 64);
        let mut n = 0u64;
        while n < total {
            let due = start + Duration::from_secs_f64(gap * n as f64);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            while n < total && start + Duration::from_secs_f64(gap * n as f64) <= Instant::now() {
                stamp(&mut body, trial, n as u32);
                frame.clear();
                frame.extend_from_slice(format!("PUB bench.raw {size}\r\n").as_bytes());
                frame.extend_from_slice(&body);
                frame.extend_from_slice(b"\r\n");
                self.publ.write_all(&frame).expect("PUB");
                n += 1;
            }
        }
        (trial, n)
    }

    fn take(&self) -> Vec<Rec> {
        std::mem::take(&mut *self.recs.lock().expect("recs"))
    }
}

impl Drop for RawNats {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Bytes the relay publishes for a message of `size` bytes without an admission name: a
/// binary Fernet token (57 bytes + the padded plaintext) of the 20-byte header, sender and
/// name length, and the body.
fn published_len(size: usize) -> usize {
    57 + (20 + 5 + size + 16) / 16 * 16
}

// ---------------------------------------------------------------- statistics

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Latencies (µs) of trial `trial`'s receipts.
fn lat_us(recs: &[Rec], trial: u32) -> Vec<u64> {
    recs.iter()
        .filter(|r| r.trial == trial)
        .map(|r| r.recv.saturating_sub(r.sent) / 1000)
        .collect()
}

fn count(recs: &[Rec], trial: u32) -> u64 {
    recs.iter().filter(|r| r.trial == trial).count() as u64
}

/// Per message: B's receipt − A's receipt (µs, may be negative: clamped at 0).
fn paired_us(a: &[Rec], b: &[Rec], trial: u32) -> Vec<u64> {
    let mut at: HashMap<u32, u64> = HashMap::new();
    for r in a.iter().filter(|r| r.trial == trial) {
        at.insert(r.seq, r.recv);
    }
    b.iter()
        .filter(|r| r.trial == trial)
        .filter_map(|r| Some(r.recv.saturating_sub(*at.get(&r.seq)?) / 1000))
        .collect()
}

/// Columns of one row, medians over trials.
struct Table {
    rows: Vec<Vec<f64>>,
}

impl Table {
    fn new() -> Self {
        Table { rows: Vec::new() }
    }
    fn push(&mut self, row: Vec<f64>) {
        self.rows.push(row);
    }
    fn medians(&self) -> Vec<f64> {
        let n = self.rows.first().map_or(0, Vec::len);
        (0..n)
            .map(|i| median(self.rows.iter().map(|r| r[i]).collect()))
            .collect()
    }
}

/// Doubling from `from`, then three bisections: the highest rate `ok` accepts (0: none).
fn search(from: u64, cap: u64, mut ok: impl FnMut(u64) -> bool) -> u64 {
    let (mut good, mut bad) = (0, from);
    while bad <= cap && ok(bad) {
        good = bad;
        bad *= 2;
    }
    if good == 0 {
        return 0;
    }
    for _ in 0..3 {
        let mid = (good + bad) / 2;
        if ok(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    good
}

fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// Wait (at most 10 s) until every process of `pids` is idle (< 2 ms of CPU in 100 ms): an
/// overloaded search step leaves backlogs in socket buffers and send queues, which must not
/// be counted in the next run.
fn quiesce(pids: &[u32]) {
    for _ in 0..100 {
        let c0: Vec<u64> = pids.iter().map(|&p| cpu_ns(p)).collect();
        std::thread::sleep(Duration::from_millis(100));
        let busy = pids
            .iter()
            .zip(&c0)
            .any(|(&p, &c)| cpu_ns(p).saturating_sub(c) > 2_000_000);
        if !busy {
            return;
        }
    }
    eprintln!("   (not idle after 10 s)");
}

// ---------------------------------------------------------------- 1. latency

fn latency(o: &Opts, dir: &Path, nats: &[Nats], fp: [u8; 32]) {
    let (na, nb) = (nats[0].addr, nats[nats.len() - 1].addr);
    let a = RelayProc::start(&o.bin, dir, 1, Some(na), fp);
    let b = RelayProc::start(&o.bin, dir, 2, Some(nb), fp);
    a.wait_peers(1);
    b.wait_peers(1);
    let mut s = Senders::new(vec![a.client()]);
    let ra = Receivers::spawn(vec![a.client()]);
    let rb = Receivers::spawn(vec![b.client()]);
    let mut raw = RawNats::start(na, nb);
    let raw_size = published_len(o.size);
    std::thread::sleep(Duration::from_millis(500));
    let _ = (ra.take(), rb.take());
    println!(
        "1. latency, send → decrypted receipt, {} B messages: sender and receiver on relay A, \
         receiver on relay B; NATS alone: {raw_size} B payloads",
        o.size
    );
    println!(
        "   trial | max msg/s | rate | A p50 p99 | B p50 p99 | B−A p50 p99 | per-msg B−A p50 p99 | \
         NATS alone p50 p99 | loss A B NATS % | low rate: A p50 p99, B p50 p99, NATS p50 p99, \
         B−A p50 p99, per-msg B−A p50 p99"
    );
    let mut t = Table::new();
    for trial in 0..o.trials {
        let max = search(2000, 1_024_000, |rate| {
            let (id, n) = s.run(rate, 1.0, o.size);
            settle();
            let (x, y) = (count(&ra.take(), id), count(&rb.take(), id));
            let ok = x as f64 >= 0.995 * n as f64
                && y as f64 >= 0.995 * n as f64
                && n as f64 >= 0.95 * rate as f64;
            eprintln!("   search {rate}/s: sent {n}, A received {x}, B received {y}");
            if !ok {
                settle();
                let _ = (ra.take(), rb.take());
            }
            ok
        });
        let half = (max / 2).max(100);
        let pids = [
            a.pid(),
            b.pid(),
            nats[0].child.id(),
            nats[nats.len() - 1].child.id(),
        ];
        let mut run_relay = |rate: u64| {
            quiesce(&pids);
            let (id, n) = s.run(rate, o.secs, o.size);
            settle();
            let (xa, xb) = (ra.take(), rb.take());
            let (mut la, mut lb) = (lat_us(&xa, id), lat_us(&xb, id));
            let mut d = paired_us(&xa, &xb, id);
            let loss = |got: usize| 100.0 * (1.0 - got as f64 / n.max(1) as f64);
            [
                pct(&mut la, 0.5) as f64,
                pct(&mut la, 0.99) as f64,
                pct(&mut lb, 0.5) as f64,
                pct(&mut lb, 0.99) as f64,
                pct(&mut d, 0.5) as f64,
                pct(&mut d, 0.99) as f64,
                loss(la.len()),
                loss(lb.len()),
            ]
        };
        let mut run_raw = |rate: u64| {
            quiesce(&pids);
            let (id, n) = raw.run(rate, o.secs, raw_size);
            settle();
            let mut l = lat_us(&raw.take(), id);
            let loss = 100.0 * (1.0 - l.len() as f64 / n.max(1) as f64);
            [pct(&mut l, 0.5) as f64, pct(&mut l, 0.99) as f64, loss]
        };
        // Alternate which goes first.
        let (rel, nat) = if trial % 2 == 0 {
            let r = run_relay(half);
            (r, run_raw(half))
        } else {
            let n = run_raw(half);
            (run_relay(half), n)
        };
        let low = run_relay(o.low_rate);
        let low_raw = run_raw(o.low_rate);
        let row = vec![
            max as f64,
            half as f64,
            rel[0],
            rel[1],
            rel[2],
            rel[3],
            rel[2] - rel[0],
            rel[3] - rel[1],
            rel[4],
            rel[5],
            nat[0],
            nat[1],
            rel[6],
            rel[7],
            nat[2],
            low[0],
            low[1],
            low[2],
            low[3],
            low_raw[0],
            low_raw[1],
            low[2] - low[0],
            low[3] - low[1],
            low[4],
            low[5],
        ];
        print_latency_row(&format!("{}", trial + 1), &row);
        t.push(row);
    }
    print_latency_row("median", &t.medians());
    println!("   ({})", machine_line());
}

fn print_latency_row(label: &str, r: &[f64]) {
    let f: Vec<String> = r.iter().map(|x| format!("{x:.0}")).collect();
    println!(
        "   {label} | {} | {} | {} {} | {} {} | {} {} | {} {} | {} {} | {:.2} {:.2} {:.2} | \
         {} {}, {} {}, {} {}, {} {}, {} {}",
        f[0],
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
        f[6],
        f[7],
        f[8],
        f[9],
        f[10],
        f[11],
        r[12],
        r[13],
        r[14],
        f[15],
        f[16],
        f[17],
        f[18],
        f[19],
        f[20],
        f[21],
        f[22],
        f[23],
        f[24]
    );
}

// ---------------------------------------------------------------- 2. CPU remote vs local

fn cpu(o: &Opts, dir: &Path, nats: &[Nats], fp: [u8; 32]) {
    let (na, nb) = (nats[0].addr, nats[nats.len() - 1].addr);
    let a = RelayProc::start(&o.bin, dir, 3, Some(na), fp);
    let b = RelayProc::start(&o.bin, dir, 4, Some(nb), fp);
    let c = RelayProc::start(&o.bin, dir, 5, None, fp);
    a.wait_peers(1);
    b.wait_peers(1);
    let mut sa = Senders::new(vec![a.client()]);
    let mut sb = Senders::new(vec![b.client()]);
    let mut sc = Senders::new(vec![c.client()]);
    let rb = Receivers::spawn((0..o.receivers).map(|_| b.client()).collect());
    let rc = Receivers::spawn((0..o.receivers).map(|_| c.client()).collect());
    std::thread::sleep(Duration::from_millis(1000));
    let _ = (rb.take(), rc.take());
    let rate = o.cpu_rate;
    let nats_pid = nats[nats.len() - 1].child.id();
    println!(
        "2. relay CPU, {} receivers on the measured relay, {rate} messages/s of {} B, {} s per run; \
         per message µs / per delivery ns",
        o.receivers, o.size, o.secs
    );
    println!(
        "   trial | B local: per msg, per delivery, received % | B remote: per msg, per delivery, \
         received % | C stand-alone: per msg, per delivery | remote/local per delivery | \
         remote/stand-alone | A publishing (remote run) per msg | nats-server per msg"
    );
    let mut t = Table::new();
    for trial in 0..o.trials {
        let mut res = [[0f64; 3]; 3];
        let mut a_pub = 0.0;
        let mut nats_msg = 0.0;
        for k in 0..3 {
            let which = (trial + k) % 3;
            let (relay, recv, senders): (&RelayProc, &Receivers, &mut Senders) = match which {
                0 => (&b, &rb, &mut sb),
                1 => (&b, &rb, &mut sa),
                _ => (&c, &rc, &mut sc),
            };
            quiesce(&[a.pid(), b.pid(), c.pid(), nats_pid]);
            let (a0, n0) = (snap_before(&a), cpu_ns(nats_pid));
            let s0 = snap_before(relay);
            let (id, n) = senders.run(rate, o.secs, o.size);
            settle();
            let s1 = snap_after(relay);
            let (a1, n1) = (snap_after(&a), cpu_ns(nats_pid));
            let d = delta(s0, s1);
            let got = count(&recv.take(), id);
            res[which] = [
                d.cpu as f64 / 1e3 / d.messages.max(1) as f64,
                d.cpu as f64 / d.deliveries.max(1) as f64,
                100.0 * got as f64 / (n * recv.count as u64).max(1) as f64,
            ];
            if which == 1 {
                let da = delta(a0, a1);
                a_pub = da.cpu as f64 / 1e3 / da.published.max(1) as f64;
                nats_msg = n1.saturating_sub(n0) as f64 / 1e3 / n.max(1) as f64;
            }
        }
        let row = vec![
            res[0][0],
            res[0][1],
            res[0][2],
            res[1][0],
            res[1][1],
            res[1][2],
            res[2][0],
            res[2][1],
            res[1][1] / res[0][1],
            res[1][1] / res[2][1],
            a_pub,
            nats_msg,
        ];
        print_cpu_row(&format!("{}", trial + 1), &row);
        t.push(row);
    }
    print_cpu_row("median", &t.medians());
    println!("   ({})", machine_line());
}

fn print_cpu_row(label: &str, r: &[f64]) {
    println!(
        "   {label} | {:.1} µs, {:.0} ns, {:.2} % | {:.1} µs, {:.0} ns, {:.2} % | {:.1} µs, {:.0} ns \
         | {:.3} | {:.3} | {:.1} µs | {:.1} µs",
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]
    );
}

// ---------------------------------------------------------------- 3. scale-out

struct Setup {
    relays: Vec<RelayProc>,
    senders: Senders,
    receivers: Vec<Receivers>,
    recipients: u64,
}

impl Setup {
    fn new(o: &Opts, dir: &Path, nats: &[Nats], fp: [u8; 32], split: bool) -> Setup {
        let relays = if split {
            let (na, nb) = (nats[0].addr, nats[nats.len() - 1].addr);
            let x = RelayProc::start(&o.bin, dir, 7, Some(na), fp);
            let y = RelayProc::start(&o.bin, dir, 8, Some(nb), fp);
            x.wait_peers(1);
            y.wait_peers(1);
            vec![x, y]
        } else {
            vec![RelayProc::start(&o.bin, dir, 6, None, fp)]
        };
        let on = |i: usize| &relays[i % relays.len()];
        let senders = Senders::new((0..o.senders).map(|i| on(i).client()).collect());
        // Receivers on two threads in both setups (one per relay when split).
        let mut groups: Vec<Vec<Client>> = vec![Vec::new(), Vec::new()];
        for i in o.senders..o.clients {
            groups[i % 2].push(on(i).client());
        }
        let receivers = groups.into_iter().map(Receivers::spawn).collect();
        std::thread::sleep(Duration::from_millis(1000));
        Setup {
            relays,
            senders,
            receivers,
            recipients: (o.clients - o.senders) as u64,
        }
    }

    fn take(&self, id: u32) -> (u64, Vec<u64>) {
        let mut n = 0;
        let mut lat = Vec::new();
        for r in &self.receivers {
            let recs = r.take();
            n += count(&recs, id);
            lat.extend(lat_us(&recs, id));
        }
        (n, lat)
    }
}

fn scale(o: &Opts, dir: &Path, nats: &[Nats], fp: [u8; 32]) {
    let mut one = Setup::new(o, dir, nats, fp, false);
    let mut two = Setup::new(o, dir, nats, fp, true);
    for s in [&one, &two] {
        let _ = s.take(0);
    }
    let nats_pids: Vec<u32> = nats.iter().map(|n| n.child.id()).collect();
    println!(
        "3. scale-out: {} clients, {} of them sending {} messages/s in all ({} B); {} s runs",
        o.clients, o.senders, o.scale_rate, o.size, o.secs
    );
    println!(
        "   trial | relays | per relay: CPU per msg µs, per delivery ns, % of a core | sum of relays \
         per msg µs | nats-server per msg µs | deliveries/s received | loss % | p50 p99 µs | \
         max msg/s | deliveries/s at max | relays % of a core at max"
    );
    let mut tables = [Table::new(), Table::new()];
    for trial in 0..o.trials {
        for k in 0..2 {
            let which = (trial + k) % 2;
            let s = if which == 0 { &mut one } else { &mut two };
            let row = scale_run(o, s, &nats_pids);
            print_scale_row(&format!("{}", trial + 1), &row);
            tables[which].push(row);
        }
    }
    for t in &tables {
        print_scale_row("median", &t.medians());
    }
    println!("   ({})", machine_line());
}

/// One setup's figures: fixed rate, then the maximal rate.
fn scale_run(o: &Opts, s: &mut Setup, nats_pids: &[u32]) -> Vec<f64> {
    let window = |s: &mut Setup, rate: u64, secs: f64| {
        let mut pids: Vec<u32> = s.relays.iter().map(RelayProc::pid).collect();
        pids.extend(nats_pids);
        quiesce(&pids);
        let n0: u64 = nats_pids.iter().map(|&p| cpu_ns(p)).sum();
        let before: Vec<Snap> = s.relays.iter().map(snap_before).collect();
        let start = Instant::now();
        let (id, n) = s.senders.run(rate, secs, o.size);
        let wall = start.elapsed().as_secs_f64();
        settle();
        let after: Vec<Snap> = s.relays.iter().map(snap_after).collect();
        let n1: u64 = nats_pids.iter().map(|&p| cpu_ns(p)).sum();
        let (got, lat) = s.take(id);
        let d: Vec<Snap> = before
            .iter()
            .zip(&after)
            .map(|(x, y)| delta(*x, *y))
            .collect();
        (n, got, lat, d, n1.saturating_sub(n0), wall)
    };
    let (n, got, mut lat, d, nats_cpu, wall) = window(s, o.scale_rate, o.secs);
    let mut row = vec![s.relays.len() as f64];
    let mut sum = 0.0;
    for k in 0..2 {
        match d.get(k) {
            Some(x) => {
                let per = x.cpu as f64 / 1e3 / n.max(1) as f64;
                sum += per;
                row.extend([
                    x.cpu as f64 / 1e3 / x.messages.max(1) as f64,
                    x.cpu as f64 / x.deliveries.max(1) as f64,
                    x.cpu as f64 / 1e9 / wall * 100.0,
                ]);
            }
            None => row.extend([0.0, 0.0, 0.0]),
        }
    }
    let expected = n * s.recipients;
    row.extend([
        sum,
        nats_cpu as f64 / 1e3 / n.max(1) as f64,
        got as f64 / wall,
        100.0 * (1.0 - got as f64 / expected.max(1) as f64),
        pct(&mut lat, 0.5) as f64,
        pct(&mut lat, 0.99) as f64,
    ]);
    // The maximal rate: every receiver gets ≥ 99 % of 1 s bursts.
    let mut at_max = (0.0, 0.0);
    let max = search(1000, 512_000, |rate| {
        let (n, got, _, d, _, wall) = window(s, rate, 1.0);
        let ok = got as f64 >= 0.99 * (n * s.recipients) as f64 && n as f64 >= 0.95 * rate as f64;
        eprintln!(
            "   search {} relay(s) {rate}/s: sent {n}, received {got} of {}",
            s.relays.len(),
            n * s.recipients
        );
        if ok {
            let core = d.iter().map(|x| x.cpu).max().unwrap_or(0) as f64 / 1e9 / wall * 100.0;
            at_max = (got as f64 / wall, core);
        } else {
            settle();
            let _ = s.take(0);
        }
        ok
    });
    row.extend([max as f64, at_max.0, at_max.1]);
    row
}

fn print_scale_row(label: &str, r: &[f64]) {
    let second = if r[0] > 1.0 {
        format!(" + {:.1} µs, {:.0} ns, {:.0} %", r[4], r[5], r[6])
    } else {
        String::new()
    };
    println!(
        "   {label} | {:.0} | {:.1} µs, {:.0} ns, {:.0} %{second} | {:.1} | {:.1} | {:.0} | {:.2} | \
         {:.0} {:.0} | {:.0} | {:.0} | {:.0}",
        r[0], r[1], r[2], r[3], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]
    );
}

// ---------------------------------------------------------------- 4. perf

/// `perf record` of `pids` into `out` with `args`, stopped (SIGINT) by [`perf_stop`].
fn perf_start(out: &Path, pids: &[u32], args: &[&str]) -> Child {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let child = Command::new("perf")
        .arg("record")
        .args(args)
        .arg("-p")
        .arg(pids.join(","))
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf on PATH");
    std::thread::sleep(Duration::from_millis(1000)); // attached
    child
}

fn perf_stop(mut c: Child) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(c.id() as libc::pid_t, libc::SIGINT);
    }
    let _ = c.wait();
}

/// Where the time goes (`--only perf --perf-dir DIR`; run with `--bin` at a build that keeps
/// its symbols). Writes DIR/trace.data: the syscalls of relays A and B and of nats-server
/// while A's client sends `--low-rate` messages/s (one receiver on each relay, the latency
/// shape; `benches/fed_trace.py` turns it into per-stage times), and DIR/remote.data,
/// DIR/local.data and DIR/standalone.data: cpu-clock profiles of relay B with `--receivers`
/// receivers at `--cpu-rate`, messages from relay A's client, then from its own, then of a
/// stand-alone relay with as many receivers and its own client sending; and the same runs'
/// syscalls (`raw_syscalls`, DIR/*-sys.data; `benches/fed_trace.py --syscalls`).
fn perf_mode(o: &Opts, dir: &Path, nats: &[Nats], fp: [u8; 32]) {
    let out: PathBuf = arg("--perf-dir", PathBuf::from("/tmp/fedbench-perf"));
    std::fs::create_dir_all(&out).expect("perf dir");
    let (na, nb) = (nats[0].addr, nats[nats.len() - 1].addr);
    let nats_pids: Vec<u32> = nats.iter().map(|n| n.child.id()).collect();
    {
        let a = RelayProc::start(&o.bin, dir, 11, Some(na), fp);
        let b = RelayProc::start(&o.bin, dir, 12, Some(nb), fp);
        a.wait_peers(1);
        b.wait_peers(1);
        let mut s = Senders::new(vec![a.client()]);
        let ra = Receivers::spawn(vec![a.client()]);
        let rb = Receivers::spawn(vec![b.client()]);
        std::thread::sleep(Duration::from_millis(500));
        let mut pids = vec![a.pid(), b.pid()];
        pids.extend(&nats_pids);
        let events = [
            "syscalls:sys_exit_recvmmsg",
            "syscalls:sys_exit_sendmmsg",
            "syscalls:sys_exit_sendto",
            "syscalls:sys_exit_recvfrom",
            "syscalls:sys_enter_write",
            "syscalls:sys_exit_write",
            "syscalls:sys_enter_writev",
            "syscalls:sys_exit_writev",
            "syscalls:sys_enter_read",
            "syscalls:sys_exit_read",
        ];
        let mut args = Vec::new();
        for e in &events {
            args.extend(["-e", e]);
        }
        let p = perf_start(&out.join("trace.data"), &pids, &args);
        let (id, n) = s.run(o.low_rate, o.secs, o.size);
        settle();
        perf_stop(p);
        let (mut la, mut lb) = (lat_us(&ra.take(), id), lat_us(&rb.take(), id));
        println!(
            "perf trace: relay A pid {}, relay B pid {}, nats-server pid(s) {:?}; {n} messages at \
             {}/s; under the trace A p50 {} p99 {} µs, B p50 {} p99 {} µs",
            a.pid(),
            b.pid(),
            nats_pids,
            o.low_rate,
            pct(&mut la, 0.5),
            pct(&mut la, 0.99),
            pct(&mut lb, 0.5),
            pct(&mut lb, 0.99)
        );
    }
    let a = RelayProc::start(&o.bin, dir, 13, Some(na), fp);
    let b = RelayProc::start(&o.bin, dir, 14, Some(nb), fp);
    let c = RelayProc::start(&o.bin, dir, 15, None, fp);
    a.wait_peers(1);
    b.wait_peers(1);
    let mut sa = Senders::new(vec![a.client()]);
    let mut sb = Senders::new(vec![b.client()]);
    let mut sc = Senders::new(vec![c.client()]);
    let rb = Receivers::spawn((0..o.receivers).map(|_| b.client()).collect());
    let rc = Receivers::spawn((0..o.receivers).map(|_| c.client()).collect());
    std::thread::sleep(Duration::from_millis(1000));
    let runs = [
        ("remote", &b, &mut sa),
        ("local", &b, &mut sb),
        ("standalone", &c, &mut sc),
    ];
    let syscalls = [
        "-e",
        "raw_syscalls:sys_enter",
        "-e",
        "raw_syscalls:sys_exit",
    ];
    for (name, relay, s) in runs {
        for (suffix, args) in [
            ("", &["-e", "cpu-clock", "-F", "20000"][..]),
            ("-sys", &syscalls[..]),
        ] {
            quiesce(&[a.pid(), b.pid(), c.pid()]);
            let file = out.join(format!("{name}{suffix}.data"));
            let p = perf_start(&file, &[relay.pid()], args);
            let s0 = snap_before(relay);
            let (_, n) = s.run(o.cpu_rate, o.secs, o.size);
            settle();
            let s1 = snap_after(relay);
            perf_stop(p);
            let d = delta(s0, s1);
            let _ = (rb.take(), rc.take());
            println!(
                "perf {name}{suffix}: relay pid {}, {n} messages, {} deliveries, {:.1} µs per \
                 message, {:.0} ns per delivery (under perf) -> {}",
                relay.pid(),
                d.deliveries,
                d.cpu as f64 / 1e3 / n.max(1) as f64,
                d.cpu as f64 / d.deliveries.max(1) as f64,
                file.display()
            );
        }
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let o = Opts::parse();
    let _ = now_ns();
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack (1 ns), so the
    // raw NATS publisher's sleeps (on this thread) end when asked.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let dir = std::env::temp_dir().join(format!("mcrelay-fedbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = Dir(dir.clone());
    let key = ServerKey::generate(2048).expect("keygen");
    key.save_new(&dir.join("relay.pem")).expect("save key");
    let fp = *key.fingerprint();
    let ck = FernetKey::from_bytes(&[9; 32]).to_base64();
    std::fs::write(dir.join("cluster.key"), [&ck[..], b"\n"].concat()).expect("cluster key");
    let nats = start_nats(&dir, o.nodes);
    println!(
        "federation benchmark: {} NATS node(s), {} trials, {} s runs, relay {}",
        o.nodes,
        o.trials,
        o.secs,
        o.bin.display()
    );
    println!("   ({})", machine_line());
    if o.runs("latency") {
        latency(&o, &dir, &nats, fp);
    }
    if o.runs("cpu") {
        cpu(&o, &dir, &nats, fp);
    }
    if o.runs("scale") {
        scale(&o, &dir, &nats, fp);
    }
    if o.runs("perf") {
        perf_mode(&o, &dir, &nats, fp);
    }
}
