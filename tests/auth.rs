//! Identity: token places, bad tokens, failed-attempt limit, subprotocol confirmation,
//! auth timeout, expiry while connected, refresh, connections per uid, rate limit.
mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(800);

#[tokio::test]
async fn events_before_auth_get_the_exact_noauth_and_do_not_count() {
    let s = Server::start(ServerOpts::new()).await;
    let mut c = Client::connect(&s).await;
    // more events than the failed-attempt limit: they do not count
    for ev in [
        json!({"event":"login","roomid":"r1"}),
        json!({"event":"message","roomid":"r1","message":"hi"}),
        json!({"event":"leave","roomid":"r1"}),
        json!({"event":"login","roomid":"r1","name":"x"}),
        json!({"event":"message","message":"again"}),
        json!({"event":"heartbeat","message":"ping"}),
        json!({"event":"heartbeat","message":"pong"}),
    ] {
        c.send_json(&ev).await;
        let v = c.recv_json().await;
        assert_eq!(v, json!({"event":"noauth","message":NOAUTH_TEXT}), "answer to {ev}");
    }
    // none of it had an effect: a member of r1 sees nothing, and c is still allowed to auth
    let mut a = Client::connect_as(&s, "u1", None).await;
    assert_login(&a.login("r1").await, "r1", "u1", "u1", 1, 1);
    c.auth_as("u2", None, 3600).await;
    assert_login(&c.login("r1").await, "r1", "u2", "u2", 2, 2);
}

#[tokio::test]
async fn three_bad_tokens_close_1008() {
    let s = Server::start(ServerOpts::new()).await;
    let mut c = Client::connect(&s).await;
    c.auth("not-a-jwt").await;
    c.expect_noauth().await;
    c.auth(&token("u1", None, -120)).await; // expired beyond the leeway
    c.expect_noauth().await;
    // still open, still anonymous
    c.send_json(&json!({"event":"login","roomid":"r1"})).await;
    assert_eq!(c.expect_noauth().await, NOAUTH_TEXT);
    c.auth(&token_claims("wrong-secret", &json!({"sub":"u1","exp":now_secs()+3600}))).await;
    c.expect_noauth().await;
    c.expect_close(1008).await;
}

#[tokio::test]
async fn forged_and_malformed_tokens_are_refused() {
    let s = Server::start(ServerOpts::new()).await;
    let mut c = Client::connect(&s).await;
    c.auth(&alg_none_token("u1")).await;
    c.expect_noauth().await;
    // oversized token, correctly signed (padding claim): refused unread
    let big = token_claims(SECRET, &json!({"sub":"u1","exp":now_secs()+3600,"pad":"p".repeat(9000)}));
    assert!(big.len() > 8192);
    c.auth(&big).await;
    c.expect_noauth().await;
    // exp is required
    c.auth(&token_claims(SECRET, &json!({"sub":"u1"}))).await;
    c.expect_noauth().await;
    c.expect_close(1008).await;

    let mut d = Client::connect(&s).await;
    // nbf in the future
    d.auth(&token_claims(SECRET, &json!({"sub":"u1","exp":now_secs()+3600,"nbf":now_secs()+600}))).await;
    d.expect_noauth().await;
    // exp as a string (CVE-2026-25537 shape)
    d.auth(&token_claims(SECRET, &json!({"sub":"u1","exp":format!("{}", now_secs()+3600)}))).await;
    d.expect_noauth().await;
    // RS256-labelled header on an HS256 signature (algorithm pinned)
    let hs = token("u1", None, 3600);
    let mut parts: Vec<String> = hs.split('.').map(String::from).collect();
    parts[0] = b64url(br#"{"alg":"HS512","typ":"JWT"}"#);
    d.auth(&parts.join(".")).await;
    d.expect_noauth().await;
    d.expect_close(1008).await;

    // a token over the configured size limit
    let s2 = Server::start(ServerOpts::new().arg("--max-token-bytes", 200)).await;
    let mut e = Client::connect(&s2).await;
    let t = token_claims(SECRET, &json!({"sub":"u1","exp":now_secs()+3600,"pad":"p".repeat(300)}));
    e.auth(&t).await;
    e.expect_noauth().await;
    e.auth_as("u1", None, 3600).await; // a small one is fine
    e.login("r1").await;
}

#[tokio::test]
async fn failed_auth_limit_is_configurable() {
    let s = Server::start(ServerOpts::new().arg("--max-auth-failures", 1)).await;
    let mut c = Client::connect(&s).await;
    c.auth("garbage").await;
    c.expect_noauth().await;
    c.expect_close(1008).await;
}

#[tokio::test]
async fn token_in_header_query_and_auth_event() {
    let s = Server::start(ServerOpts::new()).await;
    let mut h =
        Client::connect_with(&s, ConnectOpts { bearer: Some(token("uh", Some("Header"), 3600)), ..Default::default() })
            .await;
    h.uid = Some("uh".into());
    assert_login(&h.login("r1").await, "r1", "uh", "Header", 1, 1);
    let mut q = Client::connect_with(
        &s,
        ConnectOpts { query_token: Some(token("uq", Some("Query"), 3600)), ..Default::default() },
    )
    .await;
    q.uid = Some("uq".into());
    assert_login(&q.login("r1").await, "r1", "uq", "Query", 2, 2);
    let mut e = Client::connect_as(&s, "ue", Some("Event")).await;
    assert_login(&e.login("r1").await, "r1", "ue", "Event", 3, 3);
    // plain clients: no auth confirmation was sent to any of them
    h.recv_event("login").await;
    h.recv_event("login").await;
    h.expect_silence(QUIET).await;
    q.recv_event("login").await;
    q.expect_silence(Duration::from_millis(100)).await;
    e.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn header_token_wins_over_query_token() {
    let s = Server::start(ServerOpts::new()).await;
    let mut c = Client::connect_with(
        &s,
        ConnectOpts {
            subprotocol: true,
            bearer: Some(token("first", None, 3600)),
            query_token: Some(token("second", None, 3600)),
            ..Default::default()
        },
    )
    .await;
    let ok = c.recv_json().await;
    assert_eq!(ok["event"], "auth");
    assert_eq!(ok["uid"], "first");
}

#[tokio::test]
async fn subprotocol_client_gets_auth_ok_plain_does_not() {
    let s = Server::start(ServerOpts::new()).await;
    let mut v1 = Client::connect_with(&s, ConnectOpts::v1()).await;
    assert_eq!(v1.protocol.as_deref(), Some("natter.v1"), "server must select natter.v1");
    let exp = now_secs() + 3600;
    v1.auth(&token_claims(SECRET, &json!({"sub":"u1","name":"Alice","exp":exp}))).await;
    let ok = v1.recv_json().await;
    assert_eq!(ok, json!({"event":"auth","message":"ok","uid":"u1","name":"Alice","exp":exp}));
    // without a name claim the name is the uid
    let (_c, ok) = Client::connect_v1_as(&s, "u2", None).await;
    assert_keys(&ok, &["event", "message", "uid", "name", "exp"]);
    assert_eq!(ok["name"], "u2");

    let mut plain = Client::connect(&s).await;
    assert_eq!(plain.protocol, None, "no subprotocol offered, none selected");
    plain.auth(&token("u3", None, 3600)).await;
    plain.expect_silence(QUIET).await;

    // with the token in the upgrade request: the confirmation is the first message
    let mut hv1 = Client::connect_with(
        &s,
        ConnectOpts { subprotocol: true, bearer: Some(token("u4", Some("Dora"), 3600)), ..Default::default() },
    )
    .await;
    let ok = hv1.recv_json().await;
    assert_eq!(
        (ok["event"].as_str(), ok["message"].as_str(), ok["uid"].as_str(), ok["name"].as_str()),
        (Some("auth"), Some("ok"), Some("u4"), Some("Dora"))
    );
    let mut qv1 = Client::connect_with(
        &s,
        ConnectOpts { subprotocol: true, query_token: Some(token("u5", None, 3600)), ..Default::default() },
    )
    .await;
    assert_eq!(qv1.recv_json().await["uid"], "u5");
}

#[tokio::test]
async fn invalid_upgrade_token_leaves_client_anonymous_and_counts() {
    let s = Server::start(ServerOpts::new().arg("--max-auth-failures", 2)).await;
    let mut c =
        Client::connect_with(&s, ConnectOpts { bearer: Some(token("u1", None, -600)), ..Default::default() }).await;
    c.expect_noauth().await;
    c.send_json(&json!({"event":"login","roomid":"r1"})).await;
    assert_eq!(c.expect_noauth().await, NOAUTH_TEXT);
    // the header failure counted: one more failure closes
    c.auth("junk").await;
    c.expect_noauth().await;
    c.expect_close(1008).await;

    let mut q = Client::connect_with(&s, ConnectOpts { query_token: Some("junk".into()), ..Default::default() }).await;
    q.expect_noauth().await;
    q.auth_as("u1", None, 3600).await;
    q.login("r1").await;
}

#[tokio::test]
async fn auth_timeout_closes_1008() {
    let s = Server::start(ServerOpts::new().arg("--auth-timeout", 1)).await;
    let mut idle = Client::connect(&s).await;
    let mut quick = Client::connect_as(&s, "u1", None).await;
    quick.login("r1").await;
    assert_eq!(idle.recv_close(Duration::from_secs(10)).await, Some(1008));
    // the authenticated one stays well past the auth timeout
    tokio::time::sleep(Duration::from_secs(2)).await;
    quick.say("r1", "still here").await;
    assert_eq!(quick.recv_json().await["message"], "still here");
}

#[tokio::test]
async fn token_expiry_while_connected_then_close_after_grace() {
    let s = Server::start(ServerOpts::new().arg("--expiry-grace", 1)).await;
    let mut c = Client::connect(&s).await;
    c.auth_as("u1", None, 1).await;
    c.login("r1").await;
    let v = c.recv_json_within(Duration::from_secs(20)).await;
    assert_eq!(v, json!({"event":"noauth","message":"token expired"}));
    // until a fresh auth, events get noauth
    c.say("r1", "after expiry").await;
    let v = c.recv_json().await;
    assert_eq!(v["event"], "noauth", "{v}");
    assert_eq!(c.recv_close(Duration::from_secs(10)).await, Some(1008));
}

#[tokio::test]
async fn token_refresh_keeps_the_session() {
    let s = Server::start(ServerOpts::new().arg("--expiry-grace", 1)).await;
    let mut c = Client::connect_with(&s, ConnectOpts::v1()).await;
    c.auth_as("u1", None, 1).await;
    assert_eq!(c.recv_json().await["event"], "auth");
    c.login("r1").await;
    // refresh with another uid: refused, session unchanged
    c.auth(&token("u2", None, 3600)).await;
    assert_eq!(c.recv_json().await, json!({"event":"noauth","message":"uid mismatch"}));
    // wait for the expiry, then refresh with the same uid
    assert_eq!(c.recv_json_within(Duration::from_secs(20)).await, json!({"event":"noauth","message":"token expired"}));
    let exp = now_secs() + 3600;
    c.auth(&token_claims(SECRET, &json!({"sub":"u1","exp":exp}))).await;
    let ok = c.recv_json().await;
    assert_eq!(ok, json!({"event":"auth","message":"ok","uid":"u1","name":"u1","exp":exp}));
    // past the grace the connection is still open and usable
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.say("r1", "refreshed").await;
    let m = c.recv_json().await;
    assert_eq!((m["message"].as_str(), m["uid"].as_str()), (Some("refreshed"), Some("u1")));
}

#[tokio::test]
async fn connections_per_uid_limit() {
    let s = Server::start(ServerOpts::new().arg("--max-connections-per-uid", 2)).await;
    let (mut c1, _) = Client::connect_v1_as(&s, "u1", None).await;
    let (_c2, _) = Client::connect_v1_as(&s, "u1", None).await;
    let mut c3 = Client::connect_with(&s, ConnectOpts::v1()).await;
    c3.auth(&token("u1", None, 3600)).await;
    let e = c3.recv_json().await;
    assert_eq!(e["event"], "error", "no auth confirmation over the limit: {e}");
    assert_eq!(e["code"], "too_many_connections");
    assert_keys(&e, &["event", "code", "message"]);
    c3.expect_close(1008).await;
    // another uid is not affected
    let (_o, _) = Client::connect_v1_as(&s, "u2", None).await;
    // after one closes, there is room again
    c1.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c4, _) = Client::connect_v1_as(&s, "u1", None).await;
    c4.login("r1").await;
}

#[tokio::test]
async fn rate_limit_drops_then_closes_after_three() {
    let s = Server::start(ServerOpts::new().arg("--rate-per-sec", 1).arg("--rate-burst", 3)).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;
    // The login took one from the bucket too (logins share the rate): let it refill.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for i in 0..4 {
        a.say("r1", &format!("burst {i}")).await;
    }
    let mut messages = vec![];
    let mut errors = 0;
    for _ in 0..4 {
        let v = a.recv_json().await;
        match v["event"].as_str() {
            Some("message") => messages.push(v["message"].as_str().unwrap().to_string()),
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                errors += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(messages, vec!["burst 0", "burst 1", "burst 2"]);
    assert_eq!(errors, 1);
    // the dropped message was not published
    for i in 0..3 {
        assert_eq!(b.recv_json().await["message"], format!("burst {i}"));
    }
    b.expect_silence(QUIET).await;
    // more refusals within 10 s (whatever refilled meanwhile is published): 3 in total -> 1008
    for i in 0..6 {
        if !a.try_send_json(&json!({"event":"message","roomid":"r1","message":format!("more {i}")})).await {
            break;
        }
    }
    let (seen, code) = a.recv_until_close(Duration::from_secs(10)).await;
    let limited = seen.iter().filter(|v| v["code"] == "rate_limited").count();
    assert!(limited >= 2, "expected rate_limited errors before the close, saw {seen:?}");
    assert_eq!(code, Some(1008));
}
