//! The load generator: one thread (pinned to CPU 1), N clients, each with its own UDP
//! socket and handshake (`ClientSession` for the relay, JOIN/OK for the baselines), all in
//! one mio `Poll`, reading with `recvmmsg` too. In group mode and for the multicast baseline
//! each client also has a socket on the distribution group (bound to its port with
//! `SO_REUSEADDR`, joined on 127.0.0.1, as `mcrelay::client::group_socket` makes it), and a
//! message counts as delivered whichever path brought it (the session keeps one copy).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mcrelay::client::{ClientConfig, ClientSession, Event, client_socket, group_socket};
use mcrelay::crypto::rng::Rng;
use mcrelay::driver::batch::{self, BATCH, RecvBatch};
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::Sys;
use crate::alloc::ALLOCS;
use crate::os::{self, TimerFd};
use crate::perf::{self, PerfSplit};
use crate::server::{CpuSplit, SERVER_CPU, Server, dist_addr};

/// Message body: trial u32 LE, sender index u32 LE, seq u32 LE, send time (ns since the
/// generator's epoch) u64 LE.
pub const BODY_MIN: usize = 20;
const TIMER: Token = Token(1 << 30);
/// Tokens of the distribution-group sockets: GTOK + client index.
const GTOK: usize = 1 << 24;
const HIST_US: usize = 200_000;
/// How long after the last send a delivery still counts.
const GRACE: Duration = Duration::from_millis(100);
/// Client socket receive buffer: absorbs scheduling hiccups of the single generator thread.
const CLIENT_RCVBUF: usize = 1 << 20;

pub struct Gen {
    sys: Sys,
    poll: Poll,
    events: Events,
    socks: Vec<UdpSocket>,
    /// Distribution-group sockets (group mode, multicast baseline), once opened.
    gsocks: Vec<Option<UdpSocket>>,
    sess: Vec<Option<ClientSession>>,
    to: SocketAddr,
    /// The distribution group (multicast baseline: known; group mode: from WELCOME).
    dist: SocketAddrV4,
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
    /// `--scrape-windows`: the same histogram split by the window each message was sent in.
    hist_on: Vec<u32>,
    hist_off: Vec<u32>,
    lat_max_ns: u64,
    last_rx: Instant,
    joined: Vec<bool>,
    pin: Option<[u8; 32]>,
}

#[derive(Debug, Clone, Default)]
pub struct Trial {
    pub rate: f64,
    pub secs: f64,
    pub sent: u64,
    /// The part of `rate × secs` the generator did not manage to send (it was busy
    /// receiving): a trial the server was not really offered.
    pub shortfall: f64,
    pub received: u64,
    pub loss: f64,
    pub deliveries_per_s: f64,
    pub server_cpu: f64,
    pub gen_cpu: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// `--scrape-windows`: p50 and p99 of the messages sent in "on" and in "off" windows.
    pub windows: Option<[f64; 4]>,
    pub max_us: f64,
    pub allocs: u64,
    pub server_drops: u64,
    pub client_drops: u64,
    pub server_irq: f64,
    pub cpu: CpuSplit,
    /// `--perf`: the server core's CPU by sampling.
    pub perf: Option<PerfSplit>,
    /// Relay: datagrams sent other than to the distribution group, per message sent.
    pub unicast_out_per_msg: f64,
}

impl Trial {
    /// Held: < 1 % loss, and the generator sent ≥ 99 % of the rate.
    pub fn held(&self) -> bool {
        self.loss < 0.01 && self.shortfall < 0.01
    }
}

impl Gen {
    pub fn new(sys: Sys, server: &Server, senders: usize, size: usize) -> Gen {
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
            gsocks: Vec::new(),
            sess: Vec::new(),
            to: SocketAddr::from((server.group, server.port)),
            dist: dist_addr(server.group, server.port),
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
            hist_on: vec![0; HIST_US],
            hist_off: vec![0; HIST_US],
            lat_max_ns: 0,
            last_rx: now,
            joined: Vec::new(),
            pin: server.pin,
        }
    }

    pub fn clients(&self) -> usize {
        self.socks.len()
    }

    fn flush(&mut self, i: usize) {
        if let Some(s) = &mut self.sess[i] {
            while let Some(d) = s.poll_transmit() {
                let _ = self.socks[i].send_to(&d, self.to);
            }
        }
    }

    fn start_join(&mut self, i: usize) {
        if self.sys.is_relay() {
            let rng = Rng::from_os().expect("rng");
            self.sess[i] = Some(ClientSession::new(rng, self.pin, None, Instant::now()));
            self.flush(i);
        } else {
            let _ = self.socks[i].send_to(b"JOIN", self.to);
        }
    }

    /// Read what the sockets with events have; the timerfd is drained.
    fn dispatch(&mut self) {
        let toks: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        for t in toks {
            if t == TIMER.0 {
                self.timer.drain();
            } else if t < self.socks.len() {
                self.drain(t, false);
            } else if t >= GTOK && t - GTOK < self.gsocks.len() {
                self.drain(t - GTOK, true);
            }
        }
    }

    /// Open `n` sockets and register every client, `window` handshakes in flight.
    /// Returns handshakes per second.
    #[allow(clippy::needless_range_loop)]
    pub fn join(&mut self, n: usize, window: usize) -> f64 {
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
            self.gsocks.push(None);
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
            self.dispatch();
            let now = Instant::now();
            for i in 0..next {
                if self.joined[i] {
                    continue;
                }
                let ok = if self.sys.is_relay() {
                    let s = self.sess[i].as_mut().unwrap();
                    if let Some(e) = s.take_error() {
                        panic!("client {i}: {e}");
                    }
                    s.handle_timeout(now);
                    let ok = s.id().is_some();
                    self.flush(i);
                    ok
                } else {
                    false // set by drain on "OK"
                };
                if ok {
                    self.joined[i] = true;
                }
                if !self.joined[i]
                    && !self.sys.is_relay()
                    && started[i].is_some_and(|t| now - t > Duration::from_millis(500))
                {
                    started[i] = Some(now);
                    let _ = self.socks[i].send_to(b"JOIN", self.to);
                }
            }
            // Joins longer than the relay's client timeout (30 s: ~10,000 clients) need the
            // registered clients' keep-alives meanwhile.
            self.keepalives();
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

    /// Group mode and the multicast baseline: every client opens its socket on the
    /// distribution group. Done after all joined, so that the generator does not read N²/2
    /// JOIN notices off the group while N clients join (the relay sends them either way).
    pub fn open_group_sockets(&mut self) {
        if !self.sys.on_group() {
            return;
        }
        for i in 0..self.socks.len() {
            self.open_group_socket(i);
        }
    }

    fn open_group_socket(&mut self, i: usize) {
        if self.gsocks[i].is_some() {
            return;
        }
        let addr = match &self.sess[i] {
            Some(s) => s
                .group_addr()
                .expect("group mode: the WELCOME names a group"),
            None => self.dist,
        };
        assert_eq!(addr, self.dist, "distribution group");
        let s = group_socket(addr, Ipv4Addr::LOCALHOST).expect("group socket");
        s.set_nonblocking(true).unwrap();
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(CLIENT_RCVBUF);
        let mut s = UdpSocket::from_std(s);
        self.poll
            .registry()
            .register(&mut s, Token(GTOK + i), Interest::READABLE)
            .unwrap();
        self.gsocks[i] = Some(s);
    }

    /// Group mode: send warm-up messages until every member holds the relay's current key
    /// and the relay has every acknowledgement (`group_pending_acks == 0`), so that what
    /// follows measures the steady state. Members more than 8 ratchet steps behind (they
    /// joined early and were not on the group while the others joined) pull the key on the
    /// first message. Returns the warm-up messages it took (0 outside group mode).
    pub fn steady(&mut self, server: &Server) -> u32 {
        if self.sys != Sys::Group {
            return 0;
        }
        let n = self.socks.len() as u64;
        for round in 1..=50 {
            self.send_one(0);
            self.settle(Duration::from_millis(100));
            let g = server.gauges().expect("relay gauges");
            let held = self
                .sess
                .iter()
                .flatten()
                .all(|s| s.group_epoch().map(u64::from) == Some(g.epoch));
            if g.pending == 0 && g.clients == n && held {
                return round;
            }
            if round % 10 == 0 {
                eprintln!(
                    "  group: not steady after {round} warm-up messages: clients {}/{n}, pending acks {}, epoch {}",
                    g.clients, g.pending, g.epoch
                );
            }
        }
        panic!("group mode never reached a steady state");
    }

    pub fn settle(&mut self, quiet: Duration) {
        let mut last = Instant::now();
        let start = last;
        while last.elapsed() < quiet && start.elapsed() < Duration::from_secs(5) {
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(10)))
                .unwrap();
            if self.events.iter().any(|e| e.token() != TIMER) {
                last = Instant::now();
            }
            self.dispatch();
            self.keepalives();
        }
    }

    fn keepalives(&mut self) {
        let now = Instant::now();
        if !self.sys.is_relay() || now < self.next_keepalive {
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
        let bucket = ((lat / 1000) as usize).min(HIST_US - 1);
        self.hist[bucket] += 1;
        match crate::scrape::window_on(self.epoch + Duration::from_nanos(ts)) {
            Some(true) => self.hist_on[bucket] += 1,
            Some(false) => self.hist_off[bucket] += 1,
            None => {}
        }
        self.lat_max_ns = self.lat_max_ns.max(lat);
    }

    /// Read everything socket `i` (its distribution-group socket if `group`) has; a relay
    /// client then sends what its session queued (key acknowledgements, pulls).
    fn drain(&mut self, i: usize, group: bool) {
        loop {
            let sock = if group {
                match &self.gsocks[i] {
                    Some(s) => s,
                    None => return,
                }
            } else {
                &self.socks[i]
            };
            let n = match batch::recv_batch(sock, &mut self.rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let now = Instant::now();
            let now_ns = (now - self.epoch).as_nanos() as u64;
            let mut got = false;
            for k in 0..n {
                let Some((from, bytes, _)) = self.rx.get(k) else {
                    continue;
                };
                if self.sys.is_relay() {
                    let s = self.sess[i].as_mut().unwrap();
                    s.handle_datagram(now, from, bytes);
                    while let Some(ev) = self.sess[i].as_mut().unwrap().poll_event() {
                        if let Event::Message { data, .. } = ev {
                            got = true;
                            self.record(&data, now_ns);
                        }
                    }
                } else if !group && bytes == b"OK" {
                    self.joined[i] = true;
                } else if bytes.len() >= BODY_MIN {
                    // Copy out: `record` needs `&mut self`.
                    let mut b = [0u8; BODY_MIN];
                    b.copy_from_slice(&bytes[..BODY_MIN]);
                    if group && u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize == i {
                        continue; // its own message, back from the group
                    }
                    if u32::from_le_bytes(b[0..4].try_into().unwrap()) == self.trial {
                        got = true;
                    }
                    self.record(&b, now_ns);
                }
            }
            if got {
                self.last_rx = now;
            }
            if n < BATCH {
                break;
            }
        }
        if self.sys.is_relay() {
            self.flush(i);
        }
    }

    fn send_one(&mut self, k: usize) -> bool {
        self.seq += 1;
        let now = Instant::now();
        let ts = (now - self.epoch).as_nanos() as u64;
        self.body[0..4].copy_from_slice(&self.trial.to_le_bytes());
        self.body[4..8].copy_from_slice(&(k as u32).to_le_bytes());
        self.body[8..12].copy_from_slice(&(self.seq as u32).to_le_bytes());
        self.body[12..20].copy_from_slice(&ts.to_le_bytes());
        if !self.sys.is_relay() {
            return self.socks[k].send_to(&self.body, self.to).is_ok();
        }
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

    fn percentile(&self, q: f64) -> f64 {
        Self::quantile(&self.hist, q)
    }

    /// The `q` quantile of a histogram of 1 µs buckets (its bucket's upper bound, µs).
    fn quantile(hist: &[u32], q: f64) -> f64 {
        let total: u64 = hist.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return f64::NAN;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0u64;
        for (us, &c) in hist.iter().enumerate() {
            acc += u64::from(c);
            if acc >= want {
                return us as f64 + 1.0; // bucket upper bound
            }
        }
        HIST_US as f64
    }

    fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self
            .socks
            .iter()
            .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
            .collect();
        if self.gsocks.iter().any(Option::is_some) {
            p.push(self.dist.port());
        }
        p
    }

    /// Offer `rate` messages/s for `secs`, then collect stragglers. `perf`: sample the
    /// server's CPU at that frequency during the trial.
    pub fn trial(&mut self, server: &Server, rate: f64, secs: f64, perf: Option<u32>) -> Trial {
        let rec = perf.and_then(|hz| perf::start(SERVER_CPU, hz, server.sys.name()));
        self.trial += 1;
        self.received = 0;
        self.hist.iter_mut().for_each(|c| *c = 0);
        self.hist_on.iter_mut().for_each(|c| *c = 0);
        self.hist_off.iter_mut().for_each(|c| *c = 0);
        self.lat_max_ns = 0;
        let recipients = (self.socks.len() - 1) as u64;
        let gauges0 = server.gauges();
        let cpu0 = server.cpu_sample();
        let gcpu0 = os::clock_secs(libc::CLOCK_THREAD_CPUTIME_ID);
        let allocs0 = ALLOCS.load(Ordering::Relaxed);
        let ports = self.ports();
        let drops0 = os::udp_drops(server.port, &ports);
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
            self.dispatch();
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
            self.dispatch();
        }
        let cpu1 = server.cpu_sample();
        let perf = rec.map(|r| r.finish(server.tid()));
        let gauges1 = server.gauges();
        let gcpu = os::clock_secs(libc::CLOCK_THREAD_CPUTIME_ID) - gcpu0;
        let received = self.received;
        let drops1 = os::udp_drops(server.port, &ports);
        let d = cpu1 - cpu0;
        let cpu = CpuSplit::of(d, server.irq_time_accounting());
        let elapsed = (self.last_rx.max(send_end) - t0).as_secs_f64();
        // Not measured: empty every queue before the next trial.
        self.trial += 1;
        self.settle(Duration::from_millis(50));
        let expected = sent * recipients;
        let unicast_out_per_msg = match (gauges0, gauges1) {
            (Some(a), Some(b)) => {
                let uni = |g: &crate::server::Gauges| g.datagrams_out - g.group_datagrams;
                (uni(&b) - uni(&a)) as f64 / sent.max(1) as f64
            }
            _ => f64::NAN,
        };
        Trial {
            rate,
            secs: elapsed,
            sent,
            shortfall: 1.0 - sent as f64 / (rate * secs).max(1.0),
            received,
            loss: if expected == 0 {
                1.0
            } else {
                1.0 - received as f64 / expected as f64
            },
            deliveries_per_s: received as f64 / elapsed,
            server_cpu: d.total,
            gen_cpu: gcpu,
            p50_us: self.percentile(0.50),
            p99_us: self.percentile(0.99),
            windows: crate::scrape::WINDOWS.get().map(|_| {
                [
                    Self::quantile(&self.hist_on, 0.50),
                    Self::quantile(&self.hist_on, 0.99),
                    Self::quantile(&self.hist_off, 0.50),
                    Self::quantile(&self.hist_off, 0.99),
                ]
            }),
            max_us: self.lat_max_ns as f64 / 1000.0,
            allocs: ALLOCS.load(Ordering::Relaxed) - allocs0,
            server_drops: drops1.0 - drops0.0,
            client_drops: drops1.1 - drops0.1,
            server_irq: if os::ncpus() >= 2 {
                cpu.irq_softirq
            } else {
                f64::NAN
            },
            cpu,
            perf,
            unicast_out_per_msg,
        }
    }

    /// Group mode: the last member leaves (a real DISCONNECT); how long until every
    /// remaining member acknowledged the fresh key. Then it registers again (a new session
    /// from the same socket) and the group is brought back to its steady state. Returns
    /// (leave → `group_pending_acks == 0`, rekey start → 0 when the relay is in-process,
    /// key deliveries, key pulls), times in ms.
    pub fn leave_and_rekey(&mut self, server: &Server) -> (f64, f64, u64, u64) {
        let n = self.socks.len();
        let leaver = n - 1;
        let g0 = server.gauges().expect("relay gauges");
        assert_eq!(g0.pending, 0, "steady before the leave");
        let t0 = Instant::now();
        self.sess[leaver]
            .as_mut()
            .expect("a session")
            .disconnect(t0);
        self.flush(leaver);
        let done_at = loop {
            self.poll
                .poll(&mut self.events, Some(Duration::from_micros(200)))
                .unwrap();
            self.dispatch();
            let g = server.gauges().expect("relay gauges");
            if g.epoch > g0.epoch && g.pending == 0 && g.clients == n as u64 - 1 {
                break Instant::now();
            }
            if t0.elapsed() > Duration::from_secs(20) {
                panic!(
                    "rekey after a leave did not complete in 20 s: pending {}",
                    g.pending
                );
            }
        };
        let g1 = server.gauges().expect("relay gauges");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (leave_ms, fresh_ms) = match server.ack_times() {
            Some((zero, fresh)) => (
                ms(zero.saturating_duration_since(t0)),
                ms(zero.saturating_duration_since(fresh)),
            ),
            None => (ms(done_at - t0), f64::NAN),
        };
        // Back to N members, all holding the current key.
        self.settle(Duration::from_millis(20));
        self.sess[leaver] = None;
        self.start_join(leaver);
        let t = Instant::now();
        while self.sess[leaver]
            .as_ref()
            .and_then(ClientSession::id)
            .is_none()
        {
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(5)))
                .unwrap();
            self.dispatch();
            let now = Instant::now();
            let s = self.sess[leaver].as_mut().unwrap();
            s.handle_timeout(now);
            self.flush(leaver);
            assert!(t.elapsed() < Duration::from_secs(20), "re-join stalled");
        }
        self.steady(server);
        (
            leave_ms,
            fresh_ms,
            g1.key_deliveries - g0.key_deliveries,
            g1.key_pulls - g0.key_pulls,
        )
    }
}

pub fn progress(sys: Sys, what: &str, t: &Trial) {
    let per = |x: f64| x / t.received.max(1) as f64 * 1e6;
    let p = t.perf.unwrap_or_default();
    eprintln!(
        "  {:<9} {what:<10} rate {:>9.0} msg/s (sent {:>5.1}% of it)  deliveries {:>10.0}/s  loss {:>6.2}%  server cpu {:>5.1}% +irq {:>5.1}%  gen cpu {:>5.1}%  p50 {:>7.0} us  p99 {:>7.0} us  kernel drops: server in {} clients {}  server allocs/msg {:.3}  us/delivery: core {:.3}{}",
        sys.name(),
        t.rate,
        (1.0 - t.shortfall) * 100.0,
        t.deliveries_per_s,
        t.loss * 100.0,
        t.server_cpu / t.secs * 100.0,
        t.server_irq / t.secs * 100.0,
        t.gen_cpu / t.secs * 100.0,
        t.p50_us,
        t.p99_us,
        t.server_drops,
        t.client_drops,
        t.allocs as f64 / t.sent.max(1) as f64,
        per(t.cpu.core),
        if t.perf.is_some() {
            format!(
                ", perf: user {:.3} sys {:.3} softirq {:.3} (udp {:.3}, elsewhere {:.3}) = {:.3}, {} samples",
                per(p.user),
                per(p.sys),
                per(p.softirq),
                per(p.udp),
                per(p.softirq_elsewhere),
                per(p.core()),
                p.samples
            )
        } else {
            format!(
                ", ticks: user {:.3} sys {:.3} softirq {:.3}",
                per(t.cpu.user),
                per(t.cpu.sys),
                per(t.cpu.softirq)
            )
        },
    );
}
