//! Outgoing datagrams: one reusable buffer, encoded back to back, bounded in bytes.
//!
//! Everything the relay sends goes through here: handshake answers are written as they are,
//! sealed messages are laid out by [`Outbox::seal`] (one SEALED datagram or a run of
//! FRAGMENTs). The host drains [`Outbox::transmits`] and reports what the kernel took with
//! [`Outbox::advance`]. A datagram that does not fit under the cap is not queued; the caller
//! counts it (`send_queue_full`).

use std::net::SocketAddr;

use crate::core::session::Session;
use crate::core::stats::{DropReason, Stats};
use crate::crypto::fernet;
use crate::crypto::rng::Rng;
use crate::proto::fragment;
use crate::proto::group::EpochKey;
use crate::wire::{
    self, Body, FRAGMENT_CHUNK, FRAGMENT_HEADER, Outer, TLV_HEADER, V3_FRAGMENT_CHUNK, inner, outer,
};

/// Capacity kept across flushes; beyond it the buffers shrink, once [`SHRINK_AFTER`]
/// drains in a row used no more than this.
const KEEP_BYTES: usize = 256 * 1024;
const KEEP_ITEMS: usize = 2048;
/// Consecutive small drains (at most `KEEP_*` used) before oversized buffers shrink: a busy
/// relay whose every read batch fans out to more than `KEEP_*` keeps its capacity instead of
/// giving it back and reallocating it on every loop turn.
const SHRINK_AFTER: u32 = 64;

/// The queue of datagrams waiting for the socket.
#[derive(Debug)]
pub(crate) struct Outbox {
    buf: Vec<u8>,
    /// (destination, start in `buf`, length).
    items: Vec<(SocketAddr, usize, usize)>,
    head: usize,
    cap: usize,
    /// A token being cut into fragments.
    frag: Vec<u8>,
    /// Drains in a row that used at most `KEEP_*`, and the most they used.
    small_drains: u32,
    small_peak: (usize, usize),
}

/// What [`Outbox::seal`] did with one recipient's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sealed {
    /// Not queued: the send queue is full (counted).
    Dropped,
    /// Queued, encrypted and signed.
    Done,
    /// Queued, laid out by [`fernet::prepare_raw`] at this offset of the buffer; the caller
    /// encrypts and signs it ([`Outbox::token_mut`]).
    Pending(usize),
}

impl Outbox {
    /// An empty outbox holding at most `cap` bytes of datagrams.
    pub(crate) fn new(cap: usize) -> Self {
        Outbox {
            buf: Vec::new(),
            items: Vec::new(),
            head: 0,
            cap,
            frag: Vec::with_capacity(2048),
            small_drains: 0,
            small_peak: (0, 0),
        }
    }

    fn has_room(&self, extra: usize) -> bool {
        self.buf.len() + extra <= self.cap
    }

    fn commit(&mut self, to: SocketAddr, start: usize) {
        self.items.push((to, start, self.buf.len() - start));
    }

    /// Queue one handshake message for `to`; false (and counted) if the queue is full.
    pub(crate) fn push(&mut self, to: SocketAddr, msg: &Outer<'_>, stats: &mut Stats) -> bool {
        let start = self.buf.len();
        msg.write(&mut self.buf);
        if self.buf.len() > self.cap {
            self.buf.truncate(start);
            stats.count_drop(DropReason::SendQueueFull);
            return false;
        }
        self.commit(to, start);
        true
    }

    /// Seal `plain` for session `s` and queue it, fragmented if it does not fit one datagram.
    /// The SEQ value at `plain[4..12]` is patched with the session's next number. With
    /// `defer`, a single-datagram binary token is only laid out ([`fernet::prepare_raw`]) and
    /// [`Sealed::Pending`] says where, so that the caller can encrypt and sign several
    /// together.
    pub(crate) fn seal(
        &mut self,
        s: &mut Session,
        plain: &mut [u8],
        rng: &mut Rng,
        unix: u64,
        defer: bool,
        stats: &mut Stats,
    ) -> Sealed {
        if s.channel.version() >= 3 && !fragment::fits(plain.len(), fragment::SEALED_OVERHEAD) {
            return self.seal_pieces(s, plain, rng, unix, stats);
        }
        let seq = s.channel.next_seq();
        plain[4..12].copy_from_slice(&seq.to_be_bytes());
        let token_len = s.channel.token_len(plain.len());
        let n = wire::datagrams_for_token(token_len);
        let wire_bytes = if n == 1 {
            TLV_HEADER + token_len
        } else {
            token_len + n * (TLV_HEADER + FRAGMENT_HEADER)
        };
        if !self.has_room(wire_bytes) {
            stats.count_drop(DropReason::SendQueueFull);
            return Sealed::Dropped;
        }
        let iv = rng.iv();
        let mut sealed = Sealed::Done;
        if n == 1 {
            let start = self.buf.len();
            wire::put_tlv_header(&mut self.buf, outer::SEALED, token_len);
            if s.channel.binary() && defer {
                fernet::prepare_raw(&iv, unix, plain, &mut self.buf);
                sealed = Sealed::Pending(start + TLV_HEADER);
            } else {
                s.channel.seal_into(&iv, unix, plain, &mut self.buf);
            }
            self.commit(s.addr, start);
        } else {
            let mut frag = std::mem::take(&mut self.frag);
            frag.clear();
            s.channel.seal_into(&iv, unix, plain, &mut frag);
            let msg_id = s.channel.next_msg_id(rng);
            for (i, chunk) in frag.chunks(FRAGMENT_CHUNK).enumerate() {
                let start = self.buf.len();
                wire::put_fragment(&mut self.buf, msg_id, i as u16, n as u16, chunk);
                self.commit(s.addr, start);
            }
            self.frag = frag;
            stats.fragments_out += n as u64;
        }
        s.msgs_out += 1;
        s.bytes_out += wire_bytes as u64;
        sealed
    }

    /// Version 3: the body of `plain` (after its SEQ) as FRAG pieces, each in a token of its
    /// own with its own sequence number (protocol.md §6).
    fn seal_pieces(
        &mut self,
        s: &mut Session,
        plain: &[u8],
        rng: &mut Rng,
        unix: u64,
        stats: &mut Stats,
    ) -> Sealed {
        let body = &plain[fragment::SEQ_TLV..];
        let n = fragment::pieces(body.len());
        let full =
            fernet::raw_token_len(fragment::SEQ_TLV + fragment::FRAG_OVERHEAD + V3_FRAGMENT_CHUNK);
        let wire_bytes = n * (TLV_HEADER + full);
        if n == 0 || !self.has_room(wire_bytes) {
            stats.count_drop(DropReason::SendQueueFull);
            return Sealed::Dropped;
        }
        let msg_id = s.channel.next_msg_id(rng);
        let mut piece = std::mem::take(&mut self.frag);
        for (i, chunk) in fragment::chunks(body).enumerate() {
            piece.clear();
            let frag = Body::Frag {
                msg_id,
                index: i as u16,
                count: n as u16,
                chunk,
            };
            wire::write_inner(&mut piece, s.channel.next_seq(), &frag);
            let start = self.buf.len();
            wire::put_tlv_header(
                &mut self.buf,
                outer::SEALED,
                s.channel.token_len(piece.len()),
            );
            s.channel.seal_into(&rng.iv(), unix, &piece, &mut self.buf);
            self.commit(s.addr, start);
        }
        self.frag = piece;
        stats.fragments_out += n as u64;
        s.msgs_out += 1;
        s.bytes_out += wire_bytes as u64;
        Sealed::Done
    }

    /// Version 3 group mode: seal the group item whose body is `body` (the TLVs after SEQ)
    /// under `key` and queue it for the distribution group `to`, as one GROUP datagram or as
    /// FRAG pieces. `next_gseq` numbers each token; returns the item's number (that of its
    /// last token), or `None` if the queue is full (counted).
    pub(crate) fn seal_group(
        &mut self,
        to: SocketAddr,
        key: &EpochKey,
        body: &[u8],
        mut next_gseq: impl FnMut() -> u64,
        (rng, unix): (&mut Rng, u64),
        stats: &mut Stats,
    ) -> Option<u64> {
        let mut piece = std::mem::take(&mut self.frag);
        let item = if fragment::fits(fragment::SEQ_TLV + body.len(), fragment::GROUP_OVERHEAD) {
            piece.clear();
            let g = next_gseq();
            wire::put_tlv(&mut piece, inner::SEQ, &g.to_be_bytes());
            piece.extend_from_slice(body);
            self.push_group_token(to, key, &piece, (rng, unix), stats)
                .then_some(g)
        } else {
            let n = fragment::pieces(body.len());
            let msg_id = rng.next_u64() as u32;
            let mut last = (n > 0).then_some(0);
            for (i, chunk) in fragment::chunks(body).enumerate().take(n) {
                piece.clear();
                let frag = Body::Frag {
                    msg_id,
                    index: i as u16,
                    count: n as u16,
                    chunk,
                };
                let g = next_gseq();
                wire::write_inner(&mut piece, g, &frag);
                if !self.push_group_token(to, key, &piece, (rng, unix), stats) {
                    last = None;
                    break;
                }
                last = last.map(|_| g);
            }
            if last.is_some() {
                stats.fragments_out += n as u64;
            }
            last
        };
        self.frag = piece;
        item
    }

    fn push_group_token(
        &mut self,
        to: SocketAddr,
        key: &EpochKey,
        plain: &[u8],
        (rng, unix): (&mut Rng, u64),
        stats: &mut Stats,
    ) -> bool {
        let token_len = fernet::raw_token_len(plain.len());
        if !self.has_room(fragment::GROUP_OVERHEAD + token_len) {
            stats.count_drop(DropReason::SendQueueFull);
            return false;
        }
        let start = self.buf.len();
        wire::put_group_header(&mut self.buf, key.epoch, token_len);
        fernet::encrypt_raw_into(key.fernet(), &rng.iv(), unix, plain, &mut self.buf);
        self.commit(to, start);
        stats.group_datagrams += 1;
        true
    }

    /// The bytes of a pending token at `at` (from [`Sealed::Pending`]), `len` long.
    pub(crate) fn token_mut(&mut self, at: usize, len: usize) -> &mut [u8] {
        &mut self.buf[at..at + len]
    }

    /// The buffer from offset `at` on (for sealing several pending tokens at once).
    pub(crate) fn tail_mut(&mut self, at: usize) -> &mut [u8] {
        &mut self.buf[at..]
    }

    /// Datagrams waiting to be sent, oldest first.
    pub(crate) fn transmits(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.items[self.head..]
            .iter()
            .map(|&(to, start, len)| (to, &self.buf[start..start + len]))
    }

    pub(crate) fn has_transmits(&self) -> bool {
        self.head < self.items.len()
    }

    /// Bytes of datagrams waiting.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.items[self.head..].iter().map(|&(_, _, l)| l).sum()
    }

    /// `sent` datagrams left, `failed` more were refused by the kernel (counted).
    pub(crate) fn advance(&mut self, sent: usize, failed: usize, stats: &mut Stats) {
        let n = (sent + failed).min(self.items.len() - self.head);
        let sent = sent.min(n);
        for &(_, _, len) in &self.items[self.head..self.head + sent] {
            stats.datagrams_out += 1;
            stats.bytes_out += len as u64;
        }
        stats.count_drops(DropReason::SendFailed, (n - sent) as u64);
        self.head += n;
        if self.head == self.items.len() {
            let used = (self.buf.len(), self.items.len());
            self.head = 0;
            self.items.clear();
            self.buf.clear();
            self.drained(used);
        }
    }

    /// After a burst (a thousand JOINs, a shutdown) give the memory back, but only once
    /// [`SHRINK_AFTER`] drains in a row were small, and never below what they used: drains
    /// larger than `KEEP_*` (a loaded relay's fan-out) keep the capacity, so that its steady
    /// state does not reallocate.
    fn drained(&mut self, (bytes, items): (usize, usize)) {
        if bytes > KEEP_BYTES || items > KEEP_ITEMS {
            self.small_drains = 0;
            self.small_peak = (0, 0);
            return;
        }
        self.small_drains += 1;
        self.small_peak = (self.small_peak.0.max(bytes), self.small_peak.1.max(items));
        if self.small_drains < SHRINK_AFTER {
            return;
        }
        if self.buf.capacity() > KEEP_BYTES {
            self.buf.shrink_to((KEEP_BYTES / 4).max(self.small_peak.0));
        }
        if self.items.capacity() > KEEP_ITEMS {
            self.items
                .shrink_to((KEEP_ITEMS / 4).max(self.small_peak.1));
        }
        self.small_drains = 0;
        self.small_peak = (0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::fernet::FernetKey;
    use crate::proto::channel::Channel;
    use std::time::Instant;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn session(version: u16) -> Session {
        let mut rng = Rng::from_seed([5; 32]);
        let now = Instant::now();
        Session {
            id: 1,
            serial: 0,
            addr: addr(9),
            channel: Channel::new(version, FernetKey::from_bytes(&[8; 32]), &mut rng),
            name: None,
            since: now,
            last_seen: now,
            msgs_in: 0,
            bytes_in: 0,
            msgs_out: 0,
            bytes_out: 0,
        }
    }

    fn plain(data_len: usize) -> Vec<u8> {
        let mut p = Vec::new();
        let data = vec![b'x'; data_len];
        wire::write_inner(&mut p, 0, &wire::Body::Data(&data));
        p
    }

    #[test]
    fn push_keeps_order_and_respects_the_cap() {
        let mut stats = Stats::default();
        let mut out = Outbox::new(1200);
        let hello = Outer::Hello { min: 1, max: 2 };
        assert!(out.push(addr(1), &hello, &mut stats));
        assert!(out.push(addr(2), &hello, &mut stats));
        let pem = [b'a'; 1100];
        assert!(!out.push(addr(3), &Outer::PublicKey { pem: &pem }, &mut stats));
        assert_eq!(stats.drops(DropReason::SendQueueFull), 1);
        let to: Vec<_> = out.transmits().map(|(a, d)| (a.port(), d.len())).collect();
        assert_eq!(to, vec![(1, 64), (2, 64)]);
        assert_eq!(out.queued_bytes(), 128);
        out.advance(1, 0, &mut stats);
        assert_eq!(out.transmits().count(), 1);
        out.advance(0, 1, &mut stats);
        assert!(!out.has_transmits());
        assert_eq!(stats.datagrams_out, 1);
        assert_eq!(stats.drops(DropReason::SendFailed), 1);
        assert_eq!(out.queued_bytes(), 0);
    }

    #[test]
    fn seal_numbers_tokens_and_fragments_large_ones() {
        let mut stats = Stats::default();
        let mut out = Outbox::new(1 << 20);
        let mut rng = Rng::from_seed([1; 32]);
        let mut s = session(2);
        let mut small = plain(10);
        assert_eq!(
            out.seal(&mut s, &mut small, &mut rng, 1, false, &mut stats),
            Sealed::Done
        );
        assert_eq!(&small[4..12], &1u64.to_be_bytes());
        let mut big = plain(5000);
        out.seal(&mut s, &mut big, &mut rng, 1, false, &mut stats);
        let n = out.transmits().count();
        assert_eq!(n, 1 + 5);
        assert_eq!(stats.fragments_out, 5);
        let msg_ids: Vec<u32> = out
            .transmits()
            .skip(1)
            .map(|(_, d)| match Outer::parse(d) {
                Ok(Outer::Fragment { msg_id, .. }) => msg_id,
                other => panic!("not a fragment: {other:?}"),
            })
            .collect();
        assert!(msg_ids.iter().all(|&m| m == msg_ids[0]));
        assert_eq!(s.msgs_out, 2);
    }

    #[test]
    fn a_deferred_token_is_laid_out_for_the_caller() {
        let mut stats = Stats::default();
        let mut out = Outbox::new(1 << 20);
        let mut rng = Rng::from_seed([1; 32]);
        let mut p = plain(10);
        let mut v1 = session(1);
        assert_eq!(
            out.seal(&mut v1, &mut p, &mut rng, 1, true, &mut stats),
            Sealed::Done,
            "version 1 tokens are never deferred"
        );
        let mut v2 = session(2);
        let Sealed::Pending(at) = out.seal(&mut v2, &mut p, &mut rng, 1, true, &mut stats) else {
            panic!("a version-2 single datagram is deferred");
        };
        let len = fernet::raw_token_len(p.len());
        fernet::finish_raw(v2.channel.key(), out.token_mut(at, len));
        let (_, d) = out.transmits().nth(1).expect("queued");
        let Ok(Outer::Sealed { token }) = Outer::parse(d) else {
            panic!("not sealed");
        };
        let (mut scratch, mut opened) = (Vec::new(), Vec::new());
        assert!(v2.channel.open(token, &mut scratch, &mut opened).is_ok());
        assert_eq!(opened, p);
    }

    /// Queue about `bytes` of datagrams (1 KB each) and drain them all.
    fn fill_and_drain(out: &mut Outbox, bytes: usize, stats: &mut Stats) {
        let pem = [b'a'; 1000];
        let msg = Outer::PublicKey { pem: &pem };
        let mut queued = 0;
        while queued < bytes {
            assert!(out.push(addr(1), &msg, stats));
            queued += 1000;
        }
        let n = out.transmits().count();
        out.advance(n, 0, stats);
        assert!(!out.has_transmits());
    }

    #[test]
    fn a_busy_outbox_keeps_its_capacity() {
        // Every drain larger than what is kept (a loaded relay's fan-out at N=1,000): the
        // buffers must not be shrunk after each and grown again in the next turn.
        let mut stats = Stats::default();
        let mut out = Outbox::new(1 << 22);
        fill_and_drain(&mut out, 2 * KEEP_BYTES, &mut stats);
        let (buf, items) = (out.buf.capacity(), out.items.capacity());
        assert!(buf >= 2 * KEEP_BYTES);
        for _ in 0..4 * SHRINK_AFTER {
            fill_and_drain(&mut out, 2 * KEEP_BYTES, &mut stats);
            assert_eq!(
                (out.buf.capacity(), out.items.capacity()),
                (buf, items),
                "a busy outbox reallocated"
            );
        }
    }

    #[test]
    fn after_a_burst_the_buffers_shrink_once_drains_stay_small() {
        let mut stats = Stats::default();
        let mut out = Outbox::new(1 << 22);
        fill_and_drain(&mut out, 4 * KEEP_BYTES, &mut stats);
        let big = out.buf.capacity();
        assert!(big > KEEP_BYTES);
        // Small drains, but one big one among them starts the count again.
        for _ in 0..SHRINK_AFTER - 1 {
            fill_and_drain(&mut out, 2000, &mut stats);
        }
        fill_and_drain(&mut out, 2 * KEEP_BYTES, &mut stats);
        for _ in 0..SHRINK_AFTER - 1 {
            fill_and_drain(&mut out, 2000, &mut stats);
            assert_eq!(
                out.buf.capacity(),
                big,
                "shrunk before {SHRINK_AFTER} small drains"
            );
        }
        fill_and_drain(&mut out, 2000, &mut stats);
        assert!(
            out.buf.capacity() <= KEEP_BYTES / 4 + 1024,
            "the memory of the burst is given back: {} bytes kept",
            out.buf.capacity()
        );
        assert!(out.items.capacity() <= KEEP_ITEMS);
        // Drains up to KEEP_BYTES count as small, and the shrink keeps what they used.
        fill_and_drain(&mut out, 4 * KEEP_BYTES, &mut stats);
        for _ in 0..SHRINK_AFTER {
            fill_and_drain(&mut out, KEEP_BYTES - 4000, &mut stats);
        }
        let kept = out.buf.capacity();
        assert!(
            (KEEP_BYTES - 4000..=KEEP_BYTES).contains(&kept),
            "{kept} bytes kept"
        );
        let before = out.buf.as_ptr();
        fill_and_drain(&mut out, KEEP_BYTES - 4000, &mut stats);
        assert_eq!(
            out.buf.as_ptr(),
            before,
            "no reallocation for the same load"
        );
        // Nothing was lost on the way.
        assert_eq!(stats.drops(DropReason::SendQueueFull), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut stats = Stats::default();
        let mut out = Outbox::new(200);
        let mut rng = Rng::from_seed([1; 32]);
        let mut s = session(2);
        let mut big = plain(500);
        assert_eq!(
            out.seal(&mut s, &mut big, &mut rng, 1, false, &mut stats),
            Sealed::Dropped
        );
        assert_eq!(stats.drops(DropReason::SendQueueFull), 1);
        assert!(!out.has_transmits());
    }
}
