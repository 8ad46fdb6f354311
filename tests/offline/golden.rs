//! Golden outputs: MCO's test vectors (expected files written by an independent oracle,
//! tests/golden/mco/make_vectors.py) and the MachineConfigs rendered from examples/.

use testkit::paths;

use std::process::Command;

use cip_core::cluster::ClusterFacts;
use std::collections::BTreeMap;

use cip_core::model::{Image, ImageContentSourcePolicy, ImageTagMirrorSet, RegistrySources};
use cip_core::policy::MCO_TEMPLATE;
use cip_core::render::{self, Action, Inputs, RenderOptions};

const CRS: &str = "tests/fixtures/mco/policies.yaml";

/// MCO's `updatePolicyJSON` over its test CRs, as MCO's own tests call it: no
/// validation (their remap prefixes break the CRD's rule N2), template as original.
fn mco_policy_json(names: &[&str], image: Option<Image>) -> String {
    let policies = paths::policies(&[CRS], names);
    let requirements: Vec<_> = policies
        .iter()
        .map(|p| render::requirement(p).unwrap())
        .collect();
    let map = render::scope_requirements(
        policies
            .iter()
            .zip(&requirements)
            .map(|(p, r)| (p.metadata.name.as_str(), p.scopes(), r)),
    );
    let facts = ClusterFacts::new(image.as_ref(), None, &[]).unwrap();
    render::update_policy_json(MCO_TEMPLATE, &facts, &map)
        .unwrap()
        .expect("a policy.json is written")
}

/// The worker pool's policy.json from the full pipeline (validation included).
fn worker_policy_json(inputs: &Inputs) -> String {
    let plan = render::plan(inputs, &RenderOptions::default()).unwrap();
    let worker = plan.pools.iter().find(|p| p.pool == "worker").unwrap();
    assert_eq!(worker.error, None);
    worker
        .policy_json
        .as_deref()
        .expect("a policy.json is written")
        .to_string()
}

fn image(allowed: &[&str], blocked: &[&str]) -> Image {
    let mut i = Image::default();
    i.metadata.name = "cluster".into();
    i.spec.registry_sources = RegistrySources {
        allowed_registries: allowed.iter().map(|s| s.to_string()).collect(),
        blocked_registries: blocked.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    i
}

fn lists_only(image: Image) -> Inputs {
    Inputs {
        image: Some(image),
        ..Default::default()
    }
}

/// The design note's p0 with other scopes, under an Image CR.
fn p0_with(scopes: &[&str], image: Image) -> Inputs {
    let mut i = lists_only(image);
    i.policies = paths::policies(&["examples/p0.yaml"], &["p0"]);
    std::sync::Arc::make_mut(&mut i.policies[0])
        .spec
        .as_mut()
        .unwrap()
        .scopes = Some(scopes.iter().map(|s| s.to_string()).collect());
    i
}

#[test]
fn tv1_fulcio_and_pki_without_registry_lists() {
    paths::assert_golden(
        "tests/golden/mco/tv1.policy.json",
        &mco_policy_json(&["test-cr0", "test-cr3"], None),
    );
}

#[test]
fn tv2_allowed_registries_default_reject() {
    let policy_json = mco_policy_json(&["test-cr0"], Some(image(&["allow.io", "test0.com"], &[])));
    paths::assert_golden("tests/golden/mco/tv2.policy.json", &policy_json);
}

#[test]
fn tv3_policies_on_one_scope_merge_in_name_order() {
    paths::assert_golden(
        "tests/golden/mco/tv3.policy.json",
        &mco_policy_json(&["test-cr0", "test-cr1"], None),
    );
    // The order of the input objects does not matter.
    paths::assert_golden(
        "tests/golden/mco/tv3.policy.json",
        &mco_policy_json(&["test-cr1", "test-cr0"], None),
    );
}

#[test]
fn tv5_sigstore_registries_yaml() {
    let policies = paths::policies(&[CRS], &["test-cr0", "test-cr1"]);
    let yaml = cip_core::registries_d::sigstore_registries_yaml(
        policies.iter().flat_map(|p| p.scopes()).map(String::as_str),
    );
    paths::assert_golden("tests/golden/mco/tv5.sigstore-registries.yaml", &yaml);
}

/// TV4 (TestUpdateNamespacedPolicyJSONs): each namespace's file is the final cluster
/// policy.json (TV3) with its own requirements; test0.com is a cluster scope, so the
/// ImagePolicy's entry for it is dropped. As MCO's test calls it: no validation.
#[test]
fn tv4_namespace_policy_files() {
    let cluster = mco_policy_json(&["test-cr0", "test-cr1"], None);
    let cips = paths::policies(&[CRS], &["test-cr0", "test-cr1"]);
    let cip_reqs: Vec<_> = cips
        .iter()
        .map(|p| render::requirement(p).unwrap())
        .collect();
    let cluster_map = render::scope_requirements(
        cips.iter()
            .zip(&cip_reqs)
            .map(|(p, r)| (p.metadata.name.as_str(), p.scopes(), r)),
    );
    let ips = paths::load(&["tests/fixtures/mco/imagepolicies.yaml"]).image_policies;
    let reqs: Vec<_> = ips
        .iter()
        .map(|p| render::requirement(p).unwrap())
        .collect();
    let mut kept_scopes = Vec::new();
    for ip in &ips {
        let (kept, overridden) = render::split_overridden(ip.scopes().to_vec(), &cluster_map);
        if ip.key() == "testnamespace/test-cr0" {
            assert_eq!(overridden, ["test0.com"]);
        } else {
            assert!(overridden.is_empty());
        }
        kept_scopes.push(kept);
    }
    let mut namespaces: BTreeMap<String, render::ScopeMap> = BTreeMap::new();
    for ((ip, req), kept) in ips.iter().zip(&reqs).zip(&kept_scopes) {
        let map = namespaces.entry(ip.namespace().to_string()).or_default();
        for s in kept {
            map.entry(s.as_str()).or_default().push(req);
        }
    }
    let files = render::namespace_policy_jsons(&cluster, &namespaces).unwrap();
    let names: Vec<&str> = files.iter().map(|(ns, _)| ns.as_str()).collect();
    assert_eq!(names, ["test-1-namespace", "testnamespace"]);
    for (ns, json) in &files {
        paths::assert_golden(&format!("tests/golden/mco/tv4-{ns}.policy.json"), json);
    }
}

/// TV6 (TestGenerateSigstoreRegistriesConfig): ClusterImagePolicy test-cr2 with each mirror
/// set, through the whole pipeline; the same mirrors as ICSP (digest) or ITMS (tag)
/// rules give the same file.
#[test]
fn tv6_mirror_expansion() {
    for case in ["tv6a", "tv6b", "tv6c"] {
        let golden = format!("tests/golden/mco/{case}.sigstore-registries.yaml");
        let mut digest = paths::load(&[&format!("tests/fixtures/mco/{case}.yaml")]);
        digest.policies = paths::policies(&[CRS], &["test-cr2"]);
        paths::assert_golden(&golden, &worker_sigstore_yaml(&digest));

        let rules = &digest.digest_mirror_sets[0].spec.image_digest_mirrors;
        // ICSP sources cannot be wildcards (tv6c); IDMS and ITMS ones can.
        if case != "tv6c" {
            let mut icsp = ImageContentSourcePolicy::default();
            icsp.spec.repository_digest_mirrors = rules.clone();
            let legacy = Inputs {
                policies: digest.policies.clone(),
                content_source_policies: vec![icsp],
                ..Default::default()
            };
            paths::assert_golden(&golden, &worker_sigstore_yaml(&legacy));
        }
        let mut itms = ImageTagMirrorSet::default();
        itms.spec.image_tag_mirrors = rules.clone();
        let tags = Inputs {
            policies: digest.policies.clone(),
            tag_mirror_sets: vec![itms],
            ..Default::default()
        };
        paths::assert_golden(&golden, &worker_sigstore_yaml(&tags));
    }
}

/// yaml.v2 v2.4.0's quoting and complex keys, through the whole pipeline.
#[test]
fn yaml_v2_corners() {
    let long = format!("registry.example.com/{}", "a".repeat(108));
    let i = p0_with(
        &["0x1.8p1", "123.456", &long, &long[..128]],
        Image::default(),
    );
    paths::assert_golden(
        "tests/golden/mco/yaml-corners.sigstore-registries.yaml",
        &worker_sigstore_yaml(&i),
    );
}

fn worker_sigstore_yaml(inputs: &Inputs) -> String {
    let plan = render::plan(inputs, &RenderOptions::default()).unwrap();
    assert!(
        plan.policies
            .iter()
            .all(|o| matches!(o.condition, render::Condition::Applied { .. })),
        "{:?}",
        plan.policies
    );
    let worker = plan.pools.iter().find(|p| p.pool == "worker").unwrap();
    worker.sigstore_yaml.as_deref().unwrap().to_string()
}

#[test]
fn tv7_blocked_and_allowed_lists_alone() {
    let blocked = lists_only(image(&[], &["block.com", "*.blocked-example.com"]));
    paths::assert_golden(
        "tests/golden/mco/tv7-blocked.policy.json",
        &worker_policy_json(&blocked),
    );
    let allowed = lists_only(image(
        &[
            "allow.io",
            "allow.io/namespace1/namespace2",
            "allowed-example.com/namespace1/namespace2/namespace3",
        ],
        &[],
    ));
    paths::assert_golden(
        "tests/golden/mco/tv7-allowed.policy.json",
        &worker_policy_json(&allowed),
    );
    // With lists alone there is no policy to attach: no imagepolicies MachineConfig.
    let plan = render::plan(&allowed, &RenderOptions::default()).unwrap();
    assert!(plan.pools.iter().all(|p| p.sigstore_yaml.is_none()));
}

#[test]
fn tv9_conflicting_scopes_are_skipped_and_reported() {
    let i = p0_with(
        &[
            "allowed.io/policysigned",
            "allowed.io/namespace1/namespace2/ok",
        ],
        image(&["allowed.io/namespace1/namespace2"], &[]),
    );
    let plan = render::plan(&i, &RenderOptions::default()).unwrap();
    let render::Condition::Pending {
        reason, skipped, ..
    } = &plan.policies[0].condition
    else {
        panic!("expected Pending: {:?}", plan.policies[0]);
    };
    assert_eq!(*reason, cip_core::validate::Reason::ConflictScopes);
    assert_eq!(
        skipped[0].message,
        "clusterimagePolicy configured for the scope allowed.io/policysigned is not nested inside allowedRegistries"
    );
    // The rest of the policy still rolls out.
    assert_eq!(
        &plan.pools[0].scopes[..],
        ["allowed.io/namespace1/namespace2/ok"]
    );

    let i = p0_with(
        &["blocker-reg.com/namespace1/policysigned"],
        image(&[], &["blocked.io", "blocker-reg.com/namespace1"]),
    );
    let plan = render::plan(&i, &RenderOptions::default()).unwrap();
    let render::Condition::Pending { skipped, .. } = &plan.policies[0].condition else {
        panic!()
    };
    assert_eq!(
        skipped[0].message,
        "clusterimagePolicy configured for the scope blocker-reg.com/namespace1/policysigned is nested inside blockedRegistries"
    );

    let i = p0_with(
        &["blocked.io"],
        image(&[], &["blocked.io/namespace1/namespace2"]),
    );
    let plan = render::plan(&i, &RenderOptions::default()).unwrap();
    assert!(matches!(
        plan.policies[0].condition,
        render::Condition::Applied { .. }
    ));
}

/// `render` over examples/: the MachineConfig files and the summary, byte for byte.
/// `render` over a directory: the summary and every MachineConfig match the goldens.
fn render_golden(input: &str, golden: &str, expected: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(paths::bin())
        .current_dir(paths::root())
        .args(["render", "--input", input, "--output"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = String::from_utf8(run.stdout)
        .unwrap()
        .replace(&out.path().display().to_string(), "OUT");
    paths::assert_golden(&format!("{golden}/summary.txt"), &summary);
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, expected);
    for n in names {
        let text = std::fs::read_to_string(out.path().join(&n)).unwrap();
        paths::assert_golden(&format!("{golden}/{n}"), &text);
    }
}

/// The seed's layout: no controller owns `99-<pool>-generated-registries`, so our
/// policy.json goes into it.
#[test]
fn examples_render_golden() {
    render_golden(
        "examples",
        "tests/golden/examples",
        &[
            "99-master-generated-imagepolicies.yaml",
            "99-master-generated-registries.yaml",
            "99-worker-generated-imagepolicies.yaml",
            "99-worker-generated-registries.yaml",
        ],
    );
}

/// Beside the MCO: its `99-<pool>-generated-registries` is never written; policy.json
/// goes into ours, which sorts after it. The MCO's rendered merge is not an input.
#[test]
fn openshift_cluster_render_golden() {
    render_golden(
        "tests/fixtures/openshift-cluster",
        "tests/golden/openshift-cluster",
        &[
            "99-master-generated-imagepolicies.yaml",
            "99-master-generated-registries-imagepolicies.yaml",
            "99-worker-generated-imagepolicies.yaml",
            "99-worker-generated-registries-imagepolicies.yaml",
        ],
    );
}

/// A disconnected, multi-tenant cluster: mirrors from all three kinds of mirror set get
/// sigstore attachments, each team's namespace gets its policy file beside policy.json.
#[test]
fn disconnected_render_golden() {
    render_golden(
        "tests/fixtures/disconnected",
        "tests/golden/disconnected",
        &[
            "99-master-generated-imagepolicies.yaml",
            "99-master-generated-registries.yaml",
            "99-worker-generated-imagepolicies.yaml",
            "99-worker-generated-registries.yaml",
        ],
    );
}

/// The MCO's `helpers.go`: a blocked registry covering the payload repository stays blocked
/// where a mirror serves the payload, and the payload repository is allowed.
#[test]
fn a_blocked_payload_registry_with_a_mirror() {
    let mut inputs = paths::load(&[
        "examples/clusterversion.yaml",
        "tests/fixtures/disconnected/mirrors.yaml",
    ]);
    inputs.image = Some(image(&[], &["quay.io"]));
    paths::assert_golden(
        "tests/golden/mco/payload-mirror.policy.json",
        &worker_policy_json(&inputs),
    );
    // Without the mirror, the MCO drops the entry: nothing to write.
    inputs.digest_mirror_sets.clear();
    let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
    assert!(plan.pools.iter().all(|p| p.policy_json.is_none()));
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains("cannot block the repository being used by the payload")));
}

/// `check` prints exactly the webhook's messages for the rejected examples.
#[test]
fn rejected_examples_check_golden() {
    let run = Command::new(paths::bin())
        .current_dir(paths::root())
        .args([
            "check",
            "--state",
            "examples",
            "examples/p0.yaml",
            "examples/signed-apps.yaml",
        ])
        .args(paths::yaml_files("examples/rejected"))
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    paths::assert_golden(
        "examples/rejected/expected.txt",
        &String::from_utf8(run.stdout).unwrap(),
    );
}

#[test]
fn render_changes_are_create_then_unchanged() {
    let mut i = paths::load(&["examples/p0.yaml", "examples/pools.yaml"]);
    let first = render::plan(&i, &RenderOptions::default()).unwrap();
    assert!(first
        .pools
        .iter()
        .flat_map(|p| &p.changes)
        .all(|c| c.action == Action::Create));
    i.machine_configs = first.desired_machine_configs().cloned().collect();
    let second = render::plan(&i, &RenderOptions::default()).unwrap();
    assert!(second
        .pools
        .iter()
        .flat_map(|p| &p.changes)
        .all(|c| c.action == Action::Unchanged));
}

/// `render --diff` and `--files`: what the nodes get, decoded, and what would change on
/// them against the MachineConfigs in the input (here the seed layout's MCO template).
#[test]
fn node_files_and_their_diff_golden() {
    let out = tempfile::tempdir().unwrap();
    let files = out.path().join("files");
    let o = std::process::Command::new(paths::bin())
        .current_dir(paths::root())
        .args(["render", "--input", "examples", "--diff", "--files"])
        .arg(&files)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    paths::assert_golden(
        "tests/golden/examples/nodes.diff",
        &String::from_utf8(o.stdout).unwrap(),
    );
    let policy = std::fs::read_to_string(files.join("worker/etc/containers/policy.json")).unwrap();
    paths::assert_golden("tests/golden/examples/worker-policy.json", &policy);
    // Nothing to change once the output is the input: an empty diff.
    let o = std::process::Command::new(paths::bin())
        .current_dir(paths::root())
        .args(["render", "--input", "examples", "--output"])
        .arg(out.path().join("mcs"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let both = out.path().join("both");
    std::fs::create_dir(&both).unwrap();
    for f in paths::yaml_files("examples") {
        if !f.contains("machineconfigs") {
            std::fs::copy(paths::root().join(&f), both.join(f.replace('/', "_"))).unwrap();
        }
    }
    for entry in std::fs::read_dir(out.path().join("mcs")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), both.join(entry.file_name())).unwrap();
    }
    let o = std::process::Command::new(paths::bin())
        .args(["render", "--diff", "--input"])
        .arg(&both)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "");
}
