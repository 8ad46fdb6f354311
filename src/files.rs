//! Manifests on disk: the file edge shared by the CLI and `serve --state-dir`.
//!
//! A state directory is often a ConfigMap or Secret mount, or something an attacker on
//! the node can write to, so reading it is bounded: regular files only (a FIFO would
//! block the reader for ever), `..*` entries skipped (a ConfigMap mount's `..data` holds a
//! second copy of every key), each directory visited once (symlink loops), and limits on
//! depth, file count and file size. What is left out is named, never silently dropped.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cip_core::documents::{self, Document, LoadError, Loaded};

/// Directories below the top one followed at most.
pub const MAX_DEPTH: usize = 16;
/// Manifest files read at most.
pub const MAX_FILES: usize = 10_000;
/// Bytes per file at most (a MachineConfig with a few large files fits).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes, more than the {MAX_FILE_BYTES} a manifest may have")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{dir}: more than {MAX_FILES} manifest files")]
    TooManyFiles { dir: PathBuf },
    #[error(transparent)]
    Load(#[from] LoadError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The manifest files under a directory, and what was passed over and why.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    pub skipped: Vec<String>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Every `.yaml`/`.yml`/`.json` regular file under `dir`, recursively, in path order;
/// `skip` (an output directory inside the input, the files under check) is left out.
pub fn manifest_files(dir: &Path, skip: &[PathBuf]) -> Result<Listing, FilesError> {
    let skip: Vec<PathBuf> = skip.iter().filter_map(|p| p.canonicalize().ok()).collect();
    let mut listing = Listing::default();
    let mut visited = BTreeSet::new();
    walk(dir, 0, &skip, &mut visited, &mut listing)?;
    listing.files.sort();
    Ok(listing)
}

fn walk(
    dir: &Path,
    depth: usize,
    skip: &[PathBuf],
    visited: &mut BTreeSet<PathBuf>,
    out: &mut Listing,
) -> Result<(), FilesError> {
    let real = dir.canonicalize().map_err(io(dir))?;
    if !visited.insert(real) {
        out.skipped.push(format!(
            "{}: directory already read (a symlink loop?)",
            dir.display()
        ));
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io(dir)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".."));
        let real = path.canonicalize().ok();
        if hidden || real.as_ref().is_some_and(|r| skip.contains(r)) {
            continue;
        }
        // Follows symlinks: a ConfigMap key is a symlink to a regular file.
        let Ok(meta) = fs::metadata(&path) else {
            out.skipped.push(format!(
                "{}: dangling symlink or unreadable",
                path.display()
            ));
            continue;
        };
        if meta.is_dir() {
            if depth >= MAX_DEPTH {
                out.skipped.push(format!(
                    "{}: deeper than {MAX_DEPTH} directories",
                    path.display()
                ));
            } else {
                walk(&path, depth + 1, skip, visited, out)?;
            }
        } else if !is_manifest(&path) {
            continue;
        } else if !meta.is_file() {
            out.skipped
                .push(format!("{}: not a regular file", path.display()));
        } else if meta.len() > MAX_FILE_BYTES {
            return Err(FilesError::TooLarge {
                path,
                size: meta.len(),
            });
        } else if out.files.len() >= MAX_FILES {
            return Err(FilesError::TooManyFiles {
                dir: dir.to_path_buf(),
            });
        } else {
            out.files.push(path);
        }
    }
    Ok(())
}

/// One file's documents; bounded like the files of a directory.
pub fn read_file_documents(path: &Path) -> Result<Vec<Document>, FilesError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(FilesError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(FilesError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    Ok(documents::parse_documents(
        &path.display().to_string(),
        &text,
    )?)
}

pub fn load_dir(dir: &Path, skip: &[PathBuf]) -> Result<Loaded, FilesError> {
    let (docs, skipped) = dir_documents(dir, skip)?;
    let mut loaded = documents::load(&docs)?;
    loaded.skipped = skipped;
    Ok(loaded)
}

/// Every document of the manifest files under `dir`, and the files passed over.
pub fn dir_documents(
    dir: &Path,
    skip: &[PathBuf],
) -> Result<(Vec<documents::Document>, Vec<String>), FilesError> {
    let listing = manifest_files(dir, skip)?;
    let mut docs = Vec::new();
    for f in &listing.files {
        docs.extend(read_file_documents(f)?);
    }
    Ok((docs, listing.skipped))
}

/// Moves the staged files `writes` (in `stage`) to `output`, and the files `deletes` out
/// of it, all or nothing: every file replaced or deleted is first moved into
/// `stage/.previous`, and any failure moves each back. A target that is not a regular
/// file (a directory, a FIFO) is refused before anything moves. `rename` is the file
/// system's (a parameter so that a failure can be tested).
pub fn swap_in(
    output: &Path,
    stage: &Path,
    writes: &[String],
    deletes: &[String],
    mut rename: impl FnMut(&Path, &Path) -> std::io::Result<()>,
) -> Result<(), FilesError> {
    for name in writes.iter().chain(deletes) {
        let target = output.join(name);
        match fs::symlink_metadata(&target) {
            Ok(m) if !m.is_file() => {
                return Err(FilesError::Io {
                    path: target,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists and is not a regular file; nothing was written",
                    ),
                })
            }
            _ => {}
        }
    }
    let previous = stage.join(".previous");
    fs::create_dir_all(&previous).map_err(io(&previous))?;
    // (target, where its previous version went, whether a new one was moved in)
    let mut moved: Vec<(PathBuf, Option<PathBuf>, bool)> = Vec::new();
    let mut step = |name: &String, write: bool| -> std::io::Result<()> {
        let target = output.join(name);
        let backup = target.exists().then(|| previous.join(name));
        if let Some(b) = &backup {
            rename(&target, b)?;
        }
        moved.push((target.clone(), backup, false));
        if write {
            rename(&stage.join(name), &target)?;
            moved.last_mut().expect("just pushed").2 = true;
        }
        Ok(())
    };
    let result = writes
        .iter()
        .map(|n| (n, true))
        .chain(deletes.iter().map(|n| (n, false)))
        .try_for_each(|(name, write)| step(name, write));
    if let Err(e) = result {
        for (target, backup, written) in moved.iter().rev() {
            if *written {
                if let Some(name) = target.file_name() {
                    let _ = fs::rename(target, stage.join(name));
                }
            }
            if let Some(b) = backup {
                let _ = fs::rename(b, target);
            }
        }
        return Err(FilesError::Io {
            path: output.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

/// What identifies the directory's content cheaply: each file's path, size, mtime.
pub fn dir_stamp(dir: &Path) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>, FilesError> {
    manifest_files(dir, &[])?
        .files
        .into_iter()
        .map(|p| {
            let meta = fs::metadata(&p).map_err(io(&p))?;
            Ok((p, meta.len(), meta.modified().ok()))
        })
        .collect()
}

/// An error and its sources on one line, as anyhow's `{:#}` prints a chain.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_swap_puts_everything_back() {
        let dir = std::env::temp_dir().join(format!("cip-webhook-swap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (output, stage) = (dir.join("out"), dir.join("out/.stage"));
        fs::create_dir_all(&stage).unwrap();
        for n in ["a.yaml", "b.yaml", "c.yaml", "gone.yaml"] {
            fs::write(output.join(n), format!("old {n}")).unwrap();
        }
        for n in ["a.yaml", "b.yaml", "c.yaml", "new.yaml"] {
            fs::write(stage.join(n), format!("new {n}")).unwrap();
        }
        let writes: Vec<String> = ["a.yaml", "b.yaml", "c.yaml", "new.yaml"]
            .map(String::from)
            .into();
        let deletes = vec!["gone.yaml".to_string()];
        // The fifth rename fails: a and b are in, c's old version moved aside.
        let mut calls = 0;
        let failing = |from: &Path, to: &Path| {
            calls += 1;
            if calls == 5 {
                Err(std::io::Error::other("disk full"))
            } else {
                fs::rename(from, to)
            }
        };
        assert!(swap_in(&output, &stage, &writes, &deletes, failing).is_err());
        for n in ["a.yaml", "b.yaml", "c.yaml", "gone.yaml"] {
            assert_eq!(
                fs::read_to_string(output.join(n)).unwrap(),
                format!("old {n}")
            );
        }
        assert!(!output.join("new.yaml").exists());
        // Then all of it goes in.
        let stage_files: Vec<_> = fs::read_dir(&stage).unwrap().collect();
        assert!(!stage_files.is_empty());
        swap_in(&output, &stage, &writes, &deletes, |f, t| fs::rename(f, t)).unwrap();
        for n in ["a.yaml", "b.yaml", "c.yaml", "new.yaml"] {
            assert_eq!(
                fs::read_to_string(output.join(n)).unwrap(),
                format!("new {n}")
            );
        }
        assert!(!output.join("gone.yaml").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
