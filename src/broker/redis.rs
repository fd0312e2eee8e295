//! The Redis broker: N natter nodes on one Redis, each subscribed to the channels of the rooms
//! it has open (docs/redis-broker.md). Owns the `Broker` implementation, its configuration and
//! the presence payload; `subscriber` owns the pub/sub connection and delivery, `publisher` the
//! presence PUBLISHes.
// `delivered` and `is_connected` are for the tests (and a health check to come).
#![cfg_attr(not(test), allow(dead_code))]

mod publisher;
mod subscriber;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Broker, ConnId, Conns, Kind, Missed, Publication, SubscribeFuture, Subscribers};
use crate::store::redis_store::RedisStore;
use crate::sync::LockExt;
use subscriber::Cmd;

/// How the broker reaches Redis and how it copes with trouble.
#[derive(Clone, Debug)]
pub(crate) struct RedisBrokerConfig {
    /// The pub/sub connection's URL (the store's: `redis://[:password@]HOST:PORT/DB`).
    pub(crate) url: String,
    /// Bounds one connection attempt and one pub/sub command's answer (SUBSCRIBE, PING), and
    /// each store read the subscriber makes (last ids, history).
    pub(crate) timeout: Duration,
    /// How long a `subscribe` waits for Redis to confirm before it fails (the hub then refuses
    /// the join as `unavailable` instead of opening a room that gets no traffic).
    pub(crate) subscribe_timeout: Duration,
    /// Reconnect backoff: from `backoff_min`, doubling, capped at `backoff_max`.
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// A PING on the idle pub/sub connection this often: a Redis that vanished without closing
    /// the TCP connection (a partition, a frozen VM) is noticed within `ping_every + timeout`.
    pub(crate) ping_every: Duration,
    /// Presence events waiting for the publisher task; over it `publish` fails (the hub logs
    /// it) rather than let memory grow while Redis is stuck.
    pub(crate) presence_queue: usize,
}

impl RedisBrokerConfig {
    pub(crate) fn new(url: &str) -> Self {
        RedisBrokerConfig {
            url: url.into(),
            timeout: Duration::from_secs(2),
            subscribe_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ping_every: Duration::from_secs(5),
            presence_queue: 65_536,
        }
    }
}

/// Per room, the last message id delivered to this node's connections (see
/// `RedisBroker::delivered`), shared by the subscriber (the only writer) and the broker.
#[derive(Default)]
pub(crate) struct Positions(Mutex<HashMap<String, u64>>);

impl Positions {
    pub(crate) fn get(&self, room: &str) -> Option<u64> {
        self.0.locked().get(room).copied()
    }
    pub(crate) fn set(&self, room: &str, id: u64) {
        let mut map = self.0.locked();
        match map.get_mut(room) {
            Some(at) => *at = id,
            None => {
                map.insert(room.to_string(), id);
            }
        }
    }
    pub(crate) fn forget(&self, room: &str) {
        self.0.locked().remove(room);
    }
}

/// What the subscriber task tells the broker.
#[derive(Default)]
pub(crate) struct Shared {
    /// See `RedisBroker::is_connected`.
    pub(crate) connected: AtomicBool,
    pub(crate) positions: Positions,
}

/// The broker of one node. Cheap to call from under the hub's room lock: `publish`,
/// `subscribe` and `unsubscribe` only queue work for the two tasks `start` spawns.
pub(crate) struct RedisBroker {
    store: Arc<RedisStore>,
    presence: mpsc::Sender<publisher::Event>,
    progress: Arc<publisher::Progress>,
    cmds: mpsc::UnboundedSender<Cmd>,
    subscribe_timeout: Duration,
    shared: Arc<Shared>,
}

impl RedisBroker {
    /// Spawns the subscriber (the pub/sub connection, delivery to `subs`) and the presence
    /// publisher; both stop when `shutdown` is cancelled. Redis need not be reachable yet: the
    /// subscriber connects in the background and retries with backoff (a bad URL fails here).
    pub(crate) fn start(
        store: Arc<RedisStore>,
        cfg: RedisBrokerConfig,
        subs: Arc<Subscribers>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<RedisBroker>> {
        let client = ::redis::Client::open(cfg.url.as_str()).context("redis url")?;
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (presence, presence_rx) = mpsc::channel(cfg.presence_queue.max(1));
        let shared = Arc::new(Shared::default());
        let sub = subscriber::Subscriber::new(
            client,
            store.clone(),
            subs,
            cfg.clone(),
            cmd_rx,
            shared.clone(),
            shutdown.clone(),
        );
        tokio::spawn(sub.run());
        let progress = Arc::new(publisher::Progress::default());
        tokio::spawn(publisher::run(store.clone(), presence_rx, progress.clone(), shutdown));
        Ok(Arc::new(RedisBroker { store, presence, progress, cmds, subscribe_timeout: cfg.subscribe_timeout, shared }))
    }

    /// Whether the pub/sub connection is up with every open room subscribed (for health
    /// checks; the tests use it to know the broker noticed an outage).
    pub(crate) fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// The last message id of `room` delivered to this node's connections; `None` while the
    /// room is not subscribed. The subscriber moves it under the room's `Conns` lock, in the
    /// same critical section as the delivery, so a join that adds its connection and reads
    /// this under that lock has an exact split: ids up to it are history (its replay), ids
    /// after it reach the new connection live. Nothing lost or doubled between subscribing
    /// and replaying.
    pub(crate) fn delivered(&self, room: &str) -> Option<u64> {
        self.shared.positions.get(room)
    }

    /// Resolves once every presence event this node published before the call has reached
    /// Redis (or was given up while Redis fails, or the broker stopped). Presence leaves
    /// through the publisher task and messages through the store's publish script, so a
    /// message published right after a `login` could reach the channel first: awaiting this
    /// before the store's publish keeps a node's presence and messages in call order.
    /// Immediate when nothing is pending (the usual case: presence is rare next to messages).
    pub(crate) async fn presence_sent(&self) {
        self.progress.sent().await
    }
}

impl Broker for RedisBroker {
    fn publish(&self, room: &str, _here: &Conns, p: &Publication) -> anyhow::Result<Missed> {
        match p.kind {
            // The store's publish script PUBLISHed this message on the room's channel in the
            // same atomic step that gave it its id, so it is on the channel already, in id
            // order with every other node's messages; publishing it again would deliver it
            // twice. This node's connections get it back over the subscription like every
            // other node's, and the subscriber queues it for whoever misses it then.
            Kind::Message { .. } => Ok(Vec::new()),
            // Presence has no id: it rides the same channel so that a room's presence and
            // messages are one ordered stream. Never waits: the publisher task sends it.
            Kind::Presence => {
                let payload = encode_presence(&self.store.node, p.except, frame_payload(&p.frame));
                let event = (self.store.channel(room), payload);
                self.progress.queue(|| self.presence.try_send(event)).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => anyhow!("presence queue full (Redis slow or unreachable)"),
                    mpsc::error::TrySendError::Closed(_) => anyhow!("redis broker stopped"),
                })?;
                Ok(Vec::new())
            }
        }
    }

    fn subscribe(&self, room: &str) -> SubscribeFuture {
        let (tx, rx) = oneshot::channel();
        // Counted now, not when the future is first polled, so the refcount follows the order
        // of the calls; until the future returns Ok the subscription is the future's, and
        // `Release` gives it back on an error, a timeout or a drop (the hub unsubscribes only
        // what it saw subscribed).
        let sent = self.cmds.send(Cmd::Subscribe(room.to_string(), tx)).is_ok();
        let mut release = Release { cmds: self.cmds.clone(), room: room.to_string(), armed: sent };
        let within = self.subscribe_timeout;
        Box::pin(async move {
            if !release.armed {
                bail!("redis broker stopped");
            }
            match tokio::time::timeout(within, rx).await {
                Ok(Ok(())) => {
                    release.disarm();
                    Ok(())
                }
                Ok(Err(_)) => bail!("redis broker stopped"),
                Err(_) => bail!("room {}: Redis did not confirm the subscription within {within:?}", release.room),
            }
        })
    }

    fn unsubscribe(&self, room: &str) {
        // Fire and forget: the subscriber sends UNSUBSCRIBE when the count reaches 0.
        let _ = self.cmds.send(Cmd::Unsubscribe(room.to_string()));
    }
}

/// Gives a subscription back unless disarmed (see `subscribe`).
struct Release {
    cmds: mpsc::UnboundedSender<Cmd>,
    room: String,
    armed: bool,
}

impl Release {
    /// The subscription is the caller's now.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.cmds.send(Cmd::Unsubscribe(std::mem::take(&mut self.room)));
        }
    }
}

/// The payload of a server frame (`wire` frames are unmasked, length in 7, 16 or 64 bits).
/// Presence travels as JSON, so that `redis-cli` shows it and every node frames it itself.
fn frame_payload(frame: &[u8]) -> &[u8] {
    let at = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(at..).unwrap_or(&[])
}

/// A presence payload: `p:<node>:<except>:<json>`. The publish script's payloads begin with a
/// digit (`id:prev:json`), so the `p:` tells them apart. `node` is escaped (no `:`); `except`
/// is a connection id of that node in decimal, or empty.
pub(crate) fn encode_presence(node: &str, except: Option<ConnId>, json: &[u8]) -> Vec<u8> {
    let except = except.map(|c| c.to_string()).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + node.len() + except.len() + json.len());
    out.extend_from_slice(b"p:");
    out.extend_from_slice(node.as_bytes());
    out.push(b':');
    out.extend_from_slice(except.as_bytes());
    out.push(b':');
    out.extend_from_slice(json);
    out
}

/// A decoded presence payload.
#[derive(Debug, PartialEq)]
pub(crate) struct Presence<'a> {
    pub(crate) node: &'a str,
    pub(crate) except: Option<ConnId>,
    pub(crate) json: &'a [u8],
}

/// `None` when `v` is not a presence payload (or a malformed one).
pub(crate) fn decode_presence(v: &[u8]) -> Option<Presence<'_>> {
    let rest = v.strip_prefix(b"p:")?;
    let n = rest.iter().position(|b| *b == b':')?;
    let node = std::str::from_utf8(&rest[..n]).ok()?;
    let rest = &rest[n + 1..];
    let e = rest.iter().position(|b| *b == b':')?;
    let except = match &rest[..e] {
        [] => None,
        digits => Some(std::str::from_utf8(digits).ok()?.parse().ok()?),
    };
    Some(Presence { node, except, json: &rest[e + 1..] })
}
