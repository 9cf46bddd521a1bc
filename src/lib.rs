//! mcrelay: a secure, manageable UDP multicast relay.
//!
//! Clients reach the relay through a multicast group; after a hybrid handshake (address
//! cookie, the relay's RSA key, a fresh Fernet key under RSA-OAEP-SHA256) every message is a
//! Fernet token, which the relay opens and distributes to the other members
//! (docs/protocol.md). Everything runs in one single-threaded mio loop that owns all state
//! without locks.
//!
//! # Layers (docs/architecture.md)
//!
//! * [`Relay`] (module [`driver`]): the mio driver, embeddable in a host's own `Poll`
//!   (docs/embedding.md). Build it with [`Relay::builder`].
//! * [`RelayCore`] (module [`core`]): every decision, sans-IO: `now` and bytes in,
//!   datagrams, events and deadlines out. Tests and fuzzers drive it with a virtual clock.
//! * [`control`]: the control-port commands, parsed and executed against the core.
//! * [`proto`]: machinery the relay and the [`client`] share (channel, reassembly, replay).
//! * [`wire`] (the TLV codec) and [`crypto`] (Fernet, RSA key, cookies, CSPRNG).
//!
//! # Embedding
//!
//! ```no_run
//! use std::time::Instant;
//! use mcrelay::{Relay, ServerKey};
//! use mcrelay::mio::{Events, Poll, Token};
//!
//! let mut poll = Poll::new()?;
//! let key = ServerKey::generate(2048)?;
//! let mut relay = Relay::builder(key).build(poll.registry(), Token(100), Instant::now())?;
//! let mut events = Events::with_capacity(256);
//! loop {
//!     let timeout = relay.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
//!     poll.poll(&mut events, timeout)?;
//!     for ev in events.iter() {
//!         if relay.owns(ev.token()) {
//!             relay.handle_event(poll.registry(), ev, Instant::now());
//!         }
//!     }
//!     relay.handle_timeout(poll.registry(), Instant::now());
//!     while let Some(event) = relay.poll_event() {
//!         println!("{event:?}");
//!     }
//! #   break;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `unsafe` is denied everywhere but two private modules, each of which allows it for one
//! reason: `driver::batch` (`recvmmsg`/`sendmmsg`) and `crypto::multi` (AES-NI and SHA-NI
//! intrinsics); every `unsafe` block there carries a `SAFETY:` comment.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

/// The mio this crate is built against: register the relay with a `Registry` of this very
/// version (mio 1.x).
pub use mio;

pub mod client;
mod config;
pub mod control;
pub mod core;
pub mod crypto;
pub mod driver;
mod error;
pub mod federation;
pub mod monitor;
pub mod nats;
pub mod proto;
pub mod wire;

pub use config::{
    Config, ConfigError, Distribution, GroupConfig, MAX_CONTROL_LIMIT, MAX_MONITOR_LIMIT,
    MonitorSettings, NetConfig, valid_bearer_token,
};
pub use core::{ClientInfo, DropReason, KickTarget, RelayCore, RelayEvent, Stats};
pub use crypto::key::ServerKey;
pub use crypto::rng::Rng;
pub use driver::{Relay, RelayBuilder, TokenRange};
pub use error::Error;
pub use federation::{Federation, FederationConfig};
