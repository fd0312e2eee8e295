//! Plain HTTP endpoints and the upgrade request: /healthz, /metrics, the page, upgrade errors,
//! Origin checks, handshake timeout.
mod common;

use common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn healthz_reports_connections_and_rooms() {
    let s = Server::start(ServerOpts::new()).await;
    let r = http_get(&s, "/healthz").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap_or("").starts_with("application/json"), "{r:?}");
    let h = r.json();
    assert_keys(&h, &["status", "connections", "rooms", "uptime_s"]);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["connections"], 0);
    assert_eq!(h["rooms"], 0);
    assert!(h["uptime_s"].is_u64() || h["uptime_s"].is_f64(), "{h}");

    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&s, "u2", None).await;
    b.login("r2").await;
    let h = healthz(&s).await;
    assert_eq!(h["connections"], 2, "{h}");
    assert_eq!(h["rooms"], 2, "{h}");
    b.close().await;
    wait_for(Duration::from_secs(5), "connections back to 1", || async { healthz(&s).await["connections"] == 1 }).await;
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let s = Server::start(ServerOpts::new()).await;
    let r = http_get(&s, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap_or("").starts_with("text/plain"), "{r:?}");
    for name in [
        "natter_connections",
        "natter_rooms",
        "natter_messages_in_total",
        "natter_messages_out_total",
        "natter_offline_writes_total",
        "natter_acks_total",
    ] {
        assert!(metric_value(&r.body, name).is_some(), "/metrics lacks {name}:\n{}", r.body);
    }

    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
    let mut b = Client::connect_as(&s, "u2", None).await;
    b.login("r1").await;
    b.close().await;
    a.recv_event("logout").await;
    a.say_cid("r1", "counted", "c-1").await;
    a.recv_event("ack").await;
    let m = metrics(&s).await;
    assert_eq!(metric_value(&m, "natter_connections"), Some(1.0), "{m}");
    assert_eq!(metric_value(&m, "natter_rooms"), Some(1.0), "{m}");
    assert_eq!(metric_value(&m, "natter_acks_total"), Some(1.0), "{m}");
    assert_eq!(metric_value(&m, "natter_offline_writes_total"), Some(1.0), "{m}");
    assert!(metric_value(&m, "natter_messages_in_total").unwrap() >= 1.0, "{m}");
    assert!(metric_value(&m, "natter_messages_out_total").unwrap() >= 1.0, "{m}");
}

#[tokio::test]
async fn close_codes_are_counted_per_code() {
    let s = Server::start(ServerOpts::new().arg("--max-auth-failures", 1)).await;
    let mut c = Client::connect(&s).await;
    c.auth("junk").await;
    c.expect_noauth().await;
    c.expect_close(1008).await;
    wait_for(Duration::from_secs(5), "natter_closes_total{code=\"1008\"} == 1", || async {
        metric_value(&metrics(&s).await, "natter_closes_total{code=\"1008\"}") == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn root_serves_the_page_and_both_paths_upgrade() {
    let s = Server::start(ServerOpts::new()).await;
    let r = http_get(&s, "/").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap_or("").starts_with("text/html"), "{:?}", r.headers);
    let mut a = Client::connect_with(&s, ConnectOpts { path: Some("/".into()), ..Default::default() }).await;
    a.auth_as("u1", None, 3600).await;
    a.login("r1").await;
    let mut b = Client::connect_with(&s, ConnectOpts { path: Some("/ws".into()), ..Default::default() }).await;
    b.auth_as("u2", None, 3600).await;
    b.login("r1").await;
    b.say("r1", "both paths").await;
    assert_eq!(a.recv_event("message").await["message"], "both paths");
}

/// The page's files are served from the binary with a policy that keeps the page to its own
/// origin; the index tells the page the heartbeat interval and whether `/dev/token` exists.
#[tokio::test]
async fn page_files_are_served_with_their_types_and_policy() {
    let s = Server::start(ServerOpts::new().arg("--heartbeat", 7)).await;
    let index = http_get(&s, "/").await;
    assert!(index.body.contains(r#"data-dev="false" data-heartbeat-ms="7000""#), "{}", index.body);
    let csp = index.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("connect-src 'self'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    for (path, ty) in [("/app.js", "text/javascript"), ("/style.css", "text/css"), ("/icon.svg", "image/svg+xml")] {
        let r = http_get(&s, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap_or_default().starts_with(ty), "{path}: {:?}", r.headers);
        assert!(index.body.contains(&format!("\"{path}\"")), "index does not load {path}");
    }
    assert_eq!(http_get(&s, "/missing.js").await.status, 404);
}

fn upgrade_without(s: &Server, skip: &str, extra: &[&str]) -> String {
    let base = upgrade_request(s, "/ws", extra);
    base.split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with(&skip.to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test]
async fn malformed_upgrades_get_400_and_wrong_version_426() {
    let s = Server::start(ServerOpts::new()).await;
    let ok = raw_http(&s, &upgrade_request(&s, "/ws", &[])).await;
    assert_eq!(ok.status, 101, "the reference request must upgrade: {ok:?}");

    for skip in ["Sec-WebSocket-Key:", "Upgrade:", "Connection:"] {
        let r = raw_http(&s, &upgrade_without(&s, skip, &[])).await;
        assert_eq!(r.status, 400, "without {skip} -> {}", r.head);
    }
    let bad_key = upgrade_request(&s, "/ws", &[]).replace("dGhlIHNhbXBsZSBub25jZQ==", "not-base64!");
    assert_eq!(raw_http(&s, &bad_key).await.status, 400, "badly formed key");
    let short_key = upgrade_request(&s, "/ws", &[]).replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
    assert_eq!(raw_http(&s, &short_key).await.status, 400, "key not of 16 bytes");

    let v8 = upgrade_request(&s, "/ws", &[]).replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let r = raw_http(&s, &v8).await;
    assert_eq!(r.status, 426, "{}", r.head);
    assert_eq!(r.header("sec-websocket-version"), Some("13"), "{}", r.head);

    // the server is fine afterwards
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
}

#[tokio::test]
async fn origin_checks() {
    let s = Server::start(ServerOpts::new()).await;
    let port = s.port;
    let status = |origin: String| {
        let req = upgrade_request(&s, "/ws", &[&format!("Origin: {origin}")]);
        let s = &s;
        async move { raw_http(s, &req).await.status }
    };
    assert_eq!(status("http://evil.example.com".into()).await, 403, "cross-site origin");
    assert_eq!(status("null".into()).await, 403, "Origin: null");
    assert_eq!(status(format!("http://127.0.0.1:{}", port as u32 + 1)).await, 403, "same host, other port");
    assert_eq!(status(format!("http://localhost:{port}")).await, 403, "other host name, same port");
    assert_eq!(status(format!("http://127.0.0.1:{port}")).await, 101, "same host and port");
    assert_eq!(raw_http(&s, &upgrade_request(&s, "/ws", &[])).await.status, 101, "no Origin");
    // a refused origin through the real client as well
    match Client::try_connect_with(
        &s,
        ConnectOpts { origin: Some("https://evil.example".into()), ..Default::default() },
    )
    .await
    {
        Err(ConnectError::Status(code, _)) => assert_eq!(code, 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("cross-site upgrade was accepted"),
    }
}

#[tokio::test]
async fn allowed_origins_list() {
    let s =
        Server::start(ServerOpts::new().arg("--allowed-origins", "https://chat.example.com,http://app.example:8080"))
            .await;
    let status = |origin: &'static str| {
        let req = upgrade_request(&s, "/ws", &[&format!("Origin: {origin}")]);
        let s = &s;
        async move { raw_http(s, &req).await.status }
    };
    assert_eq!(status("https://chat.example.com").await, 101);
    assert_eq!(status("http://app.example:8080").await, 101);
    assert_eq!(status("http://chat.example.com").await, 403, "scheme differs");
    assert_eq!(status("https://chat.example.com:444").await, 403, "port differs");
    assert_eq!(status("http://app.example:8081").await, 403, "port differs");
    assert_eq!(status("https://evil.example.com").await, 403);
    assert_eq!(status("null").await, 403);
}

#[tokio::test]
async fn handshake_timeout_drops_idle_and_partial_requests() {
    let s = Server::start(ServerOpts::new().arg("--handshake-timeout", 1)).await;
    let mut idle = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    partial.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    for (name, sock) in [("idle", &mut idle), ("partial", &mut partial)] {
        assert!(
            dropped_within(sock, Duration::from_secs(10)).await,
            "{name} connection not dropped by the handshake timeout"
        );
    }
    // still serving
    assert_eq!(healthz(&s).await["status"], "ok");
}

#[test]
fn helper_self_check() {
    assert_eq!(b64url(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw");
    let text = "# HELP x\nnatter_closes_total{code=\"1013\"} 2\nnatter_rooms 3\n";
    assert_eq!(metric_value(text, "natter_closes_total{code=\"1013\"}"), Some(2.0));
    assert_eq!(metric_value(text, "natter_rooms"), Some(3.0));
    assert_eq!(metric_value(text, "natter_connections"), None);
}
