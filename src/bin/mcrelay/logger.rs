//! The binary's logger: stderr with UTC timestamps, and a copy of every line for operators.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcrelay::driver::logtap::LogTap;

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
    use std::time::Duration;

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
