//! Turning YAML/JSON text into the render inputs: multi-document files and `List`
//! objects, sorted by kind. Pure: the callers read the files.

use serde::Deserialize;
use serde_json::Value;

use crate::model::{
    ClusterImagePolicy, ClusterVersion, FeatureGate, Image, ImageContentSourcePolicy,
    ImageDigestMirrorSet, ImageTagMirrorSet, MachineConfig, MachineConfigPool, PolicyKind,
    CONFIG_GROUP,
};
use crate::render::Inputs;

/// One object and where it came from (`file` or `file#2` for later documents).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub source: String,
    pub value: Value,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    #[error("{origin}: not YAML or JSON: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {kind} {name:?} is given more than once (also in {first})")]
    Duplicate {
        origin: String,
        kind: String,
        name: String,
        first: String,
    },
    #[error("{origin}: {kind} {name:?}: {message}")]
    Object {
        origin: String,
        kind: String,
        name: String,
        message: String,
    },
}

/// Every object in one file's text, with `List` items flattened. The second and later
/// documents are named `file#N`, N counting the non-empty documents.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Document>, LoadError> {
    let mut out = Vec::new();
    let docs = crate::yaml::documents(text).map_err(|e| LoadError::Syntax {
        origin: source.to_string(),
        message: e.to_string(),
    })?;
    for (i, value) in docs.into_iter().enumerate() {
        let source = if i == 0 {
            source.to_string()
        } else {
            format!("{source}#{}", i + 1)
        };
        push_objects(&source, value, &mut out);
    }
    Ok(out)
}

fn push_objects(source: &str, value: Value, out: &mut Vec<Document>) {
    match value {
        Value::Null => {}
        Value::Object(mut map)
            if map
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List")) =>
        {
            if let Some(Value::Array(items)) = map.remove("items") {
                for item in items {
                    push_objects(source, item, out);
                }
            }
        }
        value => out.push(Document {
            source: source.to_string(),
            value,
        }),
    }
}

pub fn kind_of(value: &Value) -> (&str, &str) {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    (api, kind)
}

pub fn name_of(value: &Value) -> &str {
    value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn namespace_of(value: &Value) -> Option<&str> {
    value.pointer("/metadata/namespace").and_then(Value::as_str)
}

/// A ClusterImagePolicy or an ImagePolicy of `config.openshift.io`.
pub fn policy_kind_of(value: &Value) -> Option<PolicyKind> {
    let (api, kind) = kind_of(value);
    (api.split('/').next() == Some(CONFIG_GROUP))
        .then(|| PolicyKind::from_kind(kind))
        .flatten()
}

/// An object's key among its kind: `namespace/name` where it has a namespace.
pub fn key_of(value: &Value) -> String {
    match namespace_of(value) {
        Some(ns) => format!("{ns}/{}", name_of(value)),
        None => name_of(value).to_string(),
    }
}

/// What the loader found besides the inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub inputs: Inputs,
    /// Policy documents that do not decode at all (or an ImagePolicy without its
    /// namespace): (source, name, message).
    pub undecodable: Vec<(String, String, String)>,
    /// Objects of other kinds, or singletons with another name, left out.
    pub ignored: Vec<String>,
    /// Files passed over, and why (not a regular file, a symlink loop, too deep).
    pub skipped: Vec<String>,
}

/// Sorts documents into render inputs. A ClusterImagePolicy that does not decode is
/// reported, not fatal; an Image, ClusterVersion, pool or MachineConfig that does not
/// decode makes the whole input unusable.
pub fn load(documents: &[Document]) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    // A second copy of a cluster object (a leftover file, a ConfigMap's `..data`) would
    // silently replace the first: refused. Policies are refused by `render::plan`.
    let mut seen: std::collections::HashMap<(&str, String), &str> = Default::default();
    for doc in documents {
        let (_, kind) = kind_of(&doc.value);
        let name = name_of(&doc.value).to_string();
        let cluster_object = matches!(
            kind,
            "Image"
                | "ClusterVersion"
                | "FeatureGate"
                | "MachineConfigPool"
                | "MachineConfig"
                | "ImageDigestMirrorSet"
                | "ImageTagMirrorSet"
                | "ImageContentSourcePolicy"
        );
        if cluster_object {
            if let Some(first) = seen.insert((kind, name.clone()), &doc.source) {
                return Err(LoadError::Duplicate {
                    origin: doc.source.clone(),
                    kind: kind.to_string(),
                    name,
                    first: first.to_string(),
                });
            }
        }
        let fail = |e: serde_json::Error| LoadError::Object {
            origin: doc.source.clone(),
            kind: kind.to_string(),
            name: name.clone(),
            message: e.to_string(),
        };
        match kind {
            "ClusterImagePolicy" | "ImagePolicy" if policy_kind_of(&doc.value).is_some() => {
                match serde_path_to_error::deserialize::<_, ClusterImagePolicy>(&doc.value) {
                    Ok(p) if kind == "ClusterImagePolicy" => loaded.inputs.policies.push(p.into()),
                    // Its namespace names its file: without one there is nothing to write.
                    Ok(p) if p.namespace().is_empty() => loaded.undecodable.push((
                        doc.source.clone(),
                        name,
                        "metadata.namespace: an ImagePolicy needs its namespace".into(),
                    )),
                    Ok(p) => loaded.inputs.image_policies.push(p.into()),
                    Err(e) => loaded.undecodable.push((
                        doc.source.clone(),
                        name,
                        format!("{}: {}", e.path(), e.inner()),
                    )),
                }
            }
            "ImageDigestMirrorSet" => loaded
                .inputs
                .digest_mirror_sets
                .push(ImageDigestMirrorSet::deserialize(&doc.value).map_err(fail)?),
            "ImageTagMirrorSet" => loaded
                .inputs
                .tag_mirror_sets
                .push(ImageTagMirrorSet::deserialize(&doc.value).map_err(fail)?),
            "ImageContentSourcePolicy" => loaded
                .inputs
                .content_source_policies
                .push(ImageContentSourcePolicy::deserialize(&doc.value).map_err(fail)?),
            "Image" if name == "cluster" => {
                loaded.inputs.image = Some(Image::deserialize(&doc.value).map_err(fail)?);
            }
            "ClusterVersion" if name == "version" => {
                loaded.inputs.cluster_version =
                    Some(ClusterVersion::deserialize(&doc.value).map_err(fail)?);
            }
            "FeatureGate" if name == "cluster" => {
                loaded.inputs.feature_gate =
                    Some(FeatureGate::deserialize(&doc.value).map_err(fail)?);
            }
            "MachineConfigPool" => loaded
                .inputs
                .pools
                .push(MachineConfigPool::deserialize(&doc.value).map_err(fail)?),
            "MachineConfig" => loaded
                .inputs
                .machine_configs
                .push(MachineConfig::deserialize(&doc.value).map_err(fail)?),
            _ => loaded
                .ignored
                .push(format!("{}: {kind} {name:?}", doc.source)),
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_and_lists() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: config.openshift.io/v1, kind: ClusterImagePolicy, metadata: {name: a}, spec: {scopes: [x.io]}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n---\n---\n{\"apiVersion\": \"config.openshift.io/v1\", \"kind\": \"Image\", \"metadata\": {\"name\": \"cluster\"}, \"spec\": {}}\n";
        let docs = parse_documents("f.yaml", text).unwrap();
        assert_eq!(docs.len(), 3);
        // Documents are counted without the empty ones.
        assert_eq!(docs[2].source, "f.yaml#2");
        let loaded = load(&docs).unwrap();
        assert_eq!(loaded.inputs.policies.len(), 1);
        assert!(loaded.inputs.image.is_some());
        assert_eq!(loaded.ignored, ["f.yaml: ConfigMap \"c\""]);
    }

    #[test]
    fn bad_yaml_and_bad_objects_name_the_source() {
        let err = parse_documents("bad.yaml", "a: [").unwrap_err();
        assert!(err.to_string().starts_with("bad.yaml: not YAML or JSON"));
        let docs = parse_documents("mc.yaml", "{apiVersion: machineconfiguration.openshift.io/v1, kind: MachineConfig, metadata: {name: m}, spec: {config: {storage: {files: 3}}}}").unwrap();
        let err = load(&docs).unwrap_err().to_string();
        assert!(
            err.starts_with("mc.yaml: MachineConfig \"m\": invalid type"),
            "{err}"
        );
        let docs = parse_documents("p.yaml", "{apiVersion: config.openshift.io/v1, kind: ClusterImagePolicy, metadata: {name: p}, spec: {scopes: 3}}").unwrap();
        let loaded = load(&docs).unwrap();
        assert_eq!(loaded.undecodable[0].1, "p");
        assert!(
            loaded.undecodable[0]
                .2
                .starts_with("spec.scopes: invalid type"),
            "{:?}",
            loaded.undecodable
        );
    }
}
