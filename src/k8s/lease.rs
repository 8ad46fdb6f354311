//! Leader election on a `coordination.k8s.io/v1` Lease: the holder renews every third of
//! the duration; the others take over once `renewTime + leaseDurationSeconds` has passed,
//! checking at that very moment, so a crashed leader is replaced within the duration.
//! The holder stops writing a quarter of the duration before the others may take over,
//! which absorbs that much clock skew between nodes. SIGTERM releases the lease so a
//! successor starts at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
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
    /// the request time and for clocks that run apart.
    fn valid_for(&self) -> Duration {
        self.duration * 3 / 4
    }
}

/// Whether this replica may write now. Cloned into every writer.
#[derive(Debug, Clone)]
pub struct Leadership {
    until: watch::Receiver<Option<Instant>>,
}

impl Leadership {
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

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen from another holder and when it was first seen.
    observed: Option<(LeaseSpec, Instant)>,
}

enum Outcome {
    Leader,
    /// Another holder, and how long until its lease runs out.
    Follower(String, Option<Duration>),
}

/// Time left before a lease renewed at `renew` for `duration` expires, by our clock.
fn remaining(renew: Option<&MicroTime>, duration: Duration) -> Option<Duration> {
    let duration = SignedDuration::try_from(duration).ok()?;
    let expires = renew?.0.checked_add(duration).ok()?;
    let left = expires.duration_since(Timestamp::now());
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
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
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let seconds = spec.lease_duration_seconds.unwrap_or(15).max(0);
        let duration = Duration::from_secs(seconds as u64);
        if holder == me {
            lease.spec = Some(self.record(&me, spec.acquire_time.clone(), transitions));
        } else {
            // By the record's renewTime; where that is missing, by how long we have seen
            // the same record.
            let left =
                remaining(spec.renew_time.as_ref(), duration).or_else(|| match &self.observed {
                    Some((seen, since)) if *seen == spec => {
                        Some(duration.saturating_sub(since.elapsed()))
                    }
                    _ => {
                        self.observed = Some((spec.clone(), Instant::now()));
                        Some(duration)
                    }
                });
            if !holder.is_empty() && left.is_some_and(|l| !l.is_zero()) {
                return Ok(Outcome::Follower(holder, left));
            }
            lease.spec = Some(self.record(&me, None, transitions + 1));
        }
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
                    // Try again the moment the holder's lease runs out.
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
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
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
    (Leadership { until: rx }, task)
}
