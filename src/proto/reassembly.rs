//! Fragment reassembly with per-owner and global memory caps.
//!
//! # Contract (docs/protocol.md, FRAGMENT)
//!
//! A token of up to [`MAX_TOKEN`] bytes is split into `count` fragments
//! (`2 <= count <= MAX_FRAGMENTS`), each carrying `msg_id u32, index u16,
//! count u16` and a chunk: every fragment but the last (`index == count - 1`)
//! carries exactly [`FRAGMENT_CHUNK`] bytes, the last carries
//! `1..=FRAGMENT_CHUNK`. Fragments may arrive in any order; the reassembly
//! key is `(owner, msg_id)` where `owner` is the session id.
//!
//! # Memory accounting
//!
//! On the first fragment of a message the reassembler needs a buffer of
//! `count * FRAGMENT_CHUNK` bytes. It checks the caps with that size
//! **before** allocating, then charges the buffer's actual capacity against
//! the owner and the global budget until the reassembly completes, expires or
//! is removed. So `bytes_in_use() <= total_bytes` and every owner's charge
//! `<= per_owner_bytes` always hold, whatever the fragments claim; an attacker
//! who sends only `count = 74` first fragments of fresh `msg_id`s is stopped
//! after `per_owner_bytes / (74 * 1188)` messages per owner (2 with the
//! defaults) and after `total_bytes / (74 * 1188)` globally.
//!
//! Memory held outside the charge is bounded too: a free list of at most
//! [`FREE_LIST_MAX`] recycled buffers, plus the buffer of the last completed
//! token (lent to the caller until the next call), each `<= MAX_TOKEN`.
//!
//! In the steady state nothing is allocated per fragment, nor per message
//! once the free list is warm: buffers are recycled (best fit, at most 2x
//! the needed size), the
//! received-set is a `u128` bitmap, entries live in a [`Slab`], and the
//! index/owner maps only grow to their high-water mark.
//!
//! # Data structures
//!
//! * `Slab<Partial>`: the in-flight reassemblies, also threaded into an
//!   intrusive doubly-linked list in creation order, so expiry pops from the
//!   head in O(1) per expired entry and `next_expiry` is O(1).
//! * `HashMap<(owner, msg_id), slab key>`: O(1) lookup per fragment. The
//!   global number of in-flight entries can reach thousands (8 MiB / 2 KiB),
//!   so a linear scan is not acceptable; a per-owner scan would need a
//!   per-owner list. `msg_id` is attacker-chosen, hence std's randomly keyed
//!   SipHash (`RandomState`) against hash flooding.
//! * `HashMap<owner, usage>`: per-owner message count and charged bytes;
//!   an owner is removed when its last reassembly goes away.
//!
//! # Timeouts
//!
//! A reassembly times out `limits.timeout` after its **first** fragment
//! (further fragments do not extend it, so a slow drip cannot pin memory).
//! Expiry happens only in [`Reassembler::expire`], driven by the caller's
//! timer ([`Reassembler::next_expiry`]).
//!
//! Completed messages leave no trace: a replayed fragment of an already
//! delivered message starts a new reassembly. Replay protection belongs to
//! the authenticated layer above.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::wire::{FRAGMENT_CHUNK, MAX_FRAGMENTS, MAX_TOKEN, V3_FRAGMENT_CHUNK, V3_MAX_FRAGMENTS};

// The received-set is a u128 bitmap.
const _: () = assert!(MAX_FRAGMENTS <= 128 && V3_MAX_FRAGMENTS <= 128);
// A version-3 message is never longer than the largest version-1 token.
const _: () = assert!(V3_FRAGMENT_CHUNK * V3_MAX_FRAGMENTS <= MAX_TOKEN);
// `count` travels as u16.
const _: () = assert!(MAX_FRAGMENTS <= u16::MAX as usize);

/// Most recycled buffers kept for reuse.
pub const FREE_LIST_MAX: usize = 4;

/// How a protocol version cuts messages: chunk size and most pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bytes in every chunk but the last (the last: 1 to this many).
    pub chunk: usize,
    /// Most chunks of one message.
    pub max_count: usize,
}

impl Shape {
    /// Versions 1 and 2: FRAGMENT datagrams of a token, 1188-byte chunks, up to 74.
    pub const TOKEN: Shape = Shape {
        chunk: FRAGMENT_CHUNK,
        max_count: MAX_FRAGMENTS,
    };
    /// Version 3: FRAG pieces of a plaintext body, 1088-byte chunks, up to 64.
    pub const V3: Shape = Shape {
        chunk: V3_FRAGMENT_CHUNK,
        max_count: V3_MAX_FRAGMENTS,
    };
}

/// Caps for the [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent reassemblies per owner (default 4).
    pub per_owner_messages: usize,
    /// Bytes charged per owner (default 384 KiB: four messages of the largest size).
    pub per_owner_bytes: usize,
    /// Bytes charged over all owners (default 8 MiB).
    pub total_bytes: usize,
    /// Lifetime of a reassembly, from its first fragment (default 5 s).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_owner_messages: 4,
            per_owner_bytes: 384 * 1024,
            total_bytes: 8 * 1024 * 1024,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a fragment was rejected. A rejected fragment changes no state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragmentError {
    /// `count` outside `2..=MAX_FRAGMENTS`.
    BadCount,
    /// `index >= count`.
    IndexOutOfRange,
    /// Non-last chunk not exactly `FRAGMENT_CHUNK` bytes, or last chunk
    /// empty or longer than `FRAGMENT_CHUNK`.
    BadChunkLength,
    /// This index was already received for this message.
    Duplicate,
    /// `count` differs from earlier fragments of the same message.
    Inconsistent,
    /// The owner has too many reassemblies or bytes in flight.
    OwnerLimit,
    /// The global byte budget is exhausted.
    GlobalLimit,
}

impl FragmentError {
    /// Every variant, for registering counters.
    pub const ALL: [FragmentError; 7] = [
        FragmentError::BadCount,
        FragmentError::IndexOutOfRange,
        FragmentError::BadChunkLength,
        FragmentError::Duplicate,
        FragmentError::Inconsistent,
        FragmentError::OwnerLimit,
        FragmentError::GlobalLimit,
    ];
}

impl fmt::Display for FragmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FragmentError::BadCount => "fragment count out of range",
            FragmentError::IndexOutOfRange => "fragment index out of range",
            FragmentError::BadChunkLength => "bad fragment chunk length",
            FragmentError::Duplicate => "duplicate fragment",
            FragmentError::Inconsistent => "fragment count differs from earlier fragments",
            FragmentError::OwnerLimit => "per-owner reassembly limit reached",
            FragmentError::GlobalLimit => "global reassembly memory limit reached",
        };
        f.write_str(s)
    }
}

impl std::error::Error for FragmentError {}

/// One in-flight reassembly.
#[derive(Debug)]
struct Partial {
    owner: u32,
    msg_id: u32,
    count: u16,
    /// The chunk size of its shape.
    chunk: usize,
    received: u16,
    /// Length of the last chunk once it arrived (0 before).
    last_len: usize,
    /// Bit `i` set = fragment `i` received.
    have: u128,
    /// `count * chunk` bytes long; chunk `i` at `i * chunk`.
    buf: Vec<u8>,
    /// Bytes charged (the buffer's capacity).
    charge: usize,
    created: Instant,
    /// Creation-order list (older = towards head).
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    messages: usize,
    bytes: usize,
}

/// Fragment reassembler; see the module documentation.
#[derive(Debug)]
pub struct Reassembler {
    limits: Limits,
    entries: Slab<Partial>,
    index: HashMap<(u32, u32), usize>,
    owners: HashMap<u32, Usage>,
    head: Option<usize>,
    tail: Option<usize>,
    bytes: usize,
    free: Vec<Vec<u8>>,
    /// The last completed token, lent to the caller until the next call.
    out: Vec<u8>,
    /// Reassemblies evicted to make room for a smaller holder (fair share).
    evicted: u64,
}

impl Reassembler {
    /// An empty reassembler with the given caps.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            entries: Slab::new(),
            index: HashMap::new(),
            owners: HashMap::new(),
            head: None,
            tail: None,
            bytes: 0,
            free: Vec::with_capacity(FREE_LIST_MAX),
            out: Vec::new(),
            evicted: 0,
        }
    }

    /// Is a reassembly of `(owner, msg_id)` in flight?
    pub fn contains(&self, owner: u32, msg_id: u32) -> bool {
        self.index.contains_key(&(owner, msg_id))
    }

    /// Reassemblies evicted since the last call (to count them as drops).
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// The caps in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes charged by in-flight reassemblies (always `<= total_bytes`).
    pub fn bytes_in_use(&self) -> usize {
        self.bytes
    }

    /// Number of in-flight reassemblies.
    pub fn in_flight(&self) -> usize {
        self.entries.len()
    }

    /// Bytes charged to `owner` (0 if it has nothing in flight).
    pub fn owner_bytes(&self, owner: u32) -> usize {
        self.owners.get(&owner).map_or(0, |u| u.bytes)
    }

    /// Adds one fragment.
    ///
    /// Returns `Ok(Some(token))` when this fragment completed its message:
    /// the token is borrowed from an internal buffer (valid until the next
    /// call) and the reassembly's memory is released. `Ok(None)` when the
    /// fragment was stored and the message is still incomplete. On `Err`
    /// nothing changed: no other reassembly, nor the one the fragment claims
    /// to belong to, is affected.
    pub fn insert(
        &mut self,
        now: Instant,
        owner: u32,
        msg_id: u32,
        index: u16,
        count: u16,
        chunk: &[u8],
    ) -> Result<Option<&[u8]>, FragmentError> {
        self.insert_shaped(now, owner, (msg_id, index, count), chunk, Shape::TOKEN)
    }

    /// [`Reassembler::insert`] for messages cut to `shape` (one owner uses one shape).
    pub fn insert_shaped(
        &mut self,
        now: Instant,
        owner: u32,
        (msg_id, index, count): (u32, u16, u16),
        chunk: &[u8],
        shape: Shape,
    ) -> Result<Option<&[u8]>, FragmentError> {
        self.recycle_output();

        if !(2..=shape.max_count).contains(&usize::from(count)) {
            return Err(FragmentError::BadCount);
        }
        if index >= count {
            return Err(FragmentError::IndexOutOfRange);
        }
        let is_last = index == count - 1;
        let len_ok = if is_last {
            (1..=shape.chunk).contains(&chunk.len())
        } else {
            chunk.len() == shape.chunk
        };
        if !len_ok {
            return Err(FragmentError::BadChunkLength);
        }

        let key = match self.lookup(owner, msg_id) {
            Some(key) => {
                let p = self.entries.get(key).ok_or(FragmentError::Inconsistent)?;
                if p.count != count || p.chunk != shape.chunk {
                    return Err(FragmentError::Inconsistent);
                }
                if p.have & (1u128 << index) != 0 {
                    return Err(FragmentError::Duplicate);
                }
                key
            }
            None => self.start(now, owner, msg_id, count, shape.chunk)?,
        };

        // Validated above: the write cannot fail and completes the insert.
        let offset = usize::from(index) * shape.chunk;
        let complete = {
            let p = self
                .entries
                .get_mut(key)
                .ok_or(FragmentError::Inconsistent)?;
            let dst = p
                .buf
                .get_mut(offset..offset + chunk.len())
                .ok_or(FragmentError::BadChunkLength)?;
            dst.copy_from_slice(chunk);
            p.have |= 1u128 << index;
            p.received += 1;
            if is_last {
                p.last_len = chunk.len();
            }
            p.received == p.count
        };
        if !complete {
            return Ok(None);
        }

        let Some(p) = self.remove_entry(key) else {
            return Ok(None);
        };
        let total = (usize::from(p.count) - 1) * p.chunk + p.last_len;
        let mut buf = p.buf;
        buf.truncate(total);
        self.out = buf;
        Ok(Some(&self.out))
    }

    /// Drops reassemblies whose first fragment is `timeout` or more before
    /// `now`; returns how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.recycle_output();
        let mut dropped = 0;
        while let Some(key) = self.head {
            let Some(p) = self.entries.get(key) else {
                // Unreachable (list and slab agree); do not spin.
                self.head = None;
                self.tail = None;
                break;
            };
            if now.saturating_duration_since(p.created) < self.limits.timeout {
                break;
            }
            if let Some(p) = self.remove_entry(key) {
                self.recycle(p.buf);
            }
            dropped += 1;
        }
        dropped
    }

    /// When the oldest reassembly times out (`None` when nothing is in
    /// flight, or if that instant is not representable).
    pub fn next_expiry(&self) -> Option<Instant> {
        let p = self.entries.get(self.head?)?;
        p.created.checked_add(self.limits.timeout)
    }

    /// Drops all of `owner`'s reassemblies (session ended). O(in flight) when
    /// the owner has something in flight, O(1) otherwise.
    pub fn remove_owner(&mut self, owner: u32) {
        self.recycle_output();
        if !self.owners.contains_key(&owner) {
            return;
        }
        let mut cur = self.head;
        while let Some(key) = cur {
            let Some(p) = self.entries.get(key) else {
                break;
            };
            cur = p.next;
            if p.owner == owner
                && let Some(p) = self.remove_entry(key)
            {
                self.recycle(p.buf);
            }
        }
    }

    /// Fair share under the global cap: while `need` more bytes do not fit, evict the oldest
    /// reassembly of the biggest other holder, as long as that holder keeps at least as much
    /// as `owner` would hold with this message. A few registered flooders can then only
    /// crowd each other out, never a client that holds less than they do.
    fn make_room(&mut self, owner: u32, mine: usize, need: usize) {
        if self.bytes.saturating_add(need) <= self.limits.total_bytes {
            return;
        }
        // Plan first, evict only if the plan makes room: a refused fragment changes nothing.
        let mut held: HashMap<u32, usize> = self
            .owners
            .iter()
            .filter(|(o, _)| **o != owner)
            .map(|(o, u)| (*o, u.bytes))
            .collect();
        let mut plan: Vec<usize> = Vec::new();
        let mut freed = 0usize;
        while self.bytes.saturating_sub(freed).saturating_add(need) > self.limits.total_bytes {
            let Some((victim, bytes)) = held
                .iter()
                .map(|(o, b)| (*o, *b))
                .max_by_key(|&(o, b)| (b, std::cmp::Reverse(o)))
            else {
                return;
            };
            if bytes < mine.saturating_add(need) {
                return;
            }
            // The victim's oldest reassembly not yet planned.
            let mut cur = self.head;
            let mut pick = None;
            while let Some(key) = cur {
                let Some(p) = self.entries.get(key) else {
                    break;
                };
                if p.owner == victim && !plan.contains(&key) {
                    pick = Some((key, p.charge));
                    break;
                }
                cur = p.next;
            }
            let Some((key, charge)) = pick else { return };
            plan.push(key);
            freed += charge;
            if let Some(b) = held.get_mut(&victim) {
                *b = b.saturating_sub(charge);
            }
        }
        for key in plan {
            if let Some(p) = self.remove_entry(key) {
                self.recycle(p.buf);
                self.evicted += 1;
            }
        }
    }

    fn lookup(&self, owner: u32, msg_id: u32) -> Option<usize> {
        self.index.get(&(owner, msg_id)).copied()
    }

    /// Admission + allocation for the first fragment of a message.
    fn start(
        &mut self,
        now: Instant,
        owner: u32,
        msg_id: u32,
        count: u16,
        chunk: usize,
    ) -> Result<usize, FragmentError> {
        let need = usize::from(count) * chunk;
        let limits = self.limits;
        if limits.per_owner_messages == 0 || need > limits.per_owner_bytes {
            return Err(FragmentError::OwnerLimit);
        }
        let (plan, freed) = self.plan_own_eviction(owner, need);
        if !plan.is_empty() {
            if self.bytes.saturating_sub(freed).saturating_add(need) > limits.total_bytes {
                // Room under its own caps would still be none under the global cap: refuse,
                // and change nothing.
                return Err(FragmentError::GlobalLimit);
            }
            for key in plan {
                if let Some(p) = self.remove_entry(key) {
                    self.recycle(p.buf);
                    self.evicted += 1;
                }
            }
        }
        let usage = self.owners.get(&owner).copied().unwrap_or_default();
        if usage.bytes.saturating_add(need) <= limits.per_owner_bytes {
            self.make_room(owner, usage.bytes, need);
        }
        let buf = self.take_buffer(need, usage.bytes)?;
        let charge = buf.capacity();

        // Keep the list ordered by `created` even if `now` goes backwards:
        // an entry then lives slightly longer, never shorter.
        let created = match self.tail.and_then(|t| self.entries.get(t)) {
            Some(t) if t.created > now => t.created,
            _ => now,
        };
        let key = self.push_entry(Partial {
            owner,
            msg_id,
            count,
            chunk,
            received: 0,
            last_len: 0,
            have: 0,
            buf,
            charge,
            created,
            prev: self.tail,
            next: None,
        });
        let u = self.owners.entry(owner).or_default();
        u.messages += 1;
        u.bytes += charge;
        self.bytes += charge;
        Ok(key)
    }

    /// Which of `owner`'s oldest incomplete reassemblies to drop to make room under its own
    /// caps for a new message of `need` bytes, and the bytes that frees. A sender that starts
    /// a new message is unlikely to finish its oldest; refusing the new one instead would let
    /// one lost fragment block every later message. Evictions are counted.
    fn plan_own_eviction(&self, owner: u32, need: usize) -> (Vec<usize>, usize) {
        let usage = self.owners.get(&owner).copied().unwrap_or_default();
        let (mut messages, mut bytes) = (usage.messages, usage.bytes);
        let mut plan = Vec::new();
        let mut freed = 0;
        let mut cur = self.head;
        while messages >= self.limits.per_owner_messages
            || bytes.saturating_add(need) > self.limits.per_owner_bytes
        {
            let Some(key) = cur else { break };
            let Some(p) = self.entries.get(key) else {
                break;
            };
            cur = p.next;
            if p.owner == owner {
                plan.push(key);
                freed += p.charge;
                messages -= 1;
                bytes -= p.charge;
            }
        }
        (plan, freed)
    }

    /// A zeroed buffer of `need` bytes for an owner already charged `owner_bytes`, recycled
    /// when one fits (best fit), whose whole capacity fits both caps.
    fn take_buffer(&mut self, need: usize, owner_bytes: usize) -> Result<Vec<u8>, FragmentError> {
        let (limits, global) = (self.limits, self.bytes);
        let check = |charge: usize| -> Result<(), FragmentError> {
            if owner_bytes.saturating_add(charge) > limits.per_owner_bytes {
                Err(FragmentError::OwnerLimit)
            } else if global.saturating_add(charge) > limits.total_bytes {
                Err(FragmentError::GlobalLimit)
            } else {
                Ok(())
            }
        };
        check(need)?;
        // Best-fit recycled buffer whose whole capacity fits the caps and
        // wastes at most half of it (the whole capacity is charged, so a
        // small message must not pin, and be charged for, a huge buffer).
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                let cap = b.capacity();
                cap >= need && cap <= need.saturating_mul(2) && check(cap).is_ok()
            })
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut buf = match best {
            Some(i) => self.free.swap_remove(i),
            None => Vec::with_capacity(need),
        };
        if let Err(e) = check(buf.capacity()) {
            // Only if the allocator handed out more than asked for.
            self.recycle(buf);
            return Err(e);
        }
        buf.clear();
        buf.resize(need, 0);
        Ok(buf)
    }

    /// Insert `p` at the tail of the creation-ordered list and index it.
    fn push_entry(&mut self, p: Partial) -> usize {
        let (owner, msg_id) = (p.owner, p.msg_id);
        let key = self.entries.insert(p);
        match self.tail.and_then(|t| self.entries.get_mut(t)) {
            Some(t) => t.next = Some(key),
            None => self.head = Some(key),
        }
        self.tail = Some(key);
        self.index.insert((owner, msg_id), key);
        key
    }

    /// Unlinks and un-charges an entry; the caller owns its buffer.
    fn remove_entry(&mut self, key: usize) -> Option<Partial> {
        let p = self.entries.try_remove(key)?;
        match p.prev.and_then(|k| self.entries.get_mut(k)) {
            Some(prev) => prev.next = p.next,
            None => self.head = p.next,
        }
        match p.next.and_then(|k| self.entries.get_mut(k)) {
            Some(next) => next.prev = p.prev,
            None => self.tail = p.prev,
        }
        self.index.remove(&(p.owner, p.msg_id));
        if let Some(u) = self.owners.get_mut(&p.owner) {
            u.messages = u.messages.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(p.charge);
            if u.messages == 0 {
                self.owners.remove(&p.owner);
            }
        }
        self.bytes = self.bytes.saturating_sub(p.charge);
        Some(p)
    }

    fn recycle_output(&mut self) {
        if self.out.capacity() > 0 {
            let buf = std::mem::take(&mut self.out);
            self.recycle(buf);
        }
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > MAX_TOKEN {
            return;
        }
        if self.free.len() < FREE_LIST_MAX {
            buf.clear();
            self.free.push(buf);
        }
        // Otherwise drop it: the free list only smooths the steady state.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const C: usize = FRAGMENT_CHUNK;

    fn token(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// (index, count, chunk) for every fragment of `tok`.
    fn fragments(tok: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
        let chunks: Vec<&[u8]> = tok.chunks(C).collect();
        let count = chunks.len() as u16;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i as u16, count, c.to_vec()))
            .collect()
    }

    fn feed(
        r: &mut Reassembler,
        now: Instant,
        owner: u32,
        msg_id: u32,
        frags: &[(u16, u16, Vec<u8>)],
    ) -> Option<Vec<u8>> {
        let mut done = None;
        for (i, n, c) in frags {
            let res = r
                .insert(now, owner, msg_id, *i, *n, c)
                .expect("valid fragment");
            if let Some(t) = res {
                assert!(done.is_none(), "completed twice");
                done = Some(t.to_vec());
            }
        }
        done
    }

    fn big_first(
        r: &mut Reassembler,
        now: Instant,
        owner: u32,
        msg_id: u32,
    ) -> Result<(), FragmentError> {
        r.insert(now, owner, msg_id, 0, MAX_FRAGMENTS as u16, &[0u8; C])
            .map(|o| assert!(o.is_none()))
    }

    #[test]
    fn defaults() {
        let l = Limits::default();
        assert_eq!(l.per_owner_messages, 4);
        assert_eq!(l.per_owner_bytes, 384 * 1024);
        assert_eq!(l.total_bytes, 8 * 1024 * 1024);
        assert_eq!(l.timeout, Duration::from_secs(5));
    }

    #[test]
    fn display_is_distinct() {
        let shown: HashSet<_> = FragmentError::ALL.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), FragmentError::ALL.len());
    }

    #[test]
    fn in_order_reverse_and_minimum_sizes() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        for (len, seed) in [(C + 1, 1u8), (2 * C, 2), (3 * C - 5, 3), (MAX_TOKEN, 4)] {
            let tok = token(len, seed);
            let mut frags = fragments(&tok);
            assert_eq!(
                feed(&mut r, now, 1, u32::from(seed), &frags),
                Some(tok.clone())
            );
            frags.reverse();
            assert_eq!(feed(&mut r, now, 1, u32::from(seed), &frags), Some(tok));
            assert_eq!(r.in_flight(), 0);
            assert_eq!(r.bytes_in_use(), 0);
        }
    }

    #[test]
    fn incomplete_returns_none_and_charges_expected_size() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.insert(now, 7, 1, 2, 3, &[1u8; 10]), Ok(None));
        assert_eq!(r.in_flight(), 1);
        assert!(r.bytes_in_use() >= 3 * C);
        assert_eq!(r.owner_bytes(7), r.bytes_in_use());
        assert_eq!(r.insert(now, 7, 1, 0, 3, &[2u8; C]), Ok(None));
        let done = r
            .insert(now, 7, 1, 1, 3, &[3u8; C])
            .expect("ok")
            .expect("complete");
        assert_eq!(done.len(), 2 * C + 10);
        assert!(done[..C].iter().all(|b| *b == 2));
        assert!(done[C..2 * C].iter().all(|b| *b == 3));
        assert!(done[2 * C..].iter().all(|b| *b == 1));
        assert_eq!(r.bytes_in_use(), 0);
        assert_eq!(r.owner_bytes(7), 0);
    }

    #[test]
    fn bad_count() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        for count in [0u16, 1, MAX_FRAGMENTS as u16 + 1, u16::MAX] {
            assert_eq!(
                r.insert(now, 1, 1, 0, count, &[0u8; C]),
                Err(FragmentError::BadCount)
            );
        }
        assert_eq!(
            r.insert(now, 1, 1, 0, 1, &[0u8; 5]),
            Err(FragmentError::BadCount)
        );
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn index_out_of_range() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(
            r.insert(now, 1, 1, 2, 2, &[0u8; 5]),
            Err(FragmentError::IndexOutOfRange)
        );
        assert_eq!(
            r.insert(now, 1, 1, u16::MAX, 2, &[0u8; 5]),
            Err(FragmentError::IndexOutOfRange)
        );
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn bad_chunk_lengths() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        let e = Err(FragmentError::BadChunkLength);
        assert_eq!(r.insert(now, 1, 1, 0, 3, &[0u8; C - 1]), e);
        assert_eq!(r.insert(now, 1, 1, 1, 3, &[0u8; C + 1]), e);
        assert_eq!(r.insert(now, 1, 1, 0, 3, &[]), e);
        assert_eq!(r.insert(now, 1, 1, 2, 3, &[]), e);
        assert_eq!(r.insert(now, 1, 1, 2, 3, &[0u8; C + 1]), e);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.insert(now, 1, 1, 2, 3, &[0u8; C]), Ok(None));
        assert_eq!(r.insert(now, 1, 1, 0, 3, &[0u8; 1]), e);
        assert_eq!(r.in_flight(), 1);
    }

    #[test]
    fn duplicate_and_inconsistent_do_not_disturb() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        let tok = token(3 * C, 9);
        let frags = fragments(&tok);
        let (i, n, c) = &frags[0];
        assert_eq!(r.insert(now, 1, 5, *i, *n, c), Ok(None));
        let used = r.bytes_in_use();
        // Duplicate with different content must not overwrite.
        assert_eq!(
            r.insert(now, 1, 5, 0, 3, &[0xEE; C]),
            Err(FragmentError::Duplicate)
        );
        // Same msg_id, other count.
        assert_eq!(
            r.insert(now, 1, 5, 1, 4, &[0xEE; C]),
            Err(FragmentError::Inconsistent)
        );
        assert_eq!(
            r.insert(now, 1, 5, 1, 2, &[0xEE; 7]),
            Err(FragmentError::Inconsistent)
        );
        assert_eq!(r.bytes_in_use(), used);
        assert_eq!(r.in_flight(), 1);
        assert_eq!(feed(&mut r, now, 1, 5, &frags[1..]), Some(tok));
    }

    #[test]
    fn owners_and_msg_ids_are_separate() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        let a = token(2 * C, 1);
        let b = token(2 * C, 2);
        let fa = fragments(&a);
        let fb = fragments(&b);
        // Same msg_id, different owners; same owner, different msg_ids.
        assert_eq!(r.insert(now, 1, 9, 0, 2, &fa[0].2), Ok(None));
        assert_eq!(r.insert(now, 2, 9, 0, 2, &fb[0].2), Ok(None));
        assert_eq!(r.insert(now, 1, 10, 0, 2, &fb[0].2), Ok(None));
        assert_eq!(r.in_flight(), 3);
        assert_eq!(
            r.insert(now, 2, 9, 1, 2, &fb[1].2).expect("ok"),
            Some(&b[..])
        );
        assert_eq!(
            r.insert(now, 1, 9, 1, 2, &fa[1].2).expect("ok"),
            Some(&a[..])
        );
        assert_eq!(r.in_flight(), 1);
    }

    #[test]
    fn a_new_message_over_the_owner_cap_evicts_the_owners_oldest() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        for m in 0..4 {
            assert_eq!(r.insert(now, 1, m, 0, 2, &[0u8; C]), Ok(None));
        }
        assert_eq!(r.insert(now, 2, 9, 0, 2, &[0u8; C]), Ok(None));
        // A fifth message of owner 1 evicts its oldest (message 0), not the newcomer.
        assert_eq!(r.insert(now, 1, 4, 0, 2, &[0u8; C]), Ok(None));
        assert_eq!(r.take_evicted(), 1);
        assert!(!r.contains(1, 0));
        assert!(r.contains(1, 4) && r.contains(1, 1) && r.contains(2, 9));
        // The others still progress.
        assert!(r.insert(now, 1, 1, 1, 2, &[0u8; 3]).expect("ok").is_some());
        assert!(r.insert(now, 2, 9, 1, 2, &[0u8; 3]).expect("ok").is_some());
    }

    #[test]
    fn owner_byte_limit_against_max_count_first_fragments() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(big_first(&mut r, now, 1, 0), Ok(()));
        assert_eq!(big_first(&mut r, now, 1, 1), Ok(()));
        assert_eq!(big_first(&mut r, now, 1, 2), Ok(()));
        // 4 * 74 * 1188 <= 384 KiB: the fourth fits, a fifth evicts the oldest.
        assert_eq!(big_first(&mut r, now, 1, 3), Ok(()));
        assert_eq!(big_first(&mut r, now, 1, 4), Ok(()));
        assert_eq!(r.take_evicted(), 1);
        assert_eq!(r.in_flight(), 4);
        assert!(r.owner_bytes(1) <= Limits::default().per_owner_bytes);
    }

    #[test]
    fn owner_byte_limit_binds_before_the_message_cap() {
        let now = Instant::now();
        let limits = Limits {
            per_owner_messages: 8,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        for m in 0..4 {
            assert_eq!(big_first(&mut r, now, 1, m), Ok(()));
        }
        // 5 * 74 * 1188 > 384 KiB: the oldest goes.
        assert_eq!(big_first(&mut r, now, 1, 4), Ok(()));
        assert_eq!(r.take_evicted(), 1);
        assert!(r.owner_bytes(1) <= limits.per_owner_bytes);
        // A small message fits in the remaining owner budget without evicting.
        assert_eq!(r.insert(now, 1, 9, 0, 2, &[0u8; C]), Ok(None));
        assert_eq!(r.take_evicted(), 0);
    }

    #[test]
    fn global_limit_holds_under_flood() {
        let now = Instant::now();
        let limits = Limits::default();
        let mut r = Reassembler::new(limits);
        for owner in 0..1000u32 {
            for m in 0..4u32 {
                match big_first(&mut r, now, owner, m) {
                    Ok(()) | Err(FragmentError::GlobalLimit) | Err(FragmentError::OwnerLimit) => {}
                    Err(e) => panic!("unexpected {e:?}"),
                }
                assert!(r.bytes_in_use() <= limits.total_bytes);
            }
        }
        assert!(r.in_flight() <= limits.total_bytes / (MAX_FRAGMENTS * C));
        assert!(r.take_evicted() > 0);
        assert_eq!(r.take_evicted(), 0);
    }

    #[test]
    fn flooders_cannot_starve_a_client_that_holds_less() {
        let now = Instant::now();
        let limits = Limits::default();
        let mut r = Reassembler::new(limits);
        // 24 flooders with four largest messages each fill the global cap.
        for owner in 1..=24u32 {
            for m in 0..4u32 {
                let _ = big_first(&mut r, now, owner, m);
            }
        }
        assert!(r.bytes_in_use() + MAX_FRAGMENTS * C > limits.total_bytes);
        r.take_evicted();
        // A client holding nothing still gets its large message in, and completes it.
        for i in 0..MAX_FRAGMENTS as u16 - 1 {
            assert_eq!(
                r.insert(now, 100, 7, i, MAX_FRAGMENTS as u16, &[1u8; C]),
                Ok(None)
            );
        }
        let done = r.insert(
            now,
            100,
            7,
            MAX_FRAGMENTS as u16 - 1,
            MAX_FRAGMENTS as u16,
            &[1u8; 5],
        );
        assert_eq!(
            done.map(|t| t.map(<[u8]>::len)),
            Ok(Some((MAX_FRAGMENTS - 1) * C + 5))
        );
        assert_eq!(r.take_evicted(), 1);
        // A flooder cannot evict a holder smaller than itself: owner 1 (now holding four)
        // asking for a fifth is over its own cap, and flooder 25 with nothing may only evict
        // the biggest holders, never client 100's in-flight message.
        assert_eq!(r.insert(now, 100, 8, 0, 2, &[0u8; C]), Ok(None));
        for m in 0..4u32 {
            let _ = big_first(&mut r, now, 25, m);
        }
        assert!(
            r.owner_bytes(100) > 0,
            "the small holder's message survived"
        );
        assert!(r.bytes_in_use() <= limits.total_bytes);
    }

    #[test]
    fn zero_limits_reject_everything() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits {
            per_owner_messages: 0,
            ..Limits::default()
        });
        assert_eq!(
            r.insert(now, 1, 1, 0, 2, &[0u8; C]),
            Err(FragmentError::OwnerLimit)
        );
        let mut r = Reassembler::new(Limits {
            total_bytes: 0,
            ..Limits::default()
        });
        assert_eq!(
            r.insert(now, 1, 1, 0, 2, &[0u8; C]),
            Err(FragmentError::GlobalLimit)
        );
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn expiry_from_first_fragment() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.next_expiry(), None);
        assert_eq!(r.insert(t0, 1, 1, 0, 3, &[0u8; C]), Ok(None));
        assert_eq!(r.insert(t0 + s(2), 2, 1, 0, 2, &[0u8; C]), Ok(None));
        assert_eq!(r.next_expiry(), Some(t0 + s(5)));
        // Activity does not extend the lifetime.
        assert_eq!(r.insert(t0 + s(4), 1, 1, 1, 3, &[0u8; C]), Ok(None));
        assert_eq!(r.expire(t0 + s(4)), 0);
        assert_eq!(r.expire(t0 + s(5) - Duration::from_nanos(1)), 0);
        assert_eq!(r.expire(t0 + s(5)), 1);
        assert_eq!(r.in_flight(), 1);
        assert_eq!(r.owner_bytes(1), 0);
        assert_eq!(r.next_expiry(), Some(t0 + s(7)));
        // The late last fragment starts over (and is only one fragment).
        assert_eq!(r.insert(t0 + s(5), 1, 1, 2, 3, &[0u8; 3]), Ok(None));
        assert_eq!(r.expire(t0 + s(100)), 2);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.bytes_in_use(), 0);
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn time_going_backwards_never_expires_early() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.insert(t0, 1, 1, 0, 2, &[0u8; C]), Ok(None));
        assert_eq!(
            r.insert(t0 - Duration::from_secs(10), 1, 2, 0, 2, &[0u8; C]),
            Ok(None)
        );
        assert_eq!(r.expire(t0 + Duration::from_secs(4)), 0);
        assert_eq!(r.expire(t0 + Duration::from_secs(5)), 2);
    }

    #[test]
    fn remove_owner_only_touches_that_owner() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        for owner in 1..=3u32 {
            for m in 0..3u32 {
                assert_eq!(r.insert(now, owner, m, 0, 2, &[0u8; C]), Ok(None));
            }
        }
        let per = r.owner_bytes(2);
        r.remove_owner(2);
        r.remove_owner(99);
        assert_eq!(r.in_flight(), 6);
        assert_eq!(r.owner_bytes(2), 0);
        assert_eq!(r.bytes_in_use(), 2 * per);
        // Others complete; owner 2 starts over.
        assert!(r.insert(now, 1, 1, 1, 2, &[0u8; 1]).expect("ok").is_some());
        assert!(r.insert(now, 3, 2, 1, 2, &[0u8; 1]).expect("ok").is_some());
        assert_eq!(r.insert(now, 2, 1, 1, 2, &[0u8; 1]), Ok(None));
        r.remove_owner(1);
        r.remove_owner(3);
        r.remove_owner(2);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.bytes_in_use(), 0);
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn buffers_are_recycled() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        let tok = token(MAX_TOKEN, 1);
        let frags = fragments(&tok);
        let mut ptrs = HashSet::new();
        for m in 0..20u32 {
            let mut done = None;
            for (i, n, c) in &frags {
                if let Some(t) = r.insert(now, 1, m, *i, *n, c).expect("ok") {
                    assert_eq!(t, &tok[..]);
                    done = Some(t.as_ptr() as usize);
                }
            }
            ptrs.insert(done.expect("complete"));
        }
        // The output buffer goes back to the free list and serves the next
        // message: only a couple of distinct allocations overall.
        assert!(ptrs.len() <= 2, "{} distinct buffers", ptrs.len());
        assert!(r.free.len() <= FREE_LIST_MAX);
    }

    #[test]
    fn small_message_does_not_take_huge_buffer() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        let big = token(MAX_TOKEN, 1);
        assert!(feed(&mut r, now, 1, 1, &fragments(&big)).is_some());
        assert_eq!(r.insert(now, 1, 2, 0, 2, &[0u8; C]), Ok(None));
        assert!(r.bytes_in_use() <= 4 * C, "charged {}", r.bytes_in_use());
    }

    fn check_invariants(r: &Reassembler) {
        let l = r.limits;
        assert!(r.bytes <= l.total_bytes);
        assert_eq!(r.index.len(), r.entries.len());
        let mut sum = 0;
        let mut per: HashMap<u32, Usage> = HashMap::new();
        for (_, p) in r.entries.iter() {
            sum += p.charge;
            let u = per.entry(p.owner).or_default();
            u.messages += 1;
            u.bytes += p.charge;
            assert!(p.charge >= usize::from(p.count) * C);
            assert_eq!(p.have.count_ones(), u32::from(p.received));
        }
        assert_eq!(sum, r.bytes);
        assert_eq!(per.len(), r.owners.len());
        for (o, u) in &per {
            let got = r.owners.get(o).copied().unwrap_or_default();
            assert_eq!((got.messages, got.bytes), (u.messages, u.bytes));
            assert!(u.messages <= l.per_owner_messages);
            assert!(u.bytes <= l.per_owner_bytes);
        }
        // The creation list visits every entry once, in created order.
        let mut n = 0;
        let mut cur = r.head;
        let mut prev: Option<usize> = None;
        let mut last_created = None;
        while let Some(k) = cur {
            let p = &r.entries[k];
            assert_eq!(p.prev, prev);
            if let Some(t) = last_created {
                assert!(p.created >= t);
            }
            last_created = Some(p.created);
            prev = Some(k);
            cur = p.next;
            n += 1;
            assert!(n <= r.entries.len());
        }
        assert_eq!(r.tail, prev);
        assert_eq!(n, r.entries.len());
        assert!(r.free.len() <= FREE_LIST_MAX);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Frag {
            owner: u32,
            msg: u32,
            index: u16,
            count: u16,
            len: usize,
        },
        Expire,
        Advance(u64),
        /// Clock going backwards (must not break the creation-order list).
        Back(u64),
        RemoveOwner(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            20 => (0u32..4, 0u32..6, 0u16..80, prop_oneof![0u16..6, 70u16..76], prop_oneof![Just(C), 0usize..C + 2])
                .prop_map(|(owner, msg, index, count, len)| Op::Frag { owner, msg, index, count, len }),
            2 => Just(Op::Expire),
            3 => (0u64..3000).prop_map(Op::Advance),
            1 => (0u64..3000).prop_map(Op::Back),
            1 => (0u32..4).prop_map(Op::RemoveOwner),
        ]
    }

    proptest! {
        /// Arbitrary (mostly invalid) fragments under tight caps: never
        /// panics, and caps/bookkeeping invariants always hold.
        #[test]
        fn prop_caps_and_bookkeeping(
            per_owner_messages in 0usize..5,
            per_owner_kib in 0usize..200,
            total_kib in 0usize..400,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut r = Reassembler::new(Limits {
                per_owner_messages,
                per_owner_bytes: per_owner_kib * 1024,
                total_bytes: total_kib * 1024,
                timeout: Duration::from_secs(2),
            });
            let data = vec![0x5Au8; C + 2];
            for op in ops {
                match op {
                    Op::Frag { owner, msg, index, count, len } => {
                        let before = (r.in_flight(), r.bytes_in_use());
                        let res = r.insert(now, owner, msg, index, count, &data[..len]).map(|o| o.map(<[u8]>::len));
                        match res {
                            // Refused: nothing changed (eviction happens only for an accepted fragment).
                            Err(_) => prop_assert_eq!((r.in_flight(), r.bytes_in_use()), before),
                            Ok(Some(n)) => prop_assert!(n > (usize::from(count) - 1) * C),
                            Ok(None) => {}
                        }
                    }
                    Op::Expire => {
                        let before = r.in_flight();
                        let n = r.expire(now);
                        prop_assert_eq!(r.in_flight(), before - n);
                        if let Some(e) = r.next_expiry() {
                            prop_assert!(e > now);
                        }
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Back(ms) => {
                        now = now.checked_sub(Duration::from_millis(ms)).unwrap_or(now).max(t0);
                    }
                    Op::RemoveOwner(o) => {
                        r.remove_owner(o);
                        prop_assert_eq!(r.owner_bytes(o), 0);
                    }
                }
                check_invariants(&r);
            }
        }

        /// Several messages, fragments shuffled and interleaved, with
        /// duplicates: each completes exactly once with the exact bytes.
        #[test]
        fn prop_shuffled_interleaved_reassembly(
            lens in proptest::collection::vec(C + 1..=MAX_TOKEN, 1..4),
            dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            seed in any::<u64>(),
        ) {
            let now = Instant::now();
            let mut r = Reassembler::new(Limits {
                per_owner_bytes: usize::MAX,
                total_bytes: usize::MAX,
                ..Limits::default()
            });
            let toks: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, l)| token(*l, i as u8)).collect();
            let mut all: Vec<(u32, u16, u16, Vec<u8>)> = Vec::new();
            for (m, t) in toks.iter().enumerate() {
                for (i, n, c) in fragments(t) {
                    all.push((m as u32, i, n, c));
                }
            }
            // Deterministic shuffle from `seed` (xorshift).
            let mut x = seed | 1;
            for i in (1..all.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                all.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut seen = HashSet::new();
            let mut done = vec![false; toks.len()];
            let mut step = 0usize;
            for (m, i, n, c) in &all {
                let res = r.insert(now, 42, *m, *i, *n, c).map(|o| o.map(<[u8]>::to_vec));
                if !seen.insert((*m, *i)) {
                    prop_assert_eq!(res, Err(FragmentError::Duplicate));
                    continue;
                }
                match res {
                    Ok(Some(t)) => {
                        prop_assert!(!done[*m as usize]);
                        prop_assert_eq!(&t, &toks[*m as usize]);
                        done[*m as usize] = true;
                    }
                    Ok(None) => {}
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                }
                // Inject duplicates of already-seen, still-incomplete fragments.
                if let Some(d) = dups.get(step) {
                    let (dm, di, dn, dc) = &all[d.index(all.len())];
                    if seen.contains(&(*dm, *di)) && !done[*dm as usize] {
                        prop_assert_eq!(r.insert(now, 42, *dm, *di, *dn, dc), Err(FragmentError::Duplicate));
                    }
                }
                step += 1;
            }
            prop_assert!(done.iter().all(|d| *d));
            prop_assert_eq!(r.in_flight(), 0);
            prop_assert_eq!(r.bytes_in_use(), 0);
        }
    }
}
