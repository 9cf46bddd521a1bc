//! The client protocol engine, sans-IO: the caller moves datagrams and passes the time
//! (docs/clients.md has the state machine and its timers).

use std::collections::{HashSet, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rsa::PublicKey;

use super::group::{GroupView, Opened};
use super::{ClientError, Event, LostReason};
use crate::crypto::fernet::FernetKey;
use crate::crypto::key::{self, hex};
use crate::crypto::rng::Rng;
use crate::proto::channel::Channel;
use crate::proto::fragment;
use crate::proto::reassembly::{Limits, Reassembler, Shape};
use crate::wire::{
    self, Body, COOKIE_LEN, Dist, FRAGMENT_CHUNK, MAX_BODY, Outer, RejectCode, Sealed, TLV_HEADER,
    outer,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hello,
    KeyRequest,
    Register,
    Ready,
    Closed,
}

/// First handshake retransmission; doubled (with jitter) on each retry, up to [`MAX_RETRY`].
pub const RETRY: Duration = Duration::from_millis(500);
/// Longest wait between two handshake attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(8);
/// REJECTs that would end the handshake (codes 1, 4, 6, 7) are believed after this many:
/// one unauthenticated datagram must not make a client give up.
pub const FATAL_REJECTS: u32 = 3;
/// How long a NO_SESSION's claim is checked (a keep-alive probe) before it is believed.
pub const PROBE: Duration = Duration::from_secs(1);
/// The first REJECT(5) back-off; each next one doubles, up to [`MAX_RETRY`].
pub const BACKOFF: Duration = Duration::from_secs(1);
/// A restart from HELLO on a cookie REJECT (2, 3) at most this often.
const MIN_RESTART: Duration = Duration::from_millis(250);

/// Reassembly owners: one per path, so that shapes never mix.
const OWNER_TOKENS: u32 = 0;
const OWNER_PIECES: u32 = 1;
const OWNER_GROUP: u32 = 2;

/// What the client counted (for tests and diagnostics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Datagrams from an address that is not the relay's.
    pub foreign: u64,
    /// Datagrams that did not parse, or tokens that failed.
    pub bad: u64,
    /// Replays (channel or group) dropped.
    pub replays: u64,
    /// Group datagrams opened.
    pub group_in: u64,
    /// Group datagrams of an epoch we hold no key for.
    pub group_no_key: u64,
    /// Group items already delivered by the other path.
    pub duplicates: u64,
    /// KEY_PULLs sent.
    pub key_pulls: u64,
    /// Times the session was lost and a new handshake started.
    pub reconnects: u64,
    /// REJECTs ignored (not from the relay, or a back-off already running).
    pub rejects_ignored: u64,
    /// PUBLIC_KEYs that did not match the pinned fingerprint (each ended an attempt).
    pub bad_keys: u64,
}

/// The client protocol engine. No sockets; the caller moves datagrams.
pub struct ClientSession {
    state: State,
    /// Our key, sequence numbers and replay window; its version is the relay's choice once
    /// COOKIE arrived. Replaced by a fresh one when a lost session is registered again.
    channel: Channel,
    rng: Rng,
    pin: Option<[u8; 32]>,
    admission: Option<(String, String)>,
    relay_key: Option<(PublicKey, [u8; 32])>,
    cookie: Option<[u8; COOKIE_LEN]>,
    /// The address relay datagrams come from: learnt from the COOKIE this attempt acted on,
    /// fixed by WELCOME. Datagrams from anywhere else are dropped.
    relay_addr: Option<SocketAddr>,
    id: u32,
    reassembly: Reassembler,
    keepalive: Duration,
    timeout: Duration,
    group: Option<GroupView>,
    last_sent: Instant,
    /// The last authenticated channel token from the relay.
    last_heard: Instant,
    /// The last KEEPALIVE sent because nothing was heard (a client that only sends still
    /// gets an answer in its channel now and then).
    last_asked: Instant,
    /// The other members this session knows of (MEMBERS, JOIN, LEAVE): a member list
    /// repeated with a repeated WELCOME presents nobody twice.
    roster: HashSet<u32>,
    /// A NO_SESSION is being checked until then.
    probe: Option<Instant>,
    /// When the last probe started: one a second at most, whoever sends NO_SESSIONs.
    last_probe: Option<Instant>,
    /// The next handshake retransmission.
    next_retry: Instant,
    /// A REJECT(5) back-off runs until then.
    backoff_until: Option<Instant>,
    /// The next REJECT(5) back-off: 1, 2, 4, 8, 8 s ... within one registration.
    backoff: Duration,
    last_restart: Option<Instant>,
    fatal_rejects: u32,
    start: Instant,
    unix_at_start: u64,
    events: VecDeque<Event>,
    transmits: VecDeque<Vec<u8>>,
    error: Option<ClientError>,
    /// Highest protocol version offered in HELLO.
    max_version: u16,
    /// The current handshake retransmission delay.
    retry: Duration,
    /// Register again by itself when the session is lost.
    reconnect: bool,
    /// Registered at least once (a later WELCOME is a reconnection).
    registered: bool,
    /// The last REJECT seen during the handshake.
    last_reject: Option<(u16, String)>,
    /// The last PUBLIC_KEY that did not match the pin: (expected, got) fingerprints in hex.
    key_mismatch: Option<(String, String)>,
    stats: ClientStats,
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
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
        let mut s = ClientSession {
            state: State::Hello,
            channel,
            rng,
            pin,
            admission,
            relay_key: None,
            cookie: None,
            relay_addr: None,
            id: 0,
            reassembly: Reassembler::new(Limits::default()),
            keepalive: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            group: None,
            last_sent: now,
            last_heard: now,
            last_asked: now,
            probe: None,
            last_probe: None,
            next_retry: now,
            backoff_until: None,
            backoff: BACKOFF,
            last_restart: None,
            fatal_rejects: 0,
            start: now,
            unix_at_start: unix_now(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            error: None,
            max_version: wire::VERSION_MAX,
            retry: RETRY,
            reconnect: true,
            registered: false,
            last_reject: None,
            key_mismatch: None,
            stats: ClientStats::default(),
            plain: Vec::new(),
            scratch: Vec::new(),
            token: Vec::new(),
            roster: HashSet::new(),
        };
        s.send_hello(now);
        s
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.start).as_secs()
    }

    /// Start (again) from HELLO; the relay's address is learnt anew.
    fn send_hello(&mut self, now: Instant) {
        self.state = State::Hello;
        self.roster.clear();
        self.relay_addr = None;
        self.cookie = None;
        let mut d = Vec::with_capacity(64);
        Outer::Hello {
            min: wire::VERSION_MIN,
            max: self.max_version,
        }
        .write(&mut d);
        self.transmits.push_back(d);
        self.last_sent = now;
        // 0.5 s, 1 s, 2 s, ... 8 s, each ±25 % so that many clients do not retry in step
        // (integers only: the binary carries no floating point).
        let per_mille = 750 + (self.rng.next_u64() % 500) as u32;
        self.next_retry = now + self.retry * per_mille / 1000;
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    /// Offer at most protocol `version` (call right after `new`; it re-sends the HELLO).
    pub fn set_max_version(&mut self, version: u16, now: Instant) {
        self.max_version = version.clamp(wire::VERSION_MIN, wire::VERSION_MAX);
        if self.state == State::Hello {
            self.transmits.clear();
            self.retry = RETRY;
            self.send_hello(now);
        }
    }

    /// Register again by itself when the session is lost (default: on). Off, a lost
    /// session closes the client with [`Event::Lost`].
    pub fn set_reconnect(&mut self, on: bool) {
        self.reconnect = on;
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
    /// The last relay key that did not match the pinned fingerprint, as the error the
    /// handshake's deadline reports ([`ClientError::FingerprintMismatch`]).
    pub fn key_mismatch(&self) -> Option<ClientError> {
        self.key_mismatch
            .as_ref()
            .map(|(expected, got)| ClientError::FingerprintMismatch {
                expected: expected.clone(),
                got: got.clone(),
            })
    }

    /// Has the session ended (or failed)?
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
    /// SHA-256 of the relay's public key, once known.
    pub fn relay_fingerprint(&self) -> Option<[u8; 32]> {
        self.relay_key.as_ref().map(|(_, f)| *f)
    }
    /// The address the relay sends from, once known.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay_addr
    }
    /// Group mode (version 3): the distribution group to receive on (bind a socket to its
    /// port, join it on the interface, and hand its datagrams to [`handle_datagram`]).
    ///
    /// [`handle_datagram`]: ClientSession::handle_datagram
    pub fn group_addr(&self) -> Option<SocketAddrV4> {
        self.group.as_ref().map(|g| g.addr)
    }
    /// The group key epoch held (group mode).
    pub fn group_epoch(&self) -> Option<u32> {
        self.group.as_ref().and_then(GroupView::epoch)
    }
    /// What the client counted.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
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

    /// One datagram that arrived from `from` (on our socket, or on the distribution group's).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Ok(msg) = Outer::parse(data) else {
            self.stats.bad += 1;
            return;
        };
        if let Outer::NoSession = msg {
            // From any address: a relay that restarted answers from a new one. It is only a
            // hint (unauthenticated), so it costs at most one probe a second.
            return self.on_no_session(now);
        }
        if self.relay_addr.is_some_and(|a| a != from) {
            self.stats.foreign += 1;
            return;
        }
        match (self.state, msg) {
            (State::Hello, Outer::Cookie { version, cookie })
                if (wire::VERSION_MIN..=self.max_version).contains(&version)
                    && !self.backing_off(now) =>
            {
                self.relay_addr = Some(from);
                self.on_cookie(now, version, cookie);
            }
            (State::KeyRequest, Outer::PublicKey { pem }) => self.on_public_key(now, pem),
            (
                State::Hello | State::KeyRequest | State::Register,
                Outer::Reject { code, reason },
            ) => self.on_reject(now, code, reason),
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
            ) => self.on_fragment(now, (msg_id, index, count), chunk),
            (State::Ready, Outer::Group { epoch, token }) => self.on_group(now, epoch, token),
            _ => {}
        }
    }

    /// NO_SESSION: check before believing it. A sealed KEEPALIVE goes to the relay; any
    /// authenticated answer within [`PROBE`] clears the doubt, none ends the session.
    fn on_no_session(&mut self, now: Instant) {
        let recent = self.last_probe.is_some_and(|t| now < t + PROBE);
        if self.state != State::Ready || self.probe.is_some() || recent {
            return;
        }
        self.last_probe = Some(now);
        self.probe = Some(now + PROBE.min(self.timeout / 2));
        self.seal(now, &Body::Keepalive);
    }

    fn on_cookie(&mut self, now: Instant, version: u16, cookie: &[u8; COOKIE_LEN]) {
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

    fn on_public_key(&mut self, now: Instant, pem: &[u8]) {
        match key::public_key_from_pem(pem) {
            Ok((public, fp)) => {
                if let Some(pin) = self.pin
                    && pin != fp
                {
                    // Unauthenticated too: an injector on the path may have answered first.
                    // This attempt ends (the next HELLO learns the relay's address anew);
                    // the deadline reports the mismatch if nothing better came.
                    self.stats.bad_keys += 1;
                    self.key_mismatch = Some((hex(&pin), hex(&fp)));
                    self.state = State::Hello;
                    self.relay_addr = None;
                    self.cookie = None;
                    return;
                }
                self.relay_key = Some((public, fp));
                self.send_register(now);
            }
            Err(e) => self.fail(ClientError::BadPublicKey(e.to_string())),
        }
    }

    /// REJECT is unauthenticated (protocol.md §3): it may restart the handshake, never more
    /// often than the schedule allows, and ends it only after [`FATAL_REJECTS`].
    fn on_reject(&mut self, now: Instant, code: u16, reason: &[u8]) {
        self.last_reject = Some((code, text(reason)));
        match RejectCode::from_u16(code) {
            Some(RejectCode::BadCookie | RejectCode::CookieReused) => {
                let recent = self.last_restart.is_some_and(|t| now < t + MIN_RESTART);
                if recent || self.backing_off(now) {
                    self.stats.rejects_ignored += 1;
                    return;
                }
                self.last_restart = Some(now);
                self.send_hello(now);
            }
            Some(RejectCode::RelayFull) => {
                if self.backing_off(now) {
                    self.stats.rejects_ignored += 1;
                    return; // a back-off is running: a REJECT does not restart it
                }
                // Retry later, backing off: 1 s, 2 s, 4 s, 8 s, 8 s, ... (its own steps: the
                // HELLO schedule resumes after it).
                self.state = State::Hello;
                self.next_retry = now + self.backoff;
                self.backoff_until = Some(self.next_retry);
                self.backoff = (self.backoff * 2).min(MAX_RETRY);
            }
            _ => {
                self.fatal_rejects += 1;
                if self.fatal_rejects >= FATAL_REJECTS {
                    return self.fail(ClientError::Rejected {
                        code,
                        reason: text(reason),
                    });
                }
                if code == RejectCode::BadRegistration as u16 {
                    self.relay_key = None; // perhaps a new relay key: fetch it again
                }
                self.state = State::Hello; // keep trying, on the retry schedule
            }
        }
    }

    /// Is a REJECT(5) back-off running? Then no REJECT or late COOKIE starts an attempt.
    fn backing_off(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|t| now < t)
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
        zeroize::Zeroize::zeroize(&mut plain);
    }

    fn on_fragment(&mut self, now: Instant, id: (u32, u16, u16), chunk: &[u8]) {
        let shape = Shape::TOKEN;
        if let Ok(Some(t)) = self
            .reassembly
            .insert_shaped(now, OWNER_TOKENS, id, chunk, shape)
        {
            // The token borrows the reassembler: move it to a reused buffer.
            let mut token = std::mem::take(&mut self.token);
            token.clear();
            token.extend_from_slice(t);
            self.on_token(now, &token);
            self.token = token;
        }
    }

    fn on_token(&mut self, now: Instant, token: &[u8]) {
        self.plain.clear();
        if self
            .channel
            .open(token, &mut self.scratch, &mut self.plain)
            .is_err()
        {
            self.stats.bad += 1;
            return;
        }
        let plain = std::mem::take(&mut self.plain);
        match wire::parse_sealed(&plain) {
            Ok(s) if s.body.in_version(self.channel.version()) => {
                if self.channel.accept(s.seq) {
                    self.last_heard = now;
                    self.probe = None;
                    self.on_channel(now, s);
                } else {
                    self.stats.replays += 1;
                }
            }
            _ => self.stats.bad += 1,
        }
        self.plain = plain;
    }

    /// An authenticated, fresh body from our channel.
    fn on_channel(&mut self, now: Instant, s: Sealed<'_>) {
        match s.body {
            Body::Frag {
                msg_id,
                index,
                count,
                chunk,
            } => self.on_piece(now, OWNER_PIECES, s.seq, (msg_id, index, count), chunk),
            Body::GroupKey { epoch, key } => {
                if let Some(g) = &mut self.group {
                    g.install(now, epoch, key);
                    self.seal(now, &Body::KeyAck { epoch });
                }
            }
            Body::Members { entries, .. } if self.state == State::Ready => {
                for m in wire::members(entries).flatten() {
                    if !self.roster.insert(m.id) {
                        continue;
                    }
                    self.events.push_back(Event::Present {
                        id: m.id,
                        name: m.name.map(text),
                    });
                }
            }
            _ => self.on_item(now, s.gseq, s.body),
        }
    }

    /// Version 3: a piece of a larger body, from the channel or the group.
    fn on_piece(&mut self, now: Instant, owner: u32, seq: u64, id: (u32, u16, u16), chunk: &[u8]) {
        let Ok(Some(body)) = self
            .reassembly
            .insert_shaped(now, owner, id, chunk, Shape::V3)
        else {
            return;
        };
        let mut tok = std::mem::take(&mut self.token);
        tok.clear();
        tok.extend_from_slice(body);
        // A group item is numbered by its last piece's token, whichever piece completed it.
        let item = seq
            .wrapping_sub(u64::from(id.1))
            .wrapping_add(u64::from(id.2) - 1);
        match wire::parse_reassembled(seq, &tok) {
            Ok(s) if owner == OWNER_GROUP => self.on_item(now, Some(item), s.body),
            Ok(s) => self.on_item(now, s.gseq, s.body),
            Err(_) => self.stats.bad += 1,
        }
        self.token = tok;
    }

    /// A message or notice; `item` is its group number (group mode), delivered only once.
    fn on_item(&mut self, now: Instant, item: Option<u64>, body: Body<'_>) {
        if let (Some(i), Some(g)) = (item, &mut self.group)
            && !g.accept_item(i)
        {
            self.stats.duplicates += 1;
            return;
        }
        let name = |n: Option<&[u8]>| n.map(text);
        let ev = match body {
            Body::Welcome {
                id,
                keepalive_ms,
                timeout_ms,
                dist,
                ..
            } => return self.on_welcome(now, id, (keepalive_ms, timeout_ms), dist),
            _ if self.state != State::Ready => return,
            Body::Message { sender, .. } | Body::Join { id: sender, .. } if sender == self.id => {
                return; // our own, back from the group
            }
            // Our own LEAVE can only come on the group (in the channel we get CLOSED): the
            // relay thinks we are gone. A hint, as NO_SESSION (protocol.md §12.1).
            Body::Leave { id, .. } if id == self.id => return self.on_no_session(now),
            Body::Message {
                sender,
                name: n,
                data,
            } => Event::Message {
                sender,
                name: name(n),
                data: data.to_vec(),
            },
            Body::Join { id, name: n } => {
                self.roster.insert(id);
                Event::Join { id, name: name(n) }
            }
            Body::Leave { id, reason } => {
                self.roster.remove(&id);
                Event::Leave { id, reason }
            }
            Body::Closed { reason } => {
                self.state = State::Closed;
                self.group = None; // its keys are erased (protocol.md §12.1)
                Event::Closed { reason }
            }
            Body::Shutdown => {
                self.state = State::Closed;
                self.group = None;
                Event::Shutdown
            }
            _ => return,
        };
        self.events.push_back(ev);
    }

    fn on_welcome(&mut self, now: Instant, id: u32, (ka, to): (u32, u32), dist: Option<Dist>) {
        if self.state != State::Register && !(self.state == State::Ready && id == self.id) {
            return;
        }
        let first = self.state == State::Register;
        self.id = id;
        self.keepalive = Duration::from_millis(u64::from(ka.max(100)));
        self.timeout = Duration::from_millis(u64::from(to.max(200)));
        self.state = State::Ready;
        self.retry = RETRY;
        self.backoff_until = None;
        self.backoff = BACKOFF;
        self.fatal_rejects = 0;
        self.last_heard = now;
        if !first {
            return;
        }
        self.group = match dist {
            Some(Dist::Group { addr, grace_ms }) => Some(GroupView::new(
                addr,
                Duration::from_millis(u64::from(grace_ms)),
            )),
            _ => None,
        };
        self.registered = true;
        self.events.push_back(Event::Ready {
            id,
            fingerprint: self.relay_fingerprint().unwrap_or_default(),
        });
    }

    /// A GROUP datagram (from the relay's address, on the distribution group).
    fn on_group(&mut self, now: Instant, epoch: u32, token: &[u8]) {
        let Some(g) = &mut self.group else {
            return;
        };
        let mut plain = std::mem::take(&mut self.plain);
        match g.open(now, epoch, token, &mut plain) {
            Opened::Plain => {
                self.stats.group_in += 1;
                match wire::parse_sealed(&plain) {
                    Ok(s) if s.gseq.is_none() && g.accept_token(s.seq) => match s.body {
                        Body::Frag {
                            msg_id,
                            index,
                            count,
                            chunk,
                        } => self.on_piece(now, OWNER_GROUP, s.seq, (msg_id, index, count), chunk),
                        body => self.on_item(now, Some(s.seq), body),
                    },
                    Ok(_) => self.stats.replays += 1,
                    Err(_) => self.stats.bad += 1,
                }
            }
            Opened::NoKey(pull) => {
                self.stats.group_no_key += 1;
                if let Some(epoch) = pull {
                    self.stats.key_pulls += 1;
                    self.seal(now, &Body::KeyPull { epoch });
                }
            }
            Opened::Bad => self.stats.bad += 1,
        }
        self.plain = plain;
    }

    /// Seal `body` for the relay: one datagram, FRAGMENTs (versions 1 and 2) or, in version
    /// 3, FRAG pieces each in a token of its own.
    fn seal(&mut self, now: Instant, body: &Body<'_>) {
        let seq = self.channel.next_seq();
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        wire::write_inner(&mut plain, seq, body);
        if self.channel.version() >= 3 && !fragment::fits(plain.len(), fragment::SEALED_OVERHEAD) {
            let msg_id = self.channel.next_msg_id(&mut self.rng);
            let pieces = plain[fragment::SEQ_TLV..].to_vec();
            let n = fragment::pieces(pieces.len()) as u16;
            for (i, chunk) in fragment::chunks(&pieces).enumerate() {
                let frag = Body::Frag {
                    msg_id,
                    index: i as u16,
                    count: n,
                    chunk,
                };
                plain.clear();
                wire::write_inner(&mut plain, self.channel.next_seq(), &frag);
                self.push_token(now, &plain);
            }
        } else {
            self.push_token(now, &plain);
        }
        self.plain = plain;
        self.last_sent = now;
    }

    fn push_token(&mut self, now: Instant, plain: &[u8]) {
        self.token.clear();
        let iv = self.rng.iv();
        let unix = self.unix(now);
        self.channel.seal_into(&iv, unix, plain, &mut self.token);
        if TLV_HEADER + self.token.len() <= wire::MAX_DATAGRAM {
            let mut d = Vec::with_capacity(TLV_HEADER + self.token.len());
            wire::put_tlv(&mut d, outer::SEALED, &self.token);
            self.transmits.push_back(d);
        } else {
            let msg_id = self.channel.next_msg_id(&mut self.rng);
            let count = self.token.len().div_ceil(FRAGMENT_CHUNK) as u16;
            for (i, chunk) in self.token.chunks(FRAGMENT_CHUNK).enumerate() {
                let mut d = Vec::with_capacity(wire::MAX_DATAGRAM);
                wire::put_fragment(&mut d, msg_id, i as u16, count, chunk);
                self.transmits.push_back(d);
            }
        }
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

    /// The session is gone (the relay said so and a probe went unanswered, or it fell
    /// silent): tell the host, and register again with a fresh key unless told not to.
    fn lost(&mut self, now: Instant, reason: LostReason) {
        self.events.push_back(Event::Lost { reason });
        self.probe = None;
        self.group = None;
        self.stats.reconnects += 1;
        if !self.reconnect {
            self.state = State::Closed;
            return;
        }
        // A fresh key: a new session (the relay ends the old one, if it still has it, as
        // replaced). Reusing the key would mean reusing the replay window too.
        let key = FernetKey::generate(&mut self.rng);
        self.channel = Channel::new(wire::VERSION_MIN, key, &mut self.rng);
        self.retry = RETRY;
        self.backoff = BACKOFF;
        self.backoff_until = None;
        self.send_hello(now);
    }

    /// A KEEPALIVE is due when nothing was sent for a keep-alive interval, or when nothing
    /// was heard in our channel (and none was asked for) for one: a client that only sends,
    /// or only reads the distribution group, still hears from the relay (protocol.md §7.1).
    fn keepalive_due(&self) -> Instant {
        let quiet = self.last_heard.max(self.last_asked);
        self.last_sent.min(quiet) + self.keepalive
    }

    /// When `handle_timeout` next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Ready => {
                let mut t = self.keepalive_due().min(self.last_heard + self.timeout);
                if let Some(p) = self.probe {
                    t = t.min(p);
                }
                if let Some(e) = self.group.as_ref().and_then(GroupView::next_expiry) {
                    t = t.min(e);
                }
                Some(t)
            }
            _ => Some(self.next_retry),
        }
    }

    /// Retransmit the handshake, send a keep-alive, or notice a lost session, when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.reassembly.expire(now);
        if let Some(g) = &mut self.group {
            g.expire(now);
        }
        match self.state {
            State::Ready if self.probe.is_some_and(|p| now >= p) => {
                self.lost(now, LostReason::NoSession)
            }
            State::Ready if now >= self.last_heard + self.timeout => {
                self.lost(now, LostReason::Silence)
            }
            State::Ready if now >= self.keepalive_due() => {
                self.last_asked = now;
                self.send_keepalive(now)
            }
            State::Hello | State::KeyRequest | State::Register if now >= self.next_retry => {
                self.send_hello(now)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
