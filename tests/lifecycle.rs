//! Heartbeats, graceful shutdown on SIGTERM, slow consumers.
mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Keeps reading `c` (answering pings) until `stop` fires; returns the client and the events
/// seen (pings hidden).
async fn keep_answering(
    mut c: Client,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (Client, Vec<serde_json::Value>) {
    let mut seen = vec![];
    loop {
        tokio::select! {
            _ = &mut stop => return (c, seen),
            inc = c.recv(Duration::from_millis(200)) => match inc {
                Incoming::Json(v) => seen.push(v),
                Incoming::Timeout => {}
                other => panic!("answering client: {other:?} (after {} pings)", c.pings_seen),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_closes_a_silent_peer_and_keeps_an_answering_one() {
    let s = Server::start(ServerOpts::new().arg("--heartbeat", 0.5)).await;
    let mut live = Client::connect_as(&s, "live", None).await;
    live.login("r1").await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let live_task = tokio::spawn(keep_answering(live, stop_rx));

    let mut silent = Client::connect_as(&s, "silent", None).await;
    silent.login("r1").await;
    silent.auto_heartbeat = false;
    silent.hide_heartbeat = false;
    let started = std::time::Instant::now();

    // the silent one sees pings (exact shape) and then a close 1000 within a few intervals
    let mut pings = 0;
    let (code, reason) = loop {
        match silent.recv(Duration::from_secs(10)).await {
            Incoming::Json(v) if is_heartbeat_ping(&v) => {
                assert_eq!(v, json!({"event":"heartbeat","message":"ping"}));
                pings += 1;
            }
            Incoming::Json(_) => {}
            Incoming::Close(code, reason) => break (code, reason),
            other => panic!("silent peer: expected pings then a close, got {other:?}"),
        }
    };
    assert_eq!(code, Some(1000), "heartbeat timeout closes with 1000 (reason {reason:?})");
    assert!(reason.contains("heartbeat"), "close reason should say heartbeat timeout: {reason:?}");
    assert!((1..=6).contains(&pings), "closed after {pings} pings at 0.5 s");

    // the answering one (auto pong) is still there after many intervals
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(elapsed).max(Duration::from_secs(2))).await;
    stop_tx.send(()).unwrap();
    let (mut live, seen) = live_task.await.expect("answering task");
    for v in &seen {
        assert!((v["event"] == "logout" || v["event"] == "login") && v["uid"] == "silent", "unexpected {v}");
    }
    assert!(seen.iter().any(|v| v["event"] == "logout"), "no logout for the silent peer: {seen:?}");
    assert!(live.pings_seen >= 4, "only {} pings in 4 s at 0.5 s interval", live.pings_seen);
    live.say("r1", "still alive").await;
    assert_eq!(live.recv_json().await["message"], "still alive");
}

#[tokio::test]
async fn heartbeat_any_frame_counts_and_anonymous_silent_peer_goes() {
    let s = Server::start(ServerOpts::new().arg("--heartbeat", 0.5)).await;
    // a raw client that answers nothing but sends WebSocket ping frames stays
    let mut r = RawWs::connect_as(&s, "raw", "r1").await;
    // an anonymous silent client is closed by the heartbeat too (long before the auth timeout)
    let mut anon = Client::connect(&s).await;
    anon.auto_heartbeat = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        r.send_frame(true, 0, OP_PING, b"k").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(anon.recv_close(Duration::from_secs(5)).await, Some(1000));
    r.send_json(&json!({"event":"message","roomid":"r1","message":"pinged"})).await;
    assert_eq!(r.recv_json().await["message"], "pinged");
}

#[tokio::test]
async fn client_ping_event_gets_pong() {
    let s = Server::start(ServerOpts::new()).await;
    let mut c = Client::connect_as(&s, "u1", None).await;
    c.send_json(&json!({"event":"heartbeat","message":"ping"})).await;
    assert_eq!(c.recv_json().await, json!({"event":"heartbeat","message":"pong"}));
    // a pong event (answer to a server ping) gets no reply
    c.send_json(&json!({"event":"heartbeat","message":"pong"})).await;
    c.expect_silence(Duration::from_millis(800)).await;
}

#[tokio::test]
async fn sigterm_closes_everyone_with_1001_and_exits_zero() {
    let mut s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    let (mut v1, _) = Client::connect_v1_as(&s, "u2", None).await;
    let mut anon = Client::connect(&s).await;
    let mut raw = RawWs::connect(&s).await;
    s.terminate();
    assert_eq!(a.recv_close(Duration::from_secs(10)).await, Some(1001));
    assert_eq!(v1.recv_close(Duration::from_secs(10)).await, Some(1001));
    assert_eq!(anon.recv_close(Duration::from_secs(10)).await, Some(1001));
    assert_eq!(raw.recv_close().await, Some(1001));
    let st = s.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM: {st:?}");
    let extra = s.extra_stdout.lock().unwrap().clone();
    assert!(extra.is_empty(), "stdout must hold exactly one line, also got {extra:?}");
}

#[tokio::test]
async fn sigterm_with_no_clients_exits_zero() {
    let mut s = Server::start(ServerOpts::new()).await;
    s.terminate();
    let st = s.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(st.code(), Some(0));
}

/// Reads `stream` until `expected` (sent over the watch channel once known) messages arrived;
/// returns message ids in order and the uids of logouts seen.
async fn read_room(
    mut stream: futures_util::stream::SplitStream<Ws>,
    mut expected: tokio::sync::watch::Receiver<Option<usize>>,
    progress: Arc<AtomicUsize>,
) -> (Vec<u64>, Vec<String>) {
    let mut ids = vec![];
    let mut logouts = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(n) = *expected.borrow() {
            if ids.len() >= n {
                return (ids, logouts);
            }
        }
        let next = tokio::select! {
            n = stream.next() => n,
            _ = expected.changed() => continue,
            _ = tokio::time::sleep_until(deadline) => panic!("reader timed out with {} messages", ids.len()),
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v["event"].as_str() {
                    Some("message") => {
                        ids.push(v["id"].as_u64().unwrap());
                        progress.store(ids.len(), Ordering::SeqCst);
                    }
                    Some("logout") => logouts.push(v["uid"].as_str().unwrap().to_string()),
                    Some("login") | Some("heartbeat") => {}
                    _ => panic!("reader got {v}"),
                }
            }
            Some(Ok(Message::Close(c))) => panic!("a reading client was closed: {c:?} after {} messages", ids.len()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("a reading client failed: {e} after {} messages", ids.len()),
            None => panic!("a reading client's stream ended after {} messages", ids.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_disconnected_and_the_room_goes_on() {
    let s = Server::start(
        ServerOpts::new()
            .arg("--outbound-max-messages", 64)
            .arg("--rate-per-sec", 100000)
            .arg("--rate-burst", 100000)
            // the passive reader never answers pings: keep the heartbeat out of the way
            .arg("--heartbeat", 300),
    )
    .await;
    let mut p = Client::connect_as(&s, "p", None).await;
    p.login("r1").await;
    let mut f1 = Client::connect_as(&s, "f1", None).await;
    f1.login("r1").await;
    let mut f2 = Client::connect_as(&s, "f2", None).await;
    f2.login("r1").await;
    let mut slow = Client::connect_with(&s, ConnectOpts { recv_buffer: Some(4096), ..Default::default() }).await;
    slow.auth_as("slow", None, 3600).await;
    slow.login("r1").await;
    for c in [&mut p, &mut f1, &mut f2] {
        loop {
            let v = c.recv_event("login").await;
            if v["uid"] == "slow" {
                break;
            }
        }
    }

    let (tx, rx) = tokio::sync::watch::channel(None::<usize>);
    let (p_sink, p_stream) = p.into_ws().split();
    let (mut f1_sink, f1_stream) = f1.into_ws().split();
    let (mut f2_sink, f2_stream) = f2.into_ws().split();
    let progress: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let readers = vec![
        tokio::spawn(read_room(p_stream, rx.clone(), progress[0].clone())),
        tokio::spawn(read_room(f1_stream, rx.clone(), progress[1].clone())),
        tokio::spawn(read_room(f2_stream, rx.clone(), progress[2].clone())),
    ];
    // Flow control for the healthy readers only: never more than WINDOW messages ahead of the
    // slowest of them, so their outbound queues stay far below the limit of 64 however slow
    // this machine is. The slow client is not part of this: its queue must overflow.
    const WINDOW: usize = 24;
    let _keep = p_sink;

    let text = "x".repeat(4000);
    let mut sent = 0usize;
    let mut seen_1013 = false;
    'flood: for round in 0..30 {
        for i in 0..50 {
            let lag_deadline = std::time::Instant::now() + Duration::from_secs(60);
            while sent - progress.iter().map(|p| p.load(Ordering::SeqCst)).min().unwrap() > WINDOW {
                assert!(std::time::Instant::now() < lag_deadline, "healthy readers stopped making progress");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let m = json!({"event":"message","roomid":"r1","message":format!("{round}-{i} {text}")});
            f1_sink.send(Message::text(m.to_string())).await.expect("f1 send");
            f2_sink.send(Message::text(m.to_string())).await.expect("f2 send");
            sent += 2;
        }
        let m = metrics(&s).await;
        if metric_value(&m, "natter_closes_total{code=\"1013\"}").unwrap_or(0.0) >= 1.0 {
            seen_1013 = true;
            break 'flood;
        }
    }
    tx.send(Some(sent)).unwrap();
    for r in readers {
        let (ids, logouts) = r.await.expect("reader task");
        assert_eq!(ids, (1..=sent as u64).collect::<Vec<_>>(), "a reading client lost or reordered messages");
        let _ = logouts;
    }
    if !seen_1013 {
        wait_for(Duration::from_secs(20), "natter_closes_total{code=\"1013\"} >= 1", || async {
            metric_value(&metrics(&s).await, "natter_closes_total{code=\"1013\"}").unwrap_or(0.0) >= 1.0
        })
        .await;
    }

    // the slow client: whatever was queued, then 1013 (or the TCP connection dropped)
    let mut got = 0usize;
    let code = loop {
        match slow.recv(Duration::from_secs(30)).await {
            Incoming::Json(v) => {
                if v["event"] == "message" {
                    got += 1;
                }
            }
            Incoming::Close(code, _) => break code,
            Incoming::Eof(_) => break None,
            other => panic!("slow client: {other:?}"),
        }
    };
    eprintln!("slow reader: {sent} messages sent, {got} reached the slow client, close {code:?}");
    assert!(code == Some(1013) || code.is_none(), "slow client closed with {code:?}, expected 1013 or a reset");
    assert!(got < sent, "the slow client received everything ({got}); it was not slow");

    // its logout reached the room, and healthz counts the three remaining connections
    wait_for(Duration::from_secs(10), "3 connections in /healthz", || async { healthz(&s).await["connections"] == 3 })
        .await;
}

/// A second server on a running server's data dir stops with a message naming `--data`, after
/// waiting a little for the lock (a handle just dropped lets go of it late), and the first one
/// goes on serving.
#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let s = Server::start(ServerOpts::new()).await;
    let data = s.data_dir.to_str().unwrap().to_string();
    let (st, _, err) = run_natter(&["serve", "--listen", "127.0.0.1:0", "--data", &data, "--jwt-secret", SECRET]);
    assert!(!st.success());
    assert!(err.contains("--data") && err.contains("in use"), "{err}");
    let (mut a, _) = two_in_room(&s, "still-up").await;
    a.say("still-up", "hello").await;
    assert_eq!(a.recv_event("message").await["message"], "hello");
}
