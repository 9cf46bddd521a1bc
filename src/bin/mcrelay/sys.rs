//! Process plumbing the relay library never does itself: signals, systemd notification,
//! a stderr that survives its reader.

use std::path::Path;

use mio::{Interest, Poll, Token};

use crate::{Failure, rt};

/// If stderr's reader is gone (a closed pipe or socket, a closed fd), point fd 2 at /dev/null
/// so that no later write fails: simple_logger panics on a failed write, and the relay must
/// outlive its log reader (operators still get the log on the control port). One `poll`
/// with a zero timeout per stderr line; a reader that vanishes between the poll and the write
/// can still lose the race, once.
#[allow(unsafe_code)]
pub fn keep_stderr_writable() {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: 2,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n == 1
        && p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
        && let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null")
    {
        // SAFETY: dup2 onto fd 2 of a file we hold open; both fds are valid.
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
    }
}

/// SIGINT and SIGTERM, delivered as readiness on `SIGNAL` in our own Poll.
pub fn register_signals(
    poll: &Poll,
    token: Token,
) -> Result<signal_hook_mio::v1_0::Signals, Failure> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM]).map_err(rt(1))?;
    poll.registry()
        .register(&mut signals, token, Interest::READABLE)
        .map_err(rt(1))?;
    Ok(signals)
}

/// Tell systemd (Type=notify) about our state, if it is listening.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = result {
        log::warn!("sd_notify({state}): {e}");
    }
}

/// glibc's `pthread_getattr_np`, replaced in the statically linked binary by one that always
/// fails (docs/performance.md, "Binary size under 2 MiB": the last of its savings, 105 KB).
///
/// Its only caller is Rust's runtime, which asks where the stack of the main thread (at
/// start-up) and of each spawned thread (when it starts) ends, only so that a stack overflow
/// can be reported as `thread 'main' has overflowed its stack` and an abort (exit 134). For
/// the main thread glibc answers by parsing /proc/self/maps with `sscanf`, and that links
/// glibc's whole scanf and strtod machinery into a static binary. When the call fails, the
/// runtime records no guard range (as it always does for musl's main thread), and an
/// overflow still stops the process at the kernel's or glibc's guard page, as a plain SIGSEGV
/// (exit 139) without the message. Nothing else calls it: not our code, no dependency, and no
/// object of libc.a (`nm` lists no reference; glibc's own implementation stays reachable as
/// `__pthread_getattr_np`, and its `pthread_getattr_np` is a weak alias, which this strong
/// definition replaces). A dynamically linked build keeps glibc's.
#[cfg(all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"))]
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn pthread_getattr_np(
    _thread: libc::pthread_t,
    _attr: *mut libc::pthread_attr_t,
) -> libc::c_int {
    libc::ENOSYS
}
