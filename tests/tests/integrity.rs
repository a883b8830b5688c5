//! Integrity at rest on the gateway (issue 15, finding 6): a stored chain
//! altered on disk is found at the next start, set aside from the first bad
//! entry — never served, never exported — and rebuilt from the agent's
//! resends, with the gateway in alert until it is; a store file redb
//! cannot open is rebuilt from the own chain salvaged from it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use baton_shared::AgentId;
use baton_shared::verify::verify_text;
use baton_tests::daemons::{Agent, Gateway, agent_key};
use baton_tests::{eventually, flip_marker};

fn get(gw: &Gateway, path: &str) -> (u16, String) {
    baton_tests::http::get(gw.bound.http, path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_stored_entry_is_set_aside_never_served_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-g"));
    let key = agent_key(&adir);
    let agents = [(AgentId::new("pi-g").unwrap(), key)];
    let gw = Gateway::start(&gdir, &agents, None, "127.0.0.1:0".parse().unwrap()).await;
    let a = Agent::start("pi-g", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    a.append_marked(0, 300).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == 301).await);
    a.stop().await;
    gw.stop().await;

    // entry 152 altered in the gateway's store
    flip_marker(&gdir.join("gateway.redb"), 150);
    let gw = Gateway::start(&gdir, &agents, None, "127.0.0.1:0".parse().unwrap()).await;
    let (status, body) = get(&gw, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("pi-g: from seq 152 to 301"), "{body}");
    let (_, metrics) = get(&gw, "/metrics");
    assert!(
        metrics.contains("baton_store_damaged_chains 1"),
        "{metrics}"
    );
    // served and exported: the verified part only, never the altered entry
    let (status, text) = get(&gw, "/api/v1/agents/pi-g/entries?limit=10000");
    assert_eq!(status, 200);
    assert_eq!(text.lines().count(), 151);
    assert!(!text.contains("marker-000151\"}") || !text.contains("\"seq\":152"));
    assert!(verify_text(text.as_bytes(), Some(key)).is_valid());
    let (status, export) = get(&gw, "/api/v1/agents/pi-g/export?format=jsonl");
    assert_eq!(status, 200);
    assert_eq!(export.lines().count(), 151);

    // the agent comes back and resends: rebuilt, alert over
    let a = Agent::start("pi-g", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    assert!(
        eventually(Duration::from_secs(30), || get(&gw, "/healthz").0 == 200).await,
        "{}",
        get(&gw, "/healthz").1
    );
    a.stop().await;
    let (_, text) = get(&gw, "/api/v1/agents/pi-g/entries?limit=10000");
    assert!(text.lines().count() >= 301);
    assert!(verify_text(text.as_bytes(), Some(key)).is_valid());
    assert!(text.contains("marker-000150"));
    // the gateway's own chain says what happened
    let (_, own) = get(&gw, "/api/v1/agents/gw-e2e/entries?limit=10000");
    assert!(
        own.lines()
            .any(|l| l.contains("local_corruption") && l.contains("damaged at seq 152")),
        "{own}"
    );
    gw.stop().await;
}

/// Copies an agent's data directory: the SD card cloned to a second device.
fn clone_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap().filter_map(Result::ok) {
        let name = f.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".sock") || name.ends_with(".lock") {
            continue;
        }
        std::fs::copy(f.path(), to.join(&*name)).unwrap();
    }
}

/// Finding 9: two devices with one identity made dozens of `recovery`
/// entries a minute, adopting each other's heads, with the agent shown
/// active. Now the third recovery within ten minutes halts the agent as
/// a cloned identity, with the recoveries as evidence and an alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_identity_is_detected_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir, bdir) = (
        dir.path().join("gw"),
        dir.path().join("a"),
        dir.path().join("b"),
    );
    let key = agent_key(&adir);
    let agents = [(AgentId::new("pi-c").unwrap(), key)];
    let gw = Gateway::start(&gdir, &agents, None, "127.0.0.1:0".parse().unwrap()).await;
    let a = Agent::start("pi-c", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    a.append_marked(0, 20).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == 21).await);
    a.stop().await;
    clone_dir(&adir, &bdir);
    let a = Agent::start("pi-c", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    let b = Agent::start("pi-c", &bdir, Some(gw.mqtt()), Some(gw.key)).await;
    let own_alert = || {
        let (_, own) = get(&gw, "/api/v1/agents/gw-e2e/entries?limit=10000");
        own.lines().any(|l| l.contains("cloned_identity"))
    };
    let mut n = 100;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !own_alert() && std::time::Instant::now() < deadline {
        // both devices keep writing as pi-c
        for d in [&a, &b] {
            let line = format!("{{\"event\":\"reading\",\"data\":{{\"m\":\"marker-{n:06}\"}}}}");
            let _ =
                baton_agent::socket::client::send_lines(&d.ready.socket, vec![line.into_bytes()])
                    .await;
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(own_alert(), "no cloned_identity alert within 60 s");
    assert!(
        eventually(Duration::from_secs(10), || get(&gw, "/api/v1/agents/pi-c")
            .1
            .contains("\"state\":\"quarantined\""))
        .await,
        "{}",
        get(&gw, "/api/v1/agents/pi-c").1
    );
    // halted: what either device sends now is refused, the chain stays
    let (_, before) = get(&gw, "/api/v1/agents/pi-c/entries?limit=100000");
    for d in [&a, &b] {
        d.append_marked(9000, 5).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, after) = get(&gw, "/api/v1/agents/pi-c/entries?limit=100000");
    assert_eq!(before.lines().count(), after.lines().count());
    assert!(verify_text(after.as_bytes(), Some(key)).is_valid());
    a.stop().await;
    b.stop().await;
    gw.stop().await;
}

/// Finding 7 on the gateway, the file as a whole: a store redb cannot
/// open used to be refused (exit 65) and its operator enrollments were
/// lost with it. Now it is set aside and rebuilt from the gateway's own
/// chain salvaged from it: the operator's enrollment comes back, the
/// gateway is in alert until the agent's resends rebuild its chain, and
/// what the agent had already pruned is named in a `gap` (rule 3b).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_redb_cannot_open_is_rebuilt_and_what_is_gone_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-h"));
    let key = agent_key(&adir);
    // enrolled by the operator, not by a key file: only the store knew
    let gw = Gateway::start(&gdir, &[], None, "127.0.0.1:0".parse().unwrap()).await;
    let body = format!(r#"{{"agent":"pi-h","public_key":"{}"}}"#, key.to_hex());
    let (status, answer) =
        baton_tests::http::post(gw.bound.http, "/api/v1/enroll", body.as_bytes()).unwrap();
    assert_eq!(status, 200, "{answer}");
    // a small budget: the agent prunes what the gateway receipted
    let budget = || baton_agent::RawConfig {
        budget: Some("256KiB".into()),
        ..Default::default()
    };
    let a = Agent::start_with("pi-h", &adir, Some(gw.mqtt()), Some(gw.key), budget()).await;
    for round in 0..10 {
        // in rounds the budget holds: it refuses what is not receipted yet
        a.append_marked(round * 200, 200).await;
        let head = a.head();
        assert!(eventually(Duration::from_secs(30), || a.receipted() == head).await);
    }
    let head = a.head();
    a.stop().await;
    let checkpointed = "\"agent\":\"pi-h\",\"hash\"";
    let at_head = format!("\"seq\":{head}");
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, own) = get(&gw, "/api/v1/agents/gw-e2e/entries?limit=10000");
            own.lines()
                .any(|l| l.contains(checkpointed) && l.contains(&at_head))
        })
        .await,
        "no checkpoint of pi-h at {head}"
    );
    gw.stop().await;
    let oldest = baton_agent::cli::open(&adir).unwrap().1.head.oldest.0;
    assert!(oldest > 1, "the agent pruned nothing");

    // redb's header destroyed: the file cannot be opened
    let path = gdir.join("gateway.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[..64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let gw = Gateway::start(&gdir, &[], None, "127.0.0.1:0".parse().unwrap()).await;
    let aside: Vec<_> = std::fs::read_dir(&gdir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|f| {
            f.file_name()
                .to_string_lossy()
                .starts_with("gateway.redb.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside");
    let (status, body) = get(&gw, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("pi-h: from seq 1 to {head}")),
        "{body}"
    );
    let (_, own) = get(&gw, "/api/v1/agents/gw-e2e/entries?limit=10000");
    assert!(
        own.lines()
            .any(|l| l.contains("local_corruption") && l.contains("rebuilt: own chain")),
        "{own}"
    );
    assert!(verify_text(own.as_bytes(), Some(gw.key)).is_valid());
    let (status, agents) = get(&gw, "/api/v1/agents");
    assert_eq!(status, 200);
    assert!(
        agents.contains("pi-h"),
        "the operator's enrollment came back: {agents}"
    );

    // the agent resends what it holds; what it pruned is a gap
    let a = Agent::start_with("pi-h", &adir, Some(gw.mqtt()), Some(gw.key), budget()).await;
    assert!(
        eventually(Duration::from_secs(60), || get(&gw, "/healthz").0 == 200).await,
        "{}",
        get(&gw, "/healthz").1
    );
    a.stop().await;
    let (_, own) = get(&gw, "/api/v1/agents/gw-e2e/entries?limit=10000");
    let gap = format!(
        "\"data\":{{\"agent\":\"pi-h\",\"from\":1,\"reason\":\"gateway_data_loss\",\"to\":{}}}",
        oldest - 1
    );
    assert!(own.lines().any(|l| l.contains(&gap)), "no {gap} in {own}");
    let (_, text) = get(&gw, "/api/v1/agents/pi-h/entries?limit=10000");
    assert_eq!(text.lines().count() as u64, head - oldest + 1);
    assert!(text.contains("marker-001999"));
    gw.stop().await;
}

/// With nothing of its own chain recoverable (every byte of the file
/// damaged) there is no rebuild — a new genesis would fork the chain its
/// parent holds: the gateway names the damage and exits 65, which the unit
/// does not restart (`RestartPreventExitStatus=65`), and leaves the file
/// where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_nothing_to_rebuild_from_is_refused_without_a_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-h"));
    let key = agent_key(&adir);
    let agents = [(AgentId::new("pi-h").unwrap(), key)];
    let gw = Gateway::start(&gdir, &agents, None, "127.0.0.1:0".parse().unwrap()).await;
    gw.stop().await;
    let path = gdir.join("gateway.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let http = format!("127.0.0.1:{}", baton_tests::daemons::free_port())
        .parse()
        .unwrap();
    let mqtt = format!("127.0.0.1:{}", baton_tests::daemons::free_port())
        .parse()
        .unwrap();
    let mut child =
        baton_tests::daemons::spawn_gateway(&gdir, baton_tests::daemons::Via::Embedded(mqtt), http);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(gdir.join("gateway.log")).unwrap();
    assert_eq!(status.code(), Some(65), "{log}");
    assert!(log.contains("is damaged"), "{log}");
    assert!(log.contains("no rebuild"), "{log}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file stays as it was"
    );
}
