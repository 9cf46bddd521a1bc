//! A small NATS core-protocol client: sans-IO state machine ([`NatsClient`]) plus a mio
//! adapter ([`NatsLink`]). It is meant to carry federation traffic between relays.
//!
//! # Why in-house
//!
//! * `async-nats` needs tokio and spawns tasks: a second runtime beside our one mio loop.
//! * the sync `nats` crate is deprecated and spawns threads.
//! * the one sans-IO crate, `watermelon-proto`, pulls about 60 crates into a 2 MiB static
//!   binary.
//!
//! The core protocol a relay needs (INFO, CONNECT, PUB, SUB, UNSUB, MSG, PING/PONG, -ERR)
//! is small: a line parser, a little JSON, and a state machine. What is implemented and
//! what is not (TLS, headers, JetStream, DNS names) is in `docs/nats-client.md`.
//!
//! # Shape
//!
//! Like [`crate::core::RelayCore`]: the client never touches a socket or reads the clock;
//! `now` is passed into every call, jitter comes from a seed the host injects, every buffer
//! and queue has a cap and every drop is counted in [`NatsStats`]. `handle_*` take input,
//! `poll_*` give output.
//!
//! # Call order (a host driving [`NatsClient`] itself)
//!
//! 1. [`NatsClient::poll_connect`]: when it returns an address, open a non-blocking TCP
//!    connection to it; report [`NatsClient::handle_connected`] when it is established or
//!    [`NatsClient::handle_disconnected`] when it fails.
//! 2. For bytes read: [`NatsClient::handle_input`] (messages come out through its callback);
//!    on EOF or a socket error: [`NatsClient::handle_disconnected`].
//! 3. Write [`NatsClient::transmit`], then [`NatsClient::advance_transmit`] by what the
//!    socket took.
//! 4. If [`NatsClient::wants_close`]: close the socket, then
//!    [`NatsClient::handle_disconnected`].
//! 5. When [`NatsClient::poll_timeout`] passes: [`NatsClient::handle_timeout`] (harmless
//!    early), then back to 1.
//! 6. Drain [`NatsClient::poll_event`] for connects, disconnects, lame duck and server errors.
//!
//! [`NatsLink`] does 1-5 on a mio `TcpStream` with one token of the host's `Registry`:
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use mcrelay::nats::{NatsClient, NatsConfig, NatsLink};
//! use mio::{Events, Poll, Token};
//!
//! let mut poll = Poll::new()?;
//! let now = Instant::now();
//! let cfg = NatsConfig { servers: vec!["127.0.0.1:4222".parse()?], ..NatsConfig::default() };
//! let mut link = NatsLink::new(NatsClient::new(cfg, now, 42)?, Token(7), now);
//! link.client_mut().subscribe("relay.>")?;
//! let mut events = Events::with_capacity(64);
//! let mut on_msg = |m: mcrelay::nats::NatsMsg<'_>| println!("{} {} bytes", m.subject, m.payload.len());
//! loop {
//!     let timeout = link.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
//!     poll.poll(&mut events, timeout.or(Some(Duration::from_secs(1))))?;
//!     let now = Instant::now();
//!     for ev in events.iter() {
//!         if link.owns(ev.token()) {
//!             link.handle_event(poll.registry(), ev, now, &mut on_msg);
//!         }
//!     }
//!     if link.poll_timeout().is_some_and(|t| t <= now) {
//!         link.handle_timeout(poll.registry(), now, &mut on_msg);
//!     }
//!     while let Some(e) = link.client_mut().poll_event() {
//!         println!("{e:?}");
//!     }
//!     # break;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Messages are handed to the callback as borrowed [`NatsMsg`]s while input is parsed; the
//! callback cannot call back into the client (copy what you need, publish afterwards).
#![warn(missing_docs, unreachable_pub)]

mod client;
mod json;
mod link;
mod proto;

pub use client::{
    DisconnectReason, LAME_DUCK_DRAIN, MAX_CREDENTIAL_LEN, MAX_EVENTS, MAX_NAME_LEN, MAX_SERVERS,
    MAX_SUBSCRIPTIONS, NatsAuth, NatsClient, NatsConfig, NatsConfigError, NatsError, NatsEvent,
    NatsMsg, NatsState, NatsStats, STABLE_LINK,
};
pub use json::{
    JsonError, MAX_CONNECT_URLS, MAX_DEPTH, ServerInfo, parse_info, parse_ip_literal,
    write_connect, write_string,
};
pub use link::{NatsLink, READ_BUDGET, READ_CHUNK};
pub use proto::{
    ABS_MAX_PAYLOAD, DEFAULT_MAX_PAYLOAD, MAX_CONTROL_LINE, MAX_INFO_LINE, MAX_SUBJECT_LEN, PING,
    PONG, Parser, ProtoError, RawMsg, ServerOp, SubjectError, encode_pub, encode_pub_header,
    encode_sub, encode_unsub, pub_header_len, validate_queue, validate_subject,
};
