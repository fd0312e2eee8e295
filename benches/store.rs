//! Store operations on the publish and (re)join paths of the embedded sled backend: `append`
//! (history + one queue entry per offline member + dedupe), `history_after`, `queued` +
//! `dequeue`, `dedupe_get`, and a group-commit flush (N appends, one `flush().await`), which
//! is what an ack waits for. The memory backend's `append` is there for comparison.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use natter::store::memory::MemoryStore;
use natter::store::sled_store::SledStore;
use natter::store::{Append, Bounds, Store};

/// The server's defaults (`--history-max`, `--offline-max`, offline TTL, dedupe TTL).
fn bounds() -> Bounds {
    Bounds::default()
}
const ROOM: &str = "lobby";

/// A stored `message` object with 100 bytes of text, as the hub encodes it.
fn message_json() -> Vec<u8> {
    natter::protocol::message(&natter::protocol::MessageOut {
        event: "message",
        id: 1,
        roomid: ROOM,
        uid: "u-sender",
        name: "alice",
        message: &"x".repeat(100),
        num: 20,
        total: 20,
        ts: natter::now_ms(),
        cid: Some("c-000001"),
    })
}

fn uids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u-{i:04}")).collect()
}

fn sled_store() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), bounds()).unwrap();
    (dir, store)
}

/// Dedupe records alive at once (expiry keeps the set bounded): cids cycle through this many.
const LIVE_CIDS: u64 = 10_000;

/// One publish: the next id, queued for `offline`, with a dedupe record (like a client `cid`).
fn append_one(store: &dyn Store, ids: &AtomicU64, json: &[u8], offline: &[&str]) {
    let id = ids.fetch_add(1, Relaxed) + 1;
    let cid = format!("c-{}", id % LIVE_CIDS);
    let a = Append { room: ROOM, id, json, offline, dedupe: Some(("u-sender", &cid)), now_ms: natter::now_ms() };
    store.append(black_box(&a)).unwrap();
}

/// Fills the history window and every offline member's queue to its cap (untimed), so that
/// each timed append also trims, as in a busy room: the steady state, not a fresh store.
fn steady(store: &dyn Store, ids: &AtomicU64, json: &[u8], offline: &[&str]) {
    for _ in 0..=bounds().history_max.max(bounds().offline_max) {
        append_one(store, ids, json, offline);
    }
}

fn append(c: &mut Criterion) {
    let json = message_json();
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(1));
    for offline in [0usize, 20, 90] {
        let members = uids(offline);
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        let (_dir, sled) = sled_store();
        let ids = AtomicU64::new(0);
        steady(&sled, &ids, &json, &refs);
        g.bench_with_input(BenchmarkId::new("sled", offline), &refs, |b, refs| {
            b.iter(|| append_one(&sled, &ids, &json, refs))
        });
        let mem = MemoryStore::new(bounds());
        let ids = AtomicU64::new(0);
        steady(&mem, &ids, &json, &refs);
        g.bench_with_input(BenchmarkId::new("memory", offline), &refs, |b, refs| {
            b.iter(|| append_one(&mem, &ids, &json, refs))
        });
    }
    g.finish();
}

fn reads(c: &mut Criterion) {
    let json = message_json();
    let (_dir, sled) = sled_store();
    let ids = AtomicU64::new(0);
    steady(&sled, &ids, &json, &[]);
    let last = ids.load(Relaxed);
    let mut g = c.benchmark_group("sled");
    // A client reconnecting with `since`, 50 messages behind.
    g.throughput(Throughput::Elements(50));
    g.bench_function("history_after_50", |b| {
        b.iter(|| {
            let h = sled.history_after(ROOM, black_box(last - 50)).unwrap();
            assert_eq!(h.len(), 50);
            h
        })
    });
    // Every publish with a `cid` looks its dedupe record up first: usually a miss.
    g.throughput(Throughput::Elements(1));
    let hit = format!("c-{}", last % LIVE_CIDS);
    g.bench_function("dedupe_get_hit", |b| {
        b.iter(|| sled.dedupe_get("u-sender", black_box(&hit), natter::now_ms()).unwrap().unwrap())
    });
    g.bench_function("dedupe_get_miss", |b| {
        b.iter(|| sled.dedupe_get("u-sender", black_box("c-none"), natter::now_ms()).unwrap())
    });
    // A member coming back to 20 queued messages: read them, deliver, dequeue. The queue is
    // refilled before each iteration (untimed); the store is shared, hence one per iteration.
    const QUEUED: usize = 20;
    g.throughput(Throughput::Elements(QUEUED as u64));
    g.bench_function("queued_dequeue_20", |b| {
        b.iter_batched(
            || {
                for _ in 0..QUEUED {
                    append_one(&sled, &ids, &json, &["u-back"]);
                }
            },
            |()| {
                let q = sled.queued("u-back", ROOM, natter::now_ms()).unwrap();
                assert_eq!(q.len(), QUEUED);
                let ns: Vec<u64> = q.iter().map(|e| e.n).collect();
                sled.dequeue("u-back", &ns).unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let json = message_json();
    let (_dir, sled) = sled_store();
    let ids = AtomicU64::new(0);
    steady(&sled, &ids, &json, &[]);
    let mut g = c.benchmark_group("group_commit");
    for n in [1u64, 10, 100] {
        // Throughput per message: what one flush costs each ack it serves. No offline members,
        // so that at N = 1 the flush dominates (compare `append/sled/0`).
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("sled_appends_then_flush", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async {
                for _ in 0..n {
                    append_one(&sled, &ids, &json, &[]);
                }
                sled.flush().await.unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, append, reads, group_commit);
criterion_main!(benches);
