//! The Redis backend: PROTOCOL.md's logical keys in one Redis shared by N natter nodes, with the
//! store assigning ids in one Lua script per publish (docs/redis.md). Async (inherent methods):
//! the hub's Redis engine (`hub::cluster`) calls it directly, not through the `Store` trait.
//!
//! Submodules: `publish` (the publish script, its template and channel payload), `presence`
//! (per-node presence with expiry, a node's announcement), `presence_room` (a join's or leave's
//! presence change with the counts), `conns` (the per-uid connection limit), `queue` (offline
//! queues), `scripts` (the Lua), `load`/`export` (restore and dump), tests.
// The whole logical-key API is kept (the model tests compare it with MemoryStore's answer by
// answer); `serve` uses part of it.
#![cfg_attr(not(test), allow(dead_code))]

mod broker_support;
mod conns;
pub(crate) mod export;
pub(crate) mod load;
mod presence;
mod presence_room;
mod publish;
mod queue;
mod scripts;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_model;
#[cfg(test)]
mod tests_presence;
#[cfg(test)]
mod tests_publish;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Bounds, Result, Stored};
pub(crate) use broker_support::BrokerScripts;
pub(crate) use presence_room::{Membership, RoomCounts};
#[cfg_attr(not(test), allow(unused_imports))]
pub(crate) use publish::{decode_payload, Outcome, Publish, Published, Template};
pub(crate) use queue::parse_entry;
pub(crate) use scripts::Scripts;

/// The key prefix when none is configured.
pub(crate) const DEFAULT_PREFIX: &str = "natter:";
/// How long a node counts as live after its last heartbeat.
pub(crate) const DEFAULT_NODE_TTL: Duration = Duration::from_secs(15);
/// How often a node should call `heartbeat` (a third of the TTL: two missed beats are survived).
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// How to reach Redis and who this node is.
#[derive(Clone, Debug)]
pub(crate) struct RedisConfig {
    /// `redis://[:password@]HOST:PORT/DB` (a user too: `redis://user:password@...`).
    pub(crate) url: String,
    /// Put in front of every key and channel, so that several deployments can share a Redis.
    pub(crate) prefix: String,
    /// Unique per natter process (e.g. host and pid, or a random id at start).
    pub(crate) node_id: String,
    pub(crate) bounds: Bounds,
    pub(crate) node_ttl: Duration,
    /// Bounds one connection attempt and one command's answer, so that a publish while Redis is
    /// unreachable fails within about this long (the caller answers `unavailable`).
    pub(crate) timeout: Duration,
}

impl RedisConfig {
    pub(crate) fn new(url: &str, node_id: &str, bounds: Bounds) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: DEFAULT_PREFIX.into(),
            node_id: node_id.into(),
            bounds,
            node_ttl: DEFAULT_NODE_TTL,
            timeout: Duration::from_secs(2),
        }
    }
}

/// A key component with `%`, `:`, `{` and `}` written as `%XX`: no uid, room or cid can then
/// close a hash tag early or make two keys one (`dedupe:{a}:{b}:{c}` has one reading only).
/// The prelude's `esc` is the same function in Lua. Valid room ids have none of these.
pub(crate) fn esc(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| matches!(b, b'%' | b':' | b'{' | b'}')) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' | ':' | '{' | '}' => {
                let _ = write!(out, "%{:02X}", c as u8);
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Key names (docs/redis.md, "Keys"). A room's keys share the hash tag `{room}` and a uid's keys
/// `{uid}`, so each group stays in one slot should Redis Cluster come later.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
}

impl Keys {
    fn room(&self, room: &str, what: &str) -> String {
        format!("{}room:{{{}}}:{what}", self.prefix, esc(room))
    }
    pub(crate) fn members(&self, room: &str) -> String {
        self.room(room, "members")
    }
    pub(crate) fn online(&self, room: &str) -> String {
        self.room(room, "online")
    }
    pub(crate) fn seq(&self, room: &str) -> String {
        self.room(room, "seq")
    }
    pub(crate) fn history(&self, room: &str) -> String {
        self.room(room, "history")
    }
    /// The id of the message stored last (the next one's `prev`): the history cannot say it
    /// when it keeps nothing (`history_max` 0), and the counter is above it after a restore.
    pub(crate) fn last(&self, room: &str) -> String {
        self.room(room, "last")
    }
    pub(crate) fn user_rooms(&self, uid: &str) -> String {
        format!("{}user:{{{}}}:rooms", self.prefix, esc(uid))
    }
    /// Each node's live connections of the uid (the cross-node per-uid limit).
    pub(crate) fn user_conns(&self, uid: &str) -> String {
        format!("{}user:{{{}}}:conns", self.prefix, esc(uid))
    }
    pub(crate) fn offline(&self, uid: &str) -> String {
        format!("{}offline:{{{}}}", self.prefix, esc(uid))
    }
    /// The queue's entry counter (`n`) and byte count, beside it with the same TTL.
    pub(crate) fn offline_meta(&self, uid: &str) -> String {
        format!("{}:meta", self.offline(uid))
    }
    /// What `dedupe(uid, cid)` starts with (the script builds the key of a record it drops).
    pub(crate) fn dedupe_prefix(&self, uid: &str) -> String {
        format!("{}dedupe:{{{}}}:", self.prefix, esc(uid))
    }
    pub(crate) fn dedupe(&self, uid: &str, cid: &str) -> String {
        format!("{}{{{}}}", self.dedupe_prefix(uid), esc(cid))
    }
    /// The uid's dedupe records by age (for the per-uid cap).
    pub(crate) fn dedupe_ages(&self, uid: &str) -> String {
        format!("{}ages", self.dedupe_prefix(uid))
    }
    /// The live nodes: a sorted set of node -> deadline (ms on Redis's clock).
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    /// `node` is already escaped (`RedisStore::node`).
    pub(crate) fn node_rooms(&self, node: &str) -> String {
        format!("{}node:{{{node}}}:rooms", self.prefix)
    }
    /// The uids node N counts connections of, with how many (what a sweep visits in
    /// `user:{U}:conns`). `node` is already escaped.
    pub(crate) fn node_uids(&self, node: &str) -> String {
        format!("{}node:{{{node}}}:uids", self.prefix)
    }
    /// The room's pub/sub channel: one per room, so a node subscribes to the rooms it serves.
    pub(crate) fn channel(&self, room: &str) -> String {
        format!("{}chan:{{{}}}", self.prefix, esc(room))
    }
}

/// The Redis store of one natter node.
pub(crate) struct RedisStore {
    pub(crate) keys: Keys,
    /// This node's id, escaped (it is a key part and the first part of presence fields).
    pub(crate) node: String,
    pub(crate) bounds: Bounds,
    pub(crate) node_ttl: Duration,
    /// Reconnects by itself; cloned per call (an `Arc` inside).
    pub(crate) conn: ConnectionManager,
    pub(crate) scripts: scripts::Scripts,
    /// What `connect` took offline when it cleared a dead predecessor's presence, until
    /// `take_leftover_offline`.
    leftovers: std::sync::Mutex<Vec<(String, String)>>,
}

impl RedisStore {
    /// Connects (failing when Redis cannot be reached now) and announces this node live. A
    /// node id that is live already is refused (two processes writing one node's presence
    /// would undo each other's); what a dead process with this id left (presence, connection
    /// counts) is cleared first, so that the new process does not bring it back to life. One
    /// script does all three; the `(room, uid)` pairs the clearing took offline wait in
    /// `take_leftover_offline` for the caller's `logout`s.
    pub(crate) async fn connect(cfg: RedisConfig) -> Result<Self> {
        let client = redis::Client::open(cfg.url.as_str()).context("redis url")?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            // While Redis is down, calls fail after one quick retry instead of piling up
            // behind a long backoff; the next call starts a new attempt.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, mcfg).await.context("connecting to redis")?;
        let store = RedisStore {
            keys: Keys { prefix: cfg.prefix },
            node: esc(&cfg.node_id).into_owned(),
            bounds: cfg.bounds,
            node_ttl: cfg.node_ttl,
            conn,
            scripts: scripts::Scripts::new(),
            leftovers: Default::default(),
        };
        anyhow::ensure!(store.announce().await?, "node id {:?} is in use by a live natter node", cfg.node_id);
        Ok(store)
    }

    /// The pub/sub channel of `room`: the publish script sends each message there
    /// (`decode_payload` reads it).
    pub(crate) fn channel(&self, room: &str) -> String {
        self.keys.channel(room)
    }

    /// A handle for one command (clones share the connection).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Adds `uid` to `room:{room}:members` and `room` to `user:{uid}:rooms` (one MULTI); true
    /// when new.
    pub(crate) async fn add_member(&self, room: &str, uid: &str) -> Result<bool> {
        let (added, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("SADD")
            .arg(self.keys.members(room))
            .arg(uid)
            .cmd("SADD")
            .arg(self.keys.user_rooms(uid))
            .arg(room)
            .query_async(&mut self.conn())
            .await?;
        Ok(added == 1)
    }

    /// Ends a membership (both sets, one MULTI); true when it existed.
    pub(crate) async fn remove_member(&self, room: &str, uid: &str) -> Result<bool> {
        let (removed, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("SREM")
            .arg(self.keys.members(room))
            .arg(uid)
            .cmd("SREM")
            .arg(self.keys.user_rooms(uid))
            .arg(room)
            .query_async(&mut self.conn())
            .await?;
        Ok(removed == 1)
    }

    pub(crate) async fn members(&self, room: &str) -> Result<Vec<String>> {
        Ok(redis::cmd("SMEMBERS").arg(self.keys.members(room)).query_async(&mut self.conn()).await?)
    }

    pub(crate) async fn user_rooms(&self, uid: &str) -> Result<Vec<String>> {
        Ok(redis::cmd("SMEMBERS").arg(self.keys.user_rooms(uid)).query_async(&mut self.conn()).await?)
    }

    /// The last id given in the room (0 when none).
    pub(crate) async fn last_id(&self, room: &str) -> Result<u64> {
        let v: Option<u64> = redis::cmd("GET").arg(self.keys.seq(room)).query_async(&mut self.conn()).await?;
        Ok(v.unwrap_or(0))
    }

    /// The kept history entries with `id > after` (the room's last `history_max` by count),
    /// oldest first.
    pub(crate) async fn history_after(&self, room: &str, after: u64) -> Result<Vec<Stored>> {
        let raw: Vec<Vec<u8>> =
            self.scripts.history_after.key(self.keys.history(room)).arg(after).invoke_async(&mut self.conn()).await?;
        raw.into_iter().map(|e| decode_payload(&e).context("history entry")).collect()
    }

    /// `dedupe:{uid}:{cid}` when younger than the dedupe TTL: `(roomid, id)`.
    pub(crate) async fn dedupe_get(&self, uid: &str, cid: &str, now_ms: u64) -> Result<Option<(String, u64)>> {
        let v: Option<String> = redis::cmd("GET").arg(self.keys.dedupe(uid, cid)).query_async(&mut self.conn()).await?;
        let Some(v) = v else { return Ok(None) };
        let rec = parse_dedupe(&v).context("dedupe record")?;
        Ok((rec.0 + self.bounds.dedupe_ttl_ms > now_ms).then(|| (rec.2.to_string(), rec.1)))
    }

    /// Whether an ack can mean durable: AOF on with `appendfsync always` (Redis 7.0 has no
    /// WAITAOF). An error when CONFIG is refused (managed Redis often renames it): the caller
    /// then warns that durability is unknown.
    pub(crate) async fn acks_are_durable(&self) -> Result<bool> {
        let mut c = self.conn();
        let aof: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut c).await?;
        let fsync: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendfsync").query_async(&mut c).await?;
        Ok(aof.get(1).is_some_and(|v| v == "yes") && fsync.get(1).is_some_and(|v| v == "always"))
    }

    /// A no-op: Redis drops what expires by itself. Dedupe records carry a PX TTL; a queue and
    /// its meta hash get a PEXPIRE of `offline_ttl_ms` at every push (its newest entry's age),
    /// `queued` skips entries past their own TTL and each push drops those at the front.
    pub(crate) async fn expire(&self, _now_ms: u64) -> Result<()> {
        Ok(())
    }
}

/// Whether a store error means "Redis cannot take it now" (the caller answers `unavailable`
/// and the client resends later) rather than a bug (`internal`): the connection is down or
/// timed out, or the server is loading, read-only, out of memory or a cluster part is down.
pub(crate) fn is_unavailable(e: &anyhow::Error) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    e.chain().filter_map(|c| c.downcast_ref::<redis::RedisError>()).any(|r| {
        r.is_io_error()
            || r.is_timeout()
            || r.is_connection_dropped()
            || matches!(
                r.kind(),
                ErrorKind::Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly)
            )
            || r.code() == Some("OOM")
    })
}

/// `ts:id:room` of a dedupe record.
fn parse_dedupe(v: &str) -> Option<(u64, u64, &str)> {
    let (ts, rest) = v.split_once(':')?;
    let (id, room) = rest.split_once(':')?;
    Some((ts.parse().ok()?, id.parse().ok()?, room))
}

/// `id:prev:rest` (history entries and channel payloads): the two numbers and what follows.
fn split_nums<const N: usize>(v: &[u8]) -> Option<([u64; N], &[u8])> {
    let mut nums = [0u64; N];
    let mut rest = v;
    for n in nums.iter_mut() {
        let at = rest.iter().position(|b| *b == b':')?;
        *n = std::str::from_utf8(&rest[..at]).ok()?.parse().ok()?;
        rest = &rest[at + 1..];
    }
    Some((nums, rest))
}
