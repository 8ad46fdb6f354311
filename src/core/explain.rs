//! Which policy.json entry containers/image applies to an image: the identity, then
//! each parent namespace, then `*.`-wildcard domains, then the transport's `""` entry,
//! then the global default (containers/image `docker/policyconfiguration`).

use serde::Serialize;

use crate::inputs::Inputs;
use crate::policy::{Policy, Requirement};
use crate::render::Plan;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The fully expanded reference, as containers/image looks it up.
    pub identity: String,
    /// The entries tried, most specific first.
    pub candidates: Vec<String>,
    /// The entry that matched: a scope, `""` for the transport default, or `None` for
    /// the global default.
    pub matched: Option<String>,
    pub requirements: Vec<Requirement>,
}

/// Where a matched entry comes from when the Image CR's registry lists made it: a
/// `reject` for a blocked registry, `insecureAcceptAnything` for an allowed one, or the
/// default `reject` that `allowedRegistries` puts on everything else.
pub fn registry_list_origin(
    facts: &crate::cluster::ClusterFacts,
    matched: Option<&str>,
    requirements: &[Requirement],
) -> Option<String> {
    let has = |r: &Requirement| requirements.contains(r);
    match matched {
        Some(scope) if has(&Requirement::Reject) && facts.blocked.iter().any(|b| b == scope) => {
            Some(format!(
                "Image cluster spec.registrySources.blockedRegistries entry {scope:?}"
            ))
        }
        Some(scope)
            if has(&Requirement::InsecureAcceptAnything)
                && facts.allowed.iter().any(|a| a == scope) =>
        {
            Some(format!(
                "Image cluster spec.registrySources.allowedRegistries entry {scope:?}"
            ))
        }
        Some(scope)
            if has(&Requirement::InsecureAcceptAnything)
                && facts.payload_allowed.iter().any(|a| a == scope) =>
        {
            Some(format!(
                "the payload repository {scope}: a blocked registry covers it and a mirror serves it, so it is allowed (as the machine-config-operator does)"
            ))
        }
        None if has(&Requirement::Reject) && facts.policy_allowed().next().is_some() => Some(
            "Image cluster spec.registrySources.allowedRegistries: what none of them holds is rejected"
                .to_string(),
        ),
        _ => None,
    }
}

/// Expands a reference as `reference.ParseNormalizedNamed` + `TagNameOnly` do:
/// `busybox` → `docker.io/library/busybox:latest`. Returns (name, identity).
pub fn normalize(image: &str) -> Result<(String, String), String> {
    let image = image.strip_prefix("docker://").unwrap_or(image);
    if image.is_empty() || image.contains(char::is_whitespace) {
        return Err(format!("invalid image reference {image:?}"));
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    let (first, remainder) = name.split_once('/').unwrap_or(("", name));
    let has_domain = !first.is_empty() && (first.contains(['.', ':']) || first == "localhost");
    let full = if has_domain {
        let domain = if first == "index.docker.io" {
            "docker.io"
        } else {
            first
        };
        format!("{domain}/{remainder}")
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    // The host may have any case; the repository path may not.
    let path = full.split_once('/').map_or("", |(_, p)| p);
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "invalid image reference {image:?}: repository name must be lowercase"
        ));
    }
    let identity = match (tag, digest) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{image}: Docker references with both a tag and digest are currently not supported"
            ))
        }
        (Some(t), None) => format!("{full}:{t}"),
        (None, Some(d)) => {
            check_digest(d).map_err(|e| format!("invalid image reference {image:?}: {e}"))?;
            format!("{full}@{d}")
        }
        (None, None) => format!("{full}:latest"),
    };
    Ok((full, identity))
}

/// A digest as go-digest's `Digest.Validate` takes it (what `ParseNormalizedNamed` calls):
/// a known algorithm and its length of lowercase hex, with go-digest's error texts.
fn check_digest(digest: &str) -> Result<(), &'static str> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("invalid checksum digest format");
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ if algorithm.is_empty() || hex.is_empty() => {
            return Err("invalid checksum digest format")
        }
        _ => return Err("unsupported digest algorithm"),
    };
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("invalid checksum digest format");
    }
    if hex.len() != length {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

/// The lookup order: identity, the name and its parent namespaces up to the host,
/// then the host (port dropped) as ever shorter `*.` wildcards.
pub fn candidates(name: &str, identity: &str) -> Vec<String> {
    let mut out = vec![identity.to_string()];
    let mut current = name;
    loop {
        out.push(current.to_string());
        match current.rfind('/') {
            Some(i) => current = &current[..i],
            None => break,
        }
    }
    let mut host = current.split(':').next().unwrap_or(current);
    while let Some(dot) = host.find('.') {
        host = &host[dot + 1..];
        out.push(format!("*.{host}"));
    }
    out
}

pub fn explain(policy: &Policy, image: &str) -> Result<Explanation, String> {
    let (name, identity) = normalize(image)?;
    let candidates = candidates(&name, &identity);
    let (matched, requirements) = lookup(policy, &candidates);
    Ok(Explanation {
        matched: matched.cloned(),
        requirements: requirements.to_vec(),
        identity,
        candidates,
    })
}

/// The lookup candidates of `image` as [`explain`] tries them.
pub fn lookup_candidates(image: &str) -> Result<Vec<String>, String> {
    let (name, identity) = normalize(image)?;
    Ok(candidates(&name, &identity))
}

/// The entry `candidates` match in `policy` (the docker transport's `""`, then none: the
/// default), and its requirements, borrowed.
pub fn lookup<'a>(
    policy: &'a Policy,
    candidates: &[String],
) -> (Option<&'a String>, &'a [Requirement]) {
    let docker = policy.transports.get("docker");
    let empty = String::new();
    let hit = docker.and_then(|scopes| {
        (candidates.iter().chain(std::iter::once(&empty))).find_map(|c| scopes.get_key_value(c))
    });
    match hit {
        Some((scope, requirements)) => (Some(scope), requirements),
        None => (None, &policy.default),
    }
}

/// The policies whose requirements the matched entry carries: the cluster policies that
/// write that scope, and in a namespace's file that namespace's ImagePolicies.
pub fn policies_behind(
    plan: &Plan,
    inputs: &Inputs,
    matched: Option<&str>,
    namespace: Option<&str>,
    in_namespace_file: bool,
) -> Vec<String> {
    let writes = |o: &crate::render::PolicyOutcome, scope: &String| match &o.condition {
        crate::render::Condition::Applied { .. } => true,
        crate::render::Condition::Pending { written, .. }
        | crate::render::Condition::Overridden { written, .. } => written.contains(scope),
    };
    match matched {
        Some(scope) if !scope.is_empty() => {
            let scope = &scope.to_string();
            let cluster = plan.policies.iter().filter(|o| {
                writes(o, scope)
                    && inputs
                        .policies
                        .iter()
                        .any(|p| p.metadata.name == o.name && p.scopes().contains(scope))
            });
            let namespaced = plan.image_policies.iter().filter(|o| {
                in_namespace_file
                    && o.namespace.as_deref() == namespace
                    && writes(o, scope)
                    && inputs.image_policies.iter().any(|p| {
                        p.metadata.namespace == o.namespace
                            && p.metadata.name == o.name
                            && p.scopes().contains(scope)
                    })
            });
            cluster
                .map(|o| format!("ClusterImagePolicy {}", o.name))
                .chain(namespaced.map(|o| {
                    format!(
                        "ImagePolicy {}/{}",
                        o.namespace.as_deref().unwrap_or_default(),
                        o.name
                    )
                }))
                .collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_as_go_digest_does() {
        let ok = format!("quay.io/a@sha256:{}", "0".repeat(64));
        assert!(normalize(&ok).is_ok());
        for (bad, why) in [
            ("quay.io/a@sha256:zz", "invalid checksum digest format"),
            ("quay.io/a@sha256:abc", "invalid checksum digest length"),
            ("quay.io/a@md5:abc", "unsupported digest algorithm"),
        ] {
            let e = normalize(bad).unwrap_err();
            assert!(e.ends_with(why), "{bad}: {e}");
        }
        let upper = format!("quay.io/a@sha256:{}", "A".repeat(64));
        assert!(normalize(&upper).is_err());
    }

    #[test]
    fn normalization() {
        assert_eq!(
            normalize("busybox").unwrap().1,
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize("user/app:1").unwrap().1, "docker.io/user/app:1");
        assert_eq!(
            normalize("localhost:5000/a/b").unwrap().1,
            "localhost:5000/a/b:latest"
        );
        assert_eq!(
            normalize(&format!("quay.io/a/b@sha256:{}", "a".repeat(64)))
                .unwrap()
                .1,
            format!("quay.io/a/b@sha256:{}", "a".repeat(64))
        );
        assert!(normalize("quay.io/a:t@sha256:abc").is_err());
        assert_eq!(
            normalize("Quay.IO/org/app").unwrap().1,
            "Quay.IO/org/app:latest"
        );
        assert!(normalize("quay.io/Org/app")
            .unwrap_err()
            .contains("must be lowercase"));
        assert!(normalize("Busybox").is_err());
    }

    #[test]
    fn lookup_order() {
        assert_eq!(
            candidates(
                "a.example.com:5000/ns/repo",
                "a.example.com:5000/ns/repo:v1"
            ),
            [
                "a.example.com:5000/ns/repo:v1",
                "a.example.com:5000/ns/repo",
                "a.example.com:5000/ns",
                "a.example.com:5000",
                "*.example.com",
                "*.com"
            ]
        );
    }

    #[test]
    fn most_specific_scope_wins() {
        let policy = Policy::parse(
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{
                "example.com":[{"type":"insecureAcceptAnything"}],
                "example.com/global":[{"type":"sigstoreSigned","keyData":"Zm9v"}],
                "*.example.com":[{"type":"reject"}]}}}"#,
        )
        .unwrap();
        let e = explain(&policy, "example.com/global/app:1").unwrap();
        assert_eq!(e.matched.as_deref(), Some("example.com/global"));
        let e = explain(&policy, "example.com/other").unwrap();
        assert_eq!(e.matched.as_deref(), Some("example.com"));
        let e = explain(&policy, "registry.example.com/x").unwrap();
        assert_eq!(e.matched.as_deref(), Some("*.example.com"));
        let e = explain(&policy, "quay.io/x").unwrap();
        assert_eq!(
            (e.matched, e.requirements),
            (None, vec![Requirement::Reject])
        );
    }
}
