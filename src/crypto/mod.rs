//! Cryptography: in-house Fernet codec and url-safe base64, the CSPRNG for IVs and keys, the
//! relay's RSA key, and address-validation cookies.
pub mod base64;
pub mod cookie;
pub mod fernet;
pub mod key;
pub mod multi;
pub mod rng;
