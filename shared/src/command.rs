//! Coordination commands (PROTOCOL §9): the content and its hash, the two
//! signatures a delivery carries, what a recipient checks before it takes
//! one, the trinary answer, and the quorum decision. No I/O: times are
//! passed in, in the top's time.
//!
//! A recipient's checks run cheapest first and never read content an
//! unauthenticated sender sent: the addressee, the hash of the bytes as
//! they came, the sender's and the issuer's signatures over it, and only
//! then the content itself ([`accept`]).

use crate::canonical;
use crate::crypto::{Hash, PublicKey, SecretKey, Sig, sha256};
use crate::entry::{format_timestamp, parse_timestamp};
use crate::id::{AgentId, ClusterId, CommandId};
use crate::json::{self, Object, Value};

/// The largest payload, canonical.
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024;
/// The largest `result` of an answer, canonical.
pub const MAX_RESULT_BYTES: usize = 4 * 1024;
/// The longest a command may live: `expires − issued`.
pub const MAX_LIFETIME_MS: i64 = 24 * 3_600_000;
/// Array items in a `select` filter: bounded like everything an attacker
/// could send (a delivery is at most 32 KiB anyway).
pub const MAX_SELECT_ITEMS: usize = 1024;

/// What a command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Observe,
    Orient,
    Decide,
    Act,
    Record,
    Sync,
    Freeze,
    Thaw,
}

impl Verb {
    pub const ALL: [Verb; 8] = [
        Verb::Observe,
        Verb::Orient,
        Verb::Decide,
        Verb::Act,
        Verb::Record,
        Verb::Sync,
        Verb::Freeze,
        Verb::Thaw,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Observe => "observe",
            Verb::Orient => "orient",
            Verb::Decide => "decide",
            Verb::Act => "act",
            Verb::Record => "record",
            Verb::Sync => "sync",
            Verb::Freeze => "freeze",
            Verb::Thaw => "thaw",
        }
    }

    pub fn parse(s: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// A frozen agent still answers these (everything else: `frozen`).
    pub fn passes_freeze(self) -> bool {
        matches!(self, Verb::Thaw | Verb::Observe)
    }

    /// These are taken without a synced clock and after `expires` (check
    /// (d) of accepting a delivery does not apply to them).
    pub fn needs_clock(self) -> bool {
        !matches!(self, Verb::Freeze | Verb::Thaw | Verb::Observe)
    }
}

/// Optional filters; every one given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Select {
    pub clusters: Option<Vec<ClusterId>>,
    pub agents: Option<Vec<AgentId>>,
    /// All of these must be held.
    pub capabilities: Option<Vec<String>>,
    pub classes: Option<Vec<String>>,
    /// At most this many per cluster, lowest impedance first (cluster
    /// gateways apply it).
    pub sample: Option<u64>,
}

/// What an agent is, as a selection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub agent: &'a AgentId,
    pub cluster: &'a ClusterId,
    pub capabilities: &'a [String],
    pub class: Option<&'a str>,
}

impl Select {
    /// Whether `c` passes every filter but `sample` (which ranks).
    pub fn matches(&self, c: &Candidate<'_>) -> bool {
        self.clusters.as_ref().is_none_or(|l| l.contains(c.cluster))
            && self.agents.as_ref().is_none_or(|l| l.contains(c.agent))
            && self
                .capabilities
                .as_ref()
                .is_none_or(|l| l.iter().all(|cap| c.capabilities.contains(cap)))
            && self
                .classes
                .as_ref()
                .is_none_or(|l| c.class.is_some_and(|k| l.iter().any(|x| x == k)))
    }

    /// The capabilities asked for that `held` lacks.
    pub fn missing_capabilities<'a>(&'a self, held: &[String]) -> Vec<&'a str> {
        self.capabilities
            .iter()
            .flatten()
            .filter(|c| !held.contains(c))
            .map(String::as_str)
            .collect()
    }
}

/// The rates a decision is taken by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quorum {
    pub ready: f64,
    pub conflict: f64,
    pub transit: f64,
}

impl Default for Quorum {
    fn default() -> Self {
        Quorum {
            ready: 0.95,
            conflict: 0.05,
            transit: 0.10,
        }
    }
}

/// A valid command: its fields, and its content as received with the
/// canonical bytes and hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub issuer: AgentId,
    pub id: CommandId,
    pub issued_ms: i64,
    pub target_ms: i64,
    pub window_ms: u64,
    pub expires_ms: i64,
    pub priority: u8,
    pub verb: Verb,
    pub payload: Value,
    pub weight: f64,
    pub select: Select,
    pub quorum: Quorum,
    /// For `thaw`: the hash of the freeze it lifts.
    pub thaws: Option<Hash>,
    pub content: Value,
    pub canonical: Vec<u8>,
    pub hash: Hash,
}

/// Why content is not a valid command (PROTOCOL §9), in words that name
/// the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContentError {
    #[error("content is not JSON: {0}")]
    Json(json::ParseError),
    #[error("content bytes are not canonical (PROTOCOL §3)")]
    NotCanonical,
    #[error("content is not an object")]
    NotAnObject,
    #[error("unknown key {key:?} in {at}")]
    UnknownKey { at: &'static str, key: String },
    #[error("missing key {0:?}")]
    Missing(&'static str),
    #[error("{key}: {why}")]
    Invalid { key: &'static str, why: String },
    #[error("payload is {0} bytes canonical (at most {MAX_PAYLOAD_BYTES})")]
    PayloadTooLarge(usize),
}

fn invalid(key: &'static str, why: impl Into<String>) -> ContentError {
    ContentError::Invalid {
        key,
        why: why.into(),
    }
}

const KEYS: [&str; 13] = [
    "v",
    "issuer",
    "id",
    "issued",
    "target",
    "window_ms",
    "expires",
    "priority",
    "verb",
    "payload",
    "weight",
    "select",
    "quorum",
];
const SELECT_KEYS: [&str; 5] = ["clusters", "agents", "capabilities", "classes", "sample"];
const QUORUM_KEYS: [&str; 3] = ["ready", "conflict", "transit"];

fn only_keys(o: &Object, allowed: &[&str], at: &'static str) -> Result<(), ContentError> {
    match o.keys().find(|k| !allowed.contains(k)) {
        Some(key) => Err(ContentError::UnknownKey {
            at,
            key: key.to_owned(),
        }),
        None => Ok(()),
    }
}

impl Command {
    /// Reads canonical content bytes (what a delivery carries and what
    /// the hash is over).
    pub fn from_canonical(bytes: &[u8]) -> Result<Command, ContentError> {
        let content = json::parse(bytes, json::Mode::Verify).map_err(ContentError::Json)?;
        if canonical::to_vec(&content) != bytes {
            return Err(ContentError::NotCanonical);
        }
        Command::from_content(content)
    }

    /// Checks content (any JSON form) and computes its hash.
    pub fn from_content(content: Value) -> Result<Command, ContentError> {
        let o = content.as_object().ok_or(ContentError::NotAnObject)?;
        only_keys(o, &KEYS, "the command")?;
        let get = |k: &'static str| o.get(k).ok_or(ContentError::Missing(k));
        if get("v")?.as_exact_u64() != Some(1) {
            return Err(invalid("v", "must be 1"));
        }
        let id_of = |k: &'static str| -> Result<&str, ContentError> {
            get(k)?
                .as_str()
                .ok_or_else(|| invalid(k, "must be a string"))
        };
        let issuer =
            AgentId::new(id_of("issuer")?).map_err(|e| invalid("issuer", e.to_string()))?;
        let id = CommandId::new(id_of("id")?).map_err(|e| invalid("id", e.to_string()))?;
        let time = |k: &'static str| -> Result<i64, ContentError> {
            get(k)?
                .as_str()
                .and_then(parse_timestamp)
                .ok_or_else(|| invalid(k, "must be a timestamp YYYY-MM-DDTHH:MM:SS.mmmZ"))
        };
        let (issued_ms, target_ms, expires_ms) =
            (time("issued")?, time("target")?, time("expires")?);
        let window_ms = get("window_ms")?
            .as_exact_u64()
            .ok_or_else(|| invalid("window_ms", "must be an integer ≥ 0"))?;
        if issued_ms > target_ms {
            return Err(invalid("target", "before issued"));
        }
        let deadline = i64::try_from(window_ms)
            .ok()
            .and_then(|w| target_ms.checked_add(w));
        if deadline.is_none_or(|d| d > expires_ms) {
            return Err(invalid("expires", "before target + window_ms"));
        }
        if expires_ms - issued_ms > MAX_LIFETIME_MS {
            return Err(invalid("expires", "more than 24 h after issued"));
        }
        let priority = get("priority")?
            .as_exact_u64()
            .filter(|p| *p <= 3)
            .ok_or_else(|| invalid("priority", "must be an integer 0–3"))?;
        let verb = get("verb")?.as_str().and_then(Verb::parse).ok_or_else(|| {
            invalid(
                "verb",
                "must be one of observe, orient, decide, act, record, sync, freeze, thaw",
            )
        })?;
        let payload = get("payload")?.clone();
        let payload_len = canonical::to_vec(&payload).len();
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(ContentError::PayloadTooLarge(payload_len));
        }
        let thaws = match verb {
            Verb::Thaw => Some(
                payload
                    .as_object()
                    .filter(|p| p.len() == 1)
                    .and_then(|p| p.get("freeze"))
                    .and_then(Value::as_str)
                    .and_then(|h| Hash::from_hex(h).ok())
                    .ok_or_else(|| {
                        invalid("payload", "a thaw names its freeze: {\"freeze\": hash}")
                    })?,
            ),
            _ => None,
        };
        let weight = get("weight")?
            .as_f64()
            .filter(|w| *w >= 0.0)
            .ok_or_else(|| invalid("weight", "must be a number ≥ 0"))?;
        let select = match o.get("select") {
            None => Select::default(),
            Some(v) => read_select(v)?,
        };
        let quorum = match o.get("quorum") {
            None => Quorum::default(),
            Some(v) => read_quorum(v)?,
        };
        let canonical = canonical::to_vec(&content);
        let hash = sha256(&canonical);
        Ok(Command {
            issuer,
            id,
            issued_ms,
            target_ms,
            window_ms,
            expires_ms,
            priority: u8::try_from(priority).unwrap_or(3),
            verb,
            payload,
            weight,
            select,
            quorum,
            thaws,
            content,
            canonical,
            hash,
        })
    }

    /// T + `window_ms`: an answer READY at or before it is on time.
    pub fn deadline_ms(&self) -> i64 {
        self.target_ms
            .saturating_add(i64::try_from(self.window_ms).unwrap_or(i64::MAX))
    }

    pub fn on_time(&self, ready_ms: i64) -> bool {
        ready_ms <= self.deadline_ms()
    }

    /// Whether an agent holding a synced clock (or not) at corrected time
    /// `now_ms`, frozen (or not), takes it — or the conflict it answers
    /// instead (PROTOCOL §9 check (d), and a freeze).
    pub fn admit(&self, now_ms: i64, synced: bool, frozen: bool) -> Result<(), ConflictKind> {
        if frozen && !self.verb.passes_freeze() {
            return Err(ConflictKind::Frozen);
        }
        if self.verb.needs_clock() {
            if !synced {
                return Err(ConflictKind::ClockUnsynced);
            }
            if now_ms >= self.expires_ms {
                return Err(ConflictKind::Expired);
            }
        }
        Ok(())
    }
}

fn read_select(v: &Value) -> Result<Select, ContentError> {
    let o = v
        .as_object()
        .ok_or_else(|| invalid("select", "must be an object"))?;
    only_keys(o, &SELECT_KEYS, "select")?;
    fn strings(o: &Object, key: &'static str) -> Result<Option<Vec<String>>, ContentError> {
        let Some(v) = o.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(invalid(
                "select",
                format!("{key} must be an array of strings"),
            ));
        };
        if items.is_empty() {
            return Err(invalid("select", format!("{key} is empty")));
        }
        if items.len() > MAX_SELECT_ITEMS {
            return Err(invalid(
                "select",
                format!("{key} has more than {MAX_SELECT_ITEMS} items"),
            ));
        }
        items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("select", format!("{key} must be an array of strings")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
    let ids = |key: &'static str| -> Result<Option<Vec<String>>, ContentError> { strings(o, key) };
    let clusters = ids("clusters")?
        .map(|l| {
            l.into_iter()
                .map(ClusterId::new)
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|e| invalid("select", format!("clusters: {e}")))?;
    let agents = ids("agents")?
        .map(|l| {
            l.into_iter()
                .map(AgentId::new)
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|e| invalid("select", format!("agents: {e}")))?;
    let sample = match o.get("sample") {
        None => None,
        Some(v) => Some(
            v.as_exact_u64()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid("select", "sample must be an integer ≥ 1"))?,
        ),
    };
    Ok(Select {
        clusters,
        agents,
        capabilities: strings(o, "capabilities")?,
        classes: strings(o, "classes")?,
        sample,
    })
}

fn read_quorum(v: &Value) -> Result<Quorum, ContentError> {
    let o = v
        .as_object()
        .ok_or_else(|| invalid("quorum", "must be an object"))?;
    only_keys(o, &QUORUM_KEYS, "quorum")?;
    let d = Quorum::default();
    let rate = |key: &'static str, default: f64| match o.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| invalid("quorum", format!("{key} must be a rate in [0, 1]"))),
    };
    Ok(Quorum {
        ready: rate("ready", d.ready)?,
        conflict: rate("conflict", d.conflict)?,
        transit: rate("transit", d.transit)?,
    })
}

/// `ASCII("baton.command.v1") ‖ 0 ‖ sender ‖ 0 ‖ recipient ‖ 0 ‖ command_hash`.
pub fn delivery_message(sender: &AgentId, recipient: &AgentId, hash: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(17 + sender.as_str().len() + recipient.as_str().len() + 34);
    m.extend_from_slice(b"baton.command.v1\0");
    m.extend_from_slice(sender.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(recipient.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(&hash.0);
    m
}

/// The issuer's signature: over `delivery_message(issuer, issuer, hash)`.
pub fn origin_sig(key: &SecretKey, issuer: &AgentId, hash: &Hash) -> Sig {
    key.sign(&delivery_message(issuer, issuer, hash))
}

/// A sending tier's signature for one recipient.
pub fn sender_sig(key: &SecretKey, sender: &AgentId, recipient: &AgentId, hash: &Hash) -> Sig {
    key.sign(&delivery_message(sender, recipient, hash))
}

/// Why a delivery is bad input (PROTOCOL §9 checks (a)–(c)): counted,
/// logged at most once a minute, dropped, never answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("addressed to {0}, not to this recipient")]
    Misaddressed(AgentId),
    #[error("the sender's signature does not verify under the key trusted for {0}")]
    SenderSig(AgentId),
    #[error("the origin signature verifies under no issuer key this recipient obeys")]
    Issuer,
    #[error("invalid command: {0}")]
    Content(#[from] ContentError),
}

impl Refused {
    /// For counters: `misaddressed`, `sender_sig`, `issuer`, `content`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refused::Misaddressed(_) => "misaddressed",
            Refused::SenderSig(_) => "sender_sig",
            Refused::Issuer => "issuer",
            Refused::Content(_) => "content",
        }
    }
}

/// The parts of a delivery the checks read (the wire message adds the
/// advisory send time and lead).
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// Canonical content bytes.
    pub content: &'a [u8],
    pub issuer: &'a AgentId,
    pub origin_sig: &'a Sig,
    pub sender: &'a AgentId,
    pub recipient: &'a AgentId,
    pub sender_sig: &'a Sig,
}

/// Checks (a)–(c) for recipient `me`: addressed to it, the sender's
/// signature under `sender_key`, the issuer's under one of `issuer_keys`
/// (a key pinned on first contact is never among them), then the content
/// — and that it names the issuer that signed. Check (d) is
/// [`Command::admit`].
pub fn accept(
    d: &Presented<'_>,
    me: &AgentId,
    sender_key: &PublicKey,
    issuer_keys: &[PublicKey],
) -> Result<Command, Refused> {
    if d.recipient != me {
        return Err(Refused::Misaddressed(d.recipient.clone()));
    }
    let hash = sha256(d.content);
    if !sender_key.verify(&delivery_message(d.sender, me, &hash), d.sender_sig) {
        return Err(Refused::SenderSig(d.sender.clone()));
    }
    let origin = delivery_message(d.issuer, d.issuer, &hash);
    if !issuer_keys.iter().any(|k| k.verify(&origin, d.origin_sig)) {
        return Err(Refused::Issuer);
    }
    let c = Command::from_canonical(d.content)?;
    if c.issuer != *d.issuer {
        return Err(Refused::Content(invalid(
            "issuer",
            format!("names {}, signed as {}", c.issuer, d.issuer),
        )));
    }
    Ok(c)
}

/// A trinary answer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// −1: information, not failure; a kind says which.
    Conflict,
    /// 0: still working.
    Transit,
    /// +1: prepared, and acting at T.
    Ready,
}

impl State {
    pub fn as_i64(self) -> i64 {
        match self {
            State::Conflict => -1,
            State::Transit => 0,
            State::Ready => 1,
        }
    }

    pub fn from_i64(n: i64) -> Option<State> {
        match n {
            -1 => Some(State::Conflict),
            0 => Some(State::Transit),
            1 => Some(State::Ready),
            _ => None,
        }
    }

    /// Final answers are never replaced.
    pub fn is_final(self) -> bool {
        self != State::Transit
    }
}

/// What a CONFLICT says (PROTOCOL §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConflictKind {
    CapabilityMismatch,
    Frozen,
    Expired,
    ClockUnsynced,
    TemporalParadox,
    HashMismatch,
    HandlerFailed,
    ContextDivergence,
    DataContradiction,
}

impl ConflictKind {
    pub const ALL: [ConflictKind; 9] = [
        ConflictKind::CapabilityMismatch,
        ConflictKind::Frozen,
        ConflictKind::Expired,
        ConflictKind::ClockUnsynced,
        ConflictKind::TemporalParadox,
        ConflictKind::HashMismatch,
        ConflictKind::HandlerFailed,
        ConflictKind::ContextDivergence,
        ConflictKind::DataContradiction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::CapabilityMismatch => "capability_mismatch",
            ConflictKind::Frozen => "frozen",
            ConflictKind::Expired => "expired",
            ConflictKind::ClockUnsynced => "clock_unsynced",
            ConflictKind::TemporalParadox => "temporal_paradox",
            ConflictKind::HashMismatch => "hash_mismatch",
            ConflictKind::HandlerFailed => "handler_failed",
            ConflictKind::ContextDivergence => "context_divergence",
            ConflictKind::DataContradiction => "data_contradiction",
        }
    }

    pub fn parse(s: &str) -> Option<ConflictKind> {
        ConflictKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A `command_ack`'s data.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub hash: Hash,
    pub state: State,
    pub received_ms: i64,
    pub ready_ms: Option<i64>,
    pub processing_ms: Option<u64>,
    pub conflict: Option<(ConflictKind, String)>,
    pub result: Option<Value>,
}

/// Why `command_ack` data does not read as an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("command_ack data: {0}")]
pub struct AnswerError(pub &'static str);

impl Answer {
    /// A CONFLICT of `kind`.
    pub fn conflict(
        hash: Hash,
        received_ms: i64,
        kind: ConflictKind,
        detail: impl Into<String>,
    ) -> Answer {
        Answer {
            hash,
            state: State::Conflict,
            received_ms,
            ready_ms: None,
            processing_ms: None,
            conflict: Some((kind, detail.into())),
            result: None,
        }
    }

    /// `{"hash", "state", "received_ms", "ready_ms", "processing_ms",
    /// "conflict", "result"}`, every key present (`null` when absent).
    pub fn to_data(&self) -> Value {
        let mut d = Object::new();
        d.insert("hash", Value::from(self.hash.to_hex()));
        #[allow(clippy::cast_precision_loss)]
        let int = |n: i64| Value::Number(n as f64);
        d.insert("state", int(self.state.as_i64()));
        d.insert("received_ms", int(self.received_ms));
        d.insert("ready_ms", self.ready_ms.map_or(Value::Null, int));
        d.insert(
            "processing_ms",
            self.processing_ms.map_or(Value::Null, Value::from),
        );
        d.insert(
            "conflict",
            self.conflict.as_ref().map_or(Value::Null, |(k, detail)| {
                let mut c = Object::new();
                c.insert("kind", Value::from(k.as_str()));
                c.insert("detail", Value::from(detail.as_str()));
                Value::Object(c)
            }),
        );
        d.insert("result", self.result.clone().unwrap_or(Value::Null));
        Value::Object(d)
    }

    pub fn from_data(v: &Value) -> Result<Answer, AnswerError> {
        let o = v.as_object().ok_or(AnswerError("not an object"))?;
        let int = |k: &'static str| -> Result<Option<i64>, AnswerError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 =>
                {
                    #[allow(clippy::cast_possible_truncation)]
                    Ok(Some(*n as i64))
                }
                Some(_) => Err(AnswerError("a time or duration is not an integer")),
            }
        };
        let hash = o
            .get("hash")
            .and_then(Value::as_str)
            .and_then(|h| Hash::from_hex(h).ok())
            .ok_or(AnswerError("hash"))?;
        let state = int("state")?
            .and_then(State::from_i64)
            .ok_or(AnswerError("state must be 1, 0 or -1"))?;
        let conflict = match o.get("conflict") {
            None | Some(Value::Null) => None,
            Some(c) => {
                let c = c.as_object().ok_or(AnswerError("conflict"))?;
                let kind = c
                    .get("kind")
                    .and_then(Value::as_str)
                    .and_then(ConflictKind::parse)
                    .ok_or(AnswerError("conflict kind"))?;
                let detail = c.get("detail").and_then(Value::as_str).unwrap_or_default();
                Some((kind, detail.to_owned()))
            }
        };
        if (state == State::Conflict) != conflict.is_some() {
            return Err(AnswerError(
                "a conflict, and only a conflict, names its kind",
            ));
        }
        Ok(Answer {
            hash,
            state,
            received_ms: int("received_ms")?.ok_or(AnswerError("received_ms"))?,
            ready_ms: int("ready_ms")?,
            processing_ms: int("processing_ms")?.and_then(|n| u64::try_from(n).ok()),
            conflict,
            result: o.get("result").filter(|r| **r != Value::Null).cloned(),
        })
    }
}

/// A `command` entry's data: `{"content", "origin_sig", "from",
/// "sender_sig", "received_ms"}`, the content as received.
pub fn command_data(
    c: &Command,
    origin_sig: &Sig,
    from: &str,
    sender_sig: &Sig,
    received_ms: i64,
) -> Value {
    let mut d = Object::new();
    d.insert("content", c.content.clone());
    d.insert("origin_sig", Value::from(origin_sig.to_hex()));
    d.insert("from", Value::from(from));
    d.insert("sender_sig", Value::from(sender_sig.to_hex()));
    #[allow(clippy::cast_precision_loss)]
    d.insert("received_ms", Value::Number(received_ms as f64));
    Value::Object(d)
}

/// A phase of a gateway's `command_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// At T + `window_ms` + height × 2 s.
    Window,
    /// At `expires` + height × 2 s.
    Final,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Window => "window",
            Phase::Final => "final",
        }
    }

    /// When a gateway at `height` (clusters 1, sectors 2, …) records it.
    pub fn due_ms(self, c: &Command, height: u32) -> i64 {
        let stagger = i64::from(height) * 2000;
        match self {
            Phase::Window => c.deadline_ms() + stagger,
            Phase::Final => c.expires_ms + stagger,
        }
    }
}

/// What a command's selected agents answered, counted (agents of the
/// subtree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub selected: u64,
    /// READY at all (on time or late).
    pub ready: u64,
    /// READY by T + `window_ms`.
    pub on_time: u64,
    pub conflict: u64,
    pub transit: u64,
    pub unanswered: u64,
}

/// The quorum decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Proceed,
    Wait,
    ResolveConflicts,
    Retry,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Proceed => "PROCEED",
            Decision::Wait => "WAIT",
            Decision::ResolveConflicts => "RESOLVE_CONFLICTS",
            Decision::Retry => "RETRY",
        }
    }
}

impl Tally {
    /// In the final phase, agents still in transit or silent count as
    /// expired: conflicts.
    pub fn finalised(self) -> Tally {
        Tally {
            conflict: self.conflict + self.transit + self.unanswered,
            transit: 0,
            unanswered: 0,
            ..self
        }
    }

    /// PROTOCOL §9's decision: binary64 rates of `selected`; ready means
    /// on time; transit includes unanswered; nothing selected is `RETRY`.
    pub fn decide(&self, q: &Quorum, phase: Phase) -> Decision {
        if self.selected == 0 {
            return Decision::Retry;
        }
        let t = match phase {
            Phase::Window => *self,
            Phase::Final => self.finalised(),
        };
        #[allow(clippy::cast_precision_loss)]
        let rate = |n: u64| n as f64 / t.selected as f64;
        let (ready, conflict, transit) = (
            rate(t.on_time),
            rate(t.conflict),
            rate(t.transit + t.unanswered),
        );
        if ready >= q.ready && conflict <= q.conflict {
            Decision::Proceed
        } else if phase == Phase::Window && ready < q.ready && transit > q.transit {
            Decision::Wait
        } else if conflict > q.conflict {
            Decision::ResolveConflicts
        } else {
            Decision::Retry
        }
    }
}

/// |actual ready − predicted ready| in power-of-two buckets: bucket 0
/// holds errors under 1 ms, bucket k ≥ 1 those in [2^(k−1), 2^k) ms, the
/// last everything beyond. Summed up the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorHistogram {
    pub buckets: [u64; ErrorHistogram::BUCKETS],
}

impl Default for ErrorHistogram {
    fn default() -> Self {
        ErrorHistogram {
            buckets: [0; ErrorHistogram::BUCKETS],
        }
    }
}

impl ErrorHistogram {
    /// Up to 2^22 ms (70 min) apart, then the last bucket.
    pub const BUCKETS: usize = 24;

    pub fn bucket_of(error_ms: u64) -> usize {
        let k = (u64::BITS - error_ms.leading_zeros()) as usize;
        k.min(Self::BUCKETS - 1)
    }

    pub fn record(&mut self, error_ms: u64) {
        self.buckets[Self::bucket_of(error_ms)] += 1;
    }

    pub fn add(&mut self, other: &ErrorHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper bound (ms, exclusive) of the bucket holding quantile `q`
    /// (0..=1), `None` when empty.
    pub fn quantile_upper_ms(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (k, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(1u64 << k);
            }
        }
        Some(1u64 << (Self::BUCKETS - 1))
    }

    /// `{"buckets": [n0, n1, …]}`.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert(
            "buckets",
            Value::Array(self.buckets.iter().map(|n| Value::from(*n)).collect()),
        );
        Value::Object(o)
    }

    /// Reads [`ErrorHistogram::to_value`]'s form; more buckets than
    /// [`ErrorHistogram::BUCKETS`] fold into the last.
    pub fn from_value(v: &Value) -> Option<ErrorHistogram> {
        let Some(Value::Array(items)) = v.as_object()?.get("buckets") else {
            return None;
        };
        let mut h = ErrorHistogram::default();
        for (k, item) in items.iter().enumerate() {
            h.buckets[k.min(Self::BUCKETS - 1)] += item.as_exact_u64()?;
        }
        Some(h)
    }
}

/// A command's content for an operator's request: the fields an operator
/// gives, `v` and `issuer` added, times formatted.
#[derive(Debug, Clone)]
pub struct Draft {
    pub issuer: AgentId,
    pub id: CommandId,
    pub issued_ms: i64,
    pub target_ms: i64,
    pub window_ms: u64,
    pub expires_ms: i64,
    pub priority: u8,
    pub verb: Verb,
    pub payload: Value,
    pub weight: f64,
    /// The `select` object as given, if any.
    pub select: Option<Value>,
    pub quorum: Option<Value>,
}

impl Draft {
    /// The content, checked as any recipient checks it.
    pub fn build(&self) -> Result<Command, ContentError> {
        let mut o = Object::new();
        o.insert("v", Value::from(1u64));
        o.insert("issuer", Value::from(self.issuer.as_str()));
        o.insert("id", Value::from(self.id.as_str()));
        o.insert("issued", Value::from(format_timestamp(self.issued_ms)));
        o.insert("target", Value::from(format_timestamp(self.target_ms)));
        o.insert("window_ms", Value::from(self.window_ms));
        o.insert("expires", Value::from(format_timestamp(self.expires_ms)));
        o.insert("priority", Value::from(u64::from(self.priority)));
        o.insert("verb", Value::from(self.verb.as_str()));
        o.insert("payload", self.payload.clone());
        o.insert("weight", Value::Number(self.weight));
        if let Some(s) = &self.select {
            o.insert("select", s.clone());
        }
        if let Some(q) = &self.quorum {
            o.insert("quorum", q.clone());
        }
        Command::from_content(Value::Object(o))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            issuer: AgentId::new("gw-top").unwrap(),
            id: CommandId::new("c-1").unwrap(),
            issued_ms: 1_796_284_800_000,
            target_ms: 1_796_284_802_000,
            window_ms: 50,
            expires_ms: 1_796_284_810_000,
            priority: 2,
            verb: Verb::Act,
            payload: Value::Object(Object::new()),
            weight: 1.0,
            select: None,
            quorum: None,
        }
    }

    #[test]
    fn content_rules_refuse_what_they_should_and_say_where() {
        assert!(draft().build().is_ok());
        let refused = |f: &dyn Fn(&mut Draft)| {
            let mut d = draft();
            f(&mut d);
            d.build().unwrap_err().to_string()
        };
        assert!(refused(&|d| d.target_ms = d.issued_ms - 1).contains("target"));
        assert!(refused(&|d| d.window_ms = 8_001).contains("expires"));
        assert!(refused(&|d| d.expires_ms = d.issued_ms + MAX_LIFETIME_MS + 1).contains("24 h"));
        assert!(refused(&|d| d.priority = 4).contains("priority"));
        assert!(refused(&|d| d.weight = -1.0).contains("weight"));
        assert!(refused(&|d| d.verb = Verb::Thaw).contains("thaw names its freeze"));
        assert!(
            refused(&|d| d.payload = Value::from("x".repeat(MAX_PAYLOAD_BYTES)))
                .contains("payload")
        );
        let parsed = |text: &str| Some(json::parse(text.as_bytes(), json::Mode::Verify).unwrap());
        for (select, says) in [
            (r#"{"agents":[]}"#, "agents is empty"),
            (r#"{"sample":0}"#, "sample"),
        ] {
            let mut d = draft();
            d.select = parsed(select);
            assert!(
                d.build().unwrap_err().to_string().contains(says),
                "{select}"
            );
        }
        for (quorum, says) in [
            (r#"{"ready":1.5}"#, "ready"),
            (r#"{"speed":1}"#, "unknown key \"speed\" in quorum"),
        ] {
            let mut d = draft();
            d.quorum = parsed(quorum);
            assert!(
                d.build().unwrap_err().to_string().contains(says),
                "{quorum}"
            );
        }
        // the edges hold
        let mut d = draft();
        d.window_ms = 8_000;
        d.expires_ms = d.issued_ms + MAX_LIFETIME_MS;
        assert!(d.build().is_ok());
    }

    #[test]
    fn timestamps_round_trip_and_impossible_dates_are_refused() {
        for t in [
            0,
            1_796_284_800_000,
            -1,
            951_782_400_000,
            253_402_300_799_999,
        ] {
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        }
        for bad in [
            "2026-02-29T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-04-31T00:00:00.000Z",
            "2026-01-01T24:00:00.000Z",
            "2026-01-01T00:60:00.000Z",
            "2026-01-01 00:00:00.000Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert!(parse_timestamp("2024-02-29T23:59:59.999Z").is_some());
    }

    #[test]
    fn admission_follows_check_d_and_the_freeze() {
        let c = draft().build().unwrap();
        let now = c.issued_ms + 100;
        assert_eq!(c.admit(now, true, false), Ok(()));
        assert_eq!(c.admit(now, false, false), Err(ConflictKind::ClockUnsynced));
        assert_eq!(
            c.admit(c.expires_ms, true, false),
            Err(ConflictKind::Expired)
        );
        assert_eq!(c.admit(now, true, true), Err(ConflictKind::Frozen));
        let mut d = draft();
        d.verb = Verb::Observe;
        let observe = d.build().unwrap();
        // observe passes the freeze and needs no clock
        assert_eq!(observe.admit(observe.expires_ms + 1, false, true), Ok(()));
        d.verb = Verb::Freeze;
        let freeze = d.build().unwrap();
        assert_eq!(freeze.admit(now, false, false), Ok(()));
        assert_eq!(freeze.admit(now, false, true), Err(ConflictKind::Frozen));
    }

    fn tally(selected: u64, on_time: u64, conflict: u64, transit: u64, unanswered: u64) -> Tally {
        Tally {
            selected,
            ready: on_time,
            on_time,
            conflict,
            transit,
            unanswered,
        }
    }

    #[test]
    fn the_decision_is_the_contracts() {
        let q = Quorum::default();
        use Decision::*;
        use Phase::*;
        assert_eq!(tally(0, 0, 0, 0, 0).decide(&q, Window), Retry);
        assert_eq!(tally(100, 95, 5, 0, 0).decide(&q, Window), Proceed);
        assert_eq!(tally(100, 95, 6, 0, 0).decide(&q, Window), ResolveConflicts);
        assert_eq!(tally(100, 80, 0, 5, 6).decide(&q, Window), Wait);
        assert_eq!(tally(100, 80, 0, 5, 5).decide(&q, Window), Retry);
        // never WAIT in the final phase: transit and silent agents expired
        assert_eq!(tally(100, 80, 0, 5, 6).decide(&q, Final), ResolveConflicts);
        assert_eq!(tally(100, 94, 0, 0, 6).decide(&q, Window), Retry);
        // late READYs are not on time
        let late = Tally {
            ready: 100,
            ..tally(100, 50, 0, 0, 0)
        };
        assert_eq!(late.decide(&q, Window), Retry);
    }

    #[test]
    fn histogram_buckets_are_powers_of_two() {
        assert_eq!(ErrorHistogram::bucket_of(0), 0);
        assert_eq!(ErrorHistogram::bucket_of(1), 1);
        assert_eq!(ErrorHistogram::bucket_of(3), 2);
        assert_eq!(ErrorHistogram::bucket_of(4), 3);
        assert_eq!(
            ErrorHistogram::bucket_of(u64::MAX),
            ErrorHistogram::BUCKETS - 1
        );
        let mut h = ErrorHistogram::default();
        for e in 0..100 {
            h.record(e);
        }
        assert_eq!(h.quantile_upper_ms(0.5), Some(64));
        assert_eq!(h.quantile_upper_ms(1.0), Some(128));
        let back = ErrorHistogram::from_value(&h.to_value()).unwrap();
        assert_eq!(back, h);
        let mut sum = ErrorHistogram::default();
        sum.add(&h);
        sum.add(&h);
        assert_eq!(sum.count(), 200);
    }

    #[test]
    fn answers_round_trip_and_a_conflict_names_its_kind() {
        let a = Answer::conflict(Hash([7; 32]), 5, ConflictKind::Frozen, "frozen by c-9");
        assert_eq!(Answer::from_data(&a.to_data()), Ok(a.clone()));
        let ready = Answer {
            state: State::Ready,
            conflict: None,
            ready_ms: Some(9),
            processing_ms: Some(4),
            result: Some(Value::from("ok")),
            ..a
        };
        assert_eq!(Answer::from_data(&ready.to_data()), Ok(ready.clone()));
        let mut bad = ready.to_data();
        if let Value::Object(o) = &mut bad {
            o.insert("state", Value::Number(-1.0));
        }
        assert!(Answer::from_data(&bad).is_err());
    }
}
