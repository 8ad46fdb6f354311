//! Server-side apply: field ownership by manager, conflicts, and removal of fields a
//! manager stopped applying. Lists and scalars are owned whole (atomic), as the product's
//! fields are.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::store::Managed;

/// Leaf paths of an object, as `.spec.x` strings; identity metadata is nobody's.
pub fn leaves(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, path: String, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, sub) in m {
                    walk(sub, format!("{path}.{k}"), out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
    let mut out = BTreeSet::new();
    if let Some(m) = v.as_object() {
        for (k, sub) in m {
            match k.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    for part in ["labels", "annotations"] {
                        if let Some(inner) = sub.get(part) {
                            walk(inner, format!(".metadata.{part}"), &mut out);
                        }
                    }
                }
                _ => walk(sub, format!(".{k}"), &mut out),
            }
        }
    }
    out
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .skip(1)
        .try_fold(v, |v, k| v.as_object()?.get(k))
}

fn remove(v: &mut Value, path: &str) {
    let parts: Vec<&str> = path.split('.').skip(1).collect();
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    let mut cur = v;
    for p in parents {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(*last);
    }
}

fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Applies `applied` for `manager` onto `current`; Err names the conflicts when another
/// manager owns a field with a different value and `force` is not set.
pub fn apply(
    current: &Value,
    managed: &mut Managed,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, String> {
    let wanted = leaves(applied);
    let mut conflicts = Vec::new();
    for (other, owned) in managed.iter() {
        if other == manager {
            continue;
        }
        for path in owned.intersection(&wanted) {
            if at(current, path) != at(applied, path) {
                conflicts.push(format!("conflict with {other:?}: {path}"));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let n = conflicts.len();
        let noun = if n == 1 { "conflict" } else { "conflicts" };
        return Err(format!(
            "Apply failed with {n} {noun}: {}",
            conflicts.join(", ")
        ));
    }
    for (other, owned) in managed.iter_mut() {
        if other != manager {
            owned.retain(|p| !wanted.contains(p) || at(current, p) == at(applied, p));
        }
    }
    let mut result = current.clone();
    let previous = managed.remove(manager).unwrap_or_default();
    for path in previous.difference(&wanted) {
        if !managed.values().any(|o| o.contains(path)) {
            remove(&mut result, path);
        }
    }
    merge(&mut result, applied);
    managed.insert(manager.to_string(), wanted);
    Ok(result)
}

/// Records an update or patch: the writer now owns every field it changed.
pub fn record_update(old: &Value, new: &Value, managed: &mut Managed, manager: &str) {
    let before = leaves(old);
    let after = leaves(new);
    let changed: BTreeSet<String> = after
        .iter()
        .filter(|p| !before.contains(*p) || at(old, p) != at(new, p))
        .cloned()
        .collect();
    for owned in managed.values_mut() {
        owned.retain(|p| after.contains(p) && !changed.contains(p));
    }
    managed
        .entry(manager.to_string())
        .or_default()
        .extend(changed);
    managed.retain(|_, owned| !owned.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_owns_removes_and_conflicts() {
        let mut managed = Managed::new();
        let empty = json!({"metadata": {"name": "x"}});
        let a = apply(
            &empty,
            &mut managed,
            &json!({"spec": {"a": 1, "b": 2}}),
            "m1",
            false,
        )
        .unwrap();
        let a = apply(&a, &mut managed, &json!({"spec": {"a": 1}}), "m1", false).unwrap();
        assert_eq!(a["spec"], json!({"a": 1}));
        let err = apply(&a, &mut managed, &json!({"spec": {"a": 5}}), "m2", false).unwrap_err();
        assert_eq!(
            err,
            "Apply failed with 1 conflict: conflict with \"m1\": .spec.a"
        );
        let b = apply(&a, &mut managed, &json!({"spec": {"a": 5}}), "m2", true).unwrap();
        assert_eq!(b["spec"]["a"], 5);
        assert!(managed["m1"].is_empty());
    }
}
