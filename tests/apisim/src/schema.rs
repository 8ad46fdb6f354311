//! What the API server does to a custom resource before storing it: prune unknown fields,
//! apply defaults, check the structural schema and run the `x-kubernetes-validations` CEL
//! rules, with errors worded as apimachinery's field errors.

use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex};

use kube::core::cel::{validate_compiled, ErrorKind};
use regex::Regex;
use serde_json::{json, Map, Value};

use crate::resources::Schema;

/// One field error: the field path and the body apimachinery prints after it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    /// The cause type (`FieldValueInvalid`, `FieldValueRequired`, ...).
    pub reason: &'static str,
    pub body: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

/// A value as apimachinery's `ErrorBody` prints it.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(_) => "\"array\"".into(),
        Value::Object(_) => "\"object\"".into(),
    }
}

pub fn invalid(field: &str, value: &Value, detail: &str) -> FieldError {
    FieldError {
        field: field.into(),
        reason: "FieldValueInvalid",
        body: format!("Invalid value: {}: {detail}", show(value)),
    }
}

pub fn required(field: &str) -> FieldError {
    FieldError {
        field: field.into(),
        reason: "FieldValueRequired",
        body: "Required value".into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == json!(true)
}

/// Removes fields the schema does not declare, returning their paths, and nulls where the
/// schema does not allow them.
pub fn prune(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let root = path.is_empty();
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props.and_then(|p| p.get(&key)).or(additional);
                match sub {
                    Some(sub) => {
                        let v = map.get_mut(&key).expect("key listed above");
                        if v.is_null() && sub["nullable"] != json!(true) {
                            map.remove(&key);
                        } else {
                            prune(sub, v, &child(path, &key), unknown);
                        }
                    }
                    None if preserves(schema)
                        || schema["x-kubernetes-embedded-resource"] == json!(true) => {}
                    None => {
                        map.remove(&key);
                        unknown.push(child(path, &key));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(sub, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fills in schema defaults for absent fields.
pub fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, sub) in schema["properties"].as_object().into_iter().flatten() {
                if !map.contains_key(key) {
                    if let Some(d) = sub.get("default") {
                        map.insert(key.clone(), d.clone());
                    }
                }
                if let Some(v) = map.get_mut(key) {
                    default(sub, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                items.iter_mut().for_each(|i| default(sub, i));
            }
        }
        _ => {}
    }
}

fn type_ok(schema: &Value, v: &Value) -> bool {
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        return v.is_string() || v.is_i64() || v.is_u64();
    }
    match schema["type"].as_str() {
        None => true,
        Some("number") => v.is_number(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some(t) => t == type_name(v),
    }
}

/// Checks types, enums, required fields, lengths, patterns and list-type sets.
pub fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if value.is_null() && schema["nullable"] == json!(true) {
        return;
    }
    if !type_ok(schema, value) {
        let want = schema["type"].as_str().unwrap_or("integer or string");
        let got = type_name(value);
        errors.push(FieldError {
            field: path.into(),
            reason: "FieldValueTypeInvalid",
            body: format!(
                "Invalid value: \"{got}\": {path} in body must be of type {want}: \"{got}\""
            ),
        });
        return;
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            let supported: Vec<String> = options.iter().map(show).collect();
            errors.push(FieldError {
                field: path.into(),
                reason: "FieldValueNotSupported",
                body: format!(
                    "Unsupported value: {}: supported values: {}",
                    show(value),
                    supported.join(", ")
                ),
            });
        }
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64().filter(|m| len > *m) {
                let unit = if max == 1 { "byte" } else { "bytes" };
                errors.push(FieldError {
                    field: path.into(),
                    reason: "FieldValueTooLong",
                    body: format!("Too long: may not be more than {max} {unit}"),
                });
            }
            if let Some(min) = schema["minLength"].as_u64().filter(|m| len < *m) {
                errors.push(invalid(
                    path,
                    value,
                    &format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(pattern) = schema["pattern"].as_str() {
                match compiled(pattern) {
                    Ok(re) if !re.is_match(s) => errors.push(invalid(
                        path,
                        value,
                        &format!("{path} in body should match '{pattern}'"),
                    )),
                    Ok(_) => {}
                    Err(e) => errors.push(invalid(path, value, &format!("bad pattern: {e}"))),
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = schema["maxItems"].as_u64().filter(|m| n > *m) {
                errors.push(FieldError {
                    field: path.into(),
                    reason: "FieldValueTooMany",
                    body: format!("Too many: {n}: must have at most {max} items"),
                });
            }
            if let Some(min) = schema["minItems"].as_u64().filter(|m| n < *m) {
                errors.push(invalid(
                    path,
                    &json!(n),
                    &format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(sub) = schema.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    check(sub, item, &format!("{path}[{i}]"), errors);
                }
            }
            if schema["x-kubernetes-list-type"] == json!("set") {
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(item.to_string()) {
                        errors.push(FieldError {
                            field: format!("{path}[{i}]"),
                            reason: "FieldValueDuplicate",
                            body: format!("Duplicate value: {}", show(item)),
                        });
                    }
                }
            }
        }
        Value::Object(map) => {
            for req in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = req.as_str().filter(|r| !map.contains_key(*r)) {
                    errors.push(required(&child(path, r)));
                }
            }
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, v) in map {
                if path.is_empty() && key == "metadata" {
                    continue;
                }
                if let Some(sub) = props.and_then(|p| p.get(key)).or(additional) {
                    check(sub, v, &child(path, key), errors);
                }
            }
        }
        _ => {}
    }
}

/// The schema type at a CEL error's field path, which the API server prints as the value.
fn type_at(schema: &Value, path: &str) -> String {
    let mut s = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexed) = match part.find('[') {
            Some(i) => (&part[..i], true),
            None => (part, false),
        };
        s = &s["properties"][name];
        if indexed {
            s = &s["items"];
        }
    }
    s["type"].as_str().unwrap_or("object").to_string()
}

const NAME_RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Schema patterns compiled once, as the API server compiles a CRD's schema once.
fn compiled(pattern: &str) -> Result<Regex, regex::Error> {
    static CACHE: LazyLock<Mutex<HashMap<String, Regex>>> = LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(re) = cache.get(pattern) {
        return Ok(re.clone());
    }
    let re = Regex::new(pattern)?;
    cache.insert(pattern.to_string(), re.clone());
    Ok(re)
}

/// The value at an apimachinery field path (`spec.scopes[0]`), if any.
fn value_at<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            cur = cur.get(key)?;
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            cur = cur.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(cur)
}

/// Everything but metadata and status: what a status write leaves as it was.
fn without_meta_and_status(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// The object's name, as every custom resource's is checked.
pub fn check_name(object: &Value) -> Vec<FieldError> {
    let name = &object["metadata"]["name"];
    let Some(text) = name.as_str().filter(|n| !n.is_empty()) else {
        return vec![FieldError {
            field: "metadata.name".into(),
            reason: "FieldValueRequired",
            body: "Required value: name or generateName is required".into(),
        }];
    };
    static NAME: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
            .expect("constant regex")
    });
    if text.len() > 253 || !NAME.is_match(text) {
        return vec![invalid("metadata.name", name, NAME_RULE)];
    }
    Vec::new()
}

/// Everything the API server checks on a custom resource, in its order: metadata, the
/// structural schema, then the CEL rules unless a type error blocks them. On an update,
/// errors on values the update leaves unchanged are dropped, as the API server's
/// validation ratcheting (CRDValidationRatcheting, GA in 1.33) does: a missing required
/// field counts as a change of the object that should hold it; blocking is decided after
/// ratcheting; a write that changes nothing outside metadata and status (a status write)
/// skips the rules of an unchanged spec altogether.
pub fn validate(schema: &Schema, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = check_name(object);
    check(&schema.openapi, object, "", &mut errors);
    ratchet(&mut errors, object, old);
    // apiextensions-apiserver's hasBlockingErr: the object lacks the shape the rules
    // were written for.
    let blocked = errors.iter().any(|e| {
        matches!(
            e.reason,
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    });
    if blocked {
        errors.push(FieldError {
            field: "<nil>".into(),
            reason: "FieldValueInvalid",
            body: format!("Invalid value: null: {CEL_NOT_CHECKED}"),
        });
        return errors;
    }
    let mut rules = cel_errors(schema, object, old);
    ratchet(&mut rules, object, old);
    errors.extend(rules);
    errors
}

/// The API server's note when a schema error keeps the CEL rules from running.
pub const CEL_NOT_CHECKED: &str =
    "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

fn ratchet(errors: &mut Vec<FieldError>, object: &Value, old: Option<&Value>) {
    let Some(old) = old else {
        return;
    };
    errors.retain(|e| {
        let at = if e.reason == "FieldValueRequired" && !e.body.contains(':') {
            e.field
                .rsplit_once('.')
                .map(|(parent, _)| parent)
                .unwrap_or("")
        } else {
            e.field.as_str()
        };
        e.field.starts_with("metadata")
            || e.field == "<nil>"
            || value_at(object, at) != value_at(old, at)
    });
}

fn cel_errors(schema: &Schema, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let status_rules = schema.openapi["properties"]["status"]
        .to_string()
        .contains("x-kubernetes-validations");
    let spec_unchanged =
        old.is_some_and(|old| without_meta_and_status(old) == without_meta_and_status(object));
    if spec_unchanged && !status_rules {
        return errors;
    }
    if let Err(failures) = validate_compiled(&schema.cel, object, old) {
        for f in failures.iter() {
            let field = if f.field_path.is_empty() {
                "<nil>".to_string()
            } else {
                f.field_path.clone()
            };
            let (reason, body) = match (f.kind.clone(), f.reason.as_deref()) {
                (ErrorKind::ValidationFailure, Some("FieldValueForbidden")) => {
                    ("FieldValueForbidden", format!("Forbidden: {}", f.message))
                }
                (ErrorKind::ValidationFailure, Some("FieldValueRequired")) => (
                    "FieldValueRequired",
                    format!("Required value: {}", f.message),
                ),
                _ => (
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: \"{}\": {}",
                        type_at(&schema.openapi, &f.field_path),
                        f.message
                    ),
                ),
            };
            errors.push(FieldError {
                field,
                reason,
                body,
            });
        }
    }
    errors
}

/// The 422 Status for a list of field errors, as `apierrors.NewInvalid` builds it.
pub fn invalid_status(
    qualified_kind: &str,
    group: &str,
    kind: &str,
    name: &str,
    errors: &[FieldError],
) -> Value {
    let mut unique: Vec<String> = Vec::new();
    for e in errors {
        let s = e.to_string();
        if !unique.contains(&s) {
            unique.push(s);
        }
    }
    let joined = if unique.len() == 1 {
        unique[0].clone()
    } else {
        format!("[{}]", unique.join(", "))
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field}))
        .collect();
    let mut details = Map::new();
    details.insert("name".into(), json!(name));
    if !group.is_empty() {
        details.insert("group".into(), json!(group));
    }
    details.insert("kind".into(), json!(kind));
    details.insert("causes".into(), json!(causes));
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("{qualified_kind} {name:?} is invalid: {joined}"),
        "reason": "Invalid",
        "details": details,
        "code": 422
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structural_errors_are_worded_like_apimachinery() {
        let schema = json!({"type": "object", "required": ["spec"], "properties": {
            "spec": {"type": "object", "required": ["policy"], "properties": {
                "scopes": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "set",
                           "items": {"type": "string", "maxLength": 5, "pattern": "^[a-z.]+$"}},
                "type": {"type": "string", "enum": ["A", "B"]},
                "policy": {"type": "object"}
            }}
        }});
        let object = json!({"spec": {"scopes": ["a.b", "a.b", "TOOLONG"], "type": "C"}});
        let mut errors = Vec::new();
        check(&schema, &object, "", &mut errors);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "spec.policy: Required value",
                "spec.scopes: Too many: 3: must have at most 2 items",
                "spec.scopes[2]: Too long: may not be more than 5 bytes",
                "spec.scopes[2]: Invalid value: \"TOOLONG\": spec.scopes[2] in body should match '^[a-z.]+$'",
                "spec.scopes[1]: Duplicate value: \"a.b\"",
                "spec.type: Unsupported value: \"C\": supported values: \"A\", \"B\"",
            ]
        );
    }

    #[test]
    fn pruning_reports_unknown_fields_and_keeps_preserved_ones() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"},
                     "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
        }});
        let mut v = json!({"metadata": {"name": "x"}, "spec": {"a": "1", "b": 2, "free": {"z": 1}}, "extra": true});
        let mut unknown = Vec::new();
        prune(&schema, &mut v, "", &mut unknown);
        assert_eq!(unknown, ["spec.b", "extra"]);
        assert_eq!(
            v,
            json!({"metadata": {"name": "x"}, "spec": {"a": "1", "free": {"z": 1}}})
        );
    }
}
