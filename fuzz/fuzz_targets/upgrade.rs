//! upgrade: the WebSocket upgrade decision of `http.rs` (`fuzzing::check_upgrade`) on arbitrary
//! requests never panics, and an accepted request keeps PROTOCOL.md's transport rules: a GET with
//! `Sec-WebSocket-Version: 13` and a well-formed `Sec-WebSocket-Key`; an `Origin` that is never
//! `null`, and otherwise on the allow-list or the request's own host and port (checked with
//! `http`'s authority parser); the token is the `Authorization: Bearer` one, else the strictly
//! percent-decoded `token` query parameter. `query_param` decodes what a percent-encoder wrote.
//!
//! Input: one flags byte (bit 0: TLS; bits 1, 2: allow-list entries), then an HTTP/1.1 request
//! head (`METHOD URI`, then `Name: value` lines up to an empty line), then a free-form body that
//! is used as a query value.
#![no_main]

use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{HeaderMap, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use natter::fuzzing::check_upgrade;
use natter::http::query_param;

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t')).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t')).map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

/// Builds the request; `None` when the request line is no valid method and URI.
fn parse(head: &[u8]) -> Option<Request<()>> {
    let mut lines = head.split(|c| *c == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut first = lines.next()?.split(|c| *c == b' ');
    let method = Method::from_bytes(first.next()?).ok()?;
    let uri = Uri::try_from(first.next().unwrap_or(b"/")).ok()?;
    let mut req = Request::builder().method(method).uri(uri).body(()).ok()?;
    for line in lines {
        let Some(colon) = line.iter().position(|c| *c == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(trim(&line[..colon])), HeaderValue::from_bytes(trim(&line[colon + 1..])))
        else {
            continue;
        };
        req.headers_mut().append(name, value);
    }
    Some(req)
}

/// `%XX` with two hex digits, `+` a space, the result UTF-8; anything else is no value.
fn strict_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                let digit = |c: u8| (c as char).to_digit(16).expect("hex digit") as u8;
                out.push(digit(hex[0]) << 4 | digit(hex[1]));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The first pair named `name` whose value decodes.
fn strict_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if strict_decode(k)? == name {
            strict_decode(v)
        } else {
            None
        }
    })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// (host, port) of a `host[:port]` by `http`'s authority parser, the port made explicit.
fn host_port(hostport: &str, default_port: u16) -> Option<(String, u16)> {
    let a: Authority = hostport.parse().ok()?;
    Some((a.host().to_ascii_lowercase(), a.port_u16().unwrap_or(default_port)))
}

fn first<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    h.get(name).map(HeaderValue::as_bytes)
}

fn check_accepted(req: &Request<()>, allowed: &[String], tls: bool, token: Option<&str>, v1: bool) {
    let h = req.headers();
    assert_eq!(req.method(), Method::GET);
    assert_eq!(first(h, "sec-websocket-version"), Some(&b"13"[..]));
    let key = first(h, "sec-websocket-key").expect("accepted without a key");
    assert!(
        key.len() == 24
            && key.ends_with(b"==")
            && key[..22].iter().all(|c| c.is_ascii_alphanumeric() || b"+/".contains(c)),
        "accepted key {key:?}"
    );
    let has = |name: &str, token: &str| {
        h.get_all(name)
            .iter()
            .any(|v| v.as_bytes().split(|c| *c == b',').any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes())))
    };
    assert!(has("upgrade", "websocket") && has("connection", "upgrade"), "accepted without Upgrade/Connection");
    if let Some(origin) = first(h, "origin") {
        let origin = String::from_utf8(origin.to_vec()).expect("accepted a non-UTF-8 origin");
        let origin = origin.trim().to_ascii_lowercase();
        assert_ne!(origin, "null", "accepted Origin: null");
        if !allowed.contains(&origin) {
            let (scheme, hostport) = origin.split_once("://").expect("accepted an origin without a scheme");
            let theirs = match scheme {
                "http" => 80,
                "https" => 443,
                _ => panic!("accepted origin scheme {scheme:?}"),
            };
            let host = h.get("host").and_then(|v| v.to_str().ok()).expect("cross-checked against no Host");
            let ours = if tls { 443 } else { 80 };
            // Only where both parse as authorities: natter's own comparison is textual.
            if let (Some(o), Some(us)) = (host_port(hostport, theirs), host_port(host, ours)) {
                assert_eq!(o, us, "origin {origin:?} accepted for Host {host:?} (tls {tls})");
            }
        }
    }
    let bearer = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let expected = bearer.or_else(|| strict_param(req.uri().query(), "token"));
    assert_eq!(token, expected.as_deref(), "token");
    let offered = h
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "natter.v1"));
    assert_eq!(v1, offered, "subprotocol");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let tls = flags & 1 != 0;
    // As `cli.rs` builds the list: lower-case `scheme://host[:port]`, never `null`.
    let mut allowed = Vec::new();
    if flags & 2 != 0 {
        allowed.push("https://chat.example.com".to_string());
    }
    if flags & 4 != 0 {
        allowed.push("http://localhost:8080".to_string());
    }
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => match rest.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => (&rest[..i], &rest[i + 4..]),
            None => (rest, &[][..]),
        },
    };

    if let Some(req) = parse(head) {
        match check_upgrade(&req, &allowed, tls) {
            Ok(up) => check_accepted(&req, &allowed, tls, up.token.as_deref(), up.v1),
            Err(r) => assert!(matches!(r.status().as_u16(), 400 | 403 | 426), "{r:?} answers {}", r.status()),
        }
        // Every query parameter decodes as a strict decoder would (or not at all).
        if let Some(q) = req.uri().query() {
            for name in ["token", "uid", "name"] {
                assert_eq!(query_param(Some(q), name), strict_param(Some(q), name), "{name} in {q:?}");
            }
        }
    }

    if let Ok(s) = std::str::from_utf8(body) {
        let q = format!("a=1&token={}&token=second", percent_encode(s));
        assert_eq!(query_param(Some(&q), "token").as_deref(), Some(s), "{q:?}");
        assert_eq!(query_param(Some(s), "token"), strict_param(Some(s), "token"), "{s:?}");
    }
});
