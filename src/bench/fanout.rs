//! The `fanout` and `latency` scenarios: R rooms of M members, every member sending. Closed
//! loop: each round every member sends one message and the round ends when every member has
//! every other member's message. Open loop: each member sends `rate` messages a second.
//! A delivery is a message received by a member other than its sender.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::member::{Handler, Member};
use super::report::{Report, Stats};
use super::{payload, Setup};

#[derive(Debug, Clone)]
pub struct Opts {
    pub rooms: u32,
    pub members: u32,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Messages a second per sender; `None`: closed loop.
    pub rate: Option<f64>,
    /// Each message with a `cid` (acked by natter once flushed).
    pub cid: bool,
}

struct RoomSync {
    round: AtomicU64,
    pending: AtomicU64,
    done: Notify,
}

struct Fanout {
    stats: Arc<Stats>,
    run: u32,
    cid: bool,
    acks: AtomicU64,
    m: u32,
    rooms: Vec<RoomSync>,
    /// Last sequence each receiver saw from each sender of its room: `receiver * m + sender % m`.
    last_seq: Vec<AtomicU64>,
}

impl Handler for Fanout {
    fn on_text(&self, member: u32, frame: &[u8]) {
        let Some(mark) = payload::parse(frame, self.run) else {
            if super::client::find(frame, br#""event":"ack""#).is_some() {
                self.acks.fetch_add(1, Relaxed);
            } else if super::client::find(frame, br#""event":"error""#).is_some() {
                self.stats.errors.fetch_add(1, Relaxed); // e.g. rate_limited: the server refused it
                if super::client::find(frame, br#""code":"rate_limited""#).is_some() {
                    self.stats.rate_limited.fetch_add(1, Relaxed);
                }
            }
            return;
        };
        if mark.sender == member {
            return; // our own copy: not a delivery
        }
        let room = (member / self.m) as usize;
        if mark.sender / self.m != member / self.m {
            self.stats.errors.fetch_add(1, Relaxed); // a message from another room
            return;
        }
        let slot = &self.last_seq[(member * self.m + mark.sender % self.m) as usize];
        if !payload::first_time(slot, mark.seq) {
            self.stats.duplicates.fetch_add(1, Relaxed);
            return;
        }
        self.stats.delivered(mark.micros);
        let r = &self.rooms[room];
        if mark.seq == r.round.load(Relaxed) && r.pending.fetch_sub(1, Relaxed) == 1 {
            r.done.notify_one();
        }
    }

    fn on_close(&self, _: u32, _: u16) {
        self.stats.closed.fetch_add(1, Relaxed);
    }
}

pub async fn run(setup: &Setup, o: Opts) -> anyhow::Result<Report> {
    anyhow::ensure!(o.members >= 2, "--members must be at least 2 (a delivery goes to someone else)");
    let stats = Arc::new(Stats::default());
    let handler = Arc::new(Fanout {
        stats: stats.clone(),
        run: setup.run,
        cid: o.cid,
        acks: AtomicU64::new(0),
        m: o.members,
        rooms: (0..o.rooms)
            .map(|_| RoomSync { round: AtomicU64::new(0), pending: AtomicU64::new(0), done: Notify::new() })
            .collect(),
        last_seq: (0..o.rooms * o.members * o.members).map(|_| AtomicU64::new(0)).collect(),
    });
    let n = o.rooms * o.members;
    let run = setup.run;
    let (members, connect) = setup.join_all(n, |i| format!("b{run}r{}", i / o.members), handler.clone()).await?;
    let members = Arc::new(members);
    let stop = tokio_util::sync::CancellationToken::new();
    super::report::progress(stats.clone(), o.warmup + o.duration, stop.clone());

    let senders: Vec<_> = match o.rate {
        None => (0..o.rooms)
            .map(|r| tokio::spawn(closed_loop(handler.clone(), members.clone(), r, o.size, stop.clone())))
            .collect(),
        Some(rate) => {
            vec![tokio::spawn(open_loop(stats.clone(), members.clone(), run, o.cid, rate, o.size, stop.clone()))]
        }
    };
    tokio::time::sleep(o.warmup).await;
    stats.reset_latency();
    let (d0, t0) = (stats.delivered.load(Relaxed), Instant::now());
    tokio::time::sleep(o.duration).await;
    let (d1, elapsed) = (stats.delivered.load(Relaxed), t0.elapsed());
    let latency = stats.latency();
    stop.cancel();
    for s in senders {
        let _ = s.await;
    }
    let sent = stats.sent.load(Relaxed);
    let expected = sent * (o.members as u64 - 1);
    drain(&stats, expected).await;
    let delivered = stats.delivered.load(Relaxed);
    let mode = match o.rate {
        None => "closed loop".to_string(),
        Some(r) => format!("open loop, {r}/s per sender"),
    };
    Ok(Report {
        scenario: format!("fanout: {} room(s) x {} members, {mode}, {} B", o.rooms, o.members, o.size),
        url: setup.url.clone(),
        connections: n as u64,
        connect_s: connect.as_secs_f64(),
        handshakes_per_s: n as f64 / connect.as_secs_f64(),
        duration_s: elapsed.as_secs_f64(),
        sent,
        expected,
        delivered,
        deliveries_per_s: (d1 - d0) as f64 / elapsed.as_secs_f64(),
        duplicates: stats.duplicates.load(Relaxed),
        lost: expected.saturating_sub(delivered),
        errors: stats.errors.load(Relaxed),
        rate_limited: stats.rate_limited.load(Relaxed),
        closed_by_server: stats.closed.load(Relaxed),
        latency,
        extra: if o.cid {
            // Acks trail the deliveries by a group flush: wait for them too (or 2 s of none).
            super::report::settle(&handler.acks, sent, Duration::from_secs(2)).await;
            let acks = handler.acks.load(Relaxed);
            vec![("acks".into(), acks as f64), ("sent, not acked".into(), sent.saturating_sub(acks) as f64)]
        } else {
            vec![]
        },
    })
}

/// After the last send: wait until everything expected has arrived, or nothing has for 2 s;
/// then listen a little longer, so that a late duplicate is still counted.
pub async fn drain(stats: &Stats, expected: u64) {
    super::report::settle(&stats.delivered, expected, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn closed_loop(
    h: Arc<Fanout>,
    members: Arc<Vec<Member>>,
    room: u32,
    size: usize,
    stop: tokio_util::sync::CancellationToken,
) {
    let m = h.m as usize;
    let mine = &members[room as usize * m..(room as usize + 1) * m];
    let sync = &h.rooms[room as usize];
    for round in 1u64.. {
        if stop.is_cancelled() {
            return;
        }
        sync.pending.store((m * (m - 1)) as u64, Relaxed);
        sync.round.store(round, Relaxed);
        let t = h.stats.now_micros();
        for member in mine {
            let cid = h.cid.then(|| payload::cid(h.run, member.index, round));
            member.say(&payload::text(h.run, member.index, round, t, size), cid.as_deref());
        }
        h.stats.sent.fetch_add(m as u64, Relaxed);
        tokio::select! {
            _ = sync.done.notified() => {}
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                // A stalled round: something was lost. Count it and go on.
                h.stats.errors.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Every sender at `rate` a second, paced on a 1 ms tick, in turn.
async fn open_loop(
    stats: Arc<Stats>,
    members: Arc<Vec<Member>>,
    run: u32,
    cid: bool,
    rate: f64,
    size: usize,
    stop: tokio_util::sync::CancellationToken,
) {
    let start = Instant::now();
    let total_rate = rate * members.len() as f64;
    let mut seq = vec![0u64; members.len()];
    let mut sent = 0u64;
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.is_cancelled() {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * total_rate) as u64;
        let t = stats.now_micros();
        while sent < due {
            seq[next] += 1;
            let m = &members[next];
            let c = cid.then(|| payload::cid(run, m.index, seq[next]));
            m.say(&payload::text(run, m.index, seq[next], t, size), c.as_deref());
            sent += 1;
            stats.sent.fetch_add(1, Relaxed);
            next = (next + 1) % members.len();
        }
    }
}
