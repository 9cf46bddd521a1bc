//! What the client can be told: [`NatsConfig`], its credentials and its one validation point.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

#[cfg(doc)]
use super::NatsError;
use super::servers::MAX_SERVERS;

/// Longest client name.
pub const MAX_NAME_LEN: usize = 256;
/// Longest token, user or password.
pub const MAX_CREDENTIAL_LEN: usize = 1024;
/// Longest back-off or connect timeout accepted (keeps the arithmetic small).
const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Credentials sent in `CONNECT`. `Debug` does not print secrets.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// `auth_token`.
    Token(String),
    /// `user` and `pass`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// Everything the client can be told. Check it with [`NatsConfig::validate`] (the client's
/// constructor does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Servers to connect to, tried in this order (IP literals: the client does no DNS).
    pub servers: Vec<SocketAddr>,
    /// Client name shown by the server (monitoring).
    pub name: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// Our own PING to the server, this often once the link is up.
    pub ping_interval: Duration,
    /// PINGs left unanswered at a ping tick that make the link dead.
    pub max_pings_out: u32,
    /// From the TCP connect to the handshake's PONG.
    pub connect_timeout: Duration,
    /// Back-off after the first failed attempt (doubles per failure, with jitter).
    pub reconnect_base: Duration,
    /// Back-off ceiling.
    pub reconnect_max: Duration,
    /// On lame-duck notice, leave the server after a random delay in `[0, this]`.
    pub lame_duck_jitter: Duration,
    /// Publish queue (encoded bytes) while disconnected or while the transmit buffer is full;
    /// the oldest queued publishes are dropped (counted) to make room. A single publish larger
    /// than this is queued alone. 0: no queue (such publishes fail with
    /// [`NatsError::QueueFull`]).
    pub max_pending_bytes: usize,
    /// Bytes of publishes handed to the transmit buffer before new ones wait in the queue.
    pub max_transmit_bytes: usize,
    /// Add servers from `connect_urls` to the list.
    pub discover: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: Vec::new(),
            name: "mcrelay".into(),
            auth: NatsAuth::None,
            ping_interval: Duration::from_secs(10),
            max_pings_out: 2,
            connect_timeout: Duration::from_secs(2),
            reconnect_base: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            lame_duck_jitter: Duration::from_secs(2),
            max_pending_bytes: 2 << 20,
            max_transmit_bytes: 256 * 1024,
            discover: true,
        }
    }
}

/// A configuration field that is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfigError {
    /// The field of [`NatsConfig`].
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl fmt::Display for NatsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nats config: {} {}", self.field, self.problem)
    }
}

impl std::error::Error for NatsConfigError {}

fn bad(field: &'static str, problem: &'static str) -> Result<(), NatsConfigError> {
    Err(NatsConfigError { field, problem })
}

fn credential(field: &'static str, s: &str, empty_ok: bool) -> Result<(), NatsConfigError> {
    if s.is_empty() && !empty_ok {
        return bad(field, "is empty");
    }
    if s.len() > MAX_CREDENTIAL_LEN {
        return bad(field, "is longer than 1024 bytes");
    }
    Ok(())
}

impl NatsConfig {
    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), NatsConfigError> {
        if self.servers.is_empty() {
            return bad("servers", "is empty");
        }
        if self.servers.len() > MAX_SERVERS {
            return bad("servers", "has more than 64 entries");
        }
        for (i, s) in self.servers.iter().enumerate() {
            if s.ip().is_unspecified() || s.port() == 0 {
                return bad("servers", "has an unspecified address or port 0");
            }
            if self.servers.get(..i).unwrap_or_default().contains(s) {
                return bad("servers", "has a duplicate");
            }
        }
        if self.name.len() > MAX_NAME_LEN {
            return bad("name", "is longer than 256 bytes");
        }
        match &self.auth {
            NatsAuth::None => {}
            NatsAuth::Token(t) => credential("auth", t, false)?,
            NatsAuth::UserPassword { user, password } => {
                credential("auth", user, false)?;
                credential("auth", password, true)?;
            }
        }
        let durations = [
            ("ping_interval", self.ping_interval),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_base", self.reconnect_base),
            ("reconnect_max", self.reconnect_max),
        ];
        for (field, d) in durations {
            if d.is_zero() {
                return bad(field, "is zero");
            }
            if d > MAX_DELAY {
                return bad(field, "is longer than a day");
            }
        }
        if self.lame_duck_jitter > MAX_DELAY {
            return bad("lame_duck_jitter", "is longer than a day");
        }
        if self.reconnect_max < self.reconnect_base {
            return bad("reconnect_max", "is shorter than reconnect_base");
        }
        if self.max_pings_out == 0 || self.max_pings_out > 1000 {
            return bad("max_pings_out", "is not in 1..=1000");
        }
        if self.max_pending_bytes > 1 << 30 {
            return bad("max_pending_bytes", "is over 1 GiB");
        }
        if self.max_transmit_bytes < 4096 || self.max_transmit_bytes > 1 << 30 {
            return bad("max_transmit_bytes", "is not in 4 KiB..=1 GiB");
        }
        Ok(())
    }
}
