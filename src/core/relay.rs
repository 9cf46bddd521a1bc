//! The relay state machine: no sockets, no clock reads, RNG injected.
//!
//! [`RelayCore`] routes each input to the part that owns it — [`Handshake`] before a session
//! exists, [`Sessions`] and the session's [`Channel`](crate::proto::channel::Channel) after,
//! [`Fragments`] for fragments, a [`Distribution`] strategy for everything that goes to
//! the other members — and keeps the timers. Its own code is the order of the checks and the
//! state changes, nothing more.
//!
//! Call order, from the host's loop (docs/architecture.md):
//! 1. for each datagram read: [`RelayCore::handle_datagram`];
//! 2. then [`RelayCore::process_registrations`] (RSA work runs after relaying, so
//!    registered clients keep priority within the single thread);
//! 3. when [`RelayCore::poll_timeout`] passes: [`RelayCore::handle_timeout`] (harmless early);
//! 4. send what [`RelayCore::transmits`] yields, then [`RelayCore::advance_transmits`];
//! 5. whenever convenient: [`RelayCore::poll_event`] until `None`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;

use super::Input;
use super::distribution::{Cx, Strategy, Unicast};
use super::events::{Events, RelayEvent};
use super::fragments::{Fragments, Piece};
use super::group::Group;
use super::handshake::{Handshake, PendingReg, RegisterContext, Registration, reject};
use super::histogram::Histograms; // monitoring hook
use super::outbox::Outbox;
use super::session::{Liveness, Sessions, TokenRules};
use super::stats::{DropReason, Telemetry};
use super::timer::TimerWheel;
use crate::config::{Config, ConfigError, Distribution};
use crate::crypto::key::ServerKey;
use crate::crypto::rng::Rng;
use crate::proto::channel::Channel;
use crate::proto::reassembly::Shape;
use crate::wire::{self, Body, LeaveReason, MAX_DATAGRAM, Outer, RejectCode, Sealed};

// Federation hooks (remote members, the local record): a child module, so that the hooks
// stay out of this file.
#[path = "remote.rs"]
mod remote;
// What the host may read of the core (settings, counters, gauges, clients), beside it.
#[path = "view.rs"]
mod view;
pub use remote::{
    FederationStatus, LOCAL_RECORD_BYTES, LocalRecord, MAX_REMOTE_MEMBERS, MAX_REMOTE_PER_RELAY,
    RemoteClient, RosterDigest, local_records, member_digest, relay_of,
};

/// Which client `kick` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickTarget {
    /// By client id.
    Id(u32),
    /// By source address.
    Addr(SocketAddr),
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

/// Entry bytes per MEMBERS message: with SEQ and the TLV header the token fits a datagram.
const MEMBERS_PART_BYTES: usize = 1000;

/// The relay core. One owner; every method takes `&mut self` and the current time.
#[derive(Debug)]
pub struct RelayCore {
    cfg: Config,
    key: ServerKey,
    rng: Rng,
    start: Instant,
    unix_at_start: u64,
    sessions: Sessions,
    handshake: Handshake,
    fragments: Fragments,
    timers: TimerWheel<Timer>,
    expired: Vec<Timer>,
    out: Outbox,
    tel: Telemetry,
    dist: Box<dyn Strategy>,
    events: Events,
    /// An opened plaintext.
    plain: Vec<u8>,
    scratch: Vec<u8>,
    /// Plaintext being sealed for recipients (SEQ patched per recipient).
    seal_buf: Vec<u8>,
    shut_down: bool,
    /// Handshake latency and message sizes (monitoring hook).
    hist: Histograms,
    /// Federation: remote members, digests, the local record (`None` without a relay id).
    remote: Option<remote::Remote>,
}

impl RelayCore {
    /// A relay core with settings `cfg` (validated here), RSA key `key` and CSPRNG `rng`.
    /// `unix_now` is the wall clock (seconds) at `now`; Fernet timestamps derive from it.
    pub fn new(
        cfg: Config,
        key: ServerKey,
        mut rng: Rng,
        now: Instant,
        unix_now: u64,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let handshake = Handshake::new(&cfg, &mut rng, now);
        let mut timers = TimerWheel::new(now, Duration::from_millis(10), 1024);
        timers.insert(now + handshake.rotation(), Timer::CookieRotation);
        let dist: Box<dyn Strategy> = match &cfg.distribution {
            Distribution::Unicast => Box::new(Unicast::default()),
            Distribution::Group(g) => Box::new(Group::new(g.clone(), &mut rng, now)),
        };
        let relay_id = cfg.relay_id;
        Ok(RelayCore {
            dist,
            fragments: Fragments::new(cfg.reassembly),
            out: Outbox::new(cfg.max_send_queue),
            handshake,
            cfg,
            key,
            rng,
            start: now,
            unix_at_start: unix_now,
            sessions: Sessions::with_relay_id(relay_id),
            remote: relay_id.map(remote::Remote::new),
            timers,
            expired: Vec::new(),
            tel: Telemetry::new(now),
            events: Events::default(),
            plain: Vec::with_capacity(2048),
            scratch: Vec::with_capacity(2048),
            seal_buf: Vec::with_capacity(2048),
            shut_down: false,
            hist: Histograms::default(),
        })
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.start).as_secs()
    }

    /// The distribution strategy and what it may touch, borrowed apart.
    fn split(&mut self, now: Instant) -> (&mut dyn Strategy, Cx<'_>) {
        let unix = self.unix(now);
        let cx = Cx {
            now,
            sessions: &mut self.sessions,
            out: &mut self.out,
            rng: &mut self.rng,
            tel: &mut self.tel,
            unix,
            plain: &mut self.seal_buf,
        };
        (self.dist.as_mut(), cx)
    }

    // ---------------------------------------------------------------- input

    /// One datagram from the network.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.tel.stats.datagrams_in += 1;
        self.tel.stats.bytes_in += data.len() as u64;
        if self.shut_down {
            return;
        }
        if data.len() > MAX_DATAGRAM {
            return self.tel.dropped(now, from, DropReason::Oversized);
        }
        let msg = match Outer::parse(data) {
            Ok(m) => m,
            Err(e) => return self.tel.dropped(now, from, DropReason::from_wire(&e)),
        };
        let inp = Input {
            now,
            from,
            len: data.len(),
        };
        let (out, tel) = (&mut self.out, &mut self.tel);
        match msg {
            Outer::Hello { min, max } => self.handshake.on_hello(inp, (min, max), out, tel),
            Outer::KeyRequest { cookie } => {
                if self.handshake.check_cookie(inp, cookie, out, tel).is_some() {
                    let pem = self.key.public_pem().as_bytes();
                    out.push(from, &Outer::PublicKey { pem }, &mut tel.stats);
                }
            }
            Outer::Register { cookie, ciphertext } => {
                let cx = RegisterContext {
                    has_session: self.sessions.slot_of(&from).is_some(),
                    full: self.sessions.len() >= self.cfg.max_clients,
                    source_full: self.sessions.count_from(&from) >= self.cfg.max_clients_per_source,
                    modulus_len: self.key.modulus_len(),
                };
                self.handshake
                    .on_register(inp, (cookie, ciphertext), cx, out, tel);
            }
            Outer::Sealed { token } => match self.sessions.slot_of(&from) {
                // `token` borrows the caller's buffer, not ours: no copy.
                Some(slot) => self.on_sealed(now, slot, token),
                None => self.no_session(now, from),
            },
            Outer::Fragment {
                msg_id,
                index,
                count,
                chunk,
            } => self.on_fragment(now, from, (msg_id, index, count), chunk),
            Outer::Cookie { .. }
            | Outer::PublicKey { .. }
            | Outer::Reject { .. }
            | Outer::Group { .. }
            | Outer::NoSession => tel.dropped(now, from, DropReason::UnexpectedType),
        }
    }

    fn no_session(&mut self, now: Instant, from: SocketAddr) {
        let inp = Input { now, from, len: 0 };
        self.handshake.no_session(inp, &mut self.out, &mut self.tel);
    }

    fn on_fragment(
        &mut self,
        now: Instant,
        from: SocketAddr,
        (msg_id, index, count): (u32, u16, u16),
        chunk: &[u8],
    ) {
        let Some(slot) = self.sessions.slot_of(&from) else {
            return self.no_session(now, from);
        };
        let Some((owner, version)) = self.sessions.get(slot).map(|s| (s.id, s.channel.version()))
        else {
            return;
        };
        if version >= 3 {
            // Version 3 fragments travel sealed (FRAG): an unauthenticated FRAGMENT claiming a
            // version-3 session is someone else's, so it never reaches the reassembler.
            return self.tel.dropped(now, from, DropReason::UnexpectedType);
        }
        let key = (msg_id, index, count);
        let stats = &mut self.tel.stats;
        match self
            .fragments
            .insert(now, owner, key, chunk, Shape::TOKEN, stats)
        {
            Piece::Waiting { arm } => self.arm_reassembly_timer(arm),
            Piece::Complete(token) => {
                self.on_sealed(now, slot, &token);
                self.fragments.recycle(token);
            }
            Piece::Dropped(d) => self.tel.dropped(now, from, d),
        }
    }

    fn on_sealed(&mut self, now: Instant, slot: usize, token: &[u8]) {
        let rules = TokenRules {
            unix: self.unix(now),
            ttl: Some(self.cfg.token_ttl.as_secs()),
            skew: self.cfg.max_clock_skew.as_secs(),
        };
        let Some(s) = self.sessions.get_mut(slot) else {
            return;
        };
        let mut plain = std::mem::take(&mut self.plain);
        match s.accept(now, token, rules, &mut self.scratch, &mut plain) {
            Ok(sealed) => self.on_body(now, slot, sealed, token.len()),
            Err(d) => {
                let from = s.addr;
                self.tel.dropped(now, from, d);
            }
        }
        self.plain = plain;
    }

    /// An authenticated, fresh body from the session in `slot`.
    fn on_body(&mut self, now: Instant, slot: usize, sealed: Sealed<'_>, wire_len: usize) {
        match sealed.body {
            Body::Data(data) => {
                if let Some(s) = self.sessions.get_mut(slot) {
                    s.msgs_in += 1;
                    s.bytes_in += wire_len as u64;
                }
                self.tel.stats.messages_in += 1;
                self.hist.relayed(data.len()); // monitoring hook
                let (dist, mut cx) = self.split(now);
                let n = dist.relay(&mut cx, slot, data);
                self.tel.stats.deliveries += n;
                self.note_message(slot, data); // federation
            }
            Body::Keepalive => {
                self.tel.stats.keepalives += 1;
                self.send_to(now, slot, &Body::KeepaliveAck);
            }
            Body::Disconnect => self.remove_session(now, slot, LeaveReason::Disconnect, true),
            Body::Frag {
                msg_id,
                index,
                count,
                chunk,
            } => self.on_piece(now, slot, sealed.seq, (msg_id, index, count), chunk),
            Body::KeyAck { epoch } => {
                let (dist, mut cx) = self.split(now);
                dist.key_ack(&mut cx, slot, epoch);
            }
            Body::KeyPull { epoch } => {
                let (dist, mut cx) = self.split(now);
                dist.key_pull(&mut cx, slot, epoch);
            }
            _ => {}
        }
    }

    /// Version 3: an authenticated piece of a larger body (protocol.md §6).
    fn on_piece(
        &mut self,
        now: Instant,
        slot: usize,
        seq: u64,
        (msg_id, index, count): (u32, u16, u16),
        chunk: &[u8],
    ) {
        let Some((owner, from)) = self.sessions.get(slot).map(|s| (s.id, s.addr)) else {
            return;
        };
        let key = (msg_id, index, count);
        let stats = &mut self.tel.stats;
        match self
            .fragments
            .insert(now, owner, key, chunk, Shape::V3, stats)
        {
            Piece::Waiting { arm } => self.arm_reassembly_timer(arm),
            Piece::Complete(body) => {
                match wire::parse_reassembled(seq, &body) {
                    Ok(
                        sealed @ Sealed {
                            gseq: None,
                            body: Body::Data(_),
                            ..
                        },
                    ) => self.on_body(now, slot, sealed, body.len()),
                    Ok(_) => self.tel.dropped(now, from, DropReason::UnexpectedType),
                    Err(e) => self.tel.dropped(now, from, DropReason::from_wire(&e)),
                }
                self.fragments.recycle(body);
            }
            Piece::Dropped(d) => self.tel.dropped(now, from, d),
        }
    }

    fn arm_reassembly_timer(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.timers.insert(at, Timer::Reassembly);
        }
    }

    // ---------------------------------------------------------------- registrations

    /// The host measured `d` of wall time for RSA decryptions (counter `rsa_microseconds`).
    pub fn count_rsa_time(&mut self, d: Duration) {
        self.tel.stats.count_rsa_time(d);
    }

    /// Run up to `max` queued RSA decryptions. Returns how many ran.
    pub fn process_registrations(&mut self, now: Instant, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(reg) = self.handshake.pop_pending() else {
                break;
            };
            n += 1;
            match self.handshake.decrypt(&self.key, &reg) {
                Ok(r) => self.register(now, r, &reg),
                Err(refusal) => {
                    self.tel.stats.handshakes_failed += 1;
                    self.tel.dropped(now, reg.from, refusal.drop);
                    let (out, stats) = (&mut self.out, &mut self.tel.stats);
                    let len = reg.request_len();
                    reject(out, stats, reg.from, refusal.code, refusal.reason, len);
                }
            }
        }
        n
    }

    fn register(&mut self, now: Instant, r: Registration, reg: &PendingReg) {
        let from = r.from;
        if let Some(slot) = self.sessions.slot_of(&from)
            && let Some(s) = self.sessions.get_mut(slot)
        {
            if s.channel.key().ct_eq(&r.key) {
                // Our WELCOME was lost: say it again, change nothing (but the version the
                // client negotiated this time).
                s.channel.set_version(r.version);
                self.tel.stats.handshakes_ok += 1;
                self.send_welcome(now, slot);
                self.send_members(now, slot);
                let (dist, mut cx) = self.split(now);
                return dist.joined(&mut cx, slot, true);
            }
            info!("client {} at {from} re-registered with a new key", s.id);
            self.remove_session(now, slot, LeaveReason::Replaced, true);
        }
        // One session per admission name: a name registering again (from another address, a
        // restarted client) replaces its older session, as a new key from one address does.
        if let Some(name) = &r.name
            && let Some(old) = self.sessions.slot_of_name(name)
        {
            info!("client {name} registered again from {from}: its older session ends");
            self.remove_session(now, old, LeaveReason::Replaced, true);
        }
        let (max, per_source) = (self.cfg.max_clients, self.cfg.max_clients_per_source);
        if let Some((d, why)) = self.sessions.refusal(&from, max, per_source) {
            self.tel.stats.handshakes_failed += 1;
            self.tel.dropped(now, from, d);
            let (out, stats) = (&mut self.out, &mut self.tel.stats);
            return reject(
                out,
                stats,
                from,
                RejectCode::RelayFull,
                why,
                reg.request_len(),
            );
        }
        let channel = Channel::new(r.version, r.key, &mut self.rng);
        let slot = self.sessions.insert(from, channel, r.name, now);
        let Some(s) = self.sessions.get(slot) else {
            return;
        };
        let (id, name) = (s.id, s.name.clone());
        self.timers
            .insert(now + self.cfg.client_timeout, Timer::Liveness { slot, id });
        let stats = &mut self.tel.stats;
        stats.handshakes_ok += 1;
        stats.joins += 1;
        stats.peak_clients = stats.peak_clients.max(self.sessions.len() as u64);
        info!(
            "client {id}{} joined from {from} ({} connected)",
            name.as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            self.sessions.len()
        );
        self.hist.registered(now, reg.arrived); // monitoring hook
        self.send_welcome(now, slot);
        self.send_members(now, slot);
        self.announce_join(now, slot, id, name);
    }

    /// Tell the others, the strategy and the host that the session in `slot` joined.
    fn announce_join(&mut self, now: Instant, slot: usize, id: u32, name: Option<String>) {
        let join = Body::Join {
            id,
            name: name.as_deref().map(str::as_bytes),
        };
        let (dist, mut cx) = self.split(now);
        dist.announce(&mut cx, Some(slot), &join);
        dist.joined(&mut cx, slot, false);
        let Some(addr) = self.sessions.get(slot).map(|s| s.addr) else {
            return;
        };
        self.note_join(slot); // federation
        self.events.push(RelayEvent::Joined { id, addr, name });
    }

    fn send_welcome(&mut self, now: Instant, slot: usize) {
        let Some(s) = self.sessions.get(slot) else {
            return;
        };
        let ms = |d: Duration| d.as_millis().min(u128::from(u32::MAX)) as u32;
        let name = s.name.clone();
        let body = Body::Welcome {
            id: s.id,
            keepalive_ms: ms(self.cfg.keepalive_interval),
            timeout_ms: ms(self.cfg.client_timeout),
            name: name.as_deref().map(str::as_bytes),
            dist: (s.channel.version() >= 3).then(|| self.dist.dist()),
        };
        self.send_to(now, slot, &body);
    }

    /// Version 3: tell the member in `slot` who else is here, in MEMBERS messages that each
    /// fit one datagram.
    fn send_members(&mut self, now: Instant, slot: usize) {
        let Some(me) = self.sessions.get(slot).filter(|s| s.channel.version() >= 3) else {
            return;
        };
        let me = me.id;
        // Clients of other relays too (federation): everyone this member can talk to.
        let local = self.sessions.iter().filter(|(_, s)| s.id != me);
        let local = local.map(|(_, s)| (s.id, s.name.as_deref().map(str::as_bytes)));
        let remote = self.remote.iter().flat_map(|r| r.entries());
        let parts = wire::member_parts(local.chain(remote), MEMBERS_PART_BYTES);
        let n = parts.len();
        for (i, entries) in parts.iter().enumerate() {
            let body = Body::Members {
                last: i + 1 == n,
                entries,
            };
            self.send_to(now, slot, &body);
        }
    }

    // ---------------------------------------------------------------- output

    /// Seal `body` for the session in `slot` alone.
    fn send_to(&mut self, now: Instant, slot: usize, body: &Body<'_>) {
        let unix = self.unix(now);
        let Some(s) = self.sessions.get_mut(slot) else {
            return;
        };
        self.seal_buf.clear();
        wire::write_inner(&mut self.seal_buf, 0, body);
        let stats = &mut self.tel.stats;
        self.out
            .seal(s, &mut self.seal_buf, &mut self.rng, unix, false, stats);
    }

    /// End a session: tell it (if `tell`) and the others, free everything it held.
    fn remove_session(&mut self, now: Instant, slot: usize, reason: LeaveReason, tell: bool) {
        if tell {
            let closed = Body::Closed {
                reason: reason as u8,
            };
            self.send_to(now, slot, &closed);
        }
        let Some(s) = self.sessions.remove(slot) else {
            return;
        };
        self.fragments.remove_owner(s.id);
        self.tel.stats.leaves += 1;
        info!(
            "client {} ({}) left: {} ({} connected)",
            s.id,
            s.addr,
            reason.word(),
            self.sessions.len()
        );
        let leave = Body::Leave {
            id: s.id,
            reason: reason as u8,
        };
        let (dist, mut cx) = self.split(now);
        dist.announce(&mut cx, None, &leave);
        dist.left(&mut cx, slot, s.id);
        self.note_leave(s.id, s.name.as_deref(), reason); // federation
        self.events.push(RelayEvent::Left {
            id: s.id,
            addr: s.addr,
            reason,
        });
    }

    // ---------------------------------------------------------------- operator actions

    /// Remove a client now (control port `kick`). Returns its id if it existed.
    pub fn kick(&mut self, now: Instant, target: KickTarget) -> Option<u32> {
        let slot = match target {
            KickTarget::Id(id) => self.sessions.slot_of_id(id)?,
            KickTarget::Addr(a) => self.sessions.slot_of(&a)?,
        };
        let id = self.sessions.get(slot)?.id;
        self.tel.stats.kicks += 1;
        self.remove_session(now, slot, LeaveReason::Kicked, true);
        Some(id)
    }

    /// Start a fresh group key now (control port `rekey`); false in unicast mode.
    pub fn rekey(&mut self, now: Instant) -> bool {
        let (dist, mut cx) = self.split(now);
        dist.rekey(&mut cx)
    }

    /// Tell every client the relay is stopping and forget them all.
    pub fn shutdown(&mut self, now: Instant) {
        if self.shut_down {
            return;
        }
        let (dist, mut cx) = self.split(now);
        dist.announce(&mut cx, None, &Body::Shutdown);
        let addrs: Vec<_> = self.sessions.iter().map(|(_, s)| s.addr).collect();
        for (id, addr) in self.sessions.clear().into_iter().zip(addrs) {
            self.fragments.remove_owner(id);
            self.events.push(RelayEvent::Left {
                id,
                addr,
                reason: LeaveReason::Shutdown,
            });
        }
        self.handshake.clear_pending();
        self.note_shutdown(); // federation
        self.shut_down = true;
        info!("relay shutting down: all clients notified");
    }

    /// The next thing that happened, for the host ([`RelayEvent`]).
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        let s = &self.tel.stats;
        self.events.poll(s.messages_in, s.deliveries)
    }

    // ---------------------------------------------------------------- time

    /// The next instant `handle_timeout` has work; may be early, never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.handshake.pending_len() > 0 {
            return Some(self.start); // registrations waiting: come back at once
        }
        self.next_timer()
    }

    /// [`RelayCore::poll_timeout`] leaving out waiting registrations, for a host that
    /// schedules the RSA work itself (the driver runs it within a share of its time).
    pub fn next_timer(&self) -> Option<Instant> {
        match (self.timers.next_deadline(), self.dist.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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
                    match self
                        .sessions
                        .liveness(slot, id, now, self.cfg.client_timeout)
                    {
                        Liveness::Gone => {}
                        Liveness::Expired => {
                            self.tel.stats.timeouts += 1;
                            self.remove_session(now, slot, LeaveReason::Timeout, false);
                        }
                        Liveness::AliveUntil(at) => {
                            self.timers.insert(at, Timer::Liveness { slot, id })
                        }
                    }
                }
                Timer::Reassembly => {
                    let next = self.fragments.expire(now, &mut self.tel.stats);
                    self.arm_reassembly_timer(next);
                }
                Timer::CookieRotation => {
                    self.handshake.rotate(now, &mut self.rng);
                    let at = now + self.handshake.rotation();
                    self.timers.insert(at, Timer::CookieRotation);
                }
            }
        }
        self.expired = expired;
        if !self.shut_down {
            let (dist, mut cx) = self.split(now);
            dist.handle_timeout(&mut cx);
        }
    }

    // ---------------------------------------------------------------- transmits

    /// Datagrams waiting to be sent, oldest first.
    pub fn transmits(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.out.transmits()
    }

    /// Is anything waiting to be sent?
    pub fn has_transmits(&self) -> bool {
        self.out.has_transmits()
    }

    /// Mark `sent` datagrams as sent; `failed` more as dropped (counted).
    pub fn advance_transmits(&mut self, sent: usize, failed: usize) {
        self.out.advance(sent, failed, &mut self.tel.stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Event;
    use crate::core::testkit::{Net, addr};

    fn events(core: &mut RelayCore) -> Vec<RelayEvent> {
        std::iter::from_fn(|| core.poll_event()).collect()
    }

    #[test]
    fn a_message_reaches_every_other_client_and_the_host_is_told() {
        let mut w = Net::new(Config::default());
        let (mut a, ida) = w.client(4001);
        let (mut b, idb) = w.client(4002);
        w.deliver(addr(4001), &mut a);
        assert_eq!(
            a.poll_event(),
            Some(Event::Join {
                id: idb,
                name: None
            })
        );
        a.send(w.now, b"hi").unwrap();
        w.send(addr(4001), &mut a);
        w.deliver(addr(4002), &mut b);
        let got = std::iter::from_fn(|| b.poll_event()).last();
        let want = Event::Message {
            sender: ida,
            name: None,
            data: b"hi".to_vec(),
        };
        assert_eq!(got, Some(want));
        assert!(w.take(addr(4001)).is_empty(), "senders never get their own");
        let ev = events(&mut w.core);
        assert!(matches!(ev[0], RelayEvent::Joined { id, .. } if id == ida));
        assert!(matches!(ev[1], RelayEvent::Joined { id, .. } if id == idb));
        let relayed = RelayEvent::Relayed {
            messages: 1,
            deliveries: 1,
        };
        assert_eq!(ev[2], relayed);
    }

    #[test]
    fn input_from_strangers_is_counted_and_never_relayed() {
        let mut w = Net::new(Config::default());
        let (mut a, _) = w.client(4001);
        let now = w.now;
        a.send(now, b"hi").unwrap();
        let d = a.poll_transmit().unwrap();
        let core = &mut w.core;
        // The same token from another address, a relay-to-client message, junk, too long.
        core.handle_datagram(now, addr(9), &d);
        let mut cookie = Vec::new();
        let c = [0u8; 24];
        Outer::Cookie {
            version: 2,
            cookie: &c,
        }
        .write(&mut cookie);
        core.handle_datagram(now, addr(4001), &cookie);
        core.handle_datagram(now, addr(4001), &[0, 0x42, 0, 0]);
        core.handle_datagram(now, addr(4001), &[0; MAX_DATAGRAM + 1]);
        let s = core.stats();
        assert_eq!(s.drops(DropReason::UnknownSender), 1);
        assert_eq!(s.drops(DropReason::UnexpectedType), 1);
        assert_eq!(s.drops(DropReason::UnknownType), 1);
        assert_eq!(s.drops(DropReason::Oversized), 1);
        assert_eq!(s.messages_in, 0);
        // A replay of a relayed message is dropped too.
        core.handle_datagram(now, addr(4001), &d);
        core.handle_datagram(now, addr(4001), &d);
        assert_eq!(core.stats().messages_in, 1);
        assert_eq!(core.stats().drops(DropReason::Replay), 1);
    }

    #[test]
    fn kick_disconnect_timeout_and_shutdown_end_sessions() {
        let cfg = Config {
            client_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(1),
            ..Config::default()
        };
        let mut w = Net::new(cfg);
        let t0 = w.now;
        let (_, ida) = w.client(4001);
        let (mut b, idb) = w.client(4002);
        let (_, idc) = w.client(4003);
        assert_eq!(w.core.kick(t0, KickTarget::Id(ida)), Some(ida));
        assert_eq!(w.core.kick(t0, KickTarget::Id(ida)), None);
        b.disconnect(t0);
        w.send(addr(4002), &mut b);
        assert_eq!(w.core.client_count(), 1);
        w.core.handle_timeout(t0 + Duration::from_secs(3));
        assert_eq!(w.core.client_count(), 0);
        assert_eq!(w.core.stats().timeouts, 1);
        let left: Vec<_> = events(&mut w.core)
            .into_iter()
            .filter_map(|e| match e {
                RelayEvent::Left { id, reason, .. } => Some((id, reason)),
                _ => None,
            })
            .collect();
        let want = vec![
            (ida, LeaveReason::Kicked),
            (idb, LeaveReason::Disconnect),
            (idc, LeaveReason::Timeout),
        ];
        assert_eq!(left, want);
        w.now = t0 + Duration::from_secs(3);
        let (_, idd) = w.client(4004);
        w.core.shutdown(w.now);
        assert!(w.core.is_shut_down());
        assert!(events(&mut w.core).contains(&RelayEvent::Left {
            id: idd,
            addr: addr(4004),
            reason: LeaveReason::Shutdown
        }));
    }

    #[test]
    fn poll_timeout_is_never_late_and_early_calls_are_harmless() {
        let mut w = Net::new(Config::default());
        let t0 = w.now;
        w.client(4001);
        let at = w.core.poll_timeout().expect("a liveness timer");
        assert!(at <= t0 + Duration::from_secs(30));
        for _ in 0..3 {
            w.core.handle_timeout(t0 + Duration::from_secs(1));
        }
        assert_eq!(w.core.client_count(), 1);
    }
}
