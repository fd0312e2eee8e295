//! Reading a Redis deployment's logical keys back out (`natter dump --redis`), as the
//! engine-neutral elements that `natter restore` loads into any engine. Presence, connection
//! counts, the queues' bookkeeping, the dedupe age index and the node registry are left out:
//! live state, or rebuilt. Keys that go while it reads (TTLs, a room deleted by hand) are left
//! out too.

use std::collections::BTreeSet;

use anyhow::Context as _;

use super::queue::parse_entry;
use super::{split_nums, Keys, RedisConfig};
use crate::store::logical::Element;
use crate::store::Result;

/// Elements read per command (list ranges).
const RANGE: isize = 1_000;

/// Undoes `esc` (`%XX` back to the character).
pub(crate) fn unesc(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a key of the layout is, by its name (prefix stripped).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Named {
    Members(String),
    UserRooms(String),
    Seq(String),
    Offline(String),
    Dedupe(String, String),
}

/// `{x}rest` -> (x unescaped, rest).
fn tag(s: &str) -> Option<(String, &str)> {
    let (inner, rest) = s.strip_prefix('{')?.split_once('}')?;
    Some((unesc(inner)?, rest))
}

fn named(name: &str) -> Option<Named> {
    if let Some(r) = name.strip_prefix("room:") {
        let (room, rest) = tag(r)?;
        return match rest {
            ":members" => Some(Named::Members(room)),
            ":seq" => Some(Named::Seq(room)),
            // History and the last stored id go with their room's seq; presence is live state.
            _ => None,
        };
    }
    if let Some(r) = name.strip_prefix("user:") {
        let (uid, rest) = tag(r)?;
        return (rest == ":rooms").then_some(Named::UserRooms(uid));
    }
    if let Some(r) = name.strip_prefix("offline:") {
        let (uid, rest) = tag(r)?;
        return rest.is_empty().then_some(Named::Offline(uid));
    }
    if let Some(r) = name.strip_prefix("dedupe:") {
        let (uid, rest) = tag(r)?;
        let (cid, rest) = tag(rest.strip_prefix(':')?)?;
        return rest.is_empty().then_some(Named::Dedupe(uid, cid));
    }
    None
}

pub(crate) struct Exporter {
    keys: Keys,
    conn: redis::aio::MultiplexedConnection,
}

impl Exporter {
    pub(crate) async fn connect(cfg: &RedisConfig) -> Result<Exporter> {
        let client = redis::Client::open(cfg.url.as_str()).context("--redis: not a redis:// URL")?;
        let conn = tokio::time::timeout(cfg.timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| anyhow::anyhow!("--redis: no answer within {:?}", cfg.timeout))?
            .context("--redis: cannot connect")?;
        Ok(Exporter { keys: Keys { prefix: cfg.prefix.clone() }, conn })
    }

    /// The layout's keys under the prefix, sorted (so that a dump is the same for the same data).
    async fn names(&mut self) -> Result<BTreeSet<Named>> {
        let mut out = BTreeSet::new();
        let mut cursor = 0u64;
        let pattern = format!("{}*", super::load::glob_escape(&self.keys.prefix));
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut self.conn)
                .await
                .context("--redis: SCAN")?;
            out.extend(found.iter().filter_map(|k| k.strip_prefix(&self.keys.prefix)).filter_map(named));
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    async fn list(&mut self, key: &str) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        loop {
            let at = out.len() as isize;
            let part: Vec<Vec<u8>> =
                redis::cmd("LRANGE").arg(key).arg(at).arg(at + RANGE - 1).query_async(&mut self.conn).await?;
            let done = (part.len() as isize) < RANGE;
            out.extend(part);
            if done {
                return Ok(out);
            }
        }
    }

    /// Hands every element of every logical key to `each`, key by key. Keys written while it
    /// runs may or may not be seen (stop the nodes first for a consistent dump).
    pub(crate) async fn each(&mut self, each: impl FnMut(Element<'_>) -> Result<()>) -> Result<()> {
        let names = self.names().await?;
        self.each_of(names, each).await
    }

    /// The second half of `each`: the elements of the keys a scan named. A key gone since
    /// (a TTL ran out, a room deleted by hand) is left out, not an error.
    async fn each_of(&mut self, names: BTreeSet<Named>, mut each: impl FnMut(Element<'_>) -> Result<()>) -> Result<()> {
        for n in names {
            let at = format!("{n:?}");
            match &n {
                Named::Members(room) => {
                    let key = self.keys.members(room);
                    let mut uids: Vec<String> = redis::cmd("SMEMBERS").arg(&key).query_async(&mut self.conn).await?;
                    uids.sort();
                    for uid in &uids {
                        each(Element::Member { room, uid })?;
                    }
                }
                Named::UserRooms(uid) => {
                    let key = self.keys.user_rooms(uid);
                    let mut rooms: Vec<String> = redis::cmd("SMEMBERS").arg(&key).query_async(&mut self.conn).await?;
                    rooms.sort();
                    for room in &rooms {
                        each(Element::UserRoom { uid, room })?;
                    }
                }
                Named::Seq(room) => {
                    let (seq, last_id): (Option<u64>, Option<u64>) = redis::pipe()
                        .cmd("GET")
                        .arg(self.keys.seq(room))
                        .cmd("GET")
                        .arg(self.keys.last(room))
                        .query_async(&mut self.conn)
                        .await?;
                    // Gone since the scan (deleted by hand): the room is not in the dump.
                    let Some(seq) = seq else { continue };
                    let history = self.list(&self.keys.history(room)).await?;
                    let mut last = None;
                    for (i, raw) in history.iter().enumerate() {
                        let ([id, prev], json) =
                            split_nums::<2>(raw).with_context(|| format!("{at}: a history entry"))?;
                        // Positions 1..=len: the window is kept by count, so only their order matters.
                        let pos = i as u64 + 1;
                        each(Element::History { room, pos, id, prev, json })?;
                        last = Some((id, pos));
                    }
                    // The last stored id has its own key (the history keeps nothing with
                    // `history_max` 0); rooms written before it have it as the newest entry.
                    if let Some(id) = last_id {
                        last = Some((id, last.map_or(0, |(_, pos)| pos)));
                    }
                    let reserved = (last.is_none_or(|(id, _)| seq > id) && seq > 0).then_some(seq);
                    if last.is_some() || reserved.is_some() {
                        each(Element::Seq { room, last, reserved })?;
                    }
                }
                Named::Offline(uid) => {
                    for raw in self.list(&self.keys.offline(uid)).await? {
                        let e = parse_entry(&raw).with_context(|| format!("{at}: a queue entry"))?;
                        let (n, ts, id, prev, room, json) = (e.n, e.ts, e.id, e.prev, e.room, e.json);
                        each(Element::Queue { uid, n, ts, id, prev, room, json })?;
                    }
                }
                Named::Dedupe(uid, cid) => {
                    let v: Option<String> =
                        redis::cmd("GET").arg(self.keys.dedupe(uid, cid)).query_async(&mut self.conn).await?;
                    // Gone since the scan (its TTL ran out): nothing to keep.
                    let Some(v) = v else { continue };
                    let (ts, id, room) = super::parse_dedupe(&v).with_context(|| format!("{at}: a dedupe record"))?;
                    each(Element::Dedupe { uid, cid, ts, id, room })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_read_back_with_their_escapes_undone() {
        let k = Keys { prefix: String::new() };
        assert_eq!(named(&k.members("r1")), Some(Named::Members("r1".into())));
        assert_eq!(named(&k.user_rooms("u:{3}%")), Some(Named::UserRooms("u:{3}%".into())));
        assert_eq!(named(&k.dedupe("a:b", "c}d")), Some(Named::Dedupe("a:b".into(), "c}d".into())));
        assert_eq!(named(&k.offline("u")), Some(Named::Offline("u".into())));
        for skipped in [
            k.offline_meta("u"),
            k.online("r"),
            k.history("r"),
            k.last("r"),
            k.dedupe_ages("u"),
            k.nodes(),
            k.node_rooms("n"),
            k.node_uids("n"),
            k.user_conns("u"),
        ] {
            assert_eq!(named(&skipped), None, "{skipped}");
        }
        assert_eq!(unesc("%2"), None);
    }

    /// Keys that go between the scan and their read (a TTL ran out, a room was deleted by
    /// hand) are left out of the dump: a room whose counter went is absent, history and all.
    #[tokio::test]
    async fn keys_gone_since_the_scan_are_left_out() {
        use crate::store::redis_store::test_server::TestRedis;
        let r = TestRedis::start();
        let cfg = RedisConfig::new(&r.url(), "n1", crate::store::Bounds::default());
        let k = Keys { prefix: cfg.prefix.clone() };
        let mut c = redis::Client::open(r.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let set = |key: String, v: &str| redis::cmd("SET").arg(key).arg(v.to_string()).clone();
        let mut pipe = redis::pipe();
        for room in ["gone", "kept"] {
            pipe.add_command(set(k.seq(room), "1")).ignore();
            pipe.cmd("RPUSH").arg(k.history(room)).arg("1:0:{}").ignore();
            pipe.cmd("SADD").arg(k.members(room)).arg("u").ignore();
        }
        pipe.cmd("RPUSH").arg(k.offline("u")).arg("0:1:1:0:4:kept{}").ignore();
        pipe.add_command(set(k.dedupe("u", "c"), "1:1:kept")).ignore();
        let () = pipe.query_async(&mut c).await.unwrap();
        let mut ex = Exporter::connect(&cfg).await.unwrap();
        let names = ex.names().await.unwrap();
        assert_eq!(names.len(), 6);
        let gone = [k.seq("gone"), k.members("gone"), k.offline("u"), k.dedupe("u", "c")];
        let () = redis::cmd("DEL").arg(&gone).query_async(&mut c).await.unwrap();
        let mut seen = Vec::new();
        ex.each_of(names, |e| {
            seen.push(format!("{e:?}"));
            Ok(())
        })
        .await
        .unwrap();
        assert!(seen.iter().all(|e| !e.contains("\"gone\"")), "{seen:?}");
        assert_eq!(seen.len(), 3, "kept's member, history entry and counter: {seen:?}");
    }
}
