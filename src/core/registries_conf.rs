//! The `[[registry]]` entries of the registries.conf the MCO generates, and what
//! containers/image reads from them, as far as the policy files depend on it.
//!
//! The MCO builds registries.conf with openshift/runtime-utils `EditRegistriesConfig`
//! from its template (which has no `[[registry]]` entries), the Image CR's insecure and
//! blocked lists and every ImageDigestMirrorSet, ImageTagMirrorSet and
//! ImageContentSourcePolicy. It then asks containers/image (`sysregistriesv2`) two
//! things we must answer the same way:
//! - which endpoints a policy scope is pulled from (`FindRegistry` + `PullSourcesFromReference`
//!   on a dummy digest and tag reference): each gets `use-sigstore-attachments: true` in
//!   sigstore-registries.yaml, or signed pulls through a mirror look for signatures in
//!   the wrong place (OCPBUGS-36344);
//! - whether the payload repository has a mirror outside the blocked registries (it then
//!   may be blocked, and is added to the allowed list instead).
//!
//! We never write registries.conf (the MCO does), so the insecure and blocked flags are not
//! modelled, only the entries those lists create: they take part in the longest-prefix match.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;

use regex::Regex;

use crate::model::{ImageContentSourcePolicy, ImageDigestMirrorSet, ImageTagMirrorSet};
use crate::scope::is_nested;

/// A mirror's `pull-from-mirror`: the MCO writes digest mirrors as `digest-only` and tag
/// mirrors as `tag-only`, never `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFrom {
    DigestOnly,
    TagOnly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub location: String,
    /// `None` for a registry's own endpoint.
    pub pull_from: Option<PullFrom>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// Set only for wildcard entries (`*.example.com`) as generated; defaulted to the
    /// location once loaded.
    pub prefix: String,
    /// Empty for wildcard entries.
    pub location: String,
    pub mirrors: Vec<Endpoint>,
}

impl Registry {
    fn new(scope: &str) -> Registry {
        let (prefix, location) = if scope.starts_with("*.") {
            (scope.to_string(), String::new())
        } else {
            (String::new(), scope.to_string())
        };
        Registry {
            prefix,
            location,
            mirrors: Vec::new(),
        }
    }

    /// runtime-utils `registryScope`: the prefix where set, else the location.
    pub fn scope(&self) -> &str {
        if self.prefix.is_empty() {
            &self.location
        } else {
            &self.prefix
        }
    }
}

/// The mirror objects of the cluster, borrowed from the render inputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MirrorObjects<'a> {
    pub digest: &'a [ImageDigestMirrorSet],
    pub tag: &'a [ImageTagMirrorSet],
    pub content_source: &'a [ImageContentSourcePolicy],
}

impl MirrorObjects<'_> {
    pub fn is_empty(&self) -> bool {
        self.digest.is_empty() && self.tag.is_empty() && self.content_source.is_empty()
    }
}

/// The generated registries.conf: the entries in the order `EditRegistriesConfig` leaves
/// them, and as containers/image loads them (prefix defaulted, sorted, one per prefix).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistriesConf {
    pub generated: Vec<Registry>,
    loaded: Vec<Registry>,
    /// Indexes, so that a scope's lookups cost its length rather than the number of
    /// entries (hundreds of mirror rules times thousands of scopes): plain prefixes by
    /// text, the few wildcard ones apart; the generated scopes sorted.
    plain: HashMap<String, usize>,
    wildcards: Vec<usize>,
    plain_scopes: BTreeSet<String>,
    wildcard_scopes: Vec<String>,
}

/// One source's mirrors from every set that names it, in a merged preference order.
#[derive(Debug, Clone, PartialEq)]
struct MergedSet {
    source: String,
    mirrors: Vec<String>,
}

impl RegistriesConf {
    /// `EditRegistriesConfig(template, insecure, blocked, icsp, idms, itms)` on a template
    /// without `[[registry]]` entries. Errors are the ones the MCO fails its sync with.
    pub fn generate(
        insecure: &[String],
        blocked: &[String],
        mirrors: MirrorObjects,
    ) -> Result<RegistriesConf, String> {
        let digest_rules = mirrors
            .digest
            .iter()
            .flat_map(|s| &s.spec.image_digest_mirrors)
            .map(|r| (r.source.as_str(), r.mirrors.as_slice()))
            // ICSPs count as digest mirror sets without a source policy, after the IDMSs.
            .chain(
                mirrors
                    .content_source
                    .iter()
                    .flat_map(|s| &s.spec.repository_digest_mirrors)
                    .map(|r| (r.source.as_str(), r.mirrors.as_slice())),
            );
        let tag_rules = mirrors
            .tag
            .iter()
            .flat_map(|s| &s.spec.image_tag_mirrors)
            .map(|r| (r.source.as_str(), r.mirrors.as_slice()));
        let digest_sets = merged_sets(digest_rules)?;
        let tag_sets = merged_sets(tag_rules)?;

        let mut conf = Entries::default();
        for (sets, pull_from) in [
            (&digest_sets, PullFrom::DigestOnly),
            (&tag_sets, PullFrom::TagOnly),
        ] {
            for set in sets {
                let i = conf.entry(&set.source);
                conf.regs[i]
                    .mirrors
                    .extend(set.mirrors.iter().map(|m| Endpoint {
                        location: m.clone(),
                        pull_from: Some(pull_from),
                    }));
            }
        }
        for scope in blocked.iter().chain(insecure) {
            conf.entry(scope);
        }
        // Mirrors configured for a scope hold for the entries nested inside it that have
        // none of their own (only the most precise entry is ever used).
        for set in digest_sets.iter().chain(&tag_sets) {
            let mirrored = conf.entry(&set.source);
            let mirrored_scope = conf.regs[mirrored].scope().to_string();
            for i in 0..conf.regs.len() {
                let scope = conf.regs[i].scope();
                if scope == mirrored_scope
                    || !is_nested(scope, &mirrored_scope)
                    || !conf.regs[i].mirrors.is_empty()
                {
                    continue;
                }
                if mirrored_scope.starts_with("*.") {
                    return Err(format!(
                        "internal error: mirrorsAdjustedForNestedScope for a wildcard scope {mirrored_scope:?}"
                    ));
                }
                let Some(adjustment) = scope.strip_prefix(mirrored_scope.as_str()) else {
                    return Err(format!(
                        "internal error: mirrorsAdjustedForNestedScope with unexpected scopes {mirrored_scope:?} and {scope:?}"
                    ));
                };
                let adjusted = conf.regs[mirrored]
                    .mirrors
                    .iter()
                    .map(|m| Endpoint {
                        location: format!("{}{adjustment}", m.location),
                        pull_from: m.pull_from,
                    })
                    .collect();
                conf.regs[i].mirrors = adjusted;
            }
        }
        Ok(RegistriesConf::from_generated(conf.regs))
    }

    /// containers/image `postProcessRegistries`: trailing `/` trimmed, the prefix
    /// defaulted to the location, sorted by prefix with the first of each kept.
    fn from_generated(generated: Vec<Registry>) -> RegistriesConf {
        let mut by_prefix: BTreeMap<String, Registry> = BTreeMap::new();
        for reg in &generated {
            let location = reg.location.trim_end_matches('/').to_string();
            let prefix = if reg.prefix.is_empty() {
                location.clone()
            } else {
                reg.prefix.trim_end_matches('/').to_string()
            };
            let mirrors = reg
                .mirrors
                .iter()
                .map(|m| Endpoint {
                    location: m.location.trim_end_matches('/').to_string(),
                    pull_from: m.pull_from,
                })
                .collect();
            by_prefix.entry(prefix.clone()).or_insert(Registry {
                prefix,
                location,
                mirrors,
            });
        }
        let loaded: Vec<Registry> = by_prefix.into_values().collect();
        let mut plain = HashMap::new();
        let mut wildcards = Vec::new();
        for (i, reg) in loaded.iter().enumerate() {
            if reg.prefix.starts_with("*.") {
                wildcards.push(i);
            } else {
                plain.insert(reg.prefix.clone(), i);
            }
        }
        let (wildcard_scopes, plain_scopes): (Vec<String>, Vec<String>) = generated
            .iter()
            .map(|r| r.scope().to_string())
            .partition(|s| s.starts_with("*."));
        RegistriesConf {
            generated,
            loaded,
            plain,
            wildcards,
            plain_scopes: plain_scopes.into_iter().collect(),
            wildcard_scopes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.generated.is_empty()
    }

    /// `FindRegistry`: the entry with the longest prefix matching `reference` (a registry,
    /// namespace, repository or image reference), the first in prefix order of equals. A
    /// plain prefix can only be the reference cut at a `/`, `:` or `@`, or all of it.
    pub fn find_registry(&self, reference: &str) -> Option<&Registry> {
        let cuts = reference
            .bytes()
            .enumerate()
            .filter(|(_, b)| matches!(b, b'/' | b':' | b'@'))
            .map(|(i, _)| i)
            .chain(std::iter::once(reference.len()));
        let plain = cuts.filter_map(|i| self.plain.get(&reference[..i]).copied());
        let wildcard = self
            .wildcards
            .iter()
            .copied()
            .filter(|&i| matching_prefix(reference, &self.loaded[i].prefix).is_some());
        plain
            .chain(wildcard)
            .max_by_key(|&i| (self.loaded[i].prefix.len(), std::cmp::Reverse(i)))
            .map(|i| &self.loaded[i])
    }

    /// The generated entries' scopes nested strictly inside `scope`.
    fn nested_in<'a>(&'a self, scope: &'a str) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        if scope.starts_with("*.") {
            // Few: every entry is looked at.
            return Box::new(
                self.plain_scopes
                    .iter()
                    .chain(&self.wildcard_scopes)
                    .map(String::as_str)
                    .filter(move |s| *s != scope && is_nested(s, scope)),
            );
        }
        // A plain scope holds exactly the entries that start with it and a `/`.
        let from = format!("{scope}/");
        let to = format!("{scope}0");
        Box::new(
            self.plain_scopes
                .range::<str, _>((
                    std::ops::Bound::Included(from.as_str()),
                    std::ops::Bound::Excluded(to.as_str()),
                ))
                .map(String::as_str)
                .collect::<Vec<_>>()
                .into_iter(),
        )
    }

    /// MCO's `generateSigstoreRegistriesdConfig` keys: every scope, and for each the
    /// endpoints its images are pulled from (mirrors included), and the same for every
    /// entry nested strictly inside it. A scope whose endpoints cannot be worked out is
    /// kept without them, with the MCO's error (where the MCO fails its whole sync).
    pub fn sigstore_keys<'a>(&self, scopes: impl IntoIterator<Item = &'a str>) -> Expansion {
        let mut out = Expansion::default();
        for scope in scopes {
            out.keys.insert(scope.to_string());
            if self.is_empty() {
                continue;
            }
            let mut found = BTreeSet::new();
            let mut result = self.add_sources(scope, &mut found);
            for nested in self.nested_in(scope) {
                if result.is_err() {
                    break;
                }
                result = self.add_sources(nested, &mut found);
            }
            match result {
                Ok(()) => out.keys.extend(found),
                Err(e) => out.problems.push(format!(
                    "error adding clusterimagepolicy scope {scope} relevant mirrors: {e}"
                )),
            }
        }
        out
    }

    /// `addScopeMirrorsSigstoreRegistriesdConfig`: the repositories a dummy digest and a
    /// dummy tag reference under `scope` are pulled from, wildcard entries' own (empty)
    /// location left out.
    fn add_sources(&self, scope: &str, keys: &mut BTreeSet<String>) -> Result<(), String> {
        let Some(reg) = self.find_registry(scope) else {
            return Ok(());
        };
        let mut name = match scope.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') => format!("matched{rest}"),
            _ => scope.to_string(),
        };
        let dummy_path = !name.contains('/');
        if dummy_path {
            name.push_str("/a");
        }
        let parsed =
            Reference::parse(&name).map_err(|e| format!("error parsing scope {name}: {e}"))?;
        let by_digest = Reference {
            name: parsed.name.clone(),
            tag: None,
            digest: Some(format!("sha256:{}", "a".repeat(64))),
        };
        let by_tag = Reference {
            name: parsed.name,
            tag: Some("aaa".into()),
            digest: None,
        };
        let mut sources = reg
            .pull_sources(&by_digest)
            .map_err(|e| format!("error getting digest sources for scope {name}: {e}"))?;
        sources.extend(
            reg.pull_sources(&by_tag)
                .map_err(|e| format!("error getting tag sources for scope {name}: {e}"))?,
        );
        for (endpoint, reference) in sources {
            if endpoint.location.is_empty() {
                continue;
            }
            let repo = if dummy_path {
                reference
                    .name
                    .strip_suffix("/a")
                    .map(str::to_string)
                    .unwrap_or(reference.name)
            } else {
                reference.name
            };
            keys.insert(repo);
        }
        Ok(())
    }
}

/// Policy scopes with the endpoints they are pulled from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expansion {
    pub keys: BTreeSet<String>,
    pub problems: Vec<String>,
}

/// The generated entries, found by scope.
#[derive(Default)]
struct Entries {
    regs: Vec<Registry>,
    index: HashMap<String, usize>,
}

impl Entries {
    /// runtime-utils `getRegistryEntry`: the entry for this scope, created if missing.
    fn entry(&mut self, scope: &str) -> usize {
        if let Some(&i) = self.index.get(scope) {
            return i;
        }
        self.regs.push(Registry::new(scope));
        self.index.insert(scope.to_string(), self.regs.len() - 1);
        self.regs.len() - 1
    }
}

/// runtime-utils `mergedMirrorSets`: per source (sorted), every set's mirrors in an order
/// that respects each set's preference order (a topological sort, loops broken by name).
/// The source itself is left out when it comes last (it is always tried last anyway).
/// Sets whose mirrors only repeat the source are ignored.
fn merged_sets<'a>(
    rules: impl Iterator<Item = (&'a str, &'a [String])>,
) -> Result<Vec<MergedSet>, String> {
    let mut by_source: BTreeMap<&str, Vec<&[String]>> = BTreeMap::new();
    for (source, mirrors) in rules {
        if mirrors.iter().all(|m| m == source) {
            continue;
        }
        by_source.entry(source).or_default().push(mirrors);
    }
    by_source
        .into_iter()
        .map(|(source, sets)| {
            let mut graph = TopoGraph::default();
            for mirrors in sets {
                for pair in mirrors.windows(2) {
                    graph.add_edge(&pair[0], &pair[1]);
                }
                if !mirrors.iter().any(|m| m == source) {
                    graph.add_edge(&mirrors[mirrors.len() - 1], source);
                }
            }
            let mut sorted = graph.sorted()?;
            if sorted.last().map(String::as_str) == Some(source) {
                sorted.pop();
            }
            Ok(MergedSet {
                source: source.to_string(),
                mirrors: sorted,
            })
        })
        .collect()
}

/// runtime-utils `topoGraph`: nodes by name, edges as preference.
#[derive(Default)]
struct TopoGraph {
    nodes: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
}

impl TopoGraph {
    fn add_edge(&mut self, from: &str, to: &str) {
        self.nodes
            .entry(from.to_string())
            .or_default()
            .1
            .insert(to.to_string());
        self.nodes
            .entry(to.to_string())
            .or_default()
            .0
            .insert(from.to_string());
    }

    /// Kahn's algorithm over nodes in name order; an unbroken loop is broken by taking the
    /// first unused node by name.
    fn sorted(mut self) -> Result<Vec<String>, String> {
        let all: Vec<String> = self.nodes.keys().cloned().collect();
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut queue: std::collections::VecDeque<String> = all
            .iter()
            .filter(|n| self.nodes[*n].0.is_empty())
            .cloned()
            .collect();
        let mut out = Vec::new();
        let mut next_index = 0;
        while !queue.is_empty() || next_index < all.len() {
            let node = match queue.pop_front() {
                Some(n) => {
                    if used.contains(&n) {
                        return Err(format!(
                            "internal error in topoGraph.Sorted: node {n:?} already used"
                        ));
                    }
                    n
                }
                None => {
                    let n = all[next_index].clone();
                    next_index += 1;
                    if used.contains(&n) {
                        continue;
                    }
                    n
                }
            };
            used.insert(node.clone());
            let outs = self.nodes[&node].1.clone();
            let mut batch = Vec::new();
            for next in outs {
                let ins = &mut self.nodes.get_mut(&next).expect("edge target").0;
                ins.remove(&node);
                if ins.is_empty() && !used.contains(&next) {
                    batch.push(next);
                }
            }
            batch.sort();
            queue.extend(batch);
            out.push(node);
        }
        Ok(out)
    }
}

/// Where `reference` (which starts with a host) matches `prefix`: the length of the
/// matched part, as containers/image's `refMatchingPrefix`. A plain prefix matches at a
/// `/`, `:` or `@` boundary (so `example.com` also matches `example.com:5000`, a quirk
/// containers/image keeps); `*.example.com` matches any subdomain host.
fn matching_prefix(reference: &str, prefix: &str) -> Option<usize> {
    if let Some(suffix) = prefix.strip_prefix('*') {
        if !suffix.starts_with('.') {
            return exact_or_boundary(reference, prefix);
        }
        let index = reference.find(suffix)?;
        if reference[..index].contains('/') {
            return None;
        }
        let end = index + suffix.len();
        return match reference.as_bytes().get(end) {
            None | Some(b':' | b'/' | b'@') => Some(end),
            _ => None,
        };
    }
    exact_or_boundary(reference, prefix)
}

fn exact_or_boundary(reference: &str, prefix: &str) -> Option<usize> {
    if !reference.starts_with(prefix) {
        return None;
    }
    match reference.as_bytes().get(prefix.len()) {
        None | Some(b':' | b'/' | b'@') => Some(prefix.len()),
        _ => None,
    }
}

impl Registry {
    /// `PullSourcesFromReference`: the mirrors that serve this kind of reference, then the
    /// registry itself, each with the reference rewritten to its location.
    pub fn pull_sources(
        &self,
        reference: &Reference,
    ) -> Result<Vec<(Endpoint, Reference)>, String> {
        let digested = reference.digest.is_some();
        let own = Endpoint {
            location: self.location.clone(),
            pull_from: None,
        };
        self.mirrors
            .iter()
            .filter(|m| match m.pull_from {
                Some(PullFrom::DigestOnly) => digested,
                Some(PullFrom::TagOnly) => !digested,
                None => true,
            })
            .chain(std::iter::once(&own))
            .map(|endpoint| {
                self.rewrite(endpoint, reference)
                    .map(|r| (endpoint.clone(), r))
            })
            .collect()
    }

    /// `Endpoint.rewriteReference`: the registry's prefix replaced by the endpoint's location.
    fn rewrite(&self, endpoint: &Endpoint, reference: &Reference) -> Result<Reference, String> {
        let text = reference.to_string();
        let Some(len) = matching_prefix(&text, &self.prefix) else {
            return Err(format!(
                "invalid prefix '{}' for reference '{text}'",
                self.prefix
            ));
        };
        if endpoint.location.is_empty() {
            if !self.prefix.starts_with("*.") {
                return Err(format!(
                    "invalid prefix '{}' for empty location, should be in the format: *.example.com",
                    self.prefix
                ));
            }
            return Ok(reference.clone());
        }
        // The registry's own location under its own prefix names the same text: parsing
        // it again would give back the reference it came from.
        if endpoint.location == text[..len] {
            return Ok(reference.clone());
        }
        Reference::parse_named(&format!("{}{}", endpoint.location, &text[len..]))
            .map_err(|e| format!("rewriting reference: {e}"))
    }
}

/// A docker reference as containers/image's `docker/reference` parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

const DOMAIN_COMPONENT: &str = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const NAME_COMPONENT: &str = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*";

/// `ReferenceRegexp`, with Go's ASCII `\w` and `[[:xdigit:]]` spelled out.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let domain = format!(r"{DOMAIN_COMPONENT}(?:\.{DOMAIN_COMPONENT})*(?::[0-9]+)?");
    Regex::new(&format!(
        r"^((?:{domain}/)?{NAME_COMPONENT}(?:/{NAME_COMPONENT})*)(?::([0-9A-Za-z_][0-9A-Za-z_.-]{{0,127}}))?(?:@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9A-Fa-f]{{32,}}))?$"
    ))
    .expect("reference grammar")
});

/// Longest repository name containers/image accepts.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

impl Reference {
    /// `reference.Parse`: the grammar, the name length and the digest.
    pub fn parse(text: &str) -> Result<Reference, String> {
        let Some(caps) = REFERENCE.captures(text) else {
            if text.is_empty() {
                return Err("repository name must have at least one component".into());
            }
            if REFERENCE.is_match(&text.to_lowercase()) {
                return Err("repository name must be lowercase".into());
            }
            return Err("invalid reference format".into());
        };
        let name = caps[1].to_string();
        if name.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(format!(
                "repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
            ));
        }
        let digest = caps.get(3).map(|d| d.as_str().to_string());
        if let Some(d) = &digest {
            validate_digest(d)?;
        }
        Ok(Reference {
            name,
            tag: caps.get(2).map(|t| t.as_str().to_string()),
            digest,
        })
    }

    /// `reference.ParseNamed`: parsed as `ParseNormalizedNamed` does, and refused unless
    /// already in canonical form (`docker.io/busybox` is not: it means
    /// `docker.io/library/busybox`).
    pub fn parse_named(text: &str) -> Result<Reference, String> {
        let parsed = Reference::parse_normalized(text)?;
        if parsed.to_string() != text {
            return Err("repository name must be canonical".into());
        }
        Ok(parsed)
    }

    /// `reference.ParseNormalizedNamed`: `busybox` is `docker.io/library/busybox`.
    pub fn parse_normalized(text: &str) -> Result<Reference, String> {
        if text.len() == 64 && text.bytes().all(|b| matches!(b, b'a'..=b'f' | b'0'..=b'9')) {
            return Err(format!(
                "invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
            ));
        }
        let (domain, remainder) = split_docker_domain(text);
        let remote = remainder.split(':').next().unwrap_or_default();
        if remote.to_lowercase() != remote {
            return Err("invalid reference format: repository name must be lowercase".into());
        }
        Reference::parse(&format!("{domain}/{remainder}"))
    }
}

/// `splitDockerDomain`: a first component without `.` or `:` (other than `localhost`) is a
/// Docker Hub path.
fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.find('/') {
        Some(i) if name[..i].contains(['.', ':']) || &name[..i] == "localhost" => {
            (name[..i].to_string(), name[i + 1..].to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

/// go-digest `Digest.Validate` with the algorithms containers/image links in.
pub fn validate_digest(digest: &str) -> Result<(), String> {
    const FORMAT: &str = "invalid checksum digest format";
    let Some((algorithm, encoded)) = digest
        .split_once(':')
        .filter(|(a, e)| !a.is_empty() && !e.is_empty())
    else {
        return Err(FORMAT.into());
    };
    let size = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm".into()),
    };
    if encoded.len() != size {
        return Err("invalid checksum digest length".into());
    }
    if !encoded
        .bytes()
        .all(|b| matches!(b, b'a'..=b'f' | b'0'..=b'9'))
    {
        return Err(FORMAT.into());
    }
    Ok(())
}

/// MCO's `payloadRepoHasUnblockedMirror`: a registries.conf from the digest mirrors and the
/// Image CR's lists (tag mirrors left out: the payload is pulled by digest), and a pull
/// source for the release image outside every blocked registry.
pub fn payload_has_unblocked_mirror(
    release_image: &str,
    insecure: &[String],
    blocked: &[String],
    mirrors: MirrorObjects,
) -> Result<bool, String> {
    let reference = Reference::parse_named(release_image)?;
    let digest_only = MirrorObjects {
        tag: &[],
        ..mirrors
    };
    let conf = RegistriesConf::generate(insecure, blocked, digest_only)?;
    let Some(reg) = conf.find_registry(&reference.name) else {
        return Ok(false);
    };
    Ok(reg
        .pull_sources(&reference)?
        .iter()
        .any(|(_, source)| !blocked.iter().any(|b| is_nested(&source.name, b))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DigestMirrorSpec, MirrorRule};

    fn idms(rules: &[(&str, &[&str])]) -> ImageDigestMirrorSet {
        ImageDigestMirrorSet {
            spec: DigestMirrorSpec {
                image_digest_mirrors: rules
                    .iter()
                    .map(|(source, mirrors)| MirrorRule {
                        source: source.to_string(),
                        mirrors: mirrors.iter().map(|m| m.to_string()).collect(),
                        mirror_source_policy: None,
                    })
                    .collect(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn pull_sources_rewrite_into_mirrors_and_keep_the_registrys_own() {
        let sets = [idms(&[("a.com/ns", &["m.io/mirror"])])];
        let mirrors = MirrorObjects {
            digest: &sets,
            ..Default::default()
        };
        let conf = RegistriesConf::generate(&["b.com/x".into()], &[], mirrors).unwrap();
        let digest = format!("sha256:{}", "0".repeat(64));
        let mirrored = Reference::parse_named(&format!("a.com/ns/app@{digest}")).unwrap();
        let sources = conf.find_registry(&mirrored.name).unwrap();
        let names: Vec<String> = sources
            .pull_sources(&mirrored)
            .unwrap()
            .iter()
            .map(|(_, r)| r.to_string())
            .collect();
        assert_eq!(
            names,
            [
                format!("m.io/mirror/app@{digest}"),
                format!("a.com/ns/app@{digest}")
            ]
        );
        let own = Reference::parse_named("b.com/x/app:v1").unwrap();
        let sources = conf.find_registry(&own.name).unwrap().pull_sources(&own);
        assert_eq!(sources.unwrap()[0].1, own);
    }

    fn keys(sets: &[ImageDigestMirrorSet], scopes: &[&str]) -> Vec<String> {
        let conf = RegistriesConf::generate(
            &[],
            &[],
            MirrorObjects {
                digest: sets,
                ..Default::default()
            },
        )
        .unwrap();
        let expansion = conf.sigstore_keys(scopes.iter().copied());
        assert!(expansion.problems.is_empty(), "{:?}", expansion.problems);
        expansion.keys.into_iter().collect()
    }

    const TV6_SCOPES: [&str; 5] = [
        "a.com/a1/a2",
        "a.com/a1/a2@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "*.example.com",
        "policy.scope",
        "foo.example.com/ns/repo",
    ];

    #[test]
    fn tv6a_nested_entries_and_their_mirrors() {
        let sets = [idms(&[
            ("a.com/a1/a2", &["a-a1-a2.mirror/a1/a2"]),
            ("a.com/a1/a2/a3", &["a-a1-a2-a3.mirror/m1/m2/m3"]),
            ("a.com/a1/a2/a3-1", &["a-a1-a2-a3-1.mirror/m1/m2/m3"]),
            ("x.com/x1/x2", &["x-x1-x2.mirror/x1/x2"]),
        ])];
        let got = keys(&sets, &TV6_SCOPES);
        for want in [
            "a-a1-a2-a3-1.mirror/m1/m2/m3",
            "a-a1-a2-a3.mirror/m1/m2/m3",
            "a-a1-a2.mirror/a1/a2",
            "a.com/a1/a2/a3",
            "a.com/a1/a2/a3-1",
        ] {
            assert!(got.contains(&want.to_string()), "{want} missing: {got:?}");
        }
        assert!(!got.iter().any(|k| k.starts_with("x")), "{got:?}");
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn tv6b_longest_prefix_wins() {
        let sets = [idms(&[
            ("a.com", &["a.mirror"]),
            ("a.com/a1", &["a-a1.mirror/a1"]),
        ])];
        let got = keys(&sets, &TV6_SCOPES);
        let extra: Vec<&String> = got
            .iter()
            .filter(|k| !TV6_SCOPES.contains(&k.as_str()))
            .collect();
        assert_eq!(extra, ["a-a1.mirror/a1/a2"]);
    }

    #[test]
    fn tv6c_wildcard_source() {
        let sets = [idms(&[("*.example.com", &["our.mirror/example"])])];
        let got = keys(&sets, &TV6_SCOPES);
        let extra: Vec<&String> = got
            .iter()
            .filter(|k| !TV6_SCOPES.contains(&k.as_str()))
            .collect();
        assert_eq!(extra, ["our.mirror/example", "our.mirror/example/ns/repo"]);
    }

    #[test]
    fn tag_mirrors_serve_tag_pulls_and_registry_scopes_get_a_dummy_path() {
        let itms = ImageTagMirrorSet {
            spec: crate::model::TagMirrorSpec {
                image_tag_mirrors: vec![MirrorRule {
                    source: "reg.example.com".into(),
                    mirrors: vec!["tags.mirror.example.com/reg".into()],
                    mirror_source_policy: None,
                }],
            },
            ..Default::default()
        };
        let conf = RegistriesConf::generate(
            &[],
            &[],
            MirrorObjects {
                tag: std::slice::from_ref(&itms),
                ..Default::default()
            },
        )
        .unwrap();
        let got = conf.sigstore_keys(["reg.example.com"]).keys;
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            ["reg.example.com", "tags.mirror.example.com/reg"]
        );
    }

    #[test]
    fn mirrors_hold_for_nested_entries_without_their_own() {
        let sets = [idms(&[("a.com/ns", &["m.example.com/ns"])])];
        let conf = RegistriesConf::generate(
            &[],
            &["a.com/ns/blocked".to_string()],
            MirrorObjects {
                digest: &sets,
                ..Default::default()
            },
        )
        .unwrap();
        let nested = conf.find_registry("a.com/ns/blocked/x").unwrap();
        assert_eq!(nested.mirrors[0].location, "m.example.com/ns/blocked");
        // A wildcard source cannot be carried into a nested entry: the MCO fails.
        let sets = [idms(&[("*.example.com", &["m.example.org"])])];
        let err = RegistriesConf::generate(
            &[],
            &["a.example.com".to_string()],
            MirrorObjects {
                digest: &sets,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.contains("wildcard scope \"*.example.com\""), "{err}");
    }

    #[test]
    fn mirror_sets_merge_in_preference_order() {
        let a = ["b.example.com".to_string(), "c.example.com".to_string()];
        let b = ["a.example.com".to_string(), "b.example.com".to_string()];
        let merged = merged_sets([("src.io", &a[..]), ("src.io", &b[..])].into_iter()).unwrap();
        assert_eq!(
            merged[0].mirrors,
            ["a.example.com", "b.example.com", "c.example.com"]
        );
        // Only the source itself: not a mirror set.
        let own = ["src.io".to_string()];
        assert!(merged_sets([("src.io", &own[..])].into_iter())
            .unwrap()
            .is_empty());
        // A loop is broken by name.
        let x = ["m1.io".to_string(), "m2.io".to_string()];
        let y = ["m2.io".to_string(), "m1.io".to_string()];
        let merged = merged_sets([("s.io", &x[..]), ("s.io", &y[..])].into_iter()).unwrap();
        assert_eq!(merged[0].mirrors, ["m1.io", "m2.io"]);
    }

    #[test]
    fn references_parse_as_containers_image() {
        let r = Reference::parse("quay.io/a/b:4.16@sha256:".to_string().as_str());
        assert_eq!(r.unwrap_err(), "invalid reference format");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("quay.io/a/b:t@{digest}")).unwrap();
        assert_eq!(r.name, "quay.io/a/b");
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(
            Reference::parse(&format!("quay.io/a@sha256:{}", "0".repeat(32))).unwrap_err(),
            "invalid checksum digest length"
        );
        assert_eq!(
            Reference::parse(&format!("quay.io/a@md5:{}", "0".repeat(32))).unwrap_err(),
            "unsupported digest algorithm"
        );
        assert_eq!(
            Reference::parse("quay.io/A").unwrap_err(),
            "repository name must be lowercase"
        );
        let long = format!("quay.io/{}", "a".repeat(250));
        assert!(Reference::parse(&long).unwrap_err().contains("255"));
        assert_eq!(
            Reference::parse_named("docker.io/busybox").unwrap_err(),
            "repository name must be canonical"
        );
        assert!(Reference::parse_named("docker.io/library/busybox").is_ok());
        assert!(Reference::parse_named("localhost:5000/a").is_ok());
    }

    /// The indexes agree with containers/image's linear scan, ties included: of equally
    /// long prefixes the first in sorted order wins (`*.b.com` before `a.b.com`).
    #[test]
    fn lookups_agree_with_a_linear_scan() {
        let blocked: Vec<String> = [
            "*.b.com",
            "a.b.com",
            "a.b.com/x",
            "a.b.com:5000",
            "c.io",
            "c.io/x/y",
            "*.c.io",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let conf = RegistriesConf::generate(&[], &blocked, MirrorObjects::default()).unwrap();
        let linear = |reference: &str| {
            let mut best: Option<&Registry> = None;
            for reg in &conf.loaded {
                if matching_prefix(reference, &reg.prefix).is_some()
                    && best.is_none_or(|b| reg.prefix.len() > b.prefix.len())
                {
                    best = Some(reg);
                }
            }
            best.map(|r| r.prefix.clone())
        };
        for reference in [
            "a.b.com/x/y",
            "a.b.com",
            "a.b.com:5000/z",
            "z.b.com/q",
            "c.io/x/y@sha256:ab",
            "c.io/x",
            "d.c.io/x",
            "c.iox/y",
            "nothing.here/x",
            "*.b.com",
        ] {
            assert_eq!(
                conf.find_registry(reference).map(|r| r.prefix.clone()),
                linear(reference),
                "{reference}"
            );
        }
        for scope in ["a.b.com", "c.io", "*.b.com", "*.io", "c.io/x"] {
            let mut indexed: Vec<&str> = conf.nested_in(scope).collect();
            indexed.sort();
            let mut scan: Vec<&str> = conf
                .generated
                .iter()
                .map(Registry::scope)
                .filter(|s| *s != scope && is_nested(s, scope))
                .collect();
            scan.sort();
            assert_eq!(indexed, scan, "{scope}");
        }
    }

    #[test]
    fn prefixes_match_at_boundaries() {
        assert_eq!(matching_prefix("example.com/a", "example.com"), Some(11));
        assert_eq!(
            matching_prefix("example.com:5000/a", "example.com"),
            Some(11)
        );
        assert_eq!(matching_prefix("example.comx/a", "example.com"), None);
        assert_eq!(
            matching_prefix("a.example.com/x", "*.example.com"),
            Some(13)
        );
        assert_eq!(matching_prefix("x/a.example.com", "*.example.com"), None);
        assert_eq!(matching_prefix("*.example.com", "*.example.com"), Some(13));
    }

    #[test]
    fn payload_mirror_outside_the_blocked_registries() {
        let release = format!(
            "quay.io/openshift-release-dev/ocp-release@sha256:{}",
            "b".repeat(64)
        );
        let blocked = vec!["quay.io".to_string()];
        let none = payload_has_unblocked_mirror(&release, &[], &blocked, MirrorObjects::default());
        assert_eq!(none, Ok(false));
        let sets = [idms(&[(
            "quay.io/openshift-release-dev/ocp-release",
            &["mirror.local/ocp/release"],
        )])];
        let with = MirrorObjects {
            digest: &sets,
            ..Default::default()
        };
        assert_eq!(
            payload_has_unblocked_mirror(&release, &[], &blocked, with),
            Ok(true)
        );
        // A mirror inside a blocked registry does not count.
        let blocked_too = vec!["quay.io".to_string(), "mirror.local".to_string()];
        assert_eq!(
            payload_has_unblocked_mirror(&release, &[], &blocked_too, with),
            Ok(false)
        );
        // Digest mirrors do not serve a release named by tag.
        let by_tag = "quay.io/openshift-release-dev/ocp-release:4.20.0-x86_64";
        assert_eq!(
            payload_has_unblocked_mirror(by_tag, &[], &blocked, with),
            Ok(false)
        );
    }
}
