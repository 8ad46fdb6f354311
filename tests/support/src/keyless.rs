//! Keyless and PKI signatures made in the test: CA chains (rcgen), Fulcio-like leaf
//! certificates (both OIDC issuer extensions, an email SAN, code signing), PKI leaves
//! (email and DNS SANs), and a test Rekor log key that signs SETs over the RFC 8785
//! canonical payload, as cosign attaches them (`dev.sigstore.cosign/bundle`).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SigningKey,
    PKCS_ECDSA_P256_SHA256,
};

/// `signature.SigstoreSignatureAnnotationKey` and the other cosign annotations.
pub const SIGNATURE: &str = "dev.cosignproject.cosign/signature";
pub const CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
pub const CHAIN: &str = "dev.sigstore.cosign/chain";
pub const BUNDLE: &str = "dev.sigstore.cosign/bundle";

const ISSUER_V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
const ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Valid over [from, until], in Unix seconds.
fn window(params: &mut CertificateParams, from: i64, until: i64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from as u64);
    params.not_after = epoch + Duration::from_secs(until as u64);
}

/// A certificate authority: its certificate and what it signs with.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cip-webhook tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str, from: i64, until: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = named(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    window(&mut params, from, until);
    params.use_authority_key_identifier_extension = true;
    params
}

impl Ca {
    /// A self-signed root valid over [from, until].
    pub fn root(cn: &str, from: i64, until: i64) -> Ca {
        let params = ca_params(cn, from, until);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// An intermediate this CA signs.
    pub fn intermediate(&self, cn: &str, from: i64, until: i64) -> Ca {
        self.intermediate_as(cn, from, until, IsCa::Ca(BasicConstraints::Unconstrained))
    }

    /// A certificate this CA signs that then signs others, with these basic constraints
    /// (a forged chain: not a CA at all, or a path length its chain exceeds).
    pub fn intermediate_as(&self, cn: &str, from: i64, until: i64, is_ca: IsCa) -> Ca {
        let mut params = ca_params(cn, from, until);
        params.is_ca = is_ca;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = params.signed_by(&key, &self.issuer).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf certificate this CA signs, and the leaf's key.
    pub fn leaf(&self, spec: &Leaf) -> (String, KeyPair) {
        let mut params = CertificateParams::default();
        params.distinguished_name = match &spec.common_name {
            Some(cn) => named(cn),
            None => DistinguishedName::new(),
        };
        window(&mut params, spec.from, spec.until);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if spec.code_signing {
            vec![ExtendedKeyUsagePurpose::CodeSigning]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        params.subject_alt_names = spec
            .emails
            .iter()
            .map(|e| SanType::Rfc822Name(e.as_str().try_into().unwrap()))
            .chain(
                spec.dns
                    .iter()
                    .map(|d| SanType::DnsName(d.as_str().try_into().unwrap())),
            )
            .collect();
        if let Some(issuer) = &spec.issuer_v1 {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    ISSUER_V1,
                    issuer.as_bytes().to_vec(),
                ));
        }
        if let Some(issuer) = &spec.issuer_v2 {
            let mut der = vec![0x0c, issuer.len() as u8];
            der.extend(issuer.as_bytes());
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(ISSUER_V2, der));
        }
        if spec.unknown_critical {
            let mut ext =
                CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00]);
            ext.set_criticality(true);
            params.custom_extensions.push(ext);
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = params.signed_by(&key, &self.issuer).unwrap().pem();
        (pem, key)
    }
}

/// What a leaf certificate says.
#[derive(Clone)]
pub struct Leaf {
    pub common_name: Option<String>,
    pub emails: Vec<String>,
    pub dns: Vec<String>,
    pub issuer_v1: Option<String>,
    pub issuer_v2: Option<String>,
    pub code_signing: bool,
    pub unknown_critical: bool,
    pub from: i64,
    pub until: i64,
}

impl Leaf {
    /// As Fulcio issues: no subject, the email SAN, both issuer extensions, ten minutes.
    pub fn fulcio(email: &str, issuer: &str, from: i64) -> Leaf {
        Leaf {
            common_name: None,
            emails: vec![email.to_string()],
            dns: Vec::new(),
            issuer_v1: Some(issuer.to_string()),
            issuer_v2: Some(issuer.to_string()),
            code_signing: true,
            unknown_critical: false,
            from,
            until: from + 600,
        }
    }

    /// As an enterprise CA issues: a subject, email and DNS SANs, long-lived.
    pub fn pki(email: &str, dns: &str, from: i64, until: i64) -> Leaf {
        Leaf {
            common_name: Some("signer".into()),
            emails: vec![email.to_string()],
            dns: vec![dns.to_string()],
            issuer_v1: None,
            issuer_v2: None,
            code_signing: true,
            unknown_critical: false,
            from,
            until,
        }
    }
}

/// An ECDSA signature (ASN.1, SHA-256) of `message`, base64 as cosign annotates it.
pub fn sign(key: &KeyPair, message: &[u8]) -> String {
    b64(&key.sign(message).unwrap())
}

/// A Rekor log's signing key.
pub struct Rekor {
    key: KeyPair,
    pub public_pem: String,
}

impl Default for Rekor {
    fn default() -> Self {
        Self::new()
    }
}

impl Rekor {
    pub fn new() -> Rekor {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let public_pem = key.public_key_pem();
        Rekor { key, public_pem }
    }

    /// The bundle annotation for a hashedrekord entry of (key or certificate PEM,
    /// signature, payload) integrated at `time`.
    pub fn bundle(
        &self,
        key_or_cert_pem: &str,
        signature_b64: &str,
        payload: &[u8],
        time: i64,
    ) -> String {
        let hash: String = ring::digest::digest(&ring::digest::SHA256, payload)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let body = serde_json::json!({
            "apiVersion": "0.0.1", "kind": "hashedrekord",
            "spec": {"data": {"hash": {"algorithm": "sha256", "value": hash}},
                     "signature": {"content": signature_b64,
                                   "publicKey": {"content": b64(key_or_cert_pem.as_bytes())}}}
        });
        self.bundle_of_body(body.to_string().as_bytes(), time)
    }

    /// A bundle around any entry body (for forged entries).
    pub fn bundle_of_body(&self, body: &[u8], time: i64) -> String {
        // Keys in RFC 8785 order: body, integratedTime, logID, logIndex.
        let canonical = format!(
            r#"{{"body":"{}","integratedTime":{time},"logID":"{}","logIndex":{}}}"#,
            b64(body),
            "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d",
            time % 1_000_000
        );
        let set = self.key.sign(canonical.as_bytes()).unwrap();
        let payload: serde_json::Value = serde_json::from_str(&canonical).unwrap();
        serde_json::json!({"SignedEntryTimestamp": b64(&set), "Payload": payload}).to_string()
    }
}

/// A cosign attachment layer: the payload and its annotations.
pub type Attachment = (Vec<u8>, BTreeMap<String, String>);

/// cosign's simple-signing payload for `identity` and `digest`.
pub fn payload(identity: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{identity}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}
