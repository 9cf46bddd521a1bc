//! Just enough JSON for NATS: read the server's `INFO` object, write the client's `CONNECT`.
//!
//! The reader is a bounded recursive-descent parser over the (already size-capped) `INFO`
//! text: it keeps the keys the client uses, checks their types, and skips every other key
//! whatever its value (nested objects and arrays included, up to [`MAX_DEPTH`] levels). Strings
//! are decoded with all JSON escapes, `\uXXXX` surrogate pairs included; a lone surrogate, a
//! raw control character, trailing data or a duplicate-free-but-malformed object is an error.

use std::fmt;
use std::net::SocketAddr;

use super::client::NatsAuth;

/// Deepest nesting of arrays/objects accepted (the `INFO` object itself is level 1).
pub const MAX_DEPTH: usize = 16;
/// Most `connect_urls` entries kept from one `INFO`; the rest are counted as skipped.
pub const MAX_CONNECT_URLS: usize = 64;
/// Longest text accepted by [`parse_info`] (the `INFO` line cap).
const MAX_INFO_JSON: usize = super::proto::MAX_INFO_LINE;

/// Why an `INFO` payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset where the problem was found.
    pub pos: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad INFO JSON at byte {}: {}", self.pos, self.what)
    }
}

impl std::error::Error for JsonError {}

/// The fields of the server's `INFO` the client knows about. Absent keys keep these defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// The server's unique id.
    pub server_id: String,
    /// The server's configured name.
    pub server_name: String,
    /// The server's version.
    pub version: String,
    /// Protocol level (1 supports async INFO and `echo`).
    pub proto: i64,
    /// Largest payload the server accepts from a client.
    pub max_payload: Option<u64>,
    /// The server supports headers (the client does not use them).
    pub headers: bool,
    /// The server wants credentials in `CONNECT`.
    pub auth_required: bool,
    /// The server requires TLS (not supported: the client gives up on such a server).
    pub tls_required: bool,
    /// `connect_urls` that are IP literals (`a.b.c.d:port` or `[v6]:port`).
    pub connect_urls: Vec<SocketAddr>,
    /// `connect_urls` entries that were names or otherwise not IP literals (no DNS here),
    /// or over [`MAX_CONNECT_URLS`].
    pub skipped_urls: u32,
    /// The server entered lame-duck mode.
    pub ldm: bool,
    /// The server's id for this connection.
    pub client_id: Option<u64>,
    /// A nonce to sign (nkeys/JWT auth, not supported).
    pub nonce: Option<String>,
}

struct Reader<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err<T>(&self, what: &'static str) -> Result<T, JsonError> {
        Err(JsonError {
            pos: self.pos,
            what,
        })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), JsonError> {
        if self.bump() == Some(b) {
            Ok(())
        } else {
            self.pos = self.pos.saturating_sub(1);
            self.err(what)
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), JsonError> {
        let end = self.pos + word.len();
        if self.s.get(self.pos..end) == Some(word) {
            self.pos = end;
            Ok(())
        } else {
            self.err("bad literal")
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.bump() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return self.err("bad \\u escape"),
            };
            v = v * 16 + u32::from(d);
        }
        Ok(v)
    }

    /// A string (the opening quote is next); decoded into `out` when given.
    fn string(&mut self, mut out: Option<&mut String>) -> Result<(), JsonError> {
        self.expect(b'"', "expected a string")?;
        loop {
            // Copy the run of plain bytes at once.
            let run = self.pos;
            while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                self.pos += 1;
            }
            if let Some(o) = out.as_deref_mut() {
                // The input is a &str and the run stops only at ASCII bytes: valid UTF-8.
                let text = std::str::from_utf8(self.s.get(run..self.pos).unwrap_or_default());
                match text {
                    Ok(t) => o.push_str(t),
                    Err(_) => return self.err("string is not UTF-8"),
                }
            }
            match self.bump() {
                Some(b'"') => return Ok(()),
                Some(b'\\') => {
                    let c = match self.bump() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.bump() != Some(b'\\') || self.bump() != Some(b'u') {
                                    return self.err("lone high surrogate");
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("bad low surrogate");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(cp) {
                                Some(c) => c,
                                None => return self.err("lone low surrogate"),
                            }
                        }
                        _ => return self.err("bad escape"),
                    };
                    if let Some(o) = out.as_deref_mut() {
                        o.push(c);
                    }
                }
                Some(_) => return self.err("control character in string"),
                None => return self.err("unterminated string"),
            }
        }
    }

    /// A number token; returns its text.
    fn number(&mut self) -> Result<&'a [u8], JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let digits = |r: &mut Self| {
            let s = r.pos;
            while matches!(r.peek(), Some(b'0'..=b'9')) {
                r.pos += 1;
            }
            r.pos > s
        };
        let int_start = self.pos;
        if !digits(self) {
            return self.err("bad number");
        }
        if self.pos - int_start > 1 && self.s.get(int_start) == Some(&b'0') {
            return self.err("leading zero");
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !digits(self) {
                return self.err("bad fraction");
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !digits(self) {
                return self.err("bad exponent");
            }
        }
        Ok(self.s.get(start..self.pos).unwrap_or_default())
    }

    fn int(&mut self) -> Result<i64, JsonError> {
        let at = self.pos;
        let text = self.number()?;
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or(JsonError {
                pos: at,
                what: "expected an integer",
            })
    }

    fn uint(&mut self) -> Result<u64, JsonError> {
        let at = self.pos;
        let text = self.number()?;
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or(JsonError {
                pos: at,
                what: "expected a non-negative integer",
            })
    }

    fn boolean(&mut self) -> Result<bool, JsonError> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|_| true),
            Some(b'f') => self.literal(b"false").map(|_| false),
            _ => self.err("expected true or false"),
        }
    }

    /// Skip any value; `depth` is the nesting level the value would open.
    fn skip_value(&mut self, depth: usize) -> Result<(), JsonError> {
        self.ws();
        match self.peek() {
            Some(b'"') => self.string(None),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
            Some(b'[') => {
                if depth > MAX_DEPTH {
                    return self.err("nested too deeply");
                }
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.bump() {
                        Some(b',') => {}
                        Some(b']') => return Ok(()),
                        _ => return self.err("expected , or ]"),
                    }
                }
            }
            Some(b'{') => {
                if depth > MAX_DEPTH {
                    return self.err("nested too deeply");
                }
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.string(None)?;
                    self.ws();
                    self.expect(b':', "expected :")?;
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.bump() {
                        Some(b',') => {}
                        Some(b'}') => return Ok(()),
                        _ => return self.err("expected , or }"),
                    }
                }
            }
            _ => self.err("expected a value"),
        }
    }

    fn null_or<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, JsonError>,
    ) -> Result<Option<T>, JsonError> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            Ok(None)
        } else {
            f(self).map(Some)
        }
    }

    fn opt_string(&mut self) -> Result<String, JsonError> {
        let mut s = String::new();
        if self.null_or(|r| r.string(Some(&mut s)))?.is_none() {
            s.clear();
        }
        Ok(s)
    }

    fn urls(&mut self, info: &mut ServerInfo) -> Result<(), JsonError> {
        info.connect_urls.clear();
        info.skipped_urls = 0;
        if self.peek() == Some(b'n') {
            return self.literal(b"null");
        }
        self.expect(b'[', "connect_urls: expected an array")?;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let mut url = String::new();
        loop {
            self.ws();
            url.clear();
            self.string(Some(&mut url))?;
            match parse_ip_literal(&url) {
                Some(a) if info.connect_urls.len() < MAX_CONNECT_URLS => {
                    if !info.connect_urls.contains(&a) {
                        info.connect_urls.push(a);
                    }
                }
                _ => info.skipped_urls = info.skipped_urls.saturating_add(1),
            }
            self.ws();
            match self.bump() {
                Some(b',') => {}
                Some(b']') => return Ok(()),
                _ => return self.err("expected , or ]"),
            }
        }
    }
}

/// `host:port` where host is an IPv4 literal or a bracketed IPv6 literal (an optional
/// `nats://` in front is tolerated). Names give `None`: the client does no DNS.
pub fn parse_ip_literal(url: &str) -> Option<SocketAddr> {
    let s = url.strip_prefix("nats://").unwrap_or(url);
    s.parse::<SocketAddr>().ok()
}

/// Parse the JSON object of an `INFO` operation.
pub fn parse_info(text: &str) -> Result<ServerInfo, JsonError> {
    let mut r = Reader {
        s: text.as_bytes(),
        pos: 0,
    };
    if text.len() > MAX_INFO_JSON {
        return r.err("INFO too long");
    }
    let mut info = ServerInfo::default();
    r.ws();
    r.expect(b'{', "expected an object")?;
    r.ws();
    if r.peek() == Some(b'}') {
        r.pos += 1;
    } else {
        let mut key = String::new();
        loop {
            r.ws();
            key.clear();
            r.string(Some(&mut key))?;
            r.ws();
            r.expect(b':', "expected :")?;
            r.ws();
            match key.as_str() {
                "server_id" => info.server_id = r.opt_string()?,
                "server_name" => info.server_name = r.opt_string()?,
                "version" => info.version = r.opt_string()?,
                "proto" => info.proto = r.null_or(Reader::int)?.unwrap_or(0),
                "max_payload" => info.max_payload = r.null_or(Reader::uint)?,
                "headers" => info.headers = r.null_or(Reader::boolean)?.unwrap_or(false),
                "auth_required" => {
                    info.auth_required = r.null_or(Reader::boolean)?.unwrap_or(false)
                }
                "tls_required" => info.tls_required = r.null_or(Reader::boolean)?.unwrap_or(false),
                "ldm" => info.ldm = r.null_or(Reader::boolean)?.unwrap_or(false),
                "client_id" => info.client_id = r.null_or(Reader::uint)?,
                "nonce" => {
                    let n = r.opt_string()?;
                    info.nonce = (!n.is_empty()).then_some(n);
                }
                "connect_urls" => r.urls(&mut info)?,
                _ => r.skip_value(2)?,
            }
            r.ws();
            match r.bump() {
                Some(b',') => {}
                Some(b'}') => break,
                _ => return r.err("expected , or }"),
            }
        }
    }
    r.ws();
    if r.pos != r.s.len() {
        return r.err("data after the object");
    }
    Ok(info)
}

/// Append `s` as a JSON string (quotes included), escaping `"`, `\` and control characters.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let v = c as usize;
                out.extend_from_slice(b"\\u00");
                out.push(HEX.get(v >> 4).copied().unwrap_or(b'0'));
                out.push(HEX.get(v & 15).copied().unwrap_or(b'0'));
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Append `CONNECT {json}\r\n`: no verbose/pedantic acknowledgements, no headers, no echo of
/// our own publishes, protocol 1 (async INFO), plus the credentials.
pub fn write_connect(out: &mut Vec<u8>, name: &str, version: &str, auth: &NatsAuth) {
    out.extend_from_slice(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"echo\":false,\
          \"protocol\":1,\"lang\":\"rust\",\"version\":",
    );
    write_string(out, version);
    out.extend_from_slice(b",\"name\":");
    write_string(out, name);
    match auth {
        NatsAuth::None => {}
        NatsAuth::Token(t) => {
            out.extend_from_slice(b",\"auth_token\":");
            write_string(out, t);
        }
        NatsAuth::UserPassword { user, password } => {
            out.extend_from_slice(b",\"user\":");
            write_string(out, user);
            out.extend_from_slice(b",\"pass\":");
            write_string(out, password);
        }
    }
    out.extend_from_slice(b"}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode a JSON string literal through an `INFO` key.
    fn decode(lit: &str) -> Result<String, JsonError> {
        parse_info(&format!("{{\"server_name\":{lit}}}")).map(|i| i.server_name)
    }

    #[test]
    fn real_server_info() {
        let text = r#"{"server_id":"NA6P35UW2Y2DNE3IR5RM3QQXJLUOEQCXEAMJTK6AT4UESJ2XSIJ6JXNG","server_name":"n1","version":"2.9.10","proto":1,"go":"go1.19.8","host":"127.0.0.1","port":14222,"headers":true,"max_payload":1048576,"client_id":7,"client_ip":"127.0.0.1","cluster":"c","connect_urls":["127.0.0.1:14222","127.0.0.1:14223"]} "#;
        let i = parse_info(text).unwrap();
        assert_eq!(i.server_name, "n1");
        assert_eq!(i.version, "2.9.10");
        assert_eq!(i.proto, 1);
        assert!(i.headers && !i.auth_required && !i.tls_required && !i.ldm);
        assert_eq!(i.max_payload, Some(1 << 20));
        assert_eq!(i.client_id, Some(7));
        assert_eq!(
            i.connect_urls,
            vec![
                "127.0.0.1:14222".parse().unwrap(),
                "127.0.0.1:14223".parse().unwrap()
            ]
        );
        assert_eq!(i.skipped_urls, 0);
    }

    #[test]
    fn urls_literals_only() {
        let i = parse_info(
            r#"{"connect_urls":["[::1]:4222","nats.example.com:4222","10.0.0.1:4333","localhost:1","10.0.0.1:4333","nats://127.0.0.2:5","1.2.3.4"],"ldm":true,"nonce":"abc","auth_required":true}"#,
        )
        .unwrap();
        assert_eq!(
            i.connect_urls,
            vec![
                "[::1]:4222".parse().unwrap(),
                "10.0.0.1:4333".parse().unwrap(),
                "127.0.0.2:5".parse().unwrap()
            ]
        );
        assert_eq!(i.skipped_urls, 3);
        assert!(i.ldm && i.auth_required);
        assert_eq!(i.nonce.as_deref(), Some("abc"));
        let many: Vec<String> = (0..100)
            .map(|p| format!("\"127.0.0.1:{}\"", p + 1))
            .collect();
        let i = parse_info(&format!("{{\"connect_urls\":[{}]}}", many.join(","))).unwrap();
        assert_eq!(i.connect_urls.len(), MAX_CONNECT_URLS);
        assert_eq!(i.skipped_urls, 100 - MAX_CONNECT_URLS as u32);
    }

    #[test]
    fn escapes() {
        assert_eq!(decode(r#""a\"b\\c\/d""#).unwrap(), "a\"b\\c/d");
        assert_eq!(decode(r#""\b\f\n\r\t""#).unwrap(), "\u{8}\u{c}\n\r\t");
        assert_eq!(decode(r#""\u00e9\u20AC""#).unwrap(), "é€");
        assert_eq!(decode(r#""\ud83d\ude00""#).unwrap(), "😀");
        assert_eq!(decode("\"héllo 😀\"").unwrap(), "héllo 😀");
        assert!(decode(r#""\ud83d""#).is_err());
        assert!(decode(r#""\ud83dx""#).is_err());
        assert!(decode(r#""\ud83d\u0041""#).is_err());
        assert!(decode(r#""\ude00""#).is_err());
        assert!(decode(r#""\u12""#).is_err());
        assert!(decode(r#""\x""#).is_err());
        assert!(decode("\"a\nb\"").is_err());
        assert!(decode("\"abc").is_err());
        assert_eq!(decode("null").unwrap(), "");
    }

    #[test]
    fn unknown_keys_of_any_type_are_skipped() {
        let i = parse_info(
            r#" { "a" : 1.5e-3 , "b":[1,[2,{"c":null}],"x\"]"], "o":{"p":{"q":[true,false]}},
                 "neg":-0, "e":{}, "arr":[], "max_payload" : 42 } "#,
        )
        .unwrap();
        assert_eq!(i.max_payload, Some(42));
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse_info(&format!("{{\"x\":{deep}}}")).is_err());
        let ok = "[".repeat(MAX_DEPTH - 2) + &"]".repeat(MAX_DEPTH - 2);
        assert!(parse_info(&format!("{{\"x\":{ok}}}")).is_ok());
    }

    #[test]
    fn bad_input() {
        for bad in [
            "",
            "{",
            "[]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1 \"b\":2}",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":[1,]}",
            "{} x",
            "{}{}",
            "{\"max_payload\":\"big\"}",
            "{\"max_payload\":-1}",
            "{\"max_payload\":1.5}",
            "{\"ldm\":1}",
            "{\"connect_urls\":\"1.2.3.4:5\"}",
            "{\"connect_urls\":[1]}",
            "{\"proto\":99999999999999999999}",
        ] {
            assert!(parse_info(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_info(&"x".repeat(MAX_INFO_JSON + 1)).is_err());
    }

    #[test]
    fn connect_bytes() {
        let mut out = Vec::new();
        write_connect(&mut out, "relay \"1\"", "0.1.0", &NatsAuth::None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"echo\":false,\
             \"protocol\":1,\"lang\":\"rust\",\"version\":\"0.1.0\",\"name\":\"relay \\\"1\\\"\"}\r\n"
        );
        let mut out = Vec::new();
        write_connect(&mut out, "n", "v", &NatsAuth::Token("t\\k\n".into()));
        assert!(out.ends_with(b",\"auth_token\":\"t\\\\k\\n\"}\r\n"));
        let mut out = Vec::new();
        let auth = NatsAuth::UserPassword {
            user: "u\u{1}".into(),
            password: "p\"w".into(),
        };
        write_connect(&mut out, "n", "v", &auth);
        assert!(out.ends_with(b",\"user\":\"u\\u0001\",\"pass\":\"p\\\"w\"}\r\n"));
    }

    #[test]
    fn written_strings_read_back() {
        for s in [
            "",
            "plain",
            "q\"b\\s/",
            "\u{0}\u{1f}\u{7f}",
            "é😀",
            "\r\n\t",
        ] {
            let mut out = Vec::new();
            write_string(&mut out, s);
            let lit = String::from_utf8(out).unwrap();
            assert_eq!(decode(&lit).unwrap(), s);
        }
    }
}
