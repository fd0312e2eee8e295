//! wss end to end with a generated CA, TLS startup errors, TLS handshake robustness.
mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn wss_two_clients_chat() {
    let s = Server::start(ServerOpts::new().tls()).await;
    assert!(s.url.starts_with("wss://"), "{}", s.url);
    let mut a = Client::connect_as(&s, "u1", Some("Alice")).await;
    assert_login(&a.login("r1").await, "r1", "u1", "Alice", 1, 1);
    let (mut b, ok) = Client::connect_v1_as(&s, "u2", Some("Bob")).await;
    assert_eq!(ok["uid"], "u2");
    assert_login(&b.login("r1").await, "r1", "u2", "Bob", 2, 2);
    assert_login(&a.recv_json().await, "r1", "u2", "Bob", 2, 2);

    a.say("r1", "over tls").await;
    for c in [&mut a, &mut b] {
        let m = c.recv_json().await;
        assert_message(&m, &[]);
        assert_eq!(
            (m["id"].as_u64(), m["uid"].as_str(), m["message"].as_str()),
            (Some(1), Some("u1"), Some("over tls"))
        );
    }
    // a burst: every message gets through (no bytes stuck in the TLS buffer)
    for i in 0..40 {
        b.say("r1", &format!("burst {i} {}", "y".repeat(3000))).await;
    }
    for c in [&mut a, &mut b] {
        for i in 0..40 {
            let m = c.recv_json().await;
            assert_eq!(m["id"], 2 + i as u64);
        }
    }
    b.close().await;
    assert_logout(&a.recv_json().await, "r1", "u2", "Bob", 1, 2);
    a.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn https_endpoints_and_raw_frames_over_tls() {
    let s = Server::start(ServerOpts::new().tls()).await;
    assert_eq!(healthz(&s).await["status"], "ok");
    assert!(metrics(&s).await.contains("natter_connections"));
    let mut r = RawWs::connect_as(&s, "raw", "r1").await;
    r.send_frame(true, 0, OP_PING, b"tls-ping").await;
    let f = r.recv_frame(RECV_TIMEOUT).await.expect("timeout").expect("eof");
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &b"tls-ping"[..]));
    r.send_unmasked(OP_TEXT, json!({"event":"message","roomid":"r1","message":"x"}).to_string().as_bytes()).await;
    r.expect_close(1002).await;
}

#[tokio::test]
async fn plaintext_client_on_a_tls_port_does_not_hurt() {
    let s = Server::start(ServerOpts::new().tls().arg("--handshake-timeout", 2)).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    let _ = tcp.write_all(upgrade_request(&s, "/ws", &[]).as_bytes()).await;
    assert!(
        dropped_within(&mut tcp, Duration::from_secs(10)).await,
        "a plaintext request on the TLS port should be dropped"
    );
    // an idle TCP connection that never starts TLS is dropped by the handshake timeout
    let mut idle = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    assert!(
        dropped_within(&mut idle, Duration::from_secs(10)).await,
        "an idle connection should be dropped by the handshake timeout"
    );
    let mut a = Client::connect_as(&s, "u1", None).await;
    a.login("r1").await;
}

#[tokio::test]
async fn cert_without_key_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let tls = generate_tls(dir.path());
    let (st, out, err) = run_serve(dir.path(), &["--cert", tls.cert_path.to_str().unwrap()]);
    assert!(!st.success(), "natter started with --cert and no --key; stdout {out:?}");
    assert!(err.contains("--key"), "stderr should name --key: {err:?}");
    assert!(!out.contains("listening"), "{out:?}");
}

#[tokio::test]
async fn key_without_cert_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let tls = generate_tls(dir.path());
    let (st, out, err) = run_serve(dir.path(), &["--key", tls.key_path.to_str().unwrap()]);
    assert!(!st.success(), "natter started with --key and no --cert; stdout {out:?}");
    assert!(err.contains("--cert"), "stderr should name --cert: {err:?}");
}

#[tokio::test]
async fn unreadable_or_bad_cert_files_are_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tls = generate_tls(dir.path());
    let missing = dir.path().join("no-such-cert.pem");
    let (st, _, err) =
        run_serve(dir.path(), &["--cert", missing.to_str().unwrap(), "--key", tls.key_path.to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains("no-such-cert.pem"), "stderr should name the cert file: {err:?}");

    let missing_key = dir.path().join("no-such-key.pem");
    let (st, _, err) =
        run_serve(dir.path(), &["--cert", tls.cert_path.to_str().unwrap(), "--key", missing_key.to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains("no-such-key.pem"), "stderr should name the key file: {err:?}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let (st, _, err) =
        run_serve(dir.path(), &["--cert", garbage.to_str().unwrap(), "--key", tls.key_path.to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains("garbage.pem"), "stderr should name the bad cert file: {err:?}");
}
