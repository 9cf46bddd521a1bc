//! Federation benchmark (docs/performance.md, "Federation"): relays as `mcrelay serve`
//! processes federated over `nats-server` on loopback, clients of the library in this process
//! (TTL 0, interface 127.0.0.1). Three measurements, in one run:
//!
//! 1. **Latency added by the NATS hop.** A sender and a receiver on relay A, a receiver on
//!    relay B. The sender's rate is raised until B's receiver no longer gets 99.5 % of the
//!    messages (the maximal rate); then, at half that rate, the latency of each message to
//!    both receivers: A's is the relay alone, B's adds the hop (A → NATS → B).
//! 2. **Relay CPU per delivery, remote vs local.** Relay B with `--receivers` clients: once
//!    its own client sends (local deliveries), once a client of relay A sends at the same rate
//!    (remote deliveries). B's CPU time (from /proc/<pid>/schedstat, nanoseconds) divided by
//!    its deliveries.
//! 3. **Scale-out.** The same `--clients` clients, four of them sending: all on one relay,
//!    then split across two. Each relay's CPU per message it handled, deliveries per second.
//!
//! `cargo build --release && cargo run --release --example federation -- [--secs 5]
//! [--receivers 20] [--clients 40] [--nats-nodes 1|2] [--bin target/.../mcrelay]`.
//! With `--nats-nodes 2` relays A and B use two routed nats-servers (two NATS hops).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mcrelay::client::{Client, ClientConfig, Event};
use mcrelay::crypto::fernet::FernetKey;
use mcrelay::crypto::key::ServerKey;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The clock every message carries (nanoseconds since the benchmark started).
fn t0() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

/// `n` nats-servers routed to each other.
fn start_nats(dir: &Path, n: usize) -> Vec<Nats> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let mut out = Vec::new();
    for (i, (p, c)) in ports.iter().enumerate() {
        let routes: Vec<String> = ports
            .iter()
            .filter(|(q, _)| q != p)
            .map(|(_, r)| format!("\"nats-route://127.0.0.1:{r}\""))
            .collect();
        let conf = format!(
            "listen: \"127.0.0.1:{p}\"\ncluster {{ name: bench, listen: \"127.0.0.1:{c}\", \
             routes: [{}] }}\n",
            routes.join(",")
        );
        let path = dir.join(format!("n{i}.conf"));
        std::fs::write(&path, conf).expect("write nats config");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH (apt-get install nats-server)");
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
    std::thread::sleep(Duration::from_millis(1500)); // routes
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
    fn start(bin: &Path, dir: &Path, id: u8, nats: Option<SocketAddr>, fp: [u8; 32]) -> Self {
        let group = Ipv4Addr::new(239, 255, 91, id + (std::process::id() % 100) as u8);
        let port = free_port();
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--group",
            &group.to_string(),
            "--port",
            &port.to_string(),
        ])
        .args([
            "--iface",
            "127.0.0.1",
            "--ttl",
            "0",
            "--control",
            &control.to_string(),
        ])
        .arg("--key-file")
        .arg(dir.join("relay.pem"))
        .args(["--max-clients", "4096", "--max-clients-per-source", "4096"])
        .args(["--handshakes-per-source", "1000", "--log-level", "warn"]);
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
            .expect("spawn mcrelay serve (cargo build --release first, or --bin PATH)");
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

    fn stat(&self, name: &str) -> u64 {
        self.ctl("stats")
            .iter()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time of the relay's thread, nanoseconds.
    fn cpu_ns(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/schedstat", self.child.id()))
            .ok()
            .and_then(|s| s.split(' ').next()?.parse().ok())
            .unwrap_or(0)
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
        Client::connect(&cfg, Duration::from_secs(20)).expect("client connects")
    }

    fn wait_peers(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
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

/// A receiving client on its own thread: latencies (µs) of the messages of `from`, or a
/// count of every message.
fn receiver(mut c: Client, from: Option<u32>, stop: Arc<AtomicBool>) -> JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(1 << 16);
        while !stop.load(Ordering::Relaxed) {
            match c.recv_event(Duration::from_millis(20)) {
                Ok(Some(Event::Message { sender, data, .. })) => {
                    if from.is_some_and(|f| f != sender) || data.len() < 8 {
                        continue;
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&data[..8]);
                    let sent = u64::from_be_bytes(b);
                    let now = t0().elapsed().as_nanos() as u64;
                    lat.push(now.saturating_sub(sent) / 1000);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        lat
    })
}

/// Send `rate` messages a second of `len` bytes for `secs`; returns how many.
fn send_paced(c: &mut Client, rate: u64, secs: f64, len: usize) -> u64 {
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let mut body = vec![0u8; len.max(8)];
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let due = start + gap * n as u32;
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        body[..8].copy_from_slice(&(t0().elapsed().as_nanos() as u64).to_be_bytes());
        if c.send(&body).is_err() {
            break;
        }
        n += 1;
    }
    n
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let secs: f64 = arg("--secs", 5.0);
    let receivers: usize = arg("--receivers", 20);
    let clients: usize = arg("--clients", 40);
    let nodes: usize = arg("--nats-nodes", 1).clamp(1, 2);
    let bin: PathBuf = arg(
        "--bin",
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/x86_64-unknown-linux-gnu/release/mcrelay"
        )),
    );
    let _ = t0();
    let dir = std::env::temp_dir().join(format!("mcrelay-fedbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = Dir(dir.clone());
    let key = ServerKey::generate(2048).expect("keygen");
    key.save_new(&dir.join("relay.pem")).expect("save key");
    let fp = *key.fingerprint();
    let ck = FernetKey::from_bytes(&[9; 32]).to_base64();
    std::fs::write(dir.join("cluster.key"), [&ck[..], b"\n"].concat()).expect("cluster key");
    let nats = start_nats(&dir, nodes);
    let na = nats[0].addr;
    let nb = nats[nodes - 1].addr;
    println!(
        "federation benchmark: {} NATS node(s), {secs} s per trial, relay {}",
        nodes,
        bin.display()
    );

    // ---------------------------------------------------------------- 1. latency
    {
        let a = RelayProc::start(&bin, &dir, 1, Some(na), fp);
        let b = RelayProc::start(&bin, &dir, 2, Some(nb), fp);
        a.wait_peers(1);
        b.wait_peers(1);
        let mut s = a.client();
        let sid = s.id();
        // Find the maximal rate: B's receiver gets 99.5 % of a 1 s burst (doubling from 2000/s).
        let stop = Arc::new(AtomicBool::new(false));
        let search = receiver(b.client(), Some(sid), stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let mut trial = |rate: u64| {
            let before = b.stat("remote_deliveries");
            let n = send_paced(&mut s, rate, 1.0, 100);
            std::thread::sleep(Duration::from_millis(300));
            let got = b.stat("remote_deliveries") - before;
            let ok = got as f64 >= 0.995 * n as f64 && n as f64 >= 0.95 * rate as f64;
            println!("  rate {rate}/s: sent {n}, relay B delivered {got}");
            ok
        };
        let (mut max, mut fail) = (0, 2000);
        while fail < 512_000 && trial(fail) {
            max = fail;
            fail *= 2;
        }
        for _ in 0..3 {
            let mid = (max + fail) / 2;
            if trial(mid) {
                max = mid;
            } else {
                fail = mid;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = search.join();
        // The measured run, with fresh receivers on both relays.
        let stop = Arc::new(AtomicBool::new(false));
        let ha = receiver(a.client(), Some(sid), stop.clone());
        let hb = receiver(b.client(), Some(sid), stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let half = (max / 2).max(100);
        let n = send_paced(&mut s, half, secs, 100);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let mut la = ha.join().unwrap_or_default();
        let mut lb = hb.join().unwrap_or_default();
        let (a50, a99) = (pct(&mut la, 0.5), pct(&mut la, 0.99));
        let (b50, b99) = (pct(&mut lb, 0.5), pct(&mut lb, 0.99));
        println!(
            "1. latency at {half}/s (half of the maximal {max}/s), {n} messages of 100 B:\n   \
             same relay  p50 {a50} µs  p99 {a99} µs  ({} received)\n   \
             other relay p50 {b50} µs  p99 {b99} µs  ({} received)\n   \
             added by the NATS hop: p50 {} µs, p99 {} µs",
            la.len(),
            lb.len(),
            b50.saturating_sub(a50),
            b99.saturating_sub(a99)
        );
    }

    // ---------------------------------------------------------------- 2. CPU remote vs local
    {
        let a = RelayProc::start(&bin, &dir, 3, Some(na), fp);
        let b = RelayProc::start(&bin, &dir, 4, Some(nb), fp);
        a.wait_peers(1);
        b.wait_peers(1);
        let mut sa = a.client();
        let mut sb = b.client();
        let stop = Arc::new(AtomicBool::new(false));
        let hs: Vec<_> = (0..receivers)
            .map(|_| receiver(b.client(), None, stop.clone()))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let rate = 1000;
        let measure = |c: &mut Client, what: &str| {
            let (cpu0, d0) = (
                b.cpu_ns(),
                b.stat("deliveries") + b.stat("remote_deliveries"),
            );
            let n = send_paced(c, rate, secs, 100);
            std::thread::sleep(Duration::from_millis(300));
            let (cpu1, d1) = (
                b.cpu_ns(),
                b.stat("deliveries") + b.stat("remote_deliveries"),
            );
            let d = (d1 - d0).max(1);
            let per = (cpu1 - cpu0) as f64 / d as f64;
            println!(
                "   {what}: {n} messages, {d} deliveries by relay B, {:.0} ms CPU, {per:.0} ns per delivery",
                (cpu1 - cpu0) as f64 / 1e6
            );
            per
        };
        println!(
            "2. relay B's CPU per delivery, {receivers} receivers on B, {rate} messages/s of 100 B:"
        );
        let local = measure(&mut sb, "local  (sender on B)");
        let remote = measure(&mut sa, "remote (sender on A)");
        println!("   remote / local = {:.2}", remote / local);
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            let _ = h.join();
        }
    }

    // ---------------------------------------------------------------- 3. scale-out
    {
        println!("3. scale-out: {clients} clients, 4 of them sending 250 messages/s each (100 B):");
        for split in [false, true] {
            let a = RelayProc::start(&bin, &dir, 5, split.then_some(na), fp);
            let b = split.then(|| RelayProc::start(&bin, &dir, 6, Some(nb), fp));
            if let Some(b) = &b {
                a.wait_peers(1);
                b.wait_peers(1);
            }
            let relays: Vec<&RelayProc> = std::iter::once(&a).chain(b.as_ref()).collect();
            let mut all: Vec<Client> = (0..clients)
                .map(|i| relays[i % relays.len()].client())
                .collect();
            let senders: Vec<Client> = all.drain(..4).collect();
            let stop = Arc::new(AtomicBool::new(false));
            let hs: Vec<_> = all
                .into_iter()
                .map(|c| receiver(c, None, stop.clone()))
                .collect();
            std::thread::sleep(Duration::from_millis(800));
            let before: Vec<(u64, u64, u64)> = relays
                .iter()
                .map(|r| {
                    let m = r.stat("messages_in") + r.stat("remote_messages_in");
                    let d = r.stat("deliveries") + r.stat("remote_deliveries");
                    (r.cpu_ns(), m, d)
                })
                .collect();
            let start = Instant::now();
            let ts: Vec<JoinHandle<u64>> = senders
                .into_iter()
                .map(|mut c| std::thread::spawn(move || send_paced(&mut c, 250, secs, 100)))
                .collect();
            let sent: u64 = ts.into_iter().map(|t| t.join().unwrap_or(0)).sum();
            std::thread::sleep(Duration::from_millis(300));
            let wall = start.elapsed().as_secs_f64();
            let mut total_d = 0;
            let mut line = String::new();
            for (r, (c0, m0, d0)) in relays.iter().zip(&before) {
                let m = r.stat("messages_in") + r.stat("remote_messages_in") - m0;
                let d = r.stat("deliveries") + r.stat("remote_deliveries") - d0;
                let cpu = r.cpu_ns() - c0;
                total_d += d;
                line += &format!(
                    " | relay: {m} msgs, {:.1} µs CPU/msg, {:.0} ns/delivery, {:.0}% of a core",
                    cpu as f64 / 1e3 / m.max(1) as f64,
                    cpu as f64 / d.max(1) as f64,
                    cpu as f64 / 1e9 / wall * 100.0
                );
            }
            println!(
                "   {} relay(s): {sent} sent, {:.0} deliveries/s{line}",
                relays.len(),
                total_d as f64 / wall
            );
            stop.store(true, Ordering::Relaxed);
            for h in hs {
                let _ = h.join();
            }
        }
    }
}
