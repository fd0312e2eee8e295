//! Keeping the server's background tasks (the flusher, heartbeats, housekeeping) alive: each
//! runs under a supervisor that restarts it if it ends before its stop signal, so one panic
//! cannot silently stop every ack or every heartbeat for the rest of the process's life.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Pause before a restart, so a task that fails at once does not spin.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Runs `start()` in a task of its own until `stop` fires; when it ends before (a panic, or a
/// return it should not make) it is logged, counted and started again.
pub async fn supervise<F, Fut>(name: &'static str, metrics: Arc<Metrics>, stop: CancellationToken, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let ended = tokio::spawn(start()).await;
        if stop.is_cancelled() {
            return;
        }
        match ended {
            Err(e) if e.is_panic() => tracing::error!("{name} task panicked: restarting it"),
            _ => tracing::error!("{name} task stopped unexpectedly: restarting it"),
        }
        metrics.task_restarts.inc();
        tokio::select! {
            _ = tokio::time::sleep(RESTART_AFTER) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_until_stopped() {
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let s = stop.clone();
        let sup = tokio::spawn(supervise("test", metrics.clone(), stop.clone(), move || {
            let (r, s) = (r.clone(), s.clone());
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("injected");
                }
                s.cancelled().await;
            }
        }));
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.cancel();
        sup.await.unwrap();
        assert_eq!(metrics.task_restarts.get(), 2);
    }
}
