//! What only the simulator does, checked through kube-rs (the client the product uses):
//! watches that replay, bookmark, expire after compaction and close on demand; injected
//! faults and the request log. (Where it behaves as the real API server does, the two are
//! compared request for request: `tests/real_apiserver/differential.rs`.)

use std::time::Duration;

use apisim::{Config, FaultAction, Simulator};
use futures_util::{StreamExt, TryStreamExt};
use kube::api::{PostParams, WatchEvent, WatchParams};
use kube::Client;

use testkit::clients::{mc, mcs, status_code};
use testkit::upstream::Crd;

async fn sim() -> (Simulator, Client) {
    let sim = Simulator::start(Config {
        crds: [
            Crd::ClusterImagePolicyV1,
            Crd::Image,
            Crd::MachineConfig,
            Crd::MachineConfigPool,
        ]
        .iter()
        .map(|c| c.path())
        .collect(),
        bookmark_every: Duration::from_millis(100),
        ..Config::default()
    })
    .await
    .unwrap();
    let client = testkit::clients::client(sim.kubeconfig()).await;
    (sim, client)
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
