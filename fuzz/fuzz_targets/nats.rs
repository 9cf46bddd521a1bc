//! The NATS client: `nats::Parser` on arbitrary bytes in arbitrary chunkings, and
//! `NatsClient` under arbitrary sequences of server input (raw or well-formed), time steps,
//! publishes, subscriptions, partial writes, connects, disconnects and close.
//!
//! Checked: no panic; the parser makes progress, never claims more than it was given, and
//! gives the same operations and the same error whatever the chunking; its buffers stay
//! within their caps. After every client step: the transmit buffer within `transmit_limit()`,
//! the publish queue within `max_pending_bytes` (or one publish), at most `MAX_SERVERS`
//! servers, `wants_close()` exactly in the Closing state, a deadline in every state but
//! Closing/Closed, delivered messages only for live subscriptions and within `max_payload`.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcrelay::nats::{
    MAX_INFO_LINE, MAX_SERVERS, MAX_SUBJECT_LEN, NatsClient, NatsConfig, NatsError, NatsState,
    Parser, ProtoError, ServerOp,
};

const SUBJECTS: &[&str] = &["a", "a.b", "fed.x", "*", "a.>", "bad subject", "", "x.*.y"];
const ERRORS: &[&str] = &[
    "'Authorization Violation'",
    "'Permissions Violation for Publish to a'",
    "'Invalid Subject'",
    "'Stale Connection'",
    "'Slow Consumer'",
    "no quotes",
    "",
];

#[derive(Arbitrary, Debug)]
enum ServerMsg {
    Info {
        max_payload: Option<u32>,
        ldm: bool,
        tls: bool,
        urls: Vec<(u8, u16)>,
        name_url: bool,
    },
    Msg {
        subject: u8,
        sid: u8,
        reply: bool,
        len: u16,
    },
    HMsg {
        sid: u8,
        hdr: u8,
        len: u8,
    },
    Ping,
    Pong,
    Ok,
    Err(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Raw(Vec<u8>),
    Server(ServerMsg),
    /// Several well-formed ops, delivered in chunks of `split` bytes.
    Batch(Vec<ServerMsg>, u8),
    Advance(u16),
    AdvanceLong(u8),
    Timeout,
    Publish {
        subject: u8,
        len: u16,
    },
    Subscribe(u8),
    Unsubscribe(u8),
    Write(u16),
    Connect,
    Refuse,
    Disconnect,
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    parser_bytes: Vec<u8>,
    splits: Vec<u16>,
    max_payload: u32,
    max_pending: u16,
    max_transmit: u16,
    max_pings_out: u8,
    seed: u64,
    ops: Vec<Op>,
}

fn base() -> Instant {
    static B: OnceLock<Instant> = OnceLock::new();
    *B.get_or_init(Instant::now)
}

#[derive(Debug, PartialEq)]
enum Owned {
    Info(String),
    Msg(Vec<u8>, u64, Option<Vec<u8>>, Vec<u8>),
    HMsg(Vec<u8>, usize, Vec<u8>),
    Ping,
    Pong,
    Ok,
    Err(String),
}

fn own(op: ServerOp<'_>) -> Owned {
    match op {
        ServerOp::Info(s) => Owned::Info(s.into()),
        ServerOp::Msg(m) => Owned::Msg(
            m.subject.to_vec(),
            m.sid,
            m.reply.map(<[u8]>::to_vec),
            m.payload.to_vec(),
        ),
        ServerOp::HMsg { msg, header_len } => {
            Owned::HMsg(msg.subject.to_vec(), header_len, msg.payload.to_vec())
        }
        ServerOp::Ping => Owned::Ping,
        ServerOp::Pong => Owned::Pong,
        ServerOp::Ok => Owned::Ok,
        ServerOp::Err(s) => Owned::Err(s.into()),
    }
}

/// Parse `data` in the given chunks; ops until the first error, and that error.
fn parse_chunked(
    data: &[u8],
    cuts: &[usize],
    max_payload: usize,
) -> (Vec<Owned>, Option<ProtoError>) {
    let mut p = Parser::new();
    p.set_max_payload(max_payload);
    let cap_bound = 2 * MAX_INFO_LINE + 2 * (p.max_payload() + 2) + (1 << 20);
    let mut ops = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        let end = end.clamp(start, data.len());
        let mut chunk = &data[start..end];
        start = end;
        while !chunk.is_empty() {
            match p.parse(chunk) {
                Ok((n, op)) => {
                    assert!(n <= chunk.len(), "consumed {n} of {}", chunk.len());
                    assert!(n > 0 || op.is_some(), "no progress");
                    if let Some(op) = op {
                        ops.push(own(op));
                    }
                    chunk = &chunk[n..];
                }
                Err(e) => {
                    assert_eq!(p.parse(b"PING\r\n").err(), Some(ProtoError::Failed));
                    return (ops, Some(e));
                }
            }
            assert!(p.capacity() <= cap_bound, "parser holds {}", p.capacity());
        }
    }
    (ops, None)
}

fn fuzz_parser(input: &Input) {
    let data = &input.parser_bytes;
    let max_payload = input.max_payload as usize % (1 << 21);
    let whole = parse_chunked(data, &[], max_payload);
    let mut cuts: Vec<usize> = input.splits.iter().map(|&s| s as usize).collect();
    cuts.sort_unstable();
    let chunked = parse_chunked(data, &cuts, max_payload);
    assert_eq!(whole, chunked, "chunking changed the result");
    let bytes: Vec<usize> = (1..data.len().min(64)).collect();
    let by_byte = parse_chunked(data, &bytes, max_payload);
    assert_eq!(whole, by_byte, "byte-by-byte changed the result");
}

fn encode(m: &ServerMsg, out: &mut Vec<u8>) {
    match m {
        ServerMsg::Info {
            max_payload,
            ldm,
            tls,
            urls,
            name_url,
        } => {
            let mut s = String::from("INFO {\"server_id\":\"F\",\"proto\":1");
            if let Some(mp) = max_payload {
                s += &format!(",\"max_payload\":{}", mp % (1 << 21));
            }
            s += &format!(",\"ldm\":{ldm},\"tls_required\":{tls},\"connect_urls\":[");
            let mut list: Vec<String> = urls
                .iter()
                .take(80)
                .map(|(h, p)| format!("\"127.0.{}.{}:{}\"", h / 16, h % 16, p))
                .collect();
            if *name_url {
                list.push("\"nats.example:4222\"".into());
            }
            s += &list.join(",");
            s += "]} \r\n";
            out.extend_from_slice(s.as_bytes());
        }
        ServerMsg::Msg {
            subject,
            sid,
            reply,
            len,
        } => {
            let subj = ["a", "a.b", "fed.x", "q"][*subject as usize % 4];
            let r = if *reply { " INBOX.1" } else { "" };
            let len = *len as usize % 3000;
            out.extend_from_slice(format!("MSG {subj} {} {r} {len}\r\n", sid % 8).as_bytes());
            out.extend(std::iter::repeat_n(b'm', len));
            out.extend_from_slice(b"\r\n");
        }
        ServerMsg::HMsg { sid, hdr, len } => {
            let total = *hdr as usize + *len as usize;
            out.extend_from_slice(format!("HMSG a {} {hdr} {total}\r\n", sid % 8).as_bytes());
            out.extend(std::iter::repeat_n(b'h', total));
            out.extend_from_slice(b"\r\n");
        }
        ServerMsg::Ping => out.extend_from_slice(b"PING\r\n"),
        ServerMsg::Pong => out.extend_from_slice(b"PONG\r\n"),
        ServerMsg::Ok => out.extend_from_slice(b"+OK\r\n"),
        ServerMsg::Err(i) => {
            out.extend_from_slice(b"-ERR ");
            out.extend_from_slice(ERRORS[*i as usize % ERRORS.len()].as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

struct Host {
    c: NatsClient,
    now: Instant,
    max_pending: usize,
}

impl Host {
    fn input(&mut self, bytes: &[u8]) {
        let subs: Vec<u64> = self.c.subscriptions().map(|(sid, _)| sid).collect();
        let max_payload = self.c.max_payload().max(mcrelay::nats::ABS_MAX_PAYLOAD);
        self.c.handle_input(self.now, bytes, &mut |m| {
            assert!(subs.contains(&m.sid), "message for unknown sid {}", m.sid);
            assert!(m.payload.len() <= max_payload);
            assert!(!m.subject.is_empty());
        });
    }

    fn check(&self) {
        let c = &self.c;
        assert!(
            c.transmit().len() <= c.transmit_limit(),
            "transmit {} over {}",
            c.transmit().len(),
            c.transmit_limit()
        );
        let one = mcrelay::nats::ABS_MAX_PAYLOAD + 2 * MAX_SUBJECT_LEN + 32;
        assert!(c.pending_bytes() <= self.max_pending.max(one));
        assert!(c.servers().count() <= MAX_SERVERS);
        assert!(c.input_buffer_capacity() <= 4 * MAX_INFO_LINE + 4 * (1 << 21));
        assert_eq!(c.wants_close(), c.state() == NatsState::Closing);
        let timer_expected = !matches!(c.state(), NatsState::Closing | NatsState::Closed);
        assert_eq!(
            c.poll_timeout().is_some(),
            timer_expected,
            "{:?}",
            c.state()
        );
        if c.state() == NatsState::Closed {
            assert_eq!(c.pending_bytes(), 0);
        }
    }
}

fn fuzz_client(input: &Input) {
    let servers: Vec<SocketAddr> = (1..=3u16)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], 4000 + p)))
        .collect();
    let max_pending = input.max_pending as usize * 16;
    let cfg = NatsConfig {
        servers,
        max_pending_bytes: max_pending,
        max_transmit_bytes: 4096 + input.max_transmit as usize * 4,
        max_pings_out: 1 + u32::from(input.max_pings_out % 4),
        ping_interval: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(700),
        reconnect_base: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(900),
        lame_duck_jitter: Duration::from_millis(300),
        ..NatsConfig::default()
    };
    let mut h = Host {
        c: NatsClient::new(cfg, base(), input.seed).expect("valid config"),
        now: base(),
        max_pending,
    };
    for op in input.ops.iter().take(256) {
        match op {
            Op::Raw(b) => h.input(b),
            Op::Server(m) => {
                let mut b = Vec::new();
                encode(m, &mut b);
                h.input(&b);
            }
            Op::Batch(ms, split) => {
                let mut b = Vec::new();
                for m in ms.iter().take(32) {
                    encode(m, &mut b);
                }
                for chunk in b.chunks(1 + *split as usize) {
                    h.input(chunk);
                }
            }
            Op::Advance(ms) => {
                h.now += Duration::from_millis(u64::from(*ms % 2000));
                h.c.handle_timeout(h.now);
            }
            Op::AdvanceLong(s) => {
                h.now += Duration::from_secs(u64::from(*s));
                h.c.handle_timeout(h.now);
            }
            Op::Timeout => {
                if let Some(t) = h.c.poll_timeout() {
                    h.now = h.now.max(t);
                }
                h.c.handle_timeout(h.now);
            }
            Op::Publish { subject, len } => {
                let s = SUBJECTS[*subject as usize % SUBJECTS.len()];
                let payload = vec![b'p'; *len as usize % 5000];
                let pending_before = h.c.pending_messages();
                match h.c.publish(s, &payload) {
                    Ok(()) => {}
                    Err(NatsError::InvalidSubject(_)) => {
                        assert_eq!(h.c.pending_messages(), pending_before)
                    }
                    Err(NatsError::PayloadTooLarge { len, max }) => assert!(len > max),
                    Err(NatsError::QueueFull { max, .. }) => assert_eq!(max, 0),
                    Err(NatsError::Closed) => assert_eq!(h.c.state(), NatsState::Closed),
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Subscribe(i) => {
                let _ = h.c.subscribe(SUBJECTS[*i as usize % SUBJECTS.len()]);
            }
            Op::Unsubscribe(sid) => h.c.unsubscribe(u64::from(*sid % 8)),
            Op::Write(n) => {
                let n = (*n as usize).min(h.c.transmit().len());
                h.c.advance_transmit(n);
            }
            Op::Connect => {
                if h.c.poll_connect(h.now).is_some() || h.c.state() == NatsState::Connecting {
                    h.c.handle_connected(h.now);
                }
            }
            Op::Refuse => {
                let _ = h.c.poll_connect(h.now);
                h.c.handle_disconnected(h.now);
            }
            Op::Disconnect => h.c.handle_disconnected(h.now),
            Op::Close => h.c.close(),
        }
        // A host closes what the client asks it to close (most of the time).
        if h.c.wants_close() && !matches!(op, Op::Close) {
            h.c.handle_disconnected(h.now);
        }
        h.check();
        while h.c.poll_event().is_some() {}
    }
}

fuzz_target!(|input: Input| {
    fuzz_parser(&input);
    fuzz_client(&input);
});
