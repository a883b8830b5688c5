//! Offline commands over a data directory: verify and export. redb allows
//! one process per file, so these run while the daemon is stopped (the
//! error says so otherwise).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use baton_shared::export::{BatonDoc, BatonReceipt, SignedPoint};
use baton_shared::{AgentId, Entry, Seq};

use crate::ledger::{Ledger, Opened};

/// Opens the ledger in `data_dir` for the agent it belongs to.
pub fn open(data_dir: &Path) -> anyhow::Result<(AgentId, Opened)> {
    let path = crate::config::ledger_path(data_dir);
    if !path.exists() {
        anyhow::bail!("no ledger at {} (has the agent run?)", path.display());
    }
    let agent = Ledger::identity(&path).with_context(|| {
        format!(
            "opening {} (a running agent holds it: stop it, or use its socket)",
            path.display()
        )
    })?;
    let opened = Ledger::open(&path, &agent)?;
    Ok((agent, opened))
}

/// Verifies the whole held chain; prints a line and returns whether it held.
pub fn verify(data_dir: &Path, key: Option<PathBuf>, out: &mut impl Write) -> anyhow::Result<bool> {
    let (agent, o) = open(data_dir)?;
    let key = crate::keys::load(&key.unwrap_or_else(|| data_dir.join("agent.key")))?;
    match o
        .ledger
        .verify(&agent, &key.public(), &o.head, o.head.oldest)
    {
        Ok(n) => {
            writeln!(
                out,
                "{agent}: OK, {n} entries {}..={}, head {}",
                o.head.oldest, o.head.seq, o.head.hash
            )?;
            Ok(true)
        }
        Err(e) => {
            writeln!(out, "{agent}: FAILED: {e}")?;
            Ok(false)
        }
    }
}

/// Calls `f` with every held entry in `from..=to`.
fn each(
    o: &Opened,
    from: Option<u64>,
    to: Option<u64>,
    mut f: impl FnMut(&Entry) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let from = Seq(from.unwrap_or(0)).max(o.head.oldest);
    let to = Seq(to.unwrap_or(u64::MAX)).min(o.head.seq);
    let mut n = 0;
    let mut failed = None;
    o.ledger.for_each(from, to, |_, e| {
        if failed.is_none()
            && let Err(err) = f(e)
        {
            failed = Some(err);
        }
        n += 1;
        Ok(())
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

pub fn export_jsonl(
    o: &Opened,
    from: Option<u64>,
    to: Option<u64>,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let n = each(o, from, to, |e| Ok(writeln!(out, "{}", e.to_jsonl())?))?;
    out.flush()?;
    Ok(n)
}

/// Writes entries into `<dir>/<agent>/YYYY-MM-DD.jsonl` files by their `ts`
/// day (PROTOCOL §5, daily). Shared with the gateway's export.
#[derive(Debug)]
pub struct DailyWriter {
    agent_dir: PathBuf,
    files: std::collections::BTreeMap<String, std::io::BufWriter<std::fs::File>>,
}

impl DailyWriter {
    pub fn new(dir: &Path, agent: &AgentId) -> anyhow::Result<DailyWriter> {
        let agent_dir = dir.join(agent.as_str());
        std::fs::create_dir_all(&agent_dir)
            .with_context(|| format!("creating {}", agent_dir.display()))?;
        Ok(DailyWriter {
            agent_dir,
            files: std::collections::BTreeMap::new(),
        })
    }

    pub fn push(&mut self, e: &Entry) -> anyhow::Result<()> {
        let ts = e.header()?.ts;
        let day = baton_shared::export::daily_file_stem(&ts).to_owned();
        if !self.files.contains_key(&day) {
            let path = self.agent_dir.join(format!("{day}.jsonl"));
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            self.files.insert(day.clone(), std::io::BufWriter::new(f));
        }
        if let Some(w) = self.files.get_mut(&day) {
            writeln!(w, "{}", e.to_jsonl())?;
        }
        Ok(())
    }

    /// Flushes every file; returns their paths, oldest day first.
    pub fn finish(self) -> anyhow::Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for (day, mut w) in self.files {
            w.flush()?;
            paths.push(self.agent_dir.join(format!("{day}.jsonl")));
        }
        Ok(paths)
    }
}

/// `<dir>/<agent>/YYYY-MM-DD.jsonl` files of the held chain.
pub fn export_daily(
    agent: &AgentId,
    o: &Opened,
    from: Option<u64>,
    to: Option<u64>,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut daily = DailyWriter::new(dir, agent)?;
    each(o, from, to, |e| daily.push(e))?;
    daily.finish()
}

/// The held run as a baton (PROTOCOL §5): the newest signed entry as the
/// head, the best receipt if it covers that head.
pub fn export_baton(
    agent: &AgentId,
    o: &Opened,
    public_key: &baton_shared::PublicKey,
    from: Option<u64>,
    to: Option<u64>,
) -> anyhow::Result<Vec<u8>> {
    let mut entries = Vec::new();
    each(o, from, to, |e| {
        entries.push(e.clone());
        Ok(())
    })?;
    let first = from.map_or(o.head.oldest, Seq).max(o.head.oldest);
    let head = entries.iter().enumerate().rev().find_map(|(i, e)| {
        e.sig.map(|sig| SignedPoint {
            seq: Seq(first.0 + i as u64),
            hash: e.hash,
            sig,
        })
    });
    let receipt = o
        .best
        .as_ref()
        .filter(|r| {
            head.as_ref()
                .is_some_and(|h| h.seq == r.seq && h.hash == r.hash)
        })
        .map(|r| BatonReceipt {
            gateway: r.gateway.clone(),
            point: SignedPoint {
                seq: r.seq,
                hash: r.hash,
                sig: r.sig,
            },
        });
    let doc = BatonDoc {
        agent: agent.clone(),
        public_key: public_key.to_hex(),
        context: None,
        exported_at: baton_shared::entry::format_timestamp(crate::unix_ms()),
        entries,
        head,
        receipt,
        notes: Vec::new(),
    };
    Ok(doc.to_json())
}
