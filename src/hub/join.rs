//! Joining a room: opening it (with its first id block durably reserved), the `login`
//! broadcast, the replay after `since` and the offline drain, the `recovered` verdict, and the
//! rule for when drained entries leave the queue (docs/protocol.md, "Offline queues and
//! recovery"): only on evidence the client has them, a pong to the ping sent after them or a
//! later `since` that covers them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::protocol::{self, Mark};
use crate::store::{Queued, Stored};
use crate::sync::LockExt;
use crate::wire;

use super::room::Room;
use super::{Conn, Hub, HubError, Joined, Who, ID_BLOCK};

/// The payload of the ping that follows a drain: this tag, then the token (8 bytes).
const CONFIRM_TAG: &[u8] = b"nq";

/// Tokens of drain pings, unique in the process.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// What a joiner is owed: the replay after `since` and its queued entries for the room.
pub(super) struct CatchUp {
    pub(super) replay: Vec<Stored>,
    pub(super) queued: Vec<Queued>,
}

impl CatchUp {
    /// Whether message `id` is in the catch-up (a publication held for a pending joiner that
    /// the catch-up already has is not sent twice).
    pub(super) fn has(&self, id: u64) -> bool {
        self.replay.binary_search_by_key(&id, |m| m.id).is_ok() || self.queued.iter().any(|q| q.id == id)
    }
}

/// True when nothing stored after `since` is missing from `replay` and `queued`: the replay's
/// oldest message follows `since` directly, or the queue holds every message between them.
/// Stored messages are chained by `prev`, so ids skipped after a crash are no gap.
pub(super) fn recovered(since: u64, replay: &[Stored], queued: &[Queued]) -> bool {
    // An empty replay: the room's newest stored message is at or before `since`.
    let Some(first) = replay.first() else { return true };
    let mut need = first.prev;
    // A room's entries in a queue are in publish order, so in id order.
    for q in queued.iter().rev() {
        if need <= since {
            break;
        }
        if q.id == need {
            need = q.prev;
        }
    }
    need <= since
}

/// The size of a drain ping frame: a 2-byte header, the tag, the token.
const CONFIRM_FRAME_LEN: usize = 2 + CONFIRM_TAG.len() + 8;

/// A fresh drain ping: its token and the frame.
fn confirm_ping() -> (u64, bytes::Bytes) {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let mut payload = CONFIRM_TAG.to_vec();
    payload.extend_from_slice(&token.to_be_bytes());
    let frame = wire::ping(&payload);
    debug_assert_eq!(frame.len(), CONFIRM_FRAME_LEN);
    (token, frame)
}

/// Sends the replay, then the queued entries it does not cover. Entries at or below `since`
/// are returned, for the caller to dequeue now (the client says it has them); the others
/// leave the queue once the client answers the ping that follows them (`Hub::pong`). A queue
/// larger than the outbox has room for is sent in part, the ping after it, and the connection
/// closed with 1013: the rest stays queued for the next `login`, which so always gets further.
pub(super) fn send_catch_up(metrics: &Metrics, conn: &Conn, uid: &str, since: Option<u64>, c: &CatchUp) -> Vec<u64> {
    catch_up_into(conn, uid, since, c, u64::MAX, &mut |_, frame| super::send_one(metrics, conn, frame)).0
}

/// `send_catch_up` through `push` (message id, or `None` for the drain's ping), leaving out
/// the entries with an id above `upto` (not sent, nor dequeued: they come live). Returns the
/// entries to dequeue now and the ping's token, if one was pushed.
pub(super) fn catch_up_into(
    conn: &Conn,
    uid: &str,
    since: Option<u64>,
    c: &CatchUp,
    upto: u64,
    push: &mut dyn FnMut(Option<u64>, Bytes) -> bool,
) -> (Vec<u64>, Option<u64>) {
    let mut all_sent = true;
    for m in c.replay.iter().filter(|m| m.id <= upto) {
        all_sent &= push(Some(m.id), wire::text(&protocol::with_mark(&m.json, Mark::Replay)));
    }
    let replayed = |id: u64| c.replay.binary_search_by_key(&id, |m| m.id).is_ok();
    let mut claimed = Vec::new();
    let mut sent = Vec::new();
    let mut cut_short = false;
    for q in &c.queued {
        if since.is_some_and(|k| q.id <= k) {
            claimed.push(q.n);
        } else if q.id > upto {
            // It comes live: it stays queued until a later drain or `since` covers it.
        } else if replayed(q.id) {
            sent.push(q.n);
        } else if all_sent && !cut_short {
            let frame = wire::text(&protocol::with_mark(&q.json, Mark::Offline));
            // Room for this entry and the ping after it, or the drain stops here.
            if !conn.outbox.has_room(2, frame.len() + CONFIRM_FRAME_LEN) {
                cut_short = true;
                continue;
            }
            all_sent = push(Some(q.id), frame);
            if all_sent {
                sent.push(q.n);
            }
        }
    }
    let mut ping = None;
    if all_sent && !sent.is_empty() {
        let (token, frame) = confirm_ping();
        conn.unconfirmed.locked().push((token, uid.to_string(), sent));
        if push(None, frame) {
            ping = Some(token);
        } else {
            conn.unconfirmed.locked().retain(|(t, ..)| *t != token);
        }
    }
    if cut_short {
        conn.outbox.close(1013, "slow consumer: log in again for the rest of the offline queue");
    }
    (claimed, ping)
}

impl Hub {
    /// The room, opened from the store when it is not in memory: its first block of ids is
    /// reserved and flushed before anyone can publish in it (the flush is awaited, on no lock).
    async fn open_room(&self, id: &str) -> Result<Arc<Room>, HubError> {
        if let Some(r) = self.existing_room(id) {
            return Ok(r);
        }
        let _opening = self.open_locks[super::stripe(id)].lock().await;
        if let Some(r) = self.existing_room(id) {
            return Ok(r);
        }
        // Before anything is read: publications from then on reach this node (scaled out).
        // Paired with the `unsubscribe` of the room's eviction, or of a failed open.
        self.broker.subscribe(id).await?;
        let opened = self.open_subscribed(id).await;
        if opened.is_err() {
            self.broker.unsubscribe(id);
        }
        opened
    }

    /// `open_room` once subscribed (the caller holds the room id's open lock).
    async fn open_subscribed(&self, id: &str) -> Result<Arc<Room>, HubError> {
        loop {
            let members = self.store().members(id)?;
            let last = self.store().last_id(id)?;
            let upto = last + ID_BLOCK;
            self.store().reserve_ids(id, upto)?;
            self.store().flush().await?;
            let mut rooms = self.rooms.locked();
            // Openers of one id take turns on the open lock, and only they insert.
            debug_assert!(!rooms.contains_key(id));
            // An eviction released ids while we flushed: what we read may be stale, start over.
            if self.store().last_id(id)? != upto {
                continue;
            }
            let room = Arc::new(Room::new(members, last, upto, self.subs.room(id)));
            rooms.insert(id.to_string(), room.clone());
            return Ok(room);
        }
    }

    /// `login`: joins `conn` to the room (broadcasting `login` when it is new there), then
    /// replays history after `since`, then delivers the uid's offline queue for the room, all
    /// under the room lock so that no live message overtakes them.
    pub async fn join(&self, conn: &Conn, who: &Who<'_>, roomid: &str, since: Option<u64>) -> Result<Joined, HubError> {
        if let super::Engine::Redis(c) = &self.engine {
            return c.join(conn, who, roomid, since).await;
        }
        // Before the room is opened: a refused join creates no room state. (Two connections of
        // one uid joining new rooms at the same moment may both pass: the cap is not exact.)
        if self.max_rooms_per_uid != usize::MAX {
            let rooms = self.store().user_rooms(who.uid).map_err(HubError::Unavailable)?;
            if rooms.len() >= self.max_rooms_per_uid && !rooms.iter().any(|r| r == roomid) {
                return Err(HubError::TooManyRooms(self.max_rooms_per_uid));
            }
        }
        loop {
            let room = self.open_room(roomid).await?;
            if let Some(joined) = self.join_open(&room, conn, who, roomid, since) {
                return joined;
            }
            // Evicted between the lookup and the lock: the next lookup opens it afresh.
        }
    }

    /// `join` on an open room; `None` when it was evicted meanwhile.
    fn join_open(
        &self,
        room: &Room,
        conn: &Conn,
        who: &Who,
        roomid: &str,
        since: Option<u64>,
    ) -> Option<Result<Joined, HubError>> {
        let mut st = room.lock();
        if st.evicted {
            return None;
        }
        // Read before anything is sent: the joiner's `login` says whether this is complete.
        let catch_up = self.read_catch_up(who.uid, roomid, since);
        let mut here = room.subs.lock();
        let is_new = !here.contains(conn.id);
        if is_new && !st.members.contains(who.uid) {
            if let Err(e) = self.store().add_member(roomid, who.uid) {
                return Some(Err(e.into()));
            }
            st.members.insert(who.uid.to_string());
        }
        if is_new {
            let uid: Arc<str> =
                st.online.get_key_value(who.uid).map(|(k, _)| k.clone()).unwrap_or_else(|| who.uid.into());
            let count = st.online.entry(uid.clone()).or_insert(0);
            *count += 1;
            let count = *count;
            if let Err(e) = self.store().set_online(roomid, who.uid, count) {
                tracing::warn!("presence write failed: {e:#}");
            }
            st.offline.remove(who.uid);
            if here.is_empty() {
                self.metrics.rooms.inc();
            }
            here.add(conn.id, uid, conn.outbox.clone());
        }
        let recovered = since.map(|k| catch_up.as_ref().is_ok_and(|c| recovered(k, &c.replay, &c.queued)));
        if is_new || recovered.is_some() {
            let mut login = protocol::LoginOut {
                event: "login",
                roomid,
                uid: who.uid,
                name: who.name,
                num: st.num(),
                total: st.total(),
                ts: crate::now_ms(),
                recovered: None,
            };
            // Others get the plain event (a repeated login is not broadcast); the joiner its own.
            if is_new {
                self.broadcast(roomid, &here, wire::text(&protocol::login(&login)), Some(conn.id));
            }
            login.recovered = recovered;
            self.send_one(conn, wire::text(&protocol::login(&login)));
        }
        // From here on the connection is in the room whatever happens: report, don't fail.
        let delivered = catch_up.and_then(|c| self.deliver(conn, who.uid, since, c));
        drop(st);
        if let Err(e) = &delivered {
            tracing::error!("replay/offline delivery in room {roomid}: {e:#}");
        }
        Some(Ok(Joined { catch_up_failed: delivered.is_err() }))
    }

    fn read_catch_up(&self, uid: &str, roomid: &str, since: Option<u64>) -> anyhow::Result<CatchUp> {
        let replay = match since {
            Some(k) => self.store().history_after(roomid, k)?,
            None => Vec::new(),
        };
        Ok(CatchUp { replay, queued: self.store().queued(uid, roomid, crate::now_ms())? })
    }

    /// `send_catch_up`, then the entries it found covered by `since` leave the queue.
    fn deliver(&self, conn: &Conn, uid: &str, since: Option<u64>, c: CatchUp) -> anyhow::Result<()> {
        let claimed = send_catch_up(&self.metrics, conn, uid, since, &c);
        self.store().dequeue(uid, &claimed)
    }

    /// A pong from `conn`: when it answers a drain's ping, the entries that ping followed
    /// (and those of earlier drains: a pong may answer only the latest ping) leave the queue.
    pub fn pong(&self, conn: &Conn, payload: &[u8]) {
        let Some(token) =
            payload.strip_prefix(CONFIRM_TAG).and_then(|t| <[u8; 8]>::try_from(t).ok()).map(u64::from_be_bytes)
        else {
            return;
        };
        let confirmed: Vec<(u64, String, Vec<u64>)> = {
            let mut pending = conn.unconfirmed.locked();
            let split = pending.iter().position(|(t, ..)| *t > token).unwrap_or(pending.len());
            pending.drain(..split).collect()
        };
        for (_, uid, mut ns) in confirmed {
            ns.sort_unstable();
            if let super::Engine::Redis(c) = &self.engine {
                c.dequeue_later(uid, ns);
                continue;
            }
            if let Err(e) = self.store().dequeue(&uid, &ns) {
                // They stay queued: delivered again at the next login, which is safe.
                tracing::warn!("dequeue after confirmation failed: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::recovered;
    use crate::store::{Queued, Stored};
    use bytes::Bytes;

    fn s(id: u64, prev: u64) -> Stored {
        Stored { id, prev, json: Bytes::new() }
    }
    fn q(id: u64, prev: u64) -> Queued {
        Queued { n: id, id, prev, json: Bytes::new() }
    }

    #[test]
    fn recovered_follows_the_prev_chain() {
        assert!(recovered(5, &[], &[]), "nothing after since");
        assert!(recovered(5, &[s(6, 5), s(7, 6)], &[]));
        // Ids jumped after a crash: 65537 follows 10 directly, so since=12 missed nothing.
        assert!(recovered(12, &[s(65537, 10)], &[]));
        assert!(!recovered(5, &[s(8, 7), s(9, 8)], &[]), "6 and 7 were trimmed");
        assert!(recovered(5, &[s(8, 7), s(9, 8)], &[q(6, 5), q(7, 6), q(8, 7)]), "the queue has 6 and 7");
        assert!(!recovered(5, &[s(8, 7)], &[q(7, 6)]), "6 is in neither");
        assert!(!recovered(5, &[s(8, 7)], &[q(6, 5)]), "7 is in neither");
    }
}
