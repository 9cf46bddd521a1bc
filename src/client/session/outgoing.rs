//! Datagrams to the relay: the queue the host drains, and the sealing of bodies into our
//! channel (one token, FRAGMENTs of a large token in versions 1 and 2, or FRAG pieces each
//! in a token of its own in version 3).

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::crypto::rng::Rng;
use crate::proto::channel::Channel;
use crate::proto::fragment;
use crate::wire::{self, Body, FRAGMENT_CHUNK, TLV_HEADER, outer};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The datagrams waiting for the host, and the clock tokens are stamped with.
pub(super) struct Outgoing {
    transmits: VecDeque<Vec<u8>>,
    /// `now` at creation, and the Unix time then: Fernet timestamps without reading the
    /// clock again.
    start: Instant,
    unix_at_start: u64,
    plain: Vec<u8>,
    token: Vec<u8>,
}

impl Outgoing {
    /// An empty queue; the wall clock is read once, here.
    pub(super) fn new(now: Instant) -> Self {
        Outgoing {
            transmits: VecDeque::new(),
            start: now,
            unix_at_start: unix_now(),
            plain: Vec::new(),
            token: Vec::new(),
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.start).as_secs()
    }

    /// Queue a datagram built elsewhere (the handshake's).
    pub(super) fn push(&mut self, d: Vec<u8>) {
        self.transmits.push_back(d);
    }

    /// The next datagram to send.
    pub(super) fn pop(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// Forget what was not sent.
    pub(super) fn clear(&mut self) {
        self.transmits.clear();
    }

    /// Seal `body` into `channel` and queue the datagrams it takes.
    pub(super) fn seal(
        &mut self,
        channel: &mut Channel,
        rng: &mut Rng,
        now: Instant,
        body: &Body<'_>,
    ) {
        let seq = channel.next_seq();
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        wire::write_inner(&mut plain, seq, body);
        if channel.version() >= 3 && !fragment::fits(plain.len(), fragment::SEALED_OVERHEAD) {
            let msg_id = channel.next_msg_id(rng);
            let pieces = plain[fragment::SEQ_TLV..].to_vec();
            let n = fragment::pieces(pieces.len()) as u16;
            for (i, chunk) in fragment::chunks(&pieces).enumerate() {
                let frag = Body::Frag {
                    msg_id,
                    index: i as u16,
                    count: n,
                    chunk,
                };
                plain.clear();
                wire::write_inner(&mut plain, channel.next_seq(), &frag);
                self.push_token(channel, rng, now, &plain);
            }
        } else {
            self.push_token(channel, rng, now, &plain);
        }
        self.plain = plain;
    }

    fn push_token(&mut self, channel: &mut Channel, rng: &mut Rng, now: Instant, plain: &[u8]) {
        self.token.clear();
        let iv = rng.iv();
        let unix = self.unix(now);
        channel.seal_into(&iv, unix, plain, &mut self.token);
        if TLV_HEADER + self.token.len() <= wire::MAX_DATAGRAM {
            let mut d = Vec::with_capacity(TLV_HEADER + self.token.len());
            wire::put_tlv(&mut d, outer::SEALED, &self.token);
            self.transmits.push_back(d);
        } else {
            let msg_id = channel.next_msg_id(rng);
            let count = self.token.len().div_ceil(FRAGMENT_CHUNK) as u16;
            for (i, chunk) in self.token.chunks(FRAGMENT_CHUNK).enumerate() {
                let mut d = Vec::with_capacity(wire::MAX_DATAGRAM);
                wire::put_fragment(&mut d, msg_id, i as u16, count, chunk);
                self.transmits.push_back(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::fernet::FernetKey;
    use crate::proto::reassembly::{Limits, Reassembler, Shape};
    use crate::wire::{MAX_BODY, Outer};

    fn channel(version: u16, rng: &mut Rng) -> (Channel, Channel) {
        let key = FernetKey::generate(rng);
        let mut ours = Channel::new(version, key.clone(), rng);
        ours.set_version(version);
        let mut theirs = Channel::new(version, key, rng);
        theirs.set_version(version);
        (ours, theirs)
    }

    /// Open every datagram queued: the bodies' plaintexts, reassembling FRAGMENTs.
    fn open_all(o: &mut Outgoing, theirs: &Channel, now: Instant) -> Vec<Vec<u8>> {
        let mut r = Reassembler::new(Limits::default());
        let mut out = Vec::new();
        while let Some(d) = o.pop() {
            let token = match Outer::parse(&d).unwrap() {
                Outer::Sealed { token } => token.to_vec(),
                Outer::Fragment {
                    msg_id,
                    index,
                    count,
                    chunk,
                } => match r
                    .insert_shaped(now, 0, (msg_id, index, count), chunk, Shape::TOKEN)
                    .unwrap()
                {
                    Some(t) => t.to_vec(),
                    None => continue,
                },
                other => panic!("unexpected {other:?}"),
            };
            let (mut scratch, mut plain) = (Vec::new(), Vec::new());
            theirs.open(&token, &mut scratch, &mut plain).unwrap();
            out.push(plain);
        }
        out
    }

    #[test]
    fn a_small_body_is_one_sealed_datagram_with_the_next_seq() {
        let mut rng = Rng::from_seed([2; 32]);
        let (mut ours, theirs) = channel(2, &mut rng);
        let now = Instant::now();
        let mut o = Outgoing::new(now);
        o.seal(&mut ours, &mut rng, now, &Body::Data(b"hello"));
        o.seal(&mut ours, &mut rng, now, &Body::Keepalive);
        let opened = open_all(&mut o, &theirs, now);
        assert_eq!(opened.len(), 2);
        let first = wire::parse_sealed(&opened[0]).unwrap();
        let second = wire::parse_sealed(&opened[1]).unwrap();
        assert!(matches!(first.body, Body::Data(b"hello")));
        assert!(matches!(second.body, Body::Keepalive));
        assert_eq!(second.seq, first.seq + 1);
    }

    #[test]
    fn version_2_fragments_a_large_token() {
        let mut rng = Rng::from_seed([3; 32]);
        let (mut ours, theirs) = channel(2, &mut rng);
        let now = Instant::now();
        let mut o = Outgoing::new(now);
        let data = vec![0x5a; MAX_BODY];
        o.seal(&mut ours, &mut rng, now, &Body::Data(&data));
        assert!(o.transmits.len() > 1);
        assert!(o.transmits.iter().all(|d| d.len() <= wire::MAX_DATAGRAM));
        let opened = open_all(&mut o, &theirs, now);
        assert_eq!(opened.len(), 1);
        assert!(matches!(wire::parse_sealed(&opened[0]).unwrap().body, Body::Data(d) if d == data));
    }

    #[test]
    fn version_3_sends_pieces_each_in_its_own_token() {
        let mut rng = Rng::from_seed([4; 32]);
        let (mut ours, theirs) = channel(3, &mut rng);
        let now = Instant::now();
        let mut o = Outgoing::new(now);
        let data = vec![0xa5; MAX_BODY];
        o.seal(&mut ours, &mut rng, now, &Body::Data(&data));
        let opened = open_all(&mut o, &theirs, now);
        assert!(opened.len() > 1);
        for p in &opened {
            assert!(matches!(
                wire::parse_sealed(p).unwrap().body,
                Body::Frag { .. }
            ));
        }
        o.push(vec![1]);
        o.clear();
        assert!(o.pop().is_none());
    }
}
