//! Protocol v1 messages: decoding client events (with every field checked) and encoding server
//! events. No I/O here: bytes in, typed values out, and back.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The room a `login` without `roomid` joins.
pub const DEFAULT_ROOM: &str = "default";
/// The tutorial's exact text, which its page reacts to.
pub const NOAUTH_TEXT: &str = "please auth again, your token is expired!";

/// An event from a client, its fields validated.
#[derive(Debug, PartialEq)]
pub enum ClientEvent {
    Auth {
        token: String,
    },
    Login {
        name: Option<String>,
        roomid: String,
        since: Option<u64>,
    },
    Message {
        roomid: Option<String>,
        text: String,
        cid: Option<String>,
    },
    Leave {
        roomid: String,
    },
    /// `ping` is answered with `pong`; anything else is only a sign of life.
    Heartbeat {
        ping: bool,
    },
}

/// Why an input was rejected; the variant names are the wire's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadEvent,
    BadField,
    BadRoom,
    NotInRoom,
    RateLimited,
    BinaryUnsupported,
    TooManyConnections,
    /// The token (or, without a `rooms` claim, the public rooms) does not allow the room.
    ForbiddenRoom,
    /// The uid is a member of as many rooms as it may be.
    TooManyRooms,
    /// The store cannot take the write now (disk full, ...): nothing stored, no ack; resend.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadEvent => "bad_event",
            ErrorCode::BadField => "bad_field",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BinaryUnsupported => "binary_unsupported",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::ForbiddenRoom => "forbidden_room",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A rejected input: the code and a human-readable detail.
#[derive(Debug, Clone, PartialEq)]
pub struct InputError {
    pub code: ErrorCode,
    pub detail: String,
}

fn err(code: ErrorCode, detail: impl Into<String>) -> InputError {
    InputError { code, detail: detail.into() }
}

/// Every field as raw JSON, so that each can be type-checked on its own and named in the error.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    roomid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cid: Option<&'a RawValue>,
}

/// Limits that decoding enforces.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_text_chars: usize,
}

/// `null` counts as absent.
fn opt_string(raw: Option<&RawValue>, field: &str) -> Result<Option<String>, InputError> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => serde_json::from_str::<String>(r.get())
            .map(Some)
            .map_err(|_| err(ErrorCode::BadField, format!("`{field}` must be a string"))),
    }
}

fn char_count_in(s: &str, min: usize, max: usize) -> bool {
    // Byte length bounds the char count from above: skip the count for short strings.
    let n = if s.len() <= max { s.chars().count() } else { s.chars().take(max + 1).count() };
    n >= min && n <= max
}

/// Longest room id, bytes.
pub const MAX_ROOM_BYTES: usize = 64;

/// 1 to 64 bytes of Unicode letters and digits, `-`, `_`, `.`.
pub fn valid_room(r: &str) -> bool {
    !r.is_empty() && r.len() <= MAX_ROOM_BYTES && r.chars().all(room_char)
}

/// The alphabet of room ids (also of the prefixes in room permissions).
pub fn room_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn room_field(raw: Option<&RawValue>) -> Result<Option<String>, InputError> {
    match opt_string(raw, "roomid")? {
        None => Ok(None),
        // Empty means the default room (PROTOCOL.md); only a missing roomid is left to infer.
        Some(r) if r.is_empty() => Ok(Some(DEFAULT_ROOM.to_string())),
        Some(r) if valid_room(&r) => Ok(Some(r)),
        Some(_) => Err(err(ErrorCode::BadRoom, "`roomid` must be 1 to 64 bytes of letters, digits, '-', '_', '.'")),
    }
}

/// Decodes one text message. Order of checks: JSON object, `event`, then the event's fields.
pub fn decode(text: &str, limits: DecodeLimits) -> Result<ClientEvent, InputError> {
    // serde would also read a struct from a JSON array: only an object is accepted.
    if !text.trim_start().starts_with('{') {
        return Err(err(ErrorCode::BadJson, "expected one JSON object"));
    }
    let env: Envelope = serde_json::from_str(text).map_err(|_| err(ErrorCode::BadJson, "expected one JSON object"))?;
    let event = match env.event.map(|r| serde_json::from_str::<&str>(r.get())) {
        Some(Ok(e)) => e,
        Some(Err(_)) => {
            // A string with escapes does not borrow; no valid event name has any.
            return Err(err(ErrorCode::BadEvent, "`event` must be a known event name"));
        }
        None => return Err(err(ErrorCode::BadEvent, "missing `event`")),
    };
    match event {
        "auth" => {
            let token = opt_string(env.message, "message")?
                .ok_or_else(|| err(ErrorCode::BadField, "`message` must hold the token"))?;
            Ok(ClientEvent::Auth { token })
        }
        "login" => {
            let name = opt_string(env.name, "name")?;
            if let Some(n) = &name {
                if !crate::auth::valid_name(n) {
                    return Err(err(
                        ErrorCode::BadField,
                        "`name` must be 1 to 64 characters, without control or format characters",
                    ));
                }
            }
            let roomid = room_field(env.roomid)?.unwrap_or_else(|| DEFAULT_ROOM.to_string());
            let since = match env.since {
                None => None,
                Some(r) if r.get() == "null" => None,
                Some(r) => Some(
                    serde_json::from_str::<u64>(r.get())
                        .map_err(|_| err(ErrorCode::BadField, "`since` must be a non-negative integer"))?,
                ),
            };
            Ok(ClientEvent::Login { name, roomid, since })
        }
        "message" => {
            let text = opt_string(env.message, "message")?
                .ok_or_else(|| err(ErrorCode::BadField, "`message` must be a string"))?;
            if !char_count_in(&text, 1, limits.max_text_chars) {
                return Err(err(
                    ErrorCode::BadField,
                    format!("`message` must be 1 to {} characters", limits.max_text_chars),
                ));
            }
            let cid = opt_string(env.cid, "cid")?;
            if let Some(c) = &cid {
                if !char_count_in(c, 1, 64) {
                    return Err(err(ErrorCode::BadField, "`cid` must be 1 to 64 characters"));
                }
            }
            Ok(ClientEvent::Message { roomid: room_field(env.roomid)?, text, cid })
        }
        "leave" => {
            Ok(ClientEvent::Leave { roomid: room_field(env.roomid)?.unwrap_or_else(|| DEFAULT_ROOM.to_string()) })
        }
        "heartbeat" => {
            let m = opt_string(env.message, "message")?;
            Ok(ClientEvent::Heartbeat { ping: m.as_deref() == Some("ping") })
        }
        _ => Err(err(ErrorCode::BadEvent, "unknown `event`")),
    }
}

// ---- server to client ----

#[derive(Serialize)]
pub struct LoginOut<'a> {
    pub event: &'static str,
    pub roomid: &'a str,
    pub uid: &'a str,
    pub name: &'a str,
    pub num: usize,
    pub total: usize,
    pub ts: u64,
    /// Only on the joiner's own copy, when it gave `since` (docs/protocol.md, "Recovery").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

#[derive(Serialize)]
pub struct MessageOut<'a> {
    pub event: &'static str,
    pub id: u64,
    pub roomid: &'a str,
    pub uid: &'a str,
    pub name: &'a str,
    pub message: &'a str,
    pub num: usize,
    pub total: usize,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<&'a str>,
}

#[derive(Serialize)]
pub struct LogoutOut<'a> {
    pub event: &'static str,
    pub roomid: &'a str,
    pub uid: &'a str,
    pub name: &'a str,
    pub num: usize,
    pub total: usize,
}

#[derive(Serialize)]
struct AckOut<'a> {
    event: &'static str,
    cid: &'a str,
    id: u64,
    roomid: &'a str,
}

#[derive(Serialize)]
struct TextOut<'a> {
    event: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    event: &'static str,
    code: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct AuthOk<'a> {
    event: &'static str,
    message: &'static str,
    uid: &'a str,
    name: &'a str,
    exp: u64,
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail.
    serde_json::to_vec(v).expect("server events serialize")
}

pub fn login(ev: &LoginOut) -> Vec<u8> {
    to_json(ev)
}
pub fn message(ev: &MessageOut) -> Vec<u8> {
    to_json(ev)
}
pub fn logout(ev: &LogoutOut) -> Vec<u8> {
    to_json(ev)
}
pub fn ack(cid: &str, id: u64, roomid: &str) -> Vec<u8> {
    to_json(&AckOut { event: "ack", cid, id, roomid })
}
pub fn noauth(reason: &str) -> Vec<u8> {
    to_json(&TextOut { event: "noauth", message: reason })
}
pub fn heartbeat(ping: bool) -> Vec<u8> {
    to_json(&TextOut { event: "heartbeat", message: if ping { "ping" } else { "pong" } })
}
pub fn error(code: ErrorCode, detail: &str) -> Vec<u8> {
    to_json(&ErrorOut { event: "error", code: code.as_str(), message: detail })
}
pub fn auth_ok(uid: &str, name: &str, exp: u64) -> Vec<u8> {
    to_json(&AuthOk { event: "auth", message: "ok", uid, name, exp })
}

/// How a stored message is marked when it is not live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Offline,
    Replay,
}

/// Adds `"offline":true` or `"replay":true` to a stored message object without re-parsing it.
pub fn with_mark(stored: &[u8], mark: Mark) -> Vec<u8> {
    let field: &[u8] = match mark {
        Mark::Offline => b",\"offline\":true}",
        Mark::Replay => b",\"replay\":true}",
    };
    let end = stored.iter().rposition(|b| *b == b'}').unwrap_or(stored.len());
    let mut out = Vec::with_capacity(end + field.len());
    out.extend_from_slice(&stored[..end]);
    out.extend_from_slice(field);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    const L: DecodeLimits = DecodeLimits { max_text_chars: 10 };

    fn code(s: &str) -> ErrorCode {
        decode(s, L).unwrap_err().code
    }

    #[test]
    fn decodes_events() {
        assert_eq!(
            decode(r#"{"event":"login","name":"al","roomid":"r1","since":3,"uid":"x"}"#, L).unwrap(),
            ClientEvent::Login { name: Some("al".into()), roomid: "r1".into(), since: Some(3) }
        );
        assert_eq!(
            decode(r#"{"event":"login"}"#, L).unwrap(),
            ClientEvent::Login { name: None, roomid: "default".into(), since: None }
        );
        assert_eq!(
            decode(r#"{"event":"message","message":"hi","cid":"c1"}"#, L).unwrap(),
            ClientEvent::Message { roomid: None, text: "hi".into(), cid: Some("c1".into()) }
        );
        assert_eq!(
            decode(r#"{"event":"heartbeat","message":"ping"}"#, L).unwrap(),
            ClientEvent::Heartbeat { ping: true }
        );
    }

    #[test]
    fn rejects_bad_input_with_the_right_code() {
        assert_eq!(code("nope"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code("\"s\""), ErrorCode::BadJson);
        assert_eq!(code("{}"), ErrorCode::BadEvent);
        assert_eq!(code(r#"{"event":"dance"}"#), ErrorCode::BadEvent);
        assert_eq!(code(r#"{"event":5}"#), ErrorCode::BadEvent);
        assert_eq!(code(r#"{"event":"message","message":5}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"event":"message","message":""}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"event":"message","message":"12345678901"}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"event":"message","message":"a","roomid":"a b"}"#), ErrorCode::BadRoom);
        assert_eq!(code(r#"{"event":"login","since":-1}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"event":"login","since":"3"}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"event":"login","name":""}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"event":"login","roomid":7}"#), ErrorCode::BadField);
    }

    /// Mutated and truncated inputs: decoding always answers, never panics.
    #[test]
    fn mangled_input_never_panics() {
        let seeds = [
            r#"{"event":"login","name":"al","roomid":"r1","since":3}"#,
            r#"{"event":"message","roomid":"ü-1","message":"hé\u00e9","cid":"c1"}"#,
            r#"{"event":"auth","message":"a.b.c"}"#,
            r#"{"event":"heartbeat","message":"ping"}"#,
        ];
        let alphabet: &[u8] = b"{}[]\":,\\0123456789-eE.+ nulltrufas\xc3\xa9\xff";
        let mut rng = rand::rng();
        for i in 0..20_000 {
            let mut b = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..rand::Rng::random_range(&mut rng, 1..6) {
                let at = rand::Rng::random_range(&mut rng, 0..b.len());
                match rand::Rng::random_range(&mut rng, 0..3) {
                    0 => b[at] = alphabet[rand::Rng::random_range(&mut rng, 0..alphabet.len())],
                    1 => b.truncate(at.max(1)),
                    _ => b.insert(at, alphabet[rand::Rng::random_range(&mut rng, 0..alphabet.len())]),
                }
            }
            if let Ok(text) = std::str::from_utf8(&b) {
                let _ = decode(text, L);
            }
        }
    }

    #[test]
    fn marks_stored_messages() {
        assert_eq!(with_mark(br#"{"a":1}"#, Mark::Offline), br#"{"a":1,"offline":true}"#.to_vec());
        assert_eq!(with_mark(br#"{"a":1}"#, Mark::Replay), br#"{"a":1,"replay":true}"#.to_vec());
    }
}
