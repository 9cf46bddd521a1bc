//! The federation's messages, byte by byte (docs/federation.md, "Message formats").
//!
//! Every NATS payload is one binary Fernet token under the cluster key; its plaintext is a
//! 20-byte header and one body:
//!
//! ```text
//! format u8 (1) ‖ kind u8 ‖ origin u8 (relay id) ‖ reserved u8 (0) ‖ incarnation u64 ‖ seq u64 ‖ body
//! ```
//!
//! | kind | name | body |
//! |---|---|---|
//! | 1 | DATA | `sender u32`, `name_len u8`, `name`, `data` (the rest, ≤ 65535 bytes) |
//! | 2 | JOIN | `client u32`, `name_len u8`, `name` |
//! | 3 | LEAVE | `client u32`, `reason u8` |
//! | 4 | HEARTBEAT | `interval_ms u32`, `members u32`, `digest u64`, `n u8`, n × (`relay u8`, `received u64`) |
//! | 5 | ROSTER | `snapshot u64`, `part u16`, `parts u16`, `members u32`, `digest u64`, entries (`client u32`, `name_len u8`, `name`) to the end |
//! | 6 | SYNC | `target u8` (0: every relay) |
//! | 7 | BYE | empty |
//!
//! The parser is exact: every field checked, nothing after the body, names valid admission
//! names (1-32 bytes of `A-Z a-z 0-9 . _ -`, or absent), every client id carrying the origin
//! in its high byte and not 0 below it.

use std::fmt;

use crate::config::valid_name;
use crate::core::{RosterDigest, relay_of};
use crate::wire::{MAX_BODY, MAX_NAME};

/// The format byte of this version.
pub const FORMAT: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 20;
/// Heartbeat intervals a receiver accepts, in milliseconds.
pub const INTERVAL_MS: std::ops::RangeInclusive<u32> = 10..=60_000;
/// Most parts of one roster snapshot.
pub const MAX_ROSTER_PARTS: u16 = 1024;
/// Entry bytes per roster part (a part may exceed it by one entry).
pub const ROSTER_PART_BYTES: usize = 16 * 1024;
/// Longest plaintext: a DATA with the longest name and body.
pub const MAX_PLAINTEXT: usize = HEADER_LEN + 4 + 1 + MAX_NAME + MAX_BODY;

/// The kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A client message.
    Data = 1,
    /// A client registered.
    Join = 2,
    /// A client left.
    Leave = 3,
    /// Liveness and a roster summary.
    Heartbeat = 4,
    /// Part of a roster snapshot.
    Roster = 5,
    /// Please publish your roster.
    Sync = 6,
    /// The relay is shutting down.
    Bye = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Data,
            2 => Kind::Join,
            3 => Kind::Leave,
            4 => Kind::Heartbeat,
            5 => Kind::Roster,
            6 => Kind::Sync,
            7 => Kind::Bye,
            _ => return None,
        })
    }
}

/// Who sent a message, and its place in that sender's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The relay id of the publisher.
    pub origin: u8,
    /// The publisher's incarnation (its start time in microseconds since the Unix epoch).
    pub incarnation: u64,
    /// The publisher's sequence number, from 1 per incarnation, one per message.
    pub seq: u64,
}

/// `(relay, received)` pairs of a heartbeat: DATA messages the publisher received from each
/// relay in that relay's current incarnation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Received<'a>(&'a [u8]);

impl<'a> Received<'a> {
    /// Every pair.
    pub fn iter(&self) -> impl Iterator<Item = (u8, u64)> + 'a {
        self.0.chunks_exact(9).map(|c| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&c[1..]);
            (c[0], u64::from_be_bytes(n))
        })
    }

    /// The count for `relay`.
    pub fn get(&self, relay: u8) -> Option<u64> {
        self.iter().find(|(r, _)| *r == relay).map(|(_, n)| n)
    }
}

impl fmt::Debug for Received<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Roster entries, parsed lazily (they were validated by [`parse`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Entries<'a>(&'a [u8]);

impl<'a> Entries<'a> {
    /// `(client, name)` of every entry.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Option<&'a str>)> + 'a {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let (id, name, tail) = entry(rest)?;
            rest = tail;
            Some((id, name))
        })
    }
}

impl fmt::Debug for Entries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One message, borrowing the plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg<'a> {
    /// A message of client `sender` of the origin.
    Data {
        /// The client.
        sender: u32,
        /// Its admission name.
        name: Option<&'a str>,
        /// The body.
        data: &'a [u8],
    },
    /// Client `client` of the origin registered.
    Join {
        /// The client.
        client: u32,
        /// Its admission name.
        name: Option<&'a str>,
    },
    /// Client `client` of the origin left.
    Leave {
        /// The client.
        client: u32,
        /// A [`LeaveReason`](crate::wire::LeaveReason) value.
        reason: u8,
    },
    /// The origin is alive, with `roster` clients.
    Heartbeat {
        /// Its heartbeat interval.
        interval_ms: u32,
        /// Its clients.
        roster: RosterDigest,
        /// What it received from each relay.
        received: Received<'a>,
    },
    /// Part `part` of `parts` of the origin's roster, as of sequence number `snapshot`.
    Roster {
        /// The sequence number of part 0 (part `k` has `snapshot + k`).
        snapshot: u64,
        /// This part, from 0.
        part: u16,
        /// How many.
        parts: u16,
        /// The whole roster's summary.
        total: RosterDigest,
        /// This part's entries.
        entries: Entries<'a>,
    },
    /// Relay `target` (0: every relay), please publish your roster.
    Sync {
        /// The relay asked.
        target: u8,
    },
    /// The origin is shutting down; its clients are gone.
    Bye,
}

impl Msg<'_> {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Msg::Data { .. } => Kind::Data,
            Msg::Join { .. } => Kind::Join,
            Msg::Leave { .. } => Kind::Leave,
            Msg::Heartbeat { .. } => Kind::Heartbeat,
            Msg::Roster { .. } => Kind::Roster,
            Msg::Sync { .. } => Kind::Sync,
            Msg::Bye => Kind::Bye,
        }
    }
}

/// Why a plaintext was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its fields.
    Truncated,
    /// A format other than [`FORMAT`].
    Format(u8),
    /// An unknown kind.
    Kind(u8),
    /// A field out of range (named).
    Value(&'static str),
    /// Bytes after the body.
    Trailing,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated => f.write_str("truncated"),
            ParseError::Format(b) => write!(f, "format {b}, not {FORMAT}"),
            ParseError::Kind(b) => write!(f, "unknown kind {b}"),
            ParseError::Value(w) => write!(f, "bad {w}"),
            ParseError::Trailing => f.write_str("trailing bytes"),
        }
    }
}

impl std::error::Error for ParseError {}

/// A bounded cursor over a plaintext.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.0.len() < n {
            return Err(ParseError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ParseError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn end(&self) -> Result<(), ParseError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ParseError::Trailing)
        }
    }
    /// `name_len u8`, `name`: `None` for length 0.
    fn name(&mut self) -> Result<Option<&'a str>, ParseError> {
        let n = usize::from(self.u8()?);
        if n == 0 {
            return Ok(None);
        }
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) if valid_name(s) => Ok(Some(s)),
            _ => Err(ParseError::Value("name")),
        }
    }
}

/// A client id of relay `origin`: its high byte, and not 0 below it.
fn client_of(id: u32, origin: u8) -> Result<u32, ParseError> {
    if relay_of(id) != origin || id & 0x00ff_ffff == 0 {
        return Err(ParseError::Value("client id"));
    }
    Ok(id)
}

/// One roster entry: `(id, name, rest)`. Ids are checked by [`parse`], not here.
fn entry(b: &[u8]) -> Option<(u32, Option<&str>, &[u8])> {
    let mut r = Reader(b);
    let id = r.u32().ok()?;
    let name = r.name().ok()?;
    Some((id, name, r.0))
}

/// Parse a plaintext (exact: see the module docs).
pub fn parse(plain: &[u8]) -> Result<(Header, Msg<'_>), ParseError> {
    let mut r = Reader(plain);
    let (kind, h) = header(&mut r)?;
    let msg = match kind {
        Kind::Data => {
            let sender = client_of(r.u32()?, h.origin)?;
            let name = r.name()?;
            let data = r.rest();
            if data.len() > MAX_BODY {
                return Err(ParseError::Value("data length"));
            }
            Msg::Data { sender, name, data }
        }
        Kind::Join => {
            let client = client_of(r.u32()?, h.origin)?;
            Msg::Join {
                client,
                name: r.name()?,
            }
        }
        Kind::Leave => {
            let client = client_of(r.u32()?, h.origin)?;
            Msg::Leave {
                client,
                reason: r.u8()?,
            }
        }
        Kind::Heartbeat => heartbeat(&mut r)?,
        Kind::Roster => roster(&mut r, &h)?,
        Kind::Sync => Msg::Sync { target: r.u8()? },
        Kind::Bye => Msg::Bye,
    };
    r.end()?;
    Ok((h, msg))
}

/// The 20-byte header, checked field by field in order.
fn header(r: &mut Reader<'_>) -> Result<(Kind, Header), ParseError> {
    let format = r.u8()?;
    if format != FORMAT {
        return Err(ParseError::Format(format));
    }
    let kind = r.u8()?;
    let kind = Kind::from_u8(kind).ok_or(ParseError::Kind(kind))?;
    let origin = r.u8()?;
    if origin == 0 {
        return Err(ParseError::Value("origin"));
    }
    if r.u8()? != 0 {
        return Err(ParseError::Value("reserved"));
    }
    let incarnation = r.u64()?;
    let seq = r.u64()?;
    if seq == 0 {
        return Err(ParseError::Value("seq"));
    }
    let h = Header {
        origin,
        incarnation,
        seq,
    };
    Ok((kind, h))
}

/// HEARTBEAT's body: the interval, the roster summary, and (relay, received) pairs, each
/// relay once and none 0.
fn heartbeat<'a>(r: &mut Reader<'a>) -> Result<Msg<'a>, ParseError> {
    let interval_ms = r.u32()?;
    if !INTERVAL_MS.contains(&interval_ms) {
        return Err(ParseError::Value("interval"));
    }
    let roster = RosterDigest {
        members: r.u32()?,
        digest: r.u64()?,
    };
    let n = usize::from(r.u8()?);
    let pairs = r.take(n * 9)?;
    let received = Received(pairs);
    let mut seen = [false; 256];
    for (relay, _) in received.iter() {
        if relay == 0 || std::mem::replace(&mut seen[usize::from(relay)], true) {
            return Err(ParseError::Value("received relay"));
        }
    }
    Ok(Msg::Heartbeat {
        interval_ms,
        roster,
        received,
    })
}

/// ROSTER's body: which part of which snapshot (numbered by the seq of its part 0), the
/// snapshot's summary, and entries of the origin's clients to the end.
fn roster<'a>(r: &mut Reader<'a>, h: &Header) -> Result<Msg<'a>, ParseError> {
    let snapshot = r.u64()?;
    let part = r.u16()?;
    let parts = r.u16()?;
    if parts == 0 || parts > MAX_ROSTER_PARTS || part >= parts {
        return Err(ParseError::Value("roster part"));
    }
    if h.seq.checked_sub(u64::from(part)) != Some(snapshot) {
        return Err(ParseError::Value("roster snapshot"));
    }
    let total = RosterDigest {
        members: r.u32()?,
        digest: r.u64()?,
    };
    let bytes = r.rest();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((id, _, tail)) = entry(rest) else {
            return Err(ParseError::Value("roster entry"));
        };
        client_of(id, h.origin)?;
        rest = tail;
    }
    Ok(Msg::Roster {
        snapshot,
        part,
        parts,
        total,
        entries: Entries(bytes),
    })
}

fn put_name(out: &mut Vec<u8>, name: Option<&str>) {
    let name = name.map(str::as_bytes).unwrap_or_default();
    let name = &name[..name.len().min(MAX_NAME)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

/// Append one roster entry (for [`write()`] of a [`Msg::Roster`], whose `entries` are bytes).
pub fn put_entry(out: &mut Vec<u8>, id: u32, name: Option<&str>) {
    out.extend_from_slice(&id.to_be_bytes());
    put_name(out, name);
}

/// Bytes of one roster entry.
pub fn entry_len(name: Option<&str>) -> usize {
    5 + name.map_or(0, |n| n.len().min(MAX_NAME))
}

/// Append the plaintext of `msg` from `h` to `out`. `Roster` entries and `Heartbeat` pairs
/// are written from the raw bytes they hold (see [`put_entry`], [`heartbeat_pairs`]).
pub fn write(out: &mut Vec<u8>, h: &Header, msg: &Msg<'_>) {
    out.push(FORMAT);
    out.push(msg.kind() as u8);
    out.push(h.origin);
    out.push(0);
    out.extend_from_slice(&h.incarnation.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    match msg {
        Msg::Data { sender, name, data } => {
            out.extend_from_slice(&sender.to_be_bytes());
            put_name(out, *name);
            out.extend_from_slice(data);
        }
        Msg::Join { client, name } => {
            out.extend_from_slice(&client.to_be_bytes());
            put_name(out, *name);
        }
        Msg::Leave { client, reason } => {
            out.extend_from_slice(&client.to_be_bytes());
            out.push(*reason);
        }
        Msg::Heartbeat {
            interval_ms,
            roster,
            received,
        } => {
            out.extend_from_slice(&interval_ms.to_be_bytes());
            out.extend_from_slice(&roster.members.to_be_bytes());
            out.extend_from_slice(&roster.digest.to_be_bytes());
            out.push((received.0.len() / 9) as u8);
            out.extend_from_slice(received.0);
        }
        Msg::Roster {
            snapshot,
            part,
            parts,
            total,
            entries,
        } => {
            out.extend_from_slice(&snapshot.to_be_bytes());
            out.extend_from_slice(&part.to_be_bytes());
            out.extend_from_slice(&parts.to_be_bytes());
            out.extend_from_slice(&total.members.to_be_bytes());
            out.extend_from_slice(&total.digest.to_be_bytes());
            out.extend_from_slice(entries.0);
        }
        Msg::Sync { target } => out.push(*target),
        Msg::Bye => {}
    }
}

/// [`Received`] over `bytes`, which must be whole `(relay u8, received u64)` pairs, at most 255
/// of them (the rest is ignored).
pub fn heartbeat_pairs(bytes: &[u8]) -> Received<'_> {
    let n = (bytes.len() / 9).min(255);
    Received(&bytes[..n * 9])
}

/// [`Entries`] over `bytes` written with [`put_entry`].
pub fn roster_entries(bytes: &[u8]) -> Entries<'_> {
    Entries(bytes)
}

/// The NATS subject relay `relay` of `cluster` publishes to: `mcrelay.<cluster>.<relay>`.
pub fn subject(cluster: &str, relay: u8) -> String {
    format!("mcrelay.{cluster}.{relay}")
}

/// The subscription that receives every relay of `cluster`: `mcrelay.<cluster>.*`.
pub fn filter(cluster: &str) -> String {
    format!("mcrelay.{cluster}.*")
}

/// Is `name` a valid cluster name: 1-64 bytes of `A-Z a-z 0-9 _ -` (one subject token)?
pub fn valid_cluster(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(seq: u64) -> Header {
        Header {
            origin: 2,
            incarnation: 0x0102_0304_0506_0708,
            seq,
        }
    }

    fn round_trip(msg: Msg<'_>) {
        let mut out = Vec::new();
        write(
            &mut out,
            &h(7 + u64::from(matches!(msg, Msg::Roster { part: 1, .. }))),
            &msg,
        );
        let (hh, m) = parse(&out).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
        assert_eq!(m, msg);
        assert_eq!(hh.origin, 2);
        // DATA and ROSTER end with a variable part (the Fernet token fixes the length):
        // every cut inside the fixed part is refused, and for the others every cut.
        let fixed = match msg {
            Msg::Data { name, .. } => HEADER_LEN + 5 + name.map_or(0, str::len),
            Msg::Roster { .. } => HEADER_LEN + 24,
            _ => out.len(),
        };
        for cut in 0..fixed {
            assert!(parse(&out[..cut]).is_err(), "{msg:?} cut at {cut}");
        }
        out.push(0);
        if !matches!(msg, Msg::Data { .. } | Msg::Roster { .. }) {
            assert_eq!(parse(&out).err(), Some(ParseError::Trailing), "{msg:?}");
        }
    }

    #[test]
    fn every_kind_round_trips_and_every_cut_is_refused() {
        round_trip(Msg::Data {
            sender: 0x0200_0001,
            name: Some("ann"),
            data: b"hello",
        });
        round_trip(Msg::Join {
            client: 0x0200_0002,
            name: None,
        });
        round_trip(Msg::Leave {
            client: 0x0200_0002,
            reason: 6,
        });
        let mut pairs = Vec::new();
        pairs.push(1);
        pairs.extend_from_slice(&5u64.to_be_bytes());
        round_trip(Msg::Heartbeat {
            interval_ms: 1000,
            roster: RosterDigest {
                members: 2,
                digest: 99,
            },
            received: heartbeat_pairs(&pairs),
        });
        let mut e = Vec::new();
        put_entry(&mut e, 0x0200_0001, Some("ann"));
        put_entry(&mut e, 0x0200_0002, None);
        round_trip(Msg::Roster {
            snapshot: 7,
            part: 1,
            parts: 2,
            total: RosterDigest {
                members: 2,
                digest: 5,
            },
            entries: roster_entries(&e),
        });
        round_trip(Msg::Sync { target: 0 });
        round_trip(Msg::Bye);
    }

    #[test]
    fn fields_are_checked() {
        let mut out = Vec::new();
        // A sender of another relay.
        let bad = Msg::Data {
            sender: 0x0300_0001,
            name: None,
            data: b"",
        };
        write(&mut out, &h(1), &bad);
        assert_eq!(parse(&out).err(), Some(ParseError::Value("client id")));
        out.clear();
        write(
            &mut out,
            &h(1),
            &Msg::Join {
                client: 0x0200_0000,
                name: None,
            },
        );
        assert_eq!(parse(&out).err(), Some(ParseError::Value("client id")));
        // A name with a space.
        out.clear();
        write(
            &mut out,
            &h(1),
            &Msg::Join {
                client: 0x0200_0001,
                name: Some("a b"),
            },
        );
        assert_eq!(parse(&out).err(), Some(ParseError::Value("name")));
        // seq 0, origin 0, format 2, kind 9, reserved 1.
        out.clear();
        write(&mut out, &h(0), &Msg::Bye);
        assert_eq!(parse(&out).err(), Some(ParseError::Value("seq")));
        let mut ok = Vec::new();
        write(&mut ok, &h(1), &Msg::Bye);
        for (at, v, want) in [
            (0, 2, ParseError::Format(2)),
            (1, 9, ParseError::Kind(9)),
            (2, 0, ParseError::Value("origin")),
            (3, 1, ParseError::Value("reserved")),
        ] {
            let mut b = ok.clone();
            b[at] = v;
            assert_eq!(parse(&b).err(), Some(want));
        }
        // A roster part whose seq does not follow its snapshot.
        out.clear();
        let m = Msg::Roster {
            snapshot: 3,
            part: 0,
            parts: 1,
            total: RosterDigest::default(),
            entries: roster_entries(&[]),
        };
        write(&mut out, &h(4), &m);
        assert_eq!(
            parse(&out).err(),
            Some(ParseError::Value("roster snapshot"))
        );
        // Heartbeat interval out of range, and a relay listed twice.
        out.clear();
        let hb = |ms, pairs| Msg::Heartbeat {
            interval_ms: ms,
            roster: RosterDigest::default(),
            received: heartbeat_pairs(pairs),
        };
        write(&mut out, &h(1), &hb(5, &[]));
        assert_eq!(parse(&out).err(), Some(ParseError::Value("interval")));
        let twice = [[1u8, 0, 0, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 0, 0, 2]].concat();
        out.clear();
        write(&mut out, &h(1), &hb(1000, &twice));
        assert_eq!(parse(&out).err(), Some(ParseError::Value("received relay")));
    }

    #[test]
    fn roster_heartbeat_and_data_bounds_are_checked() {
        let refused = |seq, m: &Msg<'_>| {
            let mut out = Vec::new();
            write(&mut out, &h(seq), m);
            parse(&out).err()
        };
        let roster = |snapshot, part, parts, e| Msg::Roster {
            snapshot,
            part,
            parts,
            total: RosterDigest::default(),
            entries: roster_entries(e),
        };
        let part = Some(ParseError::Value("roster part"));
        assert_eq!(refused(1, &roster(1, 0, 0, &[])), part);
        assert_eq!(refused(3, &roster(1, 2, 2, &[])), part);
        assert_eq!(refused(1, &roster(1, 0, MAX_ROSTER_PARTS + 1, &[])), part);
        assert_eq!(refused(1, &roster(1, 0, MAX_ROSTER_PARTS, &[])), None);
        assert_eq!(
            refused(1, &roster(1, 0, 1, &[2, 0])),
            Some(ParseError::Value("roster entry"))
        );
        let mut theirs = Vec::new();
        put_entry(&mut theirs, 0x0300_0001, None);
        assert_eq!(
            refused(1, &roster(1, 0, 1, &theirs)),
            Some(ParseError::Value("client id"))
        );
        let relay_0 = [0u8, 0, 0, 0, 0, 0, 0, 0, 1];
        let hb = Msg::Heartbeat {
            interval_ms: 1000,
            roster: RosterDigest::default(),
            received: heartbeat_pairs(&relay_0),
        };
        assert_eq!(refused(1, &hb), Some(ParseError::Value("received relay")));
        let big = vec![0; MAX_BODY + 1];
        let data = Msg::Data {
            sender: 0x0200_0001,
            name: None,
            data: &big,
        };
        assert_eq!(refused(1, &data), Some(ParseError::Value("data length")));
    }

    #[test]
    fn subjects_and_cluster_names() {
        assert_eq!(subject("prod", 3), "mcrelay.prod.3");
        assert_eq!(filter("prod"), "mcrelay.prod.*");
        assert!(crate::nats::validate_subject(&subject("a-b_9", 255), false).is_ok());
        assert!(valid_cluster("eu-west_1"));
        for bad in ["", "a.b", "a b", "a*", &"x".repeat(65)] {
            assert!(!valid_cluster(bad), "{bad:?}");
        }
    }
}
