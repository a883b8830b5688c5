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
pub mod coord;
pub mod device;
pub mod health;
pub mod ledger;
pub mod link;
pub mod serve;
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

/// Opens the ledger and checks every entry no start has checked before
/// (from the verified mark on; everything on a first start). Damage —
/// a failed check, any of redb's corruption errors, a panic inside redb,
/// or a previous start that never finished this (the marker file; with
/// `panic = "abort"` nothing else survives a panic) — sets the file aside
/// (never deleted), salvages what of it still verifies into a fresh file,
/// and returns the alert's text; the caller finishes the recovery.
pub(crate) fn open_checked(
    path: &Path,
    agent: &AgentId,
    key: &baton_shared::SecretKey,
) -> anyhow::Result<(Opened, Option<String>)> {
    let public = key.public();
    let marker = path.with_extension("redb.starting");
    let importing = path.with_extension("redb.importing");
    // A salvage that did not finish: its partial file is derived data, the
    // damaged file is aside; do it again.
    if let Ok(aside) = std::fs::read(&importing) {
        let aside = PathBuf::from(String::from_utf8_lossy(&aside).into_owned());
        warn!(from = %aside.display(), "a salvage did not finish: doing it again");
        let _ = std::fs::remove_file(path);
        let problem = "a salvage that did not finish".to_owned();
        return salvage_into(path, &aside, &importing, agent, key, &problem);
    }
    let problem = if marker.exists() && path.exists() {
        "a previous start ended while opening or checking it".to_owned()
    } else {
        std::fs::write(&marker, b"")
            .with_context(|| format!("writing the start marker {}", marker.display()))?;
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            open_and_check(path, agent, &public)
        }));
        match checked {
            Ok(Ok(o)) => {
                let _ = std::fs::remove_file(&marker);
                return Ok((o, None));
            }
            // Busy, unreadable or failing now: not damage; never set aside.
            Ok(Err(e)) if !e.is_damage() => {
                let _ = std::fs::remove_file(&marker);
                return Err(
                    anyhow::Error::new(e).context(format!("opening ledger {}", path.display()))
                );
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => baton_runtime::db::opening_panic(panic.as_ref()),
        }
    };
    let aside = path.with_extension(format!("redb.damaged-{}", unix_ms()));
    error!(problem, kept_at = %aside.display(), "ledger damaged: kept aside, salvaging what still verifies");
    std::fs::rename(path, &aside)
        .with_context(|| format!("moving the damaged ledger aside to {}", aside.display()))?;
    // From here a crash redoes the salvage, never sets aside again.
    std::fs::write(&importing, aside.as_os_str().as_encoded_bytes())
        .with_context(|| format!("writing {}", importing.display()))?;
    let _ = std::fs::remove_file(&marker);
    salvage_into(path, &aside, &importing, agent, key, &problem)
}

/// Salvages the damaged file `aside` into a fresh ledger at `path`, in
/// commits of a bounded size (redb keeps a transaction's pages in memory),
/// then removes the `importing` marker. Returns the alert's text.
fn salvage_into(
    path: &Path,
    aside: &Path,
    importing: &Path,
    agent: &AgentId,
    key: &baton_shared::SecretKey,
    problem: &str,
) -> anyhow::Result<(Opened, Option<String>)> {
    let salvage = baton_runtime::salvage::scan_file(aside, agent, &key.public())
        .with_context(|| format!("reading the damaged ledger {}", aside.display()))?;
    let mut records = baton_runtime::salvage::Records::open(aside)
        .with_context(|| format!("reading the damaged ledger {}", aside.display()))?;
    let o = Ledger::open(path, agent)?;
    let head = ledger::import(&o.ledger, agent, key, &salvage, &mut records)?;
    o.ledger.mark_verified(&head)?;
    let _ = std::fs::remove_file(importing);
    let lost = baton_shared::salvage::ranges_text(&salvage.lost);
    let detail = format!(
        "ledger damaged ({problem}); kept at {}; salvaged {} entries in place (through seq {}), \
         {} to append anew, seqs not recovered: [{lost}], {} bad signatures stripped, \
         {} past the index limit",
        aside.display(),
        salvage.chain.len(),
        head.seq,
        salvage.stranded.len(),
        salvage.bad_signatures,
        salvage.over_limit,
    );
    warn!(detail, "ledger salvaged");
    Ok((Opened { head, ..o }, Some(detail)))
}

pub(crate) fn open_and_check(
    path: &Path,
    agent: &AgentId,
    key: &baton_shared::PublicKey,
) -> Result<Opened, ledger::LedgerError> {
    let o = Ledger::open(path, agent)?;
    o.ledger.check_head(&o.head, o.best.as_ref())?;
    let from = o.ledger.unverified_from(&o.head)?;
    let n = o.ledger.verify(agent, key, &o.head, from)?;
    o.ledger.mark_verified(&o.head)?;
    info!(entries = n, %from, head = %o.head.seq, "ledger checked where no start had checked it");
    Ok(o)
}

/// After damage, once it is known what the gateway holds (or that there
/// is no gateway): appends anew the salvaged entries past `after`, records
/// the recovery in the chain, and clears the alert.
pub(crate) async fn finish_salvage(writer: &Writer, shared: &Shared, after: Seq) {
    match writer.release_stranded(after).await {
        Ok(n) => {
            let detail = format!(
                "recovered after damage: {n} salvaged entries appended anew after seq {after}"
            );
            info!(detail);
            alert_entry(writer, "local_corruption", &detail).await;
            shared.salvage_pending.store(false, Ordering::Relaxed);
            shared.rebuilding.store(false, Ordering::Relaxed);
            shared.clear_alert();
        }
        Err(e) => shared.error(unix_ms(), format!("appending salvaged entries: {e}")),
    }
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
    let (opened, damage) = open_checked(&config.ledger_path(), &config.id, &key)?;
    let pending = opened.ledger.salvage_pending()?;
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
    let clock = Arc::new(clock::ClockState::new(baton_runtime::time::boot_id(
        Path::new("/"),
    )));
    let writer = Writer::start(
        ledger.clone(),
        config.id.clone(),
        key,
        head,
        budget,
        clock.clone(),
    )
    .context("starting the ledger writer")?;
    if pending {
        // Salvaged after damage (now or by a start before this one): the
        // gateway's answer says which salvaged entries it lacks. With no
        // gateway there is nothing to wait for — unless nothing of the
        // chain survived: a second genesis for one id would be a fork, so
        // the agent stays in alert and refuses appends.
        shared.alert(damage.clone().unwrap_or_else(|| {
            "ledger salvaged after damage; waiting for the gateway's answer".into()
        }));
        shared.salvage_pending.store(true, Ordering::Relaxed);
        shared
            .rebuilding
            .store(head.seq == Seq::ZERO, Ordering::Relaxed);
        if config.gateway.is_none() {
            if head.seq == Seq::ZERO {
                warn!(
                    "nothing of the chain survived and no gateway is configured: appends refused"
                );
            } else {
                finish_salvage(&writer, &shared, head.seq).await;
            }
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
            capabilities: config.capabilities.clone(),
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
