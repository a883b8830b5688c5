//! A test publisher: plays an agent with a real MQTT client and the real
//! `uplink` state machine over an in-memory ledger.

use std::net::SocketAddr;
use std::time::Duration;

use baton_shared::memory::MemLedger;
use baton_shared::uplink::{Alert, Ledger, Output, Uplink, UplinkConfig};
use baton_shared::wire::{MQTT_MAX_PACKET, Message, Nack, Receipt};
use baton_shared::{PublicKey, Seq};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};

/// What a publisher run ended with.
#[derive(Debug)]
pub struct Published {
    pub ledger: MemLedger,
    pub alerts: Vec<Alert>,
    pub receipted: Seq,
}

fn topic(cluster: &str, agent: &str, suffix: &str) -> String {
    format!("baton/v1/{cluster}/{agent}/{suffix}")
}

/// Sends everything in `ledger` to the gateway behind `broker` until the
/// gateway's receipts cover its head, or `limit` passes.
pub async fn publish_all(
    broker: SocketAddr,
    cluster: &str,
    mut ledger: MemLedger,
    gateway_key: PublicKey,
    limit: Duration,
) -> anyhow::Result<Published> {
    let agent = ledger.agent().clone();
    let mut opts = MqttOptions::new(agent.as_str(), broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
    opts.set_clean_session(true);
    opts.set_credentials(agent.as_str(), "");
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(30);
    eventloop.set_network_options(net);

    let mut cfg = UplinkConfig::new(agent.clone(), ledger.key().public(), Some(gateway_key), 42);
    cfg.resend_timeout = Duration::from_secs(2);
    cfg.window = 8;
    let mut uplink = Uplink::new(cfg, ledger.best.clone());
    let (ack, nack) = (
        topic(cluster, agent.as_str(), "ack"),
        topic(cluster, agent.as_str(), "nack"),
    );
    let origin = tokio::time::Instant::now();
    let deadline = origin + limit;
    let mut alerts = Vec::new();
    loop {
        let receipted = uplink.best().map_or(Seq::ZERO, |r| r.seq);
        if receipted == ledger.head() {
            let _ = client.try_disconnect();
            return Ok(Published {
                ledger,
                alerts,
                receipted,
            });
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "{agent}: receipted {receipted} of {} within {limit:?}",
                ledger.head()
            );
        }
        let wake = uplink
            .poll_timeout()
            .map_or(deadline, |t| origin + t)
            .min(deadline);
        tokio::select! {
            event = eventloop.poll() => {
                let now = origin.elapsed();
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client.try_subscribe(&ack, QoS::AtLeastOnce)?;
                        client.try_subscribe(&nack, QoS::AtLeastOnce)?;
                        uplink.connected(now);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == ack {
                            if let Ok(r) = Receipt::decode(&p.payload) {
                                uplink.handle_receipt(now, &r, &ledger);
                            }
                        } else if p.topic == nack
                            && let Ok(n) = Nack::decode(&p.payload)
                        {
                            uplink.handle_nack(now, &n);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        uplink.disconnected(now);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = origin.elapsed();
        while let Some(out) = uplink.poll(now, &ledger) {
            match out {
                Output::Hello(h) => {
                    let _ = client.try_publish(
                        topic(cluster, agent.as_str(), "hello"),
                        QoS::AtLeastOnce,
                        false,
                        h.encode(),
                    );
                }
                Output::Batch { from, to, proof } => {
                    let b = ledger.batch(from, to, proof).encode();
                    let _ = client.try_publish(
                        topic(cluster, agent.as_str(), "entries"),
                        QoS::AtLeastOnce,
                        false,
                        b,
                    );
                }
                Output::SignHead { .. } => ledger.sign_head(),
                Output::StoreBestReceipt(r) => ledger.best = Some(r),
                Output::PinGatewayKey(_) => {}
                Output::Adopt(a) => {
                    ledger.adopt(&a, 0)?;
                    uplink.adopted(now, &a);
                }
                Output::Alert(a) => alerts.push(a),
            }
        }
    }
}
