//! Minimal HTTP/1.1 over TCP or TLS: [`raw_http`] (also [`raw_http_io`] over a given stream), [`http_get`], [`healthz`], [`metrics`] /
//! [`metric_value`], the hand-made [`upgrade_request`] and [`read_head`], and
//! [`dropped_within`] for connections the server should drop.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{BoxIo, Server, RECV_TIMEOUT};

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Reads and discards whatever arrives on `sock` until the server drops it (EOF or a read
/// error): true when that happens within `dur`, false on timeout.
pub async fn dropped_within(sock: &mut (impl AsyncRead + Unpin), dur: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(dur, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // e.g. a 408 response before the close
            }
        }
    })
    .await
    .is_ok()
}

/// Build an upgrade request by hand. `extra` lines are appended as-is ("Name: value").
pub fn upgrade_request(server: &Server, path: &str, extra: &[&str]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        server.port
    );
    for l in extra {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// Send a raw request and read the response: head always; the body per Content-Length /
/// chunked; for 101 no body; otherwise until EOF.
pub async fn raw_http(server: &Server, request: &str) -> HttpResponse {
    raw_http_io(server.connect_io().await, request).await
}

/// [`raw_http`] over a stream already open (from another source address, say).
pub async fn raw_http_io(mut io: BoxIo, request: &str) -> HttpResponse {
    io.write_all(request.as_bytes()).await.unwrap();
    io.flush().await.unwrap();
    let (head, mut rest) = read_head(&mut io).await;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let body_bytes: Vec<u8> = if status == 101 || status == 204 || status == 304 {
        vec![]
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().unwrap();
        read_until(&mut io, &mut rest, |b| b.len() >= n).await;
        rest.truncate(n);
        rest
    } else if get("transfer-encoding").map(|t| t.eq_ignore_ascii_case("chunked")).unwrap_or(false) {
        read_until(&mut io, &mut rest, |b| find(b, b"0\r\n\r\n").is_some()).await;
        dechunk(&rest)
    } else {
        read_until(&mut io, &mut rest, |_| false).await;
        rest
    };
    HttpResponse { status, head, headers, body: String::from_utf8_lossy(&body_bytes).into_owned() }
}

async fn read_until(io: &mut BoxIo, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while !done(buf) {
        let mut tmp = [0u8; 8192];
        match tokio::time::timeout_at(deadline, io.read(&mut tmp)).await {
            Err(_) => panic!("HTTP body not complete within {RECV_TIMEOUT:?}: {:?}", String::from_utf8_lossy(buf)),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let Some(p) = find(b, b"\r\n") else {
            return out;
        };
        let size_str = String::from_utf8_lossy(&b[..p]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = p + 2;
        if b.len() < start + size {
            out.extend_from_slice(&b[start..]);
            return out;
        }
        out.extend_from_slice(&b[start..start + size]);
        b = &b[(start + size + 2).min(b.len())..];
    }
}

pub async fn http_get(server: &Server, path: &str) -> HttpResponse {
    raw_http(server, &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", server.port))
        .await
}

pub async fn metrics(server: &Server) -> String {
    let r = http_get(server, "/metrics").await;
    assert_eq!(r.status, 200, "GET /metrics: {r:?}");
    r.body
}

/// Value of the sample `name` (with labels exactly as written, e.g. `natter_closes_total{code="1013"}`).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.trim_start().starts_with('#')).find_map(|l| {
        let l = l.trim();
        let (k, rest) = match l.find('}') {
            Some(p) => (&l[..=p], &l[p + 1..]),
            None => l.split_once(char::is_whitespace)?,
        };
        if k.trim() != name {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

pub async fn healthz(server: &Server) -> Value {
    let r = http_get(server, "/healthz").await;
    assert_eq!(r.status, 200, "GET /healthz: {r:?}");
    r.json()
}

/// Read an HTTP response head (up to the blank line); returns (head, bytes read past it).
pub async fn read_head(io: &mut BoxIo) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).into_owned();
            return (head, buf[p + 4..].to_vec());
        }
        let mut tmp = [0u8; 8192];
        match tokio::time::timeout_at(deadline, io.read(&mut tmp)).await {
            Err(_) => panic!("no HTTP response head within {RECV_TIMEOUT:?}; got {:?}", String::from_utf8_lossy(&buf)),
            Ok(Ok(0)) | Ok(Err(_)) => {
                panic!("connection closed before the HTTP response head; got {:?}", String::from_utf8_lossy(&buf))
            }
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
