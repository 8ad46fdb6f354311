//! What the cluster-wide objects imply for policies: the payload repositories and the
//! Image CR's registry lists as MCO's `getValidBlockedAndAllowedRegistries` sees them.

use serde::Serialize;

use crate::model::{ClusterVersion, Image, PolicyKind};
use crate::registries_conf::{self, MirrorObjects};
use crate::scope::{self, is_nested, PayloadHit};

/// Payload repositories protected even when ClusterVersion names another one.
pub const DEFAULT_EXTRA_PAYLOAD_REPOS: [&str; 2] = [
    "quay.io/openshift-release-dev/ocp-release",
    "quay.io/openshift-release-dev/ocp-v4.0-art-dev",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFacts {
    /// The repository of `status.desired.image`, if ClusterVersion is known.
    pub release_repo: Option<String>,
    /// `status.desired.image` itself: the payload's mirrors are looked up by it.
    pub release_image: Option<String>,
    /// Every protected payload repository, sorted.
    pub payload_repos: Vec<String>,
    /// The admin's `allowedRegistries`.
    pub allowed: Vec<String>,
    /// The payload repository, once per blocked entry that covers it while a mirror
    /// serves it: the MCO then allows it in policy.json (machine-config-operator,
    /// `pkg/controller/container-runtime-config/helpers.go`, `updatePolicyJSON`).
    pub payload_allowed: Vec<String>,
    /// The blocked entries that go into policy.json as `reject`.
    pub blocked: Vec<String>,
    /// The blocked entries that go into registries.conf: also those covering the payload
    /// repository where a mirror serves it.
    pub registries_blocked: Vec<String>,
    /// `insecureRegistries`: they make registries.conf entries too.
    pub insecure: Vec<String>,
    /// Entries MCO would drop, with the reason; not fatal.
    pub notes: Vec<String>,
}

/// The Image CR's lists cannot be used at all (MCO fails the whole sync on these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageConfigError {
    #[error("invalid images config: only one of AllowedRegistries or BlockedRegistries may be specified")]
    BothLists,
    #[error("invalid entry for {list} registries {entry:?}")]
    InvalidEntry { list: &'static str, entry: String },
}

impl ClusterFacts {
    /// Without mirror sets: a blocked registry covering the payload is always dropped.
    pub fn new(
        image: Option<&Image>,
        cluster_version: Option<&ClusterVersion>,
        extra_payload_repos: &[String],
    ) -> Result<ClusterFacts, ImageConfigError> {
        Self::with_mirrors(
            image,
            cluster_version,
            extra_payload_repos,
            MirrorObjects::default(),
        )
    }

    /// MCO's `getValidBlockedAndAllowedRegistries`: a blocked registry that covers the
    /// payload repository is kept only where a mirror outside the blocked registries
    /// serves the payload; the payload repository is then allowed in policy.json.
    pub fn with_mirrors(
        image: Option<&Image>,
        cluster_version: Option<&ClusterVersion>,
        extra_payload_repos: &[String],
        mirrors: MirrorObjects,
    ) -> Result<ClusterFacts, ImageConfigError> {
        let release_image = cluster_version
            .and_then(|cv| cv.status.desired.as_ref())
            .map(|d| d.image.trim())
            .filter(|i| !i.is_empty())
            .map(str::to_string);
        let release_repo = release_image
            .as_deref()
            .map(|i| scope::repository_of(i).to_string());
        let mut payload_repos: Vec<String> = extra_payload_repos.to_vec();
        payload_repos.extend(release_repo.clone());
        payload_repos.sort();
        payload_repos.dedup();

        let mut facts = ClusterFacts {
            release_repo,
            release_image,
            payload_repos,
            ..Default::default()
        };
        let Some(image) = image else {
            return Ok(facts);
        };
        let sources = &image.spec.registry_sources;
        for (list, entries) in [
            ("blocked", &sources.blocked_registries),
            ("allowed", &sources.allowed_registries),
        ] {
            if let Some(bad) = entries
                .iter()
                .find(|e| !scope::is_valid_registries_conf_scope(e))
            {
                return Err(ImageConfigError::InvalidEntry {
                    list,
                    entry: crate::text::clip(bad, crate::text::MAX_ECHOED),
                });
            }
        }
        facts.insecure = sources.insecure_registries.to_vec();
        let mut unblockable = Vec::new();
        for reg in &sources.blocked_registries {
            let payload = match (&facts.release_repo, &facts.release_image) {
                (Some(repo), Some(image)) if is_nested(repo, reg) => (repo.clone(), image),
                _ => {
                    facts.registries_blocked.push(reg.clone());
                    facts.blocked.push(reg.clone());
                    continue;
                }
            };
            let (repo, image) = payload;
            match registries_conf::payload_has_unblocked_mirror(
                image,
                &sources.insecure_registries,
                &sources.blocked_registries,
                mirrors,
            ) {
                Ok(true) => {
                    facts.notes.push(format!(
                        "{reg:?} matches the payload repository, but will add it to the list of blocked registries as there are mirror rules configured for it"
                    ));
                    facts.registries_blocked.push(reg.clone());
                    if *reg != repo {
                        facts.blocked.push(reg.clone());
                    }
                    facts.payload_allowed.push(repo);
                }
                Ok(false) => unblockable.push(reg.clone()),
                Err(e) => {
                    facts.notes.push(format!(
                        "the payload's mirrors cannot be worked out ({e}): the machine-config-operator fails its sync on this"
                    ));
                    unblockable.push(reg.clone());
                }
            }
        }
        if !unblockable.is_empty() {
            // Go's %q of a []string.
            let quoted: Vec<String> = unblockable.iter().map(|r| format!("{r:?}")).collect();
            facts.notes.push(format!(
                "error adding [{}] to blocked registries, cannot block the repository being used by the payload",
                quoted.join(" ")
            ));
        }
        facts
            .allowed
            .extend(sources.allowed_registries.iter().cloned());
        let policy_allowed: Vec<&str> = facts.policy_allowed().collect();
        if !policy_allowed.is_empty()
            && !facts.blocked.is_empty()
            && policy_allowed
                != facts
                    .release_repo
                    .as_deref()
                    .into_iter()
                    .collect::<Vec<_>>()
        {
            return Err(ImageConfigError::BothLists);
        }
        Ok(facts)
    }

    /// The allowed list policy.json is built from: the payload entries the MCO adds, then
    /// the admin's.
    pub fn policy_allowed(&self) -> impl Iterator<Item = &str> {
        self.payload_allowed
            .iter()
            .chain(&self.allowed)
            .map(String::as_str)
    }

    /// The first payload repository this scope touches.
    pub fn payload_hit(&self, scope: &str) -> Option<(&str, PayloadHit)> {
        self.payload_repos
            .iter()
            .find_map(|repo| scope::payload_hit(scope, repo).map(|hit| (repo.as_str(), hit)))
    }

    /// MCO's message when the scope conflicts with the Image CR's lists.
    pub fn registry_conflict(&self, scope: &str, kind: PolicyKind) -> Option<String> {
        let who = kind.mco_name();
        if !self.allowed.is_empty() && !self.policy_allowed().any(|a| is_nested(scope, a)) {
            return Some(format!(
                "{who} configured for the scope {scope} is not nested inside allowedRegistries"
            ));
        }
        if self.blocked.iter().any(|b| is_nested(scope, b)) {
            return Some(format!(
                "{who} configured for the scope {scope} is nested inside blockedRegistries"
            ));
        }
        None
    }

    /// Where the admin set no allowed list, but the MCO made one from the payload
    /// repository (a blocked registry covers it and a mirror serves it): the MCO then
    /// fails its whole sync on every scope outside that repository (its policy.json update
    /// refuses a scope not nested in allowedRegistries, `helpers.go`), so where it renders
    /// this is a denial and where we render a warning.
    pub fn mco_refusal(&self, scope: &str, kind: PolicyKind) -> Option<String> {
        let payload = self.payload_allowed.first()?;
        if !self.allowed.is_empty() || is_nested(scope, payload) {
            return None;
        }
        Some(format!(
            "{} configured for the scope {scope} is not nested inside allowedRegistries: a blocked registry covers the payload repository {payload}, which a mirror serves, so the machine-config-operator allows only {payload} and fails its whole sync on any other scope",
            kind.mco_name()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RegistrySources, Release};

    fn image(allowed: &[&str], blocked: &[&str]) -> Image {
        let mut i = Image::default();
        i.spec.registry_sources = RegistrySources {
            allowed_registries: allowed.iter().map(|s| s.to_string()).collect(),
            blocked_registries: blocked.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        i
    }

    fn cv(image: &str) -> ClusterVersion {
        let mut cv = ClusterVersion::default();
        cv.status.desired = Some(Release {
            image: image.into(),
            version: "4.20.0".into(),
        });
        cv
    }

    #[test]
    fn tv9_conflicts() {
        let f = ClusterFacts::new(
            Some(&image(&["allowed.io/namespace1/namespace2"], &[])),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(
            f.registry_conflict("allowed.io/policysigned", PolicyKind::Cluster).unwrap(),
            "clusterimagePolicy configured for the scope allowed.io/policysigned is not nested inside allowedRegistries"
        );
        let f = ClusterFacts::new(
            Some(&image(&[], &["blocked.io", "blocker-reg.com/namespace1"])),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(
            f.registry_conflict("blocker-reg.com/namespace1/policysigned", PolicyKind::Cluster).unwrap(),
            "clusterimagePolicy configured for the scope blocker-reg.com/namespace1/policysigned is nested inside blockedRegistries"
        );
        let f = ClusterFacts::new(
            Some(&image(&[], &["blocked.io/namespace1/namespace2"])),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(f.registry_conflict("blocked.io", PolicyKind::Cluster), None);
    }

    #[test]
    fn payload_repo_comes_from_cluster_version_and_cannot_be_blocked() {
        let v = cv(&format!(
            "quay.io/openshift-release-dev/ocp-release@sha256:{}",
            "ab".repeat(32)
        ));
        let f =
            ClusterFacts::new(Some(&image(&[], &["quay.io", "bad.io"])), Some(&v), &[]).unwrap();
        assert_eq!(
            f.release_repo.as_deref(),
            Some("quay.io/openshift-release-dev/ocp-release")
        );
        assert_eq!(f.blocked, ["bad.io"]);
        assert_eq!(
            f.notes,
            ["error adding [\"quay.io\"] to blocked registries, cannot block the repository being used by the payload"]
        );
        let extras = vec!["registry.example.com/release".to_string()];
        let f = ClusterFacts::new(None, Some(&v), &extras).unwrap();
        assert_eq!(
            f.payload_hit("registry.example.com").unwrap().0,
            "registry.example.com/release"
        );
    }

    /// The MCO's `helpers.go`: with a mirror outside the blocked registries the payload's
    /// registry may be blocked; the payload repository is then allowed in policy.json, and
    /// every scope outside it is one the MCO refuses.
    #[test]
    fn a_mirrored_payload_can_be_blocked() {
        let payload = "quay.io/openshift-release-dev/ocp-release";
        let v = cv(&format!("{payload}@sha256:{}", "ab".repeat(32)));
        let idms = crate::model::ImageDigestMirrorSet {
            spec: crate::model::DigestMirrorSpec {
                image_digest_mirrors: vec![crate::model::MirrorRule {
                    source: payload.into(),
                    mirrors: vec!["mirror.local/ocp/release".into()],
                    mirror_source_policy: None,
                }],
            },
            ..Default::default()
        };
        let mirrors = MirrorObjects {
            digest: std::slice::from_ref(&idms),
            ..Default::default()
        };
        let blocked = image(&[], &["quay.io"]);
        let f = ClusterFacts::with_mirrors(Some(&blocked), Some(&v), &[], mirrors).unwrap();
        assert_eq!(f.registries_blocked, ["quay.io"]);
        assert_eq!(f.blocked, ["quay.io"]);
        assert_eq!(f.payload_allowed, [payload]);
        assert_eq!(
            f.registry_conflict("example.com/app", PolicyKind::Cluster),
            None
        );
        assert!(f
            .mco_refusal("example.com/app", PolicyKind::Namespaced)
            .unwrap()
            .starts_with("imagePolicy configured for the scope example.com/app is not nested inside allowedRegistries"));
        assert_eq!(
            f.mco_refusal(&format!("{payload}/sub"), PolicyKind::Cluster),
            None
        );
        // Blocking the payload repository itself rejects nothing in policy.json.
        let exact = image(&[], &[payload]);
        let f = ClusterFacts::with_mirrors(Some(&exact), Some(&v), &[], mirrors).unwrap();
        assert_eq!(f.registries_blocked, [payload]);
        assert!(f.blocked.is_empty());
        // Two blocked entries over the payload allow it twice: the MCO's "only one of"
        // check then fails, and so do we.
        let twice = image(&[], &["quay.io", payload]);
        assert_eq!(
            ClusterFacts::with_mirrors(Some(&twice), Some(&v), &[], mirrors),
            Err(ImageConfigError::BothLists)
        );
        // Without the mirror the entry is dropped, as before.
        let f = ClusterFacts::new(Some(&blocked), Some(&v), &[]).unwrap();
        assert!(f.blocked.is_empty() && f.payload_allowed.is_empty());
    }

    #[test]
    fn unusable_image_config() {
        assert_eq!(
            ClusterFacts::new(Some(&image(&["a.io"], &["b.io"])), None, &[]).unwrap_err(),
            ImageConfigError::BothLists
        );
        assert_eq!(
            ClusterFacts::new(Some(&image(&[], &["*"])), None, &[])
                .unwrap_err()
                .to_string(),
            "invalid entry for blocked registries \"*\""
        );
    }
}
