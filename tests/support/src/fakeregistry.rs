//! A registry in process, on loopback, that misbehaves on demand: tokens, Basic
//! credentials, faults by path, one 429, blob redirects, and latency added to every
//! answer; images signed as cosign signs them. For the fetch rules' tests and the
//! running-images benchmarks (`requests` counts what reached it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;
use serde_json::json;

pub const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Default)]
pub struct Fake {
    /// (repo, reference) → (content type, body).
    pub manifests: HashMap<(String, String), (String, Vec<u8>)>,
    pub blobs: HashMap<String, Vec<u8>>,
    /// Path suffix → status returned instead (e.g. `.sig` → 500).
    pub faults: Vec<(String, StatusCode)>,
    /// Answer 429 with `Retry-After: 1` to the first manifest request.
    pub throttle_once: bool,
    /// Require a bearer token got from `/token`.
    pub token: bool,
    /// Require Basic credentials.
    pub basic: bool,
    /// With `basic`, require exactly these (`user:password`).
    pub basic_as: Option<String>,
    /// Added before every answer.
    pub latency: std::time::Duration,
    /// Answer blob requests with a relative redirect to `/storage/<digest>`.
    pub redirect_blobs: bool,
}

pub struct Registry {
    pub fake: Mutex<Fake>,
    pub requests: AtomicUsize,
    pub host: Mutex<String>,
}

pub type Shared = Arc<Registry>;

async fn delay(r: &Registry) {
    let latency = r.fake.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

async fn token(State(r): State<Shared>) -> Response {
    r.requests.fetch_add(1, Ordering::SeqCst);
    delay(&r).await;
    (
        [("content-type", "application/json")],
        json!({"token": "t0k"}).to_string(),
    )
        .into_response()
}

async fn manifest(
    State(r): State<Shared>,
    Path((repo, reference)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    r.requests.fetch_add(1, Ordering::SeqCst);
    delay(&r).await;
    let host = r.host.lock().unwrap().clone();
    let mut f = r.fake.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if f.token && auth != "Bearer t0k" {
        let challenge = format!(r#"Bearer realm="http://{host}/token",service="fake""#);
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
    }
    let expected = f.basic_as.as_ref().map(|c| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(c)
        )
    });
    if f.basic && (auth.is_empty() || expected.is_some_and(|e| e != auth)) {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"fake\"")],
        )
            .into_response();
    }
    if f.throttle_once {
        f.throttle_once = false;
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
    }
    if let Some((_, status)) = f
        .faults
        .iter()
        .find(|(suffix, _)| reference.ends_with(suffix.as_str()))
    {
        return (*status, "fault").into_response();
    }
    match f.manifests.get(&(repo.replace("%2F", "/"), reference)) {
        Some((ct, body)) => ([("content-type", ct.clone())], body.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
                .to_string(),
        )
            .into_response(),
    }
}

async fn blob(State(r): State<Shared>, Path((_, digest)): Path<(String, String)>) -> Response {
    r.requests.fetch_add(1, Ordering::SeqCst);
    delay(&r).await;
    if r.fake.lock().unwrap().redirect_blobs {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("/storage/{digest}"))],
        )
            .into_response();
    }
    stored(State(r), Path(digest)).await
}

async fn stored(State(r): State<Shared>, Path(digest): Path<String>) -> Response {
    match r.fake.lock().unwrap().blobs.get(&digest) {
        Some(b) => Bytes::from(b.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub async fn start(fake: Fake) -> (Shared, String) {
    let shared = Arc::new(Registry {
        fake: Mutex::new(fake),
        requests: AtomicUsize::new(0),
        host: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .route(
            "/v2/org/{repo}/manifests/{reference}",
            axum::routing::get(manifest),
        )
        .route("/v2/org/{repo}/blobs/{digest}", axum::routing::get(blob))
        .route("/storage/{digest}", axum::routing::get(stored))
        .with_state(Arc::clone(&shared));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    *shared.host.lock().unwrap() = host.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (shared, host)
}

pub fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

pub struct Signer {
    pub pair: EcdsaKeyPair,
    pub pem: String,
}

pub fn signer() -> Signer {
    let (pair, pem) = crate::signing::p256();
    Signer { pair, pem }
}

/// A registry holding `org/app:v1`, signed by `s` for `host/org/app:v1`; returns its
/// image digest.
pub fn signed_image(f: &mut Fake, s: &Signer, host: &str) -> String {
    signed_image_in(f, s, host, "app")
}

/// As [`signed_image`], for `org/<repo>:v1` (its own manifest and digest).
pub fn signed_image_in(f: &mut Fake, s: &Signer, host: &str, repo: &str) -> String {
    image_signed_with(f, host, repo, |payload| {
        let sig = s.pair.sign(&SystemRandom::new(), payload).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig.as_ref());
        json!({"dev.cosignproject.cosign/signature": b64})
    })
}

/// `org/<repo>:v1` with one signature layer, its annotations from `annotate(payload)`.
fn image_signed_with(
    f: &mut Fake,
    host: &str,
    repo: &str,
    annotate: impl FnOnce(&[u8]) -> serde_json::Value,
) -> String {
    let image = json!({"schemaVersion": 2, "mediaType": OCI, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2}, "layers": [], "annotations": {"repo": repo}}).to_string().into_bytes();
    let digest = sha256(&image);
    f.manifests
        .insert((repo.into(), "v1".into()), (OCI.into(), image.clone()));
    f.manifests
        .insert((repo.into(), digest.clone()), (OCI.into(), image));
    let payload = crate::keyless::payload(&format!("{host}/org/{repo}:v1"), &digest);
    let annotations = annotate(&payload);
    let payload_digest = sha256(&payload);
    f.blobs.insert(payload_digest.clone(), payload.clone());
    let attachment = json!({"schemaVersion": 2, "mediaType": OCI,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": payload_digest, "size": payload.len(),
                    "annotations": annotations}]});
    f.manifests.insert(
        (repo.into(), format!("{}.sig", digest.replace(':', "-"))),
        (OCI.into(), attachment.to_string().into_bytes()),
    );
    digest
}

/// A Fulcio root and intermediate, and a Rekor log: what cosign's keyless signing uses.
pub struct KeylessSigner {
    pub root: crate::keyless::Ca,
    pub intermediate: crate::keyless::Ca,
    pub rekor: crate::keyless::Rekor,
    pub email: String,
    pub issuer: String,
    /// When signatures are made (Unix seconds): each leaf is valid ten minutes from it.
    pub at: i64,
}

impl KeylessSigner {
    pub fn new(at: i64) -> KeylessSigner {
        let root = crate::keyless::Ca::root("fulcio-root", at - 86_400, at + 86_400 * 365);
        let intermediate = root.intermediate("fulcio-intermediate", at - 86_400, at + 86_400 * 30);
        KeylessSigner {
            root,
            intermediate,
            rekor: crate::keyless::Rekor::new(),
            email: "ci@example.com".into(),
            issuer: "https://issuer.example.com".into(),
            at,
        }
    }
}

/// As [`many_signed`], each image signed keyless: a leaf certificate of its own, the
/// chain, and a Rekor bundle.
pub fn many_keyless(
    f: &mut Fake,
    k: &KeylessSigner,
    host: &str,
    n: usize,
) -> Vec<(String, String)> {
    use crate::keyless::{sign, Leaf, BUNDLE, CERTIFICATE, CHAIN};
    let chain = format!("{}{}", k.intermediate.pem, k.root.pem);
    (0..n)
        .map(|i| {
            let repo = format!("app-{i}");
            let digest = image_signed_with(f, host, &repo, |payload| {
                let (cert, key) = k.intermediate.leaf(&Leaf::fulcio(&k.email, &k.issuer, k.at - 60));
                let sig = sign(&key, payload);
                let bundle = k.rekor.bundle(&cert, &sig, payload, k.at - 30);
                json!({"dev.cosignproject.cosign/signature": sig, CERTIFICATE: cert, CHAIN: chain, BUNDLE: bundle})
            });
            (format!("{host}/org/{repo}:v1"), digest)
        })
        .collect()
}

/// A registry holding `n` signed images `org/app-<i>:v1`; each one's (image, digest).
pub fn many_signed(f: &mut Fake, s: &Signer, host: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let repo = format!("app-{i}");
            let digest = signed_image_in(f, s, host, &repo);
            (format!("{host}/org/{repo}:v1"), digest)
        })
        .collect()
}

/// A registry served over TLS on loopback as `localhost:PORT`, its certificate from a CA
/// of its own (as a registry behind the Image CR's `additionalTrustedCA`): the registry,
/// its host and the CA's PEM. `setup` gets the host.
pub async fn start_tls(setup: impl FnOnce(&mut Fake, &str)) -> (Shared, String, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("localhost:{}", listener.local_addr().unwrap().port());
    let mut fake = Fake::default();
    setup(&mut fake, &host);
    let (shared, plain) = start(fake).await;
    let made = cip_webhook::webhook::tls::generate(&["localhost".to_string()], 1).unwrap();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(made.cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(made.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    // TLS in front, the plain registry behind: one connection through for each accepted.
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, plain) = (acceptor.clone(), plain.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut back) = tokio::net::TcpStream::connect(&plain).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
                }
            });
        }
    });
    (shared, host, made.ca_cert)
}

/// An HTTP proxy on loopback that opens CONNECT tunnels, all to `backend` whatever the
/// target (so names that resolve nowhere can be used): its address and the targets asked.
pub async fn connect_proxy(backend: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let (seen, backend) = (Arc::clone(&targets), backend.to_string());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (seen, backend) = (Arc::clone(&seen), backend.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let Some(target) = head
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split(' ').next())
                else {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                };
                seen.lock().unwrap().push(target.to_string());
                let Ok(mut back) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut back).await;
            });
        }
    });
    (addr, targets)
}
