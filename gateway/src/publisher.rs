//! A publisher that plays an agent: a real MQTT client driving the real
//! `uplink` state machine over an in-memory ledger. The end-to-end tests
//! use it as their agents, and `bench` as its load generator.

use baton_shared::topic::{self, Kind};
use std::net::SocketAddr;
use std::time::Duration;

use baton_runtime::mqtt::{self, Credentials};
use baton_shared::memory::MemLedger;
use baton_shared::uplink::{Alert, Ledger, Output, Uplink, UplinkConfig};
use baton_shared::wire::{Message, Nack, Receipt};
use baton_shared::{PublicKey, Seq};
use rumqttc::{AsyncClient, Event, Packet, QoS};

/// What a publisher run ended with.
#[derive(Debug)]
pub struct Published {
    pub ledger: MemLedger,
    pub alerts: Vec<Alert>,
    pub receipted: Seq,
}

/// Entries the publisher appends while it runs, like a live agent.
#[derive(Debug, Clone, Copy)]
pub struct Feed {
    pub entries: u64,
    pub every: Duration,
}

/// How the publisher sends.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Batches in flight.
    pub window: usize,
    /// Most entries per batch.
    pub max_batch_entries: usize,
    pub resend_timeout: Duration,
    pub feed: Option<Feed>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            window: 8,
            max_batch_entries: 1024,
            resend_timeout: Duration::from_secs(2),
            feed: None,
        }
    }
}

/// Sends everything in `ledger` to the gateway behind `broker` until the
/// gateway's receipts cover its head, or `limit` passes.
pub async fn publish_all(
    broker: SocketAddr,
    cluster: &str,
    ledger: MemLedger,
    gateway_key: PublicKey,
    limit: Duration,
) -> anyhow::Result<Published> {
    publish(
        broker,
        cluster,
        ledger,
        gateway_key,
        Options::default(),
        limit,
    )
    .await
}

/// As [`publish_all`] with explicit options; with a feed it appends
/// `feed.entries` more entries one by one every `feed.every`.
pub async fn publish(
    broker: SocketAddr,
    cluster: &str,
    mut ledger: MemLedger,
    gateway_key: PublicKey,
    options: Options,
    limit: Duration,
) -> anyhow::Result<Published> {
    let feed = options.feed;
    let mut to_append = feed.map_or(0, |f| f.entries);
    let every = feed.map_or(Duration::from_secs(3600), |f| f.every);
    let agent = ledger.agent().clone();
    let mut link = Link::connect(broker, &ledger)?;
    let mut cfg = UplinkConfig::new(agent.clone(), ledger.key().public(), Some(gateway_key), 42);
    cfg.resend_timeout = options.resend_timeout;
    cfg.window = options.window;
    cfg.limits.max_entries = options.max_batch_entries;
    let mut uplink = Uplink::new(cfg, ledger.best.clone());
    let origin = tokio::time::Instant::now();
    let deadline = origin + limit;
    let mut alerts = Vec::new();
    let mut next_append = origin;
    loop {
        while to_append > 0 && tokio::time::Instant::now() >= next_append {
            let n = ledger.head().0;
            ledger.append(
                1_795_460_700_000 + n as i64,
                "info",
                None,
                baton_shared::json::Value::from(n),
            )?;
            to_append -= 1;
            next_append += every;
        }
        let receipted = uplink.best().map_or(Seq::ZERO, |r| r.seq);
        if receipted == ledger.head() && to_append == 0 {
            drop(link);
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
        let mut wake = uplink
            .poll_timeout()
            .map_or(deadline, |t| origin + t)
            .min(deadline);
        if to_append > 0 {
            wake = wake.min(next_append);
        }
        tokio::select! {
            Some(event) = link.events.recv() => {
                // (subscribed to receipts and nacks only)
                let _ = link.take(origin.elapsed(), event, cluster, &mut uplink, &ledger)?;
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        link.drain(
            origin.elapsed(),
            cluster,
            &mut uplink,
            &mut ledger,
            &mut alerts,
        )?;
    }
}

/// An agent's MQTT connection: its client and the events of its event
/// loop, which a task of its own polls (never cancelled mid-connect:
/// rumqttc's poll is not cancel-safe then), as in the agent.
pub(crate) struct Link {
    pub(crate) client: AsyncClient,
    pub(crate) events: tokio::sync::mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.pump.abort();
    }
}

impl Link {
    /// Connects as `ledger`'s agent, logging in with its key as a real
    /// agent does.
    pub(crate) fn connect(broker: SocketAddr, ledger: &MemLedger) -> anyhow::Result<Link> {
        let login = Credentials::Signed {
            key: Box::new(ledger.key().clone()),
            offer_key: true,
            counter: mqtt::LoginCounter::in_memory(),
        };
        let opts = mqtt::options(
            ledger.agent().as_str(),
            &broker.ip().to_string(),
            broker.port(),
            None,
            &login,
            None,
        )?;
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        eventloop.set_network_options(mqtt::network_options());
        let (tx, events) = tokio::sync::mpsc::channel(64);
        let pump = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let lost = event.is_err();
                if tx.send(event).await.is_err() {
                    return;
                }
                if lost {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    login.apply(&mut eventloop.mqtt_options, None);
                }
            }
        });
        Ok(Link {
            client,
            events,
            pump,
        })
    }

    /// Takes one event: subscribes to receipts and nacks on connect and
    /// hands them to the uplink; returns any other publish to the caller.
    pub(crate) fn take(
        &self,
        now: Duration,
        event: Result<Event, rumqttc::ConnectionError>,
        cluster: &str,
        uplink: &mut Uplink,
        ledger: &MemLedger,
    ) -> anyhow::Result<Option<rumqttc::Publish>> {
        let agent = ledger.agent();
        let (ack, nack) = (
            topic::agent(cluster, agent, Kind::Ack),
            topic::agent(cluster, agent, Kind::Nack),
        );
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                self.client.try_subscribe(&ack, QoS::AtLeastOnce)?;
                self.client.try_subscribe(&nack, QoS::AtLeastOnce)?;
                uplink.connected(now);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == ack {
                    if let Ok(r) = Receipt::decode(&p.payload) {
                        uplink.handle_receipt(now, &r, ledger);
                    }
                } else if p.topic == nack {
                    if let Ok(n) = Nack::decode(&p.payload) {
                        uplink.handle_nack(now, &n);
                    }
                } else {
                    return Ok(Some(p));
                }
            }
            Ok(_) => {}
            Err(_) => uplink.disconnected(now),
        }
        Ok(None)
    }

    /// Carries out what the uplink asks for now: hellos, batches,
    /// checkpoints, receipts kept, adoptions; its alerts into `alerts`.
    pub(crate) fn drain(
        &self,
        now: Duration,
        cluster: &str,
        uplink: &mut Uplink,
        ledger: &mut MemLedger,
        alerts: &mut Vec<Alert>,
    ) -> anyhow::Result<()> {
        let agent = ledger.agent().clone();
        while let Some(out) = uplink.poll(now, ledger) {
            match out {
                Output::Hello(h) => {
                    let _ = self.client.try_publish(
                        topic::agent(cluster, &agent, Kind::Hello),
                        QoS::AtLeastOnce,
                        false,
                        h.encode(),
                    );
                }
                Output::Batch { from, to, proof } => {
                    let b = ledger.batch(from, to, proof).encode();
                    let _ = self.client.try_publish(
                        topic::agent(cluster, &agent, Kind::Entries),
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
        Ok(())
    }
}
