//! Fetches bounded and remembered: at most `all` requests in flight and `per_host` per
//! registry, each answer kept by (endpoint, repository, reference). The CLI keeps answers
//! for the run (and can save and reload them); the reconciler's background pass keeps them
//! for a time that depends on what they say — a manifest or blob named by digest never
//! changes, a signature attachment found is kept long, "no signature" short, an error
//! shortest — under a cap on the bytes held, the oldest going first.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::pull::lock;
use crate::pull::registry::{FetchError, Manifest, Source};

/// How long answers are kept, and how many bytes at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Content named by digest, and a signature attachment that was found.
    pub signed: Duration,
    /// A manifest that is not there (no signature), or a tag's current manifest.
    pub absent: Duration,
    /// A registry error.
    pub error: Duration,
    pub max_bytes: usize,
}

impl Retention {
    /// For one run of the CLI: everything, for the run.
    pub const RUN: Retention = Retention {
        signed: Duration::MAX,
        absent: Duration::MAX,
        error: Duration::MAX,
        max_bytes: usize::MAX,
    };

    /// For the reconciler's passes.
    pub const BACKGROUND: Retention = Retention {
        signed: Duration::from_secs(6 * 3600),
        absent: Duration::from_secs(5 * 60),
        error: Duration::from_secs(30),
        max_bytes: 64 << 20,
    };
}

/// Requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub all: usize,
    pub per_host: usize,
}

/// What the cache and the registries answered, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub hits: usize,
    pub ok: usize,
    pub not_found: usize,
    pub errors: usize,
    pub bytes: usize,
    pub entries: usize,
}

/// Blob or manifest, and `host NUL repository NUL reference` in one allocation that both
/// maps share (thousands of answers are kept; three strings each, twice, cost more than
/// the answers).
type Key = (bool, Arc<str>);
/// As the attachments file writes a key: host, repository, reference.
type Named = (String, String, String);
/// An answer: the media type (manifests) and the bytes, or the error.
type Answer = Result<(Option<String>, Vec<u8>), FetchError>;

#[derive(Debug, Clone)]
struct Entry {
    result: Answer,
    expires: Option<Instant>,
    seq: u64,
    /// Of the key and the answer: what the entry adds to [`Kept::fingerprint`].
    hash: u64,
}

impl Entry {
    fn size(&self, key: &Key) -> usize {
        let body = match &self.result {
            Ok((m, b)) => b.len() + m.as_ref().map_or(0, String::len),
            Err(FetchError::NotFound(s) | FetchError::Failed(s)) => s.len(),
        };
        body + key.1.len() + 96
    }
}

fn key(blob: bool, host: &str, repo: &str, reference: &str) -> Key {
    (blob, format!("{host}\0{repo}\0{reference}").into())
}

/// A key's host, repository and reference.
fn named(key: &Key) -> (&str, &str, &str) {
    let mut parts = key.1.splitn(3, '\0');
    let mut next = || parts.next().unwrap_or_default();
    (next(), next(), next())
}

#[derive(Default)]
struct Kept {
    entries: BTreeMap<Key, Entry>,
    /// Insertion order, for eviction: seq → entry key.
    order: BTreeMap<u64, Key>,
    bytes: usize,
    next: u64,
    /// The entries' hashes combined (XOR): the same answers kept give the same value,
    /// whatever came and went in between.
    fingerprint: u64,
}

/// The first 8 bytes of the SHA-256 of a key and its answer.
fn entry_hash(key: &Key, result: &Answer) -> u64 {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(&[u8::from(key.0)]);
    h.update(key.1.as_bytes());
    let (kind, media_type, body): (u8, &str, &[u8]) = match result {
        Ok((m, b)) => (0, m.as_deref().unwrap_or_default(), b),
        Err(FetchError::NotFound(w)) => (1, "", w.as_bytes()),
        Err(FetchError::Failed(e)) => (2, "", e.as_bytes()),
    };
    h.update(&[0, kind]);
    h.update(media_type.as_bytes());
    h.update(&[0]);
    h.update(body);
    let digest = h.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(first)
}

impl Kept {
    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.seq);
            self.bytes -= old.size(key);
            self.fingerprint ^= old.hash;
        }
    }

    fn insert(&mut self, key: Key, mut entry: Entry, max: usize) {
        self.remove(&key);
        entry.seq = self.next;
        self.next += 1;
        let size = entry.size(&key);
        if size > max {
            return;
        }
        while self.bytes + size > max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.size(&oldest);
                self.fingerprint ^= e.hash;
            }
        }
        entry.hash = entry_hash(&key, &entry.result);
        self.fingerprint ^= entry.hash;
        self.bytes += size;
        self.order.insert(entry.seq, key.clone());
        self.entries.insert(key, entry);
    }
}

/// A [`Source`] in front of another, bounded and remembering. Without `inner`, only what
/// was loaded is served.
pub struct Cached<S> {
    inner: Option<S>,
    retention: Retention,
    all: tokio::sync::Semaphore,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    kept: Mutex<Kept>,
    hits: AtomicUsize,
    ok: AtomicUsize,
    not_found: AtomicUsize,
    errors: AtomicUsize,
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

#[derive(Serialize, Deserialize, Default)]
struct File {
    manifests: Vec<(Named, Saved)>,
    blobs: Vec<(Named, Saved)>,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl Saved {
    fn of(result: &Answer) -> Saved {
        let (media_type, bytes, not_found, error) = match result {
            Ok((m, b)) => (m.clone(), Some(b64(b)), None, None),
            Err(FetchError::NotFound(w)) => (None, None, Some(w.clone()), None),
            Err(FetchError::Failed(e)) => (None, None, None, Some(e.clone())),
        };
        Saved {
            media_type,
            bytes,
            not_found,
            error,
        }
    }

    fn result(self) -> Answer {
        if let Some(w) = self.not_found {
            return Err(FetchError::NotFound(w));
        }
        if let Some(e) = self.error {
            return Err(FetchError::Failed(e));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.bytes.unwrap_or_default())
            .map_err(|e| FetchError::Failed(format!("the attachments file: {e}")))?;
        Ok((self.media_type, bytes))
    }
}

impl<S: Source> Cached<S> {
    /// For the CLI: 8 in flight, 4 per registry, everything kept for the run.
    pub fn new(inner: Option<S>) -> Cached<S> {
        Cached::with(
            inner,
            Bounds {
                all: 8,
                per_host: 4,
            },
            Retention::RUN,
        )
    }

    pub fn with(inner: Option<S>, bounds: Bounds, retention: Retention) -> Cached<S> {
        Cached {
            inner,
            retention,
            all: tokio::sync::Semaphore::new(bounds.all),
            per_host: bounds.per_host,
            hosts: Mutex::default(),
            kept: Mutex::default(),
            hits: AtomicUsize::new(0),
            ok: AtomicUsize::new(0),
            not_found: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
        }
    }

    /// What a previous run saved (`--attachments FILE`).
    pub fn load(&self, text: &str) -> Result<(), String> {
        let file: File = serde_json::from_str(text)
            .map_err(|e| format!("the attachments file does not decode: {e}"))?;
        let mut kept = lock(&self.kept);
        let all = (file.manifests.into_iter().map(|(k, s)| (false, k, s)))
            .chain(file.blobs.into_iter().map(|(k, s)| (true, k, s)));
        for (blob, (host, repo, reference), saved) in all {
            let entry = Entry {
                result: saved.result(),
                expires: None,
                seq: 0,
                hash: 0,
            };
            let key = key(blob, &host, &repo, &reference);
            kept.insert(key, entry, self.retention.max_bytes);
        }
        Ok(())
    }

    pub fn inner(&self) -> Option<&S> {
        self.inner.as_ref()
    }

    pub fn save(&self) -> String {
        let mut file = File::default();
        for (key, e) in &lock(&self.kept).entries {
            let list = if key.0 {
                &mut file.blobs
            } else {
                &mut file.manifests
            };
            let (host, repo, reference) = named(key);
            let named = (host.to_string(), repo.to_string(), reference.to_string());
            list.push((named, Saved::of(&e.result)));
        }
        serde_json::to_string(&file).unwrap_or_default()
    }

    /// Names what [`Cached::save`] writes: equal whenever the same answers are kept.
    pub fn fingerprint(&self) -> u64 {
        lock(&self.kept).fingerprint
    }

    pub fn stats(&self) -> Stats {
        let kept = lock(&self.kept);
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            not_found: self.not_found.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bytes: kept.bytes,
            entries: kept.entries.len(),
        }
    }

    /// Drops what has expired (a pass calls it first, so memory follows the cluster).
    pub fn expire(&self, now: Instant) {
        let mut kept = lock(&self.kept);
        let gone: Vec<Key> = kept
            .entries
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            kept.remove(&key);
        }
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
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_host))),
        );
        let host_permit = per_host.acquire_owned().await.expect("never closed");
        let all = self.all.acquire().await.expect("never closed");
        (all, host_permit)
    }

    /// How long an answer for `reference` is good for.
    fn lifetime(&self, reference: &str, result: &Answer) -> Duration {
        let r = &self.retention;
        match result {
            Err(FetchError::Failed(_)) => r.error,
            Err(FetchError::NotFound(_)) => r.absent,
            Ok(_) if reference.starts_with("sha256:") || reference.ends_with(".sig") => r.signed,
            Ok(_) => r.absent,
        }
    }

    /// A kept answer still good, counted as a hit.
    fn kept(&self, key: &Key) -> Option<Answer> {
        let kept = lock(&self.kept);
        let e = kept.entries.get(key)?;
        if e.expires.is_some_and(|at| at <= Instant::now()) {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(e.result.clone())
    }

    /// The source to ask, or why there is none.
    fn source(&self, key: &Key) -> Result<&S, FetchError> {
        let (host, repo, reference) = named(key);
        self.inner.as_ref().ok_or_else(|| {
            FetchError::Failed(format!(
                "{host}/{repo}{}{reference} is not in the attachments file",
                if key.0 { "@" } else { ":" }
            ))
        })
    }

    fn remember(&self, key: Key, result: &Answer) {
        let counter = match result {
            Ok(_) => &self.ok,
            Err(FetchError::NotFound(_)) => &self.not_found,
            Err(FetchError::Failed(_)) => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            result: result.clone(),
            expires: Instant::now().checked_add(self.lifetime(named(&key).2, result)),
            seq: 0,
            hash: 0,
        };
        lock(&self.kept).insert(key, entry, self.retention.max_bytes);
    }
}

impl<S: Source + Send + Sync> Cached<S> {
    /// A manifest (`blob` false) or a blob: kept, or fetched within the bounds.
    async fn answer(&self, blob: bool, host: &str, repo: &str, reference: &str) -> Answer {
        let key = key(blob, host, repo, reference);
        if let Some(kept) = self.kept(&key) {
            return kept;
        }
        let inner = self.source(&key)?;
        let result = {
            let _permits = self.permit(host).await;
            if blob {
                inner.blob(host, repo, reference).await.map(|b| (None, b))
            } else {
                let m = inner.manifest(host, repo, reference).await;
                m.map(|m| (Some(m.media_type), m.bytes))
            }
        };
        self.remember(key, &result);
        result
    }
}

impl<S: Source + Send + Sync> Source for Cached<S> {
    async fn manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Manifest, FetchError> {
        let (media_type, bytes) = self.answer(false, host, repo, reference).await?;
        Ok(Manifest {
            bytes,
            media_type: media_type.unwrap_or_default(),
        })
    }

    async fn blob(&self, host: &str, repo: &str, digest: &str) -> Result<Vec<u8>, FetchError> {
        Ok(self.answer(true, host, repo, digest).await?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a fixed table, counting requests.
    #[derive(Default)]
    struct Table {
        requests: AtomicUsize,
    }

    impl Source for Table {
        async fn manifest(
            &self,
            _: &str,
            _: &str,
            reference: &str,
        ) -> Result<Manifest, FetchError> {
            self.requests.fetch_add(1, Ordering::Relaxed);
            match reference {
                r if r.ends_with(".sig") => Err(FetchError::NotFound(r.into())),
                "broken" => Err(FetchError::Failed("500".into())),
                r => Ok(Manifest {
                    bytes: vec![b'x'; 1000],
                    media_type: format!("for {r}"),
                }),
            }
        }
        async fn blob(&self, _: &str, _: &str, _: &str) -> Result<Vec<u8>, FetchError> {
            self.requests.fetch_add(1, Ordering::Relaxed);
            Ok(vec![0; 10])
        }
    }

    fn requests(c: &Cached<Table>) -> usize {
        c.inner().unwrap().requests.load(Ordering::Relaxed)
    }

    #[tokio::test(start_paused = false)]
    async fn answers_are_kept_as_long_as_what_they_say_allows() {
        let retention = Retention {
            signed: Duration::from_secs(3600),
            absent: Duration::from_millis(1),
            error: Duration::ZERO,
            max_bytes: 1 << 20,
        };
        let bounds = Bounds {
            all: 2,
            per_host: 1,
        };
        let c = Cached::with(Some(Table::default()), bounds, retention);
        let digest = format!("sha256:{}", "a".repeat(64));
        for _ in 0..3 {
            c.manifest("h", "r", &digest).await.unwrap();
            let _ = c.manifest("h", "r", "broken").await;
        }
        assert_eq!(requests(&c), 4, "the digest once, the error every time");
        let _ = c.manifest("h", "r", "sha256-a.sig").await;
        std::thread::sleep(Duration::from_millis(5));
        c.expire(Instant::now());
        let _ = c.manifest("h", "r", "sha256-a.sig").await;
        assert_eq!(requests(&c), 6, "no signature is asked again once expired");
        let s = c.stats();
        assert_eq!((s.hits, s.ok, s.not_found, s.errors), (2, 1, 2, 3));
        let kept = c.fingerprint();
        c.manifest("h", "r", &digest).await.unwrap();
        assert_eq!(c.fingerprint(), kept, "a hit changes nothing kept");
        c.expire(Instant::now() + Duration::from_secs(7200));
        assert_ne!(c.fingerprint(), kept, "what expired is gone");
        for reference in [digest.as_str(), "sha256-a.sig"] {
            let _ = c.manifest("h", "r", reference).await;
        }
        assert_eq!(c.fingerprint(), kept, "the same answers again");
    }

    #[tokio::test]
    async fn the_oldest_answers_go_past_the_byte_cap() {
        let retention = Retention {
            max_bytes: 3000,
            ..Retention::BACKGROUND
        };
        let c = Cached::with(
            Some(Table::default()),
            Bounds {
                all: 1,
                per_host: 1,
            },
            retention,
        );
        for i in 0..5 {
            c.manifest("h", "r", &format!("sha256:{i}")).await.unwrap();
        }
        let s = c.stats();
        assert!(s.bytes <= 3000 && s.entries == 2, "{s:?}");
        c.manifest("h", "r", "sha256:4").await.unwrap();
        assert_eq!(requests(&c), 5, "the newest is still there");
        c.manifest("h", "r", "sha256:0").await.unwrap();
        assert_eq!(requests(&c), 6, "the oldest went");
    }

    #[tokio::test]
    async fn a_saved_cache_serves_a_run_without_a_registry() {
        let c = Cached::new(Some(Table::default()));
        c.manifest("h", "r", "v1").await.unwrap();
        let _ = c.manifest("h", "r", "sha256-a.sig").await;
        let offline: Cached<Table> = Cached::new(None);
        offline.load(&c.save()).unwrap();
        assert_eq!(
            offline.manifest("h", "r", "v1").await.unwrap().media_type,
            "for v1"
        );
        assert!(matches!(
            offline.manifest("h", "r", "sha256-a.sig").await,
            Err(FetchError::NotFound(_))
        ));
        assert!(matches!(
            offline.manifest("h", "r", "v2").await,
            Err(FetchError::Failed(_))
        ));
    }
}
