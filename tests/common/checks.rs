//! Checks shared by the tests: exact field sets and values of events (`assert_*`) and
//! [`wait_for`] polling.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::now_ms;

/// Asserts the object has exactly these keys.
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
    let mut got: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    got.sort();
    let mut want: Vec<&str> = keys.to_vec();
    want.sort();
    assert_eq!(got, want, "field set of {v}");
}

/// Exact field set of a broadcast `message` (plus `cid`/`offline`/`replay` when present as
/// expected by the caller) and the value checks that hold for every message.
pub fn assert_message(v: &Value, extra: &[&str]) {
    let mut keys = vec!["event", "id", "roomid", "uid", "name", "message", "num", "total", "ts"];
    keys.extend_from_slice(extra);
    assert_keys(v, &keys);
    assert_eq!(v["event"], "message");
    assert!(v["id"].as_u64().unwrap_or(0) >= 1, "id must be a positive integer: {v}");
    assert!(v["num"].is_u64() && v["total"].is_u64(), "num/total must be integers: {v}");
    assert_ts(v);
    if extra.contains(&"offline") {
        assert_eq!(v["offline"], true, "{v}");
    }
    if extra.contains(&"replay") {
        assert_eq!(v["replay"], true, "{v}");
    }
}

/// `ts` is an integer in milliseconds close to now (within 10 minutes: the machine clock).
pub fn assert_ts(v: &Value) {
    let ts = v["ts"].as_i64().unwrap_or_else(|| panic!("ts must be an integer: {v}"));
    assert!((ts - now_ms()).abs() < 600_000, "ts {ts} is not ms since the epoch near now: {v}");
}

pub fn assert_login(v: &Value, room: &str, uid: &str, name: &str, num: u64, total: u64) {
    assert_keys(v, &["event", "roomid", "uid", "name", "num", "total", "ts"]);
    assert_presence(v, "login", room, uid, name, num, total);
    assert_ts(v);
}

pub fn assert_logout(v: &Value, room: &str, uid: &str, name: &str, num: u64, total: u64) {
    assert_keys(v, &["event", "roomid", "uid", "name", "num", "total"]);
    assert_presence(v, "logout", room, uid, name, num, total);
}

/// The values shared by `login` and `logout` broadcasts (field sets are checked by the callers).
fn assert_presence(v: &Value, event: &str, room: &str, uid: &str, name: &str, num: u64, total: u64) {
    assert_eq!(v["event"], event, "{v}");
    assert_eq!(v["roomid"], room, "{v}");
    assert_eq!(v["uid"], uid, "{v}");
    assert_eq!(v["name"], name, "{v}");
    assert_eq!(v["num"], num, "num in {v}");
    assert_eq!(v["total"], total, "total in {v}");
}

/// Poll until `cond` holds (every 100 ms) or panic with `what` after `dur`.
pub async fn wait_for<F, Fut>(dur: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + dur;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {dur:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
