//! Rendering: from policies and cluster objects to the MachineConfigs that carry
//! policy.json and sigstore-registries.yaml to every node, following MCO's
//! `updatePolicyJSON` byte for byte, but skipping bad scopes instead of failing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::cluster::{ClusterFacts, ImageConfigError, DEFAULT_EXTRA_PAYLOAD_REPOS};
use crate::gojson;
use crate::ignition::{self, POLICY_JSON_PATH, SIGSTORE_YAML_PATH};
use crate::mco;
use crate::model::{
    ClusterImagePolicy, ClusterVersion, FeatureGate, IgnitionFile, Image, LabelSelector,
    MachineConfig, MachineConfigPool, MachineConfigSpec, ObjectMeta, MC_API_VERSION, ROLE_LABEL,
};
use crate::policy::{self, Bytes, Policy, Requirement, SigstoreSigned};
use crate::registries_d;
use crate::validate::{self, Reason, SizeCheck};

/// Marks the MachineConfigs this tool created, so it only ever deletes its own.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "cip-webhook";
/// Default MachineConfig budget: etcd refuses objects over 1.5 MiB, and the pool's
/// rendered MachineConfig carries every file of every MachineConfig besides ours.
pub const DEFAULT_SIZE_BUDGET: usize = 1024 * 1024;
const BUILT_IN_LABEL: &str = "machineconfiguration.openshift.io/mco-built-in";
const BUILT_IN_POOLS: [&str; 3] = ["master", "worker", "arbiter"];

pub fn registries_mc_name(pool: &str) -> String {
    format!("99-{pool}-generated-registries")
}

pub fn imagepolicies_mc_name(pool: &str) -> String {
    format!("99-{pool}-generated-imagepolicies")
}

/// Ours, for policy.json where the MCO owns `99-<pool>-generated-registries`: it sorts
/// right after the MCO's, so it wins the merge on the nodes (SPEC §8.1).
pub fn registries_imagepolicies_mc_name(pool: &str) -> String {
    format!("99-{pool}-generated-registries-imagepolicies")
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub extra_payload_repos: Vec<String>,
    pub size_budget: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            extra_payload_repos: DEFAULT_EXTRA_PAYLOAD_REPOS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            size_budget: DEFAULT_SIZE_BUDGET,
        }
    }
}

/// Everything rendering reads, as plain data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    pub policies: Vec<ClusterImagePolicy>,
    pub image: Option<Image>,
    pub cluster_version: Option<ClusterVersion>,
    pub pools: Vec<MachineConfigPool>,
    pub machine_configs: Vec<MachineConfig>,
    /// FeatureGate `cluster`: whether the MCO renders policies itself (`serve --mode auto`).
    pub feature_gate: Option<FeatureGate>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RenderError {
    #[error("Image cluster: {0}")]
    ImageConfig(#[from] ImageConfigError),
    #[error("ClusterImagePolicy {0:?} is given more than once")]
    DuplicatePolicy(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub facts: ClusterFacts,
    pub pools: Vec<PoolPlan>,
    pub policies: Vec<PolicyOutcome>,
    pub notes: Vec<String>,
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
    /// The MachineConfig that carries our policy.json: `99-<pool>-generated-registries`,
    /// or ours beside it where the MCO owns that one.
    pub policy_json_machine_config: String,
    /// `99-<pool>-generated-registries` is the MCO's: it is never written (SPEC §8.1).
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
    /// Every scope is written to these pools.
    Applied { pools: Vec<String> },
    /// Some or all of the policy cannot take effect.
    Pending {
        reason: Reason,
        message: String,
        skipped: Vec<SkippedScope>,
        /// Scopes of this policy that are written all the same.
        written: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyOutcome {
    pub name: String,
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
        SizeCheck {
            machine_config,
            current_bytes,
            budget_bytes,
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

/// The requirement MCO's `policyItemFromSpec` builds for a (validated) policy.
pub fn requirement(cip: &ClusterImagePolicy) -> Result<Requirement, String> {
    let policy = cip
        .spec
        .as_ref()
        .and_then(|s| s.policy.as_ref())
        .ok_or("spec.policy is missing")?;
    let rot = policy
        .root_of_trust
        .as_ref()
        .ok_or("spec.policy.rootOfTrust is missing")?;
    let bytes = |field: &str, v: &Option<String>| -> Result<Option<Bytes>, String> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => Bytes::from_base64(text)
                .map(Some)
                .map_err(|e| format!("{field}: {e}")),
        }
    };
    let mut req = SigstoreSigned::default();
    match (rot.policy_type.as_deref(), &rot.public_key, &rot.fulcio_ca_with_rekor, &rot.pki) {
        (Some("PublicKey"), Some(pk), _, _) => {
            req.key_data = bytes("keyData", &pk.key_data)?;
            req.rekor_public_key_data = bytes("rekorKeyData", &pk.rekor_key_data)?;
        }
        (Some("FulcioCAWithRekor"), _, Some(f), _) => {
            let subject = f.fulcio_subject.clone().unwrap_or_default();
            req.fulcio = Some(policy::Fulcio {
                ca_data: bytes("fulcioCAData", &f.fulcio_ca_data)?,
                oidc_issuer: subject.oidc_issuer,
                subject_email: subject.signed_email,
                ..Default::default()
            });
            req.rekor_public_key_data = bytes("rekorKeyData", &f.rekor_key_data)?;
        }
        (Some("PKI"), _, _, Some(p)) => {
            let subject = p.pki_certificate_subject.clone().unwrap_or_default();
            req.pki = Some(policy::Pki {
                ca_roots_data: bytes("caRootsData", &p.ca_roots_data)?,
                ca_intermediates_data: bytes("caIntermediatesData", &p.ca_intermediates_data)?,
                subject_email: subject.email,
                subject_hostname: subject.hostname,
                ..Default::default()
            });
        }
        _ => return Err("exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, and pki must be specified".into()),
    }
    req.signed_identity = match &policy.signed_identity {
        None => policy::SignedIdentity::MatchRepoDigestOrExact,
        Some(si) => match si.match_policy.as_deref() {
            None | Some("") | Some("MatchRepoDigestOrExact") => {
                policy::SignedIdentity::MatchRepoDigestOrExact
            }
            Some("MatchRepository") => policy::SignedIdentity::MatchRepository,
            Some("ExactRepository") => policy::SignedIdentity::ExactRepository {
                docker_repository: si
                    .exact_repository
                    .as_ref()
                    .and_then(|e| e.repository.clone())
                    .unwrap_or_default(),
            },
            Some("RemapIdentity") => {
                let remap = si.remap_identity.clone().unwrap_or_default();
                policy::SignedIdentity::RemapIdentity {
                    prefix: remap.prefix.unwrap_or_default(),
                    signed_prefix: remap.signed_prefix.unwrap_or_default(),
                }
            }
            Some(other) => return Err(format!("unknown signedIdentity match policy: {other}")),
        },
    };
    Ok(Requirement::SigstoreSigned(Box::new(req)))
}

/// About how many bytes this policy adds to a registries MachineConfig: its
/// requirement under each scope in `docker` (and `atomic`), base64-encoded.
pub fn estimated_growth(cip: &ClusterImagePolicy) -> usize {
    requirement(cip).map_or(0, |req| growth(&req, cip.scopes()))
}

fn growth(req: &Requirement, scopes: &[String]) -> usize {
    let body = gojson::marshal_indent(req);
    // Nested four levels deep in policy.json: eight more spaces on every line.
    let entry = body.len() + 8 * (body.matches('\n').count() + 1) + 16;
    let json: usize = scopes
        .iter()
        .map(|s| (entry + s.len()) * if s.matches('/').count() < 3 { 2 } else { 1 })
        .sum();
    json.div_ceil(3) * 4
}

static REJECT: Requirement = Requirement::Reject;
static ACCEPT: Requirement = Requirement::InsecureAcceptAnything;

/// Requirements per scope, borrowed from the policies that carry them.
pub type ScopeMap<'a> = BTreeMap<&'a str, Vec<&'a Requirement>>;

/// MCO's `updatePolicyJSON`: `None` when nothing of ours belongs in policy.json,
/// so the pool's original file applies unchanged.
pub fn update_policy_json(
    original: &str,
    facts: &ClusterFacts,
    scopes: &ScopeMap,
) -> Result<Option<String>, String> {
    if facts.allowed.is_empty() && facts.blocked.is_empty() && scopes.is_empty() {
        return Ok(None);
    }
    let policy = Policy::parse(original)?;
    let mut default: &[Requirement] = &policy.default;
    // The policies' scopes are borrowed as they are; only the few scopes that the
    // registry lists also name get a merged list of their own.
    let mut docker: BTreeMap<&str, Cow<[&Requirement]>> = scopes
        .iter()
        .map(|(k, v)| (*k, Cow::Borrowed(v.as_slice())))
        .collect();
    if !facts.allowed.is_empty() {
        default = std::slice::from_ref(&REJECT);
        for reg in facts
            .allowed
            .iter()
            .filter(|r| !scopes.contains_key(r.as_str()))
        {
            docker.insert(reg, Cow::Owned(vec![&ACCEPT]));
        }
    }
    if !facts.blocked.is_empty() {
        default = std::slice::from_ref(&ACCEPT);
        for reg in &facts.blocked {
            let mut merged = vec![&REJECT];
            merged.extend(scopes.get(reg.as_str()).into_iter().flatten());
            docker.insert(reg, Cow::Owned(merged));
        }
    }
    let mut transports: BTreeMap<&str, Transport> = policy
        .transports
        .iter()
        .map(|(k, v)| (k.as_str(), Transport::Kept(v)))
        .collect();
    if !docker.is_empty() {
        // containers/image's `atomic` transport cannot address 3+ path levels (OCPBUGS-4122).
        let atomic = docker
            .iter()
            .filter(|(scope, _)| scope.matches('/').count() < 3)
            .map(|(k, v)| (*k, &**v))
            .collect();
        transports.insert(
            "docker",
            Transport::Built(docker.iter().map(|(k, v)| (*k, &**v)).collect()),
        );
        transports.insert("atomic", Transport::Built(atomic));
    }
    Ok(Some(PolicyWriter::default().policy(default, &transports)))
}

enum Transport<'a> {
    Kept(&'a BTreeMap<String, Vec<Requirement>>),
    Built(BTreeMap<&'a str, &'a [&'a Requirement]>),
}

/// A requirement serialized once and indented for `depth` (always the same depth
/// within one document).
fn snippet<'s>(snippets: &'s mut Snippets, req: &Requirement, depth: usize) -> &'s String {
    let key: *const Requirement = req;
    snippets.entry(key).or_insert_with(|| {
        let mut indented = String::new();
        for (n, line) in gojson::marshal_indent(req).split('\n').enumerate() {
            if n > 0 {
                indented.push('\n');
                indented.extend(std::iter::repeat_n("  ", depth));
            }
            indented.push_str(line);
        }
        indented
    })
}

type Snippets = std::collections::HashMap<*const Requirement, String>;

/// Writes policy.json in `json.MarshalIndent` layout. Each distinct requirement is
/// serialized once and spliced in at its depth: with many scopes per policy, and
/// `docker` and `atomic` repeating each other, that is most of the document.
#[derive(Default)]
struct PolicyWriter {
    out: String,
    /// Requirements already serialized and indented for their depth, by address.
    snippets: Snippets,
}

impl PolicyWriter {
    fn newline(&mut self, depth: usize) {
        self.out.push('\n');
        self.out.extend(std::iter::repeat_n("  ", depth));
    }

    /// A value serialized alone, re-indented for `depth`.
    fn value<T: Serialize + ?Sized>(&mut self, value: &T, depth: usize) {
        let text = gojson::marshal_indent(value);
        self.indented(&text, depth);
    }

    fn indented(&mut self, text: &str, depth: usize) {
        let mut lines = text.split('\n');
        self.out.push_str(lines.next().unwrap_or_default());
        for line in lines {
            self.newline(depth);
            self.out.push_str(line);
        }
    }

    fn requirements(&mut self, reqs: &[&Requirement], depth: usize) {
        if reqs.is_empty() {
            self.out.push_str("[]");
            return;
        }
        self.out.push('[');
        for (i, req) in reqs.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.newline(depth + 1);
            let snippet = snippet(&mut self.snippets, req, depth + 1);
            self.out.push_str(snippet);
        }
        self.newline(depth);
        self.out.push(']');
    }

    /// The start of an object member: separator, indent, key and `": "`.
    fn member(&mut self, first: bool, key: &str, depth: usize) {
        if !first {
            self.out.push(',');
        }
        self.newline(depth);
        self.key(key, depth);
        self.out.push_str(": ");
    }

    /// A map key: written directly when nothing in it needs escaping.
    fn key(&mut self, key: &str, depth: usize) {
        let plain = key
            .bytes()
            .all(|b| (0x20..0x80).contains(&b) && !matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&'));
        if plain {
            self.out.push('"');
            self.out.push_str(key);
            self.out.push('"');
        } else {
            self.value(key, depth);
        }
    }

    fn policy(mut self, default: &[Requirement], transports: &BTreeMap<&str, Transport>) -> String {
        let mut size = 4096;
        for transport in transports.values() {
            if let Transport::Built(map) = transport {
                for (scope, reqs) in map {
                    size += scope.len() + 24;
                    for req in reqs.iter() {
                        size += snippet(&mut self.snippets, req, 4).len() + 12;
                    }
                }
            }
        }
        self.out.reserve(size);
        self.out.push_str("{\n  \"default\": ");
        self.value(default, 1);
        self.out.push_str(",\n  \"transports\": ");
        if transports.is_empty() {
            self.out.push_str("{}");
        } else {
            self.out.push('{');
            for (i, (name, transport)) in transports.iter().enumerate() {
                self.member(i == 0, name, 2);
                match transport {
                    Transport::Kept(map) => self.value(*map, 2),
                    Transport::Built(map) if map.is_empty() => self.out.push_str("{}"),
                    Transport::Built(map) => {
                        self.out.push('{');
                        for (j, (scope, reqs)) in map.iter().enumerate() {
                            self.member(j == 0, scope, 3);
                            self.requirements(reqs, 3);
                        }
                        self.newline(2);
                        self.out.push('}');
                    }
                }
            }
            self.newline(1);
            self.out.push('}');
        }
        self.out.push_str("\n}");
        self.out
    }
}

/// Requirements per scope; several policies on one scope in policy-name order
/// (deterministic, where MCO's order is its informer cache's).
pub fn scope_requirements<'a>(
    policies: impl IntoIterator<Item = (&'a str, &'a [String], &'a Requirement)>,
) -> ScopeMap<'a> {
    let mut sorted: Vec<_> = policies.into_iter().collect();
    sorted.sort_by_key(|(name, _, _)| *name);
    let mut map: ScopeMap = BTreeMap::new();
    for (_, scopes, requirement) in sorted {
        for s in scopes {
            map.entry(s.as_str()).or_default().push(requirement);
        }
    }
    map
}

struct Admitted {
    requirement: Requirement,
    scopes: Vec<String>,
}

/// Renders the whole desired state. Bad policies and scopes are skipped and reported;
/// only input that makes every output meaningless is an error.
pub fn plan(inputs: &Inputs, options: &RenderOptions) -> Result<Plan, RenderError> {
    let facts = ClusterFacts::new(
        inputs.image.as_ref(),
        inputs.cluster_version.as_ref(),
        &options.extra_payload_repos,
    )?;
    let mut policies: Vec<&ClusterImagePolicy> = inputs.policies.iter().collect();
    policies.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if let Some(w) = policies
        .windows(2)
        .find(|w| w[0].metadata.name == w[1].metadata.name)
    {
        return Err(RenderError::DuplicatePolicy(w[0].metadata.name.clone()));
    }

    let pools = select_pools(&inputs.pools);
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
        format!("pool {p}: not written; only built-in pools get generated MachineConfigs (custom pools inherit worker's)")
    }));

    // The budget is for the MachineConfig that carries our policy.json: beside the MCO
    // that is our own (its files never count against us), else the shared one.
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
                    IgnitionFile::default(),
                ),
            };
            ignition::remove_file(&mut mc.spec.config, POLICY_JSON_PATH);
            object_size(&mc)
        })
        .max()
        .unwrap_or(0)
        + 1024;

    // Oldest first (SPEC §8.5): a policy in force is never pushed out by a newer one;
    // the newest are the ones held back when the budget runs out.
    let mut by_age = policies.clone();
    by_age.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let mut outcomes = Vec::new();
    let mut admitted: Vec<(String, Admitted)> = Vec::new();
    let mut used = base_size;
    for cip in by_age {
        let (outcome, accepted) = admit(cip, &facts, options.size_budget, &mut used);
        outcomes.push(outcome);
        if let Some(a) = accepted {
            admitted.push((cip.metadata.name.clone(), a));
        }
    }
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));

    let scope_map = scope_requirements(
        admitted
            .iter()
            .map(|(name, a)| (name.as_str(), a.scopes.as_slice(), &a.requirement)),
    );

    let sigstore_yaml: Option<Arc<str>> = (!scope_map.is_empty())
        .then(|| registries_d::sigstore_registries_yaml(scope_map.keys().copied()).into());
    let written_scopes: Arc<[String]> = scope_map.keys().map(|s| s.to_string()).collect();
    let sigstore_file = sigstore_yaml
        .as_ref()
        .map(|yaml| ignition::file_entry(SIGSTORE_YAML_PATH, yaml));
    let mut rendered = PolicyJsonCache::new();
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
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    for o in &originals {
        if let Ok(text) = &o.text {
            *remaining.entry(text.clone()).or_default() += 1;
        }
    }
    for ((pool, original), (beside_mco, target)) in
        pools.selected.iter().zip(originals).zip(targets)
    {
        let last_use = original.text.as_ref().is_ok_and(|t| {
            let left = remaining.get_mut(t).expect("counted above");
            *left -= 1;
            *left == 0
        });
        let shared = Shared {
            facts: &facts,
            scope_map: &scope_map,
            sigstore_yaml: &sigstore_yaml,
            sigstore_file: &sigstore_file,
            scopes: &written_scopes,
        };
        let target = Target {
            beside_mco,
            name: target,
        };
        let (plan, pool_notes) = plan_pool(
            pool,
            &inputs.machine_configs,
            original,
            target,
            last_use,
            shared,
            &mut rendered,
        );
        notes.extend(pool_notes);
        pool_plans.push(plan);
    }
    let written: Vec<String> = pool_plans
        .iter()
        .filter(|p| p.error.is_none())
        .map(|p| p.pool.clone())
        .collect();
    for outcome in &mut outcomes {
        if let Condition::Applied { pools } = &mut outcome.condition {
            pools.clone_from(&written);
        }
    }
    Ok(Plan {
        facts,
        pools: pool_plans,
        policies: outcomes,
        notes,
    })
}

/// Decides what of one policy is written: the whole of it, some scopes, or nothing.
fn admit(
    cip: &ClusterImagePolicy,
    facts: &ClusterFacts,
    budget: usize,
    used: &mut usize,
) -> (PolicyOutcome, Option<Admitted>) {
    let pending = |reason: Reason,
                   message: String,
                   skipped: Vec<SkippedScope>,
                   written: Vec<String>| PolicyOutcome {
        name: cip.metadata.name.clone(),
        generation: cip.metadata.generation,
        condition: Condition::Pending {
            reason,
            message,
            skipped,
            written,
        },
    };
    let report = validate::validate_object(cip);
    if let Some(message) = report.denial_message() {
        let reason = report.reason().unwrap_or(Reason::Invalid);
        return (pending(reason, message, Vec::new(), Vec::new()), None);
    }
    let requirement = match requirement(cip) {
        Ok(r) => r,
        Err(e) => return (pending(Reason::Invalid, e, Vec::new(), Vec::new()), None),
    };
    let mut skipped = Vec::new();
    let mut scopes = Vec::new();
    for s in cip.scopes() {
        if let Some((repo, _)) = facts.payload_hit(s) {
            skipped.push(SkippedScope {
                scope: s.clone(),
                reason: Reason::PayloadRepository,
                message: format!(
                    "scope {s} touches the OpenShift release payload repository {repo}"
                ),
            });
        } else if let Some(message) = facts.registry_conflict(s) {
            skipped.push(SkippedScope {
                scope: s.clone(),
                reason: Reason::ConflictScopes,
                message,
            });
        } else {
            scopes.push(s.clone());
        }
    }
    let growth = growth(&requirement, &scopes);
    if *used + growth > budget {
        let message = format!(
            "writing this policy would grow the generated MachineConfigs to about {} bytes, over the budget of {budget} bytes",
            *used + growth
        );
        return (
            pending(Reason::TooLarge, message, Vec::new(), Vec::new()),
            None,
        );
    }
    *used += growth;
    let outcome = match skipped.first() {
        None => PolicyOutcome {
            name: cip.metadata.name.clone(),
            generation: cip.metadata.generation,
            condition: Condition::Applied { pools: Vec::new() },
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
            requirement,
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
    sigstore_yaml: &'a Option<Arc<str>>,
    sigstore_file: &'a Option<IgnitionFile>,
    scopes: &'a Arc<[String]>,
}

/// Pools usually share their original policy.json: render each distinct one once,
/// with its Ignition entry (the base64 data URL is the costly part).
type PolicyJsonCache = BTreeMap<String, Result<Option<(Arc<String>, IgnitionFile)>, String>>;

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

/// `last_use`: no later pool shares this original, so its rendered entry can be moved
/// out of the cache instead of copied (it can be megabytes).
fn plan_pool(
    pool: &MachineConfigPool,
    mcs: &[MachineConfig],
    original: Original,
    target: Target,
    last_use: bool,
    shared: Shared,
    rendered: &mut PolicyJsonCache,
) -> (PoolPlan, Vec<String>) {
    let Shared {
        facts,
        scope_map,
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
    let result = rendered.entry(original).or_insert_with_key(|original| {
        let json = update_policy_json(original, facts, scope_map)?;
        Ok(json.map(|j| {
            let entry = ignition::file_entry(POLICY_JSON_PATH, &j);
            (Arc::new(j), entry)
        }))
    });
    let policy_file = match result {
        Ok(Some((json, entry))) => Some((
            Arc::clone(json),
            if last_use {
                std::mem::take(entry)
            } else {
                entry.clone()
            },
        )),
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

    if target.beside_mco {
        // The MCO's MachineConfig already carries what the registry lists alone give, so
        // ours exists only while a policy has a scope to write; revert = delete ours.
        let entry = policy_file
            .filter(|_| !scope_map.is_empty())
            .map(|(json, entry)| {
                plan.policy_json = Some(json);
                entry
            });
        let existing = find_mc(mcs, &reg_ip_name);
        let desired = entry.map(|file| own_machine_config(existing, &reg_ip_name, &name, file));
        plan.changes.extend(change(&reg_ip_name, existing, desired));
    } else {
        plan.policy_json = policy_file.as_ref().map(|(json, _)| Arc::clone(json));
        let existing_reg = find_mc(mcs, &reg_name);
        let desired_reg = match (policy_file, existing_reg) {
            (Some((_, entry)), Some(existing)) => {
                let mut mc = existing.clone();
                ignition::set_file(&mut mc.spec.config, entry);
                Some(mc)
            }
            (Some((_, entry)), None) => Some(new_machine_config(&reg_name, &name, entry)),
            (None, Some(existing)) => {
                let mut mc = existing.clone();
                ignition::remove_file(&mut mc.spec.config, POLICY_JSON_PATH);
                (!(is_ours(&mc) && mc.files().is_empty())).then_some(mc)
            }
            (None, None) => None,
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
        .map(|file| own_machine_config(existing_ip, &ip_name, &name, file.clone()));
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

/// Carries our label.
pub fn is_ours(mc: &MachineConfig) -> bool {
    mc.metadata.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// A MachineConfig of ours holding exactly one file: the existing one with that file in
/// place (so fields set by others survive), or a new one.
fn own_machine_config(
    existing: Option<&MachineConfig>,
    name: &str,
    pool: &str,
    file: IgnitionFile,
) -> MachineConfig {
    match existing {
        Some(existing) => {
            let mut mc = existing.clone();
            let storage = mc.spec.config.storage.get_or_insert_with(Default::default);
            storage.files = Some(vec![file]);
            mc
        }
        None => new_machine_config(name, pool, file),
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

fn new_machine_config(name: &str, pool: &str, file: IgnitionFile) -> MachineConfig {
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
            config: ignition::new_config(vec![file]),
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

/// What a pool's nodes get at `path`: the pool's MachineConfigs merged as the MCO's
/// render controller merges them, the last one naming the path winning. A custom pool
/// takes the `worker` role's MachineConfigs first, then its own, each group by name
/// (mco-behavior.md §6). Returns the MachineConfig and the contents; `None` where no
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
