//! The MQTT payloads of PROTOCOL §7: one type per message, each encoded as
//! the wire version byte (`1`) followed by postcard.
//!
//! Decoding never panics: anything that does not decode, carries another
//! version or exceeds its limit is a [`DecodeError`] value, which receivers
//! count and drop.

mod batch;
mod cmd;
mod hello;
mod misc;
mod nack;
mod receipt;

pub use batch::{EntryBatch, entry_wire_size};
pub use cmd::{CommandDelivery, CommandReply, MAX_CMD_BYTES};
pub use hello::Hello;
pub use misc::{
    ClockEstimate, Heartbeat, ImpedanceSample, PresenceState, StateMsg, SystemMetrics, TimeReply,
    TimeRequest,
};
pub use nack::{Nack, NackEcho, NackKind, RejectReason};
pub use receipt::{HelloEcho, Receipt};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every payload.
pub const VERSION: u8 = 1;
/// Largest `entries` payload (PROTOCOL §7).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Most entries in one batch.
pub const MAX_BATCH_ENTRIES: usize = 4096;
/// Largest payload of any other message.
pub const MAX_OTHER_BYTES: usize = 16 * 1024;
/// Packet size MQTT clients and brokers must allow.
pub const MQTT_MAX_PACKET: usize = 300 * 1024;

/// Why a payload was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("unknown wire version {0} (this is version 1)")]
    Version(u8),
    #[error("payload of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("undecodable payload: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("batch of {0} entries exceeds 4096")]
    TooManyEntries(usize),
    #[error("empty batch")]
    EmptyBatch,
}

/// A message with its size limit.
pub trait Message: Serialize + DeserializeOwned {
    const LIMIT: usize;

    fn encode(&self) -> Vec<u8> {
        let out = vec![VERSION];
        // Serializing into a Vec cannot fail for these types.
        postcard::to_extend(self, out).unwrap_or_else(|_| vec![VERSION])
    }

    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let (&version, body) = payload.split_first().ok_or(DecodeError::Empty)?;
        if payload.len() > Self::LIMIT {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
                limit: Self::LIMIT,
            });
        }
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let (msg, rest) = postcard::take_from_bytes::<Self>(body)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        msg.validate()?;
        Ok(msg)
    }

    /// Checks beyond what the types enforce.
    fn validate(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// Serde helper: a `Vec<u8>` as a byte string (one length prefix, then the
/// bytes), which postcard encodes and decodes without per-byte work.
pub mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Every message must survive a round trip and refuse damaged framing.
    pub fn check_framing<M: Message + PartialEq + std::fmt::Debug>(msg: &M) {
        let bytes = msg.encode();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(&M::decode(&bytes).unwrap(), msg);
        let mut other_version = bytes.clone();
        other_version[0] = 2;
        assert_eq!(M::decode(&other_version), Err(DecodeError::Version(2)));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(M::decode(&trailing), Err(DecodeError::Trailing(1)));
        assert_eq!(M::decode(&[]), Err(DecodeError::Empty));
        for cut in 1..bytes.len() {
            assert!(M::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut huge = bytes;
        huge.resize(M::LIMIT + 1, 0);
        assert!(matches!(
            M::decode(&huge),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
