//! Faults of the agent's own storage, injected for real: SIGKILL of the
//! agent process during sustained appends, flipped bytes and truncation of
//! the ledger file, and the ledger replaced by an older copy of itself (a
//! restored SD card image).
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
use baton_tests::eventually;

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

/// Appends `n` entries whose data carries `marker-<i>`.
async fn append_marked(a: &Agent, from: u64, n: u64) {
    let lines: Vec<Vec<u8>> = (from..from + n)
        .map(|i| {
            format!("{{\"event\":\"reading\",\"data\":{{\"m\":\"marker-{i:06}\"}}}}").into_bytes()
        })
        .collect();
    let answers = baton_agent::socket::client::send_lines(&a.ready.socket, lines)
        .await
        .unwrap();
    assert!(answers.iter().all(Result::is_ok));
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

enum Damage {
    FlipByte,
    Truncate,
}

async fn damaged_ledger_is_rebuilt_from_the_gateway(damage: Damage) {
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
    append_marked(&a, 0, 500).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == 501).await);
    a.stop().await;
    // 100 more offline: never receipted, so start-up checks them
    let a = Agent::start("pi-d", &adir, None, None).await;
    append_marked(&a, 500, 100).await;
    a.stop().await;

    let path = adir.join("ledger.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    match damage {
        Damage::FlipByte => {
            let at = bytes
                .windows(13)
                .position(|w| w == b"marker-000550")
                .expect("entry 552's data is in the file");
            bytes[at + 12] ^= 0x01; // "marker-000551": same length, other hash
        }
        Damage::Truncate => bytes.truncate(bytes.len() * 3 / 5),
    }
    std::fs::write(&path, &bytes).unwrap();

    // Start: detected, kept aside, rebuilt through the gateway; no panic.
    let a = Agent::start("pi-d", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    let doc = a
        .ready
        .shared
        .document("pi-d", &a.ready.writer.head(), true, 0);
    let alert = doc.as_object().unwrap().get("alert").unwrap().clone();
    assert!(
        alert.as_str().is_some_and(|s| s.contains("damaged")),
        "{alert:?}"
    );
    let aside: Vec<_> = std::fs::read_dir(&adir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside");
    // rebuilt: recovery at 502 on the gateway's head, then the alert entry
    assert!(
        eventually(Duration::from_secs(30), || a.head() >= 503
            && a.receipted() == a.head())
        .await,
        "head {} receipted {}",
        a.head(),
        a.receipted()
    );
    append_marked(&a, 1000, 10).await;
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
    let recovery = text.lines().nth(501).unwrap();
    assert!(
        recovery.contains("\"recovery\"") && recovery.contains("local_corruption"),
        "{recovery}"
    );
    assert!(text.lines().nth(502).unwrap().contains("\"alert\""));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_detected_and_the_ledger_rebuilt() {
    damaged_ledger_is_rebuilt_from_the_gateway(Damage::FlipByte).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_ledger_is_detected_and_rebuilt() {
    damaged_ledger_is_rebuilt_from_the_gateway(Damage::Truncate).await;
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
    append_marked(&a, 0, 200).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == 201).await);
    a.stop().await;
    let image = std::fs::read(adir.join("ledger.redb")).unwrap();
    let a = Agent::start("pi-r", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    append_marked(&a, 200, 300).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == 501).await);
    a.stop().await;
    // the SD card is restored from the old image; the device appends offline
    std::fs::write(adir.join("ledger.redb"), &image).unwrap();
    let a = Agent::start("pi-r", &adir, None, None).await;
    assert_eq!(a.head(), 201);
    append_marked(&a, 7000, 20).await;
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
