//! `--perf`: the server core's CPU split by sampling, not by the scheduler tick.
//!
//! Why: this kernel has no irq time accounting and samples user/system/softirq time with the
//! 250 Hz tick. For a server that runs in bursts of tens of µs between idle periods (group
//! mode, the multicast baseline) the tick split is badly biased (measured: ~35 % "user" where
//! sampling finds ~1.5 %), and part of the softirq work its datagrams cause runs on its CPU
//! outside its own context (`skb_defer_free_flush`: the receiver frees the skbs on its CPU and
//! the kernel hands them back to the CPU that allocated them, the sender's), so neither its
//! run time nor ksoftirqd's contains it. `perf record -e cpu-clock` samples CPU 0 from an
//! hrtimer at `--perf` Hz with call chains; each sample is classified:
//!
//! * the server's task, top frame in user space: **user**;
//! * the server's task, in the kernel but not in a softirq: **sys**;
//! * in `net_rx_action` (NET_RX softirq), in whatever task's context (the server's on the
//!   back of its `sendmmsg`, idle, ksoftirqd, another job's): **softirq** (loopback
//!   delivery is the only network traffic on the server's CPU);
//! * of that, `__udp4_lib_rcv` (the UDP delivery: socket lookup, one clone per receiving
//!   socket for a multicast datagram, enqueue, wake-up) and `skb_defer_free_flush` (freeing
//!   them): **udp**, the part that grows with the receivers.
//!
//! Other samples (other jobs, other softirqs) are not the server's. perf runs on the
//! generator's CPU; its sampling costs the server's CPU ~1-2 %.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// CPU seconds of the server's core, by class.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerfSplit {
    pub user: f64,
    pub sys: f64,
    pub softirq: f64,
    /// Of `softirq`: outside the server's own context.
    pub softirq_elsewhere: f64,
    /// Of `softirq`: UDP delivery to the sockets and freeing the skbs.
    pub udp: f64,
    pub samples: u64,
}

impl PerfSplit {
    pub fn core(&self) -> f64 {
        self.user + self.sys + self.softirq
    }
}

pub struct PerfRec {
    child: Child,
    path: PathBuf,
}

/// Start sampling `cpu` at `hz`; returns once perf is (very likely) recording.
pub fn start(cpu: usize, hz: u32, tag: &str) -> Option<PerfRec> {
    let path = std::env::temp_dir().join(format!(
        "mcrelay-bench-perf-{}-{tag}.data",
        std::process::id()
    ));
    let mut cmd = Command::new("perf");
    // SAFETY: prctl is async-signal-safe. perf record -C samples until stopped: stop it
    // (SIGINT writes its file) if the bench dies first.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
            Ok(())
        });
    }
    let child = cmd
        .args(["record", "-q", "-e", "cpu-clock", "-g"])
        .args(["-F", &hz.to_string(), "-C", &cpu.to_string(), "-o"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("bench: perf record: {e}"))
        .ok()?;
    std::thread::sleep(Duration::from_millis(400));
    Some(PerfRec { child, path })
}

impl PerfRec {
    /// Stop and classify; `tid` is the server's task (thread id, or a child's pid).
    pub fn finish(mut self, tid: i32) -> PerfSplit {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
        let split = classify(&self.path, tid);
        let _ = std::fs::remove_file(&self.path);
        split
    }
}

fn classify(path: &PathBuf, tid: i32) -> PerfSplit {
    let mut s = PerfSplit::default();
    let Ok(mut child) = Command::new("perf")
        .args(["script", "-F", "comm,tid,period,ip,sym", "-i"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return s;
    };
    let out = BufReader::new(child.stdout.take().unwrap());
    // One sample: its task, period (ns) and frames, top first.
    let mut cur: Option<(i32, f64)> = None;
    let mut top_user = false;
    let mut first = true;
    let (mut in_softirq, mut in_net, mut in_udp) = (false, false, false);
    let finish = |s: &mut PerfSplit,
                  cur: Option<(i32, f64)>,
                  top_user: bool,
                  (softirq, net, udp): (bool, bool, bool)| {
        let Some((t, secs)) = cur else { return };
        s.samples += 1;
        let mine = t == tid;
        if net {
            s.softirq += secs;
            if !mine {
                s.softirq_elsewhere += secs;
            }
            if udp {
                s.udp += secs;
            }
        } else if mine && top_user && !softirq {
            s.user += secs;
        } else if mine {
            // In the kernel; another softirq (timer, RCU) on its back counts as system time.
            s.sys += secs;
        }
    };
    for line in out.lines().map_while(Result::ok) {
        if line.is_empty() {
            continue;
        }
        if !line.starts_with(['\t', ' ']) {
            finish(&mut s, cur, top_user, (in_softirq, in_net, in_udp));
            // "comm (may have spaces) tid period"
            let mut it = line.split_whitespace().rev();
            let period: f64 = it.next().and_then(|p| p.parse().ok()).unwrap_or(0.0);
            let t: i32 = it.next().and_then(|p| p.parse().ok()).unwrap_or(-1);
            cur = Some((t, period * 1e-9));
            first = true;
            top_user = false;
            (in_softirq, in_net, in_udp) = (false, false, false);
            continue;
        }
        let mut f = line.split_whitespace();
        let ip = f.next().and_then(|x| u64::from_str_radix(x, 16).ok());
        let sym = f.next().unwrap_or("");
        if first {
            top_user = ip.is_some_and(|ip| ip < 0xffff_0000_0000_0000);
            first = false;
        }
        match sym {
            "handle_softirqs" | "__do_softirq" => in_softirq = true,
            "net_rx_action" => in_net = true,
            "__udp4_lib_rcv" | "skb_defer_free_flush" => in_udp = true,
            _ => {}
        }
    }
    finish(&mut s, cur, top_user, (in_softirq, in_net, in_udp));
    let _ = child.wait();
    s
}
