//! RFC 8785 canonical JSON as the Go canonicalizer containers/image uses produces it
//! (`github.com/cyberphone/json-canonicalization` `jsoncanonicalizer.Transform` and
//! `es6numfmt.go`), byte for byte: the Rekor SET is a signature over these bytes, so a
//! canonicalizer that differs in one quirk would refuse what the node accepts. Its quirks
//! are kept: string bytes are copied raw (invalid UTF-8 included), keys sort by UTF-16
//! code units of Go's per-byte rune decoding, a key twice is an error, numbers go through
//! a float64.

use crate::gojson::decode_utf8;

/// `jsoncanonicalizer.Transform` on input Go's `encoding/json` already validated.
pub fn transform(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut c = Canonicalizer { data, pos: 0 };
    let out = if c.peek()? == b'[' {
        c.scan()?;
        c.array()?
    } else {
        c.expect(b'{')?;
        c.object()?
    };
    if data[c.pos..].iter().any(|b| !is_ws(*b)) {
        return Err("Improperly terminated JSON object".into());
    }
    Ok(out)
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

struct Canonicalizer<'a> {
    data: &'a [u8],
    pos: usize,
}

const ESCAPED: [(u8, u8); 7] = [
    (b'\\', b'\\'),
    (b'"', b'"'),
    (0x08, b'b'),
    (0x0c, b'f'),
    (b'\n', b'n'),
    (b'\r', b'r'),
    (b'\t', b't'),
];

impl Canonicalizer<'_> {
    fn next(&mut self) -> Result<u8, String> {
        let Some(&c) = self.data.get(self.pos) else {
            return Err("Unexpected EOF reached".into());
        };
        if c > 0x7f {
            return Err("Unexpected non-ASCII character".into());
        }
        self.pos += 1;
        Ok(c)
    }

    fn scan(&mut self) -> Result<u8, String> {
        loop {
            let c = self.next()?;
            if !is_ws(c) {
                return Ok(c);
            }
        }
    }

    fn peek(&mut self) -> Result<u8, String> {
        let save = self.pos;
        let c = self.scan();
        self.pos = save;
        c
    }

    fn expect(&mut self, want: u8) -> Result<(), String> {
        let c = self.scan()?;
        if c != want {
            return Err(format!(
                "Expected '{}' but got '{}'",
                want as char, c as char
            ));
        }
        Ok(())
    }

    fn u_escape(&mut self) -> Result<u32, String> {
        let start = self.pos;
        for _ in 0..4 {
            self.next()?;
        }
        let text = std::str::from_utf8(&self.data[start..self.pos]).map_err(|e| e.to_string())?;
        u32::from_str_radix(text, 16).map_err(|e| e.to_string())
    }

    /// The raw bytes of a string whose opening quote was read.
    fn quoted(&mut self) -> Result<Vec<u8>, String> {
        let mut raw = Vec::new();
        loop {
            let Some(&c) = self.data.get(self.pos) else {
                return Err("Unexpected EOF reached".into());
            };
            self.pos += 1;
            match c {
                b'"' => return Ok(raw),
                c if c < b' ' => return Err("Unterminated string literal".into()),
                b'\\' => self.escape(&mut raw)?,
                c => raw.push(c),
            }
        }
    }

    fn escape(&mut self, raw: &mut Vec<u8>) -> Result<(), String> {
        let c = self.next()?;
        if c == b'u' {
            let first = self.u_escape()?;
            let rune = if (0xD800..0xE000).contains(&first) {
                if self.next()? != b'\\' || self.next()? != b'u' {
                    return Err("Missing surrogate".into());
                }
                let second = self.u_escape()?;
                // `utf16.DecodeRune`: a valid pair or U+FFFD.
                if (0xD800..0xDC00).contains(&first) && (0xDC00..0xE000).contains(&second) {
                    char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
                } else {
                    None
                }
            } else {
                char::from_u32(first)
            };
            let rune = rune.unwrap_or('\u{FFFD}');
            raw.extend_from_slice(rune.encode_utf8(&mut [0; 4]).as_bytes());
            return Ok(());
        }
        if c == b'/' {
            raw.push(b'/');
            return Ok(());
        }
        match ESCAPED.iter().find(|(_, e)| *e == c) {
            Some((byte, _)) => {
                raw.push(*byte);
                Ok(())
            }
            None => Err(format!("Unexpected escape: \\{}", c as char)),
        }
    }

    fn element(&mut self) -> Result<Vec<u8>, String> {
        match self.scan()? {
            b'{' => self.object(),
            b'"' => Ok(decorate(&self.quoted()?)),
            b'[' => self.array(),
            _ => self.simple(),
        }
    }

    fn simple(&mut self) -> Result<Vec<u8>, String> {
        self.pos -= 1;
        let mut token = Vec::new();
        loop {
            if matches!(self.peek()?, b',' | b']' | b'}') {
                break;
            }
            let c = self.next()?;
            if is_ws(c) {
                break;
            }
            token.push(c);
        }
        if token.is_empty() {
            return Err("Missing argument".into());
        }
        let text = String::from_utf8_lossy(&token);
        if matches!(&*text, "true" | "false" | "null") {
            return Ok(token);
        }
        let value: f64 = text
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("strconv.ParseFloat: parsing {text:?}: value out of range"))?;
        number_to_json(value).map(String::into_bytes)
    }

    fn array(&mut self) -> Result<Vec<u8>, String> {
        let mut out = vec![b'['];
        let mut first = true;
        while self.peek()? != b']' {
            if !first {
                self.expect(b',')?;
                out.push(b',');
            }
            first = false;
            out.extend(self.element()?);
        }
        self.scan()?;
        out.push(b']');
        Ok(out)
    }

    fn object(&mut self) -> Result<Vec<u8>, String> {
        let mut members: Vec<(Vec<u16>, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut first = true;
        while self.peek()? != b'}' {
            if !first {
                self.expect(b',')?;
            }
            first = false;
            self.expect(b'"')?;
            let name = self.quoted()?;
            let key = utf16_key(&name);
            self.expect(b':')?;
            let value = self.element()?;
            if members.iter().any(|(k, _, _)| *k == key) {
                return Err(format!("Duplicate key: {}", String::from_utf8_lossy(&name)));
            }
            members.push((key, name, value));
        }
        self.scan()?;
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = vec![b'{'];
        for (i, (_, name, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend(decorate(name));
            out.push(b':');
            out.extend(value);
        }
        out.push(b'}');
        Ok(out)
    }
}

/// `utf16.Encode([]rune(name))`: Go's per-byte rune decoding, then UTF-16 code units.
fn utf16_key(name: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = name;
    while let Some(&b) = rest.first() {
        let (c, n) = if b < 0x80 {
            (b as char, 1)
        } else {
            decode_utf8(rest)
        };
        out.extend(c.encode_utf16(&mut [0; 2]).iter());
        rest = &rest[n..];
    }
    out
}

/// `decorateString`: the seven short escapes, `\u00xx` below 0x20, every other byte raw.
fn decorate(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &c in raw {
        if let Some((_, e)) = ESCAPED.iter().find(|(b, _)| *b == c) {
            out.extend([b'\\', *e]);
        } else if c < 0x20 {
            out.extend(format!("\\u{c:04x}").bytes());
        } else {
            out.push(c);
        }
    }
    out.push(b'"');
    out
}

/// `NumberToJSON`: ECMAScript's Number-to-String, from Go's shortest `FormatFloat`.
pub fn number_to_json(value: f64) -> Result<String, String> {
    if !value.is_finite() {
        return Err(format!("Invalid JSON number: {:x}", value.to_bits()));
    }
    if value == 0.0 {
        return Ok("0".into());
    }
    let sign = if value < 0.0 { "-" } else { "" };
    let magnitude = value.abs();
    // Rust's `{:e}` gives the same shortest round-trip digits as Go's precision -1.
    let sci = format!("{magnitude:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let body = if (1e-6..1e21).contains(&magnitude) {
        fixed(&digits, exponent)
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{}", exponent.abs())
    };
    Ok(format!("{sign}{body}"))
}

/// Digits `d1d2…dk` meaning `d1.d2…dk × 10^exponent`, written without an exponent.
fn fixed(digits: &str, exponent: i32) -> String {
    let k = digits.len() as i32;
    if exponent >= k - 1 {
        format!("{digits}{}", "0".repeat((exponent - (k - 1)) as usize))
    } else if exponent >= 0 {
        let (int, frac) = digits.split_at(exponent as usize + 1);
        format!("{int}.{frac}")
    } else {
        format!("0.{}{digits}", "0".repeat((-exponent - 1) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(input: &str) -> String {
        String::from_utf8(transform(input.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn numbers_as_es6_prints_them() {
        // Values from the canonicalizer's own es6 test table.
        for (value, want) in [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (123456789012345680000.0, "123456789012345680000"),
            (9007199254740993.0, "9007199254740992"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.1 + 0.2, "0.30000000000000004"),
            (333333333.3333333, "333333333.3333333"),
            (1.5e-5, "0.000015"),
        ] {
            assert_eq!(number_to_json(value).unwrap(), want, "{value:e}");
        }
        assert!(number_to_json(f64::INFINITY).is_err());
    }

    #[test]
    fn objects_sort_by_utf16_and_strings_keep_their_bytes() {
        assert_eq!(
            t(r#" {"b": [1.0, true, null, "x"], "a": {"d": 1e2, "c": -0}} "#),
            r#"{"a":{"c":0,"d":100},"b":[1,true,null,"x"]}"#
        );
        // U+1F600 (surrogates D83D DE00) sorts before U+FFFD in UTF-16, after it in UTF-8.
        assert_eq!(
            t("{\"\u{FFFD}\":1,\"\u{1F600}\":2}"),
            "{\"\u{1F600}\":2,\"\u{FFFD}\":1}"
        );
        assert_eq!(
            t(r#"{"a":"\u0041\/\n\u001f\ud83d\ude00\ud800\u0041"}"#),
            "{\"a\":\"A/\\n\\u001f\u{1F600}\u{FFFD}\"}"
        );
        assert_eq!(t("[\"\x7f\"]"), "[\"\x7f\"]");
        assert_eq!(transform(b"[\"\xff\"]").unwrap(), b"[\"\xff\"]");
    }

    #[test]
    fn errors_as_the_go_canonicalizer_reports_them() {
        for (input, why) in [
            (r#"{"a":1,"a":2}"#, "Duplicate key"),
            (r#""x""#, "Expected '{'"),
            (r#"{"a":1e999}"#, "ParseFloat"),
            (r#"{"a":"\ud800x"}"#, "Missing surrogate"),
            (r#"{} 1"#, "Improperly terminated"),
        ] {
            let e = transform(input.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{input}: {e}");
        }
    }
}
