//! Manifests on disk: the file edge shared by the CLI and `serve --state-dir`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::documents::{self, Document, LoadError, Loaded};

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every `.yaml`/`.yml`/`.json` file under `dir`, recursively, in path order;
/// `skip` (e.g. an output directory inside the input) is left out.
pub fn manifest_files(dir: &Path, skip: Option<&Path>) -> Result<Vec<PathBuf>, FilesError> {
    fn walk(dir: &Path, skip: Option<&Path>, out: &mut Vec<PathBuf>) -> Result<(), FilesError> {
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if skip.is_some_and(|s| same_path(s, &path)) {
                continue;
            }
            if path.is_dir() {
                walk(&path, skip, out)?;
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, skip, &mut files)?;
    files.sort();
    Ok(files)
}

fn same_path(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

pub fn read_file_documents(path: &Path) -> Result<Vec<Document>, FilesError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    Ok(documents::parse_documents(
        &path.display().to_string(),
        &text,
    )?)
}

pub fn load_dir(dir: &Path, skip: Option<&Path>) -> Result<Loaded, FilesError> {
    let mut docs = Vec::new();
    for f in manifest_files(dir, skip)? {
        docs.extend(read_file_documents(&f)?);
    }
    Ok(documents::load(&docs)?)
}

/// What identifies the directory's content cheaply: each file's path, size, mtime.
pub fn dir_stamp(dir: &Path) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>, FilesError> {
    manifest_files(dir, None)?
        .into_iter()
        .map(|p| {
            let meta = fs::metadata(&p).map_err(io(&p))?;
            Ok((p, meta.len(), meta.modified().ok()))
        })
        .collect()
}
