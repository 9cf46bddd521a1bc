//! One system, one run: the `--max` search (or one `--rate` trial), `--rss`, `--leave-rekey`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::alloc::{LIVE, PEAK};
use crate::generator::{Gen, Trial, progress};
use crate::server::Server;
use crate::{Opts, Sys};

pub type Figures = Vec<(&'static str, f64)>;

/// CPU per delivery and per message of the measured trial, µs (= s per 10⁶); `half`: the
/// half-max trial's few figures.
fn cpu_figures(f: &mut Figures, t: &Trial, half: Option<&Trial>) {
    let d = t.received.max(1) as f64 / 1e6;
    let m = t.sent.max(1) as f64 / 1e6;
    let c = &t.cpu;
    // Run time of the server + ksoftirqd (precise; without irq time accounting it includes
    // the softirq run on the server's back, not the softirq run in other contexts).
    f.push(("server_core_us_per_delivery", c.core / d));
    // The kernel's tick-sampled split (/proc): biased for bursty servers, see bench/perf.rs.
    f.push(("proc_user_us_per_delivery", c.user / d));
    f.push(("proc_sys_us_per_delivery", c.sys / d));
    f.push(("proc_softirq_us_per_delivery", c.softirq / d));
    f.push(("proc_user_us_per_msg", c.user / m));
    let p = t.perf;
    let g = |x: fn(&crate::perf::PerfSplit) -> f64, per: f64| {
        p.as_ref().map_or(f64::NAN, |p| x(p) / per)
    };
    f.push(("perf_user_us_per_delivery", g(|p| p.user, d)));
    f.push(("perf_sys_us_per_delivery", g(|p| p.sys, d)));
    f.push(("perf_softirq_us_per_delivery", g(|p| p.softirq, d)));
    f.push(("perf_core_us_per_delivery", g(|p| p.core(), d)));
    f.push(("perf_udp_us_per_delivery", g(|p| p.udp, d)));
    f.push((
        "perf_softirq_elsewhere_us_per_delivery",
        g(|p| p.softirq_elsewhere, d),
    ));
    f.push(("perf_user_us_per_msg", g(|p| p.user, m)));
    f.push(("perf_sys_us_per_msg", g(|p| p.sys, m)));
    f.push(("perf_softirq_us_per_msg", g(|p| p.softirq, m)));
    f.push(("perf_core_us_per_msg", g(|p| p.core(), m)));
    f.push((
        "perf_core_bound_deliveries_per_s",
        p.map_or(f64::NAN, |p| t.received as f64 / p.core().max(1e-9)),
    ));
    let (hd, hm) = half.map_or((f64::NAN, f64::NAN), |h| {
        (h.received.max(1) as f64 / 1e6, h.sent.max(1) as f64 / 1e6)
    });
    let hp = half.and_then(|h| h.perf);
    f.push((
        "half_max_core_us_per_delivery",
        half.map_or(f64::NAN, |h| h.cpu.core / hd),
    ));
    f.push((
        "half_max_perf_core_us_per_delivery",
        hp.map_or(f64::NAN, |p| p.core() / hd),
    ));
    f.push((
        "half_max_perf_user_us_per_msg",
        hp.map_or(f64::NAN, |p| p.user / hm),
    ));
}

/// Join, open the distribution-group sockets, reach the steady state.
fn join(o: &Opts, sys: Sys, server: &Server) -> (Gen, f64, u32) {
    let mut g = Gen::new(sys, server, o.senders, o.size);
    let hs = g.join(o.clients, o.join_window);
    eprintln!(
        "  {:<9} {} clients joined: {hs:.0} handshakes/s",
        sys.name(),
        o.clients
    );
    g.open_group_sockets();
    let warm = g.steady(server);
    if sys == Sys::Group {
        eprintln!(
            "  {:<9} steady (every key acknowledged) after {warm} warm-up message(s)",
            sys.name()
        );
    }
    (g, hs, warm)
}

pub fn measure(o: &Opts, sys: Sys, server: &Server) -> Figures {
    let (mut g, hs, warm) = join(o, sys, server);
    let heap_after_join = LIVE.load(Ordering::Relaxed).max(0) as f64;
    let (rss1, _) = server.mem();
    let recipients = (o.clients - 1) as f64;
    let mut f: Figures = vec![("handshakes_per_s", hs)];
    let mut half_t = None;
    let main = if o.max {
        let mut r = (50_000.0 / recipients).max(10.0);
        let (mut lo, mut hi): (f64, Option<f64>) = (0.0, None);
        for _ in 0..14 {
            let t = g.trial(server, r, o.trial_secs, None);
            progress(sys, "search", &t);
            if t.held() {
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
        let mut t = g.trial(server, lo, o.duration, o.perf);
        progress(sys, "at max", &t);
        for _ in 0..6 {
            if t.held() {
                break;
            }
            lo *= 0.95;
            t = g.trial(server, lo, o.duration, o.perf);
            progress(sys, "at max", &t);
        }
        let half = g.trial(server, lo / 2.0, o.duration, o.perf);
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
        half_t = Some(half);
        t
    } else {
        let t = g.trial(server, o.rate, o.duration, o.perf);
        progress(sys, "fixed", &t);
        f.push(("p50_us", t.p50_us));
        f.push(("p99_us", t.p99_us));
        f.push(("max_us", t.max_us));
        if let Some([p50_on, p99_on, p50_off, p99_off]) = t.windows {
            eprintln!(
                "  windows: sent in scrape-on windows p50 {p50_on:.0} p99 {p99_on:.0} us, \
                 in off windows p50 {p50_off:.0} p99 {p99_off:.0} us"
            );
            f.push(("on_p50_us", p50_on));
            f.push(("on_p99_us", p99_on));
            f.push(("off_p50_us", p50_off));
            f.push(("off_p99_us", p99_off));
            f.push(("on_p99_per_off_p99", p99_on / p99_off));
        }
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
    // its own thread CPU time, and of thread + irq/softirq time on its core (the historical
    // figures of docs/performance.md). Without irq time accounting the thread's time already
    // holds the softirq run on its back, so the second counts that twice: there,
    // server_core_us_per_delivery and perf_core_us_per_delivery (cpu_figures) are the
    // figures that count everything once.
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
    let child = server.is_child();
    f.push((
        "server_allocs_per_delivery",
        if child {
            f64::NAN
        } else {
            main.allocs as f64 / main.received.max(1) as f64
        },
    ));
    f.push((
        "server_heap_after_join_kib",
        if child {
            f64::NAN
        } else {
            heap_after_join / 1024.0
        },
    ));
    f.push((
        "server_heap_peak_kib",
        if child {
            f64::NAN
        } else {
            PEAK.load(Ordering::Relaxed).max(0) as f64 / 1024.0
        },
    ));
    // Below: added with group mode.
    f.push(("send_shortfall_pct", main.shortfall * 100.0));
    // CPU split without double counting (see CpuSplit).
    cpu_figures(&mut f, &main, half_t.as_ref());
    f.push(("unicast_out_per_msg", main.unicast_out_per_msg));
    f.push((
        "steady_warmup_msgs",
        if sys == Sys::Group {
            f64::from(warm)
        } else {
            f64::NAN
        },
    ));
    let (rss2, hwm2) = server.mem();
    let kib = |b: u64| if child { b as f64 / 1024.0 } else { f64::NAN };
    f.push(("joined_rss_kib", kib(rss1)));
    f.push(("loaded_rss_kib", kib(rss2)));
    f.push(("loaded_hwm_kib", kib(hwm2)));
    f
}

pub fn measure_rss(o: &Opts, sys: Sys, server: &Server) -> Figures {
    std::thread::sleep(Duration::from_millis(300));
    let (rss0, hwm0) = server.mem();
    let (mut g, hs, _) = join(o, sys, server);
    let (rss1, hwm1) = server.mem();
    eprintln!(
        "  {:<9} idle RSS {} KiB; {} clients joined ({hs:.0}/s): RSS {} KiB",
        sys.name(),
        rss0 / 1024,
        o.clients,
        rss1 / 1024
    );
    let t = g.trial(server, o.rate, o.duration, o.perf);
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

/// `--leave-rekey R`: R leaves, each followed by the rekey it causes, in one run.
pub fn measure_leave_rekey(o: &Opts, sys: Sys, server: &Server, reps: usize) -> Figures {
    let (mut g, hs, _) = join(o, sys, server);
    let mut leave = Vec::new();
    let mut fresh = Vec::new();
    let mut keys = Vec::new();
    for r in 0..reps {
        let (l, f, k, p) = g.leave_and_rekey(server);
        eprintln!(
            "  {:<9} leave {}/{reps}: every remaining member acknowledged the fresh key {l:.2} ms after the leave ({f:.2} ms after the rekey began), {k} key deliveries, {p} pulls",
            sys.name(),
            r + 1
        );
        leave.push(l);
        fresh.push(f);
        keys.push(k as f64);
    }
    let min = leave.iter().copied().fold(f64::INFINITY, f64::min);
    let max = leave.iter().copied().fold(0.0, f64::max);
    vec![
        ("handshakes_per_s", hs),
        ("leave_to_all_acked_ms", crate::report::median(leave)),
        ("leave_to_all_acked_min_ms", min),
        ("leave_to_all_acked_max_ms", max),
        ("rekey_to_all_acked_ms", crate::report::median(fresh)),
        ("key_deliveries_per_rekey", crate::report::median(keys)),
        ("members_to_tell", (g.clients() - 1) as f64),
    ]
}
