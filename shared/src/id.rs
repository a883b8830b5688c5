//! Agent, cluster and event identifiers (PROTOCOL §1).
//!
//! Identifiers are compared byte for byte: never case-folded, trimmed or
//! normalized. Errors name the offending character and its position.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Events only the runtime writes; the append API refuses them.
pub const RUNTIME_EVENTS: [&str; 9] = [
    "genesis",
    "recovery",
    "gap",
    "checkpoint",
    "enroll",
    "command",
    "command_ack",
    "command_result",
    "pitr",
];

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long (at most 64)")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} has {ch:?} at position {pos}: {rule}")]
    BadChar {
        what: &'static str,
        ch: char,
        pos: usize,
        rule: &'static str,
    },
}

fn check(
    s: &str,
    what: &'static str,
    first_ok: fn(char) -> bool,
    first_rule: &'static str,
    rest_rule: &'static str,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    let len = s.chars().count();
    if len > 64 {
        return Err(IdError::TooLong { what, len });
    }
    for (pos, ch) in s.chars().enumerate() {
        let ok = if pos == 0 {
            first_ok(ch)
        } else {
            matches!(ch, 'a'..='z' | '0'..='9' | '.' | '_' | '-')
        };
        if !ok {
            let rule = if pos == 0 { first_rule } else { rest_rule };
            return Err(IdError::BadChar {
                what,
                ch,
                pos,
                rule,
            });
        }
    }
    Ok(())
}

fn check_id(s: &str, what: &'static str) -> Result<(), IdError> {
    check(
        s,
        what,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        "must start with [a-z0-9]",
        "allowed are [a-z0-9._-]",
    )
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                ($check)(&s, $what)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// An agent id, also used for gateways: 1–64 of `[a-z0-9._-]`, starting
    /// with `[a-z0-9]`. Agents and gateways share one namespace.
    AgentId,
    "agent id",
    check_id
);

string_id!(
    /// A command's id (PROTOCOL §9): unique per issuer; the same syntax as
    /// an agent id.
    CommandId,
    "command id",
    check_id
);

string_id!(
    /// A cluster id: the same syntax as an agent id.
    ClusterId,
    "cluster id",
    check_id
);

string_id!(
    /// An event name: 1–64 of `[a-z0-9_.-]`, starting with `[a-z]`.
    EventName,
    "event",
    |s: &str, what| check(
        s,
        what,
        |c: char| c.is_ascii_lowercase(),
        "must start with [a-z]",
        "allowed are [a-z0-9._-]"
    )
);

impl EventName {
    /// Whether only the runtime may write this event.
    pub fn is_runtime_only(&self) -> bool {
        RUNTIME_EVENTS.contains(&self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for id in ["a", "0", "pi-s03-c07-a12", "gw.c07_x", &"a".repeat(64)] {
            AgentId::new(id).unwrap();
            ClusterId::new(id).unwrap();
        }
        EventName::new("heartbeat_summary").unwrap();
    }

    #[test]
    fn errors_name_character_and_position() {
        assert_eq!(
            AgentId::new("Pi/01").unwrap_err().to_string(),
            "agent id has 'P' at position 0: must start with [a-z0-9]"
        );
        assert_eq!(
            AgentId::new("pi/01").unwrap_err().to_string(),
            "agent id has '/' at position 2: allowed are [a-z0-9._-]"
        );
        assert_eq!(
            AgentId::new("-a").unwrap_err(),
            IdError::BadChar {
                what: "agent id",
                ch: '-',
                pos: 0,
                rule: "must start with [a-z0-9]"
            }
        );
        for bad in ["a+b", "a#", "a b", "é", "a\u{0}"] {
            assert!(AgentId::new(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ClusterId::new("").unwrap_err(),
            IdError::Empty { what: "cluster id" }
        );
        assert_eq!(
            AgentId::new("a".repeat(65)).unwrap_err(),
            IdError::TooLong {
                what: "agent id",
                len: 65
            }
        );
    }

    #[test]
    fn events_start_with_a_letter() {
        assert!(EventName::new("9lives").is_err());
        assert!(EventName::new("Info").is_err());
        assert!(EventName::new("info").is_ok());
        assert!(EventName::new("genesis").unwrap().is_runtime_only());
        assert!(!EventName::new("alert").unwrap().is_runtime_only());
    }

    /// PROTOCOL §1: a local program must not write what only the runtime
    /// writes — a forged `command_ack` would be counted as an answer.
    #[test]
    fn the_append_api_refuses_every_runtime_event() {
        for e in [
            "genesis",
            "recovery",
            "gap",
            "checkpoint",
            "enroll",
            "command",
            "command_ack",
            "command_result",
            "pitr",
        ] {
            let line = format!("{{\"event\":\"{e}\",\"data\":{{}}}}");
            assert!(
                crate::entry::AppendRequest::parse(line.as_bytes()).is_err(),
                "{e} accepted"
            );
        }
    }
}
