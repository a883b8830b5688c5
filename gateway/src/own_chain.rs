//! The gateway's own chain (agent id = the gateway's id): `genesis`,
//! `enroll`, `alert`, `gap` and `checkpoint` entries, signed like any
//! agent's. Each entry is signed as it is made (the chain is slow), and is
//! committed in the same transaction as the ingest writes it describes.

use baton_shared::entry::{self, Entry, Seq, Stamp, a_now};
use baton_shared::intake::Head;
use baton_shared::json::{Object, Value};
use baton_shared::{AgentId, EventName, SecretKey};

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

    /// Appends a runtime entry; the returned write must be committed.
    pub fn append(&mut self, unix_ms: i64, event: &str, data: Value) -> Write {
        let seq = self.head.seq.next();
        let stamp = Stamp {
            agent: &self.id,
            seq,
            unix_ms,
            clock: None,
        };
        // Runtime events are valid names and runtime data is small: building
        // cannot fail; an impossible failure records the event as "alert".
        let event = EventName::new(event).unwrap_or_else(|_| {
            EventName::new("alert").unwrap_or_else(|_| unreachable!("\"alert\" is a valid event"))
        });
        let content =
            entry::build_content(&stamp, &event, None, &data).unwrap_or_else(|_| b"{}".to_vec());
        let mut e = Entry::seal(content, self.head.hash);
        e.sig = Some(self.key.sign_checkpoint(&self.id, seq, &e.hash));
        self.head = Head {
            seq,
            hash: e.hash,
            sig: e.sig,
        };
        Write::Entries {
            agent: self.id.clone(),
            first: seq,
            entries: vec![e],
        }
    }

    /// The first entry of a new gateway.
    pub fn genesis(&mut self, unix_ms: i64, software: &str) -> Write {
        let mut d = Object::new();
        d.insert("a_now", Value::from(a_now(unix_ms)));
        d.insert("class", Value::from("GATEWAY"));
        d.insert("software", Value::from(software));
        self.append(unix_ms, "genesis", Value::Object(d))
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
                "enroll",
                enroll_data(&agent, &[7; 32], "c07", None, None),
            ),
            c.append(2, "alert", alert_data("fork", &agent, "seq 4")),
            c.append(3, "checkpoint", checkpoint_data(&agent, &c.head())),
        ];
        for w in writes {
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
}
