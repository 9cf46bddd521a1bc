//! Cryptography: the in-house Fernet codec and the CSPRNG behind it.
//!
//! * [`base64`]: strict, allocation-free url-safe base64 (RFC 4648 §5).
//! * [`fernet`]: Fernet (spec version 0x80) with caller-chosen IVs and
//!   timestamps, precomputed key schedules and reusable buffers, for
//!   re-encrypting each message once per recipient.
//! * [`rng`]: an AES-256-CTR fast-key-erasure CSPRNG seeded (and
//!   periodically reseeded) from the OS, for IVs and keys.
pub mod base64;
pub mod fernet;
pub mod rng;
