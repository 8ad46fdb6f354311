//! Benchmarks of the reconciler against the API simulator, run by
//! `scripts/bench-reconcile.sh` (release build): latency of one change, a GitOps burst of
//! 900 policies and one of 5,000 (time until every policy has its conditions, writes per
//! MachineConfig), and RSS with the MCO's rendered MachineConfigs in the cluster. Each
//! asserts its goal, so the script fails when one is missed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apisim::Simulator;
use base64::Engine;
use serde_json::{json, Value};
use testkit::cluster::sim::*;
use testkit::cluster::*;
use testkit::upstream::Crd;

const KIB: usize = 1024;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// RSS with its parts: the heap and stacks, and the binary's pages.
fn rss_parts(pid: u32) -> String {
    format!(
        "{} KiB (anonymous {} KiB, file {} KiB)",
        rss_kib(pid),
        status_kib(pid, "RssAnon:"),
        status_kib(pid, "RssFile:")
    )
}

/// A MachineConfig with one file of `size` bytes.
fn big_mc(name: &str, labels: Value, owner: Value, size: usize) -> Value {
    let data: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let source = format!(
        "data:text/plain;charset=utf-8;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(data)
    );
    json!({
        "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfig",
        "metadata": {"name": name, "labels": labels, "ownerReferences": owner,
            "annotations": {"machineconfiguration.openshift.io/generated-by-controller-version": "abc"}},
        "spec": {"config": {"ignition": {"version": "3.5.0"},
            "storage": {"files": [{"path": format!("/etc/{name}"), "mode": 420, "contents": {"source": source}}]}}}
    })
}

/// What a real cluster holds beside us: the MCO's `rendered-<pool>-<hash>` merges (owned
/// by the pool, no role label; never cleaned up) and the large base MachineConfigs.
fn seed_cluster_bulk(sim: &Simulator, rendered: usize) {
    for i in 0..rendered {
        let pool = if i % 2 == 0 { "worker" } else { "master" };
        let owner = json!([{"apiVersion": "machineconfiguration.openshift.io/v1",
            "kind": "MachineConfigPool", "name": pool, "uid": "pool-uid", "controller": true}]);
        sim.seed(big_mc(
            &format!("rendered-{pool}-{i:032x}"),
            json!({}),
            owner,
            300 * KIB,
        ))
        .unwrap();
    }
    for pool in ["master", "worker"] {
        let labels = json!({"machineconfiguration.openshift.io/role": pool});
        sim.seed(big_mc(&format!("00-{pool}"), labels, json!([]), 300 * KIB))
            .unwrap();
    }
}

async fn cluster(extra: &[&str], rendered: usize) -> Cluster {
    let mut c = Cluster::simulated(&[
        Crd::ClusterImagePolicyV1,
        Crd::Image,
        Crd::ClusterVersion,
        Crd::MachineConfig,
        Crd::MachineConfigPool,
    ])
    .await;
    c.seed_files(EXAMPLES).await;
    seed_cluster_bulk(c.sim(), rendered);
    c.start_webhook(extra).await;
    c
}

fn file(mc: &Value, path: &str) -> Option<String> {
    let files = mc["spec"]["config"]["storage"]["files"].as_array()?;
    let source = files.iter().find(|f| f["path"] == path)?["contents"]["source"].as_str()?;
    let data = source.split_once("base64,")?.1;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    Some(String::from_utf8(bytes).unwrap())
}

fn path_of(name: &str) -> &'static str {
    if name.ends_with("registries") {
        "/etc/containers/policy.json"
    } else {
        "/etc/containers/registries.d/sigstore-registries.yaml"
    }
}

/// Policies with conditions for their current generation.
fn reconciled(sim: &Simulator) -> usize {
    sim.list("config.openshift.io", "clusterimagepolicies")
        .iter()
        .filter(|p| {
            let conditions = p["status"]["conditions"].as_array();
            conditions.is_some_and(|cs| {
                cs.len() == 2
                    && cs
                        .iter()
                        .all(|c| c["observedGeneration"] == p["metadata"]["generation"])
            })
        })
        .count()
}

/// MachineConfig writes by name.
fn writes_per_mc(sim: &Simulator) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in sim.requests() {
        if r.resource == "machineconfigs"
            && matches!(r.verb.as_str(), "create" | "update" | "delete")
        {
            *out.entry(r.name).or_default() += 1;
        }
    }
    out
}

/// Seeds `n` policies at once (no admission: a GitOps burst as the store sees it), waits
/// until every policy has its conditions; returns the time that took.
async fn burst(c: &Cluster, first: usize, n: usize, total: usize) -> Duration {
    c.sim().clear_requests();
    let started = Instant::now();
    for i in first..first + n {
        let scope = format!("quay.io/burst/app{i}");
        c.sim()
            .seed(signed_apps(&format!("p-{i:05}"), &[&scope]))
            .unwrap();
    }
    let deadline = started + Duration::from_secs(60);
    while reconciled(c.sim()) < total {
        assert!(
            Instant::now() < deadline,
            "never reached: {total} policies reconciled ({} so far)\n{}",
            reconciled(c.sim()),
            c.webhook_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// The policies held back for size are the newest: creationTimestamp, then name.
fn held_back_are_the_newest(sim: &Simulator) -> usize {
    let mut policies = sim.list("config.openshift.io", "clusterimagepolicies");
    policies.sort_by_key(|p| {
        (
            p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .to_string(),
            p["metadata"]["name"].as_str().unwrap().to_string(),
        )
    });
    let pending: Vec<bool> = policies
        .iter()
        .map(|p| p["status"]["conditions"][1]["status"] == "True")
        .collect();
    let first_pending = pending.iter().position(|p| *p).unwrap_or(pending.len());
    assert!(
        pending[first_pending..].iter().all(|p| *p),
        "a policy in force was held back for a newer one"
    );
    for p in &policies[first_pending..] {
        assert_eq!(p["status"]["conditions"][1]["reason"], "TooLarge", "{p}");
    }
    pending.len() - first_pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by scripts/bench-reconcile.sh"]
async fn latency_burst_and_memory() {
    let c = cluster(&[], 300).await;
    let pid = c.webhook_pid().unwrap();
    eprintln!(
        "bench: leader RSS with 300 rendered MachineConfigs of 300 KiB, no policy: {}",
        rss_parts(pid)
    );
    let kubeconfig = kube::config::Kubeconfig::read_from(c.sim().kubeconfig()).unwrap();
    let config = kube::config::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let resource =
        cip_webhook::k8s::store::policy_resource(cip_core::model::PolicyKind::Cluster, "v1");
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client, &resource);
    let mut latencies = Vec::new();
    let mut writes_per_change = Vec::new();
    for i in 0..100 {
        let scope = format!("quay.io/lat/app{i}");
        let v = signed_apps(&format!("lat-{i:03}"), &[&scope]);
        c.sim().clear_requests();
        let obj: kube::api::DynamicObject = serde_json::from_value(v).unwrap();
        api.create(&Default::default(), &obj).await.unwrap();
        c.until_sim("written", |s| {
            OURS.iter().all(|n| {
                machine_config(s, n)
                    .and_then(|m| file(&m, path_of(n)))
                    .is_some_and(|f| f.contains(&scope))
            })
        })
        .await;
        // Spaced like edits by hand, not a burst.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = c.sim().requests();
        let created = log
            .iter()
            .find(|r| r.verb == "create" && r.resource == "clusterimagepolicies")
            .unwrap()
            .at;
        let mc_writes: Vec<_> = log
            .iter()
            .filter(|r| {
                r.resource == "machineconfigs" && matches!(r.verb.as_str(), "create" | "update")
            })
            .collect();
        let last = mc_writes.iter().map(|r| r.at).max().unwrap();
        latencies.push(last.duration_since(created));
        writes_per_change.push(mc_writes.len());
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "bench: create -> 4 MachineConfigs written, 100 changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(latencies[49]),
        ms(latencies[98]),
        ms(latencies[99])
    );
    eprintln!(
        "bench: MachineConfig writes per change: min {} max {}",
        writes_per_change.iter().min().unwrap(),
        writes_per_change.iter().max().unwrap()
    );
    assert!(latencies[49] < Duration::from_millis(200));
    assert!(
        writes_per_change.iter().all(|w| *w == 4),
        "{writes_per_change:?}"
    );

    let took = burst(&c, 100, 900, 1000).await;
    let writes = writes_per_mc(c.sim());
    let held = held_back_are_the_newest(c.sim());
    eprintln!("bench: 900 policies seeded at once: all 1,000 with conditions after {took:?}; {held} held back (TooLarge), the newest");
    eprintln!("bench: MachineConfig writes during the burst: {writes:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(pid);
    eprintln!(
        "bench: leader RSS with 1,000 policies and 300 rendered MachineConfigs of 300 KiB: {}",
        rss_parts(pid)
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(writes.values().all(|n| *n <= 2), "{writes:?}");
    assert!(rss < 40 * 1024, "{rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by scripts/bench-reconcile.sh"]
async fn burst_of_5000_policies() {
    let c = cluster(&[], 0).await;
    let took = burst(&c, 0, 5000, 5000).await;
    let writes = writes_per_mc(c.sim());
    let held = held_back_are_the_newest(c.sim());
    eprintln!("bench: 5,000 policies seeded at once: all with conditions after {took:?}; {held} held back (TooLarge)");
    eprintln!("bench: MachineConfig writes during the burst: {writes:?}");
    eprintln!(
        "bench: leader RSS with 5,000 policies: {} KiB",
        rss_kib(c.webhook_pid().unwrap())
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(writes.values().all(|n| *n <= 2), "{writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by scripts/bench-reconcile.sh"]
async fn admission_only_memory() {
    let c = cluster(&["--mode", "admission-only"], 300).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = c.webhook_pid().unwrap();
    let idle = rss_kib(pid);
    for i in 0..1000 {
        let scope = format!("quay.io/mem/app{i}");
        c.sim()
            .seed(signed_apps(&format!("mem-{i}"), &[&scope]))
            .unwrap();
    }
    c.readyz_says("1000 ClusterImagePolicies").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kib(pid);
    eprintln!(
        "bench: admission-only RSS with 300 rendered MachineConfigs of 300 KiB: idle {idle} KiB, with 1,000 policies {rss} KiB"
    );
    assert!(rss < 40 * 1024, "{rss} KiB");
}
