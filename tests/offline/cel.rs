//! Differential test: generated scopes, keys, certificate bundles, emails, hostnames,
//! issuers and identities are judged both by the core and by the CRDs' own
//! `x-kubernetes-validations` (evaluated with `kube::core::cel`); accept/reject and the
//! failing rules' messages must agree.

use std::cell::Cell;
use std::collections::BTreeSet;

use kube::core::cel::{compile_schema, validate_compiled, CompiledSchema};
use proptest::prelude::*;
use serde_json::{json, Value};

use cip_core::cluster::ClusterFacts;
use cip_core::validate::{self, Context};
use testkit::cases;
use testkit::paths::b64;
use testkit::upstream::Crd;

const V1_CRD: Crd = Crd::ClusterImagePolicyV1;
/// The last v1alpha1 rules openshift/api shipped (with PKI and its PEM marker rules):
/// the v1alpha1 rules the webhook enforces.
const V1ALPHA1_CRD: Crd = Crd::ClusterImagePolicyV1alpha1;

/// The CRD's rule messages: core problems with one of these texts are CEL rules.
fn schema(crd: Crd) -> CompiledSchema {
    let text = crd.text();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    let compiled = compile_schema(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
    assert!(
        !compiled.has_errors(),
        "{:?}",
        compiled.compilation_errors()
    );
    compiled
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
    let mut runner = cases::runner(100);
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

#[test]
fn scopes_agree_with_cel() {
    for (crd, version) in [(V1_CRD, "v1"), (V1ALPHA1_CRD, "v1alpha1")] {
        let schema = schema(crd);
        run("scope", cases::scope(), |s| {
            let mut o = cases::base(version);
            o["spec"]["scopes"] = json!([s]);
            both(&schema, &o, "spec.scopes")
        });
    }
}

#[test]
fn key_markers_agree_with_cel() {
    let schema = schema(V1_CRD);
    run("keyData", cases::pem("PUBLIC KEY"), |pem| {
        let mut o = cases::base("v1");
        o["spec"]["policy"]["rootOfTrust"]["publicKey"]["keyData"] =
            json!(b64(format!("{pem}{}", " ".repeat(40))));
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
            run(field, cases::pem("CERTIFICATE"), |pem| {
                let mut o = cases::base(version);
                let mut pki = json!({"caRootsData": b64(include_str!("../fixtures/keys/ca.crt")),
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
    let fulcio = cases::fulcio;
    run("signedEmail", cases::email(), |email| {
        both(
            &schema,
            &fulcio("https://oidc.example.com", email),
            "spec.policy.rootOfTrust.fulcioCAWithRekor.fulcioSubject.signedEmail",
        )
    });
    // Where Go's ParseRequestURI (the API server) and kube-cel's WHATWG parser agree;
    // see `issuer_divergences` (and the real API server's own verdicts in
    // tests/real_apiserver/cel.rs).
    run("oidcIssuer", cases::issuer(), |issuer| {
        both(
            &schema,
            &fulcio(issuer, "a@b"),
            "spec.policy.rootOfTrust.fulcioCAWithRekor.fulcioSubject.oidcIssuer",
        )
    });
    let hostname = cases::hostname();
    // PKI subjects in both versions: v1alpha1 words its messages differently.
    for (crd, version) in [(V1_CRD, "v1"), (V1ALPHA1_CRD, "v1alpha1")] {
        let compiled = self::schema(crd);
        let pki = |subject: Value| cases::pki(version, subject);
        run("hostname", hostname.clone(), |host| {
            both(
                &compiled,
                &pki(json!({"hostname": host})),
                "spec.policy.rootOfTrust.pki.pkiCertificateSubject.hostname",
            )
        });
        run("email", cases::pki_email(), |email| {
            both(
                &compiled,
                &pki(json!({"email": email})),
                "spec.policy.rootOfTrust.pki.pkiCertificateSubject.email",
            )
        });
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
            cip_core::rules::is_request_uri(issuer),
            go_accepts,
            "{issuer:?}"
        );
    }
}

#[test]
fn identities_agree_with_cel() {
    let identity = cases::identity();
    for (crd, version) in [(V1_CRD, "v1"), (V1ALPHA1_CRD, "v1alpha1")] {
        let schema = schema(crd);
        run("identity", identity.clone(), |repo| {
            let mut o = cases::base(version);
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
