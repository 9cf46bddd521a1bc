//! Datagram-level messages: exact-shape parsing and encoding (protocol.md §2).

use super::reader::Reader;
use super::tlv::{TlvIter, WireError, put_tlv, put_tlv_header};
use super::{
    COOKIE_LEN, FRAGMENT_CHUNK, FRAGMENT_HEADER, HELLO_MIN_VALUE, MAX_FRAGMENTS, MAX_REJECT_REASON,
    outer,
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
    /// R→group (version 3, group mode): one binary Fernet token under the group key of
    /// `epoch`.
    Group {
        /// Which group key sealed the token (the only key selector).
        epoch: u32,
        /// The token.
        token: &'a [u8],
    },
    /// R→C: a sealed datagram or fragment came from an address without a session.
    NoSession,
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
            outer::GROUP => {
                let mut r = r;
                if r.left() < 4 + 4 {
                    return Err(r.bad("length"));
                }
                Ok(Outer::Group {
                    epoch: r.u32("epoch")?,
                    token: r.rest(),
                })
            }
            outer::NO_SESSION => r.exactly(0).map(|_| Outer::NoSession),
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
            Outer::Group { epoch, token } => {
                put_group_header(out, epoch, token.len());
                out.extend_from_slice(token);
            }
            Outer::NoSession => put_tlv(out, outer::NO_SESSION, &[]),
        }
    }
}

/// Append the header of a GROUP datagram whose token is `token_len` bytes (the token follows).
pub fn put_group_header(out: &mut Vec<u8>, epoch: u32, token_len: usize) {
    put_tlv_header(out, outer::GROUP, 4 + token_len);
    out.extend_from_slice(&epoch.to_be_bytes());
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
        roundtrip_outer(Outer::Group {
            epoch: 7,
            token: &[0x80; 89],
        });
        roundtrip_outer(Outer::NoSession);
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
        assert_eq!(
            Outer::parse(&[0, 0x42, 0, 0]),
            Err(WireError::UnknownType(0x42))
        );
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
}
