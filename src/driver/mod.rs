//! The mio driver: moves bytes between sockets and the [`RelayCore`]. Embeddable: it uses the
//! host's [`Registry`] and a range of tokens it reports, never the `Poll` itself.
//!
//! Build one with [`Relay::builder`]; drive it with [`Relay::handle_event`],
//! [`Relay::poll_timeout`] / [`Relay::handle_timeout`], and read what happened with
//! [`Relay::poll_event`] (docs/embedding.md).

// Batched socket I/O is internal; the `internals` feature exposes it to the benchmark's
// plaintext baseline (examples/bench.rs), so that both sides run the same code. Not API.
#[cfg(feature = "internals")]
#[allow(unsafe_code, missing_docs)]
pub mod batch;
#[cfg(not(feature = "internals"))]
#[allow(unsafe_code, unreachable_pub)]
pub(crate) mod batch;
mod control;
mod federation;
pub mod logtap;
pub mod monitor;
mod share;

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::event::Event;
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use self::control::ControlServer;
use self::federation::FedLink;
use self::logtap::{LogLine, LogTap};
use self::monitor::Monitor;
use self::share::RsaShare;
use crate::config::{Config, NetConfig};
use crate::control::max_log_level;
use crate::core::{ClientInfo, KickTarget, RelayCore, RelayEvent, Stats};
use crate::crypto::key::ServerKey;
use crate::crypto::rng::Rng;
use crate::error::Error;

/// Datagrams read per readiness event before other sources get a turn.
const READ_BUDGET: usize = 256;

/// The tokens the relay uses: `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRange {
    /// The first token.
    pub start: usize,
    /// How many.
    pub len: usize,
}

impl TokenRange {
    /// Is `t` inside the range (both bounds checked)?
    pub fn contains(&self, t: Token) -> bool {
        t.0 >= self.start && t.0 - self.start < self.len
    }
}

/// Builds a [`Relay`]: settings, key, and what the host lends it.
#[derive(Debug)]
pub struct RelayBuilder {
    key: ServerKey,
    cfg: Config,
    net: NetConfig,
    rng: Option<Rng>,
    log_tap: Option<LogTap>,
    manage_log_level: bool,
}

impl RelayBuilder {
    /// Core settings (default: [`Config::default`]).
    pub fn config(mut self, cfg: Config) -> Self {
        self.cfg = cfg;
        self
    }

    /// Socket and control-port settings (default: [`NetConfig::default`]).
    pub fn net(mut self, net: NetConfig) -> Self {
        self.net = net;
        self
    }

    /// The CSPRNG (default: seeded from the OS).
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = Some(rng);
        self
    }

    /// Give operators the live log: the host's logger pushes its lines into `tap`.
    pub fn log_tap(mut self, tap: LogTap) -> Self {
        self.log_tap = Some(tap);
        self
    }

    /// Let the relay raise the process-wide `log` level while an operator streams a more
    /// verbose level than the host's, and lower it back after (default: off; the relay then
    /// never touches the global level, and operators see what the host's level lets through).
    pub fn manage_log_level(mut self, on: bool) -> Self {
        self.manage_log_level = on;
        self
    }

    /// Validate the settings, open the sockets, join the group and register everything
    /// with `registry`, on tokens `[first_token, first_token + Relay::tokens_needed(net))`.
    pub fn build(
        self,
        registry: &Registry,
        first_token: Token,
        now: Instant,
    ) -> Result<Relay, Error> {
        let mut cfg = self.cfg;
        // Federation: the core's ids carry the relay id (docs/federation.md).
        cfg.relay_id = self.net.federation.as_ref().map(|f| f.relay_id);
        cfg.validate_with(&self.net)?;
        let mut rng = match self.rng {
            Some(r) => r,
            None => Rng::from_os().map_err(|e| Error::Io {
                what: "seed the CSPRNG from the OS",
                source: io::Error::other(e.to_string()),
            })?,
        };
        // The driver may read the wall clock (the core never does): Fernet timestamps.
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut seed = [0u8; 32];
        rng.fill(&mut seed);
        let fed_rng = Rng::from_seed(seed);
        let core = RelayCore::new(cfg, self.key, rng, now, wall.as_secs())?;
        let tokens = TokenRange {
            start: first_token.0,
            len: Relay::tokens_needed(&self.net),
        };
        let fed = (fed_rng, wall.as_micros() as u64);
        Relay::open(core, self.net, registry, tokens, self.log_tap, now, fed)
            .map(|r| r.with_log_level_managed(self.manage_log_level))
    }
}

/// The relay, driven by a host's mio loop.
#[derive(Debug)]
pub struct Relay {
    core: RelayCore,
    net: NetConfig,
    mcast: UdpSocket,
    ucast: UdpSocket,
    control: Option<ControlServer>,
    /// The HTTP monitor (`net.monitor`), on the tokens after the control connections.
    monitor: Option<Monitor>,
    /// Federation (`net.federation`): the NATS link on the last token.
    federation: Option<FedLink>,
    tokens: TokenRange,
    log_tap: Option<LogTap>,
    log_lines: Vec<LogLine>,
    rx_batch: batch::RecvBatch,
    /// Raise and lower the global log level for operators (opt-in).
    manage_log_level: bool,
    /// The global log level before any operator raised it.
    base_log_level: log::LevelFilter,
    /// The last read stopped at READ_BUDGET, not WouldBlock: read again before sleeping.
    read_more: bool,
    /// RSA's share of the loop's time; one decryption a turn at most.
    rsa: RsaShare,
    /// The turn (its `now`) that ran a decryption last.
    rsa_turn: Option<Instant>,
    stop_requested: bool,
    stop_reported: bool,
    stopped: bool,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlServer({})", self.local_addr())
    }
}

/// Send what the core queued, until the kernel would block.
fn send_queued(ucast: &UdpSocket, core: &mut RelayCore) {
    while core.has_transmits() {
        match batch::send_batch(ucast, core.transmits()) {
            Ok(0) => return,
            Ok(n) => core.advance_transmits(n, 0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return, // writable event resumes
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // The first pending datagram was refused (counted); the rest keep order.
                debug!("sendmmsg: {e}");
                core.advance_transmits(0, 1);
            }
        }
    }
}

fn multicast_socket(net: &NetConfig) -> Result<std::net::UdpSocket, Error> {
    let s =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(Error::io("socket"))?;
    s.set_reuse_address(true)
        .map_err(Error::io("SO_REUSEADDR"))?;
    s.set_nonblocking(true).map_err(Error::io("O_NONBLOCK"))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&SocketAddrV4::new(net.group, net.port).into())
        .map_err(Error::io("bind to the multicast group"))?;
    s.join_multicast_v4(&net.group, &net.iface)
        .map_err(Error::io("join the multicast group (IP_ADD_MEMBERSHIP)"))?;
    Ok(s.into())
}

fn unicast_socket(net: &NetConfig) -> Result<std::net::UdpSocket, Error> {
    let s =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(Error::io("socket"))?;
    s.set_nonblocking(true).map_err(Error::io("O_NONBLOCK"))?;
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddrV4::new(net.iface, 0).into())
        .map_err(Error::io("bind the reply socket to the interface"))?;
    // Group mode sends to the distribution group from this socket: on the interface, with
    // the configured TTL, and looped back to members on this host.
    s.set_multicast_if_v4(&net.iface)
        .map_err(Error::io("IP_MULTICAST_IF on the reply socket"))?;
    s.set_multicast_ttl_v4(net.ttl)
        .map_err(Error::io("IP_MULTICAST_TTL on the reply socket"))?;
    s.set_multicast_loop_v4(true)
        .map_err(Error::io("IP_MULTICAST_LOOP on the reply socket"))?;
    Ok(s.into())
}

/// The group socket (reads, on the range's first token) and the reply socket (writes, on
/// its second), registered with the host's `registry`.
fn open_sockets(
    net: &NetConfig,
    registry: &Registry,
    tokens: TokenRange,
) -> Result<(UdpSocket, UdpSocket), Error> {
    let mut mcast = UdpSocket::from_std(multicast_socket(net)?);
    let mut ucast = UdpSocket::from_std(unicast_socket(net)?);
    registry
        .register(&mut mcast, Token(tokens.start), Interest::READABLE)
        .map_err(Error::io("register"))?;
    registry
        .register(&mut ucast, Token(tokens.start + 1), Interest::WRITABLE)
        .map_err(Error::io("register"))?;
    Ok((mcast, ucast))
}

impl Relay {
    /// Start building a relay with RSA key `key`.
    pub fn builder(key: ServerKey) -> RelayBuilder {
        RelayBuilder {
            key,
            cfg: Config::default(),
            net: NetConfig::default(),
            rng: None,
            log_tap: None,
            manage_log_level: false,
        }
    }

    /// How many tokens a relay with these settings uses: the group socket, the reply
    /// socket, the control listener and one per control connection; with the monitor on,
    /// its listener and one per monitor connection; with federation, the NATS link.
    pub fn tokens_needed(net: &NetConfig) -> usize {
        3 + net.max_control
            + net.monitor.as_ref().map_or(0, Monitor::tokens_needed)
            + usize::from(net.federation.is_some())
    }

    fn open(
        core: RelayCore,
        net: NetConfig,
        registry: &Registry,
        tokens: TokenRange,
        log_tap: Option<LogTap>,
        now: Instant,
        (fed_rng, unix_micros): (Rng, u64),
    ) -> Result<Relay, Error> {
        let rsa_percent = core.config().handshake_cpu_percent;
        let (mcast, ucast) = open_sockets(&net, registry, tokens)?;
        let control = match net.control {
            Some(addr) => Some(
                ControlServer::new(
                    registry,
                    addr,
                    Token(tokens.start + 2),
                    tokens.start + 3,
                    &net,
                    now,
                )
                .map_err(Error::io("bind the control port"))?,
            ),
            None => None,
        };
        let monitor = match &net.monitor {
            Some(m) => Some(Monitor::open(
                registry,
                m,
                tokens.start + 3 + net.max_control,
                now,
            )?),
            None => None,
        };
        let federation = match &net.federation {
            Some(f) => Some(FedLink::open(
                f,
                fed_rng,
                Token(tokens.start + tokens.len - 1),
                now,
                unix_micros,
            )?),
            None => None,
        };
        let relay = Relay {
            core,
            net,
            mcast,
            ucast,
            control,
            monitor,
            federation,
            tokens,
            log_tap,
            log_lines: Vec::new(),
            rx_batch: batch::RecvBatch::default(),
            manage_log_level: false,
            base_log_level: log::max_level(),
            read_more: false,
            rsa: RsaShare::new(rsa_percent, now),
            rsa_turn: None,
            stop_requested: false,
            stop_reported: false,
            stopped: false,
        };
        relay.log_listening();
        Ok(relay)
    }

    /// Where the relay listens and its key's fingerprint, once at start.
    fn log_listening(&self) {
        let reply_from = self.ucast.local_addr().map(|a| a.to_string());
        let control_at = self.control.as_ref().map(|c| c.local_addr().to_string());
        info!(
            "relay listening on {}:{} (joined on {}), replies from {}, control {}",
            self.net.group,
            self.net.port,
            self.net.iface,
            reply_from.unwrap_or_default(),
            control_at.unwrap_or_else(|| "off".into())
        );
        info!(
            "relay key fingerprint (SHA-256 of SPKI DER): {}",
            self.core.key().fingerprint_hex()
        );
    }

    fn with_log_level_managed(mut self, on: bool) -> Self {
        self.manage_log_level = on;
        self
    }

    /// The core (stats, clients, config, key).
    pub fn core(&self) -> &RelayCore {
        &self.core
    }

    /// Every counter.
    pub fn stats(&self) -> &Stats {
        self.core.stats()
    }

    /// Every registered client.
    pub fn clients(&self) -> impl Iterator<Item = ClientInfo> + '_ {
        self.core.clients()
    }

    /// Remove a client now, as the control port's `kick` does; returns its id.
    pub fn kick(&mut self, now: Instant, target: KickTarget) -> Option<u32> {
        let id = self.core.kick(now, target);
        self.flush_transmits();
        id
    }

    /// The next thing that happened ([`RelayEvent`]); drain until `None` when convenient.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        if self.stop_requested && !self.stop_reported {
            self.stop_reported = true;
            return Some(RelayEvent::ShutdownRequested);
        }
        self.core.poll_event()
    }

    /// The tokens this relay uses.
    pub fn tokens(&self) -> TokenRange {
        self.tokens
    }

    /// The control port's bound address (useful with port 0).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().map(ControlServer::local_addr)
    }

    /// The monitor's bound address, when it is on (useful with port 0).
    pub fn monitor_addr(&self) -> Option<SocketAddr> {
        self.monitor.as_ref().map(Monitor::local_addr)
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

    /// Ask the host loop to stop (as an operator's `shutdown` does).
    pub fn request_stop(&mut self) {
        self.stop_requested = true;
    }

    /// Has [`Relay::shutdown`] run?
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Handle one readiness event for one of our tokens (others, stale and spurious events
    /// are ignored).
    pub fn handle_event(&mut self, registry: &Registry, event: &Event, now: Instant) {
        if let Some(m) = &mut self.monitor
            && m.owns(event.token())
            && !self.stopped
        {
            // The monitor reads closed and errored sockets from the event itself.
            m.handle_event(registry, event, now);
            return self.after_io(registry, now);
        }
        if self
            .federation
            .as_ref()
            .is_some_and(|f| f.owns(event.token()))
            && !self.stopped
        {
            return self.nats_event(registry, event, now);
        }
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
        match token.0 - self.tokens.start {
            _ if self.monitor.as_ref().is_some_and(|m| m.owns(token)) => {
                if let Some(m) = &mut self.monitor {
                    m.handle_ready(registry, token, readable, writable, now);
                }
            }
            _ if self.federation.as_ref().is_some_and(|f| f.owns(token)) => {
                self.nats_ready(registry, token, readable, writable, now);
            }
            0 => self.read_datagrams(now),
            1 => {} // writable: flushed below
            2 => {
                if let Some(c) = &mut self.control {
                    c.accept(registry, now);
                }
            }
            _ if readable || !writable => self.read_control(token, now),
            _ => {}
        }
        self.after_io(registry, now);
        self.federate(registry, now);
        self.flush_transmits();
    }

    fn read_control(&mut self, token: Token, now: Instant) {
        let Some(c) = &mut self.control else { return };
        let Some(key) = c.owns_conn(token) else {
            return;
        };
        let fed = self.federation.as_ref().map(|f| &f.fed);
        if c.read(key, &mut self.core, fed, &self.net, now) {
            self.stop_requested = true;
        }
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

    /// Work that follows any input: RSA (bounded), sends, logs, monitor requests (bounded).
    fn after_io(&mut self, registry: &Registry, now: Instant) {
        self.run_registration(now);
        self.flush_transmits();
        self.flush_control(registry, now);
        if let Some(m) = &mut self.monitor {
            let control = self.control.as_ref().map(ControlServer::counters);
            m.serve(
                &self.core,
                control,
                self.stop_requested || self.stopped,
                now,
            );
        }
    }

    /// At most one RSA decryption per loop turn, only once the group socket is drained (what
    /// registered clients sent goes first), and only within the CPU share
    /// (`handshake_cpu_percent`). The clock is read around it: the share and the handshake
    /// histogram count the decryption itself.
    fn run_registration(&mut self, turn: Instant) {
        if self.read_more || self.rsa_turn == Some(turn) || self.core.pending_registrations() == 0 {
            return;
        }
        let start = Instant::now();
        if !self.rsa.may_run(start) {
            return;
        }
        self.rsa_turn = Some(turn);
        if self.core.process_registrations(start, 1) > 0 {
            let end = Instant::now();
            self.rsa.spend(end.saturating_duration_since(start));
            self.core
                .count_rsa_time(end.saturating_duration_since(start));
            self.core.histograms_mut().stamp_registration(end);
        }
    }

    /// Wall time spent on RSA decryptions since the relay started.
    pub fn rsa_time(&self) -> Duration {
        self.rsa.spent()
    }

    fn flush_transmits(&mut self) {
        send_queued(&self.ucast, &mut self.core);
    }

    fn flush_control(&mut self, registry: &Registry, now: Instant) {
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
            c.flush(registry, now);
            if self.manage_log_level {
                // Stream only what someone reads: drop the global level back when operators
                // lower theirs or leave.
                let want = self.base_log_level.max(max_log_level(c.operators()));
                if want != log::max_level() {
                    log::set_max_level(want);
                }
            }
        }
    }

    /// The next instant the host must call [`Relay::handle_timeout`], if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let control = self.control.as_ref();
        let control_more = control.is_some_and(ControlServer::wants_more);
        if self.read_more || self.stop_requested || control_more {
            return Some(Instant::now().min(self.core.poll_timeout().unwrap_or(Instant::now())));
        }
        let monitor = self.monitor.as_ref().and_then(Monitor::poll_timeout);
        let control = control.and_then(ControlServer::next_deadline);
        // Waiting registrations: when the RSA share has credit again.
        let rsa = (self.core.pending_registrations() > 0).then(|| self.rsa.ready_at());
        let fed = self.federation.as_ref();
        let link = fed.and_then(|f| f.link.poll_timeout());
        let fed = fed.and_then(|f| f.fed.poll_timeout());
        [self.core.next_timer(), rsa, control, monitor, link, fed]
            .into_iter()
            .flatten()
            .min()
    }

    /// Run timers (harmless when early), continue interrupted reads, flush.
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        if self.stopped {
            return;
        }
        self.core.handle_timeout(now);
        if self.read_more {
            self.read_datagrams(now);
        }
        let fed = self.federation.as_ref().map(|f| &f.fed);
        if let Some(c) = &mut self.control
            && c.handle_timeout(registry, &mut self.core, fed, &self.net, now)
        {
            self.stop_requested = true;
        }
        self.after_io(registry, now);
        if let Some(m) = &mut self.monitor {
            m.handle_timeout(registry, now);
        }
        self.nats_timeout(registry, now);
        self.federate(registry, now);
        self.flush_transmits();
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
        self.nats_shutdown(registry, now);
        self.flush_control(registry, now);
        if let Some(c) = &mut self.control {
            c.broadcast_line("LOG INFO relay stopped");
            c.close_all(registry, now);
        }
        if let Some(m) = &mut self.monitor {
            // What is already asked is answered (`/healthz`: 503 stopping), then closed.
            let control = self.control.as_ref().map(ControlServer::counters);
            m.serve(&self.core, control, true, now);
            m.close_all(registry);
        }
        if let Err(e) = self
            .mcast
            .leave_multicast_v4(&self.net.group, &self.net.iface)
        {
            warn!("leaving the multicast group: {e}");
        }
        let _ = registry.deregister(&mut self.mcast);
        let _ = registry.deregister(&mut self.ucast);
        self.stopped = true;
        info!("relay stopped");
    }

    /// Bytes queued for operators (tests: proves output stays bounded).
    pub fn control_queued_bytes(&self) -> usize {
        self.control.as_ref().map_or(0, ControlServer::queued_bytes)
    }
}
