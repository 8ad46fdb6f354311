//! `apisim`: the test API simulator as a program, to try cip-webhook without a cluster.
//! Prints the kubeconfig path and serves until interrupted.

use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config = apisim::Config::default();
    let mut out: Option<PathBuf> = None;
    let mut routes = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--crds" => config.crds.push(
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("--crds needs a path"))?
                    .into(),
            ),
            "--kubeconfig" => {
                out = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--kubeconfig needs a path"))?
                        .into(),
                )
            }
            "--listen" => {
                config.listen = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen needs ADDR:PORT"))?
                    .parse()?
            }
            "--route-service" => {
                let spec = args.next().ok_or_else(|| {
                    anyhow::anyhow!("--route-service needs NAMESPACE/NAME:PORT=ADDR:PORT")
                })?;
                routes.push(parse_route(&spec)?);
            }
            "-h" | "--help" => {
                println!(
                    "usage: apisim [--crds PATH]... [--kubeconfig OUT] [--listen 127.0.0.1:6443] [--route-service NAMESPACE/NAME:PORT=ADDR:PORT]...\n\n--route-service sends the webhook calls a Service would receive to a local address\n(e.g. cip-webhook/cip-webhook:443=127.0.0.1:8443 for manifests/base/webhooks.yaml)."
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let sim = apisim::Simulator::start(config).await?;
    for (namespace, name, port, addr) in &routes {
        sim.route_service(namespace, name, *port, *addr);
    }
    let path = match out {
        Some(p) => {
            std::fs::copy(sim.kubeconfig(), &p)?;
            p
        }
        None => sim.kubeconfig().to_path_buf(),
    };
    println!(
        "apisim serving at {}; KUBECONFIG={}",
        sim.url(),
        path.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// `NAMESPACE/NAME:PORT=ADDR:PORT`.
fn parse_route(spec: &str) -> anyhow::Result<(String, String, u16, std::net::SocketAddr)> {
    let bad =
        || anyhow::anyhow!("--route-service {spec:?}: expected NAMESPACE/NAME:PORT=ADDR:PORT");
    let (service, addr) = spec.split_once('=').ok_or_else(bad)?;
    let (namespace, rest) = service.split_once('/').ok_or_else(bad)?;
    let (name, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    Ok((
        namespace.to_string(),
        name.to_string(),
        port.parse().map_err(|_| bad())?,
        addr.parse().map_err(|_| bad())?,
    ))
}
