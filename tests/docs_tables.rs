//! The tables in docs/ that name figures are the code's tables: every gauge, counter and drop
//! reason is listed once, in the code's order, with the code's help text.

use mcrelay::control::CONTROL_COUNTERS;
use mcrelay::core::{GAUGES, Metric};
use mcrelay::{DropReason, Stats};

/// Rows `| `name` | ... |` of the markdown table that follows `heading` (first column only
/// is the name, in backticks; the last column is the text).
fn table_after<'a>(doc: &'a str, heading: &str) -> Vec<(&'a str, Vec<&'a str>)> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and rule
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].trim_matches('`'), cells[1..].to_vec())
        })
        .collect()
}

/// The code's help text as the docs write it: no full stop, and a lower-case first letter
/// unless the first word is an acronym (`COOKIE answers ...`).
fn as_doc(help: &str) -> String {
    let h = help.trim_end_matches('.');
    let first = h.split(' ').next().unwrap_or("");
    if first.len() > 1 && first.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return h.to_string();
    }
    let mut c = h.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[test]
fn control_md_lists_every_figure_with_its_help() {
    let doc = std::fs::read_to_string("docs/control.md").unwrap();
    let rows = table_after(&doc, "### `stats`");
    let figures: Vec<&Metric> = GAUGES.iter().chain(Stats::COUNTERS).collect();
    let names: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
    let want: Vec<&str> = figures
        .iter()
        .map(|m| m.name)
        .chain(["drops_total", "drop.<reason>"])
        .collect();
    assert_eq!(names, want, "docs/control.md `stats` table vs the code");
    for (m, (_, cells)) in figures.iter().zip(&rows) {
        let kind = format!("{:?}", m.kind).to_lowercase();
        assert_eq!(cells[0], kind, "{}", m.name);
        assert_eq!(cells[1], as_doc(m.help), "{}", m.name);
    }
}

#[test]
fn protocol_md_lists_every_drop_reason_with_its_help() {
    let doc = std::fs::read_to_string("docs/protocol.md").unwrap();
    let rows = table_after(&doc, "## 11. Which counter each drop lands in");
    let names: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
    let want: Vec<&str> = DropReason::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(names, want, "docs/protocol.md §11 vs the code");
    for (d, (_, cells)) in DropReason::ALL.iter().zip(&rows) {
        assert_eq!(cells[0], d.help(), "{}", d.name());
    }
    // The second table names only reasons that exist.
    let cases = &doc[doc.find("Some cases that are easy to guess wrong").unwrap()..];
    let cases = table_after(cases, "Some cases");
    for (_, cells) in cases {
        let reason = cells[0].trim_matches('`');
        assert!(want.contains(&reason), "protocol.md §11 names {reason:?}");
    }
}

#[test]
fn control_md_lists_every_drop_reason_with_its_help() {
    let doc = std::fs::read_to_string("docs/control.md").unwrap();
    let rows = table_after(&doc, "The drop reasons:");
    let names: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
    let want: Vec<&str> = DropReason::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(names, want, "docs/control.md drop reasons vs the code");
    for (d, (_, cells)) in DropReason::ALL.iter().zip(&rows) {
        assert_eq!(cells[0], d.help(), "{}", d.name());
    }
}

#[test]
fn control_md_lists_every_control_port_figure_with_its_help() {
    let doc = std::fs::read_to_string("docs/control.md").unwrap();
    let rows = table_after(&doc, "The control port's own figures");
    let names: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
    let want: Vec<&str> = CONTROL_COUNTERS.iter().map(|m| m.name).collect();
    assert_eq!(
        names, want,
        "docs/control.md control-port figures vs the code"
    );
    for (m, (_, cells)) in CONTROL_COUNTERS.iter().zip(&rows) {
        let kind = format!("{:?}", m.kind).to_lowercase();
        assert_eq!(cells[0], kind, "{}", m.name);
        assert_eq!(cells[1], as_doc(m.help), "{}", m.name);
    }
}

/// `(default, env)` of each flag of `mcrelay serve --help`: the `(DEFAULT; ENV...)` at the end
/// of its line.
fn serve_help_defaults() -> Vec<(String, String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcrelay"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let flag = l.strip_prefix("--")?.split(' ').next()?;
            // A flag whose help wraps has its `(DEFAULT; ENV)` on a later line: skipped.
            let (open, close) = (l.rfind('(')?, l.rfind(')')?);
            let paren = l.get(open + 1..close)?;
            let (default, env) = paren.split_once("; ")?;
            let env = env.split([' ', ',', '=']).next()?;
            Some((format!("--{flag}"), default.to_string(), env.to_string()))
        })
        .collect()
}

/// Every row of a flag table (`| `--flag ARG` | `ENV` ... | default | ... |`) names the
/// variable and the default that `mcrelay serve --help` gives for that flag.
fn check_flag_table(doc_path: &str, heading: &str, at_least: usize) {
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let help = serve_help_defaults();
    // Cells split at `|` but not at an escaped `\|` (as in `ADDR:PORT\|off`).
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    let rows: Vec<(String, Vec<String>)> = doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let l = l.replace("\\|", "\u{1}");
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('\u{1}', "|"))
                .collect();
            (cells[0].trim_matches('`').to_string(), cells[1..].to_vec())
        })
        .collect();
    assert!(rows.len() >= at_least, "{doc_path}: {rows:?}");
    for (flag_cell, cells) in rows {
        let flag = flag_cell.split(' ').next().unwrap();
        let (_, default, env) = help
            .iter()
            .find(|(f, _, _)| f == flag)
            .unwrap_or_else(|| panic!("{doc_path}: {flag} is not a flag of serve --help"));
        let doc_env = cells[0].trim_matches('`').split('`').next().unwrap();
        let doc_env = doc_env.split('=').next().unwrap();
        assert_eq!(doc_env, env, "{doc_path}: the variable of {flag}");
        let doc_default = cells[1].trim_matches('`');
        assert!(
            default.starts_with(doc_default),
            "{doc_path}: {flag} defaults to {default:?}, the doc says {doc_default:?}"
        );
    }
}

#[test]
fn operations_md_flag_table_matches_serve_help() {
    check_flag_table("docs/operations.md", "## Flags and environment", 15);
}

#[test]
fn monitoring_md_flag_table_matches_serve_help() {
    check_flag_table("docs/monitoring.md", "## Turning it on", 4);
}

#[test]
fn monitoring_md_lists_the_histograms_and_their_buckets() {
    use mcrelay::core::histogram::{HISTOGRAMS, write_value};
    let doc = std::fs::read_to_string("docs/monitoring.md").unwrap();
    let rows = table_after(&doc, "## Histograms");
    let names: Vec<String> = HISTOGRAMS
        .iter()
        .map(|h| format!("mcrelay_{}", h.name))
        .collect();
    let doc_names: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
    assert_eq!(doc_names, names);
    for (h, (_, cells)) in HISTOGRAMS.iter().zip(&rows) {
        let bounds: Vec<String> = h
            .bounds
            .iter()
            .map(|&b| {
                let mut s = String::new();
                write_value(&mut s, h.unit, b);
                s
            })
            .collect();
        assert_eq!(cells[0], bounds.join(", "), "{}", h.name);
    }
}

#[test]
fn monitoring_md_limits_are_the_code_limits() {
    use mcrelay::MonitorSettings;
    use mcrelay::driver::monitor::{CLIENTS_LIMIT, REQUESTS_PER_TURN};
    use mcrelay::monitor::{
        ACCEPTS_PER_EVENT, LINGER, MonitorConfig, READ_BUDGET, REQUESTS_PER_ACTIVATION, SEND_BUFFER,
    };
    let doc = std::fs::read_to_string("docs/monitoring.md").unwrap();
    let rows = table_after(&doc, "## Limits and deadlines");
    let limit = |what: &str| {
        rows.iter()
            .find(|(w, _)| w.starts_with(what))
            .map(|(_, c)| c[0])
            .unwrap_or_else(|| panic!("no row {what:?}"))
    };
    let m = MonitorConfig::default();
    let s = MonitorSettings::default();
    let kib = |b: usize| format!("{} KiB", b / 1024);
    assert_eq!(s.max_conns, m.max_conns);
    let want = [
        (
            "Connections at once",
            format!("{} (`--max-monitor`)", s.max_conns),
        ),
        (
            "Request head",
            format!(
                "{}, {} fields",
                kib(m.limits.max_head),
                m.limits.max_headers
            ),
        ),
        ("Request target", format!("{} bytes", m.limits.max_target)),
        (
            "Time to send a complete request head",
            format!("{} s ", m.request_timeout.as_secs()),
        ),
        (
            "Idle time between requests",
            format!("{} s", m.idle_timeout.as_secs()),
        ),
        (
            "Time a client may leave",
            format!("{} s ", m.idle_timeout.as_secs()),
        ),
        ("Output queued per connection", kib(m.output_cap)),
        ("Input buffered per connection", kib(m.limits.max_head)),
        ("Kernel send buffer", kib(SEND_BUFFER)),
        (
            "Work per event",
            format!(
                "{} read and {REQUESTS_PER_ACTIVATION} requests per connection, \
                 {ACCEPTS_PER_EVENT} accepts",
                kib(READ_BUDGET)
            ),
        ),
        ("Requests the relay answers", REQUESTS_PER_TURN.to_string()),
        (
            "Clients in one `/clients` response",
            format!("{CLIENTS_LIMIT} (`?limit=`)"),
        ),
        (
            "Closing after an error",
            format!("up to {} s", LINGER.as_secs()),
        ),
    ];
    for (what, value) in want {
        assert!(
            limit(what).contains(&value),
            "docs/monitoring.md {what:?}: {:?} lacks {value:?}",
            limit(what)
        );
    }
}

/// `384K` -> `384 KiB`, `8M` -> `8 MiB`, `5s` -> `5 s`, `5m` -> `5 min`, `25` -> `25`.
fn as_doc_default(help_default: &str) -> String {
    let d = help_default;
    for (suffix, unit) in [
        ("ms", " ms"),
        ("s", " s"),
        ("m", " min"),
        ("K", " KiB"),
        ("M", " MiB"),
    ] {
        if let Some(n) = d.strip_suffix(suffix)
            && n.chars().all(|c| c.is_ascii_digit())
        {
            return format!("{n}{unit}");
        }
    }
    d.to_string()
}

#[test]
fn security_md_caps_table_quotes_the_flags_defaults() {
    let doc = std::fs::read_to_string("docs/security.md").unwrap();
    let rows = table_after(&doc, "## 5. Caps and their defaults");
    let help = serve_help_defaults();
    let mut checked = 0;
    for (what, cells) in &rows {
        let (default_cell, flag_cell) = (cells[0], cells[1]);
        let flags: Vec<&str> = flag_cell
            .split(" / ")
            .filter_map(|f| f.trim().strip_prefix('`')?.strip_suffix('`'))
            .filter(|f| f.starts_with("--"))
            .collect();
        if flags.is_empty() {
            continue; // "(none: ...)": not a flag
        }
        let defaults: Vec<&str> = default_cell.split(" / ").collect();
        assert_eq!(defaults.len(), flags.len(), "{what}: one default per flag");
        for (flag, doc_default) in flags.iter().zip(defaults) {
            let (_, help_default, _) = help
                .iter()
                .find(|(f, _, _)| f == flag)
                .unwrap_or_else(|| panic!("security.md: {flag} is not a flag of serve --help"));
            let want = as_doc_default(help_default);
            let doc_default = doc_default.replace(',', "");
            assert!(
                doc_default.starts_with(&want),
                "security.md {what:?}: {flag} defaults to {help_default} ({want}), the doc says {doc_default:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} defaults checked");
}
