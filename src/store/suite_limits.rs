//! The store's bounds on what one uid can make it hold (dedupe records per uid, queue bytes
//! per uid), run against every backend, and the sled-only parts: expiry in batches, counts
//! rebuilt on open, records of an earlier layout indexed.

use super::keys::Key;
use super::sled_store::SledStore;
use super::suite::backends_with;
use super::{Append, Bounds, Store};

fn record(s: &dyn Store, uid: &str, cid: &str, id: u64, now: u64) {
    s.append(&Append { room: "r", id, json: b"{}", offline: &[], dedupe: Some((uid, cid)), now_ms: now }).unwrap();
}

fn known(s: &dyn Store, uid: &str, cids: &[&str], now: u64) -> Vec<bool> {
    cids.iter().map(|c| s.dedupe_get(uid, c, now).unwrap().is_some()).collect()
}

fn capped() -> Bounds {
    Bounds { dedupe_max: 3, dedupe_ttl_ms: 500, ..Bounds::default() }
}

#[test]
fn dedupe_records_are_capped_per_uid_oldest_first() {
    for (name, s, _d) in backends_with(capped()) {
        for (i, c) in ["c1", "c2", "c3", "c4", "c5"].iter().enumerate() {
            record(&*s, "u", c, i as u64 + 1, 100 + i as u64);
        }
        record(&*s, "other", "c1", 9, 100);
        let all = ["c1", "c2", "c3", "c4", "c5"];
        assert_eq!(known(&*s, "u", &all, 110), [false, false, true, true, true], "{name}");
        assert_eq!(known(&*s, "other", &["c1"], 110), [true], "{name}: another uid keeps its own");
        // c3 written again is the newest now: the next record pushes out c4.
        record(&*s, "u", "c3", 6, 105);
        record(&*s, "u", "c6", 7, 106);
        assert_eq!(known(&*s, "u", &["c3", "c4", "c5", "c6"], 110), [true, false, true, true], "{name}");
        assert_eq!(s.dedupe_get("u", "c3", 110).unwrap(), Some(("r".into(), 6)), "{name}");
    }
}

#[test]
fn a_cid_recorded_again_keeps_its_new_record_through_expiry() {
    for (name, s, _d) in backends_with(capped()) {
        record(&*s, "u", "c1", 1, 100);
        // Expired (100 + 500 <= 700) but not swept yet, then written again.
        record(&*s, "u", "c1", 2, 700);
        s.expire(700).unwrap();
        assert_eq!(s.dedupe_get("u", "c1", 700).unwrap(), Some(("r".into(), 2)), "{name}");
        s.expire(1_200).unwrap();
        assert_eq!(s.dedupe_get("u", "c1", 0).unwrap(), None, "{name}: swept at its own time");
        // The swept record no longer counts against the cap.
        for (i, c) in ["a", "b", "c"].iter().enumerate() {
            record(&*s, "u", c, 10 + i as u64, 1_300);
        }
        assert_eq!(known(&*s, "u", &["a", "b", "c"], 1_300), [true; 3], "{name}");
    }
}

#[test]
fn dedupe_expiry_reaches_every_uid_and_more_than_a_batch() {
    let b = Bounds { dedupe_ttl_ms: 500, ..Bounds::default() };
    for (name, s, _d) in backends_with(b) {
        for i in 0..3_000u64 {
            record(&*s, "u", &format!("c{i}"), i + 1, i);
        }
        for uid in ["a", "u2", "zz"] {
            record(&*s, uid, "c0", 1, 0);
        }
        s.expire(2_500).unwrap();
        for uid in ["a", "u2", "zz"] {
            assert_eq!(s.dedupe_get(uid, "c0", 0).unwrap(), None, "{name} {uid}");
        }
        // ts <= 2000 went (2000 + 500 <= 2500), later ones stay.
        for i in [0u64, 1_023, 1_024, 2_000] {
            assert_eq!(s.dedupe_get("u", &format!("c{i}"), 0).unwrap(), None, "{name} c{i}");
        }
        for i in [2_001u64, 2_999] {
            assert!(s.dedupe_get("u", &format!("c{i}"), 2_500).unwrap().is_some(), "{name} c{i}");
        }
    }
}

#[test]
fn queue_bytes_are_capped_per_uid_oldest_first() {
    let b = Bounds { offline_max: 100, offline_max_bytes: 100, offline_ttl_ms: 1 << 40, ..Bounds::default() };
    for (name, s, _d) in backends_with(b) {
        let small = |id: u64| format!("{{\"id\":{id:04},\"pad\":\"{}\"}}", "x".repeat(10)); // 30 bytes (opaque to the store)
        for id in 1..=10u64 {
            let json = small(id);
            assert_eq!(json.len(), 30);
            let room = if id % 2 == 0 { "r1" } else { "r2" };
            s.append(&Append { room, id, json: json.as_bytes(), offline: &["u"], dedupe: None, now_ms: 0 }).unwrap();
        }
        // 90 bytes fit in 100: the last three stay, from both rooms.
        assert_eq!(s.offline_len("u").unwrap(), 3, "{name}");
        let ids = |room| s.queued("u", room, 0).unwrap().iter().map(|q| q.id).collect::<Vec<_>>();
        assert_eq!((ids("r1"), ids("r2")), (vec![8, 10], vec![9]), "{name}");
        // One entry over the cap by itself is kept (the newest is never dropped); it pushes out the rest.
        let big = "y".repeat(200);
        s.append(&Append { room: "r1", id: 11, json: big.as_bytes(), offline: &["u"], dedupe: None, now_ms: 0 })
            .unwrap();
        assert_eq!(s.offline_len("u").unwrap(), 1, "{name}");
        // Delivering it frees its bytes: three small ones fit again.
        let q = s.queued("u", "r1", 0).unwrap();
        s.dequeue("u", &[q[0].n]).unwrap();
        for id in 12..=14u64 {
            let json = small(id);
            s.append(&Append { room: "r1", id, json: json.as_bytes(), offline: &["u"], dedupe: None, now_ms: 0 })
                .unwrap();
        }
        assert_eq!(s.offline_len("u").unwrap(), 3, "{name}");
    }
}

#[tokio::test]
async fn sled_dedupe_counts_and_queue_bytes_are_rebuilt_on_open() {
    let b = Bounds { dedupe_max: 3, offline_max_bytes: 100, ..Bounds::default() };
    let dir = tempfile::tempdir().unwrap();
    let json = "z".repeat(40);
    {
        let s = SledStore::open(dir.path(), b).unwrap();
        for (i, c) in ["c1", "c2", "c3"].iter().enumerate() {
            record(&s, "u", c, i as u64 + 1, 100 + i as u64);
        }
        for id in 1..=2 {
            s.append(&Append { room: "r", id, json: json.as_bytes(), offline: &["v"], dedupe: None, now_ms: 0 })
                .unwrap();
        }
        s.flush().await.unwrap();
    }
    let s = SledStore::open(dir.path(), b).unwrap();
    record(&s, "u", "c4", 4, 103);
    assert_eq!(known(&s, "u", &["c1", "c2", "c3", "c4"], 110), [false, true, true, true]);
    s.append(&Append { room: "r", id: 3, json: json.as_bytes(), offline: &["v"], dedupe: None, now_ms: 0 }).unwrap();
    assert_eq!(s.offline_len("v").unwrap(), 2, "80 of 120 bytes fit in 100");
}

#[tokio::test]
async fn sled_indexes_dedupe_records_of_the_earlier_layout() {
    let b = Bounds { dedupe_ttl_ms: 500, ..Bounds::default() };
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path(), b).unwrap();
        // Indexed records already there (as after a rollback to an older natter and back).
        record(&s, "u", "indexed", 1, 100);
        s.flush().await.unwrap();
        let db = s.tree().unwrap();
        for (cid, ts) in [("old", 100u64), ("new", 900)] {
            db.insert(Key::Dedupe { uid: "u".into(), cid: cid.into() }.encode(), super::values::dedupe(ts, 1, "r"))
                .unwrap();
        }
        db.flush().unwrap();
    }
    let s = SledStore::open(dir.path(), b).unwrap();
    s.expire(1_000).unwrap();
    assert_eq!(s.dedupe_get("u", "old", 0).unwrap(), None, "expired once indexed");
    assert_eq!(s.dedupe_get("u", "indexed", 0).unwrap(), None);
    assert!(s.dedupe_get("u", "new", 1_000).unwrap().is_some());
}

#[test]
fn sled_a_room_opened_joined_and_left_without_a_message_leaves_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), Bounds::default()).unwrap();
    let before: Vec<_> = s.tree().unwrap().iter().keys().map(|k| k.unwrap()).collect();
    // What the hub does for a room visited once: reserve on open, join, leave, release on eviction.
    s.reserve_ids("fresh", 65_536).unwrap();
    s.add_member("fresh", "u").unwrap();
    s.set_online("fresh", "u", 1).unwrap();
    s.set_online("fresh", "u", 0).unwrap();
    s.remove_member("fresh", "u").unwrap();
    s.release_ids("fresh", 0).unwrap();
    let after: Vec<_> = s.tree().unwrap().iter().keys().map(|k| k.unwrap()).collect();
    assert_eq!(before, after);
}
