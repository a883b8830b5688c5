//! `baton-gateway sim-agents`: many simulated agents in one process, a
//! tool for `simulate` (and anyone sizing a deployment), not the product.
//!
//! Each simulated agent is what a device is to its cluster gateway: a real
//! MQTT connection with its own client id, key and signed login; a chain
//! in memory ([`MemLedger`]) sent by the real [`Uplink`] state machine and
//! pruned as its gateway's receipts cover it; an append every
//! `1 / rate` seconds; a heartbeat every 5 s with the impedance profile of
//! its class (the seed's A–F); and commands taken as an agent takes them —
//! the delivery checked by [`command::accept`] under its gateway's key and
//! the issuer keys it obeys, recorded as a `command` entry, admitted, then
//! after its class's one-way latency and processing (±10%) answered READY
//! with a signed `command_ack` entry of its chain on `cmd/reply`. A
//! delivery it holds already is answered again from its records, never
//! run twice. Its clock is the box's off by an injected skew (uniform
//! within ±`clock_skew`), corrected by the clock exchange with its gateway
//! as an agent runs it (PROTOCOL §7: a signed reply checked under the
//! gateway's key, the lowest-RTT sample of two minutes); it stamps entries,
//! commands and answers in that corrected time (a `MemLedger` entry has no
//! `clock` field to carry the offset) and reports the offset in its
//! heartbeats.
//!
//! Told to stop, an agent stops appending, waits (at most `drain`) until
//! its gateway's receipts cover its head, and the process prints one JSON
//! line per agent: `{"agent","head","receipted"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use baton_shared::clock::ClockFilter;
use baton_shared::command::{self, Answer, State};
use baton_shared::json::Value;
use baton_shared::memory::MemLedger;
use baton_shared::topic::{self, Kind};
use baton_shared::uplink::{Ledger, Uplink, UplinkConfig};
use baton_shared::wire::{
    ClockEstimate, CommandDelivery, CommandReply, Message, TimeReply, TimeRequest,
};
use baton_shared::{AgentId, Hash, PublicKey, Seq};
use rumqttc::QoS;
use tokio::time::Instant;

use crate::coord_bench::{CLASSES, JITTER, Rng};
use crate::fleet_bench::{heartbeat, sim_key};
use crate::publisher::Link;

/// A cluster the simulated agents are spread over.
#[derive(Debug, Clone)]
pub struct SimCluster {
    pub name: String,
    pub broker: SocketAddr,
    pub gateway_key: PublicKey,
}

/// What to simulate: agents `first..first + count`, agent `i` in cluster
/// `i % clusters.len()`.
#[derive(Debug, Clone)]
pub struct SimArgs {
    pub first: usize,
    pub count: usize,
    pub clusters: Vec<SimCluster>,
    /// The keys whose commands the agents obey (the top's).
    pub issuer_keys: Vec<PublicKey>,
    /// Entries appended per agent per second.
    pub rate: f64,
    /// Turns true when the agents are to stop appending.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// After the stop, how long an agent waits for its last receipt.
    pub drain: Duration,
    /// Each agent's clock is off by a uniform amount within ± this.
    pub clock_skew: Duration,
}

/// A simulated agent's clock: the box's, off by `skew_ms`, corrected by
/// the exchange with its gateway.
struct SimClock {
    skew_ms: i64,
    filter: ClockFilter,
    ids: baton_shared::backoff::SplitMix64,
    samples: u32,
    next: Instant,
}

/// As the agent: a request a second until three samples are in, then one
/// every ten seconds.
const CLOCK_FIRST: u32 = 3;
const CLOCK_EVERY: Duration = Duration::from_secs(10);

impl SimClock {
    fn local_ms(&self) -> i64 {
        baton_runtime::unix_ms() + self.skew_ms
    }

    /// The gateway's time as this agent has it (its own before a sample).
    fn corrected_ms(&self, now: Duration) -> i64 {
        self.local_ms() + self.filter.best(now).map_or(0, |s| s.offset_ms)
    }

    fn estimate(&self, now: Duration) -> Option<ClockEstimate> {
        self.filter.best(now).map(|s| ClockEstimate {
            offset_ms: s.offset_ms,
            rtt_ms: s.rtt_ms,
            synced: true,
        })
    }

    /// The next request; schedules the one after.
    fn request(&mut self, now: Duration, agent: &AgentId) -> TimeRequest {
        let id = self.ids.next_u64().to_le_bytes();
        let t0 = self.local_ms();
        self.filter.requested(now, id, t0);
        self.next = Instant::now()
            + if self.samples < CLOCK_FIRST {
                Duration::from_secs(1)
            } else {
                CLOCK_EVERY
            };
        TimeRequest {
            agent: agent.clone(),
            id,
            t0,
        }
    }

    /// A reply: counted only under the gateway's key and for this agent.
    fn reply(&mut self, now: Duration, payload: &[u8], agent: &AgentId, key: &PublicKey) {
        let t3 = self.local_ms();
        if let Ok(r) = TimeReply::decode(payload)
            && r.agent == *agent
            && r.verify(key)
            && self.filter.replied(now, &r, t3).is_ok()
        {
            self.samples += 1;
        }
    }
}

/// How one simulated agent ended.
#[derive(Debug, Clone)]
pub struct SimEnd {
    pub agent: AgentId,
    pub head: Seq,
    pub receipted: Seq,
}

/// The name of simulated agent `i`.
pub(crate) fn sim_name(i: usize) -> String {
    format!("sim-{i}")
}

/// The cluster of agent `i` among `clusters` (the runner enrolls by it).
pub(crate) fn cluster_index(i: usize, clusters: usize) -> usize {
    i % clusters.max(1)
}

/// Runs every agent; connects them 200 at a time, 20 ms apart, so that a
/// broker's accept queue is never the first thing measured.
pub async fn run(args: SimArgs) -> anyhow::Result<Vec<SimEnd>> {
    anyhow::ensure!(!args.clusters.is_empty(), "no cluster to connect to");
    let mut tasks = Vec::with_capacity(args.count);
    for i in args.first..args.first + args.count {
        let cluster = args.clusters[cluster_index(i, args.clusters.len())].clone();
        let a = args.clone();
        tasks.push(tokio::spawn(async move { agent(i, &cluster, &a).await }));
        if (i - args.first) % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut ends = Vec::with_capacity(tasks.len());
    for t in tasks {
        ends.push(t.await??);
    }
    Ok(ends)
}

/// A command taken: the answer entry to repeat, or when to answer.
enum Taken {
    Answered(baton_shared::Entry),
    Due(Instant),
}

#[allow(clippy::too_many_lines)]
async fn agent(i: usize, cluster: &SimCluster, args: &SimArgs) -> anyhow::Result<SimEnd> {
    let agent = AgentId::new(sim_name(i))?;
    let mut ledger = MemLedger::genesis(agent.clone(), sim_key(i), baton_runtime::unix_ms(), 64)?;
    // (genesis in the box's time: before the first clock sample)
    let mut link = Link::connect(cluster.broker, &ledger)?;
    let mut cfg = UplinkConfig::new(
        agent.clone(),
        ledger.key().public(),
        Some(cluster.gateway_key),
        i as u64,
    );
    cfg.window = 4;
    let mut uplink = Uplink::new(cfg, None);
    let (name, rtt, processing) = CLASSES[i % CLASSES.len()];
    let class = format!("CLASS_{name}");
    let cmd_t = topic::agent(&cluster.name, &agent, Kind::Cmd);
    let reply_t = topic::agent(&cluster.name, &agent, Kind::CmdReply);
    let hb_t = topic::agent(&cluster.name, &agent, Kind::Hb);
    let time_t = topic::agent(&cluster.name, &agent, Kind::Time);
    let time_reply_t = topic::agent(&cluster.name, &agent, Kind::TimeReply);
    let mut rng = Rng(i as u64 ^ 0x51u64);
    let origin = Instant::now();
    #[allow(clippy::cast_possible_truncation)]
    let mut clock = SimClock {
        skew_ms: (args.clock_skew.as_secs_f64() * 1000.0 * (2.0 * rng.unit() - 1.0)).round() as i64,
        filter: ClockFilter::new(Duration::from_secs(120)),
        ids: baton_shared::backoff::SplitMix64::new(i as u64 ^ 0xc10c),
        samples: 0,
        next: origin,
    };
    let mut stop = args.stop.clone();
    // far off until told to stop
    let mut stop_appending = origin + Duration::from_secs(365 * 24 * 3600);
    let mut give_up = stop_appending;
    let every = if args.rate > 0.0 {
        Duration::from_secs_f64(1.0 / args.rate)
    } else {
        Duration::MAX
    };
    // spread over one period, so the fleet's appends and beats are even
    let mut next_append = origin + every.min(Duration::from_secs(3600)).mul_f64(rng.unit());
    let mut next_beat = origin + Duration::from_millis((i as u64 * 37) % 5000);
    let mut commands: HashMap<Hash, (Taken, Answer)> = HashMap::new();
    let mut alerts = Vec::new();
    let mut subscribed = false;
    loop {
        let now = Instant::now();
        let mono = origin.elapsed();
        while now >= next_append && now < stop_appending {
            let n = ledger.head().0;
            ledger.append(clock.corrected_ms(mono), "info", None, Value::from(n))?;
            next_append += every;
        }
        if subscribed && now >= clock.next {
            let req = clock.request(mono, &agent);
            let _ = link
                .client
                .try_publish(&time_t, QoS::AtMostOnce, false, req.encode());
        }
        if now >= next_beat {
            let mut hb = heartbeat(&agent, clock.corrected_ms(mono));
            hb.clock = clock.estimate(mono);
            #[allow(clippy::cast_possible_truncation)]
            {
                hb.impedance.latency_p50_ms = rtt as f32;
                hb.impedance.processing_p50_ms = processing as f32;
                hb.impedance.jitter = JITTER as f32;
            }
            hb.system.class.clone_from(&class);
            hb.head_seq = ledger.head();
            hb.receipted_seq = uplink.best().map_or(Seq::ZERO, |r| r.seq);
            hb.backlog = hb.head_seq.0 - hb.receipted_seq.0;
            let _ = link
                .client
                .try_publish(&hb_t, QoS::AtMostOnce, false, hb.encode());
            next_beat += Duration::from_secs(5);
        }
        // answers falling due: recorded, signed, published
        for (taken, answer) in commands.values_mut() {
            if let Taken::Due(at) = taken
                && now >= *at
            {
                let at = clock.corrected_ms(mono);
                answer.ready_ms = Some(at);
                ledger.append(at, "command_ack", None, answer.to_data())?;
                ledger.sign_head();
                let e = newest(&ledger)?;
                let reply = CommandReply {
                    agent: agent.clone(),
                    entry: e.clone(),
                };
                let _ = link
                    .client
                    .try_publish(&reply_t, QoS::AtLeastOnce, false, reply.encode());
                *taken = Taken::Answered(e);
            }
        }
        // what the uplink asks for now: appends just made go out at once,
        // not with the next event
        link.drain(
            origin.elapsed(),
            &cluster.name,
            &mut uplink,
            &mut ledger,
            &mut alerts,
        )?;
        let receipted = uplink.best().map_or(Seq::ZERO, |r| r.seq);
        ledger.prune_through(receipted);
        let answering = commands.values().any(|(t, _)| matches!(t, Taken::Due(_)));
        if now >= stop_appending && !answering && (receipted == ledger.head() || now >= give_up) {
            return Ok(SimEnd {
                agent,
                head: ledger.head(),
                receipted,
            });
        }
        let mut wake = uplink
            .poll_timeout()
            .map_or(give_up, |t| origin + t)
            .min(give_up)
            .min(next_beat)
            .min(clock.next);
        if next_append < stop_appending {
            wake = wake.min(next_append);
        }
        for (t, _) in commands.values() {
            if let Taken::Due(at) = t {
                wake = wake.min(*at);
            }
        }
        tokio::select! {
            Some(event) = link.events.recv() => {
                let connected = matches!(
                    event,
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))
                );
                let other = link.take(origin.elapsed(), event, &cluster.name, &mut uplink, &ledger)?;
                if connected || !subscribed {
                    subscribed = link.client.try_subscribe(&cmd_t, QoS::AtLeastOnce).is_ok()
                        && link.client.try_subscribe(&time_reply_t, QoS::AtMostOnce).is_ok();
                }
                if let Some(p) = other.as_ref().filter(|p| p.topic == time_reply_t) {
                    clock.reply(origin.elapsed(), &p.payload, &agent, &cluster.gateway_key);
                }
                if let Some(p) = other.filter(|p| p.topic == cmd_t) {
                    let delay = rng.around(rtt / 2.0, JITTER) + rng.around(processing, JITTER);
                    take_delivery(
                        &p.payload,
                        cluster,
                        args,
                        (
                            clock.corrected_ms(origin.elapsed()),
                            Duration::from_secs_f64(delay / 1000.0),
                        ),
                        &mut ledger,
                        &mut commands,
                        |e| {
                            let reply = CommandReply { agent: agent.clone(), entry: e };
                            let _ = link.client.try_publish(
                                &reply_t,
                                QoS::AtLeastOnce,
                                false,
                                reply.encode(),
                            );
                        },
                    )?;
                }
            }
            Ok(()) = stop.changed(), if now < stop_appending => {
                stop_appending = Instant::now();
                give_up = stop_appending + args.drain;
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// A delivery, as the agent takes it: refused (dropped) unless it checks
/// out; known by hash → the recorded answer again; new → recorded as a
/// `command` entry and admitted: a conflict answered at once, else READY
/// due after `delay`. `received` is (the delivery's arrival in the
/// agent's corrected time, its delay to READY).
fn take_delivery(
    payload: &[u8],
    cluster: &SimCluster,
    args: &SimArgs,
    (received_ms, delay): (i64, Duration),
    ledger: &mut MemLedger,
    commands: &mut HashMap<Hash, (Taken, Answer)>,
    publish: impl Fn(baton_shared::Entry),
) -> anyhow::Result<()> {
    let Ok(d) = CommandDelivery::decode(payload) else {
        return Ok(());
    };
    let Ok(c) = command::accept(
        &d.presented(),
        ledger.agent(),
        &cluster.gateway_key,
        &args.issuer_keys,
    ) else {
        return Ok(());
    };
    if let Some((taken, _)) = commands.get(&c.hash) {
        if let Taken::Answered(e) = taken {
            publish(e.clone());
        }
        return Ok(());
    }
    let data = command::command_data(
        &c,
        &d.origin_sig,
        d.sender.as_str(),
        &d.sender_sig,
        received_ms,
    );
    ledger.append(received_ms, "command", None, data)?;
    if let Err(kind) = c.admit(received_ms, true, false) {
        let answer = Answer::conflict(c.hash, received_ms, kind, kind.as_str());
        ledger.append(received_ms, "command_ack", None, answer.to_data())?;
        ledger.sign_head();
        let e = newest(ledger)?;
        publish(e.clone());
        commands.insert(c.hash, (Taken::Answered(e), answer));
        return Ok(());
    }
    let answer = Answer {
        hash: c.hash,
        state: State::Ready,
        received_ms,
        ready_ms: None,
        processing_ms: Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
        conflict: None,
        result: None,
    };
    commands.insert(c.hash, (Taken::Due(Instant::now() + delay), answer));
    Ok(())
}

/// The entry just appended (and signed).
fn newest(ledger: &MemLedger) -> anyhow::Result<baton_shared::Entry> {
    let head = ledger.head();
    ledger
        .range(head, head)
        .pop()
        .ok_or_else(|| anyhow::anyhow!("{}: entry {head} is not held", ledger.agent()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn clock(skew_ms: i64) -> SimClock {
        SimClock {
            skew_ms,
            filter: ClockFilter::new(Duration::from_secs(120)),
            ids: baton_shared::backoff::SplitMix64::new(7),
            samples: 0,
            next: Instant::now(),
        }
    }

    /// The gateway's answer to `req`, taken at the box's true time.
    fn answer(key: &baton_shared::SecretKey, req: &TimeRequest) -> Vec<u8> {
        let gw = AgentId::new("gw-c0").unwrap();
        let t = baton_runtime::unix_ms();
        TimeReply::sign(key, &gw, req, t, t).encode()
    }

    #[test]
    fn a_skewed_clock_is_corrected_by_its_gateways_signed_reply_only() {
        let agent = AgentId::new("sim-1").unwrap();
        let gateway = sim_key(1_000_001);
        let forger = sim_key(1_000_002);
        let mut c = clock(900);
        let now = Duration::from_secs(1);
        assert!((c.corrected_ms(now) - baton_runtime::unix_ms() - 900).abs() < 50);

        // a reply under another key changes nothing
        let req = c.request(now, &agent);
        c.reply(now, &answer(&forger, &req), &agent, &gateway.public());
        assert_eq!(c.samples, 0);
        assert!(c.estimate(now).is_none());

        // the gateway's own: the offset is the skew, the time corrected
        let req = c.request(now, &agent);
        c.reply(now, &answer(&gateway, &req), &agent, &gateway.public());
        assert_eq!(c.samples, 1);
        let e = c.estimate(now).unwrap();
        assert!((e.offset_ms + 900).abs() < 50, "offset {}", e.offset_ms);
        assert!((c.corrected_ms(now) - baton_runtime::unix_ms()).abs() < 50);
    }
}
