//! Authority on the broker (issue 14): each attack an attacker on the
//! gateway's host tried, performed for real against the embedded broker.
//! Only a device speaks for itself; nobody takes over its session; forged
//! control changes nothing.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use baton_shared::login;
use baton_shared::topic::{self, Kind};
use baton_shared::wire::{
    Heartbeat, Message, Nack, NackKind, PresenceState, RejectReason, StateMsg,
};
use baton_shared::{AgentId, SecretKey, Seq};
use baton_tests::daemons::{Agent, Gateway, agent_key};
use baton_tests::eventually;
use baton_tests::http::{agent_state, metric};
use baton_tests::raw::Raw;
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

fn secret(dir: &Path) -> SecretKey {
    agent_key(dir);
    baton_runtime::keys::load(&dir.join("agent.key")).unwrap()
}

fn now_ms() -> i64 {
    baton_runtime::unix_ms()
}

/// A heartbeat claiming to be `agent`'s, as anyone could forge it.
fn forged_heartbeat(agent: &str) -> Vec<u8> {
    Heartbeat {
        agent: AgentId::new(agent).unwrap(),
        sent_ms: now_ms(),
        interval_ms: 1000,
        state: "ok".into(),
        head_seq: Seq(1),
        receipted_seq: Seq(1),
        backlog: 0,
        impedance: Default::default(),
        system: Default::default(),
        clock: None,
        capabilities: Vec::new(),
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_logs_in_as_a_device_without_its_key_and_a_login_is_good_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("pi-a"), dir.path().join("pi-b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let b_key = secret(&b_dir);
    let keys = [
        (AgentId::new("pi-a").unwrap(), agent_key(&a_dir)),
        (AgentId::new("pi-b").unwrap(), b_key.public()),
    ];
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &keys,
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let mqtt = gw.mqtt();
    let a = Agent::start("pi-a", &a_dir, Some(mqtt), Some(gw.key)).await;
    a.append(0, 5).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == a.head()).await);

    // The takeover of the finding: 30 tries with pi-a's client id.
    let stranger = SecretKey::from_seed(&[0x5a; 32]);
    let attempts = [
        String::new(),
        "secret".to_owned(),
        login::password(&stranger, "pi-a", now_ms(), true),
        login::password(&b_key, "pi-a", now_ms(), false),
    ];
    for i in 0..30 {
        let password = &attempts[i % attempts.len()];
        let r = Raw::connect(mqtt, "pi-a", password, None).await;
        assert!(r.is_err(), "try {i} logged in as pi-a with {password:?}");
    }
    // a device's user name must be its own client id
    let as_b = login::password(&b_key, "pi-b", now_ms(), false);
    assert!(Raw::connect(mqtt, "pi-a", &as_b, None).await.is_err());
    assert!(metric(gw.bound.http, "baton_broker_logins_refused_total") >= 31.0);

    // The agent was never kicked off: it goes on delivering at once.
    a.append(5, 5).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == a.head()).await);

    // A real login works once; the same password again is a replay.
    let password = login::password(&b_key, "pi-b", now_ms(), false);
    drop(Raw::connect(mqtt, "pi-b", &password, None).await.unwrap());
    let replay = Raw::connect(mqtt, "pi-b", &password, None).await;
    assert!(replay.is_err(), "a replayed login was accepted");
    // ... and so is any older one, however validly signed
    let stale = login::password(&b_key, "pi-b", now_ms() - 600_000, false);
    assert!(Raw::connect(mqtt, "pi-b", &stale, None).await.is_err());

    a.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_speaks_only_for_itself_and_forged_liveness_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("pi-a"), dir.path().join("pi-b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let b_key = secret(&b_dir);
    let keys = [
        (AgentId::new("pi-a").unwrap(), agent_key(&a_dir)),
        (AgentId::new("pi-b").unwrap(), b_key.public()),
    ];
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &keys,
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let (mqtt, http) = (gw.mqtt(), gw.bound.http);
    let extra = baton_agent::RawConfig {
        heartbeat: Some("1s".into()),
        ..Default::default()
    };
    let a = Agent::start_with("pi-a", &a_dir, Some(mqtt), Some(gw.key), extra).await;
    assert!(
        eventually(Duration::from_secs(30), || agent_state(http, "pi-a")
            == "active")
        .await
    );

    // pi-b is enrolled and logs in properly: an insider, not a stranger.
    let login_b = login::password(&b_key, "pi-b", now_ms(), false);
    let mut b = Raw::connect(mqtt, "pi-b", &login_b, None).await.unwrap();
    let t = |agent: &str, k| topic::agent("c1", agent, k);
    // It reads only its own gateway → agent topics.
    assert_eq!(
        b.subscribe(&t("pi-b", Kind::Ack)).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    for filter in [
        t("pi-a", Kind::Ack),
        t("pi-a", Kind::Hello),
        "baton/v1/c1/#".to_owned(),
        "#".to_owned(),
    ] {
        assert_eq!(
            b.subscribe(&filter).await,
            [SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    // A last will on another's state is refused at connect.
    let will = LastWill::new(t("pi-a", Kind::State), vec![1], QoS::AtLeastOnce, true);
    let login_b2 = login::password(&b_key, "pi-b", now_ms() + 1, false);
    assert!(
        Raw::connect(mqtt, "pi-b-2", &login_b2, Some(will))
            .await
            .is_err()
    );

    // Stop pi-a: its last will makes it offline, and pi-b's forged
    // heartbeats, retained `state` from the future and forged reject do
    // not bring it back or get near its delivery.
    a.stop().await;
    let forged_state = StateMsg {
        agent: AgentId::new("pi-a").unwrap(),
        state: PresenceState::Online,
        connect_ms: i64::MAX,
    }
    .encode();
    let forged_nack = Nack::new(
        &AgentId::new("gw-e2e").unwrap(),
        &AgentId::new("pi-a").unwrap(),
        NackKind::Reject {
            reason: RejectReason::Fork,
            seq: Seq(1),
        },
    )
    .encode();
    let denied_before = metric(http, "baton_broker_publishes_denied_total");
    let mut offline = false;
    for _ in 0..60 {
        b.publish(&t("pi-a", Kind::Hb), false, forged_heartbeat("pi-a"))
            .await;
        b.publish(&t("pi-a", Kind::State), true, forged_state.clone())
            .await;
        b.publish(&t("pi-a", Kind::Nack), false, forged_nack.clone())
            .await;
        if agent_state(http, "pi-a") == "offline" {
            offline = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        offline,
        "pi-a is {} under forged heartbeats",
        agent_state(http, "pi-a")
    );
    assert!(metric(http, "baton_broker_publishes_denied_total") >= denied_before + 3.0);

    // Retained messages: only a small own `state`; a big one anywhere,
    // or one on another topic, is dropped.
    let denied = metric(http, "baton_broker_publishes_denied_total");
    b.publish(&t("pi-b", Kind::Hb), true, vec![0u8; 250 * 1024])
        .await;
    b.publish(&t("pi-b", Kind::State), true, vec![0u8; 2048])
        .await;
    assert_eq!(
        metric(http, "baton_broker_publishes_denied_total"),
        denied + 2.0
    );
    let own_state = StateMsg {
        agent: AgentId::new("pi-b").unwrap(),
        state: PresenceState::Online,
        connect_ms: now_ms(),
    }
    .encode();
    b.publish(&t("pi-b", Kind::State), true, own_state).await;
    assert_eq!(
        metric(http, "baton_broker_publishes_denied_total"),
        denied + 2.0
    );
    gw.stop().await;
}

/// PROTOCOL §7 rule 3d, end to end: on a broker that lets anyone publish
/// (`broker_auth = "none"`, or a loose external broker), a flood of forged
/// rejects on an agent's `nack` never stops or slows its delivery, and
/// raises no alert: only the gateway's signed answer to its hello could.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_rejects_on_an_open_broker_never_stall_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("pi-a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let keys = [(AgentId::new("pi-a").unwrap(), agent_key(&a_dir))];
    let gw = Gateway::start_open(&dir.path().join("gw"), &keys).await;
    let mqtt = gw.mqtt();
    let a = Agent::start("pi-a", &a_dir, Some(mqtt), Some(gw.key)).await;
    a.append(0, 5).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == a.head()).await);

    let mut mallory = Raw::connect(mqtt, "mallory", "", None).await.unwrap();
    let nack_t = topic::agent("c1", "pi-a", Kind::Nack);
    let forged = |reason, seq| {
        Nack::new(
            &AgentId::new("gw-e2e").unwrap(),
            &AgentId::new("pi-a").unwrap(),
            NackKind::Reject {
                reason,
                seq: Seq(seq),
            },
        )
        .encode()
    };
    let alert = |a: &Agent| {
        let doc = a
            .ready
            .shared
            .document("pi-a", &a.ready.writer.head(), true, 0);
        doc.as_object().and_then(|o| o.get("alert")).cloned()
    };
    // 6 s of rejects every 20 ms (three resend timeouts), appending as we go.
    let mut n = 5;
    for round in 0..300 {
        let reason = [
            RejectReason::Fork,
            RejectReason::UnknownAgent,
            RejectReason::Halted,
        ][round % 3];
        mallory.publish(&nack_t, false, forged(reason, 1)).await;
        if round % 30 == 0 {
            a.append(n, 3).await;
            n += 3;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Delivery kept up: everything appended during the flood is receipted
    // while the flood goes on.
    let flood = tokio::spawn(async move {
        loop {
            mallory
                .publish(&nack_t, false, forged(RejectReason::Fork, 1))
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(
        eventually(Duration::from_secs(10), || a.receipted() == a.head()).await,
        "receipted {} of {} under forged rejects",
        a.receipted(),
        a.head()
    );
    flood.abort();
    let alert = alert(&a);
    assert!(
        alert.as_ref().is_none_or(|v| v.as_str().is_none()),
        "a forged reject raised an alert: {alert:?}"
    );
    a.stop().await;
    gw.stop().await;
}

/// The gateway's own chain: its `operator` entries' data.
fn operator_entries(http: std::net::SocketAddr) -> Vec<baton_shared::json::Value> {
    let (status, body) =
        baton_tests::http::get(http, "/api/v1/agents/gw-e2e/entries?limit=100000").unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines()
        .map(|l| baton_shared::json::parse(l.as_bytes(), baton_shared::json::Mode::Verify).unwrap())
        .filter(|e| {
            e.as_object()
                .and_then(|o| o.get("event"))
                .and_then(|v| v.as_str())
                == Some("operator")
        })
        .filter_map(|e| e.as_object().and_then(|o| o.get("data")).cloned())
        .collect()
}

fn field<'a>(v: &'a baton_shared::json::Value, key: &str) -> Option<&'a str> {
    v.as_object()
        .and_then(|o| o.get(key))
        .and_then(|v| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_changes_trust_over_http_and_the_chain_says_who() {
    use baton_tests::http::{get, post, post_as, token_of};
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("pi-a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let a_key = secret(&a_dir);
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &[],
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let (http, mqtt) = (gw.bound.http, gw.mqtt());
    let token = token_of(http).expect("the gateway made an operator token");
    let enroll = format!(
        "{{\"agent\":\"pi-a\",\"public_key\":\"{}\"}}",
        a_key.public().to_hex()
    );
    let json = "application/json";

    // The attacks of the finding, each refused before anything happens.
    for (what, token, content_type, status) in [
        ("no token", None, json, 401),
        ("a wrong token", Some("baton-op1.00"), json, 401),
        (
            "another gateway's kind of secret",
            Some(token.trim_start_matches("baton-op1.")),
            json,
            401,
        ),
        ("a cross-site text/plain POST", None, "text/plain", 415),
        (
            "a cross-site form POST",
            None,
            "application/x-www-form-urlencoded",
            415,
        ),
        (
            "text/plain even with the token",
            Some(token.as_str()),
            "text/plain",
            415,
        ),
    ] {
        let (got, body) = post_as(
            http,
            "/api/v1/enroll",
            enroll.as_bytes(),
            token,
            content_type,
        )
        .unwrap();
        assert_eq!(got, status, "{what}: {body}");
    }
    for path in ["/api/v1/load", "/api/v1/unenroll", "/api/v1/resolve"] {
        let (got, _) = post_as(http, path, b"{\"agent\":\"pi-a\"}", None, json).unwrap();
        assert_eq!(got, 401, "{path} without the token");
    }
    assert!(metric(http, "baton_http_unauthorized_total") >= 9.0);
    assert!(
        operator_entries(http).is_empty(),
        "a refused request left a trace as an action"
    );
    let (status, agents) = get(http, "/api/v1/agents").unwrap();
    assert_eq!(status, 200, "reads stay open on loopback");
    assert!(!agents.contains("pi-a"));

    // The operator, with the token: enrolled, and the chain names the
    // channel and the credential (its fingerprint, never the token).
    let (status, body) = post(http, "/api/v1/enroll", enroll.as_bytes()).unwrap();
    assert_eq!(status, 200, "{body}");
    // Windows are bounded: the overflow of the finding and a too-long one.
    for w in ["300000000y", "48h"] {
        let body = format!("{{\"window\":\"{w}\"}}");
        let (status, answer) = post(http, "/api/v1/enroll", body.as_bytes()).unwrap();
        assert_eq!(status, 422, "{w}: {answer}");
    }
    let (status, _) = post(http, "/api/v1/enroll", b"{\"window\":\"10m\"}").unwrap();
    assert_eq!(status, 200);
    let ops = operator_entries(http);
    let actions: Vec<_> = ops.iter().filter_map(|d| field(d, "action")).collect();
    assert_eq!(actions, ["enroll", "window"]);
    let fingerprint = baton_gateway::auth::fingerprint(&token);
    for d in &ops {
        assert_eq!(field(d, "channel"), Some("http"));
        assert_eq!(field(d, "credential"), Some(fingerprint.as_str()));
    }
    assert_eq!(field(&ops[0], "agent"), Some("pi-a"));

    // The device delivers; then the operator unenrolls it on the running
    // gateway: its next login is refused at once.
    let a = Agent::start("pi-a", &a_dir, Some(mqtt), Some(gw.key)).await;
    a.append(0, 3).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == a.head()).await);
    a.stop().await;
    // ... from the CLI, as an operator would: it reads the token file
    let gw_dir = dir.path().join("gw");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(baton_tests::bins::gateway())
            .args(args)
            .arg("--data-dir")
            .arg(&gw_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        cli(&["operator-token"]).trim(),
        token,
        "operator-token shows the token"
    );
    let url = format!("http://{http}");
    let answer = cli(&["unenroll", "--http", &url, "--agent", "pi-a"]);
    assert!(answer.contains("unenrolled pi-a"), "{answer}");
    let login = login::password(&a_key, "pi-a", now_ms(), false);
    assert!(
        Raw::connect(mqtt, "pi-a", &login, None).await.is_err(),
        "an unenrolled device logged in"
    );
    let (status, body) = post(http, "/api/v1/unenroll", b"{\"agent\":\"pi-a\"}").unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(http, "/api/v1/unenroll", b"{\"agent\":\"gw-e2e\"}").unwrap();
    assert_eq!(status, 422, "{body}");
    // what it delivered stays
    let (status, entries) = get(http, "/api/v1/agents/pi-a/entries").unwrap();
    assert!(status == 200 || status == 404, "{entries}");
    let actions: Vec<_> = operator_entries(http)
        .iter()
        .filter_map(|d| field(d, "action").map(str::to_owned))
        .collect();
    assert_eq!(actions, ["enroll", "window", "unenroll"]);

    // Rotation: the old token stops working at once, the new one works.
    let rotated = baton_gateway::auth::create(&dir.path().join("gw/operator.token"), true).unwrap();
    let (status, _) = post_as(
        http,
        "/api/v1/resolve",
        b"{\"agent\":\"pi-a\"}",
        Some(&token),
        json,
    )
    .unwrap();
    assert_eq!(status, 401);
    let (status, body) = post_as(
        http,
        "/api/v1/resolve",
        b"{\"agent\":\"pi-a\"}",
        Some(&rotated),
        json,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_is_bounded_and_reads_can_need_the_token() {
    use baton_gateway::publisher::publish_all;
    use baton_tests::http::{get, post};
    let dir = tempfile::tempdir().unwrap();
    let listen = "127.0.0.1:0".parse().unwrap();
    let broker = baton_gateway::config::Broker::Embedded { listen };
    let gw = Gateway::start_config(dir.path(), &[], broker, |c| {
        c.security.first_use.max_agents = 3;
        c.security.http_read_auth = true;
    })
    .await;
    let (http, mqtt) = (gw.bound.http, gw.mqtt());
    let (status, _) = get(http, "/api/v1/agents").unwrap();
    assert_eq!(status, 401, "reads need the token with http_read_auth");
    let (status, _) = get(http, "/healthz").unwrap();
    assert_eq!(status, 200, "health stays open for supervisors");
    let (status, body) = post(http, "/api/v1/enroll", b"{\"window\":\"10m\"}").unwrap();
    assert_eq!(status, 200, "{body}");
    // Five strangers in the window: three enrolled, then refused.
    let mut enrolled = 0;
    for i in 0..5u8 {
        let l = baton_tests::ledger(&format!("pi-new-{i}"), 40 + i, 3, 2);
        let wait = if enrolled < 3 { 30 } else { 3 };
        if publish_all(mqtt, "c1", l, gw.key, Duration::from_secs(wait))
            .await
            .is_ok()
        {
            enrolled += 1;
        }
    }
    assert_eq!(enrolled, 3);
    let token = baton_tests::http::token_of(http).unwrap();
    let (_, text) = baton_tests::http::get_as(http, "/metrics", Some(&token)).unwrap();
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // The two late strangers are refused and counted: at the broker (the
    // window's first-use logins are used up) before their hellos could be.
    let refused =
        counter("baton_broker_logins_refused_total") + counter("baton_first_use_refused_total");
    assert!(refused >= 2.0, "{text}");
    let (_, agents) = baton_tests::http::get_as(http, "/api/v1/agents", Some(&token)).unwrap();
    assert!(
        !agents.contains("pi-new-3") && !agents.contains("pi-new-4"),
        "{agents}"
    );
    gw.stop().await;
}

/// PROTOCOL §7, clock exchange: replies are signed by the gateway. On a
/// broker that lets anyone publish, a forger who reads the agent's `time`
/// requests and answers first with times an hour ahead (and a round trip
/// shorter than the gateway's, so that its sample would be chosen) moves
/// no clock: the agent drops every reply its gateway's key did not sign,
/// counts them, and keeps the gateway's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_clock_reply_moves_no_clock() {
    use baton_shared::wire::{TimeReply, TimeRequest};
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("pi-t");
    std::fs::create_dir_all(&a_dir).unwrap();
    let keys = [(AgentId::new("pi-t").unwrap(), agent_key(&a_dir))];
    let gw = Gateway::start_open(&dir.path().join("gw"), &keys).await;
    let mqtt = gw.mqtt();
    let mut mallory = Raw::connect(mqtt, "mallory", "", None).await.unwrap();
    mallory
        .subscribe(&topic::agent("c1", "pi-t", Kind::Time))
        .await;
    let forged = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = std::sync::Arc::clone(&forged);
    let forger = tokio::spawn(async move {
        let key = SecretKey::from_seed(&[66; 32]);
        let gateway = AgentId::new("gw-e2e").unwrap();
        let reply_t = topic::agent("c1", "pi-t", Kind::TimeReply);
        while let Some(p) = mallory.incoming.recv().await {
            let rumqttc::Packet::Publish(p) = p else {
                continue;
            };
            let Ok(req) = TimeRequest::decode(&p.payload) else {
                continue;
            };
            let ahead = req.t0 + 3_600_000;
            let reply = TimeReply::sign(&key, &gateway, &req, ahead, ahead + 2);
            mallory
                .client
                .publish(&reply_t, QoS::AtMostOnce, false, reply.encode())
                .await
                .unwrap();
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let a = Agent::start("pi-t", &a_dir, Some(mqtt), Some(gw.key)).await;
    let refused = |a: &Agent| {
        let doc = a
            .ready
            .shared
            .document("pi-t", &a.ready.writer.head(), true, 0);
        doc.as_object()
            .and_then(|o| o.get("clock_replies_refused"))
            .and_then(baton_shared::json::Value::as_exact_u64)
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(20), || refused(&a) >= 3).await,
        "forged clock replies were not refused"
    );
    // what the agent writes now carries the gateway's time, not the forger's
    a.append(0, 1).await;
    a.stop().await;
    forger.abort();
    assert!(forged.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    let entry = baton_tests::own_chain_text(&a_dir);
    let last = baton_shared::json::parse(
        entry.lines().last().unwrap().as_bytes(),
        baton_shared::json::Mode::Verify,
    )
    .unwrap();
    let clock = last
        .as_object()
        .and_then(|o| o.get("clock"))
        .and_then(baton_shared::json::Value::as_object)
        .cloned()
        .unwrap();
    assert_eq!(
        clock.get("synced"),
        Some(&baton_shared::json::Value::Bool(true)),
        "{clock:?}"
    );
    let offset = clock
        .get("offset_ms")
        .and_then(baton_shared::json::Value::as_f64)
        .unwrap();
    assert!(
        offset.abs() < 1_000.0,
        "the forger moved the clock: {offset} ms"
    );
    gw.stop().await;
}
