//! The running-images condition on each policy: `RunningImagesAccepted`, written by the
//! lease holder by server-side apply under a field manager of its own
//! (`cip-webhook-impact`), so that it neither drops nor is dropped by the reconciler's
//! `Applied`/`Pending` (same object, another manager) or the machine-config-operator's
//! conditions. A condition is written when its words change, at most once a minute per
//! policy; a policy whose refused count goes from zero to more also gets a Warning Event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::Value;

use crate::k8s::reconcile::{
    apply_status, condition, now_seconds, truncated, EVENT_INSTANCE_LIMIT, EVENT_NOTE_LIMIT,
};
use crate::k8s::store::ClusterState;
use cip_core::model::{ClusterImagePolicy, PolicyKind};
use cip_core::render::Inputs;
use cip_core::running::{running_images_condition, PolicyTally};

pub const FIELD_MANAGER: &str = "cip-webhook-impact";
pub const CONDITION: &str = "RunningImagesAccepted";
/// The least time between two writes of one policy's condition.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// (status, reason, message) as last written or found.
type Words = (String, String, String);

pub struct ConditionWriter {
    client: kube::Client,
    /// The policies' statuses as last seen: what another writer did to the condition
    /// since ours (status writes do not re-render, so the inputs' copies lag).
    state: Arc<ClusterState>,
    recorder: Recorder,
    min_interval: Duration,
    /// Per policy label: the words written and when.
    written: BTreeMap<String, (Words, Option<Instant>)>,
}

/// What one round of writes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub conditions: usize,
    /// Changed words held back by the once-a-minute limit.
    pub deferred: usize,
    pub events: usize,
    pub errors: usize,
}

/// The label `preview` and the tallies give a policy.
pub fn label(policy: &ClusterImagePolicy, kind: PolicyKind) -> String {
    match kind {
        PolicyKind::Cluster => format!("ClusterImagePolicy {}", policy.metadata.name),
        PolicyKind::Namespaced => format!(
            "ImagePolicy {}/{}",
            policy.namespace(),
            policy.metadata.name
        ),
    }
}

fn current_words(status: Option<&Value>) -> Option<Words> {
    let c = status?["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == CONDITION)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// What to do with one policy's condition.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The object already says it.
    Done,
    /// Written less than the interval ago: at a later pass.
    Deferred,
    Write,
}

/// The object is the truth: a condition another writer dropped or changed is written
/// again (once the interval since our last write has passed), however sure our memory.
fn next_step(
    found: Option<&Words>,
    remembered: Option<&(Words, Option<Instant>)>,
    words: &Words,
    min_interval: Duration,
) -> Step {
    if found == Some(words) {
        return Step::Done;
    }
    match remembered {
        Some((_, Some(at))) if at.elapsed() < min_interval => Step::Deferred,
        _ => Step::Write,
    }
}

impl ConditionWriter {
    pub fn new(
        client: kube::Client,
        state: Arc<ClusterState>,
        identity: &str,
        min_interval: Duration,
    ) -> ConditionWriter {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(truncated(identity, EVENT_INSTANCE_LIMIT).to_string()),
        };
        ConditionWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            state,
            min_interval,
            written: BTreeMap::new(),
        }
    }

    /// Brings every policy's condition to what `tallies` say (`indexing`: the index is not
    /// whole yet). `leading` is asked before each write.
    pub async fn write(
        &mut self,
        inputs: &Inputs,
        tallies: &[PolicyTally],
        indexing: bool,
        leading: impl Fn() -> bool,
    ) -> Written {
        let mut done = Written::default();
        let by_label: BTreeMap<&str, &PolicyTally> =
            tallies.iter().map(|t| (t.policy.as_str(), t)).collect();
        let all = (inputs.policies.iter().map(|p| (p, PolicyKind::Cluster))).chain(
            inputs
                .image_policies
                .iter()
                .map(|p| (p, PolicyKind::Namespaced)),
        );
        let statuses = self.state.policy_statuses();
        let mut live = Vec::new();
        for (policy, kind) in all {
            let label = label(policy, kind);
            live.push(label.clone());
            let (status, reason, message) =
                running_images_condition(by_label.get(label.as_str()).copied(), indexing);
            let words: Words = (status.into(), reason.into(), message.clone());
            let found = match statuses.get(&(kind, policy.key())) {
                Some(status) => current_words(status.as_ref()),
                None => current_words(policy.status.as_ref()),
            };
            let remembered = self.written.get(&label).cloned();
            let step = next_step(
                found.as_ref(),
                remembered.as_ref(),
                &words,
                self.min_interval,
            );
            match step {
                Step::Done => continue,
                Step::Deferred => {
                    done.deferred += 1;
                    continue;
                }
                Step::Write => {}
            }
            let before = remembered.map(|(w, _)| w).or(found);
            if !leading() {
                return done;
            }
            let now = now_seconds();
            let c = condition(
                CONDITION,
                status,
                reason,
                &message,
                policy.metadata.generation,
                policy.status.as_ref(),
                &now,
            );
            match apply_status(&self.client, policy, kind, &[c], FIELD_MANAGER).await {
                Ok(()) => done.conditions += 1,
                Err(e) => {
                    tracing::warn!(policy = %label, error = %e, "running-images condition not written");
                    done.errors += 1;
                    continue;
                }
            }
            let refused_before = before.is_some_and(|w| w.1 == "SomeRefused");
            if reason == "SomeRefused" && !refused_before {
                self.event(policy, kind, &message).await;
                done.events += 1;
            }
            self.written.insert(label, (words, Some(Instant::now())));
        }
        self.written.retain(|l, _| live.contains(l));
        done
    }

    /// Best effort, as every Event of ours.
    async fn event(&self, policy: &ClusterImagePolicy, kind: PolicyKind, message: &str) {
        let version = policy.api_version.clone();
        let regarding = ObjectReference {
            api_version: Some(version),
            kind: Some(kind.as_str().into()),
            name: Some(policy.metadata.name.clone()),
            namespace: (kind == PolicyKind::Namespaced).then(|| policy.namespace().to_string()),
            uid: policy.metadata.uid.clone(),
            ..Default::default()
        };
        const SUFFIX: &str = " (at their next pull)";
        let note = truncated(message, EVENT_NOTE_LIMIT - SUFFIX.len());
        let event = Event {
            type_: EventType::Warning,
            reason: "RunningImagesRefused".into(),
            note: Some(format!("{note}{SUFFIX}")),
            action: "JudgeRunningImages".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &regarding).await {
            tracing::warn!(policy = %policy.metadata.name, error = %e, "event not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(status: &str) -> Words {
        (
            status.into(),
            "AllAccepted".into(),
            "covers 1 running image".into(),
        )
    }

    #[test]
    fn a_condition_someone_else_dropped_is_written_again_after_the_interval() {
        let minute = Duration::from_secs(60);
        let want = words("True");
        // Already on the object: nothing, whatever our memory.
        assert_eq!(next_step(Some(&want), None, &want, minute), Step::Done);
        // Never written, not on the object: written.
        assert_eq!(next_step(None, None, &want, minute), Step::Write);
        // Written a moment ago, not yet seen by the watch (or dropped at once): later.
        let just_now = (want.clone(), Some(Instant::now()));
        assert_eq!(
            next_step(None, Some(&just_now), &want, minute),
            Step::Deferred
        );
        // Written long ago and since dropped by another writer: again.
        let long_ago = Instant::now().checked_sub(Duration::from_secs(120));
        let earlier = (want.clone(), long_ago);
        assert_eq!(next_step(None, Some(&earlier), &want, minute), Step::Write);
        // Changed words within the interval wait; found at process start (no time) go.
        let other = (words("False"), Some(Instant::now()));
        assert_eq!(
            next_step(Some(&other.0), Some(&other), &want, minute),
            Step::Deferred
        );
        assert_eq!(
            next_step(Some(&words("False")), None, &want, minute),
            Step::Write
        );
    }
}
