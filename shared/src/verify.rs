//! The streaming verifier of PROTOCOL §6.
//!
//! Lines are fed one at a time, so a chain of any length is verified in
//! constant memory. For each non-empty line the first failing check of the
//! seven rejects it; line numbers are 0-based among the non-empty lines.

use std::fmt;

use crate::canonical;
use crate::crypto::{Hash, KeyError, PublicKey, Sig, chain_hash};
use crate::entry::{ContentError, Entry, Header, RESERVED_KEYS, Seq};
use crate::id::AgentId;
use crate::json::{self, Mode, ParseError, Value};

/// Why a line was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reason {
    #[error("{0}")]
    Json(ParseError),
    #[error("line is not a JSON object")]
    NotAnObject,
    #[error("{0}")]
    Content(ContentError),
    #[error("{key:?} is missing")]
    MissingChainField { key: &'static str },
    #[error("{key:?} is not {what}: {problem}")]
    ChainField {
        key: &'static str,
        what: &'static str,
        problem: String,
    },
    #[error("agent {found:?} where {expected:?} expected")]
    AgentMismatch { expected: String, found: String },
    #[error("seq {found} where {expected} expected")]
    SeqMismatch { expected: Seq, found: Seq },
    #[error("prev does not equal the previous hash")]
    PrevMismatch,
    #[error("seq 1 must have prev = 64 x \"0\"")]
    GenesisPrev,
    #[error("hash mismatch")]
    HashMismatch,
    #[error("bad checkpoint signature")]
    BadSignature,
    #[error("chain break at seq {found} is not a valid recovery: {why}")]
    BadRecovery { found: Seq, why: &'static str },
}

/// The first rejected line.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// 0-based among non-empty lines.
    pub line: usize,
    /// The line's seq when it could be read.
    pub seq: Option<Seq>,
    pub reason: Reason,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(s) => write!(
                f,
                "invalid at line {} (seq {s}): {}",
                self.line, self.reason
            ),
            None => write!(f, "invalid at line {} (seq ?): {}", self.line, self.reason),
        }
    }
}

/// What a chain that passed says about itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub lines: usize,
    pub agent: Option<AgentId>,
    pub first_seq: Seq,
    pub head_seq: Seq,
    pub head_hash: Hash,
    /// The first line's `prev` when the run starts after seq 1: taken as
    /// given (unverified), `(first_seq - 1, prev)`.
    pub anchor: Option<(Seq, Hash)>,
    /// Highest seq covered by a verified signature (0: none).
    pub authenticated_through: Seq,
    /// Lines not covered by any verified signature of their run.
    pub unsigned_tail: usize,
    /// Contiguous runs `(first, last)`; more than one only across verified
    /// `recovery` adoptions.
    pub segments: Vec<(Seq, Seq)>,
}

/// The verdict of §6.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Valid(Summary),
    /// Checks 1–6 passed, but no key was given: never `valid`.
    Unauthenticated(Summary),
    Invalid(Invalid),
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid(_))
    }

    pub fn summary(&self) -> Option<&Summary> {
        match self {
            Verdict::Valid(s) | Verdict::Unauthenticated(s) => Some(s),
            Verdict::Invalid(_) => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid(s) => write!(
                f,
                "valid: authenticated through seq {}, unsigned tail {}",
                s.authenticated_through, s.unsigned_tail
            ),
            Verdict::Unauthenticated(_) => f.write_str("unauthenticated"),
            Verdict::Invalid(i) => i.fmt(f),
        }
    }
}

/// One line that passed checks 1 and 2, split into its parts.
#[derive(Debug, Clone)]
pub struct ParsedLine {
    pub header: Header,
    pub entry: Entry,
    /// The parsed content (the line minus `prev`, `hash`, `sig`).
    pub content: Value,
}

/// Checks 1 and 2 of §6 on one line and computes its canonical content.
pub fn parse_line(line: &[u8]) -> Result<ParsedLine, (Option<Seq>, Reason)> {
    let value = json::parse(line, Mode::Verify).map_err(|e| (None, Reason::Json(e)))?;
    let Value::Object(mut object) = value else {
        return Err((None, Reason::NotAnObject));
    };
    let seq_hint = object.get("seq").and_then(Value::as_exact_u64).map(Seq);
    let fail = |r| (seq_hint, r);
    let header = Header::from_object(&object).map_err(|e| fail(Reason::Content(e)))?;
    let prev = chain_field::<Hash>(object.get("prev"), "prev").map_err(fail)?;
    let hash = chain_field::<Hash>(object.get("hash"), "hash").map_err(fail)?;
    let sig = match object.get("sig") {
        None => None,
        some => Some(chain_field::<Sig>(some, "sig").map_err(fail)?),
    };
    for key in RESERVED_KEYS {
        object.remove(key);
    }
    let content = Value::Object(object);
    let entry = Entry {
        content: canonical::to_vec(&content),
        prev,
        hash,
        sig,
    };
    Ok(ParsedLine {
        header,
        entry,
        content,
    })
}

trait FromHex: Sized {
    const WHAT: &'static str;
    fn from_hex(s: &str) -> Result<Self, KeyError>;
}

impl FromHex for Hash {
    const WHAT: &'static str = "64 lowercase hex characters";
    fn from_hex(s: &str) -> Result<Self, KeyError> {
        Hash::from_hex(s)
    }
}

impl FromHex for Sig {
    const WHAT: &'static str = "128 lowercase hex characters";
    fn from_hex(s: &str) -> Result<Self, KeyError> {
        Sig::from_hex(s)
    }
}

fn chain_field<T: FromHex>(v: Option<&Value>, key: &'static str) -> Result<T, Reason> {
    match v {
        None => Err(Reason::MissingChainField { key }),
        Some(Value::String(s)) => T::from_hex(s).map_err(|e| Reason::ChainField {
            key,
            what: T::WHAT,
            problem: e.to_string(),
        }),
        Some(other) => Err(Reason::ChainField {
            key,
            what: T::WHAT,
            problem: format!("found {}", other.kind()),
        }),
    }
}

/// The streaming verifier.
#[derive(Debug)]
pub struct Verifier {
    key: Option<PublicKey>,
    allow_recovery_breaks: bool,
    line: usize,
    summary: Summary,
    /// Lines of the current run since its last verified signature.
    pending_unsigned: usize,
    failed: Option<Invalid>,
}

impl Verifier {
    /// A verifier for one run. Without a key only checks 1–6 apply and the
    /// verdict is at best `Unauthenticated`.
    pub fn new(key: Option<PublicKey>) -> Self {
        Verifier {
            key,
            allow_recovery_breaks: false,
            line: 0,
            summary: Summary::default(),
            pending_unsigned: 0,
            failed: None,
        }
    }

    /// Also accept breaks in seq at `recovery` entries whose
    /// `data.adopted` names `(seq - 1, prev)` and carries a valid checkpoint
    /// by the agent's key over it (PROTOCOL §7 rule 3c). Needs a key.
    pub fn allowing_recovery_breaks(mut self) -> Self {
        self.allow_recovery_breaks = true;
        self
    }

    /// Feeds one line (without its newline). Empty lines are ignored. After
    /// the first rejection every further line is ignored and the same
    /// rejection is returned.
    pub fn push_line(&mut self, line: &[u8]) -> Result<(), Invalid> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let at = self.line;
        self.line += 1;
        self.check(line).map_err(|(seq, reason)| {
            let invalid = Invalid {
                line: at,
                seq,
                reason,
            };
            self.failed = Some(invalid.clone());
            invalid
        })
    }

    /// Feeds a whole text of lines (`\n` separated, `\r\n` tolerated).
    pub fn push_text(&mut self, text: &[u8]) -> Result<(), Invalid> {
        for line in text.split(|&b| b == b'\n') {
            self.push_line(line.strip_suffix(b"\r").unwrap_or(line))?;
        }
        Ok(())
    }

    pub fn finish(self) -> Verdict {
        if let Some(failed) = self.failed {
            return Verdict::Invalid(failed);
        }
        let mut summary = self.summary;
        summary.unsigned_tail += self.pending_unsigned;
        if self.key.is_some() {
            Verdict::Valid(summary)
        } else {
            Verdict::Unauthenticated(summary)
        }
    }

    fn check(&mut self, line: &[u8]) -> Result<(), (Option<Seq>, Reason)> {
        let ParsedLine {
            header,
            entry,
            content,
        } = parse_line(line)?;
        let seq = header.seq;
        let fail = |r| (Some(seq), r);
        let first = self.summary.lines == 0;
        // 3. the same agent throughout
        if let Some(agent) = &self.summary.agent
            && *agent != header.agent
        {
            return Err(fail(Reason::AgentMismatch {
                expected: agent.to_string(),
                found: header.agent.to_string(),
            }));
        }
        // 4. and 5. contiguous seqs, each linking to the previous hash
        let mut breaks_run = false;
        if first {
            if seq == Seq(1) && entry.prev != Hash::ZERO {
                return Err(fail(Reason::GenesisPrev));
            }
        } else {
            let expected = self.summary.head_seq.next();
            if seq != expected {
                if !(self.allow_recovery_breaks && seq > expected) {
                    return Err(fail(Reason::SeqMismatch {
                        expected,
                        found: seq,
                    }));
                }
                self.check_recovery_break(&header, &entry, &content)
                    .map_err(|why| fail(Reason::BadRecovery { found: seq, why }))?;
                breaks_run = true;
            } else if entry.prev != self.summary.head_hash {
                return Err(fail(Reason::PrevMismatch));
            }
        }
        // 6. the hash over the canonical content and prev
        if chain_hash(&entry.content, &entry.prev) != entry.hash {
            return Err(fail(Reason::HashMismatch));
        }
        // 7. the checkpoint signature, if any
        let signed = match (&entry.sig, &self.key) {
            (Some(sig), Some(key)) => {
                if !key.verify_checkpoint(&header.agent, seq, &entry.hash, sig) {
                    return Err(fail(Reason::BadSignature));
                }
                true
            }
            _ => false,
        };
        self.advance(header, &entry, first, breaks_run, signed);
        Ok(())
    }

    fn check_recovery_break(
        &self,
        header: &Header,
        entry: &Entry,
        content: &Value,
    ) -> Result<(), &'static str> {
        let Some(key) = &self.key else {
            return Err("a break can be checked only with the agent's key");
        };
        if header.event.as_str() != "recovery" {
            return Err("only a recovery entry may follow a break");
        }
        let adopted = content
            .as_object()
            .and_then(|c| c.get("data"))
            .and_then(Value::as_object)
            .and_then(|d| d.get("adopted"))
            .and_then(Value::as_object)
            .ok_or("data.adopted is missing")?;
        let seq = adopted
            .get("seq")
            .and_then(Value::as_exact_u64)
            .map(Seq)
            .ok_or("data.adopted.seq is not a seq")?;
        let hash = adopted
            .get("hash")
            .and_then(Value::as_str)
            .and_then(|h| Hash::from_hex(h).ok())
            .ok_or("data.adopted.hash is not a hash")?;
        let sig = adopted
            .get("sig")
            .and_then(Value::as_str)
            .and_then(|s| Sig::from_hex(s).ok())
            .ok_or("data.adopted.sig is not a signature")?;
        if seq.next() != header.seq || hash != entry.prev {
            return Err("data.adopted does not name (seq - 1, prev)");
        }
        if !key.verify_checkpoint(&header.agent, seq, &hash, &sig) {
            return Err("data.adopted.sig is not the agent's checkpoint");
        }
        Ok(())
    }

    fn advance(&mut self, header: Header, entry: &Entry, first: bool, breaks: bool, signed: bool) {
        let s = &mut self.summary;
        let seq = header.seq;
        if first {
            s.agent = Some(header.agent);
            s.first_seq = seq;
            if seq > Seq(1) {
                s.anchor = Some((seq.prev(), entry.prev));
            }
            s.segments.push((seq, seq));
        } else if breaks {
            s.unsigned_tail += self.pending_unsigned;
            self.pending_unsigned = 0;
            s.segments.push((seq, seq));
        }
        if let Some(run) = s.segments.last_mut() {
            run.1 = seq;
        }
        s.lines += 1;
        s.head_seq = seq;
        s.head_hash = entry.hash;
        if signed {
            s.authenticated_through = seq;
            self.pending_unsigned = 0;
        } else {
            self.pending_unsigned += 1;
        }
    }
}

/// Verifies a whole text of JSONL lines as one run.
pub fn verify_text(text: &[u8], key: Option<PublicKey>) -> Verdict {
    let mut v = Verifier::new(key);
    // The error is kept inside the verifier and reported by finish().
    let _ = v.push_text(text);
    v.finish()
}
