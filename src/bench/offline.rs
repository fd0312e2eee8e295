//! The `offline` scenario: M members join a room and go away; S senders publish K messages
//! each with a `cid` and count the `ack`s (each acked message is durably in M offline queues);
//! then the M members come back and the drain is timed and checked: every message exactly once.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::find;
use super::member::Handler;
use super::report::{Report, Stats};
use super::{payload, Setup};

#[derive(Debug, Clone)]
pub struct Opts {
    pub senders: u32,
    pub offline: u32,
    pub messages: u32,
    pub size: usize,
}

/// Messages a sender may have unacked: senders get every broadcast too, and a window keeps
/// their queues on the server under its per-connection limit (1,024 by default).
const WINDOW: u64 = 64;

struct Offline {
    stats: Arc<Stats>,
    run: u32,
    senders: u32,
    acks: AtomicU64,
    /// Acks per sender, and a doorbell each for the sending loop.
    acked: Vec<AtomicU64>,
    ack_bell: Vec<tokio::sync::Notify>,
    last_ack_micros: AtomicU64,
    /// Last sequence each returning member saw from each sender: `(member - senders) * senders + sender`.
    last_seq: Vec<AtomicU64>,
}

impl Handler for Offline {
    fn on_text(&self, member: u32, frame: &[u8]) {
        if find(frame, br#""event":"error""#).is_some() {
            self.stats.errors.fetch_add(1, Relaxed);
            if find(frame, br#""code":"rate_limited""#).is_some() {
                self.stats.rate_limited.fetch_add(1, Relaxed);
            }
            return;
        }
        if member < self.senders {
            if find(frame, br#""event":"ack""#).is_some() {
                self.acks.fetch_add(1, Relaxed);
                self.acked[member as usize].fetch_add(1, Relaxed);
                self.ack_bell[member as usize].notify_one();
                self.last_ack_micros.store(self.stats.now_micros(), Relaxed);
            }
            return;
        }
        let Some(mark) = payload::parse(frame, self.run) else { return };
        if mark.sender >= self.senders {
            return;
        }
        let slot = &self.last_seq[((member - self.senders) * self.senders + mark.sender) as usize];
        if !payload::first_time(slot, mark.seq) {
            self.stats.duplicates.fetch_add(1, Relaxed);
            return;
        }
        self.stats.delivered.fetch_add(1, Relaxed);
    }

    fn on_close(&self, _: u32, _: u16) {
        self.stats.closed.fetch_add(1, Relaxed);
    }
}

pub async fn run(setup: &Setup, o: Opts) -> anyhow::Result<Report> {
    anyhow::ensure!(
        o.senders > 0 && o.offline > 0 && o.messages > 0,
        "--senders, --offline and --messages must be > 0"
    );
    let stats = Arc::new(Stats::default());
    let h = Arc::new(Offline {
        stats: stats.clone(),
        run: setup.run,
        senders: o.senders,
        acks: AtomicU64::new(0),
        acked: (0..o.senders).map(|_| AtomicU64::new(0)).collect(),
        ack_bell: (0..o.senders).map(|_| tokio::sync::Notify::new()).collect(),
        last_ack_micros: AtomicU64::new(0),
        last_seq: (0..o.offline * o.senders).map(|_| AtomicU64::new(0)).collect(),
    });
    let (s, m) = (o.senders, o.offline);
    // A room of this run only: queues left by an earlier run stay out of its counts.
    let room_name = format!("offline{}", setup.run);
    let room = |_| room_name.clone();

    // 1. The offline members become members of the room, then leave without `leave`.
    let (away, _) = setup.join_range(s, m, room, h.clone()).await?;
    for member in away {
        member.close().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 2. Senders publish with cids; every ack is a message durably in M queues.
    let (senders, connect) = setup.join_range(0, s, room, h.clone()).await?;
    let t0 = stats.now_micros();
    let senders = Arc::new(senders);
    let loops: Vec<_> = (0..s as usize)
        .map(|i| {
            let (h, senders, stats, messages, size) = (h.clone(), senders.clone(), stats.clone(), o.messages, o.size);
            let run = setup.run;
            tokio::spawn(async move {
                let snd = &senders[i];
                for seq in 1..=messages as u64 {
                    while seq > h.acked[i].load(Relaxed) + WINDOW {
                        // A lost ack must not hang the run: look again every 100 ms.
                        let _ = tokio::time::timeout(Duration::from_millis(100), h.ack_bell[i].notified()).await;
                        if h.acked[i].load(Relaxed) + WINDOW < seq && stats.now_micros() > 60_000_000 + t0 {
                            return;
                        }
                    }
                    let text = payload::text(run, snd.index, seq, stats.now_micros(), size);
                    snd.say(&text, Some(&payload::cid(run, snd.index, seq)));
                    stats.sent.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
    let sent = stats.sent.load(Relaxed);
    super::report::settle(&h.acks, sent, Duration::from_secs(5)).await;
    let acks = h.acks.load(Relaxed);
    let ack_secs = (h.last_ack_micros.load(Relaxed).saturating_sub(t0)) as f64 / 1e6;

    // 3. The members come back: their queues drain into them.
    let expected = sent * m as u64;
    let t1 = Instant::now();
    let (back, _) = setup.join_range(s, m, room, h.clone()).await?;
    super::report::settle(&stats.delivered, expected, Duration::from_secs(5)).await;
    let drain = t1.elapsed();
    // A little longer, so that a late duplicate is still counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = stats.delivered.load(Relaxed);
    drop(back);
    let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Ok(Report {
        scenario: format!("offline: {s} senders x {} messages with cid, {m} members offline, {} B", o.messages, o.size),
        url: setup.url.clone(),
        connections: (s + m) as u64,
        connect_s: connect.as_secs_f64(),
        handshakes_per_s: per_sec(s as u64, connect.as_secs_f64()),
        duration_s: ack_secs + drain.as_secs_f64(),
        sent,
        expected,
        delivered,
        deliveries_per_s: per_sec(delivered, drain.as_secs_f64()),
        duplicates: stats.duplicates.load(Relaxed),
        lost: expected.saturating_sub(delivered),
        errors: stats.errors.load(Relaxed),
        rate_limited: stats.rate_limited.load(Relaxed),
        closed_by_server: stats.closed.load(Relaxed),
        latency: Default::default(),
        extra: vec![
            ("acks".into(), acks as f64),
            ("acked messages/s".into(), per_sec(acks, ack_secs)),
            ("durable offline writes/s (acked x offline members)".into(), per_sec(acks * m as u64, ack_secs)),
            ("drain s (reconnect + login + queue)".into(), drain.as_secs_f64()),
        ],
    })
}
