//! Shared test harness: an in-process relay on loopback multicast (TTL 0, interface
//! 127.0.0.1), driven by its own mio Poll on a thread, plus client helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mcrelay::client::{Client, ClientConfig, Event};
use mcrelay::driver::logtap::LogTap;
use mcrelay::{Config, NetConfig, Relay, ServerKey, Stats};
use mio::{Events, Poll, Token, Waker};

/// One RSA key for the whole test binary (generation is the slow part).
pub fn key_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mcrelay-testkey-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("k.pem");
        let _ = std::fs::remove_file(&path);
        let k = ServerKey::generate(2048).expect("keygen");
        k.save_new(&path).expect("save");
        let pem = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        pem
    })
}

pub fn server_key() -> ServerKey {
    ServerKey::from_pkcs8_pem(key_pem()).expect("test key")
}

/// A free UDP port and a group address unique to this test process and call.
pub fn unique_endpoint() -> (Ipv4Addr, u16) {
    static N: AtomicU16 = AtomicU16::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pid = std::process::id();
    (
        Ipv4Addr::new(239, 255, (pid % 250) as u8 + 1, (n % 250) as u8 + 1),
        port,
    )
}

/// The test binary's logger: errors on stderr, every enabled line into a [`LogTap`] (as the
/// binary's logger does).
struct TestLogger {
    tap: LogTap,
}

impl log::Log for TestLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() <= log::Level::Error {
            eprintln!("{} {}", r.level(), r.args());
        }
        self.tap
            .push(r.level(), format!("test {:<5} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

/// The test binary's global logger feeding one shared LogTap, installed once. Every
/// TestRelay drains this tap, so with relays running in parallel a log line reaches
/// whichever relay drains first; operators raise the level with `log level debug`.
pub fn log_tap() -> LogTap {
    static TAP: OnceLock<LogTap> = OnceLock::new();
    TAP.get_or_init(|| {
        let tap = LogTap::new(4096);
        if log::set_boxed_logger(Box::new(TestLogger { tap: tap.clone() })).is_ok() {
            log::set_max_level(log::LevelFilter::Error);
        }
        tap
    })
    .clone()
}

pub struct TestRelay {
    pub group: Ipv4Addr,
    pub port: u16,
    pub control: SocketAddr,
    /// The HTTP monitor's address, when `tweak` turned it on (`net.monitor`).
    pub monitor: Option<SocketAddr>,
    pub fingerprint: [u8; 32],
    waker: Arc<Waker>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<Stats>>,
}

const WAKE: Token = Token(0);

impl TestRelay {
    pub fn start(cfg: Config) -> TestRelay {
        Self::start_with(cfg, |_| {})
    }

    /// A relay in group mode (distribution group: its ingest group, port + 1; TTL 0).
    pub fn start_group(cfg: Config) -> TestRelay {
        Self::start_full(cfg, |_| {}, true)
    }

    pub fn start_with(cfg: Config, tweak: impl FnOnce(&mut NetConfig)) -> TestRelay {
        Self::start_full(cfg, tweak, false)
    }

    fn start_full(
        mut cfg: Config,
        tweak: impl FnOnce(&mut NetConfig),
        group_mode: bool,
    ) -> TestRelay {
        let (group, port) = unique_endpoint();
        if group_mode {
            let ingest = std::net::SocketAddrV4::new(group, port);
            let g = mcrelay::GroupConfig::for_ingest(ingest);
            cfg.distribution = mcrelay::Distribution::Group(g);
        }
        let mut net = NetConfig {
            group,
            port,
            iface: Ipv4Addr::LOCALHOST,
            control: Some("127.0.0.1:0".parse().unwrap()),
            max_control: 8,
            control_token: None,
            ttl: 0,
            monitor: None,
            ..NetConfig::default()
        };
        tweak(&mut net);
        let key = server_key();
        let fingerprint = *key.fingerprint();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
            let mut relay = Relay::builder(key)
                .config(cfg)
                .net(net)
                .log_tap(log_tap())
                .manage_log_level(true)
                .build(poll.registry(), Token(10), Instant::now())
                .expect("relay starts");
            let addrs = (relay.control_addr().unwrap(), relay.monitor_addr());
            tx.send((addrs, waker.clone())).unwrap();
            let mut events = Events::with_capacity(256);
            loop {
                if relay.stop_requested() || stop2.load(Ordering::SeqCst) {
                    relay.shutdown(poll.registry(), Instant::now());
                    break;
                }
                let timeout = relay
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()));
                match poll.poll(&mut events, timeout) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => panic!("poll: {e}"),
                }
                let now = Instant::now();
                for ev in events.iter() {
                    relay.handle_event(poll.registry(), ev, now);
                }
                relay.handle_timeout(poll.registry(), Instant::now());
            }
            relay.core().stats().clone()
        });
        let ((control, monitor), waker) = rx.recv().expect("relay started");
        TestRelay {
            group,
            port,
            control,
            monitor,
            fingerprint,
            waker,
            stop,
            thread: Some(thread),
        }
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            group: self.group,
            port: self.port,
            iface: Ipv4Addr::LOCALHOST,
            ttl: 0,
            pin: Some(self.fingerprint),
            admission: None,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.client_config(), Duration::from_secs(10)).expect("client connects")
    }

    /// A client that offers at most protocol `version` (1 and 2: unauthenticated FRAGMENTs).
    pub fn client_up_to(&self, version: u16) -> Client {
        let now = Instant::now();
        let rng = mcrelay::Rng::from_os().unwrap();
        let cfg = self.client_config();
        let mut s = mcrelay::client::ClientSession::new(rng, cfg.pin, None, now);
        s.set_max_version(version, now);
        Client::with_session(&cfg, s, Duration::from_secs(10)).expect("client connects")
    }

    pub fn group_addr(&self) -> SocketAddr {
        SocketAddr::from((self.group, self.port))
    }

    /// Stop the relay and return its final counters.
    pub fn stop(mut self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        self.thread.take().unwrap().join().expect("relay thread")
    }

    /// Wait for the relay thread to end by itself (e.g. after `shutdown`).
    pub fn join(mut self) -> Stats {
        self.thread.take().unwrap().join().expect("relay thread")
    }

    pub fn control(&self) -> Control {
        Control::connect(self.control)
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = self.waker.wake();
            let _ = t.join();
        }
    }
}

/// A control-port connection for tests.
pub struct Control {
    pub w: TcpStream,
    pub r: BufReader<TcpStream>,
}

impl Control {
    pub fn connect(addr: SocketAddr) -> Control {
        let s = TcpStream::connect(addr).expect("control connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Control {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        };
        let greeting = c.read_reply();
        assert!(greeting.last().unwrap() == "OK", "greeting: {greeting:?}");
        c
    }

    /// Lines up to and including the terminator (`OK` or `ERR ...`); `LOG` lines skipped.
    pub fn read_reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            let n = self.r.read_line(&mut l).expect("control read");
            assert!(n > 0, "control connection closed; got {lines:?}");
            let l = l.trim_end().to_string();
            if l.starts_with("LOG ") {
                continue;
            }
            let end = l == "OK" || l.starts_with("ERR ");
            lines.push(l);
            if end {
                return lines;
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> Vec<String> {
        writeln!(self.w, "{line}").unwrap();
        self.read_reply()
    }

    /// A `stats` value by name.
    pub fn stat(&mut self, name: &str) -> u64 {
        let lines = self.cmd("stats");
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no stat {name} in {lines:?}"))
            .parse()
            .unwrap()
    }
}

/// Wait up to `timeout` for an event matching `pred`, skipping others.
pub fn wait_for(
    c: &mut Client,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Option<Event> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match c.recv_event(left).expect("recv") {
            Some(e) if pred(&e) => return Some(e),
            Some(_) => continue,
            None => return None,
        }
    }
}

pub const T: Duration = Duration::from_secs(5);

impl Control {
    /// Every `name value` line of `stats` (drop counters as `drop.<reason>`).
    pub fn stats_map(&mut self) -> std::collections::HashMap<String, u64> {
        self.cmd("stats")
            .iter()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }
}
