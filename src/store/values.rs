//! How the embedded engine lays out values (all integers big-endian). Keys are in `keys`.

pub fn u64_at(v: &[u8], at: usize) -> u64 {
    v.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

/// `room:{room}:seq`: the last stored id | the number of messages stored in all (the
/// position of the newest history entry).
pub fn seq(id: u64, pos: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&pos.to_be_bytes());
    v
}

/// `(last stored id, position)` of a seq value; a layout-1 value (8 bytes) has position 0.
pub fn parse_seq(v: &[u8]) -> (u64, u64) {
    (u64_at(v, 0), u64_at(v, 8))
}

/// A history entry: id | prev | the message object.
pub fn stored(id: u64, prev: u64, json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + json.len());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&prev.to_be_bytes());
    v.extend_from_slice(json);
    v
}

/// `(id, prev, json)` of a history entry.
pub fn parse_stored(v: &[u8]) -> Option<(u64, u64, &[u8])> {
    Some((u64_at(v, 0), u64_at(v, 8), v.get(16..)?))
}

/// A queue entry: ts | id | prev | room len (u16) | room | the message object.
pub fn entry(ts: u64, id: u64, prev: u64, room: &str, rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(26 + room.len() + rest.len());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&prev.to_be_bytes());
    v.extend_from_slice(&(room.len() as u16).to_be_bytes());
    v.extend_from_slice(room.as_bytes());
    v.extend_from_slice(rest);
    v
}

pub struct Entry<'a> {
    pub ts: u64,
    pub id: u64,
    pub prev: u64,
    pub room: &'a str,
    pub rest: &'a [u8],
}

pub fn parse_entry(v: &[u8]) -> Option<Entry<'_>> {
    let len = u16::from_be_bytes(v.get(24..26)?.try_into().ok()?) as usize;
    let room = std::str::from_utf8(v.get(26..26 + len)?).ok()?;
    Some(Entry { ts: u64_at(v, 0), id: u64_at(v, 8), prev: u64_at(v, 16), room, rest: &v[26 + len..] })
}

/// A dedupe record: ts | id | room len (u16) | room.
pub fn dedupe(ts: u64, id: u64, room: &str) -> Vec<u8> {
    legacy_entry(ts, id, room, &[])
}

/// `(ts, id, room)` of a dedupe record.
pub fn parse_dedupe(v: &[u8]) -> Option<(u64, u64, &str)> {
    parse_legacy_entry(v).map(|(ts, id, room, _)| (ts, id, room))
}

/// A layout-1 queue entry (and every dedupe record): ts | id | room len (u16) | room | rest.
pub fn legacy_entry(ts: u64, id: u64, room: &str, rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(18 + room.len() + rest.len());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&(room.len() as u16).to_be_bytes());
    v.extend_from_slice(room.as_bytes());
    v.extend_from_slice(rest);
    v
}

pub fn parse_legacy_entry(v: &[u8]) -> Option<(u64, u64, &str, &[u8])> {
    let len = u16::from_be_bytes(v.get(16..18)?.try_into().ok()?) as usize;
    let room = std::str::from_utf8(v.get(18..18 + len)?).ok()?;
    Some((u64_at(v, 0), u64_at(v, 8), room, &v[18 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let e = entry(1, 2, 3, "rüm", b"{}");
        let p = parse_entry(&e).unwrap();
        assert_eq!((p.ts, p.id, p.prev, p.room, p.rest), (1, 2, 3, "rüm", &b"{}"[..]));
        assert_eq!(parse_stored(&stored(7, 5, b"x")), Some((7, 5, &b"x"[..])));
        assert_eq!(parse_seq(&seq(9, 4)), (9, 4));
        assert_eq!(parse_seq(&9u64.to_be_bytes()), (9, 0));
        assert_eq!(parse_dedupe(&dedupe(1, 2, "r")), Some((1, 2, "r")));
        assert!(parse_entry(&[0; 25]).is_none());
        assert!(parse_stored(&[0; 15]).is_none());
    }
}
