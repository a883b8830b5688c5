//! The agent against a real gateway over real MQTT: appends through the
//! Unix socket, durable redb files on both sides, and the faults of issue 4
//! injected for real (gateway and broker restarts, a cut TCP link, damaged
//! and restored ledger files).

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use baton_shared::AgentId;
use baton_shared::PublicKey;
use baton_shared::verify::verify_text;
use baton_tests::daemons::{Agent, Gateway, GatewayProc, Via, agent_key};
use baton_tests::http::{gateway_chain, lines};
use baton_tests::watch::Watcher;
use baton_tests::{agent_chain, eventually};

/// A listener on a free loopback port, and its address.
fn bound() -> (SocketAddr, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    (l.local_addr().unwrap(), l)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn receipted_all(a: &Agent, limit: Duration) -> bool {
    eventually(limit, || a.head() > 1 && a.receipted() == a.head()).await
}

/// Checks the gateway holds exactly the agent's chain: same bytes, valid
/// under the agent's key, every seq once.
fn assert_same_chain(gw_http: SocketAddr, agent: &str, dir: &Path, key: PublicKey, head: u64) {
    let g = gateway_chain(gw_http, agent);
    let a = agent_chain(dir);
    assert_eq!(
        lines(&g),
        usize::try_from(head).unwrap(),
        "gateway holds every seq once"
    );
    assert!(g == a, "gateway and agent chains differ");
    let v = verify_text(&g, Some(key));
    assert!(v.is_valid(), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_gateway_hold_the_same_chain() {
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-1");
    let key = agent_key(&adir);
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &[(AgentId::new("pi-1").unwrap(), key)],
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let agent = Agent::start("pi-1", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    let acked = agent.append(0, 3000).await;
    assert_eq!(acked.len(), 3000);
    // seqs are consecutive after genesis
    assert!(
        acked
            .iter()
            .enumerate()
            .all(|(i, (s, _))| *s == i as u64 + 2)
    );
    assert!(receipted_all(&agent, Duration::from_secs(60)).await);
    let head = agent.head();
    agent.stop().await;
    assert_same_chain(gw.bound.http, "pi-1", &adir, key, head);
    // the export carries the acknowledged hashes
    let a = String::from_utf8(agent_chain(&adir)).unwrap();
    assert!(a.contains(&acked[2999].1));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start("pi-2", dir.path(), None, None).await;
    let before = agent.head();
    let socket = agent.ready.socket.clone();
    let bad: Vec<Vec<u8>> = [
        &b"not json"[..],
        b"{\"event\":\"genesis\"}",
        b"{\"event\":\"ok\",\"extra\":1}",
        b"{\"data\":{}}",
        b"{\"event\":\"ok\",\"data\":{\"a\":1,\"a\":2}}",
        b"{\"event\":\"Bad Name\"}",
        b"[1,2]",
        b"{\"event\":\"ok\",\"data\":9007199254740993}",
        b"{\"event\":\"lesson\",\"data\":{\"trauma\":\"disk full\",\"lesson\":\"watch df\"}}",
    ]
    .iter()
    .map(|b| b.to_vec())
    .chain(std::iter::once(
        format!("{{\"event\":\"ok\",\"data\":\"{}\"}}", "x".repeat(70_000)).into_bytes(),
    ))
    .chain(std::iter::once(vec![b'{'; 300_000]))
    .collect();
    let answers = baton_agent::socket::client::send_lines(&socket, bad)
        .await
        .unwrap();
    for a in &answers {
        let e = a.as_ref().unwrap_err();
        assert!(!e.is_empty());
    }
    assert!(answers[1].as_ref().unwrap_err().contains("runtime"));
    assert!(answers[2].as_ref().unwrap_err().contains("extra"));
    assert!(
        answers[8]
            .as_ref()
            .unwrap_err()
            .contains("\"root_cause\", \"correction\"")
    );
    assert!(answers[10].as_ref().unwrap_err().contains("longer than"));
    assert_eq!(agent.head(), before, "refused requests change nothing");
    // the connection still works after all that
    let ok = agent.append(0, 1).await;
    assert_eq!(ok[0].0, before + 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_down_while_the_agent_appends_100k() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-3"));
    let key = agent_key(&adir);
    let id = AgentId::new("pi-3").unwrap();
    let mqtt = free_addr();
    let mut gw = GatewayProc::start(&gdir, &[(id, key)], Via::Embedded(mqtt));
    let agent = Agent::start("pi-3", &adir, Some(mqtt), Some(gw.key)).await;
    agent.append(0, 10).await;
    assert!(receipted_all(&agent, Duration::from_secs(30)).await);
    gw.kill();
    for chunk in 0..10 {
        agent.append(10 + chunk * 10_000, 10_000).await;
    }
    assert_eq!(agent.head(), 100_011);
    assert!(agent.receipted() <= 11);
    gw.restart();
    assert!(
        receipted_all(&agent, Duration::from_secs(300)).await,
        "receipted {} of {}",
        agent.receipted(),
        agent.head()
    );
    let head = agent.head();
    agent.stop().await;
    assert_same_chain(gw.http, "pi-3", &adir, key, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_restarted_ten_times_during_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-4"));
    let key = agent_key(&adir);
    let id = AgentId::new("pi-4").unwrap();
    // a backlog built offline
    let agent = Agent::start("pi-4", &adir, None, None).await;
    for chunk in 0..4 {
        agent.append(chunk * 10_000, 10_000).await;
    }
    agent.stop().await;
    let mqtt = free_addr();
    let mut gw = GatewayProc::start(&gdir, &[(id, key)], Via::Embedded(mqtt));
    let agent = Agent::start("pi-4", &adir, Some(mqtt), Some(gw.key)).await;
    for round in 0..10 {
        // let catch-up make some progress, then kill gateway and broker
        let seen = agent.receipted();
        eventually(Duration::from_secs(10), || agent.receipted() > seen).await;
        gw.kill();
        // keep appending while the broker is down
        agent.append(100_000 + round * 100, 100).await;
        gw.restart();
    }
    assert!(
        receipted_all(&agent, Duration::from_secs(300)).await,
        "receipted {} of {}",
        agent.receipted(),
        agent.head()
    );
    let head = agent.head();
    assert_eq!(head, 1 + 40_000 + 1_000);
    agent.stop().await;
    assert_same_chain(gw.http, "pi-4", &adir, key, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_restarted_ten_times_during_catch_up() {
    let Some(mut m) = baton_tests::mosquitto::Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-5"));
    let key = agent_key(&adir);
    let id = AgentId::new("pi-5").unwrap();
    let gw = Gateway::start(&gdir, &[(id, key)], Some(m.addr), m.addr).await;
    let agent = Agent::start("pi-5", &adir, None, None).await;
    for chunk in 0..4 {
        agent.append(chunk * 10_000, 10_000).await;
    }
    agent.stop().await;
    let agent = Agent::start("pi-5", &adir, Some(m.addr), Some(gw.key)).await;
    for round in 0..10 {
        let seen = agent.receipted();
        eventually(Duration::from_secs(10), || agent.receipted() > seen).await;
        m.restart();
        agent.append(100_000 + round * 100, 100).await;
    }
    assert!(
        receipted_all(&agent, Duration::from_secs(300)).await,
        "receipted {} of {}",
        agent.receipted(),
        agent.head()
    );
    let head = agent.head();
    assert_eq!(head, 1 + 40_000 + 1_000);
    agent.stop().await;
    assert_same_chain(gw.bound.http, "pi-5", &adir, key, head);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_appended_during_a_partition_arrive_after_it_heals() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-6"));
    let key = agent_key(&adir);
    let id = AgentId::new("pi-6").unwrap();
    let gw = Gateway::start(&gdir, &[(id, key)], None, "127.0.0.1:0".parse().unwrap()).await;
    let proxy = baton_tests::proxy::Proxy::start(gw.mqtt()).await;
    let agent = Agent::start("pi-6", &adir, Some(proxy.addr), Some(gw.key)).await;
    agent.append(0, 100).await;
    assert!(receipted_all(&agent, Duration::from_secs(30)).await);
    proxy.cut();
    assert!(
        eventually(Duration::from_secs(10), || {
            !agent
                .ready
                .shared
                .document("pi-6", &agent.ready.writer.head(), true, 0)
                .as_object()
                .and_then(|o| o.get("connected"))
                .is_some_and(|c| *c == baton_shared::json::Value::Bool(true))
        })
        .await,
        "the agent notices the cut"
    );
    let during = agent.append(100, 500).await;
    assert_eq!(during.len(), 500);
    let receipted_during = agent.receipted();
    assert!(receipted_during <= 101, "nothing passes the cut");
    proxy.heal();
    assert!(receipted_all(&agent, Duration::from_secs(60)).await);
    let head = agent.head();
    agent.stop().await;
    assert_same_chain(gw.bound.http, "pi-6", &adir, key, head);
    gw.stop().await;
}

/// A gateway (with the pinned key) that answers every hello with a head
/// ahead of the agent that the agent never signed: the agent must refuse it
/// (rule 3c), raise an alert, and keep its chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_head_the_agent_never_signed_is_refused() {
    use baton_shared::wire::{Hello, HelloEcho, Message, Receipt};
    use baton_shared::{Hash, SecretKey, Seq, Sig};
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let (mqtt, listener) = bound();
    baton_gateway::broker::start(listener, 10, None).unwrap();
    let gw_key = SecretKey::from_seed(&[42; 32]);
    let gw_public = gw_key.public();
    let gateway = AgentId::new("gw-hostile").unwrap();
    let mut opts = MqttOptions::new("gw-hostile", mqtt.ip().to_string(), mqtt.port());
    opts.set_credentials("gw-hostile", "");
    let (client, mut events) = AsyncClient::new(opts, 64);
    client
        .subscribe("baton/v1/c1/pi-h/hello", QoS::AtLeastOnce)
        .await
        .unwrap();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = answered.clone();
    let hostile = tokio::spawn(async move {
        loop {
            let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await else {
                continue;
            };
            let Ok(hello) = Hello::decode(&p.payload) else {
                continue;
            };
            // a head 100 entries ahead, with a "signature" that is not the agent's
            let seq = Seq(hello.head_seq.0 + 100);
            let hash = Hash([7; 32]);
            let mut r = Receipt::sign(&gw_key, &gateway, &hello.agent, seq, hash);
            r.hello = Some(HelloEcho {
                nonce: hello.nonce,
                agent_sig: Some(Sig([9; 64])),
                gateway_key: gw_key.public().to_bytes(),
            });
            client
                .publish("baton/v1/c1/pi-h/ack", QoS::AtLeastOnce, false, r.encode())
                .await
                .unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start("pi-h", dir.path(), Some(mqtt), Some(gw_public)).await;
    agent.append(0, 20).await;
    let alerted = eventually(Duration::from_secs(30), || {
        answered.load(std::sync::atomic::Ordering::Relaxed) > 0
            && agent
                .ready
                .shared
                .document("pi-h", &agent.ready.writer.head(), true, 0)
                .as_object()
                .and_then(|o| o.get("alert"))
                .and_then(|a| a.as_str())
                .is_some_and(|a| a.contains("without this agent's checkpoint signature"))
    })
    .await;
    assert!(alerted, "the agent raised no alert about the unsigned head");
    assert_eq!(agent.head(), 21, "nothing adopted, nothing appended");
    assert_eq!(agent.receipted(), 0);
    agent.stop().await;
    let chain = String::from_utf8(agent_chain(dir.path())).unwrap();
    assert!(!chain.contains("\"recovery\""));
    hostile.abort();
}

/// TLS end to end: the gateway and the agent both reach Mosquitto over
/// mqtts:// trusting a CA made for the test; an agent trusting another CA
/// does not connect (and loses nothing: its entries wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_mosquitto_end_to_end() {
    let Some(m) = baton_tests::mosquitto::Mosquitto::start_tls() else {
        return;
    };
    let (tls_addr, ca) = m.tls.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir, bdir) = (
        dir.path().join("gw"),
        dir.path().join("pi-t"),
        dir.path().join("pi-x"),
    );
    let key = agent_key(&adir);
    let other_key = agent_key(&bdir);
    let broker = baton_gateway::config::Broker::External {
        host: tls_addr.ip().to_string(),
        port: tls_addr.port(),
        username: None,
        password: None,
        tls: Some(baton_runtime::mqtt::Tls {
            ca: Some(ca.clone()),
            ..Default::default()
        }),
    };
    let gw = Gateway::start_broker(
        &gdir,
        &[
            (AgentId::new("pi-t").unwrap(), key),
            (AgentId::new("pi-x").unwrap(), other_key),
        ],
        broker,
    )
    .await;
    let tls = |ca: std::path::PathBuf| baton_agent::RawConfig {
        gateway: Some(format!("mqtts://{tls_addr}")),
        gateway_ca: Some(ca),
        ..Default::default()
    };
    let wrong_ca = baton_tests::mosquitto::test_certificates(dir.path());
    let stranger = Agent::start_with("pi-x", &bdir, None, Some(gw.key), tls(wrong_ca)).await;
    let agent = Agent::start_with("pi-t", &adir, None, Some(gw.key), tls(ca)).await;
    agent.append(0, 500).await;
    stranger.append(0, 5).await;
    assert!(receipted_all(&agent, Duration::from_secs(60)).await);
    let head = agent.head();
    agent.stop().await;
    assert_same_chain(gw.bound.http, "pi-t", &adir, key, head);
    assert_eq!(
        stranger.receipted(),
        0,
        "a broker the agent cannot verify gets nothing"
    );
    assert_eq!(stranger.head(), 6, "its entries wait in the ledger");
    stranger.stop().await;
    gw.stop().await;
}

/// `state`: `online` with the session's connect time when the agent
/// connects, and the same session's `offline` (the MQTT last will) when its
/// connection ends without a goodbye.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_online_then_the_last_will_offline_of_the_same_session() {
    use baton_shared::wire::{Message, PresenceState, StateMsg};

    let (mqtt, listener) = bound();
    baton_gateway::broker::start(listener, 10, None).unwrap();
    let mut watcher = Watcher::start(mqtt, "watcher", &["baton/v1/c1/pi-p/state"]).await;
    let dir = tempfile::tempdir().unwrap();
    let key = baton_shared::SecretKey::from_seed(&[3; 32]).public();
    let agent = Agent::start("pi-p", dir.path(), Some(mqtt), Some(key)).await;
    // The first Online (a session that dropped before saying so may have
    // left an Offline first, under load: that is the will doing its job).
    let mut last_online = None;
    while last_online.is_none() {
        let m = watcher
            .next(Duration::from_secs(30))
            .await
            .expect("no Online");
        let m = StateMsg::decode(&m).unwrap();
        assert_eq!(m.agent.as_str(), "pi-p");
        if m.state == PresenceState::Online {
            last_online = Some(m.connect_ms);
        }
    }
    // stopping drops the connection without DISCONNECT: the will fires,
    // naming the session that said Online last
    agent.stop().await;
    loop {
        let m = watcher
            .next(Duration::from_secs(60))
            .await
            .expect("no Offline of the last session");
        let m = StateMsg::decode(&m).unwrap();
        match m.state {
            PresenceState::Online => last_online = Some(m.connect_ms),
            PresenceState::Offline if Some(m.connect_ms) == last_online => break,
            PresenceState::Offline => {}
        }
    }
}
