//! The hub's own cost per publish: `Hub::publish` into one room of `n` joined connections,
//! in-memory store, outboxes drained between chunks (untimed). This is what the fan-out seam
//! (broker) must keep: store append, id, encode once, one push per recipient, the ack.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt as _;
use natter::hub::{Conn, Hub, Who};
use natter::metrics::Metrics;
use natter::outbox::Outbox;
use natter::store::memory::MemoryStore;

/// Publishes between two drains, far under the outbox limits.
const CHUNK: u64 = 16;

struct Room {
    hub: Arc<Hub>,
    conns: Vec<Arc<Conn>>,
    uids: Vec<String>,
}

fn room(n: usize, rt: &tokio::runtime::Runtime) -> Room {
    let store = Arc::new(MemoryStore::new(Default::default()));
    let hub = Hub::new(store, Arc::new(Metrics::default()), 16);
    let uids: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let conns: Vec<Arc<Conn>> = (0..n).map(|_| hub.register(Arc::new(Outbox::new(1_024, 1 << 20)))).collect();
    rt.block_on(async {
        for (c, uid) in conns.iter().zip(&uids) {
            hub.join(c, &Who { uid, name: uid }, "lobby", None).await.unwrap();
        }
    });
    let r = Room { hub, conns, uids };
    drain(&r, rt);
    r
}

/// The writers' side (untimed), and a turn for the hub's spawned tasks (id reservations).
fn drain(r: &Room, rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        tokio::task::yield_now().await;
        let mut v = Vec::new();
        for c in &r.conns {
            if c.outbox.has_room(1_024, 1) {
                // Nothing queued: `take` would wait.
                continue;
            }
            c.outbox.take(&mut v).await;
            c.outbox.written();
            v.clear();
        }
    });
}

/// One publish on the embedded store, which never waits: polled once, it is done.
fn publish_now(r: &Room, who: &Who, text: &str) {
    r.hub
        .publish(&r.conns[0], who, "lobby", black_box(text), None)
        .now_or_never()
        .expect("no await on one node")
        .unwrap();
}

fn publish(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let text = "x".repeat(100);
    let mut g = c.benchmark_group("hub_publish");
    for n in [2usize, 100] {
        let r = room(n, &rt);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let _rt = rt.enter();
                let who = Who { uid: &r.uids[0], name: "alice" };
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let k = left.min(CHUNK);
                    let start = Instant::now();
                    for _ in 0..k {
                        publish_now(&r, &who, &text);
                    }
                    total += start.elapsed();
                    drain(&r, &rt);
                    left -= k;
                }
                total
            })
        });
    }
    g.finish();
}

/// `NATTER_HUB_ITERS=N`: N publishes per room size (`NATTER_HUB_SIZES`, default `2,100`), no
/// criterion, for instruction counts
/// (`valgrind --tool=callgrind --toggle-collect='*Hub*publish*'`), which the noise of a shared
/// machine does not move.
fn fixed(iters: u64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _rt = rt.enter();
    let text = "x".repeat(100);
    let sizes = std::env::var("NATTER_HUB_SIZES").unwrap_or_else(|_| "2,100".into());
    for n in sizes.split(',').map(|n| n.parse::<usize>().expect("NATTER_HUB_SIZES: room sizes, comma-separated")) {
        let r = room(n, &rt);
        let who = Who { uid: &r.uids[0], name: "alice" };
        let start = Instant::now();
        for i in 0..iters {
            publish_now(&r, &who, &text);
            if i % CHUNK == CHUNK - 1 {
                drain(&r, &rt);
            }
        }
        println!("room of {n}: {iters} publishes in {:?}", start.elapsed());
    }
}

criterion_group!(benches, publish);

fn main() {
    if let Some(iters) = std::env::var("NATTER_HUB_ITERS").ok().and_then(|v| v.parse().ok()) {
        return fixed(iters);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
