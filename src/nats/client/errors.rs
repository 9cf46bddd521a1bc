//! Why a call was refused ([`NatsError`]) and why a link ended ([`DisconnectReason`]).

use std::fmt;

#[cfg(doc)]
use super::NatsClient;
use super::subs::MAX_SUBSCRIPTIONS;
use crate::nats::json::JsonError;
use crate::nats::proto::{ProtoError, SubjectError};

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsError {
    /// The subject, reply subject or queue group is not valid (nothing was sent).
    InvalidSubject(SubjectError),
    /// Larger than the server's `max_payload` (counted in `dropped_max_payload`).
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The message could not be written now and `max_pending_bytes` is 0 (no queue; counted
    /// in `dropped_queue_full`).
    QueueFull {
        /// Encoded size.
        frame: usize,
        /// `max_pending_bytes`.
        max: usize,
    },
    /// [`MAX_SUBSCRIPTIONS`] reached.
    TooManySubscriptions,
    /// [`NatsClient::close`] was called.
    Closed,
}

impl fmt::Display for NatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsError::InvalidSubject(e) => write!(f, "invalid subject: {e}"),
            NatsError::PayloadTooLarge { len, max } => {
                write!(
                    f,
                    "payload of {len} bytes over the server's max_payload {max}"
                )
            }
            NatsError::QueueFull { frame, max } => {
                write!(
                    f,
                    "message of {frame} bytes does not fit the {max}-byte queue"
                )
            }
            NatsError::TooManySubscriptions => {
                write!(f, "more than {MAX_SUBSCRIPTIONS} subscriptions")
            }
            NatsError::Closed => f.write_str("client closed"),
        }
    }
}

impl std::error::Error for NatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NatsError::InvalidSubject(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a link ended (or never came up).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The host reported EOF or a socket error (including a refused connect).
    Io,
    /// No handshake PONG within `connect_timeout` of the connect.
    ConnectTimeout,
    /// `max_pings_out` PINGs unanswered.
    StaleConnection,
    /// A `-ERR` that closes the connection.
    ServerError(String),
    /// The byte stream is not valid NATS.
    Protocol(ProtoError),
    /// An operation in a state where it makes no sense (e.g. MSG before INFO).
    Unexpected(&'static str),
    /// The `INFO` JSON is bad.
    BadInfo(JsonError),
    /// The server requires TLS, which this client does not speak.
    TlsRequired,
    /// The server entered lame-duck mode; the client moved away.
    LameDuck,
    /// The server stopped reading: the transmit buffer passed its hard limit.
    OutputOverflow,
    /// [`NatsClient::close`].
    Closed,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Io => f.write_str("connection closed or failed"),
            DisconnectReason::ConnectTimeout => f.write_str("connect timeout"),
            DisconnectReason::StaleConnection => f.write_str("stale connection (PINGs unanswered)"),
            DisconnectReason::ServerError(m) => write!(f, "server error: {m}"),
            DisconnectReason::Protocol(e) => write!(f, "protocol error: {e}"),
            DisconnectReason::Unexpected(w) => write!(f, "unexpected: {w}"),
            DisconnectReason::BadInfo(e) => write!(f, "{e}"),
            DisconnectReason::TlsRequired => f.write_str("server requires TLS (not supported)"),
            DisconnectReason::LameDuck => f.write_str("server in lame-duck mode"),
            DisconnectReason::OutputOverflow => f.write_str("server not reading (output overflow)"),
            DisconnectReason::Closed => f.write_str("closed"),
        }
    }
}
