//! The Rekor signed entry timestamp (SET) of a signature, as containers/image checks it
//! without contacting Rekor (`signature/internal/rekor_set.go` `VerifyRekorSET`, with the
//! hashedrekord types of `signature/internal/rekor_api_types.go`): the bundle annotation
//! parsed strictly, ECDSA over the canonical JSON of its payload with one of the policy's
//! Rekor keys, then the logged entry tied to this signature: a `hashedrekord` 0.0.1 whose
//! public key is the signing key or certificate, whose signature is the layer's and whose
//! hash is the payload's.

use crate::canonical;
use crate::gojson::{self, decode_go_std_base64, Value};
use crate::keys::{self, Check, Hash, PublicKey};
use crate::payload::exact_fields;
use crate::pem;

/// `signature.SigstoreSETAnnotationKey`.
pub const SET_ANNOTATION: &str = "dev.sigstore.cosign/bundle";

/// `VerifyRekorSET`: the entry's integrated time (Unix seconds) when the SET holds.
/// `key_or_cert` is the DER of the signing key or certificate (Go compares PEM bodies),
/// or why it has none; that error is reported where Go reports it.
pub fn verify_set(
    rekor_keys: &[PublicKey],
    set: &[u8],
    key_or_cert: Result<Vec<u8>, Check>,
    base64_signature: &str,
    payload: &[u8],
) -> Result<i64, Check> {
    let invalid = |why: String| Check::Invalid(why);
    // == Parse SET bytes
    let top = gojson::parse(set).map_err(invalid)?;
    let fields = exact_fields(&top, &["SignedEntryTimestamp", "Payload"]).map_err(invalid)?;
    let set_signature = go_bytes(fields[0]).map_err(invalid)?.unwrap_or_default();
    let raw_payload = gojson::raw_members(set)
        .map_err(invalid)?
        .into_iter()
        .find(|(k, _)| k == "Payload")
        .map(|(_, raw)| raw)
        .unwrap_or_default();
    // == Verify SET signature
    let canonical = canonical::transform(raw_payload)
        .map_err(|e| invalid(format!("canonicalizing Rekor SET JSON: {e}")))?;
    let mut unknown = None;
    let matched = rekor_keys.iter().any(|key| {
        match keys::verify_with(key, Hash::Sha256, &canonical, &set_signature) {
            Check::Valid => true,
            Check::Invalid(_) => false,
            Check::Unknown(why) => {
                unknown.get_or_insert(why);
                false
            }
        }
    });
    if !matched {
        return Err(match unknown {
            Some(why) => Check::Unknown(why),
            None => invalid("cryptographic signature verification of Rekor SET failed".into()),
        });
    }
    // == Parse SET payload (the canonical bytes, as Go does)
    let entry = gojson::parse(&canonical)
        .and_then(|v| rekor_payload(&v))
        .map_err(|e| invalid(format!("parsing Rekor SET payload: {e}")))?;
    let record = hashedrekord(&entry.body)?;
    // == Match the key or certificate
    let public_key = record
        .public_key
        .ok_or_else(|| invalid(r#"Missing "signature.publicKey" field in hashedrekord"#.into()))?;
    let logged = single_pem(&public_key.unwrap_or_default())
        .map_err(|e| invalid(format!("publicKey in Rekor SET {e}")))?;
    let ours = key_or_cert?;
    if logged != ours {
        return Err(invalid("publicKey in Rekor SET does not match".into()));
    }
    // == Match the signature
    let signature = decode_go_std_base64(base64_signature)
        .map_err(|e| invalid(format!("decoding signature base64: {e}")))?;
    if record.signature.unwrap_or_default() != signature {
        return Err(invalid("signature in Rekor SET does not match".into()));
    }
    // == Match the payload
    let hash = record
        .hash
        .ok_or_else(|| invalid(r#"Missing "data" field in hashedrekord"#.into()))?;
    let hash =
        hash.ok_or_else(|| invalid(r#"Missing "data.hash" field in hashedrekord"#.into()))?;
    let algorithm = hash
        .0
        .ok_or_else(|| invalid(r#"Missing "data.hash.algorithm" field in hashedrekord"#.into()))?;
    if algorithm != "sha256" {
        return Err(invalid(format!(
            r#"Unexpected "data.hash.algorithm" value {algorithm:?}"#
        )));
    }
    let value = hash
        .1
        .ok_or_else(|| invalid(r#"Missing "data.hash.value" field in hashedrekord"#.into()))?;
    let logged_hash = go_hex(&value).map_err(|e| {
        invalid(format!(
            r#"Invalid "data.hash.value" field in hashedrekord: {e}"#
        ))
    })?;
    if logged_hash != ring::digest::digest(&ring::digest::SHA256, payload).as_ref() {
        return Err(invalid("payload in Rekor SET does not match".into()));
    }
    Ok(entry.integrated_time)
}

struct RekorPayload {
    body: Vec<u8>,
    integrated_time: i64,
}

/// `UntrustedRekorPayload.strictUnmarshalJSON`.
fn rekor_payload(value: &Value) -> Result<RekorPayload, String> {
    let f = exact_fields(value, &["body", "integratedTime", "logIndex", "logID"])?;
    let body = go_bytes(f[0])?.unwrap_or_default();
    let integrated_time = go_int64(f[1])?;
    go_int64(f[2])?;
    f[3].go_string("logID")?;
    Ok(RekorPayload {
        body,
        integrated_time,
    })
}

/// The hashedrekord fields the check reads; `None` where Go's pointer stays nil.
struct Record {
    /// `signature.publicKey`, then its `content`.
    public_key: Option<Option<Vec<u8>>>,
    signature: Option<Vec<u8>>,
    /// `data.hash`, then (`algorithm`, `value`).
    hash: Option<Option<(Option<String>, Option<String>)>>,
}

/// `json.Unmarshal(body, &RekorHashedrekord)` and then its `spec` into
/// `RekorHashedrekordV001Schema`: Go's lenient decoder, field names folded, unknown
/// members skipped, the `kind` checked by the type's `UnmarshalJSON`.
fn hashedrekord(body: &[u8]) -> Result<Record, Check> {
    let invalid =
        |e: String| Check::Invalid(format!("decoding the body of a Rekor SET payload: {e}"));
    let top = gojson::parse(body).map_err(invalid)?;
    let kind = gojson::loose_fields(&top, &["kind"]).map_err(invalid)?;
    let mut kind_value = String::new();
    for v in &kind[0] {
        match v {
            Value::Null => {}
            Value::String(s) => kind_value = s.clone(),
            _ => {
                return Err(invalid(
                    "json: cannot unmarshal into Go value of type string".into(),
                ))
            }
        }
    }
    if kind_value != "hashedrekord" {
        return Err(invalid(format!("invalid kind value: {kind_value:?}")));
    }
    let f = gojson::loose_fields(&top, &["apiVersion", "spec"]).map_err(invalid)?;
    let api_version = gojson::loose_string(&f[0]).map_err(invalid)?;
    let spec = f[1].last().copied();
    let Some(api_version) = api_version else {
        return Err(Check::Invalid(
            "missing Rekor SET Payload API version".into(),
        ));
    };
    if api_version != "0.0.1" {
        return Err(Check::Invalid(format!(
            "unsupported Rekor SET Payload hashedrekord version {api_version:?}"
        )));
    }
    let Some(spec) = spec else {
        return Err(Check::Invalid(
            "decoding hashedrekod spec: unexpected end of JSON input".into(),
        ));
    };
    spec_v001(spec).map_err(|e| Check::Invalid(format!("decoding hashedrekod spec: {e}")))
}

fn spec_v001(spec: &Value) -> Result<Record, String> {
    let f = gojson::loose_fields(spec, &["data", "signature"])?;
    let data = gojson::loose_struct(&f[0])?;
    let signature = gojson::loose_struct(&f[1])?;
    let mut record = Record {
        public_key: None,
        signature: None,
        hash: None,
    };
    if let Some(signature) = signature {
        let f = gojson::loose_fields(&signature, &["content", "publicKey"])?;
        record.signature = loose_bytes(&f[0])?;
        if let Some(key) = gojson::loose_struct(&f[1])? {
            let f = gojson::loose_fields(&key, &["content"])?;
            record.public_key = Some(loose_bytes(&f[0])?);
        }
    } else {
        return Err(r#"Missing "signature" field in hashedrekord"#.into());
    }
    if let Some(data) = data {
        let f = gojson::loose_fields(&data, &["hash"])?;
        record.hash = Some(match gojson::loose_struct(&f[0])? {
            Some(hash) => {
                let f = gojson::loose_fields(&hash, &["algorithm", "value"])?;
                Some((gojson::loose_string(&f[0])?, gojson::loose_string(&f[1])?))
            }
            None => None,
        });
    }
    Ok(record)
}

/// A `[]byte` field of Go's lenient decoder: base64 text, `null` for nil.
fn loose_bytes(values: &[&Value]) -> Result<Option<Vec<u8>>, String> {
    let mut out = None;
    for v in values {
        out = go_bytes(v)?;
    }
    Ok(out)
}

/// Decoding one JSON value into a Go `[]byte`.
fn go_bytes(value: &Value) -> Result<Option<Vec<u8>>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => decode_go_std_base64(s).map(Some),
        _ => Err("json: cannot unmarshal into Go value of type []uint8".into()),
    }
}

/// Decoding one JSON value into a Go `int64`: `strconv.ParseInt` of the literal.
fn go_int64(value: &Value) -> Result<i64, String> {
    match value {
        Value::Null => Ok(0),
        Value::Number(text) => text.parse::<i64>().map_err(|_| {
            format!("json: cannot unmarshal number {text} into Go value of type int64")
        }),
        _ => Err("json: cannot unmarshal into Go value of type int64".into()),
    }
}

/// `hex.DecodeString`.
fn go_hex(text: &str) -> Result<Vec<u8>, String> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks(2) {
        let hi = digit(pair[0])
            .ok_or_else(|| format!("encoding/hex: invalid byte: {:#04x}", pair[0]))?;
        let Some(&lo) = pair.get(1) else {
            return Err("encoding/hex: odd length hex string".into());
        };
        let lo = digit(lo).ok_or_else(|| format!("encoding/hex: invalid byte: {lo:#04x}"))?;
        out.push(hi << 4 | lo);
    }
    Ok(out)
}

/// `pem.Decode` that must consume everything: the block's bytes.
pub fn single_pem(data: &[u8]) -> Result<Vec<u8>, String> {
    match pem::decode(data) {
        None => Err("is not in PEM format".into()),
        Some((_, rest)) if !rest.is_empty() => Err("has trailing data".into()),
        Some((block, _)) => Ok(block.bytes),
    }
}

#[cfg(test)]
mod tests {
    //! Counterparts of `TestUntrustedRekorSETUnmarshalJSON`,
    //! `TestUntrustedRekorPayloadUnmarshalJSON` and `TestVerifyRekorSET`
    //! (`signature/internal/rekor_set_test.go`): each forgery fails exactly one check.

    use super::*;
    use crate::keys::tests::{b64, p256, sign};

    /// A JSON object from (key, raw value) members, `None` values left out.
    fn object(members: &[(&str, Option<String>)]) -> String {
        let inner: Vec<String> = members
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k:?}:{v}")))
            .collect();
        format!("{{{}}}", inner.join(","))
    }

    fn q(s: &str) -> Option<String> {
        Some(format!("{s:?}"))
    }

    struct World {
        rekor: ring::signature::EcdsaKeyPair,
        rekor_key: PublicKey,
        cert_pem: String,
        signature_b64: String,
        payload: Vec<u8>,
    }

    impl World {
        fn new() -> World {
            let (rekor, rekor_pem) = p256();
            let (signer, cert_pem) = p256();
            let payload = b"{\"critical\":{}}".to_vec();
            World {
                rekor,
                rekor_key: keys::parse_pem(rekor_pem.as_bytes()).unwrap(),
                signature_b64: b64(&sign(&signer, &payload)),
                cert_pem,
                payload,
            }
        }

        /// The hashedrekord body members, each replaceable.
        fn body(&self, change: impl Fn(&mut Vec<(&'static str, Option<String>)>)) -> String {
            let hash = ring::digest::digest(&ring::digest::SHA256, &self.payload);
            let mut m = vec![
                ("apiVersion", q("0.0.1")),
                ("kind", q("hashedrekord")),
                ("algorithm", q("sha256")),
                ("value", q(&crate::judge::hex(hash.as_ref()))),
                ("content", q(&self.signature_b64)),
                ("publicKey.content", q(&b64(self.cert_pem.as_bytes()))),
                ("hash", None),
                ("data", None),
                ("publicKey", None),
                ("signature", None),
                ("spec", None),
            ];
            change(&mut m);
            let get = |k: &str| m.iter().find(|(n, _)| *n == k).unwrap().1.clone();
            let or = |k: &str, built: String| match m.iter().find(|(n, _)| *n == k).unwrap() {
                (_, Some(v)) if v == "DELETE" => None,
                (_, Some(v)) => Some(v.clone()),
                (_, None) => Some(built),
            };
            let hash = or(
                "hash",
                object(&[("algorithm", get("algorithm")), ("value", get("value"))]),
            );
            let data = or("data", object(&[("hash", hash)]));
            let key = or(
                "publicKey",
                object(&[("content", get("publicKey.content"))]),
            );
            let sig = or(
                "signature",
                object(&[("content", get("content")), ("publicKey", key)]),
            );
            let spec = or("spec", object(&[("data", data), ("signature", sig)]));
            object(&[
                ("apiVersion", get("apiVersion")),
                ("kind", get("kind")),
                ("spec", spec),
            ])
        }

        fn set_of_payload(&self, payload: &str) -> Vec<u8> {
            let canonical = canonical::transform(payload.as_bytes()).unwrap_or_default();
            let signature = sign(&self.rekor, &canonical);
            format!(
                r#"{{"SignedEntryTimestamp":"{}","Payload":{payload}}}"#,
                b64(&signature)
            )
            .into_bytes()
        }

        fn set_of_body(&self, body: &str) -> Vec<u8> {
            self.set_of_payload(&format!(
                r#"{{"body":"{}","integratedTime":1670870899,"logIndex":2,"logID":"logID"}}"#,
                b64(body.as_bytes())
            ))
        }

        fn verify(&self, set: &[u8]) -> Result<i64, Check> {
            let der = single_pem(self.cert_pem.as_bytes()).map_err(Check::Invalid);
            verify_set(
                std::slice::from_ref(&self.rekor_key),
                set,
                der,
                &self.signature_b64,
                &self.payload,
            )
        }
    }

    fn refused(r: Result<i64, Check>, why: &str) -> bool {
        matches!(&r, Err(Check::Invalid(e)) if e.contains(why))
    }

    #[test]
    fn a_set_for_this_signature_holds_at_its_time() {
        let w = World::new();
        let set = w.set_of_body(&w.body(|_| {}));
        assert_eq!(w.verify(&set), Ok(1_670_870_899));
        // Any of several Rekor keys; key order does not matter.
        let (_, other) = p256();
        let other = keys::parse_pem(other.as_bytes()).unwrap();
        let der = || single_pem(w.cert_pem.as_bytes()).map_err(Check::Invalid);
        for keys in [
            vec![other.clone(), w.rekor_key.clone()],
            vec![w.rekor_key.clone(), other.clone()],
        ] {
            assert!(verify_set(&keys, &set, der(), &w.signature_b64, &w.payload).is_ok());
        }
        assert!(refused(
            verify_set(&[other], &set, der(), &w.signature_b64, &w.payload),
            "cryptographic signature verification of Rekor SET failed"
        ));
    }

    #[test]
    fn the_set_is_parsed_strictly() {
        let w = World::new();
        let payload = format!(
            r#"{{"body":"{}","integratedTime":1,"logIndex":2,"logID":"x"}}"#,
            b64(w.body(|_| {}).as_bytes())
        );
        let signature = b64(&sign(
            &w.rekor,
            &canonical::transform(payload.as_bytes()).unwrap(),
        ));
        for (set, why) in [
            (String::new(), "unexpected end of JSON input"),
            ("invalid signature".to_string(), "invalid character"),
            ("[]".to_string(), "JSON object expected"),
            (
                format!(r#"{{"Payload":{payload}}}"#),
                "missing in a JSON object",
            ),
            (
                format!(r#"{{"SignedEntryTimestamp":"{signature}","Payload":{payload},"x":{{}}}}"#),
                "Unknown key",
            ),
            (
                format!(r#"{{"SignedEntryTimestamp":1,"Payload":{payload}}}"#),
                "cannot unmarshal",
            ),
            (
                format!(r#"{{"SignedEntryTimestamp":"{signature}","Payload":1}}"#),
                "canonicalizing",
            ),
            (
                format!(
                    r#"{{"SignedEntryTimestamp":"{signature}","SignedEntryTimestamp":"{signature}","Payload":{payload}}}"#
                ),
                "Duplicate key",
            ),
        ] {
            assert!(
                refused(w.verify(set.as_bytes()), why),
                "{set}: {:?}",
                w.verify(set.as_bytes())
            );
        }
        // Canonicalization refuses a duplicate key Go's own decoder would let through.
        let dup = r#"{"logIndex":1, "integratedTime":2,"body":"abc","logID":"def","body":"ABC"}"#;
        assert!(refused(w.verify(&w.set_of_payload(dup)), "canonicalizing"));
        for (payload, why) in [
            ("{}", "missing in a JSON object"),
            (
                r#"{"body":"","integratedTime":1,"logIndex":2,"logID":"x","extra":{}}"#,
                "Unknown key",
            ),
            (
                r#"{"body":1,"integratedTime":1,"logIndex":2,"logID":"x"}"#,
                "cannot unmarshal",
            ),
            (
                r#"{"body":"","integratedTime":1.5,"logIndex":2,"logID":"x"}"#,
                "cannot unmarshal number",
            ),
            (
                r#"{"body":"","integratedTime":1,"logIndex":"2","logID":"x"}"#,
                "cannot unmarshal",
            ),
            (
                r#"{"body":"","integratedTime":1,"logIndex":2,"logID":1}"#,
                "cannot unmarshal",
            ),
        ] {
            let r = w.verify(&w.set_of_payload(payload));
            assert!(refused(r.clone(), why), "{payload}: {r:?}");
        }
        // Numbers go through a float64 before the integer parse, as in Go: 1.7e9 is an
        // integer there, 1e21 is not.
        let exp = format!(
            r#"{{"body":"{}","integratedTime":1.6708708990e9,"logIndex":2,"logID":"x"}}"#,
            b64(w.body(|_| {}).as_bytes())
        );
        assert_eq!(w.verify(&w.set_of_payload(&exp)), Ok(1_670_870_899));
        let big = exp.replace("1.6708708990e9", "1e21");
        assert!(refused(
            w.verify(&w.set_of_payload(&big)),
            "cannot unmarshal number"
        ));
    }

    #[test]
    fn every_hashedrekord_field_is_checked() {
        let w = World::new();
        let set = |k: &'static str, v: &str| {
            let v = v.to_string();
            w.set_of_body(
                &w.body(move |m| m.iter_mut().find(|(n, _)| *n == k).unwrap().1 = Some(v.clone())),
            )
        };
        let delete = |k: &'static str| {
            w.set_of_body(&w.body(move |m| m.iter_mut().find(|(n, _)| *n == k).unwrap().1 = None))
        };
        let other_pem = b64(p256().1.as_bytes());
        let two_pems = b64(w.cert_pem.repeat(2).as_bytes());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                delete("apiVersion"),
                "missing Rekor SET Payload API version",
            ),
            (delete("kind"), "invalid kind value"),
            (set("spec", "DELETE"), "unexpected end of JSON input"),
            (
                set("apiVersion", "null"),
                "missing Rekor SET Payload API version",
            ),
            (set("apiVersion", "1"), "cannot unmarshal"),
            (set("apiVersion", "{}"), "cannot unmarshal"),
            (
                set("apiVersion", "\"99.0.99\""),
                "unsupported Rekor SET Payload hashedrekord version",
            ),
            (set("kind", "null"), "invalid kind value"),
            (set("kind", "1"), "cannot unmarshal"),
            (set("kind", "\"notHashedRekord\""), "invalid kind value"),
            (set("spec", "null"), r#"Missing "signature""#),
            (set("spec", "1"), "cannot unmarshal"),
            (set("data", "DELETE"), r#"Missing "data""#),
            (set("signature", "DELETE"), r#"Missing "signature""#),
            (set("data", "null"), r#"Missing "data""#),
            (set("data", "1"), "cannot unmarshal"),
            (set("hash", "DELETE"), r#"Missing "data.hash""#),
            (set("hash", "null"), r#"Missing "data.hash""#),
            (set("hash", "1"), "cannot unmarshal"),
            (delete("algorithm"), r#"Missing "data.hash.algorithm""#),
            (delete("value"), r#"Missing "data.hash.value""#),
            (set("algorithm", "null"), r#"Missing "data.hash.algorithm""#),
            (set("algorithm", "1"), "cannot unmarshal"),
            (set("value", "null"), r#"Missing "data.hash.value""#),
            (set("value", "1"), "cannot unmarshal"),
            (set("value", &format!("{:?}", "a".repeat(63))), "odd length"),
            (
                set("value", &format!("{:?}", "a".repeat(64))),
                "payload in Rekor SET does not match",
            ),
            (
                set("algorithm", "\"sha512\""),
                r#"Unexpected "data.hash.algorithm" value"#,
            ),
            (set("signature", "null"), r#"Missing "signature""#),
            (set("signature", "1"), "cannot unmarshal"),
            (delete("content"), "signature in Rekor SET does not match"),
            (delete("publicKey.content"), "not in PEM format"),
            (
                set("publicKey", "DELETE"),
                r#"Missing "signature.publicKey""#,
            ),
            (
                set("content", "null"),
                "signature in Rekor SET does not match",
            ),
            (set("content", "1"), "cannot unmarshal"),
            (
                set("content", "\"\""),
                "signature in Rekor SET does not match",
            ),
            (set("content", "\"+\""), "illegal base64"),
            (
                set("content", &format!("{:?}", b64(b"does not match"))),
                "signature in Rekor SET does not match",
            ),
            (set("publicKey", "null"), r#"Missing "signature.publicKey""#),
            (set("publicKey", "1"), "cannot unmarshal"),
            (set("publicKey.content", "null"), "not in PEM format"),
            (set("publicKey.content", "1"), "cannot unmarshal"),
            (set("publicKey.content", "\"\""), "not in PEM format"),
            (set("publicKey.content", "\"+\""), "illegal base64"),
            (
                set("publicKey.content", &format!("{:?}", b64(b"not PEM"))),
                "not in PEM format",
            ),
            (
                set("publicKey.content", &format!("{two_pems:?}")),
                "has trailing data",
            ),
            (
                set("publicKey.content", &format!("{other_pem:?}")),
                "publicKey in Rekor SET does not match",
            ),
        ];
        for (set, why) in cases {
            let r = w.verify(&set);
            assert!(refused(r.clone(), why), "{why}: {r:?}");
        }
    }

    #[test]
    fn go_decodes_the_body_leniently() {
        let w = World::new();
        // Extra members are ignored, names match case-insensitively (also through the
        // Kelvin sign), and a repeated struct merges: all as encoding/json does.
        let body = w.body(|_| {});
        let lenient = body
            .replacen("\"kind\"", "\"KIND\"", 1)
            .replacen("\"spec\"", "\"\u{017F}pec\"", 1)
            .replacen("{", "{\"unexpected\":1,", 1);
        assert_eq!(w.verify(&w.set_of_body(&lenient)), Ok(1_670_870_899));
        // Two partial "data" members: the second decodes into the struct the first made.
        let hash = ring::digest::digest(&ring::digest::SHA256, &w.payload);
        let without =
            w.body(|m| m.iter_mut().find(|(n, _)| *n == "data").unwrap().1 = Some("DELETE".into()));
        let split = format!(
            "\"spec\":{{\"data\":{{\"hash\":{{\"algorithm\":\"sha256\"}}}},\"data\":{{\"hash\":{{\"value\":\"{}\"}}}},",
            crate::judge::hex(hash.as_ref())
        );
        let merged = without.replacen("\"spec\":{", &split, 1);
        assert_eq!(w.verify(&w.set_of_body(&merged)), Ok(1_670_870_899));
        // A null between them resets the struct: the algorithm is gone.
        let reset = merged.replacen(
            ",\"data\":{\"hash\":{\"value",
            ",\"data\":null,\"data\":{\"hash\":{\"value",
            1,
        );
        assert!(refused(
            w.verify(&w.set_of_body(&reset)),
            "data.hash.algorithm"
        ));
    }

    #[test]
    fn the_signature_and_key_given_must_be_usable() {
        let w = World::new();
        let set = w.set_of_body(&w.body(|_| {}));
        let truncated = &w.signature_b64[..w.signature_b64.len() - 1];
        let der = || single_pem(w.cert_pem.as_bytes()).map_err(Check::Invalid);
        let keys = std::slice::from_ref(&w.rekor_key);
        assert!(refused(
            verify_set(keys, &set, der(), truncated, &w.payload),
            "decoding signature base64"
        ));
        for cert in [
            &b""[..],
            b"this is not PEM",
            w.cert_pem.repeat(2).as_bytes(),
        ] {
            let ours = single_pem(cert).map_err(Check::Invalid);
            assert!(verify_set(keys, &set, ours, &w.signature_b64, &w.payload).is_err());
        }
    }
}
