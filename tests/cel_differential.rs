//! Differential test: generated scopes, keys, certificate bundles, emails, hostnames,
//! issuers and identities are judged both by the core and by the CRDs' own
//! `x-kubernetes-validations` (evaluated with `kube::core::cel`); accept/reject and the
//! failing rules' messages must agree.

mod common;

use std::cell::Cell;
use std::collections::BTreeSet;

use kube::core::cel::{compile_schema, validate_compiled, CompiledSchema};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};

use cip_webhook::cluster::ClusterFacts;
use cip_webhook::validate::{self, Context};

const V1_CRD: &str = "../shared/reference/crds/master/config-v1/0000_10_config-operator_01_clusterimagepolicies.crd.yaml";
/// The last v1alpha1 CRD openshift/api shipped (with PKI and its PEM marker rules, which
/// release-4.19's TechPreview copy lacks): the v1alpha1 rules the webhook enforces.
const V1ALPHA1_CRD: &str =
    "../shared/reference/crds/final-v1alpha1/config-v1alpha1/0000_10_config-operator_01_clusterimagepolicies.crd.yaml";

/// The CRD's rule messages: core problems with one of these texts are CEL rules.
fn schema(path: &str) -> CompiledSchema {
    let path = common::root().join(path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    let compiled = compile_schema(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
    assert!(
        !compiled.has_errors(),
        "{:?}",
        compiled.compilation_errors()
    );
    compiled
}

use common::b64;

fn base(version: &str) -> Value {
    json!({
        "apiVersion": format!("config.openshift.io/{version}"),
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "p"},
        "spec": {
            "scopes": ["example.com"],
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": b64(include_str!("fixtures/keys/cosign.pub"))}}}
        }
    })
}

/// Messages of the CEL rules that fail, from each side, limited to `field`.
fn both(
    schema: &CompiledSchema,
    object: &Value,
    field: &str,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let cel: BTreeSet<String> = match validate_compiled(schema, object, None) {
        Ok(()) => BTreeSet::new(),
        Err(errors) => errors
            .iter()
            .filter(|e| e.field_path.starts_with(field))
            .map(|e| e.message.clone())
            .collect(),
    };
    let facts = ClusterFacts::default();
    let ctx = Context::new(&facts);
    let report = validate::validate_value(object, &ctx).1;
    // The webhook decodes the request's JSON text instead of a Value: same report.
    assert_eq!(
        validate::validate_json(&object.to_string(), &ctx).1,
        report,
        "{object}"
    );
    let core: BTreeSet<String> = report
        .errors
        .iter()
        .filter(|p| p.path.starts_with(field))
        .filter_map(|p| {
            p.message
                .strip_prefix("Invalid value: \"string\": ")
                .or(p.message.strip_prefix("Invalid value: \"object\": "))
        })
        .map(str::to_string)
        .collect();
    (cel, core)
}

fn run(
    name: &str,
    strategy: impl Strategy<Value = String>,
    case: impl Fn(&str) -> (BTreeSet<String>, BTreeSet<String>),
) {
    // A fixed seed: the same cases on every run, so CI is reproducible.
    let config = Config {
        cases: 100,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let rejected = Cell::new(0usize);
    let total = Cell::new(0usize);
    runner
        .run(&strategy, |value| {
            let (cel, core) = case(&value);
            total.set(total.get() + 1);
            rejected.set(rejected.get() + usize::from(!cel.is_empty()));
            prop_assert_eq!(&cel, &core, "{} {:?}", name, value);
            Ok(())
        })
        .unwrap();
    let (rejected, total) = (rejected.get(), total.get());
    // Both outcomes must be exercised, or the comparison says little.
    eprintln!("{name}: {rejected} of {total} rejected by both");
    assert!(
        rejected >= total / 20 && total - rejected >= total / 20,
        "{name}: {rejected} of {total} rejected"
    );
}

fn scope_strategy() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        1 => Just("localhost".to_string()),
        4 => "[a-z0-9]{1,5}(\\.[a-zA-Z0-9-]{1,5}){0,3}",
        2 => "\\*(\\.[a-z0-9-]{1,4}){1,3}",
        1 => Just("*".to_string()),
        1 => "[a-z]{1,3}\\*\\.[a-z]{2}",
    ];
    let port = prop_oneof![4 => Just(String::new()), 2 => "\\:[0-9]{1,5}", 1 => "\\:[a-z]{1,3}"];
    let component =
        prop_oneof![6 => "/[a-z0-9]{1,4}", 2 => "/[a-z0-9._-]{0,6}", 1 => "/[A-Z]{1,2}"];
    let path = prop::collection::vec(component, 0..3).prop_map(|v| v.concat());
    let tag = prop_oneof![4 => Just(String::new()), 2 => "\\:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,6}", 1 => "\\:[.-][a-z]{1,3}"];
    let digest =
        prop_oneof![6 => Just(String::new()), 1 => "@sha256\\:[0-9a-f]{28,40}", 1 => "@[a-z]{1,3}"];
    (host, port, path, tag, digest).prop_map(|(h, p, pa, t, d)| format!("{h}{p}{pa}{t}{d}"))
}

#[test]
fn scopes_agree_with_cel() {
    for (crd, version) in [(V1_CRD, "v1"), (V1ALPHA1_CRD, "v1alpha1")] {
        let schema = schema(crd);
        run("scope", scope_strategy(), |s| {
            let mut o = base(version);
            o["spec"]["scopes"] = json!([s]);
            both(&schema, &o, "spec.scopes")
        });
    }
}

fn pem_strategy(label: &'static str) -> impl Strategy<Value = String> {
    let begin = prop_oneof![
        4 => Just(format!("-----BEGIN {label}-----")),
        1 => Just(format!(" -----BEGIN {label}-----")),
        1 => Just("-----BEGIN PRIVATE KEY-----".to_string()),
        1 => Just(String::new()),
    ];
    let end = prop_oneof![
        2 => Just(format!("-----END {label}-----")),
        2 => Just(format!("-----END {label}-----\n")),
        1 => Just(format!("-----END {label}-----\n\n")),
        1 => Just(format!("-----END {label}-----\r\n")),
        1 => Just(String::new()),
    ];
    let extra = prop_oneof![
        4 => Just(String::new()),
        1 => Just(format!("\n-----BEGIN {label}-----\nQUJD\n")),
        1 => Just(format!("\n-----END {label}-----")),
        1 => Just(format!("\n-----END {label}-----\n-----BEGIN {label}-----\nQUJD\n")),
    ];
    (begin, "[A-Za-z0-9+/\n]{0,12}", extra, end)
        .prop_map(|(b, body, x, e)| format!("{b}\n{body}{x}\n{e}"))
}

#[test]
fn key_markers_agree_with_cel() {
    let schema = schema(V1_CRD);
    run("keyData", pem_strategy("PUBLIC KEY"), |pem| {
        let mut o = base("v1");
        o["spec"]["policy"]["rootOfTrust"]["publicKey"]["keyData"] =
            json!(b64(&format!("{pem}{}", " ".repeat(40))));
        o["spec"]["policy"]["rootOfTrust"]["publicKey"]["rekorKeyData"] = json!(b64(pem));
        both(
            &schema,
            &o,
            "spec.policy.rootOfTrust.publicKey.rekorKeyData",
        )
    });
    // PKI bundles carry marker rules in both versions (v1alpha1: the final CRD's).
    for (crd, version) in [(V1_CRD, "v1"), (V1ALPHA1_CRD, "v1alpha1")] {
        let compiled = self::schema(crd);
        for field in ["caRootsData", "caIntermediatesData"] {
            run(field, pem_strategy("CERTIFICATE"), |pem| {
                let mut o = base(version);
                let mut pki = json!({"caRootsData": b64(include_str!("fixtures/keys/ca.crt")),
                    "pkiCertificateSubject": {"email": "a@b"}});
                pki[field] = json!(b64(pem));
                o["spec"]["policy"]["rootOfTrust"] = json!({"policyType": "PKI", "pki": pki});
                both(
                    &compiled,
                    &o,
                    &format!("spec.policy.rootOfTrust.pki.{field}"),
                )
            });
        }
    }
}

#[test]
fn emails_hostnames_issuers_agree_with_cel() {
    let schema = schema(V1_CRD);
    let fulcio = |issuer: &str, email: &str| {
        let mut o = base("v1");
        o["spec"]["policy"]["rootOfTrust"] = json!({
            "policyType": "FulcioCAWithRekor",
            "fulcioCAWithRekor": {
                "fulcioCAData": b64(include_str!("fixtures/keys/ca.crt")),
                "rekorKeyData": b64(include_str!("fixtures/keys/cosign.pub")),
                "fulcioSubject": {"oidcIssuer": issuer, "signedEmail": email}
            }
        });
        o
    };
    run(
        "signedEmail",
        "[a-z]{0,3}[ @\t]{0,2}[a-z.]{0,4}(@[a-z\u{e9}]{0,3})?",
        |email| {
            both(
                &schema,
                &fulcio("https://oidc.example.com", email),
                "spec.policy.rootOfTrust.fulcioCAWithRekor.fulcioSubject.signedEmail",
            )
        },
    );
    // Issuers from the part of the URL space where Go's ParseRequestURI (the API
    // server) and the WHATWG parser kube-cel uses agree; see `issuer_divergences`.
    let issuer = prop_oneof![
        "(https?|ftp)://([a-z0-9-]{1,4}\\.)?[a-z]{1,4}(\\:[0-9]{1,4})?(/[a-z0-9]{0,5}){0,2}",
        "/[a-z0-9/]{0,6}",
        "[a-z]{1,5}",
        "\\.\\./[a-z]{1,3}",
        "https://[a-z]{1,2}\\:[a-z]{1,2}\\:[a-z]/",
    ];
    run("oidcIssuer", issuer, |issuer| {
        both(
            &schema,
            &fulcio(issuer, "a@b"),
            "spec.policy.rootOfTrust.fulcioCAWithRekor.fulcioSubject.oidcIssuer",
        )
    });
    let hostname = prop_oneof![
        3 => "(\\*\\.)?[a-z0-9]{1,4}(\\.[a-z0-9-]{0,4}[a-z0-9]){0,2}",
        2 => "(\\*\\.)?[a-zA-Z0-9.*-]{0,10}",
    ];
    // PKI subjects in both versions: v1alpha1 words its messages differently.
    for (crd, version) in [(V1_CRD, "v1"), (V1ALPHA1_CRD, "v1alpha1")] {
        let compiled = self::schema(crd);
        let pki = |subject: Value| {
            let mut o = base(version);
            o["spec"]["policy"]["rootOfTrust"] = json!({
                "policyType": "PKI",
                "pki": {"caRootsData": b64(include_str!("fixtures/keys/ca.crt")), "pkiCertificateSubject": subject}
            });
            o
        };
        run("hostname", hostname.clone(), |host| {
            both(
                &compiled,
                &pki(json!({"hostname": host})),
                "spec.policy.rootOfTrust.pki.pkiCertificateSubject.hostname",
            )
        });
        run(
            "email",
            "[a-z]{0,3}[ @\t]{0,2}[a-z.]{0,4}(@[a-z]{0,3})?",
            |email| {
                both(
                    &compiled,
                    &pki(json!({"email": email})),
                    "spec.policy.rootOfTrust.pki.pkiCertificateSubject.email",
                )
            },
        );
    }
}

/// Where kube-cel's WHATWG-based `isURL` and Go's `url.ParseRequestURI` differ, the
/// core follows Go, because the API server is what admits or refuses the object.
#[test]
fn issuer_divergences_follow_go() {
    for (issuer, go_accepts) in [
        (" https://x", false),
        ("http://h/%zz", false),
        ("http:x", true),
        ("http://a.0", true),
    ] {
        assert_eq!(
            cip_webhook::rules::is_request_uri(issuer),
            go_accepts,
            "{issuer:?}"
        );
    }
}

#[test]
fn identities_agree_with_cel() {
    let identity = prop_oneof![
        scope_strategy(),
        "[a-z]{1,4}(\\:[0-9]{1,4})?",
        "localhost\\:[0-9a-z]{1,4}(/[a-z]{1,3})?"
    ];
    for (crd, version) in [(V1_CRD, "v1"), (V1ALPHA1_CRD, "v1alpha1")] {
        let schema = schema(crd);
        run("identity", identity.clone(), |repo| {
            let mut o = base(version);
            o["spec"]["policy"]["signedIdentity"] =
                json!({"matchPolicy": "ExactRepository", "exactRepository": {"repository": repo}});
            both(
                &schema,
                &o,
                "spec.policy.signedIdentity.exactRepository.repository",
            )
        });
    }
}
