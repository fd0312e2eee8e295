//! The crash oracle's observers: the witness (logs in first in every run and reads everything:
//! the room order and presence) and the probes (logins with chosen `since` at a quiet moment).

use super::epoch::{count_error, is_pong, next, Got};
use super::*;

/// Logs in to every room before anyone else and records the live order of messages, logins
/// and logouts (a logout that lowers `total` is a `leave`).
pub(crate) async fn witness_run(port: u16, m: Shared, ready: oneshot::Sender<()>, stop: CancellationToken) {
    let Ok(mut c) = Client::try_connect_port(port, WITNESS).await else { return };
    for r in ROOMS.iter().chain([&CHATTY_ROOM]) {
        c.try_send_json(&json!({"event":"login","roomid":r})).await;
    }
    c.try_send_json(&json!({"event":"heartbeat","message":"ping"})).await;
    let mut view = ConnView::new("witness");
    let mut total: std::collections::HashMap<String, u64> = Default::default();
    let mut ready = Some(ready);
    while !stop.is_cancelled() {
        let v = match next(&mut c, ms(200)).await {
            Got::Event(v) => v,
            Got::Nothing => continue,
            Got::Gone => break,
        };
        let room = v["roomid"].as_str().unwrap_or("").to_string();
        let joined = view.room(&room).is_some_and(|r| r.joined);
        let uid = v["uid"].as_str().unwrap_or("").to_string();
        let now = Instant::now();
        let mut g = lock(&m);
        match v["event"].as_str().unwrap_or("") {
            "login" if uid == WITNESS => {
                view.joined(&room);
                total.insert(room, v["total"].as_u64().unwrap_or(0));
            }
            "login" if joined => {
                total.insert(room.clone(), v["total"].as_u64().unwrap_or(0));
                g.witness_event(&room, WEv::Login { uid, at: now });
            }
            "logout" if joined => {
                let t = v["total"].as_u64().unwrap_or(0);
                let left = total.get(&room).is_some_and(|before| t < *before);
                total.insert(room.clone(), t);
                g.witness_event(&room, WEv::Logout { uid, left });
            }
            "message" => {
                if let Some((room, id, Kind::Live)) = view.message(&mut g, &v) {
                    total.insert(room.clone(), v["total"].as_u64().unwrap_or(0));
                    g.witness_event(&room, WEv::Msg(id));
                }
            }
            "error" => {
                drop(g);
                count_error(&m, &v);
            }
            _ if is_pong(&v) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            _ => {}
        }
    }
}

/// At a quiet moment (every cid acked, nothing being published), fresh uids log in to `room`
/// with chosen `since` values around the edge of the history window, and `leave` again.
pub(crate) async fn probe_room(port: u16, m: &Shared, room: &str, rng: &mut Rng) {
    let (acked, unacked, cycle) = {
        let g = lock(m);
        let a: Vec<u64> = g.acked_in(room).into_iter().map(|(id, _)| id).collect();
        (a, g.unacked_in(room), g.cycle)
    };
    if unacked > 0 {
        lock(m).stats.notes.push(format!("cycle {cycle}: {unacked} unacked cids in {room}: no probe"));
        return;
    }
    let (a, n) = (acked.len(), HISTORY_MAX);
    let mut sinces = vec![0u64];
    if a > n {
        let newest_trimmed = acked[a - n - 1];
        let oldest_kept = acked[a - n];
        sinces.push(newest_trimmed); // exactly N stored after: recovered
        sinces.push(newest_trimmed - 1); // N+1 stored after, one trimmed: not recovered
        sinces.push(oldest_kept - 1); // skipped ids below the window are no gap: recovered
        sinces.push(acked[rng.range((a - n) as u64, a as u64 - 1) as usize]);
    } else if a > 0 {
        sinces.push(acked[rng.range(0, a as u64 - 1) as usize]);
    }
    let sinces: BTreeSet<u64> = sinces.into_iter().collect();
    for (i, since) in sinces.into_iter().enumerate() {
        probe(port, m, &format!("v{cycle}-{room}-{i}"), room, since).await;
    }
}

pub(crate) async fn probe(port: u16, m: &Shared, uid: &str, room: &str, since: u64) {
    let Ok(mut c) = Client::try_connect_port(port, uid).await else {
        lock(m).stats.notes.push(format!("probe {uid}: connect failed"));
        return;
    };
    c.try_send_json(&json!({"event":"login","roomid":room,"since":since})).await;
    c.try_send_json(&json!({"event":"heartbeat","message":"ping"})).await;
    let mut view = ConnView::new(format!("probe {uid}"));
    let mut recovered: Option<Option<Value>> = None;
    let mut done = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let v = match next(&mut c, left).await {
            Got::Event(v) => v,
            Got::Nothing => continue,
            Got::Gone => break,
        };
        let mut g = lock(m);
        match v["event"].as_str().unwrap_or("") {
            "login" if v["uid"] == uid => {
                view.joined(room);
                recovered = Some(v.get("recovered").cloned());
            }
            "message" => {
                if let Some((_, id, kind)) = view.message(&mut g, &v) {
                    if kind != Kind::Replay {
                        g.violate(Check::ConnectionOrder, format!("probe {uid} (since {since}): {kind:?} id {id}"));
                    }
                }
            }
            "error" => g.stats.notes.push(format!("probe {uid}: {v}")),
            _ if is_pong(&v) => {
                done = true;
                break;
            }
            _ => {}
        }
    }
    {
        let mut g = lock(m);
        match (done, recovered) {
            (true, Some(rec)) => {
                let replay = view.room(room).map(|r| r.replay.clone()).unwrap_or_default();
                g.check_probe(room, since, &replay, rec.as_ref());
            }
            _ => g.stats.notes.push(format!("probe {uid} of {room}: no complete catch-up")),
        }
    }
    c.try_send_json(&json!({"event":"leave","roomid":room})).await;
    c.close().await;
}
