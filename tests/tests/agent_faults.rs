//! Faults of the agent's own storage, injected for real: SIGKILL of the
//! agent process during sustained appends, flipped bytes and truncation of
//! the ledger file (salvage, no second genesis, starts on randomly flipped
//! files), and the ledger replaced by an older copy of itself (a restored
//! SD card image).
//!
//! `BATON_AGENT_KILL_ROUNDS` sets the number of kills (default 50).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_shared::json::{self, Value};
use baton_shared::verify::verify_text;
use baton_shared::{AgentId, Seq};
use baton_tests::daemons::{Agent, Gateway, agent_key, sample_lines};
use baton_tests::{eventually, flip_marker, markers};

fn spawn_agent(dir: &Path) -> Child {
    Command::new(baton_tests::bins::agent())
        .args(["run", "--id", "pi-k", "--cluster", "c1"])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn connect(socket: &Path) -> UnixStream {
    for _ in 0..1000 {
        if let Ok(s) = UnixStream::connect(socket) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("agent socket {} never answered", socket.display());
}

/// Appends in pipelined chunks until the connection dies; records every
/// acknowledged (seq, hash).
fn append_until_killed(mut s: UnixStream, from: u64, acked: &Mutex<Vec<(u64, String)>>) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut next = from;
    loop {
        let mut chunk = Vec::new();
        for l in sample_lines(next, 50) {
            chunk.extend_from_slice(&l);
            chunk.push(b'\n');
        }
        next += 50;
        if s.write_all(&chunk).is_err() {
            return;
        }
        for _ in 0..50 {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let (seq, hash) = baton_agent::socket::client::parse_answer(&line)
                .unwrap_or_else(|e| panic!("append refused: {e}"));
            acked.lock().unwrap().push((seq, hash));
        }
    }
}

/// The stored chain: seq → hash, after a full verification.
fn stored(dir: &Path) -> BTreeMap<u64, String> {
    let mut out = Vec::new();
    assert!(
        baton_agent::cli::verify(dir, None, &mut out).unwrap(),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let (_, o) = baton_agent::cli::open(dir).unwrap();
    o.ledger
        .entries(Seq(1), o.head.seq)
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e.hash.to_hex()))
        .collect()
}

#[test]
fn sigkill_during_appends_loses_no_acknowledged_entry() {
    let rounds: u64 = std::env::var("BATON_AGENT_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    agent_key(dir.path());
    let socket = dir.path().join("agent.sock");
    let acked = Arc::new(Mutex::new(Vec::new()));
    // a deterministic spread of kill moments, 20–140 ms into each run
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..rounds {
        let mut child = spawn_agent(dir.path());
        let s = connect(&socket);
        let acked2 = Arc::clone(&acked);
        let appender =
            std::thread::spawn(move || append_until_killed(s, round * 1_000_000, &acked2));
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(20 + x % 120));
        child.kill().unwrap();
        child.wait().unwrap();
        appender.join().unwrap();
        let chain = stored(dir.path());
        for (seq, hash) in acked.lock().unwrap().iter() {
            assert_eq!(
                chain.get(seq),
                Some(hash),
                "round {round}: acknowledged entry {seq} lost or changed"
            );
        }
    }
    let n = acked.lock().unwrap().len();
    assert!(
        n > rounds as usize * 10,
        "only {n} appends were acknowledged"
    );
}

fn gateway_text(gw: &Gateway, agent: &str) -> String {
    let (status, body) = baton_tests::http::get(
        gw.bound.http,
        &format!("/api/v1/agents/{agent}/entries?limit=10000"),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The files set aside as damaged in `dir`.
fn set_aside(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
        .count()
}

fn alert_of(a: &Agent) -> Value {
    let doc = a
        .ready
        .shared
        .document("pi", &a.ready.writer.head(), true, 0);
    doc.as_object().unwrap().get("alert").unwrap().clone()
}

enum Damage {
    FlipByte,
    Truncate,
}

async fn damaged_ledger_is_salvaged_and_rebuilt(damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-d");
    let key = agent_key(&adir);
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &[(AgentId::new("pi-d").unwrap(), key)],
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let a = Agent::start("pi-d", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    a.append_marked(0, 500).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == 501).await);
    a.stop().await;
    // 100 more offline: acknowledged, never receipted; they exist only here
    let a = Agent::start("pi-d", &adir, None, None).await;
    a.append_marked(500, 100).await;
    a.stop().await;

    let path = adir.join("ledger.redb");
    match damage {
        // entry 552 ("marker-000550" becomes "…551")
        Damage::FlipByte => flip_marker(&path, 550),
        Damage::Truncate => {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() * 3 / 5]).unwrap();
        }
    }

    // Start: detected, kept aside, salvaged, finished against the gateway.
    let a = Agent::start("pi-d", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    let alert = alert_of(&a);
    assert!(
        alert.as_str().is_some_and(|s| s.contains("damaged")),
        "{alert:?}"
    );
    assert_eq!(set_aside(&adir), 1, "the damaged file is kept aside");
    assert!(
        eventually(Duration::from_secs(30), || a.receipted() == a.head()
            && alert_of(&a) == Value::Null)
        .await,
        "head {} receipted {} alert {:?}",
        a.head(),
        a.receipted(),
        alert_of(&a)
    );
    a.append_marked(1000, 10).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == a.head()).await);
    let head = a.head();
    a.stop().await;
    let text = gateway_text(&gw, "pi-d");
    assert_eq!(
        text.lines().count() as u64,
        head,
        "the gateway's chain stays linear"
    );
    assert!(verify_text(text.as_bytes(), Some(key)).is_valid());
    let seen = markers(&text);
    assert!(seen.values().all(|&n| n == 1), "no entry twice: {seen:?}");
    // everything the gateway had, and the new appends
    for m in (0..500).chain(1000..1010) {
        assert!(seen.contains_key(&m), "marker {m} lost");
    }
    let recovered = text
        .lines()
        .filter(|l| l.contains("\"alert\"") && l.contains("recovered after damage"))
        .count();
    assert_eq!(recovered, 1, "the recovery is in the chain");
    if let Damage::FlipByte = damage {
        // Only the damaged entry is gone: the 99 others that existed only
        // in the damaged file were salvaged (49 of them past the damage,
        // appended anew).
        for m in 500..600 {
            assert_eq!(seen.contains_key(&m), m != 550, "marker {m}");
        }
        assert!(text.lines().nth(551).unwrap().contains("marker-000551"));
        assert!(!text.contains("\"recovery\""), "no adoption was needed");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_detected_and_everything_else_salvaged() {
    damaged_ledger_is_salvaged_and_rebuilt(Damage::FlipByte).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_ledger_is_detected_salvaged_and_rebuilt() {
    damaged_ledger_is_salvaged_and_rebuilt(Damage::Truncate).await;
}

/// Finding 6: a start checked only from the best receipt on, so an entry
/// the gateway had receipted could be edited on disk unnoticed. Every
/// start now checks what no start has checked before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_receipted_entry_is_found_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-e");
    let key = agent_key(&adir);
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &[(AgentId::new("pi-e").unwrap(), key)],
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let a = Agent::start("pi-e", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    a.append_marked(0, 300).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == 301).await);
    a.stop().await;
    flip_marker(&adir.join("ledger.redb"), 150);
    let a = Agent::start("pi-e", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    assert!(
        alert_of(&a)
            .as_str()
            .is_some_and(|s| s.contains("entry 152")),
        "{:?}",
        alert_of(&a)
    );
    // The gateway holds it all: adopted, nothing appended twice.
    assert!(
        eventually(Duration::from_secs(30), || alert_of(&a) == Value::Null
            && a.receipted() == a.head())
        .await
    );
    a.stop().await;
    let text = gateway_text(&gw, "pi-e");
    assert!(verify_text(text.as_bytes(), Some(key)).is_valid());
    let seen = markers(&text);
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|&n| n == 1));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 303);
    assert!(lines[301].contains("\"recovery\"") && lines[301].contains("local_corruption"));
    assert!(lines[302].contains("recovered after damage: 0 salvaged"));
    gw.stop().await;
}

/// Finding 8: damage with no gateway reachable began a second chain at
/// seq 1 — a fork of the agent's id — and dropped the good entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_offline_salvages_in_place_and_never_begins_a_second_chain() {
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-o");
    let key = agent_key(&adir);
    let a = Agent::start("pi-o", &adir, None, None).await;
    a.append_marked(0, 200).await;
    a.stop().await;
    flip_marker(&adir.join("ledger.redb"), 100); // entry 102
    let a = Agent::start("pi-o", &adir, None, None).await;
    assert_eq!(set_aside(&adir), 1);
    // 1..=101 in place, 103..=201 appended anew at 102..=200, the alert at 201
    assert_eq!(a.head(), 201);
    a.append_marked(500, 5).await;
    a.stop().await;
    let own = baton_tests::own_chain_text(&adir);
    assert!(verify_text(own.as_bytes(), Some(key)).is_valid());
    assert_eq!(
        own.matches("\"genesis\"").count(),
        1,
        "one chain, one genesis"
    );
    let seen = markers(&own);
    for m in (0..200).chain(500..505) {
        assert_eq!(seen.get(&m).copied(), (m != 100).then_some(1), "marker {m}");
    }
    assert!(
        own.lines()
            .nth(200)
            .unwrap()
            .contains("recovered after damage: 99 salvaged")
    );
}

/// Finding 7, with `panic = "abort"` (the device build): a panic inside
/// redb while opening ends the process before anything can be caught, so a
/// marker written before the open says at the next start that the last one
/// never finished. Here the marker is left as such a crash leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_never_finished_sets_the_file_aside_and_salvages_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-m");
    let key = agent_key(&adir);
    let a = Agent::start("pi-m", &adir, None, None).await;
    a.append_marked(0, 50).await;
    a.stop().await;
    std::fs::write(adir.join("ledger.redb.starting"), b"").unwrap();
    let a = Agent::start("pi-m", &adir, None, None).await;
    assert_eq!(set_aside(&adir), 1);
    assert!(!adir.join("ledger.redb.starting").exists());
    // all 51 in place, then the recovery's alert entry
    assert_eq!(a.head(), 52);
    a.stop().await;
    let own = baton_tests::own_chain_text(&adir);
    assert!(verify_text(own.as_bytes(), Some(key)).is_valid());
    assert_eq!(markers(&own).len(), 50);
    assert!(
        own.lines()
            .nth(51)
            .unwrap()
            .contains("recovered after damage: 0 salvaged")
    );
}

/// Finding 7: random damage anywhere in the file — inside redb's own
/// structures too — must never stop the agent from starting (a crash loop
/// under systemd), and an entry the damage did not touch is never lost.
/// `BATON_FLIP_STARTS` sets the number of starts (default 40; the bench
/// figure in BENCHMARKS.md is from 1,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_bit_flipped_ledgers_never_fail_and_keep_what_is_intact() {
    let rounds: u64 = std::env::var("BATON_FLIP_STARTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-f");
    let key = agent_key(&adir);
    let a = Agent::start("pi-f", &adir, None, None).await;
    a.append_marked(0, 300).await;
    a.stop().await;
    let pristine = std::fs::read(adir.join("ledger.redb")).unwrap();
    // Each entry's stored record, signed and unsigned (both may be in the
    // file: a checkpoint is signed by rewriting its entry).
    let records: Vec<(u64, [Vec<u8>; 2])> = {
        let (_, o) = baton_agent::cli::open(&adir).unwrap();
        let entries = o.ledger.entries(Seq(2), o.head.seq).unwrap();
        entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let mut bare = e.clone();
                bare.sig = None;
                (i as u64, [e.stored_bytes(), bare.stored_bytes()])
            })
            .collect()
    };
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rng = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut salvaged_starts = 0;
    for round in 0..rounds {
        let mut bytes = pristine.clone();
        let flips = 1 + rng() % 8;
        for _ in 0..flips {
            let at = (rng() % bytes.len() as u64) as usize;
            bytes[at] ^= 1 << (rng() % 8);
        }
        std::fs::write(adir.join("ledger.redb"), &bytes).unwrap();
        let a = Agent::start("pi-f", &adir, None, None).await;
        a.stop().await;
        for f in std::fs::read_dir(&adir).unwrap().filter_map(Result::ok) {
            if f.file_name().to_string_lossy().contains(".damaged-") {
                salvaged_starts += 1;
                std::fs::remove_file(f.path()).unwrap();
            }
        }
        let own = baton_tests::own_chain_text(&adir);
        assert!(
            verify_text(own.as_bytes(), Some(key)).is_valid(),
            "round {round}: the started chain verifies"
        );
        // a damaged genesis is lost, never written again
        assert!(own.matches("\"genesis\"").count() <= 1, "round {round}");
        let seen = markers(&own);
        for (m, forms) in &records {
            let in_file = forms
                .iter()
                .any(|r| bytes.windows(r.len()).any(|w| w == r.as_slice()));
            if in_file {
                assert_eq!(
                    seen.get(m),
                    Some(&1),
                    "round {round}: intact entry of marker {m}"
                );
            }
        }
    }
    eprintln!(
        "{rounds} starts on bit-flipped ledgers: {salvaged_starts} met damage \
         (set aside, salvaged); none failed; no intact entry lost"
    );
    assert!(
        salvaged_starts > rounds / 4,
        "only {salvaged_starts} of {rounds} starts met damage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_older_ledger_adopts_the_gateway_head_and_reappends_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-r");
    let key = agent_key(&adir);
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &[(AgentId::new("pi-r").unwrap(), key)],
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let a = Agent::start("pi-r", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    a.append_marked(0, 200).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == 201).await);
    a.stop().await;
    let image = std::fs::read(adir.join("ledger.redb")).unwrap();
    let a = Agent::start("pi-r", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    a.append_marked(200, 300).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == 501).await);
    a.stop().await;
    // the SD card is restored from the old image; the device appends offline
    std::fs::write(adir.join("ledger.redb"), &image).unwrap();
    let a = Agent::start("pi-r", &adir, None, None).await;
    assert_eq!(a.head(), 201);
    a.append_marked(7000, 20).await;
    a.stop().await;
    // back online: adopt 501 (it carries our signature), recovery at 502,
    // the 20 orphans re-appended at 503..=522
    let a = Agent::start("pi-r", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    assert!(
        eventually(Duration::from_secs(30), || a.head() == 522
            && a.receipted() == 522)
        .await,
        "head {} receipted {}",
        a.head(),
        a.receipted()
    );
    a.stop().await;
    let text = gateway_text(&gw, "pi-r");
    assert_eq!(
        text.lines().count(),
        522,
        "the gateway's chain stays linear"
    );
    assert!(verify_text(text.as_bytes(), Some(key)).is_valid());
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[501].contains("\"recovery\"") && lines[501].contains("gateway_ahead"));
    for i in 0..20 {
        assert!(lines[502 + i].contains(&format!("marker-{:06}", 7000 + i)));
    }
    // the agent's own export shows the same chain from the recovery on
    let (_, o) = baton_agent::cli::open(&adir).unwrap();
    let mut own = Vec::new();
    baton_agent::cli::export_jsonl(&o, None, None, &mut own).unwrap();
    let own = String::from_utf8(own).unwrap();
    assert_eq!(own.lines().collect::<Vec<_>>(), lines[501..].to_vec());
    // and the set-aside run (1..=221 of the restored image) is kept
    let runs = o.ledger.orphan_runs().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].len(), 221);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_appends_are_refused_then_a_gap_entry_proves_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-b"));
    let key = agent_key(&adir);
    let id = AgentId::new("pi-b").unwrap();
    let mqtt: std::net::SocketAddr = format!("127.0.0.1:{}", baton_tests::daemons::free_port())
        .parse()
        .unwrap();
    // The gateway's key, but the gateway itself is not up yet: offline.
    let gw_key = baton_runtime::keys::generate(&gdir.join("gateway.key"))
        .unwrap()
        .public();
    let budget = baton_agent::RawConfig {
        budget: Some("256KiB".into()),
        ..Default::default()
    };
    let a = Agent::start_with("pi-b", &adir, Some(mqtt), Some(gw_key), budget).await;
    let socket = a.ready.socket.clone();
    let mut acked = Vec::new();
    let mut refused: u64 = 0;
    let mut i = 0;
    while refused < 40 {
        let answers = baton_agent::socket::client::send_lines(&socket, sample_lines(i, 20))
            .await
            .unwrap();
        i += 20;
        for ans in answers {
            match ans {
                Ok(x) => {
                    assert_eq!(refused, 0, "an append succeeded after refusals began");
                    acked.push(x);
                }
                Err(e) => {
                    assert!(e.starts_with("budget: "), "{e}");
                    refused += 1;
                }
            }
        }
        assert!(i < 10_000, "the budget never filled");
    }
    // The daemon is alive and its status says so.
    let doc = a
        .ready
        .shared
        .document("pi-b", &a.ready.writer.head(), true, 0);
    assert!(doc.as_object().unwrap().get("state").is_some());
    assert_eq!(a.head(), acked.last().unwrap().0);
    // The gateway comes up: receipts let receipted entries go, appends resume.
    let gw = Gateway::start(&gdir, &[(id, key)], None, mqtt).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == a.head()).await);
    let after = a.append(50_000, 5).await;
    let gap_seq = acked.last().unwrap().0 + 1;
    assert_eq!(
        after[0].0,
        gap_seq + 1,
        "a gap entry precedes the first append"
    );
    assert!(eventually(Duration::from_secs(30), || a.receipted() == a.head()).await);
    a.stop().await;
    // Nothing with a seq was lost: the gateway holds every acknowledged entry.
    let text = gateway_text(&gw, "pi-b");
    assert!(verify_text(text.as_bytes(), Some(key)).is_valid());
    let lines: Vec<&str> = text.lines().collect();
    for (seq, hash) in &acked {
        assert!(lines[usize::try_from(*seq).unwrap() - 1].contains(hash.as_str()));
    }
    let gap = lines[usize::try_from(gap_seq).unwrap() - 1];
    let gap = json::parse(gap.as_bytes(), json::Mode::Verify).unwrap();
    let gap = gap.as_object().unwrap();
    assert_eq!(gap.get("event").and_then(Value::as_str), Some("gap"));
    let data = gap.get("data").and_then(Value::as_object).unwrap();
    // PROTOCOL §2: the data has exactly the keys, and kinds, of the vector's
    let vector = json::parse(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/tests/data/gap.json"
        ))
        .unwrap(),
        json::Mode::Verify,
    )
    .unwrap();
    let pinned = vector.as_object().unwrap().get("entries").unwrap();
    let Value::Array(pinned) = pinned else {
        panic!("gap.json entries")
    };
    let pinned = pinned[2].as_object().unwrap().get("data").unwrap();
    let pinned = pinned.as_object().unwrap();
    let shape = |o: &json::Object| -> Vec<(String, &'static str)> {
        let mut v: Vec<_> = o.iter().map(|(k, v)| (k.to_owned(), v.kind())).collect();
        v.sort();
        v
    };
    assert_eq!(shape(data), shape(pinned), "{data:?}");
    assert_eq!(data.get("reason"), pinned.get("reason"));
    let n = |k: &str| data.get(k).and_then(Value::as_exact_u64).unwrap();
    assert_eq!(n("refused_appends"), refused);
    assert!(
        n("refused_bytes") >= refused,
        "every refused append had content"
    );
    let ts = |k: &str| data.get(k).and_then(Value::as_str).unwrap().to_owned();
    assert!(ts("first_ts") <= ts("last_ts"));
    assert!(ts("last_ts").as_str() <= gap.get("ts").and_then(Value::as_str).unwrap());
    // and the agent pruned receipted entries to stay within its budget
    let (_, o) = baton_agent::cli::open(&adir).unwrap();
    assert!(o.head.oldest > Seq(1));
    assert!(o.head.held_bytes <= 256 * 1024);
    gw.stop().await;
}

#[test]
fn a_full_disk_fails_appends_clearly_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    agent_key(dir.path());
    let socket = dir.path().join("agent.sock");
    // The file-size limit is a real write failure (EFBIG) from the kernel,
    // for the ledger file only; SIGXFSZ is ignored so the write just fails.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=3000000:unlimited -- \"$0\" run --id pi-f --cluster c1 --data-dir \"$1\"")
        .arg(baton_tests::bins::agent())
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut s = connect(&socket);
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut ask = |line: &[u8]| -> Result<(u64, String), String> {
        s.write_all(line).unwrap();
        s.write_all(b"\n").unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        baton_agent::socket::client::parse_answer(&answer)
    };
    let mut acked = Vec::new();
    let mut failures = 0;
    let mut i = 0;
    while failures < 5 {
        let line = &sample_lines(i, 1)[0];
        i += 1;
        match ask(line) {
            Ok(x) => {
                assert_eq!(failures, 0, "no append succeeds while the disk is full");
                acked.push(x);
            }
            Err(e) => {
                assert!(e.starts_with("ledger: "), "{e}");
                failures += 1;
            }
        }
        assert!(i < 100_000, "the file never filled");
    }
    assert!(acked.len() > 1000);
    // alive, and saying so in status.json (rewritten every second)
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    let mut status = String::new();
    for _ in 0..100 {
        status = std::fs::read_to_string(dir.path().join("status.json")).unwrap_or_default();
        if status.contains("\"state\":\"error\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        status.contains("\"state\":\"error\"") && status.contains("File too large"),
        "{status}"
    );
    // Space returns: lift the limit of the running process.
    let lifted = Command::new("prlimit")
        .args([
            "--fsize=unlimited:unlimited",
            "--pid",
            &child.id().to_string(),
        ])
        .status()
        .unwrap();
    assert!(lifted.success());
    let mut resumed = None;
    for _ in 0..200 {
        match ask(&sample_lines(i, 1)[0]) {
            Ok(x) => {
                resumed = Some(x);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let resumed = resumed.expect("appends resume once space returns");
    assert_eq!(
        resumed.0,
        acked.last().unwrap().0 + 1,
        "nothing half-written in between"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let chain = stored(dir.path());
    for (seq, hash) in acked.iter().chain(std::iter::once(&resumed)) {
        assert_eq!(chain.get(seq), Some(hash));
    }
}
