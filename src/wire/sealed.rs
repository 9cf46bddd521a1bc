//! Sealed plaintexts: exact-shape parsing and encoding (protocol.md §2, §12).
//!
//! A plaintext is `SEQ`, for version 3 an optional `GSEQ` (the group sequence number of a
//! group item delivered in a member's own channel), then exactly one of the bodies the
//! protocol lists. [`parse_sealed`] reads all of them; [`parse_inner`] is the version 1 and 2
//! subset (no `GSEQ`).

use std::net::{Ipv4Addr, SocketAddrV4};

use super::reader::Reader;
use super::tlv::{TlvIter, WireError, put_tlv, put_tlv_header};
use super::{MAX_BODY, MAX_NAME, V3_FRAGMENT_CHUNK, V3_MAX_FRAGMENTS, inner};

/// How a relay distributes messages (the `DIST` TLV of a version-3 WELCOME).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dist {
    /// Every message comes in the member's own channel.
    Unicast,
    /// Messages come once, on a multicast group, under the group key.
    Group {
        /// The distribution group.
        addr: SocketAddrV4,
        /// How long a member keeps the previous epoch's key after installing a new one.
        grace_ms: u32,
    },
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
        /// Version 3: how messages will come.
        dist: Option<Dist>,
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
    /// Version 3, both ways and on the group: one piece of a body too large for one token.
    Frag {
        /// The message the piece belongs to.
        msg_id: u32,
        /// Position, from 0.
        index: u16,
        /// Number of pieces, 2..=64.
        count: u16,
        /// The bytes: exactly 1088 unless it is the last piece.
        chunk: &'a [u8],
    },
    /// Version 3, R→C: the group key of an epoch.
    GroupKey {
        /// The epoch the key belongs to.
        epoch: u32,
        /// The Fernet key, raw: signing key ‖ encryption key.
        key: &'a [u8; 32],
    },
    /// Version 3, C→R: I hold the group key of `epoch`.
    KeyAck {
        /// The epoch installed.
        epoch: u32,
    },
    /// Version 3, C→R: I saw `epoch` on the group and hold no key for it.
    KeyPull {
        /// The epoch seen.
        epoch: u32,
    },
    /// Version 3, R→C: part of the member list a newcomer gets (see [`members`]).
    Members {
        /// The last part.
        last: bool,
        /// Entries: `id u32, name_len u8, name`.
        entries: &'a [u8],
    },
}

impl Body<'_> {
    /// Does this body exist in protocol `version` (1 and 2 know none of the version-3 ones)?
    pub fn in_version(&self, version: u16) -> bool {
        match self {
            Body::Frag { .. }
            | Body::GroupKey { .. }
            | Body::KeyAck { .. }
            | Body::KeyPull { .. }
            | Body::Members { .. } => version >= 3,
            Body::Welcome { dist, .. } => dist.is_some() == (version >= 3),
            _ => true,
        }
    }
}

/// A parsed sealed plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// The sender's sequence number for this token.
    pub seq: u64,
    /// Version 3: the group sequence number of a group item carried in a channel.
    pub gseq: Option<u64>,
    /// What it says.
    pub body: Body<'a>,
}

/// DIST value: mode u8, group address [4], group port u16, grace_ms u32.
const DIST_LEN: usize = 11;

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

    /// An optional TLV of type `t`, next.
    fn optional(&mut self, t: u16) -> Result<Option<&'a [u8]>, WireError> {
        match self.next()? {
            Some((typ, v)) if typ == t => Ok(Some(v)),
            other => {
                self.peeked = other;
                Ok(None)
            }
        }
    }

    /// An optional NAME, next.
    fn name(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        self.optional(inner::NAME)?.map(name_of).transpose()
    }
}

/// Parse a version 1 or 2 sealed plaintext: SEQ first, then exactly one of the listed shapes
/// (protocol.md §2). A `GSEQ` is refused here.
pub fn parse_inner(plain: &[u8]) -> Result<(u64, Body<'_>), WireError> {
    let s = parse_sealed(plain)?;
    if s.gseq.is_some() {
        return Err(WireError::UnknownType(inner::GSEQ));
    }
    Ok((s.seq, s.body))
}

/// Parse any sealed plaintext: SEQ, an optional GSEQ, then exactly one body.
pub fn parse_sealed(plain: &[u8]) -> Result<Sealed<'_>, WireError> {
    let mut tlvs = Tlvs {
        it: TlvIter::new(plain),
        peeked: None,
    };
    let (t, v) = tlvs.next()?.ok_or(WireError::Empty)?;
    if t != inner::SEQ {
        return Err(WireError::BadSequence);
    }
    let seq = Reader::new(t, v).exactly(8)?.u64("seq")?;
    let gseq = match tlvs.optional(inner::GSEQ)? {
        Some(v) => Some(Reader::new(inner::GSEQ, v).exactly(8)?.u64("gseq")?),
        None => None,
    };
    let (t, v) = tlvs.next()?.ok_or(WireError::BadSequence)?;
    let body = body(Reader::new(t, v), t, &mut tlvs)?;
    // A GSEQ only numbers group items.
    if gseq.is_some()
        && !matches!(
            body,
            Body::Message { .. } | Body::Join { .. } | Body::Leave { .. }
        )
    {
        return Err(WireError::BadSequence);
    }
    if tlvs.next()?.is_some() {
        return Err(WireError::TrailingData);
    }
    Ok(Sealed { seq, gseq, body })
}

/// Parse the bytes a version-3 reassembly produced: the TLVs that follow SEQ in an
/// unfragmented token (an optional GSEQ and one body), under the SEQ `seq` of the token that
/// completed it.
pub fn parse_reassembled(seq: u64, body_tlvs: &[u8]) -> Result<Sealed<'_>, WireError> {
    let mut tlvs = Tlvs {
        it: TlvIter::new(body_tlvs),
        peeked: None,
    };
    let gseq = match tlvs.optional(inner::GSEQ)? {
        Some(v) => Some(Reader::new(inner::GSEQ, v).exactly(8)?.u64("gseq")?),
        None => None,
    };
    let (t, v) = tlvs.next()?.ok_or(WireError::Empty)?;
    let body = body(Reader::new(t, v), t, &mut tlvs)?;
    // A reassembled body is a message or a notice, never another fragment.
    if matches!(body, Body::Frag { .. }) {
        return Err(WireError::BadSequence);
    }
    if tlvs.next()?.is_some() {
        return Err(WireError::TrailingData);
    }
    Ok(Sealed { seq, gseq, body })
}

fn dist(mut r: Reader<'_>) -> Result<Dist, WireError> {
    let mode = r.u8("mode")?;
    let ip = Ipv4Addr::from(*r.array::<4>("group address")?);
    let port = r.u16("group port")?;
    let grace_ms = r.u32("grace_ms")?;
    match mode {
        1 if ip.is_unspecified() && port == 0 && grace_ms == 0 => Ok(Dist::Unicast),
        2 if ip.is_multicast() && port != 0 => Ok(Dist::Group {
            addr: SocketAddrV4::new(ip, port),
            grace_ms,
        }),
        _ => Err(r.bad("mode")),
    }
}

fn frag(mut r: Reader<'_>) -> Result<Body<'_>, WireError> {
    let (msg_id, index, count) = (r.u32("msg_id")?, r.u16("index")?, r.u16("count")?);
    let chunk = r.rest();
    if !(2..=V3_MAX_FRAGMENTS as u16).contains(&count) {
        return Err(r.bad("count"));
    }
    if index >= count {
        return Err(r.bad("index"));
    }
    let last = index + 1 == count;
    let ok = if last {
        (1..=V3_FRAGMENT_CHUNK).contains(&chunk.len())
    } else {
        chunk.len() == V3_FRAGMENT_CHUNK
    };
    if !ok {
        return Err(r.bad("chunk length"));
    }
    Ok(Body::Frag {
        msg_id,
        index,
        count,
        chunk,
    })
}

/// The body that TLV `t` (read by `r`) starts; its optional NAME, DATA or DIST follow in
/// `tlvs`.
fn body<'a>(r: Reader<'a>, t: u16, tlvs: &mut Tlvs<'a>) -> Result<Body<'a>, WireError> {
    Ok(match t {
        inner::DATA if r.left() > MAX_BODY => return Err(r.bad("length")),
        inner::DATA => Body::Data(r.into_rest()),
        inner::KEEPALIVE => r.exactly(0).map(|_| Body::Keepalive)?,
        inner::KEEPALIVE_ACK => r.exactly(0).map(|_| Body::KeepaliveAck)?,
        inner::DISCONNECT => r.exactly(0).map(|_| Body::Disconnect)?,
        inner::SHUTDOWN => r.exactly(0).map(|_| Body::Shutdown)?,
        inner::WELCOME => welcome(r, tlvs)?,
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
        inner::FRAG => frag(r)?,
        inner::GROUP_KEY => {
            let mut r = r.exactly(4 + 32)?;
            Body::GroupKey {
                epoch: r.u32("epoch")?,
                key: r.array("key")?,
            }
        }
        inner::KEY_ACK => Body::KeyAck {
            epoch: r.exactly(4)?.u32("epoch")?,
        },
        inner::KEY_PULL => Body::KeyPull {
            epoch: r.exactly(4)?.u32("epoch")?,
        },
        inner::MEMBERS => {
            let mut r = r;
            let flags = r.u8("flags")?;
            let entries = r.rest();
            if flags > 1 || members(entries).any(|e| e.is_err()) {
                return Err(WireError::BadValue {
                    typ: inner::MEMBERS,
                    field: "entries",
                });
            }
            Body::Members {
                last: flags == 1,
                entries,
            }
        }
        inner::SEQ | inner::NAME | inner::GSEQ | inner::DIST => {
            return Err(WireError::BadSequence);
        }
        t => return Err(WireError::UnknownType(t)),
    })
}

fn welcome<'a>(r: Reader<'a>, tlvs: &mut Tlvs<'a>) -> Result<Body<'a>, WireError> {
    let mut r = r.exactly(12)?;
    let (id, keepalive_ms) = (r.u32("id")?, r.u32("keepalive_ms")?);
    let timeout_ms = r.u32("timeout_ms")?;
    let name = tlvs.name()?;
    let dist = match tlvs.optional(inner::DIST)? {
        Some(v) => Some(dist(Reader::new(inner::DIST, v).exactly(DIST_LEN)?)?),
        None => None,
    };
    Ok(Body::Welcome {
        id,
        keepalive_ms,
        timeout_ms,
        name,
        dist,
    })
}

/// One entry of a MEMBERS list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// The member's id.
    pub id: u32,
    /// Its admission name.
    pub name: Option<&'a [u8]>,
}

/// The entries of a MEMBERS value (`id u32, name_len u8, name`), each checked.
pub fn members(mut entries: &[u8]) -> impl Iterator<Item = Result<Member<'_>, WireError>> {
    let bad = WireError::BadValue {
        typ: inner::MEMBERS,
        field: "entries",
    };
    std::iter::from_fn(move || {
        if entries.is_empty() {
            return None;
        }
        let Some((head, rest)) = entries.split_first_chunk::<5>() else {
            entries = &[];
            return Some(Err(bad));
        };
        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = usize::from(head[4]);
        if len > MAX_NAME || rest.len() < len {
            entries = &[];
            return Some(Err(bad));
        }
        let (name, tail) = rest.split_at(len);
        entries = tail;
        Some(Ok(Member {
            id,
            name: (len > 0).then_some(name),
        }))
    })
}

/// Append one MEMBERS entry.
pub fn put_member(out: &mut Vec<u8>, id: u32, name: Option<&[u8]>) {
    let name = name.unwrap_or_default();
    let name = &name[..name.len().min(MAX_NAME)];
    out.extend_from_slice(&id.to_be_bytes());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

/// Cut a member list into the entries of MEMBERS messages of at most `part_bytes` bytes each
/// (an entry is never split). An empty list is one empty part: "nobody else".
pub fn member_parts<'a>(
    members: impl Iterator<Item = (u32, Option<&'a [u8]>)>,
    part_bytes: usize,
) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut entries = Vec::new();
    for (id, name) in members {
        // The largest entry still fits after this one.
        if entries.len() + 5 + MAX_NAME > part_bytes {
            parts.push(std::mem::take(&mut entries));
        }
        put_member(&mut entries, id, name);
    }
    if !entries.is_empty() || parts.is_empty() {
        parts.push(entries);
    }
    parts
}

/// Append the sealed plaintext `SEQ, body` to `out`.
pub fn write_inner(out: &mut Vec<u8>, seq: u64, body: &Body<'_>) {
    write_sealed(out, seq, None, body);
}

/// Append the sealed plaintext `SEQ [, GSEQ], body` to `out`.
pub fn write_sealed(out: &mut Vec<u8>, seq: u64, gseq: Option<u64>, body: &Body<'_>) {
    put_tlv(out, inner::SEQ, &seq.to_be_bytes());
    write_body(out, gseq, body);
}

/// Append `[GSEQ,] body` (what follows SEQ): the bytes a fragmented message carries.
pub fn write_body(out: &mut Vec<u8>, gseq: Option<u64>, body: &Body<'_>) {
    if let Some(g) = gseq {
        put_tlv(out, inner::GSEQ, &g.to_be_bytes());
    }
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
            dist,
        } => {
            put_tlv_header(out, inner::WELCOME, 12);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&keepalive_ms.to_be_bytes());
            out.extend_from_slice(&timeout_ms.to_be_bytes());
            name(out, n);
            if let Some(d) = dist {
                write_dist(out, d);
            }
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
        Body::Frag {
            msg_id,
            index,
            count,
            chunk,
        } => {
            put_tlv_header(out, inner::FRAG, 8 + chunk.len());
            out.extend_from_slice(&msg_id.to_be_bytes());
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
            out.extend_from_slice(chunk);
        }
        Body::GroupKey { epoch, key } => {
            put_tlv_header(out, inner::GROUP_KEY, 36);
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(key);
        }
        Body::KeyAck { epoch } => put_tlv(out, inner::KEY_ACK, &epoch.to_be_bytes()),
        Body::KeyPull { epoch } => put_tlv(out, inner::KEY_PULL, &epoch.to_be_bytes()),
        Body::Members { last, entries } => {
            put_tlv_header(out, inner::MEMBERS, 1 + entries.len());
            out.push(u8::from(last));
            out.extend_from_slice(entries);
        }
    }
}

/// The DIST TLV of a version-3 WELCOME.
fn write_dist(out: &mut Vec<u8>, d: Dist) {
    let (mode, addr, grace_ms) = match d {
        Dist::Unicast => (1u8, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 0),
        Dist::Group { addr, grace_ms } => (2, addr, grace_ms),
    };
    put_tlv_header(out, inner::DIST, DIST_LEN);
    out.push(mode);
    out.extend_from_slice(&addr.ip().octets());
    out.extend_from_slice(&addr.port().to_be_bytes());
    out.extend_from_slice(&grace_ms.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

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
                dist: None,
            },
        );
        roundtrip_inner(
            7,
            Body::Welcome {
                id: 1,
                keepalive_ms: 1,
                timeout_ms: 2,
                name: Some(b"alice"),
                dist: None,
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

    fn roundtrip_sealed(s: Sealed<'_>) {
        let mut b = Vec::new();
        write_sealed(&mut b, s.seq, s.gseq, &s.body);
        assert_eq!(parse_sealed(&b), Ok(s));
    }

    #[test]
    fn version_3_bodies_roundtrip() {
        let key = [7u8; 32];
        let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 77), 5008);
        for body in [
            Body::Welcome {
                id: 9,
                keepalive_ms: 1,
                timeout_ms: 2,
                name: Some(b"bob"),
                dist: Some(Dist::Group {
                    addr: group,
                    grace_ms: 2000,
                }),
            },
            Body::Welcome {
                id: 9,
                keepalive_ms: 1,
                timeout_ms: 2,
                name: None,
                dist: Some(Dist::Unicast),
            },
            Body::Frag {
                msg_id: 3,
                index: 0,
                count: 2,
                chunk: &[1; V3_FRAGMENT_CHUNK],
            },
            Body::Frag {
                msg_id: 3,
                index: 1,
                count: 2,
                chunk: &[1; 5],
            },
            Body::GroupKey {
                epoch: 4,
                key: &key,
            },
            Body::KeyAck { epoch: 4 },
            Body::KeyPull { epoch: 5 },
            Body::Members {
                last: true,
                entries: &[0, 0, 0, 1, 0, 0, 0, 0, 2, 1, b'x'],
            },
        ] {
            roundtrip_sealed(Sealed {
                seq: 11,
                gseq: None,
                body,
            });
        }
        for body in [
            Body::Message {
                sender: 1,
                name: None,
                data: b"hi",
            },
            Body::Join { id: 2, name: None },
            Body::Leave { id: 2, reason: 3 },
        ] {
            roundtrip_sealed(Sealed {
                seq: 12,
                gseq: Some(1 << 40),
                body,
            });
        }
    }

    #[test]
    fn gseq_only_numbers_group_items_and_not_in_version_2() {
        let mut b = Vec::new();
        write_sealed(&mut b, 1, Some(5), &Body::KeepaliveAck);
        assert_eq!(parse_sealed(&b), Err(WireError::BadSequence));
        let mut b = Vec::new();
        write_sealed(&mut b, 1, Some(5), &Body::Join { id: 1, name: None });
        assert!(parse_sealed(&b).is_ok());
        assert_eq!(parse_inner(&b), Err(WireError::UnknownType(inner::GSEQ)));
    }

    #[test]
    fn version_3_shapes_are_checked() {
        // A fragment of the wrong size, a count past 64, a DIST with a unicast group.
        let mut b = Vec::new();
        let chunk = [0u8; 10];
        write_inner(
            &mut b,
            1,
            &Body::Frag {
                msg_id: 1,
                index: 0,
                count: 2,
                chunk: &chunk,
            },
        );
        assert!(parse_sealed(&b).is_err());
        let mut b = Vec::new();
        write_inner(
            &mut b,
            1,
            &Body::Frag {
                msg_id: 1,
                index: 0,
                count: 65,
                chunk: &[0; V3_FRAGMENT_CHUNK],
            },
        );
        assert!(parse_sealed(&b).is_err());
        let bad_group = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 5);
        let mut b = Vec::new();
        write_inner(
            &mut b,
            1,
            &Body::Welcome {
                id: 1,
                keepalive_ms: 1,
                timeout_ms: 1,
                name: None,
                dist: Some(Dist::Group {
                    addr: bad_group,
                    grace_ms: 2000,
                }),
            },
        );
        assert!(parse_sealed(&b).is_err());
        // MEMBERS with a name running past the end.
        let mut b = Vec::new();
        write_inner(
            &mut b,
            1,
            &Body::Members {
                last: false,
                entries: &[0, 0, 0, 1, 9, b'a'],
            },
        );
        assert!(parse_sealed(&b).is_err());
    }

    #[test]
    fn member_lists_are_cut_into_parts_that_fit_and_lose_nobody() {
        assert_eq!(
            member_parts(std::iter::empty(), 1000),
            vec![Vec::<u8>::new()]
        );
        let name = [b'n'; MAX_NAME];
        let list = (1..=100u32).map(|id| (id, (id % 2 == 0).then_some(&name[..])));
        let parts = member_parts(list, 1000);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= 1000));
        let ids: Vec<u32> = parts
            .iter()
            .flat_map(|p| members(p))
            .map(|m| m.map(|m| m.id))
            .collect::<Result<_, _>>()
            .expect("every part parses");
        assert_eq!(ids, (1..=100).collect::<Vec<_>>());
        // Each part but the last is full: one more largest entry would not have fit.
        for p in &parts[..parts.len() - 1] {
            assert!(p.len() + 5 + MAX_NAME > 1000);
        }
    }

    #[test]
    fn members_entries_roundtrip() {
        let mut e = Vec::new();
        put_member(&mut e, 1, None);
        put_member(&mut e, 70_000, Some(b"alice"));
        let got: Vec<_> = members(&e).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![
                Member { id: 1, name: None },
                Member {
                    id: 70_000,
                    name: Some(b"alice")
                }
            ]
        );
    }

    #[test]
    fn a_reassembled_body_parses_under_its_seq() {
        let mut body = Vec::new();
        write_body(
            &mut body,
            Some(77),
            &Body::Message {
                sender: 3,
                name: Some(b"n"),
                data: &[9; 3000],
            },
        );
        let s = parse_reassembled(40, &body).unwrap();
        assert_eq!((s.seq, s.gseq), (40, Some(77)));
        assert!(matches!(s.body, Body::Message { sender: 3, .. }));
        let mut frag = Vec::new();
        write_body(
            &mut frag,
            None,
            &Body::Frag {
                msg_id: 1,
                index: 0,
                count: 2,
                chunk: &[0; V3_FRAGMENT_CHUNK],
            },
        );
        assert_eq!(parse_reassembled(1, &frag), Err(WireError::BadSequence));
    }

    #[test]
    fn bodies_know_their_version() {
        assert!(!Body::KeyAck { epoch: 1 }.in_version(2));
        assert!(Body::KeyAck { epoch: 1 }.in_version(3));
        let w = |dist| Body::Welcome {
            id: 1,
            keepalive_ms: 1,
            timeout_ms: 1,
            name: None,
            dist,
        };
        assert!(w(None).in_version(2));
        assert!(!w(None).in_version(3));
        assert!(w(Some(Dist::Unicast)).in_version(3));
        assert!(Body::Data(b"").in_version(1));
    }
}
