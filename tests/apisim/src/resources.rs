//! The resource types the simulator serves: built-ins the product and kubectl touch, and
//! whatever CustomResourceDefinitions are loaded or created.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::core::cel::{compile_schema, CompiledSchema};
use serde_json::{json, Value};

/// A served version's schema: the raw OpenAPI for structural checks, compiled for CEL.
pub struct Schema {
    pub openapi: Value,
    pub cel: CompiledSchema,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

#[derive(Debug, Clone)]
pub struct Version {
    pub name: String,
    pub storage: bool,
    pub schema: Option<Arc<Schema>>,
}

#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// Custom resources refuse strategic merge patches and unconditional updates.
    pub custom: bool,
    pub versions: Vec<Version>,
}

impl ResourceType {
    /// `plural.group`, the name errors use.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Kind.group`, the name 422 errors use.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }
}

const BUILTINS: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "namespaces", "Namespace", false),
    ("", "v1", "events", "Event", true),
    ("", "v1", "serviceaccounts", "ServiceAccount", true),
    ("", "v1", "services", "Service", true),
    ("", "v1", "secrets", "Secret", true),
    ("", "v1", "configmaps", "ConfigMap", true),
    ("apps", "v1", "deployments", "Deployment", true),
    (
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
    ("events.k8s.io", "v1", "events", "Event", true),
    ("coordination.k8s.io", "v1", "leases", "Lease", true),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    ),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicies",
        "ValidatingAdmissionPolicy",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicybindings",
        "ValidatingAdmissionPolicyBinding",
        false,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    ),
];

pub fn builtins() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|(group, version, plural, kind, namespaced)| ResourceType {
            group: group.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            kind: kind.to_string(),
            short_names: Vec::new(),
            categories: Vec::new(),
            namespaced: *namespaced,
            status_subresource: matches!(*plural, "deployments" | "poddisruptionbudgets"),
            custom: false,
            versions: vec![Version {
                name: version.to_string(),
                storage: true,
                schema: None,
            }],
        })
        .collect()
}

/// The resource type a CustomResourceDefinition declares, with its served versions.
pub fn from_crd(crd: &Value) -> Result<ResourceType, String> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let text = |v: &Value, what: &str| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("CustomResourceDefinition: {what} is required"))
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let kind = text(&names["kind"], "spec.names.kind")?;
    let mut status_subresource = false;
    let mut versions = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"] != json!(true) {
            continue;
        }
        status_subresource |= v["subresources"]["status"].is_object();
        let openapi = v["schema"]["openAPIV3Schema"].clone();
        let schema = (!openapi.is_null()).then(|| {
            let cel = compile_schema(&openapi);
            Arc::new(Schema { openapi, cel })
        });
        versions.push(Version {
            name: text(&v["name"], "spec.versions[].name")?,
            storage: v["storage"] == json!(true),
            schema,
        });
    }
    Ok(ResourceType {
        group: text(&spec["group"], "spec.group")?,
        plural: text(&names["plural"], "spec.names.plural")?,
        singular: names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase()),
        kind,
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        namespaced: spec["scope"] == json!("Namespaced"),
        status_subresource,
        custom: true,
        versions,
    })
}

/// Every served type, found by group and plural.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    types: BTreeMap<(String, String), Arc<ResourceType>>,
}

impl Registry {
    pub fn with_builtins() -> Registry {
        let mut r = Registry::default();
        for t in builtins() {
            r.install(t);
        }
        r
    }

    pub fn install(&mut self, t: ResourceType) {
        self.types
            .insert((t.group.clone(), t.plural.clone()), Arc::new(t));
    }

    pub fn remove(&mut self, group: &str, plural: &str) {
        self.types.remove(&(group.to_string(), plural.to_string()));
    }

    pub fn get(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.types.values()
    }

    /// Groups in name order, each with its versions (storage version first).
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.values() {
            let versions = groups.entry(t.group.clone()).or_default();
            let mut ordered: Vec<&Version> = t.versions.iter().collect();
            ordered.sort_by_key(|v| !v.storage);
            for v in ordered {
                if !versions.contains(&v.name) {
                    versions.push(v.name.clone());
                }
            }
        }
        groups
    }
}
