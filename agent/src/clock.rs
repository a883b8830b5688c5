//! The agent's side of the clock exchange (PROTOCOL §7): what the writer
//! stamps into every entry's `clock`, and where it comes from.
//!
//! The link runs the exchange (`baton-shared`'s [`ClockFilter`]) and
//! publishes its best sample here; the writer reads it once per group
//! commit. `boot` is the kernel's boot id and `mono_ms` CLOCK_BOOTTIME, so
//! entries of one boot can be ordered and spaced even when the wall clock
//! jumped (a Pi without RTC is in 1970 until NTP answers).
//!
//! [`ClockFilter`]: baton_shared::clock::ClockFilter

use std::sync::Mutex;
use std::time::Instant;

use baton_shared::clock::{SYNCED_WITHIN, Sample};
use baton_shared::entry::ClockInfo;
use baton_shared::wire::ClockEstimate;

/// The best clock sample and when the newest one was taken.
#[derive(Debug)]
pub struct ClockState {
    boot: String,
    best: Mutex<Option<(Sample, Instant)>>,
}

impl ClockState {
    pub fn new(boot: String) -> ClockState {
        ClockState {
            boot,
            best: Mutex::new(None),
        }
    }

    /// The link's current best sample (`None` after a clock jump).
    pub fn set(&self, best: Option<Sample>, newest_at: Instant) {
        *self
            .best
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = best.map(|s| (s, newest_at));
    }

    /// The estimate for heartbeats; `None` before any exchange succeeded.
    pub fn estimate(&self) -> Option<ClockEstimate> {
        let best = *self
            .best
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        best.map(|(s, at)| ClockEstimate {
            offset_ms: s.offset_ms,
            rtt_ms: s.rtt_ms,
            synced: at.elapsed() < SYNCED_WITHIN,
        })
    }

    /// The `clock` of an entry appended now.
    pub fn info(&self) -> ClockInfo {
        let e = self.estimate().unwrap_or_default();
        ClockInfo {
            offset_ms: e.offset_ms,
            rtt_ms: e.rtt_ms,
            synced: e.synced,
            boot: self.boot.clone(),
            mono_ms: baton_runtime::time::boottime_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_until_a_sample_then_stale_after_a_minute() {
        let c = ClockState::new("b".into());
        let info = c.info();
        assert_eq!(
            (info.offset_ms, info.synced, info.boot.as_str()),
            (0, false, "b")
        );
        assert!(c.estimate().is_none());
        let s = Sample {
            offset_ms: -7,
            rtt_ms: 3,
            at: std::time::Duration::ZERO,
        };
        c.set(Some(s), Instant::now());
        let e = c.estimate().unwrap();
        assert_eq!((e.offset_ms, e.rtt_ms, e.synced), (-7, 3, true));
        if let Some(old) = Instant::now().checked_sub(SYNCED_WITHIN) {
            c.set(Some(s), old);
            assert!(!c.estimate().unwrap().synced);
        }
    }
}
