//! `mcrelay keygen`: create a relay key file and print its fingerprint, or a federation's
//! cluster key.

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
    --cluster-key-file PATH       instead: write a new federation cluster key (a Fernet key,
                                  mode 0600, never overwritten) for `serve --cluster-key-file`
    -h, --help                    this text
";

pub fn run(mut f: Flags) -> Result<ExitCode, Failure> {
    let cluster: Option<PathBuf> = f.opt("--cluster-key-file", "MCRELAY_CLUSTER_KEY_FILE")?;
    if let Some(path) = cluster {
        f.finish()?;
        return cluster_key(&path);
    }
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

/// A fresh cluster key (32 random bytes from the OS, url-safe base64, 44 characters and a
/// newline) in a new file of mode 0600.
fn cluster_key(path: &std::path::Path) -> Result<ExitCode, Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut rng = mcrelay::Rng::from_os().map_err(|e| Failure::Runtime(1, e.to_string()))?;
    let key = mcrelay::crypto::fernet::FernetKey::generate(&mut rng);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Failure::Runtime(1, format!("{}: {e}", path.display())))?;
    let mut text = key.to_base64().to_vec();
    text.push(b'\n');
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(|e| Failure::Runtime(1, format!("{}: {e}", path.display())))?;
    println!("cluster key written to {} (mode 0600)", path.display());
    Ok(ExitCode::SUCCESS)
}
