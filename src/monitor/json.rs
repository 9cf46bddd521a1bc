//! A tiny JSON writer into a reused `String`: objects, arrays, strings (escaped), integers,
//! booleans and null. Commas and colons are placed for the caller; nesting is up to 64 deep.
//!
//! ```
//! use mcrelay::monitor::json::JsonWriter;
//! let mut buf = String::new();
//! let mut w = JsonWriter::new(&mut buf);
//! w.begin_object();
//! w.field_u64("clients", 2);
//! w.key("names");
//! w.begin_array();
//! w.string("a\"b");
//! w.null();
//! w.end_array();
//! w.end_object();
//! assert!(w.is_complete());
//! assert_eq!(buf, r#"{"clients":2,"names":["a\"b",null]}"#);
//! ```

use std::fmt::Write as _;

/// Deepest nesting of objects and arrays.
pub const MAX_DEPTH: u32 = 64;

/// Writes one JSON value into a `String` (appending to what is there).
///
/// Misuse (a value where a key is due, an `end_*` that does not match, nesting past
/// [`MAX_DEPTH`]) is a bug in the caller: it panics in debug builds and writes invalid JSON
/// in release builds; it never writes outside the string.
#[derive(Debug)]
pub struct JsonWriter<'a> {
    out: &'a mut String,
    /// Bit d set: the container at depth d+1 already has an element (a comma is due).
    nonempty: u64,
    /// Bit d set: the container at depth d+1 is an object.
    objects: u64,
    depth: u32,
    /// A key was written; its value comes next (no comma).
    after_key: bool,
    /// A complete top-level value was written.
    done: bool,
}

impl<'a> JsonWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut String) -> JsonWriter<'a> {
        JsonWriter {
            out,
            nonempty: 0,
            objects: 0,
            depth: 0,
            after_key: false,
            done: false,
        }
    }

    /// Has exactly one complete value been written, with every container closed?
    pub fn is_complete(&self) -> bool {
        self.done && self.depth == 0 && !self.after_key
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && self.objects & (1 << (self.depth - 1)) != 0
    }

    /// Before any value: a comma if one is due.
    fn value_prefix(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        debug_assert!(!self.in_object(), "JSON value where an object key is due");
        debug_assert!(self.depth > 0 || !self.done, "second top-level JSON value");
        self.comma();
    }

    fn comma(&mut self) {
        if self.depth > 0 {
            let bit = 1 << (self.depth - 1);
            if self.nonempty & bit != 0 {
                self.out.push(',');
            }
            self.nonempty |= bit;
        }
    }

    fn value_done(&mut self) {
        if self.depth == 0 {
            self.done = true;
        }
    }

    fn open(&mut self, c: char, object: bool) {
        self.value_prefix();
        debug_assert!(
            self.depth < MAX_DEPTH,
            "JSON nested deeper than {MAX_DEPTH}"
        );
        if self.depth >= MAX_DEPTH {
            return;
        }
        self.out.push(c);
        let bit = 1u64 << self.depth;
        self.nonempty &= !bit;
        if object {
            self.objects |= bit;
        } else {
            self.objects &= !bit;
        }
        self.depth += 1;
    }

    fn close(&mut self, c: char, object: bool) {
        debug_assert!(
            self.depth > 0 && self.in_object() == object,
            "unbalanced JSON {c}"
        );
        debug_assert!(!self.after_key, "JSON object key without a value");
        if self.depth == 0 {
            return;
        }
        self.after_key = false;
        self.out.push(c);
        self.depth -= 1;
        self.value_done();
    }

    /// `{`
    pub fn begin_object(&mut self) {
        self.open('{', true);
    }

    /// `}`
    pub fn end_object(&mut self) {
        self.close('}', true);
    }

    /// `[`
    pub fn begin_array(&mut self) {
        self.open('[', false);
    }

    /// `]`
    pub fn end_array(&mut self) {
        self.close(']', false);
    }

    /// An object key; the next call writes its value.
    pub fn key(&mut self, k: &str) {
        debug_assert!(
            self.in_object() && !self.after_key,
            "JSON key outside an object"
        );
        self.comma();
        write_escaped(self.out, k);
        self.out.push(':');
        self.after_key = true;
    }

    /// A string value, escaped.
    pub fn string(&mut self, s: &str) {
        self.value_prefix();
        write_escaped(self.out, s);
        self.value_done();
    }

    /// An unsigned integer value.
    pub fn u64(&mut self, n: u64) {
        self.value_prefix();
        let _ = write!(self.out, "{n}");
        self.value_done();
    }

    /// A signed integer value.
    pub fn i64(&mut self, n: i64) {
        self.value_prefix();
        let _ = write!(self.out, "{n}");
        self.value_done();
    }

    /// `true` or `false`.
    pub fn bool(&mut self, b: bool) {
        self.value_prefix();
        self.out.push_str(if b { "true" } else { "false" });
        self.value_done();
    }

    /// `null`.
    pub fn null(&mut self) {
        self.value_prefix();
        self.out.push_str("null");
        self.value_done();
    }

    /// `"k": "v"` in an object.
    pub fn field_str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.string(v);
    }

    /// `"k": v` in an object.
    pub fn field_u64(&mut self, k: &str, v: u64) {
        self.key(k);
        self.u64(v);
    }

    /// `"k": v` in an object.
    pub fn field_i64(&mut self, k: &str, v: i64) {
        self.key(k);
        self.i64(v);
    }

    /// `"k": v` in an object.
    pub fn field_bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.bool(v);
    }
}

/// Append `s` as a JSON string literal: `"` and `\` escaped, control characters as `\n`,
/// `\r`, `\t`, `\b`, `\f` or `\u00XX`; U+2028 and U+2029 escaped too (so the text is also
/// valid JavaScript). Everything else is written as is (UTF-8).
pub fn write_escaped(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: &str = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            '\u{0}'..='\u{1f}' | '\u{2028}' | '\u{2029}' => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(esc);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        let mut out = String::new();
        write_escaped(&mut out, s);
        out
    }

    #[test]
    fn escaping() {
        assert_eq!(esc(""), r#""""#);
        assert_eq!(esc("plain é ✓"), "\"plain é ✓\"");
        assert_eq!(esc("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(esc("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(
            esc("\0\u{1}\u{1f}\u{7f}"),
            "\"\\u0000\\u0001\\u001f\u{7f}\""
        );
        assert_eq!(esc("x\u{2028}y\u{2029}"), r#""x\u2028y\u2029""#);
    }

    #[test]
    fn every_control_character_is_escaped() {
        for c in (0u32..0x20).filter_map(char::from_u32) {
            let e = esc(&c.to_string());
            assert!(
                e.len() > 3 && !e[1..e.len() - 1].chars().any(|c| c.is_control()),
                "{e:?}"
            );
        }
    }

    #[test]
    fn nesting_and_commas() {
        let mut buf = String::from("prefix kept: ");
        let mut w = JsonWriter::new(&mut buf);
        w.begin_object();
        w.field_u64("a", u64::MAX);
        w.field_i64("b", i64::MIN);
        w.field_bool("c", true);
        w.key("d");
        w.begin_array();
        w.begin_array();
        w.end_array();
        w.begin_object();
        w.end_object();
        w.bool(false);
        w.string("s");
        w.end_array();
        w.key("e\n");
        w.begin_object();
        w.field_str("f", "g");
        w.end_object();
        w.end_object();
        assert!(w.is_complete());
        assert_eq!(
            buf,
            "prefix kept: {\"a\":18446744073709551615,\"b\":-9223372036854775808,\"c\":true,\
             \"d\":[[],{},false,\"s\"],\"e\\n\":{\"f\":\"g\"}}"
        );
    }

    #[test]
    fn incomplete_values_are_reported() {
        let mut buf = String::new();
        let mut w = JsonWriter::new(&mut buf);
        assert!(!w.is_complete());
        w.begin_array();
        assert!(!w.is_complete());
        w.end_array();
        assert!(w.is_complete());
        let mut buf = String::new();
        let mut w = JsonWriter::new(&mut buf);
        w.u64(7);
        assert!(w.is_complete());
        assert_eq!(buf, "7");
    }

    #[test]
    fn deep_nesting_up_to_the_limit() {
        let mut buf = String::new();
        let mut w = JsonWriter::new(&mut buf);
        for _ in 0..MAX_DEPTH {
            w.begin_array();
        }
        for _ in 0..MAX_DEPTH {
            w.end_array();
        }
        assert!(w.is_complete());
        assert_eq!(buf.len(), 2 * MAX_DEPTH as usize);
    }
}
