//! The command line as a user meets it: exit codes, messages for bad input, JSON
//! reports, and outputs that are left alone when rendering fails.

use testkit::paths;

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(paths::bin())
        .current_dir(paths::root())
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
        "quay.io/example-org/tool@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["explanation"]["matched"], "quay.io/example-org");
    assert_eq!(
        report["from"],
        serde_json::json!(["ClusterImagePolicy signed-apps"])
    );
    assert_eq!(report["policyJsonFrom"], "99-worker-generated-registries");
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
            paths::root().join("examples/p0.yaml"),
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
    let typo = std::fs::read_to_string(paths::root().join("examples/p0.yaml"))
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

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A v1 policy file on these scopes, with extra YAML lines in `spec.policy`.
fn policy_file(
    dir: &std::path::Path,
    file: &str,
    name: &str,
    scopes: &[&str],
    extra: &str,
) -> String {
    let key = paths::b64(include_str!("../fixtures/keys/cosign.pub"));
    let scopes: String = scopes.iter().map(|s| format!("\n    - {s:?}")).collect();
    let text = format!(
        "apiVersion: config.openshift.io/v1\nkind: ClusterImagePolicy\nmetadata:\n  name: {name}\nspec:\n  scopes:{scopes}\n  policy:\n    rootOfTrust:\n      policyType: PublicKey\n      publicKey:\n        keyData: {key}\n{extra}"
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn check_answers_as_the_webhook_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The mutating default is applied first: a v1 `signedIdentity: {}` is admitted.
    let empty_identity = policy_file(
        d,
        "si.yaml",
        "si",
        &["example.org/a"],
        "    signedIdentity: {}\n",
    );
    let o = run(&[
        "check",
        "--state",
        "examples",
        &empty_identity,
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report[0]["operation"], "CREATE");
    assert_eq!(
        report[0]["patch"][0]["path"],
        "/spec/policy/signedIdentity/matchPolicy"
    );

    // Nothing to check is an error unless allowed.
    let empty = d.join("empty.yaml");
    std::fs::write(&empty, "# nothing\n").unwrap();
    let o = run(&["check", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("empty.yaml: no object in it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        run(&["check", "--allow-empty", empty.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    let cm = d.join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    )
    .unwrap();
    let o = run(&["check", cm.to_str().unwrap(), &empty_identity]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "v1 ConfigMap \"c\": not a ClusterImagePolicy, an ImagePolicy or the Image cluster"
        ),
        "{}",
        stderr(&o)
    );

    // Warnings fail only with --strict.
    assert_eq!(run(&["check", "examples/p0.yaml"]).status.code(), Some(0));
    assert_eq!(
        run(&["check", "--strict", "examples/p0.yaml"])
            .status
            .code(),
        Some(1)
    );

    // An update is judged by what it changes: a label-only update of a policy that
    // already conflicts with the blocked registry is admitted, naming the problem...
    let old = policy_file(d, "old.yaml", "app", &["blocked.example.com/app"], "");
    let labelled = policy_file(d, "new.yaml", "app", &["blocked.example.com/app"], "");
    let text = std::fs::read_to_string(&labelled)
        .unwrap()
        .replace("name: app", "name: app\n  labels: {team: a}");
    std::fs::write(&labelled, text).unwrap();
    let o = run(&["check", "--state", "examples", "--old", &old, &labelled]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("(already so before this update, so not denied)"),
        "{}",
        stdout(&o)
    );
    // ...as it is when the old version is the one in --state.
    let state = tempfile::tempdir().unwrap();
    for f in ["image.yaml", "clusterversion.yaml"] {
        std::fs::copy(paths::root().join("examples").join(f), state.path().join(f)).unwrap();
    }
    std::fs::copy(&old, state.path().join("app.yaml")).unwrap();
    let o = run(&[
        "check",
        "--state",
        state.path().to_str().unwrap(),
        &labelled,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // A new conflict is denied.
    let worse = policy_file(
        d,
        "worse.yaml",
        "app",
        &["blocked.example.com/app", "blocked.example.com/b"],
        "",
    );
    let o = run(&["check", "--state", "examples", "--old", &old, &worse]);
    assert_eq!(o.status.code(), Some(1));

    // Several problems: one per line.
    let two = policy_file(d, "two.yaml", "two", &["*.x.io/a", "quay.io/Upper"], "");
    let o = run(&["check", &two]);
    assert_eq!(o.status.code(), Some(1));
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(lines[0], format!("ClusterImagePolicy two ({two}): denied"));
    assert!(
        lines[1].starts_with(
            "  spec.scopes[0]: Invalid value: \"string\": invalid image scope with wildcard"
        ),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with(
            "  spec.scopes[1]: Invalid value: \"string\": invalid repository namespace"
        ),
        "{lines:?}"
    );

    // Names reserved for the platform: denied, but not to the cluster-version operator.
    let reserved = policy_file(d, "r.yaml", "openshift-mine", &["example.org/a"], "");
    let o = run(&["check", &reserved]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(
            "denied: metadata.name: Forbidden: \"openshift-mine\" is reserved for the platform"
        ),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        run(&["check", "--exempt", &reserved]).status.code(),
        Some(0)
    );
}

#[test]
fn check_answers_where_the_webhook_answers() {
    // An Image with both lists: render refuses it, the webhook still answers (from the
    // payload repositories alone), and so does check.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("image.yaml"),
        "apiVersion: config.openshift.io/v1\nkind: Image\nmetadata: {name: cluster}\nspec: {registrySources: {allowedRegistries: [a.io], blockedRegistries: [b.io]}}\n",
    )
    .unwrap();
    let o = run(&[
        "check",
        "--state",
        dir.path().to_str().unwrap(),
        "examples/signed-apps.yaml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    // A missing file: its own entry, said once, and the exit says input was not read.
    let o = run(&["check", "/nonexistent/p.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stdout(&o),
        "/nonexistent/p.yaml: error: No such file or directory (os error 2)\n"
    );
    assert_eq!(
        stderr(&o).trim(),
        "error: 1 input(s) not read, the first: /nonexistent/p.yaml: No such file or directory (os error 2)"
    );
}

/// GitOps inputs: a directory read recursively, standard input, and an unreadable file
/// that hides no other file's verdict, in text and in JSON.
#[test]
fn check_reads_directories_and_stdin_and_reports_each_input() {
    let o = run(&[
        "check",
        "--state",
        "examples",
        "--format",
        "json",
        "examples/rejected",
        "/nonexistent.yaml",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let items: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let items = items.as_array().unwrap();
    let denied = items.iter().filter(|i| i["allowed"] == false).count();
    assert!(denied >= 3, "{items:?}");
    assert!(items.iter().any(|i| i["source"] == "/nonexistent.yaml"
        && i["error"] == "No such file or directory (os error 2)"));

    let mut child = Command::new(paths::bin())
        .current_dir(paths::root())
        .args(["check", "--state", "examples", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let text =
        std::fs::read_to_string(paths::root().join("examples/rejected/blocked-registry.yaml"))
            .unwrap()
            .replace("name: blocked-registry", "name: piped");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("ClusterImagePolicy piped (-): denied"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn explain_knows_custom_pools_and_the_image_cr_entries() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    for f in paths::yaml_files("examples") {
        let target = input.join(f.replace('/', "_"));
        std::fs::copy(paths::root().join(&f), target).unwrap();
    }
    std::fs::write(
        input.join("infra.yaml"),
        "apiVersion: machineconfiguration.openshift.io/v1\nkind: MachineConfigPool\nmetadata: {name: infra}\nspec:\n  machineConfigSelector:\n    matchExpressions:\n      - {key: machineconfiguration.openshift.io/role, operator: In, values: [worker, infra]}\n",
    )
    .unwrap();
    let explain = |image: &str| {
        let o = run(&[
            "explain",
            "--input",
            input.to_str().unwrap(),
            "--pool",
            "infra",
            image,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    // A custom pool inherits the worker pool's MachineConfigs, ours among them.
    let text = explain("quay.io/example-org/x:1");
    assert!(
        text.contains("policy.json:  from 99-worker-generated-registries"),
        "{text}"
    );
    assert!(
        text.contains("from:         ClusterImagePolicy signed-apps"),
        "{text}"
    );
    let text = explain("blocked.example.com/x:1");
    assert!(
        text.contains("from:         Image cluster spec.registrySources.blockedRegistries entry \"blocked.example.com\""),
        "{text}"
    );
    // Its own MachineConfigs come after the worker ones, whatever their names.
    std::fs::write(
        input.join("infra-policy.yaml"),
        "apiVersion: machineconfiguration.openshift.io/v1\nkind: MachineConfig\nmetadata:\n  name: 50-infra-policy\n  labels: {machineconfiguration.openshift.io/role: infra}\nspec:\n  config:\n    ignition: {version: 3.2.0}\n    storage:\n      files:\n        - path: /etc/containers/policy.json\n          contents: {source: 'data:,%7B%22default%22%3A%5B%7B%22type%22%3A%22insecureAcceptAnything%22%7D%5D%7D'}\n",
    )
    .unwrap();
    let text = explain("quay.io/example-org/x:1");
    assert!(
        text.contains("policy.json:  from 50-infra-policy"),
        "{text}"
    );
    assert!(
        text.contains("matched:      no scope: the global default applies"),
        "{text}"
    );
}

/// Two policies on one scope write one entry with both requirements: explain says so, and
/// so does `check` for the second one.
#[test]
fn policies_sharing_a_scope_are_said_to_be_anded() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    for f in paths::yaml_files("examples") {
        std::fs::copy(paths::root().join(&f), input.join(f.replace('/', "_"))).unwrap();
    }
    let signed = std::fs::read_to_string(paths::root().join("examples/signed-apps.yaml")).unwrap();
    let second = input.join("rotation.yaml");
    std::fs::write(
        &second,
        signed.replace("name: signed-apps", "name: rotation"),
    )
    .unwrap();
    let o = run(&[
        "explain",
        "--input",
        input.to_str().unwrap(),
        "quay.io/example-org/x:1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for line in [
        "from:         ClusterImagePolicy rotation",
        "from:         ClusterImagePolicy signed-apps",
        "note:         2 policies share this scope, and the nodes require every requirement of the entry",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let candidate = elsewhere.path().join("rotation.yaml");
    std::fs::rename(&second, &candidate).unwrap();
    let o = run(&[
        "check",
        "--state",
        input.to_str().unwrap(),
        candidate.to_str().unwrap(),
    ]);
    let text = stdout(&o);
    assert!(o.status.success(), "{text}{}", stderr(&o));
    assert!(
        text.contains("scope quay.io/example-org is also a scope of ClusterImagePolicy signed-apps: on the nodes both policies' requirements must pass"),
        "{text}"
    );
}

/// Files are judged as one apply by default: what an earlier one takes of the size budget
/// and the scopes it writes count for the later ones; `--separately` judges each alone.
#[test]
fn check_judges_the_files_as_one_apply_unless_asked_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let key = testkit::paths::b64(include_str!("../fixtures/keys/cosign.pub"));
    for name in ["a", "b"] {
        let mut scopes: Vec<String> = (0..50).map(|i| format!("quay.io/{name}/app{i}")).collect();
        scopes.push("quay.io/shared".into());
        let doc = serde_json::json!({
            "apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
            "metadata": {"name": name},
            "spec": {"scopes": scopes, "policy": {
                "rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": key}},
                "signedIdentity": {"matchPolicy": "MatchRepoDigestOrExact"}}}
        });
        std::fs::write(dir.path().join(format!("{name}.json")), doc.to_string()).unwrap();
    }
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "--state", "examples", "--size-budget", "80000"];
        args.extend_from_slice(extra);
        args.push(dir.path().to_str().unwrap());
        run(&args)
    };
    let o = check(&[]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("a.json): allowed"), "{text}");
    assert!(
        text.contains("b.json): denied: spec: adding this policy would grow"),
        "{text}"
    );
    assert!(
        text.contains("scope quay.io/shared is also a scope of ClusterImagePolicy a"),
        "{text}"
    );
    let o = check(&["--separately"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

/// The help matches the binary: the version names the commit; completions and a manual
/// page come from the same definitions; `-o json` on check; no `--format` where nothing
/// is printed; certs in JSON.
#[test]
fn the_cli_describes_itself() {
    let o = run(&["--version"]);
    let version = stdout(&o);
    assert!(
        version.starts_with("cip-webhook 0.1.0 (commit "),
        "{version}"
    );
    let o = run(&["completions", "bash"]);
    assert!(
        o.status.success() && stdout(&o).contains("cip__webhook"),
        "{}",
        stderr(&o)
    );
    let o = run(&["man"]);
    assert!(stdout(&o).contains(".SH NAME"), "{}", stderr(&o));
    let o = run(&[
        "check",
        "-o",
        "json",
        "--state",
        "examples",
        "examples/p0.yaml",
    ]);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok(),
        "{}",
        stderr(&o)
    );
    let o = run(&["serve", "--format", "json"]);
    assert_eq!(o.status.code(), Some(2));
    let help = stdout(&run(&["check", "--help"]));
    assert!(
        help.contains("ClusterImagePolicy, ImagePolicy and Image files"),
        "{help}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let o = run(&[
        "certs",
        "--format",
        "json",
        "--dns",
        "localhost",
        "--out",
        out.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        report["caBundle"].as_str().is_some_and(|b| b.len() > 100),
        "{report}"
    );
    assert_eq!(report["files"].as_array().unwrap().len(), 3);
}

/// An error names each cause once, however many layers carry it.
#[test]
fn errors_say_each_cause_once() {
    let o = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "none",
        "--state-dir",
        "examples",
        "--tls-cert",
        "/nonexistent/tls.crt",
        "--tls-key",
        "/nonexistent/tls.key",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(
        err.starts_with("error: loading the serving certificate: /nonexistent/tls.crt"),
        "{err}"
    );
}

#[test]
fn limits_that_make_no_sense_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    for days in ["0", "3000000"] {
        let o = run(&["certs", "--out", out, "--dns", "x", "--days", days]);
        assert_eq!(o.status.code(), Some(2), "{days}: {}", stderr(&o));
    }
    for flag in [
        "--max-connections",
        "--max-body",
        "--request-timeout",
        "--idle-timeout",
    ] {
        let o = run(&["serve", "--tls-cert", "c", "--tls-key", "k", flag, "0"]);
        assert_eq!(o.status.code(), Some(2), "{flag}");
        assert!(stderr(&o).contains("is not in"), "{flag}: {}", stderr(&o));
    }
}

/// A MachineConfig that cannot be written leaves every other one as it was: never a
/// policy.json requiring signatures without the registries.d file that finds them.
#[test]
fn render_is_all_or_nothing() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    assert!(render("examples", o).status.success());
    let before = read_all(out.path());
    // Render other policies, with a directory where the third file goes.
    let input = tempfile::tempdir().unwrap();
    for f in paths::yaml_files("examples") {
        std::fs::copy(
            paths::root().join(&f),
            input.path().join(f.replace('/', "_")),
        )
        .unwrap();
    }
    std::fs::remove_file(input.path().join("examples_p0.yaml")).unwrap();
    let blocker = out.path().join("99-worker-generated-imagepolicies.yaml");
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), "x").unwrap();
    let r = render(input.path().to_str().unwrap(), o);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("99-worker-generated-imagepolicies.yaml"),
        "{}",
        stderr(&r)
    );
    std::fs::remove_dir_all(&blocker).unwrap();
    let after = read_all(out.path());
    let unchanged: Vec<_> = before
        .iter()
        .filter(|(n, _)| n != "99-worker-generated-imagepolicies.yaml")
        .cloned()
        .collect();
    assert_eq!(after, unchanged, "nothing else moved");
}

/// `explain --namespace`: CRI-O uses the namespace's own file where its ImagePolicies made
/// one, and policy.json otherwise; the entry names the policies behind it.
#[test]
fn explain_follows_a_pod_into_its_namespace_file() {
    let explain = |args: &[&str]| {
        let mut all = vec![
            "explain",
            "--input",
            "tests/fixtures/disconnected",
            "--output=json",
        ];
        all.extend_from_slice(args);
        let o = run(&all);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let r = explain(&["--namespace", "team-a", "registry.example.com/team-a/app:1"]);
    assert_eq!(r["policyFile"], "/etc/crio/policies/team-a.json");
    assert_eq!(r["policyFileFrom"], "99-worker-generated-registries");
    assert_eq!(r["explanation"]["matched"], "registry.example.com/team-a");
    assert_eq!(r["from"], serde_json::json!(["ImagePolicy team-a/team-a"]));
    // The scope a ClusterImagePolicy governs: the cluster policy's entry, in the team's file.
    let r = explain(&[
        "--namespace",
        "team-a",
        "registry.example.com/apps/billing:1",
    ]);
    assert_eq!(r["explanation"]["matched"], "registry.example.com/apps");
    assert_eq!(r["from"], serde_json::json!(["ClusterImagePolicy apps"]));
    // Another namespace's scope does not apply here, nor in a namespace without a file.
    let r = explain(&["--namespace", "team-a", "registry.redhat.io/ubi9/ubi:9"]);
    assert!(r["explanation"]["matched"].is_null(), "{r}");
    let r = explain(&["--namespace", "team-c", "registry.example.com/team-a/app:1"]);
    assert_eq!(r["policyFile"], "/etc/containers/policy.json");
    assert!(r["explanation"]["matched"].is_null(), "{r}");
    let o = run(&[
        "explain",
        "--input",
        "tests/fixtures/disconnected",
        "--namespace",
        "team-c",
        "busybox",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("namespace team-c has no policy file of its own"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// `check` takes ImagePolicy files as the webhook does, against the state's cluster
/// policies (precedence) and registry lists.
#[test]
fn check_judges_image_policies() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team.yaml");
    std::fs::write(
        &file,
        "apiVersion: config.openshift.io/v1\nkind: ImagePolicy\nmetadata: {name: t, namespace: team-c}\nspec:\n  scopes: [registry.example.com/apps/x, blocked.example.com/y]\n  policy:\n    rootOfTrust:\n      policyType: PublicKey\n      publicKey: {keyData: LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KTUZrd0V3WUhLb1pJemowQ0FRWUlLb1pJemowREFRY0RRZ0FFdWNvaHU2bzNaUHlld2RNdm83QWU0Yzh0ZXF6NApLZjRyWFJXSEJ5RlJFYStoUU1VR3l4T0VkTXBsTXNQZkVXOG9HT3duei9QWUljS3NZMFZkOXBRWUZ3PT0KLS0tLS1FTkQgUFVCTElDIEtFWS0tLS0tCg==}\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    for f in ["policies.yaml", "mirrors.yaml", "clusterversion.yaml"] {
        std::fs::copy(
            paths::root().join("tests/fixtures/disconnected").join(f),
            state.join(f),
        )
        .unwrap();
    }
    std::fs::copy(
        paths::root().join("examples/image.yaml"),
        state.join("image.yaml"),
    )
    .unwrap();
    let o = run(&[
        "check",
        "--state",
        state.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("imagePolicy configured for the scope blocked.example.com/y is nested inside blockedRegistries"),
        "{text}"
    );
    assert!(
        text.contains("only the cluster policy applies to these images"),
        "{text}"
    );
}

/// docs/cli-help.md is the binary's own `--help` for every command: the docs and the
/// binary cannot disagree (`UPDATE_GOLDEN=1` regenerates it).
#[test]
fn the_cli_help_document_is_the_binarys_help() {
    let commands = [
        "render",
        "check",
        "explain",
        "verify",
        "preview",
        "serve",
        "reconcile",
        "certs",
        "completions",
        "man",
    ];
    let mut doc = String::from(
        "# `cip-webhook --help`, per command\n\nGenerated from the binary (`UPDATE_GOLDEN=1 cargo test --test offline the_cli_help`); the prose is in [cli.md](cli.md).\n",
    );
    let top = run(&["--help"]);
    doc.push_str(&format!(
        "\n## cip-webhook\n\n```text\n{}```\n",
        String::from_utf8_lossy(&top.stdout)
    ));
    for command in commands {
        let out = run(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help: {}", stderr(&out));
        doc.push_str(&format!(
            "\n## cip-webhook {command}\n\n```text\n{}```\n",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    // Every command the binary has is in the list above.
    for line in String::from_utf8_lossy(&top.stdout)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
    {
        let Some(name) = line.split_whitespace().next() else {
            break;
        };
        if name == "help" || !line.starts_with("  ") {
            continue;
        }
        assert!(
            commands.contains(&name),
            "{name} is missing from docs/cli-help.md's list"
        );
    }
    testkit::paths::assert_golden("docs/cli-help.md", &doc);
}

/// `verify` says when the nodes' release cannot parse the entry: from the ClusterVersion
/// in `--input`, or `--openshift-version`. A PKI root needs containers/image 5.35.
#[test]
fn verify_notes_what_the_nodes_containers_image_cannot_parse() {
    let dir = tempfile::tempdir().unwrap();
    let root = testkit::keyless::Ca::root("pki root", 1_700_000_000, 2_000_000_000);
    let closed = format!("127.0.0.1:{}", testkit::paths::free_port());
    let cip = serde_json::json!({
        "apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
        "metadata": {"name": "pki"},
        "spec": {"scopes": [format!("{closed}/team")], "policy": {"rootOfTrust": {
            "policyType": "PKI", "pki": {"caRootsData": testkit::paths::b64(&root.pem),
            "pkiCertificateSubject": {"email": "signer@example.com"}}}}}
    });
    std::fs::write(dir.path().join("cip.yaml"), cip.to_string()).unwrap();
    std::fs::write(
        dir.path().join("cv.yaml"),
        "apiVersion: config.openshift.io/v1\nkind: ClusterVersion\nmetadata:\n  name: version\nstatus:\n  desired:\n    version: 4.18.2\n    image: quay.io/openshift-release-dev/ocp-release@sha256:4f0a4e1f3a3f36e9a0b0cd3b7f0f86bb1d0e4e96f4e0b52e6d7e7f2cb1a1b1c2\n",
    )
    .unwrap();
    let input = dir.path().to_str().unwrap();
    let image = format!("{closed}/team/app:v1");
    let out = run(&["verify", "--format", "json", "--input", input, &image]);
    // The registry is closed: unknown (exit 3), and the note is there regardless.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let notes = v["notes"].as_array().expect("notes");
    assert!(
        notes[0].as_str().unwrap().starts_with(
            "on OpenShift 4.18.2: a PKI root of trust needs containers/image 5.35 or newer; OpenShift 4.18 nodes run about 5.32"
        ),
        "{v}"
    );
    let out = run(&[
        "verify",
        "--format",
        "json",
        "--openshift-version",
        "4.21",
        "--input",
        input,
        &image,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["notes"], serde_json::Value::Null, "{v}");
}
