//! The tokio-tungstenite WebSocket [`Client`] (ws or wss): [`ConnectOpts`], connecting and
//! authenticating, sending events, closing, and [`two_in_room`] (the usual two-member room).
//! The receive side lives in `client/recv.rs`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{token, BoxIo, Server, Ws, RECV_TIMEOUT};

mod recv;

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
    /// Local address to connect from (per-address limit tests; 127.0.0.0/8 on Linux).
    pub source: Option<std::net::IpAddr>,
}

impl ConnectOpts {
    pub fn v1() -> Self {
        ConnectOpts { subprotocol: true, ..Default::default() }
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
    pub async fn try_connect_with(server: &Server, opts: ConnectOpts) -> Result<Client, ConnectError> {
        let io = server.connect_io_opts(opts.recv_buffer, opts.source).await;
        let mut url = server.ws_url(opts.path.as_deref().unwrap_or("/ws"));
        if let Some(t) = &opts.query_token {
            url.push_str(if url.contains('?') { "&token=" } else { "?token=" });
            url.push_str(t);
        }
        let mut req = url.into_client_request().unwrap();
        let h = req.headers_mut();
        if opts.subprotocol {
            h.insert("Sec-WebSocket-Protocol", HeaderValue::from_static("natter.v1"));
        }
        if let Some(t) = &opts.bearer {
            h.insert("Authorization", HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
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
                resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect(),
            )),
            Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
            Ok(Ok((ws, resp))) => {
                let protocol =
                    resp.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap_or("").to_string());
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

    /// Plain `ws://127.0.0.1:port/ws` connection, then an `auth` event for `uid` (fresh 1 h
    /// token, no reply read). Reports failures instead of panicking, and needs no [`Server`]:
    /// for tasks that outlive a server kill (crash tests).
    pub async fn try_connect_port(port: u16, uid: &str) -> Result<Client, String> {
        let addr = format!("127.0.0.1:{port}");
        let tcp = tokio::time::timeout(RECV_TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| "tcp connect timeout".to_string())?
            .map_err(|e| format!("tcp connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let io: BoxIo = Box::new(tcp);
        let req = format!("ws://{addr}/ws").into_client_request().unwrap();
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::client_async_with_config(req, io, None))
            .await
            .map_err(|_| "handshake timeout".to_string())?
            .map_err(|e| format!("handshake: {e}"))?;
        let mut c = Client {
            ws,
            uid: None,
            auto_heartbeat: true,
            hide_heartbeat: true,
            protocol: None,
            pings_seen: 0,
            closed: false,
        };
        if !c.try_send_json(&json!({"event":"auth","message":token(uid, None, 3600)})).await {
            return Err("auth send failed".into());
        }
        c.uid = Some(uid.to_string());
        Ok(c)
    }

    /// Plain connection, then an `auth` event with a fresh 1 h token for `uid` (name claim when
    /// given). A plain client gets no reply to a good auth.
    pub async fn connect_as(server: &Server, uid: &str, name: Option<&str>) -> Client {
        let mut c = Self::connect(server).await;
        c.auth_as(uid, name, 3600).await;
        c
    }

    /// `natter.v1` connection, `auth` event, and the `auth` ok reply is consumed and returned.
    pub async fn connect_v1_as(server: &Server, uid: &str, name: Option<&str>) -> (Client, Value) {
        let mut c = Self::connect_with(server, ConnectOpts::v1()).await;
        c.auth_as(uid, name, 3600).await;
        let ok = c.recv_json().await;
        assert_eq!(ok["event"], "auth", "expected auth ok, got {ok}");
        assert_eq!(ok["message"], "ok", "expected auth ok, got {ok}");
        (c, ok)
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).await.expect("send text");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws.send(Message::binary(data.to_vec())).await.expect("send binary");
    }

    /// Send a raw tungstenite frame (masked by tungstenite as a client).
    pub async fn send_raw_frame(&mut self, frame: tokio_tungstenite::tungstenite::protocol::frame::Frame) {
        self.ws.send(Message::Frame(frame)).await.expect("send frame");
    }

    /// Send without panicking (for floods towards a peer that may close).
    pub async fn try_send_json(&mut self, v: &Value) -> bool {
        self.ws.send(Message::text(v.to_string())).await.is_ok()
    }

    pub async fn auth(&mut self, tok: &str) {
        self.send_json(&json!({"event":"auth","message":tok})).await;
    }

    /// An `auth` event with a fresh token for `uid` (name claim when given, expiring in
    /// `ttl_secs`), then `uid` is recorded as this client's uid. Reads no reply.
    pub async fn auth_as(&mut self, uid: &str, name: Option<&str>, ttl_secs: i64) {
        self.auth(&token(uid, name, ttl_secs)).await;
        self.uid = Some(uid.to_string());
    }

    /// Send `login` and wait for this uid's own `login` broadcast for that room (skipping other
    /// events; panics on `noauth`/`error`).
    pub async fn login(&mut self, room: &str) -> Value {
        self.send_json(&json!({"event":"login","roomid":room})).await;
        self.wait_own_login(room).await
    }

    pub async fn login_since(&mut self, room: &str, since: u64) -> Value {
        self.send_json(&json!({"event":"login","roomid":room,"since":since})).await;
        self.wait_own_login(room).await
    }

    pub async fn wait_own_login(&mut self, room: &str) -> Value {
        loop {
            let v = self.recv_json().await;
            let ev = v["event"].as_str().unwrap_or("");
            if ev == "noauth" || ev == "error" {
                panic!("login to {room:?} answered with {v}");
            }
            if ev == "login" && v["roomid"] == room && self.uid.as_ref().map(|u| v["uid"] == u.as_str()).unwrap_or(true)
            {
                return v;
            }
        }
    }

    /// `{"event":"message","roomid":room,"message":text}`
    pub async fn say(&mut self, room: &str, text: &str) {
        self.send_json(&json!({"event":"message","roomid":room,"message":text})).await;
    }

    pub async fn say_cid(&mut self, room: &str, text: &str, cid: &str) {
        self.send_json(&json!({"event":"message","roomid":room,"message":text,"cid":cid})).await;
    }

    /// Close from our side (1000).
    pub async fn close(&mut self) {
        let _ = self.ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await;
        // drain until the server's close / EOF
        let _ = tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = self.ws.next().await {} })
            .await;
        self.closed = true;
    }

    pub fn into_ws(self) -> Ws {
        self.ws
    }
}

/// u1 and u2 (no name claims) log into `room`, u2 after u1, and u1 has seen u2's `login`.
pub async fn two_in_room(server: &Server, room: &str) -> (Client, Client) {
    two_in_room_as(server, room, [None, None]).await
}

/// [`two_in_room`] with name claims `names` for u1 and u2.
pub async fn two_in_room_as(server: &Server, room: &str, names: [Option<&str>; 2]) -> (Client, Client) {
    let mut a = Client::connect_as(server, "u1", names[0]).await;
    a.login(room).await;
    let mut b = Client::connect_as(server, "u2", names[1]).await;
    b.login(room).await;
    a.recv_event("login").await;
    (a, b)
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
