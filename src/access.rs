//! Room permissions: the patterns a token's `rooms` claim (or the server's `--public-rooms`)
//! lists, and the one question the session asks of them: may this connection be in room R?
//! See docs/protocol.md, "Room permissions".

use serde_json::Value;

/// One entry: an exact room id, a prefix (`team-*`), or everything (`*`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Any,
}

/// The rooms a connection may be in. Empty allows none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomPatterns {
    patterns: Vec<Pattern>,
}

/// Why a list of patterns was refused (the text names the bad entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern(pub String);

impl RoomPatterns {
    /// Every room.
    pub fn any() -> Self {
        RoomPatterns { patterns: vec![Pattern::Any] }
    }

    /// Comma-separated patterns (`team-*,lobby`), as given to `--public-rooms` and
    /// `natter token --rooms`. Blank entries are skipped, so `""` allows nothing.
    pub fn parse_list(s: &str) -> Result<Self, BadPattern> {
        Self::from_entries(s.split(',').map(str::trim).filter(|e| !e.is_empty()))
    }

    /// The claim's value: an array of pattern strings, or one string of comma-separated
    /// patterns (what a shell-built token tends to hold).
    pub fn from_claim(v: &Value) -> Result<Self, BadPattern> {
        match v {
            Value::String(s) => Self::parse_list(s),
            Value::Array(items) => {
                let mut entries = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => entries.push(s.as_str()),
                        other => return Err(BadPattern(format!("{other} is not a string"))),
                    }
                }
                Self::from_entries(entries.into_iter())
            }
            other => Err(BadPattern(format!("{other} is neither a list nor a string"))),
        }
    }

    fn from_entries<'a>(entries: impl Iterator<Item = &'a str>) -> Result<Self, BadPattern> {
        let mut patterns = Vec::new();
        for e in entries {
            let p = if e == "*" {
                Pattern::Any
            } else if let Some(prefix) = e.strip_suffix('*') {
                // A prefix is a room id's beginning, so it obeys the same alphabet.
                if !prefix.chars().all(crate::protocol::room_char) || prefix.len() >= crate::protocol::MAX_ROOM_BYTES {
                    return Err(BadPattern(format!("'{e}' is not a room id prefix followed by '*'")));
                }
                Pattern::Prefix(prefix.to_string())
            } else if crate::protocol::valid_room(e) {
                Pattern::Exact(e.to_string())
            } else {
                return Err(BadPattern(format!("'{e}' is not a room id, a prefix followed by '*', or '*'")));
            };
            patterns.push(p);
        }
        Ok(RoomPatterns { patterns })
    }

    pub fn allows(&self, room: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::Exact(r) => r == room,
            Pattern::Prefix(p) => room.starts_with(p.as_str()),
        })
    }

    /// The patterns as a JSON array (for minting tokens).
    pub fn to_claim(&self) -> Value {
        Value::Array(
            self.patterns
                .iter()
                .map(|p| match p {
                    Pattern::Any => "*".to_string(),
                    Pattern::Exact(r) => r.clone(),
                    Pattern::Prefix(p) => format!("{p}*"),
                })
                .map(Value::String)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exact_prefix_and_any() {
        let p = RoomPatterns::parse_list("team-*, lobby").unwrap();
        assert!(p.allows("lobby"));
        assert!(p.allows("team-"));
        assert!(p.allows("team-red"));
        assert!(!p.allows("lobby2"), "exact means exact");
        assert!(!p.allows("team"), "the prefix includes the dash");
        assert!(!p.allows("default"));
        assert!(RoomPatterns::any().allows("anything"));
        assert!(!RoomPatterns::default().allows("default"), "no patterns, no rooms");
        assert!(!RoomPatterns::parse_list("").unwrap().allows("default"));
    }

    #[test]
    fn claims_are_arrays_or_strings() {
        let p = RoomPatterns::from_claim(&json!(["a", "b-*"])).unwrap();
        assert!(p.allows("a") && p.allows("b-1") && !p.allows("c"));
        assert_eq!(p.to_claim(), json!(["a", "b-*"]));
        assert!(RoomPatterns::from_claim(&json!("a,b")).unwrap().allows("b"));
        assert!(RoomPatterns::from_claim(&json!([]).clone()).unwrap() == RoomPatterns::default());
        assert!(RoomPatterns::from_claim(&json!(3)).is_err());
        assert!(RoomPatterns::from_claim(&json!(["a", 1])).is_err());
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["a b", "a*b", "**", "x/*", &"a".repeat(65)] {
            let e = RoomPatterns::parse_list(bad).unwrap_err();
            assert!(e.0.contains(bad), "{e:?} names {bad}");
        }
        // 63 bytes and a star: a prefix a room id can still extend.
        assert!(RoomPatterns::parse_list(&format!("{}*", "a".repeat(63))).is_ok());
    }
}
