//! Shared helper for natter's black-box integration tests.
//!
//! Everything here talks to the real binary (`CARGO_BIN_EXE_natter`) over sockets:
//! - [`Server`]: spawn / kill / terminate / restart `natter serve` on a temp data dir.
//! - [`token`] and friends: mint HS256 (and deliberately broken) JWTs.
//! - [`Client`]: a tokio-tungstenite client (ws or wss) with JSON helpers.
//! - [`RawWs`]: a hand-rolled WebSocket client writing raw frame bytes, for RFC 6455 violations.
//! - [`http_get`] / [`raw_http`] / [`metrics`]: minimal HTTP/1.1 over TCP or TLS.
//!
//! Set `NATTER_TEST_STDERR=inherit` to see the server's logs on the test's stderr; by default
//! they go to a file in the server's temp dir and are printed when startup fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub const SECRET: &str = "natter-test-secret-0123456789abcdef";
/// The exact text sent for any event before a successful auth (PROTOCOL.md, tutorial's text).
pub const NOAUTH_TEXT: &str = "please auth again, your token is expired!";
/// Default time to wait for an expected event.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

pub fn natter_bin() -> &'static str {
    env!("CARGO_BIN_EXE_natter")
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// HS256 token signed with [`SECRET`]: `sub` = uid, `name` when given, `exp` = now + ttl_secs
/// (ttl may be negative for an expired token).
pub fn token(uid: &str, name: Option<&str>, ttl_secs: i64) -> String {
    let mut claims = json!({ "sub": uid, "exp": now_secs() + ttl_secs });
    if let Some(n) = name {
        claims["name"] = json!(n);
    }
    token_claims(SECRET, &claims)
}

/// HS256 token with arbitrary claims and secret.
pub fn token_claims(secret: &str, claims: &Value) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode jwt")
}

/// Unsigned token with header `{"alg":"none"}` (must be refused).
pub fn alg_none_token(uid: &str) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64url(
        json!({ "sub": uid, "exp": now_secs() + 3600 })
            .to_string()
            .as_bytes(),
    );
    format!("{header}.{claims}.")
}

pub fn b64url(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        if chunk.len() > 1 {
            out.push(T[(n >> 6) as usize & 63] as char);
        }
        if chunk.len() > 2 {
            out.push(T[n as usize & 63] as char);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------------------------

pub struct TlsFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_der: Vec<u8>,
}

/// A CA plus a leaf for `localhost` / 127.0.0.1 signed by it, written as PEM into `dir`.
pub fn generate_tls(dir: &Path) -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "natter test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    TlsFiles {
        cert_path,
        key_path,
        ca_der: ca.der().to_vec(),
    }
}

pub fn tls_client_config(ca_der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca_der.to_vec()))
        .expect("add CA");
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct ServerOpts {
    pub secret: String,
    pub args: Vec<String>,
    pub tls: bool,
    /// Data dir to use instead of a fresh one in the temp dir (restart tests).
    pub data_dir: Option<PathBuf>,
    /// Fixed port (else 0).
    pub port: Option<u16>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            secret: SECRET.to_string(),
            args: vec![],
            tls: false,
            data_dir: None,
            port: None,
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
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
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
        let tmp = tempfile::Builder::new()
            .prefix("natter-test-")
            .tempdir()
            .unwrap();
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let tls = if opts.tls {
            Some(generate_tls(tmp.path()))
        } else {
            None
        };
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
            cmd.arg("--cert")
                .arg(&t.cert_path)
                .arg("--key")
                .arg(&t.key_path);
        }
        cmd.args(&self.opts.args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        if std::env::var("NATTER_TEST_STDERR").as_deref() == Ok("inherit") {
            cmd.stderr(Stdio::inherit());
        } else {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.stderr_path)
                .unwrap();
            cmd.stderr(Stdio::from(f));
        }
        cmd
    }

    /// Spawn and wait for the `natter listening on ...` line. With a fixed port, retries a few
    /// times when the process exits early (port still held by the previous instance).
    async fn spawn(&mut self) {
        let attempts = if self.port == 0 { 1 } else { 20 };
        let mut last_err = String::new();
        for attempt in 0..attempts {
            match self.try_spawn().await {
                Ok(()) => return,
                Err(e) => {
                    last_err = e;
                    if attempt + 1 < attempts {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        panic!(
            "natter did not start: {last_err}\n--- server stderr ---\n{}",
            self.stderr()
        );
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
                return Err(format!(
                    "stdout closed before the listening line (exit: {st:?})"
                ));
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
        let expected_scheme = if self.tls.is_some() {
            "wss://"
        } else {
            "ws://"
        };
        assert!(
            url.starts_with(expected_scheme),
            "listening url {url:?} should start with {expected_scheme}"
        );
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
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
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
                panic!(
                    "natter did not exit within {timeout:?}\n--- server stderr ---\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait for a clean exit (code 0).
    pub async fn stop(&mut self) {
        self.terminate();
        let st = self.wait_exit(Duration::from_secs(15)).await;
        assert!(
            st.success(),
            "natter exited with {st:?} after SIGTERM\n{}",
            self.stderr()
        );
    }

    /// Start again on the same data dir and the same port (kills a still-running child first).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
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
        let sock = TcpSocket::new_v4().unwrap();
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n).unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "natter {args:?} did not exit within 30 s; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;
pub type Ws = WebSocketStream<BoxIo>;

// ---------------------------------------------------------------------------------------------
// WebSocket client (tokio-tungstenite)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
pub struct ConnectOpts {
    /// Default `/ws`.
    pub path: Option<String>,
    /// Offer `Sec-WebSocket-Protocol: natter.v1`.
    pub subprotocol: bool,
    /// `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    /// `?token=<token>`.
    pub query_token: Option<String>,
    pub origin: Option<String>,
    pub headers: Vec<(String, String)>,
    /// SO_RCVBUF for the client socket (slow reader tests).
    pub recv_buffer: Option<u32>,
}

impl ConnectOpts {
    pub fn v1() -> Self {
        ConnectOpts {
            subprotocol: true,
            ..Default::default()
        }
    }
}

/// What arrived on a connection.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    /// A text frame that is not JSON (never expected from natter).
    Text(String),
    Binary(Vec<u8>),
    /// Close frame with code (None = close frame without code) and reason.
    Close(Option<u16>, String),
    /// Stream ended or failed without a close frame.
    Eof(String),
    Timeout,
}

pub struct Client {
    pub ws: Ws,
    pub uid: Option<String>,
    /// Answer `{"event":"heartbeat","message":"ping"}` with a pong and hide it (default true).
    pub auto_heartbeat: bool,
    /// Hide heartbeat pings without answering (used when auto_heartbeat is false).
    pub hide_heartbeat: bool,
    /// `Sec-WebSocket-Protocol` selected by the server.
    pub protocol: Option<String>,
    pub pings_seen: usize,
    closed: bool,
}

pub fn is_heartbeat_ping(v: &Value) -> bool {
    v["event"] == "heartbeat" && v["message"] == "ping"
}

impl Client {
    /// Plain anonymous connection to `/ws`.
    pub async fn connect(server: &Server) -> Client {
        Self::connect_with(server, ConnectOpts::default()).await
    }

    pub async fn connect_with(server: &Server, opts: ConnectOpts) -> Client {
        match Self::try_connect_with(server, opts).await {
            Ok(c) => c,
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    /// Connect, returning the HTTP status on a refused upgrade.
    pub async fn try_connect_with(
        server: &Server,
        opts: ConnectOpts,
    ) -> Result<Client, ConnectError> {
        let io = server.connect_io_with(opts.recv_buffer).await;
        let mut url = server.ws_url(opts.path.as_deref().unwrap_or("/ws"));
        if let Some(t) = &opts.query_token {
            url.push_str(if url.contains('?') {
                "&token="
            } else {
                "?token="
            });
            url.push_str(t);
        }
        let mut req = url.into_client_request().unwrap();
        let h = req.headers_mut();
        if opts.subprotocol {
            h.insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("natter.v1"),
            );
        }
        if let Some(t) = &opts.bearer {
            h.insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        if let Some(o) = &opts.origin {
            h.insert("Origin", HeaderValue::from_str(o).unwrap());
        }
        for (k, v) in &opts.headers {
            h.insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let fut = tokio_tungstenite::client_async_with_config(req, io, None);
        match tokio::time::timeout(RECV_TIMEOUT, fut).await {
            Err(_) => Err(ConnectError::Other("handshake timeout".into())),
            Ok(Err(WsError::Http(resp))) => Err(ConnectError::Status(
                resp.status().as_u16(),
                resp.headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect(),
            )),
            Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
            Ok(Ok((ws, resp))) => {
                let protocol = resp
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .map(|v| v.to_str().unwrap_or("").to_string());
                Ok(Client {
                    ws,
                    uid: None,
                    auto_heartbeat: true,
                    hide_heartbeat: true,
                    protocol,
                    pings_seen: 0,
                    closed: false,
                })
            }
        }
    }

    /// Plain connection, then an `auth` event with a fresh 1 h token for `uid` (name claim when
    /// given). A plain client gets no reply to a good auth.
    pub async fn connect_as(server: &Server, uid: &str, name: Option<&str>) -> Client {
        let mut c = Self::connect(server).await;
        c.auth(&token(uid, name, 3600)).await;
        c.uid = Some(uid.to_string());
        c
    }

    /// `natter.v1` connection, `auth` event, and the `auth` ok reply is consumed and returned.
    pub async fn connect_v1_as(server: &Server, uid: &str, name: Option<&str>) -> (Client, Value) {
        let mut c = Self::connect_with(server, ConnectOpts::v1()).await;
        c.auth(&token(uid, name, 3600)).await;
        c.uid = Some(uid.to_string());
        let ok = c.recv_json().await;
        assert_eq!(ok["event"], "auth", "expected auth ok, got {ok}");
        assert_eq!(ok["message"], "ok", "expected auth ok, got {ok}");
        (c, ok)
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send text");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws
            .send(Message::binary(data.to_vec()))
            .await
            .expect("send binary");
    }

    /// Send a raw tungstenite frame (masked by tungstenite as a client).
    pub async fn send_raw_frame(
        &mut self,
        frame: tokio_tungstenite::tungstenite::protocol::frame::Frame,
    ) {
        self.ws
            .send(Message::Frame(frame))
            .await
            .expect("send frame");
    }

    /// Send without panicking (for floods towards a peer that may close).
    pub async fn try_send_json(&mut self, v: &Value) -> bool {
        self.ws.send(Message::text(v.to_string())).await.is_ok()
    }

    pub async fn auth(&mut self, tok: &str) {
        self.send_json(&json!({"event":"auth","message":tok})).await;
    }

    /// Send `login` and wait for this uid's own `login` broadcast for that room (skipping other
    /// events; panics on `noauth`/`error`).
    pub async fn login(&mut self, room: &str) -> Value {
        self.send_json(&json!({"event":"login","roomid":room}))
            .await;
        self.wait_own_login(room).await
    }

    pub async fn login_since(&mut self, room: &str, since: u64) -> Value {
        self.send_json(&json!({"event":"login","roomid":room,"since":since}))
            .await;
        self.wait_own_login(room).await
    }

    pub async fn wait_own_login(&mut self, room: &str) -> Value {
        loop {
            let v = self.recv_json().await;
            let ev = v["event"].as_str().unwrap_or("");
            if ev == "noauth" || ev == "error" {
                panic!("login to {room:?} answered with {v}");
            }
            if ev == "login"
                && v["roomid"] == room
                && self
                    .uid
                    .as_ref()
                    .map(|u| v["uid"] == u.as_str())
                    .unwrap_or(true)
            {
                return v;
            }
        }
    }

    /// `{"event":"message","roomid":room,"message":text}`
    pub async fn say(&mut self, room: &str, text: &str) {
        self.send_json(&json!({"event":"message","roomid":room,"message":text}))
            .await;
    }

    pub async fn say_cid(&mut self, room: &str, text: &str, cid: &str) {
        self.send_json(&json!({"event":"message","roomid":room,"message":text,"cid":cid}))
            .await;
    }

    /// Next thing on the connection within `dur` (heartbeat pings handled per the flags).
    pub async fn recv(&mut self, dur: Duration) -> Incoming {
        if self.closed {
            return Incoming::Eof("already closed".into());
        }
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Incoming::Timeout,
                Ok(n) => n,
            };
            match next {
                None => {
                    self.closed = true;
                    return Incoming::Eof("stream ended".into());
                }
                Some(Err(e)) => {
                    self.closed = true;
                    return Incoming::Eof(e.to_string());
                }
                Some(Ok(Message::Text(t))) => {
                    let s = t.as_str().to_string();
                    match serde_json::from_str::<Value>(&s) {
                        Ok(v) => {
                            if is_heartbeat_ping(&v) {
                                self.pings_seen += 1;
                                if self.auto_heartbeat {
                                    let _ = self
                                        .ws
                                        .send(Message::text(
                                            json!({"event":"heartbeat","message":"pong"})
                                                .to_string(),
                                        ))
                                        .await;
                                    continue;
                                }
                                if self.hide_heartbeat {
                                    continue;
                                }
                            }
                            return Incoming::Json(v);
                        }
                        Err(_) => return Incoming::Text(s),
                    }
                }
                Some(Ok(Message::Binary(b))) => return Incoming::Binary(b.to_vec()),
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(cf))) => {
                    self.closed = true;
                    return match cf {
                        Some(f) => {
                            Incoming::Close(Some(u16::from(f.code)), f.reason.as_str().to_string())
                        }
                        None => Incoming::Close(None, String::new()),
                    };
                }
            }
        }
    }

    /// Next JSON object (default timeout); panics on anything else.
    pub async fn recv_json(&mut self) -> Value {
        self.recv_json_within(RECV_TIMEOUT).await
    }

    pub async fn recv_json_within(&mut self, dur: Duration) -> Value {
        match self.recv(dur).await {
            Incoming::Json(v) => v,
            other => panic!(
                "uid {:?}: expected a JSON event within {dur:?}, got {other:?}",
                self.uid
            ),
        }
    }

    /// Some(json) if one arrives within `dur`, None on timeout; panics on close.
    pub async fn try_recv_json(&mut self, dur: Duration) -> Option<Value> {
        match self.recv(dur).await {
            Incoming::Json(v) => Some(v),
            Incoming::Timeout => None,
            other => panic!(
                "uid {:?}: expected JSON or nothing, got {other:?}",
                self.uid
            ),
        }
    }

    /// First event named `event` (others are discarded).
    pub async fn recv_event(&mut self, event: &str) -> Value {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Json(v) if v["event"] == event => return v,
                Incoming::Json(_) => continue,
                other => panic!("uid {:?}: waiting for {event:?}, got {other:?}", self.uid),
            }
        }
    }

    /// Next event must be `error` with this code; checks the exact field set.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv_json().await;
        assert_eq!(v["event"], "error", "expected error {code}, got {v}");
        assert_eq!(v["code"], code, "expected error {code}, got {v}");
        assert_keys(&v, &["event", "code", "message"]);
        assert!(
            v["message"].is_string(),
            "error message must be a string: {v}"
        );
        v
    }

    /// Next event must be `noauth`; returns its message.
    pub async fn expect_noauth(&mut self) -> String {
        let v = self.recv_json().await;
        assert_eq!(v["event"], "noauth", "expected noauth, got {v}");
        assert_keys(&v, &["event", "message"]);
        v["message"]
            .as_str()
            .expect("noauth message string")
            .to_string()
    }

    /// Asserts nothing (except hidden heartbeats) arrives within `dur`.
    pub async fn expect_silence(&mut self, dur: Duration) {
        match self.recv(dur).await {
            Incoming::Timeout => {}
            other => panic!(
                "uid {:?}: expected nothing within {dur:?}, got {other:?}",
                self.uid
            ),
        }
    }

    /// Asserts no event named `event` arrives within `dur` (others are discarded).
    pub async fn expect_no_event(&mut self, event: &str, dur: Duration) {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Timeout => return,
                Incoming::Json(v) if v["event"] == event => {
                    panic!("uid {:?}: unexpected {event} event: {v}", self.uid)
                }
                Incoming::Json(_) => continue,
                other => panic!("uid {:?}: expected no {event}, got {other:?}", self.uid),
            }
        }
    }

    /// Skips events until the close; returns the close code (None: no close frame / no code).
    pub async fn recv_close(&mut self, dur: Duration) -> Option<u16> {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Close(code, _) => return code,
                Incoming::Eof(_) => return None,
                Incoming::Timeout => panic!("uid {:?}: no close within {dur:?}", self.uid),
                _ => continue,
            }
        }
    }

    /// Like `recv_close`, returning the events seen before the close too.
    pub async fn recv_until_close(&mut self, dur: Duration) -> (Vec<Value>, Option<u16>) {
        let deadline = Instant::now() + dur;
        let mut seen = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Close(code, _) => return (seen, code),
                Incoming::Eof(_) => return (seen, None),
                Incoming::Timeout => {
                    panic!("uid {:?}: no close within {dur:?}; saw {seen:?}", self.uid)
                }
                Incoming::Json(v) => seen.push(v),
                _ => continue,
            }
        }
    }

    /// Waits (default timeout) for a close and asserts its code.
    pub async fn expect_close(&mut self, code: u16) -> u16 {
        let got = self.recv_close(RECV_TIMEOUT).await;
        assert_eq!(got, Some(code), "uid {:?}: expected close {code}", self.uid);
        code
    }

    /// Close from our side (1000).
    pub async fn close(&mut self) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
        // drain until the server's close / EOF
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        self.closed = true;
    }

    pub fn into_ws(self) -> Ws {
        self.ws
    }
}

#[derive(Debug)]
pub enum ConnectError {
    Status(u16, Vec<(String, String)>),
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Asserts the object has exactly these keys.
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut got: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    got.sort();
    let mut want: Vec<&str> = keys.to_vec();
    want.sort();
    assert_eq!(got, want, "field set of {v}");
}

/// Exact field set of a broadcast `message` (plus `cid`/`offline`/`replay` when present as
/// expected by the caller) and the value checks that hold for every message.
pub fn assert_message(v: &Value, extra: &[&str]) {
    let mut keys = vec![
        "event", "id", "roomid", "uid", "name", "message", "num", "total", "ts",
    ];
    keys.extend_from_slice(extra);
    assert_keys(v, &keys);
    assert_eq!(v["event"], "message");
    assert!(
        v["id"].as_u64().unwrap_or(0) >= 1,
        "id must be a positive integer: {v}"
    );
    assert!(
        v["num"].is_u64() && v["total"].is_u64(),
        "num/total must be integers: {v}"
    );
    assert_ts(v);
    if extra.contains(&"offline") {
        assert_eq!(v["offline"], true, "{v}");
    }
    if extra.contains(&"replay") {
        assert_eq!(v["replay"], true, "{v}");
    }
}

/// `ts` is an integer in milliseconds close to now (within 10 minutes: the machine clock).
pub fn assert_ts(v: &Value) {
    let ts = v["ts"]
        .as_i64()
        .unwrap_or_else(|| panic!("ts must be an integer: {v}"));
    assert!(
        (ts - now_ms()).abs() < 600_000,
        "ts {ts} is not ms since the epoch near now: {v}"
    );
}

pub fn assert_login(v: &Value, room: &str, uid: &str, name: &str, num: u64, total: u64) {
    assert_keys(v, &["event", "roomid", "uid", "name", "num", "total", "ts"]);
    assert_eq!(v["event"], "login", "{v}");
    assert_eq!(v["roomid"], room, "{v}");
    assert_eq!(v["uid"], uid, "{v}");
    assert_eq!(v["name"], name, "{v}");
    assert_eq!(v["num"], num, "num in {v}");
    assert_eq!(v["total"], total, "total in {v}");
    assert_ts(v);
}

pub fn assert_logout(v: &Value, room: &str, uid: &str, name: &str, num: u64, total: u64) {
    assert_keys(v, &["event", "roomid", "uid", "name", "num", "total"]);
    assert_eq!(v["event"], "logout", "{v}");
    assert_eq!(v["roomid"], room, "{v}");
    assert_eq!(v["uid"], uid, "{v}");
    assert_eq!(v["name"], name, "{v}");
    assert_eq!(v["num"], num, "num in {v}");
    assert_eq!(v["total"], total, "total in {v}");
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket client: hand-made upgrade, hand-made frames
// ---------------------------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Encode one frame. `rsv` holds the three RSV bits in its low bits (RSV1 = 0b100).
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(((fin as u8) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn close_code(&self) -> Option<u16> {
        if self.opcode == OP_CLOSE && self.payload.len() >= 2 {
            Some(u16::from_be_bytes([self.payload[0], self.payload[1]]))
        } else {
            None
        }
    }
}

pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub struct RawWs {
    pub io: BoxIo,
    pub buf: Vec<u8>,
    pub response_head: String,
}

/// Build an upgrade request by hand. `extra` lines are appended as-is ("Name: value").
pub fn upgrade_request(server: &Server, path: &str, extra: &[&str]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        server.port
    );
    for l in extra {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

impl RawWs {
    /// Hand-made upgrade on `/ws`; panics unless 101.
    pub async fn connect(server: &Server) -> RawWs {
        Self::connect_with(server, "/ws", &[]).await
    }

    pub async fn connect_with(server: &Server, path: &str, extra: &[&str]) -> RawWs {
        let mut io = server.connect_io().await;
        io.write_all(upgrade_request(server, path, extra).as_bytes())
            .await
            .unwrap();
        let (head, rest) = read_head(&mut io).await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "bad Sec-WebSocket-Accept in {head}"
        );
        RawWs {
            io,
            buf: rest,
            response_head: head,
        }
    }

    /// Connect, `auth` as uid, `login` to room and consume the own login broadcast.
    pub async fn connect_as(server: &Server, uid: &str, room: &str) -> RawWs {
        let mut r = Self::connect(server).await;
        r.send_json(&json!({"event":"auth","message":token(uid, None, 3600)}))
            .await;
        r.send_json(&json!({"event":"login","roomid":room})).await;
        loop {
            let v = r.recv_json().await;
            if v["event"] == "login" && v["uid"] == uid {
                break;
            }
            assert!(
                v["event"] != "noauth" && v["event"] != "error",
                "raw login failed: {v}"
            );
        }
        r
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.io.write_all(b).await.expect("raw write");
        self.io.flush().await.expect("raw flush");
    }

    /// Write without panicking (the server may already have closed).
    pub async fn try_send_bytes(&mut self, b: &[u8]) -> bool {
        self.io.write_all(b).await.is_ok() && self.io.flush().await.is_ok()
    }

    /// Masked frame (a well-behaved client frame, unless the arguments say otherwise).
    pub async fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8]) {
        let f = encode_frame(fin, rsv, opcode, payload, Some(MASK));
        self.send_bytes(&f).await;
    }

    pub async fn send_unmasked(&mut self, opcode: u8, payload: &[u8]) {
        let f = encode_frame(true, 0, opcode, payload, None);
        self.send_bytes(&f).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.send_frame(true, 0, OP_TEXT, s.as_bytes()).await;
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Next frame within `dur`; Ok(None) on EOF/reset; Err on timeout.
    pub async fn recv_frame(&mut self, dur: Duration) -> Result<Option<RawFrame>, ()> {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut tmp = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.io.read(&mut tmp)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Next JSON text message (skipping control frames and heartbeat pings).
    pub async fn recv_json(&mut self) -> Value {
        loop {
            match self.recv_frame(RECV_TIMEOUT).await {
                Err(()) => panic!("raw: no frame within {RECV_TIMEOUT:?}"),
                Ok(None) => panic!("raw: connection ended while waiting for JSON"),
                Ok(Some(f)) => match f.opcode {
                    OP_TEXT => {
                        assert!(f.fin, "natter sent a fragmented text message");
                        let v: Value =
                            serde_json::from_slice(&f.payload).expect("server sent invalid JSON");
                        if is_heartbeat_ping(&v) {
                            continue;
                        }
                        return v;
                    }
                    OP_PING | OP_PONG => continue,
                    OP_CLOSE => panic!(
                        "raw: closed with {:?} while waiting for JSON",
                        f.close_code()
                    ),
                    op => panic!("raw: unexpected opcode {op}"),
                },
            }
        }
    }

    /// Reads until a close frame; returns its code (None: EOF without a close frame).
    pub async fn recv_close(&mut self) -> Option<u16> {
        loop {
            match self.recv_frame(RECV_TIMEOUT).await {
                Err(()) => panic!("raw: no close within {RECV_TIMEOUT:?}"),
                Ok(None) => return None,
                Ok(Some(f)) if f.opcode == OP_CLOSE => return f.close_code(),
                Ok(Some(_)) => continue,
            }
        }
    }

    pub async fn expect_close(&mut self, code: u16) {
        let got = self.recv_close().await;
        assert_eq!(got, Some(code), "raw: expected close {code}");
    }

    /// After a close: the server must drop the TCP connection (EOF or reset) in time.
    pub async fn expect_eof(&mut self, dur: Duration) {
        loop {
            match self.recv_frame(dur).await {
                Err(()) => panic!("raw: TCP not closed within {dur:?}"),
                Ok(None) => return,
                Ok(Some(_)) => continue,
            }
        }
    }
}

fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 7;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut len = (buf[1] & 0x7f) as usize;
    let mut pos = 2;
    if len == 126 {
        if buf.len() < 4 {
            return None;
        }
        len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        pos = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return None;
        }
        len = u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize;
        pos = 10;
    }
    let mut key = None;
    if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        key = Some([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);
        pos += 4;
    }
    if buf.len() < pos + len {
        return None;
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    Some((
        RawFrame {
            fin,
            rsv,
            opcode,
            payload,
        },
        pos + len,
    ))
}

/// Read an HTTP response head (up to the blank line); returns (head, bytes read past it).
pub async fn read_head(io: &mut BoxIo) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).into_owned();
            return (head, buf[p + 4..].to_vec());
        }
        let mut tmp = [0u8; 8192];
        match tokio::time::timeout_at(deadline, io.read(&mut tmp)).await {
            Err(_) => panic!(
                "no HTTP response head within {RECV_TIMEOUT:?}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                panic!(
                    "connection closed before the HTTP response head; got {:?}",
                    String::from_utf8_lossy(&buf)
                )
            }
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Send a raw request and read the response: head always; the body per Content-Length /
/// chunked; for 101 no body; otherwise until EOF.
pub async fn raw_http(server: &Server, request: &str) -> HttpResponse {
    let mut io = server.connect_io().await;
    io.write_all(request.as_bytes()).await.unwrap();
    io.flush().await.unwrap();
    let (head, mut rest) = read_head(&mut io).await;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let body_bytes: Vec<u8> = if status == 101 || status == 204 || status == 304 {
        vec![]
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().unwrap();
        read_until(&mut io, &mut rest, |b| b.len() >= n).await;
        rest.truncate(n);
        rest
    } else if get("transfer-encoding")
        .map(|t| t.eq_ignore_ascii_case("chunked"))
        .unwrap_or(false)
    {
        read_until(&mut io, &mut rest, |b| find(b, b"0\r\n\r\n").is_some()).await;
        dechunk(&rest)
    } else {
        read_until(&mut io, &mut rest, |_| false).await;
        rest
    };
    HttpResponse {
        status,
        head,
        headers,
        body: String::from_utf8_lossy(&body_bytes).into_owned(),
    }
}

async fn read_until(io: &mut BoxIo, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while !done(buf) {
        let mut tmp = [0u8; 8192];
        match tokio::time::timeout_at(deadline, io.read(&mut tmp)).await {
            Err(_) => panic!(
                "HTTP body not complete within {RECV_TIMEOUT:?}: {:?}",
                String::from_utf8_lossy(buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let Some(p) = find(b, b"\r\n") else {
            return out;
        };
        let size_str = String::from_utf8_lossy(&b[..p]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = p + 2;
        if b.len() < start + size {
            out.extend_from_slice(&b[start..]);
            return out;
        }
        out.extend_from_slice(&b[start..start + size]);
        b = &b[(start + size + 2).min(b.len())..];
    }
}

pub async fn http_get(server: &Server, path: &str) -> HttpResponse {
    raw_http(
        server,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            server.port
        ),
    )
    .await
}

pub async fn metrics(server: &Server) -> String {
    let r = http_get(server, "/metrics").await;
    assert_eq!(r.status, 200, "GET /metrics: {r:?}");
    r.body
}

/// Value of the sample `name` (with labels exactly as written, e.g. `natter_closes_total{code="1013"}`).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let l = l.trim();
            let (k, rest) = match l.find('}') {
                Some(p) => (&l[..=p], &l[p + 1..]),
                None => l.split_once(char::is_whitespace)?,
            };
            if k.trim() != name {
                return None;
            }
            rest.split_whitespace().next()?.parse().ok()
        })
}

pub async fn healthz(server: &Server) -> Value {
    let r = http_get(server, "/healthz").await;
    assert_eq!(r.status, 200, "GET /healthz: {r:?}");
    r.json()
}

/// Poll until `cond` holds (every 100 ms) or panic with `what` after `dur`.
pub async fn wait_for<F, Fut>(dur: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + dur;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {dur:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}
