//! The receive side of [`Client`]: `recv` (heartbeat handling), `recv_*` and `expect_*`
//! helpers for events, silence and close codes.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{is_heartbeat_ping, Client, Incoming};
use crate::common::{assert_keys, RECV_TIMEOUT};

impl Client {
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
                                        .send(Message::text(json!({"event":"heartbeat","message":"pong"}).to_string()))
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
                        Some(f) => Incoming::Close(Some(u16::from(f.code)), f.reason.as_str().to_string()),
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
            other => panic!("uid {:?}: expected a JSON event within {dur:?}, got {other:?}", self.uid),
        }
    }

    /// Some(json) if one arrives within `dur`, None on timeout; panics on close.
    pub async fn try_recv_json(&mut self, dur: Duration) -> Option<Value> {
        match self.recv(dur).await {
            Incoming::Json(v) => Some(v),
            Incoming::Timeout => None,
            other => panic!("uid {:?}: expected JSON or nothing, got {other:?}", self.uid),
        }
    }

    /// First event named `event` (others are discarded).
    pub async fn recv_event(&mut self, event: &str) -> Value {
        self.recv_event_within(event, RECV_TIMEOUT).await
    }

    /// [`Client::recv_event`] with a longer wait (e.g. a node's liveness deadline).
    pub async fn recv_event_within(&mut self, event: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
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
        assert!(v["message"].is_string(), "error message must be a string: {v}");
        v
    }

    /// Next event must be `noauth`; returns its message.
    pub async fn expect_noauth(&mut self) -> String {
        let v = self.recv_json().await;
        assert_eq!(v["event"], "noauth", "expected noauth, got {v}");
        assert_keys(&v, &["event", "message"]);
        v["message"].as_str().expect("noauth message string").to_string()
    }

    /// Asserts nothing (except hidden heartbeats) arrives within `dur`.
    pub async fn expect_silence(&mut self, dur: Duration) {
        match self.recv(dur).await {
            Incoming::Timeout => {}
            other => panic!("uid {:?}: expected nothing within {dur:?}, got {other:?}", self.uid),
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
}
