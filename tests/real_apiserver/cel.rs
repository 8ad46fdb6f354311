//! The core's validation against the real API server's, on the upstream CRDs as they are:
//! generated policies (the same generators as the kube-cel comparison in
//! `tests/offline/cel.rs`, plus the URLs where kube-cel and Go disagree) are created with
//! `dryRun=All`, and every problem the server finds (schema and CEL rules, field and
//! message) must be a problem the core finds, and no other.

use std::collections::BTreeSet;

use proptest::strategy::Strategy;
use serde_json::{json, Value};
use testkit::cases;
use testkit::kube::KubeApiServer;
use testkit::paths::b64;
use testkit::upstream::Crd;

use cip_core::cluster::ClusterFacts;
use cip_core::validate::{self, Context, Rule};

/// Cases per family and version: enough to reach both verdicts of every rule.
const PER_FAMILY: usize = 100;

/// (field, message) of each CRD problem the core finds in `object`.
fn core(object: &Value) -> BTreeSet<(String, String)> {
    let facts = ClusterFacts::default();
    let report = validate::validate_value(object, &Context::new(&facts)).1;
    report
        .errors
        .iter()
        .chain(&report.warnings)
        .filter(|p| {
            matches!(
                p.rule,
                Rule::Type
                    | Rule::Required
                    | Rule::Unsupported
                    | Rule::TooLong
                    | Rule::TooShort
                    | Rule::TooMany
                    | Rule::Duplicate
                    | Rule::Format
                    | Rule::Cel(_)
                    | Rule::CelNotChecked
            )
        })
        .map(|p| (p.path.clone(), p.message.clone()))
        .collect()
}

/// (field, message) of each cause the API server gives for refusing `object` (none if it
/// would store it).
async fn server(api: &KubeApiServer, object: &Value) -> BTreeSet<(String, String)> {
    let version = object["apiVersion"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap()
        .1;
    let path = format!("/apis/config.openshift.io/{version}/clusterimagepolicies?dryRun=All");
    let (code, answer) = api.request("POST", &path, Some(object)).await;
    match code {
        200 | 201 => BTreeSet::new(),
        422 => answer["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["field"].as_str().unwrap_or_default().to_string(),
                    c["message"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
        other => panic!("{other}: {answer}"),
    }
}

/// One family of generated fields, put into a base object by `build`.
struct Family {
    name: &'static str,
    values: Vec<String>,
    build: Box<dyn Fn(&str) -> Value>,
}

fn family<S: Strategy<Value = String>>(
    name: &'static str,
    strategy: S,
    build: impl Fn(&str) -> Value + 'static,
) -> Family {
    Family {
        name,
        values: cases::sample(&strategy, PER_FAMILY),
        build: Box::new(build),
    }
}

fn families(version: &'static str) -> Vec<Family> {
    let with = move |pointer: &'static str, wrap: fn(&str) -> Value| {
        move |v: &str| {
            let mut o = cases::base(version);
            *o.pointer_mut(pointer).unwrap() = wrap(v);
            o
        }
    };
    let mut out = vec![
        family(
            "scope",
            cases::scope(),
            with("/spec/scopes", |v| json!([v])),
        ),
        family("identity", cases::identity(), move |v| {
            let mut o = cases::base(version);
            o["spec"]["policy"]["signedIdentity"] =
                json!({"matchPolicy": "ExactRepository", "exactRepository": {"repository": v}});
            o
        }),
        family("pki hostname", cases::hostname(), move |v| {
            cases::pki(version, json!({"hostname": v}))
        }),
        family("pki email", cases::pki_email(), move |v| {
            cases::pki(version, json!({"email": v}))
        }),
    ];
    for (name, field) in [
        ("pki caRootsData", "caRootsData"),
        ("pki caIntermediatesData", "caIntermediatesData"),
    ] {
        out.push(family(name, cases::pem("CERTIFICATE"), move |pem| {
            let mut o = cases::pki(version, json!({"email": "a@b"}));
            o["spec"]["policy"]["rootOfTrust"]["pki"][field] = json!(b64(pem));
            o
        }));
    }
    if version == "v1" {
        out.push(family("rekorKeyData", cases::pem("PUBLIC KEY"), |pem| {
            let mut o = cases::base("v1");
            o["spec"]["policy"]["rootOfTrust"]["publicKey"]["rekorKeyData"] = json!(b64(pem));
            o
        }));
        out.push(family("signedEmail", cases::email(), |v| {
            cases::fulcio("https://oidc.example.com", v)
        }));
        out.push(family("oidcIssuer", cases::any_issuer(), |v| {
            cases::fulcio(v, "a@b")
        }));
        out.push(family("keyData", cases::pem("PUBLIC KEY"), |pem| {
            let mut o = cases::base("v1");
            o["spec"]["policy"]["rootOfTrust"]["publicKey"]["keyData"] = json!(b64(pem));
            o
        }));
    }
    out
}

async fn agree(crd: Crd, version: &'static str) -> Vec<String> {
    let api = KubeApiServer::start(&[crd]).await;
    let mut summary = Vec::new();
    let mut disagreements = Vec::new();
    for f in families(version) {
        let (mut refused, mut accepted) = (0, 0);
        for (i, value) in f.values.iter().enumerate() {
            let mut object = (f.build)(value);
            object["metadata"]["name"] = json!(format!("case-{i}"));
            let (ours, theirs) = (core(&object), server(&api, &object).await);
            if theirs.is_empty() {
                accepted += 1;
            } else {
                refused += 1;
            }
            if ours != theirs {
                disagreements.push(format!(
                    "{version} {} {value:?}:\n  core:   {ours:?}\n  server: {theirs:?}",
                    f.name
                ));
            }
        }
        summary.push(format!(
            "{version} {}: {refused} refused, {accepted} accepted",
            f.name
        ));
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_finds_what_the_api_server_finds() {
    let (v1, v1alpha1) = tokio::join!(
        agree(Crd::ClusterImagePolicyV1, "v1"),
        agree(Crd::ClusterImagePolicyV1alpha1, "v1alpha1")
    );
    for line in v1.iter().chain(&v1alpha1) {
        println!("{line}");
    }
    // Both verdicts of every family were reached, or the comparison says little.
    for line in v1.iter().chain(&v1alpha1) {
        assert!(
            !line.contains(": 0 refused") && !line.contains(", 0 accepted"),
            "{line}"
        );
    }
}
