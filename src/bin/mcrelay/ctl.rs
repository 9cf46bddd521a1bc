//! `mcrelay ctl`: one control command, an interactive session, or the log like `tail -f`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use crate::flags::{Flags, UsageError, control_token, parse_control};
use crate::{Failure, rt};

pub const HELP: &str = "\
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

pub fn run(mut f: Flags) -> Result<ExitCode, Failure> {
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
