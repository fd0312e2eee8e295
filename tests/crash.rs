//! The crash oracle: the scenario and the cycle loop. Drives the real binary under load (senders
//! with cids that resend what is unacked after every reconnect, members that go offline and
//! come back, members that reconnect with `since`), SIGKILLs it at seeded random moments
//! (during startup, under load, during a login drain, during the reconnect wave), restarts it
//! on the same data dir, and checks what PROTOCOL.md promises across crashes. The model and the
//! checks live in common/oracle.rs.
//!
//! Env: `NATTER_CRASH_CYCLES` (default 30), `NATTER_CRASH_SEED` (decimal or 0x-hex; default
//! fixed), `NATTER_CRASH_REPORT=docs/RELIABILITY.md` (append a result summary there),
//! `NATTER_CRASH_VERBOSE=1` (print each violation when found). Long mode:
//! `NATTER_CRASH_CYCLES=1000 NATTER_CRASH_REPORT=docs/RELIABILITY.md cargo test --release --test crash -- --nocapture`.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::oracle::{Check, ConnView, Kind, Model, WEv};
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The rooms of the members and the probes: every message in them has a cid.
const ROOMS: [&str; 2] = ["r0", "r1"];
/// A room of plain chat (no cids, so no acks and no flush per message): messages clients have
/// seen are often lost by the kill, and their ids must never be given again.
const CHATTY_ROOM: &str = "r2";
/// uid, rooms it sends to, with cids.
const SENDERS: [(&str, &[&str], bool); 4] =
    [("s0", &["r0"], true), ("s1", &["r1"], true), ("s2", &["r0", "r1"], true), ("s3", &[CHATTY_ROOM], false)];
/// uid, rooms, logs in with `since`.
const MEMBERS: [(&str, &[&str], bool); 4] =
    [("q0", &["r0", "r1"], false), ("q1", &["r0"], false), ("p0", &["r0"], true), ("p1", &["r1"], true)];
/// Logs in first in every run and reads everything: the room order.
const WITNESS: &str = "w";
const HISTORY_MAX: usize = 50;
const DEFAULT_SEED: u64 = 0x6e61_7474_6572_0001;

type Shared = Arc<Mutex<Model>>;

fn lock(m: &Shared) -> MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// SIGKILL 0-80 ms after spawn, mostly before the listening line.
    StartupEarly,
    /// SIGKILL 0-5 ms after the listening line.
    StartupListening,
    /// SIGKILL while the senders reconnect and resend.
    Reconnect,
    /// SIGKILL at a random moment under load.
    Load,
    /// SIGKILL while a member that was offline receives its queue.
    Drain,
}

impl Phase {
    fn pick(rng: &mut Rng) -> Phase {
        match rng.range(0, 99) {
            0..=9 => Phase::StartupEarly,
            10..=19 => Phase::StartupListening,
            20..=26 => Phase::Reconnect,
            27..=54 => Phase::Drain,
            _ => Phase::Load,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Phase::StartupEarly => "startup (0-80 ms after spawn)",
            Phase::StartupListening => "startup (just after listening)",
            Phase::Reconnect => "reconnect and resend",
            Phase::Load => "load",
            Phase::Drain => "login drain",
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => {
            let s = s.trim();
            let v = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            v.unwrap_or_else(|_| panic!("{name}={s:?} is not a number"))
        }
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_oracle() {
    let cycles = env_u64("NATTER_CRASH_CYCLES", 30) as usize;
    let seed = env_u64("NATTER_CRASH_SEED", DEFAULT_SEED);
    println!("crash oracle: seed {seed:#x}, {cycles} cycles (replay: NATTER_CRASH_SEED={seed:#x})");
    let t0 = Instant::now();
    let opts = ServerOpts::new()
        .arg("--history-max", HISTORY_MAX)
        .arg("--heartbeat", 2)
        .arg("--offline-max", 100_000)
        .arg("--outbound-max-messages", 50_000)
        .arg("--outbound-max-bytes", 64 << 20)
        .arg("--rate-per-sec", 200)
        .arg("--rate-burst", 400);
    let mut server = Server::start(opts).await;
    let shared: Shared = Arc::new(Mutex::new(Model::new(seed, HISTORY_MAX)));
    for (uid, rooms, by_since) in MEMBERS {
        for r in rooms {
            lock(&shared).add_member(uid, r, by_since);
        }
    }
    let mut rng = Rng::new(seed);
    let mut senders: Vec<SenderState> = SENDERS
        .iter()
        .map(|(uid, rooms, with_cid)| SenderState {
            uid,
            rooms,
            with_cid: *with_cid,
            next: 1,
            outstanding: vec![],
            acked: vec![],
            rng: Rng::new(0),
        })
        .collect();

    let mut running = true;
    let mut aborted = false;
    for cycle in 1..=cycles {
        lock(&shared).cycle = cycle;
        let mut phase = Phase::pick(&mut rng);
        let cycle_rng = rng.fork();
        let mut crng = cycle_rng.clone();
        let started = Instant::now();
        if running && matches!(phase, Phase::StartupEarly | Phase::StartupListening) {
            phase = Phase::Load; // the first cycle starts from a running server
        }
        if !running {
            match phase {
                Phase::StartupEarly => {
                    let d = crng.range(0, 80);
                    server.spawn_no_wait();
                    tokio::time::sleep(ms(d)).await;
                    server.kill();
                    record_kill(&shared, phase.name());
                    println!("cycle {cycle}/{cycles}: killed {d} ms after spawn");
                    continue;
                }
                _ => {
                    if let Err(e) = server.try_restart().await {
                        let d = format!("restart after a kill failed: {e}\n{}", tail(&server.stderr(), 20));
                        lock(&shared).violate(Check::ServerStart, d);
                        aborted = true;
                        break;
                    }
                    if phase == Phase::StartupListening {
                        let d = crng.range(0, 5);
                        tokio::time::sleep(ms(d)).await;
                        server.kill();
                        record_kill(&shared, phase.name());
                        println!("cycle {cycle}/{cycles}: killed {d} ms after the listening line");
                        continue;
                    }
                }
            }
        }
        let what = run_epoch(&mut server, &shared, phase, crng, &mut senders, false).await;
        running = false;
        let m = lock(&shared);
        println!(
            "cycle {cycle}/{cycles}: {what} after {:.2} s; acked {} so far; {} violations",
            started.elapsed().as_secs_f64(),
            m.acked_count(),
            m.violations.len()
        );
    }
    if !aborted {
        lock(&shared).cycle = cycles + 1;
        match server.try_restart().await {
            Ok(()) => {
                let crng = rng.fork();
                run_epoch(&mut server, &shared, Phase::Load, crng, &mut senders, true).await;
            }
            Err(e) => {
                let d = format!("final restart failed: {e}\n{}", tail(&server.stderr(), 20));
                lock(&shared).violate(Check::ServerStart, d);
                aborted = true;
            }
        }
    }
    server.kill();

    let mut m = lock(&shared);
    let stderr = server.stderr();
    let bad: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR") || l.contains("panicked")).collect();
    if !bad.is_empty() {
        m.stats.notes.push(format!("server stderr has {} ERROR/panic lines, first: {}", bad.len(), bad[0]));
    }
    m.check_recovered_false();
    if !aborted {
        m.check_offline_delivery();
    }
    m.check_dedupe();
    let took = t0.elapsed();
    let summary = summary(&m, cycles, took, aborted);
    println!("{summary}");
    if let Ok(path) = std::env::var("NATTER_CRASH_REPORT") {
        write_report(&path, &m, cycles, took, aborted);
    }
    assert!(
        m.violations.is_empty(),
        "crash oracle: {} violations, first in cycle {} (seed {seed:#x}, {cycles} cycles; replay with NATTER_CRASH_SEED={seed:#x} NATTER_CRASH_CYCLES={cycles}); summary above",
        m.violations.len(),
        m.violations.iter().map(|v| v.cycle).min().unwrap_or(0)
    );
}

fn record_kill(m: &Shared, phase: &'static str) {
    *lock(m).stats.kills.entry(phase).or_insert(0) += 1;
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// One server run: witness, senders' reconnect and resend, probes, load, the kill
// ---------------------------------------------------------------------------------------------

/// Runs clients against the (just started) server until `phase`'s kill; in the final run, no
/// load and no kill: every member logs in once more and reads its catch-up to the end.
/// Returns what the kill was, for the progress line.
async fn run_epoch(
    server: &mut Server,
    m: &Shared,
    phase: Phase,
    mut rng: Rng,
    senders: &mut Vec<SenderState>,
    final_run: bool,
) -> String {
    lock(m).epoch += 1;
    let port = server.port;
    let stop = CancellationToken::new();

    let (wready_tx, wready_rx) = oneshot::channel();
    let witness = tokio::spawn(witness_run(port, m.clone(), wready_tx, stop.clone()));
    if !matches!(tokio::time::timeout(Duration::from_secs(10), wready_rx).await, Ok(Ok(()))) {
        lock(m).stats.notes.push("witness did not log in: this run is judged without it".into());
    }

    let (go_tx, go_rx) = watch::channel(false);
    let mut sender_tasks = vec![];
    let mut settled = vec![];
    for mut st in senders.drain(..) {
        st.rng = rng.fork();
        let (tx, rx) = oneshot::channel();
        settled.push(rx);
        sender_tasks.push(tokio::spawn(sender_run(port, m.clone(), st, tx, go_rx.clone(), stop.clone())));
    }
    let mut member_tasks = vec![];
    let what;
    if phase == Phase::Reconnect {
        let d = rng.range(0, 150);
        tokio::time::sleep(ms(d)).await;
        what = format!("killed {d} ms into the reconnect wave");
    } else {
        let mut all_settled = true;
        for rx in settled {
            all_settled &= matches!(tokio::time::timeout(Duration::from_secs(20), rx).await, Ok(Ok(true)));
        }
        if all_settled {
            for room in ROOMS {
                probe_room(port, m, room, &mut rng).await;
            }
        } else {
            lock(m).stats.notes.push("senders did not settle: no probes in this run".into());
        }
        let (drain_tx, mut drain_rx) = mpsc::unbounded_channel();
        if !final_run {
            let _ = go_tx.send(true);
        }
        for (uid, rooms, by_since) in MEMBERS {
            let spec = MemberSpec { uid, rooms, by_since };
            let r = rng.fork();
            member_tasks.push(tokio::spawn(member_run(
                port,
                m.clone(),
                spec,
                r,
                drain_tx.clone(),
                stop.clone(),
                final_run,
            )));
        }
        drop(drain_tx);
        if final_run {
            for t in member_tasks.drain(..) {
                if tokio::time::timeout(Duration::from_secs(60), t).await.is_err() {
                    lock(m).stats.notes.push("a final member drain did not finish within 60 s".into());
                }
            }
            what = "final run".into();
        } else if phase == Phase::Drain {
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut who = None;
            while let Ok(Some((uid, offline))) = tokio::time::timeout_at(deadline.into(), drain_rx.recv()).await {
                if offline >= ms(250) {
                    who = Some((uid, offline));
                    break;
                }
            }
            let d = rng.range(0, 25);
            tokio::time::sleep(ms(d)).await;
            what = match who {
                Some((uid, off)) => {
                    format!("killed {d} ms after {uid} (offline {:.2} s) sent its login", off.as_secs_f64())
                }
                None => "killed under load (no drain came within 3 s)".into(),
            };
        } else {
            let d = rng.range(300, 2000);
            tokio::time::sleep(ms(d)).await;
            what = format!("killed {d} ms into the load");
        }
    }

    server.kill();
    stop.cancel();
    if !final_run {
        let name = if what.contains("no drain came") { Phase::Load.name() } else { phase.name() };
        record_kill(m, name);
    }
    for t in sender_tasks {
        match tokio::time::timeout(Duration::from_secs(20), t).await {
            Ok(Ok(st)) => senders.push(st),
            other => panic!("a sender task did not end within 20 s of the kill: {:?}", other.err()),
        }
    }
    for t in member_tasks {
        if tokio::time::timeout(Duration::from_secs(20), t).await.is_err() {
            panic!("a member task did not end within 20 s of the kill");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), witness).await;
    what
}

/// What a connection's next frame was, reduced to what the actors act on.
enum Got {
    Event(Value),
    Nothing,
    Gone,
}

async fn next(c: &mut Client, dur: Duration) -> Got {
    match c.recv(dur).await {
        Incoming::Json(v) => Got::Event(v),
        Incoming::Timeout => Got::Nothing,
        Incoming::Close(..) | Incoming::Eof(_) => Got::Gone,
        Incoming::Text(_) | Incoming::Binary(_) => Got::Nothing,
    }
}

fn is_pong(v: &Value) -> bool {
    v["event"] == "heartbeat" && v["message"] == "pong"
}

fn count_error(m: &Shared, v: &Value) {
    let code = v["code"].as_str().unwrap_or("?").to_string();
    *lock(m).stats.errors.entry(code).or_insert(0) += 1;
}

// ---------------------------------------------------------------------------------------------
// Witness
// ---------------------------------------------------------------------------------------------

/// Logs in to every room before anyone else and records the live order of messages, logins
/// and logouts (a logout that lowers `total` is a `leave`).
async fn witness_run(port: u16, m: Shared, ready: oneshot::Sender<()>, stop: CancellationToken) {
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

// ---------------------------------------------------------------------------------------------
// Senders
// ---------------------------------------------------------------------------------------------

/// A sender across runs: what it has not seen acked yet is resent, same cid, after every
/// reconnect (as the chat page does).
struct SenderState {
    uid: &'static str,
    rooms: &'static [&'static str],
    with_cid: bool,
    next: u64,
    /// Sent, not acked, in sending order.
    outstanding: Vec<String>,
    /// Recently acked, for deliberate duplicate sends.
    acked: Vec<String>,
    rng: Rng,
}

struct SenderConn {
    c: Client,
    view: ConnView,
    alive: bool,
    ponged: bool,
}

impl SenderConn {
    async fn step(&mut self, m: &Shared, st: &mut SenderState, dur: Duration) {
        let v = match next(&mut self.c, dur).await {
            Got::Event(v) => v,
            Got::Nothing => return,
            Got::Gone => {
                self.alive = false;
                return;
            }
        };
        match v["event"].as_str().unwrap_or("") {
            "message" => {
                self.view.message(&mut lock(m), &v);
            }
            "ack" => {
                lock(m).acked(&v, Instant::now());
                if let Some(cid) = v["cid"].as_str() {
                    if let Some(i) = st.outstanding.iter().position(|c| c == cid) {
                        st.outstanding.remove(i);
                        st.acked.push(cid.to_string());
                        if st.acked.len() > 50 {
                            st.acked.remove(0);
                        }
                    }
                }
            }
            "login" if v["uid"] == st.uid => self.view.joined(v["roomid"].as_str().unwrap_or("")),
            "error" => count_error(m, &v),
            _ if is_pong(&v) => self.ponged = true,
            _ => {}
        }
    }

    /// Sends `cid` (recorded first, so that its ack can never arrive unknown).
    async fn send(&mut self, m: &Shared, cid: &str, room: &str, text: &str) {
        lock(m).sent(cid, room, text, self.c.uid.as_deref().unwrap_or(""), Instant::now());
        if !self.c.try_send_json(&json!({"event":"message","roomid":room,"message":text,"cid":cid})).await {
            self.alive = false;
        }
    }

    /// Sends a cid sent before, with its room and text.
    async fn resend(&mut self, m: &Shared, cid: &str) {
        let (room, text) = {
            let g = lock(m);
            let r = &g.cids[cid];
            (r.room.clone(), r.text.clone())
        };
        self.send(m, cid, &room, &text).await;
    }
}

async fn sender_run(
    port: u16,
    m: Shared,
    mut st: SenderState,
    settled: oneshot::Sender<bool>,
    go: watch::Receiver<bool>,
    stop: CancellationToken,
) -> SenderState {
    let Ok(c) = Client::try_connect_port(port, st.uid).await else {
        let _ = settled.send(false);
        return st;
    };
    let mut s = SenderConn { c, view: ConnView::new(format!("sender {}", st.uid)), alive: true, ponged: false };
    for r in st.rooms {
        s.alive &= s.c.try_send_json(&json!({"event":"login","roomid":r})).await;
    }
    s.alive &= s.c.try_send_json(&json!({"event":"heartbeat","message":"ping"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.alive && !s.ponged && Instant::now() < deadline {
        s.step(&m, &mut st, ms(100)).await;
    }
    // Resend everything unacked, in order, same cids.
    for cid in st.outstanding.clone() {
        if !s.alive {
            break;
        }
        s.resend(&m, &cid).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.alive && !st.outstanding.is_empty() && Instant::now() < deadline {
        s.step(&m, &mut st, ms(100)).await;
    }
    let _ = settled.send(s.alive && st.outstanding.is_empty());
    while s.alive && !stop.is_cancelled() && !*go.borrow() {
        s.step(&m, &mut st, ms(50)).await;
    }
    let mut next_send = Instant::now() + ms(st.rng.range(10, 150));
    while s.alive && !stop.is_cancelled() {
        let now = Instant::now();
        if now >= next_send && !st.with_cid {
            let text = format!("{} #{} in {CHATTY_ROOM}, no cid", st.uid, st.next);
            st.next += 1;
            lock(&m).stats.plain_sends += 1;
            s.alive &= s.c.try_send_json(&json!({"event":"message","roomid":CHATTY_ROOM,"message":text})).await;
            next_send = Instant::now() + ms(st.rng.range(20, 60));
        } else if now >= next_send {
            let dup = st.rng.chance(0.03) && !st.acked.is_empty();
            if dup {
                // A cid already acked: must get the same ack, and not be published again.
                let cid = st.rng.pick(&st.acked).clone();
                s.resend(&m, &cid).await;
            } else {
                // Now and then a burst, so that more is in flight when the kill comes.
                let n = if st.rng.chance(0.05) { st.rng.range(3, 8) } else { 1 };
                for _ in 0..n {
                    let room = *st.rng.pick(st.rooms);
                    let cid = format!("{}-{}", st.uid, st.next);
                    let text = format!("{} #{} in {room}", st.uid, st.next);
                    st.next += 1;
                    st.outstanding.push(cid.clone());
                    s.send(&m, &cid, room, &text).await;
                }
            }
            next_send = Instant::now() + ms(st.rng.range(40, 150));
        }
        let wait = next_send.saturating_duration_since(Instant::now()).max(ms(1));
        s.step(&m, &mut st, wait).await;
    }
    st
}

// ---------------------------------------------------------------------------------------------
// Members
// ---------------------------------------------------------------------------------------------

struct MemberSpec {
    uid: &'static str,
    rooms: &'static [&'static str],
    by_since: bool,
}

/// One login of a member to one room, on the current connection.
struct RoomLogin {
    room: &'static str,
    since: Option<u64>,
    sent_at: Instant,
    own: Option<(Value, Instant)>,
}

#[derive(Clone, Copy)]
enum Style {
    /// Drop the TCP connection after this many catch-up messages (0: right after the login).
    Abrupt(usize),
    /// Read the catch-up to its end, stay this long, optionally `leave`, then close.
    Normal { stay: Duration, leave: bool },
}

struct MemberConn<'a> {
    spec: &'a MemberSpec,
    c: Client,
    view: ConnView,
    logins: Vec<RoomLogin>,
    alive: bool,
    ponged: Option<Instant>,
    catch_up_seen: usize,
    final_drain: bool,
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
async fn member_run(
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

// ---------------------------------------------------------------------------------------------
// Probes (at a quiet moment)
// ---------------------------------------------------------------------------------------------

/// At a quiet moment (every cid acked, nothing being published), fresh uids log in to `room`
/// with chosen `since` values around the edge of the history window, and `leave` again.
async fn probe_room(port: u16, m: &Shared, room: &str, rng: &mut Rng) {
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

async fn probe(port: u16, m: &Shared, uid: &str, room: &str, since: u64) {
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

// ---------------------------------------------------------------------------------------------
// Summary and report
// ---------------------------------------------------------------------------------------------

fn summary(m: &Model, cycles: usize, took: Duration, aborted: bool) -> String {
    let kills: Vec<String> = m.stats.kills.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let errors: Vec<String> = m.stats.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let mut s = format!(
        "crash oracle summary: seed {:#x}, {cycles} cycles{} in {:.1} s ({} build)\n  sends with cid {}, cids acked {}, plain sends {}, server runs {}\n  kills: {}\n  logins with since: {} (recovered true {}, false {}) + {} probes (true {}, false {}); field missing {}\n  offline deliveries required: {}\n  error events: {}\n",
        m.seed,
        if aborted { " (aborted)" } else { "" },
        took.as_secs_f64(),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        m.stats.sends,
        m.acked_count(),
        m.stats.plain_sends,
        m.epoch,
        kills.join(", "),
        m.stats.since_logins,
        m.stats.load_true,
        m.stats.load_false,
        m.stats.probes,
        m.stats.probe_true,
        m.stats.probe_false,
        m.stats.recovered_missing,
        m.stats.required_offline,
        if errors.is_empty() { "none".to_string() } else { errors.join(", ") },
    );
    let notes: BTreeSet<&String> = m.stats.notes.iter().collect();
    for n in notes.iter().take(10) {
        s.push_str(&format!("  note: {n}\n"));
    }
    s.push_str(&format!("  violations: {}\n", m.violations.len()));
    s.push_str(&m.report(3));
    s
}

fn git(args: &[&str]) -> String {
    std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// UTC date of now, YYYY-MM-DD (civil-from-days).
fn today() -> String {
    let days = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}")
}

/// Appends one run's result to `path` (relative to the crate root), creating it when absent.
fn write_report(path: &str, m: &Model, cycles: usize, took: Duration, aborted: bool) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let mut commit = git(&["rev-parse", "--short", "HEAD"]);
    if !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" (with uncommitted changes)");
    }
    let mut s = String::new();
    if !path.exists() {
        s.push_str(
            "# Reliability\n\nResults of the crash oracle (`tests/crash.rs`): the real binary under load, SIGKILLed at\nseeded random moments (startup, load, a login drain, the reconnect wave) and restarted on the\nsame data dir, checked against PROTOCOL.md's guarantees after every cycle. Long mode:\n`NATTER_CRASH_CYCLES=1000 NATTER_CRASH_REPORT=docs/RELIABILITY.md cargo test --release --test crash -- --nocapture`.\n",
        );
    }
    let kills: Vec<String> = m.stats.kills.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let counts = m.violation_counts();
    let violations = if counts.is_empty() {
        "0".to_string()
    } else {
        let per: Vec<String> = counts.iter().map(|(c, n)| format!("{}: {n}", c.name())).collect();
        format!("{} ({})", m.violations.len(), per.join(", "))
    };
    s.push_str(&format!(
        "\n## {} — commit {commit}, seed {:#x}\n\n| | |\n| --- | --- |\n| cycles | {cycles}{} ({} server runs with clients) |\n| build | {} |\n| duration | {:.0} s |\n| messages sent with cid / cids acked / plain (no cid) | {} / {} / {} |\n| kills by phase | {} |\n| logins with since under load: recovered true / false | {} / {} |\n| probes: recovered true / false | {} / {} |\n| `recovered` field missing | {} |\n| offline deliveries required | {} |\n| violations | {violations} |\n",
        today(),
        m.seed,
        if aborted { " (aborted)" } else { "" },
        m.epoch,
        if cfg!(debug_assertions) { "debug" } else { "release" },
        took.as_secs_f64(),
        m.stats.sends,
        m.acked_count(),
        m.stats.plain_sends,
        kills.join(", "),
        m.stats.load_true,
        m.stats.load_false,
        m.stats.probe_true,
        m.stats.probe_false,
        m.stats.recovered_missing,
        m.stats.required_offline,
    ));
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open the report file");
    f.write_all(s.as_bytes()).expect("write the report");
    println!("result appended to {}", path.display());
}
