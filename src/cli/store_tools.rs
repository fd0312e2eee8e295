//! The flags of the commands that read or fill a store offline: `keys`, `get`, `dump`,
//! `restore` (sled by `--data`, or Redis by `--redis` for `dump` and `restore`).

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct KeysArgs {
    /// Glob pattern (`*`, `?`), as redis-cli KEYS.
    #[arg(default_value = "*")]
    pub pattern: String,
    #[arg(long, env = "NATTER_DATA", default_value = "./natter-data")]
    pub data: PathBuf,
    #[command(flatten)]
    pub redis: ReadRedis,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// A logical key, e.g. `room:r1:members` or `offline:alice`.
    pub key: String,
    #[arg(long, env = "NATTER_DATA", default_value = "./natter-data")]
    pub data: PathBuf,
    #[command(flatten)]
    pub redis: ReadRedis,
}

/// `keys` and `get` on a Redis deployment instead of `--data` (read only: the nodes may run).
#[derive(Args, Debug)]
pub struct ReadRedis {
    /// Read this Redis deployment (`redis://[:PASSWORD@]HOST:PORT/DB`) instead of `--data`.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// The key prefix in Redis (with `--redis`).
    #[arg(long, default_value = "natter:", requires = "redis")]
    pub redis_prefix: String,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    #[arg(long, env = "NATTER_DATA", default_value = "./natter-data")]
    pub data: PathBuf,
    /// File to write (it must not exist yet), or `-` for stdout.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
    /// Dump this Redis deployment (`redis://[:PASSWORD@]HOST:PORT/DB`) instead of `--data`.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// The key prefix in Redis (with `--redis`).
    #[arg(long, default_value = "natter:", requires = "redis")]
    pub redis_prefix: String,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The data dir to fill: new, or holding an empty store.
    #[arg(long, env = "NATTER_DATA", default_value = "./natter-data")]
    pub data: PathBuf,
    /// The dump to read, or `-` for stdin.
    #[arg(long = "in", default_value = "-")]
    pub input: PathBuf,
    /// Load into this Redis (`redis://[:PASSWORD@]HOST:PORT/DB`) instead of `--data`: it must
    /// hold no key under the prefix yet.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// The key prefix in Redis (with `--redis`).
    #[arg(long, default_value = "natter:", requires = "redis")]
    pub redis_prefix: String,
}
