//! Admission control over real sockets: connection limits in all and per address (503 with
//! Retry-After, then closed unread), slots freed on close, `--trusted-proxies` and
//! X-Forwarded-For, request head limits, the slow-loris cut, the open-file limit and the
//! accept loop's back-off.
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use natter::admission::{PER_IP_REFUSAL_SLOTS, REFUSAL_SLOTS, RETRY_AFTER_SECS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn from(n: u8) -> ConnectOpts {
    ConnectOpts { source: Some(lo(n)), ..Default::default() }
}

fn forwarded(n: u8, xff: &str) -> ConnectOpts {
    ConnectOpts { headers: vec![("X-Forwarded-For".into(), xff.into())], ..from(n) }
}

/// A client that authenticated as `uid` from `opts` and is in room r1.
async fn member(s: &Server, opts: ConnectOpts, uid: &str) -> Client {
    let mut c = Client::connect_with(s, opts).await;
    c.auth_as(uid, None, 3600).await;
    c.login("r1").await;
    c
}

/// The upgrade is refused with 503 and the advertised Retry-After.
async fn expect_503(s: &Server, opts: ConnectOpts, what: &str) {
    match Client::try_connect_with(s, opts).await {
        Err(ConnectError::Status(503, headers)) => {
            let retry = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")).map(|(_, v)| v.as_str());
            assert_eq!(retry, Some(RETRY_AFTER_SECS.to_string().as_str()), "{what}: Retry-After in {headers:?}");
        }
        Err(e) => panic!("{what}: expected 503, got {e}"),
        Ok(_) => panic!("{what}: upgraded, expected 503"),
    }
}

async fn get_from(s: &Server, source: u8, path: &str) -> HttpResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", s.port);
    raw_http_io(s.connect_io_from(lo(source)).await, &req).await
}

async fn metric_from(s: &Server, source: u8, name: &str) -> f64 {
    let r = get_from(s, source, "/metrics").await;
    assert_eq!(r.status, 200, "/metrics from 127.0.0.{source}: {r:?}");
    metric_value(&r.body, name).unwrap_or_else(|| panic!("no {name} in\n{}", r.body))
}

/// The status of `GET /healthz` from 127.0.0.`source` over plain TCP; None when the server
/// closed the socket without an answer.
async fn healthz_status(s: &Server, source: u8) -> Option<u16> {
    let mut tcp = s.tcp_from(lo(source)).await;
    let req = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", s.port);
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(RECV_TIMEOUT, tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

/// Sends a whole request, then expects the socket closed without a single byte of answer.
async fn expect_closed_unread(s: &Server, source: u8, what: &str) {
    let mut tcp = s.tcp_from(lo(source)).await;
    let _ = tcp.write_all(upgrade_request(s, "/ws", &[]).as_bytes()).await;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await {
        Err(_) => panic!("{what}: not closed within 3 s"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: expected no answer, got {:?}", String::from_utf8_lossy(&buf[..n])),
    }
}

#[tokio::test]
async fn per_ip_flood_gets_503_while_other_addresses_chat() {
    let s = Server::start(ServerOpts::new().arg("--max-connections-per-ip", 4)).await;
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(member(&s, from(1), &format!("flood{i}")).await);
    }
    expect_503(&s, from(1), "a fifth upgrade from 127.0.0.1").await;
    let r = get_from(&s, 1, "/healthz").await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")), "plain HTTP counts too: {r:?}");

    // Another address is not affected: it upgrades and chats with the flood's first member.
    let mut other = member(&s, from(2), "other").await;
    held[0].recv_event("login").await;
    other.say("r1", "still here").await;
    assert_eq!(held[0].recv_event("message").await["message"], "still here");
    assert!(metric_from(&s, 3, "natter_connections_refused_total{reason=\"per_ip\"}").await >= 2.0);

    // Closing one of the address's connections frees its slot.
    held.pop().unwrap().close().await;
    wait_for(Duration::from_secs(10), "a slot for 127.0.0.1 again", || async {
        Client::try_connect_with(&s, from(1)).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn far_over_the_per_ip_limit_is_closed_unread() {
    let s = Server::start(ServerOpts::new().arg("--max-connections-per-ip", 2)).await;
    let _held = [member(&s, from(1), "a").await, member(&s, from(1), "b").await];
    // Idle sockets take the address's refusal allowance (each waits for its request).
    let mut idle = Vec::new();
    for _ in 0..PER_IP_REFUSAL_SLOTS {
        idle.push(s.tcp_from(lo(1)).await);
    }
    expect_closed_unread(&s, 1, "past the refusal allowance").await;
    assert!(metric_from(&s, 2, "natter_connections_dropped_total{reason=\"per_ip\"}").await >= 1.0);
    // A refused socket gets only a short time for its request; then the allowance is back.
    for sock in idle.iter_mut() {
        assert!(dropped_within(sock, Duration::from_secs(6)).await, "an idle refused socket was kept");
    }
    drop(idle);
    wait_for(Duration::from_secs(5), "503 again instead of a silent close", || async {
        matches!(Client::try_connect_with(&s, from(1)).await, Err(ConnectError::Status(503, _)))
    })
    .await;
}

#[tokio::test]
async fn max_connections_in_all_gives_503_and_closing_frees_a_slot() {
    let s = Server::start(ServerOpts::new().arg("--max-connections", 3)).await;
    let mut held = vec![member(&s, from(1), "a").await, member(&s, from(2), "b").await];
    held.push(member(&s, from(3), "c").await);
    expect_503(&s, from(4), "a fourth connection from a new address").await;
    assert_eq!(get_from(&s, 5, "/healthz").await.status, 503);

    held.remove(1).close().await;
    // The one free slot, for /metrics (read from that answer: the next request could come
    // before the server has seen this connection close).
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let r = get_from(&s, 5, "/metrics").await;
        if r.status == 200 {
            break r.body;
        }
        assert!(Instant::now() < deadline, "no slot came free after a close: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metric_value(&m, "natter_connections_refused_total{reason=\"max_connections\"}").unwrap() >= 2.0, "{m}");
    wait_for(Duration::from_secs(10), "an upgrade from 127.0.0.4", || async {
        Client::try_connect_with(&s, from(4)).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn far_over_max_connections_is_closed_unread() {
    let s = Server::start(ServerOpts::new().arg("--max-connections", 1)).await;
    let _held = member(&s, from(1), "a").await;
    let mut idle = Vec::new();
    for i in 0..REFUSAL_SLOTS {
        idle.push(s.tcp_from(lo(10 + (i % 100) as u8)).await);
    }
    expect_closed_unread(&s, 200, "past the server's refusal allowance").await;
    drop(idle);
    wait_for(Duration::from_secs(10), "503 again", || async { healthz_status(&s, 201).await == Some(503) }).await;
}

#[tokio::test]
async fn refusal_over_tls_is_a_503_after_the_handshake() {
    let s = Server::start(ServerOpts::new().tls().arg("--max-connections-per-ip", 1)).await;
    let _held = member(&s, from(1), "a").await;
    expect_503(&s, from(1), "a second wss upgrade").await;
    let _other = member(&s, from(2), "b").await;
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_counts_each_client() {
    let s = Server::start(
        ServerOpts::new().arg("--trusted-proxies", "127.0.0.1, 127.0.0.5/32").arg("--max-connections-per-ip", 2),
    )
    .await;
    let mut held =
        vec![member(&s, forwarded(1, "203.0.113.7"), "a").await, member(&s, forwarded(1, "203.0.113.7"), "b").await];
    expect_503(&s, forwarded(1, "203.0.113.7"), "a third for the same forwarded client").await;
    expect_503(&s, forwarded(1, "198.51.100.1, 203.0.113.7"), "a spoofed left part changes nothing").await;
    expect_503(&s, forwarded(1, "203.0.113.7, 127.0.0.5"), "a trusted hop is skipped").await;
    // Another forwarded client through the same proxy: the proxy itself is not limited.
    let mut c = member(&s, forwarded(1, "203.0.113.8"), "c").await;
    held[0].recv_event("login").await;
    c.say("r1", "via the proxy").await;
    assert_eq!(held[0].recv_event("message").await["message"], "via the proxy");
    held.pop().unwrap().close().await;
    wait_for(Duration::from_secs(10), "a slot for 203.0.113.7 again", || async {
        Client::try_connect_with(&s, forwarded(1, "203.0.113.7")).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn untrusted_forwarded_for_is_ignored() {
    let s =
        Server::start(ServerOpts::new().arg("--trusted-proxies", "127.0.0.1").arg("--max-connections-per-ip", 2)).await;
    let _held =
        [member(&s, forwarded(2, "203.0.113.1"), "a").await, member(&s, forwarded(2, "203.0.113.2"), "b").await];
    expect_503(&s, forwarded(2, "203.0.113.3"), "127.0.0.2 is no proxy: counted by its own address").await;
}

#[tokio::test]
async fn bad_trusted_proxies_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["10.0.0.0/33", "10.0.0.1,nonsense", "10.0.0.1/8"] {
        let (st, out, err) = run_serve(dir.path(), &["--trusted-proxies", bad]);
        assert!(!st.success(), "natter started with --trusted-proxies {bad}; stdout {out:?}");
        assert!(err.contains("--trusted-proxies"), "stderr should name the flag: {err:?}");
        assert!(!out.contains("listening"), "{out:?}");
    }
    let (_, _, err) = run_serve(dir.path(), &["--trusted-proxies", "10.0.0.1,nonsense"]);
    assert!(err.contains("nonsense"), "stderr should name the bad value: {err:?}");
    let (st, _, err) = run_serve(dir.path(), &["--max-connections-per-ip", "0"]);
    assert!(!st.success() && err.contains("--max-connections-per-ip"), "{err:?}");
}

fn padded_upgrade(s: &Server, pad: usize, extra_headers: usize) -> String {
    let pad = format!("X-Pad: {}", "a".repeat(pad));
    let extra: Vec<String> = (0..extra_headers).map(|i| format!("X-Extra-{i}: {i}")).collect();
    let mut lines: Vec<&str> = extra.iter().map(String::as_str).collect();
    lines.push(&pad);
    upgrade_request(s, "/ws", &lines)
}

#[tokio::test]
async fn oversized_head_gets_431() {
    let s = Server::start(ServerOpts::new()).await;
    assert_eq!(raw_http(&s, &padded_upgrade(&s, 12 * 1024, 0)).await.status, 101, "12 KiB of head is fine");
    let r = raw_http(&s, &padded_upgrade(&s, 20 * 1024, 0)).await;
    assert_eq!(r.status, 431, "20 KiB of head: {}", r.head);
    // 431 then close: no second request on that connection (raw_http read to EOF).
    assert_eq!(healthz(&s).await["status"], "ok");
}

#[tokio::test]
async fn too_many_headers_get_431() {
    let s = Server::start(ServerOpts::new()).await;
    // upgrade_request has 5 header lines of its own, and the pad is one more.
    assert_eq!(raw_http(&s, &padded_upgrade(&s, 1, 64 - 6)).await.status, 101, "64 headers are allowed");
    let r = raw_http(&s, &padded_upgrade(&s, 1, 64 - 5)).await;
    assert_eq!(r.status, 431, "65 headers: {}", r.head);
}

/// A head trickled a byte at a time (slow loris) is cut at the handshake limit, however
/// steadily the bytes come.
#[tokio::test]
async fn slow_head_is_cut_within_the_handshake_limit() {
    let s = Server::start(ServerOpts::new().arg("--handshake-timeout", 2)).await;
    let head = upgrade_request(&s, "/ws", &[]).into_bytes();
    let (mut rd, mut wr) = s.tcp_from(lo(1)).await.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let mut sent = 0;
        for b in head.iter().take(head.len() - 2) {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (sent, head.len())
    });
    assert!(dropped_within(&mut rd, Duration::from_secs(6)).await, "a trickled head kept the socket for 6 s");
    let cut = started.elapsed();
    assert!(cut >= Duration::from_millis(1500), "cut after {cut:?}: before the limit?");
    trickle.abort();
    let _ = trickle.await;
    assert_eq!(healthz(&s).await["status"], "ok");
}

#[tokio::test]
async fn open_file_limit_is_raised_and_sets_the_default() {
    let s = Server::start(ServerOpts::new().nofile(256, 512)).await;
    let err = s.stderr();
    assert!(err.contains("old_soft=256 new_soft=512"), "open-file limit not raised or not logged:\n{err}");
    assert!(err.contains("max_connections=384"), "default --max-connections should be 512 - 128:\n{err}");
}

/// Out of descriptors, accept fails again and again: the loop backs off, logs once, and
/// serves again when descriptors come free.
#[tokio::test]
async fn accept_backs_off_on_emfile_and_logs_rarely() {
    let s = Server::start(
        ServerOpts::new()
            .nofile(160, 160)
            .arg("--max-connections", 1000)
            .arg("--max-connections-per-ip", 1000)
            .arg("--handshake-timeout", 3),
    )
    .await;
    let mut flood = Vec::new();
    for i in 0..200 {
        flood.push(s.tcp_from(lo(1 + (i % 50) as u8)).await);
    }
    wait_for(Duration::from_secs(5), "an accept failure in the log", || async { s.stderr().contains("accept failed") })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(flood);
    wait_for(Duration::from_secs(20), "/healthz after the flood", || async {
        healthz_status(&s, 60).await == Some(200)
    })
    .await;
    let lines = s.stderr().lines().filter(|l| l.contains("accept failed")).count();
    assert!(lines <= 2, "{lines} log lines about failed accepts:\n{}", s.stderr());
    let errors = metric_from(&s, 60, "natter_accept_errors_total").await;
    assert!((2.0..2000.0).contains(&errors), "{errors} failed accepts: no back-off, or no retry");
}
