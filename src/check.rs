//! `natter check`: validates what `natter serve` would start with, given the same flags and
//! environment (flags, certificate and key, data dir, listen addresses), without serving.
//!
//! It is meant for the moment before a start (systemd's `ExecStartPre`, a deploy script): a
//! data dir locked by a running natter, or a listen address it holds, is reported as an error,
//! because `serve` would stop on it too. The store itself is not opened (so a check never
//! migrates or recovers it, which can take long on a large data dir): its lock is probed.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};

use crate::cli::ServeArgs;
use crate::config::{Config, JwtKey};

/// Checks everything `serve` checks before it listens, and binds (then drops) the addresses.
/// Ok is the one-line summary to print.
pub fn run(args: &ServeArgs) -> anyhow::Result<String> {
    let cfg = args.to_config()?;
    let tls = match &cfg.tls {
        Some(files) => {
            let ck = crate::tls::certified_key(files)?;
            format!("wss, certificate {} ({} in chain)", files.cert.display(), ck.cert.len())
        }
        None => "plain ws (no --cert/--key)".to_string(),
    };
    data_dir(&cfg.data_dir)?;
    bind(cfg.listen, "--listen")?;
    if let Some(addr) = cfg.metrics_listen {
        bind(addr, "--metrics-listen")?;
    }
    Ok(summary(&cfg, &tls))
}

fn summary(cfg: &Config, tls: &str) -> String {
    let key = match cfg.jwt.key {
        JwtKey::Secret(_) => "HS256 secret",
        JwtKey::PublicPem(_) => "public key",
    };
    let metrics = cfg.metrics_listen.map(|a| format!(", metrics on {a}")).unwrap_or_default();
    format!("ok: listen {} ({tls}){metrics}, data {} (writable), tokens by {key}", cfg.listen, cfg.data_dir.display())
}

/// The data dir exists or can be created (as `serve` would), a file can be written in it, and
/// no running natter holds the store's lock.
fn data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--data: {} is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--data: cannot create {}", dir.display()))?;
    let probe = dir.join(format!(".natter-check-{}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| f.write_all(b"natter check\n").and_then(|_| f.sync_all()));
    let _ = std::fs::remove_file(&probe);
    written.with_context(|| format!("--data: {} is not writable", dir.display()))?;
    // sled takes an exclusive flock on DIR/db for as long as the store is open.
    let db = dir.join("db");
    if db.exists() {
        let f =
            OpenOptions::new().read(true).open(&db).with_context(|| format!("--data: cannot open {}", db.display()))?;
        // SAFETY: flock on a descriptor we own; closing it (drop) releases the lock.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!("--data: the store in {} is in use (is a natter running on it? stop it first)", dir.display());
            }
            bail!("--data: cannot lock {}: {e}", db.display());
        }
    }
    Ok(())
}

/// Binds the address and lets it go at once (std sets SO_REUSEADDR, as tokio does for serve).
fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<()> {
    std::net::TcpListener::bind(addr).map(drop).with_context(|| format!("{flag}: cannot listen on {addr}"))
}
