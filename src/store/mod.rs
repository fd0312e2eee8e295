//! Storage behind the `Store` trait, shaped around PROTOCOL.md's key scheme so that the hub
//! never knows which engine holds the data (embedded sled today, Redis when scaled out).

mod compact;
#[cfg(test)]
mod compact_tests;
pub mod keys;
pub(crate) mod logical;
pub mod memory;
mod migrate;
#[cfg(test)]
mod model;
/// The Redis backend for scale-out (issue 11; async, not behind `Store` yet).
pub(crate) mod redis_store;
mod sled_engine;
/// The sled key holding the store's identity (never dumped: a restored store gets its own).
pub(crate) use sled_engine::STORE_ID_KEY;
pub mod sled_store;
#[cfg(test)]
mod suite;
#[cfg(test)]
mod suite_history;
#[cfg(test)]
mod suite_limits;
pub mod values;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub type Result<T> = anyhow::Result<T>;
pub type FlushFuture = Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>;

/// A message as stored in `room:{room}:history`: its id, the id of the message stored before
/// it in the room (0 for the first), and the JSON object published.
///
/// `prev` chains a room's stored messages: ids may jump (after a crash), so "nothing was
/// missed between `since` and this message" is `prev <= since`, never an id difference.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub id: u64,
    pub prev: u64,
    pub json: Bytes,
}

/// An entry of `offline:{uid}` for one room.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    /// The entry's position in the uid's queue, for `dequeue`.
    pub n: u64,
    /// The message id.
    pub id: u64,
    /// The id of the message stored before it in its room (see `Stored::prev`).
    pub prev: u64,
    pub json: Bytes,
}

/// Everything one publish writes.
pub struct Append<'a> {
    pub room: &'a str,
    pub id: u64,
    pub json: &'a [u8],
    /// Members with no live connection in the room: each gets the message queued.
    pub offline: &'a [&'a str],
    /// `(uid, cid)` to remember for dedupe, with the id.
    pub dedupe: Option<(&'a str, &'a str)>,
    pub now_ms: u64,
}

/// Bounds the store enforces.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub history_max: usize,
    pub offline_max: usize,
    /// Bytes of message JSON per uid's queue; the newest entry is kept even when over it alone.
    pub offline_max_bytes: usize,
    pub offline_ttl_ms: u64,
    pub dedupe_ttl_ms: u64,
    /// Dedupe records per uid; over it the oldest record is dropped.
    pub dedupe_max: usize,
}

/// The contract every backend keeps.
///
/// - Methods are synchronous and fast: an embedded engine answers from memory; a networked
///   backend pipelines. Writes are visible to later reads at once, but durable only once a
///   `flush` started after them has completed.
/// - Each method is atomic on its own: `append` and `add_member` land whole or not at all
///   (after a crash too), and two concurrent `add_member` calls for different uids both end up
///   members.
/// - Ordering: the caller (the hub) serialises writes to one room; the store serialises
///   writes to one uid's queue across rooms.
pub trait Store: Send + Sync + 'static {
    /// Adds `uid` to `room:{room}:members` and `room` to `user:{uid}:rooms`; true when new.
    fn add_member(&self, room: &str, uid: &str) -> Result<bool>;
    /// Ends a membership (both sets); true when it existed.
    fn remove_member(&self, room: &str, uid: &str) -> Result<bool>;
    fn members(&self, room: &str) -> Result<Vec<String>>;
    /// `user:{uid}:rooms`: the rooms `uid` is a member of.
    fn user_rooms(&self, uid: &str) -> Result<Vec<String>>;
    /// `room:{room}:online` field `uid` := `conns`; 0 removes the field.
    fn set_online(&self, room: &str, uid: &str, conns: u32) -> Result<()>;
    /// `room:{room}:online`: uid -> live connections.
    fn online(&self, room: &str) -> Result<Vec<(String, u32)>>;
    /// Clears every room's presence (a single node starts with nobody online).
    fn clear_presence(&self) -> Result<()>;
    /// The highest id that may already have been given in the room (0 when none): the last
    /// stored id, or the reserved ceiling when that is higher. Ids continue above it.
    fn last_id(&self, room: &str) -> Result<u64>;
    /// Records that ids up to `upto` may be given: durable once a `flush` started after the
    /// call completes, and the caller gives no id above the last durable reservation. Messages
    /// are fanned out before their own flush; reserving ids in flushed blocks is what keeps ids
    /// strictly increasing across a crash. Never lowers a reservation.
    fn reserve_ids(&self, room: &str, upto: u64) -> Result<()>;
    /// Sets the reservation of `room` to exactly `last_id` (the last id given in this run,
    /// which after a crash may be the old reservation); ids then continue right after it.
    /// Only for a room where nothing is being published and every message is flushed (a clean
    /// shutdown, an idle room); not flushed itself. `last_id` 0 (no id was ever given there)
    /// removes the reservation: a room that never had a message leaves no key behind.
    fn release_ids(&self, room: &str, last_id: u64) -> Result<()>;
    /// Atomically: the room's sequence := `id`, history append (the room's last `history_max`
    /// messages by count, whatever the ids), one queue entry per offline uid (trimmed to
    /// `offline_max`, oldest first), the dedupe record. Returns the `prev` it recorded (the
    /// id of the message stored before this one in the room).
    fn append(&self, a: &Append) -> Result<u64>;
    /// Queue entries only, for members found offline after `append` (their connection began
    /// closing as the message was fanned out): one entry per `a.offline` uid, with `prev` as
    /// `append` returned it. History, sequence and dedupe are untouched.
    fn enqueue(&self, a: &Append, prev: u64) -> Result<()>;
    /// The kept history entries with `id > after` (at most `history_max`, the newest), oldest
    /// first.
    fn history_after(&self, room: &str, after: u64) -> Result<Vec<Stored>>;
    /// `uid`'s unexpired queued messages for `room`, oldest first (nothing is removed).
    fn queued(&self, uid: &str, room: &str, now_ms: u64) -> Result<Vec<Queued>>;
    /// Removes the given entries (by `Queued::n`) from `uid`'s queue, once there is evidence the
    /// client has them (see docs/protocol.md, "Offline queues and recovery").
    fn dequeue(&self, uid: &str, ns: &[u64]) -> Result<()>;
    /// Number of entries in `offline:{uid}` (all rooms).
    fn offline_len(&self, uid: &str) -> Result<usize>;
    /// `dedupe:{uid}:{cid}` when younger than the dedupe TTL: `(roomid, id)`.
    fn dedupe_get(&self, uid: &str, cid: &str, now_ms: u64) -> Result<Option<(String, u64)>>;
    /// Drops expired queue entries and dedupe records.
    fn expire(&self, now_ms: u64) -> Result<()>;
    /// Makes every write made before the call durable (survives a crash of the process).
    fn flush(&self) -> FlushFuture;
}
