//! The archive (`--archive postgres://…`): every entry of every chain the
//! gateway holds, copied into PostgreSQL after it is verified and committed
//! here (README, "Archiving to PostgreSQL"; the schema is
//! `gateway/sql/archive.sql`).
//!
//! Off the receipt path: a task woken by the commit notices, which lags
//! while PostgreSQL is away and catches up when it is back. Never twice:
//! a chain's rows and its head in `baton_chains` are written in one
//! PostgreSQL transaction, and where each chain resumes is read back from
//! `baton_chains` at every (re)connection — so a commit whose outcome was
//! lost with the connection is neither lost nor repeated. The head is also
//! kept here (store meta `archive:<agent>`), durable after each commit: what
//! the archive is known to hold.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use baton_shared::json::{self, Mode, Value};
use baton_shared::wire::{Message, Receipt};
use baton_shared::{AgentId, Entry, Seq};
use bytes::BytesMut;
use tokio::sync::{broadcast, oneshot};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tracing::{info, warn};

use crate::ingest::Committed;
use crate::metrics::Metrics;
use crate::store::Store;

mod verify;
pub use verify::verify;

/// The schema, applied at every connection (it creates what is missing).
pub const SCHEMA: &str = include_str!("../../sql/archive.sql");

/// Rows copied in one PostgreSQL transaction at most.
const BATCH_ROWS: usize = 8192;
/// Entries read from the store at a time per chain.
const PAGE: usize = 4096;
/// The gateway's own chain is committed without a notice: looked at this
/// often, as are chains that could not be copied.
const TICK: Duration = Duration::from_secs(1);
/// Pruning (one store write) at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// The TLS every archive connection offers: rustls (ring), the server's
/// certificate verified against `ca` (PEM; a managed PostgreSQL's bundle)
/// or else the system's roots, with its host name. The connection string's
/// `sslmode` says whether TLS is required (`require`), used when the
/// server offers it (`prefer`, the default) or off (`disable`).
fn tls(ca: Option<&Path>) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading the archive CA {}", path.display()))?
            {
                let cert =
                    cert.with_context(|| format!("reading the archive CA {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate of {}", path.display()))?;
            }
            anyhow::ensure!(!roots.is_empty(), "no certificate in {}", path.display());
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A connection to the archive at `url` (TLS verified against `ca`, see
/// [`tls`]), driven by a task of its own.
async fn open(
    url: &str,
    ca: Option<&Path>,
) -> anyhow::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let (client, connection) = tokio_postgres::connect(url, tls(ca)?)
        .await
        .context("connecting")?;
    let connection = tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "archive: the PostgreSQL connection ended");
        }
    });
    Ok((client, connection))
}

/// A schema of its own in a database, for a benchmark run: one connection
/// kept for the run's questions, and the connection string a gateway
/// archives into it with (its `search_path`). [`Scratch::remove`] drops it.
pub struct Scratch {
    /// The connection string that works in the schema.
    pub url: String,
    schema: String,
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Scratch {
    /// Makes a schema named at random in the database at `url`.
    pub async fn create(url: &str) -> anyhow::Result<Scratch> {
        let mut n = [0u8; 4];
        getrandom::fill(&mut n).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        let schema = format!("baton_bench_{}", u32::from_le_bytes(n));
        let (client, connection) = open(url, None).await?;
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .with_context(|| format!("creating schema {schema}"))?;
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(Scratch {
            url: format!("{url}{sep}options=-csearch_path%3D{schema}"),
            schema,
            client,
            connection,
        })
    }

    /// Rows archived into it whose agent starts with `prefix`.
    pub async fn rows(&self, prefix: &str) -> anyhow::Result<u64> {
        let n: i64 = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.baton_entries WHERE agent LIKE $1",
                    self.schema
                ),
                &[&format!("{prefix}%")],
            )
            .await
            .map_or(0, |r| r.get(0));
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Drops the schema, with what is in it.
    pub async fn remove(self) -> anyhow::Result<()> {
        self.client
            .batch_execute(&format!(
                "SET client_min_messages = warning; DROP SCHEMA {} CASCADE",
                self.schema
            ))
            .await
            .with_context(|| format!("dropping schema {}", self.schema))?;
        drop(self.client);
        let _ = self.connection.await;
        Ok(())
    }
}

/// The store meta key of `agent`'s archived head.
pub fn cursor_key(agent: &AgentId) -> String {
    format!("archive:{agent}")
}

/// The archived head of `agent` as this gateway last knew it.
pub fn archived_through(store: &Store, agent: &AgentId) -> anyhow::Result<Option<Seq>> {
    Ok(store
        .meta(&cursor_key(agent))?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(|b| Seq(u64::from_le_bytes(b))))
}

/// What the archiver needs to know.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// `postgres://…` (or any libpq-style connection string).
    pub url: String,
    /// The CA that signed the server's certificate (PEM; none: the
    /// system's roots).
    pub ca: Option<PathBuf>,
    /// This gateway (`archived_by`, and its own chain).
    pub gateway: AgentId,
    /// Pruning the store behind the archive (none: keep everything).
    pub prune: Option<Prune>,
}

/// When entries may leave this gateway's store (`--retain-entries`).
#[derive(Debug, Clone)]
pub struct Prune {
    /// The newest entries of each chain kept here whatever else holds them.
    pub retain: u64,
    /// This gateway forwards to a parent: what goes must be receipted by
    /// it too.
    pub parent: bool,
    /// The live daily files, when written: what they lack stays.
    pub daily: Option<crate::daily::Written>,
}

/// The running archiver; [`Archiver::stop`] ends it.
#[derive(Debug)]
pub struct Archiver {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Archiver {
    pub fn spawn(
        cfg: ArchiveConfig,
        store: Arc<Store>,
        fleet: Arc<std::sync::Mutex<crate::fleet::FleetView>>,
        committed: broadcast::Receiver<Committed>,
        metrics: Arc<Metrics>,
    ) -> Archiver {
        let (stop, stopped) = oneshot::channel();
        let run = Run {
            cfg,
            store,
            fleet,
            metrics,
        };
        let task = tokio::spawn(run.run(committed, stopped));
        Archiver { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

struct Run {
    cfg: ArchiveConfig,
    store: Arc<Store>,
    fleet: Arc<std::sync::Mutex<crate::fleet::FleetView>>,
    metrics: Arc<Metrics>,
}

/// A connection and where each chain resumes in the archive.
struct Session {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
    heads: HashMap<AgentId, Seq>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Run {
    async fn run(
        self,
        mut committed: broadcast::Receiver<Committed>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        let mut dirty: BTreeSet<AgentId> = self.all_chains();
        // chains that moved (committed here, or archived further) since
        // the last pruning (all, at first)
        let mut moved: BTreeSet<AgentId> = dirty.clone();
        let pruning = self.cfg.prune.is_some();
        let mut pruned_at = tokio::time::Instant::now();
        let mut session: Option<Session> = None;
        let mut backoff = Duration::from_millis(500);
        let mut tick = tokio::time::interval(TICK);
        loop {
            if session.is_none() {
                match self.connect().await {
                    Ok(s) => {
                        info!(chains = s.heads.len(), "archive: connected");
                        backoff = Duration::from_millis(500);
                        session = Some(s);
                        // where each chain resumes may have moved: all of them
                        dirty = self.all_chains();
                    }
                    Err(e) => {
                        self.metrics.archive_errors.fetch_add(1, Relaxed);
                        warn!(error = %format!("{e:#}"), retry_in = ?backoff, "archive: PostgreSQL unreachable; the archive lags and catches up");
                    }
                }
            }
            if let Some(s) = session.as_mut()
                && !dirty.is_empty()
            {
                match self.copy(s, &mut dirty, &mut moved).await {
                    Ok(()) => {}
                    Err(e) => {
                        self.metrics.archive_errors.fetch_add(1, Relaxed);
                        warn!(error = %format!("{e:#}"), "archive: copying failed; reconnecting (nothing is copied twice)");
                        session = None;
                    }
                }
            }
            if let Some(prune) = &self.cfg.prune
                && !moved.is_empty()
                && pruned_at.elapsed() >= PRUNE_EVERY
            {
                pruned_at = tokio::time::Instant::now();
                self.prune(prune, std::mem::take(&mut moved)).await;
            }
            let wait = if session.is_none() {
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                w
            } else if dirty.is_empty() {
                Duration::from_secs(3600)
            } else {
                Duration::ZERO
            };
            tokio::select! {
                c = committed.recv() => match c {
                    Ok(c) => {
                        if pruning {
                            moved.insert(c.agent.clone());
                        }
                        dirty.insert(c.agent);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let all = self.all_chains();
                        if pruning {
                            moved.extend(all.iter().cloned());
                        }
                        dirty.extend(all);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => { dirty.insert(self.cfg.gateway.clone()); }
                () = tokio::time::sleep(wait) => {}
                _ = &mut stopped => return,
            }
        }
    }

    fn all_chains(&self) -> BTreeSet<AgentId> {
        match self.store.chains() {
            Ok(c) => c.into_iter().collect(),
            Err(e) => {
                warn!(error = %e, "archive: listing the chains failed");
                BTreeSet::new()
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Session> {
        let (client, connection) = open(&self.cfg.url, self.cfg.ca.as_deref()).await?;
        let mut s = Session {
            client,
            connection,
            heads: HashMap::new(),
        };
        s.client
            .batch_execute(SCHEMA)
            .await
            .context("applying the archive schema")?;
        for row in s
            .client
            .query("SELECT agent, head_seq FROM baton_chains", &[])
            .await
            .context("reading the archived heads")?
        {
            let agent: String = row.get(0);
            let seq: i64 = row.get(1);
            if let (Ok(a), Ok(seq)) = (AgentId::new(agent), u64::try_from(seq)) {
                s.heads.insert(a, Seq(seq));
            }
        }
        Ok(s)
    }

    /// Copies what `dirty` chains hold past their archived heads, in
    /// transactions of up to [`BATCH_ROWS`] rows, until all are copied.
    async fn copy(
        &self,
        s: &mut Session,
        dirty: &mut BTreeSet<AgentId>,
        moved: &mut BTreeSet<AgentId>,
    ) -> anyhow::Result<()> {
        while !dirty.is_empty() {
            // read a batch (blocking store reads, on the blocking pool)
            let store = Arc::clone(&self.store);
            let heads: Vec<(AgentId, Seq)> = dirty
                .iter()
                .map(|a| (a.clone(), s.heads.get(a).copied().unwrap_or(Seq::ZERO)))
                .collect();
            let (batch, done) =
                tokio::task::spawn_blocking(move || read_batch(&store, &heads)).await??;
            for a in &done {
                dirty.remove(a);
            }
            if batch.is_empty() {
                continue;
            }
            let n = self.write_batch(s, &batch).await?;
            self.metrics.archive_rows.fetch_add(n, Relaxed);
            if self.cfg.prune.is_some() {
                moved.extend(batch.into_iter().map(|c| c.agent));
            }
        }
        Ok(())
    }

    /// One transaction: the rows, then each chain's new head.
    async fn write_batch(&self, s: &mut Session, batch: &[Chain]) -> anyhow::Result<u64> {
        let clusters: Vec<Option<String>> = {
            let f = self
                .fleet
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            batch
                .iter()
                .map(|c| {
                    f.agent(&c.agent)
                        .map(|n| n.cluster.clone())
                        .or_else(|| f.cluster_of_gateway(&c.agent).map(str::to_owned))
                })
                .collect()
        };
        let tx = s.client.transaction().await.context("beginning")?;
        let sink = tx
            .copy_in(
                "COPY baton_entries (agent, seq, ts, event, context, data, content, prev, hash, sig) \
                 FROM STDIN (FORMAT binary)",
            )
            .await
            .context("starting COPY")?;
        let types = [
            Type::TEXT,
            Type::INT8,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::JSONB,
            Type::BYTEA,
            Type::BYTEA,
            Type::BYTEA,
            Type::BYTEA,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        let mut rows = 0u64;
        for chain in batch {
            for r in &chain.rows {
                let seq = i64::try_from(r.seq.0).context("seq beyond bigint")?;
                let sig = r.entry.sig.as_ref().map(|s| s.as_bytes().as_slice());
                let (agent, event, context) =
                    (chain.agent.as_str(), r.event.as_str(), r.context.as_deref());
                let (data, content) = (Jsonb(&r.data), r.entry.content.as_slice());
                let (prev, hash) = (
                    r.entry.prev.as_bytes().as_slice(),
                    r.entry.hash.as_bytes().as_slice(),
                );
                let values: [&(dyn ToSql + Sync); 10] = [
                    &agent, &seq, &r.ts, &event, &context, &data, &content, &prev, &hash, &sig,
                ];
                writer
                    .as_mut()
                    .write(&values)
                    .await
                    .with_context(|| format!("copying {} seq {}", chain.agent, r.seq))?;
                rows += 1;
            }
        }
        writer.finish().await.context("finishing COPY")?;
        let upsert = tx
            .prepare(
                "INSERT INTO baton_chains (agent, cluster, public_key, head_seq, head_hash, archived_by, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, now()) \
                 ON CONFLICT (agent) DO UPDATE SET cluster = COALESCE(EXCLUDED.cluster, baton_chains.cluster), \
                 public_key = COALESCE(EXCLUDED.public_key, baton_chains.public_key), \
                 head_seq = EXCLUDED.head_seq, head_hash = EXCLUDED.head_hash, \
                 archived_by = EXCLUDED.archived_by, updated_at = now()",
            )
            .await?;
        for (chain, cluster) in batch.iter().zip(&clusters) {
            let Some(last) = chain.rows.last() else {
                continue;
            };
            let seq = i64::try_from(last.seq.0)?;
            let key = chain.key.as_ref().map(|k| k.as_slice());
            tx.execute(
                &upsert,
                &[
                    &chain.agent.as_str(),
                    cluster,
                    &key,
                    &seq,
                    &last.entry.hash.as_bytes().as_slice(),
                    &self.cfg.gateway.as_str(),
                ],
            )
            .await
            .with_context(|| format!("recording the head of {}", chain.agent))?;
        }
        tx.commit().await.context("committing")?;
        // now in the archive: resume after it, and remember it here
        let mut metas = Vec::new();
        for chain in batch {
            if let Some(last) = chain.rows.last() {
                s.heads.insert(chain.agent.clone(), last.seq);
                metas.push((cursor_key(&chain.agent), last.seq.0.to_le_bytes().to_vec()));
            }
        }
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.set_metas(&metas))
            .await?
            .context("recording the archived heads in the store")?;
        Ok(rows)
    }
}

impl Run {
    /// Prunes `chains` behind the archive, as [`prune_cuts`] allows.
    async fn prune(&self, prune: &Prune, chains: BTreeSet<AgentId>) {
        let store = Arc::clone(&self.store);
        let (prune, own) = (prune.clone(), self.cfg.gateway.clone());
        let done = tokio::task::spawn_blocking(move || {
            let cuts = prune_cuts(&store, &prune, &own, chains)?;
            store.prune(&cuts).map_err(anyhow::Error::from)
        })
        .await;
        match done {
            Ok(Ok(n)) => {
                self.metrics.archive_pruned.fetch_add(n, Relaxed);
            }
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "archive: pruning the store failed; tried again later")
            }
            Err(e) => warn!(error = %e, "archive: pruning panicked"),
        }
    }
}

/// Where each of `chains` may be cut: through the lowest of what the
/// archive holds (as recorded here after its commits), what the parent
/// receipted, what the daily files hold and all but the newest
/// `retain`. Never the gateway's own chain (a rebuild starts from its seq
/// 1) and never a halted chain (the fork's context stays).
fn prune_cuts(
    store: &Store,
    prune: &Prune,
    own: &AgentId,
    chains: BTreeSet<AgentId>,
) -> anyhow::Result<Vec<(AgentId, Seq)>> {
    let mut cuts = Vec::new();
    for agent in chains {
        if agent == *own || store.halted(&agent)?.is_some() {
            continue;
        }
        let head = store.head(&agent)?.seq;
        let Some(mut through) = head.0.checked_sub(prune.retain) else {
            continue;
        };
        match archived_through(store, &agent)? {
            Some(a) => through = through.min(a.0),
            None => continue,
        }
        if prune.parent {
            let receipted = store
                .meta(&crate::store::upstream_cursor_key(&agent))?
                .and_then(|b| Receipt::decode(&b).ok());
            match receipted {
                Some(r) => through = through.min(r.seq.0),
                None => continue,
            }
        }
        if let Some(daily) = &prune.daily {
            let written = daily
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&agent)
                .copied();
            match written {
                Some(w) => through = through.min(w.0),
                None => continue,
            }
        }
        if store.oldest(&agent)?.is_some_and(|o| o.0 <= through) {
            cuts.push((agent, Seq(through)));
        }
    }
    Ok(cuts)
}

/// One chain's rows in a batch.
struct Chain {
    agent: AgentId,
    key: Option<[u8; 32]>,
    rows: Vec<Row>,
}

struct Row {
    seq: Seq,
    ts: SystemTime,
    event: String,
    context: Option<String>,
    /// The content's `data`, canonical JSON.
    data: Vec<u8>,
    entry: Entry,
}

/// Reads up to [`BATCH_ROWS`] rows from the chains past their archived
/// heads; returns them and the chains that have nothing more to copy.
fn read_batch(
    store: &Store,
    heads: &[(AgentId, Seq)],
) -> anyhow::Result<(Vec<Chain>, Vec<AgentId>)> {
    let mut batch = Vec::new();
    let mut done = Vec::new();
    let mut total = 0;
    for (agent, head) in heads {
        if total >= BATCH_ROWS {
            break;
        }
        let want = PAGE.min(BATCH_ROWS - total);
        let entries = store.range(agent, Seq(head.0 + 1), want)?;
        if entries.len() < want {
            done.push(agent.clone());
        }
        if entries.is_empty() {
            continue;
        }
        let key = store.agent(agent)?.map(|r| r.public_key);
        let mut rows = Vec::with_capacity(entries.len());
        for (seq, entry) in entries {
            rows.push(row(seq, entry).with_context(|| format!("{agent} seq {seq}"))?);
        }
        total += rows.len();
        batch.push(Chain {
            agent: agent.clone(),
            key,
            rows,
        });
    }
    Ok((batch, done))
}

fn row(seq: Seq, entry: Entry) -> anyhow::Result<Row> {
    let header = entry.header()?;
    let ms = baton_shared::entry::parse_timestamp(&header.ts)
        .with_context(|| format!("ts {:?}", header.ts))?;
    let ts = if ms >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    let data = match json::parse(&entry.content, Mode::Verify) {
        Ok(Value::Object(o)) => o
            .get("data")
            .map_or_else(|| b"null".to_vec(), baton_shared::canonical::to_vec),
        _ => anyhow::bail!("content is not an object"),
    };
    Ok(Row {
        seq,
        ts,
        event: header.event.as_str().to_owned(),
        context: header.context,
        data,
        entry,
    })
}

/// Canonical JSON text sent as `jsonb` (version 1 of its binary form: a
/// version byte, then the text).
#[derive(Debug)]
struct Jsonb<'a>(&'a [u8]);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}
