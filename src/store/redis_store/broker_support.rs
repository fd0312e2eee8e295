//! What the Redis broker (`crate::broker::redis`) needs from the store beyond the rest of it:
//! the rooms' last ids in one round trip, and queueing a message for members who missed it on
//! this node exactly once.

use redis::Script;

use super::RedisStore;
use crate::store::{Result, Stored};

/// Queues a message for the uids of ARGV[10..] that missed it on this node, each only when it
/// still needs it:
/// - a member of the room (KEYS[1]), as the publish script queues members only;
/// - (whether it is online on another node is not asked: its connections there may be closing
///   too, and each node deferring to the other would queue it nowhere; a uid live elsewhere
///   may so get it live and from its queue, which clients drop by id);
/// - not queued already for this room and id: the publish script queued it when the uid had
///   no presence on a live node at that moment, and a retry after a timeout may have run.
///
/// KEYS[4..] are queue, meta pairs, one pair per uid of ARGV[10..]. ARGV: 1 this node
/// (escaped), 2 room, 3 id, 4 prev, 5 json, 6 now, 7 offline_max, 8 offline_max_bytes,
/// 9 offline_ttl. Returns the uids queued for.
const ENQUEUE_MISSED: &str = r#"
local node, room, id, prev, json, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local out = {}
for i = 10, #ARGV do
  local uid = ARGV[i]
  local q, meta = KEYS[4 + 2 * (i - 10)], KEYS[5 + 2 * (i - 10)]
  if redis.call('SISMEMBER', KEYS[1], uid) == 1 then
    local have = false
    for _, e in ipairs(redis.call('LRANGE', q, 0, -1)) do
      local eid, rlen, pos = string.match(e, '^%d+:%d+:(%d+):%d+:(%d+):()')
      if tonumber(eid) == id and string.sub(e, pos, pos + tonumber(rlen) - 1) == room then have = true break end
    end
    if not have then
      push_entry(q, meta, room, id, prev, json, now, tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]))
      out[#out + 1] = uid
    end
  end
end
return out
"#;

/// The broker's scripts, built once per broker (the store's own `Scripts` is not touched).
pub(crate) struct BrokerScripts {
    enqueue_missed: Script,
}

impl BrokerScripts {
    pub(crate) fn new() -> Self {
        BrokerScripts { enqueue_missed: Script::new(&format!("{}\n{ENQUEUE_MISSED}", include_str!("prelude.lua"))) }
    }
}

impl RedisStore {
    /// The last id given in each room (0 when none), in the order of `rooms`: one pipeline, so
    /// a resubscription of many rooms costs one round trip.
    pub(crate) async fn last_ids(&self, rooms: &[String]) -> Result<Vec<u64>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for r in rooms {
            pipe.cmd("GET").arg(self.keys.seq(r));
        }
        let v: Vec<Option<u64>> = pipe.query_async(&mut self.conn()).await?;
        Ok(v.into_iter().map(|x| x.unwrap_or(0)).collect())
    }

    /// Queues `m` for those of `uids` that missed it here and still need it (see
    /// `ENQUEUE_MISSED`); returns who got it queued.
    pub(crate) async fn enqueue_missed(
        &self,
        scripts: &BrokerScripts,
        room: &str,
        uids: &[&str],
        m: &Stored,
        now_ms: u64,
    ) -> Result<Vec<String>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let k = &self.keys;
        let b = &self.bounds;
        let mut inv = scripts.enqueue_missed.prepare_invoke();
        inv.key(k.members(room)).key(k.online(room)).key(k.nodes());
        for uid in uids {
            inv.key(k.offline(uid)).key(k.offline_meta(uid));
        }
        inv.arg(&self.node)
            .arg(room)
            .arg(m.id)
            .arg(m.prev)
            .arg(&m.json[..])
            .arg(now_ms)
            .arg(b.offline_max)
            .arg(b.offline_max_bytes)
            .arg(b.offline_ttl_ms);
        for uid in uids {
            inv.arg(*uid);
        }
        Ok(inv.invoke_async(&mut self.conn()).await?)
    }
}
