//! `mcrelay serve`: parse the flags into the library's settings, validate them before any
//! work, then run the relay in this process's own mio loop.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use mcrelay::core::{valid_name, valid_token};
use mcrelay::crypto::fernet::FernetKey;
use mcrelay::crypto::key::{self, ServerKey};
use mcrelay::driver::logtap::LogTap;
use mcrelay::federation::FederationConfig;
use mcrelay::nats::NatsAuth;
use mcrelay::proto::reassembly::Limits;
use mcrelay::{Config, Distribution, GroupConfig, MonitorSettings, NetConfig, Relay};
use mio::{Events, Poll, Token};

use crate::flags::{
    Dur, Flags, OnOff, Size, UsageError, config_error, control_token, log_level, monitor_token,
    parse_control, read_token_file,
};
use crate::logger::Logger;
use crate::sys::{keep_stderr_writable, register_signals, sd_notify};
use crate::{Failure, rt};

pub const HELP: &str = "\
mcrelay serve — run the relay

FLAGS (default; environment variable):
    --group ADDR                  multicast group to join (239.255.77.77; MCRELAY_GROUP)
    --port N                      UDP port (5007; MCRELAY_PORT)
    --iface ADDR                  interface address to join on and reply from (127.0.0.1; MCRELAY_IFACE)
    --control ADDR:PORT|off       control port (127.0.0.1:5008; MCRELAY_CONTROL)
    --control-token-file PATH     require `auth <token>` with the token in PATH (none; MCRELAY_CONTROL_TOKEN_FILE)
                                  or give the token itself in MCRELAY_CONTROL_TOKEN
    --max-control N               simultaneous operators (8; MCRELAY_MAX_CONTROL)
    --control-auth-timeout DUR    with a token: time to authenticate after connecting (5s; MCRELAY_CONTROL_AUTH_TIMEOUT)
    --control-idle-timeout DUR    close operators silent this long, unless following the log; 0: never (5m; MCRELAY_CONTROL_IDLE_TIMEOUT)
    --monitor ADDR:PORT|off       HTTP monitor: /metrics /healthz /stats /clients, e.g. 127.0.0.1:5009 (off; MCRELAY_MONITOR)
    --monitor-token-file PATH     require `Authorization: Bearer <token>` with the token in PATH (none; MCRELAY_MONITOR_TOKEN_FILE)
                                  or give the token itself in MCRELAY_MONITOR_TOKEN
    --max-monitor N               simultaneous monitor connections (8; MCRELAY_MAX_MONITOR)
    --metrics-per-client          per-client counters on /metrics, label client=\"<id>\" (off; MCRELAY_METRICS_PER_CLIENT=on)
    --key-file PATH               RSA key, PKCS#8 PEM; created (0600) if missing (ephemeral key; MCRELAY_KEY_FILE)
    --key-bits N                  size of a generated key, 2048..4096 (2048; MCRELAY_KEY_BITS)
    --client-timeout DUR          drop clients silent this long (30s; MCRELAY_CLIENT_TIMEOUT)
    --keepalive DUR               keep-alive interval told to clients (10s; MCRELAY_KEEPALIVE)
    --max-clients N               registered clients (1024; MCRELAY_MAX_CLIENTS)
    --max-clients-per-source N    registered clients from one address, IPv6 /64 (64; MCRELAY_MAX_CLIENTS_PER_SOURCE)
    --reassembly-timeout DUR      incomplete messages expire (5s; MCRELAY_REASSEMBLY_TIMEOUT)
    --reassembly-per-client N     messages in reassembly per client (4; MCRELAY_REASSEMBLY_PER_CLIENT)
    --reassembly-client-bytes SZ  reassembly memory per client (384K; MCRELAY_REASSEMBLY_CLIENT_BYTES)
    --reassembly-total-bytes SZ   reassembly memory in total (8M; MCRELAY_REASSEMBLY_TOTAL_BYTES)
    --token-ttl DUR               oldest client token accepted (120s; MCRELAY_TOKEN_TTL)
    --max-clock-skew DUR          newest client token accepted, ahead of our clock (60s; MCRELAY_MAX_CLOCK_SKEW)
    --handshakes-per-sec N        RSA decryptions per second, all sources (200; MCRELAY_HANDSHAKES_PER_SEC)
    --handshakes-per-source N     RSA decryptions per second per IP (10; MCRELAY_HANDSHAKES_PER_SOURCE)
    --handshake-cpu-percent N     most of the loop's time RSA may take, 1..100 (25; MCRELAY_HANDSHAKE_CPU_PERCENT)
    --clients-file PATH           admit only `name token` lines of PATH (anyone; MCRELAY_CLIENTS_FILE)
    --max-pending-handshakes N    validated REGISTERs waiting for RSA (64; MCRELAY_MAX_PENDING_HANDSHAKES)
    --cookie-lifetime DUR         how long an address cookie is valid (30s; MCRELAY_COOKIE_LIFETIME)
    --send-queue-bytes SZ         outgoing datagrams waiting for the socket (4M; MCRELAY_SEND_QUEUE_BYTES)
    --distribution MODE           unicast (a copy per client) or group (once, to a multicast group,
                                  under a rotating group key) (unicast; MCRELAY_DISTRIBUTION)
    --distribution-group ADDR:PORT  group mode's multicast group (--group address, --port + 1; MCRELAY_DISTRIBUTION_GROUP)
    --ttl N                       multicast TTL of group-mode sends; 0 never leaves the host (1; MCRELAY_TTL)
    --rekey-on-join on|off        a join starts a new epoch (by the ratchet) (on; MCRELAY_REKEY_ON_JOIN)
    --group-grace DUR             members keep the previous epoch's key this long (2s; MCRELAY_GROUP_GRACE)
    --rekey-messages N            a new epoch after this many group tokens (1048576; MCRELAY_REKEY_MESSAGES)
    --rekey-age DUR               a new epoch after this long (1h; MCRELAY_REKEY_AGE)
    --nats ADDR:PORT[,...]|off    federation (docs/federation.md): NATS servers, IP literals (off; MCRELAY_NATS)
    --relay-id N                  federation: this relay's id in the cluster, 1..=255 (none; MCRELAY_RELAY_ID)
    --cluster NAME                federation: the cluster's name, A-Z a-z 0-9 _ - (mcrelay; MCRELAY_CLUSTER)
    --cluster-key-file PATH       federation: the cluster key, a Fernet key (`mcrelay keygen --cluster-key-file`) (none; MCRELAY_CLUSTER_KEY_FILE)
    --nats-token-file PATH        federation: NATS auth token in PATH (none; MCRELAY_NATS_TOKEN_FILE)
                                  or give the token itself in MCRELAY_NATS_TOKEN
    --nats-user USER              federation: NATS user name, with a password (none; MCRELAY_NATS_USER)
    --nats-password-file PATH     federation: NATS password in PATH (none; MCRELAY_NATS_PASSWORD_FILE)
                                  or give the password itself in MCRELAY_NATS_PASSWORD
    --federation-heartbeat DUR    federation: heartbeat interval; 3 missed: relay lost (1s; MCRELAY_FEDERATION_HEARTBEAT)
    --log-queue N                 log lines waiting for operators (4096; MCRELAY_LOG_QUEUE)
    --log-level LEVEL             error|warn|info|debug|trace (info; MCRELAY_LOG_LEVEL, then RUST_LOG)
    -h, --help                    this text
";

/// Everything `serve` was told.
struct Args {
    cfg: Config,
    net: NetConfig,
    key_file: Option<PathBuf>,
    key_bits: usize,
    log_queue: usize,
    level: log::LevelFilter,
}

/// The flag that sets a settings field (for error messages).
fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "group" => "--group",
        "port" => "--port",
        "iface" => "--iface",
        "control" => "--control",
        "control_token" => "--control-token-file",
        "max_control" => "--max-control",
        "control_auth_timeout" => "--control-auth-timeout",
        "control_idle_timeout" => "--control-idle-timeout",
        "monitor" | "monitor.listen" => "--monitor",
        "monitor.token" => "--monitor-token-file",
        "monitor.max_conns" => "--max-monitor",
        "client_timeout" => "--client-timeout",
        "keepalive_interval" => "--keepalive",
        "max_clients" => "--max-clients",
        "max_clients_per_source" => "--max-clients-per-source",
        "reassembly.timeout" => "--reassembly-timeout",
        "reassembly.per_owner_messages" => "--reassembly-per-client",
        "reassembly.per_owner_bytes" => "--reassembly-client-bytes",
        "reassembly.total_bytes" => "--reassembly-total-bytes",
        "token_ttl" => "--token-ttl",
        "max_clock_skew" => "--max-clock-skew",
        "handshakes_per_sec" => "--handshakes-per-sec",
        "handshake_cpu_percent" => "--handshake-cpu-percent",
        "handshakes_per_source_per_sec" => "--handshakes-per-source",
        "max_pending_registrations" => "--max-pending-handshakes",
        "cookie_lifetime" => "--cookie-lifetime",
        "max_send_queue" => "--send-queue-bytes",
        "admission" => "--clients-file",
        "ttl" => "--ttl",
        "distribution.addr" => "--distribution-group",
        "distribution.grace" => "--group-grace",
        "distribution.rotate_messages" => "--rekey-messages",
        "distribution.rotate_age" => "--rekey-age",
        "distribution.key_resend" => "--client-timeout",
        "relay_id" | "federation.relay_id" => "--relay-id",
        "federation.cluster" => "--cluster",
        "federation.heartbeat" => "--federation-heartbeat",
        "federation.nats.servers" | "federation.nats" => "--nats",
        "federation.nats.auth" => "--nats-token-file/--nats-user",
        "federation.nats.name" => "--cluster",
        _ => return None,
    })
}

fn net_flags(f: &mut Flags) -> Result<NetConfig, UsageError> {
    let mut net = NetConfig::default();
    net.group = f.get("--group", "MCRELAY_GROUP", net.group)?;
    net.port = f.get("--port", "MCRELAY_PORT", net.port)?;
    net.iface = f.get("--iface", "MCRELAY_IFACE", net.iface)?;
    let control: String = f.get("--control", "MCRELAY_CONTROL", "127.0.0.1:5008".to_string())?;
    net.control = parse_control(&control)?;
    net.control_token = control_token(f, "--control-token-file")?;
    net.max_control = f.get("--max-control", "MCRELAY_MAX_CONTROL", net.max_control)?;
    net.ttl = f.get("--ttl", "MCRELAY_TTL", net.ttl)?;
    let env = "MCRELAY_CONTROL_AUTH_TIMEOUT";
    let auth = f.get("--control-auth-timeout", env, Dur(net.control_auth_timeout))?;
    net.control_auth_timeout = auth.0;
    let env = "MCRELAY_CONTROL_IDLE_TIMEOUT";
    let idle = f.get("--control-idle-timeout", env, Dur(net.control_idle_timeout))?;
    net.control_idle_timeout = idle.0;
    net.monitor = monitor_flags(f)?;
    net.federation = federation_flags(f)?;
    Ok(net)
}

/// `--nats` and the federation's settings (docs/federation.md). Without `--nats`, none of
/// them may be given: a relay is federated or it is not.
fn federation_flags(f: &mut Flags) -> Result<Option<FederationConfig>, UsageError> {
    let nats: String = f.get("--nats", "MCRELAY_NATS", "off".to_string())?;
    let relay_id: Option<String> = f.opt("--relay-id", "MCRELAY_RELAY_ID")?;
    let cluster: String = f.get("--cluster", "MCRELAY_CLUSTER", "mcrelay".to_string())?;
    let key_file: Option<PathBuf> = f.opt("--cluster-key-file", "MCRELAY_CLUSTER_KEY_FILE")?;
    let token = secret(f, "--nats-token-file", "MCRELAY_NATS_TOKEN")?;
    let user: Option<String> = f.opt("--nats-user", "MCRELAY_NATS_USER")?;
    let password = secret(f, "--nats-password-file", "MCRELAY_NATS_PASSWORD")?;
    let env = "MCRELAY_FEDERATION_HEARTBEAT";
    let heartbeat: Option<Dur> = f.opt("--federation-heartbeat", env)?;
    if nats == "off" {
        let given = [
            ("--relay-id", relay_id.is_some()),
            ("--cluster-key-file", key_file.is_some()),
            ("--nats-user", user.is_some()),
            ("--nats-token-file", token.is_some()),
            ("--nats-password-file", password.is_some()),
            ("--federation-heartbeat", heartbeat.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            return Err(UsageError(format!("{flag}: needs --nats (federation)")));
        }
        return Ok(None);
    }
    let mut servers = Vec::new();
    for s in nats.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let a = s.parse().map_err(|_| {
            UsageError(format!(
                "--nats: {s:?} is not ADDR:PORT (IP literals: the relay resolves no names)"
            ))
        })?;
        servers.push(a);
    }
    let relay_id = relay_id.ok_or_else(|| UsageError("--relay-id: required with --nats".into()))?;
    let relay_id: u8 = match relay_id.parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(UsageError(format!(
                "--relay-id: {relay_id:?} is not 1..=255"
            )));
        }
    };
    let key_file =
        key_file.ok_or_else(|| UsageError("--cluster-key-file: required with --nats".into()))?;
    let key = read_cluster_key(&key_file)?;
    let mut cfg = FederationConfig::new(relay_id, &cluster, key, servers);
    if let Some(h) = heartbeat {
        cfg.heartbeat = h.0;
    }
    cfg.nats.auth = match (token, user, password) {
        (None, None, None) => NatsAuth::None,
        (Some(t), None, None) => NatsAuth::Token(t),
        (None, Some(user), Some(password)) => NatsAuth::UserPassword { user, password },
        (None, Some(_), None) => {
            return Err(UsageError(
                "--nats-user: needs --nats-password-file (or MCRELAY_NATS_PASSWORD)".into(),
            ));
        }
        (None, None, Some(_)) => {
            return Err(UsageError("--nats-password-file: needs --nats-user".into()));
        }
        (Some(_), _, _) => {
            return Err(UsageError(
                "--nats-token-file: a token or a user and password, not both".into(),
            ));
        }
    };
    Ok(Some(cfg))
}

/// A secret from `flag` (a file) or `$<ENV>_FILE`, else the secret itself in `$<ENV>`.
fn secret(f: &mut Flags, flag: &'static str, env: &str) -> Result<Option<String>, UsageError> {
    let file: Option<PathBuf> = f.opt(flag, &format!("{env}_FILE"))?;
    match file {
        Some(p) => Ok(Some(read_token_file(&p)?)),
        None => Ok(std::env::var(env)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())),
    }
}

/// The cluster key: one Fernet key (44 characters of url-safe base64), as
/// `mcrelay keygen --cluster-key-file` writes it.
fn read_cluster_key(path: &Path) -> Result<FernetKey, UsageError> {
    let t =
        read_token_file(path).map_err(|e| UsageError(format!("--cluster-key-file: {}", e.0)))?;
    FernetKey::from_base64(t.as_bytes()).map_err(|e| {
        UsageError(format!(
            "--cluster-key-file {}: not a Fernet key (44 characters of url-safe base64): {e}",
            path.display()
        ))
    })
}

/// `on` or `off`.
fn on_off(f: &mut Flags, flag: &'static str, env: &str, default: bool) -> Result<bool, UsageError> {
    let d = if default { "on" } else { "off" };
    match f.get(flag, env, d.to_string())?.as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(UsageError(format!("{flag}: {other:?} is not on or off"))),
    }
}

/// `--distribution` and group mode's settings (which need the ingest group for a default).
fn distribution_flags(f: &mut Flags, net: &NetConfig) -> Result<Distribution, UsageError> {
    let mode: String = f.get("--distribution", "MCRELAY_DISTRIBUTION", "unicast".into())?;
    let mut g = GroupConfig::for_ingest(SocketAddrV4::new(net.group, net.port));
    let env = "MCRELAY_DISTRIBUTION_GROUP";
    g.addr = f.get("--distribution-group", env, g.addr)?;
    g.rekey_on_join = on_off(
        f,
        "--rekey-on-join",
        "MCRELAY_REKEY_ON_JOIN",
        g.rekey_on_join,
    )?;
    g.grace = f
        .get("--group-grace", "MCRELAY_GROUP_GRACE", Dur(g.grace))?
        .0;
    let env = "MCRELAY_REKEY_MESSAGES";
    g.rotate_messages = f.get("--rekey-messages", env, g.rotate_messages)?;
    g.rotate_age = f
        .get("--rekey-age", "MCRELAY_REKEY_AGE", Dur(g.rotate_age))?
        .0;
    match mode.as_str() {
        "unicast" => Ok(Distribution::Unicast),
        "group" => Ok(Distribution::Group(g)),
        other => Err(UsageError(format!(
            "--distribution: {other:?} is not unicast or group"
        ))),
    }
}

fn monitor_flags(f: &mut Flags) -> Result<Option<MonitorSettings>, UsageError> {
    let mut m = MonitorSettings::default();
    let listen: String = f.get("--monitor", "MCRELAY_MONITOR", "off".to_string())?;
    let listen = parse_control(&listen)
        .map_err(|_| UsageError(format!("--monitor: {listen:?} is not ADDR:PORT or off")))?;
    m.token = monitor_token(f, "--monitor-token-file")?;
    m.max_conns = f.get("--max-monitor", "MCRELAY_MAX_MONITOR", m.max_conns)?;
    let env = "MCRELAY_METRICS_PER_CLIENT";
    let from_env = match std::env::var(env) {
        Ok(v) if !v.trim().is_empty() => {
            v.parse::<OnOff>()
                .map_err(|e| UsageError(format!("${env}: invalid value {v:?}: {e}")))?
                .0
        }
        _ => false,
    };
    m.per_client_metrics = f.switch("--metrics-per-client") || from_env;
    Ok(listen.map(|listen| MonitorSettings { listen, ..m }))
}

fn reassembly_flags(f: &mut Flags) -> Result<Limits, UsageError> {
    let mut l = Limits::default();
    let timeout = f.get(
        "--reassembly-timeout",
        "MCRELAY_REASSEMBLY_TIMEOUT",
        Dur(l.timeout),
    )?;
    l.timeout = timeout.0;
    let per = "MCRELAY_REASSEMBLY_PER_CLIENT";
    l.per_owner_messages = f.get("--reassembly-per-client", per, l.per_owner_messages)?;
    let bytes = Size(l.per_owner_bytes);
    let client = f.get(
        "--reassembly-client-bytes",
        "MCRELAY_REASSEMBLY_CLIENT_BYTES",
        bytes,
    )?;
    l.per_owner_bytes = client.0;
    let total = Size(l.total_bytes);
    let total = f.get(
        "--reassembly-total-bytes",
        "MCRELAY_REASSEMBLY_TOTAL_BYTES",
        total,
    )?;
    l.total_bytes = total.0;
    Ok(l)
}

fn core_flags(f: &mut Flags) -> Result<Config, UsageError> {
    let mut c = Config::default();
    let dur = |f: &mut Flags, flag, env, d| f.get(flag, env, Dur(d)).map(|d| d.0);
    c.client_timeout = dur(
        f,
        "--client-timeout",
        "MCRELAY_CLIENT_TIMEOUT",
        c.client_timeout,
    )?;
    c.keepalive_interval = dur(f, "--keepalive", "MCRELAY_KEEPALIVE", c.keepalive_interval)?;
    c.max_clients = f.get("--max-clients", "MCRELAY_MAX_CLIENTS", c.max_clients)?;
    let (per, env) = (c.max_clients_per_source, "MCRELAY_MAX_CLIENTS_PER_SOURCE");
    c.max_clients_per_source = f.get("--max-clients-per-source", env, per)?;
    c.reassembly = reassembly_flags(f)?;
    c.token_ttl = dur(f, "--token-ttl", "MCRELAY_TOKEN_TTL", c.token_ttl)?;
    c.max_clock_skew = dur(
        f,
        "--max-clock-skew",
        "MCRELAY_MAX_CLOCK_SKEW",
        c.max_clock_skew,
    )?;
    let (hs, hs_src) = (c.handshakes_per_sec, c.handshakes_per_source_per_sec);
    c.handshakes_per_sec = f.get("--handshakes-per-sec", "MCRELAY_HANDSHAKES_PER_SEC", hs)?;
    let env = "MCRELAY_HANDSHAKES_PER_SOURCE";
    c.handshakes_per_source_per_sec = f.get("--handshakes-per-source", env, hs_src)?;
    let (env, cpu) = ("MCRELAY_HANDSHAKE_CPU_PERCENT", c.handshake_cpu_percent);
    c.handshake_cpu_percent = f.get("--handshake-cpu-percent", env, cpu)?;
    let clients_file: Option<PathBuf> = f.opt("--clients-file", "MCRELAY_CLIENTS_FILE")?;
    let pending = c.max_pending_registrations;
    let env = "MCRELAY_MAX_PENDING_HANDSHAKES";
    c.max_pending_registrations = f.get("--max-pending-handshakes", env, pending)?;
    c.cookie_lifetime = dur(
        f,
        "--cookie-lifetime",
        "MCRELAY_COOKIE_LIFETIME",
        c.cookie_lifetime,
    )?;
    let queue = Size(c.max_send_queue);
    c.max_send_queue = f
        .get("--send-queue-bytes", "MCRELAY_SEND_QUEUE_BYTES", queue)?
        .0;
    if let Some(p) = &clients_file {
        c.admission = Some(read_clients_file(p)?);
    }
    Ok(c)
}

/// Parse and validate every flag: nothing is generated, bound or opened before this passes.
fn parse(mut f: Flags) -> Result<Args, UsageError> {
    let net = net_flags(&mut f)?;
    let key_file: Option<PathBuf> = f.opt("--key-file", "MCRELAY_KEY_FILE")?;
    let key_bits: usize = f.get("--key-bits", "MCRELAY_KEY_BITS", 2048)?;
    let mut cfg = core_flags(&mut f)?;
    cfg.distribution = distribution_flags(&mut f, &net)?;
    let log_queue: usize = f.get("--log-queue", "MCRELAY_LOG_QUEUE", 4096)?;
    let level = log_level(&mut f, log::LevelFilter::Info)?;
    let rest = f.finish()?;
    if let Some(r) = rest.first() {
        return Err(UsageError(format!("unexpected argument {r:?}")));
    }
    cfg.validate_with(&net)
        .map_err(|e| config_error(&e, flag_of))?;
    key::check_bits(key_bits).map_err(|e| UsageError(format!("--key-bits: {e}")))?;
    if log_queue == 0 {
        return Err(UsageError("--log-queue: must be at least 1".into()));
    }
    Ok(Args {
        cfg,
        net,
        key_file,
        key_bits,
        log_queue,
        level,
    })
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
        if !valid_name(name) {
            return Err(bad("name must be 1-32 characters of A-Z a-z 0-9 . _ -"));
        }
        if !valid_token(token) {
            return Err(bad("token must be 1-100 bytes without spaces"));
        }
        if map.insert(name.to_string(), token.to_string()).is_some() {
            return Err(bad("duplicate name"));
        }
    }
    Ok(map)
}

fn load_key(a: &Args) -> Result<ServerKey, Failure> {
    let Some(path) = &a.key_file else {
        log::info!(
            "generating an ephemeral {}-bit RSA key (use --key-file to keep one)",
            a.key_bits
        );
        return ServerKey::generate(a.key_bits).map_err(rt(1));
    };
    let (key, created) = ServerKey::load_or_create(path, a.key_bits).map_err(rt(1))?;
    if created {
        log::info!(
            "created key file {} ({} bits, mode 0600)",
            path.display(),
            a.key_bits
        );
    }
    Ok(key)
}

const SIGNAL: Token = Token(0);
const RELAY_BASE: Token = Token(16);

/// `mcrelay serve`.
pub fn run(f: Flags) -> Result<ExitCode, Failure> {
    let a = parse(f)?;
    let tap = LogTap::new(a.log_queue);
    Logger::install_with_guard(a.level, Some(tap.clone()), Some(keep_stderr_writable))
        .map_err(rt(1))?;
    let key = load_key(&a)?;
    let mut poll = Poll::new().map_err(rt(1))?;
    let relay = Relay::builder(key)
        .config(a.cfg)
        .net(a.net)
        .log_tap(tap)
        .manage_log_level(true)
        .build(poll.registry(), RELAY_BASE, Instant::now())
        .map_err(rt(1))?;
    event_loop(&mut poll, relay)?;
    Ok(ExitCode::SUCCESS)
}

/// Our own host loop: the relay and the signal pipe in one Poll.
fn event_loop(poll: &mut Poll, mut relay: Relay) -> Result<(), Failure> {
    let mut signals = register_signals(poll, SIGNAL)?;
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
        // Nothing here reacts to events; drain them so the queue stays empty.
        while relay.poll_event().is_some() {}
    }
    Ok(())
}
