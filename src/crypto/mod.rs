//! Cryptography: in-house Fernet codec, CSPRNG.
pub mod fernet;
pub mod rng;
