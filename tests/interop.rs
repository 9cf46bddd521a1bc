//! Interop with an independent implementation: a Python client written from
//! docs/protocol.md alone (tests/interop/pyclient.py, on the `cryptography` package), and test
//! vectors computed by Python from the document's byte layouts.
//!
//! These tests need `python3` with `cryptography`; the README's test command installs it.
//! They fail (never skip) when it is missing.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::*;
use mcrelay::client::Event;
use mcrelay::core::Config;
use mcrelay::crypto::fernet::{self, FernetKey};
use mcrelay::crypto::key::hex;
use mcrelay::wire::{self, Body, Outer};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Py {
    fn spawn(relay: &TestRelay, extra: &[&str]) -> Py {
        let mut child = Command::new("python3")
            .arg("tests/interop/pyclient.py")
            .args([
                "--group",
                &relay.group.to_string(),
                "--port",
                &relay.port.to_string(),
            ])
            .args(["--iface", "127.0.0.1", "--ttl", "0"])
            .args(["--server-fingerprint", &hex(&relay.fingerprint)])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed (the README's test command installs cryptography)");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Py {
            child,
            stdin,
            lines: rx,
        }
    }

    fn expect_line(&self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .expect("python client output");
            if pred(&l) {
                return l;
            }
        }
    }
}

#[test]
fn python_client_from_the_doc_chats_with_a_rust_client() {
    let relay = TestRelay::start(Config::default());
    let mut rust = relay.client();
    let mut py = Py::spawn(&relay, &[]);
    let ready = py.expect_line(|l| l.starts_with("ready "));
    let parts: Vec<&str> = ready.split(' ').collect();
    let py_id: u32 = parts[1].parse().unwrap();
    assert_eq!(parts[2], hex(&relay.fingerprint));
    assert!(
        wait_for(&mut rust, T, |e| *e
            == Event::Join {
                id: py_id,
                name: None
            })
        .is_some()
    );

    rust.send(b"hello python").unwrap();
    py.expect_line(|l| l == format!("msg {} hello python", rust.id()));

    let stdin = py.stdin.as_mut().unwrap();
    writeln!(stdin, "hello rust, from python").unwrap();
    stdin.flush().unwrap();
    assert_eq!(
        rust.recv_message(T).unwrap(),
        Some((py_id, b"hello rust, from python".to_vec()))
    );

    // A large message from Rust crosses the relay's fragmenter into Python's reassembler.
    let big = "x".repeat(20_000);
    rust.send(big.as_bytes()).unwrap();
    py.expect_line(|l| l.len() > 20_000 && l.ends_with(&big));

    // EOF on stdin: the Python client disconnects; the relay acknowledges and tells us.
    drop(py.stdin.take());
    py.expect_line(|l| l == "closed disconnect");
    assert_eq!(
        wait_for(&mut rust, T, |e| matches!(e, Event::Leave { .. })),
        Some(Event::Leave {
            id: py_id,
            reason: 1
        })
    );
    assert!(py.child.wait().unwrap().success());
}

#[test]
fn python_client_sends_a_60_kib_message_in_fragments() {
    let relay = TestRelay::start(Config::default());
    let mut rust = relay.client();
    let path = std::env::temp_dir().join(format!("mcrelay-py-big-{}", std::process::id()));
    let big: Vec<u8> = (0..61_440u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(&path, &big).unwrap();
    let mut py = Py::spawn(&relay, &["--send-file", path.to_str().unwrap()]);
    py.expect_line(|l| l.starts_with("ready "));
    let (_, data) = rust
        .recv_message(T)
        .unwrap()
        .expect("60 KiB message from python");
    assert!(data == big);
    drop(py.stdin.take());
    assert!(py.child.wait().unwrap().success());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn python_computed_vectors_match_our_encoder_byte_for_byte() {
    let out = Command::new("python3")
        .arg("tests/interop/vectors.py")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let key = FernetKey::from_base64(v["fernet_key"].as_bytes()).unwrap();
    let iv: [u8; 16] = unhex(v["iv"]).try_into().unwrap();
    let time: u64 = v["time"].parse().unwrap();
    let cases: [(&str, u64, Body<'_>); 4] = [
        ("a_data_hello", 1, Body::Data(b"hello")),
        ("b_keepalive", 7, Body::Keepalive),
        (
            "c_welcome",
            1,
            Body::Welcome {
                id: 1,
                keepalive_ms: 10_000,
                timeout_ms: 30_000,
                name: None,
                dist: None,
            },
        ),
        (
            "d_sender_data",
            2,
            Body::Message {
                sender: 3,
                name: None,
                data: b"hi",
            },
        ),
    ];
    for (name, seq, body) in cases {
        let mut plain = Vec::new();
        wire::write_inner(&mut plain, seq, &body);
        assert_eq!(
            hex(&plain),
            v[format!("{name}.plaintext").as_str()],
            "{name} plaintext"
        );
        let mut token = Vec::new();
        fernet::encrypt_into(&key, &iv, time, &plain, &mut token);
        assert_eq!(
            std::str::from_utf8(&token).unwrap(),
            v[format!("{name}.token").as_str()],
            "{name} token"
        );
        let mut dgram = Vec::new();
        Outer::Sealed { token: &token }.write(&mut dgram);
        assert_eq!(
            hex(&dgram),
            v[format!("{name}.datagram").as_str()],
            "{name} datagram"
        );
        // And we read Python's bytes back to the same message.
        let mut scratch = Vec::new();
        let mut back = Vec::new();
        fernet::decrypt_into(&key, &token, &mut scratch, &mut back).unwrap();
        assert_eq!(wire::parse_inner(&back).unwrap(), (seq, body));
    }
    let mut hello = Vec::new();
    Outer::Hello { min: 1, max: 1 }.write(&mut hello);
    assert_eq!(hex(&hello), v["hello.datagram"]);
    let cookie: [u8; 24] = std::array::from_fn(|i| i as u8);
    let mut d = Vec::new();
    Outer::Cookie {
        version: 1,
        cookie: &cookie,
    }
    .write(&mut d);
    assert_eq!(hex(&d), v["cookie.datagram"]);
    let mut d = Vec::new();
    Outer::KeyRequest { cookie: &cookie }.write(&mut d);
    assert_eq!(hex(&d), v["key_request.datagram"]);
    let mut d = Vec::new();
    Outer::Reject {
        code: 2,
        reason: b"bad cookie",
    }
    .write(&mut d);
    assert_eq!(hex(&d), v["reject.datagram"]);
}
