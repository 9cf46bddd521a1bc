//! `mcrelay`: serve | client | ctl | keygen. A thin shell over the library: each command
//! lives in its own file, flag plumbing in `flags.rs`, the logger in `logger.rs`, process
//! plumbing (signals, systemd, stderr) in `sys.rs`.

mod client;
mod ctl;
mod flags;
mod keygen;
mod logger;
mod serve;
mod sys;

use std::ffi::OsString;
use std::process::ExitCode;

use flags::{Flags, UsageError};

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

/// A subcommand's entry point.
type Command = fn(Flags) -> Result<ExitCode, Failure>;

/// How a command failed: a bad flag (exit 64) or at run time (its own exit status).
enum Failure {
    Usage(UsageError),
    Runtime(u8, String),
}

impl From<UsageError> for Failure {
    fn from(e: UsageError) -> Self {
        Failure::Usage(e)
    }
}

/// Map any displayable error to a run-time failure with exit status `code`.
fn rt<E: std::fmt::Display>(code: u8) -> impl Fn(E) -> Failure {
    move |e| Failure::Runtime(code, e.to_string())
}

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
        "serve" => (serve::HELP, serve::run),
        "client" => (client::HELP, client::run),
        "ctl" => (ctl::HELP, ctl::run),
        "keygen" => (keygen::HELP, keygen::run),
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
