//! What the cluster-wide objects imply for policies: the payload repositories and the
//! Image CR's registry lists as MCO's `getValidBlockedAndAllowedRegistries` sees them.

use serde::Serialize;

use crate::model::{ClusterVersion, Image};
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
    /// Every protected payload repository, sorted.
    pub payload_repos: Vec<String>,
    /// `allowedRegistries` (plus the payload repository when MCO adds it).
    pub allowed: Vec<String>,
    /// The blocked entries that go into policy.json as `reject`.
    pub blocked: Vec<String>,
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
    pub fn new(
        image: Option<&Image>,
        cluster_version: Option<&ClusterVersion>,
        extra_payload_repos: &[String],
    ) -> Result<ClusterFacts, ImageConfigError> {
        let release_repo = cluster_version
            .and_then(|cv| cv.status.desired.as_ref())
            .map(|d| d.image.trim())
            .filter(|i| !i.is_empty())
            .map(|i| scope::repository_of(i).to_string());
        let mut payload_repos: Vec<String> = extra_payload_repos.to_vec();
        payload_repos.extend(release_repo.clone());
        payload_repos.sort();
        payload_repos.dedup();

        let mut facts = ClusterFacts {
            release_repo,
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
                    entry: crate::validate::clip(bad, crate::validate::MAX_ECHOED),
                });
            }
        }
        for reg in &sources.blocked_registries {
            match &facts.release_repo {
                // Without mirror information the payload cannot be blocked: MCO drops the entry.
                Some(payload) if is_nested(payload, reg) => facts.notes.push(format!(
                    "error adding {reg:?} to blocked registries, cannot block the repository being used by the payload"
                )),
                _ => facts.blocked.push(reg.clone()),
            }
        }
        facts
            .allowed
            .extend(sources.allowed_registries.iter().cloned());
        if !facts.allowed.is_empty()
            && !facts.blocked.is_empty()
            && facts.allowed != facts.release_repo.as_slice()
        {
            return Err(ImageConfigError::BothLists);
        }
        Ok(facts)
    }

    /// The first payload repository this scope touches.
    pub fn payload_hit(&self, scope: &str) -> Option<(&str, PayloadHit)> {
        self.payload_repos
            .iter()
            .find_map(|repo| scope::payload_hit(scope, repo).map(|hit| (repo.as_str(), hit)))
    }

    /// MCO's message when the scope conflicts with the Image CR's lists.
    pub fn registry_conflict(&self, scope: &str) -> Option<String> {
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| is_nested(scope, a)) {
            return Some(format!(
                "clusterimagePolicy configured for the scope {scope} is not nested inside allowedRegistries"
            ));
        }
        if self.blocked.iter().any(|b| is_nested(scope, b)) {
            return Some(format!(
                "clusterimagePolicy configured for the scope {scope} is nested inside blockedRegistries"
            ));
        }
        None
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
            f.registry_conflict("allowed.io/policysigned").unwrap(),
            "clusterimagePolicy configured for the scope allowed.io/policysigned is not nested inside allowedRegistries"
        );
        let f = ClusterFacts::new(
            Some(&image(&[], &["blocked.io", "blocker-reg.com/namespace1"])),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(
            f.registry_conflict("blocker-reg.com/namespace1/policysigned").unwrap(),
            "clusterimagePolicy configured for the scope blocker-reg.com/namespace1/policysigned is nested inside blockedRegistries"
        );
        let f = ClusterFacts::new(
            Some(&image(&[], &["blocked.io/namespace1/namespace2"])),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(f.registry_conflict("blocked.io"), None);
    }

    #[test]
    fn payload_repo_comes_from_cluster_version_and_cannot_be_blocked() {
        let v = cv("quay.io/openshift-release-dev/ocp-release@sha256:abcd");
        let f =
            ClusterFacts::new(Some(&image(&[], &["quay.io", "bad.io"])), Some(&v), &[]).unwrap();
        assert_eq!(
            f.release_repo.as_deref(),
            Some("quay.io/openshift-release-dev/ocp-release")
        );
        assert_eq!(f.blocked, ["bad.io"]);
        assert_eq!(f.notes.len(), 1);
        let extras = vec!["registry.example.com/release".to_string()];
        let f = ClusterFacts::new(None, Some(&v), &extras).unwrap();
        assert_eq!(
            f.payload_hit("registry.example.com").unwrap().0,
            "registry.example.com/release"
        );
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
