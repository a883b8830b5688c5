//! Exported forms (PROTOCOL §5): JSONL runs, daily files and the portable
//! "memory baton" document, with the loader's rules.

use crate::canonical;
use crate::crypto::{Hash, PublicKey, Sig};
use crate::entry::{Entry, Seq};
use crate::id::AgentId;
use crate::json::{self, Mode, Object, Value};
use crate::verify::{Invalid, Summary, Verdict, Verifier};

/// The file name of an older run, `<agent>.<first>-<last>.jsonl`.
pub fn run_file_name(agent: &AgentId, first: Seq, last: Seq) -> String {
    format!("{agent}.{first}-{last}.jsonl")
}

/// The daily file an entry belongs in: the first 10 characters of `ts`.
pub fn daily_file_stem(ts: &str) -> &str {
    ts.get(..10).unwrap_or(ts)
}

/// Why a daily set could not be merged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DailyError {
    #[error("file {file}, line {line}: no readable seq")]
    NoSeq { file: usize, line: usize },
    #[error("seq {0} appears in more than one line")]
    DuplicateSeq(Seq),
}

/// Merges the files of a daily set into one run ordered by seq (PROTOCOL
/// §5: `ts` need not increase, so a day file may hold non-adjacent runs).
pub fn merge_daily(files: &[&[u8]]) -> Result<Vec<Vec<u8>>, DailyError> {
    let mut lines: Vec<(Seq, Vec<u8>)> = Vec::new();
    for (file, text) in files.iter().enumerate() {
        for (line, bytes) in text
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .enumerate()
        {
            let seq = json::parse(bytes, Mode::Verify)
                .ok()
                .and_then(|v| v.as_object()?.get("seq")?.as_exact_u64())
                .ok_or(DailyError::NoSeq { file, line })?;
            lines.push((Seq(seq), bytes.to_vec()));
        }
    }
    lines.sort_by_key(|(seq, _)| *seq);
    if let Some(w) = lines.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(DailyError::DuplicateSeq(w[0].0));
    }
    Ok(lines.into_iter().map(|(_, l)| l).collect())
}

/// A signed head or receipt named in a baton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPoint {
    pub seq: Seq,
    pub hash: Hash,
    pub sig: Sig,
}

/// A gateway receipt named in a baton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatonReceipt {
    pub gateway: AgentId,
    pub point: SignedPoint,
}

impl From<&crate::wire::Receipt> for BatonReceipt {
    fn from(r: &crate::wire::Receipt) -> Self {
        BatonReceipt {
            gateway: r.gateway.clone(),
            point: SignedPoint {
                seq: r.seq,
                hash: r.hash,
                sig: r.sig,
            },
        }
    }
}

/// A note: not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub ts: String,
    pub by: String,
    pub text: String,
}

/// What goes into a baton document.
#[derive(Debug, Clone)]
pub struct BatonDoc {
    pub agent: AgentId,
    pub public_key: String,
    pub context: Option<String>,
    pub exported_at: String,
    pub entries: Vec<Entry>,
    pub head: Option<SignedPoint>,
    pub receipt: Option<BatonReceipt>,
    pub notes: Vec<Note>,
}

fn point_value(p: &SignedPoint, gateway: Option<&AgentId>) -> Value {
    let mut o = Object::new();
    if let Some(g) = gateway {
        o.insert("gateway", Value::from(g.as_str()));
    }
    o.insert("seq", Value::from(p.seq.0));
    o.insert("hash", Value::from(p.hash.to_hex()));
    o.insert("sig", Value::from(p.sig.to_hex()));
    Value::Object(o)
}

/// One event of a baton document as its canonical JSON (what
/// [`BatonDoc::to_json`] writes for it).
pub fn baton_event(e: &Entry) -> Vec<u8> {
    match json::parse(e.to_jsonl().as_bytes(), Mode::Verify) {
        Ok(v) => canonical::to_vec(&v),
        Err(_) => Vec::new(),
    }
}

impl BatonDoc {
    /// Writes the document with its events drawn from `events` one at a
    /// time, so a chain of any length is exported in constant memory
    /// (`self.entries` is ignored). Byte for byte what `to_json` writes for
    /// the same events.
    pub fn write_streaming<W: std::io::Write, E>(
        &self,
        events: impl FnOnce(&mut dyn FnMut(&Entry) -> std::io::Result<()>) -> Result<(), E>,
        out: &mut W,
    ) -> Result<(), StreamError<E>> {
        const MARK: &[u8] = b"\"events\":[]";
        let frame = BatonDoc {
            entries: Vec::new(),
            ..self.clone()
        }
        .to_json();
        // Inside a JSON string a quote is escaped, so the mark can only be
        // the top-level key.
        let at = frame
            .windows(MARK.len())
            .position(|w| w == MARK)
            .unwrap_or(frame.len());
        let (prefix, suffix) = frame.split_at(at);
        out.write_all(prefix).map_err(StreamError::Io)?;
        out.write_all(b"\"events\":[").map_err(StreamError::Io)?;
        let mut first = true;
        events(&mut |e: &Entry| {
            let event = baton_event(e);
            if event.is_empty() {
                return Ok(());
            }
            if !first {
                out.write_all(b",")?;
            }
            first = false;
            out.write_all(&event)
        })
        .map_err(StreamError::Source)?;
        out.write_all(b"]").map_err(StreamError::Io)?;
        out.write_all(suffix.get(MARK.len()..).unwrap_or_default())
            .map_err(StreamError::Io)?;
        Ok(())
    }

    /// Serializes the document (canonical JSON; key order is free).
    pub fn to_json(&self) -> Vec<u8> {
        let mut o = Object::new();
        o.insert("baton", Value::Number(1.0));
        o.insert("agent", Value::from(self.agent.as_str()));
        o.insert("public_key", Value::from(self.public_key.as_str()));
        if let Some(c) = &self.context {
            o.insert("context", Value::from(c.as_str()));
        }
        o.insert("exported_at", Value::from(self.exported_at.as_str()));
        let events = self
            .entries
            .iter()
            .filter_map(|e| json::parse(e.to_jsonl().as_bytes(), Mode::Verify).ok())
            .collect();
        o.insert("events", Value::Array(events));
        if let Some(h) = &self.head {
            o.insert("head", point_value(h, None));
        }
        if let Some(r) = &self.receipt {
            o.insert("receipt", point_value(&r.point, Some(&r.gateway)));
        }
        let notes = self
            .notes
            .iter()
            .map(|n| {
                let mut o = Object::new();
                o.insert("ts", Value::from(n.ts.as_str()));
                o.insert("by", Value::from(n.by.as_str()));
                o.insert("text", Value::from(n.text.as_str()));
                Value::Object(o)
            })
            .collect();
        o.insert("notes", Value::Array(notes));
        canonical::to_vec(&Value::Object(o))
    }
}

/// Why a streamed baton stopped: writing failed, or the source of events.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E> {
    #[error("writing the baton: {0}")]
    Io(std::io::Error),
    #[error("reading its events: {0}")]
    Source(E),
}

/// Why a baton was refused. Loading refuses the whole document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatonError {
    #[error("baton is not valid JSON: {0}")]
    Json(json::ParseError),
    #[error("baton field {field:?}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("baton public_key {found} differs from the key trusted for {agent}")]
    KeyMismatch { agent: AgentId, found: String },
    #[error("baton public_key is of small order")]
    SmallOrderKey,
    #[error("no trusted key for {0}; load it unauthenticated only on explicit request")]
    NoTrustedKey(AgentId),
    #[error("event agent {found} differs from baton agent {expected}")]
    AgentMismatch { expected: AgentId, found: AgentId },
    #[error("events: {0}")]
    Events(Invalid),
    #[error("baton has no events")]
    Empty,
    #[error("head at seq {0}: {1}")]
    Head(Seq, &'static str),
    #[error("receipt at seq {0}: hash differs from the event at that seq")]
    ReceiptMismatch(Seq),
}

/// A baton that passed loading.
#[derive(Debug, Clone)]
pub struct LoadedBaton {
    pub agent: AgentId,
    pub context: Option<String>,
    pub entries: Vec<Entry>,
    pub summary: Summary,
    /// False when loaded without a trusted key (explicit request only).
    pub authenticated: bool,
    /// `head.seq` is past the last event.
    pub truncated: bool,
    pub head: Option<SignedPoint>,
    pub receipt: Option<BatonReceipt>,
    pub notes: Vec<Note>,
}

/// How a baton is to be trusted.
#[derive(Debug, Clone, Copy)]
pub enum BatonTrust<'a> {
    /// The key already trusted for the baton's agent (enrollment or explicit).
    Key(&'a PublicKey),
    /// No key: verify checks 1–6 only and mark the result unauthenticated.
    Unauthenticated,
    /// No key and no explicit request: refuse.
    None,
}

fn bad(field: &'static str, problem: impl Into<String>) -> BatonError {
    BatonError::Field {
        field,
        problem: problem.into(),
    }
}

fn str_field<'a>(o: &'a Object, field: &'static str) -> Result<&'a str, BatonError> {
    o.get(field)
        .ok_or_else(|| bad(field, "missing"))?
        .as_str()
        .ok_or_else(|| bad(field, "not a string"))
}

fn point(o: &Object, field: &'static str) -> Result<Option<SignedPoint>, BatonError> {
    let Some(v) = o.get(field) else {
        return Ok(None);
    };
    let p = v.as_object().ok_or_else(|| bad(field, "not an object"))?;
    let seq = p
        .get("seq")
        .and_then(Value::as_exact_u64)
        .ok_or_else(|| bad(field, "seq is not a seq"))?;
    let hash = Hash::from_hex(str_field(p, "hash")?).map_err(|e| bad(field, e.to_string()))?;
    let sig = Sig::from_hex(str_field(p, "sig")?).map_err(|e| bad(field, e.to_string()))?;
    Ok(Some(SignedPoint {
        seq: Seq(seq),
        hash,
        sig,
    }))
}

/// Loads a baton document: verified whole, refused whole on any failure.
pub fn load_baton(doc: &[u8], trust: BatonTrust<'_>) -> Result<LoadedBaton, BatonError> {
    // events sit two levels below the document: allow the content's 64.
    let value =
        json::parse_with(doc, Mode::Verify, json::MAX_DEPTH + 2).map_err(BatonError::Json)?;
    let o = value
        .as_object()
        .ok_or_else(|| bad("baton", "document is not an object"))?;
    if o.get("baton").and_then(Value::as_f64) != Some(1.0) {
        return Err(bad("baton", "must be the number 1"));
    }
    let agent = AgentId::new(str_field(o, "agent")?).map_err(|e| bad("agent", e.to_string()))?;
    let public_key = str_field(o, "public_key")?;
    let key_bytes = crate::crypto::decode_hex::<32>(public_key)
        .map_err(|e| bad("public_key", e.to_string()))?;
    let claimed =
        PublicKey::from_bytes(&key_bytes).map_err(|e| bad("public_key", e.to_string()))?;
    if claimed.is_small_order() {
        return Err(BatonError::SmallOrderKey);
    }
    let key = match trust {
        BatonTrust::Key(k) if *k == claimed => Some(*k),
        BatonTrust::Key(_) => {
            return Err(BatonError::KeyMismatch {
                agent,
                found: public_key.to_owned(),
            });
        }
        BatonTrust::Unauthenticated => None,
        BatonTrust::None => return Err(BatonError::NoTrustedKey(agent)),
    };
    let context = match o.get("context") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("context", "not a string")),
    };
    let exported_at = o.get("exported_at").map(Value::as_str);
    if exported_at == Some(None) {
        return Err(bad("exported_at", "not a string"));
    }
    let events = match o.get("events") {
        Some(Value::Array(a)) => a,
        _ => return Err(bad("events", "missing or not an array")),
    };
    if events.is_empty() {
        return Err(BatonError::Empty);
    }
    let mut verifier = Verifier::new(key);
    let mut entries = Vec::with_capacity(events.len());
    for event in events {
        let line = canonical::to_vec(event);
        verifier.push_line(&line).map_err(BatonError::Events)?;
        // The line passed checks 1-2, so it parses again.
        if let Ok(parsed) = crate::verify::parse_line(&line) {
            if parsed.header.agent != agent {
                return Err(BatonError::AgentMismatch {
                    expected: agent,
                    found: parsed.header.agent,
                });
            }
            entries.push(parsed.entry);
        }
    }
    let summary = match verifier.finish() {
        Verdict::Valid(s) | Verdict::Unauthenticated(s) => s,
        Verdict::Invalid(i) => return Err(BatonError::Events(i)),
    };
    let first = summary.first_seq;
    let at = |seq: Seq| {
        (seq >= first && seq <= summary.head_seq)
            .then(|| entries.get(usize::try_from(seq.0 - first.0).ok()?))
            .flatten()
    };
    let head = point(o, "head")?;
    let mut truncated = false;
    if let Some(h) = &head {
        if h.seq > summary.head_seq {
            truncated = true;
        } else if let Some(e) = at(h.seq)
            && e.hash != h.hash
        {
            return Err(BatonError::Head(
                h.seq,
                "hash differs from the event at that seq",
            ));
        }
        if let Some(k) = &key
            && !k.verify_checkpoint(&agent, h.seq, &h.hash, &h.sig)
        {
            return Err(BatonError::Head(
                h.seq,
                "signature is not the agent's checkpoint",
            ));
        }
    }
    let receipt = match point(o, "receipt")? {
        None => None,
        Some(p) => {
            let r = o.get("receipt").and_then(Value::as_object);
            let gateway = r
                .and_then(|r| r.get("gateway"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("receipt", "gateway is missing"))?;
            let gateway = AgentId::new(gateway).map_err(|e| bad("receipt", e.to_string()))?;
            if let Some(e) = at(p.seq)
                && e.hash != p.hash
            {
                return Err(BatonError::ReceiptMismatch(p.seq));
            }
            Some(BatonReceipt { gateway, point: p })
        }
    };
    let notes = match o.get("notes") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|n| {
                let n = n.as_object().ok_or_else(|| bad("notes", "not an object"))?;
                Ok(Note {
                    ts: str_field(n, "ts")?.to_owned(),
                    by: str_field(n, "by")?.to_owned(),
                    text: str_field(n, "text")?.to_owned(),
                })
            })
            .collect::<Result<_, BatonError>>()?,
        Some(_) => return Err(bad("notes", "not an array")),
    };
    Ok(LoadedBaton {
        agent,
        context,
        entries,
        summary,
        authenticated: key.is_some(),
        truncated,
        head,
        receipt,
        notes,
    })
}

#[cfg(test)]
mod streaming_tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::memory::MemLedger;

    /// The streamed document is the in-memory one, byte for byte, with or
    /// without the optional parts (context, head, receipt, notes).
    #[test]
    fn a_streamed_baton_is_the_same_document() {
        let agent = AgentId::new("pi-1").unwrap();
        let mut l = MemLedger::new(agent.clone(), SecretKey::from_seed(&[3; 32]));
        l.append(0, "genesis", None, Value::Object(Object::new()))
            .unwrap();
        for i in 0..20u64 {
            l.append(1, "info", Some("ctx"), Value::from(i)).unwrap();
        }
        l.sign_head();
        let entries: Vec<Entry> = l.range(Seq(1), Seq(21)).into_iter().collect();
        let bare = BatonDoc {
            agent: agent.clone(),
            public_key: "ab".repeat(32),
            context: None,
            exported_at: "2026-12-03T00:00:00.000Z".into(),
            entries,
            head: None,
            receipt: None,
            notes: Vec::new(),
        };
        let full = BatonDoc {
            context: Some(r#"a "quoted" "events":[] context"#.into()),
            notes: vec![Note {
                ts: "2026-12-03T00:00:01.000Z".into(),
                by: "op".into(),
                text: "checked".into(),
            }],
            ..bare.clone()
        };
        for doc in [bare, full] {
            let mut streamed = Vec::new();
            doc.write_streaming::<_, std::io::Error>(
                |f| doc.entries.iter().try_for_each(f),
                &mut streamed,
            )
            .unwrap();
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                String::from_utf8(doc.to_json()).unwrap()
            );
        }
    }
}
