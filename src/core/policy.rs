//! The containers-policy.json(5) document, typed as containers/image v5.35 marshals it,
//! so that a decode/encode round trip gives the bytes MCO's Go code gives.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::gojson;

/// Go's `base64.StdEncoding`: padding required, non-zero trailing bits tolerated.
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Decodes standard base64 as Go's `[]byte` JSON decoding does.
pub fn decode_b64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    GO_STD.decode(text)
}

/// Bytes that travel as standard base64 in JSON, like a Go `[]byte` field. Held as
/// canonical base64 text: decoded once to check and canonicalise, written as is.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bytes(String);

impl Bytes {
    pub fn from_raw(raw: &[u8]) -> Bytes {
        Bytes(base64::engine::general_purpose::STANDARD.encode(raw))
    }

    /// Accepts what Go's decoder accepts; the result is canonical base64.
    pub fn from_base64(text: &str) -> Result<Bytes, base64::DecodeError> {
        decode_b64(text).map(|raw| Bytes::from_raw(&raw))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes this holds (stored as canonical base64, so decoding cannot fail).
    pub fn raw(&self) -> Vec<u8> {
        decode_b64(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({})", self.0)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Bytes::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

fn is_empty_bytes(b: &Option<Bytes>) -> bool {
    b.as_ref().is_none_or(Bytes::is_empty)
}

fn is_empty_vec<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_none_or(|v| v.is_empty())
}

fn is_empty_str(s: &Option<String>) -> bool {
    s.as_ref().is_none_or(|s| s.is_empty())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub default: Vec<Requirement>,
    #[serde(default)]
    pub transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

impl Policy {
    /// Parses policy.json text, rejecting what containers/image would reject at load time.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if policy.default.is_empty() {
            return Err("Default policy is empty".into());
        }
        Ok(policy)
    }

    /// The bytes Go's `json.MarshalIndent(policy, "", "  ")` gives.
    pub fn to_go_json(&self) -> String {
        gojson::marshal_indent(self)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Requirement {
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything,
    #[serde(rename = "reject")]
    Reject,
    #[serde(rename = "signedBy")]
    SignedBy(SignedBy),
    #[serde(rename = "sigstoreSigned")]
    SigstoreSigned(Box<SigstoreSigned>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedBy {
    pub key_type: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub key_path: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty_vec")]
    pub key_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_empty_bytes")]
    pub key_data: Option<Bytes>,
    #[serde(default)]
    pub signed_identity: SignedIdentity,
}

/// Field order is containers/image's `prSigstoreSigned`; every field is omitempty
/// except `signedIdentity`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigstoreSigned {
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub key_path: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty_vec")]
    pub key_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_empty_bytes")]
    pub key_data: Option<Bytes>,
    #[serde(default, skip_serializing_if = "is_empty_vec")]
    pub key_datas: Option<Vec<Bytes>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulcio: Option<Fulcio>,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub rekor_public_key_path: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty_vec")]
    pub rekor_public_key_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_empty_bytes")]
    pub rekor_public_key_data: Option<Bytes>,
    #[serde(default, skip_serializing_if = "is_empty_vec")]
    pub rekor_public_key_datas: Option<Vec<Bytes>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<Pki>,
    #[serde(default)]
    pub signed_identity: SignedIdentity,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fulcio {
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub ca_path: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty_bytes")]
    pub ca_data: Option<Bytes>,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub oidc_issuer: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub subject_email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pki {
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub ca_roots_path: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty_bytes")]
    pub ca_roots_data: Option<Bytes>,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub ca_intermediates_path: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty_bytes")]
    pub ca_intermediates_data: Option<Bytes>,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub subject_email: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub subject_hostname: Option<String>,
}

/// `signedIdentity`; containers/image defaults a missing one to `matchRepoDigestOrExact`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum SignedIdentity {
    MatchExact,
    #[default]
    MatchRepoDigestOrExact,
    MatchRepository,
    #[serde(rename_all = "camelCase")]
    ExactReference {
        docker_reference: String,
    },
    #[serde(rename_all = "camelCase")]
    ExactRepository {
        docker_repository: String,
    },
    #[serde(rename_all = "camelCase")]
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

/// MCO's template policy.json (`01-<role>-container-runtime`), used when no
/// MachineConfig of the pool carries one.
pub const MCO_TEMPLATE: &str = r#"{
    "default": [
        {
            "type": "insecureAcceptAnything"
        }
    ],
    "transports":
        {
            "docker-daemon":
                {
                    "": [{"type":"insecureAcceptAnything"}]
                }
        }
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_round_trips_to_go_bytes() {
        let p = Policy::parse(MCO_TEMPLATE).unwrap();
        assert_eq!(
            p.to_go_json(),
            "{\n  \"default\": [\n    {\n      \"type\": \"insecureAcceptAnything\"\n    }\n  ],\n  \"transports\": {\n    \"docker-daemon\": {\n      \"\": [\n        {\n          \"type\": \"insecureAcceptAnything\"\n        }\n      ]\n    }\n  }\n}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_base64_are_refused() {
        let bad_key =
            r#"{"default":[{"type":"sigstoreSigned","keyData":"Zm9v","dockerReference":"x"}]}"#;
        assert!(Policy::parse(bad_key)
            .unwrap_err()
            .contains("dockerReference"));
        let bad_b64 = r#"{"default":[{"type":"sigstoreSigned","keyData":"!!"}]}"#;
        assert!(Policy::parse(bad_b64).is_err());
        assert!(Policy::parse(r#"{"default":[]}"#).is_err());
    }

    #[test]
    fn base64_is_canonicalised_like_go() {
        // "Zm9=" has non-zero trailing bits: Go accepts it and writes "Zm8=".
        let p =
            Policy::parse(r#"{"default":[{"type":"sigstoreSigned","keyData":"Zm9="}]}"#).unwrap();
        assert!(p.to_go_json().contains("\"keyData\": \"Zm8=\""));
    }
}
