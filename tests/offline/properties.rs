//! Properties of rendering over generated policies (cluster and namespaced, with and
//! without mirror sets): input order never changes a byte, rendering its own output
//! changes nothing, adding policies then deleting them all gives back the original
//! MachineConfigs, and every policy file parses back.

use testkit::paths;

use base64::Engine;
use proptest::prelude::*;
use serde_json::json;

use cip_core::model::{ClusterImagePolicy, Image};
use cip_core::policy::Policy;
use cip_core::render::{self, Action, Inputs, Plan, RenderOptions};

const SCOPES: [&str; 12] = [
    "example.com",
    "example.com/global",
    "example.com/global/team/app",
    "*.example.com",
    "*.apps.example.com",
    "registry.example.com:5000/ns",
    "quay.io/org/app:v1",
    "localhost:5000/dev",
    "test2.com",
    "test10.com",
    "blocked.example.com/app",
    "quay.io/openshift-release-dev",
];

fn policy(
    index: usize,
    scopes: Vec<&str>,
    v1alpha1: bool,
    match_repository: bool,
) -> ClusterImagePolicy {
    let key = base64::engine::general_purpose::STANDARD
        .encode(include_str!("../fixtures/keys/cosign.pub"));
    let mut value = json!({
        "apiVersion": if v1alpha1 { "config.openshift.io/v1alpha1" } else { "config.openshift.io/v1" },
        "kind": "ClusterImagePolicy",
        "metadata": {"name": format!("policy-{index:02}")},
        "spec": {
            "scopes": scopes,
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": if v1alpha1 { "Zm9vIGJhcg==".to_string() } else { key }}}}
        }
    });
    if match_repository {
        value["spec"]["policy"]["signedIdentity"] = json!({"matchPolicy": "MatchRepository"});
    }
    serde_json::from_value(value).unwrap()
}

fn policies() -> impl Strategy<Value = Vec<ClusterImagePolicy>> {
    prop::collection::vec(
        (
            prop::sample::subsequence(SCOPES.to_vec(), 1..4),
            any::<bool>(),
            any::<bool>(),
        ),
        0..8,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (scopes, alpha, repo))| policy(i, scopes, alpha, repo))
            .collect()
    })
}

/// ImagePolicies over the same scopes, in up to three namespaces.
fn image_policies() -> impl Strategy<Value = Vec<ClusterImagePolicy>> {
    prop::collection::vec(
        (prop::sample::subsequence(SCOPES.to_vec(), 1..3), 0..3usize),
        0..5,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (scopes, ns))| {
                let mut p = policy(i, scopes, false, ns == 1);
                p.kind = "ImagePolicy".into();
                p.metadata.namespace = Some(format!("team-{ns}"));
                p
            })
            .collect()
    })
}

/// Digest and tag mirrors for some of the scopes, and a legacy ICSP.
fn with_mirrors(inputs: &mut Inputs, on: bool) {
    if !on {
        return;
    }
    let mirrors = paths::load(&["tests/fixtures/disconnected/mirrors.yaml"]);
    let rule = |source: &str, mirror: &str| cip_core::model::MirrorRule {
        source: source.into(),
        mirrors: vec![mirror.into()],
        mirror_source_policy: None,
    };
    let mut idms = mirrors.digest_mirror_sets[0].clone();
    idms.spec.image_digest_mirrors.extend([
        rule("example.com/global", "mirror.example.net/global"),
        rule("registry.example.com:5000", "mirror.example.net/reg"),
    ]);
    let mut itms = mirrors.tag_mirror_sets[0].clone();
    itms.spec
        .image_tag_mirrors
        .push(rule("quay.io/org", "mirror.example.net/org"));
    inputs.digest_mirror_sets = vec![idms];
    inputs.tag_mirror_sets = vec![itms];
    inputs.content_source_policies = mirrors.content_source_policies;
}

fn image(blocked: bool) -> Option<Image> {
    blocked.then(|| {
        let mut i = Image::default();
        i.metadata.name = "cluster".into();
        i.spec.registry_sources.blocked_registries = vec!["blocked.example.com".to_string()].into();
        i
    })
}

/// The examples' cluster (pools, container-runtime and registries MachineConfigs no
/// controller owns), or an OpenShift one where the MCO owns the registries MachineConfigs
/// and keeps its rendered merges.
fn cluster(beside_mco: bool) -> Inputs {
    if beside_mco {
        let dir = "tests/fixtures/openshift-cluster";
        let mut files = vec![format!("{dir}/cluster.yaml")];
        files.extend(paths::yaml_files(&format!("{dir}/machineconfigs")));
        return paths::load(&files.iter().map(String::as_str).collect::<Vec<_>>());
    }
    paths::load(&[
        "examples/pools.yaml",
        "examples/clusterversion.yaml",
        "examples/machineconfigs/01-master-container-runtime.yaml",
        "examples/machineconfigs/01-worker-container-runtime.yaml",
        "examples/machineconfigs/99-master-generated-registries.yaml",
        "examples/machineconfigs/99-worker-generated-registries.yaml",
    ])
}

/// No change, whatever the inputs, touches a MachineConfig the MCO owns.
fn mco_untouched(inputs: &Inputs, plan: &Plan) -> Result<(), TestCaseError> {
    for change in plan.pools.iter().flat_map(|p| &p.changes) {
        let existing = inputs
            .machine_configs
            .iter()
            .find(|m| m.metadata.name == change.name);
        prop_assert!(
            !existing.is_some_and(cip_core::mco::owned_by_mco),
            "{} is the MCO's",
            change.name
        );
    }
    Ok(())
}

/// The desired MachineConfigs as bytes.
fn machine_configs(plan: &Plan) -> String {
    plan.desired_machine_configs()
        .map(|mc| serde_saphyr::to_string(mc).unwrap())
        .collect()
}

/// Everything a plan says, as bytes: the MachineConfigs, the conditions, the pool plans.
fn bytes(plan: &Plan) -> String {
    let mut out = machine_configs(plan);
    out.push_str(&serde_json::to_string(&plan.policies).unwrap());
    out.push_str(&serde_json::to_string(&plan.image_policies).unwrap());
    out.push_str(&serde_json::to_string(&plan.pools).unwrap());
    out
}

/// The cluster after applying a plan: desired MachineConfigs replace or join the existing.
fn apply(inputs: &Inputs, plan: &Plan) -> Inputs {
    let mut next = inputs.clone();
    for change in plan.pools.iter().flat_map(|p| &p.changes) {
        next.machine_configs
            .retain(|mc| mc.metadata.name != change.name);
        if let Some(desired) = &change.desired {
            next.machine_configs.push(desired.clone());
        }
    }
    next
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn input_order_does_not_change_a_byte(cips in policies(), ips in image_policies(), mirrors in any::<bool>(), blocked in any::<bool>(), beside_mco in any::<bool>(), seed in any::<u64>()) {
        let mut inputs = cluster(beside_mco);
        inputs.policies = cips.into_iter().map(std::sync::Arc::new).collect();
        inputs.image_policies = ips.into_iter().map(std::sync::Arc::new).collect();
        with_mirrors(&mut inputs, mirrors);
        inputs.image = image(blocked);
        let expected = bytes(&render::plan(&inputs, &RenderOptions::default()).unwrap());
        let mut shuffled = inputs.clone();
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as usize };
        for i in (1..shuffled.policies.len()).rev() { let j = next() % (i + 1); shuffled.policies.swap(i, j); }
        for i in (1..shuffled.machine_configs.len()).rev() { let j = next() % (i + 1); shuffled.machine_configs.swap(i, j); }
        for i in (1..shuffled.image_policies.len()).rev() { let j = next() % (i + 1); shuffled.image_policies.swap(i, j); }
        for set in &mut shuffled.digest_mirror_sets { set.spec.image_digest_mirrors.reverse(); }
        shuffled.pools.reverse();
        prop_assert_eq!(bytes(&render::plan(&shuffled, &RenderOptions::default()).unwrap()), expected);
    }

    /// The serve loop keeps per-policy results between renders (`render::Memo`, keyed by
    /// uid and resourceVersion): after renders of other policy sets, and with policies
    /// edited under a new resourceVersion, its plan is the plan rendered from nothing.
    #[test]
    fn a_memo_of_earlier_renders_never_changes_the_plan(before in policies(), after in policies(), ips in image_policies(), blocked in any::<bool>(), beside_mco in any::<bool>()) {
        let identified = |cips: Vec<ClusterImagePolicy>, version: &str| -> Vec<std::sync::Arc<ClusterImagePolicy>> {
            cips.into_iter().map(|mut p| {
                p.metadata.uid = Some(format!("uid-{}-{}", p.kind, p.key()));
                // As the API server does: the same object keeps its resourceVersion, any
                // edit gives a new one (here: the spec's text stands for its version).
                p.metadata.resource_version = Some(format!("{version}-{}", serde_json::to_string(&p.spec).unwrap()));
                std::sync::Arc::new(p)
            }).collect()
        };
        let mut inputs = cluster(beside_mco);
        inputs.image = image(blocked);
        inputs.image_policies = identified(ips, "1");
        let mut memo = render::Memo::default();
        inputs.policies = identified(before, "1");
        let first = render::plan_with(&inputs, &RenderOptions::default(), &mut memo).unwrap();
        prop_assert_eq!(bytes(&first), bytes(&render::plan(&inputs, &RenderOptions::default()).unwrap()));
        inputs.policies = identified(after, "1");
        let fresh = render::plan(&inputs, &RenderOptions::default()).unwrap();
        let memoized = render::plan_with(&inputs, &RenderOptions::default(), &mut memo).unwrap();
        prop_assert_eq!(bytes(&memoized), bytes(&fresh));
        prop_assert_eq!(&memoized.policies, &fresh.policies);
        prop_assert_eq!(&memoized.image_policies, &fresh.image_policies);
        prop_assert_eq!(memo.len(), inputs.policies.len() + inputs.image_policies.len());
    }

    #[test]
    fn rendering_is_idempotent(cips in policies(), ips in image_policies(), mirrors in any::<bool>(), blocked in any::<bool>(), beside_mco in any::<bool>()) {
        let mut inputs = cluster(beside_mco);
        inputs.policies = cips.into_iter().map(std::sync::Arc::new).collect();
        inputs.image_policies = ips.into_iter().map(std::sync::Arc::new).collect();
        with_mirrors(&mut inputs, mirrors);
        inputs.image = image(blocked);
        let first = render::plan(&inputs, &RenderOptions::default()).unwrap();
        mco_untouched(&inputs, &first)?;
        let applied = apply(&inputs, &first);
        let second = render::plan(&applied, &RenderOptions::default()).unwrap();
        for change in second.pools.iter().flat_map(|p| &p.changes) {
            prop_assert_eq!(change.action, Action::Unchanged, "{}", change.name);
        }
        prop_assert_eq!(machine_configs(&second), machine_configs(&first));
        prop_assert_eq!(&second.policies, &first.policies);
        prop_assert_eq!(&second.image_policies, &first.image_policies);
    }

    #[test]
    fn deleting_every_policy_restores_the_original(cips in policies(), ips in image_policies(), mirrors in any::<bool>(), blocked in any::<bool>(), beside_mco in any::<bool>()) {
        let mut original = cluster(beside_mco);
        original.image = image(blocked);
        with_mirrors(&mut original, mirrors);
        let before = render::plan(&original, &RenderOptions::default()).unwrap();
        let original = apply(&original, &before);
        let mut with = original.clone();
        with.policies = cips.into_iter().map(std::sync::Arc::new).collect();
        with.image_policies = ips.into_iter().map(std::sync::Arc::new).collect();
        let plan = render::plan(&with, &RenderOptions::default()).unwrap();
        mco_untouched(&with, &plan)?;
        let added = apply(&with, &plan);
        let mut without = added.clone();
        without.policies.clear();
        without.image_policies.clear();
        let plan = render::plan(&without, &RenderOptions::default()).unwrap();
        mco_untouched(&without, &plan)?;
        let reverted = apply(&without, &plan);
        let yaml = |i: &Inputs| {
            let mut mcs: Vec<String> = i.machine_configs.iter().map(|m| serde_saphyr::to_string(m).unwrap()).collect();
            mcs.sort();
            mcs.concat()
        };
        prop_assert_eq!(yaml(&reverted), yaml(&original));
    }

    #[test]
    fn every_policy_json_parses_back(cips in policies(), ips in image_policies(), mirrors in any::<bool>(), blocked in any::<bool>(), beside_mco in any::<bool>()) {
        let mut inputs = cluster(beside_mco);
        inputs.policies = cips.into_iter().map(std::sync::Arc::new).collect();
        inputs.image_policies = ips.into_iter().map(std::sync::Arc::new).collect();
        with_mirrors(&mut inputs, mirrors);
        inputs.image = image(blocked);
        let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
        for pool in &plan.pools {
            let files = pool.policy_json.iter().chain(pool.namespace_policies.iter().map(|(_, json)| json));
            for text in files {
                let parsed = Policy::parse(text).map_err(TestCaseError::fail)?;
                let again = parsed.to_go_json();
                prop_assert_eq!(again.as_str(), &**text);
                prop_assert!(!text.ends_with('\n'));
            }
        }
    }
}

#[test]
fn without_registry_lists_revert_removes_our_entry() {
    let original = cluster(false);
    let mut with = original.clone();
    with.policies = vec![policy(0, vec!["example.com"], false, false).into()];
    let added = apply(
        &with,
        &render::plan(&with, &RenderOptions::default()).unwrap(),
    );
    let reg = added
        .machine_configs
        .iter()
        .find(|m| m.metadata.name == "99-worker-generated-registries")
        .unwrap();
    assert_eq!(reg.files().len(), 2);
    let mut without = added.clone();
    without.policies.clear();
    let plan = render::plan(&without, &RenderOptions::default()).unwrap();
    let worker = plan.pools.iter().find(|p| p.pool == "worker").unwrap();
    let actions: Vec<(&str, Action)> = worker
        .changes
        .iter()
        .map(|c| (c.name.as_str(), c.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("99-worker-generated-registries", Action::Update),
            ("99-worker-generated-imagepolicies", Action::Delete)
        ]
    );
    let reverted = worker.changes[0].desired.as_ref().unwrap();
    let before = original
        .machine_configs
        .iter()
        .find(|m| m.metadata.name == "99-worker-generated-registries")
        .unwrap();
    assert_eq!(
        serde_saphyr::to_string(reverted).unwrap(),
        serde_saphyr::to_string(before).unwrap()
    );
}
