//! Presence per node with expiry: each node writes its own connections, a node is live while
//! its deadline in `nodes` (Redis's clock) is ahead, and a sweep removes what dead nodes left.

use super::RedisStore;
use crate::store::Result;

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
    /// `logout`s for its users and removed its presence, so the caller writes its presence
    /// again (`set_online` for each room and uid it serves).
    pub(crate) async fn heartbeat(&self) -> Result<bool> {
        let live: i64 = self
            .scripts
            .heartbeat
            .key(self.keys.nodes())
            .arg(&self.node)
            .arg(u64::try_from(self.node_ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(live == 1)
    }

    /// Removes the presence of every node past its deadline and returns the `(room, uid)`
    /// pairs that have no connection on a live node left, for the caller's `logout`s. Any node
    /// may run it at any time: each pair is reported to one caller only.
    pub(crate) async fn sweep_dead_nodes(&self) -> Result<Vec<(String, String)>> {
        self.sweep("", false).await
    }

    /// A clean shutdown: this node's presence goes now (and the dead nodes' with it), and it is
    /// no longer live. Returns what went offline, as `sweep_dead_nodes`.
    pub(crate) async fn clear_node(&self) -> Result<Vec<(String, String)>> {
        self.sweep(&self.node, false).await
    }

    /// What an earlier process with this node id left behind, removed (at `connect`): other
    /// dead nodes are left to the sweeps, whose callers send their `logout`s.
    pub(crate) async fn clear_leftovers(&self) -> Result<()> {
        self.sweep(&self.node, true).await.map(drop)
    }

    async fn sweep(&self, forced: &str, only: bool) -> Result<Vec<(String, String)>> {
        let mut v: Vec<(String, String)> = self
            .scripts
            .sweep
            .key(self.keys.nodes())
            .arg(&self.keys.prefix)
            .arg(forced)
            .arg(if only { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        v.sort();
        Ok(v)
    }
}
