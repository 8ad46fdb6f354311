//! The running-images pass at scale, as a benchmark (`scripts/bench-running-images.sh`;
//! ignored in the suite, whose `running_images` tests run the same path on 24 pods): the
//! real API server with `CIP_BENCH_PODS` pods (10,000 by default) over `CIP_BENCH_DIGESTS`
//! signed images (2,000) in the in-process registry, 50 ms added to every answer. Prints
//! the first full pass's time, the reconciler's RSS with the pass and without it, the
//! registry's request count, and the admission replica's decision times for a new key over
//! every covered digest and for an edit that keeps the key (from the copy: the registry's
//! count must not move). `CIP_BENCH_KEYLESS=1` signs every digest keyless instead (a
//! Fulcio leaf of its own, the chain and a Rekor bundle), under a FulcioCAWithRekor policy.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use testkit::cluster::*;
use testkit::fakeregistry::{many_keyless, many_signed, signer, start, Fake, KeylessSigner};
use testkit::paths::b64;

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

/// `cip_webhook_admission_duration_seconds`'s sum and count.
fn admission_sum(metrics: &str) -> (f64, u64) {
    let field = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        field("cip_webhook_admission_duration_seconds_sum "),
        field("cip_webhook_admission_duration_seconds_count ") as u64,
    )
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
    let keyless = std::env::var("CIP_BENCH_KEYLESS").is_ok_and(|v| v == "1");
    let s = signer();
    let (registry, host) = start(Fake::default()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let fulcio = KeylessSigner::new(now);
    let images = if keyless {
        many_keyless(&mut registry.fake.lock().unwrap(), &fulcio, &host, digests)
    } else {
        many_signed(&mut registry.fake.lock().unwrap(), &s, &host, digests)
    };
    // The policy the images are signed for, over `scopes`.
    let applied = |scopes: Value| {
        let mut p = policy("bench", &host, &s.pem);
        p["spec"]["scopes"] = scopes;
        if keyless {
            p["spec"]["policy"]["rootOfTrust"] = json!({"policyType": "FulcioCAWithRekor",
                "fulcioCAWithRekor": {"fulcioCAData": b64(&fulcio.root.pem),
                    "rekorKeyData": b64(&fulcio.rekor.public_pem),
                    "fulcioSubject": {"oidcIssuer": fulcio.issuer, "signedEmail": fulcio.email}}});
        }
        p
    };
    registry.fake.lock().unwrap().latency = Duration::from_millis(50);

    let mut c = crate::running_images::cluster_reaching(&[&host]).await;
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
    c.seed_unadmitted(applied(json!([format!("{host}/org")])))
        .await;

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
    // The conditions are written before the pass lets go of its working memory; measured
    // at once and again after settling, as the baseline settled.
    let at_end = memory(reconciler.child.id().unwrap());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let with_pass = memory(reconciler.child.id().unwrap());
    println!(
        "bench: images signed {}",
        if keyless {
            "keyless (Fulcio, Rekor)"
        } else {
            "with a key"
        }
    );
    println!(
        "bench: first full pass over {digests} digests ({pods} pods) at 50 ms: {pass:?} from the reconciler's start, {requests} registry requests"
    );
    println!(
        "bench: reconciler RSS without the pass {} KiB (peak {}), with it {} KiB 10 s after the pass (peak {}): growth {} KiB (as the conditions appeared: {} KiB), peak growth {} KiB",
        baseline.0,
        baseline.1,
        with_pass.0,
        with_pass.1,
        with_pass.0 as i64 - baseline.0 as i64,
        at_end.0 as i64 - baseline.0 as i64,
        with_pass.1 as i64 - baseline.1 as i64
    );

    // Admission from the copy: a new key over every covered digest.
    let url = format!("http://{}/running-images", reconciler.metrics_addr);
    let (size, tag) = copy_fetched(reconciler.metrics_addr, None).await;
    let (again, _) = copy_fetched(reconciler.metrics_addr, tag.as_deref()).await;
    println!(
        "bench: the copy a replica fetches: {size} bytes; fetched again with its tag: {again}",
    );
    c.start_webhook(&["--mode", "admission-only", "--running-images-from", &url])
        .await;
    let admission_pid = c.webhook_pid().unwrap();
    let (idle, _) = memory(admission_pid);
    let before = registry.requests.load(std::sync::atomic::Ordering::Relaxed);
    // Each run's reviews, timed by the webhook itself: the histogram's sum and count move
    // by exactly that run's reviews (mutating and validating).
    let review = async |c: &Cluster, object: &Value| -> (Duration, String) {
        let file = c.write("proposal.json", object.to_string());
        let (sum, count) = admission_sum(&c.metrics().await);
        let run = c
            .kubectl(&["apply", "--dry-run=server", "--validate=false", "-f", &file])
            .await;
        assert!(run.ok, "{run:?}");
        let (sum2, count2) = admission_sum(&c.metrics().await);
        assert!(count2 > count, "no review counted");
        let warning = run.stderr.lines().find(|l| l.contains("newly refuses"));
        (
            Duration::from_secs_f64(sum2 - sum),
            warning.unwrap_or_default().chars().take(200).collect(),
        )
    };
    // The copy is in once a new key draws the warning.
    let deadline = Instant::now() + Duration::from_secs(120);
    let key = || testkit::signing::p256().1;
    while review(&c, &policy("rotation", &host, &key()))
        .await
        .1
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no warning from the copy");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut cold = Vec::new();
    let mut warned = String::new();
    for _ in 0..20 {
        let (took, warning) = review(&c, &policy("rotation", &host, &key())).await;
        assert!(!warning.is_empty(), "a new key warns");
        warned = warning;
        cold.push(took);
    }
    // Warm: an edit of the applied policy that keeps its key (a scope added).
    let edit = applied(json!([format!("{host}/org"), format!("{host}/elsewhere")]));
    let mut warm = Vec::new();
    for _ in 0..20 {
        let (took, warning) = review(&c, &edit).await;
        assert!(warning.is_empty(), "{warning}");
        warm.push(took);
    }
    let (rss, peak) = memory(admission_pid);
    let during = registry.requests.load(std::sync::atomic::Ordering::Relaxed) - before;
    println!("bench: admission warning: {warned}");
    for (what, mut times) in [
        ("a new key over every digest (cold)", cold),
        ("an edit that keeps the key (warm copy)", warm),
    ] {
        let order: Vec<String> = times
            .iter()
            .map(|t| format!("{:.1}", t.as_secs_f64() * 1e3))
            .collect();
        println!(
            "bench: {what}, each run in ms, in order: {}",
            order.join(" ")
        );
        times.sort();
        println!(
            "bench: admission time of kubectl apply --dry-run=server, {what}, 20 runs: median {:?}, max {:?} (the webhook's own time: both reviews, body read to response)",
            times[10], times[19]
        );
    }
    println!(
        "bench: admission RSS {idle} KiB before, {rss} KiB after (peak {peak}); registry requests during admission: {during}"
    );
    assert_eq!(during, 0, "admission asked the registry");
}
