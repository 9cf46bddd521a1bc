//! The relay core: every decision, no sockets, no clock reads, RNG injected
//! (docs/architecture.md).
//!
//! Each responsibility is its own type with its own state, in its own file: `handshake`
//! (cookies, budget, pending RSA work), `session` (the table and liveness), `distribution`
//! (how a message reaches the others), `outbox` (datagrams waiting for the socket), `events`
//! (what the host is told), [`stats`] (the one table of names), `timer` (the wheel),
//! `ratelimit` (token buckets). [`RelayCore`] routes inputs between them.

mod distribution;
mod events;
mod fragments;
mod group;
mod handshake;
pub mod histogram;
mod outbox;
pub(crate) mod ratelimit;
mod relay;
mod session;
pub mod stats;
#[cfg(test)]
pub(crate) mod testkit;
pub(crate) mod timer;

use std::net::SocketAddr;
use std::time::Instant;

pub use crate::config::{Config, ConfigError, MAX_ADMISSION_TOKEN, valid_name, valid_token};
pub use events::RelayEvent;
pub use histogram::{Histogram, Histograms};
pub use relay::{
    FederationStatus, KickTarget, LOCAL_RECORD_BYTES, LocalRecord, MAX_REMOTE_MEMBERS,
    MAX_REMOTE_PER_RELAY, RelayCore, RemoteClient, RosterDigest, local_records, member_digest,
    relay_of,
};
pub use session::ClientInfo;
pub use stats::{DropReason, GAUGES, Metric, MetricKind, Stats};

/// Where a datagram came from, when, and how long it was: what every input check needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Input {
    pub(crate) now: Instant,
    pub(crate) from: SocketAddr,
    pub(crate) len: usize,
}
