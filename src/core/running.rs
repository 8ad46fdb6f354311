//! What runs in the cluster, as far as a pull's verdict goes: each pod's images (as
//! written, and the digest its container status says it runs), its node's pool and
//! architecture. The index groups them into the distinct things a node would judge —
//! (pool, architecture, namespace, image, digest) — so a verdict is reached once per
//! distinct image, never once per pod. Also the words of the `RunningImagesAccepted`
//! condition, from a policy's tally.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::MachineConfigPool;

/// One container image as it runs: its pod's namespace, the image as written, and the
/// digest it runs (from `imageID`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    pub namespace: Option<String>,
    pub image: String,
    pub digest: Option<String>,
}

/// The `sha256:<hex>` an `imageID` names (`repo@sha256:…`, `docker-pullable://…`, or bare).
pub fn image_id_digest(id: &str) -> Option<String> {
    let digest = id.rsplit('@').next()?;
    crate::registries_conf::validate_digest(digest).ok()?;
    Some(digest.to_string())
}

/// A pod, projected to what the index needs. Its strings are shared: thousands of pods
/// name the same few namespaces, nodes, images and digests, and the index keeps each once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodImages {
    pub namespace: Arc<str>,
    pub node: Option<Arc<str>>,
    /// Each container: the image as written in its status (or spec, before it started)
    /// and the `imageID` digest once the kubelet reported one.
    pub containers: Vec<(Arc<str>, Option<Arc<str>>)>,
    pub pull_secrets: Vec<String>,
}

/// A node, projected: its labels (for the pool) and its architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    pub arch: String,
}

/// Where a distinct image is judged: the pool's files, for its nodes' architecture.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placement {
    pub pool: String,
    pub arch: String,
}

/// The pool the machine-config-operator puts a node in: the pool whose `nodeSelector`
/// matches its labels, a custom pool before `worker` (custom pools are workers too);
/// none when no pool or more than one custom pool matches (the operator refuses that node).
pub fn pool_of(pools: &[MachineConfigPool], labels: &BTreeMap<String, String>) -> Option<String> {
    let matched: Vec<&str> = pools
        .iter()
        .filter(|p| {
            p.spec
                .node_selector
                .as_ref()
                .is_some_and(|s| s.matches(labels))
        })
        .map(|p| p.metadata.name.as_str())
        .collect();
    let custom: Vec<&str> = matched
        .iter()
        .copied()
        .filter(|n| *n != "worker" && *n != "master")
        .collect();
    match (custom.as_slice(), matched.as_slice()) {
        ([one], _) => Some(one.to_string()),
        ([], [one]) => Some(one.to_string()),
        ([], many) if many.contains(&"master") => Some("master".into()),
        _ => None,
    }
}

/// Pods and nodes by key, as the watches keep them.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub pods: BTreeMap<String, PodImages>,
    pub nodes: BTreeMap<String, NodeFacts>,
}

/// The distinct images to judge, per placement, with how many containers run each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Distinct {
    pub images: BTreeMap<Placement, BTreeMap<Running, usize>>,
    /// Containers not placed: pods not yet scheduled, on a node the watch has not
    /// listed, or on a node in no pool.
    pub unplaced: usize,
    /// Containers whose status names no digest yet: judged by tag (what the tag names now).
    pub by_tag: usize,
}

impl Distinct {
    pub fn len(&self) -> usize {
        self.images.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The placements' images, the same (namespace, image, digest) once.
    pub fn all(&self) -> BTreeSet<&Running> {
        self.images.values().flat_map(BTreeMap::keys).collect()
    }
}

impl Index {
    /// The distinct images of the pods, placed on their nodes' pools.
    pub fn distinct(&self, pools: &[MachineConfigPool]) -> Distinct {
        let mut out = Distinct::default();
        let placements: BTreeMap<&str, Option<Placement>> = self
            .nodes
            .iter()
            .map(|(name, n)| {
                let placement = pool_of(pools, &n.labels).map(|pool| Placement {
                    pool,
                    arch: n.arch.clone(),
                });
                (name.as_str(), placement)
            })
            .collect();
        for pod in self.pods.values() {
            let placement = pod
                .node
                .as_deref()
                .and_then(|n| placements.get(n).cloned().flatten());
            let Some(placement) = placement else {
                out.unplaced += pod.containers.len();
                continue;
            };
            let images = out.images.entry(placement).or_default();
            for (image, digest) in &pod.containers {
                if digest.is_none() {
                    out.by_tag += 1;
                }
                let running = Running {
                    namespace: Some(pod.namespace.to_string()),
                    image: image.to_string(),
                    digest: digest.as_deref().map(str::to_string),
                };
                *images.entry(running).or_default() += 1;
            }
        }
        out
    }
}

/// One policy's tally over the running images it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTally {
    pub policy: String,
    pub covered: usize,
    pub accepted: usize,
    pub refused: usize,
    pub unknown: usize,
    pub newly_refused: usize,
    /// Accepted under a PKI chain that stops verifying within 30 days: refused at the
    /// next pull after that, with no change to any policy.
    pub expiring: usize,
    /// Judged by tag: their pods report no digest yet (what the tag names now was judged).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub by_tag: usize,
    /// The first ten refused (newly refused first), with reasons.
    pub examples: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The `RunningImagesAccepted` condition's status, reason and message for a tally
/// (`None`: no image judged yet under this policy's current form).
pub fn running_images_condition(
    tally: Option<&PolicyTally>,
    indexing: bool,
) -> (&'static str, &'static str, String) {
    let Some(t) = tally else {
        return if indexing {
            (
                "Unknown",
                "Indexing",
                "the running images are being indexed and judged".into(),
            )
        } else {
            ("True", "NoneCovered", "covers no running image".into())
        };
    };
    let mut message = format!(
        "covers {} running image{}: {} accepted, {} refused at next pull, {} unknown",
        t.covered,
        if t.covered == 1 { "" } else { "s" },
        t.accepted,
        t.refused,
        t.unknown
    );
    if t.expiring > 0 {
        message.push_str(&format!(
            "; {} accepted until a certificate expires within 30 days",
            t.expiring
        ));
    }
    if t.by_tag > 0 {
        message.push_str(&format!(
            "; {} judged by tag (their pods report no digest yet)",
            t.by_tag
        ));
    }
    if !t.examples.is_empty() {
        message.push_str("; ");
        message.push_str(if t.refused > 0 {
            "refused: "
        } else {
            "expiring: "
        });
        message.push_str(&t.examples.join("; "));
    }
    let (status, reason) = if t.refused > 0 {
        ("False", "SomeRefused")
    } else if t.unknown > 0 {
        ("Unknown", "RegistryErrors")
    } else {
        ("True", "AllAccepted")
    };
    (status, reason, crate::text::clip(&message, MESSAGE_LIMIT))
}

/// What admission asks about a policy write: the running images it would newly refuse,
/// judged from a copy of the reconciler's index and signature cache (no registry call).
/// Implemented outside the core (it judges signatures); admission sees only this.
pub trait Preview: Send + Sync {
    /// Warnings for writing `object` (the policy's JSON) of `kind`; judging stops, and
    /// says how far it got, once `expired` answers true (the caller holds the clock).
    fn policy_change(
        &self,
        kind: crate::model::PolicyKind,
        object: &str,
        expired: &(dyn Fn() -> bool + Sync),
    ) -> Vec<String>;

    /// Warnings for writing the Image `cluster` (its JSON): what its registry lists
    /// newly refuse.
    fn image_change(&self, object: &str, expired: &(dyn Fn() -> bool + Sync)) -> Vec<String> {
        let _ = (object, expired);
        Vec::new()
    }
}

impl Distinct {
    /// Where `image` (as a pod names it) runs: each placement, namespace and digest with
    /// its container count, most containers first.
    pub fn runs_of(&self, image: &str) -> Vec<(Placement, Running, usize)> {
        let mut out: Vec<(Placement, Running, usize)> = self
            .images
            .iter()
            .flat_map(|(p, images)| {
                images
                    .iter()
                    .filter(|(r, _)| r.image == image)
                    .map(|(r, n)| (p.clone(), r.clone(), *n))
            })
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.2));
        out
    }
}

/// Conditions' messages are for people; long lists are cut (the API allows 32 KiB).
pub const MESSAGE_LIMIT: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LabelSelector, ObjectMeta, PoolSpec};

    fn pool(name: &str, label: &str) -> MachineConfigPool {
        MachineConfigPool {
            metadata: ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            spec: PoolSpec {
                node_selector: Some(LabelSelector {
                    match_labels: BTreeMap::from([(label.to_string(), String::new())]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    fn labels(keys: &[&str]) -> BTreeMap<String, String> {
        keys.iter()
            .map(|k| (k.to_string(), String::new()))
            .collect()
    }

    #[test]
    fn a_node_goes_to_its_custom_pool_before_worker() {
        let pools = [
            pool("master", "node-role.kubernetes.io/master"),
            pool("worker", "node-role.kubernetes.io/worker"),
            pool("infra", "node-role.kubernetes.io/infra"),
            pool("gpu", "node-role.kubernetes.io/gpu"),
        ];
        let w = "node-role.kubernetes.io/worker";
        assert_eq!(pool_of(&pools, &labels(&[w])).as_deref(), Some("worker"));
        let infra = labels(&[w, "node-role.kubernetes.io/infra"]);
        assert_eq!(pool_of(&pools, &infra).as_deref(), Some("infra"));
        let both = labels(&[
            w,
            "node-role.kubernetes.io/infra",
            "node-role.kubernetes.io/gpu",
        ]);
        assert_eq!(pool_of(&pools, &both), None);
        assert_eq!(pool_of(&pools, &labels(&["other"])), None);
    }

    #[test]
    fn the_index_judges_each_distinct_image_once() {
        let pools = [pool("worker", "node-role.kubernetes.io/worker")];
        let mut index = Index::default();
        index.nodes.insert(
            "n1".into(),
            NodeFacts {
                labels: labels(&["node-role.kubernetes.io/worker"]),
                arch: "amd64".into(),
            },
        );
        let d = format!("sha256:{}", "a".repeat(64));
        for i in 0..5 {
            index.pods.insert(
                format!("ns/p{i}"),
                PodImages {
                    namespace: "ns".into(),
                    node: Some("n1".into()),
                    containers: vec![
                        ("r/app:v1".into(), Some(d.as_str().into())),
                        ("r/side:v1".into(), None),
                    ],
                    pull_secrets: vec![],
                },
            );
        }
        index.pods.insert(
            "ns/pending".into(),
            PodImages {
                namespace: "ns".into(),
                containers: vec![("r/app:v1".into(), None)],
                ..Default::default()
            },
        );
        let distinct = index.distinct(&pools);
        assert_eq!(distinct.len(), 2);
        assert_eq!((distinct.unplaced, distinct.by_tag), (1, 5));
        let worker = &distinct.images[&Placement {
            pool: "worker".into(),
            arch: "amd64".into(),
        }];
        assert_eq!(worker.values().copied().collect::<Vec<_>>(), [5, 5]);
        let runs = distinct.runs_of("r/app:v1");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].0.pool, "worker");
        assert_eq!(runs[0].1.digest.as_deref(), Some(d.as_str()));
        assert_eq!(runs[0].2, 5);
        assert!(distinct.runs_of("r/other:v1").is_empty());
    }

    #[test]
    fn the_condition_says_what_is_refused_and_what_is_unknown() {
        let mut t = PolicyTally {
            policy: "p".into(),
            covered: 312,
            accepted: 298,
            refused: 12,
            unknown: 2,
            examples: vec!["r/a:v1 (namespace n): no signature".into()],
            ..Default::default()
        };
        let (status, reason, message) = running_images_condition(Some(&t), false);
        assert_eq!((status, reason), ("False", "SomeRefused"));
        assert_eq!(
            message,
            "covers 312 running images: 298 accepted, 12 refused at next pull, 2 unknown; refused: r/a:v1 (namespace n): no signature"
        );
        t.refused = 0;
        t.examples.clear();
        assert_eq!(
            running_images_condition(Some(&t), false).1,
            "RegistryErrors"
        );
        t.unknown = 0;
        assert_eq!(running_images_condition(Some(&t), false).0, "True");
        t.by_tag = 3;
        assert!(running_images_condition(Some(&t), false)
            .2
            .ends_with("; 3 judged by tag (their pods report no digest yet)"));
        assert_eq!(running_images_condition(None, true).1, "Indexing");
        assert_eq!(running_images_condition(None, false).0, "True");
    }
}
