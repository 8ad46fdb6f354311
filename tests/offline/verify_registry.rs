//! `verify`'s fetch rules against an in-process registry on loopback that misbehaves on
//! demand: each fault gives its own verdict, and every registry error is `unknown`, never
//! `refused`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use base64::Engine;
use serde_json::json;

use cip_core::policy::Policy;
use cip_core::registries_conf::{MirrorObjects, RegistriesConf};
use cip_sigstore::judge::Memo;
use cip_webhook::pull::registry::Client;
use cip_webhook::pull::verify::{verify, NodeView, Outcome};

use testkit::fakeregistry::*;

fn node(host: &str, key_pem: &str) -> NodeView {
    let policy = Policy::parse(
        &json!({"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {
            format!("{host}/org"): [{"type": "sigstoreSigned", "keyData": base64::engine::general_purpose::STANDARD.encode(key_pem),
                                      "signedIdentity": {"type": "matchRepoDigestOrExact"}}]}}})
        .to_string(),
    )
    .unwrap();
    NodeView {
        policy,
        policy_file: "/etc/containers/policy.json".into(),
        attachments: BTreeSet::from([format!("{host}/org")]),
        registries: RegistriesConf::generate(&[host.to_string()], &[], MirrorObjects::default())
            .unwrap(),
        now: 0,
    }
}

/// `verify` of `image` on `host`'s registry under a policy for `host/org` with `key_pem`.
async fn verify_on(host: &str, key_pem: &str, image: &str, authfile: Option<&str>) -> Outcome {
    let client = Client::new(vec![host.to_string()], authfile).unwrap();
    let memo = Memo::default();
    verify(&node(host, key_pem), image, "amd64", &client, &memo)
        .await
        .unwrap()
}

/// One `verify` of `host/org/app:v1` against a registry set up by `setup`.
async fn run(
    setup: impl FnOnce(&mut Fake, &Signer, &str),
    authfile: Option<&str>,
) -> (Outcome, usize) {
    let s = signer();
    let (shared, host) = start(Fake::default()).await;
    setup(&mut shared.fake.lock().unwrap(), &s, &host);
    let outcome = verify_on(&host, &s.pem, &format!("{host}/org/app:v1"), authfile).await;
    (outcome, shared.requests.load(Ordering::SeqCst))
}

fn is(o: &Outcome, verdict: &str, reason: &str) -> bool {
    o.verdict == verdict && o.reason.contains(reason)
}

#[tokio::test]
async fn a_signed_image_behind_a_token_is_accepted_in_six_requests_at_most() {
    let (o, requests) = run(
        |f, s, host| {
            signed_image(f, s, host);
            f.token = true;
        },
        None,
    )
    .await;
    assert!(is(&o, "accepted", ""), "{o:?}");
    assert_eq!(o.layers.len(), 1);
    // https tried first on an insecure registry costs no request here (the handshake
    // fails); then 401, token, manifest, attachment, blob.
    assert!(requests <= 6, "{requests} requests");
}

#[tokio::test]
async fn blob_redirects_are_followed() {
    let (o, _) = run(
        |f, s, host| {
            signed_image(f, s, host);
            f.redirect_blobs = true;
        },
        None,
    )
    .await;
    assert!(is(&o, "accepted", ""), "{o:?}");
}

#[tokio::test]
async fn no_attachment_is_unsigned() {
    let (o, _) = run(
        |f, s, host| {
            signed_image(f, s, host);
            f.manifests.retain(|(_, r), _| !r.ends_with(".sig"));
        },
        None,
    )
    .await;
    assert!(is(&o, "refused", "no signature exists"), "{o:?}");
}

#[tokio::test]
async fn a_server_error_on_the_attachment_is_unknown() {
    let (o, _) = run(
        |f, s, host| {
            signed_image(f, s, host);
            f.faults
                .push((".sig".into(), StatusCode::INTERNAL_SERVER_ERROR));
        },
        None,
    )
    .await;
    assert!(is(&o, "unknown", "500"), "{o:?}");
    assert_eq!(o.exit_code(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured_once() {
    let (o, _) = run(
        |f, s, host| {
            signed_image(f, s, host);
            f.throttle_once = true;
        },
        None,
    )
    .await;
    assert!(is(&o, "accepted", ""), "{o:?}");
}

#[tokio::test]
async fn an_attachment_of_another_media_type_is_unknown() {
    let (o, _) = run(
        |f, s, host| {
            signed_image(f, s, host);
            for ((_, r), (ct, _)) in f.manifests.iter_mut() {
                if r.ends_with(".sig") {
                    *ct = "application/vnd.docker.distribution.manifest.v2+json".into();
                }
            }
        },
        None,
    )
    .await;
    assert!(
        is(
            &o,
            "unknown",
            "unexpected MIME type for sigstore attachment manifest"
        ),
        "{o:?}"
    );
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_unknown() {
    let (o, _) = run(
        |f, s, host| {
            signed_image(f, s, host);
            for b in f.blobs.values_mut() {
                b.push(b' ');
            }
        },
        None,
    )
    .await;
    assert!(is(&o, "unknown", "digest mismatch"), "{o:?}");
}

#[tokio::test]
async fn a_blob_over_4_mib_is_unknown() {
    let (o, _) = run(
        |f, s, host| {
            signed_image(f, s, host);
            for b in f.blobs.values_mut() {
                b.resize(5 << 20, b' ');
            }
        },
        None,
    )
    .await;
    assert!(is(&o, "unknown", "limit"), "{o:?}");
}

#[tokio::test]
async fn a_manifest_that_does_not_match_the_pulled_digest_is_unknown() {
    let s = signer();
    let (shared, host) = start(Fake::default()).await;
    let digest = signed_image(&mut shared.fake.lock().unwrap(), &s, &host);
    shared
        .fake
        .lock()
        .unwrap()
        .manifests
        .get_mut(&("app".into(), digest.clone()))
        .unwrap()
        .1
        .push(b' ');
    let o = verify_on(&host, &s.pem, &format!("{host}/org/app@{digest}"), None).await;
    assert!(
        is(&o, "unknown", "does not match provided manifest digest"),
        "{o:?}"
    );
}

#[tokio::test]
async fn basic_auth_needs_credentials() {
    let setup = |f: &mut Fake, s: &Signer, host: &str| {
        signed_image(f, s, host);
        f.basic = true;
    };
    let (o, _) = run(setup, None).await;
    assert!(is(&o, "unknown", "no credentials"), "{o:?}");
    let authfile = |host: &str| json!({"auths": {host: {"auth": "dTpw"}}}).to_string();
    // The auth file is keyed by the registry's host; built once the port is known.
    let s = signer();
    let (shared, host) = start(Fake::default()).await;
    setup(&mut shared.fake.lock().unwrap(), &s, &host);
    let o = verify_on(
        &host,
        &s.pem,
        &format!("{host}/org/app:v1"),
        Some(&authfile(&host)),
    )
    .await;
    assert!(is(&o, "accepted", ""), "{o:?}");
}

#[tokio::test]
async fn a_registry_under_the_image_crs_additional_trusted_ca() {
    let s = signer();
    let (_registry, host, ca) = start_tls(|f, host| {
        signed_image(f, &s, host);
    })
    .await;
    let port = host.rsplit(':').next().unwrap();
    let image = format!("{host}/org/app:v1");
    let judge = async |cas: &[(String, &str)]| {
        let cas: std::collections::BTreeMap<String, String> = cas
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let client = Client::with_trusted_cas(Vec::new(), None, &cas).unwrap();
        let memo = Memo::default();
        verify(&node(&host, &s.pem), &image, "amd64", &client, &memo)
            .await
            .unwrap()
    };
    // The ConfigMap's key for this registry (`host..port`): its CA is trusted there.
    let o = judge(&[(format!("localhost..{port}"), &ca)]).await;
    assert!(is(&o, "accepted", ""), "{o:?}");
    // Without it, or given for another registry: the handshake fails, a registry error.
    for cas in [
        vec![],
        vec![("other.example.com..5000".to_string(), ca.as_str())],
    ] {
        let o = judge(&cas).await;
        assert!(is(&o, "unknown", "certificate"), "{o:?}");
    }
}

#[tokio::test]
async fn a_registry_behind_a_proxy_from_the_environment() {
    let s = signer();
    let (shared, plain) = start(Fake::default()).await;
    // A name that resolves nowhere: only the proxy can reach it.
    let host = format!("registry.test:{}", plain.rsplit(':').next().unwrap());
    signed_image(&mut shared.fake.lock().unwrap(), &s, &host);
    let (proxy, targets) = connect_proxy(&plain).await;
    let proxies = hyper_util::client::proxy::matcher::Matcher::builder()
        .http(format!("http://{proxy}"))
        .https(format!("http://{proxy}"))
        .build();
    let client = Client::connecting(
        vec![host.clone()],
        None,
        &Default::default(),
        cip_webhook::pull::proxy::Connector::with(proxies),
    )
    .unwrap();
    let memo = Memo::default();
    let image = format!("{host}/org/app:v1");
    let o = verify(&node(&host, &s.pem), &image, "amd64", &client, &memo)
        .await
        .unwrap();
    assert!(is(&o, "accepted", ""), "{o:?}");
    let targets = targets.lock().unwrap().clone();
    assert!(
        !targets.is_empty() && targets.iter().all(|t| *t == host),
        "{targets:?}"
    );
}

#[tokio::test]
async fn a_registry_that_is_down_is_unknown() {
    let s = signer();
    let host = format!("127.0.0.1:{}", testkit::paths::free_port());
    let o = verify_on(&host, &s.pem, &format!("{host}/org/app:v1"), None).await;
    assert!(
        is(&o, "unknown", "no pull source served the manifest"),
        "{o:?}"
    );
}

async fn cli(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cip-webhook"))
        .args(args)
        .output()
        .await
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cip(name: &str, scope: &str, key_pem: &str) -> String {
    json!({"apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy", "metadata": {"name": name},
           "spec": {"scopes": [scope], "policy": {"rootOfTrust": {"policyType": "PublicKey",
                    "publicKey": {"keyData": base64::engine::general_purpose::STANDARD.encode(key_pem)}}}}})
    .to_string()
}

/// `verify` and `preview` from the command line: a signed image accepted, an unsigned one
/// refused; a proposal that requires another key newly refuses the signed one; the saved
/// attachments let a second run judge the same with the registry gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_before_and_after_a_proposal() {
    let s = signer();
    let (shared, host) = start(Fake::default()).await;
    let digest = signed_image(&mut shared.fake.lock().unwrap(), &s, &host);
    {
        let mut f = shared.fake.lock().unwrap();
        let image = f.manifests[&("app".to_string(), "v1".to_string())].clone();
        f.manifests.insert(("bare".into(), "v1".into()), image);
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(
        input.join("image.yaml"),
        json!({"apiVersion": "config.openshift.io/v1", "kind": "Image", "metadata": {"name": "cluster"},
               "spec": {"registrySources": {"insecureRegistries": [host]}}})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        input.join("team.yaml"),
        cip("team", &format!("{host}/org/app"), &s.pem),
    )
    .unwrap();
    let other = signer();
    let proposed = dir.path().join("proposed.yaml");
    std::fs::write(&proposed, cip("team", &format!("{host}/org"), &other.pem)).unwrap();
    let images = dir.path().join("images.txt");
    std::fs::write(
        &images,
        format!(
            "team-a {host}/org/app:v1 {host}/org/app@{digest}\n# a comment\n{host}/org/bare:v1\n"
        ),
    )
    .unwrap();

    let input_s = input.to_str().unwrap();
    let (code, v, err) = cli(&[
        "verify",
        "--format",
        "json",
        "--input",
        input_s,
        &format!("{host}/org/app:v1"),
    ])
    .await;
    assert_eq!(
        (code, v["verdict"].as_str()),
        (0, Some("accepted")),
        "{v} {err}"
    );

    let attachments = dir.path().join("attachments.json");
    let args = |proposal: bool| {
        let mut a = vec![
            "preview",
            "--format",
            "json",
            "--input",
            input_s,
            "--images",
            images.to_str().unwrap(),
            "--attachments",
            attachments.to_str().unwrap(),
        ];
        if proposal {
            a.extend(["--proposed", proposed.to_str().unwrap()]);
        }
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| async move {
        cli(&a.iter().map(String::as_str).collect::<Vec<_>>()).await
    };
    // Under the input alone: the signed image passes, the other is outside the scope.
    let (code, v, err) = run(args(false)).await;
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["policies"][0]["covered"], 1, "{v}");
    assert_eq!(v["policies"][0]["accepted"], 1, "{v}");
    // The proposal widens the scope to the namespace and swaps the key: both refused, newly.
    let (code, v, err) = run(args(true)).await;
    assert_eq!(code, 1, "{v} {err}");
    let team = &v["policies"][0];
    assert_eq!(
        (team["covered"].as_u64(), team["newlyRefused"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    assert!(
        team["examples"][0]
            .as_str()
            .unwrap()
            .contains("newly refused"),
        "{v}"
    );
    // The same from the saved attachments, with the registry answering nothing.
    let before = shared.requests.load(Ordering::SeqCst);
    shared
        .fake
        .lock()
        .unwrap()
        .faults
        .push((String::new(), StatusCode::INTERNAL_SERVER_ERROR));
    let (code, again, err) = run(args(true)).await;
    assert_eq!(code, 1, "{again} {err}");
    assert_eq!(again["policies"], v["policies"]);
    assert_eq!(again["registryRequests"], 0, "{again}");
    assert_eq!(shared.requests.load(Ordering::SeqCst), before);
}

fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}

/// Benchmarks, not tests: `cargo test --release --test offline bench_verify -- --ignored
/// --nocapture`. One verification over loopback with a reused client and as a cold
/// process, and the requests it makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_verify_over_loopback() {
    let s = signer();
    let (shared, host) = start(Fake::default()).await;
    {
        let mut f = shared.fake.lock().unwrap();
        signed_image(&mut f, &s, &host);
        f.token = true;
    }
    let view = node(&host, &s.pem);
    let image = format!("{host}/org/app:v1");
    let client = Client::new(vec![host.clone()], None).unwrap();
    let memo = Memo::default();
    let before = shared.requests.load(Ordering::SeqCst);
    let o = verify(&view, &image, "amd64", &client, &memo)
        .await
        .unwrap();
    assert_eq!(o.verdict, "accepted");
    println!(
        "bench: first verification: {} requests sent ({} reached the registry, token included)",
        client.requests(),
        shared.requests.load(Ordering::SeqCst) - before
    );
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = std::time::Instant::now();
        let o = verify(&view, &image, "amd64", &client, &memo)
            .await
            .unwrap();
        times.push(t.elapsed());
        assert_eq!(o.verdict, "accepted");
    }
    println!(
        "bench: verify with a reused client: median {:?} over 200",
        median(times)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("image.yaml"),
        json!({"apiVersion": "config.openshift.io/v1", "kind": "Image", "metadata": {"name": "cluster"},
               "spec": {"registrySources": {"insecureRegistries": [host]}}}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        cip("p", &format!("{host}/org"), &s.pem),
    )
    .unwrap();
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = std::time::Instant::now();
        let (code, v, err) = cli(&[
            "verify",
            "--format",
            "json",
            "--input",
            dir.path().to_str().unwrap(),
            &image,
        ])
        .await;
        times.push(t.elapsed());
        assert_eq!(code, 0, "{v} {err}");
    }
    println!(
        "bench: verify as a cold process: median {:?} over 30",
        median(times)
    );
}

/// `preview` of 2,000 image digests behind 50 ms of latency per request, on two registries
/// (1,000 each) and on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_verify_preview_of_2000_images() {
    let s = signer();
    for registries in [2usize, 1] {
        let mut running = Vec::new();
        let mut hosts = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..registries {
            let (shared, host) = start(Fake::default()).await;
            let images = many_signed(
                &mut shared.fake.lock().unwrap(),
                &s,
                &host,
                2000 / registries,
            );
            shared.fake.lock().unwrap().latency = std::time::Duration::from_millis(50);
            running.extend(images.into_iter().map(|(image, digest)| {
                cip_webhook::pull::preview::Running {
                    namespace: None,
                    image,
                    digest: Some(digest),
                }
            }));
            hosts.push(host);
            servers.push(shared);
        }
        let key = base64::engine::general_purpose::STANDARD.encode(&s.pem);
        let scopes: serde_json::Map<String, serde_json::Value> = hosts
            .iter()
            .map(|h| {
                (
                    format!("{h}/org"),
                    json!([{"type": "sigstoreSigned", "keyData": key}]),
                )
            })
            .collect();
        let view = NodeView {
            policy: Policy::parse(&json!({"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": scopes}}).to_string()).unwrap(),
            policy_file: "/etc/containers/policy.json".into(),
            attachments: hosts.iter().map(|h| format!("{h}/org")).collect(),
            registries: RegistriesConf::generate(&hosts, &[], MirrorObjects::default()).unwrap(),
            now: 0,
        };
        let views = cip_webhook::pull::preview::Views::from([(None, view)]);
        let cache = cip_webhook::pull::preview::Cached::new(Some(
            Client::new(hosts.clone(), None).unwrap(),
        ));
        let memo = Memo::default();
        let t = std::time::Instant::now();
        let outcomes =
            cip_webhook::pull::preview::judge_all(&running, &views, "amd64", &cache, &memo).await;
        let took = t.elapsed();
        let accepted = outcomes.iter().filter(|o| o.verdict == "accepted").count();
        let rss = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or_default()
            .to_string();
        println!(
            "bench: preview of {} digests on {registries} registr{} behind 50 ms: {took:?}, {accepted} accepted, {} requests; test process {rss}",
            running.len(),
            if registries == 1 { "y" } else { "ies" },
            cache.inner().unwrap().requests()
        );
        assert_eq!(accepted, running.len());
        // What admission does for a new key: every image judged again from the cache
        // (on one thread here; admission spreads it over up to 4).
        let other = signer();
        let other_key = base64::engine::general_purpose::STANDARD.encode(&other.pem);
        let scopes: serde_json::Map<String, serde_json::Value> = hosts
            .iter()
            .map(|h| {
                (
                    format!("{h}/org"),
                    json!([{"type": "sigstoreSigned", "keyData": other_key}]),
                )
            })
            .collect();
        let mut views = views;
        views.get_mut(&None).unwrap().policy = Policy::parse(
            &json!({"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": scopes}})
                .to_string(),
        )
        .unwrap();
        let requests = cache.inner().unwrap().requests();
        let memo = Memo::default();
        let t = std::time::Instant::now();
        let outcomes =
            cip_webhook::pull::preview::judge_all(&running, &views, "amd64", &cache, &memo).await;
        let took = t.elapsed();
        assert!(outcomes.iter().all(|o| o.verdict == "refused"));
        assert_eq!(cache.inner().unwrap().requests(), requests);
        println!(
            "bench: a new key over the same {} digests from the cache, one thread: {took:?} ({:?} per image)",
            running.len(),
            took / running.len() as u32
        );
    }
}

/// Through a digest mirror, as a node pulls: the mirror serves the manifest, so the
/// signature is read there (the source is never asked); a mirror that serves the image
/// but not its `.sig` makes the image unsigned; a mirror that lacks the image is passed
/// over for the source. And a namespace's ImagePolicy decides in its own policy file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_and_namespace_policy_files() {
    let s = signer();
    let (source, source_host) = start(Fake::default()).await;
    let (mirror, mirror_host) = start(Fake::default()).await;
    let digest = signed_image(&mut source.fake.lock().unwrap(), &s, &source_host);
    // The mirror holds the same image and the source's attachment, as `oc mirror` copies them.
    {
        let from = source.fake.lock().unwrap();
        let mut to = mirror.fake.lock().unwrap();
        to.manifests = from.manifests.clone();
        to.blobs = from.blobs.clone();
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path();
    let docs = [
        json!({"apiVersion": "config.openshift.io/v1", "kind": "Image", "metadata": {"name": "cluster"},
               "spec": {"registrySources": {"insecureRegistries": [source_host, mirror_host]}}}),
        json!({"apiVersion": "config.openshift.io/v1", "kind": "ImageDigestMirrorSet", "metadata": {"name": "m"},
               "spec": {"imageDigestMirrors": [{"source": format!("{source_host}/org"), "mirrors": [format!("{mirror_host}/org")]}]}}),
        serde_json::from_str(&cip("p", &format!("{source_host}/org"), &s.pem)).unwrap(),
    ];
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(input.join(format!("{i}.yaml")), d.to_string()).unwrap();
    }
    let by_digest = format!("{source_host}/org/app@{digest}");
    let verify = |image: String, extra: Vec<String>| async move {
        let mut args = vec![
            "verify".to_string(),
            "--format".into(),
            "json".into(),
            "--input".into(),
            input.display().to_string(),
        ];
        args.extend(extra);
        args.push(image);
        cli(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
    };
    let source_before = source.requests.load(Ordering::SeqCst);
    let (code, v, err) = verify(by_digest.clone(), vec![]).await;
    assert_eq!(
        (code, v["verdict"].as_str()),
        (0, Some("accepted")),
        "{v} {err}"
    );
    assert_eq!(
        v["source"],
        format!("{mirror_host}/org/app@{digest}"),
        "{v}"
    );
    assert_eq!(
        source.requests.load(Ordering::SeqCst),
        source_before,
        "the source was asked"
    );
    // A tag pull does not use a digest-only mirror.
    let (_, v, _) = verify(format!("{source_host}/org/app:v1"), vec![]).await;
    assert_eq!(v["source"], format!("{source_host}/org/app:v1"), "{v}");
    // The mirror without the signature: unsigned, although the source has one.
    mirror
        .fake
        .lock()
        .unwrap()
        .manifests
        .retain(|(_, r), _| !r.ends_with(".sig"));
    let (code, v, err) = verify(by_digest.clone(), vec![]).await;
    assert_eq!(code, 1, "{v} {err}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("no signature exists"),
        "{v}"
    );
    // The mirror without the image: passed over, the source serves it and its signature.
    mirror.fake.lock().unwrap().manifests.clear();
    let (code, v, err) = verify(by_digest.clone(), vec![]).await;
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(
        v["source"],
        format!("{source_host}/org/app@{digest}"),
        "{v}"
    );
    assert!(
        v["skippedSources"][0]
            .as_str()
            .unwrap()
            .contains("manifest unknown"),
        "{v}"
    );

    // A namespace's ImagePolicy (the cluster policy gone: one inside it would be dropped,
    // as the MCO drops it): its file refuses what policy.json lets through unsigned.
    std::fs::remove_file(input.join("2.yaml")).unwrap();
    let other = signer();
    let team = json!({"apiVersion": "config.openshift.io/v1", "kind": "ImagePolicy",
        "metadata": {"name": "team", "namespace": "team-a"},
        "spec": {"scopes": [format!("{source_host}/org/app")], "policy": {"rootOfTrust": {"policyType": "PublicKey",
                 "publicKey": {"keyData": base64::engine::general_purpose::STANDARD.encode(&other.pem)}}}}});
    std::fs::write(input.join("team.yaml"), team.to_string()).unwrap();
    let (code, v, err) = verify(
        by_digest.clone(),
        vec!["--namespace".into(), "team-a".into()],
    )
    .await;
    assert_eq!(code, 1, "{v} {err}");
    assert_eq!(v["policyFile"], "/etc/crio/policies/team-a.json", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("cryptographic signature verification failed"),
        "{v}"
    );
    let (code, v, err) = verify(by_digest, vec!["--namespace".into(), "team-b".into()]).await;
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["policyFile"], "/etc/containers/policy.json", "{v}");
    assert_eq!(v["noSignatureRequired"], true, "{v}");
}

/// A replica's copy of a pass over `n` signed digests in one pool (20 namespaces), the
/// signer, the registry and its host.
async fn copy_over(n: usize) -> (cip_webhook::pull::impact::Copy, Signer, Shared, String) {
    use cip_core::render::{self, RenderOptions};
    use cip_core::running::{Distinct, Placement, Running};
    use cip_webhook::pull::impact::{judge, Copy, Transfer};
    let s = signer();
    let (shared, host) = start(Fake::default()).await;
    let images = many_signed(&mut shared.fake.lock().unwrap(), &s, &host, n);
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut inputs = cip_webhook::files::load_dir(&examples, &[examples.join("rejected")])
        .unwrap()
        .inputs;
    let mut image = inputs.image.clone().unwrap();
    image.spec.registry_sources.insecure_registries = vec![host.clone()].into();
    inputs.image = Some(image);
    inputs.policies.push(std::sync::Arc::new(
        serde_json::from_str(&cip("bench", &format!("{host}/org"), &s.pem)).unwrap(),
    ));
    let options = RenderOptions::default();
    let plan = render::plan(&inputs, &options).unwrap();
    let mut distinct = Distinct::default();
    let worker = Placement {
        pool: "worker".into(),
        arch: "amd64".into(),
    };
    for (i, (image, digest)) in images.iter().enumerate() {
        let running = Running {
            namespace: Some(format!("ns-{}", i % 20)),
            image: image.clone(),
            digest: Some(digest.clone()),
        };
        distinct
            .images
            .entry(worker.clone())
            .or_default()
            .insert(running, 1);
    }
    let cache = cip_webhook::pull::preview::Cached::new(Some(
        Client::new(vec![host.clone()], None).unwrap(),
    ));
    let judged = judge(&inputs, &plan, &distinct, &cache, 0, &Memo::default()).await;
    assert_eq!(judged.by_verdict(), (n, 0, 0), "{:?}", judged.skipped);
    let transfer = Transfer::of(&judged, &cache, 0, 600);
    let copy = Copy::from_transfer(
        std::sync::Arc::new(inputs),
        plan,
        options,
        serde_json::from_str(&serde_json::to_string(&transfer).unwrap()).unwrap(),
        || 0,
        Default::default(),
    )
    .unwrap();
    (copy, s, shared, host)
}

/// What admission checks from a copy: an edit that keeps the key judges no image again
/// (each image's pull meets the same requirements); a new key checks each signature once,
/// and the same proposal again checks none; after warming, a new key checks none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_from_a_copy_checks_each_signature_once() {
    use cip_core::model::PolicyKind;
    use cip_core::running::Preview;
    let (copy, s, shared, host) = copy_over(20).await;
    let requests = shared.requests.load(Ordering::Relaxed);
    let change = |proposal: &str| {
        tokio::task::block_in_place(|| copy.policy_change(PolicyKind::Cluster, proposal, &|| false))
    };
    let mut scoped: serde_json::Value =
        serde_json::from_str(&cip("bench", &format!("{host}/org"), &s.pem)).unwrap();
    scoped["spec"]["scopes"] = json!([format!("{host}/org"), format!("{host}/elsewhere")]);
    assert!(change(&scoped.to_string()).is_empty());
    assert_eq!(
        copy.memo.len(),
        0,
        "the edit that keeps the key judged nothing"
    );
    // Before warming, a new key runs the curve once per signature.
    let rotation = cip("bench", &format!("{host}/org"), &signer().pem);
    let w = change(&rotation);
    assert!(
        w[0].starts_with("this change newly refuses 20 of 20 covered running images"),
        "{w:?}"
    );
    assert_eq!((copy.memo.len(), copy.memo.signers_kept()), (20, 0));
    assert_eq!(change(&rotation), w);
    assert_eq!(
        copy.memo.len(),
        20,
        "the same proposal again checked nothing"
    );
    // Warming keeps each signature's signers: the next new key runs no curve, and says
    // the same as the curve did.
    assert_eq!(tokio::task::block_in_place(|| copy.warm()), 20);
    assert_eq!((copy.memo.len(), copy.memo.signers_kept()), (20, 20));
    let another = cip("bench", &format!("{host}/org"), &signer().pem);
    assert_eq!(change(&another), w);
    assert_eq!(change(&rotation), w);
    assert_eq!((copy.memo.len(), copy.memo.signers_kept()), (20, 20));
    assert_eq!(shared.requests.load(Ordering::Relaxed), requests);
}

/// Admission's new-key judgement as a replica makes it: a copy of a pass over 2,000
/// signed digests (20 namespaces, one pool), then `policy_change` for a policy over the
/// same scope with another key each time: before the copy is warmed (the curve for every
/// signature) and after (each key compared with the signers warming recovered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_admission_new_key_from_copy() {
    use cip_core::model::PolicyKind;
    use cip_core::running::Preview;
    let n = std::env::var("CIP_BENCH_DIGESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (copy, s, shared, host) = copy_over(n).await;
    let requests = shared.requests.load(Ordering::Relaxed);
    let runs: usize = std::env::var("CIP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let time = |proposal: &str, newly: usize| {
        let t = std::time::Instant::now();
        let w = tokio::task::block_in_place(|| {
            copy.policy_change(PolicyKind::Cluster, proposal, &|| false)
        });
        let took = t.elapsed();
        match newly {
            0 => assert!(w.is_empty(), "{w:?}"),
            n => assert!(
                w[0].starts_with(&format!("this change newly refuses {n} of {n} covered")),
                "{w:?}"
            ),
        }
        took
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = |what: &str, mut times: Vec<std::time::Duration>| {
        times.sort();
        println!(
            "bench: admission, {what}, over {n} digests from a copy, {} runs on {threads} threads: median {:?}, max {:?}",
            times.len(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    };
    let new_key = || cip("bench", &format!("{host}/org"), &signer().pem);
    // A key never seen before, each run, on a copy not yet warmed: the curve for every
    // signature.
    let unwarmed: Vec<_> = (0..runs).map(|_| time(&new_key(), n)).collect();
    // Warmed as a replica warms each copy it loads (signers recovered), then new keys.
    let warmed = std::time::Instant::now();
    assert_eq!(
        tokio::task::block_in_place(|| copy.warm()),
        n,
        "every image judged"
    );
    println!("bench: warming the copy: {:?}", warmed.elapsed());
    let cold: Vec<_> = (0..runs).map(|_| time(&new_key(), n)).collect();
    // The same proposal again (`oc apply` after its `--dry-run=server`).
    let proposal = new_key();
    time(&proposal, n);
    let again: Vec<_> = (0..runs).map(|_| time(&proposal, n)).collect();
    // Warm: an edit that keeps the key.
    let mut scoped: serde_json::Value =
        serde_json::from_str(&cip("bench", &format!("{host}/org"), &s.pem)).unwrap();
    scoped["spec"]["scopes"] = json!([format!("{host}/org"), format!("{host}/elsewhere")]);
    let warm: Vec<_> = (0..runs).map(|_| time(&scoped.to_string(), 0)).collect();
    assert_eq!(shared.requests.load(Ordering::Relaxed), requests);
    report("a new key, copy not warmed (the curve each time)", unwarmed);
    report("a new key (cold), warmed copy", cold);
    report("the same new key again", again);
    report("an edit that keeps the key (warm copy)", warm);
}

/// Keyless images judged twice with one memo: the first judgement checks each layer's SET
/// and Fulcio chain and its payload signature once; the second, the same verdicts, checks
/// nothing. A layer whose bundle is another's is refused, memo or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_checks_are_made_once_per_layer() {
    let now = 1_800_000_000;
    let k = KeylessSigner::new(now);
    let (shared, host) = start(Fake::default()).await;
    let images = many_keyless(&mut shared.fake.lock().unwrap(), &k, &host, 3);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut view = node(&host, &signer().pem);
    view.policy = Policy::parse(
        &json!({"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {
            format!("{host}/org"): [{"type": "sigstoreSigned",
                "fulcio": {"caData": b64(&k.root.pem), "oidcIssuer": k.issuer, "subjectEmail": k.email},
                "rekorPublicKeyData": b64(&k.rekor.public_pem),
                "signedIdentity": {"type": "matchRepoDigestOrExact"}}]}}})
        .to_string(),
    )
    .unwrap();
    let client = Client::new(vec![host.clone()], None).unwrap();
    let memo = Memo::default();
    let judge_all = async |memo: &Memo| {
        let mut verdicts = Vec::new();
        for (image, _) in &images {
            let o = verify(&view, image, "amd64", &client, memo).await.unwrap();
            verdicts.push((o.verdict, o.reason));
        }
        verdicts
    };
    let first = judge_all(&memo).await;
    assert!(first.iter().all(|(v, _)| v == "accepted"), "{first:?}");
    assert_eq!(memo.len(), 6, "a SET and chain, and a signature, per layer");
    assert_eq!(judge_all(&memo).await, first);
    assert_eq!(memo.len(), 6);
    // app-1's attachment carrying app-0's bundle: its SET does not cover its signature.
    {
        let mut fake = shared.fake.lock().unwrap();
        let sig_tag = |i: usize| format!("{}.sig", images[i].1.replace(':', "-"));
        let bundle_of = |f: &Fake, i: usize| {
            let m: serde_json::Value =
                serde_json::from_slice(&f.manifests[&(format!("app-{i}"), sig_tag(i))].1).unwrap();
            m["layers"][0]["annotations"]["dev.sigstore.cosign/bundle"].clone()
        };
        let other = bundle_of(&fake, 0);
        let entry = fake
            .manifests
            .get_mut(&("app-1".to_string(), sig_tag(1)))
            .unwrap();
        let mut m: serde_json::Value = serde_json::from_slice(&entry.1).unwrap();
        m["layers"][0]["annotations"]["dev.sigstore.cosign/bundle"] = other;
        entry.1 = m.to_string().into_bytes();
    }
    let client = Client::new(vec![host.clone()], None).unwrap();
    let o = verify(&view, &images[1].0, "amd64", &client, &memo)
        .await
        .unwrap();
    assert_eq!(o.verdict, "refused", "{o:?}");
}
