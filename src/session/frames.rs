//! Reading whole messages off a server-side WebSocket (RFC 6455, client frames): frames are
//! parsed out of one buffer (so a read is cancel-safe and costs no allocation per frame),
//! checked (mask, reserved bits, opcodes, control-frame rules, sizes before the payload is
//! read), reassembled under a whole-message limit, and close frames validated. After a violation
//! the socket is drained so that the close frame reaches the peer before the connection drops.
//!
//! This replaces fastwebsockets' reader, whose fixed 8 KiB buffer per connection was the largest
//! part of an idle connection's memory: here an idle connection holds a few hundred bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// One complete application-level input.
#[derive(Debug)]
pub enum Input {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer's close frame (its code, if it gave one).
    Close(Option<u16>),
}

/// Why reading ended without a usable input.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A violation: close with this code.
    Violation(u16, &'static str),
    /// The transport ended or failed: nothing more can be sent.
    Gone,
}

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// What an idle connection keeps for reading: the first read after a quiet spell is small.
const IDLE_READ: usize = 256;
/// Reads after that take up to this much at once.
const BUSY_READ: usize = 16 << 10;

fn allowed_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A parsed frame header: where the payload is in the buffer, and what it is.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    head: usize,
    len: usize,
}

/// Parses the header at the start of `buf`; `Ok(None)` until the whole header is there. Checks
/// everything that can be checked before the payload arrives.
fn header(buf: &[u8], max: usize) -> Result<Option<Header>, ReadError> {
    use ReadError::Violation;
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(Violation(1002, "reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if !matches!(opcode, OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(Violation(1002, "invalid opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(Violation(1002, "unmasked client frame"));
    }
    let control = opcode >= OP_CLOSE;
    if control && !fin {
        return Err(Violation(1002, "fragmented control frame"));
    }
    let (len, ext) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 8),
        126 | 127 => return Ok(None),
        n => (n as u64, 0),
    };
    if control && len > 125 {
        return Err(Violation(1002, "control frame too large"));
    }
    if len > max as u64 {
        return Err(Violation(1009, "message too big"));
    }
    let head = 2 + ext + 4;
    if buf.len() < head {
        return Ok(None);
    }
    let mask = [buf[head - 4], buf[head - 3], buf[head - 2], buf[head - 1]];
    Ok(Some(Header { fin, opcode, mask, head, len: len as usize }))
}

/// Reads whole messages from a server-side socket.
pub struct MessageReader<R> {
    read: R,
    buf: BytesMut,
    max: usize,
    partial: Option<(u8, Vec<u8>)>,
    /// Set on every whole frame received (a fragment too), for the heartbeat's liveness.
    seen: Option<Arc<AtomicBool>>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    pub fn new(read: R, max_message_bytes: usize) -> Self {
        MessageReader { read, buf: BytesMut::new(), max: max_message_bytes, partial: None, seen: None }
    }

    /// Marks `flag` on every frame received, before a message is complete: a peer sending a
    /// long fragmented message is alive.
    pub fn with_seen(mut self, flag: Arc<AtomicBool>) -> Self {
        self.seen = Some(flag);
        self
    }

    /// Reads and discards until the peer closes (bounded by the caller's timeout), so that a
    /// close frame already sent is not destroyed by a reset.
    pub async fn drain(&mut self) {
        self.buf = BytesMut::new();
        let mut scratch = [0u8; 1024];
        while let Ok(n) = self.read.read(&mut scratch).await {
            if n == 0 {
                return;
            }
        }
    }

    /// More bytes into the buffer. An empty buffer is given back first and the read is small,
    /// so that a connection waiting for its next message holds almost nothing.
    async fn fill(&mut self, need: usize) -> Result<(), ReadError> {
        if self.buf.is_empty() && self.buf.capacity() > IDLE_READ {
            self.buf = BytesMut::new();
        }
        // Mid-message or mid-burst: read in bigger steps.
        let want = if self.buf.is_empty() { IDLE_READ } else { need.clamp(4096, BUSY_READ) };
        self.buf.reserve(want);
        match self.read.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(ReadError::Gone),
            Ok(_) => Ok(()),
        }
    }

    /// The next frame: (fin, opcode, unmasked payload).
    async fn frame(&mut self) -> Result<(bool, u8, Vec<u8>), ReadError> {
        loop {
            if let Some(h) = header(&self.buf, self.max)? {
                let total = h.head + h.len;
                if self.buf.len() >= total {
                    let mut payload = self.buf[h.head..total].to_vec();
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= h.mask[i & 3];
                    }
                    self.buf.advance(total);
                    if let Some(seen) = &self.seen {
                        seen.store(true, Ordering::Relaxed);
                    }
                    return Ok((h.fin, h.opcode, payload));
                }
                self.fill(total - self.buf.len()).await?;
            } else {
                self.fill(14).await?;
            }
        }
    }

    pub async fn next(&mut self) -> Result<Input, ReadError> {
        use ReadError::Violation;
        loop {
            let (fin, opcode, payload) = self.frame().await?;
            match opcode {
                OP_CLOSE => {
                    return match payload.len() {
                        0 => Ok(Input::Close(None)),
                        1 => Err(Violation(1002, "bad close frame")),
                        _ => {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            if !allowed_close_code(code) {
                                Err(Violation(1002, "invalid close code"))
                            } else if std::str::from_utf8(&payload[2..]).is_err() {
                                Err(Violation(1007, "invalid UTF-8 in close reason"))
                            } else {
                                Ok(Input::Close(Some(code)))
                            }
                        }
                    };
                }
                OP_PING => return Ok(Input::Ping(payload)),
                OP_PONG => return Ok(Input::Pong(payload)),
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(Violation(1002, "new message inside a fragmented one"));
                    }
                    if fin {
                        return finish(opcode, payload);
                    }
                    self.partial = Some((opcode, payload));
                }
                _ => {
                    let Some((op, mut buf)) = self.partial.take() else {
                        return Err(Violation(1002, "continuation without a message"));
                    };
                    if buf.len() + payload.len() > self.max {
                        return Err(Violation(1009, "message too big"));
                    }
                    buf.extend_from_slice(&payload);
                    if fin {
                        return finish(op, buf);
                    }
                    self.partial = Some((op, buf));
                }
            }
        }
    }
}

fn finish(op: u8, payload: Vec<u8>) -> Result<Input, ReadError> {
    if op == OP_BINARY {
        return Ok(Input::Binary);
    }
    String::from_utf8(payload).map(Input::Text).map_err(|_| ReadError::Violation(1007, "invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(fin as u8) << 7 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65_535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [1, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<String, ReadError>> {
        let mut r = MessageReader::new(&bytes[..], max);
        let mut out = vec![];
        loop {
            match r.next().await {
                Ok(Input::Text(t)) => out.push(Ok(t)),
                Ok(other) => out.push(Ok(format!("{other:?}"))),
                Err(ReadError::Gone) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn frames_of_every_size_and_fragments_are_read() {
        let big = "x".repeat(70_000);
        let mut b = masked(true, OP_TEXT, b"hi");
        b.extend(masked(true, OP_TEXT, "y".repeat(300).as_bytes()));
        b.extend(masked(true, OP_TEXT, big.as_bytes()));
        b.extend(masked(false, OP_TEXT, b"frag"));
        b.extend(masked(true, OP_PING, b"p"));
        b.extend(masked(true, OP_CONTINUATION, b"ment"));
        let got = read_all(b, 100_000).await;
        assert_eq!(got[0], Ok("hi".to_string()));
        assert_eq!(got[1], Ok("y".repeat(300)));
        assert_eq!(got[2], Ok(big));
        assert_eq!(got[3], Ok("Ping([112])".to_string()));
        assert_eq!(got[4], Ok("fragment".to_string()));
    }

    #[tokio::test]
    async fn violations_get_their_close_codes() {
        let mut unmasked = masked(true, OP_TEXT, b"hi");
        unmasked[1] &= 0x7f;
        let mut rsv = masked(true, OP_TEXT, b"hi");
        rsv[0] |= 0x40;
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, 1002),
            (rsv, 1002),
            (masked(true, 3, b""), 1002),
            (masked(false, OP_PING, b""), 1002),
            (masked(true, OP_PING, &[0; 126]), 1002),
            (masked(true, OP_TEXT, &[b'a'; 11]), 1009),
            (masked(true, OP_TEXT, &[0xff]), 1007),
            (masked(true, OP_CONTINUATION, b"a"), 1002),
            (masked(true, OP_CLOSE, &[0x03, 0xed]), 1002),
        ];
        for (bytes, code) in cases {
            let got = read_all(bytes, 10).await;
            assert!(
                matches!(got.last(), Some(Err(ReadError::Violation(c, _))) if *c == code),
                "want {code}, got {got:?}"
            );
        }
    }
}
