//! Control-port line parser: `control::parse` on arbitrary (lossily decoded) text.
//!
//! No panic; errors are one line (the reply protocol is line based); an accepted command
//! re-rendered in canonical form parses to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcrelay::control::{Command, parse};

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    match parse(&line) {
        Ok(cmd) => {
            let _ = cmd.allowed_unauthenticated();
            let text = cmd.to_string();
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
