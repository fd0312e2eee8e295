//! How the logical keys of PROTOCOL.md's key scheme are laid out as bytes in an ordered
//! key-value engine. Every component is length-prefixed, so no uid or roomid can collide with,
//! or be a byte prefix of, another's (`offline:alice` never prefixes `offline:alice2`), and
//! numbers are big-endian so that a key range is an id range.

/// One physical key. Each variant is one element of a logical key (a set member, a list entry,
/// a hash field, or a whole string/counter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// `room:{room}:members` set member.
    Member { room: String, uid: String },
    /// `user:{uid}:rooms` set member.
    UserRoom { uid: String, room: String },
    /// `room:{room}:online` hash field -> live connections (u32).
    Online { room: String, uid: String },
    /// `room:{room}:seq` counter: the last stored id (u64), and how many messages the room
    /// has stored in all (u64), the position the next history entry follows.
    Seq { room: String },
    /// The reserved id ceiling of `room:{room}:seq` (u64): ids up to it may have been given.
    SeqReserved { room: String },
    /// `room:{room}:history` list entry, by position (1, 2, 3, ... with no gaps, whatever
    /// the ids), so that the window of the last N is kept by count.
    History { room: String, pos: u64 },
    /// `offline:{uid}` list entry, by entry number.
    Queue { uid: String, n: u64 },
    /// `dedupe:{uid}:{cid}` string.
    Dedupe { uid: String, cid: String },
    /// The age index of `uid`'s dedupe records (empty value): one per record, ordered by the
    /// time it was written, so the cap per uid drops the oldest and expiry reads only what
    /// expired. Redis needs none (its keys expire by themselves).
    DedupeAge { uid: String, ts: u64, cid: String },
}

const MEMBER: u8 = b'm';
const USER_ROOM: u8 = b'u';
const ONLINE: u8 = b'p';
const SEQ: u8 = b's';
const SEQ_RESERVED: u8 = b'r';
const HISTORY: u8 = b'H';
const QUEUE: u8 = b'q';
/// Layout 1 (before `prev` and history positions): history by id, queue entries without
/// `prev`. Only read, to migrate them (`sled_store::migrate`).
pub const LEGACY_HISTORY: u8 = b'h';
pub const LEGACY_QUEUE: u8 = b'o';
const DEDUPE: u8 = b'd';
const DEDUPE_AGE: u8 = b'a';

/// Builds keys component by component.
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub fn new(tag: u8) -> Self {
        KeyBuf(vec![tag])
    }
    pub fn str(mut self, s: &str) -> Self {
        // Components are bounded (uid 256, room 64, cid 64 bytes), so u16 is plenty.
        let len = u16::try_from(s.len()).expect("key component under 64 KiB");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn num(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Reads key components back, in the order `KeyBuf` wrote them.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn str(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.0.get(..2)?.try_into().ok()?) as usize;
        let v = std::str::from_utf8(self.0.get(2..2 + len)?).ok()?.to_string();
        self.0 = &self.0[2 + len..];
        Some(v)
    }
    fn num(&mut self) -> Option<u64> {
        let v = u64::from_be_bytes(self.0.get(..8)?.try_into().ok()?);
        self.0 = &self.0[8..];
        Some(v)
    }
}

/// Prefixes for scans: every element of one logical key.
pub fn members_prefix(room: &str) -> Vec<u8> {
    KeyBuf::new(MEMBER).str(room).into_vec()
}
pub fn user_rooms_prefix(uid: &str) -> Vec<u8> {
    KeyBuf::new(USER_ROOM).str(uid).into_vec()
}
pub fn online_prefix(room: &str) -> Vec<u8> {
    KeyBuf::new(ONLINE).str(room).into_vec()
}
pub fn online_all() -> Vec<u8> {
    vec![ONLINE]
}
pub fn history_prefix(room: &str) -> Vec<u8> {
    KeyBuf::new(HISTORY).str(room).into_vec()
}
pub fn queue_prefix(uid: &str) -> Vec<u8> {
    KeyBuf::new(QUEUE).str(uid).into_vec()
}
pub fn queue_all() -> Vec<u8> {
    vec![QUEUE]
}
/// `offline:{uid}` entry `n`, without building a `Key` (the hot path of a publish).
pub fn queue_key(uid: &str, n: u64) -> Vec<u8> {
    KeyBuf::new(QUEUE).str(uid).num(n).into_vec()
}
pub fn history_key(room: &str, pos: u64) -> Vec<u8> {
    KeyBuf::new(HISTORY).str(room).num(pos).into_vec()
}
pub fn seq_all() -> Vec<u8> {
    vec![SEQ]
}
pub fn dedupe_all() -> Vec<u8> {
    vec![DEDUPE]
}
pub fn dedupe_age_all() -> Vec<u8> {
    vec![DEDUPE_AGE]
}
pub fn dedupe_age_prefix(uid: &str) -> Vec<u8> {
    KeyBuf::new(DEDUPE_AGE).str(uid).into_vec()
}
/// Below every age key of `uid` written after `ts`: the end of a "written at or before `ts`" range.
pub fn dedupe_age_until(uid: &str, ts: u64) -> Vec<u8> {
    KeyBuf::new(DEDUPE_AGE).str(uid).num(ts.saturating_add(1)).into_vec()
}

impl Key {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::Member { room, uid } => KeyBuf::new(MEMBER).str(room).str(uid),
            Key::UserRoom { uid, room } => KeyBuf::new(USER_ROOM).str(uid).str(room),
            Key::Online { room, uid } => KeyBuf::new(ONLINE).str(room).str(uid),
            Key::Seq { room } => KeyBuf::new(SEQ).str(room),
            Key::SeqReserved { room } => KeyBuf::new(SEQ_RESERVED).str(room),
            Key::History { room, pos } => KeyBuf::new(HISTORY).str(room).num(*pos),
            Key::Queue { uid, n } => KeyBuf::new(QUEUE).str(uid).num(*n),
            Key::Dedupe { uid, cid } => KeyBuf::new(DEDUPE).str(uid).str(cid),
            Key::DedupeAge { uid, ts, cid } => KeyBuf::new(DEDUPE_AGE).str(uid).num(*ts).str(cid),
        }
        .into_vec()
    }

    pub fn decode(raw: &[u8]) -> Option<Key> {
        let (&tag, rest) = raw.split_first()?;
        let mut r = Reader(rest);
        let key = match tag {
            MEMBER => Key::Member { room: r.str()?, uid: r.str()? },
            USER_ROOM => Key::UserRoom { uid: r.str()?, room: r.str()? },
            ONLINE => Key::Online { room: r.str()?, uid: r.str()? },
            SEQ => Key::Seq { room: r.str()? },
            SEQ_RESERVED => Key::SeqReserved { room: r.str()? },
            HISTORY => Key::History { room: r.str()?, pos: r.num()? },
            QUEUE => Key::Queue { uid: r.str()?, n: r.num()? },
            DEDUPE => Key::Dedupe { uid: r.str()?, cid: r.str()? },
            DEDUPE_AGE => Key::DedupeAge { uid: r.str()?, ts: r.num()?, cid: r.str()? },
            _ => return None,
        };
        // Only the exact encoding of a key is that key (no trailing bytes): one key, one form.
        (key.encode() == raw).then_some(key)
    }

    /// The logical (Redis) key this element belongs to, as PROTOCOL.md names it.
    pub fn logical(&self) -> String {
        match self {
            Key::Member { room, .. } => format!("room:{room}:members"),
            Key::UserRoom { uid, .. } => format!("user:{uid}:rooms"),
            Key::Online { room, .. } => format!("room:{room}:online"),
            Key::Seq { room } | Key::SeqReserved { room } => format!("room:{room}:seq"),
            Key::History { room, .. } => format!("room:{room}:history"),
            Key::Queue { uid, .. } => format!("offline:{uid}"),
            Key::Dedupe { uid, cid } | Key::DedupeAge { uid, cid, .. } => format!("dedupe:{uid}:{cid}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_uid_prefixes_another() {
        let a = queue_prefix("alice");
        let b = Key::Queue { uid: "alice2".into(), n: 0 }.encode();
        assert!(!b.starts_with(&a));
        let a = members_prefix("r1");
        assert!(!Key::Member { room: "r10".into(), uid: "x".into() }.encode().starts_with(&a));
    }

    #[test]
    fn trailing_bytes_are_no_key() {
        let mut k = Key::Seq { room: "r".into() }.encode();
        k.push(0);
        assert_eq!(Key::decode(&k), None);
    }

    #[test]
    fn keys_round_trip() {
        for k in [
            Key::Member { room: "r".into(), uid: "u:1".into() },
            Key::History { room: "r".into(), pos: 7 },
            Key::Queue { uid: "ü".into(), n: 3 },
            Key::Dedupe { uid: "u".into(), cid: "c".into() },
            Key::DedupeAge { uid: "u".into(), ts: 9, cid: "c".into() },
            Key::Seq { room: "r".into() },
        ] {
            assert_eq!(Key::decode(&k.encode()), Some(k));
        }
    }
}
