//! One room's live state: its connections, presence and cached membership. The hub holds a
//! room's lock across "assign id, store, fan out", which is what orders a room's messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Pushed};
use crate::sync::LockExt;

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

    /// Queues one encoded frame to every connection in the room but `except`; never waits.
    pub fn fan_out_except(&self, frame: &Bytes, except: Option<ConnId>, metrics: &Metrics) {
        let mut n = 0;
        for (id, c) in &self.conns {
            if Some(*id) != except && c.outbox.push(frame.clone()) == Pushed::Queued {
                n += 1;
            }
        }
        metrics.messages_out.add(n);
    }

    pub fn fan_out(&self, frame: &Bytes, metrics: &Metrics) {
        self.fan_out_except(frame, None, metrics)
    }

    /// Members a message published now is queued for: those with no connection here, and
    /// those whose every connection here is closing (a closing connection is offline).
    pub fn offline_now(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.offline.iter().map(String::as_str).collect();
        if self.conns.values().any(|c| c.outbox.is_closing()) {
            out.extend(self.all_closing(self.conns.values().filter(|c| c.outbox.is_closing()).map(|c| &*c.uid)));
        }
        out
    }

    /// Fans a message out; returns the members that did not get it (their push was refused:
    /// the connection is closing) and have no other live connection here.
    pub fn fan_out_message(&self, frame: &Bytes, metrics: &Metrics) -> Vec<&str> {
        let mut n = 0;
        let mut refused: Vec<&str> = Vec::new();
        for c in self.conns.values() {
            match c.outbox.push(frame.clone()) {
                Pushed::Queued => n += 1,
                Pushed::Overflow | Pushed::Dropped => refused.push(&c.uid),
            }
        }
        metrics.messages_out.add(n);
        if refused.is_empty() {
            return refused;
        }
        self.all_closing(refused.into_iter())
    }

    /// Of `uids`, the members (once each) with no connection here that is not closing.
    fn all_closing<'a>(&'a self, uids: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        for u in uids {
            let live = self.conns.values().any(|c| &*c.uid == u && !c.outbox.is_closing());
            if !live && !out.contains(&u) && self.members.contains(u) {
                out.push(u);
            }
        }
        out
    }
}

pub(super) struct Room {
    state: Mutex<RoomState>,
}

impl Room {
    /// A room as the store has it, with ids up to `reserved` durably reserved.
    pub fn new(members: Vec<String>, last_id: u64, reserved: u64) -> Self {
        let members: HashSet<String> = members.into_iter().collect();
        let offline = members.clone();
        Room {
            state: Mutex::new(RoomState {
                conns: HashMap::new(),
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
