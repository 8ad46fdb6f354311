//! The deployment manifests installed on a real API server: each Deployment's RBAC is
//! exactly what its process asks for (the server's own authorizer and audit log are the
//! judges), the ValidatingAdmissionPolicy holds the reconciler to our MachineConfigs (the
//! server evaluates it), and the OpenShift overlay installs and serves the seed flow.

use std::collections::BTreeSet;

use serde_json::json;
use testkit::cluster::*;
use testkit::manifests::{allowed, find, kustomize, Access};
use testkit::paths::root;
use testkit::upstream::{Crd, INPUTS_V1};

/// The requests `user` made that reached an object or a collection, from the server's
/// audit log, as RBAC names them.
fn requests_of(c: &Cluster, user: &str) -> BTreeSet<Access> {
    c.api()
        .requests()
        .into_iter()
        .filter(|r| r.user == user && !r.resource.is_empty())
        .map(|r| {
            let resource = if r.subresource.is_empty() {
                r.resource
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            // The ClusterRole's rules hold in every namespace; the Roles' in theirs (ours,
            // and openshift-config for the cluster's pull secret).
            let namespace = if r.namespace == NAMESPACE || r.namespace == "openshift-config" {
                r.namespace
            } else {
                String::new()
            };
            (namespace, r.group, resource, r.verb)
        })
        .collect()
}

/// Requests the server refused as forbidden.
fn forbidden(c: &Cluster, user: &str) -> Vec<String> {
    c.api()
        .requests()
        .into_iter()
        .filter(|r| r.user == user && r.code == 403)
        .map(|r| {
            format!(
                "{} {}/{} {}/{}",
                r.verb, r.group, r.resource, r.namespace, r.name
            )
        })
        .collect()
}

fn assert_exactly(who: &str, used: &BTreeSet<Access>, rules: &BTreeSet<Access>) {
    assert!(!used.is_empty(), "{who} made no request");
    let missing: Vec<_> = used.difference(rules).collect();
    assert!(
        missing.is_empty(),
        "{who}: requests the rules do not allow: {missing:?}"
    );
    let unused: Vec<_> = rules.difference(used).collect();
    assert!(unused.is_empty(), "{who}: rules never used: {unused:?}");
}

async fn worker_written(c: &Cluster) -> bool {
    c.machine_config("99-worker-generated-imagepolicies")
        .await
        .is_some()
        && c.machine_config("99-worker-generated-registries")
            .await
            .and_then(|mc| file(&mc, "/etc/containers/policy.json"))
            .is_some()
}

/// Each Deployment's RBAC is exactly what its process asks for: admission reads, the
/// reconciler reads and writes, both as their service accounts with tokens from the
/// TokenRequest API, under the overlay's ValidatingAdmissionPolicy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_is_exactly_what_each_deployment_uses() {
    let objects = kustomize("openshift").await;
    let admission_rules = allowed(&find(&objects, "ClusterRole", "cip-webhook")["rules"], "");
    let mut reconciler_rules = allowed(
        &find(&objects, "ClusterRole", "cip-webhook-reconciler")["rules"],
        "",
    );
    reconciler_rules.extend(allowed(
        &find(&objects, "Role", "cip-webhook-reconciler")["rules"],
        NAMESPACE,
    ));
    reconciler_rules.extend(allowed(
        &find(&objects, "Role", "cip-webhook-reconciler-pull-secret")["rules"],
        "openshift-config",
    ));

    // Everything the binaries do: admission state, a policy written, one held back
    // (status and an Event), a namespace's policy (its status), the policy deleted
    // (MachineConfigs reverted), the Lease.
    let mut c = Cluster::real(&INPUTS_V1).await;
    c.seed_files(&[
        "examples/image.yaml",
        "examples/clusterversion.yaml",
        "examples/pools.yaml",
        "examples/machineconfigs/01-worker-container-runtime.yaml",
        "examples/machineconfigs/99-worker-generated-registries.yaml",
    ])
    .await;
    // Registry CAs named by the Image CR: the running-images pass reads that ConfigMap.
    let mut image = c
        .get("config.openshift.io", "images", "", "cluster")
        .await
        .unwrap();
    image["spec"]["additionalTrustedCA"] = json!({"name": "registry-cas"});
    c.seed(image).await;
    c.start_webhook(&["--mode", "admission-only"]).await;
    let reconciler = c
        .spawn_reconciler(
            RECONCILER_ACCOUNT,
            "reconciler-0",
            &["--lease-duration", "2"],
        )
        .await;
    // A standby beside it: it watches the Lease.
    let standby = c
        .spawn_reconciler(
            RECONCILER_ACCOUNT,
            "reconciler-1",
            &["--lease-duration", "2"],
        )
        .await;
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("written", worker_written).await;
    c.seed_unadmitted(signed_apps("blocked", &["blocked.example.com/app"]))
        .await;
    c.until("event", async |c: &Cluster| {
        !c.list("events.k8s.io", "events").await.is_empty()
    })
    .await;
    // Held back again for another reason's scope: kube's recorder patches the Event.
    c.seed_unadmitted(signed_apps(
        "blocked",
        &["blocked.example.com/app", "blocked.example.com/other"],
    ))
    .await;
    c.until("an event series", async |c: &Cluster| {
        event_repeated(&c.list("events.k8s.io", "events").await)
    })
    .await;
    c.seed(team_policy(
        "team-a",
        "team",
        &["registry.example.com/team-a"],
    ))
    .await;
    c.until("image policy status", async |c: &Cluster| {
        c.image_policy("team-a", "team")
            .await
            .is_some_and(|p| p["status"]["conditions"].is_array())
    })
    .await;
    let run = c
        .kubectl(&["delete", "clusterimagepolicy", "signed-apps", "blocked"])
        .await;
    assert!(run.ok, "{run:?}");
    let run = c
        .kubectl(&["delete", "imagepolicy", "-n", "team-a", "team"])
        .await;
    assert!(run.ok, "{run:?}");
    c.until("reverted", async |c: &Cluster| {
        c.machine_config("99-worker-generated-imagepolicies")
            .await
            .is_none()
    })
    .await;
    // The running-images pass reads the pull secret and the Image CR's CA ConfigMap:
    // until one pass has ended (it starts a settle period after the Lease is taken).
    let metrics = reconciler.metrics_addr;
    c.until("a running-images pass", async |_: &Cluster| {
        testkit::cluster::plain_get(metrics, "/metrics")
            .await
            .lines()
            .any(|l| {
                l.strip_prefix("cip_webhook_running_images_last_pass_timestamp_seconds ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|t| t > 0.0)
            })
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let log = reconciler.log();
    assert!(reconciler.terminate().await.success(), "{log}");
    assert!(standby.terminate().await.success());
    c.stop_webhook().await;
    assert!(!log.contains("ValidatingAdmissionPolicy"), "{log}");
    // The watches end with the processes; their audit records are written then.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    assert_eq!(forbidden(&c, SERVICE_ACCOUNT), Vec::<String>::new());
    assert_eq!(forbidden(&c, RECONCILER_ACCOUNT), Vec::<String>::new());
    assert_exactly(
        "admission",
        &requests_of(&c, SERVICE_ACCOUNT),
        &admission_rules,
    );
    assert_exactly(
        "reconciler",
        &requests_of(&c, RECONCILER_ACCOUNT),
        &reconciler_rules,
    );
}

/// The ValidatingAdmissionPolicy, evaluated by the API server: with its own credentials
/// the reconciler cannot touch the MCO's MachineConfigs, other names, or unlabelled ones;
/// other users are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_may_write_only_our_machine_configs() {
    let c = Cluster::real_bare(&testkit::upstream::MCO_CRDS).await;
    c.install_access().await;
    c.seed_files(&["examples/machineconfigs/01-worker-container-runtime.yaml"])
        .await;
    let mco_owned = json!({
        "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfig",
        "metadata": {"name": "99-worker-generated-registries",
            "labels": {"machineconfiguration.openshift.io/role": "worker"},
            "annotations": {"machineconfiguration.openshift.io/generated-by-controller-version": "v4.18"}},
        "spec": {"config": {"ignition": {"version": "3.2.0"}}}
    });
    c.seed(mco_owned).await;
    let reconciler = c.kubeconfig_for(RECONCILER_ACCOUNT, &[]).await;
    let ours = |name: &str, labelled: bool| {
        let mut mc = json!({
            "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfig",
            "metadata": {"name": name, "labels": {"machineconfiguration.openshift.io/role": "worker"}},
            "spec": {"config": {"ignition": {"version": "3.2.0"}}}
        });
        if labelled {
            mc["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("cip-webhook");
        }
        c.write(&format!("{name}.json"), mc.to_string())
    };
    let denied = |run: &Run, why: &str| {
        assert!(!run.ok, "{run:?}");
        assert!(
            run.stderr.contains("ValidatingAdmissionPolicy 'cip-webhook-reconciler-machineconfigs' with binding 'cip-webhook-reconciler-machineconfigs' denied request")
                && run.stderr.contains(why),
            "{run:?}"
        );
    };
    // An update as the reconciler makes it: a PUT of the object read (its RBAC has no
    // `get`, so not `kubectl label`, which reads first).
    let relabel = async |kubeconfig: &std::path::Path, name: &str| {
        let mut mc = c.machine_config(name).await.unwrap();
        mc["metadata"]["labels"]["x"] = json!("y");
        let file = c.write(&format!("{name}-relabelled.json"), mc.to_string());
        let path = format!("/apis/machineconfiguration.openshift.io/v1/machineconfigs/{name}");
        c.kubectl_as(kubeconfig, &["replace", "--raw", &path, "-f", &file])
            .await
    };
    // Its own MachineConfig: create, update, delete.
    let name = "99-worker-generated-imagepolicies";
    let file = ours(name, true);
    let run = c
        .kubectl_as(&reconciler, &["create", "--validate=false", "-f", &file])
        .await;
    assert!(run.ok, "{run:?}");
    let run = relabel(&reconciler, name).await;
    assert!(run.ok, "{run:?}");
    let run = c
        .kubectl_as(&reconciler, &["delete", "machineconfig", name])
        .await;
    assert!(run.ok, "{run:?}");
    let file = ours("99-worker-generated-imagepolicies", false);
    denied(
        &c.kubectl_as(&reconciler, &["create", "--validate=false", "-f", &file])
            .await,
        "labelled app.kubernetes.io/managed-by=cip-webhook",
    );
    let file = ours("00-worker-anything", true);
    denied(
        &c.kubectl_as(&reconciler, &["create", "--validate=false", "-f", &file])
            .await,
        "cip-webhook writes only 99-<pool>-generated-imagepolicies",
    );
    denied(
        &relabel(&reconciler, "99-worker-generated-registries").await,
        "belongs to the machine-config-operator",
    );
    denied(
        &c.kubectl_as(
            &reconciler,
            &["delete", "machineconfig", "01-worker-container-runtime"],
        )
        .await,
        "cip-webhook writes only",
    );
    // Anyone else (the MCO, an admin) is not matched by the policy.
    let run = relabel(&c.kubeconfig(), "99-worker-generated-registries").await;
    assert!(run.ok, "{run:?}");
}

/// Stand-ins for the monitoring operator's CRDs (not shipped; shape only).
const SERVICEMONITOR_CRD: &str = "tests/fixtures/crds/servicemonitors.yaml";
const PROMETHEUSRULE_CRD: &str = "tests/fixtures/crds/prometheusrules.yaml";

/// `oc apply -k` of the OpenShift overlay, then the pods as its Deployments run them
/// (no kubelet here: the harness starts the processes with the Deployments' arguments).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openshift_overlay_installs_and_serves_the_seed_flow() {
    let mut c = Cluster::real_bare(&[
        Crd::ClusterImagePolicyV1alpha1,
        Crd::Image,
        Crd::ClusterVersion,
        Crd::MachineConfig,
        Crd::MachineConfigPool,
    ])
    .await;
    c.api()
        .install_crd_files(&[
            root().join(SERVICEMONITOR_CRD),
            root().join(PROMETHEUSRULE_CRD),
        ])
        .await;
    c.seed_files(&["examples/clusterversion.yaml", "examples/pools.yaml"])
        .await;
    c.seed(json!({"apiVersion": "config.openshift.io/v1", "kind": "Image", "metadata": {"name": "cluster"}, "spec": {}}))
        .await;
    // Every OpenShift cluster has it (the overlay grants the reconciler its pull secret).
    c.seed(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "openshift-config"}}),
    )
    .await;
    let run = c
        .kubectl(&[
            "apply",
            "--validate=false",
            "-k",
            "manifests/overlays/openshift",
        ])
        .await;
    assert!(run.ok, "{run:?}");
    assert!(
        run.stdout.contains("deployment.apps/cip-webhook created"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("servicemonitor.monitoring.coreos.com/cip-webhook created"),
        "{}",
        run.stdout
    );

    // What service-ca does: the CA into every webhook of the annotated configurations;
    // and what a Service would do here: the URL of the local port (no kube-proxy).
    for mut stored in [
        c.list(
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
        )
        .await,
        c.list(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
        )
        .await,
    ] {
        let stored = stored.remove(0);
        assert_eq!(
            stored["metadata"]["annotations"]["service.beta.openshift.io/inject-cabundle"],
            "true"
        );
    }
    c.register_webhooks().await;

    // The pods as the Deployments run them: their arguments (addresses and files are
    // the harness's).
    let args_of = async |name: &str| -> Vec<String> {
        let deployment = c.get("apps", "deployments", NAMESPACE, name).await.unwrap();
        deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .skip(1)
            .filter(|a| {
                !a.starts_with("--listen=")
                    && !a.starts_with("--metrics-listen=")
                    && !a.starts_with("--metrics-tls-")
                    && !a.starts_with("--tls-")
            })
            .collect()
    };
    let admission = args_of("cip-webhook").await;
    let reconciler = args_of("cip-webhook-reconciler").await;
    let admission: Vec<&str> = admission.iter().map(String::as_str).collect();
    c.start_webhook(&admission).await;
    let reconciler: Vec<&str> = reconciler.iter().map(String::as_str).collect();
    let reconciler = c
        .spawn_reconciler(RECONCILER_ACCOUNT, "reconciler-0", &reconciler)
        .await;

    let run = c.apply("examples/p0.yaml").await;
    assert!(run.ok, "{run:?}\n{}", c.webhook_log());
    assert!(
        c.webhook_log()
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"verdict\":\"allowed\"")),
        "JSON decision logs"
    );
    c.until("MachineConfigs written", async |c: &Cluster| {
        c.machine_config("99-worker-generated-imagepolicies")
            .await
            .is_some()
    })
    .await;
    assert!(c
        .get(
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            "cip-webhook-reconcile"
        )
        .await
        .is_some());
    // Admission wrote nothing: every MachineConfig write came from the reconciler.
    let writers: BTreeSet<String> = c
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.resource == "machineconfigs" && r.is_write())
        .map(|r| r.user)
        .collect();
    assert_eq!(writers, BTreeSet::from([RECONCILER_ACCOUNT.to_string()]));
    assert!(reconciler.log().lines().any(|l| l.starts_with('{')));

    // /metrics as the overlay serves it (--metrics-auth): the monitoring stack's accounts
    // read it, another account is refused, no token is unauthorized; probes stay open.
    let monitoring = c
        .api()
        .token("openshift-monitoring", "prometheus-k8s")
        .await;
    let workload = c
        .api()
        .token(
            "openshift-user-workload-monitoring",
            "prometheus-user-workload",
        )
        .await;
    let intruder = c.api().token("default", "intruder").await;
    for addr in [reconciler.metrics_addr, c.metrics_addr()] {
        assert_eq!(plain_get_as(addr, "/metrics", None).await, "Unauthorized\n");
        assert_eq!(
            plain_get_as(addr, "/metrics", Some("not-a-token")).await,
            "Unauthorized\n"
        );
        let refused = plain_get_as(addr, "/metrics", Some(&intruder)).await;
        assert!(
            refused.starts_with(
                "Forbidden: system:serviceaccount:default:intruder may not get /metrics"
            ),
            "{refused}"
        );
        for token in [&monitoring, &workload] {
            let page = plain_get_as(addr, "/metrics", Some(token)).await;
            assert!(page.contains("cip_webhook_"), "{page}");
        }
        assert!(plain_get(addr, "/healthz").await.starts_with("ok"));
    }
    // A scraper's token is reviewed once a minute, not on every scrape.
    let reviews = || {
        c.api()
            .requests()
            .into_iter()
            .filter(|r| r.resource == "tokenreviews" && r.user == RECONCILER_ACCOUNT)
            .count()
    };
    let before = reviews();
    assert!(before >= 4, "the tokens above were reviewed: {before}");
    for _ in 0..3 {
        let page = plain_get_as(reconciler.metrics_addr, "/metrics", Some(&monitoring)).await;
        assert!(page.contains("cip_webhook_"));
    }
    assert_eq!(reviews(), before);
}
