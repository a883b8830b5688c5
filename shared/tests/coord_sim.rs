//! Seeded simulation of coordination (PROTOCOL §9) through two tiers: a
//! top plans a command for its cluster gateways, each cluster gateway for
//! its agents, with the real scheduler, breakers and gatherer. Every agent
//! has its own true latency, processing time, jitter and clock error; the
//! sender sees only a noisy measurement of them. Answers are lost,
//! duplicated and reordered; agents restart mid-command (their answer then
//! is `handler_failed`); cluster gateways fall silent. Checked for every
//! seed:
//!
//! 1. counts are conserved at every tier: selected = on time + late ready
//!    + conflict + transit + unanswered + skipped, and on time ≤ ready;
//! 2. the top's counts equal the truth summed over every agent;
//! 3. a plan sends at T − lead, never before now, and predicts T − margin;
//! 4. a final answer is never replaced, whatever order answers come in;
//! 5. with exact measurements and no faults, every agent the lead allows
//!    is READY by T, and every other one is skipped `late`;
//! 6. the decision is the rule's on the counts;
//! 7. a cluster whose agents always fail gets its breaker opened and is
//!    skipped `breaker_open` until its pause is over.
//!
//! `BATON_COORD_SEEDS=N` runs more seeds; `BATON_COORD_SEED=S` replays one.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use baton_shared::backoff::SplitMix64;
use baton_shared::breaker::{Breaker, BreakerConfig, is_failure};
use baton_shared::command::{
    Answer, Command, ConflictKind, Decision, Draft, Phase, Quorum, State, Verb,
};
use baton_shared::crypto::Hash;
use baton_shared::entry::Seq;
use baton_shared::gather::{Gather, Kind, read_result};
use baton_shared::json::{Object, Value};
use baton_shared::schedule::{Condition, Measured, Plan, SkipReason, plan};
use baton_shared::summary::Mode;
use baton_shared::{AgentId, CommandId};

struct Rng(SplitMix64);

impl Rng {
    fn unit(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let x = (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        x
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// One simulated agent: the truth, and what its gateway measured.
struct Device {
    id: AgentId,
    rtt_ms: f64,
    processing_ms: f64,
    drift: f64,
    /// Its corrected clock's residual error, ms.
    clock_error_ms: f64,
    measured: Measured,
    offline: bool,
    restarts: bool,
    loses_answers: bool,
}

struct Faults {
    noise: f64,
    loss: f64,
    restart: f64,
    offline: f64,
    silent_cluster: f64,
}

const NONE: Faults = Faults {
    noise: 0.0,
    loss: 0.0,
    restart: 0.0,
    offline: 0.0,
    silent_cluster: 0.0,
};

fn device(rng: &mut Rng, id: String, f: &Faults) -> Device {
    let rtt_ms = rng.range(2.0, 80.0);
    let processing_ms = rng.range(1.0, 40.0);
    let drift = rng.range(0.0, 0.2);
    let noisy = |rng: &mut Rng, x: f64| x * (1.0 + f.noise * rng.range(-1.0, 1.0));
    Device {
        id: AgentId::new(id).unwrap(),
        rtt_ms,
        processing_ms,
        drift,
        clock_error_ms: if f.noise > 0.0 {
            rng.range(-2.0, 2.0)
        } else {
            0.0
        },
        measured: Measured {
            rtt_ms: noisy(rng, rtt_ms),
            processing_ms: noisy(rng, processing_ms),
            queue_depth: 0,
            drift,
            subtree_lead_ms: None,
        },
        offline: rng.chance(f.offline),
        restarts: rng.chance(f.restart),
        loses_answers: rng.chance(f.loss),
    }
}

fn command(rng: &mut Rng, now: i64) -> Command {
    let target = now + 200 + rng.0.below(2_000) as i64;
    Draft {
        issuer: AgentId::new("gw-top").unwrap(),
        id: CommandId::new(format!("c-{}", rng.0.below(1 << 20))).unwrap(),
        issued_ms: now,
        target_ms: target,
        window_ms: 50,
        expires_ms: target + 5_000,
        priority: 2,
        verb: Verb::Act,
        payload: Value::Object(Object::new()),
        weight: rng.range(0.0, 2.0),
        select: None,
        quorum: None,
    }
    .build()
    .unwrap()
}

/// What actually happens to one agent for one command: the answers it
/// sends (in seq order) and the truth for the count.
fn run_agent(rng: &mut Rng, c: &Command, d: &Device, send_at: i64) -> (Vec<(Seq, Answer)>, Truth) {
    // jitter: this delivery's own latency and processing around the truth
    let spread = |rng: &mut Rng, x: f64| x * (1.0 + d.drift * rng.range(-1.0, 1.0));
    let arrive = send_at as f64 + spread(rng, d.rtt_ms) / 2.0;
    let ready = arrive + spread(rng, d.processing_ms) * (1.0 + c.weight);
    #[allow(clippy::cast_possible_truncation)]
    let (received_ms, ready_ms) = (
        (arrive + d.clock_error_ms) as i64,
        (ready + d.clock_error_ms).ceil() as i64,
    );
    let transit = Answer {
        hash: c.hash,
        state: State::Transit,
        received_ms,
        ready_ms: None,
        processing_ms: None,
        conflict: None,
        result: None,
    };
    let last = if d.restarts {
        Answer::conflict(
            c.hash,
            received_ms,
            ConflictKind::HandlerFailed,
            "restarted",
        )
    } else if c.on_time(ready_ms) {
        Answer {
            state: State::Ready,
            ready_ms: Some(ready_ms),
            ..transit.clone()
        }
    } else {
        Answer::conflict(
            c.hash,
            received_ms,
            ConflictKind::TemporalParadox,
            "not ready by T + window",
        )
    };
    let truth = Truth::of(&last);
    let mut answers = vec![(Seq(10), transit), (Seq(11), last)];
    // duplicates and reordering on the way
    if rng.chance(0.3) {
        let dup = answers[rng.0.below(2) as usize].clone();
        answers.push(dup);
    }
    for i in (1..answers.len()).rev() {
        let j = rng.0.below(i as u64 + 1) as usize;
        answers.swap(i, j);
    }
    (answers, truth)
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Truth {
    on_time: u64,
    conflict: u64,
    unanswered: u64,
    skipped: u64,
}

impl Truth {
    fn of(a: &Answer) -> Truth {
        match a.state {
            State::Ready => Truth {
                on_time: 1,
                ..Truth::default()
            },
            _ => Truth {
                conflict: 1,
                ..Truth::default()
            },
        }
    }
    fn add(&mut self, o: Truth) {
        self.on_time += o.on_time;
        self.conflict += o.conflict;
        self.unanswered += o.unanswered;
        self.skipped += o.skipped;
    }
}

fn check_conservation(g: &Gather, what: &str) {
    let c = g.counts();
    let t = c.tally;
    let skipped: u64 = c.skipped.values().sum();
    assert!(t.on_time <= t.ready, "{what}: {t:?}");
    assert_eq!(
        t.selected,
        t.ready + t.conflict + t.transit + t.unanswered + skipped,
        "{what}: {t:?} skipped {skipped}"
    );
}

fn check_plan(p: &Plan, c: &Command, now: i64) {
    if let Plan::Send {
        send_at_ms,
        lead,
        predicted_ready_ms,
    } = p
    {
        assert!(*send_at_ms >= now);
        assert_eq!(*send_at_ms, c.target_ms - lead.total_ms());
        assert_eq!(*predicted_ready_ms, c.target_ms - lead.margin_whole_ms());
    }
}

/// One command through top → clusters → agents; returns the top's gather
/// and the truth.
fn run(seed: u64, f: &Faults, clusters: usize, agents: usize) -> (Gather, Truth) {
    let mut rng = Rng(SplitMix64::new(seed));
    let now = 1_796_284_800_000;
    let c = command(&mut rng, now);
    let mut top = Gather::new(c.clone());
    let mut truth = Truth::default();
    for k in 0..clusters {
        let gw = AgentId::new(format!("gw-c{k:02}")).unwrap();
        let devices: Vec<Device> = (0..agents)
            .map(|i| device(&mut rng, format!("pi-c{k:02}-{i:03}"), f))
            .collect();
        let mut cluster = Gather::new(c.clone());
        let mut leads = Vec::new();
        for d in &devices {
            let cond = Condition {
                offline: d.offline,
                ..Condition::default()
            };
            let p = plan(&c, now, &d.measured, cond, Mode::Full);
            check_plan(&p, &c, now);
            cluster.planned(d.id.clone(), Kind::Agent, p);
            match p {
                Plan::Skip { .. } => truth.skipped += 1,
                Plan::Send {
                    send_at_ms, lead, ..
                } => {
                    leads.push(lead.total_ms());
                    let (answers, t) = run_agent(&mut rng, &c, d, send_at_ms);
                    if d.loses_answers {
                        truth.unanswered += 1;
                        continue;
                    }
                    truth.add(t);
                    let mut kept_final = None;
                    for (seq, a) in answers {
                        let ok = cluster
                            .agent_answer(&d.id, seq, Hash([1; 32]), a.clone())
                            .is_ok();
                        if ok && a.state.is_final() {
                            kept_final = Some(seq);
                        }
                    }
                    // the final answer (seq 11) is what is kept
                    assert_eq!(kept_final, Some(Seq(11)), "seed {seed}: {}", d.id);
                }
            }
        }
        check_conservation(&cluster, &format!("seed {seed} {gw}"));
        // the cluster reports its subtree lead; the top plans the cluster
        leads.sort_unstable();
        #[allow(clippy::cast_precision_loss)]
        let p95 = leads
            .get(leads.len().saturating_sub(1) * 95 / 100)
            .copied()
            .unwrap_or(0) as f64;
        let m = Measured {
            rtt_ms: 1.0,
            processing_ms: 0.5,
            queue_depth: 0,
            drift: 0.0,
            subtree_lead_ms: Some(p95),
        };
        let matching = agents as u64;
        top.planned(
            gw.clone(),
            Kind::Gateway { matching },
            plan(&c, now - 10_000, &m, Condition::default(), Mode::Full),
        );
        if rng.chance(f.silent_cluster) {
            // its result never arrives: its agents are unanswered at the top
            let t = cluster.counts().tally;
            truth.on_time -= t.on_time;
            truth.conflict -= t.conflict;
            truth.unanswered -= t.unanswered;
            truth.skipped -= cluster.counts().skipped.values().sum::<u64>();
            truth.unanswered += matching;
            continue;
        }
        let data = cluster.result_data(Phase::Window);
        let (hash, counts) = read_result(&data[0]).unwrap();
        assert_eq!(hash, c.hash);
        top.gateway_result(&gw, Seq(100), Hash([2; 32]), counts)
            .unwrap();
    }
    check_conservation(&top, &format!("seed {seed} top"));
    (top, truth)
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("BATON_COORD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("BATON_COORD_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    (1..=n).collect()
}

#[test]
fn counts_are_conserved_and_true_through_two_tiers_under_faults() {
    let faults = Faults {
        noise: 0.3,
        loss: 0.05,
        restart: 0.05,
        offline: 0.05,
        silent_cluster: 0.1,
    };
    for seed in seeds() {
        let (top, truth) = run(seed, &faults, 6, 40);
        let t = top.counts().tally;
        let skipped: u64 = top.counts().skipped.values().sum();
        assert_eq!(t.selected, 240, "seed {seed}");
        assert_eq!(
            (t.on_time, t.conflict, t.unanswered, skipped),
            (
                truth.on_time,
                truth.conflict,
                truth.unanswered,
                truth.skipped
            ),
            "seed {seed}"
        );
        // the decision is the rule's
        let q = Quorum::default();
        #[allow(clippy::cast_precision_loss)]
        let rate = |n: u64| n as f64 / t.selected as f64;
        let want = if rate(t.on_time) >= q.ready && rate(t.conflict) <= q.conflict {
            Decision::Proceed
        } else if rate(t.on_time) < q.ready && rate(t.transit + t.unanswered) > q.transit {
            Decision::Wait
        } else if rate(t.conflict) > q.conflict {
            Decision::ResolveConflicts
        } else {
            Decision::Retry
        };
        assert_eq!(t.decide(&q, Phase::Window), want, "seed {seed}");
    }
}

#[test]
fn with_exact_measurements_every_agent_is_ready_by_t() {
    for seed in seeds() {
        let (top, truth) = run(seed, &NONE, 3, 50);
        let counts = top.counts();
        let t = counts.tally;
        let late = counts.skipped.get(&SkipReason::Late).copied().unwrap_or(0);
        assert_eq!(t.on_time + late, 150, "seed {seed}: {t:?} {truth:?}");
        assert_eq!(late, truth.skipped, "seed {seed}: only `late` skips");
        if late == 0 {
            assert_eq!(
                t.decide(&Quorum::default(), Phase::Window),
                Decision::Proceed
            );
        }
        // and predictions are within the margin: errors under 2^k ms
        let p99 = top.counts().errors.quantile_upper_ms(0.99).unwrap();
        assert!(p99 <= 64, "seed {seed}: p99 error bucket {p99} ms");
    }
}

#[test]
fn a_failing_cluster_trips_its_breaker_and_is_skipped_until_the_pause_is_over() {
    let mut rng = Rng(SplitMix64::new(7));
    let mut breaker = Breaker::new(BreakerConfig::default());
    let m = Measured {
        rtt_ms: 5.0,
        ..Measured::default()
    };
    let mut skipped = 0;
    let mut now = Duration::from_secs(1);
    for round in 0..40 {
        let c = command(&mut rng, 1_796_284_800_000 + round * 1000);
        breaker.tick(now);
        let cond = Condition {
            breaker_open: !breaker.try_send(now),
            ..Condition::default()
        };
        match plan(&c, c.issued_ms, &m, cond, Mode::Full) {
            Plan::Skip {
                reason: SkipReason::BreakerOpen,
                ..
            } => skipped += 1,
            Plan::Send { .. } => {
                // failing until round 20, healthy after
                let answer = (round >= 20).then_some((State::Ready, None));
                breaker.record(now, is_failure(answer));
            }
            other => panic!("{other:?}"),
        }
        now += Duration::from_secs(5);
    }
    // opened after five failures, skipped for 30 s at a time, closed again
    assert!(skipped >= 6, "{skipped}");
    assert_eq!(breaker.position(now).as_str(), "closed");
}
