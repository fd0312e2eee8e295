//! Startup compaction: a bloated data dir is copied and swapped in with every entry and the
//! files beside the db, and what an interrupted compaction leaves is settled at the next open.

use std::collections::BTreeMap;
use std::path::Path;

use super::compact::{maybe_compact, settle, Threshold};
use super::sled_engine::open_db;

type Entries = BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>;

fn entries(db: &sled::Db) -> Entries {
    let mut out = BTreeMap::new();
    for name in db.tree_names() {
        for kv in db.open_tree(&name).unwrap().iter() {
            let (k, v) = kv.unwrap();
            out.insert((name.to_vec(), k.to_vec()), v.to_vec());
        }
    }
    out
}

fn file_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("db")).unwrap().len()
}

fn inode(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).unwrap().ino()
}

/// A store with `n` live keys, each overwritten `rounds` times, so that the file grows far past
/// the live data.
fn bloated(dir: &Path, n: u32, rounds: u32) {
    // No background flusher: nothing cleans segments while this writes, however slowly it runs
    // (with one, a loaded machine gives the cleaner time to keep up, and there is no bloat).
    let db = sled::Config::new().path(dir).flush_every_ms(None).open().unwrap();
    for round in 0..rounds {
        let mut b = sled::Batch::default();
        for i in 0..n {
            b.insert(&i.to_be_bytes(), format!("{round:04}-{i:08}-{}", "x".repeat(180)).as_bytes());
        }
        db.apply_batch(b).unwrap();
    }
    db.open_tree("other").unwrap().insert(b"k", b"v").unwrap();
    db.flush().unwrap();
    std::fs::write(dir.join(super::sled_engine::STORE_ID_FILE), b"0123abcd").unwrap();
}

#[test]
fn a_bloated_data_dir_is_compacted_keeping_every_entry_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // 25,000 keys: more than two copy batches.
    bloated(&dir, 25_000, 6);
    let db = open_db(&dir).unwrap();
    let want = entries(&db);
    let before = file_bytes(&dir);
    let inode_before = inode(&dir);
    let db = maybe_compact(&dir, db, &Threshold { factor: 2, slack: 0 }).unwrap();
    assert_eq!(entries(&db), want, "every entry of every tree, same values");
    assert_eq!(want.len(), 25_000 + 1);
    let after = file_bytes(&dir);
    eprintln!("compacted: {before} -> {after} bytes");
    // The swap is proof the copy happened; how much sled bloats the original varies between
    // machines (66 MB here, 24 MB on CI once), so the shrink is only checked to be real.
    assert_ne!(inode(&dir), inode_before, "the data dir is the compacted copy");
    assert!(after < before, "the file shrank: {before} -> {after} bytes");
    assert_eq!(std::fs::read(dir.join(super::sled_engine::STORE_ID_FILE)).unwrap(), b"0123abcd");
    for leftover in ["data.compact", "data.old"] {
        assert!(!tmp.path().join(leftover).exists(), "{leftover} is gone");
    }
    // The compacted store is a working store, and survives a reopen.
    db.insert(b"new", b"1").unwrap();
    db.flush().unwrap();
    drop(db);
    let db = open_db(&dir).unwrap();
    assert_eq!(db.get(b"new").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(entries(&db).len(), want.len() + 1);
}

#[test]
fn a_data_dir_under_the_threshold_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    bloated(&dir, 100, 2);
    let db = open_db(&dir).unwrap();
    let (before, inode_before) = (file_bytes(&dir), inode(&dir));
    let db = maybe_compact(&dir, db, &Threshold { factor: 4, slack: 64 << 20 }).unwrap();
    assert_eq!(entries(&db).len(), 101);
    assert_eq!(file_bytes(&dir), before);
    assert_eq!(inode(&dir), inode_before, "no copy was swapped in");
}

#[test]
fn an_interrupted_compaction_is_settled_at_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, old, compact) = (tmp.path().join("data"), tmp.path().join("data.old"), tmp.path().join("data.compact"));
    bloated(&dir, 1_000, 1);
    let want = entries(&open_db(&dir).unwrap());
    let copy_of = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    };

    // Crashed while copying: the unfinished copy goes, the data stays.
    std::fs::create_dir_all(&compact).unwrap();
    std::fs::write(compact.join("db"), b"half a copy").unwrap();
    settle(&dir).unwrap();
    assert!(!compact.exists());
    assert_eq!(entries(&open_db(&dir).unwrap()), want);

    // Crashed between the two renames (and `natter serve` made --data again, empty): the
    // original comes back, the unchecked copy goes.
    std::fs::rename(&dir, &old).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&compact).unwrap();
    settle(&dir).unwrap();
    assert!(!old.exists() && !compact.exists());
    assert_eq!(entries(&open_db(&dir).unwrap()), want);

    // Crashed after the swap, before the original was removed: the copy is the data.
    copy_of(&dir, &old);
    std::fs::write(old.join("marker"), b"the original").unwrap();
    settle(&dir).unwrap();
    assert!(!old.exists());
    assert_eq!(entries(&open_db(&dir).unwrap()), want);

    // An older natter (which knows nothing of compaction) started on an empty --data between
    // the renames: that fresh store is no copy of the original, which is kept, and the start
    // refused.
    let id = super::sled_engine::STORE_ID_FILE;
    std::fs::rename(&dir, &old).unwrap();
    std::fs::write(old.join(id), b"the original's id").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(id), b"a fresh store's id").unwrap();
    let e = settle(&dir).unwrap_err().to_string();
    assert!(e.contains("data.old") && e.contains("--data"), "{e}");
    assert!(old.join("db").exists(), "the original is kept");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::rename(&old, &dir).unwrap();
    std::fs::remove_file(dir.join(id)).unwrap();

    // Only an unchecked copy: refused, nothing removed.
    std::fs::rename(&dir, &compact).unwrap();
    let e = settle(&dir).unwrap_err().to_string();
    assert!(e.contains("--data") && e.contains("data.compact"), "{e}");
    assert!(compact.join("db").exists());
}
