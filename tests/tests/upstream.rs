//! Upstream forwarding (PROTOCOL §8) with real processes over real MQTT:
//! agents → two cluster gateways → one sector gateway, each gateway a
//! `baton-gateway run` process with its own broker. Every agent entry must
//! reach the top unchanged and verify there under the agent's key; the
//! top's chain of an agent must equal the agent's own export byte for byte;
//! cutting the upstream link and SIGKILLing a cluster gateway mid-forwarding
//! must lose nothing and store nothing twice.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use baton_shared::json::{self, Mode, Value};
use baton_shared::verify::verify_text;
use baton_shared::{AgentId, PublicKey};
use baton_tests::daemons::{Agent, GatewayProc, Role, Via, agent_key, free_port, gateway_key};
use baton_tests::http::{gateway_chain, get, lines, metric, post};
use baton_tests::proxy::Proxy;
use baton_tests::{agent_chain, eventually};

fn local(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn get_json(http: SocketAddr, path: &str) -> Option<Value> {
    let (status, body) = get(http, path).ok()?;
    (status == 200).then(|| json::parse(body.as_bytes(), Mode::Verify).unwrap())
}

/// The head a gateway holds for `agent` (0: none).
fn held(http: SocketAddr, agent: &str) -> u64 {
    get_json(http, &format!("/api/v1/agents/{agent}"))
        .and_then(|v| v.as_object()?.get("head_seq")?.as_exact_u64())
        .unwrap_or(0)
}

/// A sector gateway in `<dir>/sector` on its own embedded broker.
fn sector_gateway(dir: &std::path::Path, role: Role) -> GatewayProc {
    GatewayProc::start_as(
        &dir.join("sector"),
        &[],
        Via::Embedded(local(free_port())),
        role,
    )
}

/// Enrolls child gateway `id` (forwarding `cluster`) at the parent.
fn enroll_child(parent_http: SocketAddr, id: &str, key: PublicKey, cluster: &str) {
    let body = format!(
        "{{\"agent\":\"{id}\",\"public_key\":\"{}\",\"child_cluster\":\"{cluster}\"}}",
        key.to_hex()
    );
    let (status, answer) = post(parent_http, "/api/v1/enroll", body.as_bytes()).unwrap();
    assert_eq!(status, 200, "{answer}");
}

struct Tiers {
    _dir: tempfile::TempDir,
    root: PathBuf,
    sector: GatewayProc,
    clusters: Vec<GatewayProc>,
    /// (agent, its dir, its key, its cluster index)
    agents: Vec<(Agent, PathBuf, PublicKey, usize)>,
    proxies: Vec<Proxy>,
}

/// A sector gateway on `sector_via` (its embedded broker or Mosquitto),
/// two cluster gateways c1 and c2 (embedded brokers) forwarding to it —
/// through a cuttable proxy each — and two agents per cluster.
async fn three_tiers(sector_via: Via) -> Tiers {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let sector = GatewayProc::start_as(
        &root.join("sector"),
        &[],
        sector_via,
        Role::new("sector-gw", "s1").arg("--summary-chain-interval", "1s"),
    );
    let mut clusters = Vec::new();
    let mut proxies = Vec::new();
    let mut agents = Vec::new();
    for (ci, c) in ["c1", "c2"].into_iter().enumerate() {
        let gdir = root.join(format!("{c}-gw"));
        let gw_id = format!("{c}-gw");
        enroll_child(sector.http, &gw_id, gateway_key(&gdir), c);
        let mut trusted = Vec::new();
        for n in 1..=2 {
            let id = format!("{c}-pi-{n}");
            let adir = root.join(&id);
            trusted.push((AgentId::new(id.as_str()).unwrap(), agent_key(&adir)));
        }
        let proxy = Proxy::start(sector_via.broker()).await;
        let gw = GatewayProc::start_as(
            &gdir,
            &trusted,
            Via::Embedded(local(free_port())),
            Role::new(&gw_id, c)
                .upstream(proxy.addr, sector.key)
                .arg("--summary-chain-interval", "1s")
                .arg("--checkpoint-interval", "1s"),
        );
        for (id, key) in trusted {
            let adir = root.join(id.as_str());
            let extra = baton_agent::RawConfig {
                cluster: Some(c.into()),
                ..Default::default()
            };
            let a = Agent::start_with(
                id.as_str(),
                &adir,
                Some(gw.via.broker()),
                Some(gw.key),
                extra,
            )
            .await;
            agents.push((a, adir, key, ci));
        }
        clusters.push(gw);
        proxies.push(proxy);
    }
    Tiers {
        _dir: dir,
        root,
        sector,
        clusters,
        agents,
        proxies,
    }
}

impl Tiers {
    async fn append_all(&self, from: u64, n: u64) {
        for (a, ..) in &self.agents {
            assert_eq!(a.append(from, n).await.len() as u64, n);
        }
    }

    /// Waits until the sector holds every agent's head.
    async fn top_holds_all(&self, limit: Duration) -> bool {
        eventually(limit, || {
            self.agents
                .iter()
                .all(|(a, ..)| held(self.sector.http, a.id.as_str()) == a.head())
        })
        .await
    }

    /// Stops the agents and checks, for each, that the top holds its own
    /// export byte for byte, every seq once, valid under its key.
    async fn assert_top_equals_agents(&mut self) {
        for (a, adir, key, _) in self.agents.drain(..) {
            let id = a.id.to_string();
            let head = a.head();
            a.stop().await;
            let top = gateway_chain(self.sector.http, &id);
            assert_eq!(
                lines(&top) as u64,
                head,
                "{id}: the top holds every seq once"
            );
            assert!(
                top == agent_chain(&adir),
                "{id}: top and agent chains differ"
            );
            let v = verify_text(&top, Some(key));
            assert!(v.is_valid(), "{id}: {v:?}");
        }
    }

    fn c1_agents(&self) -> Vec<&Agent> {
        self.agents
            .iter()
            .filter(|(.., ci)| *ci == 0)
            .map(|(a, ..)| a)
            .collect()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn forwards_everything_to_the_top(sector_via: Via) {
    let mut t = three_tiers(sector_via).await;
    t.append_all(0, 400).await;
    assert!(
        t.top_holds_all(Duration::from_secs(90)).await,
        "the sector did not receive every chain: {}",
        text(&std::fs::read(t.root.join("c1-gw/gateway.log")).unwrap_or_default())
    );
    // Each cluster gateway's own chain reached the top too, verifies under
    // its key, and vouches for its agents.
    for (ci, gw) in t.clusters.iter().enumerate() {
        let id = format!("c{}-gw", ci + 1);
        let chain = eventually(Duration::from_secs(30), || {
            let c = gateway_chain(t.sector.http, &id);
            text(&c).contains("\"event\":\"cluster_summary\"")
        })
        .await;
        assert!(chain, "{id}'s summaries did not reach the top");
        let chain = gateway_chain(t.sector.http, &id);
        let v = verify_text(&chain, Some(gw.key));
        assert!(v.is_valid(), "{id}: {v:?}");
        for n in 1..=2 {
            assert!(
                text(&chain).contains(&format!("\"agent\":\"c{}-pi-{n}\"", ci + 1)),
                "{id} enrolls its agents in its chain"
            );
        }
    }
    // The sector's own chain enrolls every agent it learned from a child
    // (what its own parent would learn them from).
    let own = text(&gateway_chain(t.sector.http, "sector-gw"));
    for (a, ..) in &t.agents {
        let named = format!("\"agent\":\"{}\"", a.id);
        assert!(
            own.lines()
                .any(|l| l.contains("\"event\":\"enroll\"") && l.contains(&named)),
            "the sector enrolls {}",
            a.id
        );
    }
    // Sector roll-up: both clusters, four agents.
    let ok = eventually(Duration::from_secs(30), || {
        get_json(t.sector.http, "/api/v1/cluster").is_some_and(|v| {
            let o = v.as_object().unwrap();
            o.get("clusters").and_then(Value::as_exact_u64) == Some(2)
                && o.get("agents").and_then(Value::as_exact_u64) == Some(4)
        })
    })
    .await;
    assert!(ok, "{:?}", get(t.sector.http, "/api/v1/cluster").unwrap().1);
    let cluster = get_json(t.sector.http, "/api/v1/cluster").unwrap();
    let children = cluster.as_object().unwrap().get("children").unwrap();
    let c1 = children
        .as_object()
        .unwrap()
        .get("c1")
        .unwrap()
        .as_object()
        .unwrap();
    assert_eq!(c1.get("gateway").and_then(Value::as_str), Some("c1-gw"));
    assert_eq!(c1.get("agents").and_then(Value::as_exact_u64), Some(2));
    // The cluster gateways' forwarders say every chain is receipted.
    for gw in &t.clusters {
        let up = get_json(gw.http, "/api/v1/upstream").unwrap();
        let chains = up
            .as_object()
            .unwrap()
            .get("chains")
            .unwrap()
            .as_object()
            .unwrap();
        assert!(chains.len() >= 3, "{chains:?}");
    }
    // The console's fleet view at the top: both clusters under the
    // sector, each agent in its own cluster with the state its own
    // gateway recorded — and the same after the top restarts.
    assert_fleet_view(&t).await;
    t.sector.restart();
    assert_fleet_view(&t).await;
    t.assert_top_equals_agents().await;
}

/// The top's `/api/v1/fleet` and `/api/v1/fleet/agents` describe the
/// tiers as they are.
async fn assert_fleet_view(t: &Tiers) {
    let ok = eventually(Duration::from_secs(30), || {
        let Some(f) = get_json(t.sector.http, "/api/v1/fleet") else {
            return false;
        };
        let Some(Value::Array(clusters)) = f.as_object().unwrap().get("clusters") else {
            return false;
        };
        ["c1", "c2"].iter().all(|c| {
            clusters.iter().any(|n| {
                let n = n.as_object().unwrap();
                n.get("cluster").and_then(Value::as_str) == Some(c)
                    && n.get("parent").and_then(Value::as_str) == Some("s1")
                    && n.get("gateway").and_then(Value::as_str) == Some(&format!("{c}-gw"))
                    && n.get("summary").and_then(Value::as_object).is_some()
            })
        })
    })
    .await;
    assert!(ok, "{:?}", get(t.sector.http, "/api/v1/fleet").unwrap().1);
    for c in ["c1", "c2"] {
        let ok = eventually(Duration::from_secs(30), || {
            let Some(page) = get_json(
                t.sector.http,
                &format!("/api/v1/fleet/agents?cluster={c}&sort=id"),
            ) else {
                return false;
            };
            let o = page.as_object().unwrap();
            let Some(Value::Array(rows)) = o.get("rows") else {
                return false;
            };
            let ids: Vec<_> = rows
                .iter()
                .map(|r| {
                    let r = r.as_object().unwrap();
                    (
                        r.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                        r.get("state")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    )
                })
                .collect();
            ids == [
                (format!("{c}-pi-1"), "active".to_owned()),
                (format!("{c}-pi-2"), "active".to_owned()),
            ]
        })
        .await;
        assert!(
            ok,
            "{:?}",
            get(t.sector.http, &format!("/api/v1/fleet/agents?cluster={c}"))
                .unwrap()
                .1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tiers_forward_every_entry_to_the_top_embedded_broker() {
    forwards_everything_to_the_top(Via::Embedded(local(free_port()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tiers_forward_every_entry_to_the_top_mosquitto() {
    let Some(m) = baton_tests::mosquitto::Mosquitto::start() else {
        return;
    };
    forwards_everything_to_the_top(Via::External(m.addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cut_and_restored_loses_nothing_and_stores_nothing_twice() {
    let mut t = three_tiers(Via::Embedded(local(free_port()))).await;
    t.append_all(0, 200).await;
    assert!(t.top_holds_all(Duration::from_secs(90)).await);
    // Cut c1's link to the sector; its agents go on appending and are
    // receipted by c1 meanwhile.
    t.proxies[0].cut();
    t.append_all(200, 600).await;
    let c1_agents = t.c1_agents();
    assert!(
        eventually(Duration::from_secs(60), || c1_agents
            .iter()
            .all(|a| a.receipted() == a.head()))
        .await
    );
    for a in &c1_agents {
        assert!(
            held(t.sector.http, a.id.as_str()) < a.head(),
            "nothing of {} passes a cut link",
            a.id
        );
    }
    let up = get_json(t.clusters[0].http, "/api/v1/upstream").unwrap();
    assert_eq!(
        up.as_object().unwrap().get("connected"),
        Some(&Value::Bool(false))
    );
    t.proxies[0].heal();
    assert!(t.top_holds_all(Duration::from_secs(90)).await);
    t.assert_top_equals_agents().await;
}

/// The receipt a child's forwarder holds for `chain` as (seq, hash, sig).
fn cursor(child_http: SocketAddr, chain: &str) -> Option<(u64, String, String)> {
    let up = get_json(child_http, "/api/v1/upstream")?;
    let r = up
        .as_object()?
        .get("chains")?
        .as_object()?
        .get(chain)?
        .as_object()?
        .get("receipt")?
        .as_object()?
        .clone();
    Some((
        r.get("seq")?.as_exact_u64()?,
        r.get("hash")?.as_str()?.to_owned(),
        r.get("sig")?.as_str()?.to_owned(),
    ))
}

/// The receipt the top puts in its baton export of `agent`.
fn top_receipt(top_http: SocketAddr, agent: &str) -> (u64, String, String) {
    let v = get_json(
        top_http,
        &format!("/api/v1/agents/{agent}/export?format=baton"),
    )
    .unwrap();
    let r = v
        .as_object()
        .unwrap()
        .get("receipt")
        .unwrap()
        .as_object()
        .unwrap();
    (
        r.get("seq").unwrap().as_exact_u64().unwrap(),
        r.get("hash").unwrap().as_str().unwrap().to_owned(),
        r.get("sig").unwrap().as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_gateway_sigkilled_mid_forwarding_loses_nothing() {
    let mut t = three_tiers(Via::Embedded(local(free_port()))).await;
    // Hold the upstream back so that a backlog builds, then let it go and
    // kill c1's gateway while it forwards.
    t.proxies[0].cut();
    t.append_all(0, 3000).await;
    let c1: Vec<String> = t.c1_agents().iter().map(|a| a.id.to_string()).collect();
    t.proxies[0].heal();
    let started = eventually(Duration::from_secs(60), || {
        c1.iter().any(|a| held(t.sector.http, a) > 0)
    })
    .await;
    assert!(started, "forwarding did not start");
    t.clusters[0].kill();
    let mid: Vec<u64> = c1.iter().map(|a| held(t.sector.http, a)).collect();
    t.append_all(3000, 200).await;
    t.clusters[0].restart();
    assert!(
        t.top_holds_all(Duration::from_secs(120)).await,
        "mid-kill heads {mid:?}"
    );
    // The child's durable cursor ends at the top's receipt: the same
    // (seq, hash) and, signatures being deterministic, the same bytes.
    for a in &c1 {
        let head = held(t.sector.http, a);
        let ok = eventually(Duration::from_secs(30), || {
            cursor(t.clusters[0].http, a).is_some_and(|c| c.0 == head)
        })
        .await;
        assert!(ok, "{a}: cursor {:?}", cursor(t.clusters[0].http, a));
        assert_eq!(
            cursor(t.clusters[0].http, a).unwrap(),
            top_receipt(t.sector.http, a)
        );
    }
    t.assert_top_equals_agents().await;
}

/// A hostile child built from the library: its own chain vouches for an
/// agent correctly, then it alters one of that agent's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampering_child_is_caught_and_named() {
    use baton_gateway::publisher::publish_all;
    use baton_shared::json::Object;
    use baton_shared::memory::MemLedger;
    use baton_shared::wire::{EntryBatch, Message};
    use baton_shared::{Entry, SecretKey};

    let dir = tempfile::tempdir().unwrap();
    // What is tested is the parent's own verification of what a child
    // forwards, so the child is played by bare clients publishing any
    // chain on its cluster's topics: the sector's broker checks no logins.
    let sector = sector_gateway(
        dir.path(),
        Role::new("sector-gw", "s1").arg("--broker-auth", "none"),
    );
    let broker = sector.via.broker();
    let evil = SecretKey::from_seed(&[66; 32]);
    enroll_child(sector.http, "evil-gw", evil.public(), "c9");
    let mut agent = baton_tests::ledger("pi-9", 9, 40, 8);
    agent.sign_head();
    // The child's own chain: genesis, then an enroll of the real agent key.
    let vouch = |child: &str, key: &SecretKey, cluster: &str, vouched: PublicKey| {
        let mut l = MemLedger::genesis(
            AgentId::new(child).unwrap(),
            key.clone(),
            1_795_460_700_000,
            1,
        )
        .unwrap();
        let mut d = Object::new();
        d.insert("agent", Value::from("pi-9"));
        d.insert("public_key", Value::from(vouched.to_hex()));
        d.insert("cluster", Value::from(cluster));
        l.append(1_795_460_700_001, "enroll", None, Value::Object(d))
            .unwrap();
        l
    };
    let own = vouch("evil-gw", &evil, "c9", agent.key().public());
    let done = publish_all(broker, "c9", own, sector.key, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.receipted.0, 2, "the child's chain is receipted");
    assert!(
        eventually(Duration::from_secs(10), || {
            text(&gateway_chain(sector.http, "sector-gw")).contains("\"agent\":\"pi-9\"")
        })
        .await,
        "the sector enrolls pi-9 on the child's word"
    );

    // The tampered batch: entry 5's data altered, the chain re-hashed, the
    // agent's sigs kept (the child cannot sign for the agent).
    let honest = agent.batch(baton_shared::Seq(1), agent.head_seq(), None);
    let mut entries: Vec<Entry> = Vec::new();
    for (i, e) in honest.entries.iter().enumerate() {
        let prev = entries.last().map_or(baton_shared::Hash::ZERO, |p| p.hash);
        let content = if i == 4 {
            text(&e.content).replace("\"i\":3", "\"i\":33").into_bytes()
        } else {
            e.content.clone()
        };
        let mut forged = Entry::seal(content, prev);
        forged.sig = e.sig;
        entries.push(forged);
    }
    let tampered = EntryBatch {
        agent: AgentId::new("pi-9").unwrap(),
        proof: None,
        entries,
    };
    let mut watcher =
        baton_tests::watch::Watcher::start(broker, "test-watch", &["baton/v1/c9/pi-9/nack"]).await;
    publish_raw(broker, "baton/v1/c9/pi-9/entries", tampered.encode()).await;
    let Some(nack) = watcher.next(Duration::from_secs(20)).await else {
        panic!(
            "no nack; the sector's log: {}",
            text(&std::fs::read(dir.path().join("sector/gateway.log")).unwrap_or_default())
        );
    };
    let nack = baton_shared::wire::Nack::decode(&nack).unwrap();
    assert!(
        matches!(nack.kind, baton_shared::wire::NackKind::Reject { .. }),
        "{nack:?}"
    );
    // The alert in the sector's chain names the child.
    let alerted = eventually(Duration::from_secs(10), || {
        let own = text(&gateway_chain(sector.http, "sector-gw"));
        own.contains("\"kind\":\"forwarded_chain_refused\"")
            && own.contains("\"child\":\"evil-gw\"")
    })
    .await;
    assert!(
        alerted,
        "{}",
        text(&gateway_chain(sector.http, "sector-gw"))
    );
    assert_eq!(
        held(sector.http, "pi-9"),
        0,
        "nothing of the tampered batch is stored"
    );
    let (_, metrics) = get(sector.http, "/metrics").unwrap();
    assert!(
        metrics.contains("baton_forwarded_rejected_total 1")
            || metrics
                .lines()
                .any(|l| l.starts_with("baton_forwarded_rejected_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // The honest batch through the same child is taken.
    let done = publish_all(broker, "c9", agent, sector.key, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.receipted, done.ledger.head_seq());

    // A second child vouching for the same id with another key is refused,
    // named in an alert, and pi-9's chain from it is not taken.
    let evil2 = SecretKey::from_seed(&[67; 32]);
    enroll_child(sector.http, "evil2-gw", evil2.public(), "c8");
    let impostor = SecretKey::from_seed(&[68; 32]);
    let own2 = vouch("evil2-gw", &evil2, "c8", impostor.public());
    publish_all(broker, "c8", own2, sector.key, Duration::from_secs(30))
        .await
        .unwrap();
    let alerted = eventually(Duration::from_secs(10), || {
        let own = text(&gateway_chain(sector.http, "sector-gw"));
        own.contains("\"kind\":\"conflicting_vouch\"") && own.contains("\"child\":\"evil2-gw\"")
    })
    .await;
    assert!(alerted);
    let forged = MemLedger::genesis(
        AgentId::new("pi-9").unwrap(),
        impostor,
        1_795_460_700_000,
        4,
    )
    .unwrap();
    let refused = publish_all(broker, "c8", forged, sector.key, Duration::from_secs(5)).await;
    assert!(refused.is_err(), "the impostor's chain is refused");
    assert_eq!(
        held(sector.http, "pi-9"),
        41,
        "pi-9 stays as its own key wrote it"
    );
}

/// Publishes one message (QoS 1) as its own client; returns at the PubAck.
async fn publish_raw(broker: SocketAddr, topic: &str, payload: Vec<u8>) {
    use rumqttc::{Event, Packet};
    let mut o = rumqttc::MqttOptions::new("raw-pub", broker.ip().to_string(), broker.port());
    o.set_max_packet_size(300 * 1024, 300 * 1024);
    o.set_credentials("raw-pub", "");
    let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.unwrap() {
                return;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "no PubAck for {topic}");
    let _ = client.disconnect().await;
}

/// An agent enrolled at its cluster gateway with a `start_seq` (it had
/// pruned before this gateway met it): the child's `enroll` entry carries
/// the start_seq, so the parent takes the chain from there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_held_from_a_start_seq_is_forwarded_from_it() {
    use baton_shared::Seq;
    use baton_shared::wire::Message;

    let dir = tempfile::tempdir().unwrap();
    let sector = sector_gateway(dir.path(), Role::new("sector-gw", "s1"));
    let cdir = dir.path().join("c1-gw");
    enroll_child(sector.http, "c1-gw", gateway_key(&cdir), "c1");
    // The agent (one that pruned before this gateway met it) is played by
    // a bare client publishing one batch: the cluster's broker checks no
    // logins. The real forwarder logs in at the sector.
    let cluster = GatewayProc::start_as(
        &cdir,
        &[],
        Via::Embedded(local(free_port())),
        Role::new("c1-gw", "c1")
            .upstream(sector.via.broker(), sector.key)
            .arg("--broker-auth", "none"),
    );
    let agent = baton_tests::ledger("pi-s", 11, 99, 10);
    let body = format!(
        "{{\"agent\":\"pi-s\",\"public_key\":\"{}\",\"start_seq\":51}}",
        agent.key().public().to_hex()
    );
    let (status, answer) = post(cluster.http, "/api/v1/enroll", body.as_bytes()).unwrap();
    assert_eq!(status, 200, "{answer}");
    let batch = agent.batch(Seq(51), Seq(100), None);
    publish_raw(
        cluster.via.broker(),
        "baton/v1/c1/pi-s/entries",
        batch.encode(),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || held(cluster.http, "pi-s")
            == 100)
        .await,
        "the cluster takes the chain from its start_seq"
    );
    assert!(
        eventually(Duration::from_secs(30), || held(sector.http, "pi-s") == 100).await,
        "the sector takes it from there too: {}",
        text(&std::fs::read(cdir.join("gateway.log")).unwrap_or_default())
    );
    let top = gateway_chain(sector.http, "pi-s");
    assert_eq!(lines(&top), 50);
    assert!(top == gateway_chain(cluster.http, "pi-s"));
    let v = verify_text(&top, Some(agent.key().public()));
    assert!(v.is_valid(), "{v:?}");
}

/// Tiered time (PROTOCOL §7): a cluster gateway whose own clock is 1,200
/// days behind (libfaketime) learns its offset to the sector through the
/// signed clock exchange of its forwarder, and answers its agents in the
/// sector's time: an agent with a true clock measures an offset near zero
/// — before, it measured −1,200 days and wrote that into every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_gateway_with_a_wrong_clock_answers_in_its_parents_time() {
    let Some(lib) = baton_tests::faketime() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sector = sector_gateway(dir.path(), Role::new("sector-gw", "s1"));
    let cdir = dir.path().join("c1-gw");
    enroll_child(sector.http, "c1-gw", gateway_key(&cdir), "c1");
    let adir = dir.path().join("pi-t");
    let key = agent_key(&adir);
    let cluster = GatewayProc::start_as(
        &cdir,
        &[(AgentId::new("pi-t").unwrap(), key)],
        Via::Embedded(local(free_port())),
        Role::new("c1-gw", "c1")
            .upstream(sector.via.broker(), sector.key)
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", "-1200d")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_DONT_RESET", "1"),
    );
    let band = 1200.0 * 86_400_000.0;
    let parent_offset = || {
        get_json(cluster.http, "/api/v1/upstream").and_then(|v| {
            v.as_object()?
                .get("clock")?
                .as_object()?
                .get("offset_ms")?
                .as_f64()
        })
    };
    assert!(
        eventually(Duration::from_secs(30), || parent_offset()
            .is_some_and(|o| (o - band).abs() < 60_000.0))
        .await,
        "the cluster gateway never learned the sector's time: {:?}",
        parent_offset()
    );
    let extra = baton_agent::RawConfig {
        heartbeat: Some("500ms".into()),
        ..Default::default()
    };
    let a = Agent::start_with(
        "pi-t",
        &adir,
        Some(cluster.via.broker()),
        Some(cluster.key),
        extra,
    )
    .await;
    let offset = || {
        get_json(cluster.http, "/api/v1/agents/pi-t")
            .and_then(|v| v.as_object()?.get("clock_offset_ms")?.as_f64())
    };
    assert!(
        eventually(Duration::from_secs(30), || offset()
            .is_some_and(|o| o.abs() < 60_000.0))
        .await,
        "the agent's offset is {:?} ms: the cluster gateway answered in its own time",
        offset()
    );
    a.stop().await;
}

/// A parent's view of a child follows the child's changes, not its
/// `summary_chain_interval` (5 min by default). Regression: a sector
/// showed a child as `EMERGENCY` from the summary it recorded at start,
/// before its agents connected, while the child was `FULL` seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parents_view_of_a_child_follows_its_changes_not_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let sector = sector_gateway(root, Role::new("sector-gw", "s1"));
    let gdir = root.join("c1-gw");
    enroll_child(sector.http, "c1-gw", gateway_key(&gdir), "c1");
    let ids = ["c1-pi-1", "c1-pi-2"];
    let trusted: Vec<(AgentId, PublicKey)> = ids
        .iter()
        .map(|id| (AgentId::new(*id).unwrap(), agent_key(&root.join(id))))
        .collect();
    // the default summary_chain_interval (300 s); summaries every second
    let gw = GatewayProc::start_as(
        &gdir,
        &trusted,
        Via::Embedded(local(free_port())),
        Role::new("c1-gw", "c1")
            .upstream(sector.via.broker(), sector.key)
            .arg("--summary-interval", "1s"),
    );
    let c1 = |http: SocketAddr| {
        get_json(http, "/api/v1/cluster").and_then(|v| {
            v.as_object()?
                .get("children")?
                .as_object()?
                .get("c1")
                .cloned()
        })
    };
    let count = |v: &Value, k: &str| v.as_object().and_then(|o| o.get(k)?.as_exact_u64());
    // the start-up summary: two agents enrolled, none connected
    let mut first = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            first = c1(sector.http);
            first.is_some()
        })
        .await,
        "the sector never heard of c1"
    );
    let first = first.unwrap();
    assert_eq!(count(&first, "active"), Some(0), "{first:?}");
    let mut agents = Vec::new();
    for id in ids {
        let extra = baton_agent::RawConfig {
            cluster: Some("c1".into()),
            ..Default::default()
        };
        agents.push(
            Agent::start_with(
                id,
                &root.join(id),
                Some(gw.via.broker()),
                Some(gw.key),
                extra,
            )
            .await,
        );
    }
    let mut seen = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            seen = c1(sector.http);
            seen.as_ref().and_then(|v| count(v, "active")) == Some(2)
        })
        .await,
        "the sector still sees c1 as at start: {seen:?}"
    );
    let seen = seen.unwrap();
    assert_eq!(
        seen.as_object().and_then(|o| o.get("mode")?.as_str()),
        Some("FULL"),
        "{seen:?}"
    );
    for a in agents {
        a.stop().await;
    }
}

/// Regression (issue 17): at a reconnect every chain of a child said hello
/// at once, the child's own chain among them; a chain whose vouch (its
/// `enroll` in the child's own chain) the parent did not hold yet was
/// refused as unknown and said hello again and again — at 15,000 chains a
/// storm of hellos and refusals that starved the own chain itself. A
/// chain now waits until the parent has receipted the own chain through
/// its vouch: an agent enrolled while the link was cut reaches the parent
/// with no refusal at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_enrolled_while_cut_off_waits_for_its_vouch_and_is_never_refused() {
    let mut t = three_tiers(Via::Embedded(local(free_port()))).await;
    t.append_all(0, 5).await;
    assert!(t.top_holds_all(Duration::from_secs(90)).await);
    t.proxies[0].cut();
    // a new agent at c1 while c1 cannot reach the sector
    let id = "c1-pi-new";
    let adir = t.root.join(id);
    let key = agent_key(&adir);
    let body = format!("{{\"agent\":\"{id}\",\"public_key\":\"{}\"}}", key.to_hex());
    let (status, answer) = post(t.clusters[0].http, "/api/v1/enroll", body.as_bytes()).unwrap();
    assert_eq!(status, 200, "{answer}");
    let extra = baton_agent::RawConfig {
        cluster: Some("c1".into()),
        ..Default::default()
    };
    let a = Agent::start_with(
        id,
        &adir,
        Some(t.clusters[0].via.broker()),
        Some(t.clusters[0].key),
        extra,
    )
    .await;
    assert_eq!(a.append(0, 20).await.len(), 20);
    assert!(eventually(Duration::from_secs(60), || a.receipted() == a.head()).await);
    let refused = "baton_bad_input_total{kind=\"unknown_agent\"}";
    let before = metric(t.sector.http, refused);
    t.proxies[0].heal();
    assert!(
        eventually(Duration::from_secs(90), || held(t.sector.http, id)
            == a.head())
        .await,
        "the sector holds the new agent's chain"
    );
    assert_eq!(
        metric(t.sector.http, refused),
        before,
        "no chain was refused as unknown at the reconnect"
    );
    t.agents.push((a, adir, key, 0));
    t.assert_top_equals_agents().await;
}
