//! policy.json as the MCO writes it: the requirement of each policy
//! (`policyItemFromSpec`), the cluster file (`updatePolicyJSON`) and each namespace's
//! file (`updateNamespacedPolicyJSONs`), in Go's `json.MarshalIndent(v, "", "  ")` layout.
//! Requirements are borrowed from the policies and each is serialized once per document
//! set, however many scopes, transports and namespace files repeat it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::cluster::ClusterFacts;
use crate::gojson;
use crate::model::ClusterImagePolicy;
use crate::policy::{self, Bytes, Policy, Requirement, SigstoreSigned};

/// The requirement MCO's `policyItemFromSpec` builds for a (validated) policy.
pub fn requirement(cip: &ClusterImagePolicy) -> Result<Requirement, String> {
    let policy = cip
        .spec
        .as_ref()
        .and_then(|s| s.policy.as_ref())
        .ok_or("spec.policy is missing")?;
    let rot = policy
        .root_of_trust
        .as_ref()
        .ok_or("spec.policy.rootOfTrust is missing")?;
    let bytes = |field: &str, v: &Option<String>| -> Result<Option<Bytes>, String> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => Bytes::from_base64(text)
                .map(Some)
                .map_err(|e| format!("{field}: {e}")),
        }
    };
    let mut req = SigstoreSigned::default();
    match (rot.policy_type.as_deref(), &rot.public_key, &rot.fulcio_ca_with_rekor, &rot.pki) {
        (Some("PublicKey"), Some(pk), _, _) => {
            req.key_data = bytes("keyData", &pk.key_data)?;
            req.rekor_public_key_data = bytes("rekorKeyData", &pk.rekor_key_data)?;
        }
        (Some("FulcioCAWithRekor"), _, Some(f), _) => {
            let subject = f.fulcio_subject.clone().unwrap_or_default();
            req.fulcio = Some(policy::Fulcio {
                ca_data: bytes("fulcioCAData", &f.fulcio_ca_data)?,
                oidc_issuer: subject.oidc_issuer,
                subject_email: subject.signed_email,
                ..Default::default()
            });
            req.rekor_public_key_data = bytes("rekorKeyData", &f.rekor_key_data)?;
        }
        (Some("PKI"), _, _, Some(p)) => {
            let subject = p.pki_certificate_subject.clone().unwrap_or_default();
            req.pki = Some(policy::Pki {
                ca_roots_data: bytes("caRootsData", &p.ca_roots_data)?,
                ca_intermediates_data: bytes("caIntermediatesData", &p.ca_intermediates_data)?,
                subject_email: subject.email,
                subject_hostname: subject.hostname,
                ..Default::default()
            });
        }
        _ => return Err("exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, and pki must be specified".into()),
    }
    req.signed_identity = match &policy.signed_identity {
        None => policy::SignedIdentity::MatchRepoDigestOrExact,
        Some(si) => match si.match_policy.as_deref() {
            None | Some("") | Some("MatchRepoDigestOrExact") => {
                policy::SignedIdentity::MatchRepoDigestOrExact
            }
            Some("MatchRepository") => policy::SignedIdentity::MatchRepository,
            Some("ExactRepository") => policy::SignedIdentity::ExactRepository {
                docker_repository: si
                    .exact_repository
                    .as_ref()
                    .and_then(|e| e.repository.clone())
                    .unwrap_or_default(),
            },
            Some("RemapIdentity") => {
                let remap = si.remap_identity.clone().unwrap_or_default();
                policy::SignedIdentity::RemapIdentity {
                    prefix: remap.prefix.unwrap_or_default(),
                    signed_prefix: remap.signed_prefix.unwrap_or_default(),
                }
            }
            Some(other) => return Err(format!("unknown signedIdentity match policy: {other}")),
        },
    };
    Ok(Requirement::SigstoreSigned(Box::new(req)))
}

/// About how many bytes this policy adds to a registries MachineConfig: its
/// requirement under each scope in `docker` (and `atomic`), base64-encoded.
pub fn estimated_growth(cip: &ClusterImagePolicy) -> usize {
    requirement(cip).map_or(0, |req| growth(&req, cip.scopes()))
}

pub(crate) fn growth(req: &Requirement, scopes: &[String]) -> usize {
    growth_per_entry(entry_bytes(req), scopes)
}

/// The bytes of `req` as one scope's entry in policy.json, before the scope's own name.
pub(crate) fn entry_bytes(req: &Requirement) -> usize {
    let body = gojson::marshal_indent(req);
    // Nested four levels deep in policy.json: eight more spaces on every line.
    body.len() + 8 * (body.matches('\n').count() + 1) + 16
}

/// [`growth`] from a requirement's [`entry_bytes`].
pub(crate) fn growth_per_entry(entry: usize, scopes: &[String]) -> usize {
    let json: usize = scopes
        .iter()
        .map(|s| (entry + s.len()) * if s.matches('/').count() < 3 { 2 } else { 1 })
        .sum();
    json.div_ceil(3) * 4
}

static REJECT: Requirement = Requirement::Reject;
static ACCEPT: Requirement = Requirement::InsecureAcceptAnything;

/// Requirements per scope, borrowed from the policies that carry them.
pub type ScopeMap<'a> = BTreeMap<&'a str, Vec<&'a Requirement>>;

/// MCO's `updatePolicyJSON`: `None` when nothing of ours belongs in policy.json,
/// so the pool's original file applies unchanged.
pub fn update_policy_json(
    original: &str,
    facts: &ClusterFacts,
    scopes: &ScopeMap,
) -> Result<Option<String>, String> {
    let allowed: Vec<&str> = facts.policy_allowed().collect();
    if allowed.is_empty() && facts.blocked.is_empty() && scopes.is_empty() {
        return Ok(None);
    }
    let policy = Policy::parse(original)?;
    let mut default: &[Requirement] = &policy.default;
    // The policies' scopes are borrowed as they are; only the few scopes that the
    // registry lists also name get a merged list of their own.
    let mut docker: BTreeMap<&str, Cow<[&Requirement]>> = scopes
        .iter()
        .map(|(k, v)| (*k, Cow::Borrowed(v.as_slice())))
        .collect();
    if !allowed.is_empty() {
        default = std::slice::from_ref(&REJECT);
        for reg in allowed.into_iter().filter(|r| !scopes.contains_key(r)) {
            docker.insert(reg, Cow::Owned(vec![&ACCEPT]));
        }
    }
    if !facts.blocked.is_empty() {
        default = std::slice::from_ref(&ACCEPT);
        for reg in &facts.blocked {
            let mut merged = vec![&REJECT];
            merged.extend(scopes.get(reg.as_str()).into_iter().flatten());
            docker.insert(reg, Cow::Owned(merged));
        }
    }
    let mut transports: BTreeMap<&str, Transport> = policy
        .transports
        .iter()
        .map(|(k, v)| (k.as_str(), Transport::Kept(v)))
        .collect();
    if !docker.is_empty() {
        // containers/image's `atomic` transport cannot address 3+ path levels (OCPBUGS-4122).
        let atomic = docker
            .iter()
            .filter(|(scope, _)| scope.matches('/').count() < 3)
            .map(|(k, v)| (*k, &**v))
            .collect();
        transports.insert(
            "docker",
            Transport::Built(docker.iter().map(|(k, v)| (*k, &**v)).collect()),
        );
        transports.insert("atomic", Transport::Built(atomic));
    }
    let mut snippets = Snippets::new();
    Ok(Some(
        PolicyWriter::new(&mut snippets).policy(default, &transports),
    ))
}

/// MCO's `updateNamespacedPolicyJSONs`: for each namespace, the pool's final policy.json
/// (parsed afresh for each: OCPBUGS-48195) with the namespace's requirements appended per
/// scope, in `docker`, and in `atomic` where the scope has fewer than three `/`; both
/// transports are created where the cluster file has none. So a namespace's file keeps
/// the cluster default, the registry lists' entries and every cluster policy scope.
pub fn namespace_policy_jsons(
    cluster: &str,
    namespaces: &BTreeMap<String, ScopeMap>,
) -> Result<Vec<(String, String)>, String> {
    let policy = Policy::parse(cluster)?;
    let borrowed = |name: &str| -> BTreeMap<&str, Vec<&Requirement>> {
        policy
            .transports
            .get(name)
            .into_iter()
            .flatten()
            .map(|(scope, reqs)| (scope.as_str(), reqs.iter().collect()))
            .collect()
    };
    let (base_docker, base_atomic) = (borrowed("docker"), borrowed("atomic"));
    // Every file shares the cluster's requirements and the namespace's own: serialized once.
    let mut snippets = Snippets::new();
    let mut out = Vec::with_capacity(namespaces.len());
    for (namespace, additions) in namespaces {
        let docker = merged(&base_docker, additions, false);
        let atomic = merged(&base_atomic, additions, true);
        let mut transports: BTreeMap<&str, Transport> = policy
            .transports
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "docker" | "atomic"))
            .map(|(k, v)| (k.as_str(), Transport::Kept(v)))
            .collect();
        transports.insert(
            "docker",
            Transport::Built(docker.iter().map(|(k, v)| (*k, &**v)).collect()),
        );
        transports.insert(
            "atomic",
            Transport::Built(atomic.iter().map(|(k, v)| (*k, &**v)).collect()),
        );
        let text = PolicyWriter::new(&mut snippets).policy(&policy.default, &transports);
        out.push((namespace.clone(), text));
    }
    Ok(out)
}

/// A cluster transport with a namespace's requirements appended; `atomic` leaves out
/// scopes with three or more `/`. Only the scopes that change are copied.
fn merged<'a>(
    base: &'a BTreeMap<&'a str, Vec<&'a Requirement>>,
    additions: &'a ScopeMap<'a>,
    atomic: bool,
) -> BTreeMap<&'a str, Cow<'a, [&'a Requirement]>> {
    let mut merged: BTreeMap<&str, Cow<[&Requirement]>> = base
        .iter()
        .map(|(k, v)| (*k, Cow::Borrowed(v.as_slice())))
        .collect();
    for (scope, reqs) in additions {
        if atomic && scope.matches('/').count() >= 3 {
            continue;
        }
        merged
            .entry(scope)
            .and_modify(|have| have.to_mut().extend(reqs.iter().copied()))
            .or_insert_with(|| Cow::Borrowed(reqs.as_slice()));
    }
    merged
}

enum Transport<'a> {
    Kept(&'a BTreeMap<String, Vec<Requirement>>),
    Built(BTreeMap<&'a str, &'a [&'a Requirement]>),
}

/// A requirement serialized once and indented for `depth` (always the same depth
/// within one document).
fn snippet<'s>(snippets: &'s mut Snippets, req: &Requirement, depth: usize) -> &'s String {
    let key: *const Requirement = req;
    snippets.entry(key).or_insert_with(|| {
        let mut indented = String::new();
        for (n, line) in gojson::marshal_indent(req).split('\n').enumerate() {
            if n > 0 {
                indented.push('\n');
                indented.extend(std::iter::repeat_n("  ", depth));
            }
            indented.push_str(line);
        }
        indented
    })
}

type Snippets = std::collections::HashMap<*const Requirement, String>;

/// Writes policy.json in `json.MarshalIndent` layout. Each distinct requirement is
/// serialized once and spliced in at its depth: with many scopes per policy, and
/// `docker` and `atomic` repeating each other, that is most of the document.
struct PolicyWriter<'s> {
    out: String,
    /// Requirements already serialized and indented for their depth, by address: every
    /// requirement referred to outlives the cache.
    snippets: &'s mut Snippets,
}

impl<'s> PolicyWriter<'s> {
    fn new(snippets: &'s mut Snippets) -> PolicyWriter<'s> {
        PolicyWriter {
            out: String::new(),
            snippets,
        }
    }

    fn newline(&mut self, depth: usize) {
        self.out.push('\n');
        self.out.extend(std::iter::repeat_n("  ", depth));
    }

    /// A value serialized alone, re-indented for `depth`.
    fn value<T: Serialize + ?Sized>(&mut self, value: &T, depth: usize) {
        let text = gojson::marshal_indent(value);
        self.indented(&text, depth);
    }

    fn indented(&mut self, text: &str, depth: usize) {
        let mut lines = text.split('\n');
        self.out.push_str(lines.next().unwrap_or_default());
        for line in lines {
            self.newline(depth);
            self.out.push_str(line);
        }
    }

    fn requirements(&mut self, reqs: &[&Requirement], depth: usize) {
        if reqs.is_empty() {
            self.out.push_str("[]");
            return;
        }
        self.out.push('[');
        for (i, req) in reqs.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.newline(depth + 1);
            let snippet = snippet(self.snippets, req, depth + 1);
            self.out.push_str(snippet);
        }
        self.newline(depth);
        self.out.push(']');
    }

    /// The start of an object member: separator, indent, key and `": "`.
    fn member(&mut self, first: bool, key: &str, depth: usize) {
        if !first {
            self.out.push(',');
        }
        self.newline(depth);
        self.key(key, depth);
        self.out.push_str(": ");
    }

    /// A map key: written directly when nothing in it needs escaping.
    fn key(&mut self, key: &str, depth: usize) {
        let plain = key
            .bytes()
            .all(|b| (0x20..0x80).contains(&b) && !matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&'));
        if plain {
            self.out.push('"');
            self.out.push_str(key);
            self.out.push('"');
        } else {
            self.value(key, depth);
        }
    }

    fn policy(mut self, default: &[Requirement], transports: &BTreeMap<&str, Transport>) -> String {
        let mut size = 4096;
        for transport in transports.values() {
            if let Transport::Built(map) = transport {
                for (scope, reqs) in map {
                    size += scope.len() + 24;
                    for req in reqs.iter() {
                        size += snippet(self.snippets, req, 4).len() + 12;
                    }
                }
            }
        }
        self.out.reserve(size);
        self.out.push_str("{\n  \"default\": ");
        self.value(default, 1);
        self.out.push_str(",\n  \"transports\": ");
        if transports.is_empty() {
            self.out.push_str("{}");
        } else {
            self.out.push('{');
            for (i, (name, transport)) in transports.iter().enumerate() {
                self.member(i == 0, name, 2);
                match transport {
                    Transport::Kept(map) => self.value(*map, 2),
                    Transport::Built(map) if map.is_empty() => self.out.push_str("{}"),
                    Transport::Built(map) => {
                        self.out.push('{');
                        for (j, (scope, reqs)) in map.iter().enumerate() {
                            self.member(j == 0, scope, 3);
                            self.requirements(reqs, 3);
                        }
                        self.newline(2);
                        self.out.push('}');
                    }
                }
            }
            self.newline(1);
            self.out.push('}');
        }
        self.out.push_str("\n}");
        self.out
    }
}

/// Requirements per scope; several policies on one scope in policy-name order
/// (deterministic, where MCO's order is its informer cache's).
pub fn scope_requirements<'a>(
    policies: impl IntoIterator<Item = (&'a str, &'a [String], &'a Requirement)>,
) -> ScopeMap<'a> {
    let mut sorted: Vec<_> = policies.into_iter().collect();
    sorted.sort_by_key(|(name, _, _)| *name);
    let mut map: ScopeMap = BTreeMap::new();
    for (_, scopes, requirement) in sorted {
        for s in scopes {
            map.entry(s.as_str()).or_default().push(requirement);
        }
    }
    map
}
