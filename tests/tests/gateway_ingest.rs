//! The gateway over real MQTT (the embedded broker), with test publishers
//! built from baton-shared: real clients, real redb files.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use baton_gateway::publisher::publish_all;
use baton_shared::memory::MemLedger;
use baton_shared::verify::{Verdict, verify_text};
use baton_shared::wire::{MQTT_MAX_PACKET, Message};
use baton_shared::{SecretKey, Seq};
use baton_tests::daemons::Gateway;
use baton_tests::http;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

async fn start_gateway(dir: &Path, agents: &[&MemLedger]) -> Gateway {
    start_gateway_with(dir, agents, None).await
}

/// With `external`, the gateway uses that broker instead of its own.
async fn start_gateway_with(
    dir: &Path,
    agents: &[&MemLedger],
    external: Option<SocketAddr>,
) -> Gateway {
    let keys: Vec<_> = agents
        .iter()
        .map(|l| (l.agent().clone(), l.key().public()))
        .collect();
    Gateway::start(dir, &keys, external, "127.0.0.1:0".parse().unwrap()).await
}

fn ledger(name: &str, seed: u8, n: u64) -> MemLedger {
    baton_tests::ledger(name, seed, n, 16)
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_agents_are_verified_stored_and_receipted() {
    many_agents(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_agents_are_verified_stored_and_receipted_through_mosquitto() {
    let Some(m) = baton_tests::mosquitto::Mosquitto::start() else {
        return;
    };
    many_agents(Some(m.addr)).await;
}

async fn many_agents(external: Option<SocketAddr>) {
    let dir = tempfile::tempdir().unwrap();
    let ledgers: Vec<MemLedger> = (0..6)
        .map(|i| ledger(&format!("pi-{i}"), i as u8 + 1, 300))
        .collect();
    let gw = start_gateway_with(dir.path(), &ledgers.iter().collect::<Vec<_>>(), external).await;
    // a live watcher of one agent, opened before anything arrives
    let http_addr = gw.bound.http;
    let watcher = std::thread::spawn(move || {
        let mut s = http::EventStream::open(http_addr, "/api/v1/watch?agent=pi-2").unwrap();
        (0..301)
            .map(|_| s.next_data().unwrap())
            .collect::<Vec<String>>()
    });
    // the stream is subscribed once the response headers are out
    std::thread::sleep(Duration::from_millis(200));
    let mut tasks = Vec::new();
    for l in ledgers {
        tasks.push(tokio::spawn(publish_all(
            gw.mqtt(),
            "c1",
            l,
            gw.key,
            Duration::from_secs(60),
        )));
    }
    let mut published = Vec::new();
    for t in tasks {
        let p = t.await.unwrap().unwrap();
        assert!(p.alerts.is_empty(), "{:?}", p.alerts);
        assert_eq!(p.receipted, Seq(301));
        published.push(p);
    }
    // what the gateway serves is the agents' chains byte for byte, and verifies
    for p in &published {
        let agent = p.ledger.agent();
        let (status, body) = http::get(
            gw.bound.http,
            &format!("/api/v1/agents/{agent}/entries?limit=10000"),
        )
        .unwrap();
        assert_eq!(status, 200);
        let expected: String = p.ledger.held().map(|e| e.to_jsonl() + "\n").collect();
        assert_eq!(body, expected, "{agent}");
        assert!(matches!(
            verify_text(body.as_bytes(), Some(p.ledger.key().public())),
            Verdict::Valid(_)
        ));
    }
    let (_, metrics) = http::get(gw.bound.http, "/metrics").unwrap();
    assert_eq!(
        metric(&metrics, "baton_entries_accepted_total"),
        6.0 * 301.0
    );

    // the watcher saw pi-2's entries, in order, and nobody else's
    let seen = watcher.join().unwrap();
    let pi2 = published
        .iter()
        .find(|p| p.ledger.agent().as_str() == "pi-2")
        .unwrap();
    let expected: Vec<String> = pi2.ledger.held().map(|e| e.to_jsonl()).collect();
    assert_eq!(seen, expected);

    // a baton export verifies under the agent's key and loads back
    let (status, doc) =
        http::get(gw.bound.http, "/api/v1/agents/pi-2/export?format=baton").unwrap();
    assert_eq!(status, 200, "{doc}");
    let loaded = baton_shared::export::load_baton(
        doc.as_bytes(),
        baton_shared::export::BatonTrust::Key(&pi2.ledger.key().public()),
    )
    .unwrap();
    assert_eq!(
        loaded.entries,
        pi2.ledger.held().cloned().collect::<Vec<_>>()
    );
    let receipt = loaded.receipt.unwrap();
    assert!(gw.key.verify_receipt(
        &receipt.gateway,
        pi2.ledger.agent(),
        receipt.point.seq,
        &receipt.point.hash,
        &receipt.point.sig
    ));
    let (status, body) = http::post(gw.bound.http, "/api/v1/load", doc.as_bytes()).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"authenticated\":true") && body.contains("\"last_seq\":301"),
        "{body}"
    );
    // its own export is recognised, entry for entry, and adds nothing
    assert!(
        body.contains("\"stored\":{\"already_held\":301,\"stored\":0}"),
        "{body}"
    );
    // one changed value and the whole document is refused, with the reason
    let tampered = doc.replacen("\"i\":7,", "\"i\":8,", 1);
    assert_ne!(tampered, doc);
    let (status, body) = http::post(gw.bound.http, "/api/v1/load", tampered.as_bytes()).unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("baton refused"), "{body}");
    let (status, agents) = http::get(gw.bound.http, "/api/v1/agents").unwrap();
    assert_eq!(status, 200);
    assert!(
        agents.contains("\"id\":\"pi-5\"") && agents.contains("\"head_seq\":301"),
        "{agents}"
    );
    let (status, body) = http::get(gw.bound.http, "/api/v1/agents/nobody/entries").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("unknown agent nobody"), "{body}");
    gw.stop().await;
}

/// A raw MQTT client with a valid id, for publishing arbitrary bytes.
async fn raw_client(broker: SocketAddr, id: &str) -> AsyncClient {
    let mut opts = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    opts.set_credentials(id, "");
    opts.set_max_packet_size(MQTT_MAX_PACKET * 2, MQTT_MAX_PACKET * 2);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(ev) = eventloop.poll().await {
            if let (Event::Incoming(Packet::ConnAck(_)), Some(tx)) = (ev, tx.take()) {
                let _ = tx.send(());
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    client
}

/// Ingest must survive whatever a broker delivers, including a broker
/// that checks nobody (`broker_auth = "none"`, or an external broker with
/// a loose ACL): the embedded broker's own ACL would drop most of these
/// before ingest sees them (tests/tests/authority.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_counted_and_never_stops_other_agents() {
    let dir = tempfile::tempdir().unwrap();
    let good = ledger("pi-good", 1, 100);
    let victim = ledger("pi-victim", 2, 10);
    let keys: Vec<_> = [&good, &victim]
        .iter()
        .map(|l| (l.agent().clone(), l.key().public()))
        .collect();
    let gw = Gateway::start_open(dir.path(), &keys).await;
    let bad = raw_client(gw.mqtt(), "mallory").await;
    let t = |agent: &str, kind: &str| format!("baton/v1/c1/{agent}/{kind}");
    // garbage, wrong version, oversized, another agent's batch on a topic
    bad.publish(
        t("pi-victim", "entries"),
        QoS::AtLeastOnce,
        false,
        b"\x01\xff\xfe".to_vec(),
    )
    .await
    .unwrap();
    let mut v2 = victim.batch(Seq(1), Seq(11), None).encode();
    v2[0] = 9;
    bad.publish(t("pi-victim", "entries"), QoS::AtLeastOnce, false, v2)
        .await
        .unwrap();
    bad.publish(
        t("pi-victim", "entries"),
        QoS::AtLeastOnce,
        false,
        vec![1u8; 290 * 1024],
    )
    .await
    .unwrap();
    let mut v = victim.clone();
    v.sign_head();
    bad.publish(
        t("pi-good", "entries"),
        QoS::AtLeastOnce,
        false,
        v.batch(Seq(1), Seq(11), None).encode(),
    )
    .await
    .unwrap();
    // an unknown agent, and a forged signature over the victim's entries
    let stranger = {
        let mut s = ledger("pi-stranger", 3, 3);
        s.sign_head();
        s
    };
    bad.publish(
        t("pi-stranger", "entries"),
        QoS::AtLeastOnce,
        false,
        stranger.batch(Seq(1), Seq(4), None).encode(),
    )
    .await
    .unwrap();
    let mut forged = v.batch(Seq(1), Seq(11), None);
    let last = forged.entries.last_mut().unwrap();
    last.sig =
        Some(SecretKey::from_seed(&[66; 32]).sign_checkpoint(victim.agent(), Seq(11), &last.hash));
    bad.publish(
        t("pi-victim", "entries"),
        QoS::AtLeastOnce,
        false,
        forged.encode(),
    )
    .await
    .unwrap();

    // the genuine agent is served all the while
    let p = publish_all(gw.mqtt(), "c1", good, gw.key, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(p.receipted, Seq(101));
    let counted = baton_tests::eventually(Duration::from_secs(10), || {
        let (_, m) = http::get(gw.bound.http, "/metrics").unwrap();
        [
            "baton_bad_input_total{kind=\"undecodable\"}",
            "baton_bad_input_total{kind=\"version\"}",
            "baton_bad_input_total{kind=\"too_large\"}",
            "baton_bad_input_total{kind=\"agent_mismatch\"}",
            "baton_bad_input_total{kind=\"unknown_agent\"}",
            "baton_batches_rejected_total{reason=\"bad_signature\"}",
        ]
        .iter()
        .all(|name| metric(&m, name) >= 1.0)
    })
    .await;
    let (_, m) = http::get(gw.bound.http, "/metrics").unwrap();
    assert!(counted, "not every kind of bad input was counted:\n{m}");
    // nothing of the victim was stored from the forgeries
    let (_, body) = http::get(gw.bound.http, "/api/v1/agents/pi-victim/entries").unwrap();
    assert!(body.is_empty(), "{body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_an_invalid_id_reconnecting_in_a_loop_does_not_lock_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let good = ledger("pi-1", 1, 20);
    let gw = start_gateway(dir.path(), &[&good]).await;
    // rumqttd 0.20: a refused id with `+ $ # /` reconnecting in a loop could
    // stop the listener; the auth hook refuses such ids first.
    let broker = gw.mqtt();
    let hammer = tokio::spawn(async move {
        for _ in 0..50 {
            let mut opts = MqttOptions::new("bad/id+#", broker.ip().to_string(), broker.port());
            opts.set_credentials("x", "");
            let (_c, mut el) = AsyncClient::new(opts, 8);
            let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
        }
    });
    let p = publish_all(gw.mqtt(), "c1", good, gw.key, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(p.receipted, Seq(21));
    hammer.await.unwrap();
    // and after the hammering, a new agent still connects
    let late = ledger("pi-1", 1, 25);
    let p = publish_all(gw.mqtt(), "c1", late, gw.key, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(p.receipted, Seq(26));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_gateway_enrolls_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(dir.path(), &[]).await;
    let l = ledger("pi-new", 7, 30);
    // unknown: refused
    let refused = publish_all(gw.mqtt(), "c1", l.clone(), gw.key, Duration::from_secs(3)).await;
    assert!(refused.is_err());
    let body = format!(
        "{{\"agent\":\"pi-new\",\"public_key\":\"{}\"}}",
        l.key().public().to_hex()
    );
    let (status, answer) = http::post(gw.bound.http, "/api/v1/enroll", body.as_bytes()).unwrap();
    assert_eq!(status, 200, "{answer}");
    let p = publish_all(gw.mqtt(), "c1", l, gw.key, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(p.receipted, Seq(31));
    // another key for the same id is a conflict
    let other = SecretKey::from_seed(&[99; 32]).public().to_hex();
    let body = format!("{{\"agent\":\"pi-new\",\"public_key\":\"{other}\"}}");
    let (status, answer) = http::post(gw.bound.http, "/api/v1/enroll", body.as_bytes()).unwrap();
    assert_eq!(status, 409, "{answer}");
    // bad requests say what was wrong
    let (status, answer) =
        http::post(gw.bound.http, "/api/v1/enroll", b"{\"agent\":\"Pi/1\"}").unwrap();
    assert_eq!(status, 400);
    assert!(answer.contains("position 0"), "{answer}");
    // a window lets the first key of a new agent in
    let (status, answer) =
        http::post(gw.bound.http, "/api/v1/enroll", b"{\"window\":\"5m\"}").unwrap();
    assert_eq!(status, 200, "{answer}");
    let tofu = ledger("pi-tofu", 8, 10);
    let p = publish_all(gw.mqtt(), "c1", tofu, gw.key, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(p.receipted, Seq(11));
    let (_, agents) = http::get(gw.bound.http, "/api/v1/agents").unwrap();
    assert!(
        agents.contains("\"id\":\"pi-tofu\"") && agents.contains("\"enrolled_by\":\"first-use\""),
        "{agents}"
    );
    gw.stop().await;
}

/// A baton of `l`'s held entries from seq `from` (its newest entry signed).
fn baton_of(l: &MemLedger, from: u64) -> String {
    use baton_shared::export::{BatonDoc, SignedPoint};
    let entries: Vec<_> = l
        .held()
        .skip(usize::try_from(from - 1).unwrap())
        .cloned()
        .collect();
    let last = entries.last().unwrap();
    let doc = BatonDoc {
        agent: l.agent().clone(),
        public_key: l.key().public().to_hex(),
        context: None,
        exported_at: "2026-11-23T00:00:00.000Z".into(),
        head: Some(SignedPoint {
            seq: l.head_seq(),
            hash: last.hash,
            sig: last.sig.unwrap(),
        }),
        entries,
        receipt: None,
        notes: Vec::new(),
    };
    String::from_utf8(doc.to_json()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_baton_is_stored_through_the_intake_or_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = ledger("pi-load", 40, 300);
    l.sign_head();
    let gw = start_gateway(dir.path(), &[&l]).await;
    let http_addr = gw.bound.http;
    // 1..=301, never sent over MQTT: stored from the baton
    let (status, body) = http::post(http_addr, "/api/v1/load", baton_of(&l, 1).as_bytes()).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"stored\":{\"already_held\":0,\"stored\":301}"),
        "{body}"
    );
    let (_, stored) = http::get(http_addr, "/api/v1/agents/pi-load/entries?limit=1000").unwrap();
    let own: String = l.held().map(|e| e.to_jsonl() + "\n").collect();
    assert_eq!(stored, own, "stored byte for byte");
    // again: all held, nothing new
    let (status, body) = http::post(http_addr, "/api/v1/load", baton_of(&l, 1).as_bytes()).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"stored\":{\"already_held\":301,\"stored\":0}"),
        "{body}"
    );
    // a continuation from 302: only the new part
    let mut more = l.clone();
    for i in 0..50 {
        more.append(
            1_795_460_800_000 + i,
            "info",
            None,
            baton_shared::json::Value::from(i as u64),
        )
        .unwrap();
    }
    more.sign_head();
    let (status, body) =
        http::post(http_addr, "/api/v1/load", baton_of(&more, 302).as_bytes()).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"stored\":{\"already_held\":0,\"stored\":50}"),
        "{body}"
    );
    // a baton that would leave a hole is refused whole, with the reason
    let mut gap = more.clone();
    for i in 0..100 {
        gap.append(
            1_795_460_900_000 + i,
            "info",
            None,
            baton_shared::json::Value::from(i as u64),
        )
        .unwrap();
    }
    gap.sign_head();
    let (status, body) =
        http::post(http_addr, "/api/v1/load", baton_of(&gap, 400).as_bytes()).unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("only through seq 351"), "{body}");
    // the fleet page's recent alerts: none yet (read now, so the fork's
    // alert below must be read on from here)
    let (_, fleet) = http::get(http_addr, "/api/v1/fleet").unwrap();
    assert!(!fleet.contains("two entries at seq"), "{fleet}");
    // a different history at a held seq (another key can't sign one, so the
    // same key with other content): refused, nothing changes
    let mut other = ledger("pi-load", 40, 300);
    other
        .append(
            1_795_461_000_000,
            "info",
            None,
            baton_shared::json::Value::from("fork"),
        )
        .unwrap();
    other.sign_head();
    let (status, body) =
        http::post(http_addr, "/api/v1/load", baton_of(&other, 1).as_bytes()).unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("fork"), "{body}");
    assert!(
        baton_tests::eventually(Duration::from_secs(10), || http::get(
            http_addr,
            "/api/v1/fleet"
        )
        .unwrap()
        .1
        .contains("two entries at seq 302"))
        .await,
        "{}",
        http::get(http_addr, "/api/v1/fleet").unwrap().1
    );
    // nothing of it stored; the fork halts the agent durably, as over MQTT
    let (_, agents) = http::get(http_addr, "/api/v1/agents").unwrap();
    let rows =
        baton_shared::json::parse(agents.as_bytes(), baton_shared::json::Mode::Verify).unwrap();
    let baton_shared::json::Value::Array(rows) = rows else {
        panic!("{agents}")
    };
    let row = rows
        .iter()
        .filter_map(baton_shared::json::Value::as_object)
        .find(|r| r.get("id").and_then(|v| v.as_str()) == Some("pi-load"))
        .unwrap();
    let num = |k: &str| row.get(k).and_then(baton_shared::json::Value::as_f64);
    assert_eq!(num("head_seq"), Some(351.0), "{agents}");
    assert_eq!(num("halted_at"), Some(302.0), "{agents}");
    // the live registry agrees (at its next judgement, every 500 ms): a
    // halted chain is quarantined
    let quarantined = baton_tests::eventually(Duration::from_secs(10), || {
        let (_, row) = http::get(http_addr, "/api/v1/agents/pi-load").unwrap();
        row.contains("\"state\":\"quarantined\"")
    })
    .await;
    assert!(quarantined);
    // `baton-gateway agents --http` reads the same registry from the running gateway
    let body =
        baton_gateway::cli::http_get(&format!("http://{http_addr}"), "/api/v1/agents").unwrap();
    let table = baton_gateway::cli::agents_table(&body).unwrap();
    let line = table.lines().find(|l| l.starts_with("pi-load ")).unwrap();
    assert!(
        line.contains(" 351 ") && line.contains("quarantined"),
        "{table}"
    );
    assert!(
        baton_gateway::cli::http_get(
            &format!("http://{http_addr}"),
            "/api/v1/agents/nobody/entries"
        )
        .is_err()
    );
    gw.stop().await;
}
