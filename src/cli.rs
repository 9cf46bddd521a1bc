//! Command-line helpers shared by the binary: flag parsing with environment fallbacks,
//! durations and sizes with units, the logger that feeds the control port.

use std::ffi::OsString;
use std::io::Write;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::driver::logtap::LogTap;

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
        let raw: Option<String> = self
            .args
            .opt_value_from_str(name)
            .map_err(|e| UsageError(format!("{name}: {e}")))?;
        let (raw, src) = match raw {
            Some(r) => (Some(r), name.to_string()),
            None => (
                std::env::var(env).ok().filter(|v| !v.is_empty()),
                format!("${env}"),
            ),
        };
        match raw {
            None => Ok(None),
            Some(r) => r
                .parse::<T>()
                .map(Some)
                .map_err(|e| UsageError(format!("{src}: invalid value {r:?}: {e}"))),
        }
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

/// UTC timestamp `2026-11-26T12:00:00.123Z` without a date library.
pub fn utc_now() -> String {
    utc(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default())
}

/// `d` after the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc(d: Duration) -> String {
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The binary's logger: simple_logger on stderr at the chosen level, each line prefixed with
/// a UTC timestamp (written here, not by simple_logger's `timestamps` feature, which would
/// link the `time` crate and its proc-macro for the same 24 characters), plus every line up
/// to the global max level into the [`LogTap`] for operators.
pub struct Logger {
    stderr: simple_logger::SimpleLogger,
    stderr_level: log::LevelFilter,
    tap: Option<LogTap>,
    guard: Option<fn()>,
}

impl Logger {
    /// Install as the global logger.
    pub fn install(
        level: log::LevelFilter,
        tap: Option<LogTap>,
    ) -> Result<(), log::SetLoggerError> {
        Self::install_with_guard(level, tap, None)
    }

    /// As `install`, with `guard` called before each stderr line. simple_logger panics when
    /// stderr cannot be written (reader gone, fd closed); the binary's guard repairs stderr
    /// first (see `main.rs`), because a relay must not die when its log reader does.
    pub fn install_with_guard(
        level: log::LevelFilter,
        tap: Option<LogTap>,
        guard: Option<fn()>,
    ) -> Result<(), log::SetLoggerError> {
        let stderr = simple_logger::SimpleLogger::new().with_level(level);
        log::set_boxed_logger(Box::new(Logger {
            stderr,
            stderr_level: level,
            tap,
            guard,
        }))?;
        log::set_max_level(level);
        Ok(())
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() <= self.stderr_level {
            if let Some(guard) = self.guard {
                guard();
            }
            // One lock across prefix and line (stderr's lock is reentrant), so lines from
            // several threads never interleave: `<timestamp> <LEVEL> [<target>] <message>`.
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{} ", utc_now());
            self.stderr.log(r);
            drop(err);
        }
        if let Some(tap) = &self.tap {
            tap.push(
                r.level(),
                format!("{} {:<5} {}", utc_now(), r.level(), r.args()),
            );
        }
    }
    fn flush(&self) {
        let _ = std::io::stderr().flush();
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

    #[test]
    fn utc_format_shape() {
        let t = utc_now();
        assert_eq!(t.len(), 24);
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn utc_known_instants() {
        let at = |s, ms| utc(Duration::from_secs(s) + Duration::from_millis(ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @951782400` = Tue Feb 29 00:00:00 UTC 2000 (a 400-year leap day).
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(951_782_399, 999), "2000-02-28T23:59:59.999Z");
        // 2100 is not a leap year: Feb 28 is followed by Mar 1.
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(1_795_694_400, 123), "2026-11-26T12:00:00.123Z");
    }
}
