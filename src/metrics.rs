//! Prometheus metrics of the admission server and the reconciler, in the text exposition
//! format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    operation: &'static str,
    verdict: &'static str,
    reason: &'static str,
}

/// An answered review, as the request counter labels it.
pub struct Review<'a> {
    pub kind: &'a str,
    pub operation: &'a str,
    pub verdict: &'static str,
    pub reason: &'static str,
}

/// Label values come from a fixed set, whatever a caller puts in a review: a bounded
/// number of series, and no allocation per request.
fn known(value: &str, values: &[&'static str]) -> &'static str {
    values
        .iter()
        .find(|v| **v == value)
        .copied()
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DutyLabels {
    duty: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    kind: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    pool: String,
    action: &'static str,
}

/// The `state` label of `cip_webhook_policies`.
pub const POLICY_STATES: [&str; 3] = ["applied", "pending", "overridden"];

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    machine_config_writes: Family<WriteLabels, Counter>,
    status_writes: Counter,
    leader: Gauge,
    duty: Family<DutyLabels, Gauge>,
    policies: Family<PolicyLabels, Gauge>,
    ready: Gauge,
    requests: Family<RequestLabels, Counter>,
    bad_requests: Counter,
    latency: Histogram,
    cert_expiry: Gauge,
    body_waits: Counter,
    body_bytes: Gauge,
    decision_waits: Counter,
    shed: Family<PortLabels, Counter>,
    pub impact: ImpactMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The running-images pass. No policy name in a label: a cluster with a thousand
/// policies keeps a fixed number of series; the conditions name the policies.
pub struct ImpactMetrics {
    images: Family<VerdictLabels, Gauge>,
    refusing: Gauge,
    registry_requests: Family<OutcomeLabels, Counter>,
    cache_bytes: Gauge,
    last_pass: Gauge,
    pass_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ImpactMetrics {
    fn register(registry: &mut Registry) -> ImpactMetrics {
        let m = ImpactMetrics {
            images: Family::default(),
            refusing: Gauge::default(),
            registry_requests: Family::default(),
            cache_bytes: Gauge::default(),
            last_pass: Gauge::default(),
            pass_seconds: Gauge::default(),
        };
        registry.register(
            "running_images",
            "Distinct running images (pool, namespace, image, digest) by verdict under the policies in force: refused means at the next pull",
            m.images.clone(),
        );
        registry.register(
            "policies_refusing_running_images",
            "Policies under which at least one running image would be refused at its next pull",
            m.refusing.clone(),
        );
        registry.register(
            "registry_requests",
            "Manifest and blob fetches of the running-images pass, by outcome (hit: answered from the cache)",
            m.registry_requests.clone(),
        );
        registry.register(
            "attachment_cache_bytes",
            "Bytes held by the running-images pass's cache of manifests and signatures",
            m.cache_bytes.clone(),
        );
        registry.register(
            "running_images_last_pass_timestamp_seconds",
            "When the last running-images pass ended (Unix seconds)",
            m.last_pass.clone(),
        );
        registry.register(
            "running_images_pass_duration_seconds",
            "How long the last running-images pass took",
            m.pass_seconds.clone(),
        );
        m
    }

    /// One pass's figures: distinct images by verdict, policies refusing some.
    pub fn passed(
        &self,
        verdicts: (usize, usize, usize),
        refusing: usize,
        ended_at: i64,
        seconds: f64,
    ) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (verdict, n) in [
            ("accepted", verdicts.0),
            ("refused", verdicts.1),
            ("unknown", verdicts.2),
        ] {
            self.images
                .get_or_create(&VerdictLabels { verdict })
                .set(count(n));
        }
        self.refusing.set(count(refusing));
        self.last_pass.set(ended_at);
        self.pass_seconds.set(seconds);
    }

    /// Requests since the last call, by outcome (`ok`, `not_found`, `error`, `hit`).
    pub fn requested(&self, outcome: &'static str, n: usize) {
        self.registry_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(n as u64);
    }

    pub fn set_cache_bytes(&self, bytes: usize) {
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cip_webhook");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by kind, operation, verdict and reason",
            requests.clone(),
        );
        let bad_requests = Counter::default();
        registry.register(
            "admission_bad_requests",
            "Requests refused before any decision (not an AdmissionReview, too large, timed out)",
            bad_requests.clone(),
        );
        // 50 µs to about 0.4 s.
        let latency = Histogram::new(exponential_buckets(0.00005, 2.0, 14));
        registry.register(
            "admission_duration_seconds",
            "Time to decide an admission review, body read to response",
            latency.clone(),
        );
        let body_waits = Counter::default();
        registry.register(
            "admission_body_waits",
            "Request bodies that waited for memory (slow or large uploads hold the body budget)",
            body_waits.clone(),
        );
        let body_bytes = Gauge::default();
        registry.register(
            "admission_body_bytes",
            "Bytes of request bodies held in memory while they arrive",
            body_bytes.clone(),
        );
        let decision_waits = Counter::default();
        registry.register(
            "admission_decision_waits",
            "Reviews that waited for a decision slot or decoding memory",
            decision_waits.clone(),
        );
        let shed = Family::<PortLabels, Counter>::default();
        registry.register(
            "connections_shed",
            "Connections closed to make room when every slot was taken, by port (admission, metrics)",
            shed.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "serving_certificate_expiry_timestamp_seconds",
            "Expiry of the serving certificate, Unix seconds",
            cert_expiry.clone(),
        );
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconcile passes by the leader, by result (ok, error, waiting)",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed, by reason",
            reconcile_errors.clone(),
        );
        // 1 ms to about 16 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile pass, render and writes",
            reconcile_duration.clone(),
        );
        let machine_config_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "machineconfig_writes",
            "MachineConfig writes accepted by the API server, by pool and action",
            machine_config_writes.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "policy status updates (ClusterImagePolicy and ImagePolicy)",
            status_writes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the reconcile lease",
            leader.clone(),
        );
        let duty = Family::<DutyLabels, Gauge>::default();
        registry.register(
            "reconcile_duty",
            "1 for what the reconciler does on this cluster: reconcile, stand_down (the MCO renders policies) or cannot_render (no MachineConfig API)",
            duty.clone(),
        );
        let policies = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "policies",
            "Policies by kind and by the state their status reports (applied, pending, overridden), as the leader last wrote it",
            policies.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while /readyz answers 200 (cluster state loaded, not shutting down)",
            ready.clone(),
        );
        let impact = ImpactMetrics::register(&mut registry);
        Metrics {
            impact,
            duty,
            policies,
            ready,
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            machine_config_writes,
            status_writes,
            leader,
            requests,
            bad_requests,
            latency,
            cert_expiry,
            body_waits,
            body_bytes,
            decision_waits,
            shed,
        }
    }
}

impl Metrics {
    /// One answered review: its kind and operation as the request said (anything else
    /// counts as `other`), the verdict and the reason of the decision.
    pub fn observe(&self, review: Review<'_>, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                kind: known(review.kind, &["ClusterImagePolicy", "ImagePolicy", "Image"]),
                operation: known(review.operation, &["CREATE", "UPDATE", "DELETE", "CONNECT"]),
                verdict: review.verdict,
                reason: review.reason,
            })
            .inc();
        self.latency.observe(seconds);
    }

    pub fn bad_request(&self) {
        self.bad_requests.inc();
    }

    pub fn body_waited(&self) {
        self.body_waits.inc();
    }

    pub fn set_body_bytes(&self, bytes: u64) {
        self.body_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn decision_waited(&self) {
        self.decision_waits.inc();
    }

    /// `port` is `admission` or `metrics`.
    pub fn connection_shed(&self, port: &'static str) {
        self.shed.get_or_create(&PortLabels { port }).inc();
    }

    pub fn set_cert_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.set(unix_seconds);
    }

    pub fn reconciled(&self, result: &'static str, seconds: f64) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.reconcile_duration.observe(seconds);
    }

    pub fn reconcile_error(&self, reason: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { reason })
            .inc();
    }

    pub fn machine_config_written(&self, pool: &str, action: &'static str) {
        self.machine_config_writes
            .get_or_create(&WriteLabels {
                pool: pool.to_string(),
                action,
            })
            .inc();
    }

    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// One series per duty, the current one at 1.
    pub fn set_duty(&self, current: &'static str) {
        for duty in cip_core::mco::Duty::LABELS {
            self.duty
                .get_or_create(&DutyLabels { duty })
                .set(i64::from(duty == current));
        }
    }

    /// One (kind, state) pair per policy. Every kind and state gets a series (0 where
    /// none), so a rule sees a drop to 0.
    pub fn set_policies<'a>(&self, policies: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut counts = std::collections::HashMap::new();
        for policy in policies {
            *counts.entry(policy).or_insert(0i64) += 1;
        }
        for kind in ["ClusterImagePolicy", "ImagePolicy"] {
            for state in POLICY_STATES {
                let n = counts.get(&(kind, state)).copied().unwrap_or(0);
                self.policies
                    .get_or_create(&PolicyLabels { kind, state })
                    .set(n);
            }
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_labels_stay_within_a_fixed_set() {
        let metrics = Metrics::default();
        for (kind, operation) in [
            ("ClusterImagePolicy", "CREATE"),
            ("Secret", "CREATE"),
            ("Whatever", "PATCH"),
        ] {
            let review = Review {
                kind,
                operation,
                verdict: "denied",
                reason: "UnhandledKind",
            };
            metrics.observe(review, 0.001);
        }
        let text = metrics.encode();
        let series = |labels: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!("cip_webhook_admission_requests_total{{{labels}}}"))
                })
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        let kind_cip = r#"kind="ClusterImagePolicy",operation="CREATE",verdict="denied",reason="UnhandledKind""#;
        assert_eq!(series(kind_cip).as_deref(), Some("1"), "{text}");
        let other = r#"kind="other",operation="CREATE",verdict="denied",reason="UnhandledKind""#;
        assert_eq!(series(other).as_deref(), Some("1"), "{text}");
        let both = r#"kind="other",operation="other",verdict="denied",reason="UnhandledKind""#;
        assert_eq!(series(both).as_deref(), Some("1"), "{text}");
        assert!(
            !text.contains("Secret") && !text.contains("PATCH"),
            "{text}"
        );
    }
}
