//! A real kube-apiserver for trying cip-webhook by hand, as the tests start it: etcd and
//! kube-apiserver from the pinned modules (`scripts/upstream.sh` first), the upstream CRDs,
//! the project's RBAC and admission policy, its webhook configurations calling a local
//! port, and Image, ClusterVersion, pools and MachineConfigs from examples/. Prints the
//! kubeconfigs and the command that serves the webhook; Ctrl-C stops everything.
//!
//!     cargo run -p cip-testkit --bin dev-cluster [-- --v1alpha1]

use testkit::cluster::{Cluster, RECONCILER_ACCOUNT};
use testkit::upstream::Crd;

#[tokio::main]
async fn main() {
    let v1alpha1 = std::env::args().any(|a| a == "--v1alpha1");
    let (cip, ip) = if v1alpha1 {
        (Crd::ClusterImagePolicyV1alpha1, Crd::ImagePolicyV1alpha1)
    } else {
        (Crd::ClusterImagePolicyV1, Crd::ImagePolicyV1)
    };
    let crds: Vec<Crd> = Crd::ALL
        .into_iter()
        .filter(|c| {
            !matches!(
                c,
                Crd::ClusterImagePolicyV1 | Crd::ClusterImagePolicyV1alpha1
            )
        })
        .filter(|c| !matches!(c, Crd::ImagePolicyV1 | Crd::ImagePolicyV1alpha1))
        .chain([cip, ip])
        .collect();
    testkit::kube::versions();
    let c = Cluster::real(&crds).await;
    c.seed_files(&[
        "examples/image.yaml",
        "examples/clusterversion.yaml",
        "examples/pools.yaml",
        "examples/machineconfigs/01-master-container-runtime.yaml",
        "examples/machineconfigs/01-worker-container-runtime.yaml",
        "examples/machineconfigs/99-master-generated-registries.yaml",
        "examples/machineconfigs/99-worker-generated-registries.yaml",
    ])
    .await;
    let serving = c.kubeconfig_for(RECONCILER_ACCOUNT, &[]).await;
    let certs = c.path("certs");
    println!("kubeconfig (cluster-admin): {}", c.kubeconfig().display());
    println!(
        "the webhook configurations call https://localhost:{}; serve them with:",
        c.webhook_port()
    );
    println!(
        "  cargo run -- serve --listen 127.0.0.1:{} --tls-cert {} --tls-key {} --kubeconfig {}",
        c.webhook_port(),
        certs.join("tls.crt").display(),
        certs.join("tls.key").display(),
        serving.display()
    );
    println!("(as the reconciler's service account: it admits and reconciles). Ctrl-C stops the cluster.");
    tokio::signal::ctrl_c().await.unwrap();
}
