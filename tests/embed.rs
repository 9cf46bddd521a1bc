//! The embedding example (examples/embed.rs), run as-is: its host loop serves its own echo
//! socket and the relay in one Poll, and both work at the same time.

mod common;
#[path = "../examples/embed.rs"]
mod embed;

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use mcrelay::NetConfig;
use mcrelay::client::{Client, ClientConfig};

#[test]
fn relay_and_host_socket_share_one_poll() {
    let (group, port) = unique_endpoint();
    let net = NetConfig {
        group,
        port,
        control: Some("127.0.0.1:0".parse().unwrap()),
        ..NetConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let host = std::thread::spawn(move || {
        embed::run_host(
            server_key(),
            net,
            move |echo, _| tx.send(echo).unwrap(),
            || stop2.load(Ordering::SeqCst),
        )
    });
    let echo_addr = rx.recv().unwrap();
    let cfg = ClientConfig {
        group,
        port,
        iface: Ipv4Addr::LOCALHOST,
        ttl: 0,
        pin: None,
        admission: None,
    };
    let mut a = Client::connect(&cfg, T).unwrap();
    let mut b = Client::connect(&cfg, T).unwrap();
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    for i in 0..20u32 {
        // Interleave: a relayed message and an echo, each answered while the other is busy.
        a.send(format!("msg {i}").as_bytes()).unwrap();
        probe
            .send_to(format!("echo {i}").as_bytes(), echo_addr)
            .unwrap();
        let (n, _) = probe.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], format!("echo {i}").as_bytes());
        assert_eq!(
            b.recv_message(T).unwrap(),
            Some((a.id(), format!("msg {i}").into_bytes()))
        );
    }
    stop.store(true, Ordering::SeqCst);
    let report = host.join().unwrap().unwrap();
    assert_eq!(report.echoed, 20);
    // The host learnt what the relay did from its events alone.
    assert_eq!(report.joined, 2);
    assert_eq!(report.relayed_messages, 20);
    assert_eq!(report.relayed_deliveries, 20);
}
