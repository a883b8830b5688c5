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
//!   `freeze` / `thaw`. The frozen state is rebuilt at start from the
//!   recorded commands; a frozen agent still takes appends.
//! - `orient`, `decide` and `act` go to configured executables
//!   (`[handlers]`): run at receipt with `BATON_PHASE=prepare` — exit 0 is
//!   READY (stdout, if JSON, the result), 10 `context_divergence`, 11
//!   `data_contradiction`, anything else `handler_failed`, still running at
//!   T + `window_ms` `temporal_paradox` (it is killed) — and, when READY,
//!   again when the corrected clock reaches T with `BATON_PHASE=act`. The
//!   payload is on stdin; the command's hash, id, issuer, verb and T (in
//!   the top's time and in this device's clock) are in the environment. A
//!   verb with no handler: −1 `capability_mismatch`.
//! - A local program may serve `orient`, `decide` and `act` over the
//!   agent's socket instead (`crate::serve`); a subscribed program goes
//!   before a configured executable.
//! - Handlers run concurrently: a slow one never delays another command.
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

/// How a command's handler answers.
enum Handled {
    Now(Answer),
    /// A task answers on the coordinator's `done` channel.
    Later,
}

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
    pub handlers: BTreeMap<Verb, std::path::PathBuf>,
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
    /// Handlers' answers, from their tasks.
    done_tx: mpsc::Sender<(Hash, Answer)>,
    done_rx: Option<mpsc::Receiver<(Hash, Answer)>>,
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

/// `top_ms` (the top's time) on this device's clock.
fn local_ms(clock: &ClockState, top_ms: i64) -> i64 {
    let (now, _) = corrected_now(clock);
    top_ms - (now - baton_runtime::unix_ms())
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
        let (done_tx, done_rx) = mpsc::channel(QUEUE);
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
            done_tx,
            done_rx: Some(done_rx),
        }
    }

    /// Runs until the link closes its end.
    pub async fn run(mut self, mut rx: mpsc::Receiver<In>) {
        self.resume().await;
        let Some(mut done) = self.done_rx.take() else {
            return;
        };
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(In::Delivery(payload, key)) => self.delivery(&payload, key).await,
                    None => return,
                },
                Some((hash, answer)) = done.recv() => self.answer(hash, answer).await,
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
            match self.handle(&c, seq, received_ms).await {
                Handled::Now(a) => a,
                Handled::Later => return,
            }
        };
        self.answer(c.hash, answer).await;
    }

    /// Runs the handler for `c` (recorded at `seq`).
    async fn handle(&mut self, c: &Command, seq: u64, received_ms: i64) -> Handled {
        let missing = c.select.missing_capabilities(&self.obeys.capabilities);
        if let Some(cap) = missing.first() {
            return Handled::Now(Answer::conflict(
                c.hash,
                received_ms,
                ConflictKind::CapabilityMismatch,
                format!("no handler serves capability {cap}"),
            ));
        }
        if matches!(c.verb, Verb::Orient | Verb::Decide | Verb::Act) {
            let (now, _) = corrected_now(&self.clock);
            let until_t = u64::try_from(c.target_ms - now).unwrap_or(0);
            let a = crate::serve::Assignment {
                command: c.clone(),
                received_ms,
                target_local_ms: local_ms(&self.clock, c.target_ms),
                wake_at: tokio::time::Instant::now() + Duration::from_millis(until_t),
                answers: self.done_tx.clone(),
            };
            if self.shared.subscribers.assign(a) {
                // no final answer by T + window: temporal_paradox (a final
                // answer given first stands; see `answer`)
                let (done, clock) = (self.done_tx.clone(), Arc::clone(&self.clock));
                let (hash, deadline) = (c.hash, c.deadline_ms());
                tokio::spawn(async move {
                    let (now, _) = corrected_now(&clock);
                    let left = u64::try_from(deadline - now).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(left)).await;
                    let a = Answer::conflict(
                        hash,
                        received_ms,
                        ConflictKind::TemporalParadox,
                        "the program serving it over the socket gave no final answer by T + window",
                    );
                    let _ = done.send((hash, a)).await;
                });
                return Handled::Later;
            }
        }
        if let Some(exe) = self.obeys.handlers.get(&c.verb) {
            let run = Executable {
                path: exe.clone(),
                command: c.clone(),
                received_ms,
                clock: Arc::clone(&self.clock),
            };
            let done = self.done_tx.clone();
            tokio::spawn(async move {
                let a = run.prepare().await;
                let _ = done.send((run.command.hash, a)).await;
            });
            return Handled::Later;
        }
        Handled::Now(self.built_in(c, seq, received_ms).await)
    }

    /// The built-in handlers.
    async fn built_in(&mut self, c: &Command, seq: u64, received_ms: i64) -> Answer {
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
                // Waits for the receipt on its own task (answered there);
                // meanwhile the answer is TRANSIT.
                let (shared, clock, done) = (
                    Arc::clone(&self.shared),
                    Arc::clone(&self.clock),
                    self.done_tx.clone(),
                );
                let (hash, deadline) = (c.hash, c.deadline_ms());
                tokio::spawn(async move {
                    let a = loop {
                        if shared.receipted() >= seq {
                            let (now, _) = corrected_now(&clock);
                            break Answer {
                                hash,
                                state: State::Ready,
                                received_ms,
                                ready_ms: Some(now),
                                processing_ms: Some(
                                    u64::try_from(started.elapsed().as_millis())
                                        .unwrap_or(u64::MAX),
                                ),
                                conflict: None,
                                result: None,
                            };
                        }
                        if corrected_now(&clock).0 > deadline {
                            break Answer::conflict(
                                hash,
                                received_ms,
                                ConflictKind::TemporalParadox,
                                "the gateway's receipt did not cover the command by T + window",
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    };
                    let _ = done.send((hash, a)).await;
                });
                Answer {
                    state: State::Transit,
                    ready_ms: None,
                    ..ready(None, started)
                }
            }
            Verb::Orient | Verb::Decide | Verb::Act => Answer::conflict(
                c.hash,
                received_ms,
                ConflictKind::CapabilityMismatch,
                format!("no handler for {} on this device", c.verb.as_str()),
            ),
        }
    }

    /// Records `a` as a `command_ack` (durable, signed), then publishes it.
    async fn answer(&mut self, hash: Hash, a: Answer) {
        let Some(record) = self.known.get(&hash).cloned() else {
            return;
        };
        // one final answer, and at most one TRANSIT before it
        if record.answer_final || (!a.state.is_final() && record.answer.is_some()) {
            return;
        }
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

/// A configured executable serving a command (see the module description).
struct Executable {
    path: std::path::PathBuf,
    command: Command,
    received_ms: i64,
    clock: Arc<ClockState>,
}

/// What the prepare phase says is read; the act phase's output goes nowhere.
fn piped(read: bool) -> std::process::Stdio {
    if read {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    }
}

/// Exit statuses a handler answers a conflict with.
const EXIT_CONTEXT_DIVERGENCE: i32 = 10;
const EXIT_DATA_CONTRADICTION: i32 = 11;

impl Executable {
    fn spawn(&self, phase: &str) -> std::io::Result<tokio::process::Child> {
        let c = &self.command;
        let local_target = local_ms(&self.clock, c.target_ms);
        tokio::process::Command::new(&self.path)
            .env("BATON_PHASE", phase)
            .env("BATON_COMMAND_HASH", c.hash.to_hex())
            .env("BATON_COMMAND_ID", c.id.as_str())
            .env("BATON_ISSUER", c.issuer.as_str())
            .env("BATON_VERB", c.verb.as_str())
            .env("BATON_TARGET_MS", c.target_ms.to_string())
            .env("BATON_TARGET_LOCAL_MS", local_target.to_string())
            .env("BATON_WINDOW_MS", c.window_ms.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(piped(phase == "prepare"))
            .stderr(piped(phase == "prepare"))
            .kill_on_drop(true)
            .spawn()
    }

    /// Runs the prepare phase and answers; when READY, the act phase is
    /// started at T.
    async fn prepare(&self) -> Answer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let c = &self.command;
        let started = Instant::now();
        let failed = |kind: ConflictKind, detail: String| {
            Answer::conflict(c.hash, self.received_ms, kind, detail)
        };
        let mut child = match self.spawn("prepare") {
            Ok(ch) => ch,
            Err(e) => {
                return failed(
                    ConflictKind::HandlerFailed,
                    format!("starting {}: {e}", self.path.display()),
                );
            }
        };
        let payload = baton_shared::canonical::to_vec(&c.payload);
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&payload).await;
        }
        let (now, _) = corrected_now(&self.clock);
        let left = u64::try_from(c.deadline_ms() - now).unwrap_or(0);
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let run = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.take(64 * 1024).read_to_end(&mut out).await;
            }
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(4 * 1024).read_to_end(&mut err).await;
            }
            (child.wait().await, out, err)
        };
        let Ok((status, out, err)) = tokio::time::timeout(Duration::from_millis(left), run).await
        else {
            // kill_on_drop ends it
            return failed(
                ConflictKind::TemporalParadox,
                format!("{} was not prepared by T + window", self.path.display()),
            );
        };
        let first_line = String::from_utf8_lossy(&err)
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect::<String>();
        let status = match status {
            Ok(s) => s,
            Err(e) => return failed(ConflictKind::HandlerFailed, e.to_string()),
        };
        match status.code() {
            Some(0) => {
                let result = baton_shared::json::parse(&out, baton_shared::json::Mode::Verify)
                    .ok()
                    .filter(|r| {
                        baton_shared::canonical::to_vec(r).len() <= command::MAX_RESULT_BYTES
                    });
                let (now, _) = corrected_now(&self.clock);
                self.act_at_target();
                Answer {
                    hash: c.hash,
                    state: State::Ready,
                    received_ms: self.received_ms,
                    ready_ms: Some(now),
                    processing_ms: Some(
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    ),
                    conflict: None,
                    result,
                }
            }
            Some(EXIT_CONTEXT_DIVERGENCE) => failed(ConflictKind::ContextDivergence, first_line),
            Some(EXIT_DATA_CONTRADICTION) => failed(ConflictKind::DataContradiction, first_line),
            other => failed(
                ConflictKind::HandlerFailed,
                format!(
                    "{} exited {}: {first_line}",
                    self.path.display(),
                    other.map_or("on a signal".to_owned(), |c| c.to_string())
                ),
            ),
        }
    }

    /// Starts the act phase when the corrected clock reaches T.
    fn act_at_target(&self) {
        let run = Executable {
            path: self.path.clone(),
            command: self.command.clone(),
            received_ms: self.received_ms,
            clock: Arc::clone(&self.clock),
        };
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (now, _) = corrected_now(&run.clock);
            let wait = u64::try_from(run.command.target_ms - now).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match run.spawn("act") {
                Ok(mut child) => {
                    if let Some(mut stdin) = child.stdin.take() {
                        let payload = baton_shared::canonical::to_vec(&run.command.payload);
                        let _ = stdin.write_all(&payload).await;
                    }
                    match child.wait().await {
                        Ok(s) if s.success() => {}
                        Ok(s) => {
                            warn!(path = %run.path.display(), status = %s, "a command's act phase failed")
                        }
                        Err(e) => {
                            warn!(path = %run.path.display(), error = %e, "a command's act phase failed")
                        }
                    }
                }
                Err(e) => {
                    warn!(path = %run.path.display(), error = %e, "starting a command's act phase")
                }
            }
        });
    }
}
