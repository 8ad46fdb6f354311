//! The simulator against the real API server: every behaviour of the simulator that a test
//! relies on is run as the same requests on both, and what each answered (status codes,
//! messages, stored fields, watch events) must be the same. Each case also asserts what
//! the product depends on, so agreement on something else cannot pass for correctness.

use std::path::PathBuf;
use std::time::Duration;

use apisim::{Config, Simulator};
use futures_util::{StreamExt, TryStreamExt};
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::Client;
use serde_json::{json, Value};
use testkit::clients::{self, mc, mcs, pools, status_code};
use testkit::kube::KubeApiServer;
use testkit::upstream::Crd;

const CRDS: [Crd; 4] = [
    Crd::ClusterImagePolicyV1,
    Crd::ClusterVersion,
    Crd::MachineConfig,
    Crd::MachineConfigPool,
];

/// One API server under test, as a client of the product's kind sees it.
struct Side {
    name: &'static str,
    client: Client,
    kubeconfig: PathBuf,
    sim: Option<Simulator>,
    real: Option<KubeApiServer>,
}

impl Side {
    async fn simulated() -> Side {
        let sim = Simulator::start(Config {
            crds: CRDS.iter().map(|c| c.path()).collect(),
            ..Config::default()
        })
        .await
        .unwrap();
        let kubeconfig = sim.kubeconfig().to_path_buf();
        Side {
            name: "simulator",
            client: clients::client(&kubeconfig).await,
            kubeconfig,
            sim: Some(sim),
            real: None,
        }
    }

    async fn real() -> Side {
        let real = KubeApiServer::start(&CRDS).await;
        let kubeconfig = real.kubeconfig();
        Side {
            name: "kube-apiserver",
            client: clients::client(&kubeconfig).await,
            kubeconfig,
            sim: None,
            real: Some(real),
        }
    }

    /// Stores an object as the administrator, bypassing nothing on the real server.
    async fn put(&self, object: Value) {
        match (&self.sim, &self.real) {
            (Some(sim), _) => {
                sim.seed(object).unwrap();
            }
            (_, Some(real)) => {
                real.seed(object).await;
            }
            _ => unreachable!(),
        }
    }
}

/// Runs `case` on both servers; their transcripts must be equal. Returns the real one's.
async fn differential<F>(case: F) -> Vec<String>
where
    F: AsyncFn(&Side) -> Vec<String>,
{
    let (sim, real) = tokio::join!(Side::simulated(), Side::real());
    let (on_sim, on_real) = tokio::join!(case(&sim), case(&real));
    if on_sim != on_real {
        let mut diff = String::new();
        for i in 0..on_sim.len().max(on_real.len()) {
            let (a, b) = (on_sim.get(i), on_real.get(i));
            if a != b {
                diff.push_str(&format!("  {}: {a:?}\n  {}: {b:?}\n", sim.name, real.name));
            }
        }
        panic!("the simulator and the real API server differ:\n{diff}");
    }
    on_real
}

/// How an API call ended, for a transcript: the status code and message of an error.
fn outcome<T>(what: &str, r: Result<T, kube::Error>) -> String {
    match r {
        Ok(_) => format!("{what}: ok"),
        Err(kube::Error::Api(s)) => format!("{what}: {} {} {}", s.code, s.reason, s.message),
        Err(e) => format!("{what}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_generation_and_optimistic_concurrency() {
    let t = differential(async |side: &Side| {
        let api = mcs(&side.client);
        let mut t = Vec::new();
        let created = api.create(&PostParams::default(), &mc("a", "worker")).await.unwrap();
        let meta = &created.metadata;
        t.push(format!("created: uid {} generation {:?}", meta.uid.is_some(), meta.generation));
        t.push(outcome("create again", api.create(&PostParams::default(), &mc("a", "worker")).await));
        let rv = meta.resource_version.clone().unwrap();

        // A label change keeps the generation; a spec change bumps it.
        let mut relabeled = created.clone();
        relabeled.metadata.labels.as_mut().unwrap().insert("x".into(), "y".into());
        let relabeled = api.replace("a", &PostParams::default(), &relabeled).await.unwrap();
        t.push(format!(
            "relabelled: generation {:?}, same uid {}",
            relabeled.metadata.generation,
            relabeled.metadata.uid == created.metadata.uid
        ));
        let mut respec = relabeled.clone();
        respec.data["spec"]["kernelType"] = json!("realtime");
        let respec = api.replace("a", &PostParams::default(), &respec).await.unwrap();
        t.push(format!("respecced: generation {:?}", respec.metadata.generation));

        let mut stale = created.clone();
        stale.metadata.resource_version = Some(rv.clone());
        t.push(outcome("stale replace", api.replace("a", &PostParams::default(), &stale).await));
        let mut unconditional = respec.clone();
        unconditional.metadata.resource_version = None;
        t.push(outcome("unconditional replace", api.replace("a", &PostParams::default(), &unconditional).await));
        t.push(outcome("get missing", api.get("missing").await));
        // A create that carries a resourceVersion (copied from a read) is refused.
        let mut with_rv = mc("b", "worker");
        with_rv.metadata.resource_version = Some(rv);
        t.push(outcome("create with a resourceVersion", api.create(&PostParams::default(), &with_rv).await));
        // A namespaced object in a namespace that does not exist.
        let leases: Api<DynamicObject> = Api::namespaced_with(
            side.client.clone(),
            "nowhere",
            &ApiResource::erase::<k8s_openapi::api::coordination::v1::Lease>(&()),
        );
        let lease: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {}
        }))
        .unwrap();
        t.push(outcome("create in a missing namespace", leases.create(&PostParams::default(), &lease).await));
        t
    })
    .await;
    assert_eq!(t[0], "created: uid true generation Some(1)");
    assert_eq!(t[2], "relabelled: generation Some(1), same uid true");
    assert_eq!(t[3], "respecced: generation Some(2)");
    assert_eq!(
        t[4],
        "stale replace: 409 Conflict Operation cannot be fulfilled on machineconfigs.machineconfiguration.openshift.io \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert!(t[5].starts_with("unconditional replace: 422 "), "{}", t[5]);
    assert!(t[6].starts_with("get missing: 404 NotFound"), "{}", t[6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_a_subresource_and_validated() {
    let t = differential(async |side: &Side| {
        let mut t = Vec::new();
        let api = pools(&side.client);
        let pool: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigPool",
            "metadata": {"name": "worker"}, "spec": {}, "status": {"machineCount": 3}
        }))
        .unwrap();
        let created = api.create(&PostParams::default(), &pool).await.unwrap();
        t.push(format!("status on create: {}", created.data.get("status").is_some()));
        let patched = api
            .patch_status(
                "worker",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"machineCount": 3}, "spec": {"paused": true}})),
            )
            .await
            .unwrap();
        t.push(format!(
            "status patch: status {} spec.paused {} generation {:?}",
            patched.data["status"]["machineCount"], patched.data["spec"]["paused"], patched.metadata.generation
        ));
        let main = api
            .patch("worker", &PatchParams::default(), &Patch::Merge(json!({"status": {"machineCount": 9}})))
            .await
            .unwrap();
        t.push(format!("main resource patch: status {}", main.data["status"]["machineCount"]));

        // A status write that the CRD's schema refuses.
        let versions: Api<DynamicObject> = Api::all_with(
            side.client.clone(),
            &clients::resource("config.openshift.io", "ClusterVersion", "clusterversions"),
        );
        let cv: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion",
            "metadata": {"name": "version"}, "spec": {"clusterID": "6b0d2c3e-6a5c-4c8f-9a57-2f8a1e3c1d10"}
        }))
        .unwrap();
        versions.create(&PostParams::default(), &cv).await.unwrap();
        let incomplete = json!({"status": {"desired": {"version": "4.20.3", "image": "quay.io/x/y@sha256:0000000000000000000000000000000000000000000000000000000000000000"}}});
        t.push(outcome(
            "incomplete status",
            versions.patch_status("version", &PatchParams::default(), &Patch::Merge(incomplete)).await,
        ));
        t
    })
    .await;
    assert_eq!(t[0], "status on create: false");
    assert_eq!(
        t[1],
        "status patch: status 3 spec.paused null generation Some(1)"
    );
    assert_eq!(t[2], "main resource patch: status 3");
    assert!(t[3].starts_with("incomplete status: 422 Invalid ClusterVersion.config.openshift.io \"version\" is invalid: "), "{}", t[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_patches_and_server_side_apply() {
    let t = differential(async |side: &Side| {
        let mut t = Vec::new();
        let api = mcs(&side.client);
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
        t.push(format!(
            "by label: {:?}",
            names(api.list(&role).await.unwrap())
        ));
        let by_name = ListParams::default().fields("metadata.name=m1");
        t.push(format!(
            "by name: {:?}",
            names(api.list(&by_name).await.unwrap())
        ));

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
        t.push(format!("json patch: {}", p.data["spec"]["kernelType"]));

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
        t.push(format!("applied: fips {}", created.data["spec"]["fips"]));
        let shrunk = api
            .patch(
                "ssa",
                &pp,
                &Patch::Apply(apply(json!({"kernelType": "realtime"}))),
            )
            .await
            .unwrap();
        t.push(format!("reapplied: fips {}", shrunk.data["spec"]["fips"]));
        let other = PatchParams::apply("someone-else");
        t.push(outcome(
            "conflicting apply",
            api.patch(
                "ssa",
                &other,
                &Patch::Apply(apply(json!({"kernelType": "default"}))),
            )
            .await,
        ));
        let forced = api
            .patch(
                "ssa",
                &other.force(),
                &Patch::Apply(apply(json!({"kernelType": "default"}))),
            )
            .await
            .unwrap();
        t.push(format!("forced: {}", forced.data["spec"]["kernelType"]));
        t
    })
    .await;
    assert_eq!(t[0], r#"by label: ["w1", "w2"]"#);
    assert_eq!(
        t[5],
        "conflicting apply: 409 Conflict Apply failed with 1 conflict: conflict with \"cip-webhook\": .spec.kernelType"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_and_cel_errors_are_the_api_servers() {
    let t = differential(async |side: &Side| {
        let api = clients::policies(&side.client);
        let key = testkit::paths::b64(testkit::paths::cosign_pub());
        let cases = [
            ("an unknown policyType", json!({"scopes": ["*.example.com/x"], "policy": {"rootOfTrust": {"policyType": "Nope"}}})),
            ("a wildcard scope with a path", json!({"scopes": ["*.example.com/x"], "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": key}}}})),
            ("keyData that is not PEM", json!({"scopes": ["example.com"], "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": "Zm9vIGJhcg=="}}}})),
            ("no scopes", json!({"scopes": [], "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": key}}}})),
            ("a union member missing", json!({"scopes": ["example.com"], "policy": {"rootOfTrust": {"policyType": "FulcioCAWithRekor"}}})),
            ("a bad identity", json!({"scopes": ["example.com"], "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": key}}, "signedIdentity": {"matchPolicy": "ExactRepository", "exactRepository": {"repository": "Not A Repo"}}}})),
            ("a valid policy", json!({"scopes": ["example.com"], "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": key}}}})),
        ];
        let mut t = Vec::new();
        for (i, (what, spec)) in cases.into_iter().enumerate() {
            let object: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
                "metadata": {"name": format!("p{i}")}, "spec": spec
            }))
            .unwrap();
            t.push(outcome(what, api.create(&PostParams::default(), &object).await));
        }
        t
    })
    .await;
    // An enum error blocks the CEL rules, as in the API server.
    assert_eq!(
        t[0],
        "an unknown policyType: 422 Invalid ClusterImagePolicy.config.openshift.io \"p0\" is invalid: [spec.policy.rootOfTrust.policyType: Unsupported value: \"Nope\": supported values: \"PublicKey\", \"FulcioCAWithRekor\", \"PKI\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
    );
    assert_eq!(t[6], "a valid policy: ok");
}

/// A watch delivers every write in resourceVersion order, however many writers race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_reach_a_watch_in_order_and_none_is_lost() {
    let t = differential(async |side: &Side| {
        let api = mcs(&side.client);
        let mut stream = api
            .watch(&WatchParams::default(), "0")
            .await
            .unwrap()
            .boxed();
        const WRITERS: usize = 8;
        const EACH: usize = 25;
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
        let mut in_order = true;
        let mut last = 0u64;
        let collect = async {
            while seen.len() < WRITERS * EACH {
                match stream.try_next().await.unwrap() {
                    Some(WatchEvent::Added(o)) => {
                        let rv: u64 = o.metadata.resource_version.unwrap().parse().unwrap();
                        in_order &= rv > last;
                        last = rv;
                        seen.push(o.metadata.name.unwrap());
                    }
                    Some(WatchEvent::Bookmark(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
        };
        let done = tokio::time::timeout(Duration::from_secs(60), collect)
            .await
            .is_ok();
        for w in writers {
            w.await.unwrap();
        }
        seen.sort();
        seen.dedup();
        vec![format!(
            "all seen {done}, distinct {}, in order {in_order}",
            seen.len()
        )]
    })
    .await;
    assert_eq!(t, ["all seen true, distinct 200, in order true"]);
}

/// An object that stops matching a watch's label selector is reported as DELETED to that
/// watch, and one that starts matching as ADDED (the watch cache's filtering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_selector_watch_sees_objects_leave_and_enter() {
    let t = differential(async |side: &Side| {
        let api = mcs(&side.client);
        let created = api
            .create(&PostParams::default(), &mc("ours", "worker"))
            .await
            .unwrap();
        let rv = created.metadata.resource_version.clone().unwrap();
        let wp = WatchParams::default().labels("machineconfiguration.openshift.io/role=worker");
        let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
        let relabel = |role: &str| {
            Patch::Merge(
                json!({"metadata": {"labels": {"machineconfiguration.openshift.io/role": role}}}),
            )
        };
        api.patch("ours", &PatchParams::default(), &relabel("infra"))
            .await
            .unwrap();
        api.patch("ours", &PatchParams::default(), &relabel("worker"))
            .await
            .unwrap();
        let mut t = Vec::new();
        while t.len() < 2 {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await;
            match next {
                Ok(Ok(Some(WatchEvent::Added(o)))) => {
                    t.push(format!("ADDED {}", o.metadata.name.unwrap()))
                }
                Ok(Ok(Some(WatchEvent::Modified(o)))) => {
                    t.push(format!("MODIFIED {}", o.metadata.name.unwrap()))
                }
                Ok(Ok(Some(WatchEvent::Deleted(o)))) => {
                    t.push(format!("DELETED {}", o.metadata.name.unwrap()))
                }
                Ok(Ok(Some(WatchEvent::Bookmark(_)))) => {}
                other => {
                    t.push(format!("ended: {}", other.is_err()));
                    break;
                }
            }
        }
        t
    })
    .await;
    assert_eq!(t, ["DELETED ours", "ADDED ours"]);
}

/// A webhook that answers by path: `/slow` never in time, `/deny-200` denies with code 200
/// and a message, `/deny-reason` denies with only a reason, `/warn` allows with a warning.
async fn fake_webhook() -> (std::net::SocketAddr, String) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::pem::PemObject;

    let generated = cip_webhook::webhook::tls::generate(&["127.0.0.1".to_string()], 1).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_webhooks_are_called_as_the_api_server_calls_them() {
    let t = differential(async |side: &Side| {
        let (addr, bundle) = fake_webhook().await;
        let (_, other_bundle) = fake_webhook().await;
        let register = async |path: &str, policy: &str, timeout: u64, bundle: &str| {
            side.put(json!({
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
            .await;
            // The real server picks configuration changes up from its informer.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        };
        let api = mcs(&side.client);
        let create = async |name: &str| api.create(&PostParams::default(), &mc(name, "worker")).await;
        let mut t = Vec::new();
        register("/deny-200", "Fail", 5, &bundle).await;
        t.push(outcome("denied with code 200", create("a").await));
        register("/deny-reason", "Fail", 5, &bundle).await;
        t.push(outcome("denied with a reason only", create("a").await));
        register("/slow", "Fail", 1, &bundle).await;
        let started = std::time::Instant::now();
        let slow = outcome("too slow, Fail", create("a").await);
        let waited = started.elapsed();
        t.push(slow.replace(&addr.to_string(), "ADDR"));
        t.push(format!("waited about the timeout: {}", waited >= Duration::from_secs(1) && waited < Duration::from_secs(3)));
        register("/slow", "Ignore", 1, &bundle).await;
        t.push(outcome("too slow, Ignore", create("a").await));
        register("/warn", "Fail", 5, &other_bundle).await;
        let wrong_ca = outcome("another CA", create("b").await);
        t.push(format!("another CA refused: {}", wrong_ca.contains("tls: failed to verify certificate")));
        register("/warn", "Fail", 5, &bundle).await;
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), serde_json::to_string(&mc("c", "worker")).unwrap()).unwrap();
        let run = testkit::cluster::kubectl(&side.kubeconfig, &["create", "--validate=false", "-f", file.path().to_str().unwrap()]).await;
        t.push(format!("warning: ok {} stderr {:?}", run.ok, run.stderr));
        t
    })
    .await;
    assert_eq!(t[0], "denied with code 200: 400  admission webhook \"fake.example.com\" denied the request: nope");
    assert_eq!(
        t[1],
        "denied with a reason only: 400 Forbidden admission webhook \"fake.example.com\" denied the request: Forbidden"
    );
    assert_eq!(t[3], "waited about the timeout: true");
    assert_eq!(t[4], "too slow, Ignore: ok");
    assert_eq!(t[5], "another CA refused: true");
    assert_eq!(t[6], "warning: ok true stderr \"Warning: be careful\\n\"");
}

/// Events get the API server's own checks: one about a cluster-scoped object only in
/// `default`, the fields a series update may not change stay; kube's `Recorder` turns a
/// repeat into a series on the first Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_checked_as_the_api_server_checks_them() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let t = differential(async |side: &Side| {
        let mut t = Vec::new();
        side.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cip-webhook"}})).await;
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
        let ours: Api<DynamicObject> = Api::namespaced_with(side.client.clone(), "cip-webhook", &events);
        t.push(outcome(
            "about a cluster-scoped object, in our namespace",
            ours.create(&PostParams::default(), &about_cluster_object("cip-webhook")).await,
        ));
        let default: Api<DynamicObject> = Api::namespaced_with(side.client.clone(), "default", &events);
        t.push(outcome("in default", default.create(&PostParams::default(), &about_cluster_object("default")).await));
        let changed = default.patch("x.1", &PatchParams::default(), &Patch::Merge(json!({"note": "changed"}))).await;
        t.push(format!("note changed: {}", changed.is_err_and(|e| status_code(e) == 422)));

        let recorder = Recorder::new(
            side.client.clone(),
            Reporter { controller: "cip-webhook".into(), instance: Some("r-0".into()) },
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
        let series: Vec<&DynamicObject> = list.items.iter().filter(|e| e.data["regarding"]["name"] == "y").collect();
        t.push(format!(
            "repeated: {} event(s), count {}, note {}",
            series.len(),
            series[0].data["series"]["count"],
            series[0].data["note"]
        ));
        t
    })
    .await;
    assert!(
        t[0].contains("involvedObject.namespace")
            && t[0].contains("does not match event.namespace"),
        "{}",
        t[0]
    );
    assert!(
        t[0].starts_with("about a cluster-scoped object, in our namespace: 422 "),
        "{}",
        t[0]
    );
    assert_eq!(t[1], "in default: ok");
    assert_eq!(t[2], "note changed: true");
    assert_eq!(t[3], "repeated: 1 event(s), count 2, note \"first\"");
}
