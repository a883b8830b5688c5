//! Coordination on the device (PROTOCOL §9): deliveries arriving on `cmd`
//! are checked (the gateway's signature, this agent as the addressee, an
//! issuer key it obeys, valid content), recorded as a `command` entry
//! before anything else, run, and answered with a signed `command_ack`
//! entry published on `cmd/reply` only once it is durable.
//!
//! - A command is recorded once per hash (the ledger's command index keeps
//!   it for `expires` + 1 h whatever the retention): a second delivery is
//!   answered from what was recorded, never run again.
//! - After a restart, every recorded command that has not expired and has
//!   no final answer is answered −1 `handler_failed` (its handler's work
//!   cannot be assumed to have survived).
//! - Built-in handlers: `record` (appends the payload as a `record` entry
//!   at T), `observe` (a status snapshot as the result: head, receipt,
//!   state, frozen, clock), `sync` (signs the
//!   head; READY once the gateway's receipt covers the command),
//!   `freeze` / `thaw`. Any other verb has no handler here: −1
//!   `capability_mismatch`. The frozen state is rebuilt at start from the
//!   recorded commands; a frozen agent still takes appends.
//!
//! Everything runs on one task fed by the link (so a handler's wait never
//! holds the MQTT loop); bad input is counted by reason in `status.json`
//! (`commands_refused`) and logged at most once a minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_shared::command::{self, Answer, Command, ConflictKind, State, Verb};
use baton_shared::json::{Object, Value};
use baton_shared::topic::{self, Kind};
use baton_shared::wire::{CommandDelivery, CommandReply, Message};
use baton_shared::{AgentId, Entry, Hash, PublicKey};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::clock::ClockState;
use crate::ledger::{CommandRecord, Ledger};
use crate::status::Shared;
use crate::writer::Writer;

/// Deliveries waiting for the coordinator; more are dropped and counted.
pub const QUEUE: usize = 64;

/// What the link hands the coordinator.
#[derive(Debug)]
pub enum In {
    /// A `cmd` payload and the key this agent trusts for its gateway now.
    Delivery(Vec<u8>, Option<PublicKey>),
}

/// Who this agent obeys.
#[derive(Debug, Clone)]
pub struct Obeys {
    /// Configured issuer keys; empty: the configured gateway key's own
    /// commands only.
    pub issuer_keys: Vec<PublicKey>,
    pub gateway_key: Option<PublicKey>,
    pub capabilities: Vec<String>,
}

pub struct Coordinator {
    agent: AgentId,
    reply_topic: String,
    obeys: Obeys,
    writer: Writer,
    ledger: Ledger,
    shared: Arc<Shared>,
    clock: Arc<ClockState>,
    client: AsyncClient,
    known: HashMap<Hash, CommandRecord>,
    /// The freeze in effect: its hash and `expires`.
    frozen: Option<(Hash, i64)>,
    last_logged: HashMap<&'static str, Instant>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("agent", &self.agent)
            .field("known", &self.known.len())
            .field("frozen", &self.frozen)
            .finish_non_exhaustive()
    }
}

/// The top's time as this agent knows it, and whether it is synced.
fn corrected_now(clock: &ClockState) -> (i64, bool) {
    let now = baton_runtime::unix_ms();
    match clock.estimate() {
        Some(e) => (now + e.offset_ms, e.synced),
        None => (now, false),
    }
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        agent: AgentId,
        cluster: &str,
        obeys: Obeys,
        writer: Writer,
        ledger: Ledger,
        shared: Arc<Shared>,
        clock: Arc<ClockState>,
        client: AsyncClient,
    ) -> Coordinator {
        let reply_topic = topic::agent(cluster, &agent, Kind::CmdReply);
        Coordinator {
            agent,
            reply_topic,
            obeys,
            writer,
            ledger,
            shared,
            clock,
            client,
            known: HashMap::new(),
            frozen: None,
            last_logged: HashMap::new(),
        }
    }

    /// Runs until the link closes its end.
    pub async fn run(mut self, mut rx: mpsc::Receiver<In>) {
        self.resume().await;
        while let Some(msg) = rx.recv().await {
            match msg {
                In::Delivery(payload, key) => self.delivery(&payload, key).await,
            }
        }
    }

    /// Loads what was recorded, rebuilds the frozen state, and answers
    /// what a restart interrupted.
    async fn resume(&mut self) {
        let records = match self.ledger.commands() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "reading the command index; commands start from nothing");
                Vec::new()
            }
        };
        let mut by_seq: BTreeMap<u64, (Hash, CommandRecord)> = BTreeMap::new();
        for (h, r) in records {
            by_seq.insert(r.command_seq, (Hash(h), r));
        }
        let (now, _) = corrected_now(&self.clock);
        for (hash, r) in by_seq.into_values() {
            if r.answer_final && r.state == 1 {
                match r.verb.as_str() {
                    "freeze" if r.expires_ms > now => self.frozen = Some((hash, r.expires_ms)),
                    "thaw" if self.frozen.is_some_and(|(f, _)| Some(f.0) == r.thaws) => {
                        self.frozen = None;
                    }
                    _ => {}
                }
            }
            let interrupted = !r.answer_final && r.expires_ms > now;
            self.known.insert(hash, r);
            if interrupted {
                let a = Answer::conflict(
                    hash,
                    now,
                    ConflictKind::HandlerFailed,
                    "the agent restarted while the command was in hand",
                );
                info!(%hash, "answering a command a restart interrupted: handler_failed");
                self.answer(hash, a).await;
            }
        }
    }

    fn refused(&mut self, why: &'static str, detail: &str) {
        self.shared.command_refused(why);
        let now = Instant::now();
        if self
            .last_logged
            .get(why)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.last_logged.insert(why, now);
            warn!(
                reason = why,
                detail, "command delivery refused (counted; logged once a minute)"
            );
        }
    }

    async fn delivery(&mut self, payload: &[u8], sender_key: Option<PublicKey>) {
        let d = match CommandDelivery::decode(payload) {
            Ok(d) => d,
            Err(e) => return self.refused("undecodable", &e.to_string()),
        };
        let Some(sender_key) = sender_key else {
            return self.refused("sender_sig", "no gateway key is configured or pinned yet");
        };
        let own_only = self.obeys.issuer_keys.is_empty();
        let issuers: Vec<PublicKey> = if own_only {
            self.obeys.gateway_key.into_iter().collect()
        } else {
            self.obeys.issuer_keys.clone()
        };
        let c = match command::accept(&d.presented(), &self.agent, &sender_key, &issuers) {
            Ok(c) => c,
            Err(e) => return self.refused(e.as_str(), &e.to_string()),
        };
        if own_only && d.issuer != d.sender {
            return self.refused(
                "issuer",
                "without issuer_keys only the gateway's own commands are obeyed",
            );
        }
        if let Some(r) = self.known.get(&c.hash) {
            // Known: answered from what was recorded (one TRANSIT at most,
            // then the final answer; nothing is run again).
            if let Some(e) = r.answer.clone() {
                self.publish(e);
            }
            return;
        }
        let (received_ms, synced) = corrected_now(&self.clock);
        let mismatch = self
            .known
            .values()
            .any(|r| r.issuer == c.issuer.as_str() && r.id == c.id.as_str());
        let record = CommandRecord {
            issuer: c.issuer.to_string(),
            id: c.id.to_string(),
            verb: c.verb.as_str().to_owned(),
            expires_ms: c.expires_ms,
            thaws: c.thaws.map(|h| h.0),
            command_seq: 0,
            answer: None,
            answer_final: false,
            state: 0,
        };
        let data = command::command_data(
            &c,
            &d.origin_sig,
            d.sender.as_str(),
            &d.sender_sig,
            received_ms,
        );
        let entry = match self
            .writer
            .command(
                baton_runtime::unix_ms(),
                "command",
                data,
                c.hash,
                record.clone(),
            )
            .await
        {
            Ok(e) => e,
            Err(e) => {
                // Not recorded: not taken. The sender resends; the gateway
                // sees no answer.
                warn!(error = %e, hash = %c.hash, "recording a command failed; it is not taken");
                return;
            }
        };
        let seq = entry.header().map(|h| h.seq.0).unwrap_or_default();
        self.known.insert(
            c.hash,
            CommandRecord {
                command_seq: seq,
                ..record
            },
        );
        info!(hash = %c.hash, issuer = %c.issuer, id = %c.id, verb = c.verb.as_str(), "command recorded");
        let frozen = self.frozen.is_some_and(|(_, until)| received_ms < until);
        let answer = if mismatch {
            Answer::conflict(
                c.hash,
                received_ms,
                ConflictKind::HashMismatch,
                format!(
                    "{} {} was recorded before with another hash",
                    c.issuer, c.id
                ),
            )
        } else if let Err(kind) = c.admit(received_ms, synced, frozen) {
            let detail = match kind {
                ConflictKind::Frozen => "frozen: only thaw and observe are taken".to_owned(),
                ConflictKind::ClockUnsynced => "no clock sample younger than 60 s".to_owned(),
                ConflictKind::Expired => "received after expires".to_owned(),
                other => other.as_str().to_owned(),
            };
            Answer::conflict(c.hash, received_ms, kind, detail)
        } else {
            self.handle(&c, seq, received_ms).await
        };
        self.answer(c.hash, answer).await;
    }

    /// Runs the built-in handler for `c` (recorded at `seq`).
    async fn handle(&mut self, c: &Command, seq: u64, received_ms: i64) -> Answer {
        let missing = c.select.missing_capabilities(&self.obeys.capabilities);
        if let Some(cap) = missing.first() {
            return Answer::conflict(
                c.hash,
                received_ms,
                ConflictKind::CapabilityMismatch,
                format!("no handler serves capability {cap}"),
            );
        }
        let started = Instant::now();
        let ready = |result: Option<Value>, started: Instant| {
            let (now, _) = corrected_now(&self.clock);
            Answer {
                hash: c.hash,
                state: State::Ready,
                received_ms,
                ready_ms: Some(now),
                processing_ms: Some(
                    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                ),
                conflict: None,
                result,
            }
        };
        match c.verb {
            Verb::Freeze => {
                self.frozen = Some((c.hash, c.expires_ms));
                warn!(hash = %c.hash, "frozen: commands but thaw and observe are answered `frozen` (appends go on)");
                ready(None, started)
            }
            Verb::Thaw => {
                let lifted = self.frozen.is_some_and(|(f, _)| Some(f) == c.thaws);
                if lifted {
                    self.frozen = None;
                    info!(hash = %c.hash, "thawed");
                }
                let mut r = Object::new();
                r.insert("thawed", Value::Bool(lifted));
                ready(Some(Value::Object(r)), started)
            }
            Verb::Observe => {
                let head = self.writer.head();
                let mut r = Object::new();
                r.insert("head_seq", Value::from(head.seq.0));
                r.insert("receipted_seq", Value::from(self.shared.receipted()));
                r.insert(
                    "state",
                    Value::from(self.shared.state(&head, true, baton_runtime::unix_ms())),
                );
                r.insert("frozen", Value::Bool(self.frozen.is_some()));
                let mut clock = Object::new();
                if let Some(e) = self.clock.estimate() {
                    clock.insert("offset_ms", Value::Number(e.offset_ms as f64));
                    clock.insert("rtt_ms", Value::Number(e.rtt_ms as f64));
                    clock.insert("synced", Value::Bool(e.synced));
                }
                r.insert("clock", Value::Object(clock));
                ready(Some(Value::Object(r)), started)
            }
            Verb::Record => {
                // Prepared now; the payload is appended when the corrected
                // clock reaches T.
                let writer = self.writer.clone();
                let clock = Arc::clone(&self.clock);
                let (payload, target, id) = (c.payload.clone(), c.target_ms, c.id.to_string());
                tokio::spawn(async move {
                    let (now, _) = corrected_now(&clock);
                    if target > now {
                        tokio::time::sleep(Duration::from_millis(
                            u64::try_from(target - now).unwrap_or(0),
                        ))
                        .await;
                    }
                    let req = baton_shared::entry::AppendRequest {
                        event: baton_shared::EventName::new("record")
                            .unwrap_or_else(|_| unreachable!()),
                        context: Some(id),
                        data: payload,
                    };
                    let rx = writer
                        .append_many(baton_runtime::unix_ms(), vec![req])
                        .await;
                    if let Ok(r) = rx.await
                        && let Some(Err(e)) = r.first()
                    {
                        warn!(error = %e, "a commanded record was not appended");
                    }
                });
                ready(None, started)
            }
            Verb::Sync => {
                if let Err(e) = self.writer.sign_head().await {
                    return Answer::conflict(
                        c.hash,
                        received_ms,
                        ConflictKind::HandlerFailed,
                        e.to_string(),
                    );
                }
                loop {
                    if self.shared.receipted() >= seq {
                        return ready(None, started);
                    }
                    let (now, _) = corrected_now(&self.clock);
                    if now > c.deadline_ms() {
                        return Answer::conflict(
                            c.hash,
                            received_ms,
                            ConflictKind::TemporalParadox,
                            "the gateway's receipt did not cover the command by T + window",
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Verb::Orient | Verb::Decide | Verb::Act => Answer::conflict(
                c.hash,
                received_ms,
                ConflictKind::CapabilityMismatch,
                format!("no handler for {}", c.verb.as_str()),
            ),
        }
    }

    /// Records `a` as a `command_ack` (durable, signed), then publishes it.
    async fn answer(&mut self, hash: Hash, a: Answer) {
        let Some(record) = self.known.get(&hash).cloned() else {
            return;
        };
        let final_answer = a.state.is_final();
        let record = CommandRecord {
            answer_final: final_answer,
            state: i8::try_from(a.state.as_i64()).unwrap_or(-1),
            ..record
        };
        match self
            .writer
            .command(
                baton_runtime::unix_ms(),
                "command_ack",
                a.to_data(),
                hash,
                record.clone(),
            )
            .await
        {
            Ok(e) => {
                self.known.insert(
                    hash,
                    CommandRecord {
                        answer: Some(e.clone()),
                        ..record
                    },
                );
                self.publish(e);
            }
            Err(e) => warn!(error = %e, %hash, "recording a command's answer failed"),
        }
    }

    fn publish(&self, entry: Entry) {
        let reply = CommandReply {
            agent: self.agent.clone(),
            entry,
        };
        // Queued while offline; the gateway also finds it in the chain.
        let _ = self
            .client
            .try_publish(&self.reply_topic, QoS::AtLeastOnce, false, reply.encode());
    }
}
