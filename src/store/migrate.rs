//! Upgrading a data dir written by an earlier natter (layout 1: history keyed by message id,
//! queue entries without `prev`; layout 2: dedupe records without their age index entry) to the
//! current layout, once, at open. Each room's history and
//! each batch of queue entries move in one atomic batch, so a crash part-way leaves a data dir
//! that the next open finishes migrating; nothing is lost or doubled.

use super::keys::{self, Key, LEGACY_HISTORY, LEGACY_QUEUE};
use super::values as val;
use super::Result;

/// Queue entries moved per batch.
const QUEUE_BATCH: usize = 4_096;

/// Migrates whatever layout-1 keys `db` holds; returns how many entries moved.
pub fn migrate(db: &sled::Db) -> Result<usize> {
    let mut moved = 0;
    while let Some(item) = db.scan_prefix([LEGACY_HISTORY]).next() {
        let (k, _) = item?;
        let Some(Key::History { room, .. }) = relabel(&k, &keys::history_key("", 0)) else {
            // Not a key natter wrote: leave the data alone, refuse to guess.
            anyhow::bail!("unreadable history key in the store: {k:?}");
        };
        moved += migrate_history(db, &room)?;
    }
    migrate_seqs(db)?;
    moved += index_dedupe(db)?;
    loop {
        let mut b = sled::Batch::default();
        let mut n = 0;
        for item in db.scan_prefix([LEGACY_QUEUE]).take(QUEUE_BATCH) {
            let (k, v) = item?;
            b.remove(&k);
            let new_key = relabel(&k, &keys::queue_key("", 0)).map(|k| k.encode());
            // A legacy entry's predecessor is unknown: `id - 1` claims the least (a gap there
            // reports `recovered:false`, never a false `true`).
            if let (Some(nk), Some((ts, id, room, rest))) = (new_key, val::parse_legacy_entry(&v)) {
                b.insert(nk, val::entry(ts, id, id.saturating_sub(1), room, rest));
            }
            n += 1;
        }
        if n == 0 {
            break;
        }
        db.apply_batch(b)?;
        moved += n;
    }
    Ok(moved)
}

/// Dedupe records without their age index entry (written by a natter from before the index,
/// layout 2, also after a rollback to one) get it, so that expiry and the cap see them. One
/// pass over the records, which live minutes and so are few, and one point read each.
fn index_dedupe(db: &sled::Db) -> Result<usize> {
    let mut b = sled::Batch::default();
    let mut n = 0;
    for item in db.scan_prefix(keys::dedupe_all()) {
        let (k, v) = item?;
        if let (Some(Key::Dedupe { uid, cid }), Some((ts, ..))) = (Key::decode(&k), val::parse_dedupe(&v)) {
            let age = Key::DedupeAge { uid, ts, cid }.encode();
            if !db.contains_key(&age)? {
                b.insert(age, &[]);
                n += 1;
            }
        }
    }
    if n > 0 {
        db.apply_batch(b)?;
    }
    Ok(n)
}

/// The same key under the current tag of `like` (a key of the same kind).
fn relabel(k: &[u8], like: &[u8]) -> Option<Key> {
    let mut k = k.to_vec();
    k[0] = like[0];
    Key::decode(&k)
}

/// One room's history, from id-keyed entries to positions 1..n, its seq to (last id, n).
fn migrate_history(db: &sled::Db, room: &str) -> Result<usize> {
    let mut legacy_prefix = keys::history_prefix(room);
    legacy_prefix[0] = LEGACY_HISTORY;
    let mut b = sled::Batch::default();
    let mut prev = None;
    let mut pos = 0;
    for item in db.scan_prefix(&legacy_prefix) {
        let (k, json) = item?;
        let id = val::u64_at(&k, k.len() - 8);
        b.remove(&k);
        pos += 1;
        let p = prev.unwrap_or(id.saturating_sub(1));
        b.insert(keys::history_key(room, pos), val::stored(id, p, &json));
        prev = Some(id);
    }
    let last = prev.unwrap_or(0);
    let seq_key = Key::Seq { room: room.into() }.encode();
    let old_seq = db.get(&seq_key)?.map(|v| val::u64_at(&v, 0)).unwrap_or(0);
    b.insert(seq_key, val::seq(last, pos));
    reserve_at_least(db, &mut b, room, old_seq)?;
    db.apply_batch(b)?;
    Ok(pos as usize)
}

/// Layout-1 seq values (8 bytes, the last id given, which may be above the last stored one)
/// of rooms without history: the number becomes a reservation, so ids still continue above it.
fn migrate_seqs(db: &sled::Db) -> Result<()> {
    for item in db.scan_prefix(keys::seq_all()) {
        let (k, v) = item?;
        if v.len() != 8 {
            continue;
        }
        let Some(Key::Seq { room }) = Key::decode(&k) else { continue };
        let mut b = sled::Batch::default();
        b.insert(k.to_vec(), val::seq(val::u64_at(&v, 0), 0));
        reserve_at_least(db, &mut b, &room, val::u64_at(&v, 0))?;
        db.apply_batch(b)?;
    }
    Ok(())
}

fn reserve_at_least(db: &sled::Db, b: &mut sled::Batch, room: &str, id: u64) -> Result<()> {
    let k = Key::SeqReserved { room: room.into() }.encode();
    let current = db.get(&k)?.map(|v| val::u64_at(&v, 0)).unwrap_or(0);
    if id > current {
        b.insert(k, &id.to_be_bytes());
    }
    Ok(())
}
