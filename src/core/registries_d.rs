//! `sigstore-registries.yaml` for containers-registries.d(5), byte-compatible with
//! MCO's ghodss/yaml (JSON, then yaml.v2 v2.4.0) output: natural key order, keys quoted
//! exactly where yaml.v2 quotes them, and keys over 128 bytes in the complex-key form.

use std::cmp::Ordering;
use std::sync::LazyLock;

use regex::Regex;

/// yaml.v2's `yamlStyleFloat`: only this form of a plain scalar is tried as a float.
static YAML_STYLE_FLOAT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$").unwrap());

/// yaml.v2 encode.go's `base60float`: quoted although the resolver reads it as a string.
static BASE60_FLOAT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$").unwrap());

/// Longest key yaml.v2 writes as a simple key (`yaml_emitter_check_simple_key`).
const MAX_SIMPLE_KEY: usize = 128;

/// The registries.d document enabling sigstore attachments for every scope.
pub fn sigstore_registries_yaml<'a>(scopes: impl IntoIterator<Item = &'a str>) -> String {
    let mut keys: Vec<(Vec<char>, &str)> = scopes
        .into_iter()
        .map(|s| (s.chars().collect(), s))
        .collect();
    keys.sort_by(|a, b| natural_order(&a.0, &b.0));
    keys.dedup_by(|a, b| a.1 == b.1);
    let mut out = String::from("docker:\n");
    for (_, key) in keys {
        if key.len() > MAX_SIMPLE_KEY {
            // The emitter's complex key: `? key`, then the value after `: ` on the next
            // line at the key's indent, the nested mapping continuing on that line.
            out.push_str("  ? ");
            out.push_str(&yaml_key(key));
            out.push_str("\n  : use-sigstore-attachments: true\n");
        } else {
            out.push_str("  ");
            out.push_str(&yaml_key(key));
            out.push_str(":\n    use-sigstore-attachments: true\n");
        }
    }
    out
}

/// The scopes a registries.d document turns sigstore attachments on for (what the MCO's
/// own output carries, read back for the handover in [`crate::mco`]).
pub fn scopes(text: &str) -> std::collections::BTreeSet<String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        docker: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default, rename = "use-sigstore-attachments")]
        use_sigstore_attachments: bool,
    }
    serde_saphyr::from_str::<Doc>(text)
        .map(|d| {
            d.docker
                .into_iter()
                .filter(|(_, e)| e.use_sigstore_attachments)
                .map(|(k, _)| k)
                .collect()
        })
        .unwrap_or_default()
}

/// yaml.v2's `keyList.Less` for string keys: letters after non-letters, digit runs
/// compared by value, otherwise rune order.
fn natural_order(ar: &[char], br: &[char]) -> Ordering {
    let less = |x: &[char], y: &[char]| -> Option<bool> {
        for i in 0..x.len().min(y.len()) {
            if x[i] == y[i] {
                continue;
            }
            let (xl, yl) = (x[i].is_alphabetic(), y[i].is_alphabetic());
            if xl && yl {
                return Some(x[i] < y[i]);
            }
            if xl || yl {
                return Some(yl);
            }
            let (mut xn, mut yn) = (0i64, 0i64);
            if x[i] == '0' || y[i] == '0' {
                let mut j = i;
                while j > 0 && x[j - 1].is_ascii_digit() {
                    j -= 1;
                    if x[j] != '0' {
                        xn = 1;
                        yn = 1;
                        break;
                    }
                }
            }
            let mut xi = i;
            while xi < x.len() && x[xi].is_ascii_digit() {
                xn = xn.wrapping_mul(10).wrapping_add(x[xi] as i64 - '0' as i64);
                xi += 1;
            }
            let mut yi = i;
            while yi < y.len() && y[yi].is_ascii_digit() {
                yn = yn.wrapping_mul(10).wrapping_add(y[yi] as i64 - '0' as i64);
                yi += 1;
            }
            if xn != yn {
                return Some(xn < yn);
            }
            if xi != yi {
                return Some(xi < yi);
            }
            return Some(x[i] < y[i]);
        }
        None
    };
    match less(ar, br) {
        Some(true) => Ordering::Less,
        Some(false) => match less(br, ar) {
            Some(true) => Ordering::Greater,
            _ => Ordering::Equal,
        },
        None => ar.len().cmp(&br.len()),
    }
}

/// A mapping key as yaml.v2 emits a string: double-quoted where the plain form would
/// resolve to something other than a string (`encoder.stringv`), single-quoted where the
/// emitter refuses plain (a leading `*` alias indicator), plain otherwise.
fn yaml_key(key: &str) -> String {
    if !resolves_as_string(key) || BASE60_FLOAT.is_match(key) {
        format!("\"{key}\"")
    } else if key.starts_with('*') {
        format!("'{key}'")
    } else {
        key.to_string()
    }
}

/// yaml.v2 v2.4.0 `resolve("", s)` yields `!!str`. Scope and mirror grammars leave only the
/// numeric and date forms reachable; the word forms (`yes`, `null`, `.inf`…) are kept so
/// the function says what yaml.v2 says for any string.
pub(crate) fn resolves_as_string(s: &str) -> bool {
    const WORDS: [&str; 35] = [
        "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "n", "N", "no",
        "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", "", "~", "null", "Null",
        "NULL", ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "<<", "-.inf",
    ];
    if WORDS.contains(&s) || matches!(s, "+.inf" | "+.Inf" | "+.INF" | "-.Inf" | "-.INF") {
        return false;
    }
    match s.as_bytes().first() {
        // Go's ParseFloat on the text as is.
        Some(b'.') => !go_parse_float(s),
        Some(b'0'..=b'9' | b'+' | b'-') => {
            if is_timestamp(s) {
                return false;
            }
            let plain: String = s.chars().filter(|&c| c != '_').collect();
            let number = go_parse_int(&plain)
                || (YAML_STYLE_FLOAT.is_match(&plain) && go_parse_float(&plain))
                || plain
                    .strip_prefix("0b")
                    .or_else(|| plain.strip_prefix("-0b"))
                    .is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c == b'0' || c == b'1'));
            !number
        }
        _ => true,
    }
}

/// `strconv.ParseInt(s, 0, 64)` or `ParseUint` succeeds: sign, then `0x`/`0o`/`0b` or a
/// leading `0` (octal) or decimal digits, within 64 bits.
fn go_parse_int(s: &str) -> bool {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(b) = lower.strip_prefix("0x") {
        (16, b)
    } else if let Some(b) = lower.strip_prefix("0o") {
        (8, b)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if body.is_empty() {
        return false;
    }
    match u64::from_str_radix(body, radix) {
        Ok(v) if negative => v <= i64::MAX as u64 + 1,
        Ok(_) => true,
        Err(_) => false,
    }
}

/// `strconv.ParseFloat(s, 64)` succeeds for the decimal forms reachable here; an overflow
/// to infinity is an error in Go.
fn go_parse_float(s: &str) -> bool {
    s.parse::<f64>().is_ok_and(f64::is_finite)
}

/// yaml.v2's `parseTimestamp` for the date-only form (`2006-1-2`); the forms with a time
/// need a space or a `t`/`T` followed by `15:4:5`, which no scope or mirror can hold.
fn is_timestamp(s: &str) -> bool {
    let mut parts = s.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let digits = |p: &str, min: usize, max: usize| {
        (min..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
    };
    if !(digits(y, 4, 4) && digits(m, 1, 2) && digits(d, 1, 2)) {
        return false;
    }
    let (year, month, day): (u32, u32, u32) = (
        y.parse().unwrap_or(0),
        m.parse().unwrap_or(0),
        d.parse().unwrap_or(0),
    );
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml_v2_key_order(a: &str, b: &str) -> Ordering {
        let (ar, br): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        natural_order(&ar, &br)
    }

    #[test]
    fn scopes_read_back() {
        let yaml = sigstore_registries_yaml(["*.example.com", "123.456", "a.io/x"]);
        let read: Vec<String> = scopes(&yaml).into_iter().collect();
        assert_eq!(read, ["*.example.com", "123.456", "a.io/x"]);
        assert!(scopes("docker:\n  a.io:\n    use-sigstore-attachments: false\n").is_empty());
        assert!(scopes("not: [yaml").is_empty());
    }

    #[test]
    fn tv5_exact_bytes() {
        assert_eq!(
            sigstore_registries_yaml(["test1.com", "test0.com"]),
            "docker:\n  test0.com:\n    use-sigstore-attachments: true\n  test1.com:\n    use-sigstore-attachments: true\n"
        );
    }

    #[test]
    fn tv6_key_order_and_quoting() {
        let keys = [
            "policy.scope",
            "a.com/a1/a2@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "a-a1-a2.mirror/a1/a2",
            "foo.example.com/ns/repo",
            "a.com/a1/a2/a3-1",
            "*.example.com",
            "a-a1-a2-a3.mirror/m1/m2/m3",
            "a.com/a1/a2/a3",
            "a-a1-a2-a3-1.mirror/m1/m2/m3",
            "a.com/a1/a2",
        ];
        let yaml = sigstore_registries_yaml(keys);
        let order: Vec<&str> = yaml
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
            .map(|l| l.trim().trim_end_matches(':'))
            .collect();
        assert_eq!(
            order,
            [
                "'*.example.com'",
                "a-a1-a2-a3-1.mirror/m1/m2/m3",
                "a-a1-a2-a3.mirror/m1/m2/m3",
                "a-a1-a2.mirror/a1/a2",
                "a.com/a1/a2",
                "a.com/a1/a2/a3",
                "a.com/a1/a2/a3-1",
                "a.com/a1/a2@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "foo.example.com/ns/repo",
                "policy.scope",
            ]
        );
    }

    #[test]
    fn digit_runs_compare_numerically() {
        assert_eq!(yaml_v2_key_order("test2.com", "test10.com"), Ordering::Less);
        assert_eq!(
            yaml_v2_key_order("test10.com", "test2.com"),
            Ordering::Greater
        );
        assert_eq!(yaml_v2_key_order("a.com", "a.com"), Ordering::Equal);
    }

    /// yaml.v2 v2.4.0 tries a float only in the `yamlStyleFloat` form: Go's hex floats
    /// (`0x1.8p1`), which other resolvers read as numbers, stay plain strings.
    #[test]
    fn keys_are_quoted_exactly_where_yaml_v2_quotes_them() {
        assert_eq!(yaml_key("123.456"), "\"123.456\"");
        assert_eq!(yaml_key("1.5e3"), "\"1.5e3\"");
        assert_eq!(yaml_key("1.5E-3"), "\"1.5E-3\"");
        assert_eq!(yaml_key("0x1.8p1"), "0x1.8p1");
        assert_eq!(yaml_key("0x1f.com"), "0x1f.com");
        assert_eq!(yaml_key("1.2.3.4"), "1.2.3.4");
        assert_eq!(yaml_key("10.0.0.1:5000/ns"), "10.0.0.1:5000/ns");
        // Past f64's range Go's ParseFloat fails: a string.
        assert_eq!(yaml_key("1.5e999"), "1.5e999");
        assert_eq!(yaml_key("0x1f"), "\"0x1f\"");
        assert_eq!(yaml_key("0b101"), "\"0b101\"");
        assert_eq!(yaml_key("0777"), "\"0777\"");
        assert_eq!(yaml_key("2024-2-29"), "\"2024-2-29\"");
        assert_eq!(yaml_key("2023-2-29"), "2023-2-29");
        assert_eq!(yaml_key("1:20"), "\"1:20\"");
        assert_eq!(yaml_key("yes"), "\"yes\"");
        assert_eq!(yaml_key("*.example.com"), "'*.example.com'");
    }

    /// yaml.v2 writes a key longer than 128 bytes as a complex key.
    #[test]
    fn long_keys_take_the_complex_form() {
        let long = format!("registry.example.com/{}", "a".repeat(108));
        assert_eq!(long.len(), 129);
        let just = &long[..128];
        let yaml = sigstore_registries_yaml([long.as_str(), just]);
        assert_eq!(
            yaml,
            format!("docker:\n  {just}:\n    use-sigstore-attachments: true\n  ? {long}\n  : use-sigstore-attachments: true\n")
        );
        assert_eq!(
            scopes(&yaml).into_iter().collect::<Vec<_>>(),
            [just.to_string(), long.clone()]
        );
    }
}
