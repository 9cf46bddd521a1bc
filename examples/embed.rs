//! Embedding mcrelay in a host application's own mio loop.
//!
//! The host owns the `Poll`. It registers its own socket (here: a UDP echo service on
//! 127.0.0.1) with its own token, hands the relay the `Registry` and its first token, and in
//! each turn forwards the relay's readiness events, runs its timers and reads its events.
//!
//! Run: `cargo run --example embed -- [SECONDS]` (default 30), then chat with
//! `mcrelay client --port 5017 --ttl 0 --known-relays off` and try
//! `echo hi | nc -u -w1 127.0.0.1 <echo port>`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mcrelay::mio::net::UdpSocket;
use mcrelay::mio::{Events, Interest, Poll, Token};
use mcrelay::{NetConfig, Relay, RelayEvent, ServerKey};

/// The host's own token; the relay takes `Relay::tokens_needed(&net)` tokens from here on.
const ECHO: Token = Token(1);
const RELAY_FIRST: Token = Token(100);

/// What the host loop reports when it ends.
#[derive(Debug, Default)]
pub struct HostReport {
    pub echoed: u64,
    pub joined: u64,
    pub relayed_messages: u64,
    pub relayed_deliveries: u64,
}

impl HostReport {
    /// React to what the relay did (a real host might update a UI or its own metrics).
    fn on_relay_event(&mut self, ev: RelayEvent) {
        match ev {
            RelayEvent::Joined { id, addr, .. } => {
                self.joined += 1;
                println!("host: client {id} joined from {addr}");
            }
            RelayEvent::Relayed {
                messages,
                deliveries,
            } => {
                self.relayed_messages += messages;
                self.relayed_deliveries += deliveries;
            }
            other => println!("host: {other:?}"),
        }
    }
}

fn echo_all(echo: &UdpSocket, buf: &mut [u8], report: &mut HostReport) -> io::Result<()> {
    loop {
        match echo.recv_from(buf) {
            Ok((n, from)) => {
                let _ = echo.send_to(&buf[..n], from);
                report.echoed += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
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
    let mut relay = Relay::builder(key)
        .net(net)
        .build(poll.registry(), RELAY_FIRST, Instant::now())
        .map_err(io::Error::other)?;
    ready(echo.local_addr()?, relay.control_addr());

    let mut report = HostReport::default();
    let mut events = Events::with_capacity(128);
    let mut buf = [0u8; 2048];
    while !stop() && !relay.stop_requested() {
        // Sleep until the relay's next deadline or our own (a 100 ms check of `stop`).
        let host_deadline = Instant::now() + Duration::from_millis(100);
        let deadline = relay
            .poll_timeout()
            .map_or(host_deadline, |t| t.min(host_deadline));
        let timeout = deadline.saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue, // mio 1.x: carry on
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for ev in events.iter() {
            if relay.owns(ev.token()) {
                relay.handle_event(poll.registry(), ev, now);
            } else if ev.token() == ECHO {
                echo_all(&echo, &mut buf, &mut report)?;
            }
        }
        relay.handle_timeout(poll.registry(), Instant::now());
        while let Some(ev) = relay.poll_event() {
            report.on_relay_event(ev);
        }
    }
    relay.shutdown(poll.registry(), Instant::now());
    while let Some(ev) = relay.poll_event() {
        report.on_relay_event(ev);
    }
    Ok(report)
}

#[allow(dead_code)]
fn main() -> io::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let key = ServerKey::generate(2048).map_err(io::Error::other)?;
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
    println!("{report:?}");
    Ok(())
}
