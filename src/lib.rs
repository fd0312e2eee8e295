//! natter: a self-hosted real-time chat server (library half; `main.rs` is the CLI).
//!
//! Data flows one way: `server` (accept, TLS) -> `http` (routes, upgrade) -> `session`
//! (reader/writer tasks) -> `protocol` (decode) -> `hub` (rooms, presence) -> `store`.
//! Fan-out goes back through each connection's `outbox`, held by the hub.

pub mod assets;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod durability;
pub mod http;
pub mod hub;
pub mod inspect;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
pub mod supervise;
pub(crate) mod sync;
pub mod tls;
pub mod wire;

/// Milliseconds since the Unix epoch: the `ts` of every event and the clock of TTLs.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
