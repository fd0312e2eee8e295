//! Presence across nodes: per-node connections, live nodes only, a dead node swept once
//! however many nodes sweep, heartbeats, a clean shutdown.

use std::time::Duration;

use super::test_server::TestRedis;
use super::tests::{bounds, say, store_on};
use super::{RedisConfig, RedisStore};

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

async fn short_lived(r: &TestRedis, node: &str) -> RedisStore {
    let mut cfg = RedisConfig::new(&r.url(), node, bounds());
    // Long enough for the setup steps of a test on a loaded CI machine.
    cfg.node_ttl = Duration::from_millis(1_000);
    RedisStore::connect(cfg).await.unwrap()
}

#[tokio::test]
async fn presence_adds_up_over_nodes() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let n2 = store_on(&r, "n:2", bounds()).await;
    n1.set_online("r", "alice", 2).await.unwrap();
    n2.set_online("r", "alice", 1).await.unwrap();
    n2.set_online("r", "bob", 1).await.unwrap();
    n2.set_online("r2", "bob", 1).await.unwrap();
    let want = vec![("alice".to_string(), 3), ("bob".to_string(), 1)];
    assert_eq!(n1.online("r").await.unwrap(), want);
    assert_eq!(n2.online("r").await.unwrap(), want);
    n2.set_online("r", "bob", 0).await.unwrap();
    n2.set_online("r", "bob", 0).await.unwrap();
    n1.set_online("r", "alice", 1).await.unwrap();
    assert_eq!(n1.online("r").await.unwrap(), vec![("alice".to_string(), 2)]);
    assert_eq!(n1.online("r2").await.unwrap(), vec![("bob".to_string(), 1)]);
    assert!(n1.online("empty").await.unwrap().is_empty());
}

/// n2 stops beating: within its TTL its users are offline everywhere (num, queues), and of
/// two nodes sweeping at once exactly one reports each (room, uid) that went offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_go_offline_and_are_reported_once() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let n3 = store_on(&r, "n3", bounds()).await;
    let n2 = short_lived(&r, "n2").await;
    for uid in ["alice", "bob", "dave"] {
        n1.add_member("r", uid).await.unwrap();
    }
    n1.set_online("r", "alice", 1).await.unwrap();
    n2.set_online("r", "alice", 1).await.unwrap();
    n2.set_online("r", "bob", 1).await.unwrap();
    n2.set_online("r2", "carol", 3).await.unwrap();
    assert_eq!(n1.online("r").await.unwrap().len(), 2);
    assert!(n1.sweep_dead_nodes().await.unwrap().is_empty(), "nobody is dead yet");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // Before any sweep: n2's users no longer count, and get the message queued.
    assert_eq!(n1.online("r").await.unwrap(), vec![("alice".to_string(), 1)]);
    say(&n1, "r", "alice", "hi", 0).await;
    let json = String::from_utf8(n1.history_after("r", 0).await.unwrap()[0].json.to_vec()).unwrap();
    assert!(json.contains("\"num\":1,\"total\":3,"), "{json}");
    assert_eq!(n1.offline_len("bob").await.unwrap(), 1);
    assert_eq!(n1.offline_len("alice").await.unwrap(), 0);
    let (a, b) = tokio::join!(n1.sweep_dead_nodes(), n3.sweep_dead_nodes());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.is_empty() || b.is_empty(), "one sweep did it all: {a:?} {b:?}");
    let mut all = [a, b].concat();
    all.sort();
    assert_eq!(all, pairs(&[("r", "bob"), ("r2", "carol")]), "alice is still on n1");
    assert!(n1.sweep_dead_nodes().await.unwrap().is_empty());
    // n2's leftovers are gone from Redis, not just ignored.
    let mut c = n1.conn();
    let fields: Vec<String> = redis::cmd("HKEYS").arg(n1.keys.online("r")).query_async(&mut c).await.unwrap();
    assert_eq!(fields, vec!["n1:alice"]);
    let n: i64 = redis::cmd("EXISTS").arg(n1.keys.node_rooms("n2")).query_async(&mut c).await.unwrap();
    assert_eq!(n, 0);
    // n2 comes back: it learns that it was given up (and must announce its presence again).
    assert!(!n2.heartbeat().await.unwrap());
    assert!(n2.heartbeat().await.unwrap());
}

#[tokio::test]
async fn heartbeats_keep_a_node_live() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let n2 = short_lived(&r, "n2").await;
    n2.set_online("r", "bob", 1).await.unwrap();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(n2.heartbeat().await.unwrap());
    }
    assert!(n1.sweep_dead_nodes().await.unwrap().is_empty());
    assert_eq!(n1.online("r").await.unwrap(), vec![("bob".to_string(), 1)]);
}

#[tokio::test]
async fn a_clean_shutdown_clears_the_nodes_presence_at_once() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let n2 = store_on(&r, "n2", bounds()).await;
    n1.set_online("r", "alice", 1).await.unwrap();
    n1.set_online("r", "bob", 1).await.unwrap();
    n2.set_online("r", "bob", 1).await.unwrap();
    n1.set_online("r3", "alice", 1).await.unwrap();
    n1.set_online("r3", "alice", 0).await.unwrap();
    assert_eq!(n1.clear_node().await.unwrap(), pairs(&[("r", "alice")]));
    assert_eq!(n2.online("r").await.unwrap(), vec![("bob".to_string(), 1)]);
    assert!(n2.sweep_dead_nodes().await.unwrap().is_empty());
    assert!(!n1.heartbeat().await.unwrap(), "it was no longer live");
}

#[tokio::test]
async fn a_node_id_is_taken_while_live_and_a_dead_ones_leftovers_are_cleared() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let old = short_lived(&r, "n2").await;
    old.set_online("r", "bob", 1).await.unwrap();
    let again = RedisStore::connect(RedisConfig::new(&r.url(), "n2", bounds())).await;
    assert!(again.is_err(), "a live node's id is refused");
    let n3 = short_lived(&r, "n3").await;
    n3.set_online("r3", "dave", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // A new process with the dead one's id, before any sweep: bob does not come back online,
    // and n3, dead too, is left to a sweep that reports it.
    let new = store_on(&r, "n2", bounds()).await;
    assert!(n1.online("r").await.unwrap().is_empty());
    assert_eq!(new.sweep_dead_nodes().await.unwrap(), pairs(&[("r3", "dave")]));
    new.set_online("r", "carol", 1).await.unwrap();
    assert_eq!(n1.online("r").await.unwrap(), vec![("carol".to_string(), 1)]);
}

/// The per-uid connection limit holds across nodes, a release frees a place, and a dead
/// node's connections stop counting at its deadline.
#[tokio::test]
async fn the_per_uid_connection_limit_spans_nodes_and_forgets_dead_ones() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let n2 = short_lived(&r, "n2").await;
    assert!(n1.claim_conn("alice", 3).await.unwrap());
    assert!(n2.heartbeat().await.unwrap(), "a second of life from here");
    assert!(n2.claim_conn("alice", 3).await.unwrap());
    assert!(n2.claim_conn("alice", 3).await.unwrap());
    assert!(!n1.claim_conn("alice", 3).await.unwrap(), "3 on two nodes: the 4th is refused");
    assert!(n1.claim_conn("bob", 3).await.unwrap(), "another uid has its own count");
    n1.release_conn("alice").await.unwrap();
    assert!(n1.claim_conn("alice", 3).await.unwrap(), "a released place can be taken again");
    assert!(!n1.claim_conn("alice", 3).await.unwrap());
    // n2 stops beating: its two connections no longer count after its deadline.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(n1.claim_conn("alice", 3).await.unwrap());
    assert!(n1.claim_conn("alice", 3).await.unwrap());
    assert!(!n1.claim_conn("alice", 3).await.unwrap(), "n1's own three count");
    let fields: Vec<String> =
        redis::cmd("HKEYS").arg(n1.keys.user_conns("alice")).query_async(&mut n1.conn()).await.unwrap();
    assert_eq!(fields, vec!["n1".to_string()], "the dead node's count was dropped");
}

async fn conns_fields(s: &RedisStore, uid: &str) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> =
        redis::cmd("HGETALL").arg(s.keys.user_conns(uid)).query_async(&mut s.conn()).await.unwrap();
    v.sort();
    v
}

async fn exists(s: &RedisStore, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS").arg(key).query_async(&mut s.conn()).await.unwrap();
    n == 1
}

/// A new process with a dead node's id, before any sweep: what its predecessor's leftovers
/// took offline is handed to it once (for the `logout`s nobody else will send), and no sweep
/// reports it again.
#[tokio::test]
async fn a_reused_node_id_hands_over_what_its_leftovers_took_offline() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let old = short_lived(&r, "n2").await;
    old.set_online("r", "bob", 1).await.unwrap();
    old.set_online("r2", "bob", 2).await.unwrap();
    old.set_online("r", "alice", 1).await.unwrap();
    n1.set_online("r", "alice", 1).await.unwrap();
    assert!(n1.take_leftover_offline().is_empty(), "n1 had no predecessor");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let new = store_on(&r, "n2", bounds()).await;
    assert_eq!(new.take_leftover_offline(), pairs(&[("r", "bob"), ("r2", "bob")]), "alice is on n1");
    assert!(new.take_leftover_offline().is_empty(), "handed over once");
    assert!(n1.sweep_dead_nodes().await.unwrap().is_empty());
    assert_eq!(n1.online("r").await.unwrap(), vec![("alice".to_string(), 1)]);
    assert!(new.heartbeat().await.unwrap(), "announced live by connect");
}

/// A dead node's connection counts go with its presence: at a sweep, at a clean shutdown, and
/// when a new process takes its id (which would otherwise count them again as live).
#[tokio::test]
async fn a_dead_nodes_connection_counts_are_swept() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let old = short_lived(&r, "n2").await;
    let n3 = short_lived(&r, "n3").await;
    for _ in 0..2 {
        assert!(old.claim_conn("alice", 3).await.unwrap());
    }
    assert!(n3.claim_conn("carol", 3).await.unwrap());
    assert!(n1.claim_conn("carol", 3).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let new = store_on(&r, "n2", bounds()).await;
    assert!(conns_fields(&n1, "alice").await.is_empty(), "n2's old counts went at connect");
    assert!(!exists(&n1, &n1.keys.node_uids("n2")).await);
    assert!(n1.claim_conn("alice", 1).await.unwrap(), "nothing of n2's old counts is live again");
    assert!(new.claim_conn("alice", 2).await.unwrap());
    n1.sweep_dead_nodes().await.unwrap();
    assert_eq!(conns_fields(&n1, "carol").await, vec![("n1".to_string(), 1)], "n3's count was swept");
    assert!(!exists(&n1, &n1.keys.node_uids("n3")).await);
    new.clear_node().await.unwrap();
    assert_eq!(conns_fields(&n1, "alice").await, vec![("n1".to_string(), 1)], "a clean shutdown takes them too");
    // A release keeps the node's index in step: nothing left, no key.
    n1.release_conn("alice").await.unwrap();
    n1.release_conn("carol").await.unwrap();
    assert!(!exists(&n1, &n1.keys.node_uids("n1")).await);
}

/// A node that beat too late (given up, its presence swept and its counts dropped by another
/// node's claim) writes its presence and counts back in one call.
#[tokio::test]
async fn a_node_given_up_reannounces_its_presence_and_counts() {
    let r = TestRedis::start();
    let n1 = store_on(&r, "n1", bounds()).await;
    let n2 = short_lived(&r, "n2").await;
    n1.add_member("r", "bob").await.unwrap();
    n2.set_online("r", "bob", 2).await.unwrap();
    n2.set_online("r", "carol", 1).await.unwrap();
    for _ in 0..2 {
        assert!(n2.claim_conn("bob", 5).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(n1.claim_conn("bob", 5).await.unwrap(), "drops n2's count of bob");
    assert_eq!(n1.sweep_dead_nodes().await.unwrap(), pairs(&[("r", "bob"), ("r", "carol")]));
    assert!(!n2.heartbeat().await.unwrap());
    let gone = n2.reannounce(&[("r", "bob", 2), ("r2", "dave", 1)], &[("bob", 2), ("dave", 1)]).await.unwrap();
    assert!(gone.is_empty(), "the sweep reported them already: {gone:?}");
    assert_eq!(n1.online("r").await.unwrap(), vec![("bob".to_string(), 2)]);
    assert_eq!(n1.online("r2").await.unwrap(), vec![("dave".to_string(), 1)]);
    assert_eq!(conns_fields(&n1, "bob").await, vec![("n1".to_string(), 1), ("n2".to_string(), 2)]);
    assert!(n1.claim_conn("bob", 4).await.unwrap());
    assert!(!n1.claim_conn("bob", 4).await.unwrap(), "n2's two count again");
    // Not swept yet: what the node no longer lists goes, and is reported once.
    let gone = n2.reannounce(&[("r", "bob", 1)], &[("bob", 1)]).await.unwrap();
    assert_eq!(gone, pairs(&[("r2", "dave")]));
    assert_eq!(n1.online("r").await.unwrap(), vec![("bob".to_string(), 1)]);
    assert_eq!(conns_fields(&n1, "dave").await, vec![]);
    assert_eq!(conns_fields(&n1, "bob").await, vec![("n1".to_string(), 2), ("n2".to_string(), 1)]);
    // The indexes a sweep reads match: a clean shutdown removes exactly this.
    assert_eq!(n2.clear_node().await.unwrap(), pairs(&[("r", "bob")]));
    assert_eq!(conns_fields(&n1, "bob").await, vec![("n1".to_string(), 2)]);
    assert!(n2.heartbeat().await.is_ok_and(|live| !live));
}
