//! Group commit: acks wait for a store flush, and one flush serves every ack waiting when it
//! starts. Writes always happen before their ack is registered, so a flush that starts after
//! the registration covers the write.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::store::Store;

#[derive(Default)]
pub struct GroupCommit {
    pending: Mutex<Vec<(Arc<Outbox>, Bytes)>>,
    wake: Notify,
}

impl GroupCommit {
    /// Queues `frame` (an `ack`) to `outbox` once everything written so far is durable.
    pub fn after_flush(&self, outbox: Arc<Outbox>, frame: Bytes) {
        self.pending.lock().unwrap().push((outbox, frame));
        self.wake.notify_one();
    }

    /// The flusher task: one flush at a time, each for every ack registered before it began.
    /// Returns when `shutdown` fires and nothing is pending.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let batch = std::mem::take(&mut *self.pending.lock().unwrap());
            if batch.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            match store.flush().await {
                Ok(()) => {
                    metrics.acks.add(batch.len() as u64);
                    for (outbox, frame) in batch {
                        outbox.push(frame);
                    }
                }
                Err(e) => {
                    tracing::error!("store flush failed: {e:#}");
                    let err = crate::wire::text(&crate::protocol::error(
                        crate::protocol::ErrorCode::Internal,
                        "the message could not be stored durably",
                    ));
                    for (outbox, _) in batch {
                        outbox.push(err.clone());
                    }
                }
            }
        }
    }
}
