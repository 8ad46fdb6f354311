//! The deployment manifests as files: both overlays render, every object is well formed,
//! the webhook wiring matches what `serve` listens on, rollouts and drains never take the
//! last replica, the alerts name real metrics. (Installed on a real API server, with
//! their RBAC and admission policy in force: `tests/real_apiserver/manifests.rs`.)

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use testkit::cluster::{NAMESPACE, SERVICE};
use testkit::manifests::{allowed, find, kustomize, kustomize_dir};
use testkit::paths::root;

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
        "ValidatingAdmissionPolicy" => typed::<adm::ValidatingAdmissionPolicy>(o),
        "ValidatingAdmissionPolicyBinding" => typed::<adm::ValidatingAdmissionPolicyBinding>(o),
        "CustomResourceDefinition" => {
            typed::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(o)
        }
        // Custom resources of operators we do not ship: checked by shape.
        "ServiceMonitor" => assert!(o["spec"]["endpoints"][0]["port"].is_string()),
        "PrometheusRule" => {
            for rule in o["spec"]["groups"][0]["rules"].as_array().unwrap() {
                assert!(rule["alert"].is_string() && rule["expr"].is_string() && rule["for"].is_string());
                assert!(rule["labels"]["severity"].is_string() && rule["annotations"]["summary"].is_string());
            }
        }
        "Certificate" => assert!(o["spec"]["secretName"].is_string() && o["spec"]["issuerRef"]["name"].is_string()),
        "Issuer" => assert!(o["spec"]["selfSigned"].is_object() || o["spec"]["ca"]["secretName"].is_string()),
        other => panic!("unexpected kind {other}"),
    }
}

#[tokio::test]
async fn overlays_render_well_formed_objects() {
    for overlay in ["openshift", "openshift-mco-renders", "kubernetes"] {
        let objects = kustomize(overlay).await;
        for o in &objects {
            well_formed(o);
        }
        // Platform-owned CRDs are never part of an install: `kubectl delete -k` of an
        // overlay must not take the MachineConfig CRD (and every MachineConfig) with it.
        assert!(
            objects
                .iter()
                .all(|o| o["kind"] != "CustomResourceDefinition"),
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

/// Where the MCO renders, no reconciler and nothing that may write a MachineConfig; on
/// OpenShift the admission pods are system-cluster-critical.
#[tokio::test]
async fn the_openshift_overlays_differ_only_by_the_reconciler() {
    let full = kustomize("openshift").await;
    let admission_only = kustomize("openshift-mco-renders").await;
    assert!(full
        .iter()
        .any(|o| o["metadata"]["name"] == "cip-webhook-reconciler"));
    assert!(!admission_only
        .iter()
        .any(|o| o["metadata"]["name"] == "cip-webhook-reconciler"
            || o["kind"] == "ValidatingAdmissionPolicy"));
    let writes_machine_configs = admission_only
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|res| res.iter().any(|x| x == "machineconfigs"))
        })
        .any(|r| {
            r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| !matches!(v.as_str(), Some("get" | "list" | "watch")))
        });
    assert!(!writes_machine_configs);
    for objects in [&full, &admission_only] {
        let deployment = find(objects, "Deployment", "cip-webhook");
        assert_eq!(
            deployment["spec"]["template"]["spec"]["priorityClassName"],
            "system-cluster-critical"
        );
        assert!(objects.iter().any(|o| o["kind"] == "PrometheusRule"));
    }
}

/// Admission copies the reconciler's running-images judgement from its Service: over TLS
/// with the service CA and a reviewed token on OpenShift (and may, by RBAC and the
/// NetworkPolicy), plain HTTP on Kubernetes; not at all without the reconciler.
#[tokio::test]
async fn admission_copies_the_running_images_from_the_reconciler() {
    let from = |objects: &[Value]| {
        let deployment = find(objects, "Deployment", "cip-webhook");
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .clone();
        let count = args
            .iter()
            .filter(|a| {
                a.as_str()
                    .unwrap_or_default()
                    .starts_with("--running-images-from=")
            })
            .count();
        (args, count)
    };
    let openshift = kustomize("openshift").await;
    let (args, count) = from(&openshift);
    assert_eq!(count, 1, "{args:?}");
    let url = "cip-webhook-reconciler.cip-webhook.svc:9090/running-images";
    assert_eq!(
        arg(&args, "--running-images-from"),
        format!("https://{url}")
    );
    let ca = arg(&args, "--running-images-ca");
    let deployment = find(&openshift, "Deployment", "cip-webhook");
    let mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    assert!(mounts
        .iter()
        .any(|m| ca.starts_with(m["mountPath"].as_str().unwrap())));
    assert_eq!(
        arg(&args, "--running-images-token"),
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    let reader = find(
        &openshift,
        "ClusterRole",
        "cip-webhook-running-images-reader",
    );
    assert_eq!(reader["rules"][0]["nonResourceURLs"][0], "/running-images");
    let binding = find(
        &openshift,
        "ClusterRoleBinding",
        "cip-webhook-running-images-reader",
    );
    assert_eq!(binding["subjects"][0]["name"], "cip-webhook");
    let policy = find(&openshift, "NetworkPolicy", "cip-webhook-reconciler");
    let from_admission = &policy["spec"]["ingress"][0]["from"];
    assert!(
        from_admission
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "webhook"),
        "{from_admission}"
    );
    let (args, _) = from(&kustomize("kubernetes").await);
    assert_eq!(arg(&args, "--running-images-from"), format!("http://{url}"));
    let (_, count) = from(&kustomize("openshift-mco-renders").await);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn webhook_wiring_matches_serve() {
    for overlay in ["openshift", "openshift-mco-renders", "kubernetes"] {
        let objects = kustomize(overlay).await;
        let service = find(&objects, "Service", SERVICE);
        let deployment = find(&objects, "Deployment", "cip-webhook");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args = container["args"].as_array().unwrap();
        assert_eq!(args[0], "serve");
        // Admission replicas can write nothing: the reconciler is its own Deployment.
        assert_eq!(arg(args, "--mode"), "admission-only", "{overlay}");
        let listen: std::net::SocketAddr = arg(args, "--listen").parse().unwrap();
        assert!(
            listen.ip().is_unspecified() && listen.is_ipv6(),
            "dual-stack: {listen}"
        );
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
        let issued = if overlay.starts_with("openshift") {
            service["metadata"]["annotations"]["service.beta.openshift.io/serving-cert-secret-name"]
                .clone()
        } else {
            find(&objects, "Certificate", "cip-webhook")["spec"]["secretName"].clone()
        };
        assert_eq!(issued, secret, "{overlay}");
        for (kind, path) in [
            (
                "ValidatingWebhookConfiguration",
                cip_webhook::webhook::server::VALIDATE_PATH,
            ),
            (
                "MutatingWebhookConfiguration",
                cip_webhook::webhook::server::MUTATE_PATH,
            ),
        ] {
            let config = find(&objects, kind, "cip-webhook");
            let injected = &config["metadata"]["annotations"];
            if overlay.starts_with("openshift") {
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
                    cip_webhook::webhook::admission::DEFAULT_EXEMPT_USER
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

fn memory_mib(q: &Value) -> u64 {
    let q = q.as_str().unwrap();
    q.strip_suffix("Mi")
        .map(|n| n.parse().unwrap())
        .unwrap_or_else(|| panic!("{q}: use Mi"))
}

/// Rollouts and drains never refuse a request: SIGTERM timing within the grace period,
/// PDBs that let unready pods go, spread over nodes and zones, no CPU limit, a memory
/// request and limit, images pinned (no `:latest`), the restricted-v2 SCC on OpenShift.
#[tokio::test]
async fn deployments_roll_and_drain_without_refusing_requests() {
    for overlay in ["openshift", "kubernetes"] {
        let objects = kustomize(overlay).await;
        let deployments: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Deployment")
            .collect();
        assert_eq!(deployments.len(), 2, "{overlay}: admission and reconciler");
        for d in deployments {
            let name = d["metadata"]["name"].as_str().unwrap();
            let pod = &d["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            let args = container["args"].as_array().unwrap();
            let image = container["image"].as_str().unwrap();
            assert!(
                image.contains('/')
                    && !image.ends_with(":latest")
                    && (image.contains(':') || image.contains('@')),
                "{overlay}/{name}: {image}"
            );
            let resources = &container["resources"];
            assert!(
                resources["limits"].get("cpu").is_none(),
                "{overlay}/{name}: no CPU limit"
            );
            assert!(memory_mib(&resources["requests"]["memory"]) >= 64);
            assert!(
                memory_mib(&resources["limits"]["memory"])
                    >= 2 * memory_mib(&resources["requests"]["memory"])
            );
            let keys: BTreeSet<&str> = pod["topologySpreadConstraints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["topologyKey"].as_str().unwrap())
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"])
            );
            let labels = &d["spec"]["template"]["metadata"]["labels"];
            let pdb = objects
                .iter()
                .find(|o| {
                    o["kind"] == "PodDisruptionBudget"
                        && o["spec"]["selector"]["matchLabels"]
                            .as_object()
                            .unwrap()
                            .iter()
                            .all(|(k, v)| &labels[k] == v)
                })
                .unwrap_or_else(|| panic!("{overlay}/{name}: no PDB"));
            assert_eq!(pdb["spec"]["maxUnavailable"], 1);
            assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
            assert!(pdb["spec"].get("minAvailable").is_none());
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            if args[0] == "serve" {
                let delay: u64 = arg(args, "--shutdown-delay").parse().unwrap();
                let drain: u64 = arg(args, "--shutdown-grace").parse().unwrap();
                assert!(delay >= 5);
                // The delay, the drain, and the Lease release (5 s) fit in the grace.
                assert!(grace >= delay + drain + 5, "{overlay}/{name}: {grace}");
                assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
            } else {
                assert_eq!(args[0], "reconcile", "{overlay}/{name}");
                assert_eq!(arg(args, "--mode"), "auto");
                assert_eq!(pod["serviceAccountName"], "cip-webhook-reconciler");
                // On OpenShift the metrics port speaks TLS (service CA), probes too.
                let scheme = if args.iter().any(|a| {
                    a.as_str()
                        .is_some_and(|a| a.starts_with("--metrics-tls-cert="))
                }) {
                    "HTTPS"
                } else {
                    "HTTP"
                };
                for probe in ["readinessProbe", "livenessProbe"] {
                    assert_eq!(container[probe]["httpGet"]["port"], "metrics");
                    assert_eq!(container[probe]["httpGet"]["scheme"], scheme);
                }
            }
            let listen: std::net::SocketAddr = arg(args, "--metrics-listen").parse().unwrap();
            let metrics = container["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "metrics")
                .unwrap();
            assert_eq!(metrics["containerPort"], listen.port());
            let scc =
                &d["spec"]["template"]["metadata"]["annotations"]["openshift.io/required-scc"];
            if overlay.starts_with("openshift") {
                assert_eq!(scc, "restricted-v2", "{name}");
            } else {
                assert!(scc.is_null());
            }
        }
        // The admission port is open to all; metrics only to the monitoring namespaces.
        for np in objects.iter().filter(|o| o["kind"] == "NetworkPolicy") {
            for rule in np["spec"]["ingress"].as_array().unwrap() {
                let port = &rule["ports"][0]["port"];
                if port == 8443 {
                    assert!(rule.get("from").is_none());
                } else {
                    assert_eq!(port, 9090);
                    let from = &rule["from"][0]["namespaceSelector"]["matchExpressions"][0];
                    assert_eq!(from["key"], "kubernetes.io/metadata.name");
                    assert!(from["values"]
                        .as_array()
                        .unwrap()
                        .contains(&json!("openshift-user-workload-monitoring")));
                }
            }
        }
        let ns = find(&objects, "Namespace", NAMESPACE);
        assert!(ns["metadata"]["labels"]["openshift.io/cluster-monitoring"].is_null());
    }
}

/// Platform monitoring is opt-in: the component labels the namespace and lets
/// prometheus-k8s discover the pods.
#[tokio::test]
async fn platform_monitoring_is_an_opt_in_component() {
    // Kustomize takes relative paths only: an overlay beside the others.
    let dir = tempfile::Builder::new()
        .prefix("platform-monitoring-")
        .tempdir_in(root().join("manifests/overlays"))
        .unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../openshift]\ncomponents: [../../components/platform-monitoring]\n",
    )
    .unwrap();
    let objects = kustomize_dir(dir.path().to_str().unwrap()).await;
    let ns = find(&objects, "Namespace", NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["openshift.io/cluster-monitoring"],
        "true"
    );
    let binding = find(&objects, "RoleBinding", "prometheus-k8s");
    assert_eq!(binding["subjects"][0]["namespace"], "openshift-monitoring");
    let role = allowed(
        &find(&objects, "Role", "prometheus-k8s")["rules"],
        NAMESPACE,
    );
    for resource in ["services", "endpoints", "pods"] {
        assert!(role.contains(&(NAMESPACE.into(), "".into(), resource.into(), "list".into())));
    }
}

/// Every `cip_webhook_*` series an alert reads is one the binary exports, with the
/// labels the alert selects on.
#[test]
fn alerts_read_metrics_the_binary_exports() {
    let objects = futures_executor(kustomize("openshift"));
    let rule = find(&objects, "PrometheusRule", "cip-webhook");
    let metrics = cip_webhook::metrics::Metrics::default();
    metrics.reconciled("ok", 0.1);
    metrics.reconciled("error", 0.1);
    metrics.reconcile_error("api");
    metrics.machine_config_written("worker", "update");
    metrics.set_policies([]);
    metrics.set_ready(true);
    metrics.set_cert_expiry(1);
    let exported = metrics.encode();
    let names = regex::Regex::new(r"cip_webhook_[a-z_]+(\{[^}]*\})?").unwrap();
    let alerts: Vec<&Value> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let wanted: BTreeSet<&str> = alerts
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    for name in [
        "CipWebhookDown",
        "CipWebhookNotReady",
        "CipWebhookCertificateExpiring",
        "CipWebhookReconcileFailing",
        "CipWebhookNoReconcileLeader",
        "CipWebhookReviewsWaitingForMemory",
        "CipWebhookPoliciesPending",
        "CipWebhookMachineConfigChurn",
    ] {
        assert!(wanted.contains(name), "{name}");
    }
    // Every alert has a runbook, a heading of the operations guide, and pages nobody at night.
    let readme = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap();
        let url = alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        assert!(
            url.ends_with(&format!("docs/operations.md#{}", name.to_lowercase())),
            "{name}: {url}"
        );
        assert!(readme.contains(&format!("\n#### {name}\n")), "{name}");
        assert_eq!(alert["labels"]["severity"], "warning", "{name}");
    }
    for alert in alerts {
        let expr = alert["expr"].as_str().unwrap();
        for m in names.captures_iter(expr) {
            let name = m.get(0).unwrap().as_str();
            let bare = name.split('{').next().unwrap();
            assert!(
                exported
                    .lines()
                    .any(|l| l.starts_with(&format!("{bare}{{"))
                        || l.starts_with(&format!("{bare} "))),
                "{}: {bare} is not exported:\n{exported}",
                alert["alert"]
            );
            // Label matchers on our own labels name values the binary uses.
            if let Some(selector) = m.get(1) {
                for matcher in selector.as_str().trim_matches(['{', '}']).split(',') {
                    let (label, value) = matcher.split_once('=').unwrap();
                    let value = value.trim_matches('"');
                    if label.trim() == "service" {
                        continue;
                    }
                    assert!(
                        exported.lines().any(|l| l.starts_with(bare)
                            && l.contains(&format!("{}=\"{value}\"", label.trim()))),
                        "{}: {bare} never has {label}={value}:\n{exported}",
                        alert["alert"]
                    );
                }
            }
        }
    }
}

fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The image: base images pinned by digest, OCI labels, one Dockerfile for amd64 and
/// arm64, and a build context without `target/` or `.git` (hadolint runs in
/// scripts/test.sh).
#[test]
fn the_image_is_pinned_labelled_and_multi_arch() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2);
    for from in froms {
        let image = from
            .split_whitespace()
            .find(|w| w.contains('@'))
            .unwrap_or(from);
        let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{from}"
        );
    }
    assert!(
        dockerfile.contains("--platform=$BUILDPLATFORM") && dockerfile.contains("ARG TARGETARCH")
    );
    for label in ["title", "version", "revision", "source", "licenses"] {
        assert!(
            dockerfile.contains(&format!("org.opencontainers.image.{label}=")),
            "{label}"
        );
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for path in ["target/", ".git/"] {
        assert!(ignore.lines().any(|l| l == path), "{path}");
    }
}
