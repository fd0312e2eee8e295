//! A model test of the `Store` contract: seeded random operations applied to the sled backend
//! and to the in-memory one (the model: plain maps and queues), with the sled store dropped
//! and reopened on the same directory now and then, and every observable answer compared
//! after each step. (A kill -9 is not possible inside a test process: `tests/crash/` kills the
//! real server for that.)

use super::memory::MemoryStore;
use super::sled_store::SledStore;
use super::{Append, Bounds, Store};

const ROOMS: [&str; 3] = ["r1", "r2", "r10"];
const UIDS: [&str; 4] = ["alice", "alice2", "bob", "carol"];
/// More cids than the model's dedupe cap, so that the cap drops records.
const CIDS: [&str; 5] = ["c1", "c2", "c10", "c3", "c4"];

/// xorshift64*: small, seeded, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

/// Everything a caller can observe, in a comparable form (queue entry numbers are each
/// backend's own, so they are left out).
fn observe(s: &dyn Store, now: u64) -> Vec<String> {
    let mut out = Vec::new();
    for r in ROOMS {
        let mut m = s.members(r).unwrap();
        m.sort();
        out.push(format!("{r} members {m:?} last {}", s.last_id(r).unwrap()));
        let h: Vec<(u64, u64, String)> = s
            .history_after(r, 0)
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.prev, String::from_utf8_lossy(&m.json).into_owned()))
            .collect();
        out.push(format!("{r} history {h:?}"));
        for u in UIDS {
            let q: Vec<(u64, u64)> = s.queued(u, r, now).unwrap().iter().map(|q| (q.id, q.prev)).collect();
            out.push(format!("{r} {u} queued {q:?}"));
        }
    }
    for u in UIDS {
        let d: Vec<_> = CIDS.iter().map(|c| s.dedupe_get(u, c, now).unwrap()).collect();
        out.push(format!("{u} len {} dedupe {d:?}", s.offline_len(u).unwrap()));
    }
    out
}

fn run(seed: u64, steps: usize) {
    let b = Bounds {
        history_max: 4,
        offline_max: 3,
        offline_ttl_ms: 50,
        dedupe_ttl_ms: 30,
        offline_max_bytes: 30,
        dedupe_max: 3,
    };
    let dir = tempfile::tempdir().unwrap();
    let model = MemoryStore::new(b);
    let mut sled = Some(SledStore::open(dir.path(), b).unwrap());
    let mut rng = Rng(seed | 1);
    let mut next_id = [1u64; ROOMS.len()];
    let mut now = 1_000;
    for step in 0..steps {
        let s = sled.as_ref().unwrap();
        let op = rng.below(100);
        let room_i = rng.below(ROOMS.len() as u64) as usize;
        let room = ROOMS[room_i];
        let what = match op {
            0..=9 => {
                let u = rng.pick(&UIDS);
                assert_eq!(
                    model.add_member(room, u).unwrap(),
                    s.add_member(room, u).unwrap(),
                    "seed {seed} step {step}"
                );
                format!("add_member {room} {u}")
            }
            10..=14 => {
                let u = rng.pick(&UIDS);
                assert_eq!(model.remove_member(room, u).unwrap(), s.remove_member(room, u).unwrap());
                format!("remove_member {room} {u}")
            }
            15..=54 => {
                // Ids jump now and then, as after a crash.
                let id = next_id[room_i] + if rng.below(10) == 0 { 1 + rng.below(70_000) } else { 0 };
                next_id[room_i] = id + 1;
                let offline: Vec<&str> = UIDS.iter().copied().filter(|_| rng.below(2) == 0).collect();
                let cid = (rng.below(2) == 0).then(|| rng.pick(&CIDS));
                let u = rng.pick(&UIDS);
                let json = format!("{{\"id\":{id}}}");
                let a = Append {
                    room,
                    id,
                    json: json.as_bytes(),
                    offline: &offline,
                    dedupe: cid.map(|c| (u, c)),
                    now_ms: now,
                };
                assert_eq!(model.append(&a).unwrap(), s.append(&a).unwrap(), "prev, seed {seed} step {step}");
                format!("append {room} {id} offline {offline:?}")
            }
            55..=59 => {
                let id = next_id[room_i].saturating_sub(1);
                let offline = [rng.pick(&UIDS)];
                let json = format!("{{\"late\":{id}}}");
                let a = Append { room, id, json: json.as_bytes(), offline: &offline, dedupe: None, now_ms: now };
                model.enqueue(&a, id / 2).unwrap();
                s.enqueue(&a, id / 2).unwrap();
                format!("enqueue {room} {id} {offline:?}")
            }
            60..=74 => {
                // Deliver a random part of one uid's queue for one room.
                let u = rng.pick(&UIDS);
                let (qm, qs) = (model.queued(u, room, now).unwrap(), s.queued(u, room, now).unwrap());
                assert_eq!(qm.len(), qs.len(), "seed {seed} step {step}");
                let take: Vec<usize> = (0..qm.len()).filter(|_| rng.below(2) == 0).collect();
                let mut nm: Vec<u64> = take.iter().map(|i| qm[*i].n).collect();
                let mut ns: Vec<u64> = take.iter().map(|i| qs[*i].n).collect();
                nm.sort();
                ns.sort();
                model.dequeue(u, &nm).unwrap();
                s.dequeue(u, &ns).unwrap();
                format!("dequeue {u} {room} {take:?}")
            }
            75..=79 => {
                let upto = next_id[room_i] + rng.below(100);
                model.reserve_ids(room, upto).unwrap();
                s.reserve_ids(room, upto).unwrap();
                format!("reserve {room} {upto}")
            }
            80..=82 => {
                let last = s.last_id(room).unwrap();
                model.release_ids(room, last).unwrap();
                s.release_ids(room, last).unwrap();
                next_id[room_i] = next_id[room_i].max(last + 1);
                format!("release {room} {last}")
            }
            83..=87 => {
                model.expire(now).unwrap();
                s.expire(now).unwrap();
                "expire".to_string()
            }
            88..=91 => {
                drop(sled.take());
                sled = Some(SledStore::open(dir.path(), b).unwrap());
                "reopen".to_string()
            }
            _ => {
                now += 1 + rng.below(20);
                format!("time {now}")
            }
        };
        let s = sled.as_ref().unwrap();
        assert_eq!(observe(&model, now), observe(s, now), "seed {seed}, step {step}: after {what}");
    }
}

#[test]
fn sled_behaves_like_the_model_across_reopens() {
    for seed in 1..=12u64 {
        run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 400);
    }
}
