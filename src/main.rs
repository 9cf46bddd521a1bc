//! `mcrelay`: serve | client | ctl | keygen. A thin shell over the library.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcrelay::cli::{Dur, Flags, Logger, Size, UsageError, parse_fingerprint};
use mcrelay::client::{ClientConfig, ClientSession, format_event};
use mcrelay::core::reassembly::Limits;
use mcrelay::core::{Config, RelayCore};
use mcrelay::crypto::key::{ServerKey, hex};
use mcrelay::crypto::rng::Rng;
use mcrelay::driver::logtap::LogTap;
use mcrelay::driver::{NetConfig, Relay, TokenRange};
use mio::{Events, Interest, Poll, Token, Waker};

const EX_USAGE: u8 = 64;

const MAIN_HELP: &str = "\
mcrelay — a secure, manageable UDP multicast relay

USAGE:
    mcrelay <COMMAND> [FLAGS]

COMMANDS:
    serve     run the relay (default on loopback: group 239.255.77.77:5007, control 127.0.0.1:5008)
    client    chat through a relay: stdin lines out, events on stdout
    ctl       run a control-port command, an interactive session, or follow the log
    keygen    create a relay key file (PKCS#8 PEM, mode 0600) and print its fingerprint

Run `mcrelay <COMMAND> --help` for the flags of each. Every flag can also be set through the
environment variable shown next to it. Exit status 64 means a bad flag or value.
";

const SERVE_HELP: &str = "\
mcrelay serve — run the relay

FLAGS (default; environment variable):
    --group ADDR                  multicast group to join (239.255.77.77; MCRELAY_GROUP)
    --port N                      UDP port (5007; MCRELAY_PORT)
    --iface ADDR                  interface address to join on and reply from (127.0.0.1; MCRELAY_IFACE)
    --control ADDR:PORT|off       control port (127.0.0.1:5008; MCRELAY_CONTROL)
    --control-token-file PATH     require `auth <token>` with the token in PATH (none; MCRELAY_CONTROL_TOKEN_FILE)
                                  or give the token itself in MCRELAY_CONTROL_TOKEN
    --max-control N               simultaneous operators (8; MCRELAY_MAX_CONTROL)
    --key-file PATH               RSA key, PKCS#8 PEM; created (0600) if missing (ephemeral key; MCRELAY_KEY_FILE)
    --key-bits N                  size of a generated key, 2048..4096 (2048; MCRELAY_KEY_BITS)
    --client-timeout DUR          drop clients silent this long (30s; MCRELAY_CLIENT_TIMEOUT)
    --keepalive DUR               keep-alive interval told to clients (10s; MCRELAY_KEEPALIVE)
    --max-clients N               registered clients (1024; MCRELAY_MAX_CLIENTS)
    --reassembly-timeout DUR      incomplete messages expire (5s; MCRELAY_REASSEMBLY_TIMEOUT)
    --reassembly-per-client N     messages in reassembly per client (4; MCRELAY_REASSEMBLY_PER_CLIENT)
    --reassembly-client-bytes SZ  reassembly memory per client (384K; MCRELAY_REASSEMBLY_CLIENT_BYTES)
    --reassembly-total-bytes SZ   reassembly memory in total (8M; MCRELAY_REASSEMBLY_TOTAL_BYTES)
    --token-ttl DUR               oldest client token accepted (120s; MCRELAY_TOKEN_TTL)
    --max-clock-skew DUR          newest client token accepted, ahead of our clock (60s; MCRELAY_MAX_CLOCK_SKEW)
    --handshakes-per-sec N        RSA decryptions per second, all sources (200; MCRELAY_HANDSHAKES_PER_SEC)
    --handshakes-per-source N     RSA decryptions per second per IP (10; MCRELAY_HANDSHAKES_PER_SOURCE)
    --clients-file PATH           admit only `name token` lines of PATH (anyone; MCRELAY_CLIENTS_FILE)
    --max-pending-handshakes N    validated REGISTERs waiting for RSA (64; MCRELAY_MAX_PENDING_HANDSHAKES)
    --cookie-lifetime DUR         how long an address cookie is valid (30s; MCRELAY_COOKIE_LIFETIME)
    --send-queue-bytes SZ         outgoing datagrams waiting for the socket (4M; MCRELAY_SEND_QUEUE_BYTES)
    --log-queue N                 log lines waiting for operators (4096; MCRELAY_LOG_QUEUE)
    --log-level LEVEL             error|warn|info|debug|trace (info; MCRELAY_LOG_LEVEL, then RUST_LOG)
    -h, --help                    this text
";

const CLIENT_HELP: &str = "\
mcrelay client — chat through a relay

Sends each stdin line as one message; prints one event per line on stdout:
    ready <id> <fingerprint>      registered
    msg <id>[@name] <text>        a message (\\\\ \\n \\r \\t and \\xHH escapes)
    join <id>[@name]              another client joined
    leave <id> <reason>           another client left (disconnect|timeout|kicked|replaced|shutdown)
    closed <reason>               our session ended
    shutdown                      the relay is stopping
On stdin EOF, SIGINT or SIGTERM it sends a disconnect and exits 0.

FLAGS (default; environment variable):
    --group ADDR                  multicast group (239.255.77.77; MCRELAY_GROUP)
    --port N                      UDP port (5007; MCRELAY_PORT)
    --iface ADDR                  interface address to send on (127.0.0.1; MCRELAY_IFACE)
    --ttl N                       multicast TTL (1; MCRELAY_TTL)
    --server-fingerprint HEX      refuse any relay key with another SHA-256 fingerprint (none; MCRELAY_SERVER_FINGERPRINT)
    --known-relays PATH|off       remember relay keys, refuse changed ones (~/.config/mcrelay/known_relays; MCRELAY_KNOWN_RELAYS)
    --name NAME --token TOKEN     admission credentials (none; MCRELAY_NAME, MCRELAY_TOKEN)
    --timeout DUR                 give up the handshake after (10s; MCRELAY_CONNECT_TIMEOUT)
    --log-level LEVEL             (warn; MCRELAY_LOG_LEVEL)
    -h, --help                    this text
";

const CTL_HELP: &str = "\
mcrelay ctl — talk to a relay's control port

USAGE:
    mcrelay ctl [FLAGS] [COMMAND ...]   run one command, print the reply (exit 0 OK, 1 ERR, 2 no connection)
    mcrelay ctl [FLAGS]                 interactive session (stdin lines are commands)
    mcrelay ctl [FLAGS] --follow        stream the log like tail -f

FLAGS (default; environment variable):
    --control ADDR:PORT           (127.0.0.1:5008; MCRELAY_CONTROL)
    --token-file PATH             authenticate with the token in PATH (none; MCRELAY_CONTROL_TOKEN_FILE)
                                  or give the token itself in MCRELAY_CONTROL_TOKEN
    --follow                      stream the log (log on)
    --level LEVEL                 with --follow: the most verbose level (info)
    -h, --help                    this text
";

const KEYGEN_HELP: &str = "\
mcrelay keygen — create a relay key

FLAGS (default; environment variable):
    --key-file PATH               where to write it; never overwritten (required; MCRELAY_KEY_FILE)
    --key-bits N                  2048..4096 (2048; MCRELAY_KEY_BITS)
    -h, --help                    this text
";

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        eprint!("{MAIN_HELP}");
        return ExitCode::from(EX_USAGE);
    }
    let cmd = args.remove(0).to_string_lossy().into_owned();
    let help = args.iter().any(|a| a == "-h" || a == "--help");
    let (text, run): (&str, Command) = match cmd.as_str() {
        "-h" | "--help" | "help" => {
            print!("{MAIN_HELP}");
            return ExitCode::SUCCESS;
        }
        "-V" | "--version" => {
            println!("mcrelay {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        "serve" => (SERVE_HELP, serve),
        "client" => (CLIENT_HELP, client),
        "ctl" => (CTL_HELP, ctl),
        "keygen" => (KEYGEN_HELP, keygen),
        other => {
            eprintln!(
                "mcrelay: unknown command {other:?} (serve, client, ctl, keygen; see --help)"
            );
            return ExitCode::from(EX_USAGE);
        }
    };
    if help {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    match run(Flags::new(args)) {
        Ok(code) => code,
        Err(Failure::Usage(e)) => {
            eprintln!("mcrelay {cmd}: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(Failure::Runtime(code, e)) => {
            eprintln!("mcrelay {cmd}: {e}");
            ExitCode::from(code)
        }
    }
}

/// A subcommand's entry point.
type Command = fn(Flags) -> Result<ExitCode, Failure>;

enum Failure {
    Usage(UsageError),
    Runtime(u8, String),
}

impl From<UsageError> for Failure {
    fn from(e: UsageError) -> Self {
        Failure::Usage(e)
    }
}

fn rt<E: std::fmt::Display>(code: u8) -> impl Fn(E) -> Failure {
    move |e| Failure::Runtime(code, e.to_string())
}

fn log_level(flags: &mut Flags, default: log::LevelFilter) -> Result<log::LevelFilter, UsageError> {
    let v: Option<log::LevelFilter> = flags.opt("--log-level", "MCRELAY_LOG_LEVEL")?;
    if let Some(v) = v {
        return Ok(v);
    }
    match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => s.parse().map_err(|_| {
            UsageError(format!(
                "$RUST_LOG: invalid level {s:?} (error|warn|info|debug|trace)"
            ))
        }),
        _ => Ok(default),
    }
}

fn read_token_file(path: &Path) -> Result<String, UsageError> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("token file {}: {e}", path.display())))?;
    let t = t.trim().to_string();
    if t.is_empty() || t.contains(char::is_whitespace) {
        return Err(UsageError(format!(
            "token file {}: must hold one token without spaces",
            path.display()
        )));
    }
    Ok(t)
}

fn control_token(flags: &mut Flags, flag: &'static str) -> Result<Option<String>, UsageError> {
    let file: Option<PathBuf> = flags.opt(flag, "MCRELAY_CONTROL_TOKEN_FILE")?;
    match file {
        Some(p) => Ok(Some(read_token_file(&p)?)),
        None => Ok(std::env::var("MCRELAY_CONTROL_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())),
    }
}

/// `name token` per line; `#` comments and blank lines ignored.
fn read_clients_file(path: &Path) -> Result<HashMap<String, String>, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("clients file {}: {e}", path.display())))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| {
            UsageError(format!(
                "clients file {} line {}: {why}",
                path.display(),
                i + 1
            ))
        };
        let mut parts = line.split_whitespace();
        let (Some(name), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected `name token`"));
        };
        if name.len() > mcrelay::wire::MAX_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(bad("name must be 1-32 characters of A-Z a-z 0-9 . _ -"));
        }
        if token.len() > 100 {
            return Err(bad("token longer than 100 bytes"));
        }
        if map.insert(name.to_string(), token.to_string()).is_some() {
            return Err(bad("duplicate name"));
        }
    }
    Ok(map)
}

fn parse_control(s: &str) -> Result<Option<SocketAddr>, UsageError> {
    if s == "off" {
        return Ok(None);
    }
    // An address literal, or `localhost:PORT`. No name lookup: the relay never resolves
    // names, so it needs neither NSS nor /etc/resolv.conf (and links statically, see
    // docs/performance.md).
    let parsed = match s.strip_prefix("localhost:") {
        Some(port) => port
            .parse()
            .ok()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
        None => s.parse().ok(),
    };
    parsed
        .map(Some)
        .ok_or_else(|| UsageError(format!("--control: {s:?} is not ADDR:PORT or off")))
}

// ------------------------------------------------------------------------------------ serve

const SIGNAL: Token = Token(0);
const RELAY_BASE: usize = 16;

fn serve(mut f: Flags) -> Result<ExitCode, Failure> {
    let mut net = NetConfig::default();
    let mut cfg = Config::default();
    net.group = f.get("--group", "MCRELAY_GROUP", net.group)?;
    net.port = f.get("--port", "MCRELAY_PORT", net.port)?;
    net.iface = f.get("--iface", "MCRELAY_IFACE", net.iface)?;
    let control: String = f.get("--control", "MCRELAY_CONTROL", "127.0.0.1:5008".to_string())?;
    net.control = parse_control(&control)?;
    net.control_token = control_token(&mut f, "--control-token-file")?;
    net.max_control = f.get("--max-control", "MCRELAY_MAX_CONTROL", net.max_control)?;
    let key_file: Option<PathBuf> = f.opt("--key-file", "MCRELAY_KEY_FILE")?;
    let key_bits: usize = f.get("--key-bits", "MCRELAY_KEY_BITS", 2048)?;
    cfg.client_timeout = f
        .get(
            "--client-timeout",
            "MCRELAY_CLIENT_TIMEOUT",
            Dur(cfg.client_timeout),
        )?
        .0;
    cfg.keepalive_interval = f
        .get(
            "--keepalive",
            "MCRELAY_KEEPALIVE",
            Dur(cfg.keepalive_interval),
        )?
        .0;
    cfg.max_clients = f.get("--max-clients", "MCRELAY_MAX_CLIENTS", cfg.max_clients)?;
    let mut limits = Limits::default();
    limits.timeout = f
        .get(
            "--reassembly-timeout",
            "MCRELAY_REASSEMBLY_TIMEOUT",
            Dur(limits.timeout),
        )?
        .0;
    limits.per_owner_messages = f.get(
        "--reassembly-per-client",
        "MCRELAY_REASSEMBLY_PER_CLIENT",
        limits.per_owner_messages,
    )?;
    limits.per_owner_bytes = f
        .get(
            "--reassembly-client-bytes",
            "MCRELAY_REASSEMBLY_CLIENT_BYTES",
            Size(limits.per_owner_bytes),
        )?
        .0;
    limits.total_bytes = f
        .get(
            "--reassembly-total-bytes",
            "MCRELAY_REASSEMBLY_TOTAL_BYTES",
            Size(limits.total_bytes),
        )?
        .0;
    cfg.reassembly = limits;
    cfg.token_ttl = f
        .get("--token-ttl", "MCRELAY_TOKEN_TTL", Dur(cfg.token_ttl))?
        .0;
    cfg.max_clock_skew = f
        .get(
            "--max-clock-skew",
            "MCRELAY_MAX_CLOCK_SKEW",
            Dur(cfg.max_clock_skew),
        )?
        .0;
    cfg.handshakes_per_sec = f.get(
        "--handshakes-per-sec",
        "MCRELAY_HANDSHAKES_PER_SEC",
        cfg.handshakes_per_sec,
    )?;
    cfg.handshakes_per_source_per_sec = f.get(
        "--handshakes-per-source",
        "MCRELAY_HANDSHAKES_PER_SOURCE",
        cfg.handshakes_per_source_per_sec,
    )?;
    let clients_file: Option<PathBuf> = f.opt("--clients-file", "MCRELAY_CLIENTS_FILE")?;
    cfg.max_pending_registrations = f.get(
        "--max-pending-handshakes",
        "MCRELAY_MAX_PENDING_HANDSHAKES",
        cfg.max_pending_registrations,
    )?;
    cfg.cookie_lifetime = f
        .get(
            "--cookie-lifetime",
            "MCRELAY_COOKIE_LIFETIME",
            Dur(cfg.cookie_lifetime),
        )?
        .0;
    cfg.max_send_queue = f
        .get(
            "--send-queue-bytes",
            "MCRELAY_SEND_QUEUE_BYTES",
            Size(cfg.max_send_queue),
        )?
        .0;
    let log_queue: usize = f.get("--log-queue", "MCRELAY_LOG_QUEUE", 4096)?;
    if let Some(p) = &clients_file {
        cfg.admission = Some(read_clients_file(p)?);
    }
    let level = log_level(&mut f, log::LevelFilter::Info)?;
    let rest = f.finish()?;
    if !rest.is_empty() {
        return Err(UsageError(format!("unexpected argument {:?}", rest[0])).into());
    }
    if cfg.client_timeout.is_zero() || cfg.keepalive_interval.is_zero() {
        return Err(UsageError("--client-timeout and --keepalive must be positive".into()).into());
    }
    if net.max_control == 0 || net.max_control > 1024 {
        return Err(UsageError("--max-control must be 1..=1024".into()).into());
    }

    if cfg.cookie_lifetime.is_zero() || cfg.cookie_lifetime >= cfg.cookie_rotation {
        return Err(UsageError("--cookie-lifetime must be between 1ms and 60s".into()).into());
    }
    let tap = LogTap::new(log_queue);
    Logger::install_with_guard(level, Some(tap.clone()), Some(keep_stderr_writable))
        .map_err(rt(1))?;

    let key = match &key_file {
        Some(path) => {
            let (key, created) = ServerKey::load_or_create(path, key_bits).map_err(rt(1))?;
            if created {
                log::info!(
                    "created key file {} ({key_bits} bits, mode 0600)",
                    path.display()
                );
            }
            key
        }
        None => {
            log::info!(
                "generating an ephemeral {key_bits}-bit RSA key (use --key-file to keep one)"
            );
            ServerKey::generate(key_bits).map_err(rt(1))?
        }
    };
    let rng = Rng::from_os().map_err(rt(1))?;
    let now = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let core = RelayCore::new(cfg, key, rng, now, unix);

    let mut poll = Poll::new().map_err(rt(1))?;
    let tokens = TokenRange {
        start: RELAY_BASE,
        len: 3 + net.max_control,
    };
    let mut relay =
        Relay::new(core, net, poll.registry(), tokens, Some(tap), now).map_err(rt(1))?;
    let mut signals = register_signals(&poll)?;
    sd_notify("READY=1");

    let mut events = Events::with_capacity(256);
    while !relay.is_stopped() {
        if relay.stop_requested() {
            sd_notify("STOPPING=1");
            relay.shutdown(poll.registry(), Instant::now());
            break;
        }
        let timeout = relay
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Runtime(1, format!("poll: {e}"))),
        }
        let now = Instant::now();
        for ev in events.iter() {
            if ev.token() == SIGNAL {
                for sig in signals.pending() {
                    log::info!("signal {sig} received: shutting down");
                    relay.request_stop();
                }
            } else {
                relay.handle_event(poll.registry(), ev, now);
            }
        }
        relay.handle_timeout(poll.registry(), Instant::now());
    }
    Ok(ExitCode::SUCCESS)
}

/// If stderr's reader is gone (a closed pipe or socket, a closed fd), point fd 2 at /dev/null
/// so that no later write fails: simple_logger panics on a failed write, and the relay must
/// outlive its log reader (operators still get the log on the control port). One `poll`
/// with a zero timeout per stderr line; a reader that vanishes between the poll and the write
/// can still lose the race, once.
#[allow(unsafe_code)]
fn keep_stderr_writable() {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: 2,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n == 1
        && p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
        && let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null")
    {
        // SAFETY: dup2 onto fd 2 of a file we hold open; both fds are valid.
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
    }
}

/// SIGINT and SIGTERM, delivered as readiness on `SIGNAL` in our own Poll.
fn register_signals(poll: &Poll) -> Result<signal_hook_mio::v1_0::Signals, Failure> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM]).map_err(rt(1))?;
    poll.registry()
        .register(&mut signals, SIGNAL, Interest::READABLE)
        .map_err(rt(1))?;
    Ok(signals)
}

/// Tell systemd (Type=notify) about our state, if it is listening.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = result {
        log::warn!("sd_notify({state}): {e}");
    }
}

// ------------------------------------------------------------------------------------ keygen

fn keygen(mut f: Flags) -> Result<ExitCode, Failure> {
    let path: Option<PathBuf> = f.opt("--key-file", "MCRELAY_KEY_FILE")?;
    let bits: usize = f.get("--key-bits", "MCRELAY_KEY_BITS", 2048)?;
    f.finish()?;
    let Some(path) = path else {
        return Err(UsageError("--key-file PATH is required".into()).into());
    };
    let key = ServerKey::generate(bits).map_err(rt(1))?;
    key.save_new(&path).map_err(rt(1))?;
    println!("{}", key.fingerprint_hex());
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------------------------ client

const UDP: Token = Token(1);
const STDIN: Token = Token(2);

fn default_known_relays() -> String {
    match std::env::var_os("HOME") {
        Some(h) => Path::new(&h)
            .join(".config/mcrelay/known_relays")
            .display()
            .to_string(),
        None => "off".into(),
    }
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

fn client(mut f: Flags) -> Result<ExitCode, Failure> {
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
    let timeout = f
        .get(
            "--timeout",
            "MCRELAY_CONNECT_TIMEOUT",
            Dur(Duration::from_secs(10)),
        )?
        .0;
    let level = log_level(&mut f, log::LevelFilter::Warn)?;
    f.finish()?;
    if cfg.ttl > 255 {
        return Err(UsageError("--ttl must be 0..=255".into()).into());
    }
    cfg.pin = pin
        .map(|p| {
            parse_fingerprint(&p).map_err(|e| UsageError(format!("--server-fingerprint: {e}")))
        })
        .transpose()?;
    cfg.admission = match (name, token) {
        (Some(n), Some(t)) => Some((n, t)),
        (None, None) => None,
        _ => return Err(UsageError("--name and --token go together".into()).into()),
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
    Logger::install(level, None).map_err(rt(1))?;

    let std_sock = mcrelay::client::client_socket(&cfg).map_err(rt(1))?;
    std_sock.set_nonblocking(true).map_err(rt(1))?;
    let mut sock = mio::net::UdpSocket::from_std(std_sock);
    let to = SocketAddr::from((cfg.group, cfg.port));
    let mut poll = Poll::new().map_err(rt(1))?;
    poll.registry()
        .register(&mut sock, UDP, Interest::READABLE)
        .map_err(rt(1))?;
    let mut signals = register_signals(&poll)?;
    // stdin is read on its own thread (a regular file or a terminal cannot be polled reliably).
    let waker = std::sync::Arc::new(Waker::new(poll.registry(), STDIN).map_err(rt(1))?);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(1024);
    let w = waker.clone();

    let rng = Rng::from_os().map_err(rt(1))?;
    let start = Instant::now();
    let mut session = ClientSession::new(rng, cfg.pin, cfg.admission.clone(), start);
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 65536];
    let mut stdout = io::stdout().lock();
    let mut stdin_started = false;
    let mut quitting: Option<Instant> = None;
    let mut w_opt = Some(w);
    loop {
        while let Some(d) = session.poll_transmit() {
            if let Err(e) = sock.send_to(&d, to) {
                log::warn!("send: {e}");
            }
        }
        if let Some(e) = session.take_error() {
            let code = if matches!(e, mcrelay::client::ClientError::FingerprintMismatch { .. }) {
                3
            } else {
                2
            };
            return Err(Failure::Runtime(code, e.to_string()));
        }
        while let Some(ev) = session.poll_event() {
            let _ = writeln!(stdout, "{}", format_event(&ev));
            let _ = stdout.flush();
            match ev {
                mcrelay::client::Event::Ready { fingerprint, .. } => {
                    if let (Some(p), false) = (&known, remembered) {
                        match remember_relay(p, &endpoint, &fingerprint) {
                            Ok(()) => eprintln!(
                                "mcrelay client: new relay {endpoint}, key fingerprint {}; remembered in {}",
                                hex(&fingerprint),
                                p.display()
                            ),
                            Err(e) => {
                                log::warn!("cannot remember the relay key in {}: {e}", p.display())
                            }
                        }
                    }
                    if !stdin_started {
                        stdin_started = true;
                        let (tx, w) = (tx.clone(), w_opt.take());
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
                                if let Some(w) = &w {
                                    let _ = w.wake();
                                }
                            }
                            if let Some(w) = &w {
                                let _ = w.wake();
                            }
                        });
                    }
                }
                mcrelay::client::Event::Closed { .. } | mcrelay::client::Event::Shutdown => {
                    return Ok(ExitCode::SUCCESS);
                }
                _ => {}
            }
        }
        let now = Instant::now();
        if session.id().is_none() && quitting.is_none() && now.duration_since(start) > timeout {
            return Err(Failure::Runtime(
                2,
                format!("no answer from a relay at {endpoint} within {timeout:?}"),
            ));
        }
        if let Some(q) = quitting
            && now >= q
        {
            return Ok(ExitCode::SUCCESS);
        }
        let mut deadline = session.poll_timeout();
        if let Some(q) = quitting {
            deadline = Some(deadline.map_or(q, |d| d.min(q)));
        }
        let wait = deadline
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_millis(500));
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Runtime(1, format!("poll: {e}"))),
        }
        let now = Instant::now();
        for ev in events.iter() {
            match ev.token() {
                UDP => loop {
                    match sock.recv_from(&mut buf) {
                        Ok((n, _)) => session.handle_datagram(now, &buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::debug!("recv: {e}");
                            break;
                        }
                    }
                },
                SIGNAL if signals.pending().next().is_some() && quitting.is_none() => {
                    session.disconnect(now);
                    quitting = Some(now + Duration::from_secs(1));
                    if session.id().is_none() {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                _ => {}
            }
        }
        while let Ok(item) = rx.try_recv() {
            match item {
                Some(line) => {
                    if let Err(e) = session.send(Instant::now(), &line) {
                        eprintln!("mcrelay client: not sent: {e}");
                    }
                }
                None if quitting.is_none() => {
                    session.disconnect(Instant::now());
                    quitting = Some(Instant::now() + Duration::from_secs(1));
                }
                None => {}
            }
        }
        session.handle_timeout(Instant::now());
    }
}

// ------------------------------------------------------------------------------------ ctl

/// Read lines until a terminator (`OK` / `ERR ...`); print them; returns whether it was OK.
fn read_reply(r: &mut impl BufRead, out: &mut impl Write, print: bool) -> io::Result<Option<bool>> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\n', '\r']);
        if l.starts_with("LOG ") {
            if print {
                writeln!(out, "{l}")?;
            }
            continue;
        }
        if l == "OK" {
            return Ok(Some(true));
        }
        if let Some(reason) = l.strip_prefix("ERR ") {
            if print {
                writeln!(out, "ERR {reason}")?;
            }
            return Ok(Some(false));
        }
        if print {
            writeln!(out, "{l}")?;
        }
    }
}

fn ctl(mut f: Flags) -> Result<ExitCode, Failure> {
    let control: String = f.get("--control", "MCRELAY_CONTROL", "127.0.0.1:5008".to_string())?;
    let token = control_token(&mut f, "--token-file")?;
    let follow = f.switch("--follow");
    let level: log::LevelFilter =
        f.get("--level", "MCRELAY_FOLLOW_LEVEL", log::LevelFilter::Info)?;
    let words = f.finish()?;
    let addr = parse_control(&control)?
        .ok_or_else(|| UsageError("--control off makes no sense here".into()))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| Failure::Runtime(2, format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone().map_err(rt(2))?;
    let mut r = BufReader::new(stream);
    let mut out = io::stdout().lock();
    let io2 = |e: io::Error| Failure::Runtime(2, format!("control connection: {e}"));
    // Greeting.
    read_reply(&mut r, &mut io::sink(), false).map_err(io2)?;
    if let Some(t) = &token {
        writeln!(w, "auth {t}").map_err(io2)?;
        if read_reply(&mut r, &mut out, true).map_err(io2)? != Some(true) {
            return Ok(ExitCode::from(1));
        }
    }
    if follow {
        writeln!(w, "log level {level}").map_err(io2)?;
        read_reply(&mut r, &mut out, true).map_err(io2)?;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(io2)? == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            let l = line.trim_end();
            let _ = writeln!(out, "{}", l.strip_prefix("LOG ").unwrap_or(l));
            let _ = out.flush();
        }
    }
    if !words.is_empty() {
        writeln!(w, "{}", words.join(" ")).map_err(io2)?;
        return match read_reply(&mut r, &mut out, true).map_err(io2)? {
            Some(true) => Ok(ExitCode::SUCCESS),
            Some(false) => Ok(ExitCode::from(1)),
            None => Err(Failure::Runtime(
                2,
                "connection closed before the reply ended".into(),
            )),
        };
    }
    // Interactive.
    let stdin = io::stdin();
    let mut last_ok = true;
    for line in stdin.lock().lines() {
        let line = line.map_err(rt(1))?;
        if line.trim().is_empty() {
            continue;
        }
        writeln!(w, "{line}").map_err(io2)?;
        match read_reply(&mut r, &mut out, true).map_err(io2)? {
            Some(ok) => {
                last_ok = ok;
                if ok {
                    let _ = writeln!(out, "OK");
                }
            }
            None => break,
        }
        let _ = out.flush();
    }
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    Ok(if last_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
