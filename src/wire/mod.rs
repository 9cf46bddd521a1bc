//! Wire format: TLV codec, message types, fragmentation constants (docs/protocol.md).
//!
//! Parsing is zero-copy and exact: every message has a fixed shape, a datagram is exactly one
//! TLV, and a sealed plaintext is exactly one of the sequences the protocol lists. Errors name
//! the field that was wrong, and each maps to a drop-counter name (`WireError::reason`).

mod msg;
mod tlv;

pub use msg::{Body, Outer, parse_inner, write_inner};
pub use tlv::{TlvIter, WireError, put_tlv, put_tlv_header};

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
pub const MAX_BODY: usize = 65535;
/// Longest admission name (protocol.md §9).
pub const MAX_NAME: usize = 32;
/// Cookie length: issued_ms u64 + 16-byte MAC.
pub const COOKIE_LEN: usize = 24;
/// Minimum HELLO value length (the datagram is then at least 64 bytes).
pub const HELLO_MIN_VALUE: usize = 60;
/// The protocol versions this build speaks.
pub const VERSION_MIN: u16 = 1;
/// The protocol versions this build speaks.
pub const VERSION_MAX: u16 = 2;
/// Longest REJECT reason text.
pub const MAX_REJECT_REASON: usize = 100;

/// Outer (datagram-level) TLV types.
pub mod outer {
    pub const HELLO: u16 = 0x0001;
    pub const COOKIE: u16 = 0x0002;
    pub const KEY_REQUEST: u16 = 0x0003;
    pub const PUBLIC_KEY: u16 = 0x0004;
    pub const REGISTER: u16 = 0x0005;
    pub const SEALED: u16 = 0x0006;
    pub const FRAGMENT: u16 = 0x0007;
    pub const REJECT: u16 = 0x0008;
}

/// Sealed (inner, inside a Fernet token) TLV types.
pub mod inner {
    pub const SEQ: u16 = 0x0101;
    pub const DATA: u16 = 0x0102;
    pub const SENDER: u16 = 0x0103;
    pub const NAME: u16 = 0x0104;
    pub const KEEPALIVE: u16 = 0x0105;
    pub const KEEPALIVE_ACK: u16 = 0x0106;
    pub const DISCONNECT: u16 = 0x0107;
    pub const WELCOME: u16 = 0x0108;
    pub const JOIN: u16 = 0x0109;
    pub const LEAVE: u16 = 0x010A;
    pub const SHUTDOWN: u16 = 0x010B;
    pub const CLOSED: u16 = 0x010C;
}

/// Why a session ended (LEAVE and CLOSED reason byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Disconnect = 1,
    Timeout = 2,
    Kicked = 3,
    Replaced = 4,
    Shutdown = 5,
}

impl LeaveReason {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Disconnect,
            2 => Self::Timeout,
            3 => Self::Kicked,
            4 => Self::Replaced,
            5 => Self::Shutdown,
            _ => return None,
        })
    }
    /// The word used in client output and logs.
    pub fn word(self) -> &'static str {
        match self {
            Self::Disconnect => "disconnect",
            Self::Timeout => "timeout",
            Self::Kicked => "kicked",
            Self::Replaced => "replaced",
            Self::Shutdown => "shutdown",
        }
    }
}

/// REJECT codes (protocol.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    UnsupportedVersion = 1,
    BadCookie = 2,
    CookieReused = 3,
    BadRegistration = 4,
    RelayFull = 5,
    NotAdmitted = 6,
    Malformed = 7,
}

impl RejectCode {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::UnsupportedVersion,
            2 => Self::BadCookie,
            3 => Self::CookieReused,
            4 => Self::BadRegistration,
            5 => Self::RelayFull,
            6 => Self::NotAdmitted,
            7 => Self::Malformed,
            _ => return None,
        })
    }
}

/// Write the whole of a `FRAGMENT` datagram for chunk `index` of `token` into `out`.
pub fn put_fragment(out: &mut Vec<u8>, msg_id: u32, index: u16, count: u16, chunk: &[u8]) {
    put_tlv_header(out, outer::FRAGMENT, FRAGMENT_HEADER + chunk.len());
    out.extend_from_slice(&msg_id.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(chunk);
}

/// Number of datagrams needed to carry a token of `len` bytes.
pub fn datagrams_for_token(len: usize) -> usize {
    if TLV_HEADER + len <= MAX_DATAGRAM {
        1
    } else {
        len.div_ceil(FRAGMENT_CHUNK)
    }
}
