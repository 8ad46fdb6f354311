//! A stand-in for the machine-config-operator beside cip-webhook in the simulator: the
//! image-config half of its ContainerRuntimeConfig controller (machine-config-operator, `pkg/controller/container-runtime-config`)
//! and the merge its render controller does for the nodes.
//!
//! Like the MCO it owns `99-<pool>-generated-registries` (annotation, ownerReference to
//! Image `cluster`), rewrites it from its own inputs on every Image event (and, once it
//! renders policies, every ClusterImagePolicy event) and on every resync, writes only
//! when the bytes differ, and fails the whole sync on a scope that conflicts with the
//! registry lists. It writes through the API as its own service account, so its writes
//! are in the simulator's request log next to ours.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apisim::{Handle, Simulator};
use cip_core::cluster::ClusterFacts;
use cip_core::ignition;
use cip_core::model::{ClusterImagePolicy, ClusterVersion, Image};
use cip_core::policy::MCO_TEMPLATE;
use cip_core::registries_d;
use cip_core::render;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

pub const MCO_USER: &str =
    "system:serviceaccount:openshift-machine-config-operator:machine-config-controller";
const GROUP: &str = "machineconfiguration.openshift.io";

pub struct StandInMco {
    renders_policies: Arc<AtomicBool>,
    kick: mpsc::UnboundedSender<oneshot::Sender<()>>,
    /// MachineConfig writes it made.
    pub writes: Arc<AtomicUsize>,
    /// The last sync's error, as the MCO would log it.
    pub last_error: Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandInMco {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandInMco {
    /// Starts syncing at once, then on every trigger and every `resync`.
    pub async fn start(sim: &Simulator, renders_policies: bool, resync: Duration) -> StandInMco {
        let kubeconfig = sim
            .kubeconfig_for(MCO_USER, &["system:serviceaccounts"])
            .unwrap();
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let resource = ApiResource {
            group: GROUP.into(),
            version: "v1".into(),
            api_version: format!("{GROUP}/v1"),
            kind: "MachineConfig".into(),
            plural: "machineconfigs".into(),
        };
        let controller = Controller {
            api: Api::all_with(client, &resource),
            renders_policies: Arc::new(AtomicBool::new(renders_policies)),
            writes: Arc::new(AtomicUsize::new(0)),
            last_error: Arc::new(std::sync::Mutex::new(None)),
        };
        let (kick, mut kicks) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
        let mut events = sim.subscribe();
        let renders = Arc::clone(&controller.renders_policies);
        let writes = Arc::clone(&controller.writes);
        let last_error = Arc::clone(&controller.last_error);
        let sim = sim.handle();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(resync);
            loop {
                let reply = tokio::select! {
                    _ = tick.tick() => None,
                    kicked = kicks.recv() => match kicked { Some(r) => Some(r), None => return },
                    event = events.recv() => match event {
                        Ok(e) if controller.triggered_by(&e.resource) => None,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                        Err(_) => return,
                    },
                };
                controller.sync(&sim).await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        });
        let mco = StandInMco {
            renders_policies: renders,
            kick,
            writes,
            last_error,
            task,
        };
        mco.resync().await;
        mco
    }

    /// The MCO after an upgrade that turned `SigstoreImageVerification` on (or off).
    pub fn set_renders_policies(&self, on: bool) {
        self.renders_policies.store(on, Ordering::SeqCst);
    }

    /// One sync, as its informer resync would run it; returns when it is done.
    pub async fn resync(&self) {
        let (tx, rx) = oneshot::channel();
        self.kick.send(tx).unwrap();
        rx.await.unwrap();
    }
}

struct Controller {
    api: Api<DynamicObject>,
    renders_policies: Arc<AtomicBool>,
    writes: Arc<AtomicUsize>,
    last_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl Controller {
    fn triggered_by(&self, resource: &str) -> bool {
        resource == "config.openshift.io/images"
            || (resource == "config.openshift.io/clusterimagepolicies"
                && self.renders_policies.load(Ordering::SeqCst))
    }

    async fn sync(&self, sim: &Handle) {
        let result = self.try_sync(sim).await;
        *self.last_error.lock().unwrap() = result.err();
    }

    async fn try_sync(&self, sim: &Handle) -> Result<(), String> {
        let Some(image_value) = sim.get("config.openshift.io", "images", "", "cluster") else {
            return Ok(()); // as the MCO: no Image, no sync
        };
        let image: Image = serde_json::from_value(image_value.clone()).unwrap();
        let cv: Option<ClusterVersion> = sim
            .get("config.openshift.io", "clusterversions", "", "version")
            .map(|v| serde_json::from_value(v).unwrap());
        let facts = ClusterFacts::new(Some(&image), cv.as_ref(), &[]).map_err(|e| e.to_string())?;
        let policies: Vec<ClusterImagePolicy> = if self.renders_policies.load(Ordering::SeqCst) {
            sim.list("config.openshift.io", "clusterimagepolicies")
                .into_iter()
                .map(|v| serde_json::from_value(v).unwrap())
                .collect()
        } else {
            Vec::new()
        };
        let requirements = policies
            .iter()
            .map(render::requirement)
            .collect::<Result<Vec<_>, _>>()?;
        let scopes = render::scope_requirements(
            policies
                .iter()
                .zip(&requirements)
                .map(|(p, r)| (p.metadata.name.as_str(), p.scopes(), r)),
        );
        // One conflicting scope fails the whole sync (the MCO's `helpers.go`).
        for scope in scopes.keys() {
            if let Some(message) =
                facts.registry_conflict(scope, cip_core::model::PolicyKind::Cluster)
            {
                return Err(format!("could not Create/Update MachineConfig: could not update policy json with new changes: {message}"));
            }
        }
        let policy_json = render::update_policy_json(MCO_TEMPLATE, &facts, &scopes)?;
        let mut files = vec![file(
            "/etc/containers/registries.conf",
            &registries_conf(&image),
        )];
        if let Some(json) = policy_json {
            files.push(file(ignition::POLICY_JSON_PATH, &json));
        }
        if !scopes.is_empty() {
            let yaml = registries_d::sigstore_registries_yaml(scopes.keys().copied());
            files.push(file(ignition::SIGSTORE_YAML_PATH, &yaml));
        }
        let config = json!({"ignition": {"version": "3.5.0"}, "storage": {"files": files}});
        for pool in built_in_pools(sim) {
            let name = render::registries_mc_name(&pool);
            let existing = sim.get(GROUP, "machineconfigs", "", &name);
            let desired = json!({
                "apiVersion": format!("{GROUP}/v1"),
                "kind": "MachineConfig",
                "metadata": {
                    "name": name,
                    "labels": {"machineconfiguration.openshift.io/role": pool},
                    "annotations": {cip_core::mco::GENERATED_BY_ANNOTATION: "stand-in-mco"},
                    "ownerReferences": [{"apiVersion": "config.openshift.io/v1", "kind": "Image",
                        "name": "cluster", "uid": image_value["metadata"]["uid"]}],
                },
                "spec": {"config": config},
            });
            let same = existing.as_ref().is_some_and(|e| {
                e["spec"]["config"] == desired["spec"]["config"]
                    && e["metadata"]["annotations"] == desired["metadata"]["annotations"]
            });
            if same {
                continue;
            }
            let mut object: DynamicObject = serde_json::from_value(desired).unwrap();
            let result = match &existing {
                Some(e) => {
                    object.metadata.resource_version = e["metadata"]["resourceVersion"]
                        .as_str()
                        .map(str::to_string);
                    self.api
                        .replace(&name, &PostParams::default(), &object)
                        .await
                        .map(|_| ())
                }
                None => self
                    .api
                    .create(&PostParams::default(), &object)
                    .await
                    .map(|_| ()),
            };
            result.map_err(|e| format!("writing {name}: {e}"))?;
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

fn built_in_pools(sim: &Handle) -> Vec<String> {
    sim.list(GROUP, "machineconfigpools")
        .iter()
        .filter(|p| {
            p["metadata"]["labels"]
                .get("machineconfiguration.openshift.io/mco-built-in")
                .is_some()
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// The registries.conf the MCO writes for the Image CR's blocked registries.
fn registries_conf(image: &Image) -> String {
    let mut text = String::from(
        "unqualified-search-registries = [\"registry.access.redhat.com\", \"docker.io\"]\nshort-name-mode = \"\"\n",
    );
    for blocked in &image.spec.registry_sources.blocked_registries {
        text.push_str(&format!(
            "\n[[registry]]\n  prefix = \"\"\n  location = \"{blocked}\"\n  blocked = true\n"
        ));
    }
    text
}

/// `NewIgnFileBytesOverwriting`, as the MCO serializes it.
fn file(path: &str, contents: &str) -> Value {
    json!({
        "overwrite": true,
        "path": path,
        "contents": {"compression": "", "source": ignition::encode_data_url(contents)},
        "mode": 420,
    })
}

/// What a pool's nodes get: the pool's MachineConfigs merged in name order, the later
/// one winning for a path (the render controller's Ignition merge). Path → contents.
pub fn node_view<'a>(
    machine_configs: impl IntoIterator<Item = &'a Value>,
    pool: &str,
) -> BTreeMap<String, String> {
    let mut members: Vec<&Value> = machine_configs
        .into_iter()
        .filter(|mc| mc["metadata"]["labels"]["machineconfiguration.openshift.io/role"] == pool)
        .collect();
    members.sort_by_key(|mc| {
        mc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    let mut view = BTreeMap::new();
    for mc in members {
        for f in mc["spec"]["config"]["storage"]["files"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let source = f["contents"]["source"].as_str().unwrap_or("data:,");
            let bytes = ignition::decode_data_url(source).unwrap();
            view.insert(
                f["path"].as_str().unwrap().to_string(),
                String::from_utf8(bytes).unwrap(),
            );
        }
    }
    view
}

/// The node view of the simulator's current MachineConfigs.
pub fn current_view(sim: &Simulator, pool: &str) -> BTreeMap<String, String> {
    node_view(&sim.list(GROUP, "machineconfigs"), pool)
}

/// Whether a node view verifies `scope`: a signature requirement in policy.json's
/// `docker` transport and sigstore attachments turned on in registries.d.
pub fn verifies(view: &BTreeMap<String, String>, scope: &str) -> bool {
    let policy = view
        .get(ignition::POLICY_JSON_PATH)
        .and_then(|t| cip_core::policy::Policy::parse(t).ok());
    let signed = policy.is_some_and(|p| {
        p.transports
            .get("docker")
            .and_then(|d| d.get(scope))
            .is_some_and(|reqs| {
                reqs.iter()
                    .any(|r| matches!(r, cip_core::policy::Requirement::SigstoreSigned(_)))
            })
    });
    let attachments = view
        .get(ignition::SIGSTORE_YAML_PATH)
        .is_some_and(|t| registries_d::scopes(t).contains(scope));
    signed && attachments
}
