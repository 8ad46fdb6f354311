//! `sigstore-registries.yaml` for containers-registries.d(5), byte-compatible with
//! MCO's ghodss/yaml (yaml.v2) output: natural key order, `*` keys single-quoted.

use std::cmp::Ordering;
use std::sync::LazyLock;

use regex::Regex;

static HEX_FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+$")
        .unwrap()
});

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
        out.push_str("  ");
        out.push_str(&yaml_key(key));
        out.push_str(":\n    use-sigstore-attachments: true\n");
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
    serde_yaml::from_str::<Doc>(text)
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

/// A mapping key as yaml.v2 emits it: plain where possible, single-quoted where the
/// emitter refuses plain (a leading `*` alias indicator), double-quoted where the
/// plain form would read back as a number.
fn yaml_key(key: &str) -> String {
    if resolves_as_number(key) {
        format!("\"{key}\"")
    } else if key.starts_with('*') {
        format!("'{key}'")
    } else {
        key.to_string()
    }
}

/// yaml.v2's resolver: a plain scalar starting with a digit, sign or dot that Go's
/// `strconv.ParseInt(s, 0, 64)` or `ParseFloat(s, 64)` accepts (underscores removed).
fn resolves_as_number(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_digit() || matches!(first, '+' | '-' | '.')) {
        return false;
    }
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    let unsigned = plain.trim_start_matches(['+', '-']);
    let decimal = !unsigned.is_empty()
        && unsigned
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && plain.parse::<f64>().is_ok();
    decimal || HEX_FLOAT.is_match(&plain)
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

    #[test]
    fn numeric_looking_keys_are_double_quoted() {
        assert_eq!(yaml_key("123.456"), "\"123.456\"");
        assert_eq!(yaml_key("1.5e3"), "\"1.5e3\"");
        assert_eq!(yaml_key("0x1.8p1"), "\"0x1.8p1\"");
        assert_eq!(yaml_key("1.2.3.4"), "1.2.3.4");
        assert_eq!(yaml_key("10.0.0.1:5000/ns"), "10.0.0.1:5000/ns");
    }
}
