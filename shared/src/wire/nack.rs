//! `nack` (gateway → agent, QoS 1): advisory; it can trigger a resend or a
//! hello, never deletion, adoption or a permanent stop (PROTOCOL §7).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{MAX_OTHER_BYTES, Message};
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub gateway: AgentId,
    pub agent: AgentId,
    pub kind: NackKind,
}

impl Message for Nack {
    const LIMIT: usize = MAX_OTHER_BYTES;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::check_framing;

    #[test]
    fn framing() {
        let gateway = AgentId::new("gw").unwrap();
        let agent = AgentId::new("pi").unwrap();
        check_framing(&Nack {
            gateway: gateway.clone(),
            agent: agent.clone(),
            kind: NackKind::Resend { from: Seq(12) },
        });
        for reason in RejectReason::ALL {
            check_framing(&Nack {
                gateway: gateway.clone(),
                agent: agent.clone(),
                kind: NackKind::Reject {
                    reason,
                    seq: Seq(3),
                },
            });
        }
    }
}
