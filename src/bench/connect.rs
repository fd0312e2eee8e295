//! The `connect` scenario: N connections (TLS, upgrade, auth, login), the rate they were set up
//! at, then all held idle; with `--server-pid` (a local server) the server's RSS before and
//! after gives the memory one idle connection costs.

use std::sync::Arc;
use std::time::Duration;

use super::member::Handler;
use super::report::{Report, Stats};
use super::Setup;

#[derive(Debug, Clone)]
pub struct Opts {
    pub connections: u32,
    pub room_size: u32,
    pub hold: Duration,
    pub server_pid: Option<u32>,
}

/// Idle members only answer heartbeats (the member's reader does that); nothing to count.
struct Idle(Arc<Stats>);

impl Handler for Idle {
    fn on_text(&self, _: u32, _: &[u8]) {}
    fn on_close(&self, _: u32, _: u16) {
        self.0.closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Resident set size of a local process, from /proc (Linux).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("--server-pid: cannot read /proc/{pid}/status: {e}"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("--server-pid: no VmRSS in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

pub async fn run(setup: &Setup, o: Opts) -> anyhow::Result<Report> {
    anyhow::ensure!(o.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(o.room_size > 0, "--room-size must be at least 1");
    let before = o.server_pid.map(rss_bytes).transpose()?;
    let stats = Arc::new(Stats::default());
    let (room_size, run) = (o.room_size, setup.run);
    let (members, connect) = setup
        .join_all(o.connections, |i| format!("idle{run}r{}", i / room_size), Arc::new(Idle(stats.clone())))
        .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    super::report::progress(stats.clone(), o.hold, stop.clone());
    tokio::time::sleep(o.hold).await;
    stop.cancel();
    let after = o.server_pid.map(rss_bytes).transpose()?;
    let mut extra = vec![];
    if let (Some(b), Some(a)) = (before, after) {
        let mib = |v: u64| v as f64 / (1024.0 * 1024.0);
        extra.push(("server RSS before, MiB".to_string(), mib(b)));
        extra.push(("server RSS idle, MiB".to_string(), mib(a)));
        extra.push(("bytes per idle connection".to_string(), a.saturating_sub(b) as f64 / o.connections as f64));
    }
    let n = members.len() as u64;
    drop(members);
    Ok(Report {
        scenario: format!(
            "connect: {} connections in rooms of {}, held {:.1} s",
            o.connections,
            o.room_size,
            o.hold.as_secs_f64()
        ),
        url: setup.url.clone(),
        connections: n,
        connect_s: connect.as_secs_f64(),
        handshakes_per_s: n as f64 / connect.as_secs_f64(),
        duration_s: o.hold.as_secs_f64(),
        errors: stats.errors.load(std::sync::atomic::Ordering::Relaxed),
        closed_by_server: stats.closed.load(std::sync::atomic::Ordering::Relaxed),
        extra,
        ..Report::default()
    })
}
