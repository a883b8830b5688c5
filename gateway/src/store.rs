//! The gateway's durable store: one redb file.
//!
//! Durability contract: [`Store::commit`] applies a group of writes in one
//! write transaction with `Durability::Immediate`; when it returns `Ok`,
//! every write of the group survives a crash or power cut, and when it
//! returns `Err`, none does. Receipts are published only after `Ok`
//! (PROTOCOL §7 rule 1).

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use baton_runtime::db::Opener;
use baton_runtime::db::Reopenable;

use baton_shared::intake::{ChainView, Head};
use baton_shared::{AgentId, ClusterId, Entry, Hash, PublicKey, Seq, Sig};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// redb page cache.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Runs of entries by (agent, first seq): postcard-encoded `Vec<Entry>`.
/// One row per accepted run rather than per entry: a group commit then
/// inserts one value per batch, which is what bounds durable ingest.
const RUNS: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("runs");
/// The contiguous head per agent: postcard [`StoredHead`].
const HEADS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("heads");
/// The registry of trusted agents: postcard [`AgentRecord`].
const AGENTS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("agents");
/// Agents halted after a fork: the fork's seq.
const HALTED: TableDefinition<'static, &str, u64> = TableDefinition::new("halted");
/// Fork evidence: (agent, n) → postcard `Vec<Entry>`.
const EVIDENCE: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("evidence");
/// Holes recorded under rule 3b: (agent, from) → to.
const GAPS: TableDefinition<'static, (&str, u64), u64> = TableDefinition::new("gaps");
/// Small named values (the enrollment window).
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");
/// Per chain, `(seq, hash)` through which a start-up check verified it.
const VERIFIED: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("verified");
/// Runs set aside after a start-up check found them damaged, as they were
/// stored: (agent, first seq, when in unix ms) → bytes. Never served.
const SET_ASIDE: TableDefinition<'static, (&str, u64, u64), &[u8]> =
    TableDefinition::new("set_aside");
/// Chains set aside at start and not yet rebuilt: agent → postcard
/// [`Damage`]. The gateway is in alert while any is here.
const DAMAGE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("damage");

/// The fleet view (derived from the gateway chains held): cluster → postcard
/// [`ClusterNode`].
const FLEET_CLUSTERS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("fleet_clusters");
/// The fleet view: agent → postcard [`AgentNode`].
const FLEET_AGENTS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("fleet_agents");

/// META keys: who this gateway is (for offline tools).
pub const ID_KEY: &str = "gateway_id";
pub const CLUSTER_KEY: &str = "cluster";

/// The META key of a chain's upstream cursor: the best receipt its parent
/// gave for it (postcard [`baton_shared::wire::Receipt`]).
pub fn upstream_cursor_key(chain: &AgentId) -> String {
    format!("upstream/{chain}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening store {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("store transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("store table: {0}")]
    Table(#[from] redb::TableError),
    #[error("store access: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("store commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("stored record {what} does not decode: {source}")]
    Corrupt {
        what: String,
        source: postcard::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// Whether the file's contents are damaged (not busy, not a disk
    /// failing now): every redb corruption error and undecodable records.
    pub fn is_damage(&self) -> bool {
        use baton_runtime::db;
        match self {
            StoreError::Open { source, .. } => db::open_damage(source),
            StoreError::Storage(s) => db::storage_damage(s),
            StoreError::Table(t) => db::table_damage(t),
            StoreError::Transaction(redb::TransactionError::Storage(s))
            | StoreError::Commit(redb::CommitError::Storage(s)) => db::storage_damage(s),
            StoreError::Corrupt { .. } => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StoredHead {
    seq: Seq,
    hash: Hash,
    sig: Option<Sig>,
}

/// How an agent came to be trusted. (Stored with postcard: new variants
/// go at the end, existing ones never change.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrolledBy {
    /// `baton-gateway enroll --agent … --pubkey …`
    Operator,
    /// A `<agent-id>.pub` file in the keys directory.
    KeyFile,
    /// First key seen inside an operator-opened enrollment window.
    TrustOnFirstUse,
    /// The gateway itself.
    SelfChain,
    /// A child gateway (operator: `enroll --child-cluster C`) that forwards
    /// its chains here on `baton/v1/{cluster}/…` (PROTOCOL §8).
    ChildGateway { cluster: ClusterId },
    /// An agent behind child gateway `via`, trusted because `via`'s own
    /// verified chain enrolls it at `at_seq`; its chain arrives on `via`'s
    /// `cluster`.
    Vouched {
        via: AgentId,
        cluster: ClusterId,
        at_seq: Seq,
    },
}

impl EnrolledBy {
    /// Short text for listings: `operator`, `child-gateway(c1)`,
    /// `vouched(c1-gw)`, …
    pub fn describe(&self) -> String {
        match self {
            EnrolledBy::Operator => "operator".into(),
            EnrolledBy::KeyFile => "key-file".into(),
            EnrolledBy::TrustOnFirstUse => "first-use".into(),
            EnrolledBy::SelfChain => "self".into(),
            EnrolledBy::ChildGateway { cluster } => format!("child-gateway({cluster})"),
            EnrolledBy::Vouched { via, .. } => format!("vouched({via})"),
        }
    }

    /// The cluster on whose topics this chain arrives, if not the
    /// gateway's own (a child gateway or an agent behind one).
    pub fn forwarded_on(&self) -> Option<&ClusterId> {
        match self {
            EnrolledBy::ChildGateway { cluster } | EnrolledBy::Vouched { cluster, .. } => {
                Some(cluster)
            }
            _ => None,
        }
    }
}

/// A trusted agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub public_key: [u8; 32],
    pub start_seq: Option<Seq>,
    pub revoked_from_seq: Option<Seq>,
    pub enrolled_by: EnrolledBy,
    pub enrolled_ms: i64,
}

impl AgentRecord {
    pub fn key(&self) -> Option<PublicKey> {
        PublicKey::trusted(&self.public_key).ok()
    }
}

/// One write of a group commit.
#[derive(Debug, Clone)]
pub enum Write {
    /// Contiguous entries from `first`; the head moves to the last one.
    Entries {
        agent: AgentId,
        first: Seq,
        entries: Vec<Entry>,
    },
    Gap {
        agent: AgentId,
        from: Seq,
        to: Seq,
    },
    Fork {
        agent: AgentId,
        seq: Seq,
        evidence: Vec<Entry>,
    },
    Enroll {
        agent: AgentId,
        record: AgentRecord,
    },
    /// The operator withdrew trust: the record goes (the chain stays).
    Unenroll {
        agent: AgentId,
    },
    /// The operator lifted a fork halt.
    Resolve {
        agent: AgentId,
    },
    /// The fleet view's row of an agent (`None`: it left the view).
    FleetAgent {
        agent: AgentId,
        node: Option<AgentNode>,
    },
    /// The fleet view's row of a cluster.
    FleetCluster {
        cluster: String,
        node: ClusterNode,
    },
}

fn corrupt(what: impl Into<String>) -> impl FnOnce(postcard::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Corrupt { what, source }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

/// The store. The database is a [`Reopenable`] handle, so it can be closed
/// and reopened after an I/O error (redb refuses further transactions
/// then) while readers keep their `Arc<Store>`.
#[derive(Debug)]
pub struct Store {
    db: Reopenable,
}

impl Store {
    /// Opens (or creates) the store and its tables. redb's default page
    /// cache grows to 1 GiB; ingest writes and rarely re-reads, so a small
    /// cache keeps the gateway's RSS flat.
    pub fn open(path: &Path) -> Result<Store> {
        Self::open_with(path, baton_runtime::db::file_opener(CACHE_BYTES))
    }

    /// Opens with a given opener (tests inject storage faults this way:
    /// `baton_runtime::db::faults`).
    pub fn open_with(path: &Path, opener: Opener) -> Result<Store> {
        let db = Reopenable::open(path, opener).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        let store = Store { db };
        store.create_tables()?;
        Ok(store)
    }

    fn create_tables(&self) -> Result<()> {
        let txn = self.begin_write()?;
        {
            txn.open_table(RUNS)?;
            txn.open_table(HEADS)?;
            txn.open_table(AGENTS)?;
            txn.open_table(HALTED)?;
            txn.open_table(EVIDENCE)?;
            txn.open_table(GAPS)?;
            txn.open_table(META)?;
            txn.open_table(VERIFIED)?;
            txn.open_table(SET_ASIDE)?;
            txn.open_table(DAMAGE)?;
            txn.open_table(FLEET_CLUSTERS)?;
            txn.open_table(FLEET_AGENTS)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Closes the database and opens it again (after an I/O error). What
    /// was committed is there; what failed to commit is not.
    pub fn reopen(&self) -> Result<()> {
        self.db.reopen().map_err(|source| StoreError::Open {
            path: self.path().to_owned(),
            source,
        })
    }

    /// The open database; a store left closed by a failed reopen tries to
    /// open again on its next use.
    fn db(&self) -> Result<Arc<Database>> {
        self.db.get_or_reopen().map_err(|source| StoreError::Open {
            path: self.path().to_owned(),
            source,
        })
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction> {
        Ok(self.db()?.begin_write()?)
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.db()?.begin_read()?)
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Applies a group of writes in one durable transaction.
    pub fn commit(&self, writes: &[Write]) -> Result<()> {
        let txn = self.begin_write()?;
        {
            let mut entries = txn.open_table(RUNS)?;
            let mut heads = txn.open_table(HEADS)?;
            let mut agents = txn.open_table(AGENTS)?;
            let mut halted = txn.open_table(HALTED)?;
            let mut evidence = txn.open_table(EVIDENCE)?;
            let mut gaps = txn.open_table(GAPS)?;
            let mut fleet_clusters = txn.open_table(FLEET_CLUSTERS)?;
            let mut fleet_agents = txn.open_table(FLEET_AGENTS)?;
            for w in writes {
                match w {
                    Write::Entries {
                        agent,
                        first,
                        entries: batch,
                    } => {
                        let id = agent.as_str();
                        if !batch.is_empty() {
                            entries.insert((id, first.0), encode(batch).as_slice())?;
                        }
                        if let Some(last) = batch.last() {
                            let head = StoredHead {
                                seq: Seq(first.0 + batch.len() as u64 - 1),
                                hash: last.hash,
                                sig: last.sig,
                            };
                            heads.insert(id, encode(&head).as_slice())?;
                        }
                    }
                    Write::Gap { agent, from, to } => {
                        gaps.insert((agent.as_str(), from.0), to.0)?;
                    }
                    Write::Fork {
                        agent,
                        seq,
                        evidence: batch,
                    } => {
                        let id = agent.as_str();
                        let n = evidence
                            .range((id, 0)..=(id, u64::MAX))?
                            .next_back()
                            .transpose()?
                            .map_or(0, |(k, _)| k.value().1 + 1);
                        evidence.insert((id, n), encode(batch).as_slice())?;
                        halted.insert(id, seq.0)?;
                    }
                    Write::Enroll { agent, record } => {
                        agents.insert(agent.as_str(), encode(record).as_slice())?;
                    }
                    Write::Unenroll { agent } => {
                        agents.remove(agent.as_str())?;
                    }
                    Write::Resolve { agent } => {
                        halted.remove(agent.as_str())?;
                    }
                    Write::FleetAgent { agent, node: None } => {
                        fleet_agents.remove(agent.as_str())?;
                    }
                    Write::FleetAgent {
                        agent,
                        node: Some(node),
                    } => {
                        fleet_agents.insert(agent.as_str(), encode(node).as_slice())?;
                    }
                    Write::FleetCluster { cluster, node } => {
                        fleet_clusters.insert(cluster.as_str(), encode(node).as_slice())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Lifts a fork halt (operator action).
    pub fn resolve(&self, agent: &AgentId) -> Result<Option<Seq>> {
        let txn = self.begin_write()?;
        let was = {
            let mut halted = txn.open_table(HALTED)?;
            halted.remove(agent.as_str())?.map(|v| Seq(v.value()))
        };
        txn.commit()?;
        Ok(was)
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let txn = self.begin_write()?;
        txn.open_table(META)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    /// Records who this gateway is, for the offline tools.
    pub fn remember_identity(&self, id: &AgentId, cluster: &ClusterId) -> Result<()> {
        self.set_metas(&[
            (ID_KEY.to_owned(), id.as_str().as_bytes().to_vec()),
            (CLUSTER_KEY.to_owned(), cluster.as_str().as_bytes().to_vec()),
        ])
    }

    /// Several named values in one durable transaction.
    pub fn set_metas(&self, values: &[(String, Vec<u8>)]) -> Result<()> {
        let txn = self.begin_write()?;
        {
            let mut t = txn.open_table(META)?;
            for (k, v) in values {
                t.insert(k.as_str(), v.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The lowest seq stored for `agent` (`None`: nothing stored).
    pub fn oldest(&self, agent: &AgentId) -> Result<Option<Seq>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let id = agent.as_str();
        Ok(t.range((id, 0)..=(id, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| Seq(k.value().1)))
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn head(&self, agent: &AgentId) -> Result<Head> {
        let txn = self.begin_read()?;
        let t = txn.open_table(HEADS)?;
        match t.get(agent.as_str())? {
            None => Ok(Head::EMPTY),
            Some(v) => {
                let h: StoredHead =
                    postcard::from_bytes(v.value()).map_err(corrupt(format!("head of {agent}")))?;
                Ok(Head {
                    seq: h.seq,
                    hash: h.hash,
                    sig: h.sig,
                })
            }
        }
    }

    pub fn halted(&self, agent: &AgentId) -> Result<Option<Seq>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(HALTED)?;
        Ok(t.get(agent.as_str())?.map(|v| Seq(v.value())))
    }

    pub fn agent(&self, agent: &AgentId) -> Result<Option<AgentRecord>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(AGENTS)?;
        t.get(agent.as_str())?
            .map(|v| postcard::from_bytes(v.value()).map_err(corrupt(format!("record of {agent}"))))
            .transpose()
    }

    /// Every enrolled agent, by id.
    pub fn agents(&self) -> Result<Vec<(AgentId, AgentRecord)>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(AGENTS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let Ok(id) = AgentId::new(k.value()) else {
                continue;
            };
            let record =
                postcard::from_bytes(v.value()).map_err(corrupt(format!("record of {id}")))?;
            out.push((id, record));
        }
        Ok(out)
    }

    /// The stored entry at `seq`, if any.
    /// The fleet view as kept: its clusters and its agents.
    #[allow(clippy::type_complexity)]
    pub fn fleet(&self) -> Result<(Vec<(String, ClusterNode)>, Vec<(AgentId, AgentNode)>)> {
        let txn = self.begin_read()?;
        let mut clusters = Vec::new();
        for row in txn.open_table(FLEET_CLUSTERS)?.iter()? {
            let (k, v) = row?;
            let node = postcard::from_bytes(v.value())
                .map_err(corrupt(format!("fleet row of cluster {}", k.value())))?;
            clusters.push((k.value().to_owned(), node));
        }
        let mut agents = Vec::new();
        for row in txn.open_table(FLEET_AGENTS)?.iter()? {
            let (k, v) = row?;
            let Ok(id) = AgentId::new(k.value()) else {
                continue;
            };
            let node = postcard::from_bytes(v.value())
                .map_err(corrupt(format!("fleet row of agent {}", k.value())))?;
            agents.push((id, node));
        }
        Ok((clusters, agents))
    }

    pub fn entry(&self, agent: &AgentId, seq: Seq) -> Result<Option<Entry>> {
        Ok(self
            .range(agent, seq, 1)?
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, e)| e))
    }

    /// Up to `limit` stored entries with seq ≥ `from`, in seq order.
    pub fn range(&self, agent: &AgentId, from: Seq, limit: usize) -> Result<Vec<(Seq, Entry)>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let id = agent.as_str();
        let start = run_holding(&t, id, from)?;
        let mut out = Vec::new();
        for item in t.range((id, start)..=(id, u64::MAX))? {
            let (k, v) = item?;
            let first = k.value().1;
            let run: Vec<Entry> = postcard::from_bytes(v.value())
                .map_err(corrupt(format!("entries from {first} of {agent}")))?;
            for (i, e) in run.into_iter().enumerate() {
                let seq = Seq(first + i as u64);
                if seq >= from {
                    out.push((seq, e));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes each `(agent, through)`'s stored entries up to `through`,
    /// in one durable transaction: runs that end by then go whole, and the
    /// run holding `through` keeps its later entries (stored again from
    /// `through + 1`). The caller keeps `through` below the head; heads,
    /// gaps and the registry are untouched. Returns how many entries went.
    pub fn prune(&self, cuts: &[(AgentId, Seq)]) -> Result<u64> {
        let txn = self.begin_write()?;
        let mut pruned = 0u64;
        {
            let mut runs = txn.open_table(RUNS)?;
            for (agent, through) in cuts {
                let id = agent.as_str();
                let mut firsts = Vec::new();
                for item in runs.range((id, 0)..=(id, through.0))? {
                    let (k, v) = item?;
                    firsts.push((k.value().1, run_len(v.value())));
                }
                for (first, len) in firsts {
                    let last = (first + len).saturating_sub(1);
                    if last <= through.0 {
                        runs.remove((id, first))?;
                        pruned += len;
                        continue;
                    }
                    // the run holding `through`: its tail stays
                    let bytes = runs
                        .remove((id, first))?
                        .map(|v| v.value().to_vec())
                        .unwrap_or_default();
                    let run: Vec<Entry> = postcard::from_bytes(&bytes)
                        .map_err(corrupt(format!("entries from {first} of {agent}")))?;
                    let cut = usize::try_from(through.0 + 1 - first).unwrap_or(run.len());
                    let tail = run.get(cut..).unwrap_or_default();
                    runs.insert((id, through.0 + 1), encode(&tail).as_slice())?;
                    pruned += cut as u64;
                }
            }
        }
        txn.commit()?;
        Ok(pruned)
    }

    /// Gaps recorded for `agent`: `(from, to)` pairs.
    pub fn gaps(&self, agent: &AgentId) -> Result<Vec<(Seq, Seq)>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(GAPS)?;
        let id = agent.as_str();
        let mut out = Vec::new();
        for item in t.range((id, 0)..=(id, u64::MAX))? {
            let (k, v) = item?;
            out.push((Seq(k.value().1), Seq(v.value())));
        }
        Ok(out)
    }

    /// Count of stored fork evidence batches for `agent`.
    pub fn evidence_count(&self, agent: &AgentId) -> Result<usize> {
        let txn = self.begin_read()?;
        let t = txn.open_table(EVIDENCE)?;
        let id = agent.as_str();
        Ok(t.range((id, 0)..=(id, u64::MAX))?.count())
    }

    /// A view of one agent's stored hashes for the intake.
    pub fn view<'a>(&'a self, agent: &'a AgentId) -> StoreView<'a> {
        StoreView { store: self, agent }
    }

    /// Bytes of the store file.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(self.path()).map_or(0, |m| m.len())
    }
}

/// The fleet view's row of a cluster: its gateway, the cluster it reports
/// to (none for this gateway's own, whose parent is not in its chains) and
/// its latest `cluster_summary` (canonical JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub gateway: String,
    pub parent: Option<String>,
    pub summary: Option<Vec<u8>>,
    pub at_ms: i64,
}

/// The fleet view's row of an agent: its cluster and its last recorded
/// state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentNode {
    pub cluster: String,
    pub state: Option<String>,
    pub reason: String,
    pub since_ms: i64,
}

/// A chain the start-up check found damaged: set aside from `from`, to be
/// rebuilt from its agent's (or child's) resends up to `head`, the head it
/// had. Anything it cannot get back is named in a `gap` (rule 3b).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    pub from: Seq,
    pub head: Seq,
    pub problem: String,
    pub at_ms: i64,
}

/// What the start-up check of one chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// Entries `from..=head` verified (none if `from > head`).
    Verified { from: Seq, head: Seq },
    /// The first problem, at `at`.
    Damaged { at: Seq, problem: String },
}

impl Store {
    /// Every chain the store holds a head for.
    pub fn chains(&self) -> Result<Vec<AgentId>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(HEADS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, _) = item?;
            if let Ok(id) = AgentId::new(k.value()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Checks `agent`'s chain where no start has checked it: every link,
    /// hash and (with `key`) checkpoint signature after the verified mark,
    /// and that the head is the newest entry. Records the new mark.
    pub fn check_chain(&self, agent: &AgentId, key: Option<&PublicKey>) -> Result<ChainCheck> {
        let head = match self.head(agent) {
            Ok(h) => h,
            Err(StoreError::Corrupt { source, .. }) => {
                return Ok(ChainCheck::Damaged {
                    at: self.oldest(agent)?.unwrap_or(Seq(1)),
                    problem: format!("head does not decode: {source}"),
                });
            }
            Err(e) => return Err(e),
        };
        let id = agent.as_str();
        let mark: Option<(Seq, Hash)> = {
            let txn = self.begin_read()?;
            let t = txn.open_table(VERIFIED)?;
            t.get(id)?
                .and_then(|v| postcard::from_bytes(v.value()).ok())
        };
        let oldest = self.oldest(agent)?.unwrap_or(Seq(1));
        let (from, mut prev) = match mark {
            Some((s, h))
                if s <= head.seq
                    && self
                        .entry(agent, s)
                        .ok()
                        .flatten()
                        .is_some_and(|e| e.hash == h) =>
            {
                (s.next(), Some(h))
            }
            _ => (oldest, (oldest == Seq(1)).then_some(Hash::ZERO)),
        };
        let damaged = |at: Seq, problem: String| Ok(ChainCheck::Damaged { at, problem });
        let txn = self.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let start = run_holding(&t, id, from)?;
        let mut expect = from;
        for item in t.range((id, start)..=(id, u64::MAX))? {
            let (k, v) = item?;
            let first = Seq(k.value().1);
            let run: Vec<Entry> = match postcard::from_bytes(v.value()) {
                Ok(r) => r,
                Err(e) => {
                    return damaged(
                        first.max(from),
                        format!("run from {first} does not decode: {e}"),
                    );
                }
            };
            for (i, e) in run.iter().enumerate() {
                let seq = Seq(first.0 + i as u64);
                if seq < from {
                    continue;
                }
                if seq != expect {
                    return damaged(expect, "missing".into());
                }
                if let Err(p) = baton_shared::entry::check_stored(agent, seq, e, prev.as_ref(), key)
                {
                    return damaged(seq, p);
                }
                prev = Some(e.hash);
                expect = seq.next();
            }
        }
        drop(t);
        drop(txn);
        if expect.prev() != head.seq || (head.seq >= from && prev != Some(head.hash)) {
            return damaged(
                expect.min(head.seq.next()),
                format!(
                    "head {} is not the newest entry {}",
                    head.seq,
                    expect.prev()
                ),
            );
        }
        if head.seq > Seq::ZERO {
            let txn = self.begin_write()?;
            txn.open_table(VERIFIED)?
                .insert(id, encode(&(head.seq, head.hash)).as_slice())?;
            txn.commit()?;
        }
        Ok(ChainCheck::Verified {
            from,
            head: head.seq,
        })
    }

    /// Sets `agent`'s entries from `from` on aside (kept in the set-aside
    /// table, never served): the chain ends at `from - 1` and is rebuilt
    /// from resends. Records the [`Damage`]; returns it and how many
    /// entries went.
    pub fn set_aside(
        &self,
        agent: &AgentId,
        from: Seq,
        problem: &str,
        now_ms: i64,
    ) -> Result<(Damage, u64)> {
        let id = agent.as_str();
        let old_head = self.head(agent).map_or(Seq::ZERO, |h| h.seq);
        let when = u64::try_from(now_ms).unwrap_or(0);
        let txn = self.begin_write()?;
        let mut moved = 0u64;
        let d = {
            let mut runs = txn.open_table(RUNS)?;
            let mut aside = txn.open_table(SET_ASIDE)?;
            let start = run_holding(&runs, id, from)?;
            let mut affected = Vec::new();
            for item in runs.range((id, start)..=(id, u64::MAX))? {
                let (k, v) = item?;
                affected.push((k.value().1, v.value().to_vec()));
            }
            let mut new_head: Option<(Seq, Entry)> = None;
            for (first, bytes) in &affected {
                aside.insert((id, *first, when), bytes.as_slice())?;
                runs.remove((id, *first))?;
                let decoded: Option<Vec<Entry>> = postcard::from_bytes(bytes).ok();
                let n = decoded.as_ref().map_or(1, |r| r.len() as u64);
                if *first < from.0
                    && let Some(mut run) = decoded
                {
                    let keep = (from.0 - first) as usize;
                    moved += (run.len() - keep) as u64;
                    run.truncate(keep);
                    if let Some(last) = run.last() {
                        new_head = Some((Seq(first + keep as u64 - 1), last.clone()));
                    }
                    runs.insert((id, *first), encode(&run).as_slice())?;
                } else {
                    moved += n;
                }
            }
            if new_head.is_none() && from.0 > 1 {
                // The entry before `from` ends an earlier run.
                if let Some(item) = runs.range((id, 0)..(id, from.0))?.next_back() {
                    let (k, v) = item?;
                    let first = k.value().1;
                    if let Ok(run) = postcard::from_bytes::<Vec<Entry>>(v.value())
                        && let Some(last) = run.last()
                    {
                        new_head = Some((Seq(first + run.len() as u64 - 1), last.clone()));
                    }
                }
            }
            let mut heads = txn.open_table(HEADS)?;
            let mut verified = txn.open_table(VERIFIED)?;
            match new_head {
                Some((seq, e)) => {
                    let h = StoredHead {
                        seq,
                        hash: e.hash,
                        sig: e.sig,
                    };
                    heads.insert(id, encode(&h).as_slice())?;
                    verified.insert(id, encode(&(seq, e.hash)).as_slice())?;
                }
                None => {
                    heads.remove(id)?;
                    verified.remove(id)?;
                }
            }
            let d = Damage {
                from,
                head: old_head,
                problem: problem.to_owned(),
                at_ms: now_ms,
            };
            txn.open_table(DAMAGE)?.insert(id, encode(&d).as_slice())?;
            d
        };
        txn.commit()?;
        Ok((d, moved))
    }

    /// Records chains to be rebuilt from resends up to the heads they had
    /// (a store rebuilt after the whole file was damaged).
    pub fn record_damage(&self, rows: &[(AgentId, Damage)]) -> Result<()> {
        let txn = self.begin_write()?;
        {
            let mut t = txn.open_table(DAMAGE)?;
            for (agent, d) in rows {
                t.insert(agent.as_str(), encode(d).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Chains set aside and not yet rebuilt to the head they had. A read:
    /// rows of rebuilt chains stay until [`Store::clear_rebuilt`].
    pub fn damage(&self) -> Result<Vec<(AgentId, Damage)>> {
        Ok(self
            .damage_rows()?
            .into_iter()
            .filter(|(id, d)| !self.head(id).is_ok_and(|h| h.seq >= d.head))
            .collect())
    }

    /// Drops the damage rows of chains rebuilt to the head they had (at
    /// start); returns how many went.
    pub fn clear_rebuilt(&self) -> Result<usize> {
        let rebuilt: Vec<AgentId> = self
            .damage_rows()?
            .into_iter()
            .filter(|(id, d)| self.head(id).is_ok_and(|h| h.seq >= d.head))
            .map(|(id, _)| id)
            .collect();
        if !rebuilt.is_empty() {
            let txn = self.begin_write()?;
            {
                let mut t = txn.open_table(DAMAGE)?;
                for id in &rebuilt {
                    t.remove(id.as_str())?;
                }
            }
            txn.commit()?;
        }
        Ok(rebuilt.len())
    }

    fn damage_rows(&self) -> Result<Vec<(AgentId, Damage)>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(DAMAGE)?;
        let mut rows = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            if let (Ok(id), Ok(d)) = (
                AgentId::new(k.value()),
                postcard::from_bytes::<Damage>(v.value()),
            ) {
                rows.push((id, d));
            }
        }
        Ok(rows)
    }
}

/// The first seq of `id`'s run holding `from` (or `from` itself when no
/// run begins at or before it): where a read from `from` starts.
fn run_holding(
    t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    id: &str,
    from: Seq,
) -> Result<u64> {
    Ok(t.range((id, 0)..=(id, from.0))?
        .next_back()
        .transpose()?
        .map_or(from.0, |(k, _)| k.value().1))
}

/// The number of entries in a stored run, from its encoding's length
/// prefix (postcard writes a sequence's length first, as a varint).
fn run_len(bytes: &[u8]) -> u64 {
    postcard::take_from_bytes::<u64>(bytes).map_or(0, |(n, _)| n)
}

/// One agent's stored chain, as the intake reads it.
#[derive(Debug)]
pub struct StoreView<'a> {
    store: &'a Store,
    agent: &'a AgentId,
}

impl ChainView for StoreView<'_> {
    fn hash_at(&self, seq: Seq) -> Option<Hash> {
        if seq == Seq::ZERO {
            return Some(Hash::ZERO);
        }
        // A read error reads as "not held": the batch is then judged without
        // that comparison and the commit that follows surfaces the error.
        self.store
            .entry(self.agent, seq)
            .ok()
            .flatten()
            .map(|e| e.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_shared::SecretKey;
    use baton_shared::json::{Object, Value};
    use baton_shared::memory::MemLedger;
    use baton_shared::uplink::Ledger;

    fn ledger(n: u64) -> MemLedger {
        let mut l = MemLedger::new(
            AgentId::new("pi-1").unwrap(),
            SecretKey::from_seed(&[1; 32]),
        );
        l.checkpoint_every = 4;
        l.append(0, "genesis", None, Value::Object(Object::new()))
            .unwrap();
        for i in 0..n {
            l.append(i as i64, "info", None, Value::from(i)).unwrap();
        }
        l.sign_head();
        l
    }

    #[test]
    fn committed_groups_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        let l = ledger(9);
        let agent = l.agent().clone();
        {
            let store = Store::open(&path).unwrap();
            store
                .commit(&[
                    Write::Entries {
                        agent: agent.clone(),
                        first: Seq(1),
                        entries: l.range(Seq(1), Seq(4)),
                    },
                    Write::Entries {
                        agent: agent.clone(),
                        first: Seq(5),
                        entries: l.range(Seq(5), Seq(10)),
                    },
                    Write::Gap {
                        agent: agent.clone(),
                        from: Seq(20),
                        to: Seq(29),
                    },
                ])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let head = store.head(&agent).unwrap();
        assert_eq!(head.seq, Seq(10));
        assert_eq!(head.hash, l.hash_at(Seq(10)).unwrap());
        assert_eq!(head.sig, l.range(Seq(10), Seq(10))[0].sig);
        let all = store.range(&agent, Seq(1), 100).unwrap();
        assert_eq!(all.len(), 10);
        assert!(all.iter().zip(l.held()).all(|((_, a), b)| a == b));
        assert_eq!(store.range(&agent, Seq(8), 2).unwrap()[0].0, Seq(8));
        assert_eq!(store.gaps(&agent).unwrap(), vec![(Seq(20), Seq(29))]);
        assert_eq!(store.view(&agent).hash_at(Seq(3)), l.hash_at(Seq(3)));
        assert_eq!(store.view(&agent).hash_at(Seq(11)), None);
    }

    #[test]
    fn pruning_removes_whole_runs_before_the_cut_and_never_the_heads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.redb")).unwrap();
        let l = ledger(11);
        let agent = l.agent().clone();
        let run = |from: u64, to: u64| Write::Entries {
            agent: agent.clone(),
            first: Seq(from),
            entries: l.range(Seq(from), Seq(to)),
        };
        store.commit(&[run(1, 4), run(5, 10), run(11, 12)]).unwrap();
        let head = store.head(&agent).unwrap();
        // whole runs, and the one holding the cut keeps its tail
        assert_eq!(store.prune(&[(agent.clone(), Seq(7))]).unwrap(), 7);
        assert_eq!(store.oldest(&agent).unwrap(), Some(Seq(8)));
        assert_eq!(store.prune(&[(agent.clone(), Seq(7))]).unwrap(), 0);
        assert_eq!(store.prune(&[(agent.clone(), Seq(11))]).unwrap(), 4);
        let held = store.range(&agent, Seq(1), 100).unwrap();
        assert_eq!(held.iter().map(|(s, _)| s.0).collect::<Vec<_>>(), vec![12]);
        assert_eq!(held[0].1, l.range(Seq(12), Seq(12))[0]);
        assert_eq!(store.head(&agent).unwrap(), head);
        assert_eq!(store.view(&agent).hash_at(Seq(3)), None);
        // what is held still checks at a start
        drop(store);
        let store = Store::open(&dir.path().join("g.redb")).unwrap();
        assert_eq!(
            store.check_chain(&agent, Some(&l.key().public())).unwrap(),
            ChainCheck::Verified {
                from: Seq(12),
                head: Seq(12)
            }
        );
    }

    #[test]
    fn a_chain_set_aside_is_damage_until_rebuilt_and_reads_never_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.redb")).unwrap();
        let l = ledger(9);
        let agent = l.agent().clone();
        let all = |from: u64| Write::Entries {
            agent: agent.clone(),
            first: Seq(from),
            entries: l.range(Seq(from), Seq(10)),
        };
        store.commit(&[all(1)]).unwrap();
        let (d, moved) = store.set_aside(&agent, Seq(6), "altered", 7).unwrap();
        assert_eq!((d.from, d.head, moved), (Seq(6), Seq(10), 5));
        assert_eq!(store.head(&agent).unwrap().seq, Seq(5));
        assert_eq!(store.range(&agent, Seq(1), 100).unwrap().len(), 5);
        assert_eq!(store.damage().unwrap(), vec![(agent.clone(), d)]);
        // resent: rebuilt, no longer damage; the row goes at the next start
        store.commit(&[all(6)]).unwrap();
        assert!(store.damage().unwrap().is_empty());
        assert_eq!(store.damage_rows().unwrap().len(), 1, "a read wrote");
        assert_eq!(store.clear_rebuilt().unwrap(), 1);
        assert!(store.damage_rows().unwrap().is_empty());
    }

    #[test]
    fn forks_are_halted_with_evidence_until_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.redb")).unwrap();
        let l = ledger(3);
        let agent = l.agent().clone();
        for _ in 0..2 {
            store
                .commit(&[Write::Fork {
                    agent: agent.clone(),
                    seq: Seq(2),
                    evidence: l.range(Seq(1), Seq(4)),
                }])
                .unwrap();
        }
        assert_eq!(store.halted(&agent).unwrap(), Some(Seq(2)));
        assert_eq!(store.evidence_count(&agent).unwrap(), 2);
        assert_eq!(store.resolve(&agent).unwrap(), Some(Seq(2)));
        assert_eq!(store.halted(&agent).unwrap(), None);
    }

    #[test]
    fn enrollment_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.redb")).unwrap();
        let agent = AgentId::new("pi-2").unwrap();
        let record = AgentRecord {
            public_key: SecretKey::from_seed(&[2; 32]).public().to_bytes(),
            start_seq: Some(Seq(40)),
            revoked_from_seq: None,
            enrolled_by: EnrolledBy::Operator,
            enrolled_ms: 5,
        };
        store
            .commit(&[Write::Enroll {
                agent: agent.clone(),
                record: record.clone(),
            }])
            .unwrap();
        assert_eq!(store.agent(&agent).unwrap(), Some(record.clone()));
        assert_eq!(store.agents().unwrap(), vec![(agent, record)]);
    }
}
