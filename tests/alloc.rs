//! No heap allocation per relayed message in the steady state (issue 5), in unicast mode (one
//! message per turn, and 20 per turn to 99 clients, more than the outbox keeps between turns)
//! and in group mode (every member holding the current key: one group datagram per message;
//! unnamed and named senders).
//!
//! A counting `#[global_allocator]` counts only while this thread has switched it on, and it
//! is switched on only around calls into the relay core (`handle_datagram`, `handle_timeout`,
//! `poll_timeout`, `transmits`, `advance_transmits`): the client side (`ClientSession::send`,
//! which allocates a datagram `Vec`) and the test's own bookkeeping are not counted.
//!
//! `MCRELAY_ALLOC_BACKTRACE=1 cargo test --test alloc -- --nocapture` prints the call stacks
//! of the first allocations found inside the core.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcrelay::client::{ClientSession, Event};
use mcrelay::core::{Config, RelayCore};
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;
use mcrelay::{Distribution, GroupConfig};

/// Where relay datagrams "come from" in this sans-IO harness (clients lock onto it).
const RELAY: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 254),
    9,
));

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}
static TRACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
const MAX_TRACES: usize = 5;
/// `MCRELAY_ALLOC_BACKTRACE` is set. Read by [`counted`] before it switches counting on, never
/// inside the allocator: `env::var_os` allocates the value it returns, and calling it from
/// `note` recursed into `note` until the stack overflowed.
static BACKTRACES: OnceLock<bool> = OnceLock::new();

fn note(size: usize) {
    let on = ON.try_with(|o| o.get()).unwrap_or(false);
    if !on {
        return;
    }
    COUNT.with(|c| c.set(c.get() + 1));
    BYTES.with(|b| b.set(b.get() + size as u64));
    if BACKTRACES.get().copied().unwrap_or(false) {
        // Off while capturing: the backtrace itself allocates.
        ON.with(|o| o.set(false));
        if let Ok(mut t) = TRACES.lock()
            && t.len() < MAX_TRACES
        {
            let bt = std::backtrace::Backtrace::force_capture();
            t.push(format!("allocation of {size} bytes:\n{bt}"));
        }
        ON.with(|o| o.set(true));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f` with allocation counting on.
fn counted<T>(f: impl FnOnce() -> T) -> T {
    BACKTRACES.get_or_init(|| std::env::var_os("MCRELAY_ALLOC_BACKTRACE").is_some());
    ON.with(|o| o.set(true));
    let r = f();
    ON.with(|o| o.set(false));
    r
}

struct Peer {
    addr: SocketAddr,
    s: ClientSession,
}

/// Move datagrams both ways until nothing moves (handshakes, JOIN notices, group keys and
/// their acknowledgements); datagrams to `group` reach every member that knows the group.
fn pump(core: &mut RelayCore, peers: &mut [Peer], group: Option<SocketAddr>, now: Instant) {
    for _ in 0..100 {
        let mut moved = false;
        for p in peers.iter_mut() {
            while let Some(d) = p.s.poll_transmit() {
                core.handle_datagram(now, p.addr, &d);
                moved = true;
            }
        }
        core.process_registrations(now, 64);
        let out: Vec<(SocketAddr, Vec<u8>)> =
            core.transmits().map(|(a, d)| (a, d.to_vec())).collect();
        core.advance_transmits(out.len(), 0);
        for (to, d) in out {
            if Some(to) == group {
                for p in peers.iter_mut().filter(|p| p.s.group_addr().is_some()) {
                    p.s.handle_datagram(now, RELAY, &d);
                }
                moved = true;
            } else if let Some(p) = peers.iter_mut().find(|p| p.addr == to) {
                p.s.handle_datagram(now, RELAY, &d);
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
    panic!("pump never settled");
}

/// One message from peer 0 through the core; returns the relay's datagrams if `keep`.
fn relay_one(
    core: &mut RelayCore,
    peers: &mut [Peer],
    now: Instant,
    body: &[u8],
    keep: bool,
) -> Vec<(SocketAddr, Vec<u8>)> {
    peers[0].s.send(now, body).expect("registered");
    let d = peers[0].s.poll_transmit().expect("one datagram");
    assert!(peers[0].s.poll_transmit().is_none());
    let from = peers[0].addr;
    counted(|| {
        core.handle_timeout(now);
        let _ = core.poll_timeout();
        core.handle_datagram(now, from, &d);
    });
    let out = if keep {
        core.transmits().map(|(a, d)| (a, d.to_vec())).collect()
    } else {
        Vec::new()
    };
    counted(|| {
        let n = core.transmits().count();
        core.advance_transmits(n, 0);
    });
    out
}

#[test]
fn relaying_allocates_nothing_per_message() {
    let start = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = ServerKey::generate(2048).expect("keygen");
    let mut core = RelayCore::new(Config::default(), key, Rng::from_seed([7; 32]), start, unix)
        .expect("valid config");
    // Seven clients: each message goes to six, one batch of four (`fernet::finish_raw_x4`)
    // and two sealed one by one.
    let mut peers: Vec<Peer> = (1..=7u8)
        .map(|i| Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 40000 + u16::from(i))),
            s: ClientSession::new(Rng::from_seed([i; 32]), None, None, start),
        })
        .collect();
    pump(&mut core, &mut peers, None, start);
    assert_eq!(core.client_count(), 7);
    for p in peers.iter_mut() {
        assert!(p.s.id().is_some(), "registered");
        while p.s.poll_event().is_some() {}
    }

    // 100-byte bodies, as in the benchmark. 1 ms of relay time per message: 11 s in all,
    // inside the 30 s client timeout, so no session expires and no keep-alive is needed.
    let mut body = [0u8; 100];
    let mut now = start;
    let tick = Duration::from_millis(1);
    for i in 0..1_000u32 {
        now += tick;
        body[..4].copy_from_slice(&i.to_be_bytes());
        relay_one(&mut core, &mut peers, now, &body, false);
    }
    check_the_instrument();

    let deliveries0 = core.stats().deliveries;
    COUNT.with(|c| c.set(0));
    BYTES.with(|b| b.set(0));
    const MESSAGES: u32 = 10_000;
    for i in 0..MESSAGES {
        now += tick;
        body[..4].copy_from_slice(&(1_000 + i).to_be_bytes());
        let last = i == MESSAGES - 1;
        let out = relay_one(&mut core, &mut peers, now, &body, last);
        if last {
            // The last message really reached all six other clients.
            assert_eq!(out.len(), 6);
            for (to, d) in out {
                let p = peers.iter_mut().find(|p| p.addr == to).unwrap();
                p.s.handle_datagram(now, RELAY, &d);
                match p.s.poll_event() {
                    Some(Event::Message { data, .. }) => assert_eq!(data, body),
                    other => panic!("expected the message, got {other:?}"),
                }
            }
        }
    }
    assert_eq!(
        core.stats().deliveries - deliveries0,
        6 * u64::from(MESSAGES)
    );
    let (count, bytes) = (COUNT.with(|c| c.get()), BYTES.with(|b| b.get()));
    for t in TRACES.lock().unwrap().iter() {
        eprintln!("{t}");
    }
    assert_eq!(
        count, 0,
        "{count} allocations ({bytes} bytes) inside the relay core while relaying {MESSAGES} \
         messages; rerun with MCRELAY_ALLOC_BACKTRACE=1 -- --nocapture for the call stacks"
    );
}

/// Unicast mode under load: 100 clients, and 20 messages from one of them handled per loop
/// turn before the turn's datagrams are sent (as the driver does with a read batch), so that
/// every turn queues 1,980 datagrams (about 370 KB), more than the outbox keeps across
/// drains. `Outbox::advance` used to shrink its buffers after every such drain and the next
/// turn grew them again (4-9 allocations a turn measured with 20-32 messages per batch).
#[test]
fn unicast_bursts_allocate_nothing_per_message() {
    let start = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = ServerKey::generate(2048).expect("keygen");
    let cfg = Config {
        max_clients: 128,
        max_clients_per_source: 128,
        handshakes_per_sec: 1_000_000,
        handshakes_per_source_per_sec: 1_000_000,
        ..Config::default()
    };
    let mut core = RelayCore::new(cfg, key, Rng::from_seed([7; 32]), start, unix).expect("valid");
    const N: u16 = 100;
    const BATCH: usize = 20;
    let mut peers: Vec<Peer> = (1..=N)
        .map(|i| Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 42000 + i)),
            s: ClientSession::new(Rng::from_seed([i as u8; 32]), None, None, start),
        })
        .collect();
    // In groups (the handshake queue holds 64); the JOIN notices for members outside a group
    // are dropped, which is all the same to unicast mode.
    for group in peers.chunks_mut(25) {
        pump(&mut core, group, None, start);
    }
    assert_eq!(core.client_count(), usize::from(N));
    // The JOIN notices still in the backlog (1,024 copies a turn).
    for _ in 0..100 {
        core.handle_timeout(start);
        let n = core.transmits().count();
        if n == 0 {
            break;
        }
        core.advance_transmits(n, 0);
    }
    let mut body = [0u8; 100];
    let mut now = start;
    let mut seq = 0u32;
    let mut turn = |core: &mut RelayCore, peers: &mut [Peer], now: Instant| {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            body[..4].copy_from_slice(&seq.to_be_bytes());
            seq += 1;
            peers[0].s.send(now, &body).expect("registered");
            batch.push(peers[0].s.poll_transmit().expect("one datagram"));
        }
        let from = peers[0].addr;
        counted(|| {
            core.handle_timeout(now);
            let _ = core.poll_timeout();
            for d in &batch {
                core.handle_datagram(now, from, d);
            }
            let n = core.transmits().count();
            assert_eq!(n, BATCH * (usize::from(N) - 1), "nothing dropped");
            core.advance_transmits(n, 0);
        });
    };
    for _ in 0..100 {
        now += Duration::from_millis(5);
        turn(&mut core, &mut peers, now);
    }
    check_the_instrument();
    let deliveries0 = core.stats().deliveries;
    COUNT.with(|c| c.set(0));
    BYTES.with(|b| b.set(0));
    const TURNS: u32 = 500;
    for _ in 0..TURNS {
        now += Duration::from_millis(5);
        turn(&mut core, &mut peers, now);
    }
    let (count, bytes) = (COUNT.with(|c| c.get()), BYTES.with(|b| b.get()));
    assert_eq!(
        core.stats().deliveries - deliveries0,
        u64::from(TURNS) * BATCH as u64 * u64::from(N - 1)
    );
    for t in TRACES.lock().unwrap().iter() {
        eprintln!("{t}");
    }
    assert_eq!(
        count,
        0,
        "{count} allocations ({bytes} bytes) inside the relay core in {TURNS} turns of {BATCH} \
         messages to {} clients",
        N - 1
    );
}

/// The instrument works: one allocation inside `counted` is seen.
fn check_the_instrument() {
    COUNT.with(|c| c.set(0));
    let v = counted(|| std::hint::black_box(Vec::<u8>::with_capacity(64)));
    drop(v);
    assert_eq!(COUNT.with(|c| c.get()), 1, "the counting allocator counts");
    TRACES.lock().unwrap().clear();
}

/// Group mode, steady state: seven version-3 members that all acknowledged the current key
/// (`pending_acks() == 0`), so every message is sealed once and sent once, to the
/// distribution group; 10,000 of them after 1,000 to warm up. `rotate_messages` makes an
/// epoch change (the ratchet) every 1,000 messages, as a busy relay's would be: still part
/// of the steady state. `named`: the members are admitted by name (an admission list), so
/// every message carries its sender's name. Returns (allocations, bytes) counted.
fn group_steady_state(named: bool) -> (u64, u64) {
    let start = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = ServerKey::generate(2048).expect("keygen");
    let mut g = GroupConfig::for_ingest(SocketAddrV4::new(Ipv4Addr::new(239, 255, 9, 9), 6000));
    g.rotate_messages = 1_000;
    let group = SocketAddr::V4(g.addr);
    let cred = |i: u8| (format!("member{i}"), format!("token{i}"));
    let cfg = Config {
        distribution: Distribution::Group(g),
        admission: named.then(|| (1..=7u8).map(cred).collect()),
        ..Config::default()
    };
    let mut core =
        RelayCore::new(cfg, key, Rng::from_seed([7; 32]), start, unix).expect("valid config");
    let mut peers: Vec<Peer> = (1..=7u8)
        .map(|i| Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 41000 + u16::from(i))),
            s: ClientSession::new(Rng::from_seed([i; 32]), None, named.then(|| cred(i)), start),
        })
        .collect();
    pump(&mut core, &mut peers, Some(group), start);
    assert_eq!(core.client_count(), 7);
    for p in peers.iter_mut() {
        assert!(p.s.id().is_some(), "registered");
        assert_eq!(p.s.version(), 3, "speaks version 3");
        assert!(p.s.group_addr().is_some(), "knows the group");
        while p.s.poll_event().is_some() {}
    }
    assert_eq!(core.mode(), "group");
    assert_eq!(core.pending_acks(), 0, "every member acknowledged its key");

    // The group datagrams of the warm-up go to every member, so that they follow the
    // ratchet.
    let mut body = [0u8; 100];
    let mut now = start;
    let tick = Duration::from_millis(1);
    for i in 0..1_000u32 {
        now += tick;
        body[..4].copy_from_slice(&i.to_be_bytes());
        let out = relay_one(&mut core, &mut peers, now, &body, true);
        assert_eq!(out.len(), 1, "one datagram per message");
        for p in peers.iter_mut().skip(1) {
            p.s.handle_datagram(now, RELAY, &out[0].1);
            while p.s.poll_event().is_some() {}
        }
    }
    assert_eq!(core.pending_acks(), 0, "still steady");
    check_the_instrument();

    let s0 = core.stats().clone();
    let epoch0 = core.epoch();
    COUNT.with(|c| c.set(0));
    BYTES.with(|b| b.set(0));
    const MESSAGES: u32 = 10_000;
    let mut last = Vec::new();
    for i in 0..MESSAGES {
        now += tick;
        body[..4].copy_from_slice(&(1_000 + i).to_be_bytes());
        // Members see every 500th group datagram (copied outside the counted calls), enough
        // to follow the ratchet (at most 8 steps alone), and the last one.
        let keep = (i + 1) % 500 == 0 || i == MESSAGES - 1;
        let out = relay_one(&mut core, &mut peers, now, &body, keep);
        if keep {
            assert_eq!(out.len(), 1);
            for p in peers.iter_mut().skip(1) {
                p.s.handle_datagram(now, RELAY, &out[0].1);
                if i < MESSAGES - 1 {
                    while p.s.poll_event().is_some() {}
                }
            }
            last = out;
        }
    }
    let counted = (COUNT.with(|c| c.get()), BYTES.with(|b| b.get()));
    // The last message reached all six other members from its one group datagram, with its
    // sender's name if it has one.
    assert_eq!(last[0].0, group, "sent to the distribution group");
    let sender_name = named.then(|| cred(1).0);
    for p in peers.iter_mut().skip(1) {
        match p.s.poll_event() {
            Some(Event::Message { data, name, .. }) => {
                assert_eq!(data, body);
                assert_eq!(name, sender_name);
            }
            other => panic!("expected the message, got {other:?}"),
        }
    }
    let s1 = core.stats();
    assert_eq!(s1.group_datagrams - s0.group_datagrams, u64::from(MESSAGES));
    assert_eq!(
        s1.datagrams_out - s0.datagrams_out,
        u64::from(MESSAGES),
        "nothing but the group datagrams"
    );
    assert_eq!(s1.deliveries - s0.deliveries, 6 * u64::from(MESSAGES));
    assert!(
        core.epoch() >= epoch0 + 9,
        "the ratchet turned during the measurement"
    );
    assert_eq!(core.pending_acks(), 0);
    for t in TRACES.lock().unwrap().iter() {
        eprintln!("{t}");
    }
    counted
}

#[test]
fn group_mode_relaying_allocates_nothing_per_message() {
    let (count, bytes) = group_steady_state(false);
    assert_eq!(
        count, 0,
        "{count} allocations ({bytes} bytes) inside the relay core while relaying 10000 \
         messages in group mode; rerun with MCRELAY_ALLOC_BACKTRACE=1 -- --nocapture for the \
         call stacks"
    );
}

/// Named senders (an admission list): every message carries the sender's name. `Group::relay`
/// (src/core/group.rs) used to clone it per message to build the body: exactly 10,000
/// allocations of 7 bytes ("member1") for 10,000 messages. It copies it into a buffer it keeps
/// now.
#[test]
fn group_mode_named_senders_allocate_nothing_per_message() {
    let (count, bytes) = group_steady_state(true);
    assert_eq!(
        count, 0,
        "{count} allocations ({bytes} bytes) in group mode with named senders"
    );
}
