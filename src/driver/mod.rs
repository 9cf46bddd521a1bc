//! The mio driver: moves bytes between sockets and the [`RelayCore`]. Embeddable: it uses the
//! host's [`Registry`] and a range of tokens the host gives it, never the `Poll` itself.

#[allow(unsafe_code)]
pub mod batch;
mod control;
pub mod logtap;

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::event::Event;
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use self::control::{ControlServer, Request};
use self::logtap::{LogLine, LogTap};
use crate::control::{Command, format_clients, format_help, format_metrics, format_stats};
use crate::core::{Config, RelayCore};

/// Datagrams read per readiness event before other sources get a turn.
const READ_BUDGET: usize = 256;
/// RSA decryptions per loop turn; more wait for the next turn (relaying goes first).
const REGISTRATIONS_PER_TURN: usize = 4;

/// The tokens the relay may use: `[start, start + len)`. It needs `3 + max_control`.
#[derive(Debug, Clone, Copy)]
pub struct TokenRange {
    pub start: usize,
    pub len: usize,
}

impl TokenRange {
    pub fn contains(&self, t: Token) -> bool {
        t.0 >= self.start && t.0 - self.start < self.len
    }
}

/// Sockets and control-port settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub group: Ipv4Addr,
    pub port: u16,
    /// Interface (by address) on which the group is joined and replies leave.
    pub iface: Ipv4Addr,
    /// Control listener; `None` disables the control port.
    pub control: Option<SocketAddr>,
    pub max_control: usize,
    /// `auth <token>` required when set.
    pub control_token: Option<String>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            group: Ipv4Addr::new(239, 255, 77, 77),
            port: 5007,
            iface: Ipv4Addr::LOCALHOST,
            control: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 5008))),
            max_control: 8,
            control_token: None,
        }
    }
}

/// Why the relay could not start.
#[derive(Debug)]
pub enum StartError {
    Io(&'static str, io::Error),
    Config(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Io(what, e) => write!(f, "{what}: {e}"),
            StartError::Config(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for StartError {}

/// The relay, driven by a host's mio loop.
pub struct Relay {
    core: RelayCore,
    net: NetConfig,
    mcast: UdpSocket,
    ucast: UdpSocket,
    control: Option<ControlServer>,
    tokens: TokenRange,
    log_tap: Option<LogTap>,
    log_lines: Vec<LogLine>,
    requests: Vec<Request>,
    rx_batch: batch::RecvBatch,
    /// The global log level before any operator raised it.
    base_log_level: log::LevelFilter,
    started: Instant,
    /// The last read stopped at READ_BUDGET, not WouldBlock: read again before sleeping.
    read_more: bool,
    stop_requested: bool,
    stopped: bool,
}

fn multicast_socket(net: &NetConfig) -> Result<std::net::UdpSocket, StartError> {
    let e = |what| move |err| StartError::Io(what, err);
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(e("socket"))?;
    s.set_reuse_address(true).map_err(e("SO_REUSEADDR"))?;
    s.set_nonblocking(true).map_err(e("O_NONBLOCK"))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&SocketAddrV4::new(net.group, net.port).into())
        .map_err(e("bind to the multicast group"))?;
    s.join_multicast_v4(&net.group, &net.iface)
        .map_err(e("join the multicast group (IP_ADD_MEMBERSHIP)"))?;
    Ok(s.into())
}

fn unicast_socket(net: &NetConfig) -> Result<std::net::UdpSocket, StartError> {
    let e = |what| move |err| StartError::Io(what, err);
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(e("socket"))?;
    s.set_nonblocking(true).map_err(e("O_NONBLOCK"))?;
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddrV4::new(net.iface, 0).into())
        .map_err(e("bind the reply socket to the interface"))?;
    Ok(s.into())
}

impl Relay {
    /// Open the sockets, join the group and register everything with `registry`.
    pub fn new(
        core: RelayCore,
        net: NetConfig,
        registry: &Registry,
        tokens: TokenRange,
        log_tap: Option<LogTap>,
        now: Instant,
    ) -> Result<Relay, StartError> {
        if !net.group.is_multicast() {
            return Err(StartError::Config(format!(
                "{} is not a multicast address",
                net.group
            )));
        }
        if tokens.len < 3 + net.max_control {
            return Err(StartError::Config(format!(
                "token range too small: need {} tokens",
                3 + net.max_control
            )));
        }
        if let Some(addr) = net.control
            && !addr.ip().is_loopback()
            && net.control_token.is_none()
        {
            return Err(StartError::Config(format!(
                "refusing to open the control port on non-loopback {addr} without a token \
                     (set --control-token-file or MCRELAY_CONTROL_TOKEN, or bind to 127.0.0.1)"
            )));
        }
        let mut mcast = UdpSocket::from_std(multicast_socket(&net)?);
        let mut ucast = UdpSocket::from_std(unicast_socket(&net)?);
        let t = |i: usize| Token(tokens.start + i);
        registry
            .register(&mut mcast, t(0), Interest::READABLE)
            .map_err(|e| StartError::Io("register", e))?;
        registry
            .register(&mut ucast, t(1), Interest::WRITABLE)
            .map_err(|e| StartError::Io("register", e))?;
        let control = match net.control {
            Some(addr) => Some(
                ControlServer::new(
                    registry,
                    addr,
                    t(2),
                    tokens.start + 3,
                    net.max_control,
                    net.control_token.clone(),
                )
                .map_err(|e| StartError::Io("bind the control port", e))?,
            ),
            None => None,
        };
        info!(
            "relay listening on {}:{} (joined on {}), replies from {}, control {}",
            net.group,
            net.port,
            net.iface,
            ucast
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            control
                .as_ref()
                .map(|c| c.local_addr.to_string())
                .unwrap_or_else(|| "off".into())
        );
        info!(
            "relay key fingerprint (SHA-256 of SPKI DER): {}",
            core.key().fingerprint_hex()
        );
        Ok(Relay {
            core,
            net,
            mcast,
            ucast,
            control,
            tokens,
            log_tap,
            log_lines: Vec::new(),
            requests: Vec::new(),
            rx_batch: batch::RecvBatch::default(),
            base_log_level: log::max_level(),
            started: now,
            read_more: false,
            stop_requested: false,
            stopped: false,
        })
    }

    pub fn core(&self) -> &RelayCore {
        &self.core
    }

    /// The control port's bound address (useful with port 0).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().map(|c| c.local_addr)
    }

    /// The address relay replies come from.
    pub fn reply_addr(&self) -> io::Result<SocketAddr> {
        self.ucast.local_addr()
    }

    /// Is `token` one of ours? Checks both bounds of the range.
    pub fn owns(&self, token: Token) -> bool {
        self.tokens.contains(token)
    }

    /// An operator asked for shutdown (or [`Relay::request_stop`] was called); the host
    /// should call [`Relay::shutdown`].
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    pub fn request_stop(&mut self) {
        self.stop_requested = true;
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Handle one readiness event for one of our tokens (others, stale and spurious events
    /// are ignored).
    pub fn handle_event(&mut self, registry: &Registry, event: &Event, now: Instant) {
        self.handle_ready(
            registry,
            event.token(),
            event.is_readable(),
            event.is_writable(),
            now,
        );
    }

    /// Same as `handle_event`, from plain flags.
    pub fn handle_ready(
        &mut self,
        registry: &Registry,
        token: Token,
        readable: bool,
        writable: bool,
        now: Instant,
    ) {
        if !self.owns(token) || self.stopped {
            return;
        }
        let i = token.0 - self.tokens.start;
        match i {
            0 => self.read_datagrams(now),
            1 => {} // writable: flushed below
            2 => {
                if let Some(c) = &mut self.control {
                    c.accept(registry);
                }
            }
            _ => {
                if let Some(c) = &mut self.control
                    && let Some(key) = c.owns_conn(token)
                    && (readable || !writable)
                {
                    c.read(key, &mut self.requests);
                }
            }
        }
        self.after_io(registry, now);
    }

    fn read_datagrams(&mut self, now: Instant) {
        self.read_more = false;
        for _ in 0..READ_BUDGET / batch::BATCH {
            match batch::recv_batch(&self.mcast, &mut self.rx_batch) {
                Ok(n) => {
                    for i in 0..n {
                        // A truncated datagram is longer than any valid one: the core counts
                        // it as oversized from its length alone.
                        if let Some((from, bytes, _truncated)) = self.rx_batch.get(i) {
                            self.core.handle_datagram(now, from, bytes);
                        }
                    }
                    // Send this batch's fan-out before reading more: the first recipients
                    // should not wait for the encryption of later messages.
                    self.flush_transmits();
                    if n < batch::BATCH {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("recvmmsg: {e}");
                    return;
                }
            }
        }
        self.read_more = true;
    }

    /// Work that follows any input: RSA (bounded), commands, sends, logs.
    fn after_io(&mut self, registry: &Registry, now: Instant) {
        self.core.process_registrations(now, REGISTRATIONS_PER_TURN);
        let mut requests = std::mem::take(&mut self.requests);
        for Request::Command(key, cmd) in requests.drain(..) {
            self.run_command(now, key, cmd);
        }
        self.requests = requests;
        self.flush_transmits();
        self.flush_control(registry);
    }

    fn run_command(&mut self, now: Instant, key: usize, cmd: Command) {
        let Some(ctl) = &mut self.control else { return };
        if !ctl.accepts(key) {
            return;
        }
        let authed = ctl.conns.get(key).map(|c| c.authed).unwrap_or(false);
        if !authed && !cmd.allowed_unauthenticated() {
            return ctl.reply(key, &Err("authentication required: auth <token>".into()));
        }
        let mut body = String::new();
        let result = match cmd {
            Command::Help => {
                format_help(&mut body);
                Ok(body)
            }
            Command::Ping => Ok(body),
            Command::Auth(token) => ctl.auth(key, &token),
            Command::Stats => {
                format_stats(&mut body, &self.core, now, self.started);
                Ok(body)
            }
            Command::Clients => {
                format_clients(&mut body, self.core.clients(), now);
                Ok(body)
            }
            Command::Metrics => {
                format_metrics(&mut body, &self.core, now, self.started);
                Ok(body)
            }
            Command::Config => {
                self.format_config(&mut body);
                Ok(body)
            }
            Command::Kick(target) => match self.core.kick(now, target) {
                Some(id) => {
                    info!("control: operator kicked client {id}");
                    Ok(format!("kicked {id}\n"))
                }
                None => Err("no such client".into()),
            },
            Command::Log(on) => {
                ctl.set_log(key, Some(on), None);
                Ok(body)
            }
            Command::LogLevel(l) => {
                ctl.set_log(key, Some(true), Some(l));
                Ok(body)
            }
            Command::Quit => {
                ctl.close_after_flush(key);
                Ok(body)
            }
            Command::Shutdown => {
                let peer = ctl
                    .conns
                    .get(key)
                    .map(|c| c.peer.to_string())
                    .unwrap_or_default();
                info!("control: shutdown requested by {peer}");
                self.stop_requested = true;
                Ok("shutting down\n".into())
            }
        };
        if let Some(ctl) = &mut self.control {
            ctl.reply(key, &result);
        }
    }

    fn format_config(&self, out: &mut String) {
        let c: &Config = self.core.config();
        let n = &self.net;
        let _ = writeln!(out, "group {}", n.group);
        let _ = writeln!(out, "port {}", n.port);
        let _ = writeln!(out, "iface {}", n.iface);
        let _ = writeln!(
            out,
            "control {}",
            self.control_addr()
                .map(|a| a.to_string())
                .unwrap_or("off".into())
        );
        let _ = writeln!(out, "max_control {}", n.max_control);
        let _ = writeln!(
            out,
            "control_auth {}",
            if n.control_token.is_some() {
                "on"
            } else {
                "off"
            }
        );
        let _ = writeln!(out, "key_bits {}", self.core.key().modulus_len() * 8);
        let _ = writeln!(out, "key_fingerprint {}", self.core.key().fingerprint_hex());
        let _ = writeln!(out, "client_timeout_ms {}", c.client_timeout.as_millis());
        let _ = writeln!(
            out,
            "keepalive_interval_ms {}",
            c.keepalive_interval.as_millis()
        );
        let _ = writeln!(out, "max_clients {}", c.max_clients);
        let _ = writeln!(
            out,
            "reassembly_timeout_ms {}",
            c.reassembly.timeout.as_millis()
        );
        let _ = writeln!(
            out,
            "reassembly_per_client_messages {}",
            c.reassembly.per_owner_messages
        );
        let _ = writeln!(
            out,
            "reassembly_per_client_bytes {}",
            c.reassembly.per_owner_bytes
        );
        let _ = writeln!(out, "reassembly_total_bytes {}", c.reassembly.total_bytes);
        let _ = writeln!(out, "token_ttl_s {}", c.token_ttl.as_secs());
        let _ = writeln!(out, "max_clock_skew_s {}", c.max_clock_skew.as_secs());
        let _ = writeln!(out, "handshakes_per_sec {}", c.handshakes_per_sec);
        let _ = writeln!(
            out,
            "handshakes_per_source_per_sec {}",
            c.handshakes_per_source_per_sec
        );
        let _ = writeln!(
            out,
            "admission {}",
            c.admission
                .as_ref()
                .map(|a| format!("on ({} names)", a.len()))
                .unwrap_or("off".into())
        );
    }

    fn flush_transmits(&mut self) {
        while self.core.has_transmits() {
            match batch::send_batch(&self.ucast, self.core.transmits()) {
                Ok(0) => return,
                Ok(n) => self.core.advance_transmits(n, 0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return, // writable event resumes
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The first pending datagram was refused (counted); the rest keep order.
                    debug!("sendmmsg: {e}");
                    self.core.advance_transmits(0, 1);
                }
            }
        }
    }

    fn flush_control(&mut self, registry: &Registry) {
        if let Some(tap) = &self.log_tap {
            self.log_lines.clear();
            let dropped = tap.drain_into(&mut self.log_lines);
            if let Some(c) = &mut self.control
                && (!self.log_lines.is_empty() || dropped > 0)
            {
                c.push_logs(&self.log_lines, dropped);
            }
        }
        if let Some(c) = &mut self.control {
            c.flush(registry);
            // Stream only what someone reads: drop the global level back when operators
            // lower theirs or leave.
            let want = self.base_log_level.max(c.max_log_level());
            if want != log::max_level() {
                log::set_max_level(want);
            }
        }
    }

    /// The next instant the host must call [`Relay::handle_timeout`], if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.read_more || self.stop_requested {
            return Some(self.started);
        }
        self.core.poll_timeout()
    }

    /// Run timers (harmless when early), continue an interrupted read, flush.
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        if self.stopped {
            return;
        }
        self.core.handle_timeout(now);
        if self.read_more {
            self.read_datagrams(now);
        }
        self.after_io(registry, now);
    }

    /// Graceful stop: clients get SHUTDOWN, operators a last line, the group is left and
    /// everything is deregistered. Idempotent.
    pub fn shutdown(&mut self, registry: &Registry, now: Instant) {
        if self.stopped {
            return;
        }
        self.core.shutdown(now);
        // The send buffer is large; give a slow kernel a few short chances to take the rest.
        for _ in 0..100 {
            self.flush_transmits();
            if !self.core.has_transmits() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let left = self.core.transmits().count();
        if left > 0 {
            warn!("shutdown: {left} notices could not be sent");
        }
        self.flush_control(registry);
        if let Some(c) = &mut self.control {
            c.broadcast_line("LOG INFO relay stopped");
            c.close_all(registry);
        }
        if let Err(e) = self.mcast_leave() {
            warn!("leaving the multicast group: {e}");
        }
        let _ = registry.deregister(&mut self.mcast);
        let _ = registry.deregister(&mut self.ucast);
        self.stopped = true;
        info!("relay stopped");
    }

    fn mcast_leave(&self) -> io::Result<()> {
        self.mcast
            .leave_multicast_v4(&self.net.group, &self.net.iface)
    }

    /// Bytes queued for operators (tests: proves output stays bounded).
    pub fn control_queued_bytes(&self) -> usize {
        self.control.as_ref().map(|c| c.queued_bytes()).unwrap_or(0)
    }
}
