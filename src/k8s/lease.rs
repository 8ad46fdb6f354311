//! Leader election on a `coordination.k8s.io/v1` Lease, judged as client-go's
//! `leaderelection` judges it: a foreign record expires a lease duration after this
//! replica *first saw it unchanged*, by this replica's own monotonic clock. The record's
//! `renewTime` is another node's wall clock and is never compared with ours, so skew in
//! either direction neither hands the lease to a replica whose clock runs fast nor keeps
//! a dead leader's lease alive; a record that keeps changing is never taken. The holder
//! renews every third of the duration and stops writing a quarter of the duration before
//! anyone may take over (measured on the monotonic clock from before its renewal
//! request). SIGTERM releases the lease; the standbys watch the Lease object, so a
//! released one is taken within a round trip.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::Client;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl LeaseConfig {
    fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How long a successful renewal lets us write: the lease duration less a margin for
    /// the request time and for clock rates that drift apart.
    fn valid_for(&self) -> Duration {
        self.duration * 3 / 4
    }
}

/// Whether this replica may write now. Cloned into every writer.
#[derive(Debug, Clone)]
pub struct Leadership {
    until: watch::Receiver<Option<Instant>>,
    /// The sender of a leadership no Lease backs ([`Leadership::without_lease`]).
    _own: Option<std::sync::Arc<watch::Sender<Option<Instant>>>>,
}

impl Leadership {
    /// Leading for good, without a Lease: for a dry run, which writes nothing and so must
    /// never take the Lease from the replica that does.
    pub fn without_lease() -> Leadership {
        let forever = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (tx, until) = watch::channel(Some(forever));
        Leadership {
            until,
            _own: Some(std::sync::Arc::new(tx)),
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(*self.until.borrow(), Some(t) if Instant::now() < t)
    }

    /// Resolves on every renewal, won or lost lease; false once the elector is gone.
    /// Leadership can lapse without one (a late renewal), so a caller compares
    /// [`Leadership::is_leader`] before and after rather than trusting a flip to be sent.
    pub async fn updated(&mut self) -> bool {
        let alive = self.until.changed().await.is_ok();
        self.until.borrow_and_update();
        alive
    }
}

/// What this replica has seen of a Lease record held by someone else: the record, and
/// when (by our monotonic clock) we first saw it as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub record: LeaseSpec,
    pub since: Instant,
}

/// What to do about the record read at `now`.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Ours: renew it.
    Renew,
    /// Free (never held, released) or expired: take it.
    Take,
    /// Someone else's, valid for this much longer by our observation.
    Wait { holder: String, left: Duration },
}

/// The pure part of the election, as client-go's `tryAcquireOrRenew` decides it: a
/// foreign record is valid until `leaseDurationSeconds` after we first observed it in its
/// current form. `observed` is updated to the record read.
pub fn decide(
    me: &str,
    record: &LeaseSpec,
    observed: &mut Option<Observed>,
    now: Instant,
) -> Decision {
    let holder = record.holder_identity.clone().unwrap_or_default();
    if holder == me {
        *observed = None;
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Take;
    }
    let since = match observed {
        Some(o) if o.record == *record => o.since,
        _ => {
            *observed = Some(Observed {
                record: record.clone(),
                since: now,
            });
            now
        }
    };
    let seconds = record.lease_duration_seconds.unwrap_or(15).max(0) as u64;
    let expires = since + Duration::from_secs(seconds);
    match expires.checked_duration_since(now) {
        Some(left) if !left.is_zero() => Decision::Wait { holder, left },
        _ => Decision::Take,
    }
}

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
}

enum Outcome {
    Leader,
    /// Another holder, and how long until its lease runs out by our observation.
    Follower(String, Option<Duration>),
}

impl Elector {
    fn record(&self, holder: &str, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(
                self.config.duration.as_secs().clamp(1, i32::MAX as u64) as i32
            ),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Outcome, kube::Error> {
        let me = self.config.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.record(&me, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Leader),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    Ok(Outcome::Follower(String::new(), None))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        lease.spec = Some(
            match decide(&me, &spec, &mut self.observed, Instant::now()) {
                Decision::Renew => self.record(&me, spec.acquire_time.clone(), transitions),
                Decision::Take => self.record(&me, None, transitions + 1),
                Decision::Wait { holder, left } => {
                    return Ok(Outcome::Follower(holder, Some(left)))
                }
            },
        );
        // With the resourceVersion read: a record that changed meanwhile is a 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observed = None;
                Ok(Outcome::Leader)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Follower(holder, None)),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up so that a successor need not wait for it to expire.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// Resolves when the Lease object changes (a standby's cue to look again), or after
/// `timeout`. A watch that cannot be opened just waits out the timeout.
async fn lease_changed(api: &Api<Lease>, name: &str, timeout: Duration) {
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(timeout.as_secs().clamp(1, 290) as u32);
    let wait = async {
        let Ok(stream) = api.watch(&wp, "0").await else {
            std::future::pending::<()>().await;
            return;
        };
        let mut stream = stream.boxed();
        // The first event replays the current object; the next is a change.
        let mut seen = 0;
        while let Some(event) = stream.next().await {
            if matches!(
                event,
                Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_))
            ) {
                seen += 1;
                if seen > 1 {
                    return;
                }
            }
        }
        std::future::pending::<()>().await;
    };
    let _ = tokio::time::timeout(timeout, wait).await;
}

/// Runs the election until `stop` turns true, then releases the lease if held.
pub fn spawn(
    client: Client,
    config: LeaseConfig,
    mut stop: watch::Receiver<bool>,
    on_change: impl Fn(bool) + Send + 'static,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let api = Api::namespaced(client, &config.namespace);
    let mut elector = Elector {
        api,
        config,
        observed: None,
    };
    let task = tokio::spawn(async move {
        let mut leading = false;
        loop {
            let started = Instant::now();
            let result = elector.try_acquire_or_renew().await;
            let mut next = elector.config.renew_every();
            let now_leading = match result {
                Ok(Outcome::Leader) => {
                    tx.send_replace(Some(started + elector.config.valid_for()));
                    true
                }
                Ok(Outcome::Follower(holder, left)) => {
                    tx.send_replace(None);
                    // Look again the moment the holder's lease runs out by our count.
                    if let Some(left) = left {
                        next = next.min(left + Duration::from_millis(5));
                    }
                    if leading {
                        tracing::warn!(holder = %holder, "lost the reconcile lease");
                    }
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    // Leadership lapses by itself when the validity runs out.
                    leading && tx.borrow().is_some_and(|t| Instant::now() < t)
                }
            };
            if now_leading != leading {
                if now_leading {
                    tracing::info!(identity = %elector.config.identity, "acquired the reconcile lease");
                }
                on_change(now_leading);
                leading = now_leading;
            }
            // A standby also looks again as soon as the Lease changes: a release is
            // taken at once instead of at the next retry.
            let wait = async {
                if leading {
                    tokio::time::sleep(next).await;
                } else {
                    lease_changed(&elector.api, &elector.config.name, next).await;
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    tx.send_replace(None);
                    if leading {
                        on_change(false);
                        match elector.release().await {
                            Ok(()) => tracing::info!("released the reconcile lease"),
                            Err(e) => tracing::warn!(error = %e, "could not release the reconcile lease"),
                        }
                    }
                    return;
                }
            }
        }
    });
    (
        Leadership {
            until: rx,
            _own: None,
        },
        task,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renew: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renew)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    fn hours(h: i64) -> Timestamp {
        Timestamp::now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(h))
            .unwrap()
    }

    /// A peer whose clock runs an hour behind writes renewTimes an hour old: a replica
    /// comparing them with its own clock would take the lease from a healthy leader at
    /// once. By observation it waits the full duration, and never while the record changes.
    #[test]
    fn a_peer_an_hour_behind_keeps_its_lease_while_it_renews() {
        let t0 = Instant::now();
        let mut observed = None;
        let mut renew = hours(-1);
        for second in 0..60u64 {
            let now = t0 + Duration::from_secs(second);
            if second % 5 == 0 {
                renew = renew
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5))
                    .unwrap();
            }
            let decision = decide("b", &record("a", renew, 3), &mut observed, now);
            assert!(
                matches!(decision, Decision::Wait { .. }),
                "second {second}: {decision:?}"
            );
        }
    }

    /// A peer an hour ahead that dies: its last renewTime is an hour in our future, which
    /// by wall clocks would keep its lease for an hour more. By observation: 15 s.
    #[test]
    fn a_dead_peer_an_hour_ahead_is_replaced_after_the_duration() {
        let t0 = Instant::now();
        let mut observed = None;
        let last = record("a", hours(1), 3);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            decide("b", &last, &mut observed, at(0)),
            Decision::Wait {
                holder: "a".into(),
                left: Duration::from_secs(15)
            }
        );
        assert!(matches!(
            decide("b", &last, &mut observed, at(14)),
            Decision::Wait { .. }
        ));
        assert_eq!(decide("b", &last, &mut observed, at(15)), Decision::Take);
    }

    #[test]
    fn a_changed_record_restarts_the_count_and_a_released_one_is_free() {
        let t0 = Instant::now();
        let mut observed = None;
        let first = record("a", Timestamp::now(), 1);
        decide("b", &first, &mut observed, t0);
        let renewed = record("a", hours(0), 2);
        let at = t0 + Duration::from_secs(14);
        assert_eq!(
            decide("b", &renewed, &mut observed, at),
            Decision::Wait {
                holder: "a".into(),
                left: Duration::from_secs(15)
            }
        );
        let mut released = renewed.clone();
        released.holder_identity = None;
        assert_eq!(decide("b", &released, &mut observed, at), Decision::Take);
        assert_eq!(decide("a", &renewed, &mut observed, at), Decision::Renew);
    }
}
