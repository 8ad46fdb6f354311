//! cip-webhook: a pure core (ClusterImagePolicy parsing, validation and rendering:
//! `cluster`, `documents`, `explain`, `model`, `policy`, `render`, `validate` and the
//! helpers they use; no I/O) shared by the CLI and the admission server, and the thin
//! edges around it (`admission` answers reviews from a snapshot; `files`, `server`,
//! `tls` and `metrics` do the I/O).

pub mod admission;
pub mod cluster;
pub mod desired;
pub mod documents;
pub mod explain;
pub mod files;
pub mod gojson;
pub mod ignition;
pub mod keys;
pub mod kube_state;
pub mod lease;
pub mod mco;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod policy_json;
pub mod reconcile;
pub mod registries_conf;
pub mod registries_d;
pub mod render;
pub mod rules;
pub mod scope;
pub mod server;
pub mod tls;
pub mod validate;
pub mod yaml;
