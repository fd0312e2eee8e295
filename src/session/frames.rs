//! Reading whole messages off a WebSocket: fastwebsockets parses frames; this adds what it
//! leaves out: rejecting unmasked client frames, reassembling fragments under a whole-message
//! size limit, validating close frames, and draining the socket after a violation so that the
//! close frame reaches the peer before the connection is dropped.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use fastwebsockets::{OpCode, Role, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, ReadBuf};

/// One complete application-level input.
#[derive(Debug)]
pub enum Input {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
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

#[derive(Debug)]
struct Unmasked;
impl std::fmt::Display for Unmasked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unmasked client frame")
    }
}
impl std::error::Error for Unmasked {}

/// Watches frame headers go by (without buffering payloads) and fails the read on an
/// unmasked client frame, which fastwebsockets accepts. In drain mode it discards everything.
pub struct MaskCheck<R> {
    inner: R,
    header: [u8; 14],
    have: usize,
    skip: u64,
    drain: Arc<AtomicBool>,
}

impl<R> MaskCheck<R> {
    pub fn new(inner: R, drain: Arc<AtomicBool>) -> Self {
        MaskCheck { inner, header: [0; 14], have: 0, skip: 0, drain }
    }

    /// Feeds bytes just read; Err on an unmasked frame header.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Unmasked> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have < 2 {
                continue;
            }
            let masked = self.header[1] & 0x80 != 0;
            if !masked {
                return Err(Unmasked);
            }
            let ext = match self.header[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            if self.have < 2 + ext + 4 {
                continue;
            }
            self.skip = match ext {
                0 => (self.header[1] & 0x7f) as u64,
                2 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                _ => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            };
            self.have = 0;
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MaskCheck<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.drain.load(Ordering::Relaxed) {
            let mut scratch = [0u8; 4096];
            loop {
                let mut rb = ReadBuf::new(&mut scratch);
                match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => continue,
                    other => return other,
                }
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if let Err(e) = this.scan(&buf.filled()[before..]) {
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
            }
        }
        res
    }
}

fn allowed_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Reads whole messages from a server-side socket.
pub struct MessageReader<R> {
    ws: WebSocketRead<MaskCheck<R>>,
    drain: Arc<AtomicBool>,
    max: usize,
    partial: Option<(OpCode, Vec<u8>)>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    pub fn new(read: R, max_message_bytes: usize) -> Self {
        let drain = Arc::new(AtomicBool::new(false));
        let (mut ws, _) =
            fastwebsockets::after_handshake_split(MaskCheck::new(read, drain.clone()), tokio::io::sink(), Role::Server);
        ws.set_auto_close(false);
        ws.set_auto_pong(false);
        // fastwebsockets refuses a frame whose length is >= this; the limit itself is allowed.
        ws.set_max_message_size(max_message_bytes + 1);
        MessageReader { ws, drain, max: max_message_bytes, partial: None }
    }

    /// Reads and discards until the peer closes (bounded by the caller's timeout), so that a
    /// close frame already sent is not destroyed by a reset.
    pub async fn drain(&mut self) {
        self.drain.store(true, Ordering::Relaxed);
        let mut noop = |_: fastwebsockets::Frame<'_>| async { Ok::<(), std::io::Error>(()) };
        let _ = self.ws.read_frame(&mut noop).await;
    }

    pub async fn next(&mut self) -> Result<Input, ReadError> {
        use ReadError::Violation;
        loop {
            let mut noop = |_: fastwebsockets::Frame<'_>| async { Ok::<(), std::io::Error>(()) };
            let frame = self.ws.read_frame(&mut noop).await.map_err(map_error)?;
            match frame.opcode {
                OpCode::Close => {
                    let p = &frame.payload[..];
                    if p.len() > 125 {
                        return Err(Violation(1002, "control frame too large"));
                    }
                    return match p.len() {
                        0 => Ok(Input::Close(None)),
                        1 => Err(Violation(1002, "bad close frame")),
                        _ => {
                            let code = u16::from_be_bytes([p[0], p[1]]);
                            if !allowed_close_code(code) {
                                Err(Violation(1002, "invalid close code"))
                            } else if std::str::from_utf8(&p[2..]).is_err() {
                                Err(Violation(1007, "invalid UTF-8 in close reason"))
                            } else {
                                Ok(Input::Close(Some(code)))
                            }
                        }
                    };
                }
                OpCode::Ping => return Ok(Input::Ping(frame.payload.to_vec())),
                OpCode::Pong => {
                    if frame.payload.len() > 125 {
                        return Err(Violation(1002, "control frame too large"));
                    }
                    return Ok(Input::Pong);
                }
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        return Err(Violation(1002, "new message inside a fragmented one"));
                    }
                    if frame.fin {
                        return finish(frame.opcode, frame.payload.to_vec());
                    }
                    self.partial = Some((frame.opcode, frame.payload.to_vec()));
                }
                OpCode::Continuation => {
                    let Some((op, mut buf)) = self.partial.take() else {
                        return Err(Violation(1002, "continuation without a message"));
                    };
                    if buf.len() + frame.payload.len() > self.max {
                        return Err(Violation(1009, "message too big"));
                    }
                    buf.extend_from_slice(&frame.payload);
                    if frame.fin {
                        return finish(op, buf);
                    }
                    self.partial = Some((op, buf));
                }
            }
        }
    }
}

fn finish(op: OpCode, payload: Vec<u8>) -> Result<Input, ReadError> {
    if op == OpCode::Binary {
        return Ok(Input::Binary);
    }
    String::from_utf8(payload).map(Input::Text).map_err(|_| ReadError::Violation(1007, "invalid UTF-8"))
}

fn map_error(e: WebSocketError) -> ReadError {
    use ReadError::Violation;
    match e {
        WebSocketError::FrameTooLarge => Violation(1009, "message too big"),
        WebSocketError::InvalidUTF8 => Violation(1007, "invalid UTF-8"),
        WebSocketError::ReservedBitsNotZero => Violation(1002, "reserved bits set"),
        WebSocketError::ControlFrameFragmented => Violation(1002, "fragmented control frame"),
        WebSocketError::PingFrameTooLarge => Violation(1002, "control frame too large"),
        WebSocketError::InvalidFragment | WebSocketError::InvalidValue => Violation(1002, "invalid opcode"),
        WebSocketError::InvalidCloseFrame | WebSocketError::InvalidCloseCode => Violation(1002, "bad close frame"),
        WebSocketError::IoError(io) if io.get_ref().is_some_and(|i| i.is::<Unmasked>()) => {
            Violation(1002, "unmasked client frame")
        }
        _ => ReadError::Gone,
    }
}
