//! Admission of namespaced ImagePolicies and of what mirrors change: the CRD's rules
//! (shared with ClusterImagePolicy), the MCO's `imagePolicy` wording, its precedence as
//! warnings on both sides, ratcheting and exempt users, the size of namespace files, and
//! the mirrored-payload rule that only the MCO fails on.

use testkit::paths;

use std::sync::Arc;

use serde_json::{json, Value};

use cip_core::model::{FeatureGate, ImagePolicy};
use cip_core::render::{Inputs, RenderOptions};
use cip_core::validate::SizeCheck;
use cip_webhook::webhook::admission::{self, Config, Endpoint, Snapshot, DEFAULT_EXEMPT_USER};

fn signed_apps() -> Value {
    let text = std::fs::read_to_string(paths::root().join("examples/signed-apps.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn team(namespace: &str, name: &str, scopes: &[&str]) -> Value {
    let mut v = signed_apps();
    v["kind"] = json!("ImagePolicy");
    v["metadata"] = json!({"name": name, "namespace": namespace});
    v["spec"]["scopes"] = json!(scopes);
    v
}

fn cluster_policy(name: &str, scopes: &[&str]) -> Value {
    let mut v = signed_apps();
    v["metadata"] = json!({"name": name});
    v["spec"]["scopes"] = json!(scopes);
    v
}

struct Answer {
    allowed: bool,
    message: String,
    warnings: Vec<String>,
    patched: bool,
}

fn ask(
    snapshot: &Snapshot,
    endpoint: Endpoint,
    operation: &str,
    object: &Value,
    old: Option<&Value>,
    user: &str,
) -> Answer {
    let kind = object["kind"].as_str().unwrap();
    let version = object["apiVersion"]
        .as_str()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u1",
            "kind": {"group": "config.openshift.io", "version": version, "kind": kind},
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "operation": operation,
            "userInfo": {"username": user},
            "object": object,
            "oldObject": old,
        }
    });
    let (out, _) = admission::review(
        &serde_json::to_vec(&review).unwrap(),
        endpoint,
        snapshot,
        &Config::default(),
    )
    .unwrap();
    let r = serde_json::to_value(&out.response).unwrap();
    Answer {
        allowed: r["allowed"] == true,
        message: r["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        warnings: r["warnings"]
            .as_array()
            .map(|w| w.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default(),
        patched: r["patch"].is_string(),
    }
}

fn validate(snapshot: &Snapshot, object: &Value) -> Answer {
    ask(
        snapshot,
        Endpoint::Validate,
        "CREATE",
        object,
        None,
        "admin",
    )
}

fn snapshot(inputs: Inputs) -> Snapshot {
    Snapshot::build(&inputs, &RenderOptions::default())
}

/// The SigstoreImageVerification gate on for the cluster's version: the MCO renders.
fn mco_renders(inputs: &mut Inputs) {
    let version = inputs
        .cluster_version
        .as_ref()
        .unwrap()
        .current_version()
        .unwrap()
        .to_string();
    let gate: FeatureGate = serde_json::from_value(json!({
        "metadata": {"name": "cluster"},
        "status": {"featureGates": [{"version": version, "enabled": [{"name": "SigstoreImageVerification"}]}]}
    }))
    .unwrap();
    inputs.feature_gate = Some(gate);
}

fn with_blocked(blocked: &[&str]) -> Inputs {
    let mut inputs = paths::load(&["examples/clusterversion.yaml"]);
    let mut image = cip_core::model::Image::default();
    image.metadata.name = "cluster".into();
    image.spec.registry_sources.blocked_registries =
        blocked.iter().map(|s| s.to_string()).collect();
    inputs.image = Some(image);
    inputs
}

#[test]
fn the_crd_rules_hold_for_image_policies() {
    let s = snapshot(Inputs::default());
    let a = validate(&s, &team("team-a", "t", &["*.example.com/app"]));
    assert!(!a.allowed);
    assert!(
        a.message.contains(
            "spec.scopes[0]: Invalid value: \"string\": invalid image scope with wildcard"
        ),
        "{}",
        a.message
    );
    let mut missing = team("team-a", "t", &["example.com/app"]);
    missing["spec"].as_object_mut().unwrap().remove("policy");
    let a = validate(&s, &missing);
    assert!(
        !a.allowed && a.message.contains("spec.policy: Required value"),
        "{}",
        a.message
    );
    // Names reserved for the platform's cluster policies are not reserved in a namespace.
    assert!(
        validate(
            &s,
            &team("team-a", "openshift-builds", &["example.com/app"])
        )
        .allowed
    );
    // The mutating default applies to ImagePolicies as well.
    let mut bare = team("team-a", "t", &["example.com/app"]);
    bare["spec"]["policy"]
        .as_object_mut()
        .unwrap()
        .remove("signedIdentity");
    assert!(ask(&s, Endpoint::Mutate, "CREATE", &bare, None, "admin").patched);
}

#[test]
fn registry_conflicts_use_the_mcos_image_policy_wording() {
    let s = snapshot(with_blocked(&["blocked.example.com"]));
    let a = validate(&s, &team("team-a", "t", &["blocked.example.com/app"]));
    assert!(!a.allowed);
    assert_eq!(
        a.message,
        "imagePolicy configured for the scope blocked.example.com/app is nested inside blockedRegistries"
    );
}

#[test]
fn precedence_is_a_warning_on_both_sides() {
    let inputs = Inputs {
        policies: vec![
            serde_json::from_value(cluster_policy("apps", &["example.com/apps"])).unwrap(),
        ],
        ..Default::default()
    };
    let s = snapshot(inputs);
    let a = validate(
        &s,
        &team(
            "team-a",
            "t",
            &["example.com/apps/billing", "example.com/team-a"],
        ),
    );
    assert!(a.allowed, "{}", a.message);
    assert!(
        a.warnings.iter().any(|w| w.contains(
            "scope example.com/apps/billing is equal to or nested inside scope example.com/apps of ClusterImagePolicy apps: only the cluster policy applies to these images"
        )),
        "{:?}",
        a.warnings
    );
    assert_eq!(a.warnings.len(), 1, "{:?}", a.warnings);

    let ip: ImagePolicy =
        serde_json::from_value(team("team-a", "t", &["example.com/apps/billing"])).unwrap();
    let inputs = Inputs {
        image_policies: vec![ip.into()],
        ..Default::default()
    };
    let s = snapshot(inputs);
    let a = validate(&s, &cluster_policy("apps", &["example.com/apps"]));
    assert!(a.allowed, "{}", a.message);
    assert!(
        a.warnings.iter().any(|w| w.contains(
            "scope example.com/apps/billing of ImagePolicy team-a/t is equal to or nested inside this scope: only this policy will apply to those images"
        )),
        "{:?}",
        a.warnings
    );
}

#[test]
fn updates_are_ratcheted_and_exempt_users_warned() {
    let s = snapshot(with_blocked(&["blocked.example.com"]));
    let old = team("team-a", "t", &["blocked.example.com/app"]);
    let mut relabelled = old.clone();
    relabelled["metadata"]["labels"] = json!({"team": "a"});
    let a = ask(
        &s,
        Endpoint::Validate,
        "UPDATE",
        &relabelled,
        Some(&old),
        "admin",
    );
    assert!(a.allowed, "{}", a.message);
    assert!(
        a.warnings[0].ends_with("(already so before this update, so not denied)"),
        "{:?}",
        a.warnings
    );
    let a = ask(
        &s,
        Endpoint::Validate,
        "CREATE",
        &old,
        None,
        DEFAULT_EXEMPT_USER,
    );
    assert!(a.allowed);
    assert!(a.warnings[0].contains("nested inside blockedRegistries"));
}

#[test]
fn image_updates_name_the_image_policies_they_conflict_with() {
    let mut inputs = with_blocked(&[]);
    let ip: ImagePolicy =
        serde_json::from_value(team("team-a", "t", &["blocked.example.com/app"])).unwrap();
    inputs.image_policies = vec![ip.into()];
    let s = snapshot(inputs);
    let old = json!({"apiVersion": "config.openshift.io/v1", "kind": "Image", "metadata": {"name": "cluster"}, "spec": {}});
    let mut new = old.clone();
    new["spec"] = json!({"registrySources": {"blockedRegistries": ["blocked.example.com"]}});
    let a = ask(&s, Endpoint::Validate, "UPDATE", &new, Some(&old), "admin");
    assert!(!a.allowed);
    assert_eq!(
        a.message,
        "imagePolicy configured for the scope blocked.example.com/app is nested inside blockedRegistries (ImagePolicy team-a/t)"
    );
}

/// The MCO's `helpers.go`: a blocked registry covering the payload, with a mirror for the
/// payload, makes the MCO allow only the payload repository and fail on every other scope.
#[test]
fn the_mirrored_payload_rule_denies_only_where_the_mco_renders() {
    let mut inputs = with_blocked(&["quay.io"]);
    inputs.digest_mirror_sets =
        paths::load(&["tests/fixtures/disconnected/mirrors.yaml"]).digest_mirror_sets;
    let where_we_render = snapshot(inputs.clone());
    let a = validate(
        &where_we_render,
        &cluster_policy("apps", &["example.com/apps"]),
    );
    assert!(a.allowed, "{}", a.message);
    assert!(
        a.warnings.iter().any(|w| w.starts_with(
            "clusterimagePolicy configured for the scope example.com/apps is not nested inside allowedRegistries: a blocked registry covers the payload repository quay.io/openshift-release-dev/ocp-release"
        ) && w.ends_with("admitted because cip-webhook renders policies on this cluster")),
        "{:?}",
        a.warnings
    );

    mco_renders(&mut inputs);
    let where_the_mco_renders = snapshot(inputs);
    let a = validate(
        &where_the_mco_renders,
        &team("team-a", "t", &["example.com/team-a"]),
    );
    assert!(!a.allowed);
    assert!(
        a.message.starts_with("imagePolicy configured for the scope example.com/team-a is not nested inside allowedRegistries")
            && a.message.ends_with("fails its whole sync on any other scope"),
        "{}",
        a.message
    );
    // Inside the payload repository nothing is refused for that reason.
    let a = validate(
        &where_the_mco_renders,
        &team(
            "team-a",
            "t",
            &["quay.io/openshift-release-dev/ocp-release/sub"],
        ),
    );
    assert!(!a.message.contains("allowedRegistries"), "{}", a.message);
}

/// A namespace's file starts as a copy of policy.json, and a cluster policy grows every
/// namespace's file as well as policy.json.
/// An Image update that blocks the payload's registry while a mirror serves the payload
/// makes the MCO's whole sync fail on every other scope: judged as a new policy would be,
/// naming the policies.
#[test]
fn an_image_update_that_fails_the_mcos_sync_is_judged_as_a_policy_would_be() {
    let mut inputs = with_blocked(&["blocked.example.com"]);
    inputs.digest_mirror_sets =
        paths::load(&["tests/fixtures/disconnected/mirrors.yaml"]).digest_mirror_sets;
    inputs.policies = paths::load(&["examples/p0.yaml"]).policies;
    let old = serde_json::to_value(inputs.image.as_ref().unwrap()).unwrap();
    let mut new = old.clone();
    new["spec"]["registrySources"]["blockedRegistries"] = json!(["blocked.example.com", "quay.io"]);
    new["apiVersion"] = json!("config.openshift.io/v1");
    new["kind"] = json!("Image");
    let where_we_render = snapshot(inputs.clone());
    let a = ask(
        &where_we_render,
        Endpoint::Validate,
        "UPDATE",
        &new,
        Some(&old),
        "admin",
    );
    assert!(a.allowed, "{}", a.message);
    assert!(
        a.warnings.iter().any(|w| w.contains("fails its whole sync on any other scope (ClusterImagePolicy p0); admitted because cip-webhook renders policies on this cluster")),
        "{:?}",
        a.warnings
    );
    mco_renders(&mut inputs);
    let where_the_mco_renders = snapshot(inputs);
    let a = ask(
        &where_the_mco_renders,
        Endpoint::Validate,
        "UPDATE",
        &new,
        Some(&old),
        "admin",
    );
    assert!(!a.allowed);
    assert!(
        a.message.contains(
            "configured for the scope example.com/global is not nested inside allowedRegistries"
        ) && a
            .message
            .contains("fails its whole sync on any other scope (ClusterImagePolicy p0)"),
        "{}",
        a.message
    );
}

#[test]
fn namespace_files_count_against_the_size_budget() {
    let size = SizeCheck {
        machine_config: "99-worker-generated-registries".into(),
        current_bytes: 0,
        budget_bytes: 1 << 20,
        namespaces: ["team-a".to_string(), "team-b".to_string()].into(),
        new_namespace_bytes: 5000,
        held_back: None,
    };
    let cip: cip_core::model::ClusterImagePolicy =
        serde_json::from_value(cluster_policy("apps", &["example.com/apps"])).unwrap();
    let own = cip_core::render::estimated_growth(&cip);
    assert!(own > 0);
    assert_eq!(size.growth(&cip), own * 3);
    let existing: ImagePolicy =
        serde_json::from_value(team("team-a", "t", &["example.com/apps"])).unwrap();
    assert_eq!(size.growth(&existing), own);
    let new: ImagePolicy =
        serde_json::from_value(team("team-c", "t", &["example.com/apps"])).unwrap();
    assert_eq!(size.growth(&new), own + 5000);

    // Through a snapshot: with room for one more policy in team-a but not for a new
    // namespace's file, a policy in team-b is refused for its size.
    let first: ImagePolicy =
        serde_json::from_value(team("team-a", "t", &["example.com/a"])).unwrap();
    let inputs = Inputs {
        image_policies: vec![first.into()],
        ..Default::default()
    };
    let probe = Snapshot::build(&inputs, &RenderOptions::default());
    let second: ImagePolicy =
        serde_json::from_value(team("team-b", "u", &["example.com/b"])).unwrap();
    let options = RenderOptions {
        size_budget: probe.size.current_bytes + probe.size.growth(&second) - 1,
        ..Default::default()
    };
    let plan = cip_core::render::plan(&inputs, &options).unwrap();
    assert!(
        plan.image_policies[0].condition.takes_effect(),
        "{:?}",
        plan.image_policies
    );
    let s = Snapshot::from_plan(Arc::new(inputs), Some(&plan), &options);
    assert!(validate(&s, &team("team-a", "u", &["example.com/b"])).allowed);
    let other_namespace = validate(&s, &team("team-b", "u", &["example.com/b"]));
    assert!(
        !other_namespace.allowed && other_namespace.message.contains("over the budget"),
        "{}",
        other_namespace.message
    );
}
