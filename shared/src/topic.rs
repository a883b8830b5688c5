//! MQTT topics (PROTOCOL §7, §8), formatted and parsed here and nowhere
//! else: `baton/v1/{cluster}/{agent}/{suffix}` for a chain's messages,
//! `baton/v1/{cluster}/summary` for the retained cluster summary. A later
//! wire version changes [`ROOT`] and nothing else in the code.

use core::fmt::Display;

/// The topic root of this wire version.
pub const ROOT: &str = "baton/v1";

/// What a chain's topic carries (the suffix after `{cluster}/{agent}/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Hello,
    Entries,
    Ack,
    Nack,
    Hb,
    Time,
    TimeReply,
    State,
    Cmd,
    CmdReply,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Hello,
        Kind::Entries,
        Kind::Ack,
        Kind::Nack,
        Kind::Hb,
        Kind::Time,
        Kind::TimeReply,
        Kind::State,
        Kind::Cmd,
        Kind::CmdReply,
    ];

    /// The topic suffix, as PROTOCOL §7's table names it.
    pub fn suffix(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Entries => "entries",
            Kind::Ack => "ack",
            Kind::Nack => "nack",
            Kind::Hb => "hb",
            Kind::Time => "time",
            Kind::TimeReply => "time/reply",
            Kind::State => "state",
            Kind::Cmd => "cmd",
            Kind::CmdReply => "cmd/reply",
        }
    }

    /// The kind a suffix names; `None` for anything else.
    pub fn from_suffix(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.suffix() == s)
    }
}

/// `baton/v1/{cluster}/{agent}/{suffix}`.
pub fn agent(cluster: impl Display, agent: impl Display, kind: Kind) -> String {
    format!("{ROOT}/{cluster}/{agent}/{}", kind.suffix())
}

/// The filter for one kind from every agent of a cluster:
/// `baton/v1/{cluster}/+/{suffix}`.
pub fn cluster_filter(cluster: impl Display, kind: Kind) -> String {
    agent(cluster, "+", kind)
}

/// The cluster summary, published retained: `baton/v1/{cluster}/summary`.
pub fn summary(cluster: impl Display) -> String {
    format!("{ROOT}/{cluster}/summary")
}

/// A chain's topic taken apart. The ids are as they stand in the topic:
/// the caller validates them (`AgentId::new`, `ClusterId::new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentTopic<'a> {
    pub cluster: &'a str,
    pub agent: &'a str,
    /// `None`: a suffix the protocol does not define (the raw text is in
    /// `suffix`).
    pub kind: Option<Kind>,
    pub suffix: &'a str,
}

/// Parses `baton/v1/{cluster}/{agent}/{suffix}`; `None` when the topic is
/// not of that shape (another root, a missing or empty level).
pub fn parse(topic: &str) -> Option<AgentTopic<'_>> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (cluster, rest) = rest.split_once('/')?;
    let (agent, suffix) = rest.split_once('/')?;
    if cluster.is_empty() || agent.is_empty() || suffix.is_empty() {
        return None;
    }
    Some(AgentTopic {
        cluster,
        agent,
        kind: Kind::from_suffix(suffix),
        suffix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for k in Kind::ALL {
            let t = agent("c1", "pi-1", k);
            let p = parse(&t).unwrap();
            assert_eq!((p.cluster, p.agent, p.kind), ("c1", "pi-1", Some(k)));
        }
        assert_eq!(
            agent("c1", "pi-1", Kind::TimeReply),
            "baton/v1/c1/pi-1/time/reply"
        );
        assert_eq!(cluster_filter("c1", Kind::Entries), "baton/v1/c1/+/entries");
        assert_eq!(summary("c1"), "baton/v1/c1/summary");
    }

    #[test]
    fn other_shapes_are_refused() {
        for t in [
            "baton/v2/c1/pi-1/hello",
            "baton/v1/c1/pi-1",
            "baton/v1/c1//hello",
            "baton/v1//pi-1/hello",
            "baton/v1/c1/pi-1/",
            "baton/v1/c1/summary",
            "xbaton/v1/c1/pi-1/hello",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
        let odd = parse("baton/v1/c1/pi-1/what/ever").unwrap();
        assert_eq!((odd.kind, odd.suffix), (None, "what/ever"));
    }
}
