//! Counters: everything the relay did, and every datagram it dropped, by reason.

use crate::wire::WireError;

macro_rules! drops {
    ($( $variant:ident => $name:literal, $help:literal; )*) => {
        /// Why an input was dropped. Each reason is a counter (`stats`, `metrics`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Drop { $( $variant, )* }
        impl Drop {
            pub const ALL: &'static [Drop] = &[ $( Drop::$variant, )* ];
            /// Counter name (snake_case).
            pub fn name(self) -> &'static str { match self { $( Drop::$variant => $name, )* } }
            /// One-line explanation.
            pub fn help(self) -> &'static str { match self { $( Drop::$variant => $help, )* } }
        }
    };
}

drops! {
    Oversized => "oversized", "datagram larger than 1200 bytes";
    Truncated => "malformed_truncated", "TLV header or value truncated";
    UnknownType => "malformed_unknown_type", "unknown TLV type";
    BadValue => "malformed_value", "TLV value of the wrong length or shape";
    TrailingData => "malformed_trailing_data", "bytes after the message";
    BadSequence => "malformed_sequence", "TLVs do not form a valid message";
    Empty => "malformed_empty", "empty datagram or plaintext";
    UnexpectedType => "unexpected_type", "a relay-to-client message sent to the relay";
    UnsupportedVersion => "unsupported_version", "HELLO offered no version we speak";
    BadCookie => "bad_cookie", "cookie with a wrong MAC (forged or for another address)";
    ExpiredCookie => "expired_cookie", "cookie too old";
    CookieReused => "cookie_reused", "REGISTER cookie already used";
    HandshakeBudget => "handshake_budget", "REGISTER over the RSA budget (per source or global)";
    HandshakeQueueFull => "handshake_queue_full", "REGISTER queue full";
    BadRegistration => "bad_registration", "OAEP decryption failed or the key is invalid";
    NotAdmitted => "not_admitted", "admission token missing or wrong";
    RelayFull => "relay_full", "max clients reached";
    UnknownSender => "unknown_sender", "sealed message or fragment from an address with no session";
    BadToken => "bad_token", "Fernet token failed (HMAC, format or padding)";
    TokenExpired => "token_expired", "Fernet timestamp older than the TTL";
    TokenFromFuture => "token_from_future", "Fernet timestamp too far in the future";
    Replay => "replay", "sequence number already seen or older than the window";
    FragmentInvalid => "fragment_invalid", "fragment inconsistent with its reassembly";
    FragmentDuplicate => "fragment_duplicate", "fragment index already held";
    FragmentLimit => "fragment_limit", "reassembly memory cap reached";
    ReassemblyTimeout => "reassembly_timeout", "reassembly not complete in time";
    ReassemblyEvicted => "reassembly_evicted", "reassembly evicted for a smaller holder (global cap full)";
    SendQueueFull => "send_queue_full", "outgoing queue full";
    SendFailed => "send_failed", "the kernel refused an outgoing datagram";
}

impl Drop {
    pub fn from_wire(e: &WireError) -> Drop {
        match e {
            WireError::TruncatedHeader | WireError::TruncatedValue { .. } => Drop::Truncated,
            WireError::UnknownType(_) => Drop::UnknownType,
            WireError::BadValue { .. } => Drop::BadValue,
            WireError::TrailingData => Drop::TrailingData,
            WireError::BadSequence => Drop::BadSequence,
            WireError::Empty => Drop::Empty,
        }
    }
}

/// All counters. Plain integers: one owner, no atomics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// Client messages accepted for relaying.
    pub messages_in: u64,
    /// Per-recipient copies sent (a message to N-1 peers counts N-1).
    pub deliveries: u64,
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
    pub cookies_sent: u64,
    pub keepalives: u64,
    pub fragments_in: u64,
    pub fragments_out: u64,
    pub reassembled: u64,
    pub joins: u64,
    pub leaves: u64,
    pub timeouts: u64,
    pub kicks: u64,
    pub peak_clients: u64,
    drops: [u64; Drop::ALL.len()],
}

impl Stats {
    pub fn drop(&mut self, d: Drop) {
        self.drops[d as usize] += 1;
    }
    pub fn drop_n(&mut self, d: Drop, n: u64) {
        self.drops[d as usize] += n;
    }
    pub fn drops(&self, d: Drop) -> u64 {
        self.drops[d as usize]
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// (name, value) for every plain counter, in a stable order.
    pub fn counters(&self) -> [(&'static str, u64); 18] {
        [
            ("datagrams_in", self.datagrams_in),
            ("bytes_in", self.bytes_in),
            ("datagrams_out", self.datagrams_out),
            ("bytes_out", self.bytes_out),
            ("messages_in", self.messages_in),
            ("deliveries", self.deliveries),
            ("handshakes_ok", self.handshakes_ok),
            ("handshakes_failed", self.handshakes_failed),
            ("cookies_sent", self.cookies_sent),
            ("keepalives", self.keepalives),
            ("fragments_in", self.fragments_in),
            ("fragments_out", self.fragments_out),
            ("reassembled", self.reassembled),
            ("joins", self.joins),
            ("leaves", self.leaves),
            ("timeouts", self.timeouts),
            ("kicks", self.kicks),
            ("peak_clients", self.peak_clients),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_names_are_unique_snake_case() {
        let mut names: Vec<_> = Drop::ALL.iter().map(|d| d.name()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Drop::ALL.len());
        let mut s = Stats::default();
        s.drop(Drop::Replay);
        s.drop(Drop::Replay);
        assert_eq!(s.drops(Drop::Replay), 2);
        assert_eq!(s.total_drops(), 2);
    }
}
