//! The relay core: no sockets, no clock reads, RNG injected (see DESIGN in docs/architecture.md).
pub mod ratelimit;
pub mod reassembly;
pub mod relay;
pub mod replay;
pub mod stats;
pub mod timer;

pub use relay::{ClientInfo, Config, KickTarget, RelayCore};
pub use stats::{Drop, Stats};
