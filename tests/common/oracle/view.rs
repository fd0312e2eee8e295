//! One connection's view of the rooms it is in: which part of a login's answer (replay,
//! offline, live) each message came in, and the order checks on it.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value;

use super::{Check, Kind, Model};

#[derive(Default)]
pub struct RoomView {
    pub joined: bool,
    phase: u8,
    last: [u64; 3],
    pub max: u64,
    seen: HashSet<u64>,
    /// Ids received as replay or offline.
    pub catch_up: BTreeSet<u64>,
    pub replay: Vec<u64>,
}

/// The per-login order checks of one connection (a connection logs in once per room).
pub struct ConnView {
    pub label: String,
    pub rooms: HashMap<String, RoomView>,
}

impl ConnView {
    pub fn new(label: impl Into<String>) -> ConnView {
        ConnView { label: label.into(), rooms: HashMap::new() }
    }

    pub fn joined(&mut self, room: &str) {
        self.rooms.entry(room.to_string()).or_default().joined = true;
    }

    pub fn room(&self, room: &str) -> Option<&RoomView> {
        self.rooms.get(room)
    }

    /// Checks one `message` event against the earlier ones of this login, records its text;
    /// returns (room, id, kind).
    pub fn message(&mut self, m: &mut Model, v: &Value) -> Option<(String, u64, Kind)> {
        let (Some(room), Some(id), Some(text)) = (v["roomid"].as_str(), v["id"].as_u64(), v["message"].as_str()) else {
            m.violate(Check::ConnectionOrder, format!("{}: malformed message {v}", self.label));
            return None;
        };
        let replay = v.get("replay").is_some();
        let offline = v.get("offline").is_some();
        if (replay && v["replay"] != true) || (offline && v["offline"] != true) || (replay && offline) {
            m.violate(Check::ConnectionOrder, format!("{}: bad marks on {v}", self.label));
        }
        let kind = if replay {
            Kind::Replay
        } else if offline {
            Kind::Offline
        } else {
            Kind::Live
        };
        m.saw(room, id, text, v["cid"].as_str(), &format!("{} {kind:?}", self.label));
        let label = self.label.clone();
        let rv = self.rooms.entry(room.to_string()).or_default();
        if !rv.joined {
            m.violate(Check::ConnectionOrder, format!("{label}: message in {room} before its own login: {v}"));
        }
        if !rv.seen.insert(id) {
            m.violate(Check::ConnectionOrder, format!("{label}: id {id} in {room} twice within one login ({kind:?})"));
        }
        let k = kind as u8;
        if k < rv.phase {
            m.violate(
                Check::ConnectionOrder,
                format!(
                    "{label}: {kind:?} id {id} in {room} after {} messages",
                    ["replay", "offline", "live"][rv.phase as usize]
                ),
            );
        }
        rv.phase = rv.phase.max(k);
        if rv.last[k as usize] != 0 && id <= rv.last[k as usize] {
            m.violate(
                Check::ConnectionOrder,
                format!("{label}: {kind:?} ids in {room} not increasing: {id} after {}", rv.last[k as usize]),
            );
        }
        if kind == Kind::Live && id <= rv.max {
            m.violate(
                Check::ConnectionOrder,
                format!("{label}: live id {id} in {room} not above {} already received", rv.max),
            );
        }
        rv.last[k as usize] = rv.last[k as usize].max(id);
        rv.max = rv.max.max(id);
        if kind != Kind::Live {
            rv.catch_up.insert(id);
        }
        if kind == Kind::Replay {
            rv.replay.push(id);
        }
        Some((room.to_string(), id, kind))
    }
}
