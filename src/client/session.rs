//! The client protocol engine, sans-IO: the caller moves datagrams and passes the time
//! (docs/clients.md has the state machine and its timers).
//!
//! [`ClientSession`] routes between parts that each own their state: the handshake's
//! knowledge of the relay and its datagrams ([`handshake`]), when it is tried again and
//! what a REJECT may do ([`attempt`]), whether the session is still there ([`liveness`]),
//! and the sealing of what we send ([`outgoing`]). What comes in (tokens, fragments, group
//! datagrams) is dispatched here.

mod attempt;
mod handshake;
mod liveness;
mod outgoing;

use std::collections::{HashSet, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::group::{GroupView, Opened};
use super::{ClientError, Event, LostReason};
use crate::crypto::fernet::FernetKey;
use crate::crypto::rng::Rng;
use crate::proto::channel::Channel;
use crate::proto::reassembly::{Limits, Reassembler, Shape};
use crate::wire::{self, Body, COOKIE_LEN, Dist, MAX_BODY, Outer, RejectCode, Sealed};
use attempt::{Attempt, RejectStep};
use handshake::{CookieStep, Handshake, KeyStep};
use liveness::{Due, Liveness};
use outgoing::Outgoing;

pub use attempt::{BACKOFF, FATAL_REJECTS, MAX_RETRY, RETRY};
pub use liveness::PROBE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hello,
    KeyRequest,
    Register,
    Ready,
    Closed,
}

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
    handshake: Handshake,
    attempt: Attempt,
    liveness: Liveness,
    out: Outgoing,
    id: u32,
    reassembly: Reassembler,
    group: Option<GroupView>,
    /// The other members this session knows of (MEMBERS, JOIN, LEAVE): a member list
    /// repeated with a repeated WELCOME presents nobody twice.
    roster: HashSet<u32>,
    events: VecDeque<Event>,
    error: Option<ClientError>,
    /// Register again by itself when the session is lost.
    reconnect: bool,
    stats: ClientStats,
    plain: Vec<u8>,
    scratch: Vec<u8>,
    token: Vec<u8>,
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
            handshake: Handshake::new(pin, admission),
            attempt: Attempt::new(now),
            liveness: Liveness::new(now),
            out: Outgoing::new(now),
            id: 0,
            reassembly: Reassembler::new(Limits::default()),
            group: None,
            roster: HashSet::new(),
            events: VecDeque::new(),
            error: None,
            reconnect: true,
            stats: ClientStats::default(),
            plain: Vec::new(),
            scratch: Vec::new(),
            token: Vec::new(),
        };
        s.send_hello(now);
        s
    }

    /// Start (again) from HELLO; the relay's address is learnt anew.
    fn send_hello(&mut self, now: Instant) {
        self.state = State::Hello;
        self.roster.clear();
        let d = self.handshake.hello();
        self.out.push(d);
        self.liveness.sent(now);
        self.attempt.hello_sent(now, &mut self.rng);
    }

    /// Offer at most protocol `version` (call right after `new`; it re-sends the HELLO).
    pub fn set_max_version(&mut self, version: u16, now: Instant) {
        self.handshake.set_max_version(version);
        if self.state == State::Hello {
            self.out.clear();
            self.attempt.restart_schedule();
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
        self.handshake.last_reject()
    }
    /// The last relay key that did not match the pinned fingerprint, as the error the
    /// handshake's deadline reports ([`ClientError::FingerprintMismatch`]).
    pub fn key_mismatch(&self) -> Option<ClientError> {
        self.handshake.key_mismatch()
    }

    /// Has the session ended (or failed)?
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
    /// SHA-256 of the relay's public key, once known.
    pub fn relay_fingerprint(&self) -> Option<[u8; 32]> {
        self.handshake.fingerprint()
    }
    /// The address the relay sends from, once known.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.handshake.relay_addr()
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
        self.out.pop()
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
        if !self.handshake.is_from_relay(from) {
            self.stats.foreign += 1;
            return;
        }
        match (self.state, msg) {
            (State::Hello, Outer::Cookie { version, cookie })
                if self.handshake.offered(version) && !self.attempt.backing_off(now) =>
            {
                self.on_cookie(now, from, version, cookie);
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
        if self.state == State::Ready && self.liveness.start_probe(now) {
            self.seal(now, &Body::Keepalive);
        }
    }

    fn on_cookie(
        &mut self,
        now: Instant,
        from: SocketAddr,
        version: u16,
        cookie: &[u8; COOKIE_LEN],
    ) {
        self.channel.set_version(version);
        match self.handshake.on_cookie(from, cookie) {
            CookieStep::Register => self.send_register(now),
            CookieStep::KeyRequest(d) => {
                self.state = State::KeyRequest;
                self.out.push(d);
                self.liveness.sent(now);
            }
        }
    }

    fn on_public_key(&mut self, now: Instant, pem: &[u8]) {
        match self.handshake.on_public_key(pem) {
            Ok(KeyStep::Register) => self.send_register(now),
            Ok(KeyStep::Mismatch) => {
                self.stats.bad_keys += 1;
                self.state = State::Hello;
            }
            Err(e) => self.fail(e),
        }
    }

    /// REJECT is unauthenticated (protocol.md §3): it may restart the handshake, never more
    /// often than the schedule allows, and ends it only after [`FATAL_REJECTS`].
    fn on_reject(&mut self, now: Instant, code: u16, reason: &[u8]) {
        self.handshake.note_reject(code, reason);
        match self.attempt.on_reject(now, code) {
            RejectStep::Ignored => self.stats.rejects_ignored += 1,
            RejectStep::Restart => self.send_hello(now),
            RejectStep::Wait => {
                if code == RejectCode::BadRegistration as u16 {
                    self.handshake.forget_key(); // perhaps a new relay key: fetch it again
                }
                self.state = State::Hello;
            }
            RejectStep::Fatal => self.fail(ClientError::Rejected {
                code,
                reason: text(reason),
            }),
        }
    }

    fn send_register(&mut self, now: Instant) {
        match self.handshake.register(self.channel.key()) {
            None => {}
            Some(Ok(d)) => {
                self.out.push(d);
                self.state = State::Register;
                self.liveness.sent(now);
            }
            Some(Err(e)) => self.fail(e),
        }
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
                    self.liveness.heard(now);
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
        self.liveness.welcomed(now, ka, to);
        self.state = State::Ready;
        self.attempt.registered();
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

    /// Seal `body` for the relay (see [`Outgoing::seal`]).
    fn seal(&mut self, now: Instant, body: &Body<'_>) {
        self.out.seal(&mut self.channel, &mut self.rng, now, body);
        self.liveness.sent(now);
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
        self.liveness.end_probe();
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
        self.attempt.lost();
        self.send_hello(now);
    }

    /// When `handle_timeout` next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Ready => {
                let t = self.liveness.next();
                let group = self.group.as_ref().and_then(GroupView::next_expiry);
                Some(group.map_or(t, |e| t.min(e)))
            }
            _ => Some(self.attempt.next_retry()),
        }
    }

    /// Retransmit the handshake, send a keep-alive, or notice a lost session, when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.reassembly.expire(now);
        if let Some(g) = &mut self.group {
            g.expire(now);
        }
        match self.state {
            State::Ready => match self.liveness.check(now) {
                Due::Lost(reason) => self.lost(now, reason),
                Due::Keepalive => self.send_keepalive(now),
                Due::Nothing => {}
            },
            State::Hello | State::KeyRequest | State::Register if self.attempt.due(now) => {
                self.send_hello(now)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
