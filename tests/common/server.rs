//! The server process: [`ServerOpts`], [`Server`] (spawn / kill / terminate / restart
//! `natter serve`, also without waiting for it to listen; byte streams to it), [`run_natter`]
//! for one-shot CLI runs and [`run_serve`] for a foreground `natter serve` expected to fail at
//! startup.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use super::{generate_tls, natter_bin, tls_client_config, BoxIo, TlsFiles, RECV_TIMEOUT, SECRET};

#[derive(Clone)]
pub struct ServerOpts {
    pub secret: String,
    pub args: Vec<String>,
    pub tls: bool,
    /// Data dir to use instead of a fresh one in the temp dir (restart tests).
    pub data_dir: Option<PathBuf>,
    /// Fixed port (else 0).
    pub port: Option<u16>,
    /// RLIMIT_NOFILE (soft, hard) the server process starts with.
    pub nofile: Option<(u64, u64)>,
    /// `--public-rooms`: `*` by default, so that the tests written before room permissions
    /// (tokens without a rooms claim) run unchanged; None leaves the flag out (no public rooms).
    pub public_rooms: Option<String>,
    /// Extra environment variables of the server process.
    pub env: Vec<(String, String)>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            secret: SECRET.to_string(),
            args: vec![],
            tls: false,
            data_dir: None,
            port: None,
            nofile: None,
            public_rooms: Some("*".into()),
            env: vec![],
        }
    }
}

impl ServerOpts {
    pub fn new() -> Self {
        Self::default()
    }
    /// `--flag value`
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }
    /// bare `--flag`
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_string());
        self
    }
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// `--public-rooms PATTERNS`, or None for the server's default (no public rooms).
    pub fn public_rooms(mut self, patterns: Option<&str>) -> Self {
        self.public_rooms = patterns.map(str::to_string);
        self
    }
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
    /// One more environment variable for the server process.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    /// Start the server with this open-file limit (soft, hard).
    pub fn nofile(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }
}

pub struct Server {
    child: Option<Child>,
    pub opts: ServerOpts,
    pub tmp: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub stderr_path: PathBuf,
    pub port: u16,
    /// `ws://127.0.0.1:PORT` or `wss://...`, as printed by the server.
    pub url: String,
    pub tls: Option<TlsFiles>,
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// stdout lines after the first one (should stay empty).
    pub extra_stdout: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub async fn start(opts: ServerOpts) -> Server {
        let tmp = tempfile::Builder::new().prefix("natter-test-").tempdir().unwrap();
        let data_dir = opts.data_dir.clone().unwrap_or_else(|| tmp.path().join("data"));
        let tls = if opts.tls { Some(generate_tls(tmp.path())) } else { None };
        let tls_config = tls.as_ref().map(|t| tls_client_config(&t.ca_der));
        let stderr_path = tmp.path().join("stderr.log");
        let mut s = Server {
            child: None,
            port: opts.port.unwrap_or(0),
            opts,
            tmp,
            data_dir,
            stderr_path,
            url: String::new(),
            tls,
            tls_config,
            extra_stdout: Arc::new(Mutex::new(vec![])),
        };
        s.spawn().await;
        s
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(natter_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data")
            .arg(&self.data_dir)
            .arg("--jwt-secret")
            .arg(&self.opts.secret);
        if let Some(t) = &self.tls {
            cmd.arg("--cert").arg(&t.cert_path).arg("--key").arg(&t.key_path);
        }
        if let Some(p) = &self.opts.public_rooms {
            cmd.arg("--public-rooms").arg(p);
        }
        cmd.args(&self.opts.args);
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        if let Some((soft, hard)) = self.opts.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent's.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        if std::env::var("NATTER_TEST_STDERR").as_deref() == Ok("inherit") {
            cmd.stderr(Stdio::inherit());
        } else {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr_path).unwrap();
            cmd.stderr(Stdio::from(f));
        }
        cmd
    }

    /// Spawn and wait for the `natter listening on ...` line. With a fixed port, retries a few
    /// times when the process exits early (port still held by the previous instance).
    async fn spawn(&mut self) {
        if let Err(e) = self.spawn_retrying().await {
            panic!("natter did not start: {e}\n--- server stderr ---\n{}", self.stderr());
        }
    }

    async fn spawn_retrying(&mut self) -> Result<(), String> {
        let attempts = if self.port == 0 { 1 } else { 20 };
        let mut last_err = String::new();
        for attempt in 0..attempts {
            match self.try_spawn().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last_err = e;
                    if attempt + 1 < attempts {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        Err(last_err)
    }

    async fn try_spawn(&mut self) -> Result<(), String> {
        let mut child = self.command().spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<Option<String>>();
        let extra = self.extra_stdout.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(|l| l.ok());
            let _ = tx.send(first);
            for l in lines.map_while(Result::ok) {
                extra.lock().unwrap().push(l);
            }
        });
        let line = match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(Some(l))) => l,
            Ok(_) => {
                let st = child.wait().ok();
                return Err(format!("stdout closed before the listening line (exit: {st:?})"));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no listening line within 20 s".into());
            }
        };
        let prefix = "natter listening on ";
        let url = match line.strip_prefix(prefix) {
            Some(u) => u.trim().to_string(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("unexpected first stdout line: {line:?}"));
            }
        };
        let expected_scheme = if self.tls.is_some() { "wss://" } else { "ws://" };
        assert!(url.starts_with(expected_scheme), "listening url {url:?} should start with {expected_scheme}");
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {url:?}"));
        assert!(port != 0, "bound port is 0 in {url:?}");
        if self.port != 0 {
            assert_eq!(port, self.port, "server did not bind the requested port");
        }
        self.port = port;
        self.url = url;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (the child stays owned; use [`Server::wait_exit`]).
    pub fn terminate(&self) {
        let pid = self.pid();
        let st = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().expect("run kill");
        assert!(st.success(), "kill -TERM {pid} failed");
    }

    /// Wait for the process to exit (polling), panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().expect("server not running");
            if let Some(st) = c.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            if Instant::now() > deadline {
                panic!("natter did not exit within {timeout:?}\n--- server stderr ---\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait for a clean exit (code 0).
    pub async fn stop(&mut self) {
        self.terminate();
        let st = self.wait_exit(Duration::from_secs(15)).await;
        assert!(st.success(), "natter exited with {st:?} after SIGTERM\n{}", self.stderr());
    }

    /// Start again on the same data dir and the same port (kills a still-running child first).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Like [`Server::restart`], but a server that does not come up is reported, not panicked
    /// on (crash tests count it as a failed check).
    pub async fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn_retrying().await
    }

    /// Start again on the same data dir and port without waiting for the listening line, so
    /// that a test can SIGKILL the process during startup ([`Server::kill`]; then
    /// [`Server::restart`] as usual). Needs the port of an earlier start.
    pub fn spawn_no_wait(&mut self) {
        assert!(self.port != 0, "spawn_no_wait needs the port of an earlier start");
        self.kill();
        let mut child = self.command().spawn().expect("spawn natter");
        let stdout = child.stdout.take().unwrap();
        // Keep reading, so that the listening line never meets a closed pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink());
        });
        self.child = Some(child);
    }

    /// Like [`Server::restart`] but with different extra args.
    pub async fn restart_with_args(&mut self, args: Vec<String>) {
        self.kill();
        self.opts.args = args;
        self.spawn().await;
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Open a TCP (or TLS) byte stream to the server.
    pub async fn connect_io(&self) -> BoxIo {
        self.connect_io_with(None).await
    }

    pub async fn connect_io_with(&self, recv_buffer: Option<u32>) -> BoxIo {
        self.connect_io_opts(recv_buffer, None).await
    }

    /// A TCP (or TLS) byte stream from the local address `source` (any of 127.0.0.0/8 works on
    /// Linux without configuration), for tests of per-address limits.
    pub async fn connect_io_from(&self, source: IpAddr) -> BoxIo {
        self.connect_io_opts(None, Some(source)).await
    }

    /// A plain TCP connection from `source`, without TLS even on a TLS server.
    pub async fn tcp_from(&self, source: IpAddr) -> TcpStream {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(source, 0)).unwrap();
        let tcp = tokio::time::timeout(RECV_TIMEOUT, sock.connect(self.addr().parse().unwrap()))
            .await
            .expect("tcp connect timeout")
            .expect("tcp connect");
        tcp.set_nodelay(true).unwrap();
        tcp
    }

    pub async fn connect_io_opts(&self, recv_buffer: Option<u32>, source: Option<IpAddr>) -> BoxIo {
        let sock = TcpSocket::new_v4().unwrap();
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n).unwrap();
        }
        if let Some(ip) = source {
            sock.bind(SocketAddr::new(ip, 0)).unwrap();
        }
        let tcp = tokio::time::timeout(RECV_TIMEOUT, sock.connect(self.addr().parse().unwrap()))
            .await
            .expect("tcp connect timeout")
            .expect("tcp connect");
        tcp.set_nodelay(true).unwrap();
        match &self.tls_config {
            None => Box::new(tcp),
            Some(cfg) => {
                let connector = tokio_rustls::TlsConnector::from(cfg.clone());
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let tls = tokio::time::timeout(RECV_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .expect("tls handshake timeout")
                    .expect("tls handshake");
                Box::new(tls)
            }
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run the binary with the given args (not `serve` in the background): returns
/// (exit status, stdout, stderr); panics after 30 s.
pub fn run_natter(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(natter_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn natter");
    // Read both pipes while it runs: a child writing more than a pipe holds would block forever.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (out.join().unwrap(), err.join().unwrap());
            panic!("natter {args:?} did not exit within 30 s; stdout {out:?} stderr {err:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Run `natter serve --listen 127.0.0.1:0 --data <dir>/data --jwt-secret SECRET <extra...>` in the
/// foreground via [`run_natter`] (for startup errors): returns (exit status, stdout, stderr).
pub fn run_serve(dir: &Path, extra: &[&str]) -> (ExitStatus, String, String) {
    let data = dir.join("data");
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap(), "--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    run_natter(&args)
}
