//! The Redis store against MemoryStore: seeded random operations on both (publishes on Redis
//! give the ids; MemoryStore gets the same message through `append`, with the id, offline
//! members and counts worked out from its own state, as the hub does), and every observable
//! answer compared after each step. TTLs are on the callers' clock and far longer than the
//! test runs in real time, so Redis's own key expiry never decides (it is tested on its own).

use super::test_server::TestRedis;
use super::tests::template;
use super::{Outcome, Publish, RedisStore};
use crate::store::memory::MemoryStore;
use crate::store::{Append, Bounds, Store};

const ROOMS: [&str; 3] = ["r1", "r2", "r10"];
const UIDS: [&str; 4] = ["alice", "alice2", "bob", "c:{x}"];
const CIDS: [&str; 5] = ["c1", "c2", "c10", "c3", "c4"];

/// xorshift64*, as in `store::model`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

async fn observe_redis(s: &RedisStore, now: u64) -> Vec<String> {
    let mut out = Vec::new();
    for r in ROOMS {
        let mut m = s.members(r).await.unwrap();
        m.sort();
        out.push(format!(
            "{r} members {m:?} last {} online {:?}",
            s.last_id(r).await.unwrap(),
            s.online(r).await.unwrap()
        ));
        let h: Vec<_> = s.history_after(r, 0).await.unwrap().into_iter().map(|m| (m.id, m.prev, m.json)).collect();
        out.push(format!("{r} history {h:?}"));
        for u in UIDS {
            let q: Vec<_> = s.queued(u, r, now).await.unwrap().into_iter().map(|q| (q.id, q.prev, q.json)).collect();
            out.push(format!("{r} {u} queued {q:?}"));
        }
    }
    for u in UIDS {
        let mut d = Vec::new();
        for c in CIDS {
            d.push(s.dedupe_get(u, c, now).await.unwrap());
        }
        let mut rooms = s.user_rooms(u).await.unwrap();
        rooms.sort();
        out.push(format!("{u} rooms {rooms:?} len {} dedupe {d:?}", s.offline_len(u).await.unwrap()));
    }
    out
}

fn observe_memory(s: &MemoryStore, now: u64) -> Vec<String> {
    let mut out = Vec::new();
    for r in ROOMS {
        let mut m = s.members(r).unwrap();
        m.sort();
        out.push(format!("{r} members {m:?} last {} online {:?}", s.last_id(r).unwrap(), s.online(r).unwrap()));
        let h: Vec<_> = s.history_after(r, 0).unwrap().into_iter().map(|m| (m.id, m.prev, m.json)).collect();
        out.push(format!("{r} history {h:?}"));
        for u in UIDS {
            let q: Vec<_> = s.queued(u, r, now).unwrap().into_iter().map(|q| (q.id, q.prev, q.json)).collect();
            out.push(format!("{r} {u} queued {q:?}"));
        }
    }
    for u in UIDS {
        let d: Vec<_> = CIDS.iter().map(|c| s.dedupe_get(u, c, now).unwrap()).collect();
        let mut rooms = s.user_rooms(u).unwrap();
        rooms.sort();
        out.push(format!("{u} rooms {rooms:?} len {} dedupe {d:?}", s.offline_len(u).unwrap()));
    }
    out
}

/// What the hub does with MemoryStore for one message: dedupe check, id, counts, offline
/// members, append.
fn publish_memory(m: &MemoryStore, room: &str, uid: &str, cid: Option<&str>, text: &str, now: u64) -> Outcome {
    if let Some((room, id)) = cid.and_then(|c| m.dedupe_get(uid, c, now).unwrap()) {
        return Outcome::AlreadyPublished { room, id };
    }
    let id = m.last_id(room).unwrap() + 1;
    let online: Vec<String> = m.online(room).unwrap().into_iter().map(|(u, _)| u).collect();
    let members = m.members(room).unwrap();
    let offline: Vec<&str> = members.iter().filter(|u| !online.contains(u)).map(String::as_str).collect();
    let json = template(room, uid, text, cid).fill(id, online.len(), members.len());
    let a = Append { room, id, json: &json, offline: &offline, dedupe: cid.map(|c| (uid, c)), now_ms: now };
    let prev = m.append(&a).unwrap();
    Outcome::Published(super::Published { id, prev, json: json.into() })
}

async fn run(r: &TestRedis, seed: u64, steps: usize) {
    let b = Bounds {
        history_max: 4,
        offline_max: 3,
        // About two and a half messages: the byte cap bites before the entry cap now and then.
        offline_max_bytes: 330,
        offline_ttl_ms: 50_000,
        dedupe_ttl_ms: 30_000,
        dedupe_max: 3,
    };
    let mut cfg = super::RedisConfig::new(&r.url(), "n1", b);
    cfg.prefix = format!("seed{seed}:");
    let s = RedisStore::connect(cfg).await.unwrap();
    let m = MemoryStore::new(b);
    let mut rng = Rng(seed | 1);
    let mut now = 1_000;
    for step in 0..steps {
        let room = rng.pick(&ROOMS);
        let what = match rng.below(100) {
            0..=11 => {
                let u = rng.pick(&UIDS);
                assert_eq!(m.add_member(room, u).unwrap(), s.add_member(room, u).await.unwrap());
                format!("add_member {room} {u}")
            }
            12..=16 => {
                let u = rng.pick(&UIDS);
                assert_eq!(m.remove_member(room, u).unwrap(), s.remove_member(room, u).await.unwrap());
                format!("remove_member {room} {u}")
            }
            17..=26 => {
                let u = rng.pick(&UIDS);
                let conns = rng.below(3) as u32;
                m.set_online(room, u, conns).unwrap();
                s.set_online(room, u, conns).await.unwrap();
                format!("set_online {room} {u} {conns}")
            }
            27..=66 => {
                let u = rng.pick(&UIDS);
                let cid = (rng.below(2) == 0).then(|| rng.pick(&CIDS));
                let text = "x".repeat(rng.below(40) as usize + 1);
                let want = publish_memory(&m, room, u, cid, &text, now);
                let t = template(room, u, &text, cid);
                let got = s.publish(&Publish { room, uid: u, cid, template: &t, now_ms: now }).await.unwrap();
                assert_eq!(got, want, "seed {seed} step {step}");
                format!("publish {room} {u} {cid:?}")
            }
            67..=81 => {
                let u = rng.pick(&UIDS);
                let (qm, qs) = (m.queued(u, room, now).unwrap(), s.queued(u, room, now).await.unwrap());
                assert_eq!(qm.len(), qs.len(), "seed {seed} step {step}");
                let take: Vec<usize> = (0..qm.len()).filter(|_| rng.below(2) == 0).collect();
                let mut nm: Vec<u64> = take.iter().map(|i| qm[*i].n).collect();
                nm.sort();
                m.dequeue(u, &nm).unwrap();
                s.dequeue(u, &take.iter().map(|i| qs[*i].n).collect::<Vec<_>>()).await.unwrap();
                format!("dequeue {u} {room} {take:?}")
            }
            82..=85 => {
                let u = rng.pick(&UIDS);
                let (id, prev) = (m.last_id(room).unwrap(), m.last_id(room).unwrap().saturating_sub(1));
                let json = format!("{{\"late\":{id}}}");
                let a = Append { room, id, json: json.as_bytes(), offline: &[u], dedupe: None, now_ms: now };
                m.enqueue(&a, prev).unwrap();
                let st = crate::store::Stored { id, prev, json: json.clone().into() };
                s.enqueue(room, &[u], &st, now).await.unwrap();
                format!("enqueue {room} {u}")
            }
            _ => {
                now += 1 + rng.below(8_000);
                format!("time {now}")
            }
        };
        assert_eq!(observe_memory(&m, now), observe_redis(&s, now).await, "seed {seed}, step {step}: after {what}");
    }
}

#[tokio::test]
async fn redis_behaves_like_the_memory_store() {
    let r = TestRedis::start();
    for seed in 1..=4u64 {
        run(&r, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 300).await;
    }
}
