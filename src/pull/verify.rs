//! `verify`: one image decided as CRI-O on a pool would decide its pull, from the rendered
//! node files — the policy.json entry `explain` finds, the pull sources of the registries.conf
//! the MCO writes (mirrors in order, then the source; the first that serves the manifest is
//! where signatures are read), the instance for the node's architecture, the sigstore
//! attachment when the rendered registries.d turns attachments on, and the requirements
//! judged by `cip_sigstore`. Fetching goes through [`Source`]; a registry error is
//! `Unknown`, never a refusal.

use std::collections::BTreeSet;

use serde::Serialize;

use cip_core::explain;
use cip_core::ignition::SIGSTORE_YAML_PATH;
use cip_core::policy::{Policy, Requirement};
use cip_core::registries_conf::{Reference, RegistriesConf};
use cip_core::render::{self, Inputs, Plan};
use cip_sigstore::judge::{self, EntryVerdict, Layer, Memo, Pull, Verdict};

use crate::pull::registry::{FetchError, Source, MAX_SIGNATURE};

/// What the nodes of one pool hold, as far as a pull's verdict goes.
pub struct NodeView {
    pub policy: Policy,
    /// The policy file read: policy.json, or the namespace's file where CRI-O has one.
    pub policy_file: String,
    /// registries.d scopes with `use-sigstore-attachments: true`.
    pub attachments: BTreeSet<String>,
    pub registries: RegistriesConf,
    /// The node's clock (Unix seconds), for PKI chains.
    pub now: i64,
}

/// The pool's files once the plan is written, merged as the MCO merges MachineConfigs.
pub fn node_view(
    inputs: &Inputs,
    plan: &Plan,
    pool: &str,
    namespace: Option<&str>,
    now: i64,
) -> Result<NodeView, String> {
    if let Some(error) = plan
        .pools
        .iter()
        .find(|p| p.pool == pool)
        .and_then(|p| p.error.as_ref())
    {
        return Err(format!("pool {pool}: {error}"));
    }
    let pool_object = render::find_pool(&inputs.pools, pool)
        .ok_or_else(|| format!("no pool {pool:?} in the input"))?;
    let after = render::machine_configs_after(inputs, plan);
    let (policy_file, _, text) = render::node_policy_file(&pool_object, &after, namespace)?;
    let policy = Policy::parse(&text).map_err(|e| format!("{policy_file}: {e}"))?;
    let attachments = match render::node_file(&pool_object, &after, SIGSTORE_YAML_PATH) {
        Some((_, text)) => cip_core::registries_d::scopes(&text?),
        None => BTreeSet::new(),
    };
    let registries = RegistriesConf::generate(
        &plan.facts.insecure,
        &plan.facts.registries_blocked,
        inputs.mirrors(),
    )
    .map_err(|e| format!("registries.conf: {e}"))?;
    Ok(NodeView {
        policy,
        policy_file,
        attachments,
        registries,
        now,
    })
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerOutcome {
    pub digest: String,
    pub verdict: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub image: String,
    pub verdict: String,
    pub reason: String,
    /// The policy.json entry: a scope, `""` for the docker default, `None` for the default.
    pub entry: Option<String>,
    pub policy_file: String,
    pub requirements: Vec<String>,
    pub no_signature_required: bool,
    /// The physical reference the manifest and signatures were read from.
    pub source: Option<String>,
    /// Each pull source tried before it, with why it was passed over.
    pub skipped_sources: Vec<String>,
    pub instance: Option<String>,
    pub attachments: bool,
    pub layers: Vec<LayerOutcome>,
    /// For a PKI acceptance: when the certificate chain stops verifying (Unix seconds);
    /// the nodes refuse the image from then on, without any change to the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_until: Option<i64>,
    /// What the entry needs from containers/image that the nodes' release lacks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Outcome {
    fn new(image: &str, policy_file: &str) -> Outcome {
        Outcome {
            image: image.to_string(),
            verdict: String::new(),
            reason: String::new(),
            entry: None,
            policy_file: policy_file.to_string(),
            requirements: Vec::new(),
            no_signature_required: false,
            source: None,
            skipped_sources: Vec::new(),
            instance: None,
            attachments: false,
            layers: Vec::new(),
            accepted_until: None,
            notes: Vec::new(),
        }
    }

    /// Notes on the entry for nodes of this OpenShift release.
    pub fn version_notes(&mut self, node: &NodeView, openshift: &str) {
        if let Ok(e) = explain::explain(&node.policy, &self.image) {
            self.notes = cip_sigstore::versions::notes(&e.requirements, openshift)
                .into_iter()
                .map(|n| format!("on OpenShift {openshift}: {n}"))
                .collect();
        }
    }

    /// An image reference that cannot be judged at all.
    pub fn unusable(image: &str, policy_file: &str, why: String) -> Outcome {
        Outcome::new(image, policy_file).unknown(why)
    }

    fn decided(mut self, verdict: &Verdict) -> Outcome {
        self.verdict = verdict.word().to_string();
        self.reason = verdict.reason().to_string();
        self
    }

    fn unknown(self, why: String) -> Outcome {
        self.decided(&Verdict::Unknown(why))
    }

    pub fn exit_code(&self) -> u8 {
        match self.verdict.as_str() {
            "accepted" => 0,
            "refused" => 1,
            _ => 3,
        }
    }
}

/// Decides `image` (as written in a pod) for a node of `arch`.
pub async fn verify<S: Source>(
    node: &NodeView,
    image: &str,
    arch: &str,
    source: &S,
    memo: &Memo,
) -> Result<Outcome, String> {
    verify_pinned(node, image, None, arch, source, memo).await
}

/// As [`verify`], reading the manifest the node runs (`pinned`: a container status's
/// `imageID` digest) rather than what the tag names now.
pub async fn verify_pinned<S: Source>(
    node: &NodeView,
    image: &str,
    pinned: Option<&str>,
    arch: &str,
    source: &S,
    memo: &Memo,
) -> Result<Outcome, String> {
    let parsed = Parsed {
        image,
        intended: &cip_sigstore::identity::pulled_reference(image)?,
        lookup: &explain::lookup_candidates(image)?,
    };
    Ok(verify_parsed(node, &parsed, pinned, arch, source, memo).await)
}

/// An image as written, with what [`verify_pinned`] parses from it: its pulled reference
/// and its policy.json lookup candidates ([`explain::lookup_candidates`]). A caller that
/// judges the same image under many views parses it once.
pub struct Parsed<'a> {
    pub image: &'a str,
    pub intended: &'a Reference,
    pub lookup: &'a [String],
}

/// [`verify_pinned`] for an image already parsed.
pub async fn verify_parsed<S: Source>(
    node: &NodeView,
    image: &Parsed<'_>,
    pinned: Option<&str>,
    arch: &str,
    source: &S,
    memo: &Memo,
) -> Outcome {
    let (matched, requirements) = explain::lookup(&node.policy, image.lookup);
    let mut out = Outcome::new(image.image, &node.policy_file);
    out.entry = matched.cloned();
    out.requirements = requirements.iter().map(requirement_type).collect();
    if !judge::needs_signatures(requirements) {
        let pull = Pull {
            intended: image.intended,
            manifest: &[],
            layers: &[],
            now: node.now,
        };
        let verdict = judge::judge(requirements, &pull, memo);
        out.no_signature_required = verdict.no_signature_required;
        return out.decided(&verdict.verdict);
    }
    let fetched = match fetch(node, image.intended, pinned, arch, source, &mut out).await {
        Ok(f) => f,
        Err(why) => return out.unknown(why),
    };
    let pull = Pull {
        intended: image.intended,
        manifest: &fetched.manifest,
        layers: &fetched.layers,
        now: node.now,
    };
    let verdict = judge::judge(requirements, &pull, memo);
    out.layers = layer_outcomes(&verdict);
    out.accepted_until = verdict.accepted_until;
    out.decided(&verdict.verdict)
}

fn requirement_type(r: &Requirement) -> String {
    match r {
        Requirement::InsecureAcceptAnything => "insecureAcceptAnything",
        Requirement::Reject => "reject",
        Requirement::SignedBy(_) => "signedBy",
        Requirement::SigstoreSigned(_) => "sigstoreSigned",
    }
    .to_string()
}

/// Each layer's verdict under the entry: the first requirement that judged it refused or
/// unknown, else accepted.
fn layer_outcomes(verdict: &EntryVerdict) -> Vec<LayerOutcome> {
    let mut out: Vec<LayerOutcome> = Vec::new();
    for requirement in &verdict.requirements {
        for layer in &requirement.layers {
            let (word, reason) = match &layer.verdict {
                None => (
                    "skipped".to_string(),
                    "not a signature (another kind of attachment)".to_string(),
                ),
                Some(v) => (v.word().to_string(), v.reason().to_string()),
            };
            match out.iter_mut().find(|l| l.digest == layer.digest) {
                Some(existing) if existing.verdict == "accepted" && word != "accepted" => {
                    existing.verdict = word;
                    existing.reason = reason;
                }
                Some(_) => {}
                None => out.push(LayerOutcome {
                    digest: layer.digest.clone(),
                    verdict: word,
                    reason,
                }),
            }
        }
    }
    out
}

struct Fetched {
    manifest: Vec<u8>,
    layers: Vec<Layer>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Whether an image is pulled under the same requirements, from the same sources, with
/// attachments read at the same ones in both views: then what [`verify_parsed`] decides is
/// the same in both. False when either cannot tell.
pub fn same_pull(
    before: &NodeView,
    after: &NodeView,
    image: &Parsed,
    pinned: Option<&str>,
) -> bool {
    if before.registries != after.registries || before.now != after.now {
        return false;
    }
    let requirements = |policy| explain::lookup(policy, image.lookup).1;
    if requirements(&before.policy) != requirements(&after.policy) {
        return false;
    }
    if before.attachments == after.attachments {
        return true;
    }
    match pull_sources(after, image.intended, pinned) {
        Ok(sources) => sources.iter().all(|(_, physical)| {
            uses_attachments(&before.attachments, physical)
                == uses_attachments(&after.attachments, physical)
        }),
        Err(_) => false,
    }
}

/// The references a pull tries, in order (`sysregistriesv2`'s pull sources).
fn pull_sources(
    node: &NodeView,
    intended: &Reference,
    pinned: Option<&str>,
) -> Result<Vec<(cip_core::registries_conf::Endpoint, Reference)>, String> {
    let wanted = match pinned {
        Some(digest) => Reference {
            name: intended.name.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        },
        None => intended.clone(),
    };
    Ok(match node.registries.find_registry(&wanted.name) {
        Some(registry) => registry.pull_sources(&wanted)?,
        None => vec![(
            cip_core::registries_conf::Endpoint {
                location: String::new(),
                pull_from: None,
            },
            wanted,
        )],
    })
}

/// `newImageSource` over the pull sources, then the instance and the attachment.
async fn fetch<S: Source>(
    node: &NodeView,
    intended: &Reference,
    pinned: Option<&str>,
    arch: &str,
    source: &S,
    out: &mut Outcome,
) -> Result<Fetched, String> {
    let sources = pull_sources(node, intended, pinned)?;
    let reference = |r: &Reference| r.digest.clone().or(r.tag.clone()).unwrap_or_default();
    let mut found = None;
    for (_, physical) in &sources {
        let (host, repo) = split_name(&physical.name);
        match source.manifest(host, repo, &reference(physical)).await {
            Ok(m) => {
                found = Some((physical.clone(), m));
                break;
            }
            Err(e) => out.skipped_sources.push(format!("{physical}: {e}")),
        }
    }
    let Some((physical, top)) = found else {
        return Err(format!(
            "no pull source served the manifest: {}",
            out.skipped_sources.join("; ")
        ));
    };
    out.source = Some(physical.to_string());
    let (host, repo) = split_name(&physical.name);
    if let Some(d) = &physical.digest {
        check_digest(&top.bytes, d)?;
    }
    let (manifest, instance) = if INDEX_TYPES.contains(&top.media_type.as_str()) {
        let digest = choose_instance(&top.bytes, arch)?;
        let m = source
            .manifest(host, repo, &digest)
            .await
            .map_err(|e| e.to_string())?;
        check_digest(&m.bytes, &digest)?;
        (m.bytes, digest)
    } else {
        let digest = judge::sha256(&top.bytes);
        (top.bytes, digest)
    };
    out.instance = Some(instance.clone());
    out.attachments = uses_attachments(&node.attachments, &physical);
    let layers = if out.attachments {
        attachment_layers(source, host, repo, &instance).await?
    } else {
        Vec::new()
    };
    Ok(Fetched { manifest, layers })
}

fn split_name(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or((name, ""))
}

/// The manifest the reference's digest names, or an error as containers/image gives one.
fn check_digest(bytes: &[u8], digest: &str) -> Result<(), String> {
    if judge::sha256(bytes) != digest {
        return Err(format!(
            "Manifest does not match provided manifest digest {digest}"
        ));
    }
    Ok(())
}

/// `registryConfiguration.useSigstoreAttachments` for the physical reference: the most
/// specific `docker` entry of registries.d (the MCO writes only `true` entries).
fn uses_attachments(scopes: &BTreeSet<String>, physical: &Reference) -> bool {
    explain::candidates(&physical.name, &physical.to_string())
        .iter()
        .any(|c| scopes.contains(c))
}

/// `manifest.ChooseInstance` for `linux/<arch>`: the first entry for that platform.
fn choose_instance(index: &[u8], arch: &str) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        digest: String,
        #[serde(default)]
        platform: Option<Platform>,
    }
    #[derive(serde::Deserialize)]
    struct Platform {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
    }
    let index: Index =
        serde_json::from_slice(index).map_err(|e| format!("parsing the image index: {e}"))?;
    index
        .manifests
        .into_iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .map(|m| m.digest)
        .ok_or_else(|| format!("no image found in manifest list for architecture \"{arch}\", variant \"\", OS \"linux\""))
}

/// `appendSignaturesFromSigstoreAttachments`: the `sha256-<hex>.sig` manifest (absent is no
/// signature; any other error is an error), OCI only, each layer's blob within 4 MiB and
/// matching its digest.
async fn attachment_layers<S: Source>(
    source: &S,
    host: &str,
    repo: &str,
    instance: &str,
) -> Result<Vec<Layer>, String> {
    let tag = format!("{}.sig", instance.replacen(':', "-", 1));
    let m = match source.manifest(host, repo, &tag).await {
        Ok(m) => m,
        Err(FetchError::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading the signature attachment: {e}")),
    };
    if m.media_type != "application/vnd.oci.image.manifest.v1+json" {
        return Err(format!(
            "unexpected MIME type for sigstore attachment manifest {host}/{repo}:{tag}: {:?}",
            m.media_type
        ));
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Descriptor {
        #[serde(default)]
        media_type: String,
        digest: String,
        #[serde(default)]
        annotations: std::collections::BTreeMap<String, String>,
    }
    let manifest: Manifest = serde_json::from_slice(&m.bytes)
        .map_err(|e| format!("parsing manifest {host}/{repo}:{tag}: {e}"))?;
    let mut layers = Vec::new();
    for d in manifest.layers {
        cip_core::registries_conf::validate_digest(&d.digest)
            .map_err(|e| format!("invalid digest {:?}: {e}", d.digest))?;
        let payload = source
            .blob(host, repo, &d.digest)
            .await
            .map_err(|e| e.to_string())?;
        if payload.len() > MAX_SIGNATURE {
            return Err(format!(
                "reading blob {}: exceeded maximum allowed size of {MAX_SIGNATURE} bytes",
                d.digest
            ));
        }
        let actual = judge::digest_as(&d.digest, &payload);
        if actual != d.digest {
            return Err(format!(
                "digest mismatch, expected {:?}, got {actual:?}",
                d.digest
            ));
        }
        layers.push(Layer {
            digest: d.digest,
            media_type: d.media_type,
            payload,
            annotations: d.annotations,
        });
    }
    Ok(layers)
}

/// The text report: the entry, the source, each layer in containers/image's words.
pub fn text(o: &Outcome, pool: &str, namespace: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let on = match namespace {
        Some(ns) => format!("pool {pool}, namespace {ns}"),
        None => format!("pool {pool}"),
    };
    let entry = match &o.entry {
        Some(e) if e.is_empty() => "the docker transport's default (\"\")".to_string(),
        Some(e) => format!("{e:?}"),
        None => "the global default".to_string(),
    };
    let _ = writeln!(s, "{} on {on}: {}", o.image, o.verdict);
    let _ = writeln!(
        s,
        "  entry: {entry} in {} ({})",
        o.policy_file,
        o.requirements.join(", ")
    );
    if o.no_signature_required {
        let _ = writeln!(s, "  no signature required");
    }
    for skipped in &o.skipped_sources {
        let _ = writeln!(s, "  passed over: {skipped}");
    }
    if let Some(src) = &o.source {
        let _ = writeln!(s, "  source: {src}");
    }
    if let Some(i) = &o.instance {
        let _ = writeln!(
            s,
            "  instance: {i}; sigstore attachments {}",
            if o.attachments {
                "read"
            } else {
                "off for this source (registries.d)"
            }
        );
    }
    for l in &o.layers {
        let _ = write!(s, "  layer {}: {}", l.digest, l.verdict);
        if !l.reason.is_empty() {
            let _ = write!(s, ": {}", l.reason);
        }
        s.push('\n');
    }
    if !o.reason.is_empty() {
        let _ = writeln!(s, "  reason: {}", o.reason);
    }
    if let Some(until) = o.accepted_until {
        let _ = writeln!(
            s,
            "  accepted until {} (the certificate chain's first notAfter: refused from then on)",
            cip_sigstore::x509::rfc3339(until)
        );
    }
    for note in &o.notes {
        let _ = writeln!(s, "  note: {note}");
    }
    s
}
