//! Counters for `/metrics` (Prometheus text) and `/healthz`. Plain atomics: updated on hot
//! paths without locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::admission::Reason;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Close codes counted one by one; anything else is counted as "other".
pub const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013];

pub struct Metrics {
    pub started: std::time::Instant,
    pub connections: Gauge,
    pub rooms: Gauge,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub offline_writes: Counter,
    pub acks: Counter,
    pub auth_failures: Counter,
    pub errors_sent: Counter,
    /// Background tasks (flusher, heartbeat, housekeeping) restarted after ending early.
    pub task_restarts: Counter,
    /// Accepted sockets open (handshaking, HTTP or WebSocket): what `--max-connections` counts.
    pub sockets: Gauge,
    /// Sockets answered 503 by admission control, by `admission::Reason`.
    pub refused: [Counter; Reason::ALL.len()],
    /// Sockets closed unread, far over a limit, by `admission::Reason`.
    pub dropped: [Counter; Reason::ALL.len()],
    /// Failed `accept` calls (out of descriptors, mostly).
    pub accept_errors: Counter,
    closes: [Counter; CLOSE_CODES.len() + 1],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: std::time::Instant::now(),
            connections: Gauge::default(),
            rooms: Gauge::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            offline_writes: Counter::default(),
            acks: Counter::default(),
            auth_failures: Counter::default(),
            errors_sent: Counter::default(),
            task_restarts: Counter::default(),
            sockets: Gauge::default(),
            refused: Default::default(),
            dropped: Default::default(),
            accept_errors: Counter::default(),
            closes: Default::default(),
        }
    }
}

impl Metrics {
    pub fn closed(&self, code: u16) {
        let i = CLOSE_CODES.iter().position(|c| *c == code).unwrap_or(CLOSE_CODES.len());
        self.closes[i].inc();
    }

    pub fn healthz(&self) -> String {
        format!(
            "{{\"status\":\"ok\",\"connections\":{},\"rooms\":{},\"uptime_s\":{}}}",
            self.connections.get(),
            self.rooms.get(),
            self.started.elapsed().as_secs()
        )
    }

    pub fn prometheus(&self) -> String {
        let mut s = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(s, "# HELP natter_{name} {help}\n# TYPE natter_{name} {kind}\nnatter_{name} {v}");
        };
        metric("connections", "gauge", "Open WebSocket connections.", self.connections.get().to_string());
        metric("rooms", "gauge", "Rooms with at least one connection.", self.rooms.get().to_string());
        metric("messages_in_total", "counter", "Messages published.", self.messages_in.get().to_string());
        metric("messages_out_total", "counter", "Frames queued to connections.", self.messages_out.get().to_string());
        metric(
            "offline_writes_total",
            "counter",
            "Offline queue entries written.",
            self.offline_writes.get().to_string(),
        );
        metric("acks_total", "counter", "Acks sent after a durable write.", self.acks.get().to_string());
        metric("auth_failures_total", "counter", "Failed token checks.", self.auth_failures.get().to_string());
        metric("errors_sent_total", "counter", "Error events sent.", self.errors_sent.get().to_string());
        metric(
            "task_restarts_total",
            "counter",
            "Background tasks restarted after a panic.",
            self.task_restarts.get().to_string(),
        );
        metric(
            "tcp_connections",
            "gauge",
            "Accepted TCP connections open (handshaking, HTTP or WebSocket).",
            self.sockets.get().to_string(),
        );
        metric(
            "accept_errors_total",
            "counter",
            "Failed accepts (out of file descriptors, mostly).",
            self.accept_errors.get().to_string(),
        );
        metric("uptime_seconds", "gauge", "Seconds since start.", self.started.elapsed().as_secs().to_string());
        for (name, help, counters) in [
            ("refused", "Connections over an admission limit answered 503, by limit.", &self.refused),
            ("dropped", "Connections far over an admission limit closed unread, by limit.", &self.dropped),
        ] {
            let _ = writeln!(
                s,
                "# HELP natter_connections_{name}_total {help}\n# TYPE natter_connections_{name}_total counter"
            );
            for r in Reason::ALL {
                let _ = writeln!(
                    s,
                    "natter_connections_{name}_total{{reason=\"{}\"}} {}",
                    r.label(),
                    counters[r as usize].get()
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP natter_closes_total Connections closed, by close code.\n# TYPE natter_closes_total counter"
        );
        for (i, c) in self.closes.iter().enumerate() {
            let v = c.get();
            if v > 0 {
                let code = CLOSE_CODES.get(i).map(|c| c.to_string()).unwrap_or_else(|| "other".into());
                let _ = writeln!(s, "natter_closes_total{{code=\"{code}\"}} {v}");
            }
        }
        s
    }
}
