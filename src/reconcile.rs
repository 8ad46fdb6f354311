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
}

pub struct Reconciler {
    pub state: Arc<ClusterState>,
    pub options: RenderOptions,
    pub app: Arc<App>,
    pub leadership: Leadership,
    pub namespace: String,
    pub identity: String,
    policies: Api<DynamicObject>,
    policy_resource: ApiResource,
    machine_configs: Api<DynamicObject>,
    events: Api<DynamicObject>,
    /// Our writes the watch has not shown yet: name → resourceVersion (None: deleted).
    expected: BTreeMap<String, (Option<String>, Instant)>,
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
    pub fn new(
        client: Client,
        state: Arc<ClusterState>,
        options: RenderOptions,
        app: Arc<App>,
        leadership: Leadership,
        namespace: String,
        identity: String,
    ) -> Reconciler {
        let policy_resource = kube_state::policy_resource(&state.policy_version);
        let events = ApiResource::erase::<k8s_openapi::api::events::v1::Event>(&());
        Reconciler {
            policies: Api::all_with(client.clone(), &policy_resource),
            policy_resource,
            machine_configs: Api::all_with(client.clone(), &kube_state::machine_config_resource()),
            events: Api::namespaced_with(client, &namespace, &events),
            state,
            options,
            app,
            leadership,
            namespace,
            identity,
            expected: BTreeMap::new(),
        }
    }

    /// Whether the cache still lacks one of our writes (bounded, in case someone else
    /// wrote right after us).
    fn behind(&mut self, inputs: &Inputs) -> bool {
        self.expected.retain(|name, (rv, at)| {
            let cached = inputs
                .machine_configs
                .iter()
                .find(|m| &m.metadata.name == name)
                .map(|m| m.metadata.resource_version.clone());
            let caught_up = match (rv, cached) {
                (None, None) => true,
                (Some(rv), Some(Some(c))) => *rv == c,
                _ => false,
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
                let written = self
                    .write(
                        change.action,
                        &change.name,
                        change.desired.as_ref(),
                        existing,
                    )
                    .await?;
                self.expected
                    .insert(change.name.clone(), (written, Instant::now()));
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
            self.policies
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
                    self.event(
                        cip.metadata.uid.as_deref(),
                        &outcome.name,
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
    ) -> Result<Option<String>, ReconcileError> {
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let what = format!("writing MachineConfig {name}");
        match (action, desired) {
            (Action::Create, Some(mc)) => {
                let created = self
                    .machine_configs
                    .create(&pp, &to_dynamic(mc))
                    .await
                    .map_err(api_error(what, name))?;
                Ok(created.metadata.resource_version)
            }
            (Action::Update, Some(mc)) => {
                let replaced = self
                    .machine_configs
                    .replace(name, &pp, &to_dynamic(mc))
                    .await
                    .map_err(api_error(what, name))?;
                Ok(replaced.metadata.resource_version)
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
                    Ok(_) => Ok(None),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                    Err(e) => Err(api_error(what, name)(e)),
                }
            }
            _ => Ok(existing.and_then(|m| m.metadata.resource_version.clone())),
        }
    }

    /// Events are best effort: a failure is logged, never retried.
    async fn event(&self, uid: Option<&str>, policy: &str, reason: &str, message: &str) {
        let note: String = message.chars().take(1024).collect();
        let event: DynamicObject = match serde_json::from_value(json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"generateName": format!("{policy}."), "namespace": self.namespace},
            "eventTime": crate::lease::now_micro(),
            "reportingController": "cip-webhook",
            "reportingInstance": self.identity,
            "action": "Render",
            "reason": reason,
            "note": note,
            "type": "Warning",
            "regarding": {
                "apiVersion": self.policy_resource.api_version,
                "kind": "ClusterImagePolicy",
                "name": policy,
                "uid": uid.unwrap_or_default(),
            },
        })) {
            Ok(e) => e,
            Err(_) => return,
        };
        if let Err(e) = self.events.create(&PostParams::default(), &event).await {
            tracing::warn!(policy = %policy, error = %e, "event not recorded");
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
                    .set_reconcile_status("leader; in sync".into());
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
