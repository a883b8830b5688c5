//! Ledger entries (PROTOCOL §2, §3): the content schema, the append-time
//! rules, and the stored/wire form (canonical content bytes plus
//! prev/hash/sig).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::crypto::{Hash, Sig, chain_hash};
use crate::id::{AgentId, EventName, IdError};
use crate::json::{self, Mode, Object, ParseError, Value};

/// Largest seq: 2^53 − 1.
pub const MAX_SEQ: u64 = json::MAX_EXACT_INTEGER;

/// Largest canonical content of one entry (PROTOCOL §3, §7).
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// Top-level keys that belong to the exported line, not to the content.
pub const RESERVED_KEYS: [&str; 3] = ["prev", "hash", "sig"];

/// A position in an agent's chain. 0 means "nothing" (the empty chain's
/// head, the "nothing stored" receipt); entries start at 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }

    /// The seq before this one; `Seq(0)` stays `Seq(0)`.
    pub fn prev(self) -> Seq {
        Seq(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

/// An entry as stored and transmitted: canonical content bytes plus the
/// chain fields. Copies that differ only by `sig` are the same entry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(with = "crate::wire::bytes")]
    pub content: Vec<u8>,
    pub prev: Hash,
    pub hash: Hash,
    pub sig: Option<Sig>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("content", &String::from_utf8_lossy(&self.content))
            .field("hash", &self.hash)
            .field("signed", &self.sig.is_some())
            .finish()
    }
}

impl Entry {
    /// Links canonical content to `prev`, computing its hash. Unsigned.
    /// The entry as stores keep it (postcard): what salvage looks for.
    pub fn stored_bytes(&self) -> Vec<u8> {
        // A struct of byte strings into a Vec: cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn seal(content: Vec<u8>, prev: Hash) -> Entry {
        let hash = chain_hash(&content, &prev);
        Entry {
            content,
            prev,
            hash,
            sig: None,
        }
    }

    /// The JSONL line of PROTOCOL §5: the content's keys plus `prev`,
    /// `hash` and `sig` when signed. No trailing newline.
    pub fn to_jsonl(&self) -> String {
        let mut line = String::with_capacity(self.content.len() + 230);
        // Canonical content is a non-empty JSON object, so it ends with '}'
        // and has at least one key before it.
        let body = std::str::from_utf8(&self.content).unwrap_or("{");
        line.push_str(body.strip_suffix('}').unwrap_or(body));
        line.push_str(",\"prev\":\"");
        line.push_str(&self.prev.to_hex());
        line.push_str("\",\"hash\":\"");
        line.push_str(&self.hash.to_hex());
        line.push('"');
        if let Some(sig) = &self.sig {
            line.push_str(",\"sig\":\"");
            line.push_str(&sig.to_hex());
            line.push('"');
        }
        line.push('}');
        line
    }

    /// Parses and validates the content (PROTOCOL §2), in verifier mode.
    pub fn header(&self) -> Result<Header, ContentError> {
        let value = json::parse(&self.content, Mode::Verify).map_err(ContentError::Json)?;
        Header::from_content(&value)
    }
}

/// Checks one stored entry where it stands in `agent`'s chain at `seq`:
/// canonical content naming that agent and seq, the link to `prev` (when
/// the entry before is known), its hash, and its checkpoint signature
/// under `key` (when there is one and a key to judge it by). What stores
/// check at start-up; the first problem, in words.
pub fn check_stored(
    agent: &AgentId,
    seq: Seq,
    e: &Entry,
    prev: Option<&Hash>,
    key: Option<&crate::crypto::PublicKey>,
) -> Result<(), String> {
    let h = check_canonical_content(&e.content).map_err(|err| err.to_string())?;
    if h.agent != *agent || h.seq != seq {
        return Err("content names another agent or seq".into());
    }
    if prev.is_some_and(|p| *p != e.prev) {
        return Err("prev does not link to the entry before".into());
    }
    if chain_hash(&e.content, &e.prev) != e.hash {
        return Err("hash does not match the content".into());
    }
    if let (Some(sig), Some(key)) = (&e.sig, key)
        && !key.verify_checkpoint(agent, seq, &e.hash, sig)
    {
        return Err("checkpoint signature does not verify".into());
    }
    Ok(())
}

/// The fields of a content that the runtime and verifiers look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub agent: AgentId,
    pub seq: Seq,
    pub ts: String,
    pub event: EventName,
    pub context: Option<String>,
}

/// Why content is not a valid entry content (PROTOCOL §2, §6 check 2).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContentError {
    #[error("{0}")]
    Json(ParseError),
    #[error("content is not a JSON object")]
    NotAnObject,
    #[error("missing required key {0:?}")]
    Missing(&'static str),
    #[error("unsupported format version (v must be 1)")]
    Version,
    #[error("{key:?} must be {expected}, found {found}")]
    Type {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{0}")]
    Id(IdError),
    #[error("seq must be an integer in 1..2^53-1")]
    SeqRange,
    #[error("ts {0:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ")]
    Timestamp(String),
    #[error("reserved key {0:?} inside the content")]
    Reserved(&'static str),
    #[error("canonical content is {0} bytes (at most 65536)")]
    TooLarge(usize),
    #[error("content bytes are not canonical JSON")]
    NotCanonical,
}

fn field<'a>(object: &'a Object, key: &'static str) -> Result<&'a Value, ContentError> {
    object.get(key).ok_or(ContentError::Missing(key))
}

fn type_error(key: &'static str, expected: &'static str, v: &Value) -> ContentError {
    ContentError::Type {
        key,
        expected,
        found: v.kind().to_owned(),
    }
}

impl Header {
    /// Checks a content object against PROTOCOL §2 (the content part of §6
    /// check 2). The content must not itself hold `prev`, `hash` or `sig`.
    pub fn from_content(content: &Value) -> Result<Header, ContentError> {
        let object = content.as_object().ok_or(ContentError::NotAnObject)?;
        if let Some(key) = RESERVED_KEYS.iter().find(|k| object.contains_key(k)) {
            return Err(ContentError::Reserved(key));
        }
        Self::from_object(object)
    }

    /// As [`Header::from_content`] but ignoring `prev`, `hash` and `sig`
    /// (for an exported line, whose chain fields are checked separately).
    pub(crate) fn from_object(object: &Object) -> Result<Header, ContentError> {
        let v = field(object, "v")?;
        match v {
            Value::Number(n) if *n == 1.0 => {}
            Value::Number(_) => return Err(ContentError::Version),
            other => return Err(type_error("v", "the number 1", other)),
        }
        let agent = match field(object, "agent")? {
            Value::String(s) => AgentId::new(s.as_str()).map_err(ContentError::Id)?,
            other => return Err(type_error("agent", "a string", other)),
        };
        let seq = match field(object, "seq")? {
            v @ Value::Number(_) => match v.as_exact_u64() {
                Some(n) if n >= 1 => Seq(n),
                _ => return Err(ContentError::SeqRange),
            },
            other => return Err(type_error("seq", "a number", other)),
        };
        let ts = match field(object, "ts")? {
            Value::String(s) if is_timestamp(s) => s.clone(),
            Value::String(s) => return Err(ContentError::Timestamp(s.clone())),
            other => return Err(type_error("ts", "a string", other)),
        };
        let event = match field(object, "event")? {
            Value::String(s) => EventName::new(s.as_str()).map_err(ContentError::Id)?,
            other => return Err(type_error("event", "a string", other)),
        };
        field(object, "data")?;
        let context = match object.get("context") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(type_error("context", "a string", other)),
        };
        match object.get("clock") {
            None | Some(Value::Object(_)) => {}
            Some(other) => return Err(type_error("clock", "an object", other)),
        }
        Ok(Header {
            agent,
            seq,
            ts,
            event,
            context,
        })
    }
}

/// Whether `s` is `YYYY-MM-DDTHH:MM:SS.mmmZ` (syntax only, as §6 says).
pub fn is_timestamp(s: &str) -> bool {
    const PATTERN: &[u8; 24] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    s.len() == PATTERN.len()
        && s.bytes().zip(PATTERN).all(|(b, &p)| match p {
            b'd' => b.is_ascii_digit(),
            _ => b == p,
        })
}

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
/// Times outside years 0000–9999 are clamped to that range.
pub fn format_timestamp(unix_ms: i64) -> String {
    const MIN_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = unix_ms.clamp(MIN_MS, MAX_MS);
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// Milliseconds since the Unix epoch of a `YYYY-MM-DDTHH:MM:SS.mmmZ`
/// timestamp that names a real instant (a date that exists, hours below
/// 24, …); `None` otherwise. The inverse of [`format_timestamp`].
pub fn parse_timestamp(s: &str) -> Option<i64> {
    if !is_timestamp(s) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // H. Hinnant's `days_from_civil`.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400_000 + hh * 3_600_000 + mm * 60_000 + ss * 1000 + ms;
    // Out-of-range fields (month 13, 31 April, 25 h) do not survive the
    // round trip.
    (format_timestamp(t) == s).then_some(t)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYYMMDDHHMMSS` (UTC), as `genesis` records the time of first start.
pub fn a_now(unix_ms: i64) -> String {
    format_timestamp(unix_ms)
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect()
}

/// The advisory `clock` of an entry (PROTOCOL §7, clock exchange).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockInfo {
    pub offset_ms: i64,
    pub rtt_ms: i64,
    pub synced: bool,
    pub boot: String,
    pub mono_ms: u64,
}

impl ClockInfo {
    /// The general form (the direct writer's test compares against it).
    #[cfg(test)]
    fn to_value(&self) -> Value {
        // Offsets and RTTs are milliseconds: far inside binary64's exact range.
        #[allow(clippy::cast_precision_loss)]
        let n = |x: i64| Value::Number(x as f64);
        let mut o = Object::new();
        o.insert("offset_ms", n(self.offset_ms));
        o.insert("rtt_ms", n(self.rtt_ms));
        o.insert("synced", Value::Bool(self.synced));
        o.insert("boot", Value::from(self.boot.as_str()));
        o.insert("mono_ms", Value::from(self.mono_ms));
        Value::Object(o)
    }

    /// Writes the canonical form of [`ClockInfo::to_value`] without building
    /// a tree (every entry of an agent carries one): keys in their UTF-16
    /// order, numbers through the canonical number writer. The direct
    /// writer's unit test holds it to the general serializer.
    fn write_canonical(&self, out: &mut Vec<u8>) {
        #[allow(clippy::cast_precision_loss)]
        let num = |x: i64, out: &mut Vec<u8>| canonical::write(&Value::Number(x as f64), out);
        out.extend_from_slice(b"{\"boot\":");
        canonical::write_str(&self.boot, out);
        out.extend_from_slice(b",\"mono_ms\":");
        canonical::write(&Value::from(self.mono_ms), out);
        out.extend_from_slice(b",\"offset_ms\":");
        num(self.offset_ms, out);
        out.extend_from_slice(b",\"rtt_ms\":");
        num(self.rtt_ms, out);
        out.extend_from_slice(if self.synced {
            b",\"synced\":true}"
        } else {
            b",\"synced\":false}"
        });
    }
}

/// An append request as a program on the device sends it: exactly `event`,
/// optional `context`, optional `data` (PROTOCOL §2).
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    pub event: EventName,
    pub context: Option<String>,
    pub data: Value,
}

/// Why an append was refused (PROTOCOL §3). Each names the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppendError {
    #[error("{0}")]
    Json(ParseError),
    #[error("request is not a JSON object")]
    NotAnObject,
    #[error("unknown key {0:?} (allowed: event, context, data)")]
    UnknownKey(String),
    #[error("missing key \"event\"")]
    MissingEvent,
    #[error("{key:?} must be a string, found {found}")]
    NotAString { key: &'static str, found: String },
    #[error("{0}")]
    Event(IdError),
    #[error("event {0:?} is written only by the runtime")]
    RuntimeEvent(String),
    #[error("canonical content is {0} bytes (at most 65536)")]
    TooLarge(usize),
    #[error("{event}: {problem}")]
    Schema {
        event: &'static str,
        problem: String,
    },
}

/// The fields a `lesson` entry's data must hold, each a non-empty string
/// (what went wrong, why, what was done, what to do next time). The
/// append API checks them; verifiers never look at `data`.
pub const LESSON_FIELDS: [&str; 4] = ["trauma", "root_cause", "correction", "lesson"];

/// Checks the data of well-known events whose shape the append API holds
/// programs to: `lesson` (see [`LESSON_FIELDS`]; other keys are kept).
pub fn check_schema(event: &EventName, data: &Value) -> Result<(), AppendError> {
    if event.as_str() != "lesson" {
        return Ok(());
    }
    let problem = |p: String| AppendError::Schema {
        event: "lesson",
        problem: p,
    };
    let Value::Object(o) = data else {
        return Err(problem(format!(
            "data must be an object with {}, found {}",
            LESSON_FIELDS.join(", "),
            data.kind()
        )));
    };
    let missing: Vec<&str> = LESSON_FIELDS
        .iter()
        .copied()
        .filter(|k| !matches!(o.get(k), Some(Value::String(s)) if !s.trim().is_empty()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(problem(format!(
            "data lacks {} (each a non-empty string; a lesson has {})",
            missing
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            LESSON_FIELDS.join(", ")
        )))
    }
}

impl AppendRequest {
    /// Parses a request (append-mode JSON: the 2^53 rule applies).
    pub fn parse(bytes: &[u8]) -> Result<AppendRequest, AppendError> {
        // The request object adds no depth over the content: `data` sits at
        // depth 2 in both.
        let value = json::parse(bytes, Mode::Append).map_err(AppendError::Json)?;
        let Value::Object(object) = value else {
            return Err(AppendError::NotAnObject);
        };
        let mut event = None;
        let mut context = None;
        let mut data = Value::Object(Object::new());
        for (key, v) in object {
            match (key.as_str(), v) {
                ("event", Value::String(s)) => event = Some(s),
                ("context", Value::String(s)) => context = Some(s),
                ("data", v) => data = v,
                (k @ ("event" | "context"), other) => {
                    return Err(AppendError::NotAString {
                        key: if k == "event" { "event" } else { "context" },
                        found: other.kind().to_owned(),
                    });
                }
                (other, _) => return Err(AppendError::UnknownKey(other.to_owned())),
            }
        }
        let event = event.ok_or(AppendError::MissingEvent)?;
        let event = EventName::new(event).map_err(AppendError::Event)?;
        if event.is_runtime_only() {
            return Err(AppendError::RuntimeEvent(event.to_string()));
        }
        check_schema(&event, &data)?;
        Ok(AppendRequest {
            event,
            context: context.filter(|c| !c.is_empty()),
            data,
        })
    }
}

/// What the runtime knows when it appends: the fields it sets itself.
#[derive(Debug, Clone)]
pub struct Stamp<'a> {
    pub agent: &'a AgentId,
    pub seq: Seq,
    pub unix_ms: i64,
    pub clock: Option<&'a ClockInfo>,
}

/// Builds the canonical content of an entry (the runtime sets `v`, `agent`,
/// `seq`, `ts` and `clock`). An empty context is omitted, never `""`.
pub fn build_content(
    stamp: &Stamp<'_>,
    event: &EventName,
    context: Option<&str>,
    data: &Value,
) -> Result<Vec<u8>, AppendError> {
    build_content_at(
        stamp,
        &format_timestamp(stamp.unix_ms),
        event,
        context,
        data,
    )
}

/// As [`build_content`] with `ts` given as text (re-appending an orphan keeps
/// its original `ts`, PROTOCOL §7 rule 3c).
pub fn build_content_at(
    stamp: &Stamp<'_>,
    ts: &str,
    event: &EventName,
    context: Option<&str>,
    data: &Value,
) -> Result<Vec<u8>, AppendError> {
    // The top-level keys are fixed, so they are written directly in their
    // canonical (UTF-16) order: agent, clock, context, data, event, seq, ts,
    // v. A unit test checks this against the general serializer.
    let mut bytes = Vec::with_capacity(160 + ts.len() + context.map_or(0, str::len));
    bytes.extend_from_slice(b"{\"agent\":");
    canonical::write(&Value::from(stamp.agent.as_str()), &mut bytes);
    if let Some(clock) = stamp.clock {
        bytes.extend_from_slice(b",\"clock\":");
        clock.write_canonical(&mut bytes);
    }
    if let Some(c) = context.filter(|c| !c.is_empty()) {
        bytes.extend_from_slice(b",\"context\":");
        canonical::write_str(c, &mut bytes);
    }
    bytes.extend_from_slice(b",\"data\":");
    canonical::write(data, &mut bytes);
    bytes.extend_from_slice(b",\"event\":");
    canonical::write_str(event.as_str(), &mut bytes);
    bytes.extend_from_slice(b",\"seq\":");
    canonical::write(&Value::from(stamp.seq.0), &mut bytes);
    bytes.extend_from_slice(b",\"ts\":");
    canonical::write_str(ts, &mut bytes);
    bytes.extend_from_slice(b",\"v\":1}");
    if bytes.len() > MAX_CONTENT_BYTES {
        return Err(AppendError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Parses content bytes, checks they are exactly canonical(parse(bytes)),
/// within the size limit, and a valid content (PROTOCOL §3, §7 rule 6).
pub fn check_canonical_content(bytes: &[u8]) -> Result<Header, ContentError> {
    if bytes.len() > MAX_CONTENT_BYTES {
        return Err(ContentError::TooLarge(bytes.len()));
    }
    if let Some(header) = fast_header(bytes) {
        return Ok(header);
    }
    // The slow path is the definition, and names the problem.
    let value = json::parse(bytes, Mode::Verify).map_err(ContentError::Json)?;
    if canonical::to_vec(&value) != bytes {
        return Err(ContentError::NotCanonical);
    }
    Header::from_content(&value)
}

/// The common case of [`check_canonical_content`] without building a tree:
/// `Some` only when the bytes are canonical and every header field is in
/// its plain form; anything else goes the slow way, which decides.
fn fast_header(bytes: &[u8]) -> Option<Header> {
    let mut fields: [Option<&[u8]>; 8] = [None; 8];
    let mut reserved = false;
    let canonical = canonical::is_canonical_object(bytes, |key, value| {
        let slot = match key {
            b"v" => 0,
            b"agent" => 1,
            b"seq" => 2,
            b"ts" => 3,
            b"event" => 4,
            b"data" => 5,
            b"context" => 6,
            b"clock" => 7,
            b"prev" | b"hash" | b"sig" => {
                reserved = true;
                return;
            }
            _ => return,
        };
        fields[slot] = Some(value);
    });
    if !canonical || reserved || fields[0]? != b"1" || fields[5].is_none() {
        return None;
    }
    let plain = |v: &[u8]| -> Option<String> {
        let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        if inner.contains(&b'\\') {
            return None;
        }
        std::str::from_utf8(inner).ok().map(str::to_owned)
    };
    let agent = AgentId::new(plain(fields[1]?)?).ok()?;
    let seq = std::str::from_utf8(fields[2]?).ok()?.parse::<f64>().ok()?;
    let seq = Value::Number(seq).as_exact_u64().filter(|s| *s >= 1)?;
    let ts = plain(fields[3]?).filter(|t| is_timestamp(t))?;
    let event = EventName::new(plain(fields[4]?)?).ok()?;
    let context = match fields[6] {
        None => None,
        Some(v) => Some(plain(v)?),
    };
    if fields[7].is_some_and(|c| c.first() != Some(&b'{')) {
        return None;
    }
    Some(Header {
        agent,
        seq: Seq(seq),
        ts,
        event,
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_and_check() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(1_795_460_700_123),
            "2026-11-23T19:05:00.123Z"
        );
        assert_eq!(
            format_timestamp(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_timestamp(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert!(is_timestamp("2026-11-22T19:05:00.000Z"));
        for bad in [
            "2026-11-22T19:05:00Z",
            "2026-11-22t19:05:00.000Z",
            "2026-11-22T19:05:00.000z",
            "2026-11-22T19:05:00.0000Z",
            "２026-11-22T19:05:00.000Z",
        ] {
            assert!(!is_timestamp(bad), "{bad}");
        }
    }

    #[test]
    fn append_request_refuses_extra_keys_and_runtime_events() {
        // a lesson says what is missing from it
        let lesson =
            br#"{"event":"lesson","data":{"trauma":"disk full","lesson":"watch df","extra":1}}"#;
        let e = AppendRequest::parse(lesson).unwrap_err();
        assert_eq!(
            e.to_string(),
            "lesson: data lacks \"root_cause\", \"correction\" (each a non-empty string; a lesson has trauma, root_cause, correction, lesson)"
        );
        assert!(AppendRequest::parse(br#"{"event":"lesson","data":"x"}"#).is_err());
        let whole = br#"{"event":"lesson","data":{"trauma":"t","root_cause":"r","correction":"c","lesson":"l","extra":1}}"#;
        assert!(AppendRequest::parse(whole).is_ok());
        let ok = AppendRequest::parse(br#"{"event":"info","data":{"a":1}}"#).unwrap();
        assert_eq!(ok.event.as_str(), "info");
        assert_eq!(ok.context, None);
        let empty_ctx = AppendRequest::parse(br#"{"event":"info","context":""}"#).unwrap();
        assert_eq!(empty_ctx.context, None);
        assert_eq!(empty_ctx.data, Value::Object(Object::new()));
        assert_eq!(
            AppendRequest::parse(br#"{"event":"info","seq":3}"#).unwrap_err(),
            AppendError::UnknownKey("seq".into())
        );
        assert_eq!(
            AppendRequest::parse(br#"{"event":"genesis"}"#).unwrap_err(),
            AppendError::RuntimeEvent("genesis".into())
        );
        assert_eq!(
            AppendRequest::parse(br#"{"data":{}}"#).unwrap_err(),
            AppendError::MissingEvent
        );
        assert!(matches!(
            AppendRequest::parse(br#"{"event":"info","data":{"n":9007199254740993}}"#),
            Err(AppendError::Json(_))
        ));
        assert!(matches!(
            AppendRequest::parse(br#"{"event":"Info"}"#),
            Err(AppendError::Event(_))
        ));
    }

    #[test]
    fn built_content_is_canonical_and_bounded() {
        let agent = AgentId::new("a1").unwrap();
        let stamp = Stamp {
            agent: &agent,
            seq: Seq(2),
            unix_ms: 0,
            clock: None,
        };
        let event = EventName::new("info").unwrap();
        let bytes = build_content(&stamp, &event, Some(""), &Value::Null).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"agent":"a1","data":null,"event":"info","seq":2,"ts":"1970-01-01T00:00:00.000Z","v":1}"#
        );
        let header = check_canonical_content(&bytes).unwrap();
        assert_eq!(header.seq, Seq(2));
        let big = Value::String("x".repeat(MAX_CONTENT_BYTES));
        assert!(matches!(
            build_content(&stamp, &event, None, &big),
            Err(AppendError::TooLarge(_))
        ));
    }

    /// The slow definition of [`check_canonical_content`].
    fn slow(bytes: &[u8]) -> Result<Header, ContentError> {
        let value = json::parse(bytes, Mode::Verify).map_err(ContentError::Json)?;
        if canonical::to_vec(&value) != bytes {
            return Err(ContentError::NotCanonical);
        }
        Header::from_content(&value)
    }

    fn content_with(data: &str, context: Option<&str>) -> Vec<u8> {
        let agent = AgentId::new("pi-7").unwrap();
        let stamp = Stamp {
            agent: &agent,
            seq: Seq(42),
            unix_ms: 1_795_460_700_123,
            clock: None,
        };
        let data = json::parse(data.as_bytes(), Mode::Verify).unwrap();
        build_content(&stamp, &EventName::new("fact").unwrap(), context, &data).unwrap()
    }

    /// Fragments that sit on the edge between canonical and not.
    const SNIPPETS: &[&str] = &[
        "\\/",
        "\\u0041",
        "\\u000a",
        "\\u001f",
        "\\u001F",
        "\\u0008",
        "\\b",
        "\\ud83d",
        " ",
        "\n",
        "1.0",
        "-0",
        "0",
        "00",
        "e+21",
        "E5",
        ".5",
        "1e400",
        "\"v\":1,",
        "\"a\":1,",
        "\"\":0,",
        "\"prev\":\"x\",",
        ",",
        "}",
        "{",
        "[",
        "]",
        "\"",
        "\u{7f}",
        "é",
        "\u{1f600}",
        "\u{fb33}",
        "null",
        "true",
        "\"seq\":2,",
        "\\",
        "\t",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// The fast path may decline (the slow path then decides), but when
        /// it answers, its answer is the slow path's.
        #[test]
        fn fast_header_agrees_with_the_definition(
            edits in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>(), 0u8..4, 0usize..SNIPPETS.len()), 0..3),
            ctx in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = content_with(
                r#"{"n":[1.5,-2,1e21,1e-7],"s":"a\u0001\"b","t":true,"z":null,"é":{"\ud83d\ude00":0}}"#,
                ctx.then_some("ctx\twith tab"),
            );
            for (at, byte, kind, snippet) in edits {
                let at = at % (bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 if at < bytes.len() => { bytes.remove(at); }
                    3 => {
                        let snippet = SNIPPETS[snippet].as_bytes();
                        bytes.splice(at..at, snippet.iter().copied());
                    }
                    _ => {}
                }
            }
            let fast = fast_header(&bytes);
            let slow = slow(&bytes);
            if let Some(h) = &fast {
                proptest::prop_assert_eq!(Ok(h.clone()), slow.clone());
            }
            let strict_object = json::parse(&bytes, Mode::Verify)
                .map(|v| v.as_object().is_some() && canonical::to_vec(&v) == bytes)
                .unwrap_or(false);
            proptest::prop_assert_eq!(canonical::is_canonical_object(&bytes, |_, _| {}), strict_object);
            proptest::prop_assert_eq!(check_canonical_content(&bytes), slow);
        }
    }

    #[test]
    fn fast_header_takes_the_common_case() {
        let bytes = content_with(r#"{"a":[1,2.5,"x"],"b":{"c":null}}"#, Some("session-1"));
        assert!(fast_header(&bytes).is_some());
        assert_eq!(fast_header(&bytes).map(Ok), Some(slow(&bytes)));
    }

    #[test]
    fn direct_writer_matches_the_general_serializer() {
        let agent = AgentId::new("a1").unwrap();
        let clock = ClockInfo {
            offset_ms: -12,
            rtt_ms: 3,
            synced: true,
            boot: "3f1c".into(),
            mono_ms: 99,
        };
        let unsynced = ClockInfo {
            offset_ms: -103_680_000_000,
            rtt_ms: 0,
            synced: false,
            boot: "b\"\u{7}é".into(),
            mono_ms: 9_007_199_254_740_991,
        };
        for (context, clock) in [
            (None, None),
            (Some("c\n"), Some(&clock)),
            (Some(""), Some(&clock)),
            (Some("x"), Some(&unsynced)),
        ] {
            let stamp = Stamp {
                agent: &agent,
                seq: Seq(7),
                unix_ms: 5,
                clock,
            };
            let event = EventName::new("info").unwrap();
            let data =
                json::parse(br#"{"z":[1,{"b":2,"a":"\u0001"}],"a":null}"#, Mode::Verify).unwrap();
            let direct = build_content(&stamp, &event, context, &data).unwrap();
            let mut o = Object::new();
            o.insert("v", Value::Number(1.0));
            o.insert("agent", Value::from("a1"));
            o.insert("seq", Value::from(7));
            o.insert("ts", Value::from(format_timestamp(5)));
            o.insert("event", Value::from("info"));
            o.insert("data", data.clone());
            if let Some(c) = context.filter(|c| !c.is_empty()) {
                o.insert("context", Value::from(c));
            }
            if let Some(c) = clock {
                o.insert("clock", c.to_value());
            }
            assert_eq!(direct, canonical::to_vec(&Value::Object(o)));
        }
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        let bytes = br#"{"v":1,"agent":"a1","seq":2,"ts":"1970-01-01T00:00:00.000Z","event":"info","data":null}"#;
        assert_eq!(
            check_canonical_content(bytes).unwrap_err(),
            ContentError::NotCanonical
        );
    }

    #[test]
    fn reserved_keys_cannot_hide_in_content() {
        let bytes = br#"{"agent":"a1","data":null,"event":"info","hash":"x","seq":2,"ts":"1970-01-01T00:00:00.000Z","v":1}"#;
        assert_eq!(
            check_canonical_content(bytes).unwrap_err(),
            ContentError::Reserved("hash")
        );
    }
}
