//! `apisim`: the test API simulator as a program, to try cip-webhook without a cluster.
//! Prints the kubeconfig path and serves until interrupted.

use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config = apisim::Config::default();
    let mut out: Option<PathBuf> = None;
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
            "-h" | "--help" => {
                println!(
                    "usage: apisim [--crds PATH]... [--kubeconfig OUT] [--listen 127.0.0.1:6443]"
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let sim = apisim::Simulator::start(config).await?;
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
