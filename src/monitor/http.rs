//! A small HTTP/1.1 request-head parser and response writer, with no sockets and no clock.
//!
//! The monitor takes no request bodies, so a request is its head only: the request line and
//! the header fields, up to the first empty line. [`Parser`] is fed arbitrary chunks of a
//! connection's byte stream ([`Parser::push`]) and yields the requests in it, in order
//! ([`Parser::next_request`]); pipelined requests are answered one after the other.
//!
//! What is accepted (RFC 9112), and what is refused with which status:
//!
//! | Input | Result |
//! |---|---|
//! | lines ending in CRLF or a bare LF; empty lines before a request line | accepted (ignored) |
//! | a CR anywhere else, a control character, `obs-fold`, a space before `:`, a field name that is not a token, a request line that is not `method SP target SP version` | 400 |
//! | a request target other than origin form (`/path?query`), absolute form (`http://host/path`) or `*` | 400 |
//! | a request line longer than `max_target + 32` bytes, or a target longer than `max_target` | 414 |
//! | a head longer than `max_head` bytes, or more than `max_headers` field lines | 431 |
//! | `HTTP/1.0`, `HTTP/1.1` (and `HTTP/1.2`..`HTTP/1.9`, treated as 1.1) | accepted |
//! | any other well-formed version (`HTTP/0.9`, `HTTP/2.0`) | 505 |
//! | an HTTP/1.1 request without exactly one `Host`, or two `Host` fields in any version | 400 |
//! | `Content-Length` that is not digits, or two different ones, or with `Transfer-Encoding` | 400 |
//! | `Content-Length` above 0, or `Transfer-Encoding` (a body) | 413 |
//! | two `Authorization` fields | 400 |
//!
//! After an error the byte stream cannot be trusted: the parser yields nothing more, and the
//! caller answers the error with `Connection: close`.

use std::fmt;
use std::io::Write as _;

/// Size limits of a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request target (path and query), bytes.
    pub max_target: usize,
    /// Longest request head (request line, fields, line ends, the empty line), bytes. This is
    /// also how much a [`Parser`] buffers at most.
    pub max_head: usize,
    /// Most header field lines in one request.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_target: 2048,
            max_head: 8192,
            max_headers: 32,
        }
    }
}

/// Request method: the monitor serves `GET` and `HEAD` and refuses anything else with 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: headers only.
    Head,
    /// Any other (well-formed) method.
    Other,
}

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
}

/// One parsed request head.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path without the query, exactly as sent (no percent-decoding): `/metrics`. `*` for
    /// an asterisk-form target. From an absolute-form target, only the path is kept.
    pub path: String,
    /// What followed the first `?`, if there was one (possibly empty).
    pub query: Option<String>,
    /// The credentials of `Authorization: Bearer <token>`, if the request had that field.
    pub bearer: Option<String>,
    /// May the connection take another request after this one's response? HTTP/1.1: unless
    /// `Connection: close`; HTTP/1.0: only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The protocol version.
    pub version: Version,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a credential.
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("version", &self.version)
            .finish()
    }
}

/// Why a request head was refused; [`ParseError::status`] is the status to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// 400: the head is not HTTP/1.x; the text says what was wrong.
    Malformed(&'static str),
    /// 414: the request target (or the whole request line) is too long.
    UriTooLong,
    /// 431: the head is too long or has too many fields.
    HeadersTooLarge,
    /// 413: the request has a body (`Content-Length` above 0 or `Transfer-Encoding`).
    BodyNotAccepted,
    /// 505: a well-formed version other than HTTP/1.x.
    VersionNotSupported,
}

impl ParseError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::Malformed(_) => 400,
            ParseError::UriTooLong => 414,
            ParseError::HeadersTooLarge => 431,
            ParseError::BodyNotAccepted => 413,
            ParseError::VersionNotSupported => 505,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Malformed(why) => write!(f, "malformed request: {why}"),
            ParseError::UriTooLong => f.write_str("request target too long"),
            ParseError::HeadersTooLarge => f.write_str("request head too large"),
            ParseError::BodyNotAccepted => f.write_str("request bodies are not accepted"),
            ParseError::VersionNotSupported => f.write_str("HTTP version not supported"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Slack for the method, the two spaces and the version around the target in the request line.
const REQUEST_LINE_SLACK: usize = 32;

/// An incremental request-head parser over one connection's byte stream.
///
/// It buffers at most [`Limits::max_head`] bytes: [`Parser::room`] says how many more it takes
/// now, and the caller reads no more than that from the socket. Scanning is incremental (a
/// head trickled in one byte at a time is scanned once, not once per byte).
#[derive(Debug, Clone)]
pub struct Parser {
    limits: Limits,
    buf: Vec<u8>,
    /// Where the line being scanned for its end starts (every line before it is non-empty).
    line_start: usize,
    /// Field lines seen so far in the head being scanned.
    lines: usize,
    /// Set after an error: nothing more is parsed.
    failed: bool,
}

impl Parser {
    /// A parser with these caps.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            buf: Vec::new(),
            line_start: 0,
            lines: 0,
            failed: false,
        }
    }

    /// How many more bytes [`Parser::push`] takes now.
    pub fn room(&self) -> usize {
        if self.failed {
            return 0;
        }
        self.limits.max_head.saturating_sub(self.buf.len())
    }

    /// Bytes buffered (received, not yet consumed by a request).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Has an error been returned (the stream is no longer parsed)?
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Append bytes from the stream; takes at most [`Parser::room`] of them and returns how
    /// many it took.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }

    /// The next complete request, or its error, or `None` if more bytes are needed (or after
    /// an error). The request's bytes are removed from the buffer.
    pub fn next_request(&mut self) -> Option<Result<Request, ParseError>> {
        if self.failed {
            return None;
        }
        match self.scan() {
            Ok(None) => None,
            Ok(Some(end)) => {
                let result = parse_head(&self.buf[..end], &self.limits);
                self.buf.drain(..end);
                self.line_start = 0;
                self.lines = 0;
                if result.is_err() {
                    self.failed = true;
                }
                Some(result)
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    /// Is part of a request head buffered (a request begun, not complete)? Empty lines before
    /// a request line do not count.
    pub fn has_partial(&self) -> bool {
        self.buf.iter().any(|&b| b != b'\r' && b != b'\n')
    }

    /// Find the end of the head (index after its empty line), skipping leading empty lines.
    fn scan(&mut self) -> Result<Option<usize>, ParseError> {
        // RFC 9112 2.2: ignore empty lines received before the request line.
        if self.line_start == 0 {
            let skip = leading_empty_lines(&self.buf);
            if skip > 0 {
                self.buf.drain(..skip);
            }
        }
        loop {
            let rest = &self.buf[self.line_start..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                // Incomplete line: refuse early what can no longer fit. A CR at the end may
                // be the start of the CRLF: it does not count (as with a complete line).
                let first_line = self.line_start == 0;
                let len = rest.len() - usize::from(rest.ends_with(b"\r"));
                if first_line && len > self.limits.max_target + REQUEST_LINE_SLACK {
                    return Err(ParseError::UriTooLong);
                }
                if self.buf.len() >= self.limits.max_head {
                    return Err(if first_line {
                        ParseError::UriTooLong
                    } else {
                        ParseError::HeadersTooLarge
                    });
                }
                return Ok(None);
            };
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let next = self.line_start + nl + 1;
            if self.line_start == 0 {
                if line.len() > self.limits.max_target + REQUEST_LINE_SLACK {
                    return Err(ParseError::UriTooLong);
                }
            } else if line.is_empty() {
                return Ok(Some(next));
            } else {
                self.lines += 1;
                if self.lines > self.limits.max_headers {
                    return Err(ParseError::HeadersTooLarge);
                }
            }
            self.line_start = next;
        }
    }
}

/// Length of the run of empty lines (CRLF or LF) at the start of `buf`. A trailing lone CR
/// is kept (it may be the start of a CRLF).
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match buf.get(i..) {
            Some([b'\n', ..]) => i += 1,
            Some([b'\r', b'\n', ..]) => i += 2,
            _ => return i,
        }
    }
}

/// `tchar` of RFC 9110 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// `token68` of RFC 9110 11.2 (the form of a bearer token).
fn is_token68(s: &[u8]) -> bool {
    let body = s.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    body > 0
        && s[..body]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// A field value byte: VCHAR, obs-text, SP or HTAB.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Text of bytes already checked to be visible ASCII.
fn ascii(s: &[u8]) -> String {
    s.iter().map(|&b| b as char).collect()
}

/// Parse a complete head (request line, fields, empty line).
fn parse_head(head: &[u8], limits: &Limits) -> Result<Request, ParseError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (method, target, version) = parse_request_line(lines.next().unwrap_or_default(), limits)?;
    let (path, query) = split_target(target)?;
    let mut f = Fields::default();
    for line in lines {
        if line.is_empty() {
            break; // the end of the head (always the last line scanned)
        }
        f.add(line)?;
    }
    let keep_alive = f.check_framing(version)?;
    Ok(Request {
        method,
        path,
        query,
        bearer: f.authorization.and_then(bearer_token),
        keep_alive,
        version,
    })
}

/// request-line = method SP request-target SP HTTP-version
fn parse_request_line<'a>(
    line: &'a [u8],
    limits: &Limits,
) -> Result<(Method, &'a [u8], Version), ParseError> {
    use ParseError::Malformed;
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed("request line is not `method target version`"));
    };
    if !is_token(method) {
        return Err(Malformed("method is not a token"));
    }
    if target.is_empty() || target.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(if target.len() > limits.max_target {
            ParseError::UriTooLong
        } else {
            Malformed("request target has a space or a control character")
        });
    }
    if target.len() > limits.max_target {
        return Err(ParseError::UriTooLong);
    }
    let version = match version {
        b"HTTP/1.0" => Version::Http10,
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => Version::Http11,
        [b'H', b'T', b'T', b'P', b'/', a, b'.', d] if a.is_ascii_digit() && d.is_ascii_digit() => {
            return Err(ParseError::VersionNotSupported);
        }
        _ => return Err(Malformed("version is not HTTP/<digit>.<digit>")),
    };
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        _ => Method::Other,
    };
    Ok((method, target, version))
}

/// What the header fields of one request said, as far as this server cares.
#[derive(Default)]
struct Fields<'a> {
    hosts: usize,
    content_length: Option<u64>,
    transfer_encoding: bool,
    close: bool,
    keep_alive_token: bool,
    authorization: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// One `name: value` line.
    fn add(&mut self, line: &'a [u8]) -> Result<(), ParseError> {
        use ParseError::Malformed;
        if matches!(line[0], b' ' | b'\t') {
            return Err(Malformed("obsolete line folding"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Malformed("header line without a colon"));
        };
        let name = &line[..colon];
        if !is_token(name) {
            return Err(Malformed("header name is not a token"));
        }
        let raw = &line[colon + 1..];
        if !raw.iter().all(|&b| is_field_byte(b)) {
            return Err(Malformed("control character in a header value"));
        }
        let value = trim_ows(raw);
        if name.eq_ignore_ascii_case(b"host") {
            self.hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value)?;
            if self.content_length.is_some_and(|m| m != n) {
                return Err(Malformed("conflicting Content-Length fields"));
            }
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for opt in value.split(|&b| b == b',').map(trim_ows) {
                self.close |= opt.eq_ignore_ascii_case(b"close");
                self.keep_alive_token |= opt.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            if self.authorization.is_some() {
                return Err(Malformed("more than one Authorization field"));
            }
            self.authorization = Some(value);
        }
        Ok(())
    }

    /// Host and body framing (this server takes no body); returns whether the connection
    /// stays open after the response.
    fn check_framing(&self, version: Version) -> Result<bool, ParseError> {
        use ParseError::Malformed;
        if self.hosts > 1 || (self.hosts == 0 && version == Version::Http11) {
            return Err(Malformed(
                "an HTTP/1.1 request needs exactly one Host field",
            ));
        }
        if self.transfer_encoding {
            if self.content_length.is_some() {
                return Err(Malformed("both Content-Length and Transfer-Encoding"));
            }
            if version == Version::Http10 {
                // RFC 9112 6.1: faulty framing in 1.0.
                return Err(Malformed("Transfer-Encoding in an HTTP/1.0 request"));
            }
            return Err(ParseError::BodyNotAccepted);
        }
        if self.content_length.is_some_and(|n| n > 0) {
            return Err(ParseError::BodyNotAccepted);
        }
        Ok(match version {
            Version::Http11 => !self.close,
            Version::Http10 => self.keep_alive_token && !self.close,
        })
    }
}

/// Digits only; a value too large for u64 still means "a body".
fn parse_content_length(v: &[u8]) -> Result<u64, ParseError> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Malformed("Content-Length is not a number"));
    }
    Ok(v.iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .unwrap_or(u64::MAX))
}

/// `Bearer <token68>` (scheme case-insensitive); anything else is no bearer token.
fn bearer_token(v: &[u8]) -> Option<String> {
    let sp = v.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = (&v[..sp], trim_ows(&v[sp..]));
    (scheme.eq_ignore_ascii_case(b"bearer") && is_token68(rest)).then(|| ascii(rest))
}

/// Split a request target (visible ASCII) into path and query.
fn split_target(target: &[u8]) -> Result<(String, Option<String>), ParseError> {
    if target == b"*" {
        return Ok(("*".into(), None));
    }
    if target.contains(&b'#') {
        return Err(ParseError::Malformed("fragment in the request target"));
    }
    let origin: &[u8] = if target[0] == b'/' {
        target
    } else {
        // absolute-form: scheme "://" authority [path-abempty] ["?" query]
        let lower = |n: usize| target.get(..n).map(|p| p.to_ascii_lowercase());
        let skip = if lower(7).as_deref() == Some(b"http://") {
            7
        } else if lower(8).as_deref() == Some(b"https://") {
            8
        } else {
            return Err(ParseError::Malformed(
                "request target is not /path, http://host/path or *",
            ));
        };
        let after = &target[skip..];
        match after.iter().position(|&b| b == b'/' || b == b'?') {
            Some(i) if after[i] == b'/' => &after[i..],
            // `http://host?q` has an empty path: "/" (RFC 9112 3.2.1 for origin servers).
            Some(i) => return Ok(("/".into(), Some(ascii(&after[i + 1..])))),
            None => b"/",
        }
    };
    Ok(match origin.iter().position(|&b| b == b'?') {
        Some(q) => (ascii(&origin[..q]), Some(ascii(&origin[q + 1..]))),
        None => (ascii(origin), None),
    })
}

/// A response the host gives for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// Status code, 200..=599 (another value is written as 500).
    pub status: u16,
    /// `Content-Type`; a value with a control character is replaced by
    /// `application/octet-stream`.
    pub content_type: &'a str,
    /// The body (empty for HEAD).
    pub body: &'a [u8],
}

impl<'a> Response<'a> {
    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: &'a str) -> Response<'a> {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes(),
        }
    }

    /// An `application/json` response.
    pub fn json(status: u16, body: &'a str) -> Response<'a> {
        Response {
            status,
            content_type: "application/json",
            body: body.as_bytes(),
        }
    }
}

/// The reason phrase written for a status (empty for one not in the table, which RFC 9112
/// allows).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Append a complete response to `out`: status line, `Content-Type`, `Content-Length`,
/// `Cache-Control: no-store`, `Connection`, `WWW-Authenticate: Bearer` on 401,
/// `Allow: GET, HEAD` on 405, then the body unless `head_only` (a HEAD request: the headers
/// describe the body that a GET would get). Returns the bytes written.
pub fn write_response(
    out: &mut Vec<u8>,
    resp: &Response<'_>,
    head_only: bool,
    keep_alive: bool,
) -> usize {
    let start = out.len();
    let status = if (200..=599).contains(&resp.status) {
        resp.status
    } else {
        500
    };
    let content_type = if !resp.content_type.is_empty()
        && resp
            .content_type
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b))
    {
        resp.content_type
    } else {
        "application/octet-stream"
    };
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    let no_body = status == 204 || status == 304;
    if !no_body {
        let _ = write!(
            out,
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            resp.body.len()
        );
    }
    out.extend_from_slice(b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n");
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n"
    } else {
        b"Connection: close\r\n"
    });
    if status == 401 {
        out.extend_from_slice(b"WWW-Authenticate: Bearer realm=\"mcrelay\"\r\n");
    }
    if status == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    if status == 503 {
        out.extend_from_slice(b"Retry-After: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !no_body {
        out.extend_from_slice(resp.body);
    }
    out.len() - start
}

/// The response for a parse error: a one-line text body, and the connection closes.
pub fn write_error(out: &mut Vec<u8>, err: &ParseError, head_only: bool) -> usize {
    let mut body = [0u8; 128];
    let n = {
        let mut cursor = std::io::Cursor::new(&mut body[..]);
        let _ = writeln!(cursor, "{err}");
        cursor.position() as usize
    };
    let resp = Response {
        status: err.status(),
        content_type: "text/plain; charset=utf-8",
        body: &body[..n],
    };
    write_response(out, &resp, head_only, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8], limits: Limits) -> Vec<Result<Request, ParseError>> {
        let mut p = Parser::new(limits);
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            pos += p.push(&input[pos..]);
            match p.next_request() {
                Some(r) => out.push(r),
                None if pos == input.len() || p.failed() => return out,
                None => {}
            }
        }
    }

    fn one(input: &str) -> Result<Request, ParseError> {
        let mut v = parse_all(input.as_bytes(), Limits::default());
        assert_eq!(v.len(), 1, "{input:?} gave {v:?}");
        v.remove(0)
    }

    fn status(input: &str) -> u16 {
        match one(input) {
            Ok(_) => 200,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn a_simple_get() {
        let r = one("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/metrics");
        assert_eq!(r.query, None);
        assert_eq!(r.bearer, None);
        assert!(r.keep_alive);
        assert_eq!(r.version, Version::Http11);
    }

    #[test]
    fn bare_lf_query_head_and_bearer() {
        let r = one(
            "HEAD /clients?x=1&y HTTP/1.1\nHost: x\nAuthorization:  bearer  abc.DEF-_~+/== \n\n",
        )
        .unwrap();
        assert_eq!(r.method, Method::Head);
        assert_eq!(r.path, "/clients");
        assert_eq!(r.query.as_deref(), Some("x=1&y"));
        assert_eq!(r.bearer.as_deref(), Some("abc.DEF-_~+/=="));
        let r = one("GET /?  HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.unwrap_err().status(), 400, "double space");
        let r = one("GET /? HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.query.as_deref(), Some(""));
    }

    #[test]
    fn other_authorization_schemes_are_no_bearer() {
        for v in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer ===",
            "Bearerx y",
        ] {
            let r = one(&format!(
                "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: {v}\r\n\r\n"
            ));
            assert_eq!(r.unwrap().bearer, None, "{v:?}");
        }
        let two = "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer a\r\n\r\n";
        assert_eq!(status(two), 400);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |s: &str| one(s).unwrap().keep_alive;
        assert!(ka("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: TE, Close\r\n\r\n"
        ));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        // 1.2 is processed as 1.1 (RFC 9110 2.5).
        assert!(ka("GET / HTTP/1.2\r\nHost: x\r\n\r\n"));
    }

    #[test]
    fn targets() {
        let p = |s: &str| {
            let r = one(&format!("GET {s} HTTP/1.1\r\nHost: x\r\n\r\n"))?;
            Ok::<_, ParseError>((r.path, r.query))
        };
        assert_eq!(
            p("http://h:1/a?b").unwrap(),
            ("/a".into(), Some("b".into()))
        );
        assert_eq!(p("HTTPS://h").unwrap(), ("/".into(), None));
        assert_eq!(p("http://h?q").unwrap(), ("/".into(), Some("q".into())));
        assert_eq!(p("*").unwrap(), ("*".into(), None));
        assert_eq!(p("/a%20b").unwrap(), ("/a%20b".into(), None));
        for bad in ["a", "ftp://h/", "/a#f", "h:80", "/\u{7f}"] {
            assert_eq!(p(bad).unwrap_err().status(), 400, "{bad:?}");
        }
    }

    #[test]
    fn each_error_maps_to_its_status() {
        let cases: &[(&str, u16)] = &[
            ("GET / HTTP/1.1\r\n\r\n", 400),                       // no Host
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400), // two Hosts
            ("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400), // two Hosts in 1.0
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
            ("GET / HTTP/1\r\nHost: a\r\n\r\n", 400),
            ("GET / http/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET /\r\nHost: a\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
            ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400), // space before colon
            ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400), // obs-fold
            ("GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400), // bare CR
            ("GET / HTTP/1.1\r\nHost: a\0\r\n\r\n", 400),  // NUL
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
                413,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                413,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                200,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                413,
            ),
            ("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nHost: a\r\n\r\n", 200), // method policy is the server's
        ];
        for (input, want) in cases {
            assert_eq!(status(input), *want, "{input:?}");
        }
    }

    #[test]
    fn caps() {
        let l = Limits::default();
        let long = "a".repeat(l.max_target);
        assert_eq!(
            status(&format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n")),
            414
        );
        assert_eq!(
            status(&format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", &long[1..])),
            200
        );
        // A request line that never ends is refused once it cannot fit, without waiting for
        // the whole head buffer.
        let mut p = Parser::new(l);
        p.push(format!("GET /{long}{long}").as_bytes());
        assert_eq!(p.next_request(), Some(Err(ParseError::UriTooLong)));
        assert_eq!(p.next_request(), None);
        assert_eq!(p.room(), 0);
        // Too many fields, too large a head.
        let many: String = (0..=l.max_headers)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            431
        );
        let mut p = Parser::new(l);
        let big = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(l.max_head));
        assert_eq!(p.push(big.as_bytes()), l.max_head);
        assert_eq!(p.next_request(), Some(Err(ParseError::HeadersTooLarge)));
        // Exactly max_head is fine.
        let base = "GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n".len();
        let fit = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "v".repeat(l.max_head - base)
        );
        assert_eq!(fit.len(), l.max_head);
        assert_eq!(status(&fit), 200);
    }

    #[test]
    fn a_request_line_at_its_cap_is_judged_the_same_in_any_chunks() {
        // Found by the fuzz target: the CR of a request line exactly at the cap counted
        // against it while the LF had not arrived yet (414 in chunks, 400 whole).
        let limits = Limits {
            max_target: 1,
            max_head: 64,
            max_headers: 1,
        };
        let line = "^".repeat(1 + REQUEST_LINE_SLACK);
        let input = format!("{line}\r\n\r\n");
        let whole = parse_all(input.as_bytes(), limits);
        for split in 0..input.len() {
            let mut p = Parser::new(limits);
            p.push(&input.as_bytes()[..split]);
            let mut got: Vec<_> = std::iter::from_fn(|| p.next_request()).collect();
            p.push(&input.as_bytes()[split..]);
            got.extend(std::iter::from_fn(|| p.next_request()));
            assert_eq!(got, whole, "split at {split}");
        }
        assert_eq!(whole[0].as_ref().unwrap_err().status(), 400);
    }

    #[test]
    fn empty_lines_before_a_request_are_ignored() {
        let v = parse_all(b"\r\n\n\r\nGET / HTTP/1.0\r\n\r\n", Limits::default());
        assert!(matches!(&v[..], [Ok(_)]));
        let mut p = Parser::new(Limits::default());
        p.push(b"\r\n\r");
        assert_eq!(p.next_request(), None);
        assert!(!p.has_partial());
        p.push(b"\nGET / HTTP/1.0\r\n");
        assert!(p.has_partial());
        p.push(b"\r\n");
        assert!(matches!(p.next_request(), Some(Ok(_))));
        assert_eq!(p.buffered(), 0);
    }

    const PIPELINE: &str = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
        HEAD /b?q HTTP/1.1\nHost: x\nAuthorization: Bearer t\n\n\
        GET /c HTTP/1.0\r\n\r\n\
        DELETE /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    fn summary(v: &[Result<Request, ParseError>]) -> Vec<String> {
        v.iter().map(|r| format!("{r:?}")).collect()
    }

    #[test]
    fn pipelined_requests_at_every_split_point() {
        let whole = parse_all(PIPELINE.as_bytes(), Limits::default());
        assert_eq!(whole.len(), 4);
        let paths: Vec<_> = whole
            .iter()
            .map(|r| r.as_ref().unwrap().path.as_str())
            .collect();
        assert_eq!(paths, ["/a", "/b", "/c", "/d"]);
        assert_eq!(whole[1].as_ref().unwrap().bearer.as_deref(), Some("t"));
        assert_eq!(whole[3].as_ref().unwrap().method, Method::Other);
        let bytes = PIPELINE.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut p = Parser::new(Limits::default());
                let mut got = Vec::new();
                for chunk in [&bytes[..i], &bytes[i..j], &bytes[j..]] {
                    assert_eq!(p.push(chunk), chunk.len());
                    while let Some(r) = p.next_request() {
                        got.push(r);
                    }
                }
                assert_eq!(summary(&got), summary(&whole), "split at {i}, {j}");
                assert_eq!(p.buffered(), 0);
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut p = Parser::new(Limits::default());
        let mut got = Vec::new();
        for b in PIPELINE.bytes() {
            p.push(&[b]);
            while let Some(r) = p.next_request() {
                got.push(r);
            }
        }
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn nothing_after_an_error() {
        let mut p = Parser::new(Limits::default());
        p.push(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            p.next_request().map(|r| r.map_err(|e| e.status())),
            Some(Err(400))
        );
        assert_eq!(p.next_request(), None);
        assert_eq!(p.push(b"more"), 0);
    }

    #[test]
    fn debug_redacts_the_token() {
        let r = one("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n").unwrap();
        let d = format!("{r:?}");
        assert!(!d.contains("s3cret") && d.contains("redacted"), "{d}");
    }

    fn text(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap()
    }

    #[test]
    fn response_writer() {
        let mut out = Vec::new();
        let n = write_response(&mut out, &Response::text(200, "ok\n"), false, true);
        assert_eq!(n, out.len());
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
             Connection: keep-alive\r\n\r\nok\n"
        );
        out.clear();
        write_response(&mut out, &Response::text(200, "ok\n"), true, false);
        let t = text(&out);
        assert!(
            t.ends_with("Connection: close\r\n\r\n") && t.contains("Content-Length: 3\r\n"),
            "{t}"
        );
        out.clear();
        write_response(&mut out, &Response::text(401, "no\n"), false, true);
        assert!(text(&out).contains("\r\nWWW-Authenticate: Bearer realm=\"mcrelay\"\r\n"));
        assert!(!text(&out).contains("Allow:"));
        out.clear();
        write_response(&mut out, &Response::text(405, ""), false, true);
        assert!(text(&out).starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text(&out).contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(!text(&out).contains("WWW-Authenticate"));
        // No header injection through the content type; odd statuses become 500.
        out.clear();
        let r = Response {
            status: 42,
            content_type: "text/plain\r\nX: y",
            body: b"",
        };
        write_response(&mut out, &r, false, false);
        assert!(text(&out).starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
        assert!(text(&out).contains("Content-Type: application/octet-stream\r\n"));
        assert!(!text(&out).contains("X: y"));
        out.clear();
        write_response(&mut out, &Response::text(204, "ignored"), false, true);
        assert!(!text(&out).contains("Content-Length") && !text(&out).contains("ignored"));
    }

    #[test]
    fn error_responses_close_and_say_why() {
        let mut out = Vec::new();
        write_error(&mut out, &ParseError::HeadersTooLarge, false);
        let t = text(&out);
        assert!(
            t.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{t}"
        );
        assert!(
            t.contains("Connection: close\r\n") && t.ends_with("\r\n\r\nrequest head too large\n")
        );
        for e in [
            ParseError::Malformed("request line is not `method target version`"),
            ParseError::UriTooLong,
            ParseError::BodyNotAccepted,
            ParseError::VersionNotSupported,
        ] {
            out.clear();
            write_error(&mut out, &e, false);
            let head = format!("HTTP/1.1 {} {}\r\n", e.status(), reason(e.status()));
            assert!(text(&out).starts_with(&head), "{}", text(&out));
            assert!(
                text(&out).ends_with(&format!("{e}\n")),
                "{} body cut",
                text(&out)
            );
        }
    }
}
