//! Last wills at a session takeover, on both brokers Baton runs on.
//!
//! An agent whose network dies silently reconnects (same client id) while
//! the broker still holds the dead connection: the broker takes the old
//! session over. MQTT says the old connection's will is published then,
//! and the new connection keeps its own for when it ends. rumqttd 0.20 did
//! neither (it published the new connection's will at the takeover and
//! then had none left); `vendor/rumqttd` carries the fix (BATON-PATCH.md).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use baton_tests::mosquitto::Mosquitto;
use baton_tests::watch::Watcher;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};

const TOPIC: &str = "baton/v1/c1/dev-1/state";

/// A connection of client `dev-1` whose will says `will`, polled until its
/// ConnAck and then left alone (its socket stays open).
async fn connected(mqtt: SocketAddr, will: &str) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new("dev-1", mqtt.ip().to_string(), mqtt.port());
    opts.set_credentials("dev-1", "");
    opts.set_last_will(LastWill::new(TOPIC, will, QoS::AtLeastOnce, false));
    let (client, mut events) = AsyncClient::new(opts, 16);
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("no ConnAck within 20 s");
    (client, events)
}

async fn takeover(mqtt: SocketAddr) {
    let mut watcher = Watcher::start(mqtt, "will-watcher", &[TOPIC]).await;
    let old = connected(mqtt, "old").await;
    let (_client, mut events) = connected(mqtt, "new").await;
    let new = tokio::spawn(async move {
        // keep the new session alive (pings) until aborted
        while events.poll().await.is_ok() {}
    });
    let first = watcher.next(Duration::from_secs(20)).await;
    assert_eq!(
        first.as_deref(),
        Some(&b"old"[..]),
        "the taken-over connection's will, and only it"
    );
    assert_eq!(
        watcher.next(Duration::from_secs(2)).await,
        None,
        "nothing more while the new session lives"
    );
    // the new connection ends without DISCONNECT: its own will
    new.abort();
    let _ = new.await;
    let second = watcher.next(Duration::from_secs(20)).await;
    assert_eq!(second.as_deref(), Some(&b"new"[..]));
    drop(old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_takeover_fires_the_old_will_and_keeps_the_new() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mqtt = listener.local_addr().unwrap();
    baton_gateway::broker::start(listener, 10, None).unwrap();
    takeover(mqtt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_takeover_fires_the_old_will_and_keeps_the_new() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    takeover(broker.addr).await;
}
