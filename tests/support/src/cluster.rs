//! A cluster for end-to-end tests: an API server (the real kube-apiserver, or the API
//! simulator where a test needs faults on demand), the real `cip-webhook` process
//! registered through the project's own webhook configurations, and kubectl at the API
//! server's version. The same test code runs against either server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use apisim::{Config, Simulator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::kube::{self, KubeApiServer};
use crate::paths::{bin, free_port, root};
use crate::upstream::{self, Crd};

pub const NAMESPACE: &str = "cip-webhook";
pub const SERVICE: &str = "cip-webhook";
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:cip-webhook:cip-webhook";
/// The reconciler Deployment's service account (components/reconciler).
pub const RECONCILER_ACCOUNT: &str = "system:serviceaccount:cip-webhook:cip-webhook-reconciler";
/// The cluster-version operator, which the webhook configurations exempt.
pub const CVO: &str = "system:serviceaccount:openshift-cluster-version:default";

/// The examples' cluster: Image, ClusterVersion, pools and the MachineConfigs of the seed's
/// layout (nothing owns `99-<pool>-generated-registries`).
pub const EXAMPLES: &[&str] = &[
    "examples/image.yaml",
    "examples/clusterversion.yaml",
    "examples/pools.yaml",
    "examples/machineconfigs/01-master-container-runtime.yaml",
    "examples/machineconfigs/01-worker-container-runtime.yaml",
    "examples/machineconfigs/99-master-generated-registries.yaml",
    "examples/machineconfigs/99-worker-generated-registries.yaml",
];

/// The MachineConfigs the reconciler writes in the seed's layout.
pub const OURS: [&str; 4] = [
    "99-master-generated-imagepolicies",
    "99-master-generated-registries",
    "99-worker-generated-imagepolicies",
    "99-worker-generated-registries",
];

/// Which API server a cluster runs.
pub enum Backend {
    Real(Box<KubeApiServer>),
    Sim(Simulator),
}

pub struct Cluster {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    webhook: Option<Replica>,
    pub webhook_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    /// Where the registered webhook configurations send reviews (the real server calls
    /// `https://localhost:PORT`; the simulator routes the Service there).
    webhook_port: u16,
}

/// One running `cip-webhook serve` or `reconcile` process.
pub struct Replica {
    pub child: Child,
    pub addr: SocketAddr,
    /// The plain-HTTP port of /metrics, /healthz and /readyz.
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
    pub identity: String,
}

impl Replica {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running");
        crate::paths::sigterm(pid);
        self.child.wait().await.unwrap()
    }
}

/// What kubectl printed, with its exit status.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The project's webhook configurations as the cluster registers them: the caBundle
/// injected as service-ca would, and on the real server `clientConfig.url` to the local
/// port in place of the Service (no kube-proxy here), everything else unchanged.
pub fn webhook_configurations(ca_bundle: &str, url_port: Option<u16>) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("manifests/base/webhooks.yaml")).unwrap();
    let mut out = Vec::new();
    for mut v in cip_core::yaml::documents(&text).unwrap() {
        for hook in v["webhooks"].as_array_mut().unwrap() {
            let config = &mut hook["clientConfig"];
            config["caBundle"] = json!(ca_bundle);
            if let Some(port) = url_port {
                let path = config["service"]["path"].as_str().unwrap().to_string();
                config.as_object_mut().unwrap().remove("service");
                config["url"] = json!(format!("https://localhost:{port}{path}"));
            }
        }
        out.push(v);
    }
    out
}

impl Cluster {
    /// The real kube-apiserver serving these CRDs, with the project's RBAC and admission
    /// policy installed from the OpenShift overlay and its webhook configurations
    /// registered.
    pub async fn real(crds: &[Crd]) -> Cluster {
        let c = Cluster::real_bare(crds).await;
        c.install_access().await;
        c.register_webhooks().await;
        c
    }

    /// The real kube-apiserver and a serving certificate: nothing of the project's
    /// installed.
    pub async fn real_bare(crds: &[Crd]) -> Cluster {
        let api = KubeApiServer::start(crds).await;
        Cluster::with(Backend::Real(Box::new(api))).await
    }

    /// The project's webhook configurations, calling the port `start_webhook` listens on.
    pub async fn register_webhooks(&self) {
        for v in webhook_configurations(&self.ca_bundle(), Some(self.webhook_port)) {
            self.api().seed(v).await;
        }
    }

    /// What the OpenShift overlay installs for access (the namespace, the service
    /// accounts, their RBAC, the reconciler's ValidatingAdmissionPolicy), and what an
    /// OpenShift cluster gives the cluster-version operator: cluster-admin.
    pub async fn install_access(&self) {
        const ACCESS: [&str; 8] = [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ];
        // OpenShift's own namespaces the overlay grants access in (openshift-config: the
        // cluster's pull secret).
        self.api()
            .ensure(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "openshift-config"}}))
            .await;
        for o in crate::manifests::kustomize("openshift").await {
            if ACCESS.contains(&o["kind"].as_str().unwrap_or_default()) {
                self.api().ensure(o).await;
            }
        }
        self.api()
            .ensure(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "cluster-version-operator"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "openshift-cluster-version"}]
            }))
            .await;
    }

    /// Sends admission reviews to another replica: on the simulator the Service is routed
    /// there, on the real server the webhook configurations' URLs are changed.
    pub async fn route_webhook(&mut self, addr: SocketAddr) {
        self.webhook_port = addr.port();
        match &self.backend {
            Backend::Sim(sim) => sim.route_service(NAMESPACE, SERVICE, 443, addr),
            Backend::Real(_) => self.register_webhooks().await,
        }
    }

    /// The account `serve` runs as: the admission Deployment's where it only admits; on
    /// the real server a `serve` that also reconciles runs as the reconciler's, whose
    /// RBAC (a superset of admission's) and admission policy then hold it as they hold the
    /// reconciler Deployment.
    fn serving_account(&self, extra: &[&str]) -> &'static str {
        let admission_only = extra.windows(2).any(|w| w == ["--mode", "admission-only"]);
        if self.is_real() && !admission_only {
            RECONCILER_ACCOUNT
        } else {
            SERVICE_ACCOUNT
        }
    }

    /// The simulator serving these CRDs, with the project's webhook configurations stored
    /// and the webhook Service routed to the port `start_webhook` listens on.
    pub async fn simulated(crds: &[Crd]) -> Cluster {
        let c = Cluster::simulated_bare(crds, &[]).await;
        for v in webhook_configurations(&c.ca_bundle(), None) {
            c.sim().seed(v).unwrap();
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], c.webhook_port));
        c.sim().route_service(NAMESPACE, SERVICE, 443, addr);
        c
    }

    /// The simulator and a serving certificate, with no webhook registered. `extra_crds`
    /// are files of the test's own.
    pub async fn simulated_bare(crds: &[Crd], extra_crds: &[PathBuf]) -> Cluster {
        let config = Config {
            crds: crds
                .iter()
                .map(|c| c.path())
                .chain(extra_crds.iter().cloned())
                .collect(),
            ..Config::default()
        };
        let sim = Simulator::start(config).await.expect("simulator starts");
        // The project's namespace, as an install makes it (the Lease lives there).
        sim.seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
            .unwrap();
        Cluster::with(Backend::Sim(sim)).await
    }

    async fn with(backend: Backend) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let out = Command::new(bin())
            .args(["certs", "--out"])
            .arg(&certs)
            .args([
                "--dns",
                &format!("{SERVICE}.{NAMESPACE}.svc"),
                "--dns",
                "localhost",
            ])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Cluster {
            backend,
            dir,
            webhook: None,
            webhook_addr: None,
            metrics_addr: None,
            webhook_port: free_port(),
        }
    }

    /// The port the registered webhook configurations call.
    pub fn webhook_port(&self) -> u16 {
        self.webhook_port
    }

    pub fn is_real(&self) -> bool {
        matches!(self.backend, Backend::Real(_))
    }

    /// The simulator (a test of faults only the simulator can inject).
    pub fn sim(&self) -> &Simulator {
        match &self.backend {
            Backend::Sim(sim) => sim,
            Backend::Real(_) => panic!("this test needs the simulator"),
        }
    }

    pub fn api(&self) -> &KubeApiServer {
        match &self.backend {
            Backend::Real(api) => api,
            Backend::Sim(_) => panic!("this test needs the real API server"),
        }
    }

    /// The cluster administrator's kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        match &self.backend {
            Backend::Real(api) => api.kubeconfig(),
            Backend::Sim(sim) => sim.kubeconfig().to_path_buf(),
        }
    }

    /// A kubeconfig that authenticates as `user` (on the real server: a service account's
    /// token from the TokenRequest API, or a client certificate).
    pub async fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> PathBuf {
        match &self.backend {
            Backend::Real(api) => api.kubeconfig_for(user, groups).await,
            Backend::Sim(sim) => sim.kubeconfig_for(user, groups).unwrap(),
        }
    }

    pub async fn get(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        match &self.backend {
            Backend::Real(api) => api.get(group, plural, namespace, name).await,
            Backend::Sim(sim) => sim.get(group, plural, namespace, name),
        }
    }

    pub async fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        match &self.backend {
            Backend::Real(api) => api.list(group, plural).await,
            Backend::Sim(sim) => sim.list(group, plural),
        }
    }

    /// Stores an object as given, status included, as set-up (on the real server through
    /// the API as the administrator, so admission applies; seed before the webhook runs
    /// what it would refuse).
    pub async fn seed(&self, object: Value) -> Value {
        match &self.backend {
            Backend::Real(api) => api.seed(object).await,
            Backend::Sim(sim) => sim.seed(object).unwrap(),
        }
    }

    /// Stores an object without the webhook's judgement, as if it had been stored before
    /// the webhook ran: on the real server created by the cluster-version operator, whose
    /// requests the webhook configurations' matchConditions keep from the webhook.
    pub async fn seed_unadmitted(&self, object: Value) {
        match &self.backend {
            Backend::Real(_) => {
                let name = format!(
                    "unadmitted-{}.json",
                    object["metadata"]["name"].as_str().unwrap()
                );
                let file = self.write(&name, object.to_string());
                let cvo = self.kubeconfig_for(CVO, &[]).await;
                let run = self
                    .kubectl_as(&cvo, &["apply", "--validate=false", "-f", &file])
                    .await;
                assert!(run.ok, "{run:?}");
            }
            Backend::Sim(sim) => {
                sim.seed(object).unwrap();
            }
        }
    }

    /// Where the registered webhook configurations send reviews, as the API server
    /// names it in its errors.
    pub fn webhook_url(&self, path: &str) -> String {
        match self.backend {
            Backend::Real(_) => format!("https://localhost:{}{path}", self.webhook_port),
            Backend::Sim(_) => format!("https://{SERVICE}.{NAMESPACE}.svc:443{path}"),
        }
    }

    /// Stores every object of these YAML files (relative to the crate root).
    pub async fn seed_files(&self, files: &[&str]) {
        for file in files {
            let text = std::fs::read_to_string(root().join(file)).unwrap();
            for v in cip_core::yaml::documents(&text).unwrap() {
                if !v.is_null() {
                    self.seed(v).await;
                }
            }
        }
    }

    /// A stored ClusterImagePolicy.
    pub async fn policy(&self, name: &str) -> Option<Value> {
        self.get("config.openshift.io", "clusterimagepolicies", "", name)
            .await
    }

    /// A stored ImagePolicy.
    pub async fn image_policy(&self, namespace: &str, name: &str) -> Option<Value> {
        self.get("config.openshift.io", "imagepolicies", namespace, name)
            .await
    }

    /// A stored MachineConfig.
    pub async fn machine_config(&self, name: &str) -> Option<Value> {
        self.get(
            "machineconfiguration.openshift.io",
            "machineconfigs",
            "",
            name,
        )
        .await
    }

    /// The CA bundle of the webhook's serving certificate, as service-ca would inject it.
    pub fn ca_bundle(&self) -> String {
        let ca = std::fs::read_to_string(self.path("certs").join("ca.crt")).unwrap();
        kube::ca_bundle(&ca)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the cluster's directory, for kubectl; returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// `kubectl apply` of one object, which must succeed.
    pub async fn apply_value(&self, v: &Value) -> Run {
        let name = format!(
            "{}-{}.json",
            v["kind"].as_str().unwrap(),
            v["metadata"]["name"].as_str().unwrap()
        );
        let file = self.write(&name, serde_json::to_vec_pretty(v).unwrap());
        self.apply_ok(&file).await
    }

    /// `kubectl apply --validate=false -f path` as the administrator.
    pub async fn apply(&self, path: &str) -> Run {
        self.kubectl(&["apply", "--validate=false", "-f", path])
            .await
    }

    /// `apply`, which must succeed.
    pub async fn apply_ok(&self, path: &str) -> Run {
        let run = self.apply(path).await;
        assert!(run.ok, "{run:?}\n{}", self.webhook_log());
        run
    }

    /// Runs kubectl as the cluster administrator.
    pub async fn kubectl(&self, args: &[&str]) -> Run {
        self.kubectl_as(&self.kubeconfig(), args).await
    }

    /// `cip-webhook ARGS... --kubeconfig` (the admin's): the CLI reading the cluster. The
    /// exit code, and what it printed.
    pub async fn cli(&self, args: &[&str]) -> (Option<i32>, Run) {
        let out = Command::new(bin())
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .current_dir(root())
            .output()
            .await
            .expect("cip-webhook runs");
        (out.status.code(), out.into())
    }

    pub async fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Run {
        kubectl(kubeconfig, args).await
    }

    /// Starts `cip-webhook serve` against the API server as its service account, on the
    /// port the webhook configurations call, and waits until /readyz answers 200.
    pub async fn start_webhook(&mut self, extra: &[&str]) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.webhook_port));
        let user = self.serving_account(extra);
        let replica = self.spawn_replica_at(user, "replica-0", addr, extra).await;
        self.webhook_addr = Some(replica.addr);
        self.metrics_addr = Some(replica.metrics_addr);
        self.webhook = Some(replica);
    }

    /// `cip-webhook COMMAND...` against the API server as `user`, with this Lease
    /// identity, a metrics port of its own and its log in the test directory.
    async fn launch(
        &self,
        user: &str,
        identity: &str,
        command: &[std::ffi::OsString],
        extra: &[&str],
    ) -> Replica {
        let kubeconfig = self.kubeconfig_for(user, &["system:serviceaccounts"]).await;
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = self.path(&format!("{identity}.log"));
        let mut args: Vec<std::ffi::OsString> = command.to_vec();
        args.extend(["--identity".into(), identity.into()]);
        args.extend(["--metrics-listen".into(), metrics_addr.to_string().into()]);
        args.extend(["--kubeconfig".into(), kubeconfig.into_os_string()]);
        args.extend(extra.iter().map(Into::into));
        let child = crate::paths::spawn_logged(&args, &log);
        Replica {
            child,
            addr: metrics_addr,
            metrics_addr,
            log,
            identity: identity.to_string(),
        }
    }

    /// Starts one more `cip-webhook serve` as `user` with this Lease identity, and waits
    /// until it is ready.
    pub async fn spawn_replica(&self, user: &str, identity: &str, extra: &[&str]) -> Replica {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        self.spawn_replica_at(user, identity, addr, extra).await
    }

    async fn spawn_replica_at(
        &self,
        user: &str,
        identity: &str,
        addr: SocketAddr,
        extra: &[&str],
    ) -> Replica {
        let certs = self.path("certs");
        let command: Vec<std::ffi::OsString> = vec![
            "serve".into(),
            "--listen".into(),
            addr.to_string().into(),
            "--tls-cert".into(),
            certs.join("tls.crt").into(),
            "--tls-key".into(),
            certs.join("tls.key").into(),
        ];
        let mut replica = self.launch(user, identity, &command, extra).await;
        replica.addr = addr;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.readyz_at(addr).await == "200" {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "webhook never ready: {}",
                replica.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts `cip-webhook reconcile` (no admission port) as `user`, and waits until its
    /// metrics port's /readyz answers 200.
    pub async fn spawn_reconciler(&self, user: &str, identity: &str, extra: &[&str]) -> Replica {
        let replica = self
            .launch(user, identity, &["reconcile".into()], extra)
            .await;
        let metrics_addr = replica.metrics_addr;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !plain_get(metrics_addr, "/readyz").await.starts_with("ok") {
            assert!(
                Instant::now() < deadline,
                "reconciler never ready: {}",
                replica.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        replica
    }

    /// The HTTP status of /readyz, through curl trusting only the webhook's CA.
    pub async fn readyz(&self) -> Option<String> {
        Some(self.readyz_at(self.webhook_addr?).await)
    }

    /// The body of /readyz (what it is ready with, or waits for).
    pub async fn readyz_body(&self, addr: SocketAddr) -> String {
        self.get_at(addr, "/readyz").await
    }

    /// The main replica's metrics port.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr.expect("a webhook runs")
    }

    /// The main replica's /metrics.
    pub async fn metrics(&self) -> String {
        plain_get(self.metrics_addr.expect("a webhook runs"), "/metrics").await
    }

    /// Whether the main replica has finished a reconcile pass (its first write is done).
    pub async fn reconciled(&self) -> bool {
        self.metrics().await.lines().any(|l| {
            l.strip_prefix("cip_webhook_reconciles_total{result=\"ok\"} ")
                .and_then(|n| n.trim().parse::<f64>().ok())
                .is_some_and(|n| n >= 1.0)
        })
    }

    /// A GET through curl trusting only the webhook's CA.
    pub async fn get_at(&self, addr: SocketAddr, path: &str) -> String {
        let out = self.curl(addr, path, &[]).await;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn curl(&self, addr: SocketAddr, path: &str, args: &[&str]) -> Output {
        let host = format!("{SERVICE}.{NAMESPACE}.svc");
        Command::new("curl")
            .args(["-s", "--max-time", "10", "--cacert"])
            .arg(self.path("certs").join("ca.crt"))
            .args(["--resolve", &format!("{host}:{}:127.0.0.1", addr.port())])
            .args(args)
            .arg(format!("https://{host}:{}{path}", addr.port()))
            .output()
            .await
            .expect("curl is installed")
    }

    /// Retries until /readyz of the main replica says `text` (its state comes from watches).
    pub async fn readyz_says(&self, text: &str) -> String {
        let addr = self.webhook_addr.expect("a webhook runs");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let body = self.readyz_body(addr).await;
            if body.contains(text) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never said {text:?}: {body}\n{}",
                self.webhook_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn readyz_at(&self, addr: SocketAddr) -> String {
        let out = self
            .curl(addr, "/readyz", &["-o", "/dev/null", "-w", "%{http_code}"])
            .await;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn stop_webhook(&mut self) {
        if let Some(mut replica) = self.webhook.take() {
            replica.child.kill().await.unwrap();
        }
    }

    pub fn webhook_pid(&self) -> Option<u32> {
        self.webhook.as_ref().and_then(|r| r.child.id())
    }

    pub fn webhook_log(&self) -> String {
        let log = self.webhook.as_ref().map(Replica::log).unwrap_or_default();
        match &self.backend {
            Backend::Real(api) => format!("{log}\n--- kube-apiserver\n{}", api.log_tail()),
            Backend::Sim(_) => log,
        }
    }

    /// Waits until `done` holds for the cluster's state (generous: a loaded 2-core
    /// machine runs a real API server beside the test).
    pub async fn until<F>(&self, what: &str, done: F)
    where
        F: AsyncFn(&Cluster) -> bool,
    {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done(self).await {
            assert!(
                Instant::now() < deadline,
                "never reached: {what}\n{}",
                self.webhook_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Cluster::until`] for a predicate over the simulator's store.
    pub async fn until_sim(&self, what: &str, done: impl Fn(&Simulator) -> bool) {
        self.until(what, async |c: &Cluster| done(c.sim())).await
    }

    /// Retries `kubectl args` until `done` holds for its result, for changes the webhook
    /// learns through its watches.
    pub async fn eventually(&self, args: &[&str], done: impl Fn(&Run) -> bool) -> Run {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let run = self.kubectl(args).await;
            if done(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "never reached: {run:?}\n{}",
                self.webhook_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// kubectl at the API server's version, from the pinned kube module.
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Run {
    Command::new(upstream::kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .current_dir(root())
        .output()
        .await
        .expect("kubectl runs")
        .into()
}

/// A GET over plain HTTP (the metrics port), through curl.
pub async fn plain_get(addr: SocketAddr, path: &str) -> String {
    plain_get_as(addr, path, None).await
}

/// A plain-HTTP GET with a bearer token, if any.
pub async fn plain_get_as(addr: SocketAddr, path: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["--max-time", "10"];
    if let Some(header) = &auth {
        args.extend(["-H", header.as_str()]);
    }
    curl_plain(addr, path, &args).await
}

/// A fetch of a reconciler's `/running-images` as a replica holding `held` makes it: the
/// status and size (`200 N`, `304 0`), and the tag it came with.
pub async fn copy_fetched(addr: SocketAddr, held: Option<&str>) -> (String, Option<String>) {
    let condition = held.map(|tag| format!("If-None-Match: {tag}"));
    let mut args = vec!["--max-time", "30", "-o", "/dev/null", "-D", "-"];
    args.extend(["-w", "%{http_code} %{size_download}"]);
    if let Some(header) = &condition {
        args.extend(["-H", header.as_str()]);
    }
    let text = curl_plain(addr, "/running-images", &args).await;
    let tag = text
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .map(|t| t.trim().to_string());
    (text.lines().last().unwrap_or_default().to_string(), tag)
}

/// curl's output for `http://addr/path` with `args`.
async fn curl_plain(addr: SocketAddr, path: &str, args: &[&str]) -> String {
    let out = Command::new("curl")
        .arg("-s")
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .await
        .expect("curl is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file of a MachineConfig, decoded from its data URL.
pub fn file(mc: &Value, path: &str) -> Option<String> {
    let files = mc["spec"]["config"]["storage"]["files"].as_array()?;
    let source = files.iter().find(|f| f["path"] == path)?["contents"]["source"].as_str()?;
    let data = source.split_once("base64,")?.1;
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).unwrap();
    Some(String::from_utf8(bytes).unwrap())
}

/// examples/signed-apps.yaml under another name, with these scopes.
pub fn signed_apps(name: &str, scopes: &[&str]) -> Value {
    let text = std::fs::read_to_string(root().join("examples/signed-apps.yaml")).unwrap();
    let mut v: Value = serde_saphyr::from_str(&text).unwrap();
    v["metadata"]["name"] = json!(name);
    v["spec"]["scopes"] = json!(scopes);
    v
}

/// examples/signed-apps.yaml as an ImagePolicy of this namespace, with these scopes.
pub fn team_policy(namespace: &str, name: &str, scopes: &[&str]) -> Value {
    let mut v = signed_apps(name, scopes);
    v["kind"] = json!("ImagePolicy");
    v["metadata"]["namespace"] = json!(namespace);
    v
}

/// Reads of the simulator's store, for tests of faults only it can inject.
pub mod sim {
    use apisim::Simulator;
    use serde_json::Value;

    /// A stored ClusterImagePolicy.
    pub fn policy(sim: &Simulator, name: &str) -> Option<Value> {
        sim.get("config.openshift.io", "clusterimagepolicies", "", name)
    }

    /// A stored ImagePolicy.
    pub fn image_policy(sim: &Simulator, namespace: &str, name: &str) -> Option<Value> {
        sim.get("config.openshift.io", "imagepolicies", namespace, name)
    }

    /// A stored MachineConfig.
    pub fn machine_config(sim: &Simulator, name: &str) -> Option<Value> {
        sim.get(
            "machineconfiguration.openshift.io",
            "machineconfigs",
            "",
            name,
        )
    }

    /// Whether an Event counts a repeat (kube's recorder patched its series).
    pub fn an_event_repeated(sim: &Simulator) -> bool {
        super::event_repeated(&sim.list("events.k8s.io", "events"))
    }
}

/// Whether one of these Events counts a repeat (kube's recorder patched its series).
pub fn event_repeated(events: &[Value]) -> bool {
    events.iter().any(|e| e["series"]["count"] == 2)
}

/// A stored object without what the server sets, as goldens hold it.
pub fn normalized(mut v: Value) -> Value {
    let meta = v["metadata"].as_object_mut().unwrap();
    for field in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        meta.remove(field);
    }
    v
}

/// Compares the reconciler's MachineConfigs (name, stored object) with the goldens under
/// tests/golden/reconcile/DIR; `UPDATE_GOLDEN=1` rewrites them instead. Compared as data:
/// key order in a stored object is the writer's, not ours.
pub fn assert_reconcile_golden(dir: &str, machine_configs: &[(String, Option<Value>)]) {
    for (name, stored) in machine_configs {
        let path = root().join(format!("tests/golden/reconcile/{dir}/{name}.yaml"));
        let actual = stored.clone().map(normalized);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            match &actual {
                Some(v) => std::fs::write(&path, serde_saphyr::to_string(v).unwrap()).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
            continue;
        }
        let expected: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .map(|t| serde_saphyr::from_str(&t).unwrap());
        assert_eq!(
            actual,
            expected,
            "{} differs from the golden",
            path.display()
        );
    }
}
