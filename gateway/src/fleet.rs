//! The fleet as this gateway knows it: a derived view of the gateway
//! chains it holds, for the console's drill-down (fleet → sector →
//! cluster → agent) at every tier.
//!
//! Every gateway's own chain says, in entries the parent verifies, which
//! agents it enrolled first-hand (`enroll` with `by` operator, key-file,
//! first-use), which child gateways it took (`by: child-gateway(C)`), each
//! state change of its agents (`agent_state`) and its cluster's figures
//! (`cluster_summary`). Every chain is forwarded up, so the top reads the
//! whole tree from them; a sector its subtree; a cluster itself. What a
//! chain says counts only within its writer's authority: a gateway speaks
//! for its own cluster's agents and summary, never for another's, and an
//! agent's own chain is never read here (any program may append any
//! event name to it).
//!
//! The view is kept in the store (`Write::Fleet…`, committed with the
//! entries it was learned from), so it survives a restart.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::registry::Registry;
pub use crate::store::{AgentNode, ClusterNode};
use crate::store::{AgentRecord, EnrolledBy, Write};
use baton_shared::json::{self, Mode, Object, Value};
use baton_shared::{AgentId, ClusterId, Entry};

#[derive(Debug, Default)]
pub struct FleetView {
    own_cluster: String,
    /// gateway id → its cluster.
    gateways: HashMap<AgentId, String>,
    clusters: BTreeMap<String, ClusterNode>,
    agents: HashMap<AgentId, AgentNode>,
    /// Moves with every change (the console's live updates compare it).
    version: u64,
}

/// The events a gateway chain says something of the fleet with; an entry
/// whose canonical content names none of them is not parsed.
const EVENTS: [&[u8]; 4] = [
    b"\"event\":\"enroll\"",
    b"\"event\":\"agent_state\"",
    b"\"event\":\"cluster_summary\"",
    b"\"event\":\"operator\"",
];

impl FleetView {
    /// The view kept in the store, completed with what the store's
    /// registry says (stores from before the view was kept): this gateway
    /// and its cluster, its child gateways, its first-hand agents.
    pub fn new(
        own: &AgentId,
        own_cluster: &ClusterId,
        clusters: Vec<(String, ClusterNode)>,
        agents: Vec<(AgentId, AgentNode)>,
        records: &[(AgentId, AgentRecord)],
    ) -> FleetView {
        let mut v = FleetView {
            own_cluster: own_cluster.to_string(),
            clusters: clusters.into_iter().collect(),
            agents: agents.into_iter().collect(),
            ..FleetView::default()
        };
        let own_node = v
            .clusters
            .entry(v.own_cluster.clone())
            .or_insert_with(|| ClusterNode {
                gateway: own.to_string(),
                parent: None,
                summary: None,
                at_ms: 0,
            });
        own_node.gateway = own.to_string();
        for (id, r) in records {
            match &r.enrolled_by {
                EnrolledBy::ChildGateway { cluster } => {
                    let c = cluster.to_string();
                    v.clusters.entry(c).or_insert_with(|| ClusterNode {
                        gateway: id.to_string(),
                        parent: Some(own_cluster.to_string()),
                        summary: None,
                        at_ms: 0,
                    });
                }
                EnrolledBy::Operator | EnrolledBy::KeyFile | EnrolledBy::TrustOnFirstUse => {
                    v.agents.entry(id.clone()).or_insert_with(|| AgentNode {
                        cluster: own_cluster.to_string(),
                        state: None,
                        reason: String::new(),
                        since_ms: 0,
                    });
                }
                EnrolledBy::SelfChain | EnrolledBy::Vouched { .. } => {}
            }
        }
        for (c, n) in &v.clusters {
            if let Ok(g) = AgentId::new(&n.gateway) {
                v.gateways.insert(g, c.clone());
            }
        }
        v
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn own_cluster(&self) -> &str {
        &self.own_cluster
    }

    pub fn clusters(&self) -> &BTreeMap<String, ClusterNode> {
        &self.clusters
    }

    pub fn agents(&self) -> &HashMap<AgentId, AgentNode> {
        &self.agents
    }

    pub fn agent(&self, id: &AgentId) -> Option<&AgentNode> {
        self.agents.get(id)
    }

    /// The cluster gateway `id` leads, when this view reads its chain.
    pub fn cluster_of_gateway(&self, id: &AgentId) -> Option<&str> {
        self.gateways.get(id).map(String::as_str)
    }

    /// Whether `id` is a gateway this view reads the chain of.
    pub fn is_gateway(&self, id: &AgentId) -> bool {
        self.gateways.contains_key(id)
    }

    /// Learns from a group about to be committed: the entries of gateway
    /// chains, and this gateway's unenrollments. Returns the rows to
    /// write with the group.
    pub fn learn(&mut self, staged: &[Write]) -> Vec<Write> {
        let mut touched_agents: Vec<AgentId> = Vec::new();
        let mut touched_clusters: Vec<String> = Vec::new();
        for w in staged {
            match w {
                Write::Entries { agent, entries, .. } => {
                    let Some(cluster) = self.gateways.get(agent).cloned() else {
                        continue;
                    };
                    for e in entries {
                        self.entry(
                            agent,
                            &cluster,
                            e,
                            &mut touched_agents,
                            &mut touched_clusters,
                        );
                    }
                }
                Write::Unenroll { agent } if self.agents.remove(agent).is_some() => {
                    touched_agents.push(agent.clone());
                }
                _ => {}
            }
        }
        if touched_agents.is_empty() && touched_clusters.is_empty() {
            return Vec::new();
        }
        self.version += 1;
        touched_agents.sort();
        touched_agents.dedup();
        touched_clusters.sort();
        touched_clusters.dedup();
        let mut out: Vec<Write> = touched_agents
            .into_iter()
            .map(|a| Write::FleetAgent {
                node: self.agents.get(&a).cloned(),
                agent: a,
            })
            .collect();
        out.extend(touched_clusters.into_iter().filter_map(|c| {
            Some(Write::FleetCluster {
                node: self.clusters.get(&c)?.clone(),
                cluster: c,
            })
        }));
        out
    }

    /// One entry of gateway `writer`'s chain (cluster `cluster`).
    fn entry(
        &mut self,
        writer: &AgentId,
        cluster: &str,
        e: &Entry,
        agents: &mut Vec<AgentId>,
        clusters: &mut Vec<String>,
    ) {
        if !EVENTS
            .iter()
            .any(|pat| e.content.windows(pat.len()).any(|w| w == *pat))
        {
            return;
        }
        let Ok(content) = json::parse(&e.content, Mode::Verify) else {
            return;
        };
        let Some(o) = content.as_object() else {
            return;
        };
        let data = o.get("data");
        let field = |name: &str| data.and_then(Value::as_object).and_then(|d| d.get(name));
        let named = || {
            field("agent")
                .and_then(Value::as_str)
                .and_then(|a| AgentId::new(a).ok())
        };
        let ts = o
            .get("ts")
            .and_then(Value::as_str)
            .and_then(baton_shared::entry::parse_timestamp)
            .unwrap_or(0);
        match o.get("event").and_then(Value::as_str) {
            Some("enroll") => {
                let Some(d) = crate::own_chain::EnrollData::parse(data) else {
                    return;
                };
                match crate::rebuild::trusted_by(d.by.as_deref()) {
                    Some(EnrolledBy::ChildGateway { cluster: child }) => {
                        let c = child.to_string();
                        let node = self
                            .clusters
                            .entry(c.clone())
                            .or_insert_with(|| ClusterNode {
                                gateway: d.agent.to_string(),
                                parent: None,
                                summary: None,
                                at_ms: 0,
                            });
                        node.gateway = d.agent.to_string();
                        node.parent = Some(cluster.to_owned());
                        self.gateways.insert(d.agent, c.clone());
                        clusters.push(c);
                    }
                    // first-hand: the agent is in the writer's cluster
                    Some(_) => {
                        let node = self.agents.entry(d.agent.clone()).or_insert(AgentNode {
                            cluster: cluster.to_owned(),
                            state: None,
                            reason: String::new(),
                            since_ms: ts,
                        });
                        node.cluster = cluster.to_owned();
                        agents.push(d.agent);
                    }
                    // vouched for by a child: that child's chain says where
                    None => {}
                }
            }
            Some("agent_state") => {
                let (Some(a), Some(to)) = (named(), field("to").and_then(Value::as_str)) else {
                    return;
                };
                // only the agent's own gateway speaks of its state
                let Some(node) = self.agents.get_mut(&a).filter(|n| n.cluster == cluster) else {
                    return;
                };
                if ts >= node.since_ms || node.state.is_none() {
                    node.state = Some(to.to_owned());
                    node.reason = field("reason")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    node.since_ms = ts;
                    agents.push(a);
                }
            }
            Some("cluster_summary") => {
                let Some(node) = self
                    .clusters
                    .get_mut(cluster)
                    .filter(|n| n.gateway == writer.as_str())
                else {
                    return;
                };
                let at_ms = field("at_ms").and_then(Value::as_f64).map_or(ts, |t| {
                    #[allow(clippy::cast_possible_truncation)]
                    let t = t as i64;
                    t
                });
                if at_ms >= node.at_ms {
                    node.summary = data.map(baton_shared::canonical::to_vec);
                    node.at_ms = at_ms;
                    clusters.push(cluster.to_owned());
                }
            }
            Some("operator") => {
                if field("action").and_then(Value::as_str) == Some("unenroll")
                    && let Some(a) = named()
                    && self.agents.get(&a).is_some_and(|n| n.cluster == cluster)
                {
                    self.agents.remove(&a);
                    agents.push(a);
                }
            }
            _ => {}
        }
    }
}

/// What the agent list is asked for (`GET /api/v1/fleet/agents`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AgentQuery {
    pub cluster: Option<String>,
    /// A substring of the id.
    pub q: Option<String>,
    pub state: Option<String>,
    /// One of [`SORTS`] (default `id`).
    pub sort: Option<String>,
    /// `asc` (default) or `desc`.
    pub order: Option<String>,
    /// From 1.
    pub page: Option<usize>,
    /// Rows a page, 1–[`MAX_PER_PAGE`] (default 50).
    pub per: Option<usize>,
}

/// Rows a page holds at most.
pub const MAX_PER_PAGE: usize = 500;

/// The sort keys `GET /api/v1/fleet/agents` takes.
pub const SORTS: [&str; 7] = [
    "id",
    "cluster",
    "state",
    "impedance",
    "last_seen",
    "backlog",
    "clock_offset",
];

/// One agent as the list filters and sorts it: borrowed from the view and
/// the registry, so the whole fleet is ordered without building a row of
/// JSON for each (only the page's rows are built).
struct Row<'a> {
    id: &'a AgentId,
    node: &'a AgentNode,
    /// Live where this gateway hears the agent itself, else as its
    /// gateway's chain last said.
    state: &'a str,
    /// The figure sorted by, where the sort is by one.
    figure: Option<f64>,
}

/// One page of the agents this gateway knows (its own live, the rest as
/// their gateways' chains last said), filtered by cluster, by a substring
/// of the id and by state, sorted: `{"total", "page", "per", "rows"}`; a
/// bad parameter is an error naming it.
pub fn agent_page(
    view: &FleetView,
    reg: &Registry,
    q: &AgentQuery,
    now: Duration,
) -> Result<Value, String> {
    let sort = q.sort.as_deref().unwrap_or("id");
    if !SORTS.contains(&sort) {
        return Err(format!("sort: one of {}", SORTS.join(", ")));
    }
    let descending = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err("order: asc or desc".into()),
    };
    let per = q.per.unwrap_or(50);
    if per == 0 || per > MAX_PER_PAGE {
        return Err(format!("per: 1–{MAX_PER_PAGE}"));
    }
    let page = q.page.unwrap_or(1);
    if page == 0 {
        return Err("page: from 1".into());
    }
    if let Some(st) = q.state.as_deref()
        && !baton_shared::liveness::AgentState::ALL
            .iter()
            .any(|a| a.as_str() == st)
    {
        return Err(
            "state: one of active, degraded, clock_skewed, suspect, offline, quarantined".into(),
        );
    }
    let needle = q.q.as_deref().unwrap_or("").to_ascii_lowercase();
    #[allow(clippy::cast_precision_loss)]
    let mut rows: Vec<Row<'_>> = view
        .agents()
        .iter()
        .filter(|(id, n)| {
            q.cluster.as_deref().is_none_or(|c| c == n.cluster)
                && (needle.is_empty() || id.as_str().contains(&needle))
        })
        .map(|(id, node)| {
            let facts = reg.list_facts(id);
            let state = facts.map_or_else(
                || node.state.as_deref().unwrap_or("unknown"),
                |f| f.state.as_str(),
            );
            let figure = facts.and_then(|f| match sort {
                "impedance" => f.impedance_ms,
                "last_seen" => f.last_seen_ms.map(|x| x as f64),
                "backlog" => f.backlog.map(|x| x as f64),
                "clock_offset" => f.clock_offset_ms.map(|x| x as f64),
                _ => None,
            });
            Row {
                id,
                node,
                state,
                figure,
            }
        })
        .filter(|r| q.state.as_deref().is_none_or(|st| st == r.state))
        .collect();
    let total = rows.len();
    let skip = (page - 1).saturating_mul(per);
    let order =
        |a: &Row<'_>, b: &Row<'_>| compare(sort, descending, a, b).then_with(|| a.id.cmp(b.id));
    // only what the page needs is put in order
    if skip < rows.len() {
        let end = (skip + per).min(rows.len());
        if end < rows.len() {
            rows.select_nth_unstable_by(end, order);
            rows.truncate(end);
        }
        rows.sort_unstable_by(order);
    }
    let out: Vec<Value> = rows
        .iter()
        .skip(skip)
        .take(per)
        .map(|r| {
            let mut o = reg.live_fields(r.id, now);
            if o.is_empty() {
                o.insert("state_reason", Value::from(r.node.reason.as_str()));
                #[allow(clippy::cast_precision_loss)]
                o.insert("state_since_ms", Value::Number(r.node.since_ms as f64));
            }
            o.insert("id", Value::from(r.id.as_str()));
            o.insert("cluster", Value::from(r.node.cluster.as_str()));
            o.insert("state", Value::from(r.state));
            Value::Object(o)
        })
        .collect();
    let mut o = Object::new();
    o.insert("total", Value::from(total as u64));
    o.insert("page", Value::from(page as u64));
    o.insert("per", Value::from(per as u64));
    o.insert("rows", Value::Array(out));
    Ok(Value::Object(o))
}

/// Two rows by sort key `sort`, ascending or `descending`; unknown
/// figures last whatever the order.
fn compare(sort: &str, descending: bool, a: &Row<'_>, b: &Row<'_>) -> Ordering {
    let dir = |o: Ordering| if descending { o.reverse() } else { o };
    match sort {
        "cluster" => dir(a.node.cluster.cmp(&b.node.cluster)),
        "state" => dir(state_rank(a.state).cmp(&state_rank(b.state))),
        "id" => dir(a.id.cmp(b.id)),
        _ => match (a.figure, b.figure) {
            (Some(x), Some(y)) => dir(x.total_cmp(&y)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        },
    }
}

/// Most severe first, as [`baton_shared::liveness::AgentState`] orders.
fn state_rank(s: &str) -> usize {
    use baton_shared::liveness::AgentState;
    let mut all = AgentState::ALL;
    all.sort();
    all.iter()
        .position(|a| a.as_str() == s)
        .unwrap_or(all.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::own_chain::{self, OwnChain, OwnEvent};
    use baton_shared::intake::Head;
    use baton_shared::json::Object;
    use baton_shared::{SecretKey, Seq};

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn cluster(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    /// A gateway's own chain, written by the same code the gateway runs.
    struct Chain {
        own: OwnChain,
        t: i64,
    }

    impl Chain {
        fn new(gw: &str, n: u8) -> Chain {
            let key = SecretKey::from_seed(&[n; 32]);
            Chain {
                own: OwnChain::new(id(gw), key, Head::EMPTY),
                t: 1_790_000_000_000,
            }
        }

        fn write(&mut self, event: OwnEvent, data: Value) -> Write {
            self.t += 1000;
            self.own.append(self.t, event, data).unwrap()
        }

        fn enroll(&mut self, agent: &str, c: &str, by: &EnrolledBy) -> Write {
            let mut d = own_chain::enroll_data(&id(agent), &[9; 32], c, None, None);
            if let Value::Object(o) = &mut d {
                o.insert("by", Value::from(by.describe()));
            }
            self.write(OwnEvent::Enroll, d)
        }

        fn state(&mut self, agent: &str, to: &str) -> Write {
            let mut d = Object::new();
            d.insert("agent", Value::from(agent));
            d.insert("from", Value::from("offline"));
            d.insert("to", Value::from(to));
            d.insert("reason", Value::from(format!("{agent} went {to}")));
            self.write(OwnEvent::AgentState, Value::Object(d))
        }

        fn summary(&mut self, c: &str, agents: usize) -> Write {
            let mut s = baton_shared::summary::Summary::of(std::iter::empty());
            s.agents = agents;
            let v = s.to_value(c, self.t + 1000);
            self.write(OwnEvent::ClusterSummary, v)
        }
    }

    fn top() -> FleetView {
        let child = AgentRecord {
            public_key: [1; 32],
            start_seq: None,
            revoked_from_seq: None,
            enrolled_by: EnrolledBy::ChildGateway {
                cluster: cluster("s0"),
            },
            enrolled_ms: 0,
        };
        FleetView::new(
            &id("gw-top"),
            &cluster("top"),
            Vec::new(),
            Vec::new(),
            &[(id("gw-s0"), child)],
        )
    }

    #[test]
    fn the_top_learns_the_tree_from_its_sectors_and_their_clusters_chains() {
        let mut v = top();
        let mut sector = Chain::new("gw-s0", 2);
        let mut c0 = Chain::new("gw-c0", 3);
        let child = EnrolledBy::ChildGateway {
            cluster: cluster("c0"),
        };
        let vouched = EnrolledBy::Vouched {
            via: id("gw-c0"),
            cluster: cluster("c0"),
            at_seq: Seq(2),
        };
        let writes = vec![
            sector.enroll("gw-c0", "c0", &child),
            c0.enroll("pi-1", "c0", &EnrolledBy::TrustOnFirstUse),
            // the sector's vouch names pi-1's cluster as it routes it: skipped
            sector.enroll("pi-1", "s0", &vouched),
            c0.state("pi-1", "active"),
            c0.summary("c0", 1),
            sector.summary("s0", 1),
        ];
        let rows = v.learn(&writes);
        assert_eq!(v.clusters()["c0"].gateway, "gw-c0");
        assert_eq!(v.clusters()["c0"].parent.as_deref(), Some("s0"));
        assert_eq!(v.clusters()["s0"].parent.as_deref(), Some("top"));
        assert!(v.clusters()["c0"].summary.is_some());
        let pi = v.agent(&id("pi-1")).unwrap();
        assert_eq!(pi.cluster, "c0");
        assert_eq!(pi.state.as_deref(), Some("active"));
        assert_eq!(pi.reason, "pi-1 went active");
        // the rows to keep: pi-1, and clusters c0 and s0
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(v.version() > 0);
    }

    #[test]
    fn a_gateway_speaks_only_for_its_own_cluster() {
        let mut v = top();
        let mut sector = Chain::new("gw-s0", 2);
        let mut c0 = Chain::new("gw-c0", 3);
        let mut c1 = Chain::new("gw-c1", 4);
        let writes = vec![
            sector.enroll(
                "gw-c0",
                "c0",
                &EnrolledBy::ChildGateway {
                    cluster: cluster("c0"),
                },
            ),
            sector.enroll(
                "gw-c1",
                "c1",
                &EnrolledBy::ChildGateway {
                    cluster: cluster("c1"),
                },
            ),
            c0.enroll("pi-1", "c0", &EnrolledBy::Operator),
            c0.state("pi-1", "active"),
            // c1 claims pi-1 is offline, and writes c0's summary
            c1.state("pi-1", "offline"),
            c1.summary("c0", 99),
        ];
        v.learn(&writes);
        assert_eq!(
            v.agent(&id("pi-1")).unwrap().state.as_deref(),
            Some("active")
        );
        assert!(v.clusters()["c0"].summary.is_none());
        // an agent's own chain is never read, whatever it writes
        let mut pi = Chain::new("pi-1", 5);
        let rows = v.learn(&[pi.state("pi-1", "quarantined")]);
        assert!(rows.is_empty());
        assert_eq!(
            v.agent(&id("pi-1")).unwrap().state.as_deref(),
            Some("active")
        );
    }

    #[test]
    fn an_unenrolled_agent_leaves_the_view() {
        let mut v = FleetView::new(&id("gw"), &cluster("c0"), Vec::new(), Vec::new(), &[]);
        let mut own = Chain::new("gw", 2);
        v.learn(&[own.enroll("pi-1", "c0", &EnrolledBy::Operator)]);
        assert!(v.agent(&id("pi-1")).is_some());
        let rows = v.learn(&[Write::Unenroll { agent: id("pi-1") }]);
        assert!(v.agent(&id("pi-1")).is_none());
        assert!(matches!(&rows[..], [Write::FleetAgent { node: None, .. }]));
    }

    #[test]
    fn every_page_in_every_order_holds_each_agent_once_in_order() {
        // 23 agents in 3 clusters, every other one heard live with its own
        // figures: the rest sort last (no figure), whatever the order
        let mut reg = Registry::new(baton_shared::liveness::Thresholds::default());
        let mut agents = Vec::new();
        for i in 0..23u32 {
            let a = id(&format!("pi-{i:02}"));
            if i % 2 == 0 {
                reg.enroll(&a, 1_790_000_000_000, false);
                let mut hb = crate::registry::tests::hb(&a, 1_790_000_000_000, None);
                hb.impedance.latency_p50_ms = ((i * 7) % 11) as f32;
                hb.backlog = u64::from(i % 5);
                reg.heartbeat(Duration::from_secs(1), 1_790_000_000_000, hb);
            }
            let node = AgentNode {
                cluster: format!("c{}", i % 3),
                state: Some(["offline", "active"][(i % 4 / 2) as usize].into()),
                reason: String::new(),
                since_ms: 0,
            };
            agents.push((a, node));
        }
        let view = FleetView::new(&id("gw"), &cluster("c0"), Vec::new(), agents, &[]);
        let now = Duration::from_secs(2);
        for sort in SORTS {
            for order in ["asc", "desc"] {
                let mut seen: Vec<Value> = Vec::new();
                for page in 1..=5 {
                    let q = AgentQuery {
                        sort: Some(sort.into()),
                        order: Some(order.into()),
                        page: Some(page),
                        per: Some(6),
                        ..AgentQuery::default()
                    };
                    let v = agent_page(&view, &reg, &q, now).unwrap();
                    assert_eq!(
                        v.as_object().unwrap().get("total"),
                        Some(&Value::from(23u64))
                    );
                    let Some(Value::Array(rows)) = v.as_object().unwrap().get("rows") else {
                        panic!("no rows: {v:?}");
                    };
                    assert_eq!(
                        rows.len(),
                        if page < 4 {
                            6
                        } else if page == 4 {
                            5
                        } else {
                            0
                        }
                    );
                    seen.extend(rows.iter().cloned());
                }
                let ids: std::collections::BTreeSet<&str> = seen
                    .iter()
                    .map(|r| r.as_object().unwrap().get("id").unwrap().as_str().unwrap())
                    .collect();
                assert_eq!(ids.len(), 23, "{sort} {order}");
                // consecutive rows never out of order (ties by id)
                let field = match sort {
                    "impedance" => Some("impedance_ms"),
                    "backlog" => Some("backlog"),
                    "last_seen" => Some("last_seen_ms"),
                    "clock_offset" => Some("clock_offset_ms"),
                    _ => None,
                };
                for w in seen.windows(2) {
                    let (a, b) = (w[0].as_object().unwrap(), w[1].as_object().unwrap());
                    let text =
                        |o: &Object, k: &str| o.get(k).and_then(Value::as_str).unwrap().to_owned();
                    let ord = match (sort, field) {
                        ("id", _) => text(a, "id").cmp(&text(b, "id")),
                        ("cluster", _) => text(a, "cluster").cmp(&text(b, "cluster")),
                        ("state", _) => {
                            state_rank(&text(a, "state")).cmp(&state_rank(&text(b, "state")))
                        }
                        (_, Some(k)) => match (
                            a.get(k).and_then(Value::as_f64),
                            b.get(k).and_then(Value::as_f64),
                        ) {
                            (Some(x), Some(y)) => x.total_cmp(&y),
                            // no figure: last in both orders
                            (Some(_), None) => continue,
                            (None, Some(_)) => {
                                panic!("{sort} {order}: a row without a figure first")
                            }
                            (None, None) => Ordering::Equal,
                        },
                        _ => unreachable!(),
                    };
                    let ord = if order == "desc" { ord.reverse() } else { ord };
                    assert_ne!(ord, Ordering::Greater, "{sort} {order}: {a:?} before {b:?}");
                    if ord == Ordering::Equal {
                        assert!(text(a, "id") < text(b, "id"), "{sort} {order}: ties by id");
                    }
                }
            }
        }
    }
}
