//! `entries` (agent → gateway, QoS 1): consecutive entries of one agent's
//! chain, ending at a signed entry (PROTOCOL §4, §7).

use serde::{Deserialize, Serialize};

use super::{DecodeError, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, Message, Receipt};
use crate::entry::Entry;
use crate::id::AgentId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBatch {
    pub agent: AgentId,
    /// Under rule 3b, the gateway's own receipt covering the entry before
    /// the first one sent (the agent no longer holds what the gateway lost).
    pub proof: Option<Receipt>,
    pub entries: Vec<Entry>,
}

impl Message for EntryBatch {
    const LIMIT: usize = MAX_BATCH_BYTES;

    fn validate(&self) -> Result<(), DecodeError> {
        match self.entries.len() {
            0 => Err(DecodeError::EmptyBatch),
            n if n > MAX_BATCH_ENTRIES => Err(DecodeError::TooManyEntries(n)),
            _ => Ok(()),
        }
    }
}

impl EntryBatch {
    /// The encoded size of a batch holding `entries` without a proof, to
    /// cut batches within [`MAX_BATCH_BYTES`] before encoding them.
    pub fn encoded_overhead(agent: &AgentId) -> usize {
        // version + agent (len + bytes) + proof tag + entry count (varint <= 3)
        1 + 1 + agent.as_str().len() + 1 + 3
    }
}

/// Bytes one entry takes inside a batch: content (varint length + bytes),
/// prev and hash (length byte + 32 each), sig tag (+ length byte + 64).
pub fn entry_wire_size(entry: &Entry) -> usize {
    let len = entry.content.len();
    let varint = if len < 1 << 7 {
        1
    } else if len < 1 << 14 {
        2
    } else {
        3
    };
    varint + len + 33 + 33 + 1 + if entry.sig.is_some() { 65 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Hash, Sig};
    use crate::wire::test_util::check_framing;

    fn batch(n: usize) -> EntryBatch {
        let entries = (0..n)
            .map(|i| Entry {
                content: format!("{{\"i\":{i}}}").into_bytes(),
                prev: Hash([1; 32]),
                hash: Hash([2; 32]),
                sig: (i + 1 == n).then_some(Sig([3; 64])),
            })
            .collect();
        EntryBatch {
            agent: AgentId::new("pi-1").unwrap(),
            proof: None,
            entries,
        }
    }

    #[test]
    fn framing() {
        check_framing(&batch(3));
    }

    #[test]
    fn entry_wire_size_matches_the_encoding() {
        let b = batch(40);
        let predicted: usize = EntryBatch::encoded_overhead(&b.agent)
            + b.entries.iter().map(entry_wire_size).sum::<usize>();
        let actual = b.encode().len();
        // The count varint takes 1 byte for 40 entries, 3 are reserved.
        assert_eq!(predicted, actual + 2);
    }

    #[test]
    fn empty_and_oversized_batches_are_refused() {
        assert_eq!(
            EntryBatch::decode(&batch(0).encode()),
            Err(DecodeError::EmptyBatch)
        );
        // 4,097 entries of even the smallest size exceed 256 KiB, so the
        // count rule is checked on the decoded value itself.
        let mut b = batch(1);
        b.entries = vec![b.entries[0].clone(); MAX_BATCH_ENTRIES + 1];
        assert_eq!(
            b.validate(),
            Err(DecodeError::TooManyEntries(MAX_BATCH_ENTRIES + 1))
        );
        assert!(matches!(
            EntryBatch::decode(&b.encode()),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
