//! A blocking client over UDP sockets (tests, benchmark, CLI): the session's socket, and in
//! group mode a second one on the distribution group, waited on together with a mio `Poll`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::{ClientError, ClientSession, Event};
use crate::crypto::rng::Rng;

/// Where the relay is and how to reach it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The relay's multicast group.
    pub group: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// The interface address to send from (and bind to).
    pub iface: Ipv4Addr,
    /// Multicast TTL (0 never leaves the host).
    pub ttl: u32,
    /// Refuse any relay key with another SHA-256 fingerprint.
    pub pin: Option<[u8; 32]>,
    /// Admission `(name, token)`.
    pub admission: Option<(String, String)>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            group: Ipv4Addr::new(239, 255, 77, 77),
            port: 5007,
            iface: Ipv4Addr::LOCALHOST,
            ttl: 1,
            pin: None,
            admission: None,
        }
    }
}

/// A UDP socket set up to reach the relay (protocol.md §1): bound to the interface address
/// with an ephemeral port, multicast sent on that interface with the given TTL and looped
/// back (the relay may run on this host).
pub fn client_socket(cfg: &ClientConfig) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddrV4::new(cfg.iface, 0))?;
    sock.set_multicast_ttl_v4(cfg.ttl)?;
    sock.set_multicast_loop_v4(true)?;
    let s2 = socket2::SockRef::from(&sock);
    s2.set_multicast_if_v4(&cfg.iface)?;
    // A 74-fragment message is ~90 KB in one burst (protocol.md §6): best effort, capped by
    // net.core.rmem_max.
    let _ = s2.set_recv_buffer_size(1 << 20);
    Ok(sock)
}

/// A socket that receives the distribution group `group` (group mode, protocol.md §12):
/// bound to its port with `SO_REUSEADDR` (every member on the host binds the same port) and
/// joined on the interface `iface`.
pub fn group_socket(group: SocketAddrV4, iface: Ipv4Addr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    let _ = s.set_recv_buffer_size(1 << 20);
    s.bind(&SocketAddrV4::new(*group.ip(), group.port()).into())?;
    s.join_multicast_v4(group.ip(), &iface)?;
    Ok(s.into())
}

const SESSION: Token = Token(0);
const GROUP: Token = Token(1);

/// A blocking client (tests, benchmark, CLI).
pub struct Client {
    poll: Poll,
    events: Events,
    /// Non-blocking, registered with `poll` by its fd.
    sock: UdpSocket,
    group: Option<UdpSocket>,
    iface: Ipv4Addr,
    to: SocketAddr,
    session: ClientSession,
    buf: Vec<u8>,
}

impl Client {
    /// Handshake with the relay; fails after `timeout`.
    pub fn connect(cfg: &ClientConfig, timeout: Duration) -> Result<Client, ClientError> {
        let rng = Rng::from_os().map_err(|e| ClientError::Io(io::Error::other(e.to_string())))?;
        let session = ClientSession::new(rng, cfg.pin, cfg.admission.clone(), Instant::now());
        Self::with_session(cfg, session, timeout)
    }

    /// Handshake with the relay using `session` (already configured, e.g. its max version).
    pub fn with_session(
        cfg: &ClientConfig,
        session: ClientSession,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let sock = client_socket(cfg)?;
        sock.set_nonblocking(true)?;
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            SESSION,
            Interest::READABLE,
        )?;
        let mut c = Client {
            poll,
            events: Events::with_capacity(64),
            sock,
            group: None,
            iface: cfg.iface,
            to: SocketAddr::from((cfg.group, cfg.port)),
            session,
            buf: vec![0; 65536],
        };
        let deadline = Instant::now() + timeout;
        loop {
            c.flush()?;
            if let Some(e) = c.session.take_error() {
                return Err(e);
            }
            if c.session.id().is_some() {
                c.join_group()?;
                return Ok(c);
            }
            let now = Instant::now();
            if now >= deadline {
                if let Some(e) = c.session.key_mismatch() {
                    return Err(e);
                }
                return Err(match c.session.last_reject() {
                    Some((code, reason)) => ClientError::Rejected {
                        code: *code,
                        reason: reason.clone(),
                    },
                    None => ClientError::Timeout("the relay's WELCOME"),
                });
            }
            c.wait(deadline.min(c.session.poll_timeout().unwrap_or(deadline)))?;
        }
    }

    /// In group mode, receive the distribution group too (and stop when the mode is gone).
    fn join_group(&mut self) -> io::Result<()> {
        match (self.session.group_addr(), &mut self.group) {
            (Some(addr), None) => {
                let s = group_socket(addr, self.iface)?;
                s.set_nonblocking(true)?;
                let fd = s.as_raw_fd();
                self.poll
                    .registry()
                    .register(&mut SourceFd(&fd), GROUP, Interest::READABLE)?;
                self.group = Some(s);
            }
            (None, Some(s)) => {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&s.as_raw_fd()));
                self.group = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// Our client id (0 when not registered).
    pub fn id(&self) -> u32 {
        self.session.id().unwrap_or(0)
    }
    /// The socket's local address (what the relay sees as our address).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
    /// The session's socket (non-blocking).
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }
    /// SHA-256 of the relay's public key, once known.
    pub fn relay_fingerprint(&self) -> Option<[u8; 32]> {
        self.session.relay_fingerprint()
    }
    /// The protocol engine.
    pub fn session(&mut self) -> &mut ClientSession {
        &mut self.session
    }

    /// Send queued datagrams.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(d) = self.session.poll_transmit() {
            match self.sock.send_to(&d, self.to) {
                Ok(_) => {}
                // Non-blocking: a full send buffer drops the datagram, as the network would.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn drain(&mut self, token: Token, now: Instant) -> io::Result<()> {
        loop {
            let sock = match token {
                SESSION => &self.sock,
                _ => match &self.group {
                    Some(g) => g,
                    None => return Ok(()),
                },
            };
            match sock.recv_from(&mut self.buf) {
                Ok((n, from)) => self.session.handle_datagram(now, from, &self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Read datagrams until `until` or until some arrive (then everything queued).
    fn wait(&mut self, until: Instant) -> io::Result<()> {
        let now = Instant::now();
        let timeout = until
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let ready: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
        let now = Instant::now();
        for t in ready {
            self.drain(t, now)?;
        }
        self.session.handle_timeout(Instant::now());
        self.join_group()
    }

    /// Send a message to everyone else.
    pub fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.session.send(Instant::now(), data)?;
        Ok(self.flush()?)
    }

    /// Ask the relay to end our session.
    pub fn disconnect(&mut self) -> Result<(), ClientError> {
        self.session.disconnect(Instant::now());
        Ok(self.flush()?)
    }

    /// The next event, or `None` after `timeout`. Keep-alives are sent while waiting.
    pub fn recv_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.session.poll_event() {
                return Ok(Some(e));
            }
            self.flush()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let until = self
                .session
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            self.wait(until.max(now + Duration::from_millis(1)))?;
        }
    }

    /// Wait for a message, skipping other events; `None` on timeout.
    pub fn recv_message(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(u32, Vec<u8>)>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_event(left)? {
                Some(Event::Message { sender, data, .. }) => return Ok(Some((sender, data))),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}
