//! The gateway's command line: the arguments (clap) and what each
//! subcommand does, over the library. `main.rs` only parses, sets up
//! logging and calls [`run`]. What a subcommand prints on stdout is its
//! product (a key, a table, an export), so printing is allowed here.
// The doc comments below are the CLI's --help text (clap), written for a
// terminal: `<data-dir>` is a placeholder there, not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli;
use crate::config::{Config, DEFAULT_CONFIG, RawConfig};
use crate::operator::Command as Operation;
use anyhow::Context;
use baton_runtime::progress::Progress;
use baton_shared::{AgentId, ClusterId, Seq};
use clap::{Args, Parser, Subcommand};
use std::io::Write as _;

#[derive(Debug, Parser)]
#[command(
    name = "baton-gateway",
    version,
    about = "Baton's cluster lead: verifies, stores and receipts every agent's ledger"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct DataDir {
    /// The gateway's state directory (redb store, default key location).
    #[arg(long, env = "BATON_GATEWAY_DATA_DIR")]
    data_dir: PathBuf,
    /// The gateway's key file (default: <data-dir>/gateway.key).
    #[arg(long, env = "BATON_GATEWAY_KEY")]
    key: Option<PathBuf>,
}

/// Where an operator action goes: a running gateway (over HTTP, with the
/// operator token) or, without `--http`, a stopped gateway's files (whose
/// permissions are the authority).
#[derive(Debug, Args)]
pub struct Target {
    /// A running gateway's HTTP address, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    http: Option<String>,
    /// The operator token file for --http (default:
    /// <data-dir>/operator.token; BATON_OPERATOR_TOKEN wins).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Target {
    /// Carries `body` to `path` of a running gateway; `None` without --http.
    #[allow(clippy::print_stdout)]
    fn post(&self, data_dir: &std::path::Path, path: &str, body: &str) -> anyhow::Result<bool> {
        let Some(url) = &self.http else {
            return Ok(false);
        };
        let file = self
            .token_file
            .clone()
            .unwrap_or_else(|| data_dir.join("operator.token"));
        let token = cli::operator_token(&file)?;
        let answer = cli::http_post(url, path, body, &token)?;
        println!("{}", answer.trim());
        Ok(true)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TOML config file; flags and environment override it.
    #[arg(long, env = "BATON_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "BATON_GATEWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "BATON_GATEWAY_KEY")]
    key: Option<PathBuf>,
    /// This gateway's id (also its own chain's agent id).
    #[arg(long, env = "BATON_GATEWAY_ID")]
    id: Option<String>,
    #[arg(long, env = "BATON_GATEWAY_CLUSTER")]
    cluster: Option<String>,
    /// Where the embedded broker listens (ignored with --broker).
    #[arg(long, env = "BATON_GATEWAY_MQTT_LISTEN")]
    mqtt_listen: Option<String>,
    #[arg(long, env = "BATON_GATEWAY_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// An external broker, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS).
    #[arg(long, env = "BATON_GATEWAY_BROKER")]
    broker: Option<String>,
    #[arg(long, env = "BATON_GATEWAY_BROKER_USERNAME")]
    broker_username: Option<String>,
    #[arg(long, env = "BATON_GATEWAY_BROKER_PASSWORD", hide_env_values = true)]
    broker_password: Option<String>,
    /// With mqtts://: the broker's CA certificate, PEM (default: system roots).
    #[arg(long, env = "BATON_GATEWAY_BROKER_CA")]
    broker_ca: Option<PathBuf>,
    /// With mqtts://: a client certificate, PEM, if the broker asks for one.
    #[arg(long, env = "BATON_GATEWAY_BROKER_CLIENT_CERT")]
    broker_client_cert: Option<PathBuf>,
    /// With mqtts://: the client certificate's key, PEM.
    #[arg(long, env = "BATON_GATEWAY_BROKER_CLIENT_KEY")]
    broker_client_key: Option<PathBuf>,
    /// A directory of <agent-id>.pub files to trust.
    #[arg(long, env = "BATON_GATEWAY_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// Rate limit of resend nacks, e.g. "10s".
    #[arg(long, env = "BATON_GATEWAY_RESEND_TIMEOUT")]
    resend_timeout: Option<String>,
    /// How often the own chain records held heads, e.g. "60s".
    #[arg(long, env = "BATON_GATEWAY_CHECKPOINT_INTERVAL")]
    checkpoint_interval: Option<String>,
    #[arg(long, env = "BATON_GATEWAY_MAX_AGENTS")]
    max_agents: Option<usize>,
    /// phi at which a silent agent becomes suspect (default 8).
    #[arg(long, env = "BATON_GATEWAY_PHI_SUSPECT")]
    phi_suspect: Option<f64>,
    /// phi at which a silent agent becomes offline (default 16).
    #[arg(long, env = "BATON_GATEWAY_PHI_OFFLINE")]
    phi_offline: Option<f64>,
    /// Clock offset beyond which an agent is clock_skewed, e.g. "2s".
    #[arg(long, env = "BATON_GATEWAY_CLOCK_BAND")]
    clock_band: Option<String>,
    /// How often the cluster summary is published, e.g. "10s".
    #[arg(long, env = "BATON_GATEWAY_SUMMARY_INTERVAL")]
    summary_interval: Option<String>,
    /// How often the summary is written to the gateway's chain, e.g. "5m"
    /// (with a parent, also within one summary interval of a change).
    #[arg(long, env = "BATON_GATEWAY_SUMMARY_CHAIN_INTERVAL")]
    summary_chain_interval: Option<String>,
    /// The parent gateway's broker, e.g. mqtt://sector.local:1883: forward
    /// every chain held here to it (it must enroll this gateway with
    /// `enroll --child-cluster`).
    #[arg(long, env = "BATON_GATEWAY_UPSTREAM")]
    upstream: Option<String>,
    /// The parent gateway's public key (64 hex): its receipts count only
    /// under this key.
    #[arg(long, env = "BATON_GATEWAY_UPSTREAM_KEY")]
    upstream_key: Option<String>,
    /// Circuit breakers per child: outcomes remembered (1–64).
    #[arg(long, env = "BATON_GATEWAY_BREAKER_WINDOW")]
    breaker_window: Option<u32>,
    /// … the fewest outcomes before it may open.
    #[arg(long, env = "BATON_GATEWAY_BREAKER_MIN_SAMPLES")]
    breaker_min_samples: Option<u32>,
    /// … the failure share that opens it, (0, 1].
    #[arg(long, env = "BATON_GATEWAY_BREAKER_FAILURE_RATE")]
    breaker_failure_rate: Option<f64>,
    /// … how long it stays open before probing, e.g. "30s".
    #[arg(long, env = "BATON_GATEWAY_BREAKER_OPEN_FOR")]
    breaker_open_for: Option<String>,
    /// … how many probes go when half-open.
    #[arg(long, env = "BATON_GATEWAY_BREAKER_PROBES")]
    breaker_probes: Option<u32>,
    /// … the healthy time that closes it again, e.g. "30s".
    #[arg(long, env = "BATON_GATEWAY_BREAKER_HEALTHY_FOR")]
    breaker_healthy_for: Option<String>,
    /// At the top: how long a child's command counts may wait for the
    /// chains that bear them out, e.g. "60s".
    #[arg(long, env = "BATON_GATEWAY_COMMAND_TRAIL_GRACE")]
    command_trail_grace: Option<String>,
    /// The least time between two deliveries of one command, e.g. "500us":
    /// a burst is sent early enough to drain by each one's time.
    #[arg(long, env = "BATON_GATEWAY_COMMAND_SEND_SPACING")]
    command_send_spacing: Option<String>,
    /// Keys whose commands are relayed from the parent (comma-separated
    /// hex; default: only the parent's own commands).
    #[arg(long, env = "BATON_GATEWAY_ISSUER_KEYS", value_delimiter = ',')]
    issuer_keys: Option<Vec<String>>,
    #[arg(long, env = "BATON_GATEWAY_UPSTREAM_USERNAME")]
    upstream_username: Option<String>,
    #[arg(long, env = "BATON_GATEWAY_UPSTREAM_PASSWORD", hide_env_values = true)]
    upstream_password: Option<String>,
    /// TLS (mqtts:// upstream): the parent broker's CA file.
    #[arg(long, env = "BATON_GATEWAY_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    #[arg(long, env = "BATON_GATEWAY_UPSTREAM_CLIENT_CERT")]
    upstream_client_cert: Option<PathBuf>,
    #[arg(long, env = "BATON_GATEWAY_UPSTREAM_CLIENT_KEY")]
    upstream_client_key: Option<PathBuf>,
    /// Embedded broker logins: "keys" (signature logins, topic ACL; the
    /// default) or "none" (anyone may publish anything).
    #[arg(long, env = "BATON_GATEWAY_BROKER_AUTH")]
    broker_auth: Option<String>,
    /// HTTP state changes: "token" (operator token; the default) or "none".
    #[arg(long, env = "BATON_GATEWAY_HTTP_AUTH")]
    http_auth: Option<String>,
    /// Require the operator token for HTTP reads too.
    #[arg(long, env = "BATON_GATEWAY_HTTP_READ_AUTH")]
    http_read_auth: Option<bool>,
    /// The operator token file (default: <data-dir>/operator.token).
    #[arg(long, env = "BATON_GATEWAY_OPERATOR_TOKEN")]
    operator_token: Option<PathBuf>,
    /// Allow "none" for HTTP or the broker on a listener beyond loopback.
    #[arg(long, env = "BATON_GATEWAY_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: Option<bool>,
    /// The longest trust-on-first-use window, e.g. "24h".
    #[arg(long, env = "BATON_GATEWAY_ENROLL_WINDOW_MAX")]
    enroll_window_max: Option<String>,
    /// The most agents one window enrolls.
    #[arg(long, env = "BATON_GATEWAY_ENROLL_WINDOW_AGENTS")]
    enroll_window_agents: Option<u64>,
    /// The most first-use enrollments per minute.
    #[arg(long, env = "BATON_GATEWAY_ENROLL_RATE")]
    enroll_rate: Option<u32>,
    /// The most open HTTP connections (more are closed at accept).
    #[arg(long, env = "BATON_GATEWAY_HTTP_MAX_CONNECTIONS")]
    http_max_connections: Option<usize>,
    /// How long an HTTP client may take to send a request's headers, e.g. "10s".
    #[arg(long, env = "BATON_GATEWAY_HTTP_HEADER_TIMEOUT")]
    http_header_timeout: Option<String>,
    /// Keep every chain held as live daily files, DIR/<agent>/YYYY-MM-DD.jsonl.
    #[arg(long, env = "BATON_GATEWAY_DAILY_DIR")]
    daily_dir: Option<PathBuf>,
    /// Copy every chain held into PostgreSQL, e.g. postgres://baton@db/baton.
    #[arg(long, env = "BATON_GATEWAY_ARCHIVE")]
    archive: Option<String>,
    /// With --archive: keep only the newest N entries of each chain in the
    /// store; older ones go once archived (and receipted by the parent).
    #[arg(long, env = "BATON_GATEWAY_RETAIN_ENTRIES", value_name = "N")]
    retain_entries: Option<u64>,
    /// With --archive: the CA of the PostgreSQL server's certificate (PEM);
    /// default: the system's roots. sslmode=require in the URL requires TLS.
    #[arg(long, env = "BATON_GATEWAY_ARCHIVE_CA", value_name = "FILE")]
    archive_ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the gateway's identity (refuses to overwrite one).
    Keygen(DataDir),
    /// Print the gateway's public key, hex.
    Pubkey(DataDir),
    /// Run the gateway (embedded broker unless --broker mqtt://…).
    Run(Box<RunArgs>),
    /// Trust an agent's key, or open a trust-on-first-use window.
    Enroll {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long, required_unless_present = "window")]
        agent: Option<String>,
        /// The agent's public key, 64 hex characters.
        #[arg(long, requires = "agent")]
        pubkey: Option<String>,
        /// The first seq this gateway expects (the agent already pruned).
        #[arg(long)]
        start_seq: Option<u64>,
        /// Refuse entries at or after this seq.
        #[arg(long)]
        revoked_from_seq: Option<u64>,
        /// The agent is a child gateway forwarding this cluster's chains
        /// (its `run --upstream` points here); the agents behind it are
        /// trusted as its own chain enrolls them.
        #[arg(long, requires = "agent")]
        child_cluster: Option<String>,
        /// Open a trust-on-first-use window for this long, e.g. "10m".
        #[arg(long, conflicts_with = "agent")]
        window: Option<String>,
        /// This gateway's id, if it has never run.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Withdraw trust in an agent or child gateway: its logins and
    /// deliveries are refused from now on; what it sent stays.
    Unenroll {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        target: Target,
    },
    /// Lift a fork or cloned-identity halt after inspecting the evidence.
    Resolve {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        target: Target,
    },
    /// Show the operator token that HTTP writes need (made if there is
    /// none); --rotate replaces it (the old one stops working at once).
    OperatorToken {
        #[command(flatten)]
        dir: DataDir,
        /// The token file (default: <data-dir>/operator.token).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[arg(long)]
        rotate: bool,
    },
    /// The agent registry.
    Agents {
        /// A stopped gateway's state directory.
        #[arg(long, env = "BATON_GATEWAY_DATA_DIR", required_unless_present = "http")]
        data_dir: Option<PathBuf>,
        /// A running gateway's HTTP address, e.g. http://127.0.0.1:8080.
        #[arg(long, conflicts_with = "data_dir")]
        http: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Verify stored chains (all agents, or one), or with --archive the
    /// chains PostgreSQL holds, under this gateway's enrolled keys.
    Verify {
        /// A stopped gateway's state directory: its chains, or with
        /// --archive its enrolled keys.
        #[arg(long, env = "BATON_GATEWAY_DATA_DIR", required_unless_present = "http")]
        data_dir: Option<PathBuf>,
        /// With --archive: a running gateway's HTTP address, whose enrolled
        /// keys to verify under (e.g. http://127.0.0.1:8080).
        #[arg(long, requires = "archive", conflicts_with = "data_dir")]
        http: Option<String>,
        /// Verify the chains read back from this archive
        /// (postgres://USER@HOST/DB) rather than the local store.
        #[arg(long, value_name = "URL")]
        archive: Option<String>,
        /// With --archive: the CA of the server's certificate (PEM).
        #[arg(long, requires = "archive", value_name = "FILE")]
        archive_ca: Option<PathBuf>,
        #[arg(long)]
        agent: Option<String>,
    },
    /// Export an agent's chain.
    Export {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        agent: String,
        /// jsonl (the run holding the head), daily (<out>/<agent>/YYYY-MM-DD.jsonl)
        /// or baton (one document with the signed head and this gateway's receipt).
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "daily", "baton"])]
        format: String,
        /// Output file (a directory for daily; default stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// From this seq (within the run taken).
        #[arg(long)]
        from: Option<u64>,
        /// Through this seq: the run that holds it.
        #[arg(long)]
        to: Option<u64>,
        /// Point in time: the chain as it was when this entry (a seq, or an
        /// entry's hash) was its head (a baton at it verifies).
        #[arg(long)]
        at: Option<String>,
        /// baton: a label for what this baton carries.
        #[arg(long)]
        context: Option<String>,
        /// baton: an operator's note (repeatable; not authenticated).
        #[arg(long)]
        note: Vec<String>,
    },
    /// A session report of an agent (markdown or HTML): per session
    /// (context) its timeline, tasks with durations, errors, state changes,
    /// commands answered and lessons; or, with --lessons, the lessons of a
    /// cluster or the whole fleet, grouped.
    Report {
        #[command(flatten)]
        dir: DataDir,
        /// The agent (not with --lessons).
        #[arg(long, required_unless_present = "lessons")]
        agent: Option<String>,
        /// Only this session (an entry's context).
        #[arg(long)]
        context: Option<String>,
        /// Only since: a duration back from now ("2h") or a timestamp.
        #[arg(long)]
        since: Option<String>,
        /// The chain as it was when this entry (a seq, or an entry's hash)
        /// was its head.
        #[arg(long)]
        at: Option<String>,
        #[arg(long, default_value = "md", value_parser = ["md", "html"])]
        format: String,
        /// Every lesson of the fleet this gateway knows (or of --cluster),
        /// grouped by what was learned.
        #[arg(long, conflicts_with_all = ["agent", "context", "at"])]
        lessons: bool,
        /// With --lessons: only this cluster's agents.
        #[arg(long, requires = "lessons")]
        cluster: Option<String>,
    },
    /// Print the commented default configuration.
    PrintDefaultConfig,
    /// The operator's console (commands to the fleet, PROTOCOL §9).
    #[command(flatten)]
    Console(crate::console::Console),
    /// The demo and the benchmarks (feature "tools", on by default).
    #[cfg(feature = "tools")]
    #[command(flatten)]
    Tool(crate::tools::Tool),
    /// Print a ready Mosquitto drop-in config for production.
    PrintMosquittoConfig {
        /// Agents expected (sets the connection limit).
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// The plain listener (with --tls-listen: 127.0.0.1:1883, for the
        /// gateway on the same server).
        #[arg(long, default_value = "0.0.0.0:1883")]
        listen: std::net::SocketAddr,
        /// A TLS listener for the devices, e.g. 0.0.0.0:8883.
        #[arg(long)]
        tls_listen: Option<std::net::SocketAddr>,
        /// The CA that signed the broker's certificate (TLS listener).
        #[arg(long, default_value = "/etc/mosquitto/certs/ca.pem")]
        cafile: PathBuf,
        /// The broker's certificate (TLS listener).
        #[arg(long, default_value = "/etc/mosquitto/certs/server.pem")]
        certfile: PathBuf,
        /// The broker's private key (TLS listener).
        #[arg(long, default_value = "/etc/mosquitto/certs/server.key")]
        keyfile: PathBuf,
        /// Per-device credentials (mosquitto_passwd).
        #[arg(long, default_value = "/etc/mosquitto/baton.passwd")]
        password_file: PathBuf,
        /// The topic ACL (print-mosquitto-acl).
        #[arg(long, default_value = "/etc/mosquitto/baton.acl")]
        acl_file: PathBuf,
    },
    /// Print a Mosquitto ACL file: each device (user name = agent id) only
    /// its own baton/v1/CLUSTER/AGENT/ topics, the gateway user the cluster.
    PrintMosquittoAcl {
        /// The cluster id.
        #[arg(long)]
        cluster: String,
        /// The gateway's MQTT user name (broker_username in its config).
        #[arg(long)]
        gateway_user: String,
        /// A child gateway forwarding to this one, GATEWAY_ID=CLUSTER
        /// (repeatable): its forwarder user may forward that cluster.
        #[arg(long, value_name = "GATEWAY_ID=CLUSTER")]
        child: Vec<String>,
    },
}

impl Cli {
    /// The log filter when `RUST_LOG` does not set one: the demo prints its
    /// own lines, so its logs say only what went wrong; rumqttd logs
    /// ordinary disconnects at ERROR, so it is silenced.
    pub fn default_log_filter(&self) -> &'static str {
        #[cfg(feature = "tools")]
        if matches!(self.command, Command::Tool(crate::tools::Tool::Demo { .. })) {
            return "warn,rumqttd=off";
        }
        "info,rumqttd=off"
    }
}

/// Runs one subcommand to its end.
#[allow(clippy::print_stdout)]
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen(d) => {
            let path = cli::key_path(&d.data_dir, d.key);
            let key = baton_runtime::keys::generate(&path)?;
            println!("{}", key.public().to_hex());
        }
        Command::Pubkey(d) => {
            let key = baton_runtime::keys::load(&cli::key_path(&d.data_dir, d.key))?;
            println!("{}", key.public().to_hex());
        }
        Command::Run(a) => {
            let file = match &a.config {
                Some(p) => RawConfig::from_file(p)?,
                None => RawConfig::default(),
            };
            let flags = RawConfig {
                id: a.id,
                cluster: a.cluster,
                data_dir: a.data_dir,
                key: a.key,
                keys_dir: a.keys_dir,
                mqtt_listen: a.mqtt_listen,
                http_listen: a.http_listen,
                broker: a.broker,
                broker_username: a.broker_username,
                broker_password: a.broker_password,
                broker_ca: a.broker_ca,
                broker_client_cert: a.broker_client_cert,
                broker_client_key: a.broker_client_key,
                resend_timeout: a.resend_timeout,
                checkpoint_interval: a.checkpoint_interval,
                max_agents: a.max_agents,
                phi_suspect: a.phi_suspect,
                phi_offline: a.phi_offline,
                clock_band: a.clock_band,
                summary_interval: a.summary_interval,
                summary_chain_interval: a.summary_chain_interval,
                upstream: a.upstream,
                upstream_key: a.upstream_key,
                breaker_window: a.breaker_window,
                breaker_min_samples: a.breaker_min_samples,
                breaker_failure_rate: a.breaker_failure_rate,
                breaker_open_for: a.breaker_open_for,
                breaker_probes: a.breaker_probes,
                breaker_healthy_for: a.breaker_healthy_for,
                command_trail_grace: a.command_trail_grace,
                command_send_spacing: a.command_send_spacing,
                issuer_keys: a.issuer_keys,
                upstream_username: a.upstream_username,
                upstream_password: a.upstream_password,
                upstream_ca: a.upstream_ca,
                upstream_client_cert: a.upstream_client_cert,
                upstream_client_key: a.upstream_client_key,
                broker_auth: a.broker_auth,
                http_auth: a.http_auth,
                http_read_auth: a.http_read_auth,
                operator_token: a.operator_token,
                allow_unauthenticated: a.allow_unauthenticated,
                enroll_window_max: a.enroll_window_max,
                enroll_window_agents: a.enroll_window_agents,
                enroll_rate: a.enroll_rate,
                http_max_connections: a.http_max_connections,
                http_header_timeout: a.http_header_timeout,
                daily_dir: a.daily_dir,
                archive: a.archive,
                retain_entries: a.retain_entries,
                archive_ca: a.archive_ca,
            };
            let config = Config::validate(file.merge(flags))?;
            let listeners = crate::server::Listeners::bind(&config)?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(async {
                std::fs::create_dir_all(&config.data_dir)
                    .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
                crate::run(
                    config,
                    listeners,
                    baton_runtime::service::shutdown_signal(),
                    None,
                )
                .await
            })?;
        }
        Command::Enroll {
            dir,
            agent,
            pubkey,
            start_seq,
            revoked_from_seq,
            child_cluster,
            window,
            id,
            cluster,
            target,
        } => {
            let child_cluster = child_cluster.map(ClusterId::new).transpose()?;
            if target.http.is_some() {
                let body = cli::enroll_body(
                    window.as_deref(),
                    agent.as_deref(),
                    pubkey.as_deref(),
                    start_seq,
                    revoked_from_seq,
                    child_cluster.as_ref(),
                )?;
                target.post(&dir.data_dir, "/api/v1/enroll", &body)?;
                return Ok(ExitCode::SUCCESS);
            }
            let id = id.map(AgentId::new).transpose()?;
            let cluster = cluster.map(ClusterId::new).transpose()?;
            let mut ingest = cli::open_offline(&dir.data_dir, dir.key, id, cluster)?;
            if let Some(w) = window {
                let length =
                    humantime::parse_duration(&w).with_context(|| format!("--window {w:?}"))?;
                let done = cli::operate(&mut ingest, Operation::Window { length })?;
                println!("{done}: the first key each new agent presents will be trusted");
            } else if let (Some(agent), Some(pubkey)) = (agent, pubkey) {
                let agent = AgentId::new(agent)?;
                cli::enroll(
                    &mut ingest,
                    &cli::EnrollArgs {
                        agent: agent.clone(),
                        pubkey,
                        start_seq,
                        revoked_from_seq,
                        child_cluster,
                    },
                )?;
                println!("enrolled {agent}");
            } else {
                anyhow::bail!("--agent needs --pubkey");
            }
        }
        Command::Unenroll { dir, agent, target } => {
            let agent = AgentId::new(agent)?;
            let body = format!("{{\"agent\":\"{agent}\"}}");
            if !target.post(&dir.data_dir, "/api/v1/unenroll", &body)? {
                let mut ingest = cli::open_offline(&dir.data_dir, dir.key, None, None)?;
                println!(
                    "{}",
                    cli::operate(&mut ingest, Operation::Unenroll { agent })?
                );
            }
        }
        Command::Resolve { dir, agent, target } => {
            let agent = AgentId::new(agent)?;
            let body = format!("{{\"agent\":\"{agent}\"}}");
            if !target.post(&dir.data_dir, "/api/v1/resolve", &body)? {
                let mut ingest = cli::open_offline(&dir.data_dir, dir.key, None, None)?;
                println!(
                    "{}",
                    cli::operate(&mut ingest, Operation::Resolve { agent })?
                );
            }
        }
        Command::OperatorToken {
            dir,
            token_file,
            rotate,
        } => {
            let path = token_file.unwrap_or_else(|| dir.data_dir.join("operator.token"));
            let token = if rotate || !path.exists() {
                crate::auth::create(&path, rotate)?
            } else {
                cli::operator_token(&path)?
            };
            println!("{token}");
        }
        Command::Agents {
            http: Some(url),
            json,
            ..
        } => {
            let body = cli::http_get(&url, "/api/v1/agents")?;
            if json {
                println!("{body}");
            } else {
                print!("{}", cli::agents_table(&body)?);
            }
        }
        Command::Agents { data_dir, json, .. } => {
            let data_dir = data_dir.context("--data-dir or --http is needed")?;
            let store = cli::open_store(&data_dir)?;
            let agents = store.agents()?;
            if json {
                let rows: Vec<String> = agents
                    .iter()
                    .map(|(id, r)| {
                        let head = store.head(id).map(|h| h.seq.0).unwrap_or(0);
                        format!(
                            "{{\"id\":\"{id}\",\"enrolled_by\":\"{}\",\"head_seq\":{head}}}",
                            r.enrolled_by.describe()
                        )
                    })
                    .collect();
                println!("[{}]", rows.join(","));
            } else {
                println!("{:<32} {:<24} {:>10} STATE", "AGENT", "ENROLLED BY", "HEAD");
                for (id, r) in &agents {
                    let head = store.head(id)?.seq;
                    let state = match store.halted(id)? {
                        Some(s) => format!("halted (fork at {s})"),
                        None => "ok".into(),
                    };
                    println!(
                        "{:<32} {:<24} {:>10} {state}",
                        id.as_str(),
                        r.enrolled_by.describe(),
                        head.0
                    );
                }
            }
        }
        Command::Verify {
            archive: Some(url),
            archive_ca,
            data_dir,
            http,
            agent,
        } => {
            let keys = match (http, data_dir) {
                (Some(http), _) => cli::keys_from_agents(&cli::http_get(&http, "/api/v1/agents")?)?,
                (None, Some(dir)) => cli::open_store(&dir)?
                    .agents()?
                    .into_iter()
                    .filter_map(|(id, r)| r.key().map(|k| (id, k)))
                    .collect(),
                (None, None) => anyhow::bail!("--data-dir or --http is needed for the keys"),
            };
            let agent = agent.map(AgentId::new).transpose()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let ok = rt.block_on(crate::archive::verify(
                &url,
                archive_ca.as_deref(),
                &keys,
                agent.as_ref(),
                &mut std::io::stdout(),
            ))?;
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Verify {
            data_dir, agent, ..
        } => {
            let data_dir = data_dir.context("--data-dir is needed")?;
            let store = cli::open_store(&data_dir)?;
            let agents = match agent {
                Some(a) => vec![AgentId::new(a)?],
                None => store.agents()?.into_iter().map(|(id, _)| id).collect(),
            };
            let ok = cli::verify(&store, &agents, &mut std::io::stdout())?;
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Report {
            dir,
            agent,
            context,
            since,
            at,
            format,
            lessons,
            cluster,
        } => {
            let store = cli::open_store(&dir.data_dir)?;
            let since_ms = since
                .map(|s| crate::report::parse_since(&s, baton_runtime::unix_ms()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--{e}"))?;
            let id = store
                .meta(cli::ID_KEY)?
                .context("this data directory has no gateway id yet (run the gateway once)")?;
            let gateway = AgentId::new(String::from_utf8_lossy(&id).into_owned())?;
            let (title, md) = if lessons {
                let agents = crate::report::agents_of(&store, cluster.as_deref())?;
                let scope = cluster.map_or_else(
                    || format!("the fleet as {gateway} knows it"),
                    |c| format!("cluster {c}"),
                );
                let md = crate::report::lessons(&store, &agents, since_ms, &scope)?;
                ("Lessons".to_owned(), md)
            } else {
                let agent = AgentId::new(agent.context("--agent is required")?)?;
                let opts = crate::report::Options {
                    context,
                    since_ms,
                    at: at
                        .map(|a| crate::report::At::parse(&a))
                        .transpose()
                        .map_err(|e| anyhow::anyhow!("--{e}"))?,
                };
                let states_from = crate::report::state_gateway(&store, &agent)?;
                let r =
                    crate::report::report(&store, &gateway, &agent, states_from.as_ref(), &opts)?;
                (format!("Session report: {agent}"), r.markdown())
            };
            if format == "html" {
                print!("{}", crate::report::html_page(&title, &md));
            } else {
                print!("{md}");
            }
        }
        Command::Export {
            dir,
            agent,
            format,
            out,
            from,
            to,
            at,
            context,
            note,
        } => {
            let store = cli::open_store(&dir.data_dir)?;
            let agent = AgentId::new(agent)?;
            if store.agent(&agent)?.is_none() {
                anyhow::bail!("unknown agent {agent}");
            }
            let at = at
                .map(|a| crate::report::At::parse(&a).map_err(|e| anyhow::anyhow!("--{e}")))
                .transpose()?
                .map(|a| a.resolve(&store, &agent))
                .transpose()?;
            let range = crate::export::Range {
                from: from.map(Seq),
                to: match (to, at) {
                    (Some(_), Some(_)) => anyhow::bail!("--to and --at: give one"),
                    (t, a) => t.map(Seq).or(a),
                },
            };
            let by = std::env::var("USER").unwrap_or_else(|_| "operator".into());
            let label = crate::export::Label {
                context,
                notes: note
                    .into_iter()
                    .map(|text| baton_shared::export::Note {
                        ts: baton_shared::entry::format_timestamp(baton_runtime::unix_ms()),
                        by: by.clone(),
                        text,
                    })
                    .collect(),
            };
            let progress = Progress::new(&format!("exporting {agent}"), None);
            if format == "daily" {
                let out = out.context("--format daily needs --out DIR")?;
                for path in crate::export::export_daily(&store, &agent, range, &progress, &out)? {
                    println!("{}", path.display());
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            if format == "baton" {
                let id = store
                    .meta(cli::ID_KEY)?
                    .context("this data directory has no gateway id yet (run the gateway once)")?;
                let gateway = AgentId::new(String::from_utf8_lossy(&id).into_owned())?;
                let key = baton_runtime::keys::load(&cli::key_path(&dir.data_dir, dir.key))?;
                let signer = crate::export::Signer {
                    gateway: &gateway,
                    key: &key,
                };
                crate::export::export_baton(
                    &store, &agent, signer, range, label, &progress, &mut sink,
                )?;
                if out.is_none() {
                    sink.write_all(b"\n")?;
                }
            } else {
                crate::export::export_jsonl(&store, &agent, range, &progress, &mut sink)?;
            }
            sink.flush()?;
        }
        Command::PrintDefaultConfig => print!("{DEFAULT_CONFIG}"),
        #[cfg(feature = "tools")]
        Command::Tool(tool) => crate::tools::run(tool, &mut std::io::stdout())?,
        Command::Console(c) => crate::console::run(c)?,
        Command::PrintMosquittoConfig {
            agents,
            listen,
            tls_listen,
            cafile,
            certfile,
            keyfile,
            password_file,
            acl_file,
        } => {
            use crate::mosquitto::{Auth, MosquittoOptions, TlsListener, config};
            print!(
                "{}",
                config(&MosquittoOptions {
                    listen,
                    tls: tls_listen.map(|listen| TlsListener {
                        listen,
                        cafile,
                        certfile,
                        keyfile,
                    }),
                    agents,
                    auth: Some(Auth {
                        password_file,
                        acl_file,
                    }),
                })
            );
        }
        Command::PrintMosquittoAcl {
            cluster,
            gateway_user,
            child,
        } => {
            AgentId::new(&cluster).map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
            let mut children = Vec::new();
            for c in child {
                let (gw, cl) = c
                    .split_once('=')
                    .with_context(|| format!("--child {c:?}: expected GATEWAY_ID=CLUSTER"))?;
                let gw = AgentId::new(gw).map_err(|e| anyhow::anyhow!("--child {c:?}: {e}"))?;
                let cl = ClusterId::new(cl).map_err(|e| anyhow::anyhow!("--child {c:?}: {e}"))?;
                children.push((gw, cl));
            }
            print!("{}", crate::mosquitto::acl(&cluster, &gateway_user));
            print!("{}", crate::mosquitto::child_acl(&children));
        }
    }
    Ok(ExitCode::SUCCESS)
}
