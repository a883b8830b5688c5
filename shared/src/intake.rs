//! The receiver's per-agent state machine (PROTOCOL §6 forks, §7 rules 1,
//! 3b, 4, 5 and 6).
//!
//! A decoded batch goes in, a [`Verdict`] comes out; each verdict maps to
//! exactly one answer ([`Verdict::answer`]): the current receipt or a nack.
//! The shell stores what was accepted, commits durably, then calls
//! [`Intake::committed`] and only then publishes the receipt (rule 1).
//!
//! *Invariant:* the receipted head only ever names entries that the shell
//! reported committed, and it only moves forward.

use std::collections::VecDeque;
use std::time::Duration;

use crate::crypto::{Hash, PublicKey, SecretKey, Sig, chain_hash};
use crate::entry::{ContentError, Entry, Seq, check_canonical_content};
use crate::id::AgentId;
use crate::wire::{EntryBatch, Hello, HelloEcho, NackKind, Receipt, RejectReason};

/// The stored entries the intake compares overlapping batches against:
/// every entry it accepted, committed or still pending. `hash_at(Seq(0))`
/// is the genesis prev.
pub trait ChainView {
    fn hash_at(&self, seq: Seq) -> Option<Hash>;
}

/// A chain head: seq, hash and the agent's sig stored on that entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: Seq,
    pub hash: Hash,
    pub sig: Option<Sig>,
}

impl Head {
    pub const EMPTY: Head = Head {
        seq: Seq::ZERO,
        hash: Hash::ZERO,
        sig: None,
    };
}

/// What the operator enrolled for one agent.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub agent: AgentId,
    pub key: PublicKey,
    /// A new gateway meeting an agent that already pruned: the first batch
    /// may start here without linking to anything.
    pub start_seq: Option<Seq>,
    /// Entries at or after this seq are refused.
    pub revoked_from_seq: Option<Seq>,
}

#[derive(Debug, Clone)]
pub struct IntakeConfig {
    pub gateway: AgentId,
    /// To verify rule-3b proofs: receipts this gateway signed itself.
    pub gateway_key: PublicKey,
    pub resend_timeout: Duration,
}

/// The outcome of one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// New entries to store (seq order, starting at `first`), then commit.
    /// `gap` is set under rule 3b: seqs the gateway lost and the agent no
    /// longer holds, to be recorded in the gateway's own chain.
    Accepted {
        first: Seq,
        entries: Vec<Entry>,
        gap: Option<(Seq, Seq)>,
    },
    /// Every entry is already held: answer with the current receipt.
    Duplicate,
    /// Starts beyond head + 1: `nack resend(from)`.
    Resend { from: Seq },
    /// As `Resend`, but one was sent for this head within `resend_timeout`
    /// (rule 5): answer with the current receipt instead.
    ResendSuppressed,
    /// Refused whole.
    Rejected {
        reason: RejectReason,
        seq: Seq,
        detail: String,
    },
    /// A second entry at `seq` with a different hash, in a batch that passed
    /// every other check: keep the stored entry, store `evidence`, halt.
    Fork { seq: Seq, evidence: Vec<Entry> },
    /// The agent is halted after a fork until an operator resolves it.
    Halted { seq: Seq },
}

/// The one answer each decoded batch (or hello) gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The current receipt (for `Accepted`: after the commit).
    Receipt,
    Nack(NackKind),
}

impl Verdict {
    pub fn answer(&self) -> Answer {
        match self {
            Verdict::Accepted { .. } | Verdict::Duplicate | Verdict::ResendSuppressed => {
                Answer::Receipt
            }
            Verdict::Resend { from } => Answer::Nack(NackKind::Resend { from: *from }),
            Verdict::Rejected { reason, seq, .. } => Answer::Nack(NackKind::Reject {
                reason: *reason,
                seq: *seq,
            }),
            Verdict::Fork { seq, .. } | Verdict::Halted { seq } => Answer::Nack(NackKind::Reject {
                reason: RejectReason::Fork,
                seq: *seq,
            }),
        }
    }
}

/// The receiver's state for one agent.
#[derive(Debug)]
pub struct Intake {
    cfg: IntakeConfig,
    enrollment: Enrollment,
    /// Accepted, committed or not.
    head: Head,
    /// Committed: what receipts name.
    durable: Head,
    /// Accepted heads awaiting their commit, oldest first.
    pending: VecDeque<Head>,
    halted: Option<Seq>,
    last_resend: Option<(Seq, Duration)>,
}

fn reject(reason: RejectReason, seq: Seq, detail: impl Into<String>) -> Verdict {
    Verdict::Rejected {
        reason,
        seq,
        detail: detail.into(),
    }
}

impl Intake {
    /// Starts from the durable state: the stored head and whether the agent
    /// is halted after a fork (both survive restarts).
    pub fn new(
        cfg: IntakeConfig,
        enrollment: Enrollment,
        durable: Head,
        halted: Option<Seq>,
    ) -> Self {
        Intake {
            cfg,
            enrollment,
            head: durable,
            durable,
            pending: VecDeque::new(),
            halted,
            last_resend: None,
        }
    }

    pub fn agent(&self) -> &AgentId {
        &self.enrollment.agent
    }

    /// The receipted (durable) head.
    pub fn durable_head(&self) -> Head {
        self.durable
    }

    /// The accepted head, including entries not yet committed.
    pub fn accepted_head(&self) -> Head {
        self.head
    }

    pub fn halted(&self) -> Option<Seq> {
        self.halted
    }

    /// The shell found a reason of its own to stop taking this chain (two
    /// writers sharing one identity): refused like a fork until resolved.
    pub fn halt(&mut self, seq: Seq) {
        self.halted = Some(seq);
    }

    /// An operator lifted the halt (`baton-gateway resolve`).
    pub fn resolve(&mut self) {
        self.halted = None;
    }

    /// The shell durably committed every accepted entry up to `upto`.
    pub fn committed(&mut self, upto: Seq) {
        while let Some(h) = self.pending.front() {
            if h.seq > upto {
                break;
            }
            self.durable = *h;
            self.pending.pop_front();
        }
    }

    /// A commit failed: forget what was accepted but not committed.
    pub fn abandon_pending(&mut self) {
        self.pending.clear();
        self.head = self.durable;
    }

    /// The signed cumulative receipt for the durable head (rule 1).
    pub fn receipt(&self, key: &SecretKey) -> Receipt {
        Receipt::sign(
            key,
            &self.cfg.gateway,
            &self.enrollment.agent,
            self.durable.seq,
            self.durable.hash,
        )
    }

    /// The answer to a hello (rule 3): the current receipt echoing the
    /// nonce, with the agent's own sig on the head entry, or the fork reject.
    pub fn answer_hello(&self, hello: &Hello, key: &SecretKey) -> Result<Receipt, NackKind> {
        if let Some(seq) = self.halted {
            return Err(NackKind::Reject {
                reason: RejectReason::Fork,
                seq,
            });
        }
        let mut r = self.receipt(key);
        r.hello = Some(HelloEcho {
            nonce: hello.nonce,
            agent_sig: self.durable.sig,
            gateway_key: key.public().to_bytes(),
        });
        Ok(r)
    }

    /// Judges one decoded batch (rules 4–6, 3b; forks per §6).
    pub fn handle_batch(
        &mut self,
        now: Duration,
        batch: &EntryBatch,
        store: &impl ChainView,
    ) -> Verdict {
        if let Some(seq) = self.halted {
            return Verdict::Halted { seq };
        }
        let checked = match self.check_batch(batch) {
            Ok(c) => c,
            Err(v) => return v,
        };
        let Checked { first, last } = checked;
        let entries = &batch.entries;
        let head = self.head;

        if first <= head.seq {
            return self.overlap(first, last, entries, store);
        }
        if first == head.seq.next() {
            let links = if first == Seq(1) {
                true // genesis prev checked with the batch
            } else {
                entries[0].prev == head.hash
            };
            if !links {
                return reject(
                    RejectReason::Invalid,
                    first,
                    format!("entry {first} does not extend the chain at {}", head.seq),
                );
            }
            return self.accept(first, entries, None);
        }
        // first > head + 1
        if head.seq == Seq::ZERO && self.enrollment.start_seq == Some(first) {
            return self.accept(first, entries, None);
        }
        if let Some(proof) = &batch.proof {
            return match self.check_proof(proof, first, last, entries) {
                Ok(()) => self.accept(first, entries, Some((head.seq.next(), first.prev()))),
                Err(why) => reject(RejectReason::Invalid, first, why),
            };
        }
        let limited = matches!(self.last_resend, Some((h, at))
            if h == head.seq && now < at + self.cfg.resend_timeout);
        if limited {
            Verdict::ResendSuppressed
        } else {
            self.last_resend = Some((head.seq, now));
            Verdict::Resend {
                from: head.seq.next(),
            }
        }
    }

    /// Every check of rule 6 except linking to the head.
    fn check_batch(&self, batch: &EntryBatch) -> Result<Checked, Verdict> {
        let agent = &self.enrollment.agent;
        if batch.agent != *agent {
            return Err(reject(
                RejectReason::Invalid,
                Seq::ZERO,
                format!("batch names agent {} on {agent}'s intake", batch.agent),
            ));
        }
        self.check_authentic(batch)?;
        let mut first = Seq::ZERO;
        let mut expected = Seq::ZERO;
        for (i, e) in batch.entries.iter().enumerate() {
            let at = if i == 0 { Seq::ZERO } else { expected };
            let header = check_canonical_content(&e.content).map_err(|err| {
                let reason = match err {
                    ContentError::NotCanonical => RejectReason::NotCanonical,
                    ContentError::TooLarge(_) => RejectReason::TooLarge,
                    _ => RejectReason::Invalid,
                };
                reject(reason, at, format!("entry {}: {err}", i))
            })?;
            let seq = header.seq;
            if header.agent != *agent {
                return Err(reject(
                    RejectReason::Invalid,
                    seq,
                    format!("entry {seq} is by {}", header.agent),
                ));
            }
            if i == 0 {
                first = seq;
            } else if seq != expected {
                return Err(reject(
                    RejectReason::Invalid,
                    seq,
                    format!("seq {seq} where {expected} expected"),
                ));
            } else if e.prev != batch.entries[i - 1].hash {
                return Err(reject(
                    RejectReason::Invalid,
                    seq,
                    format!("entry {seq} does not link to entry {}", seq.prev()),
                ));
            }
            let genesis = header.event.as_str() == "genesis";
            if (seq == Seq(1)) != genesis {
                return Err(reject(
                    RejectReason::Invalid,
                    seq,
                    "seq 1 and only seq 1 is the genesis entry",
                ));
            }
            if seq == Seq(1) && e.prev != Hash::ZERO {
                return Err(reject(
                    RejectReason::Invalid,
                    seq,
                    "seq 1 must have the genesis prev",
                ));
            }
            if let Some(revoked) = self.enrollment.revoked_from_seq
                && seq >= revoked
            {
                return Err(reject(
                    RejectReason::UnknownAgent,
                    seq,
                    format!("key of {agent} is revoked from seq {revoked}"),
                ));
            }
            // The last entry's signature was verified by check_authentic.
            if let Some(sig) = &e.sig
                && i + 1 < batch.entries.len()
                && !self
                    .enrollment
                    .key
                    .verify_checkpoint(agent, seq, &e.hash, sig)
            {
                return Err(reject(
                    RejectReason::BadSignature,
                    seq,
                    format!("entry {seq}: bad checkpoint signature"),
                ));
            }
            expected = seq.next();
        }
        let last = expected.prev();
        if batch.entries.last().is_none_or(|e| e.sig.is_none()) {
            return Err(reject(
                RejectReason::Invalid,
                last,
                "a batch must end at a signed entry",
            ));
        }
        Ok(Checked { first, last })
    }

    /// The cheap checks, before any content but the first entry's is
    /// parsed: every hash, every link inside the batch, and the signature
    /// on the last entry, which through the hash chain covers all of it.
    /// Someone without the agent's key gets no further than one entry's
    /// header (at most 64 KiB of JSON), whatever the batch holds.
    fn check_authentic(&self, batch: &EntryBatch) -> Result<(), Verdict> {
        let agent = &self.enrollment.agent;
        let Some(first_entry) = batch.entries.first() else {
            return Err(reject(
                RejectReason::Invalid,
                Seq::ZERO,
                "a batch must end at a signed entry",
            ));
        };
        let first = check_canonical_content(&first_entry.content)
            .map_err(|err| {
                let reason = match err {
                    ContentError::NotCanonical => RejectReason::NotCanonical,
                    ContentError::TooLarge(_) => RejectReason::TooLarge,
                    _ => RejectReason::Invalid,
                };
                reject(reason, Seq::ZERO, format!("entry 0: {err}"))
            })?
            .seq;
        let mut prev: Option<&Entry> = None;
        for (i, e) in batch.entries.iter().enumerate() {
            let seq = Seq(first.0.saturating_add(i as u64));
            if let Some(p) = prev
                && e.prev != p.hash
            {
                return Err(reject(
                    RejectReason::Invalid,
                    seq,
                    format!("entry {seq} does not link to entry {}", seq.prev()),
                ));
            }
            if chain_hash(&e.content, &e.prev) != e.hash {
                return Err(reject(
                    RejectReason::Invalid,
                    seq,
                    format!("entry {seq}: hash mismatch"),
                ));
            }
            prev = Some(e);
        }
        let last = Seq(first.0.saturating_add(batch.entries.len() as u64 - 1));
        let Some((entry, sig)) = batch
            .entries
            .last()
            .and_then(|e| Some((e, e.sig.as_ref()?)))
        else {
            return Err(reject(
                RejectReason::Invalid,
                last,
                "a batch must end at a signed entry",
            ));
        };
        if !self
            .enrollment
            .key
            .verify_checkpoint(agent, last, &entry.hash, sig)
        {
            return Err(reject(
                RejectReason::BadSignature,
                last,
                format!("entry {last}: bad checkpoint signature"),
            ));
        }
        Ok(())
    }

    /// Rule 4: entries at or below the head are compared by hash.
    fn overlap(
        &mut self,
        first: Seq,
        last: Seq,
        entries: &[Entry],
        store: &impl ChainView,
    ) -> Verdict {
        let head = self.head.seq;
        for (i, e) in entries.iter().enumerate() {
            let seq = Seq(first.0 + i as u64);
            if seq > head {
                if e.prev != self.head.hash {
                    return reject(
                        RejectReason::Invalid,
                        seq,
                        format!("entry {seq} does not extend the chain at {head}"),
                    );
                }
                return self.accept(seq, &entries[i..], None);
            }
            match store.hash_at(seq) {
                Some(h) if h == e.hash => continue,
                Some(_) => {
                    // A fork counts only if the batch links to the stored
                    // entry before it (or to an earlier, equal batch entry).
                    let links = i > 0 || store.hash_at(seq.prev()) == Some(e.prev);
                    return if links {
                        self.halted = Some(seq);
                        Verdict::Fork {
                            seq,
                            evidence: entries.to_vec(),
                        }
                    } else {
                        reject(
                            RejectReason::Invalid,
                            seq,
                            format!(
                                "entry {seq} differs from the stored one and links to nothing held"
                            ),
                        )
                    };
                }
                // Not held (before a start_seq or inside a recorded gap):
                // nothing to compare; the rest must still link.
                None => continue,
            }
        }
        debug_assert!(last <= head);
        Verdict::Duplicate
    }

    /// Rule 3b: a batch past a hole, presented with this gateway's own
    /// receipt covering the entry before it.
    fn check_proof(
        &self,
        proof: &Receipt,
        first: Seq,
        last: Seq,
        entries: &[Entry],
    ) -> Result<(), String> {
        if proof.gateway != self.cfg.gateway || proof.agent != self.enrollment.agent {
            return Err("proof is not this gateway's receipt for this agent".into());
        }
        if !proof.verify(&self.cfg.gateway_key) {
            return Err("proof receipt signature does not verify".into());
        }
        if proof.seq < first.prev() {
            return Err(format!(
                "proof covers seq {} but the batch starts at {first}",
                proof.seq
            ));
        }
        if proof.seq == first.prev() && entries[0].prev != proof.hash {
            return Err("batch does not link to the proof's hash".into());
        }
        if proof.seq >= first && proof.seq <= last {
            let i = usize::try_from(proof.seq.0 - first.0).unwrap_or(usize::MAX);
            if entries.get(i).map(|e| e.hash) != Some(proof.hash) {
                return Err("proof hash differs from the batch entry it names".into());
            }
        }
        Ok(())
    }

    fn accept(&mut self, first: Seq, entries: &[Entry], gap: Option<(Seq, Seq)>) -> Verdict {
        let Some(last) = entries.last() else {
            return Verdict::Duplicate;
        };
        let head = Head {
            seq: Seq(first.0 + entries.len() as u64 - 1),
            hash: last.hash,
            sig: last.sig,
        };
        self.head = head;
        self.pending.push_back(head);
        Verdict::Accepted {
            first,
            entries: entries.to_vec(),
            gap,
        }
    }
}

struct Checked {
    first: Seq,
    last: Seq,
}
