//! mcrelay: a secure, manageable UDP multicast relay.
#![forbid(unsafe_code)]

pub mod control;
pub mod core;
pub mod cli;
pub mod client;
pub mod crypto;
pub mod wire;
pub mod driver;
