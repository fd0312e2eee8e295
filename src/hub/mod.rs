//! The hub: rooms, presence and the per-uid connection count. It holds each connection's
//! `Outbox` (never a socket), writes through the `Store`, and sends every room event through
//! the `Broker` (never to a room's connections itself).
//!
//! Ordering contract: every connection sees a room's events in id order, and a joiner's replay
//! and offline drain come before any live message published after its `login`. On one node
//! ids are assigned, stored and published under the room's lock; scaled out, Redis orders a
//! room and `cluster` keeps the joiner's side of the contract.

#[cfg(test)]
mod broker_tests;
mod cluster;
mod cluster_node;
mod join;
mod room;
mod tasks;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::broker::{Broker, Conns, Kind, LocalBroker, Publication, Subscribers};
use crate::durability::GroupCommit;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol;
use crate::store::{Append, Store};
use crate::sync::LockExt;
use crate::wire;

use room::{Room, RoomState};

pub use crate::broker::ConnId;

/// A connection as the hub knows it.
pub struct Conn {
    pub id: ConnId,
    pub outbox: Arc<Outbox>,
    /// Set by the session on every frame received; cleared by each heartbeat tick.
    seen: Arc<AtomicBool>,
    /// Offline entries a login drain delivered, waiting for the pong that proves the client
    /// has them: (ping token, uid, entry numbers), oldest first.
    unconfirmed: Mutex<Vec<(u64, String, Vec<u64>)>>,
}

impl Conn {
    /// Set on every frame received (by the reader as it parses them); cleared by each
    /// heartbeat tick.
    pub fn seen_flag(&self) -> Arc<AtomicBool> {
        self.seen.clone()
    }
}

/// The authenticated identity an operation acts for (from the token, never from input).
pub struct Who<'a> {
    pub uid: &'a str,
    pub name: &'a str,
}

/// Expected outcomes that are not successes.
#[derive(Debug)]
pub enum HubError {
    NotInRoom,
    /// A join that would make the uid a member of more rooms than it may be (the limit).
    TooManyRooms(usize),
    /// The store could not take the write (disk full, Redis unreachable, ...): nothing was
    /// published or joined; the client tries again later.
    Unavailable(anyhow::Error),
    /// The store answered with an error that waiting will not cure (scaled out: a Redis error
    /// other than an outage, e.g. a key of the wrong type): a bug or a foreign write.
    Internal(anyhow::Error),
}

/// What `join` did.
#[derive(Debug)]
pub struct Joined {
    /// The connection joined, but replay or offline delivery failed (a store error): the client
    /// should log in again with `since`.
    pub catch_up_failed: bool,
}

/// Ids are reserved durably in blocks of this size (one flush per block per room); the next
/// block is reserved when half of the current one is used, so publishes never wait for it.
const ID_BLOCK: u64 = 65_536;

/// Stripes of the striped locks: per uid around "check the dedupe record, then publish", per
/// room id around opening a room.
const STRIPES: usize = 64;

/// The stripe of a striped lock that `key` takes.
pub(crate) fn stripe(key: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key) as usize % STRIPES
}

/// Queues one frame to one connection (counted); false when its outbox refused it.
fn send_one(metrics: &Metrics, conn: &Conn, frame: Bytes) -> bool {
    let queued = conn.outbox.push(frame) == crate::outbox::Pushed::Queued;
    if queued {
        metrics.messages_out.inc();
    }
    queued
}

impl From<anyhow::Error> for HubError {
    fn from(e: anyhow::Error) -> Self {
        HubError::Unavailable(e)
    }
}

/// Where the rooms' data lives, and so who gives ids and orders a room.
enum Engine {
    /// One node: the store answers from memory under the hub's room lock, which orders a room.
    Embedded(Arc<dyn Store>),
    /// Scaled out: Redis gives ids and holds membership and presence (`cluster`).
    Redis(Arc<cluster::Cluster>),
}

pub struct Hub {
    engine: Engine,
    /// Every room event goes out through it.
    broker: Arc<dyn Broker>,
    /// This node's connections per room, which the broker delivers to.
    subs: Arc<Subscribers>,
    metrics: Arc<Metrics>,
    commit: Arc<GroupCommit>,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    conns: Mutex<HashMap<ConnId, Arc<Conn>>>,
    uids: Mutex<HashMap<String, usize>>,
    next_conn: AtomicU64,
    max_per_uid: usize,
    /// Rooms one uid may be a member of (`--max-rooms-per-uid`).
    max_rooms_per_uid: usize,
    /// Serialises publishes with a `cid` per uid (striped), so one `cid` is published once even
    /// when two connections of the uid send it to two rooms at the same moment.
    dedupe_locks: [Mutex<()>; STRIPES],
    /// Serialises the opening of a room (striped by room id): one opener reserves and
    /// flushes, the others find the room open when they get the lock.
    open_locks: [tokio::sync::Mutex<()>; STRIPES],
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, max_per_uid: usize) -> Arc<Hub> {
        Self::with_limits(store, metrics, max_per_uid, usize::MAX)
    }

    /// `new`, with a cap on the rooms a uid may be a member of.
    pub fn with_limits(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        max_per_uid: usize,
        max_rooms_per_uid: usize,
    ) -> Arc<Hub> {
        Self::with_broker(store, metrics, max_per_uid, max_rooms_per_uid, |subs| Arc::new(LocalBroker::new(subs)))
    }

    /// `with_limits`, with the broker `broker` makes from this node's subscribers (the
    /// single-node `LocalBroker`, or one that reaches other nodes).
    pub fn with_broker(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        max_per_uid: usize,
        max_rooms_per_uid: usize,
        broker: impl FnOnce(Arc<Subscribers>) -> Arc<dyn Broker>,
    ) -> Arc<Hub> {
        let subs = Arc::new(Subscribers::new(metrics.clone()));
        let broker = broker(subs.clone());
        Hub::build(Engine::Embedded(store), broker, subs, metrics, max_per_uid, max_rooms_per_uid)
    }

    fn build(
        engine: Engine,
        broker: Arc<dyn Broker>,
        subs: Arc<Subscribers>,
        metrics: Arc<Metrics>,
        max_per_uid: usize,
        max_rooms_per_uid: usize,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            engine,
            broker,
            subs,
            metrics,
            commit: Arc::new(GroupCommit::default()),
            rooms: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            uids: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            max_per_uid,
            max_rooms_per_uid,
            dedupe_locks: std::array::from_fn(|_| Mutex::new(())),
            open_locks: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The embedded store. Only the single-node paths call it: every public method sends a
    /// Redis hub to `cluster` first.
    fn store(&self) -> &Arc<dyn Store> {
        match &self.engine {
            Engine::Embedded(s) => s,
            Engine::Redis(_) => unreachable!("an embedded-store path on a Redis hub"),
        }
    }

    /// Whether this hub runs on Redis (no local store: no flusher, no housekeeping, no ids
    /// to release).
    pub fn is_clustered(&self) -> bool {
        matches!(self.engine, Engine::Redis(_))
    }

    pub fn group_commit(&self) -> Arc<GroupCommit> {
        self.commit.clone()
    }

    /// Registers a new connection (anonymous until it authenticates) for heartbeats.
    pub fn register(&self, outbox: Arc<Outbox>) -> Arc<Conn> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn { id, outbox, seen: Arc::new(AtomicBool::new(true)), unconfirmed: Mutex::default() });
        self.conns.locked().insert(id, conn.clone());
        self.metrics.connections.inc();
        conn
    }

    pub fn unregister(&self, conn: &Conn) {
        if self.conns.locked().remove(&conn.id).is_some() {
            self.metrics.connections.dec();
        }
    }

    /// Counts a connection against its uid's limit; false when over it. Scaled out, the
    /// count is the uid's connections on every live node.
    pub async fn claim_uid(&self, uid: &str) -> Result<bool, HubError> {
        if let Engine::Redis(c) = &self.engine {
            return c.claim(uid).await;
        }
        let mut u = self.uids.locked();
        let n = u.entry(uid.to_string()).or_insert(0);
        if *n >= self.max_per_uid {
            return Ok(false);
        }
        *n += 1;
        Ok(true)
    }

    pub fn release_uid(&self, uid: &str) {
        if let Engine::Redis(c) = &self.engine {
            return c.release(uid);
        }
        let mut u = self.uids.locked();
        if let Some(n) = u.get_mut(uid) {
            *n -= 1;
            if *n == 0 {
                u.remove(uid);
            }
        }
    }

    fn existing_room(&self, id: &str) -> Option<Arc<Room>> {
        self.rooms.locked().get(id).cloned()
    }

    /// Queues one frame to one connection; false when its outbox refused it.
    fn send_one(&self, conn: &Conn, frame: Bytes) -> bool {
        send_one(&self.metrics, conn, frame)
    }

    /// Removes `conn` from a room. `leave` (explicit) also ends the membership when it was the
    /// uid's last connection there; a disconnect keeps it (offline queueing goes on).
    fn remove(&self, conn: &Conn, who: &Who, roomid: &str, end_membership: bool) -> Result<(), HubError> {
        let room = self.existing_room(roomid).ok_or(HubError::NotInRoom)?;
        let mut st = room.lock();
        let mut here = room.subs.lock();
        let Some(uid) = here.remove(conn.id) else {
            return Err(HubError::NotInRoom);
        };
        if here.is_empty() {
            self.metrics.rooms.dec();
        }
        let left = {
            let c = st.online.get_mut(&uid).expect("online counts every room connection");
            *c -= 1;
            *c
        };
        if let Err(e) = self.store().set_online(roomid, who.uid, left) {
            tracing::warn!("presence write failed: {e:#}");
        }
        if left > 0 {
            return Ok(());
        }
        st.online.remove(&uid);
        if end_membership {
            self.store().remove_member(roomid, who.uid)?;
            st.members.remove(who.uid);
        } else if st.members.contains(who.uid) {
            st.offline.insert(who.uid.to_string());
        }
        let json = protocol::logout(&protocol::LogoutOut {
            event: "logout",
            roomid,
            uid: who.uid,
            name: who.name,
            num: st.num(),
            total: st.total(),
        });
        self.broadcast(roomid, &here, wire::text(&json), None);
        if here.is_empty() && st.last_id == 0 {
            drop(here);
            self.drop_unused(&room, &mut st, roomid);
        }
        Ok(())
    }

    /// Drops a room nobody is in that never had an id given, at once rather than at the next
    /// idle sweep: there is no message to flush first and no id to keep (its reservation goes
    /// with it), and a churn of fresh room ids must not pile up rooms in memory for a minute.
    /// A join racing with this finds the room evicted and opens it afresh.
    fn drop_unused(&self, room: &Arc<Room>, st: &mut RoomState, roomid: &str) {
        if let Err(e) = self.evict(room, st, roomid) {
            tracing::warn!("room {roomid}: releasing its ids failed (left to the idle sweep): {e:#}");
        }
    }

    /// Drops a room without connections from the map, its id reservation released down to its
    /// last id (the caller holds the room lock, and has flushed whatever it stored). Lock
    /// order: a room, then the map. The release happens under the map lock, and only while the
    /// map holds this room: an opener checks the reservation under that lock too, so it never
    /// keeps a room whose reservation was just lowered. True when the room was dropped.
    fn evict(&self, room: &Arc<Room>, st: &mut RoomState, roomid: &str) -> anyhow::Result<bool> {
        let mut rooms = self.rooms.locked();
        if !rooms.get(roomid).is_some_and(|r| Arc::ptr_eq(r, room)) {
            return Ok(false);
        }
        self.store().release_ids(roomid, st.last_id)?;
        rooms.remove(roomid);
        st.evicted = true;
        self.subs.forget(roomid, &room.subs);
        self.broker.unsubscribe(roomid);
        Ok(true)
    }

    /// Publishes a `login`/`logout` to the room (but `except`). Presence is live state: a
    /// broker failure loses the event, not data, so it is logged, not returned.
    fn broadcast(&self, roomid: &str, here: &Conns, frame: Bytes, except: Option<ConnId>) {
        if let Err(e) = self.broker.publish(roomid, here, &Publication { frame, kind: Kind::Presence, except }) {
            tracing::warn!("room {roomid}: presence event not published: {e:#}");
        }
    }

    pub async fn leave(&self, conn: &Conn, who: &Who<'_>, roomid: &str) -> Result<(), HubError> {
        if let Engine::Redis(c) = &self.engine {
            return c.leave(conn.id, who, roomid).await;
        }
        self.remove(conn, who, roomid, true)
    }

    /// A connection went away: it leaves every room it was in, memberships kept. Never
    /// waits (it runs as the session is dropped): scaled out, the Redis writes go on in a
    /// task of the hub's (`leave_node` waits for them).
    pub fn disconnect(&self, conn: &Conn, who: &Who, rooms: &[String]) {
        if let Engine::Redis(c) = &self.engine {
            return c.disconnect(conn.id, who, rooms);
        }
        for r in rooms {
            if let Err(HubError::Unavailable(e)) = self.remove(conn, who, r, false) {
                tracing::error!("disconnect from room {r}: {e:#}");
            }
        }
    }

    /// `message`: assigns the next id, stores it (history, offline queues, dedupe record) and
    /// fans it out, all under the room lock; with a `cid`, the `ack` follows the next flush.
    /// A `cid` seen from this uid within the dedupe window is acked again, not republished.
    pub async fn publish(
        &self,
        conn: &Conn,
        who: &Who<'_>,
        roomid: &str,
        text: &str,
        cid: Option<&str>,
    ) -> Result<(), HubError> {
        match &self.engine {
            Engine::Redis(c) => c.publish(conn, who, roomid, text, cid).await,
            Engine::Embedded(_) => self.publish_embedded(conn, who, roomid, text, cid),
        }
    }

    /// `publish` on one node: no await, so the room lock orders it.
    fn publish_embedded(
        &self,
        conn: &Conn,
        who: &Who,
        roomid: &str,
        text: &str,
        cid: Option<&str>,
    ) -> Result<(), HubError> {
        let room = self.existing_room(roomid).ok_or(HubError::NotInRoom)?;
        // Lock order: dedupe stripe, then room.
        let _cid_guard = cid.map(|_| self.dedupe_locks[stripe(who.uid)].locked());
        let mut st = room.lock();
        let here = room.subs.lock();
        if !here.contains(conn.id) {
            return Err(HubError::NotInRoom);
        }
        let now = crate::now_ms();
        if let Some(c) = cid {
            if let Some((first_room, id)) = self.store().dedupe_get(who.uid, c, now)? {
                drop(st);
                self.commit.after_flush(conn.outbox.clone(), wire::text(&protocol::ack(c, id, &first_room)));
                return Ok(());
            }
        }
        let id = st.last_id + 1;
        self.keep_reserved_ahead(&room, &mut st, roomid, id)?;
        let json = protocol::message(&protocol::MessageOut {
            event: "message",
            id,
            roomid,
            uid: who.uid,
            name: who.name,
            message: text,
            num: st.num(),
            total: st.total(),
            ts: now,
            cid,
        });
        let closing = here.all_closing();
        let offline = st.offline_now(&closing);
        let dedupe = cid.map(|c| (who.uid, c));
        let prev =
            self.store().append(&Append { room: roomid, id, json: &json, offline: &offline, dedupe, now_ms: now })?;
        let mut queued_for = offline.len() as u64;
        // Connections that began closing since `offline_now` refuse the frame: their members
        // get it queued too, still before the ack is registered (the flush covers it).
        let p = Publication { frame: wire::text(&json), kind: Kind::Message { id, prev }, except: None };
        let missed = self.broker.publish(roomid, &here, &p).unwrap_or_else(|e| {
            // Stored, so replayed and acked: only the live copy is lost.
            tracing::error!("room {roomid}: message {id} stored but not published: {e:#}");
            Vec::new()
        });
        let missed: Vec<&str> =
            missed.iter().map(|u| &**u).filter(|u| st.members.contains(*u) && !offline.contains(u)).collect();
        if !missed.is_empty() {
            let a = Append { room: roomid, id, json: &json, offline: &missed, dedupe: None, now_ms: now };
            match self.store().enqueue(&a, prev) {
                Ok(()) => queued_for += missed.len() as u64,
                Err(e) => tracing::error!("room {roomid}: queueing message {id} for closing members failed: {e:#}"),
            }
        }
        st.last_id = id;
        drop(st);
        self.metrics.messages_in.inc();
        self.metrics.offline_writes.add(queued_for);
        if let Some(c) = cid {
            self.commit.after_flush(conn.outbox.clone(), wire::text(&protocol::ack(c, id, roomid)));
        }
        Ok(())
    }

    /// Makes sure `id` is durably reserved, and starts reserving the next block once half of
    /// the current one is used. The flush runs in a task of its own: no publish waits on the
    /// disk, and none runs under the room lock. Only when a whole half-block is published
    /// within one flush does a publish find `id` unreserved: it is refused as `unavailable`.
    fn keep_reserved_ahead(&self, room: &Arc<Room>, st: &mut RoomState, roomid: &str, id: u64) -> Result<(), HubError> {
        if !st.reserving && st.reserved.saturating_sub(id) < ID_BLOCK / 2 {
            let upto = st.reserved.max(id) + ID_BLOCK;
            self.store().reserve_ids(roomid, upto)?;
            st.reserving = true;
            let (store, room) = (self.store().clone(), room.clone());
            tokio::spawn(async move {
                let flushed = store.flush().await;
                let mut st = room.lock();
                st.reserving = false;
                match flushed {
                    Ok(()) => st.reserved = st.reserved.max(upto),
                    Err(e) => tracing::error!("id reservation flush failed (retried at the next publish): {e:#}"),
                }
            });
        }
        if id > st.reserved {
            return Err(HubError::Unavailable(anyhow::anyhow!("ids are being reserved, try again")));
        }
        Ok(())
    }
}
