//! Hub tests over the in-memory store: what the integration tests cannot reach in time.

use std::sync::Arc;

use crate::sync::LockExt;

use serde_json::Value;

use super::{Hub, Who};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::store::memory::MemoryStore;
use crate::store::{Bounds, Store};

/// Room for everything a hub test stores, nothing expiring.
fn bounds() -> Bounds {
    Bounds { history_max: 100, offline_max: 100, offline_ttl_ms: 1 << 40, ..Bounds::default() }
}

fn hub() -> (Arc<Hub>, Arc<MemoryStore>) {
    let b = bounds();
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
    hub.publish(&c, &who, "r", "one", None).await.unwrap();
    assert_eq!(hub.evict_idle_rooms().await.unwrap(), 0, "a room with a connection stays");
    hub.disconnect(&c, &who, &["r".to_string()]);
    assert_eq!(hub.evict_idle_rooms().await.unwrap(), 1);
    assert_eq!(store.last_id("r").unwrap(), 1, "the reservation is released: no gap");

    let out2 = Arc::new(Outbox::new(100, 1 << 20));
    let c2 = hub.register(out2.clone());
    hub.join(&c2, &who, "r", None).await.unwrap();
    hub.publish(&c2, &who, "r", "two", None).await.unwrap();
    let ev = events(&out2).await;
    assert_eq!(ev[0]["event"], "login");
    assert_eq!(ev[0]["total"], 1, "membership survived the eviction");
    assert_eq!(ev[1]["id"], 2, "ids continue");
}

#[tokio::test]
async fn a_room_that_never_had_a_message_goes_with_its_last_connection() {
    let (hub, store) = hub();
    let who = Who { uid: "u1", name: "U1" };
    let out = Arc::new(Outbox::new(100, 1 << 20));
    let c = hub.register(out.clone());
    for room in ["fresh", "kept"] {
        hub.join(&c, &who, room, None).await.unwrap();
    }
    assert!(store.last_id("fresh").unwrap() > 0, "opening reserves ids");
    hub.publish(&c, &who, "kept", "one", None).await.unwrap();
    hub.leave(&c, &who, "fresh").await.unwrap();
    assert!(!hub.rooms.locked().contains_key("fresh"), "dropped at once");
    assert_eq!(store.last_id("fresh").unwrap(), 0, "its reservation went with it");
    hub.disconnect(&c, &who, &["kept".to_string()]);
    assert!(hub.rooms.locked().contains_key("kept"), "a room with a message waits for the sweep (its flush)");
    // Back in the dropped room: opened afresh, ids from 1.
    let c2 = hub.register(out.clone());
    hub.join(&c2, &who, "fresh", None).await.unwrap();
    hub.publish(&c2, &who, "fresh", "first", None).await.unwrap();
    let ev = events(&out).await;
    assert_eq!(ev.last().unwrap()["id"], 1, "{ev:?}");
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
    hub.publish(&c2, &who, "r", "still here", None).await.unwrap();
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
    hub.publish(&c2, &who, "r", "after", None).await.unwrap();
    let ev = events(&out).await;
    assert_eq!(ev.last().unwrap()["id"], 1025);
}

/// The memory store behind a gate: its flushes wait until the test opens the gate, and its
/// appends fail while `fail` is set (a full disk).
struct Gated {
    inner: MemoryStore,
    gate: tokio::sync::watch::Sender<bool>,
    fail: std::sync::atomic::AtomicBool,
}

impl crate::store::Store for Gated {
    fn add_member(&self, room: &str, uid: &str) -> anyhow::Result<bool> {
        self.inner.add_member(room, uid)
    }
    fn remove_member(&self, room: &str, uid: &str) -> anyhow::Result<bool> {
        self.inner.remove_member(room, uid)
    }
    fn members(&self, room: &str) -> anyhow::Result<Vec<String>> {
        self.inner.members(room)
    }
    fn user_rooms(&self, uid: &str) -> anyhow::Result<Vec<String>> {
        self.inner.user_rooms(uid)
    }
    fn set_online(&self, room: &str, uid: &str, conns: u32) -> anyhow::Result<()> {
        self.inner.set_online(room, uid, conns)
    }
    fn online(&self, room: &str) -> anyhow::Result<Vec<(String, u32)>> {
        self.inner.online(room)
    }
    fn clear_presence(&self) -> anyhow::Result<()> {
        self.inner.clear_presence()
    }
    fn last_id(&self, room: &str) -> anyhow::Result<u64> {
        self.inner.last_id(room)
    }
    fn reserve_ids(&self, room: &str, upto: u64) -> anyhow::Result<()> {
        self.inner.reserve_ids(room, upto)
    }
    fn release_ids(&self, room: &str, last_id: u64) -> anyhow::Result<()> {
        self.inner.release_ids(room, last_id)
    }
    fn append(&self, a: &crate::store::Append) -> anyhow::Result<u64> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            anyhow::bail!("disk full");
        }
        self.inner.append(a)
    }
    fn enqueue(&self, a: &crate::store::Append, prev: u64) -> anyhow::Result<()> {
        self.inner.enqueue(a, prev)
    }
    fn history_after(&self, room: &str, after: u64) -> anyhow::Result<Vec<crate::store::Stored>> {
        self.inner.history_after(room, after)
    }
    fn queued(&self, uid: &str, room: &str, now_ms: u64) -> anyhow::Result<Vec<crate::store::Queued>> {
        self.inner.queued(uid, room, now_ms)
    }
    fn dequeue(&self, uid: &str, ns: &[u64]) -> anyhow::Result<()> {
        self.inner.dequeue(uid, ns)
    }
    fn offline_len(&self, uid: &str) -> anyhow::Result<usize> {
        self.inner.offline_len(uid)
    }
    fn dedupe_get(&self, uid: &str, cid: &str, now_ms: u64) -> anyhow::Result<Option<(String, u64)>> {
        self.inner.dedupe_get(uid, cid, now_ms)
    }
    fn expire(&self, now_ms: u64) -> anyhow::Result<()> {
        self.inner.expire(now_ms)
    }
    fn flush(&self) -> crate::store::FlushFuture {
        let mut open = self.gate.subscribe();
        Box::pin(async move {
            open.wait_for(|o| *o).await?;
            Ok(())
        })
    }
}

fn gated() -> (Arc<Hub>, Arc<Gated>) {
    let b = bounds();
    let store = Arc::new(Gated {
        inner: MemoryStore::new(b),
        gate: tokio::sync::watch::channel(true).0,
        fail: Default::default(),
    });
    (Hub::new(store.clone(), Arc::new(Metrics::default()), 16), store)
}

/// The next id block is reserved by a flush of its own: no publish waits for the disk, and
/// none gives an id that is not durably reserved yet.
#[tokio::test]
async fn publishes_never_wait_for_an_id_reservation() {
    let (hub, store) = gated();
    let who = Who { uid: "u1", name: "U1" };
    let c = hub.register(Arc::new(Outbox::new(1 << 20, 1 << 30)));
    hub.join(&c, &who, "r", None).await.unwrap();
    // The disk stalls: the first block (65,536 ids) is already durable.
    store.gate.send_replace(false);
    for _ in 0..super::ID_BLOCK {
        hub.publish(&c, &who, "r", "x", None).await.unwrap();
    }
    assert_eq!(store.last_id("r").unwrap(), 2 * super::ID_BLOCK, "the next block is written, not yet flushed");
    let refused = hub.publish(&c, &who, "r", "one too many", None).await;
    assert!(matches!(refused, Err(super::HubError::Unavailable(_))), "{refused:?}");
    // The flush comes through: publishing goes on.
    store.gate.send_replace(true);
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while hub.publish(&c, &who, "r", "after", None).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the reservation completes");
    assert_eq!(store.inner.history_after("r", super::ID_BLOCK).unwrap()[0].id, super::ID_BLOCK + 1);
}

/// A store that cannot take the write: the publish is refused as unavailable and nothing is
/// fanned out; the id is not used.
#[tokio::test]
async fn a_failed_store_write_publishes_nothing() {
    let (hub, store) = gated();
    let who = Who { uid: "u1", name: "U1" };
    let out = Arc::new(Outbox::new(100, 1 << 20));
    let c = hub.register(out.clone());
    hub.join(&c, &who, "r", None).await.unwrap();
    store.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(hub.publish(&c, &who, "r", "lost", Some("c1")).await, Err(super::HubError::Unavailable(_))));
    store.fail.store(false, std::sync::atomic::Ordering::Relaxed);
    hub.publish(&c, &who, "r", "kept", None).await.unwrap();
    let ev = events(&out).await;
    assert_eq!(ev.len(), 2, "the login and the second message only: {ev:?}");
    assert_eq!((ev[1]["id"].as_u64(), ev[1]["message"].as_str()), (Some(1), Some("kept")));
}

/// A member whose only connection is closing gets what is published meanwhile queued.
#[tokio::test]
async fn a_closing_connection_counts_as_offline() {
    let (hub, store) = hub();
    let (alice, bob) = (Who { uid: "a", name: "A" }, Who { uid: "b", name: "B" });
    let ca = hub.register(Arc::new(Outbox::new(100, 1 << 20)));
    hub.join(&ca, &alice, "r", None).await.unwrap();
    // Bob's outbox holds two frames: his login and one message; the next overflows (1013).
    let cb = hub.register(Arc::new(Outbox::new(2, 1 << 20)));
    hub.join(&cb, &bob, "r", None).await.unwrap();
    for text in ["fits", "overflows", "while closing"] {
        hub.publish(&ca, &alice, "r", text, None).await.unwrap();
    }
    assert!(cb.outbox.is_closing());
    let queued: Vec<u64> = store.queued("b", "r", crate::now_ms()).unwrap().iter().map(|q| q.id).collect();
    assert_eq!(queued, vec![2, 3], "the overflowing message and the one after it");
}
