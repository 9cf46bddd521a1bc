//! `--scrape-ms MS`: the in-process relay without and with its HTTP monitor on, a thread doing
//! `GET /metrics` every MS ms on one kept-alive connection, as Prometheus scrapes
//! (docs/performance.md, "HTTP monitor scrapes").

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mcrelay::core::RelayCore;
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;

use crate::measure::Figures;
use crate::os;
use crate::server::{SERVER_CPU, bench_config};

/// `--scrape-windows MS`: time cut into windows of MS from the start of the process;
/// scrapes only in the odd ones ("on"), and the generator sorts each message's latency by the
/// window it was sent in, so that on and off are measured in the same run, interleaved second
/// by second, and whatever else the machine does hits both alike.
pub static WINDOWS: std::sync::OnceLock<(Instant, Duration)> = std::sync::OnceLock::new();

/// With `--scrape-windows`: is `t` in an "on" window? Else None.
pub fn window_on(t: Instant) -> Option<bool> {
    let (base, w) = WINDOWS.get()?;
    let k = t.saturating_duration_since(*base).as_nanos() / w.as_nanos().max(1);
    Some(k % 2 == 1)
}

/// With `--scrape-windows`: how long from `t` to the start of the next window.
fn until_next_window(t: Instant) -> Duration {
    let Some((base, w)) = WINDOWS.get() else {
        return Duration::ZERO;
    };
    let since = t.saturating_duration_since(*base).as_nanos();
    let w = w.as_nanos().max(1);
    Duration::from_nanos((w - since % w) as u64)
}

/// GET /metrics every `interval` on one kept-alive connection.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Figures>,
}

impl Scraper {
    pub fn start(addr: SocketAddr, interval: Duration) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            // On the relay's core, as a Prometheus on the same host would compete with it;
            // the generator's core (and so the latency it measures) is left alone.
            if os::ncpus() >= 2 {
                os::pin_to_cpu(SERVER_CPU);
            }
            let mut s = std::net::TcpStream::connect(addr).expect("monitor connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            let (mut n, mut total_us, mut max_us, mut bytes) = (0u64, 0f64, 0f64, 0u64);
            let mut buf = vec![0u8; 256 * 1024];
            let mut next = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                if window_on(Instant::now()) == Some(false) {
                    // An "off" window: no scrape until the next one begins.
                    std::thread::sleep(until_next_window(Instant::now()).min(interval));
                    next = Instant::now();
                    continue;
                }
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

    pub fn stop(self) -> Figures {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("scraper thread")
    }
}

/// What one /metrics body costs the relay thread to build, without the noise of the network
/// and the other threads: the formatter /metrics and `ctl metrics` share. Printed on stderr.
pub fn format_cost(pem: &str, clients: usize, max_clients: Option<usize>) {
    let now = Instant::now();
    let k = ServerKey::from_pkcs8_pem(pem).unwrap();
    let core = RelayCore::new(
        bench_config(clients, max_clients),
        k,
        Rng::from_seed([7; 32]),
        now,
        0,
    )
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
