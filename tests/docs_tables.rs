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
