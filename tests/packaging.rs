//! Deployment files under dist/: they cannot drift from the binary.
//!
//! - dist/mcrelay.env lists every variable of `mcrelay serve --help`, with its default;
//! - dist/mcrelay.service passes `systemd-analyze verify` (with nothing on stderr) and keeps
//!   its hardening (`systemd-analyze security --offline` exposure);
//! - dist/mcrelay-rules.yml passes `promtool check rules` and its unit tests, and names only
//!   metrics the relay exports; dist/prometheus.yml passes `promtool check config`;
//! - the Debian package (dist/test-deb.sh) builds, installs, runs and purges cleanly: in CI
//!   (`CI` set, as root) or with `MCRELAY_TEST_DEB=1` (`MCRELAY_TEST_DEB=0` skips it even in
//!   CI); skipped elsewhere, because it installs a package on the machine.
//!
//! A tool that is not installed skips its test with a note on stderr, except in CI (as
//! root), where it is installed with apt-get first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use mcrelay::control::format_metrics;
use mcrelay::core::{Config, RelayCore};
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn in_ci_as_root() -> bool {
    std::env::var_os("CI").is_some()
        && Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Is `tool` installed? In CI (as root) a missing tool is installed from `package` first, so
/// that a green CI does not hide a skipped check; elsewhere its test is skipped with a note.
fn have(tool: &str, package: &str) -> bool {
    let found = || Command::new(tool).arg("--version").output().is_ok();
    if found() {
        return true;
    }
    if in_ci_as_root() {
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", package])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !install() {
            let _ = Command::new("apt-get").args(["update", "-q"]).output();
            install();
        }
        assert!(found(), "{tool}: could not install {package}");
        return true;
    }
    eprintln!("{tool} is not installed: skipped (apt-get install {package})");
    false
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `(variable, default)` for each `(DEFAULT; MCRELAY_X...)` of `mcrelay serve --help`, and
/// the variables named anywhere else in it ("or give the token itself in MCRELAY_...").
fn serve_help_variables() -> Vec<(String, Option<String>)> {
    let out = run(Command::new(env!("CARGO_BIN_EXE_mcrelay")).args(["serve", "--help"]));
    assert!(out.status.success());
    let help = text(&out.stdout);
    let mut vars = Vec::new();
    for line in help.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("MCRELAY_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // The default is what the parenthesis holds before `; NAME`.
            let before = &rest[..i];
            let default = before
                .strip_suffix("; ")
                .and_then(|b| b.rfind('(').map(|o| b[o + 1..].to_string()));
            if !vars.iter().any(|(n, _)| *n == name) {
                vars.push((name.clone(), default));
            }
            rest = &rest[i + name.len()..];
        }
    }
    assert!(
        vars.len() >= 20,
        "too few variables found in serve --help: {vars:?}"
    );
    vars
}

#[test]
fn env_file_lists_every_serve_variable_with_its_default() {
    let env = read("dist/mcrelay.env");
    // Every setting is commented out: the file documents, the defaults apply.
    let mut in_file = BTreeSet::new();
    for (i, line) in env.lines().enumerate() {
        assert!(
            line.is_empty() || line.starts_with('#'),
            "dist/mcrelay.env line {}: not commented out: {line:?}",
            i + 1
        );
        if let Some((name, value)) = line.strip_prefix('#').and_then(|l| l.split_once('='))
            && name.starts_with("MCRELAY_")
            && !name.contains(' ')
        {
            in_file.insert((name.to_string(), value.to_string()));
        }
    }
    let vars = serve_help_variables();
    for (name, default) in &vars {
        let Some((_, value)) = in_file.iter().find(|(n, _)| n == name) else {
            panic!("dist/mcrelay.env lacks #{name}=... (listed by `mcrelay serve --help`)");
        };
        // A literal default must be the one shown; "none", "anyone", "ephemeral key" and
        // defaults described in words ("--group address, --port + 1") are shown with an
        // example value instead.
        if let Some(d) = default
            && !["none", "anyone", "ephemeral key"].contains(&d.as_str())
            && !d.contains(' ')
        {
            assert_eq!(
                value, d,
                "dist/mcrelay.env: #{name}= should show the default {d}"
            );
        }
        // Each variable has a description: the comment line right above it.
        let pos = env.find(&format!("\n#{name}=")).unwrap();
        let above = env[..pos].lines().last().unwrap_or("");
        assert!(
            above.starts_with("# ") && above.len() > 10,
            "dist/mcrelay.env: #{name}= has no description above it"
        );
    }
    // And nothing stale: every variable of the file is one the binary reads.
    for (name, _) in &in_file {
        assert!(
            vars.iter().any(|(n, _)| n == name),
            "dist/mcrelay.env: {name} is not in `mcrelay serve --help` (stale?)"
        );
    }
}

#[test]
fn unit_keeps_its_contract() {
    let unit = read("dist/mcrelay.service");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/mcrelay serve",
        "Restart=on-failure",
        "User=mcrelay",
        "EnvironmentFile=-/etc/default/mcrelay",
        "StateDirectory=mcrelay",
        "Environment=MCRELAY_KEY_FILE=/var/lib/mcrelay/relay_key.pem",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "dist/mcrelay.service lacks {line:?}"
        );
    }
}

/// The unit with ExecStart pointing at this build's binary (verify needs it to exist), in a
/// temporary directory, under its own name.
fn unit_copy(dir: &Path) -> PathBuf {
    let unit = read("dist/mcrelay.service").replace(
        "ExecStart=/usr/bin/mcrelay ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_mcrelay")),
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("mcrelay.service");
    std::fs::write(&path, unit).unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mcrelay-{name}-{}", std::process::id()))
}

#[test]
fn unit_passes_systemd_analyze_verify_and_stays_hardened() {
    if !have("systemd-analyze", "systemd") {
        return;
    }
    let dir = temp_dir("unit");
    let path = unit_copy(&dir);
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    // verify exits 0 on unknown keys and unparsable values: they are only printed.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path));
    let report = text(&out.stdout);
    let level: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for mcrelay.service: "))
        .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {report}{}", text(&out.stderr)));
    assert!(
        level <= 1.5,
        "hardening regressed: exposure {level}\n{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The metric names the relay exports, and the exposition text (from the formatter of
/// `ctl metrics`, which the monitor's /metrics serves).
fn exported_metrics() -> (BTreeSet<String>, String) {
    let pem = read("fuzz/relay_key.pem");
    let key = ServerKey::from_pkcs8_pem(&pem).unwrap();
    let now = Instant::now();
    let core = RelayCore::new(Config::default(), key, Rng::from_seed([7; 32]), now, 0)
        .expect("default config");
    let mut out = String::new();
    format_metrics(&mut out, &core, now);
    // Sample names, and the family names of `# TYPE` (a histogram's family has none of its
    // own samples: `_bucket`, `_sum`, `_count`).
    let names = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .chain(
            out.lines()
                .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
                .map(str::to_string),
        )
        .collect();
    (names, out)
}

#[test]
fn alert_rules_pass_promtool_and_name_real_metrics() {
    let rules = read("dist/mcrelay-rules.yml");
    let (exported, exposition) = exported_metrics();
    assert!(exported.contains("mcrelay_drops_total") && exported.contains("mcrelay_clients"));
    let mut used = BTreeSet::new();
    for (i, _) in rules.match_indices("mcrelay_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let preceded = rules[..i].chars().last();
        if !preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            used.insert(name);
        }
    }
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "rules name metrics the relay does not export: {unknown:?}"
    );
    for reason in rules.match_indices("reason=\"").map(|(i, _)| {
        rules[i + 8..]
            .split('"')
            .next()
            .unwrap_or_default()
            .to_string()
    }) {
        let series = format!("mcrelay_drops_total{{reason=\"{reason}\"}}");
        assert!(
            exposition.contains(&series),
            "no drop reason {reason:?} in the metrics"
        );
    }
    if !have("promtool", "prometheus") {
        return;
    }
    let dist = repo().join("dist");
    for args in [
        &["check", "rules", "mcrelay-rules.yml"][..],
        &["test", "rules", "mcrelay-rules.test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let out = run(Command::new("promtool").args(args).current_dir(&dist));
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// The package: built once, then installed on this machine (dist/test-deb.sh) and booted
/// under a real systemd in a container (dist/test-systemd.sh).
#[test]
fn deb_package_installs_runs_under_systemd_and_purges_cleanly() {
    let wanted = match std::env::var("MCRELAY_TEST_DEB") {
        Ok(v) => v != "0",
        Err(_) => std::env::var_os("CI").is_some(),
    };
    let root = text(&run(Command::new("id").arg("-u")).stdout).trim() == "0";
    if !wanted || !root {
        eprintln!(
            "skipped: installs a package and boots a container; runs as root in CI (CI set) or \
             with MCRELAY_TEST_DEB=1 (or run dist/test-deb.sh, dist/test-systemd.sh)"
        );
        return;
    }
    if !have("dpkg-deb", "dpkg") || !have("systemd-analyze", "systemd") {
        return;
    }
    let script = |args: &[&str]| {
        let t = Instant::now();
        let out = run(Command::new("bash").args(args).current_dir(repo()));
        assert!(
            out.status.success(),
            "{} failed:\n{}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        eprintln!(
            "{}: {:.1} s\n{}",
            args[0],
            t.elapsed().as_secs_f64(),
            text(&out.stdout)
        );
        text(&out.stdout)
    };
    let dir = temp_dir("deb");
    let built = script(&["dist/build-deb.sh", dir.to_str().unwrap()]);
    let deb = built.lines().last().unwrap().trim().to_string();
    script(&["dist/test-deb.sh", &deb]);
    script(&["dist/test-systemd.sh", &deb]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// docs/operations.md describes the shipped unit: every directive it quotes in its systemd
/// section (`Key=value` in backticks) is a line of dist/mcrelay.service, but for the ones it
/// suggests adding with `systemctl edit`.
#[test]
fn operations_md_quotes_the_shipped_unit() {
    let doc = read("docs/operations.md");
    let unit = read("dist/mcrelay.service");
    let start = doc.find("## Under systemd").expect("a systemd section");
    let end = doc[start + 3..]
        .find("\n## ")
        .map_or(doc.len(), |e| start + 3 + e);
    let section = &doc[start..end];
    let mut quoted = 0;
    for (i, chunk) in section.split('`').enumerate() {
        let Some((key, _)) = chunk.split_once('=') else {
            continue;
        };
        let is_directive = i % 2 == 1
            && key.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && key.chars().all(|c| c.is_ascii_alphanumeric())
            && key.chars().any(|c| c.is_ascii_lowercase());
        if !is_directive || ["IPAddressDeny", "IPAddressAllow"].contains(&key) {
            continue;
        }
        assert!(
            unit.lines().any(|l| l == chunk),
            "docs/operations.md quotes `{chunk}`, which dist/mcrelay.service does not have"
        );
        quoted += 1;
    }
    assert!(quoted >= 10, "only {quoted} directives quoted");
    assert!(
        section.contains("dist/mcrelay.service") && section.contains("bash dist/build-deb.sh"),
        "the section points at the shipped unit and the package build"
    );
}
