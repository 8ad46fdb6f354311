//! ClusterImagePolicy validation: every rule of the CRD for the object's version, then
//! what the CRD cannot see (whether keys parse, payload repositories, the Image CR's
//! registry lists, MachineConfig size). All problems are returned at once.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::cluster::ClusterFacts;
use crate::keys;
use crate::model::{
    Capped, CipVersion, ClusterImagePolicy, FulcioSpec, ImagePolicy, PkiSpec, PolicyKind,
    PublicKeySpec, RootOfTrust, SignedIdentitySpec,
};
use crate::policy::decode_b64;
use crate::rules;
use crate::scope::{self, PayloadHit};

pub use crate::model::{MAX_REGISTRIES, MAX_SCOPES};
pub const MAX_SCOPE_LEN: usize = 512;
pub const MAX_KEY_LEN: usize = 8192;
pub const POLICY_TYPES: [&str; 3] = ["PublicKey", "FulcioCAWithRekor", "PKI"];
pub const MATCH_POLICIES: [&str; 4] = [
    "MatchRepoDigestOrExact",
    "MatchRepository",
    "ExactRepository",
    "RemapIdentity",
];

/// Why a policy cannot take (full) effect; also the `Pending` condition reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Reason {
    Invalid,
    InvalidKey,
    PayloadRepository,
    ConflictScopes,
    TooLarge,
    ReservedName,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "Invalid",
            Reason::InvalidKey => "InvalidKey",
            Reason::PayloadRepository => "PayloadRepository",
            Reason::ConflictScopes => "ConflictScopes",
            Reason::TooLarge => "TooLarge",
            Reason::ReservedName => "ReservedName",
        }
    }
}

/// Which check found a problem: the CRD's structural schema, one of its CEL rules (by the
/// ids this crate gives the `x-kubernetes-validations` of openshift/api's CRDs, in their
/// order: S1–S3 on scopes, U1–U3 the policyType unions, …), or a check beyond the CRD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A field of the wrong JSON type.
    Type,
    Required,
    /// A value outside an enum.
    Unsupported,
    /// An apiVersion or kind this is not about (the API server would route it elsewhere,
    /// so its schema never sees it).
    Kind,
    TooLong,
    TooShort,
    TooMany,
    Duplicate,
    /// `format: byte` that is not base64.
    Format,
    /// An `x-kubernetes-validations` rule (S1, U1, K1, …).
    Cel(&'static str),
    /// The API server's note that schema errors kept the CEL rules from running.
    CelNotChecked,
    UnknownField,
    NoScopes,
    KeyParse,
    PayloadRepository,
    ConflictScopes,
    TooLarge,
    ReservedName,
    ImageConfig,
    /// A scope the other kind of policy governs (an ImagePolicy scope inside a
    /// ClusterImagePolicy's: only the cluster policy applies).
    Precedence,
    /// A scope the MCO refuses because it allowed only the mirrored payload repository.
    MirroredPayload,
    /// A `keyData` with more than one PEM block: the nodes use the first.
    ExtraKeys,
    /// Another policy of the same kind has this scope: both must pass on the nodes.
    SharedScope,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Type => "Type",
            Rule::Required => "Required",
            Rule::Unsupported => "Unsupported",
            Rule::Kind => "Kind",
            Rule::TooLong => "TooLong",
            Rule::TooShort => "TooShort",
            Rule::TooMany => "TooMany",
            Rule::Duplicate => "Duplicate",
            Rule::Format => "Format",
            Rule::Cel(id) => id,
            Rule::CelNotChecked => "CelNotChecked",
            Rule::UnknownField => "UnknownField",
            Rule::NoScopes => "NoScopes",
            Rule::KeyParse => "KeyParse",
            Rule::ExtraKeys => "ExtraKeys",
            Rule::SharedScope => "SharedScope",
            Rule::PayloadRepository => "PayloadRepository",
            Rule::ConflictScopes => "ConflictScopes",
            Rule::TooLarge => "TooLarge",
            Rule::ReservedName => "ReservedName",
            Rule::ImageConfig => "ImageConfig",
            Rule::Precedence => "Precedence",
            Rule::MirroredPayload => "MirroredPayload",
        }
    }

    /// Schema errors after which the API server does not run the CEL rules
    /// (apiextensions-apiserver's `hasBlockingErr`).
    pub fn blocks_cel(self) -> bool {
        matches!(
            self,
            Rule::Type | Rule::Required | Rule::Unsupported | Rule::TooLong | Rule::TooMany
        )
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// The most problems a denial message, a warning list or a log line carries; the rest
/// are counted (`… and N more`). A 100,000-scope review must not make a 200 MB answer.
pub const MAX_REPORTED: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Field path as the API server writes it, e.g. `spec.scopes[0]`.
    pub path: String,
    pub message: String,
    pub rule: Rule,
    pub reason: Reason,
    /// The value the problem is about where a path would not identify it across an
    /// update (a scope moves when another is added before it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The message names its subject itself (MCO's wording), so the path is not prefixed.
    #[serde(skip)]
    pub standalone: bool,
}

impl Problem {
    /// The same problem in an older version of the object: same rule and message, and
    /// the same subject where there is one, else the same path.
    fn same_as(&self, other: &Problem) -> bool {
        self.rule == other.rule
            && self.message == other.message
            && match (&self.subject, &other.subject) {
                (Some(a), Some(b)) => a == b,
                _ => self.path == other.path,
            }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.standalone || self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Problems worth a word but not a denial, as they were made of them.
pub const ALREADY_SO: &str = " (already so before this update, so not denied)";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    pub fn allowed(&self) -> bool {
        self.errors.is_empty()
    }

    /// The admission denial text: one problem as is, several as the API server
    /// aggregates them (`[e1, e2]`), at most [`MAX_REPORTED`].
    pub fn denial_message(&self) -> Option<String> {
        match self.errors.as_slice() {
            [] => None,
            [one] => Some(one.to_string()),
            many => Some(format!("[{}]", capped(many).join(", "))),
        }
    }

    /// At most [`MAX_REPORTED`], the last one counting the rest.
    pub fn warning_messages(&self) -> Vec<String> {
        capped(&self.warnings)
    }

    /// The error messages one by one, at most [`MAX_REPORTED`].
    pub fn error_messages(&self) -> Vec<String> {
        capped(&self.errors)
    }

    /// The reason of the first error, for a `Pending` condition.
    pub fn reason(&self) -> Option<Reason> {
        self.errors.first().map(|p| p.reason)
    }

    /// Judges an UPDATE: a problem the old object had already is a warning, as the API
    /// server ratchets fields an update leaves unchanged; only new ones deny.
    pub fn ratcheted(mut self, old: &Report) -> Report {
        let (kept, old_ones): (Vec<Problem>, Vec<Problem>) = std::mem::take(&mut self.errors)
            .into_iter()
            .partition(|p| !old.errors.iter().any(|o| p.same_as(o)));
        self.errors = kept;
        for mut p in old_ones {
            p.message.push_str(ALREADY_SO);
            self.warnings.push(p);
        }
        self
    }

    /// For users who may do anything (the cluster-version operator shipping the
    /// platform's own policy): every denial becomes a warning.
    pub fn exempted(mut self) -> Report {
        let errors = std::mem::take(&mut self.errors);
        self.warnings.splice(0..0, errors);
        self
    }
}

fn capped(problems: &[Problem]) -> Vec<String> {
    let mut out: Vec<String> = problems
        .iter()
        .take(MAX_REPORTED)
        .map(ToString::to_string)
        .collect();
    if problems.len() > MAX_REPORTED {
        out.push(format!("… and {} more", problems.len() - MAX_REPORTED));
    }
    out
}

/// How much room the generated MachineConfigs have left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SizeCheck {
    /// The largest generated MachineConfig without the policy under review.
    pub machine_config: String,
    pub current_bytes: usize,
    pub budget_bytes: usize,
    /// Namespaces that have a policy file: a new CIP grows each of them too.
    #[serde(skip)]
    pub namespaces: std::collections::BTreeSet<String>,
    /// About what a new namespace's file costs: a copy of the cluster's policy.json.
    #[serde(skip)]
    pub new_namespace_bytes: usize,
    /// The oldest policy held back by the budget: a new one would wait behind it.
    #[serde(skip)]
    pub held_back: Option<String>,
}

impl SizeCheck {
    /// About how much `policy` adds to the MachineConfig: a ClusterImagePolicy's
    /// requirements go into policy.json and every namespace's file; an ImagePolicy's into
    /// its namespace's file, which is a copy of policy.json when it is new.
    pub fn growth(&self, policy: &ClusterImagePolicy) -> usize {
        let own = crate::policy_json::estimated_growth(policy);
        match policy.policy_kind() {
            PolicyKind::Cluster => own * (1 + self.namespaces.len()),
            PolicyKind::Namespaced if self.namespaces.contains(policy.namespace()) => own,
            PolicyKind::Namespaced => own + self.new_namespace_bytes,
        }
    }
}

/// What validation knows beyond the object itself.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub facts: &'a ClusterFacts,
    pub size: Option<&'a SizeCheck>,
    /// The requester may configure payload repositories (gets warnings, not denials).
    pub exempt: bool,
    /// The cluster's ClusterImagePolicies: an ImagePolicy scope inside one of theirs does
    /// not apply (the MCO's precedence).
    pub cluster_policies: &'a [Arc<ClusterImagePolicy>],
    /// The cluster's ImagePolicies: a new cluster scope over theirs overrides them.
    pub image_policies: &'a [Arc<ImagePolicy>],
    /// The MCO renders policies here: what its sync would fail on is denied.
    pub mco_renders: bool,
}

impl<'a> Context<'a> {
    /// Nothing known beyond the cluster facts.
    pub fn new(facts: &'a ClusterFacts) -> Context<'a> {
        Context {
            facts,
            size: None,
            exempt: false,
            cluster_policies: &[],
            image_policies: &[],
            mco_renders: false,
        }
    }
}

/// Decodes and validates a raw object; a field of the wrong JSON type is reported
/// with its path instead of failing the whole decode silently.
pub fn validate_value(object: &Value, ctx: &Context) -> (Option<ClusterImagePolicy>, Report) {
    decoded(serde_path_to_error::deserialize(object), ctx)
}

/// [`validate_value`] on JSON text, as the webhook receives it: decoded straight into the
/// model, without a `Value` in between. The report is the same.
pub fn validate_json(text: &str, ctx: &Context) -> (Option<ClusterImagePolicy>, Report) {
    // Tracking the path costs a fifth of an admission decision: only a failed decode is
    // decoded again for it.
    if let Ok(cip) = serde_json::from_str::<ClusterImagePolicy>(text) {
        return decoded(Ok(cip), ctx);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    decoded(serde_path_to_error::deserialize(&mut de), ctx)
}

fn decoded(
    result: Result<ClusterImagePolicy, serde_path_to_error::Error<serde_json::Error>>,
    ctx: &Context,
) -> (Option<ClusterImagePolicy>, Report) {
    match result {
        Ok(cip) => {
            let report = validate(&cip, ctx);
            (Some(cip), report)
        }
        Err(e) => {
            let mut report = Report::default();
            let path = e.path().to_string();
            report.errors.push(Problem {
                path: if path == "." { String::new() } else { path },
                message: format!("Invalid value: {}", without_position(e.inner())),
                rule: Rule::Type,
                reason: Reason::Invalid,
                subject: None,
                standalone: false,
            });
            (None, report)
        }
    }
}

/// The error without serde_json's ` at line L column C`: the field path says where,
/// and a position in the request body means nothing to the person who wrote the YAML.
/// Clipped: serde quotes the offending value, which can be megabytes long.
pub fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let bare = match text.strip_suffix(&suffix) {
        Some(bare) if e.line() > 0 => bare.to_string(),
        _ => text,
    };
    clip(&bare, MAX_ECHOED)
}

pub use crate::text::{clip, MAX_ECHOED};

/// A requester's value quoted in a message, clipped to [`MAX_ECHOED`].
fn echo(v: &str) -> String {
    format!("{:?}", clip(v, MAX_ECHOED))
}

/// Every rule: the object's own (see [`validate_object`]) plus the cluster context.
/// For an exempt requester every denial is a warning.
pub fn validate(cip: &ClusterImagePolicy, ctx: &Context) -> Report {
    let kind = cip.policy_kind();
    let who = kind.mco_name();
    let mut w = walk(cip);
    let rules_pass = std::mem::take(&mut w.scope_rules_pass);
    for (i, (s, pass)) in cip.scopes().iter().zip(rules_pass).enumerate() {
        if !pass {
            continue;
        }
        let path = format!("spec.scopes[{i}]");
        if let Some((repo, hit)) = ctx.facts.payload_hit(s) {
            let how = match hit {
                PayloadHit::Covers => "covers",
                PayloadHit::Inside => "is inside",
            };
            let message = format!(
                "{who} configured for the scope {s} {how} the OpenShift release payload repository {repo}, whose signatures the platform verifies"
            );
            w.ours(
                &path,
                Rule::PayloadRepository,
                Reason::PayloadRepository,
                message,
                Some(s),
            );
        }
        if let Some(message) = ctx.facts.registry_conflict(s, kind) {
            w.ours(
                &path,
                Rule::ConflictScopes,
                Reason::ConflictScopes,
                message,
                Some(s),
            );
        } else if let Some(message) = ctx.facts.mco_refusal(s, kind) {
            // Only the MCO fails on this; where we render, it is written.
            let severity = if ctx.mco_renders {
                Severity::Error
            } else {
                Severity::Warning
            };
            let message = if ctx.mco_renders {
                message
            } else {
                format!("{message}; admitted because cip-webhook renders policies on this cluster")
            };
            w.push(
                severity,
                &path,
                Rule::MirroredPayload,
                Reason::ConflictScopes,
                message,
                true,
                Some(s),
            );
        }
        precedence(&mut w, cip, &path, s, ctx);
        shared_scope(&mut w, cip, &path, s, ctx);
    }
    if let Some(size) = ctx.size {
        let total = size.current_bytes + size.growth(cip);
        let me = format!("{} {}", kind.as_str(), cip.key());
        let over = match size.held_back.as_ref().filter(|f| **f != me) {
            Some(first) => Some(format!(
                "the size budget of MachineConfig {} holds back {first} already, and newer policies wait behind it (oldest first): this one would not be written; make room or shrink {first} first",
                size.machine_config
            )),
            None => (total > size.budget_bytes).then(|| {
                format!(
                    "adding this policy would grow MachineConfig {} to about {} bytes ({:.2} MiB), over the budget of {} bytes",
                    size.machine_config,
                    total,
                    total as f64 / (1024.0 * 1024.0),
                    size.budget_bytes
                )
            }),
        };
        if let Some(message) = over {
            w.push(
                Severity::Error,
                "spec",
                Rule::TooLarge,
                Reason::TooLarge,
                message,
                false,
                None,
            );
        }
    }
    if ctx.exempt {
        w.report.exempted()
    } else {
        w.report
    }
}

/// The MCO's precedence (`getValidScopePolicies`, `helpers.go`): an ImagePolicy scope equal to or nested inside a
/// ClusterImagePolicy scope is dropped; only the cluster policy applies to those images.
/// Both sides are told, with a warning.
fn precedence(w: &mut Walker, policy: &ClusterImagePolicy, path: &str, scope: &str, ctx: &Context) {
    let (others, kind) = match policy.policy_kind() {
        PolicyKind::Namespaced => (ctx.cluster_policies, PolicyKind::Cluster),
        PolicyKind::Cluster => (ctx.image_policies, PolicyKind::Namespaced),
    };
    for other in others {
        if other.key() == policy.key() && kind == policy.policy_kind() {
            continue;
        }
        for theirs in other.scopes() {
            let message = match kind {
                PolicyKind::Cluster if scope::is_nested(scope, theirs) => format!(
                    "scope {scope} is equal to or nested inside scope {theirs} of ClusterImagePolicy {}: only the cluster policy applies to these images, this one is dropped for them",
                    other.metadata.name
                ),
                PolicyKind::Namespaced if scope::is_nested(theirs, scope) => format!(
                    "scope {theirs} of ImagePolicy {} is equal to or nested inside this scope: only this policy will apply to those images, the namespace's policy is dropped for them",
                    other.key()
                ),
                _ => continue,
            };
            w.push(
                Severity::Warning,
                path,
                Rule::Precedence,
                Reason::ConflictScopes,
                message,
                false,
                Some(scope),
            );
            if w.report.warnings.len() > MAX_REPORTED {
                return;
            }
        }
    }
}

/// Policies of one kind with the same scope (ImagePolicies: in one namespace) write one
/// policy.json entry holding the requirements of both, and containers/image requires every
/// requirement of an entry (signature/policy_eval.go): an image then needs a signature
/// each of them accepts. Said with a warning, naming the other policies.
fn shared_scope(
    w: &mut Walker,
    policy: &ClusterImagePolicy,
    path: &str,
    scope: &str,
    ctx: &Context,
) {
    let kind = policy.policy_kind();
    let others: Vec<String> = match kind {
        PolicyKind::Cluster => ctx
            .cluster_policies
            .iter()
            .filter(|o| o.metadata.name != policy.metadata.name)
            .filter(|o| o.scopes().iter().any(|s| s == scope))
            .map(|o| format!("ClusterImagePolicy {}", o.metadata.name))
            .collect(),
        PolicyKind::Namespaced => ctx
            .image_policies
            .iter()
            .filter(|o| {
                o.namespace() == policy.namespace() && o.metadata.name != policy.metadata.name
            })
            .filter(|o| o.scopes().iter().any(|s| s == scope))
            .map(|o| format!("ImagePolicy {}", o.key()))
            .collect(),
    };
    if others.is_empty() {
        return;
    }
    let message = format!(
        "scope {scope} is also a scope of {}: on the nodes both policies' requirements must pass, so an image needs a signature each of them accepts; for a key rotation, sign with both keys while both policies exist, or keep one policy per scope",
        others.join(", ")
    );
    w.push(
        Severity::Warning,
        path,
        Rule::SharedScope,
        Reason::ConflictScopes,
        message,
        false,
        Some(scope),
    );
}

/// The rules that need nothing but the object: the CRD schema and CEL rules of its
/// version, unknown `policyType`, and whether the key material parses.
pub fn validate_object(cip: &ClusterImagePolicy) -> Report {
    walk(cip).report
}

/// The API server's answer to a name reserved for the platform (openshift/api's
/// ClusterImagePolicy: names beginning with `openshift` are for system use; the cluster-version operator ships
/// `openshift`). Whoever may write them is exempt and never asks.
pub fn reserved_name(name: &str) -> Option<Problem> {
    name.starts_with("openshift").then(|| Problem {
        path: "metadata.name".into(),
        message: format!(
            "Forbidden: {:?} is reserved for the platform: names beginning with \"openshift\" belong to policies the cluster-version operator ships",
            clip(name, 253)
        ),
        rule: Rule::ReservedName,
        reason: Reason::ReservedName,
        subject: None,
        standalone: false,
    })
}

const CEL_NOT_CHECKED: &str = "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

fn walk(cip: &ClusterImagePolicy) -> Walker {
    let mut w = Walker {
        version: cip.version().unwrap_or(CipVersion::V1),
        report: Report::default(),
        scope_rules_pass: Vec::new(),
    };
    w.object(cip);
    // As the API server: after a type, required, enum or size error the CEL rules do not
    // run, and it says so.
    if w.report.errors.iter().any(|p| p.rule.blocks_cel()) {
        w.report.errors.retain(|p| !matches!(p.rule, Rule::Cel(_)));
        w.error("<nil>", Rule::CelNotChecked, CEL_NOT_CHECKED.into());
        w.scope_rules_pass.iter_mut().for_each(|p| *p = false);
    }
    w
}

/// Collects problems for one object; the version decides which CRD rules apply.
struct Walker {
    version: CipVersion,
    report: Report,
    /// Per scope of `cip.scopes()`, whether it passed the CRD's scope rules: the cluster
    /// checks skip the ones that did not, without running the rules twice.
    scope_rules_pass: Vec<bool>,
}

#[derive(Clone, Copy, PartialEq)]
enum Material {
    PublicKey,
    Certificates,
}

impl Walker {
    fn object(&mut self, cip: &ClusterImagePolicy) {
        if cip.version().is_none() {
            self.error(
                "apiVersion",
                Rule::Kind,
                format!(
                    "Unsupported value: {}: supported values: \"config.openshift.io/v1\", \"config.openshift.io/v1alpha1\"",
                    echo(&cip.api_version)
                ),
            );
        }
        if PolicyKind::from_kind(&cip.kind).is_none() {
            self.error(
                "kind",
                Rule::Kind,
                format!(
                    "Unsupported value: {}: supported values: \"ClusterImagePolicy\"",
                    echo(&cip.kind)
                ),
            );
        }
        if cip.metadata.name.is_empty() {
            self.error("metadata.name", Rule::Required, "Required value".into());
        }
        let Some(spec) = &cip.spec else {
            self.error("spec", Rule::Required, "Required value".into());
            return;
        };
        self.unknown("spec", &spec.unknown);
        match &spec.scopes {
            None => self.error("spec.scopes", Rule::Required, "Required value".into()),
            Some(scopes) => self.scopes(scopes),
        }
        let Some(policy) = &spec.policy else {
            self.error("spec.policy", Rule::Required, "Required value".into());
            return;
        };
        self.unknown("spec.policy", &policy.unknown);
        match &policy.root_of_trust {
            None => self.error(
                "spec.policy.rootOfTrust",
                Rule::Required,
                "Required value".into(),
            ),
            Some(rot) => self.root_of_trust(rot),
        }
        if let Some(si) = &policy.signed_identity {
            self.signed_identity(si);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        severity: Severity,
        path: &str,
        rule: Rule,
        reason: Reason,
        message: String,
        standalone: bool,
        subject: Option<&str>,
    ) {
        let problem = Problem {
            path: path.to_string(),
            message,
            rule,
            reason,
            subject: subject.map(str::to_string),
            standalone,
        };
        match severity {
            Severity::Error => self.report.errors.push(problem),
            Severity::Warning => self.report.warnings.push(problem),
        }
    }

    fn error(&mut self, path: &str, rule: Rule, message: String) {
        self.push(
            Severity::Error,
            path,
            rule,
            Reason::Invalid,
            message,
            false,
            None,
        );
    }

    fn warn(&mut self, path: &str, rule: Rule, message: String) {
        self.push(
            Severity::Warning,
            path,
            rule,
            Reason::Invalid,
            message,
            false,
            None,
        );
    }

    /// A check beyond the CRD whose message (MCO's wording) names its subject.
    fn ours(
        &mut self,
        path: &str,
        rule: Rule,
        reason: Reason,
        message: String,
        subject: Option<&str>,
    ) {
        self.push(Severity::Error, path, rule, reason, message, true, subject);
    }

    /// A failed CEL rule, worded as the API server words it.
    fn cel(&mut self, path: &str, rule: &'static str, kind: &str, message: &str) {
        self.error(
            path,
            Rule::Cel(rule),
            format!("Invalid value: \"{kind}\": {message}"),
        );
    }

    fn v1(&self) -> bool {
        self.version == CipVersion::V1
    }

    fn unknown(&mut self, path: &str, fields: &Map<String, Value>) {
        for key in fields.keys() {
            self.warn(
                &format!("{path}.{key}"),
                Rule::UnknownField,
                "unknown field, the API server drops it".into(),
            );
        }
    }

    fn required<'v, T>(&mut self, path: &str, value: &'v Option<T>) -> Option<&'v T> {
        if value.is_none() {
            self.error(path, Rule::Required, "Required value".into());
        }
        value.as_ref()
    }

    fn max_len(&mut self, path: &str, value: &str, max: usize) -> bool {
        if value.len() > max {
            self.error(
                path,
                Rule::TooLong,
                format!("Too long: may not be more than {max} bytes"),
            );
            return false;
        }
        true
    }

    /// Items past the CRD's 256 are not checked one by one: the list is refused for its
    /// length anyway, and a review of 100,000 scopes must cost no more than one of 256.
    fn scopes(&mut self, scopes: &Capped<MAX_SCOPES>) {
        if scopes.total() > MAX_SCOPES {
            self.error(
                "spec.scopes",
                Rule::TooMany,
                format!(
                    "Too many: {}: must have at most {MAX_SCOPES} items",
                    scopes.total()
                ),
            );
        }
        if scopes.is_empty() {
            self.warn(
                "spec.scopes",
                Rule::NoScopes,
                "no scopes: the policy applies to no image".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in scopes.iter().enumerate().take(MAX_SCOPES) {
            let path = format!("spec.scopes[{i}]");
            if !seen.insert(s.as_str()) {
                self.error(
                    &path,
                    Rule::Duplicate,
                    format!("Duplicate value: {}", echo(s)),
                );
            }
            let failures = scope::scope_rule_failures(s);
            self.scope_rules_pass
                .push(failures.is_empty() && s.len() <= MAX_SCOPE_LEN);
            if !self.max_len(&path, s, MAX_SCOPE_LEN) {
                continue;
            }
            for rule in failures {
                let message = format!("Invalid value: \"string\": {}", rule.message());
                self.push(
                    Severity::Error,
                    &path,
                    Rule::Cel(rule.id()),
                    Reason::Invalid,
                    message,
                    false,
                    Some(s),
                );
            }
        }
    }

    fn root_of_trust(&mut self, rot: &RootOfTrust) {
        const P: &str = "spec.policy.rootOfTrust";
        self.unknown(P, &rot.unknown);
        let policy_type = rot.policy_type.as_deref();
        match policy_type {
            None => self.error(&format!("{P}.policyType"), Rule::Required, "Required value".into()),
            Some(t) if !POLICY_TYPES.contains(&t) => self.error(
                &format!("{P}.policyType"),
                Rule::Unsupported,
                format!("Unsupported value: {}: supported values: \"PublicKey\", \"FulcioCAWithRekor\", \"PKI\"", echo(t)),
            ),
            Some(_) => {}
        }
        let unions = [
            ("U1", "PublicKey", "publicKey", rot.public_key.is_some()),
            (
                "U2",
                "FulcioCAWithRekor",
                "fulcioCAWithRekor",
                rot.fulcio_ca_with_rekor.is_some(),
            ),
            ("U3", "PKI", "pki", rot.pki.is_some()),
        ];
        for (rule, ty, field, present) in unions {
            if (policy_type == Some(ty)) != present {
                let message =
                    format!("{field} is required when policyType is {ty}, and forbidden otherwise");
                self.cel(P, rule, "object", &message);
            }
        }
        if let Some(pk) = &rot.public_key {
            self.public_key(pk);
        }
        if let Some(f) = &rot.fulcio_ca_with_rekor {
            self.fulcio(f);
        }
        if let Some(pki) = &rot.pki {
            self.pki(pki);
        }
    }

    fn public_key(&mut self, pk: &PublicKeySpec) {
        const P: &str = "spec.policy.rootOfTrust.publicKey";
        self.unknown(P, &pk.unknown);
        if let Some(key) = self.required(&format!("{P}.keyData"), &pk.key_data) {
            self.key_material(
                P,
                "keyData",
                key,
                Material::PublicKey,
                Some(68),
                ["K1", "K2", ""],
            );
        }
        if let Some(rekor) = &pk.rekor_key_data {
            self.rekor_key(P, rekor);
        }
    }

    fn fulcio(&mut self, f: &FulcioSpec) {
        const P: &str = "spec.policy.rootOfTrust.fulcioCAWithRekor";
        self.unknown(P, &f.unknown);
        if let Some(ca) = self.required(&format!("{P}.fulcioCAData"), &f.fulcio_ca_data) {
            self.key_material(
                P,
                "fulcioCAData",
                ca,
                Material::Certificates,
                None,
                ["C1", "C2", ""],
            );
        }
        if let Some(rekor) = self.required(&format!("{P}.rekorKeyData"), &f.rekor_key_data) {
            self.rekor_key(P, rekor);
        }
        let Some(subject) = self.required(&format!("{P}.fulcioSubject"), &f.fulcio_subject) else {
            return;
        };
        self.unknown(&format!("{P}.fulcioSubject"), &subject.unknown);
        let issuer_path = format!("{P}.fulcioSubject.oidcIssuer");
        if let Some(issuer) = self.required(&issuer_path, &subject.oidc_issuer) {
            if (!self.v1() || self.max_len(&issuer_path, issuer, 2048))
                && !rules::is_request_uri(issuer)
            {
                self.cel(
                    &issuer_path,
                    "F1",
                    "string",
                    "oidcIssuer must be a valid URL",
                );
            }
        }
        let email_path = format!("{P}.fulcioSubject.signedEmail");
        if let Some(email) = self.required(&email_path, &subject.signed_email) {
            if (!self.v1() || self.max_len(&email_path, email, 320)) && !rules::is_email(email) {
                self.cel(&email_path, "E1", "string", "invalid email address");
            }
        }
    }

    fn pki(&mut self, pki: &PkiSpec) {
        const P: &str = "spec.policy.rootOfTrust.pki";
        self.unknown(P, &pki.unknown);
        if let Some(roots) = self.required(&format!("{P}.caRootsData"), &pki.ca_roots_data) {
            self.key_material(
                P,
                "caRootsData",
                roots,
                Material::Certificates,
                Some(72),
                ["CR1", "CR2", "CR3"],
            );
        }
        if let Some(inter) = &pki.ca_intermediates_data {
            let ids = ["CI1", "CI2", "CI3"];
            self.key_material(
                P,
                "caIntermediatesData",
                inter,
                Material::Certificates,
                Some(72),
                ids,
            );
        }
        let subject_path = format!("{P}.pkiCertificateSubject");
        let Some(subject) = self.required(&subject_path, &pki.pki_certificate_subject) else {
            return;
        };
        self.unknown(&subject_path, &subject.unknown);
        if subject.email.is_none() && subject.hostname.is_none() {
            self.cel(
                &subject_path,
                "PS1",
                "object",
                "at least one of email or hostname must be set in pkiCertificateSubject",
            );
        }
        if let Some(email) = &subject.email {
            let path = format!("{subject_path}.email");
            if self.max_len(&path, email, 320) && !rules::is_email(email) {
                let message = if self.v1() {
                    "invalid email address"
                } else {
                    "invalid email address in pkiCertificateSubject"
                };
                self.cel(&path, "E1", "string", message);
            }
        }
        if let Some(host) = &subject.hostname {
            let path = format!("{subject_path}.hostname");
            if self.max_len(&path, host, 253) && !rules::is_pki_hostname(host) {
                let message = if self.v1() {
                    "hostname must be a valid dns 1123 subdomain name, optionally prefixed by '*.'. It must consist only of lowercase alphanumeric characters, hyphens, periods and the optional preceding asterisk."
                } else {
                    "hostname should be a valid dns 1123 subdomain name, optionally prefixed by '*.'. It should consist only of lowercase alphanumeric characters, hyphens, periods and the optional preceding asterisk."
                };
                self.cel(&path, "H1", "string", message);
            }
        }
    }

    /// `rekorKeyData`, optional under publicKey and required under fulcioCAWithRekor.
    fn rekor_key(&mut self, parent: &str, value: &str) {
        self.key_material(
            parent,
            "rekorKeyData",
            value,
            Material::PublicKey,
            None,
            ["R1", "R2", ""],
        );
    }

    /// A `format: byte` field holding PEM: base64, lengths, the marker rules (v1),
    /// then whether the PEM parses (an error for v1, a warning for v1alpha1).
    fn key_material(
        &mut self,
        parent: &str,
        field: &str,
        b64: &str,
        material: Material,
        min_v1: Option<usize>,
        ids: [&'static str; 3],
    ) {
        let path = &format!("{parent}.{field}");
        let Ok(bytes) = decode_b64(b64) else {
            self.error(
                path,
                Rule::Format,
                format!(
                    "Invalid value: {}: {path} in body must be of type byte: {}",
                    shown(b64),
                    shown(b64)
                ),
            );
            return;
        };
        if !self.max_len(path, b64, MAX_KEY_LEN) {
            return;
        }
        let label = match material {
            Material::PublicKey => "PUBLIC KEY",
            Material::Certificates => "CERTIFICATE",
        };
        let mut markers_ok = true;
        if self.v1() {
            if let Some(min) = min_v1.filter(|&m| b64.len() < m) {
                self.error(
                    path,
                    Rule::TooShort,
                    format!(
                        "Invalid value: {}: {path} in body should be at least {min} chars long",
                        shown(b64)
                    ),
                );
                markers_ok = false;
            }
        }
        // v1 checks the PEM markers of every field; the last v1alpha1 CRDs only those of
        // the PKI bundles (the rules with a marker-count check).
        if self.v1() || !ids[2].is_empty() {
            let Ok(text) = std::str::from_utf8(&bytes) else {
                self.cel(path, ids[0], "string", "decoded data is not valid UTF-8");
                return;
            };
            let (starts, ends, balanced) = rules::pem_markers(text, label);
            if !starts {
                self.cel(
                    path,
                    ids[0],
                    "string",
                    &format!(
                        "the {field} must start with base64 encoding of '-----BEGIN {label}-----'."
                    ),
                );
            }
            if !ends {
                self.cel(
                    path,
                    ids[1],
                    "string",
                    &format!(
                        "the {field} must end with base64 encoding of '-----END {label}-----'."
                    ),
                );
            }
            if !ids[2].is_empty() && !balanced {
                let message = format!(
                    "{field} must be base64 encoding of valid PEM format data contain the same number of '-----BEGIN {label}-----' and '-----END {label}-----' markers."
                );
                self.cel(path, ids[2], "string", &message);
            }
            markers_ok &= starts && ends && (ids[2].is_empty() || balanced);
        }
        if !markers_ok {
            return;
        }
        let parsed = match material {
            Material::PublicKey => keys::check_public_key(&bytes),
            Material::Certificates => keys::check_certificates(&bytes).map(|_| ()),
        };
        let blocks = keys::pem_blocks(&bytes);
        let problem = match parsed {
            // containers/image reads a keyData with sigstore's UnmarshalPEMToPublicKey
            // (signature/policy_eval_sigstore.go), which decodes the first PEM block only.
            Ok(()) if material == Material::PublicKey && blocks > 1 => Some((
                Rule::ExtraKeys,
                format!(
                    "holds {blocks} PEM blocks and the nodes use only the first: containers/image reads one public key from {field}, so signatures made with the other keys are refused at pull time"
                ),
            )),
            Ok(()) => None,
            Err(cause) => {
                let what = match material {
                    Material::PublicKey => "a PEM public key",
                    Material::Certificates => "PEM certificates",
                };
                Some((Rule::KeyParse, format!("does not decode to {what}: {cause}")))
            }
        };
        if let Some((rule, message)) = problem {
            // The v1alpha1 CRDs admitted such keys: a warning there, never a denial.
            let severity = if self.v1() {
                Severity::Error
            } else {
                Severity::Warning
            };
            self.push(
                severity,
                path,
                rule,
                Reason::InvalidKey,
                message,
                false,
                None,
            );
        }
    }

    fn signed_identity(&mut self, si: &SignedIdentitySpec) {
        const P: &str = "spec.policy.signedIdentity";
        self.unknown(P, &si.unknown);
        let policy = si.match_policy.as_deref();
        match policy {
            None if self.v1() => self.error(&format!("{P}.matchPolicy"), Rule::Required, "Required value".into()),
            None | Some("") if !self.v1() => {}
            Some(p) if MATCH_POLICIES.contains(&p) => {}
            Some(p) => self.error(
                &format!("{P}.matchPolicy"),
                Rule::Unsupported,
                format!(
                    "Unsupported value: {}: supported values: \"MatchRepoDigestOrExact\", \"MatchRepository\", \"ExactRepository\", \"RemapIdentity\"",
                    echo(p)
                ),
            ),
            None => {}
        }
        let unions = [
            (
                "I1",
                "ExactRepository",
                "exactRepository",
                si.exact_repository.is_some(),
            ),
            (
                "I2",
                "RemapIdentity",
                "remapIdentity",
                si.remap_identity.is_some(),
            ),
        ];
        for (rule, mp, field, present) in unions {
            if (policy == Some(mp)) != present {
                let message = format!(
                    "{field} is required when matchPolicy is {mp}, and forbidden otherwise"
                );
                self.cel(P, rule, "object", &message);
            }
        }
        if let Some(exact) = &si.exact_repository {
            self.unknown(&format!("{P}.exactRepository"), &exact.unknown);
            let path = format!("{P}.exactRepository.repository");
            if let Some(repo) = self.required(&path, &exact.repository) {
                self.identity(&path, repo);
            }
        }
        if let Some(remap) = &si.remap_identity {
            self.unknown(&format!("{P}.remapIdentity"), &remap.unknown);
            for (field, value) in [
                ("prefix", &remap.prefix),
                ("signedPrefix", &remap.signed_prefix),
            ] {
                let path = format!("{P}.remapIdentity.{field}");
                if let Some(v) = self.required(&path, value) {
                    self.identity(&path, v);
                }
            }
        }
    }

    fn identity(&mut self, path: &str, value: &str) {
        if !self.max_len(path, value, MAX_SCOPE_LEN) {
            return;
        }
        let (n1, n2) = scope::identity_rules(value);
        if !n1 {
            self.cel(path, "N1", "string", "invalid repository or prefix in the signedIdentity, should not include the tag or digest");
        }
        if !n2 {
            let message = if self.v1() {
                "invalid repository or prefix in the signedIdentity. The repository or prefix must starts with 'localhost' or a valid '.' separated domain. If contains registry paths, the path component names must start with at least one letter or number, with following parts able to be separated by one period, one or two underscore and multiple dashes."
            } else {
                "invalid repository or prefix in the signedIdentity"
            };
            self.cel(path, "N2", "string", message);
        }
    }
}

/// A value for a message, whole as the API server quotes it, cut past [`MAX_ECHOED`]
/// (the server would quote a 8,192-character key in full).
fn shown(v: &str) -> String {
    if v.chars().count() <= MAX_ECHOED {
        format!("{v:?}")
    } else {
        let head: String = v.chars().take(MAX_ECHOED).collect();
        format!("\"{head}…\" ({} characters)", v.chars().count())
    }
}

/// The Image CR guard: an update of `cluster` whose registry lists would conflict
/// with existing policies, each named. Invalid lists are refused as MCO would fail on them.
pub fn validate_image_update<'a>(
    facts: Result<ClusterFacts, crate::cluster::ImageConfigError>,
    policies: impl IntoIterator<Item = &'a ClusterImagePolicy>,
    mco_renders: bool,
) -> Report {
    let mut report = Report::default();
    let facts = match facts {
        Ok(f) => f,
        Err(e) => {
            report.errors.push(Problem {
                path: "spec.registrySources".into(),
                message: e.to_string(),
                rule: Rule::ImageConfig,
                subject: None,
                reason: Reason::Invalid,
                standalone: false,
            });
            return report;
        }
    };
    let mut sorted: Vec<&ClusterImagePolicy> = policies.into_iter().collect();
    sorted.sort_by_cached_key(|p| (p.policy_kind(), p.key()));
    for policy in sorted {
        let kind = policy.policy_kind();
        for s in policy.scopes() {
            if let Some(message) = facts.registry_conflict(s, kind) {
                report.errors.push(Problem {
                    path: "spec.registrySources".into(),
                    message: format!("{message} ({} {})", kind.as_str(), policy.key()),
                    rule: Rule::ConflictScopes,
                    subject: Some(s.clone()),
                    reason: Reason::ConflictScopes,
                    standalone: true,
                });
            } else if let Some(message) = facts.mco_refusal(s, kind) {
                // The same judgement a policy gets: the MCO's whole sync fails where it
                // renders; where we render, the scope is written and this is a warning.
                let problem = Problem {
                    path: "spec.registrySources".into(),
                    message: if mco_renders {
                        format!("{message} ({} {})", kind.as_str(), policy.key())
                    } else {
                        format!(
                            "{message} ({} {}); admitted because cip-webhook renders policies on this cluster",
                            kind.as_str(),
                            policy.key()
                        )
                    },
                    rule: Rule::MirroredPayload,
                    subject: Some(s.clone()),
                    reason: Reason::ConflictScopes,
                    standalone: true,
                };
                if mco_renders {
                    report.errors.push(problem);
                } else {
                    report.warnings.push(problem);
                }
            }
        }
    }
    report
}
