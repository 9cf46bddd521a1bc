//! The NATS wire format: an incremental parser of server operations and encoders of client
//! operations.
//!
//! [`Parser::parse`] is fed whatever bytes the socket produced; an operation may be split at
//! any byte and several may arrive in one chunk. Each call consumes some bytes and returns at
//! most one operation. Payloads (and the subject of a `MSG`) borrow from the input chunk when
//! the whole operation lies inside it, and from the parser's own buffers otherwise; those
//! buffers are reused, so the steady state allocates nothing per message.
//!
//! Bounds: a control line longer than [`MAX_CONTROL_LINE`] ([`MAX_INFO_LINE`] for `INFO`) and
//! a payload longer than the limit set with [`Parser::set_max_payload`] (never more than
//! [`ABS_MAX_PAYLOAD`]) are protocol errors. After an error the parser refuses all input
//! until [`Parser::reset`]: the stream cannot be re-synchronised.

use std::fmt;

/// Longest control line accepted from the server (`MSG`, `-ERR`, ...), CRLF included.
pub const MAX_CONTROL_LINE: usize = 4096;
/// Longest `INFO` line accepted: `connect_urls` of a large cluster make it long.
pub const MAX_INFO_LINE: usize = 64 * 1024;
/// The NATS server's default `max_payload`, used until a server says otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// No payload above this is ever accepted or sent, whatever a server announces.
pub const ABS_MAX_PAYLOAD: usize = 8 << 20;
/// Longest subject (or reply subject, or queue group) the client sends.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Parser buffers above this capacity are released after use (a rare huge message does not
/// pin its memory).
const KEEP_CAPACITY: usize = 1 << 20;

/// Why the server's byte stream is not valid NATS. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// A control line that does not start with a known operation.
    UnknownOp,
    /// A control line over its cap (bytes seen so far, cap).
    LineTooLong {
        /// Bytes of the line seen so far.
        len: usize,
        /// The cap for this kind of line.
        max: usize,
    },
    /// A control line ended with LF without the CR before it.
    BadLineEnding,
    /// Wrong number of fields, or a field that is not what the operation needs.
    BadArgs(&'static str),
    /// A size field that is not a decimal number.
    BadSize,
    /// A declared payload larger than allowed.
    PayloadTooLarge {
        /// The declared size.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The payload was not followed by CRLF (it is longer than declared).
    BadPayloadTerminator,
    /// `INFO` or `-ERR` text that is not UTF-8.
    NotUtf8,
    /// Input after an earlier error (the parser needs [`Parser::reset`]).
    Failed,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::UnknownOp => f.write_str("unknown protocol operation"),
            ProtoError::LineTooLong { len, max } => {
                write!(f, "control line of {len}+ bytes, cap {max}")
            }
            ProtoError::BadLineEnding => f.write_str("control line ends with LF without CR"),
            ProtoError::BadArgs(what) => write!(f, "malformed arguments: {what}"),
            ProtoError::BadSize => f.write_str("size is not a decimal number"),
            ProtoError::PayloadTooLarge { len, max } => {
                write!(f, "payload of {len} bytes over the limit of {max}")
            }
            ProtoError::BadPayloadTerminator => f.write_str("payload not followed by CRLF"),
            ProtoError::NotUtf8 => f.write_str("INFO or -ERR text is not UTF-8"),
            ProtoError::Failed => f.write_str("stream already failed"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// A message delivery as it appears on the wire (`MSG` or `HMSG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMsg<'a> {
    /// The subject it was published to (bytes: a publisher may use any non-space byte).
    pub subject: &'a [u8],
    /// The subscription it matched.
    pub sid: u64,
    /// Reply subject, if the publisher gave one.
    pub reply: Option<&'a [u8]>,
    /// The payload (for `HMSG`: headers and payload together).
    pub payload: &'a [u8],
}

/// One operation from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerOp<'a> {
    /// `INFO {json}`: the JSON text, trimmed.
    Info(&'a str),
    /// `MSG <subject> <sid> [reply-to] <#bytes>`.
    Msg(RawMsg<'a>),
    /// `HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>`: the client never asks
    /// for headers, so it only has to frame (and skip) these.
    HMsg {
        /// The message; `payload` holds headers and body.
        msg: RawMsg<'a>,
        /// Bytes of `payload` that are headers.
        header_len: usize,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK` (verbose mode only; the client turns it off).
    Ok,
    /// `-ERR '<message>'`: the message, single quotes removed.
    Err(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MsgHeader {
    subject: (usize, usize),
    reply: Option<(usize, usize)>,
    sid: u64,
    size: usize,
    /// `Some` for HMSG.
    header_len: Option<usize>,
}

/// A parsed control line, as ranges into the line's text.
enum LineOp {
    Info((usize, usize)),
    Err((usize, usize)),
    Ping,
    Pong,
    Ok,
    Msg(MsgHeader),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Line,
    Payload(MsgHeader),
}

/// Incremental parser of server-to-client operations: fed byte chunks as they come, an
/// operation may be split anywhere. Payloads borrow the input when whole in it, the parser's
/// reused buffers otherwise. Control lines are capped ([`MAX_CONTROL_LINE`], [`MAX_INFO_LINE`]
/// for INFO) and payloads by [`Parser::set_max_payload`]; after an error it refuses input until
/// [`Parser::reset`].
pub struct Parser {
    state: State,
    /// A partial control line, or the control line of a `MSG` whose payload is pending.
    line: Vec<u8>,
    /// A partial payload (with its CRLF).
    payload: Vec<u8>,
    /// The buffers hold an operation already handed out: clear them on the next call.
    handed_out: bool,
    max_payload: usize,
    failed: bool,
}

impl fmt::Debug for Parser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parser")
            .field("state", &self.state)
            .field("buffered", &self.buffered())
            .field("max_payload", &self.max_payload)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            state: State::Line,
            line: Vec::new(),
            payload: Vec::new(),
            handed_out: false,
            max_payload: DEFAULT_MAX_PAYLOAD,
            failed: false,
        }
    }
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The `[start, end)` ranges of the whitespace-separated fields of `s`, at most `N` of them;
/// `None` when there are more.
fn fields<const N: usize>(s: &[u8], from: usize) -> Option<([(usize, usize); N], usize)> {
    let mut out = [(0, 0); N];
    let mut n = 0;
    let mut i = from;
    while i < s.len() {
        if s.get(i).copied().is_some_and(is_ws) {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.len() && !s.get(i).copied().is_some_and(is_ws) {
            i += 1;
        }
        let slot = out.get_mut(n)?;
        *slot = (start, i);
        n += 1;
    }
    Some((out, n))
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn slice(s: &[u8], r: (usize, usize)) -> &[u8] {
    s.get(r.0..r.1).unwrap_or_default()
}

/// The cap on a control line that starts with `head` (what has been seen of it).
fn line_cap(head: &[u8]) -> usize {
    let n = head.len().min(4);
    let h = head.get(..n).unwrap_or_default();
    if h.eq_ignore_ascii_case(b"INFO".get(..n).unwrap_or_default()) {
        MAX_INFO_LINE
    } else {
        MAX_CONTROL_LINE
    }
}

/// The first bytes of the line made of `a` then `b` (enough to choose its cap).
fn line_head<'x>(a: &'x [u8], b: &'x [u8], tmp: &'x mut [u8; 4]) -> &'x [u8] {
    if a.len() >= 4 {
        return a;
    }
    let mut n = 0;
    for &c in a.iter().chain(b.iter()).take(4) {
        if let Some(slot) = tmp.get_mut(n) {
            *slot = c;
            n += 1;
        }
    }
    tmp.get(..n).unwrap_or_default()
}

impl Parser {
    /// A parser with the default payload limit ([`DEFAULT_MAX_PAYLOAD`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Limit payloads to `max` bytes (clamped to [`ABS_MAX_PAYLOAD`]).
    pub fn set_max_payload(&mut self, max: usize) {
        self.max_payload = max.min(ABS_MAX_PAYLOAD);
    }

    /// The payload limit in force.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Forget everything (a new connection). Keeps the payload limit and the buffers'
    /// capacity.
    pub fn reset(&mut self) {
        self.state = State::Line;
        self.line.clear();
        self.payload.clear();
        self.handed_out = false;
        self.failed = false;
    }

    /// Bytes held in the parser's buffers (partial line or payload).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.payload.len()
    }

    /// Capacity of the parser's buffers (tests: memory stays bounded).
    pub fn capacity(&self) -> usize {
        self.line.capacity() + self.payload.capacity()
    }

    /// Consume a prefix of `input`: returns how many bytes were consumed (at least one when
    /// `input` is not empty) and the operation they completed, if any. Call again with the
    /// rest of the input until it is used up.
    pub fn parse<'a>(
        &'a mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<ServerOp<'a>>), ProtoError> {
        if self.failed {
            return Err(ProtoError::Failed);
        }
        if self.handed_out {
            self.handed_out = false;
            self.line.clear();
            self.payload.clear();
            if self.line.capacity() > KEEP_CAPACITY {
                self.line.shrink_to(MAX_CONTROL_LINE);
            }
            if self.payload.capacity() > KEEP_CAPACITY {
                self.payload.shrink_to(KEEP_CAPACITY);
            }
        }
        if input.is_empty() {
            return Ok((0, None));
        }
        // Phase 1 decides and validates without keeping a borrow; phase 2 only slices.
        let scanned = match self.state {
            State::Line => self.scan_line(input),
            State::Payload(h) => self.scan_payload(h, input),
        };
        let (n, found) = match scanned {
            Ok(v) => v,
            Err(e) => {
                self.failed = true;
                self.state = State::Line;
                self.line.clear();
                self.payload.clear();
                return Err(e);
            }
        };
        if !matches!(found, Found::Nothing) {
            self.handed_out = true;
        }
        Ok((n, self.materialize(found, input)))
    }

    fn scan_line(&mut self, input: &[u8]) -> Result<(usize, Found), ProtoError> {
        let nl = input.iter().position(|&b| b == b'\n');
        let mut tmp = [0u8; 4];
        let cap = line_cap(line_head(&self.line, input, &mut tmp));
        let seen = self.line.len() + nl.map_or(input.len(), |i| i + 1);
        if seen > cap {
            return Err(ProtoError::LineTooLong {
                len: seen,
                max: cap,
            });
        }
        let Some(i) = nl else {
            self.line.extend_from_slice(input);
            return Ok((input.len(), Found::Nothing));
        };
        let consumed = i + 1;
        let rest = input.get(consumed..).unwrap_or_default();
        let (text_src, op) = if self.line.is_empty() {
            // Zero-copy: the whole line is in `input`.
            if i == 0 || input.get(i - 1) != Some(&b'\r') {
                return Err(ProtoError::BadLineEnding);
            }
            let text = input.get(..i - 1).unwrap_or_default();
            (Text::Input(i - 1), parse_control(text)?)
        } else {
            self.line
                .extend_from_slice(input.get(..i).unwrap_or_default());
            if self.line.pop() != Some(b'\r') {
                return Err(ProtoError::BadLineEnding);
            }
            (Text::Line, parse_control(&self.line)?)
        };
        match op {
            LineOp::Msg(h) => {
                if h.size > self.max_payload {
                    return Err(ProtoError::PayloadTooLarge {
                        len: h.size,
                        max: self.max_payload,
                    });
                }
                if rest.len() >= h.size + 2 {
                    check_terminator(rest, h.size)?;
                    return Ok((
                        consumed + h.size + 2,
                        Found::Msg(h, text_src, Body::Input(consumed)),
                    ));
                }
                // The payload continues in later chunks: keep the line, start the payload.
                if let Text::Input(end) = text_src {
                    self.line
                        .extend_from_slice(input.get(..end).unwrap_or_default());
                }
                self.payload.clear();
                self.payload.reserve(h.size + 2);
                self.payload.extend_from_slice(rest);
                self.state = State::Payload(h);
                Ok((input.len(), Found::Nothing))
            }
            LineOp::Info(r) | LineOp::Err(r) => {
                let text = match text_src {
                    Text::Input(end) => input.get(..end).unwrap_or_default(),
                    Text::Line => &self.line,
                };
                if std::str::from_utf8(slice(text, r)).is_err() {
                    return Err(ProtoError::NotUtf8);
                }
                Ok((consumed, Found::Simple(op, text_src)))
            }
            _ => Ok((consumed, Found::Simple(op, text_src))),
        }
    }

    fn scan_payload(&mut self, h: MsgHeader, input: &[u8]) -> Result<(usize, Found), ProtoError> {
        let total = h.size + 2;
        let need = total.saturating_sub(self.payload.len());
        if need > input.len() {
            self.payload.extend_from_slice(input);
            return Ok((input.len(), Found::Nothing));
        }
        self.state = State::Line;
        if self.payload.is_empty() {
            // Zero-copy payload (the line was buffered, the payload came whole).
            check_terminator(input, h.size)?;
            return Ok((total, Found::Msg(h, Text::Line, Body::Input(0))));
        }
        self.payload
            .extend_from_slice(input.get(..need).unwrap_or_default());
        check_terminator(&self.payload, h.size)?;
        Ok((need, Found::Msg(h, Text::Line, Body::Payload)))
    }

    /// Slice out what `scan_*` found and validated (cannot fail).
    fn materialize<'a>(&'a self, found: Found, input: &'a [u8]) -> Option<ServerOp<'a>> {
        let text_of = |t: Text| -> &'a [u8] {
            match t {
                Text::Input(end) => input.get(..end).unwrap_or_default(),
                Text::Line => &self.line,
            }
        };
        let utf8 = |b: &'a [u8]| std::str::from_utf8(b).unwrap_or_default();
        Some(match found {
            Found::Nothing => return None,
            Found::Simple(op, t) => {
                let text = text_of(t);
                match op {
                    LineOp::Info(r) => ServerOp::Info(utf8(slice(text, r))),
                    LineOp::Err(r) => ServerOp::Err(utf8(slice(text, r))),
                    LineOp::Ping => ServerOp::Ping,
                    LineOp::Pong => ServerOp::Pong,
                    LineOp::Ok => ServerOp::Ok,
                    LineOp::Msg(_) => return None,
                }
            }
            Found::Msg(h, t, body) => {
                let text = text_of(t);
                let body = match body {
                    Body::Input(at) => input.get(at..).unwrap_or_default(),
                    Body::Payload => &self.payload,
                };
                let msg = RawMsg {
                    subject: slice(text, h.subject),
                    sid: h.sid,
                    reply: h.reply.map(|r| slice(text, r)),
                    payload: body.get(..h.size).unwrap_or_default(),
                };
                match h.header_len {
                    None => ServerOp::Msg(msg),
                    Some(header_len) => ServerOp::HMsg { msg, header_len },
                }
            }
        })
    }
}

/// Where a control line's text is: the first `end` bytes of the input, or the line buffer.
#[derive(Clone, Copy)]
enum Text {
    Input(usize),
    Line,
}

/// Where a payload starts: at an offset of the input, or in the payload buffer.
#[derive(Clone, Copy)]
enum Body {
    Input(usize),
    Payload,
}

/// What one step of the parser completed, without borrowing anything.
enum Found {
    Nothing,
    Simple(LineOp, Text),
    Msg(MsgHeader, Text, Body),
}

/// `body` starts with `size` payload bytes: the two after them must be CRLF.
fn check_terminator(body: &[u8], size: usize) -> Result<(), ProtoError> {
    if body.get(size..size + 2) == Some(b"\r\n") {
        Ok(())
    } else {
        Err(ProtoError::BadPayloadTerminator)
    }
}

/// Trim spaces and tabs from both ends of `r` within `s`.
fn trim(s: &[u8], mut r: (usize, usize)) -> (usize, usize) {
    while r.0 < r.1 && s.get(r.0).copied().is_some_and(is_ws) {
        r.0 += 1;
    }
    while r.1 > r.0 && s.get(r.1 - 1).copied().is_some_and(is_ws) {
        r.1 -= 1;
    }
    r
}

/// Parse one control line (without its CRLF).
fn parse_control(text: &[u8]) -> Result<LineOp, ProtoError> {
    let start = text.iter().position(|&b| !is_ws(b)).unwrap_or(text.len());
    let end = text
        .iter()
        .skip(start)
        .position(|&b| is_ws(b))
        .map_or(text.len(), |p| start + p);
    let name = slice(text, (start, end));
    let args = trim(text, (end, text.len()));
    let no_args = args.0 == args.1;
    let is = |op: &[u8]| name.eq_ignore_ascii_case(op);
    if is(b"MSG") || is(b"HMSG") {
        return parse_msg_args(text, end, is(b"HMSG"));
    }
    if is(b"INFO") {
        return Ok(LineOp::Info(args));
    }
    if is(b"-ERR") {
        let mut r = args;
        let s = slice(text, r);
        if s.len() >= 2 && s.first() == Some(&b'\'') && s.last() == Some(&b'\'') {
            r = (r.0 + 1, r.1 - 1);
        }
        return Ok(LineOp::Err(r));
    }
    let simple = if is(b"PING") {
        LineOp::Ping
    } else if is(b"PONG") {
        LineOp::Pong
    } else if is(b"+OK") {
        LineOp::Ok
    } else {
        return Err(ProtoError::UnknownOp);
    };
    if !no_args {
        return Err(ProtoError::BadArgs("PING, PONG and +OK take no arguments"));
    }
    Ok(simple)
}

fn parse_msg_args(text: &[u8], from: usize, hmsg: bool) -> Result<LineOp, ProtoError> {
    let (f, n) = fields::<5>(text, from).ok_or(ProtoError::BadArgs("too many fields"))?;
    let sizes = if hmsg { 2 } else { 1 };
    let (subject, sid, reply, rest) = match (n, f) {
        (n, [s, i, a, b, c]) if n == 2 + sizes => (s, i, None, [a, b, c]),
        (n, [s, i, r, a, b]) if n == 3 + sizes => (s, i, Some(r), [a, b, (0, 0)]),
        _ => return Err(ProtoError::BadArgs("wrong number of fields")),
    };
    let sid = parse_decimal(slice(text, sid)).ok_or(ProtoError::BadArgs("sid is not a number"))?;
    let num = |r| {
        parse_decimal(slice(text, r))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or(ProtoError::BadSize)
    };
    let (size, header_len) = if hmsg {
        let hdr = num(rest[0])?;
        let total = num(rest[1])?;
        if hdr > total {
            return Err(ProtoError::BadArgs("header size larger than total size"));
        }
        (total, Some(hdr))
    } else {
        (num(rest[0])?, None)
    };
    Ok(LineOp::Msg(MsgHeader {
        subject,
        reply,
        sid,
        size,
        header_len,
    }))
}

// ---------------------------------------------------------------- client operations

/// Why a subject (or queue group) is refused before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubjectError {
    /// Empty.
    Empty,
    /// Longer than [`MAX_SUBJECT_LEN`].
    TooLong,
    /// A byte outside printable ASCII (whitespace, control, or non-ASCII).
    BadByte,
    /// An empty token (leading, trailing or doubled `.`).
    EmptyToken,
    /// A wildcard where none is allowed (publishing, queue groups), or `>` not last, or a
    /// wildcard inside a token (`foo*`).
    BadWildcard,
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubjectError::Empty => "subject is empty",
            SubjectError::TooLong => "subject is too long",
            SubjectError::BadByte => "subject has a byte outside printable ASCII",
            SubjectError::EmptyToken => "subject has an empty token",
            SubjectError::BadWildcard => "wildcard not allowed here",
        })
    }
}

impl std::error::Error for SubjectError {}

/// Check a subject: 1..=[`MAX_SUBJECT_LEN`] bytes of printable ASCII (no whitespace), no empty
/// token; with `wildcards`, `*` may be a whole token and `>` the whole last token, without,
/// neither may be a token.
pub fn validate_subject(s: &str, wildcards: bool) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong);
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SubjectError::BadByte);
    }
    let mut tokens = s.split('.').peekable();
    while let Some(t) = tokens.next() {
        if t.is_empty() {
            return Err(SubjectError::EmptyToken);
        }
        let last = tokens.peek().is_none();
        let wild = t == "*" || (t == ">" && last);
        if wild && !wildcards {
            return Err(SubjectError::BadWildcard);
        }
        if !wild && (t.contains('*') || t.contains('>')) {
            return Err(SubjectError::BadWildcard);
        }
    }
    Ok(())
}

/// Check a queue group name: like a subject without wildcards.
pub fn validate_queue(s: &str) -> Result<(), SubjectError> {
    validate_subject(s, false)
}

fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(i..).unwrap_or_default());
}

/// Bytes of the `PUB` control line (CRLF included) for these fields.
pub fn pub_header_len(subject: &str, reply: Option<&str>, len: usize) -> usize {
    let digits = len.checked_ilog10().map_or(1, |d| d as usize + 1);
    4 + subject.len() + reply.map_or(0, |r| r.len() + 1) + 1 + digits + 2
}

/// Append the `PUB` control line (without the payload). Callers validate the subjects.
pub fn encode_pub_header(out: &mut Vec<u8>, subject: &str, reply: Option<&str>, len: usize) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    if let Some(r) = reply {
        out.push(b' ');
        out.extend_from_slice(r.as_bytes());
    }
    out.push(b' ');
    push_decimal(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// Append `PUB <subject> [reply] <#bytes>\r\n<payload>\r\n` after validating the subjects.
pub fn encode_pub(
    out: &mut Vec<u8>,
    subject: &str,
    reply: Option<&str>,
    payload: &[u8],
) -> Result<(), SubjectError> {
    validate_subject(subject, false)?;
    if let Some(r) = reply {
        validate_subject(r, false)?;
    }
    encode_pub_header(out, subject, reply, payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Append `SUB <subject> [queue] <sid>\r\n` after validating the subject and queue.
pub fn encode_sub(
    out: &mut Vec<u8>,
    subject: &str,
    queue: Option<&str>,
    sid: u64,
) -> Result<(), SubjectError> {
    validate_subject(subject, true)?;
    if let Some(q) = queue {
        validate_queue(q)?;
    }
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject.as_bytes());
    if let Some(q) = queue {
        out.push(b' ');
        out.extend_from_slice(q.as_bytes());
    }
    out.push(b' ');
    push_decimal(out, sid);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Append `UNSUB <sid> [max]\r\n`.
pub fn encode_unsub(out: &mut Vec<u8>, sid: u64, max: Option<u64>) {
    out.extend_from_slice(b"UNSUB ");
    push_decimal(out, sid);
    if let Some(m) = max {
        out.push(b' ');
        push_decimal(out, m);
    }
    out.extend_from_slice(b"\r\n");
}

/// `PING\r\n`.
pub const PING: &[u8] = b"PING\r\n";
/// `PONG\r\n`.
pub const PONG: &[u8] = b"PONG\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of an op, to compare across chunkings.
    #[derive(Debug, Clone, PartialEq, Eq)]
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
                m.reply.map(|r| r.to_vec()),
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

    fn feed(p: &mut Parser, mut input: &[u8], out: &mut Vec<Owned>) -> Result<(), ProtoError> {
        while !input.is_empty() {
            let (n, op) = p.parse(input)?;
            assert!(n > 0 || op.is_some(), "no progress");
            assert!(n <= input.len());
            if let Some(op) = op {
                out.push(own(op));
            }
            input = &input[n..];
        }
        Ok(())
    }

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<Owned>, ProtoError> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            feed(&mut p, c, &mut out)?;
        }
        Ok(out)
    }

    const STREAM: &[u8] = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576} \r\n\
        PING\r\n\
        msg foo.bar 7 5\r\nhello\r\n\
        MSG a.b   9\tINBOX.1 0\r\n\r\n\
        +OK\r\n\
        -ERR 'Permissions Violation for Publish to foo'\r\n\
        HMSG h 3 12 14\r\nNATS/1.0\r\n\r\nhi\r\n\
        MSG bin 1 4\r\n\r\n\r\n\r\n\
        pong\r\n";

    fn expected() -> Vec<Owned> {
        vec![
            Owned::Info("{\"server_id\":\"x\",\"max_payload\":1048576}".into()),
            Owned::Ping,
            Owned::Msg(b"foo.bar".to_vec(), 7, None, b"hello".to_vec()),
            Owned::Msg(b"a.b".to_vec(), 9, Some(b"INBOX.1".to_vec()), vec![]),
            Owned::Ok,
            Owned::Err("Permissions Violation for Publish to foo".into()),
            Owned::HMsg(b"h".to_vec(), 3, 12, b"NATS/1.0\r\n\r\nhi".to_vec()),
            Owned::Msg(b"bin".to_vec(), 1, None, b"\r\n\r\n".to_vec()),
            Owned::Pong,
        ]
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        assert_eq!(parse_all(&[STREAM]).unwrap(), expected());
    }

    #[test]
    fn every_split_point() {
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(parse_all(&[a, b]).unwrap(), expected(), "split at {i}");
        }
    }

    #[test]
    fn every_pair_of_split_points() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let chunks = [&STREAM[..i], &STREAM[i..j], &STREAM[j..]];
                assert_eq!(parse_all(&chunks).unwrap(), expected(), "split {i} {j}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_all(&chunks).unwrap(), expected());
    }

    #[test]
    fn payload_borrows_the_input_when_whole() {
        let input = b"MSG s 1 3\r\nabc\r\n";
        let mut p = Parser::new();
        let (n, op) = p.parse(input).unwrap();
        assert_eq!(n, input.len());
        let Some(ServerOp::Msg(m)) = op else { panic!() };
        let r = input.as_ptr_range();
        assert!(r.contains(&m.payload.as_ptr()), "payload copied");
        assert!(r.contains(&m.subject.as_ptr()), "subject copied");
        assert_eq!(p.capacity(), 0, "nothing buffered");
    }

    #[test]
    fn buffers_are_reused() {
        let mut p = Parser::new();
        let msg = b"MSG s 1 10\r\n0123456789\r\n";
        let mut out = Vec::new();
        for c in msg.chunks(7) {
            feed(&mut p, c, &mut out).unwrap();
        }
        let cap = p.capacity();
        for _ in 0..100 {
            for c in msg.chunks(7) {
                feed(&mut p, c, &mut out).unwrap();
            }
        }
        assert_eq!(p.capacity(), cap);
        assert_eq!(out.len(), 101);
    }

    fn err_of(input: &[u8]) -> ProtoError {
        parse_all(&[input]).unwrap_err()
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(err_of(b"FOO bar\r\n"), ProtoError::UnknownOp);
        assert_eq!(err_of(b"\r\n"), ProtoError::UnknownOp);
        assert_eq!(err_of(b"PING\n"), ProtoError::BadLineEnding);
        assert!(matches!(err_of(b"PING x\r\n"), ProtoError::BadArgs(_)));
        assert!(matches!(err_of(b"MSG a 1\r\n"), ProtoError::BadArgs(_)));
        assert!(matches!(
            err_of(b"MSG a b 1 2 3\r\n"),
            ProtoError::BadArgs(_)
        ));
        assert!(matches!(err_of(b"MSG a x 1\r\n"), ProtoError::BadArgs(_)));
        assert_eq!(err_of(b"MSG a 1 -1\r\n"), ProtoError::BadSize);
        assert_eq!(err_of(b"MSG a 1 1x\r\n"), ProtoError::BadSize);
        assert_eq!(
            err_of(b"MSG a 1 99999999999999999999999\r\n"),
            ProtoError::BadSize
        );
        assert!(matches!(
            err_of(b"HMSG a 1 5 4\r\n"),
            ProtoError::BadArgs(_)
        ));
        // Longer than declared: the byte after the payload is not CR.
        assert_eq!(
            err_of(b"MSG a 1 2\r\nabc\r\n"),
            ProtoError::BadPayloadTerminator
        );
        // Missing CRLF after the payload.
        assert_eq!(
            err_of(b"MSG a 1 2\r\nabPING\r\n"),
            ProtoError::BadPayloadTerminator
        );
        assert_eq!(err_of(b"-ERR '\xff'\r\n"), ProtoError::NotUtf8);
        assert_eq!(err_of(b"INFO \xfe\r\n"), ProtoError::NotUtf8);
    }

    #[test]
    fn payload_limit() {
        let mut p = Parser::new();
        p.set_max_payload(10);
        let r = p.parse(b"MSG a 1 11\r\n").map(|_| ());
        assert_eq!(r, Err(ProtoError::PayloadTooLarge { len: 11, max: 10 }));
        assert_eq!(p.parse(b"PING\r\n").map(|_| ()), Err(ProtoError::Failed));
        p.reset();
        assert!(matches!(p.parse(b"MSG a 1 10\r\n"), Ok((_, None))));
        p.set_max_payload(usize::MAX);
        assert_eq!(p.max_payload(), ABS_MAX_PAYLOAD);
    }

    #[test]
    fn huge_lines_are_refused_without_buffering_them() {
        let long = vec![b'x'; 10 * MAX_CONTROL_LINE];
        let mut p = Parser::new();
        let mut out = Vec::new();
        let r = feed(&mut p, b"MSG ", &mut out).and_then(|_| feed(&mut p, &long, &mut out));
        assert!(matches!(r, Err(ProtoError::LineTooLong { .. })));
        assert!(p.buffered() <= MAX_CONTROL_LINE);
        // Byte by byte: the cap is checked as the line grows.
        let mut p = Parser::new();
        let mut r = Ok(());
        for c in long.chunks(1) {
            r = feed(&mut p, c, &mut out);
            if r.is_err() {
                break;
            }
        }
        assert!(matches!(r, Err(ProtoError::LineTooLong { .. })));
        assert!(p.capacity() <= 2 * MAX_CONTROL_LINE);
        // INFO may be longer, but not unbounded.
        let mut info = b"INFO {\"a\":\"".to_vec();
        info.extend(std::iter::repeat_n(b'y', 20_000));
        info.extend_from_slice(b"\"}\r\n");
        assert_eq!(parse_all(&[&info]).unwrap().len(), 1);
        let mut info = b"info ".to_vec();
        info.extend(std::iter::repeat_n(b'y', MAX_INFO_LINE));
        assert!(matches!(
            parse_all(&[&info[..3], &info[3..]]),
            Err(ProtoError::LineTooLong { .. })
        ));
    }

    #[test]
    fn case_insensitive_ops() {
        let ops = parse_all(&[b"Ping\r\npOnG\r\n+ok\r\n-err x\r\nInfo {}\r\n"]).unwrap();
        assert_eq!(
            ops,
            vec![
                Owned::Ping,
                Owned::Pong,
                Owned::Ok,
                Owned::Err("x".into()),
                Owned::Info("{}".into())
            ]
        );
    }

    #[test]
    fn subjects() {
        for ok in ["a", "foo.bar", "FOO.BAR.baz", "a-b_c:d", "x.y.1"] {
            assert_eq!(validate_subject(ok, false), Ok(()), "{ok}");
        }
        for ok in ["*", ">", "a.*.c", "a.>", "*.>"] {
            assert_eq!(validate_subject(ok, true), Ok(()), "{ok}");
            assert_eq!(validate_subject(ok, false), Err(SubjectError::BadWildcard));
        }
        assert_eq!(validate_subject("", true), Err(SubjectError::Empty));
        assert_eq!(validate_subject("a b", true), Err(SubjectError::BadByte));
        assert_eq!(validate_subject("a\tb", true), Err(SubjectError::BadByte));
        assert_eq!(
            validate_subject("a\r\nPUB", true),
            Err(SubjectError::BadByte)
        );
        assert_eq!(validate_subject("é", true), Err(SubjectError::BadByte));
        assert_eq!(
            validate_subject("a..b", true),
            Err(SubjectError::EmptyToken)
        );
        assert_eq!(validate_subject(".a", true), Err(SubjectError::EmptyToken));
        assert_eq!(validate_subject("a.", true), Err(SubjectError::EmptyToken));
        assert_eq!(
            validate_subject("a.>.b", true),
            Err(SubjectError::BadWildcard)
        );
        assert_eq!(validate_subject("a*", true), Err(SubjectError::BadWildcard));
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        assert_eq!(validate_subject(&long, true), Err(SubjectError::TooLong));
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        encode_pub(&mut out, "foo", None, b"hello").unwrap();
        encode_pub(&mut out, "foo", Some("INBOX.1"), b"").unwrap();
        encode_sub(&mut out, "foo.*", None, 1).unwrap();
        encode_sub(&mut out, "bar", Some("q"), 18446744073709551615).unwrap();
        encode_unsub(&mut out, 1, None);
        encode_unsub(&mut out, 2, Some(5));
        out.extend_from_slice(PING);
        out.extend_from_slice(PONG);
        assert_eq!(
            out,
            b"PUB foo 5\r\nhello\r\nPUB foo INBOX.1 0\r\n\r\nSUB foo.* 1\r\n\
              SUB bar q 18446744073709551615\r\nUNSUB 1\r\nUNSUB 2 5\r\nPING\r\nPONG\r\n"
        );
        assert!(encode_pub(&mut out, "a b", None, b"").is_err());
        assert!(encode_pub(&mut out, "a", Some("x y"), b"").is_err());
        assert!(encode_sub(&mut out, "a", Some("q.*"), 1).is_err());
        assert_eq!(pub_header_len("foo", None, 5), b"PUB foo 5\r\n".len());
        assert_eq!(
            pub_header_len("foo", Some("r"), 0),
            b"PUB foo r 0\r\n".len()
        );
        assert_eq!(
            pub_header_len("foo", None, 65536),
            b"PUB foo 65536\r\n".len()
        );
    }
}
