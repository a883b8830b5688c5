//! The uplink shell: one rumqttc connection driven by `baton-shared`'s
//! `uplink` state machine. The MQTT event loop is polled by the runtime's
//! one long-lived `pump` beside the link's loop (never cancelled mid-connect);
//! publishing uses `try_publish` and never blocks it. What is resent comes
//! from the ledger, never from rumqttc's memory: the session is clean, and
//! every (re)connect starts with a hello (PROTOCOL §7).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_runtime::mqtt::Polled;
use baton_shared::backoff::Backoff;
use baton_shared::clock::ClockFilter;
use baton_shared::topic::{self, Kind};
use baton_shared::uplink::{Ledger as _, Output, Uplink, UplinkConfig};
use baton_shared::wire::{
    Heartbeat, Message, Nack, PresenceState, Receipt, StateMsg, TimeReply, TimeRequest,
};
use baton_shared::{PublicKey, Seq};
use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, Packet, QoS};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::clock::ClockState;
use crate::config::{Config, Uplink as Broker};
use crate::ledger::Ledger;
use crate::status::Shared;
use crate::writer::Writer;

/// Everything the uplink task needs.
#[derive(Debug)]
pub struct Link {
    pub config: Config,
    pub broker: Broker,
    pub agent_key: PublicKey,
    /// How the link logs in: the configured password, else a fresh
    /// signature by the agent's key at every connect.
    pub login: baton_runtime::mqtt::Credentials,
    pub pinned: Option<PublicKey>,
    pub best: Option<Receipt>,
    pub ledger: Ledger,
    pub writer: Writer,
    pub shared: Arc<Shared>,
    pub clock: Arc<ClockState>,
    /// Heartbeats to publish while connected.
    pub heartbeats: tokio::sync::mpsc::Receiver<Heartbeat>,
}

/// The clock filter's window: the lowest-RTT sample of the last two minutes.
const CLOCK_WINDOW: Duration = Duration::from_secs(120);
/// Clock requests: one a second until [`CLOCK_FIRST`] samples of a session
/// are in, then every [`CLOCK_EVERY`].
const CLOCK_FIRST: u32 = 3;
const CLOCK_EVERY: Duration = Duration::from_secs(10);
/// A wall-clock step larger than this (NTP setting a clock that had none)
/// makes every earlier sample meaningless: the filter starts over.
const CLOCK_STEP_MS: i64 = 1000;

impl Link {
    /// Runs until the task is dropped.
    pub async fn run(self) {
        let Link {
            config,
            broker,
            agent_key,
            login,
            pinned,
            best,
            ledger,
            writer,
            shared,
            clock,
            mut heartbeats,
        } = self;
        let agent = config.id.clone();
        let cluster = config.cluster.as_str().to_owned();
        let t = |k: Kind| topic::agent(&cluster, &agent, k);
        let (hello_t, entries_t, ack_t, nack_t, state_t) = (
            t(Kind::Hello),
            t(Kind::Entries),
            t(Kind::Ack),
            t(Kind::Nack),
            t(Kind::State),
        );
        let (hb_t, time_t, time_reply_t) = (t(Kind::Hb), t(Kind::Time), t(Kind::TimeReply));
        let cmd_t = t(Kind::Cmd);

        let mut opts = match baton_runtime::mqtt::options(
            agent.as_str(),
            &broker.host,
            broker.port,
            None,
            &login,
            broker.tls.as_ref(),
        ) {
            Ok(o) => o,
            Err(e) => {
                // Checked at start (run); a file removed since lands here.
                error!(error = %format!("{e:#}"), "uplink settings unusable; the ledger stays offline");
                shared.alert(format!("uplink: {e:#}"));
                return;
            }
        };
        // `state` (PROTOCOL §7): `online` with the session's connect time on
        // connect, and the same session's `offline` as the last will; each
        // (re)connect is a new session with a new time.
        let presence = |state: PresenceState, connect_ms: i64| {
            StateMsg {
                agent: agent.clone(),
                state,
                connect_ms,
            }
            .encode()
        };
        let will = |session_ms: i64| {
            LastWill::new(
                &state_t,
                presence(PresenceState::Offline, session_ms),
                QoS::AtLeastOnce,
                true,
            )
        };
        let mut session_ms = baton_runtime::unix_ms();
        opts.set_last_will(will(session_ms));
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        eventloop.set_network_options(baton_runtime::mqtt::network_options());

        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let gateway_key = config.gateway_key.or(pinned);
        // Clock replies count only under the gateway's key: configured,
        // or pinned (then from the pin on).
        let mut time_key = gateway_key;
        let mut cfg = UplinkConfig::new(
            agent.clone(),
            agent_key,
            gateway_key,
            u64::from_le_bytes(seed),
        );
        cfg.pin_on_first_contact = gateway_key.is_none();
        cfg.software = format!("baton-agent {}", env!("CARGO_PKG_VERSION"));
        cfg.window = config.window;
        cfg.resend_timeout = config.resend_timeout;
        if let Some(b) = &best {
            shared.set_receipt(b);
        }
        let mut uplink = Uplink::new(cfg, best);
        // Commands (PROTOCOL §9) are checked and run on their own task.
        let (coord_tx, coord_rx) = mpsc::channel(crate::coord::QUEUE);
        let coordinator = crate::coord::Coordinator::new(
            agent.clone(),
            &cluster,
            crate::coord::Obeys {
                issuer_keys: config.issuer_keys.clone(),
                gateway_key: config.gateway_key,
                capabilities: config.capabilities.clone(),
                handlers: config.handlers.clone(),
            },
            writer.clone(),
            ledger.clone(),
            Arc::clone(&shared),
            Arc::clone(&clock),
            client.clone(),
        );
        let _coordinator = AbortOnDrop(tokio::spawn(coordinator.run(coord_rx)));
        // Reconnects: 0.5 s doubling to 30 s, equal jitter, reset on ConnAck.
        let backoff = Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            u64::from_le_bytes(seed).rotate_left(17),
        );
        let (pumped_tx, mut pumped) = mpsc::channel(64);
        // Each new session gets its own last will, naming the time it
        // will call itself once the paced reconnect lands.
        let pump = baton_runtime::mqtt::pump(eventloop, backoff, pumped_tx, move |p| match p {
            Polled::Event(event) => Some(Pumped::Event(event)),
            Polled::Lost {
                error,
                retry_in,
                options,
            } => {
                let next_session_ms =
                    baton_runtime::unix_ms() + i64::try_from(retry_in.as_millis()).unwrap_or(0);
                options.set_last_will(will(next_session_ms));
                login.apply(options, None);
                Some(Pumped::Lost {
                    error,
                    next_session_ms,
                })
            }
        });
        tokio::pin!(pump);
        let mut heads = writer.watch();
        let origin = tokio::time::Instant::now();
        // The clock exchange (PROTOCOL §7).
        let mut filter = ClockFilter::new(CLOCK_WINDOW);
        let mut clock_at: Option<tokio::time::Instant> = None;
        let mut clock_samples: u32 = 0;
        let mut clock_ids =
            baton_shared::backoff::SplitMix64::new(u64::from_le_bytes(seed) ^ 0x5eed);
        // wall − monotonic at the last sample: a change is a clock step
        let mut wall_minus_mono: Option<i64> = None;
        loop {
            let wake = uplink
                .poll_timeout()
                .map_or(origin + Duration::from_secs(3600), |d| origin + d);
            tokio::select! {
                () = &mut pump => return,
                () = async {
                    match clock_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    let id = clock_ids.next_u64().to_le_bytes();
                    let t0 = baton_runtime::unix_ms();
                    filter.requested(origin.elapsed(), id, t0);
                    let req = TimeRequest { agent: agent.clone(), id, t0 };
                    let _ = client.try_publish(&time_t, QoS::AtMostOnce, false, req.encode());
                    let next = if clock_samples < CLOCK_FIRST { Duration::from_secs(1) } else { CLOCK_EVERY };
                    clock_at = Some(tokio::time::Instant::now() + next);
                }
                hb = heartbeats.recv() => {
                    match hb {
                        Some(hb) if clock_at.is_some() => {
                            let _ = client.try_publish(&hb_t, QoS::AtMostOnce, false, hb.encode());
                        }
                        Some(_) => {} // not connected: a heartbeat is news or nothing
                        None => return,
                    }
                }
                Some(event) = pumped.recv() => {
                    let now = origin.elapsed();
                    match event {
                        Pumped::Event(Event::Incoming(Packet::ConnAck(_))) => {
                            info!(broker = %broker.host, port = broker.port, "connected to the gateway's broker");
                            shared.connected_now();
                            let _ = client.try_subscribe(&ack_t, QoS::AtLeastOnce);
                            let _ = client.try_subscribe(&nack_t, QoS::AtLeastOnce);
                            let _ = client.try_subscribe(&time_reply_t, QoS::AtMostOnce);
                            let _ = client.try_subscribe(&cmd_t, QoS::AtLeastOnce);
                            clock_samples = 0;
                            clock_at = Some(tokio::time::Instant::now());
                            let _ = client.try_publish(
                                &state_t,
                                QoS::AtLeastOnce,
                                true,
                                presence(PresenceState::Online, session_ms),
                            );
                            uplink.connected(now);
                        }
                        Pumped::Event(Event::Incoming(Packet::Publish(p))) => {
                            if p.topic == ack_t {
                                match Receipt::decode(&p.payload) {
                                    Ok(r) => {
                                        let answered = uplink.handle_receipt(now, &r, &ledger.view(writer.head()));
                                        if answered && let Some(was) = shared.clear_uplink_alert() {
                                            info!(was, "the gateway answers again: uplink alert cleared");
                                        }
                                        if answered && shared.salvage_pending.load(Ordering::Relaxed) {
                                            let head = writer.head();
                                            if r.seq == Seq::ZERO && head.seq == Seq::ZERO {
                                                // The gateway (its signed, nonce-matching answer)
                                                // holds nothing of ours: the chain begins here.
                                                crate::begin_chain(&writer, &shared, config.class.as_deref()).await;
                                                crate::finish_salvage(&writer, &shared, Seq::ZERO).await;
                                            } else if ledger.view(head).hash_at(r.seq) == Some(r.hash) {
                                                // It holds a prefix of what was salvaged in place.
                                                crate::finish_salvage(&writer, &shared, r.seq).await;
                                            }
                                            // Otherwise it is ahead: the adoption finishes it.
                                        }
                                    }
                                    Err(e) => debug!(error = %e, "undecodable receipt dropped"),
                                }
                            } else if p.topic == cmd_t {
                                let delivery = crate::coord::In::Delivery(p.payload.to_vec(), time_key);
                                if coord_tx.try_send(delivery).is_err() {
                                    shared.command_refused("busy");
                                }
                            } else if p.topic == time_reply_t {
                                let t3 = baton_runtime::unix_ms();
                                let step = t3 - i64::try_from(now.as_millis()).unwrap_or(0);
                                if wall_minus_mono.is_some_and(|w| (w - step).abs() > CLOCK_STEP_MS) {
                                    warn!(step_ms = step - wall_minus_mono.unwrap_or(step), "the wall clock stepped: clock samples start over");
                                    filter = ClockFilter::new(CLOCK_WINDOW);
                                    clock.set(None, std::time::Instant::now());
                                    clock_samples = 0;
                                }
                                wall_minus_mono = Some(step);
                                match TimeReply::decode(&p.payload) {
                                    Ok(r) if r.agent != agent => debug!("clock reply for another agent dropped"),
                                    Ok(r) if !time_key.is_some_and(|k| r.verify(&k)) => {
                                        shared.clock_reply_refused();
                                        debug!(gateway = %r.gateway, "clock reply not signed by the gateway's key dropped");
                                    }
                                    Ok(r) => match filter.replied(now, &r, t3) {
                                        Ok(s) => {
                                            clock_samples += 1;
                                            #[allow(clippy::cast_precision_loss)]
                                            shared.rtt(s.rtt_ms as f64);
                                            clock.set(filter.best(now), std::time::Instant::now());
                                        }
                                        Err(e) => debug!(error = %e, "clock reply dropped"),
                                    },
                                    Err(e) => debug!(error = %e, "undecodable clock reply dropped"),
                                }
                            } else if p.topic == nack_t {
                                match Nack::decode(&p.payload) {
                                    Ok(n) => uplink.handle_nack(now, &n),
                                    Err(e) => debug!(error = %e, "undecodable nack dropped"),
                                }
                            }
                        }
                        Pumped::Event(_) => {}
                        Pumped::Lost { error, next_session_ms } => {
                            let why = baton_runtime::mqtt::describe(&error);
                            let was_connected = shared.set_connected_was(false);
                            if shared.connection_error(baton_runtime::unix_ms(), why.clone()) || was_connected {
                                warn!(broker = %broker.host, port = broker.port, error = why, "no session with the gateway's broker; entries stay in the ledger");
                            }
                            uplink.disconnected(now);
                            clock_at = None;
                            session_ms = next_session_ms;
                        }
                    }
                }
                changed = heads.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            let now = origin.elapsed();
            loop {
                let head = writer.head();
                let Some(out) = uplink.poll(now, &ledger.view(head)) else {
                    break;
                };
                match out {
                    Output::Hello(h) => {
                        let _ = client.try_publish(&hello_t, QoS::AtLeastOnce, false, h.encode());
                    }
                    Output::Batch { from, to, proof } => {
                        match ledger.batch(&agent, from, to, proof) {
                            Ok(b) => {
                                shared.batch_sent(to.0);
                                let _ = client.try_publish(
                                    &entries_t,
                                    QoS::AtLeastOnce,
                                    false,
                                    b.encode(),
                                );
                            }
                            Err(e) => {
                                warn!(error = %e, %from, %to, "reading a batch failed");
                                shared.error(baton_runtime::unix_ms(), e.to_string());
                            }
                        }
                    }
                    Output::SignHead { .. } => {
                        if let Err(e) = writer.sign_head().await {
                            shared.error(baton_runtime::unix_ms(), e.to_string());
                        }
                    }
                    Output::StoreBestReceipt(r) => {
                        shared.set_receipt(&r);
                        shared.receipt_covers(r.seq.0);
                        if let Err(e) = writer.store_best(r).await {
                            shared.error(baton_runtime::unix_ms(), e.to_string());
                        }
                    }
                    Output::PinGatewayKey(k) => {
                        info!(key = %k, "pinned the gateway's key on first contact");
                        time_key = Some(k);
                        if let Err(e) = writer.pin_gateway_key(k).await {
                            shared.error(baton_runtime::unix_ms(), e.to_string());
                        }
                    }
                    Output::Adopt(a) => {
                        let reason = if shared.salvage_pending.load(Ordering::Relaxed) {
                            "local_corruption"
                        } else {
                            "gateway_ahead"
                        };
                        warn!(seq = %a.receipt.seq, reason, "adopting the gateway's head (it carries our signature)");
                        match writer
                            .adopt(a.clone(), baton_runtime::unix_ms(), reason)
                            .await
                        {
                            Ok(()) => {
                                uplink.adopted(now, &a);
                                if shared.salvage_pending.load(Ordering::Relaxed) {
                                    crate::finish_salvage(&writer, &shared, a.receipt.seq).await;
                                }
                            }
                            Err(e) => shared.error(baton_runtime::unix_ms(), e.to_string()),
                        }
                    }
                    // Anyone on the broker can send an unsigned reject: it
                    // prompted a hello and is logged, not raised as an alert.
                    Output::Alert(
                        a @ baton_shared::uplink::Alert::UnauthenticatedReject { .. },
                    ) => {
                        warn!(alert = %a, "ignored");
                    }
                    Output::Alert(a) => {
                        warn!(alert = %a, "uplink alert");
                        shared.uplink_alert(a.to_string());
                    }
                }
            }
        }
    }
}

/// What the MQTT pump hands the link.
enum Pumped {
    /// An event of the current session.
    Event(Event),
    /// The session ended; the next one connects after a paced delay and
    /// calls itself `next_session_ms` (its last will says so already).
    Lost {
        error: ConnectionError,
        next_session_ms: i64,
    },
}

/// Aborts its task when dropped (the coordinator ends with the link).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
