//! The per-connection protocol state machine: authentication, rate limiting, and turning
//! decoded events into hub calls. It writes only to its own outbox.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::access::RoomPatterns;
use crate::auth::{Identity, Rejected};
use crate::hub::{Conn, HubError, Who};
use crate::protocol::{self, ClientEvent, DecodeLimits, ErrorCode};
use crate::wire;

use super::Env;

/// What the supervisor needs to know of the session's token: its expiry (ms, 0 while
/// anonymous), and a nudge when it changes.
#[derive(Default)]
pub struct AuthClock {
    pub exp_ms: AtomicU64,
    pub changed: Notify,
}

/// After handling an input: go on, or close with this code.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close(u16, &'static str),
}

struct Authed {
    uid: String,
    token_name: Option<String>,
    /// The rooms the current token allows (docs/protocol.md, "Room permissions").
    rooms: Arc<RoomPatterns>,
}

/// Token bucket for `message` events, plus the strikes that end in close 1008.
struct RateLimit {
    tokens: f64,
    last: Instant,
    strikes: VecDeque<Instant>,
}

pub struct Session {
    env: Arc<Env>,
    conn: Arc<Conn>,
    clock: Arc<AuthClock>,
    v1: bool,
    auth: Option<Authed>,
    login_name: Option<String>,
    failures: u32,
    rooms: Vec<String>,
    rate: RateLimit,
}

impl Session {
    pub fn new(env: Arc<Env>, conn: Arc<Conn>, clock: Arc<AuthClock>, v1: bool) -> Self {
        let burst = env.limits.rate_burst;
        Session {
            env,
            conn,
            clock,
            v1,
            auth: None,
            login_name: None,
            failures: 0,
            rooms: Vec::new(),
            rate: RateLimit { tokens: burst, last: Instant::now(), strikes: VecDeque::new() },
        }
    }

    fn send(&self, json: &[u8]) {
        if self.conn.outbox.push(wire::text(json)) == crate::outbox::Pushed::Queued {
            self.env.hub.metrics().messages_out.inc();
        }
    }

    fn error(&self, code: ErrorCode, detail: &str) {
        self.env.hub.metrics().errors_sent.inc();
        self.send(&protocol::error(code, detail));
    }

    /// The session's identity: uid from the token; name from the token, else the latest login,
    /// else the uid. Borrowed, so the publish path allocates nothing for it.
    fn who(&self) -> Who<'_> {
        let a = self.auth.as_ref().expect("only called when authenticated");
        Who { uid: &a.uid, name: a.token_name.as_deref().or(self.login_name.as_deref()).unwrap_or(&a.uid) }
    }

    fn expired(&self) -> bool {
        let exp = self.clock.exp_ms.load(Ordering::Relaxed);
        exp != 0 && crate::now_ms() >= exp
    }

    /// A token from the upgrade request or an `auth` event.
    pub async fn on_token(&mut self, token: &str) -> Flow {
        let metrics = self.env.hub.metrics().clone();
        let id: Identity = match self.env.verifier.verify(token) {
            Ok(id) => id,
            Err(rejected) => {
                metrics.auth_failures.inc();
                self.failures += 1;
                let reason = match rejected {
                    Rejected::Expired => protocol::NOAUTH_TEXT,
                    other => other.reason(),
                };
                self.send(&protocol::noauth(reason));
                if self.failures >= self.env.limits.max_auth_failures {
                    return Flow::Close(1008, "too many failed auth attempts");
                }
                return Flow::Continue;
            }
        };
        match &self.auth {
            Some(a) if a.uid != id.uid => {
                self.send(&protocol::noauth("uid mismatch"));
                return Flow::Continue;
            }
            Some(_) => {}
            None => {
                match self.env.hub.claim_uid(&id.uid).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.error(ErrorCode::TooManyConnections, "too many connections for this uid");
                        return Flow::Close(1008, "too many connections");
                    }
                    Err(e) => {
                        // Scaled out and Redis is away: the limit cannot be checked.
                        self.hub_error(e);
                        return Flow::Close(1013, "store unavailable, try again later");
                    }
                }
                self.auth = Some(Authed { uid: id.uid.clone(), token_name: id.name.clone(), rooms: id.rooms.clone() });
            }
        }
        if let Some(a) = self.auth.as_mut() {
            if id.name.is_some() {
                a.token_name = id.name;
            }
            a.rooms = id.rooms;
        }
        self.clock.exp_ms.store(id.valid_until.saturating_mul(1000).max(1), Ordering::Relaxed);
        self.clock.changed.notify_one();
        if self.v1 {
            let who = self.who();
            self.send(&protocol::auth_ok(who.uid, who.name, id.exp));
        }
        self.leave_forbidden().await;
        Flow::Continue
    }

    /// After a token refresh: the rooms the new token does not allow are left as if by
    /// `leave`, each with an `error` `forbidden_room` naming it, so the client knows why.
    async fn leave_forbidden(&mut self) {
        let Some(a) = &self.auth else { return };
        let gone: Vec<String> = self.rooms.iter().filter(|r| !a.rooms.allows(r)).cloned().collect();
        for room in gone {
            self.leave(&room).await;
            self.error(ErrorCode::ForbiddenRoom, &format!("left room {room}: the refreshed token does not allow it"));
        }
    }

    pub fn on_binary(&mut self) {
        self.error(ErrorCode::BinaryUnsupported, "binary frames are not supported: send JSON text");
    }

    /// A pong: evidence for the queue entries of a drain (see `Hub::pong`).
    pub fn on_pong(&self, payload: &[u8]) {
        if self.auth.is_some() {
            self.env.hub.pong(&self.conn, payload);
        }
    }

    pub async fn on_text(&mut self, text: &str) -> Flow {
        let limits = DecodeLimits { max_text_chars: self.env.limits.max_text_chars };
        let event = match protocol::decode(text, limits) {
            Ok(e) => e,
            Err(e) => {
                self.error(e.code, &e.detail);
                return Flow::Continue;
            }
        };
        match event {
            ClientEvent::Auth { token } => return self.on_token(&token).await,
            // Before auth, everything but `auth` gets noauth; once expired, `heartbeat` still works.
            _ if self.auth.is_none() => {
                self.send(&protocol::noauth(protocol::NOAUTH_TEXT));
                return Flow::Continue;
            }
            ClientEvent::Heartbeat { ping } => {
                if ping {
                    self.send(&protocol::heartbeat(false));
                }
                return Flow::Continue;
            }
            _ if self.expired() => {
                self.send(&protocol::noauth(protocol::NOAUTH_TEXT));
                return Flow::Continue;
            }
            // Joins and leaves cost room state and broadcasts: they share the message rate.
            ClientEvent::Login { name, roomid, since } => {
                if let Some(flow) = self.over_rate() {
                    return flow;
                }
                if name.is_some() {
                    self.login_name = name;
                }
                self.login(&roomid, since).await;
            }
            ClientEvent::Leave { roomid } => {
                if let Some(flow) = self.over_rate() {
                    return flow;
                }
                self.leave(&roomid).await
            }
            ClientEvent::Message { roomid, text, cid } => return self.message(roomid, &text, cid.as_deref()).await,
        }
        Flow::Continue
    }

    fn hub_error(&self, e: HubError) {
        match e {
            HubError::NotInRoom => self.error(ErrorCode::NotInRoom, "this connection has not joined that room"),
            HubError::TooManyRooms(max) => self.error(
                ErrorCode::TooManyRooms,
                &format!("a user can be a member of at most {max} rooms: leave one first"),
            ),
            HubError::Unavailable(e) => {
                tracing::warn!("store unavailable: {e:#}");
                self.error(ErrorCode::Unavailable, "the store cannot take this now, try again")
            }
            HubError::Internal(e) => {
                tracing::error!("store error: {e:#}");
                self.error(ErrorCode::Internal, "internal error")
            }
        }
    }

    async fn login(&mut self, roomid: &str, since: Option<u64>) {
        // Checked before anything touches the room: a refused login joins, replays and
        // announces nothing, and creates no room state.
        if !self.auth.as_ref().is_some_and(|a| a.rooms.allows(roomid)) {
            return self.error(ErrorCode::ForbiddenRoom, &format!("this token does not allow room {roomid}"));
        }
        let new_room = !self.rooms.iter().any(|r| r == roomid);
        if new_room && self.rooms.len() >= self.env.limits.max_rooms_per_connection {
            let detail = format!("a connection can be in at most {} rooms", self.env.limits.max_rooms_per_connection);
            return self.error(ErrorCode::BadRoom, &detail);
        }
        match self.env.hub.join(&self.conn, &self.who(), roomid, since).await {
            Ok(joined) => {
                if new_room {
                    self.rooms.push(roomid.to_string());
                }
                if joined.catch_up_failed {
                    self.error(ErrorCode::Internal, "missed messages could not be delivered: log in again with since");
                }
            }
            Err(e) => self.hub_error(e),
        }
    }

    async fn leave(&mut self, roomid: &str) {
        let Some(pos) = self.rooms.iter().position(|r| r == roomid) else {
            return self.error(ErrorCode::NotInRoom, "this connection has not joined that room");
        };
        self.rooms.swap_remove(pos);
        if let Err(e) = self.env.hub.leave(&self.conn, &self.who(), roomid).await {
            self.hub_error(e);
        }
    }

    /// Token bucket; false when the message must be dropped.
    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let l = &self.env.limits;
        let r = &mut self.rate;
        r.tokens = (r.tokens + now.duration_since(r.last).as_secs_f64() * l.rate_per_sec).min(l.rate_burst);
        r.last = now;
        if r.tokens >= 1.0 {
            r.tokens -= 1.0;
            return true;
        }
        false
    }

    /// The event rate (`message`, `login`, `leave` share one bucket): None when the event may
    /// go on, else what to do instead (it is dropped with `rate_limited`; the third strike
    /// within 10 s closes).
    fn over_rate(&mut self) -> Option<Flow> {
        if self.take_token() {
            return None;
        }
        let now = Instant::now();
        let strikes = &mut self.rate.strikes;
        strikes.push_back(now);
        while strikes.front().is_some_and(|t| now.duration_since(*t).as_secs() >= 10) {
            strikes.pop_front();
        }
        self.error(ErrorCode::RateLimited, "too many events, slow down");
        if self.rate.strikes.len() >= 3 {
            return Some(Flow::Close(1008, "rate limit"));
        }
        Some(Flow::Continue)
    }

    async fn message(&mut self, roomid: Option<String>, text: &str, cid: Option<&str>) -> Flow {
        if let Some(flow) = self.over_rate() {
            return flow;
        }
        let roomid = match roomid {
            Some(r) if self.rooms.contains(&r) => r,
            Some(_) => {
                self.error(ErrorCode::NotInRoom, "this connection has not joined that room");
                return Flow::Continue;
            }
            None => match self.rooms.as_slice() {
                [only] => only.clone(),
                [] => {
                    self.error(ErrorCode::NotInRoom, "join a room first");
                    return Flow::Continue;
                }
                _ => {
                    self.error(ErrorCode::BadRoom, "this connection is in several rooms: give `roomid`");
                    return Flow::Continue;
                }
            },
        };
        if let Err(e) = self.env.hub.publish(&self.conn, &self.who(), &roomid, text, cid).await {
            self.hub_error(e);
        }
        Flow::Continue
    }
}

impl Drop for Session {
    /// However the connection ends (even by task abort), it leaves its rooms and frees its
    /// uid slot exactly once.
    fn drop(&mut self) {
        if self.auth.is_some() {
            let who = self.who();
            self.env.hub.disconnect(&self.conn, &who, &self.rooms);
            self.env.hub.release_uid(who.uid);
        }
        self.env.hub.unregister(&self.conn);
    }
}
