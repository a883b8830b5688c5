//! The offline subcommands: they work on a stopped gateway's data directory
//! (redb admits one process at a time).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use baton_shared::verify::{Verdict, Verifier};
use baton_shared::{AgentId, ClusterId, PublicKey, Seq};

use crate::ingest::{Ingest, IngestConfig};
use crate::metrics::Metrics;
use crate::operator::{Actor, Command, Done, operator_enrollment, run_command};
use crate::store::{AgentRecord, Store};
use baton_runtime::keys;
use baton_runtime::unix_ms;

pub use crate::store::{CLUSTER_KEY, ID_KEY};

pub fn key_path(data_dir: &Path, key: Option<PathBuf>) -> PathBuf {
    key.unwrap_or_else(|| data_dir.join("gateway.key"))
}

pub fn open_store(data_dir: &Path) -> anyhow::Result<Arc<Store>> {
    let path = data_dir.join("gateway.redb");
    if baton_runtime::instance::running(data_dir, crate::DAEMON) {
        bail!(
            "a running gateway holds {}: stop it first, or use its HTTP API",
            path.display()
        );
    }
    if !data_dir.is_dir() {
        bail!(
            "no gateway data directory at {} (pass the --data-dir a gateway runs on)",
            data_dir.display()
        );
    }
    let store = Store::open(&path).with_context(|| format!("opening {}", path.display()))?;
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
            thresholds: baton_shared::liveness::Thresholds::default(),
            first_use: crate::config::FirstUseLimits::default(),
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
    Ok(store.remember_identity(id, cluster)?)
}

#[derive(Debug)]
pub struct EnrollArgs {
    pub agent: AgentId,
    pub pubkey: String,
    pub start_seq: Option<u64>,
    pub revoked_from_seq: Option<u64>,
    /// Enroll a child gateway forwarding this cluster (PROTOCOL §8).
    pub child_cluster: Option<baton_shared::ClusterId>,
}

pub fn enroll(ingest: &mut Ingest, a: &EnrollArgs) -> anyhow::Result<()> {
    let key = PublicKey::trusted_hex(a.pubkey.trim()).context("--pubkey")?;
    let record = AgentRecord {
        public_key: key.to_bytes(),
        start_seq: a.start_seq.map(Seq),
        revoked_from_seq: a.revoked_from_seq.map(Seq),
        enrolled_by: operator_enrollment(ingest.cluster(), a.child_cluster.clone())?,
        enrolled_ms: unix_ms(),
    };
    let agent = a.agent.clone();
    operate(ingest, Command::Enroll { agent, record })?;
    Ok(())
}

/// Carries out an operator command on a stopped gateway's files (the
/// `cli` channel) and commits it with its `operator` entry.
pub fn operate(ingest: &mut Ingest, cmd: Command) -> anyhow::Result<Done> {
    let done = run_command(ingest, std::time::Duration::ZERO, cmd, &Actor::cli())?;
    ingest.commit()?;
    Ok(done)
}

/// The JSON body of `POST /api/v1/enroll` for the `enroll` flags.
pub fn enroll_body(
    window: Option<&str>,
    agent: Option<&str>,
    pubkey: Option<&str>,
    start_seq: Option<u64>,
    revoked_from_seq: Option<u64>,
    child_cluster: Option<&baton_shared::ClusterId>,
) -> anyhow::Result<String> {
    use baton_shared::json::{Object, Value};
    let mut o = Object::new();
    if let Some(w) = window {
        o.insert("window", Value::from(w));
    } else {
        let (Some(agent), Some(pubkey)) = (agent, pubkey) else {
            bail!("--agent needs --pubkey");
        };
        o.insert("agent", Value::from(AgentId::new(agent)?.as_str()));
        o.insert("public_key", Value::from(pubkey.trim()));
        if let Some(s) = start_seq {
            o.insert("start_seq", Value::from(s));
        }
        if let Some(s) = revoked_from_seq {
            o.insert("revoked_from_seq", Value::from(s));
        }
        if let Some(c) = child_cluster {
            o.insert("child_cluster", Value::from(c.as_str()));
        }
    }
    Ok(String::from_utf8(baton_shared::canonical::to_vec(
        &Value::Object(o),
    ))?)
}

/// Verifies every stored run of `agents`; returns false if any failed.
pub fn verify(
    store: &Store,
    agents: &[AgentId],
    out: &mut impl std::io::Write,
) -> anyhow::Result<bool> {
    let mut all_ok = true;
    let mut total = 0;
    for agent in agents {
        total += store.head(agent)?.seq.0;
    }
    let progress = baton_runtime::progress::Progress::new("verifying", Some(total));
    for agent in agents {
        progress.describe(&format!("verifying {agent}"));
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
            progress.inc(rows.len() as u64);
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
            progress.suspend(|| writeln!(out, "{agent}{run}: {v}"))?;
        }
    }
    Ok(all_ok)
}

/// `GET path` from a running gateway at `url` (`http://HOST:PORT`): the
/// body of a 200 answer, or the gateway's error.
pub fn http_get(url: &str, path: &str) -> anyhow::Result<String> {
    http_request(url, "GET", path, None, None)
}

/// `POST path` of a JSON `body` to a running gateway, with the operator
/// `token`: the body of a 200 answer, or the gateway's error.
pub fn http_post(url: &str, path: &str, body: &str, token: &str) -> anyhow::Result<String> {
    http_request(url, "POST", path, Some(body), Some(token))
}

/// The operator token for a running gateway: `BATON_OPERATOR_TOKEN`, else
/// the token file.
pub fn operator_token(file: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("BATON_OPERATOR_TOKEN") {
        return Ok(t.trim().to_owned());
    }
    let t = std::fs::read_to_string(file).with_context(|| {
        format!(
            "reading the operator token {} (or set BATON_OPERATOR_TOKEN)",
            file.display()
        )
    })?;
    Ok(t.trim().to_owned())
}

fn http_request(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let host = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?} must start with http://"))?
        .trim_end_matches('/');
    let mut s =
        std::net::TcpStream::connect(host).with_context(|| format!("connecting to {url}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url} answered something that is not HTTP"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("{url}{path} answered {status}: {body}");
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("{url}{path}: chunked answers are not expected here");
    }
    Ok(body.to_owned())
}

/// The registry (`GET /api/v1/agents`) as the table `agents` prints.
/// The enrolled keys in a running gateway's `/api/v1/agents` answer.
pub fn keys_from_agents(
    json: &str,
) -> anyhow::Result<std::collections::HashMap<AgentId, PublicKey>> {
    use baton_shared::json::{Mode, Value, parse};
    let v = parse(json.as_bytes(), Mode::Verify).map_err(|e| anyhow::anyhow!("agents: {e}"))?;
    let Value::Array(rows) = v else {
        bail!("agents: not a JSON array");
    };
    let mut keys = std::collections::HashMap::new();
    for row in &rows {
        let o = row.as_object().context("agents: a row is not an object")?;
        let text = |k: &str| o.get(k).and_then(Value::as_str);
        let (Some(id), Some(key)) = (text("id"), text("public_key")) else {
            bail!("agents: a row without id or public_key");
        };
        let key = PublicKey::trusted_hex(key).with_context(|| format!("agents: {id}'s key"))?;
        keys.insert(AgentId::new(id)?, key);
    }
    Ok(keys)
}

pub fn agents_table(json: &str) -> anyhow::Result<String> {
    use baton_shared::json::{Mode, Value, parse};
    let v = parse(json.as_bytes(), Mode::Verify).map_err(|e| anyhow::anyhow!("agents: {e}"))?;
    let Value::Array(rows) = v else {
        bail!("agents: not a JSON array");
    };
    let now = unix_ms();
    let mut out = format!(
        "{:<24} {:<13} {:>10} {:>8} {:>10} {:>7} {:>8} {:>10} {:>9}\n",
        "AGENT", "STATE", "IMPEDANCE", "RTT", "OFFSET", "TEMP", "BACKLOG", "HEAD", "LAST SEEN"
    );
    for row in &rows {
        let o = row.as_object().context("agents: a row is not an object")?;
        let text = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        let num = |k: &str| o.get(k).and_then(Value::as_f64);
        let shown = |k: &str, unit: &str| num(k).map_or("-".to_owned(), |v| format!("{v}{unit}"));
        // A stopped gateway's store has no live fields: say what is stored.
        let state = match (num("halted_at"), o.get("state").and_then(Value::as_str)) {
            (Some(_), _) => "quarantined".to_owned(),
            (None, Some(s)) => s.to_owned(),
            (None, None) if text("enrolled_by") == "self" => "(gateway)".to_owned(),
            (None, None) => "-".to_owned(),
        };
        #[allow(clippy::cast_possible_truncation)]
        let seen = num("last_seen_ms").map_or("-".to_owned(), |t| {
            let ago = (now - t as i64).max(0) / 1000;
            format!("{ago}s ago")
        });
        out.push_str(&format!(
            "{:<24} {:<13} {:>10} {:>8} {:>10} {:>7} {:>8} {:>10} {:>9}\n",
            text("id"),
            state,
            shown("impedance_ms", " ms"),
            shown("rtt_ms", " ms"),
            shown("clock_offset_ms", " ms"),
            shown("temp_c", "°C"),
            shown("backlog", ""),
            num("head_seq").unwrap_or(0.0),
            seen,
        ));
    }
    Ok(out)
}
