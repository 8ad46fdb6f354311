//! `verify` for keyless (FulcioCAWithRekor), PKI and key-with-Rekor policies against
//! containers/image on the same registry: certificates, chains and Rekor SETs made in the
//! test, each repository signed one way (valid, or forged so that exactly one check
//! fails), judged under several policies by our `verify` and by `civerify decide`. The
//! verdicts must be identical; the forgeries sigstore-rs 0.15 accepted (a SET of another
//! signature, a payload signature that does not verify under a valid SET, a valid
//! certificate and SET over another payload, an attacker's chain) are among them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, IsCa};

use serde_json::{json, Value};

use testkit::keyless::{self, payload, sign, Attachment, Ca, Leaf, Rekor};
use testkit::paths::b64;
use testkit::registry::Registry;

use crate::verify::{both, ours, render_input};

const ISSUER: &str = "https://oauth.example.com";
const EMAIL: &str = "signer@example.com";
const HOST: &str = "signer.example.com";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Everything that signs, and the keys policies trust.
struct World {
    registry: Registry,
    fulcio_root: Ca,
    fulcio_inter: Ca,
    attacker: Ca,
    pki_root: Ca,
    pki_inter: Ca,
    rekor: Rekor,
    rogue_rekor: Rekor,
    key: rcgen::KeyPair,
    other_key: rcgen::KeyPair,
    /// When the Fulcio leaves were issued (an hour ago) and their entries logged.
    issued: i64,
}

impl World {
    fn new() -> World {
        let t = now();
        let fulcio_root = Ca::root("fulcio root", t - 86_400 * 365, t + 86_400 * 365);
        let fulcio_inter =
            fulcio_root.intermediate("fulcio intermediate", t - 86_400 * 30, t + 86_400 * 30);
        let pki_root = Ca::root("pki root", t - 86_400 * 365, t + 86_400 * 3650);
        let pki_inter =
            pki_root.intermediate("pki intermediate", t - 86_400 * 365, t + 86_400 * 3650);
        World {
            registry: Registry::start(),
            fulcio_root,
            fulcio_inter,
            attacker: Ca::root("fulcio root", t - 86_400, t + 86_400),
            pki_root,
            pki_inter,
            rekor: Rekor::new(),
            rogue_rekor: Rekor::new(),
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            other_key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            issued: t - 3_600,
        }
    }

    fn fulcio_chain(&self) -> String {
        format!("{}{}", self.fulcio_inter.pem, self.fulcio_root.pem)
    }

    fn pki_chain(&self) -> String {
        format!("{}{}", self.pki_inter.pem, self.pki_root.pem)
    }

    /// A certificate-signed layer: the payload signed by the leaf's key, the certificate,
    /// the chain (if any) and a SET from `rekor` (if any) at `time`.
    fn cert_layer(
        &self,
        payload: Vec<u8>,
        (cert, key): &(String, rcgen::KeyPair),
        chain: Option<String>,
        rekor: Option<&Rekor>,
        time: i64,
    ) -> Attachment {
        let signature = sign(key, &payload);
        let mut annotations = BTreeMap::from([
            (keyless::SIGNATURE.to_string(), signature.clone()),
            (keyless::CERTIFICATE.to_string(), cert.clone()),
        ]);
        if let Some(chain) = chain {
            annotations.insert(keyless::CHAIN.to_string(), chain);
        }
        if let Some(rekor) = rekor {
            annotations.insert(
                keyless::BUNDLE.to_string(),
                rekor.bundle(cert, &signature, &payload, time),
            );
        }
        (payload, annotations)
    }

    fn fulcio_leaf(&self, change: impl FnOnce(&mut Leaf)) -> (String, rcgen::KeyPair) {
        let mut leaf = Leaf::fulcio(EMAIL, ISSUER, self.issued);
        change(&mut leaf);
        self.fulcio_inter.leaf(&leaf)
    }

    fn pki_leaf(&self, change: impl FnOnce(&mut Leaf)) -> (String, rcgen::KeyPair) {
        let t = now();
        let mut leaf = Leaf::pki(EMAIL, HOST, t - 86_400, t + 86_400 * 90);
        change(&mut leaf);
        self.pki_inter.leaf(&leaf)
    }

    fn key_layer(
        &self,
        payload: Vec<u8>,
        key: &rcgen::KeyPair,
        rekor: Option<&Rekor>,
    ) -> Attachment {
        let signature = sign(key, &payload);
        let mut annotations = BTreeMap::from([(keyless::SIGNATURE.to_string(), signature.clone())]);
        if let Some(rekor) = rekor {
            annotations.insert(
                keyless::BUNDLE.to_string(),
                rekor.bundle(&key.public_key_pem(), &signature, &payload, self.issued),
            );
        }
        (payload, annotations)
    }
}

/// Each repository's signature: (repo, layers) for the image whose identity and digest
/// are given.
fn fulcio_cases(w: &World, id: &str, digest: &str) -> Vec<(&'static str, Vec<Attachment>)> {
    let p = || payload(id, digest);
    let at = w.issued + 60;
    let chain = Some(w.fulcio_chain());
    let r = Some(&w.rekor);
    let valid = w.fulcio_leaf(|_| {});
    let mut cases = vec![
        (
            "f-valid",
            vec![w.cert_layer(p(), &valid, chain.clone(), r, at)],
        ),
        (
            "f-v1-only",
            vec![w.cert_layer(
                p(),
                &w.fulcio_leaf(|l| l.issuer_v2 = None),
                chain.clone(),
                r,
                at,
            )],
        ),
        (
            "f-v2-only",
            vec![w.cert_layer(
                p(),
                &w.fulcio_leaf(|l| l.issuer_v1 = None),
                chain.clone(),
                r,
                at,
            )],
        ),
        (
            "f-issuers-disagree",
            vec![w.cert_layer(
                p(),
                &w.fulcio_leaf(|l| l.issuer_v2 = Some("https://evil.example.com".into())),
                chain.clone(),
                r,
                at,
            )],
        ),
        (
            "f-other-email",
            vec![w.cert_layer(
                p(),
                &w.fulcio_leaf(|l| l.emails = vec!["other@example.com".into()]),
                chain.clone(),
                r,
                at,
            )],
        ),
        (
            "f-other-issuer",
            vec![w.cert_layer(
                p(),
                &w.fulcio_leaf(|l| {
                    l.issuer_v1 = Some("https://other.example.com".into());
                    l.issuer_v2 = l.issuer_v1.clone();
                }),
                chain.clone(),
                r,
                at,
            )],
        ),
        (
            "f-no-set",
            vec![w.cert_layer(p(), &valid, chain.clone(), None, at)],
        ),
        (
            "f-rogue-rekor",
            vec![w.cert_layer(p(), &valid, chain.clone(), Some(&w.rogue_rekor), at)],
        ),
        (
            "f-logged-after-expiry",
            vec![w.cert_layer(p(), &valid, chain.clone(), r, w.issued + 601)],
        ),
        (
            "f-logged-before-issue",
            vec![w.cert_layer(p(), &valid, chain.clone(), r, w.issued - 1)],
        ),
        (
            "f-server-auth",
            vec![w.cert_layer(
                p(),
                &w.fulcio_leaf(|l| l.code_signing = false),
                chain.clone(),
                r,
                at,
            )],
        ),
        (
            "f-unknown-critical",
            vec![w.cert_layer(
                p(),
                &w.fulcio_leaf(|l| l.unknown_critical = true),
                chain.clone(),
                r,
                at,
            )],
        ),
        ("f-no-chain", vec![w.cert_layer(p(), &valid, None, r, at)]),
        (
            "f-chain-root-only",
            vec![w.cert_layer(p(), &valid, Some(w.fulcio_root.pem.clone()), r, at)],
        ),
        (
            "f-from-root",
            vec![w.cert_layer(
                p(),
                &w.fulcio_root.leaf(&Leaf::fulcio(EMAIL, ISSUER, w.issued)),
                None,
                r,
                at,
            )],
        ),
        (
            "f-attacker-chain",
            vec![w.cert_layer(
                p(),
                &w.attacker.leaf(&Leaf::fulcio(EMAIL, ISSUER, w.issued)),
                Some(w.attacker.pem.clone()),
                r,
                at,
            )],
        ),
        ("f-unsigned", vec![]),
    ];
    // A SET of another signature: the entry logs a signature of another payload.
    let (mut layer, mut annotations) = w.cert_layer(p(), &valid, chain.clone(), r, at);
    let other = w.cert_layer(
        payload(id, &format!("sha256:{}", "1".repeat(64))),
        &valid,
        chain.clone(),
        r,
        at,
    );
    annotations.insert(keyless::BUNDLE.into(), other.1[keyless::BUNDLE].clone());
    cases.push((
        "f-set-of-other-signature",
        vec![(layer.clone(), annotations)],
    ));
    // A payload signature that does not verify, under a SET that logs exactly it.
    let wrong = sign(&valid.1, b"something else");
    annotations = BTreeMap::from([
        (keyless::SIGNATURE.to_string(), wrong.clone()),
        (keyless::CERTIFICATE.to_string(), valid.0.clone()),
        (keyless::CHAIN.to_string(), w.fulcio_chain()),
        (
            keyless::BUNDLE.to_string(),
            w.rekor.bundle(&valid.0, &wrong, &layer, at),
        ),
    ]);
    cases.push((
        "f-signature-does-not-verify",
        vec![(layer.clone(), annotations)],
    ));
    // A valid certificate, signature and SET, over another (evil) payload.
    let evil = payload(&id.replace("/f-evil-payload/", "/evil/"), digest);
    (_, annotations) = w.cert_layer(evil, &valid, chain.clone(), r, at);
    cases.push(("f-evil-payload", vec![(p(), annotations)]));
    // Two certificates where one leaf is expected.
    (layer, annotations) = w.cert_layer(p(), &valid, chain.clone(), r, at);
    annotations.insert(
        keyless::CERTIFICATE.into(),
        format!("{}{}", valid.0, w.fulcio_inter.pem),
    );
    cases.push(("f-two-certificates", vec![(layer, annotations)]));
    // A forged layer first, then a valid one: the second is accepted.
    cases.push((
        "f-second-layer",
        vec![
            w.cert_layer(p(), &valid, chain.clone(), Some(&w.rogue_rekor), at),
            w.cert_layer(p(), &valid, chain, r, at),
        ],
    ));
    cases
}

fn pki_cases(w: &World, id: &str, digest: &str) -> Vec<(&'static str, Vec<Attachment>)> {
    let p = || payload(id, digest);
    let t = now();
    let chain = Some(w.pki_chain());
    let valid = w.pki_leaf(|_| {});
    vec![
        (
            "p-valid",
            vec![w.cert_layer(p(), &valid, chain.clone(), None, 0)],
        ),
        (
            "p-other-email",
            vec![w.cert_layer(
                p(),
                &w.pki_leaf(|l| l.emails = vec!["other@example.com".into()]),
                chain.clone(),
                None,
                0,
            )],
        ),
        (
            "p-other-host",
            vec![w.cert_layer(
                p(),
                &w.pki_leaf(|l| l.dns = vec!["other.example.org".into()]),
                chain.clone(),
                None,
                0,
            )],
        ),
        (
            "p-wildcard-host",
            vec![w.cert_layer(
                p(),
                &w.pki_leaf(|l| l.dns = vec!["*.example.com".into()]),
                chain.clone(),
                None,
                0,
            )],
        ),
        (
            "p-expired",
            vec![w.cert_layer(
                p(),
                &w.pki_leaf(|l| {
                    l.from = t - 86_400 * 30;
                    l.until = t - 86_400;
                }),
                chain.clone(),
                None,
                0,
            )],
        ),
        (
            "p-not-yet-valid",
            vec![w.cert_layer(
                p(),
                &w.pki_leaf(|l| {
                    l.from = t + 86_400;
                    l.until = t + 86_400 * 30;
                }),
                chain.clone(),
                None,
                0,
            )],
        ),
        ("p-no-chain", vec![w.cert_layer(p(), &valid, None, None, 0)]),
        (
            "p-server-auth",
            vec![w.cert_layer(
                p(),
                &w.pki_leaf(|l| l.code_signing = false),
                chain.clone(),
                None,
                0,
            )],
        ),
        (
            "p-attacker-chain",
            vec![w.cert_layer(
                p(),
                &w.attacker
                    .leaf(&Leaf::pki(EMAIL, HOST, t - 3_600, t + 3_600)),
                Some(w.attacker.pem.clone()),
                None,
                0,
            )],
        ),
        (
            "p-with-set",
            vec![w.cert_layer(p(), &valid, chain, Some(&w.rekor), t)],
        ),
        forged_chain(w, "p-intermediate-not-ca", p(), |root| {
            vec![root.intermediate_as("not a ca", t - 86_400, t + 86_400 * 90, IsCa::ExplicitNoCa)]
        }),
        forged_chain(w, "p-path-length", p(), |root| {
            let capped = root.intermediate_as(
                "path length 0",
                t - 86_400,
                t + 86_400 * 90,
                IsCa::Ca(BasicConstraints::Constrained(0)),
            );
            let below = capped.intermediate("below the cap", t - 86_400, t + 86_400 * 90);
            vec![capped, below]
        }),
    ]
}

/// A PKI layer whose leaf is signed through `make(root)`'s certificates (the last signs
/// the leaf), each valid but for the one basic constraint the case breaks; the chain
/// annotation carries them and the root.
fn forged_chain(
    w: &World,
    name: &'static str,
    payload: Vec<u8>,
    make: impl FnOnce(&Ca) -> Vec<Ca>,
) -> (&'static str, Vec<Attachment>) {
    let t = now();
    let cas = make(&w.pki_root);
    let leaf = cas
        .last()
        .unwrap()
        .leaf(&Leaf::pki(EMAIL, HOST, t - 86_400, t + 86_400 * 90));
    let chain: String = cas
        .iter()
        .rev()
        .map(|c| c.pem.as_str())
        .chain([w.pki_root.pem.as_str()])
        .collect();
    (
        name,
        vec![w.cert_layer(payload, &leaf, Some(chain), None, 0)],
    )
}

fn key_cases(w: &World, id: &str, digest: &str) -> Vec<(&'static str, Vec<Attachment>)> {
    let p = || payload(id, digest);
    let (layer, mut annotations) = w.key_layer(p(), &w.key, Some(&w.rekor));
    let other = w.key_layer(
        payload(id, &format!("sha256:{}", "2".repeat(64))),
        &w.key,
        Some(&w.rekor),
    );
    annotations.insert(keyless::BUNDLE.into(), other.1[keyless::BUNDLE].clone());
    vec![
        ("k-valid", vec![w.key_layer(p(), &w.key, Some(&w.rekor))]),
        ("k-no-set", vec![w.key_layer(p(), &w.key, None)]),
        (
            "k-rogue-rekor",
            vec![w.key_layer(p(), &w.key, Some(&w.rogue_rekor))],
        ),
        (
            "k-other-key",
            vec![w.key_layer(p(), &w.other_key, Some(&w.rekor))],
        ),
        ("k-set-of-other-signature", vec![(layer, annotations)]),
    ]
}

/// Pushes one image per case and attaches its signature; returns (repo, digest).
fn push_all(w: &World) -> Vec<(String, String)> {
    let host = &w.registry.host;
    let layout = w.registry.oci_layout("app", "amd64");
    let mut out = Vec::new();
    type Cases = fn(&World, &str, &str) -> Vec<(&'static str, Vec<Attachment>)>;
    for make in [fulcio_cases as Cases, pki_cases, key_cases] {
        // The case list is fixed; the identity and digest only change the payloads.
        let names: Vec<&str> = make(w, "x", "sha256:0")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for name in names {
            let digest = w
                .registry
                .push(&layout, &format!("{name}/app:v1"), None, None);
            let id = format!("{host}/{name}/app:v1");
            let layers = make(w, &id, &digest)
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, l)| l)
                .unwrap();
            if !layers.is_empty() {
                w.registry
                    .attach_layers(&format!("{name}/app"), &digest, &layers);
            }
            out.push((name.to_string(), digest));
        }
    }
    out
}

fn cip(name: &str, scopes: &[String], root_of_trust: Value) -> Value {
    json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
        "metadata": {"name": name},
        "spec": {"scopes": scopes, "policy": {"rootOfTrust": root_of_trust,
                 "signedIdentity": {"matchPolicy": "MatchRepoDigestOrExact"}}}})
}

/// The three policies of one mode over the repositories of each group.
fn policies(w: &World, repos: &[(String, String)], mode: &str) -> Vec<Value> {
    let host = &w.registry.host;
    let scopes = |prefix: &str| -> Vec<String> {
        repos
            .iter()
            .filter(|(r, _)| r.starts_with(prefix))
            .map(|(r, _)| format!("{host}/{r}"))
            .collect()
    };
    let (rekor, email) = match mode {
        "rogue-rekor" => (&w.rogue_rekor, EMAIL),
        "other-subject" => (&w.rekor, "other@example.com"),
        _ => (&w.rekor, EMAIL),
    };
    let fulcio = json!({"policyType": "FulcioCAWithRekor", "fulcioCAWithRekor": {
        "fulcioCAData": b64(&w.fulcio_root.pem), "rekorKeyData": b64(&rekor.public_pem),
        "fulcioSubject": {"oidcIssuer": ISSUER, "signedEmail": email}}});
    let subject = match mode {
        "as-signed" => json!({"email": EMAIL, "hostname": HOST}),
        "other-subject" => json!({"hostname": "other.example.org"}),
        _ => json!({"email": EMAIL}),
    };
    let mut pki = json!({"caRootsData": b64(&w.pki_root.pem), "pkiCertificateSubject": subject});
    if mode == "rogue-rekor" {
        pki["caIntermediatesData"] = json!(b64(&w.pki_inter.pem));
    }
    let key = if mode == "other-subject" {
        &w.other_key
    } else {
        &w.key
    };
    let public_key = json!({"policyType": "PublicKey", "publicKey": {
        "keyData": b64(key.public_key_pem()), "rekorKeyData": b64(&rekor.public_pem)}});
    vec![
        cip("fulcio", &scopes("f-"), fulcio),
        cip(
            "pki",
            &scopes("p-"),
            json!({"policyType": "PKI", "pki": pki}),
        ),
        cip("key", &scopes("k-"), public_key),
    ]
}

#[test]
fn keyless_and_pki_verdicts_agree_with_containers_image() {
    let w = World::new();
    let host = w.registry.host.clone();
    let repos = push_all(&w);
    let work = tempfile::tempdir().unwrap();
    let mut cases = 0;
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut disagreements = Vec::new();
    let mut accepted_valid = Vec::new();
    let mut reasons = BTreeMap::new();
    for mode in ["as-signed", "other-subject", "rogue-rekor"] {
        let (input, worker) =
            render_input(&work.path().join(mode), &host, &policies(&w, &repos, mode));
        for (repo, digest) in &repos {
            for image in [
                format!("{host}/{repo}/app:v1"),
                format!("{host}/{repo}/app@{digest}"),
            ] {
                let (verdict, json, disagreement) = both(&input, &worker, mode, &image);
                cases += 1;
                *tally.entry(verdict.clone()).or_default() += 1;
                disagreements.extend(disagreement);
                if mode == "as-signed" && !image.contains('@') {
                    if verdict == "accepted" {
                        accepted_valid.push(repo.clone());
                    }
                    reasons.insert(
                        repo.clone(),
                        json["reason"].as_str().unwrap_or("").to_string(),
                    );
                }
            }
        }
    }
    println!("{cases} keyless/PKI cases: {tally:?}");
    // Each forgery fails at the check it targets, in containers/image's words.
    for (repo, fragment) in [
        (
            "f-attacker-chain",
            "certificate signed by unknown authority",
        ),
        (
            "f-chain-root-only",
            "certificate signed by unknown authority",
        ),
        ("f-evil-payload", "payload in Rekor SET does not match"),
        (
            "f-issuers-disagree",
            "inconsistent OIDC issuer extension values",
        ),
        ("f-logged-after-expiry", "is after"),
        ("f-logged-before-issue", "is before"),
        ("f-no-chain", "certificate signed by unknown authority"),
        ("f-no-set", "missing dev.sigstore.cosign/bundle annotation"),
        (
            "f-other-email",
            "Required email \"signer@example.com\" not found",
        ),
        ("f-other-issuer", "Unexpected Fulcio OIDC issuer"),
        (
            "f-rogue-rekor",
            "cryptographic signature verification of Rekor SET failed",
        ),
        ("f-server-auth", "incompatible key usage"),
        (
            "f-set-of-other-signature",
            "signature in Rekor SET does not match",
        ),
        (
            "f-signature-does-not-verify",
            "cryptographic signature verification failed",
        ),
        ("f-two-certificates", "has trailing data"),
        ("f-unknown-critical", "unhandled critical extension"),
        ("f-unsigned", "no signature exists"),
        ("k-no-set", "missing dev.sigstore.cosign/bundle annotation"),
        ("k-other-key", "publicKey in Rekor SET does not match"),
        (
            "k-rogue-rekor",
            "cryptographic signature verification of Rekor SET failed",
        ),
        (
            "k-set-of-other-signature",
            "signature in Rekor SET does not match",
        ),
        (
            "p-attacker-chain",
            "certificate signed by unknown authority",
        ),
        ("p-expired", "is after"),
        (
            "p-intermediate-not-ca",
            "parent certificate cannot sign this kind of certificate",
        ),
        (
            "p-path-length",
            "too many intermediates for path length constraint",
        ),
        ("p-no-chain", "certificate signed by unknown authority"),
        ("p-not-yet-valid", "is before"),
        ("p-other-email", "Required email"),
        ("p-other-host", "Unexpected subject hostname"),
        ("p-server-auth", "incompatible key usage"),
    ] {
        assert!(
            reasons[repo].contains(fragment),
            "{repo}: {}",
            reasons[repo]
        );
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    assert!(cases >= 60, "{cases}");
    // The valid signatures of each kind are accepted and every forgery refused.
    accepted_valid.sort();
    assert_eq!(
        accepted_valid,
        [
            "f-from-root",
            "f-second-layer",
            "f-v1-only",
            "f-v2-only",
            "f-valid",
            "k-valid",
            "p-valid",
            "p-wildcard-host",
            "p-with-set"
        ],
    );
}

/// A PKI verdict says until when it holds: the leaf's notAfter, 90 days ahead here.
#[test]
fn a_pki_verdict_says_until_when_it_holds() {
    let w = World::new();
    let host = w.registry.host.clone();
    let repos = push_all(&w);
    let work = tempfile::tempdir().unwrap();
    let (input, _) = render_input(
        &work.path().join("m"),
        &host,
        &policies(&w, &repos, "as-signed"),
    );
    let (verdict, code, json) = ours(&input, &format!("{host}/p-valid/app:v1"));
    assert_eq!((verdict.as_str(), code), ("accepted", 0), "{json}");
    let until = json["acceptedUntil"].as_i64().expect("acceptedUntil");
    assert!((until - (now() + 86_400 * 90)).abs() < 600, "{json}");
    let (_, _, json) = ours(&input, &format!("{host}/f-valid/app:v1"));
    assert_eq!(json["acceptedUntil"], Value::Null, "{json}");
    // In words, and with what the nodes' release cannot parse.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cip-webhook"))
            .arg("verify")
            .args(args)
            .arg("--input")
            .arg(&input)
            .arg(format!("{host}/p-valid/app:v1"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(&["--openshift-version", "4.18.7"]);
    assert!(text.contains("accepted until 20"), "{text}");
    assert!(
        text.contains(
            "note: on OpenShift 4.18.7: a PKI root of trust needs containers/image 5.35 or newer"
        ),
        "{text}"
    );
    assert!(!run(&["--openshift-version", "4.20.1"]).contains("note:"));
    let json: Value =
        serde_json::from_str(&run(&["--format", "json", "--openshift-version", "4.17"])).unwrap();
    assert_eq!(json["notes"].as_array().map(Vec::len), Some(1), "{json}");
}
