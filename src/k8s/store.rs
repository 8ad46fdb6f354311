//! Cluster state from the API server: one watcher per type the core reads. Each object
//! is decoded into its model type once, when its event arrives, and kept; readers take
//! a snapshot of the render inputs (`inputs()`) once every watcher has listed, and wait
//! on `subscribe()` for the next change that matters. No API call happens on the
//! admission path.
//!
//! An API the cluster does not serve (404: no MachineConfig API on a hosted control plane
//! or plain Kubernetes, no FeatureGate outside OpenShift, no ClusterImagePolicy CRD yet)
//! counts as listed and empty, never as "not ready": with `failurePolicy: Fail` that would
//! refuse every policy edit. It is asked for again with a growing interval, so a CRD
//! installed later is picked up.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde::de::DeserializeOwned;
use serde_json::Value;

use cip_core::model::{
    ClusterImagePolicy, ClusterVersion, FeatureGate, Image, ImageContentSourcePolicy,
    ImageDigestMirrorSet, ImageTagMirrorSet, MachineConfig, MachineConfigPool, ObjectMeta,
    PolicyKind, CONFIG_GROUP,
};
use cip_core::render::{
    imagepolicies_mc_name, registries_imagepolicies_mc_name, registries_mc_name, Inputs,
};

/// The types watched, in the order readers report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Policies,
    ImagePolicies,
    Image,
    ClusterVersion,
    FeatureGate,
    DigestMirrorSets,
    TagMirrorSets,
    ContentSourcePolicies,
    Pools,
    MachineConfigs,
}

impl Source {
    pub const ALL: [Source; 10] = [
        Source::Policies,
        Source::ImagePolicies,
        Source::Image,
        Source::ClusterVersion,
        Source::FeatureGate,
        Source::DigestMirrorSets,
        Source::TagMirrorSets,
        Source::ContentSourcePolicies,
        Source::Pools,
        Source::MachineConfigs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Policies => "clusterimagepolicies",
            Source::ImagePolicies => "imagepolicies",
            Source::Image => "images",
            Source::ClusterVersion => "clusterversions",
            Source::FeatureGate => "featuregates",
            Source::DigestMirrorSets => "imagedigestmirrorsets",
            Source::TagMirrorSets => "imagetagmirrorsets",
            Source::ContentSourcePolicies => "imagecontentsourcepolicies",
            Source::Pools => "machineconfigpools",
            Source::MachineConfigs => "machineconfigs",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Source::Policies => "ClusterImagePolicy",
            Source::ImagePolicies => "ImagePolicy",
            Source::Image => "Image",
            Source::ClusterVersion => "ClusterVersion",
            Source::FeatureGate => "FeatureGate",
            Source::DigestMirrorSets => "ImageDigestMirrorSet",
            Source::TagMirrorSets => "ImageTagMirrorSet",
            Source::ContentSourcePolicies => "ImageContentSourcePolicy",
            Source::Pools => "MachineConfigPool",
            Source::MachineConfigs => "MachineConfig",
        }
    }
}

/// A watched type as the store keeps it.
trait Watched: DeserializeOwned + Clone + PartialEq {
    fn metadata_mut(&mut self) -> &mut ObjectMeta;

    /// Whether a change between two versions matters to a reader. The resourceVersion,
    /// which changes on every write, never does (managedFields are dropped at decode);
    /// status only where read.
    fn significant_change(before: &Self, after: &Self) -> bool {
        let quiet = |o: &Self| {
            let mut o = o.clone();
            let meta = o.metadata_mut();
            meta.resource_version = None;
            o.without_unread_status()
        };
        quiet(before) != quiet(after)
    }

    /// The object without a status nobody reads (ours, the pools' machine counts).
    fn without_unread_status(self) -> Self {
        self
    }

    /// Shares what it holds in common with the objects kept already.
    fn share_with(&mut self, _kept: &BTreeMap<String, Arc<Self>>) {}
}

impl Watched for ClusterImagePolicy {
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn without_unread_status(mut self) -> Self {
        self.status = None;
        self
    }
}

impl Watched for Image {
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Its status names the release payload and the version the cluster runs.
impl Watched for ClusterVersion {
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Its status says which gates are on.
impl Watched for FeatureGate {
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Watched for ImageDigestMirrorSet {
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Watched for ImageTagMirrorSet {
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Watched for ImageContentSourcePolicy {
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Watched for MachineConfigPool {
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Every change of a MachineConfig counts, its resourceVersion too: the reconciler writes
/// with the version it read, and must see each new one.
impl Watched for MachineConfig {
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn significant_change(before: &Self, after: &Self) -> bool {
        before != after
    }
    fn share_with(&mut self, kept: &BTreeMap<String, Arc<Self>>) {
        self.share_sources(kept.values().map(|mc| &**mc));
    }
}

/// An object's key in its slot: `namespace/name` for namespaced objects.
fn key_of(o: &DynamicObject) -> String {
    let name = o.metadata.name.clone().unwrap_or_default();
    match &o.metadata.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

/// Objects by key, shared with the inputs handed out: a snapshot copies pointers.
type Objects<T> = BTreeMap<String, Arc<T>>;

/// One watched type: its objects by key, and how its watcher fares.
#[derive(Debug)]
struct Slot<T> {
    objects: Objects<T>,
    /// Objects that do not decode, with the error: kept out of the inputs, reported.
    undecodable: BTreeMap<String, String>,
    /// A relist in progress: replaces `objects` when complete.
    listing: Option<(Objects<T>, BTreeMap<String, String>)>,
    synced: bool,
    /// The cluster does not serve this API (404): listed, empty.
    absent: bool,
    /// The watcher's last error and when it came: a watch that resumes where it was
    /// sends no event when nothing changed, so an error is current only while its
    /// retries keep failing (kube-runtime's backoff retries within 30 s).
    last_error: Option<(String, Instant)>,
}

/// How long a watcher's error is reported after it came, unless another follows.
const ERROR_CURRENT_FOR: Duration = Duration::from_secs(60);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            objects: BTreeMap::new(),
            undecodable: BTreeMap::new(),
            listing: None,
            synced: false,
            absent: false,
            last_error: None,
        }
    }
}

/// What any slot tells about its watcher.
struct Health<'a> {
    synced: bool,
    absent: bool,
    last_error: Option<&'a str>,
}

impl<T: Watched> Slot<T> {
    fn health(&self) -> Health<'_> {
        Health {
            synced: self.synced,
            absent: self.absent,
            last_error: self
                .last_error
                .as_ref()
                .filter(|(_, at)| at.elapsed() < ERROR_CURRENT_FOR)
                .map(|(e, _)| e.as_str()),
        }
    }

    /// Applies one watch event; whether a reader must be woken. `keep` says which
    /// objects are worth keeping (MachineConfigs can be large).
    fn apply(
        &mut self,
        source: Source,
        event: Result<Event<DynamicObject>, watcher::Error>,
        keep: impl Fn(&str, &T) -> bool,
    ) -> bool {
        // managedFields are nobody's business here, and would be most of a small object.
        let decode = |mut o: DynamicObject| -> (String, Result<T, String>) {
            o.metadata.managed_fields = None;
            let name = key_of(&o);
            let decoded = serde_json::to_value(o)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    serde_path_to_error::deserialize(v)
                        .map_err(|e| format!("{}: {}", e.path(), e.inner()))
                });
            (name, decoded)
        };
        match event {
            Err(e) if not_found(&e) => {
                if !self.absent {
                    tracing::info!(
                        resource = source.as_str(),
                        "the cluster does not serve this API: treated as empty, asked again later"
                    );
                }
                let changed = !(self.synced && self.absent && self.objects.is_empty());
                *self = Slot {
                    synced: true,
                    absent: true,
                    ..Slot::default()
                };
                changed
            }
            Err(e) => {
                tracing::warn!(resource = source.as_str(), error = %e, "watch failed; retrying");
                self.last_error = Some((e.to_string(), Instant::now()));
                true
            }
            Ok(Event::Init) => {
                self.listing = Some(Default::default());
                false
            }
            Ok(Event::InitApply(o)) => {
                let (name, decoded) = decode(o);
                if let Some((objects, undecodable)) = self.listing.as_mut() {
                    match decoded {
                        Ok(mut t) if keep(&name, &t) => {
                            t.share_with(objects);
                            objects.insert(name, Arc::new(t));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            undecodable.insert(name, e);
                        }
                    }
                }
                false
            }
            Ok(Event::InitDone) => {
                let (objects, undecodable) = self.listing.take().unwrap_or_default();
                let changed = !self.synced
                    || self.absent
                    || undecodable != self.undecodable
                    || objects.len() != self.objects.len()
                    || objects.iter().any(|(name, t)| {
                        self.objects
                            .get(name)
                            .is_none_or(|before| T::significant_change(before, t))
                    });
                self.objects = objects;
                self.undecodable = undecodable;
                self.synced = true;
                self.absent = false;
                self.last_error = None;
                changed
            }
            Ok(Event::Apply(o)) => {
                let (name, decoded) = decode(o);
                self.last_error = None;
                match decoded {
                    Ok(mut t) if keep(&name, &t) => {
                        t.share_with(&self.objects);
                        let undecodable = self.undecodable.remove(&name).is_some();
                        let changed = self
                            .objects
                            .get(&name)
                            .is_none_or(|before| T::significant_change(before, &t));
                        self.objects.insert(name, Arc::new(t));
                        changed || undecodable
                    }
                    // A MachineConfig that stopped writing policy.json no longer counts.
                    Ok(_) => self.objects.remove(&name).is_some(),
                    Err(e) => {
                        tracing::warn!(resource = source.as_str(), name = %name, error = %e, "object does not decode; left out");
                        self.objects.remove(&name);
                        self.undecodable.insert(name, e);
                        true
                    }
                }
            }
            Ok(Event::Delete(o)) => {
                let name = key_of(&o);
                self.objects.remove(&name).is_some() | self.undecodable.remove(&name).is_some()
            }
        }
    }
}

#[derive(Debug, Default)]
struct Slots {
    policies: Slot<ClusterImagePolicy>,
    image_policies: Slot<ClusterImagePolicy>,
    image: Slot<Image>,
    cluster_version: Slot<ClusterVersion>,
    feature_gate: Slot<FeatureGate>,
    digest_mirror_sets: Slot<ImageDigestMirrorSet>,
    tag_mirror_sets: Slot<ImageTagMirrorSet>,
    content_source_policies: Slot<ImageContentSourcePolicy>,
    pools: Slot<MachineConfigPool>,
    machine_configs: Slot<MachineConfig>,
}

impl Slots {
    fn health(&self) -> [(Source, Health<'_>); 10] {
        [
            (Source::Policies, self.policies.health()),
            (Source::ImagePolicies, self.image_policies.health()),
            (Source::Image, self.image.health()),
            (Source::ClusterVersion, self.cluster_version.health()),
            (Source::FeatureGate, self.feature_gate.health()),
            (Source::DigestMirrorSets, self.digest_mirror_sets.health()),
            (Source::TagMirrorSets, self.tag_mirror_sets.health()),
            (
                Source::ContentSourcePolicies,
                self.content_source_policies.health(),
            ),
            (Source::Pools, self.pools.health()),
            (Source::MachineConfigs, self.machine_configs.health()),
        ]
    }

    fn undecodable(&self) -> [(Source, &BTreeMap<String, String>); 10] {
        [
            (Source::Policies, &self.policies.undecodable),
            (Source::ImagePolicies, &self.image_policies.undecodable),
            (Source::Image, &self.image.undecodable),
            (Source::ClusterVersion, &self.cluster_version.undecodable),
            (Source::FeatureGate, &self.feature_gate.undecodable),
            (
                Source::DigestMirrorSets,
                &self.digest_mirror_sets.undecodable,
            ),
            (Source::TagMirrorSets, &self.tag_mirror_sets.undecodable),
            (
                Source::ContentSourcePolicies,
                &self.content_source_policies.undecodable,
            ),
            (Source::Pools, &self.pools.undecodable),
            (Source::MachineConfigs, &self.machine_configs.undecodable),
        ]
    }
}

/// What the watchers have seen.
#[derive(Debug)]
pub struct ClusterState {
    slots: Mutex<Slots>,
    /// Bumped on every change a reader must see.
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

/// ClusterImagePolicy or ImagePolicy in the version the cluster serves.
pub fn policy_resource(kind: PolicyKind, version: &str) -> ApiResource {
    api_resource(CONFIG_GROUP, version, kind.as_str(), plural(kind))
}

fn plural(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Cluster => "clusterimagepolicies",
        PolicyKind::Namespaced => "imagepolicies",
    }
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

/// The version the cluster serves a policy kind in: v1 where it exists, else v1alpha1;
/// `None` where neither does (the watcher then finds v1 absent, and asks again later).
pub async fn policy_version(
    client: &Client,
    kind: PolicyKind,
) -> Result<Option<String>, kube::Error> {
    for version in ["v1", "v1alpha1"] {
        match client
            .list_api_group_resources(&format!("{CONFIG_GROUP}/{version}"))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == plural(kind)) => {
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
pub const MACHINE_CONFIG_SELECTOR: &str = cip_core::model::ROLE_LABEL;

/// Of those, only the ones the renderer reads are kept (others can be large): the ones
/// that put a policy.json on the nodes (where the original comes from), and the
/// generated ones, ours or the MCO's.
fn relevant_mc(name: &str, mc: &MachineConfig) -> bool {
    mc.files()
        .iter()
        .any(|f| f.path == cip_core::ignition::POLICY_JSON_PATH)
        || generated_mc(name)
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

fn keep_all<T>(_: &str, _: &T) -> bool {
    true
}

/// One object per name (`Image cluster`, `ClusterVersion version`, `FeatureGate cluster`).
fn single<T: Clone>(slot: &Slot<T>) -> Option<T> {
    slot.objects.values().next().map(|o| T::clone(o))
}

/// Copies of a slot's objects, for the inputs that hold them by value (the few, small
/// kinds; policies are shared).
fn copies<T: Clone>(slot: &Slot<T>) -> Vec<T> {
    slot.objects.values().map(|o| T::clone(o)).collect()
}

impl ClusterState {
    /// Starts the watchers; they run until the process ends, retrying with backoff.
    pub fn spawn(client: Client) -> Arc<ClusterState> {
        let state = Arc::new(ClusterState {
            slots: Mutex::new(Slots::default()),
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
                Source::DigestMirrorSets,
                api_resource(
                    CONFIG_GROUP,
                    "v1",
                    "ImageDigestMirrorSet",
                    "imagedigestmirrorsets",
                ),
                watcher::Config::default(),
            ),
            (
                Source::TagMirrorSets,
                api_resource(
                    CONFIG_GROUP,
                    "v1",
                    "ImageTagMirrorSet",
                    "imagetagmirrorsets",
                ),
                watcher::Config::default(),
            ),
            (
                Source::ContentSourcePolicies,
                api_resource(
                    "operator.openshift.io",
                    "v1alpha1",
                    "ImageContentSourcePolicy",
                    "imagecontentsourcepolicies",
                ),
                watcher::Config::default(),
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
            let client = client.clone();
            tokio::spawn(follow(Arc::clone(&state), source, move || {
                let api = Api::all_with(client.clone(), &resource);
                let config = config.clone();
                async move { Ok((api, config)) }
            }));
        }
        // The policies' version is asked again each time the API goes away: an upgrade
        // from 4.19 to 4.20 replaces v1alpha1 with v1, and a CRD installed by hand may come
        // after us.
        for (source, kind) in [
            (Source::Policies, PolicyKind::Cluster),
            (Source::ImagePolicies, PolicyKind::Namespaced),
        ] {
            let client = client.clone();
            tokio::spawn(follow(Arc::clone(&state), source, move || {
                let client = client.clone();
                async move {
                    let version = policy_version(&client, kind)
                        .await?
                        .unwrap_or_else(|| "v1".to_string());
                    tracing::info!(version = %version, "watching {} {version}", kind.as_str());
                    let api = Api::all_with(client, &policy_resource(kind, &version));
                    Ok((api, watcher::Config::default()))
                }
            }));
        }
        state
    }

    /// A receiver that wakes on every change a reader must see; the value counts them.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// APIs the cluster does not serve, in `Source` order.
    pub fn absent(&self) -> Vec<Source> {
        self.lock()
            .health()
            .into_iter()
            .filter(|(_, h)| h.absent)
            .map(|(source, _)| source)
            .collect()
    }

    /// Types not listed yet, with the last error each watcher met.
    pub fn waiting_for(&self) -> Vec<String> {
        self.lock()
            .health()
            .into_iter()
            .filter(|(_, h)| !h.synced)
            .map(|(source, h)| match h.last_error {
                Some(e) => format!("{} ({e})", source.as_str()),
                None => source.as_str().to_string(),
            })
            .collect()
    }

    /// Errors the watchers are currently retrying, by type.
    pub fn errors(&self) -> Vec<String> {
        self.lock()
            .health()
            .into_iter()
            .filter_map(|(source, h)| h.last_error.map(|e| format!("{}: {e}", source.as_str())))
            .collect()
    }

    /// The render inputs, once every watcher has listed, and the objects left out because
    /// they do not decode (`Kind name: error`).
    pub fn inputs(&self) -> Option<(Inputs, Vec<String>)> {
        self.collect(true)
    }

    /// What admission judges against, without the pools and MachineConfigs (the largest
    /// objects; the size budget comes from the last render instead).
    pub fn admission_inputs(&self) -> Option<Inputs> {
        self.collect(false).map(|(inputs, _)| inputs)
    }

    fn collect(&self, machine_configs: bool) -> Option<(Inputs, Vec<String>)> {
        let slots = self.lock();
        if slots.health().iter().any(|(_, h)| !h.synced) {
            return None;
        }
        let mut bad = Vec::new();
        for (source, undecodable) in slots.undecodable() {
            bad.extend(
                undecodable
                    .iter()
                    .map(|(name, e)| format!("{} {name}: {e}", source.kind())),
            );
        }
        let inputs = Inputs {
            policies: slots.policies.objects.values().cloned().collect(),
            image: single(&slots.image),
            cluster_version: single(&slots.cluster_version),
            feature_gate: single(&slots.feature_gate),
            pools: if machine_configs {
                copies(&slots.pools)
            } else {
                Vec::new()
            },
            machine_configs: if machine_configs {
                copies(&slots.machine_configs)
            } else {
                Vec::new()
            },
            image_policies: slots.image_policies.objects.values().cloned().collect(),
            digest_mirror_sets: copies(&slots.digest_mirror_sets),
            tag_mirror_sets: copies(&slots.tag_mirror_sets),
            content_source_policies: copies(&slots.content_source_policies),
        };
        Some((inputs, bad))
    }

    /// Each policy's status as last seen, by kind and key (`namespace/name` for an
    /// ImagePolicy). Status writes wake nobody, so a writer reads them here rather than
    /// from an older snapshot of the inputs.
    pub fn policy_statuses(&self) -> HashMap<(PolicyKind, String), Option<Value>> {
        let slots = self.lock();
        let of = |kind: PolicyKind, slot: &Slot<ClusterImagePolicy>| {
            slot.objects
                .iter()
                .map(move |(key, p)| ((kind, key.clone()), p.status.clone()))
                .collect::<Vec<_>>()
        };
        of(PolicyKind::Cluster, &slots.policies)
            .into_iter()
            .chain(of(PolicyKind::Namespaced, &slots.image_policies))
            .collect()
    }

    fn apply(&self, source: Source, event: Result<Event<DynamicObject>, watcher::Error>) {
        let mut slots = self.lock();
        let changed = match source {
            Source::Policies => slots.policies.apply(source, event, keep_all),
            Source::ImagePolicies => slots.image_policies.apply(source, event, keep_all),
            Source::Image => slots.image.apply(source, event, keep_all),
            Source::DigestMirrorSets => slots.digest_mirror_sets.apply(source, event, keep_all),
            Source::TagMirrorSets => slots.tag_mirror_sets.apply(source, event, keep_all),
            Source::ContentSourcePolicies => {
                slots.content_source_policies.apply(source, event, keep_all)
            }
            Source::ClusterVersion => slots.cluster_version.apply(source, event, keep_all),
            Source::FeatureGate => slots.feature_gate.apply(source, event, keep_all),
            Source::Pools => slots.pools.apply(source, event, keep_all),
            Source::MachineConfigs => slots.machine_configs.apply(source, event, relevant_mc),
        };
        drop(slots);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

/// Longest wait before an absent API is asked for again.
const ABSENT_RETRY_MAX: Duration = Duration::from_secs(60);

/// Runs one type's watcher for ever. `connect` gives the API to watch (asked again after
/// the API went away). kube's backoff restarts from zero on every event, and a failing
/// list still yields one, so an absent API is retried here with its own backoff.
async fn follow<F, Fut>(state: Arc<ClusterState>, source: Source, connect: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(Api<DynamicObject>, watcher::Config), kube::Error>>,
{
    let mut absent_retry = Duration::from_secs(1);
    loop {
        let (api, config) = match connect().await {
            Ok(c) => c,
            Err(e) => {
                state.apply(source, Err(watcher::Error::InitialListFailed(e)));
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let gone = matches!(&event, Err(e) if not_found(e));
            if matches!(event, Ok(Event::InitDone)) {
                absent_retry = Duration::from_secs(1);
            }
            state.apply(source, event);
            if gone {
                break;
            }
        }
        tokio::time::sleep(absent_retry).await;
        absent_retry = (absent_retry * 2).min(ABSENT_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generated_machine_configs_are_kept_by_name() {
        assert!(generated_mc("99-worker-generated-registries"));
        assert!(generated_mc("99-infra-generated-imagepolicies"));
        assert!(generated_mc("99-worker-generated-registries-imagepolicies"));
        assert!(!generated_mc("01-worker-container-runtime"));
        assert!(!generated_mc("99-worker-ssh"));
        let runtime: MachineConfig = serde_json::from_value(
            serde_json::json!({"spec": {"config": {"storage": {"files": [
            {"path": "/etc/containers/policy.json"}]}}}}),
        )
        .unwrap();
        assert!(relevant_mc("01-worker-container-runtime", &runtime));
        assert!(!relevant_mc("00-worker", &MachineConfig::default()));
    }

    /// A watch event applying this object.
    fn applied(object: serde_json::Value) -> Result<Event<DynamicObject>, watcher::Error> {
        Ok(Event::Apply(serde_json::from_value(object).unwrap()))
    }

    /// A watch resumed after an outage sends nothing when nothing changed: its last error
    /// stops being reported once its retries stop failing.
    #[test]
    fn a_watch_error_is_reported_while_it_lasts_and_not_after() {
        let mut slot = Slot::<ClusterImagePolicy> {
            synced: true,
            last_error: Some(("Connect".into(), Instant::now())),
            ..Slot::default()
        };
        assert_eq!(slot.health().last_error, Some("Connect"));
        let past = Instant::now().checked_sub(ERROR_CURRENT_FOR + Duration::from_secs(1));
        slot.last_error = Some(("Connect".into(), past.unwrap()));
        assert_eq!(slot.health().last_error, None);
    }

    #[test]
    fn managed_fields_are_dropped_at_decode_and_wake_nobody() {
        let event = |rv: &str, manager: &str| {
            applied(serde_json::json!({
                "apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
                "metadata": {"name": "p", "resourceVersion": rv, "managedFields": [
                    {"manager": manager, "operation": "Update", "apiVersion": "config.openshift.io/v1",
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}
                ]},
                "spec": {"scopes": ["quay.io/a"]}
            }))
        };
        let mut slot = Slot::<ClusterImagePolicy>::default();
        assert!(slot.apply(Source::Policies, event("1", "kubectl"), keep_all));
        assert!(slot.objects["p"].metadata.other.is_empty());
        assert!(!slot.apply(Source::Policies, event("2", "cip-webhook"), keep_all));
        assert_eq!(
            slot.objects["p"].metadata.resource_version.as_deref(),
            Some("2")
        );
    }

    #[test]
    fn machine_configs_with_the_same_file_share_one_copy() {
        let mc = |name: &str, data: &str| {
            applied(serde_json::json!({
                "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfig",
                "metadata": {"name": name},
                "spec": {"config": {"ignition": {"version": "3.5.0"}, "storage": {"files": [
                    {"path": "/etc/containers/policy.json", "contents": {"source": data}}
                ]}}}
            }))
        };
        let source = |slot: &Slot<MachineConfig>, name: &str| {
            slot.objects[name].files()[0]
                .contents
                .as_ref()
                .and_then(|c| c.source.clone())
                .unwrap()
        };
        let mut slot = Slot::<MachineConfig>::default();
        slot.apply(
            Source::MachineConfigs,
            mc("99-master-generated-registries", "data:,a"),
            keep_all,
        );
        slot.apply(
            Source::MachineConfigs,
            mc("99-worker-generated-registries", "data:,a"),
            keep_all,
        );
        slot.apply(
            Source::MachineConfigs,
            mc("99-infra-generated-registries", "data:,b"),
            keep_all,
        );
        let master = source(&slot, "99-master-generated-registries");
        assert!(Arc::ptr_eq(
            &master,
            &source(&slot, "99-worker-generated-registries")
        ));
        assert_eq!(&*source(&slot, "99-infra-generated-registries"), "data:,b");
    }

    #[test]
    fn status_and_versions_wake_nobody_except_where_read() {
        let mut before = ClusterImagePolicy::default();
        before.metadata.resource_version = Some("1".into());
        let mut after = before.clone();
        after.metadata.resource_version = Some("2".into());
        after.status = Some(serde_json::json!({"conditions": []}));
        assert!(!ClusterImagePolicy::significant_change(&before, &after));
        after.metadata.labels.insert("a".into(), "b".into());
        assert!(ClusterImagePolicy::significant_change(&before, &after));
        let mut gate = FeatureGate::default();
        let flipped = {
            let mut g = gate.clone();
            g.status.feature_gates.push(Default::default());
            g
        };
        assert!(FeatureGate::significant_change(&gate, &flipped));
        gate.metadata.resource_version = Some("7".into());
        let mut mc = MachineConfig::default();
        mc.metadata.resource_version = Some("1".into());
        let mut next = mc.clone();
        next.metadata.resource_version = Some("2".into());
        assert!(MachineConfig::significant_change(&mc, &next));
    }
}
