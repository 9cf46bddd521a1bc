//! The relay core: no sockets, no clock reads.
pub mod ratelimit;
pub mod reassembly;
pub mod replay;
pub mod timer;
