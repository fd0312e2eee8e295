//! Group commit: acks wait for a store flush, and one flush serves every ack waiting when it
//! starts. Writes always happen before their ack is registered, so a flush that starts after
//! the registration covers the write.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::store::Store;
use crate::sync::LockExt;

type Waiting = Vec<(Arc<Outbox>, Bytes)>;

#[derive(Default)]
pub struct GroupCommit {
    pending: Mutex<Waiting>,
    /// The batch of the flush under way: kept here, not in the task, so that a flusher that
    /// dies mid-flush leaves it to its successor instead of losing those acks.
    flushing: Mutex<Waiting>,
    wake: Notify,
}

impl GroupCommit {
    /// Queues `frame` (an `ack`) to `outbox` once everything written so far is durable.
    pub fn after_flush(&self, outbox: Arc<Outbox>, frame: Bytes) {
        self.pending.locked().push((outbox, frame));
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
            let idle = {
                let mut f = self.flushing.locked();
                if f.is_empty() {
                    *f = std::mem::take(&mut *self.pending.locked());
                }
                f.is_empty()
            };
            if idle {
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            let flushed = store.flush().await;
            // Taken only once the flush is over: a flusher that dies before leaves it here.
            let batch = std::mem::take(&mut *self.flushing.locked());
            match flushed {
                Ok(()) => {
                    metrics.acks.add(batch.len() as u64);
                    for (outbox, frame) in batch {
                        outbox.push(frame);
                    }
                }
                Err(e) => {
                    // Nothing is acked that is not on disk. The writes stay in the store's
                    // memory: a resend with the same `cid` is acked once a flush succeeds.
                    tracing::error!("store flush failed: {e:#}");
                    let err = crate::wire::text(&crate::protocol::error(
                        crate::protocol::ErrorCode::Unavailable,
                        "the message could not be stored durably: send it again with the same cid",
                    ));
                    for (outbox, _) in batch {
                        outbox.push(err.clone());
                    }
                }
            }
        }
    }
}
