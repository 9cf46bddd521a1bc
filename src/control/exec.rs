//! Running a command: authorisation, then the action on the core, then the reply text.
//!
//! Pure: no sockets. The driver gives each connection an [`Operator`] (what this operator may
//! do and wants to see), hands complete lines to [`Operator::run_line`] and writes back the
//! [`Reply`]; everything an operator can cause is decided here.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::{info, warn};
use subtle::ConstantTimeEq;

use super::command::{self, Command};
use super::format::{
    format_clients, format_config, format_control_metrics, format_control_stats, format_help,
    format_metrics, format_peers, format_remote_clients, format_stats,
};
use crate::config::NetConfig;
use crate::core::ratelimit::{SourceKey, TokenBucket, source_key};
use crate::core::{Metric, MetricKind, RelayCore};
use crate::federation::Federation;

/// Refused `auth` attempts (failed or throttled) before the connection is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;
/// Failed `auth` attempts from one source (an IP address; for IPv6 a /64) before it must back
/// off: its next attempts are refused unchecked for [`AUTH_BACKOFF_FIRST`], doubling with each
/// further failure up to [`AUTH_BACKOFF_MAX`].
pub const AUTH_FREE_FAILURES: u32 = 3;
/// The first back-off of a source.
pub const AUTH_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest back-off: once an attack stops, an operator at the attacker's address (all of
/// loopback is one) is checked again after at most this long.
pub const AUTH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A source's failures are forgotten after this long without one.
pub const AUTH_FORGET: Duration = Duration::from_secs(600);
/// `auth` attempts checked per second, all sources together (bursts of as many).
pub const AUTH_CHECKS_PER_SEC: u32 = 10;
/// Per-source entries (hashed with a per-process key; colliding sources share one).
const AUTH_SOURCE_SLOTS: usize = 256;

/// The answer to one line: body lines then `OK`, or `ERR <reason>`.
pub type Reply = Result<String, String>;

/// What the relay lets one control command see and change.
pub struct Context<'a> {
    /// The relay core (stats, clients, kick).
    pub core: &'a mut RelayCore,
    /// The federation, when it is on (`peers`).
    pub federation: Option<&'a Federation>,
    /// Socket settings, for `config`.
    pub net: &'a NetConfig,
    /// The control listener's bound address, for `config`.
    pub control_addr: Option<SocketAddr>,
    /// The control token, if the relay has one.
    pub token: Option<&'a str>,
    /// The current time.
    pub now: Instant,
    /// Set by `shutdown`: the host should stop the relay.
    pub shutdown_requested: bool,
    /// What the control port keeps across connections (its counters).
    pub control: &'a mut ControlState,
}

macro_rules! control_counters {
    ($( $field:ident, $kind:ident, $help:literal; )*) => {
        /// The control port's own figures (not the core's: they live with the control
        /// server and are printed after the core's in `stats` and `metrics`).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct ControlCounters {
            $( #[doc = $help] pub $field: u64, )*
        }

        /// Names, kinds and help texts of [`ControlCounters`], in `stats` order.
        pub const CONTROL_COUNTERS: &[Metric] = &[
            $( Metric { name: stringify!($field), help: $help, kind: MetricKind::$kind }, )*
        ];

        impl ControlCounters {
            /// Every figure with its value, in [`CONTROL_COUNTERS`] order.
            pub fn figures(&self) -> impl Iterator<Item = (&'static Metric, u64)> + '_ {
                CONTROL_COUNTERS.iter().zip([$( self.$field, )*])
            }
        }
    };
}

control_counters! {
    control_connections, Gauge, "Control connections open now.";
    control_output_bytes, Gauge, "Bytes of replies and log lines queued for operators.";
    control_auth_failures, Counter, "Auth attempts checked and refused.";
    control_auth_throttled, Counter, "Auth attempts refused unchecked: their source backs off, or the global cap was reached.";
    control_auth_timeouts, Counter, "Connections closed for not authenticating in time.";
    control_idle_timeouts, Counter, "Connections closed after the idle timeout.";
    control_evicted, Counter, "Unauthenticated connections closed to make room for a newcomer.";
    control_refused, Counter, "Connections refused: every slot held by an authenticated operator.";
    control_overlong_closed, Counter, "Connections closed for sending 64 KiB without a newline.";
    control_read_paused, Counter, "Times reading a connection paused until its queued output drained.";
}

/// How long a control connection may stay without authenticating, or idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A connection that has not authenticated this long after connecting is closed (only
    /// when the relay has a token).
    pub auth: Duration,
    /// An authenticated connection that has sent no command this long, and does not stream
    /// the log, is closed; `None`: never.
    pub idle: Option<Duration>,
}

impl Timeouts {
    /// The settings' timeouts (`NetConfig::control_auth_timeout`, `control_idle_timeout`;
    /// an idle timeout of zero means never).
    pub fn of(net: &NetConfig) -> Self {
        Timeouts {
            auth: net.control_auth_timeout,
            idle: (!net.control_idle_timeout.is_zero()).then_some(net.control_idle_timeout),
        }
    }
}

/// What the control port keeps across its connections: counters and the rate-limited log of
/// its defences. Owned by the control server, lent to each command in [`Context`].
#[derive(Debug)]
pub struct ControlState {
    /// The figures `stats` and `metrics` print after the core's.
    pub counters: ControlCounters,
    timeouts: Timeouts,
    auth: AuthLimiter,
    log: NoticeLog,
    conn_log: NoticeLog,
}

impl ControlState {
    /// Fresh counters, with these deadlines for connections.
    pub fn new(timeouts: Timeouts, now: Instant) -> Self {
        ControlState {
            counters: ControlCounters::default(),
            timeouts,
            auth: AuthLimiter::new(now),
            log: NoticeLog::new(now, log::Level::Warn, "control-port warnings"),
            conn_log: NoticeLog::new(now, log::Level::Info, "control connect/disconnect lines"),
        }
    }

    /// The deadlines for connections.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Log a warning about the control port's defences at work (an attack, usually): at most
    /// 10 lines a second, the others are counted and summarised in the next one.
    pub fn notice(&mut self, now: Instant, msg: std::fmt::Arguments<'_>) {
        if self.log.allow(now) {
            warn!("{msg}");
        }
    }

    /// Log a connection opening or closing, at info level, rate-limited like
    /// [`ControlState::notice`] but separately (a connection flood must not hide warnings).
    pub fn connection_note(&mut self, now: Instant, msg: std::fmt::Arguments<'_>) {
        if self.conn_log.allow(now) {
            info!("{msg}");
        }
    }
}

/// One source's record of failed `auth` attempts.
#[derive(Debug, Clone, Copy, Default)]
struct Strikes {
    failures: u32,
    last_failure: Option<Instant>,
    blocked_until: Option<Instant>,
}

/// Who may have an `auth` attempt checked: per source, a back-off after
/// [`AUTH_FREE_FAILURES`] failures; over all sources, [`AUTH_CHECKS_PER_SEC`]. Reconnecting
/// does not help: the record is per source address, not per connection.
#[derive(Debug)]
struct AuthLimiter {
    sources: Box<[Strikes]>,
    key: RandomState,
    global: TokenBucket,
}

impl AuthLimiter {
    fn new(now: Instant) -> Self {
        AuthLimiter {
            sources: vec![Strikes::default(); AUTH_SOURCE_SLOTS].into_boxed_slice(),
            key: RandomState::new(),
            global: TokenBucket::new(AUTH_CHECKS_PER_SEC, AUTH_CHECKS_PER_SEC, now),
        }
    }

    fn strikes(&mut self, ip: IpAddr) -> &mut Strikes {
        let mut h = self.key.build_hasher();
        match source_key(ip) {
            SourceKey::V4(b) => {
                h.write_u8(4);
                h.write(&b);
            }
            SourceKey::V6Prefix(b) => {
                h.write_u8(6);
                h.write(&b);
            }
        }
        let n = self.sources.len();
        // `n` is AUTH_SOURCE_SLOTS, not zero; the index is in range.
        &mut self.sources[(h.finish() % n as u64) as usize]
    }

    /// May an attempt from `ip` be checked now? `Err(retry_in)` when not. A refused attempt
    /// does not extend the back-off, so it ends at a known time whatever the attacker does.
    fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.strikes(ip).blocked_until
            && now < until
        {
            return Err(until - now);
        }
        // A source that is backing off takes nothing from the global budget.
        if !self.global.try_take(now) {
            return Err(Duration::from_secs(1));
        }
        Ok(())
    }

    /// An attempt from `ip` was checked and failed; returns the back-off it now starts.
    fn failed(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let s = self.strikes(ip);
        if s.last_failure
            .is_some_and(|t| now.saturating_duration_since(t) >= AUTH_FORGET)
        {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.last_failure = Some(now);
        let beyond = s.failures.checked_sub(AUTH_FREE_FAILURES)?;
        let backoff = AUTH_BACKOFF_FIRST
            .saturating_mul(1 << beyond.min(16))
            .min(AUTH_BACKOFF_MAX);
        s.blocked_until = Some(now + backoff);
        Some(backoff)
    }

    /// An attempt from `ip` succeeded: its record is cleared.
    fn succeeded(&mut self, ip: IpAddr) {
        *self.strikes(ip) = Strikes::default();
    }
}

/// Whole seconds, rounded up, at least 1 (for "retry in N s").
fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Rate limit for the control port's warnings: an attacker repeating an attack thousands of
/// times a second must not turn the log into the flood.
#[derive(Debug)]
struct NoticeLog {
    window: Instant,
    lines: u32,
    suppressed: u64,
    level: log::Level,
    what: &'static str,
}

impl NoticeLog {
    const PER_SEC: u32 = 10;

    fn new(now: Instant, level: log::Level, what: &'static str) -> Self {
        NoticeLog {
            window: now,
            lines: 0,
            suppressed: 0,
            level,
            what,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                log::log!(
                    self.level,
                    "control: {} more {} not logged (see `stats`)",
                    self.suppressed,
                    self.what
                );
            }
            self.window = now;
            self.lines = 0;
            self.suppressed = 0;
        }
        if self.lines < Self::PER_SEC {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// One operator's session on the control port: authentication and log preferences.
#[derive(Debug, Clone)]
pub struct Operator {
    peer: SocketAddr,
    /// When the connection was accepted (the authentication deadline counts from here).
    connected_at: Instant,
    /// When the last command line arrived (the idle timeout counts from here).
    last_active: Instant,
    authed: bool,
    auth_failures: u32,
    log_on: bool,
    log_level: log::LevelFilter,
    /// False after `quit` or an auth lockout: later lines are ignored, the connection closes
    /// once its output is written.
    accepting: bool,
}

impl Operator {
    /// A new connection from `peer`, accepted at `now`; it starts authenticated when the
    /// relay has no token.
    pub fn new(peer: SocketAddr, token_required: bool, now: Instant) -> Self {
        Operator {
            peer,
            connected_at: now,
            last_active: now,
            authed: !token_required,
            auth_failures: 0,
            log_on: false,
            log_level: log::LevelFilter::Info,
            accepting: true,
        }
    }

    /// The first reply, sent on connect.
    pub fn greeting(&self) -> &'static str {
        if self.authed {
            "mcrelay control; type help\nOK\n"
        } else {
            "mcrelay control; authenticate with: auth <token>\nOK\n"
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Has this operator authenticated (or is no token required)?
    pub fn is_authenticated(&self) -> bool {
        self.authed
    }

    /// Does the connection still take commands? When false it should close after its
    /// output is written.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// The log level streamed to this operator, if it asked for the log (and may see it).
    pub fn log_level(&self) -> Option<log::LevelFilter> {
        (self.log_on && self.authed).then_some(self.log_level)
    }

    /// Parse and run one line (without its newline). `None` when the connection no longer
    /// accepts commands (the line is ignored, as pipelined input after `quit` is).
    pub fn run_line(&mut self, line: &str, cx: &mut Context<'_>) -> Option<Reply> {
        if !self.accepting {
            return None;
        }
        self.last_active = cx.now;
        Some(match command::parse(line) {
            Ok(cmd) => self.run(cmd, cx),
            Err(e) => Err(e),
        })
    }

    /// When this connection must be closed unless something happens first: the
    /// authentication deadline while it has not authenticated, then the idle timeout (not
    /// while it streams the log: `mcrelay ctl --follow` sends nothing for hours). `None`
    /// when it is closing anyway or has no deadline.
    pub fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        if !self.accepting {
            None
        } else if !self.authed {
            Some(self.connected_at + t.auth)
        } else if self.log_level().is_some() {
            None
        } else {
            t.idle.map(|d| self.last_active + d)
        }
    }

    /// Past the deadline at `now`: stop accepting commands, count it and return the last
    /// reply (the driver writes it and closes the connection).
    pub fn expire(&mut self, now: Instant, state: &mut ControlState) -> Option<Reply> {
        let t = state.timeouts;
        if self.deadline(&t).is_none_or(|d| now < d) {
            return None;
        }
        self.accepting = false;
        let peer = self.peer;
        Some(Err(if self.authed {
            state.counters.control_idle_timeouts += 1;
            let idle = t.idle.unwrap_or_default();
            info!("control: {peer} idle for {idle:?}; closing it");
            format!("idle for {idle:?}; closing")
        } else {
            state.counters.control_auth_timeouts += 1;
            let auth = t.auth;
            state.notice(
                now,
                format_args!("control: {peer} did not authenticate within {auth:?}; closing it"),
            );
            format!("authentication timeout: no auth within {auth:?}")
        }))
    }

    /// Run one parsed command.
    pub fn run(&mut self, cmd: Command, cx: &mut Context<'_>) -> Reply {
        if !self.authed && !cmd.allowed_unauthenticated() {
            return Err("authentication required: auth <token>".into());
        }
        let mut body = String::new();
        match cmd {
            Command::Help => format_help(&mut body),
            Command::Ping => {}
            Command::Auth(token) => return self.auth(&token, cx),
            Command::Stats => {
                format_stats(&mut body, cx.core, cx.now);
                format_control_stats(&mut body, &cx.control.counters);
            }
            Command::Clients => {
                format_clients(&mut body, cx.core.clients(), cx.now);
                format_remote_clients(&mut body, &cx.core.remote_clients(), cx.now);
            }
            Command::Peers => match cx.federation {
                Some(f) => format_peers(&mut body, f, cx.core, cx.now),
                None => return Err("federation is off (serve --nats ...)".into()),
            },
            Command::Metrics => {
                format_metrics(&mut body, cx.core, cx.now);
                format_control_metrics(&mut body, &cx.control.counters);
            }
            Command::Config => format_config(&mut body, cx.core, cx.net, cx.control_addr),
            Command::Kick(target) => match cx.core.kick(cx.now, target) {
                Some(id) => {
                    info!("control: {} kicked client {id}", self.peer);
                    body = format!("kicked {id}\n");
                }
                None => return Err("no such client".into()),
            },
            Command::Rekey => {
                if !cx.core.rekey(cx.now) {
                    return Err("not in group mode (--distribution group)".into());
                }
                info!("control: {} started epoch {}", self.peer, cx.core.epoch());
                body = format!("epoch {}\n", cx.core.epoch());
            }
            Command::Log(on) => self.log_on = on,
            Command::LogLevel(l) => {
                self.log_on = true;
                self.log_level = l;
            }
            Command::Quit => self.accepting = false,
            Command::Shutdown => {
                info!("control: shutdown requested by {}", self.peer);
                cx.shutdown_requested = true;
                body.push_str("shutting down\n");
            }
        }
        Ok(body)
    }

    fn auth(&mut self, token: &str, cx: &mut Context<'_>) -> Reply {
        let Some(want) = cx.token else {
            self.authed = true;
            return Ok("no token configured\n".into());
        };
        // Attempts pipelined after the last allowed failure are refused unchecked: the
        // connection is already closing.
        if self.auth_failures >= MAX_AUTH_FAILURES {
            return Err("authentication failed".into());
        }
        let (ip, now, state) = (self.peer.ip(), cx.now, &mut *cx.control);
        if let Err(retry) = state.auth.admit(ip, now) {
            // Refused unchecked, even the right token: a check now would tell a guesser.
            state.counters.control_auth_throttled += 1;
            self.refused(now, state);
            let retry = ceil_secs(retry);
            return Err(format!(
                "authentication failed: throttled, retry in {retry}s"
            ));
        }
        if bool::from(want.as_bytes().ct_eq(token.as_bytes())) {
            state.auth.succeeded(ip);
            self.authed = true;
            info!("control: {} authenticated", self.peer);
            return Ok(String::new());
        }
        state.counters.control_auth_failures += 1;
        let n = self.auth_failures + 1;
        let peer = self.peer;
        state.notice(
            now,
            format_args!("control: failed auth from {peer} ({n} of {MAX_AUTH_FAILURES})"),
        );
        if let Some(d) = state.auth.failed(ip, now) {
            state.notice(
                now,
                format_args!("control: auth from {ip} refused unchecked for {d:?} (back-off)"),
            );
        }
        self.refused(now, state);
        Err("authentication failed".into())
    }

    /// Count a refused attempt on this connection; close it at MAX_AUTH_FAILURES.
    fn refused(&mut self, now: Instant, state: &mut ControlState) {
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            let peer = self.peer;
            state.notice(
                now,
                format_args!(
                    "control: closing {peer} after {MAX_AUTH_FAILURES} refused auth attempts"
                ),
            );
            self.accepting = false;
        }
    }
}

/// The most verbose level any authenticated operator streams (`Off` when none does).
pub fn max_log_level<'a>(operators: impl Iterator<Item = &'a Operator>) -> log::LevelFilter {
    operators
        .filter_map(Operator::log_level)
        .max()
        .unwrap_or(log::LevelFilter::Off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::testkit;

    struct Harness {
        w: testkit::Net,
        net: NetConfig,
        control: ControlState,
    }

    impl Harness {
        fn new() -> Self {
            let w = testkit::Net::new(Config::default());
            let now = w.now;
            Harness {
                w,
                net: NetConfig::default(),
                control: ControlState::new(Timeouts::of(&NetConfig::default()), now),
            }
        }

        /// Register a client through the sans-IO session; returns its id.
        fn add_client(&mut self, port: u16) -> u32 {
            self.w.client(port).1
        }

        fn run(&mut self, op: &mut Operator, line: &str, token: Option<&str>) -> (Reply, bool) {
            let mut cx = Context {
                core: &mut self.w.core,
                federation: None,
                net: &self.net,
                control_addr: Some("127.0.0.1:5008".parse().unwrap()),
                token,
                now: self.w.now,
                shutdown_requested: false,
                control: &mut self.control,
            };
            let r = op.run_line(line, &mut cx).expect("accepting");
            (r, cx.shutdown_requested)
        }
    }

    fn op(token_required: bool) -> Operator {
        Operator::new(
            "127.0.0.1:40000".parse().unwrap(),
            token_required,
            Instant::now(),
        )
    }

    #[test]
    fn only_help_auth_ping_quit_before_auth() {
        let mut h = Harness::new();
        let mut o = op(true);
        assert!(o.greeting().contains("authenticate"));
        for line in [
            "stats", "clients", "metrics", "config", "kick 1", "shutdown", "log on",
        ] {
            let (r, stop) = h.run(&mut o, line, Some("s3cret"));
            assert_eq!(
                r,
                Err("authentication required: auth <token>".into()),
                "{line}"
            );
            assert!(!stop);
        }
        assert!(h.run(&mut o, "help", Some("s3cret")).0.is_ok());
        assert!(h.run(&mut o, "ping", Some("s3cret")).0.is_ok());
        assert_eq!(o.log_level(), None);
        assert_eq!(
            h.run(&mut o, "auth s3cret", Some("s3cret")).0,
            Ok(String::new())
        );
        assert!(o.is_authenticated());
        assert!(h.run(&mut o, "stats", Some("s3cret")).0.is_ok());
    }

    #[test]
    fn three_failed_auths_close_the_connection() {
        let mut h = Harness::new();
        let mut o = op(true);
        for _ in 0..2 {
            assert!(h.run(&mut o, "auth nope", Some("s3cret")).0.is_err());
            assert!(o.is_accepting());
        }
        assert!(h.run(&mut o, "auth nope", Some("s3cret")).0.is_err());
        assert!(!o.is_accepting());
        let mut cx = Context {
            core: &mut h.w.core,
            federation: None,
            net: &h.net,
            control_addr: None,
            token: Some("s3cret"),
            now: h.w.now,
            shutdown_requested: false,
            control: &mut h.control,
        };
        assert_eq!(
            o.run_line("auth s3cret", &mut cx),
            None,
            "ignored after lockout"
        );
        assert!(!o.is_authenticated());
    }

    fn op_from(ip: &str) -> Operator {
        Operator::new(format!("{ip}:40000").parse().unwrap(), true, Instant::now())
    }

    #[test]
    fn failed_auth_backs_off_per_source_across_connections() {
        let mut h = Harness::new();
        let t0 = h.w.now;
        let tok = Some("s3cret");
        let failed: Reply = Err("authentication failed".into());
        let throttled =
            |s: u64| -> Reply { Err(format!("authentication failed: throttled, retry in {s}s")) };
        // Three connections with one wrong guess each: reconnecting does not reset the count.
        for _ in 0..3 {
            let mut o = op(true);
            assert_eq!(h.run(&mut o, "auth nope", tok).0, failed);
        }
        // The source now backs off 1 s: refused unchecked, even with the right token.
        let mut o = op(true);
        assert_eq!(h.run(&mut o, "auth s3cret", tok).0, throttled(1));
        assert!(!o.is_authenticated());
        // Another source is not affected.
        let mut other = op_from("127.0.0.2");
        assert_eq!(h.run(&mut other, "auth s3cret", tok).0, Ok(String::new()));
        // Each further failure doubles the back-off, up to AUTH_BACKOFF_MAX.
        let mut until = t0 + Duration::from_secs(1);
        for next in [2, 4, 8, 16, 30, 30] {
            h.w.now = until - Duration::from_millis(1);
            assert_eq!(h.run(&mut op(true), "auth nope", tok).0, throttled(1));
            h.w.now = until;
            assert_eq!(h.run(&mut op(true), "auth nope", tok).0, failed);
            assert_eq!(h.run(&mut op(true), "auth nope", tok).0, throttled(next));
            until = h.w.now + Duration::from_secs(next);
        }
        assert_eq!(h.control.counters.control_auth_failures, 3 + 6);
        assert_eq!(h.control.counters.control_auth_throttled, 1 + 6 * 2);
        // When the back-off ends, the right token works and clears the record.
        h.w.now = until;
        let mut o = op(true);
        assert_eq!(h.run(&mut o, "auth s3cret", tok).0, Ok(String::new()));
        assert!(o.is_authenticated());
        assert_eq!(h.run(&mut op(true), "auth nope", tok).0, failed);
        assert_eq!(h.run(&mut op(true), "auth nope", tok).0, failed);
        // Failures are forgotten after AUTH_FORGET without one.
        h.w.now += AUTH_FORGET;
        assert_eq!(h.run(&mut op(true), "auth nope", tok).0, failed);
        assert_eq!(h.run(&mut op(true), "auth nope", tok).0, failed);
        assert_eq!(
            h.run(&mut op(true), "auth s3cret", tok).0,
            Ok(String::new())
        );
    }

    #[test]
    fn auth_checks_are_capped_over_all_sources() {
        let mut h = Harness::new();
        let tok = Some("s3cret");
        // One wrong guess from each of many addresses: at most AUTH_CHECKS_PER_SEC checked.
        let mut checked = 0;
        for i in 0..50 {
            let mut o = op_from(&format!("10.0.{i}.1"));
            match h.run(&mut o, "auth nope", tok).0 {
                Err(e) if e == "authentication failed" => checked += 1,
                Err(e) => assert_eq!(e, "authentication failed: throttled, retry in 1s"),
                Ok(_) => panic!("wrong token accepted"),
            }
        }
        assert_eq!(checked, AUTH_CHECKS_PER_SEC);
        assert_eq!(h.control.counters.control_auth_throttled, 50 - 10);
        // The bucket refills: 100 ms buys one check.
        h.w.now += Duration::from_millis(100);
        let mut o = op_from("10.1.0.1");
        assert_eq!(h.run(&mut o, "auth s3cret", tok).0, Ok(String::new()));
        let mut o = op_from("10.1.0.2");
        assert!(h.run(&mut o, "auth s3cret", tok).0.is_err());
    }

    #[test]
    fn auth_without_a_token_configured() {
        let mut h = Harness::new();
        let mut o = op(false);
        assert!(o.greeting().contains("type help"));
        assert_eq!(
            h.run(&mut o, "auth x", None).0,
            Ok("no token configured\n".into())
        );
    }

    #[test]
    fn stats_and_metrics_list_every_figure() {
        let mut h = Harness::new();
        h.add_client(4001);
        let mut o = op(false);
        let stats = h.run(&mut o, "stats", None).0.expect("ok");
        assert!(stats.contains("\nclients 1\n"), "{stats}");
        assert!(stats.contains("joins 1\n"));
        assert!(stats.contains("drop.replay 0\n"));
        let lines = stats.lines().count();
        let want = crate::core::GAUGES.len()
            + crate::core::Stats::COUNTERS.len()
            + 1
            + crate::core::DropReason::ALL.len()
            + CONTROL_COUNTERS.len();
        assert_eq!(lines, want);
        // The control port's figures come last, from the control server's counters.
        h.control.counters.control_read_paused = 7;
        let stats = h.run(&mut o, "stats", None).0.expect("ok");
        assert!(stats.contains("\ncontrol_read_paused 7\n"), "{stats}");
        let metrics = h.run(&mut o, "metrics", None).0.expect("ok");
        assert!(metrics.contains("# TYPE mcrelay_clients gauge\nmcrelay_clients 1\n"));
        assert!(metrics.contains("mcrelay_joins_total 1\n"));
        assert!(metrics.contains("mcrelay_drops_total{reason=\"replay\"} 0\n"));
        assert!(metrics.contains(
            "# TYPE mcrelay_control_read_paused_total counter\nmcrelay_control_read_paused_total 7\n"
        ));
        assert!(metrics.contains("# TYPE mcrelay_control_connections gauge\n"));
    }

    #[test]
    fn auth_deadline_then_idle_timeout_but_not_while_following_the_log() {
        let mut h = Harness::new();
        let t0 = h.w.now;
        let t = Timeouts {
            auth: Duration::from_secs(5),
            idle: Some(Duration::from_secs(300)),
        };
        h.control = ControlState::new(t, t0);
        let peer = "127.0.0.1:40000".parse().unwrap();
        let mut o = Operator::new(peer, true, t0);
        // Unauthenticated: 5 s from connecting, whatever it sends meanwhile.
        assert_eq!(o.deadline(&t), Some(t0 + Duration::from_secs(5)));
        h.w.now = t0 + Duration::from_secs(4);
        assert!(h.run(&mut o, "ping", Some("s3cret")).0.is_ok());
        assert_eq!(o.deadline(&t), Some(t0 + Duration::from_secs(5)));
        assert_eq!(
            o.expire(t0 + Duration::from_millis(4999), &mut h.control),
            None
        );
        // Authenticated in time: from now on, 300 s after the last command.
        assert!(h.run(&mut o, "auth s3cret", Some("s3cret")).0.is_ok());
        assert_eq!(o.deadline(&t), Some(h.w.now + Duration::from_secs(300)));
        assert_eq!(o.expire(t0 + Duration::from_secs(6), &mut h.control), None);
        // Following the log: no idle timeout.
        assert!(h.run(&mut o, "log on", Some("s3cret")).0.is_ok());
        assert_eq!(o.deadline(&t), None);
        assert!(h.run(&mut o, "log off", Some("s3cret")).0.is_ok());
        let idle_at = h.w.now + Duration::from_secs(300);
        assert_eq!(o.deadline(&t), Some(idle_at));
        let r = o.expire(idle_at, &mut h.control);
        assert_eq!(r, Some(Err("idle for 300s; closing".into())));
        assert!(!o.is_accepting());
        assert_eq!(o.deadline(&t), None, "closing: no more deadlines");
        assert_eq!(h.control.counters.control_idle_timeouts, 1);

        // A silent unauthenticated connection.
        let mut silent = Operator::new(peer, true, t0);
        let r = silent.expire(t0 + Duration::from_secs(5), &mut h.control);
        assert_eq!(
            r,
            Some(Err("authentication timeout: no auth within 5s".into()))
        );
        assert_eq!(h.control.counters.control_auth_timeouts, 1);
        // Idle timeout off: an authenticated operator never expires.
        let off = Timeouts { idle: None, ..t };
        assert_eq!(Operator::new(peer, false, t0).deadline(&off), None);
        assert_eq!(Timeouts::of(&NetConfig::default()), t);
    }

    #[test]
    fn notices_are_rate_limited() {
        let t0 = Instant::now();
        let mut s = ControlState::new(Timeouts::of(&NetConfig::default()), t0);
        for _ in 0..25 {
            s.notice(t0, format_args!("control: test"));
        }
        assert_eq!((s.log.lines, s.log.suppressed), (10, 15));
        s.notice(t0 + Duration::from_secs(1), format_args!("control: test"));
        assert_eq!((s.log.lines, s.log.suppressed), (1, 0));
        // Connection lines have their own allowance.
        for _ in 0..12 {
            s.connection_note(t0, format_args!("control: test"));
        }
        assert_eq!((s.conn_log.lines, s.conn_log.suppressed), (10, 2));
        assert_eq!(s.log.suppressed, 0);
    }

    #[test]
    fn clients_and_kick() {
        let mut h = Harness::new();
        let a = h.add_client(4001);
        let b = h.add_client(4002);
        let mut o = op(false);
        let list = h.run(&mut o, "clients", None).0.expect("ok");
        assert_eq!(list.lines().count(), 2);
        assert!(list.contains(&format!("id={a} addr=127.0.0.1:4001 name=-")));
        assert_eq!(
            h.run(&mut o, &format!("kick {a}"), None).0,
            Ok(format!("kicked {a}\n"))
        );
        assert_eq!(
            h.run(&mut o, "kick 127.0.0.1:4002", None).0,
            Ok(format!("kicked {b}\n"))
        );
        assert_eq!(h.w.core.client_count(), 0);
        assert_eq!(
            h.run(&mut o, "kick 99", None).0,
            Err("no such client".into())
        );
        assert_eq!(h.w.core.stats().kicks, 2);
    }

    #[test]
    fn config_shows_settings_but_no_secret() {
        let mut h = Harness::new();
        h.net.control_token = Some("s3cret".into());
        let mut o = op(true);
        assert!(h.run(&mut o, "auth s3cret", Some("s3cret")).0.is_ok());
        let cfg = h.run(&mut o, "config", Some("s3cret")).0.expect("ok");
        assert!(cfg.contains("group 239.255.77.77\n"));
        assert!(cfg.contains("control 127.0.0.1:5008\n"));
        assert!(cfg.contains("control_auth on\n"));
        assert!(cfg.contains("reassembly_per_client_bytes 393216\n"));
        assert!(cfg.contains("distribution unicast\n"));
        assert!(!cfg.contains("s3cret"));
    }

    #[test]
    fn log_quit_ping_help_and_shutdown() {
        let mut h = Harness::new();
        let mut o = op(false);
        assert_eq!(h.run(&mut o, "ping", None).0, Ok(String::new()));
        let help = h.run(&mut o, "help", None).0.expect("ok");
        assert_eq!(help.lines().count(), command::HELP.len());
        assert_eq!(o.log_level(), None);
        assert!(h.run(&mut o, "log on", None).0.is_ok());
        assert_eq!(o.log_level(), Some(log::LevelFilter::Info));
        assert!(h.run(&mut o, "log level debug", None).0.is_ok());
        assert_eq!(o.log_level(), Some(log::LevelFilter::Debug));
        let quiet = op(false);
        assert_eq!(
            max_log_level([&o, &quiet].into_iter()),
            log::LevelFilter::Debug
        );
        assert!(h.run(&mut o, "log off", None).0.is_ok());
        assert_eq!(max_log_level([&o].into_iter()), log::LevelFilter::Off);
        let (r, stop) = h.run(&mut o, "shutdown", None);
        assert_eq!(r, Ok("shutting down\n".into()));
        assert!(stop);
        assert!(h.run(&mut o, "quit", None).0.is_ok());
        assert!(!o.is_accepting());
    }

    #[test]
    fn rekey_in_unicast_and_in_group_mode() {
        let mut h = Harness::new();
        let mut o = op(false);
        assert_eq!(
            h.run(&mut o, "rekey", None).0,
            Err("not in group mode (--distribution group)".into())
        );
        let ingest = std::net::SocketAddrV4::new(h.net.group, h.net.port);
        let g = crate::config::GroupConfig::for_ingest(ingest);
        h.w = testkit::Net::new(Config {
            distribution: crate::config::Distribution::Group(g),
            ..Config::default()
        });
        let before = h.w.core.epoch();
        assert_eq!(
            h.run(&mut o, "rekey", None).0,
            Ok(format!("epoch {}\n", before + 1))
        );
        let cfg = h.run(&mut o, "config", None).0.expect("ok");
        assert!(cfg.contains("distribution group\n"), "{cfg}");
        assert!(
            cfg.contains("distribution_group 239.255.77.77:5008\n"),
            "{cfg}"
        );
    }

    #[test]
    fn parse_errors_are_replies() {
        let mut h = Harness::new();
        let mut o = op(false);
        let (r, _) = h.run(&mut o, "frobnicate", None);
        assert_eq!(r, Err("unknown command: frobnicate (try: help)".into()));
    }
}
