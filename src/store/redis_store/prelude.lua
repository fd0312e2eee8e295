-- natter: helpers every script of the Redis store starts with (see docs/redis.md).

-- An integer as decimal digits (tostring would switch to exponent notation past 1e14).
local function d(x) return string.format('%d', x) end

-- A key component as RedisStore writes it (`esc` in redis_store.rs): % : { } as %XX, so that
-- no uid, room or cid can end a hash tag or a key part early.
local function esc(s)
  return (string.gsub(s, '[%%:{}]', function(c) return string.format('%%%02X', string.byte(c)) end))
end

-- Redis's own clock in ms: node deadlines are on it, so the nodes' clocks never matter.
local function redis_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The (escaped) ids of the nodes whose liveness deadline is after `now`.
local function live_nodes(nodes_key, now)
  local live = {}
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', nodes_key, '(' .. d(now), '+inf')) do live[n] = true end
  return live
end

-- A presence field is `<escaped node>:<uid>`: the node part has no ':'.
local function split_field(f)
  local i = string.find(f, ':', 1, true)
  return string.sub(f, 1, i - 1), string.sub(f, i + 1)
end

-- Queue entries are `n:ts:id:prev:roomlen:` .. room .. json.
local function entry_ts(e) return tonumber(string.match(e, '^%d+:(%d+):')) end
local function entry_json_len(e)
  local rlen, pos = string.match(e, '^%d+:%d+:%d+:%d+:(%d+):()')
  return #e - (pos - 1) - tonumber(rlen)
end

-- Appends one entry to the queue `q` (its entry counter and byte count in the hash `meta`), then
-- drops from the front, oldest first, what is over the entry cap, over the byte cap (the newest
-- entry is kept even when over it alone) or expired, as MemoryStore does; both keys then live
-- `ttl` ms more.
local function push_entry(q, meta, room, id, prev, json, now, max, max_bytes, ttl)
  local n = redis.call('HINCRBY', meta, 'n', 1) - 1
  redis.call('RPUSH', q, d(n) .. ':' .. d(now) .. ':' .. d(id) .. ':' .. d(prev) .. ':' .. d(#room) .. ':' .. room .. json)
  local bytes = redis.call('HINCRBY', meta, 'bytes', #json)
  local len = redis.call('LLEN', q)
  while len > 0 do
    local drop = len > max or (len > 1 and bytes > max_bytes)
    if not drop then drop = entry_ts(redis.call('LINDEX', q, 0)) + ttl <= now end
    if not drop then break end
    bytes = redis.call('HINCRBY', meta, 'bytes', -entry_json_len(redis.call('LPOP', q)))
    len = len - 1
  end
  redis.call('PEXPIRE', q, ttl)
  redis.call('PEXPIRE', meta, ttl)
end
