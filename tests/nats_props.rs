//! Property tests over the NATS entry points that `fuzz/fuzz_targets/nats.rs` drives, small
//! and fast enough for CI: the parser on arbitrary bytes in arbitrary chunkings, the parser
//! on well-formed operation streams split anywhere, and the client state machine under
//! arbitrary input and calls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mcrelay::nats::{
    ABS_MAX_PAYLOAD, MAX_INFO_LINE, MAX_SERVERS, MAX_SUBJECT_LEN, NatsClient, NatsConfig,
    NatsError, NatsState, Parser, ProtoError, ServerOp,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Owned {
    Info(String),
    Msg(Vec<u8>, u64, Option<Vec<u8>>, Vec<u8>),
    HMsg(Vec<u8>, u64, usize, Vec<u8>),
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
        ServerOp::HMsg { msg, header_len } => Owned::HMsg(
            msg.subject.to_vec(),
            msg.sid,
            header_len,
            msg.payload.to_vec(),
        ),
        ServerOp::Ping => Owned::Ping,
        ServerOp::Pong => Owned::Pong,
        ServerOp::Ok => Owned::Ok,
        ServerOp::Err(s) => Owned::Err(s.into()),
    }
}

/// Ops until the first error, and that error; checks progress and memory on the way.
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
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    for end in cuts.into_iter().chain(std::iter::once(data.len())) {
        let end = end.clamp(start, data.len());
        let mut chunk = &data[start..end];
        start = end;
        while !chunk.is_empty() {
            match p.parse(chunk) {
                Ok((n, op)) => {
                    assert!(n <= chunk.len());
                    assert!(n > 0 || op.is_some(), "no progress");
                    if let Some(op) = op {
                        ops.push(own(op));
                    }
                    chunk = &chunk[n..];
                }
                Err(e) => return (ops, Some(e)),
            }
            assert!(p.capacity() <= cap_bound);
        }
    }
    (ops, None)
}

/// Bytes that often look like NATS: op names, numbers, CRLFs, spaces, JSON, noise.
fn natsish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"MSG ".to_vec()),
        Just(b"HMSG ".to_vec()),
        Just(b"INFO ".to_vec()),
        Just(b"ping\r\n".to_vec()),
        Just(b"PONG\r\n".to_vec()),
        Just(b"+OK\r\n".to_vec()),
        Just(b"-ERR 'x'\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\t".to_vec()),
        Just(b"{\"a\":[1,{\"b\":\"\\u00e9\"}]}".to_vec()),
        (0u32..40).prop_map(|n| n.to_string().into_bytes()),
        "[a-z.>*]{1,8}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

/// A well-formed server operation and its encoding.
fn server_op() -> impl Strategy<Value = (Owned, Vec<u8>)> {
    let subject = "[a-zA-Z0-9_]{1,6}(\\.[a-zA-Z0-9_>*-]{1,6}){0,3}";
    prop_oneof![
        Just((Owned::Ping, b"PING\r\n".to_vec())),
        Just((Owned::Pong, b"pong\r\n".to_vec())),
        Just((Owned::Ok, b"+OK\r\n".to_vec())),
        "[ -&(-~]{0,40}".prop_map(|m| {
            let e = format!("-ERR '{m}'\r\n");
            (Owned::Err(m), e.into_bytes())
        }),
        "[a-z0-9\"\\\\:,{} \\[\\]]{0,80}".prop_map(|j| {
            let text = format!("{{{j}}}");
            (
                Owned::Info(text.clone()),
                format!("INFO {text} \r\n").into_bytes(),
            )
        }),
        (
            subject,
            any::<u64>(),
            proptest::option::of("[A-Z0-9.]{1,10}"),
            proptest::collection::vec(any::<u8>(), 0..300),
            prop_oneof![Just(" "), Just("\t"), Just("  ")],
        )
            .prop_map(|(s, sid, reply, payload, ws)| {
                let mut b = format!("MSG{ws}{s}{ws}{sid}").into_bytes();
                if let Some(r) = &reply {
                    b.extend_from_slice(format!("{ws}{r}").as_bytes());
                }
                b.extend_from_slice(format!("{ws}{}\r\n", payload.len()).as_bytes());
                b.extend_from_slice(&payload);
                b.extend_from_slice(b"\r\n");
                (
                    Owned::Msg(s.into_bytes(), sid, reply.map(String::into_bytes), payload),
                    b,
                )
            }),
        (
            subject,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(s, sid, hdr, body)| {
                let total = hdr.len() + body.len();
                let mut b = format!("HMSG {s} {sid} {} {total}\r\n", hdr.len()).into_bytes();
                let payload = [hdr.clone(), body].concat();
                b.extend_from_slice(&payload);
                b.extend_from_slice(b"\r\n");
                (
                    Owned::HMsg(s.into_bytes(), u64::from(sid), hdr.len(), payload),
                    b,
                )
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parser_any_bytes_any_chunking(
        data in prop_oneof![natsish(), proptest::collection::vec(any::<u8>(), 0..600)],
        cuts in proptest::collection::vec(0usize..2000, 0..20),
        max_payload in 0usize..5000,
    ) {
        let whole = parse_chunked(&data, &[], max_payload);
        let chunked = parse_chunked(&data, &cuts, max_payload);
        prop_assert_eq!(&whole, &chunked);
        let bytes: Vec<usize> = (1..data.len()).collect();
        prop_assert_eq!(&whole, &parse_chunked(&data, &bytes, max_payload));
    }

    #[test]
    fn parser_well_formed_stream_split_anywhere(
        ops in proptest::collection::vec(server_op(), 0..30),
        cuts in proptest::collection::vec(0usize..20_000, 0..30),
    ) {
        let data: Vec<u8> = ops.iter().flat_map(|(_, b)| b.clone()).collect();
        let want: Vec<Owned> = ops.into_iter().map(|(o, _)| o).collect();
        let (got, err) = parse_chunked(&data, &cuts, 1 << 20);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------- the client

#[derive(Debug, Clone)]
enum Op {
    Raw(Vec<u8>),
    Server(Vec<u8>),
    Advance(u64),
    Timeout,
    Publish(usize, usize),
    Subscribe(usize),
    Unsubscribe(u64),
    Write(usize),
    Connect,
    /// Connect (if due), a valid INFO and the PONG: reach the Connected state.
    Handshake,
    Refuse,
    Disconnect,
    Close,
}

const SUBJECTS: &[&str] = &["a", "a.b", "fed.x", "*", "a.>", "bad subject", ""];

fn server_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        server_op().prop_map(|(_, b)| b),
        (
            any::<u16>(),
            any::<bool>(),
            proptest::collection::vec((any::<u8>(), 1u16..), 0..5)
        )
            .prop_map(|(mp, ldm, urls)| {
                let urls: Vec<String> = urls
                    .iter()
                    .map(|(h, p)| format!("\"127.0.0.{h}:{p}\""))
                    .collect();
                format!(
                    "INFO {{\"max_payload\":{mp},\"ldm\":{ldm},\"connect_urls\":[{}]}}\r\n",
                    urls.join(",")
                )
                .into_bytes()
            }),
        (0u64..6, 0usize..2000).prop_map(|(sid, len)| {
            let mut b = format!("MSG a.b {sid} {len}\r\n").into_bytes();
            b.extend(std::iter::repeat_n(b'm', len));
            b.extend_from_slice(b"\r\n");
            b
        }),
        Just(b"-ERR 'Authorization Violation'\r\n".to_vec()),
        Just(b"-ERR 'Permissions Violation for Publish to a'\r\n".to_vec()),
        Just(b"INFO {\"tls_required\":true}\r\n".to_vec()),
    ]
}

fn client_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        natsish().prop_map(Op::Raw),
        server_bytes().prop_map(Op::Server),
        server_bytes().prop_map(Op::Server),
        (0u64..3000).prop_map(Op::Advance),
        Just(Op::Timeout),
        (0..SUBJECTS.len(), 0usize..3000).prop_map(|(s, l)| Op::Publish(s, l)),
        (0..SUBJECTS.len()).prop_map(Op::Subscribe),
        (0u64..6).prop_map(Op::Unsubscribe),
        (0usize..5000).prop_map(Op::Write),
        Just(Op::Connect),
        Just(Op::Handshake),
        Just(Op::Handshake),
        Just(Op::Refuse),
        Just(Op::Disconnect),
        Just(Op::Close),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_stays_within_its_bounds(
        ops in proptest::collection::vec(client_op(), 0..80),
        max_pending in 0usize..20_000,
        seed in any::<u64>(),
    ) {
        let t0 = Instant::now();
        let servers: Vec<SocketAddr> =
            (1..=3u16).map(|p| SocketAddr::from(([127, 0, 0, 1], 4000 + p))).collect();
        let cfg = NatsConfig {
            servers,
            max_pending_bytes: max_pending,
            max_transmit_bytes: 4096,
            ping_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(700),
            reconnect_base: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(900),
            lame_duck_jitter: Duration::from_millis(300),
            ..NatsConfig::default()
        };
        let mut c = NatsClient::new(cfg, t0, seed).unwrap();
        let mut now = t0;
        let mut connected = 0u32;
        for op in ops {
            let subs: Vec<u64> = c.subscriptions().map(|(s, _)| s).collect();
            let input = |c: &mut NatsClient, now: Instant, b: &[u8]| {
                c.handle_input(now, b, &mut |m| {
                    assert!(subs.contains(&m.sid));
                    assert!(m.payload.len() <= ABS_MAX_PAYLOAD);
                });
            };
            match op {
                Op::Raw(b) | Op::Server(b) => input(&mut c, now, &b),
                Op::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    c.handle_timeout(now);
                }
                Op::Timeout => {
                    if let Some(t) = c.poll_timeout() {
                        now = now.max(t);
                    }
                    c.handle_timeout(now);
                }
                Op::Publish(s, len) => match c.publish(SUBJECTS[s], &vec![b'p'; len]) {
                    Ok(()) | Err(NatsError::InvalidSubject(_)) => {}
                    Err(NatsError::PayloadTooLarge { len, max }) => prop_assert!(len > max),
                    Err(NatsError::QueueFull { max, .. }) => prop_assert_eq!(max, 0),
                    Err(NatsError::Closed) => prop_assert_eq!(c.state(), NatsState::Closed),
                    Err(e) => prop_assert!(false, "unexpected {}", e),
                },
                Op::Subscribe(s) => {
                    let _ = c.subscribe(SUBJECTS[s]);
                }
                Op::Unsubscribe(sid) => c.unsubscribe(sid),
                Op::Write(n) => {
                    let n = n.min(c.transmit().len());
                    c.advance_transmit(n);
                }
                Op::Connect => {
                    if c.poll_connect(now).is_some() || c.state() == NatsState::Connecting {
                        c.handle_connected(now);
                    }
                }
                Op::Handshake => {
                    if c.state() == NatsState::Waiting {
                        now = now.max(c.poll_timeout().unwrap_or(now));
                    }
                    if c.poll_connect(now).is_some() || c.state() == NatsState::Connecting {
                        c.handle_connected(now);
                    }
                    input(&mut c, now, b"INFO {\"max_payload\":4000} \r\n");
                    input(&mut c, now, b"PONG\r\n");
                    if c.state() == NatsState::Connected {
                        connected += 1;
                    }
                }
                Op::Refuse => {
                    let _ = c.poll_connect(now);
                    c.handle_disconnected(now);
                }
                Op::Disconnect => c.handle_disconnected(now),
                Op::Close => c.close(),
            }
            if c.wants_close() {
                c.handle_disconnected(now);
            }
            prop_assert!(c.transmit().len() <= c.transmit_limit());
            let one = ABS_MAX_PAYLOAD + 2 * MAX_SUBJECT_LEN + 32;
            prop_assert!(c.pending_bytes() <= max_pending.max(one));
            prop_assert!(c.pending_bytes() <= max_pending || c.pending_messages() == 1);
            prop_assert!(c.servers().count() <= MAX_SERVERS);
            prop_assert_eq!(c.wants_close(), c.state() == NatsState::Closing);
            let timed = !matches!(c.state(), NatsState::Closing | NatsState::Closed);
            prop_assert_eq!(c.poll_timeout().is_some(), timed);
            while c.poll_event().is_some() {}
        }
        REACHED.fetch_add(u64::from(connected > 0), std::sync::atomic::Ordering::Relaxed);
    }
}

static REACHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn client_property_reaches_the_connected_state() {
    // Runs after (or beside) the property; only checks that it is not vacuous.
    client_stays_within_its_bounds();
    let n = REACHED.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n >= 50, "only {n} cases reached Connected");
}
