//! Real consumers of the rendered files: containers/image (Debian's skopeo) pulling from
//! a loopback registry under the rendered policy.json and registries.d, and Ignition's
//! `ignition-validate` on every rendered config. Both tools are installed by
//! scripts/test.sh; a missing tool fails the test.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::json;

use cip_webhook::model::{ClusterImagePolicy, Image};
use cip_webhook::render::{self, Inputs, RenderOptions};

/// Stops the registry when the test ends, however it ends.
struct Registry {
    pid_file: std::path::PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the loopback registry of tests/e2e/registry.sh: its guard, its address and the
/// digest of the signed image.
fn loopback_registry(work: &Path) -> (Registry, String, String) {
    let port = free_port();
    let registry = format!("127.0.0.1:{port}");
    let key = common::root().join("tests/fixtures/keys/cosign.key");
    let guard = Registry {
        pid_file: work.join("registry.pid"),
    };
    let setup = Command::new(common::root().join("tests/e2e/registry.sh"))
        .arg(port.to_string())
        .arg(work)
        .arg(&key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&setup.stdout).into_owned();
    assert!(
        setup.status.success(),
        "registry setup failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let digest = stdout
        .split("signed digest ")
        .nth(1)
        .map(|d| d.trim().to_string())
        .expect("registry.sh prints the signed digest");
    (guard, registry, digest)
}

/// A registries.d directory holding this sigstore-registries.yaml.
fn registries_d(work: &Path, name: &str, yaml: &str) -> PathBuf {
    let dir = work.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("sigstore-registries.yaml"), yaml).unwrap();
    dir
}

/// A fresh directory for skopeo to copy into.
fn out_dir(work: &Path, name: &str) -> PathBuf {
    let dir = work.join(format!("out-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn key_data() -> String {
    base64::engine::general_purpose::STANDARD.encode(include_str!("fixtures/keys/cosign.pub"))
}

fn policy_object(
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    scopes: &[String],
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
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": key_data()}}}
        }
    }))
    .unwrap()
}

fn skopeo(policy: &Path, registries_d: &Path, image: &str, dest: &Path) -> (bool, String) {
    skopeo_with(policy, registries_d, None, image, dest)
}

/// `registries_conf`: containers-registries.conf(5) for the pull (mirrors), given as the
/// user's own file: Debian's containers/image 5.23 reads `$HOME/.config/containers/
/// registries.conf` before the system one (it has no environment override).
fn skopeo_with(
    policy: &Path,
    registries_d: &Path,
    registries_conf: Option<&Path>,
    image: &str,
    dest: &Path,
) -> (bool, String) {
    let mut command = Command::new("skopeo");
    if let Some(conf) = registries_conf {
        let home = conf.parent().unwrap().join("home");
        let dir = home.join(".config/containers");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(conf, dir.join("registries.conf")).unwrap();
        command.env("HOME", &home);
    }
    let out = command
        .arg("--policy")
        .arg(policy)
        .arg("--registries.d")
        .arg(registries_d)
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{image}"),
        ])
        .arg(format!("dir:{}", dest.display()))
        .output()
        .expect("skopeo is installed (scripts/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn skopeo_enforces_the_rendered_policy() {
    let work = tempfile::tempdir().unwrap();
    let (_registry, registry, _) = loopback_registry(work.path());

    let cip = policy_object(
        "ClusterImagePolicy",
        None,
        "loopback",
        &[format!("{registry}/signed"), format!("{registry}/unsigned")],
    );
    let mut image = Image::default();
    image.metadata.name = "cluster".into();
    image.spec.registry_sources.blocked_registries = vec![format!("{registry}/blocked")];
    let inputs = Inputs {
        policies: vec![cip.into()],
        image: Some(image),
        ..Default::default()
    };
    let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
    assert!(
        matches!(
            plan.policies[0].condition,
            render::Condition::Applied { .. }
        ),
        "{:?}",
        plan.policies
    );
    let worker = plan.pools.iter().find(|p| p.pool == "worker").unwrap();
    let policy = work.path().join("policy.json");
    std::fs::write(&policy, worker.policy_json.as_deref().unwrap()).unwrap();
    let registries_d = registries_d(
        work.path(),
        "registries.d",
        worker.sigstore_yaml.as_deref().unwrap(),
    );

    let dest = |n: &str| out_dir(work.path(), n);
    let (ok, err) = skopeo(
        &policy,
        &registries_d,
        &format!("{registry}/unsigned/app:v1"),
        &dest("unsigned"),
    );
    assert!(
        !ok && err.contains("A signature was required, but no signature exists"),
        "unsigned: {err}"
    );
    // The attachment was found through registries.d and handed to verification, which
    // Debian's build disables: proof the policy parsed and the scope matched.
    let (ok, err) = skopeo(
        &policy,
        &registries_d,
        &format!("{registry}/signed/app:v1"),
        &dest("signed"),
    );
    assert!(
        !ok && err.contains("Debian-local change: sigstore disabled"),
        "signed: {err}"
    );
    let (ok, err) = skopeo(
        &policy,
        &registries_d,
        &format!("{registry}/blocked/app:v1"),
        &dest("blocked"),
    );
    assert!(
        !ok && err.contains("is rejected by policy"),
        "blocked: {err}"
    );
    let (ok, err) = skopeo(
        &policy,
        &registries_d,
        &format!("{registry}/free/app:v1"),
        &dest("free"),
    );
    assert!(ok, "free: {err}");
    // Without our registries.d file the signed image looks unsigned: the file matters.
    let empty = work.path().join("empty.d");
    std::fs::create_dir(&empty).unwrap();
    let (ok, err) = skopeo(
        &policy,
        &empty,
        &format!("{registry}/signed/app:v1"),
        &dest("signed-2"),
    );
    assert!(
        !ok && err.contains("A signature was required, but no signature exists"),
        "no registries.d: {err}"
    );
}

/// CRI-O uses `/etc/crio/policies/<namespace>.json` for a pod in that namespace: the team's
/// file requires a signature for its own scope, keeps the cluster's scopes, and does not
/// touch what the rest of the cluster pulls.
#[test]
fn skopeo_enforces_a_namespace_policy_file() {
    let work = tempfile::tempdir().unwrap();
    let (_registry, registry, _) = loopback_registry(work.path());
    let cluster = policy_object(
        "ClusterImagePolicy",
        None,
        "cluster",
        &[format!("{registry}/unsigned")],
    );
    let team = policy_object(
        "ImagePolicy",
        Some("team-a"),
        "team",
        &[
            format!("{registry}/signed"),
            format!("{registry}/unsigned/app"),
        ],
    );
    let inputs = Inputs {
        policies: vec![cluster.into()],
        image_policies: vec![team.into()],
        ..Default::default()
    };
    let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
    let render::Condition::Overridden { overridden, .. } = &plan.image_policies[0].condition else {
        panic!("{:?}", plan.image_policies);
    };
    assert_eq!(overridden, &[format!("{registry}/unsigned/app")]);
    let worker = plan.pools.iter().find(|p| p.pool == "worker").unwrap();
    let (namespace, team_json) = &worker.namespace_policies[0];
    assert_eq!(namespace, "team-a");
    let team_policy = work.path().join("team-a.json");
    std::fs::write(&team_policy, team_json.as_str()).unwrap();
    let cluster_policy = work.path().join("policy.json");
    std::fs::write(&cluster_policy, worker.policy_json.as_deref().unwrap()).unwrap();
    let registries_d = registries_d(
        work.path(),
        "registries.d",
        worker.sigstore_yaml.as_deref().unwrap(),
    );
    let dest = |n: &str| out_dir(work.path(), n);
    let image = |repo: &str| format!("{registry}/{repo}/app:v1");

    // The team's scope: a signature is required and its attachment found.
    let (ok, err) = skopeo(&team_policy, &registries_d, &image("signed"), &dest("a"));
    assert!(
        !ok && err.contains("Debian-local change: sigstore disabled"),
        "team signed: {err}"
    );
    // The cluster's scope holds in the team's file too.
    let (ok, err) = skopeo(&team_policy, &registries_d, &image("unsigned"), &dest("b"));
    assert!(
        !ok && err.contains("A signature was required, but no signature exists"),
        "team unsigned: {err}"
    );
    let (ok, err) = skopeo(&team_policy, &registries_d, &image("free"), &dest("c"));
    assert!(ok, "team free: {err}");
    // Elsewhere in the cluster the team's scope does not apply.
    let (ok, err) = skopeo(&cluster_policy, &registries_d, &image("signed"), &dest("d"));
    assert!(ok, "cluster signed: {err}");
}

/// Pulled through a mirror, containers/image looks for the signature at the mirror, under
/// the mirror's registries.d entry (OCPBUGS-36344): the expanded file finds it, a file
/// with the policy scope alone does not.
#[test]
fn skopeo_finds_signatures_through_a_mirror() {
    let work = tempfile::tempdir().unwrap();
    let (_registry, registry, digest) = loopback_registry(work.path());
    // The source is on loopback too, and closed: only the mirror can serve the pull.
    let source = "127.0.0.1:1/signed";
    let mirror = format!("{registry}/mirror/signed");
    let mut idms = cip_webhook::model::ImageDigestMirrorSet::default();
    idms.spec.image_digest_mirrors = vec![cip_webhook::model::MirrorRule {
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
        )
        .into()],
        digest_mirror_sets: vec![idms],
        ..Default::default()
    };
    let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
    assert_eq!(plan.mirror_scopes, std::slice::from_ref(&mirror));
    let worker = plan.pools.iter().find(|p| p.pool == "worker").unwrap();
    let policy = work.path().join("policy.json");
    std::fs::write(&policy, worker.policy_json.as_deref().unwrap()).unwrap();
    // The registries.conf the MCO generates from that IDMS.
    let conf = work.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"{source}\"\nmirror-by-digest-only = true\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"),
    )
    .unwrap();
    let expanded = registries_d(
        work.path(),
        "expanded.d",
        worker.sigstore_yaml.as_deref().unwrap(),
    );
    let scope_only = registries_d(
        work.path(),
        "scope-only.d",
        &cip_webhook::registries_d::sigstore_registries_yaml([source]),
    );
    let image = format!("{source}/app@{digest}");
    let dest = |n: &str| out_dir(work.path(), n);
    let (ok, err) = skopeo_with(&policy, &expanded, Some(&conf), &image, &dest("expanded"));
    assert!(
        !ok && err.contains("Debian-local change: sigstore disabled"),
        "expanded: {err}"
    );
    let (ok, err) = skopeo_with(&policy, &scope_only, Some(&conf), &image, &dest("scope"));
    assert!(
        !ok && err.contains("A signature was required, but no signature exists"),
        "scope only: {err}"
    );
}

/// Both layouts: the seed's (examples/) and beside the MCO (tests/fixtures/openshift-cluster).
#[test]
fn every_rendered_ignition_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for input in ["examples", "tests/fixtures/openshift-cluster"] {
        let inputs = common::load(
            &common::yaml_files(input)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
        checked += validate_all(&plan, dir.path());
    }
    assert_eq!(checked, 8);
    // The validator does catch a bad config, so a pass means something.
    let bad = dir.path().join("bad.ign");
    std::fs::write(
        &bad,
        r#"{"ignition":{"version":"3.2.0"},"storage":{"files":[{"path":"relative","mode":420}]}}"#,
    )
    .unwrap();
    assert!(!Command::new("ignition-validate")
        .arg(&bad)
        .status()
        .unwrap()
        .success());
}

/// Runs `ignition-validate` on every desired MachineConfig; returns how many.
fn validate_all(plan: &render::Plan, dir: &std::path::Path) -> usize {
    let mut checked = 0;
    for mc in plan.desired_machine_configs() {
        let path = dir.join(format!("{}.ign", mc.metadata.name));
        std::fs::write(&path, serde_json::to_vec(&mc.spec.config).unwrap()).unwrap();
        let out = Command::new("ignition-validate")
            .arg(&path)
            .output()
            .expect("ignition-validate is installed (scripts/test.sh installs it)");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !report.contains("warning") && !report.contains("error"),
            "{}: {report}",
            mc.metadata.name
        );
        checked += 1;
    }
    checked
}
