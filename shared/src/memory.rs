//! In-memory ledgers for simulations, fuzzing and test publishers.
//!
//! [`MemLedger`] is an agent-side chain with the writer's signing cadence
//! and the rule-3c adoption; [`MemChain`] is a receiver-side store. Neither
//! does I/O: durability is whatever the caller decides to keep.

use std::collections::{BTreeMap, VecDeque};

use crate::crypto::{Hash, SecretKey};
use crate::entry::{self, AppendError, Entry, Seq, Stamp};
use crate::id::{AgentId, EventName};
use crate::intake::ChainView;
use crate::json::{Object, Value};
use crate::uplink::{Adoption, BatchLimits, Ledger};
use crate::wire::{EntryBatch, Receipt};

/// An agent's chain in memory.
#[derive(Debug, Clone)]
pub struct MemLedger {
    agent: AgentId,
    key: SecretKey,
    /// Held entries of the current run, oldest first.
    entries: VecDeque<Entry>,
    /// The seq of `entries[0]` (or head + 1 when empty).
    oldest: Seq,
    head: Seq,
    head_hash: Hash,
    /// After an adoption: the adopted `(seq, hash)` the run continues from.
    anchor: Option<(Seq, Hash)>,
    /// Runs set aside by adoptions, for export.
    older_runs: Vec<Vec<Entry>>,
    /// Unsigned entries since the last checkpoint.
    unsigned: usize,
    /// Sign automatically once this many entries are unsigned.
    pub checkpoint_every: usize,
    /// The best receipt, kept as proof.
    pub best: Option<Receipt>,
}

impl MemLedger {
    pub fn new(agent: AgentId, key: SecretKey) -> Self {
        MemLedger {
            agent,
            key,
            entries: VecDeque::new(),
            oldest: Seq(1),
            head: Seq::ZERO,
            head_hash: Hash::ZERO,
            anchor: None,
            older_runs: Vec::new(),
            unsigned: 0,
            checkpoint_every: 1000,
            best: None,
        }
    }

    /// A new chain of `agent` whose first entry, `genesis` with empty data
    /// at `unix_ms`, is appended; signed every `checkpoint_every` entries.
    /// What simulations, publishers and tests start from.
    pub fn genesis(
        agent: AgentId,
        key: SecretKey,
        unix_ms: i64,
        checkpoint_every: usize,
    ) -> Result<Self, AppendError> {
        let mut l = MemLedger::new(agent, key);
        l.checkpoint_every = checkpoint_every;
        l.append(unix_ms, "genesis", None, Value::Object(Object::new()))?;
        Ok(l)
    }

    pub fn agent(&self) -> &AgentId {
        &self.agent
    }

    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    pub fn head_hash(&self) -> Hash {
        self.head_hash
    }

    pub fn head_seq(&self) -> Seq {
        self.head
    }

    /// Appends with runtime-set fields; the first append must be `genesis`.
    pub fn append(
        &mut self,
        unix_ms: i64,
        event: &str,
        context: Option<&str>,
        data: Value,
    ) -> Result<(Seq, Hash), AppendError> {
        let ts = entry::format_timestamp(unix_ms);
        self.append_at(&ts, event, context, &data)
    }

    fn append_at(
        &mut self,
        ts: &str,
        event: &str,
        context: Option<&str>,
        data: &Value,
    ) -> Result<(Seq, Hash), AppendError> {
        let event = EventName::new(event).map_err(AppendError::Event)?;
        let seq = self.head.next();
        let stamp = Stamp {
            agent: &self.agent,
            seq,
            unix_ms: 0,
            clock: None,
        };
        let content = entry::build_content_at(&stamp, ts, &event, context, data)?;
        let e = Entry::seal(content, self.head_hash);
        let hash = e.hash;
        self.entries.push_back(e);
        self.head = seq;
        self.head_hash = hash;
        self.unsigned += 1;
        if self.unsigned >= self.checkpoint_every.max(1) {
            self.sign_head();
        }
        Ok((seq, hash))
    }

    /// Signs the newest entry if it is unsigned (it was never transmitted:
    /// batches end at signed entries).
    pub fn sign_head(&mut self) {
        let (agent, seq) = (&self.agent, self.head);
        if let Some(e) = self.entries.back_mut()
            && e.sig.is_none()
        {
            e.sig = Some(self.key.sign_checkpoint(agent, seq, &e.hash));
            self.unsigned = 0;
        }
    }

    /// Held entries `from..=to` (clipped to what is held).
    pub fn range(&self, from: Seq, to: Seq) -> Vec<Entry> {
        let lo = from.max(self.oldest);
        let hi = to.min(self.head);
        if lo > hi {
            return Vec::new();
        }
        let start = usize::try_from(lo.0 - self.oldest.0).unwrap_or(usize::MAX);
        let end = usize::try_from(hi.0 - self.oldest.0).unwrap_or(usize::MAX);
        self.entries.range(start..=end).cloned().collect()
    }

    /// The batch `from..=to` with `proof`, as the uplink asked for it.
    pub fn batch(&self, from: Seq, to: Seq, proof: Option<Receipt>) -> EntryBatch {
        EntryBatch {
            agent: self.agent.clone(),
            proof,
            entries: self.range(from, to),
        }
    }

    /// Deletes held entries up to `seq`, but never past the best receipt
    /// (PROTOCOL §7 rule 2). Returns how many were deleted.
    pub fn prune_through(&mut self, seq: Seq) -> usize {
        let limit = self.best.as_ref().map_or(Seq::ZERO, |b| b.seq);
        let upto = seq.min(limit).min(self.head);
        let mut n = 0;
        while self.oldest <= upto && self.entries.pop_front().is_some() {
            self.oldest = self.oldest.next();
            n += 1;
        }
        n
    }

    /// All held entries of the current run.
    pub fn held(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn older_runs(&self) -> &[Vec<Entry>] {
        &self.older_runs
    }

    /// Carries out a rule-3c adoption in one step: entries after the best
    /// receipt (and after the adopted seq) become orphans, `recovery` is
    /// appended at `N + 1` with prev `H`, then the orphans' event, context,
    /// data and original `ts` are re-appended (all but an orphaned genesis)
    /// and the head is signed.
    pub fn adopt(&mut self, adoption: &Adoption, unix_ms: i64) -> Result<(), AppendError> {
        let r = &adoption.receipt;
        let best_seq = adoption.best_before.as_ref().map_or(Seq::ZERO, |b| b.seq);
        let keep_through = best_seq.min(r.seq);
        let local_head = (self.head > Seq::ZERO).then_some((self.head, self.head_hash));
        let mut kept = Vec::new();
        let mut orphans = Vec::new();
        for (i, e) in self.entries.drain(..).enumerate() {
            let seq = Seq(self.oldest.0 + i as u64);
            if seq <= keep_through {
                kept.push(e);
            } else {
                orphans.push(e);
            }
        }
        if !kept.is_empty() {
            self.older_runs.push(kept);
        }
        let orphaned = orphans.last().map(|last| {
            (
                keep_through.next(),
                Seq(keep_through.0 + orphans.len() as u64),
                last.hash,
            )
        });
        let data = crate::uplink::recovery_data("gateway_ahead", adoption, local_head, orphaned);
        self.head = r.seq;
        self.head_hash = r.hash;
        self.oldest = r.seq.next();
        self.anchor = Some((r.seq, r.hash));
        self.unsigned = 0;
        self.append(unix_ms, "recovery", None, data)?;
        for orphan in &orphans {
            let Ok(crate::json::Value::Object(content)) =
                crate::json::parse(&orphan.content, crate::json::Mode::Verify)
            else {
                continue;
            };
            let ts = content
                .get("ts")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let event = content
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or("info");
            if event == "genesis" {
                // Genesis stands only at seq 1: it stays in the set-aside
                // run (covered by `orphaned`), never re-appended.
                continue;
            }
            let context = content.get("context").and_then(Value::as_str);
            let data = content.get("data").cloned().unwrap_or(Value::Null);
            self.append_at(ts, event, context, &data)?;
        }
        self.sign_head();
        Ok(())
    }
}

impl Ledger for MemLedger {
    fn head(&self) -> Seq {
        self.head
    }

    fn oldest(&self) -> Seq {
        self.oldest
    }

    fn hash_at(&self, seq: Seq) -> Option<Hash> {
        if seq == Seq::ZERO {
            return Some(Hash::ZERO);
        }
        if seq >= self.oldest && seq <= self.head {
            let i = usize::try_from(seq.0 - self.oldest.0).ok()?;
            return self.entries.get(i).map(|e| e.hash);
        }
        self.anchor
            .filter(|(s, _)| *s == seq && seq == self.oldest.prev())
            .map(|(_, h)| h)
    }

    fn batch_end(&self, from: Seq, limits: BatchLimits) -> Option<Seq> {
        if from < self.oldest || from > self.head {
            return None;
        }
        let start = usize::try_from(from.0 - self.oldest.0).ok()?;
        crate::uplink::span_end(from, self.entries.iter().skip(start), limits)
    }
}

/// A receiver-side store of one agent's chain: entries by seq.
#[derive(Debug, Clone, Default)]
pub struct MemChain {
    pub entries: BTreeMap<u64, Entry>,
}

impl MemChain {
    /// Stores entries starting at `first`; returns the seqs that were
    /// already present (which a correct receiver never overwrites).
    pub fn insert(&mut self, first: Seq, entries: &[Entry]) -> Vec<Seq> {
        let mut clashes = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let seq = first.0 + i as u64;
            match self.entries.entry(seq) {
                std::collections::btree_map::Entry::Occupied(_) => clashes.push(Seq(seq)),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(e.clone());
                }
            }
        }
        clashes
    }

    /// Drops everything after `seq` (a restored or damaged disk).
    pub fn truncate_after(&mut self, seq: Seq) {
        self.entries.split_off(&(seq.0 + 1));
    }

    pub fn head(&self) -> Option<(Seq, &Entry)> {
        self.entries.last_key_value().map(|(s, e)| (Seq(*s), e))
    }
}

impl ChainView for MemChain {
    fn hash_at(&self, seq: Seq) -> Option<Hash> {
        if seq == Seq::ZERO {
            return Some(Hash::ZERO);
        }
        self.entries.get(&seq.0).map(|e| e.hash)
    }
}

/// A chain view over a durable store and the entries accepted but not yet
/// committed on top of it.
#[derive(Debug)]
pub struct Layered<'a, V: ChainView> {
    pub durable: &'a V,
    pub pending: &'a BTreeMap<u64, Hash>,
}

impl<V: ChainView> ChainView for Layered<'_, V> {
    fn hash_at(&self, seq: Seq) -> Option<Hash> {
        self.pending
            .get(&seq.0)
            .copied()
            .or_else(|| self.durable.hash_at(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Verdict, Verifier};

    fn ledger() -> MemLedger {
        let key = SecretKey::from_seed(&[1; 32]);
        let mut l = MemLedger::new(AgentId::new("a1").unwrap(), key);
        l.checkpoint_every = 3;
        l.append(
            0,
            "genesis",
            None,
            Value::Object(crate::json::Object::new()),
        )
        .unwrap();
        l
    }

    #[test]
    fn cadence_signs_every_n_and_batches_end_at_signatures() {
        let mut l = ledger();
        for i in 0..7 {
            l.append(i, "info", None, Value::from(i as u64)).unwrap();
        }
        // 8 entries, signed at 3 and 6
        let signed: Vec<bool> = l.held().map(|e| e.sig.is_some()).collect();
        assert_eq!(
            signed,
            [false, false, true, false, false, true, false, false]
        );
        let lim = |n| BatchLimits {
            max_entries: n,
            max_bytes: 1 << 20,
        };
        assert_eq!(l.batch_end(Seq(1), lim(100)), Some(Seq(6)));
        assert_eq!(l.batch_end(Seq(1), lim(4)), Some(Seq(3)));
        // a single span longer than the limit is still one batch
        assert_eq!(l.batch_end(Seq(1), lim(1)), Some(Seq(3)));
        assert_eq!(l.batch_end(Seq(7), lim(100)), None);
        l.sign_head();
        assert_eq!(l.batch_end(Seq(7), lim(100)), Some(Seq(8)));
    }

    #[test]
    fn pruning_never_passes_the_best_receipt() {
        let mut l = ledger();
        for i in 0..5 {
            l.append(i, "info", None, Value::Null).unwrap();
        }
        assert_eq!(l.prune_through(Seq(4)), 0, "no receipt: nothing goes");
        let gw = SecretKey::from_seed(&[2; 32]);
        let g = AgentId::new("gw").unwrap();
        l.best = Some(Receipt::sign(
            &gw,
            &g,
            l.agent(),
            Seq(3),
            l.hash_at(Seq(3)).unwrap(),
        ));
        assert_eq!(l.prune_through(Seq(5)), 3);
        assert_eq!(l.oldest(), Seq(4));
        assert_eq!(l.range(Seq(1), Seq(10)).len(), 3);
    }

    #[test]
    fn adoption_appends_recovery_and_reappends_orphans() {
        let mut l = ledger();
        for i in 0..4 {
            l.append(i, "info", Some("ctx"), Value::from(i as u64))
                .unwrap();
        }
        // the gateway holds another history up to 6, signed by this agent
        let mut other = ledger();
        for i in 0..5 {
            other.append(i, "fact", None, Value::Null).unwrap();
        }
        other.sign_head();
        let (n, h) = (other.head, other.head_hash);
        let sig = other.entries.back().unwrap().sig.unwrap();
        let gw = SecretKey::from_seed(&[2; 32]);
        let g = AgentId::new("gw").unwrap();
        let best = Receipt::sign(&gw, &g, l.agent(), Seq(3), l.hash_at(Seq(3)).unwrap());
        let adoption = Adoption {
            receipt: Receipt::sign(&gw, &g, l.agent(), n, h),
            agent_sig: sig,
            best_before: Some(best),
        };
        l.adopt(&adoption, 99).unwrap();
        // recovery at 7, then orphans 4 and 5 re-appended at 8 and 9
        assert_eq!(l.head, Seq(9));
        assert_eq!(l.oldest, Seq(7));
        assert_eq!(l.hash_at(Seq(6)), Some(h));
        let run = l.range(Seq(7), Seq(9));
        let header = run[0].header().unwrap();
        assert_eq!(header.event.as_str(), "recovery");
        assert_eq!(run[0].prev, h);
        assert_eq!(run[1].header().unwrap().context.as_deref(), Some("ctx"));
        // the local export (older run + new run) verifies across the break
        let mut v = Verifier::new(Some(l.key.public())).allowing_recovery_breaks();
        for e in l.older_runs()[0].iter().chain(&run) {
            v.push_line(e.to_jsonl().as_bytes()).unwrap();
        }
        let Verdict::Valid(summary) = v.finish() else {
            panic!()
        };
        assert_eq!(summary.segments, vec![(Seq(1), Seq(3)), (Seq(7), Seq(9))]);
    }
}
