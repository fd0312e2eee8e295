//! Round trip of `dump` and `restore` through the `Store` trait's answers, and refused inputs.

use std::path::Path;

use super::*;
use crate::store::{Append, Bounds, Store};

pub(super) const B: Bounds = Bounds {
    history_max: 3,
    offline_max: 4,
    offline_max_bytes: 1 << 20,
    offline_ttl_ms: 1_000_000,
    dedupe_ttl_ms: 1_000_000,
    dedupe_max: 3,
};
pub(super) const ROOMS: [&str; 4] = ["r1", "r2", "quiet", "big"];
pub(super) const UIDS: [&str; 4] = ["u1", "u2", "u:3", "nobody"];
pub(super) const CIDS: [&str; 5] = ["c1", "c2", "c:3", "c4", "gone"];
pub(super) const NOW: u64 = 5_000;
const BATCH_KEYS_FOR_TEST: usize = restore::BATCH_KEYS;

pub(super) fn open(dir: &Path) -> SledStore {
    SledStore::open(dir, B).unwrap()
}

fn append(s: &SledStore, room: &str, id: u64, json: &[u8], offline: &[&str], dedupe: Option<(&str, &str)>, now: u64) {
    s.append(&Append { room, id, json, offline, dedupe, now_ms: now }).unwrap();
}

/// Members, user rooms, a history that jumped in ids and wrapped its window, queues over
/// several rooms (one dequeued from), dedupe records (one replaced, one over the cap), a
/// reservation above the last id, one on a room with no message, presence, a set over a chunk.
pub(super) fn populate(s: &SledStore) {
    for (r, u) in [("r1", "u1"), ("r1", "u2"), ("r1", "u:3"), ("r2", "u2"), ("r2", "u:3")] {
        s.add_member(r, u).unwrap();
    }
    for i in 0..SET_CHUNK + 5 {
        s.add_member("big", &format!("m{i:04}")).unwrap();
    }
    s.set_online("r1", "u1", 2).unwrap();
    let mut t = 1_000;
    for id in [1, 2, 3, 70_004, 70_005, 70_006] {
        let json = format!(r#"{{"event":"message","roomid":"r1","id":{id},"message":"hé \u00e9 {id}"}}"#);
        append(s, "r1", id, json.as_bytes(), &["u2", "u:3"], Some(("u1", CIDS[(id % 4) as usize])), t);
        t += 10;
    }
    // Bytes that embedded JSON would not give back as they are.
    for (id, json) in [(1, &b"{\"a\":\n1}"[..]), (2, b" {}"), (3, b"not json")] {
        append(s, "r2", id, json, &["u2"], Some(("u:3", "c:3")), t);
        t += 10;
    }
    s.enqueue(&Append { room: "r2", id: 3, json: b"{}", offline: &["u:3"], dedupe: None, now_ms: t }, 2).unwrap();
    let first = s.queued("u2", "r2", NOW).unwrap()[0].n;
    s.dequeue("u2", &[first]).unwrap();
    s.reserve_ids("r1", 135_000).unwrap();
    s.reserve_ids("quiet", 40).unwrap();
}

/// Every answer of the `Store` trait a caller can get, for the keys `populate` wrote.
fn observe(s: &dyn Store) -> Vec<String> {
    let mut out = Vec::new();
    for r in ROOMS {
        let mut m = s.members(r).unwrap();
        m.sort();
        out.push(format!("{r} members {m:?} last {} online {:?}", s.last_id(r).unwrap(), s.online(r).unwrap()));
        for after in [0, 2, 70_004] {
            let h: Vec<_> = s.history_after(r, after).unwrap().into_iter().map(|m| (m.id, m.prev, m.json)).collect();
            out.push(format!("{r} history after {after} {h:?}"));
        }
        for u in UIDS {
            let q: Vec<_> = s.queued(u, r, NOW).unwrap().into_iter().map(|q| (q.n, q.id, q.prev, q.json)).collect();
            out.push(format!("{r} {u} queued {q:?}"));
        }
    }
    for u in UIDS {
        let mut rooms = s.user_rooms(u).unwrap();
        rooms.sort();
        let d: Vec<_> = CIDS.iter().map(|c| s.dedupe_get(u, c, NOW).unwrap()).collect();
        out.push(format!("{u} rooms {rooms:?} len {} dedupe {d:?}", s.offline_len(u).unwrap()));
    }
    out
}

pub(super) fn dump_to_vec(s: &SledStore) -> Vec<u8> {
    let mut out = Vec::new();
    dump(s, &mut out, "test").unwrap();
    out
}

fn restore_from(s: &SledStore, dir: &Path, text: &[u8]) -> Result<u64> {
    restore(s, dir, &mut &text[..], "--in test.jsonl")
}

#[test]
fn restore_of_a_dump_answers_like_the_original() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = open(a.path());
    populate(&src);
    let first = dump_to_vec(&src);
    let text = String::from_utf8(first.clone()).unwrap();
    assert!(text.starts_with(&format!("{{\"natter_dump\":1,\"natter\":\"{}\"}}\n", env!("CARGO_PKG_VERSION"))));
    assert!(text.contains(r#"{"key":"room:r1:seq","type":"counter","value":70006,"stored":6,"reserved":135000}"#));
    assert!(text.contains(r#"{"key":"room:quiet:seq","type":"counter","reserved":40}"#));
    assert!(text.contains(r#""msg_text":"not json""#) && text.contains(r#""msg_text":" {}""#));
    assert!(!text.contains("online") && !text.contains("store-id"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with(r#"{"key":"room:big:members""#)).count(), 2);

    let dst = open(b.path());
    let lines = restore_from(&dst, b.path(), &first).unwrap();
    assert_eq!(lines as usize, text.lines().count() - 2);
    src.clear_presence().unwrap();
    assert_eq!(observe(&src), observe(&dst));
    assert_eq!(dump_to_vec(&dst), first, "a dump of the restored store is the same dump");

    // Reopened from disk (the restore was flushed), and the same after further writes: history
    // positions, queue entry numbers, dedupe records and their cap go on alike.
    drop(dst);
    let dst = open(b.path());
    for s in [&src, &dst] {
        append(s, "r1", 135_001, b"{\"n\":1}", &["u2", "nobody"], Some(("u1", "c4")), NOW);
        append(s, "r2", 4, b"{\"n\":2}", &["u:3"], Some(("u:3", "c1")), NOW);
        s.expire(1_000_000 + 1_025).unwrap();
    }
    assert_eq!(observe(&src), observe(&dst));
    assert_eq!(dump_to_vec(&src), dump_to_vec(&dst));
}

#[test]
fn restore_refuses_what_is_no_whole_dump_or_a_used_store() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = open(a.path());
    populate(&src);
    let good = String::from_utf8(dump_to_vec(&src)).unwrap();
    let err = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        format!("{:#}", restore_from(&s, dir.path(), text.as_bytes()).unwrap_err())
    };
    let mut lines: Vec<&str> = good.lines().collect();
    lines[3] = "{\"key\":\"room:r1:history\",";
    let e = err(&lines.join("\n"));
    assert!(e.contains("--in test.jsonl: line 4: not a dump line") && e.contains("nothing was restored"), "{e}");
    let cut = good.trim_end().rsplit_once('\n').unwrap().0;
    let e = err(cut);
    assert!(e.contains("before its end line") && e.contains("nothing was restored"), "{e}");
    // Past a batch, a failure says what it leaves behind.
    let mut big = lines[0].to_string();
    for i in 0..BATCH_KEYS_FOR_TEST {
        big.push_str(&format!("\n{{\"key\":\"room:r{i}:members\",\"type\":\"set\",\"members\":[\"u\"]}}"));
    }
    let e = err(&format!("{big}\n{{\"key\":\"room:x:members\",\"type\":\"set\"}}\n"));
    assert!(e.contains("incomplete (10000 keys written)") && e.contains("remove it and restore again"), "{e}");
    assert!(e.contains(&format!("line {}: room:x:members: no `members`", BATCH_KEYS_FOR_TEST + 2)), "{e}");
    let e = err(&good.replacen("\"natter_dump\":1", "\"natter_dump\":2", 1));
    assert!(e.contains("line 1") && e.contains("format 2"), "{e}");
    let e = err(&good.replacen(r#""type":"counter""#, r#""type":"set""#, 1));
    assert!(e.contains("room:quiet:seq") || e.contains("room:r1:seq"), "{e}");
    assert!(err("").contains("empty"));
    let e = err(&good.replacen(r#""type":"counter","#, r#""type":"counter","pos":1,"#, 1));
    assert!(e.contains("has no `pos`"), "{e}");
    let e = err(&good.replacen("\"c:3\",\"ts\"", "\"c3\",\"ts\"", 1));
    assert!(e.contains("do not name this key"), "{e}");

    // A store with anything in it is refused, and left as it was.
    let dst = open(b.path());
    dst.add_member("r9", "u9").unwrap();
    let e = format!("{:#}", restore_from(&dst, b.path(), good.as_bytes()).unwrap_err());
    assert!(e.contains("--data") && e.contains("not empty"), "{e}");
    assert_eq!(dst.members("r1").unwrap(), Vec::<String>::new());
}
