//! Where the output goes on a cluster whose MCO owns `99-<pool>-generated-registries`
//! (beside the MCO's own, never in it), and the size budget that never evicts a policy in
//! force.

use testkit::paths;

use std::sync::Arc;

use cip_core::ignition::{self, POLICY_JSON_PATH};
use cip_core::mco;
use cip_core::model::{ClusterImagePolicy, MachineConfig};
use cip_core::render::{self, Action, Condition, Inputs, Plan, RenderOptions};
use cip_core::validate::Reason;

const DIR: &str = "tests/fixtures/openshift-cluster";

fn openshift() -> Inputs {
    let mut files = vec![
        format!("{DIR}/cluster.yaml"),
        format!("{DIR}/policies.yaml"),
    ];
    files.extend(paths::yaml_files(&format!("{DIR}/machineconfigs")));
    paths::load(&files.iter().map(String::as_str).collect::<Vec<_>>())
}

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

fn actions(plan: &Plan, pool: &str) -> Vec<(String, Action)> {
    let p = plan.pools.iter().find(|p| p.pool == pool).unwrap();
    p.changes
        .iter()
        .map(|c| (c.name.clone(), c.action))
        .collect()
}

fn mc<'a>(inputs: &'a Inputs, name: &str) -> Option<&'a MachineConfig> {
    inputs
        .machine_configs
        .iter()
        .find(|m| m.metadata.name == name)
}

#[test]
fn beside_the_mco_revert_deletes_only_ours() {
    let cluster = openshift();
    let plan = render::plan(&cluster, &RenderOptions::default()).unwrap();
    let applied = apply(&cluster, &plan);
    let mut without = applied.clone();
    without.policies.clear();
    let revert = render::plan(&without, &RenderOptions::default()).unwrap();
    assert_eq!(
        actions(&revert, "worker"),
        [
            (
                "99-worker-generated-registries-imagepolicies".to_string(),
                Action::Delete
            ),
            (
                "99-worker-generated-imagepolicies".to_string(),
                Action::Delete
            ),
        ]
    );
    let reverted = apply(&without, &revert);
    let names = |i: &Inputs| {
        let mut n: Vec<String> = i
            .machine_configs
            .iter()
            .map(|m| m.metadata.name.clone())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&reverted), names(&cluster));
    for name in [
        "99-master-generated-registries",
        "99-worker-generated-registries",
    ] {
        assert_eq!(mc(&reverted, name), mc(&cluster, name), "{name} untouched");
    }
}

#[test]
fn a_machine_config_of_the_mco_is_left_alone_whatever_its_name() {
    let mut cluster = openshift();
    // A hypothetical MCO that also wrote our sigstore MachineConfig: never overwritten.
    let mut theirs = mc(&cluster, "99-worker-generated-registries")
        .unwrap()
        .clone();
    theirs.metadata.name = "99-worker-generated-imagepolicies".into();
    cluster.machine_configs.push(theirs);
    let plan = render::plan(&cluster, &RenderOptions::default()).unwrap();
    assert_eq!(
        actions(&plan, "worker"),
        [(
            "99-worker-generated-registries-imagepolicies".to_string(),
            Action::Create
        )]
    );
    assert!(
        plan.notes.iter().any(|n| n
            == "pool worker: MachineConfig 99-worker-generated-imagepolicies belongs to the machine-config-operator; left alone"),
        "{:?}",
        plan.notes
    );
}

#[test]
fn the_mcos_rendered_merge_is_never_the_original() {
    let mut cluster = openshift();
    // Even labelled for the pool, a rendered MachineConfig (owned by the pool) holds our
    // own earlier output and must not feed the original policy.json.
    let rendered = cluster
        .machine_configs
        .iter_mut()
        .find(|m| m.metadata.name.starts_with("rendered-worker-"))
        .unwrap();
    rendered.metadata.labels.insert(
        "machineconfiguration.openshift.io/role".into(),
        "worker".into(),
    );
    assert!(mco::rendered_by_mco(rendered));
    let plan = render::plan(&cluster, &RenderOptions::default()).unwrap();
    let worker = plan.pools.iter().find(|p| p.pool == "worker").unwrap();
    assert_eq!(
        worker.original_from.as_deref(),
        Some("01-worker-container-runtime")
    );
    assert!(!worker.effective_policy_json().contains("stale.example.com"));
}

/// A policy with `n` scopes and a creation time.
fn sized(name: &str, created: &str, n: usize) -> Arc<ClusterImagePolicy> {
    let mut p = paths::policies(&[&format!("{DIR}/policies.yaml")], &["signed-apps"])
        .pop()
        .unwrap();
    let q = Arc::make_mut(&mut p);
    q.metadata.name = name.into();
    q.metadata.creation_timestamp = Some(created.into());
    q.spec.as_mut().unwrap().scopes =
        Some((0..n).map(|i| format!("quay.io/{name}/app{i}")).collect());
    p
}

fn condition<'a>(plan: &'a Plan, name: &str) -> &'a Condition {
    &plan
        .policies
        .iter()
        .find(|o| o.name == name)
        .unwrap()
        .condition
}

fn too_large(c: &Condition) -> bool {
    matches!(
        c,
        Condition::Pending {
            reason: Reason::TooLarge,
            ..
        }
    )
}

#[test]
fn the_budget_admits_oldest_first_and_never_evicts() {
    let mut cluster = openshift();
    // "zz-old" sorts last by name but came first: it keeps its place.
    cluster.policies = vec![sized("zz-old", "2026-01-01T00:00:00Z", 30)];
    let options = RenderOptions {
        size_budget: 40 * 1024,
        ..RenderOptions::default()
    };
    let plan = render::plan(&cluster, &options).unwrap();
    assert!(matches!(
        condition(&plan, "zz-old"),
        Condition::Applied { .. }
    ));
    let used = plan.size_check(options.size_budget).current_bytes;
    assert!(used < options.size_budget, "{used}");

    // A newer policy that does not fit is held back, not the one in force.
    cluster
        .policies
        .push(sized("aa-new", "2026-06-01T00:00:00Z", 30));
    let plan = render::plan(&cluster, &options).unwrap();
    assert!(matches!(
        condition(&plan, "zz-old"),
        Condition::Applied { .. }
    ));
    assert!(too_large(condition(&plan, "aa-new")), "{plan:#?}");
    // A still newer, smaller one that would fit waits behind it: oldest first, no greedy
    // fill.
    cluster
        .policies
        .push(sized("mm-newest", "2026-07-01T00:00:00Z", 1));
    let plan = render::plan(&cluster, &options).unwrap();
    let held = condition(&plan, "mm-newest");
    assert!(too_large(held), "{plan:#?}");
    let Condition::Pending { message, .. } = held else {
        unreachable!()
    };
    assert!(
        message.starts_with(
            "held back behind ClusterImagePolicy aa-new, the oldest policy over the size budget"
        ),
        "{message}"
    );
    // Admission says so for a new one rather than admit what would wait.
    let size = plan.size_check(options.size_budget);
    let newest = sized("mm-newest", "2026-07-01T00:00:00Z", 1);
    let facts = cip_core::cluster::ClusterFacts::default();
    let ctx = cip_core::validate::Context {
        size: Some(&size),
        ..cip_core::validate::Context::new(&facts)
    };
    let denial = cip_core::validate::validate(&newest, &ctx)
        .denial_message()
        .unwrap_or_default();
    assert!(
        denial.contains(
            "holds back ClusterImagePolicy aa-new already, and newer policies wait behind it"
        ),
        "{denial}"
    );
    cluster.policies.retain(|p| p.metadata.name != "mm-newest");

    // The MCO's own MachineConfig growing (a long registries.conf) costs ours nothing:
    // the policy in force stays.
    for name in [
        "99-master-generated-registries",
        "99-worker-generated-registries",
    ] {
        let theirs = cluster
            .machine_configs
            .iter_mut()
            .find(|m| m.metadata.name == name)
            .unwrap();
        let big = format!("# {}\n", "x".repeat(60 * 1024));
        ignition::set_file(
            &mut theirs.spec.config,
            ignition::file_entry("/etc/containers/registries.conf", &big),
        );
    }
    let plan = render::plan(&cluster, &options).unwrap();
    assert!(matches!(
        condition(&plan, "zz-old"),
        Condition::Applied { .. }
    ));
    let worker = plan.pools.iter().find(|p| p.pool == "worker").unwrap();
    assert_eq!(
        worker.policy_json_machine_config,
        "99-worker-generated-registries-imagepolicies"
    );
    let ours = plan
        .desired_machine_configs()
        .find(|m| m.metadata.name == worker.policy_json_machine_config)
        .unwrap();
    assert!(ignition::read_file(ours, POLICY_JSON_PATH).is_some());
}

/// A custom pool whose selector leaves out the worker role never gets the generated
/// MachineConfigs: the render says so, and of one that inherits them it says that.
#[test]
fn a_custom_pool_that_selects_no_worker_machine_configs_is_noted() {
    let mut cluster = openshift();
    for (name, selector) in [
        (
            "infra",
            serde_json::json!({"matchExpressions": [{"key": "machineconfiguration.openshift.io/role", "operator": "In", "values": ["worker", "infra"]}]}),
        ),
        (
            "gpu",
            serde_json::json!({"matchLabels": {"machineconfiguration.openshift.io/role": "gpu"}}),
        ),
    ] {
        cluster.pools.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"machineConfigSelector": selector}
            }))
            .unwrap(),
        );
    }
    let plan = render::plan(&cluster, &RenderOptions::default()).unwrap();
    let note = |pool: &str| {
        plan.notes
            .iter()
            .find(|n| n.starts_with(&format!("pool {pool}:")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        note("infra").contains("custom pools inherit worker's"),
        "{:?}",
        plan.notes
    );
    assert!(
        note("gpu").contains("selects no worker MachineConfigs, so the generated ones (worker's) never reach its nodes"),
        "{:?}",
        plan.notes
    );
}
