//! What admission answers from, fed from the desired state and the store: the latest
//! render's snapshot, with the store's current objects (a render waits for a burst to
//! settle, but an Image update must not be judged against policies missing from it), and
//! the status line /readyz shows. The one place a snapshot is rebuilt; the runtime only
//! says where it goes ([`Sink`]).

use std::sync::Arc;

use cip_core::snapshot::Snapshot;

use crate::k8s::desired::{Desired, Published};
use crate::k8s::store::ClusterState;

/// Where the feed publishes.
pub trait Sink: Send + Sync {
    /// Whether admission is served here (the reconciler's Deployment serves none, and
    /// skips the refresh).
    fn serves_admission(&self) -> bool;
    fn snapshot(&self, snapshot: Arc<Snapshot>, status: String);
    fn status(&self, status: String);
}

/// Publishes every desired state, and the store's objects within `FRESH` of a change
/// (off the async workers); what needs the render (the size budget, the policies in
/// force) follows with the next one. Returns when either channel closes.
pub async fn run(
    state: Arc<ClusterState>,
    mut desired: tokio::sync::watch::Receiver<Published>,
    sink: Arc<dyn Sink>,
) {
    const FRESH: std::time::Duration = std::time::Duration::from_millis(10);
    let serves_admission = sink.serves_admission();
    let mut changes = state.subscribe();
    let mut last: Option<(Arc<Desired>, String)> = None;
    // What is published already (the first wait) is shown at once.
    desired.mark_changed();
    // Watch errors end without an event (a watch resumed where it was): the status is
    // looked at again now and then, so /readyz stops saying "retrying" once they have.
    let mut recheck = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                if let Some((d, status)) = last.as_mut() {
                    let now = state_status(d, &state);
                    if now != *status {
                        sink.status(now.clone());
                        *status = now;
                    }
                }
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                let published = desired.borrow_and_update().clone();
                match published {
                    Published::Waiting(why) => sink.status(why),
                    Published::Ready(d) => {
                        let status = state_status(&d, &state);
                        let missing = d.inputs.missing_cluster_version();
                        if missing.is_some() && last.as_ref().is_none_or(|(l, _)| l.inputs.missing_cluster_version().is_none()) {
                            tracing::warn!("{}", missing.unwrap_or_default());
                        }
                        let snapshot = if serves_admission && *changes.borrow() > d.generation {
                            fresh(&d, &state).await
                        } else {
                            Arc::clone(&d.snapshot)
                        };
                        sink.snapshot(snapshot, status.clone());
                        last = Some((d, status));
                    }
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                changes.borrow_and_update();
                if !serves_admission {
                    continue;
                }
                tokio::time::sleep(FRESH).await;
                changes.borrow_and_update();
                if let Some((d, status)) = &last {
                    sink.snapshot(fresh(d, &state).await, status.clone());
                }
            }
        }
    }
}

/// The published snapshot with the store's objects as they are now, built on a blocking
/// thread (it copies every policy).
async fn fresh(d: &Arc<Desired>, state: &Arc<ClusterState>) -> Arc<Snapshot> {
    let (d, state) = (Arc::clone(d), Arc::clone(state));
    let published = Arc::clone(&d.snapshot);
    tokio::task::spawn_blocking(move || match state.admission_inputs() {
        Some(inputs) => Arc::new(d.snapshot.with_inputs(Arc::new(inputs))),
        None => Arc::clone(&d.snapshot),
    })
    .await
    .unwrap_or(published)
}

fn state_status(d: &Desired, state: &ClusterState) -> String {
    let mut status = format!(
        "cluster state: {} ClusterImagePolicies",
        d.inputs.policies.len()
    );
    if !d.absent.is_empty() {
        let names: Vec<&str> = d.absent.iter().map(|s| s.as_str()).collect();
        status.push_str(&format!(
            "; not served by this cluster (treated as empty): {}",
            names.join(", ")
        ));
    }
    if let Some(missing) = d.inputs.missing_cluster_version() {
        status.push_str(&format!("; {missing}"));
    }
    let errors = state.errors();
    if !errors.is_empty() {
        status.push_str(&format!("; retrying: {}", errors.join("; ")));
    }
    status
}
