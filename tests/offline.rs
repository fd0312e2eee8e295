//! Offline queues, `since` recovery, durability of acked messages across SIGKILL, restarts.
mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(800);

/// u1 ("Alice") and u2 ("Bob") in room r1; u2 then disconnects (u1 sees the logout).
async fn alice_and_departed_bob(s: &Server) -> Client {
    let (mut a, mut b) = two_in_room_as(s, "r1", [Some("Alice"), Some("Bob")]).await;
    b.close().await;
    assert_logout(&a.recv_event("logout").await, "r1", "u2", "Bob", 1, 2);
    a
}

async fn say_n(a: &mut Client, room: &str, texts: &[&str]) -> Vec<Value> {
    let mut out = vec![];
    for t in texts {
        a.say(room, t).await;
        out.push(a.recv_event("message").await);
    }
    out
}

#[tokio::test]
async fn offline_member_gets_queued_messages_exactly_once() {
    let s = Server::start(ServerOpts::new()).await;
    let mut a = alice_and_departed_bob(&s).await;
    let sent = say_n(&mut a, "r1", &["one", "two", "three"]).await;
    assert_eq!(sent.iter().map(|m| m["id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);

    let mut b = Client::connect_as(&s, "u2", Some("Bob")).await;
    let l = b.login("r1").await;
    assert_login(&l, "r1", "u2", "Bob", 2, 2);
    for (i, want) in sent.iter().enumerate() {
        let m = b.recv_json().await;
        assert_message(&m, &["offline"]);
        assert_eq!(m["id"], (i + 1) as u64);
        assert_eq!(m["message"], want["message"]);
        assert_eq!(m["uid"], "u1");
        assert_eq!(m["name"], "Alice");
        // as stored at publish time: Bob was offline then
        assert_eq!((m["num"].as_u64(), m["total"].as_u64()), (Some(1), Some(2)));
        assert_eq!(m["ts"], want["ts"]);
    }
    b.expect_silence(QUIET).await;
    // the live member never sees offline copies
    assert_login(&a.recv_json().await, "r1", "u2", "Bob", 2, 2);
    a.expect_silence(Duration::from_millis(200)).await;

    // the queue was emptied: a second reconnect gets nothing
    b.close().await;
    a.recv_event("logout").await;
    let mut b = Client::connect_as(&s, "u2", Some("Bob")).await;
    b.login("r1").await;
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn offline_queue_survives_a_restart_and_ids_continue() {
    let mut s = Server::start(ServerOpts::new()).await;
    let mut a = alice_and_departed_bob(&s).await;
    say_n(&mut a, "r1", &["before restart 1", "before restart 2"]).await;
    s.stop().await;
    assert_eq!(a.recv_close(RECV_TIMEOUT).await, Some(1001));
    s.restart().await;

    let mut b = Client::connect_as(&s, "u2", Some("Bob")).await;
    // u1 is not connected after the restart (presence reset), membership kept
    assert_login(&b.login("r1").await, "r1", "u2", "Bob", 1, 2);
    for (i, text) in ["before restart 1", "before restart 2"].iter().enumerate() {
        let m = b.recv_json().await;
        assert_message(&m, &["offline"]);
        assert_eq!(m["id"], (i + 1) as u64);
        assert_eq!(m["message"], *text);
    }
    b.expect_silence(QUIET).await;

    let mut a = Client::connect_as(&s, "u1", Some("Alice")).await;
    assert_login(&a.login("r1").await, "r1", "u1", "Alice", 2, 2);
    a.say("r1", "after restart").await;
    assert_eq!(a.recv_event("message").await["id"], 3, "ids must continue after a restart");
    assert_eq!(b.recv_event("message").await["id"], 3);
}

#[tokio::test]
async fn acked_message_survives_sigkill() {
    let mut s = Server::start(ServerOpts::new()).await;
    let mut a = alice_and_departed_bob(&s).await;
    a.say_cid("r1", "durable", "c-dur-1").await;
    let ack = a.recv_event("ack").await;
    assert_eq!(ack["id"], 1);
    s.kill(); // SIGKILL right after the ack
    s.restart().await;

    let mut b = Client::connect_as(&s, "u2", Some("Bob")).await;
    b.login("r1").await;
    let m = b.recv_json().await;
    assert_message(&m, &["offline", "cid"]);
    assert_eq!(m["id"], 1);
    assert_eq!(m["message"], "durable");
    assert_eq!(m["cid"], "c-dur-1");
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn leave_ends_membership_so_nothing_is_queued() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;
    b.send_json(&json!({"event":"leave","roomid":"r1"})).await;
    assert_logout(&a.recv_event("logout").await, "r1", "u2", "u2", 1, 1);
    b.close().await;
    let m = say_n(&mut a, "r1", &["nobody else"]).await.remove(0);
    assert_eq!((m["num"].as_u64(), m["total"].as_u64()), (Some(1), Some(1)));
    let mut b = Client::connect_as(&s, "u2", None).await;
    assert_login(&b.login("r1").await, "r1", "u2", "u2", 2, 2);
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn since_replays_without_gaps_or_duplicates() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;
    say_n(&mut a, "r1", &["m1", "m2", "m3"]).await;
    let mut last = 0;
    for _ in 0..3 {
        last = b.recv_event("message").await["id"].as_u64().unwrap();
    }
    assert_eq!(last, 3);
    b.close().await;
    a.recv_event("logout").await;
    say_n(&mut a, "r1", &["m4", "m5", "m6"]).await; // queued for u2 too

    let mut b = Client::connect_as(&s, "u2", None).await;
    b.login_since("r1", last).await;
    let mut ids = vec![];
    for want in ["m4", "m5", "m6"] {
        let m = b.recv_json().await;
        assert_message(&m, &["replay"]);
        assert_eq!(m["message"], want);
        ids.push(m["id"].as_u64().unwrap());
    }
    assert_eq!(ids, vec![4, 5, 6]);
    // the queued copies are covered by the replay: not sent again
    b.expect_silence(QUIET).await;
    // then live traffic
    a.recv_event("login").await;
    a.say("r1", "m7").await;
    let m = b.recv_json().await;
    assert_message(&m, &[]);
    assert_eq!(m["id"], 7);

    // later reconnect: queue is empty, since at the last id replays nothing
    b.close().await;
    let mut b = Client::connect_as(&s, "u2", None).await;
    b.login_since("r1", 7).await;
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn replay_covers_only_its_own_room_queue() {
    // A replay of r1 covers r1's queued copies only: r2's queued message comes at r2's login.
    let s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    a.login("r2").await;
    let mut b = Client::connect_as(&s, "u2", None).await;
    b.login("r1").await;
    b.login("r2").await;
    b.close().await;
    a.recv_event("logout").await;
    a.recv_event("logout").await;
    say_n(&mut a, "r1", &["r1-a", "r1-b"]).await;
    say_n(&mut a, "r2", &["r2-a"]).await;

    let mut b = Client::connect_as(&s, "u2", None).await;
    b.login_since("r1", 0).await;
    for (id, text) in [(1u64, "r1-a"), (2, "r1-b")] {
        let m = b.recv_json().await;
        assert_message(&m, &["replay"]);
        assert_eq!((m["id"].as_u64(), m["message"].as_str()), (Some(id), Some(text)));
    }
    // r1's queued copies were covered by the replay; r2's are not delivered before r2's login
    b.expect_silence(QUIET).await;
    b.login("r2").await;
    let m = b.recv_json().await;
    assert_message(&m, &["offline"]);
    assert_eq!((m["roomid"].as_str(), m["message"].as_str()), (Some("r2"), Some("r2-a")));
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn since_edge_cases() {
    let s = Server::start(ServerOpts::new().arg("--history-max", 5)).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    let texts: Vec<String> = (1..=8).map(|i| format!("h{i}")).collect();
    say_n(&mut a, "r1", &texts.iter().map(|s| s.as_str()).collect::<Vec<_>>()).await;

    // older than the kept history: what is kept (ids 4..=8), in order
    let mut c = Client::connect_as(&s, "u3", None).await;
    let l = c.login_since("r1", 0).await;
    assert_eq!(l["recovered"], false, "1..=3 are no longer kept: {l}");
    let mut ids = vec![];
    for _ in 0..5 {
        let m = c.recv_json().await;
        assert_message(&m, &["replay"]);
        ids.push(m["id"].as_u64().unwrap());
    }
    assert_eq!(ids, vec![4, 5, 6, 7, 8]);
    c.expect_silence(QUIET).await;

    // a second login with since in a room already joined replays as a first login would; it
    // is not broadcast, but the joiner gets its own login event with the verdict
    c.send_json(&json!({"event":"login","roomid":"r1","since":6})).await;
    let l = c.recv_json().await;
    assert_eq!((l["event"].as_str(), l["recovered"].as_bool()), (Some("login"), Some(true)), "{l}");
    let m1 = c.recv_json().await;
    let m2 = c.recv_json().await;
    assert_eq!((m1["id"].as_u64(), m1["replay"].as_bool()), (Some(7), Some(true)), "{m1}");
    assert_eq!((m2["id"].as_u64(), m2["replay"].as_bool()), (Some(8), Some(true)), "{m2}");
    c.expect_silence(QUIET).await;

    // at or past the last id: nothing
    for since in [8u64, 100] {
        c.send_json(&json!({"event":"login","roomid":"r1","since":since})).await;
        assert_eq!(c.recv_event("login").await["recovered"], true);
        c.expect_silence(QUIET).await;
    }
    // a saw u3's first login only: the repeated ones are not broadcast
    assert_eq!(a.recv_event("login").await["uid"], "u3");
    a.expect_no_event("login", Duration::from_millis(100)).await;
    // not a non-negative integer
    for bad in [json!(-1), json!("3"), json!(1.5), json!([1])] {
        c.send_json(&json!({"event":"login","roomid":"r1","since":bad})).await;
        c.expect_error("bad_field").await;
    }
}

#[tokio::test]
async fn offline_queue_is_capped_oldest_dropped() {
    let s = Server::start(ServerOpts::new().arg("--offline-max", 3)).await;
    let mut a = alice_and_departed_bob(&s).await;
    say_n(&mut a, "r1", &["q1", "q2", "q3", "q4", "q5"]).await;
    let mut b = Client::connect_as(&s, "u2", Some("Bob")).await;
    b.login("r1").await;
    let mut got = vec![];
    for _ in 0..3 {
        let m = b.recv_json().await;
        assert_message(&m, &["offline"]);
        got.push(m["message"].as_str().unwrap().to_string());
    }
    assert_eq!(got, vec!["q3", "q4", "q5"]);
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn offline_queue_expires_after_ttl() {
    let s = Server::start(ServerOpts::new().arg("--offline-ttl", 1)).await;
    let mut a = alice_and_departed_bob(&s).await;
    say_n(&mut a, "r1", &["stale"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut b = Client::connect_as(&s, "u2", Some("Bob")).await;
    b.login("r1").await;
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn keys_and_get_show_the_store_after_stop() {
    let mut s = Server::start(ServerOpts::new()).await;
    let mut a = alice_and_departed_bob(&s).await;
    say_n(&mut a, "r1", &["kept"]).await;
    s.stop().await;
    let data = s.data_dir.to_str().unwrap().to_string();

    let (st, out, err) = run_natter(&["keys", "--data", &data]);
    assert!(st.success(), "natter keys failed: {err}");
    for key in ["room:r1:members", "room:r1:seq", "room:r1:history", "offline:u2", "user:u1:rooms", "user:u2:rooms"] {
        assert!(out.lines().any(|l| l.contains(key)), "`natter keys` lacks {key}:\n{out}");
    }
    let (st, out, err) = run_natter(&["keys", "room:*", "--data", &data]);
    assert!(st.success(), "natter keys room:* failed: {err}");
    assert!(out.contains("room:r1:members"), "{out}");
    assert!(!out.contains("offline:u2"), "pattern room:* must not list offline:u2:\n{out}");

    let (st, out, err) = run_natter(&["get", "room:r1:members", "--data", &data]);
    assert!(st.success(), "natter get failed: {err}");
    assert!(out.contains("u1") && out.contains("u2"), "members should list u1 and u2:\n{out}");
    let (st, out, err) = run_natter(&["get", "offline:u2", "--data", &data]);
    assert!(st.success(), "natter get offline:u2 failed: {err}");
    assert!(out.contains("kept"), "offline:u2 should hold the queued message:\n{out}");
}
