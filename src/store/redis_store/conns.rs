//! The per-uid connection limit across nodes (PROTOCOL.md: connections per uid, checked at
//! auth): each node counts its own connections of a uid in `user:{uid}:conns` (field: the
//! node), and a claim sums only live nodes' counts, so a node that dies stops counting at its
//! deadline, like its presence. Each node also indexes the uids it counts (`node:{N}:uids`), so
//! that the sweep of a dead node removes its counts too (`sweep.lua`): a process that takes the
//! id again does not find them live.

use super::RedisStore;
use crate::store::Result;

/// KEYS: 1 the uid's counts, 2 nodes, 3 this node's uid index. ARGV: 1 this node, 2 the limit,
/// 3 the uid. Fields of dead nodes are dropped as they are met (their index may then name a uid
/// with no count left: the sweep's HDEL finds nothing). 1 when the connection is counted, 0
/// when the uid is at the limit.
pub(crate) const CLAIM: &str = r#"
local live = live_nodes(KEYS[2], redis_ms())
local n = 0
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  if live[counts[i]] then n = n + tonumber(counts[i + 1]) else redis.call('HDEL', KEYS[1], counts[i]) end
end
if n >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return 1
"#;

/// KEYS: 1 the uid's counts, 2 this node's uid index. ARGV: 1 this node, 2 the uid. One
/// connection fewer; the field and the index entry go at 0.
pub(crate) const RELEASE: &str = r#"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
"#;

impl RedisStore {
    /// Counts a connection of `uid` on this node unless the uid has `max` on live nodes
    /// already; false when over the limit (nothing counted).
    pub(crate) async fn claim_conn(&self, uid: &str, max: usize) -> Result<bool> {
        let ok: i64 = self
            .scripts
            .claim_conn
            .key(self.keys.user_conns(uid))
            .key(self.keys.nodes())
            .key(self.keys.node_uids(&self.node))
            .arg(&self.node)
            .arg(max)
            .arg(uid)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(ok == 1)
    }

    /// A connection `claim_conn` counted has gone.
    pub(crate) async fn release_conn(&self, uid: &str) -> Result<()> {
        let _: i64 = self
            .scripts
            .release_conn
            .key(self.keys.user_conns(uid))
            .key(self.keys.node_uids(&self.node))
            .arg(&self.node)
            .arg(uid)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }
}
