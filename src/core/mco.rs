//! Living beside the machine-config-operator: which MachineConfigs are the
//! MCO's, whether the MCO renders ClusterImagePolicies itself, and whether its own
//! output already carries what we wrote. Pure functions over the watched objects.
//!
//! Facts they rest on (machine-config-operator, `pkg/controller/container-runtime-config`
//! and `pkg/controller/render`):
//! - The ContainerRuntimeConfig controller writes `99-<pool>-generated-registries` with
//!   the annotation `machineconfiguration.openshift.io/generated-by-controller-version`
//!   and an ownerReference to Image `cluster`, and rewrites it from its own inputs on
//!   every sync (comparing raw bytes), so a second writer never converges with it.
//! - The render controller's `rendered-<pool>-<hash>` MachineConfigs are owned by their
//!   pool and carry no role label: they are the merge of every other MachineConfig,
//!   our own included, and never an input.
//! - The MCO renders ClusterImagePolicies only where `SigstoreImageVerification` is
//!   enabled for the version it runs (FeatureGate `cluster`, `status.featureGates[]`).

use std::collections::{BTreeMap, BTreeSet};

use crate::ignition::{self, POLICY_JSON_PATH, SIGSTORE_YAML_PATH};
use crate::inputs::Inputs;
use crate::model::{ClusterVersion, FeatureGate, MachineConfig, ROLE_LABEL};
use crate::names as render;
use crate::policy::Policy;

pub const GENERATED_BY_ANNOTATION: &str =
    "machineconfiguration.openshift.io/generated-by-controller-version";
pub const SIGSTORE_GATE: &str = "SigstoreImageVerification";

/// Written by the MCO: its annotation, or an ownerReference to Image `cluster`.
pub fn owned_by_mco(mc: &MachineConfig) -> bool {
    mc.metadata
        .annotations
        .contains_key(GENERATED_BY_ANNOTATION)
        || mc.metadata.owner_references.iter().any(|o| {
            o.kind == "Image"
                && o.name == "cluster"
                && o.api_version.starts_with("config.openshift.io/")
        })
}

/// The render controller's output for a pool (owned by the MachineConfigPool).
pub fn rendered_by_mco(mc: &MachineConfig) -> bool {
    mc.metadata
        .owner_references
        .iter()
        .any(|o| o.kind == "MachineConfigPool")
}

/// What FeatureGate `cluster` says about `SigstoreImageVerification`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Enabled for this version: the MCO renders ClusterImagePolicies.
    Enabled(String),
    /// Disabled for this version, or not listed for it.
    Disabled(String),
    /// No FeatureGate `cluster` (or no FeatureGate API): not an OpenShift that renders.
    NoFeatureGate,
    /// A FeatureGate exists but nothing says which version the cluster runs.
    UnknownVersion,
}

impl Gate {
    pub fn mco_renders(&self) -> bool {
        matches!(self, Gate::Enabled(_))
    }

    /// For logs and /readyz.
    pub fn describe(&self) -> String {
        match self {
            Gate::Enabled(v) => format!("{SIGSTORE_GATE} is enabled for {v}"),
            Gate::Disabled(v) => format!("{SIGSTORE_GATE} is not enabled for {v}"),
            Gate::NoFeatureGate => "no FeatureGate cluster".into(),
            Gate::UnknownVersion => {
                "FeatureGate cluster found, but ClusterVersion names no version".into()
            }
        }
    }
}

/// The gate for the version the cluster runs ([`ClusterVersion::current_version`]).
pub fn sigstore_gate(feature_gate: Option<&FeatureGate>, cv: Option<&ClusterVersion>) -> Gate {
    let Some(fg) = feature_gate else {
        return Gate::NoFeatureGate;
    };
    let Some(version) = cv.and_then(ClusterVersion::current_version) else {
        return Gate::UnknownVersion;
    };
    let enabled = fg
        .status
        .feature_gates
        .iter()
        .filter(|d| d.version == version)
        .any(|d| d.enabled.iter().any(|g| g.name == SIGSTORE_GATE));
    if enabled {
        Gate::Enabled(version.to_string())
    } else {
        Gate::Disabled(version.to_string())
    }
}

/// The scopes a MachineConfig puts on the nodes: the `docker` transport keys of its
/// policy.json that carry a `sigstoreSigned` requirement, and the keys of its
/// sigstore-registries.yaml. A scope counts only when it is in both.
pub fn verified_scopes(mc: &MachineConfig) -> BTreeSet<String> {
    let from_yaml = ignition::read_file(mc, SIGSTORE_YAML_PATH)
        .and_then(Result::ok)
        .map(|text| crate::registries_d::scopes(&text))
        .unwrap_or_default();
    signed_scopes(mc)
        .intersection(&from_yaml)
        .cloned()
        .collect()
}

/// Of `wanted`, the scopes `mco` does not carry yet ([`verified_scopes`]).
pub fn missing_scopes<'a>(mco: Option<&MachineConfig>, wanted: &'a [String]) -> Vec<&'a str> {
    let carried = mco.map(verified_scopes).unwrap_or_default();
    wanted
        .iter()
        .filter(|s| !carried.contains(s.as_str()))
        .map(String::as_str)
        .collect()
}

/// What the reconciler does on this cluster, and why: reconcile where the MCO does not
/// render policies, stand down (handing over) where it does, nothing without the
/// MachineConfig API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Duty {
    /// Write the MachineConfigs and the policies' status.
    Reconcile(String),
    /// The MCO renders policies: write nothing, hand over what we wrote before.
    StandDown(String),
    /// Nothing can be written here (no MachineConfig API).
    CannotRender(String),
}

impl Duty {
    pub const LABELS: [&'static str; 3] = ["reconcile", "stand_down", "cannot_render"];

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Duty::Reconcile(_) => Self::LABELS[0],
            Duty::StandDown(_) => Self::LABELS[1],
            Duty::CannotRender(_) => Self::LABELS[2],
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Duty::Reconcile(why) => format!("reconciling ({why})"),
            Duty::StandDown(why) => format!("standing down ({why})"),
            Duty::CannotRender(why) => format!("cannot render: {why}"),
        }
    }
}

/// `auto`: stand down where the MCO renders. `absent`: APIs the cluster does not serve.
pub fn duty(auto: bool, inputs: &Inputs, absent: &[&str]) -> Duty {
    let missing: Vec<&str> = ["machineconfigs", "machineconfigpools"]
        .into_iter()
        .filter(|api| absent.contains(api))
        .collect();
    if !missing.is_empty() {
        return Duty::CannotRender(format!(
            "the cluster serves no {} API (a hosted control plane or plain Kubernetes): no node configuration can be written from here; admission works",
            missing.join(" or ")
        ));
    }
    let gate = sigstore_gate(
        inputs.feature_gate.as_ref(),
        inputs.cluster_version.as_ref(),
    );
    if !auto {
        return Duty::Reconcile(format!("--mode full; {}", gate.describe()));
    }
    if gate.mco_renders() {
        Duty::StandDown(format!(
            "{}: the machine-config-operator renders ClusterImagePolicies itself",
            gate.describe()
        ))
    } else {
        Duty::Reconcile(format!(
            "{}: the machine-config-operator does not render ClusterImagePolicies",
            gate.describe()
        ))
    }
}

/// One pool's handover to the MCO after it started rendering policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub pool: String,
    /// Our MachineConfigs of the pool, to delete once the MCO carries every scope.
    pub ours: Vec<String>,
    /// Scopes we wrote, still named by a policy, that the MCO's MachineConfig lacks.
    pub waiting_for: Vec<String>,
}

impl Handover {
    pub fn ready(&self) -> bool {
        self.waiting_for.is_empty()
    }
}

/// For every pool where our MachineConfigs remain: whether the MCO's own
/// `99-<pool>-generated-registries` now carries every scope we wrote that a policy still
/// names (a scope no policy names any more protects nothing). Until it does, ours stay,
/// so that the nodes are never without verification.
pub fn handover(inputs: &Inputs) -> Vec<Handover> {
    let mut ours: BTreeMap<&str, Vec<&MachineConfig>> = BTreeMap::new();
    for mc in inputs.machine_configs.iter().filter(|m| render::is_ours(m)) {
        if let Some(pool) = mc.metadata.labels.get(ROLE_LABEL) {
            ours.entry(pool.as_str()).or_default().push(mc);
        }
    }
    let named: BTreeSet<&str> = inputs
        .policies
        .iter()
        .chain(&inputs.image_policies)
        .flat_map(|p| p.scopes())
        .map(String::as_str)
        .collect();
    ours.into_iter()
        .map(|(pool, mcs)| {
            let wrote: BTreeSet<String> = mcs.iter().flat_map(|m| written_scopes(m)).collect();
            let wanted: Vec<String> = wrote
                .into_iter()
                .filter(|s| named.contains(s.as_str()))
                .collect();
            let theirs = inputs
                .machine_configs
                .iter()
                .find(|m| m.metadata.name == render::registries_mc_name(pool) && owned_by_mco(m));
            let mut names: Vec<String> = mcs.iter().map(|m| m.metadata.name.clone()).collect();
            names.sort();
            Handover {
                pool: pool.to_string(),
                ours: names,
                waiting_for: missing_scopes(theirs, &wanted)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            }
        })
        .collect()
}

/// The scopes one of our MachineConfigs verifies: the keys of its sigstore-registries.yaml,
/// or the `docker` scopes of its policy.json that require a signature.
fn written_scopes(mc: &MachineConfig) -> BTreeSet<String> {
    let from_yaml = ignition::read_file(mc, SIGSTORE_YAML_PATH)
        .and_then(Result::ok)
        .map(|text| crate::registries_d::scopes(&text));
    from_yaml.unwrap_or_else(|| signed_scopes(mc))
}

/// The `docker` transport keys of a MachineConfig's policy.json with a signature
/// requirement.
fn signed_scopes(mc: &MachineConfig) -> BTreeSet<String> {
    ignition::read_file(mc, POLICY_JSON_PATH)
        .and_then(Result::ok)
        .and_then(|text| Policy::parse(&text).ok())
        .map(|p| {
            p.transports
                .get("docker")
                .into_iter()
                .flatten()
                .filter(|(_, reqs)| {
                    reqs.iter()
                        .any(|r| matches!(r, crate::policy::Requirement::SigstoreSigned(_)))
                })
                .map(|(scope, _)| scope.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        FeatureGateDetails, FeatureGateName, OwnerReference, Release, UpdateHistory,
    };

    fn mc(annotated: bool, owner: Option<&str>) -> MachineConfig {
        let mut mc = MachineConfig::default();
        if annotated {
            mc.metadata
                .annotations
                .insert(GENERATED_BY_ANNOTATION.into(), "abc".into());
        }
        if let Some(kind) = owner {
            mc.metadata.owner_references.push(OwnerReference {
                api_version: if kind == "Image" {
                    "config.openshift.io/v1".into()
                } else {
                    "machineconfiguration.openshift.io/v1".into()
                },
                kind: kind.into(),
                name: if kind == "Image" {
                    "cluster".into()
                } else {
                    "worker".into()
                },
                ..Default::default()
            });
        }
        mc
    }

    #[test]
    fn mco_marks() {
        assert!(owned_by_mco(&mc(true, None)));
        assert!(owned_by_mco(&mc(false, Some("Image"))));
        assert!(!owned_by_mco(&mc(false, None)));
        assert!(rendered_by_mco(&mc(true, Some("MachineConfigPool"))));
        assert!(!rendered_by_mco(&mc(true, Some("Image"))));
    }

    fn cv(desired: &str, completed: Option<&str>) -> ClusterVersion {
        let mut cv = ClusterVersion::default();
        cv.status.desired = Some(Release {
            image: "quay.io/openshift-release-dev/ocp-release@sha256:00".into(),
            version: desired.into(),
        });
        if desired != completed.unwrap_or(desired) {
            cv.status.history.push(UpdateHistory {
                state: "Partial".into(),
                version: desired.into(),
            });
        }
        if let Some(c) = completed {
            cv.status.history.push(UpdateHistory {
                state: "Completed".into(),
                version: c.into(),
            });
        }
        cv
    }

    fn fg(entries: &[(&str, bool)]) -> FeatureGate {
        let mut fg = FeatureGate::default();
        for (version, on) in entries {
            let gate = vec![FeatureGateName {
                name: SIGSTORE_GATE.into(),
            }];
            fg.status.feature_gates.push(FeatureGateDetails {
                version: version.to_string(),
                enabled: if *on { gate.clone() } else { Vec::new() },
                disabled: if *on { Vec::new() } else { gate },
            });
        }
        fg
    }

    #[test]
    fn the_gate_of_the_version_the_cluster_runs() {
        let gates = fg(&[("4.19.9", false), ("4.20.1", true)]);
        // Upgrading: the MCO may still be the old one, so the completed version counts.
        assert_eq!(
            sigstore_gate(Some(&gates), Some(&cv("4.20.1", Some("4.19.9")))),
            Gate::Disabled("4.19.9".into())
        );
        assert_eq!(
            sigstore_gate(Some(&gates), Some(&cv("4.20.1", Some("4.20.1")))),
            Gate::Enabled("4.20.1".into())
        );
        // Installing: no completed entry yet, the desired version.
        assert_eq!(
            sigstore_gate(Some(&gates), Some(&cv("4.20.1", None))),
            Gate::Enabled("4.20.1".into())
        );
        assert_eq!(
            sigstore_gate(None, Some(&cv("4.20.1", None))),
            Gate::NoFeatureGate
        );
        assert_eq!(sigstore_gate(Some(&gates), None), Gate::UnknownVersion);
        assert_eq!(
            sigstore_gate(Some(&fg(&[])), Some(&cv("4.18.2", None))),
            Gate::Disabled("4.18.2".into())
        );
    }
}
