//! A blocking client over a std UDP socket (tests, benchmark, CLI).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

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

/// A UDP socket set up to reach the relay: bound to the interface, multicast sent on it.
pub fn client_socket(cfg: &ClientConfig) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddrV4::new(cfg.iface, 0))?;
    sock.set_multicast_ttl_v4(cfg.ttl)?;
    let s2 = socket2::SockRef::from(&sock);
    s2.set_multicast_if_v4(&cfg.iface)?;
    // A 74-fragment message is ~90 KB in one burst (protocol.md §6): best effort, capped by
    // net.core.rmem_max.
    let _ = s2.set_recv_buffer_size(1 << 20);
    Ok(sock)
}

/// A blocking client (tests, benchmark, CLI).
pub struct Client {
    sock: UdpSocket,
    to: SocketAddr,
    session: ClientSession,
    buf: Vec<u8>,
}

impl Client {
    /// Handshake with the relay; fails after `timeout`.
    pub fn connect(cfg: &ClientConfig, timeout: Duration) -> Result<Client, ClientError> {
        let sock = client_socket(cfg)?;
        let rng = Rng::from_os().map_err(|e| ClientError::Io(io::Error::other(e.to_string())))?;
        let session = ClientSession::new(rng, cfg.pin, cfg.admission.clone(), Instant::now());
        let mut c = Client {
            sock,
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
                return Ok(c);
            }
            let now = Instant::now();
            if now >= deadline {
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

    /// Our client id (0 when not registered).
    pub fn id(&self) -> u32 {
        self.session.id().unwrap_or(0)
    }
    /// The socket's local address (what the relay sees as our address).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
    /// The socket.
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
            self.sock.send_to(&d, self.to)?;
        }
        Ok(())
    }

    /// Read datagrams until `until` or until one arrives (then everything queued).
    fn wait(&mut self, until: Instant) -> io::Result<()> {
        let now = Instant::now();
        if until > now {
            self.sock
                .set_read_timeout(Some((until - now).max(Duration::from_millis(1))))?;
            match self.sock.recv_from(&mut self.buf) {
                Ok((n, _)) => self.session.handle_datagram(Instant::now(), &self.buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        self.session.handle_timeout(Instant::now());
        Ok(())
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
