//! A test's own MQTT subscriber that survives its own reconnects.
//!
//! rumqttc reconnects by itself, but with a clean session the broker forgets
//! the subscriptions: a watcher that subscribed once goes deaf after its
//! first dropped connection (seen on a loaded CI machine). This one
//! subscribes again on every ConnAck, so a retained topic is delivered
//! again too, and says on stderr why its connection dropped.

use std::net::SocketAddr;
use std::time::Duration;

use baton_shared::wire::MQTT_MAX_PACKET;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::JoinHandle;

/// What a watcher receives: the topic and the payload of one publish.
pub type Received = (String, Vec<u8>);

/// A subscriber to `topics`; stops when dropped.
#[derive(Debug)]
pub struct Watcher {
    pub client: AsyncClient,
    pub received: UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Connects to `mqtt` as `id` (also its user name) and subscribes to
    /// `topics` at QoS 1, now and after every reconnect; returns once the
    /// broker acknowledged the first subscriptions.
    pub async fn start(mqtt: SocketAddr, id: &str, topics: &[&str]) -> Watcher {
        Watcher::start_as(mqtt, id, "", topics).await
    }

    /// As [`Watcher::start`], with a password.
    pub async fn start_as(mqtt: SocketAddr, id: &str, password: &str, topics: &[&str]) -> Watcher {
        let mut opts = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
        opts.set_credentials(id, password);
        // a batch of entries is up to 256 KiB (rumqttc's default: 10 KiB)
        opts.set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let (tx, received) = unbounded_channel();
        let (subscribed_tx, mut subscribed) = tokio::sync::watch::channel(0usize);
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let topics_len = topics.len();
        let subscriber = client.clone();
        let id = id.to_owned();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in &topics {
                            subscriber.try_subscribe(t, QoS::AtLeastOnce).unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic, p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subscribed_tx.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("watcher {id}: connection lost ({e}); reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let wanted = topics_len;
        tokio::time::timeout(
            Duration::from_secs(30),
            subscribed.wait_for(|n| *n >= wanted),
        )
        .await
        .expect("the broker did not acknowledge the subscriptions within 30 s")
        .unwrap();
        Watcher {
            client,
            received,
            task,
        }
    }

    /// The next publish's payload, or `None` after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Vec<u8>> {
        match tokio::time::timeout(limit, self.received.recv()).await {
            Ok(Some((_, payload))) => Some(payload),
            _ => None,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
