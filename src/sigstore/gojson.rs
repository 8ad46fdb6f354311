//! JSON read as Go's `encoding/json` reads it, for the paranoid payload parse
//! (containers/image `signature/internal/json.go`): the whole text validated first
//! (`checkValid`: only whitespace after the value, at most 10,000 levels), strings unquoted
//! with invalid UTF-8 and lone surrogates turned into U+FFFD, object members kept in order
//! and with duplicates (Go's tokenizer sees them; a map would hide them), numbers kept as
//! text so that each target decides what it accepts.

/// A JSON value as Go's decoder tokenizes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The literal, as written.
    Number(String),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
    /// An array or object nested deeper than the payload parse ever looks, validated
    /// without recursion: whether every number in it fits a float64.
    Nested {
        object: bool,
        numbers_fit: bool,
    },
}

/// Containers nested deeper than this are validated, not kept.
const TREE_DEPTH: usize = 8;

/// Go's scanner limit on nesting (`maxNestingDepth`).
const MAX_DEPTH: usize = 10_000;

/// `json.Unmarshal`'s validation and tokenization of a whole document.
pub fn parse(data: &[u8]) -> Result<Value, String> {
    let mut p = Parser { data, pos: 0 };
    p.skip_ws();
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos < data.len() {
        return Err(format!(
            "invalid character {} after top-level value",
            quote_char(data[p.pos])
        ));
    }
    Ok(value)
}

/// The members of a valid top-level object with each value's bytes as written (what a
/// `json.RawMessage` field keeps).
pub fn raw_members(data: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    parse(data)?;
    let mut p = Parser { data, pos: 0 };
    p.skip_ws();
    if data.get(p.pos) != Some(&b'{') {
        return Err("JSON object expected".into());
    }
    p.pos += 1;
    p.skip_ws();
    let mut out = Vec::new();
    while data.get(p.pos) != Some(&b'}') {
        p.skip_ws();
        let key = p.member_key()?;
        p.skip_ws();
        let start = p.pos;
        p.value(0)?;
        out.push((key, &data[start..p.pos]));
        p.skip_ws();
        if data.get(p.pos) == Some(&b',') {
            p.pos += 1;
        }
    }
    Ok(out)
}

/// `json.Unmarshal` into a Go struct (the lenient decoder, not the paranoid parse): each
/// member goes to the field named exactly so or equal under Go's case folding, others are
/// skipped; for each field, every value given to it in document order (the last wins;
/// objects for one struct field merge). `null` for the struct leaves it empty.
pub fn loose_fields<'a>(value: &'a Value, names: &[&str]) -> Result<Vec<Vec<&'a Value>>, String> {
    let mut out = vec![Vec::new(); names.len()];
    let members = match value {
        Value::Null => return Ok(out),
        Value::Object(members) => members,
        other => return Err(type_error(other, "struct", "")),
    };
    for (key, v) in members {
        let field = names
            .iter()
            .position(|n| n == key)
            .or_else(|| names.iter().position(|n| go_fold(n) == go_fold(key)));
        if let Some(i) = field {
            out[i].push(v);
        }
    }
    Ok(out)
}

/// A pointer-to-struct field: `null` resets it, objects merge into it.
pub fn loose_struct(values: &[&Value]) -> Result<Option<Value>, String> {
    let mut merged: Option<Vec<(String, Value)>> = None;
    for v in values {
        match v {
            Value::Null => merged = None,
            Value::Object(members) => merged
                .get_or_insert_with(Vec::new)
                .extend(members.iter().cloned()),
            other => return Err(type_error(other, "struct", "")),
        }
    }
    Ok(merged.map(Value::Object))
}

/// A `*string` field: `null` resets it.
pub fn loose_string(values: &[&Value]) -> Result<Option<String>, String> {
    let mut out = None;
    for v in values {
        match v {
            Value::Null => out = None,
            Value::String(s) => out = Some(s.clone()),
            other => return Err(type_error(other, "string", "")),
        }
    }
    Ok(out)
}

/// Go's `foldName` on the runes that can fold to ASCII letters: ASCII case, the Kelvin
/// sign (K) and the long s (S).
fn go_fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{212A}' => 'K',
            '\u{017F}' => 'S',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Go's `base64.StdEncoding.DecodeString`: padding required, `\r` and `\n` skipped,
/// non-zero trailing bits accepted.
pub fn decode_go_std_base64(text: &str) -> Result<Vec<u8>, String> {
    let clean: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    cip_core::policy::decode_b64(&clean).map_err(|e| match e {
        base64::DecodeError::InvalidByte(at, _) | base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!("illegal base64 data at input byte {at}")
        }
        _ => format!("illegal base64 data at input byte {}", clean.len()),
    })
}

/// Go's `quoteChar` for error texts.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".to_string(),
        b'"' => r#"'"'"#.to_string(),
        c if c.is_ascii_graphic() || c == b' ' => format!("'{}'", c as char),
        c => format!("'\\x{c:02x}'"),
    }
}

struct Parser<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.data.get(self.pos), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn unexpected(&self, context: &str) -> String {
        match self.data.get(self.pos) {
            None => "unexpected end of JSON input".to_string(),
            Some(&c) => format!("invalid character {} {context}", quote_char(c)),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        match self.data.get(self.pos) {
            Some(b'{' | b'[') if depth >= TREE_DEPTH => self.nested(depth),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            _ => Err(self.unexpected("looking for beginning of value")),
        }
    }

    /// A deep array or object, scanned with an explicit stack (a hostile payload may nest
    /// 10,000 levels; recursion would overflow the stack first).
    fn nested(&mut self, depth: usize) -> Result<Value, String> {
        let object = self.data[self.pos] == b'{';
        let mut closers: Vec<u8> = Vec::new();
        let mut numbers_fit = true;
        loop {
            // A value is expected here.
            self.skip_ws();
            let opened = match self.data.get(self.pos) {
                Some(&c @ (b'{' | b'[')) => {
                    if depth + closers.len() + 1 > MAX_DEPTH {
                        return Err("exceeded max depth".into());
                    }
                    self.pos += 1;
                    closers.push(if c == b'{' { b'}' } else { b']' });
                    self.skip_ws();
                    if self.data.get(self.pos) == closers.last() {
                        self.pos += 1;
                        closers.pop();
                        false
                    } else {
                        if c == b'{' {
                            self.member_key()?;
                        }
                        true
                    }
                }
                _ => {
                    if let Value::Number(n) = self.value(0)? {
                        numbers_fit &= parse_float(&n).is_ok();
                    }
                    false
                }
            };
            if opened {
                continue;
            }
            // After a value: separators and closers until the next value or the end.
            loop {
                let Some(&closer) = closers.last() else {
                    return Ok(Value::Nested {
                        object,
                        numbers_fit,
                    });
                };
                self.skip_ws();
                match self.data.get(self.pos) {
                    Some(b',') => {
                        self.pos += 1;
                        if closer == b'}' {
                            self.skip_ws();
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(&c) if c == closer => {
                        self.pos += 1;
                        closers.pop();
                    }
                    _ if closer == b'}' => {
                        return Err(self.unexpected("after object key:value pair"))
                    }
                    _ => return Err(self.unexpected("after array element")),
                }
            }
        }
    }

    /// `"key" :` inside an object.
    fn member_key(&mut self) -> Result<String, String> {
        if self.data.get(self.pos) != Some(&b'"') {
            return Err(self.unexpected("looking for beginning of object key string"));
        }
        let key = self.string()?;
        self.skip_ws();
        if self.data.get(self.pos) != Some(&b':') {
            return Err(self.unexpected("after object key"));
        }
        self.pos += 1;
        Ok(key)
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, String> {
        for &expected in word {
            if self.data.get(self.pos) != Some(&expected) {
                return Err(self.unexpected("in literal"));
            }
            self.pos += 1;
        }
        Ok(value)
    }

    fn object(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("exceeded max depth".into());
        }
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_ws();
        if self.data.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            let key = self.member_key()?;
            self.skip_ws();
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_ws();
            match self.data.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.unexpected("after object key:value pair")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("exceeded max depth".into());
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.data.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.data.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.unexpected("after array element")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.pos;
        let digits = |p: &mut Parser| {
            let s = p.pos;
            while matches!(p.data.get(p.pos), Some(b'0'..=b'9')) {
                p.pos += 1;
            }
            p.pos > s
        };
        if self.data[self.pos] == b'-' {
            self.pos += 1;
        }
        match self.data.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.unexpected("in numeric literal")),
        }
        if self.data.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !digits(self) {
                return Err(self.unexpected("after decimal point in numeric literal"));
            }
        }
        if matches!(self.data.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.data.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !digits(self) {
                return Err(self.unexpected("in exponent of numeric literal"));
            }
        }
        let text = std::str::from_utf8(&self.data[start..self.pos]).unwrap_or_default();
        Ok(Value::Number(text.to_string()))
    }

    /// A string literal, unquoted as Go's `unquoteBytes` does.
    fn string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&c) = self.data.get(self.pos) else {
                return Err("unexpected end of JSON input".into());
            };
            match c {
                b'"' => {
                    self.pos += 1;
                    return Ok(String::from_utf8(out).unwrap_or_default());
                }
                b'\\' => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                c if c < 0x20 => return Err(self.unexpected("in string literal")),
                c if c < 0x80 => {
                    out.push(c);
                    self.pos += 1;
                }
                _ => {
                    let (ch, len) = decode_utf8(&self.data[self.pos..]);
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    self.pos += len;
                }
            }
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let Some(&c) = self.data.get(self.pos) else {
            return Err("unexpected end of JSON input".into());
        };
        self.pos += 1;
        let simple = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let ch = self.unicode_escape()?;
                let mut buf = [0; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            _ => {
                self.pos -= 1;
                return Err(self.unexpected("in string escape code"));
            }
        };
        out.push(simple);
        Ok(())
    }

    /// `\uXXXX`, joined with a following low surrogate escape when it is a high one;
    /// anything that is not a valid pair is U+FFFD (Go's `unquoteBytes`).
    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        if !(0xD800..0xE000).contains(&first) {
            return Ok(char::from_u32(first).unwrap_or('\u{FFFD}'));
        }
        if first < 0xDC00 && self.data[self.pos..].starts_with(b"\\u") {
            let save = self.pos;
            self.pos += 2;
            let second = self.hex4()?;
            if (0xDC00..0xE000).contains(&second) {
                let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                return Ok(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            // Go writes U+FFFD for the lone high surrogate and reads the next escape anew.
            self.pos = save;
        }
        Ok('\u{FFFD}')
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let mut value = 0;
        for _ in 0..4 {
            let Some(&c) = self.data.get(self.pos) else {
                return Err("unexpected end of JSON input".into());
            };
            let digit = (c as char)
                .to_digit(16)
                .ok_or_else(|| self.unexpected("in \\u hexadecimal character escape"))?;
            value = value * 16 + digit;
            self.pos += 1;
        }
        Ok(value)
    }
}

/// One character of possibly invalid UTF-8, as Go's `utf8.DecodeRune` reads it: an
/// invalid sequence is U+FFFD consuming one byte.
pub(crate) fn decode_utf8(bytes: &[u8]) -> (char, usize) {
    let len = match bytes[0] {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return ('\u{FFFD}', 1),
    };
    match bytes.get(..len).map(std::str::from_utf8) {
        Some(Ok(s)) => (s.chars().next().unwrap_or('\u{FFFD}'), len),
        _ => ('\u{FFFD}', 1),
    }
}

impl Value {
    /// Decoding into a Go `string`: a string, or `null` leaving the target as it was.
    pub fn go_string(&self, field: &str) -> Result<Option<&str>, String> {
        match self {
            Value::String(s) => Ok(Some(s)),
            Value::Null => Ok(None),
            other => Err(type_error(other, "string", field)),
        }
    }

    /// Decoding into a Go `float64`: a number in range, or `null` leaving the target as it was.
    pub fn go_float(&self, field: &str) -> Result<Option<f64>, String> {
        match self {
            Value::Number(text) => parse_float(text).map(Some),
            Value::Null => Ok(None),
            other => Err(type_error(other, "float64", field)),
        }
    }

    /// Decoding into a Go `any`: every number must fit a float64.
    pub fn go_any(&self) -> Result<(), String> {
        match self {
            Value::Number(text) => parse_float(text).map(drop),
            Value::Array(items) => items.iter().try_for_each(Value::go_any),
            Value::Object(members) => members.iter().try_for_each(|(_, v)| v.go_any()),
            Value::Nested {
                numbers_fit: false, ..
            } => Err("json: cannot unmarshal number into Go value of type float64".into()),
            _ => Ok(()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) | Value::Nested { object: true, .. } => "object",
            Value::Nested { .. } => "array",
        }
    }
}

/// `strconv.ParseFloat(s, 64)` on a valid JSON number: overflow is an error, underflow
/// is zero.
fn parse_float(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        _ => Err(format!(
            "json: cannot unmarshal number {text} into Go value of type float64"
        )),
    }
}

fn type_error(value: &Value, go_type: &str, field: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go value of type {go_type} (field {field})",
        value.kind()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_as_go() {
        assert!(parse(b" {\"a\": [1, 2.5e3, -0, true, null]} \n").is_ok());
        for (bad, why) in [
            (&b"{} x"[..], "invalid character 'x' after top-level value"),
            (
                b"{\"a\":01}",
                "invalid character '1' after object key:value pair",
            ),
            (b"{\"a\":1.}", "after decimal point"),
            (b"\"a\x01\"", "in string literal"),
            (b"\"\\x\"", "in string escape code"),
            (b"{\"a\":1", "unexpected end of JSON input"),
            (b"", "unexpected end of JSON input"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{:?}: {e}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "[".repeat(10_001), "]".repeat(10_001));
        assert_eq!(parse(deep.as_bytes()).unwrap_err(), "exceeded max depth");
        let ok = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(ok.as_bytes()).is_ok());
        let deep_objects = format!("{}1{}", "{\"a\":[".repeat(4_000), "]}".repeat(4_000));
        assert!(parse(deep_objects.as_bytes()).unwrap().go_any().is_ok());
        let deep_big = format!("{}1e999{}", "{\"a\":[".repeat(20), "]}".repeat(20));
        assert!(parse(deep_big.as_bytes()).unwrap().go_any().is_err());
        let broken = format!("{}1,{}", "{\"a\":[".repeat(20), "]}".repeat(20));
        assert!(parse(broken.as_bytes()).is_err());
    }

    #[test]
    fn strings_as_go_unquotes_them() {
        let s = |text: &[u8]| match parse(text).unwrap() {
            Value::String(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(s(b"\"a\xffb\""), "a\u{FFFD}b");
        assert_eq!(s(b"\"\\ud800\""), "\u{FFFD}");
        assert_eq!(s(b"\"\\ud83d\\ude00\""), "\u{1F600}");
        assert_eq!(s(b"\"\\ud800\\u0041\""), "\u{FFFD}A");
        assert_eq!(s(b"\"\\udc00\""), "\u{FFFD}");
        assert_eq!(s("\"é\"".as_bytes()), "é");
        assert_eq!(s(b"\"\xed\xa0\x80\""), "\u{FFFD}\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn numbers_as_go_decodes_them() {
        assert!(Value::Number("1e400".into()).go_float("t").is_err());
        assert_eq!(Value::Number("1e-400".into()).go_float("t"), Ok(Some(0.0)));
        assert_eq!(Value::Null.go_float("t"), Ok(None));
        assert!(Value::String("1".into()).go_float("t").is_err());
        assert!(parse(b"{\"x\":[1e999]}").unwrap().go_any().is_err());
    }
}
