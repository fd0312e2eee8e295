//! `natter dump` and `natter restore` on real data dirs: a stopped server's store moved to a new
//! dir serves the same replay, offline queues and dedupe answers, and ids go on without reuse;
//! what restore refuses (a malformed line, a store in use or not empty, a missing file).
mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(800);

/// The `message` events that arrive until the connection is quiet.
async fn messages(c: &mut Client) -> Vec<Value> {
    let mut out = vec![];
    loop {
        match c.recv(QUIET).await {
            Incoming::Json(v) if v["event"] == "message" => out.push(v),
            Incoming::Json(_) => {}
            Incoming::Timeout => return out,
            other => panic!("expected messages, got {other:?}"),
        }
    }
}

/// What a returning client gets from `s`: u1's replay of r1 from `since: 0`, u2's offline
/// queues of r1 and r2, the ack of a repeated cid, and the id of a new message.
async fn what_clients_get(s: &Server) -> (Vec<Value>, Vec<Value>, Vec<Value>, Value, u64) {
    let mut a = Client::connect_as(s, "u1", Some("Alice")).await;
    let login = a.login_since("r1", 0).await;
    assert_eq!(login["recovered"], true, "{login}");
    let replay = messages(&mut a).await;
    let mut b = Client::connect_as(s, "u2", Some("Bob")).await;
    b.login("r1").await;
    let q1 = messages(&mut b).await;
    b.login("r2").await;
    let q2 = messages(&mut b).await;
    a.say_cid("r1", "one again", "c-1").await;
    let ack = a.recv_event("ack").await;
    a.say("r1", "after the move").await;
    let id = a.recv_event("message").await["id"].as_u64().unwrap();
    (replay, q1, q2, ack, id)
}

fn natter_ok(args: &[&str]) -> String {
    let (st, _, err) = run_natter(args);
    assert!(st.success(), "natter {args:?} failed: {err}");
    err
}

#[tokio::test]
async fn a_restored_store_serves_what_the_original_would() {
    let mut s = Server::start(ServerOpts::new()).await;
    let (mut a, mut b) = two_in_room_as(&s, "r1", [Some("Alice"), Some("Bob")]).await;
    a.login("r2").await;
    b.login("r2").await;
    b.close().await;
    a.recv_event("logout").await;
    a.recv_event("logout").await;
    a.say_cid("r1", "one", "c-1").await;
    a.recv_event("ack").await;
    for (room, text) in [("r1", "two ü \"quoted\""), ("r2", "in r2"), ("r1", "three")] {
        a.say(room, text).await;
        a.recv_event("message").await;
    }
    // A running server holds the store: dump says so.
    let data = s.data_dir.to_str().unwrap().to_string();
    let (st, out, err) = run_natter(&["dump", "--data", &data]);
    assert!(!st.success() && out.is_empty(), "dump of a store in use must fail: {out}");
    assert!(err.contains("in use") && err.contains("stop it first"), "{err}");
    s.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("natter.jsonl");
    let file = file.to_str().unwrap();
    natter_ok(&["dump", "--data", &data, "--out", file]);
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.starts_with("{\"natter_dump\":1,"), "{text}");
    for key in ["room:r1:members", "room:r1:seq", "room:r1:history", "offline:u2", "user:u2:rooms", "dedupe:u1:c-1"] {
        assert!(text.contains(&format!("{{\"key\":\"{key}\"")), "the dump lacks {key}:\n{text}");
    }
    let restored = dir.path().join("restored");
    let err = natter_ok(&["restore", "--data", restored.to_str().unwrap(), "--in", file]);
    assert!(err.contains("natter restore:"), "{err}");
    assert!(
        std::fs::read(restored.join("natter-store-id")).unwrap()
            != std::fs::read(s.data_dir.join("natter-store-id")).unwrap()
    );
    // stdout and stdin work too, and give the same dump.
    let (st, out, err) = run_natter(&["dump", "--data", restored.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert_eq!(out, text, "a dump of the restored store is the same dump");
    let piped = dir.path().join("piped");
    let mut child = std::process::Command::new(natter_bin())
        .args(["restore", "--data", piped.to_str().unwrap(), "--in", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), out.as_bytes()).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "restore from stdin: {}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(run_natter(&["dump", "--data", piped.to_str().unwrap()]).1, text);

    let mut r = Server::start(ServerOpts::new().data_dir(&restored)).await;
    let got = what_clients_get(&r).await;
    r.stop().await;
    s.restart().await;
    let want = what_clients_get(&s).await;
    assert_eq!(got, want, "the restored store must serve what the original does");

    let (replay, q1, q2, ack, id) = got;
    let texts = |v: &[Value]| v.iter().map(|m| m["message"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(texts(&replay), ["one", "two ü \"quoted\"", "three"]);
    assert_eq!(texts(&q1), ["one", "two ü \"quoted\"", "three"]);
    assert_eq!(texts(&q2), ["in r2"]);
    assert_eq!(ack["id"], replay[0]["id"], "a repeated cid is acked with its first id: {ack}");
    let last = replay.iter().map(|m| m["id"].as_u64().unwrap()).max().unwrap();
    assert_eq!(id, last + 1, "ids go on after the last one, never reused");
}

/// A dump of one room with two members, written by hand.
const SMALL: &str = concat!(
    "{\"natter_dump\":1,\"natter\":\"0.1.0\"}\n",
    "{\"key\":\"room:r1:members\",\"type\":\"set\",\"members\":[\"u1\",\"u2\"]}\n",
    "{\"natter_dump_end\":true,\"lines\":1}\n",
);

fn restore_err(data: &Path, input: &Path) -> String {
    let (st, _, err) = run_natter(&["restore", "--data", data.to_str().unwrap(), "--in", input.to_str().unwrap()]);
    assert!(!st.success(), "restore of {} into {} should fail", input.display(), data.display());
    err
}

#[test]
fn restore_refuses_bad_input_and_used_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good.jsonl"), dir.path().join("bad.jsonl"));
    std::fs::write(&good, SMALL).unwrap();
    std::fs::write(&bad, SMALL.replace("\"members\":[", "\"members\":")).unwrap();

    let data = dir.path().join("d1");
    let err = restore_err(&data, &bad);
    assert!(err.contains(&format!("--in {}: line 2:", bad.display())) && err.contains("nothing was restored"), "{err}");

    let missing = dir.path().join("missing.jsonl");
    let err = restore_err(&dir.path().join("d2"), &missing);
    assert!(err.contains("--in") && err.contains("missing.jsonl"), "{err}");
    assert!(!dir.path().join("d2").exists(), "a missing --in must not create the data dir");

    let data = dir.path().join("d3");
    natter_ok(&["restore", "--data", data.to_str().unwrap(), "--in", good.to_str().unwrap()]);
    let err = restore_err(&data, &good);
    assert!(err.contains("--data") && err.contains("not empty"), "{err}");
    let (_, out, _) = run_natter(&["get", "room:r1:members", "--data", data.to_str().unwrap()]);
    assert_eq!(out, "1) \"u1\"\n2) \"u2\"\n");
    assert_eq!(std::fs::read_to_string(&good).unwrap(), SMALL, "restore only reads its input");

    let err = run_natter(&["dump", "--data", data.to_str().unwrap(), "--out", good.to_str().unwrap()]).2;
    assert!(err.contains("--out") && err.contains("exists"), "{err}");
}

/// `--redis` that is no URL, or names a Redis that does not answer: the flag is named, and no
/// data dir is made.
#[test]
fn restore_into_redis_names_a_bad_or_unreachable_redis() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, SMALL).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for (url, says) in
        [("not a url", "not a redis:// URL"), (&*format!("redis://127.0.0.1:{port}/0"), "cannot connect")]
    {
        let (st, _, err) = run_natter(&["restore", "--in", good.to_str().unwrap(), "--redis", url]);
        assert!(!st.success() && err.contains("--redis") && err.contains(says), "{url}: {err}");
    }
    let (st, _, err) = run_natter(&["restore", "--in", good.to_str().unwrap(), "--redis-prefix", "p:"]);
    assert!(!st.success() && err.contains("--redis"), "{err}");
}
