//! Accepting connections: TCP accept (admission: serve, refuse with 503, or close at once), TLS
//! handshake (in the connection's own task, under the handshake limit), HTTP/1.1 with upgrades
//! and request head limits; and the shutdown sequence.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admission::{AcceptErrors, Ticket, ACCEPT_BACKOFF};
use crate::http::{self, App};

/// Largest request head (request line and headers), bytes: hyper's read buffer, so also what
/// a connection's head may cost in memory. Tokens longer than `--max-token-bytes` (8 KiB) do
/// not fit in a query or header anyway. Over it: 431, and the connection closes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in a request (browsers send about 20). Over it: 431.
const MAX_HEADERS: usize = 64;

/// Accepts until `shutdown` fires, then waits (bounded by `drain`) for every connection and
/// session to end; true when they all did. Sessions send close 1001 themselves when they see
/// `shutdown`.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    handshake: Duration,
    shutdown: CancellationToken,
    drain: Duration,
) -> bool {
    let conns = tokio_util::task::TaskTracker::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if accept_errors.failed(&e, app.env.hub.metrics()) {
                        tokio::select! {
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                            _ = shutdown.cancelled() => break,
                        }
                    }
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let ticket = match app.admission.admit(peer.ip()) {
            Ok(t) => Arc::new(t),
            Err(reason) => {
                // Far over a limit: not even a 503 (over TLS, a handshake) can be afforded.
                tracing::debug!("closed {peer} unread: over {}", reason.label());
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let handshake = ticket.handshake_limit(handshake);
        conns.spawn(async move {
            let accepted = tokio::time::Instant::now();
            match tls {
                // A handshake still pending at shutdown is dropped: it must not hold the drain up
                // (past it the id reservations would not be released).
                Some(acceptor) => match tokio::select! {
                    r = tokio::time::timeout(handshake, acceptor.accept(tcp)) => r,
                    _ = shutdown.cancelled() => return,
                } {
                    Ok(Ok(stream)) => {
                        // TLS and the HTTP request share one limit.
                        let left = handshake.saturating_sub(accepted.elapsed()).max(Duration::from_millis(1));
                        serve_http(stream, app, ticket, left, shutdown).await
                    }
                    Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                },
                None => serve_http(tcp, app, ticket, handshake, shutdown).await,
            }
        });
    }
    drop(listener);
    conns.close();
    app.sessions.close();
    let all = async {
        conns.wait().await;
        app.sessions.wait().await;
    };
    let drained = tokio::time::timeout(drain, all).await.is_ok();
    if !drained {
        tracing::warn!("some connections did not close in time");
    }
    drained
}

async fn serve_http<S>(io: S, app: Arc<App>, ticket: Arc<Ticket>, handshake: Duration, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        // A refused socket gets one answer, then its slot comes free.
        .keep_alive(!ticket.is_refused());
    let svc = service_fn(move |req| http::handle(app.clone(), ticket.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!("http connection: {e}") } }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}
