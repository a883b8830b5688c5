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
            let mut entries: Vec<(&str, &Value)> = object.iter().collect();
            entries.sort_unstable_by(|a, b| utf16_cmp(a.0, b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write(item, out);
            }
            out.push(b'}');
        }
    }
}

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
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

fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
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
