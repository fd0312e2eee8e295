//! File descriptors: the open-file limit at start, the default `--max-connections` derived
//! from it, and the accept loop's errors when descriptors run out (back-off, rate-limited log).

use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Descriptors kept back from the open-file limit for what is not a connection: the store's
/// files, the listener, the runtime's epoll and event fds, stdio.
pub(crate) const RESERVED_FDS: u64 = 64;
/// Accept errors of exhaustion (EMFILE, ENFILE, ...) pause the accept loop this long, so it
/// never spins while nothing can be accepted.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one log line about failed accepts per this long; the others are counted in it.
pub(crate) const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The default `--max-connections`: the open-file limit minus [`RESERVED_FDS`] and
/// [`REFUSAL_SLOTS`](super::REFUSAL_SLOTS), but at least half of the limit (a tiny limit still
/// serves someone; accept then backs off on EMFILE).
pub fn default_max_connections(nofile: u64) -> usize {
    let budget = nofile.saturating_sub(RESERVED_FDS + super::REFUSAL_SLOTS as u64).max(nofile / 2).max(1);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// Raises the soft open-file limit to the hard one (a chat server's connections are its open
/// files; the usual soft default of 1,024 would be the real connection limit) and logs the
/// result. Returns the soft limit in force.
pub fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!("cannot read the open-file limit ({e}); assuming 1024");
        return 1024;
    }
    let old_soft = lim.rlim_cur;
    let mut new_soft = old_soft;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            new_soft = lim.rlim_max;
        } else {
            let e = std::io::Error::last_os_error();
            tracing::warn!("cannot raise the open-file limit to {} ({e})", lim.rlim_max);
        }
    }
    tracing::info!(old_soft, new_soft, hard = lim.rlim_max, "open-file limit");
    new_soft
}

/// The accept loop's errors: which ones mean "nothing can be accepted now" (back off), and
/// logging them at most once per [`ACCEPT_LOG_EVERY`].
#[derive(Default)]
pub(crate) struct AcceptErrors {
    last_log: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// Counts and (rate-limited) logs a failed accept; true when the loop should back off
    /// ([`ACCEPT_BACKOFF`]): out of descriptors or memory. Other errors (a peer that reset
    /// before its accept) concern one connection only.
    pub(crate) fn failed(&mut self, e: &std::io::Error, metrics: &Metrics) -> bool {
        metrics.accept_errors.inc();
        let exhausted = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
        if !exhausted {
            tracing::debug!("accept failed: {e}");
            return false;
        }
        let now = Instant::now();
        if self.last_log.is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY) {
            let more = match std::mem::take(&mut self.unlogged) {
                0 => String::new(),
                n => format!(" ({n} more since the last report)"),
            };
            tracing::warn!(
                "accept failed: {e}{more}; backing off {ACCEPT_BACKOFF:?} after each; \
                 raise the open-file limit or lower --max-connections"
            );
            self.last_log = Some(now);
        } else {
            self.unlogged += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limit_leaves_headroom() {
        assert_eq!(default_max_connections(1024), 1024 - 128);
        assert_eq!(default_max_connections(1 << 20), (1 << 20) - 128);
        assert_eq!(default_max_connections(200), 100, "at least half");
        assert_eq!(default_max_connections(0), 1);
    }

    #[test]
    fn exhaustion_backs_off_and_logs_rarely() {
        let m = Metrics::default();
        let mut errs = AcceptErrors::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(errs.failed(&emfile, &m));
        for _ in 0..1000 {
            assert!(errs.failed(&emfile, &m));
        }
        assert_eq!(errs.unlogged, 1000, "one line, the rest counted for the next");
        assert!(!errs.failed(&std::io::Error::from_raw_os_error(libc::ECONNABORTED), &m));
        assert_eq!(m.accept_errors.get(), 1002);
    }
}
