//! Wire format: TLV codec, message types, fragmentation constants (docs/protocol.md).
//!
//! Parsing is zero-copy and exact: every message has a fixed shape, a datagram is exactly one
//! TLV, and a sealed plaintext is exactly one of the sequences the protocol lists. Errors name
//! the field that was wrong, and each maps to one drop reason (`core::DropReason::from_wire`).

mod datagram;
mod reader;
mod sealed;
mod tlv;

pub use self::datagram::{Outer, put_group_header};
pub use self::sealed::{
    Body, Dist, Member, Sealed, member_parts, members, parse_inner, parse_reassembled,
    parse_sealed, put_member, write_body, write_inner, write_sealed,
};
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
pub const VERSION_MAX: u16 = 3;
/// Version 3 fragments carry exactly this many bytes of body (all but the last), so that a
/// fragment token fits one datagram, on the group too (protocol.md §6).
pub const V3_FRAGMENT_CHUNK: usize = 1088;
/// Most fragments of one version-3 message.
pub const V3_MAX_FRAGMENTS: usize = 64;
/// Longest REJECT reason text.
pub const MAX_REJECT_REASON: usize = 100;

/// Outer (datagram-level) TLV types.
pub mod outer {
    /// C→R: version range and padding.
    pub const HELLO: u16 = 0x0001;
    /// R→C: the chosen version and an address cookie.
    pub const COOKIE: u16 = 0x0002;
    /// C→R: a cookie, asking for the relay's public key.
    pub const KEY_REQUEST: u16 = 0x0003;
    /// R→C: the relay's RSA public key (PEM).
    pub const PUBLIC_KEY: u16 = 0x0004;
    /// C→R: a cookie and the RSA-OAEP-sealed client key.
    pub const REGISTER: u16 = 0x0005;
    /// Both: one Fernet token.
    pub const SEALED: u16 = 0x0006;
    /// Both: a piece of a token too large for one datagram.
    pub const FRAGMENT: u16 = 0x0007;
    /// R→C: a handshake failure code and reason.
    pub const REJECT: u16 = 0x0008;
    /// R→group (version 3): a token under the group key of an epoch.
    pub const GROUP: u16 = 0x0009;
    /// R→C: a sealed datagram came from an address without a session.
    pub const NO_SESSION: u16 = 0x000A;
}

/// Sealed (inner, inside a Fernet token) TLV types.
pub mod inner {
    /// The sender's sequence number of this token.
    pub const SEQ: u16 = 0x0101;
    /// A message body.
    pub const DATA: u16 = 0x0102;
    /// The id of a relayed message's sender.
    pub const SENDER: u16 = 0x0103;
    /// An admission name.
    pub const NAME: u16 = 0x0104;
    /// C→R: I am alive.
    pub const KEEPALIVE: u16 = 0x0105;
    /// R→C: the answer to a keep-alive.
    pub const KEEPALIVE_ACK: u16 = 0x0106;
    /// C→R: end my session.
    pub const DISCONNECT: u16 = 0x0107;
    /// R→C: registration accepted (id, keep-alive, timeout).
    pub const WELCOME: u16 = 0x0108;
    /// R→C: another client registered.
    pub const JOIN: u16 = 0x0109;
    /// R→C: another client left (id, reason).
    pub const LEAVE: u16 = 0x010A;
    /// R→C: the relay is stopping.
    pub const SHUTDOWN: u16 = 0x010B;
    /// R→C: your session ended (reason).
    pub const CLOSED: u16 = 0x010C;
    /// Version 3: a piece of a body too large for one token.
    pub const FRAG: u16 = 0x010D;
    /// Version 3, R→C, in WELCOME: how messages will come (mode, group).
    pub const DIST: u16 = 0x010E;
    /// Version 3, R→C: the group key of an epoch.
    pub const GROUP_KEY: u16 = 0x010F;
    /// Version 3, C→R: a group key was installed.
    pub const KEY_ACK: u16 = 0x0110;
    /// Version 3, C→R: an epoch was seen whose key the member does not hold.
    pub const KEY_PULL: u16 = 0x0111;
    /// Version 3, R→C: part of the member list.
    pub const MEMBERS: u16 = 0x0112;
    /// Version 3, R→C: the group sequence number of a group item sent in a channel.
    pub const GSEQ: u16 = 0x0113;
}

/// Why a session ended (LEAVE and CLOSED reason byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client asked (DISCONNECT).
    Disconnect = 1,
    /// The client fell silent for the timeout.
    Timeout = 2,
    /// An operator kicked it.
    Kicked = 3,
    /// A new registration from the same address replaced it.
    Replaced = 4,
    /// The relay is shutting down (LEAVE(5): only for a client of another relay of a
    /// federation that shut down; a relay's own clients are told by SHUTDOWN).
    Shutdown = 5,
    /// Federation: the client's relay is out of reach (it missed 3 heartbeats, restarted, or
    /// lost track of the client while out of reach). Older clients print it as "left".
    RelayLost = 6,
}

impl LeaveReason {
    /// The reason for a wire byte, if it is one.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Disconnect,
            2 => Self::Timeout,
            3 => Self::Kicked,
            4 => Self::Replaced,
            5 => Self::Shutdown,
            6 => Self::RelayLost,
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
            Self::RelayLost => "relay-lost",
        }
    }
}

/// REJECT codes (protocol.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// HELLO offered no version the relay speaks.
    UnsupportedVersion = 1,
    /// The cookie's MAC is wrong or it expired: start again from HELLO.
    BadCookie = 2,
    /// The cookie was already used: start again from HELLO.
    CookieReused = 3,
    /// The RSA-OAEP ciphertext or the key inside it is invalid.
    BadRegistration = 4,
    /// The relay is at its client limit: retry later.
    RelayFull = 5,
    /// The admission name or token is missing or wrong.
    NotAdmitted = 6,
    /// The request was malformed.
    Malformed = 7,
}

impl RejectCode {
    /// The code for a wire value, if it is one.
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
