//! Small OS helpers: CPU clocks and /proc figures, pinning, a timerfd, fd limits.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;
use std::time::Duration;

pub fn thread_cpu_clock(h: &JoinHandle<()>) -> libc::clockid_t {
    let mut cid: libc::clockid_t = 0;
    // SAFETY: a live thread's pthread_t and a valid out-pointer.
    let r = unsafe { libc::pthread_getcpuclockid(h.as_pthread_t() as libc::pthread_t, &mut cid) };
    assert_eq!(r, 0, "pthread_getcpuclockid");
    cid
}

pub fn clock_secs(cid: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(cid, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The calling thread's kernel id.
pub fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// (utime, stime) in seconds of a task's `stat` file (`/proc/<pid>/stat` or
/// `/proc/<pid>/task/<tid>/stat`). Clock-tick sampled, scaled by the kernel so that the two
/// add up to the task's precise run time.
pub fn task_user_sys(path: &str) -> (f64, f64) {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) / clk_tck(), get(12) / clk_tck())
}

/// A task's run time from its `schedstat` (first field, ns), seconds.
pub fn schedstat_secs(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(f64::NAN, |ns| ns as f64 * 1e-9)
}

/// The pid of `ksoftirqd/<cpu>`, which runs the softirq work the kernel defers.
pub fn ksoftirqd_pid(cpu: usize) -> Option<u32> {
    let want = format!("ksoftirqd/{cpu}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == want).then_some(pid)
    })
}

/// (VmRSS, VmHWM) in bytes.
pub fn proc_mem(pid: u32) -> (u64, u64) {
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
pub fn udp_drops(port: u16, ports: &[u16]) -> (u64, u64) {
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

/// (irq, softirq) time of CPU `cpu` from /proc/stat, seconds (USER_HZ resolution).
/// Loopback delivery (IP/UDP receive path, the per-socket clones of a multicast datagram,
/// socket enqueue, wake-up) runs as softirq on the *sending* CPU.
pub fn cpu_irq_softirq(cpu: usize) -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu} ");
    let Some(l) = s.lines().find(|l| l.starts_with(&name)) else {
        return (f64::NAN, f64::NAN);
    };
    let f: Vec<f64> = l
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let hz = clk_tck();
    (
        f.get(5).copied().unwrap_or(0.0) / hz,
        f.get(6).copied().unwrap_or(0.0) / hz,
    )
}

/// Does this kernel account irq time apart from tasks (`CONFIG_IRQ_TIME_ACCOUNTING`)?
/// Without it, softirq work run on the back of a task's system call (loopback delivery
/// after `sendmmsg`) is counted both in that task's stime/run time and in the CPU's softirq
/// column. Read from /proc/config.gz (via `zcat`); `None` if unknown.
pub fn irq_time_accounting() -> Option<bool> {
    let out = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout);
    Some(
        s.lines()
            .any(|l| l.trim() == "CONFIG_IRQ_TIME_ACCOUNTING=y"),
    )
}

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays in bounds for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pin the calling thread (pid 0) or process `pid` to `cpu`.
pub fn pin_pid_to_cpu(pid: libc::pid_t, cpu: usize) -> bool {
    let set = cpu_set(cpu);
    // SAFETY: a valid cpu_set_t of the size given.
    unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

pub fn pin_to_cpu(cpu: usize) {
    pin_pid_to_cpu(0, cpu);
}

/// Online CPUs (not the affinity mask, which pinning narrows).
pub fn ncpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

/// Make room for `want` open files (raising the hard limit needs CAP_SYS_RESOURCE).
pub fn raise_nofile(want: u64) -> Result<(), String> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_cur >= want {
        return Ok(());
    }
    let new = libc::rlimit {
        rlim_cur: want,
        rlim_max: r.rlim_max.max(want),
    };
    // SAFETY: valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
        return Ok(());
    }
    Err(format!(
        "need {want} open files, the limit is {} (hard {}): raise it (ulimit -n)",
        r.rlim_cur, r.rlim_max
    ))
}

pub struct TimerFd(pub RawFd);

impl TimerFd {
    pub fn new() -> TimerFd {
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
    pub fn arm(&self, every: Option<Duration>) {
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
    pub fn drain(&self) {
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

/// A multicast group unique to this process and run `n`, and a free port `p` (group mode
/// uses `p + 1` too).
pub fn unique_endpoint(n: u8) -> (Ipv4Addr, u16) {
    let port = loop {
        let p = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < u16::MAX {
            break p;
        }
    };
    let pid = std::process::id();
    (
        Ipv4Addr::new(239, 255, (pid % 250) as u8 + 1, n % 250 + 1),
        port,
    )
}

/// A free TCP port on 127.0.0.1 (for a child relay's control port).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
