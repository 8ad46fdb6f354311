//! The wiring of `serve` and `reconcile`: the admission port, the metrics port, the
//! cluster watches or a state directory, the desired-state task, the Lease and the
//! reconciler, and the SIGTERM sequence. A library function, so tests can start it in
//! process; the binary only parses flags into [`ServeOptions`].

use std::path::{Path, PathBuf};

use crate::files::chain;
use crate::k8s::desired::{Published, Settle};
use crate::unix_now;
use cip_core::render::RenderOptions;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("loading the serving certificate: {0}")]
    Certificate(#[source] crate::webhook::tls::TlsError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving admission: {0}")]
    Serve(#[source] rustls::Error),
    #[error("loading the metrics port's certificate: {0}")]
    MetricsCertificate(#[source] crate::webhook::tls::TlsError),
    #[error("--metrics-auth: {0}")]
    MetricsAuth(String),
}

/// Where `serve` learns the cluster state.
pub enum StateSource {
    /// Manifests in a directory, re-read when they change.
    Dir(PathBuf),
    /// Watches on the API server, through this kubeconfig or the in-cluster config.
    Cluster(Option<PathBuf>),
}

#[derive(Clone)]
pub struct ReconcileOptions {
    pub lease: crate::k8s::lease::LeaseConfig,
    pub resync: std::time::Duration,
    /// Stand down where the MCO renders policies itself (`--mode auto`).
    pub auto: bool,
    /// Log the writes a pass calls for instead of making them; no Lease.
    pub dry_run: bool,
    /// The running-images pass (None: off).
    pub running_images: Option<crate::impact::ImpactOptions>,
}

/// The admission port; absent in the reconciler's Deployment.
pub struct WebhookOptions {
    pub listen: std::net::SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub admission: crate::webhook::admission::Config,
    pub limits: crate::webhook::server::Limits,
    /// Between SIGTERM and closing the listener: not ready, still serving.
    pub shutdown_delay: std::time::Duration,
    /// The lease holder's running-images judgement, copied for warnings at policy writes.
    pub running_images_from: Option<crate::impact::CopyFrom>,
}

pub struct ServeOptions {
    pub webhook: Option<WebhookOptions>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The metrics port's certificate and key (OpenShift's service CA issues them); None:
    /// plain HTTP.
    pub metrics_tls: Option<(PathBuf, PathBuf)>,
    /// `/metrics` only for a bearer token the cluster allows to `get /metrics`.
    pub metrics_auth: bool,
    pub state: StateSource,
    pub log_json: bool,
    /// None: admission only.
    pub reconcile: Option<ReconcileOptions>,
    /// How long changes settle before the cluster is rendered again.
    pub settle: Settle,
}

/// The process: logging, a multi-threaded runtime, [`run`] until SIGTERM or SIGINT.
pub fn serve(opts: &ServeOptions, render: &RenderOptions) -> Result<(), RuntimeError> {
    fixed_mmap_threshold();
    let _logs = init_logging(opts.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RuntimeError::Runtime)?;
    let result = runtime.block_on(run(opts, render, stop_signal()));
    // A decision still running on a blocking thread does not hold the exit past the grace.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// Serves until `stop` completes, then: not ready at once, still serving for the
/// shutdown delay (cut short by a second SIGTERM or SIGINT), then the drain and the
/// Lease release. Returns when the process may exit.
pub async fn run(
    opts: &ServeOptions,
    render: &RenderOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    use std::sync::Arc;
    // The process's state: the servers below read it, the watchers and the stop change it.
    let state = Arc::new(crate::state::ProcessState::new(opts.webhook.is_some()));
    let app = Arc::new(match &opts.webhook {
        Some(w) => {
            let cert = crate::webhook::tls::ReloadingCert::new(&w.tls_cert, &w.tls_key)
                .map_err(RuntimeError::Certificate)?;
            crate::webhook::tls::log_expiry(&w.tls_cert, cert.not_after(), unix_now());
            crate::webhook::server::App::with_state(
                w.admission.clone(),
                Some(Arc::new(cert)),
                Arc::clone(&state),
            )
        }
        None => {
            crate::webhook::server::App::with_state(Default::default(), None, Arc::clone(&state))
        }
    });
    {
        let listener = match &opts.webhook {
            Some(w) => {
                let listener = crate::webhook::server::bind(w.listen).map_err(|source| {
                    RuntimeError::Listen {
                        addr: w.listen,
                        source,
                    }
                })?;
                tracing::info!(listen = %local(&listener), "serving admission webhook");
                Some(listener)
            }
            None => None,
        };
        if let Some(addr) = opts.metrics_listen {
            let security = ops_security(opts).await?;
            let ops = crate::webhook::server::bind(addr)
                .map_err(|source| RuntimeError::Listen { addr, source })?;
            tracing::info!(
                listen = %local(&ops),
                tls = security.cert.is_some(),
                token_auth = security.access.is_some(),
                "serving /metrics, /healthz and /readyz"
            );
            // Answers until the process exits: probes and a last scrape see the stop.
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let served = crate::webhook::server::serve_ops_with(
                    ops,
                    app,
                    security,
                    std::future::pending(),
                );
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "the metrics port stopped");
                }
            });
        }
        let watched = Arc::clone(&state);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let lease_task = Arc::new(std::sync::Mutex::new(None));
        match &opts.state {
            StateSource::Dir(dir) => {
                if opts.reconcile.is_some() {
                    tracing::info!("state from files: admission only, nothing is written");
                }
                tokio::spawn(crate::statedir::watch(watched, dir.clone(), render.clone()))
            }
            StateSource::Cluster(kubeconfig) => tokio::spawn(watch_cluster(
                watched,
                kubeconfig.clone(),
                render.clone(),
                ClusterTasks {
                    reconcile: opts.reconcile.clone(),
                    copy_from: opts
                        .webhook
                        .as_ref()
                        .and_then(|w| w.running_images_from.clone()),
                    settle: opts.settle,
                },
                stop_rx.clone(),
                Arc::clone(&lease_task),
            )),
        };
        let delay = opts.webhook.as_ref().map(|w| w.shutdown_delay);
        let stopping = Arc::clone(&state);
        tokio::spawn(async move {
            stop.await;
            stopping.begin_shutdown();
            if let Some(delay) = delay.filter(|d| !d.is_zero()) {
                tracing::info!(
                    delay_seconds = delay.as_secs_f64(),
                    "not ready from now on; still serving while endpoints drop this pod"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop_signal() => tracing::info!("second signal: stopping now"),
                }
            }
            let _ = stop_tx.send(true);
        });
        let mut stopped = stop_rx;
        let stopped = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        match (listener, &opts.webhook) {
            (Some(listener), Some(w)) => {
                crate::webhook::server::serve(listener, Arc::clone(&app), w.limits.clone(), stopped)
                    .await
                    .map_err(RuntimeError::Serve)?
            }
            _ => stopped.await,
        }
        // The lease is released before exit so that a successor takes over at once.
        let task = lease_task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        Ok(())
    }
}

/// The metrics port's TLS and `/metrics` access, from the options.
async fn ops_security(
    opts: &ServeOptions,
) -> Result<crate::webhook::server::OpsSecurity, RuntimeError> {
    use std::sync::Arc;
    let cert = match &opts.metrics_tls {
        Some((cert, key)) => {
            let loaded = crate::webhook::tls::ReloadingCert::new(cert, key)
                .map_err(RuntimeError::MetricsCertificate)?;
            crate::webhook::tls::log_expiry(cert, loaded.not_after(), unix_now());
            Some(Arc::new(loaded))
        }
        None => None,
    };
    let mut copy_access: Option<Arc<dyn crate::webhook::server::MetricsAccess>> = None;
    let access: Option<Arc<dyn crate::webhook::server::MetricsAccess>> = if opts.metrics_auth {
        let StateSource::Cluster(kubeconfig) = &opts.state else {
            return Err(RuntimeError::MetricsAuth(
                "needs the cluster to review tokens; not with --state-dir".into(),
            ));
        };
        let client = kube_client(kubeconfig.as_deref())
            .await
            .map_err(RuntimeError::MetricsAuth)?;
        let copy = crate::k8s::access::TokenAccess::for_path(client.clone(), "/running-images");
        copy_access = Some(Arc::new(ClusterAccess(copy)));
        Some(Arc::new(ClusterAccess(
            crate::k8s::access::TokenAccess::new(client),
        )))
    } else {
        None
    };
    Ok(crate::webhook::server::OpsSecurity {
        cert,
        access,
        copy_access,
    })
}

/// The cluster's answer on a scraper's token, for the ops router.
struct ClusterAccess(crate::k8s::access::TokenAccess);

impl crate::webhook::server::MetricsAccess for ClusterAccess {
    fn check(
        &self,
        token: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = crate::webhook::server::Access> + Send + '_>,
    > {
        use crate::k8s::access::Decision;
        use crate::webhook::server::Access;
        Box::pin(async move {
            match self.0.check(&token).await {
                Decision::Allowed => Access::Allowed,
                Decision::Unauthenticated => Access::Unauthenticated,
                Decision::Forbidden(why) => Access::Forbidden(why),
                Decision::Unavailable(why) => Access::Unavailable(why),
            }
        })
    }
}

fn local(listener: &tokio::net::TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string())
}

/// A log line must not cost the request a write syscall: lines go through a buffered
/// writer thread. Nothing is dropped (`lossy(false)`): a full buffer makes the logger wait.
/// The buffer is allocated whole at start: tracing-appender's default of 128,000 lines
/// was 3.9 MiB of a leader's heap (heaptrack); `LOG_BUFFER_LINES` absorbs a GitOps burst's
/// lines. The writer thread writes what it has taken off the queue through a `BufWriter`
/// and flushes when the queue is empty: one write syscall for a burst of lines, not one
/// per line (stderr is unbuffered), and no line waits for a later one. The guard flushes
/// what is left when `serve` returns.
fn init_logging(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .finish(std::io::BufWriter::with_capacity(
            LOG_WRITE_BYTES,
            std::io::stderr(),
        ));
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi && !json);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

const LOG_BUFFER_LINES: usize = 4096;
/// The most log bytes one write syscall carries.
const LOG_WRITE_BYTES: usize = 32 * 1024;

/// glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB), so
/// after the first watch event or policy.json of a megabyte every such buffer comes from
/// the heap, and the holes they leave keep the process large. A fixed threshold sends
/// them to mmap and back to the kernel when freed: leader RSS with 1,000 policies 41.9 to
/// 47.6 MiB before, 36.1 to 38.9 MiB after (`bench_reconcile`), at no measurable CPU cost.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// SIGTERM (the kubelet) or SIGINT (a terminal).
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("reading {}: {}", path.display(), chain(&e)))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| chain(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| chain(&e))?,
    };
    kube::Client::try_from(config).map_err(|e| chain(&e))
}

/// The cluster as `explain --kubeconfig` and `verify --kubeconfig` read it: the render
/// inputs and the index of running images, each listed once, within `timeout`.
pub fn read_cluster(
    kubeconfig: &Path,
    timeout: std::time::Duration,
) -> Result<(cip_core::render::Inputs, cip_core::running::Index), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = kube_client(Some(kubeconfig)).await?;
        let state = crate::k8s::store::ClusterState::spawn(client.clone());
        let pods = crate::k8s::pods::spawn(client);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let (Some((inputs, _)), Some(index)) = (state.inputs(), pods.index()) {
                return Ok((inputs, index));
            }
            if tokio::time::Instant::now() >= deadline {
                let mut waiting = state.waiting_for();
                if pods.read(|_| ()).is_none() {
                    waiting.push("pods and nodes".into());
                }
                let errors = state.errors();
                return Err(format!(
                    "the cluster was not read within {} s: waiting for {}{}",
                    timeout.as_secs(),
                    waiting.join(", "),
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", errors.join("; "))
                    }
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
}

/// What runs beside the cluster watches.
struct ClusterTasks {
    /// None: admission only.
    reconcile: Option<ReconcileOptions>,
    /// Admission's copy of the lease holder's running-images judgement.
    copy_from: Option<crate::impact::CopyFrom>,
    settle: Settle,
}

/// Keeps the admission snapshot in step with the cluster. Until every watcher has listed,
/// /readyz says what it waits for; errors are retried for ever, never fatal.
async fn watch_cluster(
    app: std::sync::Arc<crate::state::ProcessState>,
    kubeconfig: Option<PathBuf>,
    render: RenderOptions,
    tasks: ClusterTasks,
    stop: tokio::sync::watch::Receiver<bool>,
    lease_task: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
) {
    use crate::k8s::store::ClusterState;
    let ClusterTasks {
        reconcile,
        copy_from,
        settle,
    } = tasks;
    let retry = std::time::Duration::from_secs(2);
    let client = loop {
        let attempt = async {
            let client = kube_client(kubeconfig.as_deref()).await?;
            client.apiserver_version().await.map_err(|e| chain(&e))?;
            Ok::<_, String>(client)
        };
        match attempt.await {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot reach the cluster yet; retrying");
                app.set_status(format!("connecting to the API server: {e:#}"));
                tokio::time::sleep(retry).await;
            }
        }
    };
    let state = ClusterState::spawn(client.clone());
    let (desired_tx, desired) = tokio::sync::watch::channel(Published::Waiting(
        "waiting for the first list of the cluster state".into(),
    ));
    tokio::spawn(crate::k8s::desired::run(
        std::sync::Arc::clone(&state),
        render.clone(),
        settle,
        desired_tx,
    ));
    if let Some(from) = copy_from {
        let state = std::sync::Arc::clone(&app);
        tokio::spawn(crate::impact::follow(
            from,
            desired.clone(),
            render.clone(),
            state,
        ));
    }
    if let Some(options) = reconcile {
        let metrics = std::sync::Arc::clone(&app.metrics);
        let leadership = if options.dry_run {
            tracing::info!(
                "dry run: the plan is logged, nothing is written, the Lease is left alone"
            );
            crate::k8s::lease::Leadership::without_lease()
        } else {
            let (leadership, task) = crate::k8s::lease::spawn(
                client.clone(),
                options.lease.clone(),
                stop,
                move |leader| metrics.set_leader(leader),
            );
            *lease_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
            leadership
        };
        if let Some(mut impact) = options.running_images.clone().filter(|_| !options.dry_run) {
            impact.render = render.clone();
            impact.serves_admission = app.serves_admission();
            let previews = std::sync::Arc::clone(&app);
            tokio::spawn(crate::impact::run(
                client.clone(),
                desired.clone(),
                leadership.clone(),
                std::sync::Arc::clone(&app.metrics),
                crate::k8s::impact::ConditionWriter::new(
                    client.clone(),
                    std::sync::Arc::clone(&state),
                    &options.lease.identity,
                    impact.min_write_interval,
                ),
                impact,
                Box::new(move |copy, bytes| {
                    if copy.is_some() {
                        previews.set_preview(copy);
                    }
                    previews.set_running_images(bytes);
                }),
            ));
        }
        let reporting = std::sync::Arc::clone(&app);
        let reconciler = crate::k8s::reconcile::Reconciler::new(crate::k8s::reconcile::Context {
            client,
            state: std::sync::Arc::clone(&state),
            desired: desired.clone(),
            metrics: std::sync::Arc::clone(&app.metrics),
            report: std::sync::Arc::new(move |status| reporting.set_reconcile_status(status)),
            leadership,
            namespace: options.lease.namespace.clone(),
            identity: options.lease.identity.clone(),
            auto: options.auto,
            dry_run: options.dry_run,
        });
        tokio::spawn(crate::k8s::reconcile::run(reconciler, options.resync));
    }
    // Admission answers from the latest desired state, with the store's current objects.
    let sink: std::sync::Arc<dyn crate::k8s::feed::Sink> = app;
    crate::k8s::feed::run(state, desired, sink).await;
}

impl crate::k8s::feed::Sink for crate::state::ProcessState {
    fn serves_admission(&self) -> bool {
        crate::state::ProcessState::serves_admission(self)
    }

    fn snapshot(&self, snapshot: std::sync::Arc<cip_core::snapshot::Snapshot>, status: String) {
        self.set_snapshot(snapshot, status);
    }

    fn status(&self, status: String) {
        self.set_status(status);
    }
}
