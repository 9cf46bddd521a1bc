//! Bytes on their way to the server: the transmit buffer the host writes from, and the
//! bounded queue of publishes that wait for it (while disconnected, or while it is full).
//!
//! Both are capped: publishes by `max_transmit_bytes` (queue: `max_pending_bytes`, oldest
//! dropped first), control operations by [`Outbound::limit`], past which the server is taken
//! not to read. Whether the link takes publishes now is the caller's to say (`direct`).

use std::collections::VecDeque;

use super::config::{MAX_CREDENTIAL_LEN, MAX_NAME_LEN, NatsAuth};
use super::errors::NatsError;
use super::events::NatsStats;
use super::subs::{MAX_SUBSCRIPTIONS, Subscriptions};
use crate::nats::json;
use crate::nats::proto::{self, DEFAULT_MAX_PAYLOAD, MAX_SUBJECT_LEN};

/// Control operations (PONG, PING, SUB, UNSUB) may exceed `max_transmit_bytes` by this much
/// before a server that does not read is given up on.
const CONTROL_HEADROOM: usize = 64 * 1024;
/// Bytes of one `PUB` frame beyond its payload, at most.
const FRAME_OVERHEAD: usize = 2 * MAX_SUBJECT_LEN + 32;
/// Upper bound of the handshake (CONNECT with escaped credentials, every SUB, PING).
const MAX_HANDSHAKE: usize = 6 * (MAX_NAME_LEN + 2 * MAX_CREDENTIAL_LEN)
    + 512
    + MAX_SUBSCRIPTIONS * (2 * MAX_SUBJECT_LEN + 32);
/// Queue capacity kept once it is empty again.
const PENDING_KEEP: usize = 64 * 1024;
/// The transmit buffer is compacted once this much of it has been written.
const COMPACT_AT: usize = 64 * 1024;

/// A control operation would pass [`Outbound::limit`]: the server does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Overflow;

/// The transmit buffer and the publish queue. No `Debug`: the buffer holds the CONNECT
/// line, credentials included.
pub(super) struct Outbound {
    max_transmit: usize,
    max_pending: usize,
    /// The latest `max_payload` a server announced.
    max_payload: usize,
    out: Vec<u8>,
    out_pos: usize,
    pending: VecDeque<u8>,
    /// (frame bytes, payload bytes) of each queued publish, oldest first.
    pending_frames: VecDeque<(usize, usize)>,
    scratch: Vec<u8>,
}

impl Outbound {
    /// `max_transmit_bytes` and `max_pending_bytes` of [`NatsConfig`](super::NatsConfig).
    pub(super) fn new(max_transmit: usize, max_pending: usize) -> Self {
        Outbound {
            max_transmit,
            max_pending,
            max_payload: DEFAULT_MAX_PAYLOAD,
            out: Vec::new(),
            out_pos: 0,
            pending: VecDeque::new(),
            pending_frames: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// The `max_payload` in force.
    pub(super) fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// A server announced `max_payload` (already clamped by the caller).
    pub(super) fn set_max_payload(&mut self, max: usize) {
        self.max_payload = max;
    }

    // ------------------------------------------------------------ the transmit buffer

    /// Bytes to write, in order.
    pub(super) fn transmit(&self) -> &[u8] {
        self.out.get(self.out_pos..).unwrap_or_default()
    }

    /// `n` bytes of [`transmit`](Self::transmit) were written.
    pub(super) fn advance(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos >= COMPACT_AT {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Bytes not written yet.
    pub(super) fn held(&self) -> usize {
        self.out.len().saturating_sub(self.out_pos)
    }

    /// The most the transmit buffer holds: `max_transmit_bytes` of publishes (or one
    /// publish, when larger: up to `max_payload`), the handshake and a headroom for control
    /// operations.
    pub(super) fn limit(&self) -> usize {
        self.max_transmit + self.max_payload + FRAME_OVERHEAD + MAX_HANDSHAKE + CONTROL_HEADROOM
    }

    /// A new connection: nothing of the last one is sent on it.
    pub(super) fn clear_transmit(&mut self) {
        self.out.clear();
        self.out_pos = 0;
    }

    /// The link ended: the unwritten bytes are lost (how many); a buffer a slow server
    /// grew does not stay pinned.
    pub(super) fn end_link(&mut self) -> usize {
        let lost = self.held();
        self.clear_transmit();
        if self.out.capacity() > 4 * self.max_transmit {
            self.out.shrink_to(self.max_transmit);
        }
        lost
    }

    /// CONNECT, a SUB for each subscription, PING: the handshake, written whole.
    pub(super) fn write_handshake(&mut self, name: &str, auth: &NatsAuth, subs: &Subscriptions) {
        json::write_connect(&mut self.out, name, env!("CARGO_PKG_VERSION"), auth);
        subs.write_all(&mut self.out);
        self.out.extend_from_slice(proto::PING);
    }

    /// A control operation (PING, PONG), unless it would pass [`limit`](Self::limit).
    pub(super) fn control(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        if self.held() + bytes.len() > self.limit() {
            return Err(Overflow);
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    /// `SUB`, as [`control`](Self::control).
    pub(super) fn sub(
        &mut self,
        subject: &str,
        queue: Option<&str>,
        sid: u64,
    ) -> Result<(), Overflow> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        // Validated when subscribed.
        let _ = proto::encode_sub(&mut buf, subject, queue, sid);
        let r = self.control(&buf);
        self.scratch = buf;
        r
    }

    /// `UNSUB`, as [`control`](Self::control).
    pub(super) fn unsub(&mut self, sid: u64) -> Result<(), Overflow> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        proto::encode_unsub(&mut buf, sid, None);
        let r = self.control(&buf);
        self.scratch = buf;
        r
    }

    // ------------------------------------------------------------ publishes

    /// Check and encode a publish: to the transmit buffer when `direct` (the link takes
    /// publishes), nothing is queued before it and it fits; else to the queue, dropping the
    /// oldest queued publishes to make room (a publish larger than the queue is kept alone).
    pub(super) fn publish(
        &mut self,
        (subject, reply): (&str, Option<&str>),
        payload: &[u8],
        direct: bool,
        stats: &mut NatsStats,
    ) -> Result<(), NatsError> {
        proto::validate_subject(subject, false).map_err(NatsError::InvalidSubject)?;
        if let Some(r) = reply {
            proto::validate_subject(r, false).map_err(NatsError::InvalidSubject)?;
        }
        if payload.len() > self.max_payload {
            stats.dropped_max_payload += 1;
            return Err(NatsError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let frame = proto::pub_header_len(subject, reply, payload.len()) + payload.len() + 2;
        if direct && self.pending_frames.is_empty() && self.fits(frame) {
            proto::encode_pub_header(&mut self.out, subject, reply, payload.len());
            self.out.extend_from_slice(payload);
            self.out.extend_from_slice(b"\r\n");
            stats.msgs_out += 1;
            stats.bytes_out += payload.len() as u64;
            return Ok(());
        }
        let max = self.max_pending;
        if max == 0 {
            stats.dropped_queue_full += 1;
            return Err(NatsError::QueueFull { frame, max });
        }
        while self.pending.len() + frame > max && !self.pending_frames.is_empty() {
            self.pop_oldest();
            stats.dropped_queue_full += 1;
        }
        self.scratch.clear();
        proto::encode_pub_header(&mut self.scratch, subject, reply, payload.len());
        self.pending.extend(self.scratch.iter());
        self.pending.extend(payload.iter());
        self.pending.extend(b"\r\n".iter());
        self.pending_frames.push_back((frame, payload.len()));
        Ok(())
    }

    /// A publish of `frame` bytes goes to the transmit buffer now.
    fn fits(&self, frame: usize) -> bool {
        let held = self.held();
        held == 0 || held + frame <= self.max_transmit
    }

    /// Move queued publishes to the transmit buffer while it has room (the link takes
    /// publishes: the caller's to check). Those over this server's `max_payload` are
    /// dropped, counted.
    pub(super) fn flush_queue(&mut self, stats: &mut NatsStats) {
        while let Some(&(frame, payload)) = self.pending_frames.front() {
            if payload > self.max_payload {
                // Queued under a larger limit than this server's.
                self.pop_oldest();
                stats.dropped_max_payload += 1;
                continue;
            }
            if !self.fits(frame) {
                break;
            }
            let frame = frame.min(self.pending.len());
            let (a, b) = self.pending.as_slices();
            let from_a = frame.min(a.len());
            self.out
                .extend_from_slice(a.get(..from_a).unwrap_or_default());
            self.out
                .extend_from_slice(b.get(..frame - from_a).unwrap_or_default());
            self.pending.drain(..frame);
            self.pending_frames.pop_front();
            stats.msgs_out += 1;
            stats.bytes_out += payload as u64;
        }
    }

    /// An outage's queue does not pin its memory once flushed.
    pub(super) fn trim_queue(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > PENDING_KEEP {
            self.pending.shrink_to(PENDING_KEEP);
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((frame, _)) = self.pending_frames.pop_front() {
            let frame = frame.min(self.pending.len());
            self.pending.drain(..frame);
        }
    }

    /// Forget the queue (the client closed for good).
    pub(super) fn drop_queue(&mut self) {
        self.pending.clear();
        self.pending_frames.clear();
    }

    /// Empty the queue and release its memory: how many publishes were dropped.
    pub(super) fn discard_pending(&mut self) -> usize {
        let n = self.pending_frames.len();
        self.drop_queue();
        self.pending.shrink_to(PENDING_KEEP);
        n
    }

    /// Bytes queued.
    pub(super) fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Publishes queued.
    pub(super) fn pending_messages(&self) -> usize {
        self.pending_frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_T: usize = 4096;

    fn publish(o: &mut Outbound, subject: &str, len: usize, direct: bool, st: &mut NatsStats) {
        o.publish((subject, None), &vec![b'x'; len], direct, st)
            .unwrap();
    }

    fn drain(o: &mut Outbound) -> Vec<u8> {
        let v = o.transmit().to_vec();
        o.advance(v.len());
        v
    }

    #[test]
    fn a_direct_publish_is_framed_into_the_transmit_buffer() {
        let mut o = Outbound::new(MAX_T, 1 << 20);
        let mut st = NatsStats::default();
        o.publish(("a.b", Some("r")), b"hi", true, &mut st).unwrap();
        assert_eq!(drain(&mut o), b"PUB a.b r 2\r\nhi\r\n");
        assert_eq!((st.msgs_out, st.bytes_out), (1, 2));
        assert_eq!(o.pending_messages(), 0);
    }

    #[test]
    fn not_direct_it_queues_and_flushes_in_order_within_the_transmit_cap() {
        let mut o = Outbound::new(MAX_T, 1 << 20);
        let mut st = NatsStats::default();
        for _ in 0..4 {
            publish(&mut o, "q", 1500, false, &mut st);
        }
        assert!(o.transmit().is_empty());
        assert_eq!(o.pending_messages(), 4);
        o.flush_queue(&mut st);
        // The first always goes; the second fits under 4 KiB, the third does not.
        assert_eq!(st.msgs_out, 2);
        assert!(o.held() <= MAX_T);
        // Behind a queue, even a direct publish waits its turn.
        publish(&mut o, "late", 1, true, &mut st);
        assert_eq!(o.pending_messages(), 3);
        while o.pending_messages() > 0 {
            drain(&mut o);
            o.flush_queue(&mut st);
        }
        assert_eq!(st.msgs_out, 5);
        assert!(drain(&mut o).ends_with(b"PUB late 1\r\nx\r\n"));
    }

    #[test]
    fn the_queue_drops_the_oldest_and_keeps_an_oversized_publish_alone() {
        let mut o = Outbound::new(MAX_T, 1000);
        let mut st = NatsStats::default();
        for _ in 0..5 {
            publish(&mut o, "q", 300, false, &mut st);
        }
        assert!(o.pending_bytes() <= 1000);
        assert_eq!(o.pending_messages(), 3);
        assert_eq!(st.dropped_queue_full, 2);
        publish(&mut o, "big", 5000, false, &mut st);
        assert_eq!(o.pending_messages(), 1);
        assert!(o.pending_bytes() > 5000);
        assert_eq!(o.discard_pending(), 1);
        assert_eq!(o.pending_bytes(), 0);
    }

    #[test]
    fn no_queue_refuses_what_cannot_go_now() {
        let mut o = Outbound::new(MAX_T, 0);
        let mut st = NatsStats::default();
        let r = o.publish(("a", None), b"x", false, &mut st);
        assert!(matches!(r, Err(NatsError::QueueFull { max: 0, .. })));
        assert_eq!(st.dropped_queue_full, 1);
    }

    #[test]
    fn max_payload_refuses_new_and_drops_queued_publishes() {
        let mut o = Outbound::new(MAX_T, 1 << 20);
        let mut st = NatsStats::default();
        publish(&mut o, "q", 2000, false, &mut st);
        publish(&mut o, "q", 10, false, &mut st);
        o.set_max_payload(1000);
        let r = o.publish(("a", None), &[0; 1001], true, &mut st);
        assert_eq!(
            r,
            Err(NatsError::PayloadTooLarge {
                len: 1001,
                max: 1000
            })
        );
        o.flush_queue(&mut st);
        assert_eq!(st.dropped_max_payload, 2);
        assert_eq!(st.msgs_out, 1);
        assert_eq!(o.pending_messages(), 0);
    }

    #[test]
    fn bad_subjects_send_nothing() {
        let mut o = Outbound::new(MAX_T, 1 << 20);
        let mut st = NatsStats::default();
        for (s, r) in [("a b", None), ("a.*", None), ("a", Some("r r"))] {
            let e = o.publish((s, r), b"x", true, &mut st);
            assert!(matches!(e, Err(NatsError::InvalidSubject(_))), "{s} {r:?}");
        }
        assert_eq!(o.held() + o.pending_bytes(), 0);
    }

    #[test]
    fn control_operations_overflow_at_the_limit() {
        let mut o = Outbound::new(MAX_T, 0);
        let limit = o.limit();
        let mut n = 0;
        while o.control(proto::PONG).is_ok() {
            n += proto::PONG.len();
        }
        assert_eq!(o.held(), n);
        assert!(n <= limit && n + proto::PONG.len() > limit);
        assert_eq!(o.end_link(), n, "the unwritten bytes are lost");
        assert_eq!(o.held(), 0);
        assert!(o.sub("s", Some("q"), 3).is_ok());
        assert!(o.unsub(3).is_ok());
        assert_eq!(drain(&mut o), b"SUB s q 3\r\nUNSUB 3\r\n");
    }

    #[test]
    fn partial_writes_keep_order_and_compact() {
        let mut o = Outbound::new(1 << 20, 0);
        let mut st = NatsStats::default();
        for _ in 0..100 {
            publish(&mut o, "s", 1000, true, &mut st);
        }
        let all = o.transmit().to_vec();
        let mut seen = Vec::new();
        while o.held() > 0 {
            let n = o.held().min(7000);
            seen.extend_from_slice(o.transmit().get(..n).unwrap());
            o.advance(n);
        }
        assert_eq!(seen, all);
        o.advance(10); // past the end: harmless
        assert!(o.transmit().is_empty());
    }

    #[test]
    fn the_handshake_is_connect_subs_ping() {
        let mut o = Outbound::new(MAX_T, 0);
        let mut subs = Subscriptions::default();
        subs.add("a.>", None).unwrap();
        o.write_handshake("n", &NatsAuth::None, &subs);
        let text = String::from_utf8(drain(&mut o)).unwrap();
        assert!(text.starts_with("CONNECT {"), "{text}");
        assert!(text.ends_with("}\r\nSUB a.> 1\r\nPING\r\n"), "{text}");
    }
}
