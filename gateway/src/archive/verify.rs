//! `baton-gateway verify --archive URL`: the chains read back from
//! PostgreSQL and verified again under the keys a gateway enrolled — every
//! link, hash and checkpoint signature (PROTOCOL §6), so the archive is
//! evidence, not just a copy.
//!
//! The evidence is each row's `content` (the canonical bytes the hash
//! covers), `prev`, `hash` and `sig`. The columns split out for queries
//! (`seq`, `ts`, `event`, `context`, `data`) are checked against the content
//! too: a query over them answers for the signed entries. And each chain's
//! `baton_chains` row must name the head the rows end at and the enrolled
//! key. Read-only: nothing is created or written.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use baton_shared::json::{self, Mode, Value};
use baton_shared::verify::{Verdict, Verifier};
use baton_shared::{AgentId, Entry, Hash, PublicKey, Seq, Sig};

/// Rows read per query.
const PAGE: i64 = 4096;

/// Verifies `only` (or every chain the archive at `url` holds; TLS as
/// the gateway's, against `ca`) under
/// `keys`; writes one line per run and per problem to `out`. Returns
/// whether every chain verified, with every row's columns agreeing with
/// its content and every archived head with its rows.
pub async fn verify(
    url: &str,
    ca: Option<&std::path::Path>,
    keys: &HashMap<AgentId, PublicKey>,
    only: Option<&AgentId>,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let (mut client, connection) = super::open(url, ca).await?;
    // one snapshot: the heads and the rows as of one moment, while
    // gateways go on archiving
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .context("beginning a read-only transaction")?;
    let result = verify_with(&tx, keys, only, out).await;
    drop(tx);
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
    result
}

async fn verify_with(
    client: &tokio_postgres::Transaction<'_>,
    keys: &HashMap<AgentId, PublicKey>,
    only: Option<&AgentId>,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let mut heads: HashMap<String, ArchivedHead> = HashMap::new();
    for row in client
        .query(
            "SELECT agent, public_key, head_seq, head_hash FROM baton_chains",
            &[],
        )
        .await
        .context("reading baton_chains (is this a Baton archive?)")?
    {
        heads.insert(
            row.get(0),
            ArchivedHead {
                key: row.get(1),
                seq: row.get(2),
                hash: row.get(3),
            },
        );
    }
    let agents: BTreeSet<String> = match only {
        Some(a) => BTreeSet::from([a.as_str().to_owned()]),
        None => {
            // every agent with rows, found through the primary key (a
            // chain head written by hand or lost must not hide its rows)
            let mut all: BTreeSet<String> = heads.keys().cloned().collect();
            for row in client
                .query(
                    "WITH RECURSIVE a (agent) AS ( \
                       SELECT min(agent) FROM baton_entries \
                       UNION ALL \
                       SELECT (SELECT min(agent) FROM baton_entries e WHERE e.agent > a.agent) \
                       FROM a WHERE a.agent IS NOT NULL) \
                     SELECT agent FROM a WHERE agent IS NOT NULL",
                    &[],
                )
                .await
                .context("listing the archived chains")?
            {
                all.insert(row.get(0));
            }
            all
        }
    };
    let total = agents
        .iter()
        .filter_map(|a| heads.get(a))
        .map(|h| u64::try_from(h.seq).unwrap_or(0))
        .sum();
    let progress = baton_runtime::progress::Progress::new("verifying the archive", Some(total));
    let page = client
        .prepare(
            "SELECT seq, content, prev, hash, sig, event, context, \
                    (extract(epoch FROM ts) * 1000)::bigint, data::text \
             FROM baton_entries WHERE agent = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .await
        .context("preparing the page query")?;
    let mut all_ok = true;
    for name in &agents {
        progress.describe(&format!("verifying {name}"));
        let mut say = |line: String| progress.suspend(|| writeln!(out, "{name}: {line}"));
        let Ok(agent) = AgentId::new(name.as_str()) else {
            say("not an agent id; its rows cannot be verified".into())?;
            all_ok = false;
            continue;
        };
        let key = keys.get(&agent).copied();
        let mut chain = ChainCheck::new(agent.clone(), key);
        let mut after = 0i64;
        loop {
            let rows = client
                .query(&page, &[&name.as_str(), &after, &PAGE])
                .await
                .with_context(|| format!("reading {name} after seq {after}"))?;
            let Some(last) = rows.last() else { break };
            after = last.get(0);
            for row in &rows {
                chain.push(&ArchivedRow {
                    seq: row.get(0),
                    content: row.get(1),
                    prev: row.get(2),
                    hash: row.get(3),
                    sig: row.get(4),
                    event: row.get(5),
                    context: row.get(6),
                    ts_ms: row.get(7),
                    data: row.get(8),
                });
            }
            progress.inc(rows.len() as u64);
        }
        let report = chain.finish(heads.get(name));
        all_ok &= report.ok;
        for line in report.lines {
            say(line)?;
        }
    }
    if agents.is_empty() {
        progress.suspend(|| writeln!(out, "the archive holds no chains"))?;
    }
    Ok(all_ok)
}

/// A chain's `baton_chains` row.
struct ArchivedHead {
    key: Option<Vec<u8>>,
    seq: i64,
    hash: Vec<u8>,
}

/// One `baton_entries` row as read.
struct ArchivedRow {
    seq: i64,
    content: Vec<u8>,
    prev: Vec<u8>,
    hash: Vec<u8>,
    sig: Option<Vec<u8>>,
    event: String,
    context: Option<String>,
    ts_ms: i64,
    data: String,
}

/// What a chain's verification found: one line per run, one per problem.
struct Report {
    ok: bool,
    lines: Vec<String>,
}

/// One chain verified row by row, in seq order, in constant memory.
struct ChainCheck {
    agent: AgentId,
    key: Option<PublicKey>,
    verifier: Verifier,
    /// Finished runs (the archive holds a hole where the gateway did).
    runs: Vec<(Seq, Verdict)>,
    first: Option<Seq>,
    last: Option<(Seq, Vec<u8>)>,
    rows: u64,
    /// Rows whose split-out columns disagree with their content (the
    /// first few are named).
    mismatches: u64,
    named: Vec<String>,
}

/// Mismatching rows named in the report at most.
const NAMED: usize = 10;

impl ChainCheck {
    fn new(agent: AgentId, key: Option<PublicKey>) -> ChainCheck {
        ChainCheck {
            agent,
            key,
            verifier: Verifier::new(key),
            runs: Vec::new(),
            first: None,
            last: None,
            rows: 0,
            mismatches: 0,
            named: Vec::new(),
        }
    }

    fn push(&mut self, row: &ArchivedRow) {
        let seq = Seq(u64::try_from(row.seq).unwrap_or(0));
        if let Some((last, _)) = &self.last
            && last.next() != seq
        {
            let run = std::mem::replace(&mut self.verifier, Verifier::new(self.key)).finish();
            self.runs.push((self.first.unwrap_or(seq), run));
            self.first = Some(seq);
        }
        self.first.get_or_insert(seq);
        self.rows += 1;
        let line = match entry_of(row) {
            Ok(e) => e.to_jsonl(),
            Err(why) => {
                // the verifier names the line it cannot read
                format!("{{\"seq\":{seq},\"unreadable\":\"{why}\"}}")
            }
        };
        let _ = self.verifier.push_line(line.as_bytes());
        if let Err(why) = columns_agree(&self.agent, seq, row) {
            self.mismatches += 1;
            if self.named.len() < NAMED {
                self.named.push(format!("seq {seq}: {why}"));
            }
        }
        self.last = Some((seq, row.hash.clone()));
    }

    fn finish(mut self, head: Option<&ArchivedHead>) -> Report {
        let mut lines = Vec::new();
        let mut ok = true;
        if let Some(first) = self.first {
            self.runs.push((first, self.verifier.finish()));
        }
        let several = self.runs.len() > 1;
        for (i, (first, v)) in self.runs.iter().enumerate() {
            ok &= v.is_valid();
            let run = if several {
                format!("run {} (from seq {first}): ", i + 1)
            } else {
                String::new()
            };
            let shown = match v {
                Verdict::Unauthenticated(_) if self.key.is_none() => {
                    "unauthenticated: no key enrolled for it where the keys came from".to_owned()
                }
                v => v.to_string(),
            };
            lines.push(format!("{run}{shown}"));
        }
        if self.rows == 0 {
            ok = false;
            lines.push("no rows archived".into());
        } else {
            lines.push(format!(
                "{} rows, seq {}..{}",
                self.rows,
                self.first.map_or(0, |s| s.0),
                self.last.as_ref().map_or(0, |(s, _)| s.0)
            ));
        }
        if self.mismatches > 0 {
            ok = false;
            lines.push(format!(
                "{} rows whose columns disagree with their signed content",
                self.mismatches
            ));
            lines.extend(self.named.iter().map(|n| format!("  {n}")));
        }
        match (head, &self.last) {
            (None, _) => {
                ok = false;
                lines.push("no baton_chains row names this chain's head".into());
            }
            (Some(h), Some((seq, hash)))
                if h.seq != i64::try_from(seq.0).unwrap_or(-1) || h.hash != *hash =>
            {
                ok = false;
                lines.push(format!(
                    "baton_chains names head {} but the rows end at seq {seq}{}",
                    h.seq,
                    if h.seq == i64::try_from(seq.0).unwrap_or(-1) {
                        " with another hash"
                    } else {
                        ""
                    }
                ));
            }
            _ => {}
        }
        if let (Some(h), Some(key)) = (head, self.key)
            && let Some(archived) = &h.key
            && archived.as_slice() != key.to_bytes().as_slice()
        {
            ok = false;
            lines.push("baton_chains names another public key than the enrolled one".into());
        }
        Report { ok, lines }
    }
}

/// The entry a row holds, from its evidence columns.
fn entry_of(row: &ArchivedRow) -> Result<Entry, &'static str> {
    let prev = <[u8; 32]>::try_from(row.prev.as_slice()).map_err(|_| "prev is not 32 bytes")?;
    let hash = <[u8; 32]>::try_from(row.hash.as_slice()).map_err(|_| "hash is not 32 bytes")?;
    let sig = match &row.sig {
        None => None,
        Some(s) => Some(Sig(
            <[u8; 64]>::try_from(s.as_slice()).map_err(|_| "sig is not 64 bytes")?
        )),
    };
    if std::str::from_utf8(&row.content).is_err() {
        return Err("content is not UTF-8");
    }
    Ok(Entry {
        content: row.content.clone(),
        prev: Hash(prev),
        hash: Hash(hash),
        sig,
    })
}

/// Whether `row`'s split-out columns say what its content says.
fn columns_agree(agent: &AgentId, seq: Seq, row: &ArchivedRow) -> Result<(), String> {
    let value =
        json::parse(&row.content, Mode::Verify).map_err(|e| format!("content is not JSON: {e}"))?;
    let header =
        baton_shared::entry::Header::from_content(&value).map_err(|e| format!("content: {e}"))?;
    let Value::Object(content) = value else {
        return Err("content is not a JSON object".into());
    };
    if header.agent != *agent {
        return Err(format!("content names agent {}", header.agent));
    }
    if header.seq != seq {
        return Err(format!("content says seq {}", header.seq));
    }
    if header.event.as_str() != row.event {
        return Err(format!(
            "event column {:?}, content {:?}",
            row.event,
            header.event.as_str()
        ));
    }
    if header.context != row.context {
        return Err(format!(
            "context column {:?}, content {:?}",
            row.context, header.context
        ));
    }
    let ts = baton_shared::entry::parse_timestamp(&header.ts);
    if ts != Some(row.ts_ms) {
        return Err(format!(
            "ts column {} ms, content {:?}",
            row.ts_ms, header.ts
        ));
    }
    let signed = content
        .get("data")
        .map_or_else(|| b"null".to_vec(), baton_shared::canonical::to_vec);
    let column = json::parse(row.data.as_bytes(), Mode::Verify)
        .map(|v| baton_shared::canonical::to_vec(&v))
        .map_err(|e| format!("data column: {e}"))?;
    if column != signed {
        return Err("data column differs from the content's data".into());
    }
    Ok(())
}
