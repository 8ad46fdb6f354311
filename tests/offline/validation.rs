//! One case per validation rule, each asserting the exact message the webhook and
//! `check` give, on v1 and v1alpha1 objects.

use testkit::paths;

use serde_json::{json, Value};

use cip_core::cluster::ClusterFacts;
use cip_core::model::{ClusterVersion, Image, Release};
use cip_core::validate::{self, Context, Reason, Report, SizeCheck};

use testkit::paths::b64;

fn key() -> String {
    b64(include_str!("../fixtures/keys/cosign.pub"))
}

fn cert() -> String {
    b64(include_str!("../fixtures/keys/ca.crt"))
}

fn public_key_policy(version: &str) -> Value {
    json!({
        "apiVersion": format!("config.openshift.io/{version}"),
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "p"},
        "spec": {
            "scopes": ["example.com/global"],
            "policy": {
                "rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": key()}},
                "signedIdentity": {"matchPolicy": "MatchRepoDigestOrExact"}
            }
        }
    })
}

fn fulcio_policy() -> Value {
    let mut p = public_key_policy("v1");
    p["spec"]["policy"]["rootOfTrust"] = json!({
        "policyType": "FulcioCAWithRekor",
        "fulcioCAWithRekor": {
            "fulcioCAData": cert(),
            "rekorKeyData": key(),
            "fulcioSubject": {"oidcIssuer": "https://oidc.example.com", "signedEmail": "dev@example.com"}
        }
    });
    p
}

fn pki_policy() -> Value {
    let mut p = public_key_policy("v1");
    p["spec"]["policy"]["rootOfTrust"] = json!({
        "policyType": "PKI",
        "pki": {
            "caRootsData": cert(),
            "caIntermediatesData": cert(),
            "pkiCertificateSubject": {"email": "dev@example.com", "hostname": "build.example.com"}
        }
    });
    p
}

/// Every case goes through both entry points: the CLI's (a decoded `Value`) and the
/// webhook's (the request's JSON text), which must agree to the byte.
fn run(object: &Value, facts: &ClusterFacts, size: Option<&SizeCheck>, exempt: bool) -> Report {
    let ctx = Context {
        size,
        exempt,
        ..Context::new(facts)
    };
    let (from_value, report) = validate::validate_value(object, &ctx);
    let (from_json, same) = validate::validate_json(&object.to_string(), &ctx);
    assert_eq!(report, same, "the JSON text path disagrees on {object}");
    assert_eq!(from_value, from_json);
    report
}

fn check(object: &Value) -> Report {
    run(object, &ClusterFacts::default(), None, false)
}

/// Sets the field at a `/`-separated path (`~` removes it).
fn with(mut object: Value, path: &str, value: Value) -> Value {
    let (parent, last) = path.rsplit_once('/').unwrap();
    let target = object
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    if value == json!("~") {
        target.as_object_mut().unwrap().remove(last);
    } else if let Ok(i) = last.parse::<usize>() {
        target[i] = value;
    } else {
        target[last] = value;
    }
    object
}

fn errors(r: &Report) -> Vec<String> {
    r.errors.iter().map(ToString::to_string).collect()
}

/// What the API server adds when schema errors kept the CEL rules from running.
const NIL: &str = "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

#[track_caller]
fn assert_denied(object: Value, expected: &[&str]) {
    let r = check(&object);
    assert_eq!(errors(&r), expected, "warnings: {:?}", r.warning_messages());
}

#[test]
fn valid_policies_pass_cleanly() {
    for p in [
        public_key_policy("v1"),
        fulcio_policy(),
        pki_policy(),
        public_key_policy("v1alpha1"),
    ] {
        let r = check(&p);
        assert_eq!(r, Report::default(), "{p}");
    }
}

#[test]
fn scope_rules() {
    let p = public_key_policy("v1");
    let invalid = |v: &str| format!("Invalid value: \"string\": {v}");
    assert_denied(
        with(p.clone(), "/spec/scopes/0", json!("busybox")),
        &[
            &format!("spec.scopes[0]: {}", invalid("invalid image scope format, scope must contain a fully qualified domain name or 'localhost'")),
            &format!("spec.scopes[0]: {}", invalid("invalid repository namespace or image specification in the image scope")),
        ],
    );
    assert_denied(
        with(p.clone(), "/spec/scopes/0", json!("*.example.com/app")),
        &[&format!("spec.scopes[0]: {}", invalid("invalid image scope with wildcard, a wildcard can only be at the start of the domain and is only supported for subdomain matching, not path matching"))],
    );
    assert_denied(
        with(p.clone(), "/spec/scopes", json!(["a.io", "b.io", "a.io"])),
        &["spec.scopes[2]: Duplicate value: \"a.io\""],
    );
    let long = format!("example.com/{}", "a".repeat(510));
    assert_denied(
        with(p.clone(), "/spec/scopes/0", json!(long)),
        &[
            "spec.scopes[0]: Too long: may not be more than 512 bytes",
            NIL,
        ],
    );
    let many: Vec<String> = (0..257).map(|i| format!("r{i}.example.com")).collect();
    assert_denied(
        with(p.clone(), "/spec/scopes", json!(many)),
        &[
            "spec.scopes: Too many: 257: must have at most 256 items",
            NIL,
        ],
    );
    assert_denied(
        with(p.clone(), "/spec/scopes", json!("~")),
        &["spec.scopes: Required value", NIL],
    );
    let r = check(&with(p, "/spec/scopes", json!([])));
    assert_eq!(
        r.warning_messages(),
        ["spec.scopes: no scopes: the policy applies to no image"]
    );
}

#[test]
fn union_and_policy_type_rules() {
    let p = public_key_policy("v1");
    assert_denied(
        with(p.clone(), "/spec/policy/rootOfTrust/policyType", json!("Foo")),
        &[
            "spec.policy.rootOfTrust.policyType: Unsupported value: \"Foo\": supported values: \"PublicKey\", \"FulcioCAWithRekor\", \"PKI\"",
            NIL,
        ],
    );
    assert_denied(
        with(p.clone(), "/spec/policy/rootOfTrust/policyType", json!("~")),
        &["spec.policy.rootOfTrust.policyType: Required value", NIL],
    );
    let mut f = fulcio_policy();
    f["spec"]["policy"]["rootOfTrust"]["policyType"] = json!("PKI");
    assert_denied(
        f,
        &[
            "spec.policy.rootOfTrust: Invalid value: \"object\": fulcioCAWithRekor is required when policyType is FulcioCAWithRekor, and forbidden otherwise",
            "spec.policy.rootOfTrust: Invalid value: \"object\": pki is required when policyType is PKI, and forbidden otherwise",
        ],
    );
    assert_denied(
        with(p.clone(), "/spec/policy/rootOfTrust", json!("~")),
        &["spec.policy.rootOfTrust: Required value", NIL],
    );
    assert_denied(
        with(p.clone(), "/spec/policy", json!("~")),
        &["spec.policy: Required value", NIL],
    );
    assert_denied(with(p, "/spec", json!("~")), &["spec: Required value", NIL]);
}

#[test]
fn public_key_rules() {
    let p = public_key_policy("v1");
    const K: &str = "/spec/policy/rootOfTrust/publicKey/keyData";
    const KP: &str = "spec.policy.rootOfTrust.publicKey.keyData";
    assert_denied(
        with(p.clone(), K, json!("~")),
        &[&format!("{KP}: Required value"), NIL],
    );
    assert_denied(
        with(p.clone(), K, json!("not base64!")),
        &[&format!("{KP}: Invalid value: \"not base64!\": {KP} in body must be of type byte: \"not base64!\"")],
    );
    assert_denied(
        with(p.clone(), K, json!("Zm9vIGJhcg==")),
        &[
            &format!("{KP}: Invalid value: \"Zm9vIGJhcg==\": {KP} in body should be at least 68 chars long"),
            &format!("{KP}: Invalid value: \"string\": the keyData must start with base64 encoding of '-----BEGIN PUBLIC KEY-----'."),
            &format!("{KP}: Invalid value: \"string\": the keyData must end with base64 encoding of '-----END PUBLIC KEY-----'."),
        ],
    );
    let pem = include_str!("../fixtures/keys/cosign.pub");
    assert_denied(
        with(p.clone(), K, json!(b64(format!("{pem}\n")))),
        &[&format!("{KP}: Invalid value: \"string\": the keyData must end with base64 encoding of '-----END PUBLIC KEY-----'.")],
    );
    assert_denied(
        with(p.clone(), K, json!(b64(format!("\n{pem}")))),
        &[&format!("{KP}: Invalid value: \"string\": the keyData must start with base64 encoding of '-----BEGIN PUBLIC KEY-----'.")],
    );
    let too_long = b64(format!("{pem}{}", "x".repeat(6200)));
    assert_denied(
        with(p.clone(), K, json!(too_long)),
        &[
            &format!("{KP}: Too long: may not be more than 8192 bytes"),
            NIL,
        ],
    );
    // Markers right, contents wrong: only the parse check can tell.
    let garbage =
        b64("-----BEGIN PUBLIC KEY-----\nTm90IGEga2V5IGF0IGFsbA==\n-----END PUBLIC KEY-----\n");
    let r = check(&with(p.clone(), K, json!(garbage)));
    assert_eq!(
        errors(&r),
        [format!(
            "{KP}: does not decode to a PEM public key: the key is not a DER SubjectPublicKeyInfo"
        )]
    );
    assert_eq!(r.reason(), Some(Reason::InvalidKey));
    // Two keys: the nodes read the first only (denied on v1, a warning on v1alpha1).
    let two = b64(format!("{pem}{pem}"));
    let said = format!("{KP}: holds 2 PEM blocks and the nodes use only the first: containers/image reads one public key from keyData, so signatures made with the other keys are refused at pull time");
    let r = check(&with(p.clone(), K, json!(two)));
    assert_eq!(errors(&r), std::slice::from_ref(&said));
    let mut alpha = with(public_key_policy("v1alpha1"), K, json!(two));
    alpha["spec"]["policy"]["signedIdentity"] = json!({"matchPolicy": "MatchRepoDigestOrExact"});
    let r = check(&alpha);
    assert!(r.allowed(), "{:?}", r.denial_message());
    assert_eq!(r.warning_messages(), [said]);
    const R: &str = "/spec/policy/rootOfTrust/publicKey/rekorKeyData";
    const RP: &str = "spec.policy.rootOfTrust.publicKey.rekorKeyData";
    assert_denied(
        with(p.clone(), R, json!(cert())),
        &[
            &format!("{RP}: Invalid value: \"string\": the rekorKeyData must start with base64 encoding of '-----BEGIN PUBLIC KEY-----'."),
            &format!("{RP}: Invalid value: \"string\": the rekorKeyData must end with base64 encoding of '-----END PUBLIC KEY-----'."),
        ],
    );
}

#[test]
fn fulcio_rules() {
    let f = fulcio_policy();
    const P: &str = "spec.policy.rootOfTrust.fulcioCAWithRekor";
    const J: &str = "/spec/policy/rootOfTrust/fulcioCAWithRekor";
    assert_denied(
        with(f.clone(), &format!("{J}/fulcioCAData"), json!(key())),
        &[
            &format!("{P}.fulcioCAData: Invalid value: \"string\": the fulcioCAData must start with base64 encoding of '-----BEGIN CERTIFICATE-----'."),
            &format!("{P}.fulcioCAData: Invalid value: \"string\": the fulcioCAData must end with base64 encoding of '-----END CERTIFICATE-----'."),
        ],
    );
    assert_denied(
        with(f.clone(), &format!("{J}/rekorKeyData"), json!("~")),
        &[&format!("{P}.rekorKeyData: Required value"), NIL],
    );
    assert_denied(
        with(f.clone(), &format!("{J}/fulcioSubject"), json!("~")),
        &[&format!("{P}.fulcioSubject: Required value"), NIL],
    );
    assert_denied(
        with(f.clone(), &format!("{J}/fulcioSubject/oidcIssuer"), json!("../relative-path")),
        &[&format!("{P}.fulcioSubject.oidcIssuer: Invalid value: \"string\": oidcIssuer must be a valid URL")],
    );
    assert_denied(
        with(
            f.clone(),
            &format!("{J}/fulcioSubject/oidcIssuer"),
            json!(format!("https://e.com/{}", "a".repeat(2040))),
        ),
        &[
            &format!("{P}.fulcioSubject.oidcIssuer: Too long: may not be more than 2048 bytes"),
            NIL,
        ],
    );
    assert_denied(
        with(
            f.clone(),
            &format!("{J}/fulcioSubject/signedEmail"),
            json!("dev at example.com"),
        ),
        &[&format!(
            "{P}.fulcioSubject.signedEmail: Invalid value: \"string\": invalid email address"
        )],
    );
    let bogus_cert = b64("-----BEGIN CERTIFICATE-----\nMIIBATA=\n-----END CERTIFICATE-----");
    assert_denied(
        with(f, &format!("{J}/fulcioCAData"), json!(bogus_cert)),
        &[&format!(
            "{P}.fulcioCAData: does not decode to PEM certificates: certificate 1 is not DER X.509"
        )],
    );
}

#[test]
fn pki_rules() {
    let p = pki_policy();
    const P: &str = "spec.policy.rootOfTrust.pki";
    const J: &str = "/spec/policy/rootOfTrust/pki";
    let pem = include_str!("../fixtures/keys/ca.crt");
    let unbalanced = b64(format!("{pem}-----BEGIN CERTIFICATE-----\n{pem}"));
    assert_denied(
        with(p.clone(), &format!("{J}/caRootsData"), json!(unbalanced)),
        &[&format!("{P}.caRootsData: Invalid value: \"string\": caRootsData must be base64 encoding of valid PEM format data contain the same number of '-----BEGIN CERTIFICATE-----' and '-----END CERTIFICATE-----' markers.")],
    );
    assert_denied(
        with(p.clone(), &format!("{J}/caIntermediatesData"), json!(b64("-----BEGIN CERTIFICATE-----"))),
        &[
            &format!("{P}.caIntermediatesData: Invalid value: \"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\": {P}.caIntermediatesData in body should be at least 72 chars long"),
            &format!("{P}.caIntermediatesData: Invalid value: \"string\": the caIntermediatesData must end with base64 encoding of '-----END CERTIFICATE-----'."),
            &format!("{P}.caIntermediatesData: Invalid value: \"string\": caIntermediatesData must be base64 encoding of valid PEM format data contain the same number of '-----BEGIN CERTIFICATE-----' and '-----END CERTIFICATE-----' markers."),
        ],
    );
    assert_denied(
        with(p.clone(), &format!("{J}/pkiCertificateSubject"), json!({})),
        &[&format!("{P}.pkiCertificateSubject: Invalid value: \"object\": at least one of email or hostname must be set in pkiCertificateSubject")],
    );
    assert_denied(
        with(p.clone(), &format!("{J}/pkiCertificateSubject/hostname"), json!("*.*.example.com")),
        &[&format!("{P}.pkiCertificateSubject.hostname: Invalid value: \"string\": hostname must be a valid dns 1123 subdomain name, optionally prefixed by '*.'. It must consist only of lowercase alphanumeric characters, hyphens, periods and the optional preceding asterisk.")],
    );
    assert_denied(
        with(
            p.clone(),
            &format!("{J}/pkiCertificateSubject/email"),
            json!("nobody"),
        ),
        &[&format!(
            "{P}.pkiCertificateSubject.email: Invalid value: \"string\": invalid email address"
        )],
    );
    let mut alpha = with(
        p,
        &format!("{J}/pkiCertificateSubject/email"),
        json!("nobody"),
    );
    alpha["apiVersion"] = json!("config.openshift.io/v1alpha1");
    assert_denied(
        alpha,
        &[&format!("{P}.pkiCertificateSubject.email: Invalid value: \"string\": invalid email address in pkiCertificateSubject")],
    );
}

#[test]
fn signed_identity_rules() {
    let p = public_key_policy("v1");
    const S: &str = "spec.policy.signedIdentity";
    let si = |v: Value| with(p.clone(), "/spec/policy/signedIdentity", v);
    assert_denied(
        si(json!({})),
        &[&format!("{S}.matchPolicy: Required value"), NIL],
    );
    assert_denied(
        si(json!({"matchPolicy": "Exact"})),
        &[&format!("{S}.matchPolicy: Unsupported value: \"Exact\": supported values: \"MatchRepoDigestOrExact\", \"MatchRepository\", \"ExactRepository\", \"RemapIdentity\""), NIL],
    );
    assert_denied(
        si(json!({"matchPolicy": "ExactRepository"})),
        &[&format!("{S}: Invalid value: \"object\": exactRepository is required when matchPolicy is ExactRepository, and forbidden otherwise")],
    );
    assert_denied(
        si(json!({"matchPolicy": "MatchRepository", "remapIdentity": {"prefix": "a.io", "signedPrefix": "b.io"}})),
        &[&format!("{S}: Invalid value: \"object\": remapIdentity is required when matchPolicy is RemapIdentity, and forbidden otherwise")],
    );
    assert_denied(
        si(json!({"matchPolicy": "ExactRepository", "exactRepository": {"repository": "example.com/app:v1"}})),
        &[
            &format!("{S}.exactRepository.repository: Invalid value: \"string\": invalid repository or prefix in the signedIdentity, should not include the tag or digest"),
            &format!("{S}.exactRepository.repository: Invalid value: \"string\": invalid repository or prefix in the signedIdentity. The repository or prefix must starts with 'localhost' or a valid '.' separated domain. If contains registry paths, the path component names must start with at least one letter or number, with following parts able to be separated by one period, one or two underscore and multiple dashes."),
        ],
    );
    assert_denied(
        si(
            json!({"matchPolicy": "RemapIdentity", "remapIdentity": {"prefix": "mirror.example.com/ns"}}),
        ),
        &[
            &format!("{S}.remapIdentity.signedPrefix: Required value"),
            NIL,
        ],
    );
    let mut alpha = si(
        json!({"matchPolicy": "RemapIdentity", "remapIdentity": {"prefix": "mirror", "signedPrefix": "example.com"}}),
    );
    alpha["apiVersion"] = json!("config.openshift.io/v1alpha1");
    assert_denied(alpha.clone(), &[&format!("{S}.remapIdentity.prefix: Invalid value: \"string\": invalid repository or prefix in the signedIdentity")]);
    // v1alpha1: an empty matchPolicy means the default.
    alpha["spec"]["policy"]["signedIdentity"] = json!({"matchPolicy": ""});
    assert!(check(&alpha).allowed());
}

#[test]
fn v1alpha1_keeps_the_seed_example_with_a_warning() {
    let seed = paths::load(&["examples/p0.yaml"]).policies.remove(0);
    let r = validate::validate(&seed, &Context::new(&ClusterFacts::default()));
    assert!(r.allowed(), "{:?}", r.denial_message());
    assert_eq!(
        r.warning_messages(),
        ["spec.policy.rootOfTrust.publicKey.keyData: does not decode to a PEM public key: no PEM block found"]
    );
    // The same key on v1 is denied by the CRD's own rules.
    let mut v1 = public_key_policy("v1");
    v1["spec"]["policy"]["rootOfTrust"]["publicKey"]["keyData"] = json!("Zm9vIGJhcg==");
    assert_eq!(check(&v1).errors.len(), 3);
}

#[test]
fn object_level_rules() {
    let p = public_key_policy("v1");
    assert_denied(
        with(p.clone(), "/apiVersion", json!("config.openshift.io/v2")),
        &["apiVersion: Unsupported value: \"config.openshift.io/v2\": supported values: \"config.openshift.io/v1\", \"config.openshift.io/v1alpha1\""],
    );
    assert_denied(
        with(p.clone(), "/metadata/name", json!("~")),
        &["metadata.name: Required value", NIL],
    );
    assert_denied(
        with(p.clone(), "/spec/scopes", json!("example.com")),
        &["spec.scopes: Invalid value: invalid type: string \"example.com\", expected a sequence"],
    );
    let r = check(&with(
        p.clone(),
        "/spec/policy/rootOfTrust/publicKey/keyDatas",
        json!([]),
    ));
    assert_eq!(
        r.warning_messages(),
        ["spec.policy.rootOfTrust.publicKey.keyDatas: unknown field, the API server drops it"]
    );
    // Names reserved for the platform are the admission request's business (who asks),
    // not the object's: see the webhook and `check` tests.
    let r = check(&with(p.clone(), "/metadata/name", json!("openshift-mine")));
    assert_eq!(r, Report::default());
    // Several problems come back at once, aggregated as the API server does.
    let two = with(
        p.clone(),
        "/spec/scopes",
        json!(["*.x.io/a", "quay.io/Upper"]),
    );
    let message = check(&two).denial_message().unwrap();
    assert!(
        message.starts_with("[spec.scopes[0]: ")
            && message.contains(
                ", spec.scopes[1]: Invalid value: \"string\": invalid repository namespace"
            )
            && message.ends_with(']'),
        "{message}"
    );
    // A required field missing keeps the CEL rules from running, as in the API server:
    // the wildcard scope's rule is not reported, the note that rules were skipped is.
    let blocked = with(
        with(p, "/spec/scopes/0", json!("*.x.io/a")),
        "/spec/policy/signedIdentity",
        json!({}),
    );
    assert_eq!(
        check(&blocked).denial_message().unwrap(),
        format!("[spec.policy.signedIdentity.matchPolicy: Required value, {NIL}]")
    );
}

fn cluster(image_lists: (&[&str], &[&str])) -> ClusterFacts {
    let mut image = Image::default();
    image.spec.registry_sources.allowed_registries =
        image_lists.0.iter().map(|s| s.to_string()).collect();
    image.spec.registry_sources.blocked_registries =
        image_lists.1.iter().map(|s| s.to_string()).collect();
    let mut cv = ClusterVersion::default();
    cv.status.desired = Some(Release {
        image: "registry.build05.ci.openshift.org/ci-ln/release@sha256:0123".into(),
        version: "4.20.0".into(),
    });
    let extras: Vec<String> = cip_core::cluster::DEFAULT_EXTRA_PAYLOAD_REPOS
        .map(String::from)
        .to_vec();
    ClusterFacts::new(Some(&image), Some(&cv), &extras).unwrap()
}

#[test]
fn cluster_context_rules() {
    let p = public_key_policy("v1");
    let blocked = cluster((&[], &["example.com/global"]));
    let r = run(&p, &blocked, None, false);
    assert_eq!(r.denial_message().unwrap(), "clusterimagePolicy configured for the scope example.com/global is nested inside blockedRegistries");
    assert_eq!(r.reason(), Some(Reason::ConflictScopes));
    let allowed = cluster((&["quay.io"], &[]));
    assert_eq!(
        run(&p, &allowed, None, false).denial_message().unwrap(),
        "clusterimagePolicy configured for the scope example.com/global is not nested inside allowedRegistries"
    );

    let facts = cluster((&[], &[]));
    let payload = with(
        p.clone(),
        "/spec/scopes/0",
        json!("registry.build05.ci.openshift.org"),
    );
    let expected = "clusterimagePolicy configured for the scope registry.build05.ci.openshift.org covers the OpenShift release payload repository registry.build05.ci.openshift.org/ci-ln/release, whose signatures the platform verifies";
    let r = run(&payload, &facts, None, false);
    assert_eq!(r.denial_message().unwrap(), expected);
    assert_eq!(r.reason(), Some(Reason::PayloadRepository));
    // The platform's own service account may: a warning instead.
    let r = run(&payload, &facts, None, true);
    assert!(r.allowed());
    assert_eq!(r.warning_messages(), [expected]);
    let inside = with(
        p.clone(),
        "/spec/scopes/0",
        json!("quay.io/openshift-release-dev/ocp-v4.0-art-dev:4.20"),
    );
    assert!(run(&inside, &facts, None, false).denial_message().unwrap().contains(" is inside the OpenShift release payload repository quay.io/openshift-release-dev/ocp-v4.0-art-dev,"));

    let size = SizeCheck {
        machine_config: "99-worker-generated-registries".into(),
        current_bytes: 1_000_000,
        budget_bytes: 1_048_576,
        namespaces: Default::default(),
        new_namespace_bytes: 0,
        held_back: None,
    };
    let big: Vec<String> = (0..200).map(|i| format!("r{i}.example.com")).collect();
    let r = run(
        &with(p.clone(), "/spec/scopes", json!(big)),
        &facts,
        Some(&size),
        false,
    );
    let message = r.denial_message().unwrap();
    assert!(message.starts_with("spec: adding this policy would grow MachineConfig 99-worker-generated-registries to about "), "{message}");
    assert!(
        message.ends_with("over the budget of 1048576 bytes"),
        "{message}"
    );
    assert_eq!(r.reason(), Some(Reason::TooLarge));
    assert!(run(&p, &facts, Some(&size), false).allowed());
}

#[test]
fn image_guard_names_the_conflicting_policies() {
    let policies = paths::load(&["examples/p0.yaml", "examples/signed-apps.yaml"]).policies;
    let mut image = Image::default();
    image.spec.registry_sources.blocked_registries = vec!["example.com".to_string()].into();
    let r = validate::validate_image_update(
        ClusterFacts::new(Some(&image), None, &[]),
        policies.iter().map(|p| &**p),
        false,
    );
    assert_eq!(
        r.denial_message().unwrap(),
        "clusterimagePolicy configured for the scope example.com/global is nested inside blockedRegistries (ClusterImagePolicy p0)"
    );
    image.spec.registry_sources.blocked_registries = vec!["other.example.com".to_string()].into();
    assert!(validate::validate_image_update(
        ClusterFacts::new(Some(&image), None, &[]),
        policies.iter().map(|p| &**p),
        false,
    )
    .allowed());
}
