//! Wire format: TLV codec, message types, fragmentation constants (docs/protocol.md).

/// Largest datagram anyone sends (protocol.md §1).
pub const MAX_DATAGRAM: usize = 1200;
/// TLV header: type u16 + length u16.
pub const TLV_HEADER: usize = 4;
/// FRAGMENT header inside the TLV value: msg_id u32, index u16, count u16.
pub const FRAGMENT_HEADER: usize = 8;
/// Bytes of token per fragment (all but the last fragment carry exactly this many).
pub const FRAGMENT_CHUNK: usize = MAX_DATAGRAM - TLV_HEADER - FRAGMENT_HEADER;
/// Most fragments one message may have.
pub const MAX_FRAGMENTS: usize = 74;
/// Longest token that can be reassembled.
pub const MAX_TOKEN: usize = MAX_FRAGMENTS * FRAGMENT_CHUNK;
/// Largest message body (DATA) a client may send.
pub const MAX_BODY: usize = 65536;
