//! A throwaway `redis-server` for tests: its own temp dir and free loopback port, killed on
//! drop. Self-contained (std and tempfile only) so that integration tests can copy it to
//! `tests/common/` as it is.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped, between `stop` and `restart`) redis-server.
pub(crate) struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// `$REDIS_SERVER`, else `redis-server` from PATH (Debian's is /usr/bin/redis-server).
fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map(PathBuf::from).unwrap_or_else(|| "redis-server".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// True once the server answers PING with PONG (not while it is still loading its AOF), or
/// asks for a password (`--requirepass`).
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

impl TestRedis {
    /// No persistence at all (`--save '' --appendonly no`).
    pub(crate) fn start() -> Self {
        Self::start_with(&["--appendonly", "no"])
    }

    /// With AOF fsynced at every write, the setting under which an ack means durable.
    pub(crate) fn start_aof() -> Self {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// With these extra `redis-server` arguments. A port taken between the probe and the
    /// server's bind makes the server exit: another port is tried.
    pub(crate) fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut r = TestRedis { child: None, port: 0, dir, extra };
        for _ in 0..10 {
            r.port = free_port();
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start (is it installed? REDIS_SERVER overrides the path)");
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    #[allow(dead_code)] // for tests that read the AOF or the log
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: as a crash; the AOF keeps what was fsynced) and waits for it.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and dir (so with its AOF, when it had one).
    pub(crate) fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server did not restart on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Spawns the server and waits until it answers; false (and nothing left running) when it
    /// exited or stayed silent.
    fn spawn(&mut self) -> bool {
        let dir = self.dir.path();
        // A restart must not read the previous run's "ready" line.
        let _ = std::fs::remove_file(dir.join("redis.log"));
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else { return false };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // Its own log says so (a server of another test on the same port would answer PING).
            let ready =
                std::fs::read_to_string(dir.join("redis.log")).is_ok_and(|l| l.contains("Ready to accept connections"));
            if ready && answers(self.port) {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
