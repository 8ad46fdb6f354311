//! The repository, the binary under test, and files of the tests' own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cip_core::documents;
use cip_core::model::ClusterImagePolicy;
use cip_core::render::Inputs;

/// The repository's root.
pub fn root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// The `cip-webhook` binary cargo built in `target/<profile>/`, or `$CIP_WEBHOOK_BIN`.
pub fn bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CIP_WEBHOOK_BIN") {
        return PathBuf::from(path);
    }
    // A test binary runs from target/<profile>/deps, a binary of ours from target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let candidates = [exe.parent(), exe.parent().and_then(Path::parent)];
    let found = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("cip-webhook"))
        .find(|b| b.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "cip-webhook is not built beside {} (cargo builds it for the package's tests)",
            exe.display()
        )
    })
}

/// `cip-webhook ARGS...` in the background, logging at info into `log`; killed when the
/// handle is dropped.
pub fn spawn_logged(args: &[std::ffi::OsString], log: &Path) -> tokio::process::Child {
    tokio::process::Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGTERM to a child of ours.
pub fn sigterm(pid: u32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { kill(pid as i32, 15) };
}

/// Loads every document of these files (relative to the repository root).
pub fn load(paths: &[&str]) -> Inputs {
    let mut docs = Vec::new();
    for p in paths {
        let path = root().join(p);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        docs.extend(documents::parse_documents(p, &text).unwrap());
    }
    let loaded = documents::load(&docs).unwrap();
    assert!(loaded.undecodable.is_empty(), "{:?}", loaded.undecodable);
    loaded.inputs
}

/// Every YAML file under a directory of the repository, recursively, in path order.
pub fn yaml_files(dir: &str) -> Vec<String> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out.iter()
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect()
}

pub fn policies(paths: &[&str], names: &[&str]) -> Vec<Arc<ClusterImagePolicy>> {
    let all = load(paths).policies;
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|p| p.metadata.name == *n)
                .unwrap_or_else(|| panic!("no policy {n}"))
                .clone()
        })
        .collect()
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it instead.
pub fn assert_golden(path: &str, actual: &str) {
    let path = root().join(path);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if expected != actual {
        panic!(
            "{} differs from the golden file\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

pub fn b64(s: impl AsRef<[u8]>) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
}

/// The test signing key's public half (tests/fixtures/keys/cosign.pub).
pub fn cosign_pub() -> String {
    std::fs::read_to_string(root().join("tests/fixtures/keys/cosign.pub")).unwrap()
}
