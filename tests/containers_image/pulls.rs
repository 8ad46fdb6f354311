//! The rendered MachineConfigs as a node gets them (merged in name order, decoded to
//! files), and current containers/image pulling from a loopback registry under them as
//! CRI-O does: images signed by containers/image's own sigstore signer or by hand with
//! openssl are accepted or refused exactly as the policies say, through mirrors and with
//! namespace policy files.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use cip_core::model::{ClusterImagePolicy, Image, ImageDigestMirrorSet, MirrorRule};
use cip_core::render::{self, Condition, Inputs, Plan, RenderOptions};
use testkit::mco::node_view;
use testkit::paths::{b64, cosign_pub};
use testkit::registry::{openssl_key, Node, Registry, SigningKey};

fn policy_object(
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    scopes: &[String],
    key_pem: &str,
) -> ClusterImagePolicy {
    let mut metadata = json!({"name": name});
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    serde_json::from_value(json!({
        "apiVersion": "config.openshift.io/v1",
        "kind": kind,
        "metadata": metadata,
        "spec": {
            "scopes": scopes,
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": b64(key_pem)}}}
        }
    }))
    .unwrap()
}

/// What the worker pool's nodes get from the plan: every desired MachineConfig merged as
/// the MCO's render controller merges them, plus the registries.conf the MCO would write
/// (its own MachineConfig, not ours).
fn worker_files(plan: &Plan, registries_conf: &str) -> BTreeMap<String, String> {
    let mcs: Vec<Value> = plan
        .desired_machine_configs()
        .map(|mc| serde_json::to_value(mc).unwrap())
        .collect();
    let mut files = node_view(&mcs, "worker");
    files.insert(
        "/etc/containers/registries.conf".into(),
        registries_conf.into(),
    );
    files
}

/// registries.conf as the MCO writes it for `insecureRegistries: [host]`: the test
/// registry speaks plain HTTP.
fn insecure(host: &str) -> String {
    format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n")
}

fn node(dir: &Path, name: &str, files: &BTreeMap<String, String>) -> Node {
    Node::write(&dir.join(name), files)
}

#[test]
fn containers_image_enforces_the_rendered_policy() {
    let registry = Registry::start();
    let host = registry.host.clone();
    let work = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(work.path(), "team");
    let other = SigningKey::generate(work.path(), "other");
    let layout = registry.oci_layout("app", "amd64");
    registry.push(&layout, "signed/app:v1", Some(&key), None);
    registry.push(&layout, "unsigned/app:v1", None, None);
    registry.push(&layout, "blocked/app:v1", None, None);
    registry.push(&layout, "free/app:v1", None, None);
    registry.push(&layout, "otherkey/app:v1", Some(&other), None);
    registry.push(
        &layout,
        "identity/app:v1",
        Some(&key),
        Some(&format!("{host}/elsewhere/app:v1")),
    );
    // An attachment written by hand as cosign writes one, signed with openssl.
    let digest = registry.push(&layout, "openssl/app:v1", None, None);
    registry.attach_openssl_signature(
        "openssl/app",
        &digest,
        &format!("{host}/openssl/app:v1"),
        &openssl_key(),
    );

    let scopes = |repos: &[&str]| {
        repos
            .iter()
            .map(|r| format!("{host}/{r}"))
            .collect::<Vec<_>>()
    };
    let mut image = Image::default();
    image.metadata.name = "cluster".into();
    image.spec.registry_sources.blocked_registries = vec![format!("{host}/blocked")].into();
    let inputs = Inputs {
        policies: vec![
            policy_object(
                "ClusterImagePolicy",
                None,
                "team",
                &scopes(&["signed", "unsigned", "otherkey", "identity"]),
                &key.public_pem,
            )
            .into(),
            policy_object(
                "ClusterImagePolicy",
                None,
                "openssl",
                &scopes(&["openssl"]),
                &cosign_pub(),
            )
            .into(),
        ],
        image: Some(image),
        ..Default::default()
    };
    let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
    assert!(
        plan.policies
            .iter()
            .all(|p| matches!(p.condition, Condition::Applied { .. })),
        "{:?}",
        plan.policies
    );
    let files = worker_files(&plan, &insecure(&host));
    let worker = node(work.path(), "worker", &files);
    let pull = |repo: &str| worker.pull(None, &format!("{host}/{repo}/app:v1"));

    let d = pull("signed");
    assert!(d.accepted(), "signed by the policy's key: {d:?}");
    let d = pull("openssl");
    assert!(d.accepted(), "an attachment signed with openssl: {d:?}");
    let d = pull("free");
    assert!(d.accepted(), "no policy: {d:?}");
    let d = pull("unsigned");
    assert!(
        d.rejected_with("A signature was required, but no signature exists"),
        "unsigned: {d:?}"
    );
    let d = pull("blocked");
    assert!(d.rejected_with("is rejected by policy"), "blocked: {d:?}");
    let d = pull("otherkey");
    assert!(
        d.rejected_with("cryptographic signature verification failed"),
        "another key: {d:?}"
    );
    let d = pull("identity");
    assert!(
        d.rejected_with("is not accepted"),
        "signed for another repository: {d:?}"
    );

    // Without our registries.d file the signed image looks unsigned: the file matters.
    let mut without = files.clone();
    without.remove("/etc/containers/registries.d/sigstore-registries.yaml");
    let bare = node(work.path(), "without-registries-d", &without);
    let d = bare.pull(None, &format!("{host}/signed/app:v1"));
    assert!(
        d.rejected_with("A signature was required, but no signature exists"),
        "no registries.d: {d:?}"
    );
}

/// CRI-O uses `/etc/crio/policies/<namespace>.json` for a pod in that namespace: the team's
/// file requires a signature for its own scope, keeps the cluster's scopes, and does not
/// touch what the rest of the cluster pulls.
#[test]
fn containers_image_enforces_a_namespace_policy_file() {
    let registry = Registry::start();
    let host = registry.host.clone();
    let work = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(work.path(), "team");
    let layout = registry.oci_layout("app", "amd64");
    registry.push(&layout, "signed/app:v1", Some(&key), None);
    registry.push(&layout, "unsigned/app:v1", None, None);
    registry.push(&layout, "free/app:v1", None, None);
    let cluster = policy_object(
        "ClusterImagePolicy",
        None,
        "cluster",
        &[format!("{host}/unsigned")],
        &key.public_pem,
    );
    let team = policy_object(
        "ImagePolicy",
        Some("team-a"),
        "team",
        &[format!("{host}/signed"), format!("{host}/unsigned/app")],
        &key.public_pem,
    );
    let inputs = Inputs {
        policies: vec![cluster.into()],
        image_policies: vec![team.into()],
        ..Default::default()
    };
    let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
    let Condition::Overridden { overridden, .. } = &plan.image_policies[0].condition else {
        panic!("{:?}", plan.image_policies);
    };
    assert_eq!(overridden, &[format!("{host}/unsigned/app")]);
    let files = worker_files(&plan, &insecure(&host));
    assert!(
        files.contains_key("/etc/crio/policies/team-a.json"),
        "{:?}",
        files.keys()
    );
    let worker = node(work.path(), "worker", &files);
    let image = |repo: &str| format!("{host}/{repo}/app:v1");

    // The team's scope: a signature is required, and it verifies.
    assert!(worker.pull(Some("team-a"), &image("signed")).accepted());
    // The cluster's scope holds in the team's file too.
    let d = worker.pull(Some("team-a"), &image("unsigned"));
    assert!(
        d.rejected_with("A signature was required, but no signature exists"),
        "team unsigned: {d:?}"
    );
    assert!(worker.pull(Some("team-a"), &image("free")).accepted());
    // Elsewhere in the cluster the team's scope does not apply: unsigned images of it pull.
    registry.push(&layout, "signed/unsigned-too:v1", None, None);
    let d = worker.pull(Some("team-a"), &format!("{host}/signed/unsigned-too:v1"));
    assert!(
        d.rejected_with("A signature was required, but no signature exists"),
        "{d:?}"
    );
    let d = worker.pull(Some("team-b"), &format!("{host}/signed/unsigned-too:v1"));
    assert!(d.accepted(), "another namespace: {d:?}");
}

/// Pulled through a mirror, containers/image looks for the signature at the mirror, under
/// the mirror's registries.d entry (OCPBUGS-36344): the expanded file finds it, a file
/// with the policy scope alone does not.
#[test]
fn containers_image_finds_signatures_through_a_mirror() {
    let registry = Registry::start();
    let host = registry.host.clone();
    let work = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(work.path(), "team");
    // The source is on loopback too, and closed: only the mirror can serve the pull. The
    // signature names the source, as the signer of the original image wrote it.
    let source = "127.0.0.1:1/signed";
    let mirror = format!("{host}/mirror/signed");
    let layout = registry.oci_layout("app", "amd64");
    let digest = registry.push(
        &layout,
        "mirror/signed/app:v1",
        Some(&key),
        Some(&format!("{source}/app:v1")),
    );
    let mut idms = ImageDigestMirrorSet::default();
    idms.spec.image_digest_mirrors = vec![MirrorRule {
        source: source.into(),
        mirrors: vec![mirror.clone()],
        mirror_source_policy: None,
    }];
    let inputs = Inputs {
        policies: vec![policy_object(
            "ClusterImagePolicy",
            None,
            "mirrored",
            &[source.to_string()],
            &key.public_pem,
        )
        .into()],
        digest_mirror_sets: vec![idms],
        ..Default::default()
    };
    let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
    assert_eq!(plan.mirror_scopes, std::slice::from_ref(&mirror));
    // The registries.conf the MCO generates from that IDMS.
    let conf = format!(
        "[[registry]]\nlocation = \"{source}\"\nmirror-by-digest-only = true\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
    );
    let files = worker_files(&plan, &conf);
    let expanded = node(work.path(), "expanded", &files);
    let image = format!("{source}/app@{digest}");
    let d = expanded.pull(None, &image);
    assert!(d.accepted(), "expanded: {d:?}");

    let mut scope_only = files.clone();
    scope_only.insert(
        "/etc/containers/registries.d/sigstore-registries.yaml".into(),
        cip_core::registries_d::sigstore_registries_yaml([source]),
    );
    let d = node(work.path(), "scope-only", &scope_only).pull(None, &image);
    assert!(
        d.rejected_with("A signature was required, but no signature exists"),
        "scope only: {d:?}"
    );
}
