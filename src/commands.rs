//! The offline commands: read files, call the core, print, write. All I/O lives here.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use cip_core::documents::{self, Document, Loaded};
use cip_core::explain;
use cip_core::ignition::POLICY_JSON_PATH;
use cip_core::model::PolicyKind;
use cip_core::policy::Policy;
use cip_core::render::{self, Condition, Plan, RenderOptions};
use cip_webhook::files;
use cip_webhook::unix_now;
use cip_webhook::webhook::admission::{self, Endpoint};

fn read_file_documents(path: &Path) -> Result<Vec<Document>> {
    Ok(files::read_file_documents(path)?)
}

fn load_dir(dir: &Path, skip: &[PathBuf]) -> Result<Loaded> {
    Ok(files::load_dir(dir, skip)?)
}

/// Where `render` reads and what it writes.
pub struct RenderTargets<'a> {
    pub input: &'a Path,
    /// The MachineConfigs; none with only `--files` or `--diff`.
    pub output: Option<&'a Path>,
    /// The decoded node files, per pool.
    pub files: Option<&'a Path>,
    /// A unified diff of the node files, before and after.
    pub diff: bool,
}

pub fn render(targets: &RenderTargets, options: &RenderOptions, json: bool) -> Result<ExitCode> {
    let input = targets.input;
    let skip: Vec<PathBuf> = [targets.output, targets.files]
        .into_iter()
        .flatten()
        .map(Path::to_path_buf)
        .collect();
    let loaded = load_dir(input, &skip)?;
    let mut plan = render::plan(&loaded.inputs, options)?;
    if let Some(p) = plan.pools.iter().find(|p| p.error.is_some()) {
        bail!(
            "pool {}: {}",
            p.pool,
            p.error.as_deref().unwrap_or_default()
        );
    }
    if targets.files.is_some() || targets.diff {
        let pools = node_views(&loaded, &plan);
        if let Some(dir) = targets.files {
            write_node_files(dir, &pools)?;
        }
        if targets.diff {
            print(&node_diff(&pools))?;
        }
    }
    let Some(output) = targets.output else {
        return Ok(ExitCode::SUCCESS);
    };
    let files: Vec<String> = plan
        .desired_machine_configs()
        .map(|mc| format!("{}.yaml", mc.metadata.name))
        .collect();
    let report = if json {
        serde_json::to_string_pretty(&render_json(&plan, &loaded, output, &files))? + "\n"
    } else {
        render_text(&plan, &loaded, input, output, files.len())
    };
    // The MachineConfigs carry the rendered files from here on; the text can go.
    for pool in &mut plan.pools {
        pool.policy_json = None;
        pool.sigstore_yaml = None;
    }
    write_machine_configs(&mut plan, output)?;
    print(&report)?;
    Ok(ExitCode::SUCCESS)
}

/// A pool's node files (path → contents, decoded) before and after the plan is written.
struct NodeView {
    pool: String,
    before: std::collections::BTreeMap<String, String>,
    after: std::collections::BTreeMap<String, String>,
}

/// What each pool's nodes get, merged as the MCO merges its MachineConfigs: the built-in
/// pools and the custom ones in the input.
fn node_views(loaded: &Loaded, plan: &Plan) -> Vec<NodeView> {
    let after = render::machine_configs_after(&loaded.inputs, plan);
    let mut names: Vec<String> = plan.pools.iter().map(|p| p.pool.clone()).collect();
    names.extend(loaded.inputs.pools.iter().map(|p| p.metadata.name.clone()));
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let pool = render::find_pool(&loaded.inputs.pools, &name)?;
            Some(NodeView {
                before: node_files(&pool, &loaded.inputs.machine_configs),
                after: node_files(&pool, &after),
                pool: name,
            })
        })
        .collect()
}

/// The signature-policy files a pool's nodes get from these MachineConfigs.
fn node_files(
    pool: &cip_core::model::MachineConfigPool,
    mcs: &[cip_core::model::MachineConfig],
) -> std::collections::BTreeMap<String, String> {
    let mut paths: Vec<String> = vec![
        POLICY_JSON_PATH.to_string(),
        cip_core::ignition::SIGSTORE_YAML_PATH.to_string(),
    ];
    paths.extend(
        mcs.iter()
            .flat_map(|mc| mc.files())
            .map(|f| f.path.clone())
            .filter(|p| p.starts_with(cip_core::ignition::NAMESPACE_POLICY_DIR)),
    );
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| {
            let (_, text) = render::node_file(pool, mcs, &path)?;
            Some((
                path,
                text.unwrap_or_else(|e| format!("(does not decode: {e})\n")),
            ))
        })
        .collect()
}

/// `DIR/<pool>/<path>` for every node file after the plan.
fn write_node_files(dir: &Path, pools: &[NodeView]) -> Result<()> {
    for view in pools {
        for (path, text) in &view.after {
            let target = dir.join(&view.pool).join(path.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        }
    }
    Ok(())
}

/// A unified diff per pool and file of what the nodes would get; empty where nothing
/// changes.
fn node_diff(pools: &[NodeView]) -> String {
    let mut out = String::new();
    for view in pools {
        let paths: std::collections::BTreeSet<&String> =
            view.before.keys().chain(view.after.keys()).collect();
        for path in paths {
            let before = view.before.get(path).map_or("", String::as_str);
            let after = view.after.get(path).map_or("", String::as_str);
            if before == after {
                continue;
            }
            let diff = similar::TextDiff::from_lines(before, after);
            let old = format!("a/{}{path}", view.pool);
            let new = format!("b/{}{path}", view.pool);
            let _ = write!(
                out,
                "{}",
                diff.unified_diff().context_radius(3).header(&old, &new)
            );
        }
    }
    out
}

/// Writes every desired MachineConfig, all or nothing: each is serialized into a staging
/// directory first (and freed, since with thousands of scopes one can be tens of
/// megabytes), then swapped in with `files::swap_in`, which puts everything back if any
/// step fails. A policy.json requiring signatures without its sigstore attachments must
/// never be what a failed run leaves.
fn write_machine_configs(plan: &mut Plan, output: &Path) -> Result<()> {
    fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    let stage = output.join(format!(".cip-webhook-render-{}", std::process::id()));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let result = (|| -> Result<()> {
        let mut writes = Vec::new();
        let mut deletes = Vec::new();
        for change in plan.pools.iter_mut().flat_map(|p| &mut p.changes) {
            let name = format!("{}.yaml", change.name);
            let Some(mc) = change.desired.take() else {
                deletes.push(name);
                continue;
            };
            let staged = stage.join(&name);
            let text =
                cip_core::yaml::to_string(&mc).with_context(|| format!("encoding {name}"))?;
            fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
            writes.push(name);
        }
        files::swap_in(output, &stage, &writes, &deletes, |from, to| {
            fs::rename(from, to)
        })?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&stage);
    result
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    match out.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn condition_line(c: &Condition) -> String {
    match c {
        Condition::Applied { pools, warning } => match warning {
            None => format!("Applied    pools {}", pools.join(", ")),
            Some(w) => format!(
                "Applied    pools {}; every pull in its scopes will fail on the nodes: {w}",
                pools.join(", ")
            ),
        },
        Condition::Pending {
            reason,
            skipped,
            written,
            ..
        } if !skipped.is_empty() => format!(
            "Pending    {}: {} of {} scope(s) skipped",
            reason.as_str(),
            skipped.len(),
            skipped.len() + written.len()
        ),
        Condition::Pending {
            reason, message, ..
        } => format!("Pending    {}: not applied: {message}", reason.as_str()),
        Condition::Overridden {
            overridden, pools, ..
        } => format!(
            "Applied    pools {}; {} scope(s) governed by a ClusterImagePolicy",
            pools.join(", "),
            overridden.len()
        ),
    }
}

fn render_text(
    plan: &Plan,
    loaded: &Loaded,
    input: &Path,
    output: &Path,
    written: usize,
) -> String {
    let mut s = String::new();
    let i = &loaded.inputs;
    let _ = write!(
        s,
        "Read {}: {} ClusterImagePolicies, Image cluster: {}, ClusterVersion version: {}, {} pools, {} MachineConfigs",
        input.display(),
        i.policies.len() + loaded.undecodable.len(),
        if i.image.is_some() { "yes" } else { "no" },
        plan.facts.release_repo.as_deref().unwrap_or("none"),
        i.pools.len(),
        i.machine_configs.len()
    );
    if !i.image_policies.is_empty() {
        let _ = write!(s, ", {} ImagePolicies", i.image_policies.len());
    }
    let mirror_sets =
        i.digest_mirror_sets.len() + i.tag_mirror_sets.len() + i.content_source_policies.len();
    if mirror_sets > 0 {
        let _ = write!(
            s,
            ", {mirror_sets} mirror sets (IDMS {}, ITMS {}, ICSP {})",
            i.digest_mirror_sets.len(),
            i.tag_mirror_sets.len(),
            i.content_source_policies.len()
        );
    }
    s.push('\n');
    for p in &plan.pools {
        let _ = writeln!(s, "\npool {}", p.pool);
        for c in &p.changes {
            let _ = writeln!(s, "  {:<10} {}", c.action.as_str(), c.name);
        }
        if p.beside_mco {
            let _ = writeln!(
                s,
                "  policy.json in {}: {} is the MCO's, left alone",
                p.policy_json_machine_config,
                render::registries_mc_name(&p.pool)
            );
        }
        let origin = p.original_from.as_deref().unwrap_or("MCO template");
        let _ = writeln!(s, "  original policy.json from {origin}");
        if !p.namespace_policies.is_empty() {
            let names: Vec<&str> = p
                .namespace_policies
                .iter()
                .map(|(ns, _)| ns.as_str())
                .collect();
            let _ = writeln!(
                s,
                "  namespace policy files in {}: {}",
                p.policy_json_machine_config,
                names.join(", ")
            );
        }
    }
    let scopes = plan
        .pools
        .first()
        .map(|p| p.scopes.clone())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "\nscopes written ({}): {}",
        scopes.len(),
        scopes.join(", ")
    );
    for (ns, scopes) in &plan.namespace_scopes {
        let _ = writeln!(
            s,
            "namespace {ns} scopes written ({}): {}",
            scopes.len(),
            scopes.join(", ")
        );
    }
    if !plan.mirror_scopes.is_empty() {
        let _ = writeln!(
            s,
            "sigstore attachments also for the endpoints they are pulled from ({}): {}",
            plan.mirror_scopes.len(),
            plan.mirror_scopes.join(", ")
        );
    }
    let _ = writeln!(s, "\npolicies");
    let ips = plan.image_policies.iter().map(|o| {
        let ns = o.namespace.as_deref().unwrap_or_default();
        (format!("{ns}/{}", o.name), o)
    });
    for (name, o) in plan.policies.iter().map(|o| (o.name.clone(), o)).chain(ips) {
        let _ = writeln!(s, "  {name:<24} {}", condition_line(&o.condition));
        match &o.condition {
            Condition::Pending { skipped, .. } => {
                for sk in skipped {
                    let _ = writeln!(s, "  {:<24}   skipped {}: {}", "", sk.scope, sk.message);
                }
            }
            Condition::Overridden { message, .. } => {
                let _ = writeln!(s, "  {:<24}   {message}", "");
            }
            Condition::Applied { .. } => {}
        }
    }
    for (source, name, message) in &loaded.undecodable {
        let _ = writeln!(s, "  {name:<24} Pending    Invalid: {source}: {message}");
    }
    // A kind or apiVersion typo must not drop a policy without a word.
    let ignored = loaded
        .ignored
        .iter()
        .map(|i| format!("ignored {i}: not an input of render"));
    let skipped = loaded.skipped.iter().map(|s| format!("skipped {s}"));
    let notes: Vec<String> = plan
        .notes
        .iter()
        .cloned()
        .chain(ignored)
        .chain(skipped)
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\nnotes");
        for n in &notes {
            let _ = writeln!(s, "  - {n}");
        }
    }
    let _ = writeln!(
        s,
        "\nwrote {written} MachineConfigs to {}",
        output.display()
    );
    s
}

fn render_json(plan: &Plan, loaded: &Loaded, output: &Path, files: &[String]) -> serde_json::Value {
    json!({
        "pools": plan.pools,
        "policies": plan.policies,
        "imagePolicies": plan.image_policies,
        "namespaceScopes": plan.namespace_scopes,
        "mirrorScopes": plan.mirror_scopes,
        "undecodable": loaded.undecodable.iter().map(|(source, name, message)| json!({"source": source, "name": name, "message": message})).collect::<Vec<_>>(),
        "payloadRepositories": plan.facts.payload_repos,
        "notes": plan.notes,
        "ignored": loaded.ignored,
        "skipped": loaded.skipped,
        "output": output.display().to_string(),
        "files": files,
    })
}

/// What `check` is asked.
pub struct CheckOptions<'a> {
    /// The cluster the objects are checked against.
    pub state: Option<&'a Path>,
    /// Earlier versions of the objects under check: they are judged as updates of these.
    pub old: &'a [PathBuf],
    /// As the cluster-version operator: every denial is a warning.
    pub exempt: bool,
    /// Warnings fail the check too.
    pub strict: bool,
    /// A file with nothing to check is not an error.
    pub allow_empty: bool,
    /// Each object judged alone, not as one apply with the others before it.
    pub separately: bool,
}

/// One object checked, and the webhook's answer to it.
struct Checked {
    source: String,
    kind: String,
    name: String,
    operation: &'static str,
    answer: admission::Answer,
    /// The mutating webhook's patch, applied before validating.
    patch: Option<serde_json::Value>,
}

/// Asks the webhook's own decision (`admission::decide`) about each object, as an API
/// server would: the mutating webhook first, then the validating one; an update when an
/// earlier version is known (`--old`, or the object of that name in `--state`).
pub fn check(
    opts: &CheckOptions,
    files: &[PathBuf],
    options: &RenderOptions,
    json: bool,
) -> Result<ExitCode> {
    // The files under check are candidates, not part of the cluster, even when they lie
    // inside the state directory.
    let state = match opts.state {
        Some(dir) => load_dir(dir, files)?,
        None => Loaded::default(),
    };
    let input = gather(files);
    let mut old_docs = Vec::new();
    for f in opts.old {
        old_docs.extend(read_file_documents(f)?);
    }
    let mut snapshot = cluster_without(&state, &input.docs, options);
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for doc in &input.docs {
        match check_one(doc, opts, &state, &old_docs, &snapshot)? {
            Ok(checked) => {
                if !opts.separately && checked.answer.report.allowed() {
                    admitted(&mut snapshot, doc);
                }
                results.push(checked)
            }
            Err(why) => skipped.push(why),
        }
    }
    let text = if json {
        let mut items: Vec<_> = results.iter().map(check_json).collect();
        items.extend(
            input
                .errors
                .iter()
                .map(|(source, error)| json!({"source": source, "error": error})),
        );
        serde_json::to_string_pretty(&items)? + "\n"
    } else {
        let mut text: String = results.iter().map(check_text).collect();
        for (source, error) in &input.errors {
            let _ = writeln!(text, "{source}: error: {error}");
        }
        text
    };
    print(&text)?;
    if let Some((source, error)) = input.errors.first() {
        bail!(
            "{} input(s) not read, the first: {source}: {error}",
            input.errors.len()
        );
    }
    let nothing = results.is_empty() || !skipped.is_empty() || !input.empty.is_empty();
    if nothing && !opts.allow_empty {
        let mut why: Vec<String> = skipped;
        why.extend(input.empty.iter().map(|f| format!("{f}: no object in it")));
        if results.is_empty() && why.is_empty() {
            why.push("no ClusterImagePolicy, ImagePolicy or Image cluster in the files".into());
        }
        bail!(
            "nothing to check in: {} (--allow-empty accepts this)",
            why.join("; ")
        );
    }
    let denied = results.iter().any(|c| !c.answer.report.allowed());
    let warned = results.iter().any(|c| !c.answer.report.warnings.is_empty());
    Ok(if denied || (opts.strict && warned) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One apply: an admitted policy is in the cluster for the objects after it, its scopes
/// beside theirs and its bytes in the size budget, as the webhook would see them.
fn admitted(snapshot: &mut admission::Snapshot, doc: &Document) {
    let Some(kind) = documents::policy_kind_of(&doc.value) else {
        return;
    };
    let Ok(policy) =
        serde_json::from_value::<cip_core::model::ClusterImagePolicy>(doc.value.clone())
    else {
        return;
    };
    let key = policy.key();
    if snapshot.in_force.contains(&key) {
        return;
    }
    snapshot.size.current_bytes += snapshot.size.growth(&policy);
    snapshot.in_force.insert(key);
    let inputs = std::sync::Arc::make_mut(&mut snapshot.inputs);
    match kind {
        PolicyKind::Cluster => inputs.policies.push(std::sync::Arc::new(policy)),
        PolicyKind::Namespaced => inputs.image_policies.push(std::sync::Arc::new(policy)),
    }
}

/// What `check` was given to read: the documents, the sources with nothing in them, and
/// the sources that could not be read (each its own entry in the report, never hiding
/// the others' verdicts).
#[derive(Default)]
struct Input {
    docs: Vec<Document>,
    empty: Vec<String>,
    errors: Vec<(String, String)>,
}

/// `-` is standard input (kustomize output, a pipe); a directory is read recursively, as
/// `render` reads its input; anything else is a file.
fn gather(paths: &[PathBuf]) -> Input {
    let mut input = Input::default();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            let read = std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), files::MAX_FILE_BYTES + 1),
                &mut text,
            );
            let parsed = match read {
                Err(e) => Err(e.to_string()),
                Ok(n) if n as u64 > files::MAX_FILE_BYTES => Err(format!(
                    "more than the {} bytes a manifest may have",
                    files::MAX_FILE_BYTES
                )),
                Ok(_) => documents::parse_documents("-", &text).map_err(|e| e.to_string()),
            };
            input.add("-".into(), parsed);
        } else if path.is_dir() {
            match files::manifest_files(path, &[]) {
                Ok(listing) => {
                    for f in listing.files {
                        let read = read_file_documents(&f).map_err(|e| format!("{e:#}"));
                        input.add(f.display().to_string(), read);
                    }
                }
                Err(e) => input.add(path.display().to_string(), Err(e.to_string())),
            }
        } else {
            let read = read_file_documents(path).map_err(|e| format!("{e:#}"));
            input.add(path.display().to_string(), read);
        }
    }
    input
}

impl Input {
    fn add(&mut self, source: String, read: Result<Vec<Document>, String>) {
        match read {
            Ok(docs) if docs.is_empty() => self.empty.push(source),
            Ok(docs) => self.docs.extend(docs),
            Err(error) => {
                // The error names its file already; the entry names it once.
                let prefix = format!("{source}: ");
                let error = error.strip_prefix(&prefix).unwrap_or(&error).to_string();
                let error = error.strip_prefix("reading ").map_or(error.clone(), |e| {
                    e.strip_prefix(&prefix).unwrap_or(e).to_string()
                });
                self.errors.push((source, error));
            }
        }
    }
}

/// The cluster as the webhook would see it: the policies under check are the ones
/// being written, so they are left out of it.
fn cluster_without(
    state: &Loaded,
    docs: &[Document],
    options: &RenderOptions,
) -> admission::Snapshot {
    let mut context = state.inputs.clone();
    let checked: Vec<(PolicyKind, String)> = docs
        .iter()
        .filter_map(|d| {
            Some((
                documents::policy_kind_of(&d.value)?,
                documents::key_of(&d.value),
            ))
        })
        .collect();
    context
        .policies
        .retain(|p| !checked.contains(&(PolicyKind::Cluster, p.key())));
    context
        .image_policies
        .retain(|p| !checked.contains(&(PolicyKind::Namespaced, p.key())));
    let plan = render::plan(&context, options).ok();
    admission::Snapshot::from_plan(std::sync::Arc::new(context), plan.as_ref(), options)
}

/// The earlier version of an object: from `--old`, else the object of that name in
/// `--state` (the Image `cluster` always exists: without one there, an empty one).
fn old_of(
    state: &Loaded,
    old_docs: &[Document],
    kind: &str,
    key: &str,
) -> Option<serde_json::Value> {
    let given = old_docs
        .iter()
        .find(|d| documents::kind_of(&d.value).1 == kind && documents::key_of(&d.value) == key);
    if let Some(d) = given {
        return Some(d.value.clone());
    }
    match kind {
        "ClusterImagePolicy" => state
            .inputs
            .policies
            .iter()
            .find(|p| p.metadata.name == key)
            .and_then(|p| serde_json::to_value(p).ok()),
        "ImagePolicy" => state
            .inputs
            .image_policies
            .iter()
            .find(|p| p.key() == key)
            .and_then(|p| serde_json::to_value(p).ok()),
        "Image" => Some(
            state
                .inputs
                .image
                .as_ref()
                .and_then(|i| serde_json::to_value(i).ok())
                .unwrap_or_else(|| json!({"metadata": {"name": "cluster"}, "spec": {}})),
        ),
        _ => None,
    }
}

/// One document through the mutating then the validating webhook; Err(why) for a document
/// that is none of the kinds admission judges.
fn check_one(
    doc: &Document,
    opts: &CheckOptions,
    state: &Loaded,
    old_docs: &[Document],
    snapshot: &admission::Snapshot,
) -> Result<Result<Checked, String>> {
    let (api, kind) = documents::kind_of(&doc.value);
    let name = documents::name_of(&doc.value).to_string();
    let is_image = kind == "Image"
        && name == "cluster"
        && api.split('/').next() == Some(cip_core::model::CONFIG_GROUP);
    if documents::policy_kind_of(&doc.value).is_none() && !is_image {
        return Ok(Err(format!(
            "{}: {api} {kind} {name:?}: not a ClusterImagePolicy, an ImagePolicy or the Image cluster",
            doc.source
        )));
    }
    let old = old_of(state, old_docs, kind, &documents::key_of(&doc.value));
    let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
    let user = if opts.exempt {
        admission::DEFAULT_EXEMPT_USER
    } else {
        "cip-webhook-check"
    };
    let request = |object: &serde_json::Value| -> Result<admission::Request> {
        let (group, version) = api.split_once('/').unwrap_or(("", api));
        Ok(admission::Request {
            uid: "check".into(),
            kind: admission::GroupVersionKind {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
            },
            name: name.clone(),
            operation: operation.into(),
            user_info: admission::UserInfo {
                username: user.into(),
            },
            object: Some(serde_json::value::to_raw_value(object)?),
            old_object: old
                .as_ref()
                .map(serde_json::value::to_raw_value)
                .transpose()?,
            dry_run: Some(true),
        })
    };
    let config = admission::Config::default();
    let mut object = doc.value.clone();
    let mutated = admission::decide(&request(&object)?, Endpoint::Mutate, snapshot, &config);
    if let Some(patch) = &mutated.patch {
        let patch: json_patch::Patch = serde_json::from_value(patch.clone())?;
        json_patch::patch(&mut object, &patch)?;
    }
    let answer = admission::decide(&request(&object)?, Endpoint::Validate, snapshot, &config);
    Ok(Ok(Checked {
        source: doc.source.clone(),
        kind: kind.to_string(),
        name,
        operation,
        answer,
        patch: mutated.patch,
    }))
}

/// One problem per line where there are several; the webhook's own message (the API
/// server's `[e1, e2]`) is in the JSON output.
fn check_text(c: &Checked) -> String {
    let mut s = String::new();
    let head = format!("{} {} ({})", c.kind, c.name, c.source);
    let errors = c.answer.report.error_messages();
    match errors.as_slice() {
        [] => {
            let _ = writeln!(s, "{head}: allowed");
        }
        [one] => {
            let _ = writeln!(s, "{head}: denied: {one}");
        }
        many => {
            let _ = writeln!(s, "{head}: denied");
            for e in many {
                let _ = writeln!(s, "  {e}");
            }
        }
    }
    for w in c.answer.report.warning_messages() {
        let _ = writeln!(s, "  Warning: {w}");
    }
    s
}

fn check_json(c: &Checked) -> serde_json::Value {
    let r = &c.answer.report;
    json!({
        "source": c.source,
        "kind": c.kind,
        "name": c.name,
        "operation": c.operation,
        "allowed": r.allowed(),
        "message": r.denial_message(),
        "warnings": r.warning_messages(),
        "patch": c.patch,
        "problems": r,
    })
}

/// Where `explain` and `verify` read the cluster: manifests in a directory, or the cluster
/// itself (with the pods that run the image).
#[derive(Clone, Copy)]
pub enum ReadFrom<'a> {
    Dir(&'a Path),
    Cluster(&'a Path),
}

/// How long `--kubeconfig` waits for the first list of every watched type.
const CLUSTER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The inputs, where they came from (for messages), and with a cluster, where images run.
fn read_from(
    from: ReadFrom,
) -> Result<(
    cip_core::render::Inputs,
    String,
    Option<cip_core::running::Distinct>,
)> {
    match from {
        ReadFrom::Dir(dir) => Ok((load_dir(dir, &[])?.inputs, dir.display().to_string(), None)),
        ReadFrom::Cluster(kubeconfig) => {
            let (inputs, index) =
                cip_webhook::runtime::read_cluster(kubeconfig, CLUSTER_READ_TIMEOUT)
                    .map_err(anyhow::Error::msg)?;
            let distinct = index.distinct(&inputs.pools);
            Ok((inputs, "the cluster".to_string(), Some(distinct)))
        }
    }
}

type Runs = Vec<(
    cip_core::running::Placement,
    cip_core::running::Running,
    usize,
)>;

/// Where `image` runs on `pool` (in `namespace`, when given), most containers first.
fn runs_on(
    distinct: Option<&cip_core::running::Distinct>,
    image: &str,
    pool: &str,
    namespace: Option<&str>,
) -> Option<Runs> {
    let runs = distinct?.runs_of(image);
    Some(
        runs.into_iter()
            .filter(|(p, r, _)| {
                p.pool == pool && namespace.is_none_or(|ns| r.namespace.as_deref() == Some(ns))
            })
            .collect(),
    )
}

fn runs_json(runs: &Runs) -> serde_json::Value {
    runs.iter()
        .map(|(p, r, n)| {
            json!({"pool": p.pool, "arch": p.arch, "namespace": r.namespace, "digest": r.digest, "containers": n})
        })
        .collect()
}

fn runs_text(runs: &Runs, pool: &str) -> String {
    if runs.is_empty() {
        return format!("running:      in no pod on pool {pool}\n");
    }
    let mut s = String::new();
    for (p, r, n) in runs {
        let _ = writeln!(
            s,
            "running:      {n} container(s) in namespace {} on {} nodes, at {}",
            r.namespace.as_deref().unwrap_or("-"),
            p.arch,
            r.digest.as_deref().unwrap_or("no digest yet (by tag)")
        );
    }
    s
}

/// Which file and entry CRI-O uses for `image` on a node of `pool`; with a namespace, its
/// `/etc/crio/policies/<namespace>.json` where the namespace has one (CRI-O's
/// `signature_policy_dir`), else policy.json.
pub fn explain(
    from: ReadFrom,
    pool: &str,
    namespace: Option<&str>,
    image: &str,
    options: &RenderOptions,
    json: bool,
) -> Result<ExitCode> {
    let (inputs, input, distinct) = read_from(from)?;
    let runs = runs_on(distinct.as_ref(), image, pool, namespace);
    let plan = render::plan(&inputs, options)?;
    if let Some(p) = plan
        .pools
        .iter()
        .find(|p| p.pool == pool && p.error.is_some())
    {
        bail!("pool {pool}: {}", p.error.as_deref().unwrap_or_default());
    }
    // What the nodes of the pool get: every MachineConfig once the plan is written,
    // merged as the MCO merges them (custom pools take the worker role's first).
    let Some(pool_object) = render::find_pool(&inputs.pools, pool) else {
        let mut names: Vec<String> = plan.pools.iter().map(|p| p.pool.clone()).collect();
        names.extend(inputs.pools.iter().map(|p| p.metadata.name.clone()));
        names.sort();
        names.dedup();
        bail!(
            "no pool {pool:?} in {input}: pools are {}",
            names.join(", ")
        );
    };
    let after = render::machine_configs_after(&inputs, &plan);
    let (path, source, text) =
        render::node_policy_file(&pool_object, &after, namespace).map_err(anyhow::Error::msg)?;
    let in_namespace_file = path != POLICY_JSON_PATH;
    let policy = Policy::parse(&text).map_err(anyhow::Error::msg)?;
    let e = explain::explain(&policy, image).map_err(anyhow::Error::msg)?;
    let mut from = explain::policies_behind(
        &plan,
        &inputs,
        e.matched.as_deref(),
        namespace,
        in_namespace_file,
    );
    let note = (from.len() > 1).then(|| {
        format!(
            "{} policies share this scope, and the nodes require every requirement of the entry: an image needs a signature that each of them accepts (for a key rotation, sign with both keys while both policies exist)",
            from.len()
        )
    });
    from.extend(explain::registry_list_origin(
        &plan.facts,
        e.matched.as_deref(),
        &e.requirements,
    ));
    let text = if json {
        serde_json::to_string_pretty(
            &json!({"pool": pool, "namespace": namespace, "policyFile": path, "policyFileFrom": source, "policyJsonFrom": source, "explanation": e, "from": from, "note": note, "running": runs.as_ref().map(runs_json)}),
        )? + "\n"
    } else {
        let mut s = String::new();
        match namespace {
            Some(ns) => {
                let _ = writeln!(
                    s,
                    "image:        {} (pool {pool}, namespace {ns})",
                    e.identity
                );
                if in_namespace_file {
                    let _ = writeln!(s, "policy file:  {path} from {source}");
                } else {
                    let _ = writeln!(
                        s,
                        "policy file:  {path} from {source} (namespace {ns} has no policy file of its own)"
                    );
                }
            }
            None => {
                let _ = writeln!(s, "image:        {} (pool {pool})", e.identity);
                let _ = writeln!(s, "policy.json:  from {source}");
            }
        }
        let _ = writeln!(s, "looked up:    {}", e.candidates.join(", "));
        let matched = match &e.matched {
            Some(m) if m.is_empty() => "the docker transport's default entry \"\"".to_string(),
            Some(m) => m.clone(),
            None => "no scope: the global default applies".to_string(),
        };
        let _ = writeln!(s, "matched:      {matched}");
        for f in &from {
            let _ = writeln!(s, "from:         {f}");
        }
        if let Some(note) = &note {
            let _ = writeln!(s, "note:         {note}");
        }
        let _ = writeln!(s, "requirements (all must pass):");
        for line in cip_core::gojson::marshal_indent(&e.requirements).lines() {
            let _ = writeln!(s, "  {line}");
        }
        if let Some(runs) = &runs {
            s.push_str(&runs_text(runs, pool));
        }
        s
    };
    print(&text)?;
    Ok(ExitCode::SUCCESS)
}

pub struct VerifyArgs<'a> {
    pub from: ReadFrom<'a>,
    pub pool: &'a str,
    pub namespace: Option<&'a str>,
    pub arch: &'a str,
    pub authfile: Option<&'a Path>,
    pub openshift_version: Option<&'a str>,
    pub image: &'a str,
}

/// `verify`: renders the input, then fetches and judges on a small runtime of its own.
pub fn verify(args: &VerifyArgs, options: &RenderOptions, json: bool) -> Result<ExitCode> {
    let (inputs, _, distinct) = read_from(args.from)?;
    let runs = runs_on(distinct.as_ref(), args.image, args.pool, args.namespace);
    let plan = render::plan(&inputs, options)?;
    let node =
        cip_webhook::pull::verify::node_view(&inputs, &plan, args.pool, args.namespace, unix_now())
            .map_err(anyhow::Error::msg)?;
    let authfile = match args.authfile {
        Some(path) => {
            Some(fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let client =
        cip_webhook::pull::registry::Client::new(plan.facts.insecure.clone(), authfile.as_deref())
            .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let memo = cip_sigstore::judge::Memo::default();
    // Where it runs, the digest most containers run is judged, on their architecture (as
    // the RunningImagesAccepted condition judges it); elsewhere what the tag names now.
    let running = runs
        .as_ref()
        .and_then(|r| r.first())
        .filter(|(_, r, _)| r.digest.is_some());
    let (pinned, arch) = match running {
        Some((p, r, _)) => (r.digest.as_deref(), p.arch.as_str()),
        None => (None, args.arch),
    };
    let mut outcome = runtime
        .block_on(cip_webhook::pull::verify::verify_pinned(
            &node, args.image, pinned, arch, &client, &memo,
        ))
        .map_err(anyhow::Error::msg)?;
    let openshift = args.openshift_version.map(str::to_string).or_else(|| {
        let cv = inputs.cluster_version.as_ref()?;
        cv.current_version().map(str::to_string)
    });
    if let Some(version) = openshift {
        outcome.version_notes(&node, &version);
    }
    let text = if json {
        let mut value = serde_json::to_value(&outcome)?;
        value["pool"] = json!(args.pool);
        value["namespace"] = json!(args.namespace);
        value["registryRequests"] = json!(client.requests());
        value["running"] = json!(runs.as_ref().map(runs_json));
        serde_json::to_string_pretty(&value)? + "\n"
    } else {
        let mut text = cip_webhook::pull::verify::text(&outcome, args.pool, args.namespace);
        if let Some(runs) = &runs {
            text.push_str(&runs_text(runs, args.pool));
        }
        text
    };
    print(&text)?;
    Ok(ExitCode::from(outcome.exit_code()))
}

pub struct PreviewArgs<'a> {
    pub input: &'a Path,
    pub images: Option<&'a Path>,
    pub pods: Option<&'a Path>,
    pub proposed: &'a [PathBuf],
    pub pool: &'a str,
    pub arch: &'a str,
    pub authfile: Option<&'a Path>,
    pub attachments: Option<&'a Path>,
}

/// One state of the cluster: its inputs, plan and each namespace's node view.
struct State {
    inputs: cip_core::inputs::Inputs,
    plan: Plan,
    views: cip_webhook::pull::preview::Views,
}

fn preview_state(
    docs: &[Document],
    running: &[cip_webhook::pull::preview::Running],
    pool: &str,
    options: &RenderOptions,
) -> Result<State> {
    let loaded = documents::load(docs)?;
    let plan = render::plan(&loaded.inputs, options)?;
    let namespaces: Vec<Option<String>> = running.iter().map(|r| r.namespace.clone()).collect();
    let views =
        cip_webhook::pull::preview::views(&loaded.inputs, &plan, pool, &namespaces, unix_now())
            .map_err(anyhow::Error::msg)?;
    Ok(State {
        inputs: loaded.inputs,
        plan,
        views,
    })
}

/// The input's documents with the proposed files applied: an object of the same kind and
/// name is replaced, a new one added.
fn proposed_documents(input: Vec<Document>, proposed: &[PathBuf]) -> Result<Vec<Document>> {
    let mut added = Vec::new();
    for path in proposed {
        added.extend(read_file_documents(path)?);
    }
    let id = |d: &Document| {
        (
            documents::kind_of(&d.value).1.to_string(),
            documents::key_of(&d.value),
        )
    };
    let replaced: std::collections::BTreeSet<_> = added.iter().map(id).collect();
    Ok(input
        .into_iter()
        .filter(|d| !replaced.contains(&id(d)))
        .chain(added)
        .collect())
}

/// `preview`: the running images judged under the input, and under the proposal.
pub fn preview(args: &PreviewArgs, options: &RenderOptions, json: bool) -> Result<ExitCode> {
    use cip_webhook::pull::preview::{self as p, Cached, ImageReport};
    let running = match (args.images, args.pods) {
        (Some(path), None) => p::parse_image_list(
            &fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, Some(path)) => p::parse_pods(
            &fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        _ => bail!("give one of --images FILE and --pods FILE"),
    }
    .map_err(anyhow::Error::msg)?;
    let (docs, _) = files::dir_documents(args.input, &[])?;
    let current = preview_state(&docs, &running, args.pool, options)?;
    let after = if args.proposed.is_empty() {
        None
    } else {
        let merged = proposed_documents(docs, args.proposed)?;
        Some(preview_state(&merged, &running, args.pool, options)?)
    };
    let authfile = match args.authfile {
        Some(path) => {
            Some(fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let mut insecure = current.plan.facts.insecure.clone();
    if let Some(a) = &after {
        insecure.extend(a.plan.facts.insecure.iter().cloned());
    }
    let client = cip_webhook::pull::registry::Client::new(insecure, authfile.as_deref())
        .map_err(anyhow::Error::msg)?;
    let cache = Cached::new(Some(client));
    if let Some(path) = args.attachments.filter(|p| p.exists()) {
        cache
            .load(&fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
            .map_err(anyhow::Error::msg)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let memo = cip_sigstore::judge::Memo::default();
    let (before, proposed) = runtime.block_on(async {
        let before = p::judge_all(&running, &current.views, args.arch, &cache, &memo).await;
        let proposed = match &after {
            Some(a) => Some(p::judge_all(&running, &a.views, args.arch, &cache, &memo).await),
            None => None,
        };
        (before, proposed)
    });
    if let Some(path) = args.attachments {
        fs::write(path, cache.save()).with_context(|| format!("writing {}", path.display()))?;
    }
    let state = after.as_ref().unwrap_or(&current);
    let mut proposed = proposed.map(Vec::into_iter);
    let reports: Vec<ImageReport> = running
        .iter()
        .zip(before)
        .map(|(r, current)| {
            let proposed = proposed.as_mut().and_then(Iterator::next);
            let o = proposed.as_ref().unwrap_or(&current);
            let policies = explain::policies_behind(
                &state.plan,
                &state.inputs,
                o.entry.as_deref(),
                r.namespace.as_deref(),
                o.policy_file != POLICY_JSON_PATH,
            );
            ImageReport {
                running: r.clone(),
                current,
                proposed,
                policies,
            }
        })
        .collect();
    let tallies = p::tally(&reports, unix_now());
    let requests = cache.inner().map_or(0, |c| c.requests());
    let code = p::exit_code(&reports);
    let text = if json {
        serde_json::to_string_pretty(&json!({
            "pool": args.pool, "images": reports, "policies": tallies,
            "registryRequests": requests, "exitCode": code,
        }))? + "\n"
    } else {
        p::text(&reports, &tallies, requests)
    };
    print(&text)?;
    Ok(ExitCode::from(code))
}

pub fn certs(out: &Path, dns: &[String], days: i64, json: bool) -> Result<ExitCode> {
    let generated = cip_webhook::webhook::tls::generate(dns, days)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, text) in [
        ("ca.crt", &generated.ca_cert),
        ("tls.crt", &generated.cert),
        ("tls.key", &generated.key),
    ] {
        let path = out.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(out.join("tls.key"), fs::Permissions::from_mode(0o600))?;
    }
    let ca_bundle = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &generated.ca_cert,
    );
    if json {
        let files: Vec<String> = ["ca.crt", "tls.crt", "tls.key"]
            .iter()
            .map(|f| out.join(f).display().to_string())
            .collect();
        print(
            &(serde_json::to_string_pretty(&json!({"files": files, "caBundle": ca_bundle}))?
                + "\n"),
        )?;
    } else {
        eprintln!(
            "wrote ca.crt, tls.crt and tls.key to {}; caBundle:",
            out.display()
        );
        println!("{ca_bundle}");
    }
    Ok(ExitCode::SUCCESS)
}
