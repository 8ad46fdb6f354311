//! The running-images index from the API server: pods and nodes watched through projected
//! types, so that only what a pull's verdict needs is decoded and kept — a pod's
//! namespace, node, images, `imageID`s and pull-secret names; a node's labels and
//! architecture. Every other field of the objects is skipped by the decoder, managedFields
//! included. Finished pods (Succeeded, Failed) are left out by the server's field selector.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use serde::Deserialize;

use cip_core::running::{image_id_digest, Index, NodeFacts, PodImages};

/// Of an object's metadata, the name, namespace and resourceVersion (and labels where
/// asked for); nothing else is decoded.
fn thin_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Thin {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
    }
    let t = Thin::deserialize(d)?;
    Ok(ObjectMeta {
        name: t.name,
        namespace: t.namespace,
        resource_version: t.resource_version,
        labels: t.labels,
        ..ObjectMeta::default()
    })
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Named {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "imageID")]
    image_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    init_containers: Vec<Container>,
    #[serde(default)]
    ephemeral_containers: Vec<Container>,
    #[serde(default)]
    image_pull_secrets: Vec<Named>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

/// A pod, as far as the index reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct PodProjection {
    #[serde(deserialize_with = "thin_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeInfo {
    #[serde(default)]
    architecture: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeStatus {
    #[serde(default)]
    node_info: NodeInfo,
}

/// A node, as far as the index reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeProjection {
    #[serde(deserialize_with = "thin_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    status: NodeStatus,
}

macro_rules! core_v1 {
    ($t:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $t {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

core_v1!(
    PodProjection,
    "Pod",
    "pods",
    k8s_openapi::NamespaceResourceScope
);
core_v1!(
    NodeProjection,
    "Node",
    "nodes",
    k8s_openapi::ClusterResourceScope
);

impl PodProjection {
    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// Each container's image as the pod spec writes it (what a pull asks for), with the
    /// digest its status reports once the kubelet has one; strings shared through `strings`.
    pub fn images(&self, strings: &mut Strings) -> PodImages {
        let statuses: BTreeMap<&str, &str> = (self.status.container_statuses.iter())
            .chain(&self.status.init_container_statuses)
            .chain(&self.status.ephemeral_container_statuses)
            .map(|s| (s.name.as_str(), s.image_id.as_str()))
            .collect();
        let containers = (self.spec.init_containers.iter())
            .chain(&self.spec.containers)
            .chain(&self.spec.ephemeral_containers)
            .filter(|c| !c.image.is_empty())
            .map(|c| {
                let digest = statuses
                    .get(c.name.as_str())
                    .and_then(|id| image_id_digest(id));
                (strings.get(&c.image), digest.map(|d| strings.get(&d)))
            })
            .collect();
        let node = self.spec.node_name.as_deref().filter(|n| !n.is_empty());
        PodImages {
            namespace: strings.get(self.metadata.namespace.as_deref().unwrap_or_default()),
            node: node.map(|n| strings.get(n)),
            containers,
            pull_secrets: self
                .spec
                .image_pull_secrets
                .iter()
                .map(|s| s.name.clone())
                .collect(),
        }
    }
}

impl NodeProjection {
    pub fn facts(&self) -> NodeFacts {
        let labels = self.metadata.labels.clone().unwrap_or_default();
        let arch = labels
            .get("kubernetes.io/arch")
            .cloned()
            .unwrap_or_else(|| self.status.node_info.architecture.clone());
        NodeFacts { labels, arch }
    }
}

/// One shared copy of each string the pods repeat (namespaces, nodes, images, digests).
#[derive(Debug, Default)]
pub struct Strings {
    set: HashSet<Arc<str>>,
    /// How many were kept at the last pruning: the next comes when the set has doubled.
    kept: usize,
}

impl Strings {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.set.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.set.insert(Arc::clone(&shared));
        shared
    }

    /// Forgets the strings no pod holds any more, once the set has doubled since the last
    /// time (each string is looked at once per doubling: amortized constant).
    fn prune(&mut self) {
        if self.set.len() > 2 * self.kept.max(1024) {
            self.set.retain(|s| Arc::strong_count(s) > 1);
            self.kept = self.set.len();
        }
    }
}

/// What the watches keep: the index readers see, each watch's relist in progress, and
/// the pods' shared strings.
#[derive(Default)]
struct Watched {
    index: Index,
    pods: Slot<PodImages>,
    nodes: Slot<NodeFacts>,
    strings: Strings,
}

/// The index as the watches keep it.
#[derive(Default)]
pub struct Shared {
    watched: Mutex<Watched>,
    changed: tokio::sync::Notify,
}

impl Shared {
    /// `f` of the index, under its lock (no copy), once both watches have listed.
    pub fn read<R>(&self, f: impl FnOnce(&Index) -> R) -> Option<R> {
        let g = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        (g.pods.synced && g.nodes.synced).then(|| f(&g.index))
    }

    /// A copy of the index, once both watches have listed.
    pub fn index(&self) -> Option<Index> {
        self.read(Index::clone)
    }

    /// Waits for the next change.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn update(&self, f: impl FnOnce(&mut Watched)) {
        f(&mut self.watched.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_one();
    }
}

/// Starts the two watches; they run for the life of the process.
pub fn spawn(client: kube::Client) -> Arc<Shared> {
    let shared = Arc::new(Shared::default());
    let pods: Api<PodProjection> = Api::all(client.clone());
    let config = watcher::Config::default()
        .fields("status.phase!=Succeeded,status.phase!=Failed")
        .page_size(500);
    let s = Arc::clone(&shared);
    tokio::spawn(follow(watcher(pods, config), move |event| {
        s.update(|w| {
            let strings = &mut w.strings;
            w.pods.apply(&mut w.index.pods, event, |p: &PodProjection| {
                (p.key(), p.images(strings))
            });
            strings.prune();
        })
    }));
    let nodes: Api<NodeProjection> = Api::all(client);
    let s = Arc::clone(&shared);
    let config = watcher::Config::default();
    tokio::spawn(follow(watcher(nodes, config), move |event| {
        s.update(|w| {
            w.nodes
                .apply(&mut w.index.nodes, event, |n: &NodeProjection| {
                    (n.metadata.name.clone().unwrap_or_default(), n.facts())
                })
        })
    }));
    shared
}

async fn follow<K: Send + 'static>(
    stream: impl futures_util::Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    mut on: impl FnMut(Event<K>) + Send,
) {
    let mut stream = std::pin::pin!(stream.default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => on(e),
            Err(e) => tracing::warn!(error = %e, "running-images watch failed; retrying"),
        }
    }
}

/// One watched type's relist in progress, which replaces the map readers see when
/// complete.
#[derive(Debug)]
struct Slot<V> {
    listing: Option<BTreeMap<String, V>>,
    synced: bool,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            listing: None,
            synced: false,
        }
    }
}

impl<V> Slot<V> {
    /// One watch event on `map`; `project` gives the key and value kept for an object.
    fn apply<K>(
        &mut self,
        map: &mut BTreeMap<String, V>,
        event: Event<K>,
        mut project: impl FnMut(&K) -> (String, V),
    ) {
        match event {
            Event::Init => self.listing = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                let (k, v) = project(&o);
                self.listing.get_or_insert_with(BTreeMap::new).insert(k, v);
            }
            Event::InitDone => {
                *map = self.listing.take().unwrap_or_default();
                self.synced = true;
            }
            Event::Apply(o) => {
                let (k, v) = project(&o);
                map.insert(k, v);
            }
            Event::Delete(o) => {
                map.remove(&project(&o).0);
            }
        }
    }
}

/// The cluster's pull secret (`openshift-config/pull-secret`), as containers-auth.json
/// text; None where there is none, or where we may not read it (plain Kubernetes, where
/// only the OpenShift overlay grants it).
pub async fn pull_secret(client: &kube::Client) -> Result<Option<String>, kube::Error> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "openshift-config");
    let secret = match secrets.get_opt("pull-secret").await {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(None),
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(secret
        .data
        .and_then(|d| d.get(".dockerconfigjson").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned()))
}

/// The pull secrets `names` (namespace, name) hold, each as its `.dockerconfigjson` or
/// `.dockercfg` text; those that are missing, unreadable or of another type are left out.
pub async fn pod_pull_secrets(
    client: &kube::Client,
    names: &std::collections::BTreeSet<(String, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (namespace, name) in names {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), namespace);
        let secret = match secrets.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(namespace = %namespace, secret = %name, error = %e, "pull secret not read");
                continue;
            }
        };
        let data = secret.data.unwrap_or_default();
        if let Some(b) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        {
            out.push(String::from_utf8_lossy(&b.0).into_owned());
        }
    }
    out
}

/// The data of the Image CR's `additionalTrustedCA` ConfigMap (`openshift-config/NAME`:
/// `host..port` → PEM); empty where there is none or we may not read it.
pub async fn trusted_cas(
    client: &kube::Client,
    name: &str,
) -> Result<std::collections::BTreeMap<String, String>, kube::Error> {
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "openshift-config");
    match maps.get_opt(name).await {
        Ok(map) => Ok(map.and_then(|m| m.data).unwrap_or_default()),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(Default::default()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_projected_to_its_images_and_nothing_else() {
        let d = format!("sha256:{}", "b".repeat(64));
        let pod: PodProjection = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"},
                "managedFields": [{"manager": "x", "fieldsV1": {"f:spec": {}}}],
                "annotations": {"big": "x".repeat(1000)}},
            "spec": {"nodeName": "n1", "imagePullSecrets": [{"name": "s"}],
                "initContainers": [{"name": "init", "image": "r/init:v1"}],
                "containers": [{"name": "app", "image": "r/app:v1", "env": [{"name": "E"}]},
                               {"name": "side", "image": "r/side@sha256:00"}]},
            "status": {"containerStatuses": [
                {"name": "app", "image": "r/app:v1", "imageID": format!("r/app@{d}")},
                {"name": "side", "image": "r/side", "imageID": ""}]}
        }))
        .unwrap();
        assert_eq!(pod.key(), "ns/p");
        assert_eq!(pod.metadata.annotations, None);
        assert_eq!(pod.metadata.managed_fields, None);
        let mut strings = Strings::default();
        let images = pod.images(&mut strings);
        assert_eq!(images.node.as_deref(), Some("n1"));
        assert_eq!(images.pull_secrets, ["s"]);
        assert_eq!(
            images.containers,
            [
                ("r/init:v1".into(), None),
                ("r/app:v1".into(), Some(d.as_str().into())),
                ("r/side@sha256:00".into(), None)
            ]
        );
        let again = pod.images(&mut strings);
        assert!(Arc::ptr_eq(&images.containers[1].0, &again.containers[1].0));
        assert_eq!(strings.set.len(), 6, "ns, n1, three images, one digest");
    }

    #[test]
    fn strings_no_pod_holds_are_forgotten_once_the_set_has_doubled() {
        let mut strings = Strings::default();
        let held: Vec<Arc<str>> = (0..1000).map(|i| strings.get(&format!("a{i}"))).collect();
        for i in 0..1048 {
            strings.get(&format!("b{i}"));
        }
        strings.prune();
        assert_eq!(strings.set.len(), 2048, "not doubled past 1,024 yet");
        strings.get("c");
        strings.prune();
        assert_eq!(strings.set.len(), held.len(), "only what is held is kept");
        assert!(Arc::ptr_eq(&strings.get("a7"), &held[7]));
    }

    #[test]
    fn a_relist_drops_what_is_gone() {
        let (mut slot, mut map) = (Slot::default(), BTreeMap::new());
        let project = |s: &String| (s.clone(), s.len());
        for e in [
            Event::Init,
            Event::InitApply("a".to_string()),
            Event::InitApply("bb".into()),
            Event::InitDone,
        ] {
            slot.apply(&mut map, e, project);
        }
        assert!(slot.synced && map.len() == 2);
        slot.apply(&mut map, Event::Delete("a".into()), project);
        slot.apply(&mut map, Event::Apply("ccc".into()), project);
        slot.apply(&mut map, Event::Init, project);
        slot.apply(&mut map, Event::InitApply("ccc".into()), project);
        assert_eq!(
            map.len(),
            2,
            "readers see the old list until the new one is whole"
        );
        slot.apply(&mut map, Event::InitDone, project);
        assert_eq!(
            map.into_iter().collect::<Vec<_>>(),
            [("ccc".to_string(), 3)]
        );
    }
}
