//! Coordination at a gateway (PROTOCOL §9): a command is recorded in the
//! gateway's own chain before anything is sent, its agents are selected
//! and planned by what was measured of each (`baton_shared::schedule`),
//! every delivery is handed to the dispatcher with the instant it is due
//! (`send_at = T − lead`, in the top's time), answers are gathered from
//! `cmd/reply` and from the chains the gateway stores, and the two
//! `command_result` phases are recorded when they fall due.
//!
//! Deliveries leave only after the commit that made the `command` entry
//! durable ([`Ingest::take_deliveries`] after [`Ingest::commit`]); a
//! failed commit forgets the commands it carried. After a restart every
//! command recorded here without a final `command_result` is resumed: its
//! matching agents are sent it again at once (an agent answers a known
//! hash from what it recorded, so nothing runs twice) and its phases are
//! recorded when due.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_shared::breaker::{Breaker, BreakerConfig, is_failure};
use baton_shared::command::{self, Command, Draft, Phase, State, Verb};
use baton_shared::crypto::chain_hash;
use baton_shared::gather::{Gather, Kind as ChildKind, goes_up_at_once};
use baton_shared::json::{self, Mode as JsonMode, Object, Value};
use baton_shared::liveness::AgentState;
use baton_shared::schedule::{self, Condition, Lead, Measured, Plan};
use baton_shared::topic::{self, Kind};
use baton_shared::wire::{CommandDelivery, CommandReply, Message};
use baton_shared::{AgentId, ClusterId, CommandId, Entry, Hash, PublicKey, Seq, Sig};
use tracing::{info, warn};

use super::{Committed, Ingest};
use crate::metrics::BadInput;
use crate::own_chain::OwnEvent;
use crate::store::StoreError;

/// Finished commands kept for the console.
const FINISHED_KEPT: usize = 256;
/// Commands in hand at once (an operator's flood is refused, not queued).
pub const MAX_ACTIVE: usize = 1024;

/// A delivery due at `at_ms` (the top's time).
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    pub at_ms: i64,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// "Sent" long ago: a healed child's resend falls due at the next tick.
const HEAL_NOW: i64 = i64::MIN / 4;

/// One command's trail at the top: what each child gateway reported, and
/// the final answers found in the chains behind it.
#[derive(Debug, Default)]
struct Trail {
    /// When the top's final phase was recorded (the check is due).
    due_ms: Option<i64>,
    reported: BTreeMap<AgentId, u64>,
    /// agent → (the child gateway it is behind, its final state)
    found: HashMap<AgentId, (AgentId, State)>,
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A child gateway as a command reaches it.
#[derive(Debug, Clone)]
struct GatewayChild {
    cluster: ClusterId,
    gateway: AgentId,
    matching: u64,
    lead_ms: f64,
}

/// One command in hand.
#[derive(Debug, Clone)]
struct Active {
    gather: Gather,
    origin_sig: Sig,
    from: String,
    recorded_ms: i64,
    /// Child → when it was last sent (ms, the top's time), and its lead.
    sent: HashMap<AgentId, (i64, Lead)>,
    window_recorded: bool,
    final_recorded: bool,
    /// Relayed from the parent: its phases are answered up.
    up: bool,
    /// The latest `command_result` entry (answers a repeated delivery).
    last_result: Option<Entry>,
    /// A conflict of priority 3 may have arrived: checked at the next
    /// tick, before the window phase (`gather::conflict_priority`).
    urgent: bool,
    /// Conflicts of priority 3 already sent up (or alerted) at once.
    urgent_sent: usize,
}

/// The gateway's commands in hand, and its children's breakers. Shared
/// with HTTP (the console reads it); the ingest thread writes it.
#[derive(Debug)]
pub struct Coordination {
    active: BTreeMap<Hash, Active>,
    finished: VecDeque<Active>,
    breakers: HashMap<AgentId, Breaker>,
    breaker_cfg: BreakerConfig,
    origin: Instant,
    deliveries: Vec<Scheduled>,
    /// Commands recorded in the group being committed.
    staged: Vec<Hash>,
    /// 1 for a cluster gateway; +1 per tier of child gateways.
    height: u32,
    /// With a parent: its key, and the issuer keys whose commands are
    /// relayed (empty: only the parent's own).
    parent: Option<(PublicKey, Vec<PublicKey>)>,
    /// Answers to the parent, published after the commit.
    up_replies: Vec<Entry>,
    /// Deliveries refused, by reason.
    refused: BTreeMap<&'static str, u64>,
    /// At the top: each command's trail check, and how long a child's
    /// counts may wait for the chains that bear them out.
    trails: HashMap<Hash, Trail>,
    trail_grace_ms: i64,
    /// This gateway frozen as a whole (a `freeze` whose `select.agents`
    /// names it): the freeze's hash and its `expires`.
    frozen: Option<(Hash, i64)>,
}

impl Default for Coordination {
    fn default() -> Self {
        Coordination {
            active: BTreeMap::new(),
            finished: VecDeque::new(),
            breakers: HashMap::new(),
            breaker_cfg: BreakerConfig::default(),
            origin: Instant::now(),
            deliveries: Vec::new(),
            staged: Vec::new(),
            height: 1,
            parent: None,
            up_replies: Vec::new(),
            refused: BTreeMap::new(),
            trails: HashMap::new(),
            trail_grace_ms: 60_000,
            frozen: None,
        }
    }
}

/// What an operator asks for (the content's fields but `v` and `issuer`).
#[derive(Debug, Clone)]
pub struct Order {
    pub id: Option<CommandId>,
    pub verb: Verb,
    pub payload: Value,
    /// T, ms (the top's time).
    pub target_ms: i64,
    pub window_ms: u64,
    pub expires_ms: i64,
    pub priority: u8,
    pub weight: f64,
    pub select: Option<Value>,
    pub quorum: Option<Value>,
    /// When the gateway read the order, ms: the command's `issued`. An
    /// order for "now" has T = this instant, and the command must not be
    /// issued after its own T because the order waited in a queue.
    pub read_ms: i64,
}

/// What taking a command planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub hash: Hash,
    pub id: String,
    pub target_ms: i64,
    pub selected: u64,
    pub sent: u64,
    pub skipped: BTreeMap<String, u64>,
}

/// Why an operator's order was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IssueError {
    #[error("invalid command: {0}")]
    Content(#[from] baton_shared::command::ContentError),
    #[error("command id: {0}")]
    Id(String),
    #[error("command id {0} was already used by this gateway for another command")]
    IdReused(String),
    #[error("{MAX_ACTIVE} commands are in hand; wait for some to finish")]
    TooMany,
}

impl Coordination {
    /// The console's view of every command in hand and recently finished,
    /// newest first.
    pub fn list(&self) -> Vec<Value> {
        let mut all: Vec<&Active> = self.active.values().chain(self.finished.iter()).collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.recorded_ms));
        all.into_iter().map(|a| summary(a, false)).collect()
    }

    /// One command by hash (hex) or id: its live tally and every child.
    pub fn show(&self, key: &str) -> Option<Value> {
        self.active
            .values()
            .chain(self.finished.iter())
            .find(|a| {
                let c = a.gather.command();
                c.hash.to_hex() == key || c.id.as_str() == key
            })
            .map(|a| summary(a, true))
    }

    /// A command by hash (hex) or id: `Ok` with its gather once its final
    /// phase is recorded, `Err(true)` while it is in hand, `Err(false)`
    /// when unknown.
    pub(super) fn finished(&self, key: &str) -> Result<&Gather, bool> {
        let is = |a: &&Active| {
            let c = a.gather.command();
            c.hash.to_hex() == key || c.id.as_str() == key
        };
        if self.active.values().any(|a| is(&a)) {
            return Err(true);
        }
        self.finished
            .iter()
            .find(is)
            .map(|a| &a.gather)
            .ok_or(false)
    }

    /// Whether this gateway has a parent (the top has none).
    pub fn has_parent(&self) -> bool {
        self.parent.is_some()
    }

    /// The freeze that holds this gateway as a whole at `now_ms`, and
    /// until when.
    pub fn frozen(&self, now_ms: i64) -> Option<(Hash, i64)> {
        self.frozen.filter(|(_, until)| now_ms < *until)
    }

    /// A command this gateway took: a `freeze` naming it in
    /// `select.agents` freezes it; a `thaw` naming the freeze that holds
    /// it lifts it (PROTOCOL §9).
    fn freeze_or_thaw(&mut self, me: &AgentId, c: &Command) {
        match c.verb {
            Verb::Freeze if c.select.agents.as_ref().is_some_and(|l| l.contains(me)) => {
                info!(hash = %c.hash, until = c.expires_ms, "this gateway is frozen: it relays only thaw and observe");
                self.frozen = Some((c.hash, c.expires_ms));
            }
            Verb::Thaw if self.frozen.is_some_and(|(f, _)| Some(f) == c.thaws) => {
                info!(hash = %c.hash, "this gateway is thawed");
                self.frozen = None;
            }
            _ => {}
        }
    }

    /// Every child breaker that is not closed: child → position.
    pub fn breakers(&mut self) -> Vec<(AgentId, &'static str)> {
        let now = self.origin.elapsed();
        let mut out: Vec<_> = self
            .breakers
            .iter_mut()
            .map(|(id, b)| (id.clone(), b.position(now).as_str()))
            .filter(|(_, p)| *p != "closed")
            .collect();
        out.sort();
        out
    }

    /// An operator's `heal`: closes the breakers of `children`, and every
    /// command in hand that was sent to one of them (an agent) and has no
    /// final answer from it is sent to it again at the next tick, while
    /// before T + window (rather than after its lead plus a round trip).
    /// Returns (breakers closed, resends due).
    pub fn heal(&mut self, children: &[AgentId]) -> (usize, usize) {
        let mut closed = 0;
        for c in children {
            if let Some(b) = self.breakers.get_mut(c) {
                b.reset();
                closed += 1;
            }
        }
        let mut resent = 0;
        for a in self.active.values_mut() {
            let due: Vec<(AgentId, Lead)> = a
                .gather
                .unanswered()
                .filter(|(id, _)| children.contains(id) && !a.gather.is_gateway(id))
                .map(|(id, plan)| (id.clone(), *plan.lead()))
                .collect();
            for (child, lead) in due {
                if schedule::resend_at(a.gather.command(), HEAL_NOW, &lead).is_some() {
                    a.sent.insert(child, (HEAL_NOW, lead));
                    resent += 1;
                }
            }
        }
        (closed, resent)
    }

    pub fn in_hand(&self) -> usize {
        self.active.len()
    }

    /// Deliveries from the parent refused, by reason.
    pub fn refused(&self) -> &BTreeMap<&'static str, u64> {
        &self.refused
    }

    /// This gateway's height (clusters 1, sectors 2, …).
    pub fn height(&self) -> u32 {
        self.height
    }

    fn find_id(&self, issuer: &AgentId, id: &CommandId) -> Option<Hash> {
        self.active
            .values()
            .chain(self.finished.iter())
            .map(|a| a.gather.command())
            .find(|c| c.issuer == *issuer && c.id == *id)
            .map(|c| c.hash)
    }
}

fn summary(a: &Active, children: bool) -> Value {
    let c = a.gather.command();
    let phase = if a.final_recorded {
        Phase::Final
    } else {
        Phase::Window
    };
    let pages = a.gather.result_data(phase);
    let mut o = match pages.first() {
        Some(Value::Object(o)) => o.clone(),
        _ => Object::new(),
    };
    if children {
        o.insert("agents", Value::Array(agent_rows(&a.gather)));
        let all: Vec<Value> = pages
            .iter()
            .filter_map(|p| match p.as_object()?.get("children") {
                Some(Value::Array(items)) => Some(items.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        o.insert("children", Value::Array(all));
    } else {
        o.remove("children");
    }
    let stage = if a.final_recorded {
        "final"
    } else if a.window_recorded {
        "window"
    } else {
        "open"
    };
    o.insert("stage", Value::from(stage));
    o.insert("id", Value::from(c.id.as_str()));
    o.insert("issuer", Value::from(c.issuer.as_str()));
    o.insert("verb", Value::from(c.verb.as_str()));
    o.insert("from", Value::from(a.from.as_str()));
    o.insert("content", c.content.clone());
    Value::Object(o)
}

/// Per agent: outcome, arrival and prediction error, conflict, result.
fn agent_rows(g: &Gather) -> Vec<Value> {
    #[allow(clippy::cast_precision_loss)]
    let int = |n: i64| Value::Number(n as f64);
    g.agents()
        .map(|(id, plan, answer)| {
            let mut o = Object::new();
            o.insert("agent", Value::from(id.as_str()));
            match plan {
                Plan::Send {
                    send_at_ms,
                    predicted_ready_ms,
                    lead,
                } => {
                    o.insert("send_at_ms", int(*send_at_ms));
                    o.insert("lead_ms", int(lead.total_ms()));
                    o.insert("predicted_ready_ms", int(*predicted_ready_ms));
                    if let Some(r) = answer.and_then(|a| a.ready_ms) {
                        o.insert("prediction_error_ms", int(r - predicted_ready_ms));
                    }
                }
                Plan::Skip { reason, lead } => {
                    o.insert("skipped", Value::from(reason.as_str()));
                    o.insert("lead_needed_ms", int(lead.total_ms()));
                }
            }
            if let Some(a) = answer {
                o.insert("state", int(a.state.as_i64()));
                o.insert("received_ms", int(a.received_ms));
                o.insert("ready_ms", a.ready_ms.map_or(Value::Null, int));
                o.insert(
                    "on_time",
                    Value::Bool(a.ready_ms.is_some_and(|r| g.command().on_time(r))),
                );
                if let Some((k, d)) = &a.conflict {
                    o.insert("conflict", Value::from(k.as_str()));
                    o.insert("detail", Value::from(d.as_str()));
                }
                o.insert("result", a.result.clone().unwrap_or(Value::Null));
            }
            Value::Object(o)
        })
        .collect()
}

/// A command's entry read back from the gateway's chain: its event, its
/// time in the top's time (`ts` plus the `clock` offset it carries; §9)
/// and its data.
pub(super) fn entry_data(e: &Entry) -> Option<(String, i64, Value)> {
    let v = json::parse(&e.content, JsonMode::Verify).ok()?;
    let o = v.as_object()?;
    let event = o.get("event")?.as_str()?.to_owned();
    let ts = baton_shared::entry::parse_timestamp(o.get("ts")?.as_str()?)?;
    #[allow(clippy::cast_possible_truncation)]
    let offset = o
        .get("clock")
        .and_then(|c| c.as_object()?.get("offset_ms")?.as_f64())
        .map_or(0, |ms| ms as i64);
    Some((event, ts + offset, o.get("data")?.clone()))
}

impl Ingest {
    /// The `clock` of this gateway's command entries: its offset to its
    /// parent (the top's time), or its own clock at the top.
    pub(super) fn own_clock(&self) -> baton_shared::entry::ClockInfo {
        let has_parent = self.coord().has_parent();
        self.parent_clock.info(has_parent)
    }

    /// The coordination state (the console reads it).
    pub fn coordination(&self) -> Arc<Mutex<Coordination>> {
        Arc::clone(&self.coord)
    }

    pub(super) fn coord(&self) -> MutexGuard<'_, Coordination> {
        self.coord
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An operator's order, issued by this gateway: built, signed with its
    /// key, recorded and planned (PROTOCOL §9). `from` names the operator
    /// channel, as the `command` entry records it.
    pub fn issue(&mut self, now_ms: i64, order: Order, from: &str) -> Result<Issued, IssueError> {
        if self.coord().in_hand() >= MAX_ACTIVE {
            return Err(IssueError::TooMany);
        }
        let me = self.cfg.gateway.clone();
        let id = match order.id {
            Some(id) => id,
            // made from the time: two orders in one millisecond get -2, -3, …
            None => {
                let made = |n: usize| {
                    let id = if n == 1 {
                        format!("c-{now_ms}")
                    } else {
                        format!("c-{now_ms}-{n}")
                    };
                    CommandId::new(id).map_err(|e| IssueError::Id(e.to_string()))
                };
                let mut n = 1;
                let coord = self.coord();
                while coord.find_id(&me, &made(n)?).is_some() {
                    n += 1;
                }
                drop(coord);
                made(n)?
            }
        };
        let draft = Draft {
            issuer: me.clone(),
            id,
            issued_ms: order.read_ms.min(now_ms),
            target_ms: order.target_ms,
            window_ms: order.window_ms,
            expires_ms: order.expires_ms,
            priority: order.priority,
            verb: order.verb,
            payload: order.payload,
            weight: order.weight,
            select: order.select,
            quorum: order.quorum,
        };
        let c = draft.build()?;
        if let Some(h) = self.coord().find_id(&me, &c.id)
            && h != c.hash
        {
            return Err(IssueError::IdReused(c.id.to_string()));
        }
        let origin_sig = command::origin_sig(&self.key, &me, &c.hash);
        Ok(self.take_command(now_ms, c, origin_sig, from, origin_sig))
    }

    /// Records a verified command, selects and plans its children and
    /// queues their deliveries (released after the commit).
    fn take_command(
        &mut self,
        now_ms: i64,
        c: Command,
        origin_sig: Sig,
        from: &str,
        sender_sig: Sig,
    ) -> Issued {
        let data = command::command_data(&c, &origin_sig, from, &sender_sig, now_ms);
        self.stage_own(baton_runtime::unix_ms(), OwnEvent::Command, data);
        let me = self.cfg.gateway.clone();
        self.coord().freeze_or_thaw(&me, &c);
        let gather = self.plan_children(now_ms, &c, &origin_sig, false);
        let counts = gather.counts();
        let issued = Issued {
            hash: c.hash,
            id: c.id.to_string(),
            target_ms: c.target_ms,
            selected: counts.tally.selected,
            sent: counts.sent,
            skipped: counts
                .skipped
                .iter()
                .map(|(r, n)| (r.as_str().to_owned(), *n))
                .collect(),
        };
        info!(hash = %c.hash, id = %c.id, verb = c.verb.as_str(), selected = issued.selected, sent = issued.sent, "command taken");
        let mut coord = self.coord();
        coord.staged.push(c.hash);
        if coord.parent.is_none() && gather.gateway_children() > 0 {
            coord.trails.insert(c.hash, Trail::default());
        }
        coord.active.insert(
            c.hash,
            Active {
                gather,
                origin_sig,
                from: from.to_owned(),
                recorded_ms: now_ms,
                sent: HashMap::new(),
                window_recorded: false,
                final_recorded: false,
                // an operator's own command answers nobody above
                up: !from.starts_with("operator/"),
                last_result: None,
                urgent: false,
                urgent_sent: 0,
            },
        );
        drop(coord);
        issued
    }

    /// This cluster's agents that `c` selects, each planned (sent at its
    /// time, or skipped with its reason), their deliveries queued.
    /// `resumed`: sent again at once to every match (after a restart the
    /// measurements are gone and the agents answer a known hash from
    /// their records).
    fn plan_children(
        &mut self,
        now_ms: i64,
        c: &Command,
        origin_sig: &Sig,
        resumed: bool,
    ) -> Gather {
        let mut gather = Gather::new(c.clone());
        // (the spacing of one command's sends, [`schedule::pace`], is the
        // registry's: the subtree lead it reports holds the same burst)
        let (mut matches, mode, spacing_ms) = {
            let r = self.registry();
            (r.coordinated(), r.own_summary().mode, r.send_spacing_ms())
        };
        let cluster = self.cfg.cluster.clone();
        matches.retain(|a| {
            c.select.matches(&command::Candidate {
                agent: &a.agent,
                cluster: &cluster,
                capabilities: &a.capabilities,
                class: a.class.as_deref(),
            })
        });
        // `sample`: at most this many, lowest impedance first, ties by id.
        if let Some(n) = c.select.sample {
            matches.sort_by(|a, b| {
                let z = |x: &crate::registry::Coordinated| x.impedance_ms.unwrap_or(f64::INFINITY);
                z(a).total_cmp(&z(b)).then_with(|| a.agent.cmp(&b.agent))
            });
            matches.truncate(usize::try_from(n).unwrap_or(usize::MAX));
        }
        let gateways = self.gateway_children(c);
        let mut coord = self.coord();
        let now = coord.origin.elapsed();
        // frozen as a whole: only thaw and observe are relayed
        let frozen = coord.frozen(now_ms).is_some();
        let held = frozen && !c.verb.passes_freeze();
        // after a restart every match is sent again at once (or, frozen as
        // a whole, skipped); `None` once the command has expired
        let resumed_plan = |measured: &Measured| -> Option<Plan> {
            if now_ms >= c.expires_ms {
                return None;
            }
            let lead = Lead::of(measured, c.weight);
            Some(if held {
                Plan::Skip {
                    reason: schedule::SkipReason::Frozen,
                    lead,
                }
            } else {
                Plan::Send {
                    send_at_ms: now_ms,
                    lead,
                    predicted_ready_ms: c.target_ms - lead.margin_whole_ms(),
                }
            })
        };
        let cfg = coord.breaker_cfg;
        let mut planned = Vec::with_capacity(gateways.len() + matches.len());
        for g in gateways {
            let measured = Measured {
                rtt_ms: 0.0,
                processing_ms: 0.0,
                queue_depth: 0,
                drift: 0.0,
                subtree_lead_ms: Some(g.lead_ms),
            };
            let breaker = coord
                .breakers
                .entry(g.gateway.clone())
                .or_insert_with(|| Breaker::new(cfg));
            let plan = if resumed {
                let Some(plan) = resumed_plan(&measured) else {
                    continue;
                };
                plan
            } else {
                let cond = Condition {
                    offline: false,
                    quarantined: false,
                    frozen,
                    breaker_open: !breaker.try_send(now),
                };
                schedule::plan(c, now_ms, &measured, cond, mode)
            };
            let to = topic::agent(&g.cluster, &g.gateway, Kind::Cmd);
            planned.push((
                g.gateway,
                ChildKind::Gateway {
                    matching: g.matching,
                },
                plan,
                to,
            ));
        }
        for a in matches {
            let measured = a.measured.unwrap_or(Measured {
                rtt_ms: 0.0,
                processing_ms: 0.0,
                queue_depth: 0,
                drift: 0.0,
                subtree_lead_ms: None,
            });
            let plan = if resumed {
                let Some(plan) = resumed_plan(&measured) else {
                    continue;
                };
                plan
            } else {
                let breaker = coord
                    .breakers
                    .entry(a.agent.clone())
                    .or_insert_with(|| Breaker::new(cfg));
                let cond = Condition {
                    offline: a.state == AgentState::Offline,
                    quarantined: a.state == AgentState::Quarantined,
                    frozen,
                    breaker_open: !breaker.try_send(now),
                };
                schedule::plan(c, now_ms, &measured, cond, mode)
            };
            let to = topic::agent(&cluster, &a.agent, Kind::Cmd);
            planned.push((a.agent, ChildKind::Agent, plan, to));
        }
        if !resumed {
            let mut plans: Vec<Plan> = planned.iter().map(|p| p.2).collect();
            schedule::pace(&mut plans, spacing_ms, now_ms);
            for (p, paced) in planned.iter_mut().zip(plans) {
                p.2 = paced;
            }
        }
        for (child, kind, plan, to) in planned {
            if let Plan::Send {
                send_at_ms, lead, ..
            } = plan
            {
                coord.deliveries.push(Scheduled {
                    at_ms: send_at_ms,
                    topic: to,
                    payload: self.delivery(c, origin_sig, &child, send_at_ms, &lead),
                });
            }
            gather.planned(child, kind, plan);
        }
        gather
    }

    /// The thresholds of every child's circuit breaker, the trail check's
    /// grace, and how far apart one command's deliveries leave.
    pub fn set_coordination_config(
        &mut self,
        breaker: BreakerConfig,
        trail_grace: Duration,
        send_spacing: Duration,
    ) {
        let mut coord = self.coord();
        coord.breaker_cfg = breaker;
        coord.trail_grace_ms = i64::try_from(trail_grace.as_millis()).unwrap_or(i64::MAX);
        drop(coord);
        self.registry().set_send_spacing(send_spacing);
    }

    /// This gateway has a parent: deliveries from it verify under `key`,
    /// and commands are relayed if their issuer is one of `issuer_keys`
    /// (none: only those the parent issued itself).
    pub fn set_parent(&mut self, key: PublicKey, issuer_keys: Vec<PublicKey>) {
        self.coord().parent = Some((key, issuer_keys));
    }

    fn refuse_delivery(&mut self, now: Duration, why: &'static str, detail: &str) {
        *self.coord().refused.entry(why).or_default() += 1;
        self.bad(
            now,
            "parent",
            BadInput::Forged,
            &format!("command delivery refused ({why}): {detail}"),
        );
    }

    /// A delivery from the parent (PROTOCOL §9, accepting a delivery):
    /// checks (a)–(c) under the parent's key and the issuer keys, then
    /// taken like an operator's command — recorded, planned, sent — and
    /// its phases answered up. A known hash is answered from what was
    /// recorded; anything failing a check is counted and dropped.
    pub fn relay(&mut self, now: Duration, payload: &[u8]) {
        let d = match CommandDelivery::decode(payload) {
            Ok(d) => d,
            Err(e) => return self.refuse_delivery(now, "undecodable", &e.to_string()),
        };
        let Some((parent_key, issuer_keys)) = self.coord().parent.clone() else {
            return self.refuse_delivery(now, "no_parent", "this gateway has no parent");
        };
        let own_only = issuer_keys.is_empty();
        let issuers = if own_only {
            vec![parent_key]
        } else {
            issuer_keys
        };
        let me = self.cfg.gateway.clone();
        let c = match command::accept(&d.presented(), &me, &parent_key, &issuers) {
            Ok(c) => c,
            Err(e) => return self.refuse_delivery(now, e.as_str(), &e.to_string()),
        };
        if own_only && d.issuer != d.sender {
            return self.refuse_delivery(
                now,
                "issuer",
                "without issuer_keys only the parent's own commands are relayed",
            );
        }
        {
            let mut coord = self.coord();
            let known = coord
                .active
                .get(&c.hash)
                .or_else(|| {
                    coord
                        .finished
                        .iter()
                        .find(|a| a.gather.command().hash == c.hash)
                })
                .map(|a| a.last_result.clone());
            if let Some(last) = known {
                // answered from what was recorded; nothing planned again
                coord.up_replies.extend(last);
                return;
            }
        }
        let now_ms = self.parent_clock.now_ms();
        if now_ms >= c.expires_ms {
            return self.refuse_delivery(now, "expired", "received after the command expired");
        }
        let from = d.sender.to_string();
        self.take_command(now_ms, c, d.origin_sig, &from, d.sender_sig);
    }

    /// `command_result` entries to answer the parent with (after the
    /// commit that made them durable): each as a `cmd/reply` payload.
    pub fn take_parent_replies(&mut self) -> Vec<Vec<u8>> {
        let me = self.cfg.gateway.clone();
        std::mem::take(&mut self.coord().up_replies)
            .into_iter()
            .map(|entry| {
                CommandReply {
                    agent: me.clone(),
                    entry,
                }
                .encode()
            })
            .collect()
    }

    /// This gateway's height (PROTOCOL §9: clusters 1, sectors 2, …): one
    /// more than its tallest child gateway, whose summary says whether it
    /// rolls up clusters of its own.
    fn height(&self) -> u32 {
        if self.children.is_empty() {
            return 1;
        }
        let reg = self.registry();
        let tallest = self
            .children
            .keys()
            .map(|c| match reg.children().get(c.as_str()) {
                Some(s) if s.summary.clusters.is_some() => 2,
                _ => 1,
            })
            .max()
            .unwrap_or(1);
        1 + tallest
    }

    /// A delivery of `c` to `recipient`, signed by this gateway.
    fn delivery(
        &self,
        c: &Command,
        origin_sig: &Sig,
        recipient: &AgentId,
        sent_ms: i64,
        lead: &Lead,
    ) -> Vec<u8> {
        let me = &self.cfg.gateway;
        CommandDelivery {
            content: c.canonical.clone(),
            issuer: c.issuer.clone(),
            origin_sig: *origin_sig,
            sender: me.clone(),
            recipient: recipient.clone(),
            sender_sig: command::sender_sig(&self.key, me, recipient, &c.hash),
            sent_ms,
            lead_ms: u64::try_from(lead.total_ms()).unwrap_or(0),
        }
        .encode()
    }

    /// This gateway's child gateways, as `c` reaches them: every child is
    /// sent it (each selects its own agents) unless `select.agents` names
    /// none behind it; `matching` is what the parent knows of the agents
    /// behind it (PROTOCOL §9: its `selected` is at least this).
    fn gateway_children(&self, c: &Command) -> Vec<GatewayChild> {
        let summaries = self.registry().children().clone();
        let sel = &c.select;
        let narrowed = sel.capabilities.is_some() || sel.classes.is_some() || sel.sample.is_some();
        self.children
            .iter()
            .filter_map(|(cluster, gw)| {
                let summary = summaries.get(cluster.as_str());
                let behind = |a: &AgentId| self.routes.get(a).is_some_and(|(_, via)| via == gw);
                let matching = match &sel.agents {
                    Some(named) => {
                        let n = named.iter().filter(|a| behind(a)).count() as u64;
                        if n == 0 && !named.contains(gw) {
                            return None;
                        }
                        if narrowed { 0 } else { n }
                    }
                    None if narrowed => 0,
                    None => match &sel.clusters {
                        Some(l) if !l.contains(cluster) => 0,
                        _ => summary.map_or(0, |s| s.summary.agents as u64),
                    },
                };
                Some(GatewayChild {
                    cluster: cluster.clone(),
                    gateway: gw.clone(),
                    matching,
                    lead_ms: summary
                        .and_then(|s| s.summary.subtree_lead_ms)
                        .unwrap_or(crate::registry::RELAY_MS),
                })
            })
            .collect()
    }

    /// Deliveries whose `command` entries are now durable: the caller
    /// hands them to the dispatcher (after a successful commit only).
    pub fn take_deliveries(&mut self) -> Vec<Scheduled> {
        let mut coord = self.coord();
        coord.staged.clear();
        std::mem::take(&mut coord.deliveries)
    }

    /// A failed commit: the commands it carried were never recorded, so
    /// they are forgotten and nothing of them is sent.
    pub(super) fn forget_uncommitted_commands(&mut self) {
        let mut coord = self.coord();
        let staged = std::mem::take(&mut coord.staged);
        for h in staged {
            coord.active.remove(&h);
            // a freeze that never became durable holds nothing
            if coord.frozen.is_some_and(|(f, _)| f == h) {
                coord.frozen = None;
            }
        }
        coord.deliveries.clear();
    }

    /// An answer on `cmd/reply`: counted only if its entry is one of
    /// `agent`'s chain, signed under its enrolled key (PROTOCOL §9).
    pub(super) fn cmd_reply(
        &mut self,
        now: Duration,
        agent: &AgentId,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        let Some(reply) = self.decode(now, agent, payload, |m: &CommandReply| &m.agent) else {
            return Ok(());
        };
        let Some(record) = self.record(agent)? else {
            self.bad(now, agent.as_str(), BadInput::UnknownAgent, "cmd/reply");
            return Ok(());
        };
        let Some(key) = record.key() else {
            self.bad(
                now,
                agent.as_str(),
                BadInput::UnknownAgent,
                "cmd/reply without a key",
            );
            return Ok(());
        };
        let e = &reply.entry;
        let header = e.header().ok().filter(|h| h.agent == *agent);
        let signed = header.as_ref().is_some_and(|h| {
            e.hash == chain_hash(&e.content, &e.prev)
                && e.sig
                    .is_some_and(|s| key.verify_checkpoint(agent, h.seq, &e.hash, &s))
        });
        let Some(h) = header.filter(|_| signed) else {
            self.bad(
                now,
                agent.as_str(),
                BadInput::Forged,
                "cmd/reply entry does not verify",
            );
            return Ok(());
        };
        self.take_answer(agent, h.seq, e);
        Ok(())
    }

    /// An authenticated `command_ack` entry of `agent`: counted where it
    /// answers a command in hand.
    fn take_answer(&mut self, agent: &AgentId, seq: Seq, e: &Entry) {
        let Some((event, _, data)) = entry_data(e) else {
            return;
        };
        if event == "command_result" {
            let Some((hash, counts)) = baton_shared::gather::read_result(&data) else {
                return;
            };
            let mut coord = self.coord();
            let now = coord.origin.elapsed();
            let Some(active) = coord.active.get_mut(&hash) else {
                return;
            };
            let first = active.gather.silent().any(|c| c == agent);
            // a child's result before its window phase is due carries a
            // conflict that went up at once: it goes on up at once too
            let early = counts.phase == Some(Phase::Window)
                && counts.conflicts.iter().any(|(_, k)| goes_up_at_once(*k));
            let accepted = active
                .gather
                .gateway_result(agent, seq, e.hash, counts)
                .is_ok();
            if accepted && early && !active.window_recorded {
                active.urgent = true;
            }
            if accepted
                && first
                && let Some(b) = coord.breakers.get_mut(agent)
            {
                b.record(now, false);
            }
            return;
        }
        if event != "command_ack" {
            return;
        }
        let Ok(answer) = command::Answer::from_data(&data) else {
            return;
        };
        let state = answer.state;
        let kind = answer.conflict.as_ref().map(|(k, _)| *k);
        let mut coord = self.coord();
        let now = coord.origin.elapsed();
        let Some(active) = coord.active.get_mut(&answer.hash) else {
            return;
        };
        let accepted = active
            .gather
            .agent_answer(agent, seq, e.hash, answer)
            .is_ok();
        if accepted && kind.is_some_and(goes_up_at_once) {
            active.urgent = true;
        }
        if accepted && state.is_final() {
            let failed = is_failure(Some((state, kind)));
            if let Some(b) = coord.breakers.get_mut(agent) {
                b.record(now, failed);
            }
        }
    }

    /// Answers found in chains just committed (suppressing `cmd/reply`
    /// cannot hide an answer): read only for agents a command in hand
    /// waits on.
    pub fn gather_from_chains(&mut self, committed: &[Committed]) {
        let (waiting, trailed): (Vec<&Committed>, Vec<(&Committed, AgentId)>) = {
            let coord = self.coord();
            if coord.active.is_empty() && coord.trails.is_empty() {
                return;
            }
            let waiting = committed
                .iter()
                .filter(|c| coord.active.values().any(|a| a.gather.awaits(&c.agent)))
                .collect();
            // the top follows every answer behind its child gateways, to
            // check their counts against the chains (the trail check)
            let top = coord.parent.is_none();
            let trailed = committed
                .iter()
                .filter(|_| top)
                .filter_map(|c| {
                    let (_, via) = self.routes.get(&c.agent)?;
                    (*via != c.agent).then(|| (c, via.clone()))
                })
                .collect();
            (waiting, trailed)
        };
        for c in waiting {
            for (seq, e) in self.committed_entries(c) {
                self.take_answer(&c.agent, seq, &e);
            }
        }
        for (c, via) in trailed {
            for (_, e) in self.committed_entries(c) {
                // most entries are not answers: skip them unparsed
                if !contains(&e.content, br#""event":"command_ack""#) {
                    continue;
                }
                let Some((_, _, data)) = entry_data(&e) else {
                    continue;
                };
                let Ok(a) = command::Answer::from_data(&data) else {
                    continue;
                };
                let mut coord = self.coord();
                if let Some(t) = coord.trails.get_mut(&a.hash)
                    && a.state.is_final()
                {
                    t.found.insert(c.agent.clone(), (via.clone(), a.state));
                }
            }
        }
    }

    fn committed_entries(&self, c: &Committed) -> Vec<(Seq, Entry)> {
        let n = usize::try_from(c.last.0 - c.first.0 + 1).unwrap_or(usize::MAX);
        self.store.range(&c.agent, c.first, n).unwrap_or_else(|e| {
            warn!(agent = %c.agent, error = %e, "reading committed entries for command answers");
            Vec::new()
        })
    }

    /// The trail check (PROTOCOL §9): once a command is final at the top,
    /// each child gateway's READY count must be matched by READY answers
    /// in the chains of the agents behind it; chains may still be on their
    /// way, so a shortfall is alerted only after the grace
    /// ([`Ingest::set_coordination_config`]).
    fn check_trails(&mut self, now_ms: i64) {
        let mut alerts = Vec::new();
        {
            let mut coord = self.coord();
            let grace = coord.trail_grace_ms;
            coord.trails.retain(|hash, t| {
                let Some(due) = t.due_ms else {
                    return true;
                };
                let short: Vec<(AgentId, u64, u64)> = t
                    .reported
                    .iter()
                    .filter_map(|(child, reported)| {
                        let found = t
                            .found
                            .values()
                            .filter(|(via, s)| via == child && *s == State::Ready)
                            .count() as u64;
                        (found < *reported).then(|| (child.clone(), *reported, found))
                    })
                    .collect();
                if short.is_empty() {
                    return false;
                }
                if now_ms < due + grace {
                    return true;
                }
                for (child, reported, found) in short {
                    alerts.push((*hash, child, reported, found));
                }
                false
            });
        }
        let me = self.cfg.gateway.clone();
        for (hash, child, reported, found) in alerts {
            let detail = format!(
                "command {hash}: {child} reported {reported} READY; the chains behind it hold {found}"
            );
            warn!(%child, %hash, reported, found, "command trail mismatch");
            let data =
                crate::own_chain::child_alert_data("command_trail_mismatch", &me, &child, &detail);
            self.stage_own(baton_runtime::unix_ms(), OwnEvent::Alert, data);
        }
    }

    /// Resends to children that have not answered (each after its lead
    /// plus one round trip, until T + window), and the `command_result`
    /// phases that fell due (PROTOCOL §9); called every liveness tick.
    pub fn stage_coordination(&mut self, now_ms: i64) {
        let height = self.height();
        self.coord().height = height;
        let mut results: Vec<(Hash, bool, Value)> = Vec::new();
        let mut resend: Vec<(Command, Sig, AgentId, Lead)> = Vec::new();
        let mut urgent: Vec<(Hash, Vec<(AgentId, command::ConflictKind)>)> = Vec::new();
        {
            let mut coord = self.coord();
            let coord = &mut *coord;
            let now = coord.origin.elapsed();
            // half-open breakers whose probes all went well close in time
            for b in coord.breakers.values_mut() {
                b.tick(now);
            }
            let mut done = Vec::new();
            for (hash, a) in &mut coord.active {
                let c = a.gather.command().clone();
                // agents that have not answered, each after its lead plus
                // one round trip (a child gateway answers at its window
                // phase; QoS 1 carries its delivery)
                let mut again = Vec::new();
                for (child, plan) in a.gather.unanswered() {
                    let Plan::Send {
                        send_at_ms, lead, ..
                    } = plan
                    else {
                        continue;
                    };
                    if a.gather.is_gateway(child) {
                        continue;
                    }
                    let (last, lead) = a.sent.get(child).copied().unwrap_or((*send_at_ms, *lead));
                    if let Some(at) = schedule::resend_at(&c, last, &lead)
                        && at <= now_ms
                    {
                        again.push((child.clone(), lead));
                    }
                }
                for (child, lead) in again {
                    a.sent.insert(child.clone(), (now_ms, lead));
                    resend.push((c.clone(), a.origin_sig, child, lead));
                }
                // a conflict of priority 3: its results go up at once (a
                // window-phase entry ahead of time; the parent counts the
                // latest); at the top it is an alert to the operator
                if a.urgent && !a.window_recorded {
                    a.urgent = false;
                    let mut conflicts = a.gather.counts().conflicts;
                    conflicts.retain(|(_, k)| goes_up_at_once(*k));
                    if conflicts.len() > a.urgent_sent {
                        a.urgent_sent = conflicts.len();
                        if a.up {
                            info!(hash = %c.hash, "a conflict of priority 3: results go up at once");
                            let pages = a.gather.result_data(Phase::Window);
                            results.extend(pages.into_iter().map(|d| (*hash, true, d)));
                        } else {
                            urgent.push((c.hash, conflicts));
                        }
                    }
                }
                if !a.window_recorded && now_ms >= Phase::Window.due_ms(&c, height) {
                    a.window_recorded = true;
                    // every child silent by T + window is a failure
                    for child in a.gather.silent() {
                        if let Some(b) = coord.breakers.get_mut(child) {
                            b.record(now, true);
                        }
                    }
                    let up = a.up;
                    results.extend(
                        a.gather
                            .result_data(Phase::Window)
                            .into_iter()
                            .map(|d| (*hash, up, d)),
                    );
                }
                if !a.final_recorded && now_ms >= Phase::Final.due_ms(&c, height) {
                    a.final_recorded = true;
                    let up = a.up;
                    results.extend(
                        a.gather
                            .result_data(Phase::Final)
                            .into_iter()
                            .map(|d| (*hash, up, d)),
                    );
                    done.push(*hash);
                    if let Some(t) = coord.trails.get_mut(hash) {
                        t.due_ms = Some(now_ms);
                        t.reported = a
                            .gather
                            .gateway_answers()
                            .map(|(child, counts)| (child.clone(), counts.tally.ready))
                            .collect();
                    }
                }
            }
            for h in done {
                if let Some(a) = coord.active.remove(&h) {
                    coord.finished.push_front(a);
                    coord.finished.truncate(FINISHED_KEPT);
                }
            }
        }
        self.check_trails(now_ms);
        let me = self.cfg.gateway.clone();
        for (hash, conflicts) in urgent {
            let urgent: Vec<String> = conflicts
                .iter()
                .map(|(agent, k)| format!("{agent} {}", k.as_str()))
                .collect();
            let detail = format!(
                "command {hash}: conflicts of priority 3: {}",
                urgent.join(", ")
            );
            warn!(%hash, "{detail}");
            let data = crate::own_chain::alert_data("command_conflict", &me, &detail);
            self.stage_own(baton_runtime::unix_ms(), OwnEvent::Alert, data);
        }
        let cluster = self.cfg.cluster.clone();
        for (c, origin_sig, child, lead) in resend {
            let payload = self.delivery(&c, &origin_sig, &child, now_ms, &lead);
            self.coord().deliveries.push(Scheduled {
                at_ms: now_ms,
                topic: topic::agent(&cluster, &child, Kind::Cmd),
                payload,
            });
        }
        for (hash, up, data) in results {
            let entry =
                self.stage_own_entry(baton_runtime::unix_ms(), OwnEvent::CommandResult, data);
            let mut coord = self.coord();
            if let Some(e) = entry {
                if up {
                    coord.up_replies.push(e.clone());
                }
                let coord = &mut *coord;
                let held = match coord.active.get_mut(&hash) {
                    Some(a) => Some(a),
                    None => coord
                        .finished
                        .iter_mut()
                        .find(|a| a.gather.command().hash == hash),
                };
                if let Some(a) = held {
                    a.last_result = Some(e);
                }
            }
        }
    }

    /// At start: every command recorded in the gateway's chain within the
    /// longest lifetime without a final `command_result` is taken up again
    /// (PROTOCOL §9, restarts).
    pub(super) fn resume_commands(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let me = self.cfg.gateway.clone();
        let head = self.own.head().seq;
        let oldest_ms = now_ms - command::MAX_LIFETIME_MS - 3_600_000;
        let mut commands: Vec<(Command, Sig, String, i64)> = Vec::new();
        // per command: the latest window-phase result (top's time; an
        // early one, sent up for a priority-3 conflict, precedes the
        // phase's due time) and whether its final phase was recorded
        let mut phases: HashMap<Hash, (Option<i64>, bool)> = HashMap::new();
        let mut to = head.0;
        'scan: while to >= 1 {
            let from = to.saturating_sub(999).max(1);
            let chunk = self.store.range(
                &me,
                Seq(from),
                usize::try_from(to - from + 1).unwrap_or(1000),
            )?;
            for (_, e) in chunk.iter().rev() {
                let Some((event, ts, data)) = entry_data(e) else {
                    continue;
                };
                if ts < oldest_ms {
                    break 'scan;
                }
                let o = data.as_object();
                match event.as_str() {
                    "command" => {
                        let parsed = o.and_then(|o| {
                            let c = Command::from_content(o.get("content")?.clone()).ok()?;
                            let sig = Sig::from_hex(o.get("origin_sig")?.as_str()?).ok()?;
                            let from = o.get("from")?.as_str()?.to_owned();
                            #[allow(clippy::cast_possible_truncation)]
                            let at = o.get("received_ms")?.as_f64()? as i64;
                            Some((c, sig, from, at))
                        });
                        if let Some(p) = parsed {
                            commands.push(p);
                        }
                    }
                    "command_result" => {
                        let Some((h, phase)) = o.and_then(|o| {
                            let h = Hash::from_hex(o.get("hash")?.as_str()?).ok()?;
                            Some((h, o.get("phase")?.as_str()?.to_owned()))
                        }) else {
                            continue;
                        };
                        let p = phases.entry(h).or_default();
                        match phase.as_str() {
                            "window" => p.0 = p.0.max(Some(ts)),
                            "final" => p.1 = true,
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            if from == 1 {
                break;
            }
            to = from - 1;
        }
        // the frozen state first, from every freeze and thaw in order
        for (c, ..) in commands.iter().rev() {
            self.coord().freeze_or_thaw(&me, c);
        }
        let height = self.height();
        for (c, origin_sig, from, recorded_ms) in commands.into_iter().rev() {
            let (window_at, fin) = phases.get(&c.hash).copied().unwrap_or_default();
            if fin {
                continue;
            }
            // only a result recorded at its due time is the window phase
            // itself; after an early one it is still to be recorded
            let window = window_at.is_some_and(|at| at >= Phase::Window.due_ms(&c, height));
            info!(hash = %c.hash, id = %c.id, "resuming a command a restart interrupted");
            let gather = self.plan_children(now_ms, &c, &origin_sig, true);
            let up = !from.starts_with("operator/");
            self.coord().active.insert(
                c.hash,
                Active {
                    gather,
                    origin_sig,
                    from,
                    recorded_ms,
                    sent: HashMap::new(),
                    window_recorded: window,
                    final_recorded: false,
                    up,
                    last_result: None,
                    urgent: false,
                    urgent_sent: 0,
                },
            );
        }
        Ok(())
    }
}
