//! `mcrelay keygen`: create a relay key file and print its fingerprint.

use std::path::PathBuf;
use std::process::ExitCode;

use mcrelay::crypto::key::{self, ServerKey};

use crate::flags::{Flags, UsageError};
use crate::{Failure, rt};

pub const HELP: &str = "\
mcrelay keygen — create a relay key

FLAGS (default; environment variable):
    --key-file PATH               where to write it; never overwritten (required; MCRELAY_KEY_FILE)
    --key-bits N                  2048..4096 (2048; MCRELAY_KEY_BITS)
    -h, --help                    this text
";

pub fn run(mut f: Flags) -> Result<ExitCode, Failure> {
    let path: Option<PathBuf> = f.opt("--key-file", "MCRELAY_KEY_FILE")?;
    let bits: usize = f.get("--key-bits", "MCRELAY_KEY_BITS", 2048)?;
    f.finish()?;
    let Some(path) = path else {
        return Err(UsageError("--key-file PATH is required".into()).into());
    };
    key::check_bits(bits).map_err(|e| UsageError(format!("--key-bits: {e}")))?;
    let key = ServerKey::generate(bits).map_err(rt(1))?;
    key.save_new(&path).map_err(rt(1))?;
    println!("{}", key.fingerprint_hex());
    Ok(ExitCode::SUCCESS)
}
