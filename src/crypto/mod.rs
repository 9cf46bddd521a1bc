//! Cryptography: in-house Fernet codec, CSPRNG, the relay's RSA key, cookies.
pub mod base64;
pub mod cookie;
pub mod fernet;
pub mod key;
pub mod rng;
