//! Monitor HTTP request-head parser: `monitor::http::Parser` on arbitrary bytes in
//! arbitrary chunks, with small input-chosen limits.
//!
//! No panic; the outcomes do not depend on the chunking; the buffer stays within `max_head`;
//! at most one error, and nothing after it; every error maps to 400/413/414/431/505; an
//! accepted request has a clean path (starts with `/`, or is `*`), no control bytes or spaces
//! in path and query, a token68 bearer, and re-rendered canonically parses to the same
//! request; the response writer frames any status and body correctly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcrelay::monitor::Method;
use mcrelay::monitor::http::{
    Limits, Parser, Request, Response, Version, write_error, write_response,
};

fn run(input: &[u8], chunks: &[usize], limits: Limits) -> Vec<Result<Request, u16>> {
    let mut p = Parser::new(limits);
    let mut out = Vec::new();
    let mut pos: usize = 0;
    let mut sizes = chunks.iter().cycle();
    loop {
        let n = sizes.next().copied().unwrap_or(usize::MAX).max(1);
        let end = pos.saturating_add(n).min(input.len());
        let taken = p.push(&input[pos..end]);
        pos += taken;
        assert!(p.buffered() <= limits.max_head);
        let mut progressed = taken > 0;
        while let Some(r) = p.next_request() {
            progressed = true;
            assert!(
                out.last().is_none_or(|r: &Result<Request, u16>| r.is_ok()),
                "output after an error"
            );
            out.push(r.map_err(|e| e.status()));
        }
        if p.failed() || pos == input.len() {
            return out;
        }
        assert!(
            progressed,
            "parser stuck: full without a request or an error"
        );
    }
}

fn render(r: &Request) -> String {
    let method = match r.method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Other => "OTHER",
    };
    let mut s = format!("{method} {}", r.path);
    if let Some(q) = &r.query {
        s.push('?');
        s.push_str(q);
    }
    s.push_str(match r.version {
        Version::Http10 => " HTTP/1.0\r\n",
        Version::Http11 => " HTTP/1.1\r\nHost: h\r\n",
    });
    if let Some(b) = &r.bearer {
        s.push_str(&format!("Authorization: Bearer {b}\r\n"));
    }
    s.push_str(match (r.version, r.keep_alive) {
        (Version::Http11, false) => "Connection: close\r\n",
        (Version::Http10, true) => "Connection: keep-alive\r\n",
        _ => "",
    });
    s.push_str("\r\n");
    s
}

fn check_response(out: &[u8], body: &[u8], head_only: bool) {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end")
        + 4;
    let head = std::str::from_utf8(&out[..end]).expect("ASCII head");
    assert!(head.starts_with("HTTP/1.1 "));
    let cl = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|v| v.parse::<usize>().expect("length"));
    match cl {
        Some(n) => {
            assert_eq!(n, body.len());
            assert_eq!(out.len() - end, if head_only { 0 } else { n });
        }
        None => assert_eq!(out.len(), end, "no Content-Length, no body"),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let limits = Limits {
        max_target: 1 + data[0] as usize * 4,
        max_head: 64 + data[1] as usize * 16,
        max_headers: 1 + (data[2] % 40) as usize,
    };
    let chunks: Vec<usize> = (0..4)
        .map(|i| 1 + ((data[3] as usize) >> (2 * i) & 3) * 7)
        .collect();
    let input = &data[4..];
    let whole = run(input, &[input.len().max(1)], limits);
    let chunked = run(input, &chunks, limits);
    assert_eq!(whole, chunked, "outcome depends on the chunking");
    let mut out = Vec::new();
    for r in &whole {
        match r {
            Err(status) => assert!(
                [400, 413, 414, 431, 505].contains(status),
                "status {status}"
            ),
            Ok(req) => {
                assert!(
                    req.path.starts_with('/') || req.path == "*",
                    "path {:?}",
                    req.path
                );
                let clean = |s: &str| s.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'#');
                assert!(clean(&req.path) && req.query.as_deref().is_none_or(clean));
                if let Some(b) = &req.bearer {
                    assert!(
                        !b.is_empty()
                            && b.bytes()
                                .all(|c| c.is_ascii_alphanumeric() || b"-._~+/=".contains(&c))
                    );
                }
                let again = render(req);
                let big = Limits {
                    max_target: 1 << 16,
                    max_head: 1 << 17,
                    max_headers: 8,
                };
                let back = run(again.as_bytes(), &[again.len()], big);
                assert_eq!(back.len(), 1);
                assert_eq!(back[0].as_ref().ok(), Some(req), "{again:?}");
                // The writer frames any body, for GET and HEAD alike.
                let status = 100 + (req.path.len() as u16 * 7) % 520;
                let resp = Response {
                    status,
                    content_type: &req.path,
                    body: input,
                };
                for head_only in [false, true] {
                    out.clear();
                    write_response(&mut out, &resp, head_only, req.keep_alive);
                    check_response(&out, input, head_only);
                }
            }
        }
    }
    if let Some(Err(_)) = whole.last() {
        out.clear();
        write_error(&mut out, &mcrelay::monitor::ParseError::UriTooLong, false);
        assert!(out.ends_with(b"request target too long\n"));
    }
});
