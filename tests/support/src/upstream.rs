//! The pinned upstream parts, as `scripts/upstream.sh` leaves them: data read from the Go
//! module cache at the versions `tests/upstream/*/go.mod` pin (every byte checked against
//! their go.sum when it was downloaded), and binaries built from those modules into a cache
//! outside the repository. Nothing here downloads or builds: a test that finds a part
//! missing fails and says to run the script.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::paths::root;

/// Where `scripts/upstream.sh` runs from, and what to tell a user who has not run it.
const HOW: &str = "run scripts/upstream.sh first (it fetches and builds the pinned upstream parts)";

fn module_dir(name: &str) -> PathBuf {
    root().join("tests/upstream").join(name)
}

/// The version of `module` that `tests/upstream/<dir>/go.mod` requires.
pub fn pinned(dir: &str, module: &str) -> String {
    let path = module_dir(dir).join("go.mod");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [m, v] if *m == module => Some(v.to_string()),
                ["require", m, v] if *m == module => Some(v.to_string()),
                _ => None,
            }
        })
        .unwrap_or_else(|| panic!("{} does not require {module}", path.display()))
}

fn gomodcache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let out = Command::new("go")
            .args(["env", "GOMODCACHE"])
            .output()
            .unwrap_or_else(|e| panic!("go env GOMODCACHE: {e}; {HOW}"));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// The extracted module `module@version` in the module cache (paths are case-encoded
/// there: an upper-case letter becomes `!` and the lower-case letter).
pub fn module_source(module: &str, version: &str) -> PathBuf {
    let mut encoded = String::new();
    for c in module.chars() {
        if c.is_ascii_uppercase() {
            encoded.push('!');
            encoded.push(c.to_ascii_lowercase());
        } else {
            encoded.push(c);
        }
    }
    let dir = gomodcache().join(format!("{encoded}@{version}"));
    assert!(
        dir.is_dir(),
        "{} is not in the module cache: {HOW}",
        dir.display()
    );
    dir
}

/// An upstream CRD manifest the tests install, from openshift/api as pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crd {
    ClusterImagePolicyV1,
    ImagePolicyV1,
    /// The last v1alpha1 rules openshift/api shipped (release-4.20's TechPreviewNoUpgrade
    /// manifest; the final v1alpha1 commit differs only by that feature-set annotation).
    ClusterImagePolicyV1alpha1,
    ImagePolicyV1alpha1,
    Image,
    ClusterVersion,
    FeatureGate,
    ImageDigestMirrorSet,
    ImageTagMirrorSet,
    ImageContentSourcePolicy,
    MachineConfig,
    MachineConfigPool,
}

/// The MachineConfig and MachineConfigPool types.
pub const MCO_CRDS: [Crd; 2] = [Crd::MachineConfig, Crd::MachineConfigPool];

/// Every type the product reads, policies at v1: an OpenShift 4.21 cluster.
pub const INPUTS_V1: [Crd; 10] = [
    Crd::ClusterImagePolicyV1,
    Crd::ImagePolicyV1,
    Crd::Image,
    Crd::ClusterVersion,
    Crd::FeatureGate,
    Crd::ImageDigestMirrorSet,
    Crd::ImageTagMirrorSet,
    Crd::ImageContentSourcePolicy,
    Crd::MachineConfig,
    Crd::MachineConfigPool,
];

impl Crd {
    pub const ALL: [Crd; 12] = [
        Crd::ClusterImagePolicyV1,
        Crd::ImagePolicyV1,
        Crd::ClusterImagePolicyV1alpha1,
        Crd::ImagePolicyV1alpha1,
        Crd::Image,
        Crd::ClusterVersion,
        Crd::FeatureGate,
        Crd::ImageDigestMirrorSet,
        Crd::ImageTagMirrorSet,
        Crd::ImageContentSourcePolicy,
        Crd::MachineConfig,
        Crd::MachineConfigPool,
    ];

    /// The pinned module directory and the manifest's path in openshift/api.
    fn location(self) -> (&'static str, String) {
        let config = "config/v1/zz_generated.crd-manifests/";
        let alpha = "config/v1alpha1/zz_generated.crd-manifests/";
        let mco = "machineconfiguration/v1/zz_generated.crd-manifests/";
        let (dir, file) = match self {
            Crd::ClusterImagePolicyV1 => ("openshift-api", "0000_10_config-operator_01_clusterimagepolicies.crd.yaml"),
            Crd::ImagePolicyV1 => ("openshift-api", "0000_10_config-operator_01_imagepolicies.crd.yaml"),
            Crd::ClusterImagePolicyV1alpha1 => (
                "openshift-api-4.20",
                "0000_10_config-operator_01_clusterimagepolicies-TechPreviewNoUpgrade.crd.yaml",
            ),
            Crd::ImagePolicyV1alpha1 => (
                "openshift-api-4.20",
                "0000_10_config-operator_01_imagepolicies-TechPreviewNoUpgrade.crd.yaml",
            ),
            Crd::Image => ("openshift-api", "0000_10_config-operator_01_images.crd.yaml"),
            Crd::ClusterVersion => (
                "openshift-api",
                "0000_00_cluster-version-operator_01_clusterversions-Default.crd.yaml",
            ),
            Crd::FeatureGate => ("openshift-api", "0000_10_config-operator_01_featuregates.crd.yaml"),
            Crd::ImageDigestMirrorSet => {
                ("openshift-api", "0000_10_config-operator_01_imagedigestmirrorsets.crd.yaml")
            }
            Crd::ImageTagMirrorSet => ("openshift-api", "0000_10_config-operator_01_imagetagmirrorsets.crd.yaml"),
            Crd::ImageContentSourcePolicy => (
                "openshift-api",
                "operator/v1alpha1/zz_generated.crd-manifests/0000_10_config-operator_01_imagecontentsourcepolicies.crd.yaml",
            ),
            Crd::MachineConfig => ("openshift-api", "0000_80_machine-config_01_machineconfigs.crd.yaml"),
            Crd::MachineConfigPool => (
                "openshift-api",
                "0000_80_machine-config_01_machineconfigpools-SelfManagedHA.crd.yaml",
            ),
        };
        let prefix = match self {
            Crd::ClusterImagePolicyV1alpha1 | Crd::ImagePolicyV1alpha1 => alpha,
            Crd::MachineConfig | Crd::MachineConfigPool => mco,
            Crd::ImageContentSourcePolicy => "",
            _ => config,
        };
        (dir, format!("{prefix}{file}"))
    }

    /// The manifest in the module cache.
    pub fn path(self) -> PathBuf {
        let (dir, file) = self.location();
        let api = module_source(
            "github.com/openshift/api",
            &pinned(dir, "github.com/openshift/api"),
        );
        api.join(file)
    }

    pub fn text(self) -> String {
        let path = self.path();
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// containers/image's `signature/fixtures`, from the module `civerify` is built on.
pub fn signature_fixtures() -> PathBuf {
    module_source(
        "go.podman.io/image/v5",
        &pinned("civerify", "go.podman.io/image/v5"),
    )
    .join("signature/fixtures")
}

/// The cache `scripts/upstream.sh` builds into.
pub fn tools_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("CIP_TOOLS_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    base.join("cip-webhook/tools")
}

/// The cache key of a tools module, as `scripts/upstream.sh` computes it: sha256 over the
/// `sha256sum` lines of its go.mod, go.sum and Go files (`./path`, byte order), 16 digits.
pub fn module_key(dir: &Path) -> String {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy();
            if name == "go.mod" || name == "go.sum" || name.ends_with(".go") {
                out.push(format!("./{}", path.strip_prefix(base).unwrap().display()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    let mut listing = String::new();
    for f in &files {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        listing.push_str(&format!("{}  {f}\n", hex(&bytes)));
    }
    hex(listing.as_bytes())[..16].to_string()
}

fn hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A binary built from a tools module: `module` is `kube` (kube-apiserver, etcd, kubectl)
/// or `civerify`.
pub fn tool(module: &str, binary: &str) -> PathBuf {
    let dir = tools_cache().join(format!("{module}-{}", module_key(&module_dir(module))));
    assert!(
        dir.join(".complete").is_file(),
        "{binary} is not built for tests/upstream/{module} as pinned ({}): {HOW}",
        dir.display()
    );
    dir.join(binary)
}

pub fn kube_apiserver() -> PathBuf {
    tool("kube", "kube-apiserver")
}

pub fn etcd() -> PathBuf {
    tool("kube", "etcd")
}

/// kubectl at the API server's version (the machine's own is older and warns of skew).
pub fn kubectl() -> PathBuf {
    tool("kube", "kubectl")
}

pub fn civerify() -> PathBuf {
    tool("civerify", "civerify")
}
