//! An in-process Kubernetes API simulator for cip-webhook's tests: HTTPS on loopback with its
//! own CA, discovery, generic CRUD/WATCH over built-in types and loaded CRDs, CRD schema
//! and CEL validation, admission webhooks called as the API server calls them, and fault
//! injection with a log of every request. Test support only; never part of the product.

mod api;
mod events;
pub mod resources;
pub mod schema;
pub mod selector;
mod ssa;
pub mod store;
mod tls;
mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

pub use crate::store::Event;
use crate::store::Inner;

/// An authenticated user, as the AdmissionReview's userInfo carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// An API error, sent as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub status: Value,
}

impl ApiError {
    pub fn from_status(status: Value) -> ApiError {
        ApiError {
            code: status["code"].as_u64().unwrap_or(500) as u16,
            status,
        }
    }

    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> ApiError {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message.into(), "code": code
        });
        if !reason.is_empty() {
            status["reason"] = json!(reason);
        }
        ApiError { code, status }
    }

    pub fn internal(message: String) -> ApiError {
        let text = format!("Internal error occurred: {message}");
        let mut e = ApiError::new(500, "InternalError", text);
        e.status["details"] = json!({"causes": [{"message": message}]});
        e
    }

    pub fn message(&self) -> &str {
        self.status["message"].as_str().unwrap_or_default()
    }
}

/// What a fault does to the requests it matches.
#[derive(Debug, Clone)]
pub enum FaultAction {
    /// Answer with this status code and reason, without touching the store.
    Fail(u16),
    /// Answer 409 Conflict as if the object had been modified concurrently.
    Conflict,
    /// Wait this long, then serve the request normally.
    Delay(Duration),
}

#[derive(Debug, Clone)]
struct Fault {
    verb: Option<String>,
    resource: Option<String>,
    remaining: usize,
    action: FaultAction,
}

/// One request the simulator answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub method: String,
    /// get, list, watch, create, update, patch, delete, or `discovery`.
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub user: String,
    pub code: u16,
    pub field_manager: String,
    pub content_type: String,
    pub path: String,
    /// When the response was ready.
    pub at: std::time::Instant,
}

/// Shared state of a running simulator.
pub struct Sim {
    inner: Mutex<Inner>,
    close_watches: watch::Sender<u64>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<Vec<Logged>>,
    users: Mutex<HashMap<String, User>>,
    services: Mutex<HashMap<(String, String, u16), String>>,
    uid: AtomicU64,
    bookmark_every: Duration,
    addr: SocketAddr,
}

impl Sim {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_uid(&self) -> String {
        let n = self.uid.fetch_add(1, Ordering::Relaxed);
        format!("a0000000-0000-4000-8000-{n:012x}")
    }

    fn objects_of(&self, group: &str, plural: &str) -> Vec<Value> {
        let inner = self.lock();
        match inner.registry.get(group, plural) {
            Some(t) => inner.list(&t, None).cloned().collect(),
            None => Vec::new(),
        }
    }

    fn service_address(&self, ns: &str, name: &str, port: u16) -> Option<String> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services
            .get(&(ns.to_string(), name.to_string(), port))
            .cloned()
    }

    fn user(&self, token: &str) -> Option<User> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.get(token).cloned()
    }

    /// The first matching fault, used up by one request.
    fn take_fault(&self, verb: &str, resource: &str) -> Option<FaultAction> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let i = faults.iter().position(|f| {
            f.remaining > 0
                && f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource.as_deref().is_none_or(|r| r == resource)
        })?;
        faults[i].remaining -= 1;
        let action = faults[i].action.clone();
        faults.retain(|f| f.remaining > 0);
        Some(action)
    }

    fn record(&self, entry: Logged) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }
}

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct Config {
    /// CRD manifests (files or directories of YAML) to serve from the start.
    pub crds: Vec<PathBuf>,
    /// How many changes watches can replay before older resource versions get 410 Gone.
    pub history: usize,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_every: Duration,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            crds: Vec::new(),
            history: 10_000,
            bookmark_every: Duration::from_secs(1),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// A running simulator; dropping it stops the server.
pub struct Simulator {
    sim: Arc<Sim>,
    dir: tempfile::TempDir,
    ca_pem: String,
    admin: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const ADMIN: &str = "system:admin";

fn yaml_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let p = entry?.path();
            if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for v in parsed {
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    Ok(docs)
}

impl Simulator {
    /// Starts serving on loopback. Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<Simulator> {
        let mut inner = Inner::new(config.history);
        let crd_type = inner
            .registry
            .get("apiextensions.k8s.io", "customresourcedefinitions")
            .expect("built in");
        for path in &config.crds {
            for doc in yaml_documents(path)? {
                if doc["kind"] == json!("CustomResourceDefinition") {
                    resources::from_crd(&doc).map_err(anyhow::Error::msg)?;
                    inner.put(&crd_type, doc, Default::default());
                }
            }
        }
        // The namespaces kube-apiserver's bootstrap controller creates.
        let namespaces = inner.registry.get("", "namespaces").expect("built in");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            inner.put(&namespaces, ns, Default::default());
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (ca_pem, server_config) = tls::server()?;
        let sim = Arc::new(Sim {
            inner: Mutex::new(inner),
            close_watches: watch::channel(0).0,
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            users: Mutex::new(HashMap::new()),
            services: Mutex::new(HashMap::new()),
            uid: AtomicU64::new(1),
            bookmark_every: config.bookmark_every,
            addr,
        });
        let dir = tempfile::tempdir()?;
        let task = tokio::spawn(api::serve(listener, server_config, Arc::clone(&sim)));
        let mut s = Simulator {
            sim,
            dir,
            ca_pem,
            admin: PathBuf::new(),
            task,
        };
        s.admin = s.kubeconfig_for(ADMIN, &["system:masters"])?;
        Ok(s)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.sim.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.sim.addr
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig for the cluster administrator.
    pub fn kubeconfig(&self) -> &Path {
        &self.admin
    }

    /// Writes a kubeconfig whose bearer token authenticates as `user` in `groups`.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let token = format!("token-{}", self.sim.next_uid());
        let mut all: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        all.push("system:authenticated".into());
        self.sim
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                token.clone(),
                User {
                    name: user.into(),
                    groups: all,
                },
            );
        let file = user.replace(':', "_");
        let path = self.dir.path().join(format!("{file}.kubeconfig"));
        std::fs::write(&path, tls::kubeconfig(&self.url(), &self.ca_pem, &token))?;
        Ok(path)
    }

    /// Sends a webhook configuration's `service` references to a loopback address, as a
    /// cluster's Service would.
    pub fn route_service(&self, namespace: &str, name: &str, port: u16, addr: SocketAddr) {
        self.sim
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.into(), name.into(), port), addr.to_string());
    }

    /// Stores an object directly, without admission or validation (test setup).
    pub fn seed(&self, object: Value) -> anyhow::Result<Value> {
        let (group, _) = split_api_version(object["apiVersion"].as_str().unwrap_or_default());
        let kind = object["kind"].as_str().unwrap_or_default();
        let mut inner = self.sim.lock();
        let t = inner
            .registry
            .all()
            .find(|t| t.group == group && t.kind == kind)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no resource for {group}/{kind}"))?;
        let mut object = object;
        if object["metadata"]["namespace"].is_null() && t.namespaced {
            object["metadata"]["namespace"] = json!("default");
        }
        Ok(inner.put(&t, object, Default::default()))
    }

    /// The stored object, as the storage version.
    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.handle().get(group, plural, namespace, name)
    }

    /// Every stored object of a type, in key order.
    pub fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        self.sim.objects_of(group, plural)
    }

    /// A read-only view of the store that outlives this borrow, for tasks (stand-in
    /// controllers) running beside the test.
    pub fn handle(&self) -> Handle {
        Handle(Arc::clone(&self.sim))
    }

    /// Requests answered so far, oldest first.
    pub fn requests(&self) -> Vec<Logged> {
        self.sim
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn clear_requests(&self) {
        self.sim
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Adds a fault for the next `times` requests matching `verb` and `resource` (plural);
    /// None matches any.
    pub fn inject(
        &self,
        verb: Option<&str>,
        resource: Option<&str>,
        times: usize,
        action: FaultAction,
    ) {
        self.sim
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Fault {
                verb: verb.map(str::to_string),
                resource: resource.map(str::to_string),
                remaining: times,
                action,
            });
    }

    pub fn clear_faults(&self) {
        self.sim
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Ends every open watch stream, as an API server restart or a load balancer would.
    pub fn close_watches(&self) {
        self.sim.close_watches.send_modify(|n| *n += 1);
    }

    /// Forgets the change history: watches resuming from any earlier resource version get
    /// 410 Gone and must list again.
    pub fn compact(&self) {
        self.sim.lock().compact();
    }

    /// Every stored change from now on, in order (`resource` is `group/plural`): what a
    /// stand-in controller or an observer of the cluster reacts to.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sim.lock().events.subscribe()
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.sim.lock().rv
    }
}

/// Reads the simulator's store; cheap to clone.
#[derive(Clone)]
pub struct Handle(Arc<Sim>);

impl Handle {
    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.0.lock();
        let t = inner.registry.get(group, plural)?;
        inner.get(&t, namespace, name).map(|s| s.object.clone())
    }

    pub fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        self.0.objects_of(group, plural)
    }
}

pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}
