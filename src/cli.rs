//! Command-line interface: flags (each also read from `NATTER_<FLAG>`), turned into a `Config`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::access::RoomPatterns;
use crate::config::{Config, JwtConfig, JwtKey, Limits};

mod redis_args;
mod store_tools;
pub use redis_args::RedisArgs;
pub use store_tools::{DumpArgs, GetArgs, KeysArgs, RestoreArgs};

/// Shortest HS256 secret accepted outside --dev, bytes (the key size of HMAC-SHA256).
pub const MIN_SECRET_BYTES: usize = 32;
/// --listen's default.
const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8443);
/// --listen's default under --dev.
const DEV_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);

#[derive(Parser, Debug)]
#[command(name = "natter", version, about = "A self-hosted real-time chat server over wss://")]
pub struct Cli {
    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// shippers.
    #[arg(long, global = true, env = "NATTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the chat server.
    Serve(Box<ServeArgs>),
    /// Check what `serve` would start with (the same flags and environment): flags, certificate
    /// and key, data dir, listen addresses. Prints one `ok: ...` line, or names what is wrong.
    Check(Box<ServeArgs>),
    /// Print a signed HS256 token (for tests, scripts and the bench tool).
    Token(TokenArgs),
    /// List logical store keys matching a glob PATTERN (redis-cli style). Stop the server first.
    Keys(KeysArgs),
    /// Print one logical store key (redis-cli style). Stop the server first.
    Get(GetArgs),
    /// Write the store as JSON lines of its logical keys, for `restore`. Stop the server first.
    Dump(DumpArgs),
    /// Load a `dump` into a new, empty store.
    Restore(RestoreArgs),
    /// Load-test a natter (or any tutorial-protocol) server: fan-out, latency.
    Bench(Box<crate::bench::BenchArgs>),
}

/// Durations on the command line are seconds, decimals allowed (`0.5`).
fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("'{s}' must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Like `secs`, but zero is allowed (a strict clock leeway).
fn secs_or_zero(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => secs(s),
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the real one is printed). Default
    /// 0.0.0.0:8443, or 127.0.0.1:8443 under --dev.
    #[arg(long, env = "NATTER_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve `/metrics` (and `/healthz`) on this address instead, e.g. 127.0.0.1:9100; the main
    /// port then answers /metrics with 404.
    #[arg(long, env = "NATTER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// TLS certificate chain, PEM. With --key: serve https/wss.
    #[arg(long, env = "NATTER_CERT")]
    pub cert: Option<PathBuf>,
    /// TLS private key, PEM.
    #[arg(long, env = "NATTER_KEY")]
    pub key: Option<PathBuf>,
    /// Data directory of the embedded store.
    #[arg(long, env = "NATTER_DATA", default_value = "./natter-data")]
    pub data: PathBuf,
    /// HS256 shared secret.
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 secret (trailing newline ignored).
    #[arg(long, env = "NATTER_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// RS256/ES256 public key, PEM (instead of a secret).
    #[arg(long, env = "NATTER_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Claim that holds the uid.
    #[arg(long, env = "NATTER_JWT_UID_CLAIM", default_value = "sub")]
    pub jwt_uid_claim: String,
    /// Claim that lists the rooms a token allows (exact ids, `prefix*`, `*`).
    #[arg(long, env = "NATTER_JWT_ROOMS_CLAIM", default_value = crate::auth::DEFAULT_ROOMS_CLAIM)]
    pub jwt_rooms_claim: String,
    /// Require this `aud` in every token.
    #[arg(long, env = "NATTER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Require this `iss` in every token.
    #[arg(long, env = "NATTER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Rooms a token without the rooms claim may join, comma-separated patterns (`lobby,help-*`,
    /// `*`). Default: none, or `*` under --dev.
    #[arg(long, env = "NATTER_PUBLIC_ROOMS")]
    pub public_rooms: Option<String>,
    /// Clock leeway for exp/nbf, seconds.
    #[arg(long, env = "NATTER_JWT_LEEWAY", default_value = "5", value_parser = secs_or_zero)]
    pub jwt_leeway: Duration,
    /// Heartbeat interval, seconds.
    #[arg(long, env = "NATTER_HEARTBEAT", default_value = "30", value_parser = secs)]
    pub heartbeat: Duration,
    /// Comma-separated extra allowed origins (`https://chat.example.com`); same host is always allowed.
    #[arg(long, env = "NATTER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Development mode: self-signed localhost cert in certs/dev/, random secret, GET /dev/token.
    #[arg(long, env = "NATTER_DEV")]
    pub dev: bool,
    /// Comma-separated proxies (CIDRs or addresses) whose X-Forwarded-For names the client for
    /// the per-address connection limit.
    #[arg(long, env = "NATTER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
}

#[derive(Args, Debug)]
pub struct LimitArgs {
    /// Largest whole message, bytes (fragments added up).
    #[arg(long, env = "NATTER_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,
    /// Longest `message` text, characters.
    #[arg(long, env = "NATTER_MAX_TEXT_CHARS", default_value_t = 4_096)]
    pub max_text_chars: usize,
    /// `message` events per second per connection.
    #[arg(long, env = "NATTER_RATE_PER_SEC", default_value_t = 20.0)]
    pub rate_per_sec: f64,
    /// Burst of `message` events per connection.
    #[arg(long, env = "NATTER_RATE_BURST", default_value_t = 50.0)]
    pub rate_burst: f64,
    /// Time to authenticate, seconds.
    #[arg(long, env = "NATTER_AUTH_TIMEOUT", default_value = "10", value_parser = secs)]
    pub auth_timeout: Duration,
    /// Failed auth attempts before close 1008.
    #[arg(long, env = "NATTER_MAX_AUTH_FAILURES", default_value_t = 3)]
    pub max_auth_failures: u32,
    /// Pending outbound messages per connection before close 1013.
    #[arg(long, env = "NATTER_OUTBOUND_MAX_MESSAGES", default_value_t = 1_024)]
    pub outbound_max_messages: usize,
    /// Pending outbound bytes per connection before close 1013.
    #[arg(long, env = "NATTER_OUTBOUND_MAX_BYTES", default_value_t = 1 << 20)]
    pub outbound_max_bytes: usize,
    /// Connections per uid.
    #[arg(long, env = "NATTER_MAX_CONNECTIONS_PER_UID", default_value_t = 16)]
    pub max_connections_per_uid: usize,
    /// Largest token, bytes.
    #[arg(long, env = "NATTER_MAX_TOKEN_BYTES", default_value_t = 8_192)]
    pub max_token_bytes: usize,
    /// Grace after token expiry before close 1008, seconds.
    #[arg(long, env = "NATTER_EXPIRY_GRACE", default_value = "30", value_parser = secs)]
    pub expiry_grace: Duration,
    /// TLS + HTTP upgrade handshake limit, seconds.
    #[arg(long, env = "NATTER_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = secs)]
    pub handshake_timeout: Duration,
    /// Offline queue entries per uid (oldest dropped first).
    #[arg(long, env = "NATTER_OFFLINE_MAX", default_value_t = 1_000)]
    pub offline_max: usize,
    /// Offline queue bytes per uid (message JSON; oldest entries dropped first).
    #[arg(long, env = "NATTER_OFFLINE_MAX_BYTES", default_value_t = 16 << 20)]
    pub offline_max_bytes: usize,
    /// Dedupe records (recent `cid`s) kept per uid; the oldest are forgotten first.
    #[arg(long, env = "NATTER_DEDUPE_MAX_PER_UID", default_value_t = 10_000)]
    pub dedupe_max_per_uid: usize,
    /// Offline queue entry lifetime, seconds.
    #[arg(long, env = "NATTER_OFFLINE_TTL", default_value = "604800", value_parser = secs)]
    pub offline_ttl: Duration,
    /// Messages kept per room for `since` recovery.
    #[arg(long, env = "NATTER_HISTORY_MAX", default_value_t = 1_000)]
    pub history_max: usize,
    /// Rooms one connection may be in at once.
    #[arg(long, env = "NATTER_MAX_ROOMS_PER_CONNECTION", default_value_t = 64)]
    pub max_rooms_per_connection: usize,
    /// Rooms one uid may be a member of (memberships end with `leave`).
    #[arg(long, env = "NATTER_MAX_ROOMS_PER_UID", default_value_t = 1_000)]
    pub max_rooms_per_uid: usize,
    /// Accepted connections in all (handshaking, HTTP or WebSocket) before 503 [default: the
    /// open-file limit minus 128, at least half of it].
    #[arg(long, env = "NATTER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Accepted connections per client address (IPv6: per /64) before 503.
    #[arg(long, env = "NATTER_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// HS256 secret.
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The uid (`sub` claim).
    #[arg(long)]
    pub sub: String,
    /// Display name (`name` claim).
    #[arg(long)]
    pub name: Option<String>,
    /// Lifetime, seconds.
    #[arg(long, default_value_t = 86_400)]
    pub ttl: u64,
    /// Rooms the token allows (`rooms` claim), comma-separated patterns: `team-*,lobby`, `*`.
    /// Without it the server's --public-rooms apply.
    #[arg(long)]
    pub rooms: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    pub aud: Option<String>,
    /// `iss` claim.
    #[arg(long)]
    pub iss: Option<String>,
}

impl TokenArgs {
    /// The token this command prints.
    pub fn mint(&self) -> anyhow::Result<String> {
        let rooms = match &self.rooms {
            Some(r) => {
                Some(crate::access::RoomPatterns::parse_list(r).map_err(|e| anyhow::anyhow!("--rooms: {}", e.0))?)
            }
            None => None,
        };
        let claims = crate::auth::MintClaims {
            name: self.name.as_deref(),
            rooms: rooms.as_ref(),
            rooms_claim: None,
            audience: self.aud.as_deref(),
            issuer: self.iss.as_deref(),
        };
        crate::auth::mint(self.secret.as_bytes(), &self.sub, &claims, Duration::from_secs(self.ttl))
    }
}

impl LimitArgs {
    fn to_limits(&self) -> anyhow::Result<Limits> {
        let positive = [
            ("--max-message-bytes", self.max_message_bytes),
            ("--max-text-chars", self.max_text_chars),
            ("--max-auth-failures", self.max_auth_failures as usize),
            ("--outbound-max-messages", self.outbound_max_messages),
            ("--outbound-max-bytes", self.outbound_max_bytes),
            ("--max-connections-per-uid", self.max_connections_per_uid),
            ("--max-token-bytes", self.max_token_bytes),
            ("--offline-max", self.offline_max),
            ("--offline-max-bytes", self.offline_max_bytes),
            ("--dedupe-max-per-uid", self.dedupe_max_per_uid),
            ("--history-max", self.history_max),
            ("--max-rooms-per-connection", self.max_rooms_per_connection),
            ("--max-rooms-per-uid", self.max_rooms_per_uid),
            ("--max-connections", self.max_connections.unwrap_or(1)),
            ("--max-connections-per-ip", self.max_connections_per_ip),
        ];
        for (flag, v) in positive {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        if !(self.rate_per_sec > 0.0 && self.rate_burst >= 1.0) {
            bail!("--rate-per-sec must be > 0 and --rate-burst at least 1");
        }
        Ok(Limits {
            max_message_bytes: self.max_message_bytes,
            max_text_chars: self.max_text_chars,
            rate_per_sec: self.rate_per_sec,
            rate_burst: self.rate_burst,
            auth_timeout: self.auth_timeout,
            max_auth_failures: self.max_auth_failures,
            outbound_max_messages: self.outbound_max_messages,
            outbound_max_bytes: self.outbound_max_bytes,
            max_connections_per_uid: self.max_connections_per_uid,
            max_token_bytes: self.max_token_bytes,
            expiry_grace: self.expiry_grace,
            handshake_timeout: self.handshake_timeout,
            offline_max: self.offline_max,
            offline_max_bytes: self.offline_max_bytes,
            dedupe_max_per_uid: self.dedupe_max_per_uid,
            offline_ttl: self.offline_ttl,
            history_max: self.history_max,
            max_rooms_per_connection: self.max_rooms_per_connection,
            max_rooms_per_uid: self.max_rooms_per_uid,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        })
    }
}

impl ServeArgs {
    /// Validates flags and reads key files; every error names the flag and file at fault.
    pub fn to_config(&self) -> anyhow::Result<Config> {
        let limits = self.limits.to_limits()?;
        let tls = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some(crate::tls::TlsFiles { cert: c.clone(), key: k.clone() }),
            (None, None) if self.dev => Some(crate::tls::dev_certificate(std::path::Path::new("certs/dev"))?),
            (None, None) => None,
            (Some(_), None) => {
                bail!("--cert was given without --key: give both, or neither for plain ws://")
            }
            (None, Some(_)) => {
                bail!("--key was given without --cert: give both, or neither for plain ws://")
            }
        };
        let given = [self.jwt_secret.is_some(), self.jwt_secret_file.is_some(), self.jwt_public_key.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            bail!("give only one of --jwt-secret, --jwt-secret-file, --jwt-public-key");
        }
        // A short HS256 secret can be brute-forced offline from one token (docs/security.md).
        let short = |len: usize| len < MIN_SECRET_BYTES && !self.dev;
        let jwt_key = if let Some(s) = &self.jwt_secret {
            if s.is_empty() {
                bail!("--jwt-secret is empty");
            }
            if short(s.len()) {
                bail!(
                    "--jwt-secret is {} bytes: give at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                    s.len()
                );
            }
            JwtKey::Secret(s.as_bytes().to_vec())
        } else if let Some(f) = &self.jwt_secret_file {
            let raw = std::fs::read_to_string(f)
                .with_context(|| format!("--jwt-secret-file: cannot read {}", f.display()))?;
            let s = raw.trim_end_matches(['\r', '\n']);
            if s.is_empty() {
                bail!("--jwt-secret-file: {} is empty", f.display());
            }
            if short(s.len()) {
                bail!(
                    "--jwt-secret-file: the secret in {} is {} bytes: give at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                    f.display(),
                    s.len()
                );
            }
            JwtKey::Secret(s.as_bytes().to_vec())
        } else if let Some(f) = &self.jwt_public_key {
            let pem = std::fs::read(f).with_context(|| format!("--jwt-public-key: cannot read {}", f.display()))?;
            JwtKey::PublicPem(pem)
        } else if self.dev {
            let secret = crate::auth::random_secret();
            tracing::warn!("--dev without a secret: using a random one for this run: {secret}");
            JwtKey::Secret(secret.into_bytes())
        } else {
            bail!("no token key: give --jwt-secret, --jwt-secret-file or --jwt-public-key (or --dev)");
        };
        let public_rooms = match &self.public_rooms {
            Some(p) => RoomPatterns::parse_list(p).map_err(|e| anyhow::anyhow!("--public-rooms: {}", e.0))?,
            None if self.dev => RoomPatterns::any(),
            None => RoomPatterns::default(),
        };
        for (flag, v) in [("--jwt-rooms-claim", &self.jwt_rooms_claim), ("--jwt-uid-claim", &self.jwt_uid_claim)] {
            if v.is_empty() {
                bail!("{flag} is empty");
            }
        }
        let nonempty = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<String>> {
            match v {
                Some(s) if s.is_empty() => bail!("{flag} is empty"),
                other => Ok(other.clone()),
            }
        };
        let jwt = JwtConfig {
            key: jwt_key,
            uid_claim: self.jwt_uid_claim.clone(),
            rooms_claim: self.jwt_rooms_claim.clone(),
            leeway: self.jwt_leeway,
            audience: nonempty("--jwt-audience", &self.jwt_audience)?,
            issuer: nonempty("--jwt-issuer", &self.jwt_issuer)?,
        };
        // Fail fast on an unusable key rather than on the first login.
        crate::auth::Verifier::new(&jwt, public_rooms.clone(), limits.max_token_bytes)
            .map_err(|e| anyhow::anyhow!("--jwt-public-key: {e}"))?;
        // --dev hands out tokens to whoever asks: only this machine, unless told otherwise.
        let listen = self.listen.unwrap_or(if self.dev { DEV_LISTEN } else { LISTEN });
        let mut allowed_origins = Vec::new();
        for o in &self.allowed_origins {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if o.is_empty() {
                continue;
            }
            if !(o.starts_with("http://") || o.starts_with("https://")) {
                bail!("--allowed-origins: '{o}' is not of the form scheme://host[:port]");
            }
            allowed_origins.push(o);
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| crate::admission::Cidr::parse(p).map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Config {
            listen,
            metrics_listen: self.metrics_listen,
            tls,
            data_dir: self.data.clone(),
            redis: self.redis.target()?,
            jwt,
            public_rooms,
            heartbeat: self.heartbeat,
            allowed_origins,
            dev: self.dev,
            trusted_proxies,
            limits,
        })
    }
}
