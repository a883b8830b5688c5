//! Gathering a command's answers at one gateway (PROTOCOL §9): what was
//! planned for each direct child, the latest authenticated answer of each
//! (by seq; a final one is never replaced), and from them the counts, the
//! decision and the `command_result` entry's data. Counts are agents of
//! the subtree: a child gateway contributes the counts of its latest
//! `command_result`, at least the agents the parent knows behind it (the
//! rest unanswered); a skipped or silent child counts all its matching
//! agents as skipped or unanswered.
//!
//! Which answers are authentic (hash and signature under the child's key)
//! is the caller's to check; this keeps what it is given. No I/O.

use std::collections::BTreeMap;

use crate::command::{
    Answer, Command, ConflictKind, Decision, ErrorHistogram, Phase, State, Tally,
};
use crate::crypto::Hash;
use crate::entry::Seq;
use crate::id::AgentId;
use crate::json::{Object, Value};
use crate::schedule::{Plan, SkipReason};

/// At most this many conflicts are listed by agent in a result (the total
/// is counted).
pub const CONFLICTS_LISTED: usize = 100;
/// At most this many children per `command_result` entry (further entries
/// continue the list).
pub const CHILDREN_PER_ENTRY: usize = 500;
/// At most this many bytes of canonical `command_result` data per entry:
/// the entry around it and the `cmd/reply` envelope fit in the rest of
/// [`MAX_CMD_BYTES`](crate::wire::MAX_CMD_BYTES).
pub const MAX_RESULT_DATA_BYTES: usize = 30 * 1024;

/// How urgent a conflict is, 0–3: `hash_mismatch` and
/// `data_contradiction` (someone holds another truth) are 3 and go up at
/// once; what keeps a child from its job 2; time 1; what only informs 0.
pub fn conflict_priority(kind: ConflictKind) -> u8 {
    match kind {
        ConflictKind::HashMismatch | ConflictKind::DataContradiction => 3,
        ConflictKind::ContextDivergence
        | ConflictKind::TemporalParadox
        | ConflictKind::HandlerFailed => 2,
        ConflictKind::ClockUnsynced | ConflictKind::Expired => 1,
        ConflictKind::Frozen | ConflictKind::CapabilityMismatch => 0,
    }
}

/// Whether a conflict of `kind` goes up at once (priority 3).
pub fn goes_up_at_once(kind: ConflictKind) -> bool {
    conflict_priority(kind) >= 3
}

/// A direct child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Agent,
    /// A child gateway, with the matching agents the parent knows behind
    /// it (from its `enroll` entries).
    Gateway {
        matching: u64,
    },
}

/// What a child gateway's `command_result` says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counts {
    pub phase: Option<Phase>,
    pub tally: Tally,
    pub sent: u64,
    pub skipped: BTreeMap<SkipReason, u64>,
    pub errors: ErrorHistogram,
    pub conflicts: Vec<(AgentId, ConflictKind)>,
    pub conflicts_total: u64,
    pub decision: Option<Decision>,
}

/// The latest answer a child gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Answered {
    Agent(Answer),
    Gateway(Box<Counts>),
}

#[derive(Debug, Clone, PartialEq)]
struct Child {
    kind: Kind,
    plan: Plan,
    /// (seq, entry hash, what it said).
    answer: Option<(Seq, Hash, Answered)>,
}

/// Why an answer was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("not a child this command was planned for")]
    NotAChild,
    #[error("it answers another command")]
    OtherCommand,
    #[error("not newer than the answer kept")]
    Older,
    #[error("a final answer is kept and never replaced")]
    AfterFinal,
    #[error("an agent's answer from a gateway child, or the reverse")]
    WrongKind,
}

/// One command's gathering at one gateway.
#[derive(Debug, Clone)]
pub struct Gather {
    command: Command,
    children: BTreeMap<AgentId, Child>,
}

impl Gather {
    pub fn new(command: Command) -> Gather {
        Gather {
            command,
            children: BTreeMap::new(),
        }
    }

    pub fn command(&self) -> &Command {
        &self.command
    }

    /// Records the plan for a child (sent, or skipped with its reason).
    pub fn planned(&mut self, child: AgentId, kind: Kind, plan: Plan) {
        self.children.insert(
            child,
            Child {
                kind,
                plan,
                answer: None,
            },
        );
    }

    /// Children sent to and with no final answer: the ones to resend to.
    pub fn unanswered(&self) -> impl Iterator<Item = (&AgentId, &Plan)> {
        self.children.iter().filter_map(|(id, c)| {
            let open = match &c.answer {
                None => true,
                Some((_, _, Answered::Agent(a))) => !a.state.is_final(),
                Some((_, _, Answered::Gateway(g))) => g.phase != Some(Phase::Final),
            };
            (open && matches!(c.plan, Plan::Send { .. })).then_some((id, &c.plan))
        })
    }

    /// Whether `child` was sent this command and has not answered it
    /// finally (an answer from it is still awaited).
    pub fn awaits(&self, child: &AgentId) -> bool {
        self.children.get(child).is_some_and(|c| {
            matches!(c.plan, Plan::Send { .. })
                && match &c.answer {
                    None => true,
                    Some((_, _, Answered::Agent(a))) => !a.state.is_final(),
                    Some((_, _, Answered::Gateway(g))) => g.phase != Some(Phase::Final),
                }
        })
    }

    /// How many gateway children this command was planned for.
    pub fn gateway_children(&self) -> usize {
        self.children
            .values()
            .filter(|c| matches!(c.kind, Kind::Gateway { .. }))
            .count()
    }

    /// Every gateway child that answered, with its latest counts.
    pub fn gateway_answers(&self) -> impl Iterator<Item = (&AgentId, &Counts)> {
        self.children.iter().filter_map(|(id, c)| match &c.answer {
            Some((_, _, Answered::Gateway(g))) => Some((id, g.as_ref())),
            _ => None,
        })
    }

    /// Children sent to that have not answered at all.
    pub fn silent(&self) -> impl Iterator<Item = &AgentId> {
        self.children
            .iter()
            .filter(|(_, c)| c.answer.is_none() && matches!(c.plan, Plan::Send { .. }))
            .map(|(id, _)| id)
    }

    /// Whether `child` is a gateway child of this command.
    pub fn is_gateway(&self, child: &AgentId) -> bool {
        self.children
            .get(child)
            .is_some_and(|c| matches!(c.kind, Kind::Gateway { .. }))
    }

    /// Every child gateway: its plan (a skip, or when it was sent).
    pub fn gateways(&self) -> impl Iterator<Item = (&AgentId, &Plan)> {
        self.children
            .iter()
            .filter(|(_, c)| matches!(c.kind, Kind::Gateway { .. }))
            .map(|(id, c)| (id, &c.plan))
    }

    /// Every agent child: its plan, and its latest answer if any (for a
    /// console's per-agent view).
    pub fn agents(&self) -> impl Iterator<Item = (&AgentId, &Plan, Option<&Answer>)> {
        self.children
            .iter()
            .filter_map(|(id, c)| match (&c.kind, &c.answer) {
                (Kind::Agent, Some((_, _, Answered::Agent(a)))) => Some((id, &c.plan, Some(a))),
                (Kind::Agent, _) => Some((id, &c.plan, None)),
                _ => None,
            })
    }

    /// An agent child's answer, from entry `seq` with hash `entry`.
    pub fn agent_answer(
        &mut self,
        child: &AgentId,
        seq: Seq,
        entry: Hash,
        answer: Answer,
    ) -> Result<(), Ignored> {
        if answer.hash != self.command.hash {
            return Err(Ignored::OtherCommand);
        }
        let c = self.children.get_mut(child).ok_or(Ignored::NotAChild)?;
        if c.kind != Kind::Agent {
            return Err(Ignored::WrongKind);
        }
        match &c.answer {
            Some((_, _, Answered::Agent(a))) if a.state.is_final() => {
                return Err(Ignored::AfterFinal);
            }
            Some((s, _, _)) if *s >= seq => return Err(Ignored::Older),
            _ => {}
        }
        c.answer = Some((seq, entry, Answered::Agent(answer)));
        Ok(())
    }

    /// A child gateway's `command_result` (for this command), from entry
    /// `seq` with hash `entry`.
    pub fn gateway_result(
        &mut self,
        child: &AgentId,
        seq: Seq,
        entry: Hash,
        counts: Counts,
    ) -> Result<(), Ignored> {
        let c = self.children.get_mut(child).ok_or(Ignored::NotAChild)?;
        if !matches!(c.kind, Kind::Gateway { .. }) {
            return Err(Ignored::WrongKind);
        }
        match &c.answer {
            Some((_, _, Answered::Gateway(g))) if g.phase == Some(Phase::Final) => {
                return Err(Ignored::AfterFinal);
            }
            Some((s, _, _)) if *s >= seq => return Err(Ignored::Older),
            _ => {}
        }
        c.answer = Some((seq, entry, Answered::Gateway(Box::new(counts))));
        Ok(())
    }

    /// The subtree's counts now.
    pub fn counts(&self) -> Counts {
        let mut out = Counts::default();
        let mut conflicts: Vec<(AgentId, ConflictKind)> = Vec::new();
        for (id, c) in &self.children {
            let agents = match c.kind {
                Kind::Agent => 1,
                Kind::Gateway { matching } => matching,
            };
            let t = &mut out.tally;
            match (&c.plan, &c.answer) {
                (Plan::Skip { reason, .. }, _) => {
                    t.selected += agents;
                    *out.skipped.entry(*reason).or_default() += agents;
                }
                (Plan::Send { .. }, None) => {
                    t.selected += agents;
                    out.sent += agents;
                    t.unanswered += agents;
                }
                (
                    Plan::Send {
                        predicted_ready_ms, ..
                    },
                    Some((_, _, Answered::Agent(a))),
                ) => {
                    t.selected += 1;
                    out.sent += 1;
                    match a.state {
                        State::Ready => {
                            t.ready += 1;
                            if let Some(r) = a.ready_ms {
                                if self.command.on_time(r) {
                                    t.on_time += 1;
                                }
                                out.errors.record(r.abs_diff(*predicted_ready_ms));
                            }
                        }
                        State::Transit => t.transit += 1,
                        State::Conflict => {
                            t.conflict += 1;
                            out.conflicts_total += 1;
                            if let Some((kind, _)) = &a.conflict {
                                conflicts.push((id.clone(), *kind));
                            }
                        }
                    }
                }
                (Plan::Send { .. }, Some((_, _, Answered::Gateway(g)))) => {
                    let selected = g.tally.selected.max(agents);
                    t.selected += selected;
                    out.sent += g.sent;
                    t.ready += g.tally.ready;
                    t.on_time += g.tally.on_time;
                    t.conflict += g.tally.conflict;
                    t.transit += g.tally.transit;
                    t.unanswered += g.tally.unanswered + (selected - g.tally.selected);
                    for (r, n) in &g.skipped {
                        *out.skipped.entry(*r).or_default() += n;
                    }
                    out.errors.add(&g.errors);
                    out.conflicts_total += g.conflicts_total;
                    conflicts.extend(g.conflicts.iter().cloned());
                }
            }
        }
        conflicts.sort();
        conflicts.truncate(CONFLICTS_LISTED);
        out.conflicts = conflicts;
        out
    }

    /// The `command_result` data for `phase`: the counts, the decision and
    /// every direct child, in entries of at most [`CHILDREN_PER_ENTRY`]
    /// children and [`MAX_RESULT_DATA_BYTES`] bytes, so each travels on
    /// `cmd/reply` (every entry carries the counts and reads on its own).
    pub fn result_data(&self, phase: Phase) -> Vec<Value> {
        let mut counts = self.counts();
        if phase == Phase::Final {
            counts.tally = counts.tally.finalised();
        }
        let decision = counts.tally.decide(&self.command.quorum, phase);
        let head = counts_object(&self.command.hash, phase, &counts, decision);
        // the head with `"children":[]`: each child then adds its bytes and a comma
        let head_bytes = crate::canonical::to_vec(&Value::Object(head.clone())).len() + 14;
        let mut pages: Vec<Vec<Value>> = vec![Vec::new()];
        let mut bytes = head_bytes;
        for (id, c) in &self.children {
            let v = child_value(id, c);
            let len = crate::canonical::to_vec(&v).len() + 1;
            let page = pages.last_mut().expect("one page at least");
            if !page.is_empty()
                && (page.len() == CHILDREN_PER_ENTRY || bytes + len > MAX_RESULT_DATA_BYTES)
            {
                pages.push(Vec::new());
                bytes = head_bytes;
            }
            pages.last_mut().expect("one page at least").push(v);
            bytes += len;
        }
        pages
            .into_iter()
            .map(|page| {
                let mut d = head.clone();
                d.insert("children", Value::Array(page));
                Value::Object(d)
            })
            .collect()
    }
}

/// What one child's line in a `command_result` page says it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An agent answered READY.
    Ready,
    /// A child gateway answered with its own results (its page lists the
    /// children below it).
    Answered,
    /// Anything else: skipped (the reason), `unanswered`, `transit` or
    /// `conflict`.
    NotReady(String),
}

/// The children a `command_result` page lists, with their outcomes, as
/// [`Gather::result_data`] writes them; `None` if `data` is not such a
/// page. Lines that do not parse are left out.
pub fn page_outcomes(data: &Value) -> Option<Vec<(AgentId, Outcome)>> {
    let Value::Array(children) = data.as_object()?.get("children")? else {
        return None;
    };
    Some(
        children
            .iter()
            .filter_map(|c| {
                let o = c.as_object()?;
                let id = AgentId::new(o.get("id")?.as_str()?).ok()?;
                let outcome = match o.get("outcome")?.as_str()? {
                    "ready" => Outcome::Ready,
                    "answered" => Outcome::Answered,
                    other => Outcome::NotReady(other.to_owned()),
                };
                Some((id, outcome))
            })
            .collect(),
    )
}

fn child_value(id: &AgentId, c: &Child) -> Value {
    let mut o = Object::new();
    o.insert("id", Value::from(id.as_str()));
    let outcome = match (&c.plan, &c.answer) {
        (Plan::Skip { reason, .. }, _) => reason.as_str(),
        (Plan::Send { .. }, None) => "unanswered",
        (_, Some((_, _, Answered::Agent(a)))) => match a.state {
            State::Ready => "ready",
            State::Transit => "transit",
            State::Conflict => "conflict",
        },
        (_, Some((_, _, Answered::Gateway(_)))) => "answered",
    };
    o.insert("outcome", Value::from(outcome));
    #[allow(clippy::cast_precision_loss)]
    o.insert("lead_ms", Value::Number(c.plan.lead().total_ms() as f64));
    let answer = c.answer.as_ref().map_or(Value::Null, |(seq, hash, a)| {
        let state = match a {
            Answered::Agent(a) => a.state.as_i64(),
            Answered::Gateway(g) => match g.decision {
                Some(Decision::Proceed) => 1,
                Some(Decision::Wait) => 0,
                _ => -1,
            },
        };
        let mut x = Object::new();
        x.insert("seq", Value::from(seq.0));
        x.insert("hash", Value::from(hash.to_hex()));
        #[allow(clippy::cast_precision_loss)]
        x.insert("state", Value::Number(state as f64));
        Value::Object(x)
    });
    o.insert("answer", answer);
    Value::Object(o)
}

fn counts_object(hash: &Hash, phase: Phase, c: &Counts, decision: Decision) -> Object {
    let mut d = Object::new();
    let t = &c.tally;
    d.insert("hash", Value::from(hash.to_hex()));
    d.insert("phase", Value::from(phase.as_str()));
    d.insert("selected", Value::from(t.selected));
    d.insert("sent", Value::from(c.sent));
    let mut skipped = Object::new();
    for (r, n) in &c.skipped {
        skipped.insert(r.as_str(), Value::from(*n));
    }
    d.insert("skipped", Value::Object(skipped));
    d.insert("ready", Value::from(t.ready));
    d.insert("on_time", Value::from(t.on_time));
    d.insert("conflict", Value::from(t.conflict));
    d.insert("transit", Value::from(t.transit));
    d.insert("unanswered", Value::from(t.unanswered));
    d.insert("decision", Value::from(decision.as_str()));
    d.insert("prediction_error_ms", c.errors.to_value());
    let listed = c
        .conflicts
        .iter()
        .map(|(a, k)| {
            let mut x = Object::new();
            x.insert("agent", Value::from(a.as_str()));
            x.insert("kind", Value::from(k.as_str()));
            Value::Object(x)
        })
        .collect();
    d.insert("conflicts", Value::Array(listed));
    d.insert("conflicts_total", Value::from(c.conflicts_total));
    d
}

/// Reads a child gateway's `command_result` data: the command's hash and
/// its counts. `None` for data that is not one.
pub fn read_result(data: &Value) -> Option<(Hash, Counts)> {
    let o = data.as_object()?;
    let hash = Hash::from_hex(o.get("hash")?.as_str()?).ok()?;
    let n = |k: &str| o.get(k).and_then(Value::as_exact_u64);
    let phase = match o.get("phase")?.as_str()? {
        "window" => Phase::Window,
        "final" => Phase::Final,
        _ => return None,
    };
    let mut skipped = BTreeMap::new();
    for (k, v) in o.get("skipped")?.as_object()?.iter() {
        skipped.insert(SkipReason::parse(k)?, v.as_exact_u64()?);
    }
    let mut conflicts = Vec::new();
    if let Some(Value::Array(items)) = o.get("conflicts") {
        for i in items.iter().take(CONFLICTS_LISTED) {
            let x = i.as_object()?;
            conflicts.push((
                AgentId::new(x.get("agent")?.as_str()?).ok()?,
                ConflictKind::parse(x.get("kind")?.as_str()?)?,
            ));
        }
    }
    let decision = match o.get("decision")?.as_str()? {
        "PROCEED" => Decision::Proceed,
        "WAIT" => Decision::Wait,
        "RESOLVE_CONFLICTS" => Decision::ResolveConflicts,
        "RETRY" => Decision::Retry,
        _ => return None,
    };
    let tally = Tally {
        selected: n("selected")?,
        ready: n("ready")?,
        on_time: n("on_time")?,
        conflict: n("conflict")?,
        transit: n("transit")?,
        unanswered: n("unanswered")?,
    };
    // Counts that cannot be true are not counted.
    let answered =
        tally.on_time.max(tally.ready) + tally.conflict + tally.transit + tally.unanswered;
    let skipped_total: u64 = skipped.values().sum();
    if tally.on_time > tally.ready || answered + skipped_total > tally.selected.saturating_mul(2) {
        return None;
    }
    Some((
        hash,
        Counts {
            phase: Some(phase),
            tally,
            sent: n("sent")?,
            skipped,
            errors: ErrorHistogram::from_value(o.get("prediction_error_ms")?)?,
            conflicts,
            conflicts_total: n("conflicts_total")?,
            decision: Some(decision),
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::command::{Draft, Verb};
    use crate::schedule::Lead;
    use crate::{CommandId, json::Object};

    fn command() -> Command {
        Draft {
            issuer: AgentId::new("gw-top").unwrap(),
            id: CommandId::new("c-1").unwrap(),
            issued_ms: 1_000_000,
            target_ms: 1_002_000,
            window_ms: 50,
            expires_ms: 1_010_000,
            priority: 1,
            verb: Verb::Act,
            payload: Value::Object(Object::new()),
            weight: 0.0,
            select: None,
            quorum: None,
        }
        .build()
        .unwrap()
    }

    fn lead() -> Lead {
        Lead {
            one_way_ms: 5.0,
            processing_ms: 5.0,
            margin_ms: 2.0,
            subtree_ms: 0.0,
        }
    }

    fn sent() -> Plan {
        Plan::Send {
            send_at_ms: 1_001_988,
            lead: lead(),
            predicted_ready_ms: 1_001_998,
        }
    }

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn ready(c: &Command, at: i64) -> Answer {
        Answer {
            hash: c.hash,
            state: State::Ready,
            received_ms: at - 10,
            ready_ms: Some(at),
            processing_ms: Some(10),
            conflict: None,
            result: None,
        }
    }

    #[test]
    fn agents_and_a_child_gateway_are_counted_as_agents() {
        let c = command();
        let mut g = Gather::new(c.clone());
        g.planned(id("a-1"), Kind::Agent, sent());
        g.planned(id("a-2"), Kind::Agent, sent());
        g.planned(id("a-3"), Kind::Agent, sent());
        g.planned(
            id("a-4"),
            Kind::Agent,
            Plan::Skip {
                reason: SkipReason::Offline,
                lead: lead(),
            },
        );
        g.planned(id("gw-c2"), Kind::Gateway { matching: 10 }, sent());
        g.agent_answer(&id("a-1"), Seq(5), Hash([1; 32]), ready(&c, 1_001_990))
            .unwrap();
        // late: ready, not on time
        g.agent_answer(&id("a-2"), Seq(7), Hash([2; 32]), ready(&c, 1_002_100))
            .unwrap();
        let conflict = Answer::conflict(c.hash, 1, ConflictKind::CapabilityMismatch, "no motor");
        g.agent_answer(&id("a-3"), Seq(3), Hash([3; 32]), conflict)
            .unwrap();
        let counts = g.counts();
        assert_eq!(counts.tally.selected, 14);
        assert_eq!((counts.tally.ready, counts.tally.on_time), (2, 1));
        assert_eq!(counts.tally.conflict, 1);
        assert_eq!(counts.tally.unanswered, 10, "the silent gateway's agents");
        assert_eq!(counts.skipped.get(&SkipReason::Offline), Some(&1));
        assert_eq!(counts.errors.count(), 2);
        assert_eq!(
            counts.conflicts,
            vec![(id("a-3"), ConflictKind::CapabilityMismatch)]
        );

        // the child gateway reports 8 of its 10 (2 unknown to it: unanswered)
        let mut child = Gather::new(c.clone());
        for i in 0..8 {
            child.planned(id(&format!("b-{i}")), Kind::Agent, sent());
        }
        for i in 0..6 {
            child
                .agent_answer(
                    &id(&format!("b-{i}")),
                    Seq(2),
                    Hash([4; 32]),
                    ready(&c, 1_001_995),
                )
                .unwrap();
        }
        let data = child.result_data(Phase::Window);
        let (hash, reported) = read_result(&data[0]).unwrap();
        assert_eq!(hash, c.hash);
        g.gateway_result(&id("gw-c2"), Seq(40), Hash([5; 32]), reported)
            .unwrap();
        let counts = g.counts();
        assert_eq!(counts.tally.selected, 14);
        assert_eq!(counts.tally.on_time, 7);
        assert_eq!(counts.tally.unanswered, 2 + 2);
        assert_eq!(counts.sent, 3 + 8);
        // 7 of 14 on time: neither PROCEED nor WAIT (transit 4/14 > 10%):
        assert_eq!(
            counts.tally.decide(&c.quorum, Phase::Window),
            Decision::Wait
        );
        let final_data = g.result_data(Phase::Final);
        let (_, f) = read_result(&final_data[0]).unwrap();
        assert_eq!(f.tally.unanswered, 0);
        assert_eq!(f.decision, Some(Decision::ResolveConflicts));
    }

    #[test]
    fn a_final_answer_is_never_replaced_and_old_ones_never_win() {
        let c = command();
        let mut g = Gather::new(c.clone());
        g.planned(id("a-1"), Kind::Agent, sent());
        let transit = Answer {
            state: State::Transit,
            ready_ms: None,
            ..ready(&c, 0)
        };
        g.agent_answer(&id("a-1"), Seq(5), Hash([1; 32]), transit.clone())
            .unwrap();
        assert_eq!(g.unanswered().count(), 1);
        assert_eq!(
            g.agent_answer(&id("a-1"), Seq(4), Hash([1; 32]), ready(&c, 1)),
            Err(Ignored::Older)
        );
        g.agent_answer(&id("a-1"), Seq(6), Hash([1; 32]), ready(&c, 1_001_999))
            .unwrap();
        assert_eq!(g.unanswered().count(), 0);
        assert_eq!(
            g.agent_answer(&id("a-1"), Seq(9), Hash([1; 32]), transit),
            Err(Ignored::AfterFinal)
        );
        let mut other = ready(&c, 1);
        other.hash = Hash([9; 32]);
        assert_eq!(
            g.agent_answer(&id("a-1"), Seq(10), Hash([1; 32]), other),
            Err(Ignored::OtherCommand)
        );
        assert_eq!(
            g.agent_answer(&id("zz"), Seq(1), Hash([1; 32]), ready(&c, 1)),
            Err(Ignored::NotAChild)
        );
    }

    /// A `command_result` travels on `cmd/reply` (≤ 32 KiB, PROTOCOL §7):
    /// a page of the longest ids, each with an answer, beside the longest
    /// conflict list, must still fit. 500 children of `ready` answers took
    /// ~62 KB, so the parent refused a 500-agent cluster's answer.
    #[test]
    fn a_page_of_the_longest_children_fits_a_reply() {
        let c = command();
        let mut g = Gather::new(c.clone());
        let long = |i: usize| id(&format!("{i:0>64}"));
        for i in 0..1_201 {
            g.planned(long(i), Kind::Agent, sent());
            let mut a = ready(&c, 1_001_990);
            if i % 3 == 0 {
                a.state = State::Conflict;
                a.ready_ms = None;
                a.conflict = Some((ConflictKind::CapabilityMismatch, "x".repeat(200)));
            }
            g.agent_answer(&long(i), Seq(u64::MAX / 2), Hash([1; 32]), a)
                .unwrap();
        }
        let pages = g.result_data(Phase::Final);
        let listed: usize = pages
            .iter()
            .map(|p| match p.as_object().unwrap().get("children") {
                Some(Value::Array(a)) => a.len(),
                _ => panic!("a page without children"),
            })
            .sum();
        assert_eq!(listed, 1_201, "every child listed once");
        for p in &pages {
            let bytes = crate::canonical::to_vec(p).len();
            assert!(
                bytes <= MAX_RESULT_DATA_BYTES,
                "a page of {bytes} bytes (at most {MAX_RESULT_DATA_BYTES})"
            );
        }
    }

    #[test]
    fn a_page_reads_back_as_each_childs_outcome() {
        let c = command();
        let mut g = Gather::new(c.clone());
        for name in ["a-ready", "a-conflict", "a-silent"] {
            g.planned(id(name), Kind::Agent, sent());
        }
        g.planned(id("gw-child"), Kind::Gateway { matching: 3 }, sent());
        g.planned(
            id("a-late"),
            Kind::Agent,
            Plan::Skip {
                reason: SkipReason::Late,
                lead: *sent().lead(),
            },
        );
        g.agent_answer(&id("a-ready"), Seq(4), Hash([1; 32]), ready(&c, 1_001_990))
            .unwrap();
        let mut no = ready(&c, 1_001_990);
        no.state = State::Conflict;
        no.ready_ms = None;
        no.conflict = Some((ConflictKind::CapabilityMismatch, "no camera".into()));
        g.agent_answer(&id("a-conflict"), Seq(4), Hash([1; 32]), no)
            .unwrap();
        let mut counts = g.counts();
        counts.phase = Some(Phase::Window);
        g.gateway_result(&id("gw-child"), Seq(9), Hash([2; 32]), counts)
            .unwrap();
        let pages = g.result_data(Phase::Final);
        let read: BTreeMap<AgentId, Outcome> = pages
            .iter()
            .flat_map(|p| page_outcomes(p).unwrap())
            .collect();
        let not = |s: &str| Outcome::NotReady(s.to_owned());
        assert_eq!(
            read.into_iter().collect::<Vec<_>>(),
            [
                (id("a-conflict"), not("conflict")),
                (id("a-late"), not("late")),
                (id("a-ready"), Outcome::Ready),
                (id("a-silent"), not("unanswered")),
                (id("gw-child"), Outcome::Answered),
            ]
        );
        assert_eq!(page_outcomes(&Value::from("not a page")), None);
    }

    #[test]
    fn children_are_listed_in_pages_in_byte_order() {
        let c = command();
        let mut g = Gather::new(c);
        for i in (0..1_201).rev() {
            g.planned(id(&format!("a-{i:05}")), Kind::Agent, sent());
        }
        let pages = g.result_data(Phase::Window);
        assert!(pages.len() >= 3, "{} pages", pages.len());
        let listed = |p: &Value| match p.as_object().unwrap().get("children") {
            Some(Value::Array(a)) => a.clone(),
            _ => panic!("a page without children"),
        };
        assert!(pages.iter().all(|p| listed(p).len() <= CHILDREN_PER_ENTRY));
        let first: Vec<Value> = pages.iter().flat_map(listed).collect();
        assert_eq!(first.len(), 1_201);
        let name = |v: &Value| {
            v.as_object()
                .unwrap()
                .get("id")
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(name(&first[0]), "a-00000");
        assert!(first.windows(2).all(|w| name(&w[0]) < name(&w[1])));
        // every page carries the counts
        assert!(pages.iter().all(|p| read_result(p).is_some()));
    }

    #[test]
    fn impossible_counts_from_a_child_are_not_taken() {
        let c = command();
        let mut g = Gather::new(c);
        g.planned(id("a-1"), Kind::Agent, sent());
        let mut d = g.result_data(Phase::Window).remove(0);
        if let Value::Object(o) = &mut d {
            o.insert("on_time", Value::from(5u64));
        }
        assert!(read_result(&d).is_none());
    }
}
