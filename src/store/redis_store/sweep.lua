-- natter: removing what nodes left behind (docs/redis.md, "Presence and node expiry"): the
-- function the sweep, connect and reannounce scripts share (after the prelude, before their
-- bodies in presence.rs).

-- Removes everything the nodes of `dead` (a set of escaped ids) wrote: their fields in the
-- `room:{R}:online` of the rooms in `node:{N}:rooms`, their fields in the `user:{U}:conns` of
-- the uids in `node:{N}:uids`, both indexes and their entries in `nodes`. Returns room, uid,
-- room, uid, ...: each (room, uid) with no presence left on a live node, once: the script runs
-- alone, so of two concurrent sweeps the second finds nothing left.
local function sweep_nodes(nodes_key, prefix, dead, now)
  local live = live_nodes(nodes_key, now)
  local rooms = {}
  for n in pairs(dead) do
    live[n] = nil
    for _, room in ipairs(redis.call('HKEYS', prefix .. 'node:{' .. n .. '}:rooms')) do rooms[room] = true end
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
    local node_uids = prefix .. 'node:{' .. n .. '}:uids'
    for _, uid in ipairs(redis.call('HKEYS', node_uids)) do
      redis.call('HDEL', prefix .. 'user:{' .. esc(uid) .. '}:conns', n)
    end
    redis.call('DEL', prefix .. 'node:{' .. n .. '}:rooms', node_uids)
    redis.call('ZREM', nodes_key, n)
  end
  return out
end
