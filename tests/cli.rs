//! The command line as a user meets it: exit codes, messages for bad input, JSON
//! reports, and outputs that are left alone when rendering fails.

mod common;

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(common::bin())
        .current_dir(common::root())
        .args(args)
        .output()
        .unwrap()
}

fn render(input: &str, output: &str) -> Output {
    run(&["render", "--input", input, "--output", output])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unusable_input_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "kind: [unclosed").unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = render(dir.path().to_str().unwrap(), out.path().to_str().unwrap());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("broken.yaml: not YAML or JSON"),
        "{}",
        stderr(&o)
    );

    let o = render("/nonexistent", out.path().to_str().unwrap());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("reading /nonexistent"),
        "{}",
        stderr(&o)
    );

    // Both lists set on the Image CR: MCO cannot render that either.
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: config.openshift.io/v1\nkind: Image\nmetadata: {name: cluster}\nspec: {registrySources: {allowedRegistries: [a.io], blockedRegistries: [b.io]}}\n",
    )
    .unwrap();
    let o = render(dir.path().to_str().unwrap(), out.path().to_str().unwrap());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("only one of AllowedRegistries or BlockedRegistries may be specified"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing is written on failure"
    );
}

#[test]
fn render_twice_gives_the_same_files() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    assert!(render("examples", o).status.success());
    let first: Vec<(String, String)> = read_all(out.path());
    assert!(render("examples", o).status.success());
    assert_eq!(read_all(out.path()), first);
    assert_eq!(first.len(), 4);
}

fn read_all(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn json_reports() {
    let out = tempfile::tempdir().unwrap();
    let o = run(&[
        "render",
        "--input",
        "examples",
        "--output",
        out.path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["files"].as_array().unwrap().len(), 4);
    let p0 = report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p0")
        .unwrap();
    assert_eq!(p0["condition"]["type"], "Applied");

    let o = run(&[
        "check",
        "--state",
        "examples",
        "--output",
        "json",
        "examples/rejected/payload-repository.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report[0]["allowed"], false);
    assert_eq!(
        report[0]["problems"]["errors"][0]["reason"],
        "PayloadRepository"
    );
    assert_eq!(report[0]["problems"]["errors"][0]["path"], "spec.scopes[0]");

    let o = run(&[
        "explain",
        "--input",
        "examples",
        "--output=json",
        "quay.io/example-org/tool@sha256:0123456789abcdef0123456789abcdef",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["explanation"]["matched"], "quay.io/example-org");
    assert_eq!(report["policies"], serde_json::json!(["signed-apps"]));
}

#[test]
fn check_exits_0_when_everything_is_admitted_and_guards_the_image() {
    let o = run(&["check", "--state", "examples", "examples/p0.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.yaml");
    std::fs::write(&image, "apiVersion: config.openshift.io/v1\nkind: Image\nmetadata: {name: cluster}\nspec: {registrySources: {allowedRegistries: [quay.io]}}\n").unwrap();
    let o = run(&["check", "--state", "examples", image.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("clusterimagePolicy configured for the scope example.com/global is not nested inside allowedRegistries (ClusterImagePolicy p0)"),
        "{text}"
    );
}

#[test]
fn explain_an_unknown_pool_says_which_exist() {
    let o = run(&[
        "explain", "--input", "examples", "--pool", "infra", "busybox",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no pool \"infra\" in examples: pools are master, worker"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_same_policy_twice_is_unusable_input() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.yaml", "b.yaml"] {
        std::fs::copy(
            common::root().join("examples/p0.yaml"),
            dir.path().join(name),
        )
        .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let o = render(dir.path().to_str().unwrap(), out.path().to_str().unwrap());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("ClusterImagePolicy \"p0\" is given more than once"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn documents_render_does_not_use_are_named_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let typo = std::fs::read_to_string(common::root().join("examples/p0.yaml"))
        .unwrap()
        .replace(
            "config.openshift.io/v1alpha1",
            "config.openshif.io/v1alpha1",
        );
    std::fs::write(dir.path().join("p0.yaml"), typo).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = render(dir.path().to_str().unwrap(), out.path().to_str().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("p0.yaml: ClusterImagePolicy \"p0\": not an input of render"),
        "{text}"
    );
}
