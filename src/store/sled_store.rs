//! The embedded backend: one sled tree, keys laid out by `keys`, multi-key updates applied as
//! one atomic batch, read-modify-write of queues under one writer lock.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use bytes::Bytes;

use super::keys::{self, Key};
use super::{Append, Bounds, FlushFuture, Queued, Result, Store, Stored};

pub struct SledStore {
    db: sled::Db,
    bounds: Bounds,
    /// Serialises read-modify-write of queue bookkeeping; plain inserts need no lock.
    writer: Mutex<()>,
}

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

    pub fn meta(next: u64, len: u64) -> Vec<u8> {
        let mut v = next.to_be_bytes().to_vec();
        v.extend_from_slice(&len.to_be_bytes());
        v
    }
}

pub use val::{parse_entry, Entry};

impl SledStore {
    pub fn open(dir: &Path, bounds: Bounds) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 << 20)
            .open()
            .with_context(|| format!("--data: cannot open the store in {}", dir.display()))?;
        Ok(SledStore { db, bounds, writer: Mutex::new(()) })
    }

    /// The raw tree, for `natter keys`/`get`.
    pub fn tree(&self) -> &sled::Db {
        &self.db
    }

    fn queue_meta(&self, uid: &str) -> Result<(u64, u64)> {
        let k = Key::QueueMeta { uid: uid.into() }.encode();
        Ok(match self.db.get(k)? {
            Some(v) => (val::u64_at(&v, 0), val::u64_at(&v, 8)),
            None => (0, 0),
        })
    }

    /// Adds the pushes of one queue entry (and the trims it causes) to `batch`.
    fn queue_push(&self, batch: &mut sled::Batch, uid: &str, a: &Append) -> Result<()> {
        let (next, mut len) = self.queue_meta(uid)?;
        let entry = val::entry(a.now_ms, a.id, a.room, a.json);
        batch.insert(Key::Queue { uid: uid.into(), n: next }.encode(), entry);
        len += 1;
        // Drop the oldest entries over the cap, and expired ones at the front.
        for item in self.db.scan_prefix(keys::queue_prefix(uid)) {
            let (k, v) = item?;
            let expired = val::parse_entry(&v).map(|e| e.ts + self.bounds.offline_ttl_ms <= a.now_ms).unwrap_or(true);
            if len as usize > self.bounds.offline_max || expired {
                batch.remove(k);
                len -= 1;
            } else {
                break;
            }
        }
        batch.insert(Key::QueueMeta { uid: uid.into() }.encode(), val::meta(next + 1, len));
        Ok(())
    }
}

impl SledStore {
    /// Removes the entries of `uid`'s queue that `keep` rejects, under the writer lock,
    /// keeping the length bookkeeping exact.
    fn remove_entries(&self, uid: &str, mut drop_it: impl FnMut(u64, Option<val::Entry>) -> bool) -> Result<()> {
        let _w = self.writer.lock().unwrap();
        let (next, mut len) = self.queue_meta(uid)?;
        let mut b = sled::Batch::default();
        for item in self.db.scan_prefix(keys::queue_prefix(uid)) {
            let (k, v) = item?;
            let n = match Key::decode(&k) {
                Some(Key::Queue { n, .. }) => n,
                _ => continue,
            };
            if drop_it(n, val::parse_entry(&v)) {
                b.remove(k);
                len = len.saturating_sub(1);
            }
        }
        let meta = Key::QueueMeta { uid: uid.into() }.encode();
        if len == 0 {
            b.remove(meta);
        } else {
            b.insert(meta, val::meta(next, len));
        }
        self.db.apply_batch(b)?;
        Ok(())
    }
}

impl Store for SledStore {
    fn add_member(&self, room: &str, uid: &str) -> Result<bool> {
        let _w = self.writer.lock().unwrap();
        let k = Key::Member { room: room.into(), uid: uid.into() }.encode();
        let new = self.db.get(&k)?.is_none();
        let mut b = sled::Batch::default();
        b.insert(k, &[]);
        b.insert(Key::UserRoom { uid: uid.into(), room: room.into() }.encode(), &[]);
        self.db.apply_batch(b)?;
        Ok(new)
    }

    fn remove_member(&self, room: &str, uid: &str) -> Result<bool> {
        let _w = self.writer.lock().unwrap();
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

    fn release_ids(&self) -> Result<()> {
        let mut b = sled::Batch::default();
        for item in self.db.scan_prefix(keys::seq_reserved_all()) {
            b.remove(item?.0);
        }
        self.db.apply_batch(b)?;
        Ok(())
    }

    fn append(&self, a: &Append) -> Result<()> {
        let _w = self.writer.lock().unwrap();
        let mut b = sled::Batch::default();
        b.insert(Key::Seq { room: a.room.into() }.encode(), &a.id.to_be_bytes());
        b.insert(Key::History { room: a.room.into(), id: a.id }.encode(), a.json);
        if a.id > self.bounds.history_max as u64 {
            let first_kept = a.id - self.bounds.history_max as u64 + 1;
            let from = Key::History { room: a.room.into(), id: 0 }.encode();
            let to = Key::History { room: a.room.into(), id: first_kept }.encode();
            for item in self.db.range(from..to) {
                b.remove(item?.0);
            }
        }
        for uid in a.offline {
            self.queue_push(&mut b, uid, a)?;
        }
        if let Some((uid, cid)) = a.dedupe {
            b.insert(
                Key::Dedupe { uid: uid.into(), cid: cid.into() }.encode(),
                val::entry(a.now_ms, a.id, a.room, &[]),
            );
        }
        self.db.apply_batch(b)?;
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
        Ok(self.queue_meta(uid)?.1 as usize)
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
            let _w = self.writer.lock().unwrap();
            let mut b = sled::Batch::default();
            for item in self.db.scan_prefix(keys::dedupe_all()) {
                let (k, v) = item?;
                if val::parse_entry(&v).map(|e| e.ts + self.bounds.dedupe_ttl_ms <= now_ms).unwrap_or(true) {
                    b.remove(k);
                }
            }
            self.db.apply_batch(b)?;
        }
        let uids: Vec<String> = self
            .db
            .scan_prefix(keys::queue_meta_all())
            .filter_map(|i| i.ok())
            .filter_map(|(k, _)| match Key::decode(&k) {
                Some(Key::QueueMeta { uid }) => Some(uid),
                _ => None,
            })
            .collect();
        let ttl = self.bounds.offline_ttl_ms;
        for uid in uids {
            self.remove_entries(&uid, |_, e| e.map(|e| e.ts + ttl <= now_ms).unwrap_or(true))?;
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
