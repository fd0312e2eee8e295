//! The crash oracle's model (driven by tests/crash/): what was sent and acked, every id -> text
//! any client saw, the witness's view of each server run (presence and message order), what
//! each member received. The checks on all of it are in checks.rs, one connection's view in
//! view.rs. Violations are collected,
//! not panicked on, so that one run reports every failing check.
//!
//! Time: every `Instant` is taken on the conservative side (before a send, after a receipt), so
//! "ack received before the login was sent" really means "stored before the server saw the
//! login".

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;
use std::time::Instant;

use serde_json::Value;

mod checks;
mod view;

#[allow(unused_imports)] // the crash test's; the other test binaries see it unused
pub use view::ConnView;

/// The guarantees checked, one name each (PROTOCOL.md revision 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Check {
    ServerStart,
    HistoryByCount,
    IdOneText,
    ConnectionOrder,
    OfflineDelivery,
    RecoveredField,
    RecoveredTrue,
    RecoveredFalse,
    AckStable,
    Dedupe,
}

impl Check {
    pub const ALL: [Check; 10] = [
        Check::ServerStart,
        Check::HistoryByCount,
        Check::IdOneText,
        Check::ConnectionOrder,
        Check::OfflineDelivery,
        Check::RecoveredField,
        Check::RecoveredTrue,
        Check::RecoveredFalse,
        Check::AckStable,
        Check::Dedupe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::ServerStart => "server-start",
            Check::HistoryByCount => "history-by-count",
            Check::IdOneText => "id-one-text",
            Check::ConnectionOrder => "connection-order",
            Check::OfflineDelivery => "offline-delivery",
            Check::RecoveredField => "recovered-field",
            Check::RecoveredTrue => "recovered-true",
            Check::RecoveredFalse => "recovered-false",
            Check::AckStable => "ack-stable",
            Check::Dedupe => "dedupe",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Check::ServerStart => "the server starts (store opens) after every kill",
            Check::HistoryByCount => "replay since K = the last N stored messages with id > K, every acked one kept",
            Check::IdOneText => "an id names one message (one text) per room; an ack id is never reused",
            Check::ConnectionOrder => {
                "per login: replay, then offline, then live; ids increase in each; none twice; marks right"
            }
            Check::OfflineDelivery => "an offline member eventually gets every acked message published meanwhile",
            Check::RecoveredField => "the joiner's own login after a login with since carries `recovered`",
            Check::RecoveredTrue => "recovered:true only when every stored message after since was delivered",
            Check::RecoveredFalse => "recovered:false only when more than N messages were stored after since",
            Check::AckStable => "a cid is always acked with the same id",
            Check::Dedupe => "a cid acked once is never published again",
        }
    }
}

pub struct Violation {
    pub check: Check,
    pub cycle: usize,
    pub detail: String,
}

/// How a message reached a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Replay = 0,
    Offline = 1,
    Live = 2,
}

pub struct Ack {
    pub id: u64,
    pub at: Instant,
    pub epoch: usize,
    pub cycle: usize,
}

/// One message a sender wants delivered, under one cid (texts are unique per cid).
pub struct CidRec {
    pub room: String,
    pub text: String,
    pub sender: String,
    /// Every send: (server run, time taken before sending).
    pub sends: Vec<(usize, Instant)>,
    pub first_cycle: usize,
    pub ack: Option<Ack>,
}

/// What the witness saw live in one room during one server run, in room order: a prefix of
/// everything that happened in the room in that run (the witness logs in before anyone else).
#[derive(Clone, Debug)]
pub enum WEv {
    Msg(u64),
    /// `at`: when the witness received it (after the join).
    Login {
        uid: String,
        at: Instant,
    },
    /// `left`: the member count dropped (a `leave`), rather than a disconnect.
    Logout {
        uid: String,
        left: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    NonMember,
    /// Membership or presence not known for sure: nothing is required.
    Unknown,
    Online,
    Offline,
}

pub struct MemberRec {
    pub by_since: bool,
    /// The `since` of the next login: the last id seen in order (live, or in a catch-up known
    /// complete), so that the member really has every stored message up to it.
    pub since: u64,
    /// Every message id received, in any login, any way.
    pub received: HashSet<u64>,
    /// Server run -> logins sent to this room.
    pub logins_sent: HashMap<usize, usize>,
    /// The final login's catch-up was read completely: eventual delivery can be judged.
    pub final_drain_done: bool,
    /// After a `leave`, the member stays away until this server run, so that more than N
    /// messages are stored while it is no member: its next login with `since` must then get
    /// `recovered:false` (a server that says true is caught by the load-time check).
    pub away_until: usize,
}

/// A login with `since` that got `recovered:false`, judged at the end (when every cid's id is known).
pub struct SinceLogin {
    pub who: String,
    pub room: String,
    pub since: u64,
    pub own_at: Instant,
    pub cycle: usize,
}

#[derive(Default)]
pub struct Stats {
    pub sends: usize,
    pub plain_sends: usize,
    pub kills: BTreeMap<&'static str, usize>,
    /// `recovered` true / false at the members' logins under load.
    pub load_true: usize,
    pub load_false: usize,
    /// `recovered` true / false at the probes.
    pub probe_true: usize,
    pub probe_false: usize,
    pub recovered_missing: usize,
    pub since_logins: usize,
    pub probes: usize,
    pub required_offline: usize,
    pub errors: BTreeMap<String, usize>,
    pub notes: Vec<String>,
}

pub struct Model {
    pub seed: u64,
    pub history_max: usize,
    pub cycle: usize,
    /// Server runs with clients (startup-killed processes are not runs).
    pub epoch: usize,
    pub cids: HashMap<String, CidRec>,
    /// (room, id) -> text, from every message and ack any client received.
    pub by_id: HashMap<(String, u64), String>,
    /// text -> ids it was seen under.
    pub text_ids: HashMap<String, BTreeSet<u64>>,
    /// (room, id) -> the cid acked with it.
    pub ack_ids: HashMap<(String, u64), String>,
    pub witness: HashMap<(usize, String), Vec<WEv>>,
    /// Server run -> the latest send answered by an ack received in that run: a flush that
    /// covers everything done before that send (memberships included) completed in the run.
    pub ack_triggers: HashMap<usize, Instant>,
    pub members: BTreeMap<(String, String), MemberRec>,
    pub false_logins: Vec<SinceLogin>,
    pub violations: Vec<Violation>,
    pub stats: Stats,
}

impl Model {
    pub fn new(seed: u64, history_max: usize) -> Model {
        Model {
            seed,
            history_max,
            cycle: 0,
            epoch: 0,
            cids: HashMap::new(),
            by_id: HashMap::new(),
            text_ids: HashMap::new(),
            ack_ids: HashMap::new(),
            witness: HashMap::new(),
            ack_triggers: HashMap::new(),
            members: BTreeMap::new(),
            false_logins: Vec::new(),
            violations: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn violate(&mut self, check: Check, detail: impl Into<String>) {
        let cycle = self.cycle;
        self.violate_at(check, cycle, detail);
    }

    pub fn violate_at(&mut self, check: Check, cycle: usize, detail: impl Into<String>) {
        let detail = detail.into();
        if std::env::var("NATTER_CRASH_VERBOSE").is_ok() {
            eprintln!("VIOLATION {} (seed {}, cycle {cycle}): {detail}", check.name(), self.seed);
        }
        self.violations.push(Violation { check, cycle, detail });
    }

    pub fn add_member(&mut self, uid: &str, room: &str, by_since: bool) {
        self.members.entry((uid.to_string(), room.to_string())).or_insert(MemberRec {
            by_since,
            since: 0,
            received: HashSet::new(),
            logins_sent: HashMap::new(),
            final_drain_done: false,
            away_until: 0,
        });
    }

    pub fn member(&mut self, uid: &str, room: &str) -> &mut MemberRec {
        self.members.get_mut(&(uid.to_string(), room.to_string())).expect("a known member")
    }

    // -----------------------------------------------------------------------------------------
    // Recording
    // -----------------------------------------------------------------------------------------

    /// A send of `cid` is about to go out (`at` taken before sending).
    pub fn sent(&mut self, cid: &str, room: &str, text: &str, sender: &str, at: Instant) {
        let (epoch, cycle) = (self.epoch, self.cycle);
        let rec = self.cids.entry(cid.to_string()).or_insert_with(|| CidRec {
            room: room.to_string(),
            text: text.to_string(),
            sender: sender.to_string(),
            sends: vec![],
            first_cycle: cycle,
            ack: None,
        });
        rec.sends.push((epoch, at));
        self.stats.sends += 1;
    }

    /// An `ack` arrived (`at` taken after receipt).
    pub fn acked(&mut self, v: &Value, at: Instant) {
        let (Some(cid), Some(id), Some(room)) = (v["cid"].as_str(), v["id"].as_u64(), v["roomid"].as_str()) else {
            self.violate(Check::AckStable, format!("malformed ack {v}"));
            return;
        };
        let Some(rec) = self.cids.get(cid) else {
            self.violate(Check::AckStable, format!("ack for a cid never sent: {v}"));
            return;
        };
        let (epoch, cycle) = (self.epoch, self.cycle);
        let (text, want_room) = (rec.text.clone(), rec.room.clone());
        let trigger = rec.sends.iter().rev().find(|(e, _)| *e == epoch).map(|(_, t)| *t);
        let first = rec.ack.as_ref().map(|a| (a.id, a.cycle));
        if room != want_room {
            self.violate(Check::AckStable, format!("ack {v} names room {room}, the cid was sent to {want_room}"));
        }
        match first {
            Some((first, first_cycle)) if first != id => {
                let d = format!("cid {cid} acked with id {id}, first acked with id {first} (cycle {first_cycle})");
                self.violate(Check::AckStable, d);
            }
            Some(_) => {}
            None => {
                self.cids.get_mut(cid).unwrap().ack = Some(Ack { id, at, epoch, cycle });
            }
        }
        if let Some(t) = trigger {
            let e = self.ack_triggers.entry(epoch).or_insert(t);
            if t > *e {
                *e = t;
            }
        }
        match self.ack_ids.get(&(room.to_string(), id)) {
            Some(other) if other != cid => {
                let d = format!("room {room}: id {id} acked for cid {cid} and for cid {other}");
                self.violate(Check::IdOneText, d);
            }
            Some(_) => {}
            None => {
                self.ack_ids.insert((room.to_string(), id), cid.to_string());
            }
        }
        self.saw(room, id, &text, None, &format!("ack of {cid}"));
    }

    /// `room`/`id` carried `text` (a message or an ack). One id, one text, per room.
    pub fn saw(&mut self, room: &str, id: u64, text: &str, cid: Option<&str>, how: &str) {
        match self.by_id.get(&(room.to_string(), id)) {
            Some(t) if t != text => {
                let d = format!("room {room}: id {id} seen as {t:?} and as {text:?} ({how})");
                self.violate(Check::IdOneText, d);
            }
            Some(_) => {}
            None => {
                self.by_id.insert((room.to_string(), id), text.to_string());
            }
        }
        self.text_ids.entry(text.to_string()).or_default().insert(id);
        if let Some(c) = cid {
            if let Some(rec) = self.cids.get(c) {
                if rec.text != text || rec.room != room {
                    let d = format!("cid {c} sent as {:?} to {}, delivered as {text:?} in {room}", rec.text, rec.room);
                    self.violate(Check::IdOneText, d);
                }
            }
        }
    }

    pub fn witness_event(&mut self, room: &str, ev: WEv) {
        let epoch = self.epoch;
        self.witness.entry((epoch, room.to_string())).or_default().push(ev);
    }

    /// Acked (room, id, cid) sorted by id.
    pub fn acked_in(&self, room: &str) -> Vec<(u64, &str)> {
        let mut v: Vec<(u64, &str)> = self
            .cids
            .iter()
            .filter(|(_, r)| r.room == room)
            .filter_map(|(c, r)| r.ack.as_ref().map(|a| (a.id, c.as_str())))
            .collect();
        v.sort();
        v
    }

    pub fn unacked_in(&self, room: &str) -> usize {
        self.cids.values().filter(|r| r.room == room && r.ack.is_none()).count()
    }

    fn cycle_of(&self, room: &str, id: u64) -> String {
        match self.ack_ids.get(&(room.to_string(), id)).and_then(|c| self.cids.get(c).map(|r| (c, r))) {
            Some((c, r)) => format!(
                "cid {c}, first sent in cycle {}, acked in cycle {}",
                r.first_cycle,
                r.ack.as_ref().map(|a| a.cycle).unwrap_or(0)
            ),
            None => "not an acked id".into(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Summary
    // -----------------------------------------------------------------------------------------

    pub fn acked_count(&self) -> usize {
        self.cids.values().filter(|r| r.ack.is_some()).count()
    }

    pub fn violation_counts(&self) -> BTreeMap<Check, usize> {
        let mut m = BTreeMap::new();
        for v in &self.violations {
            *m.entry(v.check).or_insert(0) += 1;
        }
        m
    }

    /// Per check: count and the first few violations (cycle and detail).
    pub fn report(&self, examples: usize) -> String {
        let mut s = String::new();
        let counts = self.violation_counts();
        for c in Check::ALL {
            let n = counts.get(&c).copied().unwrap_or(0);
            let _ = writeln!(s, "  {:<18} {:>5}  {}", c.name(), n, c.what());
            for v in self.violations.iter().filter(|v| v.check == c).take(examples) {
                let _ = writeln!(s, "      cycle {:>4}: {}", v.cycle, v.detail);
            }
        }
        s
    }
}

/// The `recovered` field of a joiner's own login: a boolean, or why not.
pub fn recovered_flag(v: Option<&Value>) -> Result<bool, String> {
    match v {
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("`recovered` is {other}, not a boolean")),
        None => Err("no `recovered` field".into()),
    }
}

/// Ids for a message: the first few and how many.
pub fn short(ids: &[u64]) -> String {
    if ids.len() <= 6 {
        format!("{ids:?}")
    } else {
        format!("{:?}... ({} ids)", &ids[..6], ids.len())
    }
}
