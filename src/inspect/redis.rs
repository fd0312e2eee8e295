//! `natter keys --redis` and `natter get --redis`: a Redis deployment's logical keys, named and
//! printed as the sled store's are (the hash-tag braces and the escaping taken off), read with
//! plain commands: nothing is written.

use std::collections::BTreeSet;

use anyhow::Context as _;

use super::{array, glob, quote};
use crate::store::redis_store::export::unesc;
use crate::store::redis_store::{decode_payload, parse_entry, Keys, Scripts};

/// How long the connection and each command may take.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The logical name of a Redis key of the layout (prefix stripped), or `None` for the
/// scale-out's own bookkeeping (queue meta, dedupe ages, connection counts, nodes).
fn logical(name: &str) -> Option<String> {
    let untag = |s: &str| -> Option<(String, String)> {
        let (inner, rest) = s.strip_prefix('{')?.split_once('}')?;
        Some((unesc(inner)?, rest.to_string()))
    };
    if let Some(r) = name.strip_prefix("room:") {
        let (room, rest) = untag(r)?;
        return matches!(rest.as_str(), ":members" | ":online" | ":seq" | ":history")
            .then(|| format!("room:{room}{rest}"));
    }
    if let Some(r) = name.strip_prefix("user:") {
        let (uid, rest) = untag(r)?;
        return (rest == ":rooms").then(|| format!("user:{uid}:rooms"));
    }
    if let Some(r) = name.strip_prefix("offline:") {
        let (uid, rest) = untag(r)?;
        return rest.is_empty().then(|| format!("offline:{uid}"));
    }
    if let Some(r) = name.strip_prefix("dedupe:") {
        let (uid, rest) = untag(r)?;
        let (cid, rest) = untag(rest.strip_prefix(':')?)?;
        return rest.is_empty().then(|| format!("dedupe:{uid}:{cid}"));
    }
    None
}

async fn connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).context("--redis: not a usable Redis URL")?;
    tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| anyhow::anyhow!("--redis: no answer within {TIMEOUT:?}"))?
        .context("--redis: cannot connect")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Logical keys under `prefix` matching a redis-style glob, sorted.
pub fn keys_redis(url: &str, prefix: &str, pattern: &str) -> anyhow::Result<Vec<String>> {
    runtime()?.block_on(async {
        let mut c = connect(url).await?;
        let mut out = BTreeSet::new();
        let mut cursor = 0u64;
        let scan = format!("{}*", crate::store::redis_store::load::glob_escape(prefix));
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&scan)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut c)
                .await
                .context("--redis: SCAN")?;
            let names = found.iter().filter_map(|k| k.strip_prefix(prefix)).filter_map(logical);
            out.extend(names.filter(|n| glob(pattern.as_bytes(), n.as_bytes())));
            if next == 0 {
                return Ok(out.into_iter().collect());
            }
            cursor = next;
        }
    })
}

/// The value of one logical key, redis-cli style, as `get` prints the sled store's; `(nil)`
/// when absent.
pub fn get_redis(url: &str, prefix: &str, name: &str) -> anyhow::Result<String> {
    let keys = Keys { prefix: prefix.to_string() };
    runtime()?.block_on(async {
        let mut c = connect(url).await?;
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            array(v)
        };
        if let Some(rest) = name.strip_prefix("room:") {
            let Some((room, what)) = rest.rsplit_once(':') else { return Ok("(nil)\n".into()) };
            return Ok(match what {
                "members" => sorted(redis::cmd("SMEMBERS").arg(keys.members(room)).query_async(&mut c).await?),
                // Live nodes only, summed by uid: what `num` counts.
                "online" => {
                    let mut pairs: Vec<(String, u32)> =
                        Scripts::new().online.key(keys.online(room)).key(keys.nodes()).invoke_async(&mut c).await?;
                    pairs.sort();
                    array(pairs.into_iter().flat_map(|(u, n)| [u, n.to_string()]).collect())
                }
                "seq" => match redis::cmd("GET").arg(keys.seq(room)).query_async::<Option<String>>(&mut c).await? {
                    Some(v) => format!("{}\n", quote(&v)),
                    None => "(nil)\n".into(),
                },
                "history" => {
                    let raw: Vec<Vec<u8>> =
                        redis::cmd("LRANGE").arg(keys.history(room)).arg(0).arg(-1).query_async(&mut c).await?;
                    array(raw.iter().filter_map(|e| decode_payload(e)).map(|m| text(&m.json)).collect())
                }
                _ => "(nil)\n".into(),
            });
        }
        if let Some(uid) = name.strip_prefix("offline:") {
            let raw: Vec<Vec<u8>> =
                redis::cmd("LRANGE").arg(keys.offline(uid)).arg(0).arg(-1).query_async(&mut c).await?;
            let entries = raw.iter().filter_map(|e| parse_entry(e));
            return Ok(array(
                entries.map(|e| format!("{{\"roomid\":{},\"msg\":{}}}", quote(e.room), text(e.json))).collect(),
            ));
        }
        if let Some(uid) = name.strip_prefix("user:").and_then(|r| r.strip_suffix(":rooms")) {
            return Ok(sorted(redis::cmd("SMEMBERS").arg(keys.user_rooms(uid)).query_async(&mut c).await?));
        }
        if let Some((uid, cid)) = name.strip_prefix("dedupe:").and_then(|r| r.rsplit_once(':')) {
            let v: Option<String> = redis::cmd("GET").arg(keys.dedupe(uid, cid)).query_async(&mut c).await?;
            // `ts:id:room`: the id, as the sled store prints it.
            return Ok(match v.as_deref().and_then(|v| v.split(':').nth(1)) {
                Some(id) => format!("{}\n", quote(id)),
                None => "(nil)\n".into(),
            });
        }
        Ok("(nil)\n".into())
    })
}

#[cfg(test)]
mod tests {
    use super::logical;

    #[test]
    fn redis_names_read_as_logical_keys() {
        assert_eq!(logical("room:{r1}:members").as_deref(), Some("room:r1:members"));
        assert_eq!(logical("dedupe:{a%3Ab}:{c-1}").as_deref(), Some("dedupe:a:b:c-1"));
        assert_eq!(logical("offline:{u1}").as_deref(), Some("offline:u1"));
        assert_eq!(logical("offline:{u1}:meta"), None);
        assert_eq!(logical("user:{u1}:conns"), None);
        assert_eq!(logical("nodes"), None);
    }
}
