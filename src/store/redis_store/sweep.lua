-- natter: removes the presence of dead nodes (docs/redis.md, "Presence and node expiry").
-- KEYS: 1 nodes. ARGV: 1 prefix, 2 a node to remove whatever its deadline ('' for none: a
-- sweep), as `clear_node` does at a clean shutdown, 3 '1' to remove that node only.
-- Returns room, uid, room, uid, ...: each (room, uid) with no presence left on a live node,
-- once: the script runs alone, so of two concurrent sweeps the second finds nothing left.
local prefix, forced = ARGV[1], ARGV[2]
local now = redis_ms()
local dead = {}
if ARGV[3] ~= '1' then
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', d(now))) do dead[n] = true end
end
if forced ~= '' then dead[forced] = true end
local live = live_nodes(KEYS[1], now)
local rooms = {}
for n in pairs(dead) do
  live[n] = nil
  local node_rooms = prefix .. 'node:{' .. n .. '}:rooms'
  for _, room in ipairs(redis.call('HKEYS', node_rooms)) do rooms[room] = true end
end
local out = {}
for room in pairs(rooms) do
  local online = prefix .. 'room:{' .. esc(room) .. '}:online'
  local gone, staying = {}, {}
  for _, f in ipairs(redis.call('HKEYS', online)) do
    local node, uid = split_field(f)
    if dead[node] then
      redis.call('HDEL', online, f)
      gone[uid] = true
    elseif live[node] then
      staying[uid] = true
    end
  end
  for uid in pairs(gone) do
    if not staying[uid] then
      out[#out + 1] = room
      out[#out + 1] = uid
    end
  end
end
for n in pairs(dead) do
  redis.call('DEL', prefix .. 'node:{' .. n .. '}:rooms')
  redis.call('ZREM', KEYS[1], n)
end
return out
