//! Shared helper for natter's black-box integration tests: module map, re-exports, constants.
//!
//! Everything here talks to the real binary (`CARGO_BIN_EXE_natter`) over sockets:
//! - [`Server`]: spawn / kill / terminate / restart `natter serve` on a temp data dir (also
//!   with a given open-file limit); streams to it, also from a given local address.
//! - [`token`] and friends: mint HS256 (and deliberately broken) JWTs.
//! - [`Client`]: a tokio-tungstenite client (ws or wss) with JSON helpers.
//! - [`RawWs`]: a hand-rolled WebSocket client writing raw frame bytes, for RFC 6455 violations.
//! - [`http_get`] / [`raw_http`] / [`metrics`]: minimal HTTP/1.1 over TCP or TLS.
//! - [`oracle`]: the crash oracle's model and checks (used by tests/crash/; not re-exported).
//! - [`Rng`]: a tiny seeded PRNG for reproducible plans.
//! - [`TestRedis`]: a redis-server of its own on a free loopback port, for `serve --redis`.
//!
//! Set `NATTER_TEST_STDERR=inherit` to see the server's logs on the test's stderr; by default
//! they go to a file in the server's temp dir and are printed when startup fails.
//!
//! Every public name is re-exported here, so test files only need `use common::*;`:
//! - `server`: [`ServerOpts`], [`Server`], [`run_natter`], [`run_serve`].
//! - `tokens`: [`token`], [`token_rooms`], [`token_claims`], [`alg_none_token`], [`b64url`].
//! - `tls`: [`TlsFiles`], [`generate_tls`], [`tls_client_config`].
//! - `client`: [`Client`], [`ConnectOpts`], [`Incoming`], [`ConnectError`], [`two_in_room`],
//!   [`two_in_room_as`] (receive side in `client/recv.rs`).
//! - `raw`: [`RawWs`], [`RawFrame`], [`encode_frame`], opcodes and [`MASK`].
//! - `http`: [`raw_http`], [`raw_http_io`], [`http_get`], [`healthz`], [`metrics`], [`metric_value`],
//!   [`upgrade_request`], [`read_head`], [`dropped_within`].
//! - `checks`: `assert_*` field-set checks and [`wait_for`].
//! - `rng`: [`Rng`].
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

mod checks;
mod client;
pub mod echo_room;
mod http;
pub mod oracle;
pub mod proc;
mod raw;
/// A throwaway redis-server (the library's own test helper, shared rather than copied).
#[path = "../../src/store/redis_store/test_server.rs"]
pub mod redis_server;
mod rng;
mod server;
mod tls;
mod tokens;

#[allow(unused_imports)]
pub(crate) use redis_server::TestRedis;

// Each test binary uses only part of the helper, so unused re-exports are expected.
#[allow(unused_imports)]
pub use {
    checks::{assert_keys, assert_login, assert_logout, assert_message, assert_ts, wait_for},
    client::{is_heartbeat_ping, two_in_room, two_in_room_as, Client, ConnectError, ConnectOpts, Incoming},
    http::{
        dropped_within, healthz, http_get, metric_value, metrics, raw_http, raw_http_io, read_head, upgrade_request,
        HttpResponse,
    },
    raw::{encode_frame, RawFrame, RawWs, MASK, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT},
    rng::Rng,
    server::{run_natter, run_serve, Server, ServerOpts},
    tls::{generate_tls, tls_client_config, TlsFiles},
    tokens::{alg_none_token, b64url, token, token_claims, token_rooms},
};

pub const SECRET: &str = "natter-test-secret-0123456789abcdef";
/// The exact text sent for any event before a successful auth (PROTOCOL.md, tutorial's text).
pub const NOAUTH_TEXT: &str = "please auth again, your token is expired!";
/// Default time to wait for an expected event.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test; `NATTER_TEST_BIN` points a measurement at another build (an earlier
/// commit, for a before/after figure).
pub fn natter_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::var("NATTER_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_natter").to_string()))
}

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;
pub type Ws = WebSocketStream<BoxIo>;
