//! AdmissionReview in, AdmissionReview out: decoding, the decision (made by the core),
//! and the response as the API server expects it. No I/O: the HTTPS server and the
//! tests hand it bytes and a snapshot of the cluster.
//!
//! The wire types are written here rather than taken from kube-core because its
//! response writes `patch` as an array of numbers, not the documented base64 string.

use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::cluster::{ClusterFacts, ImageConfigError};
use crate::model::{Image, CONFIG_GROUP};
use crate::render::{self, Inputs, Plan, RenderOptions};
use crate::validate::{self, Context, Report, SizeCheck};

pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
/// The cluster-version operator ships the platform's own `openshift` policy.
pub const DEFAULT_EXEMPT_USER: &str = "system:serviceaccount:openshift-cluster-version:default";

/// What admission knows of the cluster, rebuilt whenever the cluster changes so that
/// no request waits on the API server.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub facts: Result<ClusterFacts, ImageConfigError>,
    /// Payload repositories alone, for when the Image CR's lists are unusable.
    pub payload_facts: ClusterFacts,
    /// The cluster as rendered (the Image guard reads the policies).
    pub inputs: Arc<Inputs>,
    pub size: SizeCheck,
    pub options: RenderOptions,
}

impl Snapshot {
    /// Renders `inputs` for the size budget; where a plan exists already, [`Snapshot::from_plan`].
    pub fn build(inputs: &Inputs, options: &RenderOptions) -> Snapshot {
        let plan = render::plan(inputs, options).ok();
        Snapshot::from_plan(Arc::new(inputs.clone()), plan.as_ref(), options)
    }

    /// From a finished plan (`None`: the inputs cannot be rendered, no size to check).
    pub fn from_plan(
        inputs: Arc<Inputs>,
        plan: Option<&Plan>,
        options: &RenderOptions,
    ) -> Snapshot {
        let repos = &options.extra_payload_repos;
        let cv = inputs.cluster_version.as_ref();
        let payload_facts =
            ClusterFacts::new(None, cv, repos).expect("no Image, no list to reject");
        let facts = ClusterFacts::new(inputs.image.as_ref(), cv, repos);
        let size = match plan {
            Some(plan) => plan.size_check(options.size_budget),
            None => SizeCheck {
                machine_config: render::registries_mc_name("worker"),
                current_bytes: 0,
                budget_bytes: options.size_budget,
            },
        };
        Snapshot {
            facts,
            payload_facts,
            inputs,
            size,
            options: options.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Validate,
    Mutate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    #[error("expected apiVersion {REVIEW_API_VERSION} kind AdmissionReview, got {api_version:?} {kind:?}")]
    WrongType { api_version: String, kind: String },
    #[error("AdmissionReview has no request")]
    MissingRequest,
    #[error("AdmissionReview request has no uid")]
    MissingUid,
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
    pub reason: &'static str,
    pub message: Option<String>,
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

/// Decodes one AdmissionReview and answers it.
pub fn review(
    body: &[u8],
    endpoint: Endpoint,
    snapshot: &Snapshot,
    config: &Config,
) -> Result<(ReviewOut, Decision), BadReview> {
    let review: ReviewIn =
        serde_json::from_slice(body).map_err(|e| BadReview::NotJson(e.to_string()))?;
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
    let mut response = Response {
        uid: request.uid.clone(),
        allowed: true,
        status: None,
        patch_type: None,
        patch: None,
        warnings: Vec::new(),
    };
    let reason = decide(&request, endpoint, snapshot, config, &mut response);
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
        reason,
        message: response.status.as_ref().map(|s| s.message.clone()),
    };
    let out = ReviewOut {
        api_version: REVIEW_API_VERSION,
        kind: "AdmissionReview",
        response,
    };
    Ok((out, decision))
}

fn decide(
    request: &Request,
    endpoint: Endpoint,
    snapshot: &Snapshot,
    config: &Config,
    response: &mut Response,
) -> &'static str {
    let kind = &request.kind;
    let is_policy = kind.group == CONFIG_GROUP && kind.kind == "ClusterImagePolicy";
    let is_image = kind.group == CONFIG_GROUP && kind.kind == "Image";
    if !is_policy && !is_image {
        let message = format!(
            "cip-webhook does not handle {}/{} {}; check the webhook configuration's rules",
            kind.group, kind.version, kind.kind
        );
        deny(response, 400, "BadRequest", message);
        return "UnhandledKind";
    }
    // Deleting is always allowed; only the `cluster` Image is guarded, and never mutated.
    let writes = matches!(request.operation.as_str(), "CREATE" | "UPDATE");
    if !writes || (is_image && (endpoint == Endpoint::Mutate || request.name != "cluster")) {
        return "None";
    }
    let Some(object) = request.object.as_ref() else {
        deny(
            response,
            400,
            "BadRequest",
            format!("{} {} request has no object", request.operation, kind.kind),
        );
        return "BadRequest";
    };
    if is_image {
        let image: Image = match serde_json::from_str(object.get()) {
            Ok(i) => i,
            Err(e) => {
                deny(
                    response,
                    400,
                    "BadRequest",
                    format!("Image does not decode: {}", validate::without_position(&e)),
                );
                return "BadRequest";
            }
        };
        let facts = ClusterFacts::new(
            Some(&image),
            snapshot.inputs.cluster_version.as_ref(),
            &snapshot.options.extra_payload_repos,
        );
        let report = validate::validate_image_update(facts, &snapshot.inputs.policies);
        return match config.image_guard {
            ImageGuard::Deny => answer(response, &report, 403, "Forbidden"),
            ImageGuard::Warn => {
                response.warnings = report.errors.iter().map(ToString::to_string).collect();
                if response.warnings.is_empty() {
                    "None"
                } else {
                    "Warned"
                }
            }
        };
    }
    match endpoint {
        Endpoint::Mutate => match serde_json::from_str(object.get())
            .ok()
            .and_then(|object| default_signed_identity(&object))
        {
            Some(patch) => {
                response.patch_type = Some("JSONPatch");
                response.patch =
                    Some(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
                "Patched"
            }
            None => "None",
        },
        Endpoint::Validate => {
            let ctx = Context {
                facts: snapshot.facts.as_ref().unwrap_or(&snapshot.payload_facts),
                size: Some(&snapshot.size),
                exempt: config.exempt_users.contains(&request.user_info.username),
            };
            let (_, report) = validate::validate_json(object.get(), &ctx);
            answer(response, &report, 403, "Forbidden")
        }
    }
}

fn deny(response: &mut Response, code: u16, reason: &str, message: String) {
    response.allowed = false;
    response.status = Some(Status {
        code,
        reason: reason.to_string(),
        message,
    });
}

fn answer(response: &mut Response, report: &Report, code: u16, reason: &str) -> &'static str {
    response.warnings = report.warning_messages();
    match report.denial_message() {
        Some(message) => {
            deny(response, code, reason, message);
            report.reason().map_or("Invalid", validate::Reason::as_str)
        }
        None if response.warnings.is_empty() => "None",
        None => "Warned",
    }
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
