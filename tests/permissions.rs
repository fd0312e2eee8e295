//! Room permissions and credentials over real sockets: the token's rooms claim, the server's
//! public rooms, a refreshed token with fewer rooms, and what stops startup (short secrets, bad
//! patterns), audience and issuer, names with format characters. A refused room must give
//! nothing away: no history, live traffic, queued messages, notices or counts.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(800);

/// No public rooms: only the rooms claim lets a token in (the product's default).
async fn private_server() -> Server {
    Server::start(ServerOpts::new().public_rooms(None)).await
}

async fn connect_token(s: &Server, uid: &str, tok: &str) -> Client {
    let mut c = Client::connect(s).await;
    c.auth(tok).await;
    c.uid = Some(uid.to_string());
    c
}

async fn login_refused(c: &mut Client, room: &str, since: Option<u64>) {
    let mut ev = json!({"event":"login","roomid":room});
    if let Some(k) = since {
        ev["since"] = json!(k);
    }
    c.send_json(&ev).await;
    let e = c.expect_error("forbidden_room").await;
    assert!(e["message"].as_str().unwrap().contains(room), "the error names the room: {e}");
}

/// The connection is still open and answering: a heartbeat ping gets its pong.
async fn still_open(c: &mut Client) {
    c.send_json(&json!({"event":"heartbeat","message":"ping"})).await;
    let v = c.recv_json().await;
    assert_eq!(v, json!({"event":"heartbeat","message":"pong"}), "connection still serves");
}

#[tokio::test]
async fn a_forbidden_room_gives_nothing_away() {
    let s = private_server().await;
    let mut alice = connect_token(&s, "alice", &token_rooms("alice", &["secret"])).await;
    let mut bob = connect_token(&s, "bob", &token_rooms("bob", &["secret", "lobby"])).await;
    alice.login("secret").await;
    bob.login("secret").await;
    alice.recv_event("login").await; // bob's
    for i in 0..3 {
        alice.say("secret", &format!("history {i}")).await;
    }
    for _ in 0..3 {
        bob.recv_event("message").await;
    }

    // No claim, no public rooms: nowhere. A claim for other rooms: not this one.
    let mut eve = connect_token(&s, "eve", &token("eve", None, 3600)).await;
    login_refused(&mut eve, "secret", Some(0)).await;
    login_refused(&mut eve, "default", None).await;
    let mut mallory = connect_token(&s, "mallory", &token_rooms("mallory", &["lobby", "secret-*"])).await;
    login_refused(&mut mallory, "secret", Some(0)).await;
    mallory.login("lobby").await;

    // Nobody in the room heard of them, and the counts did not move.
    alice.expect_no_event("login", QUIET).await;
    alice.say("secret", "live").await;
    let live = bob.recv_event("message").await;
    assert_eq!((live["num"].as_u64(), live["total"].as_u64()), (Some(2), Some(2)), "{live}");
    // Not a byte of the room: no replay, no live message, no notice.
    eve.expect_silence(QUIET).await;
    mallory.expect_silence(QUIET).await;
    still_open(&mut eve).await;
    eve.say("secret", "let me in").await;
    eve.expect_error("not_in_room").await;
}

#[tokio::test]
async fn queued_messages_stay_queued_for_a_token_that_lost_the_room() {
    let s = private_server().await;
    let mut carol = connect_token(&s, "carol", &token_rooms("carol", &["vault"])).await;
    carol.login("vault").await;
    carol.close().await;
    let mut alice = connect_token(&s, "alice", &token_rooms("alice", &["vault"])).await;
    alice.login("vault").await;
    alice.say_cid("vault", "while carol is away 1", "a1").await;
    alice.say_cid("vault", "while carol is away 2", "a2").await;
    for _ in 0..2 {
        alice.recv_event("ack").await;
    }

    // A token without the room: refused, and the queue is not drained into this connection.
    let mut carol = connect_token(&s, "carol", &token_rooms("carol", &["elsewhere"])).await;
    login_refused(&mut carol, "vault", Some(0)).await;
    let own = carol.login("elsewhere").await;
    assert_eq!(own["roomid"], "elsewhere");
    carol.expect_silence(QUIET).await;
    carol.close().await;

    // With the room allowed again, nothing was lost.
    let mut carol = connect_token(&s, "carol", &token_rooms("carol", &["vault"])).await;
    carol.login("vault").await;
    let texts: Vec<String> = vec![
        carol.recv_event("message").await["message"].as_str().unwrap().into(),
        carol.recv_event("message").await["message"].as_str().unwrap().into(),
    ];
    assert_eq!(texts, ["while carol is away 1", "while carol is away 2"]);
}

#[tokio::test]
async fn a_refreshed_token_with_fewer_rooms_leaves_the_others() {
    let s = private_server().await;
    let (mut dave, _) = {
        let mut c = Client::connect_with(&s, ConnectOpts::v1()).await;
        c.auth(&token_rooms("dave", &["team-*"])).await;
        c.uid = Some("dave".into());
        let ok = c.recv_json().await;
        assert_eq!(ok["message"], "ok", "{ok}");
        (c, ok)
    };
    dave.login("team-a").await;
    dave.login("team-b").await;
    let mut frank = connect_token(&s, "frank", &token_rooms("frank", &["*"])).await;
    frank.login("team-b").await;
    dave.recv_event("login").await; // frank's

    dave.auth(&token_rooms("dave", &["team-a"])).await;
    let ok = dave.recv_json().await;
    assert_eq!((ok["event"].as_str(), ok["message"].as_str()), (Some("auth"), Some("ok")), "{ok}");
    let e = dave.expect_error("forbidden_room").await;
    assert!(e["message"].as_str().unwrap().contains("team-b"), "{e}");
    // As if by `leave`: the others see the logout, and the membership ended.
    let out = frank.recv_event("logout").await;
    assert_eq!((out["uid"].as_str(), out["num"].as_u64(), out["total"].as_u64()), (Some("dave"), Some(1), Some(1)));

    frank.say("team-b", "dave cannot read this").await;
    frank.recv_event("message").await;
    dave.say("team-b", "nor write").await;
    dave.expect_error("not_in_room").await;
    dave.say("team-a", "still here").await;
    let mine = dave.recv_event("message").await;
    assert_eq!((mine["roomid"].as_str(), mine["message"].as_str()), (Some("team-a"), Some("still here")));
    dave.expect_silence(QUIET).await;
    login_refused(&mut dave, "team-b", None).await;
}

#[tokio::test]
async fn public_rooms_are_for_tokens_without_the_claim() {
    let s = Server::start(ServerOpts::new().public_rooms(Some("lobby,help-*"))).await;
    let mut anon = connect_token(&s, "anon", &token("anon", None, 3600)).await;
    anon.login("lobby").await;
    anon.login("help-1").await;
    login_refused(&mut anon, "team", None).await;
    login_refused(&mut anon, "help", None).await;
    // A claim replaces the public rooms, it does not add to them.
    let mut member = connect_token(&s, "member", &token_rooms("member", &["team"])).await;
    member.login("team").await;
    login_refused(&mut member, "lobby", None).await;
    // A claim that is not a list of patterns is a bad token.
    let mut odd = Client::connect(&s).await;
    odd.auth(&token_claims(SECRET, &json!({"sub":"odd","exp":now_secs()+3600,"rooms":"bad room"}))).await;
    assert!(odd.expect_noauth().await.contains("rooms"));
}

#[tokio::test]
async fn natter_token_mints_the_rooms_claim() {
    let (st, out, err) = run_natter(&["token", "--secret", SECRET, "--sub", "tina", "--rooms", "team-*,lobby"]);
    assert!(st.success(), "{err}");
    let s = private_server().await;
    let mut tina = connect_token(&s, "tina", out.trim()).await;
    tina.login("team-x").await;
    tina.login("lobby").await;
    login_refused(&mut tina, "other", None).await;
    let (st, _, err) = run_natter(&["token", "--secret", SECRET, "--sub", "tina", "--rooms", "a b"]);
    assert!(!st.success());
    assert!(err.contains("--rooms") && err.contains("a b"), "{err}");
}

#[test]
fn short_secrets_and_bad_patterns_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data", data];
        args.extend_from_slice(extra);
        run_natter(&args)
    };
    let (st, _, err) = serve(&["--jwt-secret", "too-short-secret"]);
    assert!(!st.success());
    assert!(err.contains("--jwt-secret") && err.contains("32"), "{err}");
    let file = dir.path().join("secret");
    std::fs::write(&file, "0123456789\n").unwrap();
    let (st, _, err) = serve(&["--jwt-secret-file", file.to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains("--jwt-secret-file") && err.contains("10 bytes"), "{err}");
    let (st, _, err) = serve(&["--jwt-secret", SECRET, "--public-rooms", "lobby,bad room"]);
    assert!(!st.success());
    assert!(err.contains("--public-rooms") && err.contains("bad room"), "{err}");
    let (st, _, err) = serve(&["--jwt-secret", SECRET, "--jwt-audience", ""]);
    assert!(!st.success());
    assert!(err.contains("--jwt-audience"), "{err}");
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let s =
        Server::start(ServerOpts::new().arg("--jwt-audience", "chat").arg("--jwt-issuer", "https://id.example")).await;
    let claims = |aud: Option<&str>, iss: Option<&str>| {
        let mut c = json!({"sub":"u","exp":now_secs()+3600});
        if let Some(a) = aud {
            c["aud"] = json!(a);
        }
        if let Some(i) = iss {
            c["iss"] = json!(i);
        }
        token_claims(SECRET, &c)
    };
    let mut ok = Client::connect_with(&s, ConnectOpts::v1()).await;
    ok.auth(&claims(Some("chat"), Some("https://id.example"))).await;
    assert_eq!(ok.recv_json().await["message"], "ok");
    for (aud, iss) in [
        (None, Some("https://id.example")),
        (Some("other"), Some("https://id.example")),
        (Some("chat"), None),
        (Some("chat"), Some("https://evil.example")),
    ] {
        let mut c = Client::connect(&s).await;
        c.auth(&claims(aud, iss)).await;
        let why = c.expect_noauth().await;
        assert!(why.contains("token"), "aud {aud:?} iss {iss:?}: {why}");
    }
}

#[tokio::test]
async fn names_with_format_characters_are_refused() {
    let s = Server::start(ServerOpts::new()).await;
    let mut c = Client::connect_as(&s, "u1", None).await;
    for bad in ["evil\u{202E}txt.exe", "zero\u{200B}width", "\u{2066}isolate"] {
        c.send_json(&json!({"event":"login","roomid":"r","name":bad})).await;
        c.expect_error("bad_field").await;
    }
    // In the token, such a name is ignored: the uid stands in.
    let mut t = Client::connect(&s).await;
    t.auth(&token("u2", Some("admin\u{200D}"), 3600)).await;
    t.uid = Some("u2".into());
    let own = t.login("r").await;
    assert_eq!(own["name"], "u2", "{own}");
}

/// `--dev` without `--listen` serves this machine only.
#[test]
fn dev_listens_on_loopback_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(natter_bin())
        .args(["serve", "--dev", "--data", "data"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Either it listens there, or port 8443 is taken on this machine and the error says where.
    assert!(
        line.contains("//127.0.0.1:8443") || err.contains("cannot listen on 127.0.0.1:8443"),
        "stdout {line:?}, stderr {err}"
    );
}

/// `/dev/token` mints tokens for anyone who asks: only for a loopback peer, and not for a request
/// a proxy forwarded.
#[tokio::test]
async fn dev_token_answers_this_machine_only() {
    let s = Server::start(ServerOpts::new().tls().flag("--dev")).await;
    let ok = http_get(&s, "/dev/token?uid=dora&rooms=team-*").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let tok: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    let mut dora = connect_token(&s, "dora", tok["token"].as_str().unwrap()).await;
    dora.login("team-1").await;
    login_refused(&mut dora, "lobby", None).await;
    let req = format!(
        "GET /dev/token?uid=mallory HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
        s.port
    );
    let forwarded = raw_http(&s, &req).await;
    assert_eq!(forwarded.status, 403, "{}", forwarded.body);
    assert!(!forwarded.body.contains("token\""), "{}", forwarded.body);
}

/// `--metrics-listen`: `/metrics` moves to its own address, and the public port hides it.
#[tokio::test]
async fn metrics_listen_moves_metrics_off_the_public_port() {
    let s = Server::start(ServerOpts::new().arg("--metrics-listen", "127.0.0.1:0")).await;
    assert_eq!(http_get(&s, "/metrics").await.status, 404);
    assert_eq!(http_get(&s, "/healthz").await.status, 200, "health checks stay on the main port");
    let log = s.stderr();
    let addr = log
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in the log: {log}"));
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut out)).await.unwrap().unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("natter_"), "{out}");
}

/// `login` and `leave` count toward the event rate: a loop over fresh room ids is cut off with
/// `rate_limited` and then close 1008, and does not get to create room after room.
#[tokio::test]
async fn login_floods_are_rate_limited() {
    let s = Server::start(ServerOpts::new().arg("--rate-per-sec", 5).arg("--rate-burst", 10)).await;
    let (mut a, mut b) = two_in_room(&s, "calm").await;
    let mut flood = Client::connect_as(&s, "flooder", None).await;
    for i in 0..200 {
        if !flood.try_send_json(&json!({"event":"login","roomid":format!("fresh-{i}")})).await {
            break;
        }
    }
    let (seen, code) = flood.recv_until_close(Duration::from_secs(10)).await;
    let joined = seen.iter().filter(|v| v["event"] == "login").count();
    let limited = seen.iter().filter(|v| v["code"] == "rate_limited").count();
    assert_eq!(code, Some(1008), "closed for the rate: {seen:?}");
    assert!(limited >= 1, "rate_limited before the close");
    assert!(joined <= 12, "at most the burst (and what refilled) got in: {joined} logins");
    // The room next door did not notice.
    a.say("calm", "still fine").await;
    assert_eq!(b.recv_event("message").await["message"], "still fine");
}

/// `--max-rooms-per-uid`: memberships, not connections, count (they outlive a disconnect and end
/// with `leave`), and a refused join leaves no key of the room behind.
#[tokio::test]
async fn rooms_per_uid_are_capped() {
    let mut s = Server::start(ServerOpts::new().arg("--max-rooms-per-uid", 3)).await;
    let mut c = Client::connect_as(&s, "u", None).await;
    for r in ["a", "b", "c"] {
        c.login(r).await;
    }
    c.send_json(&json!({"event":"login","roomid":"refused"})).await;
    let e = c.expect_error("too_many_rooms").await;
    assert!(e["message"].as_str().unwrap().contains('3'), "{e}");
    c.login_since("a", 0).await; // a room it is a member of already is fine (with since: its own login answers)
    drop(c);
    // Still a member of three after the connection went away.
    let mut c = Client::connect_as(&s, "u", None).await;
    c.send_json(&json!({"event":"login","roomid":"refused"})).await;
    c.expect_error("too_many_rooms").await;
    c.login("b").await;
    c.send_json(&json!({"event":"leave","roomid":"b"})).await;
    c.login("d").await; // `leave` ended a membership: room for one more
    c.close().await;
    s.terminate();
    s.wait_exit(Duration::from_secs(20)).await;
    let (st, out, err) = run_natter(&["keys", "*refused*", "--data", s.data_dir.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert_eq!(out.trim(), "(empty array)", "a refused join leaves no key: {out}");
}
