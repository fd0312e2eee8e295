//! The `Store` contract for history and recovery, run against every backend: the window kept
//! by count whatever the ids, the `prev` chain, queue-only writes, and (sled) reopening after a
//! crash and upgrading a layout-1 data dir.

use super::keys::{self, Key, LEGACY_HISTORY, LEGACY_QUEUE};
use super::sled_store::SledStore;
use super::suite::{append, backends, backends_with};
use super::values as val;
use super::{Append, Bounds, Store};

fn ids(s: &dyn Store, room: &str, after: u64) -> Vec<u64> {
    s.history_after(room, after).unwrap().iter().map(|m| m.id).collect()
}

#[test]
fn history_is_kept_by_count_across_id_jumps() {
    let b =
        Bounds { history_max: 5, offline_max: 10, offline_ttl_ms: 1 << 40, dedupe_ttl_ms: 500, ..Bounds::default() };
    for (name, s, _d) in backends_with(b) {
        for id in 1..=3 {
            append(&*s, "r", id, &[], 0);
        }
        // A crash: ids resume 65,536 further on, and 300 more messages follow.
        for id in 65_540..65_540 + 300 {
            append(&*s, "r", id, &[], 0);
        }
        assert_eq!(ids(&*s, "r", 0), (65_835..65_840).collect::<Vec<_>>(), "{name}: the last 5 by count");
        assert_eq!(ids(&*s, "r", 65_837), vec![65_838, 65_839], "{name}");
    }
    for (name, s, _d) in backends() {
        // history_max 3 here: 2 before the jump, 1 after, all kept.
        append(&*s, "r", 1, &[], 0);
        append(&*s, "r", 2, &[], 0);
        append(&*s, "r", 70_000, &[], 0);
        assert_eq!(ids(&*s, "r", 0), vec![1, 2, 70_000], "{name}: a jump deletes nothing");
    }
}

#[test]
fn stored_messages_are_chained_by_prev() {
    for (name, s, _d) in backends() {
        append(&*s, "r", 1, &["u"], 0);
        let prev =
            s.append(&Append { room: "r", id: 9, json: b"{}", offline: &["u"], dedupe: None, now_ms: 0 }).unwrap();
        assert_eq!(prev, 1, "{name}");
        append(&*s, "other", 1, &[], 0);
        let h = s.history_after("r", 0).unwrap();
        assert_eq!(h.iter().map(|m| (m.id, m.prev)).collect::<Vec<_>>(), vec![(1, 0), (9, 1)], "{name}");
        let q = s.queued("u", "r", 0).unwrap();
        assert_eq!(q.iter().map(|m| (m.id, m.prev)).collect::<Vec<_>>(), vec![(1, 0), (9, 1)], "{name}");
        // A reservation or its release is not a stored message: the chain skips it.
        s.reserve_ids("r", 1000).unwrap();
        s.release_ids("r", 1000).unwrap();
        assert_eq!(
            s.append(&Append { room: "r", id: 1001, json: b"{}", offline: &[], dedupe: None, now_ms: 0 }).unwrap(),
            9
        );
    }
}

#[test]
fn enqueue_writes_queue_entries_only() {
    for (name, s, _d) in backends() {
        let a = Append { room: "r", id: 4, json: b"{\"id\":4}", offline: &["late"], dedupe: None, now_ms: 0 };
        let prev = s.append(&Append { offline: &[], ..a }).unwrap();
        s.enqueue(&a, prev).unwrap();
        assert_eq!(ids(&*s, "r", 0), vec![4], "{name}: no second history entry");
        let q = s.queued("late", "r", 0).unwrap();
        assert_eq!((q.len(), q[0].id, q[0].prev, &q[0].json[..]), (1, 4, 0, &b"{\"id\":4}"[..]), "{name}");
        assert_eq!(s.last_id("r").unwrap(), 4, "{name}");
    }
}

#[tokio::test]
async fn sled_keeps_the_window_by_count_after_a_reopen() {
    let b =
        Bounds { history_max: 5, offline_max: 10, offline_ttl_ms: 1 << 40, dedupe_ttl_ms: 500, ..Bounds::default() };
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path(), b).unwrap();
        for id in 1..=4 {
            append(&s, "r", id, &[], 0);
        }
        s.flush().await.unwrap();
    }
    let s = SledStore::open(dir.path(), b).unwrap();
    for id in 100..103 {
        append(&s, "r", id, &[], 0);
    }
    assert_eq!(ids(&s, "r", 0), vec![3, 4, 100, 101, 102]);
    assert_eq!(s.history_after("r", 3).unwrap()[0].prev, 3);
}

/// A data dir as natter wrote it before `prev` and history positions: history keyed by id,
/// queue entries without `prev`, seq as one number (the last id given).
#[tokio::test]
async fn a_layout_1_data_dir_is_upgraded_on_open() {
    let b =
        Bounds { history_max: 10, offline_max: 10, offline_ttl_ms: 1 << 40, dedupe_ttl_ms: 500, ..Bounds::default() };
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        for id in [5u64, 6, 9] {
            let mut k = keys::history_key("r", id);
            k[0] = LEGACY_HISTORY;
            db.insert(k, format!("{{\"id\":{id}}}").as_bytes()).unwrap();
            let mut q = keys::queue_key("u", id);
            q[0] = LEGACY_QUEUE;
            db.insert(q, val::legacy_entry(0, id, "r", format!("{{\"id\":{id}}}").as_bytes())).unwrap();
        }
        db.insert(Key::Seq { room: "r".into() }.encode(), &70_000u64.to_be_bytes()).unwrap();
        db.insert(Key::Seq { room: "empty".into() }.encode(), &12u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(dir.path(), b).unwrap();
    let h = s.history_after("r", 0).unwrap();
    assert_eq!(h.iter().map(|m| (m.id, m.prev)).collect::<Vec<_>>(), vec![(5, 4), (6, 5), (9, 6)]);
    assert_eq!(&h[2].json[..], b"{\"id\":9}");
    assert_eq!(s.last_id("r").unwrap(), 70_000, "ids given before stay given");
    assert_eq!(s.last_id("empty").unwrap(), 12);
    let q = s.queued("u", "r", 0).unwrap();
    assert_eq!(q.iter().map(|m| (m.n, m.id, m.prev)).collect::<Vec<_>>(), vec![(5, 5, 4), (6, 6, 5), (9, 9, 8)]);
    assert_eq!(s.offline_len("u").unwrap(), 3);
    assert_eq!(
        s.append(&Append { room: "r", id: 70_001, json: b"{}", offline: &[], dedupe: None, now_ms: 0 }).unwrap(),
        9
    );
    drop(s);
    // The second open finds nothing left to upgrade, and the new entry in its place.
    let s = SledStore::open(dir.path(), b).unwrap();
    assert_eq!(ids(&s, "r", 0), vec![5, 6, 9, 70_001]);
    drop(s);
    assert!(sled::open(dir.path()).unwrap().scan_prefix([LEGACY_HISTORY]).next().is_none());
}
