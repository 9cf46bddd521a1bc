//! `cargo run --release --features internals --example bench -- [FLAGS]`: the relay against
//! plaintext baselines, on loopback multicast, in the same run (issue 5, and group mode; see
//! docs/performance.md).
//!
//! What runs (modules under examples/bench/):
//! * the system under test on its own thread pinned to CPU 0 (`server.rs`), or as a child
//!   process pinned to CPU 0 (`--server BIN`, `--rss BIN`): the relay (`RelayCore` +
//!   `driver::Relay` in a mio `Poll`, exactly as `mcrelay serve` drives it, control port
//!   off, no logger) in unicast mode (`relay`) or group mode (`group`), or one of two
//!   plaintext BASELINES (`baseline.rs`) with the same sockets, the same `recvmmsg`/
//!   `sendmmsg` batching (`mcrelay::driver::batch`), the same read budget and loop shape, but
//!   no crypto: the unicast fan-out forwarder (`baseline`: one datagram per registered
//!   client) and the multicast forwarder (`mbaseline`: one datagram per message, to the
//!   distribution group every client joined);
//! * a single-threaded load generator (`generator.rs`, the main thread, pinned to CPU 1) driving N
//!   clients, each with its own UDP socket and its own handshake (`ClientSession`, one mio
//!   `Poll` over all sockets, reads with `recvmmsg` too) and, in group mode and for the
//!   multicast baseline, a second socket on the distribution group; sends are paced with a
//!   timerfd. Each message body carries the trial number, the sender, a sequence number and
//!   the send time; every receiving client decrypts it and records the latency.
//!
//! Figures per system (`measure.rs`): handshakes/s while the N clients join; deliveries/s (a
//! message received by N-1 clients counts N-1), loss, latency p50/p99/max, the server's CPU
//! per delivery and per message, split into user, system and softirq time of its core
//! (`server.rs`, `CpuSplit`), the heap the server thread allocated (a counting global
//! allocator tagging that thread), and generator CPU so that a generator-bound row is
//! visible. `--rss BIN` reports the children's VmRSS/VmHWM idle, with N clients, and after
//! load; `--leave-rekey R` times group mode's rekey after a member leaves; `--core-only M`
//! drives the core without sockets, for a profiler (`core_only.rs`); `--scrape-ms MS` runs
//! the relay without and with its HTTP monitor scraped every MS ms (`scrape.rs`).
//!
//! Loopback only. Exit status 0 unless something broke.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use mcrelay::crypto::key::ServerKey;

#[path = "bench/alloc.rs"]
mod alloc;
#[path = "bench/baseline.rs"]
mod baseline;
#[path = "bench/core_only.rs"]
mod core_only;
#[path = "bench/generator.rs"]
mod generator;
#[path = "bench/measure.rs"]
mod measure;
#[path = "bench/os.rs"]
mod os;
#[path = "bench/perf.rs"]
mod perf;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/scrape.rs"]
mod scrape;
#[path = "bench/server.rs"]
mod server;

use generator::BODY_MIN;
use measure::Figures;
use server::Server;

// ------------------------------------------------------------------ options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sys {
    /// Plaintext unicast fan-out.
    Baseline,
    /// Plaintext, once to the distribution group.
    Mbaseline,
    /// The relay, unicast mode.
    Relay,
    /// The relay, group mode.
    Group,
}

impl Sys {
    pub fn name(self) -> &'static str {
        match self {
            Sys::Baseline => "baseline",
            Sys::Mbaseline => "mbaseline",
            Sys::Relay => "relay",
            Sys::Group => "group",
        }
    }
    /// Speaks the relay's protocol.
    pub fn is_relay(self) -> bool {
        matches!(self, Sys::Relay | Sys::Group)
    }
    /// Its clients receive on the distribution group.
    pub fn on_group(self) -> bool {
        matches!(self, Sys::Mbaseline | Sys::Group)
    }
    fn parse(s: &str) -> Result<Sys, String> {
        Ok(match s {
            "baseline" | "base" => Sys::Baseline,
            "mbaseline" | "mbase" => Sys::Mbaseline,
            "relay" | "unicast" => Sys::Relay,
            "group" => Sys::Group,
            _ => return Err(format!("unknown system {s:?}")),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub clients: usize,
    pub senders: usize,
    pub size: usize,
    pub rate: f64,
    pub max: bool,
    pub duration: f64,
    pub trial_secs: f64,
    pub runs: usize,
    pub json: bool,
    pub systems: Vec<Sys>,
    pub join_window: usize,
    pub rss: Option<PathBuf>,
    pub server: Option<PathBuf>,
    pub leave_rekey: Option<usize>,
    pub max_clients: Option<usize>,
    pub core_only: Option<u32>,
    pub core_timers: bool,
    pub perf: Option<u32>,
    pub scrape_ms: Option<u64>,
    pub scrape_windows: Option<u64>,
}

const USAGE: &str = "\
cargo run --release --features internals --example bench -- [FLAGS]

  --clients N        clients, each with its own socket and handshake (100)
  --senders K        of which K send, round-robin (1: one source, N-1 recipients per message)
  --size BYTES       message body size, at least 20 (100)
  --rate R           offered messages/s in total, one trial of --duration (1000)
  --max              instead: find the highest rate with < 1% loss and >= 99% of it sent
                     (the generator keeps up) (doubling, then bisecting,
                     --trial-secs trials), measure it for --duration (stepping down 5% while
                     that loses >= 1%, at most 6 times), and latency at half of it
  --duration SECS    measured trial length (2)
  --trial-secs SECS  search trial length with --max (0.5)
  --runs R           repeat every system R times, interleaved, report medians (1)
  --join-window W    handshakes in flight while clients join (32)
  --distribution M   unicast: the unicast baseline and the relay in unicast mode (default);
                     group: both baselines and the relay in group mode (protocol version 3,
                     clients on the distribution group); both: both baselines, both modes
  --systems LIST     instead, any of baseline,mbaseline,relay,group (comma-separated)
  --relay-only | --baseline-only
                     keep only the relay modes / the baselines of the selection
  --server BIN       run every system as a child process pinned to CPU 0, started once per
                     run and kept across its trials: `BIN serve ...` for the relay (with
                     --distribution group --ttl 0 and a control port in group mode), this
                     binary for the baselines
  --rss BIN          memory mode: the same children, reporting VmRSS/VmHWM idle, with N
                     clients, and after a --rate trial
  --leave-rekey R    group mode: R times, the last member leaves (DISCONNECT) and the time
                     until every remaining member acknowledged the fresh key is measured
                     (group_pending_acks == 0), then it joins again
  --max-clients N    the relay's cap (default: max(N, 1024))
  --perf HZ          during every measured trial, sample the server's CPU with
                     `perf record -e cpu-clock -F HZ -C 0 -g` and split its time into user,
                     system and NET_RX softirq (in any context) from the call chains: exact
                     where the kernel's tick-sampled split is not (see bench/perf.rs)
  --json             one JSON object on stdout instead of the table
  --scrape-ms MS     instead of baseline vs relay: the relay without and with its HTTP monitor
                     on, a thread doing GET /metrics every MS ms on a kept-alive connection
                     (as Prometheus does) for the whole run; reports both and their ratio
  --scrape-windows W with --scrape-ms: the scraped relay is scraped only in every other W ms
                     window of the run, and each message's latency is counted by the window
                     it was sent in: scrapes on and off in the same run, interleaved
                     (on_p99_us, off_p99_us, on_p99_per_off_p99)
  --core-only M      no sockets: drive RelayCore directly (sans-IO) with --clients clients and
                     M messages from client 0, for a profiler, e.g.
                     valgrind --tool=callgrind --toggle-collect='*relay_messages*' ...
                     (MCRELAY_BENCH_KEY=PEM file skips key generation; --distribution group
                     for group mode; --core-timers adds the driver's timer calls per message)
";

fn parse() -> Result<Opts, String> {
    let mut a = pico_args::Arguments::from_env();
    if a.contains(["-h", "--help"]) {
        print!("{USAGE}");
        std::process::exit(0);
    }
    for (flag, multicast) in [("--serve-baseline", false), ("--serve-mbaseline", true)] {
        if let Some(addr) = a
            .opt_value_from_str::<_, SocketAddrV4>(flag)
            .map_err(|e| e.to_string())?
        {
            baseline::serve_baseline_forever(addr, multicast);
        }
    }
    let e = |e: pico_args::Error| e.to_string();
    let relay_only = a.contains("--relay-only");
    let baseline_only = a.contains("--baseline-only");
    let dist: String = a
        .opt_value_from_str("--distribution")
        .map_err(e)?
        .unwrap_or_else(|| "unicast".into());
    let listed: Option<String> = a.opt_value_from_str("--systems").map_err(e)?;
    let mut systems = match (listed, dist.as_str()) {
        (Some(l), _) => l
            .split(',')
            .map(Sys::parse)
            .collect::<Result<Vec<_>, _>>()?,
        (None, "unicast") => vec![Sys::Baseline, Sys::Relay],
        (None, "group") => vec![Sys::Baseline, Sys::Mbaseline, Sys::Group],
        (None, "both") => vec![Sys::Baseline, Sys::Mbaseline, Sys::Relay, Sys::Group],
        (None, other) => return Err(format!("--distribution {other:?}: unicast, group or both")),
    };
    if relay_only && !baseline_only {
        systems.retain(|s| s.is_relay());
    }
    if baseline_only && !relay_only {
        systems.retain(|s| !s.is_relay());
    }
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
        server: a.opt_value_from_str("--server").map_err(e)?,
        leave_rekey: a.opt_value_from_str("--leave-rekey").map_err(e)?,
        max_clients: a.opt_value_from_str("--max-clients").map_err(e)?,
        core_only: a.opt_value_from_str("--core-only").map_err(e)?,
        core_timers: a.contains("--core-timers"),
        perf: a.opt_value_from_str("--perf").map_err(e)?,
        scrape_ms: a.opt_value_from_str("--scrape-ms").map_err(e)?,
        scrape_windows: a.opt_value_from_str("--scrape-windows").map_err(e)?,
        systems,
    };
    let rest = a.finish();
    if !rest.is_empty() {
        return Err(format!("unknown arguments {rest:?}\n\n{USAGE}"));
    }
    if o.systems.is_empty() {
        return Err("no system left to measure".into());
    }
    if o.clients < 2 || o.senders == 0 || o.senders > o.clients {
        return Err("need --clients >= 2 and 1 <= --senders <= --clients".into());
    }
    if o.size < BODY_MIN || o.size > 1000 {
        return Err(format!(
            "--size must be {BODY_MIN}..=1000 (one datagram either way)"
        ));
    }
    if o.scrape_ms.is_some()
        && (o.rss.is_some()
            || o.server.is_some()
            || o.leave_rekey.is_some()
            || o.systems != [Sys::Baseline, Sys::Relay])
    {
        return Err(
            "--scrape-ms compares the in-process relay with itself: no --rss, --server, \
             --leave-rekey, --systems, --distribution, --*-only"
                .into(),
        );
    }
    if o.scrape_ms == Some(0) {
        return Err("--scrape-ms must be positive".into());
    }
    match o.scrape_windows {
        Some(0) => return Err("--scrape-windows must be positive".into()),
        Some(_) if o.scrape_ms.is_none() => {
            return Err("--scrape-windows needs --scrape-ms".into());
        }
        Some(w) => {
            let window = std::time::Duration::from_millis(w);
            let _ = scrape::WINDOWS.set((std::time::Instant::now(), window));
        }
        None => {}
    }
    if o.rate <= 0.0 || o.duration <= 0.0 || o.trial_secs <= 0.0 || o.runs == 0 {
        return Err("--rate, --duration, --trial-secs, --runs must be positive".into());
    }
    if o.leave_rekey.is_some() && !o.systems.contains(&Sys::Group) {
        return Err("--leave-rekey measures group mode: use --distribution group".into());
    }
    if o.leave_rekey.is_some_and(|r| r == 0) || o.leave_rekey.is_some() && o.rss.is_some() {
        return Err("--leave-rekey needs R >= 1 and no --rss".into());
    }
    if o.rss.is_some() && o.server.is_some() {
        return Err("--rss and --server both name the child binary: give one".into());
    }
    Ok(o)
}

fn main() {
    let mut o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    if let Some(m) = o.core_only {
        core_only::core_only(&o, m);
        return;
    }
    if o.leave_rekey.is_some() {
        o.systems.retain(|&s| s == Sys::Group);
    }
    eprintln!("bench: {o:?}");
    // Two sockets per client in group mode, plus the servers' and the poll's.
    if let Err(e) = os::raise_nofile(2 * o.clients as u64 + 64) {
        eprintln!("bench: {e}");
        std::process::exit(2);
    }
    if os::ncpus() >= 2 {
        // Server thread (or child) on CPU 0, generator on CPU 1.
        os::pin_to_cpu(1);
    }
    eprintln!(
        "bench: irq time accounting {} (softirq on the server's CPU is {} its run time)",
        match os::irq_time_accounting() {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown (assumed off)",
        },
        if os::irq_time_accounting() == Some(true) {
            "not in"
        } else {
            "partly in"
        }
    );
    eprintln!("bench: generating a 2048-bit RSA key");
    let key = ServerKey::generate(2048).expect("keygen");
    let dir = std::env::temp_dir().join(format!("mcrelay-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let key_file = dir.join("k.pem");
    key.save_new(&key_file).expect("save key");
    let pem = std::fs::read_to_string(&key_file).unwrap();
    let fp = *key.fingerprint();
    if o.scrape_ms.is_some() {
        scrape::format_cost(&pem, o.clients, o.max_clients);
    }

    // What is compared: the systems, or (--scrape-ms) the relay without and with scrapes.
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
            let child = o.rss.as_ref().or(o.server.as_ref());
            let s = match child {
                Some(bin) => {
                    Server::start_child(sys, bin, &key_file, fp, o.clients, o.max_clients, n, false)
                }
                None => Server::start_thread(sys, &pem, o.clients, o.max_clients, n, scrape),
            };
            let mut f = if let Some(r) = o.leave_rekey {
                measure::measure_leave_rekey(&o, sys, &s, r)
            } else if o.rss.is_some() {
                measure::measure_rss(&o, sys, &s)
            } else {
                measure::measure(&o, sys, &s)
            };
            let scraped = s.stop();
            if let Some(ms) = scrape {
                let n = scraped.first().map_or(0.0, |x| x.1);
                eprintln!("  scraper: {n} scrapes of /metrics every {ms} ms: {scraped:?}");
            }
            f.extend(scraped);
            figs.push(f);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let med: Vec<(&'static str, Figures)> = results
        .iter()
        .map(|(l, r)| (*l, report::medians(r)))
        .collect();
    report::print(&o, &med);
}
