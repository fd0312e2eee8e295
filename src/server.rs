//! Accepting connections: TCP accept, TLS handshake (in the connection's own task, under the
//! handshake limit), HTTP/1.1 with upgrades; and the shutdown sequence.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::http::{self, App};

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
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
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
                        serve_http(stream, app, left, shutdown).await
                    }
                    Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                },
                None => serve_http(tcp, app, handshake, shutdown).await,
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

async fn serve_http<S>(io: S, app: Arc<App>, handshake: Duration, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let svc = service_fn(move |req| http::handle(app.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!("http connection: {e}") } }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}
