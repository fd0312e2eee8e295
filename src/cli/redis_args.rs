//! `natter serve`'s scale-out flags: the Redis to keep the store in, its password file and the
//! key prefix, checked at startup (a bad URL or an unreadable file names the flag).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::config::RedisTarget;

#[derive(Args, Debug, Default)]
pub struct RedisArgs {
    /// Scale out: keep the store in this Redis instead of `--data`
    /// (`redis://[[USER]:PASSWORD@]HOST:PORT/DB`, or `rediss://` for TLS, verified against the
    /// system's roots or the CA file in `SSL_CERT_FILE`). Every node given the same URL and prefix
    /// serves the same rooms (README, "More than one machine").
    #[arg(long, env = "NATTER_REDIS", value_name = "URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// File holding the Redis password (trailing newline ignored), so that it is not in the URL.
    #[arg(long, env = "NATTER_REDIS_PASSWORD_FILE", value_name = "FILE", requires = "redis")]
    pub redis_password_file: Option<PathBuf>,
    /// Put in front of every Redis key and channel (several deployments can share one Redis).
    #[arg(long, env = "NATTER_REDIS_PREFIX", default_value = crate::store::redis_store::DEFAULT_PREFIX)]
    pub redis_prefix: String,
}

impl RedisArgs {
    /// The Redis to use, or `None` for the embedded store.
    pub fn target(&self) -> anyhow::Result<Option<RedisTarget>> {
        let Some(url) = &self.redis else { return Ok(None) };
        if self.redis_prefix.is_empty() {
            bail!("--redis-prefix is empty (the default is {})", crate::store::redis_store::DEFAULT_PREFIX);
        }
        let url = match &self.redis_password_file {
            None => url.clone(),
            Some(f) => {
                let raw = std::fs::read_to_string(f)
                    .with_context(|| format!("--redis-password-file: cannot read {}", f.display()))?;
                let pw = raw.trim_end_matches(['\r', '\n']);
                if pw.is_empty() {
                    bail!("--redis-password-file: {} is empty", f.display());
                }
                with_password(url, pw)?
            }
        };
        // The URL may hold a password: errors never repeat it.
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map_err(|e| anyhow::anyhow!("--redis: not a usable Redis URL ({:?})", e.kind()))?;
        if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
            bail!("--redis: rediss://...#insecure turns certificate checks off: give Redis a certificate the system trusts (or SSL_CERT_FILE)");
        }
        Ok(Some(RedisTarget { url, prefix: self.redis_prefix.clone() }))
    }
}

/// `url` with `password` as its password (percent-encoded); an error when it has one already.
fn with_password(url: &str, password: &str) -> anyhow::Result<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("--redis: not a usable Redis URL (no scheme://)");
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((user, _)) = authority.split_once('@') {
        if user.contains(':') {
            bail!("--redis-password-file: the --redis URL has a password already");
        }
        let (user, host) = rest.split_once('@').expect("the authority has an @");
        return Ok(format!("{scheme}://{user}:{}@{host}", encode(password)));
    }
    Ok(format!("{scheme}://:{}@{rest}", encode(password)))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_password;

    #[test]
    fn a_password_file_goes_into_the_url_encoded() {
        assert_eq!(with_password("redis://h:6379/0", "p@ss:w/rd").unwrap(), "redis://:p%40ss%3Aw%2Frd@h:6379/0");
        assert_eq!(with_password("redis://bob@h:6379", "x y").unwrap(), "redis://bob:x%20y@h:6379");
        assert!(with_password("redis://bob:old@h:6379", "new").is_err());
        let info = redis::IntoConnectionInfo::into_connection_info("redis://:p%40ss%3Aw%2Frd@h:6379/0").unwrap();
        assert_eq!(info.redis_settings().password(), Some("p@ss:w/rd"));
    }
}
