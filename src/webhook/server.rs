//! The admission HTTPS server: axum routes over rustls, HTTP/1.1 and HTTP/2, with
//! explicit limits on body size, time, memory and connections, and a graceful stop.
//!
//! The port must be open to the whole cluster network (the API server's source address
//! varies) and clients are not authenticated, so nothing a client does may hold the server:
//! every connection state has a deadline (TLS handshake, first request, headers, body,
//! idle keep-alive, an HTTP/2 connection with no stream), the protocol comes from ALPN (no
//! read waits to sniff it), bodies are reserved in memory as they arrive and must arrive
//! within `body_timeout` ([`crate::webhook::bodies`]), and decisions run a fixed few at a
//! time within a decoding-memory budget, whatever the node's core count, so that a slow
//! one gets its 408 and `/healthz` still answers. When every connection slot is taken,
//! the connection idle the longest is closed to make room ([`crate::webhook::conns`]).
//!
//! Metrics, health and readiness are also served on a separate plain-HTTP port
//! ([`serve_ops`]) so that a NetworkPolicy can keep the admission port open to the API
//! server (whose source address varies) and the metrics port to monitoring alone. The
//! reconciler's Deployment serves only that port.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::state::ProcessState;
use crate::webhook::admission::{self, Endpoint};
use crate::webhook::bodies::{BodyBudget, BodyError, Peer};
use crate::webhook::conns::{serve_connections, ConnLimits, Transport};
use crate::webhook::tls::{self, ReloadingCert};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body; larger ones get 413 (the API server sends up to ~3 MiB).
    pub max_body: usize,
    /// Bytes of request bodies past their first 64 KiB held in memory at once, all
    /// connections together, reserved as the bytes arrive.
    pub max_body_in_flight: usize,
    /// Bytes of the first 64 KiB of bodies held at once: a pool of its own, so that reviews
    /// of ordinary size never wait behind large or slow ones.
    pub max_small_bodies: usize,
    /// Bytes of bodies one peer address may hold at once.
    pub max_body_per_peer: usize,
    /// A body must have arrived this long after its headers (the API server sends a review
    /// at once); a slower one gets 408 and gives its memory back.
    pub body_timeout: Duration,
    /// From the start of a request to its response, body read included.
    pub request_timeout: Duration,
    /// TLS handshake deadline for a new connection.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight is closed after this long (the first
    /// request must come within `request_timeout`).
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Admission decisions computed at once, whatever the node's core count; the others
    /// wait (within their deadline).
    pub max_decisions: usize,
    /// Memory the decisions in progress may take while decoding, estimated from their body
    /// size (see [`DECODE_FACTOR`]).
    pub decode_budget: usize,
    /// How long in-flight requests may take to finish once the server stops accepting.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 3 * 1024 * 1024,
            max_body_in_flight: 32 * 1024 * 1024,
            max_small_bodies: 16 * 1024 * 1024,
            max_body_per_peer: 16 * 1024 * 1024,
            body_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_decisions: 4,
            decode_budget: 64 * 1024 * 1024,
            // Past the request timeout, so a request that arrived just before the stop
            // gets its answer.
            shutdown_grace: Duration::from_secs(15),
        }
    }
}

impl Limits {
    fn connections(&self, port: &'static str) -> ConnLimits {
        ConnLimits {
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            first_request: self.request_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            shutdown_grace: self.shutdown_grace,
            port,
        }
    }
}

/// Worst-case memory of decoding a review, per byte of its body: a 2.98 MiB review of
/// 780,000 one-letter items in a field kept as JSON (an unknown field, or the mutating
/// webhook's whole object) grew an idle release server by 85 MiB, about 29× (the same items
/// as scopes, counted not stored: 3 MiB); any client can shape a body so, and the decision
/// gate reserves this much for each review.
pub const DECODE_FACTOR: usize = 29;

/// Where the webhook configurations send reviews (manifests/base/webhooks.yaml).
pub const VALIDATE_PATH: &str = "/validate";
pub const MUTATE_PATH: &str = "/mutate";

/// Shared by every request: the process's state (the snapshot, readiness) and the
/// server's own parts.
pub struct App {
    /// Owned by the runtime; the servers read it.
    pub state: Arc<ProcessState>,
    pub admission: admission::Config,
    pub metrics: Arc<Metrics>,
    /// None where this process serves no admission (the reconciler's Deployment).
    pub cert: Option<Arc<ReloadingCert>>,
    /// The admission router's body budget, for /readyz and the metrics.
    bodies: RwLock<Option<Arc<BodyBudget>>>,
}

impl App {
    /// An admission server over a state of its own (tests and benchmarks).
    pub fn new(admission: admission::Config, cert: Arc<ReloadingCert>) -> App {
        App::with_state(admission, Some(cert), Arc::new(ProcessState::new(true)))
    }

    /// An app that serves only metrics, health and readiness, over a state of its own.
    pub fn without_admission() -> App {
        App::with_state(
            admission::Config::default(),
            None,
            Arc::new(ProcessState::new(false)),
        )
    }

    /// The servers over the runtime's state.
    pub fn with_state(
        admission: admission::Config,
        cert: Option<Arc<ReloadingCert>>,
        state: Arc<ProcessState>,
    ) -> App {
        App {
            metrics: Arc::clone(&state.metrics),
            state,
            admission,
            cert,
            bodies: RwLock::new(None),
        }
    }

    fn bodies(&self) -> Option<Arc<BodyBudget>> {
        self.bodies
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
    body_timeout: Duration,
    bodies: Arc<BodyBudget>,
    decisions: Arc<Semaphore>,
    /// KiB of decoding memory.
    decoding: Arc<Semaphore>,
    decode_kib: usize,
}

pub fn router(app: Arc<App>, limits: &Limits) -> Router {
    let timeout = limits.request_timeout;
    let metrics = Arc::clone(&app.metrics);
    let bodies = Arc::new(BodyBudget::counted(
        limits.max_body_in_flight,
        limits.max_small_bodies,
        limits.max_body_per_peer,
        Some(Arc::clone(&app.metrics)),
    ));
    *app.bodies.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&bodies));
    let decode_kib = kib(limits.decode_budget);
    let shared = Shared {
        app,
        max_body: limits.max_body,
        body_timeout: limits.body_timeout,
        bodies,
        decisions: Arc::new(Semaphore::new(limits.max_decisions.max(1))),
        decoding: Arc::new(Semaphore::new(decode_kib)),
        decode_kib,
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

/// A value from the request for a plain log line: control characters, line and paragraph
/// separators and bidirectional overrides escaped, so that a name can neither forge
/// another line nor read backwards on a terminal.
fn loggable(s: &str) -> std::borrow::Cow<'_, str> {
    fn hidden(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(hidden) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

async fn answer(shared: Shared, endpoint: Endpoint, req: Request) -> Response {
    let start = Instant::now();
    let app = &shared.app;
    let Some(snapshot) = app.state.snapshot() else {
        app.metrics.bad_request();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster state not loaded yet\n",
        )
            .into_response();
    };
    let h2 = req.version() == axum::http::Version::HTTP_2;
    let drain = if h2 {
        shared.max_body * DRAIN_FACTOR
    } else {
        0
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > shared.max_body && n > drain) {
        return too_large(app, shared.max_body);
    }
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let deadline = Instant::now() + shared.body_timeout;
    // The reservation is held until the answer: a body waiting for its decision is still
    // in memory.
    let (body, _reservation) = match shared
        .bodies
        .read(req.into_body(), peer, shared.max_body, drain, deadline)
        .await
    {
        Ok(read) => read,
        Err(e) => return body_refused(app, &e, shared.max_body),
    };
    let Some(_turn) = shared.turn(body.len()).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let small = body.len() <= INLINE_DECISION_BYTES;
    // A policy write judged against the running images can take milliseconds: on the
    // blocking pool, as large bodies.
    let preview = app
        .state
        .preview()
        .filter(|_| endpoint == Endpoint::Validate);
    let small = small && preview.is_none();
    let decide = move |config: &App| {
        let preview = preview.as_deref();
        admission::review_with(&body, endpoint, &snapshot, &config.admission, preview).map(
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
                .observe(decision.review(), start.elapsed().as_secs_f64());
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

/// A body not read: 413 over `--max-body`, 408 too slow, 503 its peer over its share
/// (a client may retry elsewhere), 400 the connection failed under it.
fn body_refused(app: &App, e: &BodyError, max: usize) -> Response {
    let (status, text) = match e {
        BodyError::TooLarge => return too_large(app, max),
        BodyError::TimedOut => (
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time\n".to_string(),
        ),
        BodyError::PeerOver => {
            tracing::warn!("a peer's request bodies are over its share of memory; refused");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies in flight from this address\n".to_string(),
            )
        }
        BodyError::Read(e) => (
            StatusCode::BAD_REQUEST,
            format!("request body not read: {}\n", loggable(e)),
        ),
    };
    app.metrics.bad_request();
    (status, text).into_response()
}

impl Shared {
    /// A decision slot and decoding memory for a body of `len` bytes, waited for within
    /// the request's deadline; None once the server is closing them.
    async fn turn(&self, len: usize) -> Option<(SemaphorePermit<'_>, SemaphorePermit<'_>)> {
        let cost = (kib(len) * DECODE_FACTOR).min(self.decode_kib) as u32;
        if let (Ok(turn), Ok(memory)) = (
            self.decisions.try_acquire(),
            self.decoding.try_acquire_many(cost),
        ) {
            return Some((turn, memory));
        }
        self.app.metrics.decision_waited();
        let turn = self.decisions.acquire().await.ok()?;
        let memory = self.decoding.acquire_many(cost).await.ok()?;
        Some((turn, memory))
    }
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
    ops_router_with(app, None)
}

/// Who may read `/metrics`: the bearer token a scraper presents, judged by the cluster
/// (TokenReview, then SubjectAccessReview for `get` on the non-resource URL `/metrics`),
/// as OpenShift's monitoring expects of a cluster component. The probes stay open.
pub trait MetricsAccess: Send + Sync {
    fn check(&self, token: String) -> Pin<Box<dyn Future<Output = Access> + Send + '_>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// No token, or one the cluster does not authenticate: 401.
    Unauthenticated,
    /// Authenticated, not allowed to `get /metrics`: 403.
    Forbidden(String),
    /// The cluster could not be asked: 503, and the scrape is retried.
    Unavailable(String),
}

/// The ops router, `/metrics` behind `access` when given.
pub fn ops_router_with(app: Arc<App>, access: Option<Arc<dyn MetricsAccess>>) -> Router {
    ops_router_full(app, access, None)
}

/// Also `/running-images` (the lease holder's judgement of the running images, which
/// admission replicas copy): behind `copy_access` where `/metrics` has an access check,
/// refused to everyone if that has none.
pub fn ops_router_full(
    app: Arc<App>,
    access: Option<Arc<dyn MetricsAccess>>,
    copy_access: Option<Arc<dyn MetricsAccess>>,
) -> Router {
    let metrics_guarded = access.is_some();
    let metrics = match access {
        Some(access) => get(
            move |state: State<Arc<App>>, headers: axum::http::HeaderMap| {
                let access = Arc::clone(&access);
                async move { guarded(state, &headers, access.as_ref(), metrics_page).await }
            },
        ),
        None => get(metrics_page),
    };
    let copy = match copy_access {
        Some(access) => get(
            move |state: State<Arc<App>>, headers: axum::http::HeaderMap| {
                let access = Arc::clone(&access);
                async move {
                    let held = headers.clone();
                    let page = |state| running_images(state, held);
                    guarded(state, &headers, access.as_ref(), page).await
                }
            },
        ),
        None if metrics_guarded => get(|| async {
            (
                StatusCode::FORBIDDEN,
                "Forbidden: no access check for /running-images\n",
            )
                .into_response()
        }),
        None => get(running_images),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(app): State<Arc<App>>| async move { ready(&app) }),
        )
        .route("/metrics", metrics)
        .route("/running-images", copy)
        .with_state(app)
}

/// The last running-images judgement, as admission replicas copy it: 304 when the
/// replica's `If-None-Match` names it already (it weighs megabytes, and seldom changes).
async fn running_images(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    let Some(copy) = app.state.running_images() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no judgement of the running images here (not the lease holder, or not yet)\n",
        )
            .into_response();
    };
    let tag = copy.tag();
    let held = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim() == tag);
    let named = [
        (header::ETAG.as_str(), tag),
        (crate::state::TAKEN_AT, copy.taken_at().to_string()),
    ];
    if held {
        return (StatusCode::NOT_MODIFIED, named).into_response();
    }
    match tokio::task::spawn_blocking(move || copy.write()).await {
        Ok(bytes) => (
            named,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the running-images copy was not written: {e}\n"),
        )
            .into_response(),
    }
}

async fn guarded<F, Fut>(
    state: State<Arc<App>>,
    headers: &axum::http::HeaderMap,
    access: &dyn MetricsAccess,
    page: F,
) -> Response
where
    F: FnOnce(State<Arc<App>>) -> Fut,
    Fut: Future<Output = Response>,
{
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let decision = match token {
        Some(token) => access.check(token.to_string()).await,
        None => Access::Unauthenticated,
    };
    match decision {
        Access::Allowed => page(state).await,
        Access::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "Unauthorized\n",
        )
            .into_response(),
        Access::Forbidden(why) => {
            (StatusCode::FORBIDDEN, format!("Forbidden: {why}\n")).into_response()
        }
        Access::Unavailable(why) => {
            tracing::warn!(error = %why, "metrics scrape not authorized: the API server could not be asked");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "authorization unavailable\n",
            )
                .into_response()
        }
    }
}

async fn readyz(State(shared): State<Shared>) -> Response {
    ready(&shared.app)
}

fn ready(app: &App) -> Response {
    if app.state.stopping() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response();
    }
    let mut status = app.state.status();
    let reconcile = app.state.reconcile_status();
    if !reconcile.is_empty() {
        status.push_str("\nreconciler: ");
        status.push_str(&reconcile);
    }
    if let Some(bodies) = app.bodies() {
        let waits = bodies.recent_waits(Duration::from_secs(60));
        if waits > 0 {
            // Said, not failed: every replica would fail alike, and the API server would
            // then have no endpoint at all.
            status.push_str(&format!(
                "\nrequest bodies waited for memory {waits} times in the last minute ({} bytes held): slow or large uploads",
                bodies.held_bytes()
            ));
        }
    }
    if app.state.is_ready() {
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
    app.metrics.set_ready(app.state.is_ready());
    if let Some(cert) = &app.cert {
        app.metrics.set_cert_expiry(cert.not_after());
    }
    if let Some(bodies) = app.bodies() {
        app.metrics.set_body_bytes(bodies.held_bytes());
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
    serve_router(
        listener,
        router,
        cert,
        limits,
        Arc::clone(&app.metrics),
        shutdown,
    )
    .await
}

/// The admission port's stack (TLS, HTTP/1.1 and HTTP/2, connection limits, idle and
/// shutdown handling) around any router: [`serve`] gives it ours; the admission benchmark
/// gives it a trivial handler to compare against.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    cert: Arc<ReloadingCert>,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), rustls::Error> {
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(cert)?));
    let transport = Transport::Tls(acceptor);
    let connections = limits.connections("admission");
    serve_connections(listener, router, transport, connections, metrics, shutdown).await;
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

/// The metrics port's connections: probes and scrapes need a handful, and a client that
/// is slow to send its headers is cut after 2 s or sooner when the slots are full, so that
/// the kubelet's probes (1 s timeout) always find room.
fn ops_connections() -> ConnLimits {
    ConnLimits {
        max_connections: 64,
        handshake_timeout: Duration::from_secs(2),
        first_request: Duration::from_secs(2),
        // Past Prometheus's scrape interval, so a scraper keeps its connection.
        idle_timeout: Duration::from_secs(90),
        request_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(1),
        port: "metrics",
    }
}

/// Serves [`ops_router`] over plain HTTP/1.1 until `shutdown` completes; nothing here
/// touches the admission port.
pub async fn serve_ops(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let _ = serve_ops_with(listener, app, OpsSecurity::default(), shutdown).await;
}

/// How the ops port is protected: TLS with its own (reloading) certificate, and who may
/// read `/metrics`.
#[derive(Default, Clone)]
pub struct OpsSecurity {
    pub cert: Option<Arc<ReloadingCert>>,
    pub access: Option<Arc<dyn MetricsAccess>>,
    /// Who may copy `/running-images` (`get` on that non-resource URL).
    pub copy_access: Option<Arc<dyn MetricsAccess>>,
}

/// [`serve_ops`] over TLS and with `/metrics` access checked, as `security` says.
pub async fn serve_ops_with(
    listener: TcpListener,
    app: Arc<App>,
    security: OpsSecurity,
    shutdown: impl Future<Output = ()>,
) -> Result<(), rustls::Error> {
    let metrics = Arc::clone(&app.metrics);
    let router = ops_router_full(app, security.access, security.copy_access);
    let transport = match security.cert {
        Some(cert) => Transport::Tls(TlsAcceptor::from(Arc::new(tls::server_config(cert)?))),
        None => Transport::Plain,
    };
    serve_connections(
        listener,
        router,
        transport,
        ops_connections(),
        metrics,
        shutdown,
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::loggable;

    #[test]
    fn a_logged_value_cannot_break_or_reverse_a_line() {
        assert_eq!(loggable("plain name-ü"), "plain name-ü");
        assert_eq!(loggable("a\nb"), "a\\nb");
        assert_eq!(loggable("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(loggable("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(loggable("\u{2066}é\u{2069}"), "\\u{2066}é\\u{2069}");
    }
}
