//! What a relay needs to join a cluster, and its one validation point.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::{MAX_HEARTBEAT, MIN_HEARTBEAT, wire};
use crate::config::ConfigError;
use crate::crypto::fernet::FernetKey;
use crate::nats::NatsConfig;

/// Everything a relay needs to join a cluster (`NetConfig::federation`).
#[derive(Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// This relay's id, 1..=255, unique in the cluster: the high byte of its client ids.
    pub relay_id: u8,
    /// The cluster's name: one NATS subject token (1-64 bytes of `A-Z a-z 0-9 _ -`).
    pub cluster: String,
    /// The cluster key (Fernet): seals every federation message.
    pub key: FernetKey,
    /// How often this relay says it is alive (default 1 s); a relay silent for three
    /// intervals is lost.
    pub heartbeat: Duration,
    /// The NATS client: servers, credentials, timers ([`FederationConfig::new`] sets ones
    /// suited to federation).
    pub nats: NatsConfig,
}

impl fmt::Debug for FederationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederationConfig")
            .field("relay_id", &self.relay_id)
            .field("cluster", &self.cluster)
            .field("key", &"<redacted>")
            .field("heartbeat", &self.heartbeat)
            .field("nats", &self.nats)
            .finish()
    }
}

impl FederationConfig {
    /// Relay `relay_id` of `cluster`, sealing with `key`, over the NATS `servers`. The NATS
    /// client pings every 2 s (a silently dead link is found within ~4-6 s), gives a connect
    /// 1 s, and backs off from 50 ms to 2 s between failed attempts, so that a relay whose
    /// server dies is on another within its first heartbeats.
    pub fn new(relay_id: u8, cluster: &str, key: FernetKey, servers: Vec<SocketAddr>) -> Self {
        FederationConfig {
            relay_id,
            cluster: cluster.to_string(),
            key,
            heartbeat: Duration::from_secs(1),
            nats: NatsConfig {
                servers,
                name: format!("mcrelay-{cluster}-{relay_id}"),
                ping_interval: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(1),
                reconnect_base: Duration::from_millis(50),
                reconnect_max: Duration::from_secs(2),
                ..NatsConfig::default()
            },
        }
    }

    /// Check every field (and the NATS client's); the error names the first bad one
    /// (`federation.relay_id`, `federation.cluster`, `federation.heartbeat`,
    /// `federation.nats.<field>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.relay_id == 0 {
            return Err(ConfigError::new("federation.relay_id", "must be 1..=255"));
        }
        if !wire::valid_cluster(&self.cluster) {
            return Err(ConfigError::new(
                "federation.cluster",
                "must be 1-64 characters of A-Z a-z 0-9 _ -",
            ));
        }
        if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&self.heartbeat) {
            return Err(ConfigError::new(
                "federation.heartbeat",
                "must be between 100ms and 60s",
            ));
        }
        self.nats.validate().map_err(|e| {
            let field = match e.field {
                "servers" => "federation.nats.servers",
                "auth" => "federation.nats.auth",
                "name" => "federation.nats.name",
                _ => "federation.nats",
            };
            ConfigError::new(field, e.problem)
        })
    }
}
