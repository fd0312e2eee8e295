//! The in-memory backend: the same contract as sled with nothing on disk (tests, and a
//! reference for what each method must do).

use crate::sync::LockExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use super::{Append, Bounds, FlushFuture, Queued, Result, Store, Stored};

struct Entry {
    n: u64,
    ts: u64,
    room: String,
    id: u64,
    prev: u64,
    json: Bytes,
}

/// A uid's queue, with the message bytes it holds kept in step (the byte cap reads it at
/// every push).
#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Queue {
    fn push(&mut self, e: Entry) {
        self.bytes += e.json.len();
        self.entries.push_back(e);
    }
    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.json.len();
        }
    }
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let bytes = &mut self.bytes;
        self.entries.retain(|e| {
            let kept = keep(e);
            if !kept {
                *bytes -= e.json.len();
            }
            kept
        });
    }
}

#[derive(Default)]
struct Data {
    members: HashMap<String, BTreeSet<String>>,
    user_rooms: HashMap<String, BTreeSet<String>>,
    online: HashMap<String, BTreeMap<String, u32>>,
    seq: HashMap<String, u64>,
    reserved: HashMap<String, u64>,
    next_n: HashMap<String, u64>,
    history: HashMap<String, VecDeque<Stored>>,
    queues: HashMap<String, Queue>,
    dedupe: HashMap<(String, String), (u64, String, u64)>,
    /// Each uid's dedupe records, oldest first, in the sled layout's order (time, then cid
    /// by length and bytes), so both backends drop the same one at the cap.
    dedupe_age: HashMap<String, BTreeSet<(u64, usize, String)>>,
}

pub struct MemoryStore {
    bounds: Bounds,
    data: Mutex<Data>,
}

impl MemoryStore {
    pub fn new(bounds: Bounds) -> Self {
        MemoryStore { bounds, data: Mutex::new(Data::default()) }
    }
}

impl MemoryStore {
    /// One queue entry per `a.offline` uid, each queue trimmed to its bounds.
    fn push_entries(&self, d: &mut Data, a: &Append, prev: u64) {
        for uid in a.offline {
            let next = d.next_n.entry(uid.to_string()).or_insert(0);
            let n = *next;
            *next += 1;
            let q = d.queues.entry(uid.to_string()).or_default();
            let json = Bytes::copy_from_slice(a.json);
            q.push(Entry { n, ts: a.now_ms, room: a.room.into(), id: a.id, prev, json });
            while q.entries.len() > self.bounds.offline_max
                || (q.entries.len() > 1 && q.bytes > self.bounds.offline_max_bytes)
                || q.entries.front().is_some_and(|e| e.ts + self.bounds.offline_ttl_ms <= a.now_ms)
            {
                q.pop_front();
            }
        }
    }
}

impl MemoryStore {
    /// The dedupe record of `a`, replacing an earlier one of the same cid; over the cap, the
    /// uid's oldest other record goes.
    fn record_dedupe(&self, d: &mut Data, uid: &str, cid: &str, a: &Append) {
        let ages = d.dedupe_age.entry(uid.into()).or_default();
        if let Some((ts, ..)) = d.dedupe.insert((uid.into(), cid.into()), (a.now_ms, a.room.into(), a.id)) {
            ages.remove(&(ts, cid.len(), cid.to_string()));
        }
        let new = (a.now_ms, cid.len(), cid.to_string());
        ages.insert(new.clone());
        if ages.len() > self.bounds.dedupe_max {
            if let Some(old) = ages.iter().find(|k| **k != new).cloned() {
                ages.remove(&old);
                d.dedupe.remove(&(uid.to_string(), old.2));
            }
        }
    }
}

impl Store for MemoryStore {
    fn add_member(&self, room: &str, uid: &str) -> Result<bool> {
        let mut d = self.data.locked();
        d.user_rooms.entry(uid.into()).or_default().insert(room.into());
        Ok(d.members.entry(room.into()).or_default().insert(uid.into()))
    }

    fn remove_member(&self, room: &str, uid: &str) -> Result<bool> {
        let mut d = self.data.locked();
        if let Some(r) = d.user_rooms.get_mut(uid) {
            r.remove(room);
        }
        Ok(d.members.get_mut(room).map(|m| m.remove(uid)).unwrap_or(false))
    }

    fn user_rooms(&self, uid: &str) -> Result<Vec<String>> {
        let d = self.data.locked();
        Ok(d.user_rooms.get(uid).map(|r| r.iter().cloned().collect()).unwrap_or_default())
    }

    fn members(&self, room: &str) -> Result<Vec<String>> {
        let d = self.data.locked();
        Ok(d.members.get(room).map(|m| m.iter().cloned().collect()).unwrap_or_default())
    }

    fn set_online(&self, room: &str, uid: &str, conns: u32) -> Result<()> {
        let mut d = self.data.locked();
        let r = d.online.entry(room.into()).or_default();
        if conns == 0 {
            r.remove(uid);
        } else {
            r.insert(uid.into(), conns);
        }
        Ok(())
    }

    fn online(&self, room: &str) -> Result<Vec<(String, u32)>> {
        let d = self.data.locked();
        Ok(d.online.get(room).map(|r| r.iter().map(|(u, n)| (u.clone(), *n)).collect()).unwrap_or_default())
    }

    fn clear_presence(&self) -> Result<()> {
        self.data.locked().online.clear();
        Ok(())
    }

    fn last_id(&self, room: &str) -> Result<u64> {
        let d = self.data.locked();
        Ok(d.seq.get(room).copied().unwrap_or(0).max(d.reserved.get(room).copied().unwrap_or(0)))
    }

    fn reserve_ids(&self, room: &str, upto: u64) -> Result<()> {
        let mut d = self.data.locked();
        let r = d.reserved.entry(room.into()).or_insert(0);
        *r = (*r).max(upto);
        Ok(())
    }

    fn release_ids(&self, room: &str, last_id: u64) -> Result<()> {
        let mut d = self.data.locked();
        if last_id == 0 {
            d.reserved.remove(room);
        } else {
            d.reserved.insert(room.into(), last_id);
        }
        Ok(())
    }

    fn append(&self, a: &Append) -> Result<u64> {
        let mut d = self.data.locked();
        let prev = d.seq.insert(a.room.into(), a.id).unwrap_or(0);
        let h = d.history.entry(a.room.into()).or_default();
        h.push_back(Stored { id: a.id, prev, json: Bytes::copy_from_slice(a.json) });
        while h.len() > self.bounds.history_max {
            h.pop_front();
        }
        self.push_entries(&mut d, a, prev);
        if let Some((uid, cid)) = a.dedupe {
            self.record_dedupe(&mut d, uid, cid, a);
        }
        Ok(prev)
    }

    fn enqueue(&self, a: &Append, prev: u64) -> Result<()> {
        self.push_entries(&mut self.data.locked(), a, prev);
        Ok(())
    }

    fn history_after(&self, room: &str, after: u64) -> Result<Vec<Stored>> {
        let d = self.data.locked();
        Ok(d.history.get(room).map(|h| h.iter().filter(|s| s.id > after).cloned().collect()).unwrap_or_default())
    }

    fn queued(&self, uid: &str, room: &str, now_ms: u64) -> Result<Vec<Queued>> {
        let d = self.data.locked();
        let ttl = self.bounds.offline_ttl_ms;
        Ok(d.queues
            .get(uid)
            .map(|q| {
                q.entries
                    .iter()
                    .filter(|e| e.room == room && e.ts + ttl > now_ms)
                    .map(|e| Queued { n: e.n, id: e.id, prev: e.prev, json: e.json.clone() })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn dequeue(&self, uid: &str, ns: &[u64]) -> Result<()> {
        let mut d = self.data.locked();
        if let Some(q) = d.queues.get_mut(uid) {
            q.retain(|e| ns.binary_search(&e.n).is_err());
            if q.entries.is_empty() {
                d.queues.remove(uid);
            }
        }
        Ok(())
    }

    fn offline_len(&self, uid: &str) -> Result<usize> {
        Ok(self.data.locked().queues.get(uid).map(|q| q.entries.len()).unwrap_or(0))
    }

    fn dedupe_get(&self, uid: &str, cid: &str, now_ms: u64) -> Result<Option<(String, u64)>> {
        let d = self.data.locked();
        Ok(d.dedupe
            .get(&(uid.to_string(), cid.to_string()))
            .filter(|(ts, _, _)| ts + self.bounds.dedupe_ttl_ms > now_ms)
            .map(|(_, room, id)| (room.clone(), *id)))
    }

    fn expire(&self, now_ms: u64) -> Result<()> {
        let mut d = self.data.locked();
        let ttl = self.bounds.dedupe_ttl_ms;
        d.dedupe.retain(|_, (ts, _, _)| *ts + ttl > now_ms);
        for ages in d.dedupe_age.values_mut() {
            ages.retain(|(ts, ..)| *ts + ttl > now_ms);
        }
        d.dedupe_age.retain(|_, a| !a.is_empty());
        let qttl = self.bounds.offline_ttl_ms;
        for q in d.queues.values_mut() {
            q.retain(|e| e.ts + qttl > now_ms);
        }
        d.queues.retain(|_, q| !q.entries.is_empty());
        Ok(())
    }

    fn flush(&self) -> FlushFuture {
        Box::pin(async { Ok(()) })
    }
}
