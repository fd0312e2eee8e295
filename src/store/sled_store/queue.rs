//! The offline queues of the embedded store: `offline:{uid}` entries numbered per uid, with
//! bookkeeping kept in memory so that a publish pushes by point operations, never a scan.

use super::*;

/// Where a uid's queue starts and ends; loaded from disk on first use, then kept in step with
/// every change (all made under the writer lock).
#[derive(Clone, Copy, Debug)]
pub(super) struct QueueState {
    /// No entry below this number exists (entries at or above it may have been dequeued).
    head: u64,
    /// The number the next entry gets.
    next: u64,
    /// Entries present.
    pub(super) len: u64,
    /// Bytes of message JSON in the entries present.
    bytes: u64,
    /// When known: the entry at `head` exists and was written at this time. Saves a read per
    /// push while the queue is under its cap; forgotten whenever entries are removed.
    head_ts: Option<u64>,
}

#[derive(Default)]
pub(super) struct Queues(pub(super) HashMap<String, QueueState>);

impl Inner {
    pub(super) fn expired(&self, v: &[u8], now_ms: u64) -> bool {
        val::parse_entry(v).map(|e| e.ts + self.bounds.offline_ttl_ms <= now_ms).unwrap_or(true)
    }

    /// `uid`'s queue bookkeeping, read from disk (one scan) the first time. The overlay holds
    /// no entry of a uid whose bookkeeping is not loaded (pushing one loads it first).
    pub(super) fn queue_state<'q>(&self, queues: &'q mut Queues, uid: &str) -> Result<&'q mut QueueState> {
        if !queues.0.contains_key(uid) {
            let mut st = QueueState { head: 0, next: 0, len: 0, bytes: 0, head_ts: None };
            for item in self.engine.db()?.scan_prefix(keys::queue_prefix(uid)) {
                let (k, v) = item?;
                if let Some(Key::Queue { n, .. }) = Key::decode(&k) {
                    if st.len == 0 {
                        st.head = n;
                    }
                    st.next = n + 1;
                    st.len += 1;
                    st.bytes += json_len(&v);
                }
            }
            queues.0.insert(uid.to_string(), st);
        }
        Ok(queues.0.get_mut(uid).expect("just inserted"))
    }

    /// Adds one queue entry to the overlay, and the removals it causes: expired entries at the
    /// head, and the oldest entries over the cap. Point reads only: no scan on the publish path.
    fn queue_push(
        &self,
        staged: &mut Pending,
        overlay: [&Pending; 2],
        q: &mut QueueState,
        uid: &str,
        a: &Append,
        prev: u64,
    ) -> Result<()> {
        let new = q.next;
        staged.0.insert(keys::queue_key(uid, new), Some(val::entry(a.now_ms, a.id, prev, a.room, a.json)));
        q.next += 1;
        q.len += 1;
        q.bytes += a.json.len() as u64;
        let over =
            |q: &QueueState| q.len > self.bounds.offline_max as u64 || q.bytes > self.bounds.offline_max_bytes as u64;
        while q.head < new {
            if !over(q) && q.head_ts.is_some_and(|ts| ts + self.bounds.offline_ttl_ms > a.now_ms) {
                break;
            }
            let k = keys::queue_key(uid, q.head);
            match self.get(&[staged, overlay[0], overlay[1]], &k)? {
                // dequeued earlier: a hole
                None => q.head += 1,
                Some(v) if over(q) || self.expired(&v, a.now_ms) => {
                    staged.0.insert(k, None);
                    q.len = q.len.saturating_sub(1);
                    q.bytes = q.bytes.saturating_sub(json_len(&v));
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

    /// Stages one queue entry per offline uid of `a`; returns the bookkeeping to keep once the
    /// staged writes are merged.
    pub(super) fn stage_queues<'a>(
        &self,
        w: &mut Writer,
        staged: &mut Pending,
        a: &'a Append,
        prev: u64,
    ) -> Result<Vec<(&'a str, QueueState)>> {
        let mut updated = Vec::with_capacity(a.offline.len());
        for uid in a.offline {
            let mut q = *self.queue_state(&mut w.queues, uid)?;
            self.queue_push(staged, w.overlay(), &mut q, uid, a, prev)?;
            updated.push((*uid, q));
        }
        Ok(updated)
    }

    /// Removes the entries of `uid`'s queue that `drop_it` picks, keeping the bookkeeping exact.
    pub(super) fn remove_entries(&self, uid: &str, mut drop_it: impl FnMut(u64, &[u8]) -> bool) -> Result<()> {
        let mut w = self.settled()?;
        let queues = &mut w.queues;
        // Load the bookkeeping before changing the disk, or a first load would see the removals.
        self.queue_state(queues, uid)?;
        let mut b = sled::Batch::default();
        let (mut removed, mut bytes) = (0, 0);
        for item in self.engine.db()?.scan_prefix(keys::queue_prefix(uid)) {
            let (k, v) = item?;
            if let Some(Key::Queue { n, .. }) = Key::decode(&k) {
                if drop_it(n, &v) {
                    b.remove(k);
                    removed += 1;
                    bytes += json_len(&v);
                }
            }
        }
        if removed == 0 {
            return Ok(());
        }
        self.engine.write(|db| db.apply_batch(b))?;
        // The entry stays even when the queue is empty: `next` must never go back, or an entry
        // number held by a concurrent `queued` -> `dequeue` could name a newer entry.
        let q = self.queue_state(queues, uid)?;
        q.len = q.len.saturating_sub(removed);
        q.bytes = q.bytes.saturating_sub(bytes);
        q.head_ts = None;
        Ok(())
    }
}

/// The message JSON bytes of a stored queue entry (what the per-uid byte cap counts).
fn json_len(v: &[u8]) -> u64 {
    val::parse_entry(v).map(|e| e.rest.len() as u64).unwrap_or(0)
}
