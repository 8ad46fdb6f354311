//! The reconciler: on every change of the watched state, the leader renders the whole
//! desired state with the core and writes only what differs: MachineConfigs (with the
//! resourceVersion read, so a concurrent writer gets a 409 instead of being overwritten),
//! then ClusterImagePolicy status, then Events for newly skipped scopes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::Client;
use serde_json::{json, Value};

use crate::kube_state::{self, ClusterState};
use crate::lease::Leadership;
use crate::mco::{self, Duty};
use crate::model::MachineConfig;
use crate::render::{self, Action, Condition, Inputs, PolicyOutcome, RenderOptions};
use crate::server::App;

pub const FIELD_MANAGER: &str = "cip-webhook";
const MAX_MESSAGE: usize = 32768;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the cluster's image configuration cannot be rendered: {0}")]
    Render(#[from] render::RenderError),
    #[error("{0} was changed by someone else; retrying with the new version")]
    Conflict(String),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost the lease before writing {0}")]
    NotLeader(String),
}

impl ReconcileError {
    /// The `reason` label of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Render(_) => "render",
            ReconcileError::Conflict(_) => "conflict",
            ReconcileError::Api { .. } => "api",
            ReconcileError::NotLeader(_) => "not_leader",
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
pub fn conditions(outcome: &PolicyOutcome, current: Option<&Value>, now: &str) -> Vec<Value> {
    let (applied, pending, reason, message) = match &outcome.condition {
        Condition::Applied { pools } => {
            let message = if pools.is_empty() {
                "every scope is rendered; no pool to write to".to_string()
            } else {
                format!(
                    "written to the MachineConfigs of pools {}",
                    pools.join(", ")
                )
            };
            (true, false, "Applied".to_string(), message)
        }
        Condition::Pending {
            reason, message, ..
        } => (false, true, reason.as_str().to_string(), message.clone()),
    };
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
    let previous = |kind: &str| {
        current
            .and_then(|s| s["conditions"].as_array())
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind)
    };
    let make = |kind: &str, status: bool| {
        let status = if status { "True" } else { "False" };
        let since = previous(kind)
            .filter(|c| c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(now);
        let mut c = json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        });
        if let Some(g) = outcome.generation {
            c["observedGeneration"] = json!(g);
        }
        c
    };
    vec![make("Applied", applied), make("Pending", pending)]
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    pub machine_config_writes: usize,
    pub status_writes: usize,
    pub events: usize,
    /// The watch has not yet shown our own last writes; nothing was done.
    pub waiting: bool,
    /// What the pass found, for /readyz: the duty and anything it waits for.
    pub detail: String,
}

pub struct Reconciler {
    pub state: Arc<ClusterState>,
    pub options: RenderOptions,
    pub app: Arc<App>,
    pub leadership: Leadership,
    pub namespace: String,
    pub identity: String,
    /// `--mode auto`: stand down where the MCO renders policies itself.
    pub auto: bool,
    client: Client,
    machine_configs: Api<DynamicObject>,
    events: Api<DynamicObject>,
    /// Our writes the watch has not shown yet: name → the resourceVersion we wrote over
    /// (None: we created it).
    expected: BTreeMap<String, (Option<String>, Instant)>,
    /// The last duty, to log when it changes.
    duty: Option<Duty>,
}

fn now_seconds() -> String {
    let t = time::OffsetDateTime::now_utc();
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&format).unwrap_or_default()
}

fn to_dynamic(mc: &MachineConfig) -> DynamicObject {
    serde_json::from_value(serde_json::to_value(mc).expect("models serialize"))
        .expect("a MachineConfig is an object")
}

impl Reconciler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        state: Arc<ClusterState>,
        options: RenderOptions,
        app: Arc<App>,
        leadership: Leadership,
        namespace: String,
        identity: String,
        auto: bool,
    ) -> Reconciler {
        let events = ApiResource::erase::<k8s_openapi::api::events::v1::Event>(&());
        Reconciler {
            machine_configs: Api::all_with(client.clone(), &kube_state::machine_config_resource()),
            events: Api::namespaced_with(client.clone(), &namespace, &events),
            client,
            state,
            options,
            app,
            leadership,
            namespace,
            identity,
            auto,
            expected: BTreeMap::new(),
            duty: None,
        }
    }

    /// ClusterImagePolicies in the version this one was read in (v1 or v1alpha1).
    fn policies(&self, api_version: &str) -> Api<DynamicObject> {
        let version = api_version.rsplit('/').next().unwrap_or("v1");
        Api::all_with(self.client.clone(), &kube_state::policy_resource(version))
    }

    /// Whether the cache still shows an object as it was before one of our writes. Any
    /// other version means the watch has passed our write (someone else may have written
    /// since: the next plan must see that at once). Bounded, should an event be lost.
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
        if self.leadership.is_leader() {
            Ok(())
        } else {
            Err(ReconcileError::NotLeader(what.to_string()))
        }
    }

    /// One pass over the whole desired state.
    pub async fn pass(&mut self) -> Result<Pass, ReconcileError> {
        let mut done = Pass::default();
        let Some((inputs, _)) = self.state.inputs() else {
            done.waiting = true;
            return Ok(done);
        };
        if self.behind(&inputs) {
            done.waiting = true;
            return Ok(done);
        }
        let absent: Vec<&str> = self.state.absent().iter().map(|s| s.as_str()).collect();
        let duty = mco::duty(self.auto, &inputs, &absent);
        if self.duty.as_ref() != Some(&duty) {
            tracing::info!(duty = duty.label(), detail = %duty.describe(), "reconcile duty");
            self.app.metrics.set_duty(duty.label());
            self.duty = Some(duty.clone());
        }
        done.detail = duty.describe();
        match duty {
            Duty::CannotRender(_) => return Ok(done),
            Duty::StandDown(_) => {
                self.hand_over(&inputs, &mut done).await?;
                return Ok(done);
            }
            Duty::Reconcile(_) => {}
        }
        let plan = render::plan(&inputs, &self.options)?;
        for pool in &plan.pools {
            if let Some(error) = &pool.error {
                tracing::warn!(pool = %pool.pool, error = %error, "pool not rendered; its MachineConfigs are left alone");
                continue;
            }
            for change in &pool.changes {
                if change.action == Action::Unchanged {
                    continue;
                }
                self.check_leader(&change.name)?;
                let existing = inputs
                    .machine_configs
                    .iter()
                    .find(|m| m.metadata.name == change.name);
                self.write(
                    change.action,
                    &change.name,
                    change.desired.as_ref(),
                    existing,
                )
                .await?;
                let before = existing.and_then(|m| m.metadata.resource_version.clone());
                self.expected
                    .insert(change.name.clone(), (before, Instant::now()));
                let action = change.action.as_str();
                tracing::info!(machine_config = %change.name, pool = %pool.pool, action, "MachineConfig written");
                self.app.metrics.machine_config_written(&pool.pool, action);
                done.machine_config_writes += 1;
            }
        }
        for outcome in &plan.policies {
            let Some(cip) = inputs
                .policies
                .iter()
                .find(|p| p.metadata.name == outcome.name)
            else {
                continue;
            };
            let current = cip.status.as_ref();
            let wanted = conditions(outcome, current, &now_seconds());
            let have = current.and_then(|s| s["conditions"].as_array());
            if have == Some(&wanted) {
                continue;
            }
            self.check_leader(&outcome.name)?;
            let patch = json!({"status": {"conditions": wanted}});
            self.policies(&cip.api_version)
                .patch_status(
                    &outcome.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(api_error(
                    format!("writing the status of ClusterImagePolicy {}", outcome.name),
                    &outcome.name,
                ))?;
            self.app.metrics.status_written();
            done.status_writes += 1;
            if let Condition::Pending {
                reason, message, ..
            } = &outcome.condition
            {
                let was = have
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Pending" && c["status"] == "True")
                    .and_then(|c| c["message"].as_str());
                if was != Some(message.as_str()) {
                    let regarding = json!({
                        "apiVersion": cip.api_version,
                        "kind": "ClusterImagePolicy",
                        "name": outcome.name,
                        "uid": cip.metadata.uid.as_deref().unwrap_or_default(),
                    });
                    self.event(
                        regarding,
                        &format!("{}.", outcome.name),
                        reason.as_str(),
                        message,
                    )
                    .await;
                    done.events += 1;
                }
            }
        }
        Ok(done)
    }

    async fn write(
        &self,
        action: Action,
        name: &str,
        desired: Option<&MachineConfig>,
        existing: Option<&MachineConfig>,
    ) -> Result<(), ReconcileError> {
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let what = format!("writing MachineConfig {name}");
        match (action, desired) {
            (Action::Create, Some(mc)) => {
                self.machine_configs
                    .create(&pp, &to_dynamic(mc))
                    .await
                    .map_err(api_error(what, name))?;
            }
            (Action::Update, Some(mc)) => {
                self.machine_configs
                    .replace(name, &pp, &to_dynamic(mc))
                    .await
                    .map_err(api_error(what, name))?;
            }
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
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(api_error(what, name)(e)),
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Standing down: where the MCO's own MachineConfig carries every scope we wrote,
    /// ours are deleted, with a log line and an Event; elsewhere they stay, so that the
    /// nodes are never without verification.
    async fn hand_over(&mut self, inputs: &Inputs, done: &mut Pass) -> Result<(), ReconcileError> {
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
                let before = existing.and_then(|m| m.metadata.resource_version.clone());
                self.expected.insert(name.clone(), (before, Instant::now()));
                self.app
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
            let regarding = json!({
                "apiVersion": "config.openshift.io/v1",
                "kind": "FeatureGate",
                "name": "cluster",
                "uid": inputs.feature_gate.as_ref().and_then(|f| f.metadata.uid.clone()).unwrap_or_default(),
            });
            self.event(regarding, "cluster.", "HandedOver", &message)
                .await;
            done.events += 1;
        }
        if !waiting.is_empty() {
            done.detail = format!("{}; {}", done.detail, waiting.join("; "));
        }
        Ok(())
    }

    /// Events are best effort: a failure is logged, never retried.
    async fn event(&self, regarding: Value, prefix: &str, reason: &str, message: &str) {
        let note: String = message.chars().take(1024).collect();
        let event: DynamicObject = match serde_json::from_value(json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"generateName": prefix, "namespace": self.namespace},
            "eventTime": crate::lease::now_micro(),
            "reportingController": "cip-webhook",
            "reportingInstance": self.identity,
            "action": "Render",
            "reason": reason,
            "note": note,
            "type": if reason == "HandedOver" { "Normal" } else { "Warning" },
            "regarding": regarding,
        })) {
            Ok(e) => e,
            Err(_) => return,
        };
        if let Err(e) = self.events.create(&PostParams::default(), &event).await {
            tracing::warn!(regarding = %prefix.trim_end_matches('.'), error = %e, "event not recorded");
        }
    }
}

/// Runs passes while this replica leads: after every change (debounced), after a failure
/// with backoff, and every `resync` regardless.
pub async fn run(mut reconciler: Reconciler, resync: Duration) {
    let mut changes = reconciler.state.subscribe();
    let mut leadership = reconciler.leadership.clone();
    let mut backoff = Duration::from_millis(100);
    let mut retry: Option<Duration> = None;
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = leadership.changed() => {}
            _ = tokio::time::sleep(retry.unwrap_or(resync)) => {}
        }
        // A burst of events (a list, an apply of many objects) makes one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
        changes.borrow_and_update();
        if !reconciler.leadership.is_leader() {
            reconciler.app.set_reconcile_status(format!(
                "standby; {} does not hold the lease",
                reconciler.identity
            ));
            retry = None;
            continue;
        }
        let started = Instant::now();
        let result = reconciler.pass().await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(pass) if pass.waiting => {
                reconciler.app.metrics.reconciled("waiting", seconds);
                retry = Some(Duration::from_millis(200));
            }
            Ok(pass) => {
                reconciler.app.metrics.reconciled("ok", seconds);
                if pass.machine_config_writes + pass.status_writes > 0 {
                    tracing::info!(
                        machine_configs = pass.machine_config_writes,
                        statuses = pass.status_writes,
                        "reconciled"
                    );
                }
                reconciler
                    .app
                    .set_reconcile_status(format!("leader; {}; in sync", pass.detail));
                backoff = Duration::from_millis(100);
                retry = None;
            }
            Err(e) => {
                reconciler.app.metrics.reconciled("error", seconds);
                reconciler.app.metrics.reconcile_error(e.metric_label());
                tracing::warn!(error = %e, retry_in = ?backoff, "reconcile failed");
                reconciler
                    .app
                    .set_reconcile_status(format!("leader; retrying in {backoff:?}: {e}"));
                retry = Some(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Reason;

    fn outcome(condition: Condition) -> PolicyOutcome {
        PolicyOutcome {
            name: "p".into(),
            generation: Some(3),
            condition,
        }
    }

    #[test]
    fn conditions_keep_transition_times_that_still_hold() {
        let applied = outcome(Condition::Applied {
            pools: vec!["master".into(), "worker".into()],
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
}
