//! A real kube-apiserver with its etcd on loopback, built from the pinned Go modules
//! (`scripts/upstream.sh`), started the way controller-runtime's envtest starts one:
//! serving and client certificates made here, a service-account signing key, RBAC
//! authorization, the admission plugins MutatingAdmissionWebhook, ValidatingAdmissionWebhook
//! and ValidatingAdmissionPolicy, an audit log of every request, and the upstream CRDs
//! installed as they are. No controller-manager runs: namespaces never finish terminating
//! and nothing is garbage-collected. Both processes are stopped by PID when this is dropped.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::upstream::{self, Crd};

/// A request as the API server's audit log records it (stage ResponseComplete).
#[derive(Debug, Clone, PartialEq)]
pub struct Audited {
    pub verb: String,
    pub user: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    pub user_agent: String,
}

impl Audited {
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete")
    }
}

/// An API error as the server sent it.
#[derive(Debug, Clone)]
pub struct Refused {
    pub code: u16,
    pub status: Value,
}

impl Refused {
    pub fn message(&self) -> &str {
        self.status["message"].as_str().unwrap_or_default()
    }
}

pub struct KubeApiServer {
    dir: tempfile::TempDir,
    etcd: Child,
    apiserver: Child,
    pub port: u16,
    client: Client,
    ca: Ca,
    /// Lines of the audit log already seen by `clear_requests`.
    audit_offset: Mutex<usize>,
    tokens: Mutex<HashMap<String, PathBuf>>,
    /// The version each (group, plural) is served at, once discovered.
    versions: Mutex<HashMap<(String, String), String>>,
}

/// The test CA: it signs the serving certificate and every client certificate.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "kube test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and key signed by this CA, PEM.
    fn sign(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every request, at Metadata level: who did what to which object, and the answer.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n";

/// The versions the suite runs against, as the binaries report them (printed once).
pub fn versions() -> &'static str {
    static VERSIONS: OnceLock<String> = OnceLock::new();
    VERSIONS.get_or_init(|| {
        let run = |bin: PathBuf, arg: &str| {
            let out = std::process::Command::new(&bin).arg(arg).output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let apiserver =
            run(upstream::kube_apiserver(), "--version").replace("Kubernetes ", "kube-apiserver ");
        let etcd = run(upstream::etcd(), "--version").replace("etcd Version: ", "etcd ");
        let line = format!("{apiserver}, {etcd}");
        eprintln!("real API server: {line}");
        line
    })
}

impl KubeApiServer {
    /// Starts etcd and kube-apiserver and installs these CRDs; returns once the server is
    /// ready and every CRD is established. A free port taken by another process between
    /// its probe and the bind (tests start servers side by side) means another try.
    pub async fn start(crds: &[Crd]) -> KubeApiServer {
        versions();
        let mut tries = 0;
        loop {
            tries += 1;
            match KubeApiServer::attempt().await {
                Ok(server) => {
                    server.install_crds(crds).await;
                    return server;
                }
                Err(why) if why.contains("address already in use") && tries < 4 => {
                    eprintln!("kube-apiserver or etcd lost its port to another process; again");
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    async fn attempt() -> Result<KubeApiServer, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let ca = Ca::new();
        let (serving, serving_key) = ca.sign(
            "kube-apiserver",
            &[],
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (admin, admin_key) = ca.sign(
            "admin",
            &["system:masters"],
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let sa_key = KeyPair::generate().unwrap();
        for (name, text) in [
            ("ca.crt", ca.pem.as_str()),
            ("serving.crt", serving.as_str()),
            ("serving.key", serving_key.as_str()),
            ("admin.crt", admin.as_str()),
            ("admin.key", admin_key.as_str()),
            ("sa.key", sa_key.serialize_pem().as_str()),
            ("sa.pub", sa_key.public_key_pem().as_str()),
            ("audit-policy.yaml", AUDIT_POLICY),
        ] {
            std::fs::write(path(name), text).unwrap();
        }

        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Command::new(upstream::etcd())
            .arg("--data-dir")
            .arg(path("etcd"))
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--unsafe-no-fsync", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(path("etcd.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("etcd starts");

        let port = free_port();
        let arg = |name: &str, file: &str| format!("--{name}={}", path(file).display());
        let apiserver = Command::new(upstream::kube_apiserver())
            .arg(format!("--etcd-servers={etcd_url}"))
            .args([format!("--secure-port={port}"), "--bind-address=127.0.0.1".into()])
            .args(["--advertise-address=127.0.0.1", "--service-cluster-ip-range=10.0.0.0/24"])
            .args([arg("tls-cert-file", "serving.crt"), arg("tls-private-key-file", "serving.key")])
            .arg(arg("client-ca-file", "ca.crt"))
            .args(["--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc"])
            .args([arg("service-account-key-file", "sa.pub"), arg("service-account-signing-key-file", "sa.key")])
            .args(["--disable-admission-plugins=ServiceAccount", "--allow-privileged=true"])
            .arg("--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy")
            .args([arg("audit-policy-file", "audit-policy.yaml"), arg("audit-log-path", "audit.log")])
            .args(["--audit-log-format=json", "--audit-log-mode=blocking", "--profiling=false"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(path("kube-apiserver.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("kube-apiserver starts");

        let kubeconfig = path("admin.kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_text(
                port,
                &path("ca.crt"),
                Credentials::Cert(&path("admin.crt"), &path("admin.key")),
            ),
        )
        .unwrap();
        let client = Client::new(&kubeconfig).await;
        let mut server = KubeApiServer {
            dir,
            etcd,
            apiserver,
            port,
            client,
            ca,
            audit_offset: Mutex::new(0),
            tokens: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = self.apiserver.try_wait() {
                return Err(format!(
                    "kube-apiserver exited ({status}):\n{}",
                    self.log_tail()
                ));
            }
            if let Ok(Some(status)) = self.etcd.try_wait() {
                return Err(format!(
                    "etcd exited ({status}):\n{}",
                    self.file("etcd.log")
                ));
            }
            if self
                .client
                .raw("GET", "/readyz", None)
                .await
                .is_ok_and(|(code, _)| code == 200)
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver never ready:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// The end of the API server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.file("kube-apiserver.log");
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.pem
    }

    /// The cluster administrator's kubeconfig (a system:masters client certificate).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig that authenticates as `user`: a service account (created with its
    /// namespace if missing) gets a token from the TokenRequest API, anyone else a client
    /// certificate with `groups` as its organizations.
    pub async fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> PathBuf {
        if let Some(path) = self.tokens.lock().unwrap().get(user) {
            return path.clone();
        }
        let file = self
            .dir
            .path()
            .join(format!("{}.kubeconfig", user.replace(':', "_")));
        let ca = self.dir.path().join("ca.crt");
        let text = if let Some(sa) = user.strip_prefix("system:serviceaccount:") {
            let (namespace, name) = sa.split_once(':').expect("system:serviceaccount:NS:NAME");
            let token = self.token(namespace, name).await;
            kubeconfig_text(self.port, &ca, Credentials::Token(&token))
        } else {
            let (cert, key) = self
                .ca
                .sign(user, groups, &[], ExtendedKeyUsagePurpose::ClientAuth);
            let stem = user.replace(':', "_");
            let (cert_path, key_path) = (
                self.dir.path().join(format!("{stem}.crt")),
                self.dir.path().join(format!("{stem}.key")),
            );
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            kubeconfig_text(self.port, &ca, Credentials::Cert(&cert_path, &key_path))
        };
        std::fs::write(&file, text).unwrap();
        self.tokens
            .lock()
            .unwrap()
            .insert(user.to_string(), file.clone());
        file
    }

    /// A bound token for a service account from the TokenRequest API, creating the
    /// namespace and the account first where they are missing.
    pub async fn token(&self, namespace: &str, name: &str) -> String {
        self.ensure(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        )
        .await;
        self.ensure(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                           "metadata": {"name": name, "namespace": namespace}}))
            .await;
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token");
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": {"expirationSeconds": 7200}});
        let answer = self
            .client
            .json("POST", &path, Some(&request))
            .await
            .expect("a token");
        answer["status"]["token"].as_str().unwrap().to_string()
    }

    /// Creates an object unless one of that name exists.
    pub async fn ensure(&self, object: Value) {
        match self.create(&object).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => panic!("creating {object}: {}", e.status),
        }
    }

    /// The REST path of a collection or an object, at the version that serves `plural`
    /// (the group's preferred one where it does), from discovery.
    pub async fn path_of(&self, group: &str, plural: &str, namespace: &str, name: &str) -> String {
        let base = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{}", self.version_of(group, plural).await)
        };
        let ns = if namespace.is_empty() {
            String::new()
        } else {
            format!("/namespaces/{namespace}")
        };
        let name = if name.is_empty() {
            String::new()
        } else {
            format!("/{name}")
        };
        format!("{base}{ns}/{plural}{name}")
    }

    async fn version_of(&self, group: &str, plural: &str) -> String {
        let key = (group.to_string(), plural.to_string());
        if let Some(v) = self.versions.lock().unwrap().get(&key) {
            return v.clone();
        }
        let answer = self
            .client
            .json("GET", &format!("/apis/{group}"), None)
            .await;
        let Ok(answer) = answer else {
            // Not served (yet): a path that answers 404.
            return "v1".to_string();
        };
        let preferred = answer["preferredVersion"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut versions: Vec<String> = answer["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["version"].as_str().map(str::to_string))
            .collect();
        versions.sort_by_key(|v| *v != preferred);
        for version in versions {
            let Ok(list) = self
                .client
                .json("GET", &format!("/apis/{group}/{version}"), None)
                .await
            else {
                continue;
            };
            let serves = list["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["name"] == plural);
            if serves {
                self.versions.lock().unwrap().insert(key, version.clone());
                return version;
            }
        }
        "v1".to_string()
    }

    pub async fn get(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let path = self.path_of(group, plural, namespace, name).await;
        match self.client.json("GET", &path, None).await {
            Ok(v) => Some(v),
            Err(e) if e.code == 404 => None,
            Err(e) => panic!("GET {path}: {}", e.status),
        }
    }

    /// Every object of a type, across namespaces, in the server's order.
    pub async fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        let path = self.path_of(group, plural, "", "").await;
        match self.client.json("GET", &path, None).await {
            Ok(v) => v["items"].as_array().cloned().unwrap_or_default(),
            Err(e) if e.code == 404 => Vec::new(),
            Err(e) => panic!("GET {path}: {}", e.status),
        }
    }

    /// The group and plural of a kind, from the object's apiVersion and the server's
    /// discovery of that group-version.
    pub async fn resource_of(&self, object: &Value) -> (String, String, String) {
        let api_version = object["apiVersion"].as_str().expect("apiVersion");
        let kind = object["kind"].as_str().expect("kind");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let path = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{api_version}")
        };
        let list = self
            .client
            .json("GET", &path, None)
            .await
            .unwrap_or_else(|e| panic!("{path}: {}", e.status));
        let plural = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == kind && !r["name"].as_str().unwrap().contains('/'))
            .unwrap_or_else(|| panic!("{kind} is not served in {api_version}"))["name"]
            .as_str()
            .unwrap()
            .to_string();
        (group.to_string(), version.to_string(), plural)
    }

    async fn object_path(&self, object: &Value, with_name: bool) -> String {
        let (group, version, plural) = self.resource_of(object).await;
        let base = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{version}")
        };
        let ns = object["metadata"]["namespace"]
            .as_str()
            .map(|n| format!("/namespaces/{n}"))
            .unwrap_or_default();
        let name = if with_name {
            format!("/{}", object["metadata"]["name"].as_str().expect("a name"))
        } else {
            String::new()
        };
        format!("{base}{ns}/{plural}{name}")
    }

    /// Creates an object as the administrator (admission webhooks apply).
    pub async fn create(&self, object: &Value) -> Result<Value, Refused> {
        let path = self.object_path(object, false).await;
        self.client.json("POST", &path, Some(object)).await
    }

    /// Stores an object as given, status included: created (in its namespace, created if
    /// missing), or replaced over whatever version is stored, and its status written
    /// through the status subresource.
    pub async fn seed(&self, object: Value) -> Value {
        if let Some(namespace) = object["metadata"]["namespace"].as_str() {
            self.ensure(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
            )
            .await;
        }
        let path = self.object_path(&object, true).await;
        let mut fresh = object.clone();
        if let Some(meta) = fresh["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        let stored = match self.create(&fresh).await {
            Ok(v) => v,
            Err(e) if e.code == 409 => {
                let current = self.client.json("GET", &path, None).await.unwrap();
                let mut replacement = object.clone();
                replacement["metadata"]["resourceVersion"] =
                    current["metadata"]["resourceVersion"].clone();
                self.client
                    .json("PUT", &path, Some(&replacement))
                    .await
                    .unwrap_or_else(|e| panic!("replacing {path}: {}", e.status))
            }
            Err(e) => panic!("creating {path}: {}", e.status),
        };
        if object.get("status").is_none_or(Value::is_null) {
            return stored;
        }
        let mut with_status = stored.clone();
        with_status["status"] = object["status"].clone();
        match self
            .client
            .json("PUT", &format!("{path}/status"), Some(&with_status))
            .await
        {
            Ok(v) => v,
            // A type without a status subresource stored the status with the object.
            Err(e) if e.code == 404 => stored,
            Err(e) => panic!("status of {path}: {}", e.status),
        }
    }

    pub async fn delete(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, Refused> {
        let path = self.path_of(group, plural, namespace, name).await;
        self.client.json("DELETE", &path, None).await
    }

    /// Any request as the administrator; the answer's status code and JSON.
    pub async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        match self.client.json(method, path, body).await {
            Ok(v) => (200, v),
            Err(e) => (e.code, e.status),
        }
    }

    /// Installs CRDs as they are published, and waits until each is established and served.
    pub async fn install_crds(&self, crds: &[Crd]) {
        let paths: Vec<PathBuf> = crds.iter().map(|c| c.path()).collect();
        self.install_crd_files(&paths).await;
    }

    pub async fn install_crd_files(&self, files: &[PathBuf]) {
        let mut names = Vec::new();
        for file in files {
            let text =
                std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for crd in cip_core::yaml::documents(&text).unwrap() {
                if crd.is_null() {
                    continue;
                }
                names.push(crd["metadata"]["name"].as_str().unwrap().to_string());
                self.ensure(crd).await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for name in names {
            let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}");
            loop {
                let crd = self.client.json("GET", &path, None).await.unwrap();
                let established = crd["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Established" && c["status"] == "True");
                if established {
                    break;
                }
                assert!(Instant::now() < deadline, "{name} never established: {crd}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Every request since the last `clear_requests`, from the audit log: a watch from
    /// the moment its response started, any other request once it completed.
    pub fn requests(&self) -> Vec<Audited> {
        let offset = *self.audit_offset.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        self.file("audit.log")
            .lines()
            .skip(offset)
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| {
                e["stage"] == "ResponseComplete"
                    || (e["stage"] == "ResponseStarted" && e["verb"] == "watch")
            })
            .filter(|e| seen.insert(e["auditID"].as_str().unwrap_or_default().to_string()))
            .map(|e| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                let o = &e["objectRef"];
                Audited {
                    verb: s(&e["verb"]),
                    user: s(&e["user"]["username"]),
                    group: s(&o["apiGroup"]),
                    resource: s(&o["resource"]),
                    subresource: s(&o["subresource"]),
                    namespace: s(&o["namespace"]),
                    name: s(&o["name"]),
                    code: e["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
                    user_agent: s(&e["userAgent"]),
                }
            })
            .collect()
    }

    pub fn clear_requests(&self) {
        *self.audit_offset.lock().unwrap() = self.file("audit.log").lines().count();
    }
}

enum Credentials<'a> {
    Cert(&'a Path, &'a Path),
    Token(&'a str),
}

fn kubeconfig_text(port: u16, ca: &Path, credentials: Credentials) -> String {
    let user = match credentials {
        Credentials::Cert(cert, key) => json!({"client-certificate": cert, "client-key": key}),
        Credentials::Token(token) => json!({"token": token}),
    };
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": format!("https://127.0.0.1:{port}"),
                                                   "certificate-authority": ca}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test"
    });
    serde_json::to_string_pretty(&config).unwrap()
}

/// The harness's own client (kube-rs with the administrator's certificate), for raw
/// requests whose status and body the tests read as the server sent them.
struct Client {
    inner: kube::Client,
}

impl Client {
    async fn new(kubeconfig: &Path) -> Client {
        let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .unwrap();
        Client {
            inner: kube::Client::try_from(config).unwrap(),
        }
    }

    /// The status code and body of one request.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), String> {
        use http_body_util::BodyExt;
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Accept", "application/json");
        let body = match body {
            Some(v) => {
                request = request.header("Content-Type", "application/json");
                serde_json::to_vec(v).unwrap()
            }
            None => Vec::new(),
        };
        let request = request
            .body(kube::client::Body::from(body))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.inner.send(request))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let code = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((code, bytes.to_vec()))
    }

    async fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Refused> {
        let (code, bytes) = self.raw(method, path, body).await.map_err(|e| Refused {
            code: 0,
            status: json!({"message": e}),
        })?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&code) {
            Ok(value)
        } else {
            Err(Refused {
                code,
                status: value,
            })
        }
    }
}

/// base64 of a PEM, as a caBundle.
pub fn ca_bundle(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem)
}
