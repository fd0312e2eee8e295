//! What one client can make the server hold (issue: bounded state): a churn of fresh room ids
//! leaves no key behind and does not stop another room from chatting; offline fan-out of big
//! messages is held to the per-uid byte cap. Figures are printed for docs/security.md, never
//! asserted on time (`NATTER_CHURN_ROOMS=100000 cargo test --release --test abuse -- --nocapture`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// (RSS in KiB) of `pid`.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Chats in `room` until `stop`: one message every 20 ms, each timed from send to the
/// sender's own copy. Returns the round trips; panics if a message goes missing.
async fn chatter(mut c: Client, room: &'static str, stop: tokio::sync::watch::Receiver<bool>) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let text = format!("m{n}");
        let t0 = Instant::now();
        c.say(room, &text).await;
        loop {
            let v = c.recv_event("message").await;
            if v["message"] == text.as_str() {
                break;
            }
        }
        times.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times
}

/// Round trips of a chatter in `main` while `work` runs.
async fn timed_chat<F: std::future::Future<Output = ()>>(s: &Server, work: F) -> Vec<Duration> {
    let mut c = Client::connect_as(s, "chatter", None).await;
    c.login("main").await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let chat = tokio::spawn(chatter(c, "main", rx));
    work.await;
    tx.send(true).unwrap();
    chat.await.expect("the chatter got every message of its own")
}

#[tokio::test]
async fn a_churn_of_fresh_room_ids_leaves_no_key_and_other_rooms_keep_chatting() {
    let rooms: usize = std::env::var("NATTER_CHURN_ROOMS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    // The churner is let through the event rate so that the test measures state, not the limiter.
    let mut s = Server::start(ServerOpts::new().arg("--rate-per-sec", 100_000).arg("--rate-burst", 100_000)).await;
    let rss0 = rss_kib(s.pid());
    let quiet_for = Duration::from_secs(if rooms > 10_000 { 10 } else { 2 });
    let mut calm = timed_chat(&s, tokio::time::sleep(quiet_for)).await;

    let t0 = Instant::now();
    let mut busy = timed_chat(&s, async {
        let mut c = Client::connect_as(&s, "churner", None).await;
        for i in 0..rooms {
            let room = format!("churn{i}");
            c.login(&room).await;
            c.send_json(&json!({"event":"leave","roomid":room})).await;
        }
        // Events of one connection are handled in order: this answers after the last leave.
        c.login("last").await;
        c.send_json(&json!({"event":"leave","roomid":"last"})).await;
        c.close().await;
    })
    .await;
    let churn = t0.elapsed();
    let rss1 = rss_kib(s.pid());
    let health = healthz(&s).await;
    assert!(!busy.is_empty() && !calm.is_empty());

    s.terminate();
    s.wait_exit(Duration::from_secs(30)).await;
    let data = s.data_dir.to_str().unwrap().to_string();
    let (st, out, err) = run_natter(&["keys", "*", "--data", &data]);
    assert!(st.success(), "natter keys failed: {err}");
    let keys: Vec<&str> = out.lines().collect();
    let left: Vec<&&str> = keys.iter().filter(|k| k.contains("churn") || k.contains("last")).collect();
    assert!(left.is_empty(), "{} fresh rooms joined and left leave no key, found: {left:?}", rooms + 1);
    assert!(keys.iter().any(|k| k.contains("room:main:history")), "the chat was kept: {out}");

    eprintln!(
        "churn: {rooms} fresh rooms joined+left in {:.1} s ({:.0}/s); healthz rooms at the end {}; \
         RSS {} -> {} KiB; keys after stop {}; main-room round trip p50/p99: calm {:?}/{:?}, \
         during churn {:?}/{:?} ({} and {} samples)",
        churn.as_secs_f64(),
        rooms as f64 / churn.as_secs_f64(),
        health["rooms"],
        rss0,
        rss1,
        keys.len(),
        percentile(&mut calm, 0.5),
        percentile(&mut calm, 0.99),
        percentile(&mut busy, 0.5),
        percentile(&mut busy, 0.99),
        calm.len(),
        busy.len(),
    );
}

#[tokio::test]
async fn offline_fan_out_of_big_messages_is_held_to_the_byte_cap() {
    const MEMBERS: usize = 20;
    const CAP: usize = 40_000;
    let s = Server::start(
        ServerOpts::new().arg("--offline-max-bytes", CAP).arg("--rate-per-sec", 1000).arg("--rate-burst", 1000),
    )
    .await;
    // Members who joined once and went away: each gets every message queued.
    for i in 0..MEMBERS {
        let mut m = Client::connect_as(&s, &format!("gone{i}"), None).await;
        m.login("big").await;
        m.close().await;
    }
    let mut sender = Client::connect_as(&s, "sender", None).await;
    sender.login("big").await;
    let text = "x".repeat(4_096);
    let mut ids = Vec::new();
    for i in 0..30 {
        sender.say_cid("big", &text, &format!("c{i}")).await;
        ids.push(sender.recv_event("ack").await["id"].as_u64().unwrap());
    }
    // Meanwhile another room chats on.
    let (mut a, mut b) = two_in_room(&s, "other").await;
    a.say("other", "still here").await;
    assert_eq!(b.recv_event("message").await["message"], "still here");

    // Each queue holds the newest messages that fit in the cap, oldest dropped first.
    let per_entry = 4_096 + 150; // the message object around the text
    let fit = CAP / per_entry;
    for i in [0, MEMBERS - 1] {
        let mut m = Client::connect_as(&s, &format!("gone{i}"), None).await;
        m.login("big").await;
        let mut got = Vec::new();
        while let Some(v) = m.try_recv_json(Duration::from_millis(500)).await {
            if v["event"] == "message" {
                assert_eq!(v["offline"], true, "{v}");
                got.push(v["id"].as_u64().unwrap());
            }
        }
        assert!(
            (fit.saturating_sub(1)..=fit).contains(&got.len()),
            "{} queued messages of ~{per_entry} bytes in a {CAP}-byte cap",
            got.len()
        );
        assert_eq!(got, ids[ids.len() - got.len()..], "the newest ones, in order");
    }
}
