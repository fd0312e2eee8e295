//! `natter bench` against a real server: every message it sends must be counted as delivered
//! exactly once, over ws and over wss (with `--ca` and with `--insecure`), also spread over the
//! nodes of a `serve --redis` cluster, and bad flags get a clear error.

mod common;

use common::*;
use serde_json::Value;

fn bench(s: &Server, extra: &[&str]) -> Value {
    let url = s.ws_url("/ws");
    let mut args = vec!["bench", "--url", &url, "--secret", SECRET, "--json"];
    args.extend_from_slice(extra);
    let (status, out, err) = run_natter(&args);
    assert!(status.success(), "bench failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bench --json printed no JSON ({e}): {out}"))
}

fn assert_all_delivered(r: &Value) {
    let (sent, expected, delivered) = (r["sent"].as_u64().unwrap(), r["expected"].as_u64().unwrap(), &r["delivered"]);
    assert!(sent > 0, "{r}");
    assert_eq!(delivered.as_u64().unwrap(), expected, "{r}");
    assert_eq!(
        (r["lost"].as_u64(), r["duplicates"].as_u64(), r["errors"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{r}"
    );
    assert!(r["latency"]["samples"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["closed_by_server"].as_u64(), Some(0), "{r}");
}

/// `--json` may come after the scenario and its flags, where people type it.
#[tokio::test]
async fn json_is_accepted_after_the_scenario() {
    let s = Server::start(ServerOpts::new().arg("--rate-per-sec", 1000).arg("--rate-burst", 1000)).await;
    let url = s.ws_url("/ws");
    let args = ["bench", "--url", &url, "--secret", SECRET, "fanout", "--members", "2", "--duration", "0.5", "--json"];
    let (status, out, err) = run_natter(&args);
    assert!(status.success(), "bench failed: {err}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON report ({e}): {out}"));
    assert!(r["sent"].as_u64().unwrap() > 0, "{r}");
}

/// Against a server's default flood limit the run is refused: the bench must say so (errors,
/// connections closed by the server, messages lost), not report a quiet success.
#[tokio::test]
async fn refused_messages_and_server_closes_are_reported() {
    let s = Server::start(ServerOpts::new()).await;
    let r = bench(&s, &["fanout", "--members", "2", "--rate", "200", "--warmup", "0", "--duration", "1.5"]);
    assert!(r["errors"].as_u64().unwrap() > 0, "rate_limited errors not counted: {r}");
    let limited = r["rate_limited"].as_u64().unwrap();
    assert!(limited > 0 && limited <= r["errors"].as_u64().unwrap(), "rate_limited answers not told apart: {r}");
    assert!(r["lost"].as_u64().unwrap() > 0, "refused messages not counted as lost: {r}");
    // Three strikes within 10 s: the server closes with 1008.
    assert!(r["closed_by_server"].as_u64().unwrap() > 0, "1008 closes not counted: {r}");
    // The table says which server flags measure its speed instead of its flood limit.
    let url = s.ws_url("/ws");
    let args =
        ["bench", "--url", &url, "--secret", SECRET, "fanout", "--members", "2", "--rate", "200", "--warmup", "0"];
    let (status, out, err) = run_natter(&[&args[..], &["--duration", "1"]].concat());
    assert!(status.success(), "bench failed: {err}");
    assert!(out.contains("rate_limited") && out.contains("--rate-per-sec"), "no hint about the flood limit: {out}");
}

#[tokio::test]
async fn closed_loop_fanout_counts_every_delivery_once() {
    let s = Server::start(ServerOpts::new().arg("--rate-per-sec", 100_000).arg("--rate-burst", 100_000)).await;
    let r = bench(&s, &["fanout", "--rooms", "2", "--members", "4", "--warmup", "0.2", "--duration", "0.5"]);
    assert_all_delivered(&r);
    assert_eq!(r["expected"].as_u64().unwrap(), r["sent"].as_u64().unwrap() * 3, "{r}");
    assert_eq!(r["connections"].as_u64(), Some(8));
}

#[tokio::test]
async fn open_loop_over_wss_with_a_ca_and_insecure() {
    let s = Server::start(ServerOpts::new().tls()).await;
    let ca = s.tls.as_ref().unwrap().ca_path.to_str().unwrap().to_string();
    let r =
        bench(&s, &["--ca", &ca, "latency", "--members", "3", "--rate", "20", "--warmup", "0", "--duration", "0.5"]);
    assert_all_delivered(&r);
    let r =
        bench(&s, &["--insecure", "fanout", "--members", "2", "--rate", "20", "--warmup", "0", "--duration", "0.3"]);
    assert_all_delivered(&r);
}

#[tokio::test]
async fn bad_bench_flags_are_named() {
    let (status, _, err) = run_natter(&["bench", "--url", "http://x", "fanout"]);
    assert!(!status.success() && err.contains("--url"), "{err}");
    let (status, _, err) = run_natter(&["bench", "--url", "wss://127.0.0.1:9", "fanout"]);
    assert!(!status.success() && err.contains("--ca"), "{err}");
    let (status, _, err) = run_natter(&["bench", "--url", "ws://127.0.0.1:9", "fanout", "--members", "1"]);
    assert!(!status.success() && err.contains("--members"), "{err}");
    for bad in ["5", "0x5", "3x1", "2x2,x"] {
        let (status, _, err) = run_natter(&["bench", "--url", "ws://127.0.0.1:9", "fanout", "--shapes", bad]);
        assert!(!status.success() && err.contains("--shapes") && err.contains("ROOMSxMEMBERS"), "{bad}: {err}");
    }
}

/// `--shapes` runs every shape, each in rooms of its own, and reports each one.
#[tokio::test]
async fn shapes_run_one_after_another_and_each_counts_every_delivery() {
    let s = Server::start(ServerOpts::new().arg("--rate-per-sec", 100_000).arg("--rate-burst", 100_000)).await;
    let url = s.ws_url("/ws");
    let args = ["bench", "--url", &url, "--secret", SECRET, "--json", "fanout", "--shapes", "3x2,1x4"];
    let (status, out, err) = run_natter(&[&args[..], &["--warmup", "0.2", "--duration", "0.4"]].concat());
    assert!(status.success(), "bench failed: {err}");
    let reports: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON array ({e}): {out}"));
    assert_eq!(reports.len(), 2, "{out}");
    for (r, (conns, others)) in reports.iter().zip([(6, 1), (4, 3)]) {
        assert_all_delivered(r);
        assert_eq!(r["connections"].as_u64(), Some(conns), "{r}");
        assert_eq!(r["expected"].as_u64().unwrap(), r["sent"].as_u64().unwrap() * others, "{r}");
    }
    // The table form ends with the summary by shape.
    let args =
        ["bench", "--url", &url, "--secret", SECRET, "fanout", "--shapes", "2x2", "--warmup", "0", "--duration", "0.3"];
    let (status, out, err) = run_natter(&args);
    assert!(status.success(), "bench failed: {err}");
    assert!(out.contains("| shape |") && out.contains("| 2x2 | 4 |"), "{out}");
}

#[tokio::test]
async fn offline_scenario_checks_every_acked_message_arrives_once() {
    let s = Server::start(ServerOpts::new().arg("--rate-per-sec", 100_000).arg("--rate-burst", 100_000)).await;
    let r = bench(&s, &["offline", "--senders", "2", "--offline", "3", "--messages", "20"]);
    assert_eq!((r["sent"].as_u64(), r["expected"].as_u64()), (Some(40), Some(120)), "{r}");
    assert_eq!(r["delivered"].as_u64(), Some(120), "{r}");
    assert_eq!(
        (r["lost"].as_u64(), r["duplicates"].as_u64(), r["errors"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{r}"
    );
    let acks = r["extra"].as_array().unwrap().iter().find(|e| e[0] == "acks").unwrap()[1].as_f64();
    assert_eq!(acks, Some(40.0), "{r}");
}

#[tokio::test]
async fn connect_scenario_reads_the_server_rss() {
    let s = Server::start(ServerOpts::new()).await;
    let pid = s.pid().to_string();
    let r = bench(&s, &["connect", "--connections", "20", "--room-size", "5", "--hold", "0.2", "--server-pid", &pid]);
    assert_eq!((r["connections"].as_u64(), r["errors"].as_u64()), (Some(20), Some(0)), "{r}");
    let rss = r["extra"].as_array().unwrap().iter().find(|e| e[0] == "server RSS idle, MiB").unwrap()[1].as_f64();
    assert!(rss.unwrap() > 1.0, "{r}");
}

/// Two `--url`s (one repeated, one as a list) against two `serve --redis` nodes: the members of
/// every room alternate between the nodes, so each delivery to the other half crosses Redis, and
/// every message must still reach every other member exactly once.
#[tokio::test]
async fn fanout_spread_over_two_redis_nodes_loses_nothing() {
    let redis = TestRedis::start();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let opts = ServerOpts::new().arg("--redis", redis.url()).arg("--rate-per-sec", 100_000);
        nodes.push(Server::start(opts.arg("--rate-burst", 100_000)).await);
    }
    let (a, b) = (nodes[0].ws_url("/ws"), nodes[1].ws_url("/ws"));
    let args = ["bench", "--url", &a, "--url", &b, "--secret", SECRET, "--json", "fanout", "--shapes", "3x2,1x5"];
    let (status, out, err) = run_natter(&[&args[..], &["--warmup", "0.2", "--duration", "0.5"]].concat());
    assert!(status.success(), "bench failed: {err}");
    let reports: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON array ({e}): {out}"));
    for (r, others) in reports.iter().zip([1, 4]) {
        assert_all_delivered(r);
        assert_eq!(r["expected"].as_u64().unwrap(), r["sent"].as_u64().unwrap() * others, "{r}");
        assert_eq!(r["url"].as_str(), Some(format!("{a},{b}").as_str()), "{r}");
    }
    // The comma-separated form, through the latency scenario.
    let list = format!("{a},{b}");
    let args = ["bench", "--url", &list, "--secret", SECRET, "--json", "latency", "--members", "4", "--rate", "20"];
    let (status, out, err) = run_natter(&[&args[..], &["--warmup", "0", "--duration", "0.5"]].concat());
    assert!(status.success(), "bench failed: {err}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON report ({e}): {out}"));
    assert_all_delivered(&r);
    // Both nodes had senders of their own.
    for n in &nodes {
        let published = metric_value(&metrics(n).await, "natter_messages_in_total").unwrap_or(0.0);
        assert!(published > 0.0, "a node published nothing: the members were not spread");
    }
}

/// Runs `natter bench` (blocking) beside the test's runtime, which serves the echo room.
async fn bench_at(url: String, extra: &[&str]) -> Value {
    let mut args: Vec<String> = ["bench", "--url", &url, "--secret", SECRET, "--json"].map(String::from).to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let (status, out, err) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_natter(&args)
    })
    .await
    .unwrap();
    assert!(status.success(), "bench failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bench --json printed no JSON ({e}): {out}"))
}

/// A server that answers as fast as it can, many frames per write (the `login` echo and the
/// first messages in one read): the bench must count every frame, as with natter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_server_gets_every_frame_counted() {
    let url = format!("ws://{}/", common::echo_room::start_echo_room().await);
    for members in ["2", "3", "5"] {
        let r = bench_at(url.clone(), &["fanout", "--members", members, "--warmup", "0.2", "--duration", "0.5"]).await;
        assert_all_delivered(&r);
    }
    let r =
        bench_at(url.clone(), &["latency", "--members", "10", "--rate", "50", "--warmup", "0.2", "--duration", "1"])
            .await;
    assert_all_delivered(&r);
}

/// Two runs at once on a server that sends everything to everyone (the echo room ignores
/// rooms): each counts its own messages only, none of the other's as deliveries or duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_on_one_echo_room_count_only_their_own() {
    let url = format!("ws://{}/", common::echo_room::start_echo_room().await);
    let args = ["fanout", "--members", "3", "--warmup", "0.2", "--duration", "1"];
    let (a, b) = tokio::join!(bench_at(url.clone(), &args), bench_at(url.clone(), &args));
    assert_all_delivered(&a);
    assert_all_delivered(&b);
}

/// `fanout --cid`: every message carries a cid, and natter acks each one once flushed; the
/// report counts the acks (all of them, in a shape matrix too: the cids differ per shape).
#[tokio::test]
async fn fanout_with_cids_counts_every_ack() {
    let s = Server::start(ServerOpts::new().arg("--rate-per-sec", 1000).arg("--rate-burst", 1000)).await;
    let r = bench(&s, &["fanout", "--shapes", "3x2,2x3", "--cid", "--warmup", "0.2", "--duration", "0.5"]);
    for shape in r.as_array().expect("a shape matrix is a JSON array") {
        assert_all_delivered(shape);
        let extra: std::collections::HashMap<String, f64> = serde_json::from_value(shape["extra"].clone())
            .map(|v: Vec<(String, f64)>| v.into_iter().collect())
            .unwrap();
        assert_eq!(extra["acks"], shape["sent"].as_u64().unwrap() as f64, "{shape}");
        assert_eq!(extra["sent, not acked"], 0.0, "{shape}");
    }
}
