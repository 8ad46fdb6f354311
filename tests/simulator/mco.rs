//! cip-webhook beside a stand-in machine-config-operator: both converge with
//! no further writes, the nodes get our policy.json and the MCO's registries.conf, a
//! revert leaves exactly the MCO's view; where the MCO renders policies we write nothing,
//! and an upgrade that turns its rendering on is handed over with no node view, at any
//! moment, lacking a scope. Also: clusters that lack whole APIs.

use std::collections::BTreeMap;
use std::time::Duration;

use apisim::{Logged, Simulator};
use cip_core::ignition::{POLICY_JSON_PATH, SIGSTORE_YAML_PATH};
use serde_json::{json, Value};
use testkit::cluster::sim::*;
use testkit::cluster::*;
use testkit::mco::{current_view, node_view, verifies, StandInMco, MCO_USER};
use testkit::upstream::Crd;

const FIXTURE: &str = "tests/fixtures/openshift-cluster";
const SCOPES: [&str; 2] = ["quay.io/example-org", "registry.example.com:5000/team/app"];
const OURS: [&str; 4] = [
    "99-master-generated-imagepolicies",
    "99-master-generated-registries-imagepolicies",
    "99-worker-generated-imagepolicies",
    "99-worker-generated-registries-imagepolicies",
];

/// An OpenShift 4.18 cluster (the fixture's ClusterVersion, FeatureGate, Image, pools and
/// container-runtime MachineConfigs) with the stand-in MCO running.
async fn openshift(renders_policies: bool) -> (Cluster, StandInMco) {
    let c = Cluster::simulated(&[
        Crd::ClusterImagePolicyV1,
        Crd::Image,
        Crd::ClusterVersion,
        Crd::FeatureGate,
        Crd::MachineConfig,
        Crd::MachineConfigPool,
    ])
    .await;
    c.seed_files(&[
        &format!("{FIXTURE}/cluster.yaml"),
        &format!("{FIXTURE}/machineconfigs/01-master-container-runtime.yaml"),
        &format!("{FIXTURE}/machineconfigs/01-worker-container-runtime.yaml"),
    ])
    .await;
    if renders_policies {
        set_gate(c.sim(), "4.20.1", true);
    }
    // A short resync; the tests also force syncs when they count writes.
    let mco = StandInMco::start(c.sim(), renders_policies, Duration::from_millis(500)).await;
    (c, mco)
}

/// FeatureGate `cluster` and ClusterVersion as they are once the cluster runs `version`.
fn set_gate(sim: &Simulator, version: &str, enabled: bool) {
    let gate = json!([{"name": "SigstoreImageVerification"}]);
    let mut fg = sim
        .get("config.openshift.io", "featuregates", "", "cluster")
        .unwrap();
    let entries = fg["status"]["featureGates"].as_array_mut().unwrap();
    entries.retain(|e| e["version"] != version);
    entries.push(json!({
        "version": version,
        "enabled": if enabled { gate.clone() } else { json!([]) },
        "disabled": if enabled { json!([]) } else { gate },
    }));
    sim.seed(fg).unwrap();
    let mut cv = sim
        .get("config.openshift.io", "clusterversions", "", "version")
        .unwrap();
    cv["status"]["desired"]["version"] = json!(version);
    let history = cv["status"]["history"].as_array_mut().unwrap();
    history.insert(0, json!({"state": "Completed", "version": version}));
    sim.seed(cv).unwrap();
}

fn mc_writes(log: &[Logged]) -> Vec<String> {
    log.iter()
        .filter(|r| {
            r.resource == "machineconfigs"
                && matches!(r.verb.as_str(), "create" | "update" | "patch" | "delete")
        })
        .map(|r| format!("{} {} {}", r.user, r.verb, r.name))
        .collect()
}

fn status_writes(log: &[Logged]) -> usize {
    log.iter()
        .filter(|r| r.resource == "clusterimagepolicies" && r.subresource == "status")
        .count()
}

async fn apply_policy(c: &Cluster) {
    c.apply_value(&signed_apps("signed-apps", &SCOPES)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_the_mco_both_converge_and_a_revert_leaves_its_view() {
    let (mut c, mco) = openshift(false).await;
    let before: Vec<BTreeMap<String, String>> = ["master", "worker"]
        .iter()
        .map(|p| current_view(c.sim(), p))
        .collect();
    assert!(before[1].contains_key("/etc/containers/registries.conf"));
    c.start_webhook(&[]).await;
    c.readyz_says("reconciling (SigstoreImageVerification is not enabled for 4.18.12")
        .await;

    apply_policy(&c).await;
    c.until_sim("the nodes verify both scopes", |s| {
        ["master", "worker"].iter().all(|p| {
            let view = current_view(s, p);
            SCOPES.iter().all(|scope| verifies(&view, scope))
        })
    })
    .await;
    let view = current_view(c.sim(), "worker");
    assert_eq!(
        view["/etc/containers/registries.conf"], before[1]["/etc/containers/registries.conf"],
        "the MCO's registries.conf reaches the nodes"
    );
    // Ours wins the merge for policy.json and keeps the MCO's blocked entry.
    assert!(view[POLICY_JSON_PATH].contains("\"blocked.example.com\": ["));
    for name in [
        "99-master-generated-registries",
        "99-worker-generated-registries",
    ] {
        let theirs = machine_config(c.sim(), name).unwrap();
        assert!(!theirs["metadata"]["labels"]
            .as_object()
            .unwrap()
            .contains_key("app.kubernetes.io/managed-by"));
    }

    // Converged: 20 MCO resyncs, and one of ours, write nothing on either side.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.sim().clear_requests();
    let writes_before = mco.writes.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..20 {
        mco.resync().await;
    }
    let mut cv = c
        .sim()
        .get("config.openshift.io", "clusterversions", "", "version")
        .unwrap();
    cv["metadata"]["annotations"] = json!({"touched": "yes"});
    c.sim().seed(cv).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writes = mc_writes(&c.sim().requests());
    eprintln!(
        "MCO MC: {}",
        serde_json::to_string_pretty(
            &machine_config(c.sim(), "99-worker-generated-registries").unwrap()
        )
        .unwrap()
    );
    eprintln!(
        "after convergence, 20 MCO resyncs: {} MachineConfig writes ({} by the MCO)",
        writes.len(),
        mco.writes.load(std::sync::atomic::Ordering::SeqCst) - writes_before
    );
    assert_eq!(writes, Vec::<String>::new());
    assert_eq!(mco.last_error.lock().unwrap().clone(), None);

    // Revert: deleting every policy leaves exactly the MCO's view.
    let run = c
        .kubectl(&["delete", "clusterimagepolicy", "signed-apps"])
        .await;
    assert!(run.ok, "{run:?}");
    c.until_sim("ours deleted", |s| {
        OURS.iter().all(|n| machine_config(s, n).is_none())
    })
    .await;
    for (pool, view) in ["master", "worker"].iter().zip(&before) {
        assert_eq!(&current_view(c.sim(), pool), view, "{pool}");
    }
    let log = c.sim().requests();
    assert!(
        mc_writes(&log).iter().all(|w| !w.starts_with(MCO_USER)),
        "the MCO had nothing to redo: {:?}",
        mc_writes(&log)
    );
    c.stop_webhook().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_mco_renders_policies_we_write_nothing() {
    let (mut c, _mco) = openshift(true).await;
    c.start_webhook(&[]).await;
    c.readyz_says("standing down (SigstoreImageVerification is enabled for 4.20.1")
        .await;
    c.sim().clear_requests();
    // Admission still answers: a blocked scope is refused, a good policy admitted.
    let blocked = signed_apps("blocked", &["blocked.example.com/app"]);
    let run = c.apply(&c.write("blocked.json", blocked.to_string())).await;
    assert!(
        !run.ok && run.stderr.contains("nested inside blockedRegistries"),
        "{run:?}"
    );
    apply_policy(&c).await;
    c.until_sim("the MCO renders the policy", |s| {
        SCOPES
            .iter()
            .all(|scope| verifies(&current_view(s, "worker"), scope))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = c.sim().requests();
    let ours: Vec<String> = mc_writes(&log)
        .into_iter()
        .filter(|w| w.starts_with(SERVICE_ACCOUNT))
        .collect();
    assert_eq!(ours, Vec::<String>::new());
    assert_eq!(status_writes(&log), 0);
    assert!(OURS.iter().all(|n| machine_config(c.sim(), n).is_none()));
    let metrics = c.metrics().await;
    assert!(
        metrics.contains("cip_webhook_reconcile_duty{duty=\"stand_down\"} 1"),
        "{metrics}"
    );
    c.stop_webhook().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_turns_mco_rendering_on_is_handed_over_without_a_gap() {
    let (mut c, mco) = openshift(false).await;
    c.start_webhook(&[]).await;
    apply_policy(&c).await;
    c.until_sim("ours written", |s| {
        OURS.iter().all(|n| machine_config(s, n).is_some())
    })
    .await;

    // Every MachineConfig change from here on, replayed into the nodes' view.
    let mut events = c.sim().subscribe();
    let mut mcs: BTreeMap<String, Value> = c
        .sim()
        .list("machineconfiguration.openshift.io", "machineconfigs")
        .into_iter()
        .map(|m| (m["metadata"]["name"].as_str().unwrap().to_string(), m))
        .collect();
    let observer = tokio::spawn(async move {
        let mut gaps = Vec::new();
        let mut changes = 0;
        while let Ok(event) = events.recv().await {
            if event.resource != "machineconfiguration.openshift.io/machineconfigs" {
                continue;
            }
            let name = event.object["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string();
            if event.kind == "DELETED" {
                mcs.remove(&name);
            } else {
                mcs.insert(name, event.object.clone());
            }
            changes += 1;
            for pool in ["master", "worker"] {
                let view = node_view(mcs.values(), pool);
                for scope in SCOPES {
                    if !verifies(&view, scope) {
                        gaps.push(format!(
                            "{pool} lacks {scope} after {} {}",
                            event.kind, event.object["metadata"]["name"]
                        ));
                    }
                }
            }
            if mcs.keys().all(|n| !OURS.contains(&n.as_str())) {
                return (changes, gaps);
            }
        }
        (changes, gaps)
    });

    // The upgrade completes: the gate is on for 4.20.1, but the MCO's new controller
    // starts rendering policies only a moment later. Ours must stay meanwhile.
    set_gate(c.sim(), "4.20.1", true);
    c.readyz_says("carries quay.io/example-org").await;
    assert!(OURS.iter().all(|n| machine_config(c.sim(), n).is_some()));
    mco.set_renders_policies(true);
    mco.resync().await;
    c.until_sim("handed over", |s| {
        OURS.iter().all(|n| machine_config(s, n).is_none())
    })
    .await;
    let (changes, gaps) = tokio::time::timeout(Duration::from_secs(10), observer)
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "handover: {changes} MachineConfig changes observed, {} gaps",
        gaps.len()
    );
    assert_eq!(gaps, Vec::<String>::new());
    for pool in ["master", "worker"] {
        let view = current_view(c.sim(), pool);
        assert!(
            SCOPES.iter().all(|s| verifies(&view, s)),
            "{pool}: {view:?}"
        );
        assert!(view[SIGSTORE_YAML_PATH].contains("example-org"));
    }
    let events = c.sim().list("events.k8s.io", "events");
    let handed: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "HandedOver")
        .collect();
    assert_eq!(handed.len(), 2, "one per pool: {events:#?}");
    assert_eq!(handed[0]["regarding"]["kind"], "FeatureGate");
    assert_eq!(handed[0]["metadata"]["namespace"], "default");
    let mut related: Vec<&str> = handed
        .iter()
        .map(|e| e["related"]["name"].as_str().unwrap())
        .collect();
    related.sort();
    assert_eq!(related, ["master", "worker"]);
    assert!(c
        .webhook_log()
        .contains("carries every scope cip-webhook wrote"));
    c.stop_webhook().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_machineconfig_apis_admission_works_and_readyz_says_why() {
    let mut c =
        Cluster::simulated(&[Crd::ClusterImagePolicyV1, Crd::Image, Crd::ClusterVersion]).await;
    c.seed_files(&["examples/image.yaml", "examples/clusterversion.yaml"])
        .await;
    c.start_webhook(&["--lease-duration", "2"]).await;
    let body = c
        .readyz_says(
            "cannot render: the cluster serves no machineconfigs or machineconfigpools API",
        )
        .await;
    assert!(body.starts_with("ok: "), "{body}");
    assert!(
        body.contains("not served by this cluster (treated as empty): imagepolicies, featuregates, imagedigestmirrorsets, imagetagmirrorsets, imagecontentsourcepolicies, machineconfigpools, machineconfigs"),
        "{body}"
    );
    let blocked = signed_apps("blocked", &["blocked.example.com/app"]);
    let run = c.apply(&c.write("blocked.json", blocked.to_string())).await;
    assert!(
        !run.ok && run.stderr.contains("nested inside blockedRegistries"),
        "{run:?}"
    );
    c.apply_ok("examples/signed-apps.yaml").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c
        .metrics()
        .await
        .contains("cip_webhook_reconcile_duty{duty=\"cannot_render\"} 1"));
    assert!(policy(c.sim(), "signed-apps")
        .unwrap()
        .get("status")
        .is_none());
    assert!(c.webhook_log().contains("reconcile duty"));
    c.stop_webhook().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_featuregate_or_policy_apis_it_is_ready_and_follows_a_crd_installed_later() {
    let mut c = Cluster::simulated_bare(
        &[
            Crd::Image,
            Crd::ClusterVersion,
            Crd::MachineConfig,
            Crd::MachineConfigPool,
        ],
        &[],
    )
    .await;
    c.seed_files(&[
        "examples/image.yaml",
        "examples/clusterversion.yaml",
        "examples/pools.yaml",
    ])
    .await;
    c.start_webhook(&["--lease-duration", "2"]).await;
    c.readyz_says("reconciling (no FeatureGate cluster").await;
    c.readyz_says(
        "not served by this cluster (treated as empty): clusterimagepolicies, imagepolicies, featuregates,",
    )
    .await;

    // The policy API arrives: it is found, watched, and policies are rendered.
    let run = c
        .kubectl(&[
            "apply",
            "--validate=false",
            "-f",
            Crd::ClusterImagePolicyV1.path().to_str().unwrap(),
        ])
        .await;
    assert!(run.ok, "{run:?}");
    c.sim().seed(signed_apps("signed-apps", &SCOPES)).unwrap();
    c.until_sim("rendered", |s| {
        machine_config(s, "99-worker-generated-imagepolicies").is_some()
    })
    .await;
    c.readyz_says("cluster state: 1 ClusterImagePolicies; not served by this cluster (treated as empty): imagepolicies, featuregates,")
        .await;
    c.stop_webhook().await;
}
