//! Certificates and chains as Go's `crypto/x509` reads and verifies them, for the Fulcio
//! and PKI roots of trust (`signature/fulcio_cert.go`, `signature/pki_cert.go`):
//! `cryptoutils.UnmarshalCertificatesFromPEM`, `Certificate.Verify` with roots,
//! intermediates, a time and the code-signing usage (Go 1.26 `crypto/x509/verify.go`:
//! `isValid`, `buildChains`, `CheckSignatureFrom`, `checkChainForKeyUsage`) and
//! `VerifyHostname`. x509-parser reads the DER; what Go would decide with machinery this
//! port does not carry (name and policy constraints, RSA-PSS, P-224/P-521, a certificate
//! x509-parser cannot read) is `Check::Unknown`, never a verdict.

use core::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::keys::{self, Check, Hash, PublicKey};
use crate::pem;

/// Go's `maxChainSignatureChecks`.
const MAX_SIGNATURE_CHECKS: usize = 100;

/// Extensions Go's `processExtensions` understands (`2.5.29.x`), so that marking them
/// critical is not an unhandled critical extension.
const HANDLED: [u32; 12] = [14, 15, 17, 19, 30, 31, 32, 33, 35, 36, 37, 54];

/// Extensions whose effect on a chain this port does not evaluate: name constraints,
/// policy mappings, policy constraints, inhibit anyPolicy.
const NOT_MODELLED: [&str; 4] = ["2.5.29.30", "2.5.29.33", "2.5.29.36", "2.5.29.54"];

/// What Go's `x509.Certificate` holds that the checks read.
#[derive(Debug, Clone)]
pub struct Cert {
    pub der: Vec<u8>,
    tbs: Vec<u8>,
    signature_algorithm: String,
    signature: Vec<u8>,
    raw_subject: Vec<u8>,
    raw_issuer: Vec<u8>,
    raw_spki: Vec<u8>,
    /// `Err` when Go would leave `PublicKey` nil or this port cannot use the key.
    pub key: Result<PublicKey, String>,
    pub not_before: i64,
    pub not_after: i64,
    version: u32,
    basic_constraints: Option<(bool, Option<u32>)>,
    /// `Some(can sign certificates)` when the key usage has any bit set.
    key_usage: Option<bool>,
    /// `None` without usages; else whether codeSigning (or any) is allowed.
    code_signing: Option<bool>,
    pub emails: Vec<String>,
    pub dns_names: Vec<String>,
    ips: Vec<[u8; 16]>,
    san: Option<Vec<u8>>,
    skid: Vec<u8>,
    akid: Vec<u8>,
    /// Critical extensions Go leaves in `UnhandledCriticalExtensions`, as dotted OIDs.
    pub unhandled_critical: Vec<String>,
    not_modelled: Option<String>,
    /// Every extension: dotted OID and value.
    pub extensions: Vec<(String, Vec<u8>)>,
}

/// `cryptoutils.UnmarshalCertificatesFromPEM`: every PEM block, whatever its type, must be
/// a certificate.
pub fn certificates_from_pem(data: &[u8]) -> Result<Vec<Cert>, Check> {
    let mut rest = data.trim_ascii();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((block, after)) = pem::decode(rest) else {
            return Err(Check::Invalid("error during PEM decoding".into()));
        };
        out.push(parse(&block.bytes)?);
        rest = after;
    }
    Ok(out)
}

/// `x509.ParseCertificate`. A DER that is not even the outer certificate structure is an
/// error in Go too; one x509-parser refuses inside that structure may be one Go reads.
pub fn parse(der: &[u8]) -> Result<Cert, Check> {
    let Ok((rest, cert)) = X509Certificate::from_der(der) else {
        if outer_shape(der) {
            return Err(Check::Unknown(
                "a certificate this tool cannot parse as Go's crypto/x509 does".into(),
            ));
        }
        return Err(Check::Invalid("x509: malformed certificate".into()));
    };
    if !rest.is_empty() {
        return Err(Check::Invalid("x509: trailing data".into()));
    }
    let tbs = &cert.tbs_certificate;
    if tbs.signature != cert.signature_algorithm {
        return Err(Check::Invalid(
            "x509: inner and outer signature algorithm identifiers don't match".into(),
        ));
    }
    if tbs.raw_serial().first().is_some_and(|b| b & 0x80 != 0) {
        return Err(Check::Invalid("x509: negative serial number".into()));
    }
    let mut out = Cert {
        der: der.to_vec(),
        tbs: tbs.as_ref().to_vec(),
        signature_algorithm: cert.signature_algorithm.algorithm.to_id_string(),
        signature: cert.signature_value.data.to_vec(),
        raw_subject: tbs.subject.as_raw().to_vec(),
        raw_issuer: tbs.issuer.as_raw().to_vec(),
        raw_spki: tbs.subject_pki.raw.to_vec(),
        key: keys::parse_pkix(tbs.subject_pki.raw),
        not_before: tbs.validity.not_before.timestamp(),
        not_after: tbs.validity.not_after.timestamp(),
        version: tbs.version.0 + 1,
        basic_constraints: None,
        key_usage: None,
        code_signing: None,
        emails: Vec::new(),
        dns_names: Vec::new(),
        ips: Vec::new(),
        san: None,
        skid: Vec::new(),
        akid: Vec::new(),
        unhandled_critical: Vec::new(),
        not_modelled: None,
        extensions: Vec::new(),
    };
    for ext in tbs.extensions() {
        extension(&mut out, ext)?;
    }
    Ok(out)
}

/// `SEQUENCE { SEQUENCE tbs, SEQUENCE algorithm, BIT STRING signature }`.
fn outer_shape(der: &[u8]) -> bool {
    let Some((body, rest)) = keys::der_element(der, 0x30) else {
        return false;
    };
    let ok = keys::der_element(body, 0x30)
        .and_then(|(_, r)| keys::der_element(r, 0x30))
        .and_then(|(_, r)| keys::der_element(r, 0x03));
    rest.is_empty() && ok.is_some_and(|(_, r)| r.is_empty())
}

fn extension(out: &mut Cert, ext: &x509_parser::extensions::X509Extension) -> Result<(), Check> {
    let oid = ext.oid.to_id_string();
    if out.extensions.iter().any(|(o, _)| *o == oid) {
        return Err(Check::Invalid(
            "x509: certificate contains duplicate extensions".into(),
        ));
    }
    out.extensions.push((oid.clone(), ext.value.to_vec()));
    if NOT_MODELLED.contains(&oid.as_str()) {
        out.not_modelled = Some(format!("a certificate with extension {oid}"));
    }
    let handled = oid
        .strip_prefix("2.5.29.")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| HANDLED.contains(&n));
    let unparseable = || Check::Unknown(format!("an extension {oid} this tool cannot parse"));
    let mut unhandled = !handled && oid != "1.3.6.1.5.5.7.1.1";
    if oid == "2.5.29.17" {
        out.san = Some(ext.value.to_vec());
        // Go leaves a SAN with none of the names it reads for the critical-extension check.
        unhandled = !subject_alt_names(out, ext.value)?;
        if ext.critical && unhandled {
            out.unhandled_critical.push(oid);
        }
        return Ok(());
    }
    match ext.parsed_extension() {
        ParsedExtension::BasicConstraints(bc) => {
            out.basic_constraints = Some((bc.ca, bc.path_len_constraint));
        }
        ParsedExtension::KeyUsage(ku) => {
            out.key_usage = (ku.flags != 0).then(|| ku.key_cert_sign());
        }
        ParsedExtension::ExtendedKeyUsage(eku) => {
            let listed = eku.any
                || eku.server_auth
                || eku.client_auth
                || eku.code_signing
                || eku.email_protection
                || eku.time_stamping
                || eku.ocsp_signing
                || !eku.other.is_empty();
            out.code_signing = listed.then_some(eku.any || eku.code_signing);
        }
        ParsedExtension::SubjectKeyIdentifier(k) => out.skid = k.0.to_vec(),
        ParsedExtension::AuthorityKeyIdentifier(a) => {
            out.akid = a
                .key_identifier
                .as_ref()
                .map(|k| k.0.to_vec())
                .unwrap_or_default();
        }
        ParsedExtension::ParseError { .. } => return Err(unparseable()),
        _ => {}
    }
    if oid == "1.3.6.1.5.5.7.1.1" && ext.critical {
        return Err(Check::Invalid(
            "x509: authority info access incorrectly marked critical".into(),
        ));
    }
    if ext.critical && unhandled {
        out.unhandled_critical.push(oid);
    }
    Ok(())
}

/// Go's `parseSANExtension` over `forEachSAN`: emails, DNS names, URIs and IPs; other
/// name forms skipped. Whether any name Go reads was found.
fn subject_alt_names(out: &mut Cert, value: &[u8]) -> Result<bool, Check> {
    let malformed = |what: &str| Check::Invalid(format!("x509: SAN {what} is malformed"));
    let Some((mut names, rest)) = keys::der_element(value, 0x30) else {
        return Err(Check::Invalid(
            "x509: invalid subject alternative names".into(),
        ));
    };
    if !rest.is_empty() {
        return Err(Check::Invalid(
            "x509: invalid subject alternative names".into(),
        ));
    }
    let mut uris = 0;
    while let Some(&tag) = names.first() {
        let Some((data, after)) = keys::der_element(names, tag) else {
            return Err(Check::Invalid(
                "x509: invalid subject alternative name".into(),
            ));
        };
        names = after;
        let text = || {
            std::str::from_utf8(data)
                .ok()
                .filter(|t| t.is_ascii())
                .map(str::to_string)
        };
        match tag {
            0x81 => out
                .emails
                .push(text().ok_or_else(|| malformed("rfc822Name"))?),
            0x82 => out
                .dns_names
                .push(text().ok_or_else(|| malformed("dNSName"))?),
            0x86 => {
                let uri = text().ok_or_else(|| malformed("uniformResourceIdentifier"))?;
                // `url.Parse` and the host check are not ported: plain URIs only.
                if !uri
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#@!$&'()*+,;=".contains(&b))
                {
                    return Err(Check::Unknown(format!(
                        "a certificate URI {uri:?} this tool does not parse as Go's net/url does"
                    )));
                }
                uris += 1;
            }
            0x87 => out.ips.push(match data.len() {
                4 => core::net::Ipv4Addr::new(data[0], data[1], data[2], data[3])
                    .to_ipv6_mapped()
                    .octets(),
                16 => <[u8; 16]>::try_from(data).unwrap_or_default(),
                n => {
                    return Err(Check::Invalid(format!(
                        "x509: cannot parse IP address of length {n}"
                    )))
                }
            }),
            _ => {}
        }
    }
    Ok(!out.emails.is_empty() || !out.dns_names.is_empty() || !out.ips.is_empty() || uris > 0)
}

/// `Certificate.Verify(VerifyOptions{Roots, Intermediates, CurrentTime: now,
/// KeyUsages: [CodeSigning]})`.
pub fn verify(leaf: &Cert, intermediates: &[Cert], roots: &[Cert], now: i64) -> Result<i64, Check> {
    if let Some(why) = &leaf.not_modelled {
        return Err(Check::Unknown(format!("{why} is not checked by this tool")));
    }
    is_valid(leaf, Kind::Leaf, &[], now).map_err(Check::Invalid)?;
    let chains = if roots.iter().any(|r| r.der == leaf.der) {
        vec![vec![leaf]]
    } else {
        let mut search = Search {
            roots,
            intermediates,
            now,
            checks: 0,
            unknown: None,
            hint: None,
        };
        let chains = search.build(&[leaf]);
        if search.checks > MAX_SIGNATURE_CHECKS {
            return Err(Check::Unknown(
                "the chain search needs more signature checks than Go allows".into(),
            ));
        }
        if chains.is_empty() {
            if let Some(why) = search.unknown {
                return Err(Check::Unknown(why));
            }
            return Err(Check::Invalid(format!(
                "x509: certificate signed by unknown authority{}",
                search.hint.map(|h| format!(" ({h})")).unwrap_or_default()
            )));
        }
        chains
    };
    let usable: Vec<&Vec<&Cert>> = chains
        .iter()
        .filter(|chain| chain.iter().all(|c| c.code_signing != Some(false)))
        .collect();
    if usable.is_empty() {
        return Err(Check::Invalid(
            "x509: certificate specifies an incompatible key usage".into(),
        ));
    }
    Ok(usable
        .iter()
        .map(|chain| chain.iter().map(|c| c.not_after).min().unwrap_or(i64::MAX))
        .max()
        .unwrap_or(i64::MAX))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Leaf,
    Intermediate,
    Root,
}

/// `Certificate.isValid`.
fn is_valid(c: &Cert, kind: Kind, chain: &[&Cert], now: i64) -> Result<(), String> {
    if !c.unhandled_critical.is_empty() {
        return Err("x509: unhandled critical extension".into());
    }
    if let Some(child) = chain.last() {
        if child.raw_issuer != c.raw_subject {
            return Err("x509: issuer name does not match subject from issuing certificate".into());
        }
    }
    if now < c.not_before {
        return Err(format!(
            "x509: certificate has expired or is not yet valid: current time {} is before {}",
            rfc3339(now),
            rfc3339(c.not_before)
        ));
    }
    if now > c.not_after {
        return Err(format!(
            "x509: certificate has expired or is not yet valid: current time {} is after {}",
            rfc3339(now),
            rfc3339(c.not_after)
        ));
    }
    if kind == Kind::Intermediate && !matches!(c.basic_constraints, Some((true, _))) {
        return Err("x509: certificate is not authorized to sign other certificates".into());
    }
    if let Some((_, Some(max))) = c.basic_constraints {
        if chain.len().saturating_sub(1) > max as usize {
            return Err("x509: too many intermediates for path length constraint".into());
        }
    }
    Ok(())
}

struct Search<'a> {
    roots: &'a [Cert],
    intermediates: &'a [Cert],
    now: i64,
    checks: usize,
    unknown: Option<String>,
    hint: Option<String>,
}

impl<'a> Search<'a> {
    /// `buildChains`: roots, then intermediates, each in `findPotentialParents` order.
    fn build(&mut self, chain: &[&'a Cert]) -> Vec<Vec<&'a Cert>> {
        let child = chain[chain.len() - 1];
        let mut chains = Vec::new();
        for (kind, pool) in [
            (Kind::Root, self.roots),
            (Kind::Intermediate, self.intermediates),
        ] {
            for parent in potential_parents(pool, child) {
                self.checks += 1;
                if self.checks > MAX_SIGNATURE_CHECKS {
                    return chains;
                }
                if parent.key.is_err() || already_in_chain(parent, chain) {
                    continue;
                }
                match check_signature_from(child, parent) {
                    Check::Valid => {}
                    Check::Invalid(why) => {
                        self.hint.get_or_insert(why);
                        continue;
                    }
                    Check::Unknown(why) => {
                        self.unknown.get_or_insert(why);
                        continue;
                    }
                }
                if let Err(why) = is_valid(parent, kind, chain, self.now) {
                    self.hint.get_or_insert(why);
                    continue;
                }
                if let Some(why) = &parent.not_modelled {
                    self.unknown
                        .get_or_insert(format!("{why} is not checked by this tool"));
                    continue;
                }
                let mut longer = chain.to_vec();
                longer.push(parent);
                match kind {
                    Kind::Root => chains.push(longer),
                    _ => chains.extend(self.build(&longer)),
                }
            }
        }
        chains
    }
}

/// `CertPool.findPotentialParents`: same issuer name, matching key IDs first.
fn potential_parents<'a>(pool: &'a [Cert], child: &Cert) -> Vec<&'a Cert> {
    let mut matching = Vec::new();
    let mut one = Vec::new();
    let mut mismatch = Vec::new();
    let mut seen: Vec<&[u8]> = Vec::new();
    for c in pool.iter().filter(|c| c.raw_subject == child.raw_issuer) {
        // A pool holds each certificate once.
        if seen.contains(&c.der.as_slice()) {
            continue;
        }
        seen.push(&c.der);
        if c.skid == child.akid {
            matching.push(c);
        } else if c.skid.is_empty() != child.akid.is_empty() {
            one.push(c);
        } else {
            mismatch.push(c);
        }
    }
    matching.extend(one);
    matching.extend(mismatch);
    matching
}

/// `alreadyInChain`: same subject, key and SAN.
fn already_in_chain(candidate: &Cert, chain: &[&Cert]) -> bool {
    chain.iter().any(|c| {
        c.raw_subject == candidate.raw_subject
            && c.raw_spki == candidate.raw_spki
            && c.san == candidate.san
    })
}

/// `Certificate.CheckSignatureFrom` and `checkSignature` without SHA-1.
fn check_signature_from(child: &Cert, parent: &Cert) -> Check {
    let ca_ok = match parent.basic_constraints {
        Some((is_ca, _)) => is_ca,
        None => parent.version != 3,
    };
    if !ca_ok || parent.key_usage == Some(false) {
        return Check::Invalid(
            "x509: invalid signature: parent certificate cannot sign this kind of certificate"
                .into(),
        );
    }
    let Ok(key) = &parent.key else {
        return Check::Invalid("x509: cannot verify signature: algorithm unimplemented".into());
    };
    let hash = match child.signature_algorithm.as_str() {
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" => Hash::Sha256,
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Hash::Sha384,
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Hash::Sha512,
        "1.3.101.112" => Hash::None,
        "1.2.840.113549.1.1.10" => {
            return Check::Unknown(
                "an RSA-PSS certificate signature is not checked by this tool".into(),
            )
        }
        other => {
            return Check::Invalid(format!(
                "x509: cannot verify signature: insecure or unsupported algorithm {other}"
            ))
        }
    };
    let rsa = child.signature_algorithm.starts_with("1.2.840.113549.");
    let ecdsa = child.signature_algorithm.starts_with("1.2.840.10045.");
    match (key, rsa, ecdsa) {
        (PublicKey::Rsa { .. }, true, _)
        | (PublicKey::Ecdsa { .. }, _, true)
        | (PublicKey::Ed25519(_), false, false) => {
            keys::verify_with(key, hash, &child.tbs, &child.signature)
        }
        _ => Check::Invalid(
            "x509: signature algorithm does not match the issuer's public key type".into(),
        ),
    }
}

/// Go's `Certificate.VerifyHostname`.
pub fn verify_hostname(cert: &Cert, host: &str) -> Result<(), String> {
    let candidate_ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .filter(|_| host.len() >= 3)
        .unwrap_or(host);
    if let Some(ip) = go_parse_ip(candidate_ip) {
        if cert.ips.contains(&ip) {
            return Ok(());
        }
        return Err(format!(
            "x509: certificate is not valid for IP {candidate_ip}"
        ));
    }
    let name = host.to_ascii_lowercase();
    let valid_input = valid_hostname(&name, false);
    let parts: Vec<&str> = name.strip_suffix('.').unwrap_or(&name).split('.').collect();
    for pattern in &cert.dns_names {
        let matched = if valid_input && valid_hostname(pattern, true) {
            match_hostnames(&pattern.to_ascii_lowercase(), &parts)
        } else {
            !matches!(pattern.as_str(), "" | ".")
                && !matches!(name.as_str(), "" | ".")
                && pattern.to_ascii_lowercase() == name
        };
        if matched {
            return Ok(());
        }
    }
    Err(format!(
        "x509: certificate is valid for {}, not {host}",
        cert.dns_names.join(", ")
    ))
}

/// `net.ParseIP`: dotted IPv4 (no leading zeros) or IPv6 without a zone, as 16 bytes.
fn go_parse_ip(s: &str) -> Option<[u8; 16]> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => Some(v6.octets()),
    }
}

fn valid_hostname(host: &str, pattern: bool) -> bool {
    let host = if pattern {
        host
    } else {
        host.strip_suffix('.').unwrap_or(host)
    };
    if host.is_empty() || host == "*" {
        return false;
    }
    host.split('.').enumerate().all(|(i, part)| {
        if part.is_empty() {
            return false;
        }
        if pattern && i == 0 && part == "*" {
            return true;
        }
        part.chars()
            .enumerate()
            .all(|(j, c)| c.is_ascii_alphanumeric() || c == '_' || (c == '-' && j != 0))
    })
}

fn match_hostnames(pattern: &str, host: &[&str]) -> bool {
    if pattern.is_empty() || host.is_empty() {
        return false;
    }
    let parts: Vec<&str> = pattern.split('.').collect();
    parts.len() == host.len()
        && parts
            .iter()
            .zip(host)
            .enumerate()
            .all(|(i, (p, h))| (i == 0 && *p == "*") || p == h)
}

/// Unix seconds as Go's `time.RFC3339` in UTC.
pub fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}
