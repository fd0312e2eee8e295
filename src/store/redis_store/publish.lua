-- natter: one publish, all or nothing (docs/redis.md, "The publish script").
-- KEYS: 1 seq, 2 history, 3 members, 4 online, 5 nodes, 6 dedupe record, 7 dedupe ages, 8 last
-- ARGV: 1 prefix, 2 room, 3 now (caller ms), 4 history_max, 5 offline_max, 6 offline_max_bytes,
--       7 offline_ttl, 8 dedupe_ttl, 9 dedupe_max, 10 cid as an ages member ('' when none),
--       11 dedupe key prefix, 12 channel, 13..16 the template parts around id, num, total.
local room, now = ARGV[2], tonumber(ARGV[3])
local dedupe_ttl = tonumber(ARGV[8])
local cid_member = ARGV[10]

-- Reads first: everything that can fail comes before the first write (Redis does not roll a
-- script back).
if cid_member ~= '' then
  local rec = redis.call('GET', KEYS[6])
  if rec then
    local ts, id, first_room = string.match(rec, '^(%d+):(%d+):(.*)$')
    if tonumber(ts) + dedupe_ttl > now then return {0, tonumber(id), first_room} end
  end
end
local live = live_nodes(KEYS[5], redis_ms())
local online, num = {}, 0
for _, f in ipairs(redis.call('HKEYS', KEYS[4])) do
  local node, uid = split_field(f)
  if live[node] and not online[uid] then
    online[uid] = true
    num = num + 1
  end
end
local members = redis.call('SMEMBERS', KEYS[3])
-- prev: the id of the message stored last, not id - 1: after a restore the counter may be above
-- it. Kept in its own key, since the history keeps nothing with history_max 0; a room written
-- before that key existed has it as its newest history entry (trimming drops the oldest).
local prev = tonumber(redis.call('GET', KEYS[8]) or '')
if not prev then
  local newest = redis.call('LINDEX', KEYS[2], -1)
  prev = newest and tonumber(string.match(newest, '^(%d+):')) or 0
end

-- Writes.
local id = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[8], d(id))
local json = ARGV[13] .. d(id) .. ARGV[14] .. d(num) .. ARGV[15] .. d(#members) .. ARGV[16]
local stored = d(id) .. ':' .. d(prev) .. ':' .. json
redis.call('RPUSH', KEYS[2], stored)
local keep = tonumber(ARGV[4])
if keep > 0 then redis.call('LTRIM', KEYS[2], -keep, -1) else redis.call('DEL', KEYS[2]) end
local prefix = ARGV[1]
local max, max_bytes, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
for _, uid in ipairs(members) do
  if not online[uid] then
    local q = prefix .. 'offline:{' .. esc(uid) .. '}'
    push_entry(q, q .. ':meta', room, id, prev, json, now, max, max_bytes, ttl)
  end
end
if cid_member ~= '' then
  redis.call('SET', KEYS[6], d(now) .. ':' .. d(id) .. ':' .. room, 'PX', dedupe_ttl)
  redis.call('ZADD', KEYS[7], now, cid_member)
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - dedupe_ttl)
  if redis.call('ZCARD', KEYS[7]) > tonumber(ARGV[9]) then
    -- The oldest record other than this one goes (members sort by time, then cid length and
    -- bytes: the member is the length in 4 digits, then the cid).
    local two = redis.call('ZRANGE', KEYS[7], 0, 1)
    local victim = two[1] ~= cid_member and two[1] or two[2]
    if victim then
      redis.call('ZREM', KEYS[7], victim)
      redis.call('DEL', ARGV[11] .. '{' .. esc(string.sub(victim, 5)) .. '}')
    end
  end
  redis.call('PEXPIRE', KEYS[7], dedupe_ttl)
end
redis.call('PUBLISH', ARGV[12], stored)
return {1, id, prev, json}
