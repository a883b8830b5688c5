//! End-to-end test support for Baton: real brokers, real gateways, and the
//! gateway's test publishers (`baton_gateway::publisher`: a real rumqttc
//! client driving the real `uplink` state machine over an in-memory ledger).

#![allow(clippy::unwrap_used)]

pub mod bins;
pub mod browser;
pub mod daemons;
pub mod http;
pub mod mosquitto;
pub mod postgres;
pub mod proxy;
pub mod raw;
pub mod watch;

use std::time::Duration;

use baton_shared::json::{Object, Value};
use baton_shared::memory::MemLedger;
use baton_shared::{AgentId, SecretKey};

/// An agent's ledger: genesis and `n` entries of ~200 B data, signed every
/// `every` entries (the tail may stay unsigned; the uplink signs it).
pub fn ledger(name: &str, seed: u8, n: u64, every: usize) -> MemLedger {
    let mut l = MemLedger::genesis(
        AgentId::new(name).unwrap(),
        SecretKey::from_seed(&[seed; 32]),
        1_795_460_700_000,
        every,
    )
    .unwrap();
    for i in 0..n {
        let mut d = Object::new();
        d.insert("i", Value::from(i));
        d.insert("note", Value::from("x".repeat(200)));
        l.append(
            1_795_460_700_000 + i as i64,
            "info",
            Some("e2e"),
            Value::Object(d),
        )
        .unwrap();
    }
    l
}

/// Waits for `cond`, polling, up to `limit`; never a fixed sleep.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// An agent's own chain as JSONL, read from its store (the agent must be
/// stopped: redb allows one process at a time).
pub fn agent_chain(dir: &std::path::Path) -> Vec<u8> {
    let (_, o) = baton_agent::cli::open(dir).unwrap();
    let mut out = Vec::new();
    baton_agent::cli::export_jsonl(&o, None, None, &mut out).unwrap();
    out
}

/// Flips a byte inside every stored copy of the entry carrying
/// `marker-NNNNNN` in the store file at `path` (its data: same length,
/// another hash). Every copy: a store may hold old page versions too.
pub fn flip_marker(path: &std::path::Path, marker: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let text = format!("marker-{marker:06}");
    let mut n = 0;
    let mut at = 0;
    while let Some(p) = bytes[at..].windows(13).position(|w| w == text.as_bytes()) {
        let p = at + p;
        bytes[p + 12] ^= 0x01;
        n += 1;
        at = p + 13;
    }
    assert!(n > 0, "{text} is in {}", path.display());
    std::fs::write(path, &bytes).unwrap();
}

/// How often each `marker-NNNNNN` appears in a chain's text (the data of
/// [`daemons::Agent::append_marked`]'s entries).
pub fn markers(text: &str) -> std::collections::BTreeMap<u64, usize> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(at) = line.find("marker-") {
            let n: u64 = line[at + 7..at + 13].parse().unwrap();
            *out.entry(n).or_insert(0) += 1;
        }
    }
    out
}

/// A stopped agent's chain, as `baton-agent export --format jsonl` writes
/// it, from its data directory.
pub fn own_chain_text(data_dir: &std::path::Path) -> String {
    let (_, o) = baton_agent::cli::open(data_dir).unwrap();
    let mut own = Vec::new();
    baton_agent::cli::export_jsonl(&o, None, None, &mut own).unwrap();
    String::from_utf8(own).unwrap()
}

/// libfaketime's preload library, if installed. Without it a test that
/// needs it says so and is skipped, unless `BATON_REQUIRE_FAKETIME=1`
/// (CI sets it), which makes a missing library a failure.
pub fn faketime() -> Option<String> {
    let found = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .map(str::to_owned);
    if found.is_none() {
        assert!(
            std::env::var("BATON_REQUIRE_FAKETIME").as_deref() != Ok("1"),
            "BATON_REQUIRE_FAKETIME=1 but libfaketime is not installed (apt-get install faketime)"
        );
        eprintln!(
            "SKIPPED: libfaketime is not installed (set BATON_REQUIRE_FAKETIME=1 to fail instead)"
        );
    }
    found
}
