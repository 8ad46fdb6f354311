//! Objects, resource versions and the change history that watches replay. Everything here
//! runs under one lock and never awaits.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::resources::{from_crd, Registry, ResourceType};

/// Who last set each field: a manager's leaf paths, for server-side apply.
pub type Managed = BTreeMap<String, BTreeSet<String>>;

#[derive(Debug, Clone)]
pub struct Stored {
    pub object: Value,
    pub managed: Managed,
}

/// (group/plural, namespace, name); cluster-scoped objects have an empty namespace.
pub type Key = (String, String, String);

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub resource: String,
    pub kind: &'static str,
    pub object: Value,
    /// What a MODIFIED event replaced: a watch with a selector reports an object that
    /// stops matching as DELETED (with this content) and one that starts as ADDED.
    pub previous: Option<Value>,
}

#[derive(Debug)]
pub struct Inner {
    pub registry: Registry,
    pub objects: BTreeMap<Key, Stored>,
    pub rv: u64,
    pub history: VecDeque<Arc<Event>>,
    pub history_limit: usize,
    /// The resource version below which history has been dropped.
    pub compacted: u64,
    uid: u64,
    /// Sent under the lock that assigned the version, so every watch gets changes in
    /// resourceVersion order, as from the API server's watch cache.
    pub events: broadcast::Sender<Arc<Event>>,
}

pub fn rv_of(object: &Value) -> Option<u64> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
}

fn now() -> String {
    let t = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero is valid");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats every UTC time")
}

/// Whether anything outside metadata (and status, when it is a subresource) differs.
fn spec_changed(t: &ResourceType, old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            if t.status_subresource {
                m.remove("status");
            }
        }
        v
    };
    strip(old) != strip(new)
}

impl Inner {
    pub fn new(history_limit: usize) -> Inner {
        Inner {
            registry: Registry::with_builtins(),
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_limit,
            compacted: 0,
            uid: 0,
            events: broadcast::channel(1 << 16).0,
        }
    }

    pub fn key(t: &ResourceType, namespace: &str, name: &str) -> Key {
        (t.key(), namespace.to_string(), name.to_string())
    }

    pub fn get(&self, t: &ResourceType, namespace: &str, name: &str) -> Option<&Stored> {
        self.objects.get(&Self::key(t, namespace, name))
    }

    pub fn list<'a>(
        &'a self,
        t: &ResourceType,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let resource = t.key();
        self.objects
            .iter()
            .filter(move |((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, s)| &s.object)
    }

    fn record(
        &mut self,
        resource: String,
        kind: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        let event = Arc::new(Event {
            rv: self.rv,
            resource,
            kind,
            object,
            previous,
        });
        self.history.push_back(Arc::clone(&event));
        let _ = self.events.send(event);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Stores a create or an update, keeping the server-owned metadata as the API server
    /// does: uid and creationTimestamp from creation, generation bumped on spec changes.
    pub fn put(&mut self, t: &ResourceType, mut object: Value, managed: Managed) -> Value {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = Self::key(t, &namespace, &name);
        self.rv += 1;
        let old = self.objects.get(&key).map(|s| s.object.clone());
        let meta = object["metadata"]
            .as_object_mut()
            .expect("objects have metadata");
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        let kind = match &old {
            Some(old) => {
                for field in ["uid", "creationTimestamp"] {
                    meta.insert(field.into(), old["metadata"][field].clone());
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                meta.insert("generation".into(), json!(generation));
                if spec_changed(t, old, &object) {
                    object["metadata"]["generation"] = json!(generation + 1);
                }
                "MODIFIED"
            }
            None => {
                self.uid += 1;
                meta.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.uid)),
                );
                meta.insert("creationTimestamp".into(), json!(now()));
                meta.insert("generation".into(), json!(1));
                "ADDED"
            }
        };
        if t.group == "apiextensions.k8s.io" {
            self.install_crd(&mut object);
        }
        self.objects.insert(
            key,
            Stored {
                object: object.clone(),
                managed,
            },
        );
        self.record(t.key(), kind, object.clone(), old);
        object
    }

    pub fn delete(&mut self, t: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        let stored = self.objects.remove(&Self::key(t, namespace, name))?;
        self.rv += 1;
        let mut object = stored.object;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if t.group == "apiextensions.k8s.io" {
            if let Ok(crd) = from_crd(&object) {
                self.registry.remove(&crd.group, &crd.plural);
                let resource = crd.key();
                self.objects.retain(|(r, _, _), _| *r != resource);
            }
        }
        self.record(t.key(), "DELETED", object.clone(), None);
        Some(object)
    }

    /// A stored CRD starts serving its types at once, and says so in its status.
    fn install_crd(&mut self, crd: &mut Value) {
        if let Ok(t) = from_crd(crd) {
            self.registry.install(t);
            crd["status"] = json!({
                "acceptedNames": crd["spec"]["names"].clone(),
                "storedVersions": crd["spec"]["versions"].as_array().into_iter().flatten()
                    .filter(|v| v["storage"] == json!(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()}
                ]
            });
        }
    }

    /// Drops all history, so that watches from any earlier resource version get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Events after `rv` for a resource, or None when some of them are gone.
    pub fn since(&self, resource: &str, rv: u64) -> Option<Vec<Arc<Event>>> {
        if rv < self.compacted {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|e| e.rv > rv && e.resource == resource)
                .cloned()
                .collect(),
        )
    }
}
