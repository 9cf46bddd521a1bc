//! Protocol machinery that the relay and the client library share: the sealed channel of one
//! session (key, sequence numbers, replay window), fragment reassembly and the replay window
//! itself. Nothing here knows whether it runs in a relay or a client.

pub mod channel;
pub mod fragment;
pub mod group;
pub mod reassembly;
pub mod replay;
