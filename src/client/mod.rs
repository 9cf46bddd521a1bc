//! The client library: a sans-IO [`ClientSession`] (handshake, sealing, reassembly, replay
//! window, keep-alives) and a blocking [`Client`] over a std UDP socket that tests, the
//! benchmark and `mcrelay client` use.

mod blocking;
mod group;
mod session;

use std::fmt;
use std::io;

use crate::crypto::key::hex;
use crate::wire::{LeaveReason, MAX_BODY};

pub use blocking::{Client, ClientConfig, client_socket, group_socket};
pub use session::{BACKOFF, ClientSession, ClientStats, FATAL_REJECTS, MAX_RETRY, PROBE, RETRY};

/// Why a client believes its session is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// The relay answered NO_SESSION and did not answer the keep-alive that checked it.
    NoSession,
    /// Nothing authenticated came from the relay for its timeout.
    Silence,
}

impl LostReason {
    /// The word `mcrelay client` prints.
    pub fn word(self) -> &'static str {
        match self {
            LostReason::NoSession => "no-session",
            LostReason::Silence => "silence",
        }
    }
}

/// Something the relay told us.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Registered: our id and the relay key's fingerprint.
    Ready {
        /// Our client id.
        id: u32,
        /// SHA-256 of the relay's public key (SPKI DER).
        fingerprint: [u8; 32],
    },
    /// A message from another client.
    Message {
        /// Its sender's id.
        sender: u32,
        /// Its sender's admission name.
        name: Option<String>,
        /// The body.
        data: Vec<u8>,
    },
    /// Another client joined.
    Join {
        /// Its id.
        id: u32,
        /// Its admission name.
        name: Option<String>,
    },
    /// Another client left.
    Leave {
        /// Its id.
        id: u32,
        /// A [`LeaveReason`] value.
        reason: u8,
    },
    /// Our session ended (kicked, replaced, or our disconnect acknowledged).
    Closed {
        /// A [`LeaveReason`] value.
        reason: u8,
    },
    /// The relay is shutting down.
    Shutdown,
    /// Version 3: a member that was already there when we registered (the member list).
    Present {
        /// Its id.
        id: u32,
        /// Its admission name.
        name: Option<String>,
    },
    /// Our session is gone; unless reconnecting is off, a new handshake has started (the next
    /// `Ready` ends it, usually with a new id).
    Lost {
        /// What showed it.
        reason: LostReason,
    },
}

/// Why the client gave up.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// A socket call failed.
    Io(io::Error),
    /// The relay's key does not match the pinned fingerprint.
    FingerprintMismatch {
        /// The pinned fingerprint (hex).
        expected: String,
        /// The relay's (hex).
        got: String,
    },
    /// The relay's PUBLIC_KEY could not be used.
    BadPublicKey(String),
    /// The relay refused the registration.
    Rejected {
        /// A [`RejectCode`](crate::wire::RejectCode) value.
        code: u16,
        /// Its text.
        reason: String,
    },
    /// Nothing came in time; says what was awaited.
    Timeout(&'static str),
    /// A message longer than the protocol allows (its length).
    TooLarge(usize),
    /// Not registered (yet, or any more).
    NotRegistered,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::FingerprintMismatch { expected, got } => write!(
                f,
                "relay key fingerprint {got} does not match the expected {expected}: refusing to talk to it"
            ),
            ClientError::BadPublicKey(e) => write!(f, "relay sent an unusable public key: {e}"),
            ClientError::Rejected { code, reason } => {
                write!(f, "relay rejected us (code {code}): {reason}")
            }
            ClientError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            ClientError::TooLarge(n) => write!(f, "message of {n} bytes is larger than {MAX_BODY}"),
            ClientError::NotRegistered => write!(f, "not registered"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// The `mcrelay client` output line for an event (protocol-independent, script-friendly).
pub fn format_event(ev: &Event) -> String {
    let who = |id: u32, name: &Option<String>| match name {
        Some(n) => format!("{id}@{n}"),
        None => id.to_string(),
    };
    let reason = |r: u8| {
        LeaveReason::from_u8(r)
            .map(|r| r.word().to_string())
            .unwrap_or_else(|| r.to_string())
    };
    match ev {
        Event::Ready { id, fingerprint } => format!("ready {id} {}", hex(fingerprint)),
        Event::Message { sender, name, data } => {
            format!("msg {} {}", who(*sender, name), escape(data))
        }
        Event::Join { id, name } => format!("join {}", who(*id, name)),
        Event::Leave { id, reason: r } => format!("leave {id} {}", reason(*r)),
        Event::Closed { reason: r } => format!("closed {}", reason(*r)),
        Event::Shutdown => "shutdown".to_string(),
        Event::Present { id, name } => format!("present {}", who(*id, name)),
        Event::Lost { reason: r } => format!("lost {}", r.word()),
    }
}

/// Escape a message body for one output line: `\\`, `\n`, `\r`, `\t`, and `\xHH` for other
/// control bytes and invalid UTF-8.
pub fn escape(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for chunk in data.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_for_one_line() {
        assert_eq!(escape(b"a b"), "a b");
        assert_eq!(escape(b"a\nb\\c\td\r"), "a\\nb\\\\c\\td\\r");
        assert_eq!(escape(&[0x01, 0xff, b'x']), "\\x01\\xffx");
        assert_eq!(escape("é".as_bytes()), "é");
    }
}
