//! mcrelay: a secure, manageable UDP multicast relay.
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod control;
pub mod core;
pub mod crypto;
pub mod driver;
pub mod wire;
