//! A bare MQTT client for attacks and probes: connect as anyone with any
//! password, publish anything, and see exactly what the broker answered.

use std::net::SocketAddr;
use std::time::Duration;

use baton_shared::wire::MQTT_MAX_PACKET;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::JoinHandle;

/// A connected client and what it receives.
#[derive(Debug)]
pub struct Raw {
    pub client: AsyncClient,
    pub incoming: UnboundedReceiver<Packet>,
    task: JoinHandle<()>,
}

impl Raw {
    /// Connects to `mqtt` as `id` (also the user name) with `password`
    /// and an optional last will. `Err` says why the broker refused (it
    /// closed the connection, or answered with a refusing ConnAck).
    pub async fn connect(
        mqtt: SocketAddr,
        id: &str,
        password: &str,
        will: Option<LastWill>,
    ) -> Result<Raw, String> {
        let mut opts = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
        opts.set_credentials(id, password);
        opts.set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some(w) = will {
            opts.set_last_will(w);
        }
        let (client, mut events) = AsyncClient::new(opts, 256);
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        return match a.code {
                            rumqttc::ConnectReturnCode::Success => Ok(()),
                            code => Err(format!("refused: {code:?}")),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("connection closed: {e}")),
                }
            }
        })
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?;
        connected?;
        let (tx, incoming) = unbounded_channel();
        let task = tokio::spawn(async move {
            // One session only: a drop ends it (no reconnect).
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(p) = event {
                    let _ = tx.send(p);
                }
            }
        });
        Ok(Raw {
            client,
            incoming,
            task,
        })
    }

    /// Subscribes to `filter` and returns the broker's answer codes.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.incoming.recv()).await {
                Ok(Some(Packet::SubAck(s))) => return s.return_codes,
                Ok(Some(_)) => {}
                _ => panic!("no SubAck for {filter}"),
            }
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK (which a
    /// broker also sends for a publish its ACL dropped).
    pub async fn publish(&mut self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.incoming.recv()).await {
                Ok(Some(Packet::PubAck(_))) => return,
                Ok(Some(_)) => {}
                _ => panic!("no PubAck for {topic}"),
            }
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}
