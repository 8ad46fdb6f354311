//! The seed's user flow end to end: kubectl against the real kube-apiserver, which calls
//! the real `cip-webhook serve` process through the project's webhook configurations,
//! their matchConditions evaluated by the server.

use serde_json::{json, Value};
use testkit::cluster::*;
use testkit::paths::root;
use testkit::upstream::{Crd, MCO_CRDS};

const VALIDATE: &str = "clusterimagepolicies.validate.cip-webhook.io";

fn image(blocked: &[&str]) -> Value {
    let mut image = json!({"apiVersion": "config.openshift.io/v1", "kind": "Image",
                           "metadata": {"name": "cluster"}, "spec": {}});
    if !blocked.is_empty() {
        image["spec"]["registrySources"] = json!({"blockedRegistries": blocked});
    }
    image
}

fn clusterversion() -> Value {
    let text = std::fs::read_to_string(root().join("examples/clusterversion.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// A cluster serving `cip_crd`, with the Image, ClusterVersion and MCO types, an Image
/// `cluster` blocking `blocked`, and the webhook running.
async fn cluster(cip_crd: Crd, blocked: &[&str]) -> Cluster {
    let mut c =
        Cluster::real(&[&[cip_crd, Crd::Image, Crd::ClusterVersion][..], &MCO_CRDS].concat()).await;
    c.seed(clusterversion()).await;
    c.seed(image(blocked)).await;
    c.start_webhook(&[]).await;
    c
}

async fn stored_policy(c: &Cluster, name: &str) -> Value {
    c.policy(name)
        .await
        .unwrap_or_else(|| panic!("{name} is stored"))
}

/// A kubeconfig of the cluster-version operator (cluster-admin, as on OpenShift).
async fn cvo(c: &Cluster) -> std::path::PathBuf {
    c.kubeconfig_for(CVO, &[]).await
}

/// p0 from the seed, with another name and without its signedIdentity.
fn p0_without_identity(c: &Cluster, name: &str) -> String {
    let text = std::fs::read_to_string(root().join("examples/p0.yaml")).unwrap();
    let mut v: Value = serde_saphyr::from_str(&text).unwrap();
    v["metadata"]["name"] = json!(name);
    v["spec"]["policy"]
        .as_object_mut()
        .unwrap()
        .remove("signedIdentity");
    c.write(
        &format!("{name}.yaml"),
        serde_saphyr::to_string(&v).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_on_a_v1alpha1_cluster() {
    let c = cluster(Crd::ClusterImagePolicyV1alpha1, &[]).await;

    // The seed's p0 is created, listed, and stored as given.
    let run = c.apply("examples/p0.yaml").await;
    assert!(run.ok, "{run:?}\n{}", c.webhook_log());
    assert_eq!(
        run.stdout.trim(),
        "clusterimagepolicy.config.openshift.io/p0 created"
    );
    // v1alpha1 admits the seed's placeholder key with a warning.
    assert!(run.stderr.starts_with("Warning: "), "{run:?}");
    let run = c.kubectl(&["get", "clusterimagepolicy"]).await;
    assert!(run.ok, "{run:?}");
    let names: Vec<&str> = run
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["p0"], "{}", run.stdout);
    assert_eq!(
        stored_policy(&c, "p0").await["spec"]["policy"]["signedIdentity"]["matchPolicy"],
        "MatchRepoDigestOrExact"
    );

    // The mutating webhook defaults an absent signedIdentity before the object is stored.
    let p1 = p0_without_identity(&c, "p1");
    c.apply_ok(&p1).await;
    assert_eq!(
        stored_policy(&c, "p1").await["spec"]["policy"]["signedIdentity"],
        json!({"matchPolicy": "MatchRepoDigestOrExact"})
    );

    // Blocking a registry that existing policies cover is refused, naming them.
    let blocked = c.write(
        "image-blocked.json",
        serde_json::to_vec(&image(&["example.com/global"])).unwrap(),
    );
    let run = c.apply(&blocked).await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr
            .starts_with("Error from server (Forbidden): error when applying patch:")
            || run.stderr.contains(
                "admission webhook \"images.validate.cip-webhook.io\" denied the request: "
            ),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("p0") && run.stderr.contains("p1"),
        "{run:?}"
    );
    assert!(run.stderr.contains("example.com/global"), "{run:?}");
    let spec = &c
        .get("config.openshift.io", "images", "", "cluster")
        .await
        .unwrap()["spec"];
    assert_eq!(spec, &json!({}), "the Image was not changed");

    // Without the policies the Image change goes through; then p0 itself is refused with
    // the seed's troubleshooting message inside the API server's wrapper.
    let run = c
        .kubectl(&["delete", "clusterimagepolicy", "p0", "p1"])
        .await;
    assert!(run.ok, "{run:?}");
    c.eventually(&["apply", "--validate=false", "-f", &blocked], |r| r.ok)
        .await;
    // The API server passes on the webhook's warnings with its refusal.
    let want = format!(
        "Warning: spec.policy.rootOfTrust.publicKey.keyData: does not decode to a PEM public key: no PEM block found\nError from server (Forbidden): error when creating \"examples/p0.yaml\": admission webhook \"{VALIDATE}\" denied the request: clusterimagePolicy configured for the scope example.com/global is nested inside blockedRegistries"
    );
    let run = c
        .eventually(
            &["apply", "--validate=false", "-f", "examples/p0.yaml"],
            |r| !r.ok,
        )
        .await;
    assert_eq!(run.stderr.trim(), want, "{run:?}");
    assert!(c.policy("p0").await.is_none());
}

fn payload_policy(c: &Cluster) -> String {
    let v = json!({
        "apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
        "metadata": {"name": "release"},
        "spec": {
            "scopes": ["quay.io/openshift-release-dev/ocp-release"],
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {
                "keyData": std::fs::read_to_string(root().join("examples/signed-apps.yaml")).unwrap()
                    .lines().find_map(|l| l.trim().strip_prefix("keyData: ")).unwrap()
            }}}
        }
    });
    c.write("release.json", serde_json::to_vec(&v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_policies_and_the_payload_repository() {
    let c = cluster(Crd::ClusterImagePolicyV1, &[]).await;

    let run = c.apply("examples/signed-apps.yaml").await;
    assert!(run.ok, "{run:?}\n{}", c.webhook_log());
    assert_eq!(
        run.stdout.trim(),
        "clusterimagepolicy.config.openshift.io/signed-apps created"
    );
    assert_eq!(run.stderr, "", "a valid v1 policy gets no warning");

    // The release payload's repository is refused for a cluster administrator...
    let release = payload_policy(&c);
    let run = c.apply(&release).await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "Error from server (Forbidden): error when creating \"{release}\": admission webhook \"{VALIDATE}\" denied the request: "
        )),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("quay.io/openshift-release-dev/ocp-release"),
        "{run:?}"
    );

    // ...and admitted for the cluster-version operator: matchConditions keep the API
    // server from even calling the webhook for it...
    let cvo = cvo(&c).await;
    let run = c
        .kubectl_as(&cvo, &["apply", "--validate=false", "-f", &release])
        .await;
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stderr, "", "{run:?}");
    assert!(
        !c.webhook_log().contains("openshift-cluster-version"),
        "the webhook was called for the CVO"
    );
    // ...and where the API server predates matchConditions (OpenShift < 4.17), the
    // webhook itself turns the denial into a warning.
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let patch = r#"[{"op": "remove", "path": "/webhooks/0/matchConditions"}]"#;
        let run = c
            .kubectl(&["patch", kind, "cip-webhook", "--type=json", "-p", patch])
            .await;
        assert!(run.ok, "{run:?}");
    }
    let mut labelled: Value =
        serde_json::from_str(&std::fs::read_to_string(&release).unwrap()).unwrap();
    labelled["metadata"]["labels"] = json!({"changed": "yes"});
    let changed = c.write("release-2.json", labelled.to_string());
    let run = c
        .kubectl_as(&cvo, &["apply", "--validate=false", "-f", &changed])
        .await;
    assert!(run.ok, "{run:?}");
    assert!(run.stderr.starts_with("Warning: "), "{run:?}");

    // The CRD's own rules run between the mutating and the validating webhook: the seed's
    // placeholder key, valid in v1alpha1, is refused by the v1 schema with the API
    // server's 422.
    let text = std::fs::read_to_string(root().join("examples/p0.yaml")).unwrap();
    let p0 = c.write(
        "p0-v1.yaml",
        text.replace("config.openshift.io/v1alpha1", "config.openshift.io/v1"),
    );
    let run = c.apply(&p0).await;
    assert!(!run.ok);
    assert!(
        run.stderr
            .starts_with("The ClusterImagePolicy \"p0\" is invalid: "),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("spec.policy.rootOfTrust.publicKey.keyData: Invalid value: \"string\": the keyData must start with base64 encoding of '-----BEGIN PUBLIC KEY-----'."),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policy_decides_when_the_webhook_is_down() {
    let mut c = cluster(Crd::ClusterImagePolicyV1, &[]).await;
    c.stop_webhook().await;

    let run = c.apply("examples/signed-apps.yaml").await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr.starts_with(&format!("Error from server (InternalError): error when creating \"examples/signed-apps.yaml\": Internal error occurred: failed calling webhook \"clusterimagepolicies.mutate.cip-webhook.io\": failed to call webhook: Post \"{}?timeout=5s\": dial tcp ", c.webhook_url("/mutate"))),
        "{run:?}"
    );
    assert!(
        run.stderr
            .trim_end()
            .ends_with("connect: connection refused"),
        "{run:?}"
    );
    assert!(c.policy("signed-apps").await.is_none());

    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let patch =
            r#"[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]"#;
        let run = c
            .kubectl(&["patch", kind, "cip-webhook", "--type=json", "-p", patch])
            .await;
        assert!(run.ok, "{run:?}");
    }
    c.apply_ok("examples/signed-apps.yaml").await;
}

/// matchConditions, evaluated by the API server, keep
/// requests whose answer can only be "allowed" away from the webhook; what reaches it is
/// judged by what it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_judged_by_what_they_change_and_the_platform_is_never_blocked() {
    let c = cluster(Crd::ClusterImagePolicyV1, &["blocked.example.com"]).await;
    // Stored before the Image blocked its registry, so in conflict already.
    c.seed_unadmitted(signed_apps("old-conflict", &["blocked.example.com/app"]))
        .await;
    let mut openshift = signed_apps("openshift", &["quay.io/openshift-release-dev/ocp-release"]);
    openshift["metadata"]["name"] = json!("openshift");
    c.seed_unadmitted(openshift).await;
    c.readyz_says("2 ClusterImagePolicies").await;

    // A label-only update of the conflicting policy: admitted, with the problem named.
    let run = c
        .kubectl(&["label", "clusterimagepolicy", "old-conflict", "team=a"])
        .await;
    assert!(run.ok, "{run:?}\n{}", c.webhook_log());
    assert_eq!(
        run.stderr.trim(),
        "Warning: clusterimagePolicy configured for the scope blocked.example.com/app is nested inside blockedRegistries (already so before this update, so not denied)"
    );

    // An Image update that leaves the registry lists alone never reaches the webhook.
    let run = c
        .kubectl(&[
            "patch",
            "image",
            "cluster",
            "--type=merge",
            "-p",
            r#"{"spec": {"additionalTrustedCA": {"name": "my-ca"}}}"#,
        ])
        .await;
    assert!(run.ok, "{run:?}");
    assert!(
        !c.webhook_log().contains("kind=Image"),
        "{}",
        c.webhook_log()
    );
    // One that changes them is judged, and denied for the conflict it creates.
    c.apply_ok("examples/signed-apps.yaml").await;
    let run = c
        .kubectl(&[
            "patch", "image", "cluster", "--type=merge", "-p",
            r#"{"spec": {"registrySources": {"blockedRegistries": ["blocked.example.com", "quay.io/example-org"]}}}"#,
        ])
        .await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr.contains("admission webhook \"images.validate.cip-webhook.io\" denied the request: clusterimagePolicy configured for the scope quay.io/example-org is nested inside blockedRegistries (ClusterImagePolicy signed-apps)"),
        "{run:?}"
    );

    // Names reserved for the platform: an admin may not delete `openshift`; the
    // cluster-version operator may, without the webhook being asked.
    let run = c
        .kubectl(&["delete", "clusterimagepolicy", "openshift"])
        .await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr.contains("denied the request: metadata.name: Forbidden: \"openshift\" is reserved for the platform"),
        "{run:?}"
    );
    let cvo = cvo(&c).await;
    let run = c
        .kubectl_as(&cvo, &["delete", "clusterimagepolicy", "openshift"])
        .await;
    assert!(run.ok, "{run:?}");
    // Other deletes are not the webhook's business either.
    let decisions = c.webhook_log().matches("operation=DELETE").count();
    let run = c
        .kubectl(&["delete", "clusterimagepolicy", "old-conflict"])
        .await;
    assert!(run.ok, "{run:?}");
    assert_eq!(
        c.webhook_log().matches("operation=DELETE").count(),
        decisions
    );
    assert!(!c.webhook_log().contains("openshift-cluster-version"));
}
