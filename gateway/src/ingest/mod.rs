//! Ingest: MQTT payloads in, staged writes and answers out.
//!
//! [`Ingest::handle`] judges one message with the agent's `intake` state
//! machine and stages what must be stored; answers that need no commit
//! (duplicates, nacks, hello answers) come back at once. [`Ingest::commit`]
//! writes everything staged in one durable transaction (many batches per
//! fsync when they arrive together) and only then returns the receipts for
//! the batches it covered (PROTOCOL §7 rule 1). No I/O happens here except
//! through the [`Store`]; the MQTT loop lives in `server.rs`.
//!
//! This file routes topics, judges batches and hellos, and commits; the
//! other concerns have their own files: `enroll` (operator enrollments and
//! trust on first use), `child` (child gateways' chains and the agents
//! they vouch for), `load` (verified batons through the same intake).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_shared::intake::{Answer, Enrollment, Head, Intake, IntakeConfig, Verdict};
use baton_shared::memory::Layered;
use baton_shared::summary::Summary;
use baton_shared::topic::{self, Kind};
use baton_shared::wire::{
    DecodeError, EntryBatch, Heartbeat, Hello, Message, Nack, NackKind, RejectReason, StateMsg,
    TimeReply, TimeRequest,
};
use baton_shared::{AgentId, ClusterId, Hash, PublicKey, SecretKey, Seq};
use tracing::{info, warn};

use crate::metrics::{BadInput, Metrics};
use crate::own_chain::{self, OwnChain, OwnEvent};
use crate::registry::{ChildSummary, Registry};
use crate::store::{AgentRecord, EnrolledBy, Store, StoreError, Write};

mod child;
mod coord;
mod enroll;
mod load;
mod rerun;

use child::child_filters;
pub use coord::{Coordination, IssueError, Issued, MAX_ACTIVE, Order, Scheduled};
pub use enroll::{UnenrollError, open_window, window_until};
pub use load::LoadError;
pub use rerun::{Rerun, RerunError};

/// Beyond this many remembered (agent, kind) log times, expired ones go.
const LOG_LIMITER_ENTRIES: usize = 4096;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub gateway: AgentId,
    pub cluster: ClusterId,
    pub resend_timeout: Duration,
    pub software: String,
    /// How the live registry judges agents.
    pub thresholds: baton_shared::liveness::Thresholds,
    /// Bounds of trust on first use.
    pub first_use: crate::config::FirstUseLimits,
}

/// Why [`Ingest::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building the gateway's genesis entry: {0}")]
    Genesis(#[from] baton_shared::entry::AppendError),
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// New entries made durable by a commit, for live watchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub agent: AgentId,
    pub first: Seq,
    pub last: Seq,
}

/// What one commit produced.
#[derive(Debug, Default)]
pub struct CommitOutcome {
    pub receipts: Vec<Outbound>,
    pub committed: Vec<Committed>,
}

#[derive(Debug)]
pub struct Ingest {
    cfg: IngestConfig,
    key: SecretKey,
    store: Arc<Store>,
    own: OwnChain,
    intakes: HashMap<AgentId, Intake>,
    /// Accepted but not yet committed, per agent: seq → hash.
    pending: HashMap<AgentId, BTreeMap<u64, Hash>>,
    staged: Vec<Write>,
    staged_entries: u64,
    answer_after_commit: BTreeSet<AgentId>,
    window_until_ms: Option<i64>,
    /// Trust on first use so far: in the open window, and this minute.
    first_use: enroll::FirstUse,
    metrics: Arc<Metrics>,
    last_logged: HashMap<(String, &'static str), Duration>,
    checkpointed: HashMap<AgentId, Seq>,
    registry: Arc<Mutex<Registry>>,
    /// The fleet as the gateway chains held here describe it (the console).
    fleet: Arc<Mutex<crate::fleet::FleetView>>,
    /// Chains forwarded by child gateways: agent → (the cluster its topics
    /// use, the child gateway that forwards it).
    routes: HashMap<AgentId, (ClusterId, AgentId)>,
    /// Child clusters → their gateway (PROTOCOL §8).
    children: BTreeMap<ClusterId, AgentId>,
    /// The offset to the parent's clock (tiered time).
    parent_clock: Arc<ParentClock>,
    /// The last `cluster_summary` put in the chain and when (unix ms): a
    /// gateway with a parent records another as soon as what its parent
    /// acts on changed, at most once per `summary_refresh`.
    last_chained: Option<(baton_shared::summary::Summary, i64)>,
    summary_refresh: Duration,
    /// Enrollments staged and not yet committed (a record is looked up
    /// here before the store).
    staged_records: HashMap<AgentId, AgentRecord>,
    /// Topic filters added since the last [`Ingest::take_new_subscriptions`].
    new_subscriptions: Vec<String>,
    /// Recent `recovery` entries per agent (when, the entry): two devices
    /// writing as one id adopt each other's heads over and over.
    recoveries: HashMap<AgentId, std::collections::VecDeque<(i64, baton_shared::Entry)>>,
    /// Commands in hand (PROTOCOL §9), shared with the console.
    coord: Arc<Mutex<Coordination>>,
}

/// This many `recovery` entries of one agent within [`CLONE_WINDOW_MS`]
/// mean two writers share its identity (a cloned SD card): a restored
/// image or local damage makes one.
pub const CLONE_RECOVERIES: usize = 3;
pub const CLONE_WINDOW_MS: i64 = 10 * 60 * 1000;

/// This gateway's clock as its parent's (PROTOCOL §7, tiered time): the
/// offset to the parent that the forwarder's clock exchange measured, so
/// that every tier answers in the top's time. Without a parent (or before
/// a sample) the gateway's own clock is the time.
#[derive(Debug)]
pub struct ParentClock {
    /// Parent − own, ms.
    offset_ms: std::sync::atomic::AtomicI64,
    /// The round trip of the sample the offset came from, ms.
    rtt_ms: std::sync::atomic::AtomicI64,
    /// Whether a sample was taken, and when (ms since `origin`).
    sampled: Mutex<Option<std::time::Instant>>,
    /// The kernel's boot id (an entry's `clock.boot`).
    boot: String,
}

impl Default for ParentClock {
    fn default() -> Self {
        ParentClock {
            offset_ms: std::sync::atomic::AtomicI64::new(0),
            rtt_ms: std::sync::atomic::AtomicI64::new(0),
            sampled: Mutex::new(None),
            boot: baton_runtime::time::boot_id(std::path::Path::new("/")),
        }
    }
}

impl ParentClock {
    /// A sample of the offset to the parent (from the forwarder).
    pub fn set(&self, offset_ms: i64, rtt_ms: i64) {
        self.offset_ms
            .store(offset_ms, std::sync::atomic::Ordering::Relaxed);
        self.rtt_ms
            .store(rtt_ms, std::sync::atomic::Ordering::Relaxed);
        *self
            .sampled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
    }

    /// Parent − own, ms; 0 before any sample.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a sample younger than [`baton_shared::clock::SYNCED_WITHIN`]
    /// exists.
    pub fn synced(&self) -> bool {
        self.sampled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < baton_shared::clock::SYNCED_WITHIN)
    }

    /// The top's time now, as this gateway knows it.
    pub fn now_ms(&self) -> i64 {
        baton_runtime::unix_ms() + self.offset_ms()
    }

    /// The `clock` of an entry stamped now: the offset to the parent and
    /// its round trip; without a parent the gateway's own clock is the
    /// top's time (offset 0, synced).
    pub fn info(&self, has_parent: bool) -> baton_shared::entry::ClockInfo {
        let (offset_ms, rtt_ms, synced) = if has_parent {
            (
                self.offset_ms(),
                self.rtt_ms.load(std::sync::atomic::Ordering::Relaxed),
                self.synced(),
            )
        } else {
            (0, 0, true)
        };
        baton_shared::entry::ClockInfo {
            offset_ms,
            rtt_ms,
            synced,
            boot: self.boot.clone(),
            mono_ms: baton_runtime::time::boottime_ms(),
        }
    }
}

/// Answers clock requests (PROTOCOL §7): every reply signed by the
/// gateway, so that only its gateway can move an agent's clock, and in its
/// parent's time when it has one (tiered time).
#[derive(Debug, Clone)]
pub struct TimeServer {
    cluster: ClusterId,
    gateway: AgentId,
    key: SecretKey,
    clock: Arc<ParentClock>,
}

impl TimeServer {
    pub fn new(
        cluster: ClusterId,
        gateway: AgentId,
        key: SecretKey,
        clock: Arc<ParentClock>,
    ) -> Self {
        TimeServer {
            cluster,
            gateway,
            key,
            clock,
        }
    }

    /// The top's time now, as this gateway knows it.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The answer to a request received at `t1` (in the top's time), on
    /// `cluster`'s topic; the send time `t2` is taken as late as possible.
    pub fn reply(&self, cluster: &ClusterId, req: &TimeRequest, t1: i64) -> Outbound {
        let reply = TimeReply::sign(&self.key, &self.gateway, req, t1, self.now_ms());
        Outbound {
            topic: topic::agent(cluster, &req.agent, Kind::TimeReply),
            payload: reply.encode(),
        }
    }

    /// The reply to a well-formed clock request on `topic` of this
    /// gateway's cluster; `None` leaves the message to ingest, which counts
    /// what is wrong with it (and answers a child gateway's).
    pub fn answer(&self, topic: &str, payload: &[u8]) -> Option<Outbound> {
        let t1 = self.now_ms();
        let t = topic::parse(topic)?;
        if t.cluster != self.cluster.as_str() || t.kind != Some(Kind::Time) {
            return None;
        }
        let req = TimeRequest::decode(payload).ok()?;
        (req.agent.as_str() == t.agent).then(|| self.reply(&self.cluster, &req, t1))
    }
}

impl Ingest {
    /// Opens ingest over `store`; a new gateway writes its genesis and
    /// enrolls its own key in the same first commit.
    pub fn open(
        cfg: IngestConfig,
        key: SecretKey,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        unix_ms: i64,
    ) -> Result<Ingest, OpenError> {
        let head = store.head(&cfg.gateway)?;
        let own = OwnChain::new(cfg.gateway.clone(), key.clone(), head);
        let window_until_ms = enroll::window_until(&store)?;
        let registry = Arc::new(Mutex::new(
            Registry::new(cfg.thresholds).with_cluster(cfg.cluster.as_str()),
        ));
        let mut ingest = Ingest {
            cfg,
            key,
            store,
            own,
            intakes: HashMap::new(),
            pending: HashMap::new(),
            staged: Vec::new(),
            staged_entries: 0,
            answer_after_commit: BTreeSet::new(),
            window_until_ms,
            first_use: enroll::FirstUse::default(),
            metrics,
            last_logged: HashMap::new(),
            checkpointed: HashMap::new(),
            registry,
            fleet: Arc::new(Mutex::new(crate::fleet::FleetView::default())),
            routes: HashMap::new(),
            children: BTreeMap::new(),
            parent_clock: Arc::new(ParentClock::default()),
            last_chained: None,
            summary_refresh: crate::config::Liveness::default().summary_interval,
            staged_records: HashMap::new(),
            new_subscriptions: Vec::new(),
            recoveries: HashMap::new(),
            coord: Arc::new(Mutex::new(Coordination::default())),
        };
        if head.seq == Seq::ZERO {
            let genesis = ingest.own.genesis(unix_ms, &ingest.cfg.software)?;
            let record = AgentRecord {
                public_key: ingest.key.public().to_bytes(),
                start_seq: None,
                revoked_from_seq: None,
                enrolled_by: EnrolledBy::SelfChain,
                enrolled_ms: unix_ms,
            };
            ingest.store.commit(&[
                genesis,
                Write::Enroll {
                    agent: ingest.cfg.gateway.clone(),
                    record,
                },
            ])?;
        }
        for (agent, record) in ingest.store.agents()? {
            if ingest.route(&agent, &record.enrolled_by) {
                continue;
            }
            if record.enrolled_by != EnrolledBy::SelfChain {
                let halted = ingest.store.halted(&agent)?.is_some();
                ingest.registry().enroll(&agent, unix_ms, halted);
            }
        }
        ingest.new_subscriptions.clear();
        *ingest.fleet() = ingest.stored_fleet()?;
        ingest.resume_commands(unix_ms)?;
        Ok(ingest)
    }

    /// The clock-request answerer (the MQTT poller answers with its own
    /// copy, at once).
    pub fn time_server(&self) -> TimeServer {
        TimeServer::new(
            self.cfg.cluster.clone(),
            self.cfg.gateway.clone(),
            self.key.clone(),
            Arc::clone(&self.parent_clock),
        )
    }

    /// This gateway's time as its parent's (set by the forwarder).
    pub fn parent_clock(&self) -> Arc<ParentClock> {
        Arc::clone(&self.parent_clock)
    }

    /// The live registry (shared with the HTTP side).
    pub fn registry_handle(&self) -> Arc<Mutex<Registry>> {
        Arc::clone(&self.registry)
    }

    /// The fleet view the console reads.
    pub fn fleet_handle(&self) -> Arc<Mutex<crate::fleet::FleetView>> {
        Arc::clone(&self.fleet)
    }

    fn fleet(&self) -> MutexGuard<'_, crate::fleet::FleetView> {
        self.fleet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The fleet view as the store keeps it.
    fn stored_fleet(&self) -> Result<crate::fleet::FleetView, StoreError> {
        let (clusters, agents) = self.store.fleet()?;
        let records = self.store.agents()?;
        Ok(crate::fleet::FleetView::new(
            &self.cfg.gateway,
            &self.cfg.cluster,
            clusters,
            agents,
            &records,
        ))
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A poisoned lock means a reader panicked; the data is intact.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn cluster(&self) -> &ClusterId {
        &self.cfg.cluster
    }

    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    pub fn own_head(&self) -> Head {
        self.own.head()
    }

    /// The filters to subscribe to (on every ConnAck): this cluster's
    /// agents, and the chains each child gateway forwards.
    pub fn subscriptions(&self) -> Vec<String> {
        let c = &self.cfg.cluster;
        let mut out = vec![
            topic::cluster_filter(c, Kind::Hello),
            topic::cluster_filter(c, Kind::Entries),
            topic::cluster_filter(c, Kind::Hb),
            topic::cluster_filter(c, Kind::State),
            topic::cluster_filter(c, Kind::Time),
            topic::cluster_filter(c, Kind::CmdReply),
        ];
        for child in self.children.keys() {
            out.extend(child_filters(child));
        }
        out
    }

    /// Filters for child clusters enrolled since the last call (to
    /// subscribe to at once).
    pub fn take_new_subscriptions(&mut self) -> Vec<String> {
        std::mem::take(&mut self.new_subscriptions)
    }

    /// Notes where a forwarded chain arrives; true if `by` is a child
    /// gateway or an agent behind one.
    fn route(&mut self, agent: &AgentId, by: &EnrolledBy) -> bool {
        match by {
            EnrolledBy::ChildGateway { cluster } => {
                self.routes
                    .insert(agent.clone(), (cluster.clone(), agent.clone()));
                if self
                    .children
                    .insert(cluster.clone(), agent.clone())
                    .is_none()
                {
                    self.new_subscriptions.extend(child_filters(cluster));
                }
                true
            }
            EnrolledBy::Vouched { via, cluster, .. } => {
                self.routes
                    .insert(agent.clone(), (cluster.clone(), via.clone()));
                true
            }
            _ => false,
        }
    }

    /// The cluster on whose topics `agent`'s chain arrives.
    fn cluster_of(&self, agent: &AgentId) -> &ClusterId {
        self.routes.get(agent).map_or(&self.cfg.cluster, |r| &r.0)
    }

    /// An enrolled agent's record: staged in this group, or stored.
    fn record(&self, agent: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        match self.staged_records.get(agent) {
            Some(r) => Ok(Some(r.clone())),
            None => self.store.agent(agent),
        }
    }

    /// On start, the current receipt on every known agent's `ack`
    /// (PROTOCOL §7 rule 3).
    pub fn startup_receipts(&mut self) -> Result<Vec<Outbound>, StoreError> {
        let mut out = Vec::new();
        for (agent, record) in self.store.agents()? {
            if record.enrolled_by == EnrolledBy::SelfChain {
                continue;
            }
            if self.ensure_intake(&agent)?
                && let Some(intake) = self.intakes.get(&agent)
            {
                let r = intake.receipt(&self.key);
                out.push(Outbound {
                    topic: topic::agent(self.cluster_of(&agent), &agent, Kind::Ack),
                    payload: r.encode(),
                });
            }
        }
        Ok(out)
    }

    /// Makes sure an enrolled agent has its intake; false if not enrolled.
    fn ensure_intake(&mut self, agent: &AgentId) -> Result<bool, StoreError> {
        Ok(self.intake(agent)?.is_some())
    }

    fn intake(&mut self, agent: &AgentId) -> Result<Option<&mut Intake>, StoreError> {
        if !self.intakes.contains_key(agent) {
            let Some(record) = self.record(agent)? else {
                return Ok(None);
            };
            let Some(key) = record
                .key()
                .filter(|_| record.enrolled_by != EnrolledBy::SelfChain)
            else {
                return Ok(None);
            };
            let intake = Intake::new(
                IntakeConfig {
                    gateway: self.cfg.gateway.clone(),
                    gateway_key: self.key.public(),
                    resend_timeout: self.cfg.resend_timeout,
                },
                Enrollment {
                    agent: agent.clone(),
                    key,
                    start_seq: record.start_seq,
                    revoked_from_seq: record.revoked_from_seq,
                },
                self.store.head(agent)?,
                self.store.halted(agent)?,
            );
            self.intakes.insert(agent.clone(), intake);
        }
        Ok(self.intakes.get_mut(agent))
    }

    /// Whether a problem of `kind` from `agent` may be logged now: at most
    /// once a minute per agent and kind. The ids come from topics any client
    /// can publish on, so expired entries are forgotten once there are many.
    fn log_due(&mut self, now: Duration, agent: &str, kind: &'static str) -> bool {
        const EVERY: Duration = Duration::from_secs(60);
        if self.last_logged.len() >= LOG_LIMITER_ENTRIES {
            self.last_logged.retain(|_, at| now < *at + EVERY);
        }
        let key = (agent.to_owned(), kind);
        let due = self
            .last_logged
            .get(&key)
            .is_none_or(|at| now >= *at + EVERY);
        if due {
            self.last_logged.insert(key, now);
        }
        due
    }

    /// Counts bad input; logs it at most once per agent and kind per minute.
    fn bad(&mut self, now: Duration, agent: &str, kind: BadInput, detail: &str) {
        self.metrics.bad_input(kind);
        if self.log_due(now, agent, kind.as_str()) {
            warn!(agent, kind = kind.as_str(), detail, "bad input dropped");
        }
    }

    fn nack(&self, agent: &AgentId, kind: NackKind) -> Outbound {
        self.nack_on(self.cluster_of(agent), agent, kind)
    }

    /// A nack on `cluster`'s topics (a refusal on a topic the agent's
    /// chain does not belong to).
    fn nack_on(&self, cluster: &ClusterId, agent: &AgentId, kind: NackKind) -> Outbound {
        Outbound {
            topic: topic::agent(cluster, agent, Kind::Nack),
            payload: Nack::new(&self.cfg.gateway, agent, kind).encode(),
        }
    }

    /// A refused hello: counted, logged (limited), and answered with the
    /// signed reject that alone makes the agent stop (PROTOCOL §7 rule 3d).
    fn refuse_hello(
        &mut self,
        now: Duration,
        cluster: &ClusterId,
        hello: &Hello,
        (reason, seq): (RejectReason, Seq),
        what: &str,
    ) -> Outbound {
        if reason == RejectReason::UnknownAgent {
            self.bad(now, hello.agent.as_str(), BadInput::UnknownAgent, what);
        }
        let nack = Nack::signed_reject(
            &self.key,
            &self.cfg.gateway,
            &hello.agent,
            hello.nonce,
            reason,
            seq,
        );
        Outbound {
            topic: topic::agent(cluster, &hello.agent, Kind::Nack),
            payload: nack.encode(),
        }
    }

    /// Judges one message. Returns the answers that need no commit.
    pub fn handle(
        &mut self,
        now: Duration,
        unix_ms: i64,
        topic: &str,
        payload: &[u8],
    ) -> Vec<Outbound> {
        match self.try_handle(now, unix_ms, topic, payload) {
            Ok(out) => out,
            Err(e) => {
                // A read failed: answer nothing; the agent's resend timer
                // brings the message back, and the next commit surfaces a
                // broken store.
                warn!(error = %e, topic, "store read failed while judging a message");
                Vec::new()
            }
        }
    }

    fn try_handle(
        &mut self,
        now: Duration,
        unix_ms: i64,
        topic: &str,
        payload: &[u8],
    ) -> Result<Vec<Outbound>, StoreError> {
        let parsed = topic::parse(topic).and_then(|t| {
            let c = ClusterId::new(t.cluster).ok()?;
            let a = AgentId::new(t.agent).ok()?;
            (c == self.cfg.cluster || self.children.contains_key(&c)).then_some((c, a, t.kind))
        });
        let Some((cluster, agent, kind)) = parsed else {
            self.bad(now, "-", BadInput::Topic, topic);
            return Ok(Vec::new());
        };
        let forwarded = cluster != self.cfg.cluster;
        // A chain is taken only on its own cluster's topics: an agent
        // vouched for by child c1 is unknown on c2's topics and here.
        if let Some(k @ (Kind::Hello | Kind::Entries)) = kind
            && cluster != *self.cluster_of(&agent)
        {
            let what = format!(
                "{} on cluster {cluster}, which does not forward {agent}",
                k.suffix()
            );
            if k == Kind::Hello {
                let Some(hello) = self.decode::<Hello>(now, &agent, payload, |h| &h.agent) else {
                    return Ok(Vec::new());
                };
                let refusal = (RejectReason::UnknownAgent, Seq::ZERO);
                return Ok(vec![
                    self.refuse_hello(now, &cluster, &hello, refusal, &what),
                ]);
            }
            return Ok(vec![self.refuse_unknown_on(now, &cluster, &agent, &what)]);
        }
        match kind {
            Some(Kind::Hello) => self.hello(now, unix_ms, &agent, payload, forwarded),
            Some(Kind::Entries) => self.entries(now, unix_ms, &agent, payload),
            // A child gateway's forwarder asks for the time (tiered time):
            // only the child this cluster is routed to, for itself.
            Some(Kind::Time) if forwarded && self.children.get(&cluster) == Some(&agent) => {
                let time = self.time_server();
                let t1 = time.now_ms();
                Ok(self
                    .decode(now, &agent, payload, |m: &TimeRequest| &m.agent)
                    .map(|r| time.reply(&cluster, &r, t1))
                    .into_iter()
                    .collect())
            }
            // a child gateway answers a command for its subtree
            Some(Kind::CmdReply) if forwarded && self.children.get(&cluster) == Some(&agent) => {
                self.cmd_reply(now, &agent, payload)?;
                Ok(Vec::new())
            }
            // child clusters forward chains only
            _ if forwarded => {
                self.bad(now, agent.as_str(), BadInput::Topic, topic);
                Ok(Vec::new())
            }
            Some(Kind::CmdReply) => {
                self.cmd_reply(now, &agent, payload)?;
                Ok(Vec::new())
            }
            Some(Kind::Hb) => {
                let Some(hb) = self.decode(now, &agent, payload, |m: &Heartbeat| &m.agent) else {
                    return Ok(Vec::new());
                };
                // An agent's offset is to the top's time (tiered time), as
                // its own clock exchange measures it.
                let top_ms = unix_ms + self.parent_clock.offset_ms();
                if let Err(why) = Registry::plausible_heartbeat(&hb) {
                    self.bad(now, agent.as_str(), BadInput::Implausible, why);
                } else if self.registry().heartbeat(now, top_ms, hb) {
                    self.metrics
                        .heartbeats
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    self.bad(now, agent.as_str(), BadInput::UnknownAgent, "heartbeat");
                }
                Ok(Vec::new())
            }
            Some(Kind::State) => {
                let Some(m) = self.decode(now, &agent, payload, |m: &StateMsg| &m.agent) else {
                    return Ok(Vec::new());
                };
                let plausible = self.registry().plausible_state(&m, unix_ms);
                if let Err(why) = plausible {
                    self.bad(now, agent.as_str(), BadInput::Implausible, why);
                } else if !self.registry().presence(&m) {
                    self.bad(now, agent.as_str(), BadInput::UnknownAgent, "state");
                }
                Ok(Vec::new())
            }
            Some(Kind::Time) => {
                // Normally answered by the MQTT poller at once (see
                // `time_reply`); here when it reaches ingest anyway.
                let time = self.time_server();
                let t1 = time.now_ms();
                Ok(self
                    .decode(now, &agent, payload, |m: &TimeRequest| &m.agent)
                    .map(|r| time.reply(&self.cfg.cluster, &r, t1))
                    .into_iter()
                    .collect())
            }
            _ => {
                self.bad(now, agent.as_str(), BadInput::Topic, topic);
                Ok(Vec::new())
            }
        }
    }

    fn decode_failed(&mut self, now: Duration, agent: &AgentId, e: &DecodeError) {
        let kind = match e {
            DecodeError::Version(_) => BadInput::Version,
            DecodeError::TooLarge { .. } => BadInput::TooLarge,
            _ => BadInput::Undecodable,
        };
        self.bad(now, agent.as_str(), kind, &e.to_string());
    }

    /// Decodes a payload from `agent`'s topic. Undecodable payloads and a
    /// payload naming another agent than its topic are bad input: counted,
    /// logged at most once a minute, dropped (PROTOCOL §7).
    fn decode<M: Message>(
        &mut self,
        now: Duration,
        agent: &AgentId,
        payload: &[u8],
        agent_of: fn(&M) -> &AgentId,
    ) -> Option<M> {
        let msg = match M::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.decode_failed(now, agent, &e);
                return None;
            }
        };
        if agent_of(&msg) != agent {
            let named = agent_of(&msg).to_string();
            self.bad(now, agent.as_str(), BadInput::AgentMismatch, &named);
            return None;
        }
        Some(msg)
    }

    /// Bad input from an unenrolled agent: counted, logged (limited), and
    /// answered with `reject(unknown_agent)`.
    fn refuse_unknown(&mut self, now: Duration, agent: &AgentId, what: &str) -> Outbound {
        let cluster = self.cluster_of(agent).clone();
        self.refuse_unknown_on(now, &cluster, agent, what)
    }

    /// As [`Ingest::refuse_unknown`], answered on `cluster`'s topics.
    fn refuse_unknown_on(
        &mut self,
        now: Duration,
        cluster: &ClusterId,
        agent: &AgentId,
        what: &str,
    ) -> Outbound {
        self.bad(now, agent.as_str(), BadInput::UnknownAgent, what);
        self.nack_on(
            cluster,
            agent,
            NackKind::Reject {
                reason: RejectReason::UnknownAgent,
                seq: Seq::ZERO,
            },
        )
    }

    fn hello(
        &mut self,
        now: Duration,
        unix_ms: i64,
        agent: &AgentId,
        payload: &[u8],
        forwarded: bool,
    ) -> Result<Vec<Outbound>, StoreError> {
        let Some(hello) = self.decode::<Hello>(now, agent, payload, |h| &h.agent) else {
            return Ok(Vec::new());
        };
        // Trust on first use is for this cluster's own devices only: a
        // forwarded chain needs a child's vouch (PROTOCOL §8).
        let cluster = self.cluster_of(agent).clone();
        let unknown = (RejectReason::UnknownAgent, Seq::ZERO);
        if self.intake(agent)?.is_none()
            && (forwarded || !self.enroll_on_first_use(now, unix_ms, &hello))
        {
            let what = "hello from an unenrolled agent";
            return Ok(vec![
                self.refuse_hello(now, &cluster, &hello, unknown, what),
            ]);
        }
        // A key other than the enrolled one is an unknown agent (rule 3d).
        if self
            .record(agent)?
            .is_some_and(|r| r.public_key != hello.public_key)
        {
            let what = "hello with a key other than the enrolled one";
            return Ok(vec![
                self.refuse_hello(now, &cluster, &hello, unknown, what),
            ]);
        }
        self.metrics
            .hellos
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = self.key.clone();
        let Some(intake) = self.intake(agent)? else {
            return Ok(Vec::new());
        };
        let out = match intake.answer_hello(&hello, &key) {
            Ok(r) => Outbound {
                topic: topic::agent(&cluster, agent, Kind::Ack),
                payload: r.encode(),
            },
            Err(NackKind::Reject { reason, seq }) => {
                let what = "hello from a halted agent";
                self.refuse_hello(now, &cluster, &hello, (reason, seq), what)
            }
            Err(kind) => self.nack(agent, kind),
        };
        Ok(vec![out])
    }

    /// Re-judges every agent's liveness; each state change becomes an
    /// `agent_state` entry in the gateway's chain (committed with the next
    /// group).
    pub fn stage_liveness(&mut self, now: Duration, unix_ms: i64) {
        let changes = self.registry().evaluate(now, unix_ms);
        for c in &changes {
            info!(agent = %c.agent, from = %c.from, to = %c.to, reason = %c.reason, "agent state");
            self.stage_own(unix_ms, OwnEvent::AgentState, c.to_value());
        }
        self.refresh_summary(unix_ms);
        let top_ms = self.parent_clock.now_ms();
        self.stage_coordination(top_ms);
    }

    /// A `cluster_summary` entry in the gateway's chain.
    pub fn stage_summary(&mut self, unix_ms: i64) {
        let summary = self.registry().summary();
        let data = summary.to_value(self.cfg.cluster.as_str(), unix_ms);
        self.stage_own(unix_ms, OwnEvent::ClusterSummary, data);
        self.last_chained = Some((summary, unix_ms));
    }

    /// The least time between two `cluster_summary` entries recorded
    /// because the subtree changed (`summary_interval`).
    pub fn set_summary_refresh(&mut self, every: Duration) {
        self.summary_refresh = every;
    }

    /// A parent rolls its children up from their chained summaries, which
    /// come every `summary_chain_interval` (5 min by default): when what
    /// it acts on — mode, counts, clusters, subtree lead — changed since
    /// the last one, a gateway with a parent records the summary now (at
    /// most once per `summary_interval`), so its parent's view does not
    /// stay at a start-up summary for minutes.
    fn refresh_summary(&mut self, unix_ms: i64) {
        let Some((before, at_ms)) = &self.last_chained else {
            return;
        };
        let due = i64::try_from(self.summary_refresh.as_millis()).unwrap_or(i64::MAX);
        if unix_ms - at_ms < due || !self.coord().has_parent() {
            return;
        }
        if self.registry().summary().differs_for_parent(before) {
            self.stage_summary(unix_ms);
        }
    }

    fn entries(
        &mut self,
        now: Duration,
        unix_ms: i64,
        agent: &AgentId,
        payload: &[u8],
    ) -> Result<Vec<Outbound>, StoreError> {
        let Some(batch) = self.decode::<EntryBatch>(now, agent, payload, |b| &b.agent) else {
            return Ok(Vec::new());
        };
        let routed = self.routes.get(agent).cloned();
        let ack_topic = topic::agent(self.cluster_of(agent), agent, Kind::Ack);
        if !self.ensure_intake(agent)? {
            return Ok(vec![self.refuse_unknown(
                now,
                agent,
                "batch from an unenrolled agent",
            )]);
        }
        let pending = self.pending.entry(agent.clone()).or_default();
        let Some(intake) = self.intakes.get_mut(agent) else {
            return Ok(Vec::new());
        };
        let view = Layered {
            durable: &self.store.view(agent),
            pending,
        };
        let verdict = intake.handle_batch(now, &batch, &view);
        // Rule 4: one answer per decoded batch, the same function the
        // simulation answers with. A receipt for accepted entries waits for
        // the commit; any other receipt goes at once.
        let answer = match verdict.answer() {
            Answer::Receipt if matches!(verdict, Verdict::Accepted { .. }) => None,
            Answer::Receipt => Some(Outbound {
                topic: ack_topic,
                payload: intake.receipt(&self.key).encode(),
            }),
            Answer::Nack(kind) => Some(self.nack(agent, kind)),
        };
        // What each verdict does besides its answer.
        match verdict {
            Verdict::Accepted {
                first,
                entries,
                gap,
            } => {
                self.metrics
                    .batches_accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some((from, to)) = gap {
                    warn!(%agent, %from, %to, "gateway data loss: agent refilled past a hole");
                    self.staged.push(Write::Gap {
                        agent: agent.clone(),
                        from,
                        to,
                    });
                    self.stage_own(unix_ms, OwnEvent::Gap, own_chain::gap_data(agent, from, to));
                }
                if let Some((cluster, via)) = &routed
                    && via == agent
                {
                    self.child_entries(unix_ms, via, cluster, first, &entries);
                }
                let cloned = self.watch_recoveries(unix_ms, agent, &entries);
                self.stage_accepted(agent, first, entries);
                self.answer_after_commit.insert(agent.clone());
                if let Some(evidence) = cloned {
                    self.stage_clone(unix_ms, agent, evidence);
                }
            }
            Verdict::Duplicate => {
                self.metrics
                    .batches_duplicate
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Verdict::ResendSuppressed => {}
            Verdict::Resend { .. } => {
                self.metrics
                    .resend_nacks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Verdict::Rejected {
                reason,
                seq,
                detail,
            } => {
                self.metrics.rejected(reason);
                if self.log_due(now, agent.as_str(), reason.as_str()) {
                    warn!(%agent, %reason, %seq, detail, "batch rejected");
                }
                if let Some((_, via)) = &routed {
                    let what = format!("{reason} at seq {seq}: {detail}");
                    self.forwarding_alert(now, unix_ms, via, agent, &what);
                }
            }
            Verdict::Fork { seq, evidence } => {
                let how = match &routed {
                    Some((_, via)) => format!(" (forwarded by child gateway {via})"),
                    None => String::new(),
                };
                self.stage_fork(unix_ms, agent, seq, evidence, &how);
            }
            Verdict::Halted { .. } => self.metrics.rejected(RejectReason::Halted),
        }
        Ok(answer.into_iter().collect())
    }

    /// Stages accepted entries of `agent` from `first`: their hashes become
    /// pending in the intake's view, and the write joins the group. The
    /// one accept-and-stage step of MQTT batches and loaded batons alike.
    fn stage_accepted(&mut self, agent: &AgentId, first: Seq, entries: Vec<baton_shared::Entry>) {
        let p = self.pending.entry(agent.clone()).or_default();
        for (i, e) in entries.iter().enumerate() {
            p.insert(first.0 + i as u64, e.hash);
        }
        self.staged_entries += entries.len() as u64;
        self.staged.push(Write::Entries {
            agent: agent.clone(),
            first,
            entries,
        });
    }

    /// Notes the `recovery` entries among accepted ones; returns them as
    /// evidence once [`CLONE_RECOVERIES`] fall within the window.
    fn watch_recoveries(
        &mut self,
        unix_ms: i64,
        agent: &AgentId,
        entries: &[baton_shared::Entry],
    ) -> Option<Vec<baton_shared::Entry>> {
        // Cheap first: the canonical header's bytes (data sorts before it,
        // so a nested object could mimic them; the header decides).
        const HEADER: &[u8] = b",\"event\":\"recovery\",\"seq\":";
        let mut full = false;
        for e in entries {
            if memchr::memmem::find(&e.content, HEADER).is_none()
                || !e.header().is_ok_and(|h| h.event.as_str() == "recovery")
            {
                continue;
            }
            let w = self.recoveries.entry(agent.clone()).or_default();
            w.push_back((unix_ms, e.clone()));
            while w.len() > CLONE_RECOVERIES
                || w.front()
                    .is_some_and(|(t, _)| unix_ms - t > CLONE_WINDOW_MS)
            {
                w.pop_front();
            }
            full = w.len() >= CLONE_RECOVERIES;
        }
        if !full {
            return None;
        }
        self.recoveries
            .remove(agent)
            .map(|w| w.into_iter().map(|(_, e)| e).collect())
    }

    /// Two writers share `agent`'s identity: halted (its batches refused
    /// until `baton-gateway resolve`) with the recoveries as evidence, and
    /// an `alert` entry; the liveness view shows it quarantined.
    fn stage_clone(&mut self, unix_ms: i64, agent: &AgentId, evidence: Vec<baton_shared::Entry>) {
        let seq = evidence
            .last()
            .and_then(|e| e.header().ok())
            .map_or(Seq::ZERO, |h| h.seq);
        self.registry().quarantine(agent, unix_ms);
        if let Some(intake) = self.intakes.get_mut(agent) {
            intake.halt(seq);
        }
        let detail = format!(
            "{} recovery entries within {} min, the last at seq {seq}: two devices are \
             writing as this agent (a cloned SD card?); halted until `baton-gateway resolve`",
            evidence.len(),
            CLONE_WINDOW_MS / 60_000
        );
        tracing::error!(%agent, %seq, detail, "cloned identity: quarantined");
        self.staged.push(Write::Fork {
            agent: agent.clone(),
            seq,
            evidence,
        });
        let data = own_chain::halt_alert_data("cloned_identity", agent, seq, &detail);
        self.stage_own(unix_ms, OwnEvent::Alert, data);
    }

    /// A fork (PROTOCOL §6): the evidence and the durable halt staged, an
    /// `alert` entry in the gateway's own chain; `how` adds to its detail.
    fn stage_fork(
        &mut self,
        unix_ms: i64,
        agent: &AgentId,
        seq: Seq,
        evidence: Vec<baton_shared::Entry>,
        how: &str,
    ) {
        self.metrics.rejected(RejectReason::Fork);
        self.registry().quarantine(agent, unix_ms);
        warn!(%agent, %seq, how, "fork: evidence kept, agent halted until `baton-gateway resolve`");
        self.staged.push(Write::Fork {
            agent: agent.clone(),
            seq,
            evidence,
        });
        let detail = format!("two entries at seq {seq}{how}");
        let data = own_chain::halt_alert_data("fork", agent, seq, &detail);
        self.stage_own(unix_ms, OwnEvent::Alert, data);
    }

    /// The start-up check set `agent`'s chain aside from `d.from`: an
    /// `alert` in the gateway's chain says so (the rebuild follows from
    /// the agent's resends; what it cannot send again becomes a `gap`).
    pub fn note_store_damage(&mut self, agent: &AgentId, d: &crate::store::Damage, moved: u64) {
        let detail = format!(
            "stored chain damaged at seq {} ({}); {moved} entries set aside, rebuilding to {} from resends",
            d.from, d.problem, d.head
        );
        let data = own_chain::alert_data("local_corruption", agent, &detail);
        self.stage_own(d.at_ms, OwnEvent::Alert, data);
    }

    /// The store was rebuilt from its damaged file at start: an `alert`
    /// in the gateway's chain says what came back and what is to come.
    pub fn note_store_rebuilt(&mut self, unix_ms: i64, r: &crate::rebuild::Rebuilt) {
        let gateway = self.cfg.gateway.clone();
        let data = own_chain::alert_data("local_corruption", &gateway, &r.detail());
        self.stage_own(unix_ms, OwnEvent::Alert, data);
    }

    /// `checkpoint` entries in the gateway's chain for every agent whose
    /// receipted head moved since the last one.
    pub fn stage_checkpoints(&mut self, unix_ms: i64) {
        let mut moved: Vec<(AgentId, Head)> = self
            .intakes
            .iter()
            .filter(|(a, i)| {
                let h = i.durable_head();
                h.seq > Seq::ZERO && self.checkpointed.get(*a).is_none_or(|s| *s < h.seq)
            })
            .map(|(a, i)| (a.clone(), i.durable_head()))
            .collect();
        moved.sort_by(|a, b| a.0.cmp(&b.0));
        for (agent, head) in moved {
            self.stage_own(
                unix_ms,
                OwnEvent::Checkpoint,
                own_chain::checkpoint_data(&agent, &head),
            );
            self.checkpointed.insert(agent, head.seq);
        }
    }

    /// Stages an entry of the gateway's own chain. One that cannot be
    /// built is refused by `OwnChain::append` (nothing signed): logged and
    /// counted in `baton_own_entries_refused_total`.
    fn stage_own(&mut self, unix_ms: i64, event: OwnEvent, data: baton_shared::json::Value) {
        self.stage_own_entry(unix_ms, event, data);
    }

    /// As [`Ingest::stage_own`], returning the entry staged.
    fn stage_own_entry(
        &mut self,
        unix_ms: i64,
        event: OwnEvent,
        data: baton_shared::json::Value,
    ) -> Option<baton_shared::Entry> {
        // entries with times in the top's time carry `clock` (§9)
        let clock =
            matches!(event, OwnEvent::Command | OwnEvent::CommandResult).then(|| self.own_clock());
        match self
            .own
            .append_clocked(unix_ms, event, data, clock.as_ref())
        {
            Ok(w) => {
                let entry = match &w {
                    Write::Entries { entries, .. } => entries.first().cloned(),
                    _ => None,
                };
                self.staged.push(w);
                entry
            }
            Err(e) => {
                self.metrics
                    .own_entries_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(event = event.as_str(), error = %e, "an entry of the gateway's own chain could not be built");
                None
            }
        }
    }

    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// One durable group commit of everything staged, then the receipts.
    pub fn commit(&mut self) -> Result<CommitOutcome, StoreError> {
        if self.staged.is_empty() {
            return Ok(CommitOutcome::default());
        }
        let mut staged = std::mem::take(&mut self.staged);
        let entries = std::mem::take(&mut self.staged_entries);
        let enrolled = std::mem::take(&mut self.staged_records);
        let learned = self.fleet().learn(&staged);
        let fleet_rows = learned.len();
        staged.extend(learned);
        let started = std::time::Instant::now();
        let result = self.store.commit(&staged);
        self.metrics.commit_took(started.elapsed());
        if let Err(e) = result {
            self.metrics
                .commit_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for agent in self.pending.keys() {
                if let Some(i) = self.intakes.get_mut(agent) {
                    i.abandon_pending();
                }
            }
            self.pending.clear();
            self.answer_after_commit.clear();
            self.forget_uncommitted_commands();
            // enrollments lost with the group: their agents are unknown
            // again until enrolled again; a lost resolve or unenroll: the
            // stored record and halt are read again
            for agent in enrolled.keys() {
                self.intakes.remove(agent);
            }
            for w in &staged {
                if let Write::Resolve { agent } | Write::Unenroll { agent } = w {
                    self.intakes.remove(agent);
                }
            }
            // checkpoints staged with the failed commit are made again
            self.checkpointed.clear();
            // redb refuses every transaction after an I/O error until the
            // file is closed and opened again: reopen now, not crash-loop.
            match self.store.reopen() {
                Ok(()) => {
                    info!(path = %self.store.path().display(), "store reopened after a failed commit")
                }
                Err(e) => {
                    warn!(error = %e, "reopening the store failed; the next commit tries again")
                }
            }
            // what was learned from the lost group goes with it
            if fleet_rows > 0 {
                match self.stored_fleet() {
                    Ok(f) => *self.fleet() = f,
                    Err(e) => {
                        warn!(error = %e, "reading the fleet view back after a failed commit")
                    }
                }
            }
            if let Ok(head) = self.store.head(&self.cfg.gateway) {
                self.own.reset(head);
            }
            return Err(e);
        }
        self.metrics
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .entries_accepted
            .fetch_add(entries, std::sync::atomic::Ordering::Relaxed);
        let mut committed = Vec::new();
        let committed_ms = baton_runtime::unix_ms();
        for w in &staged {
            if let Write::Entries {
                agent,
                first,
                entries,
            } = w
                && *agent != self.cfg.gateway
            {
                if let Some(ts) = entries.last().and_then(|e| entry_ts_ms(&e.content)) {
                    let age = u64::try_from(committed_ms - ts).unwrap_or(0);
                    self.metrics.entry_age(Duration::from_millis(age));
                }
                committed.push(Committed {
                    agent: agent.clone(),
                    first: *first,
                    last: Seq(first.0 + entries.len() as u64 - 1),
                });
            }
        }
        for (agent, p) in self.pending.drain() {
            if let (Some(i), Some((&last, _))) = (self.intakes.get_mut(&agent), p.last_key_value())
            {
                i.committed(Seq(last));
            }
        }
        let mut receipts = Vec::new();
        for agent in std::mem::take(&mut self.answer_after_commit) {
            if let Some(i) = self.intakes.get(&agent) {
                receipts.push(Outbound {
                    topic: topic::agent(self.cluster_of(&agent), &agent, Kind::Ack),
                    payload: i.receipt(&self.key).encode(),
                });
            }
        }
        Ok(CommitOutcome {
            receipts,
            committed,
        })
    }

    /// After the store was reopened: forget volatile state and read the
    /// durable state again.
    pub fn replace_store(&mut self, store: Arc<Store>) -> Result<(), StoreError> {
        self.own.reset(store.head(&self.cfg.gateway)?);
        self.store = store;
        self.intakes.clear();
        self.pending.clear();
        self.staged.clear();
        self.staged_entries = 0;
        self.staged_records.clear();
        self.answer_after_commit.clear();
        Ok(())
    }
}

/// An entry's `ts` in unix ms, read from its canonical content without
/// parsing the rest: keys are sorted, only `v` follows `ts`, so the last
/// `"ts":"` is the entry's own (one in `data` comes before it).
fn entry_ts_ms(content: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"ts\":\"";
    let at = content.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let rest = &content[at..];
    let end = rest.iter().position(|b| *b == b'"')?;
    baton_shared::entry::parse_timestamp(std::str::from_utf8(&rest[..end]).ok()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_entrys_own_ts_is_read_not_one_in_its_data() {
        let content = br#"{"agent":"pi-1","data":{"ts":"2020-01-01T00:00:00.000Z"},"event":"e","seq":2,"ts":"2026-12-05T03:00:00.250Z","v":1}"#;
        assert_eq!(
            super::entry_ts_ms(content),
            baton_shared::entry::parse_timestamp("2026-12-05T03:00:00.250Z")
        );
        assert!(super::entry_ts_ms(content).is_some());
        assert_eq!(super::entry_ts_ms(br#"{"seq":1}"#), None);
    }

    use super::*;

    fn open_ingest(dir: &std::path::Path, metrics: &Arc<Metrics>) -> Ingest {
        let store = Arc::new(Store::open(&dir.join("g.redb")).unwrap());
        let cfg = IngestConfig {
            gateway: AgentId::new("gw").unwrap(),
            cluster: ClusterId::new("c").unwrap(),
            resend_timeout: Duration::from_secs(10),
            software: String::new(),
            thresholds: baton_shared::liveness::Thresholds::default(),
            first_use: crate::config::FirstUseLimits::default(),
        };
        Ingest::open(
            cfg,
            SecretKey::from_seed(&[1; 32]),
            store,
            Arc::clone(metrics),
            0,
        )
        .unwrap()
    }

    /// Regression: an order for "now" waited a few ms in the operator
    /// queue and was then refused as "target before issued".
    #[test]
    fn an_order_for_now_that_waited_in_the_queue_is_issued() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut i = open_ingest(dir.path(), &metrics);
        let read_ms = 1_800_000_000_000;
        let order = coord::Order {
            id: None,
            verb: baton_shared::command::Verb::Observe,
            payload: baton_shared::json::Value::Null,
            target_ms: read_ms,
            window_ms: 0,
            expires_ms: read_ms + 1000,
            priority: 1,
            weight: 0.0,
            select: None,
            quorum: None,
            read_ms,
        };
        let issued = i
            .issue(read_ms + 7, order.clone(), "operator/test")
            .unwrap();
        assert_eq!(issued.target_ms, read_ms);
        // Regression (CI): a second, different order in the same
        // millisecond was refused, its default id already used.
        let other = coord::Order {
            priority: 2,
            ..order
        };
        let second = i.issue(read_ms + 7, other, "operator/test").unwrap();
        assert_ne!(second.hash, issued.hash);
    }

    /// `heal`: a child that has not answered is sent the command again at
    /// the next tick, not after its lead plus a round trip.
    #[test]
    fn heal_sends_again_at_once_to_a_child_that_has_not_answered() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut i = open_ingest(dir.path(), &metrics);
        let agent = AgentId::new("pi-h").unwrap();
        let now_ms = baton_runtime::unix_ms();
        // a slow link (RTT 2 s): its own resend would wait ~3 s
        let mut hb = crate::registry::tests::hb(&agent, now_ms, None);
        hb.impedance.latency_p50_ms = 2000.0;
        i.registry().enroll(&agent, now_ms, false);
        assert!(i.registry().heartbeat(Duration::from_secs(1), now_ms, hb));
        i.registry().evaluate(Duration::from_secs(1), now_ms);
        let order = coord::Order {
            id: None,
            verb: baton_shared::command::Verb::Observe,
            payload: baton_shared::json::Value::Null,
            target_ms: now_ms + 5_000,
            window_ms: 1_000,
            expires_ms: now_ms + 10_000,
            priority: 1,
            weight: 0.0,
            select: None,
            quorum: None,
            read_ms: now_ms,
        };
        let issued = i.issue(now_ms, order, "operator/test").unwrap();
        assert_eq!(issued.sent, 1, "{issued:?}");
        let first = i.take_deliveries();
        assert_eq!(first.len(), 1);
        let sent_at = first[0].at_ms;
        i.stage_coordination(sent_at + 10);
        assert!(i.take_deliveries().is_empty(), "resent before it was due");
        let (_, resent) = i
            .coordination()
            .lock()
            .unwrap()
            .heal(std::slice::from_ref(&agent));
        assert_eq!(resent, 1);
        i.stage_coordination(sent_at + 20);
        let again = i.take_deliveries();
        assert_eq!(again.len(), 1, "not sent again at once");
        assert_eq!(again[0].topic, first[0].topic);
    }

    #[test]
    fn the_log_limiter_limits_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut i = open_ingest(dir.path(), &metrics);
        let t0 = Duration::from_secs(1);
        assert!(i.log_due(t0, "pi-1", "too_large"));
        assert!(!i.log_due(t0 + Duration::from_secs(59), "pi-1", "too_large"));
        assert!(i.log_due(t0, "pi-1", "version"), "kinds are limited apart");
        assert!(i.log_due(t0 + Duration::from_secs(60), "pi-1", "too_large"));
        // a flood of distinct ids is counted in full but remembered boundedly
        for n in 0..3 * LOG_LIMITER_ENTRIES {
            i.bad(t0, &format!("flood-{n}"), BadInput::Undecodable, "x");
        }
        assert_eq!(
            metrics.bad_input_count(BadInput::Undecodable),
            3 * LOG_LIMITER_ENTRIES as u64
        );
        i.bad(
            t0 + Duration::from_secs(120),
            "late",
            BadInput::Undecodable,
            "x",
        );
        assert!(
            i.last_logged.len() <= LOG_LIMITER_ENTRIES,
            "{}",
            i.last_logged.len()
        );
    }
}
