//! `natter keys` and `natter get`: the store's contents by the logical key names of the key
//! scheme, printed the way redis-cli prints them.

mod redis;

pub use redis::{get_redis, keys_redis};

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::store::keys::{self, Key};
use crate::store::sled_store::{parse_entry, SledStore};
use crate::store::{values, Store};

/// Logical keys matching a redis-style glob, sorted.
pub fn keys(store: &SledStore, pattern: &str) -> anyhow::Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for item in store.tree()?.iter() {
        let (k, _) = item?;
        if let Some(key) = Key::decode(&k) {
            let name = key.logical();
            if glob(pattern.as_bytes(), name.as_bytes()) {
                out.insert(name);
            }
        }
    }
    Ok(out.into_iter().collect())
}

pub fn format_keys(names: &[String]) -> String {
    if names.is_empty() {
        return "(empty array)\n".into();
    }
    let mut s = String::new();
    for (i, n) in names.iter().enumerate() {
        let _ = writeln!(s, "{}) {}", i + 1, quote(n));
    }
    s
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn array(items: Vec<String>) -> String {
    if items.is_empty() {
        return "(empty array)\n".into();
    }
    let mut s = String::new();
    for (i, it) in items.iter().enumerate() {
        let _ = writeln!(s, "{}) {}", i + 1, quote(it));
    }
    s
}

fn scan(store: &SledStore, prefix: Vec<u8>) -> anyhow::Result<Vec<(Key, sled::IVec)>> {
    let mut out = Vec::new();
    for item in store.tree()?.scan_prefix(prefix) {
        let (k, v) = item?;
        if let Some(key) = Key::decode(&k) {
            out.push((key, v));
        }
    }
    Ok(out)
}

/// The value of one logical key, redis-cli style; `(nil)` when absent.
pub fn get(store: &SledStore, name: &str) -> anyhow::Result<String> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    if let Some(rest) = name.strip_prefix("room:") {
        let Some((room, what)) = rest.rsplit_once(':') else {
            return Ok("(nil)\n".into());
        };
        return Ok(match what {
            "members" => array(
                scan(store, keys::members_prefix(room))?
                    .into_iter()
                    .filter_map(|(k, _)| match k {
                        Key::Member { uid, .. } => Some(uid),
                        _ => None,
                    })
                    .collect(),
            ),
            "online" => array(
                scan(store, keys::online_prefix(room))?
                    .into_iter()
                    .flat_map(|(k, v)| match k {
                        Key::Online { uid, .. } => {
                            let n = v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0);
                            vec![uid, n.to_string()]
                        }
                        _ => vec![],
                    })
                    .collect(),
            ),
            // The counter: the last id that may have been given (stored, or reserved above it).
            "seq" => match store.tree()?.get(Key::Seq { room: room.into() }.encode())? {
                Some(_) => format!("{}\n", quote(&store.last_id(room)?.to_string())),
                None => "(nil)\n".into(),
            },
            "history" => array(
                scan(store, keys::history_prefix(room))?
                    .into_iter()
                    .filter_map(|(_, v)| values::parse_stored(&v).map(|(_, _, json)| text(json)))
                    .collect(),
            ),
            _ => "(nil)\n".into(),
        });
    }
    if let Some(uid) = name.strip_prefix("offline:") {
        let entries = scan(store, keys::queue_prefix(uid))?;
        return Ok(array(
            entries
                .iter()
                .filter_map(|(_, v)| parse_entry(v))
                .map(|e| format!("{{\"roomid\":{},\"msg\":{}}}", quote(e.room), text(e.rest)))
                .collect(),
        ));
    }
    if let Some(uid) = name.strip_prefix("user:").and_then(|r| r.strip_suffix(":rooms")) {
        return Ok(array(
            scan(store, keys::user_rooms_prefix(uid))?
                .into_iter()
                .filter_map(|(k, _)| match k {
                    Key::UserRoom { room, .. } => Some(room),
                    _ => None,
                })
                .collect(),
        ));
    }
    if let Some((uid, cid)) = name.strip_prefix("dedupe:").and_then(|r| r.rsplit_once(':')) {
        return Ok(match store.tree()?.get(Key::Dedupe { uid: uid.into(), cid: cid.into() }.encode())? {
            Some(v) => values::parse_dedupe(&v)
                .map(|(_, id, _)| format!("{}\n", quote(&id.to_string())))
                .unwrap_or("(nil)\n".into()),
            None => "(nil)\n".into(),
        });
    }
    Ok("(nil)\n".into())
}

/// Redis KEYS glob: `*`, `?`, everything else literal.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_matches_like_redis() {
        assert!(super::glob(b"*", b"room:r1:members"));
        assert!(super::glob(b"room:*:members", b"room:r1:members"));
        assert!(!super::glob(b"offline:*", b"room:r1:members"));
        assert!(super::glob(b"offline:u?", b"offline:u1"));
    }
}
