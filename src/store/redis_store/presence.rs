//! Presence per node with expiry: each node writes its own connections, a node is live while
//! its deadline in `nodes` (Redis's clock) is ahead, and a sweep removes what dead nodes left;
//! a node's announcement at `connect` and its re-announcement after a late heartbeat.

use super::RedisStore;
use crate::store::Result;

/// The sweep (`sweep.lua` in front). KEYS: 1 nodes. ARGV: 1 prefix, 2 a node to remove
/// whatever its deadline ('' for none), as `clear_node` does at a clean shutdown. Every node
/// past its deadline goes too.
pub(crate) const SWEEP: &str = r#"
local now = redis_ms()
local dead = {}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', d(now))) do dead[n] = true end
if ARGV[2] ~= '' then dead[ARGV[2]] = true end
return sweep_nodes(KEYS[1], ARGV[1], dead, now)
"#;

/// A node's start, in one step (`sweep.lua` in front). KEYS: 1 nodes. ARGV: 1 prefix, 2 this
/// node, 3 ttl ms. `{0, {}}` when the node is live (refused: nothing written); else what an
/// earlier process with this id left is removed, the node is announced live until now + ttl,
/// and `{1, {room, uid, ...}}` are the pairs those leftovers took offline. Other dead nodes
/// are left to the sweeps, whose callers send their `logout`s.
pub(crate) const CONNECT: &str = r#"
local now = redis_ms()
local at = redis.call('ZSCORE', KEYS[1], ARGV[2])
if at and tonumber(at) > now then return {0, {}} end
local out = sweep_nodes(KEYS[1], ARGV[1], {[ARGV[2]] = true}, now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
return {1, out}
"#;

/// This node's presence and connection counts replaced by what it has now, and the node live
/// until now + ttl, in one step (`sweep.lua` in front). KEYS: 1 nodes. ARGV: 1 prefix, 2 this
/// node, 3 ttl ms, 4 how many presence triples follow, then `room, uid, conns` triples, then
/// `uid, conns` pairs (the connection counts). Entries with 0 are skipped. Returns room, uid,
/// ...: the pairs of its old presence that it no longer lists and no live node has.
pub(crate) const REANNOUNCE: &str = r#"
local prefix, node, now = ARGV[1], ARGV[2], redis_ms()
local gone = sweep_nodes(KEYS[1], prefix, {[node] = true}, now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), node)
local node_rooms = prefix .. 'node:{' .. node .. '}:rooms'
local node_uids = prefix .. 'node:{' .. node .. '}:uids'
local back = {}
local last = 4 + 3 * tonumber(ARGV[4])
for i = 5, last, 3 do
  local room, uid, conns = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if conns > 0 then
    local online = prefix .. 'room:{' .. esc(room) .. '}:online'
    if redis.call('HSET', online, node .. ':' .. uid, conns) == 1 then redis.call('HINCRBY', node_rooms, room, 1) end
    back[room] = back[room] or {}
    back[room][uid] = true
  end
end
for i = last + 1, #ARGV, 2 do
  local uid, conns = ARGV[i], tonumber(ARGV[i + 1])
  if conns > 0 then
    redis.call('HSET', prefix .. 'user:{' .. esc(uid) .. '}:conns', node, conns)
    redis.call('HSET', node_uids, uid, conns)
  end
end
local out = {}
for i = 1, #gone, 2 do
  if not (back[gone[i]] and back[gone[i]][gone[i + 1]]) then
    out[#out + 1] = gone[i]
    out[#out + 1] = gone[i + 1]
  end
end
return out
"#;

impl RedisStore {
    /// This node's live connections of `uid` in `room` := `conns`; 0 removes them. The uid is
    /// online in the room while any live node has it there.
    pub(crate) async fn set_online(&self, room: &str, uid: &str, conns: u32) -> Result<()> {
        let _: i64 = self
            .scripts
            .set_online
            .key(self.keys.online(room))
            .key(self.keys.node_rooms(&self.node))
            .arg(format!("{}:{uid}", self.node))
            .arg(conns)
            .arg(room)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// `room`'s online uids with their connections summed over live nodes, by uid.
    pub(crate) async fn online(&self, room: &str) -> Result<Vec<(String, u32)>> {
        let mut v: Vec<(String, u32)> = self
            .scripts
            .online
            .key(self.keys.online(room))
            .key(self.keys.nodes())
            .invoke_async(&mut self.conn())
            .await?;
        v.sort();
        Ok(v)
    }

    /// Keeps this node live for `node_ttl` more (call it every `HEARTBEAT_EVERY`). False when
    /// the node had been given up (past its deadline, or swept): other nodes may have sent
    /// `logout`s for its users, removed its presence and dropped its connection counts, so the
    /// caller writes them again (`reannounce`).
    pub(crate) async fn heartbeat(&self) -> Result<bool> {
        let live: i64 = self
            .scripts
            .heartbeat
            .key(self.keys.nodes())
            .arg(&self.node)
            .arg(self.ttl_ms())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(live == 1)
    }

    /// Removes the presence of every node past its deadline and returns the `(room, uid)`
    /// pairs that have no connection on a live node left, for the caller's `logout`s. Any node
    /// may run it at any time: each pair is reported to one caller only.
    pub(crate) async fn sweep_dead_nodes(&self) -> Result<Vec<(String, String)>> {
        self.sweep("").await
    }

    /// A clean shutdown: this node's presence goes now (and the dead nodes' with it), and it is
    /// no longer live. Returns what went offline, as `sweep_dead_nodes`.
    pub(crate) async fn clear_node(&self) -> Result<Vec<(String, String)>> {
        self.sweep(&self.node).await
    }

    /// The `(room, uid)` pairs that `connect` took offline when it removed what an earlier,
    /// dead process with this node id left (before any sweep did): nobody else reports them,
    /// so the caller sends their `logout`s. Handed out once; empty afterwards.
    pub(crate) fn take_leftover_offline(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.leftovers.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The recovery after `heartbeat` returned false: this node's presence (`room, uid,
    /// conns`) and connection counts (`uid, conns`, as `claim_conn` counted them) become
    /// exactly these, and the node live, in one script, so no other node sees a half of it.
    /// Whatever the node had written before is replaced (a sweep may have removed it, or
    /// another node's claim dropped its counts, or neither). Returns the pairs of its old
    /// presence it no longer lists and no live node has, for the caller's `logout`s; whom
    /// a sweep had logged out and who is listed again, the caller knows from its own list.
    pub(crate) async fn reannounce(
        &self,
        presence: &[(&str, &str, u32)],
        conns: &[(&str, u32)],
    ) -> Result<Vec<(String, String)>> {
        let mut inv = self.scripts.reannounce.prepare_invoke();
        inv.key(self.keys.nodes()).arg(&self.keys.prefix).arg(&self.node).arg(self.ttl_ms()).arg(presence.len());
        for (room, uid, n) in presence {
            inv.arg(*room).arg(*uid).arg(*n);
        }
        for (uid, n) in conns {
            inv.arg(*uid).arg(*n);
        }
        let mut v: Vec<(String, String)> = inv.invoke_async(&mut self.conn()).await?;
        v.sort();
        Ok(v)
    }

    /// Refuses a live node id, else removes what an earlier process with this id left (kept
    /// for `take_leftover_offline`) and announces the node live: one script (`CONNECT`).
    pub(super) async fn announce(&self) -> Result<bool> {
        let (ok, mut gone): (i64, Vec<(String, String)>) = self
            .scripts
            .connect
            .key(self.keys.nodes())
            .arg(&self.keys.prefix)
            .arg(&self.node)
            .arg(self.ttl_ms())
            .invoke_async(&mut self.conn())
            .await?;
        gone.sort();
        *self.leftovers.lock().unwrap_or_else(|e| e.into_inner()) = gone;
        Ok(ok == 1)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.node_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    async fn sweep(&self, forced: &str) -> Result<Vec<(String, String)>> {
        let mut v: Vec<(String, String)> = self
            .scripts
            .sweep
            .key(self.keys.nodes())
            .arg(&self.keys.prefix)
            .arg(forced)
            .invoke_async(&mut self.conn())
            .await?;
        v.sort();
        Ok(v)
    }
}
