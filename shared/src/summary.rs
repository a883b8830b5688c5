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
        }
    }

    /// The summary as a JSON object (for HTTP, MQTT and the chain).
    pub fn to_value(&self, cluster: &str, unix_ms: i64) -> Value {
        // Counts and milliseconds: far inside binary64's exact range.
        #[allow(clippy::cast_precision_loss)]
        let num = |x: usize| Value::Number(x as f64);
        let ms =
            |v: Option<f64>| v.map_or(Value::Null, |x| Value::Number((x * 10.0).round() / 10.0));
        let who = |v: &Option<(String, f64)>| match v {
            Some((id, z)) => {
                let mut o = Object::new();
                o.insert("agent", Value::from(id.as_str()));
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
        Value::Object(o)
    }
}

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
