//! Startup compaction of a bloated data dir: sled never gives back file space it once used,
//! so a store whose files grew far past its live data is copied into a fresh sled database
//! and swapped in, by renames that a crash at any point leaves resolvable.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::sled_engine::{open_db, sled_config};
use super::Result;

/// When a data dir is worth compacting: more on disk than `factor` times the live bytes
/// (keys and values) plus `slack`. The slack keeps small stores, whose files are mostly
/// sled's fixed overhead, from being copied at every start.
pub(crate) struct Threshold {
    pub(crate) factor: u64,
    pub(crate) slack: u64,
}

pub(crate) const THRESHOLD: Threshold = Threshold { factor: 4, slack: 64 << 20 };

/// Entries per batch written to the copy: bounds the memory a copy holds at once.
const BATCH_KEYS: usize = 10_000;

/// sled's own entries in a data dir; anything else beside them is copied as a file.
fn is_sleds(name: &str) -> bool {
    name == "db" || name == "conf" || name == "blobs" || name.starts_with("snap.")
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<data>.compact`: the copy being made. Only trusted once renamed to `<data>`.
fn compact_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".compact")
}

/// `<data>.old`: the original during the swap; garbage once `<data>` is the copy.
fn old_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".old")
}

/// A data dir counts as there when it holds anything (`natter serve` creates `--data` empty
/// before opening it, so an empty one may stand where a swap left none).
fn present(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Brings the data dir back to one consistent state after a compaction cut short by a crash.
/// The steps, in order, and what a crash after each one leaves:
/// 1. copy into `<data>.compact`, flush, copy the files beside the db, verify: data, compact
///    (maybe incomplete) -> the compact dir is removed, data used as it is;
/// 2. rename data -> `<data>.old`: old, compact (complete, but not trusted) -> rolled back:
///    old renamed to data, compact removed;
/// 3. rename compact -> data: data (the copy), old -> old removed;
/// 4. remove old (maybe half removed): same as 3.
///
/// A failed open of the copy renames it back to compact before old returns to data, so a
/// crash then is case 2 again. Only compact without data or old is refused: it is no store.
/// Two natter on one data dir (already refused by sled's lock) could race here; neither
/// ever removes the only copy of the data.
pub(crate) fn settle(dir: &Path) -> Result<()> {
    let (old, compact) = (old_dir(dir), compact_dir(dir));
    if !present(dir) && old.exists() {
        tracing::warn!("store: a compaction of {} was interrupted: going back to the original", dir.display());
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(|e| anyhow::anyhow!("--data: cannot remove {}: {e}", dir.display()))?;
        }
        std::fs::rename(&old, dir)
            .map_err(|e| anyhow::anyhow!("--data: cannot move {} back to {}: {e}", old.display(), dir.display()))?;
        sync_parent(dir);
    }
    if !present(dir) && compact.exists() {
        anyhow::bail!(
            "--data: {} is missing, and {} holds a compacted copy that was never checked: \
             move it to --data if you trust it, or remove it to start afresh",
            dir.display(),
            compact.display()
        );
    }
    // `.old` is garbage only when `dir` is its compacted copy (same store id): a `dir` made
    // afresh meanwhile (an older natter, which knows nothing of this, started on an empty
    // --data) would otherwise cost the only copy of the data.
    if old.exists() && store_id(dir) != store_id(&old) {
        anyhow::bail!(
            "--data: {} holds the original store of an interrupted compaction, and {} is not its \
             copy: move {} away and {} back to --data to keep the original",
            old.display(),
            dir.display(),
            dir.display(),
            old.display()
        );
    }
    for leftover in [compact, old] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover)
                .map_err(|e| anyhow::anyhow!("--data: cannot remove {}: {e}", leftover.display()))?;
            tracing::info!("store: removed {} left by an interrupted compaction", leftover.display());
        }
    }
    Ok(())
}

/// Compacts the data dir when its files exceed `t`; returns the db to use. Any failure keeps
/// the original (with a warning); Err only when the original cannot be opened again.
pub(crate) fn maybe_compact(dir: &Path, db: sled::Db, t: &Threshold) -> Result<sled::Db> {
    let started = Instant::now();
    // Files under the slack never qualify: no need to read the whole store to know it.
    if db.size_on_disk().is_ok_and(|s| s <= t.slack) {
        return Ok(db);
    }
    let (on_disk, live) = match db.size_on_disk().and_then(|s| Ok((s, live_bytes(&db)?))) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("store: not compacting {}: cannot measure it: {e}", dir.display());
            return Ok(db);
        }
    };
    if on_disk <= live.saturating_mul(t.factor).saturating_add(t.slack) {
        return Ok(db);
    }
    let before = disk_usage(dir);
    let compact = compact_dir(dir);
    if let Err(e) = preflight(dir, live).and_then(|()| copy(&db, dir, &compact)) {
        tracing::warn!("store: not compacting {} ({on_disk} bytes for {live} live): {e:#}", dir.display());
        let _ = std::fs::remove_dir_all(&compact);
        return Ok(db);
    }
    // sled holds the directory's lock and files until its last handle goes.
    drop(db);
    let old = old_dir(dir);
    if let Err(e) = swap(dir, &compact, &old) {
        tracing::warn!("store: not compacting {}: {e}", dir.display());
        let _ = std::fs::remove_dir_all(&compact);
        return open_db(dir);
    }
    match open_db(dir) {
        Ok(db) => {
            if let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!("store: cannot remove {} (removed at the next start): {e}", old.display());
            }
            tracing::info!(
                "store: compacted {}: {} -> {} MiB on disk ({} MiB live) in {:.2} s",
                dir.display(),
                before >> 20,
                disk_usage(dir) >> 20,
                live >> 20,
                started.elapsed().as_secs_f64()
            );
            Ok(db)
        }
        Err(e) => {
            tracing::warn!("store: the compacted copy of {} does not open, keeping the original: {e:#}", dir.display());
            if old.exists() {
                // Back to the original, or stop: opening `dir` now could create an empty store
                // there, which the next start would take for the copy.
                std::fs::rename(dir, &compact).and_then(|()| std::fs::rename(&old, dir)).map_err(|e| {
                    anyhow::anyhow!(
                        "--data: cannot move the original store back from {} to {}: {e}",
                        old.display(),
                        dir.display()
                    )
                })?;
                sync_parent(dir);
                let _ = std::fs::remove_dir_all(&compact);
            }
            open_db(dir)
        }
    }
}

/// The store id file of a data dir (None when unreadable).
fn store_id(dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(dir.join(super::sled_engine::STORE_ID_FILE)).ok()
}

/// Bytes of every key and value, all trees.
fn live_bytes(db: &sled::Db) -> sled::Result<u64> {
    let mut n = 0u64;
    for name in db.tree_names() {
        for kv in db.open_tree(&name)?.iter() {
            let (k, v) = kv?;
            n += (k.len() + v.len()) as u64;
        }
    }
    Ok(n)
}

/// The swap renames directories: the copy must be on the same filesystem, and have room.
fn preflight(dir: &Path, live: u64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if std::fs::symlink_metadata(dir)?.file_type().is_symlink() {
        anyhow::bail!("it is a symbolic link");
    }
    if std::fs::metadata(dir)?.dev() != std::fs::metadata(parent)?.dev() {
        anyhow::bail!("it is a mount point (the copy beside it would be on another filesystem)");
    }
    let need = live.saturating_mul(2).saturating_add(THRESHOLD.slack);
    if super::sled_engine::free_bytes(parent).is_some_and(|f| f < need) {
        anyhow::bail!("the copy needs about {} MiB free beside it", need >> 20);
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_sleds(&name) && !e.file_type()?.is_file() {
            anyhow::bail!("{} is not a file: the copy would leave it behind", e.path().display());
        }
    }
    Ok(())
}

/// Copies every entry and every file beside the db into `to`, then checks the copy by
/// opening it afresh: same entries, same bytes.
fn copy(db: &sled::Db, dir: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    let (mut entries, mut bytes) = (0u64, 0u64);
    {
        let new = sled_config(to).open()?;
        for name in db.tree_names() {
            let (src, dst) = (db.open_tree(&name)?, new.open_tree(&name)?);
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for kv in src.iter() {
                let (k, v) = kv?;
                (entries, bytes) = (entries + 1, bytes + (k.len() + v.len()) as u64);
                batch.insert(k, v);
                n += 1;
                if n == BATCH_KEYS {
                    dst.apply_batch(std::mem::take(&mut batch))?;
                    n = 0;
                }
            }
            dst.apply_batch(batch)?;
        }
        new.flush()?;
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if !is_sleds(&e.file_name().to_string_lossy()) {
            let dest = to.join(e.file_name());
            std::fs::copy(e.path(), &dest)?;
            std::fs::File::open(&dest)?.sync_all()?;
        }
    }
    std::fs::File::open(to)?.sync_all()?;
    let check = open_db(to)?;
    let (mut got_entries, mut got_bytes) = (0u64, 0u64);
    for name in check.tree_names() {
        for kv in check.open_tree(&name)?.iter() {
            let (k, v) = kv?;
            (got_entries, got_bytes) = (got_entries + 1, got_bytes + (k.len() + v.len()) as u64);
        }
    }
    if (got_entries, got_bytes) != (entries, bytes) {
        anyhow::bail!("the copy holds {got_entries} entries ({got_bytes} bytes), not {entries} ({bytes})");
    }
    Ok(())
}

/// data -> old, compact -> data; on failure, what was moved is moved back.
fn swap(dir: &Path, compact: &Path, old: &Path) -> std::io::Result<()> {
    std::fs::rename(dir, old)?;
    if let Err(e) = std::fs::rename(compact, dir) {
        let _ = std::fs::rename(old, dir);
        return Err(e);
    }
    sync_parent(dir);
    Ok(())
}

/// Makes the renames in `dir`'s parent durable (best effort: the next start settles any
/// state a lost rename leaves).
fn sync_parent(dir: &Path) {
    if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::File::open(p).and_then(|f| f.sync_all());
    }
}

/// Bytes the data dir takes on disk (allocated blocks, as `du` counts them).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
