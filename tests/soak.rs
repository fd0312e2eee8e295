//! The soak run: minutes of mixed traffic (chat in several rooms, joins and leaves, reconnects,
//! members going offline and coming back with `since`) against one server, sampling its RSS and
//! open files, which must stay flat after the warm-up (in a run of 18 minutes or more: once the
//! 10-minute dedupe window is full and expiry has run a few times). Not part of `cargo test`
//! (ignored):
//!
//! ```sh
//! NATTER_SOAK_SECS=600 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! prints one line per sample and a summary (the figures in docs/RELIABILITY.md).

mod common;

use common::proc::{dir_bytes, open_files, rss_kib};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const ROOMS: usize = 8;
const CHATTERS: usize = 40;

/// (RSS in KiB, open files) of `pid`.
fn sample(pid: u32) -> (u64, usize) {
    (rss_kib(pid), open_files(pid))
}

/// Seconds between samples.
const SAMPLE_SECS: u64 = 10;
/// How long dedupe records are kept (the server's 10-minute cid window).
const WINDOW_SECS: u64 = 600;

/// One simulated user for `until`: chats, changes rooms, drops and reconnects with `since`.
/// Returns (sent, received, sessions the server closed: a catch-up bigger than the outbox ends
/// in close 1013 by design, and the next session goes on from there).
async fn user(s: &Server, i: usize, until: Instant) -> (u64, u64, u64) {
    let uid = format!("soak{i}");
    let (mut sent, mut received, mut closed) = (0u64, 0u64, 0u64);
    let mut last_id = std::collections::HashMap::<String, u64>::new();
    let mut seq = 0u64;
    while Instant::now() < until {
        let mut c = Client::connect_as(s, &uid, None).await;
        let room = format!("room{}", (i + seq as usize) % ROOMS);
        let since = last_id.get(&room).copied().unwrap_or(0);
        c.send_json(&json!({"event":"login","roomid":room,"since":since})).await;
        // A session: a few dozen messages at a human-ish pace, reading everything.
        let session_end = Instant::now() + Duration::from_millis(2_000 + (i as u64 * 137) % 3_000);
        let mut open = true;
        'session: while open && Instant::now() < session_end && Instant::now() < until {
            seq += 1;
            let msg = json!({"event":"message","roomid":room,"message":format!("m{seq} from {uid}"),"cid":format!("{uid}-{seq}")});
            if !c.try_send_json(&msg).await {
                break;
            }
            sent += 1;
            loop {
                match c.recv(Duration::from_millis(50)).await {
                    Incoming::Json(v) if v["event"] == "message" => {
                        received += 1;
                        if let (Some(r), Some(id)) = (v["roomid"].as_str(), v["id"].as_u64()) {
                            let e = last_id.entry(r.to_string()).or_insert(0);
                            *e = (*e).max(id);
                        }
                    }
                    Incoming::Json(_) | Incoming::Text(_) | Incoming::Binary(_) => {}
                    Incoming::Timeout => break,
                    Incoming::Close(..) | Incoming::Eof(_) => {
                        closed += 1;
                        open = false;
                        break 'session;
                    }
                }
            }
        }
        if !open {
            drop(c);
        } else {
            match seq % 3 {
                // Leaves the room for good (membership ends), then disconnects.
                0 => {
                    c.send_json(&json!({"event":"leave","roomid":room})).await;
                    c.close().await;
                }
                // Drops without a word: stays a member, gets messages queued while away.
                1 => drop(c),
                _ => c.close().await,
            }
        }
        tokio::time::sleep(Duration::from_millis(200 + (i as u64 * 31) % 500)).await;
    }
    (sent, received, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: run by hand (see the file's header)"]
async fn soak() {
    let secs: u64 = std::env::var("NATTER_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let s = Server::start(ServerOpts::new().arg("--heartbeat", 5)).await;
    let pid = s.pid();
    let data_dir = s.data_dir.clone();
    let until = Instant::now() + Duration::from_secs(secs);
    let server = std::sync::Arc::new(s);
    let users: Vec<_> = (0..CHATTERS)
        .map(|i| {
            let s = server.clone();
            tokio::spawn(async move { user(&s, i, until).await })
        })
        .collect();
    let start = Instant::now();
    let mut samples = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(SAMPLE_SECS).min(until.saturating_duration_since(Instant::now()))).await;
        let (rss, fds) = sample(pid);
        let disk = dir_bytes(&data_dir) >> 10;
        println!("t={:>4}s rss={:>7} KiB open_files={fds} data_dir={disk} KiB", start.elapsed().as_secs(), rss);
        samples.push((rss, fds));
    }
    let (mut sent, mut received, mut closed) = (0, 0, 0);
    for u in users {
        let (s, r, c) = u.await.unwrap();
        sent += s;
        received += r;
        closed += c;
    }
    // What the store holds at the end, by key tag (after a clean stop): live data, to read the
    // data dir's size against.
    let mut server = std::sync::Arc::try_unwrap(server).ok().expect("every user is done");
    server.terminate();
    server.wait_exit(Duration::from_secs(30)).await;
    let bounds = natter::store::Bounds::default();
    let store = natter::store::sled_store::SledStore::open(&data_dir, bounds).expect("reopen the store");
    let mut tags = std::collections::BTreeMap::<char, (usize, usize)>::new();
    for item in store.tree().expect("tree").iter() {
        let (k, v) = item.expect("read");
        let e = tags.entry(k.first().copied().unwrap_or(b'?') as char).or_insert((0, 0));
        e.0 += 1;
        e.1 += k.len() + v.len();
    }
    let live: usize = tags.values().map(|t| t.1).sum();
    drop(store);
    println!(
        "store at the end: (keys, bytes) by tag {tags:?}; live {} KiB, data dir {} KiB",
        live >> 10,
        dir_bytes(&data_dir) >> 10
    );
    // Warm-up: the first fifth of the run, or, in a run long enough to tell, until the dedupe
    // window (10 minutes of cids, kept by design) is full and a few minute-ly expiry sweeps
    // have run: the state grows until then because it is meant to.
    let settled_at = if secs >= WINDOW_SECS + 240 + 240 { WINDOW_SECS + 240 } else { secs / 5 };
    let warm = &samples[(settled_at / SAMPLE_SECS) as usize..];
    let (first, last) = (warm.first().unwrap(), warm.last().unwrap());
    let max_rss = warm.iter().map(|s| s.0).max().unwrap();
    let max_fds = warm.iter().map(|s| s.1).max().unwrap();
    println!(
        "soak: {secs} s, {CHATTERS} users in {ROOMS} rooms, {sent} messages sent, {received} received, {closed} sessions closed by the server; \
         after warm-up RSS {} -> {} KiB (max {max_rss}), open files {} -> {} (max {max_fds})",
        first.0, last.0, first.1, last.1
    );
    assert!(sent > 0 && received > 0);
    // Flat: no more than 25% growth of RSS after the warm-up, open files bounded by the users.
    assert!(last.0 <= first.0 + first.0 / 4, "RSS grew from {} to {} KiB", first.0, last.0);
    assert!(max_fds < 64 + 2 * CHATTERS, "open files reached {max_fds}");
}
