//! Ignition's own validator on every rendered config, both layouts: the seed's
//! (examples/) and beside the MCO (tests/fixtures/openshift-cluster).

use std::process::Command;

use cip_core::render::{self, RenderOptions};
use testkit::paths;

#[test]
fn every_rendered_ignition_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for input in ["examples", "tests/fixtures/openshift-cluster"] {
        let inputs = paths::load(
            &paths::yaml_files(input)
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
