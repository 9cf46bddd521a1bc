//! The relay's settings and their one validation point.
//!
//! [`Config`] is the core's (protocol limits, timers, caps), [`NetConfig`] the driver's
//! (sockets, control port). Each has a `validate()` that holds every rule for its fields;
//! the constructors ([`RelayCore::new`](crate::RelayCore::new), the driver's builder) call
//! them, the CLI calls them before any expensive work and prints the error, and nobody keeps
//! a copy of the rules.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::proto::reassembly::Limits;
use crate::wire::{MAX_DATAGRAM, MAX_NAME};

/// Longest admission token (protocol.md §9).
pub const MAX_ADMISSION_TOKEN: usize = 100;

/// Everything the relay core can be told. `Default` is the documented default set.
#[derive(Debug, Clone)]
pub struct Config {
    /// A client silent this long is removed.
    pub client_timeout: Duration,
    /// Keep-alive interval announced to clients in WELCOME.
    pub keepalive_interval: Duration,
    /// Registered clients at once.
    pub max_clients: usize,
    /// Registered clients at once from one source address (IPv6: one /64): sybil sessions
    /// from a few addresses cannot fill the relay.
    pub max_clients_per_source: usize,
    /// Reassembly caps and timeout.
    pub reassembly: Limits,
    /// Fernet TTL for client tokens.
    pub token_ttl: Duration,
    /// How far in the future a client token's timestamp may be.
    pub max_clock_skew: Duration,
    /// RSA decryptions per second, all sources together.
    pub handshakes_per_sec: u32,
    /// The most of the loop's wall time RSA decryptions may take, in percent (1..=100); the
    /// driver runs at most one per loop turn, after the group socket is drained.
    pub handshake_cpu_percent: u8,
    /// RSA decryptions per second from one IP address (IPv6: one /64).
    pub handshakes_per_source_per_sec: u32,
    /// Validated REGISTERs waiting for their RSA decryption.
    pub max_pending_registrations: usize,
    /// How long an address cookie is accepted.
    pub cookie_lifetime: Duration,
    /// How often the cookie secret is replaced.
    pub cookie_rotation: Duration,
    /// Bytes of outgoing datagrams that may wait for the socket.
    pub max_send_queue: usize,
    /// `name -> token` admission list; `None` admits anyone who completes the handshake.
    pub admission: Option<HashMap<String, String>>,
    /// How messages reach the members.
    pub distribution: Distribution,
    /// Federation (docs/federation.md): this relay's id in its cluster, 1..=255. It becomes
    /// the high byte of every client id the relay gives out, so ids are unique across the
    /// cluster, and it turns on the record of local joins, leaves and messages that the
    /// federation publishes. `None` (the default): a single relay, ids from 1 upwards. The
    /// driver's builder sets it from [`NetConfig::federation`].
    pub relay_id: Option<u8>,
}

/// How messages reach the members (docs/protocol.md §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distribution {
    /// Each message is sealed again for each recipient and sent to it alone.
    Unicast,
    /// Each message is sent once, to a multicast group, under a rotating group key;
    /// version 1 and 2 members (and members still waiting for a key) get unicast copies.
    Group(GroupConfig),
}

/// Group mode's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The distribution group the relay sends to (default: the ingest group, port + 1).
    pub addr: SocketAddrV4,
    /// A join starts a new epoch too (by the one-way ratchet), so a newcomer cannot read what
    /// was sent before it joined.
    pub rekey_on_join: bool,
    /// How long members keep the previous epoch's key after installing a new one.
    pub grace: Duration,
    /// Start a new epoch (by the ratchet) after this many group tokens.
    pub rotate_messages: u64,
    /// Start a new epoch (by the ratchet) after this long.
    pub rotate_age: Duration,
    /// First retry of an unacknowledged key delivery (doubling up to 2 s).
    pub key_resend: Duration,
}

impl GroupConfig {
    /// The defaults for a relay whose ingest group is `ingest` (distribution group: the same
    /// address, port + 1).
    pub fn for_ingest(ingest: SocketAddrV4) -> Self {
        GroupConfig {
            addr: SocketAddrV4::new(*ingest.ip(), ingest.port().wrapping_add(1)),
            rekey_on_join: true,
            grace: Duration::from_secs(2),
            rotate_messages: 1 << 20,
            rotate_age: Duration::from_secs(3600),
            key_resend: Duration::from_millis(200),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            client_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            max_clients: 1024,
            max_clients_per_source: 64,
            reassembly: Limits::default(),
            token_ttl: Duration::from_secs(120),
            max_clock_skew: Duration::from_secs(60),
            handshakes_per_sec: 200,
            handshake_cpu_percent: 25,
            handshakes_per_source_per_sec: 10,
            max_pending_registrations: 64,
            cookie_lifetime: Duration::from_secs(30),
            cookie_rotation: Duration::from_secs(60),
            max_send_queue: 4 << 20,
            admission: None,
            distribution: Distribution::Unicast,
            relay_id: None,
        }
    }
}

/// A setting that cannot work. `field` names it as the config struct does
/// (`client_timeout`, `reassembly.total_bytes`, `admission`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it, as a sentence fragment (`must be positive`).
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Longest duration that travels as `u32` milliseconds (WELCOME).
const MAX_WIRE_MS: Duration = Duration::from_millis(u32::MAX as u64);

/// Is `name` a valid admission name (protocol.md §9)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Is `token` a valid admission token (protocol.md §9)?
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_ADMISSION_TOKEN
        && !token
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

impl Config {
    /// Check every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_timers()?;
        self.validate_caps()?;
        self.validate_admission()?;
        if self.relay_id == Some(0) {
            return Err(ConfigError::new("relay_id", "must be 1..=255"));
        }
        if let Distribution::Group(g) = &self.distribution {
            g.validate(self.client_timeout)?;
        }
        Ok(())
    }

    /// The checks that need both settings: the distribution group must not be the group the
    /// relay listens on (it would hear its own sends and members every client's datagrams).
    pub fn validate_with(&self, net: &NetConfig) -> Result<(), ConfigError> {
        self.validate()?;
        net.validate()?;
        if let Distribution::Group(g) = &self.distribution
            && *g.addr.ip() == net.group
            && g.addr.port() == net.port
        {
            return Err(ConfigError::new(
                "distribution.addr",
                "must differ from the ingest group and port (default: port + 1)",
            ));
        }
        Ok(())
    }

    fn validate_timers(&self) -> Result<(), ConfigError> {
        if self.client_timeout.is_zero() || self.client_timeout > MAX_WIRE_MS {
            return Err(ConfigError::new(
                "client_timeout",
                "must be between 1ms and 49 days",
            ));
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval >= self.client_timeout {
            return Err(ConfigError::new(
                "keepalive_interval",
                format!(
                    "must be positive and shorter than client_timeout ({:?})",
                    self.client_timeout
                ),
            ));
        }
        if self.token_ttl.is_zero() {
            return Err(ConfigError::new("token_ttl", "must be positive"));
        }
        if self.cookie_rotation.is_zero() {
            return Err(ConfigError::new("cookie_rotation", "must be positive"));
        }
        if self.cookie_lifetime.is_zero() || self.cookie_lifetime >= self.cookie_rotation {
            return Err(ConfigError::new(
                "cookie_lifetime",
                format!(
                    "must be positive and shorter than the cookie rotation ({:?})",
                    self.cookie_rotation
                ),
            ));
        }
        if self.reassembly.timeout.is_zero() {
            return Err(ConfigError::new("reassembly.timeout", "must be positive"));
        }
        Ok(())
    }

    fn validate_caps(&self) -> Result<(), ConfigError> {
        if self.max_clients == 0 {
            return Err(ConfigError::new("max_clients", "must be at least 1"));
        }
        if self.max_clients_per_source == 0 {
            return Err(ConfigError::new(
                "max_clients_per_source",
                "must be at least 1",
            ));
        }
        let r = &self.reassembly;
        if r.per_owner_messages == 0 {
            return Err(ConfigError::new(
                "reassembly.per_owner_messages",
                "must be at least 1",
            ));
        }
        if self.handshakes_per_sec == 0 {
            return Err(ConfigError::new("handshakes_per_sec", "must be at least 1"));
        }
        if !(1..=100).contains(&self.handshake_cpu_percent) {
            return Err(ConfigError::new(
                "handshake_cpu_percent",
                "must be 1 to 100",
            ));
        }
        if self.handshakes_per_source_per_sec == 0 {
            return Err(ConfigError::new(
                "handshakes_per_source_per_sec",
                "must be at least 1",
            ));
        }
        if self.max_pending_registrations == 0 {
            return Err(ConfigError::new(
                "max_pending_registrations",
                "must be at least 1",
            ));
        }
        if self.max_send_queue < MAX_DATAGRAM {
            return Err(ConfigError::new(
                "max_send_queue",
                format!("must hold at least one datagram ({MAX_DATAGRAM} bytes)"),
            ));
        }
        Ok(())
    }

    fn validate_admission(&self) -> Result<(), ConfigError> {
        if let Some(list) = &self.admission {
            for (name, token) in list {
                if !valid_name(name) {
                    return Err(ConfigError::new(
                        "admission",
                        "a name must be 1-32 characters of A-Z a-z 0-9 . _ -",
                    ));
                }
                if !valid_token(token) {
                    return Err(ConfigError::new(
                        "admission",
                        format!("the token of {name} must be 1-100 bytes without spaces"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl GroupConfig {
    fn validate(&self, client_timeout: Duration) -> Result<(), ConfigError> {
        if !self.addr.ip().is_multicast() || self.addr.port() == 0 {
            return Err(ConfigError::new(
                "distribution.addr",
                format!("{} is not a multicast group and port", self.addr),
            ));
        }
        if self.grace > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "distribution.grace",
                "must be at most 60s",
            ));
        }
        if self.rotate_messages == 0 {
            return Err(ConfigError::new(
                "distribution.rotate_messages",
                "must be at least 1",
            ));
        }
        if self.rotate_age.is_zero() {
            return Err(ConfigError::new(
                "distribution.rotate_age",
                "must be positive",
            ));
        }
        if self.key_resend.is_zero() || self.key_resend >= client_timeout {
            return Err(ConfigError::new(
                "distribution.key_resend",
                "must be positive and shorter than client_timeout",
            ));
        }
        Ok(())
    }
}

/// Most operators the control port serves at once.
pub const MAX_CONTROL_LIMIT: usize = 1024;

/// Sockets and control-port settings (the driver's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The multicast group clients send to.
    pub group: Ipv4Addr,
    /// Its UDP port.
    pub port: u16,
    /// Interface (by address) on which the group is joined and replies leave.
    pub iface: Ipv4Addr,
    /// Control listener; `None` disables the control port.
    pub control: Option<SocketAddr>,
    /// Operators at once.
    pub max_control: usize,
    /// `auth <token>` required when set.
    pub control_token: Option<String>,
    /// Multicast TTL of what the relay sends to a group (group mode); 0 never leaves the host.
    pub ttl: u32,
    /// With a token: a control connection that has not authenticated this long after
    /// connecting is closed.
    pub control_auth_timeout: Duration,
    /// A control connection that sent no command this long (and does not stream the log) is
    /// closed; zero: never.
    pub control_idle_timeout: Duration,
    /// The HTTP monitor (docs/monitoring.md); `None` (the default) disables it.
    pub monitor: Option<MonitorSettings>,
    /// Federation over NATS (docs/federation.md); `None` (the default): a single relay. The
    /// builder gives the core its relay id ([`Config::relay_id`]).
    pub federation: Option<crate::federation::FederationConfig>,
}

/// Most connections the HTTP monitor serves at once.
pub const MAX_MONITOR_LIMIT: usize = 1024;

/// The HTTP monitor's settings: `/metrics`, `/healthz`, `/stats`, `/clients`
/// (docs/monitoring.md). The finer limits (deadlines, head sizes, output cap) are those of
/// [`MonitorConfig::default`](crate::monitor::MonitorConfig).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSettings {
    /// Listen address. A non-loopback address requires `token`.
    pub listen: SocketAddr,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Connections at once (1..=1024); one more is answered 503 and closed.
    pub max_conns: usize,
    /// Per-client counters on `/metrics` (label `client="<id>"`): one series per client and
    /// counter, so off by default.
    pub per_client_metrics: bool,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 5009)),
            token: None,
            max_conns: 8,
            per_client_metrics: false,
        }
    }
}

/// Is `t` a valid monitor bearer token: 1-100 bytes of token68 characters (RFC 9110,
/// `A-Z a-z 0-9 - . _ ~ + / =`)?
pub fn valid_bearer_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_ADMISSION_TOKEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
}

/// Longest `control_auth_timeout`.
const MAX_CONTROL_AUTH_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            group: Ipv4Addr::new(239, 255, 77, 77),
            port: 5007,
            iface: Ipv4Addr::LOCALHOST,
            control: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 5008))),
            max_control: 8,
            control_token: None,
            ttl: 1,
            control_auth_timeout: Duration::from_secs(5),
            control_idle_timeout: Duration::from_secs(300),
            monitor: None,
            federation: None,
        }
    }
}

impl NetConfig {
    /// Check every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.group.is_multicast() {
            return Err(ConfigError::new(
                "group",
                format!(
                    "{} is not an IPv4 multicast address (224.0.0.0/4)",
                    self.group
                ),
            ));
        }
        if self.port == 0 {
            return Err(ConfigError::new(
                "port",
                "must be a fixed port (clients need to know it), not 0",
            ));
        }
        if self.iface.is_multicast() || self.iface.is_broadcast() || self.iface.is_unspecified() {
            return Err(ConfigError::new(
                "iface",
                format!("{} is not the address of an interface", self.iface),
            ));
        }
        if self.ttl > 255 {
            return Err(ConfigError::new("ttl", "must be 0..=255"));
        }
        if self.max_control == 0 || self.max_control > MAX_CONTROL_LIMIT {
            return Err(ConfigError::new(
                "max_control",
                format!("must be 1..={MAX_CONTROL_LIMIT}"),
            ));
        }
        if self.control_auth_timeout.is_zero()
            || self.control_auth_timeout > MAX_CONTROL_AUTH_TIMEOUT
        {
            return Err(ConfigError::new(
                "control_auth_timeout",
                "must be between 1ms and 10 minutes",
            ));
        }
        if !self.control_idle_timeout.is_zero()
            && self.control_idle_timeout < Duration::from_secs(1)
        {
            return Err(ConfigError::new(
                "control_idle_timeout",
                "must be 0 (never) or at least 1s",
            ));
        }
        if let Some(t) = &self.control_token
            && !valid_token(t)
        {
            return Err(ConfigError::new(
                "control_token",
                "must be 1-100 bytes without spaces",
            ));
        }
        if let Some(addr) = self.control
            && !addr.ip().is_loopback()
            && self.control_token.is_none()
        {
            return Err(ConfigError::new(
                "control",
                format!(
                    "refusing to open the control port on non-loopback {addr} without a token \
                     (set --control-token-file or MCRELAY_CONTROL_TOKEN, or bind to 127.0.0.1)"
                ),
            ));
        }
        if let Some(f) = &self.federation {
            f.validate()?;
        }
        match &self.monitor {
            Some(m) => self.validate_monitor(m),
            None => Ok(()),
        }
    }

    fn validate_monitor(&self, m: &MonitorSettings) -> Result<(), ConfigError> {
        if m.max_conns == 0 || m.max_conns > MAX_MONITOR_LIMIT {
            return Err(ConfigError::new(
                "monitor.max_conns",
                format!("must be 1..={MAX_MONITOR_LIMIT}"),
            ));
        }
        if let Some(t) = &m.token
            && !valid_bearer_token(t)
        {
            return Err(ConfigError::new(
                "monitor.token",
                "must be 1-100 bytes of A-Z a-z 0-9 - . _ ~ + / = (a bearer token)",
            ));
        }
        if !m.listen.ip().is_loopback() && m.token.is_none() {
            return Err(ConfigError::new(
                "monitor.listen",
                format!(
                    "refusing to serve the monitor on non-loopback {} without a token \
                     (set --monitor-token-file or MCRELAY_MONITOR_TOKEN, or bind to 127.0.0.1)",
                    m.listen
                ),
            ));
        }
        if m.listen.port() != 0 && self.control == Some(m.listen) {
            return Err(ConfigError::new(
                "monitor.listen",
                format!("{} is the control port's address too", m.listen),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(c: Config) -> &'static str {
        c.validate().expect_err("should be refused").field
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn each_bad_setting_names_its_field() {
        let d = Config::default;
        let z = Duration::ZERO;
        assert_eq!(
            field_of(Config {
                client_timeout: z,
                ..d()
            }),
            "client_timeout"
        );
        assert_eq!(
            field_of(Config {
                keepalive_interval: Duration::from_secs(30),
                ..d()
            }),
            "keepalive_interval"
        );
        assert_eq!(
            field_of(Config {
                max_clients: 0,
                ..d()
            }),
            "max_clients"
        );
        let mut c = d();
        c.reassembly.per_owner_messages = 0;
        assert_eq!(field_of(c), "reassembly.per_owner_messages");
        let mut c = d();
        c.reassembly.timeout = z;
        assert_eq!(field_of(c), "reassembly.timeout");
        assert_eq!(
            field_of(Config {
                token_ttl: z,
                ..d()
            }),
            "token_ttl"
        );
        assert_eq!(
            field_of(Config {
                handshakes_per_sec: 0,
                ..d()
            }),
            "handshakes_per_sec"
        );
        assert_eq!(
            field_of(Config {
                handshakes_per_source_per_sec: 0,
                ..d()
            }),
            "handshakes_per_source_per_sec"
        );
        assert_eq!(
            field_of(Config {
                max_pending_registrations: 0,
                ..d()
            }),
            "max_pending_registrations"
        );
        assert_eq!(
            field_of(Config {
                cookie_lifetime: Duration::from_secs(60),
                ..d()
            }),
            "cookie_lifetime"
        );
        assert_eq!(
            field_of(Config {
                cookie_rotation: z,
                ..d()
            }),
            "cookie_rotation"
        );
        assert_eq!(
            field_of(Config {
                max_send_queue: 100,
                ..d()
            }),
            "max_send_queue"
        );
        let bad_name = HashMap::from([("no spaces".to_string(), "t".to_string())]);
        assert_eq!(
            field_of(Config {
                admission: Some(bad_name),
                ..d()
            }),
            "admission"
        );
        let bad_token = HashMap::from([("alice".to_string(), "a b".to_string())]);
        assert_eq!(
            field_of(Config {
                admission: Some(bad_token),
                ..d()
            }),
            "admission"
        );
    }

    #[test]
    fn errors_read_as_one_line() {
        let err = Config {
            max_clients: 0,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.to_string(), "max_clients: must be at least 1");
    }

    #[test]
    fn net_settings_are_checked_before_any_socket() {
        let d = NetConfig::default;
        assert_eq!(d().validate(), Ok(()));
        let field = |n: NetConfig| n.validate().expect_err("refused").field;
        assert_eq!(
            field(NetConfig {
                group: Ipv4Addr::new(10, 0, 0, 1),
                ..d()
            }),
            "group"
        );
        assert_eq!(field(NetConfig { port: 0, ..d() }), "port");
        assert_eq!(
            field(NetConfig {
                iface: Ipv4Addr::UNSPECIFIED,
                ..d()
            }),
            "iface"
        );
        assert_eq!(
            field(NetConfig {
                max_control: 0,
                ..d()
            }),
            "max_control"
        );
        for bad in [Duration::ZERO, Duration::from_secs(601)] {
            let n = NetConfig {
                control_auth_timeout: bad,
                ..d()
            };
            assert_eq!(field(n), "control_auth_timeout");
        }
        let n = NetConfig {
            control_idle_timeout: Duration::from_millis(500),
            ..d()
        };
        assert_eq!(field(n), "control_idle_timeout");
        let never = NetConfig {
            control_idle_timeout: Duration::ZERO,
            ..d()
        };
        assert_eq!(never.validate(), Ok(()));
        let open = NetConfig {
            control: Some("0.0.0.0:5008".parse().unwrap()),
            ..d()
        };
        assert_eq!(field(open.clone()), "control");
        let with_token = NetConfig {
            control_token: Some("t0ken".into()),
            ..open
        };
        assert_eq!(with_token.validate(), Ok(()));
    }

    #[test]
    fn group_settings_are_checked_alone_and_against_the_ingest_group() {
        let net = NetConfig::default();
        let g = GroupConfig::for_ingest(SocketAddrV4::new(net.group, net.port));
        assert_eq!(g.addr.port(), 5008);
        let cfg = |g: GroupConfig| Config {
            distribution: Distribution::Group(g),
            ..Config::default()
        };
        assert_eq!(cfg(g.clone()).validate_with(&net), Ok(()));
        let same = GroupConfig {
            addr: SocketAddrV4::new(net.group, net.port),
            ..g.clone()
        };
        let field = |c: Config| c.validate_with(&net).expect_err("refused").field;
        assert_eq!(field(cfg(same)), "distribution.addr");
        let unicast = GroupConfig {
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9),
            ..g.clone()
        };
        assert_eq!(field(cfg(unicast)), "distribution.addr");
        let slow = GroupConfig {
            key_resend: Duration::from_secs(60),
            ..g.clone()
        };
        assert_eq!(field(cfg(slow)), "distribution.key_resend");
        let never = GroupConfig {
            rotate_messages: 0,
            ..g
        };
        assert_eq!(field(cfg(never)), "distribution.rotate_messages");
        assert_eq!(
            NetConfig { ttl: 256, ..net }.validate().unwrap_err().field,
            "ttl"
        );
    }

    #[test]
    fn monitor_settings_are_checked_with_the_field_named() {
        let with = |m: MonitorSettings| NetConfig {
            monitor: Some(m),
            ..NetConfig::default()
        };
        let d = MonitorSettings::default;
        assert_eq!(d().listen, "127.0.0.1:5009".parse().unwrap());
        assert_eq!(
            (d().max_conns, d().token, d().per_client_metrics),
            (8, None, false)
        );
        assert_eq!(NetConfig::default().monitor, None, "off by default");
        assert_eq!(with(d()).validate(), Ok(()));
        let field = |m: MonitorSettings| with(m).validate().expect_err("refused").field;
        assert_eq!(
            field(MonitorSettings {
                max_conns: 0,
                ..d()
            }),
            "monitor.max_conns"
        );
        assert_eq!(
            field(MonitorSettings {
                max_conns: MAX_MONITOR_LIMIT + 1,
                ..d()
            }),
            "monitor.max_conns"
        );
        for bad in ["", "a b", "tok\u{e9}n", "semi;colon", &"t".repeat(101)] {
            let m = MonitorSettings {
                token: Some(bad.to_string()),
                ..d()
            };
            assert_eq!(field(m), "monitor.token", "{bad:?}");
        }
        // Off loopback only with a token, as the control port.
        let open = MonitorSettings {
            listen: "0.0.0.0:5009".parse().unwrap(),
            ..d()
        };
        let e = with(open.clone()).validate().unwrap_err();
        assert_eq!(e.field, "monitor.listen");
        assert!(e.problem.contains("non-loopback 0.0.0.0:5009"), "{e}");
        let with_token = MonitorSettings {
            token: Some("s3cret-Tok~en+/=".into()),
            ..open
        };
        assert_eq!(with(with_token).validate(), Ok(()));
        let v6 = MonitorSettings {
            listen: "[::1]:5009".parse().unwrap(),
            ..d()
        };
        assert_eq!(with(v6).validate(), Ok(()));
        // Not on the control port's address.
        let clash = MonitorSettings {
            listen: "127.0.0.1:5008".parse().unwrap(),
            ..d()
        };
        assert_eq!(field(clash), "monitor.listen");
    }

    #[test]
    fn names_and_tokens() {
        assert!(valid_name("alice.b-2_x"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(33)));
        assert!(!valid_name("é"));
        assert!(valid_token("s3cret!"));
        assert!(!valid_token(""));
        assert!(!valid_token("a\tb"));
        assert!(!valid_token(&"t".repeat(101)));
    }
}
