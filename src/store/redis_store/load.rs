//! Loading a store's logical elements (`natter restore --redis`) into a Redis that holds nothing
//! under the prefix yet, in the layout the store's scripts read (docs/redis.md, "Keys"). The
//! loader is not a node: it announces no presence and publishes nothing.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context as _};

use super::{Keys, RedisConfig};
use crate::store::logical::Element;
use crate::store::{Bounds, Result};

/// Commands sent per pipeline.
const PIPELINE: usize = 1_000;

pub(crate) struct Loader {
    keys: Keys,
    bounds: Bounds,
    conn: redis::aio::MultiplexedConnection,
    pipe: redis::Pipeline,
    in_pipe: usize,
    /// Commands sent so far.
    sent: u64,
    /// Per uid: the next entry number and the message bytes queued (its `meta` hash).
    queues: BTreeMap<String, (u64, u64)>,
    /// Uids with dedupe records loaded (their ages set gets its TTL at the end).
    dedupe_uids: BTreeSet<String>,
    now_ms: u64,
}

/// `s` with Redis glob characters escaped, so that it matches only itself.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut g = String::new();
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            g.push('\\');
        }
        g.push(c);
    }
    g
}

/// A Redis glob matching exactly the keys that start with `prefix`.
fn glob(prefix: &str) -> String {
    format!("{}*", glob_escape(prefix))
}

/// `n:ts:id:prev:roomlen:` room json: a queue entry as `queue::parse_entry` reads it.
pub(crate) fn queue_entry(n: u64, ts: u64, id: u64, prev: u64, room: &str, json: &[u8]) -> Vec<u8> {
    let mut v = format!("{n}:{ts}:{id}:{prev}:{}:{room}", room.len()).into_bytes();
    v.extend_from_slice(json);
    v
}

/// `id:prev:json`: a history entry as `decode_payload` reads it.
pub(crate) fn history_entry(id: u64, prev: u64, json: &[u8]) -> Vec<u8> {
    let mut v = format!("{id}:{prev}:").into_bytes();
    v.extend_from_slice(json);
    v
}

impl Loader {
    /// Connects, and refuses a Redis that holds any key under the prefix (a restore fills a new
    /// deployment; it never merges into a live one).
    pub(crate) async fn connect(cfg: &RedisConfig, now_ms: u64) -> Result<Loader> {
        let client = redis::Client::open(cfg.url.as_str()).context("--redis: not a redis:// URL")?;
        let mut conn = tokio::time::timeout(cfg.timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| anyhow::anyhow!("--redis: no answer within {:?}", cfg.timeout))?
            .context("--redis: cannot connect")?;
        if Self::any_key(&mut conn, &cfg.prefix).await? {
            bail!(
                "--redis: the Redis already holds keys under the prefix {:?}: restore only into an empty one",
                cfg.prefix
            );
        }
        Ok(Loader {
            keys: Keys { prefix: cfg.prefix.clone() },
            bounds: cfg.bounds,
            conn,
            pipe: redis::pipe(),
            in_pipe: 0,
            sent: 0,
            queues: BTreeMap::new(),
            dedupe_uids: BTreeSet::new(),
            now_ms,
        })
    }

    /// Whether any key starts with `prefix`. One SCAN call may answer nothing though keys
    /// exist (it visits a part of the table): it goes on until the cursor comes back to 0.
    async fn any_key(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Result<bool> {
        let mut cursor = 0u64;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(glob(prefix))
                .arg("COUNT")
                .arg(10_000)
                .query_async(conn)
                .await
                .context("--redis: SCAN")?;
            if !found.is_empty() {
                return Ok(true);
            }
            if next == 0 {
                return Ok(false);
            }
            cursor = next;
        }
    }

    fn push(&mut self, cmd: &mut redis::Cmd) {
        self.pipe.add_command(std::mem::replace(cmd, redis::Cmd::new())).ignore();
        self.in_pipe += 1;
    }

    async fn send(&mut self) -> Result<()> {
        if self.in_pipe > 0 {
            let pipe = std::mem::replace(&mut self.pipe, redis::pipe());
            let () = pipe.query_async(&mut self.conn).await.context("--redis: writing")?;
            self.sent += self.in_pipe as u64;
            self.in_pipe = 0;
        }
        Ok(())
    }

    /// Queues the writes of one element (sent in pipelines of `PIPELINE` commands).
    pub(crate) async fn add(&mut self, e: &Element<'_>) -> Result<()> {
        let k = self.keys.clone();
        let mut cmd = match *e {
            Element::Member { room, uid } => redis::cmd("SADD").arg(k.members(room)).arg(uid).clone(),
            Element::UserRoom { uid, room } => redis::cmd("SADD").arg(k.user_rooms(uid)).arg(room).clone(),
            // Redis has no reservations: the counter is the last id that may have been given,
            // so no id is given twice; the next message chains to the last stored one (`prev`).
            Element::Seq { room, last, reserved } => {
                if let Some((id, _)) = last {
                    self.push(redis::cmd("SET").arg(k.last(room)).arg(id));
                }
                let top = last.map_or(0, |(id, _)| id).max(reserved.unwrap_or(0));
                redis::cmd("SET").arg(k.seq(room)).arg(top).clone()
            }
            Element::History { room, id, prev, json, .. } => {
                redis::cmd("RPUSH").arg(k.history(room)).arg(history_entry(id, prev, json)).clone()
            }
            Element::Queue { uid, n, ts, id, prev, room, json } => {
                let q = self.queues.entry(uid.to_string()).or_default();
                *q = (q.0.max(n + 1), q.1 + json.len() as u64);
                redis::cmd("RPUSH").arg(k.offline(uid)).arg(queue_entry(n, ts, id, prev, room, json)).clone()
            }
            Element::Dedupe { uid, cid, ts, id, room } => {
                let left = (ts + self.bounds.dedupe_ttl_ms).saturating_sub(self.now_ms);
                if left == 0 {
                    return Ok(()); // expired: a cid resent now is a new message, as it would be
                }
                self.dedupe_uids.insert(uid.to_string());
                let mut age = redis::cmd("ZADD");
                age.arg(k.dedupe_ages(uid)).arg(ts).arg(super::publish::ages_member(cid)?);
                self.push(&mut age);
                redis::cmd("SET").arg(k.dedupe(uid, cid)).arg(format!("{ts}:{id}:{room}")).arg("PX").arg(left).clone()
            }
        };
        self.push(&mut cmd);
        if self.in_pipe >= PIPELINE {
            self.send().await?;
        }
        Ok(())
    }

    /// Writes the queues' bookkeeping and TTLs, and what is still pipelined; returns the
    /// commands sent in all.
    pub(crate) async fn finish(mut self) -> Result<u64> {
        let (offline_ttl, dedupe_ttl) = (self.bounds.offline_ttl_ms, self.bounds.dedupe_ttl_ms);
        for (uid, (n, bytes)) in std::mem::take(&mut self.queues) {
            let meta = self.keys.offline_meta(&uid);
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&meta).arg("n").arg(n).arg("bytes").arg(bytes);
            self.push(&mut cmd);
            self.push(redis::cmd("PEXPIRE").arg(&meta).arg(offline_ttl));
            self.push(redis::cmd("PEXPIRE").arg(self.keys.offline(&uid)).arg(offline_ttl));
            if self.in_pipe >= PIPELINE {
                self.send().await?;
            }
        }
        for uid in std::mem::take(&mut self.dedupe_uids) {
            self.push(redis::cmd("PEXPIRE").arg(self.keys.dedupe_ages(&uid)).arg(dedupe_ttl));
        }
        self.send().await?;
        Ok(self.sent)
    }
}
