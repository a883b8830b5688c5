//! A strict JSON reader for ledger content (PROTOCOL §3, §6 check 1).
//!
//! General-purpose JSON libraries silently keep the last of two duplicate
//! keys, accept or mangle lone surrogates and read `1e19` as an integer; each
//! of those would let two parties disagree about what an entry says. This
//! reader refuses all of them, reads every number as the nearest binary64
//! (ties to even), and reports the byte offset of the first problem.

use std::fmt;

/// Deepest nesting the protocol allows: the content object itself is depth 1.
pub const MAX_DEPTH: usize = 64;

/// Most keys one object may hold. Far above what 64 KiB of content can carry
/// (about 13,000); it bounds what a larger document (an HTTP body, an export)
/// can make a reader build.
pub const MAX_KEYS: usize = 131_072;

/// Objects up to this many keys check for duplicates by scanning; larger
/// ones through a hash set, so one object costs linear time, not quadratic.
const SCAN_KEYS: usize = 16;

/// Largest integer a binary64 holds exactly: 2^53 − 1.
pub const MAX_EXACT_INTEGER: u64 = 9_007_199_254_740_991;

/// A JSON value. Numbers are binary64; there is no separate integer type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

/// A JSON object with unique keys, in the order they were read or inserted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object(Vec<(String, Value)>);

impl Object {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Inserts `key`, replacing an existing value of the same key.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

impl IntoIterator for Object {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<(String, Value)> for Object {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut object = Object::new();
        for (k, v) in iter {
            object.insert(k, v);
        }
        object
    }
}

impl Value {
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The number as an integer in 0..=2^53−1, if it is one exactly.
    pub fn as_exact_u64(&self) -> Option<u64> {
        let n = self.as_f64()?;
        let in_range = n >= 0.0 && n <= MAX_EXACT_INTEGER as f64 && n.fract() == 0.0;
        // The range check above makes the cast exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        in_range.then_some(n as u64)
    }

    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        // Callers pass seqs and counters, all below 2^53.
        #[allow(clippy::cast_precision_loss)]
        Value::Number(n as f64)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<Object> for Value {
    fn from(o: Object) -> Self {
        Value::Object(o)
    }
}

/// Which rules apply beyond plain strict JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Verifiers and gateways: every number token is read as binary64.
    Verify,
    /// The append API additionally refuses integer tokens (no `.` or
    /// exponent) beyond 2^53−1, which binary64 would silently round.
    Append,
}

/// Why bytes are not acceptable JSON, and where (byte offset into the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}")]
pub struct ParseError {
    pub offset: usize,
    pub kind: ParseErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    InvalidUtf8,
    UnexpectedEnd,
    Unexpected(char),
    TrailingCharacters,
    InvalidNumber,
    NumberOverflow,
    InexactInteger,
    ControlCharacterInString,
    InvalidEscape,
    LoneSurrogate,
    DuplicateKey(String),
    TooDeep,
    TooManyKeys,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Self::UnexpectedEnd => f.write_str("unexpected end of input"),
            Self::Unexpected(c) => write!(f, "unexpected character {c:?}"),
            Self::TrailingCharacters => f.write_str("trailing characters after the value"),
            Self::InvalidNumber => f.write_str("malformed number"),
            Self::NumberOverflow => f.write_str("number overflows binary64"),
            Self::InexactInteger => write!(
                f,
                "integer beyond 2^53-1 ({MAX_EXACT_INTEGER}) would lose precision"
            ),
            Self::ControlCharacterInString => f.write_str("unescaped control character in string"),
            Self::InvalidEscape => f.write_str("invalid escape sequence"),
            Self::LoneSurrogate => f.write_str("unpaired surrogate in string"),
            Self::DuplicateKey(k) => write!(f, "duplicate key {k:?}"),
            Self::TooDeep => write!(f, "nesting deeper than {MAX_DEPTH}"),
            Self::TooManyKeys => write!(f, "object with more than {MAX_KEYS} keys"),
        }
    }
}

/// Parses one JSON text under the protocol's rules, allowing nesting up to
/// `max_depth` (the outermost container is depth 1).
pub fn parse_with(input: &[u8], mode: Mode, max_depth: usize) -> Result<Value, ParseError> {
    let text = std::str::from_utf8(input).map_err(|e| ParseError {
        offset: e.valid_up_to(),
        kind: ParseErrorKind::InvalidUtf8,
    })?;
    let mut parser = Parser {
        text,
        bytes: input,
        pos: 0,
        mode,
        max_depth,
    };
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != input.len() {
        return Err(parser.error(ParseErrorKind::TrailingCharacters));
    }
    Ok(value)
}

/// Parses one JSON text with the protocol's depth limit.
pub fn parse(input: &[u8], mode: Mode) -> Result<Value, ParseError> {
    parse_with(input, mode, MAX_DEPTH)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    mode: Mode,
    max_depth: usize,
}

impl Parser<'_> {
    fn error(&self, kind: ParseErrorKind) -> ParseError {
        ParseError {
            offset: self.pos,
            kind,
        }
    }

    fn unexpected(&self) -> ParseError {
        match self.text[self.pos..].chars().next() {
            Some(c) => self.error(ParseErrorKind::Unexpected(c)),
            None => self.error(ParseErrorKind::UnexpectedEnd),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &str, value: Value) -> Result<Value, ParseError> {
        if self.bytes[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(value)
        } else {
            Err(self.unexpected())
        }
    }

    /// `depth` is the number of containers around this value.
    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        match self.peek() {
            None => Err(self.error(ParseErrorKind::UnexpectedEnd)),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.expect_literal("true", Value::Bool(true)),
            Some(b'f') => self.expect_literal("false", Value::Bool(false)),
            Some(b'n') => self.expect_literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.unexpected()),
        }
    }

    fn enter(&self, depth: usize) -> Result<(), ParseError> {
        if depth > self.max_depth {
            Err(self.error(ParseErrorKind::TooDeep))
        } else {
            Ok(())
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.enter(depth)?;
        self.pos += 1; // '{'
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(8);
        // Built once the object outgrows a scan; SipHash with a per-process
        // key, so an attacker cannot choose keys that collide.
        let mut seen: Option<std::collections::HashSet<String>> = None;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(Object(entries)));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.unexpected());
            }
            let key_at = self.pos;
            if entries.len() == MAX_KEYS {
                return Err(self.error(ParseErrorKind::TooManyKeys));
            }
            let key = self.string()?;
            let duplicate = match &mut seen {
                Some(seen) => !seen.insert(key.clone()),
                None if entries.len() < SCAN_KEYS => entries.iter().any(|(k, _)| *k == key),
                None => {
                    let mut set: std::collections::HashSet<String> =
                        entries.iter().map(|(k, _)| k.clone()).collect();
                    let duplicate = !set.insert(key.clone());
                    seen = Some(set);
                    duplicate
                }
            };
            if duplicate {
                return Err(ParseError {
                    offset: key_at,
                    kind: ParseErrorKind::DuplicateKey(key),
                });
            }
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.unexpected());
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth)?;
            entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(Object(entries)));
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.enter(depth)?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    /// Bytes up to the next quote, backslash or control character.
    fn plain_run(&self) -> usize {
        self.bytes[self.pos..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .unwrap_or(self.bytes.len() - self.pos)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.pos += 1; // opening quote
        // Most strings have no escapes: one scan, one copy.
        let run = self.plain_run();
        if self.bytes.get(self.pos + run) == Some(&b'"') {
            let s = self.text[self.pos..self.pos + run].to_owned();
            self.pos += run + 1;
            return Ok(s);
        }
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            self.pos += self.plain_run();
            // The input is valid UTF-8 and the run stops only at ASCII bytes,
            // so the run is on character boundaries.
            out.push_str(&self.text[run_start..self.pos]);
            match self.peek() {
                None => return Err(self.error(ParseErrorKind::UnexpectedEnd)),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => self.escape(&mut out)?,
                Some(_) => return Err(self.error(ParseErrorKind::ControlCharacterInString)),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), ParseError> {
        let at = self.pos;
        self.pos += 1; // backslash
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let unit = self.hex4()?;
                let c = match unit {
                    0xD800..=0xDBFF => {
                        if self.bytes[self.pos..].starts_with(b"\\u") {
                            self.pos += 2;
                            let low = self.hex4()?;
                            if !(0xDC00..=0xDFFF).contains(&low) {
                                return Err(ParseError {
                                    offset: at,
                                    kind: ParseErrorKind::LoneSurrogate,
                                });
                            }
                            let code = 0x10000
                                + ((u32::from(unit) - 0xD800) << 10)
                                + (u32::from(low) - 0xDC00);
                            char::from_u32(code)
                        } else {
                            None
                        }
                    }
                    _ => char::from_u32(u32::from(unit)),
                };
                out.push(c.ok_or(ParseError {
                    offset: at,
                    kind: ParseErrorKind::LoneSurrogate,
                })?);
                return Ok(());
            }
            None => return Err(self.error(ParseErrorKind::UnexpectedEnd)),
            Some(_) => {
                return Err(ParseError {
                    offset: at,
                    kind: ParseErrorKind::InvalidEscape,
                });
            }
        };
        self.pos += 1;
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, ParseError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or(self.error(ParseErrorKind::InvalidEscape))?;
        let mut unit: u16 = 0;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or(self.error(ParseErrorKind::InvalidEscape))?;
            // to_digit(16) < 16, so this fits.
            #[allow(clippy::cast_possible_truncation)]
            let v = v as u16;
            unit = unit << 4 | v;
        }
        self.pos += 4;
        Ok(unit)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let int_digits = self.digits();
        if int_digits == 0 || (int_digits > 1 && self.bytes[int_start] == b'0') {
            return Err(self.error(ParseErrorKind::InvalidNumber));
        }
        let mut integer_token = true;
        if self.peek() == Some(b'.') {
            integer_token = false;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error(ParseErrorKind::InvalidNumber));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer_token = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error(ParseErrorKind::InvalidNumber));
            }
        }
        let token = &self.text[start..self.pos];
        if integer_token && self.mode == Mode::Append {
            let magnitude = &self.text[int_start..self.pos];
            let limit = "9007199254740991";
            let too_big = magnitude.len() > limit.len()
                || (magnitude.len() == limit.len() && magnitude > limit);
            if too_big {
                return Err(ParseError {
                    offset: start,
                    kind: ParseErrorKind::InexactInteger,
                });
            }
        }
        // Rust's float parsing is correctly rounded (nearest, ties to even).
        let value: f64 = token.parse().map_err(|_| ParseError {
            offset: start,
            kind: ParseErrorKind::InvalidNumber,
        })?;
        if !value.is_finite() {
            return Err(ParseError {
                offset: start,
                kind: ParseErrorKind::NumberOverflow,
            });
        }
        Ok(Value::Number(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(input: &str, mode: Mode) -> ParseErrorKind {
        match parse(input.as_bytes(), mode) {
            Err(e) => e.kind,
            Ok(v) => panic!("{input} parsed as {v:?}"),
        }
    }

    #[test]
    fn refuses_what_lenient_parsers_accept() {
        assert_eq!(
            kind(r#"{"a":1,"a":2}"#, Mode::Verify),
            ParseErrorKind::DuplicateKey("a".into())
        );
        assert_eq!(
            kind(r#"{"x":{"a":1,"a":1}}"#, Mode::Verify),
            ParseErrorKind::DuplicateKey("a".into())
        );
        assert_eq!(
            kind(r#"{"s":"\ud800"}"#, Mode::Verify),
            ParseErrorKind::LoneSurrogate
        );
        assert_eq!(
            kind(r#"{"s":"\udc00\ud800"}"#, Mode::Verify),
            ParseErrorKind::LoneSurrogate
        );
        assert_eq!(
            kind(r#"{"s":"\ud800\u0041"}"#, Mode::Verify),
            ParseErrorKind::LoneSurrogate
        );
        assert_eq!(
            kind("[1e400]", Mode::Verify),
            ParseErrorKind::NumberOverflow
        );
        assert_eq!(kind("[NaN]", Mode::Verify), ParseErrorKind::Unexpected('N'));
        assert_eq!(kind("[01]", Mode::Verify), ParseErrorKind::InvalidNumber);
        assert_eq!(kind("[1.]", Mode::Verify), ParseErrorKind::InvalidNumber);
        assert_eq!(kind("[.5]", Mode::Verify), ParseErrorKind::Unexpected('.'));
        assert_eq!(kind("[+1]", Mode::Verify), ParseErrorKind::Unexpected('+'));
        assert_eq!(
            kind("{} x", Mode::Verify),
            ParseErrorKind::TrailingCharacters
        );
        assert_eq!(
            kind("[\"a\tb\"]", Mode::Verify),
            ParseErrorKind::ControlCharacterInString
        );
        assert_eq!(
            kind(r#"["\x"]"#, Mode::Verify),
            ParseErrorKind::InvalidEscape
        );
        assert_eq!(kind("[1,]", Mode::Verify), ParseErrorKind::Unexpected(']'));
        assert_eq!(
            kind("{\"a\":1", Mode::Verify),
            ParseErrorKind::UnexpectedEnd
        );
    }

    #[test]
    fn invalid_utf8_is_reported_where_it_starts() {
        let err = parse(b"[\"ok\xff\"]", Mode::Verify).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::InvalidUtf8);
        assert_eq!(err.offset, 4);
    }

    #[test]
    fn errors_name_the_offset() {
        let err = parse(br#"{"a":1, "a":2}"#, Mode::Verify).unwrap_err();
        assert_eq!(err.offset, 8);
        assert_eq!(err.to_string(), "duplicate key \"a\" at byte 8");
    }

    #[test]
    fn append_mode_refuses_integers_beyond_2_pow_53() {
        assert!(parse(b"[9007199254740991]", Mode::Append).is_ok());
        assert!(parse(b"[-9007199254740991]", Mode::Append).is_ok());
        assert_eq!(
            kind("[9007199254740992]", Mode::Append),
            ParseErrorKind::InexactInteger
        );
        assert_eq!(
            kind("[-100000000000000000000]", Mode::Append),
            ParseErrorKind::InexactInteger
        );
        // With a fraction or exponent the writer chose a float: allowed.
        assert!(parse(b"[9007199254740993.0]", Mode::Append).is_ok());
        assert!(parse(b"[1e20]", Mode::Append).is_ok());
        // Verifiers never apply the rule.
        assert_eq!(
            parse(b"[9007199254740993]", Mode::Verify).unwrap(),
            Value::Array(vec![Value::Number(9007199254740992.0)])
        );
    }

    #[test]
    fn depth_limit_counts_the_outer_container_as_one() {
        let nest = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(parse(nest(64).as_bytes(), Mode::Verify).is_ok());
        assert_eq!(kind(&nest(65), Mode::Verify), ParseErrorKind::TooDeep);
        // Deep input must not overflow the stack even far past the limit.
        assert_eq!(kind(&nest(100_000), Mode::Verify), ParseErrorKind::TooDeep);
    }

    fn object_of(keys: usize) -> String {
        let body: Vec<String> = (0..keys).map(|i| format!("\"k{i}\":{i}")).collect();
        format!("{{{}}}", body.join(","))
    }

    #[test]
    fn duplicates_are_found_in_large_objects_too() {
        let mut doc = object_of(1000);
        doc.insert_str(doc.len() - 1, ",\"k517\":0");
        let err = parse(doc.as_bytes(), Mode::Verify).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::DuplicateKey("k517".into()));
        assert_eq!(&doc[err.offset..err.offset + 7], "\"k517\":");
    }

    #[test]
    fn objects_beyond_the_key_cap_are_refused() {
        assert!(parse(object_of(MAX_KEYS).as_bytes(), Mode::Verify).is_ok());
        let err = parse(object_of(MAX_KEYS + 1).as_bytes(), Mode::Verify).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::TooManyKeys);
    }

    /// Finding (issue 15): a duplicate check that compared every key with
    /// every earlier one made a 40k-key object cost seconds. The cost per key
    /// must not grow with the object: a hundred times the keys may cost a
    /// hundred times the time, with room for caches, never ten thousand.
    #[test]
    fn parse_time_grows_linearly_with_keys() {
        let per_key = |keys: usize| {
            let doc = object_of(keys);
            let best = (0..5)
                .map(|_| {
                    let start = std::time::Instant::now();
                    parse(doc.as_bytes(), Mode::Verify).unwrap();
                    start.elapsed()
                })
                .min()
                .unwrap();
            best.as_secs_f64() / keys as f64
        };
        let small = per_key(1_000);
        let large = per_key(100_000);
        assert!(
            large < small * 10.0,
            "a key costs {:.0} ns among 100k keys, {:.0} ns among 1k",
            large * 1e9,
            small * 1e9
        );
    }

    #[test]
    fn surrogate_pairs_decode() {
        let v = parse(br#"["\ud83d\ude00"]"#, Mode::Verify).unwrap();
        assert_eq!(v, Value::Array(vec![Value::String("😀".into())]));
    }

    #[test]
    fn exact_u64_only_for_integral_values_in_range() {
        assert_eq!(Value::Number(1.0).as_exact_u64(), Some(1));
        assert_eq!(Value::Number(1.5).as_exact_u64(), None);
        assert_eq!(Value::Number(-1.0).as_exact_u64(), None);
        assert_eq!(Value::Number(9007199254740992.0).as_exact_u64(), None);
        assert_eq!(Value::Bool(true).as_exact_u64(), None);
    }
}
