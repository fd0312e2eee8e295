//! Runtime configuration of `natter serve`: plain values, built once from the CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Every limit of PROTOCOL.md's table, plus the store bounds.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Whole message (fragments added up), bytes; equal is allowed.
    pub max_message_bytes: usize,
    /// `message` text, characters.
    pub max_text_chars: usize,
    /// `message` events per second per connection (token bucket refill).
    pub rate_per_sec: f64,
    /// Token bucket size.
    pub rate_burst: f64,
    pub auth_timeout: Duration,
    pub max_auth_failures: u32,
    pub outbound_max_messages: usize,
    pub outbound_max_bytes: usize,
    pub max_connections_per_uid: usize,
    pub max_token_bytes: usize,
    pub expiry_grace: Duration,
    pub handshake_timeout: Duration,
    /// Per-uid offline queue length.
    pub offline_max: usize,
    /// Per-uid offline queue bytes (message JSON), oldest dropped first like the entry cap.
    pub offline_max_bytes: usize,
    pub offline_ttl: Duration,
    /// Dedupe records kept per uid (the oldest go first): bounds what one uid's cids can make
    /// the store hold within the dedupe window.
    pub dedupe_max_per_uid: usize,
    /// Messages kept per room for `since` recovery.
    pub history_max: usize,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_connection: usize,
    /// Rooms one uid may be a member of.
    pub max_rooms_per_uid: usize,
    /// Accepted sockets in all; None: derived from the open-file limit at start
    /// (`admission::default_max_connections`).
    pub max_connections: Option<usize>,
    /// Accepted sockets per client address (IPv6: per /64).
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 65_536,
            max_text_chars: 4_096,
            rate_per_sec: 20.0,
            rate_burst: 50.0,
            auth_timeout: Duration::from_secs(10),
            max_auth_failures: 3,
            outbound_max_messages: 1_024,
            outbound_max_bytes: 1 << 20,
            max_connections_per_uid: 16,
            max_token_bytes: 8_192,
            expiry_grace: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            offline_max: 1_000,
            offline_max_bytes: 16 << 20,
            dedupe_max_per_uid: 10_000,
            offline_ttl: Duration::from_secs(7 * 24 * 3600),
            history_max: 1_000,
            max_rooms_per_connection: 64,
            max_rooms_per_uid: 1_000,
            max_connections: None,
            max_connections_per_ip: 256,
        }
    }
}

/// How long a `cid` is remembered for dedupe (the contract's 10 minutes).
pub const DEDUPE_TTL: Duration = Duration::from_secs(600);

impl Limits {
    /// The part of the limits the store enforces.
    pub fn store_bounds(&self) -> crate::store::Bounds {
        crate::store::Bounds {
            history_max: self.history_max,
            offline_max: self.offline_max,
            offline_max_bytes: self.offline_max_bytes,
            offline_ttl_ms: self.offline_ttl.as_millis() as u64,
            dedupe_ttl_ms: DEDUPE_TTL.as_millis() as u64,
            dedupe_max: self.dedupe_max_per_uid,
        }
    }
}

/// The server's default bounds, for tests and benches that set only what they test.
impl Default for crate::store::Bounds {
    fn default() -> Self {
        Limits::default().store_bounds()
    }
}

/// How tokens are verified.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(Vec<u8>),
    /// RS256 or ES256 public key, PEM.
    PublicPem(Vec<u8>),
}

/// How tokens are verified and what they are read for.
#[derive(Clone)]
pub struct JwtConfig {
    pub key: JwtKey,
    /// Claim that holds the uid.
    pub uid_claim: String,
    /// Claim that lists the rooms the token allows (docs/protocol.md, "Room permissions").
    pub rooms_claim: String,
    pub leeway: Duration,
    /// When set, `aud` must be present and name it.
    pub audience: Option<String>,
    /// When set, `iss` must be present and equal it.
    pub issuer: Option<String>,
}

/// The Redis a scaled-out node keeps the store in.
#[derive(Clone)]
pub struct RedisTarget {
    /// With the password from `--redis-password-file` in it, if given: never logged.
    pub url: String,
    pub prefix: String,
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `/metrics` and `/healthz` on this address instead of on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Both or neither; validated at startup.
    pub tls: Option<crate::tls::TlsFiles>,
    pub data_dir: PathBuf,
    /// Scaled out: the store is in this Redis, not in `data_dir`.
    pub redis: Option<RedisTarget>,
    pub jwt: JwtConfig,
    /// Rooms a token without the rooms claim may join.
    pub public_rooms: crate::access::RoomPatterns,
    pub heartbeat: Duration,
    /// Extra allowed `Origin`s (`scheme://host[:port]`), lower-cased; same-host is always allowed.
    pub allowed_origins: Vec<String>,
    /// Enables `/dev/token`.
    pub dev: bool,
    /// Peers whose `X-Forwarded-For` names the client that per-address limits count.
    pub trusted_proxies: Vec<crate::admission::Cidr>,
    pub limits: Limits,
}
