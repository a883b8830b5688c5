//! Exports of a stored chain — JSONL, daily files, the baton document
//! (PROTOCOL §5) — shared by the CLI on a stopped gateway and by HTTP on a
//! running one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use baton_runtime::progress::Progress;
use baton_runtime::unix_ms;
use baton_shared::{AgentId, Entry, Seq};

use crate::store::Store;

/// The first seq of the run that contains `end` (runs are split by the
/// holes this gateway recorded as gaps).
fn run_start(store: &Store, agent: &AgentId, end: Seq) -> anyhow::Result<Seq> {
    Ok(store
        .gaps(agent)?
        .into_iter()
        .filter(|(_, to)| *to < end)
        .map(|(_, to)| to.next())
        .max()
        .unwrap_or(Seq(1)))
}

/// What part of a chain an export takes: the run that holds `to` (default
/// the head), from `from` (default the run's start) — `to` is a point in
/// time (`--at`): the chain as it was when that entry was its head.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    pub from: Option<Seq>,
    pub to: Option<Seq>,
}

impl Range {
    /// The seqs this range covers in `agent`'s stored chain (empty when
    /// `from > to`).
    pub fn bounds(self, store: &Store, agent: &AgentId) -> anyhow::Result<(Seq, Seq)> {
        let head = store.head(agent)?.seq;
        let to = self.to.map_or(head, |t| t.min(head));
        let start = run_start(store, agent, to)?;
        Ok((self.from.map_or(start, |f| f.max(start)), to))
    }
}

/// Calls `f` with every entry of `range` (by default the run that contains
/// the head), in order, up to the head as it was at the call (entries
/// committed meanwhile are not included), advancing `progress`. Reads
/// 4,096 entries at a time: memory stays flat.
pub fn for_each_in(
    store: &Store,
    agent: &AgentId,
    range: Range,
    progress: &Progress,
    mut f: impl FnMut(Seq, &Entry) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let (mut from, head) = range.bounds(store, agent)?;
    progress.set_total((head.0 + 1).saturating_sub(from.0));
    let mut n = 0;
    while from <= head {
        let want = usize::try_from(head.0 - from.0 + 1).map_or(4096, |left| left.min(4096));
        let rows = store.range(agent, from, want)?;
        if rows.is_empty() {
            break;
        }
        for (seq, e) in &rows {
            f(*seq, e)?;
            n += 1;
            from = seq.next();
        }
        progress.inc(rows.len() as u64);
    }
    Ok(n)
}

/// Writes the run that contains the head (or `range`) as JSONL.
pub fn export_jsonl(
    store: &Store,
    agent: &AgentId,
    range: Range,
    progress: &Progress,
    out: &mut impl std::io::Write,
) -> anyhow::Result<usize> {
    let n = for_each_in(store, agent, range, progress, |_, e| {
        writeln!(out, "{}", e.to_jsonl())?;
        Ok(())
    })?;
    out.flush()?;
    Ok(n)
}

/// Writes `<dir>/<agent>/YYYY-MM-DD.jsonl` files (PROTOCOL §5, daily) of
/// the run that contains the head (or `range`).
pub fn export_daily(
    store: &Store,
    agent: &AgentId,
    range: Range,
    progress: &Progress,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut daily = baton_runtime::daily::DailyWriter::new(dir, agent)?;
    for_each_in(store, agent, range, progress, |_, e| daily.push(e))?;
    daily.finish()
}

/// The gateway that receipts a baton's head: its id and key.
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    pub gateway: &'a AgentId,
    pub key: &'a baton_shared::SecretKey,
}

/// What an exporter writes on a baton besides the chain: its `context`
/// label and operator notes (PROTOCOL §5: not authenticated).
#[derive(Debug, Clone, Default)]
pub struct Label {
    pub context: Option<String>,
    pub notes: Vec<baton_shared::export::Note>,
}

/// The head run (or `range`) as a baton document (PROTOCOL §5), with the
/// agent's signed head (its signature on the last entry taken, when it
/// signed that one) and this gateway's receipt for that entry, written to
/// `out` as it is read (constant memory, whatever the chain's length).
pub fn export_baton(
    store: &Store,
    agent: &AgentId,
    Signer { gateway, key }: Signer<'_>,
    range: Range,
    label: Label,
    progress: &Progress,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    use baton_shared::export::{BatonDoc, BatonReceipt, SignedPoint};
    let record = store
        .agent(agent)?
        .with_context(|| format!("unknown agent {agent}"))?;
    let (_, last) = range.bounds(store, agent)?;
    let head = match store.entry(agent, last)? {
        Some(e) => baton_shared::intake::Head {
            seq: last,
            hash: e.hash,
            sig: e.sig,
        },
        None => store.head(agent)?,
    };
    let signed_head = head.sig.map(|sig| SignedPoint {
        seq: head.seq,
        hash: head.hash,
        sig,
    });
    let receipt = (head.seq > Seq::ZERO).then(|| {
        let r = baton_shared::wire::Receipt::sign(key, gateway, agent, head.seq, head.hash);
        BatonReceipt::from(&r)
    });
    let doc = BatonDoc {
        agent: agent.clone(),
        public_key: record
            .public_key
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        context: label.context,
        exported_at: baton_shared::entry::format_timestamp(unix_ms()),
        entries: Vec::new(),
        head: signed_head,
        receipt,
        notes: label.notes,
    };
    doc.write_streaming(
        |event| {
            // Through the head read above: the receipt and head name it.
            for_each_in(store, agent, range, progress, |seq, e| {
                if seq <= head.seq {
                    event(e)?;
                }
                Ok(())
            })
            .map(|_| ())
        },
        out,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    out.flush()?;
    Ok(())
}
