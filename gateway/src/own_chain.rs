//! The gateway's own chain (agent id = the gateway's id): `genesis`,
//! `enroll`, `alert`, `gap` and `checkpoint` entries, signed like any
//! agent's. Each entry is signed as it is made (the chain is slow), and is
//! committed in the same transaction as the ingest writes it describes.

use baton_shared::entry::{self, AppendError, ClockInfo, Entry, Seq, Stamp, a_now};
use baton_shared::intake::Head;
use baton_shared::json::{Object, Value};
use baton_shared::{AgentId, EventName, PublicKey, SecretKey};

use crate::store::Write;

#[derive(Debug)]
pub struct OwnChain {
    id: AgentId,
    key: SecretKey,
    head: Head,
}

impl OwnChain {
    /// Continues from the stored head.
    pub fn new(id: AgentId, key: SecretKey, head: Head) -> Self {
        OwnChain { id, key, head }
    }

    pub fn id(&self) -> &AgentId {
        &self.id
    }

    pub fn head(&self) -> Head {
        self.head
    }

    /// After a failed commit: back to what the store holds.
    pub fn reset(&mut self, stored: Head) {
        self.head = stored;
    }

    /// Appends an entry; the returned write must be committed. An entry
    /// that cannot be built (its content over the 64 KiB limit, say a
    /// summary of very many clusters) is refused whole: nothing is signed
    /// and the head stays where it was.
    pub fn append(
        &mut self,
        unix_ms: i64,
        event: OwnEvent,
        data: Value,
    ) -> Result<Write, AppendError> {
        self.append_clocked(unix_ms, event, data, None)
    }

    /// As [`OwnChain::append`], with the entry's `clock` (PROTOCOL §9: an
    /// entry carrying times in the top's time also carries `clock`).
    pub fn append_clocked(
        &mut self,
        unix_ms: i64,
        event: OwnEvent,
        data: Value,
        clock: Option<&ClockInfo>,
    ) -> Result<Write, AppendError> {
        let seq = self.head.seq.next();
        let stamp = Stamp {
            agent: &self.id,
            seq,
            unix_ms,
            clock,
        };
        let name = EventName::new(event.as_str()).map_err(AppendError::Event)?;
        let content = entry::build_content(&stamp, &name, None, &data)?;
        let mut e = Entry::seal(content, self.head.hash);
        e.sig = Some(self.key.sign_checkpoint(&self.id, seq, &e.hash));
        self.head = Head {
            seq,
            hash: e.hash,
            sig: e.sig,
        };
        Ok(Write::Entries {
            agent: self.id.clone(),
            first: seq,
            entries: vec![e],
        })
    }

    /// The first entry of a new gateway.
    pub fn genesis(&mut self, unix_ms: i64, software: &str) -> Result<Write, AppendError> {
        let mut d = Object::new();
        d.insert("a_now", Value::from(a_now(unix_ms)));
        d.insert("class", Value::from("GATEWAY"));
        d.insert("software", Value::from(software));
        self.append(unix_ms, OwnEvent::Genesis, Value::Object(d))
    }
}

/// The events of a gateway's own chain (PROTOCOL §8): a closed set, so no
/// caller can name an event the chain does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnEvent {
    Genesis,
    Enroll,
    Alert,
    Gap,
    Checkpoint,
    AgentState,
    ClusterSummary,
    /// An operator action: what, by which channel and credential.
    Operator,
    /// A command this gateway took (PROTOCOL §9), before it sends anything.
    Command,
    /// A command's gathered answers, in its window and final phases.
    CommandResult,
}

impl OwnEvent {
    pub const ALL: [OwnEvent; 10] = [
        OwnEvent::Genesis,
        OwnEvent::Enroll,
        OwnEvent::Alert,
        OwnEvent::Gap,
        OwnEvent::Checkpoint,
        OwnEvent::AgentState,
        OwnEvent::ClusterSummary,
        OwnEvent::Operator,
        OwnEvent::Command,
        OwnEvent::CommandResult,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OwnEvent::Genesis => "genesis",
            OwnEvent::Enroll => "enroll",
            OwnEvent::Alert => "alert",
            OwnEvent::Gap => "gap",
            OwnEvent::Checkpoint => "checkpoint",
            OwnEvent::AgentState => "agent_state",
            OwnEvent::ClusterSummary => "cluster_summary",
            OwnEvent::Operator => "operator",
            OwnEvent::Command => "command",
            OwnEvent::CommandResult => "command_result",
        }
    }
}

/// `{"agent": A, "seq": N, "hash": H, "sig": S}`: a head the gateway holds.
pub fn checkpoint_data(agent: &AgentId, head: &Head) -> Value {
    let mut d = Object::new();
    d.insert("agent", Value::from(agent.as_str()));
    d.insert("seq", Value::from(head.seq.0));
    d.insert("hash", Value::from(head.hash.to_hex()));
    if let Some(sig) = head.sig {
        d.insert("sig", Value::from(sig.to_hex()));
    }
    Value::Object(d)
}

/// `{"kind": …, "agent": …, "detail": …}`.
pub fn alert_data(kind: &str, agent: &AgentId, detail: &str) -> Value {
    Value::Object(alert_object(kind, agent, detail))
}

/// An alert about a child gateway's doing: [`alert_data`] plus
/// `"child": C`, the child it names.
pub fn child_alert_data(kind: &str, agent: &AgentId, child: &AgentId, detail: &str) -> Value {
    let mut d = alert_object(kind, agent, detail);
    d.insert("child", Value::from(child.as_str()));
    Value::Object(d)
}

fn alert_object(kind: &str, agent: &AgentId, detail: &str) -> Object {
    let mut d = Object::new();
    d.insert("kind", Value::from(kind));
    d.insert("agent", Value::from(agent.as_str()));
    d.insert("detail", Value::from(detail));
    d
}

/// `{"reason": "gateway_data_loss", "agent": A, "from": a, "to": b}`.
pub fn gap_data(agent: &AgentId, from: Seq, to: Seq) -> Value {
    let mut d = Object::new();
    d.insert("reason", Value::from("gateway_data_loss"));
    d.insert("agent", Value::from(agent.as_str()));
    d.insert("from", Value::from(from.0));
    d.insert("to", Value::from(to.0));
    Value::Object(d)
}

/// `{"agent": A, "public_key": hex, "cluster": C}`, plus `start_seq` and
/// `revoked_from_seq` when the enrollment has them (a parent that learns
/// the agent from this entry applies them too).
pub fn enroll_data(
    agent: &AgentId,
    public_key: &[u8; 32],
    cluster: &str,
    start_seq: Option<Seq>,
    revoked_from_seq: Option<Seq>,
) -> Value {
    let mut d = Object::new();
    d.insert("agent", Value::from(agent.as_str()));
    d.insert("public_key", Value::from(hex_of(public_key)));
    d.insert("cluster", Value::from(cluster));
    if let Some(s) = start_seq {
        d.insert("start_seq", Value::from(s.0));
    }
    if let Some(s) = revoked_from_seq {
        d.insert("revoked_from_seq", Value::from(s.0));
    }
    Value::Object(d)
}

/// An `enroll` entry's data read back: what a parent takes as a vouch and
/// what a rebuilt store takes its registry from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollData {
    pub agent: AgentId,
    pub public_key: PublicKey,
    pub start_seq: Option<Seq>,
    pub revoked_from_seq: Option<Seq>,
    /// How the trust came about (`by`, [`crate::store::EnrolledBy::describe`]),
    /// when the entry says.
    pub by: Option<String>,
}

impl EnrollData {
    /// `None` unless the data names a valid agent and key and any seqs it
    /// has are seqs.
    pub fn parse(data: Option<&Value>) -> Option<EnrollData> {
        let o = data?.as_object()?;
        let agent = AgentId::new(o.get("agent")?.as_str()?).ok()?;
        let public_key = PublicKey::trusted_hex(o.get("public_key")?.as_str()?).ok()?;
        // Optional: a seq if present, and then it must be one.
        let seq_field = |name: &str| match o.get(name) {
            None => Some(None),
            Some(v) => v.as_exact_u64().filter(|n| *n > 0).map(|n| Some(Seq(n))),
        };
        Some(EnrollData {
            agent,
            public_key,
            start_seq: seq_field("start_seq")?,
            revoked_from_seq: seq_field("revoked_from_seq")?,
            by: o.get("by").and_then(|v| v.as_str()).map(str::to_owned),
        })
    }
}

/// An alert that halts `agent` at `seq` (a fork, a cloned identity):
/// [`alert_data`] plus `"seq": N`, so that a rebuilt store halts it again.
pub fn halt_alert_data(kind: &str, agent: &AgentId, seq: Seq, detail: &str) -> Value {
    let mut d = alert_object(kind, agent, detail);
    d.insert("seq", Value::from(seq.0));
    Value::Object(d)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_shared::verify::{Verdict, verify_text};

    #[test]
    fn own_chain_verifies_under_the_gateway_key() {
        let key = SecretKey::from_seed(&[9; 32]);
        let id = AgentId::new("gw-1").unwrap();
        let mut c = OwnChain::new(id.clone(), key.clone(), Head::EMPTY);
        let mut text = String::new();
        let agent = AgentId::new("pi-1").unwrap();
        let writes = [
            c.genesis(1_795_460_700_123, "baton-gateway 0.1.0"),
            c.append(
                1,
                OwnEvent::Enroll,
                enroll_data(&agent, &[7; 32], "c07", None, None),
            ),
            c.append(2, OwnEvent::Alert, alert_data("fork", &agent, "seq 4")),
            c.append(3, OwnEvent::Checkpoint, checkpoint_data(&agent, &c.head())),
        ];
        for w in writes {
            let w = w.unwrap();
            let Write::Entries { entries, .. } = w else {
                panic!()
            };
            text.push_str(&entries[0].to_jsonl());
            text.push('\n');
        }
        let v = verify_text(text.as_bytes(), Some(key.public()));
        let Verdict::Valid(s) = &v else { panic!("{v}") };
        assert_eq!(s.authenticated_through, Seq(4));
        assert_eq!(a_now(1_795_460_700_123), "20261123190500");
    }

    #[test]
    fn every_event_is_a_valid_name() {
        for e in OwnEvent::ALL {
            assert!(EventName::new(e.as_str()).is_ok(), "{}", e.as_str());
        }
    }

    /// Regression: an entry that could not be built was signed with `{}`
    /// as its content. Now it is refused and the chain stays as it was.
    #[test]
    fn an_entry_too_large_to_build_is_refused_and_nothing_is_signed() {
        let key = SecretKey::from_seed(&[9; 32]);
        let mut c = OwnChain::new(AgentId::new("gw-1").unwrap(), key, Head::EMPTY);
        c.genesis(1, "baton-gateway").unwrap();
        let before = c.head();
        let huge = Value::from("x".repeat(entry::MAX_CONTENT_BYTES));
        let refused = c.append(2, OwnEvent::ClusterSummary, huge);
        assert!(
            matches!(refused, Err(AppendError::TooLarge(_))),
            "{refused:?}"
        );
        assert_eq!(c.head(), before);
        assert!(c.append(3, OwnEvent::Alert, Value::from("ok")).is_ok());
        assert_eq!(c.head().seq, Seq(2));
    }
}
