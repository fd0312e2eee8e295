//! One element of a logical key of PROTOCOL.md's key scheme, engine-neutral: what `natter
//! restore` reads from a dump line and each engine writes in its own layout.

/// A set member, a counter, a list entry or a string of the key scheme.
#[derive(Debug, PartialEq)]
pub(crate) enum Element<'a> {
    /// `room:{room}:members` holds `uid`.
    Member { room: &'a str, uid: &'a str },
    /// `user:{uid}:rooms` holds `room`.
    UserRoom { uid: &'a str, room: &'a str },
    /// `room:{room}:seq`: the last stored id with the position of the newest history entry
    /// (when the room stored any), and the reserved id ceiling (when there is one).
    Seq { room: &'a str, last: Option<(u64, u64)>, reserved: Option<u64> },
    /// An entry of `room:{room}:history`, at position `pos` (entries come in position order).
    History { room: &'a str, pos: u64, id: u64, prev: u64, json: &'a [u8] },
    /// An entry of `offline:{uid}`, numbered `n` (entries come in number order).
    Queue { uid: &'a str, n: u64, ts: u64, id: u64, prev: u64, room: &'a str, json: &'a [u8] },
    /// `dedupe:{uid}:{cid}`: the id first given to the cid, in `room`, at `ts`.
    Dedupe { uid: &'a str, cid: &'a str, ts: u64, id: u64, room: &'a str },
}
