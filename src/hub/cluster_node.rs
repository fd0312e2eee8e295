//! A Redis hub's life as a node: built with its broker, kept live by a heartbeat, sweeping the
//! nodes that died (their users' `logout`s), writing its presence again after it was given up,
//! and leaving cleanly at shutdown.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::{Engine, Hub};
use crate::broker::redis::{RedisBroker, RedisBrokerConfig};
use crate::broker::Subscribers;
use crate::config::RedisTarget;
use crate::metrics::Metrics;
use crate::protocol::{self, LoginOut, LogoutOut};
use crate::store::redis_store::{RedisConfig, RedisStore, HEARTBEAT_EVERY};
use crate::store::Bounds;
use crate::sync::LockExt;

/// How long a clean shutdown waits for the last Redis writes (disconnects, `logout`s).
const SETTLE: Duration = Duration::from_secs(5);

impl Hub {
    /// `natter serve --redis`: connects to Redis as a new node (a fresh random node id per
    /// process), checks what an ack will mean there, and builds the hub on it.
    pub async fn on_redis(
        target: &RedisTarget,
        bounds: Bounds,
        metrics: Arc<Metrics>,
        max_per_uid: usize,
        max_rooms_per_uid: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Hub>> {
        let node = node_id();
        let mut cfg = RedisConfig::new(&target.url, &node, bounds);
        cfg.prefix = target.prefix.clone();
        let store = RedisStore::connect(cfg).await.map_err(|e| {
            // The URL may hold a password: the error names the server only.
            anyhow::anyhow!("--redis: cannot use Redis at {}: {}", server_of(&target.url), root_cause(&e))
        })?;
        match store.acks_are_durable().await {
            Ok(true) => tracing::info!(node, "redis: appendfsync always: an ack means the message survives a Redis crash"),
            Ok(false) => tracing::warn!(
                node,
                "redis: AOF is not on with appendfsync always: acked messages can be lost if Redis crashes (README, \"More than one machine\")"
            ),
            Err(e) => tracing::warn!(node, "redis: CONFIG GET refused ({e:#}): cannot tell whether acks are durable"),
        }
        tracing::info!(node, prefix = %target.prefix, "redis: this process is node {node}");
        let leftovers = store.take_leftover_offline();
        let hub = Hub::clustered(
            Arc::new(store),
            RedisBrokerConfig::new(&target.url),
            metrics,
            max_per_uid,
            max_rooms_per_uid,
            shutdown,
        )?;
        if let Engine::Redis(c) = &hub.engine {
            c.announce_gone(leftovers).await;
        }
        Ok(hub)
    }

    /// A hub on Redis: `store` is connected (this node announced live), the broker is started
    /// here and stops with `shutdown`. Call `run_node` for the heartbeat and `leave_node` at
    /// the end.
    pub(crate) fn clustered(
        store: Arc<RedisStore>,
        broker_cfg: RedisBrokerConfig,
        metrics: Arc<Metrics>,
        max_per_uid: usize,
        max_rooms_per_uid: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Hub>> {
        let subs = Arc::new(Subscribers::new(metrics.clone()));
        let broker = RedisBroker::start(store.clone(), broker_cfg, subs.clone(), shutdown)?;
        let cluster =
            Cluster::new(store, broker.clone(), subs.clone(), metrics.clone(), max_per_uid, max_rooms_per_uid);
        Ok(Hub::build(Engine::Redis(Arc::new(cluster)), broker, subs, metrics, max_per_uid, max_rooms_per_uid))
    }

    /// Until `shutdown`: the node's heartbeat and the sweep of dead nodes (a Redis hub only).
    pub async fn run_node(self: Arc<Self>, shutdown: CancellationToken) {
        if let Engine::Redis(c) = &self.engine {
            c.clone().run_node(shutdown).await
        }
    }

    /// A clean shutdown, once the sessions have ended: waits for their last Redis writes, then
    /// takes this node's presence out of Redis at once (its users' `logout`s are sent) rather
    /// than at its deadline. A no-op on one node.
    pub async fn leave_node(&self) {
        if let Engine::Redis(c) = &self.engine {
            c.leave_node().await
        }
    }
}

impl Cluster {
    /// Two loops: the heartbeat alone, so that no amount of other Redis work can make this node
    /// miss its deadline, and the upkeep (writing its presence again when needed, sweeping dead
    /// nodes and sending their users' `logout`s). Both stop with `stop`, which the caller
    /// cancels only after `leave_node`: a slow shutdown does not pass the node's deadline.
    async fn run_node(self: Arc<Self>, stop: CancellationToken) {
        tokio::join!(self.beat(&stop), self.upkeep(&stop));
    }

    async fn beat(&self, stop: &CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        let mut down = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if self.left.load(Ordering::Acquire) {
                continue; // until `stop`: returning would look like a crash to the supervisor
            }
            match self.store.heartbeat().await {
                Ok(live) => {
                    if down {
                        tracing::info!(node = %self.store.node, "redis: heartbeat works again");
                        down = false;
                    }
                    if !live {
                        tracing::warn!(node = %self.store.node, "redis: this node had been given up (heartbeat late): writing its presence again");
                        self.given_up.store(true, Ordering::Release);
                        self.dirty.store(true, Ordering::Release);
                    }
                }
                Err(e) => {
                    if !down {
                        tracing::warn!(node = %self.store.node, "redis: heartbeat failed (retried every {HEARTBEAT_EVERY:?}): {e:#}");
                        down = true;
                    }
                }
            }
        }
    }

    async fn upkeep(&self, stop: &CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if self.left.load(Ordering::Acquire) {
                continue; // until `stop`: returning would look like a crash to the supervisor
            }
            if self.dirty.swap(false, Ordering::AcqRel) {
                // Other nodes may have sent this node's users' `logout`s: they hear `login`s again.
                let given_up = self.given_up.swap(false, Ordering::AcqRel);
                if !self.reannounce(given_up).await {
                    self.dirty.store(true, Ordering::Release);
                    self.given_up.fetch_or(given_up, Ordering::AcqRel);
                }
            }
            match self.store.sweep_dead_nodes().await {
                Ok(gone) => self.announce_gone(gone).await,
                Err(e) => tracing::warn!("redis: sweeping dead nodes failed: {e:#}"),
            }
        }
    }

    /// Writes this node's presence and connection counts again, exactly as it holds them,
    /// in one script (after it was given up, or after a presence write failed); false when it
    /// failed (tried again at the next beat). A presence write or a claim that ran while the
    /// list was taken may have been overwritten: then it is done again at the next beat.
    async fn reannounce(&self, given_up: bool) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        let rooms: Vec<(String, Arc<super::cluster::Room>)> =
            self.rooms.locked().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut presence: Vec<(String, Arc<str>, u32)> = Vec::new();
        let mut names: Vec<(String, Arc<str>, String)> = Vec::new();
        for (id, room) in rooms {
            let here = room.here.lock().await;
            if !here.evicted {
                presence.extend(here.uids.iter().map(|(uid, n)| (id.clone(), uid.clone(), *n)));
                names.extend(here.names.iter().map(|(uid, name)| (id.clone(), uid.clone(), name.clone())));
            }
        }
        let counts: Vec<(String, u32)> = self.conn_counts.locked().iter().map(|(u, n)| (u.clone(), *n)).collect();
        let p: Vec<(&str, &str, u32)> = presence.iter().map(|(r, u, n)| (r.as_str(), &**u, *n)).collect();
        let c: Vec<(&str, u32)> = counts.iter().map(|(u, n)| (u.as_str(), *n)).collect();
        match self.store.reannounce(&p, &c).await {
            Ok(gone) => {
                self.announce_gone(gone).await;
                if given_up {
                    self.announce_back(names).await;
                }
                if self.generation.load(Ordering::Acquire) != generation {
                    self.dirty.store(true, Ordering::Relaxed);
                }
                true
            }
            Err(e) => {
                tracing::warn!("redis: writing this node's presence again failed: {e:#}");
                false
            }
        }
    }

    /// The `login`s of this node's users after other nodes had given it up (and so may have
    /// sent their `logout`s): the rooms see them online again.
    async fn announce_back(&self, names: Vec<(String, Arc<str>, String)>) {
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        for (room, uid, name) in names {
            let (num, total) = match counts.get(&room) {
                Some(c) => *c,
                None => match self.store.room_counts(&room).await {
                    Ok(c) => *counts.entry(room.clone()).or_insert(c),
                    Err(e) => {
                        tracing::warn!("room {room}: login of {uid} (node back) not sent: {e:#}");
                        continue;
                    }
                },
            };
            let ts = crate::now_ms();
            let json = protocol::login(&LoginOut {
                event: "login",
                roomid: &room,
                uid: &uid,
                name: &name,
                num,
                total,
                ts,
                recovered: None,
            });
            self.announce(&room, json, None);
        }
    }

    /// The `logout`s of uids a sweep found gone from a room (their node died). Their display
    /// names went with the node: the `logout` names them by uid (docs/protocol.md).
    /// The counts are read once per room (the sweep has removed every pair already), so a big
    /// dead node costs a round trip per room, not per user.
    pub(super) async fn announce_gone(&self, gone: Vec<(String, String)>) {
        let mut by_room: HashMap<String, Vec<String>> = HashMap::new();
        for (room, uid) in gone {
            by_room.entry(room).or_default().push(uid);
        }
        for (room, uids) in by_room {
            let (num, total) = match self.store.room_counts(&room).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("room {room}: {} logouts (node gone) not sent: {e:#}", uids.len());
                    continue;
                }
            };
            for uid in uids {
                let json =
                    protocol::logout(&LogoutOut { event: "logout", roomid: &room, uid: &uid, name: &uid, num, total });
                self.announce(&room, json, None);
            }
        }
    }

    async fn leave_node(&self) {
        self.tasks.close();
        if tokio::time::timeout(SETTLE, self.tasks.wait()).await.is_err() {
            tracing::warn!("redis: disconnect writes still pending at shutdown (presence goes at the node's deadline)");
        }
        // From here on this node writes no presence (a late write would outlive the node).
        self.left.store(true, Ordering::Release);
        let cleared = async {
            match self.store.clear_node().await {
                Ok(gone) => self.announce_gone(gone).await,
                Err(e) => {
                    tracing::warn!("redis: removing this node's presence failed (it goes at its deadline): {e:#}")
                }
            }
        };
        if tokio::time::timeout(SETTLE, cleared).await.is_err() {
            tracing::warn!("redis: removing this node's presence took too long (the rest goes at its deadline)");
        }
        if tokio::time::timeout(SETTLE, self.broker.presence_sent()).await.is_err() {
            tracing::warn!("redis: logouts still unsent at shutdown");
        }
    }
}

/// Per uid, this node's connections counted in Redis (what `reannounce` writes back).
pub(super) type ConnCounts = Mutex<HashMap<String, u32>>;

/// A node id no other process has: the host name, the pid and a random part (a process that
/// restarts with the same pid is still a new node).
fn node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(32).collect();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    let host = if host.is_empty() { "node".to_string() } else { host };
    format!("{host}-{}-{:08x}", std::process::id(), h.finish() as u32)
}

/// `host:port` of a Redis URL (no user or password), as redis-rs reads it.
fn server_of(url: &str) -> String {
    redis::IntoConnectionInfo::into_connection_info(url).map(|i| i.addr().to_string()).unwrap_or_default()
}

fn root_cause(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}
