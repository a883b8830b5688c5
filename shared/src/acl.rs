//! Who may publish and read which topics on a cluster's broker (PROTOCOL
//! §7's directions), as one pure table: the embedded broker enforces it
//! per packet, and the printed Mosquitto ACL is generated from the same
//! lists, so the two stay equivalent.

use crate::id::{AgentId, ClusterId};
use crate::topic::{self, Kind};

/// What a device publishes about itself (agent → gateway).
pub const DEVICE_WRITES: [Kind; 6] = [
    Kind::Hello,
    Kind::Entries,
    Kind::Hb,
    Kind::Time,
    Kind::State,
    Kind::CmdReply,
];

/// What only the gateway publishes to a device (gateway → agent).
pub const DEVICE_READS: [Kind; 4] = [Kind::Ack, Kind::Nack, Kind::TimeReply, Kind::Cmd];

/// What a child gateway's forwarder publishes for the chains it forwards.
pub const CHILD_WRITES: [Kind; 4] = [Kind::Hello, Kind::Entries, Kind::Time, Kind::CmdReply];

/// What a child gateway's forwarder reads for the chains it forwards.
pub const CHILD_READS: [Kind; 4] = [Kind::Ack, Kind::Nack, Kind::TimeReply, Kind::Cmd];

/// The largest retained message a device may leave (its `state`).
pub const MAX_RETAINED: usize = 1024;

/// Who is connected, as the broker authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The cluster's gateway: every topic.
    Gateway,
    /// A device of `cluster`: only its own topics, in the protocol's
    /// direction.
    Device { cluster: ClusterId, agent: AgentId },
    /// A child gateway forwarding its cluster's chains (PROTOCOL §8).
    Child { cluster: ClusterId },
}

/// One thing a client asks of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    Publish {
        topic: &'a str,
        retain: bool,
        len: usize,
    },
    Subscribe {
        filter: &'a str,
    },
}

/// Why an access was denied (for the log and the counter label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Not one of the principal's topics, or the wrong direction.
    Topic,
    /// Retained where only a device's own `state` may be, or too large.
    Retain,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Topic => "topic",
            Denied::Retain => "retain",
        }
    }
}

impl Principal {
    /// Whether the principal may do `access`.
    pub fn allows(&self, access: Access<'_>) -> Result<(), Denied> {
        let (cluster, agent, writes, reads): (_, Option<&AgentId>, &[Kind], &[Kind]) = match self {
            Principal::Gateway => return Ok(()),
            Principal::Device { cluster, agent } => {
                (cluster, Some(agent), &DEVICE_WRITES, &DEVICE_READS)
            }
            Principal::Child { cluster } => (cluster, None, &CHILD_WRITES, &CHILD_READS),
        };
        match access {
            Access::Publish { topic, retain, len } => {
                let kind = own_kind(topic, cluster, agent, false).ok_or(Denied::Topic)?;
                if !writes.contains(&kind) {
                    return Err(Denied::Topic);
                }
                if retain && (kind != Kind::State || agent.is_none() || len > MAX_RETAINED) {
                    return Err(Denied::Retain);
                }
                Ok(())
            }
            Access::Subscribe { filter } => {
                let kind = own_kind(filter, cluster, agent, true).ok_or(Denied::Topic)?;
                if reads.contains(&kind) {
                    Ok(())
                } else {
                    Err(Denied::Topic)
                }
            }
        }
    }
}

/// The kind of `topic` if it is one of `agent`'s own topics on `cluster`
/// (any agent of the cluster when `agent` is `None`; then a subscription
/// may name them all with `+`). No other wildcard is anyone's own.
fn own_kind(
    topic: &str,
    cluster: &ClusterId,
    agent: Option<&AgentId>,
    filter: bool,
) -> Option<Kind> {
    let t = topic::parse(topic)?;
    let kind = t.kind?;
    if t.cluster != cluster.as_str() {
        return None;
    }
    let agent_ok = match agent {
        Some(a) => t.agent == a.as_str(),
        None => (filter && t.agent == "+") || AgentId::new(t.agent).is_ok(),
    };
    agent_ok.then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Principal {
        Principal::Device {
            cluster: ClusterId::new("c1").unwrap(),
            agent: AgentId::new("pi-1").unwrap(),
        }
    }

    fn publish(topic: &str) -> Access<'_> {
        Access::Publish {
            topic,
            retain: false,
            len: 10,
        }
    }

    #[test]
    fn a_device_writes_and_reads_only_its_own_topics_in_the_protocols_direction() {
        let d = device();
        for k in DEVICE_WRITES {
            assert_eq!(d.allows(publish(&topic::agent("c1", "pi-1", k))), Ok(()));
            let filter = topic::agent("c1", "pi-1", k);
            assert_eq!(
                d.allows(Access::Subscribe { filter: &filter }),
                Err(Denied::Topic)
            );
        }
        for k in DEVICE_READS {
            let t = topic::agent("c1", "pi-1", k);
            assert_eq!(d.allows(publish(&t)), Err(Denied::Topic), "{t}");
            assert_eq!(d.allows(Access::Subscribe { filter: &t }), Ok(()));
        }
        let root = topic::ROOT;
        for t in [
            topic::agent("c1", "pi-2", Kind::Hb),
            topic::agent("c2", "pi-1", Kind::Hb),
            topic::cluster_filter("c1", Kind::Hb),
            format!("{root}/c1/pi-1/#"),
            format!("{root}/c1/#"),
            "#".to_owned(),
            topic::summary("c1"),
            format!("{root}/c1/pi-1/other"),
            "$SYS/broker/load".to_owned(),
        ] {
            assert_eq!(d.allows(publish(&t)), Err(Denied::Topic), "{t}");
            let filter = Access::Subscribe { filter: &t };
            assert_eq!(d.allows(filter), Err(Denied::Topic), "{t}");
        }
    }

    #[test]
    fn only_a_small_own_state_may_be_retained() {
        let d = device();
        let state = topic::agent("c1", "pi-1", Kind::State);
        let retained = |topic, len| Access::Publish {
            topic,
            retain: true,
            len,
        };
        assert_eq!(d.allows(retained(&state, 40)), Ok(()));
        assert_eq!(
            d.allows(retained(&state, MAX_RETAINED + 1)),
            Err(Denied::Retain)
        );
        let hb = topic::agent("c1", "pi-1", Kind::Hb);
        assert_eq!(d.allows(retained(&hb, 40)), Err(Denied::Retain));
    }

    #[test]
    fn a_child_forwards_chains_on_its_own_cluster_only() {
        let c = Principal::Child {
            cluster: ClusterId::new("c7").unwrap(),
        };
        let t = |cluster: &str, agent: &str, k| topic::agent(cluster, agent, k);
        assert_eq!(c.allows(publish(&t("c7", "pi-9", Kind::Entries))), Ok(()));
        assert_eq!(
            c.allows(publish(&t("c7", "pi-9", Kind::Hb))),
            Err(Denied::Topic)
        );
        let other_cluster = t("c1", "pi-9", Kind::Entries);
        assert_eq!(c.allows(publish(&other_cluster)), Err(Denied::Topic));
        let wildcard = topic::cluster_filter("c7", Kind::Entries);
        assert_eq!(c.allows(publish(&wildcard)), Err(Denied::Topic));
        let ack = topic::cluster_filter("c7", Kind::Ack);
        assert_eq!(c.allows(Access::Subscribe { filter: &ack }), Ok(()));
        let other = topic::cluster_filter("c1", Kind::Ack);
        assert_eq!(
            c.allows(Access::Subscribe { filter: &other }),
            Err(Denied::Topic)
        );
        let state = topic::agent("c7", "pi-9", Kind::State);
        let retained = Access::Publish {
            topic: &state,
            retain: true,
            len: 1,
        };
        assert_eq!(c.allows(retained), Err(Denied::Topic));
        assert_eq!(Principal::Gateway.allows(publish("anything")), Ok(()));
    }
}
