//! The gateway's tools (feature `tools`, on by default): the demo — a
//! gateway, its embedded broker and agents in one process — and the
//! benchmarks. Tools, not the daemon: without this feature the gateway
//! does not depend on `baton-agent`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

/// The tools' subcommands (flattened into the gateway's CLI).
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// A gateway, its embedded broker and N local agents appending sample
    /// events, in one process (Ctrl-C stops it).
    Demo {
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Where to keep the demo's state (default: a new temp directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_listen: String,
        /// Events per second per agent.
        #[arg(long, default_value_t = 5)]
        rate: u32,
        /// Stop after this long, e.g. "30s" (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<String>,
    },
    /// Measure raw broker throughput against durable ingest (see BENCHMARKS.md).
    Bench {
        /// Agent counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        agents: Vec<usize>,
        /// Entries per run, split over the agents.
        #[arg(long, default_value_t = 262_144)]
        entries: u64,
        /// Skip the Mosquitto runs.
        #[arg(long)]
        no_mosquitto: bool,
        /// Also run each ingest archiving into this PostgreSQL (a scratch
        /// schema, dropped after): archived rows/s beside durable ingest.
        #[arg(long, value_name = "URL")]
        archive: Option<String>,
    },
    /// Liveness cost: N simulated agents (real MQTT, 5 s heartbeats) against
    /// a gateway child; prints its CPU and RSS and the time to offline.
    BenchFleet {
        /// Agent counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        agents: Vec<usize>,
        /// The CPU measuring window, e.g. "30s".
        #[arg(long, default_value = "30s")]
        window: String,
        /// Skip the Mosquitto runs.
        #[arg(long)]
        no_mosquitto: bool,
    },
    /// Two tiers: agents → a cluster gateway → a sector gateway (two
    /// children, each with its own broker, both durable); prints the
    /// end-to-end rate and the forwarding lag (see BENCHMARKS.md).
    BenchTiers {
        /// Agent counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        agents: Vec<usize>,
        /// Entries per run, split over the agents.
        #[arg(long, default_value_t = 262_144)]
        entries: u64,
    },
    /// Commands on time: a top and cluster gateways, simulated agents of
    /// classes A–F; the KPIs of arrival-time scheduling beside a naive
    /// broadcast (see BENCHMARKS.md).
    BenchCoord {
        /// Fleet sizes to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        agents: Vec<usize>,
        /// Commands per size (each way).
        #[arg(long, default_value_t = 5)]
        commands: usize,
        /// Only the clusters' embedded brokers (by default each size also
        /// runs with every cluster on its own Mosquitto, when installed).
        #[arg(long)]
        no_mosquitto: bool,
        /// The clusters' `command_send_spacing` (default: the gateway's).
        #[arg(long)]
        spacing: Option<String>,
    },
    /// The console's agent list at fleet size: each common query over N
    /// agents in memory, as the top knows them (from chains) and as a
    /// cluster does (live); median and worst time, body size.
    BenchConsole {
        /// Fleet sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,30000")]
        agents: Vec<usize>,
        /// Runs of each query.
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
    /// A whole fleet on this box: a top, sectors, cluster gateways (each
    /// on its own Mosquitto) and simulated agents; prints what each tier
    /// stored, the lag to the top, a command to all, CPU and RSS per
    /// process kind (see README "Simulating a fleet").
    Simulate {
        #[arg(long, default_value_t = 3000)]
        agents: usize,
        #[arg(long, default_value_t = 3)]
        clusters: usize,
        /// Sector gateways between the clusters and the top (0: none).
        #[arg(long, default_value_t = 1)]
        sectors: usize,
        /// Entries each agent appends per second.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// The measuring window, once every agent is active at the top.
        #[arg(long, default_value = "60s")]
        window: String,
        /// Every gateway on its embedded broker instead of its own Mosquitto.
        #[arg(long)]
        embedded: bool,
        /// Simulated agents per process (each holds one connection, one
        /// file descriptor, per agent).
        #[arg(long, default_value_t = 7500)]
        per_process: usize,
        /// Each simulated agent's clock is off by a uniform amount within
        /// ± this (its clock exchange with its gateway corrects it).
        #[arg(long, default_value = "1s")]
        clock_skew: String,
        /// Exit non-zero unless every agent was active at the top, every
        /// agent answered the command, the top holds every chain to its
        /// head and its store verifies.
        #[arg(long)]
        check: bool,
        /// The top archives into this PostgreSQL: its lag is measured.
        #[arg(long, value_name = "URL")]
        archive: Option<String>,
    },
    /// Simulated agents for `simulate` (one process of many): agent i
    /// joins the i-th cluster modulo their number; they append until
    /// stdin closes (or --run-for), then print one JSON line each.
    #[command(hide = true)]
    SimAgents {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        /// A cluster as NAME=BROKER_ADDR=GATEWAY_KEY_HEX (repeatable).
        #[arg(long = "cluster", required = true)]
        clusters: Vec<String>,
        /// A key whose commands the agents obey (repeatable).
        #[arg(long = "issuer-key")]
        issuer_keys: Vec<String>,
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Stop appending after this long, e.g. "60s" (else at stdin's end).
        #[arg(long)]
        run_for: Option<String>,
        /// After the stop, how long to wait for the last receipts.
        #[arg(long, default_value = "120s")]
        drain: String,
        /// Each agent's clock is off by a uniform amount within ± this.
        #[arg(long, default_value = "1s")]
        clock_skew: String,
    },
}

/// Runs one tool to its end; the benchmarks' tables go to `out`.
pub fn run(tool: Tool, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    match tool {
        Tool::Demo {
            agents,
            data_dir,
            http_listen,
            rate,
            duration,
        } => {
            let duration = duration
                .map(|d| humantime::parse_duration(&d).with_context(|| format!("--duration {d:?}")))
                .transpose()?;
            let args = crate::demo::DemoArgs {
                agents,
                data_dir,
                http_listen,
                rate,
                duration,
            };
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(crate::demo::run(
                args,
                baton_runtime::service::shutdown_signal(),
            ))?;
        }
        Tool::Bench {
            agents,
            entries,
            no_mosquitto,
            archive,
        } => {
            let exe = std::env::current_exe().context("locating this binary")?;
            let args = crate::bench::BenchArgs {
                agents,
                total_entries: entries,
                mosquitto: !no_mosquitto,
                archive,
            };
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let rows = rt.block_on(crate::bench::run(&args, &exe))?;
            write!(out, "{}", crate::bench::table(&rows))?;
        }
        Tool::BenchFleet {
            agents,
            window,
            no_mosquitto,
        } => {
            let exe = std::env::current_exe().context("locating this binary")?;
            let window = humantime::parse_duration(&window)
                .with_context(|| format!("--window {window:?}"))?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let rows = rt.block_on(crate::fleet_bench::run(
                &exe,
                &agents,
                window,
                !no_mosquitto,
            ))?;
            write!(out, "{}", crate::fleet_bench::table(&rows))?;
        }
        Tool::BenchTiers { agents, entries } => {
            let exe = std::env::current_exe().context("locating this binary")?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let rows = rt.block_on(crate::tier_bench::run(
                &crate::tier_bench::TierArgs {
                    agents,
                    total_entries: entries,
                },
                &exe,
            ))?;
            write!(out, "{}", crate::tier_bench::table(&rows))?;
        }
        Tool::BenchCoord {
            agents,
            commands,
            no_mosquitto,
            spacing,
        } => {
            let exe = std::env::current_exe().context("locating this binary")?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let rows = rt.block_on(crate::coord_bench::run(
                &exe,
                &crate::coord_bench::CoordArgs {
                    sizes: agents,
                    commands,
                    mosquitto: !no_mosquitto,
                    spacing,
                },
            ))?;
            write!(out, "{}", crate::coord_bench::table(&rows))?;
        }
        Tool::BenchConsole { agents, runs } => {
            let rows = crate::console_bench::run(&agents, runs)?;
            write!(out, "{}", crate::console_bench::table(&rows))?;
        }
        Tool::Simulate {
            agents,
            clusters,
            sectors,
            rate,
            window,
            embedded,
            per_process,
            clock_skew,
            check,
            archive,
        } => {
            let exe = std::env::current_exe().context("locating this binary")?;
            let window = humantime::parse_duration(&window)
                .with_context(|| format!("--window {window:?}"))?;
            // inherited by every process started: a sim-agents process
            // holds a connection per agent, a cluster's Mosquitto one per
            // agent of the cluster
            let fds = baton_runtime::proc::raise_fd_limit();
            let widest = (per_process.max(1)).max(agents.div_ceil(clusters.max(1))) as u64;
            anyhow::ensure!(
                widest + 64 <= fds,
                "{widest} connections in one process (--per-process, or --agents / --clusters) \
                 but a process may open only {fds} files here (`ulimit -n`): lower them"
            );
            let args = crate::fleet_run::FleetArgs {
                agents,
                clusters,
                sectors,
                rate,
                window,
                embedded,
                per_process: per_process.max(1),
                clock_skew: humantime::parse_duration(&clock_skew)
                    .with_context(|| format!("--clock-skew {clock_skew:?}"))?,
                check,
                archive,
            };
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let report = rt.block_on(crate::fleet_run::run(&exe, &args))?;
            write!(out, "{}", crate::fleet_run::table(&report))?;
            for p in &report.problems {
                writeln!(out, "problem: {p}")?;
            }
            if check && !report.problems.is_empty() {
                anyhow::bail!("simulate --check: {} problem(s)", report.problems.len());
            }
        }
        Tool::SimAgents {
            first,
            count,
            clusters,
            issuer_keys,
            rate,
            run_for,
            drain,
            clock_skew,
        } => {
            let clusters = clusters
                .iter()
                .map(|c| crate::fleet_run::parse_cluster(c))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let issuer_keys = issuer_keys
                .iter()
                .map(|k| {
                    baton_shared::PublicKey::trusted_hex(k)
                        .map_err(|e| anyhow::anyhow!("--issuer-key {k:?}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let run_for = run_for
                .map(|d| humantime::parse_duration(&d).with_context(|| format!("--run-for {d:?}")))
                .transpose()?;
            let drain =
                humantime::parse_duration(&drain).with_context(|| format!("--drain {drain:?}"))?;
            let (tx, stop) = tokio::sync::watch::channel(false);
            // a connection per simulated agent
            baton_runtime::proc::raise_fd_limit();
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let ends = rt.block_on(async move {
                if let Some(d) = run_for {
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        let _ = tx.send(true);
                    });
                } else {
                    // the runner closes stdin to stop them
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                        let _ = tx.send(true);
                    });
                }
                crate::fleet_sim::run(crate::fleet_sim::SimArgs {
                    first,
                    count,
                    clusters,
                    issuer_keys,
                    rate,
                    stop,
                    drain,
                    clock_skew: humantime::parse_duration(&clock_skew)
                        .with_context(|| format!("--clock-skew {clock_skew:?}"))?,
                })
                .await
            })?;
            crate::fleet_run::print_ends(&ends)?;
        }
    }
    Ok(())
}
