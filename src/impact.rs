//! The running-images task of the lease holder: the pod and node index (`k8s::pods`),
//! judged in the background on each pool as `preview` judges (`pull::impact`, through a
//! bounded cache that outlives the passes), written as each policy's
//! `RunningImagesAccepted` condition (`k8s::impact`) and as metrics. Only this task talks
//! to registries, with the cluster's pull secret; admission never does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::k8s::desired::Published;
use crate::k8s::impact::ConditionWriter;
use crate::k8s::lease::Leadership;
use crate::metrics::Metrics;
use crate::pull::cache::{Bounds, Cached, Retention, Stats};
use crate::pull::impact::{Copy, Transfer};
use crate::pull::registry::Client;
use crate::unix_now;
use cip_core::render::Inputs;
use cip_sigstore::judge::Memo;

#[derive(Debug, Clone)]
pub struct ImpactOptions {
    /// Between passes when nothing changes (signatures can appear or go at any time).
    pub interval: Duration,
    /// After a change, how long more changes are awaited before the pass (a rollout
    /// changes many pods).
    pub settle: Duration,
    /// The least time between two writes of one policy's condition.
    pub min_write_interval: Duration,
    /// Read `openshift-config/pull-secret` for registry credentials.
    pub pull_secret: bool,
    /// Read the pull secrets pods name too (needs cluster-wide Secret reads).
    pub pod_pull_secrets: bool,
    /// How the cluster is rendered, for admission's judgement of a change.
    pub render: cip_core::render::RenderOptions,
    /// This process answers admission reviews: it keeps a judgeable copy of each pass.
    pub serves_admission: bool,
}

impl Default for ImpactOptions {
    fn default() -> Self {
        ImpactOptions {
            interval: Duration::from_secs(300),
            settle: Duration::from_secs(5),
            min_write_interval: crate::k8s::impact::MIN_INTERVAL,
            pull_secret: true,
            pod_pull_secrets: false,
            render: Default::default(),
            serves_admission: false,
        }
    }
}

/// 16 requests in flight, 4 per registry.
const BOUNDS: Bounds = Bounds {
    all: 16,
    per_host: 4,
};

/// The registry side: a client for the current credentials and insecure registries, and
/// the cache in front of it (kept while those stay the same).
/// What a registry client is made of: insecure registries, credentials, extra CAs.
type ClientKey = (Vec<String>, Option<String>, BTreeMap<String, String>);

struct Registries {
    key: ClientKey,
    cache: Arc<Cached<Client>>,
    reported: Stats,
}

impl Registries {
    fn for_(current: Option<Registries>, key: ClientKey) -> Result<Registries, String> {
        if let Some(r) = current.filter(|r| r.key == key) {
            return Ok(r);
        }
        let client =
            Client::with_trusted_cas(key.0.clone(), key.1.as_deref(), &key.2)?.with_backoff(3);
        Ok(Registries {
            key,
            cache: Arc::new(Cached::with(Some(client), BOUNDS, Retention::BACKGROUND)),
            reported: Stats::default(),
        })
    }

    /// Adds what the cache counted since the last report to the metrics.
    fn report(&mut self, metrics: &Metrics) {
        let now = self.cache.stats();
        let was = self.reported;
        for (outcome, n) in [
            ("hit", now.hits - was.hits),
            ("ok", now.ok - was.ok),
            ("not_found", now.not_found - was.not_found),
            ("error", now.errors - was.errors),
        ] {
            metrics.impact.requested(outcome, n);
        }
        metrics.impact.set_cache_bytes(now.bytes);
        self.reported = now;
    }
}

/// Where a pass's copy for admission goes.
pub type Publish = Box<
    dyn Fn(Option<Arc<dyn cip_core::running::Preview>>, crate::state::RunningImages) + Send + Sync,
>;

/// Runs passes while this replica leads, for the life of the process.
pub async fn run(
    client: kube::Client,
    mut desired: watch::Receiver<Published>,
    mut leadership: Leadership,
    metrics: Arc<Metrics>,
    mut writer: ConditionWriter,
    options: ImpactOptions,
    publish: Publish,
) {
    let index = crate::k8s::pods::spawn(client.clone());
    let mut registries: Option<Registries> = None;
    // Kept across passes: a pass verifies only the signatures it has not met.
    let memo = Arc::new(Memo::default());
    loop {
        let mut wait = options.interval;
        if leadership.is_leader() {
            let current = desired.borrow_and_update().ready().cloned();
            if let Some(current) = current {
                let pass = Pass {
                    client: &client,
                    index: &index,
                    metrics: &metrics,
                    options: &options,
                    publish: &publish,
                    memo: &memo,
                };
                let deferred;
                (registries, deferred) = pass
                    .run(&current, registries, &mut writer, &leadership)
                    .await;
                // A condition held back by the once-a-minute limit is written at the next.
                if deferred {
                    wait = wait.min(options.min_write_interval);
                }
            }
        }
        let idle = tokio::time::sleep(wait);
        tokio::select! {
            () = idle => {}
            () = index.changed() => {}
            r = desired.changed() => if r.is_err() { return },
            r = leadership.updated() => if !r { return },
        }
        tokio::time::sleep(options.settle).await;
    }
}

struct Pass<'a> {
    client: &'a kube::Client,
    index: &'a crate::k8s::pods::Shared,
    metrics: &'a Metrics,
    options: &'a ImpactOptions,
    publish: &'a Publish,
    memo: &'a Arc<Memo>,
}

impl Pass<'_> {
    /// The Image CR's `additionalTrustedCA` data; none when unnamed or unreadable (the
    /// registries it serves then fail their handshakes: unknown, never refused).
    async fn trusted_cas(&self, inputs: &cip_core::render::Inputs) -> BTreeMap<String, String> {
        let Some(name) = inputs
            .image
            .as_ref()
            .and_then(|i| i.spec.additional_trusted_ca.as_ref())
            .map(|c| c.name.clone())
            .filter(|n| !n.is_empty())
        else {
            return BTreeMap::new();
        };
        match crate::k8s::pods::trusted_cas(self.client, &name).await {
            Ok(cas) => cas,
            Err(e) => {
                tracing::warn!(configmap = %name, error = %e, "reading the Image CR's additionalTrustedCA; judging without it");
                BTreeMap::new()
            }
        }
    }

    /// One pass; the registries to keep for the next, and whether writes were held back.
    async fn run(
        &self,
        desired: &crate::k8s::desired::Desired,
        registries: Option<Registries>,
        writer: &mut ConditionWriter,
        leadership: &Leadership,
    ) -> (Option<Registries>, bool) {
        let inputs = &desired.inputs;
        let leading = || leadership.is_leader();
        let Ok(plan) = &desired.plan else {
            return (registries, false);
        };
        // Read under the index's lock: a pass copies no pod.
        let read = self.index.read(|index| {
            let secrets = self.options.pod_pull_secrets.then(|| {
                (index.pods.values())
                    .flat_map(|p| {
                        (p.pull_secrets.iter()).map(|s| (p.namespace.to_string(), s.clone()))
                    })
                    .collect()
            });
            (index.distinct(&inputs.pools), secrets)
        });
        let Some((distinct, pod_secrets)) = read else {
            let written = writer.write(inputs, &[], true, leading).await;
            return (registries, written.deferred > 0);
        };
        let auth = if self.options.pull_secret {
            match crate::k8s::pods::pull_secret(self.client).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "reading openshift-config/pull-secret; judging without credentials");
                    None
                }
            }
        } else {
            None
        };
        let auth = match pod_secrets {
            Some(names) => {
                let pods = crate::k8s::pods::pod_pull_secrets(self.client, &names).await;
                crate::pull::registry::merge_auths(auth.as_deref(), &pods)
            }
            None => auth,
        };
        let cas = self.trusted_cas(inputs).await;
        let key = (plan.facts.insecure.clone(), auth, cas);
        let mut registries = match Registries::for_(registries, key) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "no registry client; running images not judged");
                return (None, false);
            }
        };
        let started = Instant::now();
        registries.cache.expire(started);
        let now = unix_now();
        // A process that also serves admission warns from this pass's copy: its signers
        // are recovered as the pass meets them, as a replica's are while it warms.
        let memo = match self.options.serves_admission {
            true => self.memo.recovering(),
            false => Memo::clone(self.memo),
        };
        let judged =
            crate::pull::impact::judge(inputs, plan, &distinct, &*registries.cache, now, &memo)
                .await;
        let seconds = started.elapsed().as_secs_f64();
        let refusing = judged.tallies.iter().filter(|t| t.refused > 0).count();
        self.metrics
            .impact
            .passed(judged.by_verdict(), refusing, unix_now(), seconds);
        registries.report(self.metrics);
        let written = writer.write(inputs, &judged.tallies, false, leading).await;
        let stale_after = 3 * self.options.interval.as_secs() as i64 + 60;
        let taken_at = unix_now();
        let bytes = Arc::new(Served::new(
            Transfer::judgements(&judged),
            Arc::clone(&registries.cache),
            (taken_at, stale_after),
        ));
        // A process that serves no admission keeps only what replicas copy.
        let copy = if self.options.serves_admission {
            let options = self.options.render.clone();
            let transfer = Transfer::of(&judged, &registries.cache, taken_at, stale_after);
            Copy::from_transfer(
                Arc::clone(inputs),
                plan.clone(),
                options,
                transfer,
                unix_now,
                Arc::clone(self.memo),
            )
            .map(|c| Some(Arc::new(c) as Arc<dyn cip_core::running::Preview>))
        } else {
            Ok(None)
        };
        match copy {
            Ok(copy) => (self.publish)(copy, bytes),
            Err(e) => tracing::warn!(error = %e, "the running-images copy does not load"),
        }
        let (accepted, refused, unknown) = judged.by_verdict();
        macro_rules! judged {
            ($level:ident) => {
                tracing::$level!(
                    images = distinct.len(),
                    accepted,
                    refused,
                    unknown,
                    unplaced = distinct.unplaced,
                    by_tag = distinct.by_tag,
                    seconds,
                    conditions = written.conditions,
                    deferred = written.deferred,
                    skipped = ?judged.skipped,
                    "running images judged"
                )
            };
        }
        // Quiet while nothing changes.
        if written.conditions > 0 {
            judged!(info);
        } else {
            judged!(debug);
        }
        release_freed_memory();
        (Some(registries), written.deferred > 0)
    }
}

/// A pass's copy as `/running-images` serves it.
struct Served {
    images: Vec<crate::pull::impact::Judgement>,
    /// Of the judgement: the tag less the cache's fingerprint.
    judged: String,
    cache: Arc<Cached<Client>>,
    taken_at: i64,
    stale_after: i64,
}

impl Served {
    fn new(
        images: Vec<crate::pull::impact::Judgement>,
        cache: Arc<Cached<Client>>,
        (taken_at, stale_after): (i64, i64),
    ) -> Served {
        let judged = serde_json::to_vec(&(&images, stale_after)).unwrap_or_default();
        let judged = cip_sigstore::judge::sha256(&judged);
        let judged = judged.trim_start_matches("sha256:").get(..16);
        Served {
            judged: judged.unwrap_or_default().to_string(),
            images,
            cache,
            taken_at,
            stale_after,
        }
    }
}

impl crate::state::RunningImagesCopy for Served {
    fn tag(&self) -> String {
        format!("\"{}-{:016x}\"", self.judged, self.cache.fingerprint())
    }

    fn taken_at(&self) -> i64 {
        self.taken_at
    }

    fn write(&self) -> Vec<u8> {
        let transfer = Transfer {
            taken_at: self.taken_at,
            stale_after: self.stale_after,
            images: self.images.clone(),
            cache: self.cache.save(),
        };
        serde_json::to_vec(&transfer).unwrap_or_default()
    }
}

/// Where an admission replica copies the lease holder's judgement from.
#[derive(Debug, Clone)]
pub struct CopyFrom {
    /// The reconciler Service's `/running-images` on its metrics port.
    pub url: String,
    /// The CA that signs that port's certificate (OpenShift's service CA).
    pub ca: Option<std::path::PathBuf>,
    /// A bearer token to present (the pod's service-account token, re-read each time).
    pub token: Option<std::path::PathBuf>,
    pub every: Duration,
}

/// Keeps this admission replica's running-images preview current: the copy fetched from
/// the lease holder every `every`, joined with this process's own render of the cluster.
/// No registry is asked here; a failed fetch keeps the last copy, which says it is stale
/// when it is.
pub async fn follow(
    from: CopyFrom,
    mut desired: watch::Receiver<Published>,
    render: cip_core::render::RenderOptions,
    state: Arc<crate::state::ProcessState>,
) {
    let client = match copy_client(from.ca.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "running-images preview off: no client for the copy");
            return;
        }
    };
    let mut last: Option<Arc<Vec<u8>>> = None;
    // The tag of `last`, as the lease holder named it, and when it last said `last` is
    // still what it holds.
    let (mut tag, mut renewed) = (None::<String>, i64::MIN);
    let mut loaded: Option<Loaded> = None;
    let memo = Arc::new(Memo::default());
    loop {
        match fetch_copy(&client, &from, tag.as_deref()).await {
            Ok(Fetched::New { bytes, tag: named }) => {
                if last.as_deref() != Some(&bytes) {
                    last = Some(Arc::new(bytes));
                }
                (tag, renewed) = (named, i64::MIN);
            }
            Ok(Fetched::Same { taken_at }) => {
                renewed = renewed.max(taken_at.unwrap_or(i64::MIN));
            }
            Err(e) => {
                tracing::debug!(error = %e, url = %from.url, "running-images copy not fetched")
            }
        }
        let current = desired.borrow_and_update().ready().cloned();
        if let (Some(bytes), Some(d)) = (&last, current) {
            let same = (loaded.as_ref())
                .is_some_and(|l| Arc::ptr_eq(&l.bytes, bytes) && Arc::ptr_eq(&l.inputs, &d.inputs));
            if let (false, Ok(plan)) = (same, &d.plan) {
                let made = serde_json::from_slice::<Transfer>(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|t| {
                        Copy::from_transfer(
                            Arc::clone(&d.inputs),
                            plan.clone(),
                            render.clone(),
                            t,
                            unix_now,
                            Arc::clone(&memo),
                        )
                    });
                match made {
                    Ok(copy) => {
                        let copy = Arc::new(copy);
                        copy.renew(renewed);
                        state.set_preview(Some(
                            Arc::clone(&copy) as Arc<dyn cip_core::running::Preview>
                        ));
                        loaded = Some(Loaded {
                            bytes: Arc::clone(bytes),
                            inputs: Arc::clone(&d.inputs),
                            copy: Arc::clone(&copy),
                        });
                        warm(copy, &memo).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "the running-images copy does not load"),
                }
            }
        }
        // What the lease holder said of `last` is said of the copy loaded from it only.
        let from_last = |l: &&Loaded| last.as_ref().is_some_and(|b| Arc::ptr_eq(&l.bytes, b));
        if let Some(l) = loaded.as_ref().filter(from_last) {
            l.copy.renew(renewed);
        }
        tokio::select! {
            () = tokio::time::sleep(from.every) => {}
            r = desired.changed() => if r.is_err() { return },
        }
    }
}

/// The copy a replica judges from, and what it was loaded from.
struct Loaded {
    bytes: Arc<Vec<u8>>,
    inputs: Arc<Inputs>,
    copy: Arc<Copy>,
}

/// Checks the signatures of the keys in force ahead of any review, on a blocking thread.
async fn warm(copy: Arc<Copy>, memo: &Memo) {
    let started = std::time::Instant::now();
    let before = memo.len();
    match tokio::task::spawn_blocking(move || copy.warm()).await {
        Ok(judged) => tracing::debug!(
            judged,
            checks = memo.len().saturating_sub(before),
            signers = memo.signers_kept(),
            took_ms = started.elapsed().as_millis() as u64,
            "running-images copy warmed"
        ),
        Err(e) => tracing::warn!(error = %e, "warming the running-images copy failed"),
    }
}

pub type CopyClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<hyper::body::Bytes>,
>;

pub fn copy_client(ca: Option<&std::path::Path>) -> Result<CopyClient, String> {
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_native_roots()
            .map_err(|e| format!("loading the system's CA certificates: {e}"))?,
    };
    let https = builder.https_or_http().enable_http1().build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// The most a copy may weigh: the reconciler's cache is capped at 64 MiB, base64 adds a third.
const MAX_COPY: usize = 96 << 20;

/// What a fetch of the copy brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// A copy, and the tag the lease holder gave it.
    New { bytes: Vec<u8>, tag: Option<String> },
    /// The copy held is still what the lease holder holds, as of its pass at `taken_at`.
    Same { taken_at: Option<i64> },
}

/// The lease holder's copy, unless it is still the one `held` names (304).
pub async fn fetch_copy(
    client: &CopyClient,
    from: &CopyFrom,
    held: Option<&str>,
) -> Result<Fetched, String> {
    use http_body_util::BodyExt;
    let mut request = hyper::Request::get(&from.url);
    if let Some(tag) = held {
        request = request.header(hyper::header::IF_NONE_MATCH, tag);
    }
    if let Some(path) = &from.token {
        let token =
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        request = request.header("Authorization", format!("Bearer {}", token.trim()));
    }
    let request = request
        .body(http_body_util::Full::default())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| crate::files::chain(&e))?;
        let status = response.status();
        let header = |name| {
            (response.headers().get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if status == hyper::StatusCode::NOT_MODIFIED && held.is_some() {
            let taken_at = header(crate::state::TAKEN_AT).and_then(|t| t.parse().ok());
            return Ok(Fetched::Same { taken_at });
        }
        let tag = header(hyper::header::ETAG.as_str());
        let body = http_body_util::Limited::new(response.into_body(), MAX_COPY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        Ok(Fetched::New {
            bytes: body.to_vec(),
            tag,
        })
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
}

/// A pass allocates its verdicts, the distinct images and the copy for admission, and frees
/// most of it at the end; glibc keeps the freed small blocks in its arenas unless asked to
/// give them back, and the leader's RSS would stay at the pass's peak.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull::impact::Judgement;
    use crate::state::RunningImagesCopy;

    fn judgement(verdict: &str) -> Judgement {
        Judgement {
            pool: "worker".into(),
            arch: "amd64".into(),
            namespace: Some("apps".into()),
            image: "quay.io/team/a:v1".into(),
            digest: None,
            verdict: verdict.into(),
        }
    }

    /// A copy's tag names its content: another pass, or another leader, that judged the
    /// same over the same answers has the same tag (replicas get 304), and a verdict or a
    /// cache answer changes it.
    #[test]
    fn a_copy_is_tagged_by_what_it_holds_not_by_its_pass() {
        let cache: Arc<Cached<Client>> = Arc::new(Cached::new(None));
        let served = |verdict, taken_at| {
            let images = vec![judgement(verdict)];
            Served::new(images, Arc::clone(&cache), (taken_at, 960))
        };
        let first = served("accepted", 1_000);
        assert_eq!(first.tag(), served("accepted", 1_300).tag());
        assert_ne!(first.tag(), served("refused", 1_000).tag());
        let before = first.tag();
        let file =
            r#"{"manifests": [[["h", "r", "sha256-a.sig"], {"notFound": "gone"}]], "blobs": []}"#;
        cache.load(file).unwrap();
        assert_ne!(first.tag(), before, "the cache changed");
        let copy: Transfer = serde_json::from_slice(&first.write()).unwrap();
        assert_eq!((copy.taken_at, copy.images.len()), (1_000, 1));
    }
}
