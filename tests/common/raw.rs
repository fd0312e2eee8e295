//! The raw WebSocket client [`RawWs`]: hand-made upgrade, hand-made frames ([`encode_frame`],
//! opcodes, [`MASK`]) and frame parsing, for RFC 6455 violations.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{is_heartbeat_ping, read_head, token, upgrade_request, BoxIo, Server, RECV_TIMEOUT};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Encode one frame. `rsv` holds the three RSV bits in its low bits (RSV1 = 0b100).
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(((fin as u8) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn close_code(&self) -> Option<u16> {
        if self.opcode == OP_CLOSE && self.payload.len() >= 2 {
            Some(u16::from_be_bytes([self.payload[0], self.payload[1]]))
        } else {
            None
        }
    }
}

pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub struct RawWs {
    pub io: BoxIo,
    pub buf: Vec<u8>,
    pub response_head: String,
}

impl RawWs {
    /// Hand-made upgrade on `/ws`; panics unless 101.
    pub async fn connect(server: &Server) -> RawWs {
        Self::connect_with(server, "/ws", &[]).await
    }

    pub async fn connect_with(server: &Server, path: &str, extra: &[&str]) -> RawWs {
        let mut io = server.connect_io().await;
        io.write_all(upgrade_request(server, path, extra).as_bytes()).await.unwrap();
        let (head, rest) = read_head(&mut io).await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        assert!(
            head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "bad Sec-WebSocket-Accept in {head}"
        );
        RawWs { io, buf: rest, response_head: head }
    }

    /// Connect, `auth` as uid, `login` to room and consume the own login broadcast.
    pub async fn connect_as(server: &Server, uid: &str, room: &str) -> RawWs {
        let mut r = Self::connect(server).await;
        r.send_json(&json!({"event":"auth","message":token(uid, None, 3600)})).await;
        r.send_json(&json!({"event":"login","roomid":room})).await;
        loop {
            let v = r.recv_json().await;
            if v["event"] == "login" && v["uid"] == uid {
                break;
            }
            assert!(v["event"] != "noauth" && v["event"] != "error", "raw login failed: {v}");
        }
        r
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.io.write_all(b).await.expect("raw write");
        self.io.flush().await.expect("raw flush");
    }

    /// Write without panicking (the server may already have closed).
    pub async fn try_send_bytes(&mut self, b: &[u8]) -> bool {
        self.io.write_all(b).await.is_ok() && self.io.flush().await.is_ok()
    }

    /// Masked frame (a well-behaved client frame, unless the arguments say otherwise).
    pub async fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8]) {
        let f = encode_frame(fin, rsv, opcode, payload, Some(MASK));
        self.send_bytes(&f).await;
    }

    pub async fn send_unmasked(&mut self, opcode: u8, payload: &[u8]) {
        let f = encode_frame(true, 0, opcode, payload, None);
        self.send_bytes(&f).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.send_frame(true, 0, OP_TEXT, s.as_bytes()).await;
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Next frame within `dur`; Ok(None) on EOF/reset; Err on timeout.
    pub async fn recv_frame(&mut self, dur: Duration) -> Result<Option<RawFrame>, ()> {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut tmp = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.io.read(&mut tmp)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Next JSON text message (skipping control frames and heartbeat pings).
    pub async fn recv_json(&mut self) -> Value {
        loop {
            match self.recv_frame(RECV_TIMEOUT).await {
                Err(()) => panic!("raw: no frame within {RECV_TIMEOUT:?}"),
                Ok(None) => panic!("raw: connection ended while waiting for JSON"),
                Ok(Some(f)) => match f.opcode {
                    OP_TEXT => {
                        assert!(f.fin, "natter sent a fragmented text message");
                        let v: Value = serde_json::from_slice(&f.payload).expect("server sent invalid JSON");
                        if is_heartbeat_ping(&v) {
                            continue;
                        }
                        return v;
                    }
                    OP_PING | OP_PONG => continue,
                    OP_CLOSE => panic!("raw: closed with {:?} while waiting for JSON", f.close_code()),
                    op => panic!("raw: unexpected opcode {op}"),
                },
            }
        }
    }

    /// Reads until a close frame; returns its code (None: EOF without a close frame).
    pub async fn recv_close(&mut self) -> Option<u16> {
        loop {
            match self.recv_frame(RECV_TIMEOUT).await {
                Err(()) => panic!("raw: no close within {RECV_TIMEOUT:?}"),
                Ok(None) => return None,
                Ok(Some(f)) if f.opcode == OP_CLOSE => return f.close_code(),
                Ok(Some(_)) => continue,
            }
        }
    }

    pub async fn expect_close(&mut self, code: u16) {
        let got = self.recv_close().await;
        assert_eq!(got, Some(code), "raw: expected close {code}");
    }

    /// After a close: the server must drop the TCP connection (EOF or reset) in time.
    pub async fn expect_eof(&mut self, dur: Duration) {
        loop {
            match self.recv_frame(dur).await {
                Err(()) => panic!("raw: TCP not closed within {dur:?}"),
                Ok(None) => return,
                Ok(Some(_)) => continue,
            }
        }
    }
}

fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 7;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut len = (buf[1] & 0x7f) as usize;
    let mut pos = 2;
    if len == 126 {
        if buf.len() < 4 {
            return None;
        }
        len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        pos = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return None;
        }
        len = u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize;
        pos = 10;
    }
    let mut key = None;
    if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        key = Some([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);
        pos += 4;
    }
    if buf.len() < pos + len {
        return None;
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    Some((RawFrame { fin, rsv, opcode, payload }, pos + len))
}
