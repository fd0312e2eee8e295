//! The embedded backend: one sled tree, keys laid out by `keys`, multi-key updates applied as
//! atomic batches, read-modify-write of queues under one writer lock. Writes are grouped: each
//! sled batch costs two log writes (sled rolls its IO buffer around every batch), so appends and
//! membership changes collect in an overlay that is applied as one batch every few
//! milliseconds (with no lock held), before most scans, and before every flush; a login's
//! reads look through it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;

use super::keys::{self, Key};
use super::sled_engine::Engine;
use super::values as val;
use super::{Append, Bounds, FlushFuture, Queued, Result, Store, Stored};

pub struct SledStore {
    inner: Arc<Inner>,
    applier: Option<std::thread::JoinHandle<()>>,
}

pub struct Inner {
    engine: Engine,
    bounds: Bounds,
    /// Serialises every read-modify-write (queues, membership, dedupe sweep), and holds the
    /// queue bookkeeping that makes a queue push a point operation instead of a scan, and the
    /// writes not yet applied.
    writer: Mutex<Writer>,
    /// Held by whoever moves the overlay into sled (one at a time, so that batches reach sled
    /// in the order they were staged). Taken before `writer`, never after it.
    apply_lock: Mutex<()>,
    /// Wakes the applier when the overlay gets its first write.
    signal: Arc<Signal>,
}

impl std::ops::Deref for SledStore {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

#[derive(Default)]
struct Writer {
    queues: Queues,
    /// Dedupe records per uid (age index entries), loaded on first use like the queues.
    dedupes: HashMap<String, u64>,
    /// Each room's (last id, last history position), as its seq key holds them, once read: a
    /// publish then reads nothing from sled, whose reads wait while the applier's batch holds
    /// sled's write lock (BENCHMARKS.md).
    seqs: HashMap<String, (u64, u64)>,
    pending: Pending,
    /// The overlay the applier is putting into sled right now, with no lock held: reads look
    /// through it (under `pending`) until sled has it. Empty otherwise.
    applying: Arc<Pending>,
}

impl Writer {
    /// The overlay layers, newest first, as point reads must see them.
    fn overlay(&self) -> [&Pending; 2] {
        [&self.pending, &self.applying]
    }
}

pub use super::values::{parse_entry, Entry};

mod dedupe;
mod overlay;
mod queue;
use overlay::{applier, Pending, Signal};
use queue::Queues;

/// Every this many positions, a publish also range-trims the history (catching entries left
/// below the window by a lowered `--history-max`); otherwise it removes one entry by key.
const HISTORY_SWEEP_EVERY: u64 = 256;

impl SledStore {
    pub fn open(dir: &Path, bounds: Bounds) -> Result<Self> {
        let signal = Arc::new(Signal::default());
        let ring = signal.clone();
        // A broken engine wakes the applier, which reopens it once the disk has room.
        let engine = Engine::open(dir, Box::new(move || ring.ring(false)))?;
        let db = engine.db()?;
        let moved = super::migrate::migrate(&db)
            .with_context(|| format!("--data: cannot upgrade the store in {}", dir.display()))?;
        if moved > 0 {
            db.flush().with_context(|| format!("--data: cannot write the store in {}", dir.display()))?;
            tracing::info!("store: {moved} entries upgraded to the current layout");
        }
        drop(db);
        let inner = Arc::new(Inner {
            engine,
            bounds,
            writer: Mutex::default(),
            apply_lock: Mutex::default(),
            signal: signal.clone(),
        });
        let weak = Arc::downgrade(&inner);
        let applier = std::thread::Builder::new()
            .name("natter-store".into())
            .spawn(move || applier(weak, signal))
            .context("cannot start the store's writer thread")?;
        Ok(SledStore { inner, applier: Some(applier) })
    }

    /// The raw tree, for `natter keys`/`get` and restore: with the overlay applied first, so
    /// that it holds every write made so far.
    pub fn tree(&self) -> Result<sled::Db> {
        drop(self.settled()?);
        self.engine.db()
    }

    /// The disk failed (full, ...) and writes are refused until the store is reopened.
    pub fn is_broken(&self) -> bool {
        self.engine.is_broken()
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // What is still pending goes to sled (which flushes itself when dropped).
        if let Err(e) = self.settled() {
            tracing::error!("store: pending writes could not be applied: {e:#}");
        }
        self.signal.ring(true);
        if let Some(t) = self.applier.take() {
            let _ = t.join();
        }
    }
}

impl SledStore {
    /// Stages a membership change; returns whether the uid was a member before.
    fn set_member(&self, room: &str, uid: &str, member: bool) -> Result<bool> {
        self.refuse_if_broken()?;
        let mut w = self.lock();
        let k = Key::Member { room: room.into(), uid: uid.into() }.encode();
        let was = self.get(&w.overlay(), &k)?.is_some();
        let mut staged = Pending::default();
        let value = member.then(Vec::new);
        staged.0.insert(k, value.clone());
        staged.0.insert(Key::UserRoom { uid: uid.into(), room: room.into() }.encode(), value);
        self.merge(&mut w, staged, Vec::new(), None)?;
        Ok(was)
    }
}

impl Store for SledStore {
    /// Membership goes through the overlay like a publish: an atomic sled batch of its own per
    /// login made sled write its log twice (BENCHMARKS.md), a third of the server's core when
    /// thousands of users log in at once.
    fn add_member(&self, room: &str, uid: &str) -> Result<bool> {
        Ok(!self.set_member(room, uid, true)?)
    }

    fn remove_member(&self, room: &str, uid: &str) -> Result<bool> {
        self.set_member(room, uid, false)
    }

    fn user_rooms(&self, uid: &str) -> Result<Vec<String>> {
        self.keys_through(&keys::user_rooms_prefix(uid), |k| match k {
            Key::UserRoom { room, .. } => Some(room),
            _ => None,
        })
    }

    fn members(&self, room: &str) -> Result<Vec<String>> {
        self.keys_through(&keys::members_prefix(room), |k| match k {
            Key::Member { uid, .. } => Some(uid),
            _ => None,
        })
    }

    fn set_online(&self, room: &str, uid: &str, conns: u32) -> Result<()> {
        let k = Key::Online { room: room.into(), uid: uid.into() }.encode();
        if conns == 0 {
            self.engine.write(|db| db.remove(k))?;
        } else {
            self.engine.write(|db| db.insert(k, &conns.to_be_bytes()))?;
        }
        Ok(())
    }

    fn online(&self, room: &str) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for item in self.engine.db()?.scan_prefix(keys::online_prefix(room)) {
            let (k, v) = item?;
            if let Some(Key::Online { uid, .. }) = Key::decode(&k) {
                out.push((uid, v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0)));
            }
        }
        Ok(out)
    }

    fn clear_presence(&self) -> Result<()> {
        let _w = self.settled()?;
        let mut b = sled::Batch::default();
        for item in self.engine.db()?.scan_prefix(keys::online_all()) {
            b.remove(item?.0);
        }
        self.engine.write(|db| db.apply_batch(b))?;
        Ok(())
    }

    fn last_id(&self, room: &str) -> Result<u64> {
        let w = self.lock();
        let get = |k: Key| -> Result<u64> {
            Ok(self.get(&w.overlay(), &k.encode())?.map(|v| val::u64_at(&v, 0)).unwrap_or(0))
        };
        Ok(get(Key::Seq { room: room.into() })?.max(get(Key::SeqReserved { room: room.into() })?))
    }

    fn reserve_ids(&self, room: &str, upto: u64) -> Result<()> {
        let _w = self.lock();
        let k = Key::SeqReserved { room: room.into() }.encode();
        let current = self.engine.db()?.get(&k)?.map(|v| val::u64_at(&v, 0)).unwrap_or(0);
        if upto > current {
            self.engine.write(|db| db.insert(k, &upto.to_be_bytes()))?;
        }
        Ok(())
    }

    fn release_ids(&self, room: &str, last_id: u64) -> Result<()> {
        let _w = self.lock();
        let k = Key::SeqReserved { room: room.into() }.encode();
        if last_id == 0 {
            self.engine.write(|db| db.remove(k))?;
        } else {
            self.engine.write(|db| db.insert(k, &last_id.to_be_bytes()))?;
        }
        Ok(())
    }

    fn append(&self, a: &Append) -> Result<u64> {
        self.refuse_if_broken()?;
        let mut guard = self.lock();
        let w = &mut *guard;
        // Staged first, merged into the overlay only when the whole publish is ready: a read
        // error half-way leaves nothing behind.
        let mut staged = Pending::default();
        let seq_key = Key::Seq { room: a.room.into() }.encode();
        let (prev, last_pos) = match w.seqs.get(a.room) {
            Some(&seq) => seq,
            None => self.get(&w.overlay(), &seq_key)?.map(|v| val::parse_seq(&v)).unwrap_or((0, 0)),
        };
        let pos = last_pos + 1;
        staged.0.insert(seq_key, Some(val::seq(a.id, pos)));
        staged.0.insert(keys::history_key(a.room, pos), Some(val::stored(a.id, prev, a.json)));
        let max = self.bounds.history_max as u64;
        if pos > max {
            // The entry leaving the window may still be in the overlay: always remove it by key.
            staged.0.insert(keys::history_key(a.room, pos - max), None);
            if pos.is_multiple_of(HISTORY_SWEEP_EVERY) {
                let from = keys::history_key(a.room, 0);
                for item in self.engine.db()?.range(from..keys::history_key(a.room, pos - max + 1)) {
                    staged.0.insert(item?.0.to_vec(), None);
                }
            }
        }
        let updated = self.stage_queues(w, &mut staged, a, prev)?;
        let dedupes = match a.dedupe {
            Some((uid, cid)) => Some((uid, self.stage_dedupe(w, &mut staged, uid, cid, a)?)),
            None => None,
        };
        self.merge(w, staged, updated, dedupes)?;
        match w.seqs.get_mut(a.room) {
            Some(seq) => *seq = (a.id, pos),
            None => drop(w.seqs.insert(a.room.to_string(), (a.id, pos))),
        }
        Ok(prev)
    }

    fn enqueue(&self, a: &Append, prev: u64) -> Result<()> {
        self.refuse_if_broken()?;
        let mut guard = self.lock();
        let w = &mut *guard;
        let mut staged = Pending::default();
        let updated = self.stage_queues(w, &mut staged, a, prev)?;
        self.merge(w, staged, updated, None)
    }

    fn history_after(&self, room: &str, after: u64) -> Result<Vec<Stored>> {
        self.settled_for_read()?;
        // Newest first, so a short replay reads only what it returns.
        let mut out = Vec::new();
        for item in self.engine.db()?.scan_prefix(keys::history_prefix(room)).rev() {
            let (_, v) = item?;
            let Some((id, prev, json)) = val::parse_stored(&v) else { continue };
            if id <= after || out.len() >= self.bounds.history_max {
                break;
            }
            out.push(Stored { id, prev, json: Bytes::copy_from_slice(json) });
        }
        out.reverse();
        Ok(out)
    }

    fn queued(&self, uid: &str, room: &str, now_ms: u64) -> Result<Vec<Queued>> {
        let mut out = Vec::new();
        for (k, v) in self.scan_through(&keys::queue_prefix(uid))? {
            let (Some(Key::Queue { n, .. }), Some(e)) = (Key::decode(&k), val::parse_entry(&v)) else { continue };
            if e.room == room && e.ts + self.bounds.offline_ttl_ms > now_ms {
                out.push(Queued { n, id: e.id, prev: e.prev, json: Bytes::copy_from_slice(e.rest) });
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
        let mut w = self.lock();
        Ok(self.queue_state(&mut w.queues, uid)?.len as usize)
    }

    fn dedupe_get(&self, uid: &str, cid: &str, now_ms: u64) -> Result<Option<(String, u64)>> {
        let v = self.get(&self.lock().overlay(), &Key::Dedupe { uid: uid.into(), cid: cid.into() }.encode())?;
        Ok(v.as_deref()
            .and_then(val::parse_dedupe)
            .and_then(|(ts, id, room)| (ts + self.bounds.dedupe_ttl_ms > now_ms).then(|| (room.to_string(), id))))
    }

    fn expire(&self, now_ms: u64) -> Result<()> {
        self.expire_dedupe(now_ms)?;
        // Queues: one seek per uid, skipping to the next uid at its first live entry.
        let mut from = keys::queue_all();
        loop {
            let Some(item) = self.engine.db()?.range(from.clone()..).next() else { break };
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
        // Everything appended before this call goes into the flush: the overlay is applied on
        // the blocking pool first (it may wait for a batch in flight), never on a tokio worker.
        let inner = self.inner.clone();
        Box::pin(async move {
            // A blocking flush on tokio's blocking pool, not sled's `flush_async`: that runs the
            // flush on sled 0.34's own small IO pool, and with about 8 flushes at once (rooms
            // opening together) every pool thread waits in a flush for a log write queued
            // behind them on that same pool: the store hangs for good (found by
            // benches/cluster.sh; reproduced with 500 rooms of 2 joining 64 at a time).
            let flushed = tokio::task::spawn_blocking(move || {
                drop(inner.settled()?);
                if inner.engine.is_broken() {
                    anyhow::bail!("the store cannot flush: the disk is full or failing");
                }
                let db = inner.engine.db()?;
                inner.engine.check(db.flush())
            })
            .await
            .map_err(|e| anyhow::anyhow!("store flush task: {e}"))?;
            flushed.map(drop)
        })
    }
}
