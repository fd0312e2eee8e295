//! Recovery at the edges: ids after a crash, and offline delivery into a connection whose
//! outbound queue fills up.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// Messages fanned out live but not yet flushed may be lost by a crash; the ids given after the
/// restart must still be above every id a client has seen.
#[tokio::test]
async fn ids_stay_increasing_after_sigkill() {
    let mut s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    let mut seen = 0;
    for i in 0..5 {
        a.say("r1", &format!("live {i}")).await;
        seen = a.recv_event("message").await["id"].as_u64().unwrap();
    }
    assert_eq!(seen, 5);
    s.kill();
    s.restart().await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    a.say("r1", "after the crash").await;
    let id = a.recv_event("message").await["id"].as_u64().unwrap();
    assert!(id > seen, "id {id} after a crash must be above the {seen} already delivered");
}

/// A member with more queued messages than its outbound queue holds: what does not fit stays
/// queued for the next login, each login gets further, and every message arrives, in order.
/// An entry leaves the queue when the client's pong confirms it; a reconnect racing that pong
/// may get the last part again, which the client drops by id (docs/protocol.md).
#[tokio::test]
async fn offline_messages_that_do_not_fit_stay_queued() {
    let s = Server::start(ServerOpts::new().arg("--outbound-max-messages", 6)).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;
    b.close().await;
    a.recv_event("logout").await;
    for i in 1..=20 {
        a.say("r1", &format!("m{i}")).await;
        assert_eq!(a.recv_event("message").await["id"], i);
    }

    let mut got: Vec<u64> = Vec::new();
    for attempt in 0..20 {
        let got_before = got.last().copied().unwrap_or(0);
        let mut b = Client::connect_as(&s, "u2", None).await;
        b.send_json(&json!({"event":"login","roomid":"r1"})).await;
        let mut this_login: Vec<u64> = Vec::new();
        // Read until the server closes (queue full: 1013) or goes quiet (everything fitted).
        loop {
            match b.recv(Duration::from_secs(2)).await {
                Incoming::Json(e) if e["event"] == "message" => {
                    assert_eq!(e["offline"], true);
                    let id = e["id"].as_u64().unwrap();
                    assert!(this_login.last().is_none_or(|l| *l < id), "in order within a login: {this_login:?} {id}");
                    this_login.push(id);
                    if got.last().is_none_or(|l| *l < id) {
                        got.push(id);
                    }
                }
                Incoming::Json(_) => {}
                Incoming::Close(code, _) => {
                    assert_eq!(code, Some(1013));
                    break;
                }
                Incoming::Eof(_) | Incoming::Timeout => break,
                _ => {}
            }
        }
        // A login may repeat what the last one got: entries leave the queue only when the pong
        // that confirms them arrives, and a client may lose that pong (tungstenite replaces a
        // pong it could not write yet with its close reply). It never skips one, and over the
        // attempts the whole queue arrives (asserted below).
        assert!(this_login.first().is_some_and(|f| *f <= got_before + 1), "login {attempt} skipped: {this_login:?}");
        if got.len() >= 20 {
            break;
        }
    }
    assert_eq!(got, (1..=20).collect::<Vec<u64>>(), "every queued message, in order, none skipped");
}
