//! The sender's state machine (PROTOCOL §4 cadence, §7 rules 2, 3 and 5),
//! used by the agent and by the gateway's upstream forwarder.
//!
//! The shell feeds events (`connected`, `handle_receipt`, `handle_nack`, …)
//! and drains instructions with [`Uplink::poll`] until it returns `None`,
//! then sleeps until [`Uplink::poll_timeout`] or the next event. It reads
//! the ledger through [`Ledger`]; it never holds a database or a client.
//!
//! *Invariants:* a receipt counts only if it verifies under the pinned
//! gateway key and names the local hash at its seq; only the answer to the
//! outstanding hello (matching nonce) may lower the view of the gateway's
//! head; a head the agent never signed is never adopted; nothing here ever
//! asks for an entry to be deleted.

use std::collections::VecDeque;
use std::time::Duration;

use crate::backoff::{Backoff, SplitMix64};
use crate::crypto::{Hash, Nonce, PublicKey, Sig};
use crate::entry::Seq;
use crate::id::AgentId;
use crate::wire::{Hello, Nack, NackKind, Receipt, RejectReason};

/// What the uplink needs to know about the local ledger.
pub trait Ledger {
    /// Highest durably committed seq (0: empty).
    fn head(&self) -> Seq;
    /// Lowest seq still held; `head + 1` when nothing is held.
    fn oldest(&self) -> Seq;
    /// The hash at `seq` if known: `Hash::ZERO` for seq 0, held entries,
    /// and the adopted anchor after a recovery.
    fn hash_at(&self, seq: Seq) -> Option<Hash>;
    /// The last seq of the longest run of whole checkpoint spans starting at
    /// `from` within `limits` (at least one whole span, even if it alone
    /// exceeds the soft limits), or `None` if no signed entry follows `from`.
    fn batch_end(&self, from: Seq, limits: BatchLimits) -> Option<Seq>;
}

/// Soft limits for cutting batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_entries: usize,
    /// Encoded bytes of the entries (see [`crate::wire::entry_wire_size`]).
    pub max_bytes: usize,
}

/// The batch cut both ledgers share: given the held entries from `from` on,
/// in order, the last seq of the longest run of whole checkpoint spans
/// within `limits` — at least one whole span even if it alone exceeds the
/// soft limits — or `None` if no signed entry follows.
pub fn span_end<'a>(
    from: Seq,
    entries: impl IntoIterator<Item = &'a crate::entry::Entry>,
    limits: BatchLimits,
) -> Option<Seq> {
    let mut bytes = 0;
    let mut end = None;
    for (i, e) in entries.into_iter().enumerate() {
        bytes += crate::wire::entry_wire_size(e);
        let within = i < limits.max_entries && bytes <= limits.max_bytes;
        if !within && end.is_some() {
            break;
        }
        if e.sig.is_some() {
            end = Some(Seq(from.0 + i as u64));
            if !within {
                break;
            }
        }
    }
    end
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_entries: 1024,
            // room for the batch header and a rule-3b proof
            max_bytes: crate::wire::MAX_BATCH_BYTES - 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub agent: AgentId,
    /// The agent's own key: adoption needs its signature (rule 3c).
    pub agent_key: PublicKey,
    /// The pinned gateway key, if configured or pinned earlier.
    pub gateway_key: Option<PublicKey>,
    /// Pin the key of the first gateway that answers a hello (only when no
    /// key is pinned yet).
    pub pin_on_first_contact: bool,
    pub software: String,
    /// Batches in flight before a receipt must arrive.
    pub window: usize,
    pub limits: BatchLimits,
    /// Hello again when no receipt advanced for this long (default 10 s).
    pub resend_timeout: Duration,
    /// Hello now and then while idle, so that a gateway that lost data is
    /// noticed even when its restart receipt was lost (default 60 s).
    pub idle_hello: Option<Duration>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Seeds the nonce and jitter generator (the shell passes OS entropy).
    pub seed: u64,
}

impl UplinkConfig {
    pub fn new(
        agent: AgentId,
        agent_key: PublicKey,
        gateway_key: Option<PublicKey>,
        seed: u64,
    ) -> Self {
        UplinkConfig {
            agent,
            agent_key,
            gateway_key,
            pin_on_first_contact: false,
            software: String::new(),
            window: 8,
            limits: BatchLimits::default(),
            resend_timeout: Duration::from_secs(10),
            idle_hello: Some(Duration::from_secs(60)),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            seed,
        }
    }
}

/// An instruction for the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Publish on `hello`.
    Hello(Hello),
    /// Read entries `from..=to` from the ledger and publish them as one
    /// batch on `entries`, with `proof` attached.
    Batch {
        from: Seq,
        to: Seq,
        proof: Option<Receipt>,
    },
    /// Sign the newest entry (`seq`) as a checkpoint and commit the sig
    /// durably before anything transmits it (PROTOCOL §4, rule 0).
    SignHead { seq: Seq },
    /// Durably keep this receipt as the best proof (rule 2).
    StoreBestReceipt(Receipt),
    /// Durably pin this gateway key (first contact).
    PinGatewayKey(PublicKey),
    /// Rule 3c: in one durable commit, set local entries after the best
    /// receipt aside as orphans, append `recovery` at `receipt.seq + 1`
    /// with prev `receipt.hash`, re-append the orphans; then call
    /// [`Uplink::adopted`].
    Adopt(Box<Adoption>),
    /// Report (log, status, alert entry).
    Alert(Alert),
}

/// The `data` of the `recovery` entry an adoption appends (PROTOCOL §7 rule
/// 3c): why, the adopted head with the agent's own signature on it, the
/// local head it replaces, and the orphaned run `from..=to` (its last hash)
/// that is re-appended after it.
pub fn recovery_data(
    reason: &str,
    adoption: &Adoption,
    local_head: Option<(Seq, Hash)>,
    orphaned: Option<(Seq, Seq, Hash)>,
) -> crate::json::Value {
    use crate::json::{Object, Value};
    let r = &adoption.receipt;
    let point = |seq: Seq, hash: &Hash| {
        let mut o = Object::new();
        o.insert("seq", Value::from(seq.0));
        o.insert("hash", Value::from(hash.to_hex()));
        o
    };
    let mut data = Object::new();
    data.insert("reason", Value::from(reason));
    data.insert("gateway", Value::from(r.gateway.as_str()));
    let mut adopted = point(r.seq, &r.hash);
    adopted.insert("sig", Value::from(adoption.agent_sig.to_hex()));
    data.insert("adopted", Value::Object(adopted));
    data.insert(
        "local_head",
        local_head.map_or(Value::Null, |(s, h)| Value::Object(point(s, &h))),
    );
    data.insert(
        "orphaned",
        orphaned.map_or(Value::Null, |(from, to, head)| {
            let mut o = Object::new();
            o.insert("from", Value::from(from.0));
            o.insert("to", Value::from(to.0));
            o.insert("head_hash", Value::from(head.to_hex()));
            Value::Object(o)
        }),
    );
    Value::Object(data)
}

/// A head the agent has verified it signed itself, to adopt.
#[derive(Debug, Clone, PartialEq)]
pub struct Adoption {
    pub receipt: Receipt,
    pub agent_sig: Sig,
    /// The best receipt before adoption, if any (orphans start after it).
    pub best_before: Option<Receipt>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    /// A receipt whose signature does not verify under the pinned key.
    BadReceiptSignature { gateway: AgentId, seq: Seq },
    /// A hello answer names a gateway key other than the pinned one.
    ForeignGatewayKey { gateway: AgentId },
    /// A receipt above the best one names a hash we do not hold at its seq.
    ReceiptMismatch { seq: Seq },
    /// The gateway's head is below the best receipt it gave (rule 3b).
    GatewayDataLoss { best: Seq, gateway_head: Seq },
    /// The gateway offered a head without the agent's own valid checkpoint
    /// (rule 3c): not adopted, nothing sent.
    UnsignedHead { seq: Seq, hash: Hash },
    /// A signed reject answering a current hello (rule 3d): transmission
    /// stops, hello retries with backoff.
    Rejected { reason: RejectReason, seq: Seq },
    /// A reject that does not stop delivery (unsigned, stale, not a
    /// stopping reason, or answering a batch): it prompted a hello, at most
    /// one per `resend_timeout`, and nothing else.
    UnauthenticatedReject { reason: RejectReason, seq: Seq },
}

/// For people (status, logs): what happened and what the agent does about
/// it, in the protocol's words.
impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alert::BadReceiptSignature { gateway, seq } => write!(
                f,
                "a receipt from {gateway} for seq {seq} does not verify under the pinned gateway key; ignored"
            ),
            Alert::ForeignGatewayKey { gateway } => write!(
                f,
                "{gateway} answered with a key other than the pinned one; not trusted"
            ),
            Alert::ReceiptMismatch { seq } => write!(
                f,
                "the gateway's receipt for seq {seq} names a hash this ledger does not hold"
            ),
            Alert::GatewayDataLoss { best, gateway_head } => write!(
                f,
                "the gateway lost data: it holds up to seq {gateway_head}, below its own receipt for {best}; resending"
            ),
            Alert::UnsignedHead { seq, hash } => write!(
                f,
                "the gateway offered head {seq} ({hash}) without this agent's checkpoint signature; not adopted"
            ),
            Alert::Rejected { reason, seq } => write!(
                f,
                "the gateway refused this agent ({}, at seq {seq}); delivery paused, hello retries",
                reason.as_str()
            ),
            Alert::UnauthenticatedReject { reason, seq } => write!(
                f,
                "a reject ({}, at seq {seq}) that is not the gateway's signed answer to a current hello; ignored",
                reason.as_str()
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Not connected.
    Offline,
    /// Connected; a hello goes out on the next poll.
    NeedHello,
    /// Waiting for the answer to the hello with this nonce; `best` is the
    /// best receipt's seq when it was sent: only an answer below that is
    /// evidence of data loss (a later receipt may overtake the answer).
    Hello {
        nonce: Nonce,
        sent_at: Duration,
        best: Seq,
    },
    Streaming,
    /// Waiting for the shell to carry out an adoption.
    Adopting,
    /// After a reject or a refused head: hello again at `retry_at`.
    Halted {
        retry_at: Duration,
    },
}

/// Counters for the impedance profile and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkStats {
    pub hellos_sent: u64,
    pub batches_sent: u64,
    pub receipts_counted: u64,
    pub resends: u64,
    /// Rejects that did not stop delivery (rule 3d).
    pub rejects_ignored: u64,
}

#[derive(Debug)]
pub struct Uplink {
    cfg: UplinkConfig,
    rng: SplitMix64,
    backoff: Backoff,
    connected: bool,
    phase: Phase,
    pinned: Option<PublicKey>,
    best: Option<Receipt>,
    /// The view of the gateway's head.
    acked: Seq,
    /// The next seq to transmit.
    next: Seq,
    /// Batches sent and not yet covered by a receipt, oldest first.
    in_flight: VecDeque<(Seq, Seq)>,
    /// When the receipted head last advanced (or streaming started).
    progress_at: Duration,
    /// Rule 3b: the batch starting here carries the best receipt as proof.
    proof_from: Option<Seq>,
    /// SignHead already asked for this head.
    sign_requested: Option<Seq>,
    /// When the last hello went out.
    hello_at: Duration,
    /// The nonces of the last two hellos: a reject stops delivery only if
    /// it answers one of them (rule 3d).
    recent_nonces: [Option<Nonce>; 2],
    /// An unauthenticated reject asked for a hello that must not interrupt
    /// streaming (its answer can only raise the view).
    probe_due: bool,
    queue: VecDeque<Output>,
    stats: UplinkStats,
}

impl Uplink {
    /// Starts from the durable state: the best receipt kept as proof and the
    /// pinned gateway key (if pinned at first contact earlier).
    pub fn new(cfg: UplinkConfig, best: Option<Receipt>) -> Self {
        let acked = best.as_ref().map_or(Seq::ZERO, |r| r.seq);
        Uplink {
            rng: SplitMix64::new(cfg.seed),
            backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max, cfg.seed ^ 0x5eed),
            connected: false,
            phase: Phase::Offline,
            pinned: cfg.gateway_key,
            best,
            acked,
            next: acked.next(),
            in_flight: VecDeque::new(),
            progress_at: Duration::ZERO,
            proof_from: None,
            sign_requested: None,
            hello_at: Duration::ZERO,
            recent_nonces: [None; 2],
            probe_due: false,
            queue: VecDeque::new(),
            stats: UplinkStats::default(),
            cfg,
        }
    }

    /// The best receipt (highest seq that counted): entries up to it may be
    /// deleted once older than the retention, nothing else ever.
    pub fn best(&self) -> Option<&Receipt> {
        self.best.as_ref()
    }

    /// The view of the gateway's head.
    pub fn acked(&self) -> Seq {
        self.acked
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn stats(&self) -> UplinkStats {
        self.stats
    }

    pub fn pinned_key(&self) -> Option<&PublicKey> {
        self.pinned.as_ref()
    }

    /// Whether batches may be sent now.
    pub fn is_streaming(&self) -> bool {
        self.connected && self.phase == Phase::Streaming
    }

    /// Whether transmission stopped after a reject or a refused head.
    pub fn is_halted(&self) -> bool {
        matches!(self.phase, Phase::Halted { .. })
    }

    /// The MQTT session is up (after every ConnAck).
    pub fn connected(&mut self, _now: Duration) {
        self.connected = true;
        self.in_flight.clear();
        if self.phase != Phase::Adopting {
            self.phase = Phase::NeedHello;
        }
    }

    /// The MQTT session is down: whatever was in flight is presumed lost.
    pub fn disconnected(&mut self, _now: Duration) {
        self.connected = false;
        self.in_flight.clear();
        if !matches!(self.phase, Phase::Adopting | Phase::Halted { .. }) {
            self.phase = Phase::Offline;
        }
    }

    /// The shell committed the adoption it was asked for.
    pub fn adopted(&mut self, now: Duration, adoption: &Adoption) {
        let r = &adoption.receipt;
        let mut stored = r.clone();
        stored.hello = None;
        if self.best.as_ref().is_none_or(|b| r.seq >= b.seq) {
            self.best = Some(stored.clone());
            self.queue.push_back(Output::StoreBestReceipt(stored));
        }
        self.resume_from(now, r.seq);
        self.phase = if self.connected {
            Phase::Streaming
        } else {
            Phase::Offline
        };
    }

    /// The next instruction, or `None` until an event or the timeout.
    pub fn poll(&mut self, now: Duration, ledger: &impl Ledger) -> Option<Output> {
        if let Some(out) = self.queue.pop_front() {
            return Some(out);
        }
        if !self.connected {
            return None;
        }
        match self.phase {
            Phase::Offline | Phase::Adopting => None,
            Phase::NeedHello => Some(self.hello(now, ledger)),
            Phase::Hello { sent_at, .. } if now >= sent_at + self.cfg.resend_timeout => {
                Some(self.hello(now, ledger))
            }
            Phase::Hello { .. } => None,
            Phase::Halted { retry_at } if now >= retry_at => Some(self.hello(now, ledger)),
            Phase::Halted { .. } => None,
            Phase::Streaming => {
                if std::mem::take(&mut self.probe_due) {
                    let (_, probe) = self.hello_message(now, ledger);
                    return Some(probe);
                }
                if !self.in_flight.is_empty() && now >= self.progress_at + self.cfg.resend_timeout {
                    self.stats.resends += 1;
                    return Some(self.hello(now, ledger));
                }
                let out = self.transmit(now, ledger);
                if out.is_none()
                    && self.in_flight.is_empty()
                    && self
                        .cfg
                        .idle_hello
                        .is_some_and(|idle| now >= self.hello_at + idle)
                {
                    return Some(self.hello(now, ledger));
                }
                out
            }
        }
    }

    /// When [`Uplink::poll`] next has something to do on its own.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if !self.queue.is_empty() {
            return Some(Duration::ZERO);
        }
        if !self.connected {
            return None;
        }
        match self.phase {
            Phase::Hello { sent_at, .. } => Some(sent_at + self.cfg.resend_timeout),
            Phase::Halted { retry_at } => Some(retry_at),
            Phase::Streaming if self.probe_due => Some(Duration::ZERO),
            Phase::Streaming if !self.in_flight.is_empty() => {
                Some(self.progress_at + self.cfg.resend_timeout)
            }
            Phase::Streaming => self.cfg.idle_hello.map(|idle| self.hello_at + idle),
            _ => None,
        }
    }

    /// A hello whose answer is authoritative (rule 3): streaming waits for it.
    fn hello(&mut self, now: Duration, ledger: &impl Ledger) -> Output {
        let (nonce, hello) = self.hello_message(now, ledger);
        self.phase = Phase::Hello {
            nonce,
            sent_at: now,
            best: self.best.as_ref().map_or(Seq::ZERO, |b| b.seq),
        };
        self.in_flight.clear();
        hello
    }

    /// A hello with a fresh nonce, remembered as one of the current two.
    fn hello_message(&mut self, now: Duration, ledger: &impl Ledger) -> (Nonce, Output) {
        let mut nonce = [0u8; 16];
        self.rng.fill(&mut nonce);
        let nonce = Nonce(nonce);
        self.recent_nonces = [Some(nonce), self.recent_nonces[0]];
        self.hello_at = now;
        self.stats.hellos_sent += 1;
        let head = ledger.head();
        let hello = Output::Hello(Hello {
            agent: self.cfg.agent.clone(),
            public_key: self.cfg.agent_key.to_bytes(),
            head_seq: head,
            head_hash: ledger.hash_at(head).unwrap_or(Hash::ZERO),
            nonce,
            software: self.cfg.software.clone(),
        });
        (nonce, hello)
    }

    fn transmit(&mut self, now: Duration, ledger: &impl Ledger) -> Option<Output> {
        if self.in_flight.len() >= self.cfg.window.max(1) {
            return None;
        }
        let oldest = ledger.oldest();
        if self.next < oldest {
            // What is below `oldest` was pruned, so the best receipt covers
            // it: present that receipt with the first batch (rule 3b).
            self.next = oldest;
            if oldest > self.acked.next() {
                self.proof_from = Some(oldest);
            }
        }
        let head = ledger.head();
        if self.next > head {
            return None;
        }
        let from = self.next;
        let Some(to) = ledger.batch_end(from, self.cfg.limits) else {
            if self.sign_requested == Some(head) {
                return None;
            }
            self.sign_requested = Some(head);
            return Some(Output::SignHead { seq: head });
        };
        let proof = if self.proof_from == Some(from) {
            self.best.clone()
        } else {
            None
        };
        if self.in_flight.is_empty() {
            self.progress_at = now;
        }
        self.in_flight.push_back((from, to));
        self.next = to.next();
        self.stats.batches_sent += 1;
        Some(Output::Batch { from, to, proof })
    }

    /// A receipt arrived on `ack`. Returns whether it was the verified
    /// answer to the outstanding hello (only that may start a new chain
    /// when the gateway holds nothing and the ledger is being rebuilt).
    pub fn handle_receipt(
        &mut self,
        now: Duration,
        receipt: &Receipt,
        ledger: &impl Ledger,
    ) -> bool {
        if receipt.agent != self.cfg.agent {
            return false;
        }
        let (answer_to, best_at_hello) = match &self.phase {
            Phase::Hello { nonce, best, .. } => (
                receipt
                    .hello
                    .as_ref()
                    .filter(|echo| echo.nonce == *nonce)
                    .map(|echo| echo.gateway_key),
                *best,
            ),
            _ => (None, Seq::ZERO),
        };
        let key = match self.pinned {
            Some(k) => k,
            None => {
                let candidate = answer_to
                    .filter(|_| self.cfg.pin_on_first_contact)
                    .and_then(|bytes| PublicKey::trusted(&bytes).ok());
                match candidate {
                    Some(k) if receipt.verify(&k) => {
                        self.pinned = Some(k);
                        self.queue.push_back(Output::PinGatewayKey(k));
                        k
                    }
                    // No key to judge it by: it changes nothing.
                    _ => return false,
                }
            }
        };
        if !receipt.verify(&key) {
            let alert = match answer_to {
                Some(bytes) if bytes != key.to_bytes() => Alert::ForeignGatewayKey {
                    gateway: receipt.gateway.clone(),
                },
                _ => Alert::BadReceiptSignature {
                    gateway: receipt.gateway.clone(),
                    seq: receipt.seq,
                },
            };
            self.queue.push_back(Output::Alert(alert));
            return false;
        }
        if answer_to.is_some() {
            self.hello_answer(now, receipt, ledger, best_at_hello);
            true
        } else {
            self.raise(now, receipt, ledger);
            false
        }
    }

    /// The hash we know at `seq`: held, anchored, or named by the best receipt.
    fn known_hash(&self, seq: Seq, ledger: &impl Ledger) -> Option<Hash> {
        ledger
            .hash_at(seq)
            .or_else(|| self.best.as_ref().filter(|b| b.seq == seq).map(|b| b.hash))
    }

    /// Any receipt other than the hello answer: it can only raise the view.
    /// One below the view (a gateway that restarted, perhaps without its
    /// newest data) prompts a hello, whose answer is authoritative.
    fn raise(&mut self, now: Duration, r: &Receipt, ledger: &impl Ledger) {
        if r.seq < self.acked
            && self.phase == Phase::Streaming
            && now >= self.hello_at + self.cfg.resend_timeout
        {
            self.phase = Phase::NeedHello;
        }
        if self.known_hash(r.seq, ledger) == Some(r.hash) {
            self.count(now, r);
        } else if self.best.as_ref().is_none_or(|b| r.seq > b.seq) {
            self.queue
                .push_back(Output::Alert(Alert::ReceiptMismatch { seq: r.seq }));
        }
    }

    /// A receipt that counted: raise the view and the best receipt.
    fn count(&mut self, now: Duration, r: &Receipt) {
        self.stats.receipts_counted += 1;
        if r.seq > self.acked {
            self.acked = r.seq;
            let acked = self.acked;
            self.in_flight.retain(|&(_, to)| to > acked);
            self.progress_at = now;
            self.backoff.reset();
        }
        if self.next <= self.acked {
            self.next = self.acked.next();
        }
        if self.proof_from.is_some_and(|p| self.acked >= p) {
            self.proof_from = None;
        }
        if self.best.as_ref().is_none_or(|b| r.seq > b.seq) {
            let mut stored = r.clone();
            stored.hello = None;
            self.best = Some(stored.clone());
            self.queue.push_back(Output::StoreBestReceipt(stored));
        }
    }

    fn resume_from(&mut self, now: Duration, gateway_head: Seq) {
        self.in_flight.clear();
        self.acked = gateway_head;
        self.next = gateway_head.next();
        self.progress_at = now;
        self.proof_from = None;
        self.sign_requested = None;
    }

    /// Rule 3: the answer to the outstanding hello, which may lower the view.
    fn hello_answer(
        &mut self,
        now: Duration,
        r: &Receipt,
        ledger: &impl Ledger,
        best_at_hello: Seq,
    ) {
        let n = r.seq;
        let best_seq = self.best.as_ref().map_or(Seq::ZERO, |b| b.seq);
        let local = self.known_hash(n, ledger);
        let pruned = local.is_none() && n < ledger.oldest() && n < best_seq;
        if local == Some(r.hash) || pruned {
            // a: resend from N+1; b: likewise, after an alert, and from the
            // oldest held entry with the best receipt as proof if N+1 is gone.
            if n < best_at_hello {
                self.queue.push_back(Output::Alert(Alert::GatewayDataLoss {
                    best: best_at_hello,
                    gateway_head: n,
                }));
            }
            self.resume_from(now, n);
            self.phase = Phase::Streaming;
            self.backoff.reset();
            if local.is_some() {
                self.count(now, r);
            }
            return;
        }
        // c: the gateway is ahead, or holds another history at N.
        let sig = r.hello.as_ref().and_then(|e| e.agent_sig);
        match sig {
            Some(sig)
                if self
                    .cfg
                    .agent_key
                    .verify_checkpoint(&self.cfg.agent, n, &r.hash, &sig) =>
            {
                self.phase = Phase::Adopting;
                self.in_flight.clear();
                self.queue.push_back(Output::Adopt(Box::new(Adoption {
                    receipt: r.clone(),
                    agent_sig: sig,
                    best_before: self.best.clone(),
                })));
            }
            _ => {
                self.queue.push_back(Output::Alert(Alert::UnsignedHead {
                    seq: n,
                    hash: r.hash,
                }));
                self.halt(now);
            }
        }
    }

    fn halt(&mut self, now: Duration) {
        self.in_flight.clear();
        self.phase = Phase::Halted {
            retry_at: now + self.backoff.next_delay(),
        };
    }

    /// A nack arrived: advisory, it can trigger a resend or a hello only,
    /// except the signed answer to a current hello (rule 3d).
    pub fn handle_nack(&mut self, now: Duration, nack: &Nack) {
        if nack.agent != self.cfg.agent {
            return;
        }
        match nack.kind {
            NackKind::Resend { from } => {
                let best_seq = self.best.as_ref().map_or(Seq::ZERO, |b| b.seq);
                if from <= best_seq || self.phase != Phase::Streaming {
                    return;
                }
                let from = from.max(self.acked.next());
                if from < self.next {
                    self.next = from;
                    self.in_flight.retain(|&(_, to)| to < from);
                    self.stats.resends += 1;
                }
            }
            NackKind::Reject { reason, seq } => {
                if matches!(self.phase, Phase::Adopting | Phase::Halted { .. }) {
                    return;
                }
                let current: Vec<Nonce> = self.recent_nonces.iter().flatten().copied().collect();
                if nack.stops_delivery(self.pinned.as_ref(), &current) {
                    self.queue
                        .push_back(Output::Alert(Alert::Rejected { reason, seq }));
                    self.halt(now);
                    return;
                }
                self.stats.rejects_ignored += 1;
                // Anything else only prompts a hello, at most one per
                // resend_timeout, that never interrupts streaming.
                if self.phase == Phase::Streaming
                    && !self.probe_due
                    && now >= self.hello_at + self.cfg.resend_timeout
                {
                    self.probe_due = true;
                    self.queue
                        .push_back(Output::Alert(Alert::UnauthenticatedReject { reason, seq }));
                }
            }
        }
    }
}
