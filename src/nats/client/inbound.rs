//! Bytes from the server: the parser that turns them into operations, the checks a `MSG`
//! passes before the host sees it, and which `-ERR`s end the link.

use super::events::NatsMsg;
use crate::nats::proto::{Parser, ProtoError, RawMsg, ServerOp};

/// What the caller says after each operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Next {
    /// The payload limit for what follows (an INFO may have changed it).
    pub(super) max_payload: usize,
    /// Parse on (the link still takes input).
    pub(super) more: bool,
}

/// The parser of one connection (partial lines and payloads carry over between reads).
#[derive(Debug, Default)]
pub(super) struct Inbound {
    parser: Parser,
}

impl Inbound {
    /// A new connection: forget partial input (the payload limit stays).
    pub(super) fn reset(&mut self) {
        self.parser.reset();
    }

    /// Memory held for partial input.
    pub(super) fn capacity(&self) -> usize {
        self.parser.capacity()
    }

    /// Hand each complete operation in `bytes` to `on_op`, until the bytes run out or it
    /// says stop. A protocol error ends the parse (the link is to be closed).
    pub(super) fn feed(
        &mut self,
        bytes: &[u8],
        on_op: &mut dyn FnMut(ServerOp<'_>) -> Next,
    ) -> Result<(), ProtoError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (n, op) = self.parser.parse(rest)?;
            rest = rest.get(n..).unwrap_or_default();
            let Some(op) = op else {
                if n == 0 {
                    break;
                }
                continue;
            };
            let next = on_op(op);
            self.parser.set_max_payload(next.max_payload);
            if !next.more {
                break;
            }
        }
        Ok(())
    }
}

/// Why a `MSG` was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Undeliverable {
    /// Not a subscription we hold (any more).
    UnknownSid,
    /// Its subject or reply is not UTF-8.
    BadSubject,
}

/// The message the host sees, if `m` is for a subscription we hold (`known`) and its
/// subjects are text.
pub(super) fn deliverable(m: RawMsg<'_>, known: bool) -> Result<NatsMsg<'_>, Undeliverable> {
    if !known {
        return Err(Undeliverable::UnknownSid);
    }
    let subject = std::str::from_utf8(m.subject).map_err(|_| Undeliverable::BadSubject)?;
    let reply = match m.reply.map(std::str::from_utf8) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(_)) => return Err(Undeliverable::BadSubject),
    };
    Ok(NatsMsg {
        subject,
        sid: m.sid,
        reply,
        payload: m.payload,
    })
}

/// Does this `-ERR` close the connection? The server keeps it open only for subject and
/// permission errors.
pub(super) fn is_fatal(message: &str) -> bool {
    let m = message.trim().to_ascii_lowercase();
    !(m.starts_with("invalid subject")
        || m.starts_with("invalid publish subject")
        || m.starts_with("permissions violation"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step`; returns a description of each operation.
    fn ops(input: &[u8], step: usize, stop_after: usize) -> Result<Vec<String>, ProtoError> {
        let mut inb = Inbound::default();
        let mut seen = Vec::new();
        for piece in input.chunks(step) {
            if seen.len() >= stop_after {
                break;
            }
            inb.feed(piece, &mut |op| {
                seen.push(format!("{op:?}"));
                Next {
                    max_payload: 8,
                    more: seen.len() < stop_after,
                }
            })?;
        }
        Ok(seen)
    }

    const INPUT: &[u8] = b"PING\r\nMSG a 1 3\r\nabc\r\n+OK\r\nPONG\r\n";

    #[test]
    fn split_anywhere_the_same_operations() {
        let whole = ops(INPUT, INPUT.len(), usize::MAX).unwrap();
        assert_eq!(whole.len(), 4);
        for step in 1..INPUT.len() {
            assert_eq!(ops(INPUT, step, usize::MAX).unwrap(), whole, "step {step}");
        }
    }

    #[test]
    fn stop_means_stop() {
        assert_eq!(ops(INPUT, INPUT.len(), 1).unwrap().len(), 1);
    }

    #[test]
    fn the_callers_payload_limit_bounds_the_next_message() {
        // After the PING the limit is 8 bytes: a 9-byte payload is a protocol error.
        let r = ops(b"PING\r\nMSG a 1 9\r\n123456789\r\n", 64, usize::MAX);
        assert!(r.is_err(), "{r:?}");
        assert!(ops(b"PING\r\nMSG a 1 8\r\n12345678\r\n", 64, usize::MAX).is_ok());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ops(b"HELLO\r\n", 64, usize::MAX).is_err());
    }

    #[test]
    fn only_known_text_messages_are_delivered() {
        let raw = |subject: &'static [u8], reply: Option<&'static [u8]>| RawMsg {
            subject,
            sid: 4,
            reply,
            payload: b"p",
        };
        let m = deliverable(raw(b"a.b", Some(b"r")), true).unwrap();
        assert_eq!(
            (m.subject, m.sid, m.reply, m.payload),
            ("a.b", 4, Some("r"), &b"p"[..])
        );
        assert_eq!(
            deliverable(raw(b"a.b", None), false),
            Err(Undeliverable::UnknownSid)
        );
        assert_eq!(
            deliverable(raw(b"\xff", None), true),
            Err(Undeliverable::BadSubject)
        );
        assert_eq!(
            deliverable(raw(b"a", Some(b"\xfe")), true),
            Err(Undeliverable::BadSubject)
        );
    }

    #[test]
    fn subject_and_permission_errors_keep_the_link() {
        assert!(!is_fatal(" Invalid Subject"));
        assert!(!is_fatal("invalid publish subject"));
        assert!(!is_fatal("Permissions Violation for Publish to x"));
        assert!(is_fatal("Authorization Violation"));
        assert!(is_fatal(""));
    }
}
