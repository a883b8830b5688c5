//! Reading a process's own figures from `/proc` (benchmarks and tools).

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`); 0 if absent.
pub fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises this process's open-file limit to its hard limit (a tool that
/// holds one connection per simulated agent needs thousands); returns the
/// soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_nothing_for_a_missing_field() {
        assert!(rss_kb(std::process::id(), "VmRSS:") > 0);
        assert_eq!(rss_kb(std::process::id(), "NoSuchField:"), 0);
    }
}
