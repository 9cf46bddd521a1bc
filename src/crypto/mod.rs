//! Cryptography: the in-house Fernet codec, the CSPRNG for IVs and keys, the relay's RSA key,
//! and address-validation cookies. Base64 and the multi-buffer kernels are internal.
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod base64;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)]
pub(crate) mod base64;
pub mod cookie;
pub mod fernet;
pub mod key;
// Base64 and the multi-buffer kernels are internal; the `internals` feature exposes them to
// the crate's own benchmarks (examples/bench.rs, examples/multi_micro.rs). Not API.
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod multi;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)]
pub(crate) mod multi;
pub mod rng;
