//! What one client can make the server hold (issue: bounded state): a churn of fresh room ids
//! leaves no key behind and does not stop another room from chatting; offline fan-out of big
//! messages is held to the per-uid byte cap. Figures are printed for docs/security.md, never
//! asserted on time (`NATTER_CHURN_ROOMS=100000 cargo test --release --test abuse -- --nocapture`).

mod common;

use std::time::{Duration, Instant};

use common::proc::{dir_bytes, rss_kib};
use common::*;
use serde_json::json;

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

/// What a churn of `rooms` fresh room ids did, seen from outside.
struct Churn {
    secs: f64,
    rss_kib: (u64, u64),
    calm: Vec<Duration>,
    busy: Vec<Duration>,
}

impl Churn {
    fn report(&mut self, rooms: usize) -> String {
        format!(
            "{rooms} fresh rooms joined+left in {:.1} s ({:.0}/s); RSS {} -> {} KiB; main-room round trip \
             p50/p99: calm {:?}/{:?}, during the churn {:?}/{:?} ({} and {} samples)",
            self.secs,
            rooms as f64 / self.secs,
            self.rss_kib.0,
            self.rss_kib.1,
            percentile(&mut self.calm, 0.5),
            percentile(&mut self.calm, 0.99),
            percentile(&mut self.busy, 0.5),
            percentile(&mut self.busy, 0.99),
            self.calm.len(),
            self.busy.len(),
        )
    }
}

/// One connection logs in to and leaves `rooms` fresh room ids, while a chatter in `main`
/// times its round trips (and as long before, for comparison).
async fn churn(s: &Server, rooms: usize) -> Churn {
    let rss0 = rss_kib(s.pid());
    let quiet_for = Duration::from_secs(if rooms > 10_000 { 10 } else { 2 });
    let calm = timed_chat(s, tokio::time::sleep(quiet_for)).await;
    let t0 = Instant::now();
    let busy = timed_chat(s, async {
        let mut c = Client::connect_as(s, "churner", None).await;
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
    let secs = t0.elapsed().as_secs_f64();
    assert!(!busy.is_empty() && !calm.is_empty());
    Churn { secs, rss_kib: (rss0, rss_kib(s.pid())), calm, busy }
}

/// The store's logical keys after a clean stop.
async fn keys_after_stop(s: &mut Server) -> Vec<String> {
    s.terminate();
    s.wait_exit(Duration::from_secs(60)).await;
    let (st, out, err) = run_natter(&["keys", "*", "--data", s.data_dir.to_str().unwrap()]);
    assert!(st.success(), "natter keys failed: {err}");
    out.lines().map(str::to_string).collect()
}

/// A server that lets the abuser through the event rate, so that what is measured is state.
async fn unthrottled() -> Server {
    Server::start(ServerOpts::new().arg("--rate-per-sec", 100_000).arg("--rate-burst", 100_000)).await
}

#[tokio::test]
async fn a_churn_of_fresh_room_ids_leaves_no_key_and_other_rooms_keep_chatting() {
    let rooms = 600;
    let mut s = unthrottled().await;
    let mut figures = churn(&s, rooms).await;
    let keys = keys_after_stop(&mut s).await;
    let left: Vec<&String> = keys.iter().filter(|k| k.contains("churn") || k.contains("last")).collect();
    assert!(left.is_empty(), "{} fresh rooms joined and left leave no key, found: {left:?}", rooms + 1);
    assert!(keys.iter().any(|k| k.contains("room:main:history")), "the chat was kept: {keys:?}");
    eprintln!("churn: {}", figures.report(rooms));
}

/// Before/after figures for docs/security.md (any build: point `NATTER_TEST_BIN` at an earlier
/// one): a churn of `NATTER_CHURN_ROOMS` (100,000) rooms, 20,000 cids from one uid, and 1,000
/// messages of 4,096 escaped characters (24 KiB each) queued for one departed member.
#[tokio::test]
#[ignore]
async fn measure_bounded_state() {
    let rooms: usize = std::env::var("NATTER_CHURN_ROOMS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let mut s = unthrottled().await;
    let mut figures = churn(&s, rooms).await;
    eprintln!("churn: {}", figures.report(rooms));

    let mut gone = Client::connect_as(&s, "gone", None).await;
    gone.login("big").await;
    gone.close().await;
    let mut sender = Client::connect_as(&s, "sender", None).await;
    sender.login("big").await;
    let text = "\u{1}".repeat(4_096);
    let t0 = Instant::now();
    for i in 0..1_000 {
        sender.say_cid("big", &text, &format!("big{i}")).await;
        sender.recv_event("ack").await;
    }
    sender.login("small").await;
    // In windows, reading the acks, so that the sender's own outbound queue never fills.
    for w in 0..100 {
        for i in w * 200..(w + 1) * 200 {
            sender.say_cid("small", &format!("s{i}"), &format!("c{i}")).await;
        }
        let last = format!("c{}", (w + 1) * 200 - 1);
        while sender.recv_event("ack").await["cid"] != last.as_str() {}
    }
    eprintln!("publishing: {:.1} s; RSS {} KiB", t0.elapsed().as_secs_f64(), rss_kib(s.pid()));
    let data_bytes = dir_bytes(&s.data_dir);
    let keys = keys_after_stop(&mut s).await;
    let count = |f: &dyn Fn(&str) -> bool| keys.iter().filter(|k| f(k)).count();
    let (st, queue, _) = run_natter(&["get", "offline:gone", "--data", s.data_dir.to_str().unwrap()]);
    assert!(st.success());
    eprintln!(
        "after stop: {} logical keys, {} of them churn rooms', {} dedupe records; offline:gone {} entries, \
         {} bytes as `natter get` prints them (escaped); data dir {} KiB",
        keys.len(),
        count(&|k| k.contains("churn")),
        count(&|k| k.contains("dedupe:")),
        queue.lines().filter(|l| l.split_once(") ").is_some_and(|(n, _)| n.parse::<u64>().is_ok())).count(),
        queue.len(),
        data_bytes / 1024,
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
