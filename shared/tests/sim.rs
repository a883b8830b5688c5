//! Seeded simulation of agents' uplinks and a gateway's intake.
//!
//! The link drops, duplicates, reorders and delays messages (all encoded
//! and decoded with the real wire format); agents and the gateway crash and
//! lose their volatile state (uplink, intake, uncommitted entries) while
//! durable state (ledger, best receipt, stored chain, fork halts) survives;
//! links flap; devices are restored from older images (rule 3c); the
//! gateway's disk loses its tail (rule 3b). Safety is checked at every
//! step, liveness once the faults stop.
//!
//! `BATON_SIM_SEEDS=N` runs more seeds; `BATON_SIM_SEED=S` replays one.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use baton_shared::backoff::SplitMix64;
use baton_shared::crypto::{Hash, SecretKey};
use baton_shared::entry::Seq;
use baton_shared::id::AgentId;
use baton_shared::intake::{Answer, Enrollment, Head, Intake, IntakeConfig, Verdict};
use baton_shared::json::{Object, Value};
use baton_shared::memory::{Layered, MemChain, MemLedger};
use baton_shared::uplink::{Alert, BatchLimits, Ledger, Output, Uplink, UplinkConfig};
use baton_shared::verify::{Verdict as Verified, Verifier};
use baton_shared::wire::{EntryBatch, Hello, Message, Nack, Receipt};

const TICK: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Node {
    Gateway,
    Agent(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Topic {
    Hello,
    Entries,
    Ack,
    Nack,
}

#[derive(Debug)]
struct Msg {
    at: Duration,
    to: Node,
    agent: usize,
    /// The agent's connection epoch when sent: a message of an older
    /// session is lost with that session.
    epoch: u64,
    topic: Topic,
    payload: Vec<u8>,
}

/// Fault rates, per mille.
#[derive(Clone, Copy, Debug)]
struct Faults {
    drop: u64,
    dup: u64,
    max_delay_ms: u64,
    agent_crash: u64,
    link_flap: u64,
    gateway_crash: u64,
    restore_image: u64,
    disk_loss: u64,
}

struct SimAgent {
    ledger: MemLedger,
    uplink: Option<Uplink>,
    link: bool,
    epoch: u64,
    appends_left: u64,
    next_append: Duration,
    back_at: Option<Duration>,
    link_back_at: Option<Duration>,
    /// An older image of the ledger to restore on the next restart.
    snapshot: Option<MemLedger>,
    restore_pending: bool,
    /// Restored from an older image at least once.
    restored: bool,
    /// Calm phase: the next periodic `heartbeat_summary` append.
    next_summary: Duration,
    alerts: Vec<Alert>,
}

struct SimGateway {
    up: bool,
    back_at: Option<Duration>,
    // durable
    chains: Vec<MemChain>,
    halted: Vec<Option<Seq>>,
    gaps: Vec<Vec<(Seq, Seq)>>,
    // volatile
    intakes: Vec<Option<Intake>>,
    pending: Vec<BTreeMap<u64, baton_shared::Entry>>,
    pending_hashes: Vec<BTreeMap<u64, Hash>>,
    answer_after_commit: Vec<bool>,
    commit_at: Option<Duration>,
}

struct World {
    seed: u64,
    now: Duration,
    rng: SplitMix64,
    faults: Faults,
    net: Vec<Msg>,
    agents: Vec<SimAgent>,
    gw: SimGateway,
    gw_id: AgentId,
    gw_key: SecretKey,
    agent_keys: Vec<SecretKey>,
    data_lost: bool,
    violations: Vec<String>,
}

fn agent_id(i: usize) -> AgentId {
    AgentId::new(format!("agent-{i}")).unwrap()
}

impl World {
    fn new(seed: u64, agents: usize, entries: u64, faults: Faults) -> World {
        let mut rng = SplitMix64::new(seed);
        let gw_key = SecretKey::from_seed(&[0xee; 32]);
        let agent_keys: Vec<SecretKey> = (0..agents)
            .map(|i| SecretKey::from_seed(&[i as u8 + 1; 32]))
            .collect();
        let mut sim_agents = Vec::new();
        for (i, key) in agent_keys.iter().enumerate() {
            let mut ledger = MemLedger::new(agent_id(i), key.clone());
            ledger.checkpoint_every = 1 + rng.below(8) as usize;
            ledger
                .append(0, "genesis", None, Value::Object(Object::new()))
                .unwrap();
            sim_agents.push(SimAgent {
                ledger,
                uplink: None,
                link: true,
                epoch: 0,
                appends_left: entries,
                next_append: Duration::from_millis(rng.below(50)),
                back_at: Some(Duration::ZERO),
                link_back_at: None,
                snapshot: None,
                restore_pending: false,
                restored: false,
                next_summary: Duration::ZERO,
                alerts: Vec::new(),
            });
        }
        let n = agents;
        let mut w = World {
            seed,
            now: Duration::ZERO,
            rng,
            faults,
            net: Vec::new(),
            agents: sim_agents,
            gw: SimGateway {
                up: false,
                back_at: Some(Duration::ZERO),
                chains: vec![MemChain::default(); n],
                halted: vec![None; n],
                gaps: vec![Vec::new(); n],
                intakes: (0..n).map(|_| None).collect(),
                pending: vec![BTreeMap::new(); n],
                pending_hashes: vec![BTreeMap::new(); n],
                answer_after_commit: vec![false; n],
                commit_at: None,
            },
            gw_id: AgentId::new("gw").unwrap(),
            gw_key,
            agent_keys,
            data_lost: false,
            violations: Vec::new(),
        };
        w.step_restarts();
        w
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        per_mille > 0 && self.rng.below(1000) < per_mille
    }

    fn send(&mut self, to: Node, agent: usize, topic: Topic, payload: Vec<u8>) {
        let a = &self.agents[agent];
        if !a.link || (to == Node::Gateway && a.uplink.is_none()) {
            return;
        }
        if to == Node::Gateway && !self.gw.up {
            return;
        }
        let epoch = a.epoch;
        if self.chance(self.faults.drop) {
            return;
        }
        let copies = if self.chance(self.faults.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(self.faults.max_delay_ms.max(1));
            self.net.push(Msg {
                at: self.now + Duration::from_millis(delay),
                to,
                agent,
                epoch,
                topic,
                payload: payload.clone(),
            });
        }
    }

    fn uplink_cfg(&mut self, i: usize) -> UplinkConfig {
        let mut cfg = UplinkConfig::new(
            agent_id(i),
            self.agent_keys[i].public(),
            Some(self.gw_key.public()),
            self.seed ^ (i as u64) << 32 ^ self.rng.next_u64(),
        );
        cfg.window = 1 + self.rng.below(4) as usize;
        cfg.limits = BatchLimits {
            max_entries: 1 + self.rng.below(12) as usize,
            max_bytes: 16 * 1024,
        };
        cfg.resend_timeout = Duration::from_millis(150);
        cfg.idle_hello = Some(Duration::from_millis(1000));
        cfg.backoff_min = Duration::from_millis(20);
        cfg.backoff_max = Duration::from_millis(400);
        cfg
    }

    fn intake_for(&self, i: usize) -> Intake {
        let chain = &self.gw.chains[i];
        let durable = match chain.head() {
            Some((seq, e)) => Head {
                seq,
                hash: e.hash,
                sig: e.sig,
            },
            None => Head::EMPTY,
        };
        Intake::new(
            IntakeConfig {
                gateway: self.gw_id.clone(),
                gateway_key: self.gw_key.public(),
                resend_timeout: Duration::from_millis(150),
            },
            Enrollment {
                agent: agent_id(i),
                key: self.agent_keys[i].public(),
                start_seq: None,
                revoked_from_seq: None,
            },
            durable,
            self.gw.halted[i],
        )
    }

    // ------------------------------------------------------------ faults

    fn step_faults(&mut self) {
        let f = self.faults;
        for i in 0..self.agents.len() {
            if self.agents[i].uplink.is_some() && self.chance(f.agent_crash) {
                let down = 20 + self.rng.below(300);
                self.crash_agent(i, down);
            } else if self.agents[i].uplink.is_some() && self.chance(f.restore_image) {
                // Power off, reflash an older image, boot: long enough that
                // nothing of the old incarnation is still in flight.
                self.agents[i].restore_pending = self.agents[i].snapshot.is_some();
                let down = 500 + self.rng.below(500);
                self.crash_agent(i, down);
            } else if self.agents[i].link && self.chance(f.link_flap) {
                let a = &mut self.agents[i];
                a.link = false;
                a.epoch += 1;
                if let Some(u) = a.uplink.as_mut() {
                    u.disconnected(self.now);
                }
                let back = self.now + Duration::from_millis(10 + self.rng.below(300));
                self.agents[i].link_back_at = Some(back);
            }
            if self.rng.below(1000) < 5 {
                self.agents[i].snapshot = Some(self.agents[i].ledger.clone());
            }
        }
        if self.gw.up && self.chance(f.gateway_crash) {
            self.gw.up = false;
            // volatile state is gone; messages queued for it too
            for i in 0..self.agents.len() {
                self.gw.intakes[i] = None;
                self.gw.pending[i].clear();
                self.gw.pending_hashes[i].clear();
                self.gw.answer_after_commit[i] = false;
            }
            self.gw.commit_at = None;
            self.net.retain(|m| m.to != Node::Gateway);
            if self.chance(f.disk_loss) {
                // The store loses whole commits (a disk restored from an
                // older backup): it keeps a prefix ending at a batch end,
                // which is always a signed entry.
                for i in 0..self.agents.len() {
                    let ends: Vec<u64> = self.gw.chains[i]
                        .entries
                        .iter()
                        .filter(|(_, e)| e.sig.is_some())
                        .map(|(s, _)| *s)
                        .collect();
                    if ends.is_empty() {
                        continue;
                    }
                    let pick = self.rng.below(ends.len() as u64 + 1) as usize;
                    let keep = if pick == 0 { 0 } else { ends[pick - 1] };
                    self.gw.chains[i].truncate_after(Seq(keep));
                    self.data_lost = true;
                }
            }
            self.gw.back_at = Some(self.now + Duration::from_millis(20 + self.rng.below(400)));
        }
    }

    fn crash_agent(&mut self, i: usize, down_ms: u64) {
        let a = &mut self.agents[i];
        a.uplink = None;
        a.epoch += 1;
        a.back_at = Some(self.now + Duration::from_millis(down_ms));
    }

    fn step_restarts(&mut self) {
        let now = self.now;
        for i in 0..self.agents.len() {
            if self.agents[i].back_at.is_some_and(|t| now >= t) {
                self.agents[i].back_at = None;
                if self.agents[i].restore_pending {
                    let old = self.agents[i].snapshot.take().unwrap();
                    self.agents[i].ledger = old;
                    self.agents[i].restore_pending = false;
                    self.agents[i].restored = true;
                }
                let cfg = self.uplink_cfg(i);
                let best = self.agents[i].ledger.best.clone();
                let mut u = Uplink::new(cfg, best);
                if self.agents[i].link {
                    u.connected(now);
                }
                self.agents[i].uplink = Some(u);
            }
            if self.agents[i].link_back_at.is_some_and(|t| now >= t) {
                let a = &mut self.agents[i];
                a.link_back_at = None;
                a.link = true;
                if let Some(u) = a.uplink.as_mut() {
                    u.connected(now);
                }
            }
        }
        if !self.gw.up && self.gw.back_at.is_some_and(|t| now >= t) {
            self.gw.up = true;
            self.gw.back_at = None;
            for i in 0..self.agents.len() {
                self.gw.intakes[i] = Some(self.intake_for(i));
                // rule 3: on start, the current receipt to every known agent
                self.publish_receipt(i);
            }
        }
    }

    // ------------------------------------------------------------ gateway

    fn publish_receipt(&mut self, i: usize) {
        let Some(intake) = &self.gw.intakes[i] else {
            return;
        };
        let r = intake.receipt(&self.gw_key).encode();
        self.send(Node::Agent(i), i, Topic::Ack, r);
    }

    fn gw_receive(&mut self, m: Msg) {
        let i = m.agent;
        let now = self.now;
        match m.topic {
            Topic::Hello => {
                let Ok(hello) = Hello::decode(&m.payload) else {
                    self.violations.push("hello did not decode".into());
                    return;
                };
                let answer = self.gw.intakes[i]
                    .as_ref()
                    .map(|intake| intake.answer_hello(&hello, &self.gw_key));
                match answer {
                    Some(Ok(r)) => self.send(Node::Agent(i), i, Topic::Ack, r.encode()),
                    Some(Err(kind)) => self.send_nack(i, kind),
                    None => {}
                }
            }
            Topic::Entries => {
                let Ok(batch) = EntryBatch::decode(&m.payload) else {
                    self.violations.push("batch did not decode".into());
                    return;
                };
                let Some(intake) = self.gw.intakes[i].as_mut() else {
                    return;
                };
                let view = Layered {
                    durable: &self.gw.chains[i],
                    pending: &self.gw.pending_hashes[i],
                };
                let verdict = intake.handle_batch(now, &batch, &view);
                match &verdict {
                    Verdict::Accepted {
                        first,
                        entries,
                        gap,
                    } => {
                        for (k, e) in entries.iter().enumerate() {
                            let seq = first.0 + k as u64;
                            self.gw.pending_hashes[i].insert(seq, e.hash);
                            if self.gw.pending[i].insert(seq, e.clone()).is_some() {
                                self.violations
                                    .push(format!("agent {i}: seq {seq} accepted twice"));
                            }
                        }
                        if let Some(g) = gap {
                            self.gw.gaps[i].push(*g);
                        }
                        self.gw.answer_after_commit[i] = true;
                        if self.gw.commit_at.is_none() {
                            let d = self.rng.below(20);
                            self.gw.commit_at = Some(now + Duration::from_millis(d));
                        }
                    }
                    Verdict::Fork { seq, .. } => {
                        self.gw.halted[i] = Some(*seq);
                        self.violations
                            .push(format!("agent {i}: fork at {seq} from an honest agent"));
                    }
                    Verdict::Rejected {
                        reason,
                        seq,
                        detail,
                    } => self.violations.push(format!(
                        "agent {i}: honest batch rejected ({reason} at {seq}: {detail})"
                    )),
                    _ => {}
                }
                match verdict.answer() {
                    Answer::Receipt if !matches!(verdict, Verdict::Accepted { .. }) => {
                        self.publish_receipt(i)
                    }
                    Answer::Receipt => {}
                    Answer::Nack(kind) => self.send_nack(i, kind),
                }
            }
            Topic::Ack | Topic::Nack => unreachable!(),
        }
    }

    fn send_nack(&mut self, i: usize, kind: baton_shared::wire::NackKind) {
        let nack = Nack::new(&self.gw_id, &agent_id(i), kind);
        self.send(Node::Agent(i), i, Topic::Nack, nack.encode());
    }

    /// One group commit: every agent's accepted entries become durable,
    /// then (only then) the receipts go out.
    fn gw_commit(&mut self) {
        self.gw.commit_at = None;
        for i in 0..self.agents.len() {
            let pending = std::mem::take(&mut self.gw.pending[i]);
            self.gw.pending_hashes[i].clear();
            for (seq, e) in pending {
                let clashes = self.gw.chains[i].insert(Seq(seq), std::slice::from_ref(&e));
                if !clashes.is_empty() {
                    self.violations
                        .push(format!("agent {i}: seq {seq} stored twice"));
                }
            }
            if let Some(intake) = self.gw.intakes[i].as_mut() {
                let head = intake.accepted_head().seq;
                intake.committed(head);
            }
            if std::mem::take(&mut self.gw.answer_after_commit[i]) {
                self.publish_receipt(i);
            }
        }
    }

    // ------------------------------------------------------------ agents

    fn agent_receive(&mut self, m: Msg) {
        let i = m.agent;
        let now = self.now;
        let a = &mut self.agents[i];
        let Some(u) = a.uplink.as_mut() else { return };
        match m.topic {
            Topic::Ack => match Receipt::decode(&m.payload) {
                Ok(r) => {
                    u.handle_receipt(now, &r, &a.ledger);
                }
                Err(e) => self.violations.push(format!("receipt did not decode: {e}")),
            },
            Topic::Nack => match Nack::decode(&m.payload) {
                Ok(n) => u.handle_nack(now, &n),
                Err(e) => self.violations.push(format!("nack did not decode: {e}")),
            },
            _ => unreachable!(),
        }
    }

    fn step_agent(&mut self, i: usize, appending: bool, periodic: bool) {
        let now = self.now;
        if self.agents[i].uplink.is_none() {
            return;
        }
        // A real agent appends a heartbeat_summary every few minutes; that
        // is what carries the rule-3b proof to a gateway that lost entries
        // the agent already pruned (a gap is recorded only with a batch).
        if periodic && now >= self.agents[i].next_summary {
            let ms = i64::try_from(now.as_millis()).unwrap();
            self.agents[i]
                .ledger
                .append(ms, "heartbeat_summary", None, Value::Null)
                .unwrap();
            self.agents[i].next_summary = now + Duration::from_millis(2000);
        }
        if appending && self.agents[i].appends_left > 0 && now >= self.agents[i].next_append {
            let n = self.agents[i].appends_left;
            let data = Value::from(n);
            let ms = i64::try_from(now.as_millis()).unwrap();
            self.agents[i]
                .ledger
                .append(ms, "info", Some("sim"), data)
                .unwrap();
            self.agents[i].appends_left -= 1;
            self.agents[i].next_append = now + Duration::from_millis(self.rng.below(40));
        }
        if self.rng.below(1000) < 20 {
            // retention 0: prune what the best receipt covers
            let a = &mut self.agents[i];
            let upto = a.ledger.best.as_ref().map_or(Seq::ZERO, |b| b.seq);
            a.ledger.prune_through(upto);
        }
        loop {
            let a = &mut self.agents[i];
            let Some(u) = a.uplink.as_mut() else { return };
            let Some(out) = u.poll(now, &a.ledger) else {
                break;
            };
            match out {
                Output::Hello(h) => self.send(Node::Gateway, i, Topic::Hello, h.encode()),
                Output::Batch { from, to, proof } => {
                    let batch = self.agents[i].ledger.batch(from, to, proof);
                    if batch.entries.is_empty() {
                        self.violations
                            .push(format!("agent {i}: asked to send {from}..{to}, none held"));
                        continue;
                    }
                    self.send(Node::Gateway, i, Topic::Entries, batch.encode());
                }
                Output::SignHead { .. } => a.ledger.sign_head(),
                Output::StoreBestReceipt(r) => a.ledger.best = Some(r),
                Output::PinGatewayKey(_) => {}
                Output::Adopt(adoption) => {
                    let ms = i64::try_from(now.as_millis()).unwrap();
                    a.ledger.adopt(&adoption, ms).unwrap();
                    u.adopted(now, &adoption);
                }
                Output::Alert(alert) => a.alerts.push(alert),
            }
        }
    }

    // ------------------------------------------------------------ checks

    fn check_safety(&mut self, final_check: bool) {
        for i in 0..self.agents.len() {
            let chain = &self.gw.chains[i];
            // the stored chain links, with holes only where a gap is recorded
            let mut prev: Option<(u64, Hash)> = None;
            for (&seq, e) in &chain.entries {
                match prev {
                    None if seq == 1 && e.prev != Hash::ZERO => {
                        self.violations.push(format!("agent {i}: genesis prev"));
                    }
                    Some((p, h)) if p + 1 == seq && e.prev != h => {
                        self.violations
                            .push(format!("agent {i}: stored {seq} does not link"));
                    }
                    _ => {}
                }
                let hole_from = prev.map_or(1, |(p, _)| p + 1);
                if hole_from < seq {
                    let covered = self.gw.gaps[i]
                        .iter()
                        .any(|(f, t)| f.0 <= hole_from && t.0 >= seq - 1);
                    if !covered {
                        self.violations.push(format!(
                            "agent {i}: stored hole {hole_from}..{} with no gap",
                            seq - 1
                        ));
                    }
                }
                prev = Some((seq, e.hash));
            }
            // every receipt that counted is held (or named in a gap)
            let a = &self.agents[i];
            if let Some(best) = &a.ledger.best
                && best.seq > Seq::ZERO
                && (!self.data_lost || final_check)
            {
                let held = chain.entries.get(&best.seq.0).map(|e| e.hash);
                let in_gap = self.gw.gaps[i]
                    .iter()
                    .any(|(f, t)| *f <= best.seq && best.seq <= *t);
                if held != Some(best.hash) && !in_gap {
                    self.violations.push(format!(
                        "agent {i}: receipted seq {} is not at the gateway ({held:?})",
                        best.seq
                    ));
                }
            }
            // the sender never discarded an unreceipted entry
            let best_seq = a.ledger.best.as_ref().map_or(Seq::ZERO, |b| b.seq);
            if a.ledger.oldest() > best_seq.next() {
                self.violations.push(format!(
                    "agent {i}: pruned to {} past best receipt {best_seq}",
                    a.ledger.oldest()
                ));
            }
            // Expected alerts: data loss after the gateway lost its disk's
            // tail; receipts naming another history after a device was
            // restored from an older image (rule 2: they change nothing).
            let unexpected: Vec<&Alert> = a
                .alerts
                .iter()
                .filter(|al| match al {
                    Alert::GatewayDataLoss { .. } => !self.data_lost,
                    Alert::ReceiptMismatch { .. } => !a.restored,
                    _ => true,
                })
                .collect();
            if !unexpected.is_empty() {
                self.violations
                    .push(format!("agent {i}: unexpected alerts {unexpected:?}"));
            }
        }
    }

    fn check_final(&mut self) {
        self.check_safety(true);
        for i in 0..self.agents.len() {
            let a = &self.agents[i];
            let head = a.ledger.head();
            let best = a.ledger.best.as_ref().map_or(Seq::ZERO, |b| b.seq);
            if best != head {
                self.violations.push(format!(
                    "agent {i}: liveness: head {head} but receipted only {best}"
                ));
            }
            let chain = &self.gw.chains[i];
            // the agent's held entries are exactly the gateway's
            for e in a.ledger.held() {
                let h = e.header().unwrap();
                if chain.entries.get(&h.seq.0).map(|s| s.hash) != Some(e.hash) {
                    self.violations
                        .push(format!("agent {i}: entry {} differs at the gateway", h.seq));
                    break;
                }
            }
            // each stored run verifies under the agent's key
            let mut runs: Vec<Vec<&baton_shared::Entry>> = Vec::new();
            let mut last = 0;
            for (&seq, e) in &chain.entries {
                if runs.is_empty() || seq != last + 1 {
                    runs.push(Vec::new());
                }
                runs.last_mut().unwrap().push(e);
                last = seq;
            }
            for run in runs {
                let mut v = Verifier::new(Some(self.agent_keys[i].public()));
                for e in &run {
                    let _ = v.push_line(e.to_jsonl().as_bytes());
                }
                if let Verified::Invalid(bad) = v.finish() {
                    self.violations
                        .push(format!("agent {i}: stored chain does not verify: {bad}"));
                }
            }
        }
    }

    // ------------------------------------------------------------ driver

    fn tick(&mut self, faults_on: bool, appending: bool) {
        let periodic = !faults_on;
        self.now += TICK;
        if faults_on {
            self.step_faults();
        }
        self.step_restarts();
        let now = self.now;
        let mut due = Vec::new();
        let mut k = 0;
        while k < self.net.len() {
            if self.net[k].at <= now {
                due.push(self.net.swap_remove(k));
            } else {
                k += 1;
            }
        }
        // deliver in random order: the link reorders
        while !due.is_empty() {
            let m = due.swap_remove(self.rng.below(due.len() as u64) as usize);
            let a = &self.agents[m.agent];
            if m.epoch != a.epoch || !a.link {
                continue;
            }
            match m.to {
                Node::Gateway if self.gw.up => self.gw_receive(m),
                Node::Gateway => {}
                Node::Agent(_) => self.agent_receive(m),
            }
        }
        if self.gw.up && self.gw.commit_at.is_some_and(|t| now >= t) {
            self.gw_commit();
        }
        for i in 0..self.agents.len() {
            self.step_agent(i, appending, periodic);
        }
    }

    /// The observer's view: every append made, receipted, and the
    /// gateway's head equal to the agent's.
    fn all_caught_up(&self) -> bool {
        self.agents.iter().enumerate().all(|(i, a)| {
            let gw_head = self.gw.chains[i].head().map_or(Seq::ZERO, |(s, _)| s);
            a.appends_left == 0
                && a.ledger.best.as_ref().map_or(Seq::ZERO, |b| b.seq) == a.ledger.head()
                && gw_head == a.ledger.head()
        })
    }

    fn run(mut self, fault_ticks: u32, max_calm_ticks: u32) -> Result<(), String> {
        for _ in 0..fault_ticks {
            self.tick(true, true);
            self.check_safety(false);
            if !self.violations.is_empty() {
                break;
            }
        }
        // calm: every process up, fair random loss goes on, no crashes
        if self.violations.is_empty() {
            for _ in 0..max_calm_ticks {
                self.tick(false, true);
                if self.all_caught_up() && self.net.is_empty() {
                    break;
                }
            }
            self.check_final();
        }
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "seed {} (replay with BATON_SIM_SEED={}): {}",
                self.seed,
                self.seed,
                self.violations.join("; ")
            ))
        }
    }
}

fn faults_for(seed: u64) -> Faults {
    let mut r = SplitMix64::new(seed ^ 0xfa17);
    Faults {
        drop: r.below(150),
        dup: r.below(150),
        max_delay_ms: 1 + r.below(60),
        agent_crash: r.below(4),
        link_flap: r.below(6),
        gateway_crash: r.below(4),
        // every third seed restores devices from older images
        restore_image: if seed.is_multiple_of(3) { 2 } else { 0 },
        // every fifth seed's gateway loses the tail of its disk on crashes
        disk_loss: if seed.is_multiple_of(5) { 300 } else { 0 },
    }
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut r = SplitMix64::new(seed);
    let agents = 1 + r.below(3) as usize;
    let entries = 10 + r.below(30);
    World::new(seed, agents, entries, faults_for(seed)).run(1500, 40_000)
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("BATON_SIM_SEED") {
        return vec![s.parse().unwrap()];
    }
    let n: u64 = std::env::var("BATON_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    (0..n).collect()
}

/// Runs the seeds on two threads (the machine has two cores) and reports
/// every failing seed.
fn run_all(filter: impl Fn(u64) -> bool + Sync) {
    let seeds: Vec<u64> = seeds().into_iter().filter(|s| filter(*s)).collect();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let (a, b) = seeds.split_at(seeds.len() / 2);
        let ha = scope.spawn(|| {
            a.iter()
                .filter_map(|&s| run_seed(s).err())
                .collect::<Vec<_>>()
        });
        let hb = scope.spawn(|| {
            b.iter()
                .filter_map(|&s| run_seed(s).err())
                .collect::<Vec<_>>()
        });
        let mut f = ha.join().unwrap();
        f.extend(hb.join().unwrap());
        f
    });
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

#[test]
fn safety_and_liveness_hold_for_every_seed() {
    run_all(|_| true);
}

/// The checks themselves must be able to fail: a gateway that receipts
/// before committing (and loses the uncommitted entries in a crash) is
/// caught.
#[test]
fn the_checks_catch_a_gateway_that_receipts_before_commit() {
    let mut caught = 0;
    for seed in 0..40 {
        let mut faults = faults_for(seed);
        faults.gateway_crash = 40;
        faults.disk_loss = 0;
        faults.restore_image = 0;
        let mut w = World::new(seed, 2, 30, faults);
        let mut broken = false;
        for _ in 0..1500 {
            w.tick(true, true);
            // the bug: answer right after accepting, before durability
            for i in 0..w.agents.len() {
                if w.gw.answer_after_commit[i]
                    && let Some(intake) = w.gw.intakes[i].as_mut()
                {
                    let head = intake.accepted_head();
                    let r = Receipt::sign(&w.gw_key, &w.gw_id, &agent_id(i), head.seq, head.hash);
                    w.send(Node::Agent(i), i, Topic::Ack, r.encode());
                }
            }
            w.check_safety(false);
            if !w.violations.is_empty() {
                broken = true;
                break;
            }
        }
        caught += u32::from(broken);
    }
    assert!(caught > 0, "receipting before commit was never detected");
}
