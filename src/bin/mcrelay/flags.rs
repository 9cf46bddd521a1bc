//! Flag parsing with environment fallbacks, durations and sizes with units, and the few
//! flag helpers the commands share. The rules for what a value may be live in the library
//! (`Config::validate`, `NetConfig::validate`); this file only turns text into values.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use mcrelay::ConfigError;

/// A command-line problem: the binary prints it on one line and exits 64 (EX_USAGE).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Flags of one command, looked up as `--flag VALUE`, then `$ENV`, then the default.
pub struct Flags {
    args: pico_args::Arguments,
}

impl Flags {
    pub fn new(args: Vec<OsString>) -> Self {
        Flags {
            args: pico_args::Arguments::from_vec(args),
        }
    }

    pub fn switch(&mut self, name: &'static str) -> bool {
        self.args.contains(name)
    }

    /// `--name VALUE` or `$env` or `None`.
    pub fn opt<T: FromStr>(
        &mut self,
        name: &'static str,
        env: &str,
    ) -> Result<Option<T>, UsageError>
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(name, env)? {
            None => Ok(None),
            Some((r, src)) => r
                .parse::<T>()
                .map(Some)
                .map_err(|e| UsageError(format!("{src}: invalid value {r:?}: {e}"))),
        }
    }

    /// The text of `--name VALUE` or `$env`, with where it came from. Not generic, so that
    /// `opt` and `get` add only the parse to each of their many instances (binary size).
    #[inline(never)]
    fn raw(
        &mut self,
        name: &'static str,
        env: &str,
    ) -> Result<Option<(String, String)>, UsageError> {
        let raw: Option<String> = self
            .args
            .opt_value_from_str(name)
            .map_err(|e| UsageError(format!("{name}: {e}")))?;
        Ok(match raw {
            Some(r) => Some((r, name.to_string())),
            None => std::env::var(env)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (v, format!("${env}"))),
        })
    }

    pub fn get<T: FromStr>(
        &mut self,
        name: &'static str,
        env: &str,
        default: T,
    ) -> Result<T, UsageError>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.opt(name, env)?.unwrap_or(default))
    }

    /// Remaining positional arguments; any leftover `-x` is an unknown flag.
    pub fn finish(self) -> Result<Vec<String>, UsageError> {
        let rest = self.args.finish();
        let mut out = Vec::new();
        for r in rest {
            let s = r.to_string_lossy().into_owned();
            if s.starts_with('-') && out.is_empty() {
                return Err(UsageError(format!("unknown flag {s} (see --help)")));
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// A duration: `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, unit) = s.split_at(
            s.find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(s.len()),
        );
        // Fixed point, in billionths of the unit: no float parsing or rounding, and "0.1s"
        // is exactly 100 ms.
        let bad = || "expected a number with an optional unit (ms, s, m, h)".to_string();
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') || int.len() > 12 {
            return Err(bad());
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut billionths = 0u128;
        for (i, c) in frac.bytes().enumerate() {
            if i < 9 {
                billionths += u128::from(c - b'0') * 10u128.pow(8 - i as u32);
            }
        }
        let unit_ns: u128 = match unit {
            "ms" => 1_000_000,
            "" | "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("unknown unit {unit:?} (ms, s, m, h)")),
        };
        let ns = (int * 1_000_000_000 + billionths) * unit_ns / 1_000_000_000;
        if ns > 365 * 86_400 * 1_000_000_000 {
            return Err("out of range".into());
        }
        Ok(Dur(Duration::from_nanos(ns as u64)))
    }
}

/// A byte size: `512`, `64K`, `8M`, `1G` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub usize);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
            Some('K') => (&s[..s.len() - 1], 1usize << 10),
            Some('M') => (&s[..s.len() - 1], 1 << 20),
            Some('G') => (&s[..s.len() - 1], 1 << 30),
            _ => (s, 1),
        };
        let n: usize = num
            .parse()
            .map_err(|_| "expected a size like 512, 64K, 8M".to_string())?;
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| "too large".into())
    }
}

/// 64 hex digits.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim().replace(':', "").to_ascii_lowercase();
    if s.len() != 64 {
        return Err("a SHA-256 fingerprint is 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| "not hex".to_string())?;
    }
    Ok(out)
}

/// `--log-level` / `$MCRELAY_LOG_LEVEL`, then `$RUST_LOG`, then `default`.
pub fn log_level(
    flags: &mut Flags,
    default: log::LevelFilter,
) -> Result<log::LevelFilter, UsageError> {
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

/// A file holding one token (control, NATS, monitor): trimmed, no inner whitespace.
pub fn read_token_file(path: &Path) -> Result<String, UsageError> {
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

/// The control token: `flag` (a file) or `$MCRELAY_CONTROL_TOKEN_FILE`, else the token
/// itself in `$MCRELAY_CONTROL_TOKEN`.
pub fn control_token(flags: &mut Flags, flag: &'static str) -> Result<Option<String>, UsageError> {
    let file: Option<PathBuf> = flags.opt(flag, "MCRELAY_CONTROL_TOKEN_FILE")?;
    match file {
        Some(p) => Ok(Some(read_token_file(&p)?)),
        None => Ok(std::env::var("MCRELAY_CONTROL_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())),
    }
}

/// The monitor's bearer token: `flag` (a file) or `$MCRELAY_MONITOR_TOKEN_FILE`, else the
/// token itself in `$MCRELAY_MONITOR_TOKEN`.
pub fn monitor_token(flags: &mut Flags, flag: &'static str) -> Result<Option<String>, UsageError> {
    let file: Option<PathBuf> = flags.opt(flag, "MCRELAY_MONITOR_TOKEN_FILE")?;
    match file {
        Some(p) => Ok(Some(read_token_file(&p)?)),
        None => Ok(std::env::var("MCRELAY_MONITOR_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())),
    }
}

/// A switch's environment value: `on`/`off` (also `1`/`0`, `true`/`false`, `yes`/`no`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnOff(pub bool);

impl FromStr for OnOff {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" | "1" | "true" | "yes" => Ok(OnOff(true)),
            "off" | "0" | "false" | "no" => Ok(OnOff(false)),
            _ => Err("expected on or off".into()),
        }
    }
}

/// `ADDR:PORT`, `localhost:PORT` or `off`.
pub fn parse_control(s: &str) -> Result<Option<SocketAddr>, UsageError> {
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

/// A settings error from the library, named by the flag that sets the field.
pub fn config_error(e: &ConfigError, flag_of: fn(&str) -> Option<&'static str>) -> UsageError {
    match flag_of(e.field) {
        Some(flag) => UsageError(format!("{flag}: {}", e.problem)),
        None => UsageError(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!("30".parse::<Dur>().unwrap().0, Duration::from_secs(30));
        assert_eq!(
            "500ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert!("fast".parse::<Dur>().is_err());
        assert!("5y".parse::<Dur>().is_err());
        assert_eq!("0.1s".parse::<Dur>().unwrap().0, Duration::from_millis(100));
        assert_eq!(".5".parse::<Dur>().unwrap().0, Duration::from_millis(500));
        assert_eq!("1.5m".parse::<Dur>().unwrap().0, Duration::from_secs(90));
        assert_eq!(
            "2.5ms".parse::<Dur>().unwrap().0,
            Duration::from_micros(2500)
        );
        assert_eq!("24h".parse::<Dur>().unwrap().0, Duration::from_secs(86_400));
        assert_eq!(
            "365d".parse::<Dur>().map(|d| d.0),
            Err("unknown unit \"d\" (ms, s, m, h)".into())
        );
        assert!("8761h".parse::<Dur>().is_err());
        assert!("99999999999999999999".parse::<Dur>().is_err());
        for bad in ["", ".", "1.2.3", "-1", "1e3", "s", "1..2"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?}");
        }
        assert_eq!("64K".parse::<Size>().unwrap().0, 65536);
        assert_eq!("8M".parse::<Size>().unwrap().0, 8 << 20);
        assert!("-1".parse::<Size>().is_err());
    }

    #[test]
    fn fingerprints() {
        let h = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&h).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
