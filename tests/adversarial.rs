//! Attacks on a live relay over loopback multicast, from other sockets, as a real attacker on
//! the network would mount them (issue 4, docs/security.md). Every test checks two things: the
//! legitimate clients lost nothing, and the relay counted the attack (control port `stats`).
//!
//! Spoofed source addresses need a raw socket: those tests run only as root, inside a network
//! namespace they create with nothing but `lo` in it (re-executing this binary there), so no
//! forged packet can leave the host. Without root they print why and pass.

mod common;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use mcrelay::client::{Client, ClientSession, Event, client_socket};
use mcrelay::core::Config;
use mcrelay::crypto::fernet::{self, FernetKey};
use mcrelay::crypto::rng::Rng;
use mcrelay::proto::reassembly::Limits;
use mcrelay::wire::{self, Body, COOKIE_LEN, FRAGMENT_CHUNK, Outer, outer};

// ------------------------------------------------------------------ helpers

/// A small deterministic PRNG (xorshift64*) so that every run attacks with the same bytes.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn stats(relay: &TestRelay) -> HashMap<String, u64> {
    relay.control().stats_map()
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    let get = |m: &HashMap<String, u64>| *m.get(name).unwrap_or_else(|| panic!("no stat {name}"));
    get(after) - get(before)
}

/// RSA private-key operations the relay ran (each ends as `handshakes_ok` or `_failed`; the
/// attacks below only send ciphertexts of the right length, so every `failed` is a decryption).
fn rsa_ops(m: &HashMap<String, u64>) -> u64 {
    m["handshakes_ok"] + m["handshakes_failed"]
}

/// An unregistered attacker socket on 127.0.0.1 that sends to the relay's group.
fn attacker(relay: &TestRelay) -> UdpSocket {
    let s = client_socket(&relay.client_config()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

/// Everything that arrives at `s` within `window` (stops early after a quiet 150 ms).
fn replies(s: &UdpSocket, window: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match s.recv_from(&mut buf) {
            Ok((n, _)) => {
                out.push(buf[..n].to_vec());
                quiet_since = Instant::now();
            }
            Err(_) if quiet_since.elapsed() > Duration::from_millis(150) => break,
            Err(_) => {}
        }
    }
    out
}

fn hello_datagram(min: u16, max: u16) -> Vec<u8> {
    let mut d = Vec::new();
    Outer::Hello { min, max }.write(&mut d);
    d
}

/// HELLO from `s`, and the cookie the relay answered with.
fn fetch_cookie(s: &UdpSocket, group: SocketAddr) -> [u8; COOKIE_LEN] {
    let mut buf = vec![0u8; 2048];
    for _ in 0..20 {
        s.send_to(&hello_datagram(1, 1), group).unwrap();
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok((n, _)) = s.recv_from(&mut buf)
                && let Ok(Outer::Cookie { cookie, .. }) = Outer::parse(&buf[..n])
            {
                return *cookie;
            }
        }
    }
    panic!("no COOKIE from the relay");
}

fn register_datagram(cookie: &[u8; COOKIE_LEN], ciphertext: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    Outer::Register { cookie, ciphertext }.write(&mut d);
    d
}

fn fragment_datagram(msg_id: u32, index: u16, count: u16, chunk: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    wire::put_fragment(&mut d, msg_id, index, count, chunk);
    d
}

fn sealed_datagram(token: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    wire::put_tlv(&mut d, outer::SEALED, token);
    d
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A correctly formed, fresh Fernet token under a key the relay has never seen.
fn token_under_wrong_key(seq: u64, body: &Body<'_>) -> Vec<u8> {
    let mut rng = Rng::from_os().unwrap();
    let key = FernetKey::generate(&mut rng);
    let mut plain = Vec::new();
    wire::write_inner(&mut plain, seq, body);
    let mut tok = Vec::new();
    fernet::encrypt_into(&key, &rng.iv(), unix_now(), &plain, &mut tok);
    tok
}

/// Have `c` seal `what` and send it itself; return the datagrams it sent (the attacker's
/// capture: every group member sees what clients send to the group).
fn send_captured(
    c: &mut Client,
    group: SocketAddr,
    what: impl FnOnce(&mut ClientSession, Instant),
) -> Vec<Vec<u8>> {
    what(c.session(), Instant::now());
    let mut sent = Vec::new();
    while let Some(d) = c.session().poll_transmit() {
        sent.push(d);
    }
    for d in &sent {
        c.socket().send_to(d, group).unwrap();
    }
    sent
}

/// `n` registered clients that all know each other (every JOIN seen).
fn chatters(relay: &TestRelay, n: usize) -> Vec<Client> {
    let mut cs: Vec<Client> = Vec::new();
    for _ in 0..n {
        let newcomer = relay.client();
        let id = newcomer.id();
        for c in cs.iter_mut() {
            assert!(
                wait_for(c, T, |e| matches!(e, Event::Join { id: j, .. } if *j == id)).is_some(),
                "client {} never saw {id} join",
                c.id()
            );
        }
        cs.push(newcomer);
    }
    cs
}

/// Every client sends `per_client` small messages; every other client must receive each exactly
/// once, and nobody may see a LEAVE or CLOSED. Returns the number of messages sent.
fn chat_round(cs: &mut [Client], tag: &str, per_client: usize) -> usize {
    let ids: Vec<u32> = cs.iter().map(|c| c.id()).collect();
    for (i, c) in cs.iter_mut().enumerate() {
        for k in 0..per_client {
            c.send(format!("{tag}/{i}/{k}").as_bytes()).unwrap();
        }
    }
    for (i, c) in cs.iter_mut().enumerate() {
        let mut want: HashSet<(u32, Vec<u8>)> = HashSet::new();
        for (j, &id) in ids.iter().enumerate() {
            if j != i {
                for k in 0..per_client {
                    want.insert((id, format!("{tag}/{j}/{k}").into_bytes()));
                }
            }
        }
        while !want.is_empty() {
            match c.recv_event(T).unwrap() {
                Some(Event::Message { sender, data, .. }) => {
                    let m = (sender, data);
                    assert!(
                        want.remove(&m),
                        "client {i} got an unexpected or duplicate message {:?} from {}",
                        String::from_utf8_lossy(&m.1),
                        m.0
                    );
                }
                Some(ev @ (Event::Leave { .. } | Event::Closed { .. } | Event::Shutdown)) => {
                    panic!("client {i} saw {ev:?} during round {tag}")
                }
                Some(_) => {}
                None => panic!(
                    "client {i} is missing {} messages of round {tag}",
                    want.len()
                ),
            }
        }
    }
    per_client * cs.len()
}

/// After the last round: nothing more arrives (no duplicate, no LEAVE).
fn assert_quiet(cs: &mut [Client]) {
    for c in cs.iter_mut() {
        if let Some(ev) = c.recv_event(Duration::from_millis(150)).unwrap() {
            panic!("client {} got an extra event {ev:?}", c.id());
        }
    }
}

/// Chat in rounds until `done` is set, then one more round; every message delivered once.
fn chat_until(cs: &mut [Client], done: &AtomicBool) -> usize {
    let mut n = 0;
    let mut round = 0;
    loop {
        let last = done.load(Ordering::SeqCst);
        n += chat_round(cs, &format!("r{round}"), 5);
        round += 1;
        if last {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// A handshake driven by hand over our own socket, recording every datagram sent and every
/// REJECT code received.
struct Manual {
    sock: UdpSocket,
    to: SocketAddr,
    sess: ClientSession,
    sent: Vec<Vec<u8>>,
    rejects: Vec<u16>,
}

impl Manual {
    fn new(relay: &TestRelay) -> Manual {
        let sock = client_socket(&relay.client_config()).unwrap();
        let sess = ClientSession::new(
            Rng::from_os().unwrap(),
            Some(relay.fingerprint),
            None,
            Instant::now(),
        );
        Manual {
            sock,
            to: relay.group_addr(),
            sess,
            sent: Vec::new(),
            rejects: Vec::new(),
        }
    }

    /// A manual client whose datagrams come from `ip` (another loopback address), still sent
    /// to the relay's group through interface 127.0.0.1.
    fn from_ip(relay: &TestRelay, ip: Ipv4Addr) -> Manual {
        let mut m = Manual::new(relay);
        let sock = UdpSocket::bind(SocketAddrV4::new(ip, 0)).unwrap();
        sock.set_multicast_ttl_v4(0).unwrap();
        sock.set_multicast_loop_v4(true).unwrap();
        socket2::SockRef::from(&sock)
            .set_multicast_if_v4(&relay.client_config().iface)
            .unwrap();
        m.sock = sock;
        m
    }

    /// Run until registered or `timeout`; true if registered.
    fn handshake(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            while let Some(d) = self.sess.poll_transmit() {
                self.sock.send_to(&d, self.to).unwrap();
                self.sent.push(d);
            }
            if self.sess.id().is_some() {
                return true;
            }
            self.sock
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                if let Ok(Outer::Reject { code, .. }) = Outer::parse(&buf[..n]) {
                    self.rejects.push(code);
                }
                self.sess.handle_datagram(Instant::now(), from, &buf[..n]);
            }
            self.sess.handle_timeout(Instant::now());
        }
        false
    }
}

// ------------------------------------------------------------------ spoofing (raw sockets)

const NETNS_ENV: &str = "MCRELAY_ADVERSARIAL_IN_NETNS";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Deletes the namespace when dropped (also when the test fails).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn make_netns() -> Result<Netns, String> {
    use std::process::{Command, Stdio};
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "mcradv-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    run(&["netns", "add", &name])?;
    let ns = Netns(name.clone());
    run(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
    Ok(ns)
}

/// Run `body` (a test needing spoofed packets) in a fresh network namespace that holds only
/// `lo`, by re-running this test binary there; on plain loopback if no namespace can be made;
/// not at all without root.
fn spoofing_test(test_name: &str, body: fn()) {
    if std::env::var_os(NETNS_ENV).is_some() {
        return body();
    }
    if !is_root() {
        println!("SKIPPED {test_name}: spoofing a source address needs a raw socket (root)");
        return;
    }
    match make_netns() {
        Ok(ns) => {
            println!("{test_name}: running inside network namespace {}", ns.0);
            let exe = std::env::current_exe().unwrap();
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &ns.0])
                .arg(exe)
                .args([
                    "--exact",
                    test_name,
                    "--nocapture",
                    "--include-ignored",
                    "--test-threads=1",
                ])
                .env(NETNS_ENV, "1")
                .status()
                .expect("run the test in the namespace");
            drop(ns);
            assert!(status.success(), "{test_name} failed inside the namespace");
        }
        Err(e) => {
            println!("note: no network namespace ({e}); spoofing on the host's loopback instead");
            body();
        }
    }
}

/// A raw IPv4 socket that writes its own IP and UDP headers, so any source can be claimed.
struct Spoofer {
    fd: libc::c_int,
}

impl Spoofer {
    fn new() -> io::Result<Spoofer> {
        // SAFETY: plain socket(2)/setsockopt(2) calls on a descriptor we own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let lo = libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            };
            let r = libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &lo as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::in_addr>() as libc::socklen_t,
            );
            if r != 0 {
                let e = io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            Ok(Spoofer { fd })
        }
    }

    /// Send `payload` as a UDP datagram from `src` (any address we like) to `dst`, TTL 0.
    fn send(&self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> io::Result<()> {
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]); // IPv4, 20-byte header; TOS 0
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0]); // id (kernel fills), DF
        p.extend_from_slice(&[0, libc::IPPROTO_UDP as u8, 0, 0]); // TTL 0: never leaves the host
        p.extend_from_slice(&src.ip().octets());
        p.extend_from_slice(&dst.ip().octets());
        p.extend_from_slice(&src.port().to_be_bytes());
        p.extend_from_slice(&dst.port().to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
        p.extend_from_slice(payload);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(*dst.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `p` and `sa` outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd,
                p.as_ptr() as *const libc::c_void,
                p.len(),
                0,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Drop for Spoofer {
    fn drop(&mut self) {
        // SAFETY: we own fd.
        unsafe { libc::close(self.fd) };
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        a => panic!("not IPv4: {a}"),
    }
}

// ------------------------------------------------------------------ the attacks

#[test]
fn forged_keepalive_disconnect_and_register_from_a_spoofed_address_change_nothing() {
    spoofing_test(
        "forged_keepalive_disconnect_and_register_from_a_spoofed_address_change_nothing",
        forged_from_spoofed_address,
    );
}

fn forged_from_spoofed_address() {
    let relay = TestRelay::start(Config::default());
    let mut cs = chatters(&relay, 3);
    chat_round(&mut cs, "before", 3);
    let victim = v4(cs[0].local_addr().unwrap());
    let group = v4(relay.group_addr());
    let spoof = Spoofer::new().expect("raw socket");

    // What the attacker has: a keep-alive the victim really sent (visible to every group member)
    // and a cookie the relay issued to the attacker's own address.
    let captured_ka = send_captured(&mut cs[0], relay.group_addr(), |s, now| {
        s.send_keepalive(now)
    });
    assert_eq!(captured_ka.len(), 1);
    let atk = attacker(&relay);
    let atk_cookie = fetch_cookie(&atk, relay.group_addr());
    let mut prng = Prng(0x5eed_0001);
    std::thread::sleep(Duration::from_millis(100));
    let before = stats(&relay);

    const N: u64 = 20;
    for i in 0..N {
        // The captured keep-alive, replayed from the victim's address.
        spoof.send(victim, group, &captured_ka[0]).unwrap();
        // A well-formed DISCONNECT and KEEPALIVE sealed under a key the attacker made up.
        let seq = 1_000_000 + i;
        spoof
            .send(
                victim,
                group,
                &sealed_datagram(&token_under_wrong_key(seq, &Body::Disconnect)),
            )
            .unwrap();
        spoof
            .send(
                victim,
                group,
                &sealed_datagram(&token_under_wrong_key(seq, &Body::Keepalive)),
            )
            .unwrap();
        // A garbage token of plausible length.
        let garbage: Vec<u8> = prng.bytes(120).iter().map(|b| b'A' + b % 26).collect();
        spoof
            .send(victim, group, &sealed_datagram(&garbage))
            .unwrap();
        // Re-registration of the victim's address: with the attacker's own (valid, but bound to
        // another address) cookie, and with a made-up one.
        let ct = prng.bytes(256);
        spoof
            .send(victim, group, &register_datagram(&atk_cookie, &ct))
            .unwrap();
        let fake: [u8; COOKIE_LEN] = prng.bytes(COOKIE_LEN).try_into().unwrap();
        spoof
            .send(victim, group, &register_datagram(&fake, &ct))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = stats(&relay);
    println!(
        "spoofed from {victim}: replay +{}, bad_token +{}, bad_cookie +{}",
        delta(&before, &after, "drop.replay"),
        delta(&before, &after, "drop.bad_token"),
        delta(&before, &after, "drop.bad_cookie")
    );
    assert_eq!(delta(&before, &after, "drop.replay"), N);
    assert_eq!(delta(&before, &after, "drop.bad_token"), 3 * N);
    // The attacker's cookie has a fresh timestamp but the MAC is for its own address:
    // `bad_cookie`; a made-up cookie is a forgery too (a timestamp from the future), or, if
    // its timestamp predates the relay's secrets, `expired_cookie`.
    let bad = delta(&before, &after, "drop.bad_cookie");
    assert!(bad >= N, "bad_cookie +{bad}");
    assert_eq!(bad + delta(&before, &after, "drop.expired_cookie"), 2 * N);
    assert_eq!(
        delta(&before, &after, "keepalives"),
        0,
        "a forgery counted as liveness"
    );
    assert_eq!(
        rsa_ops(&after),
        rsa_ops(&before),
        "a forgery cost an RSA decryption"
    );
    assert_eq!(after["clients"], 3);
    assert_eq!(delta(&before, &after, "leaves"), 0);

    // The victim's session is intact and everyone still hears everyone, exactly once.
    chat_round(&mut cs, "after", 3);
    assert_quiet(&mut cs);
}

/// Version 3 fragments are sealed: a spoofer who knows a client's address can no longer fill
/// its reassembly slots (the relay drops FRAGMENTs that claim a version-3 session), so its
/// large messages still arrive. (Versions 1 and 2 keep the limitation: docs/security.md.)
#[test]
fn spoofed_fragments_do_not_block_a_clients_large_messages() {
    spoofing_test(
        "spoofed_fragments_do_not_block_a_clients_large_messages",
        spoofed_fragments,
    );
}

fn spoofed_fragments() {
    let relay = TestRelay::start(Config::default());
    let mut cs = chatters(&relay, 3);
    let victim = v4(cs[0].local_addr().unwrap());
    let group = v4(relay.group_addr());
    let spoof = Spoofer::new().expect("raw socket");
    let chunk = vec![b'A'; FRAGMENT_CHUNK];
    for id in 0..8u32 {
        spoof
            .send(
                victim,
                group,
                &fragment_datagram(0xdead_0000 + id, 0, 74, &chunk),
            )
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let big = vec![7u8; 60 * 1024];
    cs[0].send(&big).unwrap();
    let got = cs[1].recv_message(T).unwrap();
    assert_eq!(
        got.map(|m| m.1.len()),
        Some(big.len()),
        "the victim's 60 KiB message was lost to spoofed fragments"
    );
}

#[test]
fn replayed_messages_and_keepalives_are_never_accepted_twice() {
    let cfg = Config {
        client_timeout: Duration::from_millis(1200),
        keepalive_interval: Duration::from_millis(200),
        ..Config::default()
    };
    let relay = TestRelay::start(cfg);
    let mut cs = chatters(&relay, 3);
    let a = cs[0].id();

    // A small message and a 60 KiB (fragmented) one, captured as a's socket sends them.
    let small = send_captured(&mut cs[0], relay.group_addr(), |s, now| {
        s.send(now, b"pay alice 10").unwrap()
    });
    let big_body: Vec<u8> = (0..60 * 1024u32).map(|i| (i % 251) as u8).collect();
    let big = send_captured(&mut cs[0], relay.group_addr(), |s, now| {
        s.send(now, &big_body).unwrap()
    });
    assert_eq!(small.len(), 1);
    assert!(big.len() > 50, "60 KiB travels as fragments");
    for i in [1, 2] {
        assert_eq!(
            cs[i].recv_message(T).unwrap(),
            Some((a, b"pay alice 10".to_vec()))
        );
        let got = cs[i].recv_message(T).unwrap();
        assert!(
            matches!(&got, Some((s, d)) if *s == a && *d == big_body),
            "{:?}",
            got.map(|(s, d)| (s, d.len()))
        );
    }
    let before = stats(&relay);

    // Replay both, five times, from a's own address (no spoofing needed: it is a's socket).
    // In version 3 every piece of the large message is a token of its own, so the window
    // stops each one before it reaches the reassembler.
    assert_eq!(cs[0].session().version(), 3);
    const R: u64 = 5;
    let group = relay.group_addr();
    for _ in 0..R {
        cs[0].socket().send_to(&small[0], group).unwrap();
        for d in &big {
            cs[0].socket().send_to(d, group).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = stats(&relay);
    let tokens = (small.len() + big.len()) as u64;
    assert_eq!(delta(&before, &after, "drop.replay"), tokens * R);
    assert_eq!(delta(&before, &after, "messages_in"), 0);
    assert_eq!(delta(&before, &after, "deliveries"), 0);
    assert_eq!(
        delta(&before, &after, "reassembled"),
        0,
        "replayed pieces are stopped before reassembly"
    );
    for i in [1, 2] {
        assert_eq!(
            cs[i].recv_message(Duration::from_millis(200)).unwrap(),
            None
        );
    }

    // Liveness: a sends one real keep-alive and then falls silent; an attacker replays that
    // keep-alive every 100 ms from a's address. a must still time out.
    let ka = send_captured(&mut cs[0], relay.group_addr(), |s, now| {
        s.send_keepalive(now)
    });
    let victim = cs.remove(0);
    let stop = Arc::new(AtomicBool::new(false));
    let replayer = {
        let sock = victim.socket().try_clone().unwrap();
        let stop = stop.clone();
        let ka = ka[0].clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                sock.send_to(&ka, group).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        })
    };
    let t0 = Instant::now();
    let before = stats(&relay);
    // b and c keep themselves alive (recv_event sends keep-alives) and must see a leave by
    // timeout within client_timeout plus slack, and nothing else.
    let mut seen: Vec<Vec<Event>> = vec![Vec::new(); cs.len()];
    while t0.elapsed() < Duration::from_secs(4) && seen.iter().any(Vec::is_empty) {
        for (x, seen) in cs.iter_mut().zip(seen.iter_mut()) {
            if let Some(ev) = x.recv_event(Duration::from_millis(10)).unwrap() {
                seen.push(ev);
            }
        }
    }
    for s in &seen {
        assert_eq!(s, &[Event::Leave { id: a, reason: 2 }]);
    }
    let waited = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let replays = replayer.join().unwrap();
    let after = stats(&relay);
    println!("a timed out after {waited:?} despite {replays} replayed keep-alives");
    assert!(waited < Duration::from_millis(2500), "{waited:?}");
    assert!(
        delta(&before, &after, "drop.replay") >= 5,
        "replays while a was registered are counted as replays"
    );
    assert_eq!(delta(&before, &after, "timeouts"), 1);
    drop(victim);
    chat_round(&mut cs, "after", 3);
    assert_quiet(&mut cs);
}

#[test]
fn a_replayed_register_gets_cookie_reused_and_disturbs_nothing() {
    let relay = TestRelay::start(Config::default());
    let mut cs = chatters(&relay, 2);
    let mut m = Manual::new(&relay);
    assert!(m.handshake(T), "manual client registers");
    let mid = m.sess.id().unwrap();
    for c in cs.iter_mut() {
        assert!(wait_for(c, T, |e| matches!(e, Event::Join { id, .. } if *id == mid)).is_some());
    }
    let register: Vec<Vec<u8>> = m
        .sent
        .iter()
        .filter(|d| matches!(Outer::parse(d), Ok(Outer::Register { .. })))
        .cloned()
        .collect();
    assert_eq!(register.len(), 1);
    let before = stats(&relay);
    for _ in 0..5 {
        m.sock.send_to(&register[0], relay.group_addr()).unwrap();
    }
    // The same REGISTER from another socket: the cookie is bound to the first address.
    let atk = attacker(&relay);
    for _ in 0..5 {
        atk.send_to(&register[0], relay.group_addr()).unwrap();
    }
    let back = replies(&m.sock, Duration::from_millis(400));
    let after = stats(&relay);
    assert_eq!(delta(&before, &after, "drop.cookie_reused"), 5);
    assert_eq!(delta(&before, &after, "drop.bad_cookie"), 5);
    assert_eq!(
        rsa_ops(&after),
        rsa_ops(&before),
        "no RSA work for a replay"
    );
    assert_eq!(after["clients"], 3);
    let codes: Vec<u16> = back
        .iter()
        .filter_map(|d| match Outer::parse(d) {
            Ok(Outer::Reject { code, .. }) => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec![3; 5]);
    // The session still works: its messages reach the others, theirs reach it.
    m.sess.send(Instant::now(), b"still me").unwrap();
    while let Some(d) = m.sess.poll_transmit() {
        m.sock.send_to(&d, relay.group_addr()).unwrap();
    }
    for c in cs.iter_mut() {
        assert_eq!(
            c.recv_message(T).unwrap(),
            Some((mid, b"still me".to_vec()))
        );
    }
    chat_round(&mut cs, "after", 2);
    assert_quiet(&mut cs);
}

#[test]
fn flood_of_registrations_with_bad_cookies_costs_no_rsa() {
    let relay = TestRelay::start(Config::default());
    let mut cs = chatters(&relay, 3);
    let before = stats(&relay);
    let done = Arc::new(AtomicBool::new(false));
    let group = relay.group_addr();
    let atk = attacker(&relay);
    // A real cookie tells the attacker what a fresh `issued_ms` looks like; half the forgeries
    // carry it (wrong MAC: `bad_cookie`), half are random (implausible age: `expired_cookie`).
    let real = fetch_cookie(&atk, group);
    let flood = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut prng = Prng(0x5eed_0002);
            let ct = prng.bytes(256);
            let mut n = 0u64;
            for i in 0..3000 {
                let mut cookie: [u8; COOKIE_LEN] = prng.bytes(COOKIE_LEN).try_into().unwrap();
                if i % 2 == 0 {
                    cookie[..8].copy_from_slice(&real[..8]);
                }
                atk.send_to(&register_datagram(&cookie, &ct), group)
                    .unwrap();
                n += 1;
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            done.store(true, Ordering::SeqCst);
            n
        })
    };
    let msgs = chat_until(&mut cs, &done);
    let sent = flood.join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let after = stats(&relay);
    let bad = delta(&before, &after, "drop.bad_cookie");
    let expired = delta(&before, &after, "drop.expired_cookie");
    println!(
        "{sent} forged REGISTERs: bad_cookie +{bad}, expired_cookie +{expired}; \
         {msgs} chat messages all delivered"
    );
    assert!(
        (bad + expired) * 10 >= sent * 9,
        "{bad} + {expired} of {sent}"
    );
    assert!(bad > 0);
    assert_eq!(
        rsa_ops(&after),
        rsa_ops(&before),
        "bad cookies never reach RSA"
    );
    assert_quiet(&mut cs);
}

#[test]
fn flood_of_registrations_with_valid_cookies_stays_within_the_rsa_budget() {
    let per_source = 10;
    let relay = TestRelay::start(Config {
        handshakes_per_source_per_sec: per_source,
        ..Config::default()
    });
    let mut cs = chatters(&relay, 3);
    // Let the source bucket (shared with the chatters: same IP) refill to its burst.
    std::thread::sleep(Duration::from_millis(1100));
    let before = stats(&relay);
    let done = Arc::new(AtomicBool::new(false));
    let group = relay.group_addr();
    let atk = attacker(&relay);
    let t0 = Instant::now();
    let flood = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut prng = Prng(0x5eed_0003);
            let mut n = 0u64;
            let mut buf = vec![0u8; 2048];
            atk.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            while t0.elapsed() < Duration::from_secs(2) {
                atk.send_to(&hello_datagram(1, 1), group).unwrap();
                // Take the COOKIE, skipping the REJECTs our earlier REGISTERs earned.
                let deadline = Instant::now() + Duration::from_millis(100);
                while Instant::now() < deadline {
                    let Ok((len, _)) = atk.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Ok(Outer::Cookie { cookie, .. }) = Outer::parse(&buf[..len]) {
                        let ct = prng.bytes(256);
                        atk.send_to(&register_datagram(cookie, &ct), group).unwrap();
                        n += 1;
                        break;
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
            n
        })
    };
    let msgs = chat_until(&mut cs, &done);
    let sent = flood.join().unwrap();
    let elapsed = t0.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let after = stats(&relay);
    let rsa = rsa_ops(&after) - rsa_ops(&before);
    let budget_drops = delta(&before, &after, "drop.handshake_budget");
    let allowed =
        u64::from(per_source) + (f64::from(per_source) * elapsed.as_secs_f64()).ceil() as u64;
    println!(
        "{sent} REGISTERs with valid cookies in {elapsed:?}: {rsa} RSA decryptions \
         (budget allows {allowed}), {budget_drops} dropped by the budget, \
         {} handshakes_failed; {msgs} chat messages all delivered",
        delta(&before, &after, "handshakes_failed")
    );
    assert!(sent > 100, "the attacker sent only {sent}");
    assert!(rsa <= allowed, "{rsa} RSA decryptions > {allowed}");
    assert!(budget_drops > 0);
    assert_eq!(delta(&before, &after, "handshakes_ok"), 0);
    assert_eq!(after["clients"], 3);
    assert_quiet(&mut cs);
}

#[test]
fn valid_cookie_floods_from_many_sources_get_a_bounded_share_of_the_loop() {
    // Finding 5 (issue 12): 40 source addresses, each within its own handshake budget, with
    // fresh valid cookies and garbage ciphertexts (each costs a full RSA decryption). The
    // count budget alone (200/s) let RSA take ~46 % of the loop; the driver now caps RSA at
    // `handshake_cpu_percent` (25 %) of the loop's time, one decryption per turn.
    let relay = TestRelay::start(Config::default());
    let mut cs = chatters(&relay, 3);
    let before = stats(&relay);
    let measured_from = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let group = relay.group_addr();
    let socks: Vec<UdpSocket> = (10..50)
        .map(|last| {
            let s = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, last), 0)).unwrap();
            s.set_multicast_ttl_v4(0).unwrap();
            socket2::SockRef::from(&s)
                .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let window = Duration::from_secs(3);
    let t0 = Instant::now();
    let flood = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut prng = Prng(0x5eed_0006);
            let (mut sent, mut buf) = (0u64, vec![0u8; 2048]);
            while t0.elapsed() < window {
                for s in &socks {
                    let _ = s.send_to(&hello_datagram(1, 3), group);
                }
                std::thread::sleep(Duration::from_millis(5));
                for s in &socks {
                    while let Ok((len, _)) = s.recv_from(&mut buf) {
                        if let Ok(Outer::Cookie { cookie, .. }) = Outer::parse(&buf[..len]) {
                            let ct = prng.bytes(256);
                            let _ = s.send_to(&register_datagram(cookie, &ct), group);
                            sent += 1;
                        }
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
            sent
        })
    };
    // A newcomer registers in the middle of the flood: the full queue is shared fairly between
    // sources, so it waits its turn (about one queue's worth of decryptions), not for luck.
    let newcomer = {
        let cfg = relay.client_config();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(800));
            let t = Instant::now();
            Client::connect(&cfg, Duration::from_secs(10)).map(|c| (c, t.elapsed()))
        })
    };
    let mut peak_pending = 0;
    let mut msgs = 0;
    let mut round = 0;
    while !done.load(Ordering::SeqCst) {
        msgs += chat_round(&mut cs, &format!("f{round}"), 5);
        peak_pending = peak_pending.max(stats(&relay)["pending_registrations"]);
        round += 1;
    }
    let sent = flood.join().unwrap();
    let (mut newcomer, join_time) = newcomer
        .join()
        .unwrap()
        .expect("a newcomer registers during the flood");
    println!("a newcomer registered in {join_time:?} during the flood");
    newcomer.disconnect().unwrap();
    let after = stats(&relay);
    let elapsed = measured_from.elapsed(); // the queue left behind drains within it too
    let rsa = rsa_ops(&after) - rsa_ops(&before);
    let rsa_us = delta(&before, &after, "rsa_microseconds");
    let share = rsa_us as f64 / 1e6 / elapsed.as_secs_f64();
    println!(
        "{sent} REGISTERs with valid cookies from 40 sources; in {elapsed:?}: {rsa} RSA \
         decryptions, {rsa_us} µs = {:.1} % of the loop; peak queue {peak_pending}; \
         {msgs} chat messages all delivered",
        share * 100.0
    );
    assert!(sent > 600, "the attacker sent only {sent}");
    assert!(
        rsa > 20,
        "the flood never reached RSA ({rsa}): it proves nothing"
    );
    // 25 % plus the 10 ms burst (the counter is the driver's own measurement); before the
    // share existed: ~46 % (200 decryptions a second of ~2.3 ms).
    assert!(share < 0.27, "RSA took {:.1} % of the loop", share * 100.0);
    assert!(peak_pending <= Config::default().max_pending_registrations as u64);
    // The newcomer only (twice if it repeated its REGISTER while the first waited).
    assert!((1..=2).contains(&delta(&before, &after, "handshakes_ok")));
    // Liveness: once the flood is over, another newcomer gets in at once.
    let late = relay.client();
    cs.push(late);
    let mut seen = 0;
    for c in cs.iter_mut().take(3) {
        let late_id = 5; // 1, 2, 3: the chatters; 4: the newcomer during the flood
        if wait_for(
            c,
            T,
            |e| matches!(e, Event::Join { id, .. } if *id == late_id),
        )
        .is_some()
        {
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "the chatters did not all see the newcomer");
    chat_round(&mut cs, "after", 2);
    assert_quiet(&mut cs);
}

#[test]
fn fragment_flood_from_a_registered_client_stays_under_the_reassembly_cap() {
    let relay = TestRelay::start(Config::default());
    let mut cs = chatters(&relay, 3);
    // Version 2: FRAGMENTs are the unauthenticated kind the reassembler caps.
    let evil = relay.client_up_to(2);
    let limits = Limits::default();
    let rss0 = vm_rss_kib();
    let before = stats(&relay);
    let group = relay.group_addr();
    let chunk = vec![b'A'; FRAGMENT_CHUNK];
    const N: u32 = 2000;
    let mut peak = 0;
    for id in 0..N {
        evil.socket()
            .send_to(&fragment_datagram(0x4000_0000 + id, 0, 74, &chunk), group)
            .unwrap();
        if id % 40 == 39 {
            std::thread::sleep(Duration::from_millis(2));
        }
        if id % 500 == 499 {
            peak = peak.max(stats(&relay)["reassembly_bytes"]);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let mid = stats(&relay);
    peak = peak.max(mid["reassembly_bytes"]);

    // The others' 60 KiB messages still arrive, while the flood's reassemblies are pending.
    let big: Vec<u8> = (0..60 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    // One at a time: two 60 KiB bursts at once can overrun a client's default SO_RCVBUF.
    for (from, len) in [(0, big.len()), (1, 50_000)] {
        let id = cs[from].id();
        cs[from].send(&big[..len]).unwrap();
        for (k, x) in cs.iter_mut().enumerate() {
            if k == from {
                continue;
            }
            let got = x.recv_message(T).unwrap();
            let ok = matches!(&got, Some((s, d)) if *s == id && d[..] == big[..len]);
            assert!(
                ok,
                "client {k} did not get {from}'s {len}-byte message: got {:?}",
                got.map(|(s, d)| (s, d.len()))
            );
        }
    }
    let rss1 = vm_rss_kib();
    let after = stats(&relay);
    // Each new message past the owner's caps evicts its oldest incomplete one.
    let evicted = delta(&before, &mid, "drop.reassembly_evicted");
    println!(
        "{N} count=74 first fragments: reassembly_bytes peak {peak} (cap per client {}), \
         reassembly_evicted +{evicted}, VmRSS {rss0} -> {rss1} KiB",
        limits.per_owner_bytes
    );
    assert!(peak as usize <= limits.per_owner_bytes, "peak {peak}");
    assert!(
        evicted >= u64::from(N) * 9 / 10 - 4,
        "reassembly_evicted only +{evicted}"
    );
    assert!(
        rss1.saturating_sub(rss0) < 32 * 1024,
        "VmRSS grew by {} KiB",
        rss1 - rss0
    );
    assert!(delta(&before, &after, "reassembled") >= 2);
    chat_round(&mut cs, "after", 2);
    drop(evil);
}

#[test]
fn many_attacker_sessions_cannot_starve_others_of_reassembly() {
    let relay = TestRelay::start(Config {
        handshakes_per_source_per_sec: 100,
        handshakes_per_sec: 200,
        ..Config::default()
    });
    let mut cs = chatters(&relay, 2);
    let limits = Limits::default();
    let per_msg = 74 * FRAGMENT_CHUNK;
    let sessions = limits.total_bytes / (limits.per_owner_messages * per_msg) + 1;
    // Version 2 sessions: their FRAGMENTs are the kind that reach the reassembler.
    let evil: Vec<Client> = (0..sessions).map(|_| relay.client_up_to(2)).collect();
    let chunk = vec![b'A'; FRAGMENT_CHUNK];
    for e in &evil {
        for id in 0..limits.per_owner_messages as u32 {
            e.socket()
                .send_to(
                    &fragment_datagram(id + 100, 0, 74, &chunk),
                    relay.group_addr(),
                )
                .unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let s = stats(&relay);
    println!(
        "{sessions} attacker sessions hold reassembly_bytes {} of {}",
        s["reassembly_bytes"], limits.total_bytes
    );
    let big = vec![9u8; 60 * 1024];
    cs[0].send(&big).unwrap();
    let id0 = cs[0].id();
    assert_eq!(
        cs[1].recv_message(T).unwrap().map(|m| (m.0, m.1.len())),
        Some((id0, big.len())),
        "a legitimate 60 KiB message was dropped: the attacker holds the global reassembly cap"
    );
}

#[test]
fn malformed_datagrams_are_dropped_counted_and_the_relay_keeps_serving() {
    let relay = TestRelay::start(Config::default());
    let mut cs = chatters(&relay, 3);
    let atk = attacker(&relay);
    let group = relay.group_addr();
    let mut prng = Prng(0x5eed_0004);

    // Valid shapes to cut short: a HELLO, a KEY_REQUEST, a REGISTER, a SEALED, a FRAGMENT.
    let cookie = [7u8; COOKIE_LEN];
    let templates: Vec<Vec<u8>> = vec![
        hello_datagram(1, 1),
        {
            let mut d = Vec::new();
            Outer::KeyRequest { cookie: &cookie }.write(&mut d);
            d
        },
        register_datagram(&cookie, &[1u8; 256]),
        sealed_datagram(&token_under_wrong_key(1, &Body::Data(b"x"))),
        fragment_datagram(1, 0, 2, &[0u8; FRAGMENT_CHUNK]),
    ];
    let mut sent: Vec<(&str, Vec<u8>)> = Vec::new();
    for _ in 0..600 {
        let t = &templates[prng.below(templates.len())];
        let cut = prng.below(t.len()); // 0..len-1 bytes: always truncated
        sent.push(("truncated", t[..cut].to_vec()));
    }
    for _ in 0..300 {
        let n = 1201 + prng.below(2000);
        sent.push(("oversized", prng.bytes(n)));
    }
    for _ in 0..100 {
        sent.push(("zero-length", Vec::new()));
    }
    for _ in 0..2000 {
        let n = 1 + prng.below(1200);
        let mut d = prng.bytes(n);
        if n >= 2 && prng.below(2) == 0 {
            // A known outer type with a random rest: exercises every parser branch.
            let typ = 1 + prng.below(8) as u16;
            d[..2].copy_from_slice(&typ.to_be_bytes());
            if typ == outer::HELLO && n >= 4 {
                // Keep it from being a valid HELLO: the length must not match.
                let l = u16::from_be_bytes([d[2], d[3]]) as usize;
                if l + 4 == n {
                    d.push(0);
                }
            }
        }
        sent.push(("random", d));
    }
    let before = stats(&relay);
    for (i, (_, d)) in sent.iter().enumerate() {
        atk.send_to(d, group).unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = stats(&relay);
    let n = sent.len() as u64;
    let got = delta(&before, &after, "datagrams_in");
    let drops = delta(&before, &after, "drops_total");
    let mut by_reason: Vec<(String, u64)> = after
        .keys()
        .filter(|k| k.starts_with("drop."))
        .map(|k| (k.clone(), delta(&before, &after, k)))
        .filter(|(_, v)| *v > 0)
        .collect();
    by_reason.sort();
    println!("{n} malformed datagrams: {got} received, {drops} dropped: {by_reason:?}");
    assert_eq!(got, n, "loopback lost datagrams: cannot check the count");
    assert_eq!(drops, n, "every malformed datagram is dropped and counted");
    assert_eq!(delta(&before, &after, "cookies_sent"), 0);
    assert_eq!(rsa_ops(&after), rsa_ops(&before));
    assert!(delta(&before, &after, "drop.oversized") >= 300);
    assert!(delta(&before, &after, "drop.malformed_empty") >= 100);
    // Nothing came back to the attacker but REJECTs of at most 3x (checked in detail below).
    for r in replies(&atk, Duration::from_millis(300)) {
        assert!(
            matches!(Outer::parse(&r), Ok(Outer::Reject { .. })),
            "{r:?}"
        );
    }
    chat_round(&mut cs, "after", 3);
    assert_quiet(&mut cs);
}

#[test]
fn at_max_clients_the_newcomer_is_rejected_and_sessions_are_untouched() {
    let relay = TestRelay::start(Config {
        max_clients: 3,
        ..Config::default()
    });
    let mut cs = chatters(&relay, 3);
    let before = stats(&relay);
    let mut late = Manual::new(&relay);
    assert!(
        !late.handshake(Duration::from_millis(1500)),
        "a 4th client got in"
    );
    println!("4th client's REJECT codes: {:?}", late.rejects);
    assert!(
        late.rejects.contains(&5),
        "no REJECT(5): {:?}",
        late.rejects
    );
    assert!(late.rejects.iter().all(|&c| c == 5));
    let after = stats(&relay);
    assert!(delta(&before, &after, "drop.relay_full") >= 1);
    assert_eq!(after["clients"], 3);
    assert_eq!(delta(&before, &after, "handshakes_ok"), 0);
    assert_eq!(delta(&before, &after, "leaves"), 0);
    chat_round(&mut cs, "after", 3);
    assert_quiet(&mut cs);
}

#[test]
fn one_source_address_cannot_take_every_seat() {
    // Finding 6 (issue 12): a host that passes the handshake over and over fills at most
    // `max_clients_per_source` seats; everyone else still gets in.
    let relay = TestRelay::start(Config {
        max_clients: 10,
        max_clients_per_source: 2,
        handshakes_per_source_per_sec: 1000,
        ..Config::default()
    });
    let a = Ipv4Addr::new(127, 0, 0, 1);
    let mut mine: Vec<Manual> = (0..2).map(|_| Manual::from_ip(&relay, a)).collect();
    for m in &mut mine {
        assert!(m.handshake(Duration::from_secs(3)), "seat within the cap");
    }
    let before = stats(&relay);
    let mut third = Manual::from_ip(&relay, a);
    assert!(
        !third.handshake(Duration::from_millis(1500)),
        "a third session from one address got in"
    );
    println!("third session's REJECT codes: {:?}", third.rejects);
    assert!(third.rejects.contains(&5), "{:?}", third.rejects);
    let after = stats(&relay);
    assert!(delta(&before, &after, "drop.source_full") >= 1);
    assert_eq!(delta(&before, &after, "drop.relay_full"), 0);
    assert_eq!(after["clients"], 2);
    // Another address is a fresh budget.
    let mut other = Manual::from_ip(&relay, Ipv4Addr::new(127, 0, 0, 2));
    assert!(
        other.handshake(Duration::from_secs(3)),
        "a second address was refused"
    );
    assert_eq!(stats(&relay)["clients"], 3);
}

#[test]
fn junk_fragments_sent_straight_to_a_client_do_not_block_its_large_messages() {
    // Finding 7c (issue 12): four junk first fragments every 4 s, sent to a client's own port
    // (no spoofing needed) used to fill its reassembly slots. A client now takes datagrams
    // only from the relay's reply address.
    let relay = TestRelay::start(Config::default());
    let mut sender = relay.client();
    // Version 2: the unauthenticated FRAGMENT kind a client reassembles.
    let mut victim = relay.client_up_to(2);
    let victim_addr = victim.socket().local_addr().unwrap();
    let id = victim.id();
    assert!(
        wait_for(
            &mut sender,
            T,
            |e| matches!(e, Event::Join { id: j, .. } if *j == id)
        )
        .is_some()
    );
    let done = Arc::new(AtomicBool::new(false));
    let junk = {
        let done = done.clone();
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let chunk = vec![b'J'; FRAGMENT_CHUNK];
            let mut n = 0u32;
            while !done.load(Ordering::SeqCst) {
                for k in 0..4 {
                    let d = fragment_datagram(0x7000_0000 + n * 4 + k, 0, 74, &chunk);
                    s.send_to(&d, victim_addr).unwrap();
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            n * 4
        })
    };
    let big: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'a' + i; 60 * 1024]).collect();
    for m in &big {
        sender.send(m).unwrap();
        let got = wait_for(&mut victim, T, |e| matches!(e, Event::Message { .. }));
        match got {
            Some(Event::Message { data, .. }) => assert!(data == *m, "wrong message"),
            other => panic!("a 60 KiB message did not arrive: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done.store(true, Ordering::SeqCst);
    let sent = junk.join().unwrap();
    let foreign = victim.session().stats().foreign;
    println!("{sent} junk fragments sent to the client; it dropped {foreign} as foreign");
    assert!(
        foreign >= u64::from(sent) / 2,
        "junk was not dropped as foreign"
    );
}

#[test]
fn forged_reject_5_every_300_ms_does_not_keep_a_client_out() {
    // Finding 8 (issue 12): an unauthenticated REJECT(5) every 0.3 s reset the joining
    // client's retry timer forever. Now a REJECT from anywhere but the relay is ignored once
    // the relay's address is known, and a back-off already running is never reset.
    let relay = TestRelay::start(Config::default());
    let mut m = Manual::new(&relay);
    let target = m.sock.local_addr().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let spam = {
        let done = done.clone();
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut d = Vec::new();
            Outer::Reject {
                code: 5,
                reason: b"relay full",
            }
            .write(&mut d);
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                s.send_to(&d, target).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(350)); // the first REJECT is already waiting
    let t0 = Instant::now();
    let ok = m.handshake(Duration::from_secs(20));
    done.store(true, Ordering::SeqCst);
    let n = spam.join().unwrap();
    println!(
        "registered {ok} after {:?} under {n} forged REJECT(5)s; the client ignored {}",
        t0.elapsed(),
        m.sess.stats().rejects_ignored
    );
    assert!(ok, "the forged REJECTs kept the client out for 20 s");
    assert!(m.sess.stats().rejects_ignored >= 1);
}

#[test]
fn a_client_rejected_as_full_backs_off() {
    let relay = TestRelay::start(Config {
        max_clients: 1,
        ..Config::default()
    });
    let _only = relay.client();
    let before = stats(&relay);
    let r = Client::connect(&relay.client_config(), Duration::from_secs(3));
    assert!(r.is_err());
    let after = stats(&relay);
    let attempts = delta(&before, &after, "drop.relay_full");
    println!("rejected client made {attempts} registration attempts in 3 s");
    assert!(attempts <= 3, "{attempts} RSA-costing attempts in 3 s");
}

#[test]
fn no_reply_to_an_unvalidated_source_exceeds_three_times_its_request() {
    let relay = TestRelay::start(Config::default());
    let _cs = chatters(&relay, 1); // a session exists, so FRAGMENT/SEALED have a target
    let atk = attacker(&relay);
    let group = relay.group_addr();
    let valid_cookie = fetch_cookie(&atk, group);
    let _ = replies(&atk, Duration::from_millis(200));
    let bad = [0x55u8; COOKIE_LEN];
    let mut prng = Prng(0x5eed_0005);
    let mut kind_datagrams = |kind: &str| -> Vec<u8> {
        match kind {
            "HELLO (64 B, v1)" => hello_datagram(1, 1),
            "HELLO (64 B, v9 only)" => hello_datagram(9, 9),
            "HELLO (short, 8 B)" => {
                let mut d = Vec::new();
                wire::put_tlv(&mut d, outer::HELLO, &[0, 1, 0, 1]);
                d
            }
            "KEY_REQUEST bad cookie" => {
                let mut d = Vec::new();
                Outer::KeyRequest { cookie: &bad }.write(&mut d);
                d
            }
            "REGISTER bad cookie, 64 B ct" => register_datagram(&bad, &[3u8; 64]),
            "REGISTER bad cookie, 256 B ct" => register_datagram(&bad, &[3u8; 256]),
            "SEALED from unknown addr (8 B)" => sealed_datagram(b"AAAA"),
            "SEALED from unknown addr (1200 B)" => sealed_datagram(&[b'A'; 1196]),
            "FRAGMENT from unknown addr" => fragment_datagram(1, 1, 2, b"x"),
            "COOKIE to relay" => {
                let mut d = Vec::new();
                Outer::Cookie {
                    version: 1,
                    cookie: &bad,
                }
                .write(&mut d);
                d
            }
            "PUBLIC_KEY to relay" => {
                let mut d = Vec::new();
                wire::put_tlv(&mut d, outer::PUBLIC_KEY, b"-----BEGIN");
                d
            }
            "REJECT to relay" => {
                let mut d = Vec::new();
                wire::put_tlv(&mut d, outer::REJECT, &[0, 2]);
                d
            }
            "unknown type (4 B)" => vec![0x12, 0x34, 0, 0],
            "garbage (1 B)" => vec![0xff],
            "random (100 B)" => prng.bytes(100),
            "zero-length" => Vec::new(),
            "oversized (1500 B)" => vec![0u8; 1500],
            // Validated (the cookie proves the source receives at its address): exempt.
            "KEY_REQUEST valid cookie [validated]" => {
                let mut d = Vec::new();
                Outer::KeyRequest {
                    cookie: &valid_cookie,
                }
                .write(&mut d);
                d
            }
            "REGISTER valid cookie, 64 B ct [validated]" => {
                register_datagram(&valid_cookie, &[3u8; 64])
            }
            k => panic!("{k}"),
        }
    };
    let kinds = [
        "HELLO (64 B, v1)",
        "HELLO (64 B, v9 only)",
        "HELLO (short, 8 B)",
        "KEY_REQUEST bad cookie",
        "REGISTER bad cookie, 64 B ct",
        "REGISTER bad cookie, 256 B ct",
        "SEALED from unknown addr (8 B)",
        "SEALED from unknown addr (1200 B)",
        "FRAGMENT from unknown addr",
        "COOKIE to relay",
        "PUBLIC_KEY to relay",
        "REJECT to relay",
        "unknown type (4 B)",
        "garbage (1 B)",
        "random (100 B)",
        "zero-length",
        "oversized (1500 B)",
        "KEY_REQUEST valid cookie [validated]",
        "REGISTER valid cookie, 64 B ct [validated]",
    ];
    println!(
        "{:<44} {:>6} {:>8} {:>6}",
        "request", "bytes", "replied", "ratio"
    );
    let mut worst = (0.0f64, "");
    for kind in kinds {
        let d = kind_datagrams(kind);
        atk.send_to(&d, group).unwrap();
        let back: usize = replies(&atk, Duration::from_millis(400))
            .iter()
            .map(Vec::len)
            .sum();
        let ratio = back as f64 / d.len().max(1) as f64;
        println!("{kind:<44} {:>6} {back:>8} {ratio:>6.2}", d.len());
        if !kind.contains("[validated]") && ratio > worst.0 {
            worst = (ratio, kind);
        }
        if d.is_empty() {
            assert_eq!(back, 0, "an empty datagram earned {back} bytes");
        }
    }
    println!("worst unvalidated ratio: {:.2} ({})", worst.0, worst.1);
    assert!(
        worst.0 <= 3.0,
        "amplification {:.2} by {}",
        worst.0,
        worst.1
    );
}
