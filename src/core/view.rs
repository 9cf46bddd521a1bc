//! What the host may read of a [`RelayCore`]: its settings, counters, gauges, clients and
//! histograms. Read-only accessors over the parts the core owns; nothing here changes state
//! (but [`RelayCore::histograms_mut`], the monitoring hook's stamp).

use std::time::Instant;

use super::RelayCore;
use crate::config::Config;
use crate::core::histogram::Histograms;
use crate::core::session::ClientInfo;
use crate::core::stats::{GAUGES, Metric, Stats};
use crate::crypto::key::ServerKey;

impl RelayCore {
    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Every counter.
    pub fn stats(&self) -> &Stats {
        &self.tel.stats
    }
    /// The relay's RSA key.
    pub fn key(&self) -> &ServerKey {
        &self.key
    }
    /// The distribution mode (`unicast` or `group`).
    pub fn mode(&self) -> &'static str {
        self.dist.mode()
    }
    /// The current group key epoch (0 in unicast mode).
    pub fn epoch(&self) -> u32 {
        self.dist.epoch()
    }
    /// Version-3 members that have not acknowledged the current group key.
    pub fn pending_acks(&self) -> usize {
        self.dist.pending_acks()
    }
    /// Registered clients now.
    pub fn client_count(&self) -> usize {
        self.sessions.len()
    }
    /// Bytes held by incomplete reassemblies.
    pub fn reassembly_bytes(&self) -> usize {
        self.fragments.bytes()
    }
    /// Incomplete reassemblies.
    pub fn reassemblies_in_flight(&self) -> usize {
        self.fragments.in_flight()
    }
    /// Registrations waiting for their RSA decryption.
    pub fn pending_registrations(&self) -> usize {
        self.handshake.pending_len()
    }
    /// Has [`RelayCore::shutdown`] run?
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }
    /// Events the host did not drain in time (the queue holds 1024).
    pub fn events_dropped(&self) -> u64 {
        self.events.dropped()
    }
    /// Every registered client.
    pub fn clients(&self) -> impl Iterator<Item = ClientInfo> + '_ {
        self.sessions.iter().map(|(_, s)| s.info())
    }
    /// The [`GAUGES`] with their values at `now`.
    pub fn gauges(&self, now: Instant) -> impl Iterator<Item = (&'static Metric, u64)> + '_ {
        let values = [
            now.saturating_duration_since(self.start).as_secs(),
            self.sessions.len() as u64,
            self.fragments.bytes() as u64,
            self.fragments.in_flight() as u64,
            self.handshake.pending_len() as u64,
            self.out.queued_bytes() as u64,
            u64::from(self.dist.mode() == "group"),
            u64::from(self.dist.epoch()),
            self.dist.pending_acks() as u64,
            self.dist.backlog() as u64,
            self.remote_client_count() as u64,
            self.federation_status().map_or(0, |f| f.peers_up),
            self.federation_status()
                .map_or(0, |f| u64::from(f.nats_connected)),
            self.federation_status().map_or(0, |f| f.nats_pending_bytes),
        ];
        GAUGES.iter().zip(values)
    }
    /// Handshake latency and message-size histograms (monitoring hook).
    pub fn histograms(&self) -> &Histograms {
        &self.hist
    }
    /// For the host to stamp a registration's end (monitoring hook; see
    /// [`Histograms::stamp_registration`]).
    pub fn histograms_mut(&mut self) -> &mut Histograms {
        &mut self.hist
    }
}
