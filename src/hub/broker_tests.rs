//! The hub sends every room event through its broker, in id order, subscribing to a room
//! before it opens it and unsubscribing when it drops it; connections get nothing live that
//! the broker did not deliver.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{Hub, Who};
use crate::broker::{Broker, Conns, Kind, LocalBroker, Missed, Publication, SubscribeFuture, Subscribers};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::store::memory::MemoryStore;
use crate::sync::LockExt;

#[derive(Debug, PartialEq)]
enum Call {
    Publish(String, Kind, bool),
    Subscribe(String),
    Unsubscribe(String),
}

/// Records every call; passes publications on to a `LocalBroker` unless `silent`.
struct Recording {
    inner: LocalBroker,
    silent: bool,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Broker for Recording {
    fn publish(&self, room: &str, here: &Conns, p: &Publication) -> anyhow::Result<Missed> {
        self.calls.locked().push(Call::Publish(room.into(), p.kind, p.except.is_some()));
        if self.silent {
            return Ok(Vec::new());
        }
        self.inner.publish(room, here, p)
    }
    fn subscribe(&self, room: &str) -> SubscribeFuture {
        self.calls.locked().push(Call::Subscribe(room.into()));
        self.inner.subscribe(room)
    }
    fn unsubscribe(&self, room: &str) {
        self.calls.locked().push(Call::Unsubscribe(room.into()));
    }
}

fn hub(silent: bool) -> (Arc<Hub>, Arc<Mutex<Vec<Call>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let store = Arc::new(MemoryStore::new(Default::default()));
    let hub = Hub::with_broker(store, Arc::new(Metrics::default()), 16, usize::MAX, move |subs: Arc<Subscribers>| {
        Arc::new(Recording { inner: LocalBroker::new(subs), silent, calls: c }) as Arc<dyn Broker>
    });
    (hub, calls)
}

async fn events(out: &Outbox) -> Vec<Value> {
    let mut frames = Vec::new();
    // Room for all 100 frames: nothing is queued (`take` would wait).
    if out.has_room(100, 0) {
        return Vec::new();
    }
    out.take(&mut frames).await;
    out.written();
    frames.iter().map(|f| serde_json::from_slice(&f[if f[1] & 0x7f == 126 { 4 } else { 2 }..]).unwrap()).collect()
}

fn names(evs: &[Value]) -> Vec<String> {
    evs.iter().map(|e| e["event"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn every_room_event_goes_through_the_broker_in_id_order() {
    let (hub, calls) = hub(false);
    let (a, b) = (Who { uid: "a", name: "A" }, Who { uid: "b", name: "B" });
    let (oa, ob) = (Arc::new(Outbox::new(100, 1 << 20)), Arc::new(Outbox::new(100, 1 << 20)));
    let (ca, cb) = (hub.register(oa.clone()), hub.register(ob.clone()));
    hub.join(&ca, &a, "r", None).await.unwrap();
    hub.join(&cb, &b, "r", None).await.unwrap();
    for text in ["1", "2", "3"] {
        hub.publish(&ca, &a, "r", text, None).await.unwrap();
    }
    hub.leave(&cb, &b, "r").await.unwrap();
    hub.disconnect(&ca, &a, &["r".to_string()]);
    assert_eq!(hub.evict_idle_rooms().await.unwrap(), 1);

    let r = || "r".to_string();
    let msg = |id, prev| Call::Publish(r(), Kind::Message { id, prev }, false);
    assert_eq!(
        *calls.locked(),
        vec![
            Call::Subscribe(r()),
            // Each joiner's `login` goes to the others; the joiner gets its own copy directly.
            Call::Publish(r(), Kind::Presence, true),
            Call::Publish(r(), Kind::Presence, true),
            msg(1, 0),
            msg(2, 1),
            msg(3, 2),
            Call::Publish(r(), Kind::Presence, false),
            Call::Publish(r(), Kind::Presence, false),
            Call::Unsubscribe(r()),
        ]
    );
    assert_eq!(names(&events(&oa).await), ["login", "login", "message", "message", "message", "logout"]);
    assert_eq!(names(&events(&ob).await), ["login", "message", "message", "message"]);
}

#[tokio::test]
async fn connections_get_nothing_live_the_broker_did_not_deliver() {
    let (hub, _) = hub(true);
    let (a, b) = (Who { uid: "a", name: "A" }, Who { uid: "b", name: "B" });
    let (oa, ob) = (Arc::new(Outbox::new(100, 1 << 20)), Arc::new(Outbox::new(100, 1 << 20)));
    let (ca, cb) = (hub.register(oa.clone()), hub.register(ob.clone()));
    hub.join(&ca, &a, "r", None).await.unwrap();
    hub.join(&cb, &b, "r", None).await.unwrap();
    hub.publish(&ca, &a, "r", "hi", None).await.unwrap();
    // Only what is a joiner's own: its `login`.
    assert_eq!(names(&events(&oa).await), ["login"]);
    assert_eq!(names(&events(&ob).await), ["login"]);
    // The message is stored all the same: a joiner with `since` gets it replayed.
    let oc = Arc::new(Outbox::new(100, 1 << 20));
    let cc = hub.register(oc.clone());
    hub.join(&cc, &Who { uid: "c", name: "C" }, "r", Some(0)).await.unwrap();
    let evs = events(&oc).await;
    assert_eq!(names(&evs), ["login", "message"]);
    assert_eq!(evs[1]["replay"], true);
}
