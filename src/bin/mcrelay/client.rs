//! `mcrelay client`: chat through a relay, stdin lines out, one event per line on stdout.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use mcrelay::client::{
    ClientConfig, ClientError, ClientSession, Event, format_event, group_socket,
};
use mcrelay::crypto::key::hex;
use mcrelay::crypto::rng::Rng;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::flags::{Dur, Flags, UsageError, log_level, parse_fingerprint};
use crate::logger::Logger;
use crate::sys::register_signals;
use crate::{Failure, rt};

pub const HELP: &str = "\
mcrelay client — chat through a relay

Sends each stdin line as one message; prints one event per line on stdout:
    ready <id> <fingerprint>      registered
    msg <id>[@name] <text>        a message (\\\\ \\n \\r \\t and \\xHH escapes)
    join <id>[@name]              another client joined
    leave <id> <reason>           another client left (disconnect|timeout|kicked|replaced|shutdown|relay-lost)
    closed <reason>               our session ended
    shutdown                      the relay is stopping
    present <id>[@name]           (protocol 3) a client that was already there when we registered
    lost <no-session|silence>     our session is gone (relay restarted, we slept); registering again
On stdin EOF, SIGINT or SIGTERM it sends a disconnect and exits 0. Exit status 2: no relay
registered us within --timeout (or, after `lost`, within --reconnect-timeout); 3: within that
time only keys other than the pinned or remembered one answered; 64: bad flags.

FLAGS (default; environment variable):
    --group ADDR                  multicast group (239.255.77.77; MCRELAY_GROUP)
    --port N                      UDP port (5007; MCRELAY_PORT)
    --iface ADDR                  interface address to send on (127.0.0.1; MCRELAY_IFACE)
    --ttl N                       multicast TTL (1; MCRELAY_TTL)
    --server-fingerprint HEX      refuse any relay key with another SHA-256 fingerprint (none; MCRELAY_SERVER_FINGERPRINT)
    --known-relays PATH|off       remember relay keys, refuse changed ones; scripts usually want off
                                  ($XDG_CONFIG_HOME/mcrelay/known_relays, else ~/.config/...; MCRELAY_KNOWN_RELAYS)
    --name NAME --token TOKEN     admission credentials (none; MCRELAY_NAME, MCRELAY_TOKEN)
    --timeout DUR                 give up the handshake after (10s; MCRELAY_CONNECT_TIMEOUT)
    --reconnect-timeout DUR       after `lost`, give up registering again after (60s; MCRELAY_RECONNECT_TIMEOUT)
    --max-version N               offer protocol versions 1..=N (3; MCRELAY_MAX_VERSION)
    --log-level LEVEL             (warn; MCRELAY_LOG_LEVEL)
    -h, --help                    this text
";

const SIGNAL: Token = Token(0);
const UDP: Token = Token(1);
const STDIN: Token = Token(2);
const GROUP: Token = Token(3);

/// `$XDG_CONFIG_HOME/mcrelay/known_relays`, else `~/.config/mcrelay/known_relays`, else off.
fn default_known_relays() -> String {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".config"),
            None => return "off".into(),
        },
    };
    base.join("mcrelay/known_relays").display().to_string()
}

/// `group:port fingerprint` lines.
fn known_relay(path: &Path, endpoint: &str) -> Option<[u8; 32]> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(e, _)| *e == endpoint)
        .and_then(|(_, fp)| parse_fingerprint(fp).ok())
}

fn remember_relay(path: &Path, endpoint: &str, fp: &[u8; 32]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{endpoint} {}", hex(fp))
}

/// Everything `client` was told.
struct Args {
    cfg: ClientConfig,
    /// `group:port`, the key of the known-relays file.
    endpoint: String,
    known: Option<PathBuf>,
    /// The pin came from the known-relays file (so there is nothing to remember).
    remembered: bool,
    timeout: Duration,
    reconnect_timeout: Duration,
    max_version: u16,
    level: log::LevelFilter,
}

fn parse(mut f: Flags) -> Result<Args, UsageError> {
    let mut cfg = ClientConfig::default();
    cfg.group = f.get("--group", "MCRELAY_GROUP", cfg.group)?;
    cfg.port = f.get("--port", "MCRELAY_PORT", cfg.port)?;
    cfg.iface = f.get("--iface", "MCRELAY_IFACE", cfg.iface)?;
    cfg.ttl = f.get("--ttl", "MCRELAY_TTL", cfg.ttl)?;
    let pin: Option<String> = f.opt("--server-fingerprint", "MCRELAY_SERVER_FINGERPRINT")?;
    let known: String = f.get(
        "--known-relays",
        "MCRELAY_KNOWN_RELAYS",
        default_known_relays(),
    )?;
    let name: Option<String> = f.opt("--name", "MCRELAY_NAME")?;
    let token: Option<String> = f.opt("--token", "MCRELAY_TOKEN")?;
    let timeout = Dur(Duration::from_secs(10));
    let timeout = f.get("--timeout", "MCRELAY_CONNECT_TIMEOUT", timeout)?.0;
    let reconnect = Dur(Duration::from_secs(60));
    let env = "MCRELAY_RECONNECT_TIMEOUT";
    let reconnect_timeout = f.get("--reconnect-timeout", env, reconnect)?.0;
    let max_version: u16 = f.get(
        "--max-version",
        "MCRELAY_MAX_VERSION",
        mcrelay::wire::VERSION_MAX,
    )?;
    let level = log_level(&mut f, log::LevelFilter::Warn)?;
    f.finish()?;
    if cfg.ttl > 255 {
        return Err(UsageError("--ttl must be 0..=255".into()));
    }
    if !(mcrelay::wire::VERSION_MIN..=mcrelay::wire::VERSION_MAX).contains(&max_version) {
        return Err(UsageError(format!(
            "--max-version must be {}..={}",
            mcrelay::wire::VERSION_MIN,
            mcrelay::wire::VERSION_MAX
        )));
    }
    cfg.pin = pin
        .map(|p| {
            parse_fingerprint(&p).map_err(|e| UsageError(format!("--server-fingerprint: {e}")))
        })
        .transpose()?;
    cfg.admission = match (name, token) {
        (Some(n), Some(t)) => Some((n, t)),
        (None, None) => None,
        _ => return Err(UsageError("--name and --token go together".into())),
    };
    let endpoint = format!("{}:{}", cfg.group, cfg.port);
    let known = (known != "off").then(|| PathBuf::from(known));
    let mut remembered = false;
    if cfg.pin.is_none()
        && let Some(p) = &known
    {
        cfg.pin = known_relay(p, &endpoint);
        remembered = cfg.pin.is_some();
    }
    Ok(Args {
        cfg,
        endpoint,
        known,
        remembered,
        timeout,
        reconnect_timeout,
        max_version,
        level,
    })
}

/// One stdin line, or `None` at EOF.
type Line = Option<Vec<u8>>;

/// Read stdin lines on a thread (a regular file or a terminal cannot be polled reliably);
/// `None` at EOF. Each line wakes the Poll.
fn spawn_stdin(tx: SyncSender<Line>, waker: Arc<Waker>) {
    std::thread::spawn(move || {
        let mut input = BufReader::new(io::stdin().lock());
        let mut line = Vec::new();
        loop {
            line.clear();
            match input.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    break;
                }
                Ok(_) => {
                    if line.ends_with(b"\n") {
                        line.pop();
                        if line.ends_with(b"\r") {
                            line.pop();
                        }
                    }
                    if tx.send(Some(line.clone())).is_err() {
                        break;
                    }
                }
            }
            let _ = waker.wake();
        }
        let _ = waker.wake();
    });
}

/// The chat loop's state.
struct Chat {
    a: Args,
    sock: UdpSocket,
    to: SocketAddr,
    session: ClientSession,
    start: Instant,
    /// What the stdin thread needs; taken when it starts (after registration).
    stdin: Option<(SyncSender<Line>, Arc<Waker>)>,
    lines: Receiver<Line>,
    quitting: Option<Instant>,
    /// Group mode: our socket on the distribution group.
    group: Option<UdpSocket>,
    /// When the session was lost (re-registering since).
    lost_at: Option<Instant>,
    /// Said on stderr what we are waiting for.
    said_waiting: bool,
}

impl Chat {
    fn send_queued(&mut self) {
        while let Some(d) = self.session.poll_transmit() {
            if let Err(e) = self.sock.send_to(&d, self.to) {
                log::warn!("send: {e}");
            }
        }
    }

    /// Print events; `Some` when the session is over.
    fn print_events(&mut self, out: &mut impl Write) -> Result<Option<ExitCode>, Failure> {
        if let Some(e) = self.session.take_error() {
            let code = if matches!(e, ClientError::FingerprintMismatch { .. }) {
                3
            } else {
                2
            };
            return Err(Failure::Runtime(code, e.to_string()));
        }
        while let Some(ev) = self.session.poll_event() {
            let _ = writeln!(out, "{}", format_event(&ev));
            let _ = out.flush();
            match ev {
                Event::Ready { fingerprint, .. } => {
                    self.lost_at = None;
                    self.on_ready(&fingerprint);
                }
                Event::Lost { .. } => self.lost_at = Some(Instant::now()),
                Event::Closed { .. } | Event::Shutdown => return Ok(Some(ExitCode::SUCCESS)),
                _ => {}
            }
        }
        Ok(None)
    }

    fn on_ready(&mut self, fingerprint: &[u8; 32]) {
        if let (Some(p), false) = (&self.a.known, self.a.remembered) {
            match remember_relay(p, &self.a.endpoint, fingerprint) {
                Ok(()) => eprintln!(
                    "mcrelay client: new relay {}, key fingerprint {}; remembered in {}",
                    self.a.endpoint,
                    hex(fingerprint),
                    p.display()
                ),
                Err(e) => log::warn!("cannot remember the relay key in {}: {e}", p.display()),
            }
            self.a.remembered = true;
        }
        if let Some((tx, waker)) = self.stdin.take() {
            spawn_stdin(tx, waker);
        }
    }

    /// Group mode: receive the distribution group while the session says so.
    fn sync_group(&mut self, registry: &mio::Registry) -> Result<(), Failure> {
        match (self.session.group_addr(), &mut self.group) {
            (Some(addr), None) => {
                let s = group_socket(addr, self.a.cfg.iface).map_err(rt(1))?;
                s.set_nonblocking(true).map_err(rt(1))?;
                let mut s = UdpSocket::from_std(s);
                registry
                    .register(&mut s, GROUP, Interest::READABLE)
                    .map_err(rt(1))?;
                self.group = Some(s);
            }
            (None, Some(s)) => {
                let _ = registry.deregister(s);
                self.group = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// How long to sleep; `Err`/`Ok(None)` when it is time to stop.
    fn next_wait(&mut self, now: Instant) -> Result<Option<Duration>, Failure> {
        if self.session.id().is_none() && self.quitting.is_none() {
            let (since, limit, what) = match self.lost_at {
                Some(t) => (t, self.a.reconnect_timeout, "could not register again"),
                None => (self.start, self.a.timeout, "no answer from a relay"),
            };
            if now.duration_since(since) > limit {
                // A relay answered with a key other than the pinned or remembered one (and no
                // other relay did): say so, with its own status.
                if let Some(e) = self.session.key_mismatch() {
                    return Err(Failure::Runtime(3, e.to_string()));
                }
                let why = match self.session.last_reject() {
                    Some((code, reason)) => format!(" (last REJECT({code}): {reason})"),
                    None => String::new(),
                };
                return Err(Failure::Runtime(
                    2,
                    format!("{what} at {} within {limit:?}{why}", self.a.endpoint),
                ));
            }
            if !self.said_waiting && now.duration_since(since) > Duration::from_secs(2) {
                self.said_waiting = true;
                eprintln!(
                    "mcrelay client: waiting for a relay at {} (HELLO every 0.5-8 s, giving up after {limit:?})",
                    self.a.endpoint
                );
            }
        }
        if self.quitting.is_some_and(|q| now >= q) {
            return Ok(None);
        }
        let mut deadline = self.session.poll_timeout();
        if let Some(q) = self.quitting {
            deadline = Some(deadline.map_or(q, |d| d.min(q)));
        }
        Ok(Some(
            deadline
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_millis(500)),
        ))
    }

    fn read_udp(&mut self, token: Token, buf: &mut [u8], now: Instant) {
        loop {
            let sock = match (token, &self.group) {
                (GROUP, Some(g)) => g,
                (GROUP, None) => return,
                _ => &self.sock,
            };
            match sock.recv_from(buf) {
                Ok((n, from)) => self.session.handle_datagram(now, from, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("recv: {e}");
                    break;
                }
            }
        }
    }

    /// Disconnect and leave within a second; true if there is no session to wait for.
    fn quit(&mut self, now: Instant) -> bool {
        if self.quitting.is_none() {
            self.session.disconnect(now);
            self.quitting = Some(now + Duration::from_secs(1));
        }
        self.session.id().is_none()
    }

    fn take_lines(&mut self) {
        while let Ok(item) = self.lines.try_recv() {
            match item {
                Some(line) => {
                    if let Err(e) = self.session.send(Instant::now(), &line) {
                        eprintln!("mcrelay client: not sent: {e}");
                    }
                }
                None => {
                    self.quit(Instant::now());
                }
            }
        }
    }
}

/// `mcrelay client`.
pub fn run(f: Flags) -> Result<ExitCode, Failure> {
    let a = parse(f)?;
    Logger::install(a.level, None).map_err(rt(1))?;
    let std_sock = mcrelay::client::client_socket(&a.cfg).map_err(rt(1))?;
    std_sock.set_nonblocking(true).map_err(rt(1))?;
    let mut sock = UdpSocket::from_std(std_sock);
    let mut poll = Poll::new().map_err(rt(1))?;
    poll.registry()
        .register(&mut sock, UDP, Interest::READABLE)
        .map_err(rt(1))?;
    let mut signals = register_signals(&poll, SIGNAL)?;
    let waker = Arc::new(Waker::new(poll.registry(), STDIN).map_err(rt(1))?);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Line>(1024);
    let rng = Rng::from_os().map_err(rt(1))?;
    let start = Instant::now();
    let mut session = ClientSession::new(rng, a.cfg.pin, a.cfg.admission.clone(), start);
    session.set_max_version(a.max_version, start);
    let to = SocketAddr::from((a.cfg.group, a.cfg.port));
    let mut chat = Chat {
        a,
        sock,
        to,
        session,
        start,
        stdin: Some((tx, waker)),
        lines: rx,
        quitting: None,
        group: None,
        lost_at: None,
        said_waiting: false,
    };
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 65536];
    let mut stdout = io::stdout().lock();
    loop {
        chat.send_queued();
        if let Some(code) = chat.print_events(&mut stdout)? {
            return Ok(code);
        }
        chat.sync_group(poll.registry())?;
        let Some(wait) = chat.next_wait(Instant::now())? else {
            return Ok(ExitCode::SUCCESS);
        };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Runtime(1, format!("poll: {e}"))),
        }
        let now = Instant::now();
        for ev in events.iter() {
            match ev.token() {
                UDP | GROUP => chat.read_udp(ev.token(), &mut buf, now),
                SIGNAL if signals.pending().next().is_some() && chat.quit(now) => {
                    return Ok(ExitCode::SUCCESS);
                }
                _ => {}
            }
        }
        chat.take_lines();
        chat.session.handle_timeout(Instant::now());
    }
}
