//! One test suite for the `Store` contract, run against every backend.

use std::sync::Arc;

use super::memory::MemoryStore;
use super::sled_store::SledStore;
use super::{Append, Bounds, Store};

fn suite_bounds() -> Bounds {
    Bounds { history_max: 3, offline_max: 2, offline_ttl_ms: 1_000, dedupe_ttl_ms: 500, ..Bounds::default() }
}

pub(super) fn backends() -> Vec<(&'static str, Arc<dyn Store>, Option<tempfile::TempDir>)> {
    backends_with(suite_bounds())
}

pub(super) fn backends_with(b: Bounds) -> Vec<(&'static str, Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path(), b).unwrap();
    vec![("memory", Arc::new(MemoryStore::new(b)), None), ("sled", Arc::new(sled), Some(dir))]
}

/// Delivers everything queued for `uid` in `room`: read, then dequeue.
pub(super) fn take(s: &dyn Store, uid: &str, room: &str, now: u64) -> Vec<u64> {
    let q = s.queued(uid, room, now).unwrap();
    let ns: Vec<u64> = q.iter().map(|e| e.n).collect();
    s.dequeue(uid, &ns).unwrap();
    q.iter().map(|e| e.id).collect()
}

pub(super) fn append(s: &dyn Store, room: &str, id: u64, offline: &[&str], now: u64) {
    let json = format!("{{\"id\":{id}}}");
    s.append(&Append { room, id, json: json.as_bytes(), offline, dedupe: None, now_ms: now }).unwrap();
}

#[test]
fn membership_is_a_set_and_prefix_safe() {
    for (name, s, _d) in backends() {
        assert!(s.add_member("r1", "alice").unwrap(), "{name}");
        assert!(!s.add_member("r1", "alice").unwrap(), "{name}");
        assert!(s.add_member("r1", "alice2").unwrap(), "{name}");
        assert!(s.add_member("r10", "bob").unwrap(), "{name}");
        let mut m = s.members("r1").unwrap();
        m.sort();
        assert_eq!(m, vec!["alice", "alice2"], "{name}");
        assert!(s.remove_member("r1", "alice").unwrap(), "{name}");
        assert!(!s.remove_member("r1", "alice").unwrap(), "{name}");
        assert_eq!(s.members("r1").unwrap(), vec!["alice2"], "{name}");
        // The other side of the same membership, prefix-safe too (alice vs alice2).
        assert!(s.add_member("r2", "alice2").unwrap(), "{name}");
        let mut r = s.user_rooms("alice2").unwrap();
        r.sort();
        assert_eq!(r, vec!["r1", "r2"], "{name}");
        assert!(s.user_rooms("alice").unwrap().is_empty(), "{name}");
    }
}

#[test]
fn concurrent_joins_all_land() {
    for (name, s, _d) in backends() {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        s.add_member("room", &format!("u{t}-{i}")).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(s.members("room").unwrap().len(), 400, "{name}");
    }
}

#[test]
fn history_is_capped_and_ids_continue() {
    for (name, s, _d) in backends() {
        for id in 1..=5 {
            append(&*s, "r", id, &[], 0);
        }
        assert_eq!(s.last_id("r").unwrap(), 5, "{name}");
        let ids: Vec<u64> = s.history_after("r", 0).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![3, 4, 5], "{name}");
        let ids: Vec<u64> = s.history_after("r", 4).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![5], "{name}");
        assert!(s.history_after("r", 5).unwrap().is_empty(), "{name}");
        assert!(s.history_after("other", 0).unwrap().is_empty(), "{name}");
    }
}

#[test]
fn offline_queues_are_per_uid_per_room_capped_and_expire() {
    for (name, s, _d) in backends() {
        append(&*s, "r1", 1, &["alice", "alice2"], 0);
        append(&*s, "r2", 1, &["alice"], 0);
        append(&*s, "r1", 2, &["alice"], 10);
        // cap 2: the oldest (r1#1) was dropped
        assert_eq!(s.offline_len("alice").unwrap(), 2, "{name}");
        let got: Vec<u64> = take(&*s, "alice", "r1", 20);
        assert_eq!(got, vec![2], "{name}");
        assert!(take(&*s, "alice", "r1", 20).is_empty(), "{name}");
        assert_eq!(s.offline_len("alice").unwrap(), 1, "{name}");
        // alice2's queue is its own
        assert_eq!(take(&*s, "alice2", "r1", 20).len(), 1, "{name}");
        // TTL 1000 ms: r2#1 (ts 0) is gone at 1000
        assert!(take(&*s, "alice", "r2", 1_000).is_empty(), "{name}");
        append(&*s, "r1", 3, &["carol"], 0);
        s.expire(5_000).unwrap();
        assert_eq!(s.offline_len("carol").unwrap(), 0, "{name}");
    }
}

#[test]
fn dedupe_records_expire() {
    for (name, s, _d) in backends() {
        s.append(&Append { room: "r", id: 1, json: b"{}", offline: &[], dedupe: Some(("u", "c1")), now_ms: 100 })
            .unwrap();
        assert_eq!(s.dedupe_get("u", "c1", 200).unwrap(), Some(("r".to_string(), 1)), "{name}");
        assert_eq!(s.dedupe_get("u2", "c1", 200).unwrap(), None, "{name}");
        assert_eq!(s.dedupe_get("u", "c1", 600).unwrap(), None, "{name}");
        s.expire(600).unwrap();
        assert_eq!(s.dedupe_get("u", "c1", 0).unwrap(), None, "{name}");
    }
}

#[test]
fn presence_is_cleared() {
    for (name, s, _d) in backends() {
        s.set_online("r", "u", 2).unwrap();
        s.set_online("r", "v", 1).unwrap();
        s.set_online("r", "v", 0).unwrap();
        assert_eq!(s.online("r").unwrap(), vec![("u".to_string(), 2)], "{name}");
        s.clear_presence().unwrap();
        assert!(s.online("r").unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn sled_survives_reopen_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path(), suite_bounds()).unwrap();
        s.add_member("r", "u").unwrap();
        append(&s, "r", 1, &["u"], crate::now_ms());
        s.flush().await.unwrap();
    }
    let s = SledStore::open(dir.path(), suite_bounds()).unwrap();
    assert_eq!(s.last_id("r").unwrap(), 1);
    assert_eq!(s.members("r").unwrap(), vec!["u"]);
    assert_eq!(take(&s, "u", "r", crate::now_ms()).len(), 1);
}

#[test]
fn reserved_ids_raise_last_id() {
    for (name, s, _d) in backends() {
        append(&*s, "r", 1, &[], 0);
        append(&*s, "r", 2, &[], 0);
        assert_eq!(s.last_id("r").unwrap(), 2, "{name}");
        s.reserve_ids("r", 100).unwrap();
        assert_eq!(s.last_id("r").unwrap(), 100, "{name}");
        append(&*s, "r", 101, &[], 0);
        s.reserve_ids("r", 2000).unwrap();
        assert_eq!(s.last_id("r").unwrap(), 2000, "{name}");
        s.reserve_ids("r", 10).unwrap();
        assert_eq!(s.last_id("r").unwrap(), 2000, "{name}: a reservation is never lowered");
        s.reserve_ids("q", 50).unwrap();
        s.release_ids("q", 0).unwrap();
        assert_eq!(s.last_id("q").unwrap(), 0, "{name}");
        assert_eq!(s.last_id("r").unwrap(), 2000, "{name}: other rooms keep theirs");
        s.release_ids("r", 101).unwrap();
        assert_eq!(s.last_id("r").unwrap(), 101, "{name}: a clean stop leaves no gap");
        // After a crash the room resumed at its reservation: releasing keeps that number.
        s.reserve_ids("r", 3000).unwrap();
        s.release_ids("r", 3000).unwrap();
        assert_eq!(s.last_id("r").unwrap(), 3000, "{name}: ids possibly given stay given");
        assert_eq!(s.last_id("other").unwrap(), 0, "{name}");
    }
}

#[test]
fn queued_is_a_peek_and_dequeue_removes_only_what_was_delivered() {
    for (name, s, _d) in backends() {
        for id in 1..=2 {
            append(&*s, "r1", id, &["alice"], 0);
        }
        let q = s.queued("alice", "r1", 10).unwrap();
        assert_eq!(q.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2], "{name}");
        assert_eq!(s.queued("alice", "r1", 10).unwrap().len(), 2, "{name}: a peek removes nothing");
        s.dequeue("alice", &[q[0].n]).unwrap();
        let rest: Vec<u64> = s.queued("alice", "r1", 10).unwrap().iter().map(|e| e.id).collect();
        assert_eq!(rest, vec![2], "{name}");
        assert_eq!(s.offline_len("alice").unwrap(), 1, "{name}");
        assert!(s.queued("alice", "r2", 10).unwrap().is_empty(), "{name}");
    }
}

#[test]
fn the_cap_drops_the_oldest_entries_left_after_deliveries() {
    let b =
        Bounds { history_max: 100, offline_max: 4, offline_ttl_ms: 1_000_000, dedupe_ttl_ms: 500, ..Bounds::default() };
    for (name, s, _d) in backends_with(b) {
        // alice's queue: r1#1 r2#1 r1#2 r2#2; delivering r1 leaves holes before r2's entries
        append(&*s, "r1", 1, &["alice"], 0);
        append(&*s, "r2", 1, &["alice"], 0);
        append(&*s, "r1", 2, &["alice"], 0);
        append(&*s, "r2", 2, &["alice"], 0);
        assert_eq!(take(&*s, "alice", "r1", 1), vec![1, 2], "{name}");
        assert_eq!(s.offline_len("alice").unwrap(), 2, "{name}");
        for id in 3..=5 {
            append(&*s, "r2", id, &["alice"], 0);
        }
        // five r2 entries against a cap of four: r2#1 went
        assert_eq!(s.offline_len("alice").unwrap(), 4, "{name}");
        assert_eq!(take(&*s, "alice", "r2", 1), vec![2, 3, 4, 5], "{name}");
        assert_eq!(s.offline_len("alice").unwrap(), 0, "{name}");
    }
}

#[tokio::test]
async fn sled_queue_bookkeeping_is_rebuilt_on_open() {
    let b =
        Bounds { history_max: 100, offline_max: 3, offline_ttl_ms: 1_000_000, dedupe_ttl_ms: 500, ..Bounds::default() };
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path(), b).unwrap();
        for id in 1..=2 {
            append(&s, "r", id, &["u"], 0);
        }
        s.flush().await.unwrap();
    }
    let s = SledStore::open(dir.path(), b).unwrap();
    // The first thing after opening is a delivery: the count is right afterwards.
    append(&s, "other", 1, &["v"], 0);
    append(&s, "r", 1, &["v"], 0);
    drop(s);
    let s = SledStore::open(dir.path(), b).unwrap();
    assert_eq!(take(&s, "v", "r", 1), vec![1]);
    assert_eq!(s.offline_len("v").unwrap(), 1);
    assert_eq!(s.offline_len("u").unwrap(), 2);
    for id in 3..=4 {
        append(&s, "r", id, &["u"], 0);
    }
    assert_eq!(s.offline_len("u").unwrap(), 3);
    assert_eq!(take(&s, "u", "r", 1), vec![2, 3, 4]);
}
