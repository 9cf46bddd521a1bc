//! mcrelay: a secure, manageable UDP multicast relay.
//!
//! `unsafe` is denied everywhere but two modules, each of which allows it for one reason:
//! `driver::batch` (`recvmmsg`/`sendmmsg`) and `crypto::multi` (AES-NI and SHA-NI
//! intrinsics); every `unsafe` block there carries a `SAFETY:` comment.
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod control;
pub mod core;
pub mod crypto;
pub mod driver;
pub mod nats;
pub mod wire;
