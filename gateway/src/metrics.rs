//! Counters behind `/metrics`. Each event that is counted is also logged
//! (rate-limited for bad input), so logs and metrics never disagree.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use baton_shared::wire::RejectReason;

/// Why a payload was dropped without an answer, or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadInput {
    /// Not on a topic this gateway serves.
    Topic,
    /// Did not decode (or trailing bytes, empty batch).
    Undecodable,
    /// Another wire version.
    Version,
    /// Over its size limit.
    TooLarge,
    /// The topic's `{agent}` differs from the payload's.
    AgentMismatch,
    /// No enrolled key for the agent.
    UnknownAgent,
    /// A liveness signal no agent could send (a `state` from the future,
    /// an absurd heartbeat interval): dropped, never a fact in the chain.
    Implausible,
    /// A signed message whose signature does not verify under the key
    /// trusted for its sender (a forged command answer).
    Forged,
}

impl BadInput {
    pub const ALL: [BadInput; 8] = [
        BadInput::Topic,
        BadInput::Undecodable,
        BadInput::Version,
        BadInput::TooLarge,
        BadInput::AgentMismatch,
        BadInput::UnknownAgent,
        BadInput::Implausible,
        BadInput::Forged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BadInput::Topic => "topic",
            BadInput::Undecodable => "undecodable",
            BadInput::Version => "version",
            BadInput::TooLarge => "too_large",
            BadInput::AgentMismatch => "agent_mismatch",
            BadInput::UnknownAgent => "unknown_agent",
            BadInput::Implausible => "implausible",
            BadInput::Forged => "forged",
        }
    }
}

/// A gauge family computed at scrape time: `(labels, value)` samples.
#[derive(Debug, Clone)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<(String, f64)>,
}

/// A struct of one counter per variant of a fieldless enum, and `of`, which
/// picks a variant's counter by an exhaustive match: a variant added to the
/// enum does not compile until it has its counter, and no variant can be
/// counted as another (an index into an array could).
macro_rules! counters_by {
    ($(#[$doc:meta])* $name:ident for $enum:ident { $($variant:ident => $field:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        struct $name {
            $($field: AtomicU64,)+
        }

        impl $name {
            fn of(&self, v: $enum) -> &AtomicU64 {
                match v {
                    $($enum::$variant => &self.$field,)+
                }
            }
        }
    };
}

counters_by!(
    /// Batches refused whole, by reason.
    RejectCounts for RejectReason {
        Fork => fork,
        BadSignature => bad_signature,
        NotCanonical => not_canonical,
        Invalid => invalid,
        UnknownAgent => unknown_agent,
        Halted => halted,
        TooLarge => too_large,
    }
);

counters_by!(
    /// Payloads dropped as bad input, by kind.
    BadInputCounts for BadInput {
        Topic => topic,
        Undecodable => undecodable,
        Version => version,
        TooLarge => too_large,
        AgentMismatch => agent_mismatch,
        UnknownAgent => unknown_agent,
        Implausible => implausible,
        Forged => forged,
    }
);

/// A counter family with one label: `name{label="value"} n` per sample.
fn labeled<const N: usize>(
    out: &mut String,
    (name, help): (&str, &str),
    label: &str,
    samples: [(&str, u64); N],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// Upper bounds of the commit latency histogram, in seconds.
const COMMIT_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0];

/// Upper bounds of the entry age histogram (seconds from an entry's `ts`
/// to its commit here): how far behind its agents this tier is.
const AGE_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub entries_accepted: AtomicU64,
    pub batches_accepted: AtomicU64,
    pub batches_duplicate: AtomicU64,
    pub resend_nacks: AtomicU64,
    pub hellos: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// Forwarded chains (or vouches) of child gateways refused here.
    pub forwarded_rejected: AtomicU64,
    /// Upstream: batches published to the parent, entries its receipts
    /// covered, alerts of the forwarder.
    pub upstream_batches: AtomicU64,
    pub upstream_receipted: AtomicU64,
    pub upstream_alerts: AtomicU64,
    /// Upstream messages (hellos, batches) dropped on a full publish
    /// queue; each is sent again when its chain's resend timer runs out.
    pub upstream_dropped: AtomicU64,
    /// Entries of the gateway's own chain that could not be built (and
    /// so were not signed).
    pub own_entries_refused: AtomicU64,
    /// The embedded broker: logins refused, publishes and subscriptions
    /// its topic ACL denied.
    pub broker_logins_refused: AtomicU64,
    pub broker_publishes_denied: AtomicU64,
    pub broker_subscribes_denied: AtomicU64,
    /// Hellos trust on first use refused (window used up, rate).
    pub first_use_refused: AtomicU64,
    /// HTTP requests refused for a missing or wrong operator token, or a
    /// non-JSON operator request.
    pub http_unauthorized: AtomicU64,
    /// HTTP connections closed at accept: `http_max_connections` open.
    pub http_connections_refused: AtomicU64,
    /// Accepts that failed (out of file descriptors, say): each pauses the
    /// accept loop briefly instead of spinning.
    pub http_accept_errors: AtomicU64,
    /// HTTP connections open now.
    pub http_connections_open: AtomicU64,
    /// Heartbeats taken (plausible, from known agents).
    pub heartbeats: AtomicU64,
    /// `--daily-dir`: lines written, and writes that failed (each retried).
    pub daily_lines: AtomicU64,
    pub daily_errors: AtomicU64,
    /// `--archive`: rows copied into PostgreSQL, and failed attempts
    /// (connections, copies; each retried).
    pub archive_rows: AtomicU64,
    pub archive_errors: AtomicU64,
    /// `--retain-entries`: entries pruned from the store once archived.
    pub archive_pruned: AtomicU64,
    rejected: RejectCounts,
    bad_input: BadInputCounts,
    commit: Histogram<10>,
    entry_age: Histogram<11>,
}

/// A Prometheus histogram of seconds with fixed upper bounds.
#[derive(Debug)]
struct Histogram<const N: usize> {
    bounds: [f64; N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(self.bounds) {
            if secs <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bucket, bound) in self.buckets.iter().zip(self.bounds) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        #[allow(clippy::cast_precision_loss)]
        let sum = self.micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

impl Default for Histogram<10> {
    fn default() -> Self {
        Histogram::new(COMMIT_BUCKETS)
    }
}

impl Default for Histogram<11> {
    fn default() -> Self {
        Histogram::new(AGE_BUCKETS)
    }
}

impl Metrics {
    pub fn rejected(&self, reason: RejectReason) {
        self.rejected.of(reason).fetch_add(1, Relaxed);
    }

    pub fn rejected_count(&self, reason: RejectReason) -> u64 {
        self.rejected.of(reason).load(Relaxed)
    }

    pub fn bad_input(&self, kind: BadInput) {
        self.bad_input.of(kind).fetch_add(1, Relaxed);
    }

    pub fn bad_input_count(&self, kind: BadInput) -> u64 {
        self.bad_input.of(kind).load(Relaxed)
    }

    pub fn commit_took(&self, d: Duration) {
        self.commit.observe(d);
    }

    /// The age of the newest entry of a committed run: commit time − its
    /// `ts` (the agent's clock; a negative age counts as 0).
    pub fn entry_age(&self, d: Duration) {
        self.entry_age.observe(d);
    }

    /// Prometheus text exposition. `gauges` are appended as given.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Relaxed));
        };
        counter(
            &mut out,
            "baton_entries_accepted_total",
            "Entries verified and durably stored.",
            &self.entries_accepted,
        );
        counter(
            &mut out,
            "baton_batches_accepted_total",
            "Batches that added entries.",
            &self.batches_accepted,
        );
        counter(
            &mut out,
            "baton_batches_duplicate_total",
            "Batches whose entries were all held already.",
            &self.batches_duplicate,
        );
        counter(
            &mut out,
            "baton_forwarded_rejected_total",
            "Child gateways' forwarded batches or vouches refused (an alert names the child).",
            &self.forwarded_rejected,
        );
        counter(
            &mut out,
            "baton_upstream_batches_total",
            "Batches forwarded to the parent gateway.",
            &self.upstream_batches,
        );
        counter(
            &mut out,
            "baton_upstream_receipted_entries_total",
            "Forwarded entries newly covered by the parent's receipts.",
            &self.upstream_receipted,
        );
        counter(
            &mut out,
            "baton_upstream_alerts_total",
            "Forwarder alerts (bad receipts, rejects, a parent ahead of this gateway).",
            &self.upstream_alerts,
        );
        counter(
            &mut out,
            "baton_upstream_dropped_total",
            "Upstream hellos and batches dropped on a full publish queue (sent again after the resend timeout).",
            &self.upstream_dropped,
        );
        counter(
            &mut out,
            "baton_resend_nacks_total",
            "Resend nacks sent for out-of-order batches.",
            &self.resend_nacks,
        );
        counter(
            &mut out,
            "baton_daily_lines_total",
            "Lines written to the live daily files (--daily-dir).",
            &self.daily_lines,
        );
        counter(
            &mut out,
            "baton_daily_errors_total",
            "Writes to the live daily files that failed (retried).",
            &self.daily_errors,
        );
        counter(
            &mut out,
            "baton_archive_rows_total",
            "Entries copied into the PostgreSQL archive (--archive).",
            &self.archive_rows,
        );
        counter(
            &mut out,
            "baton_archive_errors_total",
            "Archive connections or copies that failed (retried).",
            &self.archive_errors,
        );
        counter(
            &mut out,
            "baton_archive_pruned_total",
            "Entries pruned from this store once archived and receipted (--retain-entries).",
            &self.archive_pruned,
        );
        counter(
            &mut out,
            "baton_heartbeats_total",
            "Heartbeats taken.",
            &self.heartbeats,
        );
        counter(
            &mut out,
            "baton_hellos_total",
            "Hellos answered.",
            &self.hellos,
        );
        counter(
            &mut out,
            "baton_broker_logins_refused_total",
            "Embedded broker: connections refused at login.",
            &self.broker_logins_refused,
        );
        counter(
            &mut out,
            "baton_broker_publishes_denied_total",
            "Embedded broker: publishes (and last wills) the topic ACL denied.",
            &self.broker_publishes_denied,
        );
        counter(
            &mut out,
            "baton_http_unauthorized_total",
            "HTTP requests refused: no or a wrong operator token, or not JSON.",
            &self.http_unauthorized,
        );
        counter(
            &mut out,
            "baton_http_connections_refused_total",
            "HTTP connections closed at accept: http_max_connections were open.",
            &self.http_connections_refused,
        );
        counter(
            &mut out,
            "baton_http_accept_errors_total",
            "HTTP accepts that failed (out of file descriptors, say); each pauses accepting 100 ms.",
            &self.http_accept_errors,
        );
        counter(
            &mut out,
            "baton_first_use_refused_total",
            "Hellos trust on first use refused (window enrollments used up, or the rate).",
            &self.first_use_refused,
        );
        counter(
            &mut out,
            "baton_broker_subscribes_denied_total",
            "Embedded broker: subscriptions the topic ACL denied.",
            &self.broker_subscribes_denied,
        );
        counter(
            &mut out,
            "baton_commits_total",
            "Durable group commits.",
            &self.commits,
        );
        counter(
            &mut out,
            "baton_own_entries_refused_total",
            "Entries of the gateway's own chain that could not be built (nothing signed).",
            &self.own_entries_refused,
        );
        counter(
            &mut out,
            "baton_commit_errors_total",
            "Group commits that failed (nothing receipted).",
            &self.commit_errors,
        );
        labeled(
            &mut out,
            (
                "baton_batches_rejected_total",
                "Batches refused whole, by reason.",
            ),
            "reason",
            RejectReason::ALL.map(|r| (r.as_str(), self.rejected.of(r).load(Relaxed))),
        );
        labeled(
            &mut out,
            (
                "baton_bad_input_total",
                "Payloads dropped as bad input, by kind.",
            ),
            "kind",
            BadInput::ALL.map(|k| (k.as_str(), self.bad_input.of(k).load(Relaxed))),
        );
        self.commit.render(
            &mut out,
            "baton_commit_duration_seconds",
            "Durable group commit latency.",
        );
        self.entry_age.render(
            &mut out,
            "baton_entry_age_seconds",
            "Age of the newest entry of each committed run (commit − its ts): how far behind its agents this tier is.",
        );
        for Gauge {
            name,
            help,
            samples,
        } in gauges
        {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let m = Metrics::default();
        m.rejected(RejectReason::BadSignature);
        m.bad_input(BadInput::TooLarge);
        m.commit_took(Duration::from_millis(3));
        m.entry_age(Duration::from_millis(1500));
        let text = m.render(&[Gauge {
            name: "baton_agents",
            help: "Agents by state.",
            samples: vec![("state=\"active\"".into(), 2.0)],
        }]);
        assert!(text.contains("baton_batches_rejected_total{reason=\"bad_signature\"} 1"));
        assert!(text.contains("baton_bad_input_total{kind=\"too_large\"} 1"));
        assert!(text.contains("baton_commit_duration_seconds_bucket{le=\"0.002\"} 0"));
        assert!(text.contains("baton_commit_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("baton_entry_age_seconds_bucket{le=\"1\"} 0"));
        assert!(text.contains("baton_entry_age_seconds_bucket{le=\"2\"} 1"));
        assert!(text.contains("baton_entry_age_seconds_count 1"));
        assert!(text.contains("baton_agents{state=\"active\"} 2"));
    }
}
