//! The ledger's single writer: a thread that takes changes from every
//! caller (socket clients, the uplink, timers), applies all that are waiting
//! in one write transaction, commits it durably, and only then answers each
//! caller (group commit, PROTOCOL §7 rule 0).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use baton_shared::entry::{AppendRequest, ClockInfo, Seq};
use baton_shared::json::Value;
use baton_shared::uplink::Adoption;
use baton_shared::wire::Receipt;
use baton_shared::{AgentId, Hash, PublicKey, SecretKey};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::clock::ClockState;
use crate::ledger::{AppendFailure, CommandRecord, Head, Ledger, LedgerError, Txn, runtime_event};

/// Most changes per commit.
const MAX_GROUP: usize = 16 * 1024;

/// What an append answers.
pub type AppendResult = Result<(Seq, Hash), AppendRefused>;

/// A command entry as stored (signed), or why it was not.
pub type EntryResult = Result<baton_shared::Entry, AppendRefused>;

/// Why an append was refused. `Request` means the caller's request is
/// wrong; the others are the device's problem and say so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendRefused {
    #[error("{0}")]
    Request(String),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("ledger writer stopped")]
    Stopped,
    /// No room: the budget or the free-space floor (PROTOCOL §7 rule 2).
    #[error("budget: {0}")]
    Budget(String),
}

/// The ledger's space limits.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Most bytes of stored entries.
    pub max_bytes: u64,
    /// Appends stop (once nothing receipted is left to delete) when the
    /// filesystem holding the ledger has less free space than this.
    pub min_free_bytes: u64,
    /// Free bytes of that filesystem, kept current by the daemon
    /// (`u64::MAX` when unknown).
    pub free_bytes: Arc<AtomicU64>,
}

impl Budget {
    pub fn unlimited() -> Budget {
        Budget {
            max_bytes: u64::MAX,
            min_free_bytes: 0,
            free_bytes: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }
}

/// Why a writer operation other than an append failed. It crosses a
/// thread seam, so it keeps what the caller may need to ask of the ledger
/// error behind it — damage, or a handle that needs reopening — besides
/// the words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriterError {
    #[error("ledger writer stopped")]
    Stopped,
    #[error("ledger: {message}")]
    Ledger {
        message: String,
        damage: bool,
        needs_reopen: bool,
    },
}

impl WriterError {
    fn of(e: &LedgerError) -> WriterError {
        WriterError::Ledger {
            message: e.to_string(),
            damage: e.is_damage(),
            needs_reopen: Ledger::needs_reopen(e),
        }
    }

    /// The ledger file is damaged (PROTOCOL: set aside, never served).
    pub fn is_damage(&self) -> bool {
        matches!(self, WriterError::Ledger { damage: true, .. })
    }

    /// The failure was an I/O error: the writer reopens the handle.
    pub fn needs_reopen(&self) -> bool {
        matches!(
            self,
            WriterError::Ledger {
                needs_reopen: true,
                ..
            }
        )
    }
}

/// What an entry stores beyond its content (header, hashes, signature),
/// with room for the `gap` entry that may have to precede it.
const ENTRY_OVERHEAD: u64 = 1024;

enum Op {
    /// Many appends of one client read at once: one message, one answer.
    AppendMany {
        unix_ms: i64,
        reqs: Vec<AppendRequest>,
        reply: oneshot::Sender<Vec<AppendResult>>,
    },
    Runtime {
        unix_ms: i64,
        event: &'static str,
        data: Value,
        reply: oneshot::Sender<AppendResult>,
    },
    /// A `command` or `command_ack` entry (PROTOCOL §9), signed at once,
    /// with the command index's row in the same commit; answered with the
    /// entry as stored.
    Command {
        unix_ms: i64,
        event: &'static str,
        data: Value,
        hash: Hash,
        record: Box<CommandRecord>,
        reply: oneshot::Sender<EntryResult>,
    },
    /// A `pitr` entry (PROTOCOL §2): a rollback of the derived views to
    /// an entry this ledger holds, checked against it in the group.
    Pitr {
        unix_ms: i64,
        to: PitrTo,
        by: String,
        reason: String,
        reply: oneshot::Sender<AppendResult>,
    },
    SignHead(oneshot::Sender<Result<(), WriterError>>),
    StoreBest(Receipt, oneshot::Sender<Result<(), WriterError>>),
    Pin(PublicKey, oneshot::Sender<Result<(), WriterError>>),
    Adopt {
        adoption: Box<Adoption>,
        unix_ms: i64,
        reason: &'static str,
        reply: oneshot::Sender<Result<(), WriterError>>,
    },
    /// Delete prunable entries with `ts` before the cutoff (retention).
    Retain(String, oneshot::Sender<Result<u64, WriterError>>),
    /// Append anew the salvaged entries past this seq.
    ReleaseStranded(Seq, oneshot::Sender<Result<u64, WriterError>>),
    /// Commit what is queued, then stop and close the file.
    Close,
}

/// Where a `pitr` goes back to: a seq, or an entry's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PitrTo {
    Seq(Seq),
    Hash(Hash),
}

/// Counters the writer keeps.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub appended: AtomicU64,
    pub refused: AtomicU64,
    /// Append-socket connections closed at accept: `MAX_CONNECTIONS` open.
    pub socket_connections_refused: AtomicU64,
    /// Append-socket connections closed for a line left unfinished.
    pub socket_lines_timed_out: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// The newest commit error not yet reported (unix ms, message).
    pub last_error: std::sync::Mutex<Option<(i64, String)>>,
}

impl WriterStats {
    /// The counters for `status.json`.
    pub fn counters(&self) -> baton_shared::json::Value {
        let mut o = baton_shared::json::Object::new();
        for (name, n) in [
            ("appended", &self.appended),
            ("refused", &self.refused),
            ("commit_errors", &self.commit_errors),
            (
                "socket_connections_refused",
                &self.socket_connections_refused,
            ),
            ("socket_lines_timed_out", &self.socket_lines_timed_out),
        ] {
            o.insert(
                name,
                baton_shared::json::Value::from(n.load(Ordering::Relaxed)),
            );
        }
        baton_shared::json::Value::Object(o)
    }

    /// Takes the newest unreported commit error.
    pub fn take_error(&self) -> Option<(i64, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
    head: watch::Receiver<Head>,
    pub stats: Arc<WriterStats>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("head", &*self.head.borrow())
            .finish()
    }
}

impl Writer {
    /// Starts the writer thread over `ledger` at `head`.
    pub fn start(
        ledger: Ledger,
        agent: AgentId,
        key: SecretKey,
        head: Head,
        budget: Budget,
        clock: Arc<ClockState>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(MAX_GROUP);
        let (head_tx, head_rx) = watch::channel(head);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                let ctx = Ctx {
                    ledger: &ledger,
                    agent: &agent,
                    key: &key,
                    budget: &budget,
                    clock: &clock,
                };
                write_loop(&ctx, head, rx, &head_tx, &thread_stats);
            })?;
        Ok(Writer {
            tx,
            head: head_rx,
            stats,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Commits what is queued, stops the thread and closes the file (so
    /// another process may open it). Later calls on any clone are refused.
    pub async fn close(&self) {
        let _ = self.tx.send(Op::Close).await;
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    /// Operations waiting for the writer (pending appends among them).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The durable head (changes after every commit).
    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    /// A receiver that changes after every commit.
    pub fn watch(&self) -> watch::Receiver<Head> {
        self.head.clone()
    }

    async fn call<T>(
        &self,
        op: Op,
        rx: oneshot::Receiver<Result<T, WriterError>>,
    ) -> Result<T, WriterError> {
        self.tx.send(op).await.map_err(|_| WriterError::Stopped)?;
        rx.await.unwrap_or(Err(WriterError::Stopped))
    }

    /// Queues many appends as one message; the receiver gets their answers
    /// in order after the commit.
    pub async fn append_many(
        &self,
        unix_ms: i64,
        reqs: Vec<AppendRequest>,
    ) -> oneshot::Receiver<Vec<AppendResult>> {
        let (reply, rx) = oneshot::channel();
        // A stopped writer drops `reply`, which the receiver reports.
        let _ = self
            .tx
            .send(Op::AppendMany {
                unix_ms,
                reqs,
                reply,
            })
            .await;
        rx
    }

    async fn send_append(&self, op: Op) -> Result<(), AppendRefused> {
        self.tx.send(op).await.map_err(|_| AppendRefused::Stopped)
    }

    /// Appends a runtime entry (`genesis`, `alert`, …).
    pub async fn runtime(&self, unix_ms: i64, event: &'static str, data: Value) -> AppendResult {
        let (reply, rx) = oneshot::channel();
        self.send_append(Op::Runtime {
            unix_ms,
            event,
            data,
            reply,
        })
        .await?;
        rx.await.unwrap_or(Err(AppendRefused::Stopped))
    }

    /// Appends a `pitr` entry back to `to` (an entry this ledger holds,
    /// committed, below the `pitr` itself), signed at once; answered with
    /// its seq and hash, or why not.
    pub async fn pitr(&self, unix_ms: i64, to: PitrTo, by: String, reason: String) -> AppendResult {
        let (reply, rx) = oneshot::channel();
        self.send_append(Op::Pitr {
            unix_ms,
            to,
            by,
            reason,
            reply,
        })
        .await?;
        rx.await.unwrap_or(Err(AppendRefused::Stopped))
    }

    /// Appends a `command` (`record.command_seq` is set to its seq) or a
    /// `command_ack` (`record.answer` is set to it), signed, and stores the
    /// command index's row for `hash` in the same commit.
    pub async fn command(
        &self,
        unix_ms: i64,
        event: &'static str,
        data: Value,
        hash: Hash,
        record: CommandRecord,
    ) -> EntryResult {
        let (reply, rx) = oneshot::channel();
        self.send_append(Op::Command {
            unix_ms,
            event,
            data,
            hash,
            record: Box::new(record),
            reply,
        })
        .await?;
        rx.await.unwrap_or(Err(AppendRefused::Stopped))
    }

    /// Signs the head as a checkpoint (if unsigned), durably.
    pub async fn sign_head(&self) -> Result<(), WriterError> {
        let (reply, rx) = oneshot::channel();
        self.call(Op::SignHead(reply), rx).await
    }

    pub async fn store_best(&self, r: Receipt) -> Result<(), WriterError> {
        let (reply, rx) = oneshot::channel();
        self.call(Op::StoreBest(r, reply), rx).await
    }

    pub async fn pin_gateway_key(&self, k: PublicKey) -> Result<(), WriterError> {
        let (reply, rx) = oneshot::channel();
        self.call(Op::Pin(k, reply), rx).await
    }

    pub async fn adopt(
        &self,
        adoption: Box<Adoption>,
        unix_ms: i64,
        reason: &'static str,
    ) -> Result<(), WriterError> {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::Adopt {
                adoption,
                unix_ms,
                reason,
                reply,
            },
            rx,
        )
        .await
    }

    /// Deletes receipted entries whose `ts` is before `cutoff` (never the
    /// best receipt's entry or anything after it, rule 2).
    pub async fn retain(&self, cutoff: String) -> Result<u64, WriterError> {
        let (reply, rx) = oneshot::channel();
        self.call(Op::Retain(cutoff, reply), rx).await
    }

    /// After damage, once the gateway has said what it holds: appends anew
    /// the salvaged entries whose original seq is past `after` (the gateway
    /// holds the others). Returns how many.
    pub async fn release_stranded(&self, after: Seq) -> Result<u64, WriterError> {
        let (reply, rx) = oneshot::channel();
        self.call(Op::ReleaseStranded(after, reply), rx).await
    }
}

/// An answer to send once the group is durable.
enum Reply {
    Append(oneshot::Sender<AppendResult>, AppendResult),
    /// The answers so far and how many were asked.
    Many(oneshot::Sender<Vec<AppendResult>>, Vec<AppendResult>, usize),
    Unit(oneshot::Sender<Result<(), WriterError>>),
    Count(oneshot::Sender<Result<u64, WriterError>>, u64),
    Entry(oneshot::Sender<EntryResult>, EntryResult),
}

impl WriterStats {
    /// Counts one answered append: appended or refused.
    fn count<T, E>(&self, r: &Result<T, E>) {
        let counter = if r.is_ok() {
            &self.appended
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Reply {
    fn send_ok(self, stats: &WriterStats) {
        match self {
            Reply::Append(tx, r) => {
                stats.count(&r);
                let _ = tx.send(r);
            }
            Reply::Many(tx, results, _) => {
                for r in &results {
                    stats.count(r);
                }
                let _ = tx.send(results);
            }
            Reply::Unit(tx) => {
                let _ = tx.send(Ok(()));
            }
            Reply::Count(tx, n) => {
                let _ = tx.send(Ok(n));
            }
            Reply::Entry(tx, r) => {
                stats.count(&r);
                let _ = tx.send(r);
            }
        }
    }

    fn send_err(self, e: &WriterError, stats: &WriterStats) {
        match self {
            Reply::Append(tx, _) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(Err(AppendRefused::Ledger(e.to_string())));
            }
            Reply::Many(tx, _, n) => {
                stats.refused.fetch_add(n as u64, Ordering::Relaxed);
                let _ = tx.send(vec![Err(AppendRefused::Ledger(e.to_string())); n]);
            }
            Reply::Unit(tx) => {
                let _ = tx.send(Err(e.clone()));
            }
            Reply::Count(tx, _) => {
                let _ = tx.send(Err(e.clone()));
            }
            Reply::Entry(tx, _) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(Err(AppendRefused::Ledger(e.to_string())));
            }
        }
    }
}

/// What the writer thread works with.
struct Ctx<'a> {
    ledger: &'a Ledger,
    agent: &'a AgentId,
    key: &'a SecretKey,
    budget: &'a Budget,
    clock: &'a ClockState,
}

fn write_loop(
    ctx: &Ctx<'_>,
    mut head: Head,
    mut rx: mpsc::Receiver<Op>,
    head_tx: &watch::Sender<Head>,
    stats: &WriterStats,
) {
    let mut group = Vec::with_capacity(1024);
    let mut closing = false;
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        closing |= group.iter().any(|op| matches!(op, Op::Close));
        let mut replies = Vec::with_capacity(group.len());
        let result = apply_group(ctx, head, group.drain(..), &mut replies);
        match result {
            Ok(new_head) => {
                head = new_head;
                stats.commits.fetch_add(1, Ordering::Relaxed);
                head_tx.send_replace(head);
                for r in replies {
                    r.send_ok(stats);
                }
            }
            Err(e) => {
                // Nothing of the group is durable: the head stays where it
                // was and every caller hears why.
                stats.commit_errors.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "ledger commit failed; nothing of this group was stored");
                let failed = WriterError::of(&e);
                *stats
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((baton_runtime::unix_ms(), e.to_string()));
                for r in replies {
                    r.send_err(&failed, stats);
                }
                if Ledger::needs_reopen(&e) {
                    // redb refuses everything after an I/O error: reopen, so
                    // that appends work again once the disk does.
                    match ctx.ledger.reopen() {
                        Ok(()) => warn!("ledger reopened after an I/O error"),
                        Err(e) => error!(error = %e, "reopening the ledger failed; will retry"),
                    }
                }
            }
        }
        if closing {
            rx.close();
            // Refuse whatever raced in after the close.
            while let Ok(op) = rx.try_recv() {
                drop(op);
            }
            return;
        }
    }
}

/// Makes room for an append of about `need` bytes: within the budget and
/// above the free-space floor, deleting receipted entries (oldest first) if
/// that is what it takes. `Ok(None)` means there is room; `Ok(Some(why))`
/// that the unreceipted entries alone leave none.
fn make_room(ctx: &Ctx<'_>, txn: &mut Txn<'_>, need: u64) -> Result<Option<String>, LedgerError> {
    let b = ctx.budget;
    let free = b.free_bytes.load(Ordering::Relaxed);
    let held = txn.head().held_bytes;
    let over_budget = held.saturating_add(need) > b.max_bytes;
    let low_disk = free < b.min_free_bytes.saturating_add(need);
    if !over_budget && !low_disk {
        return Ok(None);
    }
    // Delete a tenth of the budget beyond what is needed, so that pruning
    // is not paid on every append.
    let slack = (b.max_bytes / 10).min(64 * 1024 * 1024);
    let want = if over_budget {
        (held + need - b.max_bytes).saturating_add(slack)
    } else {
        need.saturating_add(slack)
    };
    let freed = txn.prune_bytes(want)?;
    let held = txn.head().held_bytes;
    if held.saturating_add(need) > b.max_bytes {
        return Ok(Some(format!(
            "this entry (about {}) would take the unreceipted entries held ({}) past the budget of {}; appends resume as receipts arrive",
            bytesize::ByteSize(need),
            bytesize::ByteSize(held),
            bytesize::ByteSize(b.max_bytes)
        )));
    }
    // Freed pages are reused by the next commits: room if enough went.
    if low_disk && freed < need {
        return Ok(Some(format!(
            "{} free on the ledger's filesystem, below the floor of {}; nothing receipted left to delete",
            bytesize::ByteSize(free),
            bytesize::ByteSize(b.min_free_bytes)
        )));
    }
    Ok(None)
}

fn apply_group(
    ctx: &Ctx<'_>,
    head: Head,
    ops: impl Iterator<Item = Op>,
    replies: &mut Vec<Reply>,
) -> Result<Head, LedgerError> {
    let mut txn = match ctx.ledger.begin(ctx.agent, ctx.key, head) {
        Ok(t) => t,
        Err(e) => {
            // Every caller still hears why (the caller sends the error).
            ops.for_each(|op| unanswered(op, replies));
            return Err(e);
        }
    };
    let mut failed: Option<LedgerError> = None;
    // Entries of one group share their `clock` (read at the commit).
    let clock = ctx.clock.info();
    for op in ops {
        if failed.is_some() {
            // The transaction is already lost: refuse the rest the same way.
            unanswered(op, replies);
            continue;
        }
        let outcome = match op {
            Op::Close => Ok(()),
            Op::AppendMany {
                unix_ms,
                reqs,
                reply,
            } => {
                let mut results = Vec::with_capacity(reqs.len());
                let mut failed = Ok(());
                for req in &reqs {
                    match append_one(ctx, &mut txn, unix_ms, &clock, req) {
                        Ok(r) => results.push(r),
                        Err(e) => {
                            failed = Err(e);
                            break;
                        }
                    }
                }
                replies.push(Reply::Many(reply, results, reqs.len()));
                failed
            }
            Op::Runtime {
                unix_ms,
                event,
                data,
                reply,
            } => {
                let r = txn.append(unix_ms, Some(&clock), &runtime_event(event), None, &data);
                if let Err(AppendFailure::Request(e)) = &r {
                    warn!(event, error = %e, "runtime entry refused");
                }
                let appended = r.is_ok();
                answer_append(r, reply, replies)?;
                // Runtime entries are checkpoints: signed at once.
                if appended { txn.sign_head() } else { Ok(()) }
            }
            Op::Pitr {
                unix_ms,
                to,
                by,
                reason,
                reply,
            } => match pitr_target(ctx.ledger, to) {
                Err(why) => {
                    replies.push(Reply::Append(reply, Err(AppendRefused::Request(why))));
                    Ok(())
                }
                Ok((seq, hash)) => {
                    let mut t = baton_shared::json::Object::new();
                    t.insert("seq", Value::from(seq.0));
                    t.insert("hash", Value::from(hash.to_hex()));
                    let mut d = baton_shared::json::Object::new();
                    d.insert("to", Value::Object(t));
                    d.insert("by", Value::from(by));
                    d.insert("reason", Value::from(reason));
                    let r = txn.append(
                        unix_ms,
                        Some(&clock),
                        &runtime_event("pitr"),
                        None,
                        &Value::Object(d),
                    );
                    let appended = r.is_ok();
                    answer_append(r, reply, replies)?;
                    if appended { txn.sign_head() } else { Ok(()) }
                }
            },
            Op::Command {
                unix_ms,
                event,
                data,
                hash,
                mut record,
                reply,
            } => match txn.append(unix_ms, Some(&clock), &runtime_event(event), None, &data) {
                Ok((seq, _)) => {
                    let stored = txn.sign_head().and_then(|()| txn.head_entry());
                    match stored {
                        Ok(e) => {
                            if event == "command" {
                                record.command_seq = seq.0;
                            } else {
                                record.answer = Some(e.clone());
                            }
                            let kept = txn.record_command(&hash, &record, unix_ms);
                            replies.push(Reply::Entry(reply, Ok(e)));
                            kept
                        }
                        Err(e) => {
                            replies.push(Reply::Entry(reply, Err(AppendRefused::Stopped)));
                            Err(e)
                        }
                    }
                }
                Err(AppendFailure::Request(e)) => {
                    warn!(event, error = %e, "command entry refused");
                    replies.push(Reply::Entry(
                        reply,
                        Err(AppendRefused::Request(e.to_string())),
                    ));
                    Ok(())
                }
                Err(AppendFailure::Ledger(e)) => {
                    replies.push(Reply::Entry(reply, Err(AppendRefused::Stopped)));
                    Err(e)
                }
            },
            Op::SignHead(reply) => {
                replies.push(Reply::Unit(reply));
                txn.sign_head()
            }
            Op::StoreBest(r, reply) => {
                replies.push(Reply::Unit(reply));
                txn.store_best(&r)
            }
            Op::Pin(k, reply) => {
                replies.push(Reply::Unit(reply));
                txn.pin_gateway_key(&k)
            }
            Op::Adopt {
                adoption,
                unix_ms,
                reason,
                reply,
            } => {
                replies.push(Reply::Unit(reply));
                txn.adopt(&adoption, unix_ms, reason)
            }
            Op::Retain(cutoff, reply) => {
                count(txn.prune_older_than(&cutoff, 100_000), reply, replies)
            }
            Op::ReleaseStranded(after, reply) => {
                let released = ctx
                    .ledger
                    .stranded()
                    .and_then(|run| txn.release_stranded(&run, after));
                count(released, reply, replies)
            }
        };
        if let Err(e) = outcome {
            failed = Some(e);
        }
    }
    match failed {
        Some(e) => Err(e),
        None => txn.commit(),
    }
}

/// Queues a counting op's answer; its failure fails the group.
fn count(
    r: Result<u64, LedgerError>,
    reply: oneshot::Sender<Result<u64, WriterError>>,
    replies: &mut Vec<Reply>,
) -> Result<(), LedgerError> {
    replies.push(Reply::Count(reply, *r.as_ref().unwrap_or(&0)));
    r.map(|_| ())
}

/// Queues an op's answer for a group that failed as a whole (the error is
/// filled in by `send_err`).
fn unanswered(op: Op, replies: &mut Vec<Reply>) {
    match op {
        Op::Runtime { reply, .. } | Op::Pitr { reply, .. } => {
            replies.push(Reply::Append(reply, Ok((Seq::ZERO, Hash::ZERO))));
        }
        Op::AppendMany { reqs, reply, .. } => {
            replies.push(Reply::Many(reply, Vec::new(), reqs.len()));
        }
        Op::Command { reply, .. } => {
            replies.push(Reply::Entry(reply, Err(AppendRefused::Stopped)));
        }
        Op::SignHead(reply)
        | Op::StoreBest(_, reply)
        | Op::Pin(_, reply)
        | Op::Adopt { reply, .. } => {
            replies.push(Reply::Unit(reply));
        }
        Op::Retain(_, reply) | Op::ReleaseStranded(_, reply) => {
            replies.push(Reply::Count(reply, 0));
        }
        Op::Close => {}
    }
}

/// The content bytes a request would take (for the `gap` entry's count).
fn request_bytes(req: &AppendRequest) -> u64 {
    let data = baton_shared::canonical::to_vec(&req.data).len();
    (data + req.event.as_str().len() + req.context.as_ref().map_or(0, String::len)) as u64
}

/// One caller's append: room first (or a `budget` refusal, counted for the
/// `gap` entry), then the `gap` entry if appends were refused before, then
/// the entry. `Err` only when the ledger itself failed.
fn append_one(
    ctx: &Ctx<'_>,
    txn: &mut Txn<'_>,
    unix_ms: i64,
    clock: &ClockInfo,
    req: &AppendRequest,
) -> Result<AppendResult, LedgerError> {
    let bytes = request_bytes(req);
    if let Some(why) = make_room(ctx, txn, bytes + ENTRY_OVERHEAD)? {
        txn.refuse(unix_ms, bytes);
        return Ok(Err(AppendRefused::Budget(why)));
    }
    txn.record_gap(unix_ms)?;
    match txn.append_request(unix_ms, Some(clock), req) {
        Ok(r) => Ok(Ok(r)),
        Err(AppendFailure::Request(e)) => Ok(Err(AppendRefused::Request(e.to_string()))),
        Err(AppendFailure::Ledger(e)) => Err(e),
    }
}

/// Queues the answer to an append; a ledger failure fails the whole group.
/// The committed entry a `pitr` names: its seq and hash, or why it
/// names none this ledger holds.
fn pitr_target(ledger: &Ledger, to: PitrTo) -> Result<(Seq, Hash), String> {
    let head = ledger.head().map_err(|e| format!("ledger: {e}"))?;
    let held = |s: Seq| -> Result<Option<Hash>, String> {
        Ok(ledger
            .entries(s, s)
            .map_err(|e| format!("ledger: {e}"))?
            .first()
            .map(|e| e.hash))
    };
    match to {
        PitrTo::Seq(s) if s.0 == 0 || s > head.seq => Err(format!(
            "to: seq {s} is not an entry of this chain (head {})",
            head.seq
        )),
        PitrTo::Seq(s) => held(s)?.map(|h| (s, h)).ok_or_else(|| {
            format!(
                "to: seq {s} is no longer held on this device (oldest held {}); receipted entries are at the gateway",
                head.oldest
            )
        }),
        PitrTo::Hash(h) => {
            let mut found = None;
            ledger
                .for_each(head.oldest, head.seq, |s, e| {
                    if e.hash == h {
                        found = Some(s);
                    }
                    Ok(())
                })
                .map_err(|e| format!("ledger: {e}"))?;
            found
                .map(|s| (s, h))
                .ok_or_else(|| format!("to: no entry held on this device has hash {h}"))
        }
    }
}

fn answer_append(
    r: Result<(Seq, Hash), AppendFailure>,
    reply: oneshot::Sender<AppendResult>,
    replies: &mut Vec<Reply>,
) -> Result<(), LedgerError> {
    match r {
        Ok(r) => {
            replies.push(Reply::Append(reply, Ok(r)));
            Ok(())
        }
        Err(AppendFailure::Request(e)) => {
            replies.push(Reply::Append(
                reply,
                Err(AppendRefused::Request(e.to_string())),
            ));
            Ok(())
        }
        Err(AppendFailure::Ledger(e)) => {
            replies.push(Reply::Append(reply, Ok((Seq::ZERO, Hash::ZERO))));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_shared::json::Object;

    /// Regression: the writer's replies were `String`, so a caller could no
    /// longer ask whether a failure was damage or an I/O error that needs a
    /// reopen. With the disk failing, the error says `needs_reopen()`; the
    /// writer reopens, and once the disk is back it commits again.
    #[tokio::test]
    async fn a_failed_commit_reaches_the_caller_typed_and_the_writer_recovers() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentId::new("pi-1").unwrap();
        let key = SecretKey::from_seed(&[7; 32]);
        let (opener, failing) = baton_runtime::db::faults::flaky_opener();
        let o = Ledger::open_with(&dir.path().join("l.redb"), &agent, opener).unwrap();
        let clock = Arc::new(ClockState::new("boot".into()));
        let w = Writer::start(o.ledger, agent, key, o.head, Budget::unlimited(), clock).unwrap();
        let genesis = Value::Object(Object::new());
        w.runtime(1, "genesis", genesis).await.unwrap();
        w.runtime(2, "info", Value::from(1u64)).await.unwrap();
        failing.store(true, Ordering::SeqCst);
        let e = w.sign_head().await.unwrap_err();
        assert!(e.needs_reopen() && !e.is_damage(), "{e:?}");
        failing.store(false, Ordering::SeqCst);
        // The writer reopens at once after the failure; if that raced the
        // disk's return (slow machines, qemu) the handle stays closed and
        // the next operation fails and reopens again. Within a few tries
        // it commits; every failure meanwhile asks for a reopen.
        let mut tries = 0;
        while let Err(e) = w.sign_head().await {
            assert!(e.needs_reopen() && !e.is_damage(), "{e:?}");
            tries += 1;
            assert!(tries < 50, "the writer never recovered: {e:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(w.head().unsigned, 0);
        w.close().await;
    }

    /// Finding (issue 15): each append reserved room for the largest
    /// possible entry, so a small budget refused every append while holding
    /// almost nothing, and said so. Appends now fill the budget, and the
    /// refusal names what the entry needs and what is held.
    #[tokio::test]
    async fn a_small_budget_fills_before_it_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentId::new("pi-1").unwrap();
        let key = SecretKey::from_seed(&[7; 32]);
        let o = Ledger::open(&dir.path().join("l.redb"), &agent).unwrap();
        let clock = Arc::new(ClockState::new("boot".into()));
        let budget = Budget {
            max_bytes: crate::config::MIN_BUDGET,
            ..Budget::unlimited()
        };
        let w = Writer::start(o.ledger, agent, key, o.head, budget, clock).unwrap();
        w.runtime(1, "genesis", Value::Object(Object::new()))
            .await
            .unwrap();
        let req = AppendRequest::parse(br#"{"event":"info","data":{"n":1}}"#).unwrap();
        let mut stored = 0;
        let why = loop {
            let answers = w.append_many(2, vec![req.clone()]).await.await.unwrap();
            match answers.into_iter().next().unwrap() {
                Ok(_) => stored += 1,
                Err(AppendRefused::Budget(why)) => break why,
                Err(e) => panic!("{e}"),
            }
            assert!(stored < 10_000, "the budget never filled");
        };
        let held = w.head().held_bytes;
        assert!(
            held + 2 * ENTRY_OVERHEAD >= crate::config::MIN_BUDGET,
            "refused at {held} B held after {stored} appends: {why}"
        );
        assert!(why.contains("past the budget"), "{why}");
        w.close().await;
    }
}
