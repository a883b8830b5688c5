//! RFC 8785 (JCS) serialization (PROTOCOL §3).
//!
//! Keys are ordered by UTF-16 code units (not by UTF-8 bytes or code points:
//! the two differ for characters above U+FFFF against U+E000..U+FFFF), numbers
//! are written as ECMAScript's shortest round-trip form, strings use the short
//! escapes and `\u00xx` for other control characters and are otherwise raw
//! UTF-8, with no Unicode normalization.

use std::cmp::Ordering;

use crate::json::{self, Mode, ParseError, Value};

/// Appends the canonical form of `value` to `out`.
pub fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(*n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(object) => {
            out.push(b'{');
            let sorted = object
                .keys()
                .zip(object.keys().skip(1))
                .all(|(a, b)| utf16_cmp(a, b) == Ordering::Less);
            if sorted {
                write_members(object.iter(), out);
            } else {
                let mut entries: Vec<(&str, &Value)> = object.iter().collect();
                entries.sort_unstable_by(|a, b| utf16_cmp(a.0, b.0));
                write_members(entries.into_iter(), out);
            }
            out.push(b'}');
        }
    }
}

fn write_members<'a>(members: impl Iterator<Item = (&'a str, &'a Value)>, out: &mut Vec<u8>) {
    for (i, (key, item)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write(item, out);
    }
}

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write(value, &mut out);
    out
}

/// Parses `input` under `mode` and returns its canonical bytes.
pub fn canonicalize(input: &[u8], mode: Mode) -> Result<Vec<u8>, ParseError> {
    json::parse(input, mode).map(|v| to_vec(&v))
}

/// Orders two strings by their UTF-16 code units, as JCS requires.
pub fn utf16_cmp(a: &str, b: &str) -> Ordering {
    // UTF-8 byte order equals code point order, which equals UTF-16 order
    // unless a supplementary character meets one in U+E000..=U+FFFF; only
    // then do the slower comparison.
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    match ab.iter().zip(bb).position(|(x, y)| x != y) {
        None => ab.len().cmp(&bb.len()),
        Some(i) if ab[i] < 0xEE && bb[i] < 0xEE => ab[i].cmp(&bb[i]),
        Some(_) => a.encode_utf16().cmp(b.encode_utf16()),
    }
}

fn write_number(n: f64, out: &mut Vec<u8>) {
    if n == 0.0 {
        // -0 is written as 0 (ECMAScript Number::toString).
        out.push(b'0');
        return;
    }
    let mut buf = ryu_js::Buffer::new();
    out.extend_from_slice(buf.format_finite(n).as_bytes());
}

/// Appends the canonical form of a JSON string.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    write_string(s, out);
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        out.extend_from_slice(escape);
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Whether `input` is exactly the canonical form of a JSON object (nesting
/// within [`json::MAX_DEPTH`]), checked in one pass without building a
/// tree. Each top-level member is passed to `member` as its raw key (the
/// bytes between the quotes) and its raw value.
///
/// This is the receiver's fast path; `canonicalize(input) == input` is the
/// definition, and a property test holds the two to the same answer.
pub fn is_canonical_object<'a>(input: &'a [u8], member: impl FnMut(&'a [u8], &'a [u8])) -> bool {
    if std::str::from_utf8(input).is_err() || input.first() != Some(&b'{') {
        return false;
    }
    let mut c = Checker { b: input, pos: 0 };
    c.object(1, Some(member)) && c.pos == input.len()
}

struct Checker<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Checker<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let ok = self.peek() == Some(byte);
        self.pos += usize::from(ok);
        ok
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            Some(b'{') => self.object(depth + 1, None::<fn(&[u8], &[u8])>),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn literal(&mut self, lit: &[u8]) -> bool {
        let ok = self.b[self.pos..].starts_with(lit);
        self.pos += if ok { lit.len() } else { 0 };
        ok
    }

    fn object(&mut self, depth: usize, mut member: Option<impl FnMut(&'a [u8], &'a [u8])>) -> bool {
        if depth > json::MAX_DEPTH {
            return false;
        }
        self.pos += 1;
        if self.eat(b'}') {
            return true;
        }
        let mut prev: Option<&'a [u8]> = None;
        loop {
            let Some(key) = self.string() else {
                return false;
            };
            // Strictly increasing keys: sorted, and no duplicates.
            if prev.is_some_and(|p| !raw_key_less(p, key)) {
                return false;
            }
            prev = Some(key);
            if !self.eat(b':') {
                return false;
            }
            let start = self.pos;
            if !self.value(depth) {
                return false;
            }
            if let Some(f) = member.as_mut() {
                f(key, &self.b[start..self.pos]);
            }
            if self.eat(b'}') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        if depth > json::MAX_DEPTH {
            return false;
        }
        self.pos += 1;
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    /// A string in canonical form; returns the bytes between the quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        loop {
            let run = self.b[self.pos..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            self.pos += run;
            match self.b[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Some(&self.b[start..self.pos - 1]);
                }
                b'\\' => {
                    let esc = *self.b.get(self.pos + 1)?;
                    self.pos += 2;
                    match esc {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            // only \u00xx, lowercase, for controls without a short form
                            let hex = self.b.get(self.pos..self.pos + 4)?;
                            let code = match hex {
                                [b'0', b'0', hi @ (b'0' | b'1'), lo] => {
                                    let lo = match lo {
                                        b'0'..=b'9' => lo - b'0',
                                        b'a'..=b'f' => lo - b'a' + 10,
                                        _ => return None,
                                    };
                                    (hi - b'0') << 4 | lo
                                }
                                _ => return None,
                            };
                            if matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return None;
                            }
                            self.pos += 4;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // raw control character
            }
        }
    }

    fn number(&mut self) -> bool {
        let start = self.pos;
        let len = self.b[start..]
            .iter()
            .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
            .unwrap_or(self.b.len() - start);
        self.pos += len;
        let token = &self.b[start..self.pos];
        // The canonical spelling is unique and is valid JSON, so comparing
        // with it also checks the grammar.
        let Some(n) = std::str::from_utf8(token)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|n| n.is_finite())
        else {
            return false;
        };
        let mut expected = Vec::with_capacity(24);
        write_number(n, &mut expected);
        expected == token
    }
}

/// Strict UTF-16 order of two raw canonical keys.
fn raw_key_less(a: &[u8], b: &[u8]) -> bool {
    let decode = |raw: &[u8]| -> Option<String> {
        if raw.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            json::parse_with(&quoted, Mode::Verify, 1)
                .ok()?
                .as_str()
                .map(str::to_owned)
        } else {
            std::str::from_utf8(raw).ok().map(str::to_owned)
        }
    };
    if !a.contains(&b'\\') && !b.contains(&b'\\') {
        // Both are valid UTF-8 (the whole input was checked).
        return match (std::str::from_utf8(a), std::str::from_utf8(b)) {
            (Ok(a), Ok(b)) => utf16_cmp(a, b) == Ordering::Less,
            _ => false,
        };
    }
    match (decode(a), decode(b)) {
        (Some(a), Some(b)) => utf16_cmp(&a, &b) == Ordering::Less,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let got = canonicalize(input.as_bytes(), Mode::Verify).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), expected, "input {input}");
    }

    #[test]
    fn numbers_use_ecmascript_shortest_form() {
        check("[-0.0]", "[0]");
        check("[1e21]", "[1e+21]");
        check("[1e20]", "[100000000000000000000]");
        check("[1e-7]", "[1e-7]");
        check("[0.000001]", "[0.000001]");
        check("[5e-324]", "[5e-324]");
        check("[123e-2]", "[1.23]");
    }

    #[test]
    fn strings_escape_only_what_jcs_escapes() {
        check(r#"["\u001f\u007f\u2028/"]"#, "[\"\\u001f\u{7f}\u{2028}/\"]");
        check(r#"["\b\f\n\r\t\"\\"]"#, r#"["\b\f\n\r\t\"\\"]"#);
    }

    #[test]
    fn keys_sort_by_utf16_units() {
        // U+1F600 is D83D DE00 in UTF-16, below U+FB33; in UTF-8 it is above.
        check(
            "{\"\u{fb33}\":1,\"\u{1f600}\":2}",
            "{\"\u{1f600}\":2,\"\u{fb33}\":1}",
        );
        assert_eq!(utf16_cmp("a", "ab"), Ordering::Less);
        assert_eq!(utf16_cmp("B", "a"), Ordering::Less);
        assert_eq!(utf16_cmp("", ""), Ordering::Equal);
    }
}
