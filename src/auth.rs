//! Token verification and minting (JWT). The uid and display name of a session come from here
//! and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::access::RoomPatterns;
use crate::config::{JwtConfig, JwtKey};

/// The rooms claim's name unless `--jwt-rooms-claim` says otherwise.
pub const DEFAULT_ROOMS_CLAIM: &str = "rooms";

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
    /// The rooms the token allows: its rooms claim, else the server's public rooms.
    pub rooms: Arc<RoomPatterns>,
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
    rooms_claim: String,
    /// For tokens without the rooms claim; shared, so an identity costs no copy of it.
    public_rooms: Arc<RoomPatterns>,
    max_bytes: usize,
}

impl Verifier {
    /// The algorithm is pinned by the configured key, never taken from a token's header.
    pub fn new(cfg: &JwtConfig, public_rooms: RoomPatterns, max_bytes: usize) -> Result<Self, String> {
        let (key, alg) = match &cfg.key {
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
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        let mut required = vec!["exp"];
        // Without a configured audience an `aud` claim is not checked (the library would refuse
        // every token that has one).
        validation.validate_aud = cfg.audience.is_some();
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier {
            key,
            validation,
            uid_claim: cfg.uid_claim.clone(),
            rooms_claim: cfg.rooms_claim.clone(),
            public_rooms: Arc::new(public_rooms),
            max_bytes,
        })
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
                ErrorKind::InvalidAudience => Rejected::Invalid("token audience not accepted"),
                ErrorKind::InvalidIssuer => Rejected::Invalid("token issuer not accepted"),
                _ => Rejected::Invalid("invalid token"),
            }
        })?;
        let claims = data.claims;
        let uid = match claims.get(&self.uid_claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => return Err(Rejected::Invalid("token has no uid claim")),
        };
        if uid.is_empty() || uid.len() > MAX_UID_BYTES || uid.chars().any(hidden_char) {
            return Err(Rejected::Invalid("token uid is empty, too long or has control or format characters"));
        }
        let name = match claims.get("name") {
            Some(Value::String(n)) if valid_name(n) => Some(n.clone()),
            _ => None,
        };
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or(Rejected::Invalid("token exp is not a number"))?;
        let rooms = match claims.get(&self.rooms_claim) {
            None => self.public_rooms.clone(),
            Some(v) => Arc::new(
                RoomPatterns::from_claim(v)
                    .map_err(|_| Rejected::Invalid("token rooms claim is not a list of room patterns"))?,
            ),
        };
        Ok(Identity { uid, name, exp, valid_until: exp.saturating_add(self.validation.leeway), rooms })
    }
}

/// A display name: 1 to 64 characters, no control or format characters (bidi overrides and
/// zero-width characters would let a name pose as another or reorder the text around it).
pub fn valid_name(n: &str) -> bool {
    let count = n.chars().count();
    (1..=64).contains(&count) && !n.chars().any(hidden_char)
}

/// Unicode general category Cf (format), Unicode 15: bidi controls, zero-width characters,
/// the BOM, soft hyphen, interlinear annotation and tag characters.
const FORMAT_CHARS: [(u32, u32); 21] = [
    (0xAD, 0xAD),
    (0x600, 0x605),
    (0x61C, 0x61C),
    (0x6DD, 0x6DD),
    (0x70F, 0x70F),
    (0x890, 0x891),
    (0x8E2, 0x8E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// A control (Cc) or format (Cf) character: invisible, or changes how the text around it shows.
pub fn hidden_char(c: char) -> bool {
    let c32 = c as u32;
    c.is_control() || FORMAT_CHARS.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c32))
}

/// What `natter token`, `/dev/token` and the bench put in a token besides `sub` and `exp`.
#[derive(Default)]
pub struct MintClaims<'a> {
    pub name: Option<&'a str>,
    /// The rooms claim; left out when None.
    pub rooms: Option<&'a RoomPatterns>,
    /// The rooms claim's name (`--jwt-rooms-claim`); None: `rooms`.
    pub rooms_claim: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

/// HS256 token for `natter token`, `/dev/token`, the bench and tests.
pub fn mint(secret: &[u8], uid: &str, extra: &MintClaims<'_>, ttl: Duration) -> anyhow::Result<String> {
    let now = crate::now_ms() / 1000;
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(uid.into()));
    if let Some(n) = extra.name {
        claims.insert("name".into(), Value::String(n.into()));
    }
    if let Some(r) = extra.rooms {
        claims.insert(extra.rooms_claim.unwrap_or(DEFAULT_ROOMS_CLAIM).into(), r.to_claim());
    }
    if let Some(a) = extra.audience {
        claims.insert("aud".into(), Value::String(a.into()));
    }
    if let Some(i) = extra.issuer {
        claims.insert("iss".into(), Value::String(i.into()));
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

    fn config() -> JwtConfig {
        JwtConfig {
            key: JwtKey::Secret(b"s".to_vec()),
            uid_claim: "sub".into(),
            rooms_claim: "rooms".into(),
            leeway: Duration::from_secs(5),
            audience: None,
            issuer: None,
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(&config(), RoomPatterns::parse_list("lobby").unwrap(), 8192).unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn good_token_gives_identity() {
        let t = mint(b"s", "alice", &MintClaims { name: Some("Alice"), ..Default::default() }, HOUR).unwrap();
        let id = verifier().verify(&t).unwrap();
        assert_eq!(id.uid, "alice");
        assert_eq!(id.name.as_deref(), Some("Alice"));
        assert!(id.rooms.allows("lobby") && !id.rooms.allows("team-a"), "no claim: the public rooms");
    }

    #[test]
    fn the_rooms_claim_replaces_the_public_rooms() {
        let rooms = RoomPatterns::parse_list("team-*").unwrap();
        let t = mint(b"s", "a", &MintClaims { rooms: Some(&rooms), ..Default::default() }, HOUR).unwrap();
        let id = verifier().verify(&t).unwrap();
        assert!(id.rooms.allows("team-a") && !id.rooms.allows("lobby"));
        let none = RoomPatterns::default();
        let t = mint(b"s", "a", &MintClaims { rooms: Some(&none), ..Default::default() }, HOUR).unwrap();
        assert!(!verifier().verify(&t).unwrap().rooms.allows("lobby"), "an empty claim allows nothing");
    }

    #[test]
    fn audience_and_issuer_are_required_when_configured() {
        let mut cfg = config();
        cfg.audience = Some("chat".into());
        cfg.issuer = Some("https://id.example".into());
        let v = Verifier::new(&cfg, RoomPatterns::default(), 8192).unwrap();
        let claims = |aud, iss| MintClaims { audience: aud, issuer: iss, ..Default::default() };
        let ok = mint(b"s", "a", &claims(Some("chat"), Some("https://id.example")), HOUR).unwrap();
        assert!(v.verify(&ok).is_ok());
        for (aud, iss) in [
            (None, Some("https://id.example")),
            (Some("chat"), None),
            (Some("other"), Some("https://id.example")),
            (Some("chat"), Some("https://evil")),
        ] {
            let t = mint(b"s", "a", &claims(aud, iss), HOUR).unwrap();
            assert!(v.verify(&t).is_err(), "aud {aud:?} iss {iss:?} must be refused");
        }
        // Not configured: an aud claim is not a reason to refuse.
        let t = mint(b"s", "a", &claims(Some("whatever"), None), HOUR).unwrap();
        assert!(verifier().verify(&t).is_ok());
    }

    #[test]
    fn names_and_uids_with_format_characters_are_refused() {
        for bad in ["a\u{202E}b", "a\u{200B}", "\u{2066}x", "x\u{FEFF}", "a\u{E0041}", "a\nb", "a\u{AD}b"] {
            assert!(!valid_name(bad), "{bad:?}");
            let t = mint(b"s", bad, &MintClaims::default(), HOUR).unwrap();
            assert!(verifier().verify(&t).is_err(), "uid {bad:?}");
        }
        for good in ["Zoë", "李雷", "a b", "عربي", "👍"] {
            assert!(valid_name(good), "{good:?}");
        }
    }

    #[test]
    fn wrong_key_and_alg_none_are_refused() {
        let t = mint(b"other", "alice", &MintClaims::default(), HOUR).unwrap();
        assert!(verifier().verify(&t).is_err());
        // header {"alg":"none","typ":"JWT"}, payload {"sub":"a","exp":9999999999}, no signature
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(verifier().verify(none).is_err());
        assert_eq!(verifier().verify(&"a".repeat(9000)), Err(Rejected::TooLarge));
    }
}
