//! The reconciler's background pass over what runs: each distinct image of the index
//! judged on its pool as `preview` judges it, and each policy's tally. Fetches go through
//! the caller's [`Source`] (bounded and cached); the verdicts are `cip_sigstore`'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use cip_core::explain;
use cip_core::model::{ClusterImagePolicy, Image, PolicyKind, RegistrySources};
use cip_core::registries_conf::Reference;
use cip_core::render::{self, Inputs, Plan, RenderOptions};
use cip_core::running::{Distinct, Placement, PolicyTally, Running};
use cip_sigstore::judge::Memo;

use crate::pull::cache::Cached;
use crate::pull::preview::{judge_all, tally, views, ImageReport};
use crate::pull::registry::{Client, Source};
use crate::pull::verify::{same_pull, verify_parsed, Outcome, Parsed};

/// One pass's verdicts.
#[derive(Debug, Default)]
pub struct Judged {
    pub reports: Vec<(Placement, ImageReport)>,
    pub tallies: Vec<PolicyTally>,
    /// Pools the plan cannot give node files for, with why (their images are not judged).
    pub skipped: Vec<String>,
}

impl Judged {
    /// Distinct images by verdict: (accepted, refused, unknown).
    pub fn by_verdict(&self) -> (usize, usize, usize) {
        let mut out = (0, 0, 0);
        for (_, r) in &self.reports {
            match r.current.verdict.as_str() {
                "accepted" => out.0 += 1,
                "refused" => out.1 += 1,
                _ => out.2 += 1,
            }
        }
        out
    }
}

/// Judges `distinct` under the plan, at `now` (Unix seconds).
pub async fn judge<S: Source + Send + Sync>(
    inputs: &Inputs,
    plan: &Plan,
    distinct: &Distinct,
    source: &S,
    now: i64,
    memo: &Memo,
) -> Judged {
    let mut judged = Judged::default();
    for (placement, images) in &distinct.images {
        let running: Vec<Running> = images.keys().cloned().collect();
        let namespaces: Vec<Option<String>> = running.iter().map(|r| r.namespace.clone()).collect();
        let views = match views(inputs, plan, &placement.pool, &namespaces, now) {
            Ok(v) => v,
            Err(why) => {
                judged
                    .skipped
                    .push(format!("pool {}: {why}", placement.pool));
                continue;
            }
        };
        let outcomes = judge_all(&running, &views, &placement.arch, source, memo).await;
        for (r, current) in running.into_iter().zip(outcomes) {
            let policies = explain::policies_behind(
                plan,
                inputs,
                current.entry.as_deref(),
                r.namespace.as_deref(),
                current.policy_file != cip_core::ignition::POLICY_JSON_PATH,
            );
            let report = ImageReport {
                running: r,
                current,
                proposed: None,
                policies,
            };
            judged.reports.push((placement.clone(), report));
        }
    }
    let reports: Vec<ImageReport> = judged.reports.iter().map(|(_, r)| r.clone()).collect();
    judged.tallies = tally(&reports, now);
    judged
}

/// What admission judges a policy write against: the cluster as rendered (inputs, plan),
/// the lease holder's last verdict on each distinct running image, and a copy of its
/// cache that no request can go past.
pub struct Copy {
    pub inputs: Arc<Inputs>,
    pub plan: Plan,
    pub options: RenderOptions,
    pub before: BTreeMap<(Placement, Running), String>,
    pub cache: Cached<Client>,
    /// When the lease holder last judged (Unix seconds: the pass that made the copy, or a
    /// later one that left it as it was), and after how long the copy no longer speaks for
    /// the cluster.
    taken_at: AtomicI64,
    pub stale_after: i64,
    /// The clock, read at the edge for each question.
    pub clock: fn() -> i64,
    /// Signature checks made for earlier questions, handed from copy to copy: an edit that
    /// keeps the keys it covers verifies nothing again.
    pub memo: Arc<Memo>,
    /// Each image as written, parsed once for every question (or why it does not parse).
    prepared: HashMap<String, Result<Prepared, String>>,
}

/// An image's references, parsed when the copy loads.
struct Prepared {
    intended: Reference,
    /// The scopes that cover it (what a policy's scopes are matched against).
    scopes: Vec<String>,
    /// Its policy.json lookup candidates.
    lookup: Vec<String>,
}

impl Prepared {
    fn of(image: &str) -> Result<Prepared, String> {
        let intended = cip_sigstore::identity::pulled_reference(image)?;
        Ok(Prepared {
            scopes: explain::candidates(&intended.name, &intended.to_string()),
            lookup: explain::lookup_candidates(image)?,
            intended,
        })
    }

    fn parsed<'a>(&'a self, image: &'a str) -> Parsed<'a> {
        Parsed {
            image,
            intended: &self.intended,
            lookup: &self.lookup,
        }
    }
}

/// A pass's judgement as admission replicas copy it (`/running-images`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    pub taken_at: i64,
    pub stale_after: i64,
    pub images: Vec<Judgement>,
    /// [`Cached::save`]'s text.
    pub cache: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Judgement {
    pub pool: String,
    pub arch: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub image: String,
    #[serde(default)]
    pub digest: Option<String>,
    pub verdict: String,
}

impl Transfer {
    pub fn of(
        judged: &Judged,
        cache: &Cached<Client>,
        taken_at: i64,
        stale_after: i64,
    ) -> Transfer {
        Transfer {
            taken_at,
            stale_after,
            images: Transfer::judgements(judged),
            cache: cache.save(),
        }
    }

    /// Each distinct image's verdict of the pass.
    pub fn judgements(judged: &Judged) -> Vec<Judgement> {
        judged
            .reports
            .iter()
            .map(|(p, r)| Judgement {
                pool: p.pool.clone(),
                arch: p.arch.clone(),
                namespace: r.running.namespace.clone(),
                image: r.running.image.clone(),
                digest: r.running.digest.clone(),
                verdict: r.current.verdict.clone(),
            })
            .collect()
    }
}

impl Copy {
    /// A copy over the cluster as this process renders it.
    pub fn from_transfer(
        inputs: Arc<Inputs>,
        plan: Plan,
        options: RenderOptions,
        t: Transfer,
        clock: fn() -> i64,
        memo: Arc<Memo>,
    ) -> Result<Copy, String> {
        let cache = Cached::new(None);
        cache.load(&t.cache)?;
        let before = t
            .images
            .into_iter()
            .map(|j| {
                let placement = Placement {
                    pool: j.pool,
                    arch: j.arch,
                };
                let running = Running {
                    namespace: j.namespace,
                    image: j.image,
                    digest: j.digest,
                };
                ((placement, running), j.verdict)
            })
            .collect::<BTreeMap<(Placement, Running), String>>();
        let prepared = before
            .keys()
            .map(|(_, r)| (r.image.clone(), Prepared::of(&r.image)))
            .collect();
        Ok(Copy {
            prepared,
            inputs,
            plan,
            options,
            before,
            cache,
            taken_at: AtomicI64::new(t.taken_at),
            stale_after: t.stale_after,
            clock,
            memo,
        })
    }

    /// Judges every image under the cluster as it is, so that the signature checks of the
    /// keys in force are in the memo before a review needs them, and each signature's
    /// signers with them (a review bringing a new key then runs no curve for those).
    /// Returns how many images it judged.
    pub fn warm(&self) -> usize {
        let now = (self.clock)();
        let all = self.before.keys().collect();
        let memo = self.memo.recovering();
        let how = Judging {
            expired: &|| false,
            now,
            memo: &memo,
        };
        self.judge_change(&self.inputs, &self.plan, all, false, &how)
            .judged
    }

    /// A later pass of the lease holder found what this copy holds.
    pub fn renew(&self, taken_at: i64) {
        self.taken_at.fetch_max(taken_at, Ordering::Relaxed);
    }

    /// What a warning says instead of judging from a copy too old to speak for the cluster.
    fn stale(&self, now: i64) -> Option<String> {
        let age = now - self.taken_at.load(Ordering::Relaxed);
        (age > self.stale_after).then(|| {
            format!(
                "running-images preview unavailable: the last judgement of the running images is {age} s old"
            )
        })
    }

    /// The inputs with `policy` created or replacing its namesake; its scopes before.
    fn with(&self, kind: PolicyKind, policy: ClusterImagePolicy) -> (Inputs, Vec<String>) {
        let mut inputs = (*self.inputs).clone();
        let list = match kind {
            PolicyKind::Cluster => &mut inputs.policies,
            PolicyKind::Namespaced => &mut inputs.image_policies,
        };
        let same = |p: &Arc<ClusterImagePolicy>| {
            p.metadata.name == policy.metadata.name
                && p.metadata.namespace == policy.metadata.namespace
        };
        let before: Vec<String> = list
            .iter()
            .filter(|p| same(p))
            .flat_map(|p| p.scopes().to_vec())
            .collect();
        list.retain(|p| !same(p));
        list.push(Arc::new(policy));
        (inputs, before)
    }
}

/// How a newly refused image is counted in the warning.
fn category(reason: &str) -> &'static str {
    if reason.contains("no signature exists") {
        "no signature"
    } else if reason.contains("rejected by policy") {
        "rejected"
    } else if reason.contains("identity") {
        "identity"
    } else if reason.contains("ignature") {
        "signature"
    } else {
        "other"
    }
}

impl cip_core::running::Preview for Copy {
    fn policy_change(
        &self,
        kind: PolicyKind,
        object: &str,
        expired: &(dyn Fn() -> bool + Sync),
    ) -> Vec<String> {
        let now = (self.clock)();
        if let Some(stale) = self.stale(now) {
            return vec![stale];
        }
        let Ok(policy) = serde_json::from_str::<ClusterImagePolicy>(object) else {
            return Vec::new();
        };
        let namespace = (kind == PolicyKind::Namespaced).then(|| policy.namespace().to_string());
        let (inputs, mut scopes) = self.with(kind, policy.clone());
        scopes.extend(policy.scopes().iter().cloned());
        let Ok(plan) = render::plan(&inputs, &self.options) else {
            return Vec::new();
        };
        let affected = self.affected(Some(&scopes), namespace.as_deref());
        let how = Judging {
            expired,
            now,
            memo: &self.memo,
        };
        let change = self.judge_change(&inputs, &plan, affected, true, &how);
        change.warning().into_iter().collect()
    }

    fn image_change(&self, object: &str, expired: &(dyn Fn() -> bool + Sync)) -> Vec<String> {
        let now = (self.clock)();
        if let Some(stale) = self.stale(now) {
            return vec![stale];
        }
        let Ok(image) = serde_json::from_str::<Image>(object) else {
            return Vec::new();
        };
        let before = self
            .inputs
            .image
            .as_ref()
            .map(|i| i.spec.registry_sources.clone())
            .unwrap_or_default();
        let after = &image.spec.registry_sources;
        let mut inputs = (*self.inputs).clone();
        inputs.image = Some(image.clone());
        let Ok(plan) = render::plan(&inputs, &self.options) else {
            return Vec::new();
        };
        let scopes = registry_list_change(&before, after);
        let affected = self.affected(scopes.as_deref(), None);
        let how = Judging {
            expired,
            now,
            memo: &self.memo,
        };
        let change = self.judge_change(&inputs, &plan, affected, true, &how);
        change.warning().into_iter().collect()
    }
}

/// The scopes whose policy.json entries a registry-list change can alter: the registries
/// added to or removed from either list; `None` (every image) when the allowed list
/// starts or stops applying, since that moves the default.
fn registry_list_change(before: &RegistrySources, after: &RegistrySources) -> Option<Vec<String>> {
    if before.allowed_registries.is_empty() != after.allowed_registries.is_empty() {
        return None;
    }
    let differ = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .filter(|x| !b.contains(x))
            .chain(b.iter().filter(|x| !a.contains(x)))
            .cloned()
            .collect()
    };
    let mut scopes = differ(&before.allowed_registries, &after.allowed_registries);
    scopes.extend(differ(
        &before.blocked_registries,
        &after.blocked_registries,
    ));
    Some(scopes)
}

/// What one thread judged: examples by their place among the affected images.
#[derive(Default)]
struct Part {
    judged: usize,
    newly: BTreeMap<&'static str, usize>,
    examples: Vec<(usize, String)>,
    cut_short: bool,
}

/// The images a change touches, judged before and after.
#[derive(Default)]
struct Change {
    covered: usize,
    judged: usize,
    newly: BTreeMap<&'static str, usize>,
    examples: Vec<String>,
    cut_short: bool,
}

impl Change {
    fn warning(&self) -> Option<String> {
        let newly: usize = self.newly.values().sum();
        if newly == 0 && !self.cut_short {
            return None;
        }
        let counts: Vec<String> = self.newly.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let of = if self.cut_short {
            format!(
                "at least {newly} of the first {} of {}",
                self.judged, self.covered
            )
        } else {
            format!("{newly} of {}", self.covered)
        };
        let mut w =
            format!("this change newly refuses {of} covered running images at their next pull");
        if !counts.is_empty() {
            w.push_str(&format!(" ({})", counts.join(", ")));
        }
        if !self.examples.is_empty() {
            w.push_str(&format!(", e.g. {}", self.examples.join("; ")));
        }
        Some(cip_core::text::clip(&w, 1024))
    }
}

/// How a change is judged: until `expired`, at `now`, through `memo` (recovering signers
/// while warming, plain for a review).
struct Judging<'a> {
    expired: &'a (dyn Fn() -> bool + Sync),
    now: i64,
    memo: &'a Memo,
}

/// The views of one pool: the cluster-wide file's and each namespace file's.
type PoolViews = BTreeMap<String, crate::pull::preview::Views>;

impl Copy {
    /// The images a change touches: by scope (every image for `None`), and by namespace
    /// for an ImagePolicy.
    fn affected(
        &self,
        scopes: Option<&[String]>,
        namespace: Option<&str>,
    ) -> Vec<&(Placement, Running)> {
        let touched = |r: &Running| {
            namespace.is_none_or(|ns| r.namespace.as_deref() == Some(ns))
                && scopes.is_none_or(|scopes| {
                    let prepared = self.prepared.get(&r.image).and_then(|p| p.as_ref().ok());
                    prepared.is_some_and(|p| p.scopes.iter().any(|c| scopes.contains(c)))
                })
        };
        self.before.keys().filter(|(_, r)| touched(r)).collect()
    }

    /// The images the change touches, judged after it on as many threads as there are
    /// cores (up to 4), each from the copy. With `unchanged_pass`, an image whose pull
    /// meets the same requirements, mirrors and attachments after the change as before
    /// keeps its verdict unjudged: the change cannot move it.
    fn judge_change(
        &self,
        inputs: &Inputs,
        plan: &Plan,
        affected: Vec<&(Placement, Running)>,
        unchanged_pass: bool,
        how: &Judging,
    ) -> Change {
        let namespaces: Vec<Option<String>> =
            affected.iter().map(|(_, r)| r.namespace.clone()).collect();
        let pool_views = |inputs: &Inputs, plan: &Plan| {
            let mut pools = PoolViews::new();
            for (placement, _) in &affected {
                if !pools.contains_key(&placement.pool) {
                    if let Ok(v) = views(inputs, plan, &placement.pool, &namespaces, how.now) {
                        pools.insert(placement.pool.clone(), v);
                    }
                }
            }
            pools
        };
        let pools = pool_views(inputs, plan);
        let before = unchanged_pass.then(|| pool_views(&self.inputs, &self.plan));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        // Images are claimed one at a time, so a thread the scheduler holds back costs
        // the others nothing, and what a deadline leaves judged is the first K images.
        let next = AtomicUsize::new(0);
        let parts: Vec<Part> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads.min(affected.len()).max(1))
                .map(|_| {
                    scope.spawn(|| self.judge_part(&affected, &next, &pools, before.as_ref(), how))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut change = Change {
            covered: affected.len(),
            ..Change::default()
        };
        let mut examples = Vec::new();
        for part in parts {
            change.judged += part.judged;
            change.cut_short |= part.cut_short;
            for (k, n) in part.newly {
                *change.newly.entry(k).or_default() += n;
            }
            examples.extend(part.examples);
        }
        examples.sort_unstable();
        change.examples = examples.into_iter().take(3).map(|(_, e)| e).collect();
        change
    }

    /// One thread's share: the next unclaimed image until none is left or time is up.
    fn judge_part(
        &self,
        affected: &[&(Placement, Running)],
        next: &AtomicUsize,
        pools: &PoolViews,
        before: Option<&PoolViews>,
        how: &Judging,
    ) -> Part {
        let mut part = Part::default();
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
            part.cut_short = true;
            return part;
        };
        loop {
            if (how.expired)() {
                part.cut_short = next.load(Ordering::Relaxed) < affected.len();
                break;
            }
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some((placement, running)) = affected.get(index).copied() else {
                break;
            };
            let Some(view) = pools.get(&placement.pool) else {
                continue;
            };
            let node = view
                .get(&running.namespace)
                .or_else(|| view.get(&None))
                .expect("the cluster-wide view");
            let old = before
                .and_then(|b| b.get(&placement.pool))
                .and_then(|v| v.get(&running.namespace).or_else(|| v.get(&None)));
            let pinned = running.digest.as_deref();
            let parsed = match self.prepared.get(&running.image) {
                Some(Ok(p)) => Ok(p.parsed(&running.image)),
                Some(Err(why)) => Err(why.clone()),
                None => Err(format!("{} is not in the copy", running.image)),
            };
            if old.is_some_and(|old| {
                parsed
                    .as_ref()
                    .is_ok_and(|p| same_pull(old, node, p, pinned))
            }) {
                part.judged += 1;
                continue;
            }
            let after = match parsed {
                Ok(p) => runtime.block_on(verify_parsed(
                    node,
                    &p,
                    pinned,
                    &placement.arch,
                    &self.cache,
                    how.memo,
                )),
                Err(why) => Outcome::unusable(&running.image, &node.policy_file, why),
            };
            part.judged += 1;
            let before = &self.before[&(placement.clone(), running.clone())];
            if after.verdict == "refused" && before != "refused" {
                *part.newly.entry(category(&after.reason)).or_default() += 1;
                if part.examples.len() < 3 {
                    let example = format!("{}: {}", running.image, after.reason);
                    part.examples.push((index, example));
                }
            }
        }
        part
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cip_core::running::Preview;

    #[test]
    fn the_warning_counts_by_cause_and_says_when_it_was_cut_short() {
        let mut change = Change {
            covered: 312,
            judged: 312,
            newly: BTreeMap::from([("no signature", 12), ("identity", 5)]),
            examples: vec!["r/a:v1: A signature was required, but no signature exists".into()],
            cut_short: false,
        };
        assert_eq!(
            change.warning().unwrap(),
            "this change newly refuses 17 of 312 covered running images at their next pull (identity 5, no signature 12), e.g. r/a:v1: A signature was required, but no signature exists"
        );
        change.cut_short = true;
        change.judged = 40;
        assert!(change
            .warning()
            .unwrap()
            .starts_with("this change newly refuses at least 17 of the first 40 of 312 covered"));
        assert_eq!(Change::default().warning(), None);
        assert_eq!(
            category("A signature was required, but no signature exists"),
            "no signature"
        );
        assert_eq!(
            category("Signature for identity \"x\" is not accepted"),
            "identity"
        );
    }

    fn copy(before: &[(&str, &str)], taken_at: i64, clock: fn() -> i64) -> Copy {
        let images = before
            .iter()
            .map(|(image, verdict)| Judgement {
                pool: "worker".into(),
                arch: "amd64".into(),
                namespace: Some("apps".into()),
                image: image.to_string(),
                digest: None,
                verdict: verdict.to_string(),
            })
            .collect();
        let t = Transfer {
            taken_at,
            stale_after: 600,
            images,
            cache: String::from("{\"manifests\":[],\"blobs\":[]}"),
        };
        let inputs = Arc::new(Inputs::default());
        let plan = render::plan(&inputs, &RenderOptions::default()).unwrap();
        Copy::from_transfer(
            inputs,
            plan,
            RenderOptions::default(),
            t,
            clock,
            Arc::default(),
        )
        .unwrap()
    }

    const POLICY: &str = r#"{"apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
        "metadata": {"name": "p"}, "spec": {"scopes": ["quay.io/team"], "policy": {"rootOfTrust":
        {"policyType": "PublicKey", "publicKey": {"keyData": "eA=="}}}}}"#;

    #[test]
    fn a_stale_copy_says_so_instead_of_judging() {
        let c = copy(&[("quay.io/team/a:v1", "accepted")], 1_000, || 2_000);
        assert_eq!(
            c.policy_change(PolicyKind::Cluster, POLICY, &|| false),
            ["running-images preview unavailable: the last judgement of the running images is 1000 s old"]
        );
        // A later pass that found the same: current again (an older word changes nothing).
        c.renew(1_900);
        c.renew(1_200);
        let w = c.policy_change(PolicyKind::Cluster, POLICY, &|| false);
        assert!(!w.iter().any(|w| w.contains("unavailable")), "{w:?}");
    }

    fn image(allowed: &[&str], blocked: &[&str]) -> String {
        serde_json::json!({"apiVersion": "config.openshift.io/v1", "kind": "Image",
            "metadata": {"name": "cluster"},
            "spec": {"registrySources": {"allowedRegistries": allowed, "blockedRegistries": blocked}}})
        .to_string()
    }

    #[test]
    fn a_registry_list_change_warns_for_the_images_it_newly_refuses() {
        let c = copy(
            &[
                ("quay.io/team/a:v1", "accepted"),
                ("docker.io/library/b:v1", "accepted"),
            ],
            1_000,
            || 1_010,
        );
        assert_eq!(
            c.image_change(&image(&[], &["quay.io"]), &|| false),
            ["this change newly refuses 1 of 1 covered running images at their next pull (rejected 1), e.g. quay.io/team/a:v1: Running image docker://quay.io/team/a:v1 is rejected by policy."]
        );
        // An allowed list moves the default: every running image is covered.
        let w = c.image_change(&image(&["quay.io"], &[]), &|| false);
        assert!(
            w[0].starts_with("this change newly refuses 1 of 2 covered running images at their next pull (rejected 1), e.g. docker.io/library/b:v1"),
            "{w:?}"
        );
        // A list that blocks nothing running warns of nothing.
        assert!(c
            .image_change(&image(&[], &["elsewhere.example.com"]), &|| false)
            .is_empty());
        assert!(c.image_change("not json", &|| false).is_empty());
        assert_eq!(
            registry_list_change(
                &RegistrySources::default(),
                &serde_json::from_str(r#"{"blockedRegistries": ["a.example.com"]}"#).unwrap()
            ),
            Some(vec!["a.example.com".to_string()])
        );
    }

    #[test]
    fn past_the_deadline_the_warning_says_how_far_it_got() {
        let c = copy(
            &[
                ("quay.io/team/a:v1", "accepted"),
                ("quay.io/team/b:v1", "accepted"),
                ("docker.io/other:v1", "accepted"),
            ],
            1_000,
            || 1_010,
        );
        assert_eq!(
            c.policy_change(PolicyKind::Cluster, POLICY, &|| true),
            ["this change newly refuses at least 0 of the first 0 of 2 covered running images at their next pull"]
        );
        // An ImagePolicy touches its own namespace only.
        let other_namespace = POLICY
            .replace("ClusterImagePolicy", "ImagePolicy")
            .replace(r#""name": "p""#, r#""name": "p", "namespace": "elsewhere""#);
        assert_eq!(
            c.policy_change(PolicyKind::Namespaced, &other_namespace, &|| false),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_deadline_leaves_the_first_images_judged_and_names_the_first_refused() {
        let names: Vec<String> = (0..40)
            .map(|n| format!("quay.io/team/i{n:02}:v1"))
            .collect();
        let before: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "accepted")).collect();
        let c = copy(&before, 1_000, || 1_010);
        // Time is up after ten claims, whichever threads make them.
        for _ in 0..20 {
            let asked = AtomicUsize::new(0);
            let expired = || asked.fetch_add(1, Ordering::SeqCst) >= 10;
            let w = c.image_change(&image(&[], &["quay.io"]), &expired);
            assert_eq!(
                w,
                ["this change newly refuses at least 10 of the first 10 of 40 covered running images at their next pull (rejected 10), e.g. quay.io/team/i00:v1: Running image docker://quay.io/team/i00:v1 is rejected by policy.; quay.io/team/i01:v1: Running image docker://quay.io/team/i01:v1 is rejected by policy.; quay.io/team/i02:v1: Running image docker://quay.io/team/i02:v1 is rejected by policy."]
            );
        }
    }
}
