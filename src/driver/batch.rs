//! Batched UDP I/O with `recvmmsg` / `sendmmsg` (Linux only: mcrelay has no fallback for
//! other systems, see docs/architecture.md).
//!
//! One of the two modules with `unsafe` (the other is `crypto::multi`): building `mmsghdr`
//! arrays for the two syscalls. Every pointer handed to the kernel points into a buffer that
//! outlives the call, and every length comes from that buffer.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// Datagrams per syscall.
pub const BATCH: usize = 32;
/// Receive slot size: larger than any valid datagram, so an oversized one is seen as such.
pub const SLOT: usize = 1536;

/// Reusable receive buffers for one `recvmmsg`.
pub struct RecvBatch {
    bufs: Box<[[u8; SLOT]; BATCH]>,
    lens: [usize; BATCH],
    addrs: [Option<SocketAddr>; BATCH],
    truncated: [bool; BATCH],
    n: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvBatch {{ n: {} }}", self.n)
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: Box::new([[0u8; SLOT]; BATCH]),
            lens: [0; BATCH],
            addrs: [None; BATCH],
            truncated: [false; BATCH],
            n: 0,
        }
    }
}

impl RecvBatch {
    /// Datagram `i`: its source, its bytes, and whether it was longer than [`SLOT`].
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8], bool)> {
        if i >= self.n {
            return None;
        }
        let addr = self.addrs[i]?;
        Some((addr, &self.bufs[i][..self.lens[i]], self.truncated[i]))
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family says so) into storage that is
            // larger and suitably aligned for it.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: &SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Receive up to [`BATCH`] datagrams without blocking. `Ok(0)` never happens: no datagram
/// is `WouldBlock`.
pub fn recv_batch(sock: &impl AsRawFd, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.n = 0;
    // SAFETY: zeroed mmsghdr/iovec/sockaddr_storage are valid (all-integer/pointer C structs).
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..BATCH {
        iovs[i].iov_base = batch.bufs[i].as_mut_ptr().cast();
        iovs[i].iov_len = SLOT;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen =
            std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every pointer in `hdrs` points into `names`, `iovs` or `batch.bufs`, all of
    // which live until after the call; lengths match the buffers.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for i in 0..n {
        batch.lens[i] = (hdrs[i].msg_len as usize).min(SLOT);
        batch.truncated[i] = hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        batch.addrs[i] = sockaddr_to_std(&names[i]);
    }
    batch.n = n;
    Ok(n)
}

/// Send as many of `items` as the kernel takes in one `sendmmsg` (up to [`BATCH`]).
/// Returns how many were sent; `WouldBlock` when none.
pub fn send_batch<'a>(
    sock: &impl AsRawFd,
    items: impl Iterator<Item = (SocketAddr, &'a [u8])>,
) -> io::Result<usize> {
    // SAFETY: as in `recv_batch`.
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut n = 0;
    for (to, bytes) in items.take(BATCH) {
        let len = std_to_sockaddr(&to, &mut names[n]);
        iovs[n].iov_base = bytes.as_ptr() as *mut libc::c_void;
        iovs[n].iov_len = bytes.len();
        n += 1;
        let h = &mut hdrs[n - 1].msg_hdr;
        h.msg_name = (&mut names[n - 1] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = len;
    }
    for i in 0..n {
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: `hdrs[..n]` point into `names`, `iovs` and the caller's byte slices, all alive
    // for the call; the kernel only reads the payloads.
    let sent = unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batches_round_trip_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; usize::from(i) * 30]).collect();
        let mut sent = 0;
        while sent < payloads.len() {
            sent += send_batch(&tx, payloads[sent..].iter().map(|p| (to, p.as_slice()))).unwrap();
        }
        // One oversized datagram is reported as truncated.
        tx.send_to(&[7u8; 2000], to).unwrap();
        let mut batch = RecvBatch::default();
        let mut got = Vec::new();
        let mut truncated = 0;
        for _ in 0..100 {
            match recv_batch(&rx, &mut batch) {
                Ok(n) => {
                    for i in 0..n {
                        let (from, bytes, trunc) = batch.get(i).unwrap();
                        assert_eq!(from, tx.local_addr().unwrap());
                        if trunc {
                            truncated += 1;
                        } else {
                            got.push(bytes.to_vec());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() == payloads.len() && truncated == 1 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, payloads);
        assert_eq!(truncated, 1);
        assert!(batch.get(BATCH).is_none());
    }
}
