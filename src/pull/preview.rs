//! `preview`: every running image judged as `verify` judges one, under the policies in
//! force and, with proposed files, under the policies after them; per policy, what it
//! covers, accepts, refuses, leaves unknown and newly refuses. Fetches are bounded (8 in
//! flight, 4 per registry) and cached by (endpoint, repository, reference), so the second
//! judgement of an image costs no request; the cache can be saved and reused, and a run
//! from a saved cache needs no registry at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use cip_sigstore::judge::Memo;

use crate::pull::lock;
use crate::pull::registry::{FetchError, Manifest, Source};
use crate::pull::verify::{verify_pinned, NodeView, Outcome};

/// One container image as it runs: its pod's namespace, the image as written, and the
/// digest it runs (from `imageID`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    pub namespace: Option<String>,
    pub image: String,
    pub digest: Option<String>,
}

/// `[namespace] image [imageID]` lines; `#` starts a comment.
pub fn parse_image_list(text: &str) -> Result<Vec<Running>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_id = |f: &str| image_id_digest(f).is_some();
        let running = match fields.as_slice() {
            [] => continue,
            [image] => (None, *image, None),
            [a, b] if is_id(b) => (None, *a, Some(*b)),
            [ns, image] => (Some(*ns), *image, None),
            [ns, image, id] if is_id(id) => (Some(*ns), *image, Some(*id)),
            _ => {
                return Err(format!(
                    "line {}: expected `[namespace] image [imageID]`, got {line:?}",
                    n + 1
                ))
            }
        };
        out.push(Running {
            namespace: running.0.map(str::to_string),
            image: running.1.to_string(),
            digest: running.2.and_then(image_id_digest),
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `kubectl get pods -A -o json`: each container status's image and `imageID` digest.
pub fn parse_pods(text: &str) -> Result<Vec<Running>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the pod list does not decode: {e}"))?;
    let items = value["items"]
        .as_array()
        .ok_or("the pod list has no `items`")?;
    let mut out = Vec::new();
    for pod in items {
        let namespace = pod["metadata"]["namespace"].as_str().map(str::to_string);
        let statuses = [
            "initContainerStatuses",
            "containerStatuses",
            "ephemeralContainerStatuses",
        ];
        for key in statuses {
            for status in pod["status"][key].as_array().into_iter().flatten() {
                let Some(image) = status["image"].as_str() else {
                    continue;
                };
                out.push(Running {
                    namespace: namespace.clone(),
                    image: image.to_string(),
                    digest: status["imageID"].as_str().and_then(image_id_digest),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The `sha256:<hex>` an `imageID` names (`repo@sha256:…`, `docker-pullable://…`, or bare).
fn image_id_digest(id: &str) -> Option<String> {
    let digest = id.rsplit('@').next()?;
    cip_core::registries_conf::validate_digest(digest).ok()?;
    Some(digest.to_string())
}

/// A fetch as saved: a manifest or blob, or the error it gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_found: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

type Key = (String, String, String);

/// Fetches through `inner` at most 8 at once and 4 per registry, each remembered.
/// Without `inner`, only what was saved is served.
pub struct Cached<S> {
    inner: Option<S>,
    all: tokio::sync::Semaphore,
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    manifests: Mutex<BTreeMap<Key, Saved>>,
    blobs: Mutex<BTreeMap<Key, Saved>>,
}

#[derive(Serialize, Deserialize, Default)]
struct File {
    manifests: Vec<(Key, Saved)>,
    blobs: Vec<(Key, Saved)>,
}

impl<S: Source> Cached<S> {
    pub fn new(inner: Option<S>) -> Cached<S> {
        Cached {
            inner,
            all: tokio::sync::Semaphore::new(8),
            hosts: Mutex::default(),
            manifests: Mutex::default(),
            blobs: Mutex::default(),
        }
    }

    /// What a previous run saved (`--attachments FILE`).
    pub fn load(&self, text: &str) -> Result<(), String> {
        let file: File = serde_json::from_str(text)
            .map_err(|e| format!("the attachments file does not decode: {e}"))?;
        lock(&self.manifests).extend(file.manifests);
        lock(&self.blobs).extend(file.blobs);
        Ok(())
    }

    pub fn inner(&self) -> Option<&S> {
        self.inner.as_ref()
    }

    pub fn save(&self) -> String {
        let file = File {
            manifests: lock(&self.manifests)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            blobs: lock(&self.blobs)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        serde_json::to_string(&file).unwrap_or_default()
    }

    async fn permit(
        &self,
        host: &str,
    ) -> (
        tokio::sync::SemaphorePermit<'_>,
        tokio::sync::OwnedSemaphorePermit,
    ) {
        let per_host = Arc::clone(
            lock(&self.hosts)
                .entry(host.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(4))),
        );
        let host_permit = per_host.acquire_owned().await.expect("never closed");
        let all = self.all.acquire().await.expect("never closed");
        (all, host_permit)
    }
}

fn saved<T>(
    result: &Result<T, FetchError>,
    body: impl Fn(&T) -> (Option<String>, Vec<u8>),
) -> Saved {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match result {
        Ok(v) => {
            let (media_type, bytes) = body(v);
            Saved {
                media_type,
                bytes: Some(b64(&bytes)),
                not_found: None,
                error: None,
            }
        }
        Err(FetchError::NotFound(w)) => Saved {
            media_type: None,
            bytes: None,
            not_found: Some(w.clone()),
            error: None,
        },
        Err(FetchError::Failed(e)) => Saved {
            media_type: None,
            bytes: None,
            not_found: None,
            error: Some(e.clone()),
        },
    }
}

fn restored(s: &Saved) -> Result<(Option<String>, Vec<u8>), FetchError> {
    if let Some(w) = &s.not_found {
        return Err(FetchError::NotFound(w.clone()));
    }
    if let Some(e) = &s.error {
        return Err(FetchError::Failed(e.clone()));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.bytes.as_deref().unwrap_or_default())
        .map_err(|e| FetchError::Failed(format!("the attachments file: {e}")))?;
    Ok((s.media_type.clone(), bytes))
}

impl<S: Source + Send + Sync> Source for Cached<S> {
    async fn manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Manifest, FetchError> {
        let key = (host.to_string(), repo.to_string(), reference.to_string());
        if let Some(s) = lock(&self.manifests).get(&key) {
            return restored(s).map(|(m, bytes)| Manifest {
                bytes,
                media_type: m.unwrap_or_default(),
            });
        }
        let Some(inner) = &self.inner else {
            return Err(FetchError::Failed(format!(
                "{host}/{repo}:{reference} is not in the attachments file"
            )));
        };
        let _permits = self.permit(host).await;
        let result = inner.manifest(host, repo, reference).await;
        lock(&self.manifests).insert(
            key,
            saved(&result, |m| (Some(m.media_type.clone()), m.bytes.clone())),
        );
        result
    }

    async fn blob(&self, host: &str, repo: &str, digest: &str) -> Result<Vec<u8>, FetchError> {
        let key = (host.to_string(), repo.to_string(), digest.to_string());
        if let Some(s) = lock(&self.blobs).get(&key) {
            return restored(s).map(|(_, b)| b);
        }
        let Some(inner) = &self.inner else {
            return Err(FetchError::Failed(format!(
                "{host}/{repo}@{digest} is not in the attachments file"
            )));
        };
        let _permits = self.permit(host).await;
        let result = inner.blob(host, repo, digest).await;
        lock(&self.blobs).insert(key, saved(&result, |b| (None, b.clone())));
        result
    }
}

/// The nodes' view for each namespace that has its own policy file, and `None` for the rest.
pub type Views = BTreeMap<Option<String>, NodeView>;

/// Every running image judged under `views`; one outcome per image, in order. Images are
/// taken round-robin across registries, so that one registry's limit of 4 fetches does not
/// leave the others idle while the window is full of its images.
pub async fn judge_all<S: Source + Send + Sync>(
    images: &[Running],
    views: &Views,
    arch: &str,
    source: &S,
    memo: &Mutex<Memo>,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; images.len()];
    let judged: Vec<(usize, Outcome)> =
        futures_util::stream::iter(round_robin(images))
            .map(|i| async move {
                let r = &images[i];
                let view = views
                    .get(&r.namespace)
                    .or_else(|| views.get(&None))
                    .expect("the cluster-wide view is always there");
                let outcome =
                    match verify_pinned(view, &r.image, r.digest.as_deref(), arch, source, memo)
                        .await
                    {
                        Ok(o) => o,
                        Err(why) => Outcome::unusable(&r.image, &view.policy_file, why),
                    };
                (i, outcome)
            })
            .buffer_unordered(64)
            .collect()
            .await;
    for (i, o) in judged {
        outcomes[i] = Some(o);
    }
    outcomes.into_iter().flatten().collect()
}

/// Indexes of `images`, alternating between the registries they name.
fn round_robin(images: &[Running]) -> Vec<usize> {
    let mut by_host: BTreeMap<&str, std::collections::VecDeque<usize>> = BTreeMap::new();
    for (i, r) in images.iter().enumerate() {
        let host = r.image.split('/').next().unwrap_or_default();
        by_host.entry(host).or_default().push_back(i);
    }
    let mut order = Vec::with_capacity(images.len());
    while order.len() < images.len() {
        for queue in by_host.values_mut() {
            order.extend(queue.pop_front());
        }
    }
    order
}

/// One policy's tally.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTally {
    pub policy: String,
    pub covered: usize,
    pub accepted: usize,
    pub refused: usize,
    pub unknown: usize,
    pub newly_refused: usize,
    /// The first ten refused (newly refused first), with reasons.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    #[serde(flatten)]
    pub running: Running,
    pub current: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposed: Option<Outcome>,
    pub policies: Vec<String>,
}

/// Tallies per policy, from the proposed outcome where there is one.
pub fn tally(reports: &[ImageReport]) -> Vec<PolicyTally> {
    let mut by: BTreeMap<String, PolicyTally> = BTreeMap::new();
    for r in reports {
        let after = r.proposed.as_ref().unwrap_or(&r.current);
        let newly =
            r.proposed.is_some() && after.verdict == "refused" && r.current.verdict != "refused";
        for p in &r.policies {
            let t = by.entry(p.clone()).or_insert_with(|| PolicyTally {
                policy: p.clone(),
                ..Default::default()
            });
            t.covered += 1;
            match after.verdict.as_str() {
                "accepted" => t.accepted += 1,
                "refused" => t.refused += 1,
                _ => t.unknown += 1,
            }
            if newly {
                t.newly_refused += 1;
            }
            if after.verdict == "refused" && t.examples.len() < 10 {
                let ns = r
                    .running
                    .namespace
                    .as_deref()
                    .map(|n| format!(" (namespace {n})"))
                    .unwrap_or_default();
                let mark = if newly { "newly refused: " } else { "" };
                t.examples
                    .push(format!("{mark}{}{ns}: {}", r.running.image, after.reason));
            }
        }
    }
    by.into_values().collect()
}

/// 1 when an image would be refused (with a proposal: newly refused), else 3 when some
/// are unknown, else 0.
pub fn exit_code(reports: &[ImageReport]) -> u8 {
    let proposal = reports.iter().any(|r| r.proposed.is_some());
    let after = |r: &ImageReport| r.proposed.as_ref().unwrap_or(&r.current).verdict.clone();
    let refused = reports
        .iter()
        .any(|r| after(r) == "refused" && (!proposal || r.current.verdict != "refused"));
    if refused {
        1
    } else if reports.iter().any(|r| after(r) == "unknown") {
        3
    } else {
        0
    }
}

/// The text report.
pub fn text(reports: &[ImageReport], tallies: &[PolicyTally], requests: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let proposal = reports.iter().any(|r| r.proposed.is_some());
    let _ = writeln!(
        s,
        "{} image(s){}",
        reports.len(),
        if proposal {
            ", judged before and after the proposed files"
        } else {
            ""
        }
    );
    for t in tallies {
        let _ = write!(
            s,
            "{}: covers {} running image(s): {} accepted, {} refused at next pull, {} unknown",
            t.policy, t.covered, t.accepted, t.refused, t.unknown
        );
        if proposal {
            let _ = write!(s, "; newly refused: {}", t.newly_refused);
        }
        s.push('\n');
        for e in &t.examples {
            let _ = writeln!(s, "  {e}");
        }
    }
    let outside = reports.iter().filter(|r| r.policies.is_empty()).count();
    let _ = writeln!(s, "outside every policy: {outside} image(s)");
    let unknown: Vec<&ImageReport> = reports
        .iter()
        .filter(|r| r.proposed.as_ref().unwrap_or(&r.current).verdict == "unknown")
        .take(10)
        .collect();
    for r in unknown {
        let o = r.proposed.as_ref().unwrap_or(&r.current);
        let _ = writeln!(s, "  unknown: {}: {}", r.running.image, o.reason);
    }
    let _ = writeln!(s, "registry requests: {requests}");
    s
}
