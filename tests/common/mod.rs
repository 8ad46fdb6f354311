//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cip_webhook::documents;
use cip_webhook::model::ClusterImagePolicy;
use cip_webhook::render::Inputs;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads every document of these files (relative to the crate root).
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

/// Every YAML file under a directory of the crate, recursively, in path order.
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

pub fn policies(paths: &[&str], names: &[&str]) -> Vec<std::sync::Arc<ClusterImagePolicy>> {
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

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cip-webhook"))
}

pub fn b64(s: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
}
