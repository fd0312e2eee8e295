//! The dedupe records of the embedded store: `dedupe:{uid}:{cid}` plus an age index per uid,
//! so that the cap per uid drops the oldest record by one seek and expiry reads only what has
//! expired, a uid at a time, never the whole store under the writer lock.

use super::*;

/// Age index entries removed per batch while expiring (the writer lock is let go between).
const EXPIRE_BATCH: usize = 1_024;

impl Inner {
    /// `uid`'s record count, from one scan of its age index the first time.
    fn dedupe_len(&self, w: &mut Writer, uid: &str) -> Result<u64> {
        if let Some(n) = w.dedupes.get(uid) {
            return Ok(*n);
        }
        let mut n = 0;
        for item in self.engine.db()?.scan_prefix(keys::dedupe_age_prefix(uid)) {
            item?;
            n += 1;
        }
        w.dedupes.insert(uid.to_string(), n);
        Ok(n)
    }

    /// Stages the record of `(uid, cid)` and its age entry (an earlier record of the same cid,
    /// expired or not, is replaced), and the removal of the uid's oldest other record when
    /// that puts it over the cap. Returns the uid's record count once staged.
    pub(super) fn stage_dedupe(
        &self,
        w: &mut Writer,
        staged: &mut Pending,
        uid: &str,
        cid: &str,
        a: &Append,
    ) -> Result<u64> {
        let mut len = self.dedupe_len(w, uid)?;
        let rec = Key::Dedupe { uid: uid.into(), cid: cid.into() }.encode();
        match self.get(&w.overlay(), &rec)?.as_deref().and_then(val::parse_dedupe) {
            Some((ts, ..)) => {
                staged.0.insert(Key::DedupeAge { uid: uid.into(), ts, cid: cid.into() }.encode(), None);
            }
            None => len += 1,
        }
        staged.0.insert(rec, Some(val::dedupe(a.now_ms, a.id, a.room)));
        staged.0.insert(Key::DedupeAge { uid: uid.into(), ts: a.now_ms, cid: cid.into() }.encode(), Some(Vec::new()));
        if len > self.bounds.dedupe_max as u64 {
            if let Some(Key::DedupeAge { cid: old, ts, .. }) = self.oldest_dedupe(w, staged, uid)? {
                staged.0.insert(Key::DedupeAge { uid: uid.into(), ts, cid: old.clone() }.encode(), None);
                staged.0.insert(Key::Dedupe { uid: uid.into(), cid: old }.encode(), None);
                len -= 1;
            }
        }
        Ok(len)
    }

    /// The first age entry of `uid` as sled and the overlay together hold it, leaving out what
    /// this publish stages (its own record). Two ordered reads: sled's range and the overlay's.
    fn oldest_dedupe(&self, w: &Writer, staged: &Pending, uid: &str) -> Result<Option<Key>> {
        let prefix = keys::dedupe_age_prefix(uid);
        let mut on_disk = None;
        for item in self.engine.db()?.scan_prefix(&prefix) {
            let (k, _) = item?;
            // A key the overlay or this publish writes is decided there.
            if !staged.0.contains_key(k.as_ref()) && w.overlay().iter().all(|p| !p.0.contains_key(k.as_ref())) {
                on_disk = Some(k.to_vec());
                break;
            }
        }
        // In each overlay layer, the first live key that no newer layer decides.
        let [newer, older] = w.overlay();
        let first_live = |layer: &Pending, above: &[&Pending]| {
            layer
                .0
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .find(|(k, v)| v.is_some() && above.iter().all(|p| !p.0.contains_key(*k)))
                .map(|(k, _)| k.clone())
        };
        let candidates = [on_disk, first_live(newer, &[staged]), first_live(older, &[staged, newer])];
        Ok(candidates.into_iter().flatten().min().and_then(|k| Key::decode(&k)))
    }

    /// Drops every dedupe record written at or before `now_ms - ttl`: one seek per uid that
    /// has records, then that uid's expired age entries in batches.
    pub(super) fn expire_dedupe(&self, now_ms: u64) -> Result<()> {
        let Some(cutoff) = now_ms.checked_sub(self.bounds.dedupe_ttl_ms) else { return Ok(()) };
        // What the overlay holds is applied first, so the seeks below see every uid with records
        // (a record written meanwhile is new: nothing of it expires now).
        drop(self.settled()?);
        let all = keys::dedupe_age_all();
        let mut from = all.clone();
        loop {
            let Some(item) = self.engine.db()?.range(from.clone()..).next() else { break };
            let (k, _) = item?;
            if !k.starts_with(&all) {
                break;
            }
            let Some(Key::DedupeAge { uid, .. }) = Key::decode(&k) else {
                // Not a key natter wrote: step over it.
                from = k.to_vec();
                from.push(0);
                continue;
            };
            self.expire_dedupe_of(&uid, cutoff)?;
            // Past every age key of this uid: its prefix, then bytes above any time stamp.
            from = keys::dedupe_age_prefix(&uid);
            from.extend_from_slice(&[0xff; 9]);
        }
        Ok(())
    }

    fn expire_dedupe_of(&self, uid: &str, cutoff: u64) -> Result<()> {
        let (start, end) = (keys::dedupe_age_prefix(uid), keys::dedupe_age_until(uid, cutoff));
        loop {
            // Under the writer lock, overlay applied: a record being written is never swept.
            let mut w = self.settled()?;
            let db = self.engine.db()?;
            let mut b = sled::Batch::default();
            let mut n = 0;
            for item in db.range(start.clone()..end.clone()).take(EXPIRE_BATCH) {
                let (k, _) = item?;
                n += 1;
                b.remove(k.as_ref());
                if let Some(Key::DedupeAge { ts, cid, .. }) = Key::decode(&k) {
                    let rec = Key::Dedupe { uid: uid.into(), cid }.encode();
                    // The record goes with its age entry only if it is the one that entry indexes.
                    if db.get(&rec)?.as_deref().and_then(val::parse_dedupe).is_some_and(|(t, ..)| t == ts) {
                        b.remove(rec);
                    }
                }
            }
            if n == 0 {
                return Ok(());
            }
            self.engine.write(|db| db.apply_batch(b))?;
            if let Some(len) = w.dedupes.get_mut(uid) {
                *len = len.saturating_sub(n);
                if *len == 0 {
                    w.dedupes.remove(uid);
                }
            }
            if n < EXPIRE_BATCH as u64 {
                return Ok(());
            }
        }
    }
}
