//! The process's state, owned by the runtime and shared by what reports it (the HTTP
//! servers' `/readyz` and `/metrics`) and what changes it (the cluster feed, the
//! state-directory watcher, the reconciler, the stop signal): the snapshot admission
//! answers from, the status line, what the reconciler last did, whether SIGTERM came.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use cip_core::snapshot::Snapshot;

use crate::metrics::Metrics;

pub struct ProcessState {
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// Why the process is not ready, or what it last loaded.
    status: RwLock<String>,
    /// What the reconciler last did; shown by /readyz, never making it fail.
    reconcile: RwLock<String>,
    /// Set on SIGTERM: /readyz fails at once so endpoints drop this pod while it still
    /// serves.
    stopping: AtomicBool,
    /// Whether this process serves admission (the reconciler's Deployment does not, and
    /// needs no refreshed snapshot).
    serves_admission: bool,
    pub metrics: Arc<Metrics>,
    /// The running-images preview admission warns from (the lease holder's copy).
    preview: RwLock<Option<Arc<dyn cip_core::running::Preview>>>,
    /// The lease holder's last judgement of the running images, as served to admission
    /// replicas (`/running-images`).
    running_images: RwLock<Option<RunningImages>>,
}

/// The lease holder's running-images copy as replicas fetch it. Its bytes are made at
/// each request from the live cache rather than kept as a second copy beside the cache,
/// and a replica that holds them already is answered 304.
pub trait RunningImagesCopy: Send + Sync {
    /// Names the content (`ETag`): it changes when the judgement or the cache does, not at
    /// every pass.
    fn tag(&self) -> String;
    /// When the lease holder last judged (Unix seconds), sent with every answer, 304
    /// included ([`TAKEN_AT`]), so that a replica knows its copy is current.
    fn taken_at(&self) -> i64;
    /// The bytes (blocking: the cache is serialised).
    fn write(&self) -> Vec<u8>;
}

pub type RunningImages = Arc<dyn RunningImagesCopy>;

/// The response header that carries [`RunningImagesCopy::taken_at`].
pub const TAKEN_AT: &str = "cip-taken-at";

impl ProcessState {
    pub fn new(serves_admission: bool) -> ProcessState {
        ProcessState {
            snapshot: RwLock::new(None),
            status: RwLock::new("cluster state not loaded yet".into()),
            reconcile: RwLock::new(String::new()),
            stopping: AtomicBool::new(false),
            serves_admission,
            metrics: Arc::new(Metrics::default()),
            preview: RwLock::new(None),
            running_images: RwLock::new(None),
        }
    }

    pub fn serves_admission(&self) -> bool {
        self.serves_admission
    }

    /// From now on /readyz answers 503; requests are still served.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// What /readyz answers 200 for: a snapshot loaded, no SIGTERM yet.
    pub fn is_ready(&self) -> bool {
        !self.stopping() && self.snapshot().is_some()
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

    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn status(&self) -> String {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reconcile_status(&self) -> String {
        self.reconcile
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_preview(&self, preview: Option<Arc<dyn cip_core::running::Preview>>) {
        *self.preview.write().unwrap_or_else(|e| e.into_inner()) = preview;
    }

    pub fn preview(&self) -> Option<Arc<dyn cip_core::running::Preview>> {
        self.preview
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_running_images(&self, copy: RunningImages) {
        *self
            .running_images
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(copy);
    }

    /// The last pass's copy (its bytes are written by calling `write`, which blocks while
    /// the cache is serialised).
    pub fn running_images(&self) -> Option<RunningImages> {
        self.running_images
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
