//! The wall clock, read in one place, and what an entry's `clock` names
//! of this boot (PROTOCOL §7). The pure core takes `now` as an argument;
//! the shells read it here.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the epoch (0 before 1970).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id` under `root`),
/// or `"unknown"`.
pub fn boot_id(root: &Path) -> String {
    std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// CLOCK_BOOTTIME in ms: time since boot, including suspend.
pub fn boottime_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1000 + u64::try_from(t.tv_nsec / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_and_boottime() {
        let id = boot_id(Path::new("/"));
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(boot_id(Path::new("/nonexistent")), "unknown");
        let a = boottime_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = boottime_ms();
        assert!(a > 0 && b >= a + 20, "{a} {b}");
    }
}
