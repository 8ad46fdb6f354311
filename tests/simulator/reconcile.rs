//! The reconciler in the real binary against the API simulator, for what a real API
//! server cannot do on demand: watches cut and history compacted, conflicts and server
//! errors injected into chosen writes, slow Lease renewals. (Everything else about the
//! reconciler: `tests/real_apiserver/reconcile.rs`.)

use std::time::{Duration, Instant};

use apisim::{FaultAction, Logged, Simulator};
use serde_json::Value;
use testkit::cluster::sim::*;
use testkit::cluster::*;
use testkit::upstream::{Crd, MCO_CRDS};

async fn cluster(extra: &[&str]) -> Cluster {
    let mut c = Cluster::simulated(
        &[
            &[Crd::ClusterImagePolicyV1, Crd::Image, Crd::ClusterVersion][..],
            &MCO_CRDS,
        ]
        .concat(),
    )
    .await;
    c.seed_files(EXAMPLES).await;
    c.start_webhook(extra).await;
    c
}

fn policy_json(sim: &Simulator, pool: &str) -> String {
    file(
        &machine_config(sim, &format!("99-{pool}-generated-registries")).unwrap(),
        "/etc/containers/policy.json",
    )
    .unwrap_or_default()
}

fn writes<'a>(log: &'a [Logged], resource: &str) -> Vec<&'a Logged> {
    log.iter()
        .filter(|r| {
            r.resource == resource
                && matches!(r.verb.as_str(), "create" | "update" | "patch" | "delete")
        })
        .collect()
}

fn ours(sim: &Simulator) -> Vec<(String, Option<Value>)> {
    OURS.iter()
        .map(|n| (n.to_string(), machine_config(sim, n)))
        .collect()
}

/// Relists after broken watches write nothing; watches cut just before a change resume
/// from their resourceVersion and replay it; conflicts and server errors on the writes
/// are retried until the MachineConfigs are the goldens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_through_conflicts_server_errors_and_broken_watches() {
    let c = cluster(&["--lease-duration", "2"]).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until_sim("written", |s| {
        OURS.iter().all(|n| machine_config(s, n).is_some())
    })
    .await;
    c.until_sim("status Applied", |s| {
        policy(s, "signed-apps").unwrap()["status"]["conditions"][0]["status"] == "True"
    })
    .await;
    assert_reconcile_golden("created", &ours(c.sim()));

    // An unrelated change, then history gone past every watcher's position and the
    // streams cut: all relist, and find nothing to write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.sim().clear_requests();
    let mut cv = c
        .sim()
        .get("config.openshift.io", "clusterversions", "", "version")
        .unwrap();
    cv["metadata"]["annotations"] = serde_json::json!({"touched": "yes"});
    c.sim().seed(cv).unwrap();
    c.sim().compact();
    c.sim().close_watches();
    c.until_sim("the watchers relisted", |s| {
        let log = s.requests();
        ["machineconfigs", "clusterimagepolicies", "images"]
            .iter()
            .all(|res| log.iter().any(|r| r.verb == "list" && r.resource == *res))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = c.sim().requests();
    assert_eq!(writes(&log, "machineconfigs").len(), 0, "{log:#?}");
    assert_eq!(writes(&log, "clusterimagepolicies").len(), 0, "{log:#?}");

    // A change made while the watches are cut, its writes meeting conflicts and 500s.
    c.sim().close_watches();
    c.sim().inject(
        Some("update"),
        Some("machineconfigs"),
        2,
        FaultAction::Conflict,
    );
    c.sim().inject(
        Some("update"),
        Some("machineconfigs"),
        2,
        FaultAction::Fail(500),
    );
    let scopes = [
        "quay.io/example-org",
        "registry.example.com:5000/team/app",
        "quay.io/other",
    ];
    c.apply_value(&signed_apps("signed-apps", &scopes)).await;
    c.until_sim("converged after faults", |s| {
        ["master", "worker"]
            .iter()
            .all(|p| policy_json(s, p).contains("quay.io/other"))
            && ours(s).into_iter().all(|(n, mc)| {
                let path =
                    testkit::paths::root().join(format!("tests/golden/reconcile/updated/{n}.yaml"));
                let golden: Option<Value> = std::fs::read_to_string(path)
                    .ok()
                    .map(|t| serde_saphyr::from_str(&t).unwrap());
                mc.map(normalized) == golden
            })
    })
    .await;
    assert!(
        c.webhook_log().contains("reconcile failed"),
        "the failures were logged"
    );
}

/// A renewal that comes back after the lease's validity (a slow API server) must not
/// leave the leader idle until the next change or resync: changes made while it could
/// not write are written as soon as it may again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_lease_renewal_does_not_stall_the_reconciler() {
    let c = cluster(&["--lease-duration", "2"]).await;
    c.until_sim("leading", |s| {
        s.get(
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            "cip-webhook-reconcile",
        )
        .is_some()
    })
    .await;
    // The next two renewals take longer than the lease lets us write (1.5 s).
    c.sim().inject(
        Some("update"),
        Some("leases"),
        2,
        FaultAction::Delay(Duration::from_millis(2500)),
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    let applied = Instant::now();
    c.until_sim("written after the lease came back", |s| {
        OURS.iter().all(|n| machine_config(s, n).is_some())
    })
    .await;
    eprintln!("written {:?} after the change", applied.elapsed());
    assert!(
        applied.elapsed() < Duration::from_secs(10),
        "{:?}",
        applied.elapsed()
    );
}

/// Status writes that fail half way through a pass are written by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_interrupted_by_failing_status_writes_is_finished_by_the_next() {
    let c = cluster(&[]).await;
    c.sim().inject(
        Some("patch"),
        Some("clusterimagepolicies"),
        5,
        FaultAction::Fail(500),
    );
    for i in 0..20 {
        c.sim()
            .seed(signed_apps(
                &format!("p{i:02}"),
                &[&format!("quay.io/p/app{i}")],
            ))
            .unwrap();
    }
    c.until_sim("every policy has its conditions", |s| {
        s.list("config.openshift.io", "clusterimagepolicies")
            .iter()
            .all(|p| p["status"]["conditions"][0]["status"] == "True")
    })
    .await;
    assert!(c.webhook_log().contains("reconcile failed"));
}
