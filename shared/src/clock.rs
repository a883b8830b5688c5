//! The clock exchange of PROTOCOL §7 ("delta negotiation"), as a pure
//! filter: the agent records each `time` request it sends, feeds every
//! `time/reply` with its receive time, and reads the best recent sample.
//!
//! - `offset = ((t1 − t0) + (t2 − t3)) / 2`, `rtt = (t3 − t0) − (t2 − t1)`,
//!   rounded to the nearest integer (halves away from zero);
//! - a reply whose id matches no request of the last 2 s is dropped, and so
//!   is a sample with rtt < 0;
//! - the estimate is the lowest-RTT sample of a recent window; `synced` is
//!   true iff a sample younger than 60 s exists.
//!
//! Time is a `Duration` on the caller's monotonic clock; wall times are i64
//! ms since the Unix epoch, as on the wire. Storage is fixed (heapless), so
//! a flood of replies cannot grow it.

use std::time::Duration;

use heapless::Deque;

use crate::entry::ClockInfo;
use crate::wire::TimeReply;

/// Requests answered later than this are dropped (PROTOCOL §7).
pub const REPLY_WITHIN: Duration = Duration::from_secs(2);
/// A sample younger than this makes the clock `synced`.
pub const SYNCED_WITHIN: Duration = Duration::from_secs(60);

/// Requests outstanding at once (more are forgotten, oldest first).
const PENDING: usize = 8;
/// Samples kept for the window.
const SAMPLES: usize = 32;

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub offset_ms: i64,
    pub rtt_ms: i64,
    /// When it was taken (caller's monotonic clock).
    pub at: Duration,
}

/// Why a reply was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("reply matches no request of the last 2 s")]
    Unknown,
    #[error("reply's t0 differs from the request's")]
    WrongT0,
    #[error("negative round-trip time {0} ms")]
    NegativeRtt(i64),
}

/// `(offset, rtt)` of the four timestamps, rounded to the nearest integer.
pub fn measure(t0: i64, t1: i64, t2: i64, t3: i64) -> (i64, i64) {
    // Sums of i64 ms timestamps: i128 so that no input overflows.
    let (t0, t1, t2, t3) = (
        i128::from(t0),
        i128::from(t1),
        i128::from(t2),
        i128::from(t3),
    );
    let twice = (t1 - t0) + (t2 - t3);
    // Halves away from zero: (2k+1)/2 → k+1 for positive, −(k+1) for negative.
    let offset = if twice >= 0 {
        (twice + 1) / 2
    } else {
        (twice - 1) / 2
    };
    let rtt = (t3 - t0) - (t2 - t1);
    let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
    (clamp(offset), clamp(rtt))
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: [u8; 8],
    t0: i64,
    sent: Duration,
}

/// The agent's side of the clock exchange.
#[derive(Debug, Clone)]
pub struct ClockFilter {
    window: Duration,
    pending: Deque<Pending, PENDING>,
    samples: Deque<Sample, SAMPLES>,
}

impl ClockFilter {
    /// `window`: how far back the lowest-RTT sample is chosen from.
    pub fn new(window: Duration) -> ClockFilter {
        ClockFilter {
            window,
            pending: Deque::new(),
            samples: Deque::new(),
        }
    }

    /// Records a `time` request sent at `now` with wall time `t0`.
    pub fn requested(&mut self, now: Duration, id: [u8; 8], t0: i64) {
        if self.pending.is_full() {
            self.pending.pop_front();
        }
        // Cannot fail: a slot was just made if there was none.
        let _ = self.pending.push_back(Pending { id, t0, sent: now });
    }

    /// Feeds a reply received at `now` (wall time `t3`).
    pub fn replied(
        &mut self,
        now: Duration,
        reply: &TimeReply,
        t3: i64,
    ) -> Result<Sample, Dropped> {
        let fresh = |p: &Pending| now.saturating_sub(p.sent) <= REPLY_WITHIN;
        let Some(i) = self
            .pending
            .iter()
            .position(|p| p.id == reply.id && fresh(p))
        else {
            return Err(Dropped::Unknown);
        };
        // Take the request out whatever the verdict: an id answers once.
        let mut kept: Deque<Pending, PENDING> = Deque::new();
        let mut request = None;
        for (j, p) in self.pending.iter().enumerate() {
            if j == i {
                request = Some(*p);
            } else if fresh(p) {
                let _ = kept.push_back(*p);
            }
        }
        self.pending = kept;
        let Some(request) = request else {
            return Err(Dropped::Unknown);
        };
        if request.t0 != reply.t0 {
            return Err(Dropped::WrongT0);
        }
        let (offset_ms, rtt_ms) = measure(reply.t0, reply.t1, reply.t2, t3);
        if rtt_ms < 0 {
            return Err(Dropped::NegativeRtt(rtt_ms));
        }
        let s = Sample {
            offset_ms,
            rtt_ms,
            at: now,
        };
        if self.samples.is_full() {
            self.samples.pop_front();
        }
        let _ = self.samples.push_back(s);
        Ok(s)
    }

    /// The lowest-RTT sample of the window ending at `now` (the newest of
    /// equals), if any.
    pub fn best(&self, now: Duration) -> Option<Sample> {
        self.samples
            .iter()
            .filter(|s| now.saturating_sub(s.at) <= self.window)
            .fold(None, |best: Option<Sample>, s| match best {
                Some(b) if b.rtt_ms < s.rtt_ms => Some(b),
                _ => Some(*s),
            })
    }

    /// True iff a sample younger than 60 s exists.
    pub fn synced(&self, now: Duration) -> bool {
        self.samples
            .iter()
            .any(|s| now.saturating_sub(s.at) < SYNCED_WITHIN)
    }

    /// The newest sample's RTT (for the impedance profile).
    pub fn last_rtt(&self) -> Option<i64> {
        self.samples.back().map(|s| s.rtt_ms)
    }

    /// The `clock` field for an entry appended at `now`.
    pub fn clock_info(&self, now: Duration, boot: &str, mono_ms: u64) -> ClockInfo {
        let best = self.best(now);
        ClockInfo {
            offset_ms: best.map_or(0, |s| s.offset_ms),
            rtt_ms: best.map_or(0, |s| s.rtt_ms),
            synced: self.synced(now),
            boot: boot.to_owned(),
            mono_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgentId;

    fn reply(id: u8, t0: i64, t1: i64, t2: i64) -> TimeReply {
        let request = crate::wire::TimeRequest {
            agent: AgentId::new("pi-1").unwrap(),
            id: [id; 8],
            t0,
        };
        let key = crate::SecretKey::from_seed(&[3; 32]);
        TimeReply::sign(&key, &AgentId::new("gw-1").unwrap(), &request, t1, t2)
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn offset_and_rtt_follow_the_protocol_formulas() {
        // gateway 500 ms ahead, 20 ms each way, 4 ms inside the gateway
        assert_eq!(measure(1000, 1520, 1524, 1044), (500, 40));
        // halves round away from zero
        assert_eq!(measure(0, 1, 1, 0), (1, 0));
        assert_eq!(measure(0, 0, 0, 1), (-1, 1));
        assert_eq!(measure(0, 2, 3, 4), (1, 3));
        // a device booted in 1970 against a 2026 gateway
        let (off, rtt) = measure(5_000, 1_795_460_700_010, 1_795_460_700_011, 5_021);
        assert_eq!(rtt, 20);
        assert_eq!(off, 1_795_460_695_000);
        // no overflow at the extremes
        let _ = measure(i64::MIN, i64::MAX, i64::MAX, i64::MIN);
    }

    #[test]
    fn replies_must_match_a_recent_request() {
        let mut f = ClockFilter::new(S(300));
        assert_eq!(
            f.replied(S(0), &reply(1, 0, 5, 5), 10),
            Err(Dropped::Unknown)
        );
        f.requested(S(10), [1; 8], 1000);
        // too late: more than 2 s after the request
        assert_eq!(
            f.replied(S(13), &reply(1, 1000, 1005, 1005), 1010),
            Err(Dropped::Unknown)
        );
        f.requested(S(20), [2; 8], 2000);
        assert_eq!(
            f.replied(S(20), &reply(2, 1999, 2005, 2005), 2010),
            Err(Dropped::WrongT0)
        );
        // answered once only
        assert_eq!(
            f.replied(S(20), &reply(2, 2000, 2005, 2005), 2010),
            Err(Dropped::Unknown)
        );
        f.requested(S(30), [3; 8], 3000);
        // t3 before t0 + the gateway's time: negative RTT, dropped
        assert_eq!(
            f.replied(S(30), &reply(3, 3000, 3100, 3200), 3050),
            Err(Dropped::NegativeRtt(-50))
        );
        assert!(f.best(S(30)).is_none());
        assert!(!f.synced(S(30)));
    }

    #[test]
    fn the_lowest_rtt_of_the_window_wins_and_synced_expires() {
        let mut f = ClockFilter::new(S(300));
        for (i, (at, rtt)) in [(0u64, 80i64), (10, 20), (20, 50)].into_iter().enumerate() {
            let id = [u8::try_from(i).unwrap(); 8];
            let t0 = 10_000 * (i as i64 + 1);
            f.requested(S(at), id, t0);
            // the gateway is 100 ms ahead; the path is symmetric
            let half = rtt / 2;
            let r = reply(id[0], t0, t0 + half + 100, t0 + half + 100);
            let s = f.replied(S(at), &r, t0 + rtt).unwrap();
            assert_eq!((s.offset_ms, s.rtt_ms), (100, rtt));
        }
        assert_eq!(f.best(S(20)).map(|s| s.rtt_ms), Some(20));
        let info = f.clock_info(S(20), "boot-1", 1234);
        assert_eq!((info.offset_ms, info.rtt_ms, info.synced), (100, 20, true));
        // the 20 ms sample leaves the window; the 50 ms one is best
        assert_eq!(f.best(S(315)).map(|s| s.rtt_ms), Some(50));
        assert!(!f.synced(S(81)));
        assert!(f.synced(S(79)));
        assert_eq!(f.last_rtt(), Some(50));
    }

    #[test]
    fn storage_is_bounded() {
        let mut f = ClockFilter::new(S(3600));
        for i in 0..1000u64 {
            let id = i.to_le_bytes();
            let t0 = i64::try_from(i).unwrap() * 1000;
            f.requested(Duration::from_millis(i), id, t0);
            let mut r = reply(0, t0, t0 + 5, t0 + 5);
            r.id = id;
            f.replied(Duration::from_millis(i), &r, t0 + 10).unwrap();
        }
        assert_eq!(f.samples.len(), SAMPLES);
        assert!(f.pending.is_empty());
    }
}
