//! `baton-gateway bench-coord`: commands that arrive on time, measured
//! through two tiers and side by side with a naive broadcast.
//!
//! A top gateway process and K cluster gateway processes (each on its own
//! broker, embedded or a Mosquitto, forwarding to the top) and N simulated
//! agents split over the clusters — each a real MQTT connection to its
//! cluster's broker with its own key, heartbeating a profile of its class
//! (the seed's classes A–F: RTT 2–80 ms, processing 1–40 ms, 10% jitter)
//! and answering
//! commands as an agent does: a delivery is taken after an injected one-way
//! delay, prepared after an injected processing time, and answered with a
//! signed `command_ack` entry on `cmd/reply` whose `ready_ms` carries a
//! clock error of ±2 ms (what is left after the clock exchange).
//!
//! Scheduled: the top's operator issues `record` commands with T as early
//! as the tree's leads allow (the largest subtree lead a cluster reports,
//! plus 50 ms) and a 50 ms window; the top sends to each cluster at T − its
//! subtree lead, each cluster to each agent at T − its lead. Naive: the
//! same agents get one plain MQTT broadcast per cluster and act on
//! arrival, as a fleet without arrival-time scheduling would. The KPIs of
//! both come from the same run, and so does what each tier's CPU spends
//! on one agent-command beyond its idle cost, which bounds the earliest T
//! a whole fleet on one box can meet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_shared::command::{Answer, Command, State};
use baton_shared::json::{Object, Value};
use baton_shared::topic::{self, Kind};
use baton_shared::wire::{CommandDelivery, CommandReply, Message};
use baton_shared::{AgentId, Entry, Hash, Seq};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::bench::{GatewayChild, spawn_gateway, tempfile_dir};
use crate::fleet_bench::{TICKS_PER_S, cpu_ticks, field, heartbeat, http_json, sim_key};

/// The seed's device classes: (name, RTT p50 ms, processing p50 ms).
pub(crate) const CLASSES: [(&str, f64, f64); 6] = [
    ("A", 2.0, 1.0),
    ("B", 5.0, 2.0),
    ("C", 10.0, 5.0),
    ("D", 20.0, 10.0),
    ("E", 40.0, 20.0),
    ("F", 80.0, 40.0),
];
pub(crate) const JITTER: f64 = 0.1;
const CLOCK_ERROR_MS: f64 = 2.0;
const WINDOW_MS: i64 = 50;
/// T − issue beyond the largest subtree lead the clusters report: the
/// top's own hop to a cluster and the operator's HTTP request.
const LEAD_SLACK_MS: f64 = 50.0;
const NAIVE_TOPIC: &str = "bench/naive";

/// What to run.
#[derive(Debug, Clone)]
pub struct CoordArgs {
    /// Fleet sizes.
    pub sizes: Vec<usize>,
    /// Commands per size, each way.
    pub commands: usize,
    /// Each size also with every cluster on its own Mosquitto (skipped,
    /// with a word, when Mosquitto is not installed).
    pub mosquitto: bool,
    /// The clusters' `command_send_spacing`, if not the default.
    pub spacing: Option<String>,
}

/// One row: one fleet size, one way of sending.
#[derive(Debug, Clone)]
pub struct CoordRow {
    pub agents: usize,
    pub clusters: usize,
    pub way: &'static str,
    pub commands: usize,
    /// READY by T + window ÷ selected.
    pub hit_rate: f64,
    pub err_p50_ms: f64,
    pub err_p90_ms: f64,
    pub err_p99_ms: f64,
    /// Commands whose decision was PROCEED.
    pub success_rate: f64,
    pub conflict_rate: f64,
    /// Issue → the last on-time answer entering the tree (its agent's
    /// publish), p95 over commands.
    pub cascade_p95_ms: f64,
    /// T − issue for the scheduled way (in the cascade).
    pub lead_in_ms: i64,
    /// A delivery's arrival at its agent − its planned send, p50 and p99
    /// (scheduled way): how late the cluster's timer and the broker made
    /// it, before the agent's own link and work.
    pub late_p50_ms: f64,
    pub late_p99_ms: f64,
    /// The clusters' broker: `embedded` or `mosquitto`.
    pub broker: &'static str,
    /// CPU time per agent-command (µs) beyond what each tier spends with
    /// no command: the top, all clusters, their Mosquittos, the simulated
    /// agents (scheduled way only).
    pub cost_us: [f64; 4],
    /// RSS (MiB) of the top and of one cluster gateway.
    pub top_rss_mb: f64,
    pub cluster_rss_mb: f64,
}

/// Cheap deterministic randomness (SplitMix64).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        #[allow(clippy::cast_precision_loss)]
        let u = (z ^ (z >> 31)) as f64 / u64::MAX as f64;
        u
    }

    /// `x` ± `spread` (uniform).
    pub(crate) fn around(&mut self, x: f64, spread: f64) -> f64 {
        (x * (1.0 + spread * (2.0 * self.unit() - 1.0))).max(0.0)
    }
}

/// What the simulated agents saw: per command (hash, or the naive
/// broadcast's number), each agent's (ready wall ms, answer publish wall
/// ms, arrival − the delivery's planned send in ms: how late the
/// gateway's send and the broker made it; 0 for the naive way).
type Seen = Arc<Mutex<BTreeMap<String, Vec<(i64, i64, i64)>>>>;

fn cluster_of(i: usize, clusters: usize) -> String {
    format!("c{}", i % clusters)
}

#[allow(clippy::too_many_lines)]
fn start_sim(
    broker: SocketAddr,
    cluster: String,
    i: usize,
    seen: Seen,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let agent = AgentId::new(format!("sim-{i}"))?;
    let key = sim_key(i);
    let (name, rtt, processing) = CLASSES[i % CLASSES.len()];
    let mut o = MqttOptions::new(agent.as_str(), broker.ip().to_string(), broker.port());
    // The clusters run `broker_auth = "none"` (the naive broadcast needs a
    // topic no agent ACL allows), but rumqttd still wants a user name.
    o.set_credentials(agent.as_str(), "");
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut el) = AsyncClient::new(o, 64);
    let hb_t = topic::agent(&cluster, &agent, Kind::Hb);
    let cmd_t = topic::agent(&cluster, &agent, Kind::Cmd);
    let reply_t = topic::agent(&cluster, &agent, Kind::CmdReply);
    let naive_t = format!("{NAIVE_TOPIC}/{cluster}");
    Ok(tokio::spawn(async move {
        let mut rng = Rng(i as u64 ^ 0x5eed);
        let beats = client.clone();
        let hb_agent = agent.clone();
        let class = format!("CLASS_{name}");
        let phase = Duration::from_millis((i as u64 * 37) % 5000);
        tokio::spawn(async move {
            tokio::time::sleep(phase.min(Duration::from_millis(500))).await;
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let mut hb = heartbeat(&hb_agent, baton_runtime::unix_ms());
                #[allow(clippy::cast_possible_truncation)]
                {
                    hb.impedance.latency_p50_ms = rtt as f32;
                    hb.impedance.processing_p50_ms = processing as f32;
                    hb.impedance.jitter = JITTER as f32;
                }
                hb.system.class.clone_from(&class);
                let _ = beats
                    .publish(&hb_t, QoS::AtMostOnce, false, hb.encode())
                    .await;
            }
        });
        let mut seq = 0u64;
        loop {
            let p = match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(&cmd_t, QoS::AtLeastOnce).await;
                    let _ = client.subscribe(&naive_t, QoS::AtMostOnce).await;
                    continue;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => p,
                Ok(_) => continue,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let one_way = rng.around(rtt / 2.0, JITTER);
            let work = rng.around(processing, JITTER);
            let clock_err = CLOCK_ERROR_MS * (2.0 * rng.unit() - 1.0);
            let naive = p.topic == naive_t;
            let (client, seen, agent, key) = (
                client.clone(),
                Arc::clone(&seen),
                agent.clone(),
                key.clone(),
            );
            let reply_t = reply_t.clone();
            let arrived = baton_runtime::unix_ms();
            seq += 1;
            let my_seq = seq;
            tokio::spawn(async move {
                // the link, then the preparation
                tokio::time::sleep(Duration::from_secs_f64((one_way + work) / 1000.0)).await;
                #[allow(clippy::cast_possible_truncation)]
                let ready = baton_runtime::unix_ms() + clock_err.round() as i64;
                if naive {
                    let id = String::from_utf8_lossy(&p.payload).into_owned();
                    let mut s = seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    s.entry(id).or_default().push((ready, ready, 0));
                    return;
                }
                let Ok(d) = CommandDelivery::decode(&p.payload) else {
                    return;
                };
                let late = arrived - d.sent_ms;
                let Ok(c) = Command::from_canonical(&d.content) else {
                    return;
                };
                let answer = Answer {
                    hash: c.hash,
                    state: State::Ready,
                    received_ms: ready,
                    ready_ms: Some(ready),
                    processing_ms: Some(work.round() as u64),
                    conflict: None,
                    result: None,
                };
                let mut content = Object::new();
                content.insert("agent", Value::from(agent.as_str()));
                content.insert("data", answer.to_data());
                content.insert("event", Value::from("command_ack"));
                content.insert("seq", Value::from(my_seq));
                content.insert(
                    "ts",
                    Value::from(baton_shared::entry::format_timestamp(ready)),
                );
                content.insert("v", Value::from(1u64));
                let mut e = Entry::seal(
                    baton_shared::canonical::to_vec(&Value::Object(content)),
                    Hash::ZERO,
                );
                e.sig = Some(key.sign_checkpoint(&agent, Seq(my_seq), &e.hash));
                let reply = CommandReply { agent, entry: e };
                let _ = client
                    .publish(&reply_t, QoS::AtLeastOnce, false, reply.encode())
                    .await;
                let sent = baton_runtime::unix_ms();
                let mut s = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.entry(c.hash.to_hex())
                    .or_default()
                    .push((ready, sent, late));
            });
        }
    }))
}

/// The absolute prediction errors (ms) of the agents in a cluster's view
/// of a command (`/api/v1/commands/{hash}`).
pub(crate) fn prediction_errors(view: &Value) -> Vec<f64> {
    match field(view, "agents") {
        Some(Value::Array(agents)) => agents
            .iter()
            .filter_map(|a| field(a, "prediction_error_ms")?.as_f64())
            .map(f64::abs)
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub(crate) fn num(v: &Value, k: &str) -> f64 {
    field(v, k).and_then(|x| x.as_f64()).unwrap_or(0.0)
}

struct Tree {
    top: GatewayChild,
    clusters: Vec<GatewayChild>,
    /// The clusters' Mosquittos, when they run on Mosquitto.
    brokers: Vec<crate::bench::ChildGuard>,
    dirs: Vec<std::path::PathBuf>,
}

fn start_tree(
    exe: &Path,
    n: usize,
    clusters: usize,
    spacing: Option<&str>,
    mosquitto: bool,
) -> anyhow::Result<Tree> {
    let top_dir = tempfile_dir()?;
    let top_key = baton_runtime::keys::generate(&top_dir.join("gateway.key"))?;
    std::fs::create_dir_all(top_dir.join("agents"))?;
    let fast = ["--summary-interval", "1s", "--summary-chain-interval", "1s"].map(String::from);
    let top = spawn_gateway(exe, &top_dir, "top", None, clusters, &fast)?;
    let token = std::fs::read_to_string(top_dir.join("operator.token"))?;
    let mut dirs = vec![top_dir];
    let mut children = Vec::new();
    let mut brokers = Vec::new();
    for c in 0..clusters {
        let name = format!("c{c}");
        let dir = tempfile_dir()?;
        let key = baton_runtime::keys::generate(&dir.join("gateway.key"))?;
        let keys_dir = dir.join("agents");
        std::fs::create_dir_all(&keys_dir)?;
        for i in (0..n).filter(|i| cluster_of(*i, clusters) == name) {
            std::fs::write(
                keys_dir.join(format!("sim-{i}.pub")),
                sim_key(i).public().to_hex(),
            )?;
        }
        let body = format!(
            "{{\"agent\":\"gw-{name}\",\"public_key\":\"{}\",\"child_cluster\":\"{name}\"}}",
            key.public().to_hex()
        );
        crate::cli::http_post(
            &format!("http://{}", top.http),
            "/api/v1/enroll",
            &body,
            token.trim(),
        )?;
        let mut extra = fast.to_vec();
        extra.extend([
            "--upstream".into(),
            format!("mqtt://{}", top.broker),
            "--upstream-key".into(),
            top_key.public().to_hex(),
            "--broker-auth".into(),
            "none".into(),
        ]);
        if let Some(s) = spacing {
            extra.extend(["--command-send-spacing".into(), s.to_owned()]);
        }
        let external = if mosquitto {
            let (guard, addr) = crate::bench::start_mosquitto(n / clusters + 1)?
                .context("mosquitto is not installed")?;
            brokers.push(guard);
            Some(addr)
        } else {
            None
        };
        children.push(spawn_gateway(
            exe,
            &dir,
            &name,
            external,
            n / clusters + 1,
            &extra,
        )?);
        dirs.push(dir);
    }
    Ok(Tree {
        top,
        clusters: children,
        brokers,
        dirs,
    })
}

/// The subtree lead (ms) each child of the top reports.
fn subtree_leads(top: SocketAddr) -> anyhow::Result<Vec<f64>> {
    let c = http_json(top, "/api/v1/cluster")?;
    Ok(match field(&c, "children") {
        Some(Value::Object(ch)) => ch
            .iter()
            .filter_map(|(_, s)| field(s, "subtree_lead_ms")?.as_f64())
            .collect(),
        _ => Vec::new(),
    })
}

/// How long each tier's cost with no command is sampled.
const IDLE_SAMPLE: Duration = Duration::from_secs(5);

/// The processes of each tier: the top, the cluster gateways, their
/// Mosquittos (none with embedded brokers: those are inside the
/// clusters), and the simulated agents (this process).
struct Tiers {
    top: u32,
    clusters: Vec<u32>,
    brokers: Vec<u32>,
}

impl Tiers {
    fn of(tree: &Tree) -> Tiers {
        Tiers {
            top: tree.top.child.0.id(),
            clusters: tree.clusters.iter().map(|g| g.child.0.id()).collect(),
            brokers: tree.brokers.iter().map(|b| b.0.id()).collect(),
        }
    }

    /// CPU ticks so far: top, clusters, brokers, agents.
    fn ticks(&self) -> anyhow::Result<[u64; 4]> {
        let sum =
            |pids: &[u32]| -> anyhow::Result<u64> { pids.iter().map(|p| cpu_ticks(*p)).sum() };
        Ok([
            cpu_ticks(self.top)?,
            sum(&self.clusters)?,
            sum(&self.brokers)?,
            cpu_ticks(std::process::id())?,
        ])
    }

    /// Cores used by each tier between two readings.
    #[allow(clippy::cast_precision_loss)]
    fn rate(from: [u64; 4], to: [u64; 4], over: Duration) -> [f64; 4] {
        std::array::from_fn(|k| {
            to[k].saturating_sub(from[k]) as f64 / TICKS_PER_S / over.as_secs_f64()
        })
    }

    /// RSS (MiB) of the top and of one cluster gateway.
    #[allow(clippy::cast_precision_loss)]
    fn rss(&self) -> (f64, f64) {
        let mib = |pid| baton_runtime::proc::rss_kb(pid, "VmRSS:") as f64 / 1024.0;
        (
            mib(self.top),
            self.clusters.first().map_or(0.0, |c| mib(*c)),
        )
    }
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
async fn one_size(
    exe: &Path,
    n: usize,
    args: &CoordArgs,
    mosquitto: bool,
) -> anyhow::Result<Vec<CoordRow>> {
    let commands = args.commands;
    let clusters = n.div_ceil(2500).max(2);
    let tree = start_tree(exe, n, clusters, args.spacing.as_deref(), mosquitto)?;
    let seen: Seen = Arc::default();
    let mut sims = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % clusters;
        sims.push(start_sim(
            tree.clusters[c].broker,
            cluster_of(i, clusters),
            i,
            Arc::clone(&seen),
        )?);
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // every agent active at the top, every cluster's subtree lead known
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let c = http_json(tree.top.http, "/api/v1/cluster")?;
        if num(&c, "active") >= n as f64 && subtree_leads(tree.top.http)?.len() == clusters {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} agents became active at the top",
                num(&c, "active")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let url = format!("http://{}", tree.top.http);
    let token = std::fs::read_to_string(tree.dirs[0].join("operator.token"))?;
    let mut rows = Vec::new();
    // two summary intervals: every cluster's lead counts all its agents
    tokio::time::sleep(Duration::from_secs(2)).await;
    // T as early as the tree's leads allow: the slowest cluster's subtree
    // lead (its agents' p95 lead and its burst), plus the top's hop
    let lead_in = subtree_leads(tree.top.http)?
        .into_iter()
        .fold(0.0, f64::max);
    #[allow(clippy::cast_possible_truncation)]
    let lead_in = (lead_in + LEAD_SLACK_MS).ceil() as i64;

    // what each tier spends with no command (heartbeats, summaries), so
    // that only the commands' own work is charged to them
    let tiers = Tiers::of(&tree);
    let idle_from = (tiers.ticks()?, Instant::now());
    tokio::time::sleep(IDLE_SAMPLE).await;
    let idle_rate = Tiers::rate(idle_from.0, tiers.ticks()?, idle_from.1.elapsed());

    // scheduled, through the tiers
    let before = tiers.ticks()?;
    let t0 = Instant::now();
    let (mut selected, mut on_time, mut conflicts, mut proceed) = (0.0, 0.0, 0.0, 0);
    let mut errors: Vec<f64> = Vec::new();
    let mut cascades: Vec<f64> = Vec::new();
    let mut lates: Vec<f64> = Vec::new();
    for k in 0..commands {
        let body = format!(
            r#"{{"verb":"record","payload":{{"n":{k}}},"in":"{lead_in}ms","window":"{WINDOW_MS}ms","ttl":"1s","priority":2}}"#
        );
        let issued_ms = baton_runtime::unix_ms();
        let answer = crate::cli::http_post(&url, "/api/v1/command", &body, token.trim())?;
        let issued = baton_shared::json::parse(answer.as_bytes(), baton_shared::json::Mode::Verify)
            .map_err(|e| anyhow::anyhow!("issuing: {e}"))?;
        let hash = field(&issued, "hash")
            .and_then(|h| h.as_str().map(str::to_owned))
            .context("no hash in the issue answer")?;
        let target = issued_ms + lead_in;
        // the top's window phase (T + window + 2 × 2 s)
        let view = loop {
            let v = http_json(tree.top.http, &format!("/api/v1/commands/{hash}"))?;
            if field(&v, "stage")
                .and_then(|s| s.as_str().map(str::to_owned))
                .as_deref()
                != Some("open")
            {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        selected += num(&view, "selected");
        on_time += num(&view, "on_time");
        conflicts += num(&view, "conflict");
        if field(&view, "decision")
            .and_then(|d| d.as_str().map(str::to_owned))
            .as_deref()
            == Some("PROCEED")
        {
            proceed += 1;
        }
        for g in &tree.clusters {
            // a cluster the top skipped never heard of the command
            let Ok(v) = http_json(g.http, &format!("/api/v1/commands/{hash}")) else {
                continue;
            };
            errors.extend(prediction_errors(&v));
        }
        let s = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(answers) = s.get(&hash) {
            #[allow(clippy::cast_precision_loss)]
            lates.extend(answers.iter().map(|(.., late)| *late as f64));
            let last = answers
                .iter()
                .filter(|(ready, ..)| *ready <= target + WINDOW_MS)
                .map(|(_, sent, _)| *sent)
                .max()
                .unwrap_or(issued_ms);
            cascades.push((last - issued_ms) as f64);
        }
    }
    let spent = Tiers::rate(before, tiers.ticks()?, t0.elapsed());
    let cost_us: [f64; 4] = std::array::from_fn(|k| {
        (spent[k] - idle_rate[k]).max(0.0) * t0.elapsed().as_secs_f64() / selected.max(1.0) * 1e6
    });
    let rss = tiers.rss();
    errors.sort_by(f64::total_cmp);
    cascades.sort_by(f64::total_cmp);
    lates.sort_by(f64::total_cmp);
    let row = |way, hit, e: &[f64], success, conflict, cascade: &[f64], late: &[f64]| CoordRow {
        agents: n,
        clusters,
        way,
        commands,
        hit_rate: hit,
        err_p50_ms: quantile(e, 0.5),
        err_p90_ms: quantile(e, 0.9),
        err_p99_ms: quantile(e, 0.99),
        success_rate: success,
        conflict_rate: conflict,
        cascade_p95_ms: quantile(cascade, 0.95),
        lead_in_ms: lead_in,
        late_p50_ms: quantile(late, 0.5),
        late_p99_ms: quantile(late, 0.99),
        broker: if mosquitto { "mosquitto" } else { "embedded" },
        cost_us,
        top_rss_mb: rss.0,
        cluster_rss_mb: rss.1,
    };
    rows.push(row(
        "scheduled",
        on_time / selected.max(1.0),
        &errors,
        f64::from(proceed) / commands as f64,
        conflicts / selected.max(1.0),
        &cascades,
        &lates,
    ));

    // naive: one plain broadcast per cluster, every agent acts on arrival
    let mut publishers = Vec::new();
    for g in &tree.clusters {
        let mut o = MqttOptions::new(
            format!("bench-naive-{}", g.broker.port()),
            g.broker.ip().to_string(),
            g.broker.port(),
        );
        o.set_credentials("bench-naive", "");
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 64);
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        publishers.push(client);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut hits, mut total) = (0.0, 0.0);
    let mut errors = Vec::new();
    let mut cascades = Vec::new();
    for k in 0..commands {
        let id = format!("naive-{k}");
        let sent = baton_runtime::unix_ms();
        for (c, p) in publishers.iter().enumerate() {
            p.publish(
                format!("{NAIVE_TOPIC}/c{c}"),
                QoS::AtMostOnce,
                false,
                id.clone().into_bytes(),
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let s = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ready: Vec<i64> = s
            .get(&id)
            .map(|v| v.iter().map(|(r, ..)| *r).collect())
            .unwrap_or_default();
        ready.sort_unstable();
        // the best any window of WINDOW_MS could catch (generous to naive)
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..ready.len() {
            while ready[hi] - ready[lo] > WINDOW_MS {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        hits += best as f64;
        total += n as f64;
        // a broadcast predicts "now": every agent's error is its delay
        errors.extend(ready.iter().map(|r| (r - sent) as f64));
        if let Some(last) = ready.last() {
            cascades.push((last - sent) as f64);
        }
    }
    errors.sort_by(f64::total_cmp);
    cascades.sort_by(f64::total_cmp);
    let rss = tiers.rss();
    let mut naive = row(
        "naive",
        hits / total.max(1.0),
        &errors,
        0.0,
        0.0,
        &cascades,
        &[],
    );
    naive.success_rate = f64::NAN;
    naive.cost_us = [f64::NAN; 4];
    naive.top_rss_mb = rss.0;
    naive.cluster_rss_mb = rss.1;
    rows.push(naive);
    for s in sims {
        s.abort();
    }
    drop(tree.clusters);
    drop(tree.brokers);
    drop(tree.top);
    for d in tree.dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(rows)
}

/// Runs every fleet size.
pub async fn run(exe: &Path, args: &CoordArgs) -> anyhow::Result<Vec<CoordRow>> {
    let mut brokers = vec![false];
    if args.mosquitto {
        if crate::bench::mosquitto_binary().is_some() {
            brokers.push(true);
        } else {
            eprintln!("mosquitto is not installed: embedded brokers only");
        }
    }
    let mut rows = Vec::new();
    for &n in &args.sizes {
        for &mosquitto in &brokers {
            rows.extend(one_size(exe, n, args, mosquitto).await?);
        }
    }
    Ok(rows)
}

/// The report.
pub fn table(rows: &[CoordRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "agents clusters broker    way        cmds  hit-rate  err p50/p90/p99 ms   success conflict cascade-p95 (T-issue)  late p50/p99 ms  CPU µs per agent-command: top/clusters/broker/agents  RSS MiB top/cluster\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>6} {:>8} {:<9} {:<10} {:>4}  {:>7.1}%  {:>5.1}/{:>5.1}/{:>5.1}     {:>6} {:>7.2}% {:>9.0} ms {:>9}  {:>6.0}/{:>6.0}    {:>5.0}/{:>5.0}/{:>5.0}/{:>5.0}                              {:>4.0}/{:>4.0}",
            r.agents,
            r.clusters,
            r.broker,
            r.way,
            r.commands,
            r.hit_rate * 100.0,
            r.err_p50_ms,
            r.err_p90_ms,
            r.err_p99_ms,
            if r.success_rate.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.0}%", r.success_rate * 100.0)
            },
            r.conflict_rate * 100.0,
            r.cascade_p95_ms,
            if r.way == "naive" {
                "(0)".to_owned()
            } else {
                format!("({} ms)", r.lead_in_ms)
            },
            r.late_p50_ms,
            r.late_p99_ms,
            r.cost_us[0],
            r.cost_us[1],
            r.cost_us[2],
            r.cost_us[3],
            r.top_rss_mb,
            r.cluster_rss_mb,
        );
    }
    out
}
