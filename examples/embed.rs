//! Embedding mcrelay in a host application's own mio loop.
//!
//! The host owns the `Poll`. It registers its own socket (here: a UDP echo service on
//! 127.0.0.1) with its own token, hands the relay the `Registry` and a token range, and in
//! each turn forwards the relay's events and asks it for its next deadline.
//!
//! Run: `cargo run --example embed -- [SECONDS]` (default 30), then chat with
//! `mcrelay client --port 5017 --ttl 0` and try `echo hi | nc -u -w1 127.0.0.1 <echo port>`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcrelay::core::{Config, RelayCore};
use mcrelay::crypto::key::ServerKey;
use mcrelay::crypto::rng::Rng;
use mcrelay::driver::{NetConfig, Relay, TokenRange};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

/// The host's own token; the relay gets `[RELAY_FIRST, RELAY_FIRST + 11)`.
const ECHO: Token = Token(1);
const RELAY_FIRST: usize = 100;

/// What the host loop reports when it ends.
pub struct HostReport {
    pub echoed: u64,
    pub relayed_deliveries: u64,
}

/// Run the host: an echo socket and the relay in one Poll, until `stop()` says so.
/// `ready` receives the echo address and the relay's control address once both are up.
pub fn run_host(
    key: ServerKey,
    net: NetConfig,
    ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
    mut stop: impl FnMut() -> bool,
) -> io::Result<HostReport> {
    let mut poll = Poll::new()?;
    let mut echo = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    poll.registry()
        .register(&mut echo, ECHO, Interest::READABLE)?;

    let now = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rng = Rng::from_os().map_err(|e| io::Error::other(e.to_string()))?;
    let core = RelayCore::new(Config::default(), key, rng, now, unix);
    let tokens = TokenRange {
        start: RELAY_FIRST,
        len: 3 + net.max_control,
    };
    let mut relay = Relay::new(core, net, poll.registry(), tokens, None, now)
        .map_err(|e| io::Error::other(e.to_string()))?;
    ready(echo.local_addr()?, relay.control_addr());

    let mut events = Events::with_capacity(128);
    let mut buf = [0u8; 2048];
    let mut echoed = 0;
    while !stop() && !relay.stop_requested() {
        // Sleep until our own next deadline or the relay's, whichever is first (here the
        // host has none but a 100 ms check of `stop`).
        let host_deadline = Instant::now() + Duration::from_millis(100);
        let deadline = relay
            .poll_timeout()
            .map_or(host_deadline, |t| t.min(host_deadline));
        match poll.poll(
            &mut events,
            Some(deadline.saturating_duration_since(Instant::now())),
        ) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue, // mio 1.x: carry on
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for ev in events.iter() {
            if relay.owns(ev.token()) {
                relay.handle_event(poll.registry(), ev, now);
            } else if ev.token() == ECHO {
                loop {
                    match echo.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let _ = echo.send_to(&buf[..n], from);
                            echoed += 1;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        relay.handle_timeout(poll.registry(), Instant::now());
    }
    relay.shutdown(poll.registry(), Instant::now());
    Ok(HostReport {
        echoed,
        relayed_deliveries: relay.core().stats().deliveries,
    })
}

#[allow(dead_code)]
fn main() -> io::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let key = ServerKey::generate(2048).map_err(|e| io::Error::other(e.to_string()))?;
    println!("relay key fingerprint {}", key.fingerprint_hex());
    let net = NetConfig {
        port: 5017,
        control: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 5018))),
        ..NetConfig::default()
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let report = run_host(
        key,
        net,
        |echo, control| {
            println!("echo service on {echo}; relay on 239.255.77.77:5017, control {control:?}")
        },
        || Instant::now() >= end,
    )?;
    println!(
        "echoed {} datagrams; relayed {} deliveries",
        report.echoed, report.relayed_deliveries
    );
    Ok(())
}
