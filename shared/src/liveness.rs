//! Liveness: a phi-accrual failure detector over heartbeat arrivals, an
//! agent's impedance baseline, and the rule that turns these signals into
//! the state an operator sees.
//!
//! The detector (Hayashibara et al., "The φ accrual failure detector")
//! answers "how surprising is this silence?" rather than "is it dead?":
//! `phi = -log10(P(a heartbeat arrives later than now))` under a normal
//! distribution fitted to the recent inter-arrival times. phi 1 means a 10%
//! chance the agent is fine and merely late, phi 8 one in 10⁸. The normal
//! tail is computed with the logistic approximation
//! `F(y) ≈ 1 / (1 + e^(-y(1.5976 + 0.070566 y²)))` (error < 1.4·10⁻⁴), in a
//! form that stays finite for any silence. The standard deviation has a
//! floor (a tenth of the announced interval, at least 100 ms), so a
//! perfectly regular agent does not turn suspect at the first late packet.

use std::time::Duration;

use heapless::Deque;

/// Inter-arrival times the detector remembers.
pub const ARRIVALS: usize = 64;

/// Phi-accrual detector for one agent.
#[derive(Debug, Clone)]
pub struct PhiDetector {
    intervals_ms: Deque<f64, ARRIVALS>,
    last: Option<Duration>,
    announced_ms: f64,
}

impl PhiDetector {
    /// A detector for heartbeats announced every `interval`.
    pub fn new(interval: Duration) -> PhiDetector {
        PhiDetector {
            intervals_ms: Deque::new(),
            last: None,
            announced_ms: interval.as_secs_f64() * 1000.0,
        }
    }

    /// The agent announced another interval (heartbeats carry it).
    pub fn announce(&mut self, interval: Duration) {
        let ms = interval.as_secs_f64() * 1000.0;
        if (ms - self.announced_ms).abs() > f64::EPSILON {
            self.announced_ms = ms;
            self.intervals_ms.clear();
        }
    }

    /// A heartbeat arrived at `now`.
    pub fn heartbeat(&mut self, now: Duration) {
        if let Some(last) = self.last {
            let gap = now.saturating_sub(last).as_secs_f64() * 1000.0;
            if self.intervals_ms.is_full() {
                self.intervals_ms.pop_front();
            }
            let _ = self.intervals_ms.push_back(gap);
        }
        self.last = Some(now);
    }

    /// When the last heartbeat arrived.
    pub fn last(&self) -> Option<Duration> {
        self.last
    }

    /// Mean and standard deviation of the inter-arrival time, ms. Until
    /// there are two intervals the announced interval stands in.
    fn fit(&self) -> (f64, f64) {
        let floor = (self.announced_ms / 10.0).max(100.0);
        let n = self.intervals_ms.len();
        if n < 2 {
            return (self.announced_ms, floor);
        }
        #[allow(clippy::cast_precision_loss)]
        let count = n as f64;
        let mean = self.intervals_ms.iter().sum::<f64>() / count;
        let var = self
            .intervals_ms
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / count;
        (mean, var.sqrt().max(floor))
    }

    /// Suspicion at `now`: 0 before the first heartbeat is seen (there is
    /// nothing to be surprised about; presence covers that case).
    pub fn phi(&self, now: Duration) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let elapsed = now.saturating_sub(last).as_secs_f64() * 1000.0;
        let (mean, std) = self.fit();
        phi(elapsed, mean, std)
    }
}

/// `-log10(1 - F(elapsed))` for a normal distribution (`mean`, `std`).
pub fn phi(elapsed_ms: f64, mean_ms: f64, std_ms: f64) -> f64 {
    let y = (elapsed_ms - mean_ms) / std_ms;
    let z = y * (1.5976 + 0.070_566 * y * y);
    // 1 - F = 1 / (1 + e^z), so phi = log10(1 + e^z) = softplus(z) / ln 10.
    let softplus = if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    };
    softplus / std::f64::consts::LN_10
}

/// What an operator sees for an agent, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentState {
    /// Its chain forked or it was revoked: nothing more is accepted.
    Quarantined,
    /// Its last will fired, phi passed the offline threshold, or it was
    /// never seen since the gateway started.
    Offline,
    /// Heartbeats are late: phi passed the suspicion threshold.
    Suspect,
    /// Its clock is off by more than the tuning band.
    ClockSkewed,
    /// Alive, but its impedance is far above its own baseline, or it is
    /// throttled or too hot.
    Degraded,
    Active,
}

impl AgentState {
    pub const ALL: [AgentState; 6] = [
        AgentState::Active,
        AgentState::Degraded,
        AgentState::ClockSkewed,
        AgentState::Suspect,
        AgentState::Offline,
        AgentState::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Active => "active",
            AgentState::Degraded => "degraded",
            AgentState::ClockSkewed => "clock_skewed",
            AgentState::Suspect => "suspect",
            AgentState::Offline => "offline",
            AgentState::Quarantined => "quarantined",
        }
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The thresholds of [`classify`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// phi at which an agent becomes `suspect` (default 8).
    pub phi_suspect: f64,
    /// phi at which a silent agent becomes `offline` (default 16).
    pub phi_offline: f64,
    /// Largest clock offset still in tune, ms (default 2,000).
    pub clock_band_ms: i64,
    /// Temperature at which an agent counts as too hot, °C (default 80).
    pub hot_c: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            phi_suspect: 8.0,
            phi_offline: 16.0,
            clock_band_ms: 2_000,
            hot_c: 80.0,
        }
    }
}

/// The presence the agent's `state` messages last announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Nothing heard since the gateway started.
    Unknown,
    Online,
    /// The last will (or an orderly `offline`) of the current session.
    Offline,
}

/// Everything [`classify`] looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    pub quarantined: bool,
    pub presence: Presence,
    /// Whether a heartbeat was seen since the gateway started.
    pub heard: bool,
    pub phi: f64,
    pub clock_offset_ms: Option<i64>,
    /// Impedance now and the agent's own baseline, ms.
    pub impedance_ms: Option<f64>,
    pub baseline_ms: Option<f64>,
    pub temp_c: Option<f32>,
    /// Raspberry Pi `get_throttled` bits.
    pub throttled: Option<u32>,
}

/// An agent's impedance counts as far above its baseline when it exceeds
/// `DEGRADED_FACTOR ×` the baseline plus [`DEGRADED_SLACK_MS`] (the slack
/// keeps a 1 ms → 4 ms wobble on a quiet LAN from counting).
pub const DEGRADED_FACTOR: f64 = 3.0;
pub const DEGRADED_SLACK_MS: f64 = 20.0;

/// The state and a short reason (for state-change entries and the table).
pub fn classify(s: &Signals, t: &Thresholds) -> (AgentState, String) {
    if s.quarantined {
        return (AgentState::Quarantined, "chain halted".into());
    }
    if s.presence == Presence::Offline {
        return (AgentState::Offline, "last will".into());
    }
    if !s.heard {
        return (
            AgentState::Offline,
            "no heartbeat since the gateway started".into(),
        );
    }
    if s.phi >= t.phi_offline {
        return (AgentState::Offline, format!("silent, phi {:.1}", s.phi));
    }
    if s.phi >= t.phi_suspect {
        return (
            AgentState::Suspect,
            format!("heartbeats late, phi {:.1}", s.phi),
        );
    }
    if let Some(off) = s.clock_offset_ms
        && off.unsigned_abs() > t.clock_band_ms.unsigned_abs()
    {
        return (AgentState::ClockSkewed, format!("clock off by {off} ms"));
    }
    if let Some(bits) = s.throttled
        && bits & 0xF != 0
    {
        return (AgentState::Degraded, format!("throttled (0x{bits:x})"));
    }
    if let Some(c) = s.temp_c
        && c >= t.hot_c
    {
        return (AgentState::Degraded, format!("{c:.1} °C"));
    }
    if let (Some(z), Some(base)) = (s.impedance_ms, s.baseline_ms)
        && far_above(z, base)
    {
        return (
            AgentState::Degraded,
            format!("impedance {z:.0} ms, baseline {base:.0} ms"),
        );
    }
    (AgentState::Active, String::new())
}

/// An agent's own impedance baseline: an exponentially weighted mean,
/// a plain mean over the first [`Baseline::WARMUP`] heartbeats (no verdict
/// before), then weight [`Baseline::ALPHA`] per heartbeat (a time constant
/// of 50 heartbeats, about four minutes at 5 s) — but only a fortieth of that
/// while a sample is far above it, so a degradation stands out for about
/// half an hour before it becomes the agent's new normal (a device moved to
/// a slower link is not degraded for ever).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Baseline {
    mean: f64,
    samples: u32,
}

impl Baseline {
    pub const ALPHA: f64 = 0.02;
    pub const WARMUP: u32 = 6;

    pub fn add(&mut self, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        self.samples = self.samples.saturating_add(1);
        if self.samples <= Self::WARMUP {
            self.mean += (ms - self.mean) / f64::from(self.samples);
        } else if far_above(ms, self.mean) {
            self.mean += Self::ALPHA / 40.0 * (ms - self.mean);
        } else {
            self.mean += Self::ALPHA * (ms - self.mean);
        }
    }

    /// The baseline, once warmed up.
    pub fn get(&self) -> Option<f64> {
        (self.samples >= Self::WARMUP).then_some(self.mean)
    }
}

/// The degraded rule's comparison.
fn far_above(ms: f64, baseline: f64) -> bool {
    ms > baseline * DEGRADED_FACTOR + DEGRADED_SLACK_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn phi_grows_with_silence_and_matches_the_normal_tail() {
        // at the mean: half the heartbeats come later, phi = log10(2)
        assert!((phi(5000.0, 5000.0, 500.0) - 0.301).abs() < 0.001);
        // one standard deviation late: P ≈ 0.1587, phi ≈ 0.80
        assert!((phi(5500.0, 5000.0, 500.0) - 0.80).abs() < 0.01);
        // three: P ≈ 0.00135, phi ≈ 2.87
        assert!((phi(6500.0, 5000.0, 500.0) - 2.87).abs() < 0.05);
        // early: phi near 0; very late: large but finite
        assert!(phi(0.0, 5000.0, 500.0) < 1e-6);
        let far = phi(1e9, 5000.0, 500.0);
        assert!(far.is_finite() && far > 1e6);
        let mut last = 0.0;
        for t in (0..20_000).step_by(100) {
            let p = phi(f64::from(t), 5000.0, 500.0);
            assert!(p >= last, "phi must not fall as silence grows");
            last = p;
        }
    }

    #[test]
    fn detector_learns_the_rhythm_and_suspects_silence() {
        let mut d = PhiDetector::new(Duration::from_secs(5));
        assert_eq!(d.phi(MS(1_000_000)), 0.0);
        for i in 0..20 {
            d.heartbeat(MS(5000 * i));
        }
        let last = MS(5000 * 19);
        // on time: not suspicious
        assert!(d.phi(last + MS(5000)) < 1.0);
        // the std floor is 500 ms: 8 is crossed 5.3σ ≈ 2.7 s after the mean
        let t = Thresholds::default();
        let crossing = (5000..20_000)
            .step_by(10)
            .find(|&ms| d.phi(last + MS(ms)) >= t.phi_suspect)
            .unwrap();
        assert!((7_500..7_900).contains(&crossing), "{crossing}");
        let offline = (5000..20_000)
            .step_by(10)
            .find(|&ms| d.phi(last + MS(ms)) >= t.phi_offline)
            .unwrap();
        assert!(offline > crossing && offline < 10_000, "{offline}");
    }

    #[test]
    fn a_jittery_agent_is_given_more_slack() {
        let mut steady = PhiDetector::new(Duration::from_secs(1));
        let mut jittery = PhiDetector::new(Duration::from_secs(1));
        let (mut a, mut b) = (0u64, 0u64);
        for i in 0..60u64 {
            a += 1000;
            b += if i % 2 == 0 { 400 } else { 1600 };
            steady.heartbeat(MS(a));
            jittery.heartbeat(MS(b));
        }
        assert!(steady.phi(MS(a + 2000)) > jittery.phi(MS(b + 2000)) * 3.0);
        // a new announced interval forgets the old rhythm
        jittery.announce(Duration::from_secs(10));
        assert!(jittery.phi(MS(b + 2000)) < 0.5);
    }

    fn alive() -> Signals {
        Signals {
            quarantined: false,
            presence: Presence::Online,
            heard: true,
            phi: 0.5,
            clock_offset_ms: Some(3),
            impedance_ms: Some(12.0),
            baseline_ms: Some(10.0),
            temp_c: Some(55.0),
            throttled: Some(0),
        }
    }

    #[test]
    fn classification_takes_the_most_severe_signal() {
        let t = Thresholds::default();
        let state = |s: Signals| classify(&s, &t).0;
        assert_eq!(state(alive()), AgentState::Active);
        let hot = Signals {
            temp_c: Some(82.0),
            ..alive()
        };
        assert_eq!(state(hot), AgentState::Degraded);
        let throttled = Signals {
            throttled: Some(0x5_0005),
            ..alive()
        };
        assert_eq!(state(throttled), AgentState::Degraded);
        // throttled since boot only: fine now
        assert_eq!(
            state(Signals {
                throttled: Some(0x5_0000),
                ..alive()
            }),
            AgentState::Active
        );
        let slow = Signals {
            impedance_ms: Some(60.0),
            ..alive()
        };
        assert_eq!(state(slow), AgentState::Degraded);
        assert_eq!(
            state(Signals {
                impedance_ms: Some(45.0),
                ..alive()
            }),
            AgentState::Active
        );
        let skewed = Signals {
            clock_offset_ms: Some(-2_001),
            ..hot
        };
        assert_eq!(state(skewed), AgentState::ClockSkewed);
        let late = Signals { phi: 9.0, ..skewed };
        assert_eq!(state(late), AgentState::Suspect);
        let silent = Signals { phi: 16.0, ..late };
        assert_eq!(state(silent), AgentState::Offline);
        let gone = Signals {
            presence: Presence::Offline,
            phi: 0.0,
            ..alive()
        };
        assert_eq!(state(gone), AgentState::Offline);
        let unheard = Signals {
            heard: false,
            presence: Presence::Unknown,
            ..alive()
        };
        assert_eq!(state(unheard), AgentState::Offline);
        let halted = Signals {
            quarantined: true,
            ..gone
        };
        assert_eq!(state(halted), AgentState::Quarantined);
        let (_, why) = classify(&skewed, &t);
        assert_eq!(why, "clock off by -2001 ms");
    }

    #[test]
    fn baseline_warms_up_then_learns_slowly() {
        let mut b = Baseline::default();
        for _ in 0..5 {
            b.add(10.0);
        }
        assert_eq!(b.get(), None);
        b.add(16.0);
        assert_eq!(b.get(), Some(11.0));
        // a jump to 100 ms stands out for a long while: after 300
        // heartbeats (25 minutes at 5 s) it is still degraded …
        for _ in 0..300 {
            b.add(100.0);
        }
        assert!(far_above(100.0, b.get().unwrap()), "{:?}", b.get());
        // … but after 1,000 it is the new normal
        for _ in 0..700 {
            b.add(100.0);
        }
        assert!(!far_above(100.0, b.get().unwrap()), "{:?}", b.get());
        // while within the band the baseline follows at the full rate
        let mut c = Baseline::default();
        for _ in 0..6 {
            c.add(10.0);
        }
        c.add(20.0);
        assert!((c.get().unwrap() - 10.2).abs() < 1e-9);
        let base = b.get().unwrap();
        b.add(f64::NAN);
        b.add(-1.0);
        assert_eq!(b.get(), Some(base));
    }
}
