//! AdmissionReview in, AdmissionReview out: decoding, the decision (made by the core),
//! and the response as the API server expects it. No I/O: the HTTPS server and the
//! tests hand it bytes and a snapshot of the cluster.
//!
//! The wire types are written here rather than taken from kube-core because its
//! response writes `patch` as an array of numbers, not the documented base64 string.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use cip_core::cluster::ClusterFacts;
use cip_core::model::{ClusterImagePolicy, Image, PolicyKind, CONFIG_GROUP};
use cip_core::validate::{self, Context, Problem, Report, Rule, SizeCheck};

pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
/// The cluster-version operator ships the platform's own `openshift` policy.
pub const DEFAULT_EXEMPT_USER: &str = "system:serviceaccount:openshift-cluster-version:default";

pub use cip_core::snapshot::Snapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Validate,
    Mutate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageGuard {
    /// Refuse Image updates that conflict with existing policies.
    Deny,
    /// Admit them with a warning naming the policies.
    Warn,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub exempt_users: Vec<String>,
    pub image_guard: ImageGuard,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            exempt_users: vec![DEFAULT_EXEMPT_USER.to_string()],
            image_guard: ImageGuard::Deny,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<Request>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub user_info: UserInfo,
    /// Kept as text: validation decodes it straight into the model.
    #[serde(default)]
    pub object: Option<Box<RawValue>>,
    /// The stored version an UPDATE replaces (DELETE: the object deleted).
    #[serde(default)]
    pub old_object: Option<Box<RawValue>>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: Response,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Base64 of a JSON Patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

/// The request could not be understood at all: HTTP 400, no AdmissionReview.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BadReview {
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "expected apiVersion {REVIEW_API_VERSION} kind AdmissionReview, got {:?} {:?}",
        validate::clip(api_version, 64),
        validate::clip(kind, 64)
    )]
    WrongType { api_version: String, kind: String },
    #[error("AdmissionReview has no request")]
    MissingRequest,
    #[error("AdmissionReview request has no uid")]
    MissingUid,
    #[error("AdmissionReview request uid is {0} bytes long; the API server sends a UUID")]
    UidTooLong(usize),
}

/// What was decided, for the log line and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub uid: String,
    pub kind: String,
    pub name: String,
    pub operation: String,
    pub user: String,
    pub dry_run: bool,
    pub verdict: Verdict,
    /// Why: the first problem's reason when denied, `Warned`/`Patched`/`None` otherwise.
    pub reason: DecisionReason,
    pub message: Option<String>,
}

impl Decision {
    /// What the request counter labels.
    pub fn review(&self) -> crate::metrics::Review<'_> {
        crate::metrics::Review {
            kind: &self.kind,
            operation: &self.operation,
            verdict: self.verdict.as_str(),
            reason: self.reason.as_str(),
        }
    }

    /// Allowed with nothing to say (no warning): counted, not worth an info line.
    pub fn is_routine(&self) -> bool {
        self.verdict == Verdict::Allowed
            && matches!(self.reason, DecisionReason::None | DecisionReason::Patched)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
        }
    }
}

/// The request of an AdmissionReview, with what every answer needs checked: the review's
/// type and a uid to echo.
pub fn parse_request(body: &[u8]) -> Result<Request, BadReview> {
    let review: ReviewIn = serde_json::from_slice(body)
        .map_err(|e| BadReview::NotJson(validate::clip(&e.to_string(), validate::MAX_ECHOED)))?;
    if review.api_version != REVIEW_API_VERSION || review.kind != "AdmissionReview" {
        return Err(BadReview::WrongType {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let request = review.request.ok_or(BadReview::MissingRequest)?;
    if request.uid.is_empty() {
        return Err(BadReview::MissingUid);
    }
    // The uid goes back in the answer: a UUID, not megabytes of it.
    if request.uid.len() > 128 {
        return Err(BadReview::UidTooLong(request.uid.len()));
    }
    Ok(request)
}

/// Decodes one AdmissionReview and answers it.
pub fn review(
    body: &[u8],
    endpoint: Endpoint,
    snapshot: &Snapshot,
    config: &Config,
) -> Result<(ReviewOut, Decision), BadReview> {
    review_with(body, endpoint, snapshot, config, None)
}

/// How long a policy write's running-images preview may take before it says what it has.
pub const PREVIEW_DEADLINE: std::time::Duration = std::time::Duration::from_millis(500);

/// As [`review`], and for an admitted policy write, the running images it would newly
/// refuse, as warnings (never a denial).
pub fn review_with(
    body: &[u8],
    endpoint: Endpoint,
    snapshot: &Snapshot,
    config: &Config,
    preview: Option<&dyn cip_core::running::Preview>,
) -> Result<(ReviewOut, Decision), BadReview> {
    let request = parse_request(body)?;
    let answer = decide(&request, endpoint, snapshot, config);
    let mut response = answer.response(request.uid.clone());
    let kind = (request.kind.group == CONFIG_GROUP)
        .then(|| PolicyKind::from_kind(&request.kind.kind))
        .flatten();
    let writes = matches!(request.operation.as_str(), "CREATE" | "UPDATE");
    let is_image = request.kind.group == CONFIG_GROUP
        && request.kind.kind == "Image"
        && request.name == "cluster";
    if let (Some(preview), Some(object)) = (preview, &request.object) {
        if endpoint == Endpoint::Validate && response.allowed && writes {
            let deadline = std::time::Instant::now() + PREVIEW_DEADLINE;
            let expired = || std::time::Instant::now() >= deadline;
            let warnings = match kind {
                Some(kind) => preview.policy_change(kind, object.get(), &expired),
                None if is_image => preview.image_change(object.get(), &expired),
                None => Vec::new(),
            };
            response.warnings.extend(warnings);
        }
    }
    let decision = Decision {
        uid: request.uid.clone(),
        kind: request.kind.kind.clone(),
        name: request.name.clone(),
        operation: request.operation.clone(),
        user: request.user_info.username.clone(),
        dry_run: request.dry_run.unwrap_or(false),
        verdict: if response.allowed {
            Verdict::Allowed
        } else {
            Verdict::Denied
        },
        reason: answer.reason,
        message: response.status.as_ref().map(|s| s.message.clone()),
    };
    let out = ReviewOut {
        api_version: REVIEW_API_VERSION,
        kind: "AdmissionReview",
        response,
    };
    Ok((out, decision))
}

/// What admission decided about one request, before it is put on the wire (the webhook)
/// or printed (`check`).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Errors deny; warnings go back either way.
    pub report: Report,
    /// The HTTP code and reason of a denial: 403 Forbidden for what the policy says,
    /// 400 BadRequest for a request we cannot judge.
    pub code: u16,
    pub status_reason: &'static str,
    /// A JSON Patch to apply (the mutating endpoint).
    pub patch: Option<Value>,
    /// Why, for the metrics and the log: the first error's reason when denied,
    /// `Warned`/`Patched`/`None` otherwise.
    pub reason: DecisionReason,
}

/// The `reason` label of a decision: a fixed set, so metric series stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionReason {
    /// Denied (or, for an exempt user, warned) for this problem.
    Problem(validate::Reason),
    Warned,
    Patched,
    None,
    /// A kind the webhook configuration should not have sent.
    UnhandledKind,
    /// Not an AdmissionReview we can judge.
    BadRequest,
}

impl DecisionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionReason::Problem(r) => r.as_str(),
            DecisionReason::Warned => "Warned",
            DecisionReason::Patched => "Patched",
            DecisionReason::None => "None",
            DecisionReason::UnhandledKind => "UnhandledKind",
            DecisionReason::BadRequest => "BadRequest",
        }
    }
}

impl Answer {
    fn judged(report: Report) -> Answer {
        let reason = match report.reason() {
            Some(r) => DecisionReason::Problem(r),
            None if report.warnings.is_empty() => DecisionReason::None,
            None => DecisionReason::Warned,
        };
        Answer {
            report,
            code: 403,
            status_reason: "Forbidden",
            patch: None,
            reason,
        }
    }

    fn bad_request(message: String, reason: DecisionReason) -> Answer {
        let mut report = Report::default();
        report.errors.push(Problem {
            path: String::new(),
            message,
            rule: Rule::Type,
            reason: validate::Reason::Invalid,
            subject: None,
            standalone: true,
        });
        Answer {
            report,
            code: 400,
            status_reason: "BadRequest",
            patch: None,
            reason,
        }
    }

    fn allowed() -> Answer {
        Answer::judged(Report::default())
    }

    /// The AdmissionReview response carrying this answer.
    pub fn response(&self, uid: String) -> Response {
        Response {
            uid,
            allowed: self.report.allowed(),
            status: self.report.denial_message().map(|message| Status {
                code: self.code,
                reason: self.status_reason.to_string(),
                message,
            }),
            patch_type: self.patch.as_ref().map(|_| "JSONPatch"),
            patch: self
                .patch
                .as_ref()
                .map(|p| base64::engine::general_purpose::STANDARD.encode(p.to_string())),
            warnings: self.report.warning_messages(),
        }
    }
}

/// The decision for one request: the webhook's and `check`'s alike.
pub fn decide(
    request: &Request,
    endpoint: Endpoint,
    snapshot: &Snapshot,
    config: &Config,
) -> Answer {
    let kind = &request.kind;
    let policy_kind = (kind.group == CONFIG_GROUP)
        .then(|| PolicyKind::from_kind(&kind.kind))
        .flatten();
    let is_policy = policy_kind.is_some();
    let is_image = kind.group == CONFIG_GROUP && kind.kind == "Image";
    if !is_policy && !is_image {
        let message = format!(
            "cip-webhook does not handle {}/{} {}; check the webhook configuration's rules",
            kind.group, kind.version, kind.kind
        );
        return Answer::bad_request(message, DecisionReason::UnhandledKind);
    }
    let operation = request.operation.as_str();
    if !matches!(operation, "CREATE" | "UPDATE" | "DELETE") {
        // Nothing else is registered; an answer to what was never checked must not be
        // an allow.
        let message = format!(
            "cip-webhook does not handle operation {:?}; the webhook configurations send CREATE, UPDATE and DELETE",
            validate::clip(operation, 64)
        );
        return Answer::bad_request(message, DecisionReason::BadRequest);
    }
    let exempt = config.exempt_users.contains(&request.user_info.username);
    if policy_kind == Some(PolicyKind::Cluster) && endpoint == Endpoint::Validate && !exempt {
        // Whoever is not the platform may not create, change or delete its policies.
        if let Some(problem) = validate::reserved_name(&request.name) {
            let mut report = Report::default();
            report.errors.push(problem);
            return Answer::judged(report);
        }
    }
    // Only the `cluster` Image is guarded, and never mutated.
    let writes = matches!(operation, "CREATE" | "UPDATE");
    if !writes || (is_image && (endpoint == Endpoint::Mutate || request.name != "cluster")) {
        return Answer::allowed();
    }
    let Some(object) = request.object.as_ref() else {
        let message = format!("{} {} request has no object", request.operation, kind.kind);
        return Answer::bad_request(message, DecisionReason::BadRequest);
    };
    let old = request
        .old_object
        .as_deref()
        .filter(|_| operation == "UPDATE");
    if is_image {
        return image_update(object, old, snapshot, config, exempt);
    }
    match endpoint {
        Endpoint::Mutate => {
            let patch = serde_json::from_str(object.get())
                .ok()
                .and_then(|object| default_signed_identity(&object));
            let mut answer = Answer::allowed();
            if patch.is_some() {
                answer.reason = DecisionReason::Patched;
            }
            answer.patch = patch;
            answer
        }
        Endpoint::Validate => {
            let facts = snapshot.facts.as_ref().unwrap_or(&snapshot.payload_facts);
            let old_policy: Option<ClusterImagePolicy> =
                old.and_then(|o| serde_json::from_str(o.get()).ok());
            // An update replaces the old version: what it takes of the budget is free.
            let size = match old_policy.as_ref() {
                // Older than whatever waits: its update is judged by bytes alone.
                Some(p) if snapshot.in_force.contains(&p.key()) => SizeCheck {
                    held_back: None,
                    current_bytes: snapshot
                        .size
                        .current_bytes
                        .saturating_sub(snapshot.size.growth(p)),
                    ..snapshot.size.clone()
                },
                _ => snapshot.size.clone(),
            };
            let ctx = Context {
                size: Some(&size),
                cluster_policies: &snapshot.inputs.policies,
                image_policies: &snapshot.inputs.image_policies,
                mco_renders: snapshot.mco_renders,
                ..Context::new(facts)
            };
            let (_, mut report) = validate::validate_json(object.get(), &ctx);
            if let Some(old) = old {
                let (_, before) = validate::validate_json(old.get(), &ctx);
                report = report.ratcheted(&before);
            }
            if exempt {
                report = report.exempted();
            }
            Answer::judged(report)
        }
    }
}

pub use cip_core::model::MAX_REGISTRIES;

/// The Image `cluster` guard. An update that leaves the registry lists alone is never
/// denied (an admin adding `additionalTrustedCA` is not answerable for someone's policy);
/// one that changes them is denied only for the conflicts it creates.
fn image_update(
    object: &RawValue,
    old: Option<&RawValue>,
    snapshot: &Snapshot,
    config: &Config,
    exempt: bool,
) -> Answer {
    let decode = |text: &str| -> Result<Image, String> {
        serde_json::from_str(text).map_err(|e| validate::without_position(&e))
    };
    let image = match decode(object.get()) {
        Ok(i) => i,
        Err(e) => {
            return Answer::bad_request(
                format!("Image does not decode: {e}"),
                DecisionReason::BadRequest,
            )
        }
    };
    let before = old.and_then(|o| decode(o.get()).ok());
    let lists = |i: &Image| {
        let r = &i.spec.registry_sources;
        (r.allowed_registries.clone(), r.blocked_registries.clone())
    };
    if before.as_ref().is_some_and(|b| lists(b) == lists(&image)) {
        return Answer::allowed();
    }
    // The newest Image CRD's own bound (maxItems 1024); it also bounds this guard's work,
    // each entry against each policy scope.
    let sources = &image.spec.registry_sources;
    for (field, list) in [
        ("allowedRegistries", &sources.allowed_registries),
        ("blockedRegistries", &sources.blocked_registries),
    ] {
        if list.total() > MAX_REGISTRIES {
            let mut report = Report::default();
            report.errors.push(Problem {
                path: format!("spec.registrySources.{field}"),
                message: format!(
                    "Too many: {}: must have at most {MAX_REGISTRIES} items",
                    list.total()
                ),
                rule: Rule::TooMany,
                reason: validate::Reason::Invalid,
                subject: None,
                standalone: false,
            });
            return Answer::judged(if exempt { report.exempted() } else { report });
        }
    }
    let guard = |image: &Image| {
        let facts = ClusterFacts::with_mirrors(
            Some(image),
            snapshot.inputs.cluster_version.as_ref(),
            &snapshot.options.extra_payload_repos,
            snapshot.inputs.mirrors(),
        );
        let policies = snapshot
            .inputs
            .policies
            .iter()
            .chain(&snapshot.inputs.image_policies)
            .map(|p| &**p);
        validate::validate_image_update(facts, policies, snapshot.mco_renders)
    };
    let mut report = guard(&image);
    if let Some(before) = &before {
        report = report.ratcheted(&guard(before));
    }
    if exempt || config.image_guard == ImageGuard::Warn {
        report = report.exempted();
    }
    Answer::judged(report)
}

/// The JSON Patch that sets `spec.policy.signedIdentity.matchPolicy` to its documented
/// default when absent or empty; `None` when nothing needs to change.
pub fn default_signed_identity(object: &Value) -> Option<Value> {
    let policy = object.pointer("/spec/policy")?.as_object()?;
    match policy.get("signedIdentity") {
        None | Some(Value::Null) => Some(json!([{
            "op": "add",
            "path": "/spec/policy/signedIdentity",
            "value": {"matchPolicy": "MatchRepoDigestOrExact"}
        }])),
        Some(Value::Object(si)) => match si.get("matchPolicy") {
            None | Some(Value::Null) => Some(json!([{
                "op": "add",
                "path": "/spec/policy/signedIdentity/matchPolicy",
                "value": "MatchRepoDigestOrExact"
            }])),
            Some(Value::String(s)) if s.is_empty() => Some(json!([{
                "op": "replace",
                "path": "/spec/policy/signedIdentity/matchPolicy",
                "value": "MatchRepoDigestOrExact"
            }])),
            _ => None,
        },
        _ => None,
    }
}
