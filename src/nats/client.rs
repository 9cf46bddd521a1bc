//! [`NatsClient`]: the connection state machine. No sockets, no clock reads, RNG seeded by
//! the caller. See the [module docs](super) for the call order and `docs/nats-client.md` for
//! the states, timers and bounds.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::json::{self, JsonError, ServerInfo};
use super::proto::{
    self, ABS_MAX_PAYLOAD, DEFAULT_MAX_PAYLOAD, MAX_SUBJECT_LEN, Parser, ProtoError, RawMsg,
    ServerOp, SubjectError,
};

/// Most servers (configured plus discovered) the client keeps.
pub const MAX_SERVERS: usize = 64;
/// Most subscriptions at once.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Events kept for [`NatsClient::poll_event`]; older ones are dropped (counted) beyond it.
pub const MAX_EVENTS: usize = 64;
/// Longest client name.
pub const MAX_NAME_LEN: usize = 256;
/// Longest token, user or password.
pub const MAX_CREDENTIAL_LEN: usize = 1024;
/// Longest wait, after a lame-duck move was due, for the transmit buffer to drain to the old
/// server before the link is closed anyway.
pub const LAME_DUCK_DRAIN: Duration = Duration::from_secs(1);
/// A link must stay up this long for its loss to earn an immediate reconnect; a shorter one
/// counts as a failed attempt (a server that accepts and drops cannot make us spin).
pub const STABLE_LINK: Duration = Duration::from_secs(1);
/// Control operations (PONG, PING, SUB, UNSUB) may exceed `max_transmit_bytes` by this much
/// before a server that does not read is given up on.
const CONTROL_HEADROOM: usize = 64 * 1024;
/// Bytes of one `PUB` frame beyond its payload, at most.
const FRAME_OVERHEAD: usize = 2 * MAX_SUBJECT_LEN + 32;
/// Upper bound of the handshake (CONNECT with escaped credentials, every SUB, PING).
const MAX_HANDSHAKE: usize = 6 * (MAX_NAME_LEN + 2 * MAX_CREDENTIAL_LEN)
    + 512
    + MAX_SUBSCRIPTIONS * (2 * MAX_SUBJECT_LEN + 32);
/// Queue capacity kept once it is empty again.
const PENDING_KEEP: usize = 64 * 1024;
/// The transmit buffer is compacted once this much of it has been written.
const COMPACT_AT: usize = 64 * 1024;
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

/// Something the host may want to know or log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsEvent {
    /// Handshake complete (PONG received): subscriptions are active, queued publishes flow.
    Connected {
        /// The server.
        server: SocketAddr,
    },
    /// An attempt failed before the handshake completed.
    ConnectFailed {
        /// The server.
        server: SocketAddr,
        /// Why.
        reason: DisconnectReason,
    },
    /// An established link ended.
    Disconnected {
        /// The server.
        server: SocketAddr,
        /// Why.
        reason: DisconnectReason,
    },
    /// The server announced lame-duck mode; the client will move to another server.
    LameDuck {
        /// The server.
        server: SocketAddr,
    },
    /// The server sent `-ERR`.
    ServerError {
        /// The server.
        server: SocketAddr,
        /// Its message (quotes removed).
        message: String,
        /// The client closes the link for it.
        fatal: bool,
    },
    /// `connect_urls` added servers to the list.
    DiscoveredServers {
        /// How many were new.
        added: usize,
    },
}

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsState {
    /// No link; waiting for the next attempt ([`NatsClient::poll_connect`]).
    Waiting,
    /// TCP connect in progress.
    Connecting,
    /// TCP up; INFO, CONNECT, PING/PONG in progress.
    Handshaking,
    /// Link up.
    Connected,
    /// The client wants the host to close the socket ([`NatsClient::wants_close`]).
    Closing,
    /// [`NatsClient::close`] completed: nothing more will happen.
    Closed,
}

/// Counters. Monotonic; never reset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsStats {
    /// Messages delivered to the host.
    pub msgs_in: u64,
    /// Payload bytes delivered to the host.
    pub bytes_in: u64,
    /// Publishes handed to the transmit buffer.
    pub msgs_out: u64,
    /// Payload bytes of those.
    pub bytes_out: u64,
    /// Connection attempts started.
    pub connect_attempts: u64,
    /// Attempts that ended before the handshake completed.
    pub connect_failures: u64,
    /// Handshakes completed.
    pub connects: u64,
    /// Handshakes completed after the first.
    pub reconnects: u64,
    /// Established links that ended.
    pub disconnects: u64,
    /// Our PINGs sent (handshake PINGs included).
    pub pings_sent: u64,
    /// PONGs received.
    pub pongs_received: u64,
    /// Ping ticks that found the previous PING unanswered.
    pub pongs_missed: u64,
    /// Links declared dead for unanswered PINGs.
    pub stale_connections: u64,
    /// Server PINGs answered.
    pub pings_answered: u64,
    /// Queued publishes dropped to make room (oldest first), or refused for want of a queue.
    pub dropped_queue_full: u64,
    /// Publishes refused or dropped for exceeding the server's `max_payload`.
    pub dropped_max_payload: u64,
    /// Messages for a subscription we no longer have.
    pub dropped_unknown_sid: u64,
    /// Messages whose subject or reply is not UTF-8.
    pub dropped_bad_subject: u64,
    /// HMSG deliveries (headers were not asked for).
    pub dropped_hmsg: u64,
    /// Transmit bytes not yet written when a link ended.
    pub lost_transmit_bytes: u64,
    /// `-ERR` received.
    pub server_errors: u64,
    /// `-ERR` that closed the link.
    pub fatal_server_errors: u64,
    /// Protocol or INFO errors.
    pub protocol_errors: u64,
    /// Links closed because the server stopped reading.
    pub output_overflows: u64,
    /// Servers added from `connect_urls`.
    pub discovered_servers: u64,
    /// `connect_urls` entries that were not IP literals (counted per INFO).
    pub skipped_urls: u64,
    /// Discovered servers not added because the list was full.
    pub servers_over_cap: u64,
    /// Lame-duck notices.
    pub lame_duck: u64,
    /// Events dropped because the host did not poll them.
    pub events_dropped: u64,
}

/// A message delivered to the host; everything borrows the input (or the parser's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatsMsg<'a> {
    /// The subject it was published to.
    pub subject: &'a str,
    /// Our subscription id ([`NatsClient::subscribe`]).
    pub sid: u64,
    /// The publisher's reply subject.
    pub reply: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
}

#[derive(Debug, Clone)]
struct Subscription {
    subject: String,
    queue: Option<String>,
}

#[derive(Debug, Clone)]
enum Conn {
    Waiting {
        at: Instant,
    },
    Connecting {
        deadline: Instant,
    },
    AwaitInfo {
        deadline: Instant,
    },
    AwaitPong {
        deadline: Instant,
    },
    Up {
        since: Instant,
        next_ping: Instant,
        pings_out: u32,
        lame_duck_at: Option<Instant>,
        draining_until: Option<Instant>,
    },
    Closing {
        reason: DisconnectReason,
        /// `Some(since)` when the link had completed its handshake.
        up_since: Option<Instant>,
    },
    Closed,
}

/// The sans-IO NATS client. See the [module docs](super).
pub struct NatsClient {
    cfg: NatsConfig,
    conn: Conn,
    servers: Vec<SocketAddr>,
    /// Index into `servers` of the server in use, or tried last.
    current: usize,
    /// Consecutive failed attempts (a link shorter than [`STABLE_LINK`] counts as one).
    failures: u32,
    rng: u64,
    parser: Parser,
    info: Option<ServerInfo>,
    /// The latest `max_payload` a server announced.
    max_payload: usize,
    subs: BTreeMap<u64, Subscription>,
    next_sid: u64,
    out: Vec<u8>,
    out_pos: usize,
    pending: VecDeque<u8>,
    /// (frame bytes, payload bytes) of each queued publish, oldest first.
    pending_frames: VecDeque<(usize, usize)>,
    scratch: Vec<u8>,
    events: VecDeque<NatsEvent>,
    stats: NatsStats,
}

/// No buffers: the transmit buffer holds the CONNECT line, credentials included.
impl fmt::Debug for NatsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsClient")
            .field("state", &self.state())
            .field("server", &self.server_addr())
            .field("servers", &self.servers.len())
            .field("subscriptions", &self.subs.len())
            .field("transmit_bytes", &self.held())
            .field("pending_bytes", &self.pending.len())
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn is_fatal(message: &str) -> bool {
    let m = message.trim().to_ascii_lowercase();
    !(m.starts_with("invalid subject")
        || m.starts_with("invalid publish subject")
        || m.starts_with("permissions violation"))
}

impl NatsClient {
    /// A client that will try its first server at once. `seed` drives the jitter.
    pub fn new(cfg: NatsConfig, now: Instant, seed: u64) -> Result<Self, NatsConfigError> {
        cfg.validate()?;
        Ok(NatsClient {
            servers: cfg.servers.clone(),
            cfg,
            conn: Conn::Waiting { at: now },
            current: 0,
            failures: 0,
            rng: seed,
            parser: Parser::new(),
            info: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
            subs: BTreeMap::new(),
            next_sid: 1,
            out: Vec::new(),
            out_pos: 0,
            pending: VecDeque::new(),
            pending_frames: VecDeque::new(),
            scratch: Vec::new(),
            events: VecDeque::new(),
            stats: NatsStats::default(),
        })
    }

    // ------------------------------------------------------------ connection lifecycle

    /// If an attempt is due, the server to open a TCP connection to now; then report
    /// [`handle_connected`](Self::handle_connected) or
    /// [`handle_disconnected`](Self::handle_disconnected).
    #[must_use]
    pub fn poll_connect(&mut self, now: Instant) -> Option<SocketAddr> {
        let Conn::Waiting { at } = self.conn else {
            return None;
        };
        if now < at {
            return None;
        }
        if self.current >= self.servers.len() {
            self.current = 0;
        }
        let server = *self.servers.get(self.current)?;
        self.conn = Conn::Connecting {
            deadline: now + self.cfg.connect_timeout,
        };
        self.stats.connect_attempts += 1;
        Some(server)
    }

    /// The TCP connection from [`poll_connect`](Self::poll_connect) is established.
    pub fn handle_connected(&mut self, _now: Instant) {
        if let Conn::Connecting { deadline } = self.conn {
            self.conn = Conn::AwaitInfo { deadline };
            self.parser.reset();
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// The socket is gone: EOF, an error, a refused connect, or the host closed it after
    /// [`wants_close`](Self::wants_close). Schedules the next attempt.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let (reason, up_since) = match &self.conn {
            Conn::Waiting { .. } | Conn::Closed => return,
            Conn::Connecting { .. } | Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } => {
                (DisconnectReason::Io, None)
            }
            Conn::Up { since, .. } => (DisconnectReason::Io, Some(*since)),
            Conn::Closing { reason, up_since } => (reason.clone(), *up_since),
        };
        let was_up = up_since.is_some();
        let server = self.server_addr();
        let lost = self.out.len().saturating_sub(self.out_pos);
        self.stats.lost_transmit_bytes += lost as u64;
        self.out.clear();
        self.out_pos = 0;
        if self.out.capacity() > 4 * self.cfg.max_transmit_bytes {
            self.out.shrink_to(self.cfg.max_transmit_bytes);
        }
        self.parser.reset();
        self.info = None;
        if was_up {
            self.stats.disconnects += 1;
        } else {
            self.stats.connect_failures += 1;
        }
        let event = |reason| match (was_up, server) {
            (true, Some(server)) => Some(NatsEvent::Disconnected { server, reason }),
            (false, Some(server)) => Some(NatsEvent::ConnectFailed { server, reason }),
            _ => None,
        };
        if reason == DisconnectReason::Closed {
            if let Some(e) = event(reason) {
                self.push_event(e);
            }
            self.conn = Conn::Closed;
            self.pending.clear();
            self.pending_frames.clear();
            return;
        }
        let left_lame_duck = reason == DisconnectReason::LameDuck;
        if let Some(e) = event(reason) {
            self.push_event(e);
        }
        if !self.servers.is_empty() {
            self.current = (self.current + 1) % self.servers.len();
        }
        let stable = up_since.is_some_and(|t| now.saturating_duration_since(t) >= STABLE_LINK);
        let at = if stable || (was_up && left_lame_duck) {
            // A link that was up: the next server at once.
            self.failures = 0;
            now
        } else {
            self.failures = self.failures.saturating_add(1);
            now + self.backoff(self.failures)
        };
        self.conn = Conn::Waiting { at };
    }

    /// The client wants the host to close the socket now (dead link, fatal `-ERR`, protocol
    /// error, lame duck, timeout, [`close`](Self::close)); the host then calls
    /// [`handle_disconnected`](Self::handle_disconnected).
    pub fn wants_close(&self) -> bool {
        matches!(self.conn, Conn::Closing { .. })
    }

    /// Stop for good: the link (if any) is to be closed, no reconnection follows, queued
    /// publishes are discarded.
    pub fn close(&mut self) {
        match &self.conn {
            Conn::Closed | Conn::Closing { .. } => {
                if let Conn::Closing { reason, .. } = &mut self.conn {
                    *reason = DisconnectReason::Closed;
                }
            }
            Conn::Waiting { .. } => {
                self.conn = Conn::Closed;
                self.pending.clear();
                self.pending_frames.clear();
            }
            Conn::Up { since, .. } => {
                self.conn = Conn::Closing {
                    reason: DisconnectReason::Closed,
                    up_since: Some(*since),
                }
            }
            Conn::Connecting { .. } | Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } => {
                self.conn = Conn::Closing {
                    reason: DisconnectReason::Closed,
                    up_since: None,
                }
            }
        }
    }

    /// Bytes read from the socket. Messages are handed to `on_msg` as they complete (they
    /// borrow `bytes` or the parser's buffer: copy what you keep). The callback cannot call
    /// back into the client; queue what it wants to publish and do it afterwards.
    pub fn handle_input(
        &mut self,
        now: Instant,
        bytes: &[u8],
        on_msg: &mut dyn FnMut(NatsMsg<'_>),
    ) {
        let mut parser = std::mem::take(&mut self.parser);
        let mut rest = bytes;
        while !rest.is_empty()
            && matches!(
                self.conn,
                Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } | Conn::Up { .. }
            )
        {
            match parser.parse(rest) {
                Ok((n, op)) => {
                    let Some(op) = op else {
                        if n == 0 {
                            break;
                        }
                        rest = rest.get(n..).unwrap_or_default();
                        continue;
                    };
                    self.on_op(now, op, on_msg);
                    // An INFO may have changed max_payload: it bounds the next MSG already.
                    parser.set_max_payload(self.max_payload);
                    rest = rest.get(n..).unwrap_or_default();
                }
                Err(e) => {
                    self.stats.protocol_errors += 1;
                    self.close_link(DisconnectReason::Protocol(e));
                    break;
                }
            }
        }
        self.parser = parser;
    }

    fn on_op(&mut self, now: Instant, op: ServerOp<'_>, on_msg: &mut dyn FnMut(NatsMsg<'_>)) {
        match op {
            ServerOp::Info(text) => self.on_info(now, text),
            ServerOp::Msg(m) => self.on_msg(m, on_msg),
            ServerOp::HMsg { .. } => self.stats.dropped_hmsg += 1,
            ServerOp::Ping => {
                self.stats.pings_answered += 1;
                self.push_control(proto::PONG);
            }
            ServerOp::Pong => self.on_pong(now),
            ServerOp::Ok => {}
            ServerOp::Err(message) => self.on_err(message),
        }
    }

    fn on_msg(&mut self, m: RawMsg<'_>, on_msg: &mut dyn FnMut(NatsMsg<'_>)) {
        if matches!(self.conn, Conn::AwaitInfo { .. }) {
            self.stats.protocol_errors += 1;
            return self.close_link(DisconnectReason::Unexpected("MSG before INFO"));
        }
        if !self.subs.contains_key(&m.sid) {
            self.stats.dropped_unknown_sid += 1;
            return;
        }
        let Ok(subject) = std::str::from_utf8(m.subject) else {
            self.stats.dropped_bad_subject += 1;
            return;
        };
        let reply = match m.reply.map(std::str::from_utf8) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(_)) => {
                self.stats.dropped_bad_subject += 1;
                return;
            }
        };
        self.stats.msgs_in += 1;
        self.stats.bytes_in += m.payload.len() as u64;
        on_msg(NatsMsg {
            subject,
            sid: m.sid,
            reply,
            payload: m.payload,
        });
    }

    fn on_info(&mut self, now: Instant, text: &str) {
        let info = match json::parse_info(text) {
            Ok(i) => i,
            Err(e) => {
                self.stats.protocol_errors += 1;
                return self.close_link(DisconnectReason::BadInfo(e));
            }
        };
        self.stats.skipped_urls += u64::from(info.skipped_urls);
        if self.cfg.discover {
            self.merge_servers(&info.connect_urls);
        }
        if let Some(mp) = info.max_payload {
            let mp = usize::try_from(mp)
                .unwrap_or(usize::MAX)
                .min(ABS_MAX_PAYLOAD);
            self.max_payload = mp;
        }
        let server = self.server_addr();
        match self.conn {
            Conn::AwaitInfo { deadline } => {
                if info.tls_required {
                    self.close_link(DisconnectReason::TlsRequired);
                } else if info.ldm {
                    self.note_lame_duck(server);
                    self.close_link(DisconnectReason::LameDuck);
                } else {
                    self.write_handshake();
                    self.conn = Conn::AwaitPong { deadline };
                }
            }
            Conn::AwaitPong { .. } if info.ldm => {
                self.note_lame_duck(server);
                self.close_link(DisconnectReason::LameDuck);
            }
            Conn::Up {
                ref mut lame_duck_at,
                ..
            } if info.ldm && lame_duck_at.is_none() => {
                let delay = jitter(&mut self.rng, self.cfg.lame_duck_jitter);
                *lame_duck_at = Some(now + delay);
                self.note_lame_duck(server);
            }
            _ => {}
        }
        self.info = Some(info);
    }

    fn note_lame_duck(&mut self, server: Option<SocketAddr>) {
        self.stats.lame_duck += 1;
        if let Some(server) = server {
            self.push_event(NatsEvent::LameDuck { server });
        }
    }

    fn merge_servers(&mut self, urls: &[SocketAddr]) {
        let mut added = 0;
        for &a in urls {
            if a.ip().is_unspecified() || a.port() == 0 {
                self.stats.skipped_urls += 1;
                continue;
            }
            if self.servers.contains(&a) {
                continue;
            }
            if self.servers.len() >= MAX_SERVERS {
                self.stats.servers_over_cap += 1;
                continue;
            }
            self.servers.push(a);
            added += 1;
        }
        if added > 0 {
            self.stats.discovered_servers += added as u64;
            self.push_event(NatsEvent::DiscoveredServers { added });
        }
    }

    fn write_handshake(&mut self) {
        json::write_connect(
            &mut self.out,
            &self.cfg.name,
            env!("CARGO_PKG_VERSION"),
            &self.cfg.auth,
        );
        for (&sid, s) in &self.subs {
            // Validated when subscribed.
            let _ = proto::encode_sub(&mut self.out, &s.subject, s.queue.as_deref(), sid);
        }
        self.out.extend_from_slice(proto::PING);
        self.stats.pings_sent += 1;
    }

    fn on_pong(&mut self, now: Instant) {
        self.stats.pongs_received += 1;
        match &mut self.conn {
            Conn::AwaitPong { .. } => {
                self.conn = Conn::Up {
                    since: now,
                    next_ping: now + self.cfg.ping_interval,
                    pings_out: 0,
                    lame_duck_at: None,
                    draining_until: None,
                };
                if self.stats.connects > 0 {
                    self.stats.reconnects += 1;
                }
                self.stats.connects += 1;
                if let Some(server) = self.server_addr() {
                    self.push_event(NatsEvent::Connected { server });
                }
                self.refill();
            }
            Conn::Up { pings_out, .. } => *pings_out = 0,
            _ => {}
        }
    }

    fn on_err(&mut self, message: &str) {
        self.stats.server_errors += 1;
        let fatal = is_fatal(message);
        if let Some(server) = self.server_addr() {
            self.push_event(NatsEvent::ServerError {
                server,
                message: message.to_string(),
                fatal,
            });
        }
        if fatal {
            self.stats.fatal_server_errors += 1;
            self.close_link(DisconnectReason::ServerError(message.to_string()));
        }
    }

    /// Ask the host to close the socket, unless there is none or it is already closing.
    fn close_link(&mut self, reason: DisconnectReason) {
        let up_since = match self.conn {
            Conn::Up { since, .. } => Some(since),
            Conn::Connecting { .. } | Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } => None,
            Conn::Waiting { .. } | Conn::Closing { .. } | Conn::Closed => return,
        };
        self.conn = Conn::Closing { reason, up_since };
    }

    // ------------------------------------------------------------ timers

    /// When [`handle_timeout`](Self::handle_timeout) (or, while waiting,
    /// [`poll_connect`](Self::poll_connect)) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.conn {
            Conn::Waiting { at } => Some(*at),
            Conn::Connecting { deadline }
            | Conn::AwaitInfo { deadline }
            | Conn::AwaitPong { deadline } => Some(*deadline),
            Conn::Up {
                next_ping,
                lame_duck_at,
                draining_until,
                ..
            } => {
                let ldm = draining_until.or(*lame_duck_at);
                Some(ldm.map_or(*next_ping, |t| t.min(*next_ping)))
            }
            Conn::Closing { .. } | Conn::Closed => None,
        }
    }

    /// Run what is due: connect timeout, our PING (or declare the link dead), the lame-duck
    /// move. Harmless when called early or repeatedly.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.conn {
            Conn::Connecting { deadline }
            | Conn::AwaitInfo { deadline }
            | Conn::AwaitPong { deadline } => {
                if now >= *deadline {
                    self.close_link(DisconnectReason::ConnectTimeout);
                }
            }
            Conn::Up {
                next_ping,
                pings_out,
                lame_duck_at,
                draining_until,
                ..
            } => {
                if draining_until.is_none() && lame_duck_at.is_some_and(|t| now >= t) {
                    *draining_until = Some(now + LAME_DUCK_DRAIN);
                }
                if draining_until.is_some_and(|t| now >= t) {
                    return self.close_link(DisconnectReason::LameDuck);
                }
                if now >= *next_ping {
                    if *pings_out > 0 {
                        self.stats.pongs_missed += 1;
                    }
                    if *pings_out >= self.cfg.max_pings_out {
                        self.stats.stale_connections += 1;
                        return self.close_link(DisconnectReason::StaleConnection);
                    }
                    *pings_out += 1;
                    *next_ping = now + self.cfg.ping_interval;
                    self.stats.pings_sent += 1;
                    self.push_control(proto::PING);
                }
                self.check_drained();
            }
            Conn::Waiting { .. } | Conn::Closing { .. } | Conn::Closed => {}
        }
    }

    // ------------------------------------------------------------ output

    /// Bytes to write to the socket, in order.
    pub fn transmit(&self) -> &[u8] {
        self.out.get(self.out_pos..).unwrap_or_default()
    }

    /// `n` bytes of [`transmit`](Self::transmit) were written.
    pub fn advance_transmit(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos >= COMPACT_AT {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        self.refill();
        self.check_drained();
    }

    /// The most [`transmit`](Self::transmit) holds: `max_transmit_bytes` of publishes (or
    /// one publish, when larger: up to the server's `max_payload`), plus the handshake and a
    /// headroom for control operations. A server that does not read while PINGing us (its
    /// PONGs pile up) is disconnected at this limit.
    pub fn transmit_limit(&self) -> usize {
        self.cfg.max_transmit_bytes
            + self.max_payload
            + FRAME_OVERHEAD
            + MAX_HANDSHAKE
            + CONTROL_HEADROOM
    }

    fn held(&self) -> usize {
        self.out.len().saturating_sub(self.out_pos)
    }

    fn push_control(&mut self, bytes: &[u8]) {
        if !matches!(
            self.conn,
            Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } | Conn::Up { .. }
        ) {
            return;
        }
        if self.held() + bytes.len() > self.transmit_limit() {
            self.stats.output_overflows += 1;
            return self.close_link(DisconnectReason::OutputOverflow);
        }
        self.out.extend_from_slice(bytes);
    }

    /// Publishes go straight to the transmit buffer (else they queue).
    fn can_write_direct(&self) -> bool {
        matches!(
            self.conn,
            Conn::Up {
                draining_until: None,
                ..
            }
        )
    }

    fn fits(&self, frame: usize) -> bool {
        let held = self.held();
        held == 0 || held + frame <= self.cfg.max_transmit_bytes
    }

    /// Move queued publishes to the transmit buffer while it has room.
    fn refill(&mut self) {
        while self.can_write_direct() {
            let Some(&(frame, payload)) = self.pending_frames.front() else {
                break;
            };
            if payload > self.max_payload {
                // Queued under a larger limit than this server's.
                self.pop_oldest();
                self.stats.dropped_max_payload += 1;
                continue;
            }
            if !self.fits(frame) {
                break;
            }
            let frame = frame.min(self.pending.len());
            let (a, b) = self.pending.as_slices();
            let from_a = frame.min(a.len());
            self.out
                .extend_from_slice(a.get(..from_a).unwrap_or_default());
            self.out
                .extend_from_slice(b.get(..frame - from_a).unwrap_or_default());
            self.pending.drain(..frame);
            self.pending_frames.pop_front();
            self.stats.msgs_out += 1;
            self.stats.bytes_out += payload as u64;
        }
        // An outage's queue does not pin its memory once flushed.
        if self.pending.is_empty() && self.pending.capacity() > PENDING_KEEP {
            self.pending.shrink_to(PENDING_KEEP);
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((frame, _)) = self.pending_frames.pop_front() {
            let frame = frame.min(self.pending.len());
            self.pending.drain(..frame);
        }
    }

    /// Lame duck: once the transmit buffer has drained, leave.
    fn check_drained(&mut self) {
        if let Conn::Up {
            draining_until: Some(_),
            ..
        } = self.conn
            && self.held() == 0
        {
            self.close_link(DisconnectReason::LameDuck);
        }
    }

    // ------------------------------------------------------------ application calls

    /// Publish `payload` on `subject`. Goes to the transmit buffer when the link is up and the
    /// buffer has room, else to the bounded queue (dropping the oldest queued publishes to
    /// make room, counted), which is flushed after the next handshake.
    pub fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<(), NatsError> {
        self.publish_inner(subject, None, payload)
    }

    /// [`publish`](Self::publish) with a reply subject.
    pub fn publish_with_reply(
        &mut self,
        subject: &str,
        reply: &str,
        payload: &[u8],
    ) -> Result<(), NatsError> {
        self.publish_inner(subject, Some(reply), payload)
    }

    fn publish_inner(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> Result<(), NatsError> {
        if matches!(self.conn, Conn::Closed) {
            return Err(NatsError::Closed);
        }
        proto::validate_subject(subject, false).map_err(NatsError::InvalidSubject)?;
        if let Some(r) = reply {
            proto::validate_subject(r, false).map_err(NatsError::InvalidSubject)?;
        }
        if payload.len() > self.max_payload {
            self.stats.dropped_max_payload += 1;
            return Err(NatsError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let frame = proto::pub_header_len(subject, reply, payload.len()) + payload.len() + 2;
        if self.can_write_direct() && self.pending_frames.is_empty() && self.fits(frame) {
            proto::encode_pub_header(&mut self.out, subject, reply, payload.len());
            self.out.extend_from_slice(payload);
            self.out.extend_from_slice(b"\r\n");
            self.stats.msgs_out += 1;
            self.stats.bytes_out += payload.len() as u64;
            return Ok(());
        }
        let max = self.cfg.max_pending_bytes;
        if max == 0 {
            self.stats.dropped_queue_full += 1;
            return Err(NatsError::QueueFull { frame, max });
        }
        // Drop the oldest to make room; a message larger than the whole queue is kept alone.
        while self.pending.len() + frame > max && !self.pending_frames.is_empty() {
            self.pop_oldest();
            self.stats.dropped_queue_full += 1;
        }
        self.scratch.clear();
        proto::encode_pub_header(&mut self.scratch, subject, reply, payload.len());
        self.pending.extend(self.scratch.iter());
        self.pending.extend(payload.iter());
        self.pending.extend(b"\r\n".iter());
        self.pending_frames.push_back((frame, payload.len()));
        Ok(())
    }

    /// Subscribe to `subject` (wildcards allowed). Remembered: re-sent after every reconnect.
    pub fn subscribe(&mut self, subject: &str) -> Result<u64, NatsError> {
        self.subscribe_inner(subject, None)
    }

    /// Subscribe as a member of queue group `queue`.
    pub fn subscribe_queue(&mut self, subject: &str, queue: &str) -> Result<u64, NatsError> {
        self.subscribe_inner(subject, Some(queue))
    }

    fn subscribe_inner(&mut self, subject: &str, queue: Option<&str>) -> Result<u64, NatsError> {
        if matches!(self.conn, Conn::Closed) {
            return Err(NatsError::Closed);
        }
        proto::validate_subject(subject, true).map_err(NatsError::InvalidSubject)?;
        if let Some(q) = queue {
            proto::validate_queue(q).map_err(NatsError::InvalidSubject)?;
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(NatsError::TooManySubscriptions);
        }
        let sid = self.next_sid;
        self.next_sid += 1;
        self.subs.insert(
            sid,
            Subscription {
                subject: subject.to_string(),
                queue: queue.map(str::to_string),
            },
        );
        if self.handshake_sent() {
            let mut buf = std::mem::take(&mut self.scratch);
            buf.clear();
            let _ = proto::encode_sub(&mut buf, subject, queue, sid);
            self.push_control(&buf);
            self.scratch = buf;
        }
        Ok(sid)
    }

    /// Drop a subscription (unknown ids are ignored).
    pub fn unsubscribe(&mut self, sid: u64) {
        if self.subs.remove(&sid).is_some() && self.handshake_sent() {
            let mut buf = std::mem::take(&mut self.scratch);
            buf.clear();
            proto::encode_unsub(&mut buf, sid, None);
            self.push_control(&buf);
            self.scratch = buf;
        }
    }

    fn handshake_sent(&self) -> bool {
        matches!(self.conn, Conn::AwaitPong { .. } | Conn::Up { .. })
    }

    // ------------------------------------------------------------ observation

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<NatsEvent> {
        self.events.pop_front()
    }

    fn push_event(&mut self, e: NatsEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    /// Where the client is.
    pub fn state(&self) -> NatsState {
        match self.conn {
            Conn::Waiting { .. } => NatsState::Waiting,
            Conn::Connecting { .. } => NatsState::Connecting,
            Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } => NatsState::Handshaking,
            Conn::Up { .. } => NatsState::Connected,
            Conn::Closing { .. } => NatsState::Closing,
            Conn::Closed => NatsState::Closed,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &NatsStats {
        &self.stats
    }

    /// Every server the client may try: the configured ones, then the discovered ones.
    pub fn servers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.servers.iter().copied()
    }

    /// The server of the established link.
    pub fn connected_server(&self) -> Option<SocketAddr> {
        match self.conn {
            Conn::Up { .. } => self.server_addr(),
            _ => None,
        }
    }

    fn server_addr(&self) -> Option<SocketAddr> {
        self.servers.get(self.current).copied()
    }

    /// The current server's `INFO` (from its latest `INFO`), while a link exists.
    pub fn server_info(&self) -> Option<&ServerInfo> {
        self.info.as_ref()
    }

    /// The `max_payload` in force (the latest a server announced, else the NATS default).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Bytes of publishes waiting in the queue: at most `max_pending_bytes`, or one publish
    /// when that is larger.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Publishes waiting in the queue.
    pub fn pending_messages(&self) -> usize {
        self.pending_frames.len()
    }

    /// Drop every publish waiting in the queue (counted in `dropped_queue_full`); returns
    /// how many. What is already in the transmit buffer stays. For a host whose queued
    /// messages have gone stale (federation: peers have declared this relay lost).
    pub fn discard_pending(&mut self) -> usize {
        let n = self.pending_frames.len();
        self.pending.clear();
        self.pending_frames.clear();
        self.pending.shrink_to(PENDING_KEEP);
        self.stats.dropped_queue_full += n as u64;
        n
    }

    /// Active subscriptions: (sid, subject).
    pub fn subscriptions(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.subs.iter().map(|(&sid, s)| (sid, s.subject.as_str()))
    }

    /// The parser's buffer capacity (memory held for partial input).
    pub fn input_buffer_capacity(&self) -> usize {
        self.parser.capacity()
    }

    /// Back-off before attempt number `failures` (>= 1) after failures: "equal jitter",
    /// a uniform delay in `[cap/2, cap]` with `cap = min(reconnect_max, base * 2^(failures-1))`.
    fn backoff(&mut self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        let cap = self
            .cfg
            .reconnect_base
            .saturating_mul(1u32 << shift)
            .min(self.cfg.reconnect_max);
        let half = cap / 2;
        half + jitter(&mut self.rng, cap - half)
    }
}

/// splitmix64.
fn next_u64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform duration in `[0, max]`.
fn jitter(state: &mut u64, max: Duration) -> Duration {
    let n = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    match n.checked_add(1) {
        Some(m) => Duration::from_nanos(next_u64(state) % m),
        None => Duration::from_nanos(next_u64(state)),
    }
}

#[cfg(test)]
mod tests;
