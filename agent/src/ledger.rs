//! The agent's ledger: one redb file holding the chain by seq, the head, the
//! best receipt and the pinned gateway key.
//!
//! Durability contract: every change goes through [`Txn::commit`] (one
//! write transaction, `Durability::Immediate`); when it returns `Ok` the
//! change survives a crash or power cut, and when it returns `Err` none of it
//! does and the in-memory head is put back. Callers are answered only after
//! `Ok` (PROTOCOL §7 rule 0).
//!
//! Memory stays flat however long the chain: the uplink reads entries from
//! the file as it needs them ([`View`]); nothing is indexed in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_runtime::db::{self, Opener, Reopenable};
use baton_runtime::progress::Progress;

use baton_shared::entry::{self, AppendError, AppendRequest, ClockInfo, Entry, Seq, Stamp};
use baton_shared::json::{Object, Value};
use baton_shared::uplink::{Adoption, BatchLimits};
use baton_shared::wire::{EntryBatch, Message, Receipt, entry_wire_size};
use baton_shared::{AgentId, EventName, Hash, PublicKey, SecretKey};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Entries by seq: postcard [`Entry`] (canonical content, prev, hash, sig).
const ENTRIES: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("entries");
/// Entries set aside by an adoption (rule 3c): (adoption number, seq).
const ORPHANS: TableDefinition<'static, (u64, u64), &[u8]> = TableDefinition::new("orphans");
/// Commands recorded (PROTOCOL §9), by hash: postcard [`CommandRecord`].
/// Kept until `expires` + 1 h whatever the ledger's retention, so that a
/// second delivery is answered from what was recorded, never run again.
const COMMANDS: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("commands");
/// Named values: identity, head, best receipt, pinned gateway key.
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

const IDENTITY: &str = "identity";
const HEAD: &str = "head";
const BEST: &str = "best_receipt";
const GATEWAY_KEY: &str = "gateway_key";
const ADOPTIONS: &str = "adoptions";
/// `(seq, hash)` through which a start-up check has verified the chain.
const VERIFIED: &str = "verified_through";
/// The orphan run of entries salvaged past damage, waiting to be appended
/// anew once the gateway has said what it holds.
const STRANDED: &str = "stranded_run";
/// The head of what salvage put back in place, until the gateway has
/// answered: an adoption keeps the chain through it.
const SALVAGED: &str = "salvaged_through";

/// A recorded command is remembered this long past its `expires`.
pub const COMMAND_KEPT_MS: i64 = 3_600_000;

/// A command the agent recorded: enough to answer a second delivery from
/// what was recorded, to answer what a restart interrupted, and to rebuild
/// the frozen state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub issuer: String,
    pub id: String,
    pub verb: String,
    pub expires_ms: i64,
    /// For a `thaw`: the freeze it lifts.
    pub thaws: Option<[u8; 32]>,
    /// The `command` entry's seq.
    pub command_seq: u64,
    /// The latest `command_ack` entry as stored (signed): a TRANSIT, or the
    /// final answer.
    pub answer: Option<Entry>,
    pub answer_final: bool,
    /// The final answer's state (1, 0, −1).
    pub state: i8,
}

/// Sign a checkpoint at least every this many entries (PROTOCOL §4).
pub const CHECKPOINT_EVERY: u64 = 1000;
/// ... and once the unsigned entries reach this many wire bytes, so that a
/// span (which a batch never splits) always fits a batch: at most this plus
/// one maximal entry, far below `MAX_BATCH_BYTES`.
pub const CHECKPOINT_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("opening ledger {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("ledger transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("ledger table: {0}")]
    Table(#[from] redb::TableError),
    #[error("ledger access: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("ledger commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("ledger record {what} is damaged: {problem}")]
    Damaged { what: String, problem: String },
    #[error("this ledger belongs to agent {stored}, not {configured}")]
    WrongAgent { stored: String, configured: String },
    #[error("ledger is closed (reopening after an I/O error failed; retrying)")]
    Closed,
}

type Result<T> = std::result::Result<T, LedgerError>;

impl LedgerError {
    /// Whether the file's contents are damaged (as opposed to the file
    /// being busy, unreadable for permissions, or the disk failing now):
    /// only damage justifies setting the file aside and rebuilding.
    pub fn is_damage(&self) -> bool {
        match self {
            LedgerError::Damaged { .. } => true,
            LedgerError::Open { source, .. } => db::open_damage(source),
            LedgerError::Storage(s) => db::storage_damage(s),
            LedgerError::Table(t) => db::table_damage(t),
            LedgerError::Transaction(redb::TransactionError::Storage(s))
            | LedgerError::Commit(redb::CommitError::Storage(s)) => db::storage_damage(s),
            _ => false,
        }
    }
}

fn damaged(what: impl Into<String>, problem: impl ToString) -> LedgerError {
    LedgerError::Damaged {
        what: what.into(),
        problem: problem.to_string(),
    }
}

fn read_salvaged(
    records: &mut baton_runtime::salvage::Records,
    loc: &baton_shared::salvage::Loc,
) -> Result<Entry> {
    records
        .read(loc)
        .map_err(|e| damaged(format!("salvaged entry {}", loc.seq), e))
}

/// Puts what salvage recovered from a damaged file into `ledger` (fresh):
/// the chain at its seqs, the stranded entries as an orphan run for
/// [`Txn::release_stranded`]. Commits every [`IMPORT_GROUP`] entries (redb
/// holds a transaction's pages in memory until it commits); the markers
/// that make the salvage count go in the last commit. Returns the head.
pub fn import(
    ledger: &Ledger,
    agent: &AgentId,
    key: &SecretKey,
    s: &baton_shared::salvage::Salvage,
    records: &mut baton_runtime::salvage::Records,
) -> Result<Head> {
    let mut head = Head {
        oldest: s.chain.first().map_or(Seq(1), |l| l.seq),
        anchor: s.anchor,
        ..Head::EMPTY
    };
    for group in s.chain.chunks(IMPORT_GROUP) {
        let mut txn = ledger.begin(agent, key, head)?;
        {
            let mut t = txn.txn.open_table(ENTRIES)?;
            for loc in group {
                let e = read_salvaged(records, loc)?;
                let stored = encode(&e);
                t.insert(loc.seq.0, stored.as_slice())?;
                txn.head.held_bytes += stored.len() as u64;
                txn.head.seq = loc.seq;
                txn.head.hash = e.hash;
                if e.sig.is_some() {
                    txn.head.unsigned = 0;
                    txn.head.unsigned_bytes = 0;
                } else {
                    txn.head.unsigned += 1;
                    txn.head.unsigned_bytes += entry_wire_size(&e) as u64;
                }
            }
        }
        head = txn.commit()?;
    }
    let n = if s.stranded.is_empty() {
        None
    } else {
        let mut txn = ledger.begin(agent, key, head)?;
        let n = txn.next_run()?;
        head = txn.commit()?;
        for group in s.stranded.chunks(IMPORT_GROUP) {
            let txn = ledger.begin(agent, key, head)?;
            {
                let mut o = txn.txn.open_table(ORPHANS)?;
                for loc in group {
                    o.insert(
                        (n, loc.seq.0),
                        encode(&read_salvaged(records, loc)?).as_slice(),
                    )?;
                }
            }
            head = txn.commit()?;
        }
        Some(n)
    };
    let txn = ledger.begin(agent, key, head)?;
    {
        let mut m = txn.txn.open_table(META)?;
        m.insert(SALVAGED, head.seq.0.to_le_bytes().as_slice())?;
        if let Some(n) = n {
            m.insert(STRANDED, n.to_le_bytes().as_slice())?;
        }
    }
    txn.commit()
}

/// Entries per commit while importing a salvage.
pub const IMPORT_GROUP: usize = 20_000;

/// Where the chain stands. `oldest` is the first held seq; after an
/// adoption the run continues from `anchor` (seq `oldest - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: Seq,
    pub hash: Hash,
    pub oldest: Seq,
    pub anchor: Option<(Seq, Hash)>,
    /// Entries after the newest checkpoint.
    pub unsigned: u64,
    /// Their wire bytes.
    pub unsigned_bytes: u64,
    /// The best receipt's seq: entries up to it may be pruned (rule 2).
    pub receipted: Seq,
    /// Stored bytes of the held entries (what the budget counts).
    pub held_bytes: u64,
    /// Appends refused for lack of space since the last append that
    /// succeeded: recorded in a `gap` entry before the next one (§7 rule 2).
    pub refused: Option<Refused>,
}

/// Appends refused for lack of space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub count: u64,
    /// Bytes of the refused requests' content.
    pub bytes: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

impl Head {
    const EMPTY: Head = Head {
        seq: Seq::ZERO,
        hash: Hash::ZERO,
        oldest: Seq(1),
        anchor: None,
        unsigned: 0,
        unsigned_bytes: 0,
        receipted: Seq::ZERO,
        held_bytes: 0,
        refused: None,
    };
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs into a Vec: cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

fn decode_entry(seq: u64, bytes: &[u8]) -> Result<Entry> {
    postcard::from_bytes(bytes).map_err(|e| damaged(format!("entry {seq}"), e))
}

/// The durable ledger. Cheap to clone; reads may run on any thread while
/// one [`Writer`](crate::writer) commits. The database sits behind a lock
/// so that it can be closed and reopened after an I/O error (redb refuses
/// every transaction after one) while readers keep their `Ledger`.
#[derive(Clone, Debug)]
pub struct Ledger {
    db: Arc<Reopenable>,
}

/// The ledger's page cache: small, the agent appends and rarely re-reads.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// What a fresh open found.
#[derive(Debug, Clone)]
pub struct Opened {
    pub ledger: Ledger,
    pub head: Head,
    pub best: Option<Receipt>,
    pub gateway_key: Option<PublicKey>,
}

impl Ledger {
    /// Opens (or creates) the ledger of `agent` at `path`.
    pub fn open(path: &Path, agent: &AgentId) -> Result<Opened> {
        Self::open_with(path, agent, baton_runtime::db::file_opener(CACHE_BYTES))
    }

    /// Opens with a given opener (tests inject storage faults this way:
    /// `baton_runtime::db::faults`).
    pub fn open_with(path: &Path, agent: &AgentId, opener: Opener) -> Result<Opened> {
        let db = Reopenable::open(path, opener).map_err(|source| LedgerError::Open {
            path: path.to_owned(),
            source,
        })?;
        let ledger = Ledger { db: Arc::new(db) };
        let txn = ledger.db()?.begin_write()?;
        {
            txn.open_table(ENTRIES)?;
            txn.open_table(ORPHANS)?;
            txn.open_table(COMMANDS)?;
            let mut meta = txn.open_table(META)?;
            let stored = meta.get(IDENTITY)?.map(|v| v.value().to_vec());
            match stored {
                Some(s) if s != agent.as_str().as_bytes() => {
                    // The entries name the configured agent: it is the
                    // identity record that is damaged, not the directory
                    // that is wrong.
                    let entries = txn.open_table(ENTRIES)?;
                    let newest = entries
                        .last()?
                        .map(|(k, v)| decode_entry(k.value(), v.value()));
                    if let Some(Ok(e)) = newest
                        && e.header().is_ok_and(|h| h.agent == *agent)
                    {
                        return Err(damaged("identity", "does not match the entries"));
                    }
                    return Err(LedgerError::WrongAgent {
                        stored: String::from_utf8_lossy(&s).into_owned(),
                        configured: agent.to_string(),
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(IDENTITY, agent.as_str().as_bytes())?;
                }
            }
        }
        txn.commit()?;
        let head = ledger.head()?;
        let best = ledger.best()?;
        let gateway_key = ledger.gateway_key()?;
        Ok(Opened {
            ledger,
            head,
            best,
            gateway_key,
        })
    }

    fn db(&self) -> Result<Arc<Database>> {
        self.db.get().ok_or(LedgerError::Closed)
    }

    /// Closes and reopens the file after an I/O error. Readers that hold
    /// the old handle for a moment are waited for (up to ~2 s).
    pub fn reopen(&self) -> Result<()> {
        self.db.reopen().map_err(|source| LedgerError::Open {
            path: self.db.path().to_owned(),
            source,
        })
    }

    /// Whether an error means the handle must be reopened (redb refuses
    /// all transactions after an I/O error).
    pub fn needs_reopen(e: &LedgerError) -> bool {
        let io = |s: &redb::StorageError| {
            matches!(
                s,
                redb::StorageError::Io(_) | redb::StorageError::PreviousIo
            )
        };
        match e {
            LedgerError::Storage(s) => io(s),
            LedgerError::Transaction(redb::TransactionError::Storage(s)) => io(s),
            LedgerError::Commit(redb::CommitError::Storage(s)) => io(s),
            LedgerError::Table(redb::TableError::Storage(s)) => io(s),
            LedgerError::Closed => true,
            _ => false,
        }
    }

    /// The agent a ledger file belongs to.
    pub fn identity(path: &Path) -> Result<AgentId> {
        let db = Database::open(path).map_err(|source| LedgerError::Open {
            path: path.to_owned(),
            source,
        })?;
        let txn = db.begin_read()?;
        let t = txn.open_table(META)?;
        let id = t
            .get(IDENTITY)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned())
            .ok_or_else(|| damaged("identity", "missing"))?;
        AgentId::new(id).map_err(|e| damaged("identity", e))
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db()?.begin_read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Every command recorded and not yet forgotten, by hash.
    pub fn commands(&self) -> Result<Vec<([u8; 32], CommandRecord)>> {
        let txn = self.db()?.begin_read()?;
        let t = txn.open_table(COMMANDS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let hash: [u8; 32] = k
                .value()
                .try_into()
                .map_err(|_| damaged("command index", "a key is not a hash"))?;
            let r = postcard::from_bytes(v.value()).map_err(|e| damaged("command index", e))?;
            out.push((hash, r));
        }
        Ok(out)
    }

    pub fn head(&self) -> Result<Head> {
        match self.meta(HEAD)? {
            None => Ok(Head::EMPTY),
            Some(b) => postcard::from_bytes(&b).map_err(|e| damaged("head", e)),
        }
    }

    pub fn best(&self) -> Result<Option<Receipt>> {
        self.meta(BEST)?
            .map(|b| Receipt::decode(&b).map_err(|e| damaged("best receipt", e)))
            .transpose()
    }

    pub fn gateway_key(&self) -> Result<Option<PublicKey>> {
        let Some(b) = self.meta(GATEWAY_KEY)? else {
            return Ok(None);
        };
        let bytes: [u8; 32] = b
            .as_slice()
            .try_into()
            .map_err(|_| damaged("gateway key", "not 32 bytes"))?;
        PublicKey::trusted(&bytes)
            .map(Some)
            .map_err(|e| damaged("gateway key", e))
    }

    /// Where the last start-up check left off: the chain through this
    /// entry was verified then (PROTOCOL §4; `verify` checks everything).
    pub fn verified_through(&self) -> Result<Option<(Seq, Hash)>> {
        self.meta(VERIFIED)?
            .map(|b| postcard::from_bytes(&b).map_err(|e| damaged("verified mark", e)))
            .transpose()
    }

    /// Records that the chain through `head` verified.
    pub fn mark_verified(&self, head: &Head) -> Result<()> {
        let txn = self.db()?.begin_write()?;
        txn.open_table(META)?
            .insert(VERIFIED, encode(&(head.seq, head.hash)).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Checks that the head record agrees with what is held: the oldest
    /// and newest held entries are where it says, and it counts the best
    /// receipt it claims. A damaged head could otherwise hide entries
    /// below a wrong `oldest` from every check and export.
    pub fn check_head(&self, head: &Head, best: Option<&Receipt>) -> Result<()> {
        let txn = self.db()?.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let first = t.first()?.map(|(k, _)| Seq(k.value()));
        let last = t.last()?.map(|(k, _)| Seq(k.value()));
        let expect = (head.seq >= head.oldest).then_some((head.oldest, head.seq));
        if first.zip(last) != expect {
            return Err(damaged(
                "head",
                format!(
                    "says {}..={} are held, the file holds {}..={}",
                    head.oldest,
                    head.seq,
                    first.unwrap_or_default(),
                    last.unwrap_or_default()
                ),
            ));
        }
        if head.receipted != best.map_or(Seq::ZERO, |b| b.seq) {
            return Err(damaged("head", "does not match the best receipt"));
        }
        Ok(())
    }

    /// Where a start-up check begins: after the verified mark if the entry
    /// there still has the hash it had, else at the oldest held entry.
    pub fn unverified_from(&self, head: &Head) -> Result<Seq> {
        let Some((seq, hash)) = self.verified_through()? else {
            return Ok(head.oldest);
        };
        let still = seq <= head.seq
            && (seq < head.oldest
                || self
                    .entries(seq, seq)?
                    .first()
                    .is_some_and(|e| e.hash == hash));
        Ok(if still {
            seq.next().max(head.oldest)
        } else {
            head.oldest
        })
    }

    /// Whether salvaged entries wait for the gateway's answer (a start
    /// after damage that has not finished its recovery).
    pub fn salvage_pending(&self) -> Result<bool> {
        Ok(self.meta(SALVAGED)?.is_some())
    }

    /// The orphan run of salvaged entries still to be appended anew.
    pub fn stranded(&self) -> Result<Vec<Entry>> {
        let Some(n) = self
            .meta(STRANDED)?
            .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
        else {
            return Ok(Vec::new());
        };
        let txn = self.db()?.begin_read()?;
        let t = txn.open_table(ORPHANS)?;
        let mut out = Vec::new();
        for row in t.range((n, 0)..=(n, u64::MAX))? {
            let (k, v) = row?;
            out.push(decode_entry(k.value().1, v.value())?);
        }
        Ok(out)
    }

    /// Held entries `from..=to`, oldest first.
    pub fn entries(&self, from: Seq, to: Seq) -> Result<Vec<Entry>> {
        let txn = self.db()?.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for row in t.range(from.0..=to.0)? {
            let (k, v) = row?;
            out.push(decode_entry(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Calls `f` with every held entry from `from` in order, in pages, so
    /// that exporting a long chain needs no memory for it.
    pub fn for_each(
        &self,
        from: Seq,
        to: Seq,
        mut f: impl FnMut(Seq, &Entry) -> Result<()>,
    ) -> Result<()> {
        const PAGE: u64 = 4096;
        let mut next = from.0;
        while next <= to.0 {
            let end = next.saturating_add(PAGE - 1).min(to.0);
            let page = self.entries(Seq(next), Seq(end))?;
            if page.is_empty() && self.next_held(Seq(next))?.is_none_or(|s| s > to) {
                break;
            }
            for (i, e) in page.iter().enumerate() {
                f(Seq(next + i as u64), e)?;
            }
            next = end + 1;
        }
        Ok(())
    }

    fn next_held(&self, from: Seq) -> Result<Option<Seq>> {
        let txn = self.db()?.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let next = t.range(from.0..)?.next().transpose()?;
        Ok(next.map(|(k, _)| Seq(k.value())))
    }

    /// Runs set aside by adoptions (rule 3c), each oldest first.
    pub fn orphan_runs(&self) -> Result<Vec<Vec<Entry>>> {
        let txn = self.db()?.begin_read()?;
        let t = txn.open_table(ORPHANS)?;
        let mut runs: Vec<(u64, Vec<Entry>)> = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let (n, seq) = k.value();
            let e = decode_entry(seq, v.value())?;
            match runs.last_mut() {
                Some((m, run)) if *m == n => run.push(e),
                _ => runs.push((n, vec![e])),
            }
        }
        Ok(runs.into_iter().map(|(_, r)| r).collect())
    }

    /// Bytes the file takes on disk.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(self.db.path()).map_or(0, |m| m.len())
    }

    /// A read view for the uplink at `head`.
    pub fn view(&self, head: Head) -> View<'_> {
        View { ledger: self, head }
    }

    /// The batch `from..=to` as the uplink asked for it.
    pub fn batch(
        &self,
        agent: &AgentId,
        from: Seq,
        to: Seq,
        proof: Option<Receipt>,
    ) -> Result<EntryBatch> {
        Ok(EntryBatch {
            agent: agent.clone(),
            proof,
            entries: self.entries(from, to)?,
        })
    }

    /// Checks the held chain from `from` to the head: every link, every
    /// hash, canonical content with the right agent and seq, and every
    /// signature under `key`. Returns the number of entries checked, or the
    /// first problem with its seq.
    pub fn verify(&self, agent: &AgentId, key: &PublicKey, head: &Head, from: Seq) -> Result<u64> {
        self.verify_showing(agent, key, head, from, &Progress::hidden())
    }

    /// As [`Ledger::verify`], advancing `progress` (one step an entry).
    pub fn verify_showing(
        &self,
        agent: &AgentId,
        key: &PublicKey,
        head: &Head,
        from: Seq,
        progress: &Progress,
    ) -> Result<u64> {
        let from = from.max(head.oldest);
        progress.set_total((head.seq.0 + 1).saturating_sub(from.0));
        // The link into the first checked entry: known unless the entries
        // before it were pruned (then its `prev` is taken as given).
        let mut prev: Option<Hash> = if from > head.oldest {
            let before = self.entries(from.prev(), from.prev())?;
            Some(
                before
                    .first()
                    .map(|e| e.hash)
                    .ok_or_else(|| damaged(format!("entry {}", from.prev()), "missing"))?,
            )
        } else {
            match head.anchor {
                Some((s, h)) if s == from.prev() => Some(h),
                _ if from == Seq(1) => Some(Hash::ZERO),
                _ => None,
            }
        };
        let mut expect = from;
        let mut checked = 0;
        self.for_each(from, head.seq, |seq, e| {
            let at = |p: &str| damaged(format!("entry {seq}"), p);
            if seq != expect {
                return Err(damaged(format!("entry {expect}"), "missing"));
            }
            entry::check_stored(agent, seq, e, prev.as_ref(), Some(key)).map_err(|p| at(&p))?;
            prev = Some(e.hash);
            expect = seq.next();
            checked += 1;
            if checked % 1024 == 0 {
                progress.inc(1024);
            }
            Ok(())
        })?;
        if expect != head.seq.next() {
            return Err(damaged(format!("entry {expect}"), "missing"));
        }
        if head.seq >= head.oldest && prev != Some(head.hash) {
            return Err(damaged("head", "does not match the newest entry"));
        }
        Ok(checked)
    }
}

/// The ledger as the uplink state machine reads it.
#[derive(Debug)]
pub struct View<'a> {
    ledger: &'a Ledger,
    head: Head,
}

impl baton_shared::uplink::Ledger for View<'_> {
    fn head(&self) -> Seq {
        self.head.seq
    }

    fn oldest(&self) -> Seq {
        self.head.oldest
    }

    fn hash_at(&self, seq: Seq) -> Option<Hash> {
        if seq == Seq::ZERO {
            return Some(Hash::ZERO);
        }
        if seq == self.head.seq {
            return Some(self.head.hash);
        }
        if seq >= self.head.oldest && seq < self.head.seq {
            return self.ledger.entries(seq, seq).ok()?.first().map(|e| e.hash);
        }
        self.head
            .anchor
            .filter(|(s, _)| *s == seq && seq == self.head.oldest.prev())
            .map(|(_, h)| h)
    }

    fn batch_end(&self, from: Seq, limits: BatchLimits) -> Option<Seq> {
        if from < self.head.oldest || from > self.head.seq {
            return None;
        }
        // Read a bounded page: a batch never exceeds max_entries unless a
        // single span does, and spans are at most CHECKPOINT_EVERY long.
        let span = limits.max_entries.max(CHECKPOINT_EVERY as usize) as u64;
        let to = Seq(from.0.saturating_add(span)).min(self.head.seq);
        let entries = self.ledger.entries(from, to).ok()?;
        baton_shared::uplink::span_end(from, &entries, limits)
    }
}

/// A group of changes, made durable by [`Txn::commit`].
pub struct Txn<'a> {
    txn: redb::WriteTransaction,
    agent: &'a AgentId,
    key: &'a SecretKey,
    head: Head,
}

impl Ledger {
    /// Starts a group of changes from `head`.
    pub fn begin<'a>(&self, agent: &'a AgentId, key: &'a SecretKey, head: Head) -> Result<Txn<'a>> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| damaged("durability", e))?;
        Ok(Txn {
            txn,
            agent,
            key,
            head,
        })
    }
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").field("head", &self.head).finish()
    }
}

impl Txn<'_> {
    pub fn head(&self) -> Head {
        self.head
    }

    /// Appends an entry the runtime or a caller asked for.
    pub fn append(
        &mut self,
        unix_ms: i64,
        clock: Option<&ClockInfo>,
        event: &EventName,
        context: Option<&str>,
        data: &Value,
    ) -> std::result::Result<(Seq, Hash), AppendFailure> {
        let ts = entry::format_timestamp(unix_ms);
        self.append_at(&ts, clock, event, context, data)
    }

    /// Appends a caller's request.
    pub fn append_request(
        &mut self,
        unix_ms: i64,
        clock: Option<&ClockInfo>,
        req: &AppendRequest,
    ) -> std::result::Result<(Seq, Hash), AppendFailure> {
        self.append(
            unix_ms,
            clock,
            &req.event,
            req.context.as_deref(),
            &req.data,
        )
    }

    fn append_at(
        &mut self,
        ts: &str,
        clock: Option<&ClockInfo>,
        event: &EventName,
        context: Option<&str>,
        data: &Value,
    ) -> std::result::Result<(Seq, Hash), AppendFailure> {
        let seq = self.head.seq.next();
        let stamp = Stamp {
            agent: self.agent,
            seq,
            unix_ms: 0,
            clock,
        };
        let content = entry::build_content_at(&stamp, ts, event, context, data)
            .map_err(AppendFailure::Request)?;
        let mut e = Entry::seal(content, self.head.hash);
        let hash = e.hash;
        self.head.unsigned += 1;
        self.head.unsigned_bytes += entry_wire_size(&e) as u64;
        if self.head.unsigned >= CHECKPOINT_EVERY || self.head.unsigned_bytes >= CHECKPOINT_BYTES {
            e.sig = Some(self.key.sign_checkpoint(self.agent, seq, &hash));
            self.head.unsigned = 0;
            self.head.unsigned_bytes = 0;
        }
        let mut t = self.txn.open_table(ENTRIES).map_err(LedgerError::from)?;
        let stored = encode(&e);
        t.insert(seq.0, stored.as_slice())
            .map_err(LedgerError::from)?;
        self.head.held_bytes += stored.len() as u64;
        self.head.seq = seq;
        self.head.hash = hash;
        Ok((seq, hash))
    }

    /// Signs the head as a checkpoint if it is unsigned.
    pub fn sign_head(&mut self) -> Result<()> {
        if self.head.unsigned == 0 || self.head.seq == Seq::ZERO {
            return Ok(());
        }
        let seq = self.head.seq;
        let mut t = self.txn.open_table(ENTRIES)?;
        let mut e = match t.get(seq.0)? {
            Some(v) => decode_entry(seq.0, v.value())?,
            None => return Err(damaged(format!("entry {seq}"), "head entry missing")),
        };
        e.sig = Some(self.key.sign_checkpoint(self.agent, seq, &e.hash));
        t.insert(seq.0, encode(&e).as_slice())?;
        self.head.unsigned = 0;
        self.head.unsigned_bytes = 0;
        Ok(())
    }

    /// Records (or updates) a command's row of the index, and forgets
    /// rows an hour past their `expires` (`now_ms`).
    pub fn record_command(&mut self, hash: &Hash, r: &CommandRecord, now_ms: i64) -> Result<()> {
        let mut t = self.txn.open_table(COMMANDS)?;
        t.insert(hash.0.as_slice(), encode(r).as_slice())?;
        let mut stale = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if let Ok(old) = postcard::from_bytes::<CommandRecord>(v.value())
                && old.expires_ms.saturating_add(COMMAND_KEPT_MS) < now_ms
            {
                stale.push(k.value().to_vec());
            }
        }
        for k in stale {
            t.remove(k.as_slice())?;
        }
        Ok(())
    }

    /// The entry at the head (what was just appended).
    pub fn head_entry(&mut self) -> Result<Entry> {
        let seq = self.head.seq;
        let t = self.txn.open_table(ENTRIES)?;
        let v = t
            .get(seq.0)?
            .ok_or_else(|| damaged(format!("entry {seq}"), "head entry missing"))?;
        decode_entry(seq.0, v.value())
    }

    pub fn store_best(&mut self, r: &Receipt) -> Result<()> {
        let mut m = self.txn.open_table(META)?;
        m.insert(BEST, r.encode().as_slice())?;
        self.head.receipted = r.seq;
        Ok(())
    }

    pub fn pin_gateway_key(&mut self, k: &PublicKey) -> Result<()> {
        let mut m = self.txn.open_table(META)?;
        m.insert(GATEWAY_KEY, k.to_bytes().as_slice())?;
        Ok(())
    }

    /// The newest seq that may be deleted: below the best receipt (the
    /// receipted entry itself stays, to match later receipts against) and
    /// below the head (PROTOCOL §7 rule 2).
    fn prunable_through(&self) -> Seq {
        self.head.receipted.prev().min(self.head.seq.prev())
    }

    /// Deletes held entries through `seq`, never at or past the best receipt
    /// nor the head (PROTOCOL §7 rule 2).
    /// Returns how many were deleted.
    pub fn prune_through(&mut self, seq: Seq) -> Result<u64> {
        let upto = seq.min(self.prunable_through());
        if upto < self.head.oldest {
            return Ok(0);
        }
        let mut t = self.txn.open_table(ENTRIES)?;
        let mut freed = 0u64;
        t.retain_in(self.head.oldest.0..=upto.0, |_, v| {
            freed += v.len() as u64;
            false
        })?;
        let n = upto.0 + 1 - self.head.oldest.0;
        self.head.oldest = upto.next();
        self.head.held_bytes = self.head.held_bytes.saturating_sub(freed);
        Ok(n)
    }

    /// Deletes the oldest prunable entries until `want` bytes are freed (or
    /// nothing more may go). Returns the bytes freed.
    pub fn prune_bytes(&mut self, want: u64) -> Result<u64> {
        let limit = self.prunable_through();
        let mut upto = None;
        let mut freed = 0u64;
        {
            let t = self.txn.open_table(ENTRIES)?;
            if limit >= self.head.oldest {
                for row in t.range(self.head.oldest.0..=limit.0)? {
                    let (k, v) = row?;
                    freed += v.value().len() as u64;
                    upto = Some(Seq(k.value()));
                    if freed >= want {
                        break;
                    }
                }
            }
        }
        match upto {
            Some(s) => {
                self.prune_through(s)?;
                Ok(freed)
            }
            None => Ok(0),
        }
    }

    /// Deletes prunable entries whose `ts` is before `cutoff_ms` (at most
    /// `max` per call). Returns how many were deleted.
    pub fn prune_older_than(&mut self, cutoff: &str, max: u64) -> Result<u64> {
        let limit = self.prunable_through();
        let mut upto = None;
        {
            let t = self.txn.open_table(ENTRIES)?;
            if limit >= self.head.oldest {
                for row in t.range(self.head.oldest.0..=limit.0)?.take(max as usize) {
                    let (k, v) = row?;
                    let e = decode_entry(k.value(), v.value())?;
                    let ts = e
                        .header()
                        .map_err(|err| damaged(format!("entry {}", k.value()), err))?
                        .ts;
                    // RFC 3339 UTC timestamps of one format order as text.
                    if ts.as_str() >= cutoff {
                        break;
                    }
                    upto = Some(Seq(k.value()));
                }
            }
        }
        match upto {
            Some(s) => self.prune_through(s),
            None => Ok(0),
        }
    }

    /// Records an append refused for lack of space.
    pub fn refuse(&mut self, unix_ms: i64, bytes: u64) {
        let r = self.head.refused.get_or_insert(Refused {
            count: 0,
            bytes: 0,
            first_ms: unix_ms,
            last_ms: unix_ms,
        });
        r.count += 1;
        r.bytes += bytes;
        r.last_ms = unix_ms;
    }

    /// Before the first append after refusals: the `gap` entry that makes
    /// the loss provable (PROTOCOL §2, §7 rule 2).
    pub fn record_gap(&mut self, unix_ms: i64) -> Result<()> {
        let Some(r) = self.head.refused.take() else {
            return Ok(());
        };
        let mut d = Object::new();
        d.insert("reason", Value::from("disk_budget"));
        d.insert("refused_appends", Value::from(r.count));
        d.insert("refused_bytes", Value::from(r.bytes));
        d.insert("first_ts", Value::from(entry::format_timestamp(r.first_ms)));
        d.insert("last_ts", Value::from(entry::format_timestamp(r.last_ms)));
        self.append(
            unix_ms,
            None,
            &runtime_event("gap"),
            None,
            &Value::Object(d),
        )
        .map_err(|e| damaged("gap entry", e))?;
        self.sign_head()
    }

    /// Rule 3c in one commit: entries after the best receipt become an
    /// orphaned run, `recovery` is appended at `receipt.seq + 1` linking to
    /// the adopted hash, the orphans are re-appended (all but an orphaned
    /// genesis) with their original `ts`, and the head is signed.
    pub fn adopt(&mut self, a: &Adoption, unix_ms: i64, reason: &str) -> Result<()> {
        let r = &a.receipt;
        let best_seq = a.best_before.as_ref().map_or(Seq::ZERO, |b| b.seq);
        // After local damage the best receipt may be gone, but what was
        // salvaged in place verified: the gateway's chain has it too.
        let salvaged = {
            let m = self.txn.open_table(META)?;
            m.get(SALVAGED)?
                .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
        };
        let keep_through = if let Some(s) = salvaged {
            best_seq.max(Seq(s)).min(r.seq)
        } else {
            best_seq.min(r.seq)
        };
        let local_head = (self.head.seq > Seq::ZERO).then_some((self.head.seq, self.head.hash));
        let n = self.next_run()?;
        // The whole held run is set aside (the chain continues from the
        // gateway's head); entries after `keep_through` are the orphans.
        let mut orphans = Vec::new();
        {
            let mut t = self.txn.open_table(ENTRIES)?;
            let mut o = self.txn.open_table(ORPHANS)?;
            for row in t.iter()? {
                let (k, v) = row?;
                o.insert((n, k.value()), v.value())?;
                if k.value() > keep_through.0 {
                    orphans.push(decode_entry(k.value(), v.value())?);
                }
            }
            t.retain(|_, _| false)?;
        }
        let orphaned = orphans.last().map(|last| {
            (
                keep_through.next(),
                Seq(keep_through.0 + orphans.len() as u64),
                last.hash,
            )
        });
        let data = baton_shared::uplink::recovery_data(reason, a, local_head, orphaned);
        self.head = Head {
            seq: r.seq,
            hash: r.hash,
            oldest: r.seq.next(),
            anchor: Some((r.seq, r.hash)),
            unsigned: 0,
            unsigned_bytes: 0,
            receipted: r.seq,
            held_bytes: 0,
            refused: self.head.refused,
        };
        // The adopted receipt is the best one now, in the same commit as
        // the head that counts it (`check_head` holds them equal).
        let mut best = r.clone();
        best.hello = None;
        self.txn
            .open_table(META)?
            .insert(BEST, best.encode().as_slice())?;
        let recovery = runtime_event("recovery");
        self.append(unix_ms, None, &recovery, None, &data)
            .map_err(|e| damaged("recovery entry", e))?;
        self.reappend(&orphans)?;
        self.sign_head()
    }

    /// Appends the contents of entries that can no longer link (orphans of
    /// an adoption, salvaged entries past damage) as new entries with their
    /// original `ts` — all but a genesis, which stands only at seq 1.
    fn reappend(&mut self, orphans: &[Entry]) -> Result<u64> {
        let mut n = 0;
        for orphan in orphans {
            let Ok(Value::Object(content)) =
                baton_shared::json::parse(&orphan.content, baton_shared::json::Mode::Verify)
            else {
                continue;
            };
            let text = |k: &str| content.get(k).and_then(Value::as_str);
            let event = text("event").unwrap_or("info");
            if event == "genesis" {
                continue;
            }
            let Ok(event) = EventName::new(event) else {
                continue;
            };
            let data = content.get("data").cloned().unwrap_or(Value::Null);
            self.append_at(
                text("ts").unwrap_or_default(),
                None,
                &event,
                text("context"),
                &data,
            )
            .map_err(|e| damaged("re-appended orphan", e))?;
            n += 1;
        }
        Ok(n)
    }

    /// The next orphan run's number.
    fn next_run(&mut self) -> Result<u64> {
        let mut m = self.txn.open_table(META)?;
        let n = m
            .get(ADOPTIONS)?
            .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0)
            + 1;
        m.insert(ADOPTIONS, n.to_le_bytes().as_slice())?;
        Ok(n)
    }

    /// Appends anew the salvaged entries whose original seq is past
    /// `after` (the gateway holds the rest), then signs the head. The run
    /// stays in the orphans table as evidence. Returns how many went in.
    pub fn release_stranded(&mut self, stranded: &[Entry], after: Seq) -> Result<u64> {
        let keep: Vec<Entry> = stranded
            .iter()
            .filter(|e| e.header().is_ok_and(|h| h.seq > after))
            .cloned()
            .collect();
        let n = self.reappend(&keep)?;
        let mut m = self.txn.open_table(META)?;
        m.remove(STRANDED)?;
        m.remove(SALVAGED)?;
        drop(m);
        self.sign_head()?;
        Ok(n)
    }

    /// Makes the group durable; returns the new head.
    pub fn commit(self) -> Result<Head> {
        {
            let mut m = self.txn.open_table(META)?;
            m.insert(HEAD, encode(&self.head).as_slice())?;
        }
        self.txn.commit()?;
        Ok(self.head)
    }
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendFailure {
    /// The request itself is wrong; nothing changed.
    #[error("{0}")]
    Request(AppendError),
    /// The store failed.
    #[error("{0}")]
    Ledger(#[from] LedgerError),
}

/// A runtime-only event name (always valid).
pub fn runtime_event(name: &str) -> EventName {
    EventName::new(name).unwrap_or_else(|_| unreachable!("{name:?} is a valid event name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_shared::uplink::Ledger as _;

    fn agent() -> (AgentId, SecretKey) {
        (
            AgentId::new("pi-1").unwrap(),
            SecretKey::from_seed(&[7; 32]),
        )
    }

    fn append_n(l: &Ledger, a: &AgentId, k: &SecretKey, head: Head, n: u64) -> Head {
        let mut t = l.begin(a, k, head).unwrap();
        for i in 0..n {
            let ev = if t.head().seq == Seq::ZERO {
                "genesis"
            } else {
                "info"
            };
            t.append(
                1_795_460_700_000,
                None,
                &runtime_event(ev),
                None,
                &Value::from(i),
            )
            .unwrap();
        }
        t.commit().unwrap()
    }

    #[test]
    fn appends_survive_reopen_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (a, k) = agent();
        let path = dir.path().join("ledger.redb");
        let o = Ledger::open(&path, &a).unwrap();
        let head = append_n(&o.ledger, &a, &k, o.head, 2500);
        assert_eq!(head.seq, Seq(2500));
        // automatic checkpoints: by count and by bytes
        assert!(head.unsigned > 0 && head.unsigned < CHECKPOINT_EVERY);
        assert!(head.unsigned_bytes < CHECKPOINT_BYTES);
        drop(o);
        let o = Ledger::open(&path, &a).unwrap();
        assert_eq!(o.head, head);
        assert_eq!(
            o.ledger.verify(&a, &k.public(), &o.head, Seq(1)).unwrap(),
            2500
        );
        let v = o.ledger.view(o.head);
        let first = v.batch_end(Seq(1), BatchLimits::default()).unwrap();
        assert!(first <= Seq(1000));
        let tail = Seq(head.seq.0 - head.unsigned + 1);
        assert_eq!(
            v.batch_end(tail, BatchLimits::default()),
            None,
            "the unsigned tail waits"
        );
        let other = AgentId::new("pi-2").unwrap();
        drop(o);
        assert!(matches!(
            Ledger::open(&path, &other),
            Err(LedgerError::WrongAgent { .. })
        ));
    }

    /// The same injected disk failure the gateway's store is tested with:
    /// a failed commit changes nothing, is an error that asks for a reopen,
    /// and after the reopen the ledger holds what was committed and takes
    /// appends again.
    #[test]
    fn an_io_error_fails_the_commit_whole_and_a_reopen_recovers() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let (a, k) = agent();
        let (opener, failing) = baton_runtime::db::faults::flaky_opener();
        let o = Ledger::open_with(&dir.path().join("l.redb"), &a, opener).unwrap();
        let head = append_n(&o.ledger, &a, &k, o.head, 5);
        failing.store(true, Ordering::SeqCst);
        let mut t = o.ledger.begin(&a, &k, head).unwrap();
        t.append(0, None, &runtime_event("info"), None, &Value::from(6u64))
            .unwrap();
        let e = t.commit().unwrap_err();
        assert!(Ledger::needs_reopen(&e), "{e}");
        failing.store(false, Ordering::SeqCst);
        // redb refuses the old handle until it is reopened
        assert!(o.ledger.begin(&a, &k, head).and_then(Txn::commit).is_err());
        o.ledger.reopen().unwrap();
        assert_eq!(
            o.ledger.head().unwrap(),
            head,
            "the failed commit left nothing"
        );
        let after = append_n(&o.ledger, &a, &k, head, 3);
        assert_eq!(after.seq, Seq(8));
        assert_eq!(o.ledger.verify(&a, &k.public(), &after, Seq(1)).unwrap(), 8);
    }

    #[test]
    fn large_entries_are_signed_before_a_span_outgrows_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (a, k) = agent();
        let o = Ledger::open(&dir.path().join("l.redb"), &a).unwrap();
        let mut t = o.ledger.begin(&a, &k, o.head).unwrap();
        t.append(0, None, &runtime_event("genesis"), None, &Value::Null)
            .unwrap();
        let big = Value::from("y".repeat(20_000));
        for _ in 0..50 {
            t.append(0, None, &runtime_event("info"), None, &big)
                .unwrap();
        }
        let head = t.commit().unwrap();
        let v = o.ledger.view(head);
        let mut from = Seq(1);
        while let Some(end) = v.batch_end(from, BatchLimits::default()) {
            let bytes: usize = o
                .ledger
                .entries(from, end)
                .unwrap()
                .iter()
                .map(entry_wire_size)
                .sum();
            assert!(bytes <= baton_shared::wire::MAX_BATCH_BYTES, "{bytes}");
            from = end.next();
        }
        assert!(from > Seq(40), "most of the chain is in signed spans");
    }

    #[test]
    fn verify_names_the_first_damaged_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (a, k) = agent();
        let o = Ledger::open(&dir.path().join("l.redb"), &a).unwrap();
        let head = append_n(&o.ledger, &a, &k, o.head, 10);
        // Rewrite entry 6 with one changed content byte, through redb.
        let mut e = o.ledger.entries(Seq(6), Seq(6)).unwrap().remove(0);
        let at = e.content.len() - 3;
        e.content[at] ^= 1;
        let txn = o.ledger.db().unwrap().begin_write().unwrap();
        txn.open_table(ENTRIES)
            .unwrap()
            .insert(6, encode(&e).as_slice())
            .unwrap();
        txn.commit().unwrap();
        let err = o.ledger.verify(&a, &k.public(), &head, Seq(1)).unwrap_err();
        assert!(err.to_string().contains("entry 6"), "{err}");
    }

    #[test]
    fn a_failed_request_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, k) = agent();
        let o = Ledger::open(&dir.path().join("l.redb"), &a).unwrap();
        let head = append_n(&o.ledger, &a, &k, o.head, 3);
        let mut t = o.ledger.begin(&a, &k, head).unwrap();
        let big = Value::from("x".repeat(70_000));
        assert!(matches!(
            t.append(0, None, &runtime_event("info"), None, &big),
            Err(AppendFailure::Request(AppendError::TooLarge(_)))
        ));
        assert_eq!(t.head(), head);
    }

    #[test]
    fn prune_never_passes_the_best_receipt() {
        let dir = tempfile::tempdir().unwrap();
        let (a, k) = agent();
        let o = Ledger::open(&dir.path().join("l.redb"), &a).unwrap();
        let head = append_n(&o.ledger, &a, &k, o.head, 100);
        let mut t = o.ledger.begin(&a, &k, head).unwrap();
        assert_eq!(
            t.prune_through(Seq(90)).unwrap(),
            0,
            "nothing receipted yet"
        );
        t.head.receipted = Seq(40);
        assert_eq!(t.prune_through(Seq(90)).unwrap(), 39);
        let held = t.head().held_bytes;
        let head = t.commit().unwrap();
        assert_eq!(head.oldest, Seq(40));
        assert_eq!(o.ledger.entries(Seq(1), Seq(100)).unwrap().len(), 61);
        assert_eq!(
            o.ledger.verify(&a, &k.public(), &head, Seq(40)).unwrap(),
            61
        );
        // held_bytes counts exactly what is stored
        let stored: u64 = o
            .ledger
            .entries(Seq(1), Seq(100))
            .unwrap()
            .iter()
            .map(|e| encode(e).len() as u64)
            .sum();
        assert_eq!(held, stored);
    }
}
