//! The process around the server, as a Deployment runs it: both address families on one
//! socket, metrics on their own port, and a SIGTERM that drops readiness at once but keeps
//! serving for --shutdown-delay, so no request is refused while endpoints catch up.

use testkit::paths;
use testkit::server as harness;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::{policy, review};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `curl` to the admission port over `host` (trusting only the test CA) or, without a CA,
/// to the metrics port; the body, then the status code on the last line.
async fn curl(ca: Option<&Path>, host: &str, port: u16, path: &str, body: Option<&Path>) -> String {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}"]);
    let url = match ca {
        Some(ca) => {
            cmd.arg("--cacert").arg(ca);
            cmd.args(["--resolve", &format!("localhost:{port}:{host}")]);
            format!("https://localhost:{port}{path}")
        }
        None if host.contains(':') => format!("http://[{host}]:{port}{path}"),
        None => format!("http://{host}:{port}{path}"),
    };
    if let Some(body) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()));
    }
    let out = cmd.arg(url).output().await.expect("curl is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_serving_through_the_shutdown_delay_on_both_families() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = std::process::Command::new(paths::bin())
        .args(["certs", "--dns", "localhost", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success());
    let ca = certs.join("ca.crt");
    let (port, metrics) = (free_port(), free_port());
    let log = dir.path().join("serve.log");
    let mut child = tokio::process::Command::new(paths::bin())
        .arg("serve")
        .args(["--listen", &format!("[::]:{port}")])
        .args(["--metrics-listen", &format!("[::]:{metrics}")])
        .args(["--shutdown-delay", "3", "--state-dir"])
        .arg(paths::root().join("examples"))
        .arg("--tls-cert")
        .arg(certs.join("tls.crt"))
        .arg("--tls-key")
        .arg(certs.join("tls.key"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !curl(Some(&ca), "127.0.0.1", port, "/readyz", None)
        .await
        .ends_with("200")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `[::]` takes IPv4 and IPv6 on both ports; metrics are not on the admission port.
    for host in ["127.0.0.1", "::1"] {
        assert_eq!(
            curl(Some(&ca), host, port, "/healthz", None).await,
            "ok\n\n200"
        );
        assert_eq!(
            curl(None, host, metrics, "/healthz", None).await,
            "ok\n\n200"
        );
        assert!(curl(None, host, metrics, "/metrics", None)
            .await
            .contains("# TYPE cip_webhook_admission_duration_seconds histogram"));
    }
    assert!(curl(Some(&ca), "127.0.0.1", port, "/metrics", None)
        .await
        .ends_with("404"));

    let body = dir.path().join("review.json");
    std::fs::write(
        &body,
        review(
            "ClusterImagePolicy",
            "CREATE",
            "u",
            policy("v1", &["example.org"]),
        ),
    )
    .unwrap();
    let pid = child.id().unwrap().to_string();
    let stopped_at = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Not ready on either port, and a connection opened now is still served.
    assert_eq!(
        curl(Some(&ca), "::1", port, "/readyz", None).await,
        "not ready: shutting down\n\n503"
    );
    assert!(curl(None, "127.0.0.1", metrics, "/readyz", None)
        .await
        .ends_with("503"));
    let answer = curl(Some(&ca), "127.0.0.1", port, "/validate", Some(&body)).await;
    assert!(
        answer.ends_with("200") && answer.contains(r#""allowed":true"#),
        "{answer}"
    );
    // It exits once the delay is over: never before it, and not at some later timeout
    // (the bound is loose: a loaded 2-core machine may start the process late).
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after the delay")
        .unwrap();
    let took = stopped_at.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(12),
        "{took:?}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// The serve wiring is a library function: started in process with a state directory,
/// it serves both ports, and a stop drops readiness, serves through the delay, returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_starts_in_process_and_stops_on_request() {
    use cip_webhook::runtime::{self, ServeOptions, StateSource, WebhookOptions};
    let certs = paths::root().join("certs");
    let (port, metrics) = (free_port(), free_port());
    let options = ServeOptions {
        webhook: Some(WebhookOptions {
            listen: ([127, 0, 0, 1], port).into(),
            tls_cert: certs.join("tls.crt"),
            tls_key: certs.join("tls.key"),
            admission: Default::default(),
            limits: Default::default(),
            shutdown_delay: Duration::from_secs(1),
            running_images_from: None,
        }),
        metrics_listen: Some(([127, 0, 0, 1], metrics).into()),
        metrics_tls: None,
        metrics_auth: false,
        state: StateSource::Dir(paths::root().join("examples")),
        log_json: false,
        reconcile: None,
        settle: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        runtime::run(&options, &Default::default(), async move {
            let _ = stopped.await;
        })
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !curl(None, "127.0.0.1", metrics, "/readyz", None)
        .await
        .ends_with("200")
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = certs.join("ca.crt");
    assert_eq!(
        curl(Some(&ca), "127.0.0.1", port, "/healthz", None).await,
        "ok\n\n200"
    );
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(curl(None, "127.0.0.1", metrics, "/readyz", None)
        .await
        .ends_with("503"));
    assert_eq!(
        curl(Some(&ca), "127.0.0.1", port, "/healthz", None).await,
        "ok\n\n200"
    );
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("returns after the delay")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// The metrics port over TLS (its own certificate, as OpenShift's service CA issues it):
/// probes and scrapes speak HTTPS, plain HTTP is not answered. Token review needs the
/// cluster: with --state-dir the runtime refuses to start rather than serve /metrics open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_speaks_tls_and_token_review_needs_the_cluster() {
    use cip_webhook::runtime::{self, RuntimeError, ServeOptions, StateSource};
    let certs = paths::root().join("certs");
    let metrics = free_port();
    let options = |auth: bool| ServeOptions {
        webhook: None,
        metrics_listen: Some(([127, 0, 0, 1], metrics).into()),
        metrics_tls: Some((certs.join("tls.crt"), certs.join("tls.key"))),
        metrics_auth: auth,
        state: StateSource::Dir(paths::root().join("examples")),
        log_json: false,
        reconcile: None,
        settle: Default::default(),
    };
    let refused = runtime::run(&options(true), &Default::default(), async {}).await;
    assert!(
        matches!(&refused, Err(RuntimeError::MetricsAuth(why)) if why.contains("--state-dir")),
        "{:?}",
        refused.err().map(|e| e.to_string())
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tls = options(false);
    let server = tokio::spawn(async move {
        runtime::run(&tls, &Default::default(), async move {
            let _ = stopped.await;
        })
        .await
    });
    let ca = certs.join("ca.crt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !curl(Some(&ca), "127.0.0.1", metrics, "/readyz", None)
        .await
        .ends_with("200")
    {
        assert!(Instant::now() < deadline, "never ready over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = curl(Some(&ca), "127.0.0.1", metrics, "/metrics", None).await;
    assert!(
        page.contains("cip_webhook_") && page.ends_with("200"),
        "{page}"
    );
    // Plain HTTP gets no answer from a TLS port.
    assert!(!curl(None, "127.0.0.1", metrics, "/healthz", None)
        .await
        .ends_with("200"));
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("returns")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
