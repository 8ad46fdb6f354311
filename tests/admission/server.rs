//! The admission server: its decisions through the router without a socket, and over
//! real TLS sockets (with a client that trusts only the generated CA, as kube-apiserver
//! does with the caBundle) where TLS, HTTP/2, certificates or shutdown are the point.

use testkit::paths;
use testkit::server as harness;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use cip_core::render::RenderOptions;
use cip_webhook::webhook::admission::{self, ImageGuard, Snapshot};
use cip_webhook::webhook::server::Limits;
use harness::*;

/// A v1 PublicKey policy on these scopes, as kube:admin.
async fn validate_scopes(server: &impl Admits, operation: &str, scopes: &[&str]) -> Value {
    validate(
        server,
        review(
            "ClusterImagePolicy",
            operation,
            "kube:admin",
            policy("v1", scopes),
        ),
    )
    .await
}

#[track_caller]
fn assert_forbidden(response: &Value, message: &str) {
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 403);
    assert_eq!(response["status"]["reason"], "Forbidden");
    assert_eq!(response["status"]["message"], message);
}

#[tokio::test]
async fn denials_carry_403_forbidden_and_the_core_message() {
    let s = routed();
    let r = validate_scopes(&s, "CREATE", &["blocked.example.com/global"]).await;
    assert_forbidden(&r, "clusterimagePolicy configured for the scope blocked.example.com/global is nested inside blockedRegistries");
    let r = validate_scopes(&s, "UPDATE", &["quay.io/openshift-release-dev"]).await;
    assert_forbidden(
        &r,
        "clusterimagePolicy configured for the scope quay.io/openshift-release-dev covers the OpenShift release payload repository quay.io/openshift-release-dev/ocp-release, whose signatures the platform verifies",
    );
    let r = validate_scopes(&s, "CREATE", &["*.example.com/app"]).await;
    assert_forbidden(&r, "spec.scopes[0]: Invalid value: \"string\": invalid image scope with wildcard, a wildcard can only be at the start of the domain and is only supported for subdomain matching, not path matching");
    let mut bad_key = policy("v1", &["example.com"]);
    bad_key["spec"]["policy"]["rootOfTrust"]["publicKey"]["keyData"] = json!("Zm9vIGJhcg==");
    let r = validate(
        &s,
        review("ClusterImagePolicy", "CREATE", "kube:admin", bad_key),
    )
    .await;
    assert!(
        r["status"]["message"].as_str().unwrap().starts_with(
            "[spec.policy.rootOfTrust.publicKey.keyData: Invalid value: \"Zm9vIGJhcg==\""
        ),
        "{r}"
    );
    // Allowed, with no warning, and DELETE is always allowed.
    let r = validate_scopes(&s, "CREATE", &["example.org/apps"]).await;
    assert_eq!(
        (r["allowed"].clone(), r.get("warnings").cloned()),
        (json!(true), None),
        "{r}"
    );
    let mut delete: Value = serde_json::from_slice(&review(
        "ClusterImagePolicy",
        "DELETE",
        "kube:admin",
        Value::Null,
    ))
    .unwrap();
    delete["request"]["object"] = Value::Null;
    let r = validate(&s, serde_json::to_vec(&delete).unwrap()).await;
    assert_eq!(r["allowed"], true);
}

#[tokio::test]
async fn v1alpha1_seed_policy_is_admitted_with_a_warning_and_dry_run_gets_the_same_answer() {
    let s = routed();
    let seed = serde_json::to_value(&paths::load(&["examples/p0.yaml"]).policies[0]).unwrap();
    let r = validate(
        &s,
        review("ClusterImagePolicy", "CREATE", "kube:admin", seed.clone()),
    )
    .await;
    assert_eq!(r["allowed"], true);
    assert_eq!(
        r["warnings"],
        json!(["spec.policy.rootOfTrust.publicKey.keyData: does not decode to a PEM public key: no PEM block found"])
    );
    let mut dry: Value =
        serde_json::from_slice(&review("ClusterImagePolicy", "CREATE", "kube:admin", seed))
            .unwrap();
    dry["request"]["dryRun"] = json!(true);
    assert_eq!(validate(&s, serde_json::to_vec(&dry).unwrap()).await, r);
}

#[tokio::test]
async fn exempt_users_get_warnings_for_payload_repositories() {
    let s = routed();
    let object = policy("v1", &["quay.io/openshift-release-dev/ocp-release"]);
    let r = validate(
        &s,
        review(
            "ClusterImagePolicy",
            "CREATE",
            admission::DEFAULT_EXEMPT_USER,
            object.clone(),
        ),
    )
    .await;
    assert_eq!(r["allowed"], true);
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("OpenShift release payload repository"),
        "{r}"
    );
    let r = validate(
        &s,
        review(
            "ClusterImagePolicy",
            "CREATE",
            "system:serviceaccount:other:default",
            object,
        ),
    )
    .await;
    assert_eq!(r["allowed"], false);
}

#[tokio::test]
async fn mutation_sets_the_default_match_policy_once() {
    let s = routed();
    let object = policy("v1", &["example.org/apps"]);
    let (status, bytes) = send(
        &s,
        "POST",
        "/mutate",
        review("ClusterImagePolicy", "CREATE", "u", object.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let response: Value = serde_json::from_slice::<Value>(&bytes).unwrap()["response"].clone();
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut patched = object;
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(
        patched["spec"]["policy"]["signedIdentity"],
        json!({"matchPolicy": "MatchRepoDigestOrExact"})
    );
    // Idempotent: the patched object needs nothing more.
    let response = mutate(&s, "UPDATE", patched.clone()).await;
    assert_eq!(
        (response.get("patch"), response["allowed"].clone()),
        (None, json!(true))
    );
    // An empty matchPolicy is filled in; nothing else is touched.
    patched["spec"]["policy"]["signedIdentity"]["matchPolicy"] = json!("");
    let response = mutate(&s, "UPDATE", patched.clone()).await;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let before = patched.clone();
    json_patch::patch(
        &mut patched,
        &serde_json::from_slice::<json_patch::Patch>(&patch).unwrap(),
    )
    .unwrap();
    assert_eq!(
        patched["spec"]["policy"]["signedIdentity"]["matchPolicy"],
        "MatchRepoDigestOrExact"
    );
    patched["spec"]["policy"]["signedIdentity"]["matchPolicy"] = json!("");
    assert_eq!(patched, before);
}

fn image(blocked: &[&str]) -> Value {
    json!({"apiVersion": "config.openshift.io/v1", "kind": "Image", "metadata": {"name": "cluster"},
           "spec": {"registrySources": {"blockedRegistries": blocked}}})
}

#[tokio::test]
async fn image_guard_denies_or_warns() {
    let s = routed();
    let r = validate(
        &s,
        review("Image", "UPDATE", "kube:admin", image(&["example.com"])),
    )
    .await;
    assert_forbidden(&r, "clusterimagePolicy configured for the scope example.com/global is nested inside blockedRegistries (ClusterImagePolicy p0)");
    let r = validate(
        &s,
        review(
            "Image",
            "UPDATE",
            "kube:admin",
            image(&["other.example.com"]),
        ),
    )
    .await;
    assert_eq!(r["allowed"], true);

    let warn = admission::Config {
        image_guard: ImageGuard::Warn,
        ..Default::default()
    };
    let s = routed_with(warn, Limits::default(), Some(&STATE));
    let r = validate(
        &s,
        review("Image", "UPDATE", "kube:admin", image(&["example.com"])),
    )
    .await;
    assert_eq!(r["allowed"], true);
    assert_eq!(
        r["warnings"],
        json!(["clusterimagePolicy configured for the scope example.com/global is nested inside blockedRegistries (ClusterImagePolicy p0)"])
    );
}

#[tokio::test]
async fn bad_input_is_refused_without_a_crash() {
    let limits = Limits {
        max_body: 64 * 1024,
        ..Limits::default()
    };
    let s = routed_with(admission::Config::default(), limits, Some(&STATE));
    let good = review(
        "ClusterImagePolicy",
        "CREATE",
        "u",
        policy("v1", &["example.org"]),
    );
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (b"not json".to_vec(), StatusCode::BAD_REQUEST, "request body is not JSON"),
        (good[..good.len() / 2].to_vec(), StatusCode::BAD_REQUEST, "request body is not JSON"),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(), StatusCode::BAD_REQUEST, "expected apiVersion admission.k8s.io/v1"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), StatusCode::BAD_REQUEST, "AdmissionReview has no request"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#.to_vec(), StatusCode::BAD_REQUEST, "request has no uid"),
        (vec![b' '; 65 * 1024], StatusCode::PAYLOAD_TOO_LARGE, ""),
    ];
    for (body, status, text) in cases {
        let (got, bytes) = send(&s, "POST", "/validate", body).await;
        assert_eq!(got, status);
        assert!(
            String::from_utf8_lossy(&bytes).contains(text),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let mut other: Value = serde_json::from_slice(&review(
        "ConfigMap",
        "CREATE",
        "u",
        json!({"metadata": {"name": "c"}}),
    ))
    .unwrap();
    other["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let r = validate(&s, serde_json::to_vec(&other).unwrap()).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 400);
    assert_eq!(
        r["status"]["message"],
        "cip-webhook does not handle /v1 ConfigMap; check the webhook configuration's rules"
    );
    // Still serving after all that.
    assert_eq!(validate(&s, good).await["allowed"], true);
    let metrics = harness::metrics(&s).await;
    // The five refused reviews and the 413 alike.
    assert!(
        metrics.contains("cip_webhook_admission_bad_requests_total 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn readiness_health_and_metrics() {
    let s = routed_with(admission::Config::default(), Limits::default(), None);
    assert_eq!(
        send(&s, "GET", "/healthz", Vec::new()).await.0,
        StatusCode::OK
    );
    let (status, body) = send(&s, "GET", "/readyz", Vec::new()).await;
    assert_eq!(
        (status, String::from_utf8(body).unwrap()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: cluster state not loaded yet\n".to_string()
        )
    );
    let good = review(
        "ClusterImagePolicy",
        "CREATE",
        "u",
        policy("v1", &["example.org"]),
    );
    assert_eq!(
        send(&s, "POST", "/validate", good.clone()).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    s.app.state.set_snapshot(
        Arc::new(Snapshot::build(
            &paths::load(&STATE),
            &RenderOptions::default(),
        )),
        "loaded".into(),
    );
    assert_eq!(
        send(&s, "GET", "/readyz", Vec::new()).await.0,
        StatusCode::OK
    );
    validate(&s, good).await;
    let metrics = harness::metrics(&s).await;
    assert!(metrics.contains(r#"cip_webhook_admission_requests_total{kind="ClusterImagePolicy",operation="CREATE",verdict="allowed",reason="None"} 1"#), "{metrics}");
    assert!(
        metrics.contains("cip_webhook_admission_duration_seconds_count 1"),
        "{metrics}"
    );
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cip_webhook_serving_certificate_expiry_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    let in_30_days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 30 * 86400;
    assert!(
        (expiry - in_30_days).abs() < 3600,
        "{expiry} vs {in_30_days}"
    );
}

#[tokio::test]
async fn http2_is_served() {
    let s = start().await;
    let tls = connect(s.addr, &s.ca, &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = review(
        "ClusterImagePolicy",
        "CREATE",
        "u",
        policy("v1", &["blocked.example.com"]),
    );
    let request = Request::post("https://localhost/validate")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let review: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(review["response"]["status"]["code"], 403);
}

#[tokio::test]
async fn rotated_certificates_are_served_on_the_next_connection() {
    let s = start().await;
    let old_ca = s.ca.clone();
    let first = connect(s.addr, &old_ca, &[]).await.unwrap();
    let served_before = first.get_ref().1.peer_certificates().unwrap()[0].clone();
    // Rotate in place, as service-ca does: new files, same paths, no restart.
    let new_ca = write_pair(s.dir.path());
    let second = connect(s.addr, &new_ca, &[]).await.unwrap();
    let served_after = second.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(served_before, served_after);
    let on_disk = CertificateDer::from_pem_file(s.dir.path().join("tls.crt")).unwrap();
    assert_eq!(served_after, on_disk);
    // A client that trusts only the old CA is refused now.
    assert!(connect(s.addr, &old_ca, &[]).await.is_err());
    // A half-written rotation (key missing) keeps serving the last good pair.
    std::fs::write(s.dir.path().join("tls.key"), "").unwrap();
    let third = connect(s.addr, &new_ca, &[]).await.unwrap();
    assert_eq!(third.get_ref().1.peer_certificates().unwrap()[0], on_disk);
}

#[tokio::test]
async fn hundred_concurrent_requests() {
    let s = Arc::new(start().await);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let scope = if i % 2 == 0 {
                "blocked.example.com/x"
            } else {
                "example.org/x"
            };
            let r = validate(
                &*s,
                review("ClusterImagePolicy", "CREATE", "u", policy("v1", &[scope])),
            )
            .await;
            (i, r["allowed"].as_bool().unwrap())
        }));
    }
    for t in tasks {
        let (i, allowed) = t.await.unwrap();
        assert_eq!(allowed, i % 2 == 1);
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let mut s = start().await;
    let body = review(
        "ClusterImagePolicy",
        "CREATE",
        "u",
        policy("v1", &["blocked.example.com/x"]),
    );
    // Headers and half the body now, the rest after the stop signal.
    let mut tls = connect(s.addr, &s.ca, &[b"http/1.1"]).await.unwrap();
    let head = format!("POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body[..body.len() / 2]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once stopping.
    assert!(connect(s.addr, &s.ca, &[]).await.is_err());
    tls.write_all(&body[body.len() / 2..]).await.unwrap();
    tls.flush().await.unwrap();
    let mut response = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut response)
        .await
        .ok();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"code\":403"), "{text}");
    // The server returned once the connection was done.
    tokio::time::timeout(Duration::from_secs(5), &mut s.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn tls12_clients_are_served() {
    let s = start().await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(s.ca.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let modern = connect(s.addr, &s.ca, &[]).await.unwrap();
    assert_eq!(
        modern.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn a_stalled_body_times_out_with_408() {
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = start_with(admission::Config::default(), limits, Some(&STATE)).await;
    let mut tls = connect(s.addr, &s.ca, &[b"http/1.1"]).await.unwrap();
    let head =
        "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\r\n{\"apiVersion\"";
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut response = vec![0u8; 512];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tls, &mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

/// An UPDATE review: `object` replaces `old`.
fn update(kind: &str, user: &str, object: Value, old: Value) -> Vec<u8> {
    let mut r: Value = serde_json::from_slice(&review(kind, "UPDATE", user, object)).unwrap();
    r["request"]["oldObject"] = old;
    serde_json::to_vec(&r).unwrap()
}

const ALREADY: &str = " (already so before this update, so not denied)";

#[tokio::test]
async fn policy_updates_are_denied_only_for_what_they_change() {
    let s = routed();
    let blocked = "clusterimagePolicy configured for the scope blocked.example.com/app is nested inside blockedRegistries";
    let old = policy("v1", &["blocked.example.com/app", "example.org/ok"]);
    // A label-only update of a policy that already conflicts: admitted, the problem named.
    let mut labelled = old.clone();
    labelled["metadata"]["labels"] = json!({"team": "a"});
    let r = validate(
        &s,
        update("ClusterImagePolicy", "kube:admin", labelled, old.clone()),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["warnings"], json!([format!("{blocked}{ALREADY}")]));
    // A scope moved to another index is still the same problem.
    let reordered = policy("v1", &["example.org/ok", "blocked.example.com/app"]);
    let r = validate(
        &s,
        update("ClusterImagePolicy", "kube:admin", reordered, old.clone()),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    // An update that adds a conflict is denied for that one alone.
    let worse = policy(
        "v1",
        &[
            "blocked.example.com/app",
            "blocked.example.com/new",
            "example.org/ok",
        ],
    );
    let r = validate(&s, update("ClusterImagePolicy", "kube:admin", worse, old)).await;
    assert_forbidden(&r, "clusterimagePolicy configured for the scope blocked.example.com/new is nested inside blockedRegistries");
    assert_eq!(r["warnings"], json!([format!("{blocked}{ALREADY}")]));
    // CRD-rule problems ratchet too, as the API server ratchets unchanged fields.
    let mut bad_key = policy("v1", &["example.org/a"]);
    bad_key["spec"]["policy"]["rootOfTrust"]["publicKey"]["keyData"] = json!("Zm9vIGJhcg==");
    let mut relabelled = bad_key.clone();
    relabelled["metadata"]["labels"] = json!({"x": "y"});
    let r = validate(
        &s,
        update("ClusterImagePolicy", "kube:admin", relabelled, bad_key),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["warnings"].as_array().unwrap().len(), 3, "{r}");
    assert!(r["warnings"][0].as_str().unwrap().ends_with(ALREADY));
}

#[tokio::test]
async fn image_updates_that_leave_the_lists_alone_are_never_denied() {
    let s = routed();
    // p0 (registry.ci.openshift.org) conflicts already.
    let old = image(&["registry.ci.openshift.org"]);
    let mut ca = old.clone();
    ca["spec"]["additionalTrustedCA"] = json!({"name": "my-ca"});
    let r = validate(&s, update("Image", "kube:admin", ca, old.clone())).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r.get("warnings"), None, "{r}");
    // Changing the lists: denied for the conflict it creates, the old one a warning.
    let r = validate(
        &s,
        update(
            "Image",
            "kube:admin",
            image(&["registry.ci.openshift.org", "registry.example.com:5000"]),
            old.clone(),
        ),
    )
    .await;
    assert_forbidden(&r, "clusterimagePolicy configured for the scope registry.example.com:5000/team/app is nested inside blockedRegistries (ClusterImagePolicy signed-apps)");
    assert_eq!(
        r["warnings"],
        json!([format!("clusterimagePolicy configured for the scope registry.ci.openshift.org is nested inside blockedRegistries (ClusterImagePolicy p0){ALREADY}")])
    );
    // Unblocking makes nothing worse.
    let r = validate(&s, update("Image", "kube:admin", image(&[]), old)).await;
    assert_eq!(r["allowed"], true, "{r}");
}

#[tokio::test]
async fn the_cluster_version_operator_is_never_denied() {
    let s = routed_with(
        admission::Config::default(),
        Limits::default(),
        Some(&[
            "examples/clusterversion.yaml",
            "tests/fixtures/allowed-registries-image.yaml",
        ]),
    );
    // The platform's own `openshift` policy, on the payload repository, outside the
    // allowed registries: every problem a warning for the CVO, all denied for an admin.
    let mut openshift = policy("v1", &["quay.io/openshift-release-dev/ocp-release"]);
    openshift["metadata"]["name"] = json!("openshift");
    let r = validate(
        &s,
        review(
            "ClusterImagePolicy",
            "CREATE",
            admission::DEFAULT_EXEMPT_USER,
            openshift.clone(),
        ),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    let warnings: Vec<&str> = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings, [
        "clusterimagePolicy configured for the scope quay.io/openshift-release-dev/ocp-release covers the OpenShift release payload repository quay.io/openshift-release-dev/ocp-release, whose signatures the platform verifies",
        "clusterimagePolicy configured for the scope quay.io/openshift-release-dev/ocp-release is not nested inside allowedRegistries",
    ]);
    let r = validate(
        &s,
        review("ClusterImagePolicy", "CREATE", "kube:admin", openshift),
    )
    .await;
    assert_forbidden(&r, "metadata.name: Forbidden: \"openshift\" is reserved for the platform: names beginning with \"openshift\" belong to policies the cluster-version operator ships");
}

#[tokio::test]
async fn names_reserved_for_the_platform() {
    let s = routed();
    let reserved = |name: &str| {
        format!("metadata.name: Forbidden: {name:?} is reserved for the platform: names beginning with \"openshift\" belong to policies the cluster-version operator ships")
    };
    let mut mine = policy("v1", &["example.org/apps"]);
    mine["metadata"]["name"] = json!("openshift-mine");
    let r = validate(
        &s,
        review("ClusterImagePolicy", "CREATE", "kube:admin", mine.clone()),
    )
    .await;
    assert_forbidden(&r, &reserved("openshift-mine"));
    let r = validate(
        &s,
        update(
            "ClusterImagePolicy",
            "kube:admin",
            mine.clone(),
            mine.clone(),
        ),
    )
    .await;
    assert_forbidden(&r, &reserved("openshift-mine"));
    let delete = |user: &str, name: &str| {
        let mut r: Value =
            serde_json::from_slice(&review("ClusterImagePolicy", "DELETE", user, Value::Null))
                .unwrap();
        r["request"]["name"] = json!(name);
        r["request"]["oldObject"] = mine.clone();
        serde_json::to_vec(&r).unwrap()
    };
    let r = validate(&s, delete("kube:admin", "openshift")).await;
    assert_forbidden(&r, &reserved("openshift"));
    for (user, name) in [
        (admission::DEFAULT_EXEMPT_USER, "openshift"),
        ("kube:admin", "team-a"),
    ] {
        let r = validate(&s, delete(user, name)).await;
        assert_eq!(r["allowed"], true, "{user} {name}: {r}");
    }
}

#[tokio::test]
async fn a_huge_review_gets_a_bounded_answer() {
    let s = routed();
    // 256 bad scopes, two rules broken by each: the first 20 problems, then a count.
    let scopes: Vec<String> = (0..256).map(|i| format!("bad_{i}")).collect();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let r = validate_scopes(&s, "CREATE", &scopes).await;
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message
            .starts_with("[spec.scopes[0]: Invalid value: \"string\": invalid image scope format"),
        "{}",
        &message[..200]
    );
    assert!(
        message.ends_with(", … and 492 more]"),
        "{}",
        &message[message.len() - 100..]
    );
    assert_eq!(message.matches("spec.scopes[").count(), 20);
    // 100,000 scopes (48 s of CPU when duplicates were found pairwise): refused for the
    // count; the scopes past 256 are not judged one by one.
    let scopes: Vec<String> = (0..100_000).map(|i| format!("Bad_{i}")).collect();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let r = validate_scopes(&s, "CREATE", &scopes).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("[spec.scopes: Too many: 100000: must have at most 256 items, "),
        "{}",
        &message[..200]
    );
    assert!(message.len() < 8192, "{}", message.len());
}

/// An UPDATE replaces the old version: a policy taking more than half the budget can be
/// changed, while a second copy of it cannot be added.
#[tokio::test]
async fn an_update_is_counted_once_against_the_size_budget() {
    let big: Vec<String> = (0..200).map(|i| format!("quay.io/big/app{i}")).collect();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    let mut policy = policy("v1", &big);
    policy["metadata"]["name"] = json!("big");
    let mut inputs = paths::load(&STATE);
    inputs
        .policies
        .push(serde_json::from_value(policy.clone()).unwrap());
    let growth = cip_core::render::estimated_growth(&inputs.policies[2]);
    let options = RenderOptions {
        size_budget: 20 * 1024 + growth * 3 / 2,
        ..RenderOptions::default()
    };
    let snapshot = Arc::new(Snapshot::from_plan(
        Arc::new(inputs.clone()),
        cip_core::render::plan(&inputs, &options).ok().as_ref(),
        &options,
    ));
    assert!(snapshot.in_force.contains("big"));
    let s = routed();
    s.app.state.set_snapshot(snapshot, "test".into());
    let mut changed = policy.clone();
    changed["metadata"]["labels"] = json!({"changed": "yes"});
    let r = validate(
        &s,
        update("ClusterImagePolicy", "kube:admin", changed, policy.clone()),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    let mut copy = policy;
    copy["metadata"]["name"] = json!("big-2");
    let r = validate(
        &s,
        review("ClusterImagePolicy", "CREATE", "kube:admin", copy),
    )
    .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(r["status"]["message"]
        .as_str()
        .unwrap()
        .starts_with("spec: adding this policy would grow MachineConfig"));
}

/// Over HTTP/2, a body past --max-body gets its 413 (issue 15), as curl sees it: read on
/// and dropped up to a bound, so the answer is not lost in a stream reset (curl reported
/// "Stream error in the HTTP/2 framing layer"). Declared length and chunked alike.
#[tokio::test]
async fn http2_bodies_over_the_limit_get_413() {
    let s = start().await;
    let ca = s.dir.path().join("ca.crt");
    std::fs::write(&ca, &s.ca).unwrap();
    let body = s.dir.path().join("big.json");
    std::fs::write(&body, vec![b' '; Limits::default().max_body + 1]).unwrap();
    for extra in [&[][..], &["-H", "transfer-encoding: chunked"][..]] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--http2", "--cacert"])
            .arg(&ca)
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", s.addr.port()),
            ])
            .args([
                "-H",
                "content-type: application/json",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .args(extra)
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!("https://localhost:{}/validate", s.addr.port()))
            .output()
            .await
            .expect("curl is installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && stdout.ends_with("request body larger than 3145728 bytes\n\n413 2"),
            "{extra:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Tokens as a fake cluster judges them: `good` may read /metrics, `other` is someone
/// else, `down` finds the API server unreachable; anything else is not a token.
struct FakeAccess(std::sync::atomic::AtomicUsize);

impl cip_webhook::webhook::server::MetricsAccess for FakeAccess {
    fn check(
        &self,
        token: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = cip_webhook::webhook::server::Access> + Send + '_>,
    > {
        use cip_webhook::webhook::server::Access;
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            match token.as_str() {
                "good" => Access::Allowed,
                "other" => Access::Forbidden("other may not get /metrics".into()),
                "down" => Access::Unavailable("connection refused".into()),
                _ => Access::Unauthenticated,
            }
        })
    }
}

/// /metrics behind the access check, through the router without a socket: 200 for an
/// allowed token, 401 (with a challenge) without one, 403, 503; the probes never ask.
#[tokio::test]
async fn metrics_behind_token_review() {
    use tower::ServiceExt;
    let s = harness::routed();
    let access = Arc::new(FakeAccess(Default::default()));
    let router = cip_webhook::webhook::server::ops_router_with(
        Arc::clone(s.app()),
        Some(Arc::clone(&access) as Arc<dyn cip_webhook::webhook::server::MetricsAccess>),
    );
    let get = |path: &str, token: Option<&str>| {
        let mut request = Request::builder().uri(path);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        router
            .clone()
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
    };
    let response = get("/metrics", None).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        access.0.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no token, no review"
    );
    for (token, status) in [
        ("good", StatusCode::OK),
        ("other", StatusCode::FORBIDDEN),
        ("down", StatusCode::SERVICE_UNAVAILABLE),
        ("nonsense", StatusCode::UNAUTHORIZED),
    ] {
        assert_eq!(
            get("/metrics", Some(token)).await.unwrap().status(),
            status,
            "{token}"
        );
    }
    let page = get("/metrics", Some("good")).await.unwrap();
    let body = page.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("cip_webhook_"));
    let asked = access.0.load(std::sync::atomic::Ordering::SeqCst);
    for path in ["/healthz", "/readyz"] {
        let status = get(path, None).await.unwrap().status();
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(access.0.load(std::sync::atomic::Ordering::SeqCst), asked);
}

/// A copy that counts its writes.
struct Fixed {
    tag: &'static str,
    body: &'static str,
    taken_at: i64,
    written: Arc<std::sync::atomic::AtomicUsize>,
}

impl cip_webhook::state::RunningImagesCopy for Fixed {
    fn tag(&self) -> String {
        self.tag.to_string()
    }
    fn taken_at(&self) -> i64 {
        self.taken_at
    }
    fn write(&self) -> Vec<u8> {
        (self.written).fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.body.as_bytes().to_vec()
    }
}

/// `/running-images` as replicas fetch it, over a socket through the replica's own fetch:
/// the copy with its tag, then 304 while a replica holds that tag (the copy is not written
/// again: it weighs megabytes), with the time of the pass that found it unchanged, and the
/// new copy once its content has another tag.
#[tokio::test]
async fn the_running_images_copy_is_sent_again_only_when_it_changes() {
    use cip_webhook::impact::{copy_client, fetch_copy, CopyFrom, Fetched};
    use std::sync::atomic::Ordering;
    let s = harness::routed();
    let router = cip_webhook::webhook::server::ops_router_full(Arc::clone(s.app()), None, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let made = cip_webhook::webhook::tls::generate(&["localhost".to_string()], 1).unwrap();
    std::fs::write(&ca, made.ca_cert).unwrap();
    let client = copy_client(Some(&ca)).unwrap();
    let from = CopyFrom {
        url: format!("http://{addr}/running-images"),
        ca: Some(ca),
        token: None,
        every: Duration::from_secs(30),
    };
    let none = fetch_copy(&client, &from, None).await.unwrap_err();
    assert!(none.starts_with("503"), "{none}");
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publish = |tag, body, taken_at| {
        let written = Arc::clone(&written);
        let copy = Fixed {
            tag,
            body,
            taken_at,
            written,
        };
        s.app().state.set_running_images(Arc::new(copy))
    };
    publish("\"p-1\"", "first", 1_000);
    let first = fetch_copy(&client, &from, None).await.unwrap();
    let tag = Some("\"p-1\"".to_string());
    assert_eq!(
        first,
        Fetched::New {
            bytes: b"first".to_vec(),
            tag: tag.clone()
        }
    );
    // A later pass that found the same.
    publish("\"p-1\"", "first", 1_300);
    for _ in 0..3 {
        let again = fetch_copy(&client, &from, tag.as_deref()).await.unwrap();
        assert_eq!(
            again,
            Fetched::Same {
                taken_at: Some(1_300)
            }
        );
    }
    assert_eq!(written.load(Ordering::SeqCst), 1, "written once, then 304");
    publish("\"p-2\"", "second", 1_600);
    let second = fetch_copy(&client, &from, tag.as_deref()).await.unwrap();
    assert_eq!(
        second,
        Fetched::New {
            bytes: b"second".to_vec(),
            tag: Some("\"p-2\"".to_string())
        }
    );
    assert_eq!(written.load(Ordering::SeqCst), 2);
    // As RFC 9110 reads If-None-Match: a list, or any.
    use tower::ServiceExt;
    for held in ["\"p-1\", \"p-2\"", "*"] {
        let router = cip_webhook::webhook::server::ops_router_full(Arc::clone(s.app()), None, None);
        let request = Request::get("/running-images")
            .header("if-none-match", held)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{held}");
        assert_eq!(response.headers()["cip-taken-at"], "1600");
    }
    assert_eq!(written.load(Ordering::SeqCst), 2);
}
