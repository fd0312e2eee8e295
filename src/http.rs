//! The HTTP side: admission of each request (503 over a connection limit), routes
//! (`/healthz`, `/metrics`, the page, `/dev/token`) and the checks a WebSocket upgrade must pass
//! (well-formed request, version, Origin) before a session starts.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Reason, Ticket, RETRY_AFTER_SECS};
use crate::session::{self, Env, Upgrade};

const SUBPROTOCOL: &str = "natter.v1";

/// What request handling needs.
pub struct App {
    pub env: Arc<Env>,
    /// Allowed origins besides the same host (lower-case `scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// Serving over TLS (for default ports in Origin checks).
    pub tls: bool,
    /// `--dev` with an HS256 secret: what `/dev/token` signs with.
    pub dev_tokens: Option<DevTokens>,
    /// The chat page's files.
    pub page: crate::assets::Page,
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    /// Connection limits; every accepted socket holds a ticket from it.
    pub admission: Arc<Admission>,
    /// `/metrics` on this port: not when `--metrics-listen` gives it an address of its own.
    pub metrics_here: bool,
}

/// `/dev/token`'s secret and the claims the server requires of every token.
pub struct DevTokens {
    pub secret: Vec<u8>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    /// The server's rooms claim name, so that `?rooms=` lands where the verifier looks.
    pub rooms_claim: String,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    respond(status, "text/plain; charset=utf-8", body)
}

/// One request on a connection holding `ticket` (a session started here holds it too).
pub(crate) async fn handle(app: Arc<App>, ticket: Arc<Ticket>, mut req: Request<Incoming>) -> Result<Resp, Infallible> {
    if let Err(reason) = ticket.admit_request(req.headers()) {
        return Ok(unavailable(reason));
    }
    let h = req.headers();
    let wants_ws = h.contains_key(hyper::header::UPGRADE)
        || h.contains_key("sec-websocket-key")
        || h.contains_key("sec-websocket-version");
    let path = req.uri().path();
    if wants_ws && (path == "/" || path == "/ws") {
        return Ok(upgrade(&app, ticket, &mut req));
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        // HEAD gets the same headers; hyper leaves the body out.
        if let Some(asset) = app.page.get(path) {
            return Ok(page_file(asset));
        }
    }
    let metrics = app.env.hub.metrics();
    Ok(match (req.method(), path) {
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "application/json", metrics.healthz()),
        (&Method::GET, "/metrics") if app.metrics_here => {
            respond(StatusCode::OK, "text/plain; version=0.0.4", metrics.prometheus())
        }
        // It hands a token to whoever asks: this machine only, and not through a proxy.
        (&Method::GET, "/dev/token") if app.dev_tokens.is_some() && !from_this_machine(&ticket, req.headers()) => {
            text(StatusCode::FORBIDDEN, "/dev/token answers this machine only\n")
        }
        (&Method::GET, "/dev/token") if app.dev_tokens.is_some() => dev_token(&app, req.uri().query()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// The request came from a loopback address, directly (a proxy on this machine forwards others).
fn from_this_machine(ticket: &Ticket, headers: &HeaderMap) -> bool {
    let loopback = match ticket.peer() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    };
    loopback && !headers.contains_key("x-forwarded-for") && !headers.contains_key("forwarded")
}

/// Over a connection limit: 503, come back in a few seconds, and this connection closes.
fn unavailable(reason: Reason) -> Resp {
    let body = match reason {
        Reason::MaxConnections => "server full: too many connections, retry later\n",
        Reason::PerIp => "too many connections from your address, retry later\n",
    };
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, body);
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

fn page_file(asset: &crate::assets::Asset) -> Resp {
    let mut r = respond(StatusCode::OK, asset.content_type, asset.body.clone());
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(crate::assets::CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // `#token=` never leaves the browser, but a pasted link should not leak where it came from.
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // Small files; revalidating each time means an upgraded server is seen at once.
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

/// `GET /dev/token?uid=U&name=N&rooms=P` (only with `--dev`): a 24 h HS256 token; `rooms`
/// (comma-separated patterns) adds the rooms claim.
fn dev_token(app: &App, query: Option<&str>) -> Resp {
    let uid = query_param(query, "uid").unwrap_or_default();
    let name = query_param(query, "name").filter(|n| !n.is_empty());
    if uid.is_empty() || uid.len() > crate::auth::MAX_UID_BYTES || uid.chars().any(crate::auth::hidden_char) {
        return text(StatusCode::BAD_REQUEST, "uid must be 1 to 256 bytes, without control or format characters\n");
    }
    if name.as_deref().is_some_and(|n| !crate::auth::valid_name(n)) {
        return text(
            StatusCode::BAD_REQUEST,
            "name must be 1 to 64 characters, without control or format characters\n",
        );
    }
    let rooms = match query_param(query, "rooms").map(|r| crate::access::RoomPatterns::parse_list(&r)) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(_)) => {
            return text(StatusCode::BAD_REQUEST, "rooms must be comma-separated room ids, prefix*, or *\n")
        }
    };
    let dev = app.dev_tokens.as_ref().expect("checked by the route");
    let claims = crate::auth::MintClaims {
        name: name.as_deref(),
        rooms: rooms.as_ref(),
        rooms_claim: Some(&dev.rooms_claim),
        audience: dev.audience.as_deref(),
        issuer: dev.issuer.as_deref(),
    };
    match crate::auth::mint(&dev.secret, &uid, &claims, Duration::from_secs(24 * 3600)) {
        Ok(t) => {
            let mut r = respond(StatusCode::OK, "application/json", serde_json::json!({ "token": t }).to_string());
            r.headers_mut().insert("cache-control", HeaderValue::from_static("no-store"));
            r
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "could not mint a token\n"),
    }
}

fn upgrade(app: &App, ticket: Arc<Ticket>, req: &mut Request<Incoming>) -> Resp {
    let up = match check_upgrade(req, &app.allowed_origins, app.tls) {
        Ok(up) => up,
        Err(reject) => return reject.response(),
    };
    let (mut resp, fut) = match fastwebsockets::upgrade::upgrade(&mut *req) {
        Ok(x) => x,
        Err(_) => return text(StatusCode::BAD_REQUEST, "bad WebSocket upgrade\n"),
    };
    if up.v1 {
        resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
    }
    let env = app.env.clone();
    let shutdown = app.shutdown.clone();
    app.sessions.spawn(async move {
        // The socket stays counted until the session ends.
        let _ticket = ticket;
        match fut.await {
            Ok(ws) => session::run(ws.into_inner(), env, up, shutdown).await,
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// Why an upgrade request is refused; each is answered with its own status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not a GET with `Upgrade: websocket` and `Connection: upgrade`: 400.
    NotUpgrade,
    /// A `Sec-WebSocket-Version` other than 13: 426, with `Sec-WebSocket-Version: 13`.
    Version,
    /// No or a malformed `Sec-WebSocket-Key`: 400.
    BadKey,
    /// An `Origin` that is neither the request's own host nor on the allow-list: 403.
    Origin,
}

impl Reject {
    pub fn status(self) -> StatusCode {
        match self {
            Reject::NotUpgrade | Reject::BadKey => StatusCode::BAD_REQUEST,
            Reject::Version => StatusCode::UPGRADE_REQUIRED,
            Reject::Origin => StatusCode::FORBIDDEN,
        }
    }

    fn response(self) -> Resp {
        let body = match self {
            Reject::NotUpgrade => "bad WebSocket upgrade: GET with Upgrade: websocket and Connection: upgrade\n",
            Reject::Version => "unsupported Sec-WebSocket-Version: use 13\n",
            Reject::BadKey => "bad WebSocket upgrade: missing or malformed Sec-WebSocket-Key\n",
            Reject::Origin => "origin not allowed\n",
        };
        let mut r = text(self.status(), body);
        if self == Reject::Version {
            r.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("13"));
        }
        r
    }
}

/// The upgrade decision, without I/O: the checks in PROTOCOL.md's order (well-formed upgrade,
/// version, key, Origin), then what the session needs from the request (token, subprotocol).
pub(crate) fn check_upgrade<B>(req: &Request<B>, allowed_origins: &[String], tls: bool) -> Result<Upgrade, Reject> {
    let h = req.headers();
    if req.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(req) {
        return Err(Reject::NotUpgrade);
    }
    if h.get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
        return Err(Reject::Version);
    }
    if !valid_key(h.get("sec-websocket-key")) {
        return Err(Reject::BadKey);
    }
    if let Some(origin) = h.get(hyper::header::ORIGIN) {
        if !origin_allowed(origin.as_bytes(), h, allowed_origins, tls) {
            return Err(Reject::Origin);
        }
    }
    let token = bearer(h).or_else(|| query_param(req.uri().query(), "token"));
    let v1 = h
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    Ok(Upgrade { token, v1 })
}

/// A Sec-WebSocket-Key is the base64 of 16 bytes: 24 characters ending in `==`.
fn valid_key(v: Option<&HeaderValue>) -> bool {
    let Some(v) = v else { return false };
    let b = v.as_bytes();
    b.len() == 24 && b.ends_with(b"==") && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

fn bearer(h: &HeaderMap) -> Option<String> {
    let v = h.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// Same host (and port) as the request, or on the allow-list; `null` never.
fn origin_allowed(origin: &[u8], h: &HeaderMap, allowed_origins: &[String], tls: bool) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    if allowed_origins.contains(&origin) {
        return true;
    }
    let Some((scheme, hostport)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return false,
    };
    let Some(host) = h.get(hyper::header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ours = if tls { "443" } else { "80" };
    normalize(hostport, default_port) == normalize(&host.to_ascii_lowercase(), ours)
}

/// `host[:port]` with the default port made explicit.
fn normalize(hostport: &str, default_port: &str) -> String {
    let has_port = match hostport.rfind(':') {
        Some(i) => !hostport[i..].contains(']') && hostport[i + 1..].chars().all(|c| c.is_ascii_digit()),
        None => false,
    };
    if has_port {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    }
}

/// One query parameter, percent-decoded (`+` is a space).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == name).then(|| percent_decode(v)).flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits: `from_str_radix` alone would also take a sign (`%+1`).
                let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param(Some("a=1&token=x%2Ey+z"), "token").as_deref(), Some("x.y z"));
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(query_param(Some("token=%zz"), "token"), None);
        // Found by the `upgrade` fuzz target: `%+c` was decoded as 0x0c.
        assert_eq!(query_param(Some("token=a%+cb"), "token"), None);
        assert_eq!(query_param(Some("%+4token=x&token=y"), "token").as_deref(), Some("y"));
        assert_eq!(query_param(Some("token=%2B%2b"), "token").as_deref(), Some("++"));
    }

    #[test]
    fn keys_are_checked() {
        assert!(valid_key(Some(&HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))));
        assert!(!valid_key(Some(&HeaderValue::from_static("short"))));
        assert!(!valid_key(None));
    }

    fn ws_request(extra: &[(&str, &str)], uri: &str) -> Request<()> {
        let mut b = Request::get(uri)
            .header("host", "chat.example.com")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn upgrade_checks_decide_in_order() {
        let allowed = vec!["https://app.example.net".to_string()];
        let check = |extra: &[(&str, &str)], uri: &str| check_upgrade(&ws_request(extra, uri), &allowed, true);
        let up =
            check(&[("authorization", "Bearer  a.b.c "), ("sec-websocket-protocol", "x, natter.v1")], "/ws?token=q")
                .unwrap();
        assert_eq!((up.token.as_deref(), up.v1), (Some("a.b.c"), true));
        let up = check(&[("origin", "https://CHAT.example.com:443")], "/?token=x%2Ey").unwrap();
        assert_eq!((up.token.as_deref(), up.v1), (Some("x.y"), false));
        assert!(check(&[("origin", "https://app.example.net")], "/").is_ok());
        assert_eq!(check(&[("origin", "null")], "/").err(), Some(Reject::Origin));
        assert_eq!(check(&[("origin", "https://evil.example")], "/").err(), Some(Reject::Origin));
        // Plain http origin against a TLS listener: another port.
        assert_eq!(check(&[("origin", "http://chat.example.com")], "/").err(), Some(Reject::Origin));
        let mut req = ws_request(&[], "/");
        req.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("8"));
        req.headers_mut().insert("sec-websocket-key", HeaderValue::from_static("short"));
        assert_eq!(check_upgrade(&req, &allowed, true).err(), Some(Reject::Version));
        req.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("13"));
        assert_eq!(check_upgrade(&req, &allowed, true).err(), Some(Reject::BadKey));
        req.headers_mut().remove("upgrade");
        assert_eq!(check_upgrade(&req, &allowed, true).err(), Some(Reject::NotUpgrade));
        let mut post = ws_request(&[], "/");
        *post.method_mut() = Method::POST;
        assert_eq!(check_upgrade(&post, &allowed, true).err(), Some(Reject::NotUpgrade));
    }

    #[test]
    fn rejections_answer_their_status() {
        assert_eq!(Reject::NotUpgrade.response().status(), StatusCode::BAD_REQUEST);
        assert_eq!(Reject::BadKey.response().status(), StatusCode::BAD_REQUEST);
        assert_eq!(Reject::Origin.response().status(), StatusCode::FORBIDDEN);
        let r = Reject::Version.response();
        assert_eq!(r.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.headers()["sec-websocket-version"], "13");
    }

    #[test]
    fn over_a_limit_is_503_with_retry_after_and_close() {
        for reason in Reason::ALL {
            let r = unavailable(reason);
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()[RETRY_AFTER], RETRY_AFTER_SECS.to_string().as_str());
            assert_eq!(r.headers()[CONNECTION], "close");
        }
    }

    #[test]
    fn ports_are_normalized() {
        assert_eq!(normalize("example.com", "443"), "example.com:443");
        assert_eq!(normalize("example.com:8443", "443"), "example.com:8443");
        assert_eq!(normalize("[::1]", "80"), "[::1]:80");
        assert_eq!(normalize("[::1]:9", "80"), "[::1]:9");
    }
}
