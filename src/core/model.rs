//! The Kubernetes objects the product reads and writes, as plain serde data.
//!
//! Spec fields are `Option` so that a malformed object still decodes and validation
//! can name every missing field; unknown fields are kept so a round trip loses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const CONFIG_GROUP: &str = "config.openshift.io";
pub const MC_API_VERSION: &str = "machineconfiguration.openshift.io/v1";
pub const ROLE_LABEL: &str = "machineconfiguration.openshift.io/role";

type Extra = Map<String, Value>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Only on namespaced objects (ImagePolicy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// RFC 3339, as the API server sets it; the size budget admits policies oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(flatten)]
    pub other: Extra,
}

/// The two served versions of ClusterImagePolicy; they share the spec JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum CipVersion {
    #[serde(rename = "v1alpha1")]
    V1Alpha1,
    #[serde(rename = "v1")]
    V1,
}

impl CipVersion {
    pub fn from_api_version(api_version: &str) -> Option<CipVersion> {
        match api_version {
            "config.openshift.io/v1" => Some(CipVersion::V1),
            "config.openshift.io/v1alpha1" => Some(CipVersion::V1Alpha1),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterImagePolicy {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<CipSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

/// Which of the two policy kinds an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PolicyKind {
    #[serde(rename = "ClusterImagePolicy")]
    Cluster,
    #[serde(rename = "ImagePolicy")]
    Namespaced,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Cluster => "ClusterImagePolicy",
            PolicyKind::Namespaced => "ImagePolicy",
        }
    }

    /// How the MCO's messages name the kind.
    pub fn mco_name(self) -> &'static str {
        match self {
            PolicyKind::Cluster => "clusterimagePolicy",
            PolicyKind::Namespaced => "imagePolicy",
        }
    }

    pub fn from_kind(kind: &str) -> Option<PolicyKind> {
        match kind {
            "ClusterImagePolicy" => Some(PolicyKind::Cluster),
            "ImagePolicy" => Some(PolicyKind::Namespaced),
            _ => None,
        }
    }
}

/// A namespaced `ImagePolicy`: the same spec JSON and CRD rules as ClusterImagePolicy
/// (the CRDs differ only in scope and in which status the MCO writes), told apart by
/// `kind` and `metadata.namespace`.
pub type ImagePolicy = ClusterImagePolicy;

impl ClusterImagePolicy {
    pub fn version(&self) -> Option<CipVersion> {
        CipVersion::from_api_version(&self.api_version)
    }

    /// `namespace/name` for an ImagePolicy, `name` for a ClusterImagePolicy.
    pub fn key(&self) -> String {
        match &self.metadata.namespace {
            Some(ns) => format!("{ns}/{}", self.metadata.name),
            None => self.metadata.name.clone(),
        }
    }

    /// By `kind`; an object without one counts as namespaced when it has a namespace.
    pub fn policy_kind(&self) -> PolicyKind {
        PolicyKind::from_kind(&self.kind).unwrap_or(if self.metadata.namespace.is_some() {
            PolicyKind::Namespaced
        } else {
            PolicyKind::Cluster
        })
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("")
    }

    pub fn scopes(&self) -> &[String] {
        self.spec
            .as_ref()
            .and_then(|s| s.scopes.as_deref())
            .unwrap_or(&[])
    }
}

/// The CRD's `maxItems` of `spec.scopes`.
pub const MAX_SCOPES: usize = 256;

/// The master Image CRD's `maxItems` of each registry list.
pub const MAX_REGISTRIES: usize = 1024;

/// A list of strings decoded with at most `MAX` items stored and all of them counted: a
/// list past its CRD's `maxItems` is refused for its length anyway, and a 3 MiB review of
/// 780,000 one-letter scopes must not cost its items' worth of memory to say so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capped<const MAX: usize> {
    items: Vec<String>,
    total: usize,
}

impl<const MAX: usize> Capped<MAX> {
    /// How many items the list had, stored or not.
    pub fn total(&self) -> usize {
        self.total
    }
}

impl<const MAX: usize> std::ops::Deref for Capped<MAX> {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.items
    }
}

impl<const MAX: usize> std::ops::DerefMut for Capped<MAX> {
    fn deref_mut(&mut self) -> &mut [String] {
        &mut self.items
    }
}

impl<'a, const MAX: usize> IntoIterator for &'a Capped<MAX> {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

impl<const MAX: usize> FromIterator<String> for Capped<MAX> {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        let mut list = Capped {
            items: Vec::new(),
            total: 0,
        };
        for item in iter {
            list.total += 1;
            if list.items.len() < MAX {
                list.items.push(item);
            }
        }
        list
    }
}

impl<const MAX: usize> From<Vec<String>> for Capped<MAX> {
    fn from(items: Vec<String>) -> Self {
        items.into_iter().collect()
    }
}

impl<const MAX: usize> Serialize for Capped<MAX> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(s)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Capped<MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items<const MAX: usize>;
        impl<'de, const MAX: usize> serde::de::Visitor<'de> for Items<MAX> {
            type Value = Capped<MAX>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut list = Capped {
                    items: Vec::new(),
                    total: 0,
                };
                loop {
                    if list.items.len() < MAX {
                        match seq.next_element::<String>()? {
                            Some(item) => list.items.push(item),
                            None => break,
                        }
                    } else if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                        break;
                    }
                    list.total += 1;
                }
                Ok(list)
            }
        }
        d.deserialize_seq(Items::<MAX>)
    }
}

/// Decoded field by field (no `flatten`, which would buffer the whole spec first), so that
/// the scopes past the CRD's limit are counted, never stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CipSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Capped<MAX_SCOPES>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
    #[serde(flatten)]
    pub unknown: Extra,
}

impl<'de> Deserialize<'de> for CipSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = CipSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("struct CipSpec")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<CipSpec, A::Error> {
                let mut spec = CipSpec::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "scopes" => spec.scopes = map.next_value()?,
                        "policy" => spec.policy = map.next_value()?,
                        _ => {
                            let value = map.next_value()?;
                            spec.unknown.insert(key, value);
                        }
                    }
                }
                Ok(spec)
            }
        }
        d.deserialize_map(Fields)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_of_trust: Option<RootOfTrust>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_identity: Option<SignedIdentitySpec>,
    #[serde(flatten)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootOfTrust {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKeySpec>,
    #[serde(
        default,
        rename = "fulcioCAWithRekor",
        skip_serializing_if = "Option::is_none"
    )]
    pub fulcio_ca_with_rekor: Option<FulcioSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<PkiSpec>,
    #[serde(flatten)]
    pub unknown: Extra,
}

/// Byte fields are kept as the base64 text the API carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekor_key_data: Option<String>,
    #[serde(flatten)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulcioSpec {
    #[serde(
        default,
        rename = "fulcioCAData",
        skip_serializing_if = "Option::is_none"
    )]
    pub fulcio_ca_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekor_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulcio_subject: Option<FulcioSubject>,
    #[serde(flatten)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulcioSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_email: Option<String>,
    #[serde(flatten)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PkiSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_roots_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_intermediates_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki_certificate_subject: Option<PkiSubject>,
    #[serde(flatten)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PkiSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(flatten)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedIdentitySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_repository: Option<ExactRepositorySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remap_identity: Option<RemapIdentitySpec>,
    #[serde(flatten)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExactRepositorySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(flatten)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemapIdentitySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_prefix: Option<String>,
    #[serde(flatten)]
    pub unknown: Extra,
}

/// `images.config.openshift.io` `cluster`: only the registry lists matter here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ImageSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    #[serde(default)]
    pub registry_sources: RegistrySources,
    /// `additionalTrustedCA`: a ConfigMap in `openshift-config` of registry CAs.
    #[serde(
        default,
        rename = "additionalTrustedCA",
        skip_serializing_if = "Option::is_none"
    )]
    pub additional_trusted_ca: Option<ConfigMapName>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigMapName {
    #[serde(default)]
    pub name: String,
}

#[cfg(test)]
mod image_tests {
    #[test]
    fn the_image_cr_names_its_registry_cas() {
        let image: super::Image =
            serde_json::from_str(r#"{"spec": {"additionalTrustedCA": {"name": "registry-cas"}}}"#)
                .unwrap();
        assert_eq!(
            image.spec.additional_trusted_ca.unwrap().name,
            "registry-cas"
        );
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySources {
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub allowed_registries: Capped<MAX_REGISTRIES>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub blocked_registries: Capped<MAX_REGISTRIES>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub insecure_registries: Capped<MAX_REGISTRIES>,
}

/// One mirror rule of an ImageDigestMirrorSet / ImageTagMirrorSet (`imageDigestMirrors[]`,
/// `imageTagMirrors[]`) or an ImageContentSourcePolicy (`repositoryDigestMirrors[]`, which
/// has no `mirrorSourcePolicy`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorRule {
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// `AllowContactingSource` (default) or `NeverContactSource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_source_policy: Option<String>,
}

/// `imagedigestmirrorsets.config.openshift.io`: mirrors used for pulls by digest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageDigestMirrorSet {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DigestMirrorSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestMirrorSpec {
    #[serde(default)]
    pub image_digest_mirrors: Vec<MirrorRule>,
}

/// `imagetagmirrorsets.config.openshift.io`: mirrors used for pulls by tag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageTagMirrorSet {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TagMirrorSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagMirrorSpec {
    #[serde(default)]
    pub image_tag_mirrors: Vec<MirrorRule>,
}

/// `imagecontentsourcepolicies.operator.openshift.io` (v1alpha1, deprecated for IDMS):
/// digest mirrors that can never block the source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageContentSourcePolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ContentSourceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentSourceSpec {
    #[serde(default)]
    pub repository_digest_mirrors: Vec<MirrorRule>,
}

/// `clusterversions.config.openshift.io` `version`: the payload image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterVersion {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: ClusterVersionStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterVersionStatus {
    #[serde(default)]
    pub desired: Option<Release>,
    /// Newest first; an entry is `Completed` once every operator runs that version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<UpdateHistory>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateHistory {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub version: String,
}

impl ClusterVersion {
    /// The version the whole cluster runs: the newest completed update, else the desired
    /// one (a cluster still installing has no completed entry). During an upgrade this is
    /// the old version until the last operator, the MCO among them, has moved.
    pub fn current_version(&self) -> Option<&str> {
        self.status
            .history
            .iter()
            .find(|h| h.state == "Completed")
            .map(|h| h.version.as_str())
            .or_else(|| self.status.desired.as_ref().map(|d| d.version.as_str()))
            .filter(|v| !v.is_empty())
    }
}

/// `featuregates.config.openshift.io` `cluster`: which gates each payload version enables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureGate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: FeatureGateStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureGateStatus {
    #[serde(default)]
    pub feature_gates: Vec<FeatureGateDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureGateDetails {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub enabled: Vec<FeatureGateName>,
    #[serde(default)]
    pub disabled: Vec<FeatureGateName>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureGateName {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Release {
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineConfigPool {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PoolSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    #[serde(default)]
    pub machine_config_selector: Option<LabelSelector>,
    /// The nodes of the pool (read for the running-images index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Kubernetes label-selector semantics; an empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineConfig {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: MachineConfigSpec,
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineConfigSpec {
    #[serde(default)]
    pub config: IgnitionConfig,
    #[serde(flatten)]
    pub other: Extra,
}

/// An Ignition config with only `storage.files` typed; everything else is carried through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IgnitionConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignition: Option<IgnitionMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IgnitionMeta {
    #[serde(default)]
    pub version: String,
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Storage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<IgnitionFile>>,
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IgnitionFile {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<FileContents>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileContents {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Shared: pools with the same file share one copy (a policy.json data URL can be
    /// megabytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
    #[serde(flatten)]
    pub other: Extra,
}

impl MachineConfig {
    pub fn files(&self) -> &[IgnitionFile] {
        self.spec
            .config
            .storage
            .as_ref()
            .and_then(|s| s.files.as_deref())
            .unwrap_or(&[])
    }

    /// Points every file source equal to one of `others`' at that copy: the pools'
    /// generated MachineConfigs usually carry the same policy.json, megabytes each.
    pub fn share_sources<'a>(&mut self, others: impl Iterator<Item = &'a MachineConfig>) {
        let mut known: Vec<Arc<str>> = others
            .flat_map(|mc| mc.files())
            .filter_map(|f| f.contents.as_ref()?.source.clone())
            .collect();
        let files = self
            .spec
            .config
            .storage
            .as_mut()
            .and_then(|s| s.files.as_mut());
        for file in files.into_iter().flatten() {
            let Some(source) = file.contents.as_mut().and_then(|c| c.source.as_mut()) else {
                continue;
            };
            match known.iter().find(|k| **k == *source) {
                Some(same) => *source = Arc::clone(same),
                None => known.push(Arc::clone(source)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 780,000 one-letter scopes: 256 stored, all counted, the rest never allocated.
    #[test]
    fn scopes_past_the_crds_limit_are_counted_not_stored() {
        let mut text = String::from(r#"{"scopes":["#);
        for i in 0..780_000 {
            text.push_str(if i == 0 { r#""a""# } else { r#","a""# });
        }
        text.push_str(r#"],"policy":{},"extra":1}"#);
        let spec: CipSpec = serde_json::from_str(&text).unwrap();
        let scopes = spec.scopes.as_ref().unwrap();
        assert_eq!((scopes.len(), scopes.total()), (MAX_SCOPES, 780_000));
        assert!(spec.policy.is_some());
        assert_eq!(spec.unknown.keys().collect::<Vec<_>>(), ["extra"]);
        // Past the limit, an item of another type is counted, not checked.
        let mixed: Capped<2> = serde_json::from_str(r#"["a","b",3,{}]"#).unwrap();
        assert_eq!((mixed.len(), mixed.total()), (2, 4));
        assert!(serde_json::from_str::<Capped<2>>(r#"[1]"#).is_err());
        assert_eq!(serde_json::to_string(&mixed).unwrap(), r#"["a","b"]"#);
    }
}
