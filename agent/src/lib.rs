//! baton-agent: the device daemon. A durable, hash-chained, signed local
//! ledger (redb), a Unix-socket append API, and an uplink that delivers the
//! ledger to the gateway without loss (PROTOCOL §7), driven by
//! `baton-shared`'s `uplink` state machine.
//!
//! [`run`] is the daemon: it takes a validated [`Config`] and a shutdown
//! future, so tests and the gateway's demo run agents in-process.

pub mod bench;
pub mod cli;
pub mod clock;
pub mod command;
pub mod config;
pub mod device;
pub mod health;
pub mod ledger;
pub mod link;
pub mod socket;
pub mod status;
pub mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use baton_runtime::{keys, mqtt, service, unix_ms};
use baton_shared::json::{Object, Value};
use baton_shared::{AgentId, Seq};
use tracing::{error, info, warn};

pub use config::{Config, RawConfig};
use ledger::{Ledger, Opened};
use status::Shared;
use writer::Writer;

/// What a started agent serves.
#[derive(Debug, Clone)]
pub struct Ready {
    pub socket: PathBuf,
    pub writer: Writer,
    pub shared: Arc<Shared>,
}

/// An agent running as a task of the current tokio runtime (the gateway's
/// demo and the tests run agents this way).
#[derive(Debug)]
pub struct Running {
    pub ready: Ready,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts [`run`] as a task and waits until it serves.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let id = config.id.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run(
        config,
        async move {
            let _ = stopped.await;
        },
        Some(ready_tx),
    ));
    match ready_rx.await {
        Ok(ready) => Ok(Running {
            ready,
            stop: Some(stop),
            task,
        }),
        Err(_) => Err(match task.await {
            Ok(Err(e)) => e.context(format!("starting agent {id}")),
            Ok(Ok(())) => anyhow::anyhow!("agent {id} stopped before it served"),
            Err(e) => anyhow::anyhow!("agent {id} task failed: {e}"),
        }),
    }
}

impl Running {
    /// Stops the agent cleanly (the ledger file is closed on return).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.context("agent task")?
    }
}

/// Writes the first entry of a new chain and opens appends.
async fn begin_chain(writer: &Writer, shared: &Shared, class: Option<&str>) {
    let model = device::model(Path::new("/"));
    let mut d = Object::new();
    d.insert("a_now", Value::from(baton_shared::entry::a_now(unix_ms())));
    d.insert(
        "class",
        Value::from(class.unwrap_or_else(|| device::class_hint(model.as_deref()))),
    );
    d.insert("model", model.map_or(Value::Null, Value::from));
    d.insert(
        "software",
        Value::from(format!("baton-agent {}", env!("CARGO_PKG_VERSION"))),
    );
    match writer.runtime(unix_ms(), "genesis", Value::Object(d)).await {
        Ok(_) => shared.rebuilding.store(false, Ordering::Relaxed),
        Err(e) => shared.error(unix_ms(), format!("writing genesis: {e}")),
    }
}

/// Opens the ledger and checks it from the entry the best receipt covers.
/// A damaged file is moved aside (never deleted) and a fresh one opened:
/// the caller then rebuilds from the gateway (rule 3, `local_corruption`).
fn open_checked(
    path: &Path,
    agent: &AgentId,
    key: &baton_shared::PublicKey,
) -> anyhow::Result<(Opened, Option<String>)> {
    let checked = Ledger::open(path, agent).and_then(|o| {
        let from = o.best.as_ref().map_or(Seq(1), |b| b.seq);
        let n = o.ledger.verify(agent, key, &o.head, from)?;
        info!(entries = n, head = %o.head.seq, "ledger checked from the receipted entry");
        Ok(o)
    });
    let problem = match checked {
        Ok(o) => return Ok((o, None)),
        // Busy, unreadable or failing now: not damage; never set aside.
        Err(e) if !e.is_damage() => {
            return Err(anyhow::Error::new(e).context(format!("opening ledger {}", path.display())));
        }
        Err(e) => e.to_string(),
    };
    let aside = path.with_extension(format!("redb.damaged-{}", unix_ms()));
    error!(problem, kept_at = %aside.display(), "ledger damaged: kept aside, rebuilding from the gateway");
    std::fs::rename(path, &aside)
        .with_context(|| format!("moving the damaged ledger aside to {}", aside.display()))?;
    let o = Ledger::open(path, agent)?;
    Ok((
        o,
        Some(format!(
            "ledger damaged ({problem}); kept at {}",
            aside.display()
        )),
    ))
}

/// The name the daemon's instance lock goes by (`<data_dir>/baton-agent.lock`).
pub const DAEMON: &str = "baton-agent";

/// Runs the agent until `shutdown` resolves. `ready` hears where it serves
/// once the ledger is open and the socket bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<Ready>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let _instance = baton_runtime::instance::acquire(&config.data_dir, DAEMON)?;
    let key = keys::load(&config.key)?;
    let public = key.public();
    let login_key = key.clone();
    let (opened, damage) = open_checked(&config.ledger_path(), &config.id, &public)?;
    let Opened {
        ledger,
        head,
        best,
        gateway_key: pinned,
    } = opened;
    let shared = Arc::new(Shared::default());
    let free_bytes = Arc::new(std::sync::atomic::AtomicU64::new(free_space(
        &config.data_dir,
    )));
    let budget = writer::Budget {
        max_bytes: config.budget,
        min_free_bytes: config.free_floor,
        free_bytes: free_bytes.clone(),
    };
    let clock = Arc::new(clock::ClockState::new(clock::boot_id(Path::new("/"))));
    let writer = Writer::start(
        ledger.clone(),
        config.id.clone(),
        key,
        head,
        budget,
        clock.clone(),
    )
    .context("starting the ledger writer")?;
    if let Some(d) = &damage {
        shared.alert(d.clone());
        shared.rebuilding.store(true, Ordering::Relaxed);
        if config.gateway.is_none() {
            // Nothing to rebuild from: say so loudly and start a new chain
            // (the alert entry records why).
            warn!("no gateway configured: starting a new chain after the damage");
            begin_chain(&writer, &shared, config.class.as_deref()).await;
            alert_entry(&writer, "local_corruption", d).await;
        }
    } else if head.seq == Seq::ZERO {
        begin_chain(&writer, &shared, config.class.as_deref()).await;
    }

    if let Some(g) = &config.gateway {
        // Unreadable TLS files are a start-up error, not a silent offline agent.
        mqtt::transport(g.tls.as_ref()).context("uplink TLS settings")?;
    }
    let listener = socket::bind(&config.socket)
        .with_context(|| format!("binding append socket {}", config.socket.display()))?;
    info!(agent = %config.id, socket = %config.socket.display(), head = %writer.head().seq, "agent ready");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(socket::serve(listener, writer.clone(), shared.clone()));
    tasks.spawn(checkpoint_timer(writer.clone(), config.checkpoint_interval));
    let (hb_tx, hb_rx) = tokio::sync::mpsc::channel(1);
    tasks.spawn(
        health::Health {
            agent: config.id.clone(),
            interval: config.heartbeat,
            summary_every: config.heartbeat_summary,
            probe: health::Probe::new(PathBuf::from("/"), config.class.clone()),
            writer: writer.clone(),
            shared: shared.clone(),
            clock: clock.clone(),
            disk_free: free_bytes.clone(),
            uplink: config.gateway.is_some(),
            to_link: config.gateway.is_some().then_some(hb_tx),
        }
        .run(),
    );
    tasks.spawn(disk_watch(
        config.data_dir.clone(),
        free_bytes,
        writer.clone(),
        config.retention,
    ));
    tasks.spawn(status_writer(
        config.status_path(),
        config.id.to_string(),
        writer.clone(),
        shared.clone(),
        config.gateway.is_some(),
    ));
    if let Some(broker) = config.gateway.clone() {
        let link = link::Link {
            agent_key: public,
            login: mqtt::Credentials::password_or_signed(
                broker.password.clone(),
                login_key,
                true,
                mqtt::LoginCounter::persistent(config.data_dir.join("login.counter")),
            ),
            pinned,
            best,
            ledger: ledger.clone(),
            writer: writer.clone(),
            shared: shared.clone(),
            clock,
            heartbeats: hb_rx,
            broker,
            config: config.clone(),
        };
        tasks.spawn(link.run());
    }
    if let Some(every) = service::watchdog_every() {
        tasks.spawn(watchdog(writer.clone(), every));
    }
    if let Some(tx) = ready {
        let _ = tx.send(Ready {
            socket: config.socket.clone(),
            writer: writer.clone(),
            shared: shared.clone(),
        });
    }
    service::ready();
    shutdown.await;
    service::stopping();
    tasks.shutdown().await;
    // A last status, and the socket file goes.
    shared.set_connected(false);
    let doc = shared.document(config.id.as_str(), &writer.head(), false, unix_ms());
    let _ = status::write(&config.status_path(), &doc);
    let _ = std::fs::remove_file(&config.socket);
    // Close the file before returning, so a restart can open it at once.
    drop(ledger);
    writer.close().await;
    info!(agent = %config.id, "agent stopped");
    Ok(())
}

/// An `alert` entry in the agent's own chain.
pub(crate) async fn alert_entry(writer: &Writer, kind: &str, detail: &str) {
    let mut d = Object::new();
    d.insert("kind", Value::from(kind));
    d.insert("detail", Value::from(detail));
    if let Err(e) = writer.runtime(unix_ms(), "alert", Value::Object(d)).await {
        error!(error = %e, "could not record the alert entry");
    }
}

/// `WATCHDOG=1` every `every`, each time after a durable commit went
/// through the writer (a stuck writer thread or disk stops the pings, and
/// systemd restarts the daemon).
async fn watchdog(writer: Writer, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match writer.sign_head().await {
            Ok(()) => service::watchdog(),
            Err(e) => warn!(error = %e, "unhealthy: no watchdog ping"),
        }
    }
}

/// Signs a checkpoint every `every` while unsigned entries wait (PROTOCOL
/// §4: at least every 1,000 entries, which the ledger does, and 5 s).
async fn checkpoint_timer(writer: Writer, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if writer.head().unsigned > 0 {
            let _ = writer.sign_head().await;
        }
    }
}

/// Free bytes of the filesystem holding `dir` (`u64::MAX` if unknown): the
/// mounted disk with the longest mount point that is a prefix of `dir`.
pub fn free_space(dir: &Path) -> u64 {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() else {
        return u64::MAX;
    };
    disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map_or(u64::MAX, sysinfo::Disk::available_space)
}

/// Keeps the free-space figure current (every 2 s) and deletes receipted
/// entries past `retention` (every minute).
async fn disk_watch(
    dir: PathBuf,
    free: Arc<std::sync::atomic::AtomicU64>,
    writer: Writer,
    retention: Duration,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let d = dir.clone();
        if let Ok(f) = tokio::task::spawn_blocking(move || free_space(&d)).await {
            free.store(f, Ordering::Relaxed);
        }
        if n.is_multiple_of(30) {
            let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let cutoff = baton_shared::entry::format_timestamp(unix_ms().saturating_sub(keep_ms));
            match writer.retain(cutoff).await {
                Ok(0) => {}
                Ok(k) => info!(deleted = k, "receipted entries past retention deleted"),
                Err(e) => warn!(error = %e, "retention pass failed"),
            }
        }
        n += 1;
    }
}

/// Rewrites `status.json` every second.
async fn status_writer(
    path: PathBuf,
    agent: String,
    writer: Writer,
    shared: Arc<Shared>,
    uplink: bool,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some((at, e)) = writer.stats.take_error() {
            shared.error(at, format!("ledger: {e}"));
        }
        let mut doc = shared.document(&agent, &writer.head(), uplink, unix_ms());
        if let Value::Object(o) = &mut doc {
            o.insert("counters", writer.stats.counters());
        }
        if let Err(e) = status::write(&path, &doc) {
            warn!(error = %e, path = %path.display(), "writing status.json failed");
        }
    }
}
