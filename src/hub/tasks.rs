//! The hub's background work: heartbeats (pings, dropping silent peers), the once-a-minute
//! housekeeping (expiry, idle-room eviction), and the id release of a clean shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::protocol;
use crate::sync::LockExt;
use crate::wire;

use super::room::Room;
use super::{Conn, Hub};

impl Hub {
    /// Every `interval`: close connections silent since the last tick, ping the others.
    pub async fn heartbeat(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let ping = wire::text(&protocol::heartbeat(true));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let conns: Vec<Arc<Conn>> = self.conns.locked().values().cloned().collect();
            for c in conns {
                if c.seen.swap(false, Ordering::Relaxed) {
                    self.send_one(&c, ping.clone());
                } else {
                    c.outbox.close(1000, "heartbeat timeout");
                }
            }
        }
    }

    /// Once a minute: drop expired queue entries and dedupe records, and evict idle rooms.
    pub async fn housekeeping(self: Arc<Self>, shutdown: CancellationToken) {
        if self.is_clustered() {
            // Redis expires what it holds by itself, and a node drops a room at its last leave.
            return shutdown.cancelled().await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let store = self.store().clone();
            let res = tokio::task::spawn_blocking(move || store.expire(crate::now_ms())).await;
            if let Ok(Err(e)) = res {
                tracing::warn!("expiry sweep failed: {e:#}");
            }
            if let Err(e) = self.evict_idle_rooms().await {
                tracing::warn!("room eviction failed: {e:#}");
            }
        }
    }

    /// At a clean shutdown, once nothing is published any more: releases every open room's id
    /// reservation (after the caller's flush), so ids continue without a gap after a restart.
    pub fn release_ids(&self) -> anyhow::Result<()> {
        if self.is_clustered() {
            return Ok(()); // Redis gives the ids: nothing is reserved here
        }
        let all: Vec<(String, Arc<Room>)> = self.rooms.locked().iter().map(|(id, r)| (id.clone(), r.clone())).collect();
        for (id, room) in all {
            let last_id = room.lock().last_id;
            self.store().release_ids(&id, last_id)?;
        }
        Ok(())
    }

    /// Drops rooms with no connection from memory (their state is in the store), so that
    /// rooms nobody visits cost nothing. Their id reservation is released, after a flush that
    /// makes every message they hold durable, so ids continue without a gap when they reopen.
    pub async fn evict_idle_rooms(&self) -> anyhow::Result<usize> {
        // Lock order: a room, then the map; never the map, then a room.
        let all: Vec<(String, Arc<Room>)> = self.rooms.locked().iter().map(|(id, r)| (id.clone(), r.clone())).collect();
        let idle: Vec<(String, Arc<Room>, u64)> = all
            .into_iter()
            .filter_map(|(id, r)| {
                let last_id = {
                    let st = r.lock();
                    r.subs.lock().is_empty().then_some(st.last_id)
                };
                last_id.map(|l| (id, r, l))
            })
            .collect();
        if idle.is_empty() {
            return Ok(0);
        }
        self.store().flush().await?;
        let mut evicted = 0;
        for (id, room, last_id) in idle {
            let mut st = room.lock();
            // Someone came (and maybe published) since: not idle after all.
            if !room.subs.lock().is_empty() || st.last_id != last_id || st.evicted {
                continue;
            }
            if self.evict(&room, &mut st, &id)? {
                evicted += 1;
            }
        }
        Ok(evicted)
    }
}
