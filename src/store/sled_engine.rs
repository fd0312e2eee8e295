//! The sled handle behind the embedded store, and what keeps the store up when the disk does
//! not: opening a data dir (no panic escapes, every failure names `--data`, a data dir whose
//! database was emptied is refused, a bloated one is compacted by `compact`), and surviving a
//! full disk.
//!
//! sled keeps the first I/O error of a handle forever: once a write hits ENOSPC, every later
//! write and flush of that handle fails, even after space comes back, while reads mostly go on
//! working. So an I/O error marks the engine broken: writes are refused at once (the hub answers
//! `unavailable`), reads keep using the old handle, and once the disk has room again the
//! handle is dropped and the data dir opened afresh, which brings back everything flushed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;

use super::Result;
use crate::sync::LockExt;

/// Free space a full disk must have again before the store is reopened (reopening itself
/// writes, and a reopen that fails leaves nothing to read from until the next one).
const REOPEN_FREE_BYTES: u64 = 16 << 20;

/// The store's identity, in the database and beside it: a database that lost its contents
/// (sled opens an emptied file as a new, empty store) no longer matches the file.
pub(crate) const STORE_ID_KEY: &[u8] = b"!store-id";
pub(crate) const STORE_ID_FILE: &str = "natter-store-id";

pub struct Engine {
    dir: PathBuf,
    db: Mutex<Option<sled::Db>>,
    broken: AtomicBool,
    /// Called when the engine breaks. Whoever reopens it must hear of it then: once broken,
    /// writes are refused before they reach the store, so nothing else would wake it.
    on_broken: Box<dyn Fn() + Send + Sync>,
}

impl Engine {
    pub fn open(dir: &Path, on_broken: Box<dyn Fn() + Send + Sync>) -> Result<Engine> {
        super::compact::settle(dir)?;
        let db = open_db(dir)?;
        check_identity(dir, &db)?;
        let db = super::compact::maybe_compact(dir, db, &super::compact::THRESHOLD)?;
        Ok(Engine { dir: dir.to_path_buf(), db: Mutex::new(Some(db)), broken: AtomicBool::new(false), on_broken })
    }

    /// A handle for one operation (cheap: reference counted). Err only while a reopen failed.
    pub fn db(&self) -> Result<sled::Db> {
        self.db.locked().clone().ok_or_else(|| anyhow::anyhow!("the store is being reopened after a disk error"))
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Refuses while broken; otherwise runs `f` and marks the engine broken on an I/O error.
    pub fn write<T>(&self, f: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<T> {
        if self.is_broken() {
            anyhow::bail!("the store cannot take writes: the disk is full or failing");
        }
        let db = self.db()?;
        self.check(f(&db))
    }

    /// Refuses writes until the next successful reopen (a reopen that could not finish).
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// Passes a result on, marking the engine broken when it is an I/O error.
    pub fn check<T>(&self, r: sled::Result<T>) -> Result<T> {
        if let Err(sled::Error::Io(e)) = &r {
            if !self.broken.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    "store: write failed ({e}): writes are refused until {} has room again",
                    self.dir.display()
                );
                (self.on_broken)();
            }
        }
        Ok(r?)
    }

    /// When broken and the disk has room again: drops the handle and opens the data dir
    /// afresh. True when the engine works again. The caller holds the store's writer lock.
    pub fn try_reopen(&self) -> bool {
        if !self.is_broken() || free_bytes(&self.dir).is_some_and(|f| f < REOPEN_FREE_BYTES) {
            return false;
        }
        let mut slot = self.db.locked();
        // sled closes the files when the last handle goes; one still held elsewhere (an
        // operation under way) keeps the lock, and the open below fails: try again later.
        drop(slot.take());
        match open_db(&self.dir) {
            Ok(db) => {
                *slot = Some(db);
                self.broken.store(false, Ordering::Release);
                tracing::info!("store: reopened {}: writes are accepted again", self.dir.display());
                true
            }
            Err(e) => {
                tracing::warn!("store: reopening failed, retrying: {e:#}");
                false
            }
        }
    }
}

/// How long an open waits for the directory's lock: a handle of this process that was just
/// dropped lets go of it only when sled's background threads are done with it.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// How often sled's background thread writes out its IO buffer and, in the same cycle, cleans
/// about one segment. sled's default (500 ms) cleans far slower than a steady publish load
/// dirties segments: a 20-minute soak left 3 GiB on disk for 21 MiB of live data. At 10 ms a
/// 475 msg/s load kept the dir near 2x its live data (~4% of a core); heavy queue churn
/// (benches/sled_space.sh, SCENARIO=offline) still outruns it, at half the default's growth,
/// which is what the startup compaction (`compact`) takes back.
const FLUSH_EVERY_MS: u64 = 10;

/// Opens the data dir; a panic inside sled (it has some on corrupted segments) becomes an error.
pub(crate) fn open_db(dir: &Path) -> Result<sled::Db> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let opened = loop {
        let r = std::panic::catch_unwind(|| sled_config(dir).open());
        match &r {
            Ok(Err(e)) if lock_held(e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => break r,
        }
    };
    std::panic::set_hook(hook);
    let hint = "a damaged store: restore --data from a backup, or move it away to start afresh";
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) if lock_held(&e) => {
            Err(anyhow::anyhow!("--data: the store in {} is in use (is another natter running on it?)", dir.display()))
        }
        Ok(Err(e @ (sled::Error::Corruption { .. } | sled::Error::Unsupported(_)))) => {
            Err(anyhow::anyhow!("--data: cannot open the store in {}: {e} ({hint})", dir.display()))
        }
        Ok(Err(e)) => Err(anyhow::anyhow!("--data: cannot open the store in {}: {e}", dir.display())),
        Err(_) => {
            Err(anyhow::anyhow!("--data: cannot open the store in {}: sled failed reading it ({hint})", dir.display()))
        }
    }
}

/// The one sled configuration of a data dir (a compacted copy is made with it too).
pub(crate) fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new().path(dir).cache_capacity(64 << 20).flush_every_ms(Some(FLUSH_EVERY_MS))
}

/// sled's "could not acquire lock" (it reports the failed `flock` as a plain I/O error with
/// that text).
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// The database and the file beside it name the same store; a new store gets both.
fn check_identity(dir: &Path, db: &sled::Db) -> Result<()> {
    let file = dir.join(STORE_ID_FILE);
    let in_db = db.get(STORE_ID_KEY).context("--data: cannot read the store")?;
    let beside = match std::fs::read(&file) {
        Ok(v) => Some(v),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::anyhow!("--data: cannot read {}: {e}", file.display())),
    };
    match (in_db, beside) {
        (Some(a), Some(b)) if a.as_ref() == b.as_slice() => Ok(()),
        (None, Some(_)) | (Some(_), Some(_)) => anyhow::bail!(
            "--data: the store in {} lost its data (its database no longer matches {STORE_ID_FILE}): \
             restore it from a backup, or move it away to start afresh",
            dir.display()
        ),
        (in_db, None) => {
            let id = match in_db {
                Some(id) => id.to_vec(),
                None => {
                    let id = format!("{:032x}", rand::random::<u128>()).into_bytes();
                    db.insert(STORE_ID_KEY, id.as_slice()).context("--data: cannot write the store")?;
                    db.flush().with_context(|| format!("--data: cannot write the store in {}", dir.display()))?;
                    id
                }
            };
            let tmp = dir.join(format!("{STORE_ID_FILE}.tmp"));
            std::fs::write(&tmp, &id)
                .and_then(|()| std::fs::rename(&tmp, &file))
                .with_context(|| format!("--data: cannot write {}", file.display()))
        }
    }
}

/// Bytes available to this process on the filesystem of `dir` (None when it cannot be told).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `s` a properly sized out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}
