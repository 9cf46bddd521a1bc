//! `cargo run --release --features internals --example bench -- [FLAGS]`: the relay against a
//! plaintext baseline, on loopback multicast, in the same run (issue 5; see
//! docs/performance.md).
//!
//! What runs:
//! * the system under test on its own thread: the relay (`RelayCore` + `driver::Relay` in a
//!   mio `Poll`, exactly as `mcrelay serve` drives it, control port off, no logger) or the
//!   BASELINE: a plaintext UDP fan-out forwarder with the same sockets, the same
//!   `recvmmsg`/`sendmmsg` batching (`mcrelay::driver::batch`), the same read budget and the
//!   same loop shape, but no crypto and no state beyond the list of client addresses
//!   (registered by a plaintext `JOIN`);
//! * a single-threaded load generator (the main thread) driving N clients, each with its own
//!   UDP socket and its own handshake (`ClientSession`, one mio `Poll` over all sockets, reads
//!   with `recvmmsg` too), pacing sends with a timerfd. Each message body carries the trial
//!   number, a sequence number and the send time; every receiving client decrypts it and
//!   records the latency.
//!
//! Figures per system: handshakes/s while the N clients join; deliveries/s (a message received
//! by N-1 clients counts N-1), loss, latency p50/p99/max, relay-thread CPU seconds per million
//! deliveries (the thread's own CPU clock, `pthread_getcpuclockid`: nanosecond resolution,
//! the same quantity as utime+stime in /proc/self/task/<tid>/stat), the heap the server
//! thread allocated (a counting global allocator tagging that thread: current peak and
//! allocations per delivery), and generator CPU so that a generator-bound row is visible.
//! `--rss BIN` instead runs the servers as child processes (`BIN serve`, and this binary with
//! `--serve-baseline` for the baseline) and reports their VmRSS/VmHWM idle, with N clients,
//! and after load.
//!
//! Loopback only. Exit status 0 unless something broke.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcrelay::client::{ClientConfig, ClientSession, Event, client_socket};
use mcrelay::core::{Config, RelayCore};
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;
use mcrelay::driver::batch::{self, BATCH, RecvBatch};
use mcrelay::wire::Outer;
use mcrelay::{MonitorSettings, NetConfig, Relay};
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

/// Where relay datagrams "come from" in this sans-IO harness (clients lock onto it).
const RELAY: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 254),
    9,
));

// ------------------------------------------------------------------ counting allocator

/// Counts what the server thread allocates (it sets `TRACK`); other threads cost one TLS read.
struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
}
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

fn tracked() -> bool {
    TRACK.try_with(|t| t.get()).unwrap_or(false)
}

fn grow(by: isize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if tracked() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            grow(l.size() as isize);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if tracked() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            grow(l.size() as isize);
        }
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if tracked() {
            LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if tracked() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            grow(new as isize - l.size() as isize);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ------------------------------------------------------------------ options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sys {
    Baseline,
    Relay,
}

impl Sys {
    fn name(self) -> &'static str {
        match self {
            Sys::Baseline => "baseline",
            Sys::Relay => "relay",
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    clients: usize,
    senders: usize,
    size: usize,
    rate: f64,
    max: bool,
    duration: f64,
    trial_secs: f64,
    runs: usize,
    json: bool,
    systems: Vec<Sys>,
    join_window: usize,
    rss: Option<PathBuf>,
    core_only: Option<u32>,
    scrape_ms: Option<u64>,
}

const USAGE: &str = "\
cargo run --release --features internals --example bench -- [FLAGS]

  --clients N        clients, each with its own socket and handshake (100)
  --senders K        of which K send, round-robin (1: one source, N-1 recipients per message)
  --size BYTES       message body size, at least 20 (100)
  --rate R           offered messages/s in total, one trial of --duration (1000)
  --max              instead: find the highest rate with < 1% loss (doubling, then bisecting,
                     --trial-secs trials), measure it for --duration (stepping down 5% while
                     that loses >= 1%, at most 6 times), and latency at half of it
  --duration SECS    measured trial length (2)
  --trial-secs SECS  search trial length with --max (0.5)
  --runs R           repeat baseline+relay R times, report medians (1)
  --join-window W    handshakes in flight while clients join (32)
  --relay-only | --baseline-only
  --rss BIN          memory mode: run `BIN serve` and the baseline as child processes and report
                     VmRSS/VmHWM idle, with N clients, and after a --rate trial
  --json             one JSON object on stdout instead of the table
  --scrape-ms MS     instead of baseline vs relay: the relay without and with its HTTP monitor
                     on, a thread doing GET /metrics every MS ms on a kept-alive connection
                     (as Prometheus does) for the whole run; reports both and their ratio
  --core-only M      no sockets: drive RelayCore directly (sans-IO) with --clients clients and
                     M messages from client 0, for a profiler, e.g.
                     valgrind --tool=callgrind --toggle-collect='*relay_messages*' ...
                     (MCRELAY_BENCH_KEY=PEM file skips key generation)
";

fn parse() -> Result<Opts, String> {
    let mut a = pico_args::Arguments::from_env();
    if a.contains(["-h", "--help"]) {
        print!("{USAGE}");
        std::process::exit(0);
    }
    if let Some(addr) = a
        .opt_value_from_str::<_, SocketAddrV4>("--serve-baseline")
        .map_err(|e| e.to_string())?
    {
        serve_baseline_forever(addr);
    }
    let e = |e: pico_args::Error| e.to_string();
    let relay_only = a.contains("--relay-only");
    let baseline_only = a.contains("--baseline-only");
    let o = Opts {
        clients: a.opt_value_from_str("--clients").map_err(e)?.unwrap_or(100),
        senders: a.opt_value_from_str("--senders").map_err(e)?.unwrap_or(1),
        size: a.opt_value_from_str("--size").map_err(e)?.unwrap_or(100),
        rate: a.opt_value_from_str("--rate").map_err(e)?.unwrap_or(1000.0),
        max: a.contains("--max"),
        duration: a
            .opt_value_from_str("--duration")
            .map_err(e)?
            .unwrap_or(2.0),
        trial_secs: a
            .opt_value_from_str("--trial-secs")
            .map_err(e)?
            .unwrap_or(0.5),
        runs: a.opt_value_from_str("--runs").map_err(e)?.unwrap_or(1),
        json: a.contains("--json"),
        join_window: a
            .opt_value_from_str("--join-window")
            .map_err(e)?
            .unwrap_or(32),
        rss: a.opt_value_from_str("--rss").map_err(e)?,
        core_only: a.opt_value_from_str("--core-only").map_err(e)?,
        scrape_ms: a.opt_value_from_str("--scrape-ms").map_err(e)?,
        systems: match (relay_only, baseline_only) {
            (true, false) => vec![Sys::Relay],
            (false, true) => vec![Sys::Baseline],
            _ => vec![Sys::Baseline, Sys::Relay],
        },
    };
    let rest = a.finish();
    if !rest.is_empty() {
        return Err(format!("unknown arguments {rest:?}\n\n{USAGE}"));
    }
    if o.clients < 2 || o.senders == 0 || o.senders > o.clients {
        return Err("need --clients >= 2 and 1 <= --senders <= --clients".into());
    }
    if o.size < BODY_MIN || o.size > 1000 {
        return Err(format!(
            "--size must be {BODY_MIN}..=1000 (one datagram either way)"
        ));
    }
    if o.scrape_ms.is_some() && (o.rss.is_some() || o.systems != [Sys::Baseline, Sys::Relay]) {
        return Err("--scrape-ms compares the relay with itself: no --rss, --*-only".into());
    }
    if o.scrape_ms == Some(0) {
        return Err("--scrape-ms must be positive".into());
    }
    if o.rate <= 0.0 || o.duration <= 0.0 || o.trial_secs <= 0.0 || o.runs == 0 {
        return Err("--rate, --duration, --trial-secs, --runs must be positive".into());
    }
    Ok(o)
}

// ------------------------------------------------------------------ small OS helpers

fn thread_cpu_clock(h: &JoinHandle<()>) -> libc::clockid_t {
    let mut cid: libc::clockid_t = 0;
    // SAFETY: a live thread's pthread_t and a valid out-pointer.
    let r = unsafe { libc::pthread_getcpuclockid(h.as_pthread_t() as libc::pthread_t, &mut cid) };
    assert_eq!(r, 0, "pthread_getcpuclockid");
    cid
}

fn clock_secs(cid: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(cid, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// utime + stime of a process, seconds (clock-tick resolution).
fn proc_cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// (VmRSS, VmHWM) in bytes.
fn proc_mem(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// Kernel drop counters (column `drops` of /proc/net/udp) summed over sockets bound to
/// `ports`, and for `port` alone: (port's drops, the others').
fn udp_drops(port: u16, ports: &[u16]) -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let (mut mine, mut others) = (0, 0);
    for l in s.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(local), Some(drops)) = (f.get(1), f.last()) else {
            continue;
        };
        let p = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            .unwrap_or(0);
        let d: u64 = drops.parse().unwrap_or(0);
        if p == port {
            mine += d;
        } else if ports.contains(&p) {
            others += d;
        }
    }
    (mine, others)
}

/// irq + softirq time of CPU `cpu` from /proc/stat, seconds (USER_HZ resolution). Loopback
/// delivery (IP/UDP receive path, socket enqueue, wakeup) runs as softirq on the sending CPU and
/// with IRQ time accounting is charged to no thread: for the server pinned to CPU 0 this is
/// the delivery work its sends cause (plus whatever else ran there).
fn cpu_irq_secs(cpu: usize) -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu} ");
    let Some(l) = s.lines().find(|l| l.starts_with(&name)) else {
        return f64::NAN;
    };
    let f: Vec<f64> = l
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(5).copied().unwrap_or(0.0) + f.get(6).copied().unwrap_or(0.0)) / hz
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays in bounds for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Online CPUs (not the affinity mask, which pinning narrows).
fn ncpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

struct TimerFd(RawFd);

impl TimerFd {
    fn new() -> TimerFd {
        // SAFETY: plain syscalls.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
            let fd = libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            );
            assert!(fd >= 0, "timerfd_create");
            TimerFd(fd)
        }
    }
    fn arm(&self, every: Option<Duration>) {
        let d = every.unwrap_or_default();
        let ts = libc::timespec {
            tv_sec: d.as_secs() as _,
            tv_nsec: d.subsec_nanos() as _,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: valid fd and pointers.
        unsafe { libc::timerfd_settime(self.0, 0, &spec, std::ptr::null_mut()) };
    }
    fn drain(&self) {
        let mut b = [0u8; 8];
        // SAFETY: 8-byte buffer for the 8-byte expiry count.
        unsafe { libc::read(self.0, b.as_mut_ptr().cast(), 8) };
    }
}

impl Drop for TimerFd {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.0) };
    }
}

fn unique_endpoint(n: u8) -> (Ipv4Addr, u16) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pid = std::process::id();
    (
        Ipv4Addr::new(239, 255, (pid % 250) as u8 + 1, n % 250 + 1),
        port,
    )
}

// ------------------------------------------------------------------ the baseline forwarder

const READ_BUDGET: usize = 256; // as in the driver
const SEND_QUEUE: usize = 4 << 20; // as Config::max_send_queue

/// Plaintext fan-out: `JOIN` registers the sender (answered `OK`), `PING` is answered `OK`,
/// anything else goes to every registered address but its source.
struct Forwarder {
    mcast: UdpSocket,
    ucast: UdpSocket,
    members: Vec<SocketAddr>,
    rx: RecvBatch,
    buf: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
    head: usize,
    read_more: bool,
}

fn mcast_socket(group: Ipv4Addr, port: u16) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&SocketAddrV4::new(group, port).into())?;
    s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)?;
    Ok(UdpSocket::from_std(s.into()))
}

fn ucast_socket() -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
    Ok(UdpSocket::from_std(s.into()))
}

impl Forwarder {
    fn new(group: Ipv4Addr, port: u16, poll: &Poll) -> io::Result<Forwarder> {
        let mut f = Forwarder {
            mcast: mcast_socket(group, port)?,
            ucast: ucast_socket()?,
            members: Vec::new(),
            rx: RecvBatch::default(),
            buf: Vec::new(),
            items: Vec::new(),
            head: 0,
            read_more: false,
        };
        poll.registry()
            .register(&mut f.mcast, Token(10), Interest::READABLE)?;
        poll.registry()
            .register(&mut f.ucast, Token(11), Interest::WRITABLE)?;
        Ok(f)
    }

    fn read(&mut self) {
        self.read_more = false;
        for _ in 0..READ_BUDGET / BATCH {
            match batch::recv_batch(&self.mcast, &mut self.rx) {
                Ok(n) => {
                    for i in 0..n {
                        let Some((from, bytes, trunc)) = self.rx.get(i) else {
                            continue;
                        };
                        if trunc {
                            continue;
                        }
                        if bytes == b"JOIN" || bytes == b"PING" {
                            if bytes == b"JOIN" && !self.members.contains(&from) {
                                self.members.push(from);
                            }
                            let start = self.buf.len();
                            self.buf.extend_from_slice(b"OK");
                            self.items.push((from, start, 2));
                            continue;
                        }
                        if self.buf.len() + bytes.len() > SEND_QUEUE {
                            continue;
                        }
                        let start = self.buf.len();
                        self.buf.extend_from_slice(bytes);
                        for m in 0..self.members.len() {
                            let to = self.members[m];
                            if to != from {
                                self.items.push((to, start, bytes.len()));
                            }
                        }
                    }
                    if n < BATCH {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
        self.read_more = true;
    }

    fn flush(&mut self) {
        while self.head < self.items.len() {
            let buf = &self.buf;
            let it = self.items[self.head..]
                .iter()
                .map(|&(to, s, l)| (to, &buf[s..s + l]));
            match batch::send_batch(&self.ucast, it) {
                Ok(0) => return,
                Ok(n) => self.head += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => self.head += 1,
            }
        }
        self.head = 0;
        self.items.clear();
        self.buf.clear();
    }

    /// The same loop shape as the relay's host: poll, read (bounded), flush.
    fn run(&mut self, poll: &mut Poll, stop: impl Fn() -> bool) {
        let mut events = Events::with_capacity(256);
        while !stop() {
            let timeout = self.read_more.then_some(Duration::ZERO);
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("poll: {e}"),
            }
            let readable = events.iter().any(|e| e.token() == Token(10));
            if readable || self.read_more {
                self.read();
            }
            self.flush();
        }
    }
}

fn serve_baseline_forever(addr: SocketAddrV4) -> ! {
    let mut poll = Poll::new().unwrap();
    let mut f = Forwarder::new(*addr.ip(), addr.port(), &poll).unwrap();
    f.run(&mut poll, || false);
    std::process::exit(0)
}

// ------------------------------------------------------------------ servers under test

enum Cpu {
    Thread(libc::clockid_t),
    Process(u32),
}

struct Server {
    sys: Sys,
    group: Ipv4Addr,
    port: u16,
    pin: Option<[u8; 32]>,
    cpu: Cpu,
    stop: Arc<AtomicBool>,
    waker: Option<Arc<Waker>>,
    thread: Option<JoinHandle<()>>,
    child: Option<Child>,
    scraper: Option<Scraper>,
}

/// GET /metrics every `interval` on one kept-alive connection, as Prometheus scrapes.
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Figures>,
}

impl Scraper {
    fn start(addr: SocketAddr, interval: Duration) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            // On the relay's core, as a Prometheus on the same host would compete with it;
            // the generator's core (and so the latency it measures) is left alone.
            if ncpus() >= 2 {
                pin_to_cpu(0);
            }
            let mut s = std::net::TcpStream::connect(addr).expect("monitor connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            let (mut n, mut total_us, mut max_us, mut bytes) = (0u64, 0f64, 0f64, 0u64);
            let mut buf = vec![0u8; 256 * 1024];
            let mut next = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                let t = Instant::now();
                s.write_all(req.as_bytes()).expect("scrape write");
                // Read the head, then Content-Length bytes of body.
                let mut have = 0;
                let (head_end, body_len) = loop {
                    let k = s.read(&mut buf[have..]).expect("scrape read");
                    assert!(k > 0, "monitor closed the scrape connection");
                    have += k;
                    if let Some(p) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_string();
                        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .expect("Content-Length");
                        break (p + 4, len);
                    }
                };
                while have < head_end + body_len {
                    let k = s.read(&mut buf[have..]).expect("scrape read");
                    assert!(k > 0, "monitor closed the scrape connection");
                    have += k;
                }
                let us = t.elapsed().as_secs_f64() * 1e6;
                n += 1;
                total_us += us;
                max_us = max_us.max(us);
                bytes += have as u64;
                next += interval;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            vec![
                ("scrapes", n as f64),
                ("scrape_mean_us", total_us / n.max(1) as f64),
                ("scrape_max_us", max_us),
                ("scrape_bytes_mean", bytes as f64 / n.max(1) as f64),
            ]
        });
        Scraper { stop, thread }
    }

    fn stop(self) -> Figures {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("scraper thread")
    }
}

const WAKE: Token = Token(0);

fn bench_config(clients: usize) -> Config {
    Config {
        // One source address (127.0.0.1) for every client: lift the anti-DoS budgets so the
        // join measures the relay's handshake work, not the limiter.
        handshakes_per_sec: 1_000_000,
        handshake_cpu_percent: 100,
        handshakes_per_source_per_sec: 1_000_000,
        max_clients: clients.max(1024),
        max_clients_per_source: clients.max(1024),
        ..Config::default()
    }
}

impl Server {
    fn start_thread(sys: Sys, pem: &str, clients: usize, n: u8, scrape: Option<u64>) -> Server {
        let (group, port) = unique_endpoint(n);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let pem = pem.to_string();
        LIVE.store(0, Ordering::SeqCst);
        PEAK.store(0, Ordering::SeqCst);
        let thread = std::thread::spawn(move || {
            if ncpus() >= 2 {
                pin_to_cpu(0);
            }
            TRACK.with(|t| t.set(true));
            let mut poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
            match sys {
                Sys::Baseline => {
                    let mut f = Forwarder::new(group, port, &poll).unwrap();
                    tx.send((waker, None, None)).unwrap();
                    f.run(&mut poll, || stop2.load(Ordering::Relaxed));
                }
                Sys::Relay => {
                    let key = ServerKey::from_pkcs8_pem(&pem).unwrap();
                    let fp = *key.fingerprint();
                    let now = Instant::now();
                    let net = NetConfig {
                        group,
                        port,
                        iface: Ipv4Addr::LOCALHOST,
                        control: None,
                        max_control: 8,
                        control_token: None,
                        ttl: 0,
                        monitor: scrape.map(|_| MonitorSettings {
                            listen: "127.0.0.1:0".parse().unwrap(),
                            ..MonitorSettings::default()
                        }),
                        ..NetConfig::default()
                    };
                    let mut relay = Relay::builder(key)
                        .config(bench_config(clients))
                        .net(net)
                        .build(poll.registry(), Token(10), now)
                        .unwrap();
                    tx.send((waker, Some(fp), relay.monitor_addr())).unwrap();
                    let mut events = Events::with_capacity(256);
                    while !stop2.load(Ordering::Relaxed) {
                        let timeout = relay
                            .poll_timeout()
                            .map(|t| t.saturating_duration_since(Instant::now()));
                        match poll.poll(&mut events, timeout) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => panic!("poll: {e}"),
                        }
                        let now = Instant::now();
                        for ev in events.iter() {
                            relay.handle_event(poll.registry(), ev, now);
                        }
                        relay.handle_timeout(poll.registry(), Instant::now());
                    }
                }
            }
            TRACK.with(|t| t.set(false));
        });
        let (waker, pin, monitor) = rx.recv().expect("server thread started");
        let cpu = Cpu::Thread(thread_cpu_clock(&thread));
        let scraper = monitor
            .zip(scrape)
            .map(|(addr, ms)| Scraper::start(addr, Duration::from_millis(ms)));
        Server {
            sys,
            group,
            port,
            pin,
            cpu,
            stop,
            waker: Some(waker),
            thread: Some(thread),
            child: None,
            scraper,
        }
    }

    fn start_child(
        sys: Sys,
        bin: &PathBuf,
        key_file: &PathBuf,
        pin: [u8; 32],
        clients: usize,
        n: u8,
    ) -> Server {
        let (group, port) = unique_endpoint(n);
        let mut cmd = match sys {
            Sys::Relay => {
                let mut c = Command::new(bin);
                c.arg("serve")
                    .args(["--group", &group.to_string(), "--port", &port.to_string()])
                    .args([
                        "--iface",
                        "127.0.0.1",
                        "--control",
                        "off",
                        "--log-level",
                        "error",
                    ])
                    .arg("--key-file")
                    .arg(key_file)
                    .args(["--handshakes-per-sec", "1000000"])
                    .args(["--handshake-cpu-percent", "100"])
                    .args(["--handshakes-per-source", "1000000"])
                    .args(["--max-clients", &clients.max(1024).to_string()])
                    .args(["--max-clients-per-source", &clients.max(1024).to_string()]);
                c
            }
            Sys::Baseline => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.args(["--serve-baseline", &format!("{group}:{port}")]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server child");
        let pid = child.id();
        let s = Server {
            sys,
            group,
            port,
            pin: (sys == Sys::Relay).then_some(pin),
            cpu: Cpu::Process(pid),
            stop: Arc::new(AtomicBool::new(false)),
            waker: None,
            thread: None,
            child: Some(child),
            scraper: None,
        };
        s.wait_ready();
        s
    }

    /// Ask without registering (relay: HELLO → COOKIE; baseline: PING → OK) until it answers.
    fn wait_ready(&self) {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.set_multicast_ttl_v4(0).unwrap();
        socket2::SockRef::from(&probe)
            .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
            .unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut msg = Vec::new();
        match self.sys {
            Sys::Relay => Outer::Hello { min: 1, max: 1 }.write(&mut msg),
            Sys::Baseline => msg.extend_from_slice(b"PING"),
        }
        let mut buf = [0u8; 2048];
        for _ in 0..300 {
            let _ = probe.send_to(&msg, (self.group, self.port));
            if probe.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!("{} child never answered", self.sys.name());
    }

    fn cpu_secs(&self) -> f64 {
        match self.cpu {
            Cpu::Thread(c) => clock_secs(c),
            Cpu::Process(p) => proc_cpu_secs(p),
        }
    }

    fn mem(&self) -> (u64, u64) {
        self.child
            .as_ref()
            .map(|c| proc_mem(c.id()))
            .unwrap_or((0, 0))
    }

    /// Stop it; the scraper's figures, if one ran.
    fn stop(mut self) -> Figures {
        let scraped = self.scraper.take().map(Scraper::stop).unwrap_or_default();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = &self.waker {
            let _ = w.wake();
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        scraped
    }
}

// ------------------------------------------------------------------ the load generator

/// Message body: trial u32 LE, seq u64 LE, send time (ns since the generator's epoch) u64 LE.
const BODY_MIN: usize = 20;
const TIMER: Token = Token(1 << 30);
const HIST_US: usize = 200_000;
/// How long after the last send a delivery still counts.
const GRACE: Duration = Duration::from_millis(100);
/// Client socket receive buffer: absorbs scheduling hiccups of the single generator thread.
const CLIENT_RCVBUF: usize = 1 << 20;

struct Gen {
    sys: Sys,
    poll: Poll,
    events: Events,
    socks: Vec<UdpSocket>,
    sess: Vec<Option<ClientSession>>,
    to: SocketAddr,
    rx: RecvBatch,
    epoch: Instant,
    timer: TimerFd,
    senders: usize,
    body: Vec<u8>,
    next_keepalive: Instant,
    // trial state
    trial: u32,
    seq: u64,
    received: u64,
    hist: Vec<u32>,
    lat_max_ns: u64,
    last_rx: Instant,
    joined: Vec<bool>,
    pin: Option<[u8; 32]>,
}

#[derive(Debug, Clone, Default)]
struct Trial {
    rate: f64,
    secs: f64,
    received: u64,
    loss: f64,
    deliveries_per_s: f64,
    server_cpu: f64,
    gen_cpu: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    allocs: u64,
    server_drops: u64,
    client_drops: u64,
    server_irq: f64,
}

impl Gen {
    fn new(sys: Sys, server: &Server, senders: usize, size: usize) -> Gen {
        let poll = Poll::new().unwrap();
        let timer = TimerFd::new();
        poll.registry()
            .register(&mut SourceFd(&timer.0), TIMER, Interest::READABLE)
            .unwrap();
        let now = Instant::now();
        Gen {
            sys,
            poll,
            events: Events::with_capacity(1024),
            socks: Vec::new(),
            sess: Vec::new(),
            to: SocketAddr::from((server.group, server.port)),
            rx: RecvBatch::default(),
            epoch: now,
            timer,
            senders,
            body: vec![0u8; size],
            next_keepalive: now,
            trial: 0,
            seq: 0,
            received: 0,
            hist: vec![0; HIST_US],
            lat_max_ns: 0,
            last_rx: now,
            joined: Vec::new(),
            pin: server.pin,
        }
    }

    fn flush(&mut self, i: usize) {
        if let Some(s) = &mut self.sess[i] {
            while let Some(d) = s.poll_transmit() {
                let _ = self.socks[i].send_to(&d, self.to);
            }
        }
    }

    fn start_join(&mut self, i: usize) {
        match self.sys {
            Sys::Relay => {
                let rng = Rng::from_os().expect("rng");
                self.sess[i] = Some(ClientSession::new(rng, self.pin, None, Instant::now()));
                self.flush(i);
            }
            Sys::Baseline => {
                let _ = self.socks[i].send_to(b"JOIN", self.to);
            }
        }
    }

    #[allow(clippy::needless_range_loop)]
    /// Open `n` sockets and register every client, `window` handshakes in flight.
    /// Returns handshakes per second.
    fn join(&mut self, n: usize, window: usize) -> f64 {
        let cfg = ClientConfig {
            group: Ipv4Addr::UNSPECIFIED,
            port: 0,
            iface: Ipv4Addr::LOCALHOST,
            ttl: 0,
            pin: None,
            admission: None,
        };
        for i in 0..n {
            let s = client_socket(&cfg).expect("client socket");
            s.set_nonblocking(true).unwrap();
            let _ = socket2::SockRef::from(&s).set_recv_buffer_size(CLIENT_RCVBUF);
            let mut s = UdpSocket::from_std(s);
            self.poll
                .registry()
                .register(&mut s, Token(i), Interest::READABLE)
                .unwrap();
            self.socks.push(s);
            self.sess.push(None);
            self.joined.push(false);
        }
        let t0 = Instant::now();
        let mut started: Vec<Option<Instant>> = vec![None; n];
        let (mut next, mut done) = (0usize, 0usize);
        let mut last_progress = Instant::now();
        while done < n {
            let now = Instant::now();
            while next < n && next - done < window {
                self.start_join(next);
                started[next] = Some(now);
                next += 1;
            }
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(20)))
                .unwrap();
            let toks: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for t in toks {
                if t < n {
                    self.drain(t);
                }
            }
            let now = Instant::now();
            for i in 0..next {
                if self.joined[i] {
                    continue;
                }
                let ok = match self.sys {
                    Sys::Relay => {
                        let s = self.sess[i].as_mut().unwrap();
                        if let Some(e) = s.take_error() {
                            panic!("client {i}: {e}");
                        }
                        s.handle_timeout(now);
                        let ok = s.id().is_some();
                        self.flush(i);
                        ok
                    }
                    Sys::Baseline => false, // set by drain on "OK"
                };
                if ok {
                    self.joined[i] = true;
                }
                if !self.joined[i]
                    && self.sys == Sys::Baseline
                    && started[i].is_some_and(|t| now - t > Duration::from_millis(500))
                {
                    started[i] = Some(now);
                    let _ = self.socks[i].send_to(b"JOIN", self.to);
                }
            }
            let c = self.joined.iter().filter(|&&j| j).count();
            if c > done {
                last_progress = now;
            }
            done = c;
            if now - last_progress > Duration::from_secs(30) {
                panic!("join stalled at {done}/{n}");
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        // Let JOIN notices and stray answers settle before measuring.
        self.settle(Duration::from_millis(200));
        n as f64 / secs
    }

    fn settle(&mut self, quiet: Duration) {
        let mut last = Instant::now();
        let start = last;
        while last.elapsed() < quiet && start.elapsed() < Duration::from_secs(5) {
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(10)))
                .unwrap();
            let toks: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for t in toks {
                if t < self.socks.len() {
                    self.drain(t);
                    last = Instant::now();
                } else if t == TIMER.0 {
                    self.timer.drain();
                }
            }
            self.keepalives();
        }
    }

    fn keepalives(&mut self) {
        let now = Instant::now();
        if self.sys != Sys::Relay || now < self.next_keepalive {
            return;
        }
        self.next_keepalive = now + Duration::from_secs(1);
        for i in 0..self.sess.len() {
            if let Some(s) = &mut self.sess[i] {
                s.handle_timeout(now);
            }
            self.flush(i);
        }
    }

    fn record(&mut self, data: &[u8], now_ns: u64) {
        if data.len() < BODY_MIN || u32::from_le_bytes(data[0..4].try_into().unwrap()) != self.trial
        {
            return;
        }
        let ts = u64::from_le_bytes(data[12..20].try_into().unwrap());
        let lat = now_ns.saturating_sub(ts);
        self.received += 1;
        self.hist[((lat / 1000) as usize).min(HIST_US - 1)] += 1;
        self.lat_max_ns = self.lat_max_ns.max(lat);
    }

    /// Read everything socket `i` has.
    fn drain(&mut self, i: usize) {
        loop {
            let n = match batch::recv_batch(&self.socks[i], &mut self.rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let now = Instant::now();
            let now_ns = (now - self.epoch).as_nanos() as u64;
            let mut got = false;
            for k in 0..n {
                let Some((from, bytes, _)) = self.rx.get(k) else {
                    continue;
                };
                match self.sys {
                    Sys::Baseline => {
                        if bytes == b"OK" {
                            self.joined[i] = true;
                        } else {
                            // Copy out: `record` needs `&mut self`.
                            let mut b = [0u8; BODY_MIN];
                            if bytes.len() >= BODY_MIN {
                                b.copy_from_slice(&bytes[..BODY_MIN]);
                                let t = u32::from_le_bytes(b[0..4].try_into().unwrap());
                                if t == self.trial {
                                    got = true;
                                }
                                self.record(&b, now_ns);
                            }
                        }
                    }
                    Sys::Relay => {
                        let s = self.sess[i].as_mut().unwrap();
                        s.handle_datagram(now, from, bytes);
                        while let Some(ev) = self.sess[i].as_mut().unwrap().poll_event() {
                            if let Event::Message { data, .. } = ev {
                                got = true;
                                self.record(&data, now_ns);
                            }
                        }
                    }
                }
            }
            if got {
                self.last_rx = now;
            }
            if n < BATCH {
                return;
            }
        }
    }

    fn send_one(&mut self, k: usize) -> bool {
        self.seq += 1;
        let now = Instant::now();
        let ts = (now - self.epoch).as_nanos() as u64;
        self.body[0..4].copy_from_slice(&self.trial.to_le_bytes());
        self.body[4..12].copy_from_slice(&self.seq.to_le_bytes());
        self.body[12..20].copy_from_slice(&ts.to_le_bytes());
        match self.sys {
            Sys::Baseline => self.socks[k].send_to(&self.body, self.to).is_ok(),
            Sys::Relay => {
                let s = self.sess[k].as_mut().unwrap();
                if s.send(now, &self.body).is_err() {
                    return false;
                }
                let mut ok = true;
                while let Some(d) = s.poll_transmit() {
                    ok &= self.socks[k].send_to(&d, self.to).is_ok();
                }
                ok
            }
        }
    }

    fn percentile(&self, q: f64) -> f64 {
        let total: u64 = self.hist.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return f64::NAN;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0u64;
        for (us, &c) in self.hist.iter().enumerate() {
            acc += u64::from(c);
            if acc >= want {
                return us as f64 + 1.0; // bucket upper bound
            }
        }
        HIST_US as f64
    }

    /// Offer `rate` messages/s for `secs`, then collect stragglers.
    fn trial(&mut self, server: &Server, rate: f64, secs: f64) -> Trial {
        self.trial += 1;
        self.received = 0;
        self.hist.iter_mut().for_each(|c| *c = 0);
        self.lat_max_ns = 0;
        let recipients = (self.socks.len() - 1) as u64;
        let cpu0 = server.cpu_secs();
        let gcpu0 = clock_secs(libc::CLOCK_THREAD_CPUTIME_ID);
        let allocs0 = ALLOCS.load(Ordering::Relaxed);
        let ports: Vec<u16> = self
            .socks
            .iter()
            .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
            .collect();
        let drops0 = udp_drops(server.port, &ports);
        let irq0 = cpu_irq_secs(0);
        let t0 = Instant::now();
        self.last_rx = t0;
        let end = t0 + Duration::from_secs_f64(secs);
        self.timer.arm(Some(
            Duration::from_secs_f64(1.0 / rate).max(Duration::from_micros(20)),
        ));
        let (mut offered, mut sent, mut next_sender) = (0u64, 0u64, 0usize);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let due = ((now - t0).as_secs_f64() * rate) as u64 + 1;
            let mut burst = 0;
            while offered < due && burst < 256 {
                offered += 1;
                burst += 1;
                if self.send_one(next_sender) {
                    sent += 1;
                }
                next_sender = (next_sender + 1) % self.senders;
            }
            self.poll.poll(&mut self.events, Some(end - now)).unwrap();
            let toks: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for t in toks {
                if t == TIMER.0 {
                    self.timer.drain();
                } else if t < self.socks.len() {
                    self.drain(t);
                }
            }
            self.keepalives();
        }
        self.timer.arm(None);
        let send_end = Instant::now();
        // Stragglers count only within GRACE: a delivery later than that is lost, so a
        // backlog in some buffer cannot pass for throughput.
        let grace_end = send_end + GRACE;
        loop {
            let now = Instant::now();
            if now >= grace_end || now - self.last_rx.max(send_end) > Duration::from_millis(20) {
                break;
            }
            self.poll
                .poll(&mut self.events, Some(grace_end - now))
                .unwrap();
            let toks: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for t in toks {
                if t < self.socks.len() {
                    self.drain(t);
                }
            }
        }
        let cpu = server.cpu_secs() - cpu0;
        let gcpu = clock_secs(libc::CLOCK_THREAD_CPUTIME_ID) - gcpu0;
        let received = self.received;
        let drops1 = udp_drops(server.port, &ports);
        let server_irq = if matches!(server.cpu, Cpu::Thread(_)) && ncpus() >= 2 {
            cpu_irq_secs(0) - irq0
        } else {
            f64::NAN
        };
        let elapsed = (self.last_rx.max(send_end) - t0).as_secs_f64();
        // Not measured: empty every queue before the next trial.
        self.trial += 1;
        self.settle(Duration::from_millis(50));
        let expected = sent * recipients;
        Trial {
            rate,
            secs: elapsed,

            received,
            loss: if expected == 0 {
                1.0
            } else {
                1.0 - received as f64 / expected as f64
            },
            deliveries_per_s: received as f64 / elapsed,
            server_cpu: cpu,
            gen_cpu: gcpu,
            p50_us: self.percentile(0.50),
            p99_us: self.percentile(0.99),
            max_us: self.lat_max_ns as f64 / 1000.0,
            allocs: ALLOCS.load(Ordering::Relaxed) - allocs0,
            server_drops: drops1.0 - drops0.0,
            client_drops: drops1.1 - drops0.1,
            server_irq,
        }
    }
}

fn progress(sys: Sys, what: &str, t: &Trial) {
    eprintln!(
        "  {:<8} {what:<10} rate {:>9.0} msg/s  deliveries {:>10.0}/s  loss {:>6.2}%  server cpu {:>5.1}% +irq {:>5.1}%  gen cpu {:>5.1}%  p50 {:>7.0} us  p99 {:>7.0} us  kernel drops: server in {} clients {}",
        sys.name(),
        t.rate,
        t.deliveries_per_s,
        t.loss * 100.0,
        t.server_cpu / t.secs * 100.0,
        t.server_irq / t.secs * 100.0,
        t.gen_cpu / t.secs * 100.0,
        t.p50_us,
        t.p99_us,
        t.server_drops,
        t.client_drops
    );
}

// ------------------------------------------------------------------ one system, one run

type Figures = Vec<(&'static str, f64)>;

fn measure(o: &Opts, sys: Sys, server: &Server) -> Figures {
    let mut g = Gen::new(sys, server, o.senders, o.size);
    let hs = g.join(o.clients, o.join_window);
    eprintln!(
        "  {:<8} {} clients joined: {hs:.0} handshakes/s",
        sys.name(),
        o.clients
    );
    let heap_after_join = LIVE.load(Ordering::Relaxed).max(0) as f64;
    let recipients = (o.clients - 1) as f64;
    let mut f: Figures = vec![("handshakes_per_s", hs)];
    let main = if o.max {
        let mut r = (50_000.0 / recipients).max(10.0);
        let (mut lo, mut hi): (f64, Option<f64>) = (0.0, None);
        for _ in 0..14 {
            let t = g.trial(server, r, o.trial_secs);
            progress(sys, "search", &t);
            if t.loss < 0.01 {
                lo = r;
            } else {
                hi = Some(r);
            }
            r = match hi {
                None => r * 2.0,
                Some(h) if (h - lo) / h < 0.05 => break,
                Some(h) => (lo + h) / 2.0,
            };
        }
        let mut lo = if lo == 0.0 { r } else { lo };
        // The search's short trials can pass a rate that a --duration trial cannot hold:
        // step down 5 % at a time until it does (at most 6 times), so "at max" means what
        // --max promises, < 1 % loss over the measured duration.
        let mut t = g.trial(server, lo, o.duration);
        progress(sys, "at max", &t);
        for _ in 0..6 {
            if t.loss < 0.01 {
                break;
            }
            lo *= 0.95;
            t = g.trial(server, lo, o.duration);
            progress(sys, "at max", &t);
        }
        let half = g.trial(server, lo / 2.0, o.duration);
        progress(sys, "half max", &half);
        f.push(("max_rate_msg_per_s", lo));
        f.push(("half_max_deliveries_per_s", half.deliveries_per_s));
        f.push(("half_max_loss_pct", half.loss * 100.0));
        f.push((
            "half_max_server_cpu_s_per_m",
            half.server_cpu / half.received.max(1) as f64 * 1e6,
        ));
        f.push(("p50_us", half.p50_us));
        f.push(("p99_us", half.p99_us));
        f.push(("max_us", half.max_us));
        t
    } else {
        let t = g.trial(server, o.rate, o.duration);
        progress(sys, "fixed", &t);
        f.push(("p50_us", t.p50_us));
        f.push(("p99_us", t.p99_us));
        f.push(("max_us", t.max_us));
        t
    };
    f.push(("deliveries_per_s", main.deliveries_per_s));
    f.push(("loss_pct", main.loss * 100.0));
    f.push((
        "server_cpu_s_per_m_deliveries",
        main.server_cpu / main.received.max(1) as f64 * 1e6,
    ));
    f.push((
        "server_irq_s_per_m_deliveries",
        main.server_irq / main.received.max(1) as f64 * 1e6,
    ));
    // What the server could sustain if it were the only bottleneck: deliveries per second of
    // its own thread CPU time, and of thread + irq/softirq time on its core. The honest
    // comparison when the generator (or the shared machine) saturates first.
    f.push((
        "server_bound_deliveries_per_s",
        main.received as f64 / main.server_cpu.max(1e-9),
    ));
    f.push((
        "server_core_bound_deliveries_per_s",
        main.received as f64 / (main.server_cpu + main.server_irq).max(1e-9),
    ));
    f.push(("server_cpu_util_pct", main.server_cpu / main.secs * 100.0));
    f.push(("server_irq_util_pct", main.server_irq / main.secs * 100.0));
    f.push(("gen_cpu_util_pct", main.gen_cpu / main.secs * 100.0));
    f.push((
        "server_allocs_per_delivery",
        main.allocs as f64 / main.received.max(1) as f64,
    ));
    f.push(("server_heap_after_join_kib", heap_after_join / 1024.0));
    f.push((
        "server_heap_peak_kib",
        PEAK.load(Ordering::Relaxed).max(0) as f64 / 1024.0,
    ));
    f
}

fn measure_rss(o: &Opts, sys: Sys, server: &Server) -> Figures {
    std::thread::sleep(Duration::from_millis(300));
    let (rss0, hwm0) = server.mem();
    let mut g = Gen::new(sys, server, o.senders, o.size);
    let hs = g.join(o.clients, o.join_window);
    let (rss1, hwm1) = server.mem();
    eprintln!(
        "  {:<8} idle RSS {} KiB; {} clients joined ({hs:.0}/s): RSS {} KiB",
        sys.name(),
        rss0 / 1024,
        o.clients,
        rss1 / 1024
    );
    let t = g.trial(server, o.rate, o.duration);
    progress(sys, "fixed", &t);
    let (rss2, hwm2) = server.mem();
    let k = |b: u64| b as f64 / 1024.0;
    vec![
        ("idle_rss_kib", k(rss0)),
        ("idle_hwm_kib", k(hwm0)),
        ("joined_rss_kib", k(rss1)),
        ("joined_hwm_kib", k(hwm1)),
        ("loaded_rss_kib", k(rss2)),
        ("loaded_hwm_kib", k(hwm2)),
        ("handshakes_per_s", hs),
        ("deliveries_per_s", t.deliveries_per_s),
        ("loss_pct", t.loss * 100.0),
        (
            "server_cpu_s_per_m_deliveries",
            t.server_cpu / t.received.max(1) as f64 * 1e6,
        ),
        ("p99_us", t.p99_us),
    ]
}

// ------------------------------------------------------------------ report

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn medians(runs: &[Figures]) -> Figures {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (*k, median(runs.iter().map(|r| r[i].1).collect())))
        .collect()
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

// ------------------------------------------------------------------ sans-IO profile driver

struct Peer {
    addr: SocketAddr,
    s: ClientSession,
}

/// Move datagrams between the core and the clients until nothing moves.
fn pump(core: &mut RelayCore, peers: &mut [Peer], now: Instant) {
    loop {
        let mut moved = false;
        for p in peers.iter_mut() {
            while let Some(d) = p.s.poll_transmit() {
                core.handle_datagram(now, p.addr, &d);
                moved = true;
            }
        }
        core.process_registrations(now, 1024);
        let out: Vec<(SocketAddr, Vec<u8>)> =
            core.transmits().map(|(a, d)| (a, d.to_vec())).collect();
        core.advance_transmits(out.len(), 0);
        for (to, d) in out {
            if let Some(p) = peers.iter_mut().find(|p| p.addr == to) {
                p.s.handle_datagram(now, RELAY, &d);
                while p.s.poll_event().is_some() {}
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

/// The profiled part: `sealed` datagrams from one client through the core, output dropped.
#[inline(never)]
fn relay_messages(
    core: &mut RelayCore,
    from: SocketAddr,
    sealed: &[Vec<u8>],
    start: Instant,
) -> u64 {
    let mut out = 0u64;
    for (i, d) in sealed.iter().enumerate() {
        let now = start + Duration::from_micros(i as u64);
        core.handle_datagram(now, from, d);
        let n = core.transmits().count();
        out += n as u64;
        core.advance_transmits(n, 0);
    }
    out
}

/// Native per-call costs of the pieces of one delivery's encryption, for a body of `size`
/// bytes (plaintext = SEQ + SENDER + DATA TLVs, as the relay seals it).
fn micro(size: usize) {
    use aes::cipher::{BlockModeEncrypt, KeyIvInit};
    use hmac::{KeyInit, Mac};
    use mcrelay::crypto::{base64, fernet};
    const N: u32 = 200_000;
    let plain = vec![7u8; size + 24];
    let token = fernet::token_len(plain.len());
    let raw = token / 4 * 3; // ~ the raw token, the HMAC input + tag
    let ct_len = (plain.len() / 16 + 1) * 16;
    let time = |name: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..N {
            f();
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(N);
        println!("micro: {name:<44} {ns:>7.0} ns");
        ns
    };
    let key = fernet::FernetKey::from_bytes(&[3u8; 32]);
    let mut out = Vec::with_capacity(4096);
    let mut rng = Rng::from_seed([1; 32]);
    time(
        &format!("fernet::encrypt_into ({} B plaintext)", plain.len()),
        &mut || {
            out.clear();
            let iv = rng.iv();
            fernet::encrypt_into(&key, &iv, 1, std::hint::black_box(&plain), &mut out);
        },
    );
    let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[1u8; 16]).unwrap();
    let input = vec![5u8; raw - 32];
    time(
        &format!("HMAC-SHA256, keyed state cloned ({} B)", input.len()),
        &mut || {
            let mut m = mac.clone();
            m.update(std::hint::black_box(&input));
            std::hint::black_box(m.finalize().into_bytes());
        },
    );
    let mut buf = vec![0u8; ct_len];
    time(
        &format!("AES-128-CBC encrypt ({ct_len} B, key schedule + IV init)"),
        &mut || {
            let mut enc =
                cbc::Encryptor::<aes::Aes128Enc>::new(&[1u8; 16].into(), &[2u8; 16].into());
            let (blocks, _) = aes::cipher::array::Array::slice_as_chunks_mut(&mut buf);
            enc.encrypt_blocks(blocks);
            std::hint::black_box(&buf);
        },
    );
    let rawbuf = vec![9u8; raw];
    time(
        &format!("base64url encode ({raw} B -> {token} B)"),
        &mut || {
            out.clear();
            base64::encode(std::hint::black_box(&rawbuf), &mut out);
        },
    );
    time("Rng::iv", &mut || {
        std::hint::black_box(rng.iv());
    });
    // What the relay runs per version-2 recipient: a binary token laid out, then finished
    // alone or four at a time (per token).
    let keys: Vec<fernet::FernetKey> = (0..4u8)
        .map(|k| fernet::FernetKey::from_bytes(&[k; 32]))
        .collect();
    let len = fernet::raw_token_len(plain.len());
    time(
        &format!(
            "fernet::finish_raw, one token ({len} B, {})",
            if mcrelay::crypto::multi::available() {
                "SHA/AES-NI kernels"
            } else {
                "RustCrypto"
            }
        ),
        &mut || {
            out.clear();
            let iv = rng.iv();
            fernet::prepare_raw(&iv, 1, std::hint::black_box(&plain), &mut out);
            fernet::finish_raw(&keys[0], &mut out);
        },
    );
    let ns4 = time("fernet::finish_raw_x4, four tokens", &mut || {
        out.clear();
        for _ in 0..4 {
            let iv = rng.iv();
            fernet::prepare_raw(&iv, 1, std::hint::black_box(&plain), &mut out);
        }
        let (a, rest) = out.split_at_mut(len);
        let (b, rest) = rest.split_at_mut(len);
        let (c, d) = rest.split_at_mut(len);
        fernet::finish_raw_x4([&keys[0], &keys[1], &keys[2], &keys[3]], [a, b, c, d]);
    });
    println!("micro: {:<44} {:>7.0} ns", "  = per token", ns4 / 4.0);
}

fn core_only(o: &Opts, messages: u32) {
    let key = match std::env::var_os("MCRELAY_BENCH_KEY") {
        Some(p) => ServerKey::from_pkcs8_pem(&std::fs::read_to_string(p).unwrap()).unwrap(),
        None => ServerKey::generate(2048).unwrap(),
    };
    let start = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut core = RelayCore::new(
        bench_config(o.clients),
        key,
        Rng::from_seed([7; 32]),
        start,
        unix,
    )
    .expect("valid config");
    let mut peers: Vec<Peer> = (0..o.clients)
        .map(|i| Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 20000 + i as u16)),
            s: ClientSession::new(Rng::from_seed([i as u8; 32]), None, None, start),
        })
        .collect();
    // In groups, within the relay's queue of pending registrations.
    for group in peers.chunks_mut(32) {
        pump(&mut core, group, start);
    }
    assert_eq!(core.client_count(), o.clients, "all registered");
    // Seal every message first (client work, outside the profiled function).
    let mut body = vec![0u8; o.size];
    let sealed: Vec<Vec<u8>> = (0..messages)
        .map(|i| {
            body[..4].copy_from_slice(&i.to_le_bytes());
            peers[0].s.send(start, &body).unwrap();
            peers[0].s.poll_transmit().unwrap()
        })
        .collect();
    let t = Instant::now();
    let out = relay_messages(&mut core, peers[0].addr, &sealed, start);
    let secs = t.elapsed().as_secs_f64();
    micro(o.size);
    println!(
        "core-only: {messages} messages x {} recipients = {out} datagrams in {secs:.3} s: {:.3} us per delivery (one thread, no syscalls)",
        o.clients - 1,
        secs / out as f64 * 1e6
    );
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    if let Some(m) = o.core_only {
        core_only(&o, m);
        return;
    }
    eprintln!("bench: {o:?}");
    if ncpus() >= 2 {
        // Server thread on CPU 0 (see Server::start_thread), generator on CPU 1.
        pin_to_cpu(1);
    }
    eprintln!("bench: generating a 2048-bit RSA key");
    let key = ServerKey::generate(2048).expect("keygen");
    let dir = std::env::temp_dir().join(format!("mcrelay-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let key_file = dir.join("k.pem");
    key.save_new(&key_file).expect("save key");
    let pem = std::fs::read_to_string(&key_file).unwrap();
    let fp = *key.fingerprint();
    if o.scrape_ms.is_some() {
        // What one /metrics body costs the relay thread to build, without the noise of the
        // network and the other threads: the formatter /metrics and `ctl metrics` share.
        let now = Instant::now();
        let k = ServerKey::from_pkcs8_pem(&pem).unwrap();
        let core = RelayCore::new(bench_config(o.clients), k, Rng::from_seed([7; 32]), now, 0)
            .expect("valid config");
        let mut body = String::new();
        let rounds = 2000;
        let t = Instant::now();
        for _ in 0..rounds {
            body.clear();
            mcrelay::control::format_metrics(&mut body, &core, now);
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
        eprintln!(
            "bench: format_metrics: {us:.1} us for {} bytes (mean of {rounds})",
            body.len()
        );
    }

    // What is compared: baseline vs relay, or (--scrape-ms) the relay without vs with
    // scrapes. The second column is divided by the first.
    let variants: Vec<(&'static str, Sys, Option<u64>)> = match o.scrape_ms {
        Some(ms) => vec![
            ("relay", Sys::Relay, None),
            ("scraped", Sys::Relay, Some(ms)),
        ],
        None => o.systems.iter().map(|&s| (s.name(), s, None)).collect(),
    };
    let mut results: Vec<(&'static str, Vec<Figures>)> =
        variants.iter().map(|v| (v.0, Vec::new())).collect();
    let mut n = 0u8;
    for run in 0..o.runs {
        // With --scrape-ms, every other run measures the scraped relay first: whatever drifts
        // during a run pair hits both orders alike.
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if o.scrape_ms.is_some() && run % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (label, figs) = &mut results[i];
            let (_, sys, scrape) = variants[i];
            n = n.wrapping_add(1);
            eprintln!("bench: run {}/{} {label}", run + 1, o.runs);
            let f = match &o.rss {
                Some(bin) => {
                    let s = Server::start_child(sys, bin, &key_file, fp, o.clients, n);
                    let f = measure_rss(&o, sys, &s);
                    s.stop();
                    f
                }
                None => {
                    let s = Server::start_thread(sys, &pem, o.clients, n, scrape);
                    let mut f = measure(&o, sys, &s);
                    let scraped = s.stop();
                    if let Some(ms) = scrape {
                        let n = scraped.first().map_or(0.0, |x| x.1);
                        eprintln!("  scraper: {n} scrapes of /metrics every {ms} ms: {scraped:?}");
                    }
                    f.extend(scraped);
                    f
                }
            };
            figs.push(f);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let med: Vec<(&'static str, Figures)> = results.iter().map(|(l, r)| (*l, medians(r))).collect();
    let get = |label: &str, k: &str| {
        med.iter()
            .find(|(l, _)| *l == label)
            .and_then(|(_, f)| f.iter().find(|(n, _)| *n == k).map(|x| x.1))
    };
    let (first, second) = match o.scrape_ms {
        Some(_) => ("relay", "scraped"),
        None => ("baseline", "relay"),
    };
    let mut keys: Vec<&'static str> = Vec::new();
    for (_, f) in &med {
        for (k, _) in f {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
    }
    if o.json {
        let mut s = format!(
            "{{\"clients\":{},\"senders\":{},\"size\":{},\"mode\":\"{}\",\"runs\":{}",
            o.clients,
            o.senders,
            o.size,
            if o.rss.is_some() {
                "rss".to_string()
            } else if let Some(ms) = o.scrape_ms {
                format!("rate {} scrape {ms} ms", o.rate)
            } else if o.max {
                "max".to_string()
            } else {
                format!("rate {}", o.rate)
            },
            o.runs
        );
        for (label, f) in &med {
            s += &format!(",\"{label}\":{{");
            let body: Vec<String> = f
                .iter()
                .map(|(k, v)| format!("\"{k}\":{}", num(*v)))
                .collect();
            s += &body.join(",");
            s += "}";
        }
        s += ",\"ratio\":{";
        let body: Vec<String> = keys
            .iter()
            .map(|k| {
                let r = match (get(second, k), get(first, k)) {
                    (Some(a), Some(b)) if b != 0.0 => a / b,
                    _ => f64::NAN,
                };
                format!("\"{k}\":{}", num(r))
            })
            .collect();
        s += &body.join(",");
        s += "}}";
        println!("{s}");
    } else {
        println!(
            "clients {} senders {} size {} {} (medians of {} run(s))",
            o.clients,
            o.senders,
            o.size,
            if o.rss.is_some() {
                format!("rss mode, rate {} msg/s", o.rate)
            } else if let Some(ms) = o.scrape_ms {
                format!("rate {} msg/s, GET /metrics every {ms} ms", o.rate)
            } else if o.max {
                "max search".to_string()
            } else {
                format!("rate {} msg/s", o.rate)
            },
            o.runs
        );
        println!(
            "{:<32} {:>14} {:>14} {:>10}",
            "figure",
            first,
            second,
            format!(
                "{second}/{}",
                if first == "baseline" { "base" } else { first }
            )
        );
        for k in &keys {
            let b = get(first, k);
            let r = get(second, k);
            let ratio = match (r, b) {
                (Some(a), Some(b)) if b != 0.0 => fmt(a / b),
                _ => "-".into(),
            };
            println!(
                "{:<32} {:>14} {:>14} {:>10}",
                k,
                b.map(fmt).unwrap_or("-".into()),
                r.map(fmt).unwrap_or("-".into()),
                ratio
            );
        }
    }
}
