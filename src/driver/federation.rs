//! The driver's half of federation: the NATS link on one more token of the relay's range,
//! wired to the [`Federation`] state machine and the core.
//!
//! NATS never stalls the relay: the link reads at most 256 KiB per event (then asks to be
//! called again at once), the socket is always drained (a server stalls publishers when a
//! subscriber stops reading), remote deliveries are sent whenever the send queue passes
//! [`FLUSH_AT`] while NATS input is parsed, and publishes queue in the NATS client
//! (bounded, oldest dropped) while the link is down.

use std::net::SocketAddr;
use std::time::Instant;

use log::{info, warn};
use mio::event::Event;
use mio::{Registry, Token};

use super::Relay;
use crate::core::RelayCore;
use crate::crypto::rng::Rng;
use crate::error::Error;
use crate::federation::{Federation, FederationConfig};
use crate::nats::{NatsClient, NatsEvent, NatsLink};

/// Send queued remote deliveries once this many bytes wait (while NATS input is parsed).
const FLUSH_AT: usize = 256 * 1024;

/// The federation and its NATS link.
#[derive(Debug)]
pub(crate) struct FedLink {
    pub(crate) fed: Federation,
    pub(crate) link: NatsLink,
}

impl FedLink {
    /// Set up (nothing is connected before the first `handle_timeout`, which the link asks
    /// for at once).
    pub(crate) fn open(
        cfg: &FederationConfig,
        mut rng: Rng,
        token: Token,
        now: Instant,
        unix_micros: u64,
    ) -> Result<FedLink, Error> {
        let seed = rng.next_u64();
        let fed = Federation::new(cfg, rng, now, unix_micros)?;
        let mut client = NatsClient::new(cfg.nats.clone(), now, seed).map_err(|e| {
            Error::Config(crate::config::ConfigError::new(
                "federation.nats",
                e.to_string(),
            ))
        })?;
        client.subscribe(fed.filter()).map_err(|e| {
            Error::Config(crate::config::ConfigError::new(
                "federation.cluster",
                e.to_string(),
            ))
        })?;
        info!(
            "federation: relay {} of cluster subject {}, incarnation {}, NATS {}",
            cfg.relay_id,
            fed.subject(),
            fed.incarnation(),
            cfg.nats
                .servers
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(FedLink {
            fed,
            link: NatsLink::new(client, token, now),
        })
    }

    pub(crate) fn owns(&self, token: Token) -> bool {
        self.link.owns(token)
    }
}

/// Hand NATS messages to the federation, sending deliveries as they pile up.
fn on_messages<'a>(
    fed: &'a mut Federation,
    core: &'a mut RelayCore,
    ucast: &'a mio::net::UdpSocket,
    now: Instant,
) -> impl FnMut(crate::nats::NatsMsg<'_>) + 'a {
    move |m| {
        fed.handle_message(now, m.payload, core);
        if core.send_queue_bytes() >= FLUSH_AT {
            super::send_queued(ucast, core);
        }
    }
}

impl Relay {
    /// A readiness event of the NATS link.
    pub(super) fn nats_event(&mut self, registry: &Registry, event: &Event, now: Instant) {
        let Relay {
            core,
            federation,
            ucast,
            ..
        } = self;
        let Some(FedLink { fed, link }) = federation else {
            return;
        };
        link.handle_event(
            registry,
            event,
            now,
            &mut on_messages(fed, core, ucast, now),
        );
        self.federate(registry, now);
        self.flush_transmits();
    }

    /// [`Relay::nats_event`] from plain flags.
    pub(super) fn nats_ready(
        &mut self,
        registry: &Registry,
        token: Token,
        readable: bool,
        writable: bool,
        now: Instant,
    ) {
        let Relay {
            core,
            federation,
            ucast,
            ..
        } = self;
        let Some(FedLink { fed, link }) = federation else {
            return;
        };
        let mut on_msg = on_messages(fed, core, ucast, now);
        link.handle_ready(registry, token, readable, writable, now, &mut on_msg);
    }

    /// The link's and the federation's timers.
    pub(super) fn nats_timeout(&mut self, registry: &Registry, now: Instant) {
        let Relay {
            core,
            federation,
            ucast,
            ..
        } = self;
        let Some(FedLink { fed, link }) = federation else {
            return;
        };
        if link.poll_timeout().is_some_and(|t| t <= now) {
            link.handle_timeout(registry, now, &mut on_messages(fed, core, ucast, now));
        }
        Self::link_events(fed, link, core, now);
        if fed.poll_timeout().is_some_and(|t| t <= now) {
            fed.handle_timeout(now, core, &mut |s, p| link.publish(registry, now, s, p));
        }
    }

    /// After a turn: the link's events, then publish what the core recorded and what is due;
    /// report the link's state to the core.
    pub(super) fn federate(&mut self, registry: &Registry, now: Instant) {
        let Relay {
            core, federation, ..
        } = self;
        let Some(FedLink { fed, link }) = federation else {
            return;
        };
        Self::link_events(fed, link, core, now);
        fed.flush(now, core, &mut |s, p| link.publish(registry, now, s, p));
        if fed.take_discard() {
            let n = link.client_mut().discard_pending();
            if n > 0 {
                warn!("federation: {n} queued publishes dropped (cut off from NATS)");
            }
        }
        link.flush(registry, now);
        core.set_federation_status(fed.status(link.client().pending_bytes()));
        let s = link.client().stats();
        let (connects, disconnects) = (s.connects, s.disconnects);
        let stats = core.stats_mut();
        stats.nats_connects = connects;
        stats.nats_disconnects = disconnects;
    }

    fn link_events(fed: &mut Federation, link: &mut NatsLink, core: &mut RelayCore, now: Instant) {
        while let Some(e) = link.client_mut().poll_event() {
            match e {
                NatsEvent::Connected { server } => {
                    info!("federation: NATS connected to {server}");
                    fed.link_up(now, server);
                }
                NatsEvent::Disconnected { server, reason } => {
                    warn!("federation: NATS link to {server} lost: {reason}");
                    fed.link_down(now);
                }
                NatsEvent::ConnectFailed { server, reason } => {
                    log::debug!("federation: NATS connect to {server} failed: {reason}");
                }
                NatsEvent::LameDuck { server } => {
                    info!("federation: NATS server {server} is in lame-duck mode; moving");
                }
                NatsEvent::ServerError {
                    server, message, ..
                } => {
                    warn!("federation: NATS server {server}: -ERR {message}");
                }
                NatsEvent::DiscoveredServers { added } => {
                    info!("federation: {added} more NATS servers discovered");
                }
            }
        }
        let _ = core;
    }

    /// Shutdown: publish BYE, write what the kernel takes, close the link.
    pub(super) fn nats_shutdown(&mut self, registry: &Registry, now: Instant) {
        let Relay {
            core, federation, ..
        } = self;
        let Some(FedLink { fed, link }) = federation else {
            return;
        };
        fed.shutdown(now, core, &mut |s, p| link.publish(registry, now, s, p));
        link.flush(registry, now);
        link.shutdown(registry, now);
    }

    /// The federation, when it is on (peers, link state).
    pub fn federation(&self) -> Option<&Federation> {
        self.federation.as_ref().map(|f| &f.fed)
    }

    /// The NATS client, when federation is on (its state, servers, counters).
    pub fn nats(&self) -> Option<&NatsClient> {
        self.federation.as_ref().map(|f| f.link.client())
    }
}
