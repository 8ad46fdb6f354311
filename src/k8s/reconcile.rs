//! The reconciler: a lease-gated writer of the published desired state (`desired`). For
//! each new plan the leader writes what differs: MachineConfigs (with the resourceVersion
//! read, so a concurrent writer gets a 409 instead of being overwritten), then every
//! policy status that differs, several at a time, then Events for newly skipped scopes.
//!
//! Nothing is lost when a pass stops half way (a conflict, an API error, the lease
//! lapsing): each pass starts from the latest plan and the statuses as last seen, and
//! writes whatever still differs. MachineConfigs are written only from a plan whose
//! inputs already show our previous writes; statuses are compared with the store's
//! current ones, since status writes wake no render.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::k8s::desired::{Desired, Published};
use crate::k8s::lease::Leadership;
use crate::k8s::store::{self, ClusterState};
use crate::metrics::Metrics;
use cip_core::mco::{self, Duty};
use cip_core::model::{ClusterImagePolicy, MachineConfig, PolicyKind};
use cip_core::render::{self, Action, Condition, Inputs, PolicyOutcome};

pub const FIELD_MANAGER: &str = "cip-webhook";
/// The API server's limits on an Event's note and reportingInstance, in bytes.
pub(crate) const EVENT_NOTE_LIMIT: usize = 1024;
pub(crate) const EVENT_INSTANCE_LIMIT: usize = 128;
/// What the reconciler was doing when it recorded an Event.
const EVENT_ACTION: &str = "Render";
const MAX_MESSAGE: usize = 32768;
/// Status writes in flight at once: a GitOps sync of hundreds of policies gets its
/// conditions in seconds without flooding the API server.
pub const STATUS_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the cluster's image configuration cannot be rendered: {0}")]
    Render(#[from] render::RenderError),
    #[error("{0} was changed by someone else; writing again from its new version")]
    Conflict(String),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost the lease before writing {0}")]
    NotLeader(String),
    /// A MachineConfig of ours by name exists where our watch does not see it, and is not
    /// ours to take back.
    #[error("MachineConfig {name} exists and is not ours: {why}")]
    Occupied { name: String, why: String },
}

impl ReconcileError {
    /// The `reason` label of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Render(_) => "render",
            ReconcileError::Conflict(_) => "conflict",
            ReconcileError::Api { .. } => "api",
            ReconcileError::NotLeader(_) => "not_leader",
            ReconcileError::Occupied { .. } => "occupied",
        }
    }
}

fn api_error(what: impl Into<String>, name: &str) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    let name = name.to_string();
    move |source| match &source {
        kube::Error::Api(s) if s.code == 409 => ReconcileError::Conflict(name),
        _ => ReconcileError::Api { what, source },
    }
}

/// The conditions a policy should carry, keeping each transition time that still holds.
/// Always an `Applied` and a `Pending` condition; for an ImagePolicy some of whose scopes a
/// ClusterImagePolicy governs, `Pending` is the MCO's own (status `False`, reason
/// `ConflictScopes`, its message), so tools written against the MCO read it the same.
pub fn conditions(outcome: &PolicyOutcome, current: Option<&Value>, now: &str) -> Vec<Value> {
    let written_to = |pools: &[String]| {
        if pools.is_empty() {
            "every scope is rendered; no pool to write to".to_string()
        } else {
            format!(
                "written to the MachineConfigs of pools {}",
                pools.join(", ")
            )
        }
    };
    let (applied, pending) = match &outcome.condition {
        Condition::Applied {
            pools,
            warning: None,
        } => {
            let message = written_to(pools);
            (
                (true, "Applied", message.clone()),
                (false, "Applied", message),
            )
        }
        // Written, and refused at every pull: Applied says both, with a reason of its own.
        Condition::Applied {
            pools,
            warning: Some(w),
        } => {
            let message = format!(
                "{}, but every pull in its scopes will fail on the nodes: {w}",
                written_to(pools)
            );
            (
                (true, "InvalidKey", message.clone()),
                (false, "InvalidKey", message),
            )
        }
        // Some scopes enforced, others not: Applied is true for those, Pending for the rest.
        Condition::Pending {
            reason,
            message,
            written,
            ..
        } if !written.is_empty() => (
            (
                true,
                "PartiallyApplied",
                format!(
                    "{} of the policy's scopes written ({}); the others are not: {message}",
                    written.len(),
                    written.join(", ")
                ),
            ),
            (true, reason.as_str(), message.clone()),
        ),
        Condition::Pending {
            reason, message, ..
        } => (
            (false, reason.as_str(), message.clone()),
            (true, reason.as_str(), message.clone()),
        ),
        Condition::Overridden {
            message,
            written,
            pools,
            ..
        } => {
            let applied = if written.is_empty() {
                (
                    false,
                    "ConflictScopes",
                    "every scope is governed by a ClusterImagePolicy".to_string(),
                )
            } else {
                (
                    true,
                    "Applied",
                    format!(
                        "{}; the other scopes are governed by a ClusterImagePolicy",
                        written_to(pools)
                    ),
                )
            };
            (applied, (false, "ConflictScopes", message.clone()))
        }
    };
    let make = |kind: &str, (status, reason, message): (bool, &str, String)| {
        let status = if status { "True" } else { "False" };
        // The CRD caps condition messages at 32768 characters.
        let message: String = if message.chars().count() > MAX_MESSAGE {
            message
                .chars()
                .take(MAX_MESSAGE - 3)
                .chain("...".chars())
                .collect()
        } else {
            message
        };
        condition(
            kind,
            status,
            reason,
            &message,
            outcome.generation,
            current,
            now,
        )
    };
    vec![make("Applied", applied), make("Pending", pending)]
}

/// The conditions a status holds now.
fn conditions_of(current: Option<&Value>) -> impl Iterator<Item = &Value> {
    current
        .and_then(|s| s["conditions"].as_array())
        .into_iter()
        .flatten()
}

/// One condition of ours, keeping its transition time while its status holds.
pub(crate) fn condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    current: Option<&Value>,
    now: &str,
) -> Value {
    let since = conditions_of(current)
        .find(|c| c["type"] == kind && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    let mut c = json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    });
    if let Some(g) = generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

/// Our conditions once the machine-config-operator renders policies: `Applied` says who
/// does; we no longer say whether it is applied.
pub fn handed_over(generation: Option<i64>, current: Option<&Value>, now: &str) -> Vec<Value> {
    let message = "the machine-config-operator renders ClusterImagePolicies and ImagePolicies on this cluster (SigstoreImageVerification is enabled); cip-webhook no longer writes MachineConfigs for this policy";
    vec![condition(
        "Applied",
        "Unknown",
        "RenderedByMachineConfigOperator",
        message,
        generation,
        current,
        now,
    )]
}

/// Whether the current status already shows `conditions` (ours, by type; other
/// managers' entries do not count), and none of the `gone` types we no longer apply
/// with one of our reasons.
fn holds(current: Option<&Value>, conditions: &[Value], gone: &[&str]) -> bool {
    let have: Vec<&Value> = conditions_of(current).collect();
    let shown = conditions.iter().all(|c| have.contains(&c));
    // Our Pending says "Applied" when nothing is pending; the operator never does.
    let stale = have
        .iter()
        .any(|h| gone.iter().any(|g| h["type"] == *g) && h["reason"] == "Applied");
    shown && !stale
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    pub machine_config_writes: usize,
    pub status_writes: usize,
    pub events: usize,
    /// The plan does not show our own last writes yet; nothing was done.
    pub waiting: bool,
    /// What the pass found, for /readyz: the duty and anything it waits for.
    pub detail: String,
}

/// How the reconciler reports what it does (to /readyz).
pub type Report = Arc<dyn Fn(String) + Send + Sync>;

pub struct Reconciler {
    /// What the runtime gave it.
    ctx: Context,
    machine_configs: Api<DynamicObject>,
    /// kube's recorder: an Event lands in the namespace of the object it is about
    /// (`default` for cluster-scoped ones, as the API server requires), and a repeat within
    /// six minutes becomes a series count on the first instead of a new object.
    recorder: Recorder,
    /// Our writes the plan does not show yet: name → the resourceVersion we wrote over
    /// (None: we created it).
    expected: BTreeMap<String, (Option<String>, Instant)>,
    /// MachineConfigs found occupied by something not ours: not asked about again before
    /// the instant, which moves further out at each refusal (up to five minutes).
    occupied: BTreeMap<String, (Instant, u32, String)>,
    /// The last duty, to log when it changes.
    duty: Option<Duty>,
    /// The resourceVersion each of our MachineConfigs got from our last write: another
    /// version in the watch, or the object gone, means someone else wrote it.
    written: BTreeMap<String, String>,
}

pub(crate) fn now_seconds() -> String {
    let t = time::OffsetDateTime::now_utc();
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&format).unwrap_or_default()
}

/// The longest prefix of `s` within `limit` bytes that ends on a character boundary.
pub(crate) fn truncated(s: &str, limit: usize) -> &str {
    let mut end = s.len().min(limit);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An Event's `regarding` for one of the MachineConfigs (cluster-scoped).
fn machine_config_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(cip_core::model::MC_API_VERSION.into()),
        kind: Some("MachineConfig".into()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    }
}

fn to_dynamic(mc: &MachineConfig) -> DynamicObject {
    serde_json::from_value(serde_json::to_value(mc).expect("models serialize"))
        .expect("a MachineConfig is an object")
}

/// One status write a pass decided on.
struct StatusWrite<'a> {
    policy: &'a ClusterImagePolicy,
    kind: PolicyKind,
    outcome: &'a PolicyOutcome,
    conditions: Vec<Value>,
    /// The Pending message an Event was last about (the one in the current status).
    was_pending: Option<String>,
}

/// What the reconciler is given by the runtime: the cluster, what to write, where to
/// report, and who it is.
pub struct Context {
    pub client: Client,
    pub state: Arc<ClusterState>,
    pub desired: watch::Receiver<Published>,
    pub metrics: Arc<Metrics>,
    /// Where the pass's outcome is said (`/readyz`).
    pub report: Report,
    pub leadership: Leadership,
    /// The Lease's namespace (the Events' too).
    pub namespace: String,
    pub identity: String,
    /// `--mode auto`: stand down where the MCO renders policies itself.
    pub auto: bool,
    /// Log the writes instead of making them.
    pub dry_run: bool,
}

impl Reconciler {
    pub fn new(ctx: Context) -> Reconciler {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(truncated(&ctx.identity, EVENT_INSTANCE_LIMIT).to_string()),
        };
        Reconciler {
            machine_configs: Api::all_with(ctx.client.clone(), &store::machine_config_resource()),
            recorder: Recorder::new(ctx.client.clone(), reporter),
            ctx,
            expected: BTreeMap::new(),
            occupied: BTreeMap::new(),
            duty: None,
            written: BTreeMap::new(),
        }
    }

    /// Whether the plan's inputs still show an object as it was before one of our writes.
    /// Any other version means the watch has passed our write (someone else may have
    /// written since: the plan must reflect that). Bounded, should an event be lost.
    fn behind(&mut self, inputs: &Inputs) -> bool {
        self.expected.retain(|name, (before, at)| {
            let cached = inputs
                .machine_configs
                .iter()
                .find(|m| &m.metadata.name == name)
                .map(|m| m.metadata.resource_version.clone());
            let caught_up = match (before, cached) {
                (None, cached) => cached.is_some(),
                (Some(_), None) => true,
                (Some(before), Some(now)) => now.as_ref() != Some(before),
            };
            !caught_up && at.elapsed() < Duration::from_secs(5)
        });
        !self.expected.is_empty()
    }

    fn check_leader(&self, what: &str) -> Result<(), ReconcileError> {
        if self.ctx.leadership.is_leader() {
            Ok(())
        } else {
            Err(ReconcileError::NotLeader(what.to_string()))
        }
    }

    /// One pass over a desired state.
    pub async fn pass(&mut self, desired: &Desired) -> Result<Pass, ReconcileError> {
        let mut done = Pass::default();
        let inputs = &desired.inputs;
        if self.behind(inputs) {
            done.waiting = true;
            return Ok(done);
        }
        let absent: Vec<&str> = desired.absent.iter().map(|s| s.as_str()).collect();
        let duty = mco::duty(self.ctx.auto, inputs, &absent);
        if self.duty.as_ref() != Some(&duty) {
            tracing::info!(duty = duty.label(), detail = %duty.describe(), "reconcile duty");
            self.ctx.metrics.set_duty(duty.label());
            self.duty = Some(duty.clone());
        }
        done.detail = duty.describe();
        match duty {
            Duty::CannotRender(_) => return Ok(done),
            Duty::StandDown(_) => {
                self.hand_over(inputs, &mut done).await?;
                self.say_handed_over(inputs, &mut done).await?;
                return Ok(done);
            }
            Duty::Reconcile(_) => {}
        }
        let plan = desired.plan.as_ref().map_err(|e| e.clone())?;
        // A pool's MachineConfigs up to its first failure; the other pools and the
        // statuses are written all the same, and the first error is returned.
        let mut first_error = None;
        for pool in &plan.pools {
            if let Some(error) = &pool.error {
                tracing::warn!(pool = %pool.pool, error = %error, "pool not rendered; its MachineConfigs are left alone");
                continue;
            }
            if let Err(e) = self.write_pool(inputs, pool, &mut done).await {
                if let ReconcileError::NotLeader(_) = e {
                    return Err(e);
                }
                if let ReconcileError::Occupied { name, why } = &e {
                    let regarding = machine_config_ref(name);
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "Occupied".into(),
                        note: Some(format!("not written for pool {}: {why}", pool.pool)),
                        action: EVENT_ACTION.into(),
                        secondary: None,
                    };
                    self.event(event, &regarding).await;
                    done.events += 1;
                }
                first_error.get_or_insert(e);
            }
        }
        let statuses = self.write_statuses(inputs, plan, &mut done).await;
        match first_error {
            Some(e) => Err(e),
            None => statuses.map(|()| done),
        }
    }

    /// A pool's changes, in the order that never leaves its nodes requiring signatures
    /// they cannot find: sigstore attachments turned on before a policy.json requires
    /// them, turned off after it no longer does. Stops at the first failure.
    async fn write_pool(
        &mut self,
        inputs: &Inputs,
        pool: &render::PoolPlan,
        done: &mut Pass,
    ) -> Result<(), ReconcileError> {
        let attachments = render::imagepolicies_mc_name(&pool.pool);
        let rank = |c: &&render::Change| match (c.name == attachments, c.action) {
            (true, Action::Delete) => 2,
            (true, _) => 0,
            (false, _) => 1,
        };
        let mut changes: Vec<&render::Change> = pool
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .collect();
        changes.sort_by_key(rank);
        if self.ctx.dry_run {
            for change in changes {
                tracing::info!(machine_config = %change.name, pool = %pool.pool, action = change.action.as_str(), "dry run: would write MachineConfig");
            }
            return Ok(());
        }
        for change in changes {
            self.check_leader(&change.name)?;
            let existing = inputs
                .machine_configs
                .iter()
                .find(|m| m.metadata.name == change.name);
            if let Some((until, _, why)) = self.occupied.get(&change.name) {
                if change.action == Action::Create && Instant::now() < *until {
                    return Err(ReconcileError::Occupied {
                        name: change.name.clone(),
                        why: why.clone(),
                    });
                }
            }
            let foreign = self.foreign_change(change.action, &change.name, existing);
            // Read before our write, which takes the changed fields' ownership back.
            let by = match foreign {
                Some("changed") => self.last_writer(&change.name).await,
                _ => None,
            };
            let written = self
                .write(
                    change.action,
                    &change.name,
                    change.desired.as_ref(),
                    existing,
                )
                .await;
            if let Err(ReconcileError::Occupied { name, why }) = &written {
                let refusals = self.occupied.get(name).map_or(0, |(_, n, _)| n + 1);
                let wait = Duration::from_secs(5)
                    .saturating_mul(1 << refusals.min(6))
                    .min(Duration::from_secs(300));
                self.occupied
                    .insert(name.clone(), (Instant::now() + wait, refusals, why.clone()));
            }
            match written? {
                Some(version) => self.written.insert(change.name.clone(), version),
                None => self.written.remove(&change.name),
            };
            if let Some(what) = foreign {
                self.repaired(&change.name, &pool.pool, what, by, done)
                    .await;
            }
            self.occupied.remove(&change.name);
            let before = existing.and_then(|m| m.metadata.resource_version.clone());
            self.expected
                .insert(change.name.clone(), (before, Instant::now()));
            let action = change.action.as_str();
            tracing::info!(machine_config = %change.name, pool = %pool.pool, action, "MachineConfig written");
            self.ctx.metrics.machine_config_written(&pool.pool, action);
            done.machine_config_writes += 1;
        }
        Ok(())
    }

    /// `cip_webhook_policies`: what the statuses of this plan say, by kind and state.
    fn count_policies(&self, plan: &render::Plan) {
        let state = |o: &PolicyOutcome| match o.condition {
            Condition::Applied { .. } => "applied",
            Condition::Pending { .. } => "pending",
            Condition::Overridden { .. } => "overridden",
        };
        let cluster = plan
            .policies
            .iter()
            .map(|o| ("ClusterImagePolicy", state(o)));
        let namespaced = plan
            .image_policies
            .iter()
            .map(|o| ("ImagePolicy", state(o)));
        self.ctx.metrics.set_policies(cluster.chain(namespaced));
    }

    /// Every status that differs from the store's current one, `STATUS_CONCURRENCY` at a
    /// time; then an Event for each policy whose Pending message is new. Failures do not
    /// stop the others; the first is returned, and the next pass writes what is left.
    async fn write_statuses(
        &self,
        inputs: &Inputs,
        plan: &render::Plan,
        done: &mut Pass,
    ) -> Result<(), ReconcileError> {
        self.count_policies(plan);
        let statuses = self.ctx.state.policy_statuses();
        let now = now_seconds();
        let by_key: BTreeMap<(PolicyKind, String), &ClusterImagePolicy> = inputs
            .policies
            .iter()
            .map(|p| ((PolicyKind::Cluster, p.key()), &**p))
            .chain(
                inputs
                    .image_policies
                    .iter()
                    .map(|p| ((PolicyKind::Namespaced, p.key()), &**p)),
            )
            .collect();
        let outcomes = plan
            .policies
            .iter()
            .map(|o| (PolicyKind::Cluster, o))
            .chain(
                plan.image_policies
                    .iter()
                    .map(|o| (PolicyKind::Namespaced, o)),
            );
        let writes: Vec<StatusWrite> = outcomes
            .filter_map(|(kind, outcome)| {
                let key = match &outcome.namespace {
                    Some(ns) => (kind, format!("{ns}/{}", outcome.name)),
                    None => (kind, outcome.name.clone()),
                };
                let policy = *by_key.get(&key)?;
                // A policy deleted since the plan was made has no status to write.
                let current = statuses.get(&key)?.as_ref();
                let conditions = conditions(outcome, current, &now);
                if holds(current, &conditions, &[]) {
                    return None;
                }
                let was_pending = conditions_of(current)
                    .find(|c| c["type"] == "Pending" && c["status"] == "True")
                    .and_then(|c| c["message"].as_str())
                    .map(str::to_string);
                Some(StatusWrite {
                    policy,
                    kind,
                    outcome,
                    conditions,
                    was_pending,
                })
            })
            .collect();
        if writes.is_empty() {
            return Ok(());
        }
        if self.ctx.dry_run {
            for w in &writes {
                let applied = &w.conditions[0];
                tracing::info!(
                    policy = %w.policy.key(),
                    kind = w.kind.as_str(),
                    applied = %applied["status"],
                    reason = %applied["reason"],
                    "dry run: would write the status"
                );
            }
            return Ok(());
        }
        self.check_leader("policy status")?;
        let pending: Vec<_> = writes
            .iter()
            .map(|w| async move { (self.write_status(w).await, w) })
            .collect();
        let results: Vec<(Result<(), ReconcileError>, &StatusWrite)> =
            futures_util::stream::iter(pending)
                .buffer_unordered(STATUS_CONCURRENCY)
                .collect()
                .await;
        let mut first_error = None;
        for (result, w) in results {
            match result {
                Ok(()) => {
                    self.ctx.metrics.status_written();
                    done.status_writes += 1;
                    if let Condition::Pending {
                        reason, message, ..
                    } = &w.outcome.condition
                    {
                        if w.was_pending.as_deref() != Some(message.as_str()) {
                            let regarding = ObjectReference {
                                api_version: Some(w.policy.api_version.clone()),
                                kind: Some(w.kind.as_str().into()),
                                name: Some(w.outcome.name.clone()),
                                namespace: w.outcome.namespace.clone(),
                                uid: w.policy.metadata.uid.clone(),
                                ..ObjectReference::default()
                            };
                            let event = Event {
                                type_: EventType::Warning,
                                reason: reason.as_str().into(),
                                note: Some(message.clone()),
                                action: EVENT_ACTION.into(),
                                secondary: None,
                            };
                            self.event(event, &regarding).await;
                            done.events += 1;
                        }
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn write_status(&self, w: &StatusWrite<'_>) -> Result<(), ReconcileError> {
        self.apply_conditions(w.policy, w.kind, &w.conditions).await
    }

    /// Server-side apply of our conditions, as our field manager. `conditions` is a map
    /// list keyed by `type` in the CRD: the API server keeps the other managers' entries
    /// (the machine-config-operator's `Pending`) and drops ours that are no longer applied.
    async fn apply_conditions(
        &self,
        policy: &ClusterImagePolicy,
        kind: PolicyKind,
        conditions: &[Value],
    ) -> Result<(), ReconcileError> {
        self.check_leader(&policy.metadata.name)?;
        apply_status(&self.ctx.client, policy, kind, conditions, FIELD_MANAGER)
            .await
            .map_err(|e| {
                let what = format!("writing the status of {} {}", kind.as_str(), policy.key());
                api_error(what, &policy.metadata.name)(e)
            })
    }
    /// One MachineConfig write; the resourceVersion it left (None: deleted).
    async fn write(
        &self,
        action: Action,
        name: &str,
        desired: Option<&MachineConfig>,
        existing: Option<&MachineConfig>,
    ) -> Result<Option<String>, ReconcileError> {
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let what = format!("writing MachineConfig {name}");
        match (action, desired) {
            (Action::Create, Some(mc)) => {
                match self.machine_configs.create(&pp, &to_dynamic(mc)).await {
                    Ok(o) => Ok(o.metadata.resource_version),
                    // There already, out of our watch's sight (its role label removed, say):
                    // read it, and take it back where it is ours.
                    Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                        self.take_back(name, mc, &pp).await
                    }
                    Err(e) => Err(api_error(what, name)(e)),
                }
            }
            (Action::Update, Some(mc)) => self
                .machine_configs
                .replace(name, &pp, &to_dynamic(mc))
                .await
                .map(|o| o.metadata.resource_version)
                .map_err(api_error(what, name)),
            (Action::Delete, _) => {
                let meta = existing.map(|m| &m.metadata);
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: meta.and_then(|m| m.resource_version.clone()),
                        uid: meta.and_then(|m| m.uid.clone()),
                    }),
                    ..Default::default()
                };
                match self.machine_configs.delete(name, &dp).await {
                    Ok(_) => Ok(None),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                    Err(e) => Err(api_error(what, name)(e)),
                }
            }
            _ => Ok(existing.and_then(|m| m.metadata.resource_version.clone())),
        }
    }

    /// Whether a MachineConfig this leader wrote was since changed or deleted by someone
    /// else: the watch shows another version than our write left, or none at all.
    fn foreign_change(
        &self,
        action: Action,
        name: &str,
        existing: Option<&MachineConfig>,
    ) -> Option<&'static str> {
        let ours = self.written.get(name)?;
        match (action, existing) {
            (Action::Create, None) => Some("deleted"),
            (Action::Update, Some(m)) if m.metadata.resource_version.as_ref() != Some(ours) => {
                Some("changed")
            }
            _ => None,
        }
    }

    /// A log line and an Event for a MachineConfig put back after someone else's change,
    /// naming the last writer its managedFields show.
    async fn repaired(
        &self,
        name: &str,
        pool: &str,
        what: &str,
        by: Option<String>,
        done: &mut Pass,
    ) {
        let by = by.map_or_else(String::new, |w| format!(" by {w}"));
        let note = format!(
            "MachineConfig {name} of pool {pool}, written by cip-webhook, was {what}{by}; restored to what the policies render (edit the policies, not the MachineConfig)"
        );
        tracing::warn!(machine_config = %name, pool = %pool, "{note}");
        let regarding = machine_config_ref(name);
        let event = Event {
            type_: EventType::Warning,
            reason: if what == "deleted" {
                "Recreated"
            } else {
                "Repaired"
            }
            .into(),
            note: Some(note),
            action: EVENT_ACTION.into(),
            secondary: None,
        };
        self.event(event, &regarding).await;
        done.events += 1;
    }

    /// The field manager of the latest managedFields entry other than ours, with its
    /// operation and time; None when it cannot be read.
    async fn last_writer(&self, name: &str) -> Option<String> {
        let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
        let listed = self.machine_configs.list(&by_name).await.ok()?;
        let found = listed.items.into_iter().next()?;
        found
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f.manager.as_deref() != Some(FIELD_MANAGER))
            .max_by_key(|f| f.time.as_ref().map(|t| t.0))
            .map(|f| {
                format!(
                    "{} ({}{})",
                    f.manager.unwrap_or_else(|| "an unnamed manager".into()),
                    f.operation.unwrap_or_default(),
                    f.time.map(|t| format!(" at {}", t.0)).unwrap_or_default()
                )
            })
    }

    /// A MachineConfig we meant to create exists: ours (our label, or the seed layout's
    /// `99-<pool>-generated-registries`, which nothing else owns) is replaced with what
    /// the plan wants, its labels restored; anything else is left alone and reported.
    async fn take_back(
        &self,
        name: &str,
        desired: &MachineConfig,
        pp: &PostParams,
    ) -> Result<Option<String>, ReconcileError> {
        // By a list with a field selector: the reconciler's RBAC has list and watch, not get.
        let what = format!("reading MachineConfig {name}");
        let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
        let listed = self
            .machine_configs
            .list(&by_name)
            .await
            .map_err(api_error(what, name))?;
        let occupied = |why: &str| ReconcileError::Occupied {
            name: name.into(),
            why: why.into(),
        };
        let Some(found) = listed.items.into_iter().next() else {
            return Err(ReconcileError::Conflict(name.into()));
        };
        let found: MachineConfig =
            serde_json::from_value(serde_json::to_value(&found).unwrap_or_default())
                .map_err(|e| occupied(&format!("it does not decode as a MachineConfig: {e}")))?;
        if mco::owned_by_mco(&found) {
            return Err(occupied("it belongs to the machine-config-operator (its generated-by annotation or Image owner); cip-webhook never writes it"));
        }
        let seed_layout = name.starts_with("99-") && name.ends_with("-generated-registries");
        if !render::is_ours(&found) && !seed_layout {
            return Err(occupied(&format!(
                "it lacks the label {}={} that cip-webhook's MachineConfigs carry; cip-webhook does not take over what it did not make: delete it, or label it if it is cip-webhook's",
                render::MANAGED_BY_LABEL,
                render::MANAGED_BY
            )));
        }
        let mut back = desired.clone();
        back.metadata.resource_version = found.metadata.resource_version.clone();
        back.metadata.uid = found.metadata.uid.clone();
        let replaced = self
            .machine_configs
            .replace(name, pp, &to_dynamic(&back))
            .await
            .map_err(api_error(format!("taking back MachineConfig {name}"), name))?;
        tracing::warn!(machine_config = %name, "took back a MachineConfig of ours that the watch no longer saw (its labels had been changed); labels and content restored");
        Ok(replaced.metadata.resource_version)
    }

    /// Standing down: where the MCO's own MachineConfig carries every scope we wrote,
    /// ours are deleted, with a log line and an Event; elsewhere they stay, so that the
    /// nodes are never without verification.
    async fn hand_over(&mut self, inputs: &Inputs, done: &mut Pass) -> Result<(), ReconcileError> {
        if self.ctx.dry_run {
            for step in mco::handover(inputs).into_iter().filter(|s| s.ready()) {
                tracing::info!(pool = %step.pool, deleted = %step.ours.join(", "), "dry run: would hand over to the machine-config-operator");
            }
            return Ok(());
        }
        let mut waiting = Vec::new();
        for step in mco::handover(inputs) {
            if !step.ready() {
                waiting.push(format!(
                    "pool {} keeps {} until the machine-config-operator's {} carries {}",
                    step.pool,
                    step.ours.join(", "),
                    render::registries_mc_name(&step.pool),
                    step.waiting_for.join(", ")
                ));
                continue;
            }
            for name in &step.ours {
                self.check_leader(name)?;
                let existing = inputs
                    .machine_configs
                    .iter()
                    .find(|m| &m.metadata.name == name);
                self.write(Action::Delete, name, None, existing).await?;
                self.written.remove(name);
                let before = existing.and_then(|m| m.metadata.resource_version.clone());
                self.expected.insert(name.clone(), (before, Instant::now()));
                self.ctx
                    .metrics
                    .machine_config_written(&step.pool, "delete");
                done.machine_config_writes += 1;
            }
            let message = format!(
                "the machine-config-operator renders ClusterImagePolicies and its {} carries every scope cip-webhook wrote for pool {}; deleted {}",
                render::registries_mc_name(&step.pool),
                step.pool,
                step.ours.join(", ")
            );
            tracing::info!(pool = %step.pool, deleted = %step.ours.join(", "), "{message}");
            let regarding = ObjectReference {
                api_version: Some("config.openshift.io/v1".into()),
                kind: Some("FeatureGate".into()),
                name: Some("cluster".into()),
                uid: inputs
                    .feature_gate
                    .as_ref()
                    .and_then(|f| f.metadata.uid.clone()),
                ..ObjectReference::default()
            };
            // The pool as the related object keeps one pool's Event from becoming a
            // repeat of another's.
            let pool = ObjectReference {
                api_version: Some("machineconfiguration.openshift.io/v1".into()),
                kind: Some("MachineConfigPool".into()),
                name: Some(step.pool.clone()),
                uid: inputs
                    .pools
                    .iter()
                    .find(|p| p.metadata.name == step.pool)
                    .and_then(|p| p.metadata.uid.clone()),
                ..ObjectReference::default()
            };
            let event = Event {
                type_: EventType::Normal,
                reason: "HandedOver".into(),
                note: Some(message),
                action: EVENT_ACTION.into(),
                secondary: Some(pool),
            };
            self.event(event, &regarding).await;
            done.events += 1;
        }
        if !waiting.is_empty() {
            done.detail = format!("{}; {}", done.detail, waiting.join("; "));
        }
        Ok(())
    }

    /// Standing down: a policy whose `Applied` condition we wrote says now that the
    /// machine-config-operator renders it; our `Pending` goes, the operator's stays.
    async fn say_handed_over(
        &self,
        inputs: &Inputs,
        done: &mut Pass,
    ) -> Result<(), ReconcileError> {
        let statuses = self.ctx.state.policy_statuses();
        let now = now_seconds();
        let policies = inputs
            .policies
            .iter()
            .map(|p| (PolicyKind::Cluster, &**p))
            .chain(
                inputs
                    .image_policies
                    .iter()
                    .map(|p| (PolicyKind::Namespaced, &**p)),
            );
        for (kind, policy) in policies {
            let Some(current) = statuses.get(&(kind, policy.key())).and_then(|s| s.as_ref()) else {
                continue;
            };
            let ours = conditions_of(Some(current)).any(|c| c["type"] == "Applied");
            let conditions = handed_over(policy.metadata.generation, Some(current), &now);
            if !ours || holds(Some(current), &conditions, &["Pending"]) {
                continue;
            }
            if self.ctx.dry_run {
                tracing::info!(policy = %policy.key(), kind = kind.as_str(), "dry run: would say the machine-config-operator renders it");
                continue;
            }
            self.apply_conditions(policy, kind, &conditions).await?;
            self.ctx.metrics.status_written();
            done.status_writes += 1;
        }
        Ok(())
    }

    /// Events are best effort: a failure is logged, never retried.
    async fn event(&self, mut event: Event, regarding: &ObjectReference) {
        if let Some(note) = &mut event.note {
            note.truncate(truncated(note, EVENT_NOTE_LIMIT).len());
        }
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(
                regarding = regarding.name.as_deref().unwrap_or_default(),
                reason = %event.reason,
                error = %e,
                "event not recorded"
            );
        }
    }
}

/// Server-side apply of `conditions` on a policy's status as `manager`, in the version the
/// policy was read in. `conditions` is a map list keyed by `type` in the CRD: the API
/// server keeps the other managers' entries (the machine-config-operator's `Pending`, the
/// running-images condition) and drops this manager's that are no longer applied. A
/// policy deleted meanwhile is nothing left to report on.
pub(crate) async fn apply_status(
    client: &Client,
    policy: &ClusterImagePolicy,
    kind: PolicyKind,
    conditions: &[Value],
    manager: &str,
) -> Result<(), kube::Error> {
    let name = &policy.metadata.name;
    let version = policy.api_version.rsplit('/').next().unwrap_or("v1");
    let resource = store::policy_resource(kind, version);
    let mut metadata = json!({"name": name});
    let api: Api<DynamicObject> = match kind {
        PolicyKind::Cluster => Api::all_with(client.clone(), &resource),
        PolicyKind::Namespaced => {
            metadata["namespace"] = json!(policy.namespace());
            Api::namespaced_with(client.clone(), policy.namespace(), &resource)
        }
    };
    let patch = json!({
        "apiVersion": policy.api_version,
        "kind": kind.as_str(),
        "metadata": metadata,
        "status": {"conditions": conditions},
    });
    let params = PatchParams::apply(manager).force();
    match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs passes while this replica leads: for every new desired state, when leadership
/// is won, after a failure (with backoff; a conflict waits for the next desired state,
/// which the other writer's change brings), and every `resync` regardless.
pub async fn run(mut reconciler: Reconciler, resync: Duration) {
    let mut desired = reconciler.ctx.desired.clone();
    let mut lease = reconciler.ctx.leadership.clone();
    let mut retry: Option<Duration> = None;
    let mut failing = Failing::default();
    let mut leading = false;
    loop {
        let lease_only = tokio::select! {
            r = desired.changed() => { if r.is_err() { return } false }
            r = lease.updated() => { if !r { return } true }
            _ = tokio::time::sleep(retry.unwrap_or(resync)) => false,
        };
        let now_leading = reconciler.ctx.leadership.is_leader();
        let flipped = now_leading != leading;
        leading = now_leading;
        if !leading {
            (reconciler.ctx.report)(format!(
                "standby; {} does not hold the lease",
                reconciler.ctx.identity
            ));
            continue;
        }
        // A renewal that keeps us leading brings nothing new.
        if lease_only && !flipped && retry.is_none() {
            continue;
        }
        let Some(current) = desired.borrow_and_update().ready().cloned() else {
            continue;
        };
        let started = Instant::now();
        let result = reconciler.pass(&current).await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(pass) if pass.waiting => {
                reconciler.ctx.metrics.reconciled("waiting", seconds);
                // The next desired state shows our writes; this is only a fallback.
                retry = Some(Duration::from_secs(1));
            }
            Ok(pass) => {
                reconciler.ctx.metrics.reconciled("ok", seconds);
                if pass.machine_config_writes + pass.status_writes > 0 {
                    tracing::info!(
                        machine_configs = pass.machine_config_writes,
                        statuses = pass.status_writes,
                        events = pass.events,
                        seconds,
                        "reconciled"
                    );
                }
                if failing.times > 0 {
                    tracing::info!(after = failing.times, "reconciled again after failures");
                }
                (reconciler.ctx.report)(format!("leader; {}; in sync", pass.detail));
                failing = Failing::default();
                retry = None;
            }
            Err(e) => {
                reconciler.ctx.metrics.reconciled("error", seconds);
                reconciler.ctx.metrics.reconcile_error(e.metric_label());
                if let ReconcileError::NotLeader(_) = e {
                    leading = false;
                }
                let wait = failing.next(&e);
                (reconciler.ctx.report)(format!(
                    "leader; retrying in {wait:?} (failed {} time(s) in a row): {e}",
                    failing.times
                ));
                retry = Some(wait);
            }
        }
    }
}

/// Consecutive failed passes: each waits longer than the one before, and an error that
/// only repeats is logged again at longer intervals, not at every retry.
#[derive(Default)]
struct Failing {
    times: u32,
    last: String,
}

impl Failing {
    /// Records a failure; how long to wait before the next pass.
    fn next(&mut self, e: &ReconcileError) -> Duration {
        let message = e.to_string();
        let repeat = message == self.last;
        self.times += 1;
        // A conflict usually ends with the other writer's change (the next desired state
        // brings it); an object that is not ours waits for a person.
        let (first, cap) = match e {
            ReconcileError::Conflict(_) => (Duration::from_secs(1), Duration::from_secs(30)),
            ReconcileError::Occupied { .. } => (Duration::from_secs(5), Duration::from_secs(300)),
            _ => (Duration::from_millis(100), Duration::from_secs(30)),
        };
        let wait = first
            .saturating_mul(1 << self.times.saturating_sub(1).min(16))
            .min(cap);
        if !repeat || self.times.is_power_of_two() {
            tracing::warn!(error = %e, times = self.times, retry_in = ?wait, "reconcile failed");
        } else {
            tracing::debug!(error = %e, times = self.times, retry_in = ?wait, "reconcile failed again");
        }
        self.last = message;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cip_core::validate::Reason;

    /// The API server counts an Event's note in bytes; a cut never splits a character.
    #[test]
    fn event_notes_are_cut_in_bytes_on_a_character_boundary() {
        let note = "é".repeat(600);
        let cut = truncated(&note, EVENT_NOTE_LIMIT);
        assert_eq!(cut.len(), 1024);
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated("short", EVENT_NOTE_LIMIT), "short");
    }

    fn outcome(condition: Condition) -> PolicyOutcome {
        PolicyOutcome {
            name: "p".into(),
            namespace: None,
            generation: Some(3),
            condition,
        }
    }

    /// Conditions that say what is true: a policy partly written is applied for those
    /// scopes; one written with a key the nodes cannot read is applied, and says that
    /// every pull will fail.
    #[test]
    fn conditions_say_partly_written_and_failing_keys() {
        let partly = outcome(Condition::Pending {
            reason: Reason::ConflictScopes,
            message: "scope(s) [\"blocked.example.com\"] skipped: blocked".into(),
            skipped: Vec::new(),
            written: vec!["quay.io/a".into()],
        });
        let c = conditions(&partly, None, "T1");
        assert_eq!(
            (&c[0]["status"], &c[0]["reason"]),
            (&json!("True"), &json!("PartiallyApplied"))
        );
        assert!(c[0]["message"].as_str().unwrap().starts_with(
            "1 of the policy's scopes written (quay.io/a); the others are not: scope(s)"
        ));
        assert_eq!(
            (&c[1]["status"], &c[1]["reason"]),
            (&json!("True"), &json!("ConflictScopes"))
        );
        let bad_key = outcome(Condition::Applied {
            pools: vec!["worker".into()],
            warning: Some("spec.policy.rootOfTrust.publicKey.keyData: does not decode to a PEM public key: no PEM block found".into()),
        });
        let c = conditions(&bad_key, None, "T1");
        assert_eq!(
            (&c[0]["status"], &c[0]["reason"]),
            (&json!("True"), &json!("InvalidKey"))
        );
        assert_eq!(
            c[0]["message"],
            "written to the MachineConfigs of pools worker, but every pull in its scopes will fail on the nodes: spec.policy.rootOfTrust.publicKey.keyData: does not decode to a PEM public key: no PEM block found"
        );
    }

    #[test]
    fn conditions_keep_transition_times_that_still_hold() {
        let applied = outcome(Condition::Applied {
            pools: vec!["master".into(), "worker".into()],
            warning: None,
        });
        let first = conditions(&applied, None, "T1");
        assert_eq!(first[0]["status"], "True");
        assert_eq!(first[0]["observedGeneration"], 3);
        assert_eq!(
            first[0]["message"],
            "written to the MachineConfigs of pools master, worker"
        );
        let status = json!({"conditions": first});
        assert_eq!(
            conditions(&applied, Some(&status), "T2"),
            first,
            "no change, no write"
        );
        let pending = outcome(Condition::Pending {
            reason: Reason::ConflictScopes,
            message: "m".into(),
            skipped: vec![],
            written: vec![],
        });
        let long = outcome(Condition::Pending {
            reason: Reason::TooLarge,
            message: "x".repeat(40_000),
            skipped: vec![],
            written: vec![],
        });
        let capped = conditions(&long, None, "T");
        assert_eq!(capped[1]["message"].as_str().unwrap().len(), MAX_MESSAGE);
        let next = conditions(&pending, Some(&status), "T3");
        assert_eq!(next[1]["lastTransitionTime"], "T3");
        assert_eq!(next[1]["reason"], "ConflictScopes");
    }

    /// An ImagePolicy whose scopes a cluster policy governs carries the MCO's own Pending
    /// condition (status False), and Applied for the scopes still written.
    #[test]
    fn overridden_image_policies_carry_the_mco_condition() {
        let message = "has conflicting scope(s) [\"test0.com\"] that equal to or nest inside existing clusterimagepolicy, only policy from clusterimagepolicy scope(s) will be applied";
        let mut o = outcome(Condition::Overridden {
            message: message.into(),
            overridden: vec!["test0.com".into()],
            written: vec!["test2.com".into()],
            pools: vec!["worker".into()],
        });
        o.namespace = Some("testnamespace".into());
        let c = conditions(&o, None, "T");
        assert_eq!(
            (&c[0]["type"], &c[0]["status"], &c[0]["reason"]),
            (&json!("Applied"), &json!("True"), &json!("Applied"))
        );
        assert_eq!(
            (&c[1]["type"], &c[1]["status"], &c[1]["reason"]),
            (&json!("Pending"), &json!("False"), &json!("ConflictScopes"))
        );
        assert_eq!(c[1]["message"], message);
        assert_eq!(c[1]["observedGeneration"], 3);
    }
}
