//! Fan-out cost per delivery: a published message is encoded and framed once, then the same
//! `Bytes` frame is pushed to every connection's real `Outbox` (what `RoomState::fan_out`
//! does), compared with encoding per recipient. Throughput is in deliveries.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use natter::metrics::Metrics;
use natter::outbox::{Outbox, Pushed};
use natter::wire;

/// The server's default `--outbound-max-messages` / `--outbound-max-bytes`.
const OUT_MAX_MESSAGES: usize = 1_024;
const OUT_MAX_BYTES: usize = 1 << 20;
/// Publishes between two drains: a live writer keeps queues short, and this stays far under
/// the outbox limits, so every push is `Queued`.
const CHUNK: u64 = 16;

/// A room of `n` connections, keyed like the hub's `conns` map. Each outbox has been used once
/// so that its queue already has capacity, as a live connection's does.
fn room(n: usize, rt: &tokio::runtime::Runtime) -> HashMap<u64, Arc<Outbox>> {
    let conns: HashMap<u64, Arc<Outbox>> =
        (0..n as u64).map(|id| (id, Arc::new(Outbox::new(OUT_MAX_MESSAGES, OUT_MAX_BYTES)))).collect();
    for o in conns.values() {
        o.push(Bytes::from_static(b"warm"));
    }
    drain(&conns, rt);
    conns
}

/// The writer side: takes everything queued and marks it written (untimed).
fn drain(conns: &HashMap<u64, Arc<Outbox>>, rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let mut v = Vec::new();
        for o in conns.values() {
            o.take(&mut v).await;
            o.written();
            v.clear();
        }
    });
}

/// Runs `publish` `iters` times against `conns`, timing only the publishes; drains the
/// outboxes every `CHUNK` publishes, and checks that every push was queued.
fn timed(
    iters: u64,
    conns: &HashMap<u64, Arc<Outbox>>,
    rt: &tokio::runtime::Runtime,
    metrics: &Metrics,
    mut publish: impl FnMut() -> u64,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(CHUNK);
        let before = metrics.messages_out.get();
        let start = Instant::now();
        for _ in 0..k {
            metrics.messages_out.add(black_box(publish()));
        }
        total += start.elapsed();
        assert_eq!(metrics.messages_out.get() - before, k * conns.len() as u64, "a push was not queued");
        drain(conns, rt);
        left -= k;
    }
    total
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let metrics = Metrics::default();
    let text = "x".repeat(100);
    let mut g = c.benchmark_group("fanout");
    for n in [10usize, 100, 1000] {
        let conns = room(n, &rt);
        g.throughput(Throughput::Elements(n as u64));
        // natter's way: one encode + one frame, then a refcount bump and a push per recipient.
        g.bench_with_input(BenchmarkId::new("encode_once", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                timed(iters, &conns, &rt, &metrics, || {
                    let frame = wire::text(&common::message_json(black_box(&text), n, n, None));
                    let mut queued = 0;
                    for o in conns.values() {
                        if o.push(frame.clone()) == Pushed::Queued {
                            queued += 1;
                        }
                    }
                    queued
                })
            })
        });
        // The naive way: serialize and frame the same message again for every recipient.
        g.bench_with_input(BenchmarkId::new("encode_per_recipient", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                timed(iters, &conns, &rt, &metrics, || {
                    let mut queued = 0;
                    for o in conns.values() {
                        if o.push(wire::text(&common::message_json(black_box(&text), n, n, None))) == Pushed::Queued {
                            queued += 1;
                        }
                    }
                    queued
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
