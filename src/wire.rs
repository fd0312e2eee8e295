//! WebSocket frames as the server sends them: encoded once, whole (header and payload), so the
//! same bytes can be queued to every recipient and written in batches.

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};

fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut f = Frame::new(true, opcode, None, Payload::Borrowed(payload));
    let mut head = [0u8; 16];
    let n = f.fmt_head(&mut head);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A text frame holding one JSON object.
pub fn text(json: &[u8]) -> Bytes {
    frame(OpCode::Text, json)
}

/// A close frame; the reason is cut to fit the 125-byte control frame limit.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(OpCode::Close, &payload)
}

pub fn pong(payload: &[u8]) -> Bytes {
    frame(OpCode::Pong, payload)
}

pub fn ping(payload: &[u8]) -> Bytes {
    frame(OpCode::Ping, payload)
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_have_rfc6455_headers() {
        assert_eq!(&super::text(b"{}")[..], &[0x81, 2, b'{', b'}']);
        let big = super::text(&[b'a'; 300]);
        assert_eq!(&big[..4], &[0x81, 126, 1, 44]);
        assert_eq!(&super::close(1000, "")[..], &[0x88, 2, 0x03, 0xe8]);
    }
}
