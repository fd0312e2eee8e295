//! The write overlay of the sled store and its applier thread: publishes collect in memory and
//! go to sled together, one atomic batch every few milliseconds (or before a scan or a flush),
//! and a store whose disk failed is reopened from here once the disk has room.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use crate::sync::LockExt;

use super::keys::Key;
use super::queue::QueueState;
use super::{Inner, Result, Writer};

/// The applier's doorbell, apart from the store so that waiting holds no reference to it.
#[derive(Default)]
pub(super) struct Signal {
    /// (work to do, store closed)
    pub(super) state: Mutex<(bool, bool)>,
    pub(super) cv: Condvar,
}

impl Signal {
    pub(super) fn ring(&self, close: bool) {
        let mut s = self.state.locked();
        s.0 = true;
        s.1 |= close;
        self.cv.notify_one();
    }
}

/// Writes of appends not yet in sled, by key (the last write of a key wins, as in a batch).
/// Point reads look here first; scans apply it first. Ordered, so that "the oldest dedupe
/// record of a uid" can be read through it.
#[derive(Default)]
pub(super) struct Pending(pub(super) BTreeMap<Vec<u8>, Option<Vec<u8>>>);

/// How often a store whose disk failed checks whether it can be reopened.
const RECOVER_EVERY: Duration = Duration::from_secs(1);
/// How long appends collect before they are applied together (a flush or a scan applies at once).
const APPLY_EVERY: Duration = Duration::from_millis(2);
/// An overlay this large is applied at once, whatever the time.
const APPLY_AT_OPS: usize = 16_384;

/// Applies the overlay `APPLY_EVERY` after its first write; ends when the store closes.
pub(super) fn applier(store: Weak<Inner>, signal: Arc<Signal>) {
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
        let failed = inner.apply_off_lock().err();
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
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.locked()
    }

    /// Reopens a broken engine (no write runs meanwhile). The overlay, whole publishes sled
    /// never took, is applied to the reopened store; the queue bookkeeping is read again from
    /// disk, since writes sled took but never flushed are gone with the old handle.
    pub(super) fn recover(&self) -> bool {
        let _one = self.apply_lock.locked();
        let mut w = self.lock();
        if !self.engine.try_reopen() {
            return false;
        }
        w.queues.0.clear();
        w.dedupes.clear();
        w.seqs.clear();
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
    pub(super) fn apply(&self, w: &mut Writer) -> Result<()> {
        debug_assert!(w.applying.0.is_empty(), "a batch in flight must reach sled first");
        if w.pending.0.is_empty() {
            return Ok(());
        }
        self.engine.write(|db| db.apply_batch(to_batch(&w.pending)))?;
        w.pending.0.clear();
        Ok(())
    }

    /// The applier's way: the overlay is swapped for an empty one under the writer lock, and
    /// sled takes it with no lock held, so publishes go on staging meanwhile (under the lock,
    /// sled's 5 to 20 ms batches held every publish of the node, BENCHMARKS.md). Reads look
    /// through the batch in flight until sled has it. On error it goes back under what was
    /// staged since (a newer write of a key wins, as it would in sled), for the next try.
    pub(super) fn apply_off_lock(&self) -> Result<()> {
        let _one = self.apply_lock.locked();
        let batch = {
            let mut w = self.lock();
            if w.pending.0.is_empty() {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut w.pending));
            w.applying = batch.clone();
            batch
        };
        let res = self.engine.write(|db| db.apply_batch(to_batch(&batch)));
        let mut w = self.lock();
        w.applying = Arc::default();
        if res.is_err() {
            for (k, v) in batch.0.iter() {
                w.pending.0.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        res
    }

    /// Everything staged is in sled when this returns, and stays so while the guard is held.
    pub(super) fn settled(&self) -> Result<std::sync::MutexGuard<'_, Writer>> {
        let _one = self.apply_lock.locked();
        let mut w = self.lock();
        self.apply(&mut w)?;
        Ok(w)
    }

    /// Before a scan: the overlay applied, so that the scan sees every publish. While the disk
    /// is failing the overlay cannot be applied, and reads go on from what sled holds: the
    /// publishes still in the overlay were never acked, and they are applied after the reopen.
    /// (A replay in that window can miss such a publish that went out live and still report
    /// `recovered:true`; queue entries it drains cannot be dequeued and come again later.)
    pub(super) fn settled_for_read(&self) -> Result<()> {
        let _one = self.apply_lock.locked();
        let mut w = self.lock();
        if self.engine.is_broken() {
            return Ok(());
        }
        match self.apply(&mut w) {
            Err(e) if !self.engine.is_broken() => Err(e),
            _ => Ok(()),
        }
    }

    /// The entries under `prefix` as sled and the overlay hold them together, in key order:
    /// what the overlay writes or removes wins. A scan that needs no settling, so no sled batch
    /// on the way (a login reads its queue and rooms this way). The writer lock is held
    /// throughout, so the batch in flight (if any) is still there to lay over whatever part of
    /// it sled has taken.
    pub(super) fn scan_through(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let w = self.lock();
        let mut all = BTreeMap::new();
        for item in self.engine.db()?.scan_prefix(prefix) {
            let (k, v) = item?;
            all.insert(k.to_vec(), v.to_vec());
        }
        for layer in w.overlay().into_iter().rev() {
            for (k, v) in layer.0.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
                match v {
                    Some(v) => all.insert(k.clone(), v.clone()),
                    None => all.remove(k),
                };
            }
        }
        Ok(all.into_iter().collect())
    }

    /// What `pick` takes of each key under `prefix`, through the overlay (`scan_through`).
    pub(super) fn keys_through<T>(&self, prefix: &[u8], pick: impl Fn(Key) -> Option<T>) -> Result<Vec<T>> {
        Ok(self.scan_through(prefix)?.into_iter().filter_map(|(k, _)| Key::decode(&k).and_then(&pick)).collect())
    }

    /// A point read through the overlays (first match wins), then sled.
    pub(super) fn get(&self, layers: &[&Pending], k: &[u8]) -> Result<Option<Vec<u8>>> {
        match layers.iter().find_map(|p| p.0.get(k)) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.engine.db()?.get(k)?.map(|v| v.to_vec())),
        }
    }

    /// Writes that only stage into the overlay are refused too while the disk is failing: a
    /// publish must not be fanned out when it cannot be stored.
    pub(super) fn refuse_if_broken(&self) -> Result<()> {
        if self.engine.is_broken() {
            anyhow::bail!("the store cannot take writes: the disk is full or failing");
        }
        Ok(())
    }

    /// Moves a whole staged publish into the overlay (waking the applier when it was empty).
    pub(super) fn merge(
        &self,
        w: &mut Writer,
        staged: Pending,
        updated: Vec<(&str, QueueState)>,
        dedupes: Option<(&str, u64)>,
    ) -> Result<()> {
        // A full overlay is applied before this publish joins it, so that an error leaves
        // nothing of this publish behind (its staged reads stay valid: apply only moves
        // the overlay into sled).
        // (While a batch is in flight, sled must take that one first: the overlay grows on.)
        if w.pending.0.len() + staged.0.len() >= APPLY_AT_OPS && w.applying.0.is_empty() {
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

fn to_batch(p: &Pending) -> sled::Batch {
    let mut b = sled::Batch::default();
    for (k, v) in p.0.iter() {
        match v {
            Some(v) => b.insert(k.as_slice(), v.as_slice()),
            None => b.remove(k.as_slice()),
        }
    }
    b
}
