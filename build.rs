//! Link options that only make the release `mcrelay` binary smaller (docs/performance.md,
//! "Binary size under 2 MiB" says what each one saves and what it costs).
//!
//! They live here and not in .cargo/config.toml because Cargo has no per-profile rustflags on
//! stable, and they must reach no debug build, no test harness (which unwinds) and no crate
//! that depends on mcrelay as a library: `rustc-link-arg-bins` reaches this package's own
//! binaries only.
//!
//! 1. `-z pack-relative-relocs` (DT_RELR): the static-pie binary's relative relocations as a
//!    bitmap instead of 24 bytes each. A static-pie binary applies them itself at start-up
//!    with the libc.a it was linked with, which knows DT_RELR from glibc 2.36 on.
//! 2. `--icf=all`: lld folds functions whose machine code is identical into one. Rust does
//!    not promise distinct functions distinct addresses, and nothing here compares them.
//! 3. No unwind tables (`.eh_frame`, `.eh_frame_hdr`, `.gcc_except_table`): the release
//!    profile aborts on panic and nothing calls `pthread_exit` or `pthread_cancel` (glibc's
//!    only unwinding), so nothing unwinds; the tables would only feed a `RUST_BACKTRACE`
//!    walk, which in a stripped binary names no frame anyway.
//!
//! Each option is given only if a small program built by this same rustc, with the same
//! flags and linker, links with it *and runs*: where lld, a linker-script feature or
//! glibc >= 2.36 is missing, the option is left out without a word and the binary is as it
//! was. Nothing happens outside release builds for x86_64-unknown-linux-gnu on that host
//! (the probe must run), and a build with debug info (`CARGO_PROFILE_RELEASE_DEBUG=...`, as
//! the profiling recipes use) keeps its unwind tables and unfolded functions, so that perf,
//! valgrind and gdb can walk and name its stack.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let target = var("TARGET");
    if var("PROFILE") != "release" || target != "x86_64-unknown-linux-gnu" || target != var("HOST")
    {
        return;
    }
    let out = PathBuf::from(var("OUT_DIR"));
    let probe = Probe::new(&out, &target);
    if !probe.works(&[]) {
        return; // the probe itself cannot be built or run here: add nothing
    }

    // Each option is one group of link arguments.
    let mut options: Vec<Vec<String>> = Vec::new();
    // Only a static binary relocates itself; a dynamic one would need DT_RELR support from
    // the ld.so of every host it runs on.
    if var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static")
    {
        options.push(vec!["-Wl,-z,pack-relative-relocs".into()]);
    }
    if var("DEBUG") != "true" {
        options.push(vec!["-Wl,--icf=all".into()]);
        let script = out.join("no-unwind-tables.ld");
        let text = "SECTIONS { /DISCARD/ : { *(.eh_frame) *(.gcc_except_table .gcc_except_table.*) } }\n\
                    INSERT AFTER .text;\n";
        if std::fs::write(&script, text).is_ok() {
            options.push(vec![
                format!("-Wl,-T,{}", script.display()),
                "-Wl,--no-eh-frame-hdr".into(),
            ]);
        }
    }
    // Kept only if the program still links and runs with it and all the options kept before.
    let mut kept: Vec<String> = Vec::new();
    for option in options {
        let trial = [kept.as_slice(), option.as_slice()].concat();
        if probe.works(&trial) {
            kept = trial;
        }
    }
    for a in kept {
        println!("cargo::rustc-link-arg-bins={a}");
    }
}

/// Builds and runs a small program with the flags of this build (CARGO_ENCODED_RUSTFLAGS,
/// the configured linker) plus the link arguments under test.
struct Probe {
    dir: PathBuf,
    src: PathBuf,
    target: String,
}

impl Probe {
    fn new(out: &Path, target: &str) -> Probe {
        let dir = out.join("link-probe");
        let _ = std::fs::create_dir_all(&dir);
        let src = dir.join("probe.rs");
        // Threads, a HashMap, formatting and an io::Error: enough of std to need relocations
        // in data, function pointers and libc's start-up code.
        let text = "fn main() {\n\
            let t = std::thread::spawn(|| std::env::args().count());\n\
            let mut m = std::collections::HashMap::new();\n\
            m.insert(\"k\", t.join().unwrap());\n\
            let e = std::fs::read(\"/nonexistent/mcrelay-probe\").unwrap_err();\n\
            println!(\"probe {} {}\", m[\"k\"], e.kind() == std::io::ErrorKind::NotFound);\n\
            }\n";
        let _ = std::fs::write(&src, text);
        Probe {
            dir,
            src,
            target: target.to_string(),
        }
    }

    fn works(&self, link_args: &[String]) -> bool {
        let exe = self.dir.join("probe");
        let _ = std::fs::remove_file(&exe);
        let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let mut cmd = Command::new(rustc);
        cmd.arg("--edition=2024")
            .args(["--target", &self.target])
            .args(["-C", "opt-level=1", "-C", "panic=abort"])
            .arg("-o")
            .arg(&exe)
            .arg(&self.src);
        let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
        if let Some(linker) = env::var_os("RUSTC_LINKER") {
            cmd.arg("-C")
                .arg(format!("linker={}", linker.to_string_lossy()));
        }
        for a in link_args {
            cmd.arg("-C").arg(format!("link-arg={a}"));
        }
        cmd.env_remove("CARGO_ENCODED_RUSTFLAGS");
        let built = cmd.output().is_ok_and(|o| o.status.success());
        built
            && Command::new(&exe)
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout == b"probe 1 true\n")
    }
}
