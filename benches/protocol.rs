//! Protocol hot path, per frame: decoding client events (every inbound frame goes through it),
//! encoding the outgoing `message`, `with_mark` (offline/replay delivery) and `wire::text`
//! framing. These bound the per-message CPU cost before any I/O.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use natter::protocol::{self, DecodeLimits, Mark, MessageOut};
use natter::wire;

/// The server's default `--max-text-chars`.
const LIMITS: DecodeLimits = DecodeLimits { max_text_chars: 4_096 };

/// A typical chat line: 100 bytes of text.
fn text_100() -> String {
    let s = "The quick brown fox jumps over the lazy dog; natter fans it out to every member of the room. ok!!";
    let s = format!("{s}{}", "x".repeat(100 - s.len()));
    assert_eq!(s.len(), 100);
    s
}

fn decode(c: &mut Criterion) {
    let text = text_100();
    let message = format!(r#"{{"event":"message","roomid":"lobby","message":"{text}","cid":"c-000123"}}"#);
    let login = r#"{"event":"login","name":"alice","roomid":"lobby","since":48190}"#;
    // Truncated mid-string: passes the leading '{' check, fails in serde.
    let bad = format!(r#"{{"event":"message","roomid":"lobby","message":"{}"#, &text[..60]);
    assert!(matches!(protocol::decode(&message, LIMITS), Ok(protocol::ClientEvent::Message { .. })));
    assert!(matches!(protocol::decode(login, LIMITS), Ok(protocol::ClientEvent::Login { since: Some(_), .. })));
    assert_eq!(protocol::decode(&bad, LIMITS).unwrap_err().code, protocol::ErrorCode::BadJson);

    let mut g = c.benchmark_group("decode");
    for (name, input) in [("message", message.as_str()), ("login_since", login), ("bad_json", bad.as_str())] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| b.iter(|| protocol::decode(black_box(input), LIMITS)));
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let text = text_100();
    let json = common::message_json(&text, 12, 20, Some("c-000123"));
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("message", |b| {
        b.iter(|| {
            protocol::message(&MessageOut {
                event: "message",
                id: black_box(48_213),
                roomid: "lobby",
                uid: "u-7f3a9c",
                name: "alice",
                message: black_box(&text),
                num: 12,
                total: 20,
                ts: 1_764_100_000_000,
                cid: Some("c-000123"),
            })
        })
    });
    g.bench_function("with_mark_offline", |b| b.iter(|| protocol::with_mark(black_box(&json), Mark::Offline)));
    g.bench_function("with_mark_replay", |b| b.iter(|| protocol::with_mark(black_box(&json), Mark::Replay)));
    g.bench_function("wire_text", |b| b.iter(|| wire::text(black_box(&json))));
    // What the hub does per published message before fan-out: encode, then frame once.
    g.bench_function("message_and_frame", |b| {
        b.iter(|| wire::text(&common::message_json(black_box(&text), 12, 20, Some("c-000123"))))
    });
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
