//! One room's live state: presence, cached membership, ids, and its connections on this node
//! (shared with the broker). The hub holds a room's lock across "assign id, store, publish",
//! which is what orders a room's messages on a single node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::broker::RoomSubs;
use crate::sync::LockExt;

pub(super) struct RoomState {
    /// uid -> live connections in this room; `num` is its length.
    pub online: HashMap<Arc<str>, u32>,
    /// Member uids (`total`), mirrored from the store.
    pub members: HashSet<String>,
    /// Members with no connection here: who gets a published message queued (besides members
    /// whose every connection here is closing, found at publish time).
    pub offline: HashSet<String>,
    /// The last message id given.
    pub last_id: u64,
    /// Ids up to here are durably reserved and may be given without another flush.
    pub reserved: u64,
    /// A larger reservation is written and waiting for its flush.
    pub reserving: bool,
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

    /// Members a message published now is queued for: those with no connection here, and
    /// those whose every connection here is closing (a closing connection is offline), given
    /// as `closing` (from `RoomSubs::all_closing`).
    pub fn offline_now<'a>(&'a self, closing: &'a [Arc<str>]) -> Vec<&'a str> {
        let mut out: Vec<&str> = self.offline.iter().map(String::as_str).collect();
        out.extend(closing.iter().map(|u| &**u).filter(|u| self.members.contains(*u)));
        out
    }
}

pub(super) struct Room {
    state: Mutex<RoomState>,
    /// This node's connections in the room, which the broker delivers to. Lock order: the
    /// state, then these.
    pub subs: Arc<RoomSubs>,
}

impl Room {
    /// A room as the store has it, with ids up to `reserved` durably reserved.
    pub fn new(members: Vec<String>, last_id: u64, reserved: u64, subs: Arc<RoomSubs>) -> Self {
        let members: HashSet<String> = members.into_iter().collect();
        let offline = members.clone();
        Room {
            subs,
            state: Mutex::new(RoomState {
                online: HashMap::new(),
                members,
                offline,
                last_id,
                reserved,
                reserving: false,
                evicted: false,
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.locked()
    }
}
