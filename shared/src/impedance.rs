//! The impedance profile: how hard it is, right now, to get a message to
//! this agent and an answer back. Rolling windows of fixed size (heapless
//! rings: memory never grows) of link RTT and local processing time, the
//! current queue depth, and delivery reliability, summarised as
//!
//! - `latency_p50_ms`: median RTT of the last [`WINDOW`] samples;
//! - `processing_p50_ms`: median processing time (append → durable, and
//!   command handling when it exists) of the last [`WINDOW`] samples;
//! - `queue_depth`: what the agent last reported (unreceipted entries plus
//!   pending appends);
//! - `drift`: the RTT's coefficient of variation (standard deviation ÷
//!   mean; 0 with fewer than two samples): jitter, independent of scale;
//! - `reliability`: receipts received ÷ batches sent over the recent past
//!   (1 before anything was sent); the counts halve together past 1,024
//!   sends, so old history fades;
//! - `score`, 0–1000 (higher is easier to reach):
//!
//!   ```text
//!   score = 1000 · reliability · 1/(1 + L/100) · 1/(1 + P/10) · 1/(1 + Q/1000) · 1/(1 + D)
//!   ```
//!
//!   with L the latency p50 in ms, P the processing p50 in ms, Q the queue
//!   depth and D the drift: each factor halves the score when its measure
//!   reaches its reference (100 ms RTT, 10 ms processing, 1,000 queued
//!   entries, drift 1), so no single measure can make it negative or hide
//!   another. Rounded to the nearest integer.
//!
//! The *impedance* Z itself, in milliseconds, is the profile's prediction of
//! how long a message sent now takes until the agent has handled it (what
//! summaries average and the degraded rule compares with the agent's own
//! baseline):
//!
//! ```text
//! Z = (L + P) · (1 + Q/1000) · (1 + D) / max(R, 0.05)
//! ```
//!
//! a round trip plus processing, stretched by the queue ahead of it, by
//! jitter, and by retransmissions (1/R sends per delivery; R is floored so a
//! link that delivered nothing yet reads as 20× slow, not infinite).

use heapless::Deque;

/// Samples per rolling window.
pub const WINDOW: usize = 64;

/// The profile's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub latency_p50_ms: f64,
    pub processing_p50_ms: f64,
    pub queue_depth: u64,
    pub drift: f64,
    pub reliability: f64,
    pub score: u32,
}

/// Z in ms from the profile's figures (see the module documentation).
pub fn impedance_ms(
    latency: f64,
    processing: f64,
    queue: f64,
    drift: f64,
    reliability: f64,
) -> f64 {
    (latency + processing) * (1.0 + queue / 1000.0) * (1.0 + drift) / reliability.max(0.05)
}

impl Profile {
    /// Z in ms.
    pub fn impedance_ms(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let q = self.queue_depth as f64;
        impedance_ms(
            self.latency_p50_ms,
            self.processing_p50_ms,
            q,
            self.drift,
            self.reliability,
        )
    }
}

/// The rolling state.
#[derive(Debug, Clone, Default)]
pub struct Impedance {
    rtt_ms: Deque<f64, WINDOW>,
    processing_ms: Deque<f64, WINDOW>,
    queue_depth: u64,
    sent: u32,
    received: u32,
}

fn push(ring: &mut Deque<f64, WINDOW>, v: f64) {
    if !v.is_finite() || v < 0.0 {
        return;
    }
    if ring.is_full() {
        ring.pop_front();
    }
    // Cannot fail: a slot was just made if there was none.
    let _ = ring.push_back(v);
}

fn median(ring: &Deque<f64, WINDOW>) -> f64 {
    let mut v: heapless::Vec<f64, WINDOW> = ring.iter().copied().collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Impedance {
    pub fn new() -> Impedance {
        Impedance::default()
    }

    /// A link round trip (clock exchange or batch → receipt), ms.
    pub fn rtt(&mut self, ms: f64) {
        push(&mut self.rtt_ms, ms);
    }

    /// A local processing time (append → durable, command handling), ms.
    pub fn processing(&mut self, ms: f64) {
        push(&mut self.processing_ms, ms);
    }

    pub fn queue_depth(&mut self, depth: u64) {
        self.queue_depth = depth;
    }

    /// A batch went out.
    pub fn batch_sent(&mut self) {
        self.sent = self.sent.saturating_add(1);
        if self.sent > 1024 {
            self.sent /= 2;
            self.received /= 2;
        }
    }

    /// A receipt that advanced delivery came in.
    pub fn receipt_received(&mut self) {
        self.received = self.received.saturating_add(1).min(self.sent);
    }

    fn drift(&self) -> f64 {
        let n = self.rtt_ms.len();
        if n < 2 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let count = n as f64;
        let mean = self.rtt_ms.iter().sum::<f64>() / count;
        if mean <= 0.0 {
            return 0.0;
        }
        let var = self.rtt_ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / count;
        var.sqrt() / mean
    }

    /// The current figures.
    pub fn profile(&self) -> Profile {
        let latency = median(&self.rtt_ms);
        let processing = median(&self.processing_ms);
        let drift = self.drift();
        let reliability = if self.sent == 0 {
            1.0
        } else {
            f64::from(self.received) / f64::from(self.sent)
        };
        #[allow(clippy::cast_precision_loss)]
        let queue = self.queue_depth as f64;
        let score = 1000.0 * reliability
            / (1.0 + latency / 100.0)
            / (1.0 + processing / 10.0)
            / (1.0 + queue / 1000.0)
            / (1.0 + drift);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let score = score.round().clamp(0.0, 1000.0) as u32;
        Profile {
            latency_p50_ms: latency,
            processing_p50_ms: processing,
            queue_depth: self.queue_depth,
            drift,
            reliability,
            score,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_perfect_link_scores_1000() {
        let p = Impedance::new().profile();
        assert_eq!(p.score, 1000);
        assert_eq!((p.latency_p50_ms, p.drift, p.reliability), (0.0, 0.0, 1.0));
    }

    #[test]
    fn each_measure_at_its_reference_halves_the_score() {
        let mut i = Impedance::new();
        for _ in 0..10 {
            i.rtt(100.0);
        }
        assert_eq!(i.profile().score, 500);
        i.processing(10.0);
        assert_eq!(i.profile().score, 250);
        i.queue_depth(1000);
        assert_eq!(i.profile().score, 125);
        for _ in 0..4 {
            i.batch_sent();
        }
        i.receipt_received();
        i.receipt_received();
        let p = i.profile();
        assert_eq!(p.reliability, 0.5);
        assert_eq!(p.score, 63); // 62.5 rounds up
    }

    #[test]
    fn impedance_in_ms_on_scripted_samples() {
        let mut i = Impedance::new();
        assert_eq!(i.profile().impedance_ms(), 0.0);
        for _ in 0..3 {
            i.rtt(40.0);
            i.processing(10.0);
        }
        assert_eq!(i.profile().impedance_ms(), 50.0);
        i.queue_depth(500);
        assert_eq!(i.profile().impedance_ms(), 75.0);
        i.batch_sent();
        i.batch_sent();
        i.receipt_received();
        assert_eq!(i.profile().impedance_ms(), 150.0);
        // nothing delivered yet: 20× slow, not infinite
        assert_eq!(impedance_ms(10.0, 0.0, 0.0, 0.0, 0.0), 200.0);
        // the wire sample gives the same figure
        let sample = crate::wire::ImpedanceSample {
            latency_p50_ms: 40.0,
            processing_p50_ms: 10.0,
            queue_depth: 500,
            jitter: 0.0,
            reliability: 0.5,
            score: 0,
        };
        assert_eq!(sample.impedance_ms(), 150.0);
    }

    #[test]
    fn medians_and_drift_on_scripted_samples() {
        let mut i = Impedance::new();
        for ms in [10.0, 30.0, 20.0, 40.0] {
            i.rtt(ms);
        }
        let p = i.profile();
        assert_eq!(p.latency_p50_ms, 25.0);
        // mean 25, population sd sqrt(125) = 11.18…: cv 0.447…
        assert!(
            (p.drift - 125f64.sqrt() / 25.0).abs() < 1e-12,
            "{}",
            p.drift
        );
        // steady RTT: no drift
        let mut steady = Impedance::new();
        for _ in 0..5 {
            steady.rtt(42.0);
        }
        assert_eq!(steady.profile().drift, 0.0);
        // bad samples are ignored
        steady.rtt(f64::NAN);
        steady.rtt(-1.0);
        assert_eq!(steady.profile().latency_p50_ms, 42.0);
    }

    #[test]
    fn windows_roll_and_reliability_fades() {
        let mut i = Impedance::new();
        for _ in 0..WINDOW {
            i.rtt(500.0);
        }
        for _ in 0..WINDOW {
            i.rtt(5.0);
        }
        assert_eq!(
            i.profile().latency_p50_ms,
            5.0,
            "old samples left the window"
        );
        // a bad past, then a long good run: reliability recovers
        for _ in 0..1000 {
            i.batch_sent();
        }
        for _ in 0..5000 {
            i.batch_sent();
            i.receipt_received();
        }
        assert!(
            i.profile().reliability > 0.99,
            "{}",
            i.profile().reliability
        );
        // receipts never count above sends
        let mut j = Impedance::new();
        j.receipt_received();
        assert_eq!(j.profile().reliability, 1.0);
    }
}
