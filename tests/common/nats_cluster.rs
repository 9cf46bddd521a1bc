//! Real `nats-server` processes for tests: free loopback ports, a config file in a temporary
//! directory, `nats-server -c <file>`, killed (SIGKILL) and cleaned up on drop.
//!
//! A missing `nats-server` is a test failure, not a skip: `.ci/test` installs it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Credentials a server requires.
#[derive(Debug, Clone)]
pub enum ServerAuth {
    None,
    Token(String),
    User(String, String),
}

/// A loopback port nobody in this test process was given before and that was free a moment
/// ago (the kernel picks it; parallel tests do not collide on it).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind a loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mcrelay-nats-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// `nats-server` from PATH, or where Debian installs it (`/usr/sbin` is not on every PATH).
fn nats_server_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()));
    if on_path {
        return PathBuf::from("nats-server");
    }
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// One `nats-server` process (restartable with the same ports and config).
pub struct NatsServer {
    pub name: String,
    pub port: u16,
    pub cluster_port: Option<u16>,
    dir: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl NatsServer {
    /// A single server with `auth`, started and ready.
    pub fn start(auth: ServerAuth) -> NatsServer {
        let mut s = Self::configure("solo", free_port(), None, &[], &auth);
        s.spawn();
        s.wait_ready();
        s
    }

    fn configure(
        name: &str,
        port: u16,
        cluster_port: Option<u16>,
        routes: &[u16],
        auth: &ServerAuth,
    ) -> NatsServer {
        let dir = temp_dir();
        let mut conf = format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\n\
             # Lame duck: notify clients at once, close them only after the test is done.\n\
             lame_duck_grace_period: \"10s\"\nlame_duck_duration: \"30s\"\n"
        );
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        match auth {
            ServerAuth::None => {}
            ServerAuth::Token(t) => conf += &format!("authorization {{ token: \"{}\" }}\n", q(t)),
            ServerAuth::User(u, p) => {
                conf += &format!(
                    "authorization {{ user: \"{}\", password: \"{}\" }}\n",
                    q(u),
                    q(p)
                )
            }
        }
        if let Some(cp) = cluster_port {
            let routes: Vec<String> = routes
                .iter()
                .map(|r| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect();
            conf += &format!(
                "cluster {{\n  name: \"mcrelay-test\"\n  listen: \"127.0.0.1:{cp}\"\n  \
                 routes: [{}]\n}}\n",
                routes.join(", ")
            );
        }
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).expect("write the server config");
        NatsServer {
            name: name.to_string(),
            port,
            cluster_port,
            dir,
            conf: path,
            child: None,
            starts: 0,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn();
        match child {
            Ok(c) => self.child = Some(c),
            Err(e) => panic!(
                "cannot run nats-server ({e}): these tests need it on PATH \
                 (Debian: apt-get install -y nats-server; .ci/test installs it)"
            ),
        }
        self.starts += 1;
    }

    /// Ready = accepts a connection and sends INFO.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("{} exited: {status}\n{}", self.name, self.log_tail());
            }
            if self.info().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} not ready in 10 s\n{}", self.name, self.log_tail());
    }

    /// The INFO JSON a fresh client connection gets, if the server answers.
    pub fn info(&self) -> Option<String> {
        let s = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).ok()?;
        Some(line.strip_prefix("INFO ")?.trim().to_string())
    }

    /// `connect_urls` a fresh client would get.
    pub fn advertised(&self) -> Vec<SocketAddr> {
        self.info()
            .and_then(|j| mcrelay::nats::parse_info(&j).ok())
            .map(|i| i.connect_urls)
            .unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again with the same ports and config.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }

    /// SIGUSR2: enter lame-duck mode.
    pub fn lame_duck(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args(["-USR2", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -USR2 {pid} failed");
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log_tail());
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` servers routed to each other on loopback.
pub struct Cluster {
    pub nodes: Vec<NatsServer>,
}

impl Cluster {
    /// Start `n` nodes and wait until each advertises all of them (routes are up).
    pub fn start(n: usize) -> Cluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut nodes: Vec<NatsServer> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cport))| {
                let routes: Vec<u16> = ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, &(_, c))| c)
                    .collect();
                NatsServer::configure(
                    &format!("n{}", i + 1),
                    port,
                    Some(cport),
                    &routes,
                    &ServerAuth::None,
                )
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_ready();
        }
        let c = Cluster { nodes };
        c.wait_formed(Duration::from_secs(15));
        c
    }

    /// Wait until every running node advertises every running node.
    pub fn wait_formed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let want: HashSet<SocketAddr> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.addr())
            .collect();
        loop {
            let formed = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .all(|n| n.advertised().into_iter().collect::<HashSet<_>>() == want);
            if formed {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.nodes.iter().map(|n| n.log_tail()).collect();
                panic!(
                    "cluster not formed in {timeout:?}\n{}",
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr()).collect()
    }
}
