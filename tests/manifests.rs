//! The deployment manifests: both overlays render, every object is well formed, the
//! webhook wiring matches what `serve` listens on, the RBAC rules are exactly the requests
//! the binary makes, and the OpenShift overlay installs and works on the API simulator.

#[path = "common/cluster.rs"]
mod cluster;

use std::collections::BTreeSet;

use cluster::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

async fn kustomize(overlay: &str) -> Vec<Value> {
    let out = tokio::process::Command::new("kubectl")
        .args(["kustomize", &format!("manifests/overlays/{overlay}")])
        .current_dir(root())
        .output()
        .await
        .expect("kubectl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} missing"))
}

/// Decodes into the typed API struct and back: a misspelt or misplaced field is dropped
/// (and shows as a difference), a wrong type fails to decode.
fn typed<T: DeserializeOwned + Serialize>(v: &Value) {
    let t: T = serde_path_to_error::deserialize(v.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", v["kind"], v["metadata"]["name"]));
    let back = serde_json::to_value(&t).unwrap();
    let mut differences = Vec::new();
    diff(v, &back, String::new(), &mut differences);
    assert!(
        differences.is_empty(),
        "{} {}: not in its schema: {differences:?}",
        v["kind"],
        v["metadata"]["name"]
    );
}

fn diff(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => diff(va, vb, format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(va, vb, format!("{path}[{i}]"), out);
            }
        }
        // Schema bounds are floats in the typed API: 0 and 0.0 are the same value.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a != b => out.push(path),
        _ => {}
    }
}

fn well_formed(o: &Value) {
    use k8s_openapi::api::{admissionregistration::v1 as adm, apps::v1 as apps, core::v1 as core};
    use k8s_openapi::api::{networking::v1 as net, policy::v1 as policy, rbac::v1 as rbac};
    match o["kind"].as_str().unwrap() {
        "Namespace" => typed::<core::Namespace>(o),
        "ServiceAccount" => typed::<core::ServiceAccount>(o),
        "Service" => typed::<core::Service>(o),
        "Deployment" => typed::<apps::Deployment>(o),
        "PodDisruptionBudget" => typed::<policy::PodDisruptionBudget>(o),
        "NetworkPolicy" => typed::<net::NetworkPolicy>(o),
        "ClusterRole" => typed::<rbac::ClusterRole>(o),
        "ClusterRoleBinding" => typed::<rbac::ClusterRoleBinding>(o),
        "Role" => typed::<rbac::Role>(o),
        "RoleBinding" => typed::<rbac::RoleBinding>(o),
        "ValidatingWebhookConfiguration" => typed::<adm::ValidatingWebhookConfiguration>(o),
        "MutatingWebhookConfiguration" => typed::<adm::MutatingWebhookConfiguration>(o),
        "CustomResourceDefinition" => {
            typed::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(o)
        }
        // Custom resources of operators we do not ship: checked by shape.
        "ServiceMonitor" => assert!(o["spec"]["endpoints"][0]["port"].is_string()),
        "Certificate" => assert!(o["spec"]["secretName"].is_string() && o["spec"]["issuerRef"]["name"].is_string()),
        "Issuer" => assert!(o["spec"]["selfSigned"].is_object() || o["spec"]["ca"]["secretName"].is_string()),
        other => panic!("unexpected kind {other}"),
    }
}

#[tokio::test]
async fn overlays_render_well_formed_objects() {
    for overlay in ["openshift", "kubernetes"] {
        let objects = kustomize(overlay).await;
        for o in &objects {
            well_formed(o);
        }
        let crds = objects
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .count();
        assert_eq!(
            crds,
            if overlay == "kubernetes" { 5 } else { 0 },
            "{overlay}"
        );
    }
}

fn arg<'a>(args: &'a [Value], flag: &str) -> &'a str {
    args.iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
        .unwrap_or_else(|| panic!("{flag} missing"))
}

#[tokio::test]
async fn webhook_wiring_matches_serve() {
    for overlay in ["openshift", "kubernetes"] {
        let objects = kustomize(overlay).await;
        let service = find(&objects, "Service", SERVICE);
        let deployment = find(&objects, "Deployment", "cip-webhook");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args = container["args"].as_array().unwrap();
        assert_eq!(args[0], "serve");
        // Stands down by itself where the MCO renders policies (SPEC §8.2).
        assert_eq!(arg(args, "--mode"), "auto", "{overlay}");
        let listen: std::net::SocketAddr = arg(args, "--listen").parse().unwrap();
        let port = &service["spec"]["ports"][0];
        assert_eq!(port["port"], 443);
        let named = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == port["targetPort"])
            .unwrap();
        assert_eq!(named["containerPort"], listen.port());
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(container[probe]["httpGet"]["port"], port["targetPort"]);
            assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS");
        }
        // The pod's labels are what the Service, the PDB and the NetworkPolicy select.
        let labels = deployment["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        for (kind, selector) in [
            ("Service", &service["spec"]["selector"]),
            (
                "PodDisruptionBudget",
                &find(&objects, "PodDisruptionBudget", "cip-webhook")["spec"]["selector"]
                    ["matchLabels"],
            ),
            (
                "NetworkPolicy",
                &find(&objects, "NetworkPolicy", "cip-webhook")["spec"]["podSelector"]
                    ["matchLabels"],
            ),
        ] {
            for (k, v) in selector.as_object().unwrap() {
                assert_eq!(labels.get(k), Some(v), "{kind} selects {k}={v}");
            }
        }
        // The serving certificate: the Secret the overlay issues is the one mounted.
        let secret = pod["volumes"][0]["secret"]["secretName"].as_str().unwrap();
        let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
        assert_eq!(arg(args, "--tls-cert"), format!("{mount}/tls.crt"));
        assert_eq!(arg(args, "--tls-key"), format!("{mount}/tls.key"));
        let issued = if overlay == "openshift" {
            service["metadata"]["annotations"]["service.beta.openshift.io/serving-cert-secret-name"]
                .clone()
        } else {
            find(&objects, "Certificate", "cip-webhook")["spec"]["secretName"].clone()
        };
        assert_eq!(issued, secret, "{overlay}");
        for (kind, path) in [
            (
                "ValidatingWebhookConfiguration",
                cip_webhook::server::VALIDATE_PATH,
            ),
            (
                "MutatingWebhookConfiguration",
                cip_webhook::server::MUTATE_PATH,
            ),
        ] {
            let config = find(&objects, kind, "cip-webhook");
            let injected = &config["metadata"]["annotations"];
            if overlay == "openshift" {
                assert_eq!(
                    injected["service.beta.openshift.io/inject-cabundle"],
                    "true"
                );
            } else {
                assert_eq!(
                    injected["cert-manager.io/inject-ca-from"],
                    "cip-webhook/cip-webhook"
                );
            }
            for hook in config["webhooks"].as_array().unwrap() {
                let svc = &hook["clientConfig"]["service"];
                assert_eq!(svc["name"], service["metadata"]["name"]);
                assert_eq!(svc["namespace"], service["metadata"]["namespace"]);
                assert_eq!(svc["port"], port["port"]);
                assert_eq!(svc["path"], path);
                assert_eq!(hook["sideEffects"], "None");
                assert_eq!(hook["failurePolicy"], "Fail");
                assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
                // The API server does not call us for the user the server exempts.
                let conditions = hook["matchConditions"].as_array().unwrap();
                let cvo = format!(
                    "request.userInfo.username != '{}'",
                    cip_webhook::admission::DEFAULT_EXEMPT_USER
                );
                assert!(
                    conditions.iter().any(|c| c["expression"] == cvo),
                    "{}: {conditions:?}",
                    hook["name"]
                );
            }
        }
    }
}

/// (namespace or "", group, resource[/subresource], verb) a set of RBAC rules allows.
fn allowed(rules: &Value, namespace: &str) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        namespace.to_string(),
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                        verb.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_is_exactly_what_the_binary_uses() {
    let objects = kustomize("openshift").await;
    let mut rules = allowed(&find(&objects, "ClusterRole", "cip-webhook")["rules"], "");
    rules.extend(allowed(
        &find(&objects, "Role", "cip-webhook")["rules"],
        NAMESPACE,
    ));

    // Everything the binary does: admission state, a policy written, one held back
    // (status and an Event), a namespace's policy (its status), the policy deleted
    // (MachineConfigs reverted), the Lease.
    let mut c = Cluster::start(&[
        CIP_V1_CRD,
        IMAGEPOLICIES_V1_CRD,
        IMAGES_CRD,
        CLUSTERVERSIONS_CRD,
        FEATUREGATES_CRD,
        IDMS_CRD,
        ITMS_CRD,
        ICSP_CRD,
        MCO_CRDS,
    ])
    .await;
    c.seed_files(&[
        "examples/image.yaml",
        "examples/clusterversion.yaml",
        "examples/pools.yaml",
        "examples/machineconfigs/01-worker-container-runtime.yaml",
        "examples/machineconfigs/99-worker-generated-registries.yaml",
    ]);
    c.start_webhook(&["--lease-duration", "2"]).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("written", |s| {
        machine_config(s, "99-worker-generated-imagepolicies").is_some()
    })
    .await;
    c.sim
        .seed(signed_apps("blocked", &["blocked.example.com/app"]))
        .unwrap();
    c.until("event", |s| !s.list("events.k8s.io", "events").is_empty())
        .await;
    c.sim
        .seed(team_policy(
            "team-a",
            "team",
            &["registry.example.com/team-a"],
        ))
        .unwrap();
    c.until("image policy status", |s| {
        image_policy(s, "team-a", "team").is_some_and(|p| p["status"]["conditions"].is_array())
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
    c.until("reverted", |s| {
        machine_config(s, "99-worker-generated-imagepolicies").is_none()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    c.stop_webhook().await;

    let used: BTreeSet<(String, String, String, String)> = c
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.user == SERVICE_ACCOUNT && r.verb != "discovery")
        .map(|r| {
            let resource = if r.subresource.is_empty() {
                r.resource
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            // The ClusterRole's rules hold in every namespace; the Role's in ours.
            let namespace = if r.namespace == NAMESPACE {
                r.namespace
            } else {
                String::new()
            };
            (namespace, r.group, resource, r.verb)
        })
        .collect();
    assert!(!used.is_empty());
    let missing: Vec<_> = used.difference(&rules).collect();
    assert!(
        missing.is_empty(),
        "requests the rules do not allow: {missing:?}"
    );
    let unused: Vec<_> = rules.difference(&used).collect();
    assert!(unused.is_empty(), "rules never used: {unused:?}");
}

const SERVICEMONITOR_CRD: &str = "tests/fixtures/crds/servicemonitors.yaml";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openshift_overlay_installs_and_serves_the_seed_flow() {
    let mut c = Cluster::start_bare(
        &[CIP_V1ALPHA1_CRD, IMAGES_CRD, CLUSTERVERSIONS_CRD, MCO_CRDS],
        &[root().join(SERVICEMONITOR_CRD)],
    )
    .await;
    c.seed_files(&["examples/clusterversion.yaml", "examples/pools.yaml"]);
    c.sim.seed(json!({"apiVersion": "config.openshift.io/v1", "kind": "Image", "metadata": {"name": "cluster"}, "spec": {}})).unwrap();
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

    // What service-ca does: the CA into every webhook of the annotated configurations.
    let bundle = c.ca_bundle();
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let stored = c
            .sim
            .list("admissionregistration.k8s.io", &format!("{kind}s"));
        assert_eq!(
            stored[0]["metadata"]["annotations"]["service.beta.openshift.io/inject-cabundle"],
            "true"
        );
        let n = stored[0]["webhooks"].as_array().unwrap().len();
        let patch: Vec<Value> = (0..n)
            .map(|i| json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}))
            .collect();
        let run = c
            .kubectl(&[
                "patch",
                kind,
                "cip-webhook",
                "--type=json",
                "-p",
                &serde_json::to_string(&patch).unwrap(),
            ])
            .await;
        assert!(run.ok, "{run:?}");
    }

    // The pod as the Deployment runs it: its arguments, its environment.
    let deployment = c
        .sim
        .get("apps", "deployments", NAMESPACE, "cip-webhook")
        .unwrap();
    let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| a != "serve" && !a.starts_with("--listen=") && !a.starts_with("--tls-"))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.start_webhook(&args).await;

    let run = c.apply("examples/p0.yaml").await;
    assert!(run.ok, "{run:?}\n{}", c.webhook_log());
    assert!(
        c.webhook_log()
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"verdict\":\"allowed\"")),
        "JSON decision logs"
    );
    c.until("MachineConfigs written", |s| {
        machine_config(s, "99-worker-generated-imagepolicies").is_some()
    })
    .await;
    assert!(c
        .sim
        .get(
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            "cip-webhook-reconcile"
        )
        .is_some());
}
