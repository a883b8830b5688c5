//! The offline subcommands: they work on a stopped gateway's data directory
//! (redb admits one process at a time).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use baton_shared::verify::{Verdict, Verifier};
use baton_shared::{AgentId, ClusterId, PublicKey, Seq};

use crate::ingest::{Ingest, IngestConfig};
use crate::keys;
use crate::metrics::Metrics;
use crate::server::unix_ms;
use crate::store::{AgentRecord, EnrolledBy, Store};

pub const ID_KEY: &str = "gateway_id";
pub const CLUSTER_KEY: &str = "cluster";

pub fn key_path(data_dir: &Path, key: Option<PathBuf>) -> PathBuf {
    key.unwrap_or_else(|| data_dir.join("gateway.key"))
}

pub fn open_store(data_dir: &Path) -> anyhow::Result<Arc<Store>> {
    let path = data_dir.join("gateway.redb");
    let store = Store::open(&path).with_context(|| {
        format!(
            "opening {} (a running gateway holds it: stop it first, or use its HTTP API)",
            path.display()
        )
    })?;
    Ok(Arc::new(store))
}

/// The gateway's ingest over its stored identity, for offline changes that
/// must also be recorded in its own chain.
pub fn open_offline(
    data_dir: &Path,
    key: Option<PathBuf>,
    id: Option<AgentId>,
    cluster: Option<ClusterId>,
) -> anyhow::Result<Ingest> {
    let store = open_store(data_dir)?;
    let stored = |k: &str| -> anyhow::Result<Option<String>> {
        Ok(store
            .meta(k)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    };
    let id = match (id, stored(ID_KEY)?) {
        (Some(id), _) => id,
        (None, Some(s)) => AgentId::new(s)?,
        (None, None) => bail!("this data directory has no gateway id yet: pass --id and --cluster"),
    };
    let cluster = match (cluster, stored(CLUSTER_KEY)?) {
        (Some(c), _) => c,
        (None, Some(s)) => ClusterId::new(s)?,
        (None, None) => bail!("this data directory has no cluster yet: pass --cluster"),
    };
    let key = keys::load(&key_path(data_dir, key))?;
    remember_identity(&store, &id, &cluster)?;
    let ingest = Ingest::open(
        IngestConfig {
            gateway: id,
            cluster,
            resend_timeout: std::time::Duration::from_secs(10),
            software: format!("baton-gateway {}", env!("CARGO_PKG_VERSION")),
        },
        key,
        store,
        Arc::new(Metrics::default()),
        unix_ms(),
    )?;
    Ok(ingest)
}

/// Keeps the gateway's id and cluster in its store, for offline commands.
pub fn remember_identity(store: &Store, id: &AgentId, cluster: &ClusterId) -> anyhow::Result<()> {
    store.set_meta(ID_KEY, id.as_str().as_bytes())?;
    store.set_meta(CLUSTER_KEY, cluster.as_str().as_bytes())?;
    Ok(())
}

#[derive(Debug)]
pub struct EnrollArgs {
    pub agent: AgentId,
    pub pubkey: String,
    pub start_seq: Option<u64>,
    pub revoked_from_seq: Option<u64>,
}

pub fn enroll(ingest: &mut Ingest, a: &EnrollArgs) -> anyhow::Result<()> {
    let key = PublicKey::trusted_hex(a.pubkey.trim()).context("--pubkey")?;
    if let Some(existing) = ingest.store().agent(&a.agent)?
        && existing.public_key != key.to_bytes()
    {
        bail!(
            "{} is enrolled with another key; a key change is a new agent id (PROTOCOL §1)",
            a.agent
        );
    }
    ingest.stage_enrollment(
        unix_ms(),
        &a.agent,
        AgentRecord {
            public_key: key.to_bytes(),
            start_seq: a.start_seq.map(Seq),
            revoked_from_seq: a.revoked_from_seq.map(Seq),
            enrolled_by: EnrolledBy::Operator,
            enrolled_ms: unix_ms(),
        },
    );
    ingest.commit()?;
    Ok(())
}

/// Verifies every stored run of `agents`; returns false if any failed.
pub fn verify(
    store: &Store,
    agents: &[AgentId],
    out: &mut impl std::io::Write,
) -> anyhow::Result<bool> {
    let mut all_ok = true;
    for agent in agents {
        let record = store
            .agent(agent)?
            .with_context(|| format!("unknown agent {agent}"))?;
        let key = record.key();
        let mut from = Seq(1);
        let mut verifier = Verifier::new(key);
        let mut last: Option<Seq> = None;
        let mut runs = 0;
        let mut report = Vec::new();
        loop {
            let rows = store.range(agent, from, 4096)?;
            if rows.is_empty() {
                break;
            }
            for (seq, e) in &rows {
                if last.is_some_and(|l| l.next() != *seq) {
                    // a hole recorded by this gateway: the next run starts
                    report.push(std::mem::replace(&mut verifier, Verifier::new(key)).finish());
                    runs += 1;
                }
                let _ = verifier.push_line(e.to_jsonl().as_bytes());
                last = Some(*seq);
            }
            from = last.map_or(Seq(1), Seq::next);
        }
        report.push(verifier.finish());
        runs += 1;
        for (i, v) in report.iter().enumerate() {
            let ok = matches!(v, Verdict::Valid(_));
            all_ok &= ok;
            let run = if runs > 1 {
                format!(" run {}", i + 1)
            } else {
                String::new()
            };
            writeln!(out, "{agent}{run}: {v}")?;
        }
    }
    Ok(all_ok)
}

/// Writes the run that contains the head as JSONL.
pub fn export_jsonl(
    store: &Store,
    agent: &AgentId,
    out: &mut impl std::io::Write,
) -> anyhow::Result<usize> {
    let head = store.head(agent)?.seq;
    // walk back from the head to the start of its run
    let mut start = Seq(1);
    let gaps = store.gaps(agent)?;
    for (_, to) in gaps {
        if to < head {
            start = start.max(to.next());
        }
    }
    let mut from = start;
    let mut n = 0;
    loop {
        let rows = store.range(agent, from, 4096)?;
        if rows.is_empty() {
            break;
        }
        for (seq, e) in &rows {
            writeln!(out, "{}", e.to_jsonl())?;
            n += 1;
            from = seq.next();
        }
    }
    out.flush()?;
    Ok(n)
}
