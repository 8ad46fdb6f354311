//! The registry edge: manifests and blobs over HTTP as containers/image's
//! `docker/docker_client.go` fetches them — bearer tokens on a 401 challenge, credentials
//! from a containers-auth.json, plain HTTP only for registries the Image CR lists as
//! insecure, 4 MiB caps on manifests and signature blobs (`iolimits`), one wait on 429 or
//! 503 as `Retry-After` says, blob redirects followed without the credentials when the
//! host changes. Judging lives in `cip_sigstore`; this only fetches.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioExecutor;

use crate::pull::lock;
use crate::pull::proxy::Connector;

/// `iolimits.MaxManifestBodySize`.
pub const MAX_MANIFEST: usize = 4 << 20;
/// `iolimits.MaxSignatureBodySize`.
pub const MAX_SIGNATURE: usize = 4 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; a longer one is an error.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// What `fetchManifest` asks for (`manifest.DefaultRequestedManifestMIMETypes`).
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// `isManifestUnknownError`: the manifest does not exist there.
    #[error("{0}: manifest unknown")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    /// The response's `Content-Type`, parameters dropped.
    pub media_type: String,
}

/// Where manifests and blobs come from: a registry over HTTP, or attachments saved before.
pub trait Source: Sync {
    fn manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
    ) -> impl Future<Output = Result<Manifest, FetchError>> + Send;
    fn blob(
        &self,
        host: &str,
        repo: &str,
        digest: &str,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
}

type Https = hyper_rustls::HttpsConnector<Connector>;

pub struct Client {
    http: hyper_util::client::legacy::Client<Https, Full<Bytes>>,
    /// Image CR `insecureRegistries` scopes: plain HTTP allowed when HTTPS fails.
    insecure: Vec<String>,
    auths: HashMap<String, (String, String)>,
    tokens: Mutex<HashMap<(String, String), String>>,
    /// The scheme that answered, per insecure host.
    schemes: Mutex<HashMap<String, &'static str>>,
    requests: AtomicUsize,
    /// Retries of a 5xx answer, each after twice the wait of the one before (from 500 ms):
    /// none for the CLI, as containers/image; the reconciler's background pass retries.
    retries_5xx: u32,
}

struct Response {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Client {
    /// `insecure`: the Image CR's insecure registries; `authfile`: containers-auth.json text.
    pub fn new(insecure: Vec<String>, authfile: Option<&str>) -> Result<Client, String> {
        Client::with_trusted_cas(insecure, authfile, &std::collections::BTreeMap::new())
    }

    /// As [`Client::with_trusted_cas`], through the proxies the environment names.
    pub fn with_trusted_cas(
        insecure: Vec<String>,
        authfile: Option<&str>,
        cas: &std::collections::BTreeMap<String, String>,
    ) -> Result<Client, String> {
        Client::connecting(insecure, authfile, cas, Connector::from_env())
    }

    /// As [`Client::new`], trusting also the Image CR's `additionalTrustedCA` (its
    /// ConfigMap's data: `host..port` → PEM) for the registries it names.
    pub fn connecting(
        insecure: Vec<String>,
        authfile: Option<&str>,
        cas: &std::collections::BTreeMap<String, String>,
        proxies: Connector,
    ) -> Result<Client, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = crate::pull::trust::client_config(cas)
            .map_err(|e| format!("loading the CA certificates: {e}"))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(proxies);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Client {
            http,
            insecure,
            auths: parse_authfile(authfile)?,
            tokens: Mutex::default(),
            schemes: Mutex::default(),
            requests: AtomicUsize::new(0),
            retries_5xx: 0,
        })
    }

    /// Retries 5xx answers up to `retries` times with exponential backoff.
    pub fn with_backoff(mut self, retries: u32) -> Client {
        self.retries_5xx = retries;
        self
    }

    /// HTTP requests sent so far (token requests included).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    fn is_insecure(&self, host: &str) -> bool {
        self.insecure.iter().any(|s| {
            s == host
                || s.strip_prefix("*.")
                    .is_some_and(|d| host.ends_with(&format!(".{d}")))
        })
    }

    /// containers-auth.json: the most specific of `host/repo…` and `host`.
    fn credentials(&self, host: &str, repo: &str) -> Option<&(String, String)> {
        let mut key = format!("{host}/{repo}");
        loop {
            if let Some(c) = self.auths.get(&key) {
                return Some(c);
            }
            match key.rfind('/') {
                Some(i) => key.truncate(i),
                None => return None,
            }
        }
    }

    async fn send(
        &self,
        url: &str,
        authorization: Option<&str>,
        limit: usize,
    ) -> Result<Response, String> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header("Accept", ACCEPT)
            .header(
                "User-Agent",
                concat!("cip-webhook/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = authorization {
            request = request.header("Authorization", a);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("{url}: {e}"))?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                format!("GET {url}: {text}")
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: reading the body: {e} (limit {limit} bytes)"))?
                .to_bytes()
                .to_vec();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("GET {url}: no answer within {REQUEST_TIMEOUT:?}"))?
    }

    /// A request to the registry API, with the scheme learnt for the host, a token got on
    /// a challenge, and one wait on 429/503.
    async fn api(
        &self,
        host: &str,
        repo: &str,
        path: &str,
        limit: usize,
    ) -> Result<Response, String> {
        let endpoint = endpoint_of(host);
        let known = lock(&self.schemes).get(host).copied();
        let schemes: Vec<&'static str> = match known {
            Some(s) => vec![s],
            None if self.is_insecure(host) => vec!["https", "http"],
            None => vec!["https"],
        };
        let mut last = String::new();
        for scheme in schemes {
            let url = format!("{scheme}://{endpoint}{path}");
            match self.authorized(host, repo, &url, limit).await {
                Ok(response) => {
                    lock(&self.schemes).insert(host.to_string(), scheme);
                    return Ok(response);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn authorized(
        &self,
        host: &str,
        repo: &str,
        url: &str,
        limit: usize,
    ) -> Result<Response, String> {
        let key = (host.to_string(), repo.to_string());
        let mut authorization = lock(&self.tokens).get(&key).cloned();
        let mut challenged = false;
        let mut waited = false;
        let mut retried = 0;
        loop {
            let response = self.send(url, authorization.as_deref(), limit).await?;
            match response.status {
                StatusCode::UNAUTHORIZED if !challenged => {
                    challenged = true;
                    let header = response
                        .headers
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let value = self.answer_challenge(&header, host, repo).await?;
                    lock(&self.tokens).insert(key.clone(), value.clone());
                    authorization = Some(value);
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE if !waited => {
                    waited = true;
                    let wait = retry_after(&response.headers).unwrap_or(Duration::from_secs(1));
                    if wait > MAX_RETRY_AFTER {
                        return Err(format!(
                            "{url}: {} with Retry-After {wait:?}",
                            response.status
                        ));
                    }
                    tokio::time::sleep(wait).await;
                }
                status if status.is_server_error() && retried < self.retries_5xx => {
                    tokio::time::sleep(Duration::from_millis(500) * 2u32.pow(retried)).await;
                    retried += 1;
                }
                _ => return Ok(response),
            }
        }
    }

    /// A `WWW-Authenticate` challenge answered: a bearer token from the realm (with the
    /// credentials, if any), or the credentials for Basic.
    async fn answer_challenge(
        &self,
        header: &str,
        host: &str,
        repo: &str,
    ) -> Result<String, String> {
        let credentials = self.credentials(host, repo);
        let basic = credentials.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| {
                format!("{host}: authentication required and no credentials for it")
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "{host}: unsupported authentication challenge {header:?}"
            ));
        }
        let params = challenge_params(params);
        let realm = params
            .get("realm")
            .ok_or_else(|| format!("{host}: bearer challenge without a realm"))?;
        let mut url = format!(
            "{realm}?scope={}",
            encode(&format!("repository:{repo}:pull"))
        );
        if let Some(service) = params.get("service") {
            url.push_str(&format!("&service={}", encode(service)));
        }
        let response = self.send(&url, basic.as_deref(), 1 << 20).await?;
        if response.status != StatusCode::OK {
            return Err(format!(
                "{host}: the token server answered {}",
                response.status
            ));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let token: Token = serde_json::from_slice(&response.body)
            .map_err(|e| format!("{host}: the token does not decode: {e}"))?;
        let value = if token.token.is_empty() {
            token.access_token
        } else {
            token.token
        };
        if value.is_empty() {
            return Err(format!("{host}: the token server gave no token"));
        }
        Ok(format!("Bearer {value}"))
    }
}

impl Source for Client {
    async fn manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Manifest, FetchError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let r = self
            .api(host, repo, &path, MAX_MANIFEST)
            .await
            .map_err(FetchError::Failed)?;
        let sep = if reference.contains(':') { '@' } else { ':' };
        let what = format!("{host}/{repo}{sep}{reference}");
        if r.status == StatusCode::NOT_FOUND && manifest_unknown(&r.body) {
            return Err(FetchError::NotFound(what));
        }
        if r.status != StatusCode::OK {
            return Err(FetchError::Failed(format!(
                "{what}: {}{}",
                r.status,
                error_text(&r.body)
            )));
        }
        let media_type = r
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
            .unwrap_or_default();
        Ok(Manifest {
            bytes: r.body,
            media_type,
        })
    }

    async fn blob(&self, host: &str, repo: &str, digest: &str) -> Result<Vec<u8>, FetchError> {
        let what = format!("{host}/{repo}@{digest}");
        let path = format!("/v2/{repo}/blobs/{digest}");
        let mut r = self
            .api(host, repo, &path, MAX_SIGNATURE)
            .await
            .map_err(FetchError::Failed)?;
        let mut hops = 0;
        let scheme = lock(&self.schemes).get(host).copied().unwrap_or("https");
        let mut origin = format!("{scheme}://{}", endpoint_of(host));
        while r.status.is_redirection() {
            hops += 1;
            let location = r
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if hops > 10 || location.is_empty() {
                return Err(FetchError::Failed(format!("{what}: too many redirects")));
            }
            let url = resolve(&origin, location);
            origin = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
            // Storage redirects are pre-signed: no registry credentials go there.
            r = self
                .send(&url, None, MAX_SIGNATURE)
                .await
                .map_err(FetchError::Failed)?;
        }
        if r.status != StatusCode::OK {
            return Err(FetchError::Failed(format!(
                "{what}: {}{}",
                r.status,
                error_text(&r.body)
            )));
        }
        Ok(r.body)
    }
}

/// A redirect's `Location` against the origin (`scheme://host`) that sent it.
fn resolve(origin: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        format!("{origin}/{location}")
    }
}

/// Docker Hub's API lives on another host than its name.
fn endpoint_of(host: &str) -> &str {
    if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    }
}

/// `isManifestUnknownError` on a 404: `MANIFEST_UNKNOWN`, `UNKNOWN` with a "not found"
/// message (registry.redhat.io, Harbor), or a 404 without an error body.
fn manifest_unknown(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorCode>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorCode {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => e.errors.iter().any(|e| {
            e.code == "MANIFEST_UNKNOWN"
                || (e.code == "UNKNOWN" && e.message.to_lowercase().contains("not found"))
        }),
        _ => true,
    }
}

fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)])
        .trim()
        .to_string();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// `key="value"` pairs of a challenge.
fn challenge_params(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_lowercase();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.insert(key, value.to_string());
        rest = next.trim_start_matches([',', ' ']);
    }
    out
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// containers-auth.json(5): `auths` keyed by registry or namespace, `auth` holding
/// base64 `user:password`.
/// One containers-auth.json from the cluster's pull secret and pods' pull secrets (each a
/// `.dockerconfigjson`, or a legacy `.dockercfg` map): the cluster's entries first, then a
/// pod secret's for registries the ones before do not name. One set of credentials per
/// registry key is all a shared client can hold; a registry that refuses them is a
/// registry error (unknown), never a refusal.
pub fn merge_auths(cluster: Option<&str>, pods: &[String]) -> Option<String> {
    let mut auths = serde_json::Map::new();
    let entries = |text: &str| -> Option<serde_json::Map<String, serde_json::Value>> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        match value.get("auths") {
            Some(serde_json::Value::Object(m)) => Some(m.clone()),
            Some(_) => None,
            None => value.as_object().cloned(),
        }
    };
    for text in cluster.into_iter().chain(pods.iter().map(String::as_str)) {
        for (key, entry) in entries(text).unwrap_or_default() {
            auths.entry(key).or_insert(entry);
        }
    }
    (!auths.is_empty()).then(|| serde_json::json!({ "auths": auths }).to_string())
}

fn parse_authfile(text: Option<&str>) -> Result<HashMap<String, (String, String)>, String> {
    let Some(text) = text else {
        return Ok(HashMap::new());
    };
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: String,
    }
    let file: File =
        serde_json::from_str(text).map_err(|e| format!("the auth file does not decode: {e}"))?;
    let mut out = HashMap::new();
    for (key, entry) in file.auths {
        if entry.auth.is_empty() {
            continue;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(entry.auth.trim())
            .map_err(|e| format!("auths.{key}.auth: {e}"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        out.insert(key.to_string(), (user.to_string(), password.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_their_origin() {
        let o = "http://127.0.0.1:5000";
        assert_eq!(
            resolve(o, "/v2/a/blobs/x"),
            "http://127.0.0.1:5000/v2/a/blobs/x"
        );
        assert_eq!(
            resolve(o, "https://s3.example/b?sig=1"),
            "https://s3.example/b?sig=1"
        );
    }

    #[test]
    fn challenges() {
        let p = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
    }

    #[test]
    fn manifest_unknown_as_containers_image() {
        assert!(manifest_unknown(
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}"#
        ));
        assert!(manifest_unknown(
            br#"{"errors":[{"code":"UNKNOWN","message":"Not Found"}]}"#
        ));
        assert!(manifest_unknown(b"404 page not found"));
        assert!(!manifest_unknown(
            br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}"#
        ));
    }

    #[test]
    fn pod_pull_secrets_add_registries_the_cluster_secret_does_not_name() {
        let cluster = r#"{"auths": {"quay.io": {"auth": "Y2x1c3Rlcjp4"}}}"#;
        let pods = [
            r#"{"auths": {"quay.io": {"auth": "cG9kOnk="}, "r.example.com": {"auth": "cG9kOnk="}}}"#
                .to_string(),
            // A legacy .dockercfg: the map itself.
            r#"{"old.example.com": {"auth": "b2xkOno="}}"#.to_string(),
            "not json".to_string(),
        ];
        let merged = merge_auths(Some(cluster), &pods).unwrap();
        let auths = parse_authfile(Some(&merged)).unwrap();
        assert_eq!(auths["quay.io"], ("cluster".into(), "x".into()));
        assert_eq!(auths["r.example.com"], ("pod".into(), "y".into()));
        assert_eq!(auths["old.example.com"], ("old".into(), "z".into()));
        assert_eq!(merge_auths(None, &[]), None);
    }

    #[test]
    fn authfile_most_specific_entry() {
        let text = r#"{"auths":{"quay.io":{"auth":"YTpi"},"quay.io/org":{"auth":"Yzpk"}}}"#;
        let c = Client::new(vec![], Some(text)).unwrap();
        assert_eq!(
            c.credentials("quay.io", "org/app"),
            Some(&("c".into(), "d".into()))
        );
        assert_eq!(
            c.credentials("quay.io", "other/app"),
            Some(&("a".into(), "b".into()))
        );
        assert_eq!(c.credentials("docker.io", "x"), None);
    }
}
