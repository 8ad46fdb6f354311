//! Whether a signature's `docker-reference` is accepted for the image being pulled:
//! containers/image `signature/policy_reference_match.go`, over `docker/reference`'s
//! parsing (`ParseNormalizedNamed`, and `ParseNamed` for a remapped reference).

use cip_core::policy::SignedIdentity;
use cip_core::registries_conf::Reference;

fn is_name_only(r: &Reference) -> bool {
    r.tag.is_none() && r.digest.is_none()
}

/// `matchRepoDigestOrExactReferenceValues`.
fn repo_digest_or_exact(intended: &Reference, signature: &Reference) -> bool {
    if is_name_only(signature) {
        return false;
    }
    if intended.tag.is_some() {
        return signature.to_string() == intended.to_string();
    }
    if intended.digest.is_some() {
        return signature.name == intended.name;
    }
    false
}

/// `prmRemapIdentity.remapReferencePrefix`: `None` when the rewritten reference does not
/// parse (the match then fails).
fn remap(intended: &Reference, prefix: &str, signed_prefix: &str) -> Option<Reference> {
    let name = &intended.name;
    let matches = name.len() >= prefix.len()
        && name.starts_with(prefix)
        && (name.len() == prefix.len() || name.as_bytes()[prefix.len()] == b'/');
    if !matches {
        return Some(intended.clone());
    }
    let text = intended.to_string().replacen(prefix, signed_prefix, 1);
    Reference::parse_named(&text).ok()
}

/// `matchesDockerReference` of each `signedIdentity` kind: `intended` is the reference
/// the node pulls (as written in the pod, normalized, `:latest` added when it has neither
/// tag nor digest), `signed` the payload's `docker-reference`.
pub fn matches(identity: &SignedIdentity, intended: &Reference, signed: &str) -> bool {
    let Ok(signature) = Reference::parse_normalized(signed) else {
        return false;
    };
    match identity {
        SignedIdentity::MatchExact => {
            !is_name_only(intended)
                && !is_name_only(&signature)
                && signature.to_string() == intended.to_string()
        }
        SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(intended, &signature),
        SignedIdentity::MatchRepository => signature.name == intended.name,
        SignedIdentity::ExactReference { docker_reference } => {
            let Ok(wanted) = Reference::parse_normalized(docker_reference) else {
                return false;
            };
            !is_name_only(&wanted)
                && !is_name_only(&signature)
                && signature.to_string() == wanted.to_string()
        }
        SignedIdentity::ExactRepository { docker_repository } => {
            Reference::parse_normalized(docker_repository)
                .is_ok_and(|wanted| signature.name == wanted.name)
        }
        SignedIdentity::RemapIdentity {
            prefix,
            signed_prefix,
        } => remap(intended, prefix, signed_prefix)
            .is_some_and(|remapped| repo_digest_or_exact(&remapped, &signature)),
    }
}

/// The reference CRI-O's pull gives containers/image: `docker://` + the image as written,
/// through the docker transport's `ParseReference` (normalized, `:latest` added, a tag and
/// a digest together refused).
pub fn pulled_reference(image: &str) -> Result<Reference, String> {
    let mut r = Reference::parse_normalized(image.strip_prefix("docker://").unwrap_or(image))?;
    if r.tag.is_some() && r.digest.is_some() {
        return Err(format!(
            "Docker references with both a tag and digest are currently not supported: {image}"
        ));
    }
    if is_name_only(&r) {
        r.tag = Some("latest".into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn r(s: &str) -> Reference {
        pulled_reference(s).unwrap()
    }

    #[test]
    fn repo_digest_or_exact_refuses_name_only_signatures() {
        let id = SignedIdentity::MatchRepoDigestOrExact;
        // cosign's default: the repository alone. Refused (containers/image#2950).
        assert!(!matches(&id, &r("quay.io/a/b:v1"), "quay.io/a/b"));
        assert!(!matches(
            &id,
            &r(&format!("quay.io/a/b@{D}")),
            "quay.io/a/b"
        ));
        assert!(matches(&id, &r("quay.io/a/b:v1"), "quay.io/a/b:v1"));
        assert!(!matches(&id, &r("quay.io/a/b:v1"), "quay.io/a/b:v2"));
        // By digest, any tag or digest of the same repository.
        assert!(matches(
            &id,
            &r(&format!("quay.io/a/b@{D}")),
            "quay.io/a/b:v2"
        ));
        assert!(!matches(
            &id,
            &r(&format!("quay.io/a/b@{D}")),
            "quay.io/a/c:v2"
        ));
        // Docker Hub normalization on both sides.
        assert!(matches(
            &id,
            &r("busybox"),
            "docker.io/library/busybox:latest"
        ));
        assert!(matches(
            &id,
            &r("docker.io/library/busybox:latest"),
            "busybox:latest"
        ));
    }

    #[test]
    fn the_other_identities() {
        assert!(matches(
            &SignedIdentity::MatchRepository,
            &r("quay.io/a/b:v1"),
            "quay.io/a/b"
        ));
        assert!(!matches(
            &SignedIdentity::MatchRepository,
            &r("quay.io/a/b:v1"),
            "quay.io/a/bc"
        ));
        assert!(!matches(
            &SignedIdentity::MatchExact,
            &r(&format!("quay.io/a/b@{D}")),
            "quay.io/a/b:v1"
        ));
        assert!(matches(
            &SignedIdentity::MatchExact,
            &r("quay.io/a/b:v1"),
            "quay.io/a/b:v1"
        ));
        let exact_repo = SignedIdentity::ExactRepository {
            docker_repository: "quay.io/signed/b".into(),
        };
        assert!(matches(
            &exact_repo,
            &r("mirror.io/x:v1"),
            "quay.io/signed/b:anything"
        ));
        let exact_ref = SignedIdentity::ExactReference {
            docker_reference: "quay.io/signed/b:v1".into(),
        };
        assert!(matches(
            &exact_ref,
            &r("mirror.io/x:v9"),
            "quay.io/signed/b:v1"
        ));
        assert!(!matches(
            &exact_ref,
            &r("mirror.io/x:v9"),
            "quay.io/signed/b"
        ));
        // Unparseable signed references never match.
        assert!(!matches(
            &SignedIdentity::MatchRepository,
            &r("quay.io/a/b:v1"),
            "Quay.io/A"
        ));
    }

    #[test]
    fn remap_identity() {
        let remap = SignedIdentity::RemapIdentity {
            prefix: "mirror.local/ocp".into(),
            signed_prefix: "quay.io/openshift".into(),
        };
        assert!(matches(
            &remap,
            &r("mirror.local/ocp/release:v1"),
            "quay.io/openshift/release:v1"
        ));
        // Only at a path boundary.
        assert!(!matches(
            &remap,
            &r("mirror.local/ocpx/release:v1"),
            "quay.io/openshiftx/release:v1"
        ));
        // Not under the prefix: matched as MatchRepoDigestOrExact.
        assert!(matches(&remap, &r("other.io/a:v1"), "other.io/a:v1"));
        // Name-only signatures are refused here too.
        assert!(!matches(
            &remap,
            &r("mirror.local/ocp/release:v1"),
            "quay.io/openshift/release"
        ));
        // A rewrite that is not canonical fails the match.
        let to_hub = SignedIdentity::RemapIdentity {
            prefix: "mirror.local/ocp".into(),
            signed_prefix: "docker.io".into(),
        };
        assert!(!matches(
            &to_hub,
            &r("mirror.local/ocp/busybox:v1"),
            "docker.io/library/busybox:v1"
        ));
    }

    #[test]
    fn pulled_references() {
        assert_eq!(r("busybox").to_string(), "docker.io/library/busybox:latest");
        assert!(pulled_reference(&format!("quay.io/a:v1@{D}")).is_err());
    }
}
