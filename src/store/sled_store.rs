//! The embedded backend: one sled tree, keys laid out by `keys`, multi-key updates applied as
//! one atomic batch, read-modify-write of queues under one writer lock.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use bytes::Bytes;

use super::keys::{self, Key};
use super::{Append, Bounds, FlushFuture, Queued, Result, Store, Stored};

pub struct SledStore {
    db: sled::Db,
    bounds: Bounds,
    /// Serialises every read-modify-write (queues, membership, dedupe sweep), and holds the
    /// queue bookkeeping that makes a queue push a point operation instead of a scan.
    writer: Mutex<Queues>,
}

/// Where a uid's queue starts and ends; loaded from disk on first use, then kept in step with
/// every change (all made under the writer lock).
#[derive(Clone, Copy, Debug)]
struct QueueState {
    /// No entry below this number exists (entries at or above it may have been dequeued).
    head: u64,
    /// The number the next entry gets.
    next: u64,
    /// Entries present.
    len: u64,
    /// When known: the entry at `head` exists and was written at this time. Saves a read per
    /// push while the queue is under its cap; forgotten whenever entries are removed.
    head_ts: Option<u64>,
}

#[derive(Default)]
struct Queues(HashMap<String, QueueState>);

/// Value layouts (all integers big-endian).
mod val {
    pub fn u64_at(v: &[u8], at: usize) -> u64 {
        v.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
    }

    /// Queue entry and dedupe record: ts | id | room len (u16) | room | rest.
    pub fn entry(ts: u64, id: u64, room: &str, rest: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(18 + room.len() + rest.len());
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&(room.len() as u16).to_be_bytes());
        v.extend_from_slice(room.as_bytes());
        v.extend_from_slice(rest);
        v
    }

    pub struct Entry<'a> {
        pub ts: u64,
        pub id: u64,
        pub room: &'a str,
        pub rest: &'a [u8],
    }

    pub fn parse_entry(v: &[u8]) -> Option<Entry<'_>> {
        let len = u16::from_be_bytes(v.get(16..18)?.try_into().ok()?) as usize;
        let room = std::str::from_utf8(v.get(18..18 + len)?).ok()?;
        Some(Entry { ts: u64_at(v, 0), id: u64_at(v, 8), room, rest: &v[18 + len..] })
    }
}

pub use val::{parse_entry, Entry};

/// Every this many ids, a publish also range-trims the history (catching entries left below
/// the window by a lowered `--history-max`); otherwise it removes one entry by key.
const HISTORY_SWEEP_EVERY: u64 = 256;

impl SledStore {
    pub fn open(dir: &Path, bounds: Bounds) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 << 20)
            .open()
            .with_context(|| format!("--data: cannot open the store in {}", dir.display()))?;
        Ok(SledStore { db, bounds, writer: Mutex::new(Queues::default()) })
    }

    /// The raw tree, for `natter keys`/`get`.
    pub fn tree(&self) -> &sled::Db {
        &self.db
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, v: &[u8], now_ms: u64) -> bool {
        val::parse_entry(v).map(|e| e.ts + self.bounds.offline_ttl_ms <= now_ms).unwrap_or(true)
    }

    /// `uid`'s queue bookkeeping, read from disk (one scan) the first time.
    fn queue_state<'q>(&self, queues: &'q mut Queues, uid: &str) -> Result<&'q mut QueueState> {
        if !queues.0.contains_key(uid) {
            let mut st = QueueState { head: 0, next: 0, len: 0, head_ts: None };
            for item in self.db.scan_prefix(keys::queue_prefix(uid)) {
                if let Some(Key::Queue { n, .. }) = Key::decode(&item?.0) {
                    if st.len == 0 {
                        st.head = n;
                    }
                    st.next = n + 1;
                    st.len += 1;
                }
            }
            queues.0.insert(uid.to_string(), st);
        }
        Ok(queues.0.get_mut(uid).expect("just inserted"))
    }

    /// Adds one queue entry to `batch`, and the removals it causes: expired entries at the head,
    /// and the oldest entries over the cap. Point reads only: no scan on the publish path.
    fn queue_push(&self, batch: &mut sled::Batch, q: &mut QueueState, uid: &str, a: &Append) -> Result<()> {
        let new = q.next;
        batch.insert(keys::queue_key(uid, new), val::entry(a.now_ms, a.id, a.room, a.json));
        q.next += 1;
        q.len += 1;
        let cap = self.bounds.offline_max as u64;
        while q.head < new {
            if q.len <= cap && q.head_ts.is_some_and(|ts| ts + self.bounds.offline_ttl_ms > a.now_ms) {
                break;
            }
            let k = keys::queue_key(uid, q.head);
            match self.db.get(&k)? {
                // dequeued earlier: a hole
                None => q.head += 1,
                Some(v) if q.len > cap || self.expired(&v, a.now_ms) => {
                    batch.remove(k);
                    q.len = q.len.saturating_sub(1);
                    q.head += 1;
                }
                Some(v) => {
                    q.head_ts = val::parse_entry(&v).map(|e| e.ts);
                    break;
                }
            }
            q.head_ts = None;
        }
        if q.head == new {
            q.head_ts = Some(a.now_ms);
        }
        Ok(())
    }

    /// Removes the entries of `uid`'s queue that `drop_it` picks, keeping the bookkeeping exact.
    fn remove_entries(&self, uid: &str, mut drop_it: impl FnMut(u64, &[u8]) -> bool) -> Result<()> {
        let mut queues = self.writer();
        // Load the bookkeeping before changing the disk, or a first load would see the removals.
        self.queue_state(&mut queues, uid)?;
        let mut b = sled::Batch::default();
        let mut removed = 0;
        for item in self.db.scan_prefix(keys::queue_prefix(uid)) {
            let (k, v) = item?;
            if let Some(Key::Queue { n, .. }) = Key::decode(&k) {
                if drop_it(n, &v) {
                    b.remove(k);
                    removed += 1;
                }
            }
        }
        if removed == 0 {
            return Ok(());
        }
        self.db.apply_batch(b)?;
        // The entry stays even when the queue is empty: `next` must never go back, or an entry
        // number held by a concurrent `queued` -> `dequeue` could name a newer entry.
        let q = self.queue_state(&mut queues, uid)?;
        q.len = q.len.saturating_sub(removed);
        q.head_ts = None;
        Ok(())
    }
}

impl Store for SledStore {
    fn add_member(&self, room: &str, uid: &str) -> Result<bool> {
        let _w = self.writer();
        let k = Key::Member { room: room.into(), uid: uid.into() }.encode();
        let new = self.db.get(&k)?.is_none();
        let mut b = sled::Batch::default();
        b.insert(k, &[]);
        b.insert(Key::UserRoom { uid: uid.into(), room: room.into() }.encode(), &[]);
        self.db.apply_batch(b)?;
        Ok(new)
    }

    fn remove_member(&self, room: &str, uid: &str) -> Result<bool> {
        let _w = self.writer();
        let k = Key::Member { room: room.into(), uid: uid.into() }.encode();
        let existed = self.db.get(&k)?.is_some();
        let mut b = sled::Batch::default();
        b.remove(k);
        b.remove(Key::UserRoom { uid: uid.into(), room: room.into() }.encode());
        self.db.apply_batch(b)?;
        Ok(existed)
    }

    fn members(&self, room: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(keys::members_prefix(room)) {
            let (k, _) = item?;
            if let Some(Key::Member { uid, .. }) = Key::decode(&k) {
                out.push(uid);
            }
        }
        Ok(out)
    }

    fn set_online(&self, room: &str, uid: &str, conns: u32) -> Result<()> {
        let k = Key::Online { room: room.into(), uid: uid.into() }.encode();
        if conns == 0 {
            self.db.remove(k)?;
        } else {
            self.db.insert(k, &conns.to_be_bytes())?;
        }
        Ok(())
    }

    fn online(&self, room: &str) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(keys::online_prefix(room)) {
            let (k, v) = item?;
            if let Some(Key::Online { uid, .. }) = Key::decode(&k) {
                out.push((uid, v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0)));
            }
        }
        Ok(out)
    }

    fn clear_presence(&self) -> Result<()> {
        let mut b = sled::Batch::default();
        for item in self.db.scan_prefix(keys::online_all()) {
            b.remove(item?.0);
        }
        self.db.apply_batch(b)?;
        Ok(())
    }

    fn last_id(&self, room: &str) -> Result<u64> {
        let get = |k: Key| -> Result<u64> { Ok(self.db.get(k.encode())?.map(|v| val::u64_at(&v, 0)).unwrap_or(0)) };
        Ok(get(Key::Seq { room: room.into() })?.max(get(Key::SeqReserved { room: room.into() })?))
    }

    fn reserve_ids(&self, room: &str, upto: u64) -> Result<()> {
        self.db.insert(Key::SeqReserved { room: room.into() }.encode(), &upto.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    fn release_ids(&self, room: &str, last_id: u64) -> Result<()> {
        let mut b = sled::Batch::default();
        let seq = Key::Seq { room: room.into() }.encode();
        let stored = self.db.get(&seq)?.map(|v| val::u64_at(&v, 0)).unwrap_or(0);
        b.insert(seq, &stored.max(last_id).to_be_bytes());
        b.remove(Key::SeqReserved { room: room.into() }.encode());
        self.db.apply_batch(b)?;
        Ok(())
    }

    fn append(&self, a: &Append) -> Result<()> {
        let mut queues = self.writer();
        let mut b = sled::Batch::default();
        b.insert(Key::Seq { room: a.room.into() }.encode(), &a.id.to_be_bytes());
        b.insert(keys::history_key(a.room, a.id), a.json);
        let max = self.bounds.history_max as u64;
        if a.id > max {
            if a.id.is_multiple_of(HISTORY_SWEEP_EVERY) {
                let from = keys::history_key(a.room, 0);
                for item in self.db.range(from..keys::history_key(a.room, a.id - max + 1)) {
                    b.remove(item?.0);
                }
            } else {
                b.remove(keys::history_key(a.room, a.id - max));
            }
        }
        // Bookkeeping changes on copies, kept only once the batch is applied.
        let mut updated = Vec::with_capacity(a.offline.len());
        for uid in a.offline {
            let mut q = *self.queue_state(&mut queues, uid)?;
            self.queue_push(&mut b, &mut q, uid, a)?;
            updated.push((*uid, q));
        }
        if let Some((uid, cid)) = a.dedupe {
            b.insert(
                Key::Dedupe { uid: uid.into(), cid: cid.into() }.encode(),
                val::entry(a.now_ms, a.id, a.room, &[]),
            );
        }
        self.db.apply_batch(b)?;
        for (uid, q) in updated {
            queues.0.insert(uid.to_string(), q);
        }
        Ok(())
    }

    fn history_after(&self, room: &str, after: u64) -> Result<Vec<Stored>> {
        let from = Key::History { room: room.into(), id: after.saturating_add(1) }.encode();
        let prefix = keys::history_prefix(room);
        let mut out = Vec::new();
        for item in self.db.range(from..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Some(Key::History { id, .. }) = Key::decode(&k) {
                out.push(Stored { id, json: Bytes::copy_from_slice(&v) });
            }
        }
        Ok(out)
    }

    fn queued(&self, uid: &str, room: &str, now_ms: u64) -> Result<Vec<Queued>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(keys::queue_prefix(uid)) {
            let (k, v) = item?;
            let (Some(Key::Queue { n, .. }), Some(e)) = (Key::decode(&k), val::parse_entry(&v)) else { continue };
            if e.room == room && e.ts + self.bounds.offline_ttl_ms > now_ms {
                out.push(Queued { n, id: e.id, json: Bytes::copy_from_slice(e.rest) });
            }
        }
        Ok(out)
    }

    fn dequeue(&self, uid: &str, ns: &[u64]) -> Result<()> {
        if ns.is_empty() {
            return Ok(());
        }
        self.remove_entries(uid, |n, _| ns.binary_search(&n).is_ok())
    }

    fn offline_len(&self, uid: &str) -> Result<usize> {
        let mut queues = self.writer();
        Ok(self.queue_state(&mut queues, uid)?.len as usize)
    }

    fn dedupe_get(&self, uid: &str, cid: &str, now_ms: u64) -> Result<Option<(String, u64)>> {
        let v = self.db.get(Key::Dedupe { uid: uid.into(), cid: cid.into() }.encode())?;
        Ok(v.as_deref()
            .and_then(val::parse_entry)
            .and_then(|e| (e.ts + self.bounds.dedupe_ttl_ms > now_ms).then(|| (e.room.to_string(), e.id))))
    }

    fn expire(&self, now_ms: u64) -> Result<()> {
        {
            // Under the writer lock: a record written by a concurrent append is never swept.
            let _w = self.writer();
            let mut b = sled::Batch::default();
            for item in self.db.scan_prefix(keys::dedupe_all()) {
                let (k, v) = item?;
                if val::parse_entry(&v).map(|e| e.ts + self.bounds.dedupe_ttl_ms <= now_ms).unwrap_or(true) {
                    b.remove(k);
                }
            }
            self.db.apply_batch(b)?;
        }
        // Queues: one seek per uid, skipping to the next uid at its first live entry.
        let mut from = keys::queue_all();
        loop {
            let Some(item) = self.db.range(from.clone()..).next() else { break };
            let (k, v) = item?;
            let Some(Key::Queue { uid, .. }) = Key::decode(&k) else { break };
            if self.expired(&v, now_ms) {
                self.remove_entries(&uid, |_, v| self.expired(v, now_ms))?;
            }
            // Past every key of this uid: its prefix followed by an entry number above any.
            from = keys::queue_prefix(&uid);
            from.extend_from_slice(&[0xff; 9]);
        }
        Ok(())
    }

    fn flush(&self) -> FlushFuture {
        let db = self.db.clone();
        Box::pin(async move {
            db.flush_async().await?;
            Ok(())
        })
    }
}
