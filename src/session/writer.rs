//! The writer task: the only place that writes to a connection's socket. It takes every frame
//! queued since its last pass and writes them as one batch (one syscall, one TLS flush), then
//! sends the close frame once a close is requested and the queue is drained.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::outbox::Outbox;
use crate::wire;

/// Largest list of frames kept between passes: a burst may grow it, but a connection keeps
/// little (10,000 idle connections are a target: each kilobyte kept costs 10 MB).
const KEEP_FRAMES: usize = 32;
/// A batch this large is written at once; a smaller one waits one scheduler pass for more.
const BATCH_ENOUGH: usize = 16;
/// Idle this long, a connection's buffers are released.
const COMPACT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns the close code sent, or the I/O error that ended the connection (the outbox is then
/// abandoned: what is pushed later is dropped, not counted as delivered).
pub async fn run<W: AsyncWrite + Unpin>(w: W, outbox: Arc<Outbox>) -> std::io::Result<u16> {
    let res = write_loop(w, &outbox).await;
    if res.is_err() {
        outbox.abandon();
    }
    res
}

/// Writes every frame with as few `writev` calls as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, frames: &[Bytes]) -> std::io::Result<()> {
    /// Slices per call; Linux takes up to 1024 (IOV_MAX).
    const MAX_IOV: usize = 512;
    let mut first = 0; // the first frame not fully written
    let mut offset = 0; // bytes of it already written
    while first < frames.len() {
        let end = frames.len().min(first + MAX_IOV);
        let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(end - first);
        slices.push(std::io::IoSlice::new(&frames[first][offset..]));
        slices.extend(frames[first + 1..end].iter().map(|f| std::io::IoSlice::new(f)));
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < frames.len() {
            let left = frames[first].len() - offset;
            if n >= left {
                n -= left;
                first += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, outbox: &Outbox) -> std::io::Result<u16> {
    let mut frames: Vec<Bytes> = Vec::new();
    loop {
        // A connection idle for a while gives its buffers back: with 10,000 idle connections
        // every kilobyte kept is 10 MB. Under load the wait never runs out, and nothing shrinks.
        let next = match tokio::time::timeout(COMPACT_AFTER, outbox.take(&mut frames)).await {
            Ok(next) => next,
            Err(_) => {
                frames = Vec::new();
                outbox.compact();
                outbox.take(&mut frames).await
            }
        };
        match next {
            None => {
                // Let the tasks already runnable go first (the other readers of this tick,
                // whose publishes are likely to reach this connection too), then take what they
                // queued into the same write. A write costs a syscall and, on loopback or in a
                // VM, a wake-up of the peer: in rooms of 2 to 5 it was the server's biggest cost
                // (BENCHMARKS.md). Deferred tasks run again when the worker next polls for I/O
                // (at most 61 task polls later, at once when it has nothing else to do).
                if frames.len() < BATCH_ENOUGH {
                    tokio::task::yield_now().await;
                    outbox.take_more(&mut frames);
                }
                // One vectored write from the shared frames, no copy in between (over TLS, rustls
                // packs the slices into full records as it encrypts them).
                write_all_vectored(&mut w, &frames).await?;
                frames.clear();
                frames.shrink_to(KEEP_FRAMES);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most `per_call` bytes a call, vectored, like a socket with a small buffer.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
            let n = b.len().min(self.per_call);
            self.out.extend_from_slice(&b[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut left = self.per_call;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                (left, n) = (left - take, n + take);
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_vectored_writes_keep_every_byte_in_order() {
        let frames: Vec<Bytes> =
            (0..700u32).map(|i| Bytes::from(format!("frame {i};").repeat(1 + i as usize % 3))).collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for per_call in [1, 7, 100, 1 << 20] {
            let mut w = Trickle { out: vec![], per_call };
            write_all_vectored(&mut w, &frames).await.unwrap();
            assert_eq!(w.out, expected, "per_call {per_call}");
        }
    }
}
