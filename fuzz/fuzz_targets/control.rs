//! Control-port line parser: `control::parse` on arbitrary (lossily decoded) text.
//!
//! No panic; errors are one line (the reply protocol is line based); an accepted command
//! re-rendered in canonical form parses to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcrelay::control::{Command, parse};
use mcrelay::core::KickTarget;

fn render(c: &Command) -> String {
    match c {
        Command::Help => "help".into(),
        Command::Auth(t) => format!("auth {t}"),
        Command::Stats => "stats".into(),
        Command::Clients => "clients".into(),
        Command::Kick(KickTarget::Id(id)) => format!("kick {id}"),
        Command::Kick(KickTarget::Addr(a)) => format!("kick {a}"),
        Command::Metrics => "metrics".into(),
        Command::Config => "config".into(),
        Command::Shutdown => "shutdown".into(),
        Command::Quit => "quit".into(),
        Command::Log(on) => format!("log {}", if *on { "on" } else { "off" }),
        Command::LogLevel(l) => format!("log level {l}"),
        Command::Ping => "ping".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    match parse(&line) {
        Ok(cmd) => {
            let _ = cmd.allowed_unauthenticated();
            let text = render(&cmd);
            assert_eq!(parse(&text), Ok(cmd.clone()), "re-rendered {text:?}");
            // Case and surrounding whitespace do not matter for the command word.
            let shouty = format!("  {}\t", text.to_ascii_uppercase());
            if !matches!(cmd, Command::Auth(_)) {
                assert_eq!(parse(&shouty), Ok(cmd), "upper-cased {shouty:?}");
            }
        }
        Err(e) => {
            assert!(!e.is_empty());
            assert!(
                !e.contains('\n') && !e.contains('\r'),
                "error reply would break the line protocol: {e:?}"
            );
        }
    }
});
