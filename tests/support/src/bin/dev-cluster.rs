//! A real kube-apiserver for trying cip-webhook by hand, as the tests start it: etcd and
//! kube-apiserver from the pinned modules (`scripts/upstream.sh` first), the upstream CRDs,
//! the project's RBAC and admission policy, its webhook configurations calling a local
//! port, and Image, ClusterVersion, pools and MachineConfigs from examples/. Prints the
//! kubeconfigs and the command that serves the webhook; Ctrl-C stops everything.
//!
//!     cargo run -p cip-testkit --bin dev-cluster [-- --v1alpha1]

use testkit::cluster::{Cluster, EXAMPLES, RECONCILER_ACCOUNT};
use testkit::upstream::{Crd, INPUTS_V1};

#[tokio::main]
async fn main() {
    let v1alpha1 = std::env::args().any(|a| a == "--v1alpha1");
    let crds: Vec<Crd> = INPUTS_V1
        .into_iter()
        .map(|c| match (c, v1alpha1) {
            (Crd::ClusterImagePolicyV1, true) => Crd::ClusterImagePolicyV1alpha1,
            (Crd::ImagePolicyV1, true) => Crd::ImagePolicyV1alpha1,
            (c, _) => c,
        })
        .collect();
    testkit::kube::versions();
    let c = Cluster::real(&crds).await;
    c.seed_files(EXAMPLES).await;
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
