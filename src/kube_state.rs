//! Cluster state from the API server: one watcher per type the core reads, kept in memory
//! as render inputs, so that no API call happens on the admission path. Readers wait for
//! `changed` and take `inputs()` once every watcher has listed.
//!
//! An API the cluster does not serve (404 on list: no MachineConfig API on a hosted
//! control plane or plain Kubernetes, no FeatureGate outside OpenShift) counts as listed
//! and empty, never as "not ready": with `failurePolicy: Fail` that would refuse every
//! policy edit. Its watcher keeps retrying, so a CRD installed later is picked up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::Value;

use crate::model::CONFIG_GROUP;
use crate::render::{
    imagepolicies_mc_name, registries_imagepolicies_mc_name, registries_mc_name, Inputs,
};

/// The types watched, in the order `inputs()` reports what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Policies,
    Image,
    ClusterVersion,
    FeatureGate,
    Pools,
    MachineConfigs,
}

impl Source {
    pub const ALL: [Source; 6] = [
        Source::Policies,
        Source::Image,
        Source::ClusterVersion,
        Source::FeatureGate,
        Source::Pools,
        Source::MachineConfigs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Policies => "clusterimagepolicies",
            Source::Image => "images",
            Source::ClusterVersion => "clusterversions",
            Source::FeatureGate => "featuregates",
            Source::Pools => "machineconfigpools",
            Source::MachineConfigs => "machineconfigs",
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    objects: BTreeMap<String, Value>,
    listing: Option<BTreeMap<String, Value>>,
    synced: bool,
    /// The cluster does not serve this API (404): listed, empty.
    absent: bool,
    last_error: Option<String>,
}

/// What the watchers have seen.
#[derive(Debug)]
pub struct ClusterState {
    slots: Mutex<BTreeMap<Source, Slot>>,
    changed: tokio::sync::watch::Sender<u64>,
}

/// The API server says the resource does not exist (no CRD, no API group).
fn not_found(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => return status.code == 404,
        watcher::Error::NoResourceVersion => return false,
    };
    matches!(api, kube::Error::Api(status) if status.code == 404)
}

fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// ClusterImagePolicy in the version the cluster serves.
pub fn policy_resource(version: &str) -> ApiResource {
    api_resource(
        CONFIG_GROUP,
        version,
        "ClusterImagePolicy",
        "clusterimagepolicies",
    )
}

pub fn machine_config_resource() -> ApiResource {
    api_resource(
        MACHINECONFIGURATION_GROUP,
        "v1",
        "MachineConfig",
        "machineconfigs",
    )
}

const MACHINECONFIGURATION_GROUP: &str = "machineconfiguration.openshift.io";

/// The ClusterImagePolicy version the cluster serves: v1 where it exists, else v1alpha1;
/// `None` where neither does (the watcher then finds v1 absent, and asks again later).
pub async fn policy_version(client: &Client) -> Result<Option<String>, kube::Error> {
    for version in ["v1", "v1alpha1"] {
        match client
            .list_api_group_resources(&format!("{CONFIG_GROUP}/{version}"))
            .await
        {
            Ok(list)
                if list
                    .resources
                    .iter()
                    .any(|r| r.name == "clusterimagepolicies") =>
            {
                return Ok(Some(version.to_string()))
            }
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Only role-labelled MachineConfigs are watched: the MCO's `rendered-<pool>-<hash>`
/// merges carry no role label, and there are hundreds of them at hundreds of KiB each.
pub const MACHINE_CONFIG_SELECTOR: &str = crate::model::ROLE_LABEL;

/// Of those, only the ones the renderer reads are kept (others can be large): the ones
/// that put a policy.json on the nodes (where the original comes from), and the
/// generated ones, ours or the MCO's.
fn relevant_mc(name: &str, object: &Value) -> bool {
    let writes_policy = object["spec"]["config"]["storage"]["files"]
        .as_array()
        .is_some_and(|files| {
            files
                .iter()
                .any(|f| f["path"] == crate::ignition::POLICY_JSON_PATH)
        });
    writes_policy || generated_mc(name)
}

fn generated_mc(name: &str) -> bool {
    name.strip_prefix("99-").is_some_and(|rest| {
        let pool = rest
            .strip_suffix("-generated-registries-imagepolicies")
            .or_else(|| rest.strip_suffix("-generated-registries"))
            .or_else(|| rest.strip_suffix("-generated-imagepolicies"));
        pool.is_some_and(|p| {
            name == registries_mc_name(p)
                || name == imagepolicies_mc_name(p)
                || name == registries_imagepolicies_mc_name(p)
        })
    })
}

/// What rendering and admission read of an object. A change elsewhere (our own status
/// writes, resourceVersion, managedFields) is stored but wakes nobody.
fn significant(source: Source, v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    // ClusterVersion's status names the release payload; other statuses are not read.
    if source != Source::ClusterVersion {
        if let Some(map) = v.as_object_mut() {
            map.remove("status");
        }
    }
    v
}

impl ClusterState {
    /// Starts the watchers; they run until the process ends, retrying with backoff.
    pub fn spawn(client: Client) -> Arc<ClusterState> {
        let state = Arc::new(ClusterState {
            slots: Mutex::new(Source::ALL.iter().map(|s| (*s, Slot::default())).collect()),
            changed: tokio::sync::watch::channel(0).0,
        });
        let named =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let watches = [
            (
                Source::Image,
                api_resource(CONFIG_GROUP, "v1", "Image", "images"),
                named("cluster"),
            ),
            (
                Source::ClusterVersion,
                api_resource(CONFIG_GROUP, "v1", "ClusterVersion", "clusterversions"),
                named("version"),
            ),
            (
                Source::FeatureGate,
                api_resource(CONFIG_GROUP, "v1", "FeatureGate", "featuregates"),
                named("cluster"),
            ),
            (
                Source::Pools,
                api_resource(
                    MACHINECONFIGURATION_GROUP,
                    "v1",
                    "MachineConfigPool",
                    "machineconfigpools",
                ),
                watcher::Config::default(),
            ),
            (
                Source::MachineConfigs,
                machine_config_resource(),
                watcher::Config::default().labels(MACHINE_CONFIG_SELECTOR),
            ),
        ];
        for (source, resource, config) in watches {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            tokio::spawn(follow(Arc::clone(&state), source, api, config));
        }
        tokio::spawn(follow_policies(Arc::clone(&state), client));
        state
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Source, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// APIs the cluster does not serve, in `Source` order.
    pub fn absent(&self) -> Vec<Source> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.absent)
            .map(|(source, _)| *source)
            .collect()
    }

    /// Types not listed yet, with the last error each watcher met.
    pub fn waiting_for(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, s)| !s.synced)
            .map(|(source, s)| match &s.last_error {
                Some(e) => format!("{} ({e})", source.as_str()),
                None => source.as_str().to_string(),
            })
            .collect()
    }

    /// Errors the watchers are currently retrying, by type.
    pub fn errors(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter_map(|(source, s)| {
                s.last_error
                    .as_ref()
                    .map(|e| format!("{}: {e}", source.as_str()))
            })
            .collect()
    }

    /// The render inputs, once every watcher has listed. Objects that do not decode are
    /// returned by name in the second list.
    pub fn inputs(&self) -> Option<(Inputs, Vec<String>)> {
        let slots = self.lock();
        if slots.values().any(|s| !s.synced) {
            return None;
        }
        let mut bad = Vec::new();
        fn decode<T: serde::de::DeserializeOwned>(
            slot: &Slot,
            what: &str,
            bad: &mut Vec<String>,
        ) -> Vec<T> {
            slot.objects
                .iter()
                .filter_map(|(name, v)| match serde_json::from_value(v.clone()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        bad.push(format!("{what} {name}: {e}"));
                        None
                    }
                })
                .collect()
        }
        let inputs = Inputs {
            policies: decode(&slots[&Source::Policies], "ClusterImagePolicy", &mut bad),
            image: decode(&slots[&Source::Image], "Image", &mut bad).pop(),
            cluster_version: decode(&slots[&Source::ClusterVersion], "ClusterVersion", &mut bad)
                .pop(),
            feature_gate: decode(&slots[&Source::FeatureGate], "FeatureGate", &mut bad).pop(),
            pools: decode(&slots[&Source::Pools], "MachineConfigPool", &mut bad),
            machine_configs: decode(&slots[&Source::MachineConfigs], "MachineConfig", &mut bad),
        };
        Some((inputs, bad))
    }

    fn apply(&self, source: Source, event: Result<Event<DynamicObject>, watcher::Error>) {
        // Each object is serialized once; MachineConfigs are kept only when relevant.
        let decode = |o: &DynamicObject| {
            let name = o.metadata.name.clone().unwrap_or_default();
            let value = serde_json::to_value(o).unwrap_or(Value::Null);
            let wanted = source != Source::MachineConfigs || relevant_mc(&name, &value);
            (name, value, wanted)
        };
        let mut slots = self.lock();
        let slot = slots.get_mut(&source).expect("every source has a slot");
        let changed = match event {
            Err(e) if not_found(&e) => {
                if !slot.absent {
                    tracing::info!(
                        resource = source.as_str(),
                        "the cluster does not serve this API: treated as empty, checked again later"
                    );
                }
                let changed = !(slot.synced && slot.absent && slot.objects.is_empty());
                slot.objects.clear();
                slot.listing = None;
                slot.synced = true;
                slot.absent = true;
                slot.last_error = None;
                changed
            }
            Err(e) => {
                tracing::warn!(resource = source.as_str(), error = %e, "watch failed; retrying");
                slot.last_error = Some(e.to_string());
                true
            }
            Ok(Event::Init) => {
                slot.listing = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(o)) => {
                let (name, value, wanted) = decode(&o);
                if let (Some(listing), true) = (slot.listing.as_mut(), wanted) {
                    listing.insert(name, value);
                }
                false
            }
            Ok(Event::InitDone) => {
                let listing = slot.listing.take().unwrap_or_default();
                let changed = !slot.synced || slot.absent || listing != slot.objects;
                slot.objects = listing;
                slot.synced = true;
                slot.absent = false;
                slot.last_error = None;
                changed
            }
            Ok(Event::Apply(o)) => {
                let (name, value, wanted) = decode(&o);
                slot.last_error = None;
                if wanted {
                    let changed = slot.objects.get(&name).is_none_or(|before| {
                        significant(source, before) != significant(source, &value)
                    });
                    slot.objects.insert(name, value);
                    changed
                } else {
                    // A MachineConfig that stopped writing policy.json no longer counts.
                    slot.objects.remove(&name).is_some()
                }
            }
            Ok(Event::Delete(o)) => {
                let name = o.metadata.name.unwrap_or_default();
                slot.objects.remove(&name).is_some()
            }
        };
        drop(slots);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

async fn follow(
    state: Arc<ClusterState>,
    source: Source,
    api: Api<DynamicObject>,
    config: watcher::Config,
) {
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        state.apply(source, event);
    }
}

/// How long a missing ClusterImagePolicy API waits before the version is asked again.
const REDISCOVER: std::time::Duration = std::time::Duration::from_secs(10);

/// The policies' watcher asks which version the cluster serves whenever the API goes
/// away: an upgrade from 4.19 to 4.20 replaces v1alpha1 with v1, and a CRD installed by
/// hand may come after us.
async fn follow_policies(state: Arc<ClusterState>, client: Client) {
    loop {
        let version = match policy_version(&client).await {
            Ok(Some(v)) => v,
            Ok(None) => "v1".to_string(),
            Err(e) => {
                state.apply(Source::Policies, Err(watcher::Error::InitialListFailed(e)));
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
        };
        tracing::info!(version = %version, "watching ClusterImagePolicy {version}");
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &policy_resource(&version));
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let gone = matches!(&event, Err(e) if not_found(e));
            state.apply(Source::Policies, event);
            if gone {
                break;
            }
        }
        tokio::time::sleep(REDISCOVER).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rendered_machine_configs_are_kept() {
        assert!(generated_mc("99-worker-generated-registries"));
        assert!(generated_mc("99-infra-generated-imagepolicies"));
        assert!(generated_mc("99-worker-generated-registries-imagepolicies"));
        assert!(!generated_mc("01-worker-container-runtime"));
        assert!(!generated_mc("99-worker-ssh"));
        let runtime = serde_json::json!({"spec": {"config": {"storage": {"files": [
            {"path": "/etc/containers/policy.json"}]}}}});
        assert!(relevant_mc("01-worker-container-runtime", &runtime));
        assert!(!relevant_mc("00-worker", &serde_json::json!({"spec": {}})));
    }
}
