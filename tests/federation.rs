//! Federation (docs/federation.md) with real processes: `mcrelay serve` relays federated over
//! a real three-node `nats-server` cluster on free loopback ports (tests/common/nats_cluster.rs),
//! clients of the library on loopback multicast (TTL 0, interface 127.0.0.1), each relay on
//! its own group.
//!
//! These tests need `nats-server` and fail (they do not skip) without it; `.ci/test`
//! installs it. They run one at a time (a lock): each starts a NATS cluster and several
//! relays, and some kill processes.

mod common;
#[path = "common/nats_cluster.rs"]
mod nats_cluster;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{key_pem, unique_endpoint};
use mcrelay::ServerKey;
use mcrelay::client::{Client, ClientConfig, Event};
use nats_cluster::{Cluster, free_port};

/// One test at a time: NATS clusters, relay processes and kills.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Files shared by the relays of a test: the RSA key, two cluster keys.
struct Files {
    dir: PathBuf,
    key: PathBuf,
    cluster_key: PathBuf,
    other_key: PathBuf,
    fingerprint: [u8; 32],
}

impl Files {
    fn new() -> Files {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mcrelay-fed-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("relay.pem");
        std::fs::write(&key, key_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let fingerprint = *ServerKey::from_pkcs8_pem(key_pem()).unwrap().fingerprint();
        for (name, k) in [("cluster.key", [7u8; 32]), ("other.key", [8u8; 32])] {
            let b64 = mcrelay::crypto::fernet::FernetKey::from_bytes(&k).to_base64();
            std::fs::write(dir.join(name), [&b64[..], b"\n"].concat()).unwrap();
        }
        Files {
            cluster_key: dir.join("cluster.key"),
            other_key: dir.join("other.key"),
            dir,
            key,
            fingerprint,
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `mcrelay serve` process in a federation.
struct RelayProc {
    id: u8,
    child: Option<Child>,
    group: Ipv4Addr,
    port: u16,
    control: SocketAddr,
    monitor: Option<SocketAddr>,
    log: PathBuf,
    fingerprint: [u8; 32],
}

struct RelayOpts<'a> {
    id: u8,
    nats: Vec<SocketAddr>,
    cluster_key: &'a Path,
    group_mode: bool,
    heartbeat: &'a str,
    monitor: bool,
}

impl RelayProc {
    fn start(files: &Files, o: RelayOpts<'_>) -> RelayProc {
        let (group, port) = unique_endpoint();
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = files.dir.join(format!("relay{}-{port}.log", o.id));
        let err = std::fs::File::create(&log).unwrap();
        let nats: Vec<String> = o.nats.iter().map(SocketAddr::to_string).collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcrelay"));
        cmd.args([
            "serve",
            "--group",
            &group.to_string(),
            "--port",
            &port.to_string(),
        ])
        .args(["--iface", "127.0.0.1", "--ttl", "0"])
        .args(["--control", &control.to_string()])
        .arg("--key-file")
        .arg(&files.key)
        .args(["--nats", &nats.join(","), "--relay-id", &o.id.to_string()])
        .args(["--cluster", "fedtest", "--cluster-key-file"])
        .arg(o.cluster_key)
        .args(["--federation-heartbeat", o.heartbeat])
        .args(["--log-level", "debug"]);
        if o.group_mode {
            cmd.args(["--distribution", "group"]);
        }
        let monitor = o
            .monitor
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        if let Some(m) = monitor {
            cmd.args(["--monitor", &m.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn mcrelay serve");
        let r = RelayProc {
            id: o.id,
            child: Some(child),
            group,
            port,
            control,
            monitor,
            log,
            fingerprint: files.fingerprint,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(control).is_err() {
            assert!(
                Instant::now() < deadline,
                "relay {} did not start:\n{}",
                r.id,
                r.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// One control command: its reply lines without the terminator (which must be OK).
    fn ctl(&self, line: &str) -> Vec<String> {
        let s = TcpStream::connect(self.control).expect("control");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut greeting = String::new();
        r.read_line(&mut greeting).unwrap();
        r.read_line(&mut greeting).unwrap();
        writeln!(w, "{line}").unwrap();
        let mut out = Vec::new();
        loop {
            let mut l = String::new();
            assert!(r.read_line(&mut l).unwrap() > 0, "control closed");
            let l = l.trim_end().to_string();
            if l == "OK" {
                return out;
            }
            assert!(!l.starts_with("ERR"), "{line}: {l}");
            out.push(l);
        }
    }

    fn stats(&self) -> HashMap<String, u64> {
        self.ctl("stats")
            .iter()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    fn stat(&self, name: &str) -> u64 {
        *self
            .stats()
            .get(name)
            .unwrap_or_else(|| panic!("no stat {name}"))
    }

    /// `peers`: the first line (this relay), then `peer=N` lines, as key=value maps.
    fn peers(&self) -> (HashMap<String, String>, Vec<HashMap<String, String>>) {
        let lines = self.ctl("peers");
        let kv = |l: &str| -> HashMap<String, String> {
            l.split(' ')
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let head = kv(lines.first().map(String::as_str).unwrap_or(""));
        (head, lines.iter().skip(1).map(|l| kv(l)).collect())
    }

    fn peers_up(&self) -> BTreeSet<u8> {
        self.peers()
            .1
            .iter()
            .filter(|p| p.get("state").map(String::as_str) == Some("up"))
            .filter_map(|p| p.get("peer")?.parse().ok())
            .collect()
    }

    /// `clients`: every id, local and remote.
    fn client_ids(&self) -> BTreeSet<u32> {
        self.ctl("clients")
            .iter()
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .collect()
    }

    /// `GET path` on the monitor: the body.
    fn http_get(&self, path: &str) -> String {
        use std::io::Read;
        let mut s = TcpStream::connect(self.monitor.expect("monitor on")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().split(' ').next()?.parse().ok())
            .expect("VmRSS")
    }

    fn client(&self) -> Member {
        let cfg = ClientConfig {
            group: self.group,
            port: self.port,
            iface: Ipv4Addr::LOCALHOST,
            ttl: 0,
            pin: Some(self.fingerprint),
            admission: None,
        };
        let c = Client::connect(&cfg, Duration::from_secs(10)).expect("client connects");
        Member {
            id: c.id(),
            c,
            present: BTreeSet::new(),
            events: Vec::new(),
            got: Vec::new(),
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- relay {} log ---\n{}", self.id, self.log_tail());
        }
        self.kill();
    }
}

/// A client and what it saw.
struct Member {
    id: u32,
    c: Client,
    /// Who it knows is there (MEMBERS, JOIN, minus LEAVE).
    present: BTreeSet<u32>,
    events: Vec<Event>,
    /// Messages: (sender, body).
    got: Vec<(u32, Vec<u8>)>,
}

impl Member {
    /// Read whatever has arrived (for at most `wait`).
    fn pump(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .c
                .recv_event(left.max(Duration::from_millis(1)))
                .expect("recv")
            {
                Some(e) => self.note(e),
                None => return,
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    }

    fn note(&mut self, e: Event) {
        match &e {
            Event::Present { id, .. } | Event::Join { id, .. } => {
                self.present.insert(*id);
            }
            Event::Leave { id, .. } => {
                self.present.remove(id);
            }
            Event::Message { sender, data, .. } => self.got.push((*sender, data.clone())),
            _ => {}
        }
        self.events.push(e);
    }

    fn send(&mut self, data: &[u8]) {
        self.c.send(data).expect("send");
    }

    fn left(&self, id: u32) -> Option<u8> {
        self.events.iter().rev().find_map(|e| match e {
            Event::Leave { id: i, reason } if *i == id => Some(*reason),
            _ => None,
        })
    }

    fn messages_from(&self, sender: u32) -> Vec<&[u8]> {
        self.got
            .iter()
            .filter(|(s, _)| *s == sender)
            .map(|(_, d)| d.as_slice())
            .collect()
    }
}

/// Pump every member until `done` holds or `timeout` passes; returns whether it held.
fn pump_until(
    members: &mut [&mut Member],
    timeout: Duration,
    mut done: impl FnMut(&[&mut Member]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        for m in members.iter_mut() {
            m.pump(Duration::from_millis(2));
        }
        if done(members) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// Wait for `cond` on relays (polled every 50 ms).
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` servers of the cluster, starting at `first`: each relay prefers its own node.
fn rotate(c: &Cluster, first: usize) -> Vec<SocketAddr> {
    let a = c.addrs();
    (0..a.len()).map(|i| a[(first + i) % a.len()]).collect()
}

fn opts<'a>(files: &'a Files, c: &Cluster, id: u8, heartbeat: &'a str) -> RelayOpts<'a> {
    RelayOpts {
        id,
        nats: rotate(c, usize::from(id - 1) % 3),
        cluster_key: &files.cluster_key,
        group_mode: false,
        heartbeat,
        monitor: false,
    }
}

/// A 60 KiB body that names its sender (fragmented on every hop: 56 pieces to a client).
fn large(from: u32) -> Vec<u8> {
    let mut v = format!("large from {from}:").into_bytes();
    v.extend((0..60 * 1024 - v.len()).map(|i| (i % 251) as u8));
    v
}

#[test]
fn three_relays_on_three_nats_nodes_carry_short_and_large_messages_exactly_once_and_presence() {
    let _serial = serial();
    let cluster = Cluster::start(3);
    let files = Files::new();
    // Relay 2 distributes in group mode: each relay serves its own clients in its own mode.
    let r1 = RelayProc::start(
        &files,
        RelayOpts {
            monitor: true,
            ..opts(&files, &cluster, 1, "1s")
        },
    );
    let r2 = RelayProc::start(
        &files,
        RelayOpts {
            group_mode: true,
            ..opts(&files, &cluster, 2, "1s")
        },
    );
    let r3 = RelayProc::start(&files, opts(&files, &cluster, 3, "1s"));
    let relays = [&r1, &r2, &r3];
    wait_until(
        "every relay sees the two others up",
        Duration::from_secs(10),
        || relays.iter().all(|r| r.peers_up().len() == 2),
    );
    for (r, node) in relays.iter().zip(cluster.addrs()) {
        let (head, _) = r.peers();
        assert_eq!(head["nats"], "connected");
        assert_eq!(
            head["server"],
            node.to_string(),
            "each relay on its own node"
        );
    }

    let mut m: Vec<Member> = vec![
        r1.client(),
        r1.client(),
        r2.client(),
        r2.client(),
        r3.client(),
    ];
    let ids: Vec<u32> = m.iter().map(|x| x.id).collect();
    for (x, relay) in ids.iter().zip([1u32, 1, 2, 2, 3]) {
        assert_eq!(
            x >> 24,
            relay,
            "the relay id is the high byte of a client id"
        );
    }
    let everyone: BTreeSet<u32> = ids.iter().copied().collect();
    let mut refs: Vec<&mut Member> = m.iter_mut().collect();
    let all_known = pump_until(&mut refs, Duration::from_secs(10), |ms| {
        ms.iter().all(|x| {
            let mut want = everyone.clone();
            want.remove(&x.id);
            x.present == want
        })
    });
    assert!(
        all_known,
        "every client learns of every other (MEMBERS and JOIN)"
    );
    for r in relays {
        assert_eq!(
            r.client_ids(),
            everyone,
            "relay {}: clients lists local and remote",
            r.id
        );
    }
    let health = r1.http_get("/healthz");
    let want = format!(
        "\"nats\":{{\"connected\":true,\"server\":\"{}\",\"pending_bytes\":0,\
         \"peers_up\":2,\"peers_known\":2,\"remote_clients\":3}}",
        cluster.addrs()[0]
    );
    assert!(health.contains(&want), "/healthz: {health}");

    // Everyone sends a short and a large message.
    for x in m.iter_mut() {
        let id = x.id;
        x.send(format!("short from {id}").as_bytes());
        x.send(&large(id));
        x.pump(Duration::from_millis(20));
    }
    let mut refs: Vec<&mut Member> = m.iter_mut().collect();
    let all_in = pump_until(&mut refs, Duration::from_secs(15), |ms| {
        ms.iter().all(|x| x.got.len() >= 2 * (everyone.len() - 1))
    });
    // A moment more, in case anything came twice.
    for x in m.iter_mut() {
        x.pump(Duration::from_millis(300));
    }
    assert!(
        all_in,
        "every message arrived: {:?}",
        m.iter().map(|x| x.got.len()).collect::<Vec<_>>()
    );
    for x in &m {
        for &s in ids.iter().filter(|&&s| s != x.id) {
            let got = x.messages_from(s);
            let short = format!("short from {s}").into_bytes();
            assert_eq!(got.len(), 2, "{} got {} messages from {s}", x.id, got.len());
            assert_eq!(
                got[0],
                short.as_slice(),
                "{} from {s}: short, in order",
                x.id
            );
            assert_eq!(
                got[1],
                large(s).as_slice(),
                "{} from {s}: the 60 KiB one whole",
                x.id
            );
        }
        assert!(x.messages_from(x.id).is_empty(), "nobody gets its own");
    }
    for r in relays {
        let s = r.stats();
        assert_eq!(
            s["federation_data_out"],
            2 * [2, 2, 1][usize::from(r.id - 1)],
            "relay {}",
            r.id
        );
        assert_eq!(s["federation_duplicates"], 0);
        assert_eq!(s["federation_bad_seal"], 0);
        assert_eq!(s["federation_gaps"], 0);
    }

    // A leave and a join cross the cluster.
    let mut gone = m.remove(1);
    let gone_id = gone.id;
    gone.c.disconnect().unwrap();
    let newcomer = r3.client();
    let new_id = newcomer.id;
    m.push(newcomer);
    let mut refs: Vec<&mut Member> = m.iter_mut().collect();
    let seen = pump_until(&mut refs, Duration::from_secs(10), |ms| {
        ms.iter().all(|x| {
            !x.present.contains(&gone_id) && (x.id == new_id || x.present.contains(&new_id))
        })
    });
    assert!(seen, "the leave and the join reached everyone");
    for x in &m[..m.len() - 1] {
        assert_eq!(
            x.left(gone_id),
            Some(1),
            "LEAVE(disconnect) of {gone_id} at {}",
            x.id
        );
    }
    let n = m.last().unwrap();
    let mut want = everyone.clone();
    want.remove(&gone_id);
    assert_eq!(
        n.present, want,
        "the newcomer's member list names every relay's clients"
    );
}

#[test]
fn killing_the_nats_node_of_a_relay_mid_conversation_costs_nothing_locally_and_a_counted_bounded_loss_across()
 {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    let files = Files::new();
    let r1 = RelayProc::start(&files, opts(&files, &cluster, 1, "1s"));
    let r2 = RelayProc::start(&files, opts(&files, &cluster, 2, "1s"));
    wait_until("both relays up", Duration::from_secs(10), || {
        r1.peers_up().len() == 1 && r2.peers_up().len() == 1
    });
    let n1 = cluster.nodes[0].addr();
    assert_eq!(r1.peers().0["server"], n1.to_string());
    let (mut a1, mut a2, mut b1) = (r1.client(), r1.client(), r2.client());
    let mut refs = [&mut a1, &mut a2, &mut b1];
    assert!(pump_until(&mut refs, Duration::from_secs(10), |ms| ms
        .iter()
        .all(|x| x.present.len() == 2)));

    // a1 and b1 each send a numbered message every 20 ms; r1's NATS node dies after 1 s.
    let period = Duration::from_millis(20);
    let start = Instant::now();
    let mut killed: Option<Instant> = None;
    let mut moved: Option<Duration> = None;
    let mut sent = 0u32;
    let mut next_poll = start;
    while start.elapsed() < Duration::from_secs(5) {
        a1.send(format!("a{sent}").as_bytes());
        b1.send(format!("b{sent}").as_bytes());
        sent += 1;
        for x in [&mut a1, &mut a2, &mut b1] {
            x.pump(Duration::from_millis(1));
        }
        if killed.is_none() && start.elapsed() >= Duration::from_secs(1) {
            cluster.nodes[0].kill();
            killed = Some(Instant::now());
        }
        if let Some(k) = killed
            && moved.is_none()
            && Instant::now() >= next_poll
        {
            next_poll = Instant::now() + Duration::from_millis(50);
            let (head, _) = r1.peers();
            if head["nats"] == "connected" && head["server"] != n1.to_string() {
                moved = Some(k.elapsed());
            }
        }
        std::thread::sleep(period.saturating_sub(Duration::from_millis(3)));
    }
    let mut refs = [&mut a1, &mut a2, &mut b1];
    pump_until(&mut refs, Duration::from_secs(2), |_| false);
    let moved = moved.expect("relay 1 reconnected to another node");
    assert!(
        moved <= Duration::from_secs(2),
        "reconnected after {moved:?}"
    );

    // Local: nothing lost, in order, once.
    let want: Vec<Vec<u8>> = (0..sent).map(|i| format!("a{i}").into_bytes()).collect();
    let got: Vec<Vec<u8>> = a2.messages_from(a1.id).iter().map(|d| d.to_vec()).collect();
    assert_eq!(got, want, "a2 got every message of a1, its relay-mate");
    // Across: once each, and what is missing is counted and bounded by the outage.
    let rate = 1.0 / period.as_secs_f64();
    let bound = (rate * (moved.as_secs_f64() + 1.0)) as usize;
    for (to, from, tag, counter) in [(&b1, a1.id, 'a', &r2), (&a1, b1.id, 'b', &r1)] {
        let got = to.messages_from(from);
        let distinct: BTreeSet<&[u8]> = got.iter().copied().collect();
        assert_eq!(distinct.len(), got.len(), "no duplicates at {}", to.id);
        let missing = sent as usize - got.len();
        let gaps = counter.stat("federation_gaps") as usize;
        eprintln!(
            "{tag} -> {}: {sent} sent, {missing} missing, gaps {gaps}, reconnect {moved:?}",
            to.id
        );
        assert!(
            missing <= bound,
            "{missing} lost from {tag}, more than the outage explains"
        );
        assert!(
            missing <= gaps,
            "{missing} lost but only {gaps} counted as gaps at relay {}",
            counter.id
        );
    }
    // Rosters converge.
    let everyone: BTreeSet<u32> = [a1.id, a2.id, b1.id].into();
    wait_until("rosters converge", Duration::from_secs(5), || {
        r1.client_ids() == everyone && r2.client_ids() == everyone
    });
    assert_eq!(r1.stat("nats_disconnects"), 1);
}

#[test]
fn with_every_nats_node_down_local_chat_works_memory_stays_bounded_and_federation_resumes() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    let files = Files::new();
    let hb = Duration::from_millis(500);
    let r1 = RelayProc::start(&files, opts(&files, &cluster, 1, "500ms"));
    let r2 = RelayProc::start(&files, opts(&files, &cluster, 2, "500ms"));
    wait_until("both relays up", Duration::from_secs(10), || {
        r1.peers_up().len() == 1 && r2.peers_up().len() == 1
    });
    let (mut a1, mut a2, mut b1, mut b2) = (r1.client(), r1.client(), r2.client(), r2.client());
    let mut refs = [&mut a1, &mut a2, &mut b1, &mut b2];
    assert!(pump_until(&mut refs, Duration::from_secs(10), |ms| ms
        .iter()
        .all(|x| x.present.len() == 3)));
    let rss_before = r1.rss_kib();

    for n in &mut cluster.nodes {
        n.kill();
    }
    // 400 messages of 60 KiB (24 MiB) on each relay while NATS is gone: local members get
    // all, and the relays hold at most their caps (2 MiB of NATS queue, 4 MiB of record).
    let body = large(a1.id);
    let mut pending_max = 0;
    for i in 0..400u32 {
        a1.send(&body);
        b1.send(format!("local {i}").as_bytes());
        for x in [&mut a2, &mut b2, &mut a1, &mut b1] {
            x.pump(Duration::from_millis(1));
        }
        if i % 50 == 0 {
            pending_max = pending_max.max(r1.stat("nats_pending_bytes"));
        }
    }
    let mut refs = [&mut a1, &mut a2, &mut b1, &mut b2];
    assert!(
        pump_until(&mut refs, Duration::from_secs(10), |ms| ms[1].got.len()
            >= 400
            && ms[3].got.len() >= 400),
        "local chat works while NATS is down: a2 {} b2 {}",
        a2.got.len(),
        b2.got.len()
    );
    assert!(
        a2.messages_from(a1.id)
            .iter()
            .all(|d| *d == body.as_slice())
    );
    assert_eq!(a2.messages_from(a1.id).len(), 400);
    assert_eq!(b2.messages_from(b1.id).len(), 400);
    // Peers are lost after three heartbeats, and their clients announced as left (6).
    let mut refs = [&mut a1, &mut a2, &mut b1, &mut b2];
    assert!(pump_until(
        &mut refs,
        4 * hb + Duration::from_secs(2),
        |ms| ms.iter().all(|x| x.present.len() == 1)
    ));
    assert_eq!(a1.left(b1.id), Some(6), "relay lost");
    assert_eq!(b2.left(a2.id), Some(6), "relay lost");
    let rss_after = r1.rss_kib();
    eprintln!("relay 1 RSS {rss_before} KiB -> {rss_after} KiB, NATS queue peak {pending_max} B");
    assert!(
        pending_max <= (2 << 20) + 70_000,
        "the NATS queue stays within its cap"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "24 MiB sent, RSS grew {rss_before} -> {rss_after} KiB"
    );
    let s = r1.stats();
    assert_eq!(s["nats_pending_bytes"], 0, "cut off: the queue was dropped");
    assert!(
        s["federation_publish_dropped"] > 0,
        "what could not be published is counted"
    );

    // NATS back: federation resumes, rosters converge, messages cross again.
    for n in &mut cluster.nodes {
        n.restart();
    }
    cluster.wait_formed(Duration::from_secs(15));
    let everyone: BTreeSet<u32> = [a1.id, a2.id, b1.id, b2.id].into();
    wait_until(
        "rosters converge after the outage",
        Duration::from_secs(15),
        || r1.client_ids() == everyone && r2.client_ids() == everyone,
    );
    let mut refs = [&mut a1, &mut a2, &mut b1, &mut b2];
    assert!(pump_until(&mut refs, Duration::from_secs(5), |ms| ms
        .iter()
        .all(|x| x.present.len() == 3)));
    let before = a1.got.len();
    b2.send(b"after the outage");
    let mut refs = [&mut a1, &mut b2];
    assert!(pump_until(&mut refs, Duration::from_secs(5), |ms| ms[0]
        .got
        .len()
        > before));
    assert_eq!(
        a1.got.last().map(|(s, d)| (*s, d.as_slice())),
        Some((b2.id, &b"after the outage"[..]))
    );
}

#[test]
fn a_killed_relay_s_clients_are_announced_as_left_within_three_heartbeats() {
    let _serial = serial();
    let cluster = Cluster::start(3);
    let files = Files::new();
    let hb = Duration::from_millis(500);
    let r1 = RelayProc::start(&files, opts(&files, &cluster, 1, "500ms"));
    let r2 = RelayProc::start(&files, opts(&files, &cluster, 2, "500ms"));
    let mut r3 = RelayProc::start(&files, opts(&files, &cluster, 3, "500ms"));
    wait_until("three relays up", Duration::from_secs(10), || {
        [&r1, &r2, &r3].iter().all(|r| r.peers_up().len() == 2)
    });
    let (mut a1, c1, c2) = (r1.client(), r3.client(), r3.client());
    let mut refs = [&mut a1];
    assert!(pump_until(&mut refs, Duration::from_secs(10), |ms| ms[0]
        .present
        .len()
        == 2));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    r3.kill();
    let mut refs = [&mut a1];
    let gone = pump_until(&mut refs, 3 * hb + Duration::from_secs(2), |ms| {
        ms[0].present.is_empty()
    });
    let after = killed.elapsed();
    assert!(gone, "relay 3's clients announced as left");
    assert_eq!(a1.left(c1.id), Some(6));
    assert_eq!(a1.left(c2.id), Some(6));
    eprintln!("relay 3's clients announced as left {after:?} after its SIGKILL");
    assert!(
        after <= 3 * hb + Duration::from_millis(300),
        "{after:?}: more than 3 heartbeats"
    );
    let lost: Vec<_> = r2
        .peers()
        .1
        .into_iter()
        .filter(|p| p["peer"] == "3")
        .collect();
    assert_eq!(lost[0]["state"], "lost");
    assert_eq!(r1.stat("federation_peers_lost"), 1);
    assert_eq!(r2.client_ids(), BTreeSet::from([a1.id]));
}

#[test]
fn a_relay_with_the_wrong_cluster_key_is_ignored_and_counted_and_breaks_nobody() {
    let _serial = serial();
    let cluster = Cluster::start(3);
    let files = Files::new();
    let r1 = RelayProc::start(&files, opts(&files, &cluster, 1, "500ms"));
    let r2 = RelayProc::start(&files, opts(&files, &cluster, 2, "500ms"));
    let bad = RelayProc::start(
        &files,
        RelayOpts {
            cluster_key: &files.other_key,
            ..opts(&files, &cluster, 3, "500ms")
        },
    );
    wait_until(
        "the good relays see each other",
        Duration::from_secs(10),
        || r1.peers_up() == BTreeSet::from([2]) && r2.peers_up() == BTreeSet::from([1]),
    );
    let (mut a1, mut b1, mut d1) = (r1.client(), r2.client(), bad.client());
    d1.send(b"from outside the cluster");
    a1.send(b"inside");
    let mut refs = [&mut a1, &mut b1, &mut d1];
    assert!(pump_until(&mut refs, Duration::from_secs(5), |ms| ms[1]
        .got
        .len()
        == 1));
    let mut refs = [&mut a1, &mut b1, &mut d1];
    pump_until(&mut refs, Duration::from_millis(1500), |_| false);
    assert_eq!(b1.got, vec![(a1.id, b"inside".to_vec())]);
    assert!(a1.got.is_empty() && d1.got.is_empty());
    assert!(!a1.present.contains(&d1.id) && !d1.present.contains(&a1.id));
    for r in [&r1, &r2, &bad] {
        let s = r.stats();
        assert!(
            s["federation_bad_seal"] >= 2,
            "relay {} counted {}",
            r.id,
            s["federation_bad_seal"]
        );
    }
    assert!(bad.peers_up().is_empty());
    assert_eq!(r1.peers_up(), BTreeSet::from([2]), "relay 3 is no peer");
    assert_eq!(r1.client_ids(), BTreeSet::from([a1.id, b1.id]));
    // Everyone still serves.
    for r in [&r1, &r2, &bad] {
        r.ctl("ping");
    }
}
