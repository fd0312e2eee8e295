//! The crash oracle's summary line and the report appended to docs/RELIABILITY.md.

use super::*;

pub(crate) fn summary(m: &Model, cycles: usize, took: Duration, aborted: bool) -> String {
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

pub(crate) fn git(args: &[&str]) -> String {
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
pub(crate) fn today() -> String {
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
pub(crate) fn write_report(path: &str, m: &Model, cycles: usize, took: Duration, aborted: bool) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let mut commit = git(&["rev-parse", "--short", "HEAD"]);
    if !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" (with uncommitted changes)");
    }
    let mut s = String::new();
    if !path.exists() {
        s.push_str(
            "# Reliability\n\nResults of the crash oracle (`tests/crash/`): the real binary under load, SIGKILLed at\nseeded random moments (startup, load, a login drain, the reconnect wave) and restarted on the\nsame data dir, checked against PROTOCOL.md's guarantees after every cycle. Long mode:\n`NATTER_CRASH_CYCLES=1000 NATTER_CRASH_REPORT=docs/RELIABILITY.md cargo test --release --test crash -- --nocapture`.\n",
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
