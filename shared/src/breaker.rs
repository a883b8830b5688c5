//! A circuit breaker per child (PROTOCOL §9's `breaker_open` skip): a
//! child that keeps failing commands is left alone for a while instead of
//! being sent more work it will fail, then probed, then trusted again.
//!
//! - **Closed**: every command goes. The last [`BreakerConfig::window`]
//!   outcomes are kept; once at least [`BreakerConfig::min_samples`] are
//!   in and the share of failures reaches
//!   [`BreakerConfig::failure_rate`], it opens.
//! - **Open**: nothing goes for [`BreakerConfig::open_for`]; then it is
//!   half-open.
//! - **Half-open**: at most [`BreakerConfig::probes`] commands go at once
//!   as probes. Any failure opens it again (for another `open_for`); when
//!   `probes` have succeeded and [`BreakerConfig::healthy_for`] has passed
//!   without a failure since it half-opened, it closes with a clean
//!   window.
//!
//! A failure is a command the child did not answer by T + `window_ms`, or
//! answered `handler_failed`, `temporal_paradox` or `clock_unsynced`
//! (it could not do its job); any other answer — READY, or a conflict that
//! informs (`capability_mismatch`, `frozen`, …) — is a success. The
//! defaults follow common practice (Hystrix and resilience4j open at a 50%
//! failure rate over a minimum number of calls and wait before probing a
//! few calls), scaled down for commands, which are far rarer than RPCs: 50%
//! of the last 20 with at least 5, 30 s open, 3 probes, 30 s healthy.
//! An operator's `heal` closes it at once ([`Breaker::reset`]).
//!
//! Memory per breaker is fixed (a bit ring). `now` is passed in.

use core::time::Duration;

use crate::command::{ConflictKind, State};

/// Thresholds (see the module description for the defaults' reasons).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Outcomes remembered (at most 64).
    pub window: u32,
    pub min_samples: u32,
    pub failure_rate: f64,
    pub open_for: Duration,
    pub probes: u32,
    pub healthy_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: 20,
            min_samples: 5,
            failure_rate: 0.5,
            open_for: Duration::from_secs(30),
            probes: 3,
            healthy_for: Duration::from_secs(30),
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Closed,
    Open {
        until: Duration,
    },
    HalfOpen {
        since: Duration,
        in_flight: u32,
        succeeded: u32,
    },
}

impl Position {
    pub fn as_str(&self) -> &'static str {
        match self {
            Position::Closed => "closed",
            Position::Open { .. } => "open",
            Position::HalfOpen { .. } => "half_open",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    position: Position,
    /// Outcome bits, newest at bit 0 (1 = failure).
    ring: u64,
    len: u32,
}

/// Whether an answer (or its absence) is a failure of the child.
pub fn is_failure(answer: Option<(State, Option<ConflictKind>)>) -> bool {
    match answer {
        None | Some((State::Transit, _)) => true,
        Some((State::Ready, _)) => false,
        Some((State::Conflict, kind)) => matches!(
            kind,
            Some(
                ConflictKind::HandlerFailed
                    | ConflictKind::TemporalParadox
                    | ConflictKind::ClockUnsynced
            )
        ),
    }
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg: BreakerConfig {
                window: cfg.window.clamp(1, 64),
                ..cfg
            },
            position: Position::Closed,
            ring: 0,
            len: 0,
        }
    }

    /// The position at `now` (an open breaker whose pause is over is
    /// half-open).
    pub fn position(&mut self, now: Duration) -> Position {
        if let Position::Open { until } = self.position
            && now >= until
        {
            self.position = Position::HalfOpen {
                since: now,
                in_flight: 0,
                succeeded: 0,
            };
        }
        self.position
    }

    /// Asks to send one command at `now`: `true` if it may go (a probe
    /// when half-open, counted until its outcome is recorded).
    pub fn try_send(&mut self, now: Duration) -> bool {
        match self.position(now) {
            Position::Closed => true,
            Position::Open { .. } => false,
            Position::HalfOpen {
                since,
                in_flight,
                succeeded,
            } => {
                if in_flight + succeeded >= self.cfg.probes.max(1) {
                    return false;
                }
                self.position = Position::HalfOpen {
                    since,
                    in_flight: in_flight + 1,
                    succeeded,
                };
                true
            }
        }
    }

    /// Records how a command sent to the child went.
    pub fn record(&mut self, now: Duration, failed: bool) {
        match self.position(now) {
            Position::Closed => {
                self.ring = (self.ring << 1) | u64::from(failed);
                self.len = (self.len + 1).min(self.cfg.window);
                if self.len < 64 {
                    self.ring &= (1u64 << self.len) - 1;
                }
                let failures = self.ring.count_ones();
                if self.len >= self.cfg.min_samples
                    && f64::from(failures) >= self.cfg.failure_rate * f64::from(self.len)
                {
                    self.trip(now);
                }
            }
            Position::Open { .. } => {}
            Position::HalfOpen {
                since,
                in_flight,
                succeeded,
            } => {
                if failed {
                    self.trip(now);
                    return;
                }
                let succeeded = succeeded + 1;
                if succeeded >= self.cfg.probes.max(1)
                    && now.saturating_sub(since) >= self.cfg.healthy_for
                {
                    self.reset();
                } else {
                    self.position = Position::HalfOpen {
                        since,
                        in_flight: in_flight.saturating_sub(1),
                        succeeded: succeeded.min(self.cfg.probes.max(1)),
                    };
                }
            }
        }
    }

    /// Half-open long enough with every probe answered well: closed. (A
    /// sender calls this on its timer, since a healthy child may simply
    /// not be sent more probes.)
    pub fn tick(&mut self, now: Duration) {
        if let Position::HalfOpen {
            since, succeeded, ..
        } = self.position(now)
            && succeeded >= self.cfg.probes.max(1)
            && now.saturating_sub(since) >= self.cfg.healthy_for
        {
            self.reset();
        }
    }

    fn trip(&mut self, now: Duration) {
        self.position = Position::Open {
            until: now + self.cfg.open_for,
        };
    }

    /// Closed with a clean window (healthy again, or an operator's `heal`).
    pub fn reset(&mut self) {
        self.position = Position::Closed;
        self.ring = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn opens_on_the_failure_rate_over_a_minimum_sample() {
        let mut b = Breaker::new(BreakerConfig::default());
        // four failures: under the minimum sample, still closed
        for _ in 0..4 {
            assert!(b.try_send(S(0)));
            b.record(S(0), true);
        }
        assert_eq!(b.position(S(0)), Position::Closed);
        b.record(S(1), true);
        assert_eq!(b.position(S(1)), Position::Open { until: S(31) });
        assert!(!b.try_send(S(10)));
        // a healthy child with a failure in three stays closed
        let mut h = Breaker::new(BreakerConfig::default());
        for i in 0..100 {
            h.record(S(i), i % 3 == 0);
        }
        assert_eq!(h.position(S(100)), Position::Closed);
    }

    #[test]
    fn half_open_probes_then_closes_after_a_healthy_period_or_opens_again() {
        let cfg = BreakerConfig::default();
        let mut b = Breaker::new(cfg);
        for _ in 0..5 {
            b.record(S(0), true);
        }
        assert!(matches!(b.position(S(30)), Position::HalfOpen { .. }));
        // three probes at most
        assert!(b.try_send(S(30)) && b.try_send(S(30)) && b.try_send(S(30)));
        assert!(!b.try_send(S(30)));
        for t in [31, 32, 33] {
            b.record(S(t), false);
        }
        // probes good, but not yet healthy for 30 s
        assert!(matches!(b.position(S(40)), Position::HalfOpen { .. }));
        b.tick(S(60));
        assert_eq!(b.position(S(60)), Position::Closed);

        // a failed probe opens it again
        let mut b = Breaker::new(cfg);
        for _ in 0..5 {
            b.record(S(0), true);
        }
        assert!(b.try_send(S(31)));
        b.record(S(32), true);
        assert_eq!(b.position(S(32)), Position::Open { until: S(62) });
    }

    #[test]
    fn what_counts_as_a_failure() {
        assert!(is_failure(None));
        assert!(is_failure(Some((State::Transit, None))));
        assert!(!is_failure(Some((State::Ready, None))));
        assert!(!is_failure(Some((
            State::Conflict,
            Some(ConflictKind::CapabilityMismatch)
        ))));
        assert!(is_failure(Some((
            State::Conflict,
            Some(ConflictKind::HandlerFailed)
        ))));
    }
}
