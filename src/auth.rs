//! Token verification and minting (JWT). The uid and display name of a session come from here
//! and nowhere else.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::JwtKey;

/// Longest accepted uid, bytes: uids are store key components.
pub const MAX_UID_BYTES: usize = 256;

/// Who a valid token says the client is.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub uid: String,
    /// The `name` claim when it is 1 to 64 characters.
    pub name: Option<String>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// When the session counts as expired: `exp` plus the leeway the token was accepted with
    /// (else a token accepted within the leeway would be reported expired at once).
    pub valid_until: u64,
}

/// Why a token was refused: the text goes to the client in `noauth`.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejected {
    TooLarge,
    Expired,
    Invalid(&'static str),
}

impl Rejected {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::TooLarge => "token too large",
            Rejected::Expired => "token expired",
            Rejected::Invalid(why) => why,
        }
    }
}

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    uid_claim: String,
    max_bytes: usize,
}

impl Verifier {
    /// The algorithm is pinned by the configured key, never taken from a token's header.
    pub fn new(key: &JwtKey, uid_claim: &str, leeway: Duration, max_bytes: usize) -> Result<Self, String> {
        let (key, alg) = match key {
            JwtKey::Secret(s) => (DecodingKey::from_secret(s), Algorithm::HS256),
            JwtKey::PublicPem(pem) => match DecodingKey::from_rsa_pem(pem) {
                Ok(k) => (k, Algorithm::RS256),
                Err(_) => match DecodingKey::from_ec_pem(pem) {
                    Ok(k) => (k, Algorithm::ES256),
                    Err(e) => return Err(format!("not an RSA or EC (P-256) public key in PEM: {e}")),
                },
            },
        };
        let mut validation = Validation::new(alg);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Verifier { key, validation, uid_claim: uid_claim.to_string(), max_bytes })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, Rejected> {
        if token.len() > self.max_bytes {
            return Err(Rejected::TooLarge);
        }
        if token.is_empty() {
            return Err(Rejected::Invalid("missing token"));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => Rejected::Expired,
                ErrorKind::ImmatureSignature => Rejected::Invalid("token not yet valid"),
                ErrorKind::InvalidSignature => Rejected::Invalid("invalid token signature"),
                ErrorKind::InvalidAlgorithm => Rejected::Invalid("token algorithm not allowed"),
                ErrorKind::MissingRequiredClaim(_) => Rejected::Invalid("token lacks a required claim"),
                _ => Rejected::Invalid("invalid token"),
            }
        })?;
        let claims = data.claims;
        let uid = match claims.get(&self.uid_claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => return Err(Rejected::Invalid("token has no uid claim")),
        };
        if uid.is_empty() || uid.len() > MAX_UID_BYTES || uid.chars().any(char::is_control) {
            return Err(Rejected::Invalid("token uid is empty, too long or has control characters"));
        }
        let name = match claims.get("name") {
            Some(Value::String(n)) if valid_name(n) => Some(n.clone()),
            _ => None,
        };
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or(Rejected::Invalid("token exp is not a number"))?;
        Ok(Identity { uid, name, exp, valid_until: exp.saturating_add(self.validation.leeway) })
    }
}

/// A display name: 1 to 64 characters, no control characters.
pub fn valid_name(n: &str) -> bool {
    let count = n.chars().count();
    (1..=64).contains(&count) && !n.chars().any(char::is_control)
}

/// HS256 token for `natter token`, `/dev/token` and tests.
pub fn mint(secret: &[u8], uid: &str, name: Option<&str>, ttl: Duration) -> anyhow::Result<String> {
    let now = crate::now_ms() / 1000;
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(uid.into()));
    if let Some(n) = name {
        claims.insert("name".into(), Value::String(n.into()));
    }
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))?)
}

/// A random 32-byte hex secret for `--dev`.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        Verifier::new(&JwtKey::Secret(b"s".to_vec()), "sub", Duration::from_secs(5), 8192).unwrap()
    }

    #[test]
    fn good_token_gives_identity() {
        let t = mint(b"s", "alice", Some("Alice"), Duration::from_secs(60)).unwrap();
        let id = verifier().verify(&t).unwrap();
        assert_eq!(id.uid, "alice");
        assert_eq!(id.name.as_deref(), Some("Alice"));
    }

    #[test]
    fn wrong_key_and_alg_none_are_refused() {
        let t = mint(b"other", "alice", None, Duration::from_secs(60)).unwrap();
        assert!(verifier().verify(&t).is_err());
        // header {"alg":"none","typ":"JWT"}, payload {"sub":"a","exp":9999999999}, no signature
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(verifier().verify(none).is_err());
        assert_eq!(verifier().verify(&"a".repeat(9000)), Err(Rejected::TooLarge));
    }
}
