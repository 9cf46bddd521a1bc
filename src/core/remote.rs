//! The core's federation hooks (docs/federation.md): what a relay of a cluster needs from its
//! core, and nothing more. The federation itself (`crate::federation`: NATS subjects, sealing
//! under the cluster key, peers, heartbeats) lives outside the core and calls these.
//!
//! * **Remote members.** Clients of other relays, by id: the core announces their joins and
//!   leaves to its own members through the distribution strategy (the same path, and in
//!   unicast mode the same per-turn notice budget, as local JOIN/LEAVE), lists them in a
//!   version-3 newcomer's MEMBERS, and distributes their messages as it does a local
//!   client's, each relay in its own mode.
//! * **The local record.** With a relay id set, every local join, leave and relayed message is
//!   appended to a bounded byte record that the federation drains each loop turn
//!   ([`RelayCore::swap_local_record`]) and publishes. A message that does not fit is dropped
//!   (counted); joins and leaves always fit (they are bounded by the session table).
//! * **Roster digests.** Each relay's member set (its own and, as this relay knows it, each
//!   peer's) is summarised as a count and an order-free 64-bit digest, updated on every join
//!   and leave, which heartbeats carry so that relays notice when their views differ.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use log::info;
use sha2::{Digest, Sha256};

use super::RelayCore;
use crate::core::events::RelayEvent;
use crate::core::session::LOCAL_ID_BITS;
use crate::wire::{Body, LeaveReason, MAX_NAME};

/// Most clients of other relays held at once, all relays together; joins beyond it are
/// refused (counted in `federation_over_cap`).
pub const MAX_REMOTE_MEMBERS: usize = 65_536;
/// Most clients of one other relay.
pub const MAX_REMOTE_PER_RELAY: usize = 16_384;
/// Bytes of local messages the record holds between two drains; a message beyond it is not
/// published (counted in `federation_publish_dropped`). Joins and leaves are always kept.
pub const LOCAL_RECORD_BYTES: usize = 4 << 20;

/// The relay id a federated client id carries (its high byte).
pub fn relay_of(id: u32) -> u8 {
    (id >> LOCAL_ID_BITS) as u8
}

/// The digest of one member: the first 8 bytes of SHA-256(`id u32` ‖ `name_len u8` ‖ `name`),
/// big endian. A roster's digest is the XOR of its members' (order-free, updated in O(1)).
pub fn member_digest(id: u32, name: Option<&[u8]>) -> u64 {
    let name = name.unwrap_or_default();
    let name = &name[..name.len().min(MAX_NAME)];
    let mut h = Sha256::new();
    h.update(id.to_be_bytes());
    h.update([name.len() as u8]);
    h.update(name);
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// A member count and digest: a summary of one relay's clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RosterDigest {
    /// Members.
    pub members: u32,
    /// XOR of [`member_digest`] over them.
    pub digest: u64,
}

impl RosterDigest {
    fn add(&mut self, d: u64) {
        self.members = self.members.saturating_add(1);
        self.digest ^= d;
    }
    fn remove(&mut self, d: u64) {
        self.members = self.members.saturating_sub(1);
        self.digest ^= d;
    }
}

/// A client of another relay, as `clients` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteClient {
    /// Its id (the relay id in the high byte).
    pub id: u32,
    /// The relay it is registered with.
    pub relay: u8,
    /// Its admission name.
    pub name: Option<String>,
    /// When this relay learned of it.
    pub since: Instant,
}

/// What the federation reports of its link, for `/healthz`, `stats` and `metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FederationStatus {
    /// The NATS link is up.
    pub nats_connected: bool,
    /// The server it is connected to.
    pub nats_server: Option<SocketAddr>,
    /// Publishes waiting in the NATS client's queue, in bytes.
    pub nats_pending_bytes: u64,
    /// Peer relays heard from within their last three heartbeats.
    pub peers_up: u64,
    /// Peer relays known (up, syncing, lost or gone).
    pub peers_known: u64,
}

/// One entry of the local record (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRecord<'a> {
    /// A local client's message, relayed here.
    Message {
        /// Its id.
        sender: u32,
        /// Its admission name.
        name: Option<&'a [u8]>,
        /// The body.
        data: &'a [u8],
    },
    /// A local client registered.
    Join {
        /// Its id.
        id: u32,
        /// Its admission name.
        name: Option<&'a [u8]>,
    },
    /// A local client's session ended.
    Leave {
        /// Its id.
        id: u32,
        /// A [`LeaveReason`] value.
        reason: u8,
    },
    /// The relay shut down.
    Shutdown,
}

const REC_MESSAGE: u8 = 1;
const REC_JOIN: u8 = 2;
const REC_LEAVE: u8 = 3;
const REC_SHUTDOWN: u8 = 4;

/// Every record in `buf` (as [`RelayCore::swap_local_record`] hands it over), in order.
pub fn local_records(buf: &[u8]) -> impl Iterator<Item = LocalRecord<'_>> + '_ {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let (rec, tail) = parse_record(rest)?;
        rest = tail;
        Some(rec)
    })
}

fn take(b: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (b.len() >= n).then(|| b.split_at(n))
}

fn parse_record(b: &[u8]) -> Option<(LocalRecord<'_>, &[u8])> {
    let (&kind, b) = b.split_first()?;
    if kind == REC_SHUTDOWN {
        return Some((LocalRecord::Shutdown, b));
    }
    let (id, b) = take(b, 4)?;
    let id = u32::from_be_bytes(id.try_into().ok()?);
    match kind {
        REC_LEAVE => {
            let (&reason, b) = b.split_first()?;
            Some((LocalRecord::Leave { id, reason }, b))
        }
        REC_JOIN | REC_MESSAGE => {
            let (&n, b) = b.split_first()?;
            let (name, b) = take(b, usize::from(n))?;
            let name = (n > 0).then_some(name);
            if kind == REC_JOIN {
                return Some((LocalRecord::Join { id, name }, b));
            }
            let (len, b) = take(b, 4)?;
            let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
            let (data, b) = take(b, len)?;
            let rec = LocalRecord::Message {
                sender: id,
                name,
                data,
            };
            Some((rec, b))
        }
        _ => None,
    }
}

fn put_name(out: &mut Vec<u8>, name: Option<&[u8]>) {
    let name = name.unwrap_or_default();
    let name = &name[..name.len().min(MAX_NAME)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

#[derive(Debug, Clone)]
struct Member {
    relay: u8,
    name: Option<String>,
    since: Instant,
}

/// The core's federation state: remote members, digests, the local record.
#[derive(Debug)]
pub(crate) struct Remote {
    relay_id: u8,
    members: HashMap<u32, Member>,
    /// Per relay id: its members as this relay knows them.
    rosters: Box<[RosterDigest; 256]>,
    local: RosterDigest,
    record: Vec<u8>,
    status: FederationStatus,
}

impl Remote {
    pub(crate) fn new(relay_id: u8) -> Self {
        Remote {
            relay_id,
            members: HashMap::new(),
            rosters: Box::new([RosterDigest::default(); 256]),
            local: RosterDigest::default(),
            record: Vec::new(),
            status: FederationStatus::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// Version-3 MEMBERS entries: every remote member.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u32, Option<&[u8]>)> + '_ {
        self.members
            .iter()
            .map(|(id, m)| (*id, m.name.as_deref().map(str::as_bytes)))
    }

    fn record_join(&mut self, id: u32, name: Option<&[u8]>) {
        self.local.add(member_digest(id, name));
        self.record.push(REC_JOIN);
        self.record.extend_from_slice(&id.to_be_bytes());
        put_name(&mut self.record, name);
    }

    fn record_leave(&mut self, id: u32, name: Option<&[u8]>, reason: u8) {
        self.local.remove(member_digest(id, name));
        self.record.push(REC_LEAVE);
        self.record.extend_from_slice(&id.to_be_bytes());
        self.record.push(reason);
    }

    /// False (nothing recorded) when the record is full.
    fn record_message(&mut self, sender: u32, name: Option<&[u8]>, data: &[u8]) -> bool {
        if self.record.len() + data.len() + MAX_NAME + 10 > LOCAL_RECORD_BYTES {
            return false;
        }
        self.record.push(REC_MESSAGE);
        self.record.extend_from_slice(&sender.to_be_bytes());
        put_name(&mut self.record, name);
        self.record
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.record.extend_from_slice(data);
        true
    }
}

impl RelayCore {
    /// Federation: this relay's id (`None` without federation).
    pub fn relay_id(&self) -> Option<u8> {
        self.remote.as_ref().map(|r| r.relay_id)
    }

    /// Federation: hand over the local record (every local join, leave and relayed message
    /// since the last call, in order; read it with [`local_records`]) and take `buf` (emptied)
    /// to record into next. Swapping two buffers allocates nothing in the steady state.
    pub fn swap_local_record(&mut self, buf: &mut Vec<u8>) {
        buf.clear();
        if let Some(r) = &mut self.remote {
            std::mem::swap(&mut r.record, buf);
        }
    }

    /// Federation: is the local record empty?
    pub fn local_record_is_empty(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.record.is_empty())
    }

    /// Federation: this relay's own clients as a count and digest.
    pub fn local_digest(&self) -> RosterDigest {
        self.remote.as_ref().map(|r| r.local).unwrap_or_default()
    }

    /// Federation: the clients of relay `relay` as this relay knows them.
    pub fn remote_digest(&self, relay: u8) -> RosterDigest {
        self.remote
            .as_ref()
            .map(|r| r.rosters[usize::from(relay)])
            .unwrap_or_default()
    }

    /// Federation: this relay's own clients (id, name), for a roster snapshot.
    pub fn local_roster(&self) -> impl Iterator<Item = (u32, Option<&str>)> + '_ {
        self.sessions.iter().map(|(_, s)| (s.id, s.name.as_deref()))
    }

    /// Federation: the ids of relay `relay`'s clients that this relay knows (a scan).
    pub fn remote_ids_of(&self, relay: u8) -> Vec<u32> {
        let Some(r) = &self.remote else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = r
            .members
            .iter()
            .filter(|(_, m)| m.relay == relay)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Federation: is client `id` of another relay known here?
    pub fn has_remote(&self, id: u32) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|r| r.members.contains_key(&id))
    }

    /// Every client of another relay known here, by id.
    pub fn remote_clients(&self) -> Vec<RemoteClient> {
        let Some(r) = &self.remote else {
            return Vec::new();
        };
        let mut v: Vec<RemoteClient> = r
            .members
            .iter()
            .map(|(id, m)| RemoteClient {
                id: *id,
                relay: m.relay,
                name: m.name.clone(),
                since: m.since,
            })
            .collect();
        v.sort_unstable_by_key(|c| c.id);
        v
    }

    /// Clients of other relays known here now.
    pub fn remote_client_count(&self) -> usize {
        self.remote.as_ref().map_or(0, Remote::len)
    }

    /// Bytes of datagrams waiting for the socket (the driver sends remote deliveries when
    /// they pile up while NATS input is parsed).
    pub fn send_queue_bytes(&self) -> usize {
        self.out.queued_bytes()
    }

    /// What the federation last reported of its link.
    pub fn federation_status(&self) -> Option<FederationStatus> {
        self.remote.as_ref().map(|r| r.status)
    }

    /// Federation: report the link's state (shown by `/healthz`, `stats`, `metrics`).
    pub fn set_federation_status(&mut self, status: FederationStatus) {
        if let Some(r) = &mut self.remote {
            r.status = status;
        }
    }

    /// The counters, for the federation to count what it does (they are the core's, so that
    /// `stats`, `metrics` and `/stats` show them with everything else).
    pub(crate) fn stats_mut(&mut self) -> &mut crate::core::Stats {
        &mut self.tel.stats
    }

    /// Federation: client `id` of relay `relay` joined. Its JOIN goes to every local member
    /// (the notice path of the distribution mode). False, and nothing announced, without
    /// federation, when `id` does not carry `relay` in its high byte, when `relay` is this
    /// relay, when the member is known already, or over the caps (counted).
    pub fn remote_join(&mut self, now: Instant, relay: u8, id: u32, name: Option<&str>) -> bool {
        if self.shut_down {
            return false;
        }
        let Some(r) = &mut self.remote else {
            return false;
        };
        if relay == r.relay_id || relay == 0 || relay_of(id) != relay {
            return false;
        }
        if r.members.contains_key(&id) {
            return false;
        }
        let roster = &mut r.rosters[usize::from(relay)];
        if r.members.len() >= MAX_REMOTE_MEMBERS || roster.members as usize >= MAX_REMOTE_PER_RELAY
        {
            self.tel.stats.federation_over_cap += 1;
            return false;
        }
        let name_bytes = name.map(str::as_bytes);
        roster.add(member_digest(id, name_bytes));
        r.members.insert(
            id,
            Member {
                relay,
                name: name.map(str::to_string),
                since: now,
            },
        );
        self.tel.stats.remote_joins += 1;
        info!(
            "remote client {id}{} joined at relay {relay} ({} remote)",
            name.map(|n| format!(" ({n})")).unwrap_or_default(),
            r.members.len()
        );
        let join = Body::Join {
            id,
            name: name_bytes,
        };
        let (dist, mut cx) = self.split(now);
        dist.announce(&mut cx, None, &join);
        self.events.push(RelayEvent::RemoteJoined {
            id,
            relay,
            name: name.map(str::to_string),
        });
        true
    }

    /// Federation: client `id` of another relay left. Its LEAVE goes to every local member.
    /// False when it was not known.
    pub fn remote_leave(&mut self, now: Instant, id: u32, reason: LeaveReason) -> bool {
        if self.shut_down {
            return false;
        }
        let Some(r) = &mut self.remote else {
            return false;
        };
        let Some(m) = r.members.remove(&id) else {
            return false;
        };
        let d = member_digest(id, m.name.as_deref().map(str::as_bytes));
        r.rosters[usize::from(m.relay)].remove(d);
        self.tel.stats.remote_leaves += 1;
        info!(
            "remote client {id} of relay {} left: {} ({} remote)",
            m.relay,
            reason.word(),
            r.members.len()
        );
        let leave = Body::Leave {
            id,
            reason: reason as u8,
        };
        let (dist, mut cx) = self.split(now);
        dist.announce(&mut cx, None, &leave);
        self.events.push(RelayEvent::RemoteLeft {
            id,
            relay: m.relay,
            reason,
        });
        true
    }

    /// Federation: every known client of relay `relay` left (its relay was lost, restarted or
    /// shut down). Returns how many.
    pub fn remote_relay_gone(&mut self, now: Instant, relay: u8, reason: LeaveReason) -> usize {
        let ids = self.remote_ids_of(relay);
        let n = ids.len();
        for id in ids {
            self.remote_leave(now, id, reason);
        }
        n
    }

    /// Federation: a message from client `sender` of another relay: delivered to every local
    /// member in this relay's mode, tagged with the sender's id and name. Returns the copies
    /// queued (for group mode, the members reached).
    pub fn remote_message(
        &mut self,
        now: Instant,
        sender: u32,
        name: Option<&str>,
        data: &[u8],
    ) -> u64 {
        if self.shut_down || self.remote.is_none() {
            return 0;
        }
        self.tel.stats.remote_messages_in += 1;
        let (dist, mut cx) = self.split(now);
        let n = dist.relay_remote(&mut cx, sender, name.map(str::as_bytes), data);
        self.tel.stats.remote_deliveries += n;
        n
    }

    // ---------------------------------------------------------------- hooks of relay.rs

    /// A local session joined: record it.
    pub(super) fn note_join(&mut self, slot: usize) {
        if let (Some(r), Some(s)) = (&mut self.remote, self.sessions.get(slot)) {
            r.record_join(s.id, s.name.as_deref().map(str::as_bytes));
        }
    }

    /// A local session (already out of the table) left: record it.
    pub(super) fn note_leave(&mut self, id: u32, name: Option<&str>, reason: LeaveReason) {
        if let Some(r) = &mut self.remote {
            r.record_leave(id, name.map(str::as_bytes), reason as u8);
        }
    }

    /// A local message was relayed: record it for the federation.
    pub(super) fn note_message(&mut self, slot: usize, data: &[u8]) {
        if let (Some(r), Some(s)) = (&mut self.remote, self.sessions.get(slot))
            && !r.record_message(s.id, s.name.as_deref().map(str::as_bytes), data)
        {
            self.tel.stats.federation_publish_dropped += 1;
        }
    }

    /// The relay shut down: record it, forget the local roster.
    pub(super) fn note_shutdown(&mut self) {
        if let Some(r) = &mut self.remote {
            r.record.push(REC_SHUTDOWN);
            r.local = RosterDigest::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_order() {
        let mut r = Remote::new(3);
        r.record_join(0x0300_0001, Some(b"ann"));
        assert!(r.record_message(0x0300_0001, Some(b"ann"), b"hello"));
        r.record_leave(0x0300_0001, Some(b"ann"), 1);
        r.record_join(0x0300_0002, None);
        r.record.push(REC_SHUTDOWN);
        let got: Vec<_> = local_records(&r.record).collect();
        assert_eq!(
            got,
            vec![
                LocalRecord::Join {
                    id: 0x0300_0001,
                    name: Some(b"ann")
                },
                LocalRecord::Message {
                    sender: 0x0300_0001,
                    name: Some(b"ann"),
                    data: b"hello"
                },
                LocalRecord::Leave {
                    id: 0x0300_0001,
                    reason: 1
                },
                LocalRecord::Join {
                    id: 0x0300_0002,
                    name: None
                },
                LocalRecord::Shutdown,
            ]
        );
        assert_eq!(r.local.members, 1);
        assert_eq!(r.local.digest, member_digest(0x0300_0002, None));
        // A cut record ends the iteration, never panics.
        for cut in 0..r.record.len() {
            let _ = local_records(&r.record[..cut]).count();
        }
    }

    #[test]
    fn the_record_is_bounded_for_messages_only() {
        let mut r = Remote::new(1);
        let big = vec![0u8; LOCAL_RECORD_BYTES / 2];
        assert!(r.record_message(1, None, &big));
        assert!(!r.record_message(1, None, &big), "full");
        r.record_join(0x0100_0002, None);
        assert!(matches!(
            local_records(&r.record).last(),
            Some(LocalRecord::Join { .. })
        ));
    }

    #[test]
    fn digests_are_order_free_and_undo() {
        let (a, b) = (member_digest(1, Some(b"a")), member_digest(2, None));
        let mut x = RosterDigest::default();
        x.add(a);
        x.add(b);
        let mut y = RosterDigest::default();
        y.add(b);
        y.add(a);
        assert_eq!(x, y);
        x.remove(a);
        x.remove(b);
        assert_eq!(x, RosterDigest::default());
        assert_ne!(member_digest(1, Some(b"a")), member_digest(1, Some(b"b")));
        assert_eq!(relay_of(0x0500_0007), 5);
    }
}
