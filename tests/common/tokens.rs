//! JWT minting for the tests: HS256 tokens signed with [`SECRET`] (or any secret and claims),
//! and deliberately broken ones (`alg: none`).

use serde_json::{json, Value};

use super::{now_secs, SECRET};

/// HS256 token signed with [`SECRET`]: `sub` = uid, `name` when given, `exp` = now + ttl_secs
/// (ttl may be negative for an expired token).
pub fn token(uid: &str, name: Option<&str>, ttl_secs: i64) -> String {
    let mut claims = json!({ "sub": uid, "exp": now_secs() + ttl_secs });
    if let Some(n) = name {
        claims["name"] = json!(n);
    }
    token_claims(SECRET, &claims)
}

/// Like [`token`] (1 h), with the `rooms` claim: the room patterns the token allows.
pub fn token_rooms(uid: &str, rooms: &[&str]) -> String {
    token_claims(SECRET, &json!({ "sub": uid, "exp": now_secs() + 3600, "rooms": rooms }))
}

/// HS256 token with arbitrary claims and secret.
pub fn token_claims(secret: &str, claims: &Value) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encode jwt")
}

/// Unsigned token with header `{"alg":"none"}` (must be refused).
pub fn alg_none_token(uid: &str) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64url(json!({ "sub": uid, "exp": now_secs() + 3600 }).to_string().as_bytes());
    format!("{header}.{claims}.")
}

pub fn b64url(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
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
