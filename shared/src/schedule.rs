//! Arrival-time scheduling (PROTOCOL §9), the sender's side: throw to
//! where the receiver will be. For each selected child the sender computes
//! a lead from what it has measured of that child and sends at
//! `send_at = T − lead`, so that the child is prepared by T; a child that
//! cannot be reached in time, or must not be, is skipped with its reason
//! and the lead it would have needed.
//!
//! The lead, in ms:
//!
//! ```text
//! one_way    = RTT / 2
//! processing = P · (1 + w) · (1 + Q / 1000)
//! margin     = MARGIN_FLOOR_MS + MARGIN_SIGMAS · D · (one_way + processing)
//! lead       = one_way + processing + margin + S
//! ```
//!
//! with RTT the child's median round trip, P its median processing time, w
//! the command's `weight`, Q its queue depth, D its drift (the RTT's
//! coefficient of variation: jitter, independent of scale) and S the
//! subtree lead a child gateway reports (`subtree_lead_ms`, 0 for an
//! agent). The margin is about three standard deviations of what the
//! child's own spread predicts, never under 2 ms. The child is predicted
//! ready at `send_at + lead − margin = T − margin`.
//!
//! The operating mode's gate (what each mode still lets through):
//!
//! | mode | priorities sent | always |
//! |---|---|---|
//! | `FULL` | 0–3 | `freeze`, `thaw`, `observe` |
//! | `DEGRADED_LIGHT` | 1–3 | 〃 |
//! | `DEGRADED_MODERATE` | 2–3 | 〃 |
//! | `DEGRADED_SEVERE` | 3 | 〃 |
//! | `EMERGENCY` | none | 〃 |
//!
//! Control verbs pass in every mode: freezing a failing fleet, lifting a
//! freeze and looking at it are what an operator needs most when it fails.

use crate::command::{Command, Verb};
use crate::summary::Mode;

/// The margin's floor, ms.
pub const MARGIN_FLOOR_MS: f64 = 2.0;
/// Standard deviations of spread the margin covers.
pub const MARGIN_SIGMAS: f64 = 3.0;

/// What a sender has measured of one child (its heartbeats' impedance
/// profile, or a child gateway's summary).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measured {
    pub rtt_ms: f64,
    pub processing_ms: f64,
    pub queue_depth: u64,
    pub drift: f64,
    /// A child gateway's reported subtree lead (p95); `None` for an agent.
    pub subtree_lead_ms: Option<f64>,
}

/// A lead and its parts, ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lead {
    pub one_way_ms: f64,
    pub processing_ms: f64,
    pub margin_ms: f64,
    pub subtree_ms: f64,
}

impl Lead {
    /// The lead for a command of `weight` to a child measured as `m`.
    /// Measures that are not finite or negative count as 0.
    pub fn of(m: &Measured, weight: f64) -> Lead {
        let clean = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
        let one_way = clean(m.rtt_ms) / 2.0;
        #[allow(clippy::cast_precision_loss)]
        let queue = m.queue_depth as f64;
        let processing = clean(m.processing_ms) * (1.0 + clean(weight)) * (1.0 + queue / 1000.0);
        let margin = MARGIN_FLOOR_MS + MARGIN_SIGMAS * clean(m.drift) * (one_way + processing);
        Lead {
            one_way_ms: one_way,
            processing_ms: processing,
            margin_ms: margin,
            subtree_ms: clean(m.subtree_lead_ms.unwrap_or(0.0)),
        }
    }

    /// The whole lead, whole ms (rounded up: early is on time, late is not).
    pub fn total_ms(&self) -> i64 {
        let t = (self.one_way_ms + self.processing_ms + self.margin_ms + self.subtree_ms).ceil();
        // Bounded: a lead past a day is as good as never.
        #[allow(clippy::cast_possible_truncation)]
        let t = t.min(86_400_000.0) as i64;
        t
    }

    pub fn margin_whole_ms(&self) -> i64 {
        #[allow(clippy::cast_possible_truncation)]
        let m = self.margin_ms.ceil().min(86_400_000.0) as i64;
        m
    }
}

/// Why a child is not sent to (PROTOCOL §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    Late,
    BreakerOpen,
    Offline,
    Quarantined,
    Priority,
    Frozen,
}

impl SkipReason {
    pub const ALL: [SkipReason; 6] = [
        SkipReason::Late,
        SkipReason::BreakerOpen,
        SkipReason::Offline,
        SkipReason::Quarantined,
        SkipReason::Priority,
        SkipReason::Frozen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Late => "late",
            SkipReason::BreakerOpen => "breaker_open",
            SkipReason::Offline => "offline",
            SkipReason::Quarantined => "quarantined",
            SkipReason::Priority => "priority",
            SkipReason::Frozen => "frozen",
        }
    }

    pub fn parse(s: &str) -> Option<SkipReason> {
        SkipReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Whether the operating mode lets a command through (the table above).
pub fn mode_allows(mode: Mode, priority: u8, verb: Verb) -> bool {
    if matches!(verb, Verb::Freeze | Verb::Thaw | Verb::Observe) {
        return true;
    }
    let least = match mode {
        Mode::Full => 0,
        Mode::DegradedLight => 1,
        Mode::DegradedModerate => 2,
        Mode::DegradedSevere => 3,
        Mode::Emergency => return false,
    };
    priority >= least
}

/// What the sender knows of a child's condition now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Condition {
    pub offline: bool,
    pub quarantined: bool,
    /// Frozen by a command (only `thaw` and `observe` reach it).
    pub frozen: bool,
    /// Its circuit breaker refuses a send now.
    pub breaker_open: bool,
}

/// The plan for one child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    Send {
        send_at_ms: i64,
        lead: Lead,
        predicted_ready_ms: i64,
    },
    Skip {
        reason: SkipReason,
        /// The lead it would have needed.
        lead: Lead,
    },
}

impl Plan {
    pub fn lead(&self) -> &Lead {
        match self {
            Plan::Send { lead, .. } | Plan::Skip { lead, .. } => lead,
        }
    }
}

/// Plans `c` for one child at time `now_ms` under `mode`. The reasons are
/// checked in the order a fleet operator reads them: what the child is
/// (quarantined, offline, frozen), then what the sender refuses (breaker,
/// mode), then time.
pub fn plan(c: &Command, now_ms: i64, m: &Measured, cond: Condition, mode: Mode) -> Plan {
    let lead = Lead::of(m, c.weight);
    let skip = |reason| Plan::Skip { reason, lead };
    if cond.quarantined {
        return skip(SkipReason::Quarantined);
    }
    if cond.offline {
        return skip(SkipReason::Offline);
    }
    if cond.frozen && !c.verb.passes_freeze() {
        return skip(SkipReason::Frozen);
    }
    if cond.breaker_open {
        return skip(SkipReason::BreakerOpen);
    }
    if !mode_allows(mode, c.priority, c.verb) {
        return skip(SkipReason::Priority);
    }
    let send_at_ms = c.target_ms.saturating_sub(lead.total_ms());
    if send_at_ms < now_ms {
        return skip(SkipReason::Late);
    }
    Plan::Send {
        send_at_ms,
        lead,
        predicted_ready_ms: c.target_ms - lead.margin_whole_ms(),
    }
}

/// Spreads a burst: the sender itself is a queue (signing, its client, the
/// broker's fan-out each take time per delivery), so deliveries due at the
/// same instant leave one after another and the last of them arrives late.
/// Taken latest first, each send is moved to at least `spacing_ms` before
/// the next — never later than planned, never before `now_ms` — so the
/// queue drains by the time each is due; a send moved earlier is predicted
/// ready as much earlier (the queue it was spread for is gone). Skips are
/// left as they are.
pub fn pace(plans: &mut [Plan], spacing_ms: f64, now_ms: i64) {
    if !(spacing_ms.is_finite() && spacing_ms > 0.0) {
        return;
    }
    let mut sends: Vec<usize> = (0..plans.len())
        .filter(|i| matches!(plans[*i], Plan::Send { .. }))
        .collect();
    let at = |p: &Plan| match p {
        Plan::Send { send_at_ms, .. } => *send_at_ms,
        Plan::Skip { .. } => i64::MIN,
    };
    sends.sort_by_key(|i| std::cmp::Reverse(at(&plans[*i])));
    let mut cursor = f64::INFINITY;
    for i in sends {
        if let Plan::Send {
            send_at_ms,
            predicted_ready_ms,
            ..
        } = &mut plans[i]
        {
            #[allow(clippy::cast_precision_loss)]
            let due = (*send_at_ms as f64).min(cursor - spacing_ms);
            cursor = due;
            #[allow(clippy::cast_possible_truncation)]
            let whole = due.floor().max(-9.0e15) as i64;
            let paced = whole.max(now_ms).min(*send_at_ms);
            *predicted_ready_ms -= *send_at_ms - paced;
            *send_at_ms = paced;
        }
    }
}

/// When to send again to a child that has not answered: its lead plus one
/// round trip after the last send, while that is before T + `window_ms`.
pub fn resend_at(c: &Command, sent_ms: i64, lead: &Lead) -> Option<i64> {
    #[allow(clippy::cast_possible_truncation)]
    let rtt = (2.0 * lead.one_way_ms).ceil().min(86_400_000.0) as i64;
    let at = sent_ms + lead.total_ms() + rtt.max(1);
    (at < c.deadline_ms()).then_some(at)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::command::Draft;
    use crate::json::{Object, Value};
    use crate::{AgentId, CommandId};

    fn command(verb: Verb, priority: u8, weight: f64) -> Command {
        Draft {
            issuer: AgentId::new("gw-top").unwrap(),
            id: CommandId::new("c-1").unwrap(),
            issued_ms: 1_000_000,
            target_ms: 1_002_000,
            window_ms: 50,
            expires_ms: 1_010_000,
            priority,
            verb,
            payload: Value::Object(Object::new()),
            weight,
            select: None,
            quorum: None,
        }
        .build()
        .unwrap()
    }

    #[test]
    fn the_lead_is_the_documented_sum() {
        let m = Measured {
            rtt_ms: 20.0,
            processing_ms: 4.0,
            queue_depth: 500,
            drift: 0.1,
            subtree_lead_ms: Some(30.0),
        };
        let l = Lead::of(&m, 1.5);
        assert_eq!(l.one_way_ms, 10.0);
        assert_eq!(l.processing_ms, 4.0 * 2.5 * 1.5);
        assert!((l.margin_ms - (2.0 + 3.0 * 0.1 * 25.0)).abs() < 1e-9);
        assert_eq!(l.total_ms(), (10.0f64 + 15.0 + 9.5 + 30.0).ceil() as i64);
        // garbage measures read as nothing, never as a negative lead
        let bad = Measured {
            rtt_ms: f64::NAN,
            processing_ms: -5.0,
            drift: f64::INFINITY,
            ..Measured::default()
        };
        assert_eq!(Lead::of(&bad, -1.0).total_ms(), 2);
    }

    #[test]
    fn a_child_is_sent_at_t_minus_its_lead_or_skipped_with_its_reason() {
        let c = command(Verb::Act, 2, 1.0);
        let m = Measured {
            rtt_ms: 40.0,
            processing_ms: 10.0,
            ..Measured::default()
        };
        let ok = Condition::default();
        let Plan::Send {
            send_at_ms,
            lead,
            predicted_ready_ms,
        } = plan(&c, c.issued_ms, &m, ok, Mode::Full)
        else {
            panic!()
        };
        assert_eq!(send_at_ms, c.target_ms - lead.total_ms());
        assert_eq!(predicted_ready_ms, c.target_ms - 2);
        // too late to make it
        let late = plan(&c, send_at_ms + 1, &m, ok, Mode::Full);
        assert!(matches!(
            late,
            Plan::Skip {
                reason: SkipReason::Late,
                ..
            }
        ));
        let why = |cond: Condition, mode: Mode| match plan(&c, c.issued_ms, &m, cond, mode) {
            Plan::Skip { reason, .. } => Some(reason),
            Plan::Send { .. } => None,
        };
        let with = |f: fn(&mut Condition)| {
            let mut x = Condition::default();
            f(&mut x);
            x
        };
        assert_eq!(
            why(with(|x| x.quarantined = true), Mode::Full),
            Some(SkipReason::Quarantined)
        );
        assert_eq!(
            why(with(|x| x.offline = true), Mode::Full),
            Some(SkipReason::Offline)
        );
        assert_eq!(
            why(with(|x| x.frozen = true), Mode::Full),
            Some(SkipReason::Frozen)
        );
        assert_eq!(
            why(with(|x| x.breaker_open = true), Mode::Full),
            Some(SkipReason::BreakerOpen)
        );
        assert_eq!(why(ok, Mode::DegradedSevere), Some(SkipReason::Priority));
        assert_eq!(why(ok, Mode::DegradedModerate), None);
        // a thaw reaches a frozen child; an observe passes any mode
        let thaw = Command {
            verb: Verb::Thaw,
            ..c.clone()
        };
        assert!(matches!(
            plan(
                &thaw,
                c.issued_ms,
                &m,
                with(|x| x.frozen = true),
                Mode::Full
            ),
            Plan::Send { .. }
        ));
        assert!(mode_allows(Mode::Emergency, 0, Verb::Observe));
        assert!(!mode_allows(Mode::Emergency, 3, Verb::Act));
    }

    #[test]
    fn resends_stop_at_the_window() {
        let c = command(Verb::Act, 1, 0.0);
        let m = Measured {
            rtt_ms: 100.0,
            ..Measured::default()
        };
        let lead = Lead::of(&m, 0.0);
        let at = resend_at(&c, c.issued_ms, &lead).unwrap();
        assert_eq!(at, c.issued_ms + lead.total_ms() + 100);
        assert_eq!(resend_at(&c, c.deadline_ms() - 10, &lead), None);
    }

    #[test]
    fn a_burst_is_spread_backwards_from_its_latest_send() {
        let lead = Lead::of(&Measured::default(), 0.0);
        let send = |at| Plan::Send {
            send_at_ms: at,
            lead,
            predicted_ready_ms: at + 10,
        };
        let skip = Plan::Skip {
            reason: SkipReason::Late,
            lead,
        };
        // three due at 1 000, one at 900, a skip
        let mut plans = [send(1_000), send(1_000), skip, send(900), send(1_000)];
        pace(&mut plans, 0.5, 998);
        let at: Vec<i64> = plans
            .iter()
            .map(|p| match p {
                Plan::Send { send_at_ms, .. } => *send_at_ms,
                Plan::Skip { .. } => -1,
            })
            .collect();
        // 1000, 999.5, 999 → 1000, 999, 999; 900 stays (already early);
        // the skip is untouched
        assert_eq!(at, [1_000, 999, -1, 900, 999]);
        // never before now
        let mut plans = [send(1_000), send(1_000), send(1_000), send(1_000)];
        pace(&mut plans, 1.0, 998);
        assert_eq!(plans, [send(1_000), send(999), send(998), send(998)]);
        let mut plans = [send(1_000), send(1_000), send(1_000)];
        pace(&mut plans, 2.0, 0);
        let mut at: Vec<i64> = plans
            .iter()
            .map(|p| match p {
                Plan::Send { send_at_ms, .. } => *send_at_ms,
                Plan::Skip { .. } => -1,
            })
            .collect();
        at.sort_unstable();
        assert_eq!(at, [996, 998, 1_000]);
        // no spacing: nothing moves
        let mut plans = [send(1_000), send(1_000)];
        pace(&mut plans, 0.0, 0);
        assert_eq!(plans, [send(1_000), send(1_000)]);
    }
}
