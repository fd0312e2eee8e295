//! The publish script: the message it builds, the channel payload and its order, ids across
//! concurrent nodes, dedupe across nodes, and Redis going away and coming back.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::test_server::TestRedis;
use super::tests::{bounds, say, store_on, template};
use super::{decode_payload, Outcome, Publish, Published, RedisStore, Template};
use crate::protocol::{self, MessageOut};
use crate::store::Bounds;

#[test]
fn the_template_is_the_protocol_message_without_its_numbers() {
    for (text, cid) in [
        ("hi", None),
        (r#""id":0,"num":0,"total":0,"ts":1"#, Some("c-1")),
        ("ünï \u{1F600} \\ \" \n", Some(r#""num":0,"total":0,"#)),
    ] {
        let m = MessageOut {
            event: "message",
            id: 0,
            roomid: "r-1",
            uid: r#"u"id":0,"#,
            name: "N",
            message: text,
            num: 0,
            total: 0,
            ts: 1_764_000_000_000,
            cid,
        };
        let t = Template::message(&m);
        for (id, num, total) in [(1u64, 0usize, 0usize), (7, 3, 9), (u64::MAX, 100_000, 1)] {
            let want = protocol::message(&MessageOut { id, num, total, ..m });
            assert_eq!(t.fill(id, num, total), want, "{text}");
        }
    }
}

#[tokio::test]
async fn a_publish_stores_and_queues_the_message_with_global_counts() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let n2 = store_on(&r, "n2", bounds()).await;
    for uid in ["alice", "bob", "carol"] {
        n1.add_member("r", uid).await.unwrap();
    }
    n1.set_online("r", "alice", 1).await.unwrap();
    n2.set_online("r", "bob", 2).await.unwrap();
    n2.set_online("r", "alice", 1).await.unwrap();
    let t = template("r", "alice", "hello", Some("c1"));
    let out = n1.publish(&Publish { room: "r", uid: "alice", cid: Some("c1"), template: &t, now_ms: 5 }).await.unwrap();
    let want = t.fill(1, 2, 3);
    assert_eq!(out, Outcome::Published(Published { id: 1, prev: 0, json: want.clone().into() }));
    let h = n2.history_after("r", 0).await.unwrap();
    assert_eq!((h[0].id, h[0].prev, &h[0].json[..]), (1, 0, &want[..]));
    // Only carol has no connection on a live node.
    assert_eq!(n2.queued("carol", "r", 5).await.unwrap()[0].json, want);
    assert_eq!(n2.offline_len("alice").await.unwrap() + n2.offline_len("bob").await.unwrap(), 0);
    assert_eq!(n2.dedupe_get("alice", "c1", 5).await.unwrap(), Some(("r".into(), 1)));
    // The same cid through the other node: not published again, the first id comes back.
    let t2 = template("other", "alice", "hello again", Some("c1"));
    let again =
        n2.publish(&Publish { room: "other", uid: "alice", cid: Some("c1"), template: &t2, now_ms: 6 }).await.unwrap();
    assert_eq!(again, Outcome::AlreadyPublished { room: "r".into(), id: 1 });
    assert_eq!(n2.last_id("other").await.unwrap(), 0);
    assert_eq!(n2.queued("carol", "r", 6).await.unwrap().len(), 1);
}

#[test]
fn channel_payloads_decode() {
    let m = decode_payload(b"12:11:{\"a\":\"1:2\"}").unwrap();
    assert_eq!((m.id, m.prev, &m.json[..]), (12, 11, &b"{\"a\":\"1:2\"}"[..]));
    assert!(decode_payload(b"12{}").is_none());
    assert!(decode_payload(b"x:1:{}").is_none());
}

/// Two nodes publish into one room at once; a plain subscriber sees every message once, in id
/// order, chained by prev, and each node got strictly increasing ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_get_distinct_ids_and_the_channel_is_in_id_order() {
    let r = TestRedis::start();
    let b = Bounds { history_max: 1_000, ..bounds() };
    let n1 = std::sync::Arc::new(store_on(&r, "n1", b).await);
    let n2 = std::sync::Arc::new(store_on(&r, "n2", b).await);
    let client = redis::Client::open(r.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(n1.keys.channel("r")).await.unwrap();
    // Another room's channel is another channel.
    n1.add_member("r", "m").await.unwrap();
    say(&n1, "elsewhere", "u", "x", 0).await;
    const EACH: u64 = 150;
    let run = |s: std::sync::Arc<RedisStore>, uid: &'static str| {
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                ids.push(say(&s, "r", uid, &format!("{uid} {i}"), 0).await);
            }
            ids
        })
    };
    let (a, b) = (run(n1.clone(), "a"), run(n2.clone(), "b"));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    for ids in [&a, &b] {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
    let mut all: Vec<u64> = a.iter().chain(&b).copied().collect();
    all.sort();
    assert_eq!(all, (1..=2 * EACH).collect::<Vec<_>>(), "distinct, none skipped");
    let mut stream = sub.on_message();
    let mut got = Vec::new();
    while got.len() < (2 * EACH) as usize {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap();
        assert_eq!(msg.get_channel_name(), n1.keys.channel("r"));
        got.push(decode_payload(msg.get_payload_bytes()).unwrap());
    }
    assert_eq!(
        got.iter().map(|m| (m.id, m.prev)).collect::<Vec<_>>(),
        (1..=2 * EACH).map(|i| (i, i - 1)).collect::<Vec<_>>()
    );
    // The payload's JSON is the stored message.
    let h = n2.history_after("r", 0).await.unwrap();
    assert_eq!(h, got);
    assert_eq!(n1.queued("m", "r", 0).await.unwrap().len(), 2, "queue cap 2 of bounds()");
}

async fn publish_until_ok(s: &RedisStore, within: Duration) -> u64 {
    let t = template("r", "u", "after", None);
    let deadline = Instant::now() + within;
    loop {
        match s.publish(&Publish { room: "r", uid: "u", cid: None, template: &t, now_ms: 0 }).await {
            Ok(Outcome::Published(p)) => return p.id,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(Instant::now() < deadline, "still failing: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Redis killed: a publish fails (the caller answers `unavailable`) without hanging; restarted
/// (AOF, `appendfsync always`): what was published is there and publishing resumes by itself.
#[tokio::test]
async fn a_publish_fails_while_redis_is_down_and_resumes_after_a_restart() {
    let mut r = TestRedis::start_aof();
    let s = store_on(&r, "n1", bounds()).await;
    assert_eq!(say(&s, "r", "u", "before", 0).await, 1);
    r.stop();
    let t = template("r", "u", "lost", None);
    for _ in 0..3 {
        let started = Instant::now();
        let res = s.publish(&Publish { room: "r", uid: "u", cid: None, template: &t, now_ms: 0 }).await;
        assert!(res.as_ref().is_err_and(super::is_unavailable), "{res:?}");
        assert!(started.elapsed() < Duration::from_secs(6), "failed in {:?}", started.elapsed());
    }
    r.restart();
    assert_eq!(publish_until_ok(&s, Duration::from_secs(10)).await, 2, "ids continue from the AOF");
    let h = s.history_after("r", 0).await.unwrap();
    assert_eq!(h.iter().map(|m| (m.id, m.prev)).collect::<Vec<_>>(), vec![(1, 0), (2, 1)]);
}

/// Over `maxmemory` the script is refused at its first write: an `unavailable` error, and
/// nothing of the message anywhere.
#[tokio::test]
async fn a_publish_refused_for_memory_writes_nothing() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", bounds()).await;
    s.add_member("r", "away").await.unwrap();
    assert_eq!(say(&s, "r", "u", "fits", 0).await, 1);
    let mut c = s.conn();
    let () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).query_async(&mut c).await.unwrap();
    let t = template("r", "u", "too much", Some("c9"));
    let res = s.publish(&Publish { room: "r", uid: "u", cid: Some("c9"), template: &t, now_ms: 0 }).await;
    assert!(res.as_ref().is_err_and(super::is_unavailable), "{res:?}");
    let () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut c).await.unwrap();
    assert_eq!(s.last_id("r").await.unwrap(), 1);
    assert_eq!(s.history_after("r", 0).await.unwrap().len(), 1);
    assert_eq!(s.offline_len("away").await.unwrap(), 1);
    assert_eq!(s.dedupe_get("u", "c9", 0).await.unwrap(), None);
    // A script error is not `unavailable`.
    let e: anyhow::Error =
        redis::cmd("EVAL").arg("return redis.call('NOPE')").arg(0).query_async::<()>(&mut c).await.unwrap_err().into();
    assert!(!super::is_unavailable(&e), "{e:#}");
}

async fn publish_one(s: &RedisStore, room: &str, cid: Option<&str>, now: u64) -> Outcome {
    let t = template(room, "u", "x", cid);
    s.publish(&Publish { room, uid: "u", cid, template: &t, now_ms: now }).await.unwrap()
}

fn id_prev(o: &Outcome) -> (u64, u64) {
    match o {
        Outcome::Published(p) => (p.id, p.prev),
        other => panic!("{other:?}"),
    }
}

/// With `history_max` 0 no history is kept, and `prev` still chains to the message stored
/// last (in the answer and in the queue entries), also across an id jump.
#[tokio::test]
async fn prev_chains_without_a_history() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", Bounds { history_max: 0, offline_max: 10, ..bounds() }).await;
    s.add_member("r", "away").await.unwrap();
    for want in [(1, 0), (2, 1), (3, 2)] {
        assert_eq!(id_prev(&publish_one(&s, "r", None, 0).await), want);
    }
    assert!(s.history_after("r", 0).await.unwrap().is_empty());
    let mut c = s.conn();
    let () = redis::cmd("SET").arg(s.keys.seq("r")).arg(100).query_async(&mut c).await.unwrap();
    assert_eq!(id_prev(&publish_one(&s, "r", None, 0).await), (101, 3));
    let q = s.queued("away", "r", 0).await.unwrap();
    assert_eq!(q.iter().map(|e| (e.id, e.prev)).collect::<Vec<_>>(), vec![(1, 0), (2, 1), (3, 2), (101, 3)]);
    assert_eq!(id_prev(&publish_one(&s, "other", None, 0).await), (1, 0), "each room its own");
}

/// Cids up to 1,024 bytes (what a restore accepts): records of one millisecond still go
/// shortest cid first at the per-uid cap, and the record dropped is the one named.
#[tokio::test]
async fn long_cids_keep_the_dedupe_cap_order() {
    let r = TestRedis::start();
    let s = store_on(&r, "n1", Bounds { dedupe_max: 2, ..bounds() }).await;
    let (c999, c1024) = ("a".repeat(999), "b".repeat(1_024));
    publish_one(&s, "r", Some(&c1024), 100).await;
    publish_one(&s, "r", Some(&c999), 100).await;
    publish_one(&s, "r", Some("c"), 100).await;
    let known = |cid: &str| {
        let (s, cid) = (&s, cid.to_string());
        async move { s.dedupe_get("u", &cid, 100).await.unwrap().is_some() }
    };
    assert!(!known(&c999).await, "the shorter of the two older ones goes");
    assert!(known(&c1024).await && known("c").await);
    let n: usize = redis::cmd("ZCARD").arg(s.keys.dedupe_ages("u")).query_async(&mut s.conn()).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(publish_one(&s, "r", Some(&c1024), 101).await, Outcome::AlreadyPublished { room: "r".into(), id: 1 });
}
