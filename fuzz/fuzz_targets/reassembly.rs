//! Fragment reassembly under arbitrary operations, against a reference model.
//!
//! Checked after every step: the caps (`bytes_in_use <= total_bytes`, each owner's charge
//! `<= per_owner_bytes`, per-owner message count), that a rejected fragment changes nothing,
//! that the outcome of every fragment (stored / duplicate / inconsistent / completed) is the
//! model's, that a completed token is exactly the chunks that were sent (so its length is
//! `(count - 1) * FRAGMENT_CHUNK + last chunk`), and that expiry drops exactly what is due.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcrelay::proto::reassembly::{FragmentError, Limits, Reassembler};
use mcrelay::wire::{FRAGMENT_CHUNK, MAX_FRAGMENTS};

const C: usize = FRAGMENT_CHUNK;

#[derive(Arbitrary, Debug)]
enum Len {
    /// Exactly `FRAGMENT_CHUNK` (what every non-last fragment needs).
    Full,
    /// `n % (FRAGMENT_CHUNK + 2)`: 0, short, full or one too long.
    Other(u16),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        owner: u8,
        msg_id: u8,
        index: u8,
        count: u8,
        len: Len,
        fill: u8,
    },
    /// All fragments of one token, in an order derived from `order`.
    Message {
        owner: u8,
        msg_id: u8,
        count: u8,
        last_len: u16,
        order: u64,
        fill: u8,
    },
    Advance {
        ms: u16,
    },
    Expire,
    RemoveOwner {
        owner: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    per_owner_messages: u8,
    per_owner_frags: u8,
    total_frags: u16,
    timeout_ms: u16,
    ops: Vec<Op>,
}

struct Partial {
    count: u16,
    have: u128,
    chunks: HashMap<u16, Vec<u8>>,
    created: Instant,
}

fn base() -> Instant {
    static B: OnceLock<Instant> = OnceLock::new();
    *B.get_or_init(Instant::now)
}

fn chunk(index: u16, len: usize, fill: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ fill ^ (index as u8).wrapping_mul(101))
        .collect()
}

struct Harness {
    r: Reassembler,
    limits: Limits,
    model: HashMap<(u32, u32), Partial>,
    now: Instant,
}

impl Harness {
    fn check(&self) {
        let l = &self.limits;
        assert!(
            self.r.bytes_in_use() <= l.total_bytes,
            "global cap exceeded"
        );
        assert_eq!(self.r.in_flight(), self.model.len(), "in-flight count");
        let mut sum = 0;
        for owner in 0..4u32 {
            let b = self.r.owner_bytes(owner);
            assert!(b <= l.per_owner_bytes, "owner cap exceeded");
            let n = self.model.keys().filter(|(o, _)| *o == owner).count();
            assert!(n <= l.per_owner_messages, "owner message cap exceeded");
            if n == 0 {
                assert_eq!(b, 0, "owner charged with nothing in flight");
            } else {
                assert!(b > 0);
            }
            sum += b;
        }
        assert_eq!(sum, self.r.bytes_in_use(), "owner charges do not add up");
        let oldest = self.model.values().map(|p| p.created).min();
        assert_eq!(
            self.r.next_expiry(),
            oldest.map(|c| c + l.timeout),
            "next_expiry"
        );
    }

    fn insert(&mut self, owner: u32, msg_id: u32, index: u16, count: u16, data: &[u8]) {
        let before = (self.r.bytes_in_use(), self.r.in_flight());
        let res = self
            .r
            .insert(self.now, owner, msg_id, index, count, data)
            .map(|o| o.map(<[u8]>::to_vec));
        // What the model says.
        let valid_shape = (2..=MAX_FRAGMENTS as u16).contains(&count) && index < count;
        let is_last = valid_shape && index == count - 1;
        let len_ok = if is_last {
            (1..=C).contains(&data.len())
        } else {
            data.len() == C
        };
        match res {
            Err(e) => {
                assert_eq!(
                    (self.r.bytes_in_use(), self.r.in_flight()),
                    before,
                    "a rejected fragment changed state"
                );
                let expected = if !(2..=MAX_FRAGMENTS as u16).contains(&count) {
                    Some(FragmentError::BadCount)
                } else if index >= count {
                    Some(FragmentError::IndexOutOfRange)
                } else if !len_ok {
                    Some(FragmentError::BadChunkLength)
                } else if let Some(p) = self.model.get(&(owner, msg_id)) {
                    if p.count != count {
                        Some(FragmentError::Inconsistent)
                    } else if p.have & (1 << index) != 0 {
                        Some(FragmentError::Duplicate)
                    } else {
                        panic!("rejected a valid fragment of an admitted message: {e:?}")
                    }
                } else {
                    // A new message: only the caps may refuse it.
                    assert!(
                        matches!(e, FragmentError::OwnerLimit | FragmentError::GlobalLimit),
                        "new message refused with {e:?}"
                    );
                    None
                };
                if let Some(x) = expected {
                    assert_eq!(e, x);
                }
            }
            Ok(done) => {
                assert!(valid_shape && len_ok, "accepted an invalid fragment");
                // Fair-share eviction may have made room by dropping other owners' oldest
                // reassemblies: exactly those the reassembler no longer holds.
                let evicted = self.r.take_evicted();
                let before_model = self.model.len();
                let r = &self.r;
                self.model
                    .retain(|k, _| *k == (owner, msg_id) || r.contains(k.0, k.1));
                assert_eq!(
                    (before_model - self.model.len()) as u64,
                    evicted,
                    "evictions and the model disagree"
                );

                let now = self.now;
                let p = self
                    .model
                    .entry((owner, msg_id))
                    .or_insert_with(|| Partial {
                        count,
                        have: 0,
                        chunks: HashMap::new(),
                        created: now,
                    });
                assert_eq!(p.count, count);
                assert_eq!(p.have & (1 << index), 0, "duplicate accepted");
                p.have |= 1 << index;
                p.chunks.insert(index, data.to_vec());
                let complete = p.have.count_ones() == u32::from(count);
                match done {
                    None => assert!(!complete, "complete message not delivered"),
                    Some(tok) => {
                        assert!(complete, "incomplete message delivered");
                        let p = self.model.remove(&(owner, msg_id)).expect("entry");
                        let mut want = Vec::new();
                        for i in 0..count {
                            want.extend_from_slice(&p.chunks[&i]);
                        }
                        let last = p.chunks[&(count - 1)].len();
                        assert_eq!(tok.len(), (usize::from(count) - 1) * C + last);
                        assert!(tok == want, "token content differs from its chunks");
                    }
                }
            }
        }
        self.check();
    }
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        per_owner_messages: usize::from(input.per_owner_messages % 6),
        per_owner_bytes: usize::from(input.per_owner_frags) * C,
        total_bytes: usize::from(input.total_frags % 1024) * C,
        timeout: Duration::from_millis(u64::from(input.timeout_ms % 10_000)),
    };
    let mut h = Harness {
        r: Reassembler::new(limits),
        limits,
        model: HashMap::new(),
        now: base(),
    };
    for op in input.ops.into_iter().take(512) {
        match op {
            Op::Insert {
                owner,
                msg_id,
                index,
                count,
                len,
                fill,
            } => {
                let len = match len {
                    Len::Full => C,
                    Len::Other(n) => usize::from(n) % (C + 2),
                };
                let count = u16::from(count % (MAX_FRAGMENTS as u8 + 3));
                let index = u16::from(index % (MAX_FRAGMENTS as u8 + 3));
                let data = chunk(index, len, fill);
                h.insert(
                    u32::from(owner % 4),
                    u32::from(msg_id % 8),
                    index,
                    count,
                    &data,
                );
            }
            Op::Message {
                owner,
                msg_id,
                count,
                last_len,
                order,
                fill,
            } => {
                let count = 2 + u16::from(count) % (MAX_FRAGMENTS as u16 - 1);
                let last_len = 1 + usize::from(last_len) % C;
                let mut idx: Vec<u16> = (0..count).collect();
                // Deterministic shuffle from `order`.
                let mut s = order | 1;
                for i in (1..idx.len()).rev() {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    idx.swap(i, (s % (i as u64 + 1)) as usize);
                }
                for i in idx {
                    let len = if i == count - 1 { last_len } else { C };
                    let data = chunk(i, len, fill);
                    h.insert(u32::from(owner % 4), u32::from(msg_id % 8), i, count, &data);
                }
            }
            Op::Advance { ms } => {
                h.now += Duration::from_millis(u64::from(ms));
            }
            Op::Expire => {
                let due: Vec<(u32, u32)> = h
                    .model
                    .iter()
                    .filter(|(_, p)| h.now.saturating_duration_since(p.created) >= limits.timeout)
                    .map(|(k, _)| *k)
                    .collect();
                let n = h.r.expire(h.now);
                assert_eq!(n, due.len(), "expired count");
                for k in due {
                    h.model.remove(&k);
                }
                h.check();
            }
            Op::RemoveOwner { owner } => {
                let owner = u32::from(owner % 4);
                h.r.remove_owner(owner);
                h.model.retain(|(o, _), _| *o != owner);
                assert_eq!(h.r.owner_bytes(owner), 0);
                h.check();
            }
        }
    }
});
