//! `bench-console`: what the console's agent list costs at fleet size. A
//! fleet view and a registry of N agents in memory (no broker, no store:
//! only the listing is measured), then each query of the list timed as
//! `GET /api/v1/fleet/agents` runs it, with the locks it holds.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use baton_shared::AgentId;
use baton_shared::liveness::Thresholds;

use crate::fleet::{AgentNode, AgentQuery, FleetView, agent_page};
use crate::registry::Registry;

/// One query's figures.
#[derive(Debug, Clone)]
pub struct ConsoleRow {
    pub tier: &'static str,
    pub agents: usize,
    pub query: String,
    pub median_ms: f64,
    pub max_ms: f64,
    pub body_bytes: usize,
}

/// The queries the console makes most: its first page, a sort on a live
/// figure, a search, a state filter, a far page.
const QUERIES: [&str; 5] = [
    "sort=id",
    "sort=impedance&order=desc",
    "q=-a01&sort=id",
    "state=offline&sort=last_seen",
    "sort=cluster&page=500",
];

fn query(text: &str) -> AgentQuery {
    let mut q = AgentQuery::default();
    for pair in text.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = v.to_owned();
        match k {
            "sort" => q.sort = Some(v),
            "order" => q.order = Some(v),
            "q" => q.q = Some(v),
            "state" => q.state = Some(v),
            "page" => q.page = v.parse().ok(),
            _ => {}
        }
    }
    q
}

/// A view of `n` agents in 100-agent clusters; with `live`, each is this
/// gateway's own and has sent a heartbeat (a cluster's registry), else
/// each is known from its gateway's chain only (the top).
fn fleet(n: usize, live: bool) -> anyhow::Result<(FleetView, Registry)> {
    let own = AgentId::new("gw-top")?;
    let mut reg = Registry::new(Thresholds::default());
    let mut agents = Vec::with_capacity(n);
    let origin = Duration::from_secs(1);
    for i in 0..n {
        let id = AgentId::new(format!("pi-c{:03}-a{:03}", i / 100, i % 100))?;
        let state = ["active", "degraded", "offline", "suspect"][i % 4];
        agents.push((
            id.clone(),
            AgentNode {
                cluster: format!("c{:03}", i / 100),
                state: Some(state.to_owned()),
                reason: "heartbeats on time".into(),
                since_ms: 1_796_000_000_000,
            },
        ));
        if live {
            reg.enroll(&id, 1_796_000_000_000, false);
            let mut hb = crate::fleet_bench::heartbeat(&id, 1_796_000_000_000);
            #[allow(clippy::cast_precision_loss)]
            {
                hb.impedance.latency_p50_ms = (i % 977) as f32;
            }
            reg.heartbeat(origin, 1_796_000_000_000, hb);
        }
    }
    let own_cluster = baton_shared::ClusterId::new("top")?;
    Ok((
        FleetView::new(&own, &own_cluster, Vec::new(), agents, &[]),
        reg,
    ))
}

/// Each query `runs` times over `n` agents, known from chains (`top`) and
/// live (`cluster`).
pub fn run(sizes: &[usize], runs: usize) -> anyhow::Result<Vec<ConsoleRow>> {
    let mut rows = Vec::new();
    for &n in sizes {
        for (tier, live) in [("top", false), ("cluster", true)] {
            let (view, reg) = fleet(n, live)?;
            let now = Duration::from_secs(2);
            for text in QUERIES {
                let q = query(text);
                let mut took = Vec::with_capacity(runs);
                let mut body_bytes = 0;
                for _ in 0..runs.max(1) {
                    let start = Instant::now();
                    let page = agent_page(&view, &reg, &q, now).map_err(anyhow::Error::msg)?;
                    let body = baton_shared::canonical::to_vec(&page);
                    took.push(start.elapsed().as_secs_f64() * 1000.0);
                    body_bytes = body.len();
                }
                took.sort_by(f64::total_cmp);
                rows.push(ConsoleRow {
                    tier,
                    agents: n,
                    query: text.to_owned(),
                    median_ms: took[took.len() / 2],
                    max_ms: took[took.len() - 1],
                    body_bytes,
                });
            }
        }
    }
    Ok(rows)
}

pub fn table(rows: &[ConsoleRow]) -> String {
    let mut out = String::from(
        "| tier | agents | query | median ms | max ms | body bytes |\n|---|---:|---|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | `{}` | {:.2} | {:.2} | {} |",
            r.tier, r.agents, r.query, r.median_ms, r.max_ms, r.body_bytes
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_query_answers_a_full_page() {
        // (the far page is page 500: 25,000 agents and on)
        let rows = run(&[25_050], 1).unwrap();
        assert_eq!(rows.len(), 2 * QUERIES.len());
        for r in &rows {
            // an empty page would be a few dozen bytes
            assert!(r.body_bytes > 500, "{r:?}");
        }
    }
}
