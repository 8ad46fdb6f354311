//! Prometheus metrics of the admission server, in the text exposition format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::admission::Decision;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: String,
    operation: String,
    verdict: String,
    reason: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    bad_requests: Counter,
    latency: Histogram,
    cert_expiry: Gauge,
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
        let cert_expiry = Gauge::default();
        registry.register(
            "serving_certificate_expiry_timestamp_seconds",
            "Expiry of the serving certificate, Unix seconds",
            cert_expiry.clone(),
        );
        Metrics {
            registry,
            requests,
            bad_requests,
            latency,
            cert_expiry,
        }
    }
}

impl Metrics {
    pub fn observe(&self, decision: &Decision, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                kind: decision.kind.clone(),
                operation: decision.operation.clone(),
                verdict: decision.verdict.as_str().to_string(),
                reason: decision.reason.to_string(),
            })
            .inc();
        self.latency.observe(seconds);
    }

    pub fn bad_request(&self) {
        self.bad_requests.inc();
    }

    pub fn set_cert_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.set(unix_seconds);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
