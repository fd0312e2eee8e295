//! A node's presence change in one room with the room's counts after it, in one script: what
//! a join and a leave need (docs/redis.md, "Presence and node expiry").

use std::sync::OnceLock;

use redis::Script;

use super::RedisStore;
use crate::store::Result;

/// What a presence change does to the uid's membership.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Membership {
    Keep,
    /// A join: the uid becomes a member (when it was not).
    Add,
    /// An explicit `leave` of the uid's last connection here: the membership ends, unless the
    /// uid is still in the room on another live node.
    End,
}

/// The room after a presence change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RoomCounts {
    /// The uid still has a connection in the room on a live node (this one or another).
    pub(crate) uid_online: bool,
    /// Distinct uids online on live nodes.
    pub(crate) num: usize,
    /// Members.
    pub(crate) total: usize,
    /// The last id given in the room when the change landed: every message up to it was
    /// published while the old presence held (what a leaving connection waits to have seen).
    pub(crate) seq: u64,
}

fn script() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| Script::new(&format!("{}\n{}", include_str!("prelude.lua"), include_str!("presence_room.lua"))))
}

impl RedisStore {
    /// This node's connections of `uid` in `room` := `conns` (0 removes them), the membership
    /// change `m`, and the counts after both, atomically: when a uid's last connections leave
    /// two nodes at once, exactly one of them sees `uid_online` false (and sends the `logout`).
    pub(crate) async fn set_presence(&self, room: &str, uid: &str, conns: u32, m: Membership) -> Result<RoomCounts> {
        let k = &self.keys;
        let op = match m {
            Membership::Keep => "",
            Membership::Add => "+",
            Membership::End => "-",
        };
        let (online, num, total, seq): (i64, usize, usize, u64) = script()
            .key(k.online(room))
            .key(k.node_rooms(&self.node))
            .key(k.nodes())
            .key(k.members(room))
            .key(k.user_rooms(uid))
            .key(k.seq(room))
            .arg(format!("{}:{uid}", self.node))
            .arg(conns)
            .arg(room)
            .arg(uid)
            .arg(op)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(RoomCounts { uid_online: online == 1, num, total, seq })
    }
}

impl RedisStore {
    /// `num` (distinct uids online on live nodes) and `total` (members) of `room` now, without
    /// a presence change (the `logout`s of a sweep, the `login`s after a reannounce).
    pub(crate) async fn room_counts(&self, room: &str) -> Result<(usize, usize)> {
        let num = self.online(room).await?.len();
        let total: usize = redis::cmd("SCARD").arg(self.keys.members(room)).query_async(&mut self.conn()).await?;
        Ok((num, total))
    }
}
