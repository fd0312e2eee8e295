-- This node's presence of one uid in one room, optionally its membership, and the room's counts
-- after it, in one step (so exactly one node sees a uid go offline everywhere).
-- KEYS: 1 room online, 2 node rooms, 3 nodes, 4 room members, 5 user rooms, 6 room seq.
-- ARGV: 1 field `<node>:<uid>`, 2 this node's connections of uid (0 removes), 3 room, 4 uid,
--       5 membership: '+' adds, '-' ends (only when the uid is then online on no live node:
--       a `leave` on one node does not end a membership the uid still uses on another), '' keeps.
-- Returns {uid online on a live node (1/0), num, total, the room's last id given}.
local conns = tonumber(ARGV[2])
local live = live_nodes(KEYS[3], redis_ms())
local flat = redis.call('HGETALL', KEYS[1])
if conns > 0 then
  if redis.call('HSET', KEYS[1], ARGV[1], conns) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[3], 1) end
elseif redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[3]) end
end
if ARGV[5] == '+' then
  redis.call('SADD', KEYS[4], ARGV[4])
  redis.call('SADD', KEYS[5], ARGV[3])
end
local seen, num = {}, 0
for i = 1, #flat, 2 do
  -- The fields as they were, with this node's own field as it is now.
  if flat[i] ~= ARGV[1] then
    local node, uid = split_field(flat[i])
    if live[node] and not seen[uid] then seen[uid] = true num = num + 1 end
  end
end
if conns > 0 and live[(split_field(ARGV[1]))] and not seen[ARGV[4]] then seen[ARGV[4]] = true num = num + 1 end
if ARGV[5] == '-' and not seen[ARGV[4]] then
  redis.call('SREM', KEYS[4], ARGV[4])
  redis.call('SREM', KEYS[5], ARGV[3])
end
return {seen[ARGV[4]] and 1 or 0, num, redis.call('SCARD', KEYS[4]), tonumber(redis.call('GET', KEYS[6]) or '0')}
