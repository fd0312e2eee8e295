//! The hub's rooms scaled out on Redis (docs/scale-out.md): the store gives each message its id
//! in one script, membership and presence live in Redis, and this node's connections get every
//! room event, its own included, back from the `RedisBroker`'s subscription in id order.
//!
//! Ordering without a process-wide room lock: a room's messages are ordered by Redis (the
//! publish script gives the id and PUBLISHes in one step), and each node delivers them in id
//! order. What a node still serialises is its own presence in a room (`Here`), because the
//! counts it writes are absolute.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;
use tokio_util::task::TaskTracker;

use super::cluster_node::ConnCounts;
use super::join::{catch_up_into, recovered, CatchUp};
use super::{send_one, Conn, ConnId, HubError, Joined, Who, STRIPES};
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, Conns, Kind, Publication, RoomSubs, Subscribers};
use crate::metrics::Metrics;
use crate::protocol::{self, LoginOut, LogoutOut, MessageOut};
use crate::store::redis_store::{is_unavailable, Membership, Outcome, Publish, RedisStore, RoomCounts, Template};
use crate::sync::LockExt;
use crate::wire;

/// How long a leaving connection waits for this node to deliver what was published before its
/// presence write.
const DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// This node's part of one room.
pub(super) struct Room {
    pub(super) subs: Arc<RoomSubs>,
    /// This node's connections per uid in the room (what it writes to Redis as its presence),
    /// held across those writes: a node's presence writes of one room land in the order it
    /// made them, and a join's catch-up is not interleaved with a leave of the same room.
    pub(super) here: Arc<tokio::sync::Mutex<Here>>,
}

#[derive(Default)]
pub(super) struct Here {
    pub(super) uids: HashMap<Arc<str>, u32>,
    /// The display name each uid here joined with last (for the `login`s a node sends again
    /// after other nodes had given it up and logged its users out).
    pub(super) names: HashMap<Arc<str>, String>,
    /// Dropped from the map (its last connection left): a joiner that waited for `here`
    /// must look the room up again.
    pub(super) evicted: bool,
}

/// The Redis half of a hub.
pub(crate) struct Cluster {
    pub(super) store: Arc<RedisStore>,
    pub(super) broker: Arc<RedisBroker>,
    subs: Arc<Subscribers>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Serialises the opening (subscribing) of a room, striped by room id.
    open_locks: [tokio::sync::Mutex<()>; STRIPES],
    /// The Redis writes of disconnects and releases, which run after their session is gone.
    pub(super) tasks: TaskTracker,
    max_per_uid: usize,
    max_rooms_per_uid: usize,
    /// A presence write failed: the heartbeat writes this node's presence again.
    pub(super) dirty: AtomicBool,
    /// Moved by every presence write and claim, so that a `reannounce` can tell whether one
    /// ran while it took its list.
    pub(super) generation: AtomicU64,
    /// The heartbeat found the node given up: the next `reannounce` sends `login`s too.
    pub(super) given_up: AtomicBool,
    /// `leave_node` ran: no more presence writes.
    pub(super) left: AtomicBool,
    pub(super) conn_counts: ConnCounts,
}

impl Cluster {
    pub(super) fn new(
        store: Arc<RedisStore>,
        broker: Arc<RedisBroker>,
        subs: Arc<Subscribers>,
        metrics: Arc<Metrics>,
        max_per_uid: usize,
        max_rooms_per_uid: usize,
    ) -> Self {
        Cluster {
            store,
            broker,
            subs,
            metrics,
            rooms: Mutex::default(),
            open_locks: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            tasks: TaskTracker::new(),
            max_per_uid,
            max_rooms_per_uid,
            dirty: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            given_up: AtomicBool::new(false),
            left: AtomicBool::new(false),
            conn_counts: ConnCounts::default(),
        }
    }

    /// A presence write that failed: logged, and rewritten by the next heartbeat.
    fn presence_failed(&self, e: &anyhow::Error) {
        tracing::warn!("presence write failed (written again at the next heartbeat): {e:#}");
        self.dirty.store(true, Ordering::Relaxed);
    }

    fn existing(&self, id: &str) -> Option<Arc<Room>> {
        self.rooms.locked().get(id).cloned()
    }

    /// The room, subscribed first when this node does not have it open: from then on every
    /// message of the room reaches this node's connections in it.
    async fn open(&self, id: &str) -> Result<Arc<Room>, HubError> {
        if let Some(r) = self.existing(id) {
            return Ok(r);
        }
        let _opening = self.open_locks[super::stripe(id)].lock().await;
        if let Some(r) = self.existing(id) {
            return Ok(r);
        }
        self.broker.subscribe(id).await.map_err(HubError::Unavailable)?;
        let mut rooms = self.rooms.locked();
        let room = Arc::new(Room { subs: self.subs.room(id), here: Arc::default() });
        rooms.insert(id.to_string(), room.clone());
        Ok(room)
    }

    /// Drops a room whose last connection left (the caller holds `here`): unsubscribed, so a
    /// node is subscribed to exactly the rooms it has connections in.
    fn evict(&self, id: &str, room: &Arc<Room>, here: &mut Here) {
        // Forgotten under the map's lock (lock order: the map, then a `Subscribers` shard):
        // an opener that finds the room gone makes a fresh connection set, never this one.
        let mut rooms = self.rooms.locked();
        if rooms.get(id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(id);
        }
        self.subs.forget(id, &room.subs);
        drop(rooms);
        here.evicted = true;
        self.broker.unsubscribe(id);
    }

    /// Publishes a `login`/`logout` to every node's connections in the room (but `except`,
    /// a connection of this node); lost with a log line when the broker cannot take it.
    pub(super) fn announce(&self, room: &str, json: Vec<u8>, except: Option<ConnId>) {
        let p = Publication { frame: wire::text(&json), kind: Kind::Presence, except };
        if let Err(e) = self.broker.publish(room, &Conns::default(), &p) {
            tracing::warn!("room {room}: presence event not published: {e:#}");
        }
    }

    pub(super) async fn claim(&self, uid: &str) -> Result<bool, HubError> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // A claim that failed may have landed: the next heartbeat writes the counts as this
        // node holds them (without it), so no count leaks.
        let claimed = self
            .store
            .claim_conn(uid, self.max_per_uid)
            .await
            .inspect_err(|_| self.dirty.store(true, Ordering::Release))
            .map_err(store_err)?;
        if claimed {
            *self.conn_counts.locked().entry(uid.to_string()).or_insert(0) += 1;
        }
        Ok(claimed)
    }

    pub(super) fn release(self: &Arc<Self>, uid: &str) {
        {
            let mut counts = self.conn_counts.locked();
            if let Some(n) = counts.get_mut(uid) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(uid);
                }
            }
        }
        let (me, uid) = (self.clone(), uid.to_string());
        self.tasks.spawn(async move {
            if let Err(e) = me.store.release_conn(&uid).await {
                // The next heartbeat writes the counts as this node holds them.
                tracing::warn!("releasing a connection of {uid} in redis failed: {e:#}");
                me.dirty.store(true, Ordering::Release);
            }
        });
    }

    /// Entries a pong confirmed leave the queue (a failure leaves them queued: delivered again
    /// at the next login, which is safe).
    pub(super) fn dequeue_later(&self, uid: String, ns: Vec<u64>) {
        let store = self.store.clone();
        self.tasks.spawn(async move {
            if let Err(e) = store.dequeue(&uid, &ns).await {
                tracing::warn!("dequeue after confirmation failed: {e:#}");
            }
        });
    }

    /// `login`. The connection is added as pending first, so that what the room publishes
    /// from then on is held for it; then membership and presence are written (messages after
    /// that are no longer queued for it) and the catch-up is read, with no lock held; then,
    /// under the room's `Conns` lock, its `login`, the catch-up and the held publications go
    /// out merged in id order, each once, and it is live. Catch-up entries this node has not
    /// delivered yet (`RedisBroker::delivered`) are left to come live, in order.
    pub(super) async fn join(
        &self,
        conn: &Conn,
        who: &Who<'_>,
        roomid: &str,
        since: Option<u64>,
    ) -> Result<Joined, HubError> {
        if self.max_rooms_per_uid != usize::MAX {
            let rooms = self.store.user_rooms(who.uid).await.map_err(store_err)?;
            if rooms.len() >= self.max_rooms_per_uid && !rooms.iter().any(|r| r == roomid) {
                return Err(HubError::TooManyRooms(self.max_rooms_per_uid));
            }
        }
        let (room, here) = loop {
            let room = self.open(roomid).await?;
            let here = room.here.clone().lock_owned().await;
            if !here.evicted {
                break (room, here);
            }
        };
        let uid: Arc<str> = here.uids.get_key_value(who.uid).map(|(k, _)| k.clone()).unwrap_or_else(|| who.uid.into());
        let is_new = {
            let mut c = room.subs.lock();
            let new = !c.contains(conn.id);
            if new && c.is_empty() {
                self.metrics.rooms.inc();
            }
            c.add_pending(conn.id, uid.clone(), conn.outbox.clone());
            new
        };
        // From here on, a join that does not finish (an error, or the session's task dropped
        // mid-way) is undone by the guard.
        let mut g = Joining {
            cluster: self,
            roomid,
            room: &room,
            here,
            conn: conn.id,
            outbox: conn.outbox.clone(),
            uid: uid.clone(),
            is_new,
            counted: false,
            done: false,
        };
        // Even a repeated login writes (the same count): its `login` gets fresh counts.
        let n = g.here.uids.get(&uid).copied().unwrap_or(0) + u32::from(is_new);
        let m = if is_new { Membership::Add } else { Membership::Keep };
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Counted before the write: whether or not a failed write landed, the undo writes back.
        g.here.uids.insert(uid.clone(), n);
        g.counted = is_new;
        let RoomCounts { num, total, .. } = match self.store.set_presence(roomid, who.uid, n, m).await {
            Ok(counts) => counts,
            Err(e) => return Err(store_err(e)), // the guard undoes it
        };
        g.here.names.insert(uid.clone(), who.name.to_string());
        let catch_up = self.read_catch_up(who.uid, roomid, since).await;
        let mut login = LoginOut {
            event: "login",
            roomid,
            uid: who.uid,
            name: who.name,
            num,
            total,
            ts: crate::now_ms(),
            recovered: None,
        };
        if is_new {
            self.announce(roomid, protocol::login(&login), Some(conn.id));
        }
        login.recovered = since.map(|k| catch_up.as_ref().is_ok_and(|c| recovered(k, &c.replay, &c.queued)));
        let claimed = {
            let mut c = room.subs.lock();
            g.done = true;
            if is_new || login.recovered.is_some() {
                send_one(&self.metrics, conn, wire::text(&protocol::login(&login)));
            }
            // Moved by the subscriber under this lock: ids up to it were delivered here.
            let upto = self.broker.delivered(roomid).unwrap_or(u64::MAX);
            let held = c.activate(conn.id);
            let mut out: Vec<((u64, u8, usize), Bytes)> = Vec::new();
            let (claimed, ping) = match &catch_up {
                Ok(cu) => {
                    let mut push = |id: Option<u64>, frame| {
                        // The drain's ping goes after everything.
                        let key = id.map_or((u64::MAX, 2, 0), |id| (id, 0, out.len()));
                        out.push((key, frame));
                        true
                    };
                    let (claimed, ping) = catch_up_into(conn, who.uid, since, cu, upto, &mut push);
                    (Some(claimed), ping)
                }
                Err(_) => (None, None),
            };
            let mut after = 0;
            for (i, (id, frame)) in held.into_iter().enumerate() {
                match id {
                    Some(id) if catch_up.as_ref().is_ok_and(|cu| id <= upto && cu.has(id)) => {}
                    Some(id) => {
                        after = id;
                        out.push(((id, 0, usize::MAX / 2 + i), frame));
                    }
                    // Presence stays right after the message it followed.
                    None => out.push(((after, 1, i), frame)),
                }
            }
            out.sort_by_key(|(k, _)| *k);
            let mut refused = false;
            for (_, frame) in out {
                refused |= !send_one(&self.metrics, conn, frame);
            }
            if let (true, Some(token)) = (refused, ping) {
                // A ping after a refused entry confirms nothing.
                conn.unconfirmed.locked().retain(|(t, ..)| *t != token);
            }
            claimed
        };
        drop(g);
        let delivered = match catch_up {
            Ok(_) => self.store.dequeue(who.uid, &claimed.unwrap_or_default()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &delivered {
            tracing::error!("replay/offline delivery in room {roomid}: {e:#}");
        }
        Ok(Joined { catch_up_failed: delivered.is_err() })
    }

    async fn read_catch_up(&self, uid: &str, roomid: &str, since: Option<u64>) -> anyhow::Result<CatchUp> {
        let replay = match since {
            Some(k) => self.store.history_after(roomid, k).await?,
            None => Vec::new(),
        };
        Ok(CatchUp { replay, queued: self.store.queued(uid, roomid, crate::now_ms()).await? })
    }

    /// `message`: one script gives the id and stores, queues and PUBLISHes it; this node's
    /// connections, the sender's included, get it from the subscription like every other
    /// node's. The `ack` follows the script (durable as Redis's AOF setting makes it).
    pub(super) async fn publish(
        &self,
        conn: &Conn,
        who: &Who<'_>,
        roomid: &str,
        text: &str,
        cid: Option<&str>,
    ) -> Result<(), HubError> {
        let room = self.existing(roomid).ok_or(HubError::NotInRoom)?;
        if !room.subs.lock().is_live(conn.id) {
            return Err(HubError::NotInRoom);
        }
        // This node's presence events of the room go first (they leave through a task).
        self.broker.presence_sent().await;
        let now = crate::now_ms();
        let template = Template::message(&MessageOut {
            event: "message",
            id: 0,
            roomid,
            uid: who.uid,
            name: who.name,
            message: text,
            num: 0,
            total: 0,
            ts: now,
            cid,
        });
        let p = Publish { room: roomid, uid: who.uid, cid, template: &template, now_ms: now };
        let (id, acked_room) = match self.store.publish(&p).await.map_err(store_err)? {
            Outcome::Published(m) => {
                self.metrics.messages_in.inc();
                (m.id, roomid.to_string())
            }
            Outcome::AlreadyPublished { room, id } => (id, room),
        };
        if let Some(c) = cid {
            send_one(&self.metrics, conn, wire::text(&protocol::ack(c, id, &acked_room)));
        }
        Ok(())
    }

    /// Removes `conn` from a room: its presence here goes down by one, and with the uid's
    /// last connection on this node its presence here ends (`end_membership`: its membership
    /// too) and the room hears `logout` when no other node has it there either. The presence
    /// is written before the connection leaves `Conns`: until Redis counts the uid offline, a
    /// message reaches its (closing) connection here, whose refusal queues it.
    pub(super) async fn remove(
        &self,
        conn: ConnId,
        who: &Who<'_>,
        roomid: &str,
        end_membership: bool,
    ) -> Result<(), HubError> {
        let room = self.existing(roomid).ok_or(HubError::NotInRoom)?;
        let mut here = room.here.lock().await;
        let Some(uid) = room.subs.lock().uid_of(conn).filter(|_| !here.evicted) else {
            return Err(HubError::NotInRoom);
        };
        let left = match here.uids.get_mut(&uid) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            here.uids.remove(&uid);
            here.names.remove(&uid);
        }
        let done = self.after_remove(who, roomid, left, end_membership).await;
        if let Ok(seq) = &done {
            self.until_delivered(roomid, *seq).await;
        }
        let empty = {
            let mut c = room.subs.lock();
            c.remove(conn);
            c.is_empty()
        };
        if empty {
            self.metrics.rooms.dec();
            self.evict(roomid, &room, &mut here);
        }
        done.map(drop)
    }

    /// Until this node has delivered the room's messages up to `seq` (bounded): messages
    /// published before a leaving connection's presence write reach it (or, refused by its
    /// closing outbox, its queue) rather than nobody, when the subscriber lags behind.
    async fn until_delivered(&self, roomid: &str, seq: u64) {
        let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
        while self.broker.delivered(roomid).is_some_and(|d| d < seq) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "room {roomid}: this node is behind on its messages; a leaving connection may miss some"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The presence write of a removal (and the `logout` when the uid is gone from the room
    /// on every node); the room's last id given as it landed.
    async fn after_remove(
        &self,
        who: &Who<'_>,
        roomid: &str,
        left: u32,
        end_membership: bool,
    ) -> Result<u64, HubError> {
        if self.left.load(Ordering::Acquire) {
            return Ok(0); // the node's presence is gone already (`leave_node`)
        }
        let m = if end_membership && left == 0 { Membership::End } else { Membership::Keep };
        let counts = self
            .store
            .set_presence(roomid, who.uid, left, m)
            .await
            .inspect_err(|e| self.presence_failed(e))
            .map_err(store_err)?;
        if left == 0 && !counts.uid_online {
            let RoomCounts { num, total, .. } = counts;
            let json =
                protocol::logout(&LogoutOut { event: "logout", roomid, uid: who.uid, name: who.name, num, total });
            self.announce(roomid, json, None);
        }
        Ok(counts.seq)
    }

    /// `leave`: `remove` in a task of the hub's, so that a session dropped while it waits does
    /// not stop it half-way (the connection out of the room but its presence still counted).
    pub(super) async fn leave(self: &Arc<Self>, conn: ConnId, who: &Who<'_>, roomid: &str) -> Result<(), HubError> {
        let (me, uid, name, room) = (self.clone(), who.uid.to_string(), who.name.to_string(), roomid.to_string());
        let task = self.tasks.spawn(async move { me.remove(conn, &Who { uid: &uid, name: &name }, &room, true).await });
        task.await.unwrap_or_else(|e| Err(HubError::Unavailable(anyhow::anyhow!("leave: {e}"))))
    }

    /// A session ended: its rooms are left (memberships kept) in a task of the hub's.
    pub(super) fn disconnect(self: &Arc<Self>, conn: ConnId, who: &Who, rooms: &[String]) {
        // At once, before the Redis writes: what reaches it from now on is queued for its uid.
        for r in rooms {
            if let Some(room) = self.existing(r) {
                room.subs.lock().mark_gone(conn);
            }
        }
        let (me, uid, name, rooms) = (self.clone(), who.uid.to_string(), who.name.to_string(), rooms.to_vec());
        self.tasks.spawn(async move {
            let who = Who { uid: &uid, name: &name };
            for r in &rooms {
                match me.remove(conn, &who, r, false).await {
                    Ok(()) | Err(HubError::NotInRoom) => {}
                    Err(e) => tracing::error!("disconnect from room {r}: {e:?}"),
                }
            }
        });
    }
}

/// A Redis store error as the client hears it: `unavailable` for an outage (try again),
/// `internal` for anything else.
fn store_err(e: anyhow::Error) -> HubError {
    if is_unavailable(&e) {
        HubError::Unavailable(e)
    } else {
        HubError::Internal(e)
    }
}

/// A join under way (it holds the room's `Here`). Dropped before `done` (an error, or the
/// session's task dropped mid-join), it takes the connection back out of the room and its
/// count back down, and has the heartbeat write this node's presence again (a write may have
/// landed): no pending connection is left behind to hold publications forever.
struct Joining<'a> {
    cluster: &'a Cluster,
    roomid: &'a str,
    room: &'a Arc<Room>,
    here: OwnedMutexGuard<Here>,
    conn: ConnId,
    outbox: Arc<crate::outbox::Outbox>,
    uid: Arc<str>,
    is_new: bool,
    /// The join's connection is in `here`'s count.
    counted: bool,
    done: bool,
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let empty = {
            let mut c = self.room.subs.lock();
            if self.is_new {
                c.remove(self.conn);
            } else {
                // It was in the room before this login: it stays, and gets what was held.
                for (_, frame) in c.activate(self.conn) {
                    let _ = self.outbox.push(frame);
                }
            }
            c.is_empty()
        };
        if self.counted {
            if let Some(n) = self.here.uids.get_mut(&self.uid) {
                *n -= 1;
                if *n == 0 {
                    self.here.uids.remove(&self.uid);
                    self.here.names.remove(&self.uid);
                }
            }
        }
        self.cluster.dirty.store(true, Ordering::Relaxed);
        if empty {
            self.cluster.metrics.rooms.dec();
            self.cluster.evict(self.roomid, self.room, &mut self.here);
        }
    }
}
