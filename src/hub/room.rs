//! One room's live state: its connections, presence and cached membership. The hub holds a
//! room's lock across "assign id, store, fan out", which is what orders a room's messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Pushed};

use super::ConnId;

/// A connection as a room sees it.
pub(super) struct RoomConn {
    pub uid: Arc<str>,
    pub outbox: Arc<Outbox>,
}

pub(super) struct RoomState {
    pub conns: HashMap<ConnId, RoomConn>,
    /// uid -> live connections in this room; `num` is its length.
    pub online: HashMap<Arc<str>, u32>,
    /// Member uids (`total`), mirrored from the store.
    pub members: HashSet<String>,
    /// Members with no live connection here: who gets a published message queued.
    pub offline: HashSet<String>,
    /// The last message id given.
    pub last_id: u64,
    /// Ids up to here are durably reserved and may be given without another flush.
    pub reserved: u64,
    /// Dropped from the hub's map (idle): whoever locked it late must look the room up again.
    pub evicted: bool,
}

impl RoomState {
    pub fn num(&self) -> usize {
        self.online.len()
    }
    pub fn total(&self) -> usize {
        self.members.len()
    }

    /// Queues one encoded frame to every connection in the room; never waits.
    pub fn fan_out(&self, frame: &Bytes, metrics: &Metrics) {
        let mut n = 0;
        for c in self.conns.values() {
            if c.outbox.push(frame.clone()) == Pushed::Queued {
                n += 1;
            }
        }
        metrics.messages_out.add(n);
    }
}

pub(super) struct Room {
    state: Mutex<RoomState>,
}

impl Room {
    pub fn new(members: Vec<String>, last_id: u64) -> Self {
        let members: HashSet<String> = members.into_iter().collect();
        let offline = members.clone();
        Room {
            state: Mutex::new(RoomState {
                conns: HashMap::new(),
                online: HashMap::new(),
                members,
                offline,
                last_id,
                reserved: last_id,
                evicted: false,
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding a room lock is a bug; keep serving the room rather than
        // poisoning it for everyone.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
