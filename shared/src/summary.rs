//! Cluster summaries: what a gateway says about its agents as a whole.
//!
//! - `agents`: every enrolled agent, whatever its state;
//! - `active`: agents in state `active` (degraded, skewed, suspect, offline
//!   and quarantined ones are counted by state, not as active);
//! - impedance mean and p95 (nearest rank) over the agents that are
//!   reachable (not offline, not quarantined) and have reported one;
//!   the slowest and fastest of them by impedance;
//! - the operating mode from the active share: `FULL` ≥ 95%,
//!   `DEGRADED_LIGHT` ≥ 80%, `DEGRADED_MODERATE` ≥ 60%, `DEGRADED_SEVERE`
//!   ≥ 30%, else `EMERGENCY`. A cluster with no agents is `FULL`: nothing in
//!   it is failing.

use crate::json::{Object, Value};
use crate::liveness::AgentState;

/// The cluster's operating mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    DegradedLight,
    DegradedModerate,
    DegradedSevere,
    Emergency,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Full,
        Mode::DegradedLight,
        Mode::DegradedModerate,
        Mode::DegradedSevere,
        Mode::Emergency,
    ];

    /// The mode for `active` of `agents`.
    pub fn of(active: usize, agents: usize) -> Mode {
        if agents == 0 {
            return Mode::Full;
        }
        // Compare in integers: active/agents ≥ p% ⇔ 100·active ≥ p·agents.
        let share = |pct: usize| active * 100 >= pct * agents;
        if share(95) {
            Mode::Full
        } else if share(80) {
            Mode::DegradedLight
        } else if share(60) {
            Mode::DegradedModerate
        } else if share(30) {
            Mode::DegradedSevere
        } else {
            Mode::Emergency
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "FULL",
            Mode::DegradedLight => "DEGRADED_LIGHT",
            Mode::DegradedModerate => "DEGRADED_MODERATE",
            Mode::DegradedSevere => "DEGRADED_SEVERE",
            Mode::Emergency => "EMERGENCY",
        }
    }
}

/// One agent as the summary sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member<'a> {
    pub id: &'a str,
    pub state: AgentState,
    pub impedance_ms: Option<f64>,
}

/// The summary of a cluster at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub agents: usize,
    pub active: usize,
    /// Count per state, in [`AgentState::ALL`] order.
    pub by_state: [(AgentState, usize); 6],
    pub impedance_mean_ms: Option<f64>,
    pub impedance_p95_ms: Option<f64>,
    pub slowest: Option<(String, f64)>,
    pub fastest: Option<(String, f64)>,
    pub mode: Mode,
    /// `Some(n)` for a roll-up of `n` clusters ([`Summary::rollup`]):
    /// `slowest` and `fastest` then name clusters.
    pub clusters: Option<usize>,
    /// The lead a parent schedules this subtree's commands with (PROTOCOL
    /// §9 `subtree_lead_ms`): the gateway's p95 of its agents' leads plus
    /// its own relaying time; a roll-up takes its slowest part. Set by the
    /// gateway that writes the summary; `None` when unknown.
    pub subtree_lead_ms: Option<f64>,
}

impl Summary {
    pub fn of<'a>(members: impl IntoIterator<Item = Member<'a>>) -> Summary {
        let mut by_state = AgentState::ALL.map(|s| (s, 0usize));
        let mut agents = 0;
        let mut z: Vec<(&str, f64)> = Vec::new();
        for m in members {
            agents += 1;
            if let Some(slot) = by_state.iter_mut().find(|(s, _)| *s == m.state) {
                slot.1 += 1;
            }
            let reachable = !matches!(m.state, AgentState::Offline | AgentState::Quarantined);
            if reachable && let Some(ms) = m.impedance_ms.filter(|v| v.is_finite()) {
                z.push((m.id, ms));
            }
        }
        let active = by_state
            .iter()
            .find(|(s, _)| *s == AgentState::Active)
            .map_or(0, |(_, n)| *n);
        // Ties: the smaller id first, so the answer does not depend on order.
        z.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        #[allow(clippy::cast_precision_loss)]
        let mean = (!z.is_empty()).then(|| z.iter().map(|(_, v)| v).sum::<f64>() / z.len() as f64);
        let p95 = (!z.is_empty()).then(|| {
            // nearest rank: the smallest value with ≥ 95% of samples at or below it
            let rank = (z.len() * 95).div_ceil(100).max(1);
            z[rank - 1].1
        });
        let fastest = z.first().map(|(id, v)| ((*id).to_owned(), *v));
        let slowest = z.last().map(|(id, v)| ((*id).to_owned(), *v));
        Summary {
            agents,
            active,
            by_state,
            impedance_mean_ms: mean,
            impedance_p95_ms: p95,
            slowest,
            fastest,
            mode: Mode::of(active, agents),
            clusters: None,
            subtree_lead_ms: None,
        }
    }

    /// Reads a summary back from [`Summary::to_value`]'s form (a child
    /// gateway's `cluster_summary` entry): its cluster and figures, or
    /// `None` if a field is missing or wrong.
    pub fn from_value(v: &Value) -> Option<(String, Summary)> {
        let o = v.as_object()?;
        let count = |v: &Value| v.as_exact_u64().and_then(|n| usize::try_from(n).ok());
        let ms = |key: &str| match o.get(key)? {
            Value::Null => Some(None),
            v => v.as_f64().filter(|x| x.is_finite() && *x >= 0.0).map(Some),
        };
        let states = o.get("by_state")?.as_object()?;
        let mut by_state = AgentState::ALL.map(|s| (s, 0usize));
        for (s, n) in &mut by_state {
            *n = states.get(s.as_str()).map_or(Some(0), count)?;
        }
        let agents = count(o.get("agents")?)?;
        let active = count(o.get("active")?)?;
        let who = |key: &str| -> Option<Option<(String, f64)>> {
            match o.get(key)? {
                Value::Null => Some(None),
                Value::Object(w) => {
                    let id = w.get("agent").or_else(|| w.get("cluster"))?.as_str()?;
                    Some(Some((id.to_owned(), w.get("impedance_ms")?.as_f64()?)))
                }
                _ => None,
            }
        };
        let summary = Summary {
            agents,
            active,
            by_state,
            impedance_mean_ms: ms("impedance_mean_ms")?,
            impedance_p95_ms: ms("impedance_p95_ms")?,
            slowest: who("slowest")?,
            fastest: who("fastest")?,
            mode: Mode::of(active, agents),
            clusters: o.get("clusters").and_then(count),
            subtree_lead_ms: o
                .get("subtree_lead_ms")
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x >= 0.0),
        };
        Some((o.get("cluster")?.as_str()?.to_owned(), summary))
    }

    /// A sector's view of its clusters (each part: a cluster id and its
    /// summary; the parent's own agents are one more part):
    /// - counts and counts by state are sums, the mode follows from them;
    /// - the mean impedance is the mean of the parts' means weighted by
    ///   their reachable agents (neither offline nor quarantined);
    /// - the p95 is the largest part's p95, an upper bound: the exact p95
    ///   needs every agent's figure, which summaries do not carry;
    /// - `slowest`/`fastest` are the clusters with the highest/lowest mean.
    pub fn rollup<'a>(parts: impl IntoIterator<Item = (&'a str, &'a Summary)>) -> Summary {
        let mut by_state = AgentState::ALL.map(|s| (s, 0usize));
        let (mut agents, mut active, mut clusters) = (0, 0, 0);
        let (mut weighted, mut weight) = (0.0, 0usize);
        let mut p95: Option<f64> = None;
        let mut lead: Option<f64> = None;
        let mut means: Vec<(&str, f64)> = Vec::new();
        for (id, s) in parts {
            clusters += 1;
            agents += s.agents;
            active += s.active;
            for (slot, (_, n)) in by_state.iter_mut().zip(s.by_state.iter()) {
                slot.1 += n;
            }
            if let Some(mean) = s.impedance_mean_ms {
                let gone = s
                    .by_state
                    .iter()
                    .filter(|(st, _)| matches!(st, AgentState::Offline | AgentState::Quarantined))
                    .map(|(_, n)| n)
                    .sum::<usize>();
                let reachable = s.agents.saturating_sub(gone).max(1);
                #[allow(clippy::cast_precision_loss)]
                {
                    weighted += mean * reachable as f64;
                }
                weight += reachable;
                means.push((id, mean));
            }
            if let Some(p) = s.impedance_p95_ms {
                p95 = Some(p95.map_or(p, |q: f64| q.max(p)));
            }
            if let Some(l) = s.subtree_lead_ms {
                lead = Some(lead.map_or(l, |q: f64| q.max(l)));
            }
        }
        means.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        #[allow(clippy::cast_precision_loss)]
        let mean = (weight > 0).then(|| weighted / weight as f64);
        Summary {
            agents,
            active,
            by_state,
            impedance_mean_ms: mean,
            impedance_p95_ms: p95,
            slowest: means.last().map(|(id, v)| ((*id).to_owned(), *v)),
            fastest: means.first().map(|(id, v)| ((*id).to_owned(), *v)),
            mode: Mode::of(active, agents),
            clusters: Some(clusters),
            subtree_lead_ms: lead,
        }
    }

    /// The summary as a JSON object (for HTTP, MQTT and the chain).
    pub fn to_value(&self, cluster: &str, unix_ms: i64) -> Value {
        // Counts and milliseconds: far inside binary64's exact range.
        #[allow(clippy::cast_precision_loss)]
        let num = |x: usize| Value::Number(x as f64);
        let ms =
            |v: Option<f64>| v.map_or(Value::Null, |x| Value::Number((x * 10.0).round() / 10.0));
        let named = if self.clusters.is_some() {
            "cluster"
        } else {
            "agent"
        };
        let who = |v: &Option<(String, f64)>| match v {
            Some((id, z)) => {
                let mut o = Object::new();
                o.insert(named, Value::from(id.as_str()));
                o.insert("impedance_ms", ms(Some(*z)));
                Value::Object(o)
            }
            None => Value::Null,
        };
        let mut states = Object::new();
        for (s, n) in &self.by_state {
            states.insert(s.as_str(), num(*n));
        }
        let mut o = Object::new();
        o.insert("cluster", Value::from(cluster));
        #[allow(clippy::cast_precision_loss)]
        o.insert("at_ms", Value::Number(unix_ms as f64));
        o.insert("agents", num(self.agents));
        o.insert("active", num(self.active));
        o.insert("by_state", Value::Object(states));
        o.insert("impedance_mean_ms", ms(self.impedance_mean_ms));
        o.insert("impedance_p95_ms", ms(self.impedance_p95_ms));
        o.insert("slowest", who(&self.slowest));
        o.insert("fastest", who(&self.fastest));
        o.insert("mode", Value::from(self.mode.as_str()));
        if let Some(n) = self.clusters {
            o.insert("clusters", num(n));
        }
        if let Some(l) = self.subtree_lead_ms {
            o.insert("subtree_lead_ms", ms(Some(l)));
        }
        Value::Object(o)
    }

    /// Whether a parent that last saw `before` now sees a different
    /// subtree: the mode, the count in any state, the clusters rolled up,
    /// or the subtree lead (gained, lost, or moved by more than
    /// [`LEAD_CHANGE`] and 5 ms) — what a parent gates, counts and
    /// schedules by. Impedance figures alone do not count: they move with
    /// every heartbeat.
    pub fn differs_for_parent(&self, before: &Summary) -> bool {
        let lead_moved = match (self.subtree_lead_ms, before.subtree_lead_ms) {
            (Some(a), Some(b)) => (a - b).abs() > (LEAD_CHANGE * b.abs()).max(5.0),
            (a, b) => a.is_some() != b.is_some(),
        };
        self.mode != before.mode
            || self.agents != before.agents
            || self.by_state != before.by_state
            || self.clusters != before.clusters
            || lead_moved
    }
}

/// A change of the subtree lead, as a share of the last one a parent saw,
/// that a parent should hear of before the next periodic summary.
pub const LEAD_CHANGE: f64 = 0.25;

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, state: AgentState, z: Option<f64>) -> Member<'_> {
        Member {
            id,
            state,
            impedance_ms: z,
        }
    }

    #[test]
    fn a_parent_hears_of_what_it_acts_on_not_of_impedance_noise() {
        let at = |active: usize, lead: Option<f64>, z: f64| {
            let mut members: Vec<Member<'_>> = (0..active)
                .map(|_| m("a", AgentState::Active, Some(z)))
                .collect();
            members.extend((active..4).map(|_| m("b", AgentState::Offline, None)));
            let mut s = Summary::of(members);
            s.subtree_lead_ms = lead;
            s
        };
        let before = at(4, Some(100.0), 10.0);
        // impedance alone, and a lead within 25%: nothing to say
        assert!(!at(4, Some(100.0), 14.0).differs_for_parent(&before));
        assert!(!at(4, Some(124.0), 10.0).differs_for_parent(&before));
        // counts and mode, a lead moved by more than 25%, gained or lost
        assert!(at(3, Some(100.0), 10.0).differs_for_parent(&before));
        assert!(at(0, Some(100.0), 10.0).differs_for_parent(&before));
        assert!(at(4, Some(126.0), 10.0).differs_for_parent(&before));
        assert!(at(4, Some(74.0), 10.0).differs_for_parent(&before));
        assert!(at(4, None, 10.0).differs_for_parent(&before));
        assert!(at(4, Some(100.0), 10.0).differs_for_parent(&at(4, None, 10.0)));
        // a small lead moves by at least 5 ms before it counts
        assert!(!at(4, Some(6.0), 10.0).differs_for_parent(&at(4, Some(2.0), 10.0)));
        assert!(at(4, Some(8.0), 10.0).differs_for_parent(&at(4, Some(2.0), 10.0)));
    }

    #[test]
    fn mode_boundaries_are_inclusive() {
        assert_eq!(Mode::of(19, 20), Mode::Full); // exactly 95%
        assert_eq!(Mode::of(18, 20), Mode::DegradedLight); // 90%
        assert_eq!(Mode::of(16, 20), Mode::DegradedLight); // 80%
        assert_eq!(Mode::of(15, 20), Mode::DegradedModerate); // 75%
        assert_eq!(Mode::of(12, 20), Mode::DegradedModerate); // 60%
        assert_eq!(Mode::of(11, 20), Mode::DegradedSevere); // 55%
        assert_eq!(Mode::of(6, 20), Mode::DegradedSevere); // 30%
        assert_eq!(Mode::of(5, 20), Mode::Emergency); // 25%
        assert_eq!(Mode::of(0, 3), Mode::Emergency);
        assert_eq!(Mode::of(0, 0), Mode::Full);
        // 94.99…% is not 95%
        assert_eq!(Mode::of(1899, 2000), Mode::DegradedLight);
    }

    #[test]
    fn counts_impedance_and_extremes() {
        let s = Summary::of([
            m("a", AgentState::Active, Some(10.0)),
            m("b", AgentState::Active, Some(30.0)),
            m("c", AgentState::Degraded, Some(200.0)),
            m("d", AgentState::Offline, Some(5.0)), // stale figure: ignored
            m("e", AgentState::Suspect, None),
            m("f", AgentState::Quarantined, Some(1.0)),
        ]);
        assert_eq!((s.agents, s.active), (6, 2));
        let count = |st| s.by_state.iter().find(|(x, _)| *x == st).unwrap().1;
        assert_eq!(count(AgentState::Active), 2);
        assert_eq!(count(AgentState::Degraded), 1);
        assert_eq!(count(AgentState::Offline), 1);
        assert_eq!(count(AgentState::Suspect), 1);
        assert_eq!(count(AgentState::Quarantined), 1);
        assert_eq!(count(AgentState::ClockSkewed), 0);
        assert_eq!(s.impedance_mean_ms, Some(80.0));
        assert_eq!(s.impedance_p95_ms, Some(200.0));
        assert_eq!(s.fastest, Some(("a".into(), 10.0)));
        assert_eq!(s.slowest, Some(("c".into(), 200.0)));
        assert_eq!(s.mode, Mode::DegradedSevere); // 2 of 6 ≥ 30%
    }

    #[test]
    fn p95_is_the_nearest_rank() {
        let ids: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
        let s = Summary::of(ids.iter().enumerate().map(|(i, id)| {
            m(
                id,
                AgentState::Active,
                Some(f64::from(u32::try_from(i).unwrap() + 1)),
            )
        }));
        assert_eq!(s.impedance_p95_ms, Some(95.0));
        assert_eq!(s.impedance_mean_ms, Some(50.5));
        assert_eq!(s.mode, Mode::Full);
        let one = Summary::of([m("x", AgentState::Active, Some(7.0))]);
        assert_eq!(one.impedance_p95_ms, Some(7.0));
        // ties: the smaller id is fastest, the larger slowest
        let tie = Summary::of([
            m("b", AgentState::Active, Some(5.0)),
            m("a", AgentState::Active, Some(5.0)),
        ]);
        assert_eq!(tie.fastest.unwrap().0, "a");
        assert_eq!(tie.slowest.unwrap().0, "b");
    }

    #[test]
    fn a_summary_reads_back_from_its_json() {
        let s = Summary::of([
            m("a", AgentState::Active, Some(10.0)),
            m("b", AgentState::Offline, None),
            m("c", AgentState::Degraded, Some(30.4)),
        ]);
        // (figures the JSON's 0.1 ms rounding keeps)
        let v = s.to_value("c1", 5);
        let (cluster, back) = Summary::from_value(&v).unwrap();
        assert_eq!(cluster, "c1");
        assert_eq!(back, s);
        // wrong or missing fields are refused, not guessed
        let mut broken = v.as_object().unwrap().clone();
        broken.insert("agents", Value::from("three"));
        assert!(Summary::from_value(&Value::Object(broken)).is_none());
        assert!(Summary::from_value(&Value::from("x")).is_none());
    }

    #[test]
    fn rollup_sums_counts_weights_means_and_names_clusters() {
        let c1 = Summary::of([
            m("a", AgentState::Active, Some(10.0)),
            m("b", AgentState::Active, Some(20.0)),
            m("c", AgentState::Offline, None),
        ]);
        let c2 = Summary::of([m("d", AgentState::Degraded, Some(90.0))]);
        let empty = Summary::of([]);
        let r = Summary::rollup([("c1", &c1), ("c2", &c2), ("c3", &empty)]);
        assert_eq!((r.agents, r.active, r.clusters), (4, 2, Some(3)));
        let count = |st| r.by_state.iter().find(|(x, _)| *x == st).unwrap().1;
        assert_eq!(count(AgentState::Offline), 1);
        assert_eq!(count(AgentState::Degraded), 1);
        // c1: mean 15 over 2 reachable; c2: 90 over 1 → 40
        assert_eq!(r.impedance_mean_ms, Some(40.0));
        assert_eq!(r.impedance_p95_ms, Some(90.0));
        assert_eq!(r.slowest, Some(("c2".into(), 90.0)));
        assert_eq!(r.fastest, Some(("c1".into(), 15.0)));
        assert_eq!(r.mode, Mode::DegradedSevere); // 2 of 4
        let text = String::from_utf8(crate::canonical::to_vec(&r.to_value("s1", 1))).unwrap();
        assert!(text.contains("\"slowest\":{\"cluster\":\"c2\""), "{text}");
        assert!(text.contains("\"clusters\":3"), "{text}");
        // a roll-up rolls up again (sector → top)
        let (_, back) = Summary::from_value(&r.to_value("s1", 1)).unwrap();
        let top = Summary::rollup([("s1", &back)]);
        assert_eq!((top.agents, top.active), (4, 2));
        assert_eq!(top.impedance_mean_ms, Some(40.0));
    }

    #[test]
    fn empty_cluster_and_json() {
        let s = Summary::of([]);
        assert_eq!((s.agents, s.active, s.mode), (0, 0, Mode::Full));
        assert_eq!(s.impedance_mean_ms, None);
        let s = Summary::of([m("pi-1", AgentState::Active, Some(12.34))]);
        let text = crate::canonical::to_vec(&s.to_value("c1", 1000));
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("\"mode\":\"FULL\""), "{text}");
        assert!(
            text.contains("\"fastest\":{\"agent\":\"pi-1\",\"impedance_ms\":12.3}"),
            "{text}"
        );
        assert!(text.contains("\"by_state\":{\"active\":1,"), "{text}");
    }
}
