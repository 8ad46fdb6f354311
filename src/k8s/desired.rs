//! The desired state: one render per settled change of the watched cluster, on a
//! blocking thread so that no request, probe or lease renewal waits behind it, published
//! on a `watch` channel for admission and the reconciler alike.
//!
//! A GitOps sync that applies a hundred policies at once is a burst of a hundred watch
//! events; rendering after each would make the reconciler write each MachineConfig (a
//! rollout on every node) again and again. The settle window coalesces them: a change
//! after a quiet spell is rendered after `debounce`, so a single edit reaches the nodes at
//! once; a change that follows the previous one within `quiet` is part of a burst, and
//! rendering waits until `quiet` passes without a change, never longer than `max`. A burst
//! shorter than `max` is therefore written at most twice: its first change, and the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::k8s::store::{ClusterState, Source};
use cip_core::render::{self, Inputs, Plan, RenderError, RenderOptions};
use cip_core::snapshot::Snapshot;

/// Everything derived from one snapshot of the cluster.
#[derive(Debug)]
pub struct Desired {
    /// The store's change count when the inputs were taken.
    pub generation: u64,
    pub inputs: Arc<Inputs>,
    /// Objects left out because they do not decode (`Kind name: error`).
    pub undecodable: Vec<String>,
    /// APIs the cluster does not serve.
    pub absent: Vec<Source>,
    pub plan: Result<Plan, RenderError>,
    pub snapshot: Arc<Snapshot>,
    /// How long rendering took.
    pub rendered_in: Duration,
}

/// What the desired-state task publishes.
#[derive(Debug, Clone)]
pub enum Published {
    /// Not every watcher has listed yet: what is missing.
    Waiting(String),
    Ready(Arc<Desired>),
}

impl Published {
    pub fn ready(&self) -> Option<&Arc<Desired>> {
        match self {
            Published::Ready(d) => Some(d),
            Published::Waiting(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    /// After a lone change.
    pub debounce: Duration,
    /// Without a change, to end a burst.
    pub quiet: Duration,
    /// After the first change of a burst, at most.
    pub max: Duration,
}

impl Default for Settle {
    fn default() -> Self {
        Settle {
            debounce: Duration::from_millis(20),
            quiet: Duration::from_millis(250),
            // A 100-object `kubectl apply` spans about 7 s, a sync at client speed longer:
            // written at its first change and once at its end, not every few seconds.
            max: Duration::from_secs(15),
        }
    }
}

/// Returns once the change that woke the caller has settled ([`Settle`]), with the time
/// of the last change seen; `previous` is that time from the call before.
pub async fn settle(
    changes: &mut watch::Receiver<u64>,
    settle: Settle,
    previous: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let first = tokio::time::Instant::now();
    let deadline = first + settle.max;
    let in_burst = previous.is_some_and(|p| first.duration_since(p) < settle.quiet);
    let mut last = first;
    if !in_burst {
        tokio::time::sleep(settle.debounce).await;
        if !changes.has_changed().unwrap_or(false) {
            return last;
        }
        last = tokio::time::Instant::now();
    }
    changes.borrow_and_update();
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return last;
                }
                last = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until((last + settle.quiet).min(deadline)) => return last,
        }
    }
}

/// Renders after every settled change until the store goes away.
pub async fn run(
    state: Arc<ClusterState>,
    options: RenderOptions,
    timing: Settle,
    out: watch::Sender<Published>,
) {
    let mut changes = state.subscribe();
    let mut previous = None;
    // Per-policy validation kept between renders: a change re-checks the changed policies.
    // Lent to each render and handed back; a render that panics leaves a fresh one.
    let mut memo = render::Memo::default();
    loop {
        let generation = *changes.borrow_and_update();
        match state.inputs() {
            None => {
                let waiting = state.waiting_for().join(", ");
                out.send_replace(Published::Waiting(format!(
                    "waiting for the first list of: {waiting}"
                )));
            }
            Some((inputs, undecodable)) => {
                for problem in &undecodable {
                    tracing::warn!(problem = %problem, "object left out of the cluster state");
                }
                let absent = state.absent();
                let options = options.clone();
                let mut lent = std::mem::take(&mut memo);
                let rendered = tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let inputs = Arc::new(inputs);
                    let plan = render::plan_with(&inputs, &options, &mut lent);
                    let snapshot =
                        Snapshot::from_plan(Arc::clone(&inputs), plan.as_ref().ok(), &options);
                    let desired = Desired {
                        generation,
                        inputs,
                        undecodable,
                        absent,
                        plan,
                        snapshot: Arc::new(snapshot),
                        rendered_in: started.elapsed(),
                    };
                    (desired, lent)
                })
                .await;
                match rendered {
                    Ok((desired, returned)) => {
                        memo = returned;
                        tracing::debug!(generation, rendered_in = ?desired.rendered_in, "desired state rendered");
                        out.send_replace(Published::Ready(Arc::new(desired)));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rendering panicked; keeping the last desired state")
                    }
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
        previous = Some(settle(&mut changes, timing, previous).await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_waits_the_debounce_a_burst_its_quiet_bounded_by_max() {
        use tokio::time::Instant;
        let timing = Settle::default();
        let (tx, mut rx) = watch::channel(0u64);
        let tx = Arc::new(tx);

        // A lone change: rendered after the debounce.
        tx.send_modify(|n| *n += 1);
        rx.changed().await.unwrap();
        let start = Instant::now();
        let mut previous = Some(settle(&mut rx, timing, None).await);
        assert_eq!(start.elapsed(), timing.debounce);

        // Changes every 100 ms for 10 s (a sync at client speed): the first at once, the
        // rest `quiet` after the last; then changes every 100 ms for 20 s: one render per
        // `max` within it.
        let feeder = |count: usize| {
            let tx = Arc::clone(&tx);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for _ in 0..count {
                    tx.send_modify(|n| *n += 1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let mut renders = Vec::new();
        for (count, want) in [(100, 2), (200, 3)] {
            let feeding = feeder(count);
            let begin = Instant::now();
            for _ in 0..want {
                rx.changed().await.unwrap();
                previous = Some(settle(&mut rx, timing, previous).await);
                renders.push(begin.elapsed().as_millis());
            }
            feeding.await.unwrap();
            assert!(!rx.has_changed().unwrap(), "{renders:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(renders, [1020, 11150, 1020, 16100, 21150]);

        // An echo of the render's own writes 5 ms after it, then an edit 300 ms later:
        // the edit is not part of a burst.
        tokio::time::sleep(Duration::from_secs(1)).await;
        rx.borrow_and_update();
        tx.send_modify(|n| *n += 1);
        rx.changed().await.unwrap();
        let lone = settle(&mut rx, timing, None).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        tx.send_modify(|n| *n += 1);
        rx.changed().await.unwrap();
        let echo = settle(&mut rx, timing, Some(lone)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send_modify(|n| *n += 1);
        rx.changed().await.unwrap();
        let begin = Instant::now();
        previous = Some(settle(&mut rx, timing, Some(echo)).await);
        assert_eq!(begin.elapsed(), timing.debounce);

        // After a quiet spell, a burst of 5 changes 10 ms apart, within one debounce of
        // each other: one render, `quiet` after the last.
        tokio::time::sleep(Duration::from_secs(1)).await;
        rx.borrow_and_update();
        let feeder = {
            let tx = Arc::clone(&tx);
            tokio::spawn(async move {
                for _ in 0..5 {
                    tx.send_modify(|n| *n += 1);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let begin = Instant::now();
        rx.changed().await.unwrap();
        settle(&mut rx, timing, previous).await;
        assert_eq!(begin.elapsed(), Duration::from_millis(290));
        feeder.await.unwrap();
        assert!(
            !rx.has_changed().unwrap(),
            "nothing left for another render"
        );
    }
}
