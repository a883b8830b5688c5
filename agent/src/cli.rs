//! Offline commands over a data directory: verify and export. redb allows
//! one process per file, so these run while the daemon is stopped (the
//! error says so otherwise).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use baton_shared::export::{BatonDoc, BatonReceipt, SignedPoint};
use baton_shared::{AgentId, Entry, Seq};

use baton_runtime::daily::DailyWriter;
use baton_runtime::progress::Progress;

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
    let key = baton_runtime::keys::load(&key.unwrap_or_else(|| data_dir.join("agent.key")))?;
    let progress = Progress::new(&format!("verifying {agent}"), None);
    let checked = o
        .ledger
        .verify_showing(&agent, &key.public(), &o.head, o.head.oldest, &progress);
    drop(progress);
    match checked {
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

/// Calls `f` with every held entry in `from..=to`, showing progress on a
/// terminal.
fn each(
    o: &Opened,
    from: Option<u64>,
    to: Option<u64>,
    mut f: impl FnMut(&Entry) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let from = Seq(from.unwrap_or(0)).max(o.head.oldest);
    let to = Seq(to.unwrap_or(u64::MAX)).min(o.head.seq);
    let progress = Progress::new("exporting", Some((to.0 + 1).saturating_sub(from.0)));
    let mut n = 0;
    let mut failed = None;
    o.ledger.for_each(from, to, |_, e| {
        if failed.is_none()
            && let Err(err) = f(e)
        {
            failed = Some(err);
        }
        n += 1;
        if n % 1024 == 0 {
            progress.inc(1024);
        }
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
        .map(BatonReceipt::from);
    let doc = BatonDoc {
        agent: agent.clone(),
        public_key: public_key.to_hex(),
        context: None,
        exported_at: baton_shared::entry::format_timestamp(baton_runtime::unix_ms()),
        entries,
        head,
        receipt,
        notes: Vec::new(),
    };
    Ok(doc.to_json())
}

/// One line of an existing JSONL log for `ingest`: an append request whose
/// own timestamp, if it has one (`ts`), moves into `data` (PROTOCOL §2: the
/// runtime sets the entry's `ts`; the log's time is kept as data). Lines
/// that are not JSON objects go as they are, for the agent to refuse with
/// its reason.
pub fn ingest_line(line: &[u8]) -> Vec<u8> {
    use baton_shared::json::{Mode, Object, Value, parse};
    let Ok(Value::Object(mut o)) = parse(line, Mode::Append) else {
        return line.to_vec();
    };
    let Some(ts) = o.remove("ts") else {
        return line.to_vec();
    };
    let data = match o.remove("data") {
        None => Value::Object(Object::new()),
        Some(d) => d,
    };
    let data = match data {
        Value::Object(mut d) if !d.contains_key("ts") => {
            d.insert("ts", ts);
            Value::Object(d)
        }
        other => {
            let mut d = Object::new();
            d.insert("value", other);
            d.insert("ts", ts);
            Value::Object(d)
        }
    };
    o.insert("data", data);
    baton_shared::canonical::to_vec(&Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_keeps_its_own_time_in_data() {
        let f = |s: &str| String::from_utf8(ingest_line(s.as_bytes())).unwrap();
        assert_eq!(
            f(r#"{"event":"temp","ts":"2026-01-02T03:04:05.000Z","data":{"c":41}}"#),
            r#"{"data":{"c":41,"ts":"2026-01-02T03:04:05.000Z"},"event":"temp"}"#
        );
        assert_eq!(
            f(r#"{"event":"temp","ts":1767323045000}"#),
            r#"{"data":{"ts":1767323045000},"event":"temp"}"#
        );
        // data that is not an object, or already has a ts, is kept whole
        assert_eq!(
            f(r#"{"event":"t","ts":5,"data":[1]}"#),
            r#"{"data":{"ts":5,"value":[1]},"event":"t"}"#
        );
        assert_eq!(
            f(r#"{"event":"t","ts":5,"data":{"ts":6}}"#),
            r#"{"data":{"ts":5,"value":{"ts":6}},"event":"t"}"#
        );
        // no ts, or not JSON: unchanged (the agent judges it)
        assert_eq!(f(r#"{"event":"t"}"#), r#"{"event":"t"}"#);
        assert_eq!(f("bad"), "bad");
    }
}
