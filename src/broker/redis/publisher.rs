//! The presence publisher: one task that PUBLISHes this node's `login`/`logout` payloads, in
//! the order `Broker::publish` queued them, pipelined in batches.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::redis_store::RedisStore;

/// A channel and the payload to PUBLISH there.
pub(crate) type Event = (String, Vec<u8>);

/// At most this many PUBLISHes per pipeline (a burst of logins leaves in a few round trips).
const BATCH: usize = 256;

/// Sends what arrives on `rx` until `shutdown`; then sends what is queued already (a clean
/// shutdown's `logout`s) once, and stops. One task, one pipeline at a time: this node's
/// presence events reach Redis in call order. While Redis is unreachable each batch fails
/// after the store connection's timeout and is dropped (presence is live state, the next
/// events correct it); that is logged once per outage.
pub(crate) async fn run(store: Arc<RedisStore>, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
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
        match send(&store, &batch).await {
            Ok(()) if failing => {
                tracing::info!("redis broker: presence events are published again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!("redis broker: presence events dropped while Redis fails: {e:#}");
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
