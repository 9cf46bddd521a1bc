//! The protocol's messages: exact-shape parsing and encoding (protocol.md §2).

use super::tlv::{TlvIter, WireError, put_tlv, put_tlv_header};
use super::{
    COOKIE_LEN, FRAGMENT_CHUNK, HELLO_MIN_VALUE, MAX_BODY, MAX_FRAGMENTS, MAX_NAME, inner, outer,
};

/// A datagram-level message. Borrowed from the datagram; nothing is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outer<'a> {
    Hello {
        min: u16,
        max: u16,
    },
    Cookie {
        version: u16,
        cookie: &'a [u8; COOKIE_LEN],
    },
    KeyRequest {
        cookie: &'a [u8; COOKIE_LEN],
    },
    PublicKey {
        pem: &'a [u8],
    },
    Register {
        cookie: &'a [u8; COOKIE_LEN],
        ciphertext: &'a [u8],
    },
    Sealed {
        token: &'a [u8],
    },
    Fragment {
        msg_id: u32,
        index: u16,
        count: u16,
        chunk: &'a [u8],
    },
    Reject {
        code: u16,
        reason: &'a [u8],
    },
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn cookie_of(typ: u16, v: &[u8]) -> Result<&[u8; COOKIE_LEN], WireError> {
    v.first_chunk::<COOKIE_LEN>().ok_or(WireError::BadValue {
        typ,
        field: "cookie",
    })
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
        let bad = |field| WireError::BadValue { typ, field };
        Ok(match typ {
            outer::HELLO => {
                if v.len() < HELLO_MIN_VALUE {
                    return Err(bad("length (HELLO must be padded to 60 bytes)"));
                }
                Outer::Hello {
                    min: be16(v),
                    max: be16(&v[2..]),
                }
            }
            outer::COOKIE => {
                if v.len() != 2 + COOKIE_LEN {
                    return Err(bad("length"));
                }
                Outer::Cookie {
                    version: be16(v),
                    cookie: cookie_of(typ, &v[2..])?,
                }
            }
            outer::KEY_REQUEST => {
                if v.len() != COOKIE_LEN {
                    return Err(bad("length"));
                }
                Outer::KeyRequest {
                    cookie: cookie_of(typ, v)?,
                }
            }
            outer::PUBLIC_KEY => {
                if v.is_empty() {
                    return Err(bad("length"));
                }
                Outer::PublicKey { pem: v }
            }
            outer::REGISTER => {
                // 64..=512-byte moduli: 512- to 4096-bit keys.
                let ct = v.get(COOKIE_LEN..).unwrap_or_default();
                if !(64..=512).contains(&ct.len()) {
                    return Err(bad("ciphertext length"));
                }
                Outer::Register {
                    cookie: cookie_of(typ, v)?,
                    ciphertext: ct,
                }
            }
            outer::SEALED => {
                if v.len() < 4 {
                    return Err(bad("token length"));
                }
                Outer::Sealed { token: v }
            }
            outer::FRAGMENT => {
                if v.len() < 9 {
                    return Err(bad("length"));
                }
                let (msg_id, index, count) = (be32(v), be16(&v[4..]), be16(&v[6..]));
                let chunk = &v[8..];
                if !(2..=MAX_FRAGMENTS as u16).contains(&count) {
                    return Err(bad("count"));
                }
                if index >= count {
                    return Err(bad("index"));
                }
                let last = index + 1 == count;
                if (!last && chunk.len() != FRAGMENT_CHUNK) || chunk.len() > FRAGMENT_CHUNK {
                    return Err(bad("chunk length"));
                }
                Outer::Fragment {
                    msg_id,
                    index,
                    count,
                    chunk,
                }
            }
            outer::REJECT => {
                if v.len() < 2 || v.len() > 2 + super::MAX_REJECT_REASON {
                    return Err(bad("length"));
                }
                Outer::Reject {
                    code: be16(v),
                    reason: &v[2..],
                }
            }
            t => return Err(WireError::UnknownType(t)),
        })
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
                let reason = &reason[..reason.len().min(super::MAX_REJECT_REASON)];
                put_tlv_header(out, outer::REJECT, 2 + reason.len());
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(reason);
            }
        }
    }
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
        id: u32,
        keepalive_ms: u32,
        timeout_ms: u32,
        name: Option<&'a [u8]>,
    },
    /// R→C: a relayed message.
    Message {
        sender: u32,
        name: Option<&'a [u8]>,
        data: &'a [u8],
    },
    /// R→C.
    KeepaliveAck,
    /// R→C: another client registered.
    Join { id: u32, name: Option<&'a [u8]> },
    /// R→C: another client left.
    Leave { id: u32, reason: u8 },
    /// R→C: the relay is stopping.
    Shutdown,
    /// R→C: your session ended.
    Closed { reason: u8 },
}

fn exact<const N: usize>(typ: u16, v: &[u8]) -> Result<&[u8; N], WireError> {
    if v.len() != N {
        return Err(WireError::BadValue {
            typ,
            field: "length",
        });
    }
    v.first_chunk::<N>().ok_or(WireError::BadValue {
        typ,
        field: "length",
    })
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

/// Parse a sealed plaintext: SEQ first, then exactly one of the listed shapes (protocol.md §2).
pub fn parse_inner(plain: &[u8]) -> Result<(u64, Body<'_>), WireError> {
    let mut it = TlvIter::new(plain);
    let mut next = || -> Result<Option<(u16, &[u8])>, WireError> { it.next().transpose() };
    let (t, v) = next()?.ok_or(WireError::Empty)?;
    if t != inner::SEQ {
        return Err(WireError::BadSequence);
    }
    let seq = u64::from_be_bytes(*exact::<8>(t, v)?);
    let (t, v) = next()?.ok_or(WireError::BadSequence)?;
    // Optional NAME after the head TLV, then what must follow.
    let body = match t {
        inner::DATA => {
            if v.len() > MAX_BODY {
                return Err(WireError::BadValue {
                    typ: t,
                    field: "length",
                });
            }
            Body::Data(v)
        }
        inner::KEEPALIVE | inner::KEEPALIVE_ACK | inner::DISCONNECT | inner::SHUTDOWN => {
            exact::<0>(t, v)?;
            match t {
                inner::KEEPALIVE => Body::Keepalive,
                inner::KEEPALIVE_ACK => Body::KeepaliveAck,
                inner::DISCONNECT => Body::Disconnect,
                _ => Body::Shutdown,
            }
        }
        inner::WELCOME => {
            let b = exact::<12>(t, v)?;
            Body::Welcome {
                id: be32(b),
                keepalive_ms: be32(&b[4..]),
                timeout_ms: be32(&b[8..]),
                name: None,
            }
        }
        inner::SENDER => Body::Message {
            sender: be32(exact::<4>(t, v)?),
            name: None,
            data: &[],
        },
        inner::JOIN => Body::Join {
            id: be32(exact::<4>(t, v)?),
            name: None,
        },
        inner::LEAVE => {
            let b = exact::<5>(t, v)?;
            Body::Leave {
                id: be32(b),
                reason: b[4],
            }
        }
        inner::CLOSED => Body::Closed {
            reason: exact::<1>(t, v)?[0],
        },
        inner::SEQ | inner::NAME => return Err(WireError::BadSequence),
        t => return Err(WireError::UnknownType(t)),
    };
    let mut following = next()?;
    let body = match body {
        Body::Welcome {
            id,
            keepalive_ms,
            timeout_ms,
            ..
        } => {
            let mut name = None;
            if let Some((inner::NAME, v)) = following {
                name = Some(name_of(v)?);
                following = next()?;
            }
            Body::Welcome {
                id,
                keepalive_ms,
                timeout_ms,
                name,
            }
        }
        Body::Join { id, .. } => {
            let mut name = None;
            if let Some((inner::NAME, v)) = following {
                name = Some(name_of(v)?);
                following = next()?;
            }
            Body::Join { id, name }
        }
        Body::Message { sender, .. } => {
            let mut name = None;
            if let Some((inner::NAME, v)) = following {
                name = Some(name_of(v)?);
                following = next()?;
            }
            match following {
                Some((inner::DATA, v)) if v.len() <= MAX_BODY => {
                    following = next()?;
                    Body::Message {
                        sender,
                        name,
                        data: v,
                    }
                }
                _ => return Err(WireError::BadSequence),
            }
        }
        b => b,
    };
    if following.is_some() {
        return Err(WireError::TrailingData);
    }
    Ok((seq, body))
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
