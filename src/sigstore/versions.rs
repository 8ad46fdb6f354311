//! Which containers/image a policy.json entry needs, against the one an OpenShift
//! release's nodes run (CRI-O vendors it). A node whose containers/image predates a field
//! cannot parse policy.json at all (`signature/policy_config_sigstore.go` rejects unknown
//! fields), so every pull on it fails — not only those the entry covers.

use cip_core::policy::{Requirement, SigstoreSigned};

/// (OpenShift 4.x minor, containers/image 5.y minor) its CRI-O vendors, approximately:
/// 4.16 ships CRI-O 1.29 and 4.21 CRI-O 1.34.
const SHIPPED: [(u32, u32); 6] = [(16, 29), (17, 30), (18, 32), (19, 34), (20, 35), (21, 36)];

/// The containers/image 5.y minor each feature of a `sigstoreSigned` requirement needs.
fn needs(s: &SigstoreSigned) -> Vec<(u32, &'static str)> {
    let many = |v: Option<usize>| v.is_some_and(|n| n > 0);
    let mut out = Vec::new();
    if s.fulcio.is_some() {
        out.push((24, "a Fulcio root of trust"));
    }
    if s.rekor_public_key_data
        .as_ref()
        .is_some_and(|b| !b.is_empty())
        || s.rekor_public_key_path
            .as_ref()
            .is_some_and(|p| !p.is_empty())
    {
        out.push((24, "a Rekor key"));
    }
    if many(s.key_datas.as_ref().map(Vec::len))
        || many(s.key_paths.as_ref().map(Vec::len))
        || many(s.rekor_public_key_datas.as_ref().map(Vec::len))
        || many(s.rekor_public_key_paths.as_ref().map(Vec::len))
    {
        out.push((33, "several keys in one requirement (keyDatas, keyPaths)"));
    }
    if s.pki.is_some() {
        out.push((35, "a PKI root of trust"));
    }
    out
}

/// `4.N` (or `4.N.z`) as the minor N.
fn openshift_minor(version: &str) -> Option<u32> {
    let mut parts = version.trim_start_matches('v').split('.');
    (parts.next()? == "4").then_some(())?;
    parts.next()?.parse().ok()
}

/// Notes for an entry's requirements on nodes of `openshift` (a release such as 4.18.3):
/// what it needs that the release's containers/image lacks, or why that is not known.
pub fn notes(requirements: &[Requirement], openshift: &str) -> Vec<String> {
    let Some(minor) = openshift_minor(openshift) else {
        return vec![format!(
            "OpenShift {openshift:?} is not a 4.x release this tool knows the containers/image of"
        )];
    };
    let shipped = SHIPPED
        .iter()
        .find(|(m, _)| *m == minor)
        .map(|(_, c)| *c)
        .or_else(|| (minor > SHIPPED[SHIPPED.len() - 1].0).then_some(u32::MAX))
        .or_else(|| (minor < SHIPPED[0].0).then_some(0));
    let mut out = Vec::new();
    for requirement in requirements {
        let Requirement::SigstoreSigned(s) = requirement else {
            continue;
        };
        for (needed, what) in needs(s) {
            match shipped {
                Some(c) if c >= needed => {}
                Some(0) => out.push(format!(
                    "{what} needs containers/image 5.{needed} or newer; OpenShift 4.{minor} predates the releases this tool knows (4.16 runs about 5.29)"
                )),
                Some(c) => out.push(format!(
                    "{what} needs containers/image 5.{needed} or newer; OpenShift 4.{minor} nodes run about 5.{c}, which cannot parse this policy.json: every pull on them fails"
                )),
                None => {}
            }
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cip_core::policy::{Fulcio, Pki};

    fn req(s: SigstoreSigned) -> Vec<Requirement> {
        vec![Requirement::SigstoreSigned(Box::new(s))]
    }

    #[test]
    fn pki_needs_a_newer_containers_image_than_418_ships() {
        let pki = req(SigstoreSigned {
            pki: Some(Pki::default()),
            ..Default::default()
        });
        let n = notes(&pki, "4.18.12");
        assert_eq!(n.len(), 1, "{n:?}");
        assert!(
            n[0].contains("5.35") && n[0].contains("about 5.32"),
            "{n:?}"
        );
        assert!(notes(&pki, "4.20.0").is_empty());
        assert!(notes(&pki, "4.22.1").is_empty());
        assert!(notes(&pki, "4.12.0")[0].contains("predates"));
        assert!(notes(&pki, "5.0")[0].contains("not a 4.x release"));
        let keyless = req(SigstoreSigned {
            fulcio: Some(Fulcio::default()),
            ..Default::default()
        });
        assert!(notes(&keyless, "4.16").is_empty());
        assert!(notes(&[Requirement::Reject], "4.16").is_empty());
    }
}
