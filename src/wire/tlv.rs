//! TLV framing: type u16, length u16 (big endian), value.

use std::fmt;

/// A datagram or plaintext that does not follow the protocol. Each maps to one drop reason
/// (`DropReason::from_wire`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer than 4 bytes left for a TLV header.
    TruncatedHeader,
    /// A TLV's length runs past the end of its buffer.
    TruncatedValue {
        /// The TLV's type.
        typ: u16,
    },
    /// A type this version does not know (or one that belongs to the other layer).
    UnknownType(u16),
    /// A known type whose value has the wrong length or shape; names the field.
    BadValue {
        /// The TLV's type.
        typ: u16,
        /// The field that was wrong.
        field: &'static str,
    },
    /// Bytes after the one TLV a datagram may hold.
    TrailingData,
    /// The TLVs are individually valid but do not form a message the protocol lists.
    BadSequence,
    /// Zero-length datagram or plaintext.
    Empty,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedHeader => write!(f, "truncated TLV header"),
            Self::TruncatedValue { typ } => write!(f, "TLV 0x{typ:04x}: length past end of data"),
            Self::UnknownType(t) => write!(f, "unknown TLV type 0x{t:04x}"),
            Self::BadValue { typ, field } => write!(f, "TLV 0x{typ:04x}: bad {field}"),
            Self::TrailingData => write!(f, "trailing data after message"),
            Self::BadSequence => write!(f, "TLV sequence is not a valid message"),
            Self::Empty => write!(f, "empty"),
        }
    }
}

impl std::error::Error for WireError {}

/// Iterates the TLVs of a buffer; yields an error (once, then stops) on a truncated TLV.
pub struct TlvIter<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> TlvIter<'a> {
    /// Iterate the TLVs of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        TlvIter { buf, failed: false }
    }
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<(u16, &'a [u8]), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let Some((hdr, rest)) = self.buf.split_first_chunk::<4>() else {
            self.failed = true;
            return Some(Err(WireError::TruncatedHeader));
        };
        let typ = u16::from_be_bytes([hdr[0], hdr[1]]);
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        if rest.len() < len {
            self.failed = true;
            return Some(Err(WireError::TruncatedValue { typ }));
        }
        let (value, tail) = rest.split_at(len);
        self.buf = tail;
        Some(Ok((typ, value)))
    }
}

/// Append a TLV header. `len` must fit in u16 (callers guarantee it: all values are bounded).
pub fn put_tlv_header(out: &mut Vec<u8>, typ: u16, len: usize) {
    debug_assert!(len <= usize::from(u16::MAX));
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Append a whole TLV.
pub fn put_tlv(out: &mut Vec<u8>, typ: u16, value: &[u8]) {
    put_tlv_header(out, typ, value.len());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_back_to_back() {
        let mut b = Vec::new();
        put_tlv(&mut b, 1, b"ab");
        put_tlv(&mut b, 0x0102, b"");
        put_tlv(&mut b, 0xffff, &[7; 300]);
        let v: Vec<_> = TlvIter::new(&b).collect::<Result<_, _>>().unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], (1, &b"ab"[..]));
        assert_eq!(v[1], (0x0102, &b""[..]));
        assert_eq!(v[2].1.len(), 300);
        assert_eq!(&b[..4], &[0, 1, 0, 2]);
    }

    #[test]
    fn truncation_is_an_error_once() {
        let mut it = TlvIter::new(&[0, 1, 0]);
        assert_eq!(it.next(), Some(Err(WireError::TruncatedHeader)));
        assert_eq!(it.next(), None);
        let mut it = TlvIter::new(&[0, 1, 0, 3, 1, 2]);
        assert_eq!(it.next(), Some(Err(WireError::TruncatedValue { typ: 1 })));
        assert_eq!(it.next(), None);
        assert_eq!(TlvIter::new(&[]).next(), None);
    }
}
