//! The client protocol engine, sans-IO: the caller moves datagrams and passes the time.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rsa::PublicKey;

use super::{ClientError, Event};
use crate::crypto::fernet::FernetKey;
use crate::crypto::key::{self, hex};
use crate::crypto::rng::Rng;
use crate::proto::channel::Channel;
use crate::proto::reassembly::{Limits, Reassembler};
use crate::wire::{self, Body, COOKIE_LEN, FRAGMENT_CHUNK, MAX_BODY, Outer, TLV_HEADER, outer};

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
    /// Our key, sequence numbers and replay window; its version is the relay's choice once
    /// COOKIE arrived.
    channel: Channel,
    rng: Rng,
    pin: Option<[u8; 32]>,
    admission: Option<(String, String)>,
    relay_key: Option<(PublicKey, [u8; 32])>,
    cookie: Option<[u8; COOKIE_LEN]>,
    id: u32,
    reassembly: Reassembler,
    keepalive: Duration,
    last_sent: Instant,
    start: Instant,
    unix_at_start: u64,
    events: VecDeque<Event>,
    transmits: VecDeque<Vec<u8>>,
    error: Option<ClientError>,
    /// Highest protocol version offered in HELLO.
    max_version: u16,
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
        let key = FernetKey::generate(&mut rng);
        // Unpredictable fragment ids: a spoofer cannot aim fragments at our next message.
        let channel = Channel::new(wire::VERSION_MIN, key, &mut rng);
        ClientSession {
            state: State::Hello,
            channel,
            rng,
            pin,
            admission,
            relay_key: None,
            cookie: None,
            id: 0,
            reassembly: Reassembler::new(Limits::default()),
            keepalive: Duration::from_secs(10),
            last_sent: now,
            start: now,
            unix_at_start: unix_now(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            error: None,
            max_version: wire::VERSION_MAX,
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
        self.channel.version()
    }

    /// Our client id, once registered.
    pub fn id(&self) -> Option<u32> {
        (self.state == State::Ready).then_some(self.id)
    }
    /// The last REJECT (code, reason) received while registering.
    pub fn last_reject(&self) -> Option<&(u16, String)> {
        self.last_reject.as_ref()
    }
    /// Has the session ended (or failed)?
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
    /// SHA-256 of the relay's public key, once known.
    pub fn relay_fingerprint(&self) -> Option<[u8; 32]> {
        self.relay_key.as_ref().map(|(_, f)| *f)
    }
    /// A fatal error, once (the session is closed after it).
    pub fn take_error(&mut self) -> Option<ClientError> {
        self.error.take()
    }
    /// The next thing the relay told us.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    /// The next datagram to send to the relay's group address.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    fn fail(&mut self, e: ClientError) {
        self.state = State::Closed;
        self.error = Some(e);
    }

    /// One datagram from the relay.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8]) {
        let Ok(msg) = Outer::parse(data) else { return };
        match (self.state, msg) {
            (State::Hello, Outer::Cookie { version, cookie })
                if (wire::VERSION_MIN..=self.max_version).contains(&version) =>
            {
                self.channel.set_version(version);
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
        let mut plain = self.channel.key().to_base64().to_vec();
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
        if self
            .channel
            .open(token, &mut self.scratch, &mut self.plain)
            .is_err()
        {
            return;
        }
        let plain = std::mem::take(&mut self.plain);
        if let Ok((seq, body)) = wire::parse_inner(&plain)
            && self.channel.accept(seq)
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
        let seq = self.channel.next_seq();
        self.plain.clear();
        wire::write_inner(&mut self.plain, seq, body);
        self.token.clear();
        let iv = self.rng.iv();
        let unix = self.unix(now);
        self.channel
            .seal_into(&iv, unix, &self.plain, &mut self.token);
        if TLV_HEADER + self.token.len() <= wire::MAX_DATAGRAM {
            let mut d = Vec::with_capacity(TLV_HEADER + self.token.len());
            wire::put_tlv(&mut d, outer::SEALED, &self.token);
            self.transmits.push_back(d);
        } else {
            let msg_id = self.channel.next_msg_id();
            let count = self.token.len().div_ceil(FRAGMENT_CHUNK) as u16;
            for (i, chunk) in self.token.chunks(FRAGMENT_CHUNK).enumerate() {
                let mut d = Vec::with_capacity(wire::MAX_DATAGRAM);
                wire::put_fragment(&mut d, msg_id, i as u16, count, chunk);
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

    /// Send a keep-alive now (`handle_timeout` does when due).
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

    /// When `handle_timeout` next has work.
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
