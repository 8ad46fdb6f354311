//! kube-rs clients of either API server, as the product's own client sees it, for tests
//! of the servers themselves.

use std::path::Path;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::Client;
use serde_json::json;

pub async fn client(kubeconfig: &Path) -> Client {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

pub fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn pools(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &resource(
            "machineconfiguration.openshift.io",
            "MachineConfigPool",
            "machineconfigpools",
        ),
    )
}

pub fn mcs(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &resource(
            "machineconfiguration.openshift.io",
            "MachineConfig",
            "machineconfigs",
        ),
    )
}

pub fn policies(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &resource(
            "config.openshift.io",
            "ClusterImagePolicy",
            "clusterimagepolicies",
        ),
    )
}

/// A MachineConfig of a pool, with nothing in it.
pub fn mc(name: &str, role: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfig",
        "metadata": {"name": name, "labels": {"machineconfiguration.openshift.io/role": role}},
        "spec": {"config": {"ignition": {"version": "3.2.0"}}}
    }))
    .unwrap()
}

/// The status code of an API error.
pub fn status_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

/// The message of an API error.
pub fn api_message(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message,
        other => panic!("not an API error: {other}"),
    }
}
