//! The real-API-server tier: kube-apiserver and etcd built from the pinned Go modules
//! (`scripts/upstream.sh`), the upstream CRDs installed as they are, the project's RBAC
//! and admission policy in force, and kubectl at the server's version.

mod bench_running_images;
mod cel;
mod differential;
mod manifests;
mod reconcile;
mod running_images;
mod seed_flow;

/// The versions this suite runs against, as the binaries report them; the pins say
/// which they must be.
#[test]
fn versions_are_the_pinned_ones() {
    let line = testkit::kube::versions();
    let kubernetes = testkit::upstream::pinned("kube", "k8s.io/kubernetes");
    let etcd = testkit::upstream::pinned("kube", "go.etcd.io/etcd/server/v3");
    assert!(
        line.starts_with(&format!("kube-apiserver {kubernetes}, ")),
        "{line}"
    );
    assert!(
        line.ends_with(&format!("etcd {}", etcd.trim_start_matches('v'))),
        "{line}"
    );
    println!("{line}");
}
