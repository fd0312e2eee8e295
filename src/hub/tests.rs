//! Hub tests over the in-memory store: what the integration tests cannot reach in time.

use std::sync::Arc;

use serde_json::Value;

use super::{Hub, Who};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::store::memory::MemoryStore;
use crate::store::{Bounds, Store};

fn hub() -> (Arc<Hub>, Arc<MemoryStore>) {
    let b = Bounds { history_max: 100, offline_max: 100, offline_ttl_ms: 1 << 40, dedupe_ttl_ms: 600_000 };
    let store = Arc::new(MemoryStore::new(b));
    (Hub::new(store.clone(), Arc::new(Metrics::default()), 16), store)
}

/// Every JSON event queued to an outbox so far (frames are unmasked text: 2 to 4 header bytes).
async fn events(out: &Outbox) -> Vec<Value> {
    let mut frames = Vec::new();
    out.take(&mut frames).await;
    out.written();
    frames
        .iter()
        .map(|f| {
            let start = match f[1] & 0x7f {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            serde_json::from_slice(&f[start..]).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn idle_rooms_are_evicted_and_reopen_where_they_were() {
    let (hub, store) = hub();
    let who = Who { uid: "u1", name: "U1" };
    let out = Arc::new(Outbox::new(100, 1 << 20));
    let c = hub.register(out.clone());
    hub.join(&c, &who, "r", None).await.unwrap();
    hub.publish(&c, &who, "r", "one", None).unwrap();
    assert_eq!(hub.evict_idle_rooms().await.unwrap(), 0, "a room with a connection stays");
    hub.disconnect(&c, &who, &["r".to_string()]);
    assert_eq!(hub.evict_idle_rooms().await.unwrap(), 1);
    assert_eq!(store.last_id("r").unwrap(), 1, "the reservation is released: no gap");

    let out2 = Arc::new(Outbox::new(100, 1 << 20));
    let c2 = hub.register(out2.clone());
    hub.join(&c2, &who, "r", None).await.unwrap();
    hub.publish(&c2, &who, "r", "two", None).unwrap();
    let ev = events(&out2).await;
    assert_eq!(ev[0]["event"], "login");
    assert_eq!(ev[0]["total"], 1, "membership survived the eviction");
    assert_eq!(ev[1]["id"], 2, "ids continue");
}

#[tokio::test]
async fn a_room_in_use_again_is_not_evicted() {
    let (hub, _store) = hub();
    let who = Who { uid: "u1", name: "U1" };
    let out = Arc::new(Outbox::new(100, 1 << 20));
    let c = hub.register(out.clone());
    hub.join(&c, &who, "r", None).await.unwrap();
    hub.disconnect(&c, &who, &["r".to_string()]);
    let c2 = hub.register(out.clone());
    hub.join(&c2, &who, "r", None).await.unwrap();
    assert_eq!(hub.evict_idle_rooms().await.unwrap(), 0);
    hub.publish(&c2, &who, "r", "still here", None).unwrap();
    let ev = events(&out).await;
    assert_eq!(ev.last().unwrap()["message"], "still here");
}

/// After a crash a room resumes at its reservation; that number must survive the room's
/// eviction (and a clean stop), or ids seen before the crash would be given again.
#[tokio::test]
async fn ids_resumed_after_a_crash_survive_an_eviction() {
    let (hub, store) = hub();
    // As left by a crash: id 100 stored, ids up to 1024 reserved (some may have gone out).
    let json = br#"{"id":100}"#;
    store.append(&crate::store::Append { room: "r", id: 100, json, offline: &[], dedupe: None, now_ms: 0 }).unwrap();
    store.reserve_ids("r", 1024).unwrap();
    let who = Who { uid: "u1", name: "U1" };
    let out = Arc::new(Outbox::new(100, 1 << 20));
    let c = hub.register(out.clone());
    hub.join(&c, &who, "r", None).await.unwrap();
    hub.disconnect(&c, &who, &["r".to_string()]);
    assert_eq!(hub.evict_idle_rooms().await.unwrap(), 1);
    let c2 = hub.register(out.clone());
    hub.join(&c2, &who, "r", None).await.unwrap();
    hub.publish(&c2, &who, "r", "after", None).unwrap();
    let ev = events(&out).await;
    assert_eq!(ev.last().unwrap()["id"], 1025);
}
