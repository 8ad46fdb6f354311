//! What rendering reads, as plain data, and its options.

use std::sync::Arc;

use crate::cluster::{ClusterFacts, ImageConfigError, DEFAULT_EXTRA_PAYLOAD_REPOS};
use crate::model::{
    ClusterImagePolicy, ClusterVersion, FeatureGate, Image, ImageContentSourcePolicy,
    ImageDigestMirrorSet, ImagePolicy, ImageTagMirrorSet, MachineConfig, MachineConfigPool,
};
use crate::registries_conf::MirrorObjects;

/// Default MachineConfig budget: etcd refuses objects over 1.5 MiB, and the pool's
/// rendered MachineConfig carries every file of every MachineConfig besides ours.
pub const DEFAULT_SIZE_BUDGET: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub extra_payload_repos: Vec<String>,
    pub size_budget: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            extra_payload_repos: DEFAULT_EXTRA_PAYLOAD_REPOS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            size_budget: DEFAULT_SIZE_BUDGET,
        }
    }
}

/// Everything rendering reads, as plain data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// Shared with the cluster store that keeps them (thousands, each with key material).
    pub policies: Vec<Arc<ClusterImagePolicy>>,
    pub image: Option<Image>,
    pub cluster_version: Option<ClusterVersion>,
    pub pools: Vec<MachineConfigPool>,
    pub machine_configs: Vec<MachineConfig>,
    /// FeatureGate `cluster`: whether the MCO renders policies itself (`serve --mode auto`).
    pub feature_gate: Option<FeatureGate>,
    /// Namespaced policies: each namespace gets `/etc/crio/policies/<namespace>.json`.
    pub image_policies: Vec<Arc<ImagePolicy>>,
    /// Mirrors: each mirror of a policy scope gets sigstore attachments too.
    pub digest_mirror_sets: Vec<ImageDigestMirrorSet>,
    pub tag_mirror_sets: Vec<ImageTagMirrorSet>,
    pub content_source_policies: Vec<ImageContentSourcePolicy>,
}

impl Inputs {
    /// What a missing ClusterVersion `version` means, for /readyz and the log.
    pub fn missing_cluster_version(&self) -> Option<&'static str> {
        self.cluster_version.is_none().then_some(
            "no ClusterVersion version: the release payload checks use the default release repositories",
        )
    }

    pub fn mirrors(&self) -> MirrorObjects<'_> {
        MirrorObjects {
            digest: &self.digest_mirror_sets,
            tag: &self.tag_mirror_sets,
            content_source: &self.content_source_policies,
        }
    }

    /// The cluster facts as rendering sees them (mirrors included).
    pub fn facts(&self, options: &RenderOptions) -> Result<ClusterFacts, ImageConfigError> {
        ClusterFacts::with_mirrors(
            self.image.as_ref(),
            self.cluster_version.as_ref(),
            &options.extra_payload_repos,
            self.mirrors(),
        )
    }
}
