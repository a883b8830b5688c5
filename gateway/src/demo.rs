//! `baton-gateway demo`: a gateway with its embedded broker and N real
//! agents in one process, each with its own data directory and key,
//! enrolled through key files, appending sample events through their Unix
//! sockets. Prints where everything lives and a line per second of what
//! the gateway has receipted; stops cleanly on Ctrl-C (or after
//! `--duration`).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use baton_agent::socket::client;
use baton_shared::{AgentId, ClusterId};
use tokio::sync::oneshot;

use crate::config::{Broker, Config};

#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub agents: usize,
    /// Where the demo keeps its state (default: a new temp directory).
    pub data_dir: Option<PathBuf>,
    pub http_listen: String,
    /// Events each agent appends per second.
    pub rate: u32,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
}

/// One agent's standing when the demo stopped.
#[derive(Debug, Clone)]
pub struct AgentReport {
    pub id: AgentId,
    pub data_dir: PathBuf,
    pub head: u64,
    pub receipted: u64,
    pub appended: u64,
}

#[derive(Debug, Clone)]
pub struct DemoReport {
    pub data_dir: PathBuf,
    pub gateway_dir: PathBuf,
    pub http: std::net::SocketAddr,
    pub agents: Vec<AgentReport>,
}

struct RunningAgent {
    id: AgentId,
    dir: PathBuf,
    agent: baton_agent::Running,
    appended: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the demo until `shutdown` resolves (or `duration` passes).
pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<DemoReport> {
    let base = match args.data_dir.clone() {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("baton-demo-{}", baton_runtime::unix_ms())),
    };
    let gw_dir = base.join("gateway");
    let keys_dir = gw_dir.join("agents");
    std::fs::create_dir_all(&keys_dir)
        .with_context(|| format!("creating {}", keys_dir.display()))?;
    let gw_key_path = gw_dir.join("gateway.key");
    let gw_key = if gw_key_path.exists() {
        baton_runtime::keys::load(&gw_key_path)?
    } else {
        baton_runtime::keys::generate(&gw_key_path)?
    };
    let cluster = ClusterId::new("demo")?;

    // Agents' identities first: the gateway reads their key files at start.
    let mut identities = Vec::new();
    for i in 1..=args.agents {
        let id = AgentId::new(format!("demo-{i}"))?;
        let dir = base.join("agents").join(id.as_str());
        let key_path = dir.join("agent.key");
        let key = if key_path.exists() {
            baton_runtime::keys::load(&key_path)?
        } else {
            baton_runtime::keys::generate(&key_path)?
        };
        std::fs::write(keys_dir.join(format!("{id}.pub")), key.public().to_hex())?;
        identities.push((id, dir));
    }

    let http_listen = args
        .http_listen
        .parse()
        .with_context(|| format!("--http-listen {:?}", args.http_listen))?;
    let config = Config {
        id: AgentId::new("gw-demo")?,
        cluster: cluster.clone(),
        data_dir: gw_dir.clone(),
        key: gw_key_path,
        keys_dir: Some(keys_dir),
        broker: Broker::Embedded {
            listen: "127.0.0.1:0".parse()?,
        },
        http_listen,
        resend_timeout: Duration::from_secs(5),
        checkpoint_interval: Duration::from_secs(10),
        max_agents: args.agents.max(10),
        liveness: crate::config::Liveness::default(),
        upstream: None,
        security: crate::config::Security::defaults(&gw_dir),
        daily_dir: Some(gw_dir.join("daily")),
        archive: None,
        retain_entries: None,
        archive_ca: None,
    };
    {
        // Offline commands (`export --format baton`) read the id from the store.
        let store = crate::cli::open_store(&gw_dir)?;
        crate::cli::remember_identity(&store, &config.id, &config.cluster)?;
    }
    let (gw_stop, gw_stopped) = oneshot::channel::<()>();
    let (gw_ready, gw_bound) = oneshot::channel();
    let listeners = crate::server::Listeners::bind(&config)?;
    let gateway = tokio::spawn(crate::server::run(
        config,
        listeners,
        async move {
            let _ = gw_stopped.await;
        },
        Some(gw_ready),
    ));
    let bound = match gw_bound.await {
        Ok(b) => b,
        Err(_) => {
            return Err(match gateway.await {
                Ok(Err(e)) => e.context("starting the gateway"),
                _ => anyhow::anyhow!("the gateway did not start"),
            });
        }
    };
    let mqtt = bound.mqtt.context("the embedded broker has no address")?;

    let mut agents = Vec::new();
    for (id, dir) in identities {
        let raw = baton_agent::RawConfig {
            id: Some(id.to_string()),
            cluster: Some(cluster.to_string()),
            data_dir: Some(dir.clone()),
            gateway: Some(format!("mqtt://{mqtt}")),
            gateway_key: Some(gw_key.public().to_hex()),
            resend_timeout: Some("5s".into()),
            ..Default::default()
        };
        let agent = baton_agent::spawn(baton_agent::Config::validate(raw)?).await?;
        agents.push(RunningAgent {
            id,
            dir,
            agent,
            appended: std::sync::Arc::default(),
        });
    }

    say(&format!(
        "Baton demo: gateway gw-demo (cluster demo) with its embedded broker on {mqtt}, {} agents",
        agents.len()
    ));
    say(&format!("  data:    {}", base.display()));
    say(&format!("  gateway: {}", gw_dir.display()));
    say(&format!(
        "  daily:   {}   (every chain as <agent>/YYYY-MM-DD.jsonl, live)",
        gw_dir.join("daily").display()
    ));
    for a in &agents {
        say(&format!(
            "  agent:   {:<8} {}",
            a.id.as_str(),
            a.dir.display()
        ));
    }
    let http = bound.http;
    say(&format!(
        "  console: http://{http}/   (the web console: fleet, agents, commands)"
    ));
    say(&format!(
        "  HTTP:    http://{http}/api/v1/agents  (also /api/v1/cluster, /metrics, /api/v1/agents/demo-1/entries, /api/v1/watch)"
    ));
    say(&format!(
        "  agents:  baton-gateway agents --http http://{http}   (state, impedance, RTT, clock offset, temperature)"
    ));
    if let Some(a) = agents.first() {
        say(&format!(
            "  append:  baton-agent append --socket {} --event note --data '{{\"hello\":\"world\"}}'",
            a.agent.ready.socket.display()
        ));
    }
    say("Ctrl-C stops everything cleanly.");

    // Sample events through each agent's socket.
    let mut feeders = tokio::task::JoinSet::new();
    let every = Duration::from_secs(1) / args.rate.max(1);
    for a in &agents {
        let socket = a.agent.ready.socket.clone();
        let appended = a.appended.clone();
        let name = a.id.to_string();
        feeders.spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                n += 1;
                // A plausible reading: temperature wandering around 45 °C.
                let temp = 45.0 + ((n as f64) / 7.0).sin() * 3.0;
                let line = format!(
                    "{{\"event\":\"telemetry\",\"context\":\"demo\",\"data\":{{\"n\":{n},\"sensor\":\"{name}-t0\",\"temp_c\":{temp:.2}}}}}"
                );
                if let Ok(answers) = client::send_lines(&socket, vec![line.into_bytes()]).await
                    && answers.first().is_some_and(Result::is_ok)
                {
                    appended.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }

    let stop = async move {
        match args.duration {
            Some(d) => {
                tokio::select! {
                    () = shutdown => {}
                    () = tokio::time::sleep(d) => {}
                }
            }
            None => shutdown.await,
        }
    };
    tokio::pin!(stop);
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {
                let mut line = format!("[{:>4}s]", started.elapsed().as_secs());
                for a in &agents {
                    let head = a.agent.ready.writer.head().seq.0;
                    let receipted = a.agent.ready.shared.receipted();
                    line.push_str(&format!("  {} head {head} receipted {receipted}", a.id.as_str()));
                }
                say(&line);
            }
        }
    }
    feeders.shutdown().await;
    // Let the last appends reach the gateway before stopping (bounded).
    let drain_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < drain_until
        && agents
            .iter()
            .any(|a| a.agent.ready.shared.receipted() < a.agent.ready.writer.head().seq.0)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut reports = Vec::new();
    for a in agents {
        let report = AgentReport {
            id: a.id.clone(),
            data_dir: a.dir.clone(),
            head: a.agent.ready.writer.head().seq.0,
            receipted: a.agent.ready.shared.receipted(),
            appended: a.appended.load(std::sync::atomic::Ordering::Relaxed),
        };
        a.agent
            .stop()
            .await
            .with_context(|| format!("agent {}", report.id))?;
        reports.push(report);
    }
    let _ = gw_stop.send(());
    gateway.await.context("gateway task")??;
    say("Stopped. Everything is on disk; check it with:");
    say(&format!(
        "  baton-gateway verify --data-dir {}",
        gw_dir.display()
    ));
    if let Some(a) = reports.first() {
        say(&format!(
            "  baton-agent verify --data-dir {}",
            a.data_dir.display()
        ));
    }
    Ok(DemoReport {
        data_dir: base,
        gateway_dir: gw_dir,
        http,
        agents: reports,
    })
}
