//! Upstream forwarding (PROTOCOL §8): every chain this gateway holds — each
//! agent's, byte for byte with its original sigs, and the gateway's own —
//! goes to a parent gateway on another broker, over the same protocol an
//! agent speaks.
//!
//! Each forwarded chain runs `baton-shared`'s [`Uplink`] state machine, the
//! one the agent runs, against a [`Ledger`] view of the store: hello with a
//! nonce after every connect, batches cut at the chain's own checkpoints,
//! a window of batches in flight, resend when no receipt advances. A
//! forwarded entry is done only when the parent's signed receipt covers it;
//! the best receipt per chain is the durable cursor (the store's meta table,
//! `upstream/{chain}`), written at most every [`CURSOR_EVERY`]. A cursor that
//! lags after a crash costs duplicates, never loss: the hello answer says
//! where the parent is, and the parent skips what it holds.
//!
//! The MQTT event loop is polled by its own task and nothing else (as in
//! `server.rs`); this task reacts to its events, to commits (the ingest's
//! broadcast), and to the uplinks' timers. Work is per chain: an event
//! polls only the chain it names, a timer only the chain it belongs to,
//! so a top holding tens of thousands of chains does not walk all of them
//! for every receipt.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_runtime::mqtt::Polled;
use baton_shared::json::{Object, Value};
use baton_shared::topic::{self, Kind};
use baton_shared::uplink::{BatchLimits, Ledger, Output, Uplink, UplinkConfig, span_end};
use baton_shared::wire::{EntryBatch, Message, Nack, Receipt};
use baton_shared::{AgentId, ClusterId, Entry, Hash, PublicKey, SecretKey, Seq};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use crate::config::Upstream;
use crate::ingest::{Committed, ParentClock};
use crate::metrics::Metrics;
use crate::store::Store;
use baton_shared::clock::ClockFilter;
use baton_shared::wire::{TimeReply, TimeRequest};

/// How often dirty cursors are written (one transaction for all chains).
pub const CURSOR_EVERY: Duration = Duration::from_millis(250);
/// How often the gateway's own chain's head is read (its entries are not
/// in the ingest's commit broadcast).
const OWN_HEAD_EVERY: Duration = Duration::from_secs(1);
/// How often every chain and head is read again: a safety net only —
/// chains join with their first commit, heads move with every commit.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Alerts kept for `/api/v1/upstream`.
const ALERTS_KEPT: usize = 32;
/// The same kind of alert for the same chain at most this often.
const ALERT_EVERY: Duration = Duration::from_secs(60);

pub use crate::store::upstream_cursor_key as cursor_key;

/// What the forwarder needs to know.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub gateway: AgentId,
    /// The cluster whose topics carry this gateway's chains upstream.
    pub cluster: ClusterId,
    pub upstream: Upstream,
    pub resend_timeout: Duration,
    /// Where the clock exchange with the parent leaves its offset (tiered
    /// time: this gateway answers its own clock requests in the parent's
    /// time).
    pub clock: Arc<ParentClock>,
    /// Where command deliveries from the parent go (the ingest thread),
    /// and where its answers to them come from (PROTOCOL §9).
    pub commands: Option<CommandLink>,
}

/// The forwarder's part in coordination: deliveries from the parent are
/// handed to the ingest thread; `command_result` answers it makes (as
/// `cmd/reply` payloads) are published to the parent.
#[derive(Debug, Clone)]
pub struct CommandLink {
    pub deliveries: mpsc::Sender<crate::operator::Inbound>,
    pub replies: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>>,
}

/// The clock exchange with the parent (PROTOCOL §7), as an agent runs it
/// with its gateway: one request a second until three samples are in,
/// then every ten; replies count only under the parent's key.
struct ParentExchange {
    filter: ClockFilter,
    ids: baton_shared::backoff::SplitMix64,
    samples: u32,
    next_at: Option<Duration>,
}

/// Clock requests: one a second for the first three samples, then every
/// ten seconds (as the agent's).
const CLOCK_FIRST: u32 = 3;
const CLOCK_EVERY: Duration = Duration::from_secs(10);

/// One forwarded chain as `/api/v1/upstream` shows it.
#[derive(Debug, Clone, Default)]
pub struct ChainStatus {
    /// Highest seq held here.
    pub held: u64,
    /// Highest seq the parent's receipts cover.
    pub receipted: u64,
    pub in_flight: usize,
    /// Stopped after a reject (retrying hello with backoff).
    pub halted: bool,
    /// The best receipt (the durable cursor).
    pub receipt: Option<Receipt>,
}

/// The forwarder's state for the read side.
#[derive(Debug, Default)]
pub struct UpstreamStatus {
    pub parent: String,
    pub connected: bool,
    pub chains: BTreeMap<AgentId, ChainStatus>,
    /// The latest alerts, oldest first.
    pub alerts: VecDeque<String>,
    /// The offset to the parent's clock (parent − own, ms) and whether it
    /// is synced: the time this gateway answers its agents in.
    pub clock_offset_ms: Option<i64>,
    pub clock_synced: bool,
}

impl UpstreamStatus {
    pub fn to_value(&self) -> Value {
        let mut chains = Object::new();
        #[allow(clippy::cast_precision_loss)]
        let num = |n: u64| Value::Number(n as f64);
        for (id, c) in &self.chains {
            let mut o = Object::new();
            o.insert("held", num(c.held));
            o.insert("receipted", num(c.receipted));
            o.insert("behind", num(c.held.saturating_sub(c.receipted)));
            o.insert("in_flight", num(c.in_flight as u64));
            o.insert("halted", Value::Bool(c.halted));
            let receipt = c.receipt.as_ref().map_or(Value::Null, |r| {
                let mut ro = Object::new();
                ro.insert("gateway", Value::from(r.gateway.as_str()));
                ro.insert("seq", num(r.seq.0));
                ro.insert("hash", Value::from(r.hash.to_hex()));
                ro.insert("sig", Value::from(r.sig.to_hex()));
                Value::Object(ro)
            });
            o.insert("receipt", receipt);
            chains.insert(id.as_str(), Value::Object(o));
        }
        let mut o = Object::new();
        o.insert("parent", Value::from(self.parent.as_str()));
        o.insert("connected", Value::Bool(self.connected));
        let mut clock = Object::new();
        #[allow(clippy::cast_precision_loss)]
        clock.insert(
            "offset_ms",
            self.clock_offset_ms
                .map_or(Value::Null, |o| Value::Number(o as f64)),
        );
        clock.insert("synced", Value::Bool(self.clock_synced));
        o.insert("clock", Value::Object(clock));
        o.insert("chains", Value::Object(chains));
        o.insert(
            "alerts",
            Value::Array(
                self.alerts
                    .iter()
                    .map(|a| Value::from(a.as_str()))
                    .collect(),
            ),
        );
        Value::Object(o)
    }
}

/// A running forwarder.
#[derive(Debug)]
pub struct Forwarder {
    pub status: Arc<Mutex<UpstreamStatus>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: AsyncClient,
}

impl Forwarder {
    /// Stops forwarding (the cursors written so far stay).
    pub async fn stop(self) {
        let _ = self.client.try_disconnect();
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What the poller hands the forwarder.
enum Pumped {
    Connected,
    Message { topic: String, payload: Vec<u8> },
    Lost,
}

/// Starts forwarding the chains in `store` to the parent; `committed` wakes
/// it when ingest made entries durable.
pub fn spawn(
    cfg: ForwarderConfig,
    own_key: &SecretKey,
    store: Arc<Store>,
    committed: broadcast::Receiver<Committed>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Forwarder> {
    let up = &cfg.upstream;
    let client_id = crate::broker::forwarder_client_id(&cfg.gateway);
    // A configured password (the parent's Mosquitto), else a fresh
    // signature by this gateway's key (the parent's embedded broker).
    let login = baton_runtime::mqtt::Credentials::password_or_signed(
        up.password.clone(),
        own_key.clone(),
        false,
        baton_runtime::mqtt::LoginCounter::in_memory(),
    );
    let username = up.username.clone();
    let mut opts = baton_runtime::mqtt::options(
        &client_id,
        &up.host,
        up.port,
        username.as_deref(),
        &login,
        up.tls.as_ref(),
    )
    .context("upstream connection settings")?;
    let own_key = own_key.public();
    opts.set_inflight(1000);
    // Room for a hello of every chain at once (a connect hellos them
    // all): a publish that finds the queue full is dropped and waits a
    // whole resend timeout. The same depth as the ingest's client.
    let (client, mut eventloop) = AsyncClient::new(opts, 65_536);
    eventloop.set_network_options(baton_runtime::mqtt::network_options());
    let status = Arc::new(Mutex::new(UpstreamStatus {
        parent: format!("{}:{}", up.host, up.port),
        ..Default::default()
    }));

    let (tx, rx) = mpsc::channel::<Pumped>(1024);
    let seed = u64::try_from(baton_runtime::unix_ms()).unwrap_or(7);
    let poller = tokio::spawn(baton_runtime::mqtt::pump(
        eventloop,
        baton_runtime::mqtt::gateway_backoff(seed),
        tx,
        move |p| match p {
            Polled::Event(Event::Incoming(Packet::ConnAck(_))) => Some(Pumped::Connected),
            Polled::Event(Event::Incoming(Packet::Publish(p))) => Some(Pumped::Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
            }),
            mut other => {
                if let Polled::Lost { options, .. } = &mut other {
                    login.apply(options, username.as_deref());
                }
                other.warn_if_lost("upstream").then_some(Pumped::Lost)
            }
        },
    ));
    let state = State {
        chains: BTreeMap::new(),
        cfg,
        own_key,
        store,
        metrics,
        client: client.clone(),
        status: Arc::clone(&status),
        origin: Instant::now(),
        dirty_cursors: BTreeMap::new(),
        pending: BTreeSet::new(),
        unvouched: BTreeSet::new(),
        timers: BTreeSet::new(),
        due: HashMap::new(),
        connected: false,
        alerted: BTreeMap::new(),
        exchange: ParentExchange {
            filter: ClockFilter::new(Duration::from_secs(120)),
            ids: baton_shared::backoff::SplitMix64::new(seed ^ 0x71e),
            samples: 0,
            next_at: None,
        },
    };
    let forwarder = tokio::spawn(state.run(rx, committed));
    Ok(Forwarder {
        status,
        tasks: vec![poller, forwarder],
        client,
    })
}

/// One forwarded chain.
struct Chain {
    uplink: Uplink,
    /// Highest durable seq held here (from the store, then from commits).
    head: Seq,
    oldest: Seq,
    /// The gateway's own chain through this seq holds the chain's vouch
    /// (its `enroll`): the chain waits until the parent has receipted it.
    vouch_in: Seq,
}

struct State {
    cfg: ForwarderConfig,
    own_key: PublicKey,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    client: AsyncClient,
    status: Arc<Mutex<UpstreamStatus>>,
    origin: Instant,
    chains: BTreeMap<AgentId, Chain>,
    /// Chains with something new (a commit, a receipt, a timer, a
    /// connect): polled by the next `drive`, and their status published.
    pending: BTreeSet<AgentId>,
    /// Every chain's next timer, in order, and by chain.
    timers: BTreeSet<(Duration, AgentId)>,
    due: HashMap<AgentId, Duration>,
    /// Chains waiting for the parent to receipt the own chain through
    /// their vouch: a chain the parent does not know yet would be refused
    /// and hello again and again — at tens of thousands of chains, a storm
    /// of hellos and refusals that buries the own chain's own traffic.
    unvouched: BTreeSet<(Seq, AgentId)>,
    /// Best receipts not yet written.
    dirty_cursors: BTreeMap<AgentId, Receipt>,
    connected: bool,
    /// When each (chain, kind) last alerted.
    alerted: BTreeMap<(AgentId, &'static str), Instant>,
    exchange: ParentExchange,
}

impl State {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Pumped>,
        mut committed: broadcast::Receiver<Committed>,
    ) {
        self.refresh();
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        let mut own_head = tokio::time::interval(OWN_HEAD_EVERY);
        let mut cursors = tokio::time::interval(CURSOR_EVERY);
        let replies = self.cfg.commands.as_ref().map(|l| Arc::clone(&l.replies));
        let mut replies = match &replies {
            Some(r) => Some(r.lock().await),
            None => None,
        };
        let reply_topic = topic::agent(&self.cfg.cluster, &self.cfg.gateway, Kind::CmdReply);
        loop {
            let wake = self.next_wake();
            tokio::select! {
                Some(reply) = async {
                    match replies.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // queued while the parent is away; it also finds the
                    // answer in this gateway's chain
                    if let Err(e) = self.client.try_publish(&reply_topic, QoS::AtLeastOnce, false, reply) {
                        warn!(error = %e, "upstream publish queue full: the parent reads the answer from this gateway's chain");
                    }
                }
                ev = events.recv() => match ev {
                    None => return,
                    Some(ev) => self.event(ev),
                },
                c = committed.recv() => match c {
                    Ok(c) => self.moved(&c.agent, c.last),
                    // Missed some: read every head again.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.refresh(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = refresh.tick() => self.refresh(),
                _ = own_head.tick() => {
                    let own = self.cfg.gateway.clone();
                    match self.store.head(&own) {
                        Ok(h) => self.moved(&own, h.seq),
                        Err(e) => warn!(error = %e, "upstream: reading the own chain's head failed"),
                    }
                }
                _ = cursors.tick() => self.write_cursors(),
                () = tokio::time::sleep(wake) => {}
            }
            self.timers_due();
            self.drive();
            self.clock_exchange();
            self.publish_status();
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// When some uplink's timer (or the clock exchange) is next due, at
    /// most a second away.
    fn next_wake(&self) -> Duration {
        let now = self.now();
        self.timers
            .first()
            .map(|(at, _)| *at)
            .into_iter()
            .chain(self.exchange.next_at)
            .map(|at| at.saturating_sub(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1))
    }

    /// How far the parent holds the own chain (every vouch in it is known
    /// there); with no own chain to forward, every vouch counts as known.
    fn vouched_through(&self) -> Seq {
        self.chains
            .get(&self.cfg.gateway)
            .map_or(Seq(u64::MAX), |c| c.uplink.acked())
    }

    /// Chains whose vouch the parent now holds go.
    fn release_vouched(&mut self, through: Seq) {
        while let Some((seq, _)) = self.unvouched.first()
            && *seq <= through
        {
            if let Some((_, agent)) = self.unvouched.pop_first() {
                self.pending.insert(agent);
            }
        }
    }

    /// Chains whose timer is due become pending.
    fn timers_due(&mut self) {
        let now = self.now();
        while let Some((at, _)) = self.timers.first()
            && *at <= now
        {
            if let Some((_, agent)) = self.timers.pop_first() {
                self.due.remove(&agent);
                self.pending.insert(agent);
            }
        }
    }

    /// A chain's head reached `head` (a commit): it has more to send. A
    /// chain not forwarded yet joins.
    fn moved(&mut self, agent: &AgentId, head: Seq) {
        match self.chains.get_mut(agent) {
            Some(chain) if head > chain.head => {
                chain.head = head;
                self.pending.insert(agent.clone());
            }
            Some(_) => {}
            None => match self.store.agent(agent) {
                Ok(Some(record)) => self.join(agent.clone(), &record, head),
                Ok(None) => {}
                Err(e) => warn!(%agent, error = %e, "upstream: reading a record failed"),
            },
        }
    }

    /// Sends a clock request to the parent when one is due.
    fn clock_exchange(&mut self) {
        let now = self.now();
        let x = &mut self.exchange;
        if !self.connected || x.next_at.is_none_or(|at| at > now) {
            return;
        }
        let id = x.ids.next_u64().to_le_bytes();
        let t0 = baton_runtime::unix_ms();
        x.filter.requested(now, id, t0);
        let req = TimeRequest {
            agent: self.cfg.gateway.clone(),
            id,
            t0,
        };
        let t = topic::agent(&self.cfg.cluster, &self.cfg.gateway, Kind::Time);
        let _ = self
            .client
            .try_publish(t, QoS::AtMostOnce, false, req.encode());
        let every = if x.samples < CLOCK_FIRST {
            Duration::from_secs(1)
        } else {
            CLOCK_EVERY
        };
        x.next_at = Some(now + every);
    }

    /// The parent's answer to a clock request: counted only under its key.
    fn clock_reply(&mut self, now: Duration, payload: &[u8]) {
        let t3 = baton_runtime::unix_ms();
        let reply = match TimeReply::decode(payload) {
            Ok(r) if r.agent == self.cfg.gateway && r.verify(&self.cfg.upstream.key) => r,
            Ok(_) => {
                warn!("upstream: a clock reply not signed by the parent's key, dropped");
                return;
            }
            Err(e) => {
                warn!(error = %e, "upstream: an undecodable clock reply, dropped");
                return;
            }
        };
        let x = &mut self.exchange;
        if x.filter.replied(now, &reply, t3).is_ok() {
            x.samples += 1;
            if let Some(best) = x.filter.best(now) {
                if x.samples == 1 {
                    info!(
                        offset_ms = best.offset_ms,
                        rtt_ms = best.rtt_ms,
                        "the parent's time: this gateway answers its agents in it"
                    );
                }
                self.cfg.clock.set(best.offset_ms, best.rtt_ms);
            }
        }
    }

    /// Reads the chain list and every head from the store: new enrollments
    /// become chains (once they hold an entry), heads catch up.
    fn refresh(&mut self) {
        let records = match self.store.agents() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "upstream: reading the registry failed");
                return;
            }
        };
        for (id, record) in records {
            let head = match self.store.head(&id) {
                Ok(h) => h.seq,
                Err(e) => {
                    warn!(agent = %id, error = %e, "upstream: reading a head failed");
                    continue;
                }
            };
            if self.chains.contains_key(&id) {
                self.moved(&id, head);
            } else {
                self.join(id, &record, head);
            }
        }
    }

    /// Starts forwarding chain `id` (held through `head`) from its durable
    /// cursor.
    fn join(&mut self, id: AgentId, record: &crate::store::AgentRecord, head: Seq) {
        if head == Seq::ZERO {
            return;
        }
        let Some(key) = record.key() else { return };
        if id == self.cfg.gateway && key != self.own_key {
            warn!("upstream: the stored self record names another key; not forwarding it");
            return;
        }
        let best = match self.store.meta(&cursor_key(&id)) {
            Ok(Some(bytes)) => match Receipt::decode(&bytes) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(agent = %id, error = %e, "upstream cursor does not decode; starting from the parent's answer");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                warn!(agent = %id, error = %e, "upstream: reading a cursor failed");
                return;
            }
        };
        let oldest = self.store.oldest(&id).ok().flatten().unwrap_or(Seq(1));
        // the own chain as stored now holds every vouch made so far
        let vouch_in = if id == self.cfg.gateway {
            Seq::ZERO
        } else {
            match self.store.head(&self.cfg.gateway) {
                Ok(h) => h.seq,
                Err(e) => {
                    warn!(error = %e, "upstream: reading the own chain's head failed");
                    return;
                }
            }
        };
        let mut seed = [0u8; 8];
        // Nonces must not repeat across restarts; without OS entropy
        // the clock still differs.
        if getrandom::fill(&mut seed).is_err() {
            seed = baton_runtime::unix_ms().to_le_bytes();
        }
        let mut ucfg = UplinkConfig::new(
            id.clone(),
            key,
            Some(self.cfg.upstream.key),
            u64::from_le_bytes(seed),
        );
        ucfg.software = format!("baton-gateway {}", env!("CARGO_PKG_VERSION"));
        ucfg.resend_timeout = self.cfg.resend_timeout;
        // A chain the parent does not know yet (its vouch is still on
        // the way in this gateway's own chain) is retried soon.
        ucfg.backoff_max = Duration::from_secs(5);
        let mut uplink = Uplink::new(ucfg, best);
        if self.connected {
            uplink.connected(self.origin.elapsed());
        }
        self.pending.insert(id.clone());
        self.chains.insert(
            id,
            Chain {
                uplink,
                head,
                oldest,
                vouch_in,
            },
        );
    }

    fn event(&mut self, ev: Pumped) {
        let now = self.now();
        match ev {
            Pumped::Connected => {
                info!(parent = %self.cfg.upstream.host, "upstream connected");
                self.connected = true;
                let c = &self.cfg.cluster;
                for f in [
                    topic::cluster_filter(c, Kind::Ack),
                    topic::cluster_filter(c, Kind::Nack),
                ] {
                    if let Err(e) = self.client.try_subscribe(&f, QoS::AtLeastOnce) {
                        warn!(filter = %f, error = %e, "upstream subscribe failed");
                    }
                }
                for chain in self.chains.values_mut() {
                    chain.uplink.connected(now);
                }
                self.pending.extend(self.chains.keys().cloned());
                let reply = topic::agent(&self.cfg.cluster, &self.cfg.gateway, Kind::TimeReply);
                if let Err(e) = self.client.try_subscribe(&reply, QoS::AtMostOnce) {
                    warn!(filter = %reply, error = %e, "upstream subscribe failed");
                }
                if self.cfg.commands.is_some() {
                    let cmd = topic::agent(&self.cfg.cluster, &self.cfg.gateway, Kind::Cmd);
                    if let Err(e) = self.client.try_subscribe(&cmd, QoS::AtLeastOnce) {
                        warn!(filter = %cmd, error = %e, "upstream subscribe failed");
                    }
                }
                self.exchange.samples = 0;
                self.exchange.next_at = Some(now);
            }
            Pumped::Lost => {
                self.connected = false;
                for chain in self.chains.values_mut() {
                    chain.uplink.disconnected(now);
                }
                self.pending.extend(self.chains.keys().cloned());
            }
            Pumped::Message { topic, payload } => self.message(now, &topic, &payload),
        }
    }

    /// A receipt or nack from the parent.
    fn message(&mut self, now: Duration, topic: &str, payload: &[u8]) {
        let Some(t) = topic::parse(topic).filter(|t| t.cluster == self.cfg.cluster.as_str()) else {
            return;
        };
        let Ok(agent) = AgentId::new(t.agent) else {
            return;
        };
        if t.kind == Some(Kind::TimeReply) && agent == self.cfg.gateway {
            self.clock_reply(now, payload);
            return;
        }
        if t.kind == Some(Kind::Cmd) && agent == self.cfg.gateway {
            if let Some(link) = &self.cfg.commands {
                let relay = crate::operator::Inbound::Relay(payload.to_vec());
                if link.deliveries.try_send(relay).is_err() {
                    warn!(
                        "ingest queue full: a command delivery from the parent waits for its resend"
                    );
                }
            }
            return;
        }
        let Some(chain) = self.chains.get_mut(&agent) else {
            return;
        };
        let ledger = StoreLedger::new(&self.store, &agent, chain.head, chain.oldest);
        self.pending.insert(agent.clone());
        match t.kind {
            Some(Kind::Ack) => match Receipt::decode(payload) {
                Ok(r) if r.agent == agent => {
                    let before = chain.uplink.acked();
                    chain.uplink.handle_receipt(now, &r, &ledger);
                    let after = chain.uplink.acked();
                    self.metrics
                        .upstream_receipted
                        .fetch_add(after.0.saturating_sub(before.0), Ordering::Relaxed);
                    if agent == self.cfg.gateway {
                        self.release_vouched(after);
                    }
                }
                _ => {
                    warn!(%agent, "upstream: a receipt that does not decode or names another chain")
                }
            },
            Some(Kind::Nack) => match Nack::decode(payload) {
                Ok(n) if n.agent == agent => chain.uplink.handle_nack(now, &n),
                _ => warn!(%agent, "upstream: a nack that does not decode or names another chain"),
            },
            _ => {}
        }
    }

    /// Carries out what every pending uplink asks for until none asks
    /// more, and sets its next timer.
    fn drive(&mut self) {
        let now = self.now();
        let cluster = &self.cfg.cluster;
        let topic = |agent: &AgentId, kind: Kind| topic::agent(cluster, agent, kind);
        let mut alerts = Vec::new();
        let mut dropped = 0;
        // the gateway's own chain first: it carries the vouches the parent
        // needs before it takes the other chains
        let own = self.pending.get(&self.cfg.gateway);
        let rest = self.pending.iter().filter(|a| **a != self.cfg.gateway);
        let vouched = self.vouched_through();
        for agent in own.into_iter().chain(rest) {
            let Some(chain) = self.chains.get_mut(agent) else {
                continue;
            };
            if chain.vouch_in > vouched {
                self.unvouched.insert((chain.vouch_in, agent.clone()));
                continue;
            }
            let ledger = StoreLedger::new(&self.store, agent, chain.head, chain.oldest);
            while let Some(out) = chain.uplink.poll(now, &ledger) {
                match out {
                    Output::Hello(h) => {
                        // a full queue drops it; the resend timer asks again
                        if self
                            .client
                            .try_publish(
                                topic(agent, Kind::Hello),
                                QoS::AtLeastOnce,
                                false,
                                h.encode(),
                            )
                            .is_err()
                        {
                            dropped += 1;
                        }
                    }
                    Output::Batch { from, to, proof } => match ledger.entries(from, to) {
                        Ok(entries) => {
                            let batch = EntryBatch {
                                agent: agent.clone(),
                                proof,
                                entries,
                            };
                            self.metrics.upstream_batches.fetch_add(1, Ordering::Relaxed);
                            // A full queue drops it; the resend timer asks again.
                            if self
                                .client
                                .try_publish(
                                    topic(agent, Kind::Entries),
                                    QoS::AtLeastOnce,
                                    false,
                                    batch.encode(),
                                )
                                .is_err()
                            {
                                dropped += 1;
                            }
                        }
                        Err(e) => alerts.push((
                            agent.clone(),
                            "read",
                            format!("{agent}: reading {from}..={to}: {e}"),
                        )),
                    },
                    Output::StoreBestReceipt(r) => {
                        self.dirty_cursors.insert(agent.clone(), r);
                    }
                    Output::SignHead { seq } => {
                        // Stored heads end at signed entries; this means
                        // the store holds an unsigned tail it cannot have.
                        // (Or the chain has a recorded hole, past which the
                        // parent would need a receipt it never gave.)
                        alerts.push((
                            agent.clone(),
                            "stuck",
                            format!(
                                "{agent}: nothing signed can be sent after seq {} (head {seq}): not forwarding past it",
                                chain.uplink.acked()
                            ),
                        ));
                        break;
                    }
                    Output::PinGatewayKey(_) => {}
                    Output::Adopt(a) => alerts.push((
                        agent.clone(),
                        "parent_ahead",
                        format!(
                            "{agent}: the parent holds it through seq {} (beyond this gateway's {}), under the chain's own signature; this gateway lost data: not forwarding {agent}",
                            a.receipt.seq, chain.head
                        ),
                    )),
                    Output::Alert(a) => {
                        alerts.push((agent.clone(), "uplink", format!("{agent}: {a:?}")));
                    }
                }
            }
            let next = chain.uplink.poll_timeout();
            if self.due.get(agent).copied() != next {
                if let Some(old) = self.due.remove(agent) {
                    self.timers.remove(&(old, agent.clone()));
                }
                if let Some(at) = next {
                    self.due.insert(agent.clone(), at);
                    self.timers.insert((at, agent.clone()));
                }
            }
        }
        if dropped > 0 {
            self.metrics
                .upstream_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        for (chain, kind, text) in alerts {
            self.alert(chain, kind, text);
        }
    }

    /// Counts an alert; logs and keeps it at most once a minute per chain
    /// and kind (a stuck chain asks again at every new head).
    fn alert(&mut self, chain: AgentId, kind: &'static str, text: String) {
        self.metrics.upstream_alerts.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if self
            .alerted
            .get(&(chain.clone(), kind))
            .is_some_and(|at| now.duration_since(*at) < ALERT_EVERY)
        {
            return;
        }
        self.alerted.insert((chain, kind), now);
        warn!(alert = %text, "upstream");
        let mut st = lock(&self.status);
        if st.alerts.len() >= ALERTS_KEPT {
            st.alerts.pop_front();
        }
        st.alerts.push_back(text);
    }

    /// Writes the best receipts that changed, in one transaction.
    fn write_cursors(&mut self) {
        if self.dirty_cursors.is_empty() {
            return;
        }
        let values: Vec<(String, Vec<u8>)> = self
            .dirty_cursors
            .iter()
            .map(|(a, r)| (cursor_key(a), r.encode()))
            .collect();
        match self.store.set_metas(&values) {
            Ok(()) => self.dirty_cursors.clear(),
            // Kept dirty: written with the next tick.
            Err(e) => warn!(error = %e, "upstream: writing cursors failed"),
        }
    }

    /// Publishes the state of the chains polled since the last time.
    fn publish_status(&mut self) {
        let mut st = lock(&self.status);
        st.connected = self.connected;
        st.clock_synced = self.cfg.clock.synced();
        st.clock_offset_ms = (self.exchange.samples > 0).then(|| self.cfg.clock.offset_ms());
        for id in std::mem::take(&mut self.pending) {
            let Some(c) = self.chains.get(&id) else {
                continue;
            };
            let s = st.chains.entry(id).or_default();
            s.held = c.head.0;
            s.receipted = c.uplink.acked().0;
            s.in_flight = c.uplink.in_flight();
            s.halted = c.uplink.is_halted();
            if s.receipt.as_ref().map(|r| r.seq) != c.uplink.best().map(|r| r.seq) {
                s.receipt = c.uplink.best().cloned();
            }
        }
    }
}

fn lock(m: &Mutex<UpstreamStatus>) -> std::sync::MutexGuard<'_, UpstreamStatus> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A stored chain as the uplink reads it. The entries read to cut a batch
/// are kept for the batch that follows.
struct StoreLedger<'a> {
    store: &'a Store,
    agent: &'a AgentId,
    head: Seq,
    oldest: Seq,
    cut: RefCell<Option<(Seq, Vec<Entry>)>>,
}

impl<'a> StoreLedger<'a> {
    fn new(store: &'a Store, agent: &'a AgentId, head: Seq, oldest: Seq) -> Self {
        StoreLedger {
            store,
            agent,
            head,
            oldest,
            cut: RefCell::new(None),
        }
    }

    /// Up to `limit` contiguous stored entries from `from` (a recorded
    /// hole ends them).
    fn read(&self, from: Seq, limit: usize) -> Result<Vec<Entry>, crate::store::StoreError> {
        let rows = self.store.range(self.agent, from, limit)?;
        Ok(rows
            .into_iter()
            .enumerate()
            .take_while(|(i, (s, _))| s.0 == from.0 + *i as u64 && *s <= self.head)
            .map(|(_, (_, e))| e)
            .collect())
    }

    /// Entries `from..=to`, from the last cut if it holds them.
    fn entries(&self, from: Seq, to: Seq) -> Result<Vec<Entry>, String> {
        let n = usize::try_from(to.0.saturating_sub(from.0) + 1).unwrap_or(usize::MAX);
        let cached = self.cut.borrow_mut().take();
        let entries = match cached {
            Some((f, mut e)) if f == from && e.len() >= n => {
                e.truncate(n);
                e
            }
            _ => self.read(from, n).map_err(|e| e.to_string())?,
        };
        if entries.len() == n {
            Ok(entries)
        } else {
            Err(format!("only {} of {n} entries are stored", entries.len()))
        }
    }
}

impl Ledger for StoreLedger<'_> {
    fn head(&self) -> Seq {
        self.head
    }

    fn oldest(&self) -> Seq {
        self.oldest
    }

    fn hash_at(&self, seq: Seq) -> Option<Hash> {
        if seq == Seq::ZERO {
            return Some(Hash::ZERO);
        }
        if seq > self.head {
            return None;
        }
        self.store
            .entry(self.agent, seq)
            .ok()
            .flatten()
            .map(|e| e.hash)
    }

    fn batch_end(&self, from: Seq, limits: BatchLimits) -> Option<Seq> {
        let entries = self.read(from, limits.max_entries).ok()?;
        let end = span_end(from, &entries, limits);
        *self.cut.borrow_mut() = Some((from, entries));
        end
    }
}
