//! Whether decoded key material parses: the check the CRD cannot make (it only looks
//! at the PEM markers) and that otherwise fails on the node, in CRI-O, at pull time.

use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The first PEM block must be a `PUBLIC KEY` holding an ECDSA, RSA or Ed25519 key,
/// the kinds sigstore verification in containers/image accepts.
pub fn check_public_key(pem_text: &[u8]) -> Result<(), String> {
    let block = Pem::iter_from_buffer(pem_text)
        .next()
        .ok_or("no PEM block found")?
        .map_err(|e| format!("PEM does not decode: {e}"))?;
    if block.label != "PUBLIC KEY" {
        return Err(format!(
            "PEM block is {:?}, expected \"PUBLIC KEY\"",
            block.label
        ));
    }
    let (_, spki) = SubjectPublicKeyInfo::from_der(&block.contents)
        .map_err(|_| "the key is not a DER SubjectPublicKeyInfo")?;
    match spki.parsed() {
        Ok(PublicKey::EC(_)) | Ok(PublicKey::RSA(_)) => Ok(()),
        Ok(PublicKey::Unknown(_)) if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            Ok(())
        }
        Ok(_) | Err(_) => Err(format!(
            "unsupported public key algorithm {}",
            spki.algorithm.algorithm.to_id_string()
        )),
    }
}

/// How many PEM blocks the text holds (those that decode).
pub fn pem_blocks(pem_text: &[u8]) -> usize {
    Pem::iter_from_buffer(pem_text)
        .take_while(Result::is_ok)
        .count()
}

/// Every PEM block must be a `CERTIFICATE` that parses as X.509; returns how many.
pub fn check_certificates(pem_text: &[u8]) -> Result<usize, String> {
    let mut count = 0;
    for block in Pem::iter_from_buffer(pem_text) {
        let block = block.map_err(|e| format!("PEM does not decode: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "PEM block is {:?}, expected \"CERTIFICATE\"",
                block.label
            ));
        }
        block
            .parse_x509()
            .map_err(|_| format!("certificate {} is not DER X.509", count + 1))?;
        count += 1;
    }
    if count == 0 {
        return Err("no PEM block found".into());
    }
    Ok(count)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const EC_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/keys/cosign.pub");
    pub const CA_CERT: &str = include_str!("../../tests/fixtures/keys/ca.crt");

    #[test]
    fn public_keys() {
        check_public_key(EC_PUBLIC_KEY.as_bytes()).unwrap();
        assert_eq!(
            check_public_key(b"foo bar").unwrap_err(),
            "no PEM block found"
        );
        let garbage = "-----BEGIN PUBLIC KEY-----\nZm9vYmFy\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            check_public_key(garbage.as_bytes()).unwrap_err(),
            "the key is not a DER SubjectPublicKeyInfo"
        );
        let wrong_label = EC_PUBLIC_KEY.replace("PUBLIC KEY", "CERTIFICATE");
        assert!(check_public_key(wrong_label.as_bytes())
            .unwrap_err()
            .contains("expected \"PUBLIC KEY\""));
    }

    #[test]
    fn certificates() {
        let bogus = "-----BEGIN CERTIFICATE-----\nMIIBATA=\n-----END CERTIFICATE-----";
        assert_eq!(
            check_certificates(bogus.as_bytes()).unwrap_err(),
            "certificate 1 is not DER X.509"
        );
        assert_eq!(check_certificates(b"").unwrap_err(), "no PEM block found");
        assert_eq!(
            check_certificates(format!("{CA_CERT}{CA_CERT}").as_bytes()),
            Ok(2)
        );
        assert!(check_certificates(format!("{CA_CERT}{EC_PUBLIC_KEY}").as_bytes()).is_err());
    }
}
