//! Exports of a stored chain — JSONL, daily files, the baton document
//! (PROTOCOL §5) — shared by the CLI on a stopped gateway and by HTTP on a
//! running one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use baton_runtime::unix_ms;
use baton_shared::{AgentId, Entry, Seq};

use crate::store::Store;

/// The first seq of the run that contains the head (runs are split by
/// the holes this gateway recorded as gaps).
fn head_run_start(store: &Store, agent: &AgentId) -> anyhow::Result<Seq> {
    let head = store.head(agent)?.seq;
    Ok(store
        .gaps(agent)?
        .into_iter()
        .filter(|(_, to)| *to < head)
        .map(|(_, to)| to.next())
        .max()
        .unwrap_or(Seq(1)))
}

/// Calls `f` with every entry of the run that contains the head, in order,
/// up to the head as it was at the call (entries committed meanwhile are
/// not included). Reads 4,096 entries at a time: memory stays flat.
pub fn for_each_in_head_run(
    store: &Store,
    agent: &AgentId,
    mut f: impl FnMut(Seq, &Entry) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let head = store.head(agent)?.seq;
    let mut from = head_run_start(store, agent)?;
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
    }
    Ok(n)
}

/// Writes the run that contains the head as JSONL.
pub fn export_jsonl(
    store: &Store,
    agent: &AgentId,
    out: &mut impl std::io::Write,
) -> anyhow::Result<usize> {
    let n = for_each_in_head_run(store, agent, |_, e| {
        writeln!(out, "{}", e.to_jsonl())?;
        Ok(())
    })?;
    out.flush()?;
    Ok(n)
}

/// Writes `<dir>/<agent>/YYYY-MM-DD.jsonl` files (PROTOCOL §5, daily).
pub fn export_daily(store: &Store, agent: &AgentId, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut daily = baton_runtime::daily::DailyWriter::new(dir, agent)?;
    for_each_in_head_run(store, agent, |_, e| daily.push(e))?;
    daily.finish()
}

/// The head run as a baton document (PROTOCOL §5), with the agent's signed
/// head and this gateway's receipt for it, written to `out` as it is read
/// (constant memory, whatever the chain's length).
pub fn export_baton(
    store: &Store,
    agent: &AgentId,
    gateway: &AgentId,
    key: &baton_shared::SecretKey,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    use baton_shared::export::{BatonDoc, BatonReceipt, SignedPoint};
    let record = store
        .agent(agent)?
        .with_context(|| format!("unknown agent {agent}"))?;
    let head = store.head(agent)?;
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
        context: None,
        exported_at: baton_shared::entry::format_timestamp(unix_ms()),
        entries: Vec::new(),
        head: signed_head,
        receipt,
        notes: Vec::new(),
    };
    doc.write_streaming(
        |event| {
            // Through the head read above: the receipt and head name it.
            for_each_in_head_run(store, agent, |seq, e| {
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
