//! The recovery gaps closed in the crash-proof issue, one test each: history kept by count
//! across a crash, truthful `recovered`, queue entries that leave only on evidence, closing
//! connections counted as offline, tokens within the leeway, liveness per frame, and ids after a
//! clean stop with a TLS handshake pending.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(800);

/// Lets one connection publish hundreds of messages quickly.
fn fast() -> ServerOpts {
    ServerOpts::new().arg("--rate-per-sec", 100_000).arg("--rate-burst", 100_000)
}

/// Publishes `n` messages with cids and waits for every ack (so they are on disk).
async fn publish_acked(c: &mut Client, room: &str, prefix: &str, n: usize) -> Vec<u64> {
    for i in 0..n {
        c.say_cid(room, &format!("{prefix}{i}"), &format!("{prefix}-{i}")).await;
    }
    let mut ids = Vec::new();
    while ids.len() < n {
        let v = c.recv_json().await;
        if v["event"] == "ack" {
            ids.push(v["id"].as_u64().unwrap());
        }
    }
    ids.sort();
    ids
}

/// Every `message` until `dur` of silence; panics on a duplicate id.
async fn drain_ids(c: &mut Client, dur: Duration) -> Vec<u64> {
    let mut ids = Vec::new();
    while let Some(v) = c.try_recv_json(dur).await {
        if v["event"] == "message" {
            let id = v["id"].as_u64().unwrap();
            assert!(!ids.contains(&id), "message {id} twice in one login: {v}");
            ids.push(id);
        }
    }
    ids
}

#[tokio::test]
async fn history_keeps_the_last_n_by_count_across_a_crash() {
    let mut s = Server::start(fast()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r").await;
    let before = publish_acked(&mut a, "r", "b", 10).await;
    s.kill();
    s.restart().await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r").await;
    let after = publish_acked(&mut a, "r", "a", 300).await;
    assert!(after[0] > before[9] + 1000, "ids jumped after the crash: {} then {}", before[9], after[0]);

    let mut c = Client::connect_as(&s, "u9", None).await;
    let l = c.login_since("r", 0).await;
    assert_eq!(l["recovered"], true, "nothing was trimmed: {l}");
    let got = drain_ids(&mut c, QUIET).await;
    let want: Vec<u64> = before.iter().chain(after.iter()).copied().collect();
    assert_eq!(got, want, "all 310 messages, in order (--history-max is 1,000)");
}

#[tokio::test]
async fn recovered_is_true_across_an_id_jump_and_false_past_the_window() {
    let mut s = Server::start(fast().arg("--history-max", 5)).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r").await;
    let before = publish_acked(&mut a, "r", "b", 3).await;
    s.kill();
    s.restart().await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r").await;
    let after = publish_acked(&mut a, "r", "a", 2).await;

    // A client that saw everything before the crash: the jump is no gap.
    let mut c = Client::connect_as(&s, "u9", None).await;
    let l = c.login_since("r", before[2]).await;
    assert_eq!(l["recovered"], true, "{l}");
    assert_eq!(drain_ids(&mut c, QUIET).await, after);
    // One that missed the first message: it is still kept (5 by count).
    let l = c.login_since("r", before[0] - 1).await;
    assert_eq!(l["recovered"], true, "{l}");
    // Three more messages push the first three out of the window.
    let more = publish_acked(&mut a, "r", "m", 3).await;
    let l = c.login_since("r", before[0]).await;
    assert_eq!(l["recovered"], false, "ids {} and {} are gone: {l}", before[1], before[2]);
    let got = drain_ids(&mut c, QUIET).await;
    assert_eq!(got, [after.clone(), more.clone()].concat());
    let l = c.login_since("r", before[2]).await;
    assert_eq!(l["recovered"], true, "the window starts right after {}: {l}", before[2]);
    // The others' copies of a login never carry the field.
    let mut d = Client::connect_as(&s, "u8", None).await;
    d.login_since("r", 0).await;
    let seen = c.recv_event("login").await;
    assert!(seen.get("recovered").is_none(), "{seen}");
}

#[tokio::test]
async fn a_queue_fills_in_what_the_history_lost() {
    let s = Server::start(fast().arg("--history-max", 3)).await;
    let (mut a, mut b) = two_in_room(&s, "r").await;
    let seen = publish_acked(&mut a, "r", "x", 1).await;
    assert_eq!(drain_ids(&mut b, QUIET).await, seen);
    b.close().await;
    let missed = publish_acked(&mut a, "r", "y", 6).await;
    let mut b = Client::connect_as(&s, "u2", None).await;
    let l = b.login_since("r", seen[0]).await;
    assert_eq!(l["recovered"], true, "three from the replay, three more from the queue: {l}");
    let mut got = drain_ids(&mut b, QUIET).await;
    got.sort();
    assert_eq!(got, missed, "each once");
}

/// The drain's entries stay queued until the client answers the ping that follows them.
#[tokio::test]
async fn queued_messages_leave_only_once_the_client_has_them() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b) = two_in_room(&s, "r").await;
    b.close().await;
    a.recv_event("logout").await;
    let sent = publish_acked(&mut a, "r", "q", 3).await;

    // Logs in and drops at once, never reading: nothing may be lost.
    let mut raw = RawWs::connect(&s).await;
    raw.send_json(&json!({"event":"auth","message":token("u2", None, 3600)})).await;
    raw.send_json(&json!({"event":"login","roomid":"r"})).await;
    drop(raw);
    a.recv_event("logout").await;

    // Reads the drain and the ping, but never answers it: still nothing lost.
    let mut raw = RawWs::connect(&s).await;
    raw.send_json(&json!({"event":"auth","message":token("u2", None, 3600)})).await;
    raw.send_json(&json!({"event":"login","roomid":"r"})).await;
    let mut got = Vec::new();
    let ping = loop {
        let f = raw.recv_frame(RECV_TIMEOUT).await.expect("a frame").expect("not closed");
        match f.opcode {
            OP_TEXT => {
                let v: Value = serde_json::from_slice(&f.payload).unwrap();
                if v["event"] == "message" {
                    assert_eq!(v["offline"], true);
                    got.push(v["id"].as_u64().unwrap());
                }
            }
            OP_PING => break f.payload,
            _ => {}
        }
    };
    assert_eq!(got, sent, "the ping follows the whole drain");
    drop(raw);
    a.recv_event("logout").await;

    // Answers it: the entries leave the queue.
    let mut raw = RawWs::connect(&s).await;
    raw.send_json(&json!({"event":"auth","message":token("u2", None, 3600)})).await;
    raw.send_json(&json!({"event":"login","roomid":"r"})).await;
    let mut again = Vec::new();
    loop {
        let f = raw.recv_frame(RECV_TIMEOUT).await.expect("a frame").expect("not closed");
        if f.opcode == OP_PING {
            assert_eq!(f.payload.len(), ping.len());
            raw.send_frame(true, 0, OP_PONG, &f.payload).await;
            break;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&f.payload) {
            if v["event"] == "message" {
                again.push(v["id"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(again, sent, "delivered again, since no pong came before");
    // A heartbeat round trip: the pong has been handled once the answer comes.
    raw.send_json(&json!({"event":"heartbeat","message":"ping"})).await;
    while raw.recv_json().await["event"] != "heartbeat" {}
    drop(raw);
    a.recv_event("logout").await;
    let mut b = Client::connect_as(&s, "u2", None).await;
    b.login("r").await;
    assert!(drain_ids(&mut b, QUIET).await.is_empty(), "confirmed entries are gone");
}

/// A member whose only connection is closing (here after a heartbeat timeout, while the server
/// waits for its close frame) is offline: what is published meanwhile is queued, not lost.
#[tokio::test]
async fn messages_to_a_closing_connection_are_queued() {
    let s = Server::start(fast().arg("--heartbeat", 1)).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r").await;
    // b never answers anything: the second tick closes it, then it is closing for a while.
    let mut b = RawWs::connect_as(&s, "u3", "r").await;
    let mut all = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut i = 0;
    while tokio::time::Instant::now() < until {
        a.say_cid("r", &format!("m{i}"), &format!("c{i}")).await;
        all.push(a.recv_event("ack").await["id"].as_u64().unwrap());
        i += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let mut live = BTreeSet::new();
    let mut closed = false;
    while let Ok(Some(f)) = b.recv_frame(Duration::from_secs(3)).await {
        match f.opcode {
            OP_TEXT => {
                let v: Value = serde_json::from_slice(&f.payload).unwrap();
                if v["event"] == "message" {
                    assert!(live.insert(v["id"].as_u64().unwrap()), "twice live: {v}");
                }
            }
            OP_CLOSE => closed = true,
            _ => {}
        }
    }
    assert!(closed, "the heartbeat closed b");
    assert!(live.len() < all.len(), "b was closed part-way: {} of {} live", live.len(), all.len());
    let mut b = Client::connect_as(&s, "u3", None).await;
    b.login("r").await;
    let queued: BTreeSet<u64> = drain_ids(&mut b, QUIET).await.into_iter().collect();
    assert!(live.is_disjoint(&queued), "nothing both live and queued: {:?}", live.intersection(&queued));
    let union: Vec<u64> = live.union(&queued).copied().collect();
    assert_eq!(union, all, "every message reached b, live or queued");
}

#[tokio::test]
async fn a_token_within_the_leeway_is_not_reported_expired_at_once() {
    let s = Server::start(ServerOpts::new().arg("--jwt-leeway", 5)).await;
    let mut c = Client::connect(&s).await;
    // Expired a second ago (whole seconds: up to two): accepted within the 5 s leeway.
    c.auth(&token("u1", None, -1)).await;
    c.login("r").await;
    c.expect_no_event("noauth", Duration::from_millis(1500)).await;
    let v = c.recv_json_within(Duration::from_secs(6)).await;
    assert_eq!((v["event"].as_str(), v["message"].as_str()), (Some("noauth"), Some("token expired")), "{v}");
}

/// Liveness counts frames: a peer sending a long fragmented message is not silent.
#[tokio::test]
async fn fragments_keep_a_connection_alive() {
    let s = Server::start(ServerOpts::new().arg("--heartbeat", 1)).await;
    let mut raw = RawWs::connect_as(&s, "u1", "r").await;
    let msg = json!({"event":"heartbeat","message":"ping"}).to_string();
    let (head, rest) = msg.as_bytes().split_at(4);
    raw.send_frame(false, 0, OP_TEXT, head).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        raw.send_frame(false, 0, OP_CONT, b"").await;
    }
    raw.send_frame(true, 0, OP_CONT, rest).await;
    loop {
        let v = raw.recv_json().await;
        if v["event"] == "heartbeat" && v["message"] == "pong" {
            break;
        }
    }
}

/// A clean stop with a TLS handshake still pending releases the id reservations: ids go on
/// without a jump.
#[tokio::test]
async fn a_pending_tls_handshake_does_not_make_ids_jump() {
    let mut s = Server::start(ServerOpts::new().tls()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r").await;
    assert_eq!(publish_acked(&mut a, "r", "x", 1).await, vec![1]);
    drop(a);
    let _stalled = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    s.stop().await;
    s.restart().await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r").await;
    assert_eq!(publish_acked(&mut a, "r", "y", 1).await, vec![2]);
}
