//! Core speed: render 1,000 and 10,000 scopes; render namespaced ImagePolicies with
//! mirror sets (issue 14: 1,000 over 100 namespaces plus 200 IDMS entries, and halves and
//! doubles of it for linearity); validate one policy.
//! One signature layer judged: public key, Fulcio with Rekor, PKI.
//! `cargo bench --bench core`; figures go in the issue notes.

use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;

use cip_core::cluster::ClusterFacts;
use cip_core::documents;
use cip_core::model::ClusterImagePolicy;
use cip_core::render::{self, Inputs, RenderOptions};
use cip_core::validate::{self, Context};

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
        "metadata": {"name": format!("policy-{i:05}"), "uid": format!("uid-{i}"), "resourceVersion": "1"},
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
    // One settled change costs one render of everything cached: 1,000 and 10,000 policies
    // are the sizes issue 16 sets goals for (20 ms and 150 ms).
    for policies in [200, 1000, 2000, 10000] {
        let mut inputs = cluster();
        inputs.policies = (0..policies).map(|i| policy(i).into()).collect();
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

/// One change on a cluster: the same policies under the default budget (1 MiB, below
/// etcd's 1.5 MiB object limit, so what an API server can store). Every policy is still
/// validated and weighed each render; only the oldest that fit are written, the rest are
/// held back `TooLarge`. The 64 MiB budget above renders MachineConfigs of tens of MB that
/// no API server would accept: it measures the renderer, this the cost per change.
fn bench_render_cluster_budget(c: &mut Criterion) {
    let mut group = c.benchmark_group("render_default_budget");
    group.sample_size(20);
    let options = RenderOptions::default();
    for policies in [1000, 10000] {
        let mut inputs = cluster();
        inputs.policies = (0..policies).map(|i| policy(i).into()).collect();
        let plan = render::plan(&inputs, &options).unwrap();
        let written = plan.pools[0].scopes.len();
        assert!(written > 0 && written < policies * SCOPES_PER_POLICY);
        group.throughput(Throughput::Elements(policies as u64));
        group.bench_with_input(
            BenchmarkId::new("policies", policies),
            &inputs,
            |b, inputs| b.iter(|| render::plan(inputs, &options).unwrap()),
        );
        // As the serve loop renders: the memo of the renders before, one policy edited
        // (a new resourceVersion and scope) per render.
        let mut memo = render::Memo::default();
        render::plan_with(&inputs, &options, &mut memo).unwrap();
        let mut edits = 0usize;
        group.bench_function(BenchmarkId::new("one_edited", policies), |b| {
            b.iter(|| {
                edits += 1;
                let p = std::sync::Arc::make_mut(&mut inputs.policies[edits * 7919 % policies]);
                p.metadata.resource_version = Some(format!("{}", edits + 1));
                p.spec.as_mut().unwrap().scopes.as_mut().unwrap()[0] =
                    format!("edited{edits}.example.com/app");
                render::plan_with(&inputs, &options, &mut memo).unwrap()
            })
        });
        assert_eq!(memo.len(), policies);
        // What the store's snapshot costs before each render: a copy of every object.
        group.bench_with_input(
            BenchmarkId::new("inputs_copy", policies),
            &inputs,
            |b, inputs| b.iter(|| inputs.clone()),
        );
    }
    group.finish();
}

/// `policies` ImagePolicies over `policies / 10` namespaces, one IDMS with `policies / 5`
/// entries mirroring the namespaces' registries, and `cluster_policies` ClusterImagePolicies
/// of 5 scopes (each namespace's file carries them all).
fn namespaced(policies: usize, cluster_policies: usize) -> Inputs {
    let mut inputs = cluster();
    inputs.policies = (0..cluster_policies).map(|i| policy(i).into()).collect();
    let namespaces = policies / 10;
    inputs.image_policies = (0..policies)
        .map(|i| {
            let mut p = policy(i);
            p.kind = "ImagePolicy".into();
            p.metadata.namespace = Some(format!("team-{:03}", i % namespaces));
            let registry = i % (policies / 5);
            p.spec.as_mut().unwrap().scopes = Some(
                vec![format!(
                    "apps{registry}.example.com/team-{:03}/app{i}",
                    i % namespaces
                )]
                .into(),
            );
            p.into()
        })
        .collect();
    let rules: Vec<serde_json::Value> = (0..policies / 5)
        .map(|r| json!({"source": format!("apps{r}.example.com"), "mirrors": [format!("mirror.example.net/apps{r}")]}))
        .collect();
    inputs.digest_mirror_sets = vec![serde_json::from_value(json!({
        "metadata": {"name": "mirrors"},
        "spec": {"imageDigestMirrors": rules}
    }))
    .unwrap()];
    inputs
}

fn bench_namespaced(c: &mut Criterion) {
    let mut group = c.benchmark_group("render_namespaced");
    group.sample_size(20);
    let options = RenderOptions {
        size_budget: 64 << 20,
        ..RenderOptions::default()
    };
    for (policies, cluster_policies) in [(500, 0), (1000, 0), (2000, 0), (4000, 0), (1000, 20)] {
        let inputs = namespaced(policies, cluster_policies);
        let plan = render::plan(&inputs, &options).unwrap();
        assert_eq!(plan.pools[0].namespace_policies.len(), policies / 10);
        assert_eq!(plan.mirror_scopes.len(), policies);
        group.throughput(Throughput::Elements(policies as u64));
        group.bench_with_input(
            BenchmarkId::new(
                format!("with_{cluster_policies}_cluster_policies"),
                policies,
            ),
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
    let ctx = Context::new(&facts);
    assert!(validate::validate_value(&object, &ctx).1.allowed());
    c.bench_function("validate/one_policy", |b| {
        b.iter(|| validate::validate_value(&object, &ctx))
    });
}

/// The whole admission decision on a request body, as `/validate` makes it: JSON decode,
/// validation against the snapshot, the response encoded. The HTTP and TLS cost is in
/// `scripts/load-test.sh`.
fn bench_review(c: &mut Criterion) {
    use cip_webhook::webhook::admission::{self, Config, Endpoint, Snapshot};
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
    // The same decision with 1,000 policies cached: it must not scan them.
    let mut inputs = cluster();
    inputs.policies = (0..1000).map(|i| policy(i + 10).into()).collect();
    let cached = Snapshot::build(&inputs, &RenderOptions::default());
    c.bench_function("admission/review_and_encode_1000_cached", |b| {
        b.iter(|| {
            let (review, _) =
                admission::review(&body, Endpoint::Validate, &cached, &config).unwrap();
            serde_json::to_vec(&review).unwrap()
        })
    });
}

/// One P-256 signature layer judged under a public-key requirement: cold (a fresh memo:
/// key parse, ECDSA check, payload parse, digest, identity) and repeated (memoized check).
fn bench_judge(c: &mut Criterion) {
    use cip_sigstore::judge::{self, Layer, Memo, Pull};
    let rng = ring::rand::SystemRandom::new();
    let (pair, pem) = testkit::signing::p256();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"quay.io/org/app:v1"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":{{"creator":"bench","timestamp":1700000000}}}}"#,
        judge::sha256(&manifest)
    )
    .into_bytes();
    let sig = pair.sign(&rng, &payload).unwrap();
    let layer = Layer {
        digest: judge::sha256(&payload),
        media_type: judge::SIGNATURE_MIME_TYPE.into(),
        payload,
        annotations: [(judge::SIGNATURE_ANNOTATION.to_string(), b64(sig.as_ref()))].into(),
    };
    let requirement: cip_core::policy::Requirement = serde_json::from_value(json!({
        "type": "sigstoreSigned", "keyData": b64(pem.as_bytes()),
        "signedIdentity": {"type": "matchRepoDigestOrExact"}}))
    .unwrap();
    let intended = cip_sigstore::identity::pulled_reference("quay.io/org/app:v1").unwrap();
    let pull = Pull {
        intended: &intended,
        manifest: &manifest,
        layers: std::slice::from_ref(&layer),
        now: 0,
    };
    let requirements = [requirement];
    assert_eq!(
        judge::judge(&requirements, &pull, &Memo::default()).verdict,
        judge::Verdict::Accepted
    );
    c.bench_function("judge one P-256 layer", |b| {
        b.iter(|| judge::judge(&requirements, &pull, &Memo::default()))
    });
    let memo = Memo::default();
    c.bench_function("judge one P-256 layer, memoized", |b| {
        b.iter(|| judge::judge(&requirements, &pull, &memo))
    });
}

/// One Fulcio layer (chain, SET, payload signature) and one PKI layer (chain at the
/// current time), each judged cold (trust roots parsed, every check made).
fn bench_judge_keyless(c: &mut Criterion) {
    use cip_sigstore::judge::{self, Memo, Pull};
    use testkit::keyless::{payload, Ca, Leaf, Rekor};
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let now = 1_800_000_000;
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let body = payload("quay.io/org/app:v1", &judge::sha256(&manifest));
    let intended = cip_sigstore::identity::pulled_reference("quay.io/org/app:v1").unwrap();
    let root = Ca::root("root", now - 86_400 * 365, now + 86_400 * 365);
    let inter = root.intermediate("intermediate", now - 86_400 * 30, now + 86_400 * 30);
    let chain = format!("{}{}", inter.pem, root.pem);
    let rekor = Rekor::new();
    let layer = |leaf: &Leaf, set: bool| {
        let (cert, key) = inter.leaf(leaf);
        let sig = testkit::keyless::sign(&key, &body);
        let mut annotations = std::collections::BTreeMap::from([
            (judge::SIGNATURE_ANNOTATION.to_string(), sig.clone()),
            (testkit::keyless::CERTIFICATE.to_string(), cert.clone()),
            (testkit::keyless::CHAIN.to_string(), chain.clone()),
        ]);
        if set {
            annotations.insert(
                testkit::keyless::BUNDLE.to_string(),
                rekor.bundle(&cert, &sig, &body, now - 3_000),
            );
        }
        judge::Layer {
            digest: judge::sha256(&body),
            media_type: judge::SIGNATURE_MIME_TYPE.into(),
            payload: body.clone(),
            annotations,
        }
    };
    let fulcio_layer = layer(
        &Leaf::fulcio("me@example.com", "https://issuer", now - 3_060),
        true,
    );
    let pki_layer = layer(
        &Leaf::pki("me@example.com", "me.example.com", now - 60, now + 86_400),
        false,
    );
    let fulcio: cip_core::policy::Requirement = serde_json::from_value(json!({
        "type": "sigstoreSigned", "rekorPublicKeyData": b64(rekor.public_pem.as_bytes()),
        "fulcio": {"caData": b64(root.pem.as_bytes()), "oidcIssuer": "https://issuer", "subjectEmail": "me@example.com"},
        "signedIdentity": {"type": "matchRepoDigestOrExact"}}))
    .unwrap();
    let pki: cip_core::policy::Requirement = serde_json::from_value(json!({
        "type": "sigstoreSigned", "pki": {"caRootsData": b64(root.pem.as_bytes()),
        "subjectEmail": "me@example.com", "subjectHostname": "me.example.com"},
        "signedIdentity": {"type": "matchRepoDigestOrExact"}}))
    .unwrap();
    for (name, requirement, layer) in [
        (
            "judge one Fulcio layer (chain, SET, signature)",
            fulcio,
            fulcio_layer,
        ),
        ("judge one PKI layer (chain, signature)", pki, pki_layer),
    ] {
        let pull = Pull {
            intended: &intended,
            manifest: &manifest,
            layers: std::slice::from_ref(&layer),
            now,
        };
        let requirements = [requirement];
        let verdict = judge::judge(&requirements, &pull, &Memo::default()).verdict;
        assert_eq!(verdict, judge::Verdict::Accepted, "{name}");
        c.bench_function(name, |b| {
            b.iter(|| judge::judge(&requirements, &pull, &Memo::default()))
        });
    }
}

criterion_group!(
    benches,
    bench_judge,
    bench_judge_keyless,
    bench_render,
    bench_render_cluster_budget,
    bench_namespaced,
    bench_validate,
    bench_review
);
criterion_main!(benches);
