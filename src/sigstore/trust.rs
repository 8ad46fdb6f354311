//! The roots of trust of a `sigstoreSigned` requirement and the keys a layer may be
//! signed with under them, as containers/image derives them
//! (`signature/policy_eval_sigstore.go` `prepareTrustRoot` and `isSignatureAccepted`,
//! `signature/fulcio_cert.go`, `signature/pki_cert.go`): public keys (optionally tied to
//! a Rekor SET), a Fulcio CA with Rekor, or a PKI of roots and intermediates.

use std::collections::BTreeMap;

use cip_core::policy::SigstoreSigned;

use crate::keys::{self, Check, PublicKey};
use crate::rekor::{self, SET_ANNOTATION};
use crate::x509::{self, Cert};

/// `signature.SigstoreCertificateAnnotationKey`.
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// `signature.SigstoreIntermediateCertificateChainAnnotationKey`.
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";

const FULCIO_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
const FULCIO_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
const SAN: &str = "2.5.29.17";

/// `sigstoreSignedTrustRoot`.
pub enum Root {
    Keys {
        keys: Vec<PublicKey>,
        rekor: Option<Vec<PublicKey>>,
    },
    Fulcio {
        cas: Pool,
        rekor: Vec<PublicKey>,
        issuer: String,
        email: String,
    },
    Pki {
        roots: Pool,
        intermediates: Vec<Cert>,
        email: Option<String>,
        hostname: Option<String>,
    },
}

#[derive(Debug)]
/// An `x509.CertPool` from `AppendCertsFromPEM`, and whether a block Go might have read
/// was beyond this port (then a failed chain is unknown, not refused).
pub struct Pool {
    pub certs: Vec<Cert>,
    pub unreadable: Option<String>,
}

/// The keys a layer's payload signature is checked with, and for a PKI chain the time
/// the chain stops verifying.
#[derive(Debug, Clone)]
pub struct Candidates {
    pub keys: Vec<PublicKey>,
    pub valid_until: Option<i64>,
}

fn nonempty<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

fn set_str(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// `prSigstoreSigned.prepareTrustRoot`. Files on the node cannot be read here.
pub fn root(requirement: &SigstoreSigned) -> Result<Root, Check> {
    let on_node =
        |what: &str| Check::Unknown(format!("the {what} is read from a file on the node"));
    if set_str(&requirement.key_path).is_some() || nonempty(&requirement.key_paths) {
        return Err(on_node("key (keyPath)"));
    }
    if set_str(&requirement.rekor_public_key_path).is_some()
        || nonempty(&requirement.rekor_public_key_paths)
    {
        return Err(on_node("Rekor key (rekorPublicKeyPath)"));
    }
    let key_pems: Option<Vec<Vec<u8>>> = match (&requirement.key_data, &requirement.key_datas) {
        (Some(one), Some(many)) if !one.is_empty() && !many.is_empty() => {
            return Err(Check::Invalid(
                r#"Internal inconsistency: more than one of "keyPath", "keyPaths", "keyData", "keyDatas" specified"#.into(),
            ))
        }
        (Some(one), _) if !one.is_empty() => Some(vec![one.raw()]),
        (_, Some(many)) if !many.is_empty() => Some(many.iter().map(|b| b.raw()).collect()),
        _ => None,
    };
    let keys = key_pems
        .map(|pems| {
            pems.iter()
                .enumerate()
                .map(|(i, pem)| {
                    keys::parse_pem(pem)
                        .map_err(|e| Check::Invalid(format!("parsing public key {}: {e}", i + 1)))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let fulcio = requirement.fulcio.as_ref().map(fulcio_root).transpose()?;
    let rekor = rekor_keys(requirement)?;
    let pki = requirement.pki.as_ref().map(pki_root).transpose()?;
    match (keys, fulcio, pki) {
        (Some(keys), None, None) => Ok(Root::Keys { keys, rekor }),
        (None, Some((cas, issuer, email)), None) => match rekor {
            Some(rekor) => Ok(Root::Fulcio {
                cas,
                rekor,
                issuer,
                email,
            }),
            None => Err(Check::Invalid(
                "Internal inconsistency: Fulcio CA specified without a Rekor public key".into(),
            )),
        },
        (None, None, Some(pki)) if rekor.is_none() => Ok(pki),
        (None, None, Some(_)) => Err(Check::Invalid(
            "Internal inconsistency: PKI specified with a Rekor public key".into(),
        )),
        (None, None, None) => Err(Check::Invalid(
            "Internal inconsistency: A public key, Fulcio, or PKI must be specified.".into(),
        )),
        _ => Err(Check::Invalid(
            "Internal inconsistency: More than one of public key, Fulcio, or PKI specified".into(),
        )),
    }
}

fn rekor_keys(requirement: &SigstoreSigned) -> Result<Option<Vec<PublicKey>>, Check> {
    let pems: Vec<Vec<u8>> = match (
        &requirement.rekor_public_key_data,
        &requirement.rekor_public_key_datas,
    ) {
        (Some(one), Some(many)) if !one.is_empty() && !many.is_empty() => {
            return Err(Check::Invalid(
                r#"Internal inconsistency: both "rekorPublicKeyPath" and "rekorPublicKeyData" specified"#.into(),
            ))
        }
        (Some(one), _) if !one.is_empty() => vec![one.raw()],
        (_, Some(many)) if !many.is_empty() => many.iter().map(|b| b.raw()).collect(),
        _ => return Ok(None),
    };
    pems.iter()
        .enumerate()
        .map(|(i, pem)| {
            let key = keys::parse_pem(pem)
                .map_err(|e| Check::Invalid(format!("parsing Rekor public key {}: {e}", i + 1)))?;
            match key {
                PublicKey::Ecdsa { .. } => Ok(key),
                _ => Err(Check::Invalid(format!(
                    "Rekor public key {} is not using ECDSA",
                    i + 1
                ))),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn fulcio_root(f: &cip_core::policy::Fulcio) -> Result<(Pool, String, String), Check> {
    if set_str(&f.ca_path).is_some() {
        return Err(Check::Unknown(
            "the Fulcio CA is read from a file on the node (caPath)".into(),
        ));
    }
    let data = f.ca_data.as_ref().map(|b| b.raw()).unwrap_or_default();
    if data.is_empty() {
        return Err(Check::Invalid(
            r#"Internal inconsistency: Fulcio specified with not exactly one of "caPath" nor "caData""#.into(),
        ));
    }
    let cas = append_certs_from_pem(&data, "error loading Fulcio CA certificates")?;
    let issuer = set_str(&f.oidc_issuer).unwrap_or_default().to_string();
    let email = set_str(&f.subject_email).unwrap_or_default().to_string();
    if issuer.is_empty() {
        return Err(Check::Invalid(
            "Internal inconsistency: Fulcio use set up without OIDC issuer".into(),
        ));
    }
    if email.is_empty() {
        return Err(Check::Invalid(
            "Internal inconsistency: Fulcio use set up without subject email".into(),
        ));
    }
    Ok((cas, issuer, email))
}

fn pki_root(p: &cip_core::policy::Pki) -> Result<Root, Check> {
    if set_str(&p.ca_roots_path).is_some() || set_str(&p.ca_intermediates_path).is_some() {
        return Err(Check::Unknown(
            "the PKI certificates are read from files on the node".into(),
        ));
    }
    let data = p
        .ca_roots_data
        .as_ref()
        .map(|b| b.raw())
        .unwrap_or_default();
    if data.is_empty() {
        return Err(Check::Invalid(
            r#"Internal inconsistency: PKI specified with not exactly one of "caRootsPath" nor "caRootsData""#.into(),
        ));
    }
    let roots = append_certs_from_pem(&data, "error loading PKI CA Roots certificates")?;
    let intermediates = match p.ca_intermediates_data.as_ref().map(|b| b.raw()) {
        Some(data) if !data.is_empty() => x509::certificates_from_pem(&data)
            .map_err(|e| wrap(e, "loading trusted intermediate certificates"))?,
        _ => Vec::new(),
    };
    let email = set_str(&p.subject_email).map(str::to_string);
    let hostname = set_str(&p.subject_hostname).map(str::to_string);
    if email.is_none() && hostname.is_none() {
        return Err(Check::Invalid(
            "Internal inconsistency: PKI use set up without subject email or subject hostname"
                .into(),
        ));
    }
    Ok(Root::Pki {
        roots,
        intermediates,
        email,
        hostname,
    })
}

/// `CertPool.AppendCertsFromPEM`: `CERTIFICATE` blocks without headers that parse; the
/// rest skipped.
fn append_certs_from_pem(data: &[u8], none_loaded: &str) -> Result<Pool, Check> {
    let mut pool = Pool {
        certs: Vec::new(),
        unreadable: None,
    };
    let mut rest = data;
    while let Some((block, after)) = crate::pem::decode(rest) {
        rest = after;
        if block.label != "CERTIFICATE" || block.has_headers {
            continue;
        }
        match x509::parse(&block.bytes) {
            Ok(cert) => pool.certs.push(cert),
            Err(Check::Unknown(why)) => {
                pool.unreadable.get_or_insert(why);
            }
            Err(_) => {}
        }
    }
    if pool.certs.is_empty() {
        return Err(match pool.unreadable {
            Some(why) => Check::Unknown(why),
            None => Check::Invalid(none_loaded.into()),
        });
    }
    Ok(pool)
}

fn wrap(check: Check, context: &str) -> Check {
    match check {
        Check::Invalid(e) => Check::Invalid(format!("{context}: {e}")),
        other => other,
    }
}

/// The part of `isSignatureAccepted` before the payload check: which keys may have
/// signed this layer.
pub fn candidates(
    root: &Root,
    annotations: &BTreeMap<String, String>,
    base64_signature: &str,
    payload: &[u8],
    now: i64,
) -> Result<Candidates, Check> {
    let annotation = |key: &str| {
        annotations
            .get(key)
            .map(|v| v.as_bytes())
            .ok_or_else(|| Check::Invalid(format!("missing {key} annotation")))
    };
    let chain = annotations
        .get(CHAIN_ANNOTATION)
        .map(|c| c.as_bytes())
        .unwrap_or_default();
    match root {
        Root::Keys { keys, rekor: None } => Ok(Candidates {
            keys: keys.clone(),
            valid_until: None,
        }),
        Root::Keys {
            keys,
            rekor: Some(rekor_keys),
        } => {
            let set = annotation(SET_ANNOTATION)?;
            key_with_rekor(keys, rekor_keys, set, base64_signature, payload)
        }
        Root::Fulcio {
            cas,
            rekor: rekor_keys,
            issuer,
            email,
        } => {
            let set = annotation(SET_ANNOTATION)?;
            let cert = annotation(CERTIFICATE_ANNOTATION)?;
            let ours = rekor::single_pem(cert).map_err(|e| {
                Check::Invalid(format!(
                    "public key or cert to be matched against publicKey in Rekor SET {e}"
                ))
            });
            let time = rekor::verify_set(rekor_keys, set, ours, base64_signature, payload)?;
            let key = fulcio_certificate(cas, issuer, email, time, cert, chain)?;
            Ok(Candidates {
                keys: vec![key],
                valid_until: None,
            })
        }
        Root::Pki {
            roots,
            intermediates,
            email,
            hostname,
        } => {
            let cert = annotation(CERTIFICATE_ANNOTATION)?;
            let (key, until) = pki_certificate(
                roots,
                intermediates,
                email.as_deref(),
                hostname.as_deref(),
                now,
                cert,
                chain,
            )?;
            Ok(Candidates {
                keys: vec![key],
                valid_until: Some(until),
            })
        }
    }
}

/// Public keys with a Rekor key: the first key the SET was made for is the only one.
fn key_with_rekor(
    keys: &[PublicKey],
    rekor_keys: &[PublicKey],
    set: &[u8],
    base64_signature: &str,
    payload: &[u8],
) -> Result<Candidates, Check> {
    let mut failures = Vec::new();
    for key in keys {
        let der = key.pkix_der().ok_or_else(|| {
            Check::Invalid("re-marshaling public key to PEM: unsupported key type".into())
        });
        match rekor::verify_set(rekor_keys, set, der, base64_signature, payload) {
            Ok(_) => {
                return Ok(Candidates {
                    keys: vec![key.clone()],
                    valid_until: None,
                })
            }
            Err(Check::Invalid(why)) => failures.push(why),
            Err(other) => return Err(other),
        }
    }
    Err(Check::Invalid(format!(
        "No public key verified against the RekorSET: {}",
        failures.join(", ")
    )))
}

/// The intermediates a signature's chain annotation adds: all but its last certificate.
fn chain_intermediates(chain: &[u8]) -> Result<Vec<Cert>, Check> {
    if chain.is_empty() {
        return Ok(Vec::new());
    }
    let mut certs =
        x509::certificates_from_pem(chain).map_err(|e| wrap(e, "loading certificate chain"))?;
    certs.pop();
    Ok(certs)
}

/// `parseLeafCertFromPEM`: exactly one certificate.
fn leaf(cert: &[u8]) -> Result<Cert, Check> {
    let mut certs =
        x509::certificates_from_pem(cert).map_err(|e| wrap(e, "parsing leaf certificate"))?;
    match certs.len() {
        0 => Err(Check::Invalid(
            "no certificate found in signature certificate data".into(),
        )),
        1 => Ok(certs.remove(0)),
        _ => Err(Check::Invalid(
            "unexpected multiple certificates present in signature certificate data".into(),
        )),
    }
}

/// A failed chain is unknown when a pool certificate was beyond this port.
fn chain_failure(check: Check, pool: &Pool) -> Check {
    match (check, &pool.unreadable) {
        (Check::Invalid(_), Some(why)) => Check::Unknown(why.clone()),
        (Check::Invalid(e), None) => {
            Check::Invalid(format!("veryfing leaf certificate failed: {e}"))
        }
        (other, _) => other,
    }
}

/// `fulcioTrustRoot.verifyFulcioCertificateAtTime` at the SET's time.
fn fulcio_certificate(
    cas: &Pool,
    issuer: &str,
    email: &str,
    time: i64,
    cert: &[u8],
    chain: &[u8],
) -> Result<PublicKey, Check> {
    let intermediates = chain_intermediates(chain)?;
    let mut leaf = leaf(cert)?;
    // Fulcio matches the SAN itself: a SAN with no name Go knows is not unhandled here.
    leaf.unhandled_critical.retain(|oid| oid != SAN);
    x509::verify(&leaf, &intermediates, &cas.certs, time).map_err(|e| chain_failure(e, cas))?;
    let got = fulcio_issuer(&leaf)?;
    if got != issuer {
        return Err(Check::Invalid(format!(
            "Unexpected Fulcio OIDC issuer {got:?}"
        )));
    }
    require_email(&leaf, email)?;
    leaf_key(leaf)
}

/// `fulcioIssuerInCertificate`: the v1 (raw) and v2 (DER string) issuer extensions.
fn fulcio_issuer(cert: &Cert) -> Result<String, Check> {
    let v1 = cert
        .extensions
        .iter()
        .find(|(oid, _)| oid == FULCIO_ISSUER_V1)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    let v2 = match cert
        .extensions
        .iter()
        .find(|(oid, _)| oid == FULCIO_ISSUER_V2)
    {
        Some((_, value)) => Some(der_string(value)?),
        None => None,
    };
    match (v1, v2) {
        (Some(a), Some(b)) if a != b => Err(Check::Invalid(format!(
            "inconsistent OIDC issuer extension values: v1 {a:?}, v2 {b:?}"
        ))),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Err(Check::Invalid(
            "Fulcio certificate is missing the issuer extension".into(),
        )),
    }
}

/// `asn1.Unmarshal` into a Go string, for the string types a Fulcio issuer uses.
fn der_string(value: &[u8]) -> Result<String, Check> {
    let tag = value.first().copied().unwrap_or(0);
    let Some((body, rest)) = keys::der_element(value, tag) else {
        return Err(Check::Invalid(
            "invalid ASN.1 in OIDC issuer v2 extension".into(),
        ));
    };
    if !rest.is_empty() {
        return Err(Check::Invalid(
            "invalid ASN.1 in OIDC issuer v2 extension, trailing data".into(),
        ));
    }
    let text = std::str::from_utf8(body).ok();
    let printable = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?*&".contains(&b))
    };
    let bad =
        || Check::Invalid("invalid ASN.1 in OIDC issuer v2 extension: asn1: syntax error".into());
    match (tag, text) {
        (12, Some(s)) => Ok(s.to_string()),
        (22, Some(s)) if s.is_ascii() => Ok(s.to_string()),
        (19, Some(s)) if printable(s) => Ok(s.to_string()),
        (12 | 19 | 22, _) => Err(bad()),
        // NumericString, T61String, GeneralString, BMPString: Go reads them too.
        (18 | 20 | 27 | 30, _) => Err(Check::Unknown(format!(
            "an OIDC issuer v2 extension of ASN.1 string tag {tag} is not read by this tool"
        ))),
        _ => Err(Check::Invalid(
            "invalid ASN.1 in OIDC issuer v2 extension: asn1: structure error: tags don't match"
                .into(),
        )),
    }
}

fn require_email(leaf: &Cert, email: &str) -> Result<(), Check> {
    if leaf.emails.iter().any(|e| e == email) {
        return Ok(());
    }
    Err(Check::Invalid(format!(
        "Required email {email:?} not found (got {:?})",
        leaf.emails
    )))
}

fn leaf_key(leaf: Cert) -> Result<PublicKey, Check> {
    leaf.key.map_err(|e| {
        Check::Unknown(format!(
            "the certificate's public key is one this tool cannot use ({e})"
        ))
    })
}

/// `verifyPKI` at the current time: the key, and when the chain expires.
fn pki_certificate(
    roots: &Pool,
    trusted_intermediates: &[Cert],
    email: Option<&str>,
    hostname: Option<&str>,
    now: i64,
    cert: &[u8],
    chain: &[u8],
) -> Result<(PublicKey, i64), Check> {
    let mut intermediates = trusted_intermediates.to_vec();
    intermediates.extend(chain_intermediates(chain)?);
    let leaf = leaf(cert)?;
    let until = x509::verify(&leaf, &intermediates, &roots.certs, now)
        .map_err(|e| chain_failure(e, roots))?;
    if let Some(email) = email {
        require_email(&leaf, email)?;
    }
    if let Some(host) = hostname {
        x509::verify_hostname(&leaf, host)
            .map_err(|e| Check::Invalid(format!("Unexpected subject hostname: {e}")))?;
    }
    Ok((leaf_key(leaf)?, until))
}

#[cfg(test)]
mod tests {
    //! Counterparts of `fulcio_cert_test.go` (`TestFulcioIssuerInCertificate`,
    //! `TestParseLeafCertsFromPEM`, `TestFulcioTrustRootVerifyFulcioCertificateAtTime`) and
    //! `pki_cert_test.go` (`TestPKIVerify`), on certificates made here.

    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, SanType,
    };

    const T0: i64 = 1_700_000_000;
    const ISSUER: &str = "https://github.com/login/oauth";
    const EMAIL: &str = "test-user@example.com";
    const V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
    const V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];

    fn window(p: &mut CertificateParams, from: i64, until: i64) {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        p.not_before = epoch + std::time::Duration::from_secs(from as u64);
        p.not_after = epoch + std::time::Duration::from_secs(until as u64);
    }

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str, parent: Option<&Ca>) -> Ca {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.use_authority_key_identifier_extension = parent.is_some();
        window(&mut p, T0 - 86_400, T0 + 86_400 * 365);
        let key = KeyPair::generate().unwrap();
        let pem = match parent {
            Some(parent) => p.signed_by(&key, &parent.issuer).unwrap().pem(),
            None => p.self_signed(&key).unwrap().pem(),
        };
        Ca {
            issuer: Issuer::new(p, key),
            pem,
        }
    }

    /// A Fulcio-like leaf (no subject, the email SAN, code signing, ten minutes from T0)
    /// after `change`.
    fn leaf(by: &Ca, change: impl FnOnce(&mut CertificateParams)) -> String {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::Rfc822Name(EMAIL.try_into().unwrap())];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        p.use_authority_key_identifier_extension = true;
        p.custom_extensions = vec![
            CustomExtension::from_oid_content(V1, ISSUER.as_bytes().to_vec()),
            CustomExtension::from_oid_content(V2, utf8(ISSUER)),
        ];
        window(&mut p, T0, T0 + 600);
        change(&mut p);
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, &by.issuer).unwrap().pem()
    }

    fn utf8(s: &str) -> Vec<u8> {
        [&[0x0c, s.len() as u8][..], s.as_bytes()].concat()
    }

    struct Fulcio {
        root: Ca,
        inter: Ca,
    }

    impl Fulcio {
        fn new() -> Fulcio {
            let root = ca("root", None);
            let inter = ca("intermediate", Some(&root));
            Fulcio { root, inter }
        }

        fn pool(&self) -> Pool {
            append_certs_from_pem(self.root.pem.as_bytes(), "none").unwrap()
        }

        fn chain(&self) -> String {
            format!("{}{}", self.inter.pem, self.root.pem)
        }

        fn check(&self, cert: &str, chain: &str, at: i64) -> Result<PublicKey, Check> {
            fulcio_certificate(
                &self.pool(),
                ISSUER,
                EMAIL,
                at,
                cert.as_bytes(),
                chain.as_bytes(),
            )
        }
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, Check>, why: &str) -> bool {
        matches!(&r, Err(Check::Invalid(e)) if e.contains(why))
    }

    #[test]
    fn fulcio_issuer_in_certificate() {
        let f = Fulcio::new();
        let with = |exts: Vec<CustomExtension>| {
            let cert = leaf(&f.inter, |p| p.custom_extensions = exts);
            f.check(&cert, &f.chain(), T0 + 60)
        };
        let v1 = || CustomExtension::from_oid_content(V1, ISSUER.as_bytes().to_vec());
        let v2 = |value: Vec<u8>| CustomExtension::from_oid_content(V2, value);
        assert!(refused(
            with(vec![]),
            "Fulcio certificate is missing the issuer extension"
        ));
        assert!(refused(with(vec![v1(), v1()]), "duplicate"));
        assert!(refused(
            with(vec![v2(utf8(ISSUER)), v2(utf8(ISSUER))]),
            "duplicate"
        ));
        assert!(refused(
            with(vec![v2(vec![0x02, 0x01, 0x01])]),
            "asn1: structure error"
        ));
        assert!(refused(
            with(vec![v2([utf8(ISSUER), vec![0]].concat())]),
            "trailing data"
        ));
        assert!(with(vec![v1()]).is_ok());
        assert!(with(vec![v2(utf8(ISSUER))]).is_ok());
        assert!(refused(
            with(vec![v1(), v2(utf8("https://other"))]),
            "inconsistent OIDC issuer extension values"
        ));
        assert!(with(vec![v1(), v2(utf8(ISSUER))]).is_ok());
    }

    #[test]
    fn parse_leaf_certs_from_pem() {
        let f = Fulcio::new();
        let cert = leaf(&f.inter, |_| {});
        assert!(leaf_of(&cert).is_ok());
        assert!(refused(leaf_of(""), "no certificate found"));
        assert!(refused(leaf_of("not PEM"), "error during PEM decoding"));
        assert!(refused(
            leaf_of(&cert.repeat(2)),
            "unexpected multiple certificates"
        ));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(refused(leaf_of(garbage), "x509: malformed certificate"));
    }

    fn leaf_of(pem: &str) -> Result<Cert, Check> {
        super::leaf(pem.as_bytes())
    }

    #[test]
    fn fulcio_certificate_at_time() {
        let f = Fulcio::new();
        let cert = leaf(&f.inter, |_| {});
        assert!(f.check(&cert, &f.chain(), T0 + 60).is_ok());
        assert!(refused(
            f.check(&cert, "not PEM", T0 + 60),
            "loading certificate chain"
        ));
        assert!(refused(
            f.check("not PEM", &f.chain(), T0 + 60),
            "parsing leaf certificate"
        ));
        // No intermediates: fails as is, passes with the intermediate among the roots.
        assert!(refused(f.check(&cert, "", T0 + 60), "unknown authority"));
        let both =
            append_certs_from_pem(format!("{}{}", f.root.pem, f.inter.pem).as_bytes(), "").unwrap();
        assert!(fulcio_certificate(&both, ISSUER, EMAIL, T0 + 60, cert.as_bytes(), b"").is_ok());
        // The chain's last certificate is not an intermediate: the root alone adds nothing.
        assert!(refused(
            f.check(&cert, &f.root.pem, T0 + 60),
            "unknown authority"
        ));
        for at in [T0 - 1, T0 + 601] {
            assert!(refused(
                f.check(&cert, &f.chain(), at),
                "expired or is not yet valid"
            ));
        }
        let other_name = SanType::OtherName((vec![1, 2, 3, 4], "Foo".into()));
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "OtherName in SAN",
                leaf(&f.inter, |p| p.subject_alt_names = vec![other_name]),
                r#"Required email "test-user@example.com" not found"#,
            ),
            (
                "Unhandled critical extension",
                leaf(&f.inter, |p| {
                    let mut e =
                        CustomExtension::from_oid_content(&[2, 99999, 99998], vec![0x05, 0x00]);
                    e.set_criticality(true);
                    p.custom_extensions.push(e);
                }),
                "unhandled critical extension",
            ),
            (
                "Issuer mismatch",
                leaf(&f.inter, |p| {
                    p.custom_extensions =
                        vec![CustomExtension::from_oid_content(V1, b"https://x".to_vec())]
                }),
                "Unexpected Fulcio OIDC issuer",
            ),
            (
                "Missing subject email",
                leaf(&f.inter, |p| p.subject_alt_names = vec![]),
                "Required email",
            ),
            (
                "Multiple emails, one matches",
                leaf(&f.inter, |p| {
                    p.subject_alt_names = ["a@example.com", EMAIL, "c@example.com"]
                        .iter()
                        .map(|e| SanType::Rfc822Name((*e).try_into().unwrap()))
                        .collect()
                }),
                "",
            ),
            (
                "Email mismatch",
                leaf(&f.inter, |p| {
                    p.subject_alt_names =
                        vec![SanType::Rfc822Name("a@example.com".try_into().unwrap())]
                }),
                "Required email",
            ),
            (
                "No code signing",
                leaf(&f.inter, |p| {
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
                }),
                "incompatible key usage",
            ),
            (
                "Any usage",
                leaf(&f.inter, |p| {
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any]
                }),
                "",
            ),
        ];
        for (name, cert, why) in cases {
            let r = f.check(&cert, &f.chain(), T0 + 60);
            if why.is_empty() {
                assert!(r.is_ok(), "{name}: {r:?}");
            } else {
                assert!(refused(r.clone(), why), "{name}: {r:?}");
            }
        }
        // A leaf the attacker's root issued, with that root as its chain.
        let attacker = ca("root", None);
        let forged = leaf(&attacker, |_| {});
        assert!(refused(
            f.check(&forged, &attacker.pem, T0 + 60),
            "unknown authority"
        ));
    }

    fn pki_leaf(by: &Ca, change: impl FnOnce(&mut CertificateParams)) -> String {
        leaf(by, |p| {
            p.distinguished_name.push(DnType::CommonName, "signer");
            p.custom_extensions.clear();
            p.subject_alt_names = vec![
                SanType::Rfc822Name(EMAIL.try_into().unwrap()),
                SanType::DnsName("myhost.example.com".try_into().unwrap()),
            ];
            window(p, T0, T0 + 86_400);
            change(p);
        })
    }

    /// (name, leaf, required email, required hostname, expected error or "").
    type PkiCase<'a> = (&'a str, String, Option<&'a str>, Option<&'a str>, &'a str);

    #[test]
    fn pki_verify() {
        let f = Fulcio::new();
        let roots = f.pool();
        let trusted = x509::certificates_from_pem(f.inter.pem.as_bytes()).unwrap();
        let cert = pki_leaf(&f.inter, |_| {});
        let check =
            |cert: &str, chain: &str, trusted: &[Cert], email: Option<&str>, host: Option<&str>| {
                pki_certificate(
                    &roots,
                    trusted,
                    email,
                    host,
                    T0 + 60,
                    cert.as_bytes(),
                    chain.as_bytes(),
                )
            };
        let (host, email) = (Some("myhost.example.com"), Some(EMAIL));
        let (_, until) = check(&cert, &f.chain(), &trusted, email, host).unwrap();
        assert_eq!(until, T0 + 86_400, "the leaf expires first");
        assert!(refused(
            check(&cert, "not a certificate", &trusted, email, host),
            "loading certificate chain"
        ));
        assert!(refused(
            check("not a certificate", &f.chain(), &trusted, email, host),
            "parsing leaf"
        ));
        assert!(refused(
            check(&cert, "", &[], email, None),
            "unknown authority"
        ));
        assert!(check(&cert, "", &trusted, email, None).is_ok());
        assert!(check(&cert, &f.chain(), &[], email, None).is_ok());
        // Verified at the current time: expired and not-yet-valid leaves fail by themselves.
        for (from, until) in [(T0 - 7_200, T0 - 3_600), (T0 + 3_600, T0 + 7_200)] {
            let c = pki_leaf(&f.inter, |p| window(p, from, until));
            assert!(refused(
                check(&c, &f.chain(), &trusted, email, None),
                "expired or is not yet valid"
            ));
        }
    }

    /// `TestPKIVerify`'s subject cases.
    #[test]
    fn pki_subject_checks() {
        let f = Fulcio::new();
        let roots = f.pool();
        let trusted = x509::certificates_from_pem(f.inter.pem.as_bytes()).unwrap();
        let check = |cert: &str, email: Option<&str>, host: Option<&str>| {
            pki_certificate(
                &roots,
                &trusted,
                email,
                host,
                T0 + 60,
                cert.as_bytes(),
                f.chain().as_bytes(),
            )
        };
        let (host, email) = (Some("myhost.example.com"), Some(EMAIL));
        let other_name = SanType::OtherName((vec![1, 2, 3, 4], "Foo".into()));
        let dns = |names: &[&str]| -> Vec<SanType> {
            names
                .iter()
                .map(|n| SanType::DnsName((*n).try_into().unwrap()))
                .collect()
        };
        let cases: Vec<PkiCase> = vec![
            (
                "OtherName in SAN",
                pki_leaf(&f.inter, |p| {
                    p.distinguished_name = Default::default();
                    p.subject_alt_names = vec![other_name];
                }),
                None,
                host,
                "unhandled critical extension",
            ),
            (
                "Unhandled critical extension",
                pki_leaf(&f.inter, |p| {
                    let mut e =
                        CustomExtension::from_oid_content(&[2, 99999, 99998], vec![0x05, 0x00]);
                    e.set_criticality(true);
                    p.custom_extensions.push(e);
                }),
                None,
                host,
                "unhandled critical extension",
            ),
            (
                "Missing subject hostname",
                pki_leaf(&f.inter, |p| p.subject_alt_names = vec![]),
                None,
                host,
                "Unexpected subject hostname",
            ),
            (
                "Multiple hostnames, one matches",
                pki_leaf(&f.inter, |p| {
                    p.subject_alt_names =
                        dns(&["a.example.com", "myhost.example.com", "c.example.com"])
                }),
                None,
                host,
                "",
            ),
            (
                "Hostname mismatch",
                pki_leaf(&f.inter, |p| p.subject_alt_names = dns(&["a.example.com"])),
                None,
                host,
                "Unexpected subject hostname",
            ),
            (
                "Wildcard matches one label",
                pki_leaf(&f.inter, |p| p.subject_alt_names = dns(&["*.example.com"])),
                None,
                host,
                "",
            ),
            (
                "Wildcard matches only one label",
                pki_leaf(&f.inter, |p| p.subject_alt_names = dns(&["*.com"])),
                None,
                host,
                "Unexpected subject hostname",
            ),
            (
                "Hostname case and trailing dot",
                pki_leaf(&f.inter, |p| {
                    p.subject_alt_names = dns(&["MyHost.Example.com"])
                }),
                None,
                Some("myhost.example.com."),
                "",
            ),
            (
                "Missing subject email",
                pki_leaf(&f.inter, |p| {
                    p.subject_alt_names = dns(&["myhost.example.com"])
                }),
                email,
                None,
                "Required email",
            ),
            (
                "Email mismatch",
                pki_leaf(&f.inter, |p| {
                    p.subject_alt_names =
                        vec![SanType::Rfc822Name("a@example.com".try_into().unwrap())]
                }),
                email,
                None,
                "Required email",
            ),
            (
                "Email and hostname both checked",
                pki_leaf(&f.inter, |p| {
                    p.subject_alt_names = dns(&["myhost.example.com"])
                }),
                email,
                host,
                "Required email",
            ),
        ];
        for (name, cert, email, host, why) in cases {
            let r = check(&cert, email, host);
            if why.is_empty() {
                assert!(r.is_ok(), "{name}: {r:?}");
            } else {
                assert!(refused(r.clone(), why), "{name}: {r:?}");
            }
        }
    }

    /// `TestFulcioTrustRootValidate`, `TestPKITrustRootValidate` and the combinations
    /// `isSignatureAccepted` refuses as internal inconsistencies.
    #[test]
    fn trust_roots_are_validated_as_containers_image_validates_them() {
        use cip_core::policy::{Bytes, Fulcio as F, Pki as P};
        let f = Fulcio::new();
        let ca = Some(Bytes::from_raw(f.root.pem.as_bytes()));
        let (_, rekor_pem) = crate::keys::tests::p256();
        let rekor = Some(Bytes::from_raw(rekor_pem.as_bytes()));
        let fulcio = |issuer: Option<&str>, email: Option<&str>| F {
            ca_data: ca.clone(),
            oidc_issuer: issuer.map(str::to_string),
            subject_email: email.map(str::to_string),
            ..Default::default()
        };
        let root_of = |s: SigstoreSigned| root(&s).err();
        let cases = [
            (
                SigstoreSigned {
                    fulcio: Some(fulcio(None, Some(EMAIL))),
                    rekor_public_key_data: rekor.clone(),
                    ..Default::default()
                },
                "without OIDC issuer",
            ),
            (
                SigstoreSigned {
                    fulcio: Some(fulcio(Some(ISSUER), None)),
                    rekor_public_key_data: rekor.clone(),
                    ..Default::default()
                },
                "without subject email",
            ),
            (
                SigstoreSigned {
                    fulcio: Some(fulcio(Some(ISSUER), Some(EMAIL))),
                    ..Default::default()
                },
                "without a Rekor public key",
            ),
            (
                SigstoreSigned {
                    fulcio: Some(fulcio(Some(ISSUER), Some(EMAIL))),
                    key_data: rekor.clone(),
                    rekor_public_key_data: rekor.clone(),
                    ..Default::default()
                },
                "More than one",
            ),
            (
                SigstoreSigned {
                    pki: Some(P {
                        ca_roots_data: ca.clone(),
                        subject_email: Some(EMAIL.into()),
                        ..Default::default()
                    }),
                    rekor_public_key_data: rekor.clone(),
                    ..Default::default()
                },
                "PKI specified with a Rekor public key",
            ),
            (
                SigstoreSigned {
                    pki: Some(P {
                        ca_roots_data: ca.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "without subject email or subject hostname",
            ),
            (
                SigstoreSigned {
                    pki: Some(P {
                        subject_email: Some(EMAIL.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "not exactly one of",
            ),
            (SigstoreSigned::default(), "must be specified"),
        ];
        for (requirement, why) in cases {
            let r = root_of(requirement);
            assert!(
                matches!(&r, Some(Check::Invalid(e)) if e.contains(why)),
                "{why}: {r:?}"
            );
        }
        let ed25519 = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let r = root_of(SigstoreSigned {
            key_data: rekor.clone(),
            rekor_public_key_data: Some(Bytes::from_raw(ed25519.as_bytes())),
            ..Default::default()
        });
        assert!(
            matches!(&r, Some(Check::Invalid(e)) if e.contains("is not using ECDSA")),
            "{r:?}"
        );
    }

    #[test]
    fn trust_roots_as_prepare_trust_root_builds_them() {
        assert!(refused(
            append_certs_from_pem(b"nothing", "error loading Fulcio CA certificates"),
            "error loading"
        ));
        let f = Fulcio::new();
        // Non-CERTIFICATE blocks and blocks with headers are skipped, not errors.
        let mixed = format!(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n{}",
            f.root.pem
        );
        assert_eq!(
            append_certs_from_pem(mixed.as_bytes(), "")
                .unwrap()
                .certs
                .len(),
            1
        );
    }
}
