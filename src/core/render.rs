//! Rendering: from policies and cluster objects to the MachineConfigs that carry
//! policy.json and sigstore-registries.yaml to every node, following MCO's
//! `updatePolicyJSON` byte for byte, but skipping bad scopes instead of failing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::cluster::{ClusterFacts, ImageConfigError};
use crate::ignition::{self, POLICY_JSON_PATH, SIGSTORE_YAML_PATH};
use crate::mco;
use crate::model::{
    ClusterImagePolicy, IgnitionFile, ImagePolicy, LabelSelector, MachineConfig, MachineConfigPool,
    MachineConfigSpec, ObjectMeta, PolicyKind, MC_API_VERSION, ROLE_LABEL,
};
use crate::policy::{self, Requirement};
use crate::policy_json::{entry_bytes, growth_per_entry};
pub use crate::policy_json::{
    estimated_growth, namespace_policy_jsons, requirement, scope_requirements, update_policy_json,
    ScopeMap,
};
use crate::registries_conf::RegistriesConf;
use crate::registries_d;
use crate::validate::{self, Reason, SizeCheck};

const BUILT_IN_LABEL: &str = "machineconfiguration.openshift.io/mco-built-in";
const BUILT_IN_POOLS: [&str; 3] = ["master", "worker", "arbiter"];

pub use crate::inputs::{Inputs, RenderOptions, DEFAULT_SIZE_BUDGET};
pub use crate::names::{
    imagepolicies_mc_name, is_ours, registries_imagepolicies_mc_name, registries_mc_name,
    MANAGED_BY, MANAGED_BY_LABEL,
};

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RenderError {
    #[error("Image cluster: {0}")]
    ImageConfig(#[from] ImageConfigError),
    #[error("ClusterImagePolicy {0:?} is given more than once")]
    DuplicatePolicy(String),
    #[error("ImagePolicy {0:?} is given more than once")]
    DuplicateImagePolicy(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub facts: ClusterFacts,
    pub pools: Vec<PoolPlan>,
    pub policies: Vec<PolicyOutcome>,
    /// ImagePolicies, by namespace and name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_policies: Vec<PolicyOutcome>,
    /// The scopes each namespace's policy file adds, by namespace.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_scopes: BTreeMap<String, Vec<String>>,
    /// Endpoints that get sigstore attachments because a policy scope is pulled from them
    /// (mirrors, entries nested in a scope), beyond the scopes themselves.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirror_scopes: Vec<String>,
    pub notes: Vec<String>,
    /// The oldest policy the size budget holds back (`Kind name`): newer ones wait
    /// behind it, so admission refuses a new one while it waits.
    #[serde(skip)]
    pub held_back: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolPlan {
    pub pool: String,
    /// Scopes written to this pool's files (the same for every pool).
    pub scopes: Arc<[String]>,
    /// Our policy.json, or `None` where the pool's original applies. Not in reports:
    /// the MachineConfigs carry it.
    #[serde(skip)]
    pub policy_json: Option<Arc<String>>,
    #[serde(skip)]
    pub sigstore_yaml: Option<Arc<str>>,
    /// Each namespace's policy file (`/etc/crio/policies/<namespace>.json`), by namespace.
    #[serde(skip)]
    pub namespace_policies: Vec<(String, Arc<String>)>,
    /// The MachineConfig that carries our policy.json: `99-<pool>-generated-registries`,
    /// or ours beside it where the MCO owns that one.
    pub policy_json_machine_config: String,
    /// `99-<pool>-generated-registries` is the MCO's: it is never written (the MCO rewrites
    /// it on every sync, so a second writer would never converge).
    pub beside_mco: bool,
    /// The MachineConfig that supplied the original policy.json (`None`: MCO's template).
    pub original_from: Option<String>,
    #[serde(skip)]
    pub original_policy_json: String,
    pub changes: Vec<Change>,
    /// Why this pool could not be rendered; its MachineConfigs are left alone.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    Delete,
}

impl Action {
    /// As serialized: the word in plans, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Unchanged => "unchanged",
            Action::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub name: String,
    pub action: Action,
    /// The desired object (absent for `Delete`).
    #[serde(skip)]
    pub desired: Option<MachineConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedScope {
    pub scope: String,
    pub reason: Reason,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum Condition {
    /// Every scope is written to these pools. `warning`: why pulls in its scopes will fail
    /// on the nodes all the same (a v1alpha1 key that does not parse).
    Applied {
        pools: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
    },
    /// Some or all of the policy cannot take effect.
    Pending {
        reason: Reason,
        message: String,
        skipped: Vec<SkippedScope>,
        /// Scopes of this policy that are written all the same.
        written: Vec<String>,
    },
    /// An ImagePolicy some of whose scopes a ClusterImagePolicy governs (the MCO's
    /// precedence): those are dropped, the rest written. The status is the MCO's own:
    /// `Pending`, status `False`, reason `ConflictScopes`, with its message.
    Overridden {
        message: String,
        overridden: Vec<String>,
        written: Vec<String>,
        pools: Vec<String>,
    },
}

impl Condition {
    /// Scopes of the policy that reach the nodes.
    pub fn takes_effect(&self) -> bool {
        match self {
            Condition::Applied { .. } => true,
            Condition::Pending { written, .. } | Condition::Overridden { written, .. } => {
                !written.is_empty()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyOutcome {
    pub name: String,
    /// ImagePolicies only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub generation: Option<i64>,
    pub condition: Condition,
}

impl Plan {
    /// The room left in the largest generated registries MachineConfig.
    pub fn size_check(&self, budget_bytes: usize) -> SizeCheck {
        let largest = self
            .pools
            .iter()
            .flat_map(|p| {
                p.changes
                    .iter()
                    .filter(|c| c.name == p.policy_json_machine_config)
            })
            .filter_map(|c| c.desired.as_ref())
            .map(|mc| (mc.metadata.name.clone(), object_size(mc)))
            .max_by_key(|(_, size)| *size);
        let (machine_config, current_bytes) =
            largest.unwrap_or_else(|| (registries_mc_name("worker"), 0));
        let namespaces = self
            .pools
            .iter()
            .flat_map(|p| p.namespace_policies.iter().map(|(ns, _)| ns.clone()))
            .collect();
        // A namespace's file starts as a copy of the pool's policy.json (base64, with its
        // Ignition entry around it).
        let new_namespace_bytes = self
            .pools
            .iter()
            .map(|p| p.effective_policy_json().len().div_ceil(3) * 4 + 160)
            .max()
            .unwrap_or(0);
        SizeCheck {
            machine_config,
            current_bytes,
            budget_bytes,
            namespaces,
            new_namespace_bytes,
            held_back: self.held_back.clone(),
        }
    }

    pub fn desired_machine_configs(&self) -> impl Iterator<Item = &MachineConfig> {
        self.pools
            .iter()
            .flat_map(|p| &p.changes)
            .filter_map(|c| c.desired.as_ref())
    }
}

/// Serialized size of an object as the API server stores it (JSON).
pub fn object_size<T: Serialize>(object: &T) -> usize {
    serde_json::to_vec(object).map(|v| v.len()).unwrap_or(0)
}

struct Admitted<'a> {
    policy: &'a ClusterImagePolicy,
    valid: Arc<Valid>,
    scopes: Vec<String>,
}

impl Admitted<'_> {
    fn requirement(&self) -> &Requirement {
        &self.valid.requirement
    }
}

/// A policy that passed validation: its requirement, and the bytes that requirement
/// takes under each scope.
#[derive(Debug)]
struct Valid {
    requirement: Requirement,
    entry: usize,
    /// Key material the nodes will not accept, admitted on v1alpha1 with a warning.
    warning: Option<String>,
}

/// What rendering learns from one policy object alone: valid, or why not.
type Checked = Result<Arc<Valid>, (Reason, String)>;

fn check(policy: &ClusterImagePolicy) -> Checked {
    let report = validate::validate_object(policy);
    if let Some(message) = report.denial_message() {
        return Err((report.reason().unwrap_or(Reason::Invalid), message));
    }
    let requirement = requirement(policy).map_err(|e| (Reason::Invalid, e))?;
    let entry = entry_bytes(&requirement);
    let keys: Vec<String> = report
        .warnings
        .iter()
        .filter(|p| p.reason == Reason::InvalidKey)
        .map(|p| p.to_string())
        .collect();
    let warning = (!keys.is_empty()).then(|| keys.join("; "));
    Ok(Arc::new(Valid {
        requirement,
        entry,
        warning,
    }))
}

/// Per-policy results kept from one render to the next by a caller that renders again
/// and again (the serve loop): a change then costs the validation of the changed
/// policies, not of all of them. An entry is keyed by the object's uid and
/// resourceVersion, which the API server changes on every write; objects without them
/// (files) are checked every time. Entries of objects gone from the inputs are dropped.
#[derive(Debug, Default)]
pub struct Memo {
    checked: HashMap<(String, String), Checked>,
}

impl Memo {
    pub fn len(&self) -> usize {
        self.checked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checked.is_empty()
    }

    fn identity(policy: &ClusterImagePolicy) -> Option<(String, String)> {
        let m = &policy.metadata;
        match (m.uid.as_deref(), m.resource_version.as_deref()) {
            (Some(uid), Some(rv)) if !uid.is_empty() && !rv.is_empty() => {
                Some((uid.to_string(), rv.to_string()))
            }
            _ => None,
        }
    }
}

/// Renders the whole desired state. Bad policies and scopes are skipped and reported;
/// only input that makes every output meaningless is an error.
pub fn plan(inputs: &Inputs, options: &RenderOptions) -> Result<Plan, RenderError> {
    plan_with(inputs, options, &mut Memo::default())
}

/// [`plan`], reusing and refreshing what `memo` holds of earlier renders. The plan is the
/// same with any memo.
pub fn plan_with(
    inputs: &Inputs,
    options: &RenderOptions,
    memo: &mut Memo,
) -> Result<Plan, RenderError> {
    let facts = inputs.facts(options)?;
    let mut policies: Vec<&ClusterImagePolicy> = inputs.policies.iter().map(|p| &**p).collect();
    policies.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if let Some(w) = policies
        .windows(2)
        .find(|w| w[0].metadata.name == w[1].metadata.name)
    {
        return Err(RenderError::DuplicatePolicy(w[0].metadata.name.clone()));
    }
    let mut image_policies: Vec<(String, &ImagePolicy)> = inputs
        .image_policies
        .iter()
        .map(|p| (p.key(), &**p))
        .collect();
    image_policies.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = image_policies.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(RenderError::DuplicateImagePolicy(w[0].0.clone()));
    }

    let pools = select_pools(&inputs.pools);
    let mut notes = plan_notes(inputs, &facts, &pools);

    // Oldest first, both kinds together: a policy in force is never pushed out
    // by a newer one; the newest are the ones held back when the budget runs out.
    let mut by_age: Vec<&ClusterImagePolicy> = policies
        .iter()
        .copied()
        .chain(image_policies.iter().map(|(_, p)| *p))
        .collect();
    by_age.sort_by_cached_key(|p| {
        (
            p.metadata.creation_timestamp.clone(),
            p.policy_kind(),
            p.key(),
        )
    });
    let mut budget = Budget::new(inputs, options, &facts, &pools);
    let Admissions {
        mut outcomes,
        mut ip_outcomes,
        mut admitted,
        mut admitted_ips,
    } = admit_oldest_first(by_age, &facts, &mut budget, memo);
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));
    admitted.sort_by(|a, b| a.policy.metadata.name.cmp(&b.policy.metadata.name));
    let scope_map = scope_requirements(admitted.iter().map(|a| {
        (
            a.policy.metadata.name.as_str(),
            a.scopes.as_slice(),
            a.requirement(),
        )
    }));

    admitted_ips.sort_by_cached_key(|a| a.policy.key());
    ip_outcomes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    apply_precedence(&mut admitted_ips, &mut ip_outcomes, &scope_map);
    let namespaces = namespace_scope_maps(&admitted_ips);

    // sigstore-registries.yaml: every written scope, and every endpoint it is pulled from.
    let (mirror_scopes, sigstore_yaml) =
        sigstore_attachments(inputs, &facts, &scope_map, &namespaces, &mut notes);
    let written_scopes: Arc<[String]> = scope_map.keys().map(|s| s.to_string()).collect();
    let sigstore_file = sigstore_yaml
        .as_ref()
        .map(|yaml| ignition::file_entry(SIGSTORE_YAML_PATH, yaml));
    let mut rendered = PolicyJsonCache::new();
    let mut namespace_files = NamespaceCache::new();
    let mut pool_plans = Vec::new();
    let targets: Vec<(bool, String)> = pools
        .selected
        .iter()
        .map(|p| policy_json_target(&p.metadata.name, &inputs.machine_configs))
        .collect();
    let originals: Vec<Original> = pools
        .selected
        .iter()
        .zip(&targets)
        .map(|(p, (_, target))| original_policy(p, &inputs.machine_configs, target))
        .collect();
    for ((pool, original), (beside_mco, target)) in
        pools.selected.iter().zip(originals).zip(targets)
    {
        let shared = Shared {
            facts: &facts,
            scope_map: &scope_map,
            namespaces: &namespaces,
            sigstore_yaml: &sigstore_yaml,
            sigstore_file: &sigstore_file,
            scopes: &written_scopes,
        };
        let target = Target {
            beside_mco,
            name: target,
        };
        let caches = Caches {
            policy_json: &mut rendered,
            namespaces: &mut namespace_files,
        };
        let (plan, pool_notes) = plan_pool(
            pool,
            &inputs.machine_configs,
            original,
            target,
            shared,
            caches,
        );
        notes.extend(pool_notes);
        pool_plans.push(plan);
    }
    let written: Vec<String> = pool_plans
        .iter()
        .filter(|p| p.error.is_none())
        .map(|p| p.pool.clone())
        .collect();
    for outcome in outcomes.iter_mut().chain(&mut ip_outcomes) {
        match &mut outcome.condition {
            Condition::Applied { pools, .. } | Condition::Overridden { pools, .. } => {
                pools.clone_from(&written)
            }
            Condition::Pending { .. } => {}
        }
    }
    Ok(Plan {
        facts,
        pools: pool_plans,
        policies: outcomes,
        image_policies: ip_outcomes,
        namespace_scopes: namespaces
            .iter()
            .map(|(ns, scopes)| (ns.clone(), scopes.keys().map(|s| s.to_string()).collect()))
            .collect(),
        mirror_scopes,
        notes,
        held_back: budget.full,
    })
}

/// The endpoints that get sigstore attachments (every written scope, and every endpoint it
/// is pulled from, mirrors included) as sigstore-registries.yaml, and those beyond the
/// scopes themselves.
fn sigstore_attachments(
    inputs: &Inputs,
    facts: &ClusterFacts,
    scope_map: &ScopeMap,
    namespaces: &BTreeMap<String, ScopeMap>,
    notes: &mut Vec<String>,
) -> (Vec<String>, Option<Arc<str>>) {
    let registries_conf = match RegistriesConf::generate(
        &facts.insecure,
        &facts.registries_blocked,
        inputs.mirrors(),
    ) {
        Ok(conf) => conf,
        Err(e) => {
            notes.push(format!(
                    "registries.conf: {e}: the machine-config-operator fails its sync on this; mirrors get no sigstore attachments"
                ));
            RegistriesConf::default()
        }
    };
    let policy_scopes: BTreeSet<&str> = scope_map
        .keys()
        .copied()
        .chain(namespaces.values().flat_map(|m| m.keys().copied()))
        .collect();
    let expansion = registries_conf.sigstore_keys(policy_scopes.iter().copied());
    notes.extend(expansion.problems);
    let mirror_scopes: Vec<String> = expansion
        .keys
        .iter()
        .filter(|k| !policy_scopes.contains(k.as_str()))
        .cloned()
        .collect();
    let sigstore_yaml: Option<Arc<str>> = (!policy_scopes.is_empty()).then(|| {
        registries_d::sigstore_registries_yaml(expansion.keys.iter().map(String::as_str)).into()
    });
    (mirror_scopes, sigstore_yaml)
}

/// What the budget admitted of each policy, by kind.
struct Admissions<'a> {
    outcomes: Vec<PolicyOutcome>,
    ip_outcomes: Vec<PolicyOutcome>,
    admitted: Vec<Admitted<'a>>,
    admitted_ips: Vec<Admitted<'a>>,
}

/// Each policy checked (from the memo where it is unchanged) and admitted in age order.
fn admit_oldest_first<'a>(
    by_age: Vec<&'a ClusterImagePolicy>,
    facts: &ClusterFacts,
    budget: &mut Budget,
    memo: &mut Memo,
) -> Admissions<'a> {
    let mut outcomes = Vec::new();
    let mut ip_outcomes = Vec::new();
    let mut admitted: Vec<Admitted> = Vec::new();
    let mut admitted_ips: Vec<Admitted> = Vec::new();
    let mut kept = HashMap::with_capacity(by_age.len());
    for policy in by_age {
        let identity = Memo::identity(policy);
        let checked = identity
            .as_ref()
            .and_then(|id| memo.checked.get(id).cloned())
            .unwrap_or_else(|| check(policy));
        if let Some(id) = identity {
            kept.insert(id, checked.clone());
        }
        let (outcome, accepted) = admit(policy, checked, facts, budget);
        match policy.policy_kind() {
            PolicyKind::Cluster => {
                outcomes.push(outcome);
                admitted.extend(accepted);
            }
            PolicyKind::Namespaced => {
                ip_outcomes.push(outcome);
                admitted_ips.extend(accepted);
            }
        }
    }
    memo.checked = kept;
    Admissions {
        outcomes,
        ip_outcomes,
        admitted,
        admitted_ips,
    }
}

/// What the render says about the cluster before any policy: the facts' own notes, who
/// renders policies (the FeatureGate), and the pools that get nothing of ours.
fn plan_notes(inputs: &Inputs, facts: &ClusterFacts, pools: &PoolSelection) -> Vec<String> {
    let mut notes: Vec<String> = facts.notes.clone();
    if inputs.feature_gate.is_some() {
        let gate = mco::sigstore_gate(
            inputs.feature_gate.as_ref(),
            inputs.cluster_version.as_ref(),
        );
        notes.push(if gate.mco_renders() {
            format!("{}: the MCO renders ClusterImagePolicies itself; serve --mode auto writes nothing here", gate.describe())
        } else {
            format!("{}: the MCO does not render ClusterImagePolicies; serve --mode auto writes this", gate.describe())
        });
    }
    notes.extend(pools.skipped.iter().map(|p| {
        let worker_role: BTreeMap<String, String> =
            [(ROLE_LABEL.to_string(), "worker".to_string())].into();
        let inherits = inputs
            .pools
            .iter()
            .find(|pool| &pool.metadata.name == p)
            .and_then(|pool| pool.spec.machine_config_selector.as_ref())
            .is_none_or(|s| s.matches(&worker_role));
        if inherits {
            format!("pool {p}: not written; only built-in pools get generated MachineConfigs (custom pools inherit worker's)")
        } else {
            format!("pool {p}: its machineConfigSelector selects no worker MachineConfigs, so the generated ones (worker's) never reach its nodes: they keep their own policy.json; add role worker to the selector (matchExpressions In [worker, {p}]) for the policies to apply there")
        }
    }));
    notes
}

impl Budget {
    /// The budget before any policy: what the MachineConfig that carries our policy.json
    /// holds already, beside the MCO our own (its files never count against us), else the
    /// shared one.
    fn new(
        inputs: &Inputs,
        options: &RenderOptions,
        facts: &ClusterFacts,
        pools: &PoolSelection,
    ) -> Budget {
        let base_size = pools
            .selected
            .iter()
            .map(|p| {
                let pool = &p.metadata.name;
                let mut mc = match find_mc(&inputs.machine_configs, &registries_mc_name(pool)) {
                    Some(existing) if !mco::owned_by_mco(existing) => existing.clone(),
                    _ => new_machine_config(
                        &registries_imagepolicies_mc_name(pool),
                        pool,
                        Vec::new(),
                    ),
                };
                ignition::remove_file(&mut mc.spec.config, POLICY_JSON_PATH);
                ignition::set_namespace_files(&mut mc.spec.config, Vec::new());
                object_size(&mc)
            })
            .max()
            .unwrap_or(0)
            + 1024;

        Budget {
            limit: options.size_budget,
            used: base_size,
            // A namespace's file starts as a copy of policy.json.
            policy_bytes: update_policy_json(policy::MCO_TEMPLATE, facts, &ScopeMap::new())
                .ok()
                .flatten()
                .map_or(policy::MCO_TEMPLATE.len(), |p| p.len())
                .div_ceil(3)
                * 4
                + 160,
            namespaces: BTreeSet::new(),
            full: None,
        }
    }
}

/// The MCO's precedence: an ImagePolicy scope equal to or inside a written cluster scope
/// is dropped, with the MCO's own status.
fn apply_precedence(
    admitted_ips: &mut [Admitted<'_>],
    ip_outcomes: &mut [PolicyOutcome],
    scope_map: &ScopeMap,
) {
    for a in admitted_ips.iter_mut() {
        let (kept, overridden) = split_overridden(std::mem::take(&mut a.scopes), scope_map);
        a.scopes = kept;
        if overridden.is_empty() {
            continue;
        }
        let key = (a.policy.metadata.namespace.clone(), &a.policy.metadata.name);
        if let Some(o) = ip_outcomes
            .iter_mut()
            .find(|o| (o.namespace.clone(), &o.name) == key)
        {
            let before = std::mem::replace(
                &mut o.condition,
                Condition::Applied {
                    pools: Vec::new(),
                    warning: None,
                },
            );
            o.condition = overridden_condition(before, overridden, &a.scopes);
        }
    }
}

/// Each namespace's scopes and their requirements, from the ImagePolicies admitted.
fn namespace_scope_maps<'a>(admitted_ips: &'a [Admitted<'_>]) -> BTreeMap<String, ScopeMap<'a>> {
    let mut namespaces: BTreeMap<String, ScopeMap> = BTreeMap::new();
    for a in admitted_ips {
        let files = namespaces
            .entry(a.policy.namespace().to_string())
            .or_default();
        for s in &a.scopes {
            files.entry(s.as_str()).or_default().push(a.requirement());
        }
    }
    namespaces.retain(|_, scopes| !scopes.is_empty());
    namespaces
}

/// The MCO's precedence (`getValidScopePolicies`): an ImagePolicy scope equal to or nested
/// inside a cluster scope is dropped. Returns (kept, overridden).
pub fn split_overridden(scopes: Vec<String>, cluster: &ScopeMap) -> (Vec<String>, Vec<String>) {
    scopes
        .into_iter()
        .partition(|s| !cluster.keys().any(|c| crate::scope::is_nested(s, c)))
}

/// An ImagePolicy's condition once the scopes a cluster policy governs are dropped.
fn overridden_condition(
    condition: Condition,
    overridden: Vec<String>,
    kept: &[String],
) -> Condition {
    // Go's %q of a []string.
    let quoted: Vec<String> = overridden.iter().map(|s| format!("{s:?}")).collect();
    let message = format!(
        "has conflicting scope(s) [{}] that equal to or nest inside existing clusterimagepolicy, only policy from clusterimagepolicy scope(s) will be applied",
        quoted.join(" ")
    );
    match condition {
        Condition::Pending {
            reason,
            message: own,
            mut skipped,
            ..
        } => {
            skipped.extend(overridden.into_iter().map(|scope| SkippedScope {
                scope,
                reason: Reason::ConflictScopes,
                message: message.clone(),
            }));
            Condition::Pending {
                reason,
                message: own,
                skipped,
                written: kept.to_vec(),
            }
        }
        _ => Condition::Overridden {
            message,
            overridden,
            written: kept.to_vec(),
            pools: Vec::new(),
        },
    }
}

/// The size budget as policies are admitted, oldest first.
struct Budget {
    limit: usize,
    used: usize,
    /// About what a namespace's file costs before its own requirements.
    policy_bytes: usize,
    namespaces: BTreeSet<String>,
    /// The oldest policy that did not fit: every newer one waits behind it, so that a
    /// small newer policy never takes what an older one needs.
    full: Option<String>,
}

impl Budget {
    /// What admitting these scopes of `policy` adds: a cluster policy's requirement goes
    /// into policy.json and into every namespace's file; a namespace's first policy
    /// brings a copy of policy.json.
    fn cost(&self, policy: &ClusterImagePolicy, own: usize) -> usize {
        match policy.policy_kind() {
            PolicyKind::Cluster => own * (1 + self.namespaces.len()),
            PolicyKind::Namespaced if self.namespaces.contains(policy.namespace()) => own,
            PolicyKind::Namespaced => own + self.policy_bytes,
        }
    }

    /// `own`: the policy's requirement under the admitted scopes, what [`Budget::cost`]
    /// multiplies.
    fn take(&mut self, policy: &ClusterImagePolicy, cost: usize, own: usize) {
        self.used += cost;
        match policy.policy_kind() {
            PolicyKind::Cluster => self.policy_bytes += own,
            PolicyKind::Namespaced => {
                self.namespaces.insert(policy.namespace().to_string());
            }
        }
    }
}

/// Decides what of one policy is written: the whole of it, some scopes, or nothing.
fn admit<'a>(
    policy: &'a ClusterImagePolicy,
    checked: Checked,
    facts: &ClusterFacts,
    budget: &mut Budget,
) -> (PolicyOutcome, Option<Admitted<'a>>) {
    let kind = policy.policy_kind();
    let pending = |reason: Reason,
                   message: String,
                   skipped: Vec<SkippedScope>,
                   written: Vec<String>| PolicyOutcome {
        name: policy.metadata.name.clone(),
        namespace: policy.metadata.namespace.clone(),
        generation: policy.metadata.generation,
        condition: Condition::Pending {
            reason,
            message,
            skipped,
            written,
        },
    };
    let valid = match checked {
        Ok(valid) => valid,
        Err((reason, message)) => return (pending(reason, message, Vec::new(), Vec::new()), None),
    };
    let mut skipped = Vec::new();
    let mut scopes = Vec::new();
    for s in policy.scopes() {
        if let Some((repo, _)) = facts.payload_hit(s) {
            skipped.push(SkippedScope {
                scope: s.clone(),
                reason: Reason::PayloadRepository,
                message: format!(
                    "scope {s} touches the OpenShift release payload repository {repo}"
                ),
            });
        } else if let Some(message) = facts.registry_conflict(s, kind) {
            skipped.push(SkippedScope {
                scope: s.clone(),
                reason: Reason::ConflictScopes,
                message,
            });
        } else {
            scopes.push(s.clone());
        }
    }
    let own = growth_per_entry(valid.entry, &scopes);
    let cost = budget.cost(policy, own);
    if let Some(first) = budget.full.as_ref().filter(|_| !scopes.is_empty()) {
        let message = format!(
            "held back behind {first}, the oldest policy over the size budget: policies are admitted oldest first, and a newer one never takes the room an older one needs"
        );
        return (
            pending(Reason::TooLarge, message, Vec::new(), Vec::new()),
            None,
        );
    }
    if budget.used + cost > budget.limit {
        let message = format!(
            "writing this policy would grow the generated MachineConfigs to about {} bytes, over the budget of {} bytes",
            budget.used + cost,
            budget.limit
        );
        budget.full = Some(format!("{} {}", kind.as_str(), policy.key()));
        return (
            pending(Reason::TooLarge, message, Vec::new(), Vec::new()),
            None,
        );
    }
    budget.take(policy, cost, own);
    let outcome = match skipped.first() {
        None => PolicyOutcome {
            name: policy.metadata.name.clone(),
            namespace: policy.metadata.namespace.clone(),
            generation: policy.metadata.generation,
            condition: Condition::Applied {
                pools: Vec::new(),
                warning: valid.warning.clone(),
            },
        },
        Some(first) => {
            let reason = first.reason;
            let names: Vec<&str> = skipped.iter().map(|s| s.scope.as_str()).collect();
            let message = format!("scope(s) {names:?} skipped: {}", first.message);
            pending(reason, message, skipped, scopes.clone())
        }
    };
    (
        outcome,
        Some(Admitted {
            policy,
            valid,
            scopes,
        }),
    )
}

struct PoolSelection {
    selected: Vec<MachineConfigPool>,
    skipped: Vec<String>,
}

/// Built-in pools only, as MCO; `master` and `worker` when no pool is given.
fn select_pools(pools: &[MachineConfigPool]) -> PoolSelection {
    if pools.is_empty() {
        let default = |name: &str| {
            let mut p = MachineConfigPool::default();
            p.metadata.name = name.to_string();
            p.spec.machine_config_selector = Some(LabelSelector {
                match_labels: [(ROLE_LABEL.to_string(), name.to_string())].into(),
                ..Default::default()
            });
            p
        };
        return PoolSelection {
            selected: vec![default("master"), default("worker")],
            skipped: Vec::new(),
        };
    }
    let mut selected: Vec<MachineConfigPool> = Vec::new();
    let mut skipped = Vec::new();
    for p in pools {
        if BUILT_IN_POOLS.contains(&p.metadata.name.as_str())
            || p.metadata.labels.contains_key(BUILT_IN_LABEL)
        {
            selected.push(p.clone());
        } else {
            skipped.push(p.metadata.name.clone());
        }
    }
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    selected.dedup_by(|a, b| a.metadata.name == b.metadata.name);
    skipped.sort();
    PoolSelection { selected, skipped }
}

fn find_mc<'a>(mcs: &'a [MachineConfig], name: &str) -> Option<&'a MachineConfig> {
    mcs.iter().find(|mc| mc.metadata.name == name)
}

/// Where our policy.json goes for a pool: (beside the MCO, MachineConfig name).
fn policy_json_target(pool: &str, mcs: &[MachineConfig]) -> (bool, String) {
    let registries = registries_mc_name(pool);
    match find_mc(mcs, &registries) {
        Some(mc) if mco::owned_by_mco(mc) => (true, registries_imagepolicies_mc_name(pool)),
        _ => (false, registries),
    }
}

/// What every pool's rendering shares.
#[derive(Clone, Copy)]
struct Shared<'a> {
    facts: &'a ClusterFacts,
    scope_map: &'a ScopeMap<'a>,
    namespaces: &'a BTreeMap<String, ScopeMap<'a>>,
    sigstore_yaml: &'a Option<Arc<str>>,
    sigstore_file: &'a Option<IgnitionFile>,
    scopes: &'a Arc<[String]>,
}

/// Pools usually share their original policy.json: render each distinct one once,
/// with its Ignition entry (the base64 data URL is the costly part).
type PolicyJsonCache = BTreeMap<String, Result<Option<(Arc<String>, IgnitionFile)>, String>>;

/// The namespaces' files built from each distinct effective policy.json, with their
/// Ignition entries.
type NamespaceCache = BTreeMap<String, Result<Vec<(String, Arc<String>, IgnitionFile)>, String>>;

struct Caches<'c> {
    policy_json: &'c mut PolicyJsonCache,
    namespaces: &'c mut NamespaceCache,
}

/// The policy.json a pool's nodes get without us: MachineConfigs merge in name order
/// and the last one naming the path wins; MCO's template when none does.
struct Original {
    text: Result<String, String>,
    from: Option<String>,
    notes: Vec<String>,
}

/// Left out: the MachineConfigs we write (or write into), the MCO's generated one (the
/// MCO itself starts from its template) and its rendered merges (they contain our output).
fn original_policy(pool: &MachineConfigPool, mcs: &[MachineConfig], target: &str) -> Original {
    let name = &pool.metadata.name;
    let ours = [
        registries_mc_name(name),
        imagepolicies_mc_name(name),
        registries_imagepolicies_mc_name(name),
    ];
    let selector = pool
        .spec
        .machine_config_selector
        .clone()
        .unwrap_or_default();
    let mut members: Vec<&MachineConfig> = mcs
        .iter()
        .filter(|mc| {
            selector.matches(&mc.metadata.labels)
                && !ours.contains(&mc.metadata.name)
                && !mco::rendered_by_mco(mc)
        })
        .collect();
    members.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut original = Original {
        text: Ok(policy::MCO_TEMPLATE.to_string()),
        from: None,
        notes: Vec::new(),
    };
    for mc in members {
        let Some(text) = ignition::read_file(mc, POLICY_JSON_PATH) else {
            continue;
        };
        original.from = Some(mc.metadata.name.clone());
        original.text = text.map_err(|e| format!("MachineConfig {}: {e}", mc.metadata.name));
        if original.text.is_err() {
            break;
        }
        if mc.metadata.name.as_str() > target {
            original.notes.push(format!(
                "pool {name}: MachineConfig {} sorts after {target} and also writes {POLICY_JSON_PATH}: it overrides ours on the nodes",
                mc.metadata.name
            ));
        }
    }
    original
}

/// Where a pool's policy.json goes ([`policy_json_target`]).
struct Target {
    beside_mco: bool,
    name: String,
}

/// Pools with the same original share its rendered entry: the data URL inside is an
/// `Arc`, so a copy is a pointer however many megabytes it holds.
fn plan_pool(
    pool: &MachineConfigPool,
    mcs: &[MachineConfig],
    original: Original,
    target: Target,
    shared: Shared,
    caches: Caches,
) -> (PoolPlan, Vec<String>) {
    let Shared {
        facts,
        scope_map,
        namespaces,
        sigstore_yaml,
        sigstore_file,
        scopes,
    } = shared;
    let name = pool.metadata.name.clone();
    let reg_name = registries_mc_name(&name);
    let reg_ip_name = registries_imagepolicies_mc_name(&name);
    let ip_name = imagepolicies_mc_name(&name);
    let mut notes = original.notes;
    let mut plan = PoolPlan {
        pool: name.clone(),
        scopes: Arc::clone(scopes),
        policy_json: None,
        sigstore_yaml: None,
        namespace_policies: Vec::new(),
        policy_json_machine_config: target.name.clone(),
        beside_mco: target.beside_mco,
        original_from: original.from,
        original_policy_json: String::new(),
        changes: Vec::new(),
        error: None,
    };
    let original = match original.text {
        Ok(text) => text,
        Err(e) => {
            plan.error = Some(e);
            return (plan, notes);
        }
    };

    plan.original_policy_json.clone_from(&original);
    let result = caches
        .policy_json
        .entry(original)
        .or_insert_with_key(|original| {
            let json = update_policy_json(original, facts, scope_map)?;
            Ok(json.map(|j| {
                let entry = ignition::file_entry(POLICY_JSON_PATH, &j);
                (Arc::new(j), entry)
            }))
        });
    let policy_file = match result {
        Ok(Some((json, entry))) => Some((Arc::clone(json), entry.clone())),
        Ok(None) => None,
        Err(e) => {
            let source = plan.original_from.as_deref().unwrap_or("the MCO template");
            plan.error = Some(format!(
                "original {POLICY_JSON_PATH} from {source} does not parse: {e}"
            ));
            return (plan, notes);
        }
    };
    plan.sigstore_yaml.clone_from(sigstore_yaml);
    let policy_json = policy_file.as_ref().map(|(json, _)| json);
    let namespace_files =
        match pool_namespace_files(&mut plan, policy_json, namespaces, caches.namespaces) {
            Ok(files) => files,
            Err(e) => {
                plan.error = Some(e);
                return (plan, notes);
            }
        };

    if target.beside_mco {
        // The MCO's MachineConfig already carries what the registry lists alone give, so
        // ours exists only while a policy has a scope to write; revert = delete ours.
        let mut files: Vec<IgnitionFile> = policy_file
            .filter(|_| !scope_map.is_empty())
            .map(|(json, entry)| {
                plan.policy_json = Some(json);
                entry
            })
            .into_iter()
            .collect();
        files.extend(namespace_files);
        let existing = find_mc(mcs, &reg_ip_name);
        let desired =
            (!files.is_empty()).then(|| own_machine_config(existing, &reg_ip_name, &name, files));
        plan.changes.extend(change(&reg_ip_name, existing, desired));
    } else {
        plan.policy_json = policy_file.as_ref().map(|(json, _)| Arc::clone(json));
        let existing_reg = find_mc(mcs, &reg_name);
        let ours_to_write = policy_file.is_some() || !namespace_files.is_empty();
        let desired_reg = match existing_reg {
            Some(existing) => {
                let mut mc = existing.clone();
                match policy_file {
                    Some((_, entry)) => ignition::set_file(&mut mc.spec.config, entry),
                    None => ignition::remove_file(&mut mc.spec.config, POLICY_JSON_PATH),
                }
                ignition::set_namespace_files(&mut mc.spec.config, namespace_files);
                (!(is_ours(&mc) && mc.files().is_empty())).then_some(mc)
            }
            None if ours_to_write => {
                let mut files: Vec<IgnitionFile> =
                    policy_file.map(|(_, entry)| entry).into_iter().collect();
                files.extend(namespace_files);
                Some(new_machine_config(&reg_name, &name, files))
            }
            None => None,
        };
        plan.changes
            .extend(change(&reg_name, existing_reg, desired_reg));
        // Left from a time the MCO owned the registries MachineConfig.
        if let Some(stale) = find_mc(mcs, &reg_ip_name).filter(|mc| is_ours(mc)) {
            plan.changes.extend(change(&reg_ip_name, Some(stale), None));
        }
    }

    let existing_ip = find_mc(mcs, &ip_name);
    let desired_ip = sigstore_file
        .as_ref()
        .map(|file| own_machine_config(existing_ip, &ip_name, &name, vec![file.clone()]));
    plan.changes
        .extend(change(&ip_name, existing_ip, desired_ip));

    // Whatever the layout, a MachineConfig the MCO owns is only ever read.
    plan.changes.retain(|c| {
        let theirs = find_mc(mcs, &c.name).is_some_and(mco::owned_by_mco);
        if theirs && c.action != Action::Unchanged {
            notes.push(format!(
                "pool {name}: MachineConfig {} belongs to the machine-config-operator; left alone",
                c.name
            ));
        }
        !theirs
    });
    (plan, notes)
}

/// A pool's namespace policy files: each a copy of its effective policy.json with the
/// namespace's requirements, built once per distinct policy.json.
fn pool_namespace_files(
    plan: &mut PoolPlan,
    policy_json: Option<&Arc<String>>,
    namespaces: &BTreeMap<String, ScopeMap>,
    cache: &mut NamespaceCache,
) -> Result<Vec<IgnitionFile>, String> {
    if namespaces.is_empty() {
        return Ok(Vec::new());
    }
    let effective = policy_json
        .map_or(plan.original_policy_json.as_str(), |json| json.as_str())
        .to_string();
    let built = cache.entry(effective).or_insert_with_key(|cluster| {
        Ok(namespace_policy_jsons(cluster, namespaces)?
            .into_iter()
            .map(|(ns, json)| {
                let entry = ignition::file_entry(&ignition::namespace_policy_path(&ns), &json);
                (ns, Arc::new(json), entry)
            })
            .collect())
    });
    match built {
        Ok(files) => {
            plan.namespace_policies = files
                .iter()
                .map(|(ns, json, _)| (ns.clone(), Arc::clone(json)))
                .collect();
            Ok(files.iter().map(|(_, _, entry)| entry.clone()).collect())
        }
        Err(e) => Err(format!("the namespaces' policy files: {e}")),
    }
}

/// A MachineConfig of ours holding exactly these files: the existing one with its files
/// replaced (so fields set by others survive), or a new one.
fn own_machine_config(
    existing: Option<&MachineConfig>,
    name: &str,
    pool: &str,
    files: Vec<IgnitionFile>,
) -> MachineConfig {
    match existing {
        Some(existing) => {
            let mut mc = existing.clone();
            let storage = mc.spec.config.storage.get_or_insert_with(Default::default);
            storage.files = Some(files);
            mc
        }
        None => new_machine_config(name, pool, files),
    }
}

fn change(
    name: &str,
    existing: Option<&MachineConfig>,
    desired: Option<MachineConfig>,
) -> Option<Change> {
    let action = match (existing, &desired) {
        (None, None) => return None,
        (None, Some(_)) => Action::Create,
        (Some(_), None) => Action::Delete,
        (Some(e), Some(d)) if e == d => Action::Unchanged,
        (Some(_), Some(_)) => Action::Update,
    };
    Some(Change {
        name: name.to_string(),
        action,
        desired,
    })
}

fn new_machine_config(name: &str, pool: &str, files: Vec<IgnitionFile>) -> MachineConfig {
    MachineConfig {
        api_version: MC_API_VERSION.to_string(),
        kind: "MachineConfig".to_string(),
        metadata: ObjectMeta {
            name: name.to_string(),
            labels: [
                (ROLE_LABEL.to_string(), pool.to_string()),
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            ]
            .into(),
            ..Default::default()
        },
        spec: MachineConfigSpec {
            config: ignition::new_config(files),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl PoolPlan {
    /// The policy.json nodes of this pool end up with.
    pub fn effective_policy_json(&self) -> &str {
        self.policy_json
            .as_deref()
            .unwrap_or(&self.original_policy_json)
    }
}

/// The MachineConfigs once a plan is written.
pub fn machine_configs_after(inputs: &Inputs, plan: &Plan) -> Vec<MachineConfig> {
    let mut mcs = inputs.machine_configs.clone();
    for change in plan.pools.iter().flat_map(|p| &p.changes) {
        if change.action == Action::Unchanged {
            continue;
        }
        mcs.retain(|mc| mc.metadata.name != change.name);
        mcs.extend(change.desired.clone());
    }
    mcs
}

/// The pool of that name, or the built-in defaults `master` and `worker` where the
/// input names no pool.
pub fn find_pool(pools: &[MachineConfigPool], name: &str) -> Option<MachineConfigPool> {
    select_pools(pools)
        .selected
        .into_iter()
        .chain(pools.iter().cloned())
        .find(|p| p.metadata.name == name)
}

/// The signature policy CRI-O reads for a pod in `namespace` on a node of `pool`: the
/// namespace's own file where its ImagePolicies made one, else policy.json, else the MCO's
/// template. Returns (path, the MachineConfig it comes from, contents).
pub fn node_policy_file(
    pool: &MachineConfigPool,
    mcs: &[MachineConfig],
    namespace: Option<&str>,
) -> Result<(String, String, String), String> {
    let namespace_file = namespace.and_then(|ns| {
        let path = ignition::namespace_policy_path(ns);
        node_file(pool, mcs, &path).map(|found| (path, found))
    });
    let (path, (mc, text)) = match namespace_file {
        Some(found) => found,
        None => match node_file(pool, mcs, POLICY_JSON_PATH) {
            Some(found) => (POLICY_JSON_PATH.to_string(), found),
            None => {
                return Ok((
                    POLICY_JSON_PATH.to_string(),
                    "the MCO template".to_string(),
                    policy::MCO_TEMPLATE.to_string(),
                ))
            }
        },
    };
    Ok((path, mc, text?))
}

/// What a pool's nodes get at `path`: the pool's MachineConfigs merged as the MCO's
/// render controller merges them, the last one naming the path winning. A custom pool
/// takes the `worker` role's MachineConfigs first, then its own, each group by name
/// (the MCO's `pkg/controller/render`). Returns the MachineConfig and the contents; `None` where no
/// MachineConfig writes the path. The MCO's own rendered merges are left out.
pub fn node_file(
    pool: &MachineConfigPool,
    mcs: &[MachineConfig],
    path: &str,
) -> Option<(String, Result<String, String>)> {
    let selector = pool
        .spec
        .machine_config_selector
        .clone()
        .unwrap_or_default();
    let custom = !BUILT_IN_POOLS.contains(&pool.metadata.name.as_str())
        && !pool.metadata.labels.contains_key(BUILT_IN_LABEL);
    let mut members: Vec<&MachineConfig> = mcs
        .iter()
        .filter(|mc| selector.matches(&mc.metadata.labels) && !mco::rendered_by_mco(mc))
        .collect();
    members.sort_by_key(|mc| {
        let worker = mc.metadata.labels.get(ROLE_LABEL).map(String::as_str) == Some("worker");
        (custom && !worker, mc.metadata.name.clone())
    });
    members
        .iter()
        .rev()
        .find_map(|mc| ignition::read_file(mc, path).map(|text| (mc.metadata.name.clone(), text)))
}
