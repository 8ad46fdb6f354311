//! The reconciler in the real binary against the API simulator: MachineConfigs and
//! status written exactly, nothing written when nothing changed, convergence through
//! conflicts, server errors and broken watches, and one writer among replicas.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use apisim::{FaultAction, Logged, Simulator};
use cluster::*;
use serde_json::{json, Value};

const STATE: &[&str] = &[
    "examples/image.yaml",
    "examples/clusterversion.yaml",
    "examples/pools.yaml",
    "examples/machineconfigs/01-master-container-runtime.yaml",
    "examples/machineconfigs/01-worker-container-runtime.yaml",
    "examples/machineconfigs/99-master-generated-registries.yaml",
    "examples/machineconfigs/99-worker-generated-registries.yaml",
];
const OURS: [&str; 4] = [
    "99-master-generated-imagepolicies",
    "99-master-generated-registries",
    "99-worker-generated-imagepolicies",
    "99-worker-generated-registries",
];

async fn cluster(extra: &[&str]) -> Cluster {
    let mut c = Cluster::start(&[CIP_V1_CRD, IMAGES_CRD, CLUSTERVERSIONS_CRD, MCO_CRDS]).await;
    c.seed_files(STATE);
    c.start_webhook(extra).await;
    c
}

/// A stored object without what the server sets, as goldens hold it.
fn normalized(mut v: Value) -> Value {
    let meta = v["metadata"].as_object_mut().unwrap();
    for field in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        meta.remove(field);
    }
    v
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

fn assert_golden(dir: &str, sim: &Simulator) {
    for name in OURS {
        let path = root().join(format!("tests/golden/reconcile/{dir}/{name}.yaml"));
        let actual = machine_config(sim, name).map(normalized);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            match &actual {
                Some(v) => std::fs::write(&path, serde_saphyr::to_string(v).unwrap()).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
            continue;
        }
        // Compared as data: key order in the stored object is the writer's, not ours.
        let expected: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .map(|t| serde_saphyr::from_str(&t).unwrap());
        assert_eq!(
            actual,
            expected,
            "{} differs from the golden",
            path.display()
        );
    }
}

async fn set_scopes(c: &Cluster, scopes: &[&str]) {
    c.apply_value(&signed_apps("signed-apps", scopes)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_become_machine_configs_and_revert() {
    let c = cluster(&["--lease-duration", "2"]).await;
    let original: Vec<Value> = [
        "99-master-generated-registries",
        "99-worker-generated-registries",
    ]
    .iter()
    .map(|n| machine_config(&c.sim, n).unwrap())
    .collect();

    // Create: the golden MachineConfigs, registries.conf kept, status Applied.
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("imagepolicies MachineConfigs written", |s| {
        OURS.iter().all(|n| machine_config(s, n).is_some())
    })
    .await;
    c.until("status Applied", |s| {
        let cip = policy(s, "signed-apps").unwrap();
        cip["status"]["conditions"][0]["status"] == "True"
    })
    .await;
    assert_golden("created", &c.sim);
    for pool in ["master", "worker"] {
        let registries =
            machine_config(&c.sim, &format!("99-{pool}-generated-registries")).unwrap();
        assert!(
            file(&registries, "/etc/containers/registries.conf").is_some(),
            "another file survives"
        );
        assert!(policy_json(&c.sim, pool).contains("quay.io/example-org"));
    }
    let cip = policy(&c.sim, "signed-apps").unwrap();
    let applied = &cip["status"]["conditions"][0];
    assert_eq!(applied["type"], "Applied");
    assert_eq!(applied["observedGeneration"], 1);
    assert_eq!(
        applied["message"],
        "written to the MachineConfigs of pools master, worker"
    );

    // Nothing changed: a resync, a relist after broken watches and an unrelated change
    // write nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.sim.clear_requests();
    let mut cv = c
        .sim
        .get("config.openshift.io", "clusterversions", "", "version")
        .unwrap();
    cv["metadata"]["annotations"] = json!({"touched": "yes"});
    c.sim.seed(cv).unwrap();
    // History gone past every watcher's position, then the streams cut: all relist.
    c.sim.compact();
    c.sim.close_watches();
    c.until("the watchers relisted", |s| {
        let log = s.requests();
        ["machineconfigs", "clusterimagepolicies", "images"]
            .iter()
            .all(|res| log.iter().any(|r| r.verb == "list" && r.resource == *res))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = c.sim.requests();
    assert_eq!(writes(&log, "machineconfigs").len(), 0, "{log:#?}");
    assert_eq!(writes(&log, "clusterimagepolicies").len(), 0, "{log:#?}");

    // Update: one write per changed MachineConfig, one status write.
    c.sim.clear_requests();
    set_scopes(
        &c,
        &[
            "quay.io/example-org",
            "registry.example.com:5000/team/app",
            "quay.io/other",
        ],
    )
    .await;
    c.until("new scope rendered", |s| {
        ["master", "worker"]
            .iter()
            .all(|p| policy_json(s, p).contains("quay.io/other"))
            && machine_config(s, "99-worker-generated-imagepolicies").is_some_and(|m| {
                file(&m, "/etc/containers/registries.d/sigstore-registries.yaml")
                    .unwrap()
                    .contains("quay.io/other")
            })
    })
    .await;
    c.until("observedGeneration 2", |s| {
        policy(s, "signed-apps").unwrap()["status"]["conditions"][0]["observedGeneration"] == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = c.sim.requests();
    let mc_writes: Vec<(&str, &str)> = writes(&log, "machineconfigs")
        .iter()
        .map(|r| (r.verb.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(mc_writes.len(), 4, "{mc_writes:?}");
    assert!(
        mc_writes.iter().all(|(verb, _)| *verb == "update"),
        "{mc_writes:?}"
    );
    let status: Vec<&Logged> = writes(&log, "clusterimagepolicies")
        .into_iter()
        .filter(|r| r.subresource == "status")
        .collect();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_golden("updated", &c.sim);

    // Watches cut just before the change resume from their resourceVersion and replay
    // it; injected conflicts and server errors on the writes are retried until converged.
    c.sim.close_watches();
    c.sim.inject(
        Some("update"),
        Some("machineconfigs"),
        2,
        FaultAction::Conflict,
    );
    c.sim.inject(
        Some("update"),
        Some("machineconfigs"),
        2,
        FaultAction::Fail(500),
    );
    set_scopes(
        &c,
        &["quay.io/example-org", "registry.example.com:5000/team/app"],
    )
    .await;
    c.until("converged after faults", |s| {
        ["master", "worker"]
            .iter()
            .all(|p| !policy_json(s, p).contains("quay.io/other"))
    })
    .await;
    c.until("converged after faults", |s| {
        OURS.iter().all(|n| {
            let golden: Option<Value> = std::fs::read_to_string(
                root().join(format!("tests/golden/reconcile/created/{n}.yaml")),
            )
            .ok()
            .map(|t| serde_saphyr::from_str(&t).unwrap());
            machine_config(s, n).map(normalized) == golden
        })
    })
    .await;
    let log = c.webhook_log();
    assert!(log.contains("reconcile failed"), "the failures were logged");

    // Delete: the registries MachineConfigs get their original bytes back, ours go.
    let run = c
        .kubectl(&["delete", "clusterimagepolicy", "signed-apps"])
        .await;
    assert!(run.ok, "{run:?}");
    c.until("reverted", |s| {
        machine_config(s, "99-master-generated-imagepolicies").is_none()
            && machine_config(s, "99-worker-generated-imagepolicies").is_none()
    })
    .await;
    c.until("registries reverted", |s| {
        original.iter().all(|o| {
            let now = machine_config(s, o["metadata"]["name"].as_str().unwrap()).unwrap();
            now["spec"] == o["spec"]
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_policies_get_status_and_an_event() {
    let c = cluster(&[]).await;
    // Stored without admission (as if created before the Image CR blocked it).
    c.sim
        .seed(signed_apps(
            "blocked",
            &["blocked.example.com/app", "quay.io/example-org"],
        ))
        .unwrap();
    c.until("Pending", |s| {
        policy(s, "blocked").unwrap()["status"]["conditions"][1]["status"] == "True"
    })
    .await;
    let cip = policy(&c.sim, "blocked").unwrap();
    let pending = &cip["status"]["conditions"][1];
    assert_eq!(pending["reason"], "ConflictScopes");
    assert!(
        pending["message"]
            .as_str()
            .unwrap()
            .contains("blocked.example.com/app"),
        "{pending}"
    );
    c.until("event", |s| !s.list("events.k8s.io", "events").is_empty())
        .await;
    let events = c.sim.list("events.k8s.io", "events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["regarding"]["name"], "blocked");
    assert_eq!(events[0]["reason"], "ConflictScopes");
    // The API server keeps Events about cluster-scoped objects in `default`.
    assert_eq!(events[0]["metadata"]["namespace"], "default");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["reportingController"], "cip-webhook");
    // A new message with the same reason is a repeat: the first Event counts it.
    c.sim
        .seed(signed_apps(
            "blocked",
            &[
                "blocked.example.com/app",
                "blocked.example.com/other",
                "quay.io/example-org",
            ],
        ))
        .unwrap();
    c.until("a series", an_event_repeated).await;
    assert_eq!(c.sim.list("events.k8s.io", "events").len(), 1);
    // The scope that is not blocked is written all the same.
    assert!(policy_json(&c.sim, "worker").contains("quay.io/example-org"));
    assert!(!policy_json(&c.sim, "worker").contains("blocked.example.com/app"));
}

fn holder(sim: &Simulator) -> Option<String> {
    sim.get(
        "coordination.k8s.io",
        "leases",
        NAMESPACE,
        "cip-webhook-reconcile",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_and_a_successor_takes_over() {
    let c = Cluster::start(&[CIP_V1_CRD, IMAGES_CRD, CLUSTERVERSIONS_CRD, MCO_CRDS]).await;
    c.seed_files(STATE);
    // No shutdown delay: the test is about the Lease, not the endpoints.
    let args = ["--lease-duration", "2", "--shutdown-delay", "0"];
    let a = c
        .spawn_replica("system:serviceaccount:cip-webhook:replica-a", "a", &args)
        .await;
    let b = c
        .spawn_replica("system:serviceaccount:cip-webhook:replica-b", "b", &args)
        .await;
    c.sim.route_service(NAMESPACE, SERVICE, 443, a.addr);
    c.until("a leader", |s| holder(s).is_some()).await;
    let first = holder(&c.sim).unwrap();
    let (leader, follower) = if first == "a" { (a, b) } else { (b, a) };
    c.sim.route_service(NAMESPACE, SERVICE, 443, follower.addr);

    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("written", |s| {
        OURS.iter().all(|n| machine_config(s, n).is_some())
    })
    .await;
    let user = |r: &Logged| {
        r.user
            .rsplit(':')
            .next()
            .unwrap()
            .trim_start_matches("replica-")
            .to_string()
    };
    let writers: std::collections::BTreeSet<String> = writes(&c.sim.requests(), "machineconfigs")
        .iter()
        .map(|r| user(r))
        .collect();
    assert_eq!(
        writers,
        [leader.identity.clone()].into(),
        "only the leader writes"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Killed without a chance to release: the follower takes over once the lease expires,
    // and writes no MachineConfig since nothing changed.
    c.sim.clear_requests();
    let mut leader = leader;
    leader.child.kill().await.unwrap();
    let killed = Instant::now();
    c.until("takeover", |s| {
        holder(s).as_deref() == Some(follower.identity.as_str())
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover after a crash: {takeover:?} (lease 2 s)");
    assert!(
        takeover <= Duration::from_millis(2000 + 250),
        "{takeover:?}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        writes(&c.sim.requests(), "machineconfigs").len(),
        0,
        "{:#?}",
        c.sim.requests()
    );

    // SIGTERM releases the lease: a new replica takes over well before it would expire.
    let c2 = c
        .spawn_replica("system:serviceaccount:cip-webhook:replica-c", "c", &args)
        .await;
    let status = follower.terminate().await;
    assert!(status.success(), "{status:?}");
    let released = Instant::now();
    assert_eq!(holder(&c.sim), None, "released on SIGTERM");
    c.until("c leads", |s| holder(s).as_deref() == Some("c"))
        .await;
    let handover = released.elapsed();
    eprintln!("handover after SIGTERM: {handover:?}");
    assert!(handover < Duration::from_millis(1500), "{handover:?}");
    drop(c2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_only_mode_writes_nothing() {
    let c = cluster(&["--mode", "admission-only"]).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    // Admission still runs: the mutating webhook defaulted nothing here (the example sets
    // its identity), the validating one denies a blocked scope.
    let blocked = signed_apps("blocked", &["blocked.example.com/app"]);
    let run = c.apply(&c.write("blocked.json", blocked.to_string())).await;
    assert!(
        !run.ok && run.stderr.contains("nested inside blockedRegistries"),
        "{run:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = c.sim.requests();
    assert_eq!(writes(&log, "machineconfigs").len(), 0);
    assert_eq!(writes(&log, "leases").len(), 0);
    assert!(OURS
        .iter()
        .filter(|n| n.ends_with("imagepolicies"))
        .all(|n| machine_config(&c.sim, n).is_none()));
    let cip = policy(&c.sim, "signed-apps").unwrap();
    assert!(cip.get("status").is_none(), "{cip}");
}

/// A renewal that comes back after the lease's validity (a slow API server) must not
/// leave the leader idle until the next change or resync: changes made while it could
/// not write are written as soon as it may again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_lease_renewal_does_not_stall_the_reconciler() {
    let c = cluster(&["--lease-duration", "2"]).await;
    c.until("leading", |s| {
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
    c.sim.inject(
        Some("update"),
        Some("leases"),
        2,
        FaultAction::Delay(Duration::from_millis(2500)),
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    let applied = Instant::now();
    c.until("written after the lease came back", |s| {
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
    c.sim.inject(
        Some("patch"),
        Some("clusterimagepolicies"),
        5,
        FaultAction::Fail(500),
    );
    for i in 0..20 {
        c.sim
            .seed(signed_apps(
                &format!("p{i:02}"),
                &[&format!("quay.io/p/app{i}")],
            ))
            .unwrap();
    }
    c.until("every policy has its conditions", |s| {
        s.list("config.openshift.io", "clusterimagepolicies")
            .iter()
            .all(|p| p["status"]["conditions"][0]["status"] == "True")
    })
    .await;
    assert!(c.webhook_log().contains("reconcile failed"));
}

/// Namespaced ImagePolicies through kubectl, the webhook and the reconciler: a scope in a
/// blocked registry is refused in the MCO's `imagePolicy` wording; one inside a cluster
/// policy's scope is admitted with a warning and dropped (the MCO's precedence and its
/// status); the rest becomes the namespace's policy file beside policy.json, built from the
/// cluster's; deleting the policy removes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_policies_become_namespace_policy_files() {
    let mut c = Cluster::start(&[
        CIP_V1_CRD,
        IMAGEPOLICIES_V1_CRD,
        IMAGES_CRD,
        CLUSTERVERSIONS_CRD,
        IDMS_CRD,
        MCO_CRDS,
    ])
    .await;
    c.seed_files(STATE);
    c.start_webhook(&[]).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    let bad = c.write(
        "bad.json",
        serde_json::to_vec(&team_policy("team-a", "bad", &["blocked.example.com/app"])).unwrap(),
    );
    let denied = c.apply(&bad).await;
    assert!(
        !denied.ok
            && denied.stderr.contains(
                "imagePolicy configured for the scope blocked.example.com/app is nested inside blockedRegistries"
            ),
        "{denied:?}"
    );
    let run = c
        .apply_value(&team_policy(
            "team-a",
            "team",
            &["quay.io/example-org/tools", "registry.example.com/team-a"],
        ))
        .await;
    assert!(
        run.stderr
            .contains("only the cluster policy applies to these images"),
        "{run:?}"
    );
    let team_file = |s: &Simulator| {
        machine_config(s, "99-worker-generated-registries")
            .and_then(|mc| file(&mc, "/etc/crio/policies/team-a.json"))
    };
    let sigstore_yaml = |s: &Simulator| {
        machine_config(s, "99-worker-generated-imagepolicies")
            .and_then(|mc| file(&mc, "/etc/containers/registries.d/sigstore-registries.yaml"))
    };
    // Both MachineConfigs of the pass: the namespace's file and its attachments.
    c.until("the namespace's file", |s| {
        team_file(s).is_some()
            && sigstore_yaml(s).is_some_and(|y| y.contains("registry.example.com/team-a:"))
    })
    .await;
    let text = team_file(&c.sim).unwrap();
    let team: Value = serde_json::from_str(&text).unwrap();
    let docker = team["transports"]["docker"].as_object().unwrap();
    assert!(docker.contains_key("registry.example.com/team-a"));
    // The cluster's policy.json is its base: its scopes and the blocked registry hold.
    assert!(docker.contains_key("quay.io/example-org"));
    assert_eq!(docker["blocked.example.com"], json!([{"type": "reject"}]));
    assert!(!docker.contains_key("quay.io/example-org/tools"));
    assert!(!policy_json(&c.sim, "worker").contains("registry.example.com/team-a"));
    // Its sigstore attachments are on for the whole cluster (registries.d has no namespaces).
    assert!(sigstore_yaml(&c.sim).is_some());
    // A mirror set, watched: the mirror gets sigstore attachments too.
    c.sim
        .seed(json!({
            "apiVersion": "config.openshift.io/v1",
            "kind": "ImageDigestMirrorSet",
            "metadata": {"name": "team-a"},
            "spec": {"imageDigestMirrors": [
                {"source": "registry.example.com/team-a", "mirrors": ["mirror.internal/team-a"]}
            ]}
        }))
        .unwrap();
    c.until("the mirror's sigstore attachments", |s| {
        sigstore_yaml(s).is_some_and(|y| y.contains("mirror.internal/team-a:"))
    })
    .await;
    c.until("the MCO's status", |s| {
        image_policy(s, "team-a", "team").unwrap()["status"]["conditions"][1]["reason"]
            == "ConflictScopes"
    })
    .await;
    let status = &image_policy(&c.sim, "team-a", "team").unwrap()["status"];
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][1]["status"], "False");
    assert_eq!(
        status["conditions"][1]["message"],
        "has conflicting scope(s) [\"quay.io/example-org/tools\"] that equal to or nest inside existing clusterimagepolicy, only policy from clusterimagepolicy scope(s) will be applied"
    );
    // One stored before admission could refuse it: held back, with a Warning Event in
    // its own namespace, where `oc describe imagepolicy` looks.
    c.sim
        .seed(team_policy("team-a", "held", &["blocked.example.com/app"]))
        .unwrap();
    c.until("the ImagePolicy's Event", |s| {
        s.list("events.k8s.io", "events")
            .iter()
            .any(|e| e["regarding"]["kind"] == "ImagePolicy")
    })
    .await;
    let events = c.sim.list("events.k8s.io", "events");
    let held = events
        .iter()
        .find(|e| e["regarding"]["kind"] == "ImagePolicy")
        .unwrap();
    assert_eq!(held["metadata"]["namespace"], "team-a");
    assert_eq!(held["regarding"]["namespace"], "team-a");
    assert_eq!(held["regarding"]["name"], "held");
    assert_eq!(held["type"], "Warning");
    let run = c
        .kubectl(&["delete", "imagepolicy", "-n", "team-a", "team", "held"])
        .await;
    assert!(run.ok, "{run:?}");
    c.until("the file removed", |s| team_file(s).is_none())
        .await;
}
