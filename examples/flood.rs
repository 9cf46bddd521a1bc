//! Flood benchmark: three clients chat at a steady rate through an in-process relay on
//! loopback multicast, first alone, then under attack. Prints deliveries/s and latency
//! p50/p99/max of the relayed messages for both phases of the same run, and the round trip of
//! an operator's `ping` on the control port meanwhile.
//!
//! The attack is, by default, the handshake flood (issue 4): 2,000 forged REGISTERs a second
//! (half with forged cookies, half with valid cookies it fetched itself and garbage
//! ciphertexts, the expensive kind). With `--sources N` (N > 1) it comes from N loopback
//! addresses (127.0.1.1 onwards), every REGISTER with a fresh valid cookie: the many-source
//! flood of issue 12 (finding 5), each source within its own handshake budget. With `--control-flood MODE`, an attack on the control
//! port instead (docs/security.md, "The control port"):
//!
//! - `newline`: two connections stream bytes without a newline as fast as they can,
//!   reconnecting whenever the relay closes them;
//! - `pipeline`: seven connections each send 4,000 `metrics` requests and never read;
//! - `auth`: reconnect in a loop, three wrong `auth` guesses per connection (token set);
//! - `slots`: keep opening connections that never authenticate (token set, 8 slots), while a
//!   legitimate operator connects, authenticates and runs `stats` every 200 ms.
//!
//! `cargo run --release --example flood -- [--secs 5] [--rate 300] [--flood 2000]
//! [--sources 1] [--control-flood newline|pipeline|auth|slots]` (rate: messages per second
//! per client).
//! Loopback only, TTL 0.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mcrelay::client::{Client, ClientConfig, Event};
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;
use mcrelay::wire::Outer;
use mcrelay::{NetConfig, Relay};
use mio::{Events, Poll, Token, Waker};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn control_mode() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--control-flood")?;
    let mode = args.get(i + 1).cloned().unwrap_or_default();
    if !["newline", "pipeline", "auth", "slots"].contains(&mode.as_str()) {
        eprintln!("--control-flood: newline|pipeline|auth|slots");
        std::process::exit(64);
    }
    Some(mode)
}

const TOKEN: &str = "flood-op-token";

/// What the relay thread reports (updated every loop turn).
#[derive(Default)]
struct Shared {
    deliveries: u64,
    rsa: u64,
    rsa_us: u64,
    budget: u64,
    max_queued: u64,
    turns_us: Vec<u32>,
}

struct Phase {
    turns_us: Vec<u32>,
    deliveries: u64,
    lat_us: Vec<u64>,
    ping_us: Vec<u64>,
    secs: f64,
    rsa: u64,
    rsa_us: u64,
    joined_in: Option<Duration>,
    budget_drops: u64,
    max_control_queued: u64,
    attack: String,
}

fn main() {
    let secs = arg("--secs", 5);
    let rate = arg("--rate", 300);
    let flood = arg("--flood", 2000);
    let sources = arg("--sources", 1).clamp(1, 250) as u8;
    let mode = control_mode();
    let token = matches!(mode.as_deref(), Some("auth" | "slots")).then(|| TOKEN.to_string());
    let group = Ipv4Addr::new(239, 255, 66, (std::process::id() % 200) as u8 + 1);
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let net = NetConfig {
        group,
        port,
        // The control port only for its own floods: the handshake flood runs as it always did.
        control: mode
            .is_some()
            .then_some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        control_token: token.clone(),
        ..NetConfig::default()
    };

    // The relay on its own thread, as `mcrelay serve` runs it.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let stop2 = stop.clone();
    let relay_thread = std::thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let key = ServerKey::generate(2048).unwrap();
        let mut relay = Relay::builder(key)
            .net(net)
            .build(poll.registry(), Token(10), Instant::now())
            .unwrap();
        let stats = Arc::new(Mutex::new(Shared::default()));
        let control = relay.control_addr();
        tx.send((waker, stats.clone(), control)).unwrap();
        let mut events = Events::with_capacity(256);
        while !stop2.load(Ordering::Relaxed) {
            let t = relay
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()));
            let t = Some(
                t.unwrap_or(Duration::from_millis(50))
                    .min(Duration::from_millis(50)),
            );
            if poll.poll(&mut events, t).is_err() {
                continue;
            }
            let now = Instant::now();
            for ev in events.iter() {
                relay.handle_event(poll.registry(), ev, now);
            }
            relay.handle_timeout(poll.registry(), Instant::now());
            // One loop turn's work, from poll's return to here (wall time: includes being
            // preempted, so on a busy machine it is an upper bound).
            let turn_us = now.elapsed().as_micros() as u32;
            let s = relay.core().stats();
            use mcrelay::DropReason;
            let budget =
                s.drops(DropReason::HandshakeBudget) + s.drops(DropReason::HandshakeQueueFull);
            let queued = relay.control_queued_bytes() as u64;
            let mut st = stats.lock().unwrap();
            st.deliveries = s.deliveries;
            st.rsa = s.handshakes_ok + s.handshakes_failed;
            st.rsa_us = s.rsa_microseconds;
            st.budget = budget;
            st.max_queued = st.max_queued.max(queued);
            st.turns_us.push(turn_us);
        }
        relay.shutdown(poll.registry(), Instant::now());
    });
    let (waker, relay_stats, control) = rx.recv().unwrap();

    let cfg = ClientConfig {
        group,
        port,
        iface: Ipv4Addr::LOCALHOST,
        ttl: 0,
        pin: None,
        admission: None,
    };
    let base = Instant::now();
    let lat = Arc::new(Mutex::new(Vec::<u64>::new()));
    let received = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (cfg, lat, received, running) =
            (cfg.clone(), lat.clone(), received.clone(), running.clone());
        clients.push(std::thread::spawn(move || {
            let mut c = Client::connect(&cfg, Duration::from_secs(10)).expect("client");
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut next = Instant::now();
            while running.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next {
                    let t = now.duration_since(base).as_nanos() as u64;
                    let mut body = t.to_be_bytes().to_vec();
                    body.resize(100, b'x');
                    let _ = c.send(&body);
                    next += interval;
                    continue;
                }
                if let Ok(Some(Event::Message { data, .. })) = c.recv_event(next - now) {
                    let sent = u64::from_be_bytes(data[..8].try_into().unwrap());
                    let us = (Instant::now().duration_since(base).as_nanos() as u64)
                        .saturating_sub(sent)
                        / 1000;
                    lat.lock().unwrap().push(us);
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));

    let measure = |flooding: bool| -> Phase {
        let prober = control.map(|c| Prober::start(c, token.as_deref()));
        let control_attack = match (flooding, mode.as_deref(), control) {
            (true, Some(m), Some(c)) => Some(ControlAttack::start(m, c)),
            _ => None,
        };
        let flooding = flooding && control_attack.is_none();
        let attacker = flooding.then(|| {
            let to = SocketAddr::from((group, port));
            let flood_on = Arc::new(AtomicBool::new(true));
            let f2 = flood_on.clone();
            let h = std::thread::spawn(move || {
                if sources > 1 {
                    return many_source_flood(to, sources, flood, &f2);
                }
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_multicast_ttl_v4(0).unwrap();
                socket2::SockRef::from(&s)
                    .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
                    .unwrap();
                s.set_nonblocking(true).unwrap();
                let mut hello = Vec::new();
                Outer::Hello { min: 1, max: 1 }.write(&mut hello);
                let mut buf = [0u8; 2048];
                let mut cookie = [0u8; 24];
                let interval = Duration::from_secs_f64(1.0 / flood as f64);
                let mut next = Instant::now();
                let mut n = 0u64;
                let mut junk = Rng::from_seed([9; 32]);
                while f2.load(Ordering::Relaxed) {
                    if n.is_multiple_of(2) {
                        // The expensive kind: a fresh, valid cookie for our own address
                        // (cookies are single-use), fetched with a HELLO each time.
                        let _ = s.send_to(&hello, to);
                        while let Ok((len, _)) = s.recv_from(&mut buf) {
                            if let Ok(Outer::Cookie { cookie: c, .. }) = Outer::parse(&buf[..len]) {
                                cookie = *c;
                            }
                        }
                    }
                    let mut ct = [0u8; 256];
                    junk.fill(&mut ct);
                    let mut c = cookie;
                    if n % 2 == 1 {
                        junk.fill(&mut c[8..]); // forged MAC
                    }
                    let mut d = Vec::new();
                    Outer::Register {
                        cookie: &c,
                        ciphertext: &ct,
                    }
                    .write(&mut d);
                    let _ = s.send_to(&d, to);
                    n += 1;
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                n
            });
            (flood_on, h)
        });
        lat.lock().unwrap().clear();
        let (d0, r0, u0, b0) = {
            let mut st = relay_stats.lock().unwrap();
            st.max_queued = 0;
            st.turns_us.clear();
            (st.deliveries, st.rsa, st.rsa_us, st.budget)
        };
        let t0 = Instant::now();
        // A newcomer joins one second in: how long its handshake takes (the flood competes
        // for the same RSA budget and queue).
        let newcomer = {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(1));
                let t = Instant::now();
                let mut c = Client::connect(&cfg, Duration::from_secs(30)).ok()?;
                let took = t.elapsed();
                let _ = c.disconnect(); // the chat's recipients stay the same three
                Some(took)
            })
        };
        std::thread::sleep(Duration::from_secs(secs));
        let joined_in = newcomer.join().ok().flatten();
        let (d1, r1, u1, b1, max_queued, mut turns_us) = {
            let mut st = relay_stats.lock().unwrap();
            let turns = std::mem::take(&mut st.turns_us);
            (
                st.deliveries,
                st.rsa,
                st.rsa_us,
                st.budget,
                st.max_queued,
                turns,
            )
        };
        let elapsed = t0.elapsed().as_secs_f64();
        let mut l = std::mem::take(&mut *lat.lock().unwrap());
        let mut attack = String::from("none");
        if let Some((on, h)) = attacker {
            on.store(false, Ordering::Relaxed);
            let sent = h.join().unwrap();
            attack = format!(
                "{:.0} forged REGISTER/s from {sources} source(s)",
                sent as f64 / elapsed
            );
        }
        if let Some(a) = control_attack {
            attack = a.finish(elapsed);
        }
        eprintln!("attack: {attack}");
        let mut ping_us = prober.map(Prober::finish).unwrap_or_default();
        l.sort_unstable();
        ping_us.sort_unstable();
        turns_us.sort_unstable();
        Phase {
            turns_us,
            deliveries: d1 - d0,
            lat_us: l,
            ping_us,
            secs: elapsed,
            rsa: r1 - r0,
            rsa_us: u1 - u0,
            joined_in,
            budget_drops: b1 - b0,
            max_control_queued: max_queued,
            attack,
        }
    };
    eprintln!("phase 1: three clients chatting, {rate} msg/s each, {secs} s");
    let quiet = measure(false);
    match mode.as_deref() {
        Some(m) => eprintln!("phase 2: the same, with the control-port attack `{m}`"),
        None => {
            eprintln!("phase 2: the same, with {flood} forged REGISTERs/s from {sources} source(s)")
        }
    }
    let flooded = measure(true);
    running.store(false, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = waker.wake();
    let _ = relay_thread.join();

    let pct = |v: &[u64], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let pct32 = |v: &[u32], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    if mode.is_none() {
        println!(
            "| phase | deliveries/s | p50 µs | p99 µs | max µs | loop turn p99 / max µs | RSA decryptions/s | RSA share of the loop | REGISTERs dropped by budget | a newcomer's join |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for p in [&quiet, &flooded] {
            println!(
                "| {} | {:.0} | {} | {} | {} | {} / {} | {:.0} | {:.1} % | {} | {} |",
                if p.attack == "none" {
                    "no flood"
                } else {
                    &p.attack
                },
                p.deliveries as f64 / p.secs,
                pct(&p.lat_us, 0.5),
                pct(&p.lat_us, 0.99),
                p.lat_us.last().copied().unwrap_or(0),
                pct32(&p.turns_us, 0.99),
                p.turns_us.last().copied().unwrap_or(0),
                p.rsa as f64 / p.secs,
                p.rsa_us as f64 / 1e4 / p.secs,
                p.budget_drops,
                p.joined_in.map_or("failed (30 s)".to_string(), |d| format!(
                    "{} ms",
                    d.as_millis()
                ))
            );
        }
    } else {
        println!(
            "| phase | deliveries/s | p50 µs | p99 µs | max µs | loop turn p99 / max µs | control `ping` p50 / p99 / max µs (n) | control output queued, max | attack |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for p in [&quiet, &flooded] {
            println!(
                "| {} | {:.0} | {} | {} | {} | {} / {} | {} / {} / {} ({}) | {} | {} |",
                if p.attack == "none" {
                    "no attack"
                } else {
                    "attack"
                },
                p.deliveries as f64 / p.secs,
                pct(&p.lat_us, 0.5),
                pct(&p.lat_us, 0.99),
                p.lat_us.last().copied().unwrap_or(0),
                pct32(&p.turns_us, 0.99),
                p.turns_us.last().copied().unwrap_or(0),
                pct(&p.ping_us, 0.5),
                pct(&p.ping_us, 0.99),
                p.ping_us.last().copied().unwrap_or(0),
                p.ping_us.len(),
                p.max_control_queued,
                p.attack
            );
        }
    }
    println!(
        "ratio flood/no-flood: deliveries {:.3}, p99 {:.2}",
        (flooded.deliveries as f64 / flooded.secs) / (quiet.deliveries as f64 / quiet.secs),
        pct(&flooded.lat_us, 0.99) as f64 / pct(&quiet.lat_us, 0.99).max(1) as f64
    );
}

/// The many-source flood: `sources` sockets on 127.0.1.1.., each fetching a fresh cookie for
/// its own address and sending a REGISTER with it and a garbage ciphertext, `rate` REGISTERs
/// a second in all. Returns how many were sent.
fn many_source_flood(to: SocketAddr, sources: u8, rate: u64, on: &AtomicBool) -> u64 {
    let socks: Vec<UdpSocket> = (1..=sources)
        .map(|i| {
            let s = UdpSocket::bind((Ipv4Addr::new(127, 0, 1, i), 0)).unwrap();
            s.set_multicast_ttl_v4(0).unwrap();
            socket2::SockRef::from(&s)
                .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut hello = Vec::new();
    Outer::Hello { min: 1, max: 3 }.write(&mut hello);
    let mut junk = Rng::from_seed([10; 32]);
    let (mut buf, mut sent) = ([0u8; 2048], 0u64);
    // One round: a HELLO from every source, then a REGISTER for every COOKIE that came back.
    let round = Duration::from_secs_f64(f64::from(sources) / rate.max(1) as f64);
    let mut next = Instant::now();
    while on.load(Ordering::Relaxed) {
        for s in &socks {
            let _ = s.send_to(&hello, to);
        }
        next += round;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for s in &socks {
            while let Ok((len, _)) = s.recv_from(&mut buf) {
                if let Ok(Outer::Cookie { cookie, .. }) = Outer::parse(&buf[..len]) {
                    let cookie = *cookie;
                    let mut ct = [0u8; 256];
                    junk.fill(&mut ct);
                    let mut d = Vec::new();
                    Outer::Register {
                        cookie: &cookie,
                        ciphertext: &ct,
                    }
                    .write(&mut d);
                    let _ = s.send_to(&d, to);
                    sent += 1;
                }
            }
        }
    }
    sent
}

/// A legitimate operator on the control port: `ping` every 10 ms, timing each round trip.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<u64>>,
}

impl Prober {
    /// Returns once the operator is in (authenticated), before any attack starts.
    fn start(addr: SocketAddr, token: Option<&str>) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let token = token.map(str::to_owned);
        let (ready, wait) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut rtt = Vec::new();
            let c = Operator::connect(addr, token.as_deref());
            let _ = ready.send(());
            let Some(mut c) = c else {
                eprintln!("prober: could not get in");
                return rtt;
            };
            while !stop2.load(Ordering::Relaxed) {
                let t = Instant::now();
                if c.cmd("ping").is_none() {
                    eprintln!("prober: connection lost");
                    break;
                }
                rtt.push(t.elapsed().as_micros() as u64);
                std::thread::sleep(Duration::from_millis(10));
            }
            rtt
        });
        let _ = wait.recv();
        Prober { stop, thread }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A line-oriented control connection.
struct Operator {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Operator {
    /// Connect, read the greeting, authenticate if `token`; `None` if any step fails.
    fn connect(addr: SocketAddr, token: Option<&str>) -> Option<Operator> {
        let s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let _ = s.set_nodelay(true);
        let mut c = Operator {
            w: s.try_clone().ok()?,
            r: BufReader::new(s),
        };
        c.reply()?;
        if let Some(t) = token {
            c.cmd(&format!("auth {t}"))?;
        }
        Some(c)
    }

    /// The reply's terminator if it is `OK`; `None` on `ERR` or a closed connection.
    fn reply(&mut self) -> Option<()> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "OK\n" {
                return Some(());
            }
            if line.starts_with("ERR ") {
                return None;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> Option<()> {
        writeln!(self.w, "{line}").ok()?;
        self.reply()
    }
}

/// One of the control-port attacks, on its own threads until `finish`.
struct ControlAttack {
    mode: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<[u64; 3]>>,
    /// `pipeline`: the connections, held open unread until the end.
    held: Vec<TcpStream>,
}

impl ControlAttack {
    fn start(mode: &str, addr: SocketAddr) -> ControlAttack {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut held = Vec::new();
        let spawn = |f: fn(SocketAddr, &AtomicBool) -> [u64; 3]| {
            let stop = stop.clone();
            std::thread::spawn(move || f(addr, &stop))
        };
        match mode {
            "newline" => threads.extend([spawn(stream_junk), spawn(stream_junk)]),
            "pipeline" => {
                let script = "metrics\n".repeat(4000);
                for _ in 0..7 {
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = s.write_all(script.as_bytes());
                        held.push(s);
                    }
                }
            }
            "auth" => threads.push(spawn(guess_tokens)),
            _ => threads.extend([spawn(hold_slots), spawn(operator_gets_in)]),
        }
        ControlAttack {
            mode: mode.to_string(),
            stop,
            threads,
            held,
        }
    }

    /// Stop; describe what the attack did and what the relay made of it.
    fn finish(self, secs: f64) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let r: Vec<[u64; 3]> = self
            .threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect();
        drop(self.held);
        let sum = |i: usize| r.iter().map(|x| x[i]).sum::<u64>();
        match self.mode.as_str() {
            "newline" => format!(
                "2 connections: {:.0} MB/s without a newline, closed by the relay {} times",
                sum(0) as f64 / secs / 1e6,
                sum(1)
            ),
            "pipeline" => "7 connections x 4,000 `metrics`, never read".to_string(),
            "auth" => format!(
                "{:.0} guesses/s over {} connections: {} checked, {} refused unchecked",
                sum(0) as f64 / secs,
                sum(1),
                sum(2),
                sum(0) - sum(2)
            ),
            _ => {
                let [opened, _, _] = r.first().copied().unwrap_or_default();
                let [tries, ok, slowest] = r.get(1).copied().unwrap_or_default();
                format!(
                    "{opened} silent connections ({:.0}/s); a new operator got in {ok} of \
                     {tries} tries, slowest {slowest} ms",
                    opened as f64 / secs
                )
            }
        }
    }
}

/// `newline`: stream 'x' until closed, reconnect. Returns [bytes sent, times closed, 0].
fn stream_junk(addr: SocketAddr, stop: &AtomicBool) -> [u64; 3] {
    let junk = vec![b'x'; 64 * 1024];
    let (mut sent, mut closed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
        while !stop.load(Ordering::Relaxed) {
            match s.write(&junk) {
                Ok(n) => sent += n as u64,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    closed += 1;
                    break;
                }
            }
        }
    }
    [sent, closed, 0]
}

/// `auth`: connect, three wrong guesses, read the answers, reconnect. Returns
/// [guesses, connections, guesses checked (answered exactly `ERR authentication failed`)].
fn guess_tokens(addr: SocketAddr, stop: &AtomicBool) -> [u64; 3] {
    let (mut guesses, mut conns, mut checked) = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(format!("auth g{conns}a\nauth g{conns}b\nauth g{conns}c\n").as_bytes());
        guesses += 3;
        conns += 1;
        let mut replies = String::new();
        let _ = s.read_to_string(&mut replies);
        checked += replies
            .lines()
            .filter(|l| *l == "ERR authentication failed")
            .count() as u64;
    }
    [guesses, conns, checked]
}

/// `slots`: keep opening silent connections (holding the last 16). Returns [opened, 0, 0].
fn hold_slots(addr: SocketAddr, stop: &AtomicBool) -> [u64; 3] {
    let mut held = std::collections::VecDeque::new();
    let mut opened = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(s) = TcpStream::connect(addr) {
            opened += 1;
            held.push_back(s);
            if held.len() > 16 {
                held.pop_front();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    [opened, 0, 0]
}

/// `slots`, the victim: every 200 ms connect, authenticate, `stats`. Returns
/// [tries, successes, slowest success in ms].
fn operator_gets_in(addr: SocketAddr, stop: &AtomicBool) -> [u64; 3] {
    let (mut tries, mut ok, mut slowest) = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        tries += 1;
        let t = Instant::now();
        if let Some(mut c) = Operator::connect(addr, Some(TOKEN))
            && c.cmd("stats").is_some()
        {
            ok += 1;
            slowest = slowest.max(t.elapsed().as_millis() as u64);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    [tries, ok, slowest]
}
