//! The client library: a sans-IO [`ClientSession`] (handshake, sealing, reassembly, replay
//! window, keep-alives) and a blocking [`Client`] over a std UDP socket that tests, the
//! benchmark and `mcrelay client` use.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rsa::PublicKey;

use crate::core::reassembly::{Limits, Reassembler};
use crate::core::replay::ReplayWindow;
use crate::crypto::fernet::{self, FernetKey};
use crate::crypto::key::{self, hex};
use crate::crypto::rng::Rng;
use crate::wire::{
    self, Body, COOKIE_LEN, FRAGMENT_CHUNK, LeaveReason, MAX_BODY, Outer, TLV_HEADER, outer,
};

/// Something the relay told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Registered: our id and the relay key's fingerprint.
    Ready {
        id: u32,
        fingerprint: [u8; 32],
    },
    Message {
        sender: u32,
        name: Option<String>,
        data: Vec<u8>,
    },
    Join {
        id: u32,
        name: Option<String>,
    },
    Leave {
        id: u32,
        reason: u8,
    },
    /// Our session ended (kicked, replaced, or our disconnect acknowledged).
    Closed {
        reason: u8,
    },
    Shutdown,
}

/// Why the client gave up.
#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    /// The relay's key does not match the pinned fingerprint.
    FingerprintMismatch {
        expected: String,
        got: String,
    },
    BadPublicKey(String),
    Rejected {
        code: u16,
        reason: String,
    },
    Timeout(&'static str),
    TooLarge(usize),
    NotRegistered,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::FingerprintMismatch { expected, got } => write!(
                f,
                "relay key fingerprint {got} does not match the expected {expected}: refusing to talk to it"
            ),
            ClientError::BadPublicKey(e) => write!(f, "relay sent an unusable public key: {e}"),
            ClientError::Rejected { code, reason } => {
                write!(f, "relay rejected us (code {code}): {reason}")
            }
            ClientError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            ClientError::TooLarge(n) => write!(f, "message of {n} bytes is larger than {MAX_BODY}"),
            ClientError::NotRegistered => write!(f, "not registered"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hello,
    KeyRequest,
    Register,
    Ready,
    Closed,
}

/// Handshake retransmission interval.
const RETRY: Duration = Duration::from_millis(500);

/// The client protocol engine. No sockets; the caller moves datagrams.
pub struct ClientSession {
    state: State,
    key: FernetKey,
    rng: Rng,
    pin: Option<[u8; 32]>,
    admission: Option<(String, String)>,
    relay_key: Option<(PublicKey, [u8; 32])>,
    cookie: Option<[u8; COOKIE_LEN]>,
    id: u32,
    tx_seq: u64,
    rx: ReplayWindow,
    next_msg_id: u32,
    reassembly: Reassembler,
    keepalive: Duration,
    last_sent: Instant,
    start: Instant,
    unix_at_start: u64,
    events: VecDeque<Event>,
    transmits: VecDeque<Vec<u8>>,
    error: Option<ClientError>,
    /// Highest protocol version offered in HELLO, and the one the relay chose.
    max_version: u16,
    version: u16,
    /// Handshake retransmission delay: RETRY, doubled (up to 8 s) while the relay is full.
    retry: Duration,
    /// The last REJECT seen during the handshake.
    last_reject: Option<(u16, String)>,
    plain: Vec<u8>,
    scratch: Vec<u8>,
    token: Vec<u8>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ClientSession {
    /// `pin`: refuse any relay key with another fingerprint. `admission`: `(name, token)`.
    pub fn new(
        mut rng: Rng,
        pin: Option<[u8; 32]>,
        admission: Option<(String, String)>,
        now: Instant,
    ) -> Self {
        let mut raw = [0u8; 32];
        rng.fill(&mut raw);
        // Unpredictable fragment ids: a spoofer cannot aim fragments at our next message.
        let next_msg_id = rng.next_u64() as u32;
        ClientSession {
            state: State::Hello,
            key: FernetKey::from_bytes(&raw),
            rng,
            pin,
            admission,
            relay_key: None,
            cookie: None,
            id: 0,
            tx_seq: 0,
            rx: ReplayWindow::new(),
            next_msg_id,
            reassembly: Reassembler::new(Limits::default()),
            keepalive: Duration::from_secs(10),
            last_sent: now,
            start: now,
            unix_at_start: unix_now(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            error: None,
            max_version: wire::VERSION_MAX,
            version: wire::VERSION_MIN,
            retry: RETRY,
            last_reject: None,
            plain: Vec::new(),
            scratch: Vec::new(),
            token: Vec::new(),
        }
        .with_hello(now)
    }

    fn with_hello(mut self, now: Instant) -> Self {
        self.send_hello(now);
        self
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.start).as_secs()
    }

    fn send_hello(&mut self, now: Instant) {
        self.state = State::Hello;
        let mut d = Vec::with_capacity(64);
        Outer::Hello {
            min: wire::VERSION_MIN,
            max: self.max_version,
        }
        .write(&mut d);
        self.transmits.push_back(d);
        self.last_sent = now;
    }

    /// Offer at most protocol `version` (call right after `new`; it re-sends the HELLO).
    pub fn set_max_version(&mut self, version: u16, now: Instant) {
        self.max_version = version.clamp(wire::VERSION_MIN, wire::VERSION_MAX);
        if self.state == State::Hello {
            self.transmits.clear();
            self.send_hello(now);
        }
    }

    /// The protocol version in use (valid once the relay answered HELLO).
    pub fn version(&self) -> u16 {
        self.version
    }

    pub fn id(&self) -> Option<u32> {
        (self.state == State::Ready).then_some(self.id)
    }
    /// The last REJECT (code, reason) received while registering.
    pub fn last_reject(&self) -> Option<&(u16, String)> {
        self.last_reject.as_ref()
    }
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
    pub fn relay_fingerprint(&self) -> Option<[u8; 32]> {
        self.relay_key.as_ref().map(|(_, f)| *f)
    }
    /// A fatal error, once (the session is closed after it).
    pub fn take_error(&mut self) -> Option<ClientError> {
        self.error.take()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    fn fail(&mut self, e: ClientError) {
        self.state = State::Closed;
        self.error = Some(e);
    }

    pub fn handle_datagram(&mut self, now: Instant, data: &[u8]) {
        let Ok(msg) = Outer::parse(data) else { return };
        match (self.state, msg) {
            (State::Hello, Outer::Cookie { version, cookie })
                if (wire::VERSION_MIN..=self.max_version).contains(&version) =>
            {
                self.version = version;
                self.cookie = Some(*cookie);
                if self.relay_key.is_some() {
                    self.send_register(now);
                } else {
                    self.state = State::KeyRequest;
                    let mut d = Vec::new();
                    Outer::KeyRequest { cookie }.write(&mut d);
                    self.transmits.push_back(d);
                    self.last_sent = now;
                }
            }
            (State::KeyRequest, Outer::PublicKey { pem }) => match key::public_key_from_pem(pem) {
                Ok((public, fp)) => {
                    if let Some(pin) = self.pin
                        && pin != fp
                    {
                        return self.fail(ClientError::FingerprintMismatch {
                            expected: hex(&pin),
                            got: hex(&fp),
                        });
                    }
                    self.relay_key = Some((public, fp));
                    self.send_register(now);
                }
                Err(e) => self.fail(ClientError::BadPublicKey(e.to_string())),
            },
            (
                State::Hello | State::KeyRequest | State::Register,
                Outer::Reject { code, reason },
            ) => {
                self.last_reject = Some((code, String::from_utf8_lossy(reason).into_owned()));
                match code {
                    2 | 3 => self.send_hello(now), // cookie trouble: start over
                    // Full: retry later, backing off (1 s, 2 s, 4 s, 8 s, 8 s, ...).
                    5 => {
                        self.retry =
                            (self.retry * 2).clamp(Duration::from_secs(1), Duration::from_secs(8));
                        self.state = State::Hello;
                        self.last_sent = now;
                    }
                    _ => self.fail(ClientError::Rejected {
                        code,
                        reason: String::from_utf8_lossy(reason).into_owned(),
                    }),
                }
            }
            // `token` borrows the caller's datagram, not us: no copy.
            (State::Register | State::Ready, Outer::Sealed { token }) => self.on_token(now, token),
            (
                State::Register | State::Ready,
                Outer::Fragment {
                    msg_id,
                    index,
                    count,
                    chunk,
                },
            ) => {
                if let Ok(Some(t)) = self.reassembly.insert(now, 0, msg_id, index, count, chunk) {
                    // The token borrows the reassembler: move it to a reused buffer.
                    let mut token = std::mem::take(&mut self.token);
                    token.clear();
                    token.extend_from_slice(t);
                    self.on_token(now, &token);
                    self.token = token;
                }
            }
            _ => {}
        }
    }

    fn send_register(&mut self, now: Instant) {
        let (Some(cookie), Some((public, _))) = (self.cookie, &self.relay_key) else {
            return;
        };
        let mut plain = self.key.to_base64().to_vec();
        if let Some((name, token)) = &self.admission {
            plain.push(b'\n');
            plain.extend_from_slice(name.as_bytes());
            plain.push(b' ');
            plain.extend_from_slice(token.as_bytes());
        }
        match key::oaep_encrypt(public, &plain) {
            Ok(ct) => {
                let mut d = Vec::new();
                Outer::Register {
                    cookie: &cookie,
                    ciphertext: &ct,
                }
                .write(&mut d);
                self.transmits.push_back(d);
                self.state = State::Register;
                self.last_sent = now;
            }
            Err(e) => self.fail(ClientError::BadPublicKey(e.to_string())),
        }
    }

    fn on_token(&mut self, _now: Instant, token: &[u8]) {
        self.plain.clear();
        let binary = self.version >= 2;
        if fernet::open_into(binary, &self.key, token, &mut self.scratch, &mut self.plain).is_err()
        {
            return;
        }
        let plain = std::mem::take(&mut self.plain);
        if let Ok((seq, body)) = wire::parse_inner(&plain)
            && self.rx.mark(seq)
        {
            self.on_body(body);
        }
        self.plain = plain;
    }

    fn on_body(&mut self, body: Body<'_>) {
        let name = |n: Option<&[u8]>| n.map(|n| String::from_utf8_lossy(n).into_owned());
        let ev = match body {
            Body::Welcome {
                id, keepalive_ms, ..
            } => {
                if self.state != State::Register && !(self.state == State::Ready && id == self.id) {
                    return;
                }
                let first = self.state == State::Register;
                self.id = id;
                self.keepalive = Duration::from_millis(u64::from(keepalive_ms.max(100)));
                self.state = State::Ready;
                if !first {
                    return;
                }
                Event::Ready {
                    id,
                    fingerprint: self.relay_fingerprint().unwrap_or_default(),
                }
            }
            _ if self.state != State::Ready => return,
            Body::Message {
                sender,
                name: n,
                data,
            } => Event::Message {
                sender,
                name: name(n),
                data: data.to_vec(),
            },
            Body::Join { id, name: n } => Event::Join { id, name: name(n) },
            Body::Leave { id, reason } => Event::Leave { id, reason },
            Body::Closed { reason } => {
                self.state = State::Closed;
                Event::Closed { reason }
            }
            Body::Shutdown => {
                self.state = State::Closed;
                Event::Shutdown
            }
            _ => return,
        };
        self.events.push_back(ev);
    }

    fn seal(&mut self, now: Instant, body: &Body<'_>) {
        self.tx_seq += 1;
        self.plain.clear();
        wire::write_inner(&mut self.plain, self.tx_seq, body);
        self.token.clear();
        let iv = self.rng.iv();
        let unix = self.unix(now);
        fernet::seal_into(
            self.version >= 2,
            &self.key,
            &iv,
            unix,
            &self.plain,
            &mut self.token,
        );
        if TLV_HEADER + self.token.len() <= wire::MAX_DATAGRAM {
            let mut d = Vec::with_capacity(TLV_HEADER + self.token.len());
            wire::put_tlv(&mut d, outer::SEALED, &self.token);
            self.transmits.push_back(d);
        } else {
            self.next_msg_id = self.next_msg_id.wrapping_add(1);
            let count = self.token.len().div_ceil(FRAGMENT_CHUNK) as u16;
            for (i, chunk) in self.token.chunks(FRAGMENT_CHUNK).enumerate() {
                let mut d = Vec::with_capacity(wire::MAX_DATAGRAM);
                wire::put_fragment(&mut d, self.next_msg_id, i as u16, count, chunk);
                self.transmits.push_back(d);
            }
        }
        self.last_sent = now;
    }

    /// Queue a message for everyone else.
    pub fn send(&mut self, now: Instant, data: &[u8]) -> Result<(), ClientError> {
        if self.state != State::Ready {
            return Err(ClientError::NotRegistered);
        }
        if data.len() > MAX_BODY {
            return Err(ClientError::TooLarge(data.len()));
        }
        self.seal(now, &Body::Data(data));
        Ok(())
    }

    pub fn send_keepalive(&mut self, now: Instant) {
        if self.state == State::Ready {
            self.seal(now, &Body::Keepalive);
        }
    }

    /// Ask the relay to end our session (it answers CLOSED).
    pub fn disconnect(&mut self, now: Instant) {
        if self.state == State::Ready {
            self.seal(now, &Body::Disconnect);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Ready => Some(self.last_sent + self.keepalive),
            _ => Some(self.last_sent + self.retry),
        }
    }

    /// Retransmit the handshake or send a keep-alive when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.reassembly.expire(now);
        match self.state {
            State::Ready if now >= self.last_sent + self.keepalive => self.send_keepalive(now),
            State::Hello | State::KeyRequest | State::Register
                if now >= self.last_sent + self.retry =>
            {
                self.send_hello(now)
            }
            _ => {}
        }
    }
}

/// Where the relay is and how to reach it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub group: Ipv4Addr,
    pub port: u16,
    pub iface: Ipv4Addr,
    pub ttl: u32,
    pub pin: Option<[u8; 32]>,
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

    pub fn id(&self) -> u32 {
        self.session.id().unwrap_or(0)
    }
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }
    pub fn relay_fingerprint(&self) -> Option<[u8; 32]> {
        self.session.relay_fingerprint()
    }
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

    pub fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.session.send(Instant::now(), data)?;
        Ok(self.flush()?)
    }

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

/// The `mcrelay client` output line for an event (protocol-independent, script-friendly).
pub fn format_event(ev: &Event) -> String {
    let who = |id: u32, name: &Option<String>| match name {
        Some(n) => format!("{id}@{n}"),
        None => id.to_string(),
    };
    let reason = |r: u8| {
        LeaveReason::from_u8(r)
            .map(|r| r.word().to_string())
            .unwrap_or_else(|| r.to_string())
    };
    match ev {
        Event::Ready { id, fingerprint } => format!("ready {id} {}", hex(fingerprint)),
        Event::Message { sender, name, data } => {
            format!("msg {} {}", who(*sender, name), escape(data))
        }
        Event::Join { id, name } => format!("join {}", who(*id, name)),
        Event::Leave { id, reason: r } => format!("leave {id} {}", reason(*r)),
        Event::Closed { reason: r } => format!("closed {}", reason(*r)),
        Event::Shutdown => "shutdown".to_string(),
    }
}

/// Escape a message body for one output line: `\\`, `\n`, `\r`, `\t`, and `\xHH` for other
/// control bytes and invalid UTF-8.
pub fn escape(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for chunk in data.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_for_one_line() {
        assert_eq!(escape(b"a b"), "a b");
        assert_eq!(escape(b"a\nb\\c\td\r"), "a\\nb\\\\c\\td\\r");
        assert_eq!(escape(&[0x01, 0xff, b'x']), "\\x01\\xffx");
        assert_eq!(escape("é".as_bytes()), "é");
    }
}
