//! `natter restore`: a `natter dump` loaded into a new, empty store, line by line, in sled
//! batches of `BATCH_KEYS` keys, flushed at the end. It only reads its input.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{check_header, Line};
use crate::store::keys::Key;
use crate::store::logical::Element;
use crate::store::redis_store::load::Loader;
use crate::store::redis_store::RedisConfig;
use crate::store::sled_store::SledStore;
use crate::store::Bounds;
use crate::store::{values as val, STORE_ID_KEY};

/// sled keys written per batch, at most.
pub(crate) const BATCH_KEYS: usize = 10_000;
/// Bytes of keys and values per batch, at most (10,000 large messages would be far more).
const BATCH_BYTES: usize = 64 << 20;

/// Loads the dump read from `input` (named `source` in errors: `--in FILE`) into `store`,
/// which must hold nothing yet (`dir` is its `--data`). Returns the lines of keys loaded.
pub fn restore(store: &SledStore, dir: &Path, input: &mut dyn BufRead, source: &str) -> Result<u64> {
    let db = store.tree()?;
    if let Some(k) = db.iter().keys().find(|k| k.as_ref().map_or(true, |k| k.as_ref() != STORE_ID_KEY)) {
        k?;
        bail!("--data: the store in {} is not empty: restore only into a new data dir", dir.display());
    }
    let mut batch = sled::Batch::default();
    let (mut in_batch, mut bytes, mut written) = (0, 0, 0u64);
    let outcome = read_dump(input, source, |l| {
        for (k, v) in writes(l)? {
            bytes += k.len() + v.len();
            batch.insert(k, v);
            in_batch += 1;
        }
        if in_batch >= BATCH_KEYS || bytes >= BATCH_BYTES {
            db.apply_batch(std::mem::take(&mut batch)).with_context(|| format!("--data: writing {}", dir.display()))?;
            written += in_batch as u64;
            (in_batch, bytes) = (0, 0);
        }
        Ok(())
    })
    .and_then(|lines| {
        db.apply_batch(std::mem::take(&mut batch)).with_context(|| format!("--data: writing {}", dir.display()))?;
        written += in_batch as u64;
        db.flush().with_context(|| format!("--data: flushing {}", dir.display()))?;
        Ok(lines)
    });
    match outcome {
        Ok(lines) => Ok(lines),
        Err(e) if written == 0 => Err(e.context(format!("nothing was restored into {}", dir.display()))),
        Err(e) => Err(e.context(format!(
            "the store in {} is incomplete ({written} keys written): remove it and restore again",
            dir.display()
        ))),
    }
}

/// Loads the dump into a Redis that holds no key under the prefix yet (`natter restore
/// --redis`). Returns the lines of keys loaded.
pub fn restore_redis(url: &str, prefix: &str, bounds: Bounds, input: &mut dyn BufRead, source: &str) -> Result<u64> {
    restore_redis_at(url, prefix, bounds, input, source, crate::now_ms())
}

/// `restore_redis` at the time `now_ms` (what dedupe records have left of their TTL).
pub(crate) fn restore_redis_at(
    url: &str,
    prefix: &str,
    bounds: Bounds,
    input: &mut dyn BufRead,
    source: &str,
    now_ms: u64,
) -> Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut cfg = RedisConfig::new(url, "natter-restore", bounds);
    cfg.prefix = prefix.to_string();
    let mut loader = rt.block_on(Loader::connect(&cfg, now_ms))?;
    let outcome = read_dump(input, source, |l| {
        for e in elements(l)? {
            rt.block_on(loader.add(&e))?;
        }
        Ok(())
    });
    let incomplete = "the restore stopped: the Redis may hold part of the dump under the prefix; delete those keys \
                      and restore again";
    let lines = outcome.context(incomplete)?;
    rt.block_on(loader.finish()).context(incomplete)?;
    Ok(lines)
}

/// Reads a dump line by line, checking its header, its end line and its line count, and hands
/// every key line to `each` (errors name the line). Returns the key lines read.
fn read_dump(input: &mut dyn BufRead, source: &str, mut each: impl FnMut(&Line) -> Result<()>) -> Result<u64> {
    let mut lines = 0u64;
    let mut ended = false;
    let mut buf = String::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        line_no += 1;
        if input.read_line(&mut buf).with_context(|| format!("{source}: line {line_no}"))? == 0 {
            break;
        }
        let text = buf.strip_suffix('\n').unwrap_or(&buf);
        let at = || format!("{source}: line {line_no}");
        if ended {
            bail!("{}: text after the dump's end line", at());
        }
        let l: Line = serde_json::from_str(text).with_context(|| format!("{}: not a dump line", at()))?;
        if line_no == 1 {
            check_header(&l).with_context(at)?;
            continue;
        }
        if l.natter_dump_end == Some(true) {
            if l.lines != Some(lines) {
                bail!("{}: the end line counts {:?} lines, the dump has {lines}", at(), l.lines);
            }
            ended = true;
            continue;
        }
        each(&l).with_context(at)?;
        lines += 1;
    }
    if line_no == 1 {
        bail!("{source}: empty (not a natter dump)");
    }
    if !ended {
        bail!("{source}: the dump ends at line {} before its end line (cut short?)", line_no - 1);
    }
    Ok(lines)
}

/// The sled keys and values one dump line stands for.
fn writes(l: &Line) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let s = String::from;
    Ok(elements(l)?
        .into_iter()
        .flat_map(|e| match e {
            Element::Member { room, uid } => vec![(Key::Member { room: s(room), uid: s(uid) }.encode(), vec![])],
            Element::UserRoom { uid, room } => vec![(Key::UserRoom { uid: s(uid), room: s(room) }.encode(), vec![])],
            Element::Seq { room, last, reserved } => {
                let mut out: Vec<_> = last
                    .map(|(id, pos)| (Key::Seq { room: s(room) }.encode(), val::seq(id, pos)))
                    .into_iter()
                    .collect();
                out.extend(reserved.map(|r| (Key::SeqReserved { room: s(room) }.encode(), r.to_be_bytes().to_vec())));
                out
            }
            Element::History { room, pos, id, prev, json } => {
                vec![(Key::History { room: s(room), pos }.encode(), val::stored(id, prev, json))]
            }
            Element::Queue { uid, n, ts, id, prev, room, json } => {
                vec![(Key::Queue { uid: s(uid), n }.encode(), val::entry(ts, id, prev, room, json))]
            }
            Element::Dedupe { uid, cid, ts, id, room } => vec![
                (Key::Dedupe { uid: s(uid), cid: s(cid) }.encode(), val::dedupe(ts, id, room)),
                (Key::DedupeAge { uid: s(uid), ts, cid: s(cid) }.encode(), vec![]),
            ],
        })
        .collect())
}

/// The logical elements one dump line stands for, checked (every engine loads these).
pub(crate) fn elements(l: &Line) -> Result<Vec<Element<'_>>> {
    let key = l.key.as_deref().context("no `key` (nor the header or end line)")?;
    let kind = l.kind.as_deref().context("no `type`")?;
    let want = |t: &str| -> Result<()> {
        if kind != t {
            bail!("{key}: `type` {kind:?}, but this key is a {t}");
        }
        Ok(())
    };
    let need = |v: Option<u64>, f: &str| v.with_context(|| format!("{key}: no `{f}`"));
    let mid = |pre: &str, suf: &str| key.strip_prefix(pre).and_then(|r| r.strip_suffix(suf));
    let mut out = Vec::new();
    if let Some(room) = mid("room:", ":members") {
        want("set")?;
        only(l, key, &["members"])?;
        let room = room_id(room, key)?;
        for uid in members(l, key)? {
            out.push(Element::Member { room, uid: component(uid, key)? });
        }
    } else if let Some(uid) = mid("user:", ":rooms") {
        want("set")?;
        only(l, key, &["members"])?;
        let uid = component(uid, key)?;
        for room in members(l, key)? {
            out.push(Element::UserRoom { uid, room: room_id(room, key)? });
        }
    } else if let Some(room) = mid("room:", ":seq") {
        want("counter")?;
        only(l, key, &["value", "stored", "reserved"])?;
        let room = room_id(room, key)?;
        let last = match (l.value, l.stored) {
            (Some(id), Some(pos)) => Some((id, pos)),
            (None, None) if l.reserved.is_some() => None,
            _ => bail!("{key}: a counter has both `value` and `stored`, or only `reserved`"),
        };
        out.push(Element::Seq { room, last, reserved: l.reserved });
    } else if let Some(room) = mid("room:", ":history") {
        want("list")?;
        only(l, key, &["pos", "id", "prev", "msg", "msg_text"])?;
        let (pos, id, prev) = (need(l.pos, "pos")?, need(l.id, "id")?, need(l.prev, "prev")?);
        out.push(Element::History { room: room_id(room, key)?, pos, id, prev, json: msg(l, key)? });
    } else if let Some(uid) = key.strip_prefix("offline:") {
        want("list")?;
        only(l, key, &["n", "ts", "id", "prev", "roomid", "msg", "msg_text"])?;
        let room = room_id(l.roomid.as_deref().with_context(|| format!("{key}: no `roomid`"))?, key)?;
        let (n, ts, id, prev) = (need(l.n, "n")?, need(l.ts, "ts")?, need(l.id, "id")?, need(l.prev, "prev")?);
        out.push(Element::Queue { uid: component(uid, key)?, n, ts, id, prev, room, json: msg(l, key)? });
    } else if key.starts_with("dedupe:") {
        want("string")?;
        only(l, key, &["uid", "cid", "ts", "value", "roomid"])?;
        let (uid, cid) = (l.uid.as_deref().unwrap_or_default(), l.cid.as_deref().unwrap_or_default());
        if key != format!("dedupe:{uid}:{cid}") {
            bail!("{key}: `uid` {uid:?} and `cid` {cid:?} do not name this key");
        }
        let room = room_id(l.roomid.as_deref().with_context(|| format!("{key}: no `roomid`"))?, key)?;
        let (ts, id) = (need(l.ts, "ts")?, need(l.value, "value")?);
        out.push(Element::Dedupe { uid: component(uid, key)?, cid: component(cid, key)?, ts, id, room });
    } else {
        bail!("{key}: not a key of the key scheme that a dump holds");
    }
    Ok(out)
}

/// Refuses a field that a line of this key does not have (beside `key` and `type`).
fn only(l: &Line, key: &str, allowed: &[&str]) -> Result<()> {
    let fields = [
        ("natter_dump", l.natter_dump.is_some()),
        ("natter", l.natter.is_some()),
        ("natter_dump_end", l.natter_dump_end.is_some()),
        ("lines", l.lines.is_some()),
        ("uid", l.uid.is_some()),
        ("cid", l.cid.is_some()),
        ("members", l.members.is_some()),
        ("pos", l.pos.is_some()),
        ("n", l.n.is_some()),
        ("ts", l.ts.is_some()),
        ("id", l.id.is_some()),
        ("prev", l.prev.is_some()),
        ("value", l.value.is_some()),
        ("stored", l.stored.is_some()),
        ("reserved", l.reserved.is_some()),
        ("roomid", l.roomid.is_some()),
        ("msg", l.msg.is_some()),
        ("msg_text", l.msg_text.is_some()),
    ];
    match fields.iter().find(|(f, set)| *set && !allowed.contains(f)) {
        Some((f, _)) => bail!("{key}: a line of this key has no `{f}`"),
        None => Ok(()),
    }
}

fn members<'a>(l: &'a Line, key: &str) -> Result<&'a [String]> {
    l.members.as_deref().with_context(|| format!("{key}: no `members`"))
}

/// A uid or cid: non-empty and short enough for a key component.
fn component<'a>(s: &'a str, key: &str) -> Result<&'a str> {
    if s.is_empty() || s.len() > 1024 {
        bail!("{key}: a uid, room or cid of {} bytes (1 to 1024)", s.len());
    }
    Ok(s)
}

/// A room id as every natter accepts it (`protocol::valid_room`): no store holds another, and
/// the dump's key names and the Redis keys read as PROTOCOL.md's only for these.
fn room_id<'a>(s: &'a str, key: &str) -> Result<&'a str> {
    if !crate::protocol::valid_room(s) {
        bail!("{key}: {s:?} is not a valid room id (1 to 64 bytes of letters, digits, `-`, `_` and `.`)");
    }
    Ok(s)
}

/// The message bytes of a list entry, exactly as dumped.
fn msg<'a>(l: &'a Line, key: &str) -> Result<&'a [u8]> {
    match (&l.msg, &l.msg_text) {
        (Some(raw), None) => Ok(raw.get().as_bytes()),
        (None, Some(text)) => Ok(text.as_bytes()),
        _ => bail!("{key}: an entry has one of `msg` and `msg_text`"),
    }
}
