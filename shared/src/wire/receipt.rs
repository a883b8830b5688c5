//! `ack` (gateway → agent, QoS 1): the gateway's signed, cumulative receipt
//! (PROTOCOL §4, §7 rules 1–3).

use serde::{Deserialize, Serialize};

use super::{MAX_OTHER_BYTES, Message};
use crate::crypto::{Hash, Nonce, PublicKey, SecretKey, Sig};
use crate::entry::Seq;
use crate::id::AgentId;

/// When a receipt answers a `hello`: the hello's nonce, and the agent's own
/// `sig` stored on entry `seq` (absent only for seq 0). The gateway's public
/// key rides along so that an agent configured to pin on first contact can
/// learn it; an agent with a pinned key ignores it (a different key is an
/// alert, never a re-pin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloEcho {
    pub nonce: Nonce,
    pub agent_sig: Option<Sig>,
    pub gateway_key: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub gateway: AgentId,
    pub agent: AgentId,
    /// The gateway's contiguous durable head for the agent (0: nothing).
    pub seq: Seq,
    pub hash: Hash,
    /// The gateway's signature over `receipt_message(gateway, agent, seq, hash)`.
    pub sig: Sig,
    pub hello: Option<HelloEcho>,
}

impl Message for Receipt {
    const LIMIT: usize = MAX_OTHER_BYTES;
}

impl Receipt {
    /// Signs a receipt for `(seq, hash)`.
    pub fn sign(key: &SecretKey, gateway: &AgentId, agent: &AgentId, seq: Seq, hash: Hash) -> Self {
        Receipt {
            gateway: gateway.clone(),
            agent: agent.clone(),
            seq,
            hash,
            sig: key.sign_receipt(gateway, agent, seq, &hash),
            hello: None,
        }
    }

    /// Whether the gateway signature verifies under `key` (strictly).
    pub fn verify(&self, key: &PublicKey) -> bool {
        key.verify_receipt(&self.gateway, &self.agent, self.seq, &self.hash, &self.sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::check_framing;

    #[test]
    fn framing_and_signature() {
        let key = SecretKey::from_seed(&[5; 32]);
        let mut r = Receipt::sign(
            &key,
            &AgentId::new("gw").unwrap(),
            &AgentId::new("pi").unwrap(),
            Seq(9),
            Hash([4; 32]),
        );
        assert!(r.verify(&key.public()));
        check_framing(&r);
        r.hello = Some(HelloEcho {
            nonce: Nonce([1; 16]),
            agent_sig: Some(Sig([2; 64])),
            gateway_key: key.public().to_bytes(),
        });
        check_framing(&r);
        r.seq = Seq(10);
        assert!(!r.verify(&key.public()));
    }
}
