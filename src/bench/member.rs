//! One simulated chat user: connects, authenticates, logs in to its room, then a reader task
//! hands every text frame to the scenario's `Handler` and a writer task sends what the scenario
//! queues, many frames per write. It needs only what every peer has: `auth`, `login`, the
//! `login` broadcast coming back, `message`, and heartbeat pongs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::client::{self, Target, OP_CLOSE, OP_PING, OP_TEXT};

/// What a scenario does with the text frames a member receives (after its own login came back).
pub trait Handler: Send + Sync + 'static {
    fn on_text(&self, member: u32, frame: &[u8]);
    /// The server closed the connection (close frame code, or 1006 when the socket just ended)
    /// without the member asking to.
    fn on_close(&self, member: u32, code: u16) {
        let _ = (member, code);
    }
}

/// How a member introduces itself.
pub struct Identity {
    pub index: u32,
    pub token: String,
    pub room: String,
}

/// The sending side of a joined member. Dropping it closes the connection.
pub struct Member {
    pub index: u32,
    room: String,
    tx: mpsc::UnboundedSender<Bytes>,
    reader: tokio::task::JoinHandle<()>,
    /// Set before the member closes on purpose, so the reader does not report that close.
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl Member {
    /// Queue a `message` event; `text` is a bench payload (ASCII, nothing to escape), with a
    /// cid when given (ASCII too). Each client frame carries a mask of its own, so it is
    /// encoded here, per member.
    pub fn say(&self, text: &str, cid: Option<&str>) -> bool {
        let event = match cid {
            Some(cid) => format!(r#"{{"event":"message","roomid":"{}","message":"{text}","cid":"{cid}"}}"#, self.room),
            None => format!(r#"{{"event":"message","roomid":"{}","message":"{text}"}}"#, self.room),
        };
        self.tx.send(client::text_frame(event.as_bytes())).is_ok()
    }

    /// Queue any event (JSON text).
    pub fn send_json(&self, event: &str) -> bool {
        self.tx.send(client::text_frame(event.as_bytes())).is_ok()
    }

    /// Close the connection (close frame 1000) and wait until the server has closed its side.
    pub async fn close(self) {
        self.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.tx.send(Bytes::new());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.reader).await;
    }
}

pub fn name_of(index: u32) -> String {
    format!("b{index}")
}

/// Connect and join; returns once the member's own `login` broadcast has come back.
pub async fn join(
    target: &Target,
    source: Option<IpAddr>,
    id: Identity,
    handler: Arc<dyn Handler>,
    timeout: Duration,
) -> anyhow::Result<Member> {
    tokio::time::timeout(timeout, join_inner(target, source, id, handler))
        .await
        .context("timed out joining (connect, TLS, upgrade, auth, login)")?
}

async fn join_inner(
    target: &Target,
    source: Option<IpAddr>,
    id: Identity,
    handler: Arc<dyn Handler>,
) -> anyhow::Result<Member> {
    let (mut stream, mut buf) = client::connect(target, source).await?;
    let name = name_of(id.index);
    let auth = serde_json::json!({ "event": "auth", "message": id.token }).to_string();
    let login = serde_json::json!({ "event": "login", "name": name, "roomid": id.room, "uid": name }).to_string();
    let mut out = BytesMut::new();
    client::encode(&mut out, OP_TEXT, auth.as_bytes());
    client::encode(&mut out, OP_TEXT, login.as_bytes());
    stream.write_all(&out).await?;
    stream.flush().await?;
    let own_login = format!(r#""name":"{name}""#);
    'joined: loop {
        while let Some(f) = client::parse(&buf)? {
            let payload = &buf[f.start..f.end];
            if f.opcode == OP_CLOSE {
                bail!("closed by the server while joining: {}", String::from_utf8_lossy(payload));
            }
            let joined = f.opcode == OP_TEXT
                && client::find(payload, br#""event":"login""#).is_some()
                && client::find(payload, own_login.as_bytes()).is_some();
            buf.advance(f.end);
            if joined {
                break 'joined;
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed while joining");
        }
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let pong_tx = tx.clone();
    let index = id.index;
    let room = id.room.clone();
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ours = closing.clone();
    let reader = tokio::spawn(async move {
        let closed = |code: u16| {
            if !ours.load(std::sync::atomic::Ordering::Relaxed) {
                handler.on_close(index, code);
            }
        };
        // The reader: frames out of one buffer, no allocation per frame.
        loop {
            loop {
                let f = match client::parse(&buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => return,
                };
                let payload = &buf[f.start..f.end];
                match f.opcode {
                    OP_TEXT if f.fin => {
                        if client::find(payload, br#""message":"ping""#).is_some()
                            && client::find(payload, br#""event":"heartbeat""#).is_some()
                        {
                            let _ = pong_tx.send(client::text_frame(br#"{"event":"heartbeat","message":"pong"}"#));
                        } else {
                            handler.on_text(index, payload);
                        }
                    }
                    OP_PING => {
                        let mut b = BytesMut::new();
                        client::encode(&mut b, 0xA, payload);
                        let _ = pong_tx.send(b.freeze());
                    }
                    OP_CLOSE => {
                        let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])).unwrap_or(1005);
                        return closed(code);
                    }
                    _ => {}
                }
                buf.advance(f.end);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return closed(1006),
                Ok(_) => {}
            }
        }
    });
    tokio::spawn(async move {
        // The writer: everything queued since the last pass in one write.
        // An empty entry is the close request.
        let mut out = BytesMut::new();
        while let Some(first) = rx.recv().await {
            let mut close = first.is_empty();
            out.extend_from_slice(&first);
            while !close {
                match rx.try_recv() {
                    Ok(more) if more.is_empty() => close = true,
                    Ok(more) => out.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if close {
                client::encode(&mut out, OP_CLOSE, &1000u16.to_be_bytes());
                let _ = wr.write_all(&out).await;
                let _ = wr.flush().await;
                return;
            }
            if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            out.clear();
        }
        let _ = wr.shutdown().await;
    });
    Ok(Member { index, room, tx, reader, closing })
}
