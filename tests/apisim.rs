//! The API simulator behaves like an API server where the product and kubectl depend on
//! it: checked through kube-rs, the client the product uses.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::Duration;

use apisim::{Config, FaultAction, Simulator};
use futures_util::{StreamExt, TryStreamExt};
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::Client;
use serde_json::{json, Value};

use cluster::{root, CIP_V1_CRD, IMAGES_CRD, MCO_CRDS};

async fn sim() -> (Simulator, Client) {
    let sim = Simulator::start(Config {
        crds: [CIP_V1_CRD, IMAGES_CRD, MCO_CRDS]
            .iter()
            .map(|c| root().join(c))
            .collect(),
        bookmark_every: Duration::from_millis(100),
        ..Config::default()
    })
    .await
    .unwrap();
    let file = kube::config::Kubeconfig::read_from(sim.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    (sim, Client::try_from(config).unwrap())
}

fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn pools(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &resource(
            "machineconfiguration.openshift.io",
            "MachineConfigPool",
            "machineconfigpools",
        ),
    )
}

fn mcs(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &resource(
            "machineconfiguration.openshift.io",
            "MachineConfig",
            "machineconfigs",
        ),
    )
}

fn mc(name: &str, role: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfig",
        "metadata": {"name": name, "labels": {"machineconfiguration.openshift.io/role": role}},
        "spec": {"config": {"ignition": {"version": "3.2.0"}}}
    }))
    .unwrap()
}

fn status_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

fn api_message(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn metadata_generation_and_optimistic_concurrency() {
    let (_sim, client) = sim().await;
    let api = mcs(&client);
    let created = api
        .create(&PostParams::default(), &mc("a", "worker"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv = meta.resource_version.clone().unwrap();
    assert_eq!(
        status_code(
            api.create(&PostParams::default(), &mc("a", "worker"))
                .await
                .unwrap_err()
        ),
        409
    );

    // A label change keeps the generation; a spec change bumps it.
    let mut relabeled = created.clone();
    relabeled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("x".into(), "y".into());
    let relabeled = api
        .replace("a", &PostParams::default(), &relabeled)
        .await
        .unwrap();
    assert_eq!(relabeled.metadata.generation, Some(1));
    assert_eq!(relabeled.metadata.uid, created.metadata.uid);
    let mut respec = relabeled.clone();
    respec.data["spec"]["kernelType"] = json!("realtime");
    let respec = api
        .replace("a", &PostParams::default(), &respec)
        .await
        .unwrap();
    assert_eq!(respec.metadata.generation, Some(2));

    // Writing with the resource version first read is a conflict now.
    let mut stale = created.clone();
    stale.metadata.resource_version = Some(rv);
    let e = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(
        api_message(e),
        "Operation cannot be fulfilled on machineconfigs.machineconfiguration.openshift.io \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // Custom resources refuse unconditional updates.
    let mut unconditional = respec.clone();
    unconditional.metadata.resource_version = None;
    assert_eq!(
        status_code(
            api.replace("a", &PostParams::default(), &unconditional)
                .await
                .unwrap_err()
        ),
        422
    );
    assert_eq!(status_code(api.get("missing").await.unwrap_err()), 404);
}

#[tokio::test]
async fn status_is_a_subresource() {
    let (_sim, client) = sim().await;
    let api = pools(&client);
    let pool: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigPool",
        "metadata": {"name": "worker"}, "spec": {}, "status": {"machineCount": 3}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &pool).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create"
    );
    let patched = api
        .patch_status(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"machineCount": 3}, "spec": {"paused": true}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["machineCount"], 3);
    assert!(
        patched.data["spec"].get("paused").is_none(),
        "the status subresource changes only status"
    );
    assert_eq!(patched.metadata.generation, Some(1));
    let main = api
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"machineCount": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(
        main.data["status"]["machineCount"], 3,
        "the main resource ignores status"
    );
}

#[tokio::test]
async fn selectors_patches_and_server_side_apply() {
    let (_sim, client) = sim().await;
    let api = mcs(&client);
    for (name, role) in [("w1", "worker"), ("w2", "worker"), ("m1", "master")] {
        api.create(&PostParams::default(), &mc(name, role))
            .await
            .unwrap();
    }
    let names = |list: kube::core::ObjectList<DynamicObject>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|o| o.metadata.name.unwrap())
            .collect()
    };
    let role = ListParams::default().labels("machineconfiguration.openshift.io/role=worker");
    assert_eq!(names(api.list(&role).await.unwrap()), ["w1", "w2"]);
    let by_name = ListParams::default().fields("metadata.name=m1");
    assert_eq!(names(api.list(&by_name).await.unwrap()), ["m1"]);

    let json_patch: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/spec/kernelType", "value": "realtime"}]),
    )
    .unwrap();
    let p = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Json::<()>(json_patch),
        )
        .await
        .unwrap();
    assert_eq!(p.data["spec"]["kernelType"], "realtime");

    // Server-side apply: the manager owns what it applied, and drops what it stops applying.
    let apply = |spec: Value| {
        json!({"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfig",
               "metadata": {"name": "ssa"}, "spec": spec})
    };
    let pp = PatchParams::apply("cip-webhook");
    let created = api
        .patch(
            "ssa",
            &pp,
            &Patch::Apply(apply(json!({"kernelType": "realtime", "fips": true}))),
        )
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["fips"], true);
    let shrunk = api
        .patch(
            "ssa",
            &pp,
            &Patch::Apply(apply(json!({"kernelType": "realtime"}))),
        )
        .await
        .unwrap();
    assert!(shrunk.data["spec"].get("fips").is_none());
    let other = PatchParams::apply("someone-else");
    let e = api
        .patch(
            "ssa",
            &other,
            &Patch::Apply(apply(json!({"kernelType": "default"}))),
        )
        .await
        .unwrap_err();
    assert_eq!(
        api_message(e),
        "Apply failed with 1 conflict: conflict with \"cip-webhook\": .spec.kernelType"
    );
    let forced = api
        .patch(
            "ssa",
            &other.force(),
            &Patch::Apply(apply(json!({"kernelType": "default"}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data["spec"]["kernelType"], "default");
}

#[tokio::test]
async fn schema_and_cel_errors_are_the_api_servers() {
    let (_sim, client) = sim().await;
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &resource(
            "config.openshift.io",
            "ClusterImagePolicy",
            "clusterimagepolicies",
        ),
    );
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy", "metadata": {"name": "bad"},
        "spec": {"scopes": ["*.example.com/x"], "policy": {"rootOfTrust": {"policyType": "Nope"}}}
    }))
    .unwrap();
    let e = match api.create(&PostParams::default(), &bad).await.unwrap_err() {
        kube::Error::Api(s) => s,
        other => panic!("{other}"),
    };
    assert_eq!(e.code, 422);
    assert_eq!(e.reason, "Invalid");
    // An enum error blocks the CEL rules, as in the API server.
    assert_eq!(
        e.message,
        "ClusterImagePolicy.config.openshift.io \"bad\" is invalid: [spec.policy.rootOfTrust.policyType: Unsupported value: \"Nope\": supported values: \"PublicKey\", \"FulcioCAWithRekor\", \"PKI\", <nil>: Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
    );
}

#[tokio::test]
async fn watches_replay_bookmark_expire_and_close() {
    let (sim, client) = sim().await;
    let api = mcs(&client);
    let first = api
        .create(&PostParams::default(), &mc("a", "worker"))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    api.create(&PostParams::default(), &mc("b", "worker"))
        .await
        .unwrap();
    api.delete("a", &Default::default()).await.unwrap();

    // From a resource version: the changes after it, then bookmarks.
    let wp = WatchParams::default();
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    let mut seen = Vec::new();
    while let Some(ev) = stream.try_next().await.unwrap() {
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(b) => {
                seen.push("BOOKMARK".into());
                assert_eq!(
                    b.metadata.resource_version,
                    sim.resource_version().to_string()
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED b", "DELETED a", "BOOKMARK"]);

    // Closing the streams ends them.
    sim.close_watches();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(WatchEvent::Bookmark(_))) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");

    // History gone: 410 Expired as an ERROR event.
    sim.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("{other:?}"),
    }
}

/// A watch delivers every write in resourceVersion order, however many writers race: a
/// client that resumes from the last version it saw must not skip one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_reach_a_watch_in_order_and_none_is_lost() {
    let (_sim, client) = sim().await;
    let api = mcs(&client);
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let api = api.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    api.create(&PostParams::default(), &mc(&format!("w{w}-{i}"), "worker"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut last = 0u64;
    let collect = async {
        while seen.len() < WRITERS * EACH {
            match stream.try_next().await.unwrap() {
                Some(WatchEvent::Added(o)) => {
                    let rv: u64 = o.metadata.resource_version.unwrap().parse().unwrap();
                    assert!(rv > last, "version {rv} after {last}");
                    last = rv;
                    seen.push(o.metadata.name.unwrap());
                }
                Some(WatchEvent::Bookmark(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(20), collect).await;
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        done.is_ok(),
        "{} of {} writes seen",
        seen.len(),
        WRITERS * EACH
    );
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), WRITERS * EACH);
}

#[tokio::test]
async fn faults_and_the_request_log() {
    let (sim, client) = sim().await;
    let api = mcs(&client);
    sim.clear_requests();
    sim.inject(
        Some("create"),
        Some("machineconfigs"),
        2,
        FaultAction::Fail(500),
    );
    for _ in 0..2 {
        assert_eq!(
            status_code(
                api.create(&PostParams::default(), &mc("a", "worker"))
                    .await
                    .unwrap_err()
            ),
            500
        );
    }
    api.create(&PostParams::default(), &mc("a", "worker"))
        .await
        .unwrap();
    sim.inject(Some("update"), None, 1, FaultAction::Conflict);
    let current = api.get("a").await.unwrap();
    assert_eq!(
        status_code(
            api.replace("a", &PostParams::default(), &current)
                .await
                .unwrap_err()
        ),
        409
    );
    api.replace("a", &PostParams::default(), &current)
        .await
        .unwrap();
    sim.inject(
        Some("get"),
        Some("machineconfigs"),
        1,
        FaultAction::Delay(Duration::from_millis(300)),
    );
    let t = std::time::Instant::now();
    api.get("a").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));

    let log: Vec<(String, u16)> = sim
        .requests()
        .into_iter()
        .map(|r| (r.verb, r.code))
        .collect();
    let want: Vec<(String, u16)> = [
        ("create", 500),
        ("create", 500),
        ("create", 201),
        ("get", 200),
        ("update", 409),
        ("update", 200),
        ("get", 200),
    ]
    .iter()
    .map(|(v, c)| (v.to_string(), *c))
    .collect();
    assert_eq!(log, want);
    assert!(sim
        .requests()
        .iter()
        .all(|r| r.user == apisim::ADMIN && r.resource == "machineconfigs"));
}

/// A webhook that answers by path: `/slow` never in time, `/deny-200` denies with code 200
/// and a message, `/deny-reason` denies with only a reason, `/warn` allows with a warning.
async fn fake_webhook() -> (std::net::SocketAddr, String) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::pem::PemObject;

    let generated = cip_webhook::tls::generate(&["127.0.0.1".to_string()], 1).unwrap();
    let chain =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(generated.cert.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(generated.key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: hyper::Request<Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let review: Value = serde_json::from_slice(&body).unwrap();
                        let uid = review["request"]["uid"].clone();
                        let response = match path.as_str() {
                            "/slow" => {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                json!({"uid": uid, "allowed": true})
                            }
                            "/deny-200" => {
                                json!({"uid": uid, "allowed": false, "status": {"code": 200, "message": "nope"}})
                            }
                            "/deny-reason" => {
                                json!({"uid": uid, "allowed": false, "status": {"reason": "Forbidden"}})
                            }
                            _ => json!({"uid": uid, "allowed": true, "warnings": ["be careful"]}),
                        };
                        let out = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(out.to_string()),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let bundle = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &generated.ca_cert,
    );
    (addr, bundle)
}

#[tokio::test]
async fn admission_webhooks_are_called_as_the_api_server_calls_them() {
    let (sim, client) = sim().await;
    let (addr, bundle) = fake_webhook().await;
    let register = |path: &str, policy: &str, timeout: u64| {
        sim.seed(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "fake"},
            "webhooks": [{
                "name": "fake.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": policy, "timeoutSeconds": timeout,
                "clientConfig": {"url": format!("https://{addr}{path}"), "caBundle": bundle},
                "rules": [{"apiGroups": ["machineconfiguration.openshift.io"], "apiVersions": ["v1"],
                           "resources": ["machineconfigs"], "operations": ["CREATE"]}]
            }]
        }))
        .unwrap();
    };
    let api = mcs(&client);
    let create = |name: &str| {
        let api = api.clone();
        let object = mc(name, "worker");
        async move { api.create(&PostParams::default(), &object).await }
    };

    // A code under 400 becomes 400; the message is wrapped.
    register("/deny-200", "Fail", 5);
    let e = match create("a").await.unwrap_err() {
        kube::Error::Api(s) => s,
        other => panic!("{other}"),
    };
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            400,
            "admission webhook \"fake.example.com\" denied the request: nope"
        )
    );

    // Only a reason: it is the message, and passed through.
    register("/deny-reason", "Fail", 5);
    let e = match create("a").await.unwrap_err() {
        kube::Error::Api(s) => s,
        other => panic!("{other}"),
    };
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (
            400,
            "Forbidden",
            "admission webhook \"fake.example.com\" denied the request: Forbidden"
        )
    );

    // timeoutSeconds: Fail refuses after the timeout, Ignore admits.
    register("/slow", "Fail", 1);
    let started = std::time::Instant::now();
    let message = api_message(create("a").await.unwrap_err());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    assert_eq!(
        message,
        format!("Internal error occurred: failed calling webhook \"fake.example.com\": failed to call webhook: Post \"https://{addr}/slow?timeout=1s\": context deadline exceeded")
    );
    register("/slow", "Ignore", 1);
    create("a").await.unwrap();

    // A CA other than the caBundle's is refused; warnings reach the client's headers.
    register("/warn", "Fail", 5);
    let (_, other_bundle) = fake_webhook().await;
    let mut config = sim
        .get(
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "",
            "fake",
        )
        .unwrap();
    config["webhooks"][0]["clientConfig"]["caBundle"] = json!(other_bundle);
    sim.seed(config).unwrap();
    let message = api_message(create("b").await.unwrap_err());
    assert!(
        message.contains("tls: failed to verify certificate"),
        "{message}"
    );
    register("/warn", "Fail", 5);
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(sim.kubeconfig())
        .args(["create", "--validate=false", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = out;
    use tokio::io::AsyncWriteExt;
    out.stdin
        .take()
        .unwrap()
        .write_all(
            serde_json::to_string(&mc("c", "worker"))
                .unwrap()
                .as_bytes(),
        )
        .await
        .unwrap();
    let out = out.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Warning: be careful\n"
    );
}

/// Events get the API server's own checks: one about a cluster-scoped object only in
/// `default`, the fields a series update may not change stay; kube's `Recorder` turns a
/// repeat into a series on the first Event.
#[tokio::test]
async fn events_are_checked_as_the_api_server_checks_them() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (_sim, client) = sim().await;
    let events = ApiResource::erase::<k8s_openapi::api::events::v1::Event>(&());
    let about_cluster_object = |namespace: &str| {
        serde_json::from_value::<DynamicObject>(json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "x.1", "namespace": namespace},
            "eventTime": "2026-12-02T10:00:00.000000Z",
            "reportingController": "cip-webhook", "reportingInstance": "r-0",
            "action": "Render", "reason": "ConflictScopes", "type": "Warning",
            "regarding": {"apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy", "name": "x"},
        }))
        .unwrap()
    };
    let ours: Api<DynamicObject> = Api::namespaced_with(client.clone(), "cip-webhook", &events);
    let e = ours
        .create(&PostParams::default(), &about_cluster_object("cip-webhook"))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(s.code, 422);
    assert!(
        s.message.contains("involvedObject.namespace")
            && s.message.contains("does not match event.namespace"),
        "{}",
        s.message
    );
    let default: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &events);
    default
        .create(&PostParams::default(), &about_cluster_object("default"))
        .await
        .unwrap();
    let e = default
        .patch(
            "x.1",
            &PatchParams::default(),
            &Patch::Merge(json!({"note": "changed"})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, kube::Error::Api(s) if s.code == 422 && s.message.contains("message: ")),
        "{e}"
    );

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "cip-webhook".into(),
            instance: Some("r-0".into()),
        },
    );
    let regarding = ObjectReference {
        api_version: Some("config.openshift.io/v1".into()),
        kind: Some("ClusterImagePolicy".into()),
        name: Some("y".into()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "ConflictScopes".into(),
        note: Some("first".into()),
        action: "Render".into(),
        secondary: None,
    };
    recorder.publish(&event, &regarding).await.unwrap();
    recorder.publish(&event, &regarding).await.unwrap();
    let list = default.list(&ListParams::default()).await.unwrap();
    let series: Vec<&DynamicObject> = list
        .items
        .iter()
        .filter(|e| e.data["regarding"]["name"] == "y")
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].data["series"]["count"], 2);
    assert_eq!(series[0].data["note"], "first");
}
