//! The system under test: on a thread of this process pinned to CPU 0, or a child process
//! (`--server BIN`, `--rss BIN`) pinned to CPU 0 as well. Its CPU time, split, and (for the
//! relay) its gauges: in-process from atomics the server thread publishes after every loop
//! turn, from a child through its control port (`stats`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mcrelay::core::Config;
use mcrelay::crypto::key::ServerKey;
use mcrelay::wire::Outer;
use mcrelay::{Distribution, GroupConfig, MonitorSettings, NetConfig, Relay};
use mio::{Events, Poll, Token, Waker};

use crate::Sys;
use crate::alloc::{LIVE, PEAK, TRACK};
use crate::baseline::Forwarder;
use crate::measure::Figures;
use crate::os;
use crate::scrape::Scraper;

/// The CPU the server runs on; the generator takes CPU 1.
pub const SERVER_CPU: usize = 0;

enum Cpu {
    Thread { clock: libc::clockid_t, tid: i32 },
    Process(u32),
}

/// Cumulative CPU figures of the server and its core, seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// The server thread's (process's) run time: its CPU clock (schedstat for a child), ns
    /// resolution.
    pub total: f64,
    /// Its utime and stime (tick-sampled, scaled by the kernel to add up to `total`).
    pub user: f64,
    pub sys: f64,
    /// Run time of `ksoftirqd/<server cpu>` (softirq work the kernel deferred to it).
    pub ksoftirqd: f64,
    /// irq and softirq time of the server's CPU (/proc/stat).
    pub irq: f64,
    pub softirq: f64,
}

impl std::ops::Sub for CpuSample {
    type Output = CpuSample;
    fn sub(self, o: CpuSample) -> CpuSample {
        CpuSample {
            total: self.total - o.total,
            user: self.user - o.user,
            sys: self.sys - o.sys,
            ksoftirqd: self.ksoftirqd - o.ksoftirqd,
            irq: self.irq - o.irq,
            softirq: self.softirq - o.softirq,
        }
    }
}

/// A trial's server CPU, split without counting anything twice, seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSplit {
    /// User space: the relay's crypto and bookkeeping (the baseline's copying).
    pub user: f64,
    /// Kernel, in the server's system calls, softirq excluded.
    pub sys: f64,
    /// Softirq on the server's CPU: loopback delivery, i.e. (for a multicast send) one clone
    /// per receiving socket, enqueue and wake-up.
    pub softirq: f64,
    /// Everything the server's core spent for it: its run time + ksoftirqd (kernels without
    /// irq time accounting, whose task run time includes the softirq run on its back), or
    /// its run time + irq + softirq (kernels with it).
    pub core: f64,
    /// The historical column: irq + softirq of its CPU.
    pub irq_softirq: f64,
}

impl CpuSplit {
    pub fn of(d: CpuSample, irq_time_accounting: bool) -> CpuSplit {
        let ksoft = if d.ksoftirqd.is_finite() {
            d.ksoftirqd
        } else {
            0.0
        };
        if irq_time_accounting {
            CpuSplit {
                user: d.user,
                sys: d.sys,
                softirq: d.softirq,
                core: d.total + d.irq + d.softirq,
                irq_softirq: d.irq + d.softirq,
            }
        } else {
            // The softirq ticks taken while the server was running are in its stime too;
            // what ksoftirqd ran is not.
            let in_context = (d.softirq - ksoft).clamp(0.0, d.sys.max(0.0));
            CpuSplit {
                user: d.user,
                sys: d.sys - in_context,
                softirq: d.softirq,
                core: d.total + ksoft,
                irq_softirq: d.irq + d.softirq,
            }
        }
    }
}

/// What the relay tells about itself (group mode's figures among them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub clients: u64,
    pub pending: u64,
    pub epoch: u64,
    pub datagrams_out: u64,
    pub group_datagrams: u64,
    pub key_deliveries: u64,
    pub key_pulls: u64,
}

/// Published by an in-process relay after every loop turn.
#[derive(Default)]
struct Shared {
    clients: AtomicU64,
    pending: AtomicU64,
    epoch: AtomicU64,
    datagrams_out: AtomicU64,
    group_datagrams: AtomicU64,
    key_deliveries: AtomicU64,
    key_pulls: AtomicU64,
    /// ns since `Server::base` when the pending acknowledgements last fell to 0.
    zero_at: AtomicU64,
    /// ns since `Server::base` of the loop turn that last started an epoch with acks due.
    fresh_at: AtomicU64,
}

/// A child relay's control connection.
struct Control {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Control {
    fn connect(port: u16) -> io::Result<Control> {
        let mut last = None;
        for _ in 0..200 {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut c = Control {
                        r: BufReader::new(s.try_clone()?),
                        w: s,
                    };
                    c.reply()?; // the greeting
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(last.unwrap())
    }

    /// Body lines up to `OK` (LOG lines skipped).
    fn reply(&mut self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l)? == 0 {
                return Err(io::Error::other("control connection closed"));
            }
            let l = l.trim_end();
            if l == "OK" {
                return Ok(out);
            }
            if let Some(e) = l.strip_prefix("ERR") {
                return Err(io::Error::other(format!("control: {e}")));
            }
            if !l.starts_with("LOG ") {
                out.push(l.to_string());
            }
        }
    }

    fn stats(&mut self) -> io::Result<HashMap<String, u64>> {
        self.w.write_all(b"stats\n")?;
        Ok(self
            .reply()?
            .iter()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }
}

pub struct Server {
    pub sys: Sys,
    pub group: Ipv4Addr,
    pub port: u16,
    pub pin: Option<[u8; 32]>,
    /// The instant the in-process server's published times count from.
    pub base: Instant,
    cpu: Cpu,
    ksoftirqd: Option<u32>,
    irq_time_accounting: bool,
    stop: Arc<AtomicBool>,
    waker: Option<Arc<Waker>>,
    thread: Option<JoinHandle<()>>,
    child: Option<Child>,
    shared: Option<Arc<Shared>>,
    control: RefCell<Option<Control>>,
    scraper: Option<Scraper>,
}

const WAKE: Token = Token(0);

pub fn bench_config(clients: usize, max_clients: Option<usize>) -> Config {
    Config {
        // One source address (127.0.0.1) for every client: lift the anti-DoS budgets so the
        // join measures the relay's handshake work, not the limiter.
        handshakes_per_sec: 1_000_000,
        handshake_cpu_percent: 100,
        handshakes_per_source_per_sec: 1_000_000,
        max_clients: max_clients.unwrap_or(clients.max(1024)),
        max_clients_per_source: max_clients.unwrap_or(clients.max(1024)),
        ..Config::default()
    }
}

/// The distribution group of a server on (`group`, `port`): the ingest group, port + 1.
pub fn dist_addr(group: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(group, port + 1)
}

fn publish(relay: &Relay, sh: &Shared, base: Instant, was_pending: &mut bool, epoch: &mut u32) {
    let c = relay.core();
    let s = c.stats();
    let pending = c.pending_acks();
    let now_ns = base.elapsed().as_nanos() as u64;
    if c.epoch() != *epoch {
        *epoch = c.epoch();
        if pending > 0 {
            sh.fresh_at.store(now_ns, Ordering::Relaxed);
        }
    }
    if pending > 0 {
        *was_pending = true;
    } else if *was_pending {
        *was_pending = false;
        sh.zero_at.store(now_ns, Ordering::Relaxed);
    }
    sh.clients.store(c.client_count() as u64, Ordering::Relaxed);
    sh.epoch.store(u64::from(c.epoch()), Ordering::Relaxed);
    sh.datagrams_out.store(s.datagrams_out, Ordering::Relaxed);
    sh.group_datagrams
        .store(s.group_datagrams, Ordering::Relaxed);
    sh.key_deliveries.store(s.key_deliveries, Ordering::Relaxed);
    sh.key_pulls.store(s.key_pulls, Ordering::Relaxed);
    // Last: a reader that sees pending == 0 sees the figures above.
    sh.pending.store(pending as u64, Ordering::Release);
}

impl Server {
    fn new_common(sys: Sys, group: Ipv4Addr, port: u16, cpu: Cpu) -> Server {
        Server {
            sys,
            group,
            port,
            pin: None,
            base: Instant::now(),
            cpu,
            ksoftirqd: os::ksoftirqd_pid(SERVER_CPU),
            irq_time_accounting: os::irq_time_accounting().unwrap_or(false),
            stop: Arc::new(AtomicBool::new(false)),
            waker: None,
            thread: None,
            child: None,
            shared: None,
            control: RefCell::new(None),
            scraper: None,
        }
    }

    /// `scrape`: with the HTTP monitor on and a [`Scraper`] every that many ms (relays).
    pub fn start_thread(
        sys: Sys,
        pem: &str,
        clients: usize,
        max_clients: Option<usize>,
        n: u8,
        scrape: Option<u64>,
    ) -> Server {
        let (group, port) = os::unique_endpoint(n);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let base = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let pem = pem.to_string();
        LIVE.store(0, Ordering::SeqCst);
        PEAK.store(0, Ordering::SeqCst);
        let thread = std::thread::spawn(move || {
            if os::ncpus() >= 2 {
                os::pin_to_cpu(SERVER_CPU);
            }
            let tid = os::gettid();
            TRACK.with(|t| t.set(true));
            let mut poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
            match sys {
                Sys::Baseline | Sys::Mbaseline => {
                    let dist = (sys == Sys::Mbaseline).then(|| dist_addr(group, port));
                    let mut f = Forwarder::new(group, port, dist, &poll).unwrap();
                    tx.send((waker, None, tid, None)).unwrap();
                    f.run(&mut poll, || !stop2.load(Ordering::Relaxed));
                }
                Sys::Relay | Sys::Group => {
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
                    let mut cfg = bench_config(clients, max_clients);
                    if sys == Sys::Group {
                        cfg.distribution = Distribution::Group(GroupConfig::for_ingest(
                            SocketAddrV4::new(group, port),
                        ));
                    }
                    let mut relay = Relay::builder(key)
                        .config(cfg)
                        .net(net)
                        .build(poll.registry(), Token(10), now)
                        .unwrap();
                    tx.send((waker, Some(fp), tid, relay.monitor_addr()))
                        .unwrap();
                    let mut events = Events::with_capacity(256);
                    let (mut was_pending, mut epoch) = (false, relay.core().epoch());
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
                        publish(&relay, &sh, base, &mut was_pending, &mut epoch);
                    }
                }
            }
            TRACK.with(|t| t.set(false));
        });
        let (waker, pin, tid, monitor) = rx.recv().expect("server thread started");
        let cpu = Cpu::Thread {
            clock: os::thread_cpu_clock(&thread),
            tid,
        };
        let mut s = Server::new_common(sys, group, port, cpu);
        s.base = base;
        s.pin = pin;
        s.stop = stop;
        s.waker = Some(waker);
        s.thread = Some(thread);
        s.shared = sys.is_relay().then_some(shared);
        s.scraper = monitor
            .zip(scrape)
            .map(|(addr, ms)| Scraper::start(addr, Duration::from_millis(ms)));
        s
    }

    /// A child process pinned to the server's CPU. Relays in group mode (or when `control`)
    /// get a control port, for their gauges.
    #[allow(clippy::too_many_arguments)]
    pub fn start_child(
        sys: Sys,
        bin: &PathBuf,
        key_file: &PathBuf,
        pin: [u8; 32],
        clients: usize,
        max_clients: Option<usize>,
        n: u8,
        control: bool,
    ) -> Server {
        let (group, port) = os::unique_endpoint(n);
        let control_port =
            (sys == Sys::Group || (control && sys.is_relay())).then(os::free_tcp_port);
        let mut cmd = match sys {
            Sys::Relay | Sys::Group => {
                let mut c = Command::new(bin);
                let ctl = control_port.map_or("off".to_string(), |p| format!("127.0.0.1:{p}"));
                let cap = max_clients.unwrap_or(clients.max(1024)).to_string();
                c.arg("serve")
                    .args(["--group", &group.to_string(), "--port", &port.to_string()])
                    .args(["--iface", "127.0.0.1", "--control", &ctl])
                    .args(["--log-level", "error"])
                    .arg("--key-file")
                    .arg(key_file)
                    .args(["--handshakes-per-sec", "1000000"])
                    .args(["--handshake-cpu-percent", "100"])
                    .args(["--handshakes-per-source", "1000000"])
                    .args(["--max-clients", &cap])
                    .args(["--max-clients-per-source", &cap]);
                if sys == Sys::Group {
                    c.args(["--distribution", "group", "--ttl", "0"]);
                }
                c
            }
            Sys::Baseline | Sys::Mbaseline => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                let flag = if sys == Sys::Baseline {
                    "--serve-baseline"
                } else {
                    "--serve-mbaseline"
                };
                c.args([flag, &format!("{group}:{port}")]);
                c
            }
        };
        let pin_cpu = os::ncpus() >= 2;
        // SAFETY: prctl and sched_setaffinity are async-signal-safe; nothing else runs in the
        // child between fork and exec. Pinned, or it would inherit the generator's CPU; killed
        // if the bench dies (it aborts on panic, and a child relay would keep running).
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if pin_cpu {
                    os::pin_pid_to_cpu(0, SERVER_CPU);
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server child");
        let pid = child.id();
        let mut s = Server::new_common(sys, group, port, Cpu::Process(pid));
        s.pin = sys.is_relay().then_some(pin);
        s.child = Some(child);
        s.wait_ready();
        if let Some(p) = control_port {
            *s.control.borrow_mut() = Some(Control::connect(p).expect("control port"));
        }
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
        if self.sys.is_relay() {
            Outer::Hello { min: 1, max: 1 }.write(&mut msg);
        } else {
            msg.extend_from_slice(b"PING");
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

    /// The server's task (its thread, or a child's main thread) for perf samples.
    pub fn tid(&self) -> i32 {
        match self.cpu {
            Cpu::Thread { tid, .. } => tid,
            Cpu::Process(p) => p as i32,
        }
    }

    pub fn is_child(&self) -> bool {
        self.child.is_some()
    }

    pub fn irq_time_accounting(&self) -> bool {
        self.irq_time_accounting
    }

    pub fn cpu_sample(&self) -> CpuSample {
        let (total, (user, sys)) = match self.cpu {
            Cpu::Thread { clock, tid } => (
                os::clock_secs(clock),
                os::task_user_sys(&format!("/proc/self/task/{tid}/stat")),
            ),
            Cpu::Process(p) => (
                os::schedstat_secs(&format!("/proc/{p}/schedstat")),
                os::task_user_sys(&format!("/proc/{p}/stat")),
            ),
        };
        let (irq, softirq) = if os::ncpus() >= 2 {
            os::cpu_irq_softirq(SERVER_CPU)
        } else {
            (f64::NAN, f64::NAN)
        };
        CpuSample {
            total,
            user,
            sys,
            ksoftirqd: self.ksoftirqd.map_or(f64::NAN, |p| {
                os::schedstat_secs(&format!("/proc/{p}/schedstat"))
            }),
            irq,
            softirq,
        }
    }

    /// The relay's gauges and counters (None for the baselines).
    pub fn gauges(&self) -> Option<Gauges> {
        if let Some(sh) = &self.shared {
            let pending = sh.pending.load(Ordering::Acquire);
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            return Some(Gauges {
                clients: l(&sh.clients),
                pending,
                epoch: l(&sh.epoch),
                datagrams_out: l(&sh.datagrams_out),
                group_datagrams: l(&sh.group_datagrams),
                key_deliveries: l(&sh.key_deliveries),
                key_pulls: l(&sh.key_pulls),
            });
        }
        let mut c = self.control.borrow_mut();
        let m = c.as_mut()?.stats().expect("control stats");
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        Some(Gauges {
            clients: g("clients"),
            pending: g("group_pending_acks"),
            epoch: g("group_epoch"),
            datagrams_out: g("datagrams_out"),
            group_datagrams: g("group_datagrams"),
            key_deliveries: g("key_deliveries"),
            key_pulls: g("key_pulls"),
        })
    }

    /// In-process relay: when its pending acknowledgements last fell to 0, and when the last
    /// epoch with acknowledgements due began.
    pub fn ack_times(&self) -> Option<(Instant, Instant)> {
        let sh = self.shared.as_ref()?;
        let at = |a: &AtomicU64| self.base + Duration::from_nanos(a.load(Ordering::Relaxed));
        Some((at(&sh.zero_at), at(&sh.fresh_at)))
    }

    pub fn mem(&self) -> (u64, u64) {
        self.child
            .as_ref()
            .map(|c| os::proc_mem(c.id()))
            .unwrap_or((0, 0))
    }

    /// Stop it; the scraper's figures, if one ran.
    pub fn stop(mut self) -> Figures {
        let scraped = self.scraper.take().map(Scraper::stop).unwrap_or_default();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = &self.waker {
            let _ = w.wake();
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
        *self.control.borrow_mut() = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        scraped
    }
}
