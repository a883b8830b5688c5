//! The production broker setup of the README's "Deploying to a fleet",
//! against a real Mosquitto: TLS for the devices, one password per device,
//! `use_username_as_clientid`, and the topic ACL `print-mosquitto-acl`
//! prints. A real gateway and a real agent work through it; a device with
//! valid credentials cannot publish to, or read, another device's topics.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use baton_gateway::mosquitto::{Auth, acl};
use baton_shared::AgentId;
use baton_shared::wire::{Message, PresenceState, StateMsg};
use baton_tests::daemons::{Agent, Gateway, agent_key};
use baton_tests::eventually;
use baton_tests::mosquitto::Mosquitto;
use baton_tests::watch::Watcher;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
};

/// Adds `user` with `password` to the password file with Mosquitto's own
/// tool; false when it is not installed.
fn passwd(file: &Path, user: &str, password: &str) -> bool {
    let mut cmd = Command::new("mosquitto_passwd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let Ok(out) = cmd.arg("-b").arg(file).arg(user).arg(password).output() else {
        return false;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn client(
    mqtt: SocketAddr,
    client_id: &str,
    user: &str,
    password: &str,
) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(client_id, mqtt.ip().to_string(), mqtt.port());
    opts.set_credentials(user, password);
    AsyncClient::new(opts, 16)
}

/// The first packet that is not a ping or an outgoing note.
async fn next_incoming(events: &mut EventLoop) -> Result<Packet, ConnectionError> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.poll().await? {
                Event::Incoming(Packet::PingResp) | Event::Outgoing(_) => {}
                Event::Incoming(p) => return Ok(p),
            }
        }
    })
    .await
    .expect("nothing from the broker within 20 s")
}

/// Appends 50 entries from `from` and waits until all are receipted.
async fn append_50_receipted(agent: &Agent, from: u64, when: &str) {
    agent.append(from, 50).await;
    assert!(
        eventually(Duration::from_secs(60), || agent.receipted()
            == agent.head())
        .await,
        "pi-a receipted {} of {} {when}",
        agent.receipted(),
        agent.head()
    );
}

/// Reads what the auditor sees until `done(topic, payload)` says so.
async fn until_seen(auditor: &mut Watcher, mut done: impl FnMut(&str, &[u8]) -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (topic, payload) = auditor.received.recv().await.unwrap();
            if done(&topic, &payload) {
                return;
            }
        }
    })
    .await
    .expect("the auditor did not see it within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_held_to_its_own_topics_while_the_fleet_works() {
    let dir = tempfile::tempdir().unwrap();
    let auth = Auth {
        password_file: dir.path().join("baton.passwd"),
        acl_file: dir.path().join("baton.acl"),
    };
    for (user, password) in [
        ("gw-1", "gw-secret"),
        ("pi-a", "a-secret"),
        ("pi-b", "b-secret"),
        ("auditor", "audit"),
    ] {
        if !passwd(&auth.password_file, user, password) {
            assert!(
                std::env::var("BATON_REQUIRE_MOSQUITTO").as_deref() != Ok("1"),
                "BATON_REQUIRE_MOSQUITTO=1 but mosquitto_passwd is missing"
            );
            eprintln!("SKIPPED: mosquitto_passwd is not installed");
            return;
        }
    }
    // The printed ACL, plus a read-only user for this test to watch with.
    let mut rules = acl("c1", "gw-1");
    rules.push_str("\nuser auditor\ntopic read baton/v1/c1/#\n");
    std::fs::write(&auth.acl_file, rules).unwrap();
    let Some(m) = Mosquitto::start_fleet(&auth) else {
        return;
    };
    let (tls_addr, ca) = m.tls.clone().unwrap();

    // The gateway on the plain (loopback) listener with its own user.
    let adir = dir.path().join("pi-a");
    let key = agent_key(&adir);
    let gw = Gateway::start_broker(
        &dir.path().join("gw"),
        &[(AgentId::new("pi-a").unwrap(), key)],
        baton_gateway::config::Broker::External {
            host: m.addr.ip().to_string(),
            port: m.addr.port(),
            username: Some("gw-1".into()),
            password: Some("gw-secret".into()),
            tls: None,
        },
    )
    .await;
    // The device over TLS with its own password: the whole protocol passes
    // the ACL (hello, entries, state, hb, time out; ack, nack, time/reply in).
    let agent = Agent::start_with(
        "pi-a",
        &adir,
        None,
        Some(gw.key),
        baton_agent::RawConfig {
            gateway: Some(format!("mqtts://{tls_addr}")),
            gateway_ca: Some(ca),
            broker_password: Some("a-secret".into()),
            ..Default::default()
        },
    )
    .await;
    append_50_receipted(&agent, 0, "at first").await;

    let mut auditor = Watcher::start_as(m.addr, "auditor", "audit", &["baton/v1/c1/#"]).await;

    // A wrong password is refused at connect.
    let (_c, mut wrong) = client(m.addr, "pi-b", "pi-b", "not-it");
    match next_incoming(&mut wrong).await {
        Err(ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
        )) => {}
        other => panic!("a wrong password was not refused: {other:?}"),
    }

    // pi-b, with valid credentials, claims pi-a's client id: the broker
    // makes it pi-b (use_username_as_clientid), so pi-a is not taken over
    // (checked below: pi-a never announces itself offline).
    let (_claim, mut events) = client(m.addr, "pi-a", "pi-b", "b-secret");
    assert!(matches!(
        next_incoming(&mut events).await,
        Ok(Packet::ConnAck(_))
    ));
    drop(events);

    // pi-b subscribes to pi-a's receipts and commands. Mosquitto grants a
    // refused 3.1.1 subscription and never delivers on it: checked here.
    let (reader, mut events) = client(m.addr, "pi-b", "pi-b", "b-secret");
    assert!(matches!(
        next_incoming(&mut events).await,
        Ok(Packet::ConnAck(_))
    ));
    for t in ["baton/v1/c1/pi-a/ack", "baton/v1/c1/pi-a/cmd"] {
        reader.subscribe(t, QoS::AtLeastOnce).await.unwrap();
        assert!(matches!(
            next_incoming(&mut events).await,
            Ok(Packet::SubAck(_))
        ));
    }
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(p) = event {
                let _ = seen_tx.send(p);
            }
        }
    });
    append_50_receipted(&agent, 50, "beside pi-b").await;
    until_seen(&mut auditor, |topic, _| topic == "baton/v1/c1/pi-a/ack").await;
    // A receipt went out on pi-a/ack after pi-b subscribed to it. pi-b's
    // connection is one ordered stream: the PUBACK of a publish sent now
    // comes after anything the broker sent pi-b before it.
    reader
        .publish(
            "baton/v1/c1/pi-b/state",
            QoS::AtLeastOnce,
            false,
            b"read".to_vec(),
        )
        .await
        .unwrap();
    loop {
        let p = tokio::time::timeout(Duration::from_secs(20), seen.recv())
            .await
            .expect("pi-b's PUBACK did not arrive")
            .expect("pi-b's connection ended");
        match p {
            Packet::PubAck(_) => break,
            Packet::PingResp => {}
            other => panic!("pi-b received what it may not read: {other:?}"),
        }
    }
    pump.abort();

    // pi-b publishes to each of pi-a's topics, one connection each: the
    // broker drops the publish (or the connection).
    for suffix in [
        "entries", "hello", "state", "hb", "time", "ack", "nack", "cmd",
    ] {
        let (forger, mut events) = client(m.addr, "pi-b", "pi-b", "b-secret");
        assert!(matches!(
            next_incoming(&mut events).await,
            Ok(Packet::ConnAck(_))
        ));
        forger
            .publish(
                format!("baton/v1/c1/pi-a/{suffix}"),
                QoS::AtLeastOnce,
                false,
                b"forged".to_vec(),
            )
            .await
            .unwrap();
        match next_incoming(&mut events).await {
            Ok(Packet::PubAck(_)) | Err(_) => {}
            other => panic!("unexpected answer to a forged publish: {other:?}"),
        }
    }
    // Mosquitto handles clients on one thread, in order: a publish made
    // after every forged one was answered is seen after them, if they got
    // through at all.
    let (marker, mut events) = client(m.addr, "pi-b", "pi-b", "b-secret");
    assert!(matches!(
        next_incoming(&mut events).await,
        Ok(Packet::ConnAck(_))
    ));
    marker
        .publish(
            "baton/v1/c1/pi-b/state",
            QoS::AtLeastOnce,
            false,
            b"marker".to_vec(),
        )
        .await
        .unwrap();
    assert!(matches!(
        next_incoming(&mut events).await,
        Ok(Packet::PubAck(_))
    ));
    let mut forged = Vec::new();
    until_seen(&mut auditor, |topic, payload| {
        if payload == b"forged" {
            forged.push(topic.to_owned());
        }
        // pi-a was never taken over: no last will of its own
        if topic == "baton/v1/c1/pi-a/state" {
            let state = StateMsg::decode(payload).unwrap();
            assert_eq!(state.state, PresenceState::Online, "pi-a was disconnected");
        }
        payload == b"marker"
    })
    .await;
    assert!(
        forged.is_empty(),
        "forged publishes got through: {forged:?}"
    );

    // pi-a still works.
    append_50_receipted(&agent, 100, "after the attempts").await;
    agent.stop().await;
    gw.stop().await;
}
