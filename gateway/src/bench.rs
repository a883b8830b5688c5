//! `baton-gateway bench`: raw broker throughput against durable gateway
//! ingest, for several agent counts, with the embedded broker and (when
//! installed) Mosquitto. Prints a table; BENCHMARKS.md records the figures.
//!
//! - raw: N clients each publish 64-entry batch payloads (QoS 1, 8 in
//!   flight per client) to a broker; one subscriber counts them. No gateway.
//! - ingest: a `baton-gateway run` child process; N agents (the test
//!   publisher: real MQTT client + uplink state machine) send the same
//!   batches; timed until every agent holds a receipt for its head, i.e.
//!   published → verified → fsync'd → receipt received. The child's peak RSS
//!   is read from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_shared::json::{Object, Value};
use baton_shared::memory::MemLedger;
use baton_shared::uplink::Ledger;
use baton_shared::wire::{MQTT_MAX_PACKET, Message};
use baton_shared::{AgentId, SecretKey, Seq};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};

use crate::mosquitto::{MosquittoOptions, config};
use crate::publisher::{Options, publish};

pub(crate) const BATCH: usize = 64;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub agents: Vec<usize>,
    /// Entries per run, split over the agents (at least one batch each).
    pub total_entries: u64,
    /// Also run against Mosquitto, if installed.
    pub mosquitto: bool,
    /// Also run each ingest with the gateway archiving into this
    /// PostgreSQL (in a scratch schema, dropped after).
    pub archive: Option<String>,
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub broker: &'static str,
    pub agents: usize,
    pub raw_msgs_per_s: f64,
    pub raw_delivered: f64,
    pub ingest_entries_per_s: f64,
    pub ingest_msgs_per_s: f64,
    pub rss_peak_mb: f64,
    /// With `--archive`, the same ingest again with the gateway archiving:
    /// its durable ingest entries/s, and the rows/s the archive took
    /// (every entry, from the first publish until PostgreSQL held all).
    pub archived: Option<(f64, f64)>,
}

pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..1000 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("nothing listens on {addr}")
}

/// Waits until the gateway child at `http` answers `/healthz`. A TCP
/// connect is no sign of readiness: the gateway's main binds its sockets
/// before it starts serving them (the kernel queues connections meanwhile),
/// and a timer started on a connect would count the gateway's start-up.
pub(crate) fn wait_serving(http: SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{http}");
    for _ in 0..1000 {
        if crate::cli::http_get(&url, "/healthz").is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the gateway at {http} does not answer /healthz")
}

pub(crate) fn ledger(i: usize, entries: u64) -> anyhow::Result<MemLedger> {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    let mut l = MemLedger::genesis(
        AgentId::new(format!("bench-{i}"))?,
        SecretKey::from_seed(&seed),
        1_795_460_700_000,
        BATCH,
    )?;
    let filler = "x".repeat(224);
    for n in 1..entries {
        let mut d = Object::new();
        d.insert("n", Value::from(n));
        d.insert("payload", Value::from(filler.as_str()));
        l.append(
            1_795_460_700_000 + n as i64,
            "info",
            Some("bench"),
            Value::Object(d),
        )?;
    }
    l.sign_head();
    Ok(l)
}

pub(crate) fn client(
    id: &str,
    broker: SocketAddr,
    inflight: u16,
) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    o.set_credentials(id, "");
    o.set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(inflight);
    let (c, mut el) = AsyncClient::new(o, 256);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(30);
    el.set_network_options(net);
    (c, el)
}

/// Raw broker: messages/s delivered publish → subscribe, and the fraction
/// delivered.
async fn raw_broker(
    broker: SocketAddr,
    agents: usize,
    per_agent: u64,
    payload: Arc<Vec<u8>>,
) -> anyhow::Result<(f64, f64)> {
    let received = Arc::new(AtomicU64::new(0));
    let (sub, mut sub_el) = client("bench-sub", broker, 100);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let counter = Arc::clone(&received);
    let sub_task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match sub_el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    sub.subscribe("bench/+/entries", QoS::AtLeastOnce).await?;
    tokio::time::timeout(Duration::from_secs(20), ready_rx).await??;
    let total = agents as u64 * per_agent;
    let start = Instant::now();
    let mut pubs = Vec::new();
    for i in 0..agents {
        let payload = Arc::clone(&payload);
        pubs.push(tokio::spawn(async move {
            let id = format!("bench-raw-{i}");
            let (c, mut el) = client(&id, broker, 8);
            let poller = tokio::spawn(async move { while el.poll().await.is_ok() {} });
            let topic = format!("bench/{id}/entries");
            for _ in 0..per_agent {
                if c.publish(&topic, QoS::AtLeastOnce, false, payload.as_slice().to_vec())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            (c, poller)
        }));
    }
    let mut last = 0;
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = received.load(Ordering::Relaxed);
        if now >= total {
            break;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(3) {
            break; // the broker dropped the rest
        }
    }
    let took = start.elapsed().as_secs_f64()
        - if received.load(Ordering::Relaxed) < total {
            3.0
        } else {
            0.0
        };
    for p in pubs {
        if let Ok((c, poller)) = p.await {
            let _ = c.disconnect().await;
            poller.abort();
        }
    }
    sub_task.abort();
    #[allow(clippy::cast_precision_loss)]
    let got = received.load(Ordering::Relaxed) as f64;
    #[allow(clippy::cast_precision_loss)]
    Ok((got / took.max(1e-9), got / total as f64))
}

use baton_runtime::proc::rss_kb;

pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Durable ingest: entries/s and batches/s until every agent is receipted,
/// and the gateway's peak RSS in MiB.
async fn ingest(
    exe: &Path,
    external: Option<SocketAddr>,
    ledgers: Vec<MemLedger>,
    archive: Option<&crate::archive::Scratch>,
) -> anyhow::Result<Ingest> {
    let dir = tempfile_dir()?;
    let key = baton_runtime::keys::generate(&dir.join("gateway.key"))?;
    let keys_dir = dir.join("agents");
    std::fs::create_dir_all(&keys_dir)?;
    for l in &ledgers {
        std::fs::write(
            keys_dir.join(format!("{}.pub", l.agent())),
            l.key().public().to_hex(),
        )?;
    }
    let extra: Vec<String> = match archive {
        Some(scratch) => vec!["--archive".to_owned(), scratch.url.clone()],
        None => Vec::new(),
    };
    let GatewayChild {
        child,
        http: _,
        broker,
    } = spawn_gateway(exe, &dir, "bench", external, ledgers.len(), &extra)?;
    let entries: u64 = ledgers.iter().map(|l| l.head().0).sum();
    let batches: u64 = ledgers
        .iter()
        .map(|l| l.head().0.div_ceil(BATCH as u64))
        .sum();
    let start = publish_receipted(broker, ledgers, key.public()).await?;
    let took = start.elapsed().as_secs_f64();
    // the archive lags the receipts; timed until PostgreSQL holds every entry
    let archived_after = match archive {
        Some(scratch) => {
            let limit = Instant::now() + Duration::from_secs(600);
            while scratch.rows("bench-").await? < entries {
                if Instant::now() > limit {
                    bail!("the archive did not take {entries} entries in 600 s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            start.elapsed().as_secs_f64()
        }
        None => f64::NAN,
    };
    let peak = rss_kb(child.0.id(), "VmHWM:");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    #[allow(clippy::cast_precision_loss)]
    Ok(Ingest {
        entries_per_s: entries as f64 / took,
        batches_per_s: batches as f64 / took,
        rss_peak_mb: peak as f64 / 1024.0,
        archived_per_s: entries as f64 / archived_after,
    })
}

/// One durable ingest run's figures.
struct Ingest {
    entries_per_s: f64,
    batches_per_s: f64,
    rss_peak_mb: f64,
    /// With the archive on: entries / time until PostgreSQL held them all.
    archived_per_s: f64,
}

pub(crate) fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let mut n = [0u8; 8];
    getrandom::fill(&mut n).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let dir = std::env::temp_dir().join(format!("baton-bench-{}", u64::from_le_bytes(n)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A `baton-gateway run` child with its keys dir in `dir/agents`.
pub(crate) struct GatewayChild {
    pub(crate) child: ChildGuard,
    pub(crate) http: SocketAddr,
    pub(crate) broker: SocketAddr,
}

/// Starts `exe run` on `dir` (cluster `cluster`), through `external` or its
/// own embedded broker sized for `agents`, with `extra` flags, and waits
/// until it listens.
pub(crate) fn spawn_gateway(
    exe: &Path,
    dir: &Path,
    cluster: &str,
    external: Option<SocketAddr>,
    agents: usize,
    extra: &[String],
) -> anyhow::Result<GatewayChild> {
    let http = free_addr()?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "run",
        "--id",
        &format!("gw-{cluster}"),
        "--cluster",
        cluster,
    ])
    .arg("--data-dir")
    .arg(dir)
    .arg("--keys-dir")
    .arg(dir.join("agents"))
    .arg("--http-listen")
    .arg(http.to_string())
    .arg("--max-agents")
    .arg((agents + 10).to_string())
    .args(extra);
    let broker = match external {
        Some(a) => {
            cmd.arg("--broker").arg(format!("mqtt://{a}"));
            a
        }
        None => {
            let a = free_addr()?;
            cmd.arg("--mqtt-listen").arg(a.to_string());
            a
        }
    };
    // its log beside its store, for reading when a run goes wrong
    let log = std::fs::File::create(dir.join("gateway.log"))?;
    let child = ChildGuard(cmd.stdout(Stdio::null()).stderr(log).spawn()?);
    wait_serving(http)?;
    wait_listening(broker)?;
    Ok(GatewayChild {
        child,
        http,
        broker,
    })
}

/// A Mosquitto for `agents` clients (anonymous, the production settings
/// otherwise), if installed.
pub(crate) fn start_mosquitto(agents: usize) -> anyhow::Result<Option<(ChildGuard, SocketAddr)>> {
    let Some(bin) = mosquitto_binary() else {
        eprintln!("mosquitto is not installed: embedded broker only");
        return Ok(None);
    };
    let addr = free_addr()?;
    let dir = tempfile_dir()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        config(&MosquittoOptions {
            listen: addr,
            agents: agents + 10,
            tls: None,
            auth: None,
        }),
    )?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mosquitto")?;
    let guard = ChildGuard(child);
    wait_listening(addr)?;
    Ok(Some((guard, addr)))
}

pub(crate) fn mosquitto_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Runs the whole benchmark; `exe` is this binary (for the gateway child).
pub async fn run(args: &BenchArgs, exe: &Path) -> anyhow::Result<Vec<Row>> {
    let mut brokers: Vec<(&'static str, Option<SocketAddr>)> = vec![("embedded", None)];
    let mut mosquitto = None;
    if args.mosquitto
        && let Some((guard, addr)) =
            start_mosquitto(args.agents.iter().copied().max().unwrap_or(1))?
    {
        mosquitto = Some(guard);
        brokers.push(("mosquitto", Some(addr)));
    }
    // A bare embedded broker for the raw figures.
    let raw_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let raw_embedded = raw_listener.local_addr()?;
    crate::broker::start(
        raw_listener,
        args.agents.iter().copied().max().unwrap_or(1) + 10,
        None, // raw broker throughput: no logins to verify
    )?;
    let mut rows = Vec::new();
    for (name, external) in &brokers {
        for &n in &args.agents {
            let per_agent =
                (args.total_entries / n as u64).max(BATCH as u64) / BATCH as u64 * BATCH as u64;
            let ledgers = (0..n)
                .map(|i| ledger(i, per_agent))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let payload = Arc::new(ledgers[0].batch(Seq(1), Seq(BATCH as u64), None).encode());
            let raw_at = external.unwrap_or(raw_embedded);
            let (raw_msgs, delivered) =
                raw_broker(raw_at, n, per_agent / BATCH as u64, payload).await?;
            let plain = ingest(exe, *external, ledgers, None).await?;
            // the same ingest, archiving, in the same run
            let archived = match &args.archive {
                Some(url) => {
                    let ledgers = (0..n)
                        .map(|i| ledger(i, per_agent))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let scratch = crate::archive::Scratch::create(url).await?;
                    let run = ingest(exe, *external, ledgers, Some(&scratch)).await;
                    scratch.remove().await?;
                    let run = run?;
                    Some((run.entries_per_s, run.archived_per_s))
                }
                None => None,
            };
            let row = Row {
                broker: name,
                agents: n,
                raw_msgs_per_s: raw_msgs,
                raw_delivered: delivered,
                ingest_entries_per_s: plain.entries_per_s,
                ingest_msgs_per_s: plain.batches_per_s,
                rss_peak_mb: plain.rss_peak_mb,
                archived,
            };
            eprintln!("{row:?}");
            rows.push(row);
        }
    }
    drop(mosquitto);
    Ok(rows)
}

/// Publishes every ledger to `broker` as the benchmarks' agents do (window
/// 8, whole batches) and waits until the gateway whose key is `gw` has
/// receipted each one whole. Returns when publishing started.
pub(crate) async fn publish_receipted(
    broker: SocketAddr,
    ledgers: Vec<MemLedger>,
    gw: baton_shared::PublicKey,
) -> anyhow::Result<Instant> {
    let opts = Options {
        window: 8,
        max_batch_entries: BATCH,
        ..Options::default()
    };
    let start = Instant::now();
    let tasks: Vec<_> = ledgers
        .into_iter()
        .map(|l| {
            tokio::spawn(async move {
                publish(broker, "bench", l, gw, opts, Duration::from_secs(600)).await
            })
        })
        .collect();
    for t in tasks {
        let p = t.await??;
        if p.receipted != p.ledger.head_seq() {
            bail!(
                "{} receipted {} of {}",
                p.ledger.agent(),
                p.receipted,
                p.ledger.head_seq()
            );
        }
    }
    Ok(start)
}

/// A Markdown table: the header and separator lines, then a line per row.
pub(crate) fn markdown_table<const N: usize>(
    header: [&str; N],
    separator: &str,
    rows: impl IntoIterator<Item = [String; N]>,
) -> String {
    let mut out = format!("| {} |\n{separator}\n", header.join(" | "));
    for cells in rows {
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// The report as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "broker",
        "agents",
        "raw broker QoS 1 msgs/s (delivered)",
        "durable ingest entries/s",
        "ingest batches/s",
        "ingest entries/s ÷ raw msgs/s",
        "gateway peak RSS",
    ];
    let cells = |r: &Row| {
        [
            r.broker.to_string(),
            r.agents.to_string(),
            format!("{:.0} ({:.0}%)", r.raw_msgs_per_s, r.raw_delivered * 100.0),
            format!("{:.0}", r.ingest_entries_per_s),
            format!("{:.0}", r.ingest_msgs_per_s),
            format!(
                "{:.2}x",
                r.ingest_entries_per_s / r.raw_msgs_per_s.max(1e-9)
            ),
            format!("{:.1} MiB", r.rss_peak_mb),
        ]
    };
    let mut out = markdown_table(
        header,
        "|---|---|---|---|---|---|---|",
        rows.iter().map(cells),
    );
    if rows.iter().any(|r| r.archived.is_some()) {
        out.push('\n');
        out.push_str(&markdown_table(
            [
                "broker",
                "agents",
                "durable ingest entries/s",
                "… with --archive",
                "archived rows/s (first publish → all in PostgreSQL)",
            ],
            "|---|---|---|---|---|",
            rows.iter().filter_map(|r| {
                let (with, archived) = r.archived?;
                Some([
                    r.broker.to_string(),
                    r.agents.to_string(),
                    format!("{:.0}", r.ingest_entries_per_s),
                    format!("{with:.0}"),
                    format!("{archived:.0}"),
                ])
            }),
        ));
    }
    out
}
