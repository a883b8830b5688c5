//! Salvage: what of a damaged ledger file still verifies.
//!
//! A store file that fails its checks is set aside, never served; but most
//! of it is usually intact, and entries that were acknowledged and never
//! reached a gateway exist nowhere else. Salvage reads the file's bytes
//! without its database structures (which are what may be broken): every
//! stored entry is a postcard record whose content is canonical JSON
//! beginning `{"agent":"<id>",`, so [`Finder::scan`] looks for that text
//! and decodes the record around it, noting where each whose hash is right
//! lies (memory per entry is an index row, not the entry: a million-entry
//! file is salvaged in about a hundred MiB). Checkpoint signatures are
//! judged as they are found; one that fails is stripped (damage and
//! forgery look alike; the hash and link still hold, and the agent signs
//! what it keeps anew).
//! [`assemble`] then puts the finds back into runs that link, keeps each
//! run only as far as a checkpoint signature vouches for it (an entry
//! anyone could have written is not evidence), and picks the chain: the
//! run holding the newest entry and, below it, the runs it continued.
//!
//! No I/O here: the caller feeds the file in pieces.

use std::collections::{BTreeMap, HashMap};

use crate::crypto::{Hash, PublicKey, chain_hash};
use crate::entry::{self, Entry, Seq};
use crate::id::AgentId;

/// Collects where one agent's entries lie in a damaged file's bytes.
#[derive(Debug)]
pub struct Finder {
    agent: AgentId,
    key: PublicKey,
    pattern: Vec<u8>,
    /// By (seq, hash): copies of one entry found twice (old page versions,
    /// an unsigned copy beside its signed rewrite) are kept once.
    found: BTreeMap<(u64, [u8; 32]), Found>,
    limit: usize,
    bad_signatures: usize,
    over_limit: usize,
}

/// Where a found entry's record lies, and what it says of it.
#[derive(Debug, Clone, Copy)]
struct Found {
    offset: u64,
    prev: [u8; 32],
    /// A `genesis` or `recovery` entry: where a chain (re)starts.
    starts_chain: bool,
    /// It carries a checkpoint signature that verifies.
    signed: bool,
}

/// Where one salvaged entry's record lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seq: Seq,
    /// Of the record's first byte: read [`MAX_RECORD`] bytes from here and
    /// decode them with [`entry_at`].
    pub offset: u64,
    /// Its signature verified; without this, any signature is stripped.
    pub signed: bool,
}

/// The largest record: content, two hashes, a signature and their lengths.
pub const MAX_RECORD: usize = entry::MAX_CONTENT_BYTES + 3 + 2 * 33 + 66;

impl Finder {
    /// A finder for `agent`'s entries, signed under `key`, that indexes at
    /// most `limit` of them (more are counted as not salvaged).
    pub fn new(agent: &AgentId, key: &PublicKey, limit: usize) -> Finder {
        let mut pattern = b"{\"agent\":".to_vec();
        crate::canonical::write_str(agent.as_str(), &mut pattern);
        pattern.push(b',');
        Finder {
            agent: agent.clone(),
            key: *key,
            pattern,
            found: BTreeMap::new(),
            limit,
            bad_signatures: 0,
            over_limit: 0,
        }
    }

    /// Scans `buf`, which starts at byte `base` of the file. A caller
    /// reading a file in pieces overlaps each piece with the last
    /// [`MAX_RECORD`] bytes of the one before, so that no record is cut;
    /// finding one twice is harmless.
    pub fn scan(&mut self, base: u64, buf: &[u8]) {
        let finder = memchr::memmem::Finder::new(&self.pattern).into_owned();
        for at in finder.find_iter(buf) {
            // The content's length precedes it as a postcard varint of one
            // to three bytes (contents are at most 64 KiB).
            for width in 1..=3 {
                let Some(start) = at.checked_sub(width) else {
                    break;
                };
                // The varint must be exactly the bytes before the content.
                let varint = |n: usize| 1 + usize::from(n >= 1 << 7) + usize::from(n >= 1 << 14);
                if let Some(e) = entry_at(&buf[start..])
                    && varint(e.content.len()) == width
                {
                    self.keep(base + start as u64, &e);
                    break;
                }
            }
        }
    }

    fn keep(&mut self, offset: u64, e: &Entry) {
        let Ok(h) = entry::check_canonical_content(&e.content) else {
            return;
        };
        if h.agent != self.agent {
            return;
        }
        let signed = match &e.sig {
            Some(sig) if self.key.verify_checkpoint(&self.agent, h.seq, &e.hash, sig) => true,
            Some(_) => {
                self.bad_signatures += 1;
                false
            }
            None => false,
        };
        let key = (h.seq.0, e.hash.0);
        if let Some(have) = self.found.get_mut(&key) {
            // The signed rewrite of an entry beats its unsigned first copy.
            if signed && !have.signed {
                have.offset = offset;
                have.signed = true;
            }
            return;
        }
        if self.found.len() >= self.limit {
            self.over_limit += 1;
            return;
        }
        let starts_chain = matches!(h.event.as_str(), "genesis" | "recovery");
        self.found.insert(
            key,
            Found {
                offset,
                prev: e.prev.0,
                starts_chain,
                signed,
            },
        );
    }

    /// How many distinct entries were found.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }
}

/// Decodes the record at the start of `buf`, if it is one and its hash is
/// right.
pub fn entry_at(buf: &[u8]) -> Option<Entry> {
    let (e, _) = postcard::take_from_bytes::<Entry>(buf).ok()?;
    (chain_hash(&e.content, &e.prev) == e.hash).then_some(e)
}

/// What salvage recovered, as places in the file.
#[derive(Debug, Default)]
pub struct Salvage {
    /// The oldest run of the chain: it continues from `anchor` (or from
    /// nothing, when it begins with genesis at seq 1). Kept at its seqs.
    pub chain: Vec<Loc>,
    /// `(seq, hash)` that `chain`'s first entry links to, unless genesis.
    pub anchor: Option<(Seq, Hash)>,
    /// Later runs of the chain, past entries that are gone: they can no
    /// longer link, so their contents are appended anew (oldest first).
    pub stranded: Vec<Loc>,
    /// Seq ranges of the chain that nothing recovered (inclusive).
    pub lost: Vec<(Seq, Seq)>,
    /// Entries found that verified but belong to no run of the chain (old
    /// page copies, runs set aside before): left in the damaged file.
    pub unused: usize,
    /// Checkpoint signatures that did not verify, stripped.
    pub bad_signatures: usize,
    /// Entries past the finder's limit, not indexed.
    pub over_limit: usize,
}

impl Salvage {
    /// The entries recovered, kept in place or to be appended anew.
    pub fn recovered(&self) -> usize {
        self.chain.len() + self.stranded.len()
    }
}

#[derive(Debug)]
struct Run {
    /// (seq, found), in seq order.
    entries: Vec<(u64, Found)>,
}

impl Run {
    fn first_seq(&self) -> u64 {
        self.entries.first().map_or(0, |(s, _)| *s)
    }
    fn last_seq(&self) -> u64 {
        self.entries.last().map_or(0, |(s, _)| *s)
    }
}

/// Seq ranges as an alert names them: `3,7-9`.
pub fn ranges_text(ranges: &[(Seq, Seq)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Puts the finds back together (see the module's description).
pub fn assemble(finder: Finder) -> Salvage {
    let total = finder.found.len();
    // Runs of linked entries, in seq order: an entry continues the run
    // whose last entry is its `prev` at the seq before.
    let mut runs: Vec<Run> = Vec::new();
    // The runs' ends at the seq before and at this one, by hash: only
    // these can be continued (memory per seq, not per entry).
    let mut before: HashMap<[u8; 32], usize> = HashMap::new();
    let mut ends: HashMap<[u8; 32], usize> = HashMap::new();
    let mut level = 0u64;
    for ((seq, hash), f) in finder.found {
        if seq != level {
            before = if seq == level + 1 {
                std::mem::take(&mut ends)
            } else {
                ends.clear();
                HashMap::new()
            };
            level = seq;
        }
        let cont = before
            .get(&f.prev)
            .copied()
            .filter(|i| runs[*i].last_seq() + 1 == seq && !f.starts_chain);
        let i = match cont {
            Some(i) => i,
            None => {
                runs.push(Run {
                    entries: Vec::new(),
                });
                runs.len() - 1
            }
        };
        ends.insert(hash, i);
        runs[i].entries.push((seq, f));
    }
    // The chain: the run with the newest entry, then downwards the run
    // that ends highest below where the chosen ones begin, until a run
    // that begins a chain (genesis or a recovery).
    runs.sort_by_key(|r| std::cmp::Reverse(r.last_seq()));
    let mut chosen: Vec<Run> = Vec::new();
    let mut rest = runs.into_iter();
    let mut pool: Vec<Run> = Vec::new();
    if let Some(top) = rest.next() {
        chosen.push(top);
        pool.extend(rest);
        while let Some(low) = chosen.last() {
            if low.entries.first().is_some_and(|(_, f)| f.starts_chain) {
                break;
            }
            let below = low.first_seq();
            let Some(i) = pool
                .iter()
                .enumerate()
                .filter(|(_, r)| r.last_seq() < below)
                .max_by_key(|(_, r)| r.last_seq())
                .map(|(i, _)| i)
            else {
                break;
            };
            chosen.push(pool.swap_remove(i));
        }
    }
    chosen.reverse();
    let mut s = Salvage {
        bad_signatures: finder.bad_signatures,
        over_limit: finder.over_limit,
        ..Salvage::default()
    };
    let mut next_expected: Option<u64> = None;
    for (i, run) in chosen.into_iter().enumerate() {
        let (first, last) = (run.first_seq(), run.last_seq());
        if let Some(n) = next_expected
            && first > n
        {
            s.lost.push((Seq(n), Seq(first - 1)));
        }
        next_expected = Some(last + 1);
        if i == 0 && first > 1 {
            s.anchor = run
                .entries
                .first()
                .map(|(_, f)| (Seq(first - 1), Hash(f.prev)));
        }
        let locs = run.entries.into_iter().map(|(seq, f)| Loc {
            seq: Seq(seq),
            offset: f.offset,
            signed: f.signed,
        });
        if i == 0 {
            s.chain = locs.collect();
        } else {
            s.stranded.extend(locs);
        }
    }
    s.unused = total - s.recovered();
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::entry::Stamp;
    use crate::id::EventName;
    use crate::json::{Object, Value};

    fn chain(key: &SecretKey, agent: &AgentId, n: u64, sign_every: u64) -> Vec<Entry> {
        let mut prev = Hash::ZERO;
        (1..=n)
            .map(|seq| {
                let stamp = Stamp {
                    agent,
                    seq: Seq(seq),
                    unix_ms: 1_700_000_000_000 + seq as i64,
                    clock: None,
                };
                let event = if seq == 1 { "genesis" } else { "reading" };
                let mut d = Object::new();
                d.insert("n", Value::from(seq));
                let content = entry::build_content(
                    &stamp,
                    &EventName::new(event).unwrap(),
                    None,
                    &Value::Object(d),
                )
                .unwrap();
                let mut e = Entry::seal(content, prev);
                if seq % sign_every == 0 || seq == n {
                    e.sig = Some(key.sign_checkpoint(agent, Seq(seq), &e.hash));
                }
                prev = e.hash;
                e
            })
            .collect()
    }

    /// The salvaged entries read back from `bytes`.
    fn read(bytes: &[u8], locs: &[Loc]) -> Vec<Entry> {
        locs.iter()
            .map(|l| {
                let mut e = entry_at(&bytes[l.offset as usize..]).unwrap();
                if !l.signed {
                    e.sig = None;
                }
                e
            })
            .collect()
    }

    /// Records as a store would hold them, among unrelated bytes.
    fn file(entries: &[Entry]) -> Vec<u8> {
        let mut out = vec![0xAB; 100];
        for e in entries {
            out.extend_from_slice(&postcard::to_allocvec(e).unwrap());
            out.extend_from_slice(&[0u8, 7, 7, 1, 0]);
        }
        out
    }

    fn setup() -> (SecretKey, AgentId) {
        (
            SecretKey::from_seed(&[3; 32]),
            AgentId::new("pi-s").unwrap(),
        )
    }

    #[test]
    fn an_intact_file_is_found_whole() {
        let (k, a) = setup();
        let c = chain(&k, &a, 50, 10);
        let bytes = file(&c);
        let mut f = Finder::new(&a, &k.public(), usize::MAX);
        f.scan(0, &bytes);
        let s = assemble(f);
        assert_eq!(read(&bytes, &s.chain), c);
        assert!(s.stranded.is_empty() && s.lost.is_empty() && s.anchor.is_none());
    }

    #[test]
    fn a_damaged_entry_splits_the_chain_and_the_rest_is_stranded() {
        let (k, a) = setup();
        let c = chain(&k, &a, 50, 10);
        let mut bytes = file(&c);
        // flip a byte inside entry 23's data
        let needle = br#""seq":23,"#;
        let at = memchr::memmem::find(&bytes, needle).unwrap();
        bytes[at - 5] ^= 1;
        let mut f = Finder::new(&a, &k.public(), usize::MAX);
        f.scan(0, &bytes);
        let s = assemble(f);
        // 21 and 22 link to the checkpoint at 20: kept, unsigned
        assert_eq!(read(&bytes, &s.chain), c[..22].to_vec());
        assert_eq!(read(&bytes, &s.stranded), c[23..].to_vec());
        assert_eq!(s.lost, vec![(Seq(23), Seq(23))]);
        assert_eq!(s.bad_signatures, 0);
    }

    #[test]
    fn pieces_that_overlap_find_everything_once() {
        let (k, a) = setup();
        let c = chain(&k, &a, 200, 10);
        let bytes = file(&c);
        let mut f = Finder::new(&a, &k.public(), usize::MAX);
        let piece = 1000;
        let mut at = 0;
        while at < bytes.len() {
            let from = at.saturating_sub(MAX_RECORD);
            f.scan(from as u64, &bytes[from..(at + piece).min(bytes.len())]);
            at += piece;
        }
        assert_eq!(f.len(), 200);
        assert_eq!(read(&bytes, &assemble(f).chain), c);
    }

    #[test]
    fn signatures_that_fail_are_stripped_and_other_agents_ignored() {
        let (k, a) = setup();
        let c = chain(&k, &a, 30, 10);
        // the same contents signed under another key extend ours at 31..40
        let other = chain(&SecretKey::from_seed(&[9; 32]), &a, 40, 10);
        let foreign = chain(&k, &AgentId::new("pi-t").unwrap(), 50, 10);
        let mut bytes = file(&c);
        bytes.extend(file(&other[30..]));
        bytes.extend(file(&foreign));
        let mut f = Finder::new(&a, &k.public(), usize::MAX);
        f.scan(0, &bytes);
        assert_eq!(f.len(), 40);
        let s = assemble(f);
        let chain = read(&bytes, &s.chain);
        assert_eq!(chain.len(), 40);
        assert_eq!(chain[..30], c[..]);
        assert_eq!(s.bad_signatures, 1);
        assert!(chain[39].sig.is_none());
    }

    #[test]
    fn a_pruned_chain_keeps_its_anchor_and_the_unsigned_tail() {
        let (k, a) = setup();
        let c = chain(&k, &a, 47, 10);
        let bytes = file(&c[12..]);
        let mut f = Finder::new(&a, &k.public(), usize::MAX);
        f.scan(0, &bytes);
        let s = assemble(f);
        assert_eq!(s.anchor, Some((Seq(12), c[11].hash)));
        assert_eq!(read(&bytes, &s.chain), c[12..].to_vec());
    }

    #[test]
    fn the_limit_bounds_what_is_held() {
        let (k, a) = setup();
        let c = chain(&k, &a, 100, 10);
        let mut f = Finder::new(&a, &k.public(), 20);
        f.scan(0, &file(&c));
        assert_eq!(f.len(), 20);
        assert_eq!(assemble(f).over_limit, 80);
    }
}
