//! Hostile and broken input, as a client on the cluster network could send it: connections
//! that never speak or never finish, bodies that hold memory, state directories with FIFOs,
//! symlink loops and inconsistent objects, names that would forge log lines, certificate
//! files replaced behind the server's back. Each case held the server before (issue 13).

use testkit::paths;
use testkit::server as harness;

use std::time::{Duration, Instant};

use harness::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use cip_webhook::webhook::admission;
use cip_webhook::webhook::server::Limits;

fn limits() -> Limits {
    Limits {
        max_connections: 8,
        request_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}

/// Reads until the server closes the connection; how long that took.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("still open after {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_state_has_a_deadline() {
    let s = start_with(admission::Config::default(), limits(), Some(&STATE)).await;
    // Never a byte after the handshake.
    let mut silent = connect(s.addr, &s.ca, &[b"http/1.1"]).await.unwrap();
    // Half an HTTP/2 preface.
    let mut half = connect(s.addr, &s.ca, &[b"h2"]).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // A whole preface and settings, then nothing: an HTTP/2 connection with no stream.
    let mut idle_h2 = connect(s.addr, &s.ca, &[b"h2"]).await.unwrap();
    idle_h2
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // Half the headers of a request.
    let mut slow = connect(s.addr, &s.ca, &[b"http/1.1"]).await.unwrap();
    slow.write_all(b"POST /validate HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let within = Duration::from_secs(5);
    let (a, b, c, d) = tokio::join!(
        closed_after(&mut silent, within),
        closed_after(&mut half, within),
        closed_after(&mut idle_h2, within),
        closed_after(&mut slow, within),
    );
    for took in [a, b, c, d] {
        assert!(
            took < Duration::from_millis(2500),
            "{a:?} {b:?} {c:?} {d:?}"
        );
    }
    // A keep-alive connection idle after a request is closed after the idle timeout.
    let mut kept = connect(s.addr, &s.ca, &[b"http/1.1"]).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let took = closed_after(&mut kept, within).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_make_room_when_every_slot_is_taken() {
    let mut limits = limits();
    // Long deadlines: only the shedding can free the slots in time.
    limits.request_timeout = Duration::from_secs(30);
    limits.idle_timeout = Duration::from_secs(30);
    let s = start_with(admission::Config::default(), limits, Some(&STATE)).await;
    let mut holders = Vec::new();
    for _ in 0..8 {
        holders.push(connect(s.addr, &s.ca, &[b"h2"]).await.unwrap());
    }
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        send(&s, "GET", "/healthz", Vec::new()),
    )
    .await
    .expect("answered although 8 idle connections held every slot");
    assert_eq!((status, body), (StatusCode::OK, b"ok\n".to_vec()));
    eprintln!("healthz past 8 idle connections: {:?}", started.elapsed());
}

/// A plain-log `serve --state-dir` process; its log file and address.
struct Process {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    log: std::path::PathBuf,
    ca: String,
    _dir: tempfile::TempDir,
}

impl Process {
    async fn start(state: &std::path::Path, extra: &[&str]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let out = std::process::Command::new(paths::bin())
            .args(["certs", "--dns", "localhost", "--out"])
            .arg(&certs)
            .output()
            .unwrap();
        assert!(out.status.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.path().join("serve.log");
        let mut args: Vec<std::ffi::OsString> = [
            "serve",
            "--listen",
            &addr.to_string(),
            "--metrics-listen",
            "none",
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        args.extend(["--state-dir".into(), state.into()]);
        args.extend(["--tls-cert".into(), certs.join("tls.crt").into()]);
        args.extend(["--tls-key".into(), certs.join("tls.key").into()]);
        args.extend(extra.iter().map(Into::into));
        let child = paths::spawn_logged(&args, &log);
        let ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
        Process {
            child,
            addr,
            log,
            ca,
            _dir: dir,
        }
    }

    fn server(&self) -> Remote {
        Remote {
            addr: self.addr,
            ca: self.ca.clone(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path, retrying until `done` holds for the body (15 s at most).
    async fn until(&self, path: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        let server = self.server();
        loop {
            if let Ok(Ok((_, body))) = tokio::time::timeout(
                Duration::from_secs(2),
                send_checked(&server, "GET", path, Vec::new()),
            )
            .await
            {
                let body = String::from_utf8_lossy(&body).into_owned();
                if done(&body) {
                    return body;
                }
                assert!(
                    Instant::now() < deadline,
                    "{path} never: {body}\n{}",
                    self.log()
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "{path} never answered\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn copy_examples(dir: &std::path::Path) {
    for f in [
        "image.yaml",
        "clusterversion.yaml",
        "pools.yaml",
        "p0.yaml",
        "signed-apps.yaml",
    ] {
        std::fs::copy(paths::root().join("examples").join(f), dir.join(f)).unwrap();
    }
}

async fn blocked_scope_denied(server: &Remote) -> bool {
    let r = validate(
        server,
        review(
            "ClusterImagePolicy",
            "CREATE",
            "kube:admin",
            policy("v1", &["blocked.example.com/x"]),
        ),
    )
    .await;
    r["allowed"] == json!(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_never_blocks_the_server() {
    let state = tempfile::tempdir().unwrap();
    copy_examples(state.path());
    let fifo = state.path().join("pipe.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink(state.path(), state.path().join("loop")).unwrap();
    // A ConfigMap mount's second copy of every key.
    std::fs::create_dir(state.path().join("..data")).unwrap();
    std::fs::copy(
        state.path().join("p0.yaml"),
        state.path().join("..data/p0.yaml"),
    )
    .unwrap();
    let p = Process::start(state.path(), &[]).await;
    let body = p.until("/readyz", |b| b.starts_with("ok:")).await;
    assert!(body.contains("2 ClusterImagePolicies"), "{body}");
    let started = Instant::now();
    p.until("/healthz", |b| b == "ok\n").await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(blocked_scope_denied(&p.server()).await);
    // What the walk passed over is said once, not every 2 s.
    let log = p.log();
    for entry in [
        "pipe.yaml: not a regular file",
        "directory already read (a symlink loop?)",
    ] {
        assert!(log.contains(entry), "{entry}: {log}");
    }
    assert_eq!(
        log.matches("state directory entry skipped").count(),
        2,
        "{log}"
    );
    // An unreadable directory is logged when it starts, once.
    std::fs::rename(state.path(), state.path().with_extension("moved")).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    std::fs::rename(state.path().with_extension("moved"), state.path()).unwrap();
    let log = p.log();
    assert_eq!(
        log.matches("state directory not readable").count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconsistent_state_directory_keeps_the_last_good_state() {
    let state = tempfile::tempdir().unwrap();
    copy_examples(state.path());
    let p = Process::start(state.path(), &[]).await;
    p.until("/readyz", |b| b.starts_with("ok: state from"))
        .await;
    let server = p.server();
    assert!(blocked_scope_denied(&server).await);
    let dir = state.path();
    // A leftover copy of the Image.
    std::fs::copy(dir.join("image.yaml"), dir.join("image-copy.yaml")).unwrap();
    let body = p
        .until("/readyz", |b| b.contains("the last reload was refused"))
        .await;
    assert!(
        body.contains("Image \"cluster\" is given more than once"),
        "{body}"
    );
    assert!(blocked_scope_denied(&server).await);
    std::fs::remove_file(dir.join("image-copy.yaml")).unwrap();
    // An Image with both lists: the MCO refuses it; so does the state.
    std::fs::write(
        dir.join("image.yaml"),
        "apiVersion: config.openshift.io/v1\nkind: Image\nmetadata: {name: cluster}\nspec: {registrySources: {allowedRegistries: [a.io], blockedRegistries: [blocked.example.com]}}\n",
    )
    .unwrap();
    p.until("/readyz", |b| {
        b.contains("only one of AllowedRegistries or BlockedRegistries")
    })
    .await;
    assert!(blocked_scope_denied(&server).await);
    // Emptied (an unmounted ConfigMap): still the last good state.
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    p.until("/readyz", |b| b.contains("no object left in the directory"))
        .await;
    assert!(blocked_scope_denied(&server).await);
    // Mended: the refusal is gone from /readyz.
    copy_examples(dir);
    let body = p.until("/readyz", |b| !b.contains("refused")).await;
    assert!(body.starts_with("ok: state from"), "{body}");
    assert!(p.log().contains("cluster state refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_a_newline_does_not_forge_a_log_line() {
    let state = tempfile::tempdir().unwrap();
    copy_examples(state.path());
    let p = Process::start(state.path(), &[]).await;
    p.until("/readyz", |b| b.starts_with("ok:")).await;
    // A denial: what is logged at info.
    let mut object = policy("v1", &["blocked.example.com/a"]);
    object["metadata"]["name"] = json!("x");
    let mut body: Value = serde_json::from_slice(&review(
        "ClusterImagePolicy",
        "CREATE",
        "kube:admin",
        object,
    ))
    .unwrap();
    body["request"]["name"] =
        json!("x\n2026-01-01T00:00:00Z  INFO forged: admission decision verdict=allowed");
    let r = validate(&p.server(), serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(r["allowed"], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = p.log();
    assert!(log.contains("name=x\\n2026"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_pair_is_logged_once_and_the_exit_is_bounded() {
    let state = tempfile::tempdir().unwrap();
    copy_examples(state.path());
    let mut p = Process::start(
        state.path(),
        &["--shutdown-grace", "1", "--shutdown-delay", "0"],
    )
    .await;
    p.until("/readyz", |b| b.starts_with("ok:")).await;
    let key = p._dir.path().join("certs/tls.key");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for _ in 0..5 {
        p.until("/healthz", |b| b == "ok\n").await;
    }
    assert_eq!(
        p.log().matches("serving certificate not reloaded").count(),
        1,
        "{}",
        p.log()
    );
    // A request left hanging (a body that never comes) does not keep the process past
    // the grace period.
    let mut hanging = connect(p.addr, &p.ca, &[b"http/1.1"]).await.unwrap();
    hanging
        .write_all(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let pid = p.child.id().unwrap() as i32;
    // SAFETY: plain kill(2) on our own child.
    unsafe { kill(pid, 15) };
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("exited")
        .unwrap();
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_certificate_is_picked_up_whatever_its_size_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let a = cip_webhook::webhook::tls::generate(&["localhost".into()], 30).unwrap();
    let b = cip_webhook::webhook::tls::generate(&["localhost".into()], 30).unwrap();
    // The same byte counts: pad the shorter with trailing newlines, which PEM ignores.
    let pad = |x: &str, y: &str| format!("{x}{}", "\n".repeat(y.len().saturating_sub(x.len())));
    let (a_cert, b_cert) = (pad(&a.cert, &b.cert), pad(&b.cert, &a.cert));
    let (a_key, b_key) = (pad(&a.key, &b.key), pad(&b.key, &a.key));
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &a_cert).unwrap();
    std::fs::write(&key, &a_key).unwrap();
    let reloading = cip_webhook::webhook::tls::ReloadingCert::new(&cert, &key).unwrap();
    let first = reloading.current().cert[0].clone();
    let mtimes: Vec<_> = [&cert, &key]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    std::fs::write(&cert, &b_cert).unwrap();
    std::fs::write(&key, &b_key).unwrap();
    for (p, t) in [&cert, &key].iter().zip(mtimes) {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    assert_eq!(
        std::fs::metadata(&cert).unwrap().len() as usize,
        a_cert.len()
    );
    let second = reloading.current().cert[0].clone();
    assert_ne!(first, second, "the new pair is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cluster_version_is_said_in_readyz() {
    let state = tempfile::tempdir().unwrap();
    copy_examples(state.path());
    std::fs::remove_file(state.path().join("clusterversion.yaml")).unwrap();
    let p = Process::start(state.path(), &[]).await;
    let body = p.until("/readyz", |b| b.starts_with("ok:")).await;
    assert!(
        body.contains("no ClusterVersion version: the release payload checks use the default release repositories"),
        "{body}"
    );
    assert!(p.log().contains("no ClusterVersion version"), "{}", p.log());
}
