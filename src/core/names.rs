//! The names and the label of the MachineConfigs this tool writes, shared by rendering
//! and by the handover beside the machine-config-operator.

use crate::model::MachineConfig;

/// Marks the MachineConfigs this tool created, so it only ever deletes its own.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "cip-webhook";

pub fn registries_mc_name(pool: &str) -> String {
    format!("99-{pool}-generated-registries")
}

pub fn imagepolicies_mc_name(pool: &str) -> String {
    format!("99-{pool}-generated-imagepolicies")
}

/// Ours, for policy.json where the MCO owns `99-<pool>-generated-registries`: it sorts
/// right after the MCO's, so it wins the merge on the nodes (the render controller merges
/// MachineConfigs in name order, the last file of a path winning).
pub fn registries_imagepolicies_mc_name(pool: &str) -> String {
    format!("99-{pool}-generated-registries-imagepolicies")
}

/// Carries our label.
pub fn is_ours(mc: &MachineConfig) -> bool {
    mc.metadata.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}
