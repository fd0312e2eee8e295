//! The subscriber: one task owning the node's pub/sub connection. It keeps the per-room
//! subscription counts, (re)subscribes, and delivers each room's stream to this node's
//! `Subscribers` in id order, once, filling gaps from the room's history.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{decode_presence, RedisBrokerConfig, Shared};
use crate::broker::{Kind, Publication, Subscribers};
use crate::store::redis_store::{decode_payload, BrokerScripts, RedisStore};
use crate::store::Stored;
use crate::wire;

/// What `RedisBroker` asks of the subscriber, in call order.
pub(crate) enum Cmd {
    /// One more holder of the room's subscription; the sender is told once it is confirmed.
    Subscribe(String, oneshot::Sender<()>),
    /// One holder fewer; at 0 the channel is unsubscribed.
    Unsubscribe(String),
}

/// At most this many channels per SUBSCRIBE (a resubscription of many rooms).
const SUBSCRIBE_CHUNK: usize = 512;

/// One room as the subscriber sees it.
struct Room {
    channel: String,
    /// Holders of the subscription (`subscribe` calls not yet matched by `unsubscribe`).
    refs: usize,
    /// The last message id delivered here (or known to be before this node's interest);
    /// `None` until the first subscription was confirmed.
    last: Option<u64>,
    /// `subscribe` futures waiting for the confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

pub(crate) struct Subscriber {
    client: redis::Client,
    store: Arc<RedisStore>,
    subs: Arc<Subscribers>,
    cfg: RedisBrokerConfig,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    scripts: BrokerScripts,
    rooms: HashMap<String, Room>,
    /// Channel name -> room id, for the rooms in `rooms`.
    by_channel: HashMap<String, String>,
    /// Rooms subscribed on the current connection (empty while disconnected).
    subscribed: HashSet<String>,
}

/// Why `serve` returned.
enum Ended {
    Shutdown,
    Trouble(anyhow::Error),
}

impl Subscriber {
    pub(crate) fn new(
        client: redis::Client,
        store: Arc<RedisStore>,
        subs: Arc<Subscribers>,
        cfg: RedisBrokerConfig,
        cmds: mpsc::UnboundedReceiver<Cmd>,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        Subscriber {
            client,
            store,
            subs,
            cfg,
            cmds,
            shared,
            shutdown,
            scripts: BrokerScripts::new(),
            rooms: HashMap::new(),
            by_channel: HashMap::new(),
            subscribed: HashSet::new(),
        }
    }

    /// Connects, serves, and on trouble reconnects with capped exponential backoff, until
    /// shutdown. Logs once when the connection is lost (or the first one fails) and once when
    /// it is back, not per attempt.
    pub(crate) async fn run(mut self) {
        let mut backoff = self.cfg.backoff_min;
        let mut down_since: Option<Instant> = Some(Instant::now());
        // Whether this outage (or the failure of the first connection) was logged already.
        let mut logged = false;
        let shutdown = self.shutdown.clone();
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.connect() => r,
            };
            match attempt {
                Ok((sink, stream)) => {
                    if let Some(t) = down_since.take().filter(|_| logged) {
                        tracing::info!(
                            node = %self.store.node,
                            "redis broker: pub/sub connection back after {:?}, {} rooms resubscribed",
                            t.elapsed(),
                            self.subscribed.len()
                        );
                    }
                    backoff = self.cfg.backoff_min;
                    self.shared.connected.store(true, Ordering::Release);
                    let ended = self.serve(sink, stream).await;
                    self.shared.connected.store(false, Ordering::Release);
                    self.subscribed.clear();
                    match ended {
                        Ended::Shutdown => return,
                        Ended::Trouble(e) => {
                            tracing::warn!(node = %self.store.node, "redis broker: pub/sub connection lost, reconnecting: {e:#}");
                            down_since = Some(Instant::now());
                            logged = true;
                            // A blip is retried at once; the backoff starts with the next failure.
                            continue;
                        }
                    }
                }
                Err(e) => {
                    self.subscribed.clear();
                    if !logged {
                        tracing::warn!(
                            node = %self.store.node,
                            "redis broker: cannot connect the pub/sub connection, retrying: {e:#}"
                        );
                        logged = true;
                    }
                }
            }
            // Counts change meanwhile (a join's subscribe times out and gives its count back),
            // so that the reconnection subscribes exactly what is held.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut sleep => break,
                    cmd = self.cmds.recv() => match cmd {
                        Some(cmd) => self.note(cmd),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
    }

    /// A new pub/sub connection with every held room subscribed again and its gap filled.
    async fn connect(&mut self) -> anyhow::Result<(PubSubSink, PubSubStream)> {
        let ps = tokio::time::timeout(self.cfg.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| anyhow!("connecting timed out"))??;
        let (mut sink, stream) = ps.split();
        self.subscribed.clear();
        self.timed(sink.subscribe(self.probe_channel())).await.context("SUBSCRIBE to the probe channel")?;
        while let Ok(cmd) = self.cmds.try_recv() {
            self.note(cmd);
        }
        self.sync(&mut sink).await?;
        Ok((sink, stream))
    }

    /// This node's service channel: only its own liveness probes are published there.
    fn probe_channel(&self) -> String {
        format!("{}probe:{{{}}}", self.store.keys.prefix, self.store.node)
    }

    /// Delivers the stream and applies commands until trouble or shutdown.
    async fn serve(&mut self, mut sink: PubSubSink, mut stream: PubSubStream) -> Ended {
        let mut ping = tokio::time::interval(self.cfg.ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let shutdown = self.shutdown.clone();
        let probe_channel = self.probe_channel();
        // Liveness (after centrifuge's pub/sub probe): a connection that received nothing for
        // a whole interval is probed. PING checks the connection itself; a probe PUBLISHed
        // through the store's connection, the path every message takes, checks that this
        // subscription is on the Redis that takes the writes (after a failover, or another
        // Redis on a reused address, PING answers and no traffic ever comes). A probe that
        // reached no subscriber, or did not come back within the next interval, is trouble.
        let mut heard = false;
        let mut probe_out = false;
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ended::Shutdown,
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => {
                        self.note(cmd);
                        while let Ok(cmd) = self.cmds.try_recv() {
                            self.note(cmd);
                        }
                        self.sync(&mut sink).await
                    }
                    None => return Ended::Shutdown,
                },
                msg = stream.next() => match msg {
                    Some(msg) => {
                        heard = true;
                        if msg.get_channel_name() == probe_channel {
                            probe_out = false;
                            Ok(())
                        } else {
                            self.on_message(msg.get_channel_name(), msg.get_payload_bytes()).await
                        }
                    }
                    None => Err(anyhow!("connection closed")),
                },
                _ = ping.tick() => {
                    if std::mem::take(&mut heard) {
                        probe_out = false;
                        Ok(())
                    } else if probe_out {
                        Err(anyhow!("a liveness probe did not come back within {:?}", self.cfg.ping_every))
                    } else {
                        self.probe(&mut sink, &probe_channel).await.map(|sent| probe_out = sent)
                    }
                }
            };
            if let Err(e) = step {
                return Ended::Trouble(e);
            }
        }
    }

    /// PING on the pub/sub connection, then a probe PUBLISHed through the store; true when the
    /// probe went out (a store that fails is the store's trouble, not this connection's: no
    /// probe then, the next interval tries again).
    async fn probe(&self, sink: &mut PubSubSink, channel: &str) -> anyhow::Result<bool> {
        self.timed(sink.ping::<redis::Value>()).await.context("PING")?;
        let (mut cmd, mut conn) = (redis::cmd("PUBLISH"), self.store.conn());
        cmd.arg(channel).arg("probe");
        match self.timed(cmd.query_async::<u64>(&mut conn)).await {
            Ok(0) => Err(anyhow!(
                "a liveness probe reached no subscriber: this connection is not on the Redis that takes the writes"
            )),
            Ok(_) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    /// Applies a command to the counts only (no network): `sync` acts on them.
    fn note(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Subscribe(room, tx) => {
                let r = self.rooms.entry(room.clone()).or_insert_with(|| {
                    let channel = self.store.channel(&room);
                    self.by_channel.insert(channel.clone(), room.clone());
                    Room { channel, refs: 0, last: None, waiters: Vec::new() }
                });
                r.refs += 1;
                if self.subscribed.contains(&room) {
                    let _ = tx.send(());
                } else {
                    r.waiters.push(tx);
                }
            }
            Cmd::Unsubscribe(room) => match self.rooms.get_mut(&room) {
                Some(r) if r.refs > 0 => {
                    r.refs -= 1;
                    // Not listening (disconnected): a later holder starts afresh, from the
                    // last id after its own subscription, not from this holder's gap. (A room
                    // still subscribed keeps its place until `sync`: a subscribe in the same
                    // batch keeps the subscription, and its stream, going.)
                    if r.refs == 0 && !self.subscribed.contains(&room) {
                        r.last = None;
                        self.shared.positions.forget(&room);
                    }
                }
                _ => tracing::debug!("redis broker: unsubscribe from {room} without a subscription"),
            },
        }
    }

    /// Brings the connection's subscriptions in line with the counts: UNSUBSCRIBE what went
    /// to 0, SUBSCRIBE what is held and not subscribed (waking its waiters once confirmed).
    /// Both are awaited here, in order, so that an UNSUBSCRIBE never lands after a later
    /// SUBSCRIBE of the same channel.
    async fn sync(&mut self, sink: &mut PubSubSink) -> anyhow::Result<()> {
        let gone: Vec<String> = self.rooms.iter().filter(|(_, r)| r.refs == 0).map(|(k, _)| k.clone()).collect();
        let mut unsub = Vec::new();
        for room in gone {
            let r = self.rooms.remove(&room).expect("listed above");
            self.by_channel.remove(&r.channel);
            self.shared.positions.forget(&room);
            if self.subscribed.remove(&room) {
                unsub.push(r.channel);
            }
        }
        if !unsub.is_empty() {
            self.timed(sink.unsubscribe(&unsub)).await.context("UNSUBSCRIBE")?;
        }
        let mut want: Vec<String> =
            self.rooms.keys().filter(|room| !self.subscribed.contains(*room)).cloned().collect();
        want.sort();
        for chunk in want.chunks(SUBSCRIBE_CHUNK) {
            self.subscribe(sink, chunk).await?;
        }
        Ok(())
    }

    /// SUBSCRIBEs `rooms` (all held), then sets each room's starting point, or fills its gap
    /// when it had been subscribed before (a reconnection), then wakes its waiters.
    async fn subscribe(&mut self, sink: &mut PubSubSink, rooms: &[String]) -> anyhow::Result<()> {
        let channels: Vec<&str> = rooms.iter().map(|r| self.rooms[r].channel.as_str()).collect();
        self.timed(sink.subscribe(&channels)).await.context("SUBSCRIBE")?;
        // Read after the confirmation: every message with a higher id was PUBLISHed after the
        // SUBSCRIBE took effect (the script gives the id and PUBLISHes in one atomic step), so
        // it is on this connection's stream. Messages up to it may or may not be on the stream;
        // skipping them is safe because the hub reads the room (its last id, and history for a
        // `since`) only after `subscribe` resolved, so for the hub they are history, never live.
        // (Reading it before SUBSCRIBE instead could leave a message published in between on
        // neither side.)
        let seqs = self.read(|| self.store.last_ids(rooms)).await.context("reading last ids")?;
        for (room, seq) in rooms.iter().zip(seqs) {
            let last = self.rooms[room].last;
            match last {
                None => self.set_last(room, seq),
                Some(last) if seq < last => {
                    // Redis lost data (restarted without AOF, or restored from an older
                    // snapshot): its ids will come again, so count from what it has.
                    tracing::warn!(
                        "redis broker: room {room} has ids up to {seq} in Redis but {last} were delivered here; \
                         counting from {seq} (Redis lost data?)"
                    );
                    self.set_last(room, seq);
                }
                // Published while this node was not listening: from the history, before anything
                // newer on the stream (a quiet room gets its gap too, not only at its next message).
                Some(last) if seq > last => self.recover(room).await?,
                Some(_) => {}
            }
            self.subscribed.insert(room.clone());
            for w in self.rooms.get_mut(room).expect("held").waiters.drain(..) {
                let _ = w.send(());
            }
        }
        Ok(())
    }

    fn set_last(&mut self, room: &str, id: u64) {
        self.place(room, id, None);
    }

    /// Moves the room's `last` to `id`, delivering `p` first when given, under the room's
    /// `Conns` lock (when the room is open here) so that `RedisBroker::delivered` read under
    /// it splits the ids exactly; returns who missed `p`.
    fn place(&mut self, room: &str, id: u64, p: Option<&Publication>) -> crate::broker::Missed {
        if let Some(r) = self.rooms.get_mut(room) {
            r.last = Some(id);
        }
        let Some(here) = self.subs.get(room) else {
            self.shared.positions.set(room, id);
            return Vec::new();
        };
        let conns = here.lock();
        let missed = p.map(|p| conns.deliver(p, self.subs.metrics())).unwrap_or_default();
        self.shared.positions.set(room, id);
        missed
    }

    /// One payload from the stream.
    async fn on_message(&mut self, channel: &str, payload: &[u8]) -> anyhow::Result<()> {
        let Some(room) = self.by_channel.get(channel).cloned() else { return Ok(()) };
        let Some(last) = self.rooms.get(&room).and_then(|r| r.last) else { return Ok(()) };
        if !self.subscribed.contains(&room) {
            return Ok(());
        }
        if let Some(p) = decode_presence(payload) {
            // `except` is a connection of the publishing node only.
            let except = if p.node == self.store.node { p.except } else { None };
            self.subs.deliver(&room, &Publication { frame: wire::text(p.json), kind: Kind::Presence, except });
            return Ok(());
        }
        let Some(m) = decode_payload(payload) else {
            tracing::warn!("redis broker: room {room}: undecodable payload ignored");
            return Ok(());
        };
        if m.id <= last {
            return Ok(());
        }
        if m.prev > last {
            // Something between `last` and this message never came (a reconnection, a
            // subscription that lapsed): the history has it, and this message too.
            self.recover(&room).await?;
            if self.rooms.get(&room).and_then(|r| r.last).is_some_and(|l| m.id <= l) {
                return Ok(());
            }
        }
        self.deliver(&room, &m).await;
        Ok(())
    }

    /// Delivers the kept history after the room's `last`, oldest first. A failure to read it
    /// is trouble: the reconnection that follows tries again from the same `last`, so
    /// nothing is skipped for want of a read.
    async fn recover(&mut self, room: &str) -> anyhow::Result<()> {
        let Some(last) = self.rooms.get(room).and_then(|r| r.last) else { return Ok(()) };
        let missed = self.read(|| self.store.history_after(room, last)).await.context("reading history")?;
        if let Some(first) = missed.first().filter(|m| m.prev > last) {
            tracing::warn!(
                "redis broker: room {room}: messages {}..{} are no longer kept, delivering from {}",
                last + 1,
                first.prev,
                first.id
            );
        }
        for m in &missed {
            if m.id > self.rooms.get(room).and_then(|r| r.last).unwrap_or(u64::MAX) {
                self.deliver(room, m).await;
            }
        }
        Ok(())
    }

    /// Delivers one message to this node's connections (one frame for all) and moves `last`;
    /// members whose every connection here refused it get it queued.
    async fn deliver(&mut self, room: &str, m: &Stored) {
        let p =
            Publication { frame: wire::text(&m.json), kind: Kind::Message { id: m.id, prev: m.prev }, except: None };
        let missed = self.place(room, m.id, Some(&p));
        if missed.is_empty() {
            return;
        }
        let uids: Vec<&str> = missed.iter().map(|u| &**u).collect();
        let queued = self.store.enqueue_missed(&self.scripts, room, &uids, m, crate::now_ms());
        match self.timed(queued).await {
            Ok(_) => {}
            Err(e) => tracing::error!(
                "redis broker: room {room}: queueing message {} for closing members failed: {e:#}",
                m.id
            ),
        }
    }

    /// A store read, bounded by the timeout, tried a second time when the first fails: after an
    /// outage the store's `ConnectionManager` fails one call on its old connection and then
    /// reconnects, and without the retry the whole resubscription would wait a backoff for it.
    async fn read<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = crate::store::Result<T>>,
    {
        match self.timed(f()).await {
            Ok(v) => Ok(v),
            Err(_) => self.timed(f()).await,
        }
    }

    /// `f` bounded by the configured timeout.
    async fn timed<T, E>(&self, f: impl std::future::Future<Output = Result<T, E>>) -> anyhow::Result<T>
    where
        E: Into<anyhow::Error>,
    {
        let within: Duration = self.cfg.timeout;
        match tokio::time::timeout(within, f).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(anyhow!("no answer within {within:?}")),
        }
    }
}
