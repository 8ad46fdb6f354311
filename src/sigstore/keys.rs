//! Public keys as sigstore's `cryptoutils.UnmarshalPEMToPublicKey` reads them (the first
//! PEM block that decodes; `PUBLIC KEY` through Go's `x509.ParsePKIXPublicKey`, `RSA
//! PUBLIC KEY` through `x509.ParsePKCS1PublicKey`) and signatures as sigstore's verifiers
//! check them with SHA-256 (`pkg/signature/{ecdsa,rsapkcs1v15,ed25519}.go`). What ring
//! cannot check as Go does (P-224 and P-521 curves, RSA moduli over 8,192 bits, unusual
//! exponents) is `Unknown`, never a verdict.

use std::borrow::Cow;

use ring::signature as rs;
use x509_parser::der_parser::oid;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::pem;
use crate::signers::Signers;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PublicKey {
    /// A named curve and the uncompressed point.
    Ecdsa {
        curve: Curve,
        point: Vec<u8>,
    },
    /// The PKCS#1 `RSAPublicKey` DER, the modulus size in bits and the exponent.
    Rsa {
        der: Vec<u8>,
        bits: usize,
        exponent: u64,
    },
    Ed25519(Vec<u8>),
    /// A key Go parses but sigstore cannot verify with (X25519, DSA): every signature fails.
    Unusable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P224,
    P256,
    P384,
    P521,
}

impl Curve {
    fn field_bytes(self) -> usize {
        match self {
            Curve::P224 => 28,
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

/// What checking one signature gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Valid,
    Invalid(String),
    /// The port cannot decide as Go would.
    Unknown(String),
}

/// `cryptoutils.UnmarshalPEMToPublicKey`.
pub fn parse_pem(data: &[u8]) -> Result<PublicKey, String> {
    let Some((block, _)) = pem::decode(data) else {
        return Err("PEM decoding failed".into());
    };
    match block.label.as_str() {
        "PUBLIC KEY" => parse_pkix(&block.bytes),
        "RSA PUBLIC KEY" => parse_pkcs1(&block.bytes, true),
        other => Err(format!(
            "unknown Public key PEM file type: {other}. Are you passing the correct public key?"
        )),
    }
}

/// `x509.ParsePKIXPublicKey`.
pub fn parse_pkix(der: &[u8]) -> Result<PublicKey, String> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
        .map_err(|_| "asn1: structure error: the key is not a SubjectPublicKeyInfo".to_string())?;
    if !rest.is_empty() {
        return Err("x509: trailing data after ASN.1 of public-key".into());
    }
    let algorithm = &spki.algorithm.algorithm;
    let data = spki.subject_public_key.data.to_vec();
    let params = spki.algorithm.parameters.as_ref();
    if *algorithm == oid!(1.2.840 .113549 .1 .1 .1) {
        if !params.is_some_and(|p| p.header.tag().0 == 5 && p.data.is_empty()) {
            return Err("x509: RSA key missing NULL parameters".into());
        }
        return parse_pkcs1(&data, false);
    }
    if *algorithm == oid!(1.2.840 .10045 .2 .1) {
        let curve_oid = params
            .and_then(|p| p.as_oid().ok())
            .ok_or("x509: invalid ECDSA parameters")?;
        let curve = if curve_oid == oid!(1.2.840 .10045 .3 .1 .7) {
            Curve::P256
        } else if curve_oid == oid!(1.3.132 .0 .34) {
            Curve::P384
        } else if curve_oid == oid!(1.3.132 .0 .35) {
            Curve::P521
        } else if curve_oid == oid!(1.3.132 .0 .33) {
            Curve::P224
        } else {
            return Err("x509: unsupported elliptic curve".into());
        };
        if data.len() != 1 + 2 * curve.field_bytes() || data[0] != 4 {
            return Err("ecdsa: invalid public key".into());
        }
        return Ok(PublicKey::Ecdsa { curve, point: data });
    }
    if *algorithm == oid!(1.3.101 .112) {
        if params.is_some() {
            return Err("x509: Ed25519 key encoded with illegal parameters".into());
        }
        if data.len() != 32 {
            return Err("x509: wrong Ed25519 public key size".into());
        }
        return Ok(PublicKey::Ed25519(data));
    }
    if *algorithm == oid!(1.3.101 .110) || *algorithm == oid!(1.2.840 .10040 .4 .1) {
        return Ok(PublicKey::Unusable(format!(
            "unsupported public key type {}",
            algorithm.to_id_string()
        )));
    }
    Err("x509: unknown public key algorithm".into())
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`, with Go's
/// checks (`x509.ParsePKCS1PublicKey` when `pkcs1`, else the PKIX path).
fn parse_pkcs1(der: &[u8], pkcs1: bool) -> Result<PublicKey, String> {
    let invalid = || "x509: invalid RSA public key".to_string();
    let (body, rest) = der_element(der, 0x30).ok_or_else(invalid)?;
    if !rest.is_empty() {
        return Err(if pkcs1 {
            "asn1: syntax error: trailing data".into()
        } else {
            invalid()
        });
    }
    let (modulus, after) = der_element(body, 0x02).ok_or("x509: invalid RSA modulus")?;
    let (exponent, after) = der_element(after, 0x02).ok_or("x509: invalid RSA public exponent")?;
    if !after.is_empty() {
        return Err(invalid());
    }
    if !minimal_integer(modulus) || !minimal_integer(exponent) {
        return Err(invalid());
    }
    if modulus[0] & 0x80 != 0 || modulus.iter().all(|&b| b == 0) {
        return Err("x509: RSA modulus is not a positive number".into());
    }
    if exponent[0] & 0x80 != 0 || exponent.iter().all(|&b| b == 0) {
        return Err("x509: RSA public exponent is not a positive number".into());
    }
    let significant: &[u8] = match modulus {
        [0, rest @ ..] => rest,
        all => all,
    };
    let bits = significant.len() * 8 - significant[0].leading_zeros() as usize;
    let exponent = if exponent.len() > 8 {
        u64::MAX
    } else {
        exponent.iter().fold(0u64, |e, &b| (e << 8) | b as u64)
    };
    Ok(PublicKey::Rsa {
        der: der.to_vec(),
        bits,
        exponent,
    })
}

/// One DER element with this tag: (contents, what follows). Lengths must be minimal, as
/// Go's `encoding/asn1` and `cryptobyte` require.
pub(crate) fn der_element(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = data.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n || rest[0] == 0 {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
        if len < 0x80 {
            return None;
        }
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Go's `checkInteger`: non-empty and minimally encoded.
pub(crate) fn minimal_integer(bytes: &[u8]) -> bool {
    match bytes {
        [] => false,
        [0, next, ..] => next & 0x80 != 0,
        [0xff, next, ..] => next & 0x80 == 0,
        _ => true,
    }
}

impl PublicKey {
    /// sigstore's `VerifySignature` with SHA-256 over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Check {
        self.verify_knowing(message, signature, None)
    }

    /// As [`PublicKey::verify`], given the keys recovered from `signature` when known.
    pub fn verify_knowing(
        &self,
        message: &[u8],
        signature: &[u8],
        signers: Option<&Signers>,
    ) -> Check {
        match self {
            PublicKey::Ecdsa { curve, point } => {
                verify_ecdsa(*curve, point, message, signature, signers)
            }
            PublicKey::Rsa { .. } => verify_with(self, Hash::Sha256, message, signature),
            PublicKey::Ed25519(_) | PublicKey::Unusable(_) => {
                verify_with(self, Hash::None, message, signature)
            }
        }
    }

    /// `x509.MarshalPKIXPublicKey`: what sigstore's `MarshalPublicKeyToPEM` wraps, and so
    /// what a Rekor entry for this key holds.
    pub fn pkix_der(&self) -> Option<Vec<u8>> {
        let (algorithm, key): (Vec<u8>, &[u8]) = match self {
            PublicKey::Ecdsa { curve, point } => {
                let curve_oid: &[u8] = match curve {
                    Curve::P224 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x21],
                    Curve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
                    Curve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
                    Curve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
                };
                let ec = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
                ([&ec[..], curve_oid].concat(), point)
            }
            PublicKey::Rsa { der, .. } => (
                vec![
                    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
                ],
                der,
            ),
            PublicKey::Ed25519(key) => (vec![0x06, 0x03, 0x2b, 0x65, 0x70], key),
            PublicKey::Unusable(_) => return None,
        };
        let bits = [&[0u8][..], key].concat();
        Some(der_tlv(
            0x30,
            &[der_tlv(0x30, &algorithm), der_tlv(0x03, &bits)].concat(),
        ))
    }
}

/// The digest a certificate or SET signature is made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// Ed25519 signs the message itself.
    None,
    Sha256,
    Sha384,
    Sha512,
}

/// Go's `checkSignature` (and `ecdsa.VerifyASN1`, strict DER) for one hash: ECDSA on
/// P-256/P-384 with SHA-256/384, RSA PKCS#1 v1.5 with SHA-256/384/512, Ed25519.
pub fn verify_with(key: &PublicKey, hash: Hash, message: &[u8], signature: &[u8]) -> Check {
    let unknown = |what: String| Check::Unknown(format!("{what} is not checked by this port"));
    match (key, hash) {
        (PublicKey::Ecdsa { curve, point }, _) => {
            let algorithm: &dyn rs::VerificationAlgorithm = match (curve, hash) {
                (Curve::P256, Hash::Sha256) => &rs::ECDSA_P256_SHA256_ASN1,
                (Curve::P256, Hash::Sha384) => &rs::ECDSA_P256_SHA384_ASN1,
                (Curve::P384, Hash::Sha256) => &rs::ECDSA_P384_SHA256_ASN1,
                (Curve::P384, Hash::Sha384) => &rs::ECDSA_P384_SHA384_ASN1,
                _ => return unknown(format!("ECDSA on {curve:?} with {hash:?}")),
            };
            outcome(
                rs::UnparsedPublicKey::new(algorithm, point).verify(message, signature),
                "ecdsa: invalid signature",
            )
        }
        (
            PublicKey::Rsa {
                der,
                bits,
                exponent,
            },
            _,
        ) => {
            if *bits < 1024 {
                return Check::Invalid(format!(
                    "crypto/rsa: {bits}-bit keys are insecure (see https://go.dev/pkg/crypto/rsa#hdr-Minimum_key_size)"
                ));
            }
            if *bits > 8192
                || *exponent < 3
                || exponent.is_multiple_of(2)
                || *exponent > (1 << 31) - 1
            {
                return unknown(format!(
                    "an RSA key of {bits} bits with exponent {exponent}"
                ));
            }
            let legacy = *bits < 2048;
            let algorithm: &dyn rs::VerificationAlgorithm = match (hash, legacy) {
                (Hash::Sha256, true) => &rs::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                (Hash::Sha256, false) => &rs::RSA_PKCS1_2048_8192_SHA256,
                (Hash::Sha384, false) => &rs::RSA_PKCS1_2048_8192_SHA384,
                (Hash::Sha512, true) => &rs::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
                (Hash::Sha512, false) => &rs::RSA_PKCS1_2048_8192_SHA512,
                _ => return unknown(format!("RSA-{bits} with {hash:?}")),
            };
            outcome(
                rs::UnparsedPublicKey::new(algorithm, der).verify(message, signature),
                "crypto/rsa: verification error",
            )
        }
        (PublicKey::Ed25519(key), Hash::None) => outcome(
            rs::UnparsedPublicKey::new(&rs::ED25519, key).verify(message, signature),
            "ed25519: invalid signature",
        ),
        (PublicKey::Ed25519(_), _) => Check::Invalid("x509: Ed25519 verification failure".into()),
        (PublicKey::Unusable(why), _) => Check::Invalid(why.clone()),
    }
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_length(body.len()));
    out.extend(body);
    out
}

fn outcome(result: Result<(), ring::error::Unspecified>, failure: &str) -> Check {
    match result {
        Ok(()) => Check::Valid,
        Err(_) => Check::Invalid(failure.to_string()),
    }
}

/// sigstore's ECDSA check: a signature that `encoding/asn1` reads as two integers goes
/// to `ecdsa.VerifyASN1` (strict DER); anything else is taken as IEEE P1363 `r || s`.
/// With the signature's `signers` ([`Signers::recover`]), a P-256 key is judged by
/// whether it is one of them, which is the same answer without the curve.
fn verify_ecdsa(
    curve: Curve,
    point: &[u8],
    message: &[u8],
    signature: &[u8],
    signers: Option<&Signers>,
) -> Check {
    let asn1: &dyn rs::VerificationAlgorithm = match curve {
        Curve::P256 => &rs::ECDSA_P256_SHA256_ASN1,
        Curve::P384 => &rs::ECDSA_P384_SHA256_ASN1,
        Curve::P224 | Curve::P521 => {
            return Check::Unknown(format!("ECDSA on {curve:?} is not checked by this port"))
        }
    };
    let (der, failure) = match ecdsa_der(signature) {
        Ok(read) => read,
        Err(e) => return e,
    };
    let known = signers
        .filter(|_| curve == Curve::P256)
        .and_then(|s| s.accept(point));
    match known {
        Some(true) => Check::Valid,
        Some(false) => Check::Invalid(failure.to_string()),
        None => outcome(
            rs::UnparsedPublicKey::new(asn1, point).verify(message, &der),
            failure,
        ),
    }
}

/// The strict DER that reaches `ecdsa.VerifyASN1` for a sigstore ECDSA signature, and
/// the error a failed check gives; or the error that stops it before any key is tried.
pub(crate) fn ecdsa_der(signature: &[u8]) -> Result<(Cow<'_, [u8]>, &'static str), Check> {
    if lenient_asn1_pair(signature) {
        return Ok((
            Cow::Borrowed(signature),
            "invalid signature when validating ASN.1 encoded signature",
        ));
    }
    if signature.is_empty() || signature.len() > 132 || !signature.len().is_multiple_of(2) {
        return Err(Check::Invalid(
            "ecdsa: Invalid IEEE_P1363 encoded bytes".into(),
        ));
    }
    // `ecdsa.Verify(pub, digest, r, s)` with r and s read as big-endian halves: the same
    // check as the strict DER form of those two integers.
    let (r, s) = signature.split_at(signature.len() / 2);
    Ok((
        Cow::Owned(der_signature(r, s)),
        "invalid signature when validating IEEE_P1363 encoded signature",
    ))
}

/// `SEQUENCE { INTEGER r, INTEGER s }` in DER from unsigned big-endian values.
pub(crate) fn der_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn integer(v: &[u8]) -> Vec<u8> {
        let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
        let mut body = v[start..].to_vec();
        if body.first().is_none_or(|&b| b & 0x80 != 0) {
            body.insert(0, 0);
        }
        der_tlv(0x02, &body)
    }
    der_tlv(0x30, &[integer(r), integer(s)].concat())
}

fn der_length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        vec![len as u8]
    } else if len < 0x100 {
        vec![0x81, len as u8]
    } else if len < 0x10000 {
        vec![0x82, (len >> 8) as u8, len as u8]
    } else {
        vec![0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]
    }
}

/// Whether Go's `asn1.Unmarshal` into `struct{ R, S *big.Int }` succeeds: a SEQUENCE of
/// two minimally encoded INTEGERs, anything after it ignored.
fn lenient_asn1_pair(signature: &[u8]) -> bool {
    let Some((body, _)) = der_element(signature, 0x30) else {
        return false;
    };
    let Some((r, rest)) = der_element(body, 0x02) else {
        return false;
    };
    let Some((s, _)) = der_element(rest, 0x02) else {
        return false;
    };
    minimal_integer(r) && minimal_integer(s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    pub fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A P-256 key pair for tests: (signer, public key PEM).
    pub fn p256() -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let alg = &rs::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let pem = spki_pem(
            &[
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ],
            pair.public_key().as_ref(),
        );
        (pair, pem)
    }

    pub fn spki_pem(prefix: &[u8], key: &[u8]) -> String {
        use base64::Engine;
        let der = [prefix, key].concat();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    pub fn sign(pair: &EcdsaKeyPair, message: &[u8]) -> Vec<u8> {
        pair.sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn p256_asn1_and_p1363() {
        let (pair, pem) = p256();
        let key = parse_pem(pem.as_bytes()).unwrap();
        let sig = sign(&pair, b"payload");
        assert_eq!(key.verify(b"payload", &sig), Check::Valid);
        assert!(matches!(key.verify(b"other", &sig), Check::Invalid(_)));
        // Trailing data after a DER signature: Go's lenient parse takes the ASN.1 path,
        // whose strict check refuses it.
        let mut trailing = sig.clone();
        trailing.push(0);
        assert!(matches!(
            key.verify(b"payload", &trailing),
            Check::Invalid(_)
        ));
        // The same signature as r || s is accepted, also with a zero byte on each half.
        let (body, _) = der_element(&sig, 0x30).unwrap();
        let (r, rest) = der_element(body, 0x02).unwrap();
        let (s, _) = der_element(rest, 0x02).unwrap();
        let pad = |x: &[u8], n: usize| {
            let x = &x[x.iter().position(|&b| b != 0).unwrap()..];
            [vec![0; n - x.len()], x.to_vec()].concat()
        };
        let p1363 = [pad(r, 32), pad(s, 32)].concat();
        assert_eq!(key.verify(b"payload", &p1363), Check::Valid);
        let wide = [pad(r, 33), pad(s, 33)].concat();
        assert_eq!(key.verify(b"payload", &wide), Check::Valid);
        assert!(matches!(
            key.verify(b"payload", &p1363[1..]),
            Check::Invalid(_)
        ));
    }

    #[test]
    fn ed25519() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pem = spki_pem(
            &[
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ],
            pair.public_key().as_ref(),
        );
        let key = parse_pem(pem.as_bytes()).unwrap();
        let sig = pair.sign(b"m");
        assert_eq!(key.verify(b"m", sig.as_ref()), Check::Valid);
        assert!(matches!(key.verify(b"n", sig.as_ref()), Check::Invalid(_)));
    }

    #[test]
    fn key_parsing_as_go() {
        let (_, pem) = p256();
        // Text before the block is fine; a second block is never read.
        assert!(parse_pem(format!("note\n{pem}garbage").as_bytes()).is_ok());
        assert_eq!(parse_pem(b"nothing").unwrap_err(), "PEM decoding failed");
        assert!(
            parse_pem(pem.replace("PUBLIC KEY", "CERTIFICATE").as_bytes())
                .unwrap_err()
                .starts_with("unknown Public key PEM file type: CERTIFICATE")
        );
        // Trailing data after the SubjectPublicKeyInfo.
        let block = pem::decode(pem.as_bytes()).unwrap().0;
        let extra = [block.bytes.clone(), vec![0]].concat();
        assert_eq!(
            parse_pkix(&extra).unwrap_err(),
            "x509: trailing data after ASN.1 of public-key"
        );
    }

    #[test]
    fn der_lengths_must_be_minimal() {
        assert!(der_element(&[0x30, 0x81, 0x05, 1, 2, 3, 4, 5], 0x30).is_none());
        assert!(der_element(&[0x30, 0x02, 1, 2], 0x30).is_some());
        assert!(!minimal_integer(&[0, 1]));
        assert!(minimal_integer(&[0, 0x80]));
    }
}
