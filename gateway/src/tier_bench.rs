//! `baton-gateway bench-tiers`: the end-to-end rate through two tiers —
//! agents → a cluster gateway → a sector gateway, each gateway a
//! `baton-gateway run` child with its own embedded broker, both durable —
//! and the forwarding lag under that load.
//!
//! - N agents (the test publisher: a real MQTT client driving the real
//!   `uplink`) send all their entries to the cluster gateway, as in
//!   `bench`; the cluster gateway forwards every chain to the sector.
//! - Two watchers read receipts: the cluster's on its broker (to the
//!   agents) and the sector's on its broker (to the cluster's forwarder),
//!   noting when each first covered each seq.
//! - cluster rate = entries ÷ time until the cluster's receipts cover every
//!   agent's head; end-to-end rate = the same for the sector's receipts.
//! - forwarding lag of a sector receipt for seq S = when it arrived − when
//!   the cluster's receipt first covered S: the time an entry, already
//!   durable and receipted at the cluster, takes to be durable and
//!   receipted one tier up. p50 / p99 / max over the sector's receipts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_shared::wire::{Message, Receipt};
use rumqttc::{Event, Packet, QoS};

use crate::bench::{BATCH, GatewayChild, client, ledger, spawn_gateway, tempfile_dir};

#[derive(Debug, Clone)]
pub struct TierArgs {
    pub agents: Vec<usize>,
    /// Entries per run, split over the agents.
    pub total_entries: u64,
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct TierRow {
    pub agents: usize,
    pub entries: u64,
    pub cluster_entries_per_s: f64,
    pub end_to_end_entries_per_s: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    pub cluster_rss_mb: f64,
    pub sector_rss_mb: f64,
}

/// Per agent, (seq, first seen) of each receipt that moved, in order.
type Seen = Arc<Mutex<HashMap<String, Vec<(u64, Instant)>>>>;

/// Notes every receipt on `baton/v1/{cluster}/+/ack` at `broker`; returns
/// once subscribed.
async fn watch_receipts(
    broker: SocketAddr,
    id: &str,
    cluster: &str,
    seen: Seen,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (c, mut el) = client(id, broker, 100);
    c.subscribe(
        baton_shared::topic::cluster_filter(cluster, baton_shared::topic::Kind::Ack),
        QoS::AtMostOnce,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if Instant::now() > deadline {
            bail!("no SubAck from {broker}");
        }
        if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
            break;
        }
    }
    Ok(tokio::spawn(async move {
        let _keep = c;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    let Ok(r) = Receipt::decode(&p.payload) else {
                        continue;
                    };
                    let mut s = seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let list = s.entry(r.agent.to_string()).or_default();
                    if list.last().is_none_or(|(seq, _)| r.seq.0 > *seq) {
                        list.push((r.seq.0, at));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }))
}

fn covered(seen: &Seen, agent: &str) -> u64 {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(agent)
        .and_then(|l| l.last())
        .map_or(0, |(s, _)| *s)
}

/// The time the last head was covered, once every agent's is.
fn done_at(seen: &Seen, heads: &[(String, u64)]) -> Option<Instant> {
    let s = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut last = None;
    for (agent, head) in heads {
        let (seq, at) = *s.get(agent)?.last()?;
        if seq < *head {
            return None;
        }
        last = last.max(Some(at));
    }
    last
}

/// Forwarding lags in ms (see the module doc), over every sector receipt.
fn lags(cluster: &Seen, sector: &Seen) -> Vec<f64> {
    let c = cluster
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = sector
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = Vec::new();
    for (agent, up) in s.iter() {
        let Some(down) = c.get(agent) else { continue };
        for (seq, t2) in up {
            let i = down.partition_point(|(s1, _)| s1 < seq);
            if let Some((_, t1)) = down.get(i) {
                out.push(t2.saturating_duration_since(*t1).as_secs_f64() * 1000.0);
            }
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn one_run(exe: &Path, agents: usize, total: u64) -> anyhow::Result<TierRow> {
    let per_agent = (total / agents as u64).max(BATCH as u64) / BATCH as u64 * BATCH as u64;
    let ledgers = (0..agents)
        .map(|i| ledger(i, per_agent))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let root = tempfile_dir()?;
    // The sector, with the cluster gateway enrolled as its child.
    let sector_dir = root.join("sector");
    let sector_key = baton_runtime::keys::generate(&sector_dir.join("gateway.key"))?;
    let cluster_dir = root.join("cluster");
    let cluster_key = baton_runtime::keys::generate(&cluster_dir.join("gateway.key"))?;
    let enrolled = Command::new(exe)
        .args(["enroll", "--agent", "gw-bench", "--child-cluster", "bench"])
        .args(["--id", "gw-sector", "--cluster", "sector", "--pubkey"])
        .arg(cluster_key.public().to_hex())
        .arg("--data-dir")
        .arg(&sector_dir)
        .output()
        .context("enrolling the cluster gateway at the sector")?;
    if !enrolled.status.success() {
        bail!(
            "enroll: {}",
            String::from_utf8_lossy(&enrolled.stderr).trim()
        );
    }
    std::fs::create_dir_all(sector_dir.join("agents"))?;
    // The benchmark watches receipts on both brokers from outside, as no
    // device may: both run without broker logins (the agents' publisher
    // still signs its logins, which such a broker does not check).
    let open = ["--broker-auth".to_owned(), "none".to_owned()];
    let sector = spawn_gateway(exe, &sector_dir, "sector", None, 10, &open)?;
    let keys_dir = cluster_dir.join("agents");
    std::fs::create_dir_all(&keys_dir)?;
    for l in &ledgers {
        std::fs::write(
            keys_dir.join(format!("{}.pub", l.agent())),
            l.key().public().to_hex(),
        )?;
    }
    let upstream = [
        "--upstream".to_owned(),
        format!("mqtt://{}", sector.broker),
        "--upstream-key".to_owned(),
        sector_key.public().to_hex(),
        open[0].clone(),
        open[1].clone(),
    ];
    let cluster = spawn_gateway(exe, &cluster_dir, "bench", None, agents, &upstream)?;
    let at_cluster: Seen = Arc::default();
    let at_sector: Seen = Arc::default();
    let w1 = watch_receipts(
        cluster.broker,
        "watch-cluster",
        "bench",
        Arc::clone(&at_cluster),
    )
    .await?;
    let w2 = watch_receipts(
        sector.broker,
        "watch-sector",
        "bench",
        Arc::clone(&at_sector),
    )
    .await?;

    let heads: Vec<(String, u64)> = ledgers
        .iter()
        .map(|l| (l.agent().to_string(), l.head_seq().0))
        .collect();
    let entries: u64 = heads.iter().map(|(_, h)| h).sum();
    let start =
        crate::bench::publish_receipted(cluster.broker, ledgers, cluster_key.public()).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (cluster_done, sector_done) = loop {
        if let (Some(c), Some(s)) = (done_at(&at_cluster, &heads), done_at(&at_sector, &heads)) {
            break (c, s);
        }
        if Instant::now() > deadline {
            let behind: Vec<String> = heads
                .iter()
                .filter(|(a, h)| covered(&at_sector, a) < *h)
                .map(|(a, h)| format!("{a} {}/{h}", covered(&at_sector, a)))
                .collect();
            bail!(
                "the sector did not receipt everything: {}",
                behind.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let lag = lags(&at_cluster, &at_sector);
    let rss = |g: &GatewayChild| {
        #[allow(clippy::cast_precision_loss)]
        let mb = baton_runtime::proc::rss_kb(g.child.0.id(), "VmHWM:") as f64 / 1024.0;
        mb
    };
    let row = TierRow {
        agents,
        entries,
        #[allow(clippy::cast_precision_loss)]
        cluster_entries_per_s: entries as f64 / (cluster_done - start).as_secs_f64(),
        #[allow(clippy::cast_precision_loss)]
        end_to_end_entries_per_s: entries as f64 / (sector_done - start).as_secs_f64(),
        lag_p50_ms: quantile(&lag, 0.50),
        lag_p99_ms: quantile(&lag, 0.99),
        lag_max_ms: lag.last().copied().unwrap_or(0.0),
        cluster_rss_mb: rss(&cluster),
        sector_rss_mb: rss(&sector),
    };
    w1.abort();
    w2.abort();
    drop(cluster);
    drop(sector);
    let _ = std::fs::remove_dir_all(&root);
    Ok(row)
}

/// Runs every agent count; `exe` is this binary (for the gateway children).
pub async fn run(args: &TierArgs, exe: &Path) -> anyhow::Result<Vec<TierRow>> {
    let mut rows = Vec::new();
    for &n in &args.agents {
        let row = one_run(exe, n, args.total_entries).await?;
        eprintln!("{row:?}");
        rows.push(row);
    }
    Ok(rows)
}

/// The report as a Markdown table.
pub fn table(rows: &[TierRow]) -> String {
    let header = [
        "agents",
        "entries",
        "cluster receipts entries/s",
        "end to end (sector receipts) entries/s",
        "forwarding lag p50 / p99 / max",
        "cluster gw peak RSS",
        "sector gw peak RSS",
    ];
    let cells = |r: &TierRow| {
        [
            r.agents.to_string(),
            r.entries.to_string(),
            format!("{:.0}", r.cluster_entries_per_s),
            format!("{:.0}", r.end_to_end_entries_per_s),
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                r.lag_p50_ms, r.lag_p99_ms, r.lag_max_ms
            ),
            format!("{:.1} MiB", r.cluster_rss_mb),
            format!("{:.1} MiB", r.sector_rss_mb),
        ]
    };
    crate::bench::markdown_table(
        header,
        "|---|---|---|---|---|---|---|",
        rows.iter().map(cells),
    )
}
