//! SIGKILL of the real gateway process during sustained ingest, restarted
//! over and over: no receipted entry may be lost, the stored chains must
//! verify, and what is stored must equal what the agents hold. Once with the
//! embedded broker (which dies with the gateway), once with Mosquitto
//! (which stays up while the gateway dies).
//!
//! `BATON_KILL_ROUNDS` sets the number of kills (default 20).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_gateway::publisher::{Feed, Options, publish};
use baton_gateway::store::Store;
use baton_shared::memory::MemLedger;
use baton_shared::uplink::Ledger;
use baton_shared::verify::{Verdict, Verifier};
use baton_shared::{AgentId, PublicKey, Seq};
use baton_tests::daemons::{Via, free_port, spawn_gateway, wait_listening};

fn ledger(name: &str, seed: u8, n: u64) -> MemLedger {
    baton_tests::ledger(name, seed, n, 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_no_receipted_entry_embedded_broker() {
    let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    kill_rounds(Via::Embedded(mqtt)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_no_receipted_entry_mosquitto() {
    let Some(m) = baton_tests::mosquitto::Mosquitto::start() else {
        return;
    };
    kill_rounds(Via::External(m.addr)).await;
}

async fn kill_rounds(via: Via) {
    let rounds: usize = std::env::var("BATON_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(baton_tests::bins::gateway())
        .args(["keygen", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(status.status.success());
    let gw_key = PublicKey::trusted_hex(String::from_utf8(status.stdout).unwrap().trim()).unwrap();
    let agents: Vec<MemLedger> = (0..4)
        .map(|i| ledger(&format!("pi-{i}"), i as u8 + 1, 10))
        .collect();
    std::fs::create_dir_all(dir.path().join("agents")).unwrap();
    for l in &agents {
        std::fs::write(
            dir.path().join("agents").join(format!("{}.pub", l.agent())),
            l.key().public().to_hex(),
        )
        .unwrap();
    }
    let mqtt = via.broker();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Arc::new(Mutex::new(spawn_gateway(dir.path(), via, http)));
    wait_listening(http);

    // The agents append live (one entry every 2 ms each) for longer than
    // the kills take, so every kill lands in sustained ingest.
    let unfinished = Arc::new(std::sync::atomic::AtomicUsize::new(agents.len()));
    let mut tasks = Vec::new();
    for l in agents {
        let unfinished = Arc::clone(&unfinished);
        let feed = Feed {
            entries: 3000 + 200 * rounds as u64,
            every: Duration::from_millis(2),
        };
        tasks.push(tokio::spawn(async move {
            let r = publish(
                mqtt,
                "c1",
                l,
                gw_key,
                Options {
                    feed: Some(feed),
                    ..Options::default()
                },
                Duration::from_secs(300),
            )
            .await;
            unfinished.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            r
        }));
    }

    // The killer: SIGKILL at random moments, restart at once.
    let killer_child = Arc::clone(&child);
    let data_dir = dir.path().to_owned();
    let busy = Arc::clone(&unfinished);
    let killer = tokio::task::spawn_blocking(move || {
        let mut rng = baton_shared::backoff::SplitMix64::new(7);
        let mut during_ingest = 0;
        for _ in 0..rounds {
            std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
            if busy.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                during_ingest += 1;
            }
            let mut c = killer_child.lock().unwrap();
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
            *c = spawn_gateway(&data_dir, via, http);
            drop(c);
            wait_listening(http);
        }
        during_ingest
    });
    let during_ingest = killer.await.unwrap();
    assert_eq!(
        during_ingest, rounds,
        "every kill must hit sustained ingest"
    );
    let mut published = Vec::new();
    for t in tasks {
        published.push(t.await.unwrap().unwrap());
    }

    // Stop the gateway and read its store directly.
    {
        let mut c = child.lock().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let store = Store::open(&dir.path().join("gateway.redb")).unwrap();
    for p in &published {
        let agent = p.ledger.agent();
        assert!(p.alerts.is_empty(), "{agent}: {:?}", p.alerts);
        assert_eq!(
            p.receipted,
            p.ledger.head(),
            "{agent}: everything receipted"
        );
        let stored = store.range(agent, Seq(1), 100_000).unwrap();
        assert_eq!(
            stored.len() as u64,
            p.ledger.head().0,
            "{agent}: nothing lost, nothing twice"
        );
        let mut v = Verifier::new(Some(p.ledger.key().public()));
        for ((seq, e), mine) in stored.iter().zip(p.ledger.held()) {
            assert_eq!(e.hash, mine.hash, "{agent}: entry {seq} differs");
            v.push_line(e.to_jsonl().as_bytes()).unwrap();
        }
        assert!(matches!(v.finish(), Verdict::Valid(_)));
    }
    // The gateway's own chain survived every kill and verifies.
    let own = store
        .range(&AgentId::new("gw-kill").unwrap(), Seq(1), 100_000)
        .unwrap();
    let mut v = Verifier::new(Some(gw_key));
    for (_, e) in &own {
        v.push_line(e.to_jsonl().as_bytes()).unwrap();
    }
    assert!(matches!(v.finish(), Verdict::Valid(_)));

    // The CLI on the stopped gateway: its exports equal the agents' chains
    // byte for byte and verify; `verify` agrees.
    drop(store);
    let bin = baton_tests::bins::gateway();
    let out = Command::new(&bin)
        .arg("verify")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        report.lines().filter(|l| l.contains(": valid: ")).count(),
        published.len() + 1,
        "{report}"
    );
    let p = &published[0];
    let agent = p.ledger.agent().to_string();
    let export = |format: &str, out: &Path| {
        let st = Command::new(&bin)
            .args([
                "export",
                "--agent",
                &agent,
                "--format",
                format,
                "--data-dir",
            ])
            .arg(dir.path())
            .arg("--out")
            .arg(out)
            .status()
            .unwrap();
        assert!(st.success(), "export --format {format}");
    };
    let jsonl = dir.path().join("export.jsonl");
    export("jsonl", &jsonl);
    let expected: String = p.ledger.held().map(|e| e.to_jsonl() + "\n").collect();
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap(), expected);
    let daily = dir.path().join("daily");
    export("daily", &daily);
    let files: Vec<Vec<u8>> = std::fs::read_dir(daily.join(&agent))
        .unwrap()
        .map(|f| std::fs::read(f.unwrap().path()).unwrap())
        .collect();
    let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let merged = baton_shared::export::merge_daily(&refs)
        .unwrap()
        .join(&b'\n');
    let Verdict::Valid(s) =
        baton_shared::verify::verify_text(&merged, Some(p.ledger.key().public()))
    else {
        panic!("daily export does not verify")
    };
    assert_eq!(s.head_seq, p.ledger.head());
    let baton = dir.path().join("baton.json");
    export("baton", &baton);
    let doc = std::fs::read(&baton).unwrap();
    let loaded = baton_shared::export::load_baton(
        &doc,
        baton_shared::export::BatonTrust::Key(&p.ledger.key().public()),
    )
    .unwrap();
    assert_eq!(loaded.summary.head_seq, p.ledger.head());
    assert!(!loaded.truncated);
}
