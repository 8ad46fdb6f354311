//! An admission server in the test process, over real TLS sockets, with a client that
//! trusts only the generated CA, as kube-apiserver does with the caBundle; and the same
//! routers without a socket where TLS is not the point.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use cip_core::render::RenderOptions;
use cip_webhook::webhook::admission::{self, Snapshot};
use cip_webhook::webhook::server::{self, App, Limits};
use cip_webhook::webhook::tls;

use crate::paths;

pub struct Server {
    pub addr: SocketAddr,
    pub ca: String,
    pub dir: tempfile::TempDir,
    pub app: Arc<App>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn write_pair(dir: &Path) -> String {
    let g = tls::generate(&["localhost".to_string()], 30).unwrap();
    std::fs::write(dir.join("tls.crt"), &g.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &g.key).unwrap();
    g.ca_cert
}

fn app_with(config: admission::Config, state: Option<&[&str]>, dir: &Path) -> Arc<App> {
    let cert =
        Arc::new(tls::ReloadingCert::new(&dir.join("tls.crt"), &dir.join("tls.key")).unwrap());
    let app = Arc::new(App::new(config, cert));
    if let Some(files) = state {
        let inputs = paths::load(files);
        app.state.set_snapshot(
            Arc::new(Snapshot::build(&inputs, &RenderOptions::default())),
            "test state".into(),
        );
    }
    app
}

/// The admission server on a loopback TLS socket.
pub async fn start_with(
    config: admission::Config,
    limits: Limits,
    state: Option<&[&str]>,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_pair(dir.path());
    let app = app_with(config, state, dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(
        listener,
        Arc::clone(&app),
        limits,
        async move {
            let _ = stopped.await;
        },
    ))
    .map_ok();
    Server {
        addr,
        ca,
        dir,
        app,
        stop: Some(stop),
        task,
    }
}

/// The admission router in the test process, without a socket, for tests of decisions
/// (where TLS and HTTP are not the point).
pub struct Routed {
    pub app: Arc<App>,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

pub fn routed_with(config: admission::Config, limits: Limits, state: Option<&[&str]>) -> Routed {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path());
    let app = app_with(config, state, dir.path());
    let router = server::router(Arc::clone(&app), &limits);
    Routed {
        app,
        router,
        _dir: dir,
    }
}

/// [`routed_with`] the examples' cluster state and the default limits.
pub fn routed() -> Routed {
    routed_with(
        admission::Config::default(),
        Limits::default(),
        Some(&STATE),
    )
}

pub trait MapOk {
    fn map_ok(self) -> tokio::task::JoinHandle<()>;
}

impl MapOk for tokio::task::JoinHandle<Result<(), rustls::Error>> {
    fn map_ok(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.await.unwrap().unwrap() })
    }
}

pub const STATE: [&str; 5] = [
    "examples/image.yaml",
    "examples/clusterversion.yaml",
    "examples/pools.yaml",
    "examples/p0.yaml",
    "examples/signed-apps.yaml",
];

pub async fn start() -> Server {
    start_with(
        admission::Config::default(),
        Limits::default(),
        Some(&STATE),
    )
    .await
}

pub async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Where a client connects: a server in this process or another.
pub trait Peer {
    fn addr(&self) -> SocketAddr;
    fn ca(&self) -> &str;
}

impl Peer for Server {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn ca(&self) -> &str {
        &self.ca
    }
}

/// A server in another process, trusted through its CA.
pub struct Remote {
    pub addr: SocketAddr,
    pub ca: String,
}

impl Peer for Remote {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn ca(&self) -> &str {
        &self.ca
    }
}

/// Something that answers admission requests: a server over TLS, or the router alone.
pub trait Admits {
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(StatusCode, Vec<u8>), String>>;
}

impl<T: Peer> Admits for T {
    /// One request on a fresh HTTP/1.1 connection.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let tls = connect(self.addr(), self.ca(), &[b"http/1.1"])
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        collected(response).await
    }
}

/// A response's status and whole body.
async fn collected<B>(response: hyper::Response<B>) -> Result<(StatusCode, Vec<u8>), String>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Display,
{
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes().to_vec()))
}

impl Admits for Routed {
    /// One request through the router's tower service.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        use tower::ServiceExt;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .map_err(|e| e.to_string())?;
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| e.to_string())?;
        collected(response).await
    }
}

/// One request, which must get an answer.
pub async fn send(
    server: &impl Admits,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    send_checked(server, method, path, body)
        .await
        .expect("the server answers")
}

/// [`send`], with the failure to connect or to get an answer as an error.
pub async fn send_checked(
    server: &impl Admits,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Vec<u8>), String> {
    server.call(method, path, body).await
}

pub fn review(kind: &str, operation: &str, user: &str, object: Value) -> Vec<u8> {
    let name = object
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(json!(""));
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0d6c1d9a-5f2a-4d4e-9b8e-1b2c3d4e5f60",
            "kind": {"group": "config.openshift.io", "version": "v1", "kind": kind},
            "resource": {"group": "config.openshift.io", "version": "v1", "resource": "x"},
            "name": name,
            "operation": operation,
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    }))
    .unwrap()
}

pub fn policy(version: &str, scopes: &[&str]) -> Value {
    json!({
        "apiVersion": format!("config.openshift.io/{version}"),
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "p"},
        "spec": {
            "scopes": scopes,
            "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {
                "keyData": paths::b64(paths::cosign_pub())
            }}}
        }
    })
}

pub async fn validate(server: &impl Admits, body: Vec<u8>) -> Value {
    let (status, bytes) = send(server, "POST", "/validate", body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let review: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"],
        "0d6c1d9a-5f2a-4d4e-9b8e-1b2c3d4e5f60"
    );
    review["response"].clone()
}

/// The AdmissionResponse of /mutate for this object.
pub async fn mutate(server: &impl Admits, operation: &str, object: Value) -> Value {
    let (status, bytes) = send(
        server,
        "POST",
        "/mutate",
        review("ClusterImagePolicy", operation, "u", object),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice::<Value>(&bytes).unwrap()["response"].clone()
}

/// Where an in-process admission server keeps its state.
pub trait HasApp {
    fn app(&self) -> &Arc<App>;
}

impl HasApp for Server {
    fn app(&self) -> &Arc<App> {
        &self.app
    }
}

impl HasApp for Routed {
    fn app(&self) -> &Arc<App> {
        &self.app
    }
}

/// /metrics from the metrics port's router, without a socket.
pub async fn metrics(s: &impl HasApp) -> String {
    use tower::ServiceExt;
    let response = server::ops_router(Arc::clone(s.app()))
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
