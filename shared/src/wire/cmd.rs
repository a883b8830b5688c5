//! `cmd` (a sender → a child, QoS 1) and `cmd/reply` (a child → its
//! sender, QoS 1): coordination deliveries and their answers (PROTOCOL §9),
//! each at most [`MAX_CMD_BYTES`].

use serde::{Deserialize, Serialize};

use super::Message;
use crate::command::Presented;
use crate::crypto::Sig;
use crate::entry::Entry;
use crate::id::AgentId;

/// Largest `cmd` and `cmd/reply` payload (PROTOCOL §7).
pub const MAX_CMD_BYTES: usize = 32 * 1024;

/// A command delivered to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandDelivery {
    /// The command's canonical content bytes (what its hash is over).
    pub content: Vec<u8>,
    /// Who created it (its content names the same issuer).
    pub issuer: AgentId,
    pub origin_sig: Sig,
    pub sender: AgentId,
    pub recipient: AgentId,
    pub sender_sig: Sig,
    /// Advisory (never used for the clock or the schedule): when it was
    /// sent, in the top's time, and the lead the sender gave it.
    pub sent_ms: i64,
    pub lead_ms: u64,
}

impl CommandDelivery {
    /// The parts [`crate::command::accept`] checks.
    pub fn presented(&self) -> Presented<'_> {
        Presented {
            content: &self.content,
            issuer: &self.issuer,
            origin_sig: &self.origin_sig,
            sender: &self.sender,
            recipient: &self.recipient,
            sender_sig: &self.sender_sig,
        }
    }
}

impl Message for CommandDelivery {
    const LIMIT: usize = MAX_CMD_BYTES;
}

/// An answer: the answering entry as stored (a `command_ack`, or a
/// gateway's `command_result`), signed at once with a checkpoint sig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    pub agent: AgentId,
    pub entry: Entry,
}

impl Message for CommandReply {
    const LIMIT: usize = MAX_CMD_BYTES;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crypto::Hash;
    use crate::wire::DecodeError;
    use crate::wire::test_util::check_framing;

    fn delivery(content: Vec<u8>) -> CommandDelivery {
        CommandDelivery {
            content,
            issuer: AgentId::new("gw-top").unwrap(),
            origin_sig: Sig([1; 64]),
            sender: AgentId::new("gw-c07").unwrap(),
            recipient: AgentId::new("pi-1").unwrap(),
            sender_sig: Sig([2; 64]),
            sent_ms: 1_796_284_800_000,
            lead_ms: 40,
        }
    }

    #[test]
    fn framing_and_the_32_kib_limit() {
        check_framing(&delivery(b"{}".to_vec()));
        check_framing(&CommandReply {
            agent: AgentId::new("pi-1").unwrap(),
            entry: Entry::seal(b"{}".to_vec(), Hash::ZERO),
        });
        let big = delivery(vec![b' '; MAX_CMD_BYTES]).encode();
        assert!(matches!(
            CommandDelivery::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
