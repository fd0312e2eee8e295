//! `natter restore`: a `natter dump` loaded into a new, empty store, line by line, in sled
//! batches of `BATCH_KEYS` keys, flushed at the end. It only reads its input.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{check_header, Line};
use crate::store::keys::Key;
use crate::store::sled_store::SledStore;
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
    let mut lines = 0u64;
    let mut ended = false;
    let mut buf = String::new();
    let mut line_no = 0u64;
    let outcome = (|| -> Result<()> {
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
            for (k, v) in writes(&l).with_context(at)? {
                bytes += k.len() + v.len();
                batch.insert(k, v);
                in_batch += 1;
            }
            lines += 1;
            if in_batch >= BATCH_KEYS || bytes >= BATCH_BYTES {
                db.apply_batch(std::mem::take(&mut batch))
                    .with_context(|| format!("--data: writing {}", dir.display()))?;
                written += in_batch as u64;
                (in_batch, bytes) = (0, 0);
            }
        }
        if line_no == 1 {
            bail!("{source}: empty (not a natter dump)");
        }
        if !ended {
            bail!("{source}: the dump ends at line {} before its end line (cut short?)", line_no - 1);
        }
        db.apply_batch(std::mem::take(&mut batch)).with_context(|| format!("--data: writing {}", dir.display()))?;
        written += in_batch as u64;
        db.flush().with_context(|| format!("--data: flushing {}", dir.display()))?;
        Ok(())
    })();
    match outcome {
        Ok(()) => Ok(lines),
        Err(e) if written == 0 => Err(e.context(format!("nothing was restored into {}", dir.display()))),
        Err(e) => Err(e.context(format!(
            "the store in {} is incomplete ({written} keys written): remove it and restore again",
            dir.display()
        ))),
    }
}

/// The sled keys and values one dump line stands for.
fn writes(l: &Line) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let key = l.key.as_deref().context("no `key` (nor the header or end line)")?;
    let kind = l.kind.as_deref().context("no `type`")?;
    let want = |t: &str| -> Result<()> {
        if kind != t {
            bail!("{key}: `type` {kind:?}, but this key is a {t}");
        }
        Ok(())
    };
    let need = |v: Option<u64>, f: &str| v.with_context(|| format!("{key}: no `{f}`"));
    let mid = |pre: &str, suf: &str| key.strip_prefix(pre).and_then(|r| r.strip_suffix(suf)).map(str::to_string);
    let mut out = Vec::new();
    if let Some(room) = mid("room:", ":members") {
        want("set")?;
        only(l, key, &["members"])?;
        for uid in members(l, key)? {
            out.push((Key::Member { room: component(&room, key)?, uid: component(uid, key)? }.encode(), vec![]));
        }
    } else if let Some(uid) = mid("user:", ":rooms") {
        want("set")?;
        only(l, key, &["members"])?;
        for room in members(l, key)? {
            out.push((Key::UserRoom { uid: component(&uid, key)?, room: component(room, key)? }.encode(), vec![]));
        }
    } else if let Some(room) = mid("room:", ":seq") {
        want("counter")?;
        only(l, key, &["value", "stored", "reserved"])?;
        let room = component(&room, key)?;
        match (l.value, l.stored) {
            (Some(id), Some(pos)) => out.push((Key::Seq { room: room.clone() }.encode(), val::seq(id, pos))),
            (None, None) if l.reserved.is_some() => {}
            _ => bail!("{key}: a counter has both `value` and `stored`, or only `reserved`"),
        }
        if let Some(r) = l.reserved {
            out.push((Key::SeqReserved { room }.encode(), r.to_be_bytes().to_vec()));
        }
    } else if let Some(room) = mid("room:", ":history") {
        want("list")?;
        only(l, key, &["pos", "id", "prev", "msg", "msg_text"])?;
        let pos = need(l.pos, "pos")?;
        let json = msg(l, key)?;
        out.push((
            Key::History { room: component(&room, key)?, pos }.encode(),
            val::stored(need(l.id, "id")?, need(l.prev, "prev")?, json),
        ));
    } else if let Some(uid) = key.strip_prefix("offline:") {
        want("list")?;
        only(l, key, &["n", "ts", "id", "prev", "roomid", "msg", "msg_text"])?;
        let room = l.roomid.as_deref().with_context(|| format!("{key}: no `roomid`"))?;
        let v = val::entry(need(l.ts, "ts")?, need(l.id, "id")?, need(l.prev, "prev")?, room, msg(l, key)?);
        out.push((Key::Queue { uid: component(uid, key)?, n: need(l.n, "n")? }.encode(), v));
    } else if key.starts_with("dedupe:") {
        want("string")?;
        only(l, key, &["uid", "cid", "ts", "value", "roomid"])?;
        let (uid, cid) = (l.uid.as_deref().unwrap_or_default(), l.cid.as_deref().unwrap_or_default());
        if key != format!("dedupe:{uid}:{cid}") {
            bail!("{key}: `uid` {uid:?} and `cid` {cid:?} do not name this key");
        }
        let room = l.roomid.as_deref().with_context(|| format!("{key}: no `roomid`"))?;
        let ts = need(l.ts, "ts")?;
        let (uid, cid) = (component(uid, key)?, component(cid, key)?);
        out.push((
            Key::Dedupe { uid: uid.clone(), cid: cid.clone() }.encode(),
            val::dedupe(ts, need(l.value, "value")?, room),
        ));
        out.push((Key::DedupeAge { uid, ts, cid }.encode(), vec![]));
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

/// A uid, room or cid: non-empty and short enough for a key component.
fn component(s: &str, key: &str) -> Result<String> {
    if s.is_empty() || s.len() > 1024 {
        bail!("{key}: a uid, room or cid of {} bytes (1 to 1024)", s.len());
    }
    Ok(s.to_string())
}

/// The message bytes of a list entry, exactly as dumped.
fn msg<'a>(l: &'a Line, key: &str) -> Result<&'a [u8]> {
    match (&l.msg, &l.msg_text) {
        (Some(raw), None) => Ok(raw.get().as_bytes()),
        (None, Some(text)) => Ok(text.as_bytes()),
        _ => bail!("{key}: an entry has one of `msg` and `msg_text`"),
    }
}
