//! `nack` (gateway → agent, QoS 1): advisory; it can trigger a resend or a
//! hello, never deletion, adoption or a permanent stop (PROTOCOL §7). A
//! reject stops delivery only when it is the gateway's signed answer to one
//! of the agent's last two hellos and its reason is one that stops (rule 3d).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{MAX_OTHER_BYTES, Message};
use crate::crypto::{Nonce, PublicKey, SecretKey, Sig};
use crate::entry::Seq;
use crate::id::AgentId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    Fork,
    BadSignature,
    NotCanonical,
    Invalid,
    UnknownAgent,
    Halted,
    TooLarge,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Fork,
        RejectReason::BadSignature,
        RejectReason::NotCanonical,
        RejectReason::Invalid,
        RejectReason::UnknownAgent,
        RejectReason::Halted,
        RejectReason::TooLarge,
    ];

    /// The protocol's name for the reason, as in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Fork => "fork",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::NotCanonical => "not_canonical",
            RejectReason::Invalid => "invalid",
            RejectReason::UnknownAgent => "unknown_agent",
            RejectReason::Halted => "halted",
            RejectReason::TooLarge => "too_large",
        }
    }

    /// Whether a signed reject with this reason stops delivery: an unknown
    /// agent (which includes a key other than the enrolled one), a fork, a
    /// halted agent. Every other reason only prompts a hello.
    pub fn stops_delivery(self) -> bool {
        matches!(
            self,
            RejectReason::UnknownAgent | RejectReason::Fork | RejectReason::Halted
        )
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackKind {
    /// The gateway's head is `from - 1`: send from `from`.
    Resend { from: Seq },
    /// The batch (or hello) was refused; `seq` is the first offending entry.
    Reject { reason: RejectReason, seq: Seq },
}

/// When a reject answers a `hello`: that hello's nonce and the gateway's
/// signature over `nack_message(gateway, agent, nonce, reason, seq)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NackEcho {
    pub nonce: Nonce,
    pub sig: Sig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub gateway: AgentId,
    pub agent: AgentId,
    pub kind: NackKind,
    /// Present only on a reject answering a hello (rule 3d).
    pub hello: Option<NackEcho>,
}

impl Message for Nack {
    const LIMIT: usize = MAX_OTHER_BYTES;
}

impl Nack {
    /// An unsigned nack: a resend, or a reject answering a batch.
    pub fn new(gateway: &AgentId, agent: &AgentId, kind: NackKind) -> Self {
        Nack {
            gateway: gateway.clone(),
            agent: agent.clone(),
            kind,
            hello: None,
        }
    }

    /// The signed reject a gateway answers a refused hello with.
    pub fn signed_reject(
        key: &SecretKey,
        gateway: &AgentId,
        agent: &AgentId,
        nonce: Nonce,
        reason: RejectReason,
        seq: Seq,
    ) -> Self {
        let sig = key.sign_nack(gateway, agent, &nonce, reason.as_str(), seq);
        Nack {
            hello: Some(NackEcho { nonce, sig }),
            ..Nack::new(gateway, agent, NackKind::Reject { reason, seq })
        }
    }

    /// Whether this nack stops delivery (rule 3d): a reject with a stopping
    /// reason, carrying one of `current` (the agent's last two hello
    /// nonces) and a signature that verifies under the pinned `key`.
    pub fn stops_delivery(&self, key: Option<&PublicKey>, current: &[Nonce]) -> bool {
        let (NackKind::Reject { reason, seq }, Some(echo), Some(key)) =
            (self.kind, self.hello.as_ref(), key)
        else {
            return false;
        };
        reason.stops_delivery()
            && current.contains(&echo.nonce)
            && key.verify_nack(
                &self.gateway,
                &self.agent,
                &echo.nonce,
                reason.as_str(),
                seq,
                &echo.sig,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::check_framing;

    #[test]
    fn framing() {
        let gateway = AgentId::new("gw").unwrap();
        let agent = AgentId::new("pi").unwrap();
        check_framing(&Nack::new(
            &gateway,
            &agent,
            NackKind::Resend { from: Seq(12) },
        ));
        let key = SecretKey::from_seed(&[7; 32]);
        for reason in RejectReason::ALL {
            let seq = Seq(3);
            check_framing(&Nack::new(
                &gateway,
                &agent,
                NackKind::Reject { reason, seq },
            ));
            let nonce = Nonce([5; 16]);
            check_framing(&Nack::signed_reject(
                &key, &gateway, &agent, nonce, reason, seq,
            ));
        }
    }
}
