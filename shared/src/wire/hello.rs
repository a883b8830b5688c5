//! `hello` (agent → gateway, QoS 1): who the agent is and where its chain
//! stands, with a fresh nonce the answer must echo (PROTOCOL §7 rule 3).

use serde::{Deserialize, Serialize};

use super::{MAX_OTHER_BYTES, Message};
use crate::crypto::{Hash, Nonce};
use crate::entry::Seq;
use crate::id::AgentId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub agent: AgentId,
    /// The agent's public key (informational: gateways trust only enrolled keys).
    pub public_key: [u8; 32],
    pub head_seq: Seq,
    pub head_hash: Hash,
    pub nonce: Nonce,
    pub software: String,
}

impl Message for Hello {
    const LIMIT: usize = MAX_OTHER_BYTES;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::check_framing;

    #[test]
    fn framing() {
        check_framing(&Hello {
            agent: AgentId::new("pi-1").unwrap(),
            public_key: [3; 32],
            head_seq: Seq(41),
            head_hash: Hash([7; 32]),
            nonce: Nonce([9; 16]),
            software: "baton-agent 0.1.0".into(),
        });
    }

    #[test]
    fn an_invalid_agent_id_does_not_decode() {
        let mut bytes = Hello {
            agent: AgentId::new("pi-1").unwrap(),
            public_key: [3; 32],
            head_seq: Seq(1),
            head_hash: Hash([7; 32]),
            nonce: Nonce([9; 16]),
            software: String::new(),
        }
        .encode();
        // byte 1 is the id's length, bytes 2.. its characters
        bytes[3] = b'/';
        assert!(Hello::decode(&bytes).is_err());
    }
}
