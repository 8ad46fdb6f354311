//! A real registry on loopback (Debian's `docker-registry`, distribution 2.8) filled by
//! containers/image itself (`civerify copy`, signing with its sigstore signer) or by hand
//! (an attachment signed with openssl), and containers/image deciding a pull from it
//! with a node's files (`civerify decide`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::paths::{free_port, root};
use crate::upstream;

/// A registry process; stopped by PID when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A signing key made by containers/image's `sigstore.GenerateKeyPair`.
pub struct SigningKey {
    pub private: PathBuf,
    pub passphrase: PathBuf,
    pub public_pem: String,
}

impl SigningKey {
    pub fn generate(dir: &Path, name: &str) -> SigningKey {
        let passphrase = dir.join(format!("{name}.pass"));
        std::fs::write(&passphrase, "test-passphrase\n").unwrap();
        run(Command::new(upstream::civerify())
            .arg("genkey")
            .arg(dir.join(name))
            .arg(&passphrase));
        SigningKey {
            private: dir.join(format!("{name}.key")),
            passphrase,
            public_pem: std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap(),
        }
    }
}

fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: info}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {host}}}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry is installed (scripts/test.sh installs it)");
        let registry = Registry { child, host, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while registry
            .curl(&["-o", "/dev/null", "-w", "%{http_code}"], "/v2/")
            .1
            != "200"
        {
            assert!(Instant::now() < deadline, "the registry never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// HTTP requests the registry has answered so far (its log line per response).
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("registry.log"))
            .unwrap_or_default()
            .matches("msg=\"response completed")
            .count()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// curl against the registry: (exit success, stdout).
    fn curl(&self, args: &[&str], path: &str) -> (bool, String) {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .args(args)
            .arg(format!("http://{}{path}", self.host))
            .output()
            .expect("curl is installed");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// A one-file image for `arch` as an OCI layout directory (tag `v1`); its path.
    pub fn oci_layout(&self, name: &str, arch: &str) -> PathBuf {
        let layout = self.dir.path().join(format!("layout-{name}"));
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let content = self.dir.path().join(format!("content-{name}"));
        std::fs::create_dir_all(&content).unwrap();
        std::fs::write(
            content.join("hello.txt"),
            format!("cip-webhook test image {name} {arch}\n"),
        )
        .unwrap();
        let tar = self.dir.path().join(format!("{name}.tar"));
        run(Command::new("tar")
            .args(["--mtime=@0", "--owner=0", "--group=0", "-C"])
            .arg(&content)
            .arg("-cf")
            .arg(&tar)
            .arg("hello.txt"));
        let blob = |bytes: &[u8]| {
            let hex = sha256_hex(bytes);
            std::fs::write(blobs.join(&hex), bytes).unwrap();
            json!({"digest": format!("sha256:{hex}"), "size": bytes.len()})
        };
        let layer = blob(&std::fs::read(&tar).unwrap());
        let config = json!({"architecture": arch, "os": "linux",
                            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}, "config": {}});
        let config = blob(config.to_string().as_bytes());
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config["digest"], "size": config["size"]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer["digest"], "size": layer["size"]}]
        });
        let manifest = blob(manifest.to_string().as_bytes());
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest["digest"], "size": manifest["size"],
            "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
        std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        layout
    }

    /// A registries.d directory turning sigstore attachments on for this registry, for
    /// writing signatures.
    fn writer_registries_d(&self) -> PathBuf {
        let dir = self.dir.path().join("writer.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("registry.yaml"),
            format!(
                "docker:\n  {}:\n    use-sigstore-attachments: true\n",
                self.host
            ),
        )
        .unwrap();
        dir
    }

    /// Copies the image in `layout` to `repo:tag` with containers/image, signed by `key`
    /// (for `identity`, by default the destination) if given; returns the manifest digest.
    pub fn push(
        &self,
        layout: &Path,
        repo_tag: &str,
        key: Option<&SigningKey>,
        identity: Option<&str>,
    ) -> String {
        let mut command = Command::new(upstream::civerify());
        command.arg("copy");
        if let Some(key) = key {
            command
                .arg("--sign-key")
                .arg(&key.private)
                .arg("--passphrase-file")
                .arg(&key.passphrase)
                .arg("--registries-d")
                .arg(self.writer_registries_d());
        }
        if let Some(identity) = identity {
            command.args(["--sign-identity", identity]);
        }
        command
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host));
        run(&mut command).trim().to_string()
    }

    /// A header of a response (`curl -D -` output), case-insensitively.
    fn header(headers: &str, name: &str) -> Option<String> {
        headers.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
    }

    /// PUTs `bytes` with this content type to a URL; whether the registry took them.
    fn put(&self, url: &str, content_type: &str, bytes: &[u8]) -> bool {
        let file = self.dir.path().join(format!("put-{}", sha256_hex(bytes)));
        std::fs::write(&file, bytes).unwrap();
        Command::new("curl")
            .args([
                "-sf",
                "-X",
                "PUT",
                "-H",
                &format!("Content-Type: {content_type}"),
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(url)
            .status()
            .unwrap()
            .success()
    }

    /// Uploads a blob to `repo`.
    pub fn upload_blob(&self, repo: &str, bytes: &[u8]) -> Value {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let out = Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "-X", "POST"])
            .arg(format!("http://{}/v2/{repo}/blobs/uploads/", self.host))
            .output()
            .unwrap();
        let headers = String::from_utf8_lossy(&out.stdout).into_owned();
        let location = Self::header(&headers, "location")
            .unwrap_or_else(|| panic!("no upload location: {headers}"));
        let location = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.host)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        assert!(
            self.put(&url, "application/octet-stream", bytes),
            "blob upload to {repo} failed"
        );
        json!({"digest": digest, "size": bytes.len()})
    }

    /// Puts a manifest under `reference` (a tag or digest) of `repo`.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, manifest: &[u8]) {
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.host);
        assert!(
            self.put(&url, media_type, manifest),
            "manifest upload to {repo}:{reference} failed"
        );
    }

    /// The digest of `repo:tag`'s manifest, as the registry serves it.
    pub fn digest(&self, repo_tag: &str) -> String {
        let (repo, tag) = repo_tag.rsplit_once(':').unwrap();
        let (_, headers) = self.curl(
            &[
                "-I",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
            ],
            &format!("/v2/{repo}/manifests/{tag}"),
        );
        Self::header(&headers, "docker-content-digest")
            .unwrap_or_else(|| panic!("no digest for {repo_tag}: {headers}"))
    }

    /// A sigstore attachment as cosign writes one, by hand: the simple-signing payload for
    /// `identity` and `digest`, signed with openssl by `key_pem_file` (an EC key), under
    /// `sha256-<digest>.sig` in `repo`.
    pub fn attach_openssl_signature(
        &self,
        repo: &str,
        digest: &str,
        identity: &str,
        key_pem_file: &Path,
    ) {
        self.attach_openssl_signature_for(repo, digest, digest, identity, key_pem_file);
    }

    /// As [`Registry::attach_openssl_signature`], with the payload naming `signed_digest`
    /// while the attachment sits under `digest`'s tag (a signature for another manifest).
    pub fn attach_openssl_signature_for(
        &self,
        repo: &str,
        digest: &str,
        signed_digest: &str,
        identity: &str,
        key_pem_file: &Path,
    ) {
        let payload = String::from_utf8(crate::keyless::payload(identity, signed_digest)).unwrap();
        let payload_file = self
            .dir
            .path()
            .join(format!("payload-{}", sha256_hex(payload.as_bytes())));
        std::fs::write(&payload_file, &payload).unwrap();
        // Ed25519 signs the message itself; the others a SHA-256 digest of it.
        let ed25519 = key_pem_file.to_string_lossy().contains("ed25519");
        let mut command = Command::new("openssl");
        if ed25519 {
            command
                .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
                .arg(key_pem_file)
                .arg("-in")
                .arg(&payload_file);
        } else {
            command
                .args(["dgst", "-sha256", "-sign"])
                .arg(key_pem_file)
                .arg(&payload_file);
        }
        let out = command.output().expect("openssl is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let signature = crate::paths::b64(&out.stdout);
        let annotations = BTreeMap::from([(crate::keyless::SIGNATURE.to_string(), signature)]);
        self.attach_layers(repo, digest, &[(payload.into_bytes(), annotations)]);
    }

    /// The sigstore attachment `<repo>:sha256-<hex>.sig` of `digest` with these layers.
    pub fn attach_layers(&self, repo: &str, digest: &str, layers: &[crate::keyless::Attachment]) {
        let config = self.upload_blob(repo, b"{}");
        let layers: Vec<Value> = layers
            .iter()
            .map(|(payload, annotations)| {
                let blob = self.upload_blob(repo, payload);
                json!({"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                       "digest": blob["digest"], "size": blob["size"],
                       "annotations": annotations})
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config["digest"], "size": config["size"]},
            "layers": layers
        });
        self.put_manifest(
            repo,
            &format!("{}.sig", digest.replace(':', "-")),
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
    }
}

impl Registry {
    /// A two-platform image (amd64, arm64) under `repo:tag` as an OCI index over images
    /// pushed by digest; returns (index digest, amd64 digest).
    pub fn push_index(&self, repo: &str, tag: &str) -> (String, String) {
        let mut entries = Vec::new();
        let mut amd64 = String::new();
        for arch in ["amd64", "arm64"] {
            let layout = self.oci_layout(&format!("{}-{arch}", repo.replace('/', "-")), arch);
            let digest = self.push(&layout, &format!("{repo}:{arch}"), None, None);
            let (_, manifest) = self.curl(
                &["-H", "Accept: application/vnd.oci.image.manifest.v1+json"],
                &format!("/v2/{repo}/manifests/{digest}"),
            );
            if arch == "amd64" {
                amd64 = digest.clone();
            }
            entries.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest, "size": manifest.len(),
                "platform": {"architecture": arch, "os": "linux"}}));
        }
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
        let bytes = index.to_string().into_bytes();
        self.put_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &bytes);
        (format!("sha256:{}", sha256_hex(&bytes)), amd64)
    }
}

/// containers/image's answer for one pull.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `accepted`, `rejected` (a policy requirement failed) or `error`.
    pub verdict: String,
    pub message: String,
}

impl Decision {
    pub fn accepted(&self) -> bool {
        self.verdict == "accepted"
    }

    pub fn rejected_with(&self, text: &str) -> bool {
        self.verdict == "rejected" && self.message.contains(text)
    }
}

/// A node's files as the MachineConfigs put them, written under a directory: the paths
/// containers/image reads (policy.json, registries.d, registries.conf, CRI-O's namespace
/// policies).
pub struct Node {
    pub root: PathBuf,
}

impl Node {
    pub fn write(dir: &Path, files: &BTreeMap<String, String>) -> Node {
        let root = dir.to_path_buf();
        for (path, contents) in files {
            let target = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(target, contents).unwrap();
        }
        std::fs::create_dir_all(root.join("etc/containers/registries.d")).unwrap();
        Node { root }
    }

    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// CRI-O's pull of `image` for a pod in `namespace` (its namespace policy file where
    /// one exists, as CRI-O's `signature_policy_dir` does), decided by containers/image.
    pub fn pull(&self, namespace: Option<&str>, image: &str) -> Decision {
        let policy = namespace
            .map(|ns| self.path(&format!("/etc/crio/policies/{ns}.json")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| self.path("/etc/containers/policy.json"));
        let conf = self.path("/etc/containers/registries.conf");
        decide(
            &policy,
            &self.path("/etc/containers/registries.d"),
            conf.is_file().then_some(conf.as_path()),
            image,
        )
    }
}

/// `civerify decide`: containers/image's verdict for pulling `image` as CRI-O does.
pub fn decide(
    policy: &Path,
    registries_d: &Path,
    registries_conf: Option<&Path>,
    image: &str,
) -> Decision {
    let mut command = Command::new(upstream::civerify());
    command
        .arg("decide")
        .arg("--policy")
        .arg(policy)
        .arg("--registries-d")
        .arg(registries_d);
    if let Some(conf) = registries_conf {
        command.arg("--registries-conf").arg(conf);
    }
    let out = run(command.arg(image));
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out}: {e}"));
    Decision {
        verdict: v["verdict"].as_str().unwrap().to_string(),
        message: v["message"].as_str().unwrap().to_string(),
    }
}

/// A private key made by openssl (`rsa`, `p384` or `ed25519`, also its file name), and
/// its public half as PEM.
pub fn openssl_keypair(dir: &Path, kind: &str) -> (PathBuf, String) {
    let private = dir.join(format!("{kind}.key"));
    let args: &[&str] = match kind {
        "rsa" => &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        "p384" => &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ],
        "ed25519" => &["genpkey", "-algorithm", "ed25519"],
        other => panic!("no key kind {other}"),
    };
    run(Command::new("openssl").args(args).arg("-out").arg(&private));
    let public = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private));
    (private, public)
}

/// The test key that signs with openssl (tests/fixtures/keys/cosign.key, P-256).
pub fn openssl_key() -> PathBuf {
    root().join("tests/fixtures/keys/cosign.key")
}
