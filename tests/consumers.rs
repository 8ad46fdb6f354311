//! Real consumers of the rendered files: containers/image (Debian's skopeo) pulling from
//! a loopback registry under the rendered policy.json and registries.d, and Ignition's
//! `ignition-validate` on every rendered config. Both tools are installed by
//! scripts/test.sh; a missing tool fails the test.

mod common;

use std::net::TcpListener;
use std::path::Path;
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

fn skopeo(policy: &Path, registries_d: &Path, image: &str, dest: &Path) -> (bool, String) {
    let out = Command::new("skopeo")
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
    let port = free_port();
    let registry = format!("127.0.0.1:{port}");
    let key = common::root().join("tests/fixtures/keys/cosign.key");
    let _registry = Registry {
        pid_file: work.path().join("registry.pid"),
    };
    let setup = Command::new(common::root().join("tests/e2e/registry.sh"))
        .arg(port.to_string())
        .arg(work.path())
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "registry setup failed:\n{}\n{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );

    let key_data =
        base64::engine::general_purpose::STANDARD.encode(include_str!("fixtures/keys/cosign.pub"));
    let cip: ClusterImagePolicy = serde_json::from_value(json!({
        "apiVersion": "config.openshift.io/v1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "loopback"},
        "spec": {
            "scopes": [format!("{registry}/signed"), format!("{registry}/unsigned")],
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": key_data}}}
        }
    }))
    .unwrap();
    let mut image = Image::default();
    image.metadata.name = "cluster".into();
    image.spec.registry_sources.blocked_registries = vec![format!("{registry}/blocked")];
    let inputs = Inputs {
        policies: vec![cip],
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
    let registries_d = work.path().join("registries.d");
    std::fs::create_dir(&registries_d).unwrap();
    std::fs::write(
        registries_d.join("sigstore-registries.yaml"),
        worker.sigstore_yaml.as_deref().unwrap(),
    )
    .unwrap();

    let dest = |n: &str| {
        let d = work.path().join(format!("out-{n}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    };
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
