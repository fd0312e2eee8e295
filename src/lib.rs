//! natter: a self-hosted real-time chat server (library half; `main.rs` is the CLI).
//!
//! Data flows one way: `server` (accept, `admission`, TLS) -> `http` (routes, upgrade) -> `session`
//! (reader/writer tasks) -> `protocol` (decode) -> `hub` (rooms, presence) -> `store`.
//! Fan-out goes back through the `broker` to each connection's `outbox`.

pub mod access;
pub mod admission;
pub mod assets;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod check;
pub mod cli;
pub mod config;
pub mod dump;
pub mod durability;
pub mod http;
pub mod hub;
pub mod inspect;
pub mod metrics;
pub mod metrics_http;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
pub mod supervise;
pub(crate) mod sync;
pub mod tls;
pub mod wire;

/// What the cargo-fuzz targets in `fuzz/` reach that is otherwise crate-private.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::Reject;
    pub use crate::session::Upgrade;

    /// The WebSocket upgrade decision of `http.rs` (no I/O).
    pub fn check_upgrade<B>(req: &hyper::Request<B>, allowed_origins: &[String], tls: bool) -> Result<Upgrade, Reject> {
        crate::http::check_upgrade(req, allowed_origins, tls)
    }
}

/// Milliseconds since the Unix epoch: the `ts` of every event and the clock of TTLs.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
