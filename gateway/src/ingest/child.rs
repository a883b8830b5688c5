//! Child gateways (PROTOCOL §8): the parent side. A child's own chain
//! vouches for the agents behind it through `enroll` entries, feeds the
//! sector roll-up through `cluster_summary` entries, and a forwarded batch
//! that fails verification is an alert naming the child.

use super::*;

impl Ingest {
    /// A forwarded chain failed verification here: the child gateway that
    /// forwarded it altered it (or let it be altered). An `alert` naming
    /// the child goes into this gateway's chain, at most once a minute per
    /// chain; the batch itself is refused like any other.
    pub(super) fn forwarding_alert(
        &mut self,
        now: Duration,
        unix_ms: i64,
        via: &AgentId,
        agent: &AgentId,
        what: &str,
    ) {
        self.metrics
            .forwarded_rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.log_due(now, agent.as_str(), "forwarded_rejected") {
            return;
        }
        let detail = format!("child gateway {via} forwarded {agent}'s chain, refused: {what}");
        warn!(child = %via, %agent, what, "forwarded chain refused");
        let data = own_chain::child_alert_data("forwarded_chain_refused", agent, via, &detail);
        self.stage_own(unix_ms, OwnEvent::Alert, data);
    }

    /// New verified entries of child gateway `child`'s own chain: its
    /// `enroll` entries vouch for the agents behind it (PROTOCOL §8), its
    /// `cluster_summary` entries feed the sector's roll-up.
    pub(super) fn child_entries(
        &mut self,
        unix_ms: i64,
        child: &AgentId,
        cluster: &ClusterId,
        first: Seq,
        entries: &[baton_shared::Entry],
    ) {
        use baton_shared::json::{self, Mode};
        for (i, e) in entries.iter().enumerate() {
            let seq = Seq(first.0 + i as u64);
            // Intake accepted these: they parse; anything odd is skipped.
            let Ok(content) = json::parse(&e.content, Mode::Verify) else {
                continue;
            };
            let Some(o) = content.as_object() else {
                continue;
            };
            let data = o.get("data");
            match o.get("event").and_then(|v| v.as_str()) {
                Some("enroll") => self.vouch(unix_ms, child, cluster, seq, data),
                Some("cluster_summary") => {
                    if let Some((from, summary)) = data.and_then(Summary::from_value) {
                        let at_ms = data
                            .and_then(|d| d.as_object())
                            .and_then(|d| d.get("at_ms"))
                            .and_then(|v| v.as_f64())
                            .map_or(0, |t| t as i64);
                        if from != cluster.as_str() {
                            warn!(%child, %cluster, named = from, "child summary names another cluster; kept under the child's");
                        }
                        self.registry().child_summary(
                            cluster.to_string(),
                            ChildSummary {
                                summary,
                                at_ms,
                                gateway: child.clone(),
                            },
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// An `enroll` entry at `seq` of child gateway `child`'s verified chain:
    /// the agent it names is trusted here under that key, unless another
    /// key is already trusted for that id (an alert naming the child;
    /// PROTOCOL §8: the same id vouched for with two keys is refused).
    fn vouch(
        &mut self,
        unix_ms: i64,
        child: &AgentId,
        cluster: &ClusterId,
        seq: Seq,
        data: Option<&baton_shared::json::Value>,
    ) {
        let Some(own_chain::EnrollData {
            agent,
            public_key: key,
            start_seq,
            revoked_from_seq,
            ..
        }) = own_chain::EnrollData::parse(data)
        else {
            let detail = format!("enroll entry at seq {seq} names no valid agent and key");
            let data = own_chain::alert_data("bad_vouch", child, &detail);
            self.stage_own(unix_ms, OwnEvent::Alert, data);
            return;
        };
        let existing = match self.record(&agent) {
            Ok(r) => r,
            Err(e) => {
                // The batch is committed with the rest; the vouch is lost
                // until the store reads again. Say so loudly.
                warn!(%child, %agent, error = %e, "store read failed while taking a vouch");
                return;
            }
        };
        match existing {
            None => {
                info!(%child, %agent, key = %key, "agent vouched for by child gateway");
                self.stage_enrollment(
                    unix_ms,
                    &agent,
                    AgentRecord {
                        public_key: key.to_bytes(),
                        start_seq,
                        revoked_from_seq,
                        enrolled_by: EnrolledBy::Vouched {
                            via: child.clone(),
                            cluster: cluster.clone(),
                            at_seq: seq,
                        },
                        enrolled_ms: unix_ms,
                    },
                );
            }
            Some(r) if r.public_key == key.to_bytes() => {}
            Some(r) => {
                warn!(%child, %agent, "child vouches for another key than the one trusted here; refused");
                self.metrics
                    .forwarded_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let detail = format!(
                    "child gateway {child} vouches for {agent} with key {key} (its seq {seq}), but {agent} is trusted here with another key ({}): refused",
                    r.enrolled_by.describe()
                );
                let data = own_chain::child_alert_data("conflicting_vouch", &agent, child, &detail);
                self.stage_own(unix_ms, OwnEvent::Alert, data);
            }
        }
    }
}

/// What a parent subscribes to for child cluster `c`: the chains it
/// forwards (hello and batches; heartbeats stay in the child's cluster).
pub(super) fn child_filters(c: &ClusterId) -> [String; 4] {
    [
        topic::cluster_filter(c, Kind::Hello),
        topic::cluster_filter(c, Kind::Entries),
        topic::cluster_filter(c, Kind::Time),
        topic::cluster_filter(c, Kind::CmdReply),
    ]
}
