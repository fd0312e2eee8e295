//! Ordinary chat: login / message / logout broadcasts, rooms, names, cid acks and dedupe.
mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(800);

#[tokio::test]
async fn two_clients_chat_login_message_logout() {
    let s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", Some("Alice")).await;
    let la = a.login("r1").await;
    assert_login(&la, "r1", "u1", "Alice", 1, 1);

    let mut b = Client::connect_as(&s, "u2", Some("Bob")).await;
    let lb = b.login("r1").await;
    assert_login(&lb, "r1", "u2", "Bob", 2, 2);
    let seen_by_a = a.recv_json().await;
    assert_login(&seen_by_a, "r1", "u2", "Bob", 2, 2);

    // message with roomid: both get it, the sender too
    a.say("r1", "hello").await;
    for c in [&mut a, &mut b] {
        let m = c.recv_json().await;
        assert_message(&m, &[]);
        assert_eq!(m["id"], 1);
        assert_eq!(m["roomid"], "r1");
        assert_eq!(m["uid"], "u1");
        assert_eq!(m["name"], "Alice");
        assert_eq!(m["message"], "hello");
        assert_eq!(m["num"], 2);
        assert_eq!(m["total"], 2);
    }

    // message without roomid while in exactly one room
    b.send_json(&json!({"event":"message","message":"hi back"})).await;
    for c in [&mut a, &mut b] {
        let m = c.recv_json().await;
        assert_message(&m, &[]);
        assert_eq!(m["id"], 2);
        assert_eq!(m["uid"], "u2");
        assert_eq!(m["name"], "Bob");
        assert_eq!(m["message"], "hi back");
    }

    // leave: membership ends, total drops
    b.send_json(&json!({"event":"leave","roomid":"r1"})).await;
    let lo = a.recv_json().await;
    assert_logout(&lo, "r1", "u2", "Bob", 1, 1);
    b.expect_silence(QUIET).await;

    // join again, then disconnect: membership stays, so total stays 2
    let lb2 = b.login("r1").await;
    assert_login(&lb2, "r1", "u2", "Bob", 2, 2);
    assert_login(&a.recv_json().await, "r1", "u2", "Bob", 2, 2);
    b.close().await;
    let lo2 = a.recv_json().await;
    assert_logout(&lo2, "r1", "u2", "Bob", 1, 2);

    // a plain client that sent only valid input got nothing else (no error/ack/auth)
    a.expect_silence(QUIET).await;
}

#[tokio::test]
async fn abrupt_disconnect_broadcasts_logout() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, b) = two_in_room_as(&s, "r1", [Some("Alice"), Some("Bob")]).await;
    drop(b); // TCP dropped without a close frame
    let lo = a.recv_json().await;
    assert_logout(&lo, "r1", "u2", "Bob", 1, 2);
}

#[tokio::test]
async fn rooms_are_isolated_and_multi_room_connection() {
    let s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&s, "u2", None).await;
    b.login("r2").await;
    let mut c = Client::connect_as(&s, "u3", None).await;
    let l1 = c.login("r1").await;
    assert_login(&l1, "r1", "u3", "u3", 2, 2);
    let l2 = c.login("r2").await;
    assert_login(&l2, "r2", "u3", "u3", 2, 2);
    assert_login(&a.recv_json().await, "r1", "u3", "u3", 2, 2);
    assert_login(&b.recv_json().await, "r2", "u3", "u3", 2, 2);

    a.say("r1", "only r1").await;
    let m = a.recv_json().await;
    assert_eq!((m["roomid"].as_str(), m["message"].as_str(), m["id"].as_u64()), (Some("r1"), Some("only r1"), Some(1)));
    let m = c.recv_json().await;
    assert_eq!((m["roomid"].as_str(), m["message"].as_str()), (Some("r1"), Some("only r1")));
    b.expect_silence(QUIET).await;

    b.say("r2", "only r2").await;
    let m = b.recv_json().await;
    // ids are per room: r2 starts at 1 as well
    assert_eq!((m["roomid"].as_str(), m["message"].as_str(), m["id"].as_u64()), (Some("r2"), Some("only r2"), Some(1)));
    let m = c.recv_json().await;
    assert_eq!((m["roomid"].as_str(), m["message"].as_str()), (Some("r2"), Some("only r2")));
    a.expect_silence(QUIET).await;

    // c is in two rooms: a message without roomid is ambiguous
    c.send_json(&json!({"event":"message","message":"where?"})).await;
    c.expect_error("bad_room").await;
    // a room c never joined
    c.say("r3", "nope").await;
    c.expect_error("not_in_room").await;
    a.expect_silence(QUIET).await;
    b.expect_silence(Duration::from_millis(100)).await;

    // c's explicit message to r2 reaches b only
    c.say("r2", "to r2").await;
    let m = c.recv_json().await;
    assert_eq!(m["uid"], "u3");
    assert_eq!(m["roomid"], "r2");
    assert_eq!(m["id"], 2);
    assert_eq!(b.recv_json().await["message"], "to r2");
    a.expect_silence(QUIET).await;
}

#[tokio::test]
async fn message_in_no_room_is_not_in_room() {
    let s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.send_json(&json!({"event":"message","message":"hello?"})).await;
    a.expect_error("not_in_room").await;
    a.send_json(&json!({"event":"leave","roomid":"r1"})).await;
    a.expect_error("not_in_room").await;
}

#[tokio::test]
async fn empty_or_missing_roomid_means_default() {
    let s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.send_json(&json!({"event":"login"})).await;
    let l = a.recv_json().await;
    assert_login(&l, "default", "u1", "u1", 1, 1);
    let mut b = Client::connect_as(&s, "u2", None).await;
    b.send_json(&json!({"event":"login","roomid":""})).await;
    assert_login(&b.recv_json().await, "default", "u2", "u2", 2, 2);
    assert_login(&a.recv_json().await, "default", "u2", "u2", 2, 2);
    // on a message, an empty roomid is the default room too, not "the only room I am in"
    let mut c = Client::connect_as(&s, "u3", None).await;
    c.login("r1").await;
    c.send_json(&json!({"event":"message","roomid":"","message":"where?"})).await;
    c.expect_error("not_in_room").await;
    b.send_json(&json!({"event":"message","roomid":"","message":"here"})).await;
    assert_eq!(a.recv_event("message").await["roomid"], "default");
}

#[tokio::test]
async fn rooms_per_connection_are_capped() {
    let s = Server::start(ServerOpts::new().arg("--max-rooms-per-connection", 2)).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    a.login("r2").await;
    a.send_json(&json!({"event":"login","roomid":"r3"})).await;
    a.expect_error("bad_room").await;
    // a room already joined is still fine, and the connection keeps working
    a.send_json(&json!({"event":"login","roomid":"r2"})).await;
    a.say("r1", "still here").await;
    assert_eq!(a.recv_event("message").await["message"], "still here");
}

#[tokio::test]
async fn display_name_comes_from_token_then_login_then_uid() {
    let s = Server::start(ServerOpts::new()).await;
    // name claim wins over the login name
    let mut a = Client::connect_as(&s, "u1", Some("Alice")).await;
    a.send_json(&json!({"event":"login","roomid":"r1","name":"Mallory"})).await;
    assert_login(&a.recv_json().await, "r1", "u1", "Alice", 1, 1);
    // no name claim: the login name
    let mut b = Client::connect_as(&s, "u2", None).await;
    b.send_json(&json!({"event":"login","roomid":"r1","name":"bob"})).await;
    assert_login(&b.recv_json().await, "r1", "u2", "bob", 2, 2);
    assert_login(&a.recv_json().await, "r1", "u2", "bob", 2, 2);
    b.say("r1", "x").await;
    assert_eq!(b.recv_json().await["name"], "bob");
    assert_eq!(a.recv_json().await["name"], "bob");
    // neither: the uid
    let mut c = Client::connect_as(&s, "u3", None).await;
    c.send_json(&json!({"event":"login","roomid":"r1"})).await;
    assert_login(&c.recv_json().await, "r1", "u3", "u3", 3, 3);
    // a name claim out of bounds (over 64 characters) is ignored
    let mut d = Client::connect(&s).await;
    d.auth(&token("u4", Some(&"n".repeat(65)), 3600)).await;
    d.send_json(&json!({"event":"login","roomid":"r1","name":"dee"})).await;
    assert_login(&d.recv_json().await, "r1", "u4", "dee", 4, 4);
}

#[tokio::test]
async fn second_login_to_same_room_sends_no_broadcast() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;
    b.send_json(&json!({"event":"login","roomid":"r1"})).await;
    b.expect_silence(QUIET).await;
    a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn logout_only_when_last_connection_of_uid_goes() {
    let s = Server::start(ServerOpts::new()).await;
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    let mut b1 = Client::connect_as(&s, "u2", None).await;
    b1.login("r1").await;
    let mut b2 = Client::connect_as(&s, "u2", None).await;
    b2.login("r1").await;
    // num counts distinct uids
    a.say("r1", "count").await;
    let m = a.recv_event("message").await;
    assert_eq!((m["num"].as_u64(), m["total"].as_u64()), (Some(2), Some(2)));
    // both of u2's connections get the message
    assert_eq!(b1.recv_event("message").await["id"], 1);
    assert_eq!(b2.recv_event("message").await["id"], 1);

    b1.close().await;
    a.expect_no_event("logout", Duration::from_secs(1)).await;
    b2.close().await;
    let lo = a.recv_event("logout").await;
    assert_logout(&lo, "r1", "u2", "u2", 1, 2);
}

#[tokio::test]
async fn cid_gets_ack_and_is_deduplicated() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;

    a.say_cid("r1", "with cid", "c-42").await;
    // the ack and the own copy, in either order
    let x = a.recv_json().await;
    let y = a.recv_json().await;
    let (ack, own) = if x["event"] == "ack" { (x, y) } else { (y, x) };
    assert_keys(&ack, &["event", "cid", "id", "roomid"]);
    assert_eq!(ack["event"], "ack");
    assert_eq!(ack["cid"], "c-42");
    assert_eq!(ack["id"], 1);
    assert_eq!(ack["roomid"], "r1");
    assert_message(&own, &["cid"]);
    assert_eq!(own["cid"], "c-42");
    assert_eq!(own["id"], 1);
    let m = b.recv_json().await;
    assert_message(&m, &["cid"]);
    assert_eq!(m["cid"], "c-42");
    assert_eq!(m["message"], "with cid");

    // resend: same ack, no broadcast
    a.say_cid("r1", "with cid", "c-42").await;
    let ack2 = a.recv_json().await;
    assert_eq!(ack2, ack, "a repeated cid must get the first ack again");
    a.expect_silence(QUIET).await;
    b.expect_silence(Duration::from_millis(200)).await;

    // same cid in another room: still the first ack
    a.login("r2").await;
    a.say_cid("r2", "elsewhere", "c-42").await;
    assert_eq!(a.recv_json().await, ack);
    a.expect_silence(QUIET).await;

    // a new message without cid carries no cid, and ids continue
    a.say("r1", "plain").await;
    let m = a.recv_json().await;
    assert_message(&m, &[]);
    assert_eq!(m["id"], 2);
    assert_message(&b.recv_json().await, &[]);
}

#[tokio::test]
async fn cid_dedupe_is_per_uid() {
    let s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;
    a.say_cid("r1", "one", "same").await;
    assert_eq!(a.recv_event("ack").await["id"], 1);
    b.recv_event("message").await;
    b.say_cid("r1", "two", "same").await;
    let ack = b.recv_event("ack").await;
    assert_eq!(ack["id"], 2, "another uid's cid must not be deduplicated");
    let m = a.recv_event("message").await;
    assert_eq!(m["id"], 2);
    assert_eq!(m["message"], "two");
}

#[tokio::test]
async fn natter_token_subcommand_mints_usable_tokens() {
    let s = Server::start(ServerOpts::new()).await;
    let (st, out, err) =
        run_natter(&["token", "--secret", SECRET, "--sub", "cli-user", "--name", "Cli", "--ttl", "600"]);
    assert!(st.success(), "natter token failed: {err}");
    let tok = out.trim();
    assert_eq!(tok.split('.').count(), 3, "not a JWT: {out:?}");
    let (mut c, ok) = {
        let mut c = Client::connect_with(&s, ConnectOpts::v1()).await;
        c.auth(tok).await;
        let ok = c.recv_json().await;
        (c, ok)
    };
    assert_eq!(ok["event"], "auth", "{ok}");
    assert_eq!(ok["uid"], "cli-user");
    assert_eq!(ok["name"], "Cli");
    let exp = ok["exp"].as_i64().unwrap();
    assert!((exp - (now_secs() + 600)).abs() < 60, "exp {exp} not about now+600");
    c.uid = Some("cli-user".into());
    assert_login(&c.login("r1").await, "r1", "cli-user", "Cli", 1, 1);
}
