//! The `--state-dir` source: the cluster state read from manifests in a directory (a
//! ConfigMap, say) instead of watches, re-read when a file changes, into the process
//! state admission answers from.

use std::path::PathBuf;

use cip_core::documents::Loaded;
use cip_core::render::{self, RenderOptions};

use crate::files::{self, chain};

/// Reloads the cluster state whenever a manifest under `dir` changes, reading and
/// parsing on a blocking thread so that no request waits for it. A state that cannot be
/// right is refused and the last good one keeps serving, with /readyz and the log saying
/// why: it fails neither open (a duplicate that turns off the size check, an Image the MCO
/// would refuse, a directory emptied by an unmounted ConfigMap) nor silently.
pub async fn watch(
    app: std::sync::Arc<crate::state::ProcessState>,
    dir: PathBuf,
    render: RenderOptions,
) {
    type Stamp = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;
    let mut last: Option<Stamp> = None;
    let mut good: Option<String> = None;
    // The last walk error logged, so that one that lasts is logged once.
    let mut failed: Option<String> = None;
    loop {
        let (d, options, previous) = (dir.clone(), render.clone(), last.clone());
        let had_objects = good.is_some();
        let attempt = tokio::task::spawn_blocking(move || {
            let stamp = files::dir_stamp(&d).map_err(|e| format!("{e:#}"))?;
            if previous.as_ref() == Some(&stamp) {
                return Ok(None);
            }
            let loaded = files::load_dir(&d, &[]).map_err(|e| chain(&e));
            for entry in loaded.iter().flat_map(|l| &l.skipped) {
                tracing::warn!(dir = %d.display(), %entry, "state directory entry skipped");
            }
            let checked = loaded.and_then(|loaded| state_snapshot(loaded, &options, had_objects));
            Ok(Some((stamp, checked)))
        })
        .await
        .unwrap_or_else(|e| Err(format!("reading the state panicked: {e}")));
        match attempt {
            Ok(None) => failed = None,
            Ok(Some((stamp, Ok(snapshot)))) => {
                failed = None;
                let mut status = format!(
                    "state from {}: {} ClusterImagePolicies",
                    dir.display(),
                    snapshot.inputs.policies.len()
                );
                if let Some(missing) = snapshot.inputs.missing_cluster_version() {
                    status.push_str(&format!("; {missing}"));
                }
                tracing::info!("{status}");
                app.set_snapshot(std::sync::Arc::new(snapshot), status.clone());
                good = Some(status);
                last = Some(stamp);
            }
            Ok(Some((stamp, Err(why)))) => {
                failed = None;
                tracing::warn!(dir = %dir.display(), error = %why, "cluster state refused; the previous one serves");
                app.set_status(match &good {
                    Some(previous) => {
                        format!("{previous}, kept: the last reload was refused: {why}")
                    }
                    None => format!("state from {} refused: {why}", dir.display()),
                });
                last = Some(stamp);
            }
            Err(why) => {
                if failed.as_ref() != Some(&why) {
                    tracing::warn!(dir = %dir.display(), error = %why, "state directory not readable; the previous state serves");
                }
                app.set_status(format!("reading {}: {why}", dir.display()));
                failed = Some(why);
                last = None;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// The admission snapshot of a state directory, rendered once, or why it cannot be the
/// cluster: what `render` and `check` refuse, a policy left out because it does not decode,
/// or nothing at all where there was a state.
fn state_snapshot(
    loaded: Loaded,
    options: &RenderOptions,
    had_objects: bool,
) -> Result<cip_core::snapshot::Snapshot, String> {
    if let Some((source, name, e)) = loaded.undecodable.first() {
        return Err(format!("{source}: policy {name:?} does not decode: {e}"));
    }
    let plan = render::plan(&loaded.inputs, options).map_err(|e| e.to_string())?;
    let i = &loaded.inputs;
    let empty = i.policies.is_empty()
        && i.image_policies.is_empty()
        && i.digest_mirror_sets.is_empty()
        && i.tag_mirror_sets.is_empty()
        && i.content_source_policies.is_empty()
        && i.image.is_none()
        && i.cluster_version.is_none()
        && i.pools.is_empty()
        && i.machine_configs.is_empty();
    if empty && had_objects {
        return Err("no object left in the directory".to_string());
    }
    let inputs = std::sync::Arc::new(loaded.inputs);
    Ok(cip_core::snapshot::Snapshot::from_plan(
        inputs,
        Some(&plan),
        options,
    ))
}
