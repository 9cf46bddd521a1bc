//! Federation: several relays, one conversation, over a NATS cluster (docs/federation.md).
//!
//! [`Federation`] is a state machine in the shape of the relay core: no sockets, no clock
//! reads (`now` is passed in), RNG injected. It sits between a [`RelayCore`] and a NATS
//! client ([`crate::nats`]):
//!
//! * **out**: it drains the core's local record (joins, leaves, relayed messages), seals each
//!   under the cluster key and publishes it on `mcrelay.<cluster>.<relay id>`; it publishes a
//!   heartbeat (member count and roster digest) every interval, and its roster when asked;
//! * **in**: every message on `mcrelay.<cluster>.*` is opened with the cluster key (a wrong
//!   key or a forgery is dropped and counted), checked (exact parse, clock window, origin,
//!   incarnation, the per-origin replay window from `proto/replay.rs`), then handed to the
//!   core: a remote message is distributed to local members, a remote join or leave is
//!   announced, a roster snapshot replaces this relay's view of that relay;
//! * **timers**: a relay not heard from for three of its heartbeat intervals is lost (its
//!   clients leave with reason 6, relay lost); a relay cut off from NATS that long stops
//!   queueing (its peers have declared it lost) and resynchronises on reconnect.
//!
//! A relay never publishes a remote message: only local records are published, and its own
//! messages coming back are dropped, so loops and duplicates cannot happen.
//!
//! # Call order (the driver does this; docs/embedding.md)
//!
//! 1. the NATS link connected or went down: [`Federation::link_up`] / [`Federation::link_down`];
//! 2. each message on [`Federation::filter`]: [`Federation::handle_message`];
//! 3. after every loop turn that may have relayed something: [`Federation::flush`];
//! 4. when [`Federation::poll_timeout`] passes: [`Federation::handle_timeout`] (harmless
//!    early); if [`Federation::take_discard`] then, drop the NATS client's queue;
//! 5. before the core's shutdown is flushed: [`Federation::shutdown`] (publishes BYE).
#![warn(missing_docs, unreachable_pub)]

mod config;
mod outbound;
mod peers;
#[cfg(test)]
mod tests;
pub mod wire;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

pub use self::config::FederationConfig;
use self::outbound::{Clock, LogLimit, Outbound};
use self::peers::{Peer, PendingRoster};
pub use self::peers::{PeerInfo, PeerState};
use self::wire::{Header, Msg};
use crate::config::ConfigError;
use crate::core::{FederationStatus, RelayCore};
use crate::crypto::fernet::{self, FernetKey};
use crate::crypto::rng::Rng;
use crate::nats::NatsError;
use crate::wire::LeaveReason;

/// Heartbeats a peer may miss before it is declared lost.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Oldest federation message accepted, by its Fernet timestamp (seconds).
pub const TOKEN_TTL_SECS: u64 = 120;
/// Newest federation message accepted, ahead of our clock (seconds).
pub const MAX_SKEW_SECS: u64 = 60;
/// Shortest heartbeat interval.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Longest heartbeat interval.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(60);

/// A publish: subject and payload to the NATS client (`NatsLink::publish`).
pub type Publish<'a> = dyn FnMut(&str, &[u8]) -> Result<(), NatsError> + 'a;

/// The federation state machine. See the [module docs](self).
pub struct Federation {
    id: u8,
    /// Opens what peers publish.
    key: FernetKey,
    interval: Duration,
    filter: String,
    incarnation: u64,
    clock: Clock,
    /// Seals and publishes ours.
    out: Outbound,
    /// By relay id.
    peers: Vec<Option<Peer>>,
    /// The ids of `peers` that are there, ascending (peers are never removed). The per-turn
    /// scans (`flush`, `poll_timeout`, `status`) walk these, not the 256 slots: each
    /// `Option<Peer>` is a few hundred bytes, and the loop calls them several times a turn.
    known: Vec<u8>,
    up: bool,
    server: Option<SocketAddr>,
    ever_up: bool,
    down_since: Option<Instant>,
    /// Down for MISSED_HEARTBEATS intervals: nothing is queued until the link is back.
    cut_off: bool,
    discard: bool,
    next_heartbeat: Instant,
    roster_due: bool,
    last_roster: Option<Instant>,
    sync_all_due: bool,
    opened: Vec<u8>,
    record: Vec<u8>,
    log: LogLimit,
    shut_down: bool,
}

impl fmt::Debug for Federation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Federation")
            .field("relay_id", &self.id)
            .field("subject", &self.out.subject())
            .field("incarnation", &self.incarnation)
            .field("seq", &self.out.seq())
            .field("up", &self.up)
            .field("server", &self.server)
            .field("cut_off", &self.cut_off)
            .field("peers", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// A relay's federation, validated. `unix_micros` is the wall clock at `now` in
    /// microseconds: it becomes the incarnation (a restarted relay has a larger one) and the
    /// base of the Fernet timestamps.
    pub fn new(
        cfg: &FederationConfig,
        rng: Rng,
        now: Instant,
        unix_micros: u64,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let clock = Clock {
            start: now,
            unix_at_start: unix_micros / 1_000_000,
        };
        let subject = wire::subject(&cfg.cluster, cfg.relay_id);
        Ok(Federation {
            id: cfg.relay_id,
            key: cfg.key.clone(),
            interval: cfg.heartbeat,
            filter: wire::filter(&cfg.cluster),
            incarnation: unix_micros,
            clock,
            out: Outbound::new(
                cfg.relay_id,
                unix_micros,
                cfg.key.clone(),
                subject,
                rng,
                clock,
            ),
            peers: (0..256).map(|_| None).collect(),
            known: Vec::new(),
            up: false,
            server: None,
            ever_up: false,
            down_since: Some(now),
            cut_off: false,
            discard: false,
            next_heartbeat: now,
            roster_due: false,
            last_roster: None,
            sync_all_due: false,
            opened: Vec::with_capacity(2048),
            record: Vec::new(),
            log: LogLimit::new(now),
            shut_down: false,
        })
    }

    /// This relay's id.
    pub fn relay_id(&self) -> u8 {
        self.id
    }

    /// This relay's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The subject this relay publishes to.
    pub fn subject(&self) -> &str {
        self.out.subject()
    }

    /// The subscription that receives every relay of the cluster.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.interval
    }

    /// Is the NATS link up, and to which server?
    pub fn link(&self) -> (bool, Option<SocketAddr>) {
        (self.up, self.server)
    }

    /// Has the relay been cut off from NATS for [`MISSED_HEARTBEATS`] intervals?
    pub fn is_cut_off(&self) -> bool {
        self.cut_off
    }

    /// Every peer relay known, by id.
    pub fn peers(&self, core: &RelayCore) -> Vec<PeerInfo> {
        self.known_peers()
            .map(|p| p.info(core.remote_digest(p.id).members))
            .collect()
    }

    /// Every peer relay known, in id order.
    fn known_peers(&self) -> impl Iterator<Item = &Peer> + Clone + '_ {
        self.known
            .iter()
            .filter_map(|&id| self.peers[usize::from(id)].as_ref())
    }

    /// The summary the core shows (`/healthz`, gauges); `pending_bytes` is the NATS client's.
    pub fn status(&self, pending_bytes: usize) -> FederationStatus {
        let known = self.known_peers();
        FederationStatus {
            nats_connected: self.up,
            nats_server: self.server.filter(|_| self.up),
            nats_pending_bytes: pending_bytes as u64,
            peers_up: known.clone().filter(|p| p.alive()).count() as u64,
            peers_known: known.count() as u64,
        }
    }

    // ---------------------------------------------------------------- the link

    /// The NATS link is up (handshake complete, subscription active) to `server`.
    pub fn link_up(&mut self, now: Instant, server: SocketAddr) {
        if !self.ever_up || self.cut_off {
            // Everyone may have forgotten us, or we them: rosters both ways.
            self.sync_all_due = true;
            self.roster_due = true;
        }
        if self.cut_off {
            info!("federation: back on NATS ({server}) after being cut off; resynchronising");
        }
        self.up = true;
        self.ever_up = true;
        self.cut_off = false;
        self.server = Some(server);
        self.down_since = None;
        self.next_heartbeat = now; // at once: peers see us back
    }

    /// The NATS link went down (publishes queue in the NATS client meanwhile, bounded).
    pub fn link_down(&mut self, now: Instant) {
        if self.up {
            self.down_since = Some(now);
        }
        self.up = false;
    }

    /// True once after the relay was cut off: the host should drop the NATS client's queue
    /// ([`NatsClient::discard_pending`](crate::nats::NatsClient::discard_pending)); its
    /// messages are stale, and peers will get a roster instead.
    pub fn take_discard(&mut self) -> bool {
        std::mem::take(&mut self.discard)
    }

    // ---------------------------------------------------------------- input

    /// One message from the cluster's subscription. Anything wrong is counted and dropped;
    /// nothing is published from here (requests are answered by the next
    /// [`flush`](Self::flush)).
    pub fn handle_message(&mut self, now: Instant, payload: &[u8], core: &mut RelayCore) {
        if self.shut_down {
            return;
        }
        if payload.len() > fernet::raw_token_len(wire::MAX_PLAINTEXT) {
            core.stats_mut().federation_malformed += 1;
            return;
        }
        let mut opened = std::mem::take(&mut self.opened);
        opened.clear();
        self.on_payload(now, payload, &mut opened, core);
        self.opened = opened;
    }

    fn on_payload(
        &mut self,
        now: Instant,
        payload: &[u8],
        opened: &mut Vec<u8>,
        core: &mut RelayCore,
    ) {
        let ts = match fernet::decrypt_raw_into(&self.key, payload, opened) {
            Ok(ts) => ts,
            Err(e) => {
                core.stats_mut().federation_bad_seal += 1;
                if self.log.allow(now) {
                    warn!("federation: a message does not open under the cluster key ({e})");
                }
                return;
            }
        };
        if fernet::check_timestamp(
            ts,
            self.clock.unix(now),
            Some(TOKEN_TTL_SECS),
            MAX_SKEW_SECS,
        )
        .is_err()
        {
            core.stats_mut().federation_stale += 1;
            if self.log.allow(now) {
                warn!("federation: a message outside the clock window (check the relays' clocks)");
            }
            return;
        }
        let (h, msg) = match wire::parse(opened) {
            Ok(x) => x,
            Err(e) => {
                core.stats_mut().federation_malformed += 1;
                if self.log.allow(now) {
                    warn!("federation: a sealed message does not parse: {e}");
                }
                return;
            }
        };
        if h.origin == self.id {
            core.stats_mut().federation_own += 1;
            if h.incarnation != self.incarnation && self.log.allow(now) {
                warn!(
                    "federation: another relay uses our relay id {} (incarnation {}): give \
                     every relay its own --relay-id",
                    self.id, h.incarnation
                );
            }
            return;
        }
        if !self.accept(now, &h, core) {
            return;
        }
        core.stats_mut().federation_received += 1;
        self.dispatch(now, &h, msg, core);
    }

    /// The origin, incarnation and replay checks; the peer's state after them. False: drop.
    fn accept(&mut self, now: Instant, h: &Header, core: &mut RelayCore) -> bool {
        let slot = usize::from(h.origin);
        let interval = self.interval;
        let peer = match &mut self.peers[slot] {
            Some(p) => p,
            None => {
                info!(
                    "federation: relay {} (incarnation {}) appeared",
                    h.origin, h.incarnation
                );
                if let Err(at) = self.known.binary_search(&h.origin) {
                    self.known.insert(at, h.origin);
                }
                self.peers[slot].insert(Peer::new(h.origin, h.incarnation, now, interval))
            }
        };
        if h.incarnation != peer.incarnation {
            let newer = h.incarnation > peer.incarnation;
            if !newer && peer.alive() {
                // An older incarnation while the newer one is alive: a replay or a straggler.
                core.stats_mut().federation_stale += 1;
                return false;
            }
            // A restart (or, after its loss, whatever incarnation it now has).
            let was_alive = peer.alive();
            peer.restart(h.incarnation, now);
            if was_alive {
                core.stats_mut().federation_peers_lost += 1;
                info!(
                    "federation: relay {} restarted (incarnation {}): its clients left",
                    h.origin, h.incarnation
                );
            }
            core.remote_relay_gone(now, h.origin, LeaveReason::RelayLost);
            peer.sync_wanted = true;
        }
        let peer = match &mut self.peers[slot] {
            Some(p) => p,
            None => return false,
        };
        if !peer.window.check(h.seq) {
            peer.duplicates += 1;
            core.stats_mut().federation_duplicates += 1;
            return false;
        }
        let top = peer.window.top();
        if top > 0 && h.seq > top + 1 {
            let lost = h.seq - top - 1;
            peer.gaps += lost;
            core.stats_mut().federation_gaps += lost;
            peer.sync_wanted = true;
            if peer.pending.take().is_some() {
                debug!("federation: a gap broke relay {}'s roster", h.origin);
            }
            debug!(
                "federation: {lost} messages of relay {} lost (seq {} after {top})",
                h.origin, h.seq
            );
        }
        peer.window.mark(h.seq);
        peer.last_heard = now;
        if !peer.alive() {
            info!("federation: relay {} is back", h.origin);
            peer.state = PeerState::Syncing;
            peer.sync_wanted = true;
            peer.sync_sent = None;
        }
        true
    }

    fn dispatch(&mut self, now: Instant, h: &Header, msg: Msg<'_>, core: &mut RelayCore) {
        let origin = h.origin;
        let id = self.id;
        let Some(peer) = self.peers[usize::from(origin)].as_mut() else {
            return;
        };
        match msg {
            Msg::Data { sender, name, data } => {
                peer.msgs_in += 1;
                peer.msgs_in_incarnation += 1;
                if !core.has_remote(sender) {
                    peer.sync_wanted = true; // its JOIN was lost
                }
                peer.deliveries += core.remote_message(now, sender, name, data);
            }
            Msg::Join { client, name } => {
                core.remote_join(now, origin, client, name);
            }
            Msg::Leave { client, reason } => {
                let reason = LeaveReason::from_u8(reason).unwrap_or(LeaveReason::RelayLost);
                core.remote_leave(now, client, reason);
            }
            Msg::Heartbeat {
                interval_ms,
                roster,
                received,
            } => {
                let ours = received.get(id).unwrap_or(0);
                let matches = core.remote_digest(origin) == roster;
                peer.heartbeat(now, interval_ms, roster, ours, matches);
            }
            Msg::Roster {
                snapshot,
                part,
                parts,
                total,
                entries,
            } => {
                if let Some(done) = peer.roster_part(snapshot, part, parts, total, entries) {
                    self.apply_roster(now, origin, done, core);
                }
            }
            Msg::Sync { target } => {
                if target == 0 || target == id {
                    self.roster_due = true;
                }
            }
            Msg::Bye => {
                info!("federation: relay {origin} shut down: its clients left");
                peer.state = PeerState::Gone;
                peer.pending = None;
                peer.sync_wanted = false;
                core.remote_relay_gone(now, origin, LeaveReason::Shutdown);
            }
        }
    }

    /// A whole roster of relay `origin`: announce the difference with what we knew.
    fn apply_roster(&mut self, now: Instant, origin: u8, r: PendingRoster, core: &mut RelayCore) {
        let mut entries = r.entries;
        entries.sort_unstable_by_key(|(id, _)| *id);
        entries.dedup_by_key(|(id, _)| *id);
        let known = core.remote_ids_of(origin);
        let (mut left, mut joined) = (0, 0);
        for id in &known {
            if entries.binary_search_by_key(id, |(i, _)| *i).is_err()
                && core.remote_leave(now, *id, LeaveReason::RelayLost)
            {
                left += 1;
            }
        }
        for (id, name) in &entries {
            if known.binary_search(id).is_err()
                && core.remote_join(now, origin, *id, name.as_deref())
            {
                joined += 1;
            }
        }
        core.stats_mut().federation_resyncs += 1;
        let matches = core.remote_digest(origin) == r.total;
        if let Some(p) = self.peers[usize::from(origin)].as_mut() {
            p.resyncs += 1;
            if matches {
                p.state = PeerState::Up;
                p.sync_wanted = false;
            }
        }
        info!(
            "federation: relay {origin}'s roster applied: {} members, {joined} joined, {left} left{}",
            r.total.members,
            if matches {
                ""
            } else {
                " (digest differs: over the caps?)"
            }
        );
    }

    // ---------------------------------------------------------------- output

    /// Publish what the core recorded (local joins, leaves, messages), then what is due
    /// (roster requests, our roster, a heartbeat). Call after every loop turn that may have
    /// relayed something; cheap when there is nothing.
    pub fn flush(&mut self, now: Instant, core: &mut RelayCore, publish: &mut Publish<'_>) {
        if self.shut_down {
            return;
        }
        if !core.local_record_is_empty() {
            let mut record = std::mem::take(&mut self.record);
            core.swap_local_record(&mut record);
            self.out.record(now, &record, self.cut_off, core, publish);
            record.clear();
            self.record = record;
        }
        if !self.up {
            return;
        }
        if std::mem::take(&mut self.sync_all_due) {
            core.stats_mut().federation_roster_requests += 1;
            self.out.send(now, core, publish, &Msg::Sync { target: 0 });
        }
        for i in 0..self.known.len() {
            let slot = usize::from(self.known[i]);
            let due = self.peers[slot].as_ref().is_some_and(|p| {
                p.sync_wanted && p.alive() && p.sync_sent.is_none_or(|t| now >= t + p.interval)
            });
            if due {
                let target = slot as u8;
                core.stats_mut().federation_roster_requests += 1;
                debug!("federation: asking relay {target} for its roster");
                self.out.send(now, core, publish, &Msg::Sync { target });
                if let Some(p) = self.peers[slot].as_mut() {
                    p.sync_sent = Some(now);
                    p.sync_wanted = false;
                }
            }
        }
        if self.roster_due
            && self
                .last_roster
                .is_none_or(|t| now >= t + self.roster_gap())
        {
            self.roster_due = false;
            self.last_roster = Some(now);
            self.out.roster(now, core, publish);
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.interval;
            let received = self
                .known
                .iter()
                .filter_map(|&id| self.peers[usize::from(id)].as_ref())
                .filter(|p| p.alive())
                .map(|p| (p.id, p.msgs_in_incarnation));
            self.out
                .heartbeat(now, self.interval, received, core, publish);
        }
    }

    /// The least time between two rosters of ours (requests within it are answered once).
    fn roster_gap(&self) -> Duration {
        (self.interval / 4).max(Duration::from_millis(20))
    }

    // ---------------------------------------------------------------- time

    /// When [`handle_timeout`](Self::handle_timeout) has work; may be early, never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.shut_down {
            return None;
        }
        let mut at = self.next_heartbeat;
        for p in self.known_peers().filter(|p| p.alive()) {
            at = at.min(p.deadline(MISSED_HEARTBEATS));
            if self.up && p.sync_wanted {
                at = at.min(p.sync_sent.map_or(self.clock.start, |t| t + p.interval));
            }
        }
        if let Some(d) = self.down_since.filter(|_| !self.cut_off && !self.up) {
            at = at.min(d + self.interval * MISSED_HEARTBEATS);
        }
        if self.up && (self.roster_due || self.sync_all_due) {
            at = at.min(
                self.last_roster
                    .map_or(self.clock.start, |t| t + self.roster_gap()),
            );
        }
        Some(at)
    }

    /// Declare silent peers lost, cut ourselves off after a long outage, send what is due.
    /// Harmless early.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        core: &mut RelayCore,
        publish: &mut Publish<'_>,
    ) {
        if self.shut_down {
            return;
        }
        for i in 0..self.known.len() {
            let Some(p) = self.peers[usize::from(self.known[i])].as_mut() else {
                continue;
            };
            if !p.alive() || now < p.deadline(MISSED_HEARTBEATS) {
                continue;
            }
            p.state = PeerState::Lost;
            p.pending = None;
            p.sync_wanted = false;
            let id = p.id;
            let silent = now.saturating_duration_since(p.last_heard);
            core.stats_mut().federation_peers_lost += 1;
            let n = core.remote_relay_gone(now, id, LeaveReason::RelayLost);
            warn!(
                "federation: relay {id} lost (silent for {} ms, {MISSED_HEARTBEATS} heartbeats): \
                 {n} of its clients left",
                silent.as_millis()
            );
        }
        if !self.up
            && !self.cut_off
            && let Some(d) = self.down_since
            && now >= d + self.interval * MISSED_HEARTBEATS
        {
            self.cut_off = true;
            self.discard = true;
            warn!(
                "federation: cut off from NATS for {} ms: dropping what was queued, \
                 publishing nothing until the link is back",
                now.saturating_duration_since(d).as_millis()
            );
        }
        self.flush(now, core, publish);
    }

    /// The relay is stopping: publish what the core recorded and BYE (peers announce our
    /// clients as left at once, not after three heartbeats). Call after the core's
    /// `shutdown`, before the link is closed.
    pub fn shutdown(&mut self, now: Instant, core: &mut RelayCore, publish: &mut Publish<'_>) {
        if self.shut_down {
            return;
        }
        self.flush(now, core, publish);
        if !self.cut_off {
            self.out.send(now, core, publish, &Msg::Bye);
        }
        self.shut_down = true;
    }
}
