//! protocol: `protocol::decode` on arbitrary UTF-8 never panics, and every event it accepts
//! keeps what PROTOCOL.md promises of a decoded event: the input is one JSON object; the event is
//! the `event` field; `roomid` is valid (`protocol::valid_room`, empty or missing -> `default`);
//! `name` is 1 to 64 characters without controls; `message` text is 1 to the limit characters;
//! `cid` is 1 to 64 characters; `since` is the integer sent; every field equals the one sent.
//! Rejections carry only decode's codes. A message accepted under a small text limit is accepted
//! the same under a larger one, and re-encoded (`protocol::message`, `with_mark`) it is JSON again
//! with the same fields.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use natter::protocol::{self, ClientEvent, DecodeLimits, ErrorCode, Mark, MessageOut};
use serde_json::value::RawValue;
use serde_json::Value;

const SMALL: DecodeLimits = DecodeLimits { max_text_chars: 64 };
const LARGE: DecodeLimits = DecodeLimits { max_text_chars: 4096 };

/// The field as sent: `None` when missing or `null`, else its string value (`Err` if not one).
fn field(obj: &BTreeMap<String, Box<RawValue>>, name: &str) -> Option<Result<String, ()>> {
    let raw = obj.get(name)?;
    if raw.get() == "null" {
        return None;
    }
    Some(serde_json::from_str::<String>(raw.get()).map_err(|_| ()))
}

fn chars_in(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.chars().count())
}

fn room_as_sent(obj: &BTreeMap<String, Box<RawValue>>) -> Option<String> {
    match field(obj, "roomid") {
        None => None,
        Some(Ok(r)) if r.is_empty() => Some(protocol::DEFAULT_ROOM.to_string()),
        Some(Ok(r)) => Some(r),
        Some(Err(())) => panic!("accepted a roomid that is not a string"),
    }
}

fn check_accepted(text: &str, ev: &ClientEvent) {
    assert!(text.trim_start().starts_with('{'));
    // Duplicate keys are refused by decode, so "the field sent" is well defined.
    let obj: BTreeMap<String, Box<RawValue>> = serde_json::from_str(text).expect("accepted input is a JSON object");
    let event = field(&obj, "event").and_then(Result::ok).expect("accepted input has a string `event`");
    match ev {
        ClientEvent::Auth { token } => {
            assert_eq!(event, "auth");
            assert_eq!(field(&obj, "message"), Some(Ok(token.clone())));
        }
        ClientEvent::Login { name, roomid, since } => {
            assert_eq!(event, "login");
            assert!(protocol::valid_room(roomid), "login to invalid room {roomid:?}");
            assert_eq!(*roomid, room_as_sent(&obj).unwrap_or_else(|| protocol::DEFAULT_ROOM.to_string()));
            if let Some(n) = name {
                assert!(chars_in(n, 1, 64) && !n.chars().any(char::is_control), "bad name {n:?}");
            }
            assert_eq!(name.clone().map(Ok), field(&obj, "name"));
            let sent =
                obj.get("since").filter(|r| r.get() != "null").map(|r| serde_json::from_str::<u64>(r.get()).ok());
            assert_eq!(since.map(Some), sent, "since");
        }
        ClientEvent::Message { roomid, text: body, cid } => {
            assert_eq!(event, "message");
            if let Some(r) = roomid {
                assert!(protocol::valid_room(r), "message to invalid room {r:?}");
            }
            assert_eq!(*roomid, room_as_sent(&obj));
            assert!(chars_in(body, 1, SMALL.max_text_chars), "text of {} chars", body.chars().count());
            assert_eq!(field(&obj, "message"), Some(Ok(body.clone())));
            if let Some(c) = cid {
                assert!(chars_in(c, 1, 64), "cid of {} chars", c.chars().count());
            }
            assert_eq!(cid.clone().map(Ok), field(&obj, "cid"));
            check_encoded(roomid.as_deref().unwrap_or(protocol::DEFAULT_ROOM), body, cid.as_deref());
        }
        ClientEvent::Leave { roomid } => {
            assert_eq!(event, "leave");
            assert!(protocol::valid_room(roomid), "leave of invalid room {roomid:?}");
            assert_eq!(*roomid, room_as_sent(&obj).unwrap_or_else(|| protocol::DEFAULT_ROOM.to_string()));
        }
        ClientEvent::Heartbeat { ping } => {
            assert_eq!(event, "heartbeat");
            assert_eq!(*ping, field(&obj, "message") == Some(Ok("ping".to_string())));
        }
    }
}

/// The server's own message object for these fields is JSON with the same fields, also marked.
fn check_encoded(roomid: &str, text: &str, cid: Option<&str>) {
    let out = MessageOut {
        event: "message",
        id: 7,
        roomid,
        uid: "u1",
        name: "Alice",
        message: text,
        num: 1,
        total: 2,
        ts: 1,
        cid,
    };
    let bytes = protocol::message(&out);
    for (b, mark) in [
        (bytes.clone(), None),
        (protocol::with_mark(&bytes, Mark::Offline), Some("offline")),
        (protocol::with_mark(&bytes, Mark::Replay), Some("replay")),
    ] {
        let v: Value = serde_json::from_slice(&b).expect("encoded message is JSON");
        assert_eq!(v["message"], text);
        assert_eq!(v["roomid"], roomid);
        assert_eq!(v.get("cid").and_then(Value::as_str), cid);
        if let Some(m) = mark {
            assert_eq!(v[m], true);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let small = protocol::decode(text, SMALL);
    let large = protocol::decode(text, LARGE);
    match &small {
        Ok(ev) => {
            check_accepted(text, ev);
            assert_eq!(large.as_ref().ok(), Some(ev), "a larger text limit changed an accepted event");
        }
        Err(e) => {
            assert!(
                matches!(e.code, ErrorCode::BadJson | ErrorCode::BadEvent | ErrorCode::BadField | ErrorCode::BadRoom),
                "decode answered {:?}",
                e.code
            );
            if !text.trim_start().starts_with('{') {
                assert_eq!(e.code, ErrorCode::BadJson);
            }
            // Only the text limit differs: anything else is refused the same way.
            match &large {
                Ok(ClientEvent::Message { text: body, .. }) => {
                    assert_eq!(e.code, ErrorCode::BadField);
                    assert!(body.chars().count() > SMALL.max_text_chars);
                }
                Ok(other) => panic!("accepted only under the larger limit: {other:?}"),
                // The text limit comes first among a message's checks: a larger one may let a
                // later check answer instead.
                Err(l) => assert!(l.code == e.code || e.code == ErrorCode::BadField, "{:?} then {:?}", e.code, l.code),
            }
        }
    }
    if let Ok(ev) = &large {
        if !matches!(ev, ClientEvent::Message { .. }) {
            assert!(small.is_ok());
        }
    }
});
