//! No heap allocation per relayed message in the steady state (issue 5).
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
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcrelay::client::{ClientSession, Event};
use mcrelay::core::{Config, RelayCore};
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;

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

fn note(size: usize) {
    let on = ON.try_with(|o| o.get()).unwrap_or(false);
    if !on {
        return;
    }
    COUNT.with(|c| c.set(c.get() + 1));
    BYTES.with(|b| b.set(b.get() + size as u64));
    if std::env::var_os("MCRELAY_ALLOC_BACKTRACE").is_some() {
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
    ON.with(|o| o.set(true));
    let r = f();
    ON.with(|o| o.set(false));
    r
}

struct Peer {
    addr: SocketAddr,
    s: ClientSession,
}

/// Move datagrams both ways until nothing moves (handshakes, JOIN notices).
fn pump(core: &mut RelayCore, peers: &mut [Peer], now: Instant) {
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
            if let Some(p) = peers.iter_mut().find(|p| p.addr == to) {
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
    pump(&mut core, &mut peers, start);
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
    // The instrument works: one allocation inside `counted` is seen.
    COUNT.with(|c| c.set(0));
    let v = counted(|| std::hint::black_box(Vec::<u8>::with_capacity(64)));
    drop(v);
    assert_eq!(COUNT.with(|c| c.get()), 1, "the counting allocator counts");
    TRACES.lock().unwrap().clear();

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
