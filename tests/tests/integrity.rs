//! Integrity at rest on the gateway (issue 15, finding 6): a stored chain
//! altered on disk is found at the next start, set aside from the first bad
//! entry — never served, never exported — and rebuilt from the agent's
//! resends, with the gateway in alert until it is.

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

/// Finding 7 on the gateway: a store redb cannot open (or panics opening)
/// is named as damaged and the process exits 65, which the unit does not
/// restart (`RestartPreventExitStatus=65`): no crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_redb_cannot_open_is_refused_as_damage_without_a_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-h"));
    let key = agent_key(&adir);
    let agents = [(AgentId::new("pi-h").unwrap(), key)];
    let gw = Gateway::start(&gdir, &agents, None, "127.0.0.1:0".parse().unwrap()).await;
    gw.stop().await;
    let path = gdir.join("gateway.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[..64] {
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
}
