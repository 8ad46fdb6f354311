//! Generated ClusterImagePolicy fields, for the tests that compare the core's validation
//! with the CRD's own rules: kube-cel offline, the real API server end to end. The
//! generators aim at the rules' edges (both accepted and refused values).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};

use crate::paths::{b64, cosign_pub, root};

/// A valid ClusterImagePolicy of this version, to put one generated field into.
pub fn base(version: &str) -> Value {
    json!({
        "apiVersion": format!("config.openshift.io/{version}"),
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "p"},
        "spec": {
            "scopes": ["example.com"],
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": b64(cosign_pub())}}}
        }
    })
}

/// The test CA certificate (tests/fixtures/keys/ca.crt).
pub fn ca_pem() -> String {
    std::fs::read_to_string(root().join("tests/fixtures/keys/ca.crt")).unwrap()
}

/// A policy of this version whose root of trust is PKI with this subject.
pub fn pki(version: &str, subject: Value) -> Value {
    let mut o = base(version);
    o["spec"]["policy"]["rootOfTrust"] = json!({
        "policyType": "PKI",
        "pki": {"caRootsData": b64(ca_pem()), "pkiCertificateSubject": subject}
    });
    o
}

/// A v1 policy whose root of trust is Fulcio with this issuer and email.
pub fn fulcio(issuer: &str, email: &str) -> Value {
    let mut o = base("v1");
    o["spec"]["policy"]["rootOfTrust"] = json!({
        "policyType": "FulcioCAWithRekor",
        "fulcioCAWithRekor": {
            "fulcioCAData": b64(ca_pem()),
            "rekorKeyData": b64(cosign_pub()),
            "fulcioSubject": {"oidcIssuer": issuer, "signedEmail": email}
        }
    });
    o
}

pub fn scope() -> impl Strategy<Value = String> + Clone {
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

/// PEM text with the `label` markers right, misplaced, doubled or missing.
pub fn pem(label: &'static str) -> impl Strategy<Value = String> + Clone {
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

pub fn email() -> impl Strategy<Value = String> + Clone {
    "[a-z]{0,3}[ @\t]{0,2}[a-z.]{0,4}(@[a-z\u{e9}]{0,3})?"
}

/// Emails for a PKI subject.
pub fn pki_email() -> impl Strategy<Value = String> + Clone {
    "[a-z]{0,3}[ @\t]{0,2}[a-z.]{0,4}(@[a-z]{0,3})?"
}

/// Issuers from the part of the URL space where Go's `url.ParseRequestURI` (the API
/// server) and the WHATWG parser kube-cel uses agree.
pub fn issuer() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        "(https?|ftp)://([a-z0-9-]{1,4}\\.)?[a-z]{1,4}(\\:[0-9]{1,4})?(/[a-z0-9]{0,5}){0,2}",
        "/[a-z0-9/]{0,6}",
        "[a-z]{1,5}",
        "\\.\\./[a-z]{1,3}",
        "https://[a-z]{1,2}\\:[a-z]{1,2}\\:[a-z]/",
    ]
}

/// Issuers from everywhere, those two parsers' disagreements included.
pub fn any_issuer() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        issuer(),
        "[ ]?(https?)?:(//)?[a-z0-9.%]{0,6}(/[%a-z]{0,3})?",
        "[a-z]{1,3}://[a-z]{1,3}\\.[0-9]{1,2}",
    ]
}

pub fn hostname() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => "(\\*\\.)?[a-z0-9]{1,4}(\\.[a-z0-9-]{0,4}[a-z0-9]){0,2}",
        2 => "(\\*\\.)?[a-zA-Z0-9.*-]{0,10}",
    ]
}

pub fn identity() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        scope(),
        "[a-z]{1,4}(\\:[0-9]{1,4})?",
        "localhost\\:[0-9a-z]{1,4}(/[a-z]{1,3})?"
    ]
}

/// A deterministic runner: the same cases on every run, so CI is reproducible.
pub fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// `n` values of a strategy, deterministically.
pub fn sample<S: Strategy<Value = String>>(strategy: &S, n: usize) -> Vec<String> {
    let mut runner = runner(n as u32);
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}
