//! YAML in and out, with serde-saphyr (serde_yaml is unmaintained upstream). The output
//! options are fixed here because rendered MachineConfigs are compared byte for byte
//! (goldens, GitOps diffs): block style with lists at their key's indentation, no folded
//! or literal scalars (a long `data:` URL stays one plain line), no `%YAML` directive.
//!
//! Who reads the output decides the quoting: `oc`/`kubectl` parse YAML with a yaml.v2
//! fork (YAML 1.1 words such as `on` and `no` are booleans there). YAML 1.2 quoting keeps
//! strings such as `3.2.0` plain, as serde_yaml did; a document holding any string that
//! yaml.v2 would not read back as a string is written with YAML 1.1 quoting instead.

use serde::Serialize;
use serde_json::Value;

pub use serde_saphyr::Error;

/// Every document of a (multi-document) YAML text; empty documents are skipped.
pub fn documents(text: &str) -> Result<Vec<Value>, Error> {
    serde_saphyr::from_multiple(text)
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
}

pub fn to_string<T: Serialize>(value: &T) -> Result<String, EncodeError> {
    let value = serde_json::to_value(value)?;
    let yaml_12 = !any_string(&value, &|s| !crate::registries_d::resolves_as_string(s));
    Ok(serde_saphyr::to_string_with_options(
        &value,
        options(yaml_12),
    )?)
}

fn any_string(value: &Value, hit: &impl Fn(&str) -> bool) -> bool {
    match value {
        Value::String(s) => hit(s),
        Value::Array(items) => items.iter().any(|v| any_string(v, hit)),
        Value::Object(map) => map.iter().any(|(k, v)| hit(k) || any_string(v, hit)),
        _ => false,
    }
}

fn options(yaml_12: bool) -> serde_saphyr::SerializerOptions {
    serde_saphyr::ser_options! {
        indent_step: 2,
        compact_list_indent: true,
        prefer_block_scalars: false,
        yaml_12: yaml_12,
        no_lang_directive: true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn strings_keep_their_type_for_yaml_v2_readers() {
        let plain = super::to_string(&json!({"version": "3.2.0", "mode": 420})).unwrap();
        assert_eq!(plain, "version: 3.2.0\nmode: 420\n");
        let words = super::to_string(&json!({"role": "on", "version": "3.2.0"})).unwrap();
        let back: serde_json::Value = serde_saphyr::from_str(&words).unwrap();
        assert_eq!(back, json!({"role": "on", "version": "3.2.0"}));
        assert!(
            words.contains("role: 'on'") || words.contains("role: \"on\""),
            "{words}"
        );
    }
}
