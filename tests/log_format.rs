//! `--log-format json|text`: with json every stderr line of a running server (startup, TLS,
//! connections, a reload, shutdown) is one JSON object; text stays plain; a bad value is refused.
mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn json_server_logs_are_one_object_per_line() {
    let mut s = Server::start(ServerOpts::new().tls().arg("--log-format", "json")).await;
    let (mut a, mut b) = two_in_room(&s, "r1").await;
    a.say("r1", "hello").await;
    b.recv_json().await;
    // SAFETY: kill(2) on our own child: one more line (the reload), with a field.
    unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
    wait_for(RECV_TIMEOUT, "the reload line", || async { s.stderr().contains("reload") }).await;
    drop((a, b));
    s.stop().await;
    let log = s.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "expected startup, reload and shutdown lines: {log}");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
        assert!(v["message"].is_string(), "the message sits at the top level: {l}");
    }
    assert!(lines.iter().any(|l| l.contains("shutting down")), "{log}");
}

#[tokio::test]
async fn text_is_the_default_and_json_startup_errors_are_json() {
    let mut s = Server::start(ServerOpts::new()).await;
    s.stop().await;
    let log = s.stderr();
    assert!(log.lines().any(|l| l.contains("INFO")), "{log}");
    assert!(log.lines().all(|l| serde_json::from_str::<Value>(l).is_err()), "text lines: {log}");

    let dir = tempfile::tempdir().unwrap();
    let (st, _, err) = run_serve(dir.path(), &["--log-format", "json", "--max-message-bytes", "0"]);
    assert!(!st.success());
    let v: Value = serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {err}"));
    assert!(v["message"].as_str().unwrap().contains("--max-message-bytes"), "{err}");

    let (st, _, err) = run_serve(dir.path(), &["--log-format", "xml"]);
    assert!(!st.success() && err.contains("--log-format"), "{err}");
}
