//! A simulated cluster for end-to-end tests: the API simulator, the real `cip-webhook`
//! process registered with the project's own webhook configurations, and the real
//! `kubectl`. Include with `#[path = "common/cluster.rs"] mod cluster;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use apisim::{Config, Simulator};
use base64::Engine;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

pub const NAMESPACE: &str = "cip-webhook";
pub const SERVICE: &str = "cip-webhook";
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:cip-webhook:cip-webhook";
/// The reconciler Deployment's service account (components/reconciler).
pub const RECONCILER_ACCOUNT: &str = "system:serviceaccount:cip-webhook:cip-webhook-reconciler";

pub const CRDS: &str = "../shared/reference/crds";
pub const IMAGES_CRD: &str =
    "../shared/reference/crds/master/config-v1/0000_10_config-operator_01_images.crd.yaml";
pub const CLUSTERVERSIONS_CRD: &str = "../shared/reference/crds/master/config-v1/0000_00_cluster-version-operator_01_clusterversions-Default.crd.yaml";
pub const CIP_V1_CRD: &str = "../shared/reference/crds/master/config-v1/0000_10_config-operator_01_clusterimagepolicies.crd.yaml";
pub const CIP_V1ALPHA1_CRD: &str = "../shared/reference/crds/release-4.19/config-v1alpha1/0000_10_config-operator_01_clusterimagepolicies-TechPreviewNoUpgrade.crd.yaml";
pub const MCO_CRDS: &str = "../shared/reference/crds/master/machineconfiguration-v1";
pub const FEATUREGATES_CRD: &str =
    "../shared/reference/crds/master/config-v1/0000_10_config-operator_01_featuregates.crd.yaml";
pub const IMAGEPOLICIES_V1_CRD: &str =
    "../shared/reference/crds/master/config-v1/0000_10_config-operator_01_imagepolicies.crd.yaml";
pub const IDMS_CRD: &str = "../shared/reference/crds/master/config-v1/0000_10_config-operator_01_imagedigestmirrorsets.crd.yaml";
pub const ITMS_CRD: &str = "../shared/reference/crds/master/config-v1/0000_10_config-operator_01_imagetagmirrorsets.crd.yaml";
pub const ICSP_CRD: &str = "../shared/reference/crds/master/operator-v1alpha1/0000_10_config-operator_01_imagecontentsourcepolicies.crd.yaml";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cip-webhook"))
}

/// A stored ClusterImagePolicy.
pub fn policy(sim: &Simulator, name: &str) -> Option<Value> {
    sim.get("config.openshift.io", "clusterimagepolicies", "", name)
}

/// Whether an Event counts a repeat (kube's recorder patched its series).
pub fn an_event_repeated(sim: &Simulator) -> bool {
    sim.list("events.k8s.io", "events")
        .iter()
        .any(|e| e["series"]["count"] == 2)
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

/// examples/signed-apps.yaml as an ImagePolicy of this namespace, with these scopes.
pub fn team_policy(namespace: &str, name: &str, scopes: &[&str]) -> Value {
    let mut v = signed_apps(name, scopes);
    v["kind"] = json!("ImagePolicy");
    v["metadata"]["namespace"] = json!(namespace);
    v
}

/// A stored ImagePolicy.
pub fn image_policy(sim: &Simulator, namespace: &str, name: &str) -> Option<Value> {
    sim.get("config.openshift.io", "imagepolicies", namespace, name)
}

/// examples/signed-apps.yaml under another name, with these scopes.
pub fn signed_apps(name: &str, scopes: &[&str]) -> Value {
    let text = std::fs::read_to_string(root().join("examples/signed-apps.yaml")).unwrap();
    let mut v: Value = serde_saphyr::from_str(&text).unwrap();
    v["metadata"]["name"] = json!(name);
    v["spec"]["scopes"] = json!(scopes);
    v
}

pub struct Cluster {
    pub sim: Simulator,
    pub dir: tempfile::TempDir,
    webhook: Option<Replica>,
    pub webhook_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
}

/// One running `cip-webhook serve` process.
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
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc_kill(pid, 15) };
        self.child.wait().await.unwrap()
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// A simulator serving these CRD files (relative to the crate root), with the project's
    /// webhook configurations stored and their caBundle filled in, as service-ca would.
    pub async fn start(crds: &[&str]) -> Cluster {
        let cluster = Cluster::start_bare(crds, &[]).await;
        let ca = std::fs::read_to_string(cluster.path("certs").join("ca.crt")).unwrap();
        let bundle = base64::engine::general_purpose::STANDARD.encode(ca);
        let text = std::fs::read_to_string(root().join("manifests/base/webhooks.yaml")).unwrap();
        for mut v in cip_webhook::yaml::documents(&text).unwrap() {
            for hook in v["webhooks"].as_array_mut().unwrap() {
                hook["clientConfig"]["caBundle"] = json!(bundle);
            }
            cluster.apply_value(&v).await;
        }
        cluster
    }

    /// The CA bundle of the webhook's serving certificate, as service-ca would inject it.
    pub fn ca_bundle(&self) -> String {
        let ca = std::fs::read_to_string(self.path("certs").join("ca.crt")).unwrap();
        base64::engine::general_purpose::STANDARD.encode(ca)
    }

    /// A simulator and a serving certificate, with no webhook registered. `extra_crds`
    /// are absolute paths.
    pub async fn start_bare(crds: &[&str], extra_crds: &[PathBuf]) -> Cluster {
        let config = Config {
            crds: crds
                .iter()
                .map(|c| root().join(c))
                .chain(extra_crds.iter().cloned())
                .collect(),
            ..Config::default()
        };
        let sim = Simulator::start(config).await.expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let out = Command::new(bin())
            .args(["certs", "--out"])
            .arg(&certs)
            .args(["--dns", &format!("{SERVICE}.{NAMESPACE}.svc")])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Cluster {
            sim,
            dir,
            webhook: None,
            webhook_addr: None,
            metrics_addr: None,
        }
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
        self.kubectl_as(self.sim.kubeconfig(), args).await
    }

    pub async fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Run {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .current_dir(root())
            .output()
            .await
            .expect("kubectl is installed")
            .into()
    }

    /// Starts `cip-webhook serve` against the simulator as its service account, routes
    /// the webhook Service to it, and waits until /readyz answers 200.
    pub async fn start_webhook(&mut self, extra: &[&str]) {
        let replica = self
            .spawn_replica(SERVICE_ACCOUNT, "replica-0", extra)
            .await;
        self.webhook_addr = Some(replica.addr);
        self.metrics_addr = Some(replica.metrics_addr);
        self.sim
            .route_service(NAMESPACE, SERVICE, 443, replica.addr);
        self.webhook = Some(replica);
    }

    /// `cip-webhook COMMAND...` against the simulator as `user`, with this Lease identity,
    /// a metrics port of its own and its log in the test directory.
    fn launch(
        &self,
        user: &str,
        identity: &str,
        command: &[std::ffi::OsString],
        extra: &[&str],
    ) -> Replica {
        let kubeconfig = self
            .sim
            .kubeconfig_for(user, &["system:serviceaccounts"])
            .unwrap();
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = self.path(&format!("{identity}.log"));
        let child = Command::new(bin())
            .args(command)
            .args(["--identity", identity])
            .args(["--metrics-listen", &metrics_addr.to_string()])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
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
        let mut replica = self.launch(user, identity, &command, extra);
        replica.addr = addr;
        let deadline = Instant::now() + Duration::from_secs(30);
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
        let replica = self.launch(user, identity, &["reconcile".into()], extra);
        let metrics_addr = replica.metrics_addr;
        let deadline = Instant::now() + Duration::from_secs(30);
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

    /// The main replica's /metrics.
    pub async fn metrics(&self) -> String {
        plain_get(self.metrics_addr.expect("a webhook runs"), "/metrics").await
    }

    /// A GET through curl trusting only the webhook's CA.
    pub async fn get_at(&self, addr: SocketAddr, path: &str) -> String {
        let host = format!("{SERVICE}.{NAMESPACE}.svc");
        let out = Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(self.path("certs").join("ca.crt"))
            .args(["--resolve", &format!("{host}:{}:127.0.0.1", addr.port())])
            .arg(format!("https://{host}:{}{path}", addr.port()))
            .output()
            .await
            .expect("curl is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Retries until /readyz of the main replica says `text` (its state comes from watches).
    pub async fn readyz_says(&self, text: &str) -> String {
        let addr = self.webhook_addr.expect("a webhook runs");
        let deadline = Instant::now() + Duration::from_secs(30);
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
        let host = format!("{SERVICE}.{NAMESPACE}.svc");
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(self.path("certs").join("ca.crt"))
            .args(["--resolve", &format!("{host}:{}:127.0.0.1", addr.port())])
            .arg(format!("https://{host}:{}/readyz", addr.port()))
            .output()
            .await
            .expect("curl is installed");
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
        self.webhook.as_ref().map(Replica::log).unwrap_or_default()
    }

    /// Stores every object of these YAML files (relative to the crate root) directly.
    pub fn seed_files(&self, files: &[&str]) {
        for file in files {
            let text = std::fs::read_to_string(root().join(file)).unwrap();
            for v in cip_webhook::yaml::documents(&text).unwrap() {
                if !v.is_null() {
                    self.sim.seed(v).unwrap();
                }
            }
        }
    }

    /// Waits until `done` holds for the simulator's state.
    pub async fn until(&self, what: &str, done: impl Fn(&Simulator) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&self.sim) {
            assert!(
                Instant::now() < deadline,
                "never reached: {what}\n{}",
                self.webhook_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Retries `kubectl args` until `done` holds for its result, for changes the webhook
    /// learns through its watches.
    pub async fn eventually(&self, args: &[&str], done: impl Fn(&Run) -> bool) -> Run {
        let deadline = Instant::now() + Duration::from_secs(15);
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

/// A GET over plain HTTP (the metrics port), through curl.
pub async fn plain_get(addr: SocketAddr, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{addr}{path}")])
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
    Some(
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
        )
        .unwrap(),
    )
}
