//! Handshake-flood benchmark (issue 4): three clients chat at a steady rate through an
//! in-process relay on loopback multicast, first alone, then while an attacker sends 2,000
//! forged REGISTERs a second (half with forged cookies, half with valid cookies it fetched
//! itself and garbage ciphertexts, the expensive kind). Prints deliveries/s and latency
//! p50/p99/max for both phases of the same run.
//!
//! `cargo run --release --example flood -- [--secs 5] [--rate 300] [--flood 2000]`
//! (rate: messages per second per client). Loopback only, TTL 0.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

struct Phase {
    deliveries: u64,
    lat_us: Vec<u64>,
    secs: f64,
    rsa: u64,
    budget_drops: u64,
}

fn main() {
    let secs = arg("--secs", 5);
    let rate = arg("--rate", 300);
    let flood = arg("--flood", 2000);
    let group = Ipv4Addr::new(239, 255, 66, (std::process::id() % 200) as u8 + 1);
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let net = NetConfig {
        group,
        port,
        control: None,
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
        let stats = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
        tx.send((waker, stats.clone())).unwrap();
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
            let s = relay.core().stats();
            use mcrelay::DropReason;
            let budget =
                s.drops(DropReason::HandshakeBudget) + s.drops(DropReason::HandshakeQueueFull);
            *stats.lock().unwrap() = (s.deliveries, s.handshakes_ok + s.handshakes_failed, budget);
        }
        relay.shutdown(poll.registry(), Instant::now());
    });
    let (waker, relay_stats) = rx.recv().unwrap();

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
        let attacker = flooding.then(|| {
            let to = SocketAddr::from((group, port));
            let flood_on = Arc::new(AtomicBool::new(true));
            let f2 = flood_on.clone();
            let h = std::thread::spawn(move || {
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
        let (d0, r0, b0) = *relay_stats.lock().unwrap();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let (d1, r1, b1) = *relay_stats.lock().unwrap();
        let elapsed = t0.elapsed().as_secs_f64();
        let mut l = std::mem::take(&mut *lat.lock().unwrap());
        if let Some((on, h)) = attacker {
            on.store(false, Ordering::Relaxed);
            let sent = h.join().unwrap();
            eprintln!(
                "attacker sent {sent} forged REGISTERs ({:.0}/s)",
                sent as f64 / elapsed
            );
        }
        l.sort_unstable();
        Phase {
            deliveries: d1 - d0,
            lat_us: l,
            secs: elapsed,
            rsa: r1 - r0,
            budget_drops: b1 - b0,
        }
    };
    eprintln!("phase 1: three clients chatting, {rate} msg/s each, {secs} s");
    let quiet = measure(false);
    eprintln!("phase 2: the same, with {flood} forged REGISTERs/s");
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
    println!(
        "| phase | deliveries/s | p50 µs | p99 µs | max µs | RSA decryptions | REGISTERs dropped by budget |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, p) in [("no flood", &quiet), ("2,000 forged REGISTER/s", &flooded)] {
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} | {} |",
            p.deliveries as f64 / p.secs,
            pct(&p.lat_us, 0.5),
            pct(&p.lat_us, 0.99),
            p.lat_us.last().copied().unwrap_or(0),
            p.rsa,
            p.budget_drops
        );
    }
    println!(
        "ratio flood/no-flood: deliveries {:.3}, p99 {:.2}",
        (flooded.deliveries as f64 / flooded.secs) / (quiet.deliveries as f64 / quiet.secs),
        pct(&flooded.lat_us, 0.99) as f64 / pct(&quiet.lat_us, 0.99).max(1) as f64
    );
}
