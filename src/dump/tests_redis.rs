//! `natter restore --redis`: a sled store's dump loaded into Redis answers like the sled store
//! (through the Redis store), ids continue above the old reservation, and a Redis that already
//! holds keys under the prefix is refused.

use super::restore::restore_redis_at;
use super::tests::{dump_to_vec, open, populate, B, CIDS, NOW, ROOMS, UIDS};
use crate::store::redis_store::test_server::TestRedis;
use crate::store::redis_store::{Outcome, Publish, RedisConfig, RedisStore, Template};
use crate::store::sled_store::SledStore;
use crate::store::Store;

/// One read a client of the store can make (presence left out: live state, not dumped).
#[derive(Clone, Copy, Debug)]
enum Q {
    Members(&'static str),
    Last(&'static str),
    History(&'static str, u64),
    Queued(&'static str, &'static str),
    UserRooms(&'static str),
    OfflineLen(&'static str),
    Dedupe(&'static str, &'static str),
}

/// Every read of `dump/tests.rs`'s `observe`, for the keys `populate` wrote.
fn queries() -> Vec<Q> {
    let mut out = Vec::new();
    for r in ROOMS {
        out.extend([Q::Members(r), Q::Last(r)]);
        out.extend([0, 2, 70_004].map(|a| Q::History(r, a)));
        out.extend(UIDS.map(|u| Q::Queued(u, r)));
    }
    for u in UIDS {
        out.extend([Q::UserRooms(u), Q::OfflineLen(u)]);
        out.extend(CIDS.map(|c| Q::Dedupe(u, c)));
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn sled_answer(s: &SledStore, q: Q) -> String {
    match q {
        Q::Members(r) => format!("{:?}", sorted(s.members(r).unwrap())),
        Q::Last(r) => s.last_id(r).unwrap().to_string(),
        Q::History(r, a) => {
            format!(
                "{:?}",
                s.history_after(r, a).unwrap().into_iter().map(|m| (m.id, m.prev, m.json)).collect::<Vec<_>>()
            )
        }
        Q::Queued(u, r) => format!(
            "{:?}",
            s.queued(u, r, NOW).unwrap().into_iter().map(|q| (q.n, q.id, q.prev, q.json)).collect::<Vec<_>>()
        ),
        Q::UserRooms(u) => format!("{:?}", sorted(s.user_rooms(u).unwrap())),
        Q::OfflineLen(u) => s.offline_len(u).unwrap().to_string(),
        Q::Dedupe(u, c) => format!("{:?}", s.dedupe_get(u, c, NOW).unwrap()),
    }
}

async fn redis_answer(s: &RedisStore, q: Q) -> String {
    match q {
        Q::Members(r) => format!("{:?}", sorted(s.members(r).await.unwrap())),
        Q::Last(r) => s.last_id(r).await.unwrap().to_string(),
        Q::History(r, a) => format!(
            "{:?}",
            s.history_after(r, a).await.unwrap().into_iter().map(|m| (m.id, m.prev, m.json)).collect::<Vec<_>>()
        ),
        Q::Queued(u, r) => format!(
            "{:?}",
            s.queued(u, r, NOW).await.unwrap().into_iter().map(|q| (q.n, q.id, q.prev, q.json)).collect::<Vec<_>>()
        ),
        Q::UserRooms(u) => format!("{:?}", sorted(s.user_rooms(u).await.unwrap())),
        Q::OfflineLen(u) => s.offline_len(u).await.unwrap().to_string(),
        Q::Dedupe(u, c) => format!("{:?}", s.dedupe_get(u, c, NOW).await.unwrap()),
    }
}

fn restore_into(r: &TestRedis, prefix: &str, dump: &[u8]) -> anyhow::Result<u64> {
    restore_redis_at(&r.url(), prefix, B, &mut &dump[..], "--in test.jsonl", NOW)
}

#[test]
fn a_dump_restored_into_redis_answers_like_the_sled_store() {
    let dir = tempfile::tempdir().unwrap();
    let src = open(dir.path());
    populate(&src);
    let dump = dump_to_vec(&src);
    let r = TestRedis::start();
    let lines = restore_into(&r, "natter:", &dump).unwrap();
    assert_eq!(lines as usize, dump.iter().filter(|b| **b == b'\n').count() - 2);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = RedisStore::connect(RedisConfig::new(&r.url(), "n1", B)).await.unwrap();
        let mut differ = Vec::new();
        for q in queries() {
            let (want, got) = (sled_answer(&src, q), redis_answer(&store, q).await);
            if want != got {
                differ.push(format!("{q:?}: sled {want}, redis {got}"));
            }
        }
        assert!(differ.is_empty(), "answers differ:\n{}", differ.join("\n"));
        // The next id is above the sled reservation (no id is given twice), and the message
        // chains to the last one stored, so the skipped numbers are no gap.
        let t = Template::message(&crate::protocol::MessageOut {
            event: "message",
            id: 0,
            roomid: "r1",
            uid: "u1",
            name: "u1",
            message: "after the move",
            num: 0,
            total: 0,
            ts: NOW,
            cid: None,
        });
        let out =
            store.publish(&Publish { room: "r1", uid: "u1", cid: None, template: &t, now_ms: NOW }).await.unwrap();
        let Outcome::Published(p) = out else { panic!("{out:?}") };
        assert_eq!((p.id, p.prev), (135_001, 70_006));
        // A cid the sled store had seen is still deduplicated after the move.
        let cid = CIDS[(70_006 % 4) as usize];
        assert_eq!(store.dedupe_get("u1", cid, NOW).await.unwrap(), Some(("r1".to_string(), 70_006)));
    });
}

#[test]
fn a_redis_with_keys_under_the_prefix_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = open(dir.path());
    populate(&src);
    let dump = dump_to_vec(&src);
    let r = TestRedis::start();
    restore_into(&r, "natter:", &dump).unwrap();
    let err = restore_into(&r, "natter:", &dump).unwrap_err();
    assert!(format!("{err:#}").contains("already holds keys under the prefix"), "{err:#}");
    // Another prefix is another deployment: it may be filled.
    restore_into(&r, "other:", &dump).unwrap();
    // A dump cut short (its end line lost) names its problem.
    let last_line = dump[..dump.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let cut = &dump[..last_line];
    let err = restore_into(&r, "third:", cut).unwrap_err();
    assert!(format!("{err:#}").contains("before its end line"), "{err:#}");
}

/// sled -> Redis -> `dump --redis` -> a new sled store: every answer is the original's, and
/// the Redis dump is the same when taken twice.
#[test]
fn a_redis_deployment_dumps_back_into_sled_answering_the_same() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = open(a.path());
    populate(&src);
    let r = TestRedis::start();
    restore_into(&r, "natter:", &dump_to_vec(&src)).unwrap();
    let from_redis = |prefix: &str| {
        let mut out = Vec::new();
        super::dump_redis(&r.url(), prefix, &mut out, "test").unwrap();
        out
    };
    let dump = from_redis("natter:");
    assert_eq!(dump, from_redis("natter:"), "the same data, the same dump");
    let text = String::from_utf8(dump.clone()).unwrap();
    assert!(!text.contains("online") && !text.contains("meta") && !text.contains("ages"), "{text}");

    let dst = open(b.path());
    super::restore(&dst, b.path(), &mut &dump[..], "--in redis.jsonl").unwrap();
    let differ: Vec<String> = queries()
        .into_iter()
        .filter_map(|q| {
            let (want, got) = (sled_answer(&src, q), sled_answer(&dst, q));
            (want != got).then(|| format!("{q:?}: original {want}, after the round trip {got}"))
        })
        .collect();
    assert!(differ.is_empty(), "answers differ:\n{}", differ.join("\n"));
    // A prefix with nothing under it dumps an empty, well-formed dump.
    let empty = String::from_utf8(from_redis("nothing:")).unwrap();
    assert!(empty.ends_with("{\"natter_dump_end\":true,\"lines\":0}\n"), "{empty}");
}

/// A deployment that keeps no history (`history_max` 0): the last stored id still goes into
/// the dump (not only as a reservation), and the restored Redis chains the next message to it.
#[test]
fn the_last_stored_id_survives_a_dump_without_history() {
    let r = TestRedis::start();
    let b = crate::store::Bounds { history_max: 0, ..B };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let say = |s: &RedisStore| {
        let t = Template::message(&crate::protocol::MessageOut {
            event: "message",
            id: 0,
            roomid: "r1",
            uid: "u1",
            name: "u1",
            message: "x",
            num: 0,
            total: 0,
            ts: NOW,
            cid: None,
        });
        rt.block_on(async {
            match s.publish(&Publish { room: "r1", uid: "u1", cid: None, template: &t, now_ms: NOW }).await.unwrap() {
                Outcome::Published(p) => (p.id, p.prev),
                other => panic!("{other:?}"),
            }
        })
    };
    let store = rt.block_on(RedisStore::connect(RedisConfig::new(&r.url(), "n1", b))).unwrap();
    for _ in 0..3 {
        say(&store);
    }
    let mut dump = Vec::new();
    super::dump_redis(&r.url(), "natter:", &mut dump, "test").unwrap();
    let text = String::from_utf8(dump.clone()).unwrap();
    assert!(text.contains(r#"{"key":"room:r1:seq","type":"counter","value":3,"stored":0}"#), "{text}");
    restore_redis_at(&r.url(), "copy:", b, &mut &dump[..], "--in test.jsonl", NOW).unwrap();
    let mut cfg = RedisConfig::new(&r.url(), "n2", b);
    cfg.prefix = "copy:".into();
    let copy = rt.block_on(RedisStore::connect(cfg)).unwrap();
    assert_eq!(say(&copy), (4, 3));
    // And into sled: the counter is the last stored id, as a sled store without history has it.
    let dir = tempfile::tempdir().unwrap();
    let dst = SledStore::open(dir.path(), b).unwrap();
    super::restore(&dst, dir.path(), &mut &dump[..], "--in test.jsonl").unwrap();
    assert_eq!(dst.last_id("r1").unwrap(), 3);
}

/// A room id no natter accepts (in a key, a set or a queue entry's `roomid`) is refused with
/// the line that holds it, by the sled and the Redis restore alike.
#[test]
fn a_bad_room_id_is_refused_naming_its_line() {
    let r = TestRedis::start();
    let head = format!("{{\"natter_dump\":1,\"natter\":\"{}\"}}", env!("CARGO_PKG_VERSION"));
    let good = r#"{"key":"room:r1:members","type":"set","members":["u1"]}"#;
    let long = "r".repeat(65);
    let bad = [
        r#"{"key":"room:no room:members","type":"set","members":["u1"]}"#.to_string(),
        r#"{"key":"user:u1:rooms","type":"set","members":["r1","a{b}"]}"#.to_string(),
        format!(r#"{{"key":"room:{long}:seq","type":"counter","value":1,"stored":1}}"#),
        r#"{"key":"offline:u1","type":"list","n":0,"ts":1,"id":1,"prev":0,"roomid":"x:y","msg":{}}"#.to_string(),
        r#"{"key":"dedupe:u1:c1","type":"string","uid":"u1","cid":"c1","ts":1,"value":1,"roomid":""}"#.to_string(),
    ];
    for (i, line) in bad.iter().enumerate() {
        let dump = format!("{head}\n{good}\n{line}\n{{\"natter_dump_end\":true,\"lines\":2}}\n");
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let sled =
            format!("{:#}", super::restore(&s, dir.path(), &mut dump.as_bytes(), "--in test.jsonl").unwrap_err());
        let prefix = format!("p{i}:");
        let redis = format!("{:#}", restore_into(&r, &prefix, dump.as_bytes()).unwrap_err());
        for e in [sled, redis] {
            assert!(e.contains("--in test.jsonl: line 3:") && e.contains("not a valid room id"), "{line}: {e}");
        }
    }
}
