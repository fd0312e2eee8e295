//! Scale-out: three `natter serve --redis` nodes on one throwaway redis-server, chatting across
//! nodes as if on one (docs/scale-out.md).
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(800);

/// `n` nodes on `redis`, each with its own (unused) data dir.
async fn nodes(redis: &TestRedis, n: usize) -> Vec<Server> {
    nodes_with(redis, n, ServerOpts::new()).await
}

/// `n` nodes on `redis` started with `opts` (plus `--redis`).
async fn nodes_with(redis: &TestRedis, n: usize, opts: ServerOpts) -> Vec<Server> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Server::start(opts.clone().arg("--redis", redis.url())).await);
    }
    out
}

/// Messages until `want` of them arrived (skipping presence events), as (id, text).
async fn messages(c: &mut Client, want: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < want {
        let v: Value = c.recv_json().await;
        if v["event"] == "message" {
            out.push((v["id"].as_u64().unwrap(), v["message"].as_str().unwrap().to_string()));
        }
    }
    out
}

#[tokio::test]
async fn three_nodes_chat_as_one_room() {
    let redis = TestRedis::start();
    let n = nodes(&redis, 3).await;
    let mut a = Client::connect_as(&n[0], "u1", Some("Alice")).await;
    assert_login(&a.login("r1").await, "r1", "u1", "Alice", 1, 1);
    let mut b = Client::connect_as(&n[1], "u2", Some("Bob")).await;
    assert_login(&b.login("r1").await, "r1", "u2", "Bob", 2, 2);
    assert_login(&a.recv_json().await, "r1", "u2", "Bob", 2, 2);
    let mut c = Client::connect_as(&n[2], "u3", Some("Carol")).await;
    assert_login(&c.login("r1").await, "r1", "u3", "Carol", 3, 3);
    for x in [&mut a, &mut b] {
        assert_login(&x.recv_json().await, "r1", "u3", "Carol", 3, 3);
    }

    // Each node's sender, every node's receivers: all get all, in one id order.
    a.say("r1", "from a").await;
    b.say("r1", "from b").await;
    c.say("r1", "from c").await;
    let mut seen = Vec::new();
    for x in [&mut a, &mut b, &mut c] {
        let got = messages(x, 3).await;
        let ids: Vec<u64> = got.iter().map(|m| m.0).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");
        seen.push(got);
    }
    assert!(seen.iter().all(|s| *s == seen[0]), "every node delivers the same stream: {seen:?}");

    // A message carries global counts.
    a.say("r1", "counts").await;
    for x in [&mut a, &mut b, &mut c] {
        let m = x.recv_event("message").await;
        assert_message(&m, &[]);
        assert_eq!((m["num"].as_u64(), m["total"].as_u64()), (Some(3), Some(3)));
    }

    // leave on node 1: everyone hears it, total drops; a disconnect on node 2 keeps membership.
    b.send_json(&json!({"event":"leave","roomid":"r1"})).await;
    for x in [&mut a, &mut c] {
        assert_logout(&x.recv_json().await, "r1", "u2", "Bob", 2, 2);
    }
    c.close().await;
    assert_logout(&a.recv_json().await, "r1", "u3", "Carol", 1, 2);
    a.expect_silence(QUIET).await;
}

#[tokio::test]
async fn an_offline_queue_filled_through_one_node_is_drained_on_another() {
    let redis = TestRedis::start();
    let n = nodes(&redis, 3).await;
    let mut a = Client::connect_as(&n[0], "u1", Some("Alice")).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&n[1], "u2", Some("Bob")).await;
    b.login("r1").await;
    b.close().await; // a member, offline once its logout is out
    a.recv_event("logout").await;
    for i in 0..3 {
        a.say_cid("r1", &format!("m{i}"), &format!("c{i}")).await;
        assert_eq!(a.recv_event("ack").await["cid"], format!("c{i}"));
    }
    let mut b = Client::connect_as(&n[2], "u2", Some("Bob")).await;
    assert_login(&b.login("r1").await, "r1", "u2", "Bob", 2, 2);
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = b.recv_event("message").await;
        assert_eq!(m["offline"], true, "{m}");
        got.push(m["message"].as_str().unwrap().to_string());
    }
    assert_eq!(got, ["m0", "m1", "m2"]);
    // Live from here on, once.
    a.say("r1", "live").await;
    let m = b.recv_event("message").await;
    assert_eq!((m["message"].as_str(), m.get("offline")), (Some("live"), None));
    b.expect_no_event("message", QUIET).await;
}

#[tokio::test]
async fn since_recovers_after_moving_to_another_node() {
    let redis = TestRedis::start();
    let n = nodes(&redis, 2).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&n[0], "u2", None).await;
    b.login("r1").await;
    a.say("r1", "before").await;
    let last = b.recv_event("message").await["id"].as_u64().unwrap();
    b.close().await;
    a.recv_event("logout").await;
    a.say("r1", "while away 1").await;
    a.say("r1", "while away 2").await;
    messages(&mut a, 2).await; // ("before" went by while waiting for the logout)
    let mut b = Client::connect_as(&n[1], "u2", None).await;
    let l = b.login_since("r1", last).await;
    assert_eq!(l["recovered"], true, "{l}");
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = b.recv_event("message").await;
        assert!(m["replay"] == true || m["offline"] == true, "{m}");
        got.push(m["message"].as_str().unwrap().to_string());
    }
    assert_eq!(got, ["while away 1", "while away 2"]);
    b.expect_no_event("message", QUIET).await;
}

#[tokio::test]
async fn a_cid_resent_to_another_node_is_not_published_twice() {
    let redis = TestRedis::start();
    let n = nodes(&redis, 2).await;
    let mut watcher = Client::connect_as(&n[1], "u9", None).await;
    watcher.login("r1").await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    a.say_cid("r1", "once", "c-1").await;
    let first = a.recv_event("ack").await;
    a.close().await;
    let mut a = Client::connect_as(&n[1], "u1", None).await;
    a.login("r1").await;
    a.say_cid("r1", "once", "c-1").await;
    let again = a.recv_event("ack").await;
    assert_eq!(first["id"], again["id"]);
    assert_eq!(messages(&mut watcher, 1).await[0].1, "once");
    watcher.expect_no_event("message", QUIET).await;
}

#[tokio::test]
async fn the_connection_limit_per_uid_holds_across_nodes() {
    let redis = TestRedis::start();
    let n = nodes_with(&redis, 2, ServerOpts::new().arg("--max-connections-per-uid", 1)).await;
    let mut first = Client::connect_as(&n[0], "u1", None).await;
    first.login("r1").await;
    let mut second = Client::connect_as(&n[1], "u1", None).await;
    second.expect_error("too_many_connections").await;
    first.close().await;
    // The slot is released through Redis: the other node lets the uid in again.
    let mut ok = None;
    for _ in 0..50 {
        let mut c = Client::connect_as(&n[1], "u1", None).await;
        c.send_json(&json!({"event":"login","roomid":"r1"})).await;
        let v = c.recv_json().await;
        if v["event"] == "login" {
            ok = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok.is_some(), "the uid got in again once its first connection closed");
}

/// Sends `text` with `cid` until it is acked, through `unavailable` answers (Redis away);
/// the ack's id.
async fn publish_until_acked(c: &mut Client, room: &str, text: &str, cid: &str, within: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        c.say_cid(room, text, cid).await;
        loop {
            let v = c.recv_json_within(within).await;
            match v["event"].as_str() {
                Some("ack") if v["cid"] == cid => return v["id"].as_u64().unwrap(),
                Some("error") => {
                    assert_eq!(v["code"], "unavailable", "{v}");
                    break;
                }
                _ => {}
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{cid} not acked within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every message id a fresh connection of `uid` is replayed from the start.
async fn history_ids(node: &Server, uid: &str, room: &str) -> Vec<u64> {
    let mut c = Client::connect_as(node, uid, None).await;
    c.login_since(room, 0).await;
    let mut ids = Vec::new();
    while let Some(v) = c.try_recv_json(QUIET).await {
        if v["event"] == "message" && v["replay"] == true {
            ids.push(v["id"].as_u64().unwrap());
        }
    }
    ids
}

#[tokio::test]
async fn a_killed_node_takes_its_presence_with_it_and_the_others_keep_chatting() {
    let redis = TestRedis::start();
    let mut n = nodes(&redis, 3).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&n[1], "u2", None).await;
    b.login("r1").await;
    let mut c = Client::connect_as(&n[2], "u3", Some("Carol")).await;
    c.login("r1").await;
    let mut acked = Vec::new();
    for i in 0..20 {
        if i == 10 {
            n[2].kill(); // kill -9, mid-stream
        }
        acked
            .push(publish_until_acked(&mut a, "r1", &format!("m{i}"), &format!("c{i}"), Duration::from_secs(10)).await);
    }
    // Within the node TTL (15 s) and a sweep (5 s): u3's logout, with the counts without it.
    let lo = b.recv_event_within("logout", Duration::from_secs(30)).await;
    assert_eq!((lo["uid"].as_str(), lo["num"].as_u64(), lo["total"].as_u64()), (Some("u3"), Some(2), Some(3)), "{lo}");
    // From then on u3 is offline: what is published is queued for it.
    let after = publish_until_acked(&mut a, "r1", "after the crash", "c-after", Duration::from_secs(10)).await;
    acked.push(after);
    let mut c = Client::connect_as(&n[0], "u3", None).await;
    c.login("r1").await;
    let m = c.recv_event("message").await;
    assert_eq!((m["id"].as_u64(), &m["offline"]), (Some(after), &json!(true)), "{m}");
    // Every acked message is in the history.
    let kept = history_ids(&n[1], "u2", "r1").await;
    for id in &acked {
        assert!(kept.contains(id), "acked {id} in the history {kept:?}");
    }
}

#[tokio::test]
async fn acked_messages_survive_a_redis_restart_and_the_nodes_resubscribe() {
    let mut redis = TestRedis::start_aof();
    let n = nodes(&redis, 2).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&n[1], "u2", None).await;
    b.login("r1").await;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked
            .push(publish_until_acked(&mut a, "r1", &format!("m{i}"), &format!("c{i}"), Duration::from_secs(10)).await);
    }
    messages(&mut b, 5).await;
    redis.restart(); // kill -9 and start again on its AOF
    let id = publish_until_acked(&mut a, "r1", "after restart", "c-r", Duration::from_secs(30)).await;
    acked.push(id);
    // Node 1 resubscribed: the message reaches it live.
    let got = messages(&mut b, 1).await;
    assert_eq!(got, [(id, "after restart".to_string())]);
    let kept = history_ids(&n[1], "u3", "r1").await;
    assert_eq!(kept, acked, "every acked message kept, in order");
}

#[tokio::test]
async fn while_redis_is_down_publishes_are_unavailable_and_everything_resumes() {
    let mut redis = TestRedis::start_aof();
    let n = nodes(&redis, 2).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&n[1], "u2", None).await;
    b.login("r1").await;
    redis.stop();
    a.say_cid("r1", "lost?", "c-down").await;
    let e = a.recv_event("error").await;
    assert_eq!(e["code"], "unavailable", "{e}");
    b.expect_no_event("message", QUIET).await;
    redis.restart();
    // Same connections, no reconnect: the resend goes through, once.
    let id = publish_until_acked(&mut a, "r1", "lost?", "c-down", Duration::from_secs(30)).await;
    assert_eq!(messages(&mut b, 1).await, [(id, "lost?".to_string())]);
    b.expect_no_event("message", QUIET).await;
}

#[tokio::test]
async fn a_node_stopped_cleanly_sends_its_users_logouts_at_once() {
    let redis = TestRedis::start();
    let mut n = nodes(&redis, 2).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&n[1], "u2", Some("Bob")).await;
    b.login("r1").await;
    a.recv_event("login").await;
    n[1].terminate();
    let started = std::time::Instant::now();
    let lo = a.recv_event("logout").await; // within the client's 10 s, not the node TTL + sweep
    assert_logout(&lo, "r1", "u2", "Bob", 1, 2);
    assert!(n[1].wait_exit(Duration::from_secs(10)).await.success());
    // Not at the node's deadline (15 s): the shutdown took its presence out itself.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    a.say("r1", "still here").await;
    assert_eq!(a.recv_event("message").await["num"], 1);
}

#[tokio::test]
async fn a_join_during_a_stream_from_another_node_misses_and_doubles_nothing() {
    let redis = TestRedis::start();
    let burst = ServerOpts::new().arg("--rate-per-sec", 100_000).arg("--rate-burst", 100_000);
    let n = nodes_with(&redis, 2, burst).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    const TOTAL: usize = 300;
    let sender = tokio::spawn(async move {
        for i in 0..TOTAL {
            a.say_cid("r1", &format!("m{i}"), &format!("c{i}")).await;
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Every ack, so that the last id is known.
        let mut last = 0;
        let mut acks = 0;
        while acks < TOTAL {
            let v = a.recv_json().await;
            if v["event"] == "ack" {
                acks += 1;
                last = last.max(v["id"].as_u64().unwrap());
            }
        }
        last
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut joins = Vec::new();
    for k in 0..3 {
        let mut b = Client::connect_as(&n[1], &format!("u{}", k + 2), None).await;
        b.login_since("r1", 0).await;
        joins.push(b);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = sender.await.unwrap();
    for mut b in joins {
        let mut ids = Vec::new();
        while ids.last() != Some(&last) {
            let v = b.recv_json().await;
            if v["event"] == "message" {
                ids.push(v["id"].as_u64().unwrap());
            }
        }
        let want: Vec<u64> = (1..=last).collect();
        assert_eq!(ids, want, "every message once, in order");
    }
}

#[tokio::test]
async fn rediss_is_verified_against_the_trusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = generate_tls(dir.path());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, cert, key, ca) = (
        tls_port.to_string(),
        tls.cert_path.to_str().unwrap().to_string(),
        tls.key_path.to_str().unwrap().to_string(),
        tls.ca_path.to_str().unwrap().to_string(),
    );
    // The plain port stays for the helper's readiness check; the nodes use the TLS one.
    let redis = TestRedis::start_with(&[
        "--appendonly",
        "no",
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://localhost:{tls_port}/0");
    // Without the CA the certificate is not trusted: a startup error naming the flag.
    let (status, _, err) = run_serve(dir.path(), &["--redis", &url]);
    assert!(!status.success());
    assert!(err.contains("--redis: cannot use Redis at localhost:"), "{err}");
    let opts = ServerOpts::new().arg("--redis", &url).env("SSL_CERT_FILE", &ca);
    let n = [Server::start(opts.clone()).await, Server::start(opts).await];
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&n[1], "u2", None).await;
    b.login("r1").await;
    a.say("r1", "over tls").await;
    assert_eq!(b.recv_event("message").await["message"], "over tls");
    drop(redis);
}

#[tokio::test]
async fn keys_and_get_read_a_redis_deployment_by_logical_names() {
    let redis = TestRedis::start();
    let n = nodes(&redis, 1).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&n[0], "u2", None).await;
    b.login("r1").await;
    b.close().await;
    a.recv_event("logout").await;
    a.say_cid("r1", "hi", "c-1").await;
    a.recv_event("ack").await;
    let url = redis.url();
    let (ok, out, err) = run_natter(&["keys", "--redis", &url]);
    assert!(ok.success(), "{err}");
    let want = [
        "dedupe:u1:c-1",
        "offline:u2",
        "room:r1:history",
        "room:r1:members",
        "room:r1:online",
        "room:r1:seq",
        "user:u1:rooms",
        "user:u2:rooms",
    ];
    let listed: String = want.iter().enumerate().map(|(i, k)| format!("{}) \"{k}\"\n", i + 1)).collect();
    assert_eq!(out, listed);
    let get = |key: &str| run_natter(&["get", key, "--redis", &url]).1;
    assert_eq!(get("room:r1:members"), "1) \"u1\"\n2) \"u2\"\n");
    assert_eq!(get("room:r1:online"), "1) \"u1\"\n2) \"1\"\n");
    assert_eq!(get("room:r1:seq"), "\"1\"\n");
    assert_eq!(get("dedupe:u1:c-1"), "\"1\"\n");
    let queued = get("offline:u2");
    // As redis-cli (and `get` on a sled store) prints it: each entry a quoted string.
    assert!(queued.starts_with(r#"1) "{\"roomid\":\"r1\",\"msg\":{\"event\":\"message\",\"id\":1,"#), "{queued}");
    assert_eq!(get("room:nope:members"), "(empty array)\n");
    assert_eq!(get("nope"), "(nil)\n");
}

#[tokio::test]
async fn a_node_frozen_past_its_deadline_is_given_up_then_comes_back_by_itself() {
    let redis = TestRedis::start();
    let n = nodes(&redis, 2).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&n[1], "u2", Some("Bob")).await;
    b.login("r1").await;
    a.recv_event("login").await;
    // SIGSTOP: no heartbeat, but its connections stay open (the kernel keeps the sockets).
    let pid = n[1].pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let lo = a.recv_event_within("logout", Duration::from_secs(30)).await;
    assert_eq!((lo["uid"].as_str(), lo["num"].as_u64()), (Some("u2"), Some(1)), "{lo}");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Within a heartbeat or two it notices, writes its presence again and says so.
    let back = a.recv_event_within("login", Duration::from_secs(15)).await;
    assert_login(&back, "r1", "u2", "Bob", 2, 2);
    // u2 is online again: a message reaches it live, not through its queue.
    a.say("r1", "welcome back").await;
    let m = b.recv_event("message").await;
    assert_eq!((m["message"].as_str(), m.get("offline")), (Some("welcome back"), None), "{m}");
    let mut again = Client::connect_as(&n[0], "u2", Some("Bob")).await;
    again.login("r1").await;
    again.expect_no_event("message", QUIET).await;
}

#[tokio::test]
async fn a_leave_on_one_node_keeps_the_membership_the_uid_still_uses_on_another() {
    let redis = TestRedis::start();
    let n = nodes(&redis, 2).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    let mut phone = Client::connect_as(&n[0], "u2", None).await;
    phone.login("r1").await;
    let mut laptop = Client::connect_as(&n[1], "u2", None).await;
    laptop.login("r1").await;
    phone.send_json(&json!({"event":"leave","roomid":"r1"})).await;
    // Still in the room through the laptop: no logout, and still a member.
    a.say("r1", "still two").await;
    let m = a.recv_event("message").await;
    assert_eq!((m["num"].as_u64(), m["total"].as_u64()), (Some(2), Some(2)), "{m}");
    laptop.close().await;
    assert_logout(&a.recv_event("logout").await, "r1", "u2", "u2", 1, 2);
    // A member still, so offline messages are kept for it.
    a.say_cid("r1", "for later", "c-l").await;
    a.recv_event("ack").await;
    let mut back = Client::connect_as(&n[1], "u2", None).await;
    back.login("r1").await;
    let m = back.recv_event("message").await;
    assert_eq!((m["message"].as_str(), &m["offline"]), (Some("for later"), &json!(true)), "{m}");
}

#[tokio::test]
async fn a_redis_error_that_is_not_an_outage_is_internal_not_unavailable() {
    let redis = TestRedis::start();
    let n = nodes(&redis, 1).await;
    let mut a = Client::connect_as(&n[0], "u1", None).await;
    a.login("r1").await;
    // Something else wrote the room's history key as a string: no retry will cure that.
    let port = redis.port().to_string();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port, "SET", "natter:room:{r1}:history", "not a list"])
        .output()
        .expect("redis-cli (Debian's redis-tools, beside redis-server)");
    assert!(out.status.success());
    a.say_cid("r1", "hi", "c-1").await;
    let e = a.recv_event("error").await;
    assert_eq!(e["code"], "internal", "{e}");
    // The connection stays up and the other rooms work.
    a.login("r2").await;
    a.say_cid("r2", "fine", "c-2").await;
    assert_eq!(a.recv_event("ack").await["roomid"], "r2");
}
