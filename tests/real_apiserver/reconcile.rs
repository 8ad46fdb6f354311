//! The reconciler in the real binary against the real API server, as its service account
//! under the project's RBAC and admission policy: MachineConfigs and status written exactly
//! (the server's audit log counts the writes), nothing written when nothing changed,
//! Events and Leases as the server keeps them, one writer among replicas, namespaced
//! ImagePolicies. (Faults on demand: `tests/simulator/reconcile.rs`.)

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::cluster::*;
use testkit::kube::Audited;
use testkit::upstream::{Crd, MCO_CRDS};

fn crds(extra: &[Crd]) -> Vec<Crd> {
    [
        &[Crd::ClusterImagePolicyV1, Crd::Image, Crd::ClusterVersion][..],
        &MCO_CRDS,
        extra,
    ]
    .concat()
}

/// The writes counted here are the reconciler's: the running-images pass (its own
/// condition, tests/real_apiserver/running_images.rs) is off.
async fn cluster(extra: &[&str]) -> Cluster {
    let mut c = Cluster::real(&crds(&[])).await;
    c.seed_files(EXAMPLES).await;
    let args = [extra, &["--running-images=false"]].concat();
    c.start_webhook(&args).await;
    c
}

async fn policy_json(c: &Cluster, pool: &str) -> String {
    let mc = c
        .machine_config(&format!("99-{pool}-generated-registries"))
        .await
        .unwrap();
    file(&mc, "/etc/containers/policy.json").unwrap_or_default()
}

fn writes<'a>(log: &'a [Audited], resource: &str) -> Vec<&'a Audited> {
    log.iter()
        .filter(|r| r.resource == resource && r.is_write())
        .collect()
}

async fn all_ours_written(c: &Cluster) -> bool {
    for n in OURS {
        if c.machine_config(n).await.is_none() {
            return false;
        }
    }
    true
}

async fn ours(c: &Cluster) -> Vec<(String, Option<Value>)> {
    let mut out = Vec::new();
    for n in OURS {
        out.push((n.to_string(), c.machine_config(n).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_become_machine_configs_and_revert() {
    let c = cluster(&["--lease-duration", "2"]).await;
    // The seed's Image CR blocks a registry its MachineConfigs do not carry yet: the
    // state to return to is the one the first pass writes.
    c.until("first reconcile", Cluster::reconciled).await;
    let mut original = Vec::new();
    for n in [
        "99-master-generated-registries",
        "99-worker-generated-registries",
    ] {
        original.push(c.machine_config(n).await.unwrap());
    }

    // Create: the golden MachineConfigs, registries.conf kept, status Applied.
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("imagepolicies MachineConfigs written", all_ours_written)
        .await;
    c.until("status Applied", async |c: &Cluster| {
        c.policy("signed-apps").await.unwrap()["status"]["conditions"][0]["status"] == "True"
    })
    .await;
    testkit::cluster::assert_reconcile_golden("created", &ours(&c).await);
    for pool in ["master", "worker"] {
        let registries = c
            .machine_config(&format!("99-{pool}-generated-registries"))
            .await
            .unwrap();
        assert!(
            file(&registries, "/etc/containers/registries.conf").is_some(),
            "another file survives"
        );
        assert!(policy_json(&c, pool).await.contains("quay.io/example-org"));
    }
    let cip = c.policy("signed-apps").await.unwrap();
    let applied = &cip["status"]["conditions"][0];
    assert_eq!(applied["type"], "Applied");
    assert_eq!(applied["observedGeneration"], 1);
    assert_eq!(
        applied["message"],
        "written to the MachineConfigs of pools master, worker"
    );

    // Nothing changed: an unrelated change writes nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.api().clear_requests();
    let mut cv = c
        .get("config.openshift.io", "clusterversions", "", "version")
        .await
        .unwrap();
    cv["metadata"]["annotations"] = json!({"touched": "yes"});
    c.seed(cv).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = c.api().requests();
    assert_eq!(writes(&log, "machineconfigs").len(), 0, "{log:#?}");
    assert_eq!(writes(&log, "clusterimagepolicies").len(), 0, "{log:#?}");

    // Update: one write per changed MachineConfig, one status write.
    c.api().clear_requests();
    let scopes = [
        "quay.io/example-org",
        "registry.example.com:5000/team/app",
        "quay.io/other",
    ];
    c.apply_value(&signed_apps("signed-apps", &scopes)).await;
    c.until("new scope rendered", async |c: &Cluster| {
        let mut written = true;
        for p in ["master", "worker"] {
            written &= policy_json(c, p).await.contains("quay.io/other");
        }
        written
            && c.machine_config("99-worker-generated-imagepolicies")
                .await
                .is_some_and(|m| {
                    file(&m, "/etc/containers/registries.d/sigstore-registries.yaml")
                        .unwrap()
                        .contains("quay.io/other")
                })
    })
    .await;
    c.until("observedGeneration 2", async |c: &Cluster| {
        c.policy("signed-apps").await.unwrap()["status"]["conditions"][0]["observedGeneration"] == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let log = c.api().requests();
    let mc_writes: Vec<(&str, &str)> = writes(&log, "machineconfigs")
        .iter()
        .map(|r| (r.verb.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(mc_writes.len(), 4, "{mc_writes:?}");
    assert!(
        mc_writes.iter().all(|(verb, _)| *verb == "update"),
        "{mc_writes:?}"
    );
    let status: Vec<&Audited> = writes(&log, "clusterimagepolicies")
        .into_iter()
        .filter(|r| r.subresource == "status")
        .collect();
    assert_eq!(status.len(), 1, "{status:?}");
    assert!(
        status
            .iter()
            .all(|r| r.user == RECONCILER_ACCOUNT && r.code == 200),
        "{status:?}"
    );
    testkit::cluster::assert_reconcile_golden("updated", &ours(&c).await);

    // Delete: the registries MachineConfigs get their original bytes back, ours go.
    let run = c
        .kubectl(&["delete", "clusterimagepolicy", "signed-apps"])
        .await;
    assert!(run.ok, "{run:?}");
    c.until("reverted", async |c: &Cluster| {
        c.machine_config("99-master-generated-imagepolicies")
            .await
            .is_none()
            && c.machine_config("99-worker-generated-imagepolicies")
                .await
                .is_none()
    })
    .await;
    c.until("registries reverted", async |c: &Cluster| {
        for o in &original {
            let now = c
                .machine_config(o["metadata"]["name"].as_str().unwrap())
                .await
                .unwrap();
            if now["spec"] != o["spec"] {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_policies_get_status_and_an_event() {
    let c = cluster(&[]).await;
    // Stored without the webhook's judgement (as if created before the Image CR blocked it).
    c.seed_unadmitted(signed_apps(
        "blocked",
        &["blocked.example.com/app", "quay.io/example-org"],
    ))
    .await;
    c.until("Pending", async |c: &Cluster| {
        c.policy("blocked").await.unwrap()["status"]["conditions"][1]["status"] == "True"
    })
    .await;
    let cip = c.policy("blocked").await.unwrap();
    let pending = &cip["status"]["conditions"][1];
    assert_eq!(pending["reason"], "ConflictScopes");
    assert!(
        pending["message"]
            .as_str()
            .unwrap()
            .contains("blocked.example.com/app"),
        "{pending}"
    );
    c.until("event", async |c: &Cluster| {
        !c.list("events.k8s.io", "events").await.is_empty()
    })
    .await;
    let events = c.list("events.k8s.io", "events").await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["regarding"]["name"], "blocked");
    assert_eq!(events[0]["reason"], "ConflictScopes");
    // The API server keeps Events about cluster-scoped objects in `default`.
    assert_eq!(events[0]["metadata"]["namespace"], "default");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["reportingController"], "cip-webhook");
    // A new message with the same reason is a repeat: the first Event counts it.
    c.seed_unadmitted(signed_apps(
        "blocked",
        &[
            "blocked.example.com/app",
            "blocked.example.com/other",
            "quay.io/example-org",
        ],
    ))
    .await;
    c.until("a series", async |c: &Cluster| {
        event_repeated(&c.list("events.k8s.io", "events").await)
    })
    .await;
    assert_eq!(c.list("events.k8s.io", "events").await.len(), 1);
    // The scope that is not blocked is written all the same.
    assert!(policy_json(&c, "worker")
        .await
        .contains("quay.io/example-org"));
    assert!(!policy_json(&c, "worker")
        .await
        .contains("blocked.example.com/app"));
}

async fn holder(c: &Cluster) -> Option<String> {
    c.get(
        "coordination.k8s.io",
        "leases",
        NAMESPACE,
        "cip-webhook-reconcile",
    )
    .await
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

/// A service account of its own for a replica, with the reconciler's roles, so that the
/// audit log tells the replicas apart.
async fn replica_account(c: &Cluster, name: &str) -> String {
    for (kind, role_kind, namespace) in [
        ("ClusterRoleBinding", "ClusterRole", None),
        ("RoleBinding", "Role", Some(NAMESPACE)),
    ] {
        let mut binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": {"name": format!("replica-{name}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": "cip-webhook-reconciler"},
            "subjects": [{"kind": "ServiceAccount", "name": format!("replica-{name}"), "namespace": NAMESPACE}]
        });
        if let Some(ns) = namespace {
            binding["metadata"]["namespace"] = json!(ns);
        }
        c.api().ensure(binding).await;
    }
    format!("system:serviceaccount:{NAMESPACE}:replica-{name}")
}

/// Replicas that reconcile, each as its own service account with the reconciler's roles:
/// the Lease decides which one writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_and_a_successor_takes_over() {
    let mut c = Cluster::real(&crds(&[])).await;
    c.seed_files(EXAMPLES).await;
    // No shutdown delay: the test is about the Lease, not the endpoints.
    // A lease of 4 s: long enough that a loaded machine's scheduling does not blur
    // "after it expired" and "well before it would".
    let args = ["--lease-duration", "4", "--shutdown-delay", "0"];
    let a = c
        .spawn_replica(&replica_account(&c, "a").await, "a", &args)
        .await;
    let b = c
        .spawn_replica(&replica_account(&c, "b").await, "b", &args)
        .await;
    c.route_webhook(a.addr).await;
    c.until("a leader", async |c: &Cluster| holder(c).await.is_some())
        .await;
    let first = holder(&c).await.unwrap();
    let (leader, follower) = if first == "a" { (a, b) } else { (b, a) };
    c.route_webhook(follower.addr).await;

    c.api().clear_requests();
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("written", all_ours_written).await;
    let writers: BTreeSet<String> = writes(&c.api().requests(), "machineconfigs")
        .iter()
        .map(|r| {
            r.user
                .rsplit(':')
                .next()
                .unwrap()
                .trim_start_matches("replica-")
                .to_string()
        })
        .collect();
    assert_eq!(
        writers,
        [leader.identity.clone()].into(),
        "only the leader writes"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Killed without a chance to release: the follower takes over once the lease expires,
    // and writes no MachineConfig since nothing changed.
    c.api().clear_requests();
    let mut leader = leader;
    leader.child.kill().await.unwrap();
    let killed = Instant::now();
    c.until("takeover", async |c: &Cluster| {
        holder(c).await.as_deref() == Some(follower.identity.as_str())
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover after a crash: {takeover:?} (lease 4 s)");
    // Not before the lease could have expired (its last renewal was at most a retry
    // period, 1.3 s, before the kill), not much after: the lease, a retry period, and a
    // loaded machine's scheduling.
    assert!(
        takeover >= Duration::from_secs(2) && takeover <= Duration::from_secs(9),
        "{takeover:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = c.api().requests();
    assert_eq!(writes(&log, "machineconfigs").len(), 0, "{log:#?}");

    // SIGTERM releases the lease, and the standby, watching it, takes it at once: well
    // before the 4 s lease would expire, and before its next retry (1.3 s).
    let c2 = c
        .spawn_replica(&replica_account(&c, "c").await, "c", &args)
        .await;
    let sigterm = Instant::now();
    let log = follower.log.clone();
    let status = follower.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(std::fs::read_to_string(log)
        .unwrap()
        .contains("released the reconcile lease"));
    c.until("c leads", async |c: &Cluster| {
        holder(c).await.as_deref() == Some("c")
    })
    .await;
    let handover = sigterm.elapsed();
    eprintln!("handover after SIGTERM: {handover:?}");
    assert!(handover < Duration::from_secs(3), "{handover:?}");
    drop(c2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_only_mode_writes_nothing() {
    let c = cluster(&["--mode", "admission-only"]).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    // Admission still runs: the validating webhook denies a blocked scope.
    let blocked = signed_apps("blocked", &["blocked.example.com/app"]);
    let run = c.apply(&c.write("blocked.json", blocked.to_string())).await;
    assert!(
        !run.ok && run.stderr.contains("nested inside blockedRegistries"),
        "{run:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = c.api().requests();
    let by_us: Vec<&Audited> = log
        .iter()
        .filter(|r| r.user == SERVICE_ACCOUNT && !r.resource.is_empty())
        .collect();
    assert!(!by_us.is_empty());
    assert!(
        by_us
            .iter()
            .all(|r| matches!(r.verb.as_str(), "list" | "watch")),
        "{by_us:#?}"
    );
    for n in OURS.iter().filter(|n| n.ends_with("imagepolicies")) {
        assert!(c.machine_config(n).await.is_none());
    }
    let cip = c.policy("signed-apps").await.unwrap();
    assert!(cip.get("status").is_none(), "{cip}");
}

/// `--dry-run` logs the plan the leader would write and writes nothing: no
/// MachineConfig, no status, no Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_logs_the_plan_and_writes_nothing() {
    let c = cluster(&["--dry-run"]).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("the plan logged", async |c: &Cluster| {
        c.webhook_log()
            .contains("dry run: would write MachineConfig")
            && c.webhook_log().contains("dry run: would write the status")
    })
    .await;
    let log = c.api().requests();
    let by_us: Vec<&Audited> = log
        .iter()
        .filter(|r| r.user == SERVICE_ACCOUNT && !r.resource.is_empty())
        .filter(|r| !matches!(r.verb.as_str(), "list" | "watch" | "get"))
        .collect();
    assert!(by_us.is_empty(), "{by_us:#?}");
    for n in OURS.iter().filter(|n| n.ends_with("imagepolicies")) {
        assert!(c.machine_config(n).await.is_none());
    }
    assert!(c
        .policy("signed-apps")
        .await
        .unwrap()
        .get("status")
        .is_none());
    let leases = c.list("coordination.k8s.io", "leases").await;
    assert!(
        !leases
            .iter()
            .any(|l| l["metadata"]["name"] == "cip-webhook-reconcile"),
        "{leases:?}"
    );
    let logged = c.webhook_log();
    assert!(
        logged.contains(
            "machine_config=99-worker-generated-imagepolicies pool=worker action=\"create\""
        ),
        "{logged}"
    );
}

/// Namespaced ImagePolicies through kubectl, the webhook and the reconciler: a scope in a
/// blocked registry is refused in the MCO's `imagePolicy` wording; one inside a cluster
/// policy's scope is admitted with a warning and dropped (the MCO's precedence and its
/// status); the rest becomes the namespace's policy file beside policy.json, built from the
/// cluster's; deleting the policy removes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_policies_become_namespace_policy_files() {
    let mut c = Cluster::real(&crds(&[Crd::ImagePolicyV1, Crd::ImageDigestMirrorSet])).await;
    c.seed_files(EXAMPLES).await;
    c.start_webhook(&[]).await;
    let run = c.kubectl(&["create", "namespace", "team-a"]).await;
    assert!(run.ok, "{run:?}");
    c.apply_ok("examples/signed-apps.yaml").await;
    // Admission judges against what its watch has seen: the cluster policy first.
    c.until("signed-apps seen", async |c: &Cluster| {
        c.policy("signed-apps")
            .await
            .is_some_and(|p| p["status"]["conditions"].is_array())
    })
    .await;
    let bad = c.write(
        "bad.json",
        serde_json::to_vec(&team_policy("team-a", "bad", &["blocked.example.com/app"])).unwrap(),
    );
    let denied = c.apply(&bad).await;
    assert!(
        !denied.ok
            && denied
                .stderr
                .contains("imagePolicy configured for the scope blocked.example.com/app is nested inside blockedRegistries"),
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
    let team_file = async |c: &Cluster| {
        c.machine_config("99-worker-generated-registries")
            .await
            .and_then(|mc| file(&mc, "/etc/crio/policies/team-a.json"))
    };
    let sigstore_yaml = async |c: &Cluster| {
        c.machine_config("99-worker-generated-imagepolicies")
            .await
            .and_then(|mc| file(&mc, "/etc/containers/registries.d/sigstore-registries.yaml"))
    };
    // Both MachineConfigs of the pass: the namespace's file and its attachments.
    c.until("the namespace's file", async |c: &Cluster| {
        team_file(c).await.is_some()
            && sigstore_yaml(c)
                .await
                .is_some_and(|y| y.contains("registry.example.com/team-a:"))
    })
    .await;
    let team: Value = serde_json::from_str(&team_file(&c).await.unwrap()).unwrap();
    let docker = team["transports"]["docker"].as_object().unwrap();
    assert!(docker.contains_key("registry.example.com/team-a"));
    // The cluster's policy.json is its base: its scopes and the blocked registry hold.
    assert!(docker.contains_key("quay.io/example-org"));
    assert_eq!(docker["blocked.example.com"], json!([{"type": "reject"}]));
    assert!(!docker.contains_key("quay.io/example-org/tools"));
    assert!(!policy_json(&c, "worker")
        .await
        .contains("registry.example.com/team-a"));
    // A mirror set, watched: the mirror gets sigstore attachments too.
    c.seed(json!({
        "apiVersion": "config.openshift.io/v1",
        "kind": "ImageDigestMirrorSet",
        "metadata": {"name": "team-a"},
        "spec": {"imageDigestMirrors": [
            {"source": "registry.example.com/team-a", "mirrors": ["mirror.internal/team-a"]}
        ]}
    }))
    .await;
    c.until("the mirror's sigstore attachments", async |c: &Cluster| {
        sigstore_yaml(c)
            .await
            .is_some_and(|y| y.contains("mirror.internal/team-a:"))
    })
    .await;
    c.until("the MCO's status", async |c: &Cluster| {
        c.image_policy("team-a", "team").await.unwrap()["status"]["conditions"][1]["reason"]
            == "ConflictScopes"
    })
    .await;
    let status = &c.image_policy("team-a", "team").await.unwrap()["status"];
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][1]["status"], "False");
    assert_eq!(
        status["conditions"][1]["message"],
        "has conflicting scope(s) [\"quay.io/example-org/tools\"] that equal to or nest inside existing clusterimagepolicy, only policy from clusterimagepolicy scope(s) will be applied"
    );
    // One stored before admission could refuse it: held back, with a Warning Event in
    // its own namespace, where `oc describe imagepolicy` looks.
    c.seed_unadmitted(team_policy("team-a", "held", &["blocked.example.com/app"]))
        .await;
    c.until("the ImagePolicy's Event", async |c: &Cluster| {
        c.list("events.k8s.io", "events")
            .await
            .iter()
            .any(|e| e["regarding"]["kind"] == "ImagePolicy")
    })
    .await;
    let events = c.list("events.k8s.io", "events").await;
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
    c.until("the file removed", async |c: &Cluster| {
        team_file(c).await.is_none()
    })
    .await;
    let writers: BTreeSet<String> = writes(&c.api().requests(), "machineconfigs")
        .iter()
        .filter(|r| r.user != "admin")
        .map(|r| r.user.clone())
        .collect();
    assert_eq!(writers, BTreeSet::from([RECONCILER_ACCOUNT.to_string()]));
}

/// Our MachineConfig out of the watch's sight (its role label removed: the server sends
/// DELETED to a label-selector watch) is read and taken back on the next create's
/// AlreadyExists, not retried every second as a conflict. One that is not ours (our label
/// removed too) is left alone and reported exactly: log, /readyz, metric, Event; its pool
/// stops there, so no node requires signatures it has no attachments for, while the other
/// pool and the policies' statuses are written all the same, and the retries back off.
/// A 100-object apply is one burst: each MachineConfig is written at most twice (the
/// first change, and the rest), both as `kubectl apply` sends it and at the pace measured
/// on a loaded cluster (an object every 70 ms, 7 s in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_object_apply_writes_each_machine_config_at_most_twice() {
    let c = cluster(&["--lease-duration", "4"]).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("written", all_ours_written).await;
    let policy = |i: usize| {
        signed_apps(
            &format!("burst-{i:03}"),
            &[&format!("quay.io/burst/app{i}")],
        )
    };
    for paced in [false, true] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.api().clear_requests();
        let started = std::time::Instant::now();
        let range = if paced { 100..200 } else { 0..100 };
        if paced {
            for i in range.clone() {
                c.seed(policy(i)).await;
                tokio::time::sleep(Duration::from_millis(70)).await;
            }
        } else {
            let items: Vec<Value> = range.clone().map(policy).collect();
            let list = c.write(
                "burst.json",
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
                    .unwrap(),
            );
            let run = c.apply(&list).await;
            assert!(run.ok, "{run:?}");
        }
        let took = started.elapsed();
        let last = format!("quay.io/burst/app{}", range.end - 1);
        c.until("the last policy written", async |c: &Cluster| {
            policy_json(c, "worker").await.contains(&last)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = c.api().requests();
        let mut per_mc: std::collections::BTreeMap<String, usize> = Default::default();
        for w in writes(&log, "machineconfigs") {
            *per_mc.entry(w.name.clone()).or_default() += 1;
        }
        eprintln!("100 policies in {took:?} (paced: {paced}); MachineConfig writes: {per_mc:?}");
        assert!(!per_mc.is_empty());
        assert!(per_mc.values().all(|&n| n <= 2), "{per_mc:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_machine_configs_changed_or_deleted_by_others_are_restored_with_an_event_naming_who() {
    let c = cluster(&["--lease-duration", "2"]).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("written", all_ours_written).await;
    let name = "99-worker-generated-imagepolicies";
    let tamper = r#"[{"op":"replace","path":"/spec/config/storage/files/0/contents/source","value":"data:,tampered"}]"#;
    let run = c
        .kubectl(&["patch", "mc", name, "--type=json", "-p", tamper])
        .await;
    assert!(run.ok, "{run:?}");
    c.until("restored", async |c: &Cluster| {
        c.machine_config(name).await.is_some_and(|m| {
            m["spec"]["config"]["storage"]["files"][0]["contents"]["source"] != "data:,tampered"
        })
    })
    .await;
    let event = |reason: &'static str| {
        async move |c: &Cluster| {
            c.list("events.k8s.io", "events")
                .await
                .iter()
                .any(|e| e["reason"] == reason && e["regarding"]["name"] == name)
        }
    };
    c.until("a Repaired Event", event("Repaired")).await;
    let events = c.list("events.k8s.io", "events").await;
    let repaired = events.iter().find(|e| e["reason"] == "Repaired").unwrap();
    let note = repaired["note"].as_str().unwrap();
    assert!(
        note.contains("was changed by kubectl-patch (Update at "),
        "{note}"
    );
    let run = c.kubectl(&["delete", "mc", name]).await;
    assert!(run.ok, "{run:?}");
    c.until("recreated", async |c: &Cluster| {
        c.machine_config(name).await.is_some()
    })
    .await;
    c.until("a Recreated Event", event("Recreated")).await;
    // The API shows the write before the replica has logged it.
    c.until("the restore logged", async |c: &Cluster| {
        c.webhook_log().contains("was deleted; restored")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_config_out_of_sight_is_taken_back_and_a_foreign_one_reported() {
    let c = cluster(&["--lease-duration", "2"]).await;
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("written", all_ours_written).await;

    let role = "machineconfiguration.openshift.io/role";
    let run = c
        .kubectl(&[
            "label",
            "mc",
            "99-worker-generated-imagepolicies",
            &format!("{role}-"),
        ])
        .await;
    assert!(run.ok, "{run:?}");
    c.until("taken back", async |c: &Cluster| {
        c.machine_config("99-worker-generated-imagepolicies")
            .await
            .unwrap()["metadata"]["labels"][role]
            == "worker"
    })
    .await;
    // The API shows the write before the replica has logged it.
    c.until("the take-back logged", async |c: &Cluster| {
        c.webhook_log()
            .contains("took back a MachineConfig of ours")
    })
    .await;

    // Not ours any more: neither our label nor the role label.
    let run = c
        .kubectl(&[
            "label",
            "mc",
            "99-master-generated-imagepolicies",
            &format!("{role}-"),
            "app.kubernetes.io/managed-by-",
        ])
        .await;
    assert!(run.ok, "{run:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.api().clear_requests();
    let scopes = [
        "quay.io/example-org",
        "registry.example.com:5000/team/app",
        "quay.io/newteam",
    ];
    c.apply_value(&signed_apps("signed-apps", &scopes)).await;
    c.until("the worker pool written", async |c: &Cluster| {
        policy_json(c, "worker").await.contains("quay.io/newteam")
            && c.machine_config("99-worker-generated-imagepolicies")
                .await
                .and_then(|m| file(&m, "/etc/containers/registries.d/sigstore-registries.yaml"))
                .is_some_and(|y| y.contains("quay.io/newteam"))
    })
    .await;
    c.until("the status written", async |c: &Cluster| {
        c.policy("signed-apps").await.unwrap()["status"]["conditions"][0]["observedGeneration"] == 2
    })
    .await;
    let readyz = c
        .readyz_says("MachineConfig 99-master-generated-imagepolicies exists and is not ours")
        .await;
    assert!(
        readyz.contains("lacks the label app.kubernetes.io/managed-by=cip-webhook"),
        "{readyz}"
    );
    c.until("an Event on the MachineConfig", async |c: &Cluster| {
        c.list("events.k8s.io", "events").await.iter().any(|e| {
            e["reason"] == "Occupied"
                && e["regarding"]["name"] == "99-master-generated-imagepolicies"
        })
    })
    .await;
    // Counted when the pass ends, after its Event and its statuses.
    c.until("the occupied error counted", async |c: &Cluster| {
        c.metrics()
            .await
            .contains("cip_webhook_reconcile_errors_total{reason=\"occupied\"}")
    })
    .await;
    // The master pool stopped at its attachments: its policy.json does not require what
    // its nodes could not find.
    assert!(!policy_json(&c, "master").await.contains("quay.io/newteam"));
    let foreign = c
        .machine_config("99-master-generated-imagepolicies")
        .await
        .unwrap();
    assert!(
        foreign["metadata"]["labels"].get(role).is_none(),
        "left alone: {foreign}"
    );
    // Backing off: a handful of attempts over 8 s, not one a second.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let attempts = c
        .api()
        .requests()
        .iter()
        .filter(|r| r.verb == "create" && r.resource == "machineconfigs" && r.code == 409)
        .count();
    assert!(
        (1..=4).contains(&attempts),
        "{attempts} creates refused with 409"
    );
}

/// The Lease as client-go judges it: a peer's renewTime is its own wall clock, never
/// compared with ours. A peer an hour behind that keeps renewing keeps the lease (a
/// comparison of clocks would take it at once); one an hour ahead that dies is replaced a
/// lease duration after its last renewal (a comparison would wait an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_clock_skew_neither_takes_nor_keeps_its_lease() {
    let c = Cluster::real(&crds(&[])).await;
    c.seed_files(EXAMPLES).await;
    let lease = |renew: &str| {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "cip-webhook-reconcile", "namespace": NAMESPACE},
            "spec": {"holderIdentity": "skewed-peer", "leaseDurationSeconds": 4,
                     "renewTime": renew, "leaseTransitions": 1}
        })
    };
    // A MicroTime as a node whose clock is off by `hours` writes it.
    let at = |hours: i64, seconds: i64| {
        let t = time::OffsetDateTime::now_utc()
            + time::Duration::hours(hours)
            + time::Duration::seconds(seconds);
        let t = t.replace_nanosecond(0).unwrap();
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
            .replace('Z', ".000000Z")
    };
    c.seed(lease(&at(-1, 0))).await;
    let ours = c
        .spawn_reconciler(RECONCILER_ACCOUNT, "ours", &["--lease-duration", "4"])
        .await;
    // Behind by an hour, renewing every second for 8 s (two of its durations): kept.
    for n in 0..8 {
        c.seed(lease(&at(-1, n))).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            holder(&c).await.as_deref(),
            Some("skewed-peer"),
            "after {n} s\n{}",
            ours.log()
        );
    }
    // Its last renewal written by a clock an hour ahead, then silence.
    c.seed(lease(&at(1, 0))).await;
    let died = Instant::now();
    c.until("ours leads", async |c: &Cluster| {
        holder(c).await.as_deref() == Some("ours")
    })
    .await;
    let took = died.elapsed();
    eprintln!("taken {took:?} after the peer's last renewal (lease 4 s)");
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_secs(9),
        "{took:?}"
    );
}

/// FeatureGate `cluster` with `SigstoreImageVerification` on or off for the version
/// examples/clusterversion.yaml runs.
fn feature_gate(enabled: bool) -> Value {
    let gate = json!([{"name": "SigstoreImageVerification"}]);
    json!({"apiVersion": "config.openshift.io/v1", "kind": "FeatureGate",
        "metadata": {"name": "cluster"}, "spec": {},
        "status": {"featureGates": [{"version": "4.20.3",
            "enabled": if enabled { gate.clone() } else { json!([]) },
            "disabled": if enabled { json!([]) } else { gate }}]}})
}

/// The conditions' types, in order.
fn types(conditions: &Value) -> Vec<&str> {
    conditions
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect()
}

/// Another writer's condition on signed-apps, as a controller's UpdateStatus adds it: the
/// whole status replaced, with one more entry.
async fn add_condition(c: &Cluster, kind: &str, reason: &str, message: &str) {
    let mut cip = c.policy("signed-apps").await.unwrap();
    cip["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({
        "type": kind, "status": "True", "reason": reason, "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z"}));
    let file = c.write(&format!("{kind}.json"), cip.to_string());
    let run = c
        .kubectl(&["replace", "--subresource=status", "-f", &file])
        .await;
    assert!(run.ok, "{run:?}");
}

/// After the machine-config-operator takes over rendering, the policy's `Applied` no
/// longer claims our MachineConfigs: it says who renders it, our `Pending` goes, and the
/// conditions other managers write (the operator's own `Pending`) are never clobbered —
/// server-side apply by our field manager on the CRD's map list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_handover_the_condition_says_who_renders_and_keeps_the_operators() {
    let mut c = Cluster::real(&crds(&[Crd::FeatureGate])).await;
    c.seed_files(EXAMPLES).await;
    c.seed(feature_gate(false)).await;
    // The status writes counted below are the reconciler's (as in `cluster()`).
    c.start_webhook(&["--lease-duration", "2", "--running-images=false"])
        .await;
    c.apply_ok("examples/signed-apps.yaml").await;
    c.until("status Applied", async |c: &Cluster| {
        c.policy("signed-apps").await.unwrap()["status"]["conditions"][0]["status"] == "True"
    })
    .await;
    // Another manager's condition beside ours survives our writes.
    add_condition(&c, "Observed", "ByAnother", "written by another controller").await;

    // The upgrade turns the gate on: we stand down.
    let run = c
        .kubectl(&[
            "patch",
            "featuregate",
            "cluster",
            "--subresource=status",
            "--type=merge",
            "-p",
            &json!({"status": feature_gate(true)["status"]}).to_string(),
        ])
        .await;
    assert!(run.ok, "{run:?}");
    c.until("Applied says the MCO renders", async |c: &Cluster| {
        let cip = c.policy("signed-apps").await.unwrap();
        cip["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["reason"] == "RenderedByMachineConfigOperator")
    })
    .await;
    let conditions = c.policy("signed-apps").await.unwrap()["status"]["conditions"].clone();
    assert_eq!(
        types(&conditions),
        ["Applied", "Observed"],
        "{conditions:#}"
    );
    assert_eq!(conditions[0]["status"], "Unknown");
    assert!(conditions[0]["message"]
        .as_str()
        .unwrap()
        .contains("the machine-config-operator renders"));

    // The operator writes its own Pending (as its UpdateStatus does: the whole list).
    add_condition(
        &c,
        "Pending",
        "ConflictScopes",
        "has conflict scope(s) of the payload repository",
    )
    .await;
    let before = c.api().requests().len();
    // A change that makes us pass again (a label on the policy) writes no status of ours.
    let run = c
        .kubectl(&["label", "clusterimagepolicy", "signed-apps", "touched=yes"])
        .await;
    assert!(run.ok, "{run:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = c.api().requests();
    let ours: Vec<&Audited> = writes(&log[before..], "clusterimagepolicies")
        .into_iter()
        .filter(|r| r.subresource == "status" && r.user == RECONCILER_ACCOUNT)
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
    let conditions = c.policy("signed-apps").await.unwrap()["status"]["conditions"].clone();
    assert_eq!(
        types(&conditions),
        ["Applied", "Observed", "Pending"],
        "{conditions:#}"
    );
    c.stop_webhook().await;
}
