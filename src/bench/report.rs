//! What a bench run counts while it runs (lock-free counters, one latency histogram) and how it
//! is reported: a progress line on a terminal, then a table, or JSON with `--json`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Shared by every member's reader; `epoch` is the clock the message marks are written in.
pub struct Stats {
    pub epoch: Instant,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub errors: AtomicU64,
    /// Of `errors`, the server's `rate_limited` answers.
    pub rate_limited: AtomicU64,
    /// Connections the server closed during the run (slow consumer, rate limit, ...).
    pub closed: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            epoch: Instant::now(),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            // 1 us to 60 s, 3 significant digits.
            latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")),
        }
    }
}

impl Stats {
    pub fn now_micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// One delivery of a message stamped `sent_micros`.
    pub fn delivered(&self, sent_micros: u64) {
        self.delivered.fetch_add(1, Relaxed);
        let lat = self.now_micros().saturating_sub(sent_micros).max(1);
        self.latency.lock().expect("not poisoned").saturating_record(lat);
    }

    pub fn reset_latency(&self) {
        self.latency.lock().expect("not poisoned").reset();
    }

    pub fn latency(&self) -> Latency {
        let h = self.latency.lock().expect("not poisoned");
        let ms = |v: u64| v as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// The result of one run; every figure the table shows.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub url: String,
    pub connections: u64,
    pub connect_s: f64,
    pub handshakes_per_s: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub deliveries_per_s: f64,
    pub duplicates: u64,
    pub lost: u64,
    pub errors: u64,
    /// Of `errors`, the server's `rate_limited` answers (its flood limit, not its speed).
    pub rate_limited: u64,
    /// Connections the server closed while the run went on.
    pub closed_by_server: u64,
    pub latency: Latency,
    /// Scenario-specific figures (e.g. acks/s, RSS per idle connection), in table order.
    pub extra: Vec<(String, f64)>,
}

impl Report {
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string_pretty(self).expect("serializable"));
            return;
        }
        let mut rows: Vec<(String, String)> = vec![
            ("scenario".into(), self.scenario.clone()),
            ("url".into(), self.url.clone()),
            ("connections".into(), self.connections.to_string()),
            ("handshakes/s".into(), format!("{:.0} (all in {:.2} s)", self.handshakes_per_s, self.connect_s)),
            ("measured for".into(), format!("{:.2} s", self.duration_s)),
        ];
        if self.sent > 0 {
            rows.extend([
                ("sent".into(), self.sent.to_string()),
                ("expected deliveries".into(), self.expected.to_string()),
                ("actual deliveries".into(), self.delivered.to_string()),
                ("deliveries/s".into(), format!("{:.0}", self.deliveries_per_s)),
            ]);
        }
        if self.latency.samples > 0 {
            let l = &self.latency;
            rows.push((
                "latency ms p50/p90/p99/p99.9/max".into(),
                format!("{:.3} / {:.3} / {:.3} / {:.3} / {:.3}", l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms),
            ));
        }
        rows.extend([
            ("lost".into(), self.lost.to_string()),
            ("duplicated".into(), self.duplicates.to_string()),
            ("errors".into(), self.errors.to_string()),
            ("closed by the server".into(), self.closed_by_server.to_string()),
        ]);
        rows.extend(self.extra.iter().map(|(k, v)| (k.clone(), format!("{v:.1}"))));
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in rows {
            println!("{k:<w$}  {v}");
        }
        if let Some(hint) = self.hint() {
            println!("\n{hint}");
        }
    }

    /// What to change when the run measured the server's limits rather than its speed.
    pub fn hint(&self) -> Option<String> {
        (self.rate_limited > 0).then(|| {
            format!(
                "the server refused {} messages as rate_limited: this measured its flood limit. For natter, \
                 raise it with `natter serve --rate-per-sec N --rate-burst N` (defaults 20 and 50 a connection)",
                self.rate_limited
            )
        })
    }
}

/// The reports of a `--shapes` run: as a JSON array, or each report then a table by shape
/// (publishes/s: deliveries/s over the members a message reaches besides its sender).
pub fn print_matrix(shapes: &[(u32, u32)], reports: &[Report], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(reports).expect("serializable"));
        return;
    }
    for r in reports {
        r.print(false);
        println!();
    }
    println!("| shape | connections | deliveries/s | publishes/s | p50 ms | p99 ms | lost | errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (&(rooms, members), r) in shapes.iter().zip(reports) {
        println!(
            "| {rooms}x{members} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {} | {} |",
            r.connections,
            r.deliveries_per_s,
            r.deliveries_per_s / f64::from(members - 1),
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.lost,
            r.errors
        );
    }
}

/// Wait until `counter` reaches `target`, or has not moved for `quiet`.
pub async fn settle(counter: &AtomicU64, target: u64, quiet: Duration) {
    let (mut last, mut since) = (counter.load(Relaxed), Instant::now());
    while counter.load(Relaxed) < target && since.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = counter.load(Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// A progress line on stderr once a second (only on a terminal), until `stop` is cancelled.
pub fn progress(stats: std::sync::Arc<Stats>, total: Duration, stop: tokio_util::sync::CancellationToken) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let d = stats.delivered.load(Relaxed);
            let done = (start.elapsed().as_secs_f64() / total.as_secs_f64()).min(1.0);
            let bar = (done * 30.0) as usize;
            eprint!(
                "\r[{}{}] {:>5.1} s  delivered {:>10}  {:>9}/s  errors {}   ",
                "#".repeat(bar),
                " ".repeat(30 - bar),
                start.elapsed().as_secs_f64(),
                d,
                d - last,
                stats.errors.load(Relaxed)
            );
            last = d;
        }
        eprintln!();
    });
}
