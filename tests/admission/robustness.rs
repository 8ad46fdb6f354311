//! Admission never panics: arbitrary bytes, and valid reviews with arbitrary JSON
//! put at every interesting path, always get an answer (or a 400-style error).

use testkit::paths;

use proptest::prelude::*;
use serde_json::{json, Value};

use cip_core::render::RenderOptions;
use cip_webhook::webhook::admission::{self, Config, Endpoint, Snapshot};

fn snapshot() -> Snapshot {
    let inputs = paths::load(&[
        "examples/image.yaml",
        "examples/clusterversion.yaml",
        "examples/p0.yaml",
    ]);
    Snapshot::build(&inputs, &RenderOptions::default())
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("PublicKey"),
            Just("PKI"),
            Just("FulcioCAWithRekor"),
            Just("RemapIdentity"),
            Just("*.x"),
            Just("Zm9v")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const PATHS: [&str; 16] = [
    "/request/object",
    "/request/object/spec",
    "/request/object/spec/scopes",
    "/request/object/spec/scopes/0",
    "/request/object/spec/policy",
    "/request/object/spec/policy/rootOfTrust",
    "/request/object/spec/policy/rootOfTrust/policyType",
    "/request/object/spec/policy/rootOfTrust/publicKey",
    "/request/object/spec/policy/rootOfTrust/publicKey/keyData",
    "/request/object/spec/policy/signedIdentity",
    "/request/object/metadata",
    "/request/object/apiVersion",
    "/request/kind",
    "/request/operation",
    "/request/userInfo",
    "/request/dryRun",
];

fn base(kind: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "config.openshift.io", "version": "v1", "kind": kind},
            "name": "cluster",
            "operation": "UPDATE",
            "userInfo": {"username": "kube:admin"},
            "object": {
                "apiVersion": "config.openshift.io/v1",
                "kind": kind,
                "metadata": {"name": "cluster"},
                "spec": {"scopes": ["example.org"], "registrySources": {"blockedRegistries": ["a.io"]},
                         "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": "Zm9vIGJhcg=="}},
                                    "signedIdentity": {"matchPolicy": "MatchRepository"}}}
            }
        }
    })
}

fn set(value: &mut Value, pointer: &str, new: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    if let Some(target) = value.pointer_mut(parent) {
        match target {
            Value::Object(map) => {
                map.insert(key.to_string(), new);
            }
            Value::Array(items) => {
                if let Some(slot) = key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    *slot = new;
                }
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let s = snapshot();
        for endpoint in [Endpoint::Validate, Endpoint::Mutate] {
            let _ = admission::review(&bytes, endpoint, &s, &Config::default());
        }
    }

    #[test]
    fn arbitrary_fields_get_an_answer(
        kind in prop_oneof![Just("ClusterImagePolicy"), Just("Image")],
        path in prop::sample::select(PATHS.to_vec()),
        value in any_json(),
    ) {
        let mut review = base(kind);
        set(&mut review, path, value);
        let bytes = serde_json::to_vec(&review).unwrap();
        let s = snapshot();
        for endpoint in [Endpoint::Validate, Endpoint::Mutate] {
            if let Ok((out, decision)) = admission::review(&bytes, endpoint, &s, &Config::default()) {
                prop_assert_eq!(&out.response.uid, "u-1");
                prop_assert_eq!(out.response.allowed, decision.verdict == admission::Verdict::Allowed);
                if !out.response.allowed {
                    let status = out.response.status.as_ref().unwrap();
                    prop_assert!(!status.message.is_empty());
                    prop_assert!(status.code == 400 || status.code == 403);
                }
            }
        }
    }
}

/// The object is decoded from the request text; a type error reads as it would from the
/// YAML, with no position in a body the user never saw.
#[test]
fn type_errors_carry_no_body_position() {
    let s = snapshot();
    let answer = |kind: &str, pointer: &str, value: Value| {
        let mut review = base(kind);
        set(&mut review, pointer, value);
        let bytes = serde_json::to_vec(&review).unwrap();
        let (out, _) = admission::review(&bytes, Endpoint::Validate, &s, &Config::default())
            .expect("a well-formed review");
        let status = out.response.status.expect("denied");
        (status.code, status.message)
    };
    assert_eq!(
        answer(
            "Image",
            "/request/object/spec/registrySources/blockedRegistries",
            json!("a.io")
        ),
        (
            400,
            r#"Image does not decode: invalid type: string "a.io", expected a sequence"#.into()
        )
    );
    assert_eq!(
        answer(
            "ClusterImagePolicy",
            "/request/object/spec/scopes",
            json!("example.org")
        ),
        (
            403,
            r#"spec.scopes: Invalid value: invalid type: string "example.org", expected a sequence"#
                .into()
        )
    );
}

/// Every path in a JSON value, as JSON pointers.
fn paths(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, c)| paths(c, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| paths(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    /// An array or string made `n` times longer.
    Bloat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => (any::<usize>(), 2..3000usize).prop_map(|(i, n)| Mutation::Bloat(i, n)),
    ]
}

fn apply(review: &mut Value, m: &Mutation) {
    let mut all = Vec::new();
    paths(review, String::new(), &mut all);
    let pick = |i: &usize| all[i % all.len()].clone();
    match m {
        Mutation::Replace(i, v) => {
            let p = pick(i);
            if p.is_empty() {
                *review = v.clone();
            } else {
                set(review, &p, v.clone());
            }
        }
        Mutation::Remove(i) => {
            let p = pick(i);
            if let Some((parent, key)) = p.rsplit_once('/') {
                if let Some(Value::Object(m)) = review.pointer_mut(parent) {
                    m.remove(key);
                }
            }
        }
        Mutation::Bloat(i, n) => {
            if let Some(target) = review.pointer_mut(&pick(i)) {
                match target {
                    Value::Array(a) if !a.is_empty() => {
                        *a = a.iter().cycle().take(a.len() * n).cloned().collect()
                    }
                    Value::String(s) => *s = s.repeat(*n),
                    _ => {}
                }
            }
        }
    }
}

/// What a mutated review may start from: a policy created, updated (with its old
/// version) and deleted, an Image updated.
fn starting_point() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(base("ClusterImagePolicy")),
        Just({
            let mut r = base("ClusterImagePolicy");
            r["request"]["oldObject"] = r["request"]["object"].clone();
            r
        }),
        Just({
            let mut r = base("ClusterImagePolicy");
            r["request"]["operation"] = json!("DELETE");
            r["request"]["name"] = json!("openshift");
            r["request"]["oldObject"] = r["request"]["object"].take();
            r
        }),
        Just({
            let mut r = base("Image");
            r["request"]["oldObject"] = r["request"]["object"].clone();
            r
        }),
    ]
}

/// A seeded fuzzer (no cargo-fuzz needed): reviews mutated one to six times, with a fixed
/// seed so every run tries the same 2,000. Every one gets an answer or a 400, and the
/// answer stays small whatever the request's size.
#[test]
fn mutated_reviews_get_a_bounded_answer() {
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
    let s = snapshot();
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases: 2000,
            ..RunnerConfig::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = (starting_point(), prop::collection::vec(mutation(), 1..6));
    let largest = std::cell::Cell::new(0usize);
    runner
        .run(&strategy, |(mut review, mutations)| {
            for m in &mutations {
                apply(&mut review, m);
            }
            let bytes = serde_json::to_vec(&review).unwrap();
            for endpoint in [Endpoint::Validate, Endpoint::Mutate] {
                match admission::review(&bytes, endpoint, &s, &Config::default()) {
                    Ok((out, _)) => {
                        let size = serde_json::to_vec(&out).unwrap().len();
                        largest.set(largest.get().max(size));
                        prop_assert!(size < 64 * 1024, "{size} bytes for {} in", bytes.len());
                        prop_assert!(out.response.warnings.len() <= 21);
                    }
                    Err(bad) => prop_assert!(!bad.to_string().is_empty()),
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!("largest answer: {} bytes", largest.get());
}

/// The YAML/JSON loader (render, check, --state-dir) on mangled manifests: an error or
/// the objects, never a panic.
#[test]
fn mangled_manifests_never_panic_the_loader() {
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
    let texts: Vec<String> = paths::yaml_files("examples")
        .iter()
        .map(|f| std::fs::read_to_string(paths::root().join(f)).unwrap())
        .collect();
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases: 2000,
            ..RunnerConfig::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = (
        prop::sample::select(texts),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        any::<usize>(),
        0..2000usize,
    );
    runner
        .run(&strategy, |(text, edits, cut, nest)| {
            let mut bytes = text.into_bytes();
            for (at, b) in edits {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = b;
                }
            }
            bytes.truncate(cut % (bytes.len() + 1));
            // Deep nesting, in YAML's flow style and JSON's.
            let deep = format!("{}1{}", "{a: ".repeat(nest), "}".repeat(nest));
            for candidate in [String::from_utf8_lossy(&bytes).into_owned(), deep] {
                if let Ok(docs) = cip_core::documents::parse_documents("fuzz.yaml", &candidate) {
                    let _ = cip_core::documents::load(&docs);
                }
            }
            Ok(())
        })
        .unwrap();
}
