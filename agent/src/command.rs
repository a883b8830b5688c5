//! The agent's command line: the arguments (clap) and what each
//! subcommand does, over the library. `main.rs` only parses, sets up
//! logging and calls [`run`]. What a subcommand prints on stdout is its
//! product (a key, a seq and hash, a status), so printing is allowed here.
// The doc comments below are the CLI's --help text (clap), written for a
// terminal: `<data-dir>` is a placeholder there, not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, DEFAULT_CONFIG, RawConfig};
use crate::socket::client;
use crate::{cli, status};
use anyhow::Context;
use baton_runtime::keys;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "baton-agent",
    version,
    about = "Baton's device daemon: a durable, hash-chained, signed ledger delivered to the gateway without loss"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A TOML config file; the environment and flags override it.
    #[arg(long, env = "BATON_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "BATON_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The key file (default: <data-dir>/agent.key).
    #[arg(long, env = "BATON_AGENT_KEY")]
    key: Option<PathBuf>,
    /// This device's agent id.
    #[arg(long, env = "BATON_AGENT_ID")]
    id: Option<String>,
    #[arg(long, env = "BATON_AGENT_CLUSTER")]
    cluster: Option<String>,
    /// The gateway's broker, mqtt://HOST:PORT (none: offline ledger only).
    #[arg(long, env = "BATON_AGENT_GATEWAY")]
    gateway: Option<String>,
    /// The gateway's public key, hex (none: pin the first that answers).
    #[arg(long, env = "BATON_AGENT_GATEWAY_KEY")]
    gateway_key: Option<String>,
    #[arg(long, env = "BATON_AGENT_BROKER_PASSWORD", hide_env_values = true)]
    broker_password: Option<String>,
    /// With mqtts://: the broker's CA certificate, PEM (default: system roots).
    #[arg(long, env = "BATON_AGENT_GATEWAY_CA")]
    gateway_ca: Option<PathBuf>,
    /// With mqtts://: a client certificate, PEM, if the broker asks for one.
    #[arg(long, env = "BATON_AGENT_GATEWAY_CLIENT_CERT")]
    gateway_client_cert: Option<PathBuf>,
    /// With mqtts://: the client certificate's key, PEM.
    #[arg(long, env = "BATON_AGENT_GATEWAY_CLIENT_KEY")]
    gateway_client_key: Option<PathBuf>,
    /// The append socket (default: <data-dir>/agent.sock).
    #[arg(long, env = "BATON_AGENT_SOCKET")]
    socket: Option<PathBuf>,
    /// Hello again when no receipt advanced for this long, e.g. "10s".
    #[arg(long, env = "BATON_AGENT_RESEND_TIMEOUT")]
    resend_timeout: Option<String>,
    /// Sign a checkpoint at least this often while entries arrive.
    #[arg(long, env = "BATON_AGENT_CHECKPOINT_INTERVAL")]
    checkpoint_interval: Option<String>,
    /// Batches in flight (1–64, default 16).
    #[arg(long, env = "BATON_AGENT_WINDOW")]
    window: Option<usize>,
    /// Most bytes of stored entries, e.g. "1GiB".
    #[arg(long, env = "BATON_AGENT_BUDGET")]
    budget: Option<String>,
    /// Free space to keep on the ledger's filesystem, e.g. "64MiB".
    #[arg(long, env = "BATON_AGENT_FREE_FLOOR")]
    free_floor: Option<String>,
    /// Receipted entries older than this are deleted, e.g. "30days".
    #[arg(long, env = "BATON_AGENT_RETENTION")]
    retention: Option<String>,
    /// Heartbeat interval, e.g. "5s".
    #[arg(long, env = "BATON_AGENT_HEARTBEAT")]
    heartbeat: Option<String>,
    /// A heartbeat_summary ledger entry this often, e.g. "5m".
    #[arg(long, env = "BATON_AGENT_HEARTBEAT_SUMMARY")]
    heartbeat_summary: Option<String>,
    /// Class hint override, e.g. CLASS_E_LOCAL (default: from the device model).
    #[arg(long, env = "BATON_AGENT_CLASS")]
    class: Option<String>,
    /// A key (hex) whose commands this agent obeys; repeat for more.
    #[arg(long = "issuer-key", value_name = "HEX")]
    issuer_keys: Vec<String>,
    /// Something this device can do (for commands' select); repeat for more.
    #[arg(long = "capability", value_name = "NAME")]
    capabilities: Vec<String>,
    /// An executable serving a verb, VERB=PATH (orient, decide, act); repeat for more.
    /// A program serving the verb over the socket ({"serve": [VERB]}) goes first.
    #[arg(long = "handler", value_name = "VERB=PATH", value_parser = parse_handler)]
    handlers: Vec<(String, PathBuf)>,
}

fn parse_handler(s: &str) -> Result<(String, PathBuf), String> {
    let (verb, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected VERB=PATH"))?;
    Ok((verb.to_owned(), PathBuf::from(path)))
}

#[derive(Debug, clap::Args)]
pub struct DataDir {
    /// The agent's state directory.
    #[arg(long, env = "BATON_AGENT_DATA_DIR")]
    data_dir: PathBuf,
    /// The key file (default: <data-dir>/agent.key).
    #[arg(long, env = "BATON_AGENT_KEY")]
    key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct Socket {
    /// The agent's append socket.
    #[arg(long, env = "BATON_AGENT_SOCKET")]
    socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this device's identity (refuses to overwrite one).
    Keygen {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Print the public key, hex (for `baton-gateway enroll`).
    Pubkey {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Run the daemon.
    Run(Box<RunArgs>),
    /// Append one entry through the socket; prints seq and hash.
    Append {
        #[command(flatten)]
        socket: Socket,
        #[arg(long)]
        event: String,
        #[arg(long)]
        context: Option<String>,
        /// The entry's data, JSON (default: {}).
        #[arg(long)]
        data: Option<String>,
    },
    /// Roll the derived views back to an entry (a `pitr` entry, PROTOCOL
    /// §2): reports and what local programs are told start again from it;
    /// nothing is deleted. Only root or the agent's own user may.
    Pitr {
        #[command(flatten)]
        socket: Socket,
        /// The entry to go back to: its seq, or its hash.
        #[arg(long)]
        to: String,
        /// Why (recorded in the chain).
        #[arg(long)]
        reason: String,
        /// Who asks (recorded beside the connection's uid).
        #[arg(long)]
        by: Option<String>,
    },
    /// Append every line of a JSONL file ({"event", "context", "data"}, and
    /// an optional "ts" of the log's own, kept in data).
    Ingest {
        #[command(flatten)]
        socket: Socket,
        file: PathBuf,
    },
    /// Show status.json: state, head, receipt, backlog, alerts.
    Status {
        #[arg(long, env = "BATON_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify the whole local chain (daemon stopped).
    Verify {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Export the local chain (daemon stopped).
    Export {
        #[command(flatten)]
        dir: DataDir,
        /// jsonl, daily or baton.
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
        /// A file (jsonl, baton) or a directory (daily); default stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the commented default configuration.
    PrintDefaultConfig,
    /// Measure durable appends, catch-up and RSS (see BENCHMARKS.md).
    Bench {
        /// Entries appended (and then caught up).
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Client connections appending at once.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests each connection keeps in flight.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// The baton-gateway binary (default: beside this one).
        #[arg(long)]
        gateway_bin: Option<PathBuf>,
        /// Instead: time the start-up check of a ledger of `--entries`
        /// (first start, a start after it, and a damaged start's salvage).
        #[arg(long)]
        integrity: bool,
    },
}

fn raw_config(a: RunArgs) -> anyhow::Result<RawConfig> {
    let file = match &a.config {
        Some(p) => RawConfig::from_file(p)?,
        None => RawConfig::default(),
    };
    Ok(file.merge(RawConfig {
        id: a.id,
        cluster: a.cluster,
        data_dir: a.data_dir,
        key: a.key,
        socket: a.socket,
        gateway: a.gateway,
        gateway_key: a.gateway_key,
        broker_password: a.broker_password,
        gateway_ca: a.gateway_ca,
        gateway_client_cert: a.gateway_client_cert,
        gateway_client_key: a.gateway_client_key,
        resend_timeout: a.resend_timeout,
        checkpoint_interval: a.checkpoint_interval,
        window: a.window,
        budget: a.budget,
        free_floor: a.free_floor,
        retention: a.retention,
        heartbeat: a.heartbeat,
        heartbeat_summary: a.heartbeat_summary,
        class: a.class,
        issuer_keys: (!a.issuer_keys.is_empty()).then_some(a.issuer_keys),
        capabilities: (!a.capabilities.is_empty()).then_some(a.capabilities),
        handlers: (!a.handlers.is_empty()).then(|| a.handlers.into_iter().collect()),
    }))
}

fn key_path(dir: &DataDir) -> PathBuf {
    dir.key
        .clone()
        .unwrap_or_else(|| dir.data_dir.join("agent.key"))
}

/// One thread for sockets and timers (the ledger writer has its own): a
/// small daemon's work, and fewer threads keep fewer malloc arenas.
/// Lines of a file `ingest` sends at a time (one connection each).
const INGEST_CHUNK: usize = 4096;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Runs one subcommand to its end.
#[allow(clippy::print_stdout)]
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen { dir } => {
            let path = key_path(&dir);
            let key = keys::generate(&path)?;
            println!("{}", key.public().to_hex());
            eprintln!("identity written to {}", path.display());
        }
        Command::Pubkey { dir } => println!("{}", keys::load(&key_path(&dir))?.public().to_hex()),
        Command::Run(args) => {
            let config = Config::validate(raw_config(*args)?)?;
            runtime()?.block_on(crate::run(
                config,
                baton_runtime::service::shutdown_signal(),
                None,
            ))?;
        }
        Command::Pitr {
            socket,
            to,
            reason,
            by,
        } => {
            let v =
                runtime()?.block_on(client::pitr(&socket.socket, &to, &reason, by.as_deref()))?;
            let o = v.as_object().context("an answer that is not an object")?;
            if let Some(e) = o.get("error").and_then(baton_shared::json::Value::as_str) {
                anyhow::bail!("rollback refused: {e}");
            }
            let p = o
                .get("pitr")
                .and_then(baton_shared::json::Value::as_object)
                .context("an answer without pitr")?;
            let f = |k: &str| {
                p.get(k)
                    .map(|v| {
                        String::from_utf8_lossy(&baton_shared::canonical::to_vec(v)).into_owned()
                    })
                    .unwrap_or_default()
            };
            println!("{} {}", f("seq"), f("hash").trim_matches('"'));
        }
        Command::Append {
            socket,
            event,
            context,
            data,
        } => {
            let mut o = baton_shared::json::Object::new();
            o.insert("event", baton_shared::json::Value::from(event));
            if let Some(c) = context {
                o.insert("context", baton_shared::json::Value::from(c));
            }
            if let Some(d) = data {
                let v = baton_shared::json::parse(d.as_bytes(), baton_shared::json::Mode::Append)
                    .map_err(|e| anyhow::anyhow!("--data is not valid JSON: {e}"))?;
                o.insert("data", v);
            }
            let line = baton_shared::canonical::to_vec(&baton_shared::json::Value::Object(o));
            let answers = runtime()?.block_on(client::send_lines(&socket.socket, vec![line]))?;
            match answers.into_iter().next() {
                Some(Ok((seq, hash))) => println!("{seq} {hash}"),
                Some(Err(e)) => anyhow::bail!("append refused: {e}"),
                None => anyhow::bail!("no answer from the agent"),
            }
        }
        Command::Ingest { socket, file } => {
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let size = f.metadata().map_or(0, |m| m.len());
            let progress = baton_runtime::progress::Progress::bytes(
                &format!("ingesting {}", file.display()),
                size,
            );
            let rt = runtime()?;
            let (mut appended, mut rejected) = (0, 0);
            let mut numbers = Vec::new();
            let mut lines = Vec::new();
            let mut send = |numbers: &mut Vec<usize>, lines: &mut Vec<Vec<u8>>| {
                let answers =
                    rt.block_on(client::send_lines(&socket.socket, std::mem::take(lines)))?;
                for (n, a) in numbers.drain(..).zip(&answers) {
                    match a {
                        Ok(_) => appended += 1,
                        Err(e) => {
                            rejected += 1;
                            progress.suspend(|| eprintln!("{}:{n}: rejected: {e}", file.display()));
                        }
                    }
                }
                anyhow::Ok(())
            };
            // in chunks: memory stays flat whatever the file's size
            for (i, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
                let line = line.with_context(|| format!("reading {}", file.display()))?;
                progress.inc(line.len() as u64 + 1);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                numbers.push(i + 1);
                lines.push(cli::ingest_line(&line));
                if lines.len() == INGEST_CHUNK {
                    send(&mut numbers, &mut lines)?;
                }
            }
            if !lines.is_empty() {
                send(&mut numbers, &mut lines)?;
            }
            drop(progress);
            println!("{appended} appended, {rejected} rejected");
            if rejected > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Status { data_dir, json } => {
            let path = crate::config::status_path(&data_dir);
            let text = std::fs::read(&path).with_context(|| {
                format!(
                    "reading {} (no agent has run on this data directory)",
                    path.display()
                )
            })?;
            let doc = baton_shared::json::parse(&text, baton_shared::json::Mode::Verify)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let running = baton_runtime::instance::running(&data_dir, crate::DAEMON);
            let doc = status::as_seen(doc, running);
            if json {
                println!(
                    "{}",
                    String::from_utf8_lossy(&baton_shared::canonical::to_vec(&doc))
                );
            } else {
                print!("{}", status::table(&doc));
            }
        }
        Command::Verify { dir } => {
            if !cli::verify(&dir.data_dir, dir.key, &mut std::io::stdout())? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Export {
            dir,
            format,
            from,
            to,
            out,
        } => {
            let (agent, o) = cli::open(&dir.data_dir)?;
            match format.as_str() {
                "jsonl" => match out {
                    Some(p) => {
                        let mut f = std::io::BufWriter::new(
                            std::fs::File::create(&p)
                                .with_context(|| format!("creating {}", p.display()))?,
                        );
                        cli::export_jsonl(&o, from, to, &mut f)?;
                    }
                    None => {
                        cli::export_jsonl(&o, from, to, &mut std::io::stdout().lock())?;
                    }
                },
                "daily" => {
                    let out = out.context("--format daily needs --out DIR")?;
                    for p in cli::export_daily(&agent, &o, from, to, &out)? {
                        println!("{}", p.display());
                    }
                }
                "baton" => {
                    let key = keys::load(&key_path(&dir))?;
                    let doc = cli::export_baton(&agent, &o, &key.public(), from, to)?;
                    match out {
                        Some(p) => std::fs::write(&p, &doc)
                            .with_context(|| format!("writing {}", p.display()))?,
                        None => println!("{}", String::from_utf8_lossy(&doc)),
                    }
                }
                other => anyhow::bail!("--format {other:?}: expected jsonl, daily or baton"),
            }
        }
        Command::PrintDefaultConfig => print!("{DEFAULT_CONFIG}"),
        Command::Bench {
            entries,
            connections,
            window,
            gateway_bin,
            integrity,
        } => {
            if integrity {
                print!("{}", crate::bench::integrity(entries)?);
                return Ok(ExitCode::SUCCESS);
            }
            let args = crate::bench::BenchArgs {
                entries,
                connections: connections.max(1),
                window: window.max(1),
                gateway: gateway_bin,
            };
            let exe = std::env::current_exe().context("locating this binary")?;
            let report = crate::bench::run(&args, &exe)?;
            print!("{}", crate::bench::text(&args, &report));
        }
    }
    Ok(ExitCode::SUCCESS)
}
