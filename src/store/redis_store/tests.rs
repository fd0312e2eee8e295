//! The store suite's semantics against a real redis-server: membership, history by count,
//! offline queues (caps, TTL, peek then dequeue), dedupe, key escaping. Publishes go through
//! the publish script (the store gives the ids).

use std::time::Duration;

use super::test_server::TestRedis;
use super::{esc, Outcome, Publish, RedisConfig, RedisStore, Template};
use crate::protocol::MessageOut;
use crate::store::Bounds;

pub(super) fn bounds() -> Bounds {
    Bounds { history_max: 3, offline_max: 2, offline_ttl_ms: 1 << 40, dedupe_ttl_ms: 600_000, ..Bounds::default() }
}

pub(super) async fn store_on(r: &TestRedis, node: &str, b: Bounds) -> RedisStore {
    RedisStore::connect(RedisConfig::new(&r.url(), node, b)).await.unwrap()
}

pub(super) fn template(room: &str, uid: &str, text: &str, cid: Option<&str>) -> Template {
    Template::message(&MessageOut {
        event: "message",
        id: 0,
        roomid: room,
        uid,
        name: uid,
        message: text,
        num: 0,
        total: 0,
        ts: 1,
        cid,
    })
}

/// Publishes `text` from `uid` (no cid) and returns the id.
pub(super) async fn say(s: &RedisStore, room: &str, uid: &str, text: &str, now: u64) -> u64 {
    let t = template(room, uid, text, None);
    match s.publish(&Publish { room, uid, cid: None, template: &t, now_ms: now }).await.unwrap() {
        Outcome::Published(p) => p.id,
        other => panic!("{other:?}"),
    }
}

async fn take(s: &RedisStore, uid: &str, room: &str, now: u64) -> Vec<u64> {
    let q = s.queued(uid, room, now).await.unwrap();
    let ns: Vec<u64> = q.iter().map(|e| e.n).collect();
    s.dequeue(uid, &ns).await.unwrap();
    q.iter().map(|e| e.id).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn membership_is_a_set_and_prefix_safe() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", bounds()).await;
    assert!(s.add_member("r1", "alice").await.unwrap());
    assert!(!s.add_member("r1", "alice").await.unwrap());
    assert!(s.add_member("r1", "alice2").await.unwrap());
    assert!(s.add_member("r10", "bob").await.unwrap());
    assert_eq!(sorted(s.members("r1").await.unwrap()), vec!["alice", "alice2"]);
    assert!(s.remove_member("r1", "alice").await.unwrap());
    assert!(!s.remove_member("r1", "alice").await.unwrap());
    assert_eq!(s.members("r1").await.unwrap(), vec!["alice2"]);
    assert!(s.add_member("r2", "alice2").await.unwrap());
    assert_eq!(sorted(s.user_rooms("alice2").await.unwrap()), vec!["r1", "r2"]);
    assert!(s.user_rooms("alice").await.unwrap().is_empty());
    // Another prefix is another deployment.
    let mut cfg = RedisConfig::new(&r.url(), "n2", bounds());
    cfg.prefix = "other:".into();
    let o = RedisStore::connect(cfg).await.unwrap();
    assert!(o.members("r1").await.unwrap().is_empty());
}

#[test]
fn key_parts_are_escaped_so_no_two_keys_meet() {
    assert_eq!(esc("room-1.x"), "room-1.x");
    assert_eq!(esc("a}:{b%"), "a%7D%3A%7Bb%25");
    let k = super::Keys { prefix: "p:".into() };
    assert_ne!(k.dedupe("a}:{b", "c"), k.dedupe("a", "b}:{c"));
    assert_eq!(k.offline("u:1"), "p:offline:{u%3A1}");
    assert_eq!(k.members("r1"), "p:room:{r1}:members");
}

#[tokio::test]
async fn ids_continue_and_history_is_capped_by_count() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", bounds()).await;
    for want in 1..=5 {
        assert_eq!(say(&s, "r", "u", &format!("m{want}"), 0).await, want);
    }
    assert_eq!(s.last_id("r").await.unwrap(), 5);
    let h = s.history_after("r", 0).await.unwrap();
    assert_eq!(h.iter().map(|m| (m.id, m.prev)).collect::<Vec<_>>(), vec![(3, 2), (4, 3), (5, 4)]);
    assert!(String::from_utf8_lossy(&h[2].json).contains("\"message\":\"m5\""));
    let ids: Vec<u64> = s.history_after("r", 4).await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![5]);
    assert!(s.history_after("r", 5).await.unwrap().is_empty());
    assert!(s.history_after("other", 0).await.unwrap().is_empty());
    assert_eq!(s.last_id("other").await.unwrap(), 0);
}

#[tokio::test]
async fn history_after_reads_across_chunks() {
    let r = TestRedis::start();
    let b = Bounds { history_max: 200, ..bounds() };
    let s = store_on(&r, "n1", b).await;
    for _ in 0..250 {
        say(&s, "r", "u", "x", 0).await;
    }
    let ids = |v: Vec<crate::store::Stored>| v.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(s.history_after("r", 0).await.unwrap()), (51..=250).collect::<Vec<_>>());
    assert_eq!(ids(s.history_after("r", 100).await.unwrap()), (101..=250).collect::<Vec<_>>());
    assert_eq!(ids(s.history_after("r", 249).await.unwrap()), vec![250]);
}

#[tokio::test]
async fn offline_queues_are_per_uid_per_room_capped_and_a_peek() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", bounds()).await;
    for (room, uid) in [("r1", "alice"), ("r1", "alice2"), ("r2", "alice")] {
        s.add_member(room, uid).await.unwrap();
    }
    say(&s, "r1", "bob", "a", 0).await; // alice, alice2
    say(&s, "r2", "bob", "b", 0).await; // alice
    say(&s, "r1", "bob", "c", 10).await; // alice: over the cap of 2, r1#1 goes
    assert_eq!(s.offline_len("alice").await.unwrap(), 2);
    let q = s.queued("alice", "r1", 20).await.unwrap();
    assert_eq!(q.iter().map(|e| (e.id, e.prev)).collect::<Vec<_>>(), vec![(2, 1)]);
    assert_eq!(s.queued("alice", "r1", 20).await.unwrap(), q, "a peek removes nothing");
    assert!(String::from_utf8_lossy(&q[0].json).contains("\"message\":\"c\""));
    assert_eq!(take(&s, "alice", "r1", 20).await, vec![2]);
    assert!(take(&s, "alice", "r1", 20).await.is_empty());
    assert_eq!(s.offline_len("alice").await.unwrap(), 1);
    assert_eq!(take(&s, "alice2", "r1", 20).await, vec![1, 2], "alice2's queue is its own (under the cap)");
    assert_eq!(s.queued("alice", "r2", 20).await.unwrap().len(), 1);
    // Entries past their TTL are not returned (ts 0, ttl 2^40).
    assert!(s.queued("alice", "r2", 1 << 40).await.unwrap().is_empty());
}

#[tokio::test]
async fn dequeue_removes_only_what_was_delivered() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", Bounds { offline_max: 10, ..bounds() }).await;
    s.add_member("r1", "alice").await.unwrap();
    s.add_member("r2", "alice").await.unwrap();
    for room in ["r1", "r2", "r1", "r2"] {
        say(&s, room, "bob", "x", 0).await;
    }
    let q = s.queued("alice", "r1", 0).await.unwrap();
    assert_eq!(q.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
    s.dequeue("alice", &[q[0].n]).await.unwrap();
    assert_eq!(s.queued("alice", "r1", 0).await.unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![2]);
    assert_eq!(s.queued("alice", "r2", 0).await.unwrap().len(), 2);
    assert_eq!(s.offline_len("alice").await.unwrap(), 3);
    s.dequeue("alice", &[]).await.unwrap();
    s.dequeue("nobody", &[1]).await.unwrap();
}

#[tokio::test]
async fn queue_bytes_are_capped_per_uid_oldest_first() {
    let r = TestRedis::start();
    let t = template("r1", "bob", "x", None);
    let one = t.fill(1, 0, 1).len();
    // Room for three messages of one id digit, not four.
    let b = Bounds { offline_max: 100, offline_max_bytes: 3 * one + 2, ..bounds() };
    let s = store_on(&r, "n1", b).await;
    s.add_member("r1", "u").await.unwrap();
    for _ in 1..=6 {
        say(&s, "r1", "bob", "x", 0).await;
    }
    assert_eq!(s.queued("u", "r1", 0).await.unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![4, 5, 6]);
    // One entry over the cap by itself is kept, and pushes the rest out.
    say(&s, "r1", "bob", &"y".repeat(4 * one), 0).await;
    assert_eq!(s.offline_len("u").await.unwrap(), 1);
    // Delivering it frees its bytes: three small ones fit again.
    assert_eq!(take(&s, "u", "r1", 0).await, vec![7]);
    for _ in 8..=9 {
        say(&s, "r1", "bob", "x", 0).await;
    }
    assert_eq!(s.offline_len("u").await.unwrap(), 2);
}

#[tokio::test]
async fn queues_and_dedupe_records_expire_in_redis() {
    let r = TestRedis::start();
    let b = Bounds { offline_ttl_ms: 1_000, dedupe_ttl_ms: 1_000, ..bounds() };
    let s = store_on(&r, "n1", b).await;
    s.add_member("r", "carol").await.unwrap();
    let t = template("r", "bob", "x", Some("c1"));
    let now = crate::now_ms();
    s.publish(&Publish { room: "r", uid: "bob", cid: Some("c1"), template: &t, now_ms: now }).await.unwrap();
    assert_eq!(s.offline_len("carol").await.unwrap(), 1);
    assert!(s.dedupe_get("bob", "c1", now).await.unwrap().is_some());
    s.expire(now + 1_000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(s.offline_len("carol").await.unwrap(), 0, "the queue key expired");
    let mut c = s.conn();
    let n: i64 = redis::cmd("EXISTS")
        .arg(s.keys.offline_meta("carol"))
        .arg(s.keys.dedupe("bob", "c1"))
        .arg(s.keys.dedupe_ages("bob"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0, "meta, dedupe record and ages expired too");
}

#[tokio::test]
async fn dedupe_records_are_capped_per_uid_oldest_first() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", Bounds { dedupe_max: 3, dedupe_ttl_ms: 60_000, ..bounds() }).await;
    let record = |cid: &'static str, now: u64| {
        let s = &s;
        async move {
            let t = template("r", "u", "x", Some(cid));
            s.publish(&Publish { room: "r", uid: "u", cid: Some(cid), template: &t, now_ms: now }).await.unwrap()
        }
    };
    for (i, c) in ["c1", "c2", "c3", "c4", "c5"].into_iter().enumerate() {
        record(c, 100 + i as u64).await;
    }
    let known = |cids: &'static [&'static str], now: u64| {
        let s = &s;
        async move {
            let mut v = Vec::new();
            for c in cids {
                v.push(s.dedupe_get("u", c, now).await.unwrap().is_some());
            }
            v
        }
    };
    assert_eq!(known(&["c1", "c2", "c3", "c4", "c5"], 110).await, [false, false, true, true, true]);
    // A cid in use is not published again: the first id comes back.
    assert_eq!(record("c4", 110).await, Outcome::AlreadyPublished { room: "r".into(), id: 4 });
    assert_eq!(s.last_id("r").await.unwrap(), 5);
    // Past the TTL (on the caller's clock) it is a new message, and the newest record.
    assert!(matches!(record("c3", 60_102).await, Outcome::Published(p) if p.id == 6));
    // c4 (ts 103) has expired by 60_103; c5, c3 and c6 fit the cap.
    record("c6", 60_103).await;
    assert_eq!(known(&["c3", "c4", "c5", "c6"], 60_103).await, [true, false, true, true]);
    assert_eq!(s.dedupe_get("u", "c3", 60_103).await.unwrap(), Some(("r".into(), 6)));
    assert_eq!(s.dedupe_get("u2", "c3", 60_103).await.unwrap(), None);
    // c5 (ts 104) expires at 60_104; then the cap pushes out the oldest record left, c3.
    record("c7", 60_104).await;
    assert_eq!(known(&["c3", "c5", "c6", "c7"], 60_104).await, [true, false, true, true]);
    record("c8", 60_105).await;
    assert_eq!(known(&["c3", "c6", "c7", "c8"], 60_105).await, [false, true, true, true]);
}

#[tokio::test]
async fn odd_uids_and_cids_get_their_own_keys_in_rust_and_in_lua() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", bounds()).await;
    let (u1, u2) = ("a}:{b", "a");
    s.add_member("r", u1).await.unwrap();
    s.add_member("r", "x%3A").await.unwrap();
    say(&s, "r", "bob", "hi", 0).await;
    assert_eq!(s.queued(u1, "r", 0).await.unwrap().len(), 1, "the script's key is the one Rust reads");
    assert_eq!(s.queued("x%3A", "r", 0).await.unwrap().len(), 1);
    assert_eq!(s.queued("x:", "r", 0).await.unwrap().len(), 0);
    let t = template("r", u1, "x", Some("c"));
    s.publish(&Publish { room: "r", uid: u1, cid: Some("c"), template: &t, now_ms: 0 }).await.unwrap();
    assert!(s.dedupe_get(u1, "c", 0).await.unwrap().is_some());
    assert!(s.dedupe_get(u2, "b}:{c", 0).await.unwrap().is_none());
}

#[test]
fn queue_entries_parse() {
    let e = super::queue::parse_entry(b"3:100:7:6:2:r1{\"a\":1}").unwrap();
    assert_eq!((e.n, e.ts, e.id, e.prev, e.room, e.json), (3, 100, 7, 6, "r1", &b"{\"a\":1}"[..]));
    assert!(super::queue::parse_entry(b"3:100:7:6:9:r1{}").is_none());
}

#[tokio::test]
async fn a_password_in_the_url_and_the_db_number_are_used() {
    let r = TestRedis::start_with(&["--appendonly", "no", "--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", r.port());
    let s = RedisStore::connect(RedisConfig::new(&url, "n1", bounds())).await.unwrap();
    s.add_member("r", "u").await.unwrap();
    let db0 = format!("redis://:s3cret@127.0.0.1:{}/0", r.port());
    let o = RedisStore::connect(RedisConfig::new(&db0, "n1", bounds())).await.unwrap();
    assert!(o.members("r").await.unwrap().is_empty(), "db 3 is not db 0");
    let wrong = format!("redis://:nope@127.0.0.1:{}/3", r.port());
    assert!(RedisStore::connect(RedisConfig::new(&wrong, "n1", bounds())).await.is_err());
    assert!(RedisStore::connect(RedisConfig::new(&r.url(), "n1", bounds())).await.is_err());
}

#[tokio::test]
async fn durability_is_read_from_the_server() {
    let plain = TestRedis::start();
    assert!(!store_on(&plain, "n1", bounds()).await.acks_are_durable().await.unwrap());
    let aof = TestRedis::start_aof();
    assert!(store_on(&aof, "n1", bounds()).await.acks_are_durable().await.unwrap());
}

/// Ids jump when the counter was raised without a message (a restore from sled sets it to the
/// room's reserved ceiling): the window stays the last N by count and `prev` chains to the
/// message stored before, not to a number that never held one.
#[tokio::test]
async fn history_is_kept_by_count_across_id_jumps() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", Bounds { history_max: 5, ..bounds() }).await;
    for _ in 0..3 {
        say(&s, "r", "u", "x", 0).await;
    }
    let mut c = s.conn();
    let () = redis::cmd("SET").arg(s.keys.seq("r")).arg(65_539).query_async(&mut c).await.unwrap();
    assert_eq!(say(&s, "r", "u", "x", 0).await, 65_540);
    let h = s.history_after("r", 0).await.unwrap();
    assert_eq!(h.iter().map(|m| (m.id, m.prev)).collect::<Vec<_>>(), vec![(1, 0), (2, 1), (3, 2), (65_540, 3)]);
    for _ in 0..300 {
        say(&s, "r", "u", "x", 0).await;
    }
    let ids: Vec<u64> = s.history_after("r", 0).await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(ids, (65_836..65_841).collect::<Vec<_>>(), "the last 5 by count");
    assert_eq!(
        s.history_after("r", 65_838).await.unwrap().iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![65_839, 65_840]
    );
}
