//! The hub: rooms, presence, fan-out and the per-uid connection count. It holds each
//! connection's `Outbox` (never a socket), and writes through the `Store`.
//!
//! Ordering contract: within a room, ids are assigned, stored and fanned out under the room's
//! lock, so every connection sees a room's events in id order, and a joiner's replay and
//! offline drain come before any live message published after its `login`.

mod room;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::durability::GroupCommit;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::{self, Mark};
use crate::store::{Append, Store};
use crate::wire;

use room::{Room, RoomConn};

pub type ConnId = u64;

/// A connection as the hub knows it.
pub struct Conn {
    pub id: ConnId,
    pub outbox: Arc<Outbox>,
    /// Set by the session on every frame received; cleared by each heartbeat tick.
    seen: AtomicBool,
}

impl Conn {
    pub fn mark_seen(&self) {
        self.seen.store(true, Ordering::Relaxed);
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
    Internal(anyhow::Error),
}

/// What `join` did.
#[derive(Debug)]
pub struct Joined {
    /// The connection joined, but replay or offline delivery failed (a store error): the client
    /// should log in again with `since`.
    pub catch_up_failed: bool,
}

/// Ids are reserved durably in blocks of this size (one flush per block per room).
const ID_BLOCK: u64 = 65_536;

/// Stripes of the per-uid lock around "check the dedupe record, then publish".
const DEDUPE_STRIPES: usize = 64;

impl From<anyhow::Error> for HubError {
    fn from(e: anyhow::Error) -> Self {
        HubError::Internal(e)
    }
}

pub struct Hub {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    commit: Arc<GroupCommit>,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    conns: Mutex<HashMap<ConnId, Arc<Conn>>>,
    uids: Mutex<HashMap<String, usize>>,
    next_conn: AtomicU64,
    max_per_uid: usize,
    /// Serialises publishes with a `cid` per uid (striped), so one `cid` is published once even
    /// when two connections of the uid send it to two rooms at the same moment.
    dedupe_locks: [Mutex<()>; DEDUPE_STRIPES],
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, max_per_uid: usize) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            metrics,
            commit: Arc::new(GroupCommit::default()),
            rooms: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            uids: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            max_per_uid,
            dedupe_locks: std::array::from_fn(|_| Mutex::new(())),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn group_commit(&self) -> Arc<GroupCommit> {
        self.commit.clone()
    }

    /// Registers a new connection (anonymous until it authenticates) for heartbeats.
    pub fn register(&self, outbox: Arc<Outbox>) -> Arc<Conn> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn { id, outbox, seen: AtomicBool::new(true) });
        self.conns.lock().unwrap().insert(id, conn.clone());
        self.metrics.connections.inc();
        conn
    }

    pub fn unregister(&self, conn: &Conn) {
        if self.conns.lock().unwrap().remove(&conn.id).is_some() {
            self.metrics.connections.dec();
        }
    }

    /// Counts a connection against its uid's limit; false when over it.
    pub fn claim_uid(&self, uid: &str) -> bool {
        let mut u = self.uids.lock().unwrap();
        let n = u.entry(uid.to_string()).or_insert(0);
        if *n >= self.max_per_uid {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release_uid(&self, uid: &str) {
        let mut u = self.uids.lock().unwrap();
        if let Some(n) = u.get_mut(uid) {
            *n -= 1;
            if *n == 0 {
                u.remove(uid);
            }
        }
    }

    fn room(&self, id: &str) -> Result<Arc<Room>, HubError> {
        let mut rooms = self.rooms.lock().unwrap();
        if let Some(r) = rooms.get(id) {
            return Ok(r.clone());
        }
        let room = Arc::new(Room::new(self.store.members(id)?, self.store.last_id(id)?));
        rooms.insert(id.to_string(), room.clone());
        Ok(room)
    }

    fn existing_room(&self, id: &str) -> Option<Arc<Room>> {
        self.rooms.lock().unwrap().get(id).cloned()
    }

    /// `login`: joins `conn` to the room (broadcasting `login` when it is new there), then
    /// replays history after `since`, then delivers the uid's offline queue for the room, all
    /// under the room lock so that no live message overtakes them.
    pub fn join(&self, conn: &Conn, who: &Who, roomid: &str, since: Option<u64>) -> Result<Joined, HubError> {
        let room = self.room(roomid)?;
        let mut st = room.lock();
        if st.evicted {
            // Evicted between the lookup and the lock: the next lookup opens it afresh.
            drop(st);
            return self.join(conn, who, roomid, since);
        }
        if !st.conns.contains_key(&conn.id) {
            if !st.members.contains(who.uid) {
                self.store.add_member(roomid, who.uid)?;
                st.members.insert(who.uid.to_string());
            }
            let uid: Arc<str> =
                st.online.get_key_value(who.uid).map(|(k, _)| k.clone()).unwrap_or_else(|| who.uid.into());
            let count = st.online.entry(uid.clone()).or_insert(0);
            *count += 1;
            let count = *count;
            if let Err(e) = self.store.set_online(roomid, who.uid, count) {
                tracing::warn!("presence write failed: {e:#}");
            }
            st.offline.remove(who.uid);
            if st.conns.is_empty() {
                self.metrics.rooms.inc();
            }
            st.conns.insert(conn.id, RoomConn { uid, outbox: conn.outbox.clone() });
            let json = protocol::login(&protocol::LoginOut {
                event: "login",
                roomid,
                uid: who.uid,
                name: who.name,
                num: st.num(),
                total: st.total(),
                ts: crate::now_ms(),
            });
            st.fan_out(&wire::text(&json), &self.metrics);
        }
        // From here on the connection is in the room whatever happens: report, don't fail.
        let catch_up = self.catch_up(conn, who.uid, roomid, since);
        drop(st);
        if let Err(e) = &catch_up {
            tracing::error!("replay/offline delivery in room {roomid}: {e:#}");
        }
        Ok(Joined { catch_up_failed: catch_up.is_err() })
    }

    /// Replay after `since`, then queued offline messages not covered by it. Queue entries leave
    /// the store only once they are in the outbox: if it fills up, the rest stay queued.
    fn catch_up(&self, conn: &Conn, uid: &str, roomid: &str, since: Option<u64>) -> anyhow::Result<()> {
        let mut replayed = (1, 0);
        if let Some(k) = since {
            let msgs = self.store.history_after(roomid, k)?;
            if let (Some(first), Some(last)) = (msgs.first(), msgs.last()) {
                replayed = (first.id, last.id);
            }
            for m in msgs {
                self.send_one(conn, wire::text(&protocol::with_mark(&m.json, Mark::Replay)));
            }
        }
        let queued = self.store.queued(uid, roomid, crate::now_ms())?;
        let mut done = Vec::with_capacity(queued.len());
        for q in queued {
            let covered = since.is_some_and(|k| q.id <= k) || (q.id >= replayed.0 && q.id <= replayed.1);
            if !covered {
                let frame = wire::text(&protocol::with_mark(&q.json, Mark::Offline));
                if !self.send_one(conn, frame) {
                    break;
                }
            }
            done.push(q.n);
        }
        self.store.dequeue(uid, &done)
    }

    /// Queues one frame to one connection; false when its outbox refused it.
    fn send_one(&self, conn: &Conn, frame: Bytes) -> bool {
        let queued = conn.outbox.push(frame) == crate::outbox::Pushed::Queued;
        if queued {
            self.metrics.messages_out.inc();
        }
        queued
    }

    /// Removes `conn` from a room. `leave` (explicit) also ends the membership when it was the
    /// uid's last connection there; a disconnect keeps it (offline queueing goes on).
    fn remove(&self, conn: &Conn, who: &Who, roomid: &str, end_membership: bool) -> Result<(), HubError> {
        let room = self.existing_room(roomid).ok_or(HubError::NotInRoom)?;
        let mut st = room.lock();
        let Some(rc) = st.conns.remove(&conn.id) else {
            return Err(HubError::NotInRoom);
        };
        if st.conns.is_empty() {
            self.metrics.rooms.dec();
        }
        let left = {
            let c = st.online.get_mut(&rc.uid).expect("online counts every room connection");
            *c -= 1;
            *c
        };
        if let Err(e) = self.store.set_online(roomid, who.uid, left) {
            tracing::warn!("presence write failed: {e:#}");
        }
        if left > 0 {
            return Ok(());
        }
        st.online.remove(&rc.uid);
        if end_membership {
            self.store.remove_member(roomid, who.uid)?;
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
        st.fan_out(&wire::text(&json), &self.metrics);
        Ok(())
    }

    pub fn leave(&self, conn: &Conn, who: &Who, roomid: &str) -> Result<(), HubError> {
        self.remove(conn, who, roomid, true)
    }

    /// A connection went away: it leaves every room it was in, memberships kept.
    pub fn disconnect(&self, conn: &Conn, who: &Who, rooms: &[String]) {
        for r in rooms {
            if let Err(HubError::Internal(e)) = self.remove(conn, who, r, false) {
                tracing::error!("disconnect from room {r}: {e:#}");
            }
        }
    }

    /// `message`: assigns the next id, stores it (history, offline queues, dedupe record) and
    /// fans it out, all under the room lock; with a `cid`, the `ack` follows the next flush.
    /// A `cid` seen from this uid within the dedupe window is acked again, not republished.
    pub fn publish(&self, conn: &Conn, who: &Who, roomid: &str, text: &str, cid: Option<&str>) -> Result<(), HubError> {
        let room = self.existing_room(roomid).ok_or(HubError::NotInRoom)?;
        // Lock order: dedupe stripe, then room.
        let _cid_guard = cid.map(|_| {
            use std::hash::{BuildHasher, BuildHasherDefault};
            let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(who.uid);
            self.dedupe_locks[h as usize % DEDUPE_STRIPES].lock().unwrap_or_else(|p| p.into_inner())
        });
        let mut st = room.lock();
        if !st.conns.contains_key(&conn.id) {
            return Err(HubError::NotInRoom);
        }
        let now = crate::now_ms();
        if let Some(c) = cid {
            if let Some((first_room, id)) = self.store.dedupe_get(who.uid, c, now)? {
                drop(st);
                self.commit.after_flush(conn.outbox.clone(), wire::text(&protocol::ack(c, id, &first_room)));
                return Ok(());
            }
        }
        let id = st.last_id + 1;
        if id > st.reserved {
            let upto = id + ID_BLOCK - 1;
            self.store.reserve_ids(roomid, upto)?;
            st.reserved = upto;
        }
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
        let queued_for = {
            let offline: Vec<&str> = st.offline.iter().map(String::as_str).collect();
            let dedupe = cid.map(|c| (who.uid, c));
            self.store.append(&Append { room: roomid, id, json: &json, offline: &offline, dedupe, now_ms: now })?;
            offline.len() as u64
        };
        st.last_id = id;
        st.fan_out(&wire::text(&json), &self.metrics);
        drop(st);
        self.metrics.messages_in.inc();
        self.metrics.offline_writes.add(queued_for);
        if let Some(c) = cid {
            self.commit.after_flush(conn.outbox.clone(), wire::text(&protocol::ack(c, id, roomid)));
        }
        Ok(())
    }

    /// Every `interval`: close connections silent since the last tick, ping the others.
    pub async fn heartbeat(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let ping = wire::text(&protocol::heartbeat(true));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let conns: Vec<Arc<Conn>> = self.conns.lock().unwrap().values().cloned().collect();
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
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let store = self.store.clone();
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
        let all: Vec<(String, Arc<Room>)> =
            self.rooms.lock().unwrap().iter().map(|(id, r)| (id.clone(), r.clone())).collect();
        for (id, room) in all {
            let last_id = room.lock().last_id;
            self.store.release_ids(&id, last_id)?;
        }
        Ok(())
    }

    /// Drops rooms with no connection from memory (their state is in the store), so that
    /// rooms nobody visits cost nothing. Their id reservation is released, after a flush that
    /// makes every message they hold durable, so ids continue without a gap when they reopen.
    pub async fn evict_idle_rooms(&self) -> anyhow::Result<usize> {
        // Lock order: a room, then the map; never the map, then a room.
        let all: Vec<(String, Arc<Room>)> =
            self.rooms.lock().unwrap().iter().map(|(id, r)| (id.clone(), r.clone())).collect();
        let idle: Vec<(String, Arc<Room>, u64)> = all
            .into_iter()
            .filter_map(|(id, r)| {
                let last_id = {
                    let st = r.lock();
                    st.conns.is_empty().then_some(st.last_id)
                };
                last_id.map(|l| (id, r, l))
            })
            .collect();
        if idle.is_empty() {
            return Ok(0);
        }
        self.store.flush().await?;
        let mut evicted = 0;
        for (id, room, last_id) in idle {
            let mut st = room.lock();
            // Someone came (and maybe published) since: not idle after all.
            if !st.conns.is_empty() || st.last_id != last_id || st.evicted {
                continue;
            }
            self.store.release_ids(&id, st.last_id)?;
            let mut rooms = self.rooms.lock().unwrap();
            if rooms.get(&id).is_some_and(|r| Arc::ptr_eq(r, &room)) {
                rooms.remove(&id);
                st.evicted = true;
                evicted += 1;
            }
        }
        Ok(evicted)
    }
}
