//! The signed payload as containers/image reads it
//! (`signature/internal/sigstore_payload.go` `strictUnmarshalJSON` over
//! `signature/internal/json.go`'s paranoid object parse): exact keys in `critical`, no
//! duplicate keys anywhere it looks, `optional` either `null` or an object whose
//! `creator` is a string and `timestamp` an integer, the type
//! `cosign container image signature`, and a digest go-digest parses.

use cip_core::registries_conf::validate_digest;

use crate::gojson::{self, Value};

/// 2^63: int64 holds [-2^63, 2^63).
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

pub const SIGNATURE_TYPE: &str = "cosign container image signature";

#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub docker_manifest_digest: String,
    pub docker_reference: String,
    pub creator: Option<String>,
    pub timestamp: Option<i64>,
}

/// `json.Unmarshal(payload, &UntrustedSigstorePayload{})`: every error is an invalid
/// signature, with Go's text.
pub fn parse(data: &[u8]) -> Result<Payload, String> {
    let top = gojson::parse(data)?;
    let fields = exact_fields(&top, &["critical", "optional"])?;
    let (critical, optional) = (fields[0], fields[1]);
    let mut creator = None;
    let mut timestamp = None;
    if *optional != Value::Null {
        for (key, value) in object(optional)? {
            match key.as_str() {
                "creator" => creator = Some(value.go_string(key)?.unwrap_or("").to_string()),
                "timestamp" => {
                    let t = value.go_float(key)?.unwrap_or(0.0);
                    // Go's float64 → int64 conversion; out of range never round-trips.
                    let fits = (-TWO_POW_63..TWO_POW_63).contains(&t);
                    if !fits || (t as i64) as f64 != t {
                        return Err("Field optional.timestamp is not an integer".into());
                    }
                    timestamp = Some(t as i64);
                }
                _ => value.go_any()?,
            }
        }
    }
    let fields = exact_fields(critical, &["type", "image", "identity"])?;
    let kind = fields[0].go_string("type")?.unwrap_or("");
    let (image, identity) = (fields[1], fields[2]);
    if kind != SIGNATURE_TYPE {
        return Err(format!("Unrecognized signature type {kind}"));
    }
    let digest = exact_fields(image, &["docker-manifest-digest"])?[0]
        .go_string("docker-manifest-digest")?
        .unwrap_or("")
        .to_string();
    validate_digest(&digest)
        .map_err(|e| format!("invalid docker-manifest-digest value {digest:?}: {e}"))?;
    let reference = exact_fields(identity, &["docker-reference"])?[0]
        .go_string("docker-reference")?
        .unwrap_or("")
        .to_string();
    Ok(Payload {
        docker_manifest_digest: digest,
        docker_reference: reference,
        creator,
        timestamp,
    })
}

/// `ParanoidUnmarshalJSONObject`: an object, no key twice.
fn object(value: &Value) -> Result<&[(String, Value)], String> {
    let Value::Object(members) = value else {
        return Err(format!("JSON object expected, got {}", go_token(value)));
    };
    for (i, (key, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(k, _)| k == key) {
            return Err(format!("Duplicate key {key:?}"));
        }
    }
    Ok(members)
}

/// `ParanoidUnmarshalJSONObjectExactFields`: exactly these keys, in any order. Go stops
/// at the first unknown key, in document order.
pub(crate) fn exact_fields<'a>(value: &'a Value, names: &[&str]) -> Result<Vec<&'a Value>, String> {
    let Value::Object(members) = value else {
        return Err(format!("JSON object expected, got {}", go_token(value)));
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, _) in members {
        if seen.contains(&key.as_str()) {
            return Err(format!("Duplicate key {key:?}"));
        }
        if !names.contains(&key.as_str()) {
            return Err(format!("Unknown key {key:?}"));
        }
        seen.push(key);
    }
    names
        .iter()
        .map(|name| {
            members
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
                .ok_or_else(|| format!("Key {name:?} missing in a JSON object"))
        })
        .collect()
}

/// What Go's `%#v` prints for the first token of a non-object value.
fn go_token(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("{}", n.parse::<f64>().unwrap_or(0.0)),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) | Value::Nested { object: false, .. } => "'['".into(),
        Value::Object(_) | Value::Nested { .. } => "'{'".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn payload(critical_extra: &str, optional: &str) -> String {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"quay.io/a/b:v1"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"{SIGNATURE_TYPE}"{critical_extra}}},"optional":{optional}}}"#
        )
    }

    #[test]
    fn a_cosign_payload() {
        let p = parse(payload("", r#"{"creator":"cosign","timestamp":1700000000}"#).as_bytes())
            .unwrap();
        assert_eq!(p.docker_reference, "quay.io/a/b:v1");
        assert_eq!(p.docker_manifest_digest, DIGEST);
        assert_eq!(p.timestamp, Some(1_700_000_000));
        assert!(parse(payload("", "null").as_bytes()).is_ok());
        // Unknown optional keys are ignored, as long as Go can decode them.
        assert!(parse(payload("", r#"{"x":[1,{"y":null}]}"#).as_bytes()).is_ok());
        assert!(parse(payload("", r#"{"x\ud800":1}"#).as_bytes()).is_ok());
    }

    /// Each case breaks one rule of the parse.
    #[test]
    fn each_rule_refuses_its_forgery() {
        let cases: Vec<(String, &str)> = vec![
            (payload(r#","x":1"#, "null"), "Unknown key \"x\""),
            (payload(r#","type":"a""#, "null"), "Duplicate key \"type\""),
            (
                payload("", "null").replace(&format!(",\"type\":\"{SIGNATURE_TYPE}\""), ""),
                "Key \"type\" missing",
            ),
            (payload("", "[]"), "JSON object expected"),
            (payload("", r#"{"a":1,"a":2}"#), "Duplicate key \"a\""),
            (payload("", r#"{"creator":1}"#), "cannot unmarshal number"),
            (payload("", r#"{"timestamp":1.5}"#), "not an integer"),
            (
                payload("", r#"{"timestamp":9223372036854775808}"#),
                "not an integer",
            ),
            (
                payload("", r#"{"timestamp":"1"}"#),
                "cannot unmarshal string",
            ),
            (
                payload("", r#"{"x":1e400}"#),
                "cannot unmarshal number 1e400",
            ),
            (payload("", "null") + "x", "after top-level value"),
            (
                payload("", "null").replace(SIGNATURE_TYPE, "atomic container signature"),
                "Unrecognized signature type",
            ),
            (
                payload("", "null").replace(DIGEST, "sha256:abc"),
                "invalid docker-manifest-digest",
            ),
            (
                payload("", "null").replace(&format!("\"{DIGEST}\""), "null"),
                "invalid docker-manifest-digest value \"\"",
            ),
            (
                payload("", "null").replace("\"quay.io/a/b:v1\"", "5"),
                "cannot unmarshal number",
            ),
            (
                payload("", "null").replace(
                    r#"{"docker-reference":"quay.io/a/b:v1"}"#,
                    r#"{"docker-reference":"q","z":1}"#,
                ),
                "Unknown key \"z\"",
            ),
        ];
        for (text, why) in cases {
            let e = parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{text}: {e} (wanted {why})");
        }
        // Keys compare after unescaping: an escaped duplicate is still a duplicate.
        let escaped = payload(&format!(r#","typ\u0065":"{SIGNATURE_TYPE}""#), "null");
        assert!(parse(escaped.as_bytes())
            .unwrap_err()
            .contains("Duplicate key"));
        // null where a string goes leaves it empty, as Go does.
        let null_ref = payload("", "null").replace("\"quay.io/a/b:v1\"", "null");
        assert_eq!(parse(null_ref.as_bytes()).unwrap().docker_reference, "");
        let null_time = payload("", r#"{"timestamp":null}"#);
        assert_eq!(parse(null_time.as_bytes()).unwrap().timestamp, Some(0));
    }
}
