//! The presence publisher: one task that PUBLISHes this node's `login`/`logout` payloads, in
//! the order `Broker::publish` queued them, pipelined in batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::store::redis_store::RedisStore;
use crate::sync::LockExt;

/// A channel and the payload to PUBLISH there.
pub(crate) type Event = (String, Vec<u8>);

/// How far the publisher got, for `RedisBroker::presence_sent`: events are handled in queue
/// order, so `done >= n` means the first `n` queued events were sent (or given up).
#[derive(Default)]
pub(crate) struct Progress {
    /// Held across a send to the queue and the count of it, so that the count of events
    /// queued before a given one is never behind its place in the queue.
    order: Mutex<()>,
    queued: AtomicU64,
    done: AtomicU64,
    notify: Notify,
}

impl Progress {
    /// `send` (a non-blocking send to the queue), counted when it succeeds.
    pub(crate) fn queue<E>(&self, send: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let _order = self.order.locked();
        send()?;
        self.queued.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Resolves once every event queued before the call was sent, or failed, or the
    /// publisher stopped.
    pub(crate) async fn sent(&self) {
        let target = self.queued.load(Ordering::Acquire);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.done.load(Ordering::Acquire) >= target {
                return;
            }
            notified.await;
        }
    }

    fn handled(&self, n: usize) {
        self.done.fetch_add(n as u64, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    fn stopped(&self) {
        self.done.store(u64::MAX, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Marks the publisher stopped however `run` ends.
struct Stopped<'a>(&'a Progress);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.stopped();
    }
}

/// At most this many PUBLISHes per pipeline (a burst of logins leaves in a few round trips).
const BATCH: usize = 256;

/// Sends what arrives on `rx` until `shutdown`; then sends what is queued already (a clean
/// shutdown's `logout`s) once, and stops. One task, one pipeline at a time: this node's
/// presence events reach Redis in call order. While Redis is unreachable each batch fails
/// after the store connection's timeout and is dropped (presence is live state, the next
/// events correct it); that is logged once per outage.
pub(crate) async fn run(
    store: Arc<RedisStore>,
    mut rx: mpsc::Receiver<Event>,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) {
    let _stopped = Stopped(&progress);
    let mut failing = false;
    loop {
        let first = tokio::select! {
            biased;
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
            _ = shutdown.cancelled() => {
                let mut batch = Vec::new();
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                }
                if !batch.is_empty() {
                    let _ = send(&store, &batch).await;
                }
                return;
            }
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let sent = send(&store, &batch).await;
        progress.handled(batch.len());
        match sent {
            Ok(()) if failing => {
                tracing::info!(node = %store.node, "redis broker: presence events are published again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(node = %store.node, "redis broker: presence events dropped while Redis fails: {e:#}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn send(store: &RedisStore, batch: &[Event]) -> anyhow::Result<()> {
    let mut pipe = ::redis::pipe();
    for (channel, payload) in batch {
        pipe.cmd("PUBLISH").arg(channel).arg(&payload[..]).ignore();
    }
    let () = pipe.query_async(&mut store.conn()).await?;
    Ok(())
}
