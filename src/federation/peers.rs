//! What a relay knows of each other relay of its cluster: liveness, incarnation, the replay
//! window of its sequence numbers, a roster snapshot being received, counters.

use std::time::{Duration, Instant};

use log::debug;

use super::wire::Entries;
use crate::core::{MAX_REMOTE_PER_RELAY, RosterDigest};
use crate::proto::replay::ReplayWindow;

/// Where a peer relay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Heard from within its last three heartbeats, and its roster matches ours of it.
    Up,
    /// Heard from, but its roster is not confirmed yet (new, back, restarted, or after a gap):
    /// a roster request is out or due.
    Syncing,
    /// Three heartbeats missed: its clients were announced as left (reason 6, relay lost).
    Lost,
    /// It said BYE (shut down): its clients were announced as left (reason 5).
    Gone,
}

impl PeerState {
    /// The word `peers` prints.
    pub fn word(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Syncing => "syncing",
            PeerState::Lost => "lost",
            PeerState::Gone => "gone",
        }
    }
}

/// What `peers` shows of one peer relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its relay id.
    pub id: u8,
    /// Its state.
    pub state: PeerState,
    /// Its incarnation (start time, µs since the Unix epoch).
    pub incarnation: u64,
    /// When anything of it was last accepted.
    pub last_heard: Instant,
    /// When its last heartbeat was accepted.
    pub last_heartbeat: Option<Instant>,
    /// Its heartbeat interval.
    pub interval: Duration,
    /// Its clients as this relay knows them.
    pub members: u32,
    /// Its clients as its last heartbeat said.
    pub advertised: u32,
    /// Client messages received from it.
    pub msgs_in: u64,
    /// Client messages of this relay it says it received (its last heartbeat), this
    /// incarnation.
    pub msgs_out: u64,
    /// Copies of its messages sent to local members.
    pub deliveries: u64,
    /// Its sequence numbers skipped (messages lost on the way).
    pub gaps: u64,
    /// Its messages received twice (dropped).
    pub duplicates: u64,
    /// Roster snapshots of it applied.
    pub resyncs: u64,
}

/// A roster snapshot being received, part by part.
#[derive(Debug)]
pub(crate) struct PendingRoster {
    pub(crate) snapshot: u64,
    pub(crate) next_part: u16,
    pub(crate) parts: u16,
    pub(crate) total: RosterDigest,
    pub(crate) entries: Vec<(u32, Option<String>)>,
}

/// One peer relay.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: u8,
    pub(crate) state: PeerState,
    pub(crate) incarnation: u64,
    pub(crate) window: ReplayWindow,
    pub(crate) last_heard: Instant,
    pub(crate) last_heartbeat: Option<Instant>,
    pub(crate) interval: Duration,
    pub(crate) advertised: RosterDigest,
    /// A roster request should go out (rate-limited by `sync_sent`).
    pub(crate) sync_wanted: bool,
    pub(crate) sync_sent: Option<Instant>,
    pub(crate) pending: Option<PendingRoster>,
    pub(crate) msgs_in: u64,
    /// DATA received from it in its current incarnation (our heartbeats report it).
    pub(crate) msgs_in_incarnation: u64,
    pub(crate) msgs_out: u64,
    pub(crate) deliveries: u64,
    pub(crate) gaps: u64,
    pub(crate) duplicates: u64,
    pub(crate) resyncs: u64,
}

impl Peer {
    /// A peer first heard at `now` in `incarnation`, assumed to beat every `interval` until
    /// its first heartbeat says otherwise.
    pub(crate) fn new(id: u8, incarnation: u64, now: Instant, interval: Duration) -> Peer {
        Peer {
            id,
            state: PeerState::Syncing,
            incarnation,
            window: ReplayWindow::new(),
            last_heard: now,
            last_heartbeat: None,
            interval,
            advertised: RosterDigest::default(),
            sync_wanted: false,
            sync_sent: None,
            pending: None,
            msgs_in: 0,
            msgs_in_incarnation: 0,
            msgs_out: 0,
            deliveries: 0,
            gaps: 0,
            duplicates: 0,
            resyncs: 0,
        }
    }

    /// It came back in a new incarnation: everything of the old one is forgotten (but the
    /// cumulative counters).
    pub(crate) fn restart(&mut self, incarnation: u64, now: Instant) {
        self.state = PeerState::Syncing;
        self.incarnation = incarnation;
        self.window = ReplayWindow::new();
        self.last_heard = now;
        self.advertised = RosterDigest::default();
        self.pending = None;
        self.sync_sent = None;
        self.msgs_in_incarnation = 0;
        self.msgs_out = 0;
    }

    /// Its heartbeat: it beats every `interval_ms`, has `roster` (which `matches` what we
    /// hold of it, or not: then a roster is wanted, unless one is arriving), and received
    /// `ours` of our messages this incarnation.
    pub(crate) fn heartbeat(
        &mut self,
        now: Instant,
        interval_ms: u32,
        roster: RosterDigest,
        ours: u64,
        matches: bool,
    ) {
        self.interval = Duration::from_millis(u64::from(interval_ms));
        self.last_heartbeat = Some(now);
        self.advertised = roster;
        self.msgs_out = ours;
        if matches {
            if self.state == PeerState::Syncing {
                debug!(
                    "federation: relay {}'s roster matches ({} members)",
                    self.id, roster.members
                );
                self.state = PeerState::Up;
            }
            self.sync_wanted = false;
        } else if self.pending.is_none() {
            self.state = PeerState::Syncing;
            self.sync_wanted = true;
        }
    }

    /// One part of its roster snapshot; the whole snapshot once its last part is in. A part
    /// out of order, of another snapshot or without its beginning drops what was gathered
    /// and asks for a new one (part 0 always starts over). At most
    /// [`MAX_REMOTE_PER_RELAY`] entries are kept.
    pub(crate) fn roster_part(
        &mut self,
        snapshot: u64,
        part: u16,
        parts: u16,
        total: RosterDigest,
        entries: Entries<'_>,
    ) -> Option<PendingRoster> {
        if part == 0 {
            self.pending = Some(PendingRoster {
                snapshot,
                next_part: 0,
                parts,
                total,
                entries: Vec::new(),
            });
        }
        let p = self.pending.as_mut()?; // a part without its beginning
        if p.snapshot != snapshot || p.next_part != part || p.parts != parts {
            self.pending = None;
            self.sync_wanted = true;
            return None;
        }
        p.next_part += 1;
        let room = MAX_REMOTE_PER_RELAY.saturating_sub(p.entries.len());
        p.entries.extend(
            entries
                .iter()
                .take(room)
                .map(|(id, n)| (id, n.map(str::to_string))),
        );
        if p.next_part == p.parts {
            self.pending.take()
        } else {
            None
        }
    }

    /// Declared lost when nothing of it was accepted for this long.
    pub(crate) fn deadline(&self, missed: u32) -> Instant {
        self.last_heard + self.interval * missed
    }

    /// Is it heard from (up or syncing)?
    pub(crate) fn alive(&self) -> bool {
        matches!(self.state, PeerState::Up | PeerState::Syncing)
    }

    pub(crate) fn info(&self, members: u32) -> PeerInfo {
        PeerInfo {
            id: self.id,
            state: self.state,
            incarnation: self.incarnation,
            last_heard: self.last_heard,
            last_heartbeat: self.last_heartbeat,
            interval: self.interval,
            members,
            advertised: self.advertised.members,
            msgs_in: self.msgs_in,
            msgs_out: self.msgs_out,
            deliveries: self.deliveries,
            gaps: self.gaps,
            duplicates: self.duplicates,
            resyncs: self.resyncs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::wire::{put_entry, roster_entries};

    fn digest(members: u32) -> RosterDigest {
        RosterDigest {
            members,
            ..RosterDigest::default()
        }
    }

    fn peer(now: Instant) -> Peer {
        Peer::new(4, 1, now, Duration::from_secs(1))
    }

    #[test]
    fn a_heartbeat_confirms_a_matching_roster_and_asks_for_a_differing_one() {
        let now = Instant::now();
        let mut p = peer(now);
        p.heartbeat(now, 250, digest(3), 17, true);
        assert_eq!(p.state, PeerState::Up);
        assert_eq!(p.interval, Duration::from_millis(250));
        assert_eq!((p.msgs_out, p.advertised.members), (17, 3));
        assert!(!p.sync_wanted);
        p.heartbeat(now, 250, digest(4), 18, false);
        assert_eq!(p.state, PeerState::Syncing);
        assert!(p.sync_wanted);
    }

    #[test]
    fn a_heartbeat_does_not_ask_while_a_roster_is_arriving() {
        let now = Instant::now();
        let mut p = peer(now);
        let bytes = {
            let mut b = Vec::new();
            put_entry(&mut b, 0x0400_0001, Some("a"));
            b
        };
        assert!(
            p.roster_part(9, 0, 2, digest(2), roster_entries(&bytes))
                .is_none()
        );
        p.heartbeat(now, 1000, digest(2), 0, false);
        assert!(!p.sync_wanted, "the roster being received will settle it");
    }

    #[test]
    fn roster_parts_in_order_make_one_snapshot_and_anything_else_breaks_it() {
        let now = Instant::now();
        let mut p = peer(now);
        let part = |id: u32| {
            let mut b = Vec::new();
            put_entry(&mut b, id, None);
            b
        };
        let (a, b, c) = (part(1), part(2), part(3));
        assert!(
            p.roster_part(5, 0, 3, digest(3), roster_entries(&a))
                .is_none()
        );
        assert!(
            p.roster_part(5, 1, 3, digest(3), roster_entries(&b))
                .is_none()
        );
        let done = p
            .roster_part(5, 2, 3, digest(3), roster_entries(&c))
            .expect("whole");
        let ids: Vec<u32> = done.entries.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(p.pending.is_none());

        // Part 2 after part 0: the snapshot is dropped and a new one wanted.
        assert!(
            p.roster_part(6, 0, 3, digest(3), roster_entries(&a))
                .is_none()
        );
        assert!(
            p.roster_part(6, 2, 3, digest(3), roster_entries(&c))
                .is_none()
        );
        assert!(p.pending.is_none() && p.sync_wanted);
        // A part of another snapshot, or without its beginning: nothing.
        p.sync_wanted = false;
        assert!(
            p.roster_part(7, 1, 3, digest(3), roster_entries(&b))
                .is_none()
        );
        assert!(p.pending.is_none() && !p.sync_wanted);
    }
}
