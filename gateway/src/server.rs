//! The running gateway: broker, MQTT client, ingest thread and HTTP.
//!
//! One task only polls the rumqttc event loop and forwards publishes to the
//! ingest thread (publishing from the polling task can deadlock). The ingest
//! thread judges every message it has, commits them as one durable group,
//! then publishes the receipts with `try_publish`; if the client's queue is
//! full a receipt is dropped and the agent's resend timer asks again.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{Broker, Config};
use crate::ingest::{Ingest, IngestConfig, Outbound};
use crate::metrics::Metrics;
use crate::operator::{CommandError, Inbound};
use crate::store::{AgentRecord, EnrolledBy, Store};
use baton_runtime::mqtt::{Credentials, Polled};
use baton_runtime::{keys, unix_ms};

use crate::{broker, http};

/// The sockets a gateway serves on, bound by its caller: [`run`] binds
/// nothing itself, so a port asked as 0 is bound once and never dropped
/// and re-bound (a race another process could win).
#[derive(Debug)]
pub struct Listeners {
    /// The embedded broker's (`None` with an external broker).
    pub mqtt: Option<std::net::TcpListener>,
    pub http: std::net::TcpListener,
}

impl Listeners {
    /// Binds what `config` asks for: `http_listen`, and `mqtt_listen` for
    /// the embedded broker.
    pub fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let http = listen(config.http_listen)
            .with_context(|| format!("binding http_listen {}", config.http_listen))?;
        let mqtt = match &config.broker {
            Broker::Embedded { listen: at } => {
                Some(listen(*at).with_context(|| format!("binding mqtt_listen {at}"))?)
            }
            Broker::External { .. } => None,
        };
        Ok(Listeners { mqtt, http })
    }
}

/// Connections the kernel completes and queues for a listener before the
/// gateway accepts them. `std`'s 128 is too few for a fleet reconnecting
/// after a restart: a full queue drops handshakes, and each dropped client
/// waits out TCP's retransmit backoff (1 s, 2 s, 4 s …) before it is even
/// seen. The kernel caps this at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: i32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] and, as `std`
/// does, `SO_REUSEADDR` (a restarted gateway can bind while old
/// connections sit in TIME_WAIT).
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Addresses the gateway ended up serving on (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub mqtt: Option<SocketAddr>,
    pub http: SocketAddr,
}

/// Reads `<agent-id>.pub` files (64 hex characters) and enrolls new ones.
fn enroll_key_files(ingest: &mut Ingest, dir: &std::path::Path) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading keys_dir {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pub"))
        else {
            continue;
        };
        let agent = baton_shared::AgentId::new(stem).with_context(|| {
            format!("key file {}: file name is not an agent id", path.display())
        })?;
        let text = std::fs::read_to_string(&path)?;
        let key = baton_shared::PublicKey::trusted_hex(text.trim())
            .with_context(|| format!("key file {}", path.display()))?;
        match ingest.store().agent(&agent)? {
            Some(r) if r.public_key == key.to_bytes() => {}
            Some(_) => {
                warn!(%agent, file = %path.display(), "key file differs from the enrolled key; the enrolled key stays")
            }
            None => ingest.stage_enrollment(
                unix_ms(),
                &agent,
                AgentRecord {
                    public_key: key.to_bytes(),
                    start_seq: None,
                    revoked_from_seq: None,
                    enrolled_by: EnrolledBy::KeyFile,
                    enrolled_ms: unix_ms(),
                },
            ),
        }
    }
    ingest.commit()?;
    Ok(())
}

/// A secret for the gateway's own client on its embedded broker, made at
/// every start and never written anywhere.
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS entropy: a key-derived secret still keeps devices out.
        bytes = baton_shared::crypto::sha256(&unix_ms().to_be_bytes()).0;
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The embedded broker's authority: logins checked against the store's
/// enrollments and window.
fn embedded_authority(
    config: &Config,
    client_id: &str,
    secret: &str,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
) -> broker::Authority {
    // Weak: the broker's threads outlive a stopped gateway (they live as
    // long as the process); the store must close with the gateway, and its
    // broker then lets nobody in.
    let lookup_store = Arc::downgrade(store);
    let window_store = Arc::downgrade(store);
    broker::Authority::new(
        config.cluster.clone(),
        client_id.to_owned(),
        secret.to_owned(),
        Box::new(move |agent| lookup_store.upgrade()?.agent(agent).ok().flatten()),
        Box::new(move |now_ms| {
            window_store.upgrade().is_some_and(|store| {
                crate::ingest::window_until(&store)
                    .ok()
                    .flatten()
                    .is_some_and(|until| now_ms < until)
            })
        }),
        usize::try_from(config.security.first_use.max_agents).unwrap_or(usize::MAX),
        Arc::clone(metrics),
    )
}

/// The store file itself is damaged (redb cannot open it, or panicked
/// opening it) and could not be rebuilt from it ([`crate::rebuild`]): the
/// gateway refuses to start and exits with [`StoreDamaged::EXIT_CODE`],
/// which the unit does not restart.
#[derive(Debug, thiserror::Error)]
#[error(
    "the store {path} is damaged ({problem}). The gateway does not start on it: restore it \
     from a backup, or move it aside and enroll the gateway under a new id (its agents' \
     chains come back from their resends)"
)]
pub struct StoreDamaged {
    pub path: std::path::PathBuf,
    pub problem: String,
}

impl StoreDamaged {
    /// EX_DATAERR: `RestartPreventExitStatus=65` in the unit.
    pub const EXIT_CODE: u8 = 65;
}

/// Chains the start-up check set aside: the agent, what happened, how many
/// entries went.
pub type SetAside = Vec<(baton_shared::AgentId, crate::store::Damage, u64)>;

/// What opening the store found.
#[derive(Debug)]
struct Opened {
    store: Arc<Store>,
    set_aside: SetAside,
    /// The file could not be opened and was rebuilt from it.
    rebuilt: Option<crate::rebuild::Rebuilt>,
}

/// Opens the store and checks it ([`check_store`]). A file that is
/// damaged as a whole — any of redb's corruption errors or a panic inside
/// redb — is rebuilt from the own chain salvaged from it
/// ([`crate::rebuild`]); if that cannot be done, [`StoreDamaged`]. Never a
/// crash.
fn open_checked(
    path: &std::path::Path,
    own: &(baton_shared::AgentId, baton_shared::PublicKey),
) -> anyhow::Result<Opened> {
    crate::rebuild::finish_interrupted(path)
        .with_context(|| format!("finishing an interrupted rebuild of {}", path.display()))?;
    let problem = match open_once(path, own)? {
        Ok((store, set_aside)) => {
            return Ok(Opened {
                store,
                set_aside,
                rebuilt: None,
            });
        }
        Err(problem) => problem,
    };
    tracing::error!(store = %path.display(), problem, "store damaged: rebuilding it from the own chain it holds");
    let rebuilt =
        crate::rebuild::rebuild(path, own, &problem, unix_ms()).map_err(|e| StoreDamaged {
            path: path.to_owned(),
            problem: format!("{problem}; no rebuild: {e}"),
        })?;
    tracing::warn!(detail = rebuilt.detail(), "store rebuilt");
    match open_once(path, own)? {
        Ok((store, set_aside)) => Ok(Opened {
            store,
            set_aside,
            rebuilt: Some(rebuilt),
        }),
        Err(again) => Err(StoreDamaged {
            path: path.to_owned(),
            problem: format!("{problem}; the rebuilt store is damaged too ({again})"),
        }
        .into()),
    }
}

/// One attempt at opening and checking: `Ok(Err(problem))` when the file
/// is damaged as a whole.
fn open_once(
    path: &std::path::Path,
    own: &(baton_shared::AgentId, baton_shared::PublicKey),
) -> anyhow::Result<Result<(Arc<Store>, SetAside), String>> {
    let opened = std::panic::catch_unwind(|| -> anyhow::Result<_> {
        let store = match Store::open(path) {
            Ok(s) => Arc::new(s),
            Err(e) if e.is_damage() => return Ok(Err(e.to_string())),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("opening store {}", path.display()))
                );
            }
        };
        let damaged = check_store(&store, own)?;
        Ok(Ok((store, damaged)))
    });
    match opened {
        Ok(r) => r,
        Err(panic) => Ok(Err(baton_runtime::db::opening_panic(panic.as_ref()))),
    }
}

/// Checks every stored chain where no start has checked it (all of it on
/// a first start): links, hashes, and checkpoint signatures under the
/// enrolled key (the gateway's own for its own chain). A damaged chain is
/// set aside from its first bad entry — kept, never served — and rebuilt
/// from resends. Returns what was set aside.
pub fn check_store(
    store: &Store,
    own: &(baton_shared::AgentId, baton_shared::PublicKey),
) -> anyhow::Result<SetAside> {
    let started = Instant::now();
    let cleared = store.clear_rebuilt()?;
    if cleared > 0 {
        info!(chains = cleared, "chains set aside earlier are rebuilt");
    }
    let mut out = Vec::new();
    let mut checked = 0u64;
    let chains = store.chains()?;
    for agent in &chains {
        let key = if *agent == own.0 {
            Some(own.1)
        } else {
            store.agent(agent).ok().flatten().and_then(|r| r.key())
        };
        match store.check_chain(agent, key.as_ref())? {
            crate::store::ChainCheck::Verified { from, head } => {
                checked += (head.0 + 1).saturating_sub(from.0);
            }
            crate::store::ChainCheck::Damaged { at, problem } => {
                let (d, moved) = store.set_aside(agent, at, &problem, unix_ms())?;
                tracing::error!(%agent, seq = %at, problem, moved, "stored chain damaged: set aside from there, rebuilding from resends");
                out.push((agent.clone(), d, moved));
            }
        }
    }
    info!(
        chains = chains.len(),
        entries = checked,
        damaged = out.len(),
        ms = started.elapsed().as_millis() as u64,
        "store checked where no start had checked it"
    );
    Ok(out)
}

/// Runs the gateway until `shutdown` resolves. `ready` receives the bound
/// addresses once the broker, MQTT client and HTTP listener are up.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<Bound>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let _instance = baton_runtime::instance::acquire(&config.data_dir, crate::DAEMON)?;
    let key = keys::load(&config.key)?;
    let store_path = config.store_path();
    let own = (config.id.clone(), key.public());
    let Opened {
        store,
        set_aside,
        rebuilt,
    } = tokio::task::spawn_blocking(move || open_checked(&store_path, &own))
        .await
        .context("opening the store")??;
    // Offline tools (`enroll`, `export`) find who this gateway is here.
    store.remember_identity(&config.id, &config.cluster)?;
    let metrics = Arc::new(Metrics::default());
    let mut ingest = Ingest::open(
        IngestConfig {
            gateway: config.id.clone(),
            cluster: config.cluster.clone(),
            resend_timeout: config.resend_timeout,
            software: format!("baton-gateway {}", env!("CARGO_PKG_VERSION")),
            thresholds: config.liveness.thresholds,
            first_use: config.security.first_use,
        },
        key,
        Arc::clone(&store),
        Arc::clone(&metrics),
        unix_ms(),
    )?;
    if let Some(r) = &rebuilt {
        ingest.note_store_rebuilt(unix_ms(), r);
    }
    for (agent, d, moved) in &set_aside {
        ingest.note_store_damage(agent, d, *moved);
    }
    if let Some(dir) = &config.keys_dir {
        enroll_key_files(&mut ingest, dir)?;
    }
    let registry = ingest.registry_handle();
    let fleet = ingest.fleet_handle();
    // One clock for phi, shared by the ingest thread and HTTP.
    let origin = Instant::now();

    let client_id = format!("baton-gateway-{}", config.id);
    let (host, port, username, password, tls, mqtt_bound) = match &config.broker {
        Broker::Embedded { .. } => {
            let listener = listeners
                .mqtt
                .context("an embedded broker needs its MQTT listener (Listeners::bind)")?;
            let listen = listener.local_addr()?;
            let secret = random_secret();
            let authority = config.security.broker_auth.then(|| {
                Arc::new(embedded_authority(
                    &config, &client_id, &secret, &store, &metrics,
                ))
            });
            if authority.is_none() {
                warn!(%listen, "broker_auth = \"none\": any client may connect to the embedded broker and publish anything");
            }
            broker::start(listener, config.max_agents, authority)
                .with_context(|| format!("starting the embedded broker on {listen}"))?;
            info!(%listen, "embedded broker listening");
            (
                listen.ip().to_string(),
                listen.port(),
                None,
                Some(secret),
                None,
                Some(listen),
            )
        }
        Broker::External {
            host,
            port,
            username,
            password,
            tls,
        } => (
            host.clone(),
            *port,
            username.as_deref(),
            password.clone(),
            tls.as_ref(),
            None,
        ),
    };
    let mut opts = baton_runtime::mqtt::options(
        &client_id,
        &host,
        port,
        username,
        &Credentials::Password(password),
        tls,
    )
    .context("broker connection settings")?;
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 65_536);
    eventloop.set_network_options(baton_runtime::mqtt::network_options());

    // Small on purpose: when ingest is the bottleneck, backpressure reaches
    // the broker instead of queueing ~28 KB batches in this process.
    let (tx, mut rx) = mpsc::channel::<Inbound>(256);
    let (committed_tx, _) = tokio::sync::broadcast::channel(4096);
    let command_tx = tx.clone();
    let ingest_committed = committed_tx.clone();
    let http_key = ingest.key().clone();
    // Shared with the ingest thread, which adds child clusters' filters as
    // they are enrolled; the poller subscribes to all after every ConnAck.
    let subscriptions = Arc::new(std::sync::Mutex::new(ingest.subscriptions()));
    let poll_subscriptions = Arc::clone(&subscriptions);
    let time_server = ingest.time_server();
    let parent_clock = ingest.parent_clock();
    let coordination = ingest.coordination();
    ingest.set_coordination_config(
        config.liveness.breaker,
        config.liveness.trail_grace,
        config.liveness.send_spacing,
    );
    ingest.set_summary_refresh(config.liveness.summary_interval);
    if let Some(up) = &config.upstream {
        ingest.set_parent(up.key, up.issuer_keys.clone());
    }
    // Answers to the parent's commands, published by the forwarder.
    let (up_tx, up_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    // (only with a parent: a sender held here would keep the ingest
    // thread's channel open past shutdown)
    let mut relay_tx = config.upstream.as_ref().map(|_| tx.clone());
    // Command deliveries, each published at its time (PROTOCOL §9).
    let (dispatch_tx, dispatch_rx) = mpsc::unbounded_channel();
    let dispatcher = tokio::spawn(crate::dispatch::run(
        dispatch_rx,
        client.clone(),
        Arc::clone(&parent_clock),
    ));

    // The poller: nothing but the event loop.
    let poll_tx = tx.clone();
    let poll_client = client.clone();
    let seed = u64::try_from(unix_ms()).unwrap_or(1);
    let poller = tokio::spawn(baton_runtime::mqtt::pump(
        eventloop,
        baton_runtime::mqtt::gateway_backoff(seed),
        poll_tx,
        move |p| match p {
            Polled::Event(Event::Incoming(Packet::ConnAck(_))) => {
                let filters = poll_subscriptions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                for f in &filters {
                    if let Err(e) = poll_client.try_subscribe(f, QoS::AtLeastOnce) {
                        warn!(filter = %f, error = %e, "subscribe failed");
                    }
                }
                Some(Inbound::Connected)
            }
            Polled::Event(Event::Incoming(Packet::Publish(p))) => {
                // Clock requests are answered here, at once: a reply
                // queued behind a group commit would only add RTT.
                if p.topic.ends_with("/time")
                    && let Some(out) = time_server.answer(&p.topic, &p.payload)
                {
                    let _ = poll_client.try_publish(out.topic, QoS::AtMostOnce, false, out.payload);
                    return None;
                }
                Some(Inbound::Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                })
            }
            other => {
                other.warn_if_lost("MQTT");
                None
            }
        },
    ));

    // Checkpoints of the heads the gateway holds, in its own chain.
    let tick_tx = tx.clone();
    let interval = config.checkpoint_interval;
    let ticker = tokio::spawn(async move {
        let mut t = tokio::time::interval(interval);
        t.tick().await;
        loop {
            t.tick().await;
            if tick_tx.send(Inbound::Tick).await.is_err() {
                return;
            }
        }
    });
    // Liveness every 500 ms; the summary into the chain at its interval.
    let live_tx = tx.clone();
    let chain_every = config.liveness.summary_chain_interval;
    // A child's parent rolls its clusters up from these entries: the first
    // one comes soon after start (once liveness settled), not a whole
    // interval later.
    let first_summary = if config.upstream.is_some() {
        config.liveness.summary_interval.min(chain_every)
    } else {
        chain_every
    };
    let liveness = tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_millis(500));
        let mut summary =
            tokio::time::interval_at(tokio::time::Instant::now() + first_summary, chain_every);
        loop {
            let msg = tokio::select! {
                _ = t.tick() => Inbound::Liveness,
                _ = summary.tick() => Inbound::Summary,
            };
            if live_tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    // The summary, retained, on baton/v1/{cluster}/summary.
    let summary_topic = baton_shared::topic::summary(&config.cluster);
    let summary_client = client.clone();
    let summary_registry = Arc::clone(&registry);
    let summary_cluster = config.cluster.clone();
    let summary_every = config.liveness.summary_interval;
    let summaries = tokio::spawn(async move {
        let mut t = tokio::time::interval(summary_every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            let s = summary_registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .summary();
            let body =
                baton_shared::canonical::to_vec(&s.to_value(summary_cluster.as_str(), unix_ms()));
            if let Err(e) = summary_client.try_publish(&summary_topic, QoS::AtLeastOnce, true, body)
            {
                warn!(error = %e, "publishing the cluster summary failed");
            }
        }
    });
    drop(tx);

    // The ingest thread: judge, group-commit, then receipts.
    let ingest_client = client.clone();
    let ingest_thread = std::thread::Builder::new()
        .name("baton-ingest".into())
        .spawn(move || {
            let publish = |out: Vec<Outbound>| {
                for o in out {
                    if let Err(e) = ingest_client.try_publish(o.topic, QoS::AtLeastOnce, false, o.payload) {
                        warn!(error = %e, "publish queue full; the agent's resend timer will ask again");
                    }
                }
            };
            let mut replies = Vec::new();
            // WATCHDOG=1 from this loop, after commits that went through
            let watchdog_every = baton_runtime::service::watchdog_every();
            let mut pinged = Instant::now();
            while let Some(first) = rx.blocking_recv() {
                let mut next = Some(first);
                let mut drained = 0;
                while let Some(msg) = next.take() {
                    match msg {
                        Inbound::Connected => match ingest.startup_receipts() {
                            Ok(out) => publish(out),
                            Err(e) => warn!(error = %e, "reading the registry for startup receipts"),
                        },
                        Inbound::Message { topic, payload } => {
                            let out = ingest.handle(origin.elapsed(), unix_ms(), &topic, &payload);
                            publish(out);
                        }
                        Inbound::Tick => ingest.stage_checkpoints(unix_ms()),
                        Inbound::Liveness => ingest.stage_liveness(origin.elapsed(), unix_ms()),
                        Inbound::Summary => ingest.stage_summary(unix_ms()),
                        Inbound::Relay(payload) => ingest.relay(origin.elapsed(), &payload),
                        // Answered after the commit, refusals too: a refusal
                        // may have staged something (a loaded fork's evidence).
                        Inbound::Command(cmd, by, reply) => {
                            let result =
                                crate::operator::run_command(&mut ingest, origin.elapsed(), cmd, &by);
                            replies.push((reply, result));
                        }
                    }
                    drained += 1;
                    if drained < 4096 {
                        next = rx.try_recv().ok();
                    }
                }
                match ingest.commit() {
                    Ok(outcome) => {
                        let new_filters = ingest.take_new_subscriptions();
                        for f in &new_filters {
                            info!(filter = %f, "subscribing to a child cluster's chains");
                            if let Err(e) = ingest_client.try_subscribe(f, QoS::AtLeastOnce) {
                                warn!(filter = %f, error = %e, "subscribe failed; retried at the next connect");
                            }
                        }
                        subscriptions
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .extend(new_filters);
                        publish(outcome.receipts);
                        // deliveries of commands now durable, and answers
                        // found in the chains just stored
                        let deliveries = ingest.take_deliveries();
                        if !deliveries.is_empty() {
                            let _ = dispatch_tx.send(deliveries);
                        }
                        for r in ingest.take_parent_replies() {
                            let _ = up_tx.send(r);
                        }
                        ingest.gather_from_chains(&outcome.committed);
                        for c in outcome.committed {
                            // nobody watching is fine
                            let _ = ingest_committed.send(c);
                        }
                        for (reply, result) in replies.drain(..) {
                            let _ = reply.send(result);
                        }
                        if watchdog_every.is_some_and(|every| pinged.elapsed() >= every) {
                            baton_runtime::service::watchdog();
                            pinged = Instant::now();
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "group commit failed; nothing of it was receipted");
                        let e = Arc::new(e);
                        for (reply, result) in replies.drain(..) {
                            let _ = reply.send(Err(CommandError::NotStored {
                                refused: result.err().map(Box::new),
                                source: Arc::clone(&e),
                            }));
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            // channel closed: shutting down; commit what is staged
            if let Err(e) = ingest.commit() {
                warn!(error = %e, "final commit failed; nothing of it was receipted");
            }
        })?;

    // Live daily files, after each commit (a derived view).
    let daily = config.daily_dir.as_ref().map(|dir| {
        crate::daily::DailyView::spawn(
            dir.clone(),
            config.id.clone(),
            Arc::clone(&store),
            committed_tx.subscribe(),
            Arc::clone(&metrics),
        )
    });

    // The PostgreSQL archive, after each commit.
    let archiver = config.archive.as_ref().map(|url| {
        info!("archiving every chain to PostgreSQL");
        crate::archive::Archiver::spawn(
            crate::archive::ArchiveConfig {
                url: url.clone(),
                ca: config.archive_ca.clone(),
                gateway: config.id.clone(),
                prune: config.retain_entries.map(|retain| crate::archive::Prune {
                    retain,
                    parent: config.upstream.is_some(),
                    daily: daily.as_ref().map(crate::daily::DailyView::written),
                }),
            },
            Arc::clone(&store),
            Arc::clone(&fleet),
            committed_tx.subscribe(),
            Arc::clone(&metrics),
        )
    });

    // Upstream: every chain held here, to the parent gateway.
    let forwarder = match &config.upstream {
        Some(up) => {
            info!(parent = %format!("{}:{}", up.host, up.port), "forwarding upstream");
            Some(crate::upstream::spawn(
                crate::upstream::ForwarderConfig {
                    gateway: config.id.clone(),
                    cluster: config.cluster.clone(),
                    upstream: up.clone(),
                    resend_timeout: config.resend_timeout,
                    clock: Arc::clone(&parent_clock),
                    commands: relay_tx
                        .take()
                        .map(|deliveries| crate::upstream::CommandLink {
                            deliveries,
                            replies: Arc::new(tokio::sync::Mutex::new(up_rx)),
                        }),
                },
                &http_key,
                Arc::clone(&store),
                committed_tx.subscribe(),
                Arc::clone(&metrics),
            )?)
        }
        None => None,
    };

    // HTTP
    listeners.http.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listeners.http)
        .context("serving HTTP on the bound listener")?;
    let http_bound = listener.local_addr()?;
    info!(%http_bound, "HTTP listening");
    let token = if config.security.http_auth {
        Some(Arc::new(crate::auth::OperatorToken::open(
            &config.security.token_file,
        )?))
    } else {
        warn!(listen = %config.http_listen, "http_auth = \"none\": anyone who reaches the HTTP port may enroll, unenroll, resolve and load");
        None
    };
    let app = http::router(http::AppState {
        store: Arc::clone(&store),
        metrics: Arc::clone(&metrics),
        gateway: config.id.clone(),
        key: http_key,
        committed: committed_tx,
        commands: command_tx,
        registry,
        origin,
        cluster: config.cluster.clone(),
        upstream: forwarder.as_ref().map(|f| Arc::clone(&f.status)),
        token,
        read_auth: config.security.http_read_auth,
        heavy: Arc::new(tokio::sync::Semaphore::new(http::HEAVY)),
        coordination,
        clock: Arc::clone(&parent_clock),
        fleet,
        alerts: Arc::default(),
    });
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(http::serve(
        listener,
        app,
        config.security.http,
        Arc::clone(&metrics),
        async move {
            let _ = stopped.await;
        },
    ));
    if let Some(ready) = ready {
        let _ = ready.send(Bound {
            mqtt: mqtt_bound,
            http: http_bound,
        });
    }

    baton_runtime::service::ready();
    shutdown.await;
    baton_runtime::service::stopping();
    info!("shutting down");
    poller.abort();
    ticker.abort();
    liveness.abort();
    summaries.abort();
    dispatcher.abort();
    let _ = dispatcher.await;
    let _ = poller.await;
    let _ = ticker.await;
    let _ = liveness.await;
    let _ = summaries.await;
    if let Some(f) = forwarder {
        f.stop().await;
    }
    let _ = client.try_disconnect();
    let _ = stop_http.send(());
    let _ = http_task.await;
    tokio::task::spawn_blocking(move || ingest_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the ingest thread panicked"))?;
    if let Some(d) = daily {
        d.stop().await;
    }
    if let Some(a) = archiver {
        a.stop().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: bound by `std`, the listeners queued 128 connections,
    /// so a burst of reconnects (or the 1,000 idle clients of the
    /// `bounded` test) waited out SYN retransmits before being seen.
    #[test]
    fn a_listener_queues_a_burst_of_connections_before_any_accept() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for n in 0..600 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => queued.push(s),
                Err(e) => panic!("connection {n} not queued: {e}"),
            }
        }
        drop(listener);
    }
}
