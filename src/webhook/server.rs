//! The admission HTTPS server: axum routes over rustls, HTTP/1.1 and HTTP/2, with
//! explicit limits on body size, time, memory and connections, and a graceful stop.
//!
//! The port must be open to the whole cluster network (the API server's source address
//! varies) and clients are not authenticated, so nothing a client does may hold the server:
//! every connection state has a deadline (TLS handshake, first request, headers, body,
//! idle keep-alive, an HTTP/2 connection with no stream), the protocol comes from ALPN (no
//! read waits to sniff it), the bodies in flight share one memory budget, and decisions
//! run on blocking threads, a few at a time, so that a slow one gets its 408 and
//! `/healthz` still answers. When every connection slot is taken, idle connections are
//! closed to make room.
//!
//! Metrics, health and readiness are also served on a separate plain-HTTP port
//! ([`serve_ops`]) so that a NetworkPolicy can keep the admission port open to the API
//! server (whose source address varies) and the metrics port to monitoring alone. The
//! reconciler's Deployment serves only that port.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, Endpoint, Snapshot};
use crate::metrics::Metrics;
use crate::tls::{self, ReloadingCert};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body; larger ones get 413 (the API server sends up to ~3 MiB).
    pub max_body: usize,
    /// Request bodies held in memory at once, all connections together.
    pub max_body_in_flight: usize,
    /// From the start of a request to its response, body read included.
    pub request_timeout: Duration,
    /// TLS handshake deadline for a new connection.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight is closed after this long (the first
    /// request must come within `request_timeout`).
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Admission decisions computed at once; the others wait (within their deadline).
    pub max_decisions: usize,
    /// How long in-flight requests may take to finish once the server stops accepting.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 3 * 1024 * 1024,
            max_body_in_flight: 32 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_decisions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            // Past the request timeout, so a request that arrived just before the stop
            // gets its answer.
            shutdown_grace: Duration::from_secs(15),
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
    /// Set on SIGTERM: /readyz fails at once so endpoints drop this pod while it still
    /// serves.
    stopping: AtomicBool,
    pub admission: admission::Config,
    pub metrics: Arc<Metrics>,
    /// None where this process serves no admission (the reconciler's Deployment).
    pub cert: Option<Arc<ReloadingCert>>,
}

impl App {
    pub fn new(admission: admission::Config, cert: Arc<ReloadingCert>) -> App {
        App::with_cert(admission, Some(cert))
    }

    /// An app that serves only metrics, health and readiness.
    pub fn without_admission() -> App {
        App::with_cert(admission::Config::default(), None)
    }

    fn with_cert(admission: admission::Config, cert: Option<Arc<ReloadingCert>>) -> App {
        App {
            snapshot: RwLock::new(None),
            status: RwLock::new("cluster state not loaded yet".into()),
            reconcile: RwLock::new(String::new()),
            stopping: AtomicBool::new(false),
            admission,
            metrics: Arc::new(Metrics::default()),
            cert,
        }
    }

    /// From now on /readyz answers 503; requests are still served.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// What /readyz answers 200 for: a snapshot loaded, no SIGTERM yet.
    fn is_ready(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst) && self.snapshot().is_some()
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

/// What the request handlers share: the app and the gates of the limits.
#[derive(Clone)]
struct Shared {
    app: Arc<App>,
    max_body: usize,
    /// KiB of request bodies that may be in memory at once.
    bodies: Arc<Semaphore>,
    decisions: Arc<Semaphore>,
}

pub fn router(app: Arc<App>, limits: &Limits) -> Router {
    let timeout = limits.request_timeout;
    let metrics = Arc::clone(&app.metrics);
    let shared = Shared {
        app,
        max_body: limits.max_body,
        bodies: Arc::new(Semaphore::new(kib(limits.max_body_in_flight))),
        decisions: Arc::new(Semaphore::new(limits.max_decisions.max(1))),
    };
    Router::new()
        .route(VALIDATE_PATH, post(validate))
        .route(MUTATE_PATH, post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            deadline(req, next, timeout, Arc::clone(&metrics))
        }))
        .with_state(shared)
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).clamp(1, Semaphore::MAX_PERMITS)
}

async fn deadline(req: Request, next: Next, timeout: Duration, metrics: Arc<Metrics>) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            metrics.bad_request();
            (
                StatusCode::REQUEST_TIMEOUT,
                "request not completed in time\n",
            )
                .into_response()
        }
    }
}

async fn validate(State(shared): State<Shared>, req: Request) -> Response {
    answer(shared, Endpoint::Validate, req).await
}

async fn mutate(State(shared): State<Shared>, req: Request) -> Response {
    answer(shared, Endpoint::Mutate, req).await
}

/// A value from the request for a plain log line: control characters escaped, so that a
/// name with a newline cannot forge another line.
fn loggable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.escape_default().to_string().into()
    } else {
        s.into()
    }
}

async fn answer(shared: Shared, endpoint: Endpoint, req: Request) -> Response {
    let start = Instant::now();
    let app = &shared.app;
    let Some(snapshot) = app.snapshot() else {
        app.metrics.bad_request();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster state not loaded yet\n",
        )
            .into_response();
    };
    // Room for the body in the shared memory budget, before a byte of it is read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let h2 = req.version() == axum::http::Version::HTTP_2;
    let drain = if h2 {
        shared.max_body * DRAIN_FACTOR
    } else {
        0
    };
    if declared.is_some_and(|n| n > shared.max_body) {
        if declared.is_some_and(|n| n <= drain) {
            let _ = read_body(req.into_body(), 0, drain).await;
        }
        return too_large(app, shared.max_body);
    }
    let want = kib(declared.unwrap_or(shared.max_body));
    let Ok(_memory) = shared.bodies.acquire_many(want as u32).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let body = match read_body(req.into_body(), shared.max_body, drain).await {
        Ok(body) => body,
        Err(()) => return too_large(app, shared.max_body),
    };
    let Ok(_turn) = shared.decisions.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let small = body.len() <= INLINE_DECISION_BYTES;
    let decide = move |config: &App| {
        admission::review(&body, endpoint, &snapshot, &config.admission).map(
            |(review, decision)| {
                let body = serde_json::to_vec(&review).expect("plain data serializes");
                (body, decision)
            },
        )
    };
    // A policy of a few KiB is judged in about 20 µs (`cargo bench`): on this task, as a
    // handler may. Handing it to the blocking pool cost more than the decision
    // (tests/bench_admission.rs: 112 µs of server CPU per request that way, 75 µs inline,
    // 37 µs for a trivial handler). Large bodies (key bundles up to --max-body) go to the
    // blocking pool, so that they never hold up the connections sharing this worker.
    let decided = if small {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(app)))
            .map_err(|_| "the decision panicked".to_string())
    } else {
        let config = Arc::clone(app);
        tokio::task::spawn_blocking(move || decide(&config))
            .await
            .map_err(|e| e.to_string())
    };
    match decided {
        Ok(Ok((body, decision))) => {
            app.metrics
                .observe(&decision, start.elapsed().as_secs_f64());
            // What an operator acts on is logged at info: denials and warnings. A plain
            // admission is counted (`cip_webhook_admission_requests_total`) and logged at
            // debug: a decision line costs about as much as the decision (11.5 µs for a
            // denial's, tests/bench_admission.rs), and a GitOps sync would bury the
            // denials under it.
            macro_rules! decision_line {
                ($level:expr) => {
                    tracing::event!(
                        $level,
                        uid = %loggable(&decision.uid),
                        kind = %loggable(&decision.kind),
                        name = %loggable(&decision.name),
                        operation = %loggable(&decision.operation),
                        user = %loggable(&decision.user),
                        dry_run = decision.dry_run,
                        verdict = decision.verdict.as_str(),
                        reason = decision.reason.as_str(),
                        detail = %loggable(decision.message.as_deref().unwrap_or("")),
                        "admission decision"
                    )
                };
            }
            if decision.is_routine() {
                decision_line!(tracing::Level::DEBUG);
            } else {
                decision_line!(tracing::Level::INFO);
            }
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Ok(Err(bad)) => {
            app.metrics.bad_request();
            tracing::warn!(error = %loggable(&bad.to_string()), "malformed admission request");
            (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "admission decision panicked");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

/// Bodies up to this size are decided on the request's task.
const INLINE_DECISION_BYTES: usize = 16 * 1024;

/// How many times `--max-body` an HTTP/2 body over the limit is read on and thrown away.
const DRAIN_FACTOR: usize = 4;

/// The body, up to `max` bytes. Past that it is an error, after reading on (discarding,
/// nothing held) up to `drain` bytes in all: over HTTP/2, a response sent while the client
/// is still sending ends the stream with a reset, and clients (curl, Go) then report a
/// stream error instead of the 413. Past `drain` the stream is reset anyway.
async fn read_body(body: Body, max: usize, drain: usize) -> Result<axum::body::Bytes, ()> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ())?;
        seen += chunk.len();
        if seen <= max {
            kept.extend_from_slice(&chunk);
        } else if seen > drain {
            break;
        } else {
            kept = Vec::new();
        }
    }
    if seen > max {
        return Err(());
    }
    Ok(kept.into())
}

fn too_large(app: &App, max: usize) -> Response {
    app.metrics.bad_request();
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {max} bytes\n"),
    )
        .into_response()
}

/// The metrics port's routes: `/metrics`, `/healthz` and `/readyz`.
pub fn ops_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(app): State<Arc<App>>| async move { ready(&app) }),
        )
        .route("/metrics", get(metrics_page))
        .with_state(app)
}

async fn readyz(State(shared): State<Shared>) -> Response {
    ready(&shared.app)
}

fn ready(app: &App) -> Response {
    if app.stopping.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response();
    }
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
    if app.is_ready() {
        (StatusCode::OK, format!("ok: {status}\n")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {status}\n"),
        )
            .into_response()
    }
}

async fn metrics_page(State(app): State<Arc<App>>) -> Response {
    app.metrics.set_ready(app.is_ready());
    if let Some(cert) = &app.cert {
        app.metrics.set_cert_expiry(cert.not_after());
    }
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

/// What a connection's watchdog knows of it.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds since the connection was accepted, at its last response.
    last: AtomicU64,
}

/// Counts a connection's requests in flight, for its watchdog.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    accepted: Instant,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Tracked<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send + 'static>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let activity = Arc::clone(&self.activity);
        let accepted = self.accepted;
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.requests.fetch_add(1, Ordering::SeqCst);
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            activity
                .last
                .store(accepted.elapsed().as_millis() as u64, Ordering::SeqCst);
            activity.in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight requests
/// finish within the grace period, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), rustls::Error> {
    let cert = app.cert.clone().ok_or_else(|| {
        rustls::Error::General("no serving certificate for the admission port".into())
    })?;
    let router = router(Arc::clone(&app), &limits);
    serve_router(listener, router, cert, limits, shutdown).await
}

/// The admission port's stack (TLS, HTTP/1.1 and HTTP/2, connection limits, idle and
/// shutdown handling) around any router: [`serve`] gives it ours; the admission benchmark
/// gives it a trivial handler to compare against.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    cert: Arc<ReloadingCert>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), rustls::Error> {
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(cert)?));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(limits.request_timeout);
    let (h1, h2) = (builder.clone().http1_only(), builder.http2_only());
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let open = Arc::new(AtomicUsize::new(0));
    // Asks idle connections to go when every slot is taken.
    let shed = Arc::new(Notify::new());
    let (stopping, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = loop {
            if let Ok(p) = Arc::clone(&connections).try_acquire_owned() {
                break Some(p);
            }
            // Every slot is taken: idle connections are asked to make room, again and
            // again while it lasts (one busy between two asks has not heard it).
            shed.notify_waiters();
            tokio::select! {
                p = Arc::clone(&connections).acquire_owned() => break Some(p.expect("the semaphore is never closed")),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(permit) = permit else { break };
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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let (h1, h2) = (h1.clone(), h2.clone());
        let router = router.clone();
        let limits = limits.clone();
        let shed = Arc::clone(&shed);
        let mut stop = stop_rx.clone();
        let open = Arc::clone(&open);
        open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        open.fetch_sub(1, Ordering::SeqCst);
                        return tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        open.fetch_sub(1, Ordering::SeqCst);
                        return tracing::debug!(%peer, "TLS handshake timed out");
                    }
                };
            let h2_negotiated = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let activity = Arc::new(Activity::default());
            let service = hyper_util::service::TowerToHyperService::new(Tracked {
                inner: router,
                activity: Arc::clone(&activity),
                accepted: Instant::now(),
            });
            let accepted = Instant::now();
            let builder = if h2_negotiated { &h2 } else { &h1 };
            let mut connection = pin!(builder.serve_connection(TokioIo::new(tls), service));
            // Since when, and for how long, a graceful close may take.
            let mut closing: Option<(Instant, Duration)> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                let never_asked = activity.requests.load(Ordering::SeqCst) == 0;
                let idle = activity.in_flight.load(Ordering::SeqCst) == 0;
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = tick.tick() => {
                        if let Some((since, allowed)) = closing {
                            // A graceful close that does not complete (a client that
                            // never reads) is cut.
                            if since.elapsed() > allowed {
                                break;
                            }
                            continue;
                        }
                        let quiet = accepted.elapsed()
                            - Duration::from_millis(activity.last.load(Ordering::SeqCst));
                        let limit = if never_asked {
                            limits.request_timeout
                        } else {
                            limits.idle_timeout
                        };
                        if idle && quiet > limit {
                            tracing::debug!(%peer, "closing an idle connection");
                            if never_asked {
                                break;
                            }
                            connection.as_mut().graceful_shutdown();
                            closing = Some((Instant::now(), Duration::from_secs(1)));
                        }
                    }
                    // Every slot is taken: a connection with nothing in flight makes room.
                    _ = shed.notified(), if closing.is_none() && idle => {
                        if never_asked {
                            break;
                        }
                        connection.as_mut().graceful_shutdown();
                        closing = Some((Instant::now(), Duration::from_secs(1)));
                    }
                    _ = stop.wait_for(|s| *s), if closing.is_none() => {
                        if never_asked {
                            break;
                        }
                        connection.as_mut().graceful_shutdown();
                        closing = Some((Instant::now(), limits.request_timeout));
                    }
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = stopping.send(true);
    let deadline = Instant::now() + limits.shutdown_grace;
    while open.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= deadline {
            tracing::warn!("grace period over with connections still open");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("all connections closed");
    Ok(())
}

/// Binds `addr`. The default `[::]` takes IPv4 too (dual-stack, `IPV6_V6ONLY` off); where
/// the node has IPv6 turned off it falls back to `0.0.0.0` on the same port, with a log line.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match bind_socket(addr) {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(%addr, fallback = %v4, error = %e, "IPv6 is off here; listening on IPv4 only");
            bind_socket(v4)
        }
        other => other,
    }
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn ipv6_unavailable(e: &std::io::Error) -> bool {
    // EAFNOSUPPORT (ipv6.disable=1) or EADDRNOTAVAIL (no IPv6 address configured).
    matches!(e.raw_os_error(), Some(97) | Some(99))
}

/// Connections the metrics port serves at once; scrapes and probes need a handful.
const OPS_CONNECTIONS: usize = 32;

/// Serves [`ops_router`] over plain HTTP/1.1 until `shutdown` completes. Headers must come
/// within 10 s and a connection lives at most a minute, so a stuck client costs a slot
/// for a bounded time; the admission port is not affected by anything here.
pub async fn serve_ops(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let router = ops_router(app);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let slots = Arc::new(Semaphore::new(OPS_CONNECTIONS));
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => return,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the metrics port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), connection).await;
        });
    }
}
