//! What a relay knows of each other relay of its cluster: liveness, incarnation, the replay
//! window of its sequence numbers, a roster snapshot being received, counters.

use std::time::{Duration, Instant};

use crate::core::RosterDigest;
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
