//! Monitoring over HTTP: a small HTTP/1.1 responder for Prometheus scrapes, health checks
//! and JSON views, driven by the host's mio loop beside the relay (docs/monitoring.md).
//!
//! - [`http`]: the request-head parser and response writer (pure, fuzzable);
//! - [`json`]: a tiny JSON writer into a reused `String`;
//! - [`MonitorServer`]: the listener and connections on the host's `Registry`. It does not
//!   know the relay: it yields [`Request`]s and the host answers each with a [`Response`].
//!
//! ```no_run
//! use std::time::Instant;
//! use mcrelay::monitor::{MonitorConfig, MonitorServer, Response};
//!
//! let mut poll = mio::Poll::new()?;
//! let mut events = mio::Events::with_capacity(64);
//! let mut mon = MonitorServer::new(poll.registry(), MonitorConfig::default(), 100, Instant::now())?;
//! loop {
//!     let timeout = mon.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
//!     poll.poll(&mut events, timeout)?;
//!     let now = Instant::now();
//!     for ev in events.iter() {
//!         if mon.owns(ev.token()) {
//!             mon.handle_event(poll.registry(), ev, now);
//!         }
//!     }
//!     while let Some((id, req)) = mon.poll_request() {
//!         let resp = match req.path.as_str() {
//!             "/healthz" => Response::text(200, "ok\n"),
//!             _ => Response::text(404, "not found\n"),
//!         };
//!         mon.respond(id, &resp);
//!     }
//!     mon.handle_timeout(poll.registry(), Instant::now());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod conn;
pub mod http;
pub mod json;
mod server;

pub use config::{MonitorConfig, MonitorError};
pub use http::{Limits, Method, ParseError, Request, Response, Version};
pub use server::{
    ACCEPTS_PER_EVENT, ConnId, LINGER, MAX_AUTH_FAILURES, MonitorServer, MonitorStats, READ_BUDGET,
    REQUESTS_PER_ACTIVATION, SEND_BUFFER,
};
