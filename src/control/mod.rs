//! The control-port line protocol (docs/control.md): parsing and reply formatting.
//!
//! Pure: no sockets. Every reply is a list of lines followed by a terminator line, `OK` or
//! `ERR <reason>`. Asynchronous log lines start with `LOG ` and nothing else does.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::core::{ClientInfo, Drop, KickTarget, RelayCore};

/// Longest command line accepted (bytes, without the newline).
pub const MAX_LINE: usize = 1024;

/// An operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Auth(String),
    Stats,
    Clients,
    Kick(KickTarget),
    Metrics,
    Config,
    Shutdown,
    Quit,
    Log(bool),
    LogLevel(log::LevelFilter),
    Ping,
}

impl Command {
    /// May run before `auth` succeeds.
    pub fn allowed_unauthenticated(&self) -> bool {
        matches!(
            self,
            Command::Help | Command::Auth(_) | Command::Quit | Command::Ping
        )
    }
}

/// One line per command: `name args — description`.
pub const HELP: &[(&str, &str)] = &[
    ("help", "list commands"),
    (
        "auth <token>",
        "authenticate (when the relay has a control token)",
    ),
    (
        "stats",
        "counters: uptime, clients, traffic, handshakes, fragments, drops by reason",
    ),
    (
        "clients",
        "one line per client: id, address, name, since, last seen, traffic",
    ),
    (
        "kick <id|ip:port>",
        "remove a client now; it is told, the others see it leave",
    ),
    ("metrics", "the stats in Prometheus text exposition format"),
    ("config", "the effective settings (no secrets)"),
    (
        "log on|off",
        "stream the relay's log on this connection (lines start with LOG)",
    ),
    (
        "log level <error|warn|info|debug|trace>",
        "the most verbose level streamed here",
    ),
    ("ping", "answers OK"),
    ("shutdown", "stop the relay gracefully (alias: exit)"),
    ("quit", "close this connection"),
];

/// At most 32 characters of an argument, control characters shown as `?`, for error lines.
fn shown(arg: &str) -> String {
    arg.chars()
        .take(32)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Parse one command line (without its line terminator).
pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_ascii_whitespace();
    let Some(cmd) = words.next() else {
        return Err("empty command (try: help)".into());
    };
    let args: Vec<&str> = words.collect();
    let arity = |n: usize, usage: &str| -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("wrong number of arguments: usage: {usage}"))
        }
    };
    Ok(match cmd.to_ascii_lowercase().as_str() {
        "help" => Command::Help,
        "auth" => {
            arity(1, "auth <token>")?;
            Command::Auth(args[0].to_string())
        }
        "stats" | "info" => {
            arity(0, "stats")?;
            Command::Stats
        }
        "clients" => {
            arity(0, "clients")?;
            Command::Clients
        }
        "kick" => {
            arity(1, "kick <id|ip:port>")?;
            let a = args[0];
            if let Ok(id) = a.parse::<u32>() {
                Command::Kick(KickTarget::Id(id))
            } else if let Ok(addr) = a.parse() {
                Command::Kick(KickTarget::Addr(addr))
            } else {
                return Err(format!("not a client id or ip:port: {}", shown(a)));
            }
        }
        "metrics" => {
            arity(0, "metrics")?;
            Command::Metrics
        }
        "config" => {
            arity(0, "config")?;
            Command::Config
        }
        "shutdown" | "exit" => {
            arity(0, "shutdown")?;
            Command::Shutdown
        }
        "quit" => {
            arity(0, "quit")?;
            Command::Quit
        }
        "ping" => {
            arity(0, "ping")?;
            Command::Ping
        }
        "log" => match args.as_slice() {
            ["on"] => Command::Log(true),
            ["off"] => Command::Log(false),
            ["level", l] => Command::LogLevel(
                l.parse::<log::LevelFilter>()
                    .map_err(|_| format!("unknown log level: {}", shown(l)))?,
            ),
            _ => return Err("usage: log on|off, log level <level>".into()),
        },
        other => {
            return Err(format!("unknown command: {} (try: help)", shown(other)));
        }
    })
}

pub fn format_help(out: &mut String) {
    for (usage, what) in HELP {
        let _ = writeln!(out, "{usage:<42} {what}");
    }
}

fn secs_since(now: Instant, then: Instant) -> u64 {
    now.saturating_duration_since(then).as_secs()
}

/// Seconds with one decimal (truncated), from integers: `12.3`.
struct Tenths(Duration);

impl std::fmt::Display for Tenths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0.as_secs(), self.0.subsec_millis() / 100)
    }
}

/// `stats`: `name value` lines.
pub fn format_stats(out: &mut String, core: &RelayCore, now: Instant, started: Instant) {
    let s = core.stats();
    let _ = writeln!(out, "uptime_seconds {}", secs_since(now, started));
    let _ = writeln!(out, "clients {}", core.client_count());
    for (name, v) in s.counters() {
        let _ = writeln!(out, "{name} {v}");
    }
    let _ = writeln!(out, "reassembly_bytes {}", core.reassembly_bytes());
    let _ = writeln!(
        out,
        "reassemblies_in_flight {}",
        core.reassemblies_in_flight()
    );
    let _ = writeln!(
        out,
        "pending_registrations {}",
        core.pending_registrations()
    );
    let _ = writeln!(out, "drops_total {}", s.total_drops());
    for d in Drop::ALL {
        let _ = writeln!(out, "drop.{} {}", d.name(), s.drops(*d));
    }
}

/// `clients`: one line per client.
pub fn format_clients(out: &mut String, clients: impl Iterator<Item = ClientInfo>, now: Instant) {
    for c in clients {
        let _ = writeln!(
            out,
            "id={} addr={} name={} since={}s last_seen={}s msgs_in={} bytes_in={} msgs_out={} bytes_out={}",
            c.id,
            c.addr,
            c.name.as_deref().unwrap_or("-"),
            secs_since(now, c.since),
            Tenths(now.saturating_duration_since(c.last_seen)),
            c.msgs_in,
            c.bytes_in,
            c.msgs_out,
            c.bytes_out
        );
    }
}

/// `metrics`: Prometheus text exposition format 0.0.4.
pub fn format_metrics(out: &mut String, core: &RelayCore, now: Instant, started: Instant) {
    let s = core.stats();
    let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(out, "# HELP mcrelay_{name} {help}");
        let _ = writeln!(out, "# TYPE mcrelay_{name} {kind}");
        let _ = writeln!(out, "mcrelay_{name} {v}");
    };
    gauge(
        "uptime_seconds",
        "Seconds since the relay started.",
        "gauge",
        secs_since(now, started),
    );
    gauge(
        "clients",
        "Registered clients now.",
        "gauge",
        core.client_count() as u64,
    );
    gauge(
        "reassembly_bytes",
        "Bytes held by incomplete reassemblies.",
        "gauge",
        core.reassembly_bytes() as u64,
    );
    for (name, v) in s.counters() {
        let kind = if name == "peak_clients" {
            "gauge"
        } else {
            "counter"
        };
        let suffix = if kind == "counter" { "_total" } else { "" };
        gauge(&format!("{name}{suffix}"), &name.replace('_', " "), kind, v);
    }
    let _ = writeln!(
        out,
        "# HELP mcrelay_drops_total Datagrams dropped, by reason."
    );
    let _ = writeln!(out, "# TYPE mcrelay_drops_total counter");
    for d in Drop::ALL {
        let _ = writeln!(
            out,
            "mcrelay_drops_total{{reason=\"{}\"}} {}",
            d.name(),
            s.drops(*d)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("help"), Ok(Command::Help));
        assert_eq!(parse("  STATS "), Ok(Command::Stats));
        assert_eq!(parse("exit"), Ok(Command::Shutdown));
        assert_eq!(parse("kick 7"), Ok(Command::Kick(KickTarget::Id(7))));
        assert_eq!(
            parse("kick 127.0.0.1:4000"),
            Ok(Command::Kick(KickTarget::Addr(
                "127.0.0.1:4000".parse().unwrap()
            )))
        );
        assert_eq!(parse("log on"), Ok(Command::Log(true)));
        assert_eq!(
            parse("log level debug"),
            Ok(Command::LogLevel(log::LevelFilter::Debug))
        );
        assert_eq!(parse("auth s3cret"), Ok(Command::Auth("s3cret".into())));
    }

    #[test]
    fn errors_have_reasons() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("frobnicate").unwrap_err().contains("unknown command"));
        assert!(parse("kick").unwrap_err().contains("usage"));
        assert!(parse("kick a b").unwrap_err().contains("usage"));
        assert!(parse("kick bob").unwrap_err().contains("not a client id"));
        assert!(parse("stats now").unwrap_err().contains("usage"));
        assert!(
            parse("log level loud")
                .unwrap_err()
                .contains("unknown log level")
        );
        assert!(parse(&"x".repeat(5000)).unwrap_err().len() < 100);
    }

    #[test]
    fn only_safe_commands_before_auth() {
        assert!(parse("help").unwrap().allowed_unauthenticated());
        assert!(parse("auth x").unwrap().allowed_unauthenticated());
        assert!(!parse("stats").unwrap().allowed_unauthenticated());
        assert!(!parse("shutdown").unwrap().allowed_unauthenticated());
    }
}
