//! The live registry: what the gateway knows right now about each enrolled
//! agent — its last heartbeat, presence (`state` messages and last wills),
//! phi-accrual suspicion, clock offset, impedance baseline — and the state
//! an operator sees, from `baton-shared`'s [`liveness`] rules. It is memory
//! only: after a restart every agent is `offline` until it is heard again.
//! State changes are returned to the caller, which records them in the
//! gateway's own chain.
//!
//! [`liveness`]: baton_shared::liveness

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use baton_shared::AgentId;
use baton_shared::json::{Object, Value};
use baton_shared::liveness::{
    AgentState, Baseline, PhiDetector, Presence, Signals, Thresholds, classify,
};
use baton_shared::schedule::{Lead, Measured};
use baton_shared::summary::{Member, Summary};
use baton_shared::wire::{Heartbeat, PresenceState, StateMsg};

/// One agent's live record.
#[derive(Debug, Clone)]
struct Live {
    detector: PhiDetector,
    presence: Presence,
    /// `connect_ms` of the session the presence belongs to.
    session_ms: i64,
    last: Option<Heartbeat>,
    last_seen_ms: Option<i64>,
    /// Gateway clock − agent clock: the agent's own estimate when synced,
    /// else the heartbeat's receive time − send time (one-way latency
    /// included: ample for a 2 s band).
    offset_ms: Option<i64>,
    baseline: Baseline,
    quarantined: bool,
    state: AgentState,
    reason: String,
    since_ms: i64,
    /// The last [`HISTORY`] heartbeats' impedance: (unix ms, ms).
    history: std::collections::VecDeque<(i64, f32)>,
}

/// Heartbeats of impedance history kept per agent (the console's chart):
/// five minutes at the default 5 s, 480 bytes an agent.
pub const HISTORY: usize = 60;

impl Live {
    fn new(unix_ms: i64, quarantined: bool) -> Live {
        Live {
            detector: PhiDetector::new(Duration::from_secs(5)),
            presence: Presence::Unknown,
            session_ms: i64::MIN,
            last: None,
            last_seen_ms: None,
            offset_ms: None,
            baseline: Baseline::default(),
            quarantined,
            state: AgentState::Offline,
            reason: "no heartbeat since the gateway started".into(),
            since_ms: unix_ms,
            history: std::collections::VecDeque::new(),
        }
    }

    fn signals(&self, now: Duration) -> Signals {
        let hb = self.last.as_ref();
        Signals {
            quarantined: self.quarantined,
            presence: self.presence,
            heard: hb.is_some(),
            phi: self.detector.phi(now),
            clock_offset_ms: self.offset_ms,
            impedance_ms: hb.map(|h| h.impedance.impedance_ms()),
            baseline_ms: self.baseline.get(),
            temp_c: hb.and_then(|h| h.system.temp_c),
            throttled: hb.and_then(|h| h.system.throttled),
        }
    }
}

/// A state change to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub agent: AgentId,
    pub from: AgentState,
    pub to: AgentState,
    pub reason: String,
}

impl Change {
    /// The `agent_state` entry's data.
    pub fn to_value(&self) -> Value {
        let mut d = Object::new();
        d.insert("agent", Value::from(self.agent.as_str()));
        d.insert("from", Value::from(self.from.as_str()));
        d.insert("to", Value::from(self.to.as_str()));
        d.insert("reason", Value::from(self.reason.as_str()));
        Value::Object(d)
    }
}

/// Every enrolled agent's live record.
#[derive(Debug)]
pub struct Registry {
    agents: HashMap<AgentId, Live>,
    thresholds: Thresholds,
    /// This gateway's cluster (names its own agents in a roll-up).
    cluster: String,
    /// Child clusters' latest summaries (from their forwarded chains):
    /// cluster → (summary, its `at_ms`, the child gateway).
    children: BTreeMap<String, ChildSummary>,
    /// The least time between two deliveries of one command (ms): a
    /// command to all of its agents takes this long per agent to leave.
    send_spacing_ms: f64,
}

/// One agent as coordination sees it ([`Registry::coordinated`]).
#[derive(Debug, Clone)]
pub struct Coordinated {
    pub agent: AgentId,
    pub state: AgentState,
    pub capabilities: Vec<String>,
    pub class: Option<String>,
    pub impedance_ms: Option<f64>,
    pub measured: Option<Measured>,
}

/// A child cluster's latest `cluster_summary`, as its gateway wrote it.
#[derive(Debug, Clone)]
pub struct ChildSummary {
    pub summary: Summary,
    pub at_ms: i64,
    pub gateway: AgentId,
}

/// A gateway's own time to relay a command to its children (verify it,
/// make its `command` entry durable, plan): added to the subtree lead its
/// parent schedules with. A group commit on this class of disk takes
/// 2–20 ms; 50 ms leaves room for a busy ingest thread.
pub const RELAY_MS: f64 = 50.0;

/// Heartbeat intervals an agent may announce.
const MIN_INTERVAL_MS: u32 = 100;
const MAX_INTERVAL_MS: u32 = 3_600_000;
/// How far ahead of the agent's known clock a session may start.
const FUTURE_SLACK_MS: i64 = 60_000;

/// An agent's figures the console's list filters and sorts by.
#[derive(Debug, Clone, Copy)]
pub struct ListFacts {
    pub state: AgentState,
    pub impedance_ms: Option<f64>,
    pub last_seen_ms: Option<i64>,
    pub backlog: Option<u64>,
    pub clock_offset_ms: Option<i64>,
}

impl Registry {
    pub fn new(thresholds: Thresholds) -> Registry {
        Registry {
            agents: HashMap::new(),
            thresholds,
            cluster: String::new(),
            children: BTreeMap::new(),
            send_spacing_ms: crate::config::DEFAULT_SEND_SPACING.as_secs_f64() * 1000.0,
        }
    }

    /// How far apart this gateway sends one command's deliveries
    /// (`command_send_spacing`): part of the lead it reports up.
    pub fn set_send_spacing(&mut self, spacing: std::time::Duration) {
        self.send_spacing_ms = spacing.as_secs_f64() * 1000.0;
    }

    /// The least time between two deliveries of one command, ms.
    pub fn send_spacing_ms(&self) -> f64 {
        self.send_spacing_ms
    }

    /// Names this gateway's own cluster (in roll-ups).
    pub fn with_cluster(mut self, cluster: &str) -> Registry {
        cluster.clone_into(&mut self.cluster);
        self
    }

    /// A child gateway's `cluster_summary` arrived (newer ones win).
    pub fn child_summary(&mut self, cluster: String, child: ChildSummary) {
        let newer = self
            .children
            .get(&cluster)
            .is_none_or(|c| c.at_ms <= child.at_ms);
        if newer {
            self.children.insert(cluster, child);
        }
    }

    /// The child clusters' latest summaries, by cluster.
    pub fn children(&self) -> &BTreeMap<String, ChildSummary> {
        &self.children
    }

    /// An enrolled agent (at start, or enrolled since).
    pub fn enroll(&mut self, agent: &AgentId, unix_ms: i64, quarantined: bool) {
        self.agents
            .entry(agent.clone())
            .or_insert_with(|| Live::new(unix_ms, quarantined))
            .quarantined |= quarantined;
    }

    /// Unenrolled: no longer judged or counted.
    pub fn remove(&mut self, agent: &AgentId) {
        self.agents.remove(agent);
    }

    /// Its chain halted (a fork): nothing more is accepted from it.
    pub fn quarantine(&mut self, agent: &AgentId, unix_ms: i64) {
        self.enroll(agent, unix_ms, true);
    }

    /// A heartbeat of an enrolled agent arrived (false: not enrolled).
    pub fn heartbeat(&mut self, now: Duration, unix_ms: i64, hb: Heartbeat) -> bool {
        let Some(live) = self.agents.get_mut(&hb.agent) else {
            return false;
        };
        live.detector
            .announce(Duration::from_millis(u64::from(hb.interval_ms.max(100))));
        live.detector.heartbeat(now);
        live.last_seen_ms = Some(unix_ms);
        // A heartbeat is only sent while connected: whatever presence
        // message is late or lost, the agent is there.
        live.presence = Presence::Online;
        live.offset_ms = Some(match hb.clock {
            Some(c) if c.synced => c.offset_ms,
            _ => unix_ms.saturating_sub(hb.sent_ms),
        });
        live.baseline.add(hb.impedance.impedance_ms());
        if live.history.len() == HISTORY {
            live.history.pop_front();
        }
        #[allow(clippy::cast_possible_truncation)]
        live.history
            .push_back((unix_ms, hb.impedance.impedance_ms() as f32));
        live.last = Some(hb);
        true
    }

    /// An agent's recent impedance, oldest first: `[[unix ms, ms], …]`.
    pub fn impedance_history(&self, agent: &AgentId) -> Option<Value> {
        let l = self.agents.get(agent)?;
        #[allow(clippy::cast_precision_loss)]
        let points = l
            .history
            .iter()
            .map(|(t, z)| {
                Value::Array(vec![
                    Value::Number(*t as f64),
                    Value::Number((f64::from(*z) * 10.0).round() / 10.0),
                ])
            })
            .collect();
        Some(Value::Array(points))
    }

    /// Whether a heartbeat is one an agent could send: its interval within
    /// 100 ms – 1 h (a forged "I beat once an hour" would keep a dead agent
    /// from ever being suspected).
    pub fn plausible_heartbeat(hb: &Heartbeat) -> Result<(), &'static str> {
        if (MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&hb.interval_ms) {
            Ok(())
        } else {
            Err("heartbeat interval outside 100 ms – 1 h")
        }
    }

    /// Whether a `state` could be the agent's at `unix_ms`: a session
    /// cannot start in the agent's future — its clock as this gateway
    /// knows it (the offset from its heartbeats), with a minute's slack.
    /// A `state` from the future would make every later will "older" and
    /// ignored.
    pub fn plausible_state(&self, msg: &StateMsg, unix_ms: i64) -> Result<(), &'static str> {
        let offset = self
            .agents
            .get(&msg.agent)
            .and_then(|l| l.offset_ms)
            .unwrap_or(0);
        let agent_now = unix_ms.saturating_sub(offset);
        if msg.connect_ms > agent_now.saturating_add(FUTURE_SLACK_MS) {
            Err("state from the future")
        } else {
            Ok(())
        }
    }

    /// A `state` message (false: not enrolled). An `offline` older than the
    /// latest `online` is ignored (PROTOCOL §7).
    pub fn presence(&mut self, msg: &StateMsg) -> bool {
        let Some(live) = self.agents.get_mut(&msg.agent) else {
            return false;
        };
        match msg.state {
            PresenceState::Online if msg.connect_ms >= live.session_ms => {
                live.session_ms = msg.connect_ms;
                live.presence = Presence::Online;
            }
            PresenceState::Offline if msg.connect_ms >= live.session_ms => {
                live.session_ms = msg.connect_ms;
                live.presence = Presence::Offline;
            }
            _ => {}
        }
        true
    }

    /// Re-judges every agent; returns the changes.
    pub fn evaluate(&mut self, now: Duration, unix_ms: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        for (id, live) in &mut self.agents {
            let (state, reason) = classify(&live.signals(now), &self.thresholds);
            if state != live.state {
                changes.push(Change {
                    agent: id.clone(),
                    from: live.state,
                    to: state,
                    reason: reason.clone(),
                });
                live.state = state;
                live.since_ms = unix_ms;
            }
            live.reason = reason;
        }
        changes.sort_by(|a, b| a.agent.cmp(&b.agent));
        changes
    }

    /// The summary as of the last evaluation: of this gateway's own agents,
    /// or, once child clusters reported, the roll-up of them and its own
    /// agents (if it has any) — a sector's view.
    pub fn summary(&self) -> Summary {
        let own = self.own_summary();
        if self.children.is_empty() {
            return own;
        }
        let own_part = (own.agents > 0).then_some((self.cluster.as_str(), &own));
        let mut s = Summary::rollup(
            own_part
                .into_iter()
                .chain(self.children.iter().map(|(c, s)| (c.as_str(), &s.summary))),
        );
        // this tier relays to its slowest part
        s.subtree_lead_ms = s.subtree_lead_ms.map(|l| l + RELAY_MS);
        s
    }

    /// The summary of this gateway's own agents only, with the lead a
    /// parent schedules them with: the p95 of their leads (for a command
    /// of weight 0), plus this gateway's relaying time, plus the time its
    /// burst to all of them takes to leave (one send spacing per agent).
    pub fn own_summary(&self) -> Summary {
        let mut s = Summary::of(self.agents.iter().map(|(id, l)| Member {
            id: id.as_str(),
            state: l.state,
            impedance_ms: l.last.as_ref().map(|h| h.impedance.impedance_ms()),
        }));
        let mut leads: Vec<f64> = self
            .coordinated()
            .into_iter()
            .filter(|c| !matches!(c.state, AgentState::Offline | AgentState::Quarantined))
            .filter_map(|c| c.measured)
            .map(|m| Lead::of(&m, 0.0).total_ms() as f64)
            .collect();
        leads.sort_by(f64::total_cmp);
        if !leads.is_empty() {
            let rank = (leads.len() * 95).div_ceil(100).max(1);
            #[allow(clippy::cast_precision_loss)]
            let burst = leads.len() as f64 * self.send_spacing_ms;
            s.subtree_lead_ms = Some(leads[rank - 1] + RELAY_MS + burst);
        }
        s
    }

    /// What coordination reads of each agent (PROTOCOL §9): its state, what
    /// it can do, and its last measured profile (`None` before a heartbeat).
    pub fn coordinated(&self) -> Vec<Coordinated> {
        self.agents
            .iter()
            .map(|(id, l)| Coordinated {
                agent: id.clone(),
                state: l.state,
                capabilities: l
                    .last
                    .as_ref()
                    .map(|h| h.capabilities.clone())
                    .unwrap_or_default(),
                class: l.last.as_ref().map(|h| h.system.class.clone()),
                impedance_ms: l.last.as_ref().map(|h| h.impedance.impedance_ms()),
                measured: l.last.as_ref().map(|h| Measured {
                    rtt_ms: f64::from(h.impedance.latency_p50_ms),
                    processing_ms: f64::from(h.impedance.processing_p50_ms),
                    queue_depth: u64::from(h.impedance.queue_depth),
                    drift: f64::from(h.impedance.jitter),
                    subtree_lead_ms: None,
                }),
            })
            .collect()
    }

    /// One agent's state as of the last evaluation.
    pub fn state_of(&self, agent: &AgentId) -> Option<AgentState> {
        self.agents.get(agent).map(|l| l.state)
    }

    /// What the agent list filters and sorts by, read without building
    /// the live fields (`None`: not an agent this gateway hears).
    pub fn list_facts(&self, agent: &AgentId) -> Option<ListFacts> {
        let l = self.agents.get(agent)?;
        let hb = l.last.as_ref();
        Some(ListFacts {
            state: l.state,
            // as shown: to a tenth
            impedance_ms: hb.map(|h| (h.impedance.impedance_ms() * 10.0).round() / 10.0),
            last_seen_ms: l.last_seen_ms,
            backlog: hb.map(|h| h.backlog),
            clock_offset_ms: l.offset_ms,
        })
    }

    /// One agent's live fields as JSON members (`null` where unknown).
    pub fn live_fields(&self, agent: &AgentId, now: Duration) -> Object {
        let mut o = Object::new();
        let Some(l) = self.agents.get(agent) else {
            return o;
        };
        #[allow(clippy::cast_precision_loss)]
        let int = |x: i64| Value::Number(x as f64);
        let round = |x: f64| Value::Number((x * 10.0).round() / 10.0);
        let hb = l.last.as_ref();
        o.insert("state", Value::from(l.state.as_str()));
        o.insert("state_reason", Value::from(l.reason.as_str()));
        o.insert("state_since_ms", int(l.since_ms));
        o.insert("phi", round(l.detector.phi(now).min(1e6)));
        o.insert("last_seen_ms", l.last_seen_ms.map_or(Value::Null, int));
        o.insert("clock_offset_ms", l.offset_ms.map_or(Value::Null, int));
        o.insert(
            "clock_skewed",
            Value::Bool(
                l.offset_ms.is_some_and(|x| {
                    x.unsigned_abs() > self.thresholds.clock_band_ms.unsigned_abs()
                }),
            ),
        );
        let f = |g: fn(&Heartbeat) -> f64| hb.map_or(Value::Null, |h| round(g(h)));
        o.insert("impedance_ms", f(|h| h.impedance.impedance_ms()));
        o.insert(
            "impedance_baseline_ms",
            l.baseline.get().map_or(Value::Null, round),
        );
        o.insert("score", f(|h| f64::from(h.impedance.score)));
        o.insert("rtt_ms", f(|h| f64::from(h.impedance.latency_p50_ms)));
        o.insert(
            "processing_ms",
            f(|h| f64::from(h.impedance.processing_p50_ms)),
        );
        o.insert("reliability", f(|h| f64::from(h.impedance.reliability)));
        o.insert(
            "backlog",
            hb.map_or(Value::Null, |h| Value::from(h.backlog)),
        );
        o.insert("cpu_pct", f(|h| f64::from(h.system.cpu_pct)));
        o.insert(
            "temp_c",
            hb.and_then(|h| h.system.temp_c)
                .map_or(Value::Null, |t| round(f64::from(t))),
        );
        o.insert(
            "throttled",
            hb.and_then(|h| h.system.throttled)
                .map_or(Value::Null, |t| Value::from(format!("0x{t:x}"))),
        );
        o.insert(
            "class",
            hb.map_or(Value::Null, |h| Value::from(h.system.class.as_str())),
        );
        o.insert(
            "capabilities",
            hb.map_or(Value::Null, |h| {
                Value::Array(
                    h.capabilities
                        .iter()
                        .map(|c| Value::from(c.as_str()))
                        .collect(),
                )
            }),
        );
        o.insert(
            "model",
            hb.filter(|h| !h.system.model.is_empty())
                .map_or(Value::Null, |h| Value::from(h.system.model.as_str())),
        );
        o
    }

    /// Every agent's clock offset (for metrics).
    pub fn offsets(&self) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .agents
            .iter()
            .filter_map(|(id, l)| Some((id.to_string(), l.offset_ms?)))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use baton_shared::Seq;
    use baton_shared::wire::{ClockEstimate, ImpedanceSample, SystemMetrics};

    /// A heartbeat from `agent` (the ingest tests use it too).
    pub(crate) fn hb(agent: &AgentId, sent_ms: i64, clock: Option<ClockEstimate>) -> Heartbeat {
        Heartbeat {
            agent: agent.clone(),
            sent_ms,
            interval_ms: 1000,
            state: "idle".into(),
            head_seq: Seq(1),
            receipted_seq: Seq(1),
            backlog: 0,
            impedance: ImpedanceSample {
                latency_p50_ms: 2.0,
                processing_p50_ms: 1.0,
                reliability: 1.0,
                score: 900,
                ..Default::default()
            },
            system: SystemMetrics::default(),
            clock,
            capabilities: Vec::new(),
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn liveness_signals_no_agent_could_send_are_refused() {
        let a = AgentId::new("pi-1").unwrap();
        let mut r = Registry::new(Thresholds::default());
        r.enroll(&a, 0, false);
        let mut beat = hb(&a, 0, None);
        assert_eq!(Registry::plausible_heartbeat(&beat), Ok(()));
        for interval in [0, 99, 3_600_001, u32::MAX] {
            beat.interval_ms = interval;
            assert!(Registry::plausible_heartbeat(&beat).is_err(), "{interval}");
        }
        let state = |connect_ms| StateMsg {
            agent: a.clone(),
            state: PresenceState::Online,
            connect_ms,
        };
        let now = 1_800_000_000_000;
        assert_eq!(r.plausible_state(&state(now), now), Ok(()));
        assert!(r.plausible_state(&state(i64::MAX), now).is_err());
        assert!(r.plausible_state(&state(now + 120_000), now).is_err());
        // an agent whose clock is a day behind: judged by its own clock
        r.heartbeat(S(1), now, hb(&a, now - 86_400_000, None));
        assert_eq!(r.plausible_state(&state(now - 86_400_000), now), Ok(()));
        assert!(r.plausible_state(&state(now), now).is_err());
    }

    /// A parent schedules a cluster with the lead its summary reports:
    /// that includes the time this gateway's own burst takes to leave.
    #[test]
    fn the_subtree_lead_holds_the_burst_to_every_agent() {
        let mut r = Registry::new(Thresholds::default());
        let lead = |r: &Registry| r.own_summary().subtree_lead_ms.unwrap();
        for i in 0..100 {
            let a = AgentId::new(format!("pi-{i}")).unwrap();
            r.enroll(&a, 0, false);
            for t in 0..5 {
                r.heartbeat(S(t), i64::try_from(t).unwrap() * 1000, hb(&a, 0, None));
            }
        }
        r.evaluate(S(4), 4000);
        r.set_send_spacing(Duration::ZERO);
        let alone = lead(&r);
        // one agent's lead (1 ms one way, 1 ms processing, the 2 ms
        // margin floor) and the relay
        assert!((alone - (4.0 + RELAY_MS)).abs() < 1.0, "{alone}");
        r.set_send_spacing(Duration::from_millis(1));
        assert!((lead(&r) - (alone + 100.0)).abs() < 1e-9, "{}", lead(&r));
    }

    #[test]
    fn lifecycle_of_an_agent_in_virtual_time() {
        let a = AgentId::new("pi-1").unwrap();
        let mut r = Registry::new(Thresholds::default());
        assert!(!r.heartbeat(S(0), 0, hb(&a, 0, None)), "not enrolled");
        r.enroll(&a, 0, false);
        assert!(r.evaluate(S(0), 0).is_empty(), "offline until heard");
        for i in 0..10 {
            let ms = i64::try_from(i * 1000).unwrap();
            assert!(r.heartbeat(S(i), ms, hb(&a, ms, None)));
        }
        let c = r.evaluate(S(9), 9000);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].from, c[0].to),
            (AgentState::Offline, AgentState::Active)
        );
        // silence: suspect, then offline, by phi alone
        // (1 s rhythm, no jitter: the deviation floor is 100 ms)
        let ms = Duration::from_millis;
        assert_eq!(r.evaluate(ms(10_550), 10_550)[0].to, AgentState::Suspect);
        assert_eq!(r.evaluate(ms(10_800), 10_800)[0].to, AgentState::Offline);
        // back, then the last will of the current session
        r.heartbeat(S(14), 14_000, hb(&a, 14_000, None));
        assert_eq!(r.evaluate(S(14), 14_000)[0].to, AgentState::Active);
        let will = |connect_ms, state| StateMsg {
            agent: a.clone(),
            state,
            connect_ms,
        };
        r.presence(&will(500, PresenceState::Online));
        // an older session's will changes nothing
        r.presence(&will(400, PresenceState::Offline));
        assert!(r.evaluate(S(14), 14_000).is_empty());
        r.presence(&will(500, PresenceState::Offline));
        let c = r.evaluate(S(14), 14_000);
        assert_eq!(
            (c[0].to, c[0].reason.as_str()),
            (AgentState::Offline, "last will")
        );
        // a fork quarantines for good
        r.quarantine(&a, 15_000);
        r.heartbeat(S(15), 15_000, hb(&a, 15_000, None));
        assert_eq!(r.evaluate(S(15), 15_000)[0].to, AgentState::Quarantined);
        assert_eq!(r.summary().agents, 1);
        assert_eq!(r.summary().active, 0);
    }

    #[test]
    fn clock_offset_from_the_agent_or_the_send_time() {
        let a = AgentId::new("pi-1").unwrap();
        let mut r = Registry::new(Thresholds::default());
        r.enroll(&a, 0, false);
        // a device in 1970, not yet synced: send time vs receive time
        let now_ms = 1_795_460_700_000;
        r.heartbeat(S(0), now_ms, hb(&a, 5_000, None));
        r.evaluate(S(0), now_ms);
        assert_eq!(r.state_of(&a), Some(AgentState::ClockSkewed));
        assert_eq!(r.offsets(), vec![("pi-1".into(), now_ms - 5_000)]);
        // synced and in tune: the agent's estimate wins
        let tuned = ClockEstimate {
            offset_ms: 12,
            rtt_ms: 2,
            synced: true,
        };
        r.heartbeat(S(1), now_ms + 1000, hb(&a, 0, Some(tuned)));
        assert_eq!(r.evaluate(S(1), now_ms)[0].to, AgentState::Active);
        let f = r.live_fields(&a, S(1));
        assert_eq!(f.get("clock_offset_ms"), Some(&Value::Number(12.0)));
        assert_eq!(f.get("clock_skewed"), Some(&Value::Bool(false)));
    }
}
