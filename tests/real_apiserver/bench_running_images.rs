//! The running-images pass at scale, as a benchmark (`scripts/bench-running-images.sh`;
//! ignored in the suite, whose `running_images` tests run the same path on 24 pods): the
//! real API server with `CIP_BENCH_PODS` pods (10,000 by default) over `CIP_BENCH_DIGESTS`
//! signed images (2,000) in the in-process registry, 50 ms added to every answer. Prints
//! the first full pass's time, the reconciler's RSS with the pass and without it, the
//! registry's request count, and the admission replica's decision latencies for a new
//! key over every covered digest (from the copy: the registry's count must not move).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use testkit::cluster::*;
use testkit::fakeregistry::{many_signed, signer, start, Fake};
use testkit::paths::b64;
use testkit::upstream::{Crd, MCO_CRDS};

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn covers_all(policy: &Value, n: usize) -> bool {
    policy["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["type"] == "RunningImagesAccepted"
                && c["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(&format!("covers {n} running images: {n} accepted"))
        })
}

fn policy(name: &str, host: &str, key_pem: &str) -> Value {
    json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
        "metadata": {"name": name},
        "spec": {"scopes": [format!("{host}/org")],
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": b64(key_pem)}},
                "signedIdentity": {"matchPolicy": "MatchRepoDigestOrExact"}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_running_images() {
    let pods = size("CIP_BENCH_PODS", 10_000);
    let digests = size("CIP_BENCH_DIGESTS", 2_000);
    let s = signer();
    let (registry, host) = start(Fake::default()).await;
    let images = many_signed(&mut registry.fake.lock().unwrap(), &s, &host, digests);
    registry.fake.lock().unwrap().latency = Duration::from_millis(50);

    let crds = [
        &[Crd::ClusterImagePolicyV1, Crd::Image, Crd::ClusterVersion][..],
        &MCO_CRDS,
    ]
    .concat();
    let mut c = Cluster::real(&crds).await;
    c.seed_files(EXAMPLES).await;
    let mut image = c
        .get("config.openshift.io", "images", "", "cluster")
        .await
        .unwrap();
    image["spec"]["registrySources"]["insecureRegistries"] = json!([host]);
    c.seed(image).await;
    for n in 0..10 {
        c.seed(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("worker-{n}"),
            "labels": {"node-role.kubernetes.io/worker": "", "kubernetes.io/arch": "amd64"}}}),
        )
        .await;
    }
    let started = Instant::now();
    let api = c.api();
    futures_util::stream::iter(0..pods)
        .map(|i| {
            let (image, digest) = &images[i % images.len()];
            let id = format!("{}@{digest}", image.rsplit_once(':').unwrap().0);
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": format!("ns-{}", i % 20)},
                "spec": {"nodeName": format!("worker-{}", i % 10),
                    "containers": [{"name": "app", "image": image}]},
                "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": image,
                    "imageID": id, "ready": true, "restartCount": 0, "started": true,
                    "state": {"running": {}}}]}});
            api.seed(pod)
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    println!(
        "bench: {pods} pods over {digests} digests created with status in {:?}",
        started.elapsed()
    );
    c.seed_unadmitted(policy("bench", &host, &s.pem)).await;

    // Without the pass: the reconciler's memory for the same cluster.
    let off = c
        .spawn_reconciler(
            RECONCILER_ACCOUNT,
            "baseline",
            &["--running-images=false", "--lease-name", "baseline"],
        )
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let baseline = memory(off.child.id().unwrap());
    off.terminate().await;

    let before = registry.requests.load(std::sync::atomic::Ordering::Relaxed);
    let reconciler = c
        .spawn_reconciler(
            RECONCILER_ACCOUNT,
            "reconciler-0",
            &["--running-images-interval", "3600"],
        )
        .await;
    let t = Instant::now();
    c.until("the first full pass", async |c: &Cluster| {
        c.policy("bench")
            .await
            .is_some_and(|p| covers_all(&p, digests))
    })
    .await;
    let pass = t.elapsed();
    let requests = registry.requests.load(std::sync::atomic::Ordering::Relaxed) - before;
    let with_pass = memory(reconciler.child.id().unwrap());
    println!(
        "bench: first full pass over {digests} digests ({pods} pods) at 50 ms: {pass:?} from the reconciler's start, {requests} registry requests"
    );
    println!(
        "bench: reconciler RSS without the pass {} KiB (peak {}), with it {} KiB (peak {}): growth {} KiB, peak growth {} KiB",
        baseline.0,
        baseline.1,
        with_pass.0,
        with_pass.1,
        with_pass.0 as i64 - baseline.0 as i64,
        with_pass.1 as i64 - baseline.1 as i64
    );

    // Admission from the copy: a new key over every covered digest.
    let url = format!("http://{}/running-images", reconciler.metrics_addr);
    c.start_webhook(&["--mode", "admission-only", "--running-images-from", &url])
        .await;
    let admission_pid = c.webhook_pid().unwrap();
    let (idle, _) = memory(admission_pid);
    let other = testkit::signing::p256().1;
    let file = c.write(
        "rotation.json",
        policy("rotation", &host, &other).to_string(),
    );
    let before = registry.requests.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut times = Vec::new();
    let mut warned = String::new();
    while times.len() < 20 {
        let t = Instant::now();
        let run = c
            .kubectl(&["apply", "--dry-run=server", "--validate=false", "-f", &file])
            .await;
        let took = t.elapsed();
        assert!(run.ok, "{run:?}");
        if let Some(w) = run.stderr.lines().find(|l| l.contains("newly refuses")) {
            warned = w.chars().take(200).collect();
            times.push(took);
        } else {
            assert!(Instant::now() < deadline, "no warning: {run:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let (rss, peak) = memory(admission_pid);
    let during = registry.requests.load(std::sync::atomic::Ordering::Relaxed) - before;
    times.sort();
    println!("bench: admission warning: {warned}");
    println!(
        "bench: kubectl apply --dry-run=server with the warning, 20 runs: median {:?}, max {:?} (kubectl's own start included); admission RSS {idle} KiB before, {rss} KiB after (peak {peak}); registry requests during admission: {during}",
        times[10],
        times[19]
    );
    let metrics = c.metrics().await;
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("cip_webhook_admission_duration_seconds"))
    {
        println!("bench: {l}");
    }
    assert_eq!(during, 0, "admission asked the registry");
}
