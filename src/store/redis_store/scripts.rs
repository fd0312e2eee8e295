//! The Lua scripts of the Redis store, each with the shared prelude in front, loaded once per
//! `RedisStore` (the crate's `Script` calls EVALSHA and loads the body on NOSCRIPT, e.g. after a
//! Redis restart).

use redis::Script;

const PRELUDE: &str = include_str!("prelude.lua");
const SWEEP_NODES: &str = include_str!("sweep.lua");

/// `room:{r}:history` entries with `id > ARGV[1]`, oldest first. Ids only grow along the list,
/// so it reads from the end in chunks and stops at the first id at or below `after`: a
/// reconnect that missed a few messages reads a few entries, not the whole window.
const HISTORY_AFTER: &str = r#"
local after, out, i = tonumber(ARGV[1]), {}, redis.call('LLEN', KEYS[1]) - 1
while i >= 0 do
  local from = math.max(0, i - 63)
  local part = redis.call('LRANGE', KEYS[1], from, i)
  for j = #part, 1, -1 do
    if tonumber(string.match(part[j], '^(%d+):')) <= after then i = -1 break end
    out[#out + 1] = part[j]
  end
  i = math.min(i, from - 1)
end
local n = #out
for j = 1, math.floor(n / 2) do out[j], out[n + 1 - j] = out[n + 1 - j], out[j] end
return out
"#;

/// The entries of `offline:{uid}` (KEYS[1]) for room ARGV[1] with `ts + ttl > now` (ARGV[2],
/// ARGV[3]), oldest first, filtered in Redis: a uid's queue holds every room's entries (up to
/// 16 MiB), a login wants one room's.
const QUEUED: &str = r#"
local room, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for _, e in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local ts, rlen, pos = string.match(e, '^%d+:(%d+):%d+:%d+:(%d+):()')
  if string.sub(e, pos, pos + tonumber(rlen) - 1) == room and tonumber(ts) + ttl > now then out[#out + 1] = e end
end
return out
"#;

/// Removes the entries numbered ARGV[1..] from `offline:{uid}` (KEYS[1]) and their bytes from
/// its count (KEYS[2]): marked in place, then one LREM, so the queue keeps its TTL. Entries
/// begin with a digit: '-' is never one.
const DEQUEUE: &str = r#"
local want = {}
for _, n in ipairs(ARGV) do want[n] = true end
local freed, marked = 0, 0
for i, e in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if want[string.match(e, '^(%d+):')] then
    redis.call('LSET', KEYS[1], i - 1, '-')
    freed = freed + entry_json_len(e)
    marked = marked + 1
  end
end
if marked > 0 then
  redis.call('LREM', KEYS[1], 0, '-')
  redis.call('HINCRBY', KEYS[2], 'bytes', -freed)
end
return marked
"#;

/// Queue entries only (`Store::enqueue`): KEYS are queue, meta pairs, one pair per uid.
/// ARGV: room, id, prev, json, now, offline_max, offline_max_bytes, offline_ttl.
const ENQUEUE: &str = r#"
local room, id, prev, json, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
for i = 1, #KEYS, 2 do
  push_entry(KEYS[i], KEYS[i + 1], room, id, prev, json, now, tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
end
return #KEYS / 2
"#;

/// This node's connections of uid in a room: KEYS 1 online, 2 node rooms (hash room -> how
/// many of the room's uids this node has there, so a sweep visits only rooms it was in).
/// ARGV: 1 field (`node:uid`), 2 conns (0 removes), 3 room.
const SET_ONLINE: &str = r#"
local conns = tonumber(ARGV[2])
if conns > 0 then
  if redis.call('HSET', KEYS[1], ARGV[1], conns) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[3], 1) end
elseif redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[3]) end
end
return 0
"#;

/// `uid, conns, ...` of a room (KEYS 1 online, 2 nodes): connections summed over live nodes.
const ONLINE: &str = r#"
local live, sum, order = live_nodes(KEYS[2], redis_ms()), {}, {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local node, uid = split_field(flat[i])
  if live[node] then
    if not sum[uid] then order[#order + 1] = uid sum[uid] = 0 end
    sum[uid] = sum[uid] + tonumber(flat[i + 1])
  end
end
local out = {}
for _, uid in ipairs(order) do out[#out + 1] = uid out[#out + 1] = sum[uid] end
return out
"#;

/// Moves this node's deadline (KEYS 1 nodes; ARGV 1 node, 2 ttl ms) to Redis's now + ttl.
/// Returns 1 when the node was still live, 0 when it was unknown or past its deadline (its
/// presence may have been swept: the caller announces it again).
const HEARTBEAT: &str = r#"
local now = redis_ms()
local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if was and tonumber(was) > now then return 1 end
return 0
"#;

/// Every script, built once.
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) history_after: Script,
    pub(crate) queued: Script,
    pub(crate) dequeue: Script,
    pub(crate) enqueue: Script,
    pub(crate) set_online: Script,
    pub(crate) online: Script,
    pub(crate) heartbeat: Script,
    pub(crate) sweep: Script,
    pub(crate) connect: Script,
    pub(crate) reannounce: Script,
    pub(crate) claim_conn: Script,
    pub(crate) release_conn: Script,
}

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// The scripts that remove what nodes left: the prelude, then `sweep_nodes`, then `body`.
fn with_sweep(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{SWEEP_NODES}\n{body}"))
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            publish: with_prelude(include_str!("publish.lua")),
            history_after: with_prelude(HISTORY_AFTER),
            queued: with_prelude(QUEUED),
            dequeue: with_prelude(DEQUEUE),
            enqueue: with_prelude(ENQUEUE),
            set_online: with_prelude(SET_ONLINE),
            online: with_prelude(ONLINE),
            heartbeat: with_prelude(HEARTBEAT),
            sweep: with_sweep(super::presence::SWEEP),
            connect: with_sweep(super::presence::CONNECT),
            reannounce: with_sweep(super::presence::REANNOUNCE),
            claim_conn: with_prelude(super::conns::CLAIM),
            release_conn: with_prelude(super::conns::RELEASE),
        }
    }
}
