//! The monitor server's settings and its start-up errors.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::http::Limits;

/// Settings of the monitor's HTTP server.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Listen address. A non-loopback address requires `token`.
    pub listen: SocketAddr,
    /// When set, every request must carry `Authorization: Bearer <token>` (token68 characters).
    pub token: Option<String>,
    /// Connections at once (1..=1024); one more is answered 503 and closed.
    pub max_conns: usize,
    /// Time to send a complete request head: from the connection for the first request, from
    /// its first byte for later ones. Past it: 408 and close.
    pub request_timeout: Duration,
    /// Time a kept-alive connection may stay idle between requests, and a client may go
    /// without reading while responses are queued for it. Past it: close.
    pub idle_timeout: Duration,
    /// Output queued per connection past which no further request of that connection is
    /// answered (nor read) until the client reads. The queue stays below this plus one
    /// response.
    pub output_cap: usize,
    /// Request head limits.
    pub limits: Limits,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5009)),
            token: None,
            max_conns: 8,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            output_cap: 64 * 1024,
            limits: Limits::default(),
        }
    }
}

/// Why the monitor could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum MonitorError {
    /// A [`MonitorConfig`] field (or the token base) is invalid.
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `listen` is not a loopback address and there is no `token`.
    NonLoopbackWithoutToken {
        /// The address asked for.
        listen: SocketAddr,
    },
    /// A socket call failed.
    Io {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl MonitorError {
    /// The configuration field at fault, if the error is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            MonitorError::Config { field, .. } => Some(field),
            MonitorError::NonLoopbackWithoutToken { .. } => Some("listen"),
            MonitorError::Io { .. } => None,
        }
    }
}

impl fmt::Display for MonitorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MonitorError::Config { field, reason } => write!(f, "monitor {field}: {reason}"),
            MonitorError::NonLoopbackWithoutToken { listen } => write!(
                f,
                "monitor listen: refusing to serve HTTP on non-loopback {listen} without a \
                 bearer token (set a token, or listen on 127.0.0.1)"
            ),
            MonitorError::Io { what, source } => write!(f, "monitor: {what}: {source}"),
        }
    }
}

impl std::error::Error for MonitorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MonitorError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
