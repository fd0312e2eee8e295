//! Scale-out behind a load balancer: HAProxy (Debian's) round-robins WebSocket connections over
//! three `natter serve --redis` nodes, and two users chat through it as through one server.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// HAProxy in the foreground, killed on drop.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Round robin in HTTP mode (WebSocket upgrades pass through; `timeout tunnel` covers idle
/// chat connections), no stickiness: any node serves any room.
async fn haproxy(backends: &[&Server]) -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let servers: String = backends.iter().enumerate().map(|(i, s)| format!("  server n{i} {}\n", s.addr())).collect();
    let cfg = format!(
        "global\n  maxconn 1000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  \
         timeout server 60s\n  timeout tunnel 1h\nfrontend chat\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
         backend nodes\n  balance roundrobin\n{servers}"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let bin = std::env::var("HAPROXY").unwrap_or_else(|_| "haproxy".into());
    let mut child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (apt-get install haproxy; HAPROXY overrides the path)");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Haproxy { child, port, _dir: dir };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("haproxy did not listen on {port}");
}

#[tokio::test]
async fn two_users_chat_through_haproxy_in_front_of_three_nodes() {
    let redis = TestRedis::start();
    let mut n = Vec::new();
    for _ in 0..3 {
        n.push(Server::start(ServerOpts::new().arg("--redis", redis.url())).await);
    }
    let lb = haproxy(&[&n[0], &n[1], &n[2]]).await;
    // Round robin: the first connection lands on one node, the second on another.
    let mut a = Client::try_connect_port(lb.port, "u1").await.unwrap();
    assert_login(&a.login("lobby").await, "lobby", "u1", "u1", 1, 1);
    let mut b = Client::try_connect_port(lb.port, "u2").await.unwrap();
    assert_login(&b.login("lobby").await, "lobby", "u2", "u2", 2, 2);
    assert_login(&a.recv_json().await, "lobby", "u2", "u2", 2, 2);
    let mut per_node = Vec::new();
    for s in &n {
        per_node.push(metric_value(&metrics(s).await, "natter_connections").unwrap_or(0.0));
    }
    assert_eq!(per_node.iter().filter(|c| **c == 1.0).count(), 2, "two nodes serve one each: {per_node:?}");

    a.say("lobby", "hello through the balancer").await;
    for c in [&mut a, &mut b] {
        let m = c.recv_event("message").await;
        assert_message(&m, &[]);
        assert_eq!((m["uid"].as_str(), m["message"].as_str()), (Some("u1"), Some("hello through the balancer")));
    }
    b.say("lobby", "hi").await;
    assert_eq!(a.recv_event("message").await["message"], "hi");
    b.close().await;
    assert_logout(&a.recv_json().await, "lobby", "u2", "u2", 1, 2);
}
