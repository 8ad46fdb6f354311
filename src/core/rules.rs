//! Field-level predicates of the CRD's CEL rules, with the semantics of the Go
//! functions the API server runs (RE2 `\S`, `url.ParseRequestURI`, DNS-1123).

use std::sync::LazyLock;

use regex::Regex;

/// E1: `^\S+@\S+$` where RE2's `\s` is `[\t\n\f\r ]`.
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[^\t\n\f\r ]+@[^\t\n\f\r ]+$").unwrap());

static DNS1123_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap()
});

pub fn is_email(s: &str) -> bool {
    EMAIL.is_match(s)
}

/// H1: a DNS-1123 subdomain, optionally prefixed by `*.` (only the first is stripped).
pub fn is_pki_hostname(s: &str) -> bool {
    let host = s.strip_prefix("*.").unwrap_or(s);
    host.len() <= 253 && DNS1123_SUBDOMAIN.is_match(host)
}

/// The PEM marker rules (K1/K2, R1/R2, C1/C2, CR1–CR3, CI1–CI3) on decoded bytes:
/// returns (starts with BEGIN, ends with END plus at most one `\n`, BEGIN/END counts equal).
pub fn pem_markers(text: &str, label: &str) -> (bool, bool, bool) {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let starts = text.starts_with(&begin);
    let ends = text.strip_suffix('\n').unwrap_or(text).ends_with(&end);
    let balanced = text.matches(&begin).count() == text.matches(&end).count();
    (starts, ends, balanced)
}

/// Go's `url.ParseRequestURI(s) == nil`: an absolute URI or an absolute path.
pub fn is_request_uri(s: &str) -> bool {
    if s.is_empty() || s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return false;
    }
    if s == "*" {
        return true;
    }
    let (scheme, rest) = match split_scheme(s) {
        Ok(parts) => parts,
        Err(()) => return false,
    };
    let rest = rest.split_once('?').map_or(rest, |(path, _query)| path);
    if !rest.starts_with('/') {
        // Rootless paths after a scheme are opaque (`mailto:x`); without one, invalid.
        return scheme.is_some();
    }
    let path = if scheme.is_some() && rest.starts_with("//") {
        let after = &rest[2..];
        let (authority, path) = after.find('/').map_or((after, ""), |i| after.split_at(i));
        if !valid_authority(authority) {
            return false;
        }
        path
    } else {
        rest
    };
    valid_escapes(path, false)
}

/// Go's `getScheme`: `Ok((None, s))` when there is no scheme, `Err` for a leading `:`.
fn split_scheme(s: &str) -> Result<(Option<&str>, &str), ()> {
    for (i, c) in s.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' => {}
            '0'..='9' | '+' | '-' | '.' if i > 0 => {}
            ':' if i == 0 => return Err(()),
            ':' => return Ok((Some(&s[..i]), &s[i + 1..])),
            _ => return Ok((None, s)),
        }
    }
    Ok((None, s))
}

fn valid_authority(authority: &str) -> bool {
    let host = match authority.rfind('@') {
        Some(i) => {
            let userinfo = &authority[..i];
            let ok = userinfo.chars().all(|c| {
                c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c) || !c.is_ascii()
            });
            if !ok || !valid_escapes(userinfo, false) {
                return false;
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    valid_host(host)
}

fn valid_host(host: &str) -> bool {
    let port_ok = |p: &str| {
        p.is_empty() || (p.starts_with(':') && p[1..].bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(v6) = host.strip_prefix('[') {
        return v6.find(']').is_some_and(|close| port_ok(&v6[close + 1..]));
    }
    if host.rfind(':').is_some_and(|i| !port_ok(&host[i..])) {
        return false;
    }
    let chars_ok = host.chars().all(|c| {
        !c.is_ascii() || c.is_ascii_alphanumeric() || "-_.~!$&'()*+,;=:[]<>\"%".contains(c)
    });
    chars_ok && valid_escapes(host, true)
}

/// `%XX` sequences must be hex; in a host only `%25` or escapes of non-ASCII bytes.
fn valid_escapes(s: &str, host: bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() || !b[i + 1].is_ascii_hexdigit() || !b[i + 2].is_ascii_hexdigit() {
                return false;
            }
            if host && hex_value(b[i + 1]) < 8 && &s[i..i + 3] != "%25" {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

fn hex_value(c: u8) -> u8 {
    (c as char).to_digit(16).unwrap_or(0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_uris_as_go_parses_them() {
        for ok in [
            "https://OIDC.example.com",
            "https://expected.OIDC.issuer/",
            "/absolute-path",
            "*",
            "mailto:someone",
            "http://user:pw@host:8080/p?q=1",
            "http://[::1]:80/x",
            "http://host:/",
            "https://h/%41",
        ] {
            assert!(is_request_uri(ok), "{ok} should parse");
        }
        for bad in [
            "",
            "../relative-path",
            "relative",
            "https://a:b:c/",
            " https://x",
            ":nope",
            "http://exa mple.com/",
            "http://h/%zz",
            "http://[::1/",
            "https://x\n",
            "http://%41/",
        ] {
            assert!(!is_request_uri(bad), "{bad:?} should not parse");
        }
    }

    #[test]
    fn emails_and_hostnames() {
        assert!(is_email("a@b"));
        assert!(is_email("\u{e9}@\u{e9}"));
        assert!(!is_email("a b@c"));
        assert!(!is_email("@c"));
        assert!(!is_email("a@b\n"));
        assert!(is_pki_hostname("my-host.example.com"));
        assert!(is_pki_hostname("*.example.com"));
        assert!(!is_pki_hostname("*.*.example.com"));
        assert!(!is_pki_hostname("Upper.example.com"));
        assert!(!is_pki_hostname(&"a".repeat(254)));
    }

    #[test]
    fn pem_marker_rules() {
        let k = "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----";
        assert_eq!(pem_markers(k, "PUBLIC KEY"), (true, true, true));
        assert_eq!(
            pem_markers(&format!("{k}\n"), "PUBLIC KEY"),
            (true, true, true)
        );
        assert!(!pem_markers(&format!("{k}\n\n"), "PUBLIC KEY").1);
        assert!(!pem_markers(&format!("{k}\r\n"), "PUBLIC KEY").1);
        assert!(!pem_markers(&format!(" {k}"), "PUBLIC KEY").0);
        assert_eq!(pem_markers("foo bar", "PUBLIC KEY"), (false, false, true));
    }
}
