//! Loading a verified baton (`POST /api/v1/load`): its entries go through
//! the same intake and the same accept-and-stage step as MQTT batches, all
//! or nothing.

use super::*;

/// Why a loaded baton was not stored.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is not enrolled here")]
    NotEnrolled(AgentId),
    #[error("batches of {0} are being stored right now; retry")]
    Busy(AgentId),
    /// The intake's judgement, in words (the text is the answer).
    #[error("{0}")]
    Refused(String),
    #[error("reading the store: {0}")]
    Store(#[from] StoreError),
}

impl Ingest {
    /// Stores the entries of a verified baton (`POST /api/v1/load`) through
    /// the same intake as MQTT batches, cut at its checkpoints: all of them
    /// are staged (new ones) or already held (duplicates), or none is, and
    /// the reason says why. The caller commits. Returns (new, already held).
    pub fn load(
        &mut self,
        now: Duration,
        unix_ms: i64,
        agent: &AgentId,
        first: Seq,
        entries: Vec<baton_shared::Entry>,
    ) -> Result<(u64, u64), LoadError> {
        if !self.ensure_intake(agent)? {
            return Err(LoadError::NotEnrolled(agent.clone()));
        }
        if self.pending.get(agent).is_some_and(|p| !p.is_empty()) {
            return Err(LoadError::Busy(agent.clone()));
        }
        // Cut into whole checkpoint spans, as an agent would send them.
        let mut batches = Vec::new();
        let mut start = 0;
        while start < entries.len() {
            let from = Seq(first.0 + start as u64);
            let limits = baton_shared::uplink::BatchLimits::default();
            let Some(end) = baton_shared::uplink::span_end(from, &entries[start..], limits) else {
                return Err(LoadError::Refused(format!(
                    "entries from seq {from} on are not covered by a checkpoint; nothing stored"
                )));
            };
            let n = usize::try_from(end.0 - from.0 + 1).unwrap_or(usize::MAX);
            batches.push(EntryBatch {
                agent: agent.clone(),
                proof: None,
                entries: entries[start..start + n].to_vec(),
            });
            start += n;
        }
        let mark = self.staged.len();
        let staged_entries = self.staged_entries;
        let (mut new, mut held) = (0u64, 0u64);
        let mut refusal = None;
        let mut fork = None;
        for batch in &batches {
            let n = batch.entries.len() as u64;
            let pending = self.pending.entry(agent.clone()).or_default();
            let Some(intake) = self.intakes.get_mut(agent) else {
                return Err(LoadError::NotEnrolled(agent.clone()));
            };
            let view = Layered {
                durable: &self.store.view(agent),
                pending,
            };
            let first_seq = batch
                .entries
                .first()
                .and_then(|e| e.header().ok())
                .map(|h| h.seq);
            match intake.handle_batch(now, batch, &view) {
                Verdict::Accepted { first, entries, .. } => {
                    self.stage_accepted(agent, first, entries);
                    new += n;
                }
                Verdict::Duplicate | Verdict::ResendSuppressed => held += n,
                Verdict::Resend { from } => {
                    refusal = Some(format!(
                        "the baton continues at seq {} but this gateway holds {agent} only through seq {}: load the entries before it first",
                        first_seq.unwrap_or(Seq::ZERO),
                        from.prev()
                    ));
                }
                Verdict::Rejected {
                    reason,
                    seq,
                    detail,
                } => {
                    refusal = Some(format!("refused at seq {seq}: {reason}: {detail}"));
                }
                Verdict::Fork { seq, evidence } => {
                    // Signed by the agent's own key: a second history, as
                    // over MQTT (PROTOCOL §6): evidence kept, agent halted.
                    refusal = Some(format!(
                        "entry {seq} differs from the one this gateway holds, under the agent's own signature (a fork): evidence kept, {agent} halted until `baton-gateway resolve`"
                    ));
                    fork = Some((seq, evidence));
                }
                Verdict::Halted { seq } => {
                    refusal = Some(format!("{agent} is halted after a fork at seq {seq}"));
                }
            }
            if refusal.is_some() {
                break;
            }
        }
        if let Some(why) = refusal {
            // Refused whole: forget what this load staged.
            self.staged.truncate(mark);
            self.staged_entries = staged_entries;
            self.pending.remove(agent);
            if let Some(i) = self.intakes.get_mut(agent) {
                i.abandon_pending();
            }
            if let Some((seq, evidence)) = fork {
                self.stage_fork(unix_ms, agent, seq, evidence, " (loaded baton)");
            }
            return Err(LoadError::Refused(why));
        }
        if new > 0 {
            self.answer_after_commit.insert(agent.clone());
        }
        Ok((new, held))
    }
}
