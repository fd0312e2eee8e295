//! One WebSocket connection: a reader task (frames -> handler -> hub), a writer task (outbox ->
//! socket), and this supervisor, which owns the timers (auth deadline, token expiry) and the
//! shutdown signal, and ends the connection cleanly: close frame first, socket dropped after.

mod frames;
mod handler;
mod writer;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::config::Limits;
use crate::hub::{Conn, Hub};
use crate::outbox::Outbox;
use crate::protocol;
use crate::wire;

pub use frames::{Input, MessageReader, ReadError};
use handler::{AuthClock, Flow, Session};

/// What every session shares.
pub struct Env {
    pub hub: Arc<Hub>,
    pub verifier: Arc<Verifier>,
    pub limits: Limits,
}

/// What the upgrade request told us.
pub struct Upgrade {
    /// From `Authorization: Bearer` or `?token=`.
    pub token: Option<String>,
    /// The client offered `natter.v1`.
    pub v1: bool,
}

/// How long a closing connection may take to get its queue and close frame out.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Runs one connection to its end.
pub async fn run<S>(io: S, env: Arc<Env>, up: Upgrade, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let l = &env.limits;
    let outbox = Arc::new(Outbox::new(l.outbound_max_messages, l.outbound_max_bytes));
    let conn = env.hub.register(outbox.clone());
    let clock = Arc::new(AuthClock::default());
    let mut writer = tokio::spawn(writer::run(w, outbox.clone()));
    let mut reader = tokio::spawn(read_loop(r, env.clone(), conn.clone(), clock.clone(), up));

    let auth_deadline = Instant::now() + l.auth_timeout;
    let mut warned_exp = 0u64;
    let mut reader_done = false;
    let mut writer_done = false;
    loop {
        let exp = clock.exp_ms.load(Ordering::Relaxed);
        let wake = if exp == 0 {
            auth_deadline
        } else {
            let at = Instant::now() + Duration::from_millis(exp.saturating_sub(crate::now_ms()));
            if warned_exp == exp {
                at + l.expiry_grace
            } else {
                at
            }
        };
        tokio::select! {
            _ = &mut reader => { reader_done = true; break }
            _ = &mut writer => { writer_done = true; break }
            _ = outbox.closing() => break,
            _ = shutdown.cancelled() => { outbox.close(1001, "server shutting down"); break }
            _ = clock.changed.notified() => continue,
            _ = sleep_until(wake) => {
                if exp == 0 {
                    outbox.close(1008, "authentication timeout");
                } else if warned_exp != exp {
                    warned_exp = exp;
                    conn.outbox.push(wire::text(&protocol::noauth("token expired")));
                } else {
                    outbox.close(1008, "token expired");
                }
            }
        }
    }
    finish(&outbox, &env, &mut reader, &mut writer, reader_done, writer_done).await;
}

/// The closing phase: let the writer send what is queued and the close frame, let the reader
/// see the peer's close, all within `CLOSE_GRACE`; then drop everything.
async fn finish(
    outbox: &Outbox,
    env: &Env,
    reader: &mut tokio::task::JoinHandle<()>,
    writer: &mut tokio::task::JoinHandle<std::io::Result<u16>>,
    mut reader_done: bool,
    mut writer_done: bool,
) {
    // The reader ended without asking for a close: the peer is gone, nothing to send.
    let peer_gone = reader_done && !outbox.is_closing();
    if !peer_gone {
        let deadline = Instant::now() + CLOSE_GRACE;
        if !writer_done {
            writer_done = tokio::time::timeout_at(deadline, &mut *writer).await.is_ok();
        }
        if !reader_done {
            let until = deadline.min(Instant::now() + Duration::from_secs(2));
            reader_done = tokio::time::timeout_at(until, &mut *reader).await.is_ok();
        }
    }
    if let Some(c) = outbox.close_request().filter(|c| c.code != crate::outbox::ABANDONED) {
        env.hub.metrics().closed(c.code);
    }
    if !writer_done {
        writer.abort();
    }
    if !reader_done {
        reader.abort();
        // Wait for it so its session (rooms, uid slot) is released before we return.
        let _ = (&mut *reader).await;
    }
}

async fn read_loop<R: AsyncRead + Unpin>(r: R, env: Arc<Env>, conn: Arc<Conn>, clock: Arc<AuthClock>, up: Upgrade) {
    let mut frames = MessageReader::new(r, env.limits.max_message_bytes).with_seen(conn.seen_flag());
    let mut session = Session::new(env.clone(), conn.clone(), clock, up.v1);
    if let Some(t) = up.token {
        if let Flow::Close(code, why) = session.on_token(&t).await {
            conn.outbox.close(code, why);
        }
    }
    loop {
        let input = frames.next().await;
        let closing = conn.outbox.is_closing();
        let flow = match input {
            Err(ReadError::Gone) => return,
            Err(ReadError::Violation(code, why)) => {
                conn.outbox.close(code, why);
                let _ = tokio::time::timeout(Duration::from_secs(2), frames.drain()).await;
                return;
            }
            Ok(Input::Close(code)) => {
                // Echo the peer's close (or complete ours), then we are done reading.
                let echo = match code {
                    Some(c) if c != 1005 => c,
                    _ => 1000,
                };
                conn.outbox.close(echo, "");
                return;
            }
            // Evidence that the client has what was sent before our ping, even while closing.
            Ok(Input::Pong(p)) => {
                session.on_pong(&p);
                Flow::Continue
            }
            Ok(_) if closing => Flow::Continue,
            Ok(Input::Ping(p)) => {
                conn.outbox.push(wire::pong(&p));
                Flow::Continue
            }
            Ok(Input::Binary) => {
                session.on_binary();
                Flow::Continue
            }
            Ok(Input::Text(t)) => session.on_text(&t).await,
        };
        if let Flow::Close(code, why) = flow {
            conn.outbox.close(code, why);
        }
    }
}
