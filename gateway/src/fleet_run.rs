//! `baton-gateway simulate`: a whole fleet on this box — a top, sectors,
//! cluster gateways (every gateway on its own Mosquitto, the production
//! broker, or all on their embedded ones) and simulated agents (`sim-agents` processes,
//! [`crate::fleet_sim`]) — for a shape given on the command line; it waits
//! until every agent is active at the top, measures for a fixed time,
//! sends one command to every agent, lets one agent die, stops the
//! appends, checks that the top holds every chain to its head, and tears
//! everything down.
//!
//! What it prints (one table, see BENCHMARKS.md): entries/s offered by the
//! fleet and verified and stored at each tier (`baton_entries_accepted_total`
//! over the window), the age of entries reaching the top (the top's
//! `baton_entry_age_seconds` histogram over the window: an upper bound of
//! each quantile's bucket), heartbeats/s the clusters took, how old the
//! newest summary of every child is at its parent (the worst; a child
//! chains its summary within one summary interval of a change and every
//! `summary_chain_interval` without one, so this is the time since the
//! last change or refresh, not a delay), the time
//! until every agent shows active at the top, the time for one agent
//! killed (its process SIGKILLed) to show offline at the top — how fast
//! the top's view follows a change — the command
//! (hit rate by T + window, prediction error from the clusters' views,
//! decision), and CPU (cores over the window) and RSS per process kind.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_runtime::progress::Progress;
use baton_shared::json::Value;

use crate::bench::{ChildGuard, GatewayChild, spawn_gateway, start_mosquitto, tempfile_dir};
use crate::coord_bench::{num, prediction_errors, quantile};
use crate::fleet_bench::{TICKS_PER_S, cpu_ticks, field, http_json, sim_key};
use crate::fleet_sim::{cluster_index, sim_name};

/// The fleet's shape and how long to run it.
#[derive(Debug, Clone)]
pub struct FleetArgs {
    pub agents: usize,
    pub clusters: usize,
    /// 0: the clusters are the top's children.
    pub sectors: usize,
    /// Entries per agent per second.
    pub rate: f64,
    /// The measuring window, once every agent is active at the top.
    pub window: Duration,
    /// Every gateway on its embedded broker instead of its own Mosquitto.
    pub embedded: bool,
    /// Simulated agents per `sim-agents` process (each connection is a
    /// file descriptor: at most 20,000 a process here).
    pub per_process: usize,
    /// Each simulated agent's clock off within ± this.
    pub clock_skew: Duration,
    /// Fail unless every check holds (the reduced run in CI).
    pub check: bool,
    /// The top archives into this PostgreSQL (`--archive`): its lag is
    /// measured.
    pub archive: Option<String>,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct FleetReport {
    pub agents: usize,
    pub clusters: usize,
    pub sectors: usize,
    pub rate: f64,
    pub window_s: f64,
    pub active_s: f64,
    /// Entries/s stored by the clusters, the sectors, the top.
    pub stored_per_s: [f64; 3],
    /// Age of entries when committed at the clusters, the sectors, the
    /// top: p50 and p99 (bucket bounds, s).
    pub age_s: [[f64; 2]; 3],
    pub heartbeats_per_s: f64,
    /// The oldest child summary at any parent (ms).
    pub summary_age_max_ms: f64,
    pub offline_s: f64,
    pub hit_rate: f64,
    pub selected: f64,
    /// Agents whose answer (READY or a conflict) their cluster holds.
    pub answered: f64,
    pub err_p50_ms: f64,
    pub err_p90_ms: f64,
    pub err_p99_ms: f64,
    pub decision: String,
    /// T − issue (ms).
    pub lead_in_ms: i64,
    /// Per process kind: (processes, cores over the window, RSS MiB
    /// summed, RSS MiB of the largest).
    pub kinds: BTreeMap<&'static str, (usize, f64, f64, f64)>,
    /// After the appends stopped: time until the top held every chain to
    /// its head, and the chains checked.
    pub drained_s: f64,
    pub chains_checked: usize,
    pub entries_total: u64,
    /// With `check`: chains `verify` read back from the top's store.
    pub verified_offline: usize,
    /// With `archive`: rows/s the top's archive took over the window, the
    /// entries it lagged the top's store by (largest sample, and at the
    /// window's end), and the time after every chain reached the top
    /// until the archive held the top's whole store.
    pub archive: Option<ArchiveLag>,
    /// What did not hold (`check` fails on any).
    pub problems: Vec<String>,
}

/// The top's archive behind its store (`simulate --archive`).
#[derive(Debug, Clone, Default)]
pub struct ArchiveLag {
    pub rows_per_s: f64,
    pub lag_max: f64,
    pub lag_end: f64,
    pub drained_s: f64,
}

/// Entries the top's store holds that its archive does not yet: entries
/// accepted + its own chain − rows archived (one sample).
fn archive_lag(top: &GatewayChild) -> anyhow::Result<(f64, f64)> {
    let text = crate::cli::http_get(&format!("http://{}", top.http), "/metrics")?;
    let own = http_json(top.http, "/api/v1/agents/gw-top")?;
    let own_head = field(&own, "head_seq")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    let archived = metric(&text, "baton_archive_rows_total");
    let held = metric(&text, "baton_entries_accepted_total") + own_head;
    Ok(((held - archived).max(0.0), archived))
}

/// A running gateway of the tree, with its name and parent.
struct Node {
    gw: GatewayChild,
    key: baton_shared::PublicKey,
    token: String,
    /// The Mosquitto it runs on, if any.
    broker: Option<ChildGuard>,
}

fn operator_token(dir: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(dir.join("operator.token"))?
        .trim()
        .to_owned())
}

/// A gateway of the tree to start.
#[derive(Clone, Copy)]
struct Spec<'a> {
    name: &'a str,
    parent: Option<&'a Node>,
    /// The simulated agents it enrolls (by key file).
    agents: &'a [usize],
    /// On its own Mosquitto, else on its embedded broker.
    mosquitto: bool,
    /// Child gateways it will have.
    children: usize,
    flags: &'a [String],
}

/// Starts a gateway named `name` under `parent` (enrolled there as the
/// child gateway of cluster `name`), with the agents' keys `agents`.
fn start_node(exe: &Path, root: &Path, spec: &Spec<'_>) -> anyhow::Result<Node> {
    let Spec {
        name,
        parent,
        agents,
        mosquitto,
        children,
        flags,
    } = *spec;
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("agents"))?;
    let key = baton_runtime::keys::generate(&dir.join("gateway.key"))?.public();
    for i in agents {
        std::fs::write(
            dir.join("agents").join(format!("{}.pub", sim_name(*i))),
            sim_key(*i).public().to_hex(),
        )?;
    }
    let mut extra = flags.to_vec();
    if let Some(p) = parent {
        let body = format!(
            "{{\"agent\":\"gw-{name}\",\"public_key\":\"{}\",\"child_cluster\":\"{name}\"}}",
            key.to_hex()
        );
        crate::cli::http_post(
            &format!("http://{}", p.gw.http),
            "/api/v1/enroll",
            &body,
            &p.token,
        )
        .with_context(|| format!("enrolling gw-{name}"))?;
        extra.extend([
            "--upstream".to_owned(),
            format!("mqtt://{}", p.gw.broker),
            "--upstream-key".to_owned(),
            p.key.to_hex(),
        ]);
    }
    let (broker, external) = if mosquitto {
        let (guard, addr) = start_mosquitto(agents.len().max(children))?
            .context("mosquitto is not installed (or --embedded)")?;
        (Some(guard), Some(addr))
    } else {
        (None, None)
    };
    let gw = spawn_gateway(
        exe,
        &dir,
        name,
        external,
        agents.len().max(children),
        &extra,
    )
    .with_context(|| format!("starting gw-{name}"))?;
    let token = operator_token(&dir)?;
    Ok(Node {
        gw,
        key,
        token,
        broker,
    })
}

/// A `sim-agents` child for agents `first..first + count`.
struct Sims {
    child: ChildGuard,
    agents: std::ops::Range<usize>,
}

fn start_sims(
    exe: &Path,
    agents: std::ops::Range<usize>,
    clusters: &[(String, SocketAddr, baton_shared::PublicKey)],
    top: &baton_shared::PublicKey,
    rate: f64,
    clock_skew: Duration,
) -> anyhow::Result<Sims> {
    let mut cmd = Command::new(exe);
    cmd.arg("sim-agents")
        .args(["--first", &agents.start.to_string()])
        .args(["--count", &agents.len().to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--clock-skew", &format!("{}ms", clock_skew.as_millis())])
        .args(["--issuer-key", &top.to_hex()]);
    for (name, addr, key) in clusters {
        cmd.arg("--cluster")
            .arg(format!("{name}={addr}={}", key.to_hex()));
    }
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting sim-agents")?;
    Ok(Sims {
        child: ChildGuard(child),
        agents,
    })
}

/// One Prometheus sample's value (summed over its label sets).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A histogram's cumulative buckets: (upper bound, count).
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, n) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n.parse().ok()?))
        })
        .collect()
}

/// The bound of the bucket holding quantile `q` of `after − before`.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let d: Vec<(f64, f64)> = after
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&(0.0, 0.0))))
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let total = d.last().map_or(0.0, |x| x.1);
    if total <= 0.0 {
        return f64::NAN;
    }
    d.iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::INFINITY, |x| x.0)
}

/// One tier's counters at one moment, summed over its gateways (one
/// `/metrics` read of each).
struct TierSample {
    stored: f64,
    heartbeats: f64,
    ages: Vec<(f64, f64)>,
}

impl TierSample {
    fn take(gws: &[&GatewayChild]) -> anyhow::Result<TierSample> {
        let mut t = TierSample {
            stored: 0.0,
            heartbeats: 0.0,
            ages: Vec::new(),
        };
        for g in gws {
            let text = crate::cli::http_get(&format!("http://{}", g.http), "/metrics")?;
            t.stored += metric(&text, "baton_entries_accepted_total");
            t.heartbeats += metric(&text, "baton_heartbeats_total");
            let ages = buckets(&text, "baton_entry_age_seconds");
            if t.ages.is_empty() {
                t.ages = ages;
            } else {
                for (sum, (_, n)) in t.ages.iter_mut().zip(ages) {
                    sum.1 += n;
                }
            }
        }
        Ok(t)
    }
}

/// Waits (polling every 500 ms, at most `limit`) until `done` holds; on a
/// terminal, what it waits for is shown as it goes.
async fn until(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<Option<String>>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let progress = Progress::new(&format!("waiting for {what}"), None);
    loop {
        match done()? {
            None => return Ok(start.elapsed()),
            Some(why) if start.elapsed() > limit => bail!("{what}: {why} after {limit:?}"),
            Some(why) => {
                progress.describe(&format!("waiting for {what}: {why}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// A wait's seconds, or NaN with the reason it ran out among `problems`.
fn seconds(waited: anyhow::Result<Duration>, problems: &mut Vec<String>) -> f64 {
    match waited {
        Ok(d) => d.as_secs_f64(),
        Err(e) => {
            problems.push(format!("{e:#}"));
            f64::NAN
        }
    }
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
pub async fn run(exe: &Path, a: &FleetArgs) -> anyhow::Result<FleetReport> {
    anyhow::ensure!(
        a.agents >= 2,
        "--agents: at least 2 (one of them is killed)"
    );
    anyhow::ensure!(
        a.clusters >= 1 && a.clusters <= a.agents,
        "--clusters: 1 to --agents"
    );
    anyhow::ensure!(a.sectors <= a.clusters, "--sectors: at most --clusters");
    let root: PathBuf = tempfile_dir()?;
    let n = a.agents;
    eprintln!(
        "simulate: {n} agents, {} clusters, {} sectors, {} entries/s each, in {}",
        a.clusters,
        a.sectors,
        a.rate,
        root.display()
    );
    let top_children = if a.sectors > 0 { a.sectors } else { a.clusters };
    let starting = Progress::new(
        "starting gateways",
        Some(1 + a.sectors as u64 + a.clusters as u64),
    );
    let top_flags: Vec<String> = a
        .archive
        .iter()
        .flat_map(|url| ["--archive".to_owned(), url.clone()])
        .collect();
    let top = start_node(
        exe,
        &root,
        &Spec {
            name: "top",
            parent: None,
            agents: &[],
            mosquitto: !a.embedded,
            children: top_children,
            flags: &top_flags,
        },
    )?;
    starting.inc(1);
    let mut sectors = Vec::new();
    for s in 0..a.sectors {
        sectors.push(start_node(
            exe,
            &root,
            &Spec {
                name: &format!("s{s}"),
                parent: Some(&top),
                agents: &[],
                mosquitto: !a.embedded,
                children: a.clusters.div_ceil(a.sectors),
                flags: &[],
            },
        )?);
        starting.inc(1);
    }
    // below a sector a cluster relays the top's commands, not only its
    // parent's own
    let relay: Vec<String> = if a.sectors > 0 {
        vec!["--issuer-keys".to_owned(), top.key.to_hex()]
    } else {
        Vec::new()
    };
    let mut clusters = Vec::new();
    for c in 0..a.clusters {
        let name = format!("c{c}");
        let agents: Vec<usize> = (0..n)
            .filter(|i| cluster_index(*i, a.clusters) == c)
            .collect();
        let parent = if a.sectors > 0 {
            &sectors[c % a.sectors]
        } else {
            &top
        };
        clusters.push(start_node(
            exe,
            &root,
            &Spec {
                name: &name,
                parent: Some(parent),
                agents: &agents,
                mosquitto: !a.embedded,
                children: 0,
                flags: &relay,
            },
        )?);
        starting.inc(1);
    }
    drop(starting);
    eprintln!(
        "simulate: {} gateways up",
        1 + sectors.len() + clusters.len()
    );
    let targets: Vec<(String, SocketAddr, baton_shared::PublicKey)> = clusters
        .iter()
        .enumerate()
        .map(|(c, node)| (format!("c{c}"), node.gw.broker, node.key))
        .collect();
    // agent 0 alone in a process of its own: the one killed
    let started = Instant::now();
    let mut sims = vec![start_sims(
        exe,
        0..1,
        &targets,
        &top.key,
        a.rate,
        a.clock_skew,
    )?];
    let mut first = 1;
    while first < n {
        let count = a.per_process.min(n - first);
        sims.push(start_sims(
            exe,
            first..first + count,
            &targets,
            &top.key,
            a.rate,
            a.clock_skew,
        )?);
        first += count;
    }
    // a wait that runs out is a problem reported with the table, not an
    // end without figures
    let mut problems = Vec::new();
    let active_bar = Progress::new("agents active at the top", Some(n as u64));
    let active = until(Duration::from_secs(600), "agents active at the top", || {
        let s = http_json(top.gw.http, "/api/v1/status")?;
        let got = num(&s, "active");
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        active_bar.set(got as u64);
        Ok((got < n as f64).then(|| format!("{got} of {n} active")))
    })
    .await;
    drop(active_bar);
    let active_s = seconds(active, &mut problems).max(started.elapsed().as_secs_f64());
    eprintln!("simulate: {n} agents started, active at the top after {active_s:.1} s");

    // the window: rates, lag, CPU
    let tiers: Vec<(&'static str, Vec<&GatewayChild>)> = vec![
        ("cluster", clusters.iter().map(|x| &x.gw).collect()),
        ("sector", sectors.iter().map(|x| &x.gw).collect()),
        ("top", vec![&top.gw]),
    ];
    let mut kinds: Vec<(&'static str, Vec<u32>)> = tiers
        .iter()
        .map(|(k, gws)| (*k, gws.iter().map(|g| g.child.0.id()).collect()))
        .collect();
    kinds.push((
        "mosquitto",
        clusters
            .iter()
            .chain(&sectors)
            .chain(std::iter::once(&top))
            .filter_map(|c| c.broker.as_ref().map(|b| b.0.id()))
            .collect(),
    ));
    kinds.push(("sim-agents", sims.iter().map(|s| s.child.0.id()).collect()));
    let ticks = |pids: &[u32]| -> u64 { pids.iter().filter_map(|p| cpu_ticks(*p).ok()).sum() };
    let t0 = Instant::now();
    let cpu0: Vec<u64> = kinds.iter().map(|(_, p)| ticks(p)).collect();
    let before = tiers
        .iter()
        .map(|(_, g)| TierSample::take(g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // the archive's lag, sampled each second (else just the window)
    let mut lag: Option<ArchiveLag> = None;
    if a.archive.is_some() {
        let (_, archived0) = archive_lag(&top.gw)?;
        let mut l = ArchiveLag::default();
        while t0.elapsed() < a.window {
            tokio::time::sleep(Duration::from_secs(1).min(a.window)).await;
            let (behind, archived) = archive_lag(&top.gw)?;
            l.lag_max = l.lag_max.max(behind);
            l.lag_end = behind;
            l.rows_per_s = (archived - archived0) / t0.elapsed().as_secs_f64();
        }
        lag = Some(l);
    } else {
        tokio::time::sleep(a.window).await;
    }
    let over = t0.elapsed().as_secs_f64();
    let cpu1: Vec<u64> = kinds.iter().map(|(_, p)| ticks(p)).collect();
    let after = tiers
        .iter()
        .map(|(_, g)| TierSample::take(g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let age = |k: usize, q: f64| bucket_quantile(&before[k].ages, &after[k].ages, q);
    let mut report = FleetReport {
        agents: n,
        clusters: a.clusters,
        sectors: a.sectors,
        rate: a.rate,
        window_s: over,
        active_s,
        stored_per_s: std::array::from_fn(|k| (after[k].stored - before[k].stored) / over),
        age_s: std::array::from_fn(|k| [age(k, 0.5), age(k, 0.99)]),
        heartbeats_per_s: (after[0].heartbeats - before[0].heartbeats) / over,
        problems,
        ..FleetReport::default()
    };
    for (k, (kind, pids)) in kinds.iter().enumerate() {
        let rss: Vec<f64> = pids
            .iter()
            .map(|p| baton_runtime::proc::rss_kb(*p, "VmRSS:") as f64 / 1024.0)
            .collect();
        report.kinds.insert(
            kind,
            (
                pids.len(),
                cpu1[k].saturating_sub(cpu0[k]) as f64 / TICKS_PER_S / over,
                rss.iter().sum(),
                rss.iter().copied().fold(0.0, f64::max),
            ),
        );
    }
    // the oldest summary any parent holds of a child
    let now = baton_runtime::unix_ms() as f64;
    for p in sectors.iter().chain(std::iter::once(&top)) {
        let c = http_json(p.gw.http, "/api/v1/cluster")?;
        if let Some(Value::Object(ch)) = field(&c, "children") {
            for (_, s) in ch.iter() {
                report.summary_age_max_ms = report.summary_age_max_ms.max(now - num(s, "at_ms"));
            }
        }
    }
    eprintln!("simulate: window done; a command to every agent");
    command_all(&top, &clusters, n, &mut report).await?;

    // one agent dies: its process SIGKILLed. Counted from every agent
    // active again (the command's burst may have left one late), so the
    // one fewer is the one killed.
    let settled = until(Duration::from_secs(120), "every agent active again", || {
        let got = num(&http_json(top.gw.http, "/api/v1/status")?, "active");
        Ok((got < n as f64).then(|| format!("{got} of {n} active")))
    })
    .await;
    seconds(settled, &mut report.problems);
    drop(sims.remove(0));
    let offline = until(
        Duration::from_secs(300),
        "the killed agent offline at the top",
        || {
            let s = http_json(top.gw.http, "/api/v1/status")?;
            let got = num(&s, "active");
            Ok((got > (n - 1) as f64).then(|| format!("{got} active")))
        },
    )
    .await;
    report.offline_s = seconds(offline, &mut report.problems);
    eprintln!(
        "simulate: the killed agent offline at the top after {:.1} s; stopping the appends",
        report.offline_s
    );

    // the appends stop; every chain at the top to the agent's head
    let mut heads: BTreeMap<String, u64> = BTreeMap::new();
    for mut s in sims {
        drop(s.child.0.stdin.take());
        let out = s.child.0.stdout.take().context("sim-agents stdout")?;
        for line in std::io::BufReader::new(out).lines() {
            let line = line?;
            let v = baton_shared::json::parse(line.as_bytes(), baton_shared::json::Mode::Verify)
                .map_err(|e| anyhow::anyhow!("sim-agents printed {line:?}: {e}"))?;
            let agent = field(&v, "agent")
                .and_then(|x| x.as_str().map(str::to_owned))
                .context("no agent")?;
            heads.insert(agent, num(&v, "head") as u64);
        }
        let status = s.child.0.wait()?;
        if !status.success() {
            bail!("sim-agents {:?} ended with {status}", s.agents);
        }
    }
    anyhow::ensure!(
        heads.len() == n - 1,
        "sim-agents reported {} agents of {}",
        heads.len(),
        n - 1
    );
    report.entries_total = heads.values().sum();
    let mut behind = String::new();
    let drained = until(Duration::from_secs(300), "every chain at the top", || {
        let list = http_json(top.gw.http, "/api/v1/agents")?;
        let Value::Array(rows) = list else {
            bail!("/api/v1/agents: not a list");
        };
        let at_top: BTreeMap<String, u64> = rows
            .iter()
            .filter_map(|r| {
                Some((
                    field(r, "id")?.as_str()?.to_owned(),
                    field(r, "head_seq")?.as_exact_u64()?,
                ))
            })
            .collect();
        let short: Vec<String> = heads
            .iter()
            .filter(|(a, h)| at_top.get(*a).copied().unwrap_or(0) < **h)
            .take(5)
            .map(|(a, h)| format!("{a} {}/{h}", at_top.get(a).copied().unwrap_or(0)))
            .collect();
        behind = short.join(", ");
        Ok((!short.is_empty()).then(|| format!("behind: {behind}")))
    })
    .await;
    report.drained_s = seconds(drained, &mut report.problems);
    if let Some(mut l) = lag {
        let caught_up = until(Duration::from_secs(300), "the top's archive", || {
            let (behind, _) = archive_lag(&top.gw)?;
            Ok((behind > 0.0).then(|| format!("{behind:.0} entries behind")))
        })
        .await;
        l.drained_s = seconds(caught_up, &mut report.problems);
        report.archive = Some(l);
    }
    report.chains_checked = heads.len();
    drop(clusters);
    drop(sectors);
    drop(top);
    if a.check {
        // the top's store, read back and verified offline: every link,
        // hash and signature of every chain it holds
        let v = Command::new(exe)
            .args(["verify", "--data-dir"])
            .arg(root.join("top"))
            .output()
            .context("running verify on the top's store")?;
        let text = String::from_utf8_lossy(&v.stdout);
        if !v.status.success() {
            report.problems.push(format!(
                "verify of the top's store failed: {}",
                text.lines()
                    .filter(|l| !l.contains(": valid:"))
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        report.verified_offline = text.lines().filter(|l| l.contains(": valid:")).count();
    }
    // correctness, not speed: every agent answered (on time or late: on
    // one box the tiers share two cores, see BENCHMARKS.md)
    if report.selected < n as f64 || report.answered < report.selected {
        report.problems.push(format!(
            "the command: {} of {} agents selected, {} answered",
            report.selected, n, report.answered
        ));
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(report)
}

/// A `record` command from the top to every agent, T as early as the
/// tree's leads allow; its KPIs into `report`.
async fn command_all(
    top: &Node,
    clusters: &[Node],
    n: usize,
    report: &mut FleetReport,
) -> anyhow::Result<()> {
    // the largest subtree lead the top's children report, plus the
    // operator's request and the top's commit (as bench-coord)
    let c = http_json(top.gw.http, "/api/v1/cluster")?;
    let lead = match field(&c, "children") {
        Some(Value::Object(ch)) => ch
            .iter()
            .filter_map(|(_, s)| field(s, "subtree_lead_ms")?.as_f64())
            .fold(0.0, f64::max),
        _ => 0.0,
    };
    #[allow(clippy::cast_possible_truncation)]
    let lead_in = (lead + 50.0).ceil() as i64;
    report.lead_in_ms = lead_in;
    let body = format!(
        r#"{{"verb":"record","payload":{{"fleet":{n}}},"in":"{lead_in}ms","window":"50ms","ttl":"5s","priority":2}}"#
    );
    let answer = crate::cli::http_post(
        &format!("http://{}", top.gw.http),
        "/api/v1/command",
        &body,
        &top.token,
    )?;
    let issued = baton_shared::json::parse(answer.as_bytes(), baton_shared::json::Mode::Verify)
        .map_err(|e| anyhow::anyhow!("issuing: {e}"))?;
    let hash = field(&issued, "hash")
        .and_then(|h| h.as_str().map(str::to_owned))
        .context("no hash in the issue answer")?;
    let mut view = Value::Null;
    let phase = until(
        Duration::from_secs(120),
        "the command's window phase",
        || {
            view = http_json(top.gw.http, &format!("/api/v1/commands/{hash}"))?;
            let stage = field(&view, "stage").and_then(|s| s.as_str().map(str::to_owned));
            Ok((stage.as_deref() == Some("open")).then(|| "open".to_owned()))
        },
    )
    .await;
    seconds(phase, &mut report.problems);
    if field(&view, "decision").and_then(|d| d.as_str().map(str::to_owned))
        != Some("PROCEED".to_owned())
    {
        let text = String::from_utf8_lossy(&baton_shared::canonical::to_vec(&view)).into_owned();
        eprintln!(
            "simulate: the top's view of the command: {}",
            &text[..text.len().min(3000)]
        );
    }
    report.selected = num(&view, "selected");
    report.hit_rate = num(&view, "on_time") / report.selected.max(1.0);
    report.decision = field(&view, "decision")
        .and_then(|d| d.as_str().map(str::to_owned))
        .unwrap_or_default();
    // answered by all: each cluster holds its agents' answers (late ones
    // too, which a parent's tally closed at its window does not count)
    let mut errors = Vec::new();
    let answered = until(Duration::from_secs(60), "every agent's answer", || {
        errors.clear();
        let mut answered = 0.0;
        for g in clusters {
            // a cluster the command never reached has none in hand
            let Ok(v) = http_json(g.gw.http, &format!("/api/v1/commands/{hash}")) else {
                continue;
            };
            answered += num(&v, "ready") + num(&v, "conflict");
            errors.extend(prediction_errors(&v));
        }
        report.answered = answered;
        Ok((answered < report.selected).then(|| format!("{answered} of {}", report.selected)))
    })
    .await;
    seconds(answered, &mut report.problems);
    errors.sort_by(f64::total_cmp);
    report.err_p50_ms = quantile(&errors, 0.5);
    report.err_p90_ms = quantile(&errors, 0.9);
    report.err_p99_ms = quantile(&errors, 0.99);
    Ok(())
}

/// The report as markdown.
pub fn table(r: &FleetReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} agents, {} clusters, {} sectors, {} entries/s each ({:.0}/s offered), window {:.0} s\n",
        r.agents,
        r.clusters,
        r.sectors,
        r.rate,
        r.rate * r.agents as f64,
        r.window_s
    );
    let rows: Vec<(String, String)> = vec![
        (
            "all agents active at the top".into(),
            format!("{:.1} s", r.active_s),
        ),
        (
            "entries/s stored: clusters / sectors / top".into(),
            format!(
                "{:.0} / {:.0} / {:.0}",
                r.stored_per_s[0], r.stored_per_s[1], r.stored_per_s[2]
            ),
        ),
        (
            "age of entries when stored p50 / p99 (bucket bound): clusters; sectors; top".into(),
            r.age_s
                .iter()
                .map(|[p50, p99]| format!("≤ {p50} / ≤ {p99} s"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (
            "heartbeats/s taken".into(),
            format!("{:.0}", r.heartbeats_per_s),
        ),
        (
            "oldest child summary at a parent (since it last changed)".into(),
            format!("{:.1} s", r.summary_age_max_ms / 1000.0),
        ),
        (
            "one agent killed → offline at the top".into(),
            format!("{:.1} s", r.offline_s),
        ),
        (
            "command to all: on time, answered / selected, decision".into(),
            format!(
                "{:.1}%, {:.0} / {:.0}, {} (T − issue {} ms)",
                r.hit_rate * 100.0,
                r.answered,
                r.selected,
                r.decision,
                r.lead_in_ms
            ),
        ),
        (
            "prediction error p50 / p90 / p99".into(),
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                r.err_p50_ms, r.err_p90_ms, r.err_p99_ms
            ),
        ),
        (
            "appends stopped → every chain at the top".into(),
            format!(
                "{:.1} s ({} chains, {} entries)",
                r.drained_s, r.chains_checked, r.entries_total
            ),
        ),
    ];
    let mut rows = rows;
    if let Some(l) = &r.archive {
        rows.push((
            "the top's archive: rows/s over the window; lag max / at the end".into(),
            format!(
                "{:.0}/s; {:.0} / {:.0} entries",
                l.rows_per_s, l.lag_max, l.lag_end
            ),
        ));
        rows.push((
            "every chain at the top → all in its archive".into(),
            format!("{:.1} s", l.drained_s),
        ));
    }
    if r.verified_offline > 0 {
        rows.push((
            "chains verify read back from the top's store".into(),
            format!("{} valid", r.verified_offline),
        ));
    }
    let _ = writeln!(out, "| measure | value |\n|---|---:|");
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    let _ = writeln!(
        out,
        "\n| process kind | processes | cores | RSS MiB total | RSS MiB largest |\n|---|---:|---:|---:|---:|"
    );
    for (kind, (procs, cores, total, largest)) in &r.kinds {
        let _ = writeln!(
            out,
            "| {kind} | {procs} | {cores:.2} | {total:.0} | {largest:.0} |"
        );
    }
    out
}

/// `sim-agents`' own main: parses `NAME=ADDR=KEY` cluster specs, runs the
/// agents until stdin closes (or `run_for`), prints one JSON line each.
pub fn parse_cluster(spec: &str) -> anyhow::Result<crate::fleet_sim::SimCluster> {
    let mut parts = spec.splitn(3, '=');
    let (Some(name), Some(addr), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--cluster {spec:?}: expected NAME=ADDR=KEY");
    };
    Ok(crate::fleet_sim::SimCluster {
        name: name.to_owned(),
        broker: addr
            .parse()
            .with_context(|| format!("--cluster {spec:?}: address"))?,
        gateway_key: baton_shared::PublicKey::trusted_hex(key)
            .map_err(|e| anyhow::anyhow!("--cluster {spec:?}: key: {e}"))?,
    })
}

/// Prints each agent's end as a JSON line.
pub fn print_ends(ends: &[crate::fleet_sim::SimEnd]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for e in ends {
        writeln!(
            out,
            "{{\"agent\":\"{}\",\"head\":{},\"receipted\":{}}}",
            e.agent, e.head.0, e.receipted.0
        )?;
    }
    Ok(())
}
