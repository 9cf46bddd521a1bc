//! The two plaintext baselines, one forwarder: the same sockets as the relay (multicast in,
//! one reply socket out, same buffer sizes), the same `recvmmsg`/`sendmmsg` batching
//! (`mcrelay::driver::batch`), the same read budget and the same "read, then flush
//! everything" loop shape, an outbox of the same shape, but no crypto.
//!
//! * unicast fan-out (`baseline`): `JOIN` registers the sender (answered `OK`), and every
//!   message goes to every registered address but its source, one datagram each;
//! * multicast (`mbaseline`): `JOIN` is answered `OK` and nothing is kept; every message is
//!   sent **once** to the distribution group (the ingest group's address, port + 1) that all
//!   clients joined, as the relay's group mode does.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use mcrelay::driver::batch::{self, BATCH, RecvBatch};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

pub const READ_BUDGET: usize = 256; // as in the driver
const SEND_QUEUE: usize = 4 << 20; // as Config::max_send_queue

pub struct Forwarder {
    mcast: UdpSocket,
    ucast: UdpSocket,
    /// Multicast baseline: where every message goes, once.
    dist: Option<SocketAddr>,
    members: Vec<SocketAddr>,
    rx: RecvBatch,
    buf: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
    head: usize,
    read_more: bool,
}

fn mcast_socket(group: Ipv4Addr, port: u16) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&SocketAddrV4::new(group, port).into())?;
    s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)?;
    Ok(UdpSocket::from_std(s.into()))
}

/// The reply socket, set up as the relay's (driver `unicast_socket`): multicast sent on
/// 127.0.0.1, TTL 0, looped back.
fn ucast_socket() -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
    s.set_multicast_ttl_v4(0)?;
    s.set_multicast_loop_v4(true)?;
    Ok(UdpSocket::from_std(s.into()))
}

impl Forwarder {
    /// `dist`: `Some(group)` makes the multicast baseline.
    pub fn new(
        group: Ipv4Addr,
        port: u16,
        dist: Option<SocketAddrV4>,
        poll: &Poll,
    ) -> io::Result<Forwarder> {
        let mut f = Forwarder {
            mcast: mcast_socket(group, port)?,
            ucast: ucast_socket()?,
            dist: dist.map(SocketAddr::V4),
            members: Vec::new(),
            rx: RecvBatch::default(),
            buf: Vec::new(),
            items: Vec::new(),
            head: 0,
            read_more: false,
        };
        poll.registry()
            .register(&mut f.mcast, Token(10), Interest::READABLE)?;
        poll.registry()
            .register(&mut f.ucast, Token(11), Interest::WRITABLE)?;
        Ok(f)
    }

    fn read(&mut self) {
        self.read_more = false;
        for _ in 0..READ_BUDGET / BATCH {
            match batch::recv_batch(&self.mcast, &mut self.rx) {
                Ok(n) => {
                    for i in 0..n {
                        let Some((from, bytes, trunc)) = self.rx.get(i) else {
                            continue;
                        };
                        if trunc {
                            continue;
                        }
                        if bytes == b"JOIN" || bytes == b"PING" {
                            if bytes == b"JOIN"
                                && self.dist.is_none()
                                && !self.members.contains(&from)
                            {
                                self.members.push(from);
                            }
                            let start = self.buf.len();
                            self.buf.extend_from_slice(b"OK");
                            self.items.push((from, start, 2));
                            continue;
                        }
                        if self.buf.len() + bytes.len() > SEND_QUEUE {
                            continue;
                        }
                        let start = self.buf.len();
                        self.buf.extend_from_slice(bytes);
                        if let Some(g) = self.dist {
                            self.items.push((g, start, bytes.len()));
                            continue;
                        }
                        for m in 0..self.members.len() {
                            let to = self.members[m];
                            if to != from {
                                self.items.push((to, start, bytes.len()));
                            }
                        }
                    }
                    if n < BATCH {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
        self.read_more = true;
    }

    fn flush(&mut self) {
        while self.head < self.items.len() {
            let buf = &self.buf;
            let it = self.items[self.head..]
                .iter()
                .map(|&(to, s, l)| (to, &buf[s..s + l]));
            match batch::send_batch(&self.ucast, it) {
                Ok(0) => return,
                Ok(n) => self.head += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => self.head += 1,
            }
        }
        self.head = 0;
        self.items.clear();
        self.buf.clear();
    }

    /// The same loop shape as the relay's host: poll, read (bounded), flush.
    pub fn run(&mut self, poll: &mut Poll, mut after_turn: impl FnMut() -> bool) {
        let mut events = Events::with_capacity(256);
        while after_turn() {
            let timeout = self.read_more.then_some(Duration::ZERO);
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("poll: {e}"),
            }
            let readable = events.iter().any(|e| e.token() == Token(10));
            if readable || self.read_more {
                self.read();
            }
            self.flush();
        }
    }
}

/// `--serve-baseline ADDR` / `--serve-mbaseline ADDR`: a baseline as a child process.
pub fn serve_baseline_forever(addr: SocketAddrV4, multicast: bool) -> ! {
    let mut poll = Poll::new().unwrap();
    let dist = multicast.then(|| SocketAddrV4::new(*addr.ip(), addr.port() + 1));
    let mut f = Forwarder::new(*addr.ip(), addr.port(), dist, &poll).unwrap();
    f.run(&mut poll, || true);
    std::process::exit(0)
}
