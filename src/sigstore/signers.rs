//! The P-256 keys an ECDSA signature verifies under, recovered once from the signature, so
//! that a policy's new key is judged against every signature an admission replica holds
//! by comparing points instead of running the curve again for each (2,000 checks at about
//! 75 µs each is what a new key costs otherwise).
//!
//! Exact, not probabilistic: Go's `ecdsa.Verify` (crypto/internal/fips140/ecdsa/ecdsa.go,
//! `verifyGeneric`) accepts key Q for digest e and signature (r, s), 0 < r, s < n, iff
//! X = (e/s)·G + (r/s)·Q is not the point at infinity and x(X) mod n = r. When r ≥ p − n
//! the only x with x mod n = r is r itself, so X is one of the two points ±R with
//! x(±R) = r, and Q = (s·X − e·G)/r: two candidates, computed here. Conversely each
//! candidate gives X = ±R. Where this reasoning does not cover the input (the DER is not
//! canonical, r or s out of range, r < p − n, a key not in uncompressed form) nothing is
//! said, and ring checks the key as before.

use p256::elliptic_curve::group::Group;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::DecompressPoint;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::elliptic_curve::subtle::Choice;
use p256::elliptic_curve::PrimeField;
use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, U256};

use crate::keys::{der_element, der_signature, ecdsa_der};

/// p − n for P-256, big-endian: below it, r + n is a second x-coordinate to consider.
const P_MINUS_N: [u8; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x43, 0x19, 0x05, 0x53, 0x58, 0xe8, 0x61, 0x7b,
    0x0c, 0x46, 0x35, 0x3d, 0x03, 0x9c, 0xda, 0xae,
];

/// Every uncompressed P-256 key (`04 || x || y`) a signature verifies under with SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signers(Vec<[u8; 65]>);

impl Signers {
    /// The keys `signature` over `message` verifies under, read as sigstore reads an
    /// ECDSA signature; None where that cannot be said exactly here.
    pub fn recover(message: &[u8], signature: &[u8]) -> Option<Signers> {
        let (der, _) = ecdsa_der(signature).ok()?;
        let (r, s) = canonical_pair(&der)?;
        let (r, s) = (scalar(r)?, scalar(s)?);
        let x = r.to_repr();
        if x[..] < P_MINUS_N[..] {
            return None;
        }
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, message)
            .as_ref()
            .try_into()
            .ok()?;
        let e = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(digest));
        let Some(point) = Option::<AffinePoint>::from(AffinePoint::decompress(&x, Choice::from(0)))
        else {
            // No point has x = r: no key verifies this signature.
            return Some(Signers(Vec::new()));
        };
        let r_inverse = Option::<Scalar>::from(r.invert())?;
        let base = ProjectivePoint::GENERATOR * (-(e * r_inverse));
        let along = ProjectivePoint::from(point) * (s * r_inverse);
        let keys = [base + along, base - along]
            .into_iter()
            .filter(|q| !bool::from(q.is_identity()))
            .filter_map(|q| {
                q.to_affine()
                    .to_encoded_point(false)
                    .as_bytes()
                    .try_into()
                    .ok()
            })
            .collect();
        Some(Signers(keys))
    }

    /// Whether the key whose SEC 1 encoding is `point` is one of them; None for an
    /// encoding other than uncompressed (ring decides that key).
    pub fn accept(&self, point: &[u8]) -> Option<bool> {
        (point.len() == 65 && point[0] == 4).then(|| self.0.iter().any(|k| k[..] == *point))
    }
}

/// (r, s) of a DER signature in its one canonical encoding, as ring requires.
fn canonical_pair(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (body, rest) = der_element(der, 0x30)?;
    let (r, rest_body) = der_element(body, 0x02)?;
    let (s, end) = der_element(rest_body, 0x02)?;
    (rest.is_empty() && end.is_empty() && der_signature(r, s) == der).then_some((r, s))
}

/// A non-zero scalar below n from a DER integer's unsigned big-endian bytes.
fn scalar(bytes: &[u8]) -> Option<Scalar> {
    let start = bytes.iter().position(|&b| b != 0)?;
    let bytes = &bytes[start..];
    let mut repr = FieldBytes::default();
    let at = repr.len().checked_sub(bytes.len())?;
    repr[at..].copy_from_slice(bytes);
    Option::from(Scalar::from_repr(repr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Check;
    use crate::keys::PublicKey;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    /// n for P-256, big-endian.
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc,
        0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
    ];

    fn pair() -> (EcdsaKeyPair, PublicKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let key = PublicKey::Ecdsa {
            curve: crate::keys::Curve::P256,
            point: pair.public_key().as_ref().to_vec(),
        };
        (pair, key)
    }

    fn sign(pair: &EcdsaKeyPair, message: &[u8]) -> Vec<u8> {
        pair.sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// ring's answer and the signers' answer, for each key.
    fn both(message: &[u8], signature: &[u8], keys: &[&PublicKey]) -> Vec<(Check, Check)> {
        let signers = Signers::recover(message, signature).expect("recoverable");
        keys.iter()
            .map(|k| {
                (
                    k.verify(message, signature),
                    k.verify_knowing(message, signature, Some(&signers)),
                )
            })
            .collect()
    }

    fn halves(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (r, s) = canonical_pair(der).unwrap();
        let pad = |v: &[u8]| {
            let v = &v[v.iter().position(|&b| b != 0).unwrap()..];
            [vec![0; 32 - v.len()], v.to_vec()].concat()
        };
        (pad(r), pad(s))
    }

    /// n − s, big-endian, 32 bytes.
    fn negate(s: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 32];
        let mut borrow = 0i32;
        for i in (0..32).rev() {
            let d = N[i] as i32 - s[i] as i32 - borrow;
            borrow = i32::from(d < 0);
            out[i] = d.rem_euclid(256) as u8;
        }
        out
    }

    #[test]
    fn the_signers_answer_as_ring_does_for_the_signer_and_for_other_keys() {
        let (signer, key) = pair();
        let (_, other) = pair();
        for i in 0..64 {
            let message = format!("payload {i}").into_bytes();
            let der = sign(&signer, &message);
            let (r, s) = halves(&der);
            let p1363 = [r.clone(), s.clone()].concat();
            // Go does not require a low s: (r, n − s) verifies too.
            let high = der_signature(&r, &negate(&s));
            for signature in [der.clone(), p1363, high] {
                let answers = both(&message, &signature, &[&key, &other]);
                assert_eq!(answers[0].0, Check::Valid);
                assert!(matches!(answers[1].0, Check::Invalid(_)));
                for (ring, recovered) in answers {
                    assert_eq!(ring, recovered);
                }
            }
            // Another message under the same signature: no key of ours.
            let tampered = [&message[..], b"!"].concat();
            for (ring, recovered) in both(&tampered, &der, &[&key, &other]) {
                assert!(matches!(ring, Check::Invalid(_)));
                assert_eq!(ring, recovered);
            }
        }
    }

    #[test]
    fn what_the_reasoning_does_not_cover_is_left_to_ring() {
        let (signer, key) = pair();
        let der = sign(&signer, b"m");
        let (r, s) = halves(&der);
        // Not canonical DER: a redundant leading zero in r.
        let (body, _) = der_element(&der, 0x30).unwrap();
        let (r_der, rest) = der_element(body, 0x02).unwrap();
        let padded = [&[0x02, r_der.len() as u8 + 1, 0][..], r_der, rest].concat();
        let loose = [&[0x30, padded.len() as u8][..], &padded].concat();
        assert_eq!(Signers::recover(b"m", &loose), None);
        // r or s zero, or n itself.
        let zero = vec![0; 32];
        assert_eq!(Signers::recover(b"m", &der_signature(&zero, &s)), None);
        assert_eq!(Signers::recover(b"m", &der_signature(&r, &zero)), None);
        assert_eq!(Signers::recover(b"m", &der_signature(&N, &s)), None);
        // r below p − n, where r + n would be a second x-coordinate.
        let mut small = vec![0; 32];
        small[31] = 1;
        assert_eq!(Signers::recover(b"m", &der_signature(&small, &s)), None);
        // Not a signature at all (odd length: neither DER nor r || s).
        assert_eq!(Signers::recover(b"m", &[1, 2, 3]), None);
        // A key in compressed form.
        let signers = Signers::recover(b"m", &der).unwrap();
        let PublicKey::Ecdsa { point, .. } = &key else {
            unreachable!()
        };
        let compressed = [&[2 + (point[64] & 1)][..], &point[1..33]].concat();
        assert_eq!(signers.accept(&compressed), None);
        assert_eq!(signers.accept(point), Some(true));
    }

    #[test]
    fn an_r_that_is_no_points_x_is_signed_by_no_key() {
        let (signer, key) = pair();
        let der = sign(&signer, b"m");
        let (_, s) = halves(&der);
        // The first x below n (and above p − n) off the curve.
        let mut r = N;
        let r = loop {
            r[31] -= 1;
            let off = Option::<AffinePoint>::from(AffinePoint::decompress(
                &FieldBytes::from(r),
                Choice::from(0),
            ))
            .is_none();
            if off {
                break r;
            }
        };
        let signature = der_signature(&r, &s);
        assert_eq!(
            Signers::recover(b"m", &signature),
            Some(Signers(Vec::new()))
        );
        for (ring, recovered) in both(b"m", &signature, &[&key]) {
            assert!(matches!(ring, Check::Invalid(_)));
            assert_eq!(ring, recovered);
        }
    }
}
