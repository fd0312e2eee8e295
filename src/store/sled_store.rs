//! The embedded backend: one sled tree, keys laid out by `keys`, multi-key updates applied as
//! atomic batches, read-modify-write of queues under one writer lock. Publishes are grouped:
//! each sled batch costs two log writes (sled rolls its IO buffer around every batch), so
//! appends collect in an overlay that is applied as one batch every few milliseconds, before
//! any scan, and before every flush.

use crate::sync::LockExt;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

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
    /// Wakes the applier when the overlay gets its first write.
    signal: Arc<Signal>,
}

/// The applier's doorbell, apart from the store so that waiting holds no reference to it.
#[derive(Default)]
struct Signal {
    /// (work to do, store closed)
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Signal {
    fn ring(&self, close: bool) {
        let mut s = self.state.locked();
        s.0 = true;
        s.1 |= close;
        self.cv.notify_one();
    }
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
    pending: Pending,
}

/// Writes of appends not yet in sled, by key (the last write of a key wins, as in a batch).
/// Point reads look here first; scans apply it first. Ordered, so that "the oldest dedupe
/// record of a uid" can be read through it.
#[derive(Default)]
struct Pending(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

/// How often a store whose disk failed checks whether it can be reopened.
const RECOVER_EVERY: Duration = Duration::from_secs(1);
/// How long appends collect before they are applied together (a flush or a scan applies at once).
const APPLY_EVERY: Duration = Duration::from_millis(2);
/// An overlay this large is applied at once, whatever the time.
const APPLY_AT_OPS: usize = 16_384;

pub use super::values::{parse_entry, Entry};

mod dedupe;
mod queue;
use queue::{QueueState, Queues};

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
        let inner = Arc::new(Inner { engine, bounds, writer: Mutex::default(), signal: signal.clone() });
        let weak = Arc::downgrade(&inner);
        let applier = std::thread::Builder::new()
            .name("natter-store".into())
            .spawn(move || applier(weak, signal))
            .context("cannot start the store's writer thread")?;
        Ok(SledStore { inner, applier: Some(applier) })
    }

    /// The raw tree, for `natter keys`/`get`.
    pub fn tree(&self) -> Result<sled::Db> {
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

/// Applies the overlay `APPLY_EVERY` after its first write; ends when the store closes.
fn applier(store: Weak<Inner>, signal: Arc<Signal>) {
    loop {
        {
            let mut s = signal.state.locked();
            while !s.0 {
                s = signal.cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.1 {
                return;
            }
            s.0 = false;
        }
        std::thread::sleep(APPLY_EVERY);
        let Some(inner) = store.upgrade() else { return };
        if inner.engine.is_broken() && !inner.recover() {
            // Until the disk has room again: one look a second, no log line each time.
            drop(inner);
            std::thread::sleep(RECOVER_EVERY);
            signal.ring(false);
            continue;
        }
        let failed = inner.settled().err();
        let broken = inner.engine.is_broken();
        drop(inner);
        if let Some(e) = failed {
            if !broken {
                tracing::error!("store: applying writes failed (kept for the next try): {e:#}");
            }
            std::thread::sleep(Duration::from_millis(100));
            signal.ring(false);
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.locked()
    }

    /// Reopens a broken engine (no write runs meanwhile). The overlay, whole publishes sled
    /// never took, is applied to the reopened store; the queue bookkeeping is read again from
    /// disk, since writes sled took but never flushed are gone with the old handle.
    fn recover(&self) -> bool {
        let mut w = self.lock();
        if !self.engine.try_reopen() {
            return false;
        }
        w.queues.0.clear();
        w.dedupes.clear();
        if let Err(e) = self.apply(&mut w) {
            // The bookkeeping just cleared would be reloaded from sled without the overlay's
            // entries: no write may run until the overlay is in, so back to broken, and the
            // next try reopens and applies again.
            tracing::error!("store: applying writes after the reopen failed (kept, retrying): {e:#}");
            self.engine.mark_broken();
            return false;
        }
        true
    }

    /// Apply the overlay now (one atomic batch). On error it is kept, and the error returned.
    fn apply(&self, w: &mut Writer) -> Result<()> {
        if w.pending.0.is_empty() {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for (k, v) in w.pending.0.iter() {
            match v {
                Some(v) => b.insert(k.as_slice(), v.as_slice()),
                None => b.remove(k.as_slice()),
            }
        }
        self.engine.write(|db| db.apply_batch(b))?;
        w.pending.0.clear();
        Ok(())
    }

    fn settled(&self) -> Result<std::sync::MutexGuard<'_, Writer>> {
        let mut w = self.lock();
        self.apply(&mut w)?;
        Ok(w)
    }

    /// Before a scan: the overlay applied, so that the scan sees every publish. While the disk
    /// is failing the overlay cannot be applied, and reads go on from what sled holds: the
    /// publishes still in the overlay were never acked, and they are applied after the reopen.
    /// (A replay in that window can miss such a publish that went out live and still report
    /// `recovered:true`; queue entries it drains cannot be dequeued and come again later.)
    fn settled_for_read(&self) -> Result<()> {
        let mut w = self.lock();
        if self.engine.is_broken() {
            return Ok(());
        }
        match self.apply(&mut w) {
            Err(e) if !self.engine.is_broken() => Err(e),
            _ => Ok(()),
        }
    }

    /// A point read through the overlays (first match wins), then sled.
    fn get(&self, layers: &[&Pending], k: &[u8]) -> Result<Option<Vec<u8>>> {
        match layers.iter().find_map(|p| p.0.get(k)) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.engine.db()?.get(k)?.map(|v| v.to_vec())),
        }
    }

    /// Writes that only stage into the overlay are refused too while the disk is failing: a
    /// publish must not be fanned out when it cannot be stored.
    fn refuse_if_broken(&self) -> Result<()> {
        if self.engine.is_broken() {
            anyhow::bail!("the store cannot take writes: the disk is full or failing");
        }
        Ok(())
    }

    /// Moves a whole staged publish into the overlay (waking the applier when it was empty).
    fn merge(
        &self,
        w: &mut Writer,
        staged: Pending,
        updated: Vec<(&str, QueueState)>,
        dedupes: Option<(&str, u64)>,
    ) -> Result<()> {
        // A full overlay is applied before this publish joins it, so that an error leaves
        // nothing of this publish behind (its staged reads stay valid: apply only moves
        // the overlay into sled).
        if w.pending.0.len() + staged.0.len() >= APPLY_AT_OPS {
            self.apply(w)?;
        }
        let was_empty = w.pending.0.is_empty();
        w.pending.0.extend(staged.0);
        for (uid, q) in updated {
            w.queues.0.insert(uid.to_string(), q);
        }
        if let Some((uid, n)) = dedupes {
            w.dedupes.insert(uid.to_string(), n);
        }
        if was_empty {
            self.signal.ring(false);
        }
        Ok(())
    }
}

impl Store for SledStore {
    fn add_member(&self, room: &str, uid: &str) -> Result<bool> {
        let _w = self.settled()?;
        let k = Key::Member { room: room.into(), uid: uid.into() }.encode();
        let new = self.engine.db()?.get(&k)?.is_none();
        let mut b = sled::Batch::default();
        b.insert(k, &[]);
        b.insert(Key::UserRoom { uid: uid.into(), room: room.into() }.encode(), &[]);
        self.engine.write(|db| db.apply_batch(b))?;
        Ok(new)
    }

    fn remove_member(&self, room: &str, uid: &str) -> Result<bool> {
        let _w = self.settled()?;
        let k = Key::Member { room: room.into(), uid: uid.into() }.encode();
        let existed = self.engine.db()?.get(&k)?.is_some();
        let mut b = sled::Batch::default();
        b.remove(k);
        b.remove(Key::UserRoom { uid: uid.into(), room: room.into() }.encode());
        self.engine.write(|db| db.apply_batch(b))?;
        Ok(existed)
    }

    fn user_rooms(&self, uid: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.engine.db()?.scan_prefix(keys::user_rooms_prefix(uid)) {
            if let Some(Key::UserRoom { room, .. }) = Key::decode(&item?.0) {
                out.push(room);
            }
        }
        Ok(out)
    }

    fn members(&self, room: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.engine.db()?.scan_prefix(keys::members_prefix(room)) {
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
            Ok(self.get(&[&w.pending], &k.encode())?.map(|v| val::u64_at(&v, 0)).unwrap_or(0))
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
        let (prev, last_pos) = self.get(&[&w.pending], &seq_key)?.map(|v| val::parse_seq(&v)).unwrap_or((0, 0));
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
        self.settled_for_read()?;
        let mut out = Vec::new();
        for item in self.engine.db()?.scan_prefix(keys::queue_prefix(uid)) {
            let (k, v) = item?;
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
        let v = self.get(&[&self.lock().pending], &Key::Dedupe { uid: uid.into(), cid: cid.into() }.encode())?;
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
        // Everything appended before this call goes into the flush.
        let applied = self.settled().map(drop);
        let inner = self.inner.clone();
        Box::pin(async move {
            applied?;
            if inner.engine.is_broken() {
                anyhow::bail!("the store cannot flush: the disk is full or failing");
            }
            let db = inner.engine.db()?;
            let flushed = db.flush_async().await;
            drop(db);
            inner.engine.check(flushed)?;
            Ok(())
        })
    }
}
