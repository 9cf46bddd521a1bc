//! The protocol's messages: exact-shape parsing and encoding (protocol.md §2).

use super::reader::Reader;
use super::tlv::{TlvIter, WireError, put_tlv, put_tlv_header};
use super::{
    COOKIE_LEN, FRAGMENT_CHUNK, FRAGMENT_HEADER, HELLO_MIN_VALUE, MAX_BODY, MAX_FRAGMENTS,
    MAX_NAME, MAX_REJECT_REASON, inner, outer,
};

/// A datagram-level message. Borrowed from the datagram; nothing is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outer<'a> {
    /// C→R: the versions the client speaks.
    Hello {
        /// Lowest version offered.
        min: u16,
        /// Highest version offered.
        max: u16,
    },
    /// R→C: the version chosen and an address cookie.
    Cookie {
        /// The version the relay chose.
        version: u16,
        /// Opaque to the client; echoed verbatim.
        cookie: &'a [u8; COOKIE_LEN],
    },
    /// C→R: please send your public key.
    KeyRequest {
        /// The cookie from COOKIE.
        cookie: &'a [u8; COOKIE_LEN],
    },
    /// R→C: the relay's RSA public key.
    PublicKey {
        /// PEM SubjectPublicKeyInfo, ASCII.
        pem: &'a [u8],
    },
    /// C→R: register with this key.
    Register {
        /// The cookie from COOKIE.
        cookie: &'a [u8; COOKIE_LEN],
        /// RSA-OAEP-SHA256 of the client's Fernet key (and admission suffix).
        ciphertext: &'a [u8],
    },
    /// Both: one Fernet token.
    Sealed {
        /// The token (base64 text in version 1, binary in version 2).
        token: &'a [u8],
    },
    /// Both: one piece of a token too large for a datagram.
    Fragment {
        /// The message this piece belongs to.
        msg_id: u32,
        /// Position, from 0.
        index: u16,
        /// Number of pieces.
        count: u16,
        /// The bytes.
        chunk: &'a [u8],
    },
    /// R→C: a handshake failure.
    Reject {
        /// A [`RejectCode`](super::RejectCode) value.
        code: u16,
        /// UTF-8 text for humans.
        reason: &'a [u8],
    },
}

impl<'a> Outer<'a> {
    /// Parse a datagram: exactly one known TLV of the right shape, nothing after it.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, WireError> {
        let mut it = TlvIter::new(datagram);
        let (typ, v) = match it.next() {
            None => return Err(WireError::Empty),
            Some(r) => r?,
        };
        if it.next().is_some() {
            return Err(WireError::TrailingData);
        }
        let r = Reader::new(typ, v);
        match typ {
            outer::HELLO => hello(r),
            outer::COOKIE => {
                let mut r = r.exactly(2 + COOKIE_LEN)?;
                Ok(Outer::Cookie {
                    version: r.u16("version")?,
                    cookie: r.array("cookie")?,
                })
            }
            outer::KEY_REQUEST => Ok(Outer::KeyRequest {
                cookie: r.exactly(COOKIE_LEN)?.array("cookie")?,
            }),
            outer::PUBLIC_KEY if r.left() == 0 => Err(r.bad("length")),
            outer::PUBLIC_KEY => Ok(Outer::PublicKey { pem: v }),
            outer::REGISTER => register(r),
            outer::SEALED if r.left() < 4 => Err(r.bad("token length")),
            outer::SEALED => Ok(Outer::Sealed { token: v }),
            outer::FRAGMENT => fragment(r),
            outer::REJECT => reject(r),
            t => Err(WireError::UnknownType(t)),
        }
    }

    /// Append this message as one datagram.
    pub fn write(&self, out: &mut Vec<u8>) {
        match *self {
            Outer::Hello { min, max } => {
                put_tlv_header(out, outer::HELLO, HELLO_MIN_VALUE);
                out.extend_from_slice(&min.to_be_bytes());
                out.extend_from_slice(&max.to_be_bytes());
                out.resize(out.len() + HELLO_MIN_VALUE - 4, 0);
            }
            Outer::Cookie { version, cookie } => {
                put_tlv_header(out, outer::COOKIE, 2 + COOKIE_LEN);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(cookie);
            }
            Outer::KeyRequest { cookie } => put_tlv(out, outer::KEY_REQUEST, cookie),
            Outer::PublicKey { pem } => put_tlv(out, outer::PUBLIC_KEY, pem),
            Outer::Register { cookie, ciphertext } => {
                put_tlv_header(out, outer::REGISTER, COOKIE_LEN + ciphertext.len());
                out.extend_from_slice(cookie);
                out.extend_from_slice(ciphertext);
            }
            Outer::Sealed { token } => put_tlv(out, outer::SEALED, token),
            Outer::Fragment {
                msg_id,
                index,
                count,
                chunk,
            } => super::put_fragment(out, msg_id, index, count, chunk),
            Outer::Reject { code, reason } => {
                let reason = &reason[..reason.len().min(MAX_REJECT_REASON)];
                put_tlv_header(out, outer::REJECT, 2 + reason.len());
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(reason);
            }
        }
    }
}

fn hello(mut r: Reader<'_>) -> Result<Outer<'_>, WireError> {
    if r.left() < HELLO_MIN_VALUE {
        return Err(r.bad("length (HELLO must be padded to 60 bytes)"));
    }
    Ok(Outer::Hello {
        min: r.u16("min_version")?,
        max: r.u16("max_version")?,
    })
}

fn register(mut r: Reader<'_>) -> Result<Outer<'_>, WireError> {
    // 64..=512-byte moduli: 512- to 4096-bit keys.
    if !(COOKIE_LEN + 64..=COOKIE_LEN + 512).contains(&r.left()) {
        return Err(r.bad("ciphertext length"));
    }
    Ok(Outer::Register {
        cookie: r.array("cookie")?,
        ciphertext: r.rest(),
    })
}

fn fragment(mut r: Reader<'_>) -> Result<Outer<'_>, WireError> {
    if r.left() < FRAGMENT_HEADER + 1 {
        return Err(r.bad("length"));
    }
    let (msg_id, index, count) = (r.u32("msg_id")?, r.u16("index")?, r.u16("count")?);
    let chunk = r.rest();
    if !(2..=MAX_FRAGMENTS as u16).contains(&count) {
        return Err(r.bad("count"));
    }
    if index >= count {
        return Err(r.bad("index"));
    }
    let last = index + 1 == count;
    if (!last && chunk.len() != FRAGMENT_CHUNK) || chunk.len() > FRAGMENT_CHUNK {
        return Err(r.bad("chunk length"));
    }
    Ok(Outer::Fragment {
        msg_id,
        index,
        count,
        chunk,
    })
}

fn reject(mut r: Reader<'_>) -> Result<Outer<'_>, WireError> {
    if !(2..=2 + MAX_REJECT_REASON).contains(&r.left()) {
        return Err(r.bad("length"));
    }
    Ok(Outer::Reject {
        code: r.u16("code")?,
        reason: r.rest(),
    })
}

/// The body of a sealed plaintext (after its SEQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// C→R: relay this.
    Data(&'a [u8]),
    /// C→R.
    Keepalive,
    /// C→R.
    Disconnect,
    /// R→C: registration accepted.
    Welcome {
        /// The client's id.
        id: u32,
        /// Send a keep-alive after this long without sending.
        keepalive_ms: u32,
        /// The relay drops a client silent this long.
        timeout_ms: u32,
        /// The client's admission name.
        name: Option<&'a [u8]>,
    },
    /// R→C: a relayed message.
    Message {
        /// The original sender's id.
        sender: u32,
        /// Its admission name.
        name: Option<&'a [u8]>,
        /// The body.
        data: &'a [u8],
    },
    /// R→C.
    KeepaliveAck,
    /// R→C: another client registered.
    Join {
        /// The newcomer's id.
        id: u32,
        /// Its admission name.
        name: Option<&'a [u8]>,
    },
    /// R→C: another client left.
    Leave {
        /// Its id.
        id: u32,
        /// A [`LeaveReason`](super::LeaveReason) value.
        reason: u8,
    },
    /// R→C: the relay is stopping.
    Shutdown,
    /// R→C: your session ended.
    Closed {
        /// A [`LeaveReason`](super::LeaveReason) value.
        reason: u8,
    },
}

fn name_of(v: &[u8]) -> Result<&[u8], WireError> {
    if v.is_empty() || v.len() > MAX_NAME {
        return Err(WireError::BadValue {
            typ: inner::NAME,
            field: "length",
        });
    }
    Ok(v)
}

/// The TLVs of a plaintext, with one TLV of look-ahead.
struct Tlvs<'a> {
    it: TlvIter<'a>,
    peeked: Option<(u16, &'a [u8])>,
}

impl<'a> Tlvs<'a> {
    fn next(&mut self) -> Result<Option<(u16, &'a [u8])>, WireError> {
        match self.peeked.take() {
            Some(tlv) => Ok(Some(tlv)),
            None => self.it.next().transpose(),
        }
    }

    /// An optional NAME, next.
    fn name(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        match self.next()? {
            Some((inner::NAME, v)) => Ok(Some(name_of(v)?)),
            other => {
                self.peeked = other;
                Ok(None)
            }
        }
    }
}

/// Parse a sealed plaintext: SEQ first, then exactly one of the listed shapes (protocol.md §2).
pub fn parse_inner(plain: &[u8]) -> Result<(u64, Body<'_>), WireError> {
    let mut tlvs = Tlvs {
        it: TlvIter::new(plain),
        peeked: None,
    };
    let (t, v) = tlvs.next()?.ok_or(WireError::Empty)?;
    if t != inner::SEQ {
        return Err(WireError::BadSequence);
    }
    let seq = Reader::new(t, v).exactly(8)?.u64("seq")?;
    let (t, v) = tlvs.next()?.ok_or(WireError::BadSequence)?;
    let body = body(Reader::new(t, v), t, &mut tlvs)?;
    if tlvs.next()?.is_some() {
        return Err(WireError::TrailingData);
    }
    Ok((seq, body))
}

/// The body that TLV `t` (read by `r`) starts; its optional NAME and DATA follow in `tlvs`.
fn body<'a>(r: Reader<'a>, t: u16, tlvs: &mut Tlvs<'a>) -> Result<Body<'a>, WireError> {
    Ok(match t {
        inner::DATA if r.left() > MAX_BODY => return Err(r.bad("length")),
        inner::DATA => Body::Data(r.into_rest()),
        inner::KEEPALIVE => r.exactly(0).map(|_| Body::Keepalive)?,
        inner::KEEPALIVE_ACK => r.exactly(0).map(|_| Body::KeepaliveAck)?,
        inner::DISCONNECT => r.exactly(0).map(|_| Body::Disconnect)?,
        inner::SHUTDOWN => r.exactly(0).map(|_| Body::Shutdown)?,
        inner::WELCOME => {
            let mut r = r.exactly(12)?;
            let (id, keepalive_ms) = (r.u32("id")?, r.u32("keepalive_ms")?);
            let timeout_ms = r.u32("timeout_ms")?;
            Body::Welcome {
                id,
                keepalive_ms,
                timeout_ms,
                name: tlvs.name()?,
            }
        }
        inner::SENDER => {
            let sender = r.exactly(4)?.u32("sender")?;
            let name = tlvs.name()?;
            let data = match tlvs.next()? {
                Some((inner::DATA, v)) if v.len() <= MAX_BODY => v,
                _ => return Err(WireError::BadSequence),
            };
            Body::Message { sender, name, data }
        }
        inner::JOIN => Body::Join {
            id: r.exactly(4)?.u32("id")?,
            name: tlvs.name()?,
        },
        inner::LEAVE => {
            let mut r = r.exactly(5)?;
            Body::Leave {
                id: r.u32("id")?,
                reason: r.u8("reason")?,
            }
        }
        inner::CLOSED => Body::Closed {
            reason: r.exactly(1)?.u8("reason")?,
        },
        inner::SEQ | inner::NAME => return Err(WireError::BadSequence),
        t => return Err(WireError::UnknownType(t)),
    })
}

/// Append the sealed plaintext `SEQ, body` to `out`.
pub fn write_inner(out: &mut Vec<u8>, seq: u64, body: &Body<'_>) {
    put_tlv(out, inner::SEQ, &seq.to_be_bytes());
    let name = |out: &mut Vec<u8>, n: Option<&[u8]>| {
        if let Some(n) = n {
            put_tlv(out, inner::NAME, n);
        }
    };
    match *body {
        Body::Data(d) => put_tlv(out, inner::DATA, d),
        Body::Keepalive => put_tlv(out, inner::KEEPALIVE, &[]),
        Body::Disconnect => put_tlv(out, inner::DISCONNECT, &[]),
        Body::KeepaliveAck => put_tlv(out, inner::KEEPALIVE_ACK, &[]),
        Body::Shutdown => put_tlv(out, inner::SHUTDOWN, &[]),
        Body::Welcome {
            id,
            keepalive_ms,
            timeout_ms,
            name: n,
        } => {
            put_tlv_header(out, inner::WELCOME, 12);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&keepalive_ms.to_be_bytes());
            out.extend_from_slice(&timeout_ms.to_be_bytes());
            name(out, n);
        }
        Body::Message {
            sender,
            name: n,
            data,
        } => {
            put_tlv(out, inner::SENDER, &sender.to_be_bytes());
            name(out, n);
            put_tlv(out, inner::DATA, data);
        }
        Body::Join { id, name: n } => {
            put_tlv(out, inner::JOIN, &id.to_be_bytes());
            name(out, n);
        }
        Body::Leave { id, reason } => {
            put_tlv_header(out, inner::LEAVE, 5);
            out.extend_from_slice(&id.to_be_bytes());
            out.push(reason);
        }
        Body::Closed { reason } => put_tlv(out, inner::CLOSED, &[reason]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_outer(m: Outer<'_>) {
        let mut b = Vec::new();
        m.write(&mut b);
        assert!(b.len() <= crate::wire::MAX_DATAGRAM);
        assert_eq!(Outer::parse(&b), Ok(m));
    }

    #[test]
    fn outer_roundtrips() {
        let c = [7u8; COOKIE_LEN];
        roundtrip_outer(Outer::Hello { min: 1, max: 1 });
        roundtrip_outer(Outer::Cookie {
            version: 1,
            cookie: &c,
        });
        roundtrip_outer(Outer::KeyRequest { cookie: &c });
        roundtrip_outer(Outer::PublicKey { pem: b"-----BEGIN" });
        roundtrip_outer(Outer::Register {
            cookie: &c,
            ciphertext: &[1; 256],
        });
        roundtrip_outer(Outer::Sealed { token: b"gAAAAA" });
        roundtrip_outer(Outer::Fragment {
            msg_id: 9,
            index: 0,
            count: 2,
            chunk: &[1; FRAGMENT_CHUNK],
        });
        roundtrip_outer(Outer::Fragment {
            msg_id: 9,
            index: 1,
            count: 2,
            chunk: &[1; 3],
        });
        roundtrip_outer(Outer::Reject {
            code: 5,
            reason: b"full",
        });
    }

    #[test]
    fn hello_is_64_bytes_and_exact_hex() {
        let mut b = Vec::new();
        Outer::Hello { min: 1, max: 1 }.write(&mut b);
        assert_eq!(b.len(), 64);
        assert_eq!(&b[..8], &[0x00, 0x01, 0x00, 0x3c, 0x00, 0x01, 0x00, 0x01]);
        assert!(b[8..].iter().all(|&x| x == 0));
        // Unpadded HELLO is refused (anti-amplification).
        assert!(Outer::parse(&[0, 1, 0, 4, 0, 1, 0, 1]).is_err());
    }

    #[test]
    fn outer_rejects_malformed() {
        assert_eq!(Outer::parse(&[]), Err(WireError::Empty));
        assert_eq!(Outer::parse(&[0, 9, 0, 0]), Err(WireError::UnknownType(9)));
        let mut b = Vec::new();
        Outer::Sealed { token: b"abcd" }.write(&mut b);
        b.push(0);
        assert_eq!(Outer::parse(&b), Err(WireError::TrailingData));
        // Fragment: wrong chunk length for a non-last fragment, index out of range, count 1.
        let mut b = Vec::new();
        crate::wire::put_fragment(&mut b, 1, 0, 2, &[0; 10]);
        assert!(Outer::parse(&b).is_err());
        let mut b = Vec::new();
        crate::wire::put_fragment(&mut b, 1, 2, 2, &[0; 10]);
        assert!(Outer::parse(&b).is_err());
        let mut b = Vec::new();
        crate::wire::put_fragment(&mut b, 1, 0, 1, &[0; 10]);
        assert!(Outer::parse(&b).is_err());
        // Register with a short ciphertext.
        let mut b = Vec::new();
        put_tlv(&mut b, outer::REGISTER, &[0; COOKIE_LEN + 10]);
        assert!(Outer::parse(&b).is_err());
    }

    fn roundtrip_inner(seq: u64, body: Body<'_>) {
        let mut b = Vec::new();
        write_inner(&mut b, seq, &body);
        assert_eq!(parse_inner(&b), Ok((seq, body)));
    }

    #[test]
    fn inner_roundtrips() {
        roundtrip_inner(1, Body::Data(b"hello"));
        roundtrip_inner(2, Body::Data(b""));
        roundtrip_inner(3, Body::Keepalive);
        roundtrip_inner(4, Body::Disconnect);
        roundtrip_inner(5, Body::KeepaliveAck);
        roundtrip_inner(6, Body::Shutdown);
        roundtrip_inner(
            7,
            Body::Welcome {
                id: 1,
                keepalive_ms: 10_000,
                timeout_ms: 30_000,
                name: None,
            },
        );
        roundtrip_inner(
            7,
            Body::Welcome {
                id: 1,
                keepalive_ms: 1,
                timeout_ms: 2,
                name: Some(b"alice"),
            },
        );
        roundtrip_inner(
            8,
            Body::Message {
                sender: 3,
                name: None,
                data: b"hi",
            },
        );
        roundtrip_inner(
            8,
            Body::Message {
                sender: 3,
                name: Some(b"bob"),
                data: b"hi",
            },
        );
        roundtrip_inner(9, Body::Join { id: 4, name: None });
        roundtrip_inner(
            9,
            Body::Join {
                id: 4,
                name: Some(b"x"),
            },
        );
        roundtrip_inner(10, Body::Leave { id: 4, reason: 2 });
        roundtrip_inner(u64::MAX, Body::Closed { reason: 3 });
    }

    #[test]
    fn inner_exact_bytes() {
        let mut b = Vec::new();
        write_inner(&mut b, 1, &Body::Data(b"hello"));
        assert_eq!(
            b,
            [
                0x01, 0x01, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0x02, 0, 5, b'h', b'e', b'l', b'l',
                b'o'
            ]
        );
    }

    #[test]
    fn inner_rejects_bad_shapes() {
        let mut b = Vec::new();
        put_tlv(&mut b, inner::DATA, b"x");
        assert_eq!(parse_inner(&b), Err(WireError::BadSequence)); // no SEQ
        let mut b = Vec::new();
        put_tlv(&mut b, inner::SEQ, &[0; 8]);
        assert_eq!(parse_inner(&b), Err(WireError::BadSequence)); // SEQ only
        put_tlv(&mut b, inner::KEEPALIVE, &[]);
        put_tlv(&mut b, inner::KEEPALIVE, &[]);
        assert_eq!(parse_inner(&b), Err(WireError::TrailingData));
        let mut b = Vec::new();
        put_tlv(&mut b, inner::SEQ, &[0; 7]);
        assert!(parse_inner(&b).is_err());
        let mut b = Vec::new();
        put_tlv(&mut b, inner::SEQ, &[0; 8]);
        put_tlv(&mut b, inner::SENDER, &[0; 4]);
        assert_eq!(parse_inner(&b), Err(WireError::BadSequence)); // SENDER without DATA
        let mut b = Vec::new();
        put_tlv(&mut b, inner::SEQ, &[0; 8]);
        put_tlv(&mut b, inner::KEEPALIVE, &[1]);
        assert!(parse_inner(&b).is_err());
    }
}
