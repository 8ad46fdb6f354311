//! The API server's own checks on `events.k8s.io/v1` Events (kubernetes'
//! `pkg/apis/core/validation/events.go`), so that an Event a real cluster would refuse is
//! refused here too. The rule that matters most: an Event about a cluster-scoped object
//! must live in `default` (or `kube-system`). Error paths use the internal field names
//! (`involvedObject`, `message`), as the API server reports them.

use serde_json::Value;

use crate::resources::ResourceType;
use crate::schema::{check_name, invalid, required, FieldError};

const INSTANCE_LIMIT: usize = 128;
const ACTION_LIMIT: usize = 128;
const REASON_LIMIT: usize = 128;
const NOTE_LIMIT: usize = 1024;

/// Fields an update may not change: (events.k8s.io name, internal name).
const IMMUTABLE: [(&str, &str); 13] = [
    ("regarding", "involvedObject"),
    ("reason", "reason"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("type", "type"),
    ("eventTime", "eventTime"),
    ("action", "action"),
    ("related", "related"),
    ("reportingController", "reportingController"),
    ("reportingInstance", "reportingInstance"),
];

fn text<'a>(event: &'a Value, field: &str) -> &'a str {
    event[field].as_str().unwrap_or_default()
}

fn qualified_name(s: &str) -> bool {
    let name = s.rsplit_once('/').map_or(s, |(_, n)| n);
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(ok)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The checks every write of an Event through `events.k8s.io/v1` gets.
fn common(event: &Value, errors: &mut Vec<FieldError>) {
    let namespace = event["metadata"]["namespace"].as_str().unwrap_or_default();
    let regarding_ns = event["regarding"]["namespace"].as_str().unwrap_or_default();
    if event["eventTime"].is_null() {
        errors.push(required("eventTime"));
    } else if regarding_ns.is_empty() && !matches!(namespace, "default" | "kube-system") {
        errors.push(invalid(
            "involvedObject.namespace",
            &Value::from(""),
            "does not match event.namespace",
        ));
    }
    let controller = text(event, "reportingController");
    if controller.is_empty() {
        errors.push(required("reportingController"));
    } else if !qualified_name(controller) {
        errors.push(invalid(
            "reportingController",
            &event["reportingController"],
            "must be a qualified name",
        ));
    }
    let limits = [
        ("reportingInstance", "reportingInstance", INSTANCE_LIMIT),
        ("action", "action", ACTION_LIMIT),
        ("reason", "reason", REASON_LIMIT),
    ];
    for (field, path, limit) in limits {
        let value = text(event, field);
        if value.is_empty() {
            errors.push(required(path));
        } else if value.len() > limit {
            errors.push(invalid(
                path,
                &Value::from(""),
                &format!("can have at most {limit} characters"),
            ));
        }
    }
    if text(event, "note").len() > NOTE_LIMIT {
        errors.push(invalid(
            "message",
            &Value::from(""),
            &format!("can have at most {NOTE_LIMIT} characters"),
        ));
    }
    if !event["series"].is_null() {
        if event["series"]["count"].as_i64().unwrap_or(0) < 2 {
            errors.push(invalid(
                "series.count",
                &Value::from(""),
                "should be at least 2",
            ));
        }
        if event["series"]["lastObservedTime"].is_null() {
            errors.push(required("series.lastObservedTime"));
        }
    }
}

/// Field errors for an Event written as `new` over `old`; empty for anything else.
pub fn validate(t: &ResourceType, new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if t.group != "events.k8s.io" || t.plural != "events" {
        return errors;
    }
    common(new, &mut errors);
    match old {
        None => {
            errors.extend(check_name(new));
            if !matches!(text(new, "type"), "Normal" | "Warning") {
                errors.push(invalid(
                    "type",
                    &Value::from(""),
                    &format!("has invalid value: {}", text(new, "type")),
                ));
            }
            for (field, path) in [
                ("deprecatedFirstTimestamp", "firstTimestamp"),
                ("deprecatedLastTimestamp", "lastTimestamp"),
                ("deprecatedCount", "count"),
                ("deprecatedSource", "source"),
            ] {
                if !new[field].is_null() {
                    errors.push(invalid(path, &Value::from(""), "needs to be unset"));
                }
            }
        }
        Some(old) => {
            for (field, path) in IMMUTABLE {
                if new[field] != old[field] {
                    errors.push(invalid(path, &new[field], "field is immutable"));
                }
            }
        }
    }
    errors
}
