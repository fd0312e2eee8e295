//! The crash oracle's members: offline for a while, then log in (with `since` for the
//! since-members), read, and go away: close, `leave` (and now and then stay away for several
//! runs), or drop the connection in the middle of the drain.

use super::epoch::{is_pong, next, Got};
use super::*;

pub(crate) struct MemberSpec {
    pub(crate) uid: &'static str,
    pub(crate) rooms: &'static [&'static str],
    pub(crate) by_since: bool,
}

/// One login of a member to one room, on the current connection.
pub(crate) struct RoomLogin {
    pub(crate) room: &'static str,
    pub(crate) since: Option<u64>,
    pub(crate) sent_at: Instant,
    pub(crate) own: Option<(Value, Instant)>,
}

#[derive(Clone, Copy)]
pub(crate) enum Style {
    /// Drop the TCP connection after this many catch-up messages (0: right after the login).
    Abrupt(usize),
    /// Read the catch-up to its end, stay this long, optionally `leave`, then close.
    Normal { stay: Duration, leave: bool },
}

pub(crate) struct MemberConn<'a> {
    pub(crate) spec: &'a MemberSpec,
    pub(crate) c: Client,
    pub(crate) view: ConnView,
    pub(crate) logins: Vec<RoomLogin>,
    pub(crate) alive: bool,
    pub(crate) ponged: Option<Instant>,
    pub(crate) catch_up_seen: usize,
    pub(crate) final_drain: bool,
}

impl MemberConn<'_> {
    /// Handles one event (also while closing).
    fn on_event(&mut self, m: &Shared, v: Value) {
        let uid = self.spec.uid;
        let mut g = lock(m);
        match v["event"].as_str().unwrap_or("") {
            "login" if v["uid"] == uid => {
                let room = v["roomid"].as_str().unwrap_or("");
                self.view.joined(room);
                if let Some(l) = self.logins.iter_mut().find(|l| l.room == room && l.own.is_none()) {
                    l.own = Some((v.clone(), Instant::now()));
                }
            }
            "message" => {
                if let Some((room, id, kind)) = self.view.message(&mut g, &v) {
                    if !self.spec.rooms.contains(&room.as_str()) {
                        return;
                    }
                    if kind == Kind::Replay && !self.spec.by_since {
                        let d = format!("{}: replay after a login without since: {v}", self.view.label);
                        g.violate(Check::ConnectionOrder, d);
                    }
                    let rec = g.member(uid, &room);
                    rec.received.insert(id);
                    if kind == Kind::Live {
                        // Live comes after the whole catch-up: everything up to here is had.
                        rec.since = rec.since.max(id);
                    } else {
                        self.catch_up_seen += 1;
                    }
                }
            }
            "error" => {
                let code = v["code"].as_str().unwrap_or("?").to_string();
                *g.stats.errors.entry(code).or_insert(0) += 1;
            }
            _ if is_pong(&v) && self.ponged.is_none() => {
                self.ponged = Some(Instant::now());
                // The pong follows every login's catch-up: judge and remember them.
                for l in &self.logins {
                    let Some((own, own_at)) = &l.own else { continue };
                    let rv = self.view.room(l.room).expect("joined");
                    if let Some(since) = l.since {
                        let catch_up: BTreeSet<u64> = rv.catch_up.clone();
                        g.check_recovered_flag(uid, l.room, since, own, l.sent_at, *own_at, &catch_up);
                    }
                    let max = rv.max;
                    let rec = g.member(uid, l.room);
                    if self.spec.by_since {
                        rec.since = rec.since.max(max);
                    }
                    if self.final_drain {
                        rec.final_drain_done = true;
                    }
                }
            }
            _ => {}
        }
    }

    async fn step(&mut self, m: &Shared, dur: Duration) {
        match next(&mut self.c, dur).await {
            Got::Event(v) => self.on_event(m, v),
            Got::Nothing => {}
            Got::Gone => self.alive = false,
        }
    }

    /// Sends a close frame and keeps reading (and recording) until the server's close or EOF,
    /// at most 3 s.
    async fn close(&mut self, m: &Shared) {
        let _ = self.c.ws.send(Message::Close(None)).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !self.alive {
                break;
            }
            self.step(m, left).await;
        }
    }
}

/// Sessions until the kill: offline for a while, then connect, log in (with `since` for the
/// since-members), read, and go away: close, `leave` then close, or drop the connection in the
/// middle of the drain. In the final run: one session, read to its end.
pub(crate) async fn member_run(
    port: u16,
    m: Shared,
    spec: MemberSpec,
    mut rng: Rng,
    drain: mpsc::UnboundedSender<(String, Duration)>,
    stop: CancellationToken,
    final_drain: bool,
) {
    let mut offline_since = Instant::now();
    loop {
        if !final_drain {
            let away = {
                let mut g = lock(&m);
                let epoch = g.epoch;
                spec.rooms.iter().any(|r| g.member(spec.uid, r).away_until > epoch)
            };
            if away {
                return; // gone for this server run (see MemberRec::away_until)
            }
            let off = if spec.by_since && rng.chance(0.1) { rng.range(2000, 4000) } else { rng.range(100, 800) };
            tokio::select! {
                _ = tokio::time::sleep(ms(off)) => {}
                _ = stop.cancelled() => return,
            }
        }
        if stop.is_cancelled() {
            return;
        }
        let Ok(c) = Client::try_connect_port(port, spec.uid).await else { return };
        let cycle = lock(&m).cycle;
        let mut s = MemberConn {
            spec: &spec,
            c,
            view: ConnView::new(format!("member {} (cycle {cycle})", spec.uid)),
            logins: vec![],
            alive: true,
            ponged: None,
            catch_up_seen: 0,
            final_drain,
        };
        for room in spec.rooms {
            let since = {
                let mut g = lock(&m);
                let epoch = g.epoch;
                let rec = g.member(spec.uid, room);
                *rec.logins_sent.entry(epoch).or_insert(0) += 1;
                spec.by_since.then_some(rec.since)
            };
            let mut ev = json!({"event":"login","roomid":room});
            if let Some(k) = since {
                ev["since"] = json!(k);
            }
            s.logins.push(RoomLogin { room, since, sent_at: Instant::now(), own: None });
            s.alive &= s.c.try_send_json(&ev).await;
        }
        s.alive &= s.c.try_send_json(&json!({"event":"heartbeat","message":"ping"})).await;
        if !final_drain {
            let _ = drain.send((spec.uid.to_string(), offline_since.elapsed()));
        }
        let style = if final_drain {
            Style::Normal { stay: ms(300), leave: false }
        } else if rng.chance(0.15) {
            Style::Abrupt(rng.range(0, 3) as usize)
        } else {
            Style::Normal { stay: ms(rng.range(200, 1200)), leave: spec.by_since && rng.chance(0.3) }
        };
        let started = Instant::now();
        let lost;
        match style {
            Style::Abrupt(k) => {
                while s.alive && s.catch_up_seen < k && s.ponged.is_none() && started.elapsed() < ms(1500) {
                    s.step(&m, ms(50)).await;
                }
                lost = !s.alive;
                drop(s.c); // TCP closed, no close frame
            }
            Style::Normal { stay, leave } => {
                let limit = if final_drain { Duration::from_secs(30) } else { Duration::from_secs(10) };
                while s.alive && !stop.is_cancelled() {
                    match s.ponged {
                        Some(t) if t.elapsed() >= stay => break,
                        None if started.elapsed() >= limit => break,
                        _ => {}
                    }
                    s.step(&m, ms(50)).await;
                }
                if s.alive && leave {
                    for room in spec.rooms {
                        s.alive &= s.c.try_send_json(&json!({"event":"leave","roomid":room})).await;
                    }
                    if rng.chance(0.7) {
                        // Stay away for several runs: more than N stored while no member.
                        let mut g = lock(&m);
                        let until = g.epoch + rng.range(4, 10) as usize;
                        for room in spec.rooms {
                            g.member(spec.uid, room).away_until = until;
                        }
                    }
                }
                lost = !s.alive;
                if s.alive {
                    s.close(&m).await;
                }
            }
        }
        if std::env::var("NATTER_CRASH_TRACE").is_ok() {
            let how = match style {
                Style::Abrupt(k) => format!("dropped after {k} catch-up messages"),
                Style::Normal { leave: true, .. } => "left and closed".into(),
                Style::Normal { .. } => "closed".into(),
            };
            for l in &s.logins {
                let rv = s.view.room(l.room);
                println!(
                    "  trace cycle {cycle} {} {}: since {:?}, own login {}, catch-up {:?}, max {}, pong {}, {how}{}",
                    spec.uid,
                    l.room,
                    l.since,
                    l.own.is_some(),
                    rv.map(|r| r.catch_up.iter().copied().collect::<Vec<_>>()).unwrap_or_default(),
                    rv.map(|r| r.max).unwrap_or(0),
                    s.ponged.is_some(),
                    if lost { " (the server went first)" } else { "" }
                );
            }
        }
        offline_since = Instant::now();
        if final_drain || stop.is_cancelled() {
            return;
        }
    }
}
