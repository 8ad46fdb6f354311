//! JSON bytes as Go's `json.MarshalIndent(v, "", "  ")` writes them: two-space indent,
//! `": "`, and `<`, `>`, `&`, U+2028, U+2029 escaped as `\u003c` and so on.
//! Field order comes from the serde structs; map order from `BTreeMap` (bytewise, as Go).

use std::io;

use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

struct GoFormatter<'a>(PrettyFormatter<'a>);

impl Formatter for GoFormatter<'_> {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // U+2028 and U+2029 are E2 80 A8/A9 in UTF-8; the others are ASCII.
        let needs = |b: &u8| matches!(b, b'<' | b'>' | b'&' | 0xE2);
        if !fragment.as_bytes().iter().any(needs) {
            return w.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escaped = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            w.write_all(&fragment.as_bytes()[start..i])?;
            w.write_all(escaped.as_bytes())?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serializes `value` like Go's `json.MarshalIndent(value, "", "  ")` (no trailing newline).
pub fn marshal_indent<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        GoFormatter(PrettyFormatter::with_indent(b"  ")),
    );
    value
        .serialize(&mut ser)
        .expect("serializing plain data into memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn escapes_like_go() {
        let v: BTreeMap<&str, &str> = [("a<b", "x&y>z\u{2028}\n\"")].into_iter().collect();
        assert_eq!(
            marshal_indent(&v),
            "{\n  \"a\\u003cb\": \"x\\u0026y\\u003ez\\u2028\\n\\\"\"\n}"
        );
    }

    #[test]
    fn empty_collections_and_nesting() {
        let v = serde_json::json!({"a": [], "b": {}, "c": [{"d": 1}]});
        assert_eq!(
            marshal_indent(&v),
            "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    {\n      \"d\": 1\n    }\n  ]\n}"
        );
    }
}
