//! A publish: the message template the caller builds, the one script that gives the id and
//! writes everything, and the payload it PUBLISHes on the room's channel.

use anyhow::{bail, Context as _};
use bytes::Bytes;
use redis::Value;

use super::{split_nums, RedisStore};
use crate::protocol::{self, MessageOut};
use crate::store::{Result, Stored};

/// A `message` object without its `id`, `num` and `total`, which only the publish script knows:
/// the JSON is `parts[0] id parts[1] num parts[2] total parts[3]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Template {
    parts: [Vec<u8>; 4],
}

impl Template {
    /// The template of `m` (its `id`, `num` and `total` are ignored), built by the protocol's
    /// own encoder so that the field order and escaping are the ones every message has.
    pub(crate) fn message(m: &MessageOut) -> Template {
        let json = protocol::message(&MessageOut { id: 0, num: 0, total: 0, ..*m });
        Template::split(&json).expect("a message object has its id, num and total")
    }

    /// Cuts an encoded message with `id`, `num` and `total` 0 around those three values. The
    /// markers are found by their quotes: inside a JSON string every `"` is escaped, so
    /// `"id":` can only be the key (the first one, right after `event`), and likewise
    /// `"num":0,"total":0,` after it.
    fn split(json: &[u8]) -> Option<Template> {
        const ID: &[u8] = b"\"id\":0,";
        const COUNTS: &[u8] = b",\"num\":0,\"total\":0,";
        let find = |from: usize, pat: &[u8]| json[from..].windows(pat.len()).position(|w| w == pat).map(|p| p + from);
        let id = find(0, ID)?;
        let counts = find(id + ID.len(), COUNTS)?;
        let num_end = counts + ",\"num\":".len();
        let total_at = num_end + "0,\"total\":".len();
        Some(Template {
            parts: [
                json[..id + "\"id\":".len()].to_vec(),
                json[id + "\"id\":0".len()..num_end].to_vec(),
                json[num_end + 1..total_at].to_vec(),
                json[total_at + 1..].to_vec(),
            ],
        })
    }

    /// The message the script builds for these values (what the tests compare it with).
    pub(crate) fn fill(&self, id: u64, num: usize, total: usize) -> Vec<u8> {
        let p = &self.parts;
        let mut out = Vec::with_capacity(p.iter().map(Vec::len).sum::<usize>() + 24);
        out.extend_from_slice(&p[0]);
        out.extend_from_slice(id.to_string().as_bytes());
        out.extend_from_slice(&p[1]);
        out.extend_from_slice(num.to_string().as_bytes());
        out.extend_from_slice(&p[2]);
        out.extend_from_slice(total.to_string().as_bytes());
        out.extend_from_slice(&p[3]);
        out
    }
}

/// One message to publish in `room`.
pub(crate) struct Publish<'a> {
    pub(crate) room: &'a str,
    /// The sender: with `cid`, the key of the dedupe record.
    pub(crate) uid: &'a str,
    pub(crate) cid: Option<&'a str>,
    pub(crate) template: &'a Template,
    /// The caller's clock: queue entries and dedupe records are aged on it, as in `Store`.
    pub(crate) now_ms: u64,
}

/// What the script stored and sent.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Published {
    pub(crate) id: u64,
    /// The id stored before it in the room (0 for the first): see `Stored::prev`.
    pub(crate) prev: u64,
    /// The final message object (as in the history, the queues and the channel).
    pub(crate) json: Bytes,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    Published(Published),
    /// The `cid` was already used by this uid within the dedupe TTL: nothing was written or
    /// sent; the sender gets the first ack again (`room` is where that message went).
    AlreadyPublished {
        room: String,
        id: u64,
    },
}

/// A channel payload (and a history entry): `id:prev:json`, ids in decimal. A subscriber needs
/// `id` to order and drop duplicates and `prev` to see a gap without parsing the JSON.
pub(crate) fn decode_payload(v: &[u8]) -> Option<Stored> {
    let ([id, prev], json) = split_nums::<2>(v)?;
    Some(Stored { id, prev, json: Bytes::copy_from_slice(json) })
}

/// Longest cid the ages set can order: its length is written in 4 digits (a restore takes cids
/// of up to 1,024 bytes, a client's are at most 64 characters).
pub(crate) const MAX_CID_BYTES: usize = 9_999;

/// The cid as a member of the uid's ages set (`dedupe:{U}:ages`): its byte length in 4 digits,
/// then the cid, so that records of one millisecond sort by (length, bytes), the order
/// MemoryStore and sled drop them in; the publish script reads the cid back from byte 5.
pub(crate) fn ages_member(cid: &str) -> Result<String> {
    anyhow::ensure!(cid.len() <= MAX_CID_BYTES, "a cid of {} bytes (at most {MAX_CID_BYTES})", cid.len());
    Ok(format!("{:04}{cid}", cid.len()))
}

fn int(v: &Value) -> Result<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).context("negative id"),
        other => bail!("publish script: expected an integer, got {other:?}"),
    }
}

fn bulk(v: Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => bail!("publish script: expected a string, got {other:?}"),
    }
}

impl RedisStore {
    /// The next id, the history push and trim (last `history_max` by count), one queue entry
    /// per member with no connection on a live node (entry and byte caps, TTL), the dedupe
    /// record (TTL, per-uid cap) and the PUBLISH on the room's channel: one script, so all of
    /// it or none, and ids, history order and channel order are one order across nodes.
    pub(crate) async fn publish(&self, p: &Publish<'_>) -> Result<Outcome> {
        let k = &self.keys;
        let b = &self.bounds;
        let cid_member = p.cid.map(ages_member).transpose()?.unwrap_or_default();
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(k.seq(p.room))
            .key(k.history(p.room))
            .key(k.members(p.room))
            .key(k.online(p.room))
            .key(k.nodes())
            .key(k.dedupe(p.uid, p.cid.unwrap_or("")))
            .key(k.dedupe_ages(p.uid))
            .key(k.last(p.room))
            .arg(&k.prefix)
            .arg(p.room)
            .arg(p.now_ms)
            .arg(b.history_max)
            .arg(b.offline_max)
            .arg(b.offline_max_bytes)
            .arg(b.offline_ttl_ms)
            .arg(b.dedupe_ttl_ms)
            .arg(b.dedupe_max)
            .arg(cid_member)
            .arg(k.dedupe_prefix(p.uid))
            .arg(k.channel(p.room));
        for part in &p.template.parts {
            inv.arg(part.as_slice());
        }
        let v: Value = inv.invoke_async(&mut self.conn()).await?;
        let Value::Array(mut items) = v else { bail!("publish script: unexpected answer {v:?}") };
        match items.first().map(int).transpose()? {
            Some(1) if items.len() == 4 => {
                let json = Bytes::from(bulk(items.pop().expect("4 items"))?);
                Ok(Outcome::Published(Published { id: int(&items[1])?, prev: int(&items[2])?, json }))
            }
            Some(0) if items.len() == 3 => {
                let room = String::from_utf8(bulk(items.pop().expect("3 items"))?).context("room")?;
                Ok(Outcome::AlreadyPublished { room, id: int(&items[1])? })
            }
            _ => bail!("publish script: unexpected answer {items:?}"),
        }
    }
}
