//! Offline queues (`offline:{uid}`): the reads, deliveries and late entries; the publish script
//! writes the rest. Entries are `n:ts:id:prev:roomlen:` room json (docs/redis.md).

use anyhow::Context as _;
use bytes::Bytes;

use super::{split_nums, RedisStore};
use crate::store::{Queued, Result};

/// A queue entry as stored.
pub(crate) struct Entry<'a> {
    pub(crate) n: u64,
    pub(crate) ts: u64,
    pub(crate) id: u64,
    pub(crate) prev: u64,
    pub(crate) room: &'a str,
    pub(crate) json: &'a [u8],
}

pub(crate) fn parse_entry(v: &[u8]) -> Option<Entry<'_>> {
    let ([n, ts, id, prev, rlen], rest) = split_nums::<5>(v)?;
    let rlen = usize::try_from(rlen).ok()?;
    let room = std::str::from_utf8(rest.get(..rlen)?).ok()?;
    Some(Entry { n, ts, id, prev, room, json: &rest[rlen..] })
}

impl RedisStore {
    /// `uid`'s unexpired queued messages for `room`, oldest first (nothing is removed).
    pub(crate) async fn queued(&self, uid: &str, room: &str, now_ms: u64) -> Result<Vec<Queued>> {
        let raw: Vec<Vec<u8>> = self
            .scripts
            .queued
            .key(self.keys.offline(uid))
            .arg(room)
            .arg(now_ms)
            .arg(self.bounds.offline_ttl_ms)
            .invoke_async(&mut self.conn())
            .await?;
        raw.iter()
            .map(|e| {
                let e = parse_entry(e).context("queue entry")?;
                Ok(Queued { n: e.n, id: e.id, prev: e.prev, json: Bytes::copy_from_slice(e.json) })
            })
            .collect()
    }

    /// Removes the given entries (by `Queued::n`) from `uid`'s queue.
    pub(crate) async fn dequeue(&self, uid: &str, ns: &[u64]) -> Result<()> {
        if ns.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.dequeue.prepare_invoke();
        inv.key(self.keys.offline(uid)).key(self.keys.offline_meta(uid));
        for n in ns {
            inv.arg(*n);
        }
        let _: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Number of entries in `offline:{uid}` (all rooms).
    pub(crate) async fn offline_len(&self, uid: &str) -> Result<usize> {
        Ok(redis::cmd("LLEN").arg(self.keys.offline(uid)).query_async(&mut self.conn()).await?)
    }

    /// Queue entries only (as `Store::enqueue`), for members found offline after the publish
    /// (their connection was closing as the message went out): one entry per uid of `uids`,
    /// with the caps and TTL of a publish.
    pub(crate) async fn enqueue(&self, room: &str, uids: &[&str], m: &crate::store::Stored, now_ms: u64) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.enqueue.prepare_invoke();
        for uid in uids {
            inv.key(self.keys.offline(uid)).key(self.keys.offline_meta(uid));
        }
        let b = &self.bounds;
        inv.arg(room)
            .arg(m.id)
            .arg(m.prev)
            .arg(&m.json[..])
            .arg(now_ms)
            .arg(b.offline_max)
            .arg(b.offline_max_bytes)
            .arg(b.offline_ttl_ms);
        let _: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(())
    }
}
