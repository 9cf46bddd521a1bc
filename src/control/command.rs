//! Parsing one command line (docs/control.md, "Commands").

use crate::core::KickTarget;

/// An operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `help`: list commands.
    Help,
    /// `auth <token>`.
    Auth(String),
    /// `stats` (alias `info`).
    Stats,
    /// `clients`.
    Clients,
    /// `kick <id|ip:port>`.
    Kick(KickTarget),
    /// `metrics`: Prometheus text.
    Metrics,
    /// `config`: the effective settings.
    Config,
    /// `shutdown` (alias `exit`).
    Shutdown,
    /// `quit`: close this connection.
    Quit,
    /// `log on|off`.
    Log(bool),
    /// `log level <level>`.
    LogLevel(log::LevelFilter),
    /// `ping`.
    Ping,
    /// `rekey`: a fresh group key now (group mode).
    Rekey,
    /// `peers`: the other relays of the federation.
    Peers,
}

impl std::fmt::Display for Command {
    /// The canonical line for the command (what [`parse`] reads back as the same command).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Help => f.write_str("help"),
            Command::Auth(t) => write!(f, "auth {t}"),
            Command::Stats => f.write_str("stats"),
            Command::Clients => f.write_str("clients"),
            Command::Kick(KickTarget::Id(id)) => write!(f, "kick {id}"),
            Command::Kick(KickTarget::Addr(a)) => write!(f, "kick {a}"),
            Command::Metrics => f.write_str("metrics"),
            Command::Config => f.write_str("config"),
            Command::Shutdown => f.write_str("shutdown"),
            Command::Quit => f.write_str("quit"),
            Command::Log(on) => write!(f, "log {}", if *on { "on" } else { "off" }),
            Command::LogLevel(l) => write!(f, "log level {l}"),
            Command::Ping => f.write_str("ping"),
            Command::Rekey => f.write_str("rekey"),
            Command::Peers => f.write_str("peers"),
        }
    }
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
        "peers",
        "federation: the NATS link, then one line per other relay",
    ),
    (
        "kick <id|ip:port>",
        "remove a client now; it is told, the others see it leave",
    ),
    ("metrics", "the stats in Prometheus text exposition format"),
    (
        "rekey",
        "group mode: a fresh group key now, delivered to every member",
    ),
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
        "rekey" => {
            arity(0, "rekey")?;
            Command::Rekey
        }
        "peers" => {
            arity(0, "peers")?;
            Command::Peers
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("help"), Ok(Command::Help));
        assert_eq!(parse("  STATS "), Ok(Command::Stats));
        assert_eq!(parse("peers"), Ok(Command::Peers));
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
