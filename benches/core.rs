//! Core speed: render 1,000 and 10,000 scopes, validate one policy.
//! `cargo bench --bench core`; figures go in the issue notes.

use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;

use cip_webhook::cluster::ClusterFacts;
use cip_webhook::documents;
use cip_webhook::model::ClusterImagePolicy;
use cip_webhook::render::{self, Inputs, RenderOptions};
use cip_webhook::validate::{self, Context};

const SCOPES_PER_POLICY: usize = 5;

fn policy(i: usize) -> ClusterImagePolicy {
    let key = base64::engine::general_purpose::STANDARD
        .encode(include_str!("../tests/fixtures/keys/cosign.pub"));
    let scopes: Vec<String> = (0..SCOPES_PER_POLICY)
        .map(|j| format!("registry{i}.example.com/team{j}/app"))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "config.openshift.io/v1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": format!("policy-{i:05}")},
        "spec": {
            "scopes": scopes,
            "policy": {
                "rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": key}},
                "signedIdentity": {"matchPolicy": "MatchRepository"}
            }
        }
    }))
    .unwrap()
}

fn cluster() -> Inputs {
    let mut docs = Vec::new();
    for f in [
        "examples/pools.yaml",
        "examples/image.yaml",
        "examples/clusterversion.yaml",
    ] {
        docs.extend(documents::parse_documents(f, &std::fs::read_to_string(f).unwrap()).unwrap());
    }
    documents::load(&docs).unwrap().inputs
}

fn bench_render(c: &mut Criterion) {
    let mut group = c.benchmark_group("render");
    group.sample_size(20);
    // A budget that 10,000 scopes fit in: the benchmark measures rendering, not refusal.
    let options = RenderOptions {
        size_budget: 64 << 20,
        ..RenderOptions::default()
    };
    for policies in [200, 2000] {
        let mut inputs = cluster();
        inputs.policies = (0..policies).map(policy).collect();
        let plan = render::plan(&inputs, &options).unwrap();
        assert_eq!(plan.pools[0].scopes.len(), policies * SCOPES_PER_POLICY);
        group.throughput(Throughput::Elements((policies * SCOPES_PER_POLICY) as u64));
        group.bench_with_input(
            BenchmarkId::new("scopes", policies * SCOPES_PER_POLICY),
            &inputs,
            |b, inputs| b.iter(|| render::plan(inputs, &options).unwrap()),
        );
    }
    group.finish();
}

fn bench_validate(c: &mut Criterion) {
    let inputs = cluster();
    let facts = ClusterFacts::new(
        inputs.image.as_ref(),
        inputs.cluster_version.as_ref(),
        &RenderOptions::default().extra_payload_repos,
    )
    .unwrap();
    let object = serde_json::to_value(policy(1)).unwrap();
    let ctx = Context {
        facts: &facts,
        size: None,
        exempt: false,
    };
    assert!(validate::validate_value(&object, &ctx).1.allowed());
    c.bench_function("validate/one_policy", |b| {
        b.iter(|| validate::validate_value(&object, &ctx))
    });
}

/// The whole admission decision on a request body, as `/validate` makes it: JSON decode,
/// validation against the snapshot, the response encoded. The HTTP and TLS cost is in
/// `scripts/load-test.sh`.
fn bench_review(c: &mut Criterion) {
    use cip_webhook::admission::{self, Config, Endpoint, Snapshot};
    let snapshot = Snapshot::build(&cluster(), &RenderOptions::default());
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0d6c1d9a-5f2a-4d4e-9b8e-1b2c3d4e5f60",
            "kind": {"group": "config.openshift.io", "version": "v1", "kind": "ClusterImagePolicy"},
            "name": "policy-00001",
            "operation": "CREATE",
            "userInfo": {"username": "kube:admin"},
            "object": policy(1),
        }
    }))
    .unwrap();
    let config = Config::default();
    let (_, decision) = admission::review(&body, Endpoint::Validate, &snapshot, &config).unwrap();
    assert_eq!(decision.verdict.as_str(), "allowed", "{decision:?}");
    c.bench_function("admission/review_and_encode", |b| {
        b.iter(|| {
            let (review, _) =
                admission::review(&body, Endpoint::Validate, &snapshot, &config).unwrap();
            serde_json::to_vec(&review).unwrap()
        })
    });
}

criterion_group!(benches, bench_render, bench_validate, bench_review);
criterion_main!(benches);
