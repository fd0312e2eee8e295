//! The per-uid connection limit across nodes (PROTOCOL.md: connections per uid, checked at
//! auth): each node counts its own connections of a uid in `user:{uid}:conns` (field: the
//! node), and a claim sums only live nodes' counts, so a node that dies stops counting at its
//! deadline, like its presence.

use super::RedisStore;
use crate::store::Result;

/// KEYS: 1 the uid's counts, 2 nodes. ARGV: 1 this node, 2 the limit. Fields of dead nodes are
/// dropped as they are met. 1 when the connection is counted, 0 when the uid is at the limit.
pub(crate) const CLAIM: &str = r#"
local live = live_nodes(KEYS[2], redis_ms())
local n = 0
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  if live[counts[i]] then n = n + tonumber(counts[i + 1]) else redis.call('HDEL', KEYS[1], counts[i]) end
end
if n >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"#;

/// KEYS: 1 the uid's counts. ARGV: 1 this node. One connection fewer; the field goes at 0.
pub(crate) const RELEASE: &str = r#"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
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
            .arg(&self.node)
            .arg(max)
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
            .arg(&self.node)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }
}
