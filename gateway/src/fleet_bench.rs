//! `baton-gateway bench-fleet`: the cost of watching a fleet. N simulated
//! agents — each a real MQTT connection with its last will, `online`
//! presence, a heartbeat every 5 s (random phase) and a clock request every
//! 10 s, as the agent sends them — against one `baton-gateway run` child
//! process. Once every agent is `active`, the child's CPU time (utime +
//! stime from /proc) is measured over a window and its RSS read. Then two
//! agents fall silent: one drops its connection without a DISCONNECT (the
//! broker fires its will), one keeps the connection open and stops
//! heartbeats (only phi can tell); the time from each one's last heartbeat
//! to `offline` at the gateway is what an operator waits.

use baton_shared::topic::{self, Kind};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_shared::json::{Mode, Value, parse};
use baton_shared::wire::{
    Heartbeat, ImpedanceSample, Message, PresenceState, StateMsg, SystemMetrics, TimeRequest,
};
use baton_shared::{AgentId, SecretKey, Seq};
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};

use crate::bench::{GatewayChild, spawn_gateway, start_mosquitto, tempfile_dir};

/// One row of the report.
#[derive(Debug, Clone)]
pub struct FleetRow {
    pub broker: &'static str,
    pub agents: usize,
    /// Gateway process CPU over the window, % of one core.
    pub cpu_pct: f64,
    pub rss_mb: f64,
    pub heartbeats_per_s: f64,
    /// Connection dropped → `offline` (the last will), and last heartbeat
    /// → `offline` with the connection open (phi).
    pub will_offline_s: f64,
    pub phi_offline_s: f64,
    /// How long until every agent was `active`.
    pub all_active_s: f64,
}

const HEARTBEAT: Duration = Duration::from_secs(5);
const CLUSTER: &str = "fleet";

pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // fields after the command name (which may hold spaces) in parentheses
    let rest = stat.rsplit_once(") ").context("parsing /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 here
    let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks)
}

/// USER_HZ: 100 on every Linux architecture Baton runs on.
pub(crate) const TICKS_PER_S: f64 = 100.0;

pub(crate) fn http_json(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let body = crate::cli::http_get(&format!("http://{addr}"), path)?;
    parse(body.as_bytes(), Mode::Verify).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

pub(crate) fn field(v: &Value, key: &str) -> Option<Value> {
    v.as_object().and_then(|o| o.get(key)).cloned()
}

/// A simulated agent's control: stop heartbeats, or drop the connection.
struct Sim {
    silent: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    /// Polls the MQTT event loop: aborting it drops the connection.
    driver: tokio::task::JoinHandle<()>,
    last_beat: Arc<std::sync::Mutex<Option<Instant>>>,
}

pub(crate) fn heartbeat(agent: &AgentId, sent_ms: i64) -> Heartbeat {
    Heartbeat {
        agent: agent.clone(),
        sent_ms,
        interval_ms: 5000,
        state: "idle".into(),
        head_seq: Seq(1000),
        receipted_seq: Seq(1000),
        backlog: 0,
        impedance: ImpedanceSample {
            latency_p50_ms: 3.0,
            processing_p50_ms: 1.5,
            queue_depth: 0,
            jitter: 0.1,
            reliability: 1.0,
            score: 900,
        },
        system: SystemMetrics {
            cpu_pct: 12.0,
            load1: 0.4,
            mem_used_bytes: 900 << 20,
            mem_total_bytes: 4 << 30,
            disk_free_bytes: 20 << 30,
            uptime_s: 86_400,
            temp_c: Some(52.0),
            throttled: Some(0),
            gpu_load_pct: None,
            model: "Raspberry Pi 4 Model B Rev 1.5".into(),
            class: "CLASS_E_LOCAL".into(),
        },
        clock: Some(baton_shared::wire::ClockEstimate {
            offset_ms: 3,
            rtt_ms: 4,
            synced: true,
        }),
        capabilities: vec!["camera".into()],
    }
}

/// The key of simulated agent `i` (enrolled by key file before the run).
pub(crate) fn sim_key(i: usize) -> SecretKey {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    SecretKey::from_seed(&seed)
}

fn sim(broker: SocketAddr, i: usize, phase: Duration) -> anyhow::Result<Sim> {
    let agent = AgentId::new(format!("sim-{i}"))?;
    let login = baton_runtime::mqtt::Credentials::Signed {
        key: Box::new(sim_key(i)),
        offer_key: false,
        counter: baton_runtime::mqtt::LoginCounter::in_memory(),
    };
    let (state_t, hb_t, time_t) = (
        topic::agent(CLUSTER, &agent, Kind::State),
        topic::agent(CLUSTER, &agent, Kind::Hb),
        topic::agent(CLUSTER, &agent, Kind::Time),
    );
    let mut o = MqttOptions::new(agent.as_str(), broker.ip().to_string(), broker.port());
    login.apply(&mut o, None);
    o.set_keep_alive(Duration::from_secs(30));
    let session = baton_runtime::unix_ms();
    let presence = |state| {
        StateMsg {
            agent: agent.clone(),
            state,
            connect_ms: session,
        }
        .encode()
    };
    o.set_last_will(LastWill::new(
        state_t.clone(),
        presence(PresenceState::Offline),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut el) = AsyncClient::new(o, 16);
    let silent = Arc::new(AtomicBool::new(false));
    let last_beat = Arc::new(std::sync::Mutex::new(None));
    let (quiet, beat) = (Arc::clone(&silent), Arc::clone(&last_beat));
    let online = presence(PresenceState::Online);
    let driver = tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                login.apply(&mut el.mqtt_options, None);
            }
        }
    });
    let task = tokio::spawn(async move {
        let _ = client
            .publish(state_t.clone(), QoS::AtLeastOnce, true, online)
            .await;
        tokio::time::sleep(phase).await;
        let mut tick = tokio::time::interval(HEARTBEAT);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            if quiet.load(Ordering::Relaxed) {
                continue;
            }
            let now = baton_runtime::unix_ms();
            let hb = heartbeat(&agent, now).encode();
            if client
                .publish(hb_t.clone(), QoS::AtMostOnce, false, hb)
                .await
                .is_ok()
            {
                *beat
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            }
            if n.is_multiple_of(2) {
                let req = TimeRequest {
                    agent: agent.clone(),
                    id: n.to_le_bytes(),
                    t0: now,
                };
                let _ = client
                    .publish(time_t.clone(), QoS::AtMostOnce, false, req.encode())
                    .await;
            }
            n += 1;
        }
    });
    Ok(Sim {
        silent,
        task,
        driver,
        last_beat,
    })
}

/// Polls one agent's state until it is `offline`; returns the time since
/// `since`, or else since its last heartbeat.
async fn time_to_offline(
    http: SocketAddr,
    agent: &str,
    sim: &Sim,
    since: Option<Instant>,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let row = http_json(http, &format!("/api/v1/agents/{agent}"))?;
        if field(&row, "state")
            .and_then(|v| v.as_str().map(str::to_owned))
            .as_deref()
            == Some("offline")
        {
            let beat = *sim
                .last_beat
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let last = since.or(beat).context("no heartbeat was ever sent")?;
            return Ok(last.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{agent} never went offline")
}

async fn one(
    exe: &Path,
    broker_name: &'static str,
    external: Option<SocketAddr>,
    n: usize,
    window: Duration,
) -> anyhow::Result<FleetRow> {
    let dir = tempfile_dir()?;
    baton_runtime::keys::generate(&dir.join("gateway.key"))?;
    let keys_dir = dir.join("agents");
    std::fs::create_dir_all(&keys_dir)?;
    for i in 0..n {
        std::fs::write(
            keys_dir.join(format!("sim-{i}.pub")),
            sim_key(i).public().to_hex(),
        )?;
    }
    let GatewayChild {
        child,
        http,
        broker,
    } = spawn_gateway(exe, &dir, CLUSTER, external, n, &[])?;
    let pid = child.0.id();

    let started = Instant::now();
    let mut sims = Vec::with_capacity(n);
    for i in 0..n {
        // spread the heartbeats over the interval, as a real fleet's are
        let phase = HEARTBEAT.mul_f64((i as f64 * 0.618_034) % 1.0);
        sims.push(sim(broker, i, phase)?);
        if i % 250 == 249 {
            // connect in waves: a listen backlog is not a load test
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let deadline = started + Duration::from_secs(300);
    loop {
        let c = http_json(http, "/api/v1/cluster")?;
        let active = field(&c, "active").and_then(|v| v.as_f64()).unwrap_or(0.0);
        #[allow(clippy::cast_precision_loss)]
        if active >= n as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {active} of {n} agents became active");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_active_s = started.elapsed().as_secs_f64();
    // settle, then the window
    tokio::time::sleep(HEARTBEAT).await;
    let t0 = cpu_ticks(pid)?;
    let w0 = Instant::now();
    tokio::time::sleep(window).await;
    #[allow(clippy::cast_precision_loss)]
    let cpu_pct = (cpu_ticks(pid)? - t0) as f64 / TICKS_PER_S / w0.elapsed().as_secs_f64() * 100.0;
    #[allow(clippy::cast_precision_loss)]
    let rss_mb = baton_runtime::proc::rss_kb(pid, "VmRSS:") as f64 / 1024.0;

    // Silence: sim-0 drops its connection (no DISCONNECT), sim-1 keeps it
    // open and stops heartbeats.
    sims[1].silent.store(true, Ordering::Relaxed);
    let phi_wait = time_to_offline(http, "sim-1", &sims[1], None);
    // dropping the event loop closes the socket without a DISCONNECT
    sims[0].task.abort();
    sims[0].driver.abort();
    let will_wait = time_to_offline(http, "sim-0", &sims[0], Some(Instant::now()));
    let (will_offline_s, phi_offline_s) = tokio::try_join!(will_wait, phi_wait)?;
    for s in &sims {
        s.task.abort();
        s.driver.abort();
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    #[allow(clippy::cast_precision_loss)]
    Ok(FleetRow {
        broker: broker_name,
        agents: n,
        cpu_pct,
        rss_mb,
        heartbeats_per_s: n as f64 / HEARTBEAT.as_secs_f64(),
        will_offline_s,
        phi_offline_s,
        all_active_s,
    })
}

/// Runs every (broker, N) pair.
pub async fn run(
    exe: &Path,
    agents: &[usize],
    window: Duration,
    mosquitto: bool,
) -> anyhow::Result<Vec<FleetRow>> {
    let mut rows = Vec::new();
    let max = agents.iter().copied().max().unwrap_or(1);
    let mut brokers: Vec<(&'static str, Option<SocketAddr>)> = vec![("embedded", None)];
    let mut guard = None;
    if mosquitto && let Some((g, addr)) = start_mosquitto(max)? {
        guard = Some(g);
        brokers.push(("mosquitto", Some(addr)));
    }
    for (name, external) in brokers {
        for &n in agents {
            let row = one(exe, name, external, n, window).await?;
            eprintln!("{row:?}");
            rows.push(row);
        }
    }
    drop(guard);
    Ok(rows)
}

/// The report as a Markdown table.
pub fn table(rows: &[FleetRow]) -> String {
    let header = [
        "broker",
        "agents",
        "heartbeats/s",
        "gateway CPU (% of a core)",
        "gateway RSS (MiB)",
        "all active after (s)",
        "connection dropped → offline (s)",
        "last heartbeat → offline, connection open (s)",
    ];
    let cells = |r: &FleetRow| {
        [
            r.broker.to_string(),
            r.agents.to_string(),
            format!("{:.0}", r.heartbeats_per_s),
            format!("{:.1}", r.cpu_pct),
            format!("{:.1}", r.rss_mb),
            format!("{:.1}", r.all_active_s),
            format!("{:.2}", r.will_offline_s),
            format!("{:.2}", r.phi_offline_s),
        ]
    };
    crate::bench::markdown_table(
        header,
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        rows.iter().map(cells),
    )
}
