//! A pull's verdict under one policy.json entry, as containers/image's
//! `PolicyContext.IsRunningImageAllowed` gives it (`signature/policy_eval.go`): every
//! requirement must pass; a `sigstoreSigned` requirement passes when one signature layer
//! passes every check of `signature/policy_eval_sigstore.go`. The caller passes what a
//! node would fetch (the instance manifest and the attachment's layers); nothing here
//! reads a registry, a file or the clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use cip_core::policy::{Requirement, SigstoreSigned};
use cip_core::registries_conf::Reference;

use crate::gojson::decode_go_std_base64;
use crate::identity;
use crate::keys::{Check, PublicKey};
use crate::payload;
use crate::signers::Signers;
use crate::trust::{self, Candidates, Root};

/// `signature.SigstoreSignatureMIMEType`.
pub const SIGNATURE_MIME_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// `signature.SigstoreSignatureAnnotationKey`.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// One layer of a sigstore attachment (`<repo>:sha256-<hex>.sig`), as fetched.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "lowercase")]
pub enum Verdict {
    Accepted,
    Refused(String),
    /// What this port cannot decide as containers/image does.
    Unknown(String),
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Refused(_) => "refused",
            Verdict::Unknown(_) => "unknown",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Accepted => "",
            Verdict::Refused(r) | Verdict::Unknown(r) => r,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerVerdict {
    pub digest: String,
    /// `None` for an attachment that is not a signature (skipped, as Go skips it).
    pub verdict: Option<Verdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequirementVerdict {
    /// The requirement's `type`.
    pub requirement: String,
    pub verdict: Verdict,
    pub layers: Vec<LayerVerdict>,
    /// For a PKI acceptance: when its chain stops verifying (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_until: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryVerdict {
    pub verdict: Verdict,
    /// True when the entry passed without looking at any signature.
    pub no_signature_required: bool,
    pub requirements: Vec<RequirementVerdict>,
    /// The earliest `accepted_until` of the requirements: the verdict turns by itself then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_until: Option<i64>,
}

/// What the pull needs besides the manifest: signatures.
pub fn needs_signatures(requirements: &[Requirement]) -> bool {
    requirements
        .iter()
        .any(|r| matches!(r, Requirement::SigstoreSigned(_) | Requirement::SignedBy(_)))
}

/// Signature checks already made, per key, by a SHA-256 of (payload, signature): a
/// preview that meets the same layer again, on any thread, does not verify it again. An
/// admission replica keeps one across reviews, so an edit that keeps a policy's keys checks
/// no signature twice. Each requirement's trust root is parsed once. Past [`MEMO_ENTRIES`]
/// checks, or [`MEMO_ROOTS`] requirements, it starts over.
///
/// Through [`Memo::recovering`], each P-256 signature met is also kept with the keys it
/// verifies under ([`Signers`]): any key is then judged against it by comparing points, so
/// a review that brings a new key checks no curve for the signatures warming met. Those
/// answers are not kept as checks (they cost a lookup); the signers have their own cap,
/// [`MEMO_SIGNERS`]. Clones share what is kept.
#[derive(Default, Clone)]
pub struct Memo {
    kept: Arc<Kept>,
    /// Whether signatures met through this handle have their signers recovered.
    recover: bool,
}

#[derive(Default)]
struct Kept {
    checks: Mutex<Checks>,
    signers: Mutex<HashMap<[u8; 32], Arc<Signers>>>,
}

#[derive(Default)]
struct Checks {
    by_key: HashMap<PublicKey, HashMap<[u8; 32], Check>>,
    by_requirement: HashMap<SigstoreSigned, Trust>,
    /// Checks and candidate sets kept (roots are counted apart, by `by_requirement`).
    len: usize,
}

/// A requirement's trust root, and each layer's candidate keys under it where the root
/// reads no clock (a Rekor SET, a Fulcio chain at the SET's time), by a SHA-256 of the
/// layer's payload and annotations.
struct Trust {
    root: Result<Arc<Root>, Check>,
    candidates: HashMap<[u8; 32], Result<Candidates, Check>>,
}

/// Estimated at about 130 bytes a signature check (its digest, its verdict, the map's
/// share); a keyless layer's candidate set holds its keys too.
pub const MEMO_ENTRIES: usize = 32_768;
/// Distinct requirements whose trust roots are kept (a Fulcio root holds its CA
/// certificates: a few KiB).
pub const MEMO_ROOTS: usize = 256;
/// Signatures whose signers are kept (about 250 bytes each: two points, the digest, the
/// map's share), past which they start over.
pub const MEMO_SIGNERS: usize = 16_384;

impl Memo {
    fn verify(&self, key: &PublicKey, message: &[u8], signature: &[u8]) -> Check {
        let digest = fields_digest([message, signature]);
        if let Some(c) = self.map().by_key.get(key).and_then(|m| m.get(&digest)) {
            return c.clone();
        }
        if let Some(signers) = self.signers(key, digest, message, signature) {
            return key.verify_knowing(message, signature, Some(&signers));
        }
        // Checked outside the lock: other threads' lookups do not wait for the curve.
        let c = key.verify(message, signature);
        let mut checks = self.room();
        let added = match checks.by_key.get_mut(key) {
            Some(m) => m.insert(digest, c.clone()).is_none(),
            None => {
                checks
                    .by_key
                    .insert(key.clone(), HashMap::from([(digest, c.clone())]));
                true
            }
        };
        checks.len += usize::from(added);
        c
    }

    /// The signers of a P-256 signature: kept, or recovered while recovering.
    fn signers(
        &self,
        key: &PublicKey,
        digest: [u8; 32],
        message: &[u8],
        signature: &[u8],
    ) -> Option<Arc<Signers>> {
        if !matches!(
            key,
            PublicKey::Ecdsa {
                curve: crate::keys::Curve::P256,
                ..
            }
        ) {
            return None;
        }
        if let Some(s) = self.signers_map().get(&digest) {
            return Some(Arc::clone(s));
        }
        if !self.recover {
            return None;
        }
        let signers = Arc::new(Signers::recover(message, signature)?);
        let mut kept = self.signers_map();
        if kept.len() >= MEMO_SIGNERS {
            kept.clear();
        }
        kept.insert(digest, Arc::clone(&signers));
        Some(signers)
    }

    /// The same memo, recovering the signers of each signature met through it (a replica
    /// warming its copy: about five checks' cost a signature, once, so that later reviews
    /// need none). Reviews use the plain handle and never pay for it.
    pub fn recovering(&self) -> Memo {
        Memo {
            kept: Arc::clone(&self.kept),
            recover: true,
        }
    }

    /// Signatures whose signers are kept.
    pub fn signers_kept(&self) -> usize {
        self.signers_map().len()
    }

    fn signers_map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<Signers>>> {
        self.kept
            .signers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `trust::root` of the requirement, parsed once.
    fn root(&self, requirement: &SigstoreSigned) -> Result<Arc<Root>, Check> {
        if let Some(t) = self.map().by_requirement.get(requirement) {
            return t.root.clone();
        }
        let root = trust::root(requirement).map(Arc::new);
        let mut checks = self.map();
        if checks.by_requirement.len() >= MEMO_ROOTS {
            *checks = Checks::default();
        }
        checks
            .by_requirement
            .entry(requirement.clone())
            .or_insert_with(|| Trust {
                root: root.clone(),
                candidates: HashMap::new(),
            });
        root
    }

    /// `compute`'s answer for the layer fingerprinted `key` under `requirement`, once.
    fn candidates(
        &self,
        requirement: &SigstoreSigned,
        key: [u8; 32],
        compute: impl FnOnce() -> Result<Candidates, Check>,
    ) -> Result<Candidates, Check> {
        let kept = |checks: &Checks| {
            let trust = checks.by_requirement.get(requirement)?;
            trust.candidates.get(&key).cloned()
        };
        if let Some(c) = kept(&self.map()) {
            return c;
        }
        let c = compute();
        let mut checks = self.room();
        let Checks {
            by_requirement,
            len,
            ..
        } = &mut *checks;
        // Kept only while its root is: a memo that started over meanwhile forgets it.
        if let Some(trust) = by_requirement.get_mut(requirement) {
            if trust.candidates.insert(key, c.clone()).is_none() {
                *len += 1;
            }
        }
        c
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Checks> {
        self.kept
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lock, with room for one more entry.
    fn room(&self) -> std::sync::MutexGuard<'_, Checks> {
        let mut checks = self.map();
        if checks.len >= MEMO_ENTRIES {
            *checks = Checks::default();
        }
        checks
    }

    pub fn len(&self) -> usize {
        self.map().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The image as the node pulls it.
pub struct Pull<'a> {
    /// The reference as written in the pod, through the docker transport.
    pub intended: &'a Reference,
    /// The manifest of the instance the node runs.
    pub manifest: &'a [u8],
    /// The attachment's layers; empty when there is none or attachments are off.
    pub layers: &'a [Layer],
    /// The node's clock (Unix seconds): PKI chains are verified at this time.
    pub now: i64,
}

/// `PolicyContext.IsRunningImageAllowed` over one entry's requirements.
pub fn judge(requirements: &[Requirement], pull: &Pull, memo: &Memo) -> EntryVerdict {
    if requirements.is_empty() {
        return EntryVerdict {
            verdict: Verdict::Refused(
                "List of verification policy requirements must not be empty".into(),
            ),
            no_signature_required: false,
            requirements: Vec::new(),
            accepted_until: None,
        };
    }
    let results: Vec<RequirementVerdict> = requirements
        .iter()
        .map(|r| judge_requirement(r, pull, memo))
        .collect();
    let refused = results
        .iter()
        .find(|r| matches!(r.verdict, Verdict::Refused(_)));
    let unknown = results
        .iter()
        .find(|r| matches!(r.verdict, Verdict::Unknown(_)));
    let verdict = match (refused, unknown) {
        (Some(r), _) => r.verdict.clone(),
        (None, Some(u)) => u.verdict.clone(),
        (None, None) => Verdict::Accepted,
    };
    let accepted_until = results.iter().filter_map(|r| r.accepted_until).min();
    EntryVerdict {
        no_signature_required: verdict == Verdict::Accepted && !needs_signatures(requirements),
        accepted_until: accepted_until.filter(|_| verdict == Verdict::Accepted),
        verdict,
        requirements: results,
    }
}

fn judge_requirement(requirement: &Requirement, pull: &Pull, memo: &Memo) -> RequirementVerdict {
    let mut accepted_until = None;
    let (name, verdict, layers) = match requirement {
        Requirement::InsecureAcceptAnything => {
            ("insecureAcceptAnything", Verdict::Accepted, Vec::new())
        }
        Requirement::Reject => (
            "reject",
            Verdict::Refused(format!(
                "Running image docker://{} is rejected by policy.",
                pull.intended
            )),
            Vec::new(),
        ),
        Requirement::SignedBy(_) => (
            "signedBy",
            Verdict::Unknown("signedBy (GPG) requirements are not checked by this tool".into()),
            Vec::new(),
        ),
        Requirement::SigstoreSigned(s) => {
            let (verdict, layers, until) = sigstore_signed(s, pull, memo);
            accepted_until = until;
            ("sigstoreSigned", verdict, layers)
        }
    };
    RequirementVerdict {
        requirement: name.to_string(),
        verdict,
        layers,
        accepted_until,
    }
}

/// `prSigstoreSigned.isRunningImageAllowed`: accepted at the first layer that passes;
/// otherwise every signature layer's reason.
fn sigstore_signed(
    requirement: &SigstoreSigned,
    pull: &Pull,
    memo: &Memo,
) -> (Verdict, Vec<LayerVerdict>, Option<i64>) {
    let mut layers = Vec::new();
    let mut reasons = Vec::new();
    let mut unknown = None;
    let mut others = 0;
    for layer in pull.layers {
        if layer.media_type != SIGNATURE_MIME_TYPE {
            others += 1;
            layers.push(LayerVerdict {
                digest: layer.digest.clone(),
                verdict: None,
            });
            continue;
        }
        let (verdict, until) = signature_accepted(requirement, pull, layer, memo);
        layers.push(LayerVerdict {
            digest: layer.digest.clone(),
            verdict: Some(verdict.clone()),
        });
        match verdict {
            Verdict::Accepted => return (Verdict::Accepted, layers, until),
            Verdict::Refused(r) => reasons.push(r),
            Verdict::Unknown(r) => {
                unknown.get_or_insert(r);
            }
        }
    }
    if let Some(why) = unknown {
        return (Verdict::Unknown(why), layers, None);
    }
    let verdict = match reasons.len() {
        0 if others == 0 => "A signature was required, but no signature exists".to_string(),
        0 => format!("A signature was required, but no signature exists (0 non-sigstore signatures, {others} sigstore non-signature attachments)"),
        1 => reasons.remove(0),
        _ => format!(
            "None of the signatures were accepted, reasons: {}",
            reasons.join("; ")
        ),
    };
    (Verdict::Refused(verdict), layers, None)
}

/// `prSigstoreSigned.isSignatureAccepted`, then `internal.VerifySigstorePayload`: the
/// trust root, the annotation, the candidate keys (a Rekor SET, a Fulcio or PKI chain),
/// the cryptographic check against each, the payload, the manifest digest, the identity
/// — in that order. A PKI acceptance holds until the chain's first `notAfter`.
fn signature_accepted(
    requirement: &SigstoreSigned,
    pull: &Pull,
    layer: &Layer,
    memo: &Memo,
) -> (Verdict, Option<i64>) {
    let root = match memo.root(requirement) {
        Ok(root) => root,
        Err(check) => return (check_verdict(check), None),
    };
    let Some(b64) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
        return (
            Verdict::Refused(format!("missing {SIGNATURE_ANNOTATION} annotation")),
            None,
        );
    };
    let compute = || trust::candidates(&root, &layer.annotations, b64, &layer.payload, pull.now);
    let candidates = match &*root {
        // Keys alone need no check; chains verified at the node's clock are checked each time.
        Root::Keys { rekor: None, .. } | Root::Pki { .. } => compute(),
        _ => memo.candidates(requirement, fingerprint(layer), compute),
    };
    let candidates = match candidates {
        Ok(c) => c,
        Err(check) => return (check_verdict(check), None),
    };
    let verdict = payload_accepted(requirement, pull, layer, &candidates.keys, b64, memo);
    let until = (verdict == Verdict::Accepted)
        .then_some(candidates.valid_until)
        .flatten();
    (verdict, until)
}

/// A SHA-256 of everything of the layer: what its candidates under a requirement are a
/// function of, when the trust root reads no clock.
fn fingerprint(layer: &Layer) -> [u8; 32] {
    let annotations = layer.annotations.iter();
    fields_digest(
        std::iter::once(&layer.payload[..])
            .chain(annotations.flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()])),
    )
}

/// A SHA-256 of the fields, each after its length: no two lists of fields share one.
fn fields_digest<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    for field in fields {
        hash.update(&(field.len() as u64).to_be_bytes());
        hash.update(field);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.finish().as_ref());
    out
}

fn check_verdict(check: Check) -> Verdict {
    match check {
        Check::Valid => Verdict::Accepted,
        Check::Invalid(why) => Verdict::Refused(why),
        Check::Unknown(why) => Verdict::Unknown(why),
    }
}

/// `internal.VerifySigstorePayload` with the candidate keys.
fn payload_accepted(
    requirement: &SigstoreSigned,
    pull: &Pull,
    layer: &Layer,
    keys: &[PublicKey],
    b64: &str,
    memo: &Memo,
) -> Verdict {
    let signature = match decode_go_std_base64(b64) {
        Ok(s) => s,
        Err(e) => return Verdict::Refused(format!("base64 decoding: {e}")),
    };
    let mut failures = Vec::new();
    let mut unknown = None;
    let mut valid = false;
    for key in keys {
        match memo.verify(key, &layer.payload, &signature) {
            Check::Valid => {
                valid = true;
                break;
            }
            Check::Invalid(why) => failures.push(why),
            Check::Unknown(why) => {
                unknown.get_or_insert(why);
            }
        }
    }
    if !valid {
        if let Some(why) = unknown {
            return Verdict::Unknown(why);
        }
        return Verdict::Refused(format!(
            "cryptographic signature verification failed: {}",
            failures.join(", ")
        ));
    }
    let parsed = match payload::parse(&layer.payload) {
        Ok(p) => p,
        Err(e) => return Verdict::Refused(e),
    };
    if let Some(verdict) = digest_mismatch(pull.manifest, &parsed.docker_manifest_digest) {
        return verdict;
    }
    if !identity::matches(
        &requirement.signed_identity,
        pull.intended,
        &parsed.docker_reference,
    ) {
        return Verdict::Refused(format!(
            "Signature for identity {:?} is not accepted",
            parsed.docker_reference
        ));
    }
    Verdict::Accepted
}

/// `manifest.MatchesDigest`: the SHA-256 of the manifest, compared as text. A schema 1
/// manifest (whose digest strips its JWS signatures) is not judged here.
fn digest_mismatch(manifest: &[u8], signed: &str) -> Option<Verdict> {
    if is_schema1(manifest) {
        return Some(Verdict::Unknown(
            "the image has a Docker schema 1 manifest, whose digest this tool does not compute"
                .into(),
        ));
    }
    let actual = sha256(manifest);
    (actual != signed)
        .then(|| Verdict::Refused(format!("Signature for digest {signed} does not match")))
}

fn is_schema1(manifest: &[u8]) -> bool {
    match crate::gojson::parse(manifest) {
        Ok(crate::gojson::Value::Object(members)) => members
            .iter()
            .any(|(k, v)| k == "schemaVersion" && *v == crate::gojson::Value::Number("1".into())),
        _ => false,
    }
}

/// `sha256:<hex>` of the bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
}

/// The bytes' digest with the algorithm `expected` names (go-digest's `Algorithm.FromBytes`).
pub fn digest_as(expected: &str, bytes: &[u8]) -> String {
    let (name, algorithm) = match expected.split_once(':').map(|(a, _)| a) {
        Some("sha384") => ("sha384", &ring::digest::SHA384),
        Some("sha512") => ("sha512", &ring::digest::SHA512),
        _ => ("sha256", &ring::digest::SHA256),
    };
    format!(
        "{name}:{}",
        hex(ring::digest::digest(algorithm, bytes).as_ref())
    )
}

/// Lower-case hex. Every image's manifest digest is written out this way during a
/// judgement: by table, not one `format!` per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::{p256, sign};
    use base64::Engine;
    use cip_core::policy::{Bytes, SignedIdentity};

    struct Case {
        signer: ring::signature::EcdsaKeyPair,
        key_pem: String,
        manifest: Vec<u8>,
        intended: Reference,
    }

    fn case() -> Case {
        let (signer, key_pem) = p256();
        Case {
            signer,
            key_pem,
            manifest:
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
                    .to_vec(),
            intended: identity::pulled_reference("quay.io/org/app:v1").unwrap(),
        }
    }

    impl Case {
        fn digest(&self) -> String {
            format!(
                "sha256:{}",
                hex(ring::digest::digest(&ring::digest::SHA256, &self.manifest).as_ref())
            )
        }

        fn payload(&self, reference: &str, digest: &str) -> Vec<u8> {
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
            .into_bytes()
        }

        fn layer(&self, payload: Vec<u8>) -> Layer {
            let sig = sign(&self.signer, &payload);
            layer_with(
                payload,
                Some(base64::engine::general_purpose::STANDARD.encode(sig)),
            )
        }

        fn good_layer(&self) -> Layer {
            self.layer(self.payload("quay.io/org/app:v1", &self.digest()))
        }

        fn requirement(&self) -> Requirement {
            key_requirement(&self.key_pem)
        }

        fn pull<'a>(&'a self, layers: &'a [Layer]) -> Pull<'a> {
            Pull {
                intended: &self.intended,
                manifest: &self.manifest,
                layers,
                now: 0,
            }
        }

        fn judge(&self, requirements: &[Requirement], layers: &[Layer]) -> Verdict {
            judge(requirements, &self.pull(layers), &Memo::default()).verdict
        }
    }

    fn layer_with(payload: Vec<u8>, signature: Option<String>) -> Layer {
        let mut annotations = BTreeMap::new();
        if let Some(s) = signature {
            annotations.insert(SIGNATURE_ANNOTATION.to_string(), s);
        }
        Layer {
            digest: format!(
                "sha256:{}",
                hex(ring::digest::digest(&ring::digest::SHA256, &payload).as_ref())
            ),
            media_type: SIGNATURE_MIME_TYPE.into(),
            payload,
            annotations,
        }
    }

    fn key_requirement(pem: &str) -> Requirement {
        Requirement::SigstoreSigned(Box::new(SigstoreSigned {
            key_data: Some(Bytes::from_raw(pem.as_bytes())),
            ..Default::default()
        }))
    }

    fn refused_with(v: &Verdict, text: &str) -> bool {
        matches!(v, Verdict::Refused(r) if r.contains(text))
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(
            sha256(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_good_signature_is_accepted() {
        let c = case();
        assert_eq!(
            c.judge(&[c.requirement()], &[c.good_layer()]),
            Verdict::Accepted
        );
    }

    #[test]
    fn no_signature_is_refused() {
        let c = case();
        let v = c.judge(&[c.requirement()], &[]);
        assert!(
            refused_with(&v, "A signature was required, but no signature exists"),
            "{v:?}"
        );
    }

    #[test]
    fn a_layer_that_is_not_a_signature_is_skipped() {
        let c = case();
        let mut layer = c.good_layer();
        layer.media_type = "application/vnd.dev.sigstore.bundle+json".into();
        let v = c.judge(&[c.requirement()], &[layer]);
        assert!(
            refused_with(&v, "1 sigstore non-signature attachments"),
            "{v:?}"
        );
    }

    #[test]
    fn a_missing_annotation_is_refused() {
        let c = case();
        let mut layer = c.good_layer();
        layer.annotations.clear();
        let v = c.judge(&[c.requirement()], &[layer]);
        assert!(
            refused_with(&v, "missing dev.cosignproject.cosign/signature annotation"),
            "{v:?}"
        );
    }

    #[test]
    fn bad_base64_is_refused() {
        let c = case();
        let mut layer = c.good_layer();
        let sig = layer.annotations.get_mut(SIGNATURE_ANNOTATION).unwrap();
        sig.pop();
        let v = c.judge(&[c.requirement()], &[layer.clone()]);
        assert!(refused_with(&v, "base64 decoding"), "{v:?}");
        // Line breaks inside the base64 are skipped, as Go's decoder skips them.
        let mut wrapped = c.good_layer();
        let sig = wrapped.annotations.get_mut(SIGNATURE_ANNOTATION).unwrap();
        sig.insert(10, '\n');
        assert_eq!(c.judge(&[c.requirement()], &[wrapped]), Verdict::Accepted);
    }

    #[test]
    fn another_keys_signature_is_refused() {
        let c = case();
        let (_, other_pem) = p256();
        let v = c.judge(&[key_requirement(&other_pem)], &[c.good_layer()]);
        assert!(
            refused_with(&v, "cryptographic signature verification failed"),
            "{v:?}"
        );
    }

    #[test]
    fn a_key_that_does_not_parse_refuses_every_signature() {
        let c = case();
        let v = c.judge(&[key_requirement("not a key")], &[c.good_layer()]);
        assert!(
            refused_with(&v, "parsing public key 1: PEM decoding failed"),
            "{v:?}"
        );
    }

    #[test]
    fn a_signed_payload_that_does_not_parse_is_refused() {
        let c = case();
        let mut payload = c.payload("quay.io/org/app:v1", &c.digest());
        payload.extend_from_slice(b" x");
        let v = c.judge(&[c.requirement()], &[c.layer(payload)]);
        assert!(refused_with(&v, "after top-level value"), "{v:?}");
    }

    #[test]
    fn another_manifest_digest_is_refused() {
        let c = case();
        let other = format!("sha256:{}", "a".repeat(64));
        let v = c.judge(
            &[c.requirement()],
            &[c.layer(c.payload("quay.io/org/app:v1", &other))],
        );
        assert!(refused_with(&v, "does not match"), "{v:?}");
    }

    #[test]
    fn another_identity_is_refused() {
        let c = case();
        let v = c.judge(
            &[c.requirement()],
            &[c.layer(c.payload("quay.io/org/app", &c.digest()))],
        );
        assert!(
            refused_with(
                &v,
                "Signature for identity \"quay.io/org/app\" is not accepted"
            ),
            "{v:?}"
        );
        let mut repo = c.requirement();
        if let Requirement::SigstoreSigned(s) = &mut repo {
            s.signed_identity = SignedIdentity::MatchRepository;
        }
        assert_eq!(
            c.judge(
                &[repo],
                &[c.layer(c.payload("quay.io/org/app", &c.digest()))]
            ),
            Verdict::Accepted
        );
    }

    #[test]
    fn one_good_layer_among_bad_ones_is_enough() {
        let c = case();
        let bad = c.layer(c.payload("quay.io/org/other:v1", &c.digest()));
        assert_eq!(
            c.judge(&[c.requirement()], &[bad.clone(), c.good_layer()]),
            Verdict::Accepted
        );
        let v = c.judge(&[c.requirement()], &[bad.clone(), bad]);
        assert!(
            refused_with(&v, "None of the signatures were accepted"),
            "{v:?}"
        );
    }

    #[test]
    fn every_requirement_must_pass() {
        let c = case();
        let (_, other_pem) = p256();
        // Two policies on one scope: both keys must have signed.
        let v = c.judge(
            &[c.requirement(), key_requirement(&other_pem)],
            &[c.good_layer()],
        );
        assert!(
            refused_with(&v, "cryptographic signature verification failed"),
            "{v:?}"
        );
        let v = c.judge(
            &[Requirement::InsecureAcceptAnything, Requirement::Reject],
            &[],
        );
        assert!(refused_with(&v, "is rejected by policy"), "{v:?}");
        let v = c.judge(&[], &[]);
        assert!(refused_with(&v, "must not be empty"), "{v:?}");
        let pull = c.pull(&[]);
        let free = judge(
            &[Requirement::InsecureAcceptAnything],
            &pull,
            &Memo::default(),
        );
        assert!(free.no_signature_required && free.verdict == Verdict::Accepted);
    }

    #[test]
    fn what_is_not_ported_is_unknown_never_refused() {
        let c = case();
        // A CA read from the node's disk cannot be seen from here.
        let keyless = Requirement::SigstoreSigned(Box::new(SigstoreSigned {
            fulcio: Some(cip_core::policy::Fulcio {
                ca_path: Some("/etc/fulcio.pem".into()),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let v = c.judge(std::slice::from_ref(&keyless), &[c.good_layer()]);
        assert!(
            matches!(&v, Verdict::Unknown(r) if r.contains("file on the node")),
            "{v:?}"
        );
        // With no signature at all, containers/image refuses before looking at the root.
        assert!(refused_with(
            &c.judge(std::slice::from_ref(&keyless), &[]),
            "no signature exists"
        ));
        // An unknown requirement beside a refusal: refused.
        assert!(matches!(
            c.judge(&[keyless, Requirement::Reject], &[c.good_layer()]),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn a_repeated_check_is_memoized() {
        let c = case();
        let layer = c.good_layer();
        let pull = c.pull(std::slice::from_ref(&layer));
        let memo = Memo::default();
        judge(&[c.requirement()], &pull, &memo);
        judge(&[c.requirement()], &pull, &memo);
        assert_eq!(memo.len(), 1);
        assert_eq!(memo.map().by_requirement.len(), 1, "one root, parsed once");
    }

    #[test]
    fn trust_roots_are_kept_per_requirement_up_to_the_cap() {
        let c = case();
        let layer = c.good_layer();
        let pull = c.pull(std::slice::from_ref(&layer));
        let memo = Memo::default();
        let junk = |i: usize| {
            key_requirement(&format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(format!("junk {i}"))
            ))
        };
        for i in 0..MEMO_ROOTS {
            let v = judge(&[junk(i)], &pull, &memo).verdict;
            assert!(refused_with(&v, "parsing public key 1"), "{v:?}");
        }
        assert_eq!(memo.map().by_requirement.len(), MEMO_ROOTS);
        // One more starts over; what the memo forgot is parsed again, with the same verdict.
        assert_eq!(
            judge(&[c.requirement()], &pull, &memo).verdict,
            Verdict::Accepted
        );
        assert_eq!(memo.map().by_requirement.len(), 1);
        let v = judge(&[junk(0)], &pull, &memo).verdict;
        assert!(refused_with(&v, "parsing public key 1"), "{v:?}");
    }

    /// Signers recovered while warming answer every later key as the curve does, and are
    /// not kept as checks; a forged payload under a warmed signature is still refused.
    #[test]
    fn signers_recovered_while_warming_judge_later_keys() {
        let c = case();
        let layer = c.good_layer();
        let pull = c.pull(std::slice::from_ref(&layer));
        let memo = Memo::default();
        assert_eq!(
            judge(&[c.requirement()], &pull, &memo.recovering()).verdict,
            Verdict::Accepted
        );
        assert_eq!((memo.len(), memo.signers_kept()), (0, 1));
        let rotated = case();
        let under = |requirement: &Requirement, memo: &Memo| {
            judge(std::slice::from_ref(requirement), &pull, memo).verdict
        };
        for requirement in [c.requirement(), rotated.requirement()] {
            assert_eq!(
                under(&requirement, &memo),
                under(&requirement, &Memo::default())
            );
        }
        assert!(refused_with(
            &under(&rotated.requirement(), &memo),
            "cryptographic signature verification failed"
        ));
        assert_eq!(
            (memo.len(), memo.signers_kept()),
            (0, 1),
            "nothing checked by the curve"
        );
        // The same signature over a payload naming another digest: not this key's.
        let mut forged = layer.clone();
        forged.payload = c.payload("quay.io/org/app:v1", &format!("sha256:{}", "0".repeat(64)));
        let forged_pull = c.pull(std::slice::from_ref(&forged));
        let v = judge(&[c.requirement()], &forged_pull, &memo.recovering()).verdict;
        assert!(
            refused_with(&v, "cryptographic signature verification failed"),
            "{v:?}"
        );
        assert_eq!(
            v,
            judge(&[c.requirement()], &forged_pull, &Memo::default()).verdict
        );
    }
}
