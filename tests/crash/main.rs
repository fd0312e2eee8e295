//! The crash oracle: the scenario and the cycle loop. Drives the real binary under load (senders
//! with cids that resend what is unacked after every reconnect, members that go offline and
//! come back, members that reconnect with `since`), SIGKILLs it at seeded random moments
//! (during startup, under load, during a login drain, during the reconnect wave), restarts it
//! on the same data dir, and checks what PROTOCOL.md promises across crashes. The model and the
//! checks live in common/oracle/.
//!
//! Env: `NATTER_CRASH_CYCLES` (default 30), `NATTER_CRASH_SEED` (decimal or 0x-hex; default
//! fixed), `NATTER_CRASH_REPORT=docs/RELIABILITY.md` (append a result summary there),
//! `NATTER_CRASH_VERBOSE=1` (print each violation when found). Long mode:
//! `NATTER_CRASH_CYCLES=1000 NATTER_CRASH_REPORT=docs/RELIABILITY.md cargo test --release --test crash -- --nocapture`.

#[path = "../common/mod.rs"]
mod common;
mod epoch;
mod members;
mod report;
mod senders;
mod watchers;

use epoch::run_epoch;
use members::{member_run, MemberSpec};
use report::{summary, write_report};
use senders::{sender_run, SenderState};
use watchers::{probe_room, witness_run};

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
