//! The admission HTTPS server: axum routes over rustls, HTTP/1.1 and HTTP/2, with
//! explicit limits on body size, time and connections, and a graceful stop.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, Endpoint, Snapshot};
use crate::metrics::Metrics;
use crate::tls::{self, ReloadingCert};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body; larger ones get 413 (the API server sends up to ~3 MiB).
    pub max_body: usize,
    /// From the start of a request to its response, body read included.
    pub request_timeout: Duration,
    /// TLS handshake deadline for a new connection.
    pub handshake_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 3 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// Where the webhook configurations send reviews (manifests/base/webhooks.yaml).
pub const VALIDATE_PATH: &str = "/validate";
pub const MUTATE_PATH: &str = "/mutate";

/// Shared by every request: the latest cluster snapshot and the server's parts.
pub struct App {
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// Why the server is not ready, or what it last loaded.
    status: RwLock<String>,
    /// What the reconciler last did; shown by /readyz, never making it fail.
    reconcile: RwLock<String>,
    pub admission: admission::Config,
    pub metrics: Arc<Metrics>,
    pub cert: Arc<ReloadingCert>,
}

impl App {
    pub fn new(admission: admission::Config, cert: Arc<ReloadingCert>) -> App {
        App {
            snapshot: RwLock::new(None),
            status: RwLock::new("cluster state not loaded yet".into()),
            reconcile: RwLock::new(String::new()),
            admission,
            metrics: Arc::new(Metrics::default()),
            cert,
        }
    }

    pub fn set_snapshot(&self, snapshot: Arc<Snapshot>, status: String) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
        self.set_status(status);
    }

    pub fn set_status(&self, status: String) {
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = status;
    }

    pub fn set_reconcile_status(&self, status: String) {
        *self.reconcile.write().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub fn router(app: Arc<App>, limits: &Limits) -> Router {
    let timeout = limits.request_timeout;
    Router::new()
        .route(VALIDATE_PATH, post(validate))
        .route(MUTATE_PATH, post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            deadline(req, next, timeout)
        }))
        .with_state(app)
}

async fn deadline(req: Request, next: Next, timeout: Duration) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            "request not completed in time\n",
        )
            .into_response(),
    }
}

async fn validate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    answer(&app, Endpoint::Validate, &body)
}

async fn mutate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    answer(&app, Endpoint::Mutate, &body)
}

fn answer(app: &App, endpoint: Endpoint, body: &[u8]) -> Response {
    let start = Instant::now();
    let Some(snapshot) = app.snapshot() else {
        app.metrics.bad_request();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster state not loaded yet\n",
        )
            .into_response();
    };
    match admission::review(body, endpoint, &snapshot, &app.admission) {
        Ok((review, decision)) => {
            app.metrics
                .observe(&decision, start.elapsed().as_secs_f64());
            tracing::info!(
                uid = %decision.uid,
                kind = %decision.kind,
                name = %decision.name,
                operation = %decision.operation,
                user = %decision.user,
                dry_run = decision.dry_run,
                verdict = decision.verdict.as_str(),
                reason = decision.reason,
                detail = decision.message.as_deref().unwrap_or(""),
                "admission decision"
            );
            let body = serde_json::to_vec(&review).expect("plain data serializes");
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(bad) => {
            app.metrics.bad_request();
            tracing::warn!(error = %bad, "malformed admission request");
            (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response()
        }
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let mut status = app.status.read().unwrap_or_else(|e| e.into_inner()).clone();
    let reconcile = app
        .reconcile
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if !reconcile.is_empty() {
        status.push_str("\nreconciler: ");
        status.push_str(&reconcile);
    }
    if app.snapshot().is_some() {
        (StatusCode::OK, format!("ok: {status}\n")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {status}\n"),
        )
            .into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics.set_cert_expiry(app.cert.not_after());
    let body = Body::from(app.metrics.encode());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight requests
/// finish within the grace period, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), rustls::Error> {
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(Arc::clone(&app.cert))?));
    let router = router(Arc::clone(&app), &limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!("grace period over with connections still open"),
    }
    Ok(())
}
