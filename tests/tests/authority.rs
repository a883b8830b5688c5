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
    let listen = "127.0.0.1:0".parse().unwrap();
    let broker = baton_gateway::config::Broker::Embedded { listen };
    let gw = Gateway::start_config(&dir.path().join("gw"), &keys, broker, |c| {
        c.security.broker_auth = false;
    })
    .await;
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
