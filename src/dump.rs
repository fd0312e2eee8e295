//! `natter dump`: the store written as JSON lines of the key scheme's logical keys (PROTOCOL.md),
//! one line per set chunk, counter, list entry or string, never sled's physical bytes, so that
//! `natter restore` (`dump/restore.rs`) can load it into a new store of any backend.
//!
//! The format (version 1), one JSON object per line:
//! - first `{"natter_dump":1,"natter":"<version>"}`, last `{"natter_dump_end":true,"lines":N}`
//!   (N: the lines between), so that a truncated dump is told from a whole one;
//! - `{"key":"room:R:members","type":"set","members":[..]}` and the same for `user:U:rooms`, at
//!   most `SET_CHUNK` members a line (a big set spans several lines of the same key);
//! - `{"key":"room:R:seq","type":"counter","value":ID,"stored":N,"reserved":ID}`: the last stored
//!   id, how many messages the room stored in all (the position of its newest history entry),
//!   the reserved id ceiling; each part left out when the store has none;
//! - `{"key":"room:R:history","type":"list","pos":P,"id":ID,"prev":ID,"msg":{..}}`, one per kept
//!   entry, by position; `{"key":"offline:U","type":"list","n":N,"ts":MS,"id":..,"prev":..,
//!   "roomid":R,"msg":{..}}`, one per queue entry, by entry number;
//! - `{"key":"dedupe:U:C","type":"string","uid":U,"cid":C,"ts":MS,"value":ID,"roomid":R}` (uid
//!   and cid spelled out: both may hold `:`). The age index is rebuilt from `ts`.
//!
//! `msg` is the stored message embedded as JSON, byte for byte as stored (clients dedupe by id
//! and the bytes are replayed as they are); bytes that would not come back identical that way
//! (not JSON, or with a line break or outer whitespace) go as the string `msg_text` instead.
//! Presence (`room:R:online`) is live state and is left out; so is the store's identity.

mod restore;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_redis;

pub use restore::{restore, restore_redis};

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::store::keys::Key;
use crate::store::sled_store::SledStore;
use crate::store::{values as val, STORE_ID_KEY};

/// The format version written in the first line.
pub const FORMAT: u64 = 1;
/// Members per set line.
pub(crate) const SET_CHUNK: usize = 1_000;

/// One line of a dump: the header, the end line or one element of a logical key. Fields in the
/// order they are written; absent ones are left out.
#[derive(Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub natter_dump: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub natter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub natter_dump_end: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pos: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roomid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_text: Option<String>,
}

impl Line {
    fn of(key: String, kind: &str) -> Line {
        Line { key: Some(key), kind: Some(kind.into()), ..Line::default() }
    }

    /// The stored message bytes, as `msg` when they come back identical from it, else `msg_text`.
    fn with_msg(mut self, json: &[u8], key: &str) -> Result<Line> {
        let text = std::str::from_utf8(json).with_context(|| format!("{key}: a stored message is not UTF-8"))?;
        let exact =
            !text.contains(['\n', '\r']) && serde_json::from_str::<&RawValue>(text).is_ok_and(|raw| raw.get() == text);
        if exact {
            self.msg = Some(RawValue::from_string(text.to_string())?);
        } else {
            self.msg_text = Some(text.to_string());
        }
        Ok(self)
    }
}

/// What a dump wrote.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    /// Lines of logical key elements (header and end line not counted).
    pub lines: u64,
    /// Distinct logical keys.
    pub keys: u64,
    /// sled keys natter did not write (left out).
    pub skipped: u64,
}

/// Writes every logical key of `store` (nothing else may use it: it is opened by this process,
/// which holds sled's lock) to `out`.
/// `dest` names `out` in errors (`--out FILE`, `stdout`).
pub fn dump(store: &SledStore, out: &mut dyn Write, dest: &str) -> Result<Summary> {
    use crate::store::logical::Element;
    let db = store.tree()?;
    let mut w = Writer { out, dest, sum: Summary::default(), last_key: String::new() };
    w.line(&Line { natter_dump: Some(FORMAT), natter: Some(env!("CARGO_PKG_VERSION").into()), ..Line::default() })?;
    // A set's members, gathered while its elements come in key order.
    let mut set: Option<(String, Vec<String>)> = None;
    for item in db.iter() {
        let (k, v) = item?;
        let Some(key) = Key::decode(&k) else {
            if k.as_ref() != STORE_ID_KEY {
                w.sum.skipped += 1;
            }
            continue;
        };
        let name = key.logical();
        let member = match &key {
            Key::Member { uid: m, .. } | Key::UserRoom { room: m, .. } => Some(m.clone()),
            _ => None,
        };
        if let Some((set_name, members)) = set.take_if(|(n, m)| *n != name || m.len() >= SET_CHUNK || member.is_none())
        {
            w.line(&Line { members: Some(members), ..Line::of(set_name, "set") })?;
        }
        let damaged = || anyhow::anyhow!("{name}: a damaged value in the store ({} bytes)", v.len());
        let line = match key {
            Key::Member { .. } | Key::UserRoom { .. } => {
                set.get_or_insert_with(|| (name, Vec::new())).1.extend(member);
                continue;
            }
            // Live state: a store starts with nobody online. The age index is rebuilt from `ts`.
            Key::Online { .. } | Key::DedupeAge { .. } => continue,
            Key::Seq { room } => {
                let (value, stored) = val::parse_seq(&v);
                let reserved = db.get(Key::SeqReserved { room }.encode())?.map(|r| val::u64_at(&r, 0));
                Line { value: Some(value), stored: Some(stored), reserved, ..Line::of(name, "counter") }
            }
            Key::SeqReserved { room } => {
                // Written with its room's seq, when the room has one.
                if db.get(Key::Seq { room }.encode())?.is_some() {
                    continue;
                }
                Line { reserved: Some(val::u64_at(&v, 0)), ..Line::of(name, "counter") }
            }
            Key::History { room, pos } => {
                let (id, prev, json) = val::parse_stored(&v).ok_or_else(damaged)?;
                line_of(&Element::History { room: &room, pos, id, prev, json })?
            }
            Key::Queue { uid, n } => {
                let e = val::parse_entry(&v).ok_or_else(damaged)?;
                line_of(&Element::Queue { uid: &uid, n, ts: e.ts, id: e.id, prev: e.prev, room: e.room, json: e.rest })?
            }
            Key::Dedupe { uid, cid } => {
                let (ts, id, room) = val::parse_dedupe(&v).ok_or_else(damaged)?;
                line_of(&Element::Dedupe { uid: &uid, cid: &cid, ts, id, room })?
            }
        };
        w.line(&line)?;
    }
    if let Some((set_name, members)) = set {
        w.line(&Line { members: Some(members), ..Line::of(set_name, "set") })?;
    }
    let lines = w.sum.lines;
    w.line(&Line { natter_dump_end: Some(true), lines: Some(lines), ..Line::default() })?;
    w.out.flush().with_context(|| format!("{dest}: cannot write the dump"))?;
    Ok(w.sum)
}

/// The dump line of one element that is not a set member (sets are gathered into chunks).
fn line_of(e: &crate::store::logical::Element<'_>) -> Result<Line> {
    use crate::store::logical::Element;
    Ok(match *e {
        Element::Member { .. } | Element::UserRoom { .. } => bail!("a set member is written with its set"),
        Element::Seq { room, last, reserved } => Line {
            value: last.map(|l| l.0),
            stored: last.map(|l| l.1),
            reserved,
            ..Line::of(format!("room:{room}:seq"), "counter")
        },
        Element::History { room, pos, id, prev, json } => {
            let name = format!("room:{room}:history");
            let l = Line { pos: Some(pos), id: Some(id), prev: Some(prev), ..Line::of(name.clone(), "list") };
            l.with_msg(json, &name)?
        }
        Element::Queue { uid, n, ts, id, prev, room, json } => {
            let name = format!("offline:{uid}");
            let l = Line {
                n: Some(n),
                ts: Some(ts),
                id: Some(id),
                prev: Some(prev),
                roomid: Some(room.into()),
                ..Line::of(name.clone(), "list")
            };
            l.with_msg(json, &name)?
        }
        Element::Dedupe { uid, cid, ts, id, room } => Line {
            uid: Some(uid.into()),
            cid: Some(cid.into()),
            ts: Some(ts),
            value: Some(id),
            roomid: Some(room.into()),
            ..Line::of(format!("dedupe:{uid}:{cid}"), "string")
        },
    })
}

/// Writes every logical key of the Redis deployment under `prefix` to `out`, in the format
/// of `dump` (history positions renumbered from 1: the window is kept by count). Stop the
/// nodes first: keys written meanwhile may or may not be in it.
pub fn dump_redis(url: &str, prefix: &str, out: &mut dyn Write, dest: &str) -> Result<Summary> {
    use crate::store::logical::Element;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut cfg = crate::store::redis_store::RedisConfig::new(url, "natter-dump", Default::default());
    cfg.prefix = prefix.to_string();
    let mut ex = rt.block_on(crate::store::redis_store::export::Exporter::connect(&cfg))?;
    let mut w = Writer { out, dest, sum: Summary::default(), last_key: String::new() };
    w.line(&Line { natter_dump: Some(FORMAT), natter: Some(env!("CARGO_PKG_VERSION").into()), ..Line::default() })?;
    let mut set: Option<(String, Vec<String>)> = None;
    rt.block_on(ex.each(|e| {
        let member = match e {
            Element::Member { room, uid } => Some((format!("room:{room}:members"), uid)),
            Element::UserRoom { uid, room } => Some((format!("user:{uid}:rooms"), room)),
            _ => None,
        };
        if let Some((name, members)) =
            set.take_if(|(n, m)| m.len() >= SET_CHUNK || member.as_ref().is_none_or(|(k, _)| k != n))
        {
            w.line(&Line { members: Some(members), ..Line::of(name, "set") })?;
        }
        if let Some((name, m)) = member {
            set.get_or_insert_with(|| (name, Vec::new())).1.push(m.to_string());
            return Ok(());
        }
        let line = line_of(&e)?;
        w.line(&line)
    }))?;
    if let Some((name, members)) = set {
        w.line(&Line { members: Some(members), ..Line::of(name, "set") })?;
    }
    let lines = w.sum.lines;
    w.line(&Line { natter_dump_end: Some(true), lines: Some(lines), ..Line::default() })?;
    w.out.flush().with_context(|| format!("{dest}: cannot write the dump"))?;
    Ok(w.sum)
}

struct Writer<'a> {
    out: &'a mut dyn Write,
    dest: &'a str,
    sum: Summary,
    last_key: String,
}

impl Writer<'_> {
    fn line(&mut self, l: &Line) -> Result<()> {
        serde_json::to_writer(&mut *self.out, l)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(self.out.write_all(b"\n")?))
            .with_context(|| format!("{}: cannot write the dump", self.dest))?;
        if let Some(k) = &l.key {
            self.sum.lines += 1;
            // A logical key's lines come together (sled keeps each key's elements adjacent).
            if *k != self.last_key {
                self.sum.keys += 1;
                self.last_key.clone_from(k);
            }
        }
        Ok(())
    }
}

/// The header a dump must open with; anything else is refused.
pub(crate) fn check_header(l: &Line) -> Result<()> {
    match l.natter_dump {
        Some(FORMAT) => Ok(()),
        Some(v) => bail!("a dump of format {v}, written by a newer natter: this one reads format {FORMAT}"),
        None => bail!("not a natter dump (the first line must be {{\"natter_dump\":{FORMAT},...}})"),
    }
}
