//! The relay state machine. No sockets, no clock reads, RNG injected.
//!
//! Call order, from the host's loop:
//! 1. for each datagram read: [`RelayCore::handle_datagram`];
//! 2. then [`RelayCore::process_registrations`] (RSA work runs after relaying, so
//!    registered clients keep priority within the single thread);
//! 3. when [`RelayCore::poll_timeout`] passes: [`RelayCore::handle_timeout`] (harmless early);
//! 4. send what [`RelayCore::transmits`] yields, then [`RelayCore::advance_transmits`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use slab::Slab;

use super::ratelimit::HandshakeBudget;
use super::reassembly::{FragmentError, Limits, Reassembler};
use super::replay::ReplayWindow;
use super::stats::{Drop, Stats};
use super::timer::TimerWheel;
use crate::crypto::cookie::{CookieError, CookieJar};
use crate::crypto::fernet::{self, FernetError, FernetKey};
use crate::crypto::key::ServerKey;
use crate::crypto::rng::Rng;
use crate::wire::{
    self, Body, COOKIE_LEN, FRAGMENT_CHUNK, LeaveReason, MAX_DATAGRAM, MAX_NAME, Outer, RejectCode,
    TLV_HEADER, outer,
};

/// Everything the relay core can be told. `Default` is the documented default set.
#[derive(Debug, Clone)]
pub struct Config {
    /// A client silent this long is removed.
    pub client_timeout: Duration,
    /// Keep-alive interval announced to clients in WELCOME.
    pub keepalive_interval: Duration,
    pub max_clients: usize,
    pub reassembly: Limits,
    /// Fernet TTL for client tokens.
    pub token_ttl: Duration,
    /// How far in the future a client token's timestamp may be.
    pub max_clock_skew: Duration,
    /// RSA decryptions per second, all sources together.
    pub handshakes_per_sec: u32,
    /// RSA decryptions per second from one IP address.
    pub handshakes_per_source_per_sec: u32,
    /// Validated REGISTERs waiting for their RSA decryption.
    pub max_pending_registrations: usize,
    pub cookie_lifetime: Duration,
    pub cookie_rotation: Duration,
    /// Bytes of outgoing datagrams that may wait for the socket.
    pub max_send_queue: usize,
    /// `name -> token` admission list; `None` admits anyone who completes the handshake.
    pub admission: Option<HashMap<String, String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            client_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            max_clients: 1024,
            reassembly: Limits::default(),
            token_ttl: Duration::from_secs(120),
            max_clock_skew: Duration::from_secs(60),
            handshakes_per_sec: 200,
            handshakes_per_source_per_sec: 10,
            max_pending_registrations: 64,
            cookie_lifetime: Duration::from_secs(30),
            cookie_rotation: Duration::from_secs(60),
            max_send_queue: 4 << 20,
            admission: None,
        }
    }
}

struct Session {
    id: u32,
    /// Protocol version: 1 carries tokens as base64 text, 2 in binary.
    version: u8,
    addr: SocketAddr,
    key: FernetKey,
    name: Option<String>,
    since: Instant,
    last_seen: Instant,
    rx: ReplayWindow,
    tx_seq: u64,
    next_msg_id: u32,
    msgs_in: u64,
    bytes_in: u64,
    msgs_out: u64,
    bytes_out: u64,
}

/// What the control port shows of a client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: u32,
    pub addr: SocketAddr,
    pub name: Option<String>,
    pub since: Instant,
    pub last_seen: Instant,
    pub msgs_in: u64,
    pub bytes_in: u64,
    pub msgs_out: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    /// Check the liveness of the session in slab slot `slot` if it still has id `id`.
    Liveness {
        slot: usize,
        id: u32,
    },
    Reassembly,
    CookieRotation,
}

struct PendingReg {
    from: SocketAddr,
    /// Protocol version bound in the REGISTER's cookie.
    version: u8,
    ciphertext: Vec<u8>,
}

/// Outbox capacity kept across flushes; beyond it the buffers shrink once drained.
const OUTBOX_KEEP_BYTES: usize = 256 * 1024;
const OUTBOX_KEEP_ITEMS: usize = 2048;

/// Outgoing datagrams, encoded back to back in one reusable buffer.
struct Outbox {
    buf: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
    head: usize,
    cap: usize,
}

impl Outbox {
    fn has_room(&self, extra: usize) -> bool {
        self.buf.len() + extra <= self.cap
    }
    fn commit(&mut self, to: SocketAddr, start: usize) {
        let len = self.buf.len() - start;
        self.items.push((to, start, len));
    }
}

/// What [`RelayCore::seal_plain_to`] did with one recipient's token.
enum Sealed {
    /// Not queued: the send queue is full (counted).
    Dropped,
    /// Queued, encrypted and signed.
    Done,
    /// Queued, laid out by [`fernet::prepare_raw`] at this outbox offset; the caller
    /// encrypts and signs it.
    Pending(usize),
}

/// Rate-limited warnings for drops: at most `PER_SEC` lines a second, then a summary.
struct DropLog {
    window: Instant,
    lines: u32,
    suppressed: u64,
}

impl DropLog {
    const PER_SEC: u32 = 10;
    fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                warn!(
                    "{} more dropped datagrams not logged (see `stats`)",
                    self.suppressed
                );
            }
            self.window = now;
            self.lines = 0;
            self.suppressed = 0;
        }
        if self.lines < Self::PER_SEC {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The relay core. One owner; every method takes `&mut self` and the current time.
pub struct RelayCore {
    cfg: Config,
    key: ServerKey,
    rng: Rng,
    start: Instant,
    unix_at_start: u64,
    sessions: Slab<Session>,
    by_addr: HashMap<SocketAddr, usize>,
    next_id: u32,
    timers: TimerWheel<Timer>,
    expired: Vec<Timer>,
    reassembly: Reassembler,
    reassembly_timer_armed: bool,
    budget: HandshakeBudget,
    cookies: CookieJar,
    used_cookies: HashSet<[u8; 16]>,
    used_cookie_order: VecDeque<([u8; 16], Instant)>,
    pending: VecDeque<PendingReg>,
    out: Outbox,
    stats: Stats,
    drop_log: DropLog,
    plain: Vec<u8>,
    scratch: Vec<u8>,
    token: Vec<u8>,
    /// Plaintext being sealed for recipients (SEQ patched per recipient).
    seal_buf: Vec<u8>,
    /// A token being cut into fragments.
    frag_buf: Vec<u8>,
    shut_down: bool,
}

impl RelayCore {
    /// `unix_now` is the wall clock (seconds) at `now`; Fernet timestamps are derived from it.
    pub fn new(cfg: Config, key: ServerKey, mut rng: Rng, now: Instant, unix_now: u64) -> Self {
        let mut secret = || {
            let mut s = [0u8; 32];
            rng.fill(&mut s);
            s
        };
        let (s1, s2) = (secret(), secret());
        let cookies = CookieJar::new(
            s1,
            s2,
            cfg.cookie_rotation.as_millis() as u64,
            cfg.cookie_lifetime.as_millis() as u64,
        );
        let budget = HandshakeBudget::new(
            cfg.handshakes_per_sec,
            cfg.handshakes_per_source_per_sec,
            now,
            rng.next_u64(),
        );
        let mut timers = TimerWheel::new(now, Duration::from_millis(10), 1024);
        timers.insert(now + cfg.cookie_rotation, Timer::CookieRotation);
        RelayCore {
            reassembly: Reassembler::new(cfg.reassembly),
            out: Outbox {
                buf: Vec::new(),
                items: Vec::new(),
                head: 0,
                cap: cfg.max_send_queue,
            },
            cfg,
            key,
            rng,
            start: now,
            unix_at_start: unix_now,
            sessions: Slab::new(),
            by_addr: HashMap::new(),
            next_id: 1,
            timers,
            expired: Vec::new(),
            reassembly_timer_armed: false,
            budget,
            cookies,
            used_cookies: HashSet::new(),
            used_cookie_order: VecDeque::new(),
            pending: VecDeque::new(),
            stats: Stats::default(),
            drop_log: DropLog {
                window: now,
                lines: 0,
                suppressed: 0,
            },
            plain: Vec::with_capacity(2048),
            scratch: Vec::with_capacity(2048),
            token: Vec::with_capacity(2048),
            seal_buf: Vec::with_capacity(2048),
            frag_buf: Vec::with_capacity(2048),
            shut_down: false,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn key(&self) -> &ServerKey {
        &self.key
    }
    pub fn client_count(&self) -> usize {
        self.sessions.len()
    }
    pub fn reassembly_bytes(&self) -> usize {
        self.reassembly.bytes_in_use()
    }
    pub fn reassemblies_in_flight(&self) -> usize {
        self.reassembly.in_flight()
    }
    pub fn pending_registrations(&self) -> usize {
        self.pending.len()
    }
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }
    pub fn clients(&self) -> impl Iterator<Item = ClientInfo> + '_ {
        self.sessions.iter().map(|(_, s)| ClientInfo {
            id: s.id,
            addr: s.addr,
            name: s.name.clone(),
            since: s.since,
            last_seen: s.last_seen,
            msgs_in: s.msgs_in,
            bytes_in: s.bytes_in,
            msgs_out: s.msgs_out,
            bytes_out: s.bytes_out,
        })
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64
    }
    fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.start).as_secs()
    }

    fn dropped(&mut self, now: Instant, from: SocketAddr, d: Drop) {
        self.stats.drop(d);
        if self.drop_log.allow(now) {
            warn!("dropped datagram from {from}: {} ({})", d.name(), d.help());
        } else {
            debug!("dropped datagram from {from}: {}", d.name());
        }
    }

    // ---------------------------------------------------------------- input

    /// One datagram from the network.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        if self.shut_down {
            return;
        }
        if data.len() > MAX_DATAGRAM {
            return self.dropped(now, from, Drop::Oversized);
        }
        let msg = match Outer::parse(data) {
            Ok(m) => m,
            Err(e) => return self.dropped(now, from, Drop::from_wire(&e)),
        };
        match msg {
            Outer::Hello { min, max } => self.on_hello(now, from, min, max, data.len()),
            Outer::KeyRequest { cookie } => {
                if self.check_cookie(now, from, cookie, data.len()).is_ok() {
                    let pem = self.key.public_pem().as_bytes();
                    let start = self.out.buf.len();
                    if self.out.has_room(TLV_HEADER + pem.len()) {
                        Outer::PublicKey { pem }.write(&mut self.out.buf);
                        self.out.commit(from, start);
                    } else {
                        self.stats.drop(Drop::SendQueueFull);
                    }
                }
            }
            Outer::Register { cookie, ciphertext } => {
                self.on_register(now, from, cookie, ciphertext, data.len())
            }
            Outer::Sealed { token } => match self.by_addr.get(&from) {
                // `token` borrows the caller's buffer, not ours: no copy.
                Some(&slot) => self.on_sealed(now, slot, token),
                None => self.dropped(now, from, Drop::UnknownSender),
            },
            Outer::Fragment {
                msg_id,
                index,
                count,
                chunk,
            } => self.on_fragment(now, from, msg_id, index, count, chunk),
            Outer::Cookie { .. } | Outer::PublicKey { .. } | Outer::Reject { .. } => {
                self.dropped(now, from, Drop::UnexpectedType)
            }
        }
    }

    /// Queue a REJECT no larger than 3× the request (anti-amplification, protocol.md §8).
    fn reject(&mut self, to: SocketAddr, code: RejectCode, reason: &str, request_len: usize) {
        let budget = (request_len * 3).saturating_sub(TLV_HEADER + 2);
        let mut reason =
            &reason.as_bytes()[..reason.len().min(budget).min(wire::MAX_REJECT_REASON)];
        while std::str::from_utf8(reason).is_err() {
            reason = &reason[..reason.len() - 1];
        }
        let start = self.out.buf.len();
        if self.out.has_room(TLV_HEADER + 2 + reason.len()) {
            Outer::Reject {
                code: code as u16,
                reason,
            }
            .write(&mut self.out.buf);
            self.out.commit(to, start);
        } else {
            self.stats.drop(Drop::SendQueueFull);
        }
    }

    fn on_hello(&mut self, now: Instant, from: SocketAddr, min: u16, max: u16, len: usize) {
        let lo = min.max(wire::VERSION_MIN);
        let hi = max.min(wire::VERSION_MAX);
        if lo > hi {
            self.dropped(now, from, Drop::UnsupportedVersion);
            let reason = format!(
                "relay speaks versions {}..={}",
                wire::VERSION_MIN,
                wire::VERSION_MAX
            );
            return self.reject(from, RejectCode::UnsupportedVersion, &reason, len);
        }
        // hi <= VERSION_MAX, which fits the cookie's version byte.
        let cookie = self.cookies.mint(from, self.now_ms(now), hi as u8);
        let start = self.out.buf.len();
        if self.out.has_room(TLV_HEADER + 2 + COOKIE_LEN) {
            Outer::Cookie {
                version: hi,
                cookie: &cookie,
            }
            .write(&mut self.out.buf);
            self.out.commit(from, start);
            self.stats.cookies_sent += 1;
        } else {
            self.stats.drop(Drop::SendQueueFull);
        }
    }

    fn check_cookie(
        &mut self,
        now: Instant,
        from: SocketAddr,
        cookie: &[u8; COOKIE_LEN],
        len: usize,
    ) -> Result<([u8; 16], u8), ()> {
        match self.cookies.verify(from, cookie, self.now_ms(now)) {
            Ok(ok) => Ok(ok),
            Err(e) => {
                let d = match e {
                    CookieError::Expired => Drop::ExpiredCookie,
                    CookieError::BadMac => Drop::BadCookie,
                };
                self.dropped(now, from, d);
                // Safe to answer: the REJECT is small and goes to whoever claims the address.
                self.reject(
                    from,
                    RejectCode::BadCookie,
                    "bad or expired cookie: send HELLO",
                    len,
                );
                Err(())
            }
        }
    }

    fn on_register(
        &mut self,
        now: Instant,
        from: SocketAddr,
        cookie: &[u8; COOKIE_LEN],
        ct: &[u8],
        len: usize,
    ) {
        let Ok((mac, version)) = self.check_cookie(now, from, cookie, len) else {
            return;
        };
        if self.used_cookies.contains(&mac) {
            self.dropped(now, from, Drop::CookieReused);
            return self.reject(
                from,
                RejectCode::CookieReused,
                "cookie already used: send HELLO",
                len,
            );
        }
        if ct.len() != self.key.modulus_len() {
            self.dropped(now, from, Drop::BadRegistration);
            self.stats.handshakes_failed += 1;
            return self.reject(
                from,
                RejectCode::BadRegistration,
                "ciphertext length != modulus size",
                len,
            );
        }
        if !self.by_addr.contains_key(&from) && self.sessions.len() >= self.cfg.max_clients {
            // Full: say so before spending an RSA decryption (the cookie validated the address).
            self.stats.handshakes_failed += 1;
            self.dropped(now, from, Drop::RelayFull);
            return self.reject(from, RejectCode::RelayFull, "relay full", len);
        }
        if self.pending.len() >= self.cfg.max_pending_registrations {
            return self.dropped(now, from, Drop::HandshakeQueueFull);
        }
        if self.budget.try_spend(from.ip(), now).is_err() {
            return self.dropped(now, from, Drop::HandshakeBudget);
        }
        self.remember_cookie(now, mac);
        self.pending.push_back(PendingReg {
            from,
            version,
            ciphertext: ct.to_vec(),
        });
    }

    fn remember_cookie(&mut self, now: Instant, mac: [u8; 16]) {
        // Forget cookies that can no longer verify anyway; the set stays bounded by the
        // handshake budget × cookie lifetime.
        while let Some(&(old, at)) = self.used_cookie_order.front() {
            if now.saturating_duration_since(at)
                <= self.cfg.cookie_lifetime + Duration::from_secs(1)
            {
                break;
            }
            self.used_cookies.remove(&old);
            self.used_cookie_order.pop_front();
        }
        self.used_cookies.insert(mac);
        self.used_cookie_order.push_back((mac, now));
    }

    /// Run up to `max` queued RSA decryptions. Returns how many ran.
    pub fn process_registrations(&mut self, now: Instant, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(reg) = self.pending.pop_front() else {
                break;
            };
            n += 1;
            self.register(now, reg);
        }
        n
    }

    fn register(&mut self, now: Instant, reg: PendingReg) {
        let from = reg.from;
        let len = reg.ciphertext.len() + TLV_HEADER + COOKIE_LEN;
        let fail = |this: &mut Self, d: Drop, code: RejectCode, reason: &str| {
            this.stats.handshakes_failed += 1;
            this.dropped(now, from, d);
            this.reject(from, code, reason, len);
        };
        let Ok(plain) = self.key.oaep_decrypt(&reg.ciphertext) else {
            let reason = "RSA-OAEP decryption failed";
            return fail(
                self,
                Drop::BadRegistration,
                RejectCode::BadRegistration,
                reason,
            );
        };
        let (key_text, suffix) = plain.split_at(plain.len().min(44));
        let Ok(key) = FernetKey::from_base64(key_text) else {
            let reason = "not a 44-byte Fernet key";
            return fail(
                self,
                Drop::BadRegistration,
                RejectCode::BadRegistration,
                reason,
            );
        };
        let Ok(name) = self.admit(suffix) else {
            let reason = "admission token missing or wrong";
            return fail(self, Drop::NotAdmitted, RejectCode::NotAdmitted, reason);
        };
        if let Some(&slot) = self.by_addr.get(&from) {
            if self.sessions[slot].key.ct_eq(&key) {
                // Our WELCOME was lost: say it again, change nothing (but the version the
                // client negotiated this time).
                self.sessions[slot].version = reg.version;
                self.stats.handshakes_ok += 1;
                return self.send_welcome(now, slot);
            }
            info!(
                "client {} at {from} re-registered with a new key",
                self.sessions[slot].id
            );
            self.remove_session(now, slot, LeaveReason::Replaced, true);
        }
        if self.sessions.len() >= self.cfg.max_clients {
            self.stats.handshakes_failed += 1;
            self.dropped(now, from, Drop::RelayFull);
            return self.reject(from, RejectCode::RelayFull, "relay full", len);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let slot = self.sessions.insert(Session {
            id,
            version: reg.version,
            addr: from,
            key,
            name,
            since: now,
            last_seen: now,
            rx: ReplayWindow::new(),
            tx_seq: 0,
            // Unpredictable, so a spoofer cannot aim fragments at our next message.
            next_msg_id: self.rng.next_u64() as u32,
            msgs_in: 0,
            bytes_in: 0,
            msgs_out: 0,
            bytes_out: 0,
        });
        self.by_addr.insert(from, slot);
        self.timers
            .insert(now + self.cfg.client_timeout, Timer::Liveness { slot, id });
        self.stats.handshakes_ok += 1;
        self.stats.joins += 1;
        self.stats.peak_clients = self.stats.peak_clients.max(self.sessions.len() as u64);
        info!(
            "client {id}{} joined from {from} ({} connected)",
            self.sessions[slot]
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            self.sessions.len()
        );
        self.send_welcome(now, slot);
        let name = self.sessions[slot].name.clone();
        self.broadcast(
            now,
            Some(slot),
            &Body::Join {
                id,
                name: name.as_deref().map(str::as_bytes),
            },
        );
    }

    /// Check the optional `\n name token` suffix against the admission list.
    fn admit(&self, suffix: &[u8]) -> Result<Option<String>, ()> {
        let Some(list) = &self.cfg.admission else {
            return Ok(None);
        };
        let rest = suffix.strip_prefix(b"\n").ok_or(())?;
        let text = std::str::from_utf8(rest).map_err(|_| ())?;
        let (name, token) = text.split_once(' ').ok_or(())?;
        let want = list.get(name).ok_or(())?;
        use subtle::ConstantTimeEq;
        if name.len() <= MAX_NAME && bool::from(want.as_bytes().ct_eq(token.as_bytes())) {
            Ok(Some(name.to_string()))
        } else {
            Err(())
        }
    }

    fn send_welcome(&mut self, now: Instant, slot: usize) {
        let s = &self.sessions[slot];
        let name = s.name.clone();
        let body = Body::Welcome {
            id: s.id,
            keepalive_ms: self
                .cfg
                .keepalive_interval
                .as_millis()
                .min(u32::MAX as u128) as u32,
            timeout_ms: self.cfg.client_timeout.as_millis().min(u32::MAX as u128) as u32,
            name: name.as_deref().map(str::as_bytes),
        };
        self.send_sealed(now, slot, &body);
    }

    fn on_fragment(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg_id: u32,
        index: u16,
        count: u16,
        chunk: &[u8],
    ) {
        let Some(&slot) = self.by_addr.get(&from) else {
            return self.dropped(now, from, Drop::UnknownSender);
        };
        self.stats.fragments_in += 1;
        let owner = self.sessions[slot].id;
        match self
            .reassembly
            .insert(now, owner, msg_id, index, count, chunk)
        {
            Ok(None) => {
                if !self.reassembly_timer_armed {
                    self.reassembly_timer_armed = true;
                    self.timers
                        .insert(now + self.cfg.reassembly.timeout, Timer::Reassembly);
                }
            }
            Ok(Some(token)) => {
                self.stats.reassembled += 1;
                let mut tok = std::mem::take(&mut self.token);
                tok.clear();
                tok.extend_from_slice(token);
                self.on_sealed(now, slot, &tok);
                self.token = tok;
            }
            Err(e) => {
                let d = match e {
                    FragmentError::Duplicate => Drop::FragmentDuplicate,
                    FragmentError::OwnerLimit | FragmentError::GlobalLimit => Drop::FragmentLimit,
                    _ => Drop::FragmentInvalid,
                };
                self.dropped(now, from, d);
            }
        }
        let evicted = self.reassembly.take_evicted();
        self.stats.drop_n(Drop::ReassemblyEvicted, evicted);
    }

    fn on_sealed(&mut self, now: Instant, slot: usize, token: &[u8]) {
        let from = self.sessions[slot].addr;
        let unix = self.unix(now);
        self.plain.clear();
        let ts = match fernet::open_into(
            self.sessions[slot].version >= 2,
            &self.sessions[slot].key,
            token,
            &mut self.scratch,
            &mut self.plain,
        ) {
            Ok(ts) => ts,
            Err(_) => return self.dropped(now, from, Drop::BadToken),
        };
        if let Err(e) = fernet::check_timestamp(
            ts,
            unix,
            Some(self.cfg.token_ttl.as_secs()),
            self.cfg.max_clock_skew.as_secs(),
        ) {
            let d = if matches!(e, FernetError::FromFuture) {
                Drop::TokenFromFuture
            } else {
                Drop::TokenExpired
            };
            return self.dropped(now, from, d);
        }
        let plain = std::mem::take(&mut self.plain);
        self.on_plaintext(now, slot, &plain, token.len());
        self.plain = plain;
    }

    fn on_plaintext(&mut self, now: Instant, slot: usize, plain: &[u8], wire_len: usize) {
        let from = self.sessions[slot].addr;
        let (seq, body) = match wire::parse_inner(plain) {
            Ok(x) => x,
            Err(e) => return self.dropped(now, from, Drop::from_wire(&e)),
        };
        if !matches!(body, Body::Data(_) | Body::Keepalive | Body::Disconnect) {
            return self.dropped(now, from, Drop::UnexpectedType);
        }
        // Authenticated: only now may the window move and liveness refresh.
        let s = &mut self.sessions[slot];
        if !s.rx.mark(seq) {
            return self.dropped(now, from, Drop::Replay);
        }
        s.last_seen = now;
        match body {
            Body::Data(data) => {
                s.msgs_in += 1;
                s.bytes_in += wire_len as u64;
                self.stats.messages_in += 1;
                self.fan_out(now, slot, data);
            }
            Body::Keepalive => {
                self.stats.keepalives += 1;
                self.send_sealed(now, slot, &Body::KeepaliveAck);
            }
            Body::Disconnect => self.remove_session(now, slot, LeaveReason::Disconnect, true),
            _ => {}
        }
    }

    // ---------------------------------------------------------------- output

    /// Encrypt the plaintext in `self.seal_buf` for session `slot` and queue it (fragmented if
    /// needed). The SEQ value at `plain[4..12]` is patched with the session's next number.
    /// With `defer`, a single-datagram binary (version 2) token is only laid out
    /// ([`fernet::prepare_raw`]) and [`Sealed::Pending`] tells the caller where, so that it can
    /// encrypt and sign several together.
    fn seal_plain_to(&mut self, unix: u64, slot: usize, defer: bool) -> Sealed {
        let s = &mut self.sessions[slot];
        s.tx_seq += 1;
        self.seal_buf[4..12].copy_from_slice(&s.tx_seq.to_be_bytes());
        let binary = s.version >= 2;
        let token_len = fernet::sealed_len(binary, self.seal_buf.len());
        let n = wire::datagrams_for_token(token_len);
        let wire_bytes = if n == 1 {
            TLV_HEADER + token_len
        } else {
            token_len + n * (TLV_HEADER + wire::FRAGMENT_HEADER)
        };
        if !self.out.has_room(wire_bytes) {
            self.stats.drop(Drop::SendQueueFull);
            return Sealed::Dropped;
        }
        let iv = self.rng.iv();
        let mut sealed = Sealed::Done;
        if n == 1 {
            let start = self.out.buf.len();
            wire::put_tlv_header(&mut self.out.buf, outer::SEALED, token_len);
            if binary && defer {
                fernet::prepare_raw(&iv, unix, &self.seal_buf, &mut self.out.buf);
                sealed = Sealed::Pending(start + TLV_HEADER);
            } else {
                fernet::seal_into(binary, &s.key, &iv, unix, &self.seal_buf, &mut self.out.buf);
            }
            self.out.commit(s.addr, start);
        } else {
            self.frag_buf.clear();
            fernet::seal_into(
                binary,
                &s.key,
                &iv,
                unix,
                &self.seal_buf,
                &mut self.frag_buf,
            );
            s.next_msg_id = s.next_msg_id.wrapping_add(1);
            for (i, chunk) in self.frag_buf.chunks(FRAGMENT_CHUNK).enumerate() {
                let start = self.out.buf.len();
                wire::put_fragment(&mut self.out.buf, s.next_msg_id, i as u16, n as u16, chunk);
                self.out.commit(s.addr, start);
            }
            self.stats.fragments_out += n as u64;
        }
        s.msgs_out += 1;
        s.bytes_out += wire_bytes as u64;
        sealed
    }

    fn send_sealed(&mut self, now: Instant, slot: usize, body: &Body<'_>) {
        self.seal_buf.clear();
        wire::write_inner(&mut self.seal_buf, 0, body);
        self.seal_plain_to(self.unix(now), slot, false);
    }

    /// Send `body` to every session except `except`.
    fn broadcast(&mut self, now: Instant, except: Option<usize>, body: &Body<'_>) {
        self.seal_buf.clear();
        wire::write_inner(&mut self.seal_buf, 0, body);
        self.seal_to_all(now, except);
    }

    /// Seal `seal_buf` for every session but `except`; returns how many were queued.
    /// Iterates slab keys (dense below `capacity`) so nothing is allocated.
    ///
    /// Version-2 recipients of a single-datagram token go in batches of four: each token is
    /// laid out in the outbox first (header, plaintext, room for the tag), then four are
    /// encrypted and signed together ([`fernet::finish_raw_x4`]), the rest one by one.
    fn seal_to_all(&mut self, now: Instant, except: Option<usize>) -> u64 {
        let unix = self.unix(now);
        let raw_len = fernet::raw_token_len(self.seal_buf.len());
        let mut batch = [(0usize, 0usize); 4]; // (slot, token offset in the outbox)
        let mut held = 0;
        let mut queued = 0;
        for slot in 0..self.sessions.capacity() {
            if Some(slot) == except || !self.sessions.contains(slot) {
                continue;
            }
            match self.seal_plain_to(unix, slot, true) {
                Sealed::Dropped => {}
                Sealed::Done => queued += 1,
                Sealed::Pending(at) => {
                    queued += 1;
                    batch[held] = (slot, at);
                    held += 1;
                    if held == 4 {
                        self.finish_batch(&batch, raw_len);
                        held = 0;
                    }
                }
            }
        }
        for &(slot, at) in &batch[..held] {
            fernet::finish_raw(
                &self.sessions[slot].key,
                &mut self.out.buf[at..at + raw_len],
            );
        }
        queued
    }

    /// Encrypt and sign four pending tokens (outbox offsets ascending).
    fn finish_batch(&mut self, batch: &[(usize, usize); 4], raw_len: usize) {
        let [(s0, a0), (s1, a1), (s2, a2), (s3, a3)] = *batch;
        let buf = &mut self.out.buf[a0..];
        let (t0, rest) = buf.split_at_mut(a1 - a0);
        let (t1, rest) = rest.split_at_mut(a2 - a1);
        let (t2, t3) = rest.split_at_mut(a3 - a2);
        let k = |slot: usize| &self.sessions[slot].key;
        fernet::finish_raw_x4(
            [k(s0), k(s1), k(s2), k(s3)],
            [
                &mut t0[..raw_len],
                &mut t1[..raw_len],
                &mut t2[..raw_len],
                &mut t3[..raw_len],
            ],
        );
    }

    /// Re-encrypt a client's message for every other client, tagged with the sender's id.
    fn fan_out(&mut self, now: Instant, from_slot: usize, data: &[u8]) {
        // Disjoint field borrows: no copy of the sender's name per message.
        let sender = &self.sessions[from_slot];
        self.seal_buf.clear();
        wire::write_inner(
            &mut self.seal_buf,
            0,
            &Body::Message {
                sender: sender.id,
                name: sender.name.as_deref().map(str::as_bytes),
                data,
            },
        );
        self.stats.deliveries += self.seal_to_all(now, Some(from_slot));
    }

    /// End a session: tell it (if `tell`) and the others, free everything it held.
    fn remove_session(&mut self, now: Instant, slot: usize, reason: LeaveReason, tell: bool) {
        if !self.sessions.contains(slot) {
            return;
        }
        if tell {
            self.send_sealed(
                now,
                slot,
                &Body::Closed {
                    reason: reason as u8,
                },
            );
        }
        let s = self.sessions.remove(slot);
        self.by_addr.remove(&s.addr);
        self.reassembly.remove_owner(s.id);
        self.stats.leaves += 1;
        info!(
            "client {} ({}) left: {} ({} connected)",
            s.id,
            s.addr,
            reason.word(),
            self.sessions.len()
        );
        self.broadcast(
            now,
            None,
            &Body::Leave {
                id: s.id,
                reason: reason as u8,
            },
        );
    }

    // ---------------------------------------------------------------- operator actions

    /// Remove a client now (control port `kick`). Returns its id if it existed.
    pub fn kick(&mut self, now: Instant, target: KickTarget) -> Option<u32> {
        let slot = match target {
            KickTarget::Id(id) => self
                .sessions
                .iter()
                .find(|(_, s)| s.id == id)
                .map(|(k, _)| k)?,
            KickTarget::Addr(a) => *self.by_addr.get(&a)?,
        };
        let id = self.sessions[slot].id;
        self.stats.kicks += 1;
        self.remove_session(now, slot, LeaveReason::Kicked, true);
        Some(id)
    }

    /// Tell every client the relay is stopping and forget them all.
    pub fn shutdown(&mut self, now: Instant) {
        if self.shut_down {
            return;
        }
        self.broadcast(now, None, &Body::Shutdown);
        for (_, s) in self.sessions.iter() {
            self.reassembly.remove_owner(s.id);
        }
        self.sessions.clear();
        self.by_addr.clear();
        self.pending.clear();
        self.shut_down = true;
        info!("relay shutting down: all clients notified");
    }

    // ---------------------------------------------------------------- time

    /// The next instant `handle_timeout` has work; may be early, never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            self.timers.next_deadline()
        } else {
            Some(self.start) // registrations waiting: come back at once
        }
    }

    /// Run every timer due at `now`. Harmless when called early or repeatedly.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.timers.expire(now, &mut expired);
        for t in expired.drain(..) {
            match t {
                Timer::Liveness { slot, id } => {
                    let Some(s) = self.sessions.get(slot).filter(|s| s.id == id) else {
                        continue; // stale: the session is gone
                    };
                    let deadline = s.last_seen + self.cfg.client_timeout;
                    if deadline <= now {
                        self.stats.timeouts += 1;
                        self.remove_session(now, slot, LeaveReason::Timeout, false);
                    } else {
                        self.timers.insert(deadline, Timer::Liveness { slot, id });
                    }
                }
                Timer::Reassembly => {
                    let n = self.reassembly.expire(now);
                    self.stats.drop_n(Drop::ReassemblyTimeout, n as u64);
                    match self.reassembly.next_expiry() {
                        Some(at) => self.timers.insert(at, Timer::Reassembly),
                        None => self.reassembly_timer_armed = false,
                    }
                }
                Timer::CookieRotation => {
                    let now_ms = self.now_ms(now);
                    let rng = &mut self.rng;
                    self.cookies.maybe_rotate(now_ms, || {
                        let mut s = [0u8; 32];
                        rng.fill(&mut s);
                        s
                    });
                    self.timers
                        .insert(now + self.cfg.cookie_rotation, Timer::CookieRotation);
                }
            }
        }
        self.expired = expired;
    }

    // ---------------------------------------------------------------- transmits

    /// Datagrams waiting to be sent, oldest first.
    pub fn transmits(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.out.items[self.out.head..]
            .iter()
            .map(|&(to, start, len)| (to, &self.out.buf[start..start + len]))
    }

    pub fn has_transmits(&self) -> bool {
        self.out.head < self.out.items.len()
    }

    /// Mark `sent` datagrams as sent; `failed` more as dropped (counted).
    pub fn advance_transmits(&mut self, sent: usize, failed: usize) {
        let n = (sent + failed).min(self.out.items.len() - self.out.head);
        for &(_, _, len) in &self.out.items[self.out.head..self.out.head + sent.min(n)] {
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += len as u64;
        }
        for _ in sent.min(n)..n {
            self.stats.drop(Drop::SendFailed);
        }
        self.out.head += n;
        if self.out.head == self.out.items.len() {
            self.out.head = 0;
            self.out.items.clear();
            self.out.buf.clear();
            // After a burst (a thousand JOINs, a shutdown) give the memory back; the steady
            // state stays well under these and so never reallocates.
            if self.out.buf.capacity() > OUTBOX_KEEP_BYTES {
                self.out.buf.shrink_to(OUTBOX_KEEP_BYTES / 4);
            }
            if self.out.items.capacity() > OUTBOX_KEEP_ITEMS {
                self.out.items.shrink_to(OUTBOX_KEEP_ITEMS / 4);
            }
        }
    }
}

/// Which client `kick` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickTarget {
    Id(u32),
    Addr(SocketAddr),
}
