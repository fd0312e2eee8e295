//! The Redis broker against a real redis-server, nodes simulated without the hub: per node a
//! `Subscribers`, a `RedisStore` and a `RedisBroker`, with outboxes as connections. Messages
//! are published through the stores' publish script, as the hub will.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{decode_presence, encode_presence, frame_payload, RedisBroker, RedisBrokerConfig};
use crate::broker::{Broker, Conns, Kind, Publication, Subscribers};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::MessageOut;
use crate::store::redis_store::test_server::TestRedis;
use crate::store::redis_store::{Outcome, Publish, RedisConfig, RedisStore, Template};
use crate::store::Bounds;
use crate::wire;

/// Nothing in these tests waits longer for one expected frame.
const WAIT: Duration = Duration::from_secs(10);

fn bounds() -> Bounds {
    Bounds { history_max: 1_000, offline_ttl_ms: 1 << 40, ..Bounds::default() }
}

fn cfg(r: &TestRedis) -> RedisBrokerConfig {
    RedisBrokerConfig { timeout: Duration::from_secs(1), ..RedisBrokerConfig::new(&r.url()) }
}

struct Node {
    store: Arc<RedisStore>,
    subs: Arc<Subscribers>,
    broker: Arc<RedisBroker>,
}

async fn store(r: &TestRedis, id: &str) -> Arc<RedisStore> {
    Arc::new(RedisStore::connect(RedisConfig::new(&r.url(), id, bounds())).await.unwrap())
}

async fn node_with(r: &TestRedis, id: &str, cfg: RedisBrokerConfig, shutdown: &CancellationToken) -> Node {
    let store = store(r, id).await;
    let subs = Arc::new(Subscribers::new(Arc::new(Metrics::default())));
    let broker = RedisBroker::start(store.clone(), cfg, subs.clone(), shutdown.clone()).unwrap();
    Node { store, subs, broker }
}

async fn node(r: &TestRedis, id: &str, shutdown: &CancellationToken) -> Node {
    node_with(r, id, cfg(r), shutdown).await
}

impl Node {
    /// A connection of `uid` in `room` on this node.
    fn conn(&self, room: &str, id: u64, uid: &str) -> Arc<Outbox> {
        let out = Arc::new(Outbox::new(10_000, 1 << 26));
        assert!(self.subs.room(room).lock().add(id, uid.into(), out.clone()));
        out
    }

    async fn subscribe(&self, room: &str) {
        tokio::time::timeout(WAIT, self.broker.subscribe(room)).await.expect("subscribe hangs").unwrap();
    }
}

/// Publishes `text` in `room` through `s`'s publish script; the id.
async fn say(s: &RedisStore, room: &str, text: &str) -> u64 {
    let t = Template::message(&MessageOut {
        event: "message",
        id: 0,
        roomid: room,
        uid: "u",
        name: "U",
        message: text,
        num: 0,
        total: 0,
        ts: 1,
        cid: None,
    });
    match s.publish(&Publish { room, uid: "u", cid: None, template: &t, now_ms: 1 }).await.unwrap() {
        Outcome::Published(p) => p.id,
        other => panic!("{other:?}"),
    }
}

/// `say`, retried while Redis is coming back.
async fn say_until_ok(s: &RedisStore, room: &str, text: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    let t = Template::message(&MessageOut {
        event: "message",
        id: 0,
        roomid: room,
        uid: "u",
        name: "U",
        message: text,
        num: 0,
        total: 0,
        ts: 1,
        cid: None,
    });
    loop {
        match s.publish(&Publish { room, uid: "u", cid: None, template: &t, now_ms: 1 }).await {
            Ok(Outcome::Published(p)) => return p.id,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(Instant::now() < deadline, "publish still failing: {e:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Frames queued in `out` now, as JSON, waiting up to `within` for the first one.
async fn take(out: &Outbox, within: Duration) -> Vec<Value> {
    let mut frames = Vec::new();
    if tokio::time::timeout(within, out.take(&mut frames)).await.is_err() {
        return Vec::new();
    }
    out.written();
    frames.iter().map(|f| serde_json::from_slice(frame_payload(f)).unwrap()).collect()
}

/// Reads events until `n` of them arrived (failing after `WAIT`).
async fn events(out: &Outbox, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{} of {n} events after {WAIT:?}: {got:?}", got.len());
        got.extend(take(out, left).await);
    }
    got
}

fn ids(evs: &[Value]) -> Vec<u64> {
    evs.iter().map(|e| e["id"].as_u64().unwrap_or_else(|| panic!("not a message: {e}"))).collect()
}

/// Nothing more arrives within a while.
async fn quiet(out: &Outbox) {
    let extra = take(out, Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "unexpected: {extra:?}");
}

#[test]
fn presence_payloads_round_trip_and_differ_from_messages() {
    let v = encode_presence("n%3A1", Some(42), br#"{"event":"login","x":"a:b"}"#);
    let p = decode_presence(&v).unwrap();
    assert_eq!((p.node, p.except, p.json), ("n%3A1", Some(42), &br#"{"event":"login","x":"a:b"}"#[..]));
    let v = encode_presence("n1", None, b"{}");
    assert_eq!(decode_presence(&v).unwrap().except, None);
    assert!(decode_presence(b"12:11:{}").is_none());
    assert!(crate::store::redis_store::decode_payload(&v).is_none());
    for json in [&b"{}"[..], &[b'a'; 300][..], &vec![b'b'; 70_000][..]] {
        assert_eq!(frame_payload(&wire::text(json)), json);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_node_once_in_id_order() {
    let r = TestRedis::start();
    let stop = CancellationToken::new();
    let (a, b) = (node(&r, "a", &stop).await, node(&r, "b", &stop).await);
    a.subscribe("r").await;
    b.subscribe("r").await;
    let outs = [a.conn("r", 1, "x"), a.conn("r", 2, "y"), b.conn("r", 1, "z")];
    assert_eq!(say(&a.store, "r", "first").await, 1);
    for out in &outs {
        let evs = events(out, 1).await;
        assert_eq!((ids(&evs), evs[0]["message"].as_str()), (vec![1], Some("first")));
    }
    // Publishing the stored message through the broker sends nothing more.
    let frame = wire::text(b"{}");
    let p = Publication { frame, kind: Kind::Message { id: 1, prev: 0 }, except: None };
    assert!(a.broker.publish("r", &Conns::default(), &p).unwrap().is_empty());

    // 200 messages from both nodes at once.
    const EACH: usize = 100;
    let run = |s: Arc<RedisStore>, who: &'static str| {
        tokio::spawn(async move {
            for i in 0..EACH {
                say(&s, "r", &format!("{who} {i}")).await;
            }
        })
    };
    let (ta, tb) = (run(a.store.clone(), "a"), run(b.store.clone(), "b"));
    ta.await.unwrap();
    tb.await.unwrap();
    for out in &outs {
        assert_eq!(ids(&events(out, 2 * EACH).await), (2..=2 * EACH as u64 + 1).collect::<Vec<_>>());
        quiet(out).await;
    }
    stop.cancel();
}

#[tokio::test]
async fn presence_reaches_every_node_but_the_excepted_connection() {
    let r = TestRedis::start();
    let stop = CancellationToken::new();
    let (a, b) = (node(&r, "a", &stop).await, node(&r, "b", &stop).await);
    a.subscribe("r").await;
    b.subscribe("r").await;
    let (a1, a2, b1) = (a.conn("r", 1, "x"), a.conn("r", 2, "y"), b.conn("r", 1, "z"));
    let login = br#"{"event":"login","roomid":"r","uid":"x","name":"X","num":1,"total":1,"ts":1}"#;
    // `except: 1` is a1 on node a; b's connection 1 is another connection.
    let p = Publication { frame: wire::text(login), kind: Kind::Presence, except: Some(1) };
    assert!(a.broker.publish("r", &Conns::default(), &p).unwrap().is_empty());
    // A message after it: whoever got the login got it first (one ordered stream per room).
    let id = say(&b.store, "r", "after").await;
    for out in [&a2, &b1] {
        let evs = events(out, 2).await;
        assert_eq!(evs[0]["event"], "login", "{evs:?}");
        assert_eq!(evs[0]["uid"], "x");
        assert_eq!(evs[1]["id"], id);
    }
    let evs = events(&a1, 1).await;
    assert_eq!(ids(&evs), [id], "the excepted connection got no login: {evs:?}");
    stop.cancel();
}

#[tokio::test]
async fn a_subscribe_resolves_once_publications_are_delivered() {
    let r = TestRedis::start();
    let stop = CancellationToken::new();
    let (a, b) = (node(&r, "a", &stop).await, node(&r, "b", &stop).await);
    // Messages before the subscription are history, not live.
    say(&b.store, "r0", "before").await;
    for i in 0..20 {
        let room = format!("r{i}");
        let out = a.conn(&room, 1, "x");
        a.subscribe(&room).await;
        let id = say(&b.store, &room, "right after").await;
        assert_eq!(ids(&events(&out, 1).await), [id], "{room}");
    }
    stop.cancel();
}

/// PUBSUB NUMSUB of a room's channel: how many nodes are subscribed.
async fn numsub(s: &RedisStore, room: &str) -> u64 {
    let v: (String, u64) =
        ::redis::cmd("PUBSUB").arg("NUMSUB").arg(s.channel(room)).query_async(&mut s.conn()).await.unwrap();
    v.1
}

#[tokio::test]
async fn the_last_unsubscribe_stops_delivery_to_the_node() {
    let r = TestRedis::start();
    let stop = CancellationToken::new();
    let (a, b) = (node(&r, "a", &stop).await, node(&r, "b", &stop).await);
    a.subscribe("r").await;
    a.subscribe("r").await;
    b.subscribe("r").await;
    let (oa, ob) = (a.conn("r", 1, "x"), b.conn("r", 1, "y"));
    assert_eq!(numsub(&a.store, "r").await, 2, "one subscription per node");
    a.broker.unsubscribe("r");
    let id = say(&b.store, "r", "still here").await;
    assert_eq!(ids(&events(&oa, 1).await), [id], "2 -> 1 keeps the subscription");
    assert_eq!(numsub(&a.store, "r").await, 2);
    a.broker.unsubscribe("r");
    let deadline = Instant::now() + WAIT;
    while numsub(&a.store, "r").await != 1 {
        assert!(Instant::now() < deadline, "node a still subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id2 = say(&b.store, "r", "gone").await;
    assert_eq!(ids(&events(&ob, 2).await), [id, id2]);
    quiet(&oa).await;
    // An unbalanced unsubscribe does no harm, and the room can be subscribed again.
    a.broker.unsubscribe("r");
    a.subscribe("r").await;
    let id3 = say(&b.store, "r", "back").await;
    assert_eq!(ids(&events(&oa, 1).await), [id3], "only what came after the new subscription");
    stop.cancel();
}

#[tokio::test]
async fn a_subscribe_that_fails_or_is_dropped_gives_its_count_back() {
    let mut r = TestRedis::start();
    let stop = CancellationToken::new();
    let a =
        node_with(&r, "a", RedisBrokerConfig { subscribe_timeout: Duration::from_millis(300), ..cfg(&r) }, &stop).await;
    let port = r.port();
    r.stop();
    let e = a.broker.subscribe("r").await.unwrap_err();
    assert!(format!("{e:#}").contains("did not confirm"), "{e:#}");
    drop(a.broker.subscribe("r2"));
    r.restart();
    assert_eq!(r.port(), port);
    // Once back, neither room is held: nothing was subscribed for them.
    let deadline = Instant::now() + WAIT;
    while !a.broker.is_connected() {
        assert!(Instant::now() < deadline, "no reconnection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.subscribe("r3").await;
    assert_eq!(numsub(&a.store, "r").await + numsub(&a.store, "r2").await, 0);
    assert_eq!(numsub(&a.store, "r3").await, 1);
    stop.cancel();
}

/// Redis killed and restarted (AOF): the subscriber reconnects and resubscribes by itself, and
/// what was published while it was away comes from the history, in order, once, even in a room
/// where nothing more is said; live delivery then resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_delivery_resumes_and_the_gap_is_filled() {
    let mut r = TestRedis::start_aof();
    let stop = CancellationToken::new();
    // A long first backoff: the writes below land while node a is still away.
    let slow =
        RedisBrokerConfig { backoff_min: Duration::from_secs(2), backoff_max: Duration::from_secs(2), ..cfg(&r) };
    let (a, b) = (node_with(&r, "a", slow, &stop).await, node(&r, "b", &stop).await);
    for room in ["busy", "quiet"] {
        a.subscribe(room).await;
        b.subscribe(room).await;
    }
    let (busy_a, quiet_a, busy_b) = (a.conn("busy", 1, "x"), a.conn("quiet", 2, "x"), b.conn("busy", 1, "y"));
    assert_eq!(say(&a.store, "busy", "1").await, 1);
    assert_eq!(say(&a.store, "quiet", "1").await, 1);
    assert_eq!(ids(&events(&busy_a, 1).await), [1]);
    assert_eq!(ids(&events(&quiet_a, 1).await), [1]);
    assert_eq!(ids(&events(&busy_b, 1).await), [1]);

    r.stop();
    let deadline = Instant::now() + WAIT;
    while a.broker.is_connected() {
        assert!(Instant::now() < deadline, "the outage went unnoticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.restart();
    let w = store(&r, "writer").await;
    for text in ["2", "3"] {
        say_until_ok(&w, "busy", text).await;
        say_until_ok(&w, "quiet", text).await;
    }
    assert!(!a.broker.is_connected(), "written while node a was away");
    // Nothing more in "quiet": its gap is filled at the resubscription.
    assert_eq!(ids(&events(&quiet_a, 2).await), [2, 3]);
    let id = say(&w, "busy", "4").await;
    assert_eq!(id, 4, "ids survived the restart (AOF)");
    assert_eq!(ids(&events(&busy_a, 3).await), [2, 3, 4]);
    // Node b reconnected at once: it may have got 2 and 3 live or from history; once each.
    assert_eq!(ids(&events(&busy_b, 3).await), [2, 3, 4]);
    for out in [&busy_a, &quiet_a, &busy_b] {
        quiet(out).await;
    }
    stop.cancel();
}

/// Redis lost its data (restarted without persistence): ids start again at 1, and the broker
/// delivers them rather than dropping them as duplicates of the old ones.
#[tokio::test]
async fn after_redis_lost_its_data_new_ids_are_delivered() {
    let mut r = TestRedis::start();
    let stop = CancellationToken::new();
    let a = node(&r, "a", &stop).await;
    a.subscribe("r").await;
    let out = a.conn("r", 1, "x");
    for i in 1..=3 {
        assert_eq!(say(&a.store, "r", &i.to_string()).await, i);
    }
    assert_eq!(ids(&events(&out, 3).await), [1, 2, 3]);
    r.restart();
    let w = store(&r, "writer").await;
    let deadline = Instant::now() + WAIT;
    while !a.broker.is_connected() || numsub(&w, "r").await == 0 {
        assert!(Instant::now() < deadline, "no resubscription");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(say(&w, "r", "again").await, 1);
    assert_eq!(ids(&events(&out, 1).await), [1]);
    stop.cancel();
}

/// A member whose only connection here is closing gets the message queued by the receiving
/// node, once; a non-member and a member live on another node get nothing queued.
#[tokio::test]
async fn a_member_that_missed_a_message_gets_it_queued() {
    let r = TestRedis::start();
    let stop = CancellationToken::new();
    let (a, b) = (node(&r, "a", &stop).await, node(&r, "b", &stop).await);
    a.subscribe("r").await;
    b.subscribe("r").await;
    for uid in ["m", "both"] {
        a.store.add_member("r", uid).await.unwrap();
    }
    // Online as far as Redis knows, so the publish script queues nothing for them.
    a.store.set_online("r", "m", 1).await.unwrap();
    a.store.set_online("r", "both", 1).await.unwrap();
    b.store.set_online("r", "both", 1).await.unwrap();
    let (m, stranger, both_a, both_b) =
        (a.conn("r", 1, "m"), a.conn("r", 2, "stranger"), a.conn("r", 3, "both"), b.conn("r", 1, "both"));
    for out in [&m, &stranger, &both_a] {
        out.close(1000, "bye");
    }
    let id = say(&b.store, "r", "while closing").await;
    assert_eq!(ids(&events(&both_b, 1).await), [id]);
    let deadline = Instant::now() + WAIT;
    let q = loop {
        let q = a.store.queued("m", "r", 2).await.unwrap();
        if !q.is_empty() || Instant::now() > deadline {
            break q;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(q.iter().map(|e| e.id).collect::<Vec<_>>(), [id]);
    let json: Value = serde_json::from_slice(&q[0].json).unwrap();
    assert_eq!(json["message"], "while closing");
    // A second message, so that the first one's handling is surely over.
    let id2 = say(&b.store, "r", "again").await;
    assert_eq!(ids(&events(&both_b, 1).await), [id2]);
    let deadline = Instant::now() + WAIT;
    while a.store.queued("m", "r", 2).await.unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "second message not queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.store.queued("m", "r", 2).await.unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), [id, id2]);
    assert!(a.store.queued("stranger", "r", 2).await.unwrap().is_empty(), "not a member");
    // Closing here though live on node b: queued too (node b's connection may be closing as
    // well, and the two nodes must not each leave it to the other); clients drop the copy by id.
    let both: Vec<u64> = a.store.queued("both", "r", 2).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(both, [id, id2]);
    stop.cancel();
}

#[tokio::test]
async fn queueing_a_missed_message_twice_queues_it_once() {
    let r = TestRedis::start();
    let s = store(&r, "a").await;
    s.add_member("r", "m").await.unwrap();
    s.set_online("r", "m", 1).await.unwrap();
    say(&s, "r", "hi").await;
    let m = s.history_after("r", 0).await.unwrap().remove(0);
    let scripts = crate::store::redis_store::BrokerScripts::new();
    assert_eq!(s.enqueue_missed(&scripts, "r", &["m", "x"], &m, 2).await.unwrap(), ["m"]);
    assert!(s.enqueue_missed(&scripts, "r", &["m"], &m, 3).await.unwrap().is_empty());
    assert_eq!(s.queued("m", "r", 3).await.unwrap().len(), 1);
    assert_eq!(s.last_ids(&["r".into(), "none".into()]).await.unwrap(), [1, 0]);
}

/// Payloads written by hand on the room's channel (and in its history), as a reconnection or
/// a race with the subscription can leave them: a message whose `prev` was never seen brings
/// the history's missing ones first; what was delivered already is dropped.
#[tokio::test]
async fn a_gap_on_the_stream_is_filled_from_history_and_duplicates_are_dropped() {
    let r = TestRedis::start();
    let stop = CancellationToken::new();
    let a = node(&r, "a", &stop).await;
    a.subscribe("r").await;
    let out = a.conn("r", 1, "x");
    let entry = |id: u64| format!(r#"{id}:{}:{{"event":"message","id":{id}}}"#, id - 1);
    let mut c = a.store.conn();
    for id in 1..=3 {
        let () = ::redis::cmd("RPUSH").arg(a.store.keys.history("r")).arg(entry(id)).query_async(&mut c).await.unwrap();
    }
    let publish = |id: u64| ::redis::cmd("PUBLISH").arg(a.store.channel("r")).arg(entry(id)).clone();
    // 3 (prev 2) first: 1 and 2 come from the history before it.
    for id in [3, 1, 2, 3] {
        let _: u64 = publish(id).query_async(&mut c).await.unwrap();
    }
    let () = ::redis::cmd("RPUSH").arg(a.store.keys.history("r")).arg(entry(4)).query_async(&mut c).await.unwrap();
    let _: u64 = publish(4).query_async(&mut c).await.unwrap();
    assert_eq!(ids(&events(&out, 4).await), [1, 2, 3, 4]);
    quiet(&out).await;
    stop.cancel();
}

/// Shutdown stops both tasks: the pub/sub connection goes, and the broker refuses work.
#[tokio::test]
async fn shutdown_stops_the_broker() {
    let r = TestRedis::start();
    let stop = CancellationToken::new();
    let a = node(&r, "a", &stop).await;
    a.subscribe("r").await;
    assert_eq!(numsub(&a.store, "r").await, 1);
    stop.cancel();
    let deadline = Instant::now() + WAIT;
    while numsub(&a.store, "r").await != 0 {
        assert!(Instant::now() < deadline, "still subscribed after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = a.broker.subscribe("r2").await.unwrap_err();
    assert!(format!("{e:#}").contains("stopped"), "{e:#}");
    let p = Publication { frame: wire::text(b"{}"), kind: Kind::Presence, except: None };
    while a.broker.publish("r", &Conns::default(), &p).is_ok() {
        assert!(Instant::now() < deadline, "the presence publisher still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!a.broker.is_connected());
}

/// `presence_sent` orders a node's presence before its next message: 2,000 `login`s queued,
/// then awaited, then a message; every connection sees all of them before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_sent_orders_presence_before_the_next_message() {
    let r = TestRedis::start();
    let stop = CancellationToken::new();
    let (a, b) = (node(&r, "a", &stop).await, node(&r, "b", &stop).await);
    a.subscribe("r").await;
    b.subscribe("r").await;
    let (oa, ob) = (a.conn("r", 1, "x"), b.conn("r", 1, "y"));
    const N: usize = 2_000;
    for i in 0..N {
        let login = format!(r#"{{"event":"login","roomid":"r","uid":"u{i}","name":"U","num":1,"total":1,"ts":1}}"#);
        let p = Publication { frame: wire::text(login.as_bytes()), kind: Kind::Presence, except: None };
        a.broker.publish("r", &Conns::default(), &p).unwrap();
    }
    tokio::time::timeout(WAIT, a.broker.presence_sent()).await.expect("presence_sent hangs");
    let id = say(&a.store, "r", "after the logins").await;
    for out in [&oa, &ob] {
        let evs = events(out, N + 1).await;
        let uids: Vec<String> = evs[..N].iter().map(|e| e["uid"].as_str().unwrap().to_string()).collect();
        assert_eq!(uids, (0..N).map(|i| format!("u{i}")).collect::<Vec<_>>(), "in call order");
        assert_eq!(evs[N]["id"], id, "the message after every login");
    }
    // Nothing pending: immediate.
    tokio::time::timeout(Duration::from_millis(100), a.broker.presence_sent()).await.unwrap();
    stop.cancel();
}

/// Every log line of the test process, once captured (a process-wide subscriber: tracing's
/// per-thread `set_default` misses events whose callsite another test's thread registered
/// first, and no other test of the crate installs one).
fn captured() -> &'static Arc<std::sync::Mutex<Vec<u8>>> {
    static LINES: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = Lines(lines.clone());
        let sub = tracing_subscriber::fmt().with_writer(move || w.clone()).with_ansi(false).finish();
        tracing::subscriber::set_global_default(sub).expect("no other global subscriber in the tests");
        lines
    })
}

#[derive(Clone)]
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An outage with several failed reconnection attempts logs one warning and one "back", and
/// the presence events dropped meanwhile one warning (lines of this test's node only).
#[tokio::test]
async fn an_outage_is_logged_once_not_per_attempt() {
    let lines = captured();
    let mut r = TestRedis::start();
    let stop = CancellationToken::new();
    let a = node(&r, "logged-outage", &stop).await;
    a.subscribe("r").await;
    r.stop();
    for _ in 0..3 {
        let p = Publication { frame: wire::text(b"{}"), kind: Kind::Presence, except: None };
        a.broker.publish("r", &Conns::default(), &p).unwrap();
        tokio::time::timeout(WAIT, a.broker.presence_sent()).await.unwrap();
    }
    // 100, 200, 400 ms...: several attempts fail meanwhile.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!a.broker.is_connected());
    r.restart();
    let deadline = Instant::now() + WAIT;
    while !a.broker.is_connected() {
        assert!(Instant::now() < deadline, "no reconnection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("node=logged-outage")).collect();
    let count = |s: &str| ours.iter().filter(|l| l.contains(s)).count();
    assert_eq!(count("pub/sub connection lost"), 1, "{ours:#?}");
    assert_eq!(count("cannot connect"), 0, "{ours:#?}");
    assert_eq!(count("pub/sub connection back after"), 1, "{ours:#?}");
    assert_eq!(count("presence events dropped"), 1, "{ours:#?}");
    stop.cancel();
}

/// What the hub's join does with `delivered`: add the connection and read the position under
/// the room's `Conns` lock, replay the history up to it, take the rest live. Connections that
/// join while 300 messages stream in get each message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_under_the_conns_lock_splits_history_and_live_exactly() {
    let r = TestRedis::start();
    let stop = CancellationToken::new();
    let (a, b) = (node(&r, "a", &stop).await, node(&r, "b", &stop).await);
    let here = a.subs.room("r");
    assert_eq!(a.broker.delivered("r"), None, "not subscribed");
    a.subscribe("r").await;
    assert_eq!(a.broker.delivered("r"), Some(0));
    const N: u64 = 300;
    let s = b.store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            say(&s, "r", &i.to_string()).await;
        }
    });
    let mut joined = Vec::new();
    let mut conn = 0;
    while !writer.is_finished() {
        conn += 1;
        let out = Arc::new(Outbox::new(10_000, 1 << 26));
        let at = {
            let mut conns = here.lock();
            conns.add(conn, "j".into(), out.clone());
            a.broker.delivered("r").unwrap()
        };
        joined.push((out, at));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writer.await.unwrap();
    assert!(joined.len() > 10, "only {} joins", joined.len());
    let history: Vec<u64> = a.store.history_after("r", 0).await.unwrap().iter().map(|m| m.id).collect();
    for (out, at) in &joined {
        let mut got: Vec<u64> = history.iter().copied().filter(|id| id <= at).collect();
        got.extend(ids(&events(out, (N - at) as usize).await));
        assert_eq!(got, (1..=N).collect::<Vec<_>>(), "joined at {at}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (out, at) in &joined {
        assert!(out.has_room(10_000, 0), "more than {} frames for the join at {at}", N - at);
    }
    assert_eq!(a.broker.delivered("r"), Some(N));
    a.broker.unsubscribe("r");
    let deadline = Instant::now() + WAIT;
    while a.broker.delivered("r").is_some() {
        assert!(Instant::now() < deadline, "position kept after the last unsubscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
}

/// The liveness probe: an idle subscription on the right Redis is left alone; one on another
/// Redis than the store's (as after a failover) answers PING but gets no traffic, and is
/// found out and dropped.
#[tokio::test]
async fn the_liveness_probe_finds_a_subscription_on_the_wrong_redis() {
    let lines = captured();
    let (r1, r2) = (TestRedis::start(), TestRedis::start());
    let stop = CancellationToken::new();
    let quick = |r: &TestRedis| RedisBrokerConfig { ping_every: Duration::from_millis(100), ..cfg(r) };
    let ok = node_with(&r1, "probe-ok", quick(&r1), &stop).await;
    let wrong = node_with(&r1, "probe-wrong", quick(&r2), &stop).await;
    ok.subscribe("r").await;
    wrong.subscribe("r").await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
    let of = |node: &str| -> Vec<String> {
        text.lines().filter(|l| l.ends_with(&format!("node={node}"))).map(str::to_string).collect()
    };
    assert!(of("probe-ok").is_empty(), "{:#?}", of("probe-ok"));
    let lost = of("probe-wrong");
    assert!(lost.iter().any(|l| l.contains("connection lost") && l.contains("liveness probe")), "{lost:#?}");
    // The idle one still delivers.
    let out = ok.conn("r", 1, "x");
    let id = say(&ok.store, "r", "still there").await;
    assert_eq!(ids(&events(&out, 1).await), [id]);
    stop.cancel();
}
