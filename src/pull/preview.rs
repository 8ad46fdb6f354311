//! `preview`: every running image judged as `verify` judges one, under the policies in
//! force and, with proposed files, under the policies after them; per policy, what it
//! covers, accepts, refuses, leaves unknown and newly refuses. Fetches are bounded (8 in
//! flight, 4 per registry) and cached by (endpoint, repository, reference), so the second
//! judgement of an image costs no request; the cache can be saved and reused, and a run
//! from a saved cache needs no registry at all.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use serde::Serialize;

use cip_sigstore::judge::Memo;

use crate::pull::registry::Source;
use crate::pull::verify::{verify_pinned, NodeView, Outcome};

use cip_core::running::image_id_digest;
pub use cip_core::running::{PolicyTally, Running};

/// `[namespace] image [imageID]` lines; `#` starts a comment.
pub fn parse_image_list(text: &str) -> Result<Vec<Running>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_id = |f: &str| image_id_digest(f).is_some();
        let running = match fields.as_slice() {
            [] => continue,
            [image] => (None, *image, None),
            [a, b] if is_id(b) => (None, *a, Some(*b)),
            [ns, image] => (Some(*ns), *image, None),
            [ns, image, id] if is_id(id) => (Some(*ns), *image, Some(*id)),
            _ => {
                return Err(format!(
                    "line {}: expected `[namespace] image [imageID]`, got {line:?}",
                    n + 1
                ))
            }
        };
        out.push(Running {
            namespace: running.0.map(str::to_string),
            image: running.1.to_string(),
            digest: running.2.and_then(image_id_digest),
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `kubectl get pods -A -o json`: each container status's image and `imageID` digest.
pub fn parse_pods(text: &str) -> Result<Vec<Running>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the pod list does not decode: {e}"))?;
    let items = value["items"]
        .as_array()
        .ok_or("the pod list has no `items`")?;
    let mut out = Vec::new();
    for pod in items {
        let namespace = pod["metadata"]["namespace"].as_str().map(str::to_string);
        let statuses = [
            "initContainerStatuses",
            "containerStatuses",
            "ephemeralContainerStatuses",
        ];
        for key in statuses {
            for status in pod["status"][key].as_array().into_iter().flatten() {
                let Some(image) = status["image"].as_str() else {
                    continue;
                };
                out.push(Running {
                    namespace: namespace.clone(),
                    image: image.to_string(),
                    digest: status["imageID"].as_str().and_then(image_id_digest),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub use crate::pull::cache::Cached;

/// The nodes' view for each namespace that has its own policy file, and `None` for the rest.
pub type Views = BTreeMap<Option<String>, NodeView>;

/// The views of `pool` for the cluster-wide file and each of `namespaces`.
pub fn views<'a>(
    inputs: &cip_core::render::Inputs,
    plan: &cip_core::render::Plan,
    pool: &str,
    namespaces: impl IntoIterator<Item = &'a Option<String>>,
    now: i64,
) -> Result<Views, String> {
    let mut views = Views::new();
    // Only a namespace with ImagePolicies can have a file of its own.
    let own_file = |ns: &Option<String>| {
        (inputs.image_policies.iter()).any(|p| p.metadata.namespace.as_ref() == ns.as_ref())
    };
    let wanted: std::collections::BTreeSet<&Option<String>> = (namespaces.into_iter())
        .filter(|ns| own_file(ns))
        .chain([&None])
        .collect();
    for ns in wanted {
        let view = crate::pull::verify::node_view(inputs, plan, pool, ns.as_deref(), now)?;
        // A namespace without a file of its own reads policy.json: the shared view serves.
        if ns.is_none() || view.policy_file != cip_core::ignition::POLICY_JSON_PATH {
            views.insert(ns.clone(), view);
        }
    }
    Ok(views)
}

/// Every running image judged under `views`; one outcome per image, in order. Images are
/// taken round-robin across registries, so that one registry's limit of 4 fetches does not
/// leave the others idle while the window is full of its images.
pub async fn judge_all<S: Source + Send + Sync>(
    images: &[Running],
    views: &Views,
    arch: &str,
    source: &S,
    memo: &Memo,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; images.len()];
    let judged: Vec<(usize, Outcome)> =
        futures_util::stream::iter(round_robin(images))
            .map(|i| async move {
                let r = &images[i];
                let view = views
                    .get(&r.namespace)
                    .or_else(|| views.get(&None))
                    .expect("the cluster-wide view is always there");
                let outcome =
                    match verify_pinned(view, &r.image, r.digest.as_deref(), arch, source, memo)
                        .await
                    {
                        Ok(o) => o,
                        Err(why) => Outcome::unusable(&r.image, &view.policy_file, why),
                    };
                (i, outcome)
            })
            .buffer_unordered(64)
            .collect()
            .await;
    for (i, o) in judged {
        outcomes[i] = Some(o);
    }
    outcomes.into_iter().flatten().collect()
}

/// Indexes of `images`, alternating between the registries they name.
fn round_robin(images: &[Running]) -> Vec<usize> {
    let mut by_host: BTreeMap<&str, std::collections::VecDeque<usize>> = BTreeMap::new();
    for (i, r) in images.iter().enumerate() {
        let host = r.image.split('/').next().unwrap_or_default();
        by_host.entry(host).or_default().push_back(i);
    }
    let mut order = Vec::with_capacity(images.len());
    while order.len() < images.len() {
        for queue in by_host.values_mut() {
            order.extend(queue.pop_front());
        }
    }
    order
}

/// How far ahead `expiring` looks.
pub const EXPIRY_WINDOW: i64 = 30 * 86_400;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    #[serde(flatten)]
    pub running: Running,
    pub current: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposed: Option<Outcome>,
    pub policies: Vec<String>,
}

/// Tallies per policy, from the proposed outcome where there is one, at `now` (Unix
/// seconds).
pub fn tally(reports: &[ImageReport], now: i64) -> Vec<PolicyTally> {
    let mut by: BTreeMap<String, PolicyTally> = BTreeMap::new();
    for r in reports {
        let after = r.proposed.as_ref().unwrap_or(&r.current);
        let newly =
            r.proposed.is_some() && after.verdict == "refused" && r.current.verdict != "refused";
        for p in &r.policies {
            let t = by.entry(p.clone()).or_insert_with(|| PolicyTally {
                policy: p.clone(),
                ..Default::default()
            });
            t.covered += 1;
            if r.running.digest.is_none() {
                t.by_tag += 1;
            }
            match after.verdict.as_str() {
                "accepted" => t.accepted += 1,
                "refused" => t.refused += 1,
                _ => t.unknown += 1,
            }
            if newly {
                t.newly_refused += 1;
            }
            let expires = after
                .accepted_until
                .filter(|until| after.verdict == "accepted" && *until < now + EXPIRY_WINDOW);
            if let Some(until) = expires {
                t.expiring += 1;
                if t.examples.len() < 10 {
                    t.examples.push(format!(
                        "accepted until {}: {}",
                        cip_sigstore::x509::rfc3339(until),
                        r.running.image
                    ));
                }
            }
            if after.verdict == "refused" && t.examples.len() < 10 {
                let ns = r
                    .running
                    .namespace
                    .as_deref()
                    .map(|n| format!(" (namespace {n})"))
                    .unwrap_or_default();
                let mark = if newly { "newly refused: " } else { "" };
                t.examples
                    .push(format!("{mark}{}{ns}: {}", r.running.image, after.reason));
            }
        }
    }
    by.into_values().collect()
}

/// 1 when an image would be refused (with a proposal: newly refused), else 3 when some
/// are unknown, else 0.
pub fn exit_code(reports: &[ImageReport]) -> u8 {
    let proposal = reports.iter().any(|r| r.proposed.is_some());
    let after = |r: &ImageReport| r.proposed.as_ref().unwrap_or(&r.current).verdict.clone();
    let refused = reports
        .iter()
        .any(|r| after(r) == "refused" && (!proposal || r.current.verdict != "refused"));
    if refused {
        1
    } else if reports.iter().any(|r| after(r) == "unknown") {
        3
    } else {
        0
    }
}

/// The text report.
pub fn text(reports: &[ImageReport], tallies: &[PolicyTally], requests: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let proposal = reports.iter().any(|r| r.proposed.is_some());
    let _ = writeln!(
        s,
        "{} image(s){}",
        reports.len(),
        if proposal {
            ", judged before and after the proposed files"
        } else {
            ""
        }
    );
    for t in tallies {
        let _ = write!(
            s,
            "{}: covers {} running image(s): {} accepted, {} refused at next pull, {} unknown",
            t.policy, t.covered, t.accepted, t.refused, t.unknown
        );
        if proposal {
            let _ = write!(s, "; newly refused: {}", t.newly_refused);
        }
        if t.expiring > 0 {
            let _ = write!(
                s,
                "; {} accepted until a certificate expires within 30 days",
                t.expiring
            );
        }
        s.push('\n');
        for e in &t.examples {
            let _ = writeln!(s, "  {e}");
        }
    }
    let outside = reports.iter().filter(|r| r.policies.is_empty()).count();
    let _ = writeln!(s, "outside every policy: {outside} image(s)");
    let unknown: Vec<&ImageReport> = reports
        .iter()
        .filter(|r| r.proposed.as_ref().unwrap_or(&r.current).verdict == "unknown")
        .take(10)
        .collect();
    for r in unknown {
        let o = r.proposed.as_ref().unwrap_or(&r.current);
        let _ = writeln!(s, "  unknown: {}: {}", r.running.image, o.reason);
    }
    let _ = writeln!(s, "registry requests: {requests}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(image: &str, verdict: &str, until: Option<i64>) -> ImageReport {
        let mut current = Outcome::unusable(image, "/etc/containers/policy.json", String::new());
        current.verdict = verdict.to_string();
        current.accepted_until = until;
        ImageReport {
            running: Running {
                namespace: None,
                image: image.to_string(),
                digest: None,
            },
            current,
            proposed: None,
            policies: vec!["pki".into()],
        }
    }

    #[test]
    fn pki_acceptances_that_expire_within_30_days_are_counted() {
        let now = 1_700_000_000;
        let reports = [
            report("a", "accepted", Some(now + 86_400)),
            report("b", "accepted", Some(now + EXPIRY_WINDOW + 1)),
            report("c", "accepted", None),
            report("d", "refused", Some(now + 86_400)),
        ];
        let t = &tally(&reports, now)[0];
        assert_eq!((t.covered, t.accepted, t.refused, t.expiring), (4, 3, 1, 1));
        assert_eq!(t.examples[0], "accepted until 2023-11-15T22:13:20Z: a");
        let out = text(&reports, &tally(&reports, now), 0);
        assert!(
            out.contains("1 accepted until a certificate expires within 30 days"),
            "{out}"
        );
    }
}
