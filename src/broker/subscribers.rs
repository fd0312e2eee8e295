//! This node's connections per room: what a broker delivers a room's publications to. The hub
//! adds and removes connections; the broker only delivers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Pushed};
use crate::sync::LockExt;

use super::{ConnId, Missed, Publication};

/// Shards of the room map, so that publishes in different rooms rarely meet on a lock.
const SHARDS: usize = 64;

/// A connection as a room sees it.
struct Sub {
    uid: Arc<str>,
    outbox: Arc<Outbox>,
    state: SubState,
}

/// Where a connection of the room stands; one check per recipient in `deliver`.
enum SubState {
    /// Gets every publication (the usual case: no lock).
    Live,
    /// A join catches it up (scaled out, where the catch-up is read with no lock held): the
    /// publications delivered meanwhile, in order, each with its message id, held back until
    /// `activate`.
    Pending(Mutex<Vec<Held>>),
    /// Its session has ended and its removal is on the way (scaled out, that takes a Redis
    /// write): it refuses everything, so its uid is reported missed and gets it queued.
    Gone,
}

/// A publication held for a pending connection: its message id (`None` for presence) and
/// the frame.
pub(crate) type Held = (Option<u64>, Bytes);

/// One room's connections on this node, behind a lock that the hub takes under the room's
/// own lock (and a broker that delivers from the network takes alone).
pub struct RoomSubs {
    room: String,
    conns: Mutex<Conns>,
}

impl RoomSubs {
    pub fn new(room: &str) -> Self {
        RoomSubs { room: room.to_string(), conns: Mutex::default() }
    }

    /// The room id.
    pub fn room(&self) -> &str {
        &self.room
    }

    pub fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.locked()
    }
}

/// The connections themselves.
#[derive(Default)]
pub struct Conns {
    map: HashMap<ConnId, Sub>,
}

impl Conns {
    /// Adds a connection; true when it was not there yet.
    pub fn add(&mut self, id: ConnId, uid: Arc<str>, outbox: Arc<Outbox>) -> bool {
        self.map.insert(id, Sub { uid, outbox, state: SubState::Live }).is_none()
    }

    /// Adds a connection as pending: what is delivered to it is held (`SubState::Pending`)
    /// until `activate`. A connection already here becomes pending again (a repeated join
    /// with `since` catches it up once more). It counts as receiving: never "missed".
    pub(crate) fn add_pending(&mut self, id: ConnId, uid: Arc<str>, outbox: Arc<Outbox>) {
        match self.map.get_mut(&id) {
            Some(s) if matches!(s.state, SubState::Gone) => {}
            Some(s) => s.state = SubState::Pending(Mutex::default()),
            None => {
                self.map.insert(id, Sub { uid, outbox, state: SubState::Pending(Mutex::default()) });
            }
        }
    }

    /// Makes a pending connection live and returns what was held for it, oldest first; the
    /// caller sends its catch-up and then these, in the same critical section, so that no
    /// publication overtakes them. Empty for a connection that was not pending.
    pub(crate) fn activate(&mut self, id: ConnId) -> Vec<Held> {
        let Some(s) = self.map.get_mut(&id) else { return Vec::new() };
        match std::mem::replace(&mut s.state, SubState::Live) {
            SubState::Pending(held) => held.into_inner().unwrap_or_else(|p| p.into_inner()),
            other => {
                s.state = other;
                Vec::new()
            }
        }
    }

    /// The connection's session ended: from now on it refuses every publication (see
    /// `SubState::Gone`), until it is removed.
    pub(crate) fn mark_gone(&mut self, id: ConnId) {
        if let Some(s) = self.map.get_mut(&id) {
            s.state = SubState::Gone;
        }
    }

    /// Whether the connection is here and live (not pending).
    pub(crate) fn is_live(&self, id: ConnId) -> bool {
        self.map.get(&id).is_some_and(|s| !matches!(s.state, SubState::Pending(_)))
    }

    /// Removes a connection; its uid when it was there.
    pub fn remove(&mut self, id: ConnId) -> Option<Arc<str>> {
        self.map.remove(&id).map(|s| s.uid)
    }

    /// The uid of a connection here.
    pub(crate) fn uid_of(&self, id: ConnId) -> Option<Arc<str>> {
        self.map.get(&id).map(|s| s.uid.clone())
    }

    pub fn contains(&self, id: ConnId) -> bool {
        self.map.contains_key(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The uids (once each) that have connections here and all of them closing: offline for
    /// new messages (PROTOCOL.md: a closing connection counts as offline).
    pub fn all_closing(&self) -> Vec<Arc<str>> {
        if !self.map.values().any(|s| s.outbox.is_closing()) {
            return Vec::new();
        }
        self.without_live(self.map.values().filter(|s| s.outbox.is_closing()).map(|s| &s.uid))
    }

    /// Pushes `p` to every connection but `p.except`; returns the uids whose every connection
    /// here refused it. Never waits.
    pub fn deliver(&self, p: &Publication, metrics: &Metrics) -> Missed {
        let mut n = 0;
        let mut refused: Vec<&Arc<str>> = Vec::new();
        for (id, s) in &self.map {
            if Some(*id) == p.except {
                continue;
            }
            match &s.state {
                SubState::Live => {}
                SubState::Pending(held) => {
                    let id = match p.kind {
                        super::Kind::Message { id, .. } => Some(id),
                        super::Kind::Presence => None,
                    };
                    held.locked().push((id, p.frame.clone()));
                    continue;
                }
                SubState::Gone => {
                    refused.push(&s.uid);
                    continue;
                }
            }
            match s.outbox.push(p.frame.clone()) {
                Pushed::Queued => n += 1,
                Pushed::Overflow | Pushed::Dropped => refused.push(&s.uid),
            }
        }
        metrics.messages_out.add(n);
        if refused.is_empty() {
            return Vec::new();
        }
        self.without_live(refused.into_iter())
    }

    /// Of `uids`, those (once each) with no connection here that is not closing.
    fn without_live<'a>(&self, uids: impl Iterator<Item = &'a Arc<str>>) -> Missed {
        let mut out: Missed = Vec::new();
        for u in uids {
            let live =
                self.map.values().any(|s| s.uid == *u && !matches!(s.state, SubState::Gone) && !s.outbox.is_closing());
            if !live && !out.contains(u) {
                out.push(u.clone());
            }
        }
        out
    }
}

/// Every room with connections on this node (and rooms the hub has open).
pub struct Subscribers {
    /// Counts the frames queued (`messages_out`).
    shards: [Mutex<HashMap<String, Arc<RoomSubs>>>; SHARDS],
    metrics: Arc<Metrics>,
}

impl Subscribers {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Subscribers { shards: std::array::from_fn(|_| Mutex::default()), metrics }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn shard(&self, room: &str) -> &Mutex<HashMap<String, Arc<RoomSubs>>> {
        &self.shards[crate::hub::stripe(room) % SHARDS]
    }

    /// The room's connection set, created when missing (the hub calls it as it opens a room).
    pub fn room(&self, room: &str) -> Arc<RoomSubs> {
        self.shard(room).locked().entry(room.to_string()).or_insert_with(|| Arc::new(RoomSubs::new(room))).clone()
    }

    /// Forgets a room's set (the hub dropped the room), unless it was replaced meanwhile.
    pub fn forget(&self, room: &str, subs: &Arc<RoomSubs>) {
        let mut shard = self.shard(room).locked();
        if shard.get(room).is_some_and(|s| Arc::ptr_eq(s, subs)) {
            shard.remove(room);
        }
    }

    /// The room's connection set, when the room is open here (a broker that delivers from
    /// the network must not create rooms).
    pub fn get(&self, room: &str) -> Option<Arc<RoomSubs>> {
        self.shard(room).locked().get(room).cloned()
    }

    /// Delivers `p` to the room's connections here (none when the room is not open here):
    /// what a broker that receives from the network does with what it receives.
    pub fn deliver(&self, room: &str, p: &Publication) -> Missed {
        let subs = self.shard(room).locked().get(room).cloned();
        subs.map(|s| s.lock().deliver(p, &self.metrics)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Kind;

    #[test]
    fn a_uid_misses_a_publication_only_when_every_connection_of_it_refused() {
        let mut subs = Conns::default();
        let out = || Arc::new(Outbox::new(10, 1 << 20));
        let (a1, a2, b, c) = (out(), out(), out(), out());
        subs.add(1, "a".into(), a1.clone());
        subs.add(2, "a".into(), a2.clone());
        subs.add(3, "b".into(), b.clone());
        subs.add(4, "c".into(), c.clone());
        a1.close(1013, "slow");
        b.close(1013, "slow");
        assert_eq!(subs.all_closing(), vec![Arc::<str>::from("b")], "a has a live connection");
        let metrics = Metrics::default();
        let p = Publication { frame: bytes::Bytes::from_static(b"x"), kind: Kind::Presence, except: Some(4) };
        assert_eq!(subs.deliver(&p, &metrics), vec![Arc::<str>::from("b")]);
        assert_eq!(metrics.messages_out.get(), 1, "a2 only: c is the exception, a1 and b are closing");
        assert!(c.has_room(10, 0), "the exception got nothing");
        assert_eq!(subs.remove(3).as_deref(), Some("b"));
        assert!(subs.all_closing().is_empty());
    }
}
