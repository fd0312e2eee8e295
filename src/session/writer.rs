//! The writer task: the only place that writes to a connection's socket. It takes every frame
//! queued since its last pass and writes them as one batch (one syscall, one TLS flush), then
//! sends the close frame once a close is requested and the queue is drained.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::outbox::Outbox;
use crate::wire;

/// Largest batch buffer kept between passes; a burst may grow it, idle connections shrink it.
const KEEP_BUFFER: usize = 64 << 10;

/// Returns the close code sent, or the I/O error that ended the connection (the outbox is then
/// abandoned: what is pushed later is dropped, not counted as delivered).
pub async fn run<W: AsyncWrite + Unpin>(w: W, outbox: Arc<Outbox>) -> std::io::Result<u16> {
    let res = write_loop(w, &outbox).await;
    if res.is_err() {
        outbox.abandon();
    }
    res
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, outbox: &Outbox) -> std::io::Result<u16> {
    let mut frames: Vec<Bytes> = Vec::new();
    let mut batch: Vec<u8> = Vec::new();
    loop {
        match outbox.take(&mut frames).await {
            None => {
                if frames.len() == 1 {
                    w.write_all(&frames[0]).await?;
                } else {
                    for f in &frames {
                        batch.extend_from_slice(f);
                    }
                    w.write_all(&batch).await?;
                    batch.clear();
                    if batch.capacity() > KEEP_BUFFER {
                        batch = Vec::new();
                    }
                }
                frames.clear();
                // fastwebsockets never flushes, and through TLS the bytes may wait in rustls.
                w.flush().await?;
                outbox.written();
            }
            Some(close) => {
                w.write_all(&wire::close(close.code, &close.reason)).await?;
                w.flush().await?;
                let _ = w.shutdown().await;
                return Ok(close.code);
            }
        }
    }
}
