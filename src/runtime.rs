//! The wiring of `serve` and `reconcile`: the admission port, the metrics port, the
//! cluster watches or a state directory, the desired-state task, the Lease and the
//! reconciler, and the SIGTERM sequence. A library function, so tests can start it in
//! process; the binary only parses flags into [`ServeOptions`].

use std::path::{Path, PathBuf};

use crate::files;
use crate::k8s::desired::{Published, Settle};
use cip_core::documents::Loaded;
use cip_core::render::{self, RenderOptions};

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
}

pub struct ServeOptions {
    pub webhook: Option<WebhookOptions>,
    pub metrics_listen: Option<std::net::SocketAddr>,
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
    let app = Arc::new(match &opts.webhook {
        Some(w) => {
            let cert = crate::webhook::tls::ReloadingCert::new(&w.tls_cert, &w.tls_key)
                .map_err(RuntimeError::Certificate)?;
            crate::webhook::tls::log_expiry(&w.tls_cert, cert.not_after(), unix_now());
            crate::webhook::server::App::new(w.admission.clone(), Arc::new(cert))
        }
        None => crate::webhook::server::App::without_admission(),
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
            let ops = crate::webhook::server::bind(addr)
                .map_err(|source| RuntimeError::Listen { addr, source })?;
            tracing::info!(listen = %local(&ops), "serving /metrics, /healthz and /readyz");
            // Answers until the process exits: probes and a last scrape see the stop.
            tokio::spawn(crate::webhook::server::serve_ops(
                ops,
                Arc::clone(&app),
                std::future::pending(),
            ));
        }
        let state_app = Arc::clone(&app);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let lease_task = Arc::new(std::sync::Mutex::new(None));
        match &opts.state {
            StateSource::Dir(dir) => {
                if opts.reconcile.is_some() {
                    tracing::info!("state from files: admission only, nothing is written");
                }
                tokio::spawn(watch_state_dir(state_app, dir.clone(), render.clone()))
            }
            StateSource::Cluster(kubeconfig) => tokio::spawn(watch_cluster(
                state_app,
                kubeconfig.clone(),
                render.clone(),
                opts.reconcile.clone(),
                opts.settle,
                stop_rx.clone(),
                Arc::clone(&lease_task),
            )),
        };
        let delay = opts.webhook.as_ref().map(|w| w.shutdown_delay);
        let stopping_app = Arc::clone(&app);
        tokio::spawn(async move {
            stop.await;
            stopping_app.begin_shutdown();
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

/// An error and its sources on one line, as anyhow's `{:#}` prints a chain.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Keeps the admission snapshot in step with the cluster. Until every watcher has listed,
/// /readyz says what it waits for; errors are retried for ever, never fatal.
async fn watch_cluster(
    app: std::sync::Arc<crate::webhook::server::App>,
    kubeconfig: Option<PathBuf>,
    render: RenderOptions,
    reconcile: Option<ReconcileOptions>,
    settle: Settle,
    stop: tokio::sync::watch::Receiver<bool>,
    lease_task: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
) {
    use crate::k8s::store::ClusterState;
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
    let (desired_tx, mut desired) = tokio::sync::watch::channel(Published::Waiting(
        "waiting for the first list of the cluster state".into(),
    ));
    tokio::spawn(crate::k8s::desired::run(
        std::sync::Arc::clone(&state),
        render,
        settle,
        desired_tx,
    ));
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
        let report_app = std::sync::Arc::clone(&app);
        let reconciler = crate::k8s::reconcile::Reconciler::new(crate::k8s::reconcile::Context {
            client,
            state: std::sync::Arc::clone(&state),
            desired: desired.clone(),
            metrics: std::sync::Arc::clone(&app.metrics),
            report: std::sync::Arc::new(move |status| report_app.set_reconcile_status(status)),
            leadership,
            namespace: options.lease.namespace.clone(),
            identity: options.lease.identity.clone(),
            auto: options.auto,
            dry_run: options.dry_run,
        });
        tokio::spawn(crate::k8s::reconcile::run(reconciler, options.resync));
    }
    // Admission answers from the latest desired state, with the store's current objects:
    // a render waits for a burst to settle (up to --settle-max), and an Image update must
    // not be judged against policies missing from it. The objects are refreshed within
    // FRESH of a change, off the async workers; what needs the render (the size budget,
    // the policies in force) follows with the next one. A process that serves no
    // admission (the reconciler's Deployment) skips the refresh.
    const FRESH: std::time::Duration = std::time::Duration::from_millis(10);
    let serves_admission = app.cert.is_some();
    let mut changes = state.subscribe();
    let mut last: Option<(std::sync::Arc<crate::k8s::desired::Desired>, String)> = None;
    // What is published already (the first wait) is shown at once.
    desired.mark_changed();
    // Watch errors end without an event (a watch resumed where it was): the status is
    // looked at again now and then, so /readyz stops saying "retrying" once they have.
    let mut recheck = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                if let Some((d, status)) = last.as_mut() {
                    let now = state_status(d, &state);
                    if now != *status {
                        app.set_status(now.clone());
                        *status = now;
                    }
                }
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                let published = desired.borrow_and_update().clone();
                match published {
                    Published::Waiting(why) => app.set_status(why),
                    Published::Ready(d) => {
                        let status = state_status(&d, &state);
                        let missing = no_cluster_version(&d.inputs);
                        if missing.is_some() && last.as_ref().is_none_or(|(l, _)| no_cluster_version(&l.inputs).is_none()) {
                            tracing::warn!("{}", missing.unwrap_or_default());
                        }
                        let snapshot = if serves_admission && *changes.borrow() > d.generation {
                            fresh(&d, &state).await
                        } else {
                            std::sync::Arc::clone(&d.snapshot)
                        };
                        app.set_snapshot(snapshot, status.clone());
                        last = Some((d, status));
                    }
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                changes.borrow_and_update();
                if !serves_admission {
                    continue;
                }
                tokio::time::sleep(FRESH).await;
                changes.borrow_and_update();
                if let Some((d, status)) = &last {
                    app.set_snapshot(fresh(d, &state).await, status.clone());
                }
            }
        }
    }
}

/// The published snapshot with the store's objects as they are now, built on a blocking
/// thread (it copies every policy).
async fn fresh(
    d: &std::sync::Arc<crate::k8s::desired::Desired>,
    state: &std::sync::Arc<crate::k8s::store::ClusterState>,
) -> std::sync::Arc<crate::webhook::admission::Snapshot> {
    let (d, state) = (std::sync::Arc::clone(d), std::sync::Arc::clone(state));
    let published = std::sync::Arc::clone(&d.snapshot);
    tokio::task::spawn_blocking(move || match state.admission_inputs() {
        Some(inputs) => std::sync::Arc::new(d.snapshot.with_inputs(std::sync::Arc::new(inputs))),
        None => std::sync::Arc::clone(&d.snapshot),
    })
    .await
    .unwrap_or(published)
}

fn state_status(
    d: &crate::k8s::desired::Desired,
    state: &crate::k8s::store::ClusterState,
) -> String {
    let mut status = format!(
        "cluster state: {} ClusterImagePolicies",
        d.inputs.policies.len()
    );
    if !d.absent.is_empty() {
        let names: Vec<&str> = d.absent.iter().map(|s| s.as_str()).collect();
        status.push_str(&format!(
            "; not served by this cluster (treated as empty): {}",
            names.join(", ")
        ));
    }
    if let Some(missing) = no_cluster_version(&d.inputs) {
        status.push_str(&format!("; {missing}"));
    }
    let errors = state.errors();
    if !errors.is_empty() {
        status.push_str(&format!("; retrying: {}", errors.join("; ")));
    }
    status
}

/// What a missing ClusterVersion `version` means, for /readyz and the log.
fn no_cluster_version(inputs: &cip_core::render::Inputs) -> Option<&'static str> {
    inputs.cluster_version.is_none().then_some(
        "no ClusterVersion version: the release payload checks use the default release repositories",
    )
}

/// Reloads the cluster state whenever a manifest under `dir` changes, reading and
/// parsing on a blocking thread so that no request waits for it. A state that cannot be
/// right is refused and the last good one keeps serving, with /readyz and the log saying
/// why: it fails neither open (a duplicate that turns off the size check, an Image the MCO
/// would refuse, a directory emptied by an unmounted ConfigMap) nor silently.
async fn watch_state_dir(
    app: std::sync::Arc<crate::webhook::server::App>,
    dir: PathBuf,
    render: RenderOptions,
) {
    type Stamp = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;
    let mut last: Option<Stamp> = None;
    let mut good: Option<String> = None;
    // The last walk error logged, so that one that lasts is logged once.
    let mut failed: Option<String> = None;
    loop {
        let (d, options, previous) = (dir.clone(), render.clone(), last.clone());
        let had_objects = good.is_some();
        let attempt = tokio::task::spawn_blocking(move || {
            let stamp = files::dir_stamp(&d).map_err(|e| format!("{e:#}"))?;
            if previous.as_ref() == Some(&stamp) {
                return Ok(None);
            }
            let loaded = files::load_dir(&d, &[]).map_err(|e| chain(&e));
            for entry in loaded.iter().flat_map(|l| &l.skipped) {
                tracing::warn!(dir = %d.display(), %entry, "state directory entry skipped");
            }
            let checked = loaded.and_then(|loaded| state_snapshot(loaded, &options, had_objects));
            Ok(Some((stamp, checked)))
        })
        .await
        .unwrap_or_else(|e| Err(format!("reading the state panicked: {e}")));
        match attempt {
            Ok(None) => failed = None,
            Ok(Some((stamp, Ok(snapshot)))) => {
                failed = None;
                let mut status = format!(
                    "state from {}: {} ClusterImagePolicies",
                    dir.display(),
                    snapshot.inputs.policies.len()
                );
                if let Some(missing) = no_cluster_version(&snapshot.inputs) {
                    status.push_str(&format!("; {missing}"));
                }
                tracing::info!("{status}");
                app.set_snapshot(std::sync::Arc::new(snapshot), status.clone());
                good = Some(status);
                last = Some(stamp);
            }
            Ok(Some((stamp, Err(why)))) => {
                failed = None;
                tracing::warn!(dir = %dir.display(), error = %why, "cluster state refused; the previous one serves");
                app.set_status(match &good {
                    Some(previous) => {
                        format!("{previous}, kept: the last reload was refused: {why}")
                    }
                    None => format!("state from {} refused: {why}", dir.display()),
                });
                last = Some(stamp);
            }
            Err(why) => {
                if failed.as_ref() != Some(&why) {
                    tracing::warn!(dir = %dir.display(), error = %why, "state directory not readable; the previous state serves");
                }
                app.set_status(format!("reading {}: {why}", dir.display()));
                failed = Some(why);
                last = None;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// The admission snapshot of a state directory, rendered once, or why it cannot be the
/// cluster: what `render` and `check` refuse, a policy left out because it does not decode,
/// or nothing at all where there was a state.
fn state_snapshot(
    loaded: Loaded,
    options: &RenderOptions,
    had_objects: bool,
) -> Result<crate::webhook::admission::Snapshot, String> {
    if let Some((source, name, e)) = loaded.undecodable.first() {
        return Err(format!("{source}: policy {name:?} does not decode: {e}"));
    }
    let plan = render::plan(&loaded.inputs, options).map_err(|e| e.to_string())?;
    let i = &loaded.inputs;
    let empty = i.policies.is_empty()
        && i.image_policies.is_empty()
        && i.digest_mirror_sets.is_empty()
        && i.tag_mirror_sets.is_empty()
        && i.content_source_policies.is_empty()
        && i.image.is_none()
        && i.cluster_version.is_none()
        && i.pools.is_empty()
        && i.machine_configs.is_empty();
    if empty && had_objects {
        return Err("no object left in the directory".to_string());
    }
    let inputs = std::sync::Arc::new(loaded.inputs);
    Ok(crate::webhook::admission::Snapshot::from_plan(
        inputs,
        Some(&plan),
        options,
    ))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
