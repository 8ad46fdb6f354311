//! The deployment manifests as kustomize renders them, and the RBAC rules they grant.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::paths::root;
use crate::upstream;

/// `kubectl kustomize` of an overlay under manifests/overlays.
pub async fn kustomize(overlay: &str) -> Vec<Value> {
    kustomize_dir(&format!("manifests/overlays/{overlay}")).await
}

/// `kubectl kustomize` of a directory (relative to the repository, or absolute).
pub async fn kustomize_dir(dir: &str) -> Vec<Value> {
    let out = tokio::process::Command::new(upstream::kubectl())
        .args([
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            dir,
        ])
        .current_dir(root())
        .output()
        .await
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    cip_core::yaml::documents(&text).unwrap()
}

pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} missing"))
}

/// A request or a permission: (namespace or "", group, resource[/subresource], verb).
pub type Access = (String, String, String, String);

/// What a set of RBAC rules allows, in `namespace` ("" for a ClusterRole's).
pub fn allowed(rules: &Value, namespace: &str) -> BTreeSet<Access> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        namespace.to_string(),
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                        verb.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    out
}
