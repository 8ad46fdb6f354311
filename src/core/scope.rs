//! Image scopes: the CRD grammar (CEL rules S1–S3), MCO's nesting relation, and the
//! registries.conf scope check MCO applies to the Image CR's registry lists.

use std::sync::LazyLock;

use regex::Regex;

/// A DNS label as the CRD writes it (`[a-zA-Z0-9]` or alnum with inner dashes).
const LABEL: &str = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";

/// S2: a wildcard is only allowed as a leading `*.` followed by labels.
static WILDCARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"^\*(?:\.{LABEL})+$")).unwrap());

/// S3, ported from RE2: `\w` is ASCII there, so it is spelled out here.
static SCOPE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^(((({LABEL})(?:\.{LABEL})+(?::[0-9]+)?)|(localhost(?::[0-9]+)?))(?:(?:/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?)+)?)(?::([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}))?(?:@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9A-Fa-f]{{32,}}))?$"
    ))
    .unwrap()
});

/// N1: a trailing `:tag` is only tolerated as `localhost:<port>`.
static IDENTITY_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^.*:([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$").unwrap());
static IDENTITY_LOCALHOST_PORT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(localhost:[0-9]+)$").unwrap());

/// N2: a repository or prefix without tag or digest.
static IDENTITY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^((({LABEL})(?:\.{LABEL})+(?::[0-9]+)?)|(localhost(?::[0-9]+)?))(?:(?:/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?)+)?$"
    ))
    .unwrap()
});

/// Which of the CRD's scope rules a string breaks (S1, S2, S3), in rule order.
pub fn scope_rule_failures(scope: &str) -> Vec<ScopeRule> {
    let mut failed = Vec::new();
    let host = scope.split('/').next().unwrap_or("");
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() == 1 && labels[0].split(':').next().unwrap_or("") != "localhost" {
        failed.push(ScopeRule::S1);
    }
    if scope.contains('*') {
        if !WILDCARD.is_match(scope) {
            failed.push(ScopeRule::S2);
        }
    } else if !SCOPE.is_match(scope) {
        failed.push(ScopeRule::S3);
    }
    failed
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRule {
    S1,
    S2,
    S3,
}

impl ScopeRule {
    pub fn id(self) -> &'static str {
        match self {
            ScopeRule::S1 => "S1",
            ScopeRule::S2 => "S2",
            ScopeRule::S3 => "S3",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ScopeRule::S1 => "invalid image scope format, scope must contain a fully qualified domain name or 'localhost'",
            ScopeRule::S2 => "invalid image scope with wildcard, a wildcard can only be at the start of the domain and is only supported for subdomain matching, not path matching",
            ScopeRule::S3 => "invalid repository namespace or image specification in the image scope",
        }
    }
}

/// N1 and N2 for `signedIdentity` repositories and prefixes: (tag rule ok, grammar ok).
pub fn identity_rules(value: &str) -> (bool, bool) {
    let n1 = !IDENTITY_TAG.is_match(value) || IDENTITY_LOCALHOST_PORT.is_match(value);
    (n1, IDENTITY.is_match(value))
}

/// MCO's `ScopeIsNestedInsideScope(sub, sup)` (openshift/runtime-utils): equal, a
/// `/`-boundary prefix, or under a leading `*.` wildcard host.
pub fn is_nested(sub: &str, sup: &str) -> bool {
    if sub == sup {
        return true;
    }
    if sub.len() > sup.len() && sub.starts_with(sup) && sub.as_bytes()[sup.len()] == b'/' {
        return true;
    }
    if let Some(suffix) = sup.strip_prefix('*') {
        if !suffix.starts_with('.') {
            return false;
        }
        if sub.contains(':') {
            let before = sub.split(':').next().unwrap_or("");
            return before.ends_with(suffix) && !before.contains('/');
        }
        let host = sub.split('/').next().unwrap_or("");
        return host.ends_with(suffix);
    }
    false
}

/// The repository part of a scope or image reference: tag and digest dropped.
pub fn repository_of(reference: &str) -> &str {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    match no_digest.rfind(':') {
        Some(colon) if !no_digest[colon..].contains('/') => {
            // A colon in the last path component is a tag; one in the host is a port.
            if no_digest[..colon].contains('/') {
                &no_digest[..colon]
            } else {
                no_digest
            }
        }
        _ => no_digest,
    }
}

/// How a scope touches a payload repository, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadHit {
    /// The scope is the repository itself or a namespace, host or wildcard above it.
    Covers,
    /// The scope is a tagged or digested image of the repository, or below it.
    Inside,
}

pub fn payload_hit(scope: &str, payload_repo: &str) -> Option<PayloadHit> {
    if is_nested(payload_repo, scope) {
        Some(PayloadHit::Covers)
    } else if is_nested(repository_of(scope), payload_repo) {
        Some(PayloadHit::Inside)
    } else {
        None
    }
}

/// MCO's `IsValidRegistriesConfScope`: non-empty, and `*` only as a leading `*.`
/// followed by characters outside `/@:*`.
pub fn is_valid_registries_conf_scope(scope: &str) -> bool {
    if scope.is_empty() {
        return false;
    }
    if !scope.contains('*') {
        return true;
    }
    match scope.strip_prefix("*.") {
        Some(rest) => !rest.is_empty() && !rest.contains(['/', '@', ':', '*']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_accepts_documented_forms() {
        for ok in [
            "example.com",
            "example.com:5000",
            "localhost",
            "localhost:5000/ns/repo",
            "docker.io/library/busybox:latest",
            "quay.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "*.example.com",
            "*.com",
            "Example.COM/a__b/c-d---e",
            "registry.ci.openshift.org",
        ] {
            assert!(
                scope_rule_failures(ok).is_empty(),
                "{ok} should be valid: {:?}",
                scope_rule_failures(ok)
            );
        }
    }

    #[test]
    fn grammar_rejects_with_rule() {
        let cases = [
            ("busybox", vec![ScopeRule::S1, ScopeRule::S3]),
            ("myreg:5000/x", vec![ScopeRule::S1, ScopeRule::S3]),
            ("*", vec![ScopeRule::S1, ScopeRule::S2]),
            ("*.example.com/test", vec![ScopeRule::S2]),
            ("example*.com", vec![ScopeRule::S2]),
            ("example.com/", vec![ScopeRule::S3]),
            ("https://example.com", vec![ScopeRule::S1, ScopeRule::S3]),
            ("example.com/UPPER", vec![ScopeRule::S3]),
            ("example.com/a@sha256:12dsdf", vec![ScopeRule::S3]),
            ("example.com/a:t\u{e9}g", vec![ScopeRule::S3]),
        ];
        for (scope, want) in cases {
            assert_eq!(scope_rule_failures(scope), want, "{scope}");
        }
    }

    #[test]
    fn nesting_follows_runtime_utils() {
        assert!(is_nested("example.com", "example.com"));
        assert!(is_nested("example.com/foo/bar", "example.com/foo"));
        assert!(!is_nested("example.com/foobar", "example.com/foo"));
        assert!(!is_nested("example.com:5000", "example.com"));
        assert!(is_nested("a.example.com/ns", "*.example.com"));
        assert!(is_nested("*.foo.example.com", "*.example.com"));
        assert!(!is_nested("example.com", "*.example.com"));
        assert!(is_nested("a.example.com:5000", "*.example.com"));
        assert!(!is_nested("a.example.com/r:tag", "*.example.com"));
        assert!(!is_nested("example.com", "example.com/foo"));
    }

    #[test]
    fn repository_strips_tag_and_digest_not_port() {
        assert_eq!(repository_of("quay.io/a/b:4.16"), "quay.io/a/b");
        assert_eq!(repository_of("quay.io/a/b@sha256:abc"), "quay.io/a/b");
        assert_eq!(repository_of("quay.io/a/b:t@sha256:abc"), "quay.io/a/b");
        assert_eq!(repository_of("localhost:5000/a"), "localhost:5000/a");
        assert_eq!(repository_of("localhost:5000"), "localhost:5000");
        assert_eq!(repository_of("example.com"), "example.com");
    }

    #[test]
    fn payload_hits() {
        let p = "quay.io/openshift-release-dev/ocp-release";
        assert_eq!(payload_hit(p, p), Some(PayloadHit::Covers));
        assert_eq!(
            payload_hit("quay.io/openshift-release-dev", p),
            Some(PayloadHit::Covers)
        );
        assert_eq!(payload_hit("quay.io", p), Some(PayloadHit::Covers));
        assert_eq!(payload_hit("*.io", p), Some(PayloadHit::Covers));
        assert_eq!(
            payload_hit("quay.io/openshift-release-dev/ocp-release:4.16.0-x86_64", p),
            Some(PayloadHit::Inside)
        );
        assert_eq!(
            payload_hit("quay.io/openshift-release-dev/ocp-release/sub", p),
            Some(PayloadHit::Inside)
        );
        assert_eq!(
            payload_hit("quay.io/openshift-release-dev/ocp-release-nightly", p),
            None
        );
        assert_eq!(payload_hit("*.quay.io", p), None);
    }

    #[test]
    fn identities() {
        assert_eq!(identity_rules("docker.io/library/busybox"), (true, true));
        assert_eq!(identity_rules("localhost:5000"), (true, true));
        assert_eq!(identity_rules("example.com:5000"), (false, true));
        assert_eq!(identity_rules("example.com:5000/ns"), (true, true));
        assert_eq!(identity_rules("example.com/ns:tag"), (false, false));
        assert_eq!(identity_rules("busybox"), (true, false));
    }

    #[test]
    fn registries_conf_scopes() {
        assert!(is_valid_registries_conf_scope("*.example.com"));
        assert!(is_valid_registries_conf_scope("example.com/ns"));
        assert!(!is_valid_registries_conf_scope(""));
        assert!(!is_valid_registries_conf_scope("*"));
        assert!(!is_valid_registries_conf_scope("*.example.com/ns"));
        assert!(!is_valid_registries_conf_scope("a.*.com"));
    }
}
