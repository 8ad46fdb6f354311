//! The running-images pass against the real API server and a real registry: pods and
//! nodes created by the test (status through the status subresource, as a kubelet would
//! write it), images signed and not in Debian's docker-registry, the reconciler in the
//! real binary under the project's RBAC. Each policy's `RunningImagesAccepted` condition,
//! the metrics and the Warning Event say what the next pull of each image would meet.

use serde_json::{json, Value};
use testkit::cluster::*;
use testkit::paths::{b64, cosign_pub};
use testkit::registry::{openssl_key, openssl_keypair, Registry};
use testkit::upstream::{Crd, MCO_CRDS};

/// Pods per image: the verdict is reached once per distinct image, whatever the count.
const PODS_PER_IMAGE: usize = 8;

fn node(name: &str, role: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        format!("node-role.kubernetes.io/{role}"): "", "kubernetes.io/arch": "amd64"}}})
}

/// A running pod of one container: the image as written, the digest it runs.
fn pod(namespace: &str, name: &str, image: &str, image_id: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": "worker-0", "containers": [{"name": "app", "image": image}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "app", "image": image, "imageID": image_id, "ready": true,
            "restartCount": 0, "started": true, "state": {"running": {}}}]}})
}

fn condition(policy: &Value) -> Option<Value> {
    policy["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "RunningImagesAccepted")
        .cloned()
}

/// Until the `running` policy has its RunningImagesAccepted condition.
async fn until_judged(c: &Cluster) {
    c.until(
        "RunningImagesAccepted on the policy",
        async |c: &Cluster| {
            c.policy("running")
                .await
                .and_then(|p| condition(&p))
                .is_some()
        },
    )
    .await;
}

/// An object as read, ready to apply again: no server-set fields, no status.
fn applicable(mut object: Value) -> Value {
    for k in [
        "managedFields",
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "generation",
    ] {
        object["metadata"].as_object_mut().unwrap().remove(k);
    }
    object.as_object_mut().unwrap().remove("status");
    object
}

/// A series of the metrics text, as a number.
fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

/// The registry (an image signed by the test key, one unsigned, one on a host where
/// nothing listens), the cluster with two nodes and pods running each image, before any
/// cip-webhook process starts.
struct Fixture {
    registry: Registry,
    c: Cluster,
}

/// Nothing listens there: a registry error, which is never a refusal.
const GONE: &str = "127.0.0.1:9";

/// The policy over all three images, with the test key.
fn running_policy(host: &str) -> Value {
    json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
        "metadata": {"name": "running"},
        "spec": {"scopes": [format!("{host}/signed"), format!("{host}/unsigned"), format!("{GONE}/missing")],
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": b64(cosign_pub())}}}}})
}

/// A second policy on the signed image's scope, with another key.
fn rotation_policy(host: &str) -> Value {
    let keys = tempfile::tempdir().unwrap();
    let (_, other_key) = openssl_keypair(keys.path(), "p384");
    json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
        "metadata": {"name": "rotation"},
        "spec": {"scopes": [format!("{host}/signed")],
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": b64(&other_key)}}}}})
}

/// The real API server with the policy CRDs, the MCO's, and the examples, its nodes
/// reaching `hosts` over plain HTTP (the Image CR's insecure registries).
pub(crate) async fn cluster_reaching(hosts: &[&str]) -> Cluster {
    let crds = [
        &[Crd::ClusterImagePolicyV1, Crd::Image, Crd::ClusterVersion][..],
        &MCO_CRDS,
    ]
    .concat();
    let c = Cluster::real(&crds).await;
    c.seed_files(EXAMPLES).await;
    let mut image = c
        .get("config.openshift.io", "images", "", "cluster")
        .await
        .unwrap();
    image["spec"]["registrySources"]["insecureRegistries"] = json!(hosts);
    c.seed(image).await;
    c
}

async fn fixture() -> Fixture {
    let registry = Registry::start();
    let host = registry.host.clone();
    let layout = registry.oci_layout("app", "amd64");
    let signed = registry.push(&layout, "signed/app:v1", None, None);
    registry.attach_openssl_signature(
        "signed/app",
        &signed,
        &format!("{host}/signed/app:v1"),
        &openssl_key(),
    );
    let unsigned = registry.push(&layout, "unsigned/app:v1", None, None);
    // Nothing listens there: a registry error, which is never a refusal.
    let gone = GONE;
    let elsewhere = format!("sha256:{}", "e".repeat(64));

    let c = cluster_reaching(&[&host, gone]).await;
    c.seed(node("worker-0", "worker")).await;
    c.seed(node("master-0", "master")).await;
    let images = [
        (
            format!("{host}/signed/app:v1"),
            format!("{host}/signed/app@{signed}"),
        ),
        (
            format!("{host}/unsigned/app:v1"),
            format!("{host}/unsigned/app@{unsigned}"),
        ),
        (
            format!("{gone}/missing/app:v1"),
            format!("{gone}/missing/app@{elsewhere}"),
        ),
    ];
    for (i, (image, id)) in images.iter().enumerate() {
        for n in 0..PODS_PER_IMAGE {
            c.seed(pod("apps", &format!("p{i}-{n}"), image, id)).await;
        }
    }
    Fixture { registry, c }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_say_which_running_images_their_next_pull_refuses() {
    let Fixture { registry, mut c } = fixture().await;
    let host = registry.host.clone();
    c.start_webhook(&[
        "--running-images-interval",
        "5",
        "--running-images-write-interval",
        "1",
    ])
    .await;
    c.apply_value(&running_policy(&host)).await;
    until_judged(&c).await;
    let policy = c.policy("running").await.unwrap();
    let cond = condition(&policy).unwrap();
    assert_eq!(cond["status"], "False", "{cond}");
    assert_eq!(cond["reason"], "SomeRefused", "{cond}");
    let message = cond["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "covers 3 running images: 1 accepted, 1 refused at next pull, 1 unknown; refused: "
        ),
        "{message}"
    );
    assert!(
        message.contains(&format!("{host}/unsigned/app:v1 (namespace apps)")),
        "{message}"
    );
    assert!(
        message.contains("A signature was required, but no signature exists"),
        "{message}"
    );
    // The reconciler's own conditions stay, under its own field manager.
    let types: Vec<&str> = policy["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert!(types.contains(&"Applied"), "{types:?}");
    let managers: Vec<&str> = policy["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"cip-webhook-impact") && managers.contains(&"cip-webhook"),
        "{managers:?}"
    );

    // `verify` and `explain` reading the cluster: where the image runs, judged at the
    // digest it runs, as the condition says.
    let unsigned = format!("{host}/unsigned/app:v1");
    let (code, run) = c
        .cli(&[
            "verify",
            "--namespace",
            "apps",
            "--format",
            "json",
            &unsigned,
        ])
        .await;
    assert_eq!(code, Some(1), "{run:?}");
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(out["verdict"], "refused", "{out}");
    let running = &out["running"][0];
    assert_eq!(running["containers"], PODS_PER_IMAGE, "{out}");
    assert_eq!(running["namespace"], "apps", "{out}");
    assert!(
        running["digest"].as_str().unwrap().starts_with("sha256:"),
        "{out}"
    );
    let (code, run) = c
        .cli(&[
            "explain",
            "--pool",
            "master",
            &format!("{host}/signed/app:v1"),
        ])
        .await;
    assert_eq!(code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("from:         ClusterImagePolicy running"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("running:      in no pod on pool master"),
        "{run:?}"
    );

    // The Warning Event, beside the cluster-scoped policy in `default`.
    c.until("the RunningImagesRefused Event", async |c: &Cluster| {
        c.list("events.k8s.io", "events")
            .await
            .iter()
            .any(|e| e["reason"] == "RunningImagesRefused" && e["type"] == "Warning")
    })
    .await;

    let metrics = c.metrics().await;
    for (verdict, n) in [("accepted", 1.0), ("refused", 1.0), ("unknown", 1.0)] {
        let name = format!("cip_webhook_running_images{{verdict=\"{verdict}\"}}");
        assert_eq!(series(&metrics, &name), n, "{name}\n{metrics}");
    }
    assert_eq!(
        series(&metrics, "cip_webhook_policies_refusing_running_images"),
        1.0
    );
    let fetched = |m: &str| series(m, "cip_webhook_registry_requests_total{outcome=\"ok\"}");
    assert!(fetched(&metrics) >= 3.0, "{metrics}");

    // A second policy on the signed image's scope with another key: at `oc apply`, the
    // warning says what it would newly refuse, judged from the copy (no registry call).
    let before_apply = fetched(&c.metrics().await);
    let run = c.apply_value(&rotation_policy(&host)).await;
    assert!(
        run.stderr.contains(&format!(
            "Warning: this change newly refuses 1 of 1 covered running images at their next pull (signature 1), e.g. {host}/signed/app:v1: "
        )),
        "{run:?}"
    );
    assert_eq!(
        fetched(&c.metrics().await),
        before_apply,
        "admission fetched"
    );
    c.kubectl(&["delete", "clusterimagepolicy", "rotation"])
        .await;

    // The Image `cluster` warns too: blocking the signed image's repository (a dry run,
    // so the lists stay as they are).
    let mut blocking = applicable(
        c.get("config.openshift.io", "images", "", "cluster")
            .await
            .unwrap(),
    );
    blocking["spec"]["registrySources"]["blockedRegistries"] =
        json!(["blocked.example.com", format!("{host}/signed/app")]);
    let file = c.write("blocking.json", blocking.to_string());
    let run = c
        .kubectl(&["apply", "--dry-run=server", "--validate=false", "-f", &file])
        .await;
    assert!(run.ok, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "Warning: this change newly refuses 1 of 1 covered running images at their next pull (rejected 1), e.g. {host}/signed/app:v1: Running image docker://{host}/signed/app:v1 is rejected by policy."
        )),
        "{run:?}"
    );
    assert_eq!(
        fetched(&c.metrics().await),
        before_apply,
        "admission fetched"
    );

    // A scope-only edit: the unknown registry leaves the policy. Its verdicts come from
    // the cache — no registry request — and the condition follows.
    let mut edited = applicable(c.policy("running").await.unwrap());
    edited["spec"]["scopes"] = json!([format!("{host}/signed"), format!("{host}/unsigned")]);
    c.apply_value(&edited).await;
    c.until("the condition after the scope edit", async |c: &Cluster| {
        c.policy("running")
            .await
            .and_then(|p| condition(&p))
            .is_some_and(|c| {
                c["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("covers 2 running images: 1 accepted, 1 refused")
            })
    })
    .await;
    let after = c.metrics().await;
    assert_eq!(
        fetched(&after),
        fetched(&metrics),
        "a scope-only edit fetched:\n{after}"
    );

    // Another writer replaces the whole conditions list with its own (as the
    // machine-config-operator's status update does): ours comes back at a later pass.
    let run = c
        .kubectl(&[
            "patch",
            "clusterimagepolicy",
            "running",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Pending","status":"False","reason":"Other","message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
        ])
        .await;
    assert!(run.ok, "{run:?}");
    until_judged(&c).await;
}

/// As deployed: the reconciler judges, an admission-only replica (no registry access, no
/// reconcile) warns from the copy it fetches from the reconciler's `/running-images`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_replica_warns_from_the_reconcilers_copy() {
    let Fixture { registry, mut c } = fixture().await;
    let host = registry.host.clone();
    let reconciler = c
        .spawn_reconciler(
            RECONCILER_ACCOUNT,
            "reconciler-0",
            &["--running-images-interval", "5"],
        )
        .await;
    let url = format!("http://{}/running-images", reconciler.metrics_addr);
    c.start_webhook(&["--mode", "admission-only", "--running-images-from", &url])
        .await;
    c.apply_value(&running_policy(&host)).await;
    until_judged(&c).await;
    let requests = registry.requests();
    assert!(requests > 0, "the registry logs no request");
    // The replica copies every 30 s, and at each change of the cluster it renders.
    let warned = format!("this change newly refuses 1 of 1 covered running images at their next pull (signature 1), e.g. {host}/signed/app:v1: ");
    let file = c.write("rotation.json", rotation_policy(&host).to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let run = c
            .kubectl(&["apply", "--dry-run=server", "--validate=false", "-f", &file])
            .await;
        assert!(run.ok, "{run:?}");
        if run.stderr.contains(&warned) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no warning: {run:?}\n{}",
            c.webhook_log()
        );
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    // Nothing reached the registry while admission judged (the reconciler's passes since
    // are answered from its cache).
    assert_eq!(registry.requests(), requests);
    // A pass (every 10 s: 5 s apart, 5 s to settle) that finds the same leaves the copy as
    // it was, expired answers fetched again included: a replica holding it is answered 304
    // (up to three tries, for a registry that answered otherwise in between).
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (first, tag) = copy_fetched(reconciler.metrics_addr, None).await;
        assert!(
            first.starts_with("200 ") && tag.is_some(),
            "{first} {tag:?}"
        );
        tokio::time::sleep(std::time::Duration::from_secs(12)).await;
        let (again, _) = copy_fetched(reconciler.metrics_addr, tag.as_deref()).await;
        answers.push(again);
        if answers.last().is_some_and(|a| a == "304 0") {
            break;
        }
    }
    assert_eq!(
        answers.last().map(String::as_str),
        Some("304 0"),
        "{answers:?}"
    );
    drop(reconciler);
}

/// Behind `--running-images-pod-pull-secrets`, a registry that wants credentials is read
/// with the ones a pod names: a `.dockerconfigjson` Secret in its namespace, read by the
/// reconciler under the project's RBAC plus the cluster-wide Secret `get` the flag needs.
/// Without the flag the same registry answers 401: unknown, never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_pull_secrets_open_a_registry_behind_the_flag() {
    use testkit::fakeregistry::{signed_image, signer, start, Fake};
    let s = signer();
    let (registry, host) = start(Fake {
        basic: true,
        basic_as: Some("robot:s3cret".into()),
        ..Fake::default()
    })
    .await;
    let digest = signed_image(&mut registry.fake.lock().unwrap(), &s, &host);
    let c = cluster_reaching(&[&host]).await;
    c.seed(node("worker-0", "worker")).await;
    let auths = json!({"auths": {host.clone(): {"auth": b64("robot:s3cret")}}});
    c.seed(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "regcred", "namespace": "apps"},
        "data": {".dockerconfigjson": b64(auths.to_string())}}),
    )
    .await;
    let mut p = pod(
        "apps",
        "p0",
        &format!("{host}/org/app:v1"),
        &format!("{host}/org/app@{digest}"),
    );
    p["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    c.seed(p).await;
    c.seed(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "read-pull-secrets"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}),
    )
    .await;
    c.seed(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "read-pull-secrets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "read-pull-secrets"},
        "subjects": [{"kind": "ServiceAccount", "name": "cip-webhook-reconciler", "namespace": "cip-webhook"}]}))
        .await;
    c.seed_unadmitted(json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
        "metadata": {"name": "running"},
        "spec": {"scopes": [format!("{host}/org")],
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": b64(&s.pem)}}}}}))
        .await;
    let says = async |c: &Cluster, start: &str| {
        c.policy("running")
            .await
            .and_then(|p| condition(&p))
            .is_some_and(|cond| {
                cond["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(start)
            })
    };
    let args = [
        "--running-images-interval",
        "5",
        "--running-images-write-interval",
        "1",
    ];
    let without = c
        .spawn_reconciler(
            RECONCILER_ACCOUNT,
            "without",
            &[&args[..], &["--lease-name", "without"]].concat(),
        )
        .await;
    c.until(
        "unknown without the pod's credentials",
        async |c: &Cluster| {
            says(
                c,
                "covers 1 running image: 0 accepted, 0 refused at next pull, 1 unknown",
            )
            .await
        },
    )
    .await;
    without.terminate().await;
    let with = c
        .spawn_reconciler(
            RECONCILER_ACCOUNT,
            "with",
            &[
                &args[..],
                &["--lease-name", "with", "--running-images-pod-pull-secrets"],
            ]
            .concat(),
        )
        .await;
    c.until(
        "accepted with the pod's credentials",
        async |c: &Cluster| says(c, "covers 1 running image: 1 accepted").await,
    )
    .await;
    with.terminate().await;
}
